//! How the suite's consumers subscribe: to the core (every backend), or straight to the
//! platform's own notifier (reference mode).
//!
//! The consumers ([`consumers`](crate::consumers)) are written against two callback
//! traits: the core's [`SubscriberOps`] for list subscribers, and [`IvOps`] here for
//! interval subscribers (the core's `IntervalOps` with the interval seen through
//! [`Seq`], so that an interval that is not the core's can be handed to them). Which
//! implementation calls those callbacks is a [`Notifiers`] mode:
//!
//! - [`Core`]: the consumers register on the backend's
//!   [`AddressSpace`], as a kernel module using this crate
//!   would. [`run`](crate::run) uses it.
//! - a reference mode, written by a backend whose platform has a notifier of its own
//!   (Linux: `mmu_notifier_register`, `mmu_interval_notifier_insert`): the same
//!   consumers registered on the platform's implementation, so that the suite's
//!   expectations are checked against it ([`run_with`](crate::run_with)).
//!
//! A few checks exercise what only the core has: its typed errors for misuse, direct
//! calls into an `AddressSpace`, shared subscribers through the core's `get`, two-pass
//! intervals. A mode answers [`Notifiers::lacks`] for those, and the cases (or the part
//! of a case) that need them are reported as not applicable in that mode, with the
//! reason.

use core::ops::Deref;
use core::pin::Pin;

use notifier_core::{
    AddressSpace, Error, Interval, IntervalOps, IntervalSubscriber, Platform, Range, Subscriber,
    SubscriberOps, WouldBlock,
};

use crate::harness::{Harness, Mm};

/// The interval side of the sequence protocol, as a consumer uses it (Linux:
/// `mmu_interval_read_begin`, `mmu_interval_read_retry`, `mmu_interval_set_seq`).
pub trait Seq {
    /// Start a fault: the sequence to check with [`read_retry`](Self::read_retry).
    /// Waits while an invalidation of this interval is in flight.
    fn read_begin(&self) -> Result<u64, Error>;
    /// Whether an invalidation ran since `seq` was read (checked under the consumer's
    /// lock before it installs a translation).
    fn read_retry(&self, seq: u64) -> bool;
    /// Called by `invalidate` under the consumer's lock.
    fn set_seq(&self, cur_seq: u64);
    /// Whether the interval is inserted.
    fn is_inserted(&self) -> bool;
    /// First address of the interval.
    fn start(&self) -> usize;
    /// Last address of the interval (inclusive).
    fn last(&self) -> usize;
}

impl<P: Platform> Seq for Interval<P> {
    fn read_begin(&self) -> Result<u64, Error> {
        Interval::read_begin(self)
    }
    fn read_retry(&self, seq: u64) -> bool {
        Interval::read_retry(self, seq)
    }
    fn set_seq(&self, cur_seq: u64) {
        Interval::set_seq(self, cur_seq)
    }
    fn is_inserted(&self) -> bool {
        Interval::is_inserted(self)
    }
    fn start(&self) -> usize {
        Interval::start(self)
    }
    fn last(&self) -> usize {
        Interval::last(self)
    }
}

/// The callbacks of an interval consumer: the core's
/// [`IntervalOps`], with the interval as a [`Seq`].
pub trait IvOps: Sync {
    /// Two passes (C-14): `invalidate_start` on every overlapping subscriber, then
    /// `invalidate_finish` on each.
    const TWO_PASS: bool = false;

    /// `range`, which overlaps the interval, is about to change: take the consumer's
    /// lock, `set_seq(cur_seq)`, zap the overlap.
    fn invalidate(&self, iv: &dyn Seq, range: &Range, cur_seq: u64) -> Result<(), WouldBlock>;

    /// Two-pass form, first pass.
    fn invalidate_start(
        &self,
        iv: &dyn Seq,
        range: &Range,
        cur_seq: u64,
    ) -> Result<(), WouldBlock> {
        self.invalidate(iv, range, cur_seq)
    }

    /// Two-pass form, second pass.
    fn invalidate_finish(&self, _iv: &dyn Seq, _range: &Range, _cur_seq: u64) {}
}

/// What only the core offers, which a mode may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// Typed errors for misuse: double registration, registration on a torn-down
    /// space, unknown handles, bad ranges, calls from inside a callback (C-01, C-16).
    MisuseErrors,
    /// Invalidations the suite makes itself on the backend's `AddressSpace` reach the
    /// consumers (C-07 nesting, C-13 deferral, C-15 OR-ing, C-17).
    DirectCalls,
    /// Shared subscribers through the core's `get`/`put`/`synchronize` (C-05).
    SharedGetPut,
    /// Two-pass interval subscribers (C-14).
    TwoPass,
    /// The core's page-keyed export registry (C-18 to C-21).
    Export,
    /// List subscribers that refuse a non-blockable start (C-08). Linux WARNs when a
    /// notifier with an end fails its start; the core allows it.
    ListRefusal,
}

/// A list subscription wrapping the consumer `T`, of some [`Notifiers`] mode.
///
/// Created unregistered with [`new`](Self::new), pinned (`core::pin::pin!`), then
/// registered; dropping it unregisters it.
pub trait Subscription<H: Harness, T>: Deref<Target = T> + Sync {
    /// An unregistered subscription around `ops`.
    fn new(ops: T) -> Self;
    /// Register on address space `mm` of `h`.
    fn register(self: Pin<&Self>, h: &H, mm: Mm) -> Result<(), Error>;
    /// Unregister: when it returns, no callback of this subscription runs any more, and
    /// `release` ran once (here, or earlier at teardown).
    fn unregister(self: Pin<&Self>) -> Result<(), Error>;
    /// Whether it is registered.
    fn is_registered(&self) -> bool;
}

/// An interval subscription wrapping the consumer `T`, of some [`Notifiers`] mode.
pub trait IntervalSubscription<H: Harness, T>: Deref<Target = T> + Sync {
    /// An interval subscription around `ops`, not inserted.
    fn new(ops: T) -> Self;
    /// Insert `[start, start + len)` of address space `mm` of `h`.
    fn insert(self: Pin<&Self>, h: &H, mm: Mm, start: usize, len: usize) -> Result<(), Error>;
    /// Remove: when it returns, `invalidate` is not called any more.
    fn remove(self: Pin<&Self>) -> Result<(), Error>;
    /// The interval, for the sequence protocol.
    fn interval(&self) -> &dyn Seq;
}

/// Where the consumers subscribe (see the [module](self) documentation).
pub trait Notifiers<H: Harness> {
    /// Printed in the suite's header.
    const NAME: &'static str;
    /// A list subscription around `T`.
    type Sub<T: SubscriberOps>: Subscription<H, T>;
    /// An interval subscription around `T`.
    type Iv<T: IvOps>: IntervalSubscription<H, T>;
    /// `None` if this mode has `feature`, else why not.
    fn lacks(feature: Feature) -> Option<&'static str>;
}

/// The core: consumers register on [`Harness::address_space`].
pub struct Core;

impl<H: Harness> Notifiers<H> for Core {
    const NAME: &'static str = "core";
    type Sub<T: SubscriberOps> = Subscriber<T, H::P>;
    type Iv<T: IvOps> = CoreInterval<T, H::P>;
    fn lacks(_feature: Feature) -> Option<&'static str> {
        None
    }
}

impl<H: Harness, T: SubscriberOps> Subscription<H, T> for Subscriber<T, H::P> {
    fn new(ops: T) -> Self {
        Subscriber::new(ops)
    }
    fn register(self: Pin<&Self>, h: &H, mm: Mm) -> Result<(), Error> {
        Subscriber::register(self, h.address_space(mm))
    }
    fn unregister(self: Pin<&Self>) -> Result<(), Error> {
        Subscriber::unregister(self)
    }
    fn is_registered(&self) -> bool {
        Subscriber::is_registered(self)
    }
}

/// Hands the core's interval callbacks to an [`IvOps`] consumer.
pub struct CoreIvOps<T>(T);

impl<T: IvOps, P: Platform> IntervalOps<Interval<P>> for CoreIvOps<T> {
    const TWO_PASS: bool = T::TWO_PASS;
    fn invalidate(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.0.invalidate(iv, r, cur_seq)
    }
    fn invalidate_start(
        &self,
        iv: &Interval<P>,
        r: &Range,
        cur_seq: u64,
    ) -> Result<(), WouldBlock> {
        self.0.invalidate_start(iv, r, cur_seq)
    }
    fn invalidate_finish(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) {
        self.0.invalidate_finish(iv, r, cur_seq)
    }
}

/// An [`IvOps`] consumer as the core's interval subscriber.
pub struct CoreInterval<T: IvOps, P: Platform>(IntervalSubscriber<CoreIvOps<T>, P>);

impl<T: IvOps, P: Platform> CoreInterval<T, P> {
    /// An interval subscriber around `ops`, not inserted.
    pub fn new(ops: T) -> Self {
        CoreInterval(IntervalSubscriber::new(CoreIvOps(ops)))
    }

    fn inner(self: Pin<&Self>) -> Pin<&IntervalSubscriber<CoreIvOps<T>, P>> {
        // SAFETY: structural pinning of the only field: `CoreInterval` never moves it
        // out, has no `Drop` of its own and is `!Unpin` exactly when the field is.
        unsafe { self.map_unchecked(|s| &s.0) }
    }

    /// [`IntervalSubscriber::insert`].
    pub fn insert(
        self: Pin<&Self>,
        mm: &AddressSpace<P>,
        start: usize,
        len: usize,
    ) -> Result<(), Error> {
        self.inner().insert(mm, start, len)
    }

    /// [`IntervalSubscriber::remove`].
    pub fn remove(self: Pin<&Self>) -> Result<(), Error> {
        self.inner().remove()
    }

    /// [`IntervalSubscriber::interval`].
    pub fn interval(&self) -> &Interval<P> {
        self.0.interval()
    }
}

impl<T: IvOps, P: Platform> Deref for CoreInterval<T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.ops().0
    }
}

impl<H: Harness, T: IvOps> IntervalSubscription<H, T> for CoreInterval<T, H::P> {
    fn new(ops: T) -> Self {
        CoreInterval::new(ops)
    }
    fn insert(self: Pin<&Self>, h: &H, mm: Mm, start: usize, len: usize) -> Result<(), Error> {
        CoreInterval::insert(self, h.address_space(mm), start, len)
    }
    fn remove(self: Pin<&Self>) -> Result<(), Error> {
        CoreInterval::remove(self)
    }
    fn interval(&self) -> &dyn Seq {
        CoreInterval::interval(self)
    }
}
