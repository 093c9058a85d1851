//! Loom models of the core's concurrency protocols.
//!
//! Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p notifier-core --test loom --release -- --test-threads=1
//! ```
//!
//! Every model is a `#[test]` named after the contract case it checks, runs a bounded
//! `loom::model::Builder` (preemption bound set here, not through the environment), and
//! asserts something that fails when the protocol is broken. Two oracles are used
//! throughout:
//!
//! * counters read with a read-modify-write (which always reads the latest value in the
//!   modification order, so a callback that runs "too late" in the schedule changes the
//!   value read afterwards);
//! * `loom::cell::UnsafeCell` "memory" that callbacks read and that the test writes when
//!   the contract says the memory may be freed (after `unregister`, `remove`, teardown,
//!   a grace period): loom reports a causality violation if the write is not ordered
//!   after every read by happens-before, i.e. exactly when a callback could still be
//!   running or could still run.
//!
//! The `*_detects_*` tests run the same model with a deliberately broken consumer (or a
//! deliberately early "free") and show that the oracle has teeth: the model must fail.
//! A failing loom model cannot be caught in-process (objects dropped while the panic
//! unwinds touch loom state after the execution was torn down, which aborts), so each
//! such test re-runs this test binary on the broken model alone, in a child process
//! ([`must_fail`]), and checks that the child failed with the oracle's message.
#![cfg(loom)]

mod loom_platform;

use std::pin::Pin;
use std::ptr::NonNull;

use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex, RwLock};
use loom::thread;

use loom_platform::LoomPlatform as P;
use notifier_core::srcu::SleepableRcu;
use notifier_core::{
    AddressSpace, Event, Interval, IntervalOps, IntervalSubscriber, Platform, Range,
    RegistrationExcluded, Shared, SharedOps, Subscriber, SubscriberOps, WouldBlock,
};

const PAGE: usize = 4096;
/// Value of the simulated memory while it is live.
const LIVE: u64 = 0x11;
/// Value written when the memory is "freed".
const FREED: u64 = 0xdead;

fn builder(preemptions: usize) -> Builder {
    let mut b = Builder::new();
    b.preemption_bound = Some(preemptions);
    // The core's grace-period waits spin (with yields); give them room.
    b.max_branches = 1_000_000;
    b
}

/// Environment variable that tells a child process to run a broken model.
const BROKEN_MODEL: &str = "NOTIFIER_LOOM_BROKEN_MODEL";

/// Run `model` (which must fail) in a child process; pass if and only if the child
/// failed because the model failed. In the child itself, just run it.
fn must_fail(name: &str, expect: &[&str], model: impl FnOnce()) {
    if std::env::var(BROKEN_MODEL).as_deref() == Ok(name) {
        model();
        return; // the model passed: the child exits 0 and the parent fails below
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(BROKEN_MODEL, name)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("re-run the test binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{name}: the broken model passed: the oracle has no teeth"
    );
    // The first panic is the model's (loom's own causality report, or the oracle's
    // assertion); what follows it is the abort described above.
    let first = stderr.split("panicked at").nth(1).unwrap_or("");
    let first = first.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(
        expect.iter().any(|e| first.contains(e)),
        "{name}: the child failed, but not with the oracle's message {expect:?}:\n{stderr}"
    );
}

/// Latest value of a counter in modification order.
fn latest(c: &AtomicUsize) -> usize {
    c.fetch_add(0, Ordering::AcqRel)
}

/// Simulated memory of a secondary MMU: callbacks read it, the test "frees" it.
struct Memory(UnsafeCell<u64>);

// SAFETY: every access goes through loom's `UnsafeCell::with`/`with_mut`, which checks
// it against all others (a racing pair is reported as a causality violation); sharing
// it is the point of the oracle.
unsafe impl Sync for Memory {}

impl Memory {
    fn new() -> Self {
        Memory(UnsafeCell::new(LIVE))
    }
    fn touch(&self) {
        // SAFETY: loom checks the access against `free` (causality).
        self.0
            .with(|p| assert_eq!(unsafe { *p }, LIVE, "callback ran on freed memory"));
    }
    fn free(&self) {
        // SAFETY: loom checks the access against every `touch` (causality).
        self.0.with_mut(|p| unsafe { *p = FREED });
    }
}

// ---------------------------------------------------------------------------------
// C-01 / C-02: registration racing an invalidation.
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct Pairs {
    starts: AtomicUsize,
    ends: AtomicUsize,
}

impl SubscriberOps for Pairs {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        // Only one thread invalidates in this model: its own start is visible here.
        assert!(
            self.ends.load(Ordering::Relaxed) < self.starts.load(Ordering::Relaxed),
            "C-02: end without its start"
        );
        self.ends.fetch_add(1, Ordering::Relaxed);
    }
}

/// A subscriber registers while another thread runs one invalidation (start, end).
///
/// C-02: the subscriber sees the pair completely or not at all (no end without its
/// start, no start without its end). C-01: if `register` had returned before the
/// invalidation began (observed through a flag the registering thread sets), the
/// invalidation reaches the subscriber.
#[test]
fn c01_c02_register_races_invalidation() {
    builder(3).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Pairs::default())));
        let registered = Arc::new(AtomicBool::new(false));

        let t = {
            let (mm, sub, registered) = (mm.clone(), sub.clone(), registered.clone());
            thread::spawn(move || {
                let before = registered.load(Ordering::Acquire);
                let inv = mm
                    .invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap();
                inv.end();
                if before {
                    // C-01: registered before this invalidation began.
                    assert_eq!(sub.starts.load(Ordering::Relaxed), 1, "C-01: start missed");
                    assert_eq!(sub.ends.load(Ordering::Relaxed), 1, "C-01: end missed");
                }
            })
        };

        sub.as_ref().as_ref().register(&mm).unwrap();
        registered.store(true, Ordering::Release);
        t.join().unwrap();

        let (s, e) = (latest(&sub.starts), latest(&sub.ends));
        assert_eq!(s, e, "C-02: half pair (starts {s}, ends {e})");
        assert!(s <= 1);
        sub.as_ref().as_ref().unregister().unwrap();
    });
}

// ---------------------------------------------------------------------------------
// C-03: unregister is a barrier.
// ---------------------------------------------------------------------------------

struct Guarded {
    calls: AtomicUsize,
    mem: Memory,
}

impl Guarded {
    fn new() -> Self {
        Guarded {
            calls: AtomicUsize::new(0),
            mem: Memory::new(),
        }
    }
    fn touch(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.mem.touch();
    }
}

impl SubscriberOps for Guarded {
    fn release(&self) {
        self.touch();
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.touch();
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.touch();
    }
    fn invalidate_secondary_tlbs(&self, _s: usize, _e: usize) {
        self.touch();
    }
}

fn c03_model(free_before_unregister: bool) {
    builder(3).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Guarded::new())));
        sub.as_ref().as_ref().register(&mm).unwrap();

        let t = {
            let mm = mm.clone();
            thread::spawn(move || {
                let inv = mm
                    .invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap();
                inv.end();
            })
        };

        if free_before_unregister {
            // Broken on purpose: "frees" while callbacks may still run.
            sub.mem.free();
        }
        sub.as_ref().as_ref().unregister().unwrap();
        let after = latest(&sub.calls);
        // C-03: the memory may be freed at once.
        sub.mem.free();
        t.join().unwrap();
        assert_eq!(
            latest(&sub.calls),
            after,
            "C-03: a callback ran after unregister returned"
        );
    });
}

/// Thread B invalidates (start, end) while the main thread unregisters the subscriber
/// and then frees its memory. Every callback (start, end, release) reads that memory:
/// loom fails the model if one is not ordered before the free, and the callback count
/// read right after `unregister` returned must be final.
#[test]
fn c03_unregister_is_a_barrier() {
    c03_model(false);
}

/// The oracle of `c03_unregister_is_a_barrier` catches a free that is not ordered after
/// the callbacks.
#[test]
fn c03_detects_free_before_unregister() {
    must_fail(
        "c03_detects_free_before_unregister",
        &["freed memory", "ausality"],
        || c03_model(true),
    );
}

/// As `c03_unregister_is_a_barrier`, with the non-sleeping paths that walk the list:
/// `invalidate_secondary_tlbs` and ageing.
#[test]
fn c03_unregister_is_a_barrier_tlbs() {
    builder(3).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Guarded::new())));
        sub.as_ref().as_ref().register(&mm).unwrap();

        let t = {
            let mm = mm.clone();
            thread::spawn(move || {
                mm.invalidate_secondary_tlbs(0, PAGE).unwrap();
            })
        };

        sub.as_ref().as_ref().unregister().unwrap();
        let after = latest(&sub.calls);
        sub.mem.free();
        t.join().unwrap();
        assert_eq!(
            latest(&sub.calls),
            after,
            "C-03: a callback ran after unregister"
        );
    });
}

// ---------------------------------------------------------------------------------
// C-04: teardown racing unregister.
// ---------------------------------------------------------------------------------

struct Releasing {
    releases: AtomicUsize,
    /// The address space's pages: teardown frees them once `release` returned.
    pages: Memory,
}

impl SubscriberOps for Releasing {
    fn release(&self) {
        self.releases.fetch_add(1, Ordering::Relaxed);
        // A release drops translations to pages that teardown frees afterwards.
        self.pages.touch();
    }
}

/// Teardown (`AddressSpace::release`) on one thread, `unregister` on the other.
///
/// `release` is called exactly once, whoever claims it; and teardown does not return
/// before that call has returned, even when `unregister` made it: the teardown thread
/// frees the pages right after `release()` returns, and loom fails the model if the
/// subscriber's `release` (which reads them) is not ordered before that.
#[test]
fn c04_release_races_unregister() {
    builder(3).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Releasing {
            releases: AtomicUsize::new(0),
            pages: Memory::new(),
        })));
        sub.as_ref().as_ref().register(&mm).unwrap();

        let t = {
            let (mm, sub) = (mm.clone(), sub.clone());
            thread::spawn(move || {
                mm.release().unwrap();
                // Pages are freed after teardown returns.
                sub.pages.free();
            })
        };

        sub.as_ref().as_ref().unregister().unwrap();
        t.join().unwrap();
        assert_eq!(
            latest(&sub.releases),
            1,
            "C-04: release not called exactly once"
        );
        assert!(mm.is_dead());
    });
}

// ---------------------------------------------------------------------------------
// C-09 / C-12 / C-13: the interval sequence protocol.
// ---------------------------------------------------------------------------------

/// A secondary MMU mirroring one primary entry: `spte` is its translation, under its
/// own lock (the lock `invalidate` takes around `set_seq`).
struct Mirror {
    spte: Mutex<Option<u64>>,
    invalidations: AtomicUsize,
    mem: Memory,
}

impl Mirror {
    fn new() -> Self {
        Mirror {
            spte: Mutex::new(None),
            invalidations: AtomicUsize::new(0),
            mem: Memory::new(),
        }
    }
}

impl IntervalOps<Interval<P>> for Mirror {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.mem.touch();
        let mut spte = self.spte.lock().unwrap();
        iv.set_seq(cur_seq);
        *spte = None; // zap
        Ok(())
    }
}

type MirrorSub = IntervalSubscriber<Mirror, P>;

/// The fault path: read_begin, read the primary entry, lock, read_retry, install.
/// With `check_seq == false` it is the broken consumer that ignores the sequence.
fn fault(m: &MirrorSub, primary: &AtomicU64, check_seq: bool) -> Option<u64> {
    loop {
        let seq = m.interval().read_begin().unwrap();
        let v = primary.load(Ordering::Acquire);
        if v == 0 {
            return None; // not present
        }
        let mut spte = m.spte.lock().unwrap();
        if check_seq && m.interval().read_retry(seq) {
            continue; // an invalidation ran since read_begin: v may be stale
        }
        *spte = Some(v);
        return Some(v);
    }
}

/// The primary MMU's side: start, clear the entry, end.
fn unmap(mm: &AddressSpace<P>, primary: &AtomicU64, start: usize, end: usize) {
    let inv = mm
        .invalidate_range_start(Range::new(start, end, Event::Unmap))
        .unwrap();
    primary.store(0, Ordering::Release);
    inv.end();
}

fn c12_model(check_seq: bool) {
    builder(3).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let m = Arc::new(Box::pin(MirrorSub::new(Mirror::new())));
        m.as_ref().as_ref().insert(&mm, 0, PAGE).unwrap();
        let primary = Arc::new(AtomicU64::new(42));

        let t = {
            let (m, primary) = (m.clone(), primary.clone());
            thread::spawn(move || {
                fault(&m, &primary, check_seq);
            })
        };

        unmap(&mm, &primary, 0, PAGE);
        // C-09: once the invalidation ended, no translation to the cleared entry
        // exists...
        assert_eq!(
            *m.spte.lock().unwrap(),
            None,
            "C-09: stale translation at end"
        );
        t.join().unwrap();
        // ... and none is established afterwards from what the fault read before.
        assert_eq!(
            *m.spte.lock().unwrap(),
            None,
            "C-09: stale translation installed"
        );
    });
}

/// An interval subscriber's fault path (read_begin → read primary entry → lock →
/// read_retry → install) races an invalidation (start → clear entry → end): the
/// installed translation is never the cleared entry, neither at the invalidation's
/// end nor afterwards (the 2008 race).
#[test]
fn c09_c12_read_retry_catches_invalidation() {
    c12_model(true);
}

/// The same model with a consumer that ignores `read_retry` fails.
#[test]
fn c09_c12_detects_consumer_ignoring_sequence() {
    must_fail(
        "c09_c12_detects_consumer_ignoring_sequence",
        &["C-09"],
        || c12_model(false),
    );
}

/// An interval subscriber is removed while another thread invalidates over it: after
/// `remove` returns no `invalidate` runs (its memory is freed at once, the callback
/// count is final), also when the removal had to be deferred because the walk was in
/// flight.
#[test]
fn c13_remove_is_a_barrier() {
    builder(3).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let m = Arc::new(Box::pin(MirrorSub::new(Mirror::new())));
        m.as_ref().as_ref().insert(&mm, 0, PAGE).unwrap();

        let t = {
            let mm = mm.clone();
            thread::spawn(move || {
                let inv = mm
                    .invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap();
                inv.end();
            })
        };

        m.as_ref().as_ref().remove().unwrap();
        let after = latest(&m.invalidations);
        m.mem.free();
        t.join().unwrap();
        assert_eq!(
            latest(&m.invalidations),
            after,
            "C-13: invalidate ran after remove returned"
        );
        assert!(!m.interval().is_inserted());
    });
}

/// A second interval subscriber is inserted while an invalidation covering it is in
/// flight (the tree is frozen by a first subscriber, so the insertion is deferred), and
/// then faults with the sequence protocol. The invalidation clears the primary entry:
/// the new subscriber must never end up with a translation to it (its `read_begin`
/// waits / `read_retry` is true while the invalidation it missed is in flight). After
/// the dust settles, the deferred insertion has been applied: a later invalidation
/// reaches it.
#[test]
fn c13_insert_deferred_during_invalidation() {
    builder(2).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        // Fixed addresses: the tree's shape depends on them (see `Fixed`).
        // SAFETY: the previous execution's subscribers are no longer used.
        let (first, second) = unsafe {
            (
                C13D_SLOTS[0].place(MirrorSub::new(Mirror::new())),
                C13D_SLOTS[1].place(MirrorSub::new(Mirror::new())),
            )
        };
        first.insert(&mm, 0, 2 * PAGE).unwrap();
        let primary = Arc::new(AtomicU64::new(42));

        let t = {
            let (mm, primary) = (mm.clone(), primary.clone());
            thread::spawn(move || unmap(&mm, &primary, 0, 2 * PAGE))
        };

        second.insert(&mm, PAGE, PAGE).unwrap();
        fault(&second, &primary, true);
        t.join().unwrap();
        assert_eq!(
            *second.spte.lock().unwrap(),
            None,
            "C-13: stale translation"
        );

        // The insertion took effect.
        let n = latest(&second.invalidations);
        mm.invalidate_range_start(Range::new(PAGE, 2 * PAGE, Event::Unmap))
            .unwrap()
            .end();
        assert_eq!(latest(&second.invalidations), n + 1, "C-13: insertion lost");
        second.remove().unwrap();
        first.remove().unwrap();
        // SAFETY: nobody uses them any more.
        unsafe {
            C13D_SLOTS[0].take();
            C13D_SLOTS[1].take();
        }
    });
}

static C13D_SLOTS: [Fixed<MirrorSub>; 2] = [Fixed::new(), Fixed::new()];

// ---------------------------------------------------------------------------------
// C-05: get / put / synchronize.
// ---------------------------------------------------------------------------------

loom::lazy_static! {
    static ref ALLOCS: AtomicUsize = AtomicUsize::new(0);
    static ref FREES: AtomicUsize = AtomicUsize::new(0);
    /// What the shared subscriber's callbacks reach; `free` "frees" it.
    static ref KIND_MEM: Memory = Memory::new();
}

struct Kind;

impl SubscriberOps for Kind {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        KIND_MEM.touch();
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        KIND_MEM.touch();
    }
}

// SAFETY: `alloc` returns a fresh, leaked box or `None`; `free` takes back exactly those.
unsafe impl SharedOps<P> for Kind {
    fn alloc(_mm: &AddressSpace<P>) -> Option<NonNull<Shared<Self, P>>> {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        Some(NonNull::from(Box::leak(Box::new(Shared::new(Kind)))))
    }

    unsafe fn free(this: NonNull<Shared<Self, P>>) {
        FREES.fetch_add(1, Ordering::Relaxed);
        KIND_MEM.free();
        // SAFETY: from `alloc` (a leaked box), not used afterwards (trait contract).
        drop(unsafe { Box::from_raw(this.as_ptr()) });
    }
}

/// The main thread and thread A `get` the same kind (A gets while main still holds its
/// reference, so both must receive the one shared subscriber, with two users); both
/// `put`. Meanwhile thread C invalidates, so the shared subscriber's callbacks may be
/// running when the last `put` unlinks it. After `notifier_core::synchronize`, `free`
/// has run exactly once, and it never ran under a running callback (loom checks the
/// callbacks' reads of the subscriber's memory against `free`'s write).
#[test]
fn c05_get_put_synchronize() {
    builder(2).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let mine = mm.get::<Kind>().unwrap();
        let got = Arc::new(AtomicUsize::new(0));

        let a = {
            let (mm, got) = (mm.clone(), got.clone());
            thread::spawn(move || {
                let r = mm.get::<Kind>().unwrap();
                got.store(r.as_ptr() as usize, Ordering::Release);
                r.put();
            })
        };
        let c = {
            let mm = mm.clone();
            thread::spawn(move || {
                mm.invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap()
                    .end();
            })
        };

        // Hold our reference until A has got its own.
        let theirs = loop {
            let p = got.load(Ordering::Acquire);
            if p != 0 {
                break p;
            }
            thread::yield_now();
        };
        assert_eq!(
            theirs,
            mine.as_ptr() as usize,
            "C-05: two shared subscribers"
        );
        mine.put();
        a.join().unwrap();
        // A last `put` while C's invalidation is in flight leaves the subscriber
        // linked until that invalidation has ended (its end must reach it, C-02);
        // `synchronize` waits for that too, so join C first to keep the model small.
        c.join().unwrap();
        assert_freed_once();
    });
}

/// The last `put` of a shared subscriber while thread C invalidates, then a grace
/// period of `P::rcu()` on the main thread, which runs the frees queued by then (the
/// loom platform runs `call`ed callbacks at the next grace period). C's invalidation
/// walks the list inside its in-flight section only (one read-side section per
/// start/end pair): a node it may be on is freed only after C has left that section,
/// also when C began after the node was hidden (it skips the node's callbacks but
/// follows its `next`). The core's node witness (`Node::witness_walk` /
/// `witness_give_back`) makes loom report a walk not ordered before the free; the
/// mutant that queues a zombie's free as soon as the sweep unlinks it fails here.
#[test]
fn c05_shared_free_waits_for_walking_invalidations() {
    builder(2).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let r = mm.get::<Kind>().unwrap();
        let c = invalidate_on_thread(&mm);
        r.put();
        // Frees queued so far run now, possibly while C still walks.
        P::rcu().synchronize();
        c.join().unwrap();
        assert_freed_once();
    });
}

/// Thread C: one invalidation (start, end) of the first page, if the address space
/// still takes one.
fn invalidate_on_thread(mm: &Arc<AddressSpace<P>>) -> thread::JoinHandle<()> {
    let mm = mm.clone();
    thread::spawn(move || {
        if let Ok(inv) = mm.invalidate_range_start(Range::new(0, PAGE, Event::Unmap)) {
            inv.end();
        }
    })
}

/// After `notifier_core::synchronize`, the one shared subscriber allocated has been
/// freed, once.
fn assert_freed_once() {
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(ALLOCS.load(Ordering::Relaxed), 1);
    assert_eq!(
        FREES.load(Ordering::Relaxed),
        1,
        "C-05: free not run exactly once"
    );
}

/// As `c05_shared_free_waits_for_walking_invalidations`, with teardown racing the last
/// `put` (thread B) and an invalidation (thread C): whoever unlinks the shared node
/// (the put's sweep, teardown's unlink of every node, or the put after that unlink),
/// its free waits until C cannot be on it; teardown's own grace periods of `P::rcu()`
/// run the frees queued so far.
#[test]
fn c05_shared_free_waits_for_walkers_during_teardown() {
    builder(2).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let r = mm.get::<Kind>().unwrap();
        let b = thread::spawn(move || r.put());
        let c = invalidate_on_thread(&mm);
        mm.release().unwrap();
        b.join().unwrap();
        c.join().unwrap();
        drop(mm);
        assert_freed_once();
    });
}

/// The last `put` of a shared subscriber races the address space's teardown. The
/// zombie it makes is unlinked by whoever comes first: the put's own sweep, the sweep
/// after one of teardown's grace periods, or teardown's final unlink (when the put
/// made it between teardown's last grace period and that unlink). Either way `free`
/// runs exactly once, and the zombie count is zero again when the subscriptions object
/// is freed (a debug assertion in its drop: this model kills the mutants that
/// miscount teardown's unlink).
#[test]
fn c05_last_put_races_teardown() {
    builder(2).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let r = mm.get::<Kind>().unwrap();
        let b = thread::spawn(move || r.put());
        mm.release().unwrap();
        b.join().unwrap();
        drop(mm);
        assert_freed_once();
    });
}

// ---------------------------------------------------------------------------------
// The sleepable RCU itself.
// ---------------------------------------------------------------------------------

struct Obj {
    mem: Memory,
    freed: AtomicBool,
}

struct RcuList {
    ptr: AtomicPtr<Obj>,
    objs: [Obj; 2],
}

impl RcuList {
    fn new() -> Pin<Box<Self>> {
        let obj = || Obj {
            mem: Memory::new(),
            freed: AtomicBool::new(false),
        };
        let l = Box::pin(RcuList {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            objs: [obj(), obj()],
        });
        l.ptr
            .store(&l.objs[0] as *const Obj as *mut Obj, Ordering::Release);
        l
    }
}

fn reader(l: &RcuList, locked: bool) {
    let guard = locked.then(|| P::rcu().read_lock());
    let p = l.ptr.load(Ordering::Acquire);
    // SAFETY: `p` points into `l.objs` or is null; the objects are never really freed
    // (the model "frees" them by writing their memory).
    if let Some(o) = unsafe { p.as_ref() } {
        assert!(
            !o.freed.fetch_or(false, Ordering::Relaxed),
            "reader saw a freed object"
        );
        o.mem.touch();
    }
    drop(guard);
}

fn srcu_model(locked: bool) {
    builder(3).check(move || {
        let l = Arc::new(RcuList::new());
        let t = {
            let l = l.clone();
            thread::spawn(move || {
                reader(&l, locked);
                reader(&l, locked);
            })
        };
        // Writer: replace objs[0] by objs[1], then unlink objs[1]; free each after a
        // grace period.
        let rcu = P::rcu();
        let old = l
            .ptr
            .swap(&l.objs[1] as *const Obj as *mut Obj, Ordering::AcqRel);
        rcu.synchronize();
        // SAFETY: `old` is `objs[0]`.
        let old = unsafe { &*old };
        old.freed.store(true, Ordering::Relaxed);
        old.mem.free();
        let old = l.ptr.swap(std::ptr::null_mut(), Ordering::AcqRel);
        rcu.synchronize();
        // SAFETY: `old` is `objs[1]`.
        let old = unsafe { &*old };
        old.freed.store(true, Ordering::Relaxed);
        old.mem.free();
        t.join().unwrap();
    });
}

/// Classic RCU: a reader in `read_lock` follows a published pointer; the writer
/// unlinks (twice: two grace periods, so a reader section may straddle the index flip)
/// and, after `synchronize`, frees. The reader never sees a freed object: the flag is
/// read with a read-modify-write and loom checks the object's memory against the free.
#[test]
fn srcu_reader_never_sees_freed_object() {
    srcu_model(true);
}

/// Without `read_lock`, the same model fails: the oracle has teeth.
#[test]
fn srcu_detects_reader_without_read_lock() {
    must_fail(
        "srcu_detects_reader_without_read_lock",
        &["freed", "ausality"],
        || srcu_model(false),
    );
}

// ---------------------------------------------------------------------------------
// C-21: the page-keyed export registry's unexport barrier against the free path.
// ---------------------------------------------------------------------------------

struct Xp {
    mem: Memory,
    revoked: AtomicUsize,
}

impl notifier_core::export::ExportOps<P> for Xp {
    fn revoke(&self, page: &notifier_core::export::ExportedPage<P>, _pfn: u64) {
        while page.unmap_remote().is_ok() {}
        self.mem.touch();
        self.revoked.fetch_add(1, Ordering::Relaxed);
    }
}

/// The free path (`before_free`) on one thread, `unexport` on the other: after unexport
/// returns, `revoke` is neither running nor will run, so the exporter's memory may be
/// freed at once; and a page revoked is never mapped remotely again.
fn c21_model(free_before_unexport: bool) {
    builder(2).check(move || {
        // The page crosses to a `'static` thread, and a page borrows its registry:
        // the registry is leaked, as a kernel's would be a static.
        let reg: &'static _ =
            Box::leak(Box::new(notifier_core::export::ExportRegistry::<P>::new()));
        let ex = Arc::new(Box::pin(notifier_core::export::Exporter::new(
            reg,
            Xp {
                mem: Memory::new(),
                revoked: AtomicUsize::new(0),
            },
        )));
        let page = Arc::new(Box::pin(notifier_core::export::ExportedPage::<P>::new()));
        ex.as_ref()
            .as_ref()
            .export(page.as_ref().as_ref(), 7)
            .unwrap();
        page.map_remote().unwrap();
        let t = {
            let page = page.clone();
            thread::spawn(move || {
                let r = reg.before_free(7);
                if std::env::var("DBG").is_ok() {
                    eprintln!(
                        "DBG before_free={r:?} exported={} maps={}",
                        page.is_exported(),
                        page.remote_maps()
                    );
                }
                // Once the free path ran (or the page left the table), no importer may
                // map the page.
                assert!(
                    page.map_remote().is_err(),
                    "C-19: mapped after the free path"
                );
            })
        };
        if free_before_unexport {
            ex.mem.free();
        }
        let _ = ex.as_ref().as_ref().unexport(page.as_ref().as_ref());
        ex.mem.free();
        t.join().unwrap();
        assert!(latest(&ex.revoked) <= 1, "C-21: revoked twice");
    });
}

#[test]
fn c21_unexport_is_a_barrier_against_the_free_path() {
    c21_model(false);
}

#[test]
fn c21_detects_free_before_unexport() {
    must_fail(
        "c21_detects_free_before_unexport",
        &["freed memory", "ausality"],
        || c21_model(true),
    );
}

// ---------------------------------------------------------------------------------
// Issue 13: models that make the verification bite.
// ---------------------------------------------------------------------------------

/// Environment variable that tells a child process to run a model in isolation.
const ISOLATED_MODEL: &str = "NOTIFIER_LOOM_ISOLATED_MODEL";

/// Run `model` (which must pass) in a child process and pass if and only if the child
/// passed; on failure, report the model's first panic. Used for the models that a known
/// bug of the core makes fail: a failing loom model aborts its process while unwinding
/// (see [`must_fail`]), which would take the models after it down with it.
fn isolated(name: &str, model: impl FnOnce()) {
    if std::env::var(ISOLATED_MODEL).as_deref() == Ok(name) {
        model();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ISOLATED_MODEL, name)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("re-run the test binary");
    if out.status.success() {
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.split("panicked at").nth(1).unwrap_or(&stderr);
    let first = first.lines().take(3).collect::<Vec<_>>().join("\n");
    panic!("{name}: the model failed:{first}");
}

/// Storage at a fixed address for an object of a model.
///
/// The interval tree orders and balances by the intervals' addresses, so the number of
/// steps a walk takes depends on where the subscribers live; heap addresses change from
/// one loom execution to the next when threads allocate in a different order, which
/// loom rejects ("is the model fully deterministic?"). A static has one address.
///
/// # Invariants
///
/// Only one model uses a given slot, and loom runs its executions one after another:
/// `place` and `take` are never called concurrently on one slot.
struct Fixed<T>(std::cell::UnsafeCell<std::mem::MaybeUninit<T>>);

// SAFETY: the slot hands out shared references to a `T: Sync` only; `place`/`take` are
// serialised (type invariant).
unsafe impl<T: Sync> Sync for Fixed<T> {}

impl<T> Fixed<T> {
    const fn new() -> Self {
        Fixed(std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()))
    }

    /// Put `v` in the slot (forgetting what an aborted execution may have left there).
    ///
    /// # Safety
    ///
    /// No reference from an earlier `place` is used any more.
    unsafe fn place(&'static self, v: T) -> Pin<&'static T> {
        // SAFETY: caller's contract: nobody uses the old value; the slot is ours
        // (type invariant).
        let r: &'static T = unsafe { (*self.0.get()).write(v) };
        // SAFETY: a static never moves; the value is dropped in place by `take`.
        unsafe { Pin::new_unchecked(r) }
    }

    /// Drop the value in place.
    ///
    /// # Safety
    ///
    /// The slot holds a value from `place` that nobody uses any more.
    unsafe fn take(&'static self) {
        // SAFETY: caller's contract.
        unsafe { (*self.0.get()).assume_init_drop() }
    }
}

// --- (a) the portable SRCU with two concurrent readers -----------------------------

/// Two reader threads, each in one read-side section of the portable [`Srcu`]
/// (`P::rcu()`), follow a published pointer; the writer unlinks the object, waits with
/// `synchronize` and frees it. With `early_exit` the second reader leaves its section
/// before it is done with the object (the broken twin).
///
/// Two readers are what the grace-period check needs to be wrong in a way one reader
/// cannot show: with the sums taken in the wrong order (locks before unlocks), a reader
/// that enters and leaves during the check hides one that is still inside.
///
/// [`Srcu`]: notifier_core::srcu::Srcu
fn srcu_two_readers_model(early_exit: bool) {
    builder(3).check(move || {
        let l = Arc::new(RcuList::new());
        let readers: Vec<_> = (0..2)
            .map(|i| {
                let l = l.clone();
                thread::spawn(move || {
                    if early_exit && i == 1 {
                        // Broken: the section ends before the object is used.
                        drop(P::rcu().read_lock());
                        reader(&l, false);
                    } else {
                        reader(&l, true);
                    }
                })
            })
            .collect();
        let old = l.ptr.swap(std::ptr::null_mut(), Ordering::AcqRel);
        P::rcu().synchronize();
        // SAFETY: `old` is `objs[0]`.
        let old = unsafe { &*old };
        old.freed.store(true, Ordering::Relaxed);
        old.mem.free();
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// The portable SRCU's grace period waits for two concurrent readers.
#[test]
fn srcu_two_readers_never_see_freed_object() {
    srcu_two_readers_model(false);
}

/// The oracle of `srcu_two_readers_never_see_freed_object` catches a reader that uses
/// the object after its section ended.
#[test]
fn srcu_two_readers_detects_reader_leaving_early() {
    must_fail(
        "srcu_two_readers_detects_reader_leaving_early",
        &["freed", "ausality"],
        || srcu_two_readers_model(true),
    );
}

// --- (b) C-02: register returns only once the invalidations it missed are over ------

/// Thread B runs one invalidation and marks the primary change as open (`open` = 1)
/// while it is between `start` and `end`; the main thread registers a subscriber and,
/// once `register` returned, checks the C-02 promise "no primary change that began
/// before it is still in flight unseen": if a change is still open, the subscriber was
/// told of it. `Before::Fresh` starts from an address space nobody ever subscribed to;
/// `Before::Prepared` from one whose per-address-space object exists with nobody on its
/// list (the invalidation takes the inline bracketed path); `Before::Subscribed` from
/// one where another subscriber is registered first. [`How`] says how B starts.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    Fresh,
    Prepared,
    Subscribed,
}

/// How thread B of [`c02_register_settled_model`] starts its invalidation.
#[derive(Clone, Copy, PartialEq)]
enum How {
    /// `AddressSpace::invalidate_range_start`.
    Counted,
    /// The same, but the primary MMU opens its change before calling it (the broken
    /// twin: no core can see that change).
    ChangeBeforeStart,
    /// Through a [`RegistrationExcluded`] made with a lock held for reading, which the
    /// registration holds for writing. With `Before::Fresh` the start is a load and a
    /// branch that counts nothing: only the lock keeps the registration from returning
    /// while B's change is open.
    Excluded,
    /// The same, but the registration does not take the lock (the broken twin: a
    /// backend whose proof is false).
    ExcludedByAFalseProof,
}

fn c02_register_settled_model(before: Before, how: How) {
    builder(3).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let lock = Arc::new(RwLock::new(()));
        let other = Box::pin(Subscriber::<_, P>::new(Pairs::default()));
        match before {
            Before::Fresh => {}
            Before::Prepared => mm.prepare().unwrap(),
            Before::Subscribed => other.as_ref().register(&mm).unwrap(),
        }
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Pairs::default())));
        let open = Arc::new(AtomicUsize::new(0));

        let excluded = matches!(how, How::Excluded | How::ExcludedByAFalseProof);
        let t = {
            let (mm, lock, open) = (mm.clone(), lock.clone(), open.clone());
            thread::spawn(move || {
                let read = excluded.then(|| lock.read().unwrap());
                // SAFETY: with `How::Excluded` every registration racing this thread
                // holds `lock` for writing (`ExcludedByAFalseProof` breaks exactly that
                // promise, as the broken twin).
                let proof = read
                    .as_ref()
                    .map(|_| unsafe { RegistrationExcluded::new(&mm) });
                if how == How::ChangeBeforeStart {
                    open.fetch_add(1, Ordering::AcqRel);
                }
                let range = Range::new(0, PAGE, Event::Unmap);
                let inv = match &proof {
                    Some(ex) => ex.invalidate_range_start(range),
                    None => mm.invalidate_range_start(range),
                }
                .unwrap();
                if how != How::ChangeBeforeStart {
                    open.fetch_add(1, Ordering::AcqRel);
                }
                // ... the page-table entries change here ...
                open.fetch_sub(1, Ordering::AcqRel);
                inv.end();
            })
        };

        {
            let _write = (how == How::Excluded).then(|| lock.write().unwrap());
            sub.as_ref().as_ref().register(&mm).unwrap();
        }
        if latest(&open) != 0 {
            assert_eq!(
                latest(&sub.starts),
                1,
                "C-02: register returned while an invalidation that skipped the new \
                 subscriber is still between start and end"
            );
        }
        t.join().unwrap();
        let (s, e) = (latest(&sub.starts), latest(&sub.ends));
        assert_eq!(s, e, "C-02: half pair (starts {s}, ends {e})");
        sub.as_ref().as_ref().unregister().unwrap();
        if before == Before::Subscribed {
            other.as_ref().unregister().unwrap();
        }
    });
}

/// C-02 on an address space that already has subscriptions.
#[test]
fn c02_register_returns_after_missed_invalidations() {
    c02_register_settled_model(Before::Subscribed, How::Counted);
}

/// C-02 on an address space whose object exists with an empty list: the invalidation
/// counts itself and returns inline, calling nobody.
#[test]
fn c02_register_returns_after_missed_invalidations_prepared() {
    c02_register_settled_model(Before::Prepared, How::Counted);
}

/// C-02 on an address space nobody subscribed to yet: the invalidation took the
/// one-branch fast path, which counts it nowhere.
#[test]
fn c02_register_returns_after_missed_invalidations_fresh() {
    isolated(
        "c02_register_returns_after_missed_invalidations_fresh",
        || c02_register_settled_model(Before::Fresh, How::Counted),
    );
}

/// The C-02 oracle catches a primary MMU that changes entries before `start`.
#[test]
fn c02_detects_change_before_start() {
    must_fail(
        "c02_detects_change_before_start",
        &["C-02: register returned"],
        || c02_register_settled_model(Before::Subscribed, How::ChangeBeforeStart),
    );
}

// --- (b') C-02 by exclusion: a registration that holds the invalidations' lock --------

/// C-02 for the excluded start on an address space nobody subscribed to: the lock
/// alone orders the first registration after the invalidation it would have missed.
#[test]
fn c02_register_excluded_by_a_lock_fresh() {
    isolated("c02_register_excluded_by_a_lock_fresh", || {
        c02_register_settled_model(Before::Fresh, How::Excluded)
    });
}

/// The same once the object exists: the excluded start is the bracketed one.
#[test]
fn c02_register_excluded_by_a_lock_subscribed() {
    c02_register_settled_model(Before::Subscribed, How::Excluded);
}

/// The C-02 oracle catches a false proof: a registration that does not take the lock
/// returns while the excluded invalidation it missed is still changing page tables.
#[test]
fn c02_detects_registration_ignoring_the_lock() {
    must_fail(
        "c02_detects_registration_ignoring_the_lock",
        &["C-02: register returned"],
        || c02_register_settled_model(Before::Fresh, How::ExcludedByAFalseProof),
    );
}

// --- (c) C-09: two concurrent first interval insertions -----------------------------

/// The broken consumer of the twins: reads the primary entry before `read_begin`.
fn fault_reading_early(m: &MirrorSub, primary: &AtomicU64) -> Option<u64> {
    let v = primary.load(Ordering::Acquire);
    if v == 0 {
        return None;
    }
    loop {
        let seq = m.interval().read_begin().unwrap();
        let mut spte = m.spte.lock().unwrap();
        if m.interval().read_retry(seq) {
            continue;
        }
        *spte = Some(v);
        return Some(v);
    }
}

static C09_SLOTS: [Fixed<MirrorSub>; 2] = [Fixed::new(), Fixed::new()];

/// Insert the interval subscriber of slot `i` over `[start, start + PAGE)` and fault
/// once; returns it (still inserted).
fn insert_and_fault(
    mm: &AddressSpace<P>,
    primary: &AtomicU64,
    i: usize,
    start: usize,
    early_read: bool,
) -> Pin<&'static MirrorSub> {
    // SAFETY: the previous execution's subscriber is no longer used (the model drops
    // it at its end, or the execution was abandoned).
    let m = unsafe { C09_SLOTS[i].place(MirrorSub::new(Mirror::new())) };
    m.insert(mm, start, PAGE).unwrap();
    if early_read {
        fault_reading_early(&m, primary);
    } else {
        fault(&m, primary, true);
    }
    m
}

/// An address space with a list subscriber (so its per-address-space object exists)
/// but no interval yet. Thread B runs an unmap (start, clear the primary entry, end)
/// over the one page; thread C and the main thread each insert the address space's
/// first interval subscriber over that page and fault it with the sequence protocol.
/// The invalidation may have started before the tree existed and skipped it: each
/// insertion must then wait for it (or make `read_retry` true), so that neither
/// subscriber ends with a translation to the cleared entry (issue 13, item 1). With
/// `early_read` the consumers read the primary entry before `read_begin` (the twin).
fn c09_first_insertions_model(two: bool, early_read: bool) {
    // One preemption is enough for the race (B preempted inside its invalidation, the
    // rest runs at yields); two make three threads with grace-period spins explode.
    builder(if two { 1 } else { 2 }).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let list = Box::pin(Subscriber::<_, P>::new(Pairs::default()));
        list.as_ref().register(&mm).unwrap();
        let primary = Arc::new(AtomicU64::new(42));

        let b = {
            let (mm, primary) = (mm.clone(), primary.clone());
            thread::spawn(move || unmap(&mm, &primary, 0, PAGE))
        };
        let c = two.then(|| {
            let (mm, primary) = (mm.clone(), primary.clone());
            thread::spawn(move || insert_and_fault(&mm, &primary, 1, 0, early_read))
        });
        let mine = insert_and_fault(&mm, &primary, 0, 0, early_read);
        let theirs = c.map(|c| c.join().unwrap());
        b.join().unwrap();
        // Every invalidation is over: a translation installed before the unmap began
        // was zapped by it; one installed later read the cleared entry. What is left
        // is stale only if an insertion returned while an unmap it missed was still
        // in flight.
        for m in [Some(mine), theirs].into_iter().flatten() {
            assert_eq!(
                *m.spte.lock().unwrap(),
                None,
                "C-09: stale translation: an insertion returned while an invalidation \
                 that skipped the tree was still in flight"
            );
            m.remove().unwrap();
        }
        if two {
            // SAFETY: thread C is done with its subscriber.
            unsafe { C09_SLOTS[1].take() };
        }
        list.as_ref().unregister().unwrap();
        // SAFETY: nobody uses the subscriber any more.
        unsafe { C09_SLOTS[0].take() };
    });
}

/// C-09: the first interval insertion waits for the invalidation that skipped the tree
/// (one inserter: the case the core handles today).
#[test]
fn c09_first_insertion_waits() {
    c09_first_insertions_model(false, false);
}

/// Issue 13 item 1 (C-09): concurrent first interval insertions both wait for the
/// invalidation that skipped the tree.
#[test]
fn c09_concurrent_first_insertions() {
    isolated("c09_concurrent_first_insertions", || {
        c09_first_insertions_model(true, false)
    });
}

/// The oracle of `c09_concurrent_first_insertions` catches a consumer that reads the
/// primary entry before `read_begin`.
#[test]
fn c09_detects_read_before_read_begin() {
    must_fail("c09_detects_read_before_read_begin", &["C-09"], || {
        c09_first_insertions_model(true, true)
    });
}

// --- (d) C-13: the removed interval is really freed ---------------------------------

/// An interval subscriber whose memory lives outside it and is "freed" when the
/// subscriber itself is dropped (after the core's `Drop` removed it).
struct Owned {
    calls: Arc<AtomicUsize>,
    mem: Arc<Memory>,
    lock: Mutex<()>,
}

impl IntervalOps<Interval<P>> for Owned {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.mem.touch();
        let _g = self.lock.lock().unwrap();
        iv.set_seq(cur_seq);
        Ok(())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // Runs after `IntervalSubscriber::drop` removed the interval: the memory goes
        // with the subscriber.
        self.mem.free();
    }
}

type OwnedSub = IntervalSubscriber<Owned, P>;

static C13_SLOTS: [Fixed<OwnedSub>; 2] = [Fixed::new(), Fixed::new()];

/// The subscriber of slot `i`, with its call counter and memory.
fn owned(i: usize) -> (Pin<&'static OwnedSub>, Arc<AtomicUsize>, Arc<Memory>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mem = Arc::new(Memory::new());
    // SAFETY: the previous execution's subscriber is no longer used.
    let s = unsafe {
        C13_SLOTS[i].place(IntervalSubscriber::new(Owned {
            calls: calls.clone(),
            mem: mem.clone(),
            lock: Mutex::new(()),
        }))
    };
    (s, calls, mem)
}

/// Two interval subscribers A `[0, PAGE)` and B `[PAGE, 2 PAGE)`; thread T invalidates
/// `[0, 2 PAGE)` while the main thread drops A (its `Drop` removes it, then A's memory
/// is freed) and reuses A's storage for a fresh subscriber nobody inserts. The walk may be passing through A when it is removed: loom checks every
/// read of A's memory by its callback against the free, and B, which stays, is told
/// exactly once. A later invalidation reaches B and neither A nor the fresh subscriber
/// (which only a core that touched A after `remove` returned could have linked). With `free_first` A's
/// memory is freed before A is dropped (the twin).
fn c13_removed_interval_freed_model(free_first: bool) {
    builder(3).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let (a, a_calls, a_mem) = owned(0);
        let (b, b_calls, _b_mem) = owned(1);
        a.insert(&mm, 0, PAGE).unwrap();
        b.insert(&mm, PAGE, PAGE).unwrap();
        let ghost_calls = Arc::new(AtomicUsize::new(0));

        // The thread that removes and frees runs second, so that a schedule where the
        // invalidation is preempted right after it made the sequence even, and the
        // remover then returns, frees and reuses, fits in the preemption bound.
        let t = {
            let ghost_calls = ghost_calls.clone();
            let a_calls = a_calls.clone();
            thread::spawn(move || {
                if free_first {
                    a_mem.free();
                }
                // SAFETY: A is not used after this (its `Drop` removes it).
                unsafe { C13_SLOTS[0].take() };
                let after = latest(&a_calls);
                // The memory is reused at once, as a freed allocation would be: a fresh
                // subscriber that nobody inserts. A core that still touched A after its
                // removal returned (a deferred removal applied after the sequence went
                // even) now touches this one: it links it into the tree, and
                // invalidations call it.
                // SAFETY: A was dropped above and is used by nobody.
                let _ghost = unsafe {
                    C13_SLOTS[0].place(IntervalSubscriber::new(Owned {
                        calls: ghost_calls,
                        mem: Arc::new(Memory::new()),
                        lock: Mutex::new(()),
                    }))
                };
                after
            })
        };

        mm.invalidate_range_start(Range::new(0, 2 * PAGE, Event::Unmap))
            .unwrap()
            .end();
        let after = t.join().unwrap();
        assert_eq!(latest(&a_calls), after, "C-13: invalidate ran after remove");
        assert_eq!(
            latest(&b_calls),
            1,
            "C-13: the remaining interval was not told"
        );
        mm.invalidate_range_start(Range::new(0, 2 * PAGE, Event::Unmap))
            .unwrap()
            .end();
        assert_eq!(latest(&b_calls), 2, "C-13: the remaining interval was lost");
        assert_eq!(
            latest(&a_calls),
            after,
            "C-13: a removed interval was called"
        );
        assert_eq!(
            latest(&ghost_calls),
            0,
            "C-13: the core used a removed interval's memory after remove returned"
        );
        let _ = a;
        // SAFETY: nobody uses B or the fresh subscriber any more.
        unsafe {
            C13_SLOTS[0].take();
            C13_SLOTS[1].take();
        }
    });
}

/// C-13: dropping (removing and freeing) an interval subscriber while an invalidation
/// walks the tree.
#[test]
fn c13_removed_interval_is_freed() {
    c13_removed_interval_freed_model(false);
}

/// The oracle of `c13_removed_interval_is_freed` catches memory freed before removal.
#[test]
fn c13_detects_free_before_remove() {
    must_fail(
        "c13_detects_free_before_remove",
        &["freed memory", "ausality"],
        || c13_removed_interval_freed_model(true),
    );
}

// --- (e) C-03: unregister opens no window before `release` --------------------------

/// A list subscriber that holds translations until its `release` has returned.
struct Holder {
    /// Calls of the operation under test that reached the subscriber.
    told: AtomicUsize,
    /// `release` has returned: no translation is held any more.
    released: AtomicBool,
    /// The broken twin: a consumer that ignores the call (keeps its translations).
    deaf: bool,
}

impl Holder {
    fn tell(&self) {
        if !self.deaf {
            self.told.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl SubscriberOps for Holder {
    fn release(&self) {
        // ... drop every translation, then:
        self.released.store(true, Ordering::Release);
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.tell();
        Ok(())
    }
    fn invalidate_secondary_tlbs(&self, _s: usize, _e: usize) {
        self.tell();
    }
    fn clear_young(&self, _s: usize, _e: usize) -> bool {
        self.tell();
        false
    }
}

#[derive(Clone, Copy)]
enum WindowOp {
    Invalidate,
    SecondaryTlbs,
    ClearYoung,
}

/// Thread B runs one operation covering the subscriber (an invalidation start/end, an
/// `invalidate_secondary_tlbs`, a `clear_young`) while the main thread unregisters it.
/// C-03: until `release` has run, the subscriber keeps receiving every call that covers
/// it; so when B's call returns, either it reached the subscriber or `release` had
/// already returned (issue 13, item 2).
fn c03_window_model(op: WindowOp, deaf: bool) {
    builder(3).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Holder {
            told: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            deaf,
        })));
        sub.as_ref().as_ref().register(&mm).unwrap();

        let t = {
            let (mm, sub) = (mm.clone(), sub.clone());
            thread::spawn(move || {
                let check = || {
                    assert!(
                        latest(&sub.told) != 0 || sub.released.fetch_or(false, Ordering::AcqRel),
                        "C-03: a call covering the subscriber skipped it before its release \
                         had run"
                    );
                };
                match op {
                    WindowOp::Invalidate => {
                        let inv = mm
                            .invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                            .unwrap();
                        check();
                        inv.end();
                    }
                    WindowOp::SecondaryTlbs => {
                        mm.invalidate_secondary_tlbs(0, PAGE).unwrap();
                        check();
                    }
                    WindowOp::ClearYoung => {
                        mm.clear_young(0, PAGE).unwrap();
                        check();
                    }
                }
            })
        };

        sub.as_ref().as_ref().unregister().unwrap();
        t.join().unwrap();
    });
}

/// Issue 13 item 2: an invalidation during `unregister` reaches the subscriber until
/// its `release` has run.
#[test]
fn c03_unregister_window_invalidate() {
    isolated("c03_unregister_window_invalidate", || {
        c03_window_model(WindowOp::Invalidate, false)
    });
}

/// Issue 13 item 2, with `invalidate_secondary_tlbs`.
#[test]
fn c03_unregister_window_secondary_tlbs() {
    isolated("c03_unregister_window_secondary_tlbs", || {
        c03_window_model(WindowOp::SecondaryTlbs, false)
    });
}

/// Issue 13 item 2, with ageing (`clear_young`).
#[test]
fn c03_unregister_window_clear_young() {
    isolated("c03_unregister_window_clear_young", || {
        c03_window_model(WindowOp::ClearYoung, false)
    });
}

/// The window oracle catches a subscriber that ignores the flush.
#[test]
fn c03_window_detects_deaf_subscriber() {
    must_fail(
        "c03_window_detects_deaf_subscriber",
        &["C-03: a call covering"],
        || c03_window_model(WindowOp::SecondaryTlbs, true),
    );
}

// --- C-02 at the edges: the last `put` and teardown between a start and its end ----

loom::lazy_static! {
    static ref PUT_STARTS: AtomicUsize = AtomicUsize::new(0);
    static ref PUT_ENDS: AtomicUsize = AtomicUsize::new(0);
}

/// A shared subscriber kind that counts its starts and ends.
struct PutKind;

impl SubscriberOps for PutKind {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        PUT_STARTS.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        PUT_ENDS.fetch_add(1, Ordering::AcqRel);
    }
}

// SAFETY: `alloc` returns a fresh, leaked box or `None`; `free` takes back exactly those.
unsafe impl SharedOps<P> for PutKind {
    fn alloc(_mm: &AddressSpace<P>) -> Option<NonNull<Shared<Self, P>>> {
        Some(NonNull::from(Box::leak(Box::new(Shared::new(PutKind)))))
    }

    unsafe fn free(this: NonNull<Shared<Self, P>>) {
        // SAFETY: from `alloc` (a leaked box), not used afterwards (trait contract).
        drop(unsafe { Box::from_raw(this.as_ptr()) });
    }
}

/// Thread B runs one invalidation while the main thread gives back the only reference
/// on a shared subscriber. C-02: whatever ends the subscription, a start it saw gets
/// its end (issue 13, item 7). With `leak` the primary MMU leaks its invalidation
/// (`mem::forget`: no end is ever called), the twin.
fn c02_last_put_model(leak: bool) {
    builder(3).check(move || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let r = mm.get::<PutKind>().unwrap();
        if leak {
            // The twin, deterministic: the start reaches the subscriber, the end never
            // comes. (Leaked concurrently, the invalidation would stay in flight for
            // ever and the model's teardown would wait for it.)
            std::mem::forget(
                mm.invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap(),
            );
            r.put();
            let (s, e) = (latest(&PUT_STARTS), latest(&PUT_ENDS));
            assert_eq!(s, e, "C-02: start without its end (starts {s}, ends {e})");
            return;
        }
        let t = {
            let mm = mm.clone();
            thread::spawn(move || {
                let inv = mm
                    .invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap();
                if leak {
                    std::mem::forget(inv);
                } else {
                    inv.end();
                }
            })
        };
        r.put();
        t.join().unwrap();
        notifier_core::synchronize::<P>().unwrap();
        let (s, e) = (latest(&PUT_STARTS), latest(&PUT_ENDS));
        assert_eq!(s, e, "C-02: start without its end (starts {s}, ends {e})");
    });
}

/// Issue 13 item 7: the last `put` between a start and its end.
#[test]
fn c02_last_put_between_start_and_end() {
    isolated("c02_last_put_between_start_and_end", || {
        c02_last_put_model(false)
    });
}

/// The pairs oracle catches an invalidation that is never ended.
#[test]
fn c02_detects_leaked_invalidation() {
    must_fail(
        "c02_detects_leaked_invalidation",
        &["C-02: start without its end"],
        || c02_last_put_model(true),
    );
}

/// Thread B runs one invalidation while the main thread tears the address space down.
/// C-02: a start the subscriber saw gets its end, teardown or not (issue 13, item 7: a
/// start can run after teardown's `release` and never get its end).
#[test]
fn c02_teardown_between_start_and_end() {
    isolated("c02_teardown_between_start_and_end", || {
        builder(3).check(|| {
            let mm = Arc::new(AddressSpace::<P>::new());
            let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Pairs::default())));
            sub.as_ref().as_ref().register(&mm).unwrap();
            let t = {
                let mm = mm.clone();
                thread::spawn(move || {
                    mm.invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                        .unwrap()
                        .end();
                })
            };
            mm.release().unwrap();
            t.join().unwrap();
            let (s, e) = (latest(&sub.starts), latest(&sub.ends));
            assert_eq!(s, e, "C-02: start without its end (starts {s}, ends {e})");
            sub.as_ref().as_ref().unregister().unwrap();
        });
    });
}

/// Thread B runs one invalidation while the main thread unregisters the subscriber.
/// C-02: an invalidation that called the subscriber's start delivers its end before
/// `unregister` returns (unregister waits for the in-flight invalidations; the broken
/// twin of this oracle is `c02_detects_leaked_invalidation`).
#[test]
fn c02_unregister_between_start_and_end() {
    builder(3).check(|| {
        let mm = Arc::new(AddressSpace::<P>::new());
        let sub = Arc::new(Box::pin(Subscriber::<_, P>::new(Pairs::default())));
        sub.as_ref().as_ref().register(&mm).unwrap();
        let t = {
            let mm = mm.clone();
            thread::spawn(move || {
                mm.invalidate_range_start(Range::new(0, PAGE, Event::Unmap))
                    .unwrap()
                    .end();
            })
        };
        sub.as_ref().as_ref().unregister().unwrap();
        let (s, e) = (latest(&sub.starts), latest(&sub.ends));
        assert_eq!(
            s, e,
            "C-02: unregister returned between a start and its end (starts {s}, ends {e})"
        );
        t.join().unwrap();
    });
}
