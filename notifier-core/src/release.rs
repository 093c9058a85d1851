//! Teardown (Linux: `__mmu_notifier_release`): the address space is going away and its
//! pages are about to be freed.

use core::ptr;

use crate::primitive::Ordering;
use crate::srcu::SleepableRcu;
use crate::{AddressSpace, Platform};

impl<P: Platform> AddressSpace<P> {
    /// Tear the address space down, before any of its pages is freed (C-04).
    ///
    /// Every list subscriber gets `release` exactly once, unless a concurrent
    /// `unregister` claimed it first; interval subscribers get one invalidation with
    /// [`Event::Release`](crate::Event::Release) over the whole space. From now on
    /// registration fails with [`Error::Dead`](crate::Error::Dead). Returns only when
    /// every `release`, including one a racing `unregister` started, has returned.
    /// Calling it again does nothing. May sleep.
    pub fn release(&self) {
        P::might_sleep();
        let Some((s, first)) = self.mark_torn_down() else {
            return;
        };
        if !first {
            return;
        }
        {
            let mut inner = s.lock.lock();
            inner.dead = true;
        }
        {
            // Under the read lock: an `unregister` that claims a release after us waits
            // for this section in its grace period, and we wait for its release below.
            let _rcu = P::rcu().read_lock();
            let _mark = s.enter_callbacks();
            s.for_each_node(|n| {
                // If `release` runs before `unregister`, it is the subscriber's only
                // chance to drop its translations before the pages are freed.
                if n.claim_release() {
                    n.call_release();
                }
                true
            });
        }
        {
            // Unlink everything at once. Readers already inside keep following the
            // nodes' `next` pointers, which stay intact until each node unregisters
            // (which waits for a grace period).
            let _inner = s.lock.lock();
            s.head.store(ptr::null_mut(), Ordering::Release);
        }
        crate::interval::itree_release(s);
        // A `release` started by a racing `unregister` runs in a read-side section:
        // wait for it before the caller frees pages.
        P::rcu().synchronize();
    }
}
