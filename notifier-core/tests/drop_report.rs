//! `Bug::DropInCallback` (C-16): a subscriber dropped while its task holds an
//! invalidation (or runs a callback) is reported, and an ordinary drop is not. In its
//! own test binary: the hosted platform's bug counts are per process.
#![cfg(not(loom))]

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Bug, Event, Interval, IntervalOps, IntervalSubscriber, Range, Subscriber,
    SubscriberOps, WouldBlock,
};

const PG: usize = 4096;

struct Nop;

impl SubscriberOps for Nop {}

impl IntervalOps<Interval<P>> for Nop {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, seq: u64) -> Result<(), WouldBlock> {
        iv.set_seq(seq);
        Ok(())
    }
}

#[test]
fn c16_only_a_drop_while_busy_is_reported() {
    let before = P::bugs(Bug::DropInCallback);
    // Ordinary drops of registered subscribers: nothing to report.
    let mm = AddressSpace::<P>::new();
    let s = Box::pin(Subscriber::<Nop, P>::new(Nop));
    s.as_ref().register(&mm).unwrap();
    let iv = Box::pin(IntervalSubscriber::<Nop, P>::new(Nop));
    iv.as_ref().insert(&mm, 0, PG).unwrap();
    drop(s);
    drop(iv);
    assert_eq!(P::bugs(Bug::DropInCallback), before, "an ordinary drop");
    // Dropped while the task holds an invalidation of another address space: reported
    // (the drop still completes: it waits only for the subscriber's own address space).
    let other = AddressSpace::<P>::new();
    let s = Box::pin(Subscriber::<Nop, P>::new(Nop));
    s.as_ref().register(&mm).unwrap();
    let inv = other
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    drop(s);
    inv.end();
    assert_eq!(
        P::bugs(Bug::DropInCallback),
        before + 1,
        "a drop while holding an invalidation"
    );
}
