//! Loom models of the core's concurrency protocols.
//!
//! Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p notifier-core --test loom --release
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
use loom::sync::{Arc, Mutex};
use loom::thread;

use loom_platform::LoomPlatform as P;
use notifier_core::srcu::SleepableRcu;
use notifier_core::{
    AddressSpace, Event, Interval, IntervalOps, IntervalSubscriber, Platform, Range, Shared,
    SharedOps, Subscriber, SubscriberOps, WouldBlock,
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

impl IntervalOps<P> for Mirror {
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
        let first = Box::pin(MirrorSub::new(Mirror::new()));
        first.as_ref().insert(&mm, 0, 2 * PAGE).unwrap();
        let primary = Arc::new(AtomicU64::new(42));

        let t = {
            let (mm, primary) = (mm.clone(), primary.clone());
            thread::spawn(move || unmap(&mm, &primary, 0, 2 * PAGE))
        };

        let second = Box::pin(MirrorSub::new(Mirror::new()));
        second.as_ref().insert(&mm, PAGE, PAGE).unwrap();
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
        second.as_ref().remove().unwrap();
        first.as_ref().remove().unwrap();
    });
}

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
        notifier_core::synchronize::<P>().unwrap();
        assert_eq!(ALLOCS.load(Ordering::Relaxed), 1);
        assert_eq!(
            FREES.load(Ordering::Relaxed),
            1,
            "C-05: free not run exactly once"
        );
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
