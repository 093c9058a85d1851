//! Issue #7's one hard assertion: no invalidation path allocates. A counting global
//! allocator counts what the invalidating thread allocates; each case runs on a fresh
//! thread, so even first-use initialisation on the invalidation path is counted.
//!
//! Paths: start/end with list subscribers (blockable and not), with interval
//! subscribers (one- and two-pass, overlapping and not), a refused non-blockable start
//! with its unwinding (list and interval), an end that applies a deferred insertion,
//! `invalidate_page`, `invalidate_secondary_tlbs`, and the three ageing calls.

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use notifier_benches::alloc_count::{measure, CountingAlloc};
use notifier_benches::{Counter, IvCounter, P, PAGE};
use notifier_core::{
    AddressSpace, Error, Event, Interval, IntervalOps, IntervalSubscriber, Range,
    RegistrationExcluded, Subscriber, SubscriberOps, WouldBlock,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Run `f` on a fresh thread and fail if that thread allocated while running it.
fn assert_no_alloc(what: &str, f: impl FnOnce() + Send) {
    thread::scope(|s| {
        s.spawn(|| {
            let ((), allocs) = measure(f);
            assert_eq!(
                allocs.count, 0,
                "{what}: the invalidation path allocated {} times ({} bytes)",
                allocs.count, allocs.bytes
            );
        })
        .join()
        .expect("case panicked");
    });
}

fn r(start: usize, end: usize) -> Range {
    Range::new(start, end, Event::Unmap)
}

/// A list subscriber that implements every callback and refuses non-blockable starts
/// when told to.
#[derive(Default)]
struct Full {
    calls: AtomicUsize,
    refuse: bool,
}

impl Full {
    fn refusing() -> Self {
        Full {
            calls: AtomicUsize::new(0),
            refuse: true,
        }
    }
    fn bump(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl SubscriberOps for Full {
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        self.bump();
        if self.refuse && !range.blockable {
            return Err(WouldBlock);
        }
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        self.bump();
    }
    fn invalidate_secondary_tlbs(&self, _start: usize, _end: usize) {
        self.bump();
    }
    fn clear_flush_young(&self, _start: usize, _end: usize) -> bool {
        self.bump();
        true
    }
    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        self.bump();
        false
    }
    fn test_young(&self, _addr: usize) -> bool {
        self.bump();
        true
    }
}

/// An interval subscriber that may refuse, and may work in two passes.
struct Iv<const TWO: bool> {
    refuse: bool,
    finishes: AtomicUsize,
}

impl<const TWO: bool> Iv<TWO> {
    fn new(refuse: bool) -> Self {
        Iv {
            refuse,
            finishes: AtomicUsize::new(0),
        }
    }
}

impl<const TWO: bool> IntervalOps<Interval<P>> for Iv<TWO> {
    const TWO_PASS: bool = TWO;
    fn invalidate(&self, iv: &Interval<P>, range: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        if self.refuse && !range.blockable {
            return Err(WouldBlock);
        }
        iv.set_seq(cur_seq);
        Ok(())
    }
    fn invalidate_finish(&self, _iv: &Interval<P>, _range: &Range, _cur_seq: u64) {
        self.finishes.fetch_add(1, Ordering::Relaxed);
    }
}

fn start_end(mm: &AddressSpace<P>, range: Range) -> Result<(), Error> {
    mm.invalidate_range_start(range).map(|inv| inv.end())
}

#[test]
fn list_subscribers_start_end() {
    let mm = AddressSpace::<P>::new();
    let a = pin!(Subscriber::<_, P>::new(Full::default()));
    let b = pin!(Subscriber::<_, P>::new(Counter::default()));
    a.as_ref().register(&mm).unwrap();
    b.as_ref().register(&mm).unwrap();
    assert_no_alloc("list start/end", || {
        for _ in 0..100 {
            start_end(&mm, r(0, PAGE)).unwrap();
            start_end(&mm, r(PAGE, 16 * PAGE).non_blocking()).unwrap();
        }
    });
    assert_eq!(a.calls.load(Ordering::Relaxed), 400);
    assert_eq!(b.calls(), 400);
}

#[test]
fn interval_subscribers_start_end() {
    let mm = AddressSpace::<P>::new();
    let one = pin!(IntervalSubscriber::new(IvCounter::default()));
    let two = pin!(IntervalSubscriber::new(Iv::<true>::new(false)));
    one.as_ref().insert(&mm, 0, 4 * PAGE).unwrap();
    two.as_ref().insert(&mm, 2 * PAGE, 4 * PAGE).unwrap();
    assert_no_alloc("interval start/end", || {
        for _ in 0..100 {
            start_end(&mm, r(0, 8 * PAGE)).unwrap(); // both
            start_end(&mm, r(PAGE, 2 * PAGE).non_blocking()).unwrap(); // one
            start_end(&mm, r(64 * PAGE, 65 * PAGE)).unwrap(); // none
        }
    });
    assert_ne!(one.seq(), 0);
    assert_eq!(two.finishes.load(Ordering::Relaxed), 100);
    let seq = one.interval().read_begin().unwrap();
    assert!(!one.interval().read_retry(seq));
}

#[test]
fn refused_start_unwinds_without_allocating() {
    let mm = AddressSpace::<P>::new();
    // Registration order: the list is walked newest first, so `after` is called (and
    // must be unwound) before `refuser` refuses; `before` is never reached.
    let before = pin!(Subscriber::<_, P>::new(Full::default()));
    let refuser = pin!(Subscriber::<_, P>::new(Full::refusing()));
    let after = pin!(Subscriber::<_, P>::new(Full::default()));
    before.as_ref().register(&mm).unwrap();
    refuser.as_ref().register(&mm).unwrap();
    after.as_ref().register(&mm).unwrap();
    let ok_iv = pin!(IntervalSubscriber::new(Iv::<true>::new(false)));
    let bad_iv = pin!(IntervalSubscriber::new(Iv::<false>::new(true)));
    ok_iv.as_ref().insert(&mm, 0, PAGE).unwrap();
    bad_iv.as_ref().insert(&mm, 2 * PAGE, PAGE).unwrap();
    assert_no_alloc("refused non-blockable start", || {
        for _ in 0..100 {
            // Refused by the interval subscriber.
            let e = start_end(&mm, r(0, 4 * PAGE).non_blocking());
            assert_eq!(e, Err(Error::WouldBlock));
            // Refused by the list subscriber (no interval overlaps).
            let e = start_end(&mm, r(8 * PAGE, 9 * PAGE).non_blocking());
            assert_eq!(e, Err(Error::WouldBlock));
        }
    });
    // `after`: a start and its unwinding end per list refusal.
    assert_eq!(after.calls.load(Ordering::Relaxed), 200);
    assert_eq!(before.calls.load(Ordering::Relaxed), 0);
}

#[test]
fn end_applying_a_deferred_insertion() {
    let mm = AddressSpace::<P>::new();
    let first = pin!(IntervalSubscriber::new(IvCounter::default()));
    first.as_ref().insert(&mm, 0, PAGE).unwrap();
    let late: Vec<Pin<Box<IntervalSubscriber<IvCounter, P>>>> = (0..100)
        .map(|_| Box::pin(IntervalSubscriber::new(IvCounter::default())))
        .collect();
    thread::scope(|s| {
        s.spawn(|| {
            for (i, sub) in late.iter().enumerate() {
                let (inv, allocs) = measure(|| mm.invalidate_range_start(r(0, PAGE)).unwrap());
                assert_eq!(allocs.count, 0, "start allocated");
                // Inserted while the tree is walked: deferred to the end below. Not an
                // invalidation path, so not counted.
                sub.as_ref().insert(&mm, (2 + 2 * i) * PAGE, PAGE).unwrap();
                let ((), allocs) = measure(|| inv.end());
                assert_eq!(
                    allocs.count, 0,
                    "end applying a deferred insertion allocated"
                );
            }
        })
        .join()
        .unwrap();
    });
    assert!(late.iter().all(|s| s.interval().is_inserted()));
}

#[test]
fn page_tlbs_and_young() {
    let mm = AddressSpace::<P>::new();
    let a = pin!(Subscriber::<_, P>::new(Full::default()));
    let b = pin!(Subscriber::<_, P>::new(Full::default()));
    let iv = pin!(IntervalSubscriber::new(IvCounter::default()));
    a.as_ref().register(&mm).unwrap();
    b.as_ref().register(&mm).unwrap();
    iv.as_ref().insert(&mm, 0, 4 * PAGE).unwrap();
    assert_no_alloc("invalidate_page, invalidate_secondary_tlbs, young", || {
        for i in 0..100 {
            mm.invalidate_page(i % 8 * PAGE).unwrap();
            mm.invalidate_secondary_tlbs(0, 8 * PAGE).unwrap();
            assert!(mm.clear_flush_young(0, PAGE).unwrap());
            assert!(!mm.clear_young(0, PAGE).unwrap());
            assert!(mm.test_young(0).unwrap());
        }
    });
    // invalidate_page: 2, tlbs: 1, clear_flush_young: 1, clear_young: 1, test_young: 1
    // for `b` (newest first); `a` is not asked by test_young, which stops at `b`.
    assert_eq!(b.calls.load(Ordering::Relaxed), 600);
    assert_eq!(a.calls.load(Ordering::Relaxed), 500);
}

#[test]
fn no_subscriber() {
    let mm = AddressSpace::<P>::new();
    assert_no_alloc("no subscriber", || {
        for _ in 0..100 {
            start_end(&mm, r(0, PAGE)).unwrap();
            mm.invalidate_page(0).unwrap();
            mm.invalidate_secondary_tlbs(0, PAGE).unwrap();
            assert!(!mm.clear_young(0, PAGE).unwrap());
        }
    });
    assert_no_alloc("no subscriber, registration excluded", || {
        // SAFETY: nothing registers on `mm` while the proof lives.
        let excluded = unsafe { RegistrationExcluded::new(&mm) };
        for _ in 0..100 {
            excluded.invalidate_range_start(r(0, PAGE)).unwrap().end();
        }
    });
}

/// The counter has teeth: an allocation on the measured thread is seen.
#[test]
fn the_counter_counts() {
    let (b, allocs) = measure(|| Box::new(42u64));
    assert_eq!(*b, 42);
    assert_eq!(allocs.count, 1);
    assert_eq!(allocs.bytes, 8);
}
