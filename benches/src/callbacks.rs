//! The callbacks all the benchmarked lists call: the cheapest callback that still does
//! observable work (one relaxed load and store of a counter), so that the cost around
//! the call dominates and nothing can be optimised away.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use notifier_core::{Interval, IntervalOps, Range, SubscriberOps, WouldBlock};

use crate::P;

/// The start/end pair of a secondary MMU, as a trait object the peers store
/// (`Arc<dyn Callbacks>`).
pub trait Callbacks: Send + Sync {
    /// `invalidate_range_start`.
    fn start(&self, range: &Range) -> Result<(), WouldBlock>;
    /// `invalidate_range_end`.
    fn end(&self, range: &Range);
}

/// A subscriber that counts the callbacks it gets.
#[derive(Debug, Default)]
pub struct Counter {
    calls: AtomicU64,
}

impl Counter {
    /// How many callbacks ran.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    #[inline]
    fn bump(&self, range: &Range) {
        black_box(range);
        // Not a read-modify-write: each subscriber is called by one thread at a time in
        // the benchmarks, and an RMW would dwarf the call itself.
        let n = self.calls.load(Ordering::Relaxed);
        self.calls.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

impl Callbacks for Counter {
    #[inline]
    fn start(&self, range: &Range) -> Result<(), WouldBlock> {
        self.bump(range);
        Ok(())
    }

    #[inline]
    fn end(&self, range: &Range) {
        self.bump(range);
    }
}

impl SubscriberOps for Counter {
    #[inline]
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        Callbacks::start(self, range)
    }

    #[inline]
    fn invalidate_range_end(&self, range: &Range) {
        Callbacks::end(self, range)
    }
}

/// An interval subscriber that records the last invalidation sequence it saw.
///
/// A real one takes its own lock around [`Interval::set_seq`] (the lock its fault path
/// checks `read_retry` under); no fault path runs in the benchmarks, so the lock is left
/// out here and in the linear scan alike.
#[derive(Debug, Default)]
pub struct IvCounter {
    seq: AtomicU64,
}

impl IvCounter {
    /// Record invalidation `seq`: the callback body shared by the core and the scan.
    #[inline]
    pub fn hit(&self, range: &Range, seq: u64) {
        black_box(range);
        self.seq.store(seq, Ordering::Relaxed);
    }

    /// The last sequence recorded.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

impl IntervalOps<Interval<P>> for IvCounter {
    #[inline]
    fn invalidate(&self, iv: &Interval<P>, range: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        iv.set_seq(cur_seq);
        self.hit(range, cur_seq);
        Ok(())
    }
}
