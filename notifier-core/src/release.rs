//! Teardown (Linux: `__mmu_notifier_release`): the address space is going away and its
//! pages are about to be freed.

use core::ptr::{self, NonNull};

use crate::primitive::Ordering;
use crate::srcu::SleepableRcu;
use crate::subscriber::NodeRef;
use crate::{task, AddressSpace, Error, Platform};

impl<P: Platform> AddressSpace<P> {
    /// Tear the address space down, before any of its pages is freed (C-04).
    ///
    /// Every list subscriber gets `release` exactly once, unless a concurrent
    /// `unregister` claimed it first; interval subscribers get one invalidation with
    /// [`Event::Release`](crate::Event::Release) over the whole space. From now on
    /// registration fails with [`Error::Dead`](crate::Error::Dead).
    ///
    /// Returns only when every `release`, including one a racing `unregister` started,
    /// has returned, and every invalidation that called a subscriber's start has called
    /// its end (C-02): invalidations that begin after teardown hid the subscribers do
    /// not call them. A second call, also a concurrent one, returns once the first has
    /// finished. May sleep.
    ///
    /// Errors: [`Error::InCallback`] from inside a notifier callback and
    /// [`Error::InvalidationHeld`] while the calling task holds an invalidation
    /// (teardown would wait for itself); nothing changes then (C-16).
    pub fn release(&self) -> Result<(), Error> {
        P::might_sleep();
        task::may_wait::<P>()?;
        let Some((s, first)) = self.mark_torn_down() else {
            return Ok(());
        };
        if !first {
            // C-04: a second teardown returns only after the first one's callbacks.
            s.wq.wait_until::<P>(|| s.torn_down.load(Ordering::Acquire));
            return Ok(());
        }
        {
            let mut inner = s.lock.lock();
            inner.dead = true;
        }
        {
            // Under the read lock: an `unregister` that claims a release after us waits
            // for this section in its grace period, and we wait for its release below.
            let _rcu = P::rcu().read_lock();
            let _mark = task::CallbackMark::<P>::new();
            s.for_each_node(|n| {
                // If `release` runs before `unregister`, it is the subscriber's only
                // chance to drop its translations before the pages are freed.
                if n.claim_release() {
                    n.call_release();
                }
                true
            });
        }
        // A `release` that a racing `unregister` claimed before us runs in a read-side
        // section: wait for it before hiding anything, so that no subscriber stops
        // hearing about changes before its `release` has run (C-03).
        P::rcu().synchronize();
        // A node still being registered is visible only to invalidations that started
        // after its generation; hiding it now would make it visible to the older ones
        // at their end but not at their start. Wait for those (as its registration
        // does), after which it is visible to every invalidation in flight.
        task::annotate_wait::<P>();
        s.synchronize_inflight();
        {
            // Invalidations that begin from now on skip every subscriber...
            let _inner = s.lock.lock();
            s.for_each_node(|n| {
                n.settle_registering();
                n.hide_locked(s);
                true
            });
        }
        // ... and those that started one deliver its end before it is unlinked (C-02).
        s.synchronize_inflight();
        {
            // Unlink everything at once. Readers already inside keep following the
            // nodes' `next` pointers, which stay intact until each node unregisters
            // (which waits for grace periods of both the in-flight count and the
            // RCU) or, for a zombie, until its free runs after both.
            let _inner = s.lock.lock();
            let mut pended = false;
            let mut cur = s.head.load(Ordering::Relaxed);
            while let Some(p) = NonNull::new(cur) {
                // SAFETY: linked nodes are valid while we hold the lock.
                let n = unsafe { NodeRef::new(p) };
                cur = n.next.load(Ordering::Relaxed);
                n.mark_unlinked();
                if n.clear_zombie() {
                    // Invalidations that began after it was hidden may be walking
                    // over it: its free waits on the pending list (still counted).
                    s.push_pending_locked(n);
                    pended = true;
                }
            }
            s.head.store(ptr::null_mut(), Ordering::Release);
            if pended {
                s.set_zombie_cookie_locked();
            }
        }
        crate::interval::itree_release(s);
        // A `release` started by a racing `unregister` runs in a read-side section:
        // wait for it before the caller frees pages.
        P::rcu().synchronize();
        // Invalidations still walking over the nodes unlinked above: the zombies among
        // them are freed once these have left (the sweep in `synchronize_inflight`).
        s.synchronize_inflight();
        s.torn_down.store(true, Ordering::Release);
        s.wq.wake_all::<P>();
        Ok(())
    }
}
