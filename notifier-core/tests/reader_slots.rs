//! The hosted platform's reader slots (`StdPlatform::reader_slot`): a registry that gives
//! each thread a slot of its own, so that SRCU read sections and in-flight counts take
//! no locked instruction, and shares one slot among the threads beyond.
//!
//! Alone in its test binary: the registry is process-wide, and these tests count what
//! it hands out. The process's barrier pairing decides how a claimed slot is used
//! (owned and light under `membarrier`, counted in with atomic increments under full
//! fences), so every test runs under both: in this process, and in a child process of
//! the same binary with `NOTIFIER_MEMBARRIER=0` (`every_test_under_full_fences_too`).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use notifier_core::srcu::{ReaderSlot, SleepableRcu, SLOTS};
use notifier_core::std_platform::StdPlatform;
use notifier_core::{AddressSpace, Event, Platform, Range};

mod full_fences;

/// Sizes: smaller under Miri, which runs every access through its checks.
const WAVES: usize = if cfg!(miri) { 2 } else { 6 };
const THREADS: usize = if cfg!(miri) { SLOTS + 2 } else { 40 };
const ROUNDS: usize = if cfg!(miri) { 4 } else { 300 };

/// The tests take turns: the first counts every slot handed out.
static TURN: Mutex<()> = Mutex::new(());

/// The slots `n` threads get while all of them are alive at once. Joined one by one
/// (not a scope, which may end before its threads' thread-local destructors, which give
/// the slots back, have run).
fn slots_of_live_threads(n: usize) -> Vec<ReaderSlot> {
    let all = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let all = Arc::clone(&all);
            thread::spawn(move || {
                let slot = StdPlatform::reader_slot();
                // The same slot on every call of the thread.
                assert_eq!(StdPlatform::reader_slot(), slot);
                // Nobody exits (and gives its slot back) before everybody has one.
                all.wait();
                slot
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// `WAVES` waves of `THREADS` threads, each running `body` `ROUNDS` times. Every thread
/// of a wave takes its slot before any of them runs `body`, so that more threads than
/// slots are alive at once: some count through the shared slot.
fn waves_of_threads(body: impl Fn() + Sync) {
    for _wave in 0..WAVES {
        let all = Barrier::new(THREADS);
        thread::scope(|w| {
            for _ in 0..THREADS {
                w.spawn(|| {
                    let _ = StdPlatform::reader_slot();
                    all.wait();
                    for _ in 0..ROUNDS {
                        body();
                    }
                });
            }
        });
    }
}

/// The slot indices the threads claimed, sorted: their owned slots where the process
/// pairs the light read-side barrier with `membarrier`; under full fences, where no slot
/// is owned, the claimed slots they count in with atomic increments. The last slot, the
/// shared one, is nobody's claim.
fn claimed_indices(slots: &[ReaderSlot]) -> Vec<usize> {
    let light = StdPlatform::asymmetric_barriers();
    let mut v: Vec<usize> = slots
        .iter()
        .filter_map(|s| match *s {
            ReaderSlot::Owned(o) => {
                assert!(
                    light && o.light(),
                    "owned, not light, or under full fences: {s:?}"
                );
                Some(o.index())
            }
            ReaderSlot::Shared(i) if i % SLOTS == SLOTS - 1 => None,
            ReaderSlot::Shared(i) => {
                assert!(
                    !light,
                    "a thread's own slot taken as shared under membarrier: {s:?}"
                );
                Some(i)
            }
        })
        .collect();
    v.sort_unstable();
    v
}

/// Live threads claim distinct slots below `SLOTS - 1` (owned, or under full fences
/// counted in with atomic increments); the threads beyond share the last one; a
/// thread's slot goes back to the registry when it exits, so a second crowd of threads
/// claims slots again.
#[test]
fn c22_owned_reader_slots_are_distinct_shared_beyond_and_given_back() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let n = SLOTS + 8;
    for round in 0..if cfg!(miri) { 2 } else { 3 } {
        // The other tests' threads (scoped: their scope may end before their
        // thread-local destructors ran) may still hold slots for a moment: try again
        // a few times before calling a slot lost.
        let mut tries = 0;
        let (slots, owned) = loop {
            let slots = slots_of_live_threads(n);
            let owned = claimed_indices(&slots);
            tries += 1;
            if owned.len() == SLOTS - 1 || tries == 20 {
                break (slots, owned);
            }
            thread::sleep(std::time::Duration::from_millis(10));
        };
        let mut distinct = owned.clone();
        distinct.dedup();
        assert_eq!(
            distinct, owned,
            "round {round}: two live threads own one slot"
        );
        assert!(
            owned.iter().all(|&i| i < SLOTS - 1),
            "round {round}: {owned:?}"
        );
        // Every owned slot is handed out (the test's own threads hold none): the
        // exits of the previous round gave theirs back.
        assert_eq!(
            owned.len(),
            SLOTS - 1,
            "round {round}: slots not given back"
        );
        // The threads beyond count in the shared slot.
        assert_eq!(slots.len() - owned.len(), n - (SLOTS - 1));
    }
}

/// Grace periods stay exact while slots change hands: short-lived threads (many more
/// than there are slots, some sharing) read an object under the portable SRCU while a
/// writer replaces and poisons it after each grace period. A reader that sees the
/// poison read an object freed under it; a count lost when a slot changed hands would
/// hang a grace period (the test's time limit) or end one early (the poison).
#[test]
fn c22_grace_periods_stay_exact_while_slots_change_hands() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    const LIVE: u64 = 0x1111_2222;
    const DEAD: u64 = 0xdead_dead;
    let rcu = StdPlatform::rcu();
    let cur = AtomicPtr::new(Box::into_raw(Box::new(AtomicUsize::new(LIVE as usize))));
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    let reads = AtomicUsize::new(0);
    thread::scope(|s| {
        // The writer.
        s.spawn(|| {
            let mut retired = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let new = Box::into_raw(Box::new(AtomicUsize::new(LIVE as usize)));
                let old = cur.swap(new, Ordering::AcqRel);
                rcu.synchronize();
                // SAFETY: unreachable since the swap, and a grace period has passed.
                unsafe { (*old).store(DEAD as usize, Ordering::Relaxed) };
                retired.push(old);
            }
            for p in retired {
                // SAFETY: from `Box::into_raw`, poisoned above, no longer read.
                drop(unsafe { Box::from_raw(p) });
            }
        });
        waves_of_threads(|| {
            let _g = rcu.read_lock();
            let p = cur.load(Ordering::Acquire);
            // SAFETY: read under the section: not freed (that is what is tested: the
            // value must not be the poison).
            let v = unsafe { (*p).load(Ordering::Relaxed) };
            if v != LIVE as usize {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            reads.fetch_add(1, Ordering::Relaxed);
        });
        stop.store(true, Ordering::Relaxed);
    });
    // SAFETY: the last object, never retired.
    drop(unsafe { Box::from_raw(cur.load(Ordering::Relaxed)) });
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "a reader saw a freed object"
    );
    assert_eq!(reads.load(Ordering::Relaxed), WAVES * THREADS * ROUNDS);
}

/// Invalidations on address spaces nobody subscribed to count themselves in the
/// platform's `unsubscribed` counters from threads that come and go, more of them alive
/// than there are slots; the first registration's wait for them ends (no count is lost
/// with a slot or in the shared one).
#[test]
fn c02_unsubscribed_counts_survive_slot_hand_over() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mm = AddressSpace::<StdPlatform>::new();
    waves_of_threads(|| {
        let inv = mm
            .invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap))
            .unwrap();
        inv.end();
    });
    // Waits for a grace period of the unsubscribed counters, which would never end
    // if a count had been lost.
    let sub = Box::pin(notifier_core::Subscriber::<Nop, StdPlatform>::new(Nop));
    sub.as_ref().register(&mm).unwrap();
    sub.as_ref().unregister().unwrap();
}

struct Nop;
impl notifier_core::SubscriberOps for Nop {}

/// Read-side sections run by a thread-local's destructor at thread exit: once after the
/// thread's slot claim was given back (the claim is made after that thread-local was
/// first used, so its destructor runs first), once as the thread's first section (the
/// claim, if it can still be made, is made during the thread's exit). Each section's
/// count ends (the grace period after the exit returns) and no slot is lost (a later
/// crowd of threads owns every one again).
#[test]
fn c22_read_sections_in_thread_local_destructors() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    static RAN: AtomicUsize = AtomicUsize::new(0);
    struct Late;
    impl Drop for Late {
        fn drop(&mut self) {
            let rcu = StdPlatform::rcu();
            drop(rcu.read_lock());
            let mm = AddressSpace::<StdPlatform>::new();
            mm.invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap))
                .unwrap()
                .end();
            RAN.fetch_add(1, Ordering::Relaxed);
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<Late>> = const { std::cell::RefCell::new(None) };
    }
    for claim_first in [true, false] {
        let before = RAN.load(Ordering::Relaxed);
        thread::spawn(move || {
            LATE.with(|l| *l.borrow_mut() = Some(Late));
            if claim_first {
                drop(StdPlatform::rcu().read_lock());
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            RAN.load(Ordering::Relaxed),
            before + 1,
            "the destructor ran"
        );
        // Would never return if a section's count were lost.
        StdPlatform::rcu().synchronize();
        let mut tries = 0;
        let owned = loop {
            let owned = claimed_indices(&slots_of_live_threads(SLOTS + 8));
            tries += 1;
            if owned.len() == SLOTS - 1 || tries == 20 {
                break owned;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(
            owned.len(),
            SLOTS - 1,
            "claim_first {claim_first}: a slot was lost"
        );
    }
}

/// Every test of this binary again, in a child process that keeps full fences: there no
/// slot is owned, and a thread counts in the slot it claimed as a shared one (under
/// Miri, or when this process already keeps full fences, the tests above ran so).
#[test]
fn every_test_under_full_fences_too() {
    if cfg!(miri) || full_fences::forced() {
        assert!(!StdPlatform::asymmetric_barriers());
        return;
    }
    full_fences::run_again(&["--skip", "every_test_under_full_fences_too"], "4 passed");
}
