//! Interval subscribers: the core's interval tree against a linear scan over the same
//! intervals, calling the same callback ([`IvCounter::hit`]).
//!
//! Interval `i` covers the page at `2 * i` pages (a page of gap between neighbours), so
//! a range can touch exactly `k` consecutive intervals.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use notifier_core::{AddressSpace, Event, IntervalSubscriber, Range};

use crate::callbacks::IvCounter;
use crate::{P, PAGE};

/// First byte of interval `i`.
fn first_byte(i: usize) -> usize {
    2 * i * PAGE
}

/// The range touching intervals `i .. i + k` and no other.
pub fn touching(i: usize, k: usize) -> Range {
    assert!(k >= 1);
    Range::new(first_byte(i), first_byte(i + k - 1) + PAGE, Event::Unmap)
}

/// Pseudo-random positions, so that successive invalidations do not hit the same cache
/// lines (a deterministic sequence: the core and the scan see the same one).
#[derive(Debug, Clone)]
pub struct Positions {
    state: u64,
    span: usize,
}

impl Positions {
    /// Positions `i` in `0 ..= n - k`, for ranges touching `k` of `n` intervals.
    pub fn new(n: usize, k: usize) -> Self {
        assert!(k >= 1 && k <= n);
        Positions {
            state: 0x2545_f491_4f6c_dd1d,
            span: n - k + 1,
        }
    }

    /// The next position.
    #[inline]
    pub fn next_index(&mut self) -> usize {
        // Knuth's MMIX linear congruential generator; the high bits are the good ones.
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.state >> 33) as usize) % self.span
    }
}

/// `n` interval subscribers inserted in one address space.
pub struct CoreIntervals {
    // Declared before `mm`: removed before the address space goes.
    subs: Vec<Pin<Box<IntervalSubscriber<IvCounter, P>>>>,
    mm: AddressSpace<P>,
}

impl CoreIntervals {
    /// Insert `n` interval subscribers, interval `i` over page `2 * i`.
    pub fn new(n: usize) -> Self {
        let mm = AddressSpace::new();
        let subs = (0..n)
            .map(|i| {
                let s = Box::pin(IntervalSubscriber::new(IvCounter::default()));
                s.as_ref()
                    .insert(&mm, first_byte(i), PAGE)
                    .expect("insert an interval subscriber");
                s
            })
            .collect();
        CoreIntervals { subs, mm }
    }

    /// The address space.
    pub fn mm(&self) -> &AddressSpace<P> {
        &self.mm
    }

    /// The subscribers, in order of their intervals.
    pub fn subscribers(&self) -> &[Pin<Box<IntervalSubscriber<IvCounter, P>>>] {
        &self.subs
    }

    /// One invalidation (start, then end) of `range`; true if nobody refused.
    #[inline]
    pub fn invalidate(&self, range: Range) -> bool {
        match self.mm.invalidate_range_start(range) {
            Ok(inv) => {
                inv.end();
                true
            }
            Err(_) => false,
        }
    }
}

/// One interval of the scan, with its subscriber inline.
struct ScanEntry {
    start: usize,
    last: usize,
    sub: IvCounter,
}

/// The same intervals in a vector, every invalidation comparing it with each.
pub struct LinearScan {
    entries: Vec<ScanEntry>,
    seq: AtomicU64,
}

impl LinearScan {
    /// `n` intervals laid out like [`CoreIntervals::new`]'s.
    pub fn new(n: usize) -> Self {
        let entries = (0..n)
            .map(|i| ScanEntry {
                start: first_byte(i),
                last: first_byte(i) + PAGE - 1,
                sub: IvCounter::default(),
            })
            .collect();
        LinearScan {
            entries,
            seq: AtomicU64::new(1),
        }
    }

    /// Call every interval overlapping `range`; returns how many there were.
    #[inline]
    pub fn invalidate(&self, range: Range) -> usize {
        let seq = self.seq.load(Ordering::Relaxed).wrapping_add(2);
        self.seq.store(seq, Ordering::Relaxed);
        let mut hits = 0;
        for e in &self.entries {
            if range.overlaps(e.start, e.last) {
                e.sub.hit(&range, seq);
                hits += 1;
            }
        }
        hits
    }
}
