//! The start for callers that exclude registration themselves
//! ([`RegistrationExcluded`]): with no per-address-space object it counts nothing
//! (nobody waits for it, and its task may still register elsewhere), and once the
//! object exists it is the counted path's bracketed start, with the same callbacks,
//! refusals and errors. The C-02 side (a registration excluded by a lock cannot miss it,
//! and one that ignores the lock does) is in `tests/loom.rs`
//! (`c02_register_excluded_by_a_lock_fresh`, `_subscribed`, and the broken twin
//! `c02_detects_registration_ignoring_the_lock`) and, whole-core, in `tests/random.rs`
//! (its even rounds, and `random_detects_a_false_registration_proof`).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, RwLock, RwLockReadGuard};
use std::thread;
use std::time::Duration;

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Error, Event, ExcludesRegistration, Interval, IntervalOps, IntervalSubscriber,
    Range, RegistrationExcluded, Subscriber, SubscriberOps, WouldBlock,
};

const PG: usize = 4096;

/// A backend's address space: `mmap` is held for reading around every excluded
/// invalidation and for writing around every registration.
struct Mm {
    mmap: RwLock<()>,
    notifiers: AddressSpace<P>,
}

impl Mm {
    fn new() -> Self {
        Mm {
            mmap: RwLock::new(()),
            notifiers: AddressSpace::new(),
        }
    }

    /// Register `sub` with the lock held for writing, as the proof's contract asks.
    fn register<T: SubscriberOps>(&self, sub: Pin<&Subscriber<T, P>>) -> Result<(), Error> {
        let _w = self.mmap.write().unwrap();
        sub.register(&self.notifiers)
    }

    /// Run `f` with the lock held for reading and a proof made from its guard.
    fn excluded<R>(&self, f: impl FnOnce(&RegistrationExcluded<'_, P>) -> R) -> R {
        let read = MmapRead {
            _guard: self.mmap.read().unwrap(),
            mm: self,
        };
        f(&RegistrationExcluded::from_guard(&read))
    }
}

/// `Mm::mmap` held for reading.
struct MmapRead<'a> {
    _guard: RwLockReadGuard<'a, ()>,
    mm: &'a Mm,
}

// SAFETY: every registration on `notifiers` in these tests that can add a subscriber
// goes through `Mm::register` (or an insertion with `mmap` held for writing); the one
// made inside an excluded section, by the task holding the invalidation, is refused
// before it adds anybody (`excluded_start_brackets_like_the_counted_path`). An
// `MmapRead` holds `mmap` for reading while it lives.
unsafe impl ExcludesRegistration<P> for MmapRead<'_> {
    fn address_space(&self) -> &AddressSpace<P> {
        &self.mm.notifiers
    }
}

#[derive(Default)]
struct Rec {
    starts: AtomicUsize,
    ends: AtomicUsize,
    refuse: bool,
}

impl SubscriberOps for Rec {
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if self.refuse && !r.blockable {
            return Err(WouldBlock);
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.ends.fetch_add(1, Ordering::SeqCst);
    }
}

struct Mirror;
impl IntervalOps<Interval<P>> for Mirror {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, seq: u64) -> Result<(), WouldBlock> {
        iv.set_seq(seq);
        Ok(())
    }
}

fn unmap() -> Range {
    Range::new(PG, 2 * PG, Event::Unmap)
}

/// With no object the excluded start holds nothing a registration could wait for: the
/// task holding it may register on another address space (the counted path refuses
/// that, [`Error::InvalidationHeld`], because that registration's first wait would
/// include the task's own invalidation), and another thread's first registration
/// elsewhere does not wait for it either.
#[test]
fn excluded_start_without_object_holds_nothing() {
    let a = Mm::new();
    let b = Mm::new();
    let sub = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    a.excluded(|ex| {
        assert!(std::ptr::eq(ex.address_space(), &a.notifiers));
        let inv = ex.invalidate_range_start(unmap()).unwrap();
        assert_eq!(b.register(sub.as_ref()), Ok(()));
        inv.end();
    });
    sub.as_ref().unregister().unwrap();

    // The same from another thread, with a watchdog: a registration that waited for
    // the held invalidation would never return while this thread holds it.
    let c = Mm::new();
    a.excluded(|ex| {
        let inv = ex.invalidate_range_start(unmap()).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| {
                let other = Box::pin(Subscriber::<_, P>::new(Rec::default()));
                let r = c.register(other.as_ref());
                let _ = tx.send(r);
                other.as_ref().unregister().unwrap();
            });
            let got = rx.recv_timeout(Duration::from_secs(if cfg!(miri) { 600 } else { 20 }));
            inv.end();
            assert_eq!(
                got,
                Ok(Ok(())),
                "a first registration elsewhere waited for an excluded invalidation"
            );
        });
    });
}

/// Once the object exists the excluded start brackets exactly as the counted one:
/// every subscriber and every overlapping interval is told, the end reaches those the
/// start reached, a refusal unwinds, and the holder cannot register on the same space.
#[test]
fn excluded_start_brackets_like_the_counted_path() {
    let mm = Mm::new();
    mm.notifiers.prepare().unwrap();
    // An object with nobody on it: nothing to call, still held (C-16).
    mm.excluded(|ex| {
        let inv = ex.invalidate_range_start(unmap()).unwrap();
        let late = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        assert_eq!(
            late.as_ref().register(&mm.notifiers),
            Err(Error::InvalidationHeld)
        );
        inv.end();
    });

    let a = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    let b = Box::pin(Subscriber::<_, P>::new(Rec {
        refuse: true,
        ..Rec::default()
    }));
    mm.register(a.as_ref()).unwrap();
    mm.register(b.as_ref()).unwrap();
    let iv = Box::pin(IntervalSubscriber::<_, P>::new(Mirror));
    {
        let _w = mm.mmap.write().unwrap();
        iv.as_ref().insert(&mm.notifiers, PG, PG).unwrap();
    }
    let seq = iv.interval().read_begin().unwrap();

    mm.excluded(|ex| {
        let inv = ex.invalidate_range_start(unmap()).unwrap();
        assert_eq!(inv.range(), &unmap());
        assert_eq!(a.starts.load(Ordering::SeqCst), 1);
        assert_eq!(b.starts.load(Ordering::SeqCst), 1);
        assert!(
            iv.interval().read_retry(seq),
            "the interval was not invalidated"
        );
        assert_eq!(a.ends.load(Ordering::SeqCst), 0);
        inv.end();
    });
    assert_eq!(a.ends.load(Ordering::SeqCst), 1);
    assert_eq!(b.ends.load(Ordering::SeqCst), 1);

    // `b` refuses a non-blockable range: the start fails, whoever started is ended.
    mm.excluded(|ex| {
        let got = ex.invalidate_range_start(unmap().non_blocking());
        assert!(matches!(got, Err(Error::WouldBlock)));
    });
    let (s, e) = (
        a.starts.load(Ordering::SeqCst),
        a.ends.load(Ordering::SeqCst),
    );
    assert_eq!(s, e, "a half pair after a refusal (starts {s}, ends {e})");

    a.as_ref().unregister().unwrap();
    b.as_ref().unregister().unwrap();
    iv.as_ref().remove().unwrap();
}

/// A bad range gets the counted path's error, with or without the object.
#[test]
fn excluded_start_refuses_what_the_counted_path_refuses() {
    let fresh = Mm::new();
    let prepared = Mm::new();
    prepared.notifiers.prepare().unwrap();
    let bad = [
        Range::new(PG, PG, Event::Unmap),
        Range::new(2 * PG, PG, Event::Unmap),
        Range::new(0, usize::MAX, Event::Unmap),
    ];
    for mm in [&fresh, &prepared] {
        for r in bad {
            let counted = mm.notifiers.invalidate_range_start(r).map(|_| ());
            let excluded = mm.excluded(|ex| ex.invalidate_range_start(r).map(|_| ()));
            assert!(counted.is_err(), "{r:?}");
            assert_eq!(excluded, counted, "{r:?}");
        }
    }
}
