//! Unit tests of the core, one or more per case of the contract (C-01…C-17), on the
//! hosted platform. The conformance suite (`tests/` at the workspace root) checks the
//! same cases end to end against a primary MMU; these check the core alone.
#![cfg(not(loom))]

use std::collections::BTreeMap;
use std::pin::{pin, Pin};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Bug, Error, Event, Interval, IntervalHandle, IntervalOps, IntervalSubscriber,
    Range, Shared, SharedOps, SharedRef, Subscriber, SubscriberOps, WouldBlock,
};

const PG: usize = 4096;

/// Iteration counts: Miri interprets every step, so it runs the same tests smaller.
const fn n(full: usize) -> usize {
    if cfg!(miri) {
        if full / 40 > 4 {
            full / 40
        } else {
            4
        }
    } else {
        full
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Start(Range),
    End(Range),
    Release,
    Tlbs(usize, usize),
}

/// A subscriber that records every callback, optionally refuses non-blockable starts.
#[derive(Default)]
struct Rec {
    log: Mutex<Vec<Ev>>,
    refuse: AtomicBool,
    young: AtomicBool,
    young_calls: AtomicUsize,
    sleep_in_start: AtomicBool,
}

impl Rec {
    fn refusing() -> Self {
        let r = Rec::default();
        r.refuse.store(true, Ordering::Relaxed);
        r
    }
    fn log(&self) -> Vec<Ev> {
        self.log.lock().unwrap().clone()
    }
    fn starts(&self) -> usize {
        self.log()
            .iter()
            .filter(|e| matches!(e, Ev::Start(_)))
            .count()
    }
    fn ends(&self) -> usize {
        self.log()
            .iter()
            .filter(|e| matches!(e, Ev::End(_)))
            .count()
    }
    fn releases(&self) -> usize {
        self.log()
            .iter()
            .filter(|e| matches!(e, Ev::Release))
            .count()
    }
}

impl SubscriberOps for Rec {
    fn release(&self) {
        self.log.lock().unwrap().push(Ev::Release);
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if self.sleep_in_start.load(Ordering::Relaxed) {
            // A callback that may sleep says so, as kernel code would.
            <P as notifier_core::Platform>::might_sleep();
        }
        if self.refuse.load(Ordering::Relaxed) {
            return Err(WouldBlock);
        }
        self.log.lock().unwrap().push(Ev::Start(*r));
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        self.log.lock().unwrap().push(Ev::End(*r));
    }
    fn invalidate_secondary_tlbs(&self, s: usize, e: usize) {
        self.log.lock().unwrap().push(Ev::Tlbs(s, e));
    }
    fn clear_flush_young(&self, _s: usize, _e: usize) -> bool {
        self.young_calls.fetch_add(1, Ordering::Relaxed);
        self.young.swap(false, Ordering::Relaxed)
    }
    fn clear_young(&self, _s: usize, _e: usize) -> bool {
        self.young_calls.fetch_add(1, Ordering::Relaxed);
        self.young.swap(false, Ordering::Relaxed)
    }
    fn test_young(&self, _a: usize) -> bool {
        self.young_calls.fetch_add(1, Ordering::Relaxed);
        self.young.load(Ordering::Relaxed)
    }
}

fn unmap(mm: &AddressSpace<P>, start: usize, end: usize) {
    mm.invalidate_range_start(Range::new(start, end, Event::Unmap))
        .unwrap()
        .end();
}

// ---------------------------------------------------------------- C-01

#[test]
fn c01_register_then_every_invalidation_reaches() {
    let mm = AddressSpace::<P>::new();
    unmap(&mm, 0, PG); // before: not seen
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    unmap(&mm, PG, 2 * PG);
    unmap(&mm, 0, 8 * PG);
    let r1 = Range::new(PG, 2 * PG, Event::Unmap);
    let r2 = Range::new(0, 8 * PG, Event::Unmap);
    assert_eq!(
        s.log(),
        vec![Ev::Start(r1), Ev::End(r1), Ev::Start(r2), Ev::End(r2)]
    );
}

#[test]
fn c01_register_twice_and_on_dead() {
    let mm = AddressSpace::<P>::new();
    let mm2 = AddressSpace::<P>::new();
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    assert_eq!(s.as_ref().register(&mm), Err(Error::AlreadyRegistered));
    assert_eq!(s.as_ref().register(&mm2), Err(Error::AlreadyRegistered));
    mm2.release().unwrap();
    let t = pin!(Subscriber::<_, P>::new(Rec::default()));
    assert_eq!(t.as_ref().register(&mm2), Err(Error::Dead));
    assert!(!t.is_registered());
    // Dead without ever having had subscriptions too.
    let mm3 = AddressSpace::<P>::new();
    mm3.release().unwrap();
    assert_eq!(t.as_ref().register(&mm3), Err(Error::Dead));
    // The first registration is intact.
    unmap(&mm, 0, PG);
    assert_eq!(s.starts(), 1);
}

// ---------------------------------------------------------------- C-02

#[test]
fn c02_registration_waits_for_invalidations_in_flight() {
    let mm = Arc::new(AddressSpace::<P>::new());
    // Make the subscriptions exist.
    let first = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    first.as_ref().register(&mm).unwrap();
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    let s = Arc::new(Box::pin(Subscriber::<_, P>::new(Rec::default())));
    let done = Arc::new(AtomicBool::new(false));
    let h = {
        let (mm, s, done) = (mm.clone(), s.clone(), done.clone());
        thread::spawn(move || {
            s.as_ref().as_ref().register(&mm).unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "register returned while an invalidation was in flight"
    );
    inv.end();
    h.join().unwrap();
    // It saw neither the start nor the end of the invalidation it waited for.
    assert_eq!(s.log(), vec![]);
    unmap(&mm, 0, PG);
    assert_eq!(s.starts(), 1);
    assert_eq!(s.ends(), 1);
}

#[test]
fn c02_no_half_pairs_under_churn() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let inval = {
        let (mm, stop) = (mm.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let a = (n % 16) * PG;
                unmap(&mm, a, a + PG);
                n += 1;
            }
        })
    };
    for _ in 0..n(200) {
        let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        s.as_ref().register(&mm).unwrap();
        thread::yield_now();
        s.as_ref().unregister().unwrap();
        // Every end has its start and every start its end, in order, per range.
        let mut open: Option<Range> = None;
        for e in s.log() {
            match e {
                Ev::Start(r) => {
                    assert!(open.is_none(), "nested start on one thread");
                    open = Some(r);
                }
                Ev::End(r) => {
                    assert_eq!(open.take(), Some(r), "end without its start");
                }
                // `release` comes first in `unregister` (C-03: the subscriber keeps
                // hearing about changes until it has dropped its translations), so an
                // invalidation in flight may still end after it.
                Ev::Release => {}
                Ev::Tlbs(..) => {}
            }
        }
        assert!(open.is_none(), "start without its end");
    }
    stop.store(true, Ordering::Relaxed);
    inval.join().unwrap();
}

// ---------------------------------------------------------------- C-03

/// A subscriber whose start blocks until told to go on.
struct Slow {
    entered: AtomicBool,
    go: AtomicBool,
    calls: AtomicUsize,
}
impl SubscriberOps for Slow {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.entered.store(true, Ordering::SeqCst);
        while !self.go.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn c03_unregister_waits_for_running_callbacks() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Arc::new(Box::pin(Subscriber::<_, P>::new(Slow {
        entered: AtomicBool::new(false),
        go: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    })));
    s.as_ref().as_ref().register(&mm).unwrap();
    let inv = {
        let mm = mm.clone();
        thread::spawn(move || unmap(&mm, 0, PG))
    };
    while !s.entered.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    let done = Arc::new(AtomicBool::new(false));
    let un = {
        let (s, done) = (s.clone(), done.clone());
        thread::spawn(move || {
            s.as_ref().as_ref().unregister().unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "unregister returned while a callback ran"
    );
    s.go.store(true, Ordering::SeqCst);
    un.join().unwrap();
    inv.join().unwrap();
    let calls = s.calls.load(Ordering::SeqCst);
    assert_eq!(
        calls, 2,
        "start and its end, both before unregister returned"
    );
    unmap(&mm, 0, PG);
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        calls,
        "callback after unregister"
    );
}

#[test]
fn c03_drop_unregisters() {
    let mm = AddressSpace::<P>::new();
    let count = Arc::new(AtomicUsize::new(0));
    struct Cnt(Arc<AtomicUsize>);
    impl SubscriberOps for Cnt {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    {
        let s = pin!(Subscriber::<_, P>::new(Cnt(count.clone())));
        s.as_ref().register(&mm).unwrap();
        unmap(&mm, 0, PG);
    }
    unmap(&mm, 0, PG);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------- C-04

#[test]
fn c04_release_once_at_teardown_not_again_at_unregister() {
    let mm = AddressSpace::<P>::new();
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    mm.release().unwrap();
    assert_eq!(s.releases(), 1);
    assert!(s.is_released());
    mm.release().unwrap(); // again: nothing
    unmap(&mm, 0, PG); // after release: no callback
    s.as_ref().unregister().unwrap();
    assert_eq!(s.log(), vec![Ev::Release]);
}

#[test]
fn c04_release_once_from_unregister() {
    let mm = AddressSpace::<P>::new();
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    s.as_ref().unregister().unwrap();
    mm.release().unwrap();
    assert_eq!(s.log(), vec![Ev::Release]);
}

#[test]
fn c04_release_racing_unregister_exactly_once() {
    for _ in 0..n(100) {
        let mm = Arc::new(AddressSpace::<P>::new());
        let subs: Vec<_> = (0..4)
            .map(|_| Arc::new(Box::pin(Subscriber::<_, P>::new(Rec::default()))))
            .collect();
        for s in &subs {
            s.as_ref().as_ref().register(&mm).unwrap();
        }
        let b = Arc::new(Barrier::new(2));
        let t = {
            let (mm, b) = (mm.clone(), b.clone());
            thread::spawn(move || {
                b.wait();
                mm.release().unwrap();
            })
        };
        b.wait();
        for s in &subs {
            s.as_ref().as_ref().unregister().unwrap();
        }
        t.join().unwrap();
        for s in &subs {
            assert_eq!(s.releases(), 1);
        }
    }
}

/// Teardown does not finish before a release that a concurrent unregister started.
#[test]
fn c04_teardown_waits_for_release_from_unregister() {
    struct SlowRelease {
        entered: AtomicBool,
        done: AtomicBool,
    }
    impl SubscriberOps for SlowRelease {
        fn release(&self) {
            self.entered.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(150));
            self.done.store(true, Ordering::SeqCst);
        }
    }
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Arc::new(Box::pin(Subscriber::<_, P>::new(SlowRelease {
        entered: AtomicBool::new(false),
        done: AtomicBool::new(false),
    })));
    s.as_ref().as_ref().register(&mm).unwrap();
    let un = {
        let s = s.clone();
        thread::spawn(move || s.as_ref().as_ref().unregister().unwrap())
    };
    while !s.entered.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    mm.release().unwrap();
    assert!(
        s.done.load(Ordering::SeqCst),
        "teardown returned while release was running"
    );
    un.join().unwrap();
}

#[test]
fn c04_interval_subscribers_get_release_event() {
    let mm = AddressSpace::<P>::new();
    let m = pin!(IntervalSubscriber::new(Mirror::default()));
    m.as_ref().insert(&mm, 16 * PG, 4 * PG).unwrap();
    mm.release().unwrap();
    let seen = m.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].event, Event::Release);
    assert!(seen[0].start == 0 && seen[0].end == usize::MAX);
}

// ---------------------------------------------------------------- C-05

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static FREES: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Kvm {
    starts: AtomicUsize,
}
impl SubscriberOps for Kvm {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
// SAFETY: `alloc` returns a fresh, leaked `Box<Shared<..>>` or `None`; `free` takes
// back exactly those boxes.
unsafe impl SharedOps<P> for Kvm {
    fn alloc(_mm: &AddressSpace<P>) -> Option<NonNull<Shared<Self, P>>> {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        Some(NonNull::from(Box::leak(Box::new(Shared::new(
            Kvm::default(),
        )))))
    }
    unsafe fn free(this: NonNull<Shared<Self, P>>) {
        FREES.fetch_add(1, Ordering::SeqCst);
        // SAFETY: allocated by `alloc` as a Box.
        drop(unsafe { Box::from_raw(this.as_ptr()) });
    }
}

#[test]
fn c05_get_put_synchronize() {
    let mm = AddressSpace::<P>::new();
    let a0 = ALLOCS.load(Ordering::SeqCst);
    let f0 = FREES.load(Ordering::SeqCst);
    let a: SharedRef<Kvm, P> = mm.get().unwrap();
    let b: SharedRef<Kvm, P> = mm.get().unwrap();
    assert!(!a.as_ptr().is_null());
    assert_eq!(a.as_ptr(), b.as_ptr(), "one shared subscriber per kind");
    assert_eq!(a.users(), 2);
    assert_eq!(ALLOCS.load(Ordering::SeqCst) - a0, 1);
    unmap(&mm, 0, PG);
    assert_eq!(a.starts.load(Ordering::Relaxed), 1);
    b.put();
    assert_eq!(a.users(), 1);
    a.put();
    // Deferred: the callbacks may still be reachable by readers; after synchronize the
    // free has run.
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(FREES.load(Ordering::SeqCst) - f0, 1);
    // A new get creates a new one.
    let c: SharedRef<Kvm, P> = mm.get().unwrap();
    assert_eq!(ALLOCS.load(Ordering::SeqCst) - a0, 2);
    assert_eq!(c.starts.load(Ordering::Relaxed), 0);
    drop(c);
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(FREES.load(Ordering::SeqCst) - f0, 2);
}

// ---------------------------------------------------------------- C-06 / C-07

#[test]
fn c06_c07_events_and_pairing_nested_and_overlapping() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    let events = [
        Event::Unmap,
        Event::Clear,
        Event::ProtectionVma,
        Event::ProtectionPage,
        Event::SoftDirty,
        Event::Release,
        Event::Migrate,
        Event::Exclusive,
    ];
    // Every event, blockable and not, each with its own owner: the out-of-line start
    // and end rebuild the range from its fields and a packed word.
    let ranges: Vec<Range> = events
        .iter()
        .enumerate()
        .flat_map(|(i, ev)| {
            let r = Range::new(i * PG, (i + 1) * PG, *ev).with_owner(i + 1);
            [r, r.non_blocking().with_owner(usize::MAX - i)]
        })
        .collect();
    for r in &ranges {
        let inv = mm.invalidate_range_start(*r).unwrap();
        assert_eq!(inv.range(), r);
        inv.end();
    }
    // Nested on one thread.
    let outer = Range::new(0, 16 * PG, Event::Unmap);
    let inner = Range::new(4 * PG, 5 * PG, Event::Migrate);
    let o = mm.invalidate_range_start(outer).unwrap();
    let i = mm.invalidate_range_start(inner).unwrap();
    i.end();
    o.end();
    let log = s.log();
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(log[2 * i], Ev::Start(*r));
        assert_eq!(
            log[2 * i + 1],
            Ev::End(*r),
            "end gets the start's range and event"
        );
    }
    let n = ranges.len() * 2;
    assert_eq!(
        &log[n..],
        &[
            Ev::Start(outer),
            Ev::Start(inner),
            Ev::End(inner),
            Ev::End(outer)
        ]
    );
}

/// C-07: dropping an `Invalidation` ends it as `end` does, on every path (no object,
/// an object with nobody on it, a subscriber, an interval): the subscriber gets its end
/// with the start's range, the task holds nothing any more (it may register), and the
/// in-flight count is exited (another thread's registration returns).
#[test]
fn c07_dropping_an_invalidation_ends_it() {
    struct Mirror;
    impl IntervalOps<Interval<P>> for Mirror {
        fn invalidate(&self, iv: &Interval<P>, _r: &Range, seq: u64) -> Result<(), WouldBlock> {
            iv.set_seq(seq);
            Ok(())
        }
    }
    for state in ["no object", "object, nobody", "one subscriber", "interval"] {
        let mm = AddressSpace::<P>::new();
        let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        let iv = Box::pin(IntervalSubscriber::<_, P>::new(Mirror));
        match state {
            "no object" => {}
            "object, nobody" => mm.prepare().unwrap(),
            "one subscriber" => s.as_ref().register(&mm).unwrap(),
            _ => iv.as_ref().insert(&mm, 0, PG).unwrap(),
        }
        let r = Range::new(0, PG, Event::Unmap);
        drop(mm.invalidate_range_start(r).unwrap());
        if state == "one subscriber" {
            assert_eq!(s.log(), vec![Ev::Start(r), Ev::End(r)], "{state}");
        }
        if state == "interval" {
            // The sequence is even again: a fault's `read_begin` does not wait.
            let seq = iv.interval().read_begin().unwrap();
            assert!(!iv.interval().read_retry(seq), "{state}");
        }
        // Nothing held by this task: a registration from it is not refused.
        let late = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        assert_eq!(late.as_ref().register(&mm), Ok(()), "{state}");
        late.as_ref().unregister().unwrap();
        // Nothing in flight: another thread's registration returns.
        let other = thread::scope(|sc| {
            sc.spawn(|| {
                let o = Box::pin(Subscriber::<_, P>::new(Rec::default()));
                o.as_ref()
                    .register(&mm)
                    .and_then(|()| o.as_ref().unregister())
            })
            .join()
            .unwrap()
        });
        assert_eq!(other, Ok(()), "{state}");
        if s.is_registered() {
            s.as_ref().unregister().unwrap();
        }
        if state == "interval" {
            iv.as_ref().remove().unwrap();
        }
    }
}

#[test]
fn c07_overlapping_across_threads() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    let hs: Vec<_> = (0..2)
        .map(|t| {
            let mm = mm.clone();
            thread::spawn(move || {
                for k in 0..n(200) {
                    let a = ((k + t) % 8) * PG;
                    unmap(&mm, a, a + 2 * PG);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let log = s.log();
    assert_eq!(s.starts(), 2 * n(200));
    assert_eq!(s.ends(), 2 * n(200));
    // Per range value, starts and ends balance.
    let mut bal: BTreeMap<usize, isize> = BTreeMap::new();
    for e in log {
        match e {
            Ev::Start(r) => *bal.entry(r.start).or_default() += 1,
            Ev::End(r) => *bal.entry(r.start).or_default() -= 1,
            _ => {}
        }
    }
    assert!(bal.values().all(|&v| v == 0));
}

// ---------------------------------------------------------------- C-08

#[test]
fn c08_refusal_unwinds() {
    let mm = AddressSpace::<P>::new();
    // Registered in this order; the list calls the newest first: c, b, a.
    let a = pin!(Subscriber::<_, P>::new(Rec::default()));
    let b = pin!(Subscriber::<_, P>::new(Rec::refusing()));
    let c = pin!(Subscriber::<_, P>::new(Rec::default()));
    a.as_ref().register(&mm).unwrap();
    b.as_ref().register(&mm).unwrap();
    c.as_ref().register(&mm).unwrap();
    let m = pin!(IntervalSubscriber::new(Mirror::default()));
    m.as_ref().insert(&mm, 0, 64 * PG).unwrap();
    let seq = m.interval().read_begin().unwrap();

    let r = Range::new(0, PG, Event::Unmap).non_blocking();
    assert_eq!(mm.invalidate_range_start(r).err(), Some(Error::WouldBlock));
    // The one whose start succeeded got its end; the refusing one nothing; the one
    // never reached nothing.
    let all = [&a, &b, &c];
    let got: Vec<_> = all.iter().map(|s| s.log()).collect();
    let started: Vec<_> = got.iter().map(|l| l.contains(&Ev::Start(r))).collect();
    for (i, l) in got.iter().enumerate() {
        if started[i] {
            assert_eq!(l, &vec![Ev::Start(r), Ev::End(r)]);
        } else {
            assert!(l.is_empty(), "{l:?}");
        }
    }
    assert_eq!(
        started.iter().filter(|&&s| s).count(),
        1,
        "c started, then b refused"
    );
    assert!(b.log().is_empty());
    // The interval sequence was rolled forward: its reader must retry, and is not
    // blocked.
    assert!(m.interval().read_retry(seq));
    let seq2 = m.interval().read_begin().unwrap();
    assert!(!m.interval().read_retry(seq2));

    // The same range, blockable: the refusal is the subscriber's bug, reported; every
    // subscriber gets its pair.
    let before = P::bugs(Bug::RefusedWhileBlockable);
    let rb = Range::new(0, PG, Event::Unmap);
    mm.invalidate_range_start(rb).unwrap().end();
    assert_eq!(P::bugs(Bug::RefusedWhileBlockable), before + 1);
    assert!(a.log().ends_with(&[Ev::Start(rb), Ev::End(rb)]));
    assert!(c.log().ends_with(&[Ev::Start(rb), Ev::End(rb)]));
}

#[test]
fn c08_interval_refusal_unwinds() {
    let mm = AddressSpace::<P>::new();
    let ok = pin!(IntervalSubscriber::new(Mirror::default()));
    let no = pin!(IntervalSubscriber::new(Mirror::refusing()));
    let l = pin!(Subscriber::<_, P>::new(Rec::default()));
    ok.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    no.as_ref().insert(&mm, 2 * PG, 4 * PG).unwrap();
    l.as_ref().register(&mm).unwrap();
    let r = Range::new(0, 8 * PG, Event::Unmap).non_blocking();
    assert_eq!(mm.invalidate_range_start(r).err(), Some(Error::WouldBlock));
    // The list subscriber was never called: the interval pass failed first.
    assert!(l.log().is_empty());
    assert_eq!(ok.seen.lock().unwrap().len(), 1);
    // The tree is idle again: read_begin does not block.
    let s = ok.interval().read_begin().unwrap();
    assert!(!ok.interval().read_retry(s));
    // Blockable: an interval's refusal is its bug, reported; the invalidation goes on
    // to every subscriber and is not refused.
    struct AlwaysRefuses;
    impl IntervalOps<Interval<P>> for AlwaysRefuses {
        fn invalidate(&self, iv: &Interval<P>, _r: &Range, s: u64) -> Result<(), WouldBlock> {
            iv.set_seq(s);
            Err(WouldBlock)
        }
    }
    let bad = pin!(IntervalSubscriber::new(AlwaysRefuses));
    bad.as_ref().insert(&mm, 0, PG).unwrap();
    let before = P::bugs(Bug::RefusedWhileBlockable);
    let rb = Range::new(0, 8 * PG, Event::Unmap);
    mm.invalidate_range_start(rb).unwrap().end();
    assert_eq!(P::bugs(Bug::RefusedWhileBlockable), before + 1);
    assert_eq!(l.log(), vec![Ev::Start(rb), Ev::End(rb)]);
    assert_eq!(ok.seen.lock().unwrap().len(), 2);
}

#[test]
fn c08_non_blocking_callbacks_run_in_non_block_region() {
    let mm = AddressSpace::<P>::new();
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.sleep_in_start.store(true, Ordering::Relaxed);
    s.as_ref().register(&mm).unwrap();
    let before = P::sleep_violations();
    unmap(&mm, 0, PG);
    assert_eq!(P::sleep_violations(), before, "blockable: may sleep");
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap).non_blocking())
        .unwrap()
        .end();
    assert_eq!(
        P::sleep_violations(),
        before + 1,
        "a sleeping callback under a non-blockable range is flagged"
    );
    // Refusal cleaned the region up: nothing leaks into the caller.
    assert!(!P::in_non_block());
}

// ---------------------------------------------------------------- C-09

/// The 2008 race with real threads: a KVM-like mirror faults pages while the primary
/// unmaps and frees them; a generation per frame catches a stale translation.
#[test]
fn c09_no_stale_translation_kvm_like() {
    const PAGES: usize = 16;
    struct Primary {
        // Per page: frame generation mapped (0 = none).
        pte: Vec<AtomicUsize>,
        // Per page: current live generation of the frame backing it.
        live: Vec<AtomicUsize>,
    }
    #[derive(Default)]
    struct Shadow {
        spte: Mutex<BTreeMap<usize, usize>>,
    }
    impl IntervalOps<Interval<P>> for Shadow {
        fn invalidate(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
            let mut spte = self.spte.lock().unwrap();
            iv.set_seq(cur_seq);
            spte.retain(|&p, _| p * PG < r.start || p * PG >= r.end);
            Ok(())
        }
    }
    let primary = Arc::new(Primary {
        pte: (0..PAGES).map(|_| AtomicUsize::new(1)).collect(),
        live: (0..PAGES).map(|_| AtomicUsize::new(1)).collect(),
    });
    let mm = Arc::new(AddressSpace::<P>::new());
    let kvm = Arc::new(Box::pin(IntervalSubscriber::new(Shadow::default())));
    kvm.as_ref().as_ref().insert(&mm, 0, PAGES * PG).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicUsize::new(0));
    let vcpu = {
        let (primary, kvm, stop, stale) =
            (primary.clone(), kvm.clone(), stop.clone(), stale.clone());
        thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let p = n % PAGES;
                n += 1;
                // Fault.
                let seq = kvm.interval().read_begin().unwrap();
                let gen = primary.pte[p].load(Ordering::SeqCst);
                if gen != 0 {
                    let mut spte = kvm.spte.lock().unwrap();
                    if !kvm.interval().read_retry(seq) {
                        spte.insert(p, gen);
                    }
                }
                // Guest access through every shadow entry.
                for (&q, &g) in kvm.spte.lock().unwrap().iter() {
                    if primary.live[q].load(Ordering::SeqCst) != g {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    for k in 0..n(2000) {
        let p = k % PAGES;
        let inv = mm
            .invalidate_range_start(Range::new(p * PG, (p + 1) * PG, Event::Unmap))
            .unwrap();
        primary.pte[p].store(0, Ordering::SeqCst);
        inv.end();
        // The page is freed and reused: new generation, mapped again.
        let g = primary.live[p].fetch_add(1, Ordering::SeqCst) + 1;
        primary.pte[p].store(g, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    vcpu.join().unwrap();
    assert_eq!(stale.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------- C-10

#[test]
fn c10_secondary_tlbs_called_without_sleeping() {
    let mm = AddressSpace::<P>::new();
    struct Iommu {
        seen: Mutex<Vec<(usize, usize, bool)>>,
    }
    impl SubscriberOps for Iommu {
        fn invalidate_secondary_tlbs(&self, s: usize, e: usize) {
            self.seen.lock().unwrap().push((s, e, P::in_non_block()));
        }
    }
    let d = pin!(Subscriber::<_, P>::new(Iommu {
        seen: Mutex::new(vec![])
    }));
    d.as_ref().register(&mm).unwrap();
    mm.invalidate_secondary_tlbs(PG, 3 * PG).unwrap();
    assert_eq!(*d.seen.lock().unwrap(), vec![(PG, 3 * PG, true)]);
}

// ---------------------------------------------------------------- C-11 .. C-14

#[derive(Default)]
struct Mirror {
    lock: Mutex<()>,
    seen: Mutex<Vec<Range>>,
    refuse: bool,
}
impl Mirror {
    fn refusing() -> Self {
        Mirror {
            refuse: true,
            ..Default::default()
        }
    }
}
impl IntervalOps<Interval<P>> for Mirror {
    fn invalidate(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        if self.refuse && !r.blockable {
            return Err(WouldBlock);
        }
        let _g = self.lock.lock().unwrap();
        iv.set_seq(cur_seq);
        self.seen.lock().unwrap().push(*r);
        Ok(())
    }
}

#[test]
fn c11_only_overlapping_intervals_once_each() {
    let mm = AddressSpace::<P>::new();
    let ivs: Vec<_> = (0..8)
        .map(|_| Box::pin(IntervalSubscriber::new(Mirror::default())))
        .collect();
    // Interval i covers pages [4i, 4i+4).
    for (i, iv) in ivs.iter().enumerate() {
        iv.as_ref().insert(&mm, 4 * i * PG, 4 * PG).unwrap();
    }
    // Pages [7, 9): touches intervals 1 (4..8) and 2 (8..12) only.
    unmap(&mm, 7 * PG, 9 * PG);
    for (i, iv) in ivs.iter().enumerate() {
        let n = iv.seen.lock().unwrap().len();
        assert_eq!(n, usize::from(i == 1 || i == 2), "interval {i}");
    }
    // Exactly adjacent: [8 pages, 8 pages + 1 page) does not touch interval 1.
    unmap(&mm, 12 * PG, 13 * PG);
    assert_eq!(ivs[3].seen.lock().unwrap().len(), 1);
    assert_eq!(ivs[2].seen.lock().unwrap().len(), 1);
}

#[test]
fn c12_read_begin_waits_and_read_retry() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let m = Arc::new(Box::pin(IntervalSubscriber::new(Mirror::default())));
    m.as_ref().as_ref().insert(&mm, 0, 4 * PG).unwrap();
    let seq = m.interval().read_begin().unwrap();
    assert_eq!(seq % 2, 1, "set_seq values and idle snapshots are odd");
    assert!(!m.interval().read_retry(seq));
    // Unrelated range: no retry.
    unmap(&mm, 8 * PG, 9 * PG);
    assert!(!m.interval().read_retry(seq));
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    assert!(m.interval().read_retry(seq));
    let done = Arc::new(AtomicBool::new(false));
    let h = {
        let (m, done) = (m.clone(), done.clone());
        thread::spawn(move || {
            let s = m.interval().read_begin().unwrap();
            done.store(true, Ordering::SeqCst);
            s
        })
    };
    thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "read_begin returned during an invalidation"
    );
    inv.end();
    let s2 = h.join().unwrap();
    assert!(!m.interval().read_retry(s2));
}

#[test]
fn c13_deferred_insert_and_remove() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let a = Arc::new(Box::pin(IntervalSubscriber::new(Mirror::default())));
    a.as_ref().as_ref().insert(&mm, 0, 4 * PG).unwrap();
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    // Insert while the tree is being invalidated: deferred; read_begin waits for the end.
    let b = Box::pin(IntervalSubscriber::new(Mirror::default()));
    b.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    let b = Arc::new(b);
    let began = Arc::new(AtomicBool::new(false));
    let h = {
        let (b, began) = (b.clone(), began.clone());
        thread::spawn(move || {
            let s = b.interval().read_begin().unwrap();
            began.store(true, Ordering::SeqCst);
            s
        })
    };
    // Remove while in flight: waits for the end.
    let removed = Arc::new(AtomicBool::new(false));
    let r = {
        let (a, removed) = (a.clone(), removed.clone());
        thread::spawn(move || {
            a.as_ref().as_ref().remove().unwrap();
            removed.store(true, Ordering::SeqCst);
        })
    };
    thread::sleep(Duration::from_millis(100));
    assert!(!began.load(Ordering::SeqCst));
    assert!(
        !removed.load(Ordering::SeqCst),
        "remove returned during an invalidation"
    );
    inv.end();
    h.join().unwrap();
    r.join().unwrap();
    // After: b is in the tree, a is not.
    let na = a.seen.lock().unwrap().len();
    unmap(&mm, 0, PG);
    assert_eq!(a.seen.lock().unwrap().len(), na, "callback after remove");
    assert_eq!(b.seen.lock().unwrap().len(), 1);
    // Insert then remove while in flight: taken off the deferred list, no wait.
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    let c = pin!(IntervalSubscriber::new(Mirror::default()));
    c.as_ref().insert(&mm, 0, PG).unwrap();
    c.as_ref().remove().unwrap();
    inv.end();
    unmap(&mm, 0, PG);
    assert!(c.seen.lock().unwrap().is_empty());
}

#[test]
fn c14_two_pass_all_starts_before_any_finish() {
    static ORDER: Mutex<Vec<(usize, &str)>> = Mutex::new(Vec::new());
    struct Dev(usize);
    impl IntervalOps<Interval<P>> for Dev {
        const TWO_PASS: bool = true;
        fn invalidate(&self, iv: &Interval<P>, r: &Range, s: u64) -> Result<(), WouldBlock> {
            self.invalidate_start(iv, r, s)?;
            self.invalidate_finish(iv, r, s);
            Ok(())
        }
        fn invalidate_start(&self, iv: &Interval<P>, _r: &Range, s: u64) -> Result<(), WouldBlock> {
            iv.set_seq(s);
            ORDER.lock().unwrap().push((self.0, "start"));
            Ok(())
        }
        fn invalidate_finish(&self, _iv: &Interval<P>, _r: &Range, _s: u64) {
            ORDER.lock().unwrap().push((self.0, "finish"));
        }
    }
    let mm = AddressSpace::<P>::new();
    let devs: Vec<_> = (0..4)
        .map(|i| Box::pin(IntervalSubscriber::new(Dev(i))))
        .collect();
    for d in &devs {
        d.as_ref().insert(&mm, 0, 16 * PG).unwrap();
    }
    let one_pass = pin!(IntervalSubscriber::new(Mirror::default()));
    one_pass.as_ref().insert(&mm, 0, 16 * PG).unwrap();
    unmap(&mm, 0, PG);
    let order = ORDER.lock().unwrap().clone();
    assert_eq!(order.len(), 8);
    assert!(order[..4].iter().all(|(_, w)| *w == "start"));
    assert!(order[4..].iter().all(|(_, w)| *w == "finish"));
    let mut s: Vec<_> = order[..4].iter().map(|(i, _)| *i).collect();
    s.sort();
    assert_eq!(s, vec![0, 1, 2, 3]);
    assert_eq!(one_pass.seen.lock().unwrap().len(), 1);
}

/// A two-pass subscriber that does not override `invalidate_start` gets its
/// `invalidate` as the first pass (the trait's default), then its finish.
#[test]
fn c14_default_first_pass_is_invalidate() {
    static SEEN: Mutex<Vec<&str>> = Mutex::new(Vec::new());
    struct Dev;
    impl IntervalOps<Interval<P>> for Dev {
        const TWO_PASS: bool = true;
        fn invalidate(&self, iv: &Interval<P>, _r: &Range, s: u64) -> Result<(), WouldBlock> {
            iv.set_seq(s);
            SEEN.lock().unwrap().push("invalidate");
            Ok(())
        }
        fn invalidate_finish(&self, _iv: &Interval<P>, _r: &Range, _s: u64) {
            SEEN.lock().unwrap().push("finish");
        }
    }
    let mm = AddressSpace::<P>::new();
    let d = pin!(IntervalSubscriber::new(Dev));
    d.as_ref().insert(&mm, 0x10 * PG, 3 * PG).unwrap();
    // The interval's bounds as inserted.
    assert_eq!(d.interval().start(), 0x10 * PG);
    assert_eq!(d.interval().last(), 0x13 * PG - 1);
    let seq = d.interval().read_begin().unwrap();
    unmap(&mm, 0x11 * PG, 0x12 * PG);
    assert!(d.interval().read_retry(seq));
    assert_eq!(*SEEN.lock().unwrap(), vec!["invalidate", "finish"]);
}

/// An interval subscriber's callbacks run in a non-blocking region exactly when the
/// range is not blockable (C-08); `check_retry` is the lock-free hint of `read_retry`;
/// `is_inserted` follows insert and remove.
#[test]
fn c08_c12_interval_callbacks_non_blocking_only_when_the_range_is() {
    use notifier_core::std_platform::StdPlatform;
    static SEEN: Mutex<Vec<(bool, bool)>> = Mutex::new(Vec::new());
    struct Probe;
    impl IntervalOps<Interval<P>> for Probe {
        const TWO_PASS: bool = true;
        fn invalidate(&self, iv: &Interval<P>, r: &Range, s: u64) -> Result<(), WouldBlock> {
            iv.set_seq(s);
            SEEN.lock()
                .unwrap()
                .push((r.blockable, StdPlatform::in_non_block()));
            Ok(())
        }
        fn invalidate_finish(&self, _iv: &Interval<P>, r: &Range, _s: u64) {
            SEEN.lock()
                .unwrap()
                .push((r.blockable, StdPlatform::in_non_block()));
        }
    }
    let mm = AddressSpace::<P>::new();
    let m = pin!(IntervalSubscriber::new(Probe));
    assert!(!m.interval().is_inserted());
    m.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    assert!(m.interval().is_inserted());
    let seq = m.interval().read_begin().unwrap();
    assert!(!m.interval().check_retry(seq));
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap()
        .end();
    assert!(m.interval().check_retry(seq));
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap).non_blocking())
        .unwrap()
        .end();
    assert!(!StdPlatform::in_non_block());
    assert_eq!(
        *SEEN.lock().unwrap(),
        vec![(true, false), (true, false), (false, true), (false, true)]
    );
    m.as_ref().remove().unwrap();
    assert!(!m.interval().is_inserted());
}

// ---------------------------------------------------------------- C-15

#[test]
fn c15_young_or_of_all_and_test_young_stops() {
    let mm = AddressSpace::<P>::new();
    let subs: Vec<_> = (0..3)
        .map(|_| Box::pin(Subscriber::<_, P>::new(Rec::default())))
        .collect();
    for s in &subs {
        s.as_ref().register(&mm).unwrap();
    }
    assert!(!mm.clear_flush_young(0, PG).unwrap());
    assert!(subs
        .iter()
        .all(|s| s.young_calls.load(Ordering::Relaxed) == 1));
    subs[0].young.store(true, Ordering::Relaxed);
    subs[2].young.store(true, Ordering::Relaxed);
    assert!(mm.clear_young(0, PG).unwrap());
    // All called even after a true: both young bits were cleared.
    assert!(subs
        .iter()
        .all(|s| s.young_calls.load(Ordering::Relaxed) == 2));
    assert!(!subs[0].young.load(Ordering::Relaxed) && !subs[2].young.load(Ordering::Relaxed));
    subs[1].young.store(true, Ordering::Relaxed);
    subs[2].young.store(true, Ordering::Relaxed);
    assert!(mm.test_young(0).unwrap());
    // The list calls the newest first: subs[2] answers true, the others are not asked.
    let calls: Vec<_> = subs
        .iter()
        .map(|s| s.young_calls.load(Ordering::Relaxed))
        .collect();
    assert_eq!(calls, vec![2, 2, 3]);
}

// ---------------------------------------------------------------- C-16

#[test]
fn c16_bad_input_matrix() {
    let mm = AddressSpace::<P>::new();
    let s = pin!(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    let m = pin!(IntervalSubscriber::new(Mirror::default()));
    m.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    let bad = [
        (Range::new(PG, PG, Event::Unmap), Error::EmptyRange),
        (Range::new(2 * PG, PG, Event::Unmap), Error::InvertedRange),
        (Range::new(1, PG, Event::Unmap), Error::Unaligned),
        (Range::new(0, PG + 1, Event::Unmap), Error::Unaligned),
    ];
    for (r, e) in bad {
        assert_eq!(mm.invalidate_range_start(r).err(), Some(e), "{r:?}");
        assert_eq!(mm.invalidate_range_start(r.non_blocking()).err(), Some(e));
    }
    assert_eq!(mm.invalidate_page(1).err(), Some(Error::Unaligned));
    assert_eq!(
        mm.invalidate_page(usize::MAX & !(PG - 1)).err(),
        Some(Error::Overflow)
    );
    assert_eq!(
        mm.invalidate_secondary_tlbs(PG, 0).err(),
        Some(Error::InvertedRange)
    );
    assert_eq!(mm.clear_young(0, 0).err(), Some(Error::EmptyRange));
    assert_eq!(mm.clear_flush_young(3, 2).err(), Some(Error::InvertedRange));
    // Intervals.
    let n = pin!(IntervalSubscriber::new(Mirror::default()));
    assert_eq!(n.as_ref().insert(&mm, 0, 0), Err(Error::ZeroLength));
    assert_eq!(
        n.as_ref().insert(&mm, usize::MAX - 1, 2),
        Err(Error::Overflow)
    );
    assert_eq!(n.as_ref().insert(&mm, usize::MAX, 1), Err(Error::Overflow));
    assert_eq!(m.as_ref().insert(&mm, 0, PG), Err(Error::AlreadyRegistered));
    // Unknown handles.
    assert_eq!(n.as_ref().remove(), Err(Error::NotRegistered));
    assert_eq!(n.interval().read_begin(), Err(Error::NotRegistered));
    let t = pin!(Subscriber::<_, P>::new(Rec::default()));
    assert_eq!(t.as_ref().unregister(), Err(Error::NotRegistered));
    // Nothing changed: the registered ones still get exactly one pair / one call.
    assert!(s.log().is_empty());
    assert!(m.seen.lock().unwrap().is_empty());
    unmap(&mm, 0, PG);
    assert_eq!(s.starts(), 1);
    assert_eq!(m.seen.lock().unwrap().len(), 1);
    assert!(t.log().is_empty() && n.seen.lock().unwrap().is_empty());
}

/// unregister / remove / register from inside a callback: refused, list unchanged.
#[test]
fn c16_calls_from_inside_callbacks_are_refused() {
    struct Evil {
        victim: std::sync::atomic::AtomicPtr<Subscriber<Rec, P>>,
        iv_victim: std::sync::atomic::AtomicPtr<IntervalSubscriber<Mirror, P>>,
        mm: std::sync::atomic::AtomicPtr<AddressSpace<P>>,
        results: Mutex<Vec<Result<(), Error>>>,
    }
    impl SubscriberOps for Evil {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            // SAFETY: the test points `victim` at a pinned subscriber that outlives
            // every invalidation it runs.
            let v = unsafe { &*self.victim.load(Ordering::SeqCst) };
            // SAFETY: as above, a pinned interval subscriber.
            let iv = unsafe { &*self.iv_victim.load(Ordering::SeqCst) };
            // SAFETY: as above, the address space the test invalidates.
            let mm = unsafe { &*self.mm.load(Ordering::SeqCst) };
            let mut res = self.results.lock().unwrap();
            // SAFETY: `v` is pinned (see above).
            res.push(unsafe { Pin::new_unchecked(v) }.unregister());
            // SAFETY: `iv` is pinned (see above).
            res.push(unsafe { Pin::new_unchecked(iv) }.remove());
            let fresh = Box::pin(Subscriber::<_, P>::new(Rec::default()));
            res.push(fresh.as_ref().register(mm));
            Ok(())
        }
    }
    let mm = AddressSpace::<P>::new();
    let victim = pin!(Subscriber::<_, P>::new(Rec::default()));
    victim.as_ref().register(&mm).unwrap();
    let ivv = pin!(IntervalSubscriber::new(Mirror::default()));
    ivv.as_ref().insert(&mm, 0, PG).unwrap();
    let evil = pin!(Subscriber::<_, P>::new(Evil {
        victim: std::sync::atomic::AtomicPtr::new(&*victim as *const _ as *mut _),
        iv_victim: std::sync::atomic::AtomicPtr::new(&*ivv as *const _ as *mut _),
        mm: std::sync::atomic::AtomicPtr::new(&mm as *const _ as *mut _),
        results: Mutex::new(vec![]),
    }));
    evil.as_ref().register(&mm).unwrap();
    unmap(&mm, 0, PG);
    assert_eq!(
        *evil.results.lock().unwrap(),
        vec![
            Err(Error::InCallback),
            Err(Error::InCallback),
            Err(Error::InCallback)
        ]
    );
    // Unchanged: the victims are still registered and called.
    assert!(victim.is_registered() && ivv.interval().is_inserted());
    let before = victim.starts();
    evil.as_ref().unregister().unwrap();
    unmap(&mm, 0, PG);
    assert_eq!(victim.starts(), before + 1);
}

// ---------------------------------------------------------------- C-17

/// Thousands of subscribers and tens of thousands of interval subscribers under random
/// invalidations; each one's observations equal a reference model's.
#[test]
fn c17_many_against_reference_model() {
    const LIST: usize = n(2000);
    const IVS: usize = n(20_000);
    const SPACE_PAGES: usize = 1 << 16;
    struct Count(AtomicUsize);
    impl SubscriberOps for Count {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
    struct IvCount(AtomicUsize);
    impl IntervalOps<Interval<P>> for IvCount {
        fn invalidate(&self, iv: &Interval<P>, _r: &Range, s: u64) -> Result<(), WouldBlock> {
            iv.set_seq(s);
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    let mm = AddressSpace::<P>::new();
    let list: Vec<_> = (0..LIST)
        .map(|_| Box::pin(Subscriber::<_, P>::new(Count(AtomicUsize::new(0)))))
        .collect();
    for s in &list {
        s.as_ref().register(&mm).unwrap();
    }
    let mut spans = Vec::with_capacity(IVS);
    let ivs: Vec<_> = (0..IVS)
        .map(|_| Box::pin(IntervalSubscriber::new(IvCount(AtomicUsize::new(0)))))
        .collect();
    for iv in &ivs {
        let start = next() % SPACE_PAGES;
        let len = 1 + next() % 64;
        iv.as_ref().insert(&mm, start * PG, len * PG).unwrap();
        spans.push((start * PG, (start + len) * PG));
    }
    let mut expect = vec![0usize; IVS];
    const OPS: usize = n(500);
    for _ in 0..OPS {
        let start = next() % SPACE_PAGES;
        let len = 1 + next() % 32;
        let (s, e) = (start * PG, (start + len) * PG);
        unmap(&mm, s, e);
        for (i, &(a, b)) in spans.iter().enumerate() {
            if a < e && s < b {
                expect[i] += 1;
            }
        }
    }
    for s in &list {
        assert_eq!(s.0.load(Ordering::Relaxed), OPS);
    }
    for (i, iv) in ivs.iter().enumerate() {
        assert_eq!(iv.0.load(Ordering::Relaxed), expect[i], "interval {i}");
    }
    // Remove half, model again.
    for iv in ivs.iter().step_by(2) {
        iv.as_ref().remove().unwrap();
    }
    let before: Vec<_> = ivs.iter().map(|iv| iv.0.load(Ordering::Relaxed)).collect();
    unmap(&mm, 0, SPACE_PAGES * PG);
    for (i, iv) in ivs.iter().enumerate() {
        let want = before[i] + usize::from(i % 2 == 1);
        assert_eq!(iv.0.load(Ordering::Relaxed), want);
    }
}

/// Interval ops written once for every interval handle (what a driver does to use the
/// same ops with the core and with the Linux binding): through the handle they see the
/// interval's bounds, and `set_seq` reaches the interval's sequence (C-12).
#[test]
fn c12_ops_generic_over_the_interval_handle() {
    #[derive(Default)]
    struct Seen {
        bounds: Mutex<Option<(usize, usize)>>,
    }
    impl<I: IntervalHandle + ?Sized> IntervalOps<I> for Seen {
        fn invalidate(&self, iv: &I, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
            let mut b = self.bounds.lock().unwrap();
            iv.set_seq(cur_seq);
            *b = Some((iv.start(), iv.last()));
            Ok(())
        }
    }
    let mm = AddressSpace::<P>::new();
    let iv = Box::pin(IntervalSubscriber::<_, P>::new(Seen::default()));
    iv.as_ref().insert(&mm, 0x3000, 0x2000).unwrap();
    let seq = iv.interval().read_begin().unwrap();
    mm.invalidate_range_start(Range::new(0x4000, 0x5000, Event::Unmap))
        .unwrap()
        .end();
    assert_eq!(*iv.bounds.lock().unwrap(), Some((0x3000, 0x4fff)));
    assert!(
        iv.interval().read_retry(seq),
        "set_seq through the handle did not reach the interval"
    );
    iv.as_ref().remove().unwrap();
}

/// An interval may end exactly at the address limit (C-16: only one that goes past it
/// overflows); on the hosted platform the limit is the top of the address space.
#[test]
fn c16_interval_ending_at_the_address_limit_is_accepted() {
    struct Nop;
    impl IntervalOps<Interval<P>> for Nop {
        fn invalidate(&self, iv: &Interval<P>, _r: &Range, s: u64) -> Result<(), WouldBlock> {
            iv.set_seq(s);
            Ok(())
        }
    }
    let mm = AddressSpace::<P>::new();
    let top = Box::pin(IntervalSubscriber::<_, P>::new(Nop));
    assert_eq!(
        top.as_ref().insert(&mm, usize::MAX - PG, PG),
        Ok(()),
        "an interval ending at the limit"
    );
    let past = Box::pin(IntervalSubscriber::<_, P>::new(Nop));
    assert_eq!(
        past.as_ref().insert(&mm, usize::MAX - PG + 1, PG),
        Err(Error::Overflow)
    );
    top.as_ref().remove().unwrap();
}

/// A list subscriber's start and end run in a non-blocking region exactly when the range
/// is not blockable (C-08): a blockable range's callbacks may sleep.
#[test]
fn c08_list_callbacks_non_blocking_only_when_the_range_is() {
    use notifier_core::std_platform::StdPlatform;
    static SEEN: Mutex<Vec<(&str, bool, bool)>> = Mutex::new(Vec::new());
    struct Probe;
    impl SubscriberOps for Probe {
        fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
            SEEN.lock()
                .unwrap()
                .push(("start", r.blockable, StdPlatform::in_non_block()));
            Ok(())
        }
        fn invalidate_range_end(&self, r: &Range) {
            SEEN.lock()
                .unwrap()
                .push(("end", r.blockable, StdPlatform::in_non_block()));
        }
    }
    let mm = AddressSpace::<P>::new();
    let s = Box::pin(Subscriber::<_, P>::new(Probe));
    s.as_ref().register(&mm).unwrap();
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap()
        .end();
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap).non_blocking())
        .unwrap()
        .end();
    assert!(!StdPlatform::in_non_block());
    assert_eq!(
        *SEEN.lock().unwrap(),
        vec![
            ("start", true, false),
            ("end", true, false),
            ("start", false, true),
            ("end", false, true)
        ]
    );
    s.as_ref().unregister().unwrap();
}

/// `is_released` says whether `release` has run for the current registration (C-04).
#[test]
fn c04_is_released_tracks_the_release() {
    let mm = AddressSpace::<P>::new();
    let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    assert!(!s.is_released());
    s.as_ref().register(&mm).unwrap();
    assert!(!s.is_released(), "released before anything released it");
    mm.release().unwrap();
    assert!(s.is_released(), "teardown's release not seen");
    s.as_ref().unregister().unwrap();
}

/// What an address space says of itself: whether anybody ever subscribed
/// (`has_subscriptions`, also after `prepare`) and whether it is torn down (`is_dead`);
/// `prepare` on a torn-down space is refused.
#[test]
fn c01_address_space_state_queries() {
    let mm = AddressSpace::<P>::new();
    assert!(!mm.has_subscriptions() && !mm.is_dead());
    mm.prepare().unwrap();
    assert!(
        mm.has_subscriptions(),
        "prepare made no subscriptions object"
    );
    assert!(!mm.is_dead());
    mm.release().unwrap();
    assert!(mm.is_dead());
    assert_eq!(mm.prepare(), Err(Error::Dead));
    let fresh = AddressSpace::<P>::new();
    fresh.release().unwrap();
    assert!(fresh.is_dead() && !fresh.has_subscriptions());
}

/// Two first registrations on a fresh address space race to create its subscriptions
/// object: the one that loses the race uses the winner's, and both succeed (C-01).
#[test]
fn c01_racing_first_registrations_both_succeed() {
    for _ in 0..n(2_000) {
        let mm = AddressSpace::<P>::new();
        let go = Barrier::new(2);
        let (a, b) = thread::scope(|sc| {
            let prep = || {
                go.wait();
                mm.prepare()
            };
            let t = sc.spawn(prep);
            let b = prep();
            (t.join().unwrap(), b)
        });
        assert_eq!((a, b), (Ok(()), Ok(())));
    }
}
