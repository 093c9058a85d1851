//! The per-address-space state ([`Subscriptions`], behind an [`AddressSpace`]) and the
//! invalidation path: `invalidate_range_start`, `invalidate_range_end`,
//! `invalidate_page`, `invalidate_secondary_tlbs`.
//!
//! The order of operations here is the contract; each non-obvious step says which race
//! it closes.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use intrusive_collections::LinkedList;

use crate::interval::{DeferredAdapter, Interval};
use crate::itree::Tree;
use crate::primitive::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::range::validate_bounds;
use crate::srcu::{Poll, ReadToken, Readers, SleepableRcu};
use crate::subscriber::{Node, NodeRef, ZOMBIE};
use crate::sync::{SleepMutex, SpinLock, WaitQueue};
use crate::task;
use crate::{Bug, Error, Event, Platform, Range};

/// Tag bit of [`AddressSpace`]'s pointer: the address space has been torn down.
const TORN_DOWN: usize = 1;

/// State under the address space's spin lock.
pub(crate) struct Inner<P: Platform> {
    /// The interval tree (an AVL tree ordered by start, augmented with the largest
    /// `last` of each subtree: depth O(log n) whatever the insertion order, C-23).
    pub(crate) itree: Tree<Interval<P>>,
    /// Invalidations between `start` and `end` that went through the interval tree.
    pub(crate) active_invalidate_ranges: usize,
    /// Interval subscribers whose insertion or removal waits for the last in-flight
    /// invalidation to end (C-13). Writer-side only: an intrusive list.
    pub(crate) deferred: LinkedList<DeferredAdapter<P>>,
    /// Set by teardown: registration fails with [`Error::Dead`] from then on.
    pub(crate) dead: bool,
}

/// Everything the core keeps for one address space (Linux:
/// `struct mmu_notifier_subscriptions`). Created lazily by the first registration and
/// freed when the last reference (the address space's own, one per registered
/// subscriber) goes.
///
/// # Invariants
///
/// - `head` is an RCU list with two kinds of reader: invalidations walk it inside their
///   in-flight section of `inflight` (one read-side section per start/end pair), every
///   other walker (secondary-TLB flushes, ageing, release, `put`) inside a section of
///   `P::rcu()`. Nodes are linked at the head and unlinked under `lock`, and freed (or
///   reused) only after a grace period of **both** that began after the unlink
///   (unregister waits for both; a shared node waits on `pending` for the first, then
///   its free is queued behind the second). Nodes are only ever linked at the head, so
///   the list is ordered from the newest registration to the oldest.
/// - `gen` only grows (62 bits: it never wraps), and changes only under `lock`, after
///   the node state that names it is written and the node linked (`publish_gen`).
/// - `zombies` counts the shared nodes whose last user is gone and whose free is not
///   queued yet: on the list tagged `ZOMBIE`, or unlinked and waiting on `pending`. It,
///   `pending` and `zombie_cookie` change only under `lock`, and `zombie_cookie` is
///   taken after every zombie was hidden and every pending node unlinked.
/// - The interval tree changes only under `lock`, and only while `invalidate_seq` is
///   even or no invalidation walks it; walkers walk it only while `invalidate_seq` is
///   odd and they are counted in `active_invalidate_ranges`.
pub(crate) struct Subscriptions<P: Platform> {
    pub(crate) head: AtomicPtr<Node<P>>,
    pub(crate) gen: AtomicU64,
    /// Invalidations in flight between `start` and `end` (C-02): `start` enters,
    /// `end` exits; registration waits for a grace period of them.
    pub(crate) inflight: Readers,
    pub(crate) lock: SpinLock<P, Inner<P>>,
    /// Odd while an invalidation touching the interval tree is in flight.
    pub(crate) invalidate_seq: AtomicU64,
    /// Interval subscribers in the tree or waiting to enter it.
    pub(crate) intervals: AtomicUsize,
    /// Set by the first interval insertion and never cleared (Linux: `has_itree`):
    /// from then on every invalidation counts itself in `active_invalidate_ranges`,
    /// so later insertions can see it under the lock instead of waiting for it.
    pub(crate) has_itree: AtomicBool,
    /// Set once a grace period of `inflight` has passed since `has_itree` was set:
    /// from then on no invalidation that skipped the tree is still in flight. Until
    /// then every insertion waits for one (C-09: two first insertions racing).
    pub(crate) itree_armed: AtomicBool,
    /// Shared subscribers hidden by their last `put` while invalidations were in
    /// flight, still linked so that those invalidations deliver their ends (C-02).
    pub(crate) zombies: AtomicUsize,
    /// `inflight` cookie after which every zombie may be unlinked and every pending
    /// node freed.
    zombie_cookie: AtomicUsize,
    /// Shared nodes unlinked while invalidations may still be walking over them,
    /// chained through their (unused once unlinked) `pprev`: their frees are queued
    /// once a grace period of `inflight` has passed since (`free_pending_locked`).
    pending: AtomicPtr<Node<P>>,
    /// A sweep found the grace-period mutex taken: the holder looks again.
    sweep_again: AtomicBool,
    /// Set once a grace period of the platform's `unsubscribed` counters has passed
    /// since this object was published: no invalidation that missed it is still in
    /// flight, and registrations no longer wait for them.
    pub(crate) unbracketed_drained: AtomicBool,
    /// Set when the first teardown has finished (a second one waits for it, C-04).
    pub(crate) torn_down: AtomicBool,
    pub(crate) wq: WaitQueue,
    /// Serialises `get` so that one kind has one shared subscriber.
    pub(crate) get_lock: SleepMutex,
    refs: AtomicUsize,
    _p: PhantomData<P>,
}

impl<P: Platform> Drop for Subscriptions<P> {
    fn drop(&mut self) {
        // Every zombie holds a reference on the object until it is unlinked, and each
        // unlink (the sweep's, or teardown's) takes it off the count.
        debug_assert_eq!(
            self.zombies.load(Ordering::Relaxed),
            0,
            "zombies counted when the subscriptions object is freed"
        );
        debug_assert!(
            self.pending.load(Ordering::Relaxed).is_null(),
            "pending frees when the subscriptions object is freed"
        );
    }
}

impl<P: Platform> Subscriptions<P> {
    fn new() -> Self {
        Subscriptions {
            head: AtomicPtr::new(ptr::null_mut()),
            gen: AtomicU64::new(0),
            inflight: Readers::new(),
            lock: SpinLock::new_class(
                crate::LockClass::Subscriptions,
                Inner {
                    itree: Tree::new(),
                    active_invalidate_ranges: 0,
                    deferred: LinkedList::new(DeferredAdapter::NEW),
                    dead: false,
                },
            ),
            // Even: idle. Starts high so that `seq - 1` of a new interval never collides.
            invalidate_seq: AtomicU64::new(2),
            intervals: AtomicUsize::new(0),
            has_itree: AtomicBool::new(false),
            itree_armed: AtomicBool::new(false),
            zombies: AtomicUsize::new(0),
            zombie_cookie: AtomicUsize::new(0),
            pending: AtomicPtr::new(ptr::null_mut()),
            sweep_again: AtomicBool::new(false),
            unbracketed_drained: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            wq: WaitQueue::new(),
            get_lock: SleepMutex::new(crate::SleepClass::Get),
            refs: AtomicUsize::new(1),
            _p: PhantomData,
        }
    }

    pub(crate) fn get_ref(&self) {
        self.refs.fetch_add(1, Ordering::Relaxed);
    }

    /// Drop one reference; the last frees the object.
    ///
    /// # Safety
    ///
    /// The caller owns one reference and does not use `this` afterwards. `this` carries
    /// the provenance of the allocation (a pointer loaded from an owner field or the
    /// address space, never one made from a shared reference), since the memory is
    /// freed through it.
    pub(crate) unsafe fn put_ref(this: NonNull<Self>) {
        // SAFETY: the caller's reference keeps the object alive until here; only the
        // `refs` field is borrowed.
        let refs = unsafe { &(*this.as_ptr()).refs };
        if refs.fetch_sub(1, Ordering::Release) == 1 {
            crate::primitive::fence(Ordering::Acquire);
            // SAFETY: that was the last reference: nobody else can reach the object
            // (`read_begin` counts itself in the interval, which waits for it before
            // dropping its reference); it was allocated by `P::alloc` with this layout
            // in `subscriptions_or_create`, and `this` has the allocation's provenance.
            unsafe {
                ptr::drop_in_place(this.as_ptr());
                P::dealloc(this.cast(), Layout::new::<Self>());
            }
        }
    }

    /// The next generation; the caller writes the node state (and links the node)
    /// that names it, then publishes it with [`publish_gen`](Self::publish_gen). Lock
    /// held.
    pub(crate) fn next_gen(&self) -> u64 {
        self.gen.load(Ordering::Relaxed) + 1
    }

    /// Publish generation `g` from [`next_gen`](Self::next_gen), after the node state
    /// that names it: an invalidation that reads `g` (acquire) also sees that state and
    /// the node's link, so it decides the same at its start and at its end. Lock held.
    pub(crate) fn publish_gen(&self, g: u64) {
        self.gen.store(g, Ordering::Release);
    }

    /// Count a zombie: a node hidden under the lock (which the caller holds) that stays
    /// linked until the invalidations in flight now have ended, or one already moved to
    /// `pending` (`add_pending_locked`). Its cookie is taken after either.
    pub(crate) fn add_zombie_locked(&self) {
        ZOMBIES.add();
        let cookie = self.inflight.cookie();
        self.zombie_cookie.store(cookie, Ordering::Relaxed);
        // SeqCst: the store half of the handshake with an ending invalidation (see
        // `sweep_zombies`); the poll that follows begins with a full barrier.
        self.zombies
            .store(self.zombies.load(Ordering::Relaxed) + 1, Ordering::SeqCst);
    }

    /// Queue the free of `node`, a shared node whose last user is gone and which someone
    /// else (teardown) unlinked: invalidations that were walking the list then may
    /// still be on it, so it waits on `pending` for a grace period of `inflight`. Lock
    /// held; the caller sweeps after unlocking.
    pub(crate) fn add_pending_locked(&self, node: NodeRef<'_, P>) {
        self.push_pending_locked(node);
        // Counted as a zombie, with a cookie taken after it was unlinked.
        self.add_zombie_locked();
    }

    /// Chain the unlinked `node` on `pending` (through its `pprev`, unused once
    /// unlinked; `next` stays intact for the walkers still on it). Lock held; the
    /// caller takes a new `zombie_cookie` afterwards
    /// ([`set_zombie_cookie_locked`](Self::set_zombie_cookie_locked)).
    pub(crate) fn push_pending_locked(&self, node: NodeRef<'_, P>) {
        node.set_pending_next(self.pending.load(Ordering::Relaxed));
        self.pending.store(node.as_ptr(), Ordering::Relaxed);
    }

    /// Queue the frees of every pending node: a grace period of `inflight` has passed
    /// since each was unlinked (the caller polled a cookie taken after the last unlink).
    /// Lock held.
    fn free_pending_locked(&self) {
        let mut cur = self.pending.swap(ptr::null_mut(), Ordering::Relaxed);
        while let Some(p) = NonNull::new(cur) {
            // SAFETY: pending nodes are unlinked shared nodes, valid until the free
            // queued below runs (after a grace period of `P::rcu()`); the pointer was
            // stored with the provenance of the whole subscriber.
            let n = unsafe { NodeRef::new(p) };
            cur = n.pending_next();
            self.zombies
                .store(self.zombies.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
            // SAFETY: unlinked a grace period of `inflight` ago (no invalidation walks
            // it); the free waits for one of `P::rcu()` for the other walkers.
            unsafe { n.queue_free() };
            ZOMBIES.sub();
        }
    }

    /// Unlink the zombies once the invalidations that may have started them have
    /// ended; never waits. Called after every invalidation's end while zombies exist,
    /// and by the last `put` itself.
    ///
    /// Why no zombie is left behind: `put` counts the zombie, then checks the
    /// in-flight counters (behind a full barrier); an invalidation's end increments
    /// its counter (a sequentially consistent add), then reads `zombies`. Either the
    /// put sees the exit, or the exit sees the zombie and sweeps. A sweep that finds
    /// the grace-period mutex taken asks its holder to look again (`sweep_again`).
    #[inline]
    pub(crate) fn sweep_zombies(&self) {
        // The common case, inline at every invalidation's end: no zombie.
        if self.zombies.load(Ordering::SeqCst) != 0 {
            self.sweep_zombies_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn sweep_zombies_slow(&self) {
        loop {
            if self.zombies.load(Ordering::SeqCst) == 0 {
                return;
            }
            let cookie = self.zombie_cookie.load(Ordering::Relaxed);
            match self.inflight.poll::<P>(cookie) {
                Poll::Done => {
                    let _inner = self.lock.lock();
                    // Zombies hidden, and pending nodes unlinked, after the cookie was
                    // read carry a later cookie.
                    if self.zombie_cookie.load(Ordering::Relaxed) == cookie {
                        self.free_pending_locked();
                        // The zombies unlinked now wait for the next grace period:
                        // invalidations that skipped them may still be walking them.
                        if self.unlink_zombies_locked() {
                            self.set_zombie_cookie_locked();
                        }
                    }
                }
                // Another sweep (or a grace period) holds the mutex: ask it to look
                // again, unless it has let go meanwhile (store, then load; the holder
                // unlocks, then loads `sweep_again`: one of us sees the other).
                Poll::Busy => {
                    self.sweep_again.store(true, Ordering::SeqCst);
                    crate::primitive::seqcst_rmw_then_load();
                    if !self.inflight.gp_free() {
                        return;
                    }
                }
                // An invalidation that may have started a zombie is still in flight:
                // its end sweeps, unless someone asked us to look again.
                Poll::NotYet => {
                    crate::primitive::seqcst_rmw_then_load();
                    if !self.sweep_again.swap(false, Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
    }

    /// Unlink the zombies after a full grace period of `inflight` that began after
    /// generation `upto` was read: invalidations that could see them have ended. Their
    /// frees wait on `pending` for the next grace period (the caller sweeps).
    pub(crate) fn sweep_zombies_after_gp(&self, upto: u64) {
        if self.zombies.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _inner = self.lock.lock();
        if self.unlink_zombies_locked_upto(upto) {
            self.set_zombie_cookie_locked();
        }
    }

    fn unlink_zombies_locked(&self) -> bool {
        self.unlink_zombies_locked_upto(u64::MAX)
    }

    /// Move the zombies hidden at or before `upto` from the list to `pending`; true if
    /// there was one. The caller takes a new `zombie_cookie` then.
    fn unlink_zombies_locked_upto(&self, upto: u64) -> bool {
        let mut moved = false;
        let mut cur = self.head.load(Ordering::Relaxed);
        while let Some(p) = NonNull::new(cur) {
            // SAFETY: linked nodes are valid while we hold the lock; a zombie is freed
            // only after it is unlinked here and grace periods of `inflight` and
            // `P::rcu()` passed.
            let n = unsafe { NodeRef::new(p) };
            cur = n.next.load(Ordering::Relaxed);
            if n.owner_flags() & ZOMBIE != 0 && n.hidden_at().is_some_and(|h| h <= upto) {
                n.unlink_locked(self);
                n.clear_zombie();
                self.push_pending_locked(n);
                moved = true;
            }
        }
        moved
    }

    /// A new `zombie_cookie`, after nodes were moved to `pending`. Lock held.
    pub(crate) fn set_zombie_cookie_locked(&self) {
        self.zombie_cookie
            .store(self.inflight.cookie(), Ordering::Relaxed);
    }

    /// Wait for a grace period of the invalidations in flight, then unlink the zombies
    /// it covers.
    pub(crate) fn synchronize_inflight(&self) {
        let upto = self.gen.load(Ordering::Acquire);
        self.inflight.synchronize::<P>();
        self.sweep_zombies_after_gp(upto);
        // Zombies made (or nodes made pending) during the grace period: a sweep that
        // found its mutex taken left them to us. The grace period's unlock (a
        // sequentially consistent swap) is ordered before the load of `zombies`, as
        // the sweep's store of `sweep_again` is before its load of the mutex: one of
        // us sees the other.
        crate::primitive::seqcst_rmw_then_load();
        self.sweep_zombies();
    }

    /// Walk the RCU list, calling `f` on every node. The caller holds a read-side
    /// section of `P::rcu()`, or is an invalidation inside its section of `inflight`,
    /// or holds the lock.
    #[inline]
    pub(crate) fn for_each_node(&self, mut f: impl FnMut(NodeRef<'_, P>) -> bool) {
        let mut cur = self.head.load(Ordering::Acquire);
        while let Some(p) = NonNull::new(cur) {
            // SAFETY: nodes reachable from `head` were linked with the provenance of
            // their whole subscriber and are freed only after grace periods of both
            // `P::rcu()` and `inflight` that began after their unlink; the caller is
            // inside a read-side section of one of them or holds the lock (type
            // invariant).
            let n = unsafe { NodeRef::new(p) };
            n.witness_walk();
            if !f(n) {
                return;
            }
            cur = n.next.load(Ordering::Acquire);
        }
    }

    /// The list part of `start`: call every node visible at generation `g`. The
    /// caller's in-flight section (entered before `g` was read) is the walk's read-side
    /// section: no node it can reach is freed before it exits (type invariant).
    fn hlist_start(&self, range: &Range, g: u64) -> Result<(), Error> {
        // Right around the callbacks: a validator then sees a direct edge from the map
        // to a lock a callback takes.
        let map = task::InvalidationMap::<P>::acquire();
        let _mark = task::CallbackMark::<P>::new();
        let mut failed: Option<*mut Node<P>> = None;
        self.for_each_node(|n| {
            if !n.visible(g) {
                return true;
            }
            match n.call_start(range) {
                Ok(()) => true,
                Err(_) if range.blockable => {
                    // A refusal while blockable is the subscriber's bug: report it and
                    // treat the start as done, so the subscriber gets its end.
                    P::report_bug(Bug::RefusedWhileBlockable);
                    true
                }
                Err(_) => {
                    failed = Some(n.as_ptr());
                    false
                }
            }
        });
        let Some(failed) = failed else {
            drop(map);
            return Ok(());
        };
        // C-08 unwinding: every node whose start succeeded gets its end. Those are the
        // visible nodes before the refusing one. Walking again from the head finds
        // exactly them: nodes linked since are newer than `g` and invisible, and no
        // node this invalidation started (nor the refusing one) is unlinked while it
        // is in flight (`Node` invariant).
        self.for_each_node(|n| {
            if n.as_ptr() == failed {
                return false;
            }
            if n.visible(g) {
                n.call_end(range);
            }
            true
        });
        drop(map);
        Err(Error::WouldBlock)
    }

    /// The list part of `end`, inside the same in-flight section as its start.
    fn hlist_end(&self, range: &Range, g: u64) {
        let _map = task::InvalidationMap::<P>::acquire();
        let _mark = task::CallbackMark::<P>::new();
        self.for_each_node(|n| {
            if n.visible(g) {
                n.call_end(range);
            }
            true
        });
    }
}

/// Zombies of every address space (of every platform in the image): `synchronize`
/// waits until they are unlinked and their frees queued (C-05).
pub(crate) static ZOMBIES: ZombieCount = ZombieCount(core::sync::atomic::AtomicUsize::new(0));

/// The global zombie count. Under loom it counts nothing: a static outside loom's
/// model would carry state from one execution into the next (loom replays each
/// schedule and needs every execution to start alike); the models end their
/// invalidations before `synchronize`.
pub(crate) struct ZombieCount(core::sync::atomic::AtomicUsize);

impl ZombieCount {
    pub(crate) fn add(&self) {
        #[cfg(not(loom))]
        self.0.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    }
    pub(crate) fn sub(&self) {
        #[cfg(not(loom))]
        self.0.fetch_sub(1, core::sync::atomic::Ordering::SeqCst);
    }
    pub(crate) fn is_zero(&self) -> bool {
        cfg!(loom) || self.0.load(core::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// The notifier side of one address space: what a backend embeds in its `mm_struct`
/// (Linux: `mm->notifier_subscriptions`) and calls from wherever its primary MMU
/// changes page tables.
///
/// It is one word wide. The `Subscriptions` behind it are allocated on the first
/// registration (with [`Platform::alloc`], or ahead of time with
/// [`prepare`](Self::prepare)) and published; until then an invalidation only counts
/// itself in the platform's [`unsubscribed`](Platform::unsubscribed) counters, so that
/// the first registration can wait for it (C-02: Linux gets the same from
/// `mm_take_all_locks` in `mmu_notifier_register`).
///
/// Dropping an address space tears it down ([`release`](Self::release)) if that has not
/// happened yet.
///
/// ```
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::{AddressSpace, Event, Range};
///
/// let mm = AddressSpace::<StdPlatform>::new();
/// // Nobody subscribed: a valid range only counts itself in a per-thread slot...
/// let inv = mm.invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap)).unwrap();
/// // ... the primary MMU changes its page tables and flushes its TLB here ...
/// inv.end();
/// // ... and a bad one is refused.
/// assert!(mm.invalidate_range_start(Range::new(0x2000, 0x1000, Event::Unmap)).is_err());
/// ```
pub struct AddressSpace<P: Platform> {
    subs: AtomicPtr<Subscriptions<P>>,
}

// SAFETY: all shared state behind the pointer is atomics or under locks.
unsafe impl<P: Platform> Send for AddressSpace<P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Sync for AddressSpace<P> {}

impl<P: Platform> Default for AddressSpace<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Platform> AddressSpace<P> {
    /// An address space nobody subscribes to yet (usable in a `static`).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        AddressSpace {
            subs: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// An address space nobody subscribes to yet.
    #[cfg(loom)]
    pub fn new() -> Self {
        AddressSpace {
            subs: AtomicPtr::new(ptr::null_mut()),
        }
    }

    #[inline]
    pub(crate) fn subscriptions(&self) -> Option<&Subscriptions<P>> {
        let p = self.subs.load(Ordering::Acquire);
        let p = p.map_addr(|a| a & !TORN_DOWN);
        // SAFETY: a non-null pointer was published by `subscriptions_or_create` and the
        // address space holds a reference on it until it is dropped.
        unsafe { p.as_ref() }
    }

    /// The subscriptions pointer as allocated (the provenance of the whole object,
    /// which the last reference frees through): what subscribers store as their owner,
    /// never a pointer made from a shared reference (C-22).
    pub(crate) fn subscriptions_raw(&self) -> *mut Subscriptions<P> {
        self.subs
            .load(Ordering::Acquire)
            .map_addr(|a| a & !TORN_DOWN)
    }

    /// Whether the address space has been torn down.
    pub fn is_dead(&self) -> bool {
        self.subs.load(Ordering::Acquire).addr() & TORN_DOWN != 0
    }

    /// Whether anybody ever subscribed (Linux: `mm_has_notifiers`).
    pub fn has_subscriptions(&self) -> bool {
        self.subscriptions().is_some()
    }

    /// The subscriptions, allocated and published on first use.
    pub(crate) fn subscriptions_or_create(&self) -> Result<&Subscriptions<P>, Error> {
        let cur = self.subs.load(Ordering::Acquire);
        if cur.addr() & TORN_DOWN != 0 {
            return Err(Error::Dead);
        }
        // SAFETY: see `subscriptions`.
        if let Some(s) = unsafe { cur.as_ref() } {
            return Ok(s);
        }
        let layout = Layout::new::<Subscriptions<P>>();
        let mem = P::alloc(layout)
            .ok_or(Error::NoMemory)?
            .cast::<Subscriptions<P>>();
        // SAFETY: `mem` is fresh memory of the right layout.
        unsafe { mem.as_ptr().write(Subscriptions::new()) };
        // SeqCst: the store half of the handshake with invalidations that found no
        // object (`start_unbracketed`); registrations then wait for a grace period of
        // them (`wait_unbracketed`, whose writer barrier orders this store first).
        match self.subs.compare_exchange(
            ptr::null_mut(),
            mem.as_ptr(),
            Ordering::SeqCst,
            Ordering::Acquire,
        ) {
            // INVARIANT: published with release ordering; the one reference it starts
            // with belongs to the address space.
            // SAFETY: just published, alive until the address space drops its reference.
            Ok(_) => Ok(unsafe { &*mem.as_ptr() }),
            Err(other) => {
                // SAFETY: never published: still ours alone.
                unsafe {
                    ptr::drop_in_place(mem.as_ptr());
                    P::dealloc(mem.cast(), layout);
                }
                if other.addr() & TORN_DOWN != 0 {
                    return Err(Error::Dead);
                }
                // SAFETY: published by the winner, see `subscriptions`.
                Ok(unsafe { &*other })
            }
        }
    }

    /// Mark the address space torn down; returns what it had.
    pub(crate) fn mark_torn_down(&self) -> Option<(&Subscriptions<P>, bool)> {
        let mut cur = self.subs.load(Ordering::Acquire);
        loop {
            if cur.addr() & TORN_DOWN != 0 {
                let p = cur.map_addr(|a| a & !TORN_DOWN);
                // SAFETY: see `subscriptions`.
                return unsafe { p.as_ref() }.map(|s| (s, false));
            }
            let tagged = cur.map_addr(|a| a | TORN_DOWN);
            match self
                .subs
                .compare_exchange(cur, tagged, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: see `subscriptions`.
                Ok(_) => return unsafe { cur.as_ref() }.map(|s| (s, true)),
                Err(now) => cur = now,
            }
        }
    }

    /// Called by the primary MMU **before** it clears or changes page-table entries of
    /// `range`, while the pages are still mapped and referenced (C-06, C-10).
    ///
    /// Every subscriber, and every interval subscriber overlapping the range, is told
    /// (C-11). The returned [`Invalidation`] must be ended with
    /// [`Invalidation::end`] after the entries are changed and the TLB flushed; it
    /// carries the range, so `end` gets the same range and event (C-07). Dropping it
    /// ends it too.
    ///
    /// When `range.blockable` is false a subscriber may refuse: the core then unwinds
    /// (every subscriber whose start succeeded gets its end, interval sequences are
    /// rolled forward) and returns [`Error::WouldBlock`]; the primary MMU must leave the
    /// page tables untouched and retry later from a blockable context (C-08).
    ///
    /// Bad ranges get a typed error and change nothing (C-16).
    #[inline(always)]
    pub fn invalidate_range_start(&self, range: Range) -> Result<Invalidation<'_, P>, Error> {
        validate_bounds::<P>(range.start, range.end)?;
        match self.subscriptions() {
            None => self.start_unbracketed(range),
            Some(s) => Self::start_bracketed(s, range),
        }
    }

    /// The bracketed start. Counted in flight before anything is read, so that a
    /// registration either sees this invalidation (and waits for its end) or is seen by
    /// it (C-02). With nobody to call (an empty list, no interval tree) it is done here,
    /// inline; otherwise the out-of-line part calls the subscribers and returns what
    /// `end` needs in registers, and the [`Invalidation`] is built here, in the caller's
    /// frame: built out of line, it would come back through memory, and the caller's
    /// copy of it, right after the callee's stores, would stall on store forwarding.
    #[inline(always)]
    fn start_bracketed(s: &Subscriptions<P>, range: Range) -> Result<Invalidation<'_, P>, Error> {
        if range.blockable {
            P::might_sleep();
        }
        let token = s.inflight.enter::<P>();
        // Read after `enter` (its barrier pairs with the first registration's and the
        // first insertion's grace periods): either this invalidation sees the node or
        // the tree, or the registration waits for it.
        let (gen, itree, nobody) =
            if s.head.load(Ordering::Relaxed).is_null() && !s.has_itree.load(Ordering::Relaxed) {
                // No node is visible at any generation this invalidation could read
                // now, nor the tree: its end calls nobody either (`Started::nobody`),
                // so the generation is not needed.
                task::hold::<P>();
                (0, false, true)
            } else {
                // After the list head: a node seen there is visible at this generation
                // or newer than it, as if the generation had been read first.
                let g = s.gen.load(Ordering::Acquire);
                let flags = Flags::new(&range, token, false);
                let itree = Self::start_slow(s, g, range.start, range.end, range.owner, flags)?;
                (g, itree, false)
            };
        Ok(Invalidation {
            range,
            inner: Some(Started {
                subs: s,
                gen,
                itree,
                nobody,
                token,
            }),
            unbracketed: Unbracketed::No(ReadToken::UNUSED),
            _not_send: PhantomData,
        })
    }

    /// Nobody subscribed yet. The invalidation counts itself in the platform's
    /// [`unsubscribed`](Platform::unsubscribed) counters (a read-side section of them:
    /// on the hosted platform a plain increment of the thread's own slot and a fence),
    /// then looks again: either the first registration, which publishes the object and
    /// then waits for a grace period of those counters, sees the count and waits for
    /// this invalidation's end, or this invalidation sees the object and brackets
    /// normally (store buffering: each side writes, issues its barrier, then reads the
    /// other's word).
    #[inline(always)]
    fn start_unbracketed(&self, range: Range) -> Result<Invalidation<'_, P>, Error> {
        let counts = P::unsubscribed();
        let token = counts.enter::<P>();
        if self.subs.load(Ordering::Acquire).addr() & !TORN_DOWN != 0 {
            counts.exit::<P>(token);
            let s = self.subscriptions().ok_or(Error::Dead)?;
            return Self::start_bracketed(s, range);
        }
        task::hold::<P>();
        Ok(Invalidation {
            range,
            inner: None,
            unbracketed: Unbracketed::Yes(token),
            _not_send: PhantomData,
        })
    }

    /// Wait until no invalidation that found no subscriptions object is still in flight
    /// (they bracket nothing and cannot be waited for otherwise): a grace period of the
    /// platform's [`unsubscribed`](Platform::unsubscribed) counters, once per object.
    /// Called by every registration and insertion after the object `s` exists.
    pub(crate) fn wait_unbracketed(s: &Subscriptions<P>) {
        if s.unbracketed_drained.load(Ordering::Acquire) {
            return;
        }
        // Begins with the platform's writer barrier, after the object was published:
        // every invalidation that missed it counted itself before (see
        // `start_unbracketed`) and is waited for.
        P::unsubscribed().synchronize::<P>();
        s.unbracketed_drained.store(true, Ordering::Release);
    }

    /// Create the per-address-space object now, while nothing can race it (when the
    /// address space is created, before its page tables can change), so that every
    /// invalidation takes the bracketed path from then on (the first registration still
    /// waits once for a grace period of the platform's `unsubscribed` counters, short
    /// when no invalidation is in flight). Optional: registration creates it otherwise.
    /// Never on an invalidation path (it allocates). May sleep.
    ///
    /// Errors: [`Error::Dead`], [`Error::NoMemory`].
    pub fn prepare(&self) -> Result<(), Error> {
        P::might_sleep();
        self.subscriptions_or_create().map(|_| ())
    }

    /// Call the subscribers of an invalidation counted in flight (`flags`' token,
    /// entered before generation `g` was read) of the range `flags` makes of `start`,
    /// `end` and `owner`. Returns whether the interval tree was entered (the caller's
    /// `end` owes it its end).
    #[inline(never)]
    fn start_slow(
        s: &Subscriptions<P>,
        g: u64,
        start: usize,
        end: usize,
        owner: usize,
        flags: Flags,
    ) -> Result<bool, Error> {
        let token = flags.token();
        let range = &flags.range(start, end, owner);
        // Until the start has succeeded, `guard` undoes the count if a callback panics or
        // a subscriber refuses.
        let mut guard = InFlight {
            subs: s,
            itree: false,
            token,
            armed: true,
        };
        // Read after `enter` (its barrier pairs with the first insertion's grace
        // period): either this invalidation sees the tree, or the insertion waits for it.
        if s.has_itree.load(Ordering::Relaxed) {
            guard.itree = true;
            // The interval callbacks run under the validator's invalidation map (the
            // list's take it inside their read-side section, `hlist_start`).
            let _map = task::InvalidationMap::<P>::acquire();
            if let Err(e) = crate::interval::itree_invalidate(s, range) {
                // Refused: `itree_invalidate` has ended its part already.
                guard.itree = false;
                return Err(e);
            }
        }
        if !s.head.load(Ordering::Relaxed).is_null() {
            s.hlist_start(range, g)?;
        }
        task::hold::<P>();
        guard.armed = false;
        Ok(guard.itree)
    }

    /// The 2008 single-page form: a start/end pair over the page at `addr` with event
    /// [`Event::Clear`], for a primary MMU that has already cleared the entry and
    /// flushed its TLB while still holding a reference on the page.
    pub fn invalidate_page(&self, addr: usize) -> Result<(), Error> {
        if addr % P::PAGE_SIZE != 0 {
            return Err(Error::Unaligned);
        }
        let end = addr.checked_add(P::PAGE_SIZE).ok_or(Error::Overflow)?;
        self.invalidate_range_start(Range::new(addr, end, Event::Clear))?
            .end();
        Ok(())
    }

    /// Called under the page-table lock right when the CPU TLB is flushed for
    /// `[start, end)`, for secondary MMUs that walk the CPU page tables themselves
    /// (IOMMU SVA). Never sleeps: callbacks run in a non-blocking region.
    pub fn invalidate_secondary_tlbs(&self, start: usize, end: usize) -> Result<(), Error> {
        validate_bounds::<P>(start, end)?;
        let Some(s) = self.subscriptions() else {
            return Ok(());
        };
        if s.head.load(Ordering::Relaxed).is_null() {
            return Ok(());
        }
        let _rcu = P::rcu().read_lock();
        let _mark = task::CallbackMark::<P>::new();
        P::non_block_start();
        s.for_each_node(|n| {
            if n.live() {
                n.call_secondary_tlbs(start, end);
            }
            true
        });
        P::non_block_end();
        Ok(())
    }
}

impl<P: Platform> Drop for AddressSpace<P> {
    fn drop(&mut self) {
        // Refused only from inside a callback or while this task holds an invalidation
        // (of another address space: one of this one borrows it). Teardown would wait
        // for itself; the subscribers then stay registered, holding the subscriptions
        // alive, until they unregister (and get `release` then).
        if self.release().is_err() {
            P::report_bug(crate::Bug::DropInCallback);
        }
        let p = self
            .subs
            .load(Ordering::Acquire)
            .map_addr(|a| a & !TORN_DOWN);
        if let Some(p) = NonNull::new(p) {
            // SAFETY: the address space's own reference, dropped once, here.
            unsafe { Subscriptions::put_ref(p) };
        }
    }
}

/// Proof that no registration on one address space runs while it lives: what a backend
/// holds when its invalidations already exclude registration, as Linux's do (they run
/// under `mmap_lock` or the reverse-map locks, and `mmu_notifier_register` takes every
/// one of those for writing, through `mm_take_all_locks`). With that proof an
/// invalidation of an address space nobody ever subscribed to is one load and one
/// branch, and its end nothing at all: Linux's `mm_has_notifiers`.
///
/// [`AddressSpace::invalidate_range_start`] cannot assume that, so with no
/// per-address-space object yet it counts itself where the first registration waits
/// for it (C-02). [`invalidate_range_start`](Self::invalidate_range_start) here does not:
/// a registration cannot have missed an invalidation it waits behind. Once the object
/// exists both take the same bracketed path.
///
/// Typically a backend makes one in the function that takes its own lock (the one every
/// registration on the address space holds exclusively) for reading, and keeps it next
/// to the guard; every [`Invalidation`] started through it borrows it, so none outlives
/// the lock. It is neither `Send` nor `Sync`: it stays with the thread that holds the lock
/// (whose guard is not `Send` either).
///
/// # Invariants
///
/// While a value exists, no call that adds a subscriber to `mm` ([`Subscriber::register`],
/// [`IntervalSubscriber::insert`](crate::IntervalSubscriber::insert), an
/// [`AddressSpace::get`] that registers) is running.
///
/// ```
/// use std::sync::RwLock;
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::{AddressSpace, Event, Range, RegistrationExcluded};
///
/// /// A backend's address space: `mmap` is held for reading around every change of
/// /// the page tables and for writing around every registration.
/// struct Mm {
///     mmap: RwLock<()>,
///     notifiers: AddressSpace<StdPlatform>,
/// }
///
/// let mm = Mm { mmap: RwLock::new(()), notifiers: AddressSpace::new() };
/// let _read = mm.mmap.read().unwrap();
/// // SAFETY: every registration on `mm.notifiers` holds `mm.mmap` for writing, and
/// // `_read` holds it for reading until after `excluded` is dropped.
/// let excluded = unsafe { RegistrationExcluded::new(&mm.notifiers) };
/// let inv = excluded
///     .invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap))
///     .unwrap();
/// // ... the page-table entries change, the TLB is flushed ...
/// inv.end();
/// // A bad range is refused here as on the counted path.
/// assert!(excluded.invalidate_range_start(Range::new(0x2000, 0x1000, Event::Unmap)).is_err());
/// ```
///
/// [`Subscriber::register`]: crate::Subscriber::register
pub struct RegistrationExcluded<'a, P: Platform> {
    mm: &'a AddressSpace<P>,
    _not_send: PhantomData<*mut ()>,
}

impl<'a, P: Platform> RegistrationExcluded<'a, P> {
    /// The proof for `mm`.
    ///
    /// # Safety
    ///
    /// Until the returned value is dropped, no call that adds a subscriber to `mm` runs
    /// (see the type's invariants): for example, the caller holds for reading a lock
    /// that every registration on `mm` holds for writing across its whole call.
    ///
    /// A false proof does not make the core misbehave in memory, but it lets a
    /// registration return while an invalidation it missed is still changing page
    /// tables: the new subscriber's secondary MMU may then map a page that is about to
    /// be freed (C-02), which is what this crate exists to prevent.
    #[inline(always)]
    pub unsafe fn new(mm: &'a AddressSpace<P>) -> Self {
        // INVARIANT: the caller's promise.
        RegistrationExcluded {
            mm,
            _not_send: PhantomData,
        }
    }

    /// The proof from a guard of the backend's lock, whose type promises the exclusion
    /// ([`ExcludesRegistration`]): the one `unsafe` is then the backend's `unsafe impl`,
    /// written once next to its lock, not a block at every call site. The proof borrows
    /// the guard, so it cannot outlive it.
    ///
    /// ```
    /// use std::sync::{RwLock, RwLockReadGuard};
    /// use notifier_core::std_platform::StdPlatform as P;
    /// use notifier_core::{AddressSpace, Event, ExcludesRegistration, Range, RegistrationExcluded};
    ///
    /// struct Mm {
    ///     /// Every registration on `notifiers` holds it for writing.
    ///     mmap: RwLock<()>,
    ///     notifiers: AddressSpace<P>,
    /// }
    ///
    /// /// `mm.mmap` held for reading.
    /// struct MmapRead<'a> {
    ///     _guard: RwLockReadGuard<'a, ()>,
    ///     mm: &'a Mm,
    /// }
    ///
    /// // SAFETY: every registration on `mm.notifiers` holds `mm.mmap` for writing
    /// // across its call, and an `MmapRead` holds it for reading while it lives.
    /// unsafe impl ExcludesRegistration<P> for MmapRead<'_> {
    ///     fn address_space(&self) -> &AddressSpace<P> {
    ///         &self.mm.notifiers
    ///     }
    /// }
    ///
    /// let mm = Mm { mmap: RwLock::new(()), notifiers: AddressSpace::new() };
    /// let read = MmapRead { _guard: mm.mmap.read().unwrap(), mm: &mm };
    /// let excluded = RegistrationExcluded::from_guard(&read);
    /// excluded
    ///     .invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap))
    ///     .unwrap()
    ///     .end();
    /// ```
    #[inline(always)]
    pub fn from_guard<G: ExcludesRegistration<P> + ?Sized>(guard: &'a G) -> Self {
        // SAFETY: the guard's `unsafe impl` promises that no registration on the address
        // space it returns runs while the guard lives, and the proof borrows the guard
        // (`'a`), so it lives no longer.
        unsafe { Self::new(guard.address_space()) }
    }

    /// The address space this proof is for.
    pub fn address_space(&self) -> &'a AddressSpace<P> {
        self.mm
    }

    /// [`AddressSpace::invalidate_range_start`], for a caller that excludes
    /// registration: with no per-address-space object the range is checked, one word
    /// is loaded, and the returned [`Invalidation`] has nothing to end (no call, no
    /// counter, no task state).
    /// The invalidation borrows the proof, so it ends before registration can run.
    ///
    /// Errors, callbacks, refusals and the bracketed path are those of
    /// [`AddressSpace::invalidate_range_start`].
    #[inline(always)]
    pub fn invalidate_range_start(&self, range: Range) -> Result<Invalidation<'_, P>, Error> {
        validate_bounds::<P>(range.start, range.end)?;
        if let Some(s) = self.mm.subscriptions() {
            return AddressSpace::start_bracketed(s, range);
        }
        // No registration has published the object, and none can run before this
        // invalidation ends (the type's invariant, and the borrow of `self`): no
        // subscriber can exist that should have seen it, and none can appear in time to
        // miss it, so nothing is counted (C-02 holds by exclusion).
        Ok(Invalidation {
            range,
            inner: None,
            unbracketed: Unbracketed::No(ReadToken::UNUSED),
            _not_send: PhantomData,
        })
    }
}

/// A guard of a backend's lock that keeps registration out of one address space while
/// it lives: what [`RegistrationExcluded::from_guard`] makes a proof from.
///
/// # Safety
///
/// While a value of the implementing type exists, no call that adds a subscriber to
/// the address space its [`address_space`](Self::address_space) returns
/// ([`Subscriber::register`](crate::Subscriber::register),
/// [`IntervalSubscriber::insert`](crate::IntervalSubscriber::insert), an
/// [`AddressSpace::get`] that registers) runs, and `address_space` returns that same
/// address space every time. Typically the type holds a lock for reading that every
/// registration on that address space holds for writing across its whole call.
pub unsafe trait ExcludesRegistration<P: Platform> {
    /// The address space whose registrations this guard excludes.
    fn address_space(&self) -> &AddressSpace<P>;
}

/// Whether an [`Invalidation`] counted itself in the platform's `unsubscribed`
/// counters. Not an `Option<ReadToken>`: both variants carry a token (`UNUSED` when
/// not counted), so that every byte of an invalidation with nothing to end is defined
/// and the compiler moves it in whole words; around an undefined word it copies in
/// unaligned pieces, and a piece that straddles two earlier stores waits for both to
/// reach the cache (a failed store forward, several nanoseconds per invalidation).
#[derive(Clone, Copy)]
enum Unbracketed {
    /// Not counted.
    No(#[expect(dead_code, reason = "never read: it only defines the word")] ReadToken),
    /// Counted, in the section of this token.
    Yes(ReadToken),
}

pub(crate) struct Started<'a, P: Platform> {
    subs: &'a Subscriptions<P>,
    /// The generation the start walked at (0 when it called nobody).
    gen: u64,
    /// Whether the start entered the interval tree.
    itree: bool,
    /// Whether the start found no node and no tree: then its end calls nobody either,
    /// without looking (a node linked since is newer than the start, a tree inserted
    /// since was not entered).
    nobody: bool,
    token: ReadToken,
}

// Not derived: a derive would ask `P: Copy`.
impl<P: Platform> Clone for Started<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform> Copy for Started<'_, P> {}

/// A range's event and `blockable`, and an invalidation's read token and tree flag, in
/// one word: with the range's three words, what the out-of-line parts of a start and
/// an end need, passed in registers. A [`Range`] passed to them (by value or by
/// reference) has to be in memory, and the compiler wrote it there on every path,
/// those that call nobody included; for a caller that built the range field by field,
/// copying it whole then also stalled on store forwarding (one 16-byte load over three
/// narrower stores). Measured (criterion, the old and new code alternated), with the
/// range built from two addresses as a kernel's caller builds it: a start + end with
/// the object and no subscriber 8.0-8.2 → 3.3 ns, with no object 8.1-8.4 → 2.8 ns,
/// through a `RegistrationExcluded` proof 1.2-1.4 → 0.85-0.9 ns. (Passing a copy of the
/// range made on the calling path only was tried too: as fast on those paths, and one
/// subscriber 12.7 → 14.4-15.0 ns.)
#[derive(Clone, Copy)]
struct Flags(usize);

impl Flags {
    // The event in the low byte (`Event::from_low_bits` reads its three low bits),
    // `blockable` in the next bit, then the token's bit and the tree flag.
    const BLOCKABLE_SHIFT: u32 = 8;
    const BLOCKABLE: usize = 1 << Self::BLOCKABLE_SHIFT;
    const TOKEN_SHIFT: u32 = 9;
    const ITREE_SHIFT: u32 = 10;
    const ITREE: usize = 1 << Self::ITREE_SHIFT;

    #[inline(always)]
    fn new(range: &Range, token: ReadToken, itree: bool) -> Self {
        Flags(
            range.event as usize
                | usize::from(range.blockable) << Self::BLOCKABLE_SHIFT
                | token.to_bit() << Self::TOKEN_SHIFT
                | usize::from(itree) << Self::ITREE_SHIFT,
        )
    }

    #[inline(always)]
    fn token(self) -> ReadToken {
        ReadToken::from_bit(self.0 >> Self::TOKEN_SHIFT)
    }

    #[inline(always)]
    fn itree(self) -> bool {
        self.0 & Self::ITREE != 0
    }

    /// The range these flags were made from, given its other fields.
    #[inline(always)]
    fn range(self, start: usize, end: usize, owner: usize) -> Range {
        Range {
            start,
            end,
            event: crate::range::Event::from_low_bits(self.0),
            blockable: self.0 & Self::BLOCKABLE != 0,
            owner,
        }
    }
}

/// An invalidation counted in flight whose start has not completed: if a callback
/// panics, unwinding ends what was begun, so that registrations, `read_begin` and
/// deferred interval changes never wait for it forever (C-16).
struct InFlight<'a, P: Platform> {
    subs: &'a Subscriptions<P>,
    itree: bool,
    token: ReadToken,
    /// Cleared when the start succeeded and `Started` owns the count.
    armed: bool,
}

impl<P: Platform> Drop for InFlight<'_, P> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.itree {
            crate::interval::itree_inv_end(self.subs);
        }
        // Exit, then read `zombies`: the ending half of the sweep's handshake.
        self.subs.inflight.exit_then_load::<P>(self.token);
        self.subs.sweep_zombies();
    }
}

/// An invalidation between its start and its end (returned by
/// [`AddressSpace::invalidate_range_start`]).
///
/// Holding it keeps the range "in flight": interval subscribers' `read_begin` waits,
/// registrations wait. End it with [`end`](Self::end) once the page-table entries are
/// changed and the TLB is flushed; pages may be freed after that (C-10). Dropping it
/// ends it as well.
///
/// It is neither `Send` nor `Sync`, on purpose: the task that changes the page tables
/// starts and ends the invalidation (as Linux brackets a change within one task), and
/// the core counts it as held by that task, so that the task cannot call something
/// that would wait for it (registration, teardown: [`Error::InvalidationHeld`]). A
/// backend that parks it between two hooks of its kernel ends it from the task that
/// started it.
///
/// Leaking it (`mem::forget`) is safe but leaves the range in flight for ever: the
/// leaking task gets [`Error::InvalidationHeld`] from calls that would wait for it, and
/// other tasks wait for it as for any invalidation still changing page tables.
///
/// ```compile_fail
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::{AddressSpace, Event, Range};
/// let mm = AddressSpace::<StdPlatform>::new();
/// let inv = mm.invalidate_range_start(Range::new(0, 4096, Event::Unmap)).unwrap();
/// std::thread::scope(|s| { s.spawn(move || inv.end()); }); // not Send
/// ```
#[must_use = "an invalidation must be ended after the page tables are changed"]
pub struct Invalidation<'a, P: Platform> {
    range: Range,
    inner: Option<Started<'a, P>>,
    /// Whether it is counted in the platform's `unsubscribed` counters (nobody had
    /// subscribed).
    unbracketed: Unbracketed,
    _not_send: PhantomData<*mut ()>,
}

impl<P: Platform> Invalidation<'_, P> {
    /// The range being invalidated.
    pub fn range(&self) -> &Range {
        &self.range
    }

    /// `invalidate_range_end`: tell every subscriber that saw the start that the
    /// entries are changed (C-07).
    #[inline(always)]
    pub fn end(self) {
        // The same as dropping it, without the drop glue: ending inline does not then
        // depend on whether the compiler inlines `drop_in_place::<Invalidation>`.
        let this = ManuallyDrop::new(self);
        Self::finish(this.range, this.inner, this.unbracketed);
    }

    /// What `end` and `Drop` do. With nobody to call (an empty list, no tree) the end
    /// is inline: the task's held count, the in-flight exit, the zombie check.
    #[inline(always)]
    fn finish(range: Range, inner: Option<Started<'_, P>>, unbracketed: Unbracketed) {
        if let Some(st) = inner {
            let s = st.subs;
            if st.nobody || (!st.itree && s.head.load(Ordering::Relaxed).is_null()) {
                // What `end_slow` does with nothing to call: the start called nobody,
                // or an empty list now means no node visible at this invalidation's
                // generation (a node linked since is newer), and the tree's part was
                // never entered.
                if range.blockable {
                    P::might_sleep();
                }
                task::unhold::<P>();
                s.inflight.exit_then_load::<P>(st.token);
                s.sweep_zombies();
                return;
            }
            // Field by field, in registers (`Flags`): the invalidation's address never
            // escapes and its range is never copied whole, so on the paths that end
            // nothing the compiler keeps it in registers instead of writing it to the
            // stack.
            let flags = Flags::new(&range, st.token, st.itree);
            Self::end_slow(st.subs, st.gen, range.start, range.end, range.owner, flags);
        } else if let Unbracketed::Yes(t) = unbracketed {
            P::unsubscribed().exit::<P>(t);
            task::unhold::<P>();
        }
    }
}

impl<P: Platform> Drop for Invalidation<'_, P> {
    /// Ends it as [`end`](Self::end) does (the same inline part, the same calls).
    #[inline(always)]
    fn drop(&mut self) {
        Self::finish(self.range, self.inner, self.unbracketed);
    }
}

impl<P: Platform> Invalidation<'_, P> {
    #[inline(never)]
    fn end_slow(
        s: &Subscriptions<P>,
        gen: u64,
        start: usize,
        end: usize,
        owner: usize,
        flags: Flags,
    ) {
        let (token, itree) = (flags.token(), flags.itree());
        let range = flags.range(start, end, owner);
        if range.blockable {
            P::might_sleep();
        }
        // Ends the in-flight count and the tree's part even if an `end` callback
        // panics.
        let _guard = InFlight {
            subs: s,
            itree,
            token,
            armed: true,
        };
        task::unhold::<P>();
        if !s.head.load(Ordering::Relaxed).is_null() {
            s.hlist_end(&range, gen);
        }
    }
}
