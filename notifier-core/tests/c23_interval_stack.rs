//! C-23 through the public API: interval subscribers whose starts an adversary chose
//! from their addresses (the old treap drew its priorities from the addresses) are
//! inserted, invalidated and removed on a thread with a kernel-sized stack. With the
//! treap this built a chain as long as the number of subscribers, and its recursive walk
//! overflowed the stack; a balanced tree walked without recursion does not care.
#![cfg(not(loom))]

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::WouldBlock;
use notifier_core::{AddressSpace, Event, Interval, IntervalOps, IntervalSubscriber, Range};

const PG: usize = 4096;

/// Counts its invalidations.
#[derive(Default)]
struct Count(AtomicUsize);

impl IntervalOps<Interval<P>> for Count {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        // No fault path here to race with: no lock needed around `set_seq`.
        iv.set_seq(cur_seq);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The priority the treap gave a node at `addr` (the adversary knows the code).
fn treap_prio(addr: usize) -> usize {
    (addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize)
}

#[test]
fn c23_adversarial_interval_starts_fit_a_16k_stack() {
    let n = if cfg!(miri) { 40 } else { 5000 };
    let subs: Vec<Pin<Box<IntervalSubscriber<Count, P>>>> = (0..n)
        .map(|_| Box::pin(IntervalSubscriber::new(Count::default())))
        .collect();
    // Starts in the order of the treap's priorities: the treap becomes one chain of
    // left children, n deep; inserted in that order, each insertion is cheap.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| treap_prio(&*subs[i] as *const _ as usize));
    let mm = AddressSpace::<P>::new();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(16 * 1024)
            .spawn_scoped(s, || {
                for (rank, &i) in order.iter().enumerate() {
                    subs[i].as_ref().insert(&mm, rank * PG, PG).unwrap();
                }
                // One invalidation over everything: the walk visits every interval.
                let inv = mm
                    .invalidate_range_start(Range::new(0, n * PG, Event::Unmap))
                    .unwrap();
                inv.end();
                for sub in &subs {
                    assert_eq!(sub.ops().0.load(Ordering::Relaxed), 1);
                }
                // And one touching only the last-inserted one.
                let last = (n - 1) * PG;
                let inv = mm
                    .invalidate_range_start(Range::new(last, last + PG, Event::Unmap))
                    .unwrap();
                inv.end();
                assert_eq!(subs[order[n - 1]].ops().0.load(Ordering::Relaxed), 2);
                // Remove on this stack too, in the order of the chain.
                for &i in order.iter().rev() {
                    subs[i].as_ref().remove().unwrap();
                }
            })
            .unwrap()
            .join()
            .unwrap();
    });
}
