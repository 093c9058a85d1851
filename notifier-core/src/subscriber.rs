//! List subscribers (Linux: `struct mmu_notifier`): the [`SubscriberOps`] callback
//! table, the pinned intrusive [`Subscriber`] node, `register`/`unregister`, and the
//! shared, reference-counted form behind `get`/`put` ([`Shared`]).

use core::any::TypeId;
use core::marker::{PhantomData, PhantomPinned};
use core::ops::Deref;
use core::pin::Pin;
use core::ptr::{self, NonNull};

use crate::primitive::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::srcu::{RcuHead, SleepableRcu};
use crate::subscriptions::Subscriptions;
use crate::task;
use crate::{AddressSpace, Error, Platform, Range, WouldBlock};

/// The callbacks of a secondary MMU (Linux: `struct mmu_notifier_ops`). Every method
/// has a default that does nothing, so a subscriber implements only what it caches.
///
/// Callbacks run inside a read-side section of the platform's sleepable RCU; those that
/// get a non-blockable range, and the ageing and `invalidate_secondary_tlbs` callbacks,
/// run in a region where sleeping is a bug ([`Platform::non_block_start`]).
pub trait SubscriberOps: Sync {
    /// The address space is torn down, or the subscriber unregisters, whichever comes
    /// first: called exactly once (C-04). Drop every translation.
    ///
    /// Which callbacks can still come: `release` runs while the subscriber is still
    /// visible, so that it never holds translations without being told of changes
    /// (C-03). Invalidations, secondary-TLB flushes and ageing calls that begin before
    /// `unregister` (or teardown) hides the subscriber, right after `release` returns,
    /// still call it, concurrently with `release` or after it; every such start gets
    /// its end. None begins once the subscriber is hidden, and none runs any more once
    /// `unregister` (or teardown) has returned.
    fn release(&self) {}

    /// Entries of `range` are about to change: zap secondary translations of it and
    /// establish none until the matching end (C-09). May refuse with [`WouldBlock`]
    /// only if `range.blockable` is false (C-08).
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        Ok(())
    }

    /// The entries of `range` have changed and the CPU TLB is flushed; faults may
    /// establish translations again (after re-reading the primary entries).
    fn invalidate_range_end(&self, _range: &Range) {}

    /// The CPU TLB is being flushed for `[start, end)`, under the page-table lock.
    /// Never sleep.
    fn invalidate_secondary_tlbs(&self, _start: usize, _end: usize) {}

    /// Ageing: clear the accessed bits of `[start, end)` and flush; true if any was set.
    fn clear_flush_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    /// Ageing: clear the accessed bits of `[start, end)` without flushing.
    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    /// Ageing: whether the page at `addr` was accessed (bits unchanged).
    fn test_young(&self, _addr: usize) -> bool {
        false
    }
}

/// Type-erased callbacks of one node type.
pub(crate) struct VTable<P: Platform> {
    release: unsafe fn(NonNull<Node<P>>),
    start: unsafe fn(NonNull<Node<P>>, &Range) -> Result<(), WouldBlock>,
    end: unsafe fn(NonNull<Node<P>>, &Range),
    secondary_tlbs: unsafe fn(NonNull<Node<P>>, usize, usize),
    clear_flush_young: unsafe fn(NonNull<Node<P>>, usize, usize) -> bool,
    clear_young: unsafe fn(NonNull<Node<P>>, usize, usize) -> bool,
    test_young: unsafe fn(NonNull<Node<P>>, usize) -> bool,
    /// For shared subscribers: the kind `get` looks for, and how to free one.
    kind: Option<fn() -> TypeId>,
    free: Option<unsafe fn(NonNull<Node<P>>)>,
}

/// Tag bits of [`Node::owner`] (the subscriptions are aligned to a cache line).
const RELEASED: usize = 1;
const BUSY: usize = 2;
/// The last `put` hid the node while invalidations were in flight: it stays linked
/// until they have ended (so that they deliver their `end`), then a sweep unlinks it.
pub(crate) const ZOMBIE: usize = 4;
const FLAGS: usize = RELEASED | BUSY | ZOMBIE;

/// [`Node::state`]: two bits of kind, 62 bits of generation. Generations are 62-bit and
/// only grow, so they never wrap in practice (2^62 registrations), and they are
/// compared only while a node is being registered or unregistered: a registered node
/// is `LIVE`, visible to every invalidation whatever its generation (C-01, C-22).
const KIND_SHIFT: u32 = 62;
const GEN_MASK: u64 = (1 << KIND_SHIFT) - 1;
const UNLINKED: u64 = 0;
/// Linked at generation `g`, waiting for the invalidations that started before `g`:
/// visible to invalidations that started at `g` or later.
const REGISTERING: u64 = 1 << KIND_SHIFT;
/// Visible to every invalidation.
const LIVE: u64 = 2 << KIND_SHIFT;
/// Hidden at generation `g` (unregister, last put, teardown): visible only to
/// invalidations that started before `g`, which still deliver their ends.
const HIDDEN: u64 = 3 << KIND_SHIFT;
const KIND_MASK: u64 = 3 << KIND_SHIFT;

/// The part of a subscriber the core owns: 40 bytes on 64-bit targets (the back link
/// makes unregistering O(1); Linux's `struct mmu_notifier` is larger).
///
/// # Invariants
///
/// - `owner` is null while unregistered; otherwise it points to the [`Subscriptions`]
///   the node holds a reference on, tagged with `RELEASED` once `release` has been
///   claimed (it is never called twice), `BUSY` while a registration or unregistration
///   of this node is in progress, and `ZOMBIE` while a hidden shared node waits to be
///   swept.
/// - `state` is `UNLINKED` while the node is not on a list, else `REGISTERING(g)`,
///   `LIVE` or `HIDDEN(g)`; it changes only under the subscriptions lock, except
///   `REGISTERING -> LIVE`, a compare-and-swap by the registering thread.
/// - `next` and `pprev` are written under the subscriptions lock; readers follow `next`
///   under RCU. While the node is linked, `*pprev` is this node.
/// - A node that an invalidation started stays on the list until that invalidation has
///   ended: unregister, teardown and the zombie sweep unlink only after a grace period
///   of `Subscriptions::inflight` that began after the node was hidden.
/// - Its memory is given back (unregister returns, a shared node's free runs) only
///   after grace periods of both `Subscriptions::inflight` and `P::rcu()` that began
///   after it was unlinked: every walker that may still be on it has left.
#[repr(C)]
pub(crate) struct Node<P: Platform> {
    pub(crate) next: AtomicPtr<Node<P>>,
    /// The link that points at this node (the list head or the previous node's
    /// `next`): unlinking is O(1) (Linux: `hlist_node::pprev`). Once a shared node is
    /// unlinked and waits for its free, the next node on `Subscriptions::pending`.
    pprev: AtomicPtr<AtomicPtr<Node<P>>>,
    vtable: &'static VTable<P>,
    state: AtomicU64,
    owner: AtomicPtr<Subscriptions<P>>,
    /// Under loom only: the node's memory as the model checker sees it. Every walk
    /// reads it and the moment the memory is given back writes it, so loom reports a
    /// walk not ordered before that moment (the type invariant above, checked).
    #[cfg(loom)]
    witness: loom::cell::UnsafeCell<()>,
}

/// The address of a link, as a node's `pprev` stores it.
fn link_of<P: Platform>(l: &AtomicPtr<Node<P>>) -> *mut AtomicPtr<Node<P>> {
    l as *const AtomicPtr<Node<P>> as *mut AtomicPtr<Node<P>>
}

impl<P: Platform> Node<P> {
    fn new(vtable: &'static VTable<P>) -> Self {
        Node {
            next: AtomicPtr::new(ptr::null_mut()),
            pprev: AtomicPtr::new(ptr::null_mut()),
            vtable,
            state: AtomicU64::new(UNLINKED),
            owner: AtomicPtr::new(ptr::null_mut()),
            #[cfg(loom)]
            witness: loom::cell::UnsafeCell::new(()),
        }
    }

    /// A walker reads the node (checked under loom against [`witness_give_back`]).
    ///
    /// [`witness_give_back`]: Self::witness_give_back
    #[inline(always)]
    pub(crate) fn witness_walk(&self) {
        #[cfg(loom)]
        self.witness.with(|_| ());
    }

    /// The node's memory goes back to its owner now: no walker may be on it.
    #[inline(always)]
    pub(crate) fn witness_give_back(&self) {
        #[cfg(loom)]
        self.witness.with_mut(|_| ());
    }

    /// The next node on `Subscriptions::pending` (this node is on it).
    pub(crate) fn pending_next(&self) -> *mut Node<P> {
        self.pprev.load(Ordering::Relaxed).cast()
    }

    /// Chain this unlinked node before `next` on `Subscriptions::pending`. `next` is a
    /// whole-node pointer (it keeps its provenance through the cast back).
    pub(crate) fn set_pending_next(&self, next: *mut Node<P>) {
        self.pprev.store(next.cast(), Ordering::Relaxed);
    }

    /// Whether an invalidation that started at generation `g` calls this node. The
    /// answer is the same at its start and at its end (C-02): it depends only on `g`
    /// and on transitions that wait for that invalidation before they matter.
    #[inline]
    pub(crate) fn visible(&self, g: u64) -> bool {
        let st = self.state.load(Ordering::Relaxed);
        let kind = st & KIND_MASK;
        // The common case first, as a compare and a branch: a `match` on the kind
        // compiles to a jump table, a load and an indirect jump per node on the walk's
        // critical path.
        if kind == LIVE {
            return true;
        }
        let gen = st & GEN_MASK;
        (kind == REGISTERING && g >= gen) || (kind == HIDDEN && g < gen)
    }

    /// Whether ageing and `invalidate_secondary_tlbs` call the node: linked and not
    /// hidden. Also while and after `release` runs, until unregister or teardown hides
    /// it: a subscriber is told of every change until it has dropped its translations
    /// (C-03), and may be told a little longer (documented on `release`).
    #[inline]
    pub(crate) fn live(&self) -> bool {
        let kind = self.state.load(Ordering::Relaxed) & KIND_MASK;
        kind == LIVE || kind == REGISTERING
    }

    /// Hide the node from invalidations that start from now on. Lock held.
    pub(crate) fn hide_locked(&self, subs: &Subscriptions<P>) -> bool {
        let st = self.state.load(Ordering::Relaxed);
        let kind = st & KIND_MASK;
        if kind != LIVE && kind != REGISTERING {
            return false;
        }
        let gen = subs.next_gen();
        self.state.store(HIDDEN | gen, Ordering::Relaxed);
        subs.publish_gen(gen);
        true
    }

    /// A node being registered becomes `LIVE`. Only after a grace period of in-flight
    /// invalidations that began after its generation was published: the registering
    /// thread's own, or teardown's.
    pub(crate) fn settle_registering(&self) {
        let st = self.state.load(Ordering::Relaxed);
        if st & KIND_MASK == REGISTERING {
            let _ = self
                .state
                .compare_exchange(st, LIVE, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The node is off the list (teardown unlinks every node at once). Lock held.
    pub(crate) fn mark_unlinked(&self) {
        self.state.store(UNLINKED, Ordering::Relaxed);
    }

    /// Clear the `ZOMBIE` tag; whether it was set. Lock held.
    pub(crate) fn clear_zombie(&self) -> bool {
        let cur = self.owner.load(Ordering::Relaxed);
        if cur.addr() & ZOMBIE == 0 {
            return false;
        }
        self.clear_flags(ZOMBIE);
        true
    }

    /// The generation at which the node was hidden, if it is.
    pub(crate) fn hidden_at(&self) -> Option<u64> {
        let st = self.state.load(Ordering::Relaxed);
        (st & KIND_MASK == HIDDEN).then_some(st & GEN_MASK)
    }

    pub(crate) fn owner_flags(&self) -> usize {
        self.owner.load(Ordering::Relaxed).addr() & FLAGS
    }

    /// Claim the one call of `release` (C-04). True for exactly one caller.
    pub(crate) fn claim_release(&self) -> bool {
        let mut cur = self.owner.load(Ordering::Acquire);
        loop {
            if cur.addr() & RELEASED != 0 || cur.addr() & !FLAGS == 0 {
                return false;
            }
            match self.owner.compare_exchange(
                cur,
                cur.map_addr(|a| a | RELEASED),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn set_flags(&self, flags: usize) -> *mut Subscriptions<P> {
        let mut cur = self.owner.load(Ordering::Acquire);
        loop {
            match self.owner.compare_exchange(
                cur,
                cur.map_addr(|a| a | flags),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return cur,
                Err(now) => cur = now,
            }
        }
    }

    fn clear_flags(&self, flags: usize) {
        let mut cur = self.owner.load(Ordering::Acquire);
        loop {
            match self.owner.compare_exchange(
                cur,
                cur.map_addr(|a| a & !flags),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    fn subscriptions_ptr(&self) -> *mut Subscriptions<P> {
        self.owner.load(Ordering::Acquire).map_addr(|a| a & !FLAGS)
    }

    /// Claim the node for a registration (C-01: not twice).
    fn claim_for_register(&self) -> Result<(), Error> {
        self.owner
            .compare_exchange(
                ptr::null_mut(),
                ptr::null_mut::<Subscriptions<P>>().map_addr(|_| BUSY),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|_| Error::AlreadyRegistered)
    }

    /// Link the node on `mm` and wait out the invalidations already in flight.
    /// The node has been claimed with `claim_for_register`.
    fn register_on(this: NodeRef<'_, P>, mm: &AddressSpace<P>) -> Result<(), Error> {
        let me = this.as_ptr();
        let this = &*this;
        let fail = |e| {
            this.owner.store(ptr::null_mut(), Ordering::Release);
            Err(e)
        };
        // C-16: registration waits for invalidations in flight; from inside a callback
        // or while holding an invalidation that wait could be for the caller itself.
        if let Err(e) = task::may_wait::<P>() {
            return fail(e);
        }
        let subs = match mm.subscriptions_or_create() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let gen = {
            let inner = subs.lock.lock();
            if inner.dead {
                drop(inner);
                return fail(Error::Dead);
            }
            subs.get_ref();
            this.owner.store(
                mm.subscriptions_raw().map_addr(|a| a | BUSY),
                Ordering::Release,
            );
            let gen = subs.next_gen();
            this.state.store(REGISTERING | gen, Ordering::Relaxed);
            let old = subs.head.load(Ordering::Relaxed);
            this.next.store(old, Ordering::Relaxed);
            this.pprev.store(link_of(&subs.head), Ordering::Relaxed);
            // SAFETY: linked nodes stay valid while linked; we hold the lock.
            if let Some(o) = unsafe { old.as_ref() } {
                o.pprev.store(link_of(&this.next), Ordering::Relaxed);
            }
            subs.head.store(me, Ordering::Release);
            // INVARIANT: the generation is published after the node it names is linked:
            // an invalidation that reads it finds the node; one that reads an older
            // one skips the node at its start and at its end.
            subs.publish_gen(gen);
            gen
        };
        // C-02: invalidations that started before the node became visible skip it; wait
        // until they have ended, so that a translation it establishes from now on is
        // never one such an invalidation is about to remove.
        task::annotate_wait::<P>();
        subs.synchronize_inflight();
        // And those that started before the subscriptions object existed.
        AddressSpace::wait_unbracketed(subs);
        // Every invalidation still in flight started at `gen` or later: the node is
        // visible to all of them, as it is to every later one. Teardown may have hidden
        // it meanwhile; then it stays hidden.
        let _ = this.state.compare_exchange(
            REGISTERING | gen,
            LIVE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        // (`settle_registering` without the lock is fine for this one CAS: it fails if
        // teardown settled or hid the node meanwhile.)
        this.clear_flags(BUSY);
        Ok(())
    }

    /// Claim the node for unregistration; returns its subscriptions.
    fn claim_for_unregister(&self) -> Result<NonNull<Subscriptions<P>>, Error> {
        let mut cur = self.owner.load(Ordering::Acquire);
        loop {
            if cur.addr() & !FLAGS == 0 || cur.addr() & BUSY != 0 {
                return Err(Error::NotRegistered);
            }
            match self.owner.compare_exchange(
                cur,
                cur.map_addr(|a| a | BUSY),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if let Err(e) = task::may_wait::<P>() {
            self.clear_flags(BUSY);
            return Err(e);
        }
        // Non-null: checked above. The node holds a reference on it (invariant).
        NonNull::new(cur.map_addr(|a| a & !FLAGS)).ok_or(Error::NotRegistered)
    }

    /// Unlink `self` from the list if it is there: O(1), through the back link
    /// (C-23: unregistering n subscribers costs O(n), not O(n^2) under the lock).
    /// Caller holds the lock.
    pub(crate) fn unlink_locked(&self, _subs: &Subscriptions<P>) -> bool {
        if self.state.load(Ordering::Relaxed) == UNLINKED {
            return false;
        }
        let pprev = self.pprev.load(Ordering::Relaxed);
        let next = self.next.load(Ordering::Relaxed);
        // SAFETY: a linked node's `pprev` points at the link that points at it: the
        // list head or the `next` of a linked node, valid while we hold the lock.
        // Readers already past that link keep following `self.next`, which stays
        // intact until the grace period the caller waits for.
        unsafe { (*pprev).store(next, Ordering::Release) };
        // SAFETY: linked nodes stay valid while linked; we hold the lock.
        if let Some(n) = unsafe { next.as_ref() } {
            n.pprev.store(pprev, Ordering::Relaxed);
        }
        self.state.store(UNLINKED, Ordering::Relaxed);
        true
    }

    /// The unregistration barrier (C-03) after a successful claim.
    fn unregister_claimed(this: NodeRef<'_, P>, subs_ptr: NonNull<Subscriptions<P>>) {
        P::might_sleep();
        // SAFETY: the node's reference keeps the subscriptions alive until `put_ref`
        // below; `subs` is not used after it.
        let subs = unsafe { subs_ptr.as_ref() };
        // 1. Release first, while the node is still visible to every invalidation,
        //    secondary-TLB flush and ageing call (C-03): until `release` has dropped
        //    the subscriber's translations, it must keep hearing about changes. Exactly
        //    once, unless teardown already did (C-04); inside a read section, so that a
        //    concurrent teardown waits for it to return.
        {
            let _rcu = P::rcu().read_lock();
            if this.claim_release() {
                let _mark = task::CallbackMark::<P>::new();
                this.call_release();
            }
        }
        // 2. New invalidations stop calling the node (teardown may have hidden it
        //    already).
        let linked = {
            let _inner = subs.lock.lock();
            this.hide_locked(subs);
            this.state.load(Ordering::Relaxed) != UNLINKED
        };
        // 3. Invalidations that did call its start deliver their end first (C-02),
        //    whoever hid it.
        if linked {
            task::annotate_wait::<P>();
            subs.synchronize_inflight();
        }
        // 4. Unlink, 5. wait until no callback runs any more (C-03) and no walker is
        //    on the node: the other walkers' sections of `P::rcu()`, and the
        //    invalidations', whose in-flight section is their read-side section (they
        //    may have reached the node after it was hidden, by whoever unlinked it).
        {
            let _inner = subs.lock.lock();
            this.unlink_locked(subs);
        }
        P::rcu().synchronize();
        subs.synchronize_inflight();
        this.owner.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: the reference taken at registration, dropped once, through the
        // pointer loaded from `owner`.
        unsafe { Subscriptions::put_ref(subs_ptr) };
        this.witness_give_back();
    }
}

/// A node reached through the list: the pointer keeps the provenance of the whole
/// subscriber (not just of its node field), which the callbacks need to reach `T`.
///
/// # Invariants
///
/// `ptr` points to a live node embedded at offset 0 of the type its vtable was built
/// for, and stays valid for `'a` (RCU read side, or the subscriptions lock, or the
/// node's own registration).
pub(crate) struct NodeRef<'a, P: Platform> {
    ptr: NonNull<Node<P>>,
    _l: PhantomData<&'a Node<P>>,
}

impl<P: Platform> Clone for NodeRef<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform> Copy for NodeRef<'_, P> {}

impl<P: Platform> Deref for NodeRef<'_, P> {
    type Target = Node<P>;
    fn deref(&self) -> &Node<P> {
        // SAFETY: valid for `'a` (type invariant).
        unsafe { self.ptr.as_ref() }
    }
}

impl<'a, P: Platform> NodeRef<'a, P> {
    /// # Safety
    ///
    /// `ptr` satisfies the type invariant for `'a`.
    pub(crate) unsafe fn new(ptr: NonNull<Node<P>>) -> Self {
        NodeRef {
            ptr,
            _l: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut Node<P> {
        self.ptr.as_ptr()
    }

    // The callbacks. SAFETY of every call below: the vtable was built for the concrete
    // type that embeds this node at offset 0 (`Subscriber::VTABLE`), and the node is
    // reachable (registered, or being unregistered by a caller that waits for us).

    #[inline]
    pub(crate) fn call_start(&self, range: &Range) -> Result<(), WouldBlock> {
        if !range.blockable {
            P::non_block_start();
        }
        // SAFETY: see above.
        let r = unsafe { (self.vtable.start)(self.ptr, range) };
        if !range.blockable {
            P::non_block_end();
        }
        r
    }

    #[inline]
    pub(crate) fn call_end(&self, range: &Range) {
        if !range.blockable {
            P::non_block_start();
        }
        // SAFETY: see above.
        unsafe { (self.vtable.end)(self.ptr, range) };
        if !range.blockable {
            P::non_block_end();
        }
    }

    pub(crate) fn call_release(&self) {
        // SAFETY: see above.
        unsafe { (self.vtable.release)(self.ptr) }
    }

    pub(crate) fn call_secondary_tlbs(&self, start: usize, end: usize) {
        // SAFETY: see above.
        unsafe { (self.vtable.secondary_tlbs)(self.ptr, start, end) }
    }

    pub(crate) fn call_clear_flush_young(&self, start: usize, end: usize) -> bool {
        // SAFETY: see above.
        unsafe { (self.vtable.clear_flush_young)(self.ptr, start, end) }
    }

    pub(crate) fn call_clear_young(&self, start: usize, end: usize) -> bool {
        // SAFETY: see above.
        unsafe { (self.vtable.clear_young)(self.ptr, start, end) }
    }

    pub(crate) fn call_test_young(&self, addr: usize) -> bool {
        // SAFETY: see above.
        unsafe { (self.vtable.test_young)(self.ptr, addr) }
    }

    /// Queue the deferred free of a shared subscriber whose last user is gone.
    ///
    /// # Safety
    ///
    /// The node is unlinked and is a shared subscriber's; its free is queued once.
    pub(crate) unsafe fn queue_free(&self) {
        if let Some(free) = self.vtable.free {
            // SAFETY: the vtable's `free` belongs to this node's type; the pointer has
            // the provenance of the whole shared subscriber (type invariant).
            unsafe { free(self.ptr) };
        }
    }
}

/// A secondary MMU's subscription to one address space: your callbacks `T` with the
/// node the core links (Linux: `struct mmu_notifier` embedded in the driver's
/// structure). Must be pinned while registered; dropping it unregisters it.
///
/// Registration allocates nothing: the node is intrusive.
///
/// ```
/// use core::pin::pin;
/// use core::sync::atomic::{AtomicUsize, Ordering};
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::{AddressSpace, Event, Range, Subscriber, SubscriberOps, WouldBlock};
///
/// #[derive(Default)]
/// struct Counter { starts: AtomicUsize }
/// impl SubscriberOps for Counter {
///     fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
///         self.starts.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let mm = AddressSpace::<StdPlatform>::new();
/// let sub = pin!(Subscriber::<_, StdPlatform>::new(Counter::default()));
/// sub.as_ref().register(&mm).unwrap();
/// mm.invalidate_range_start(Range::new(0, 4096, Event::Unmap)).unwrap().end();
/// assert_eq!(sub.starts.load(Ordering::Relaxed), 1);
/// sub.as_ref().unregister().unwrap(); // a barrier: no callback runs after this
/// ```
#[repr(C)]
pub struct Subscriber<T: SubscriberOps, P: Platform> {
    node: Node<P>,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: the node is atomics; `T: SubscriberOps` is `Sync`, and callbacks reach `T`
// from any thread through `&T` only.
unsafe impl<T: SubscriberOps + Send, P: Platform> Send for Subscriber<T, P> {}
// SAFETY: as above.
unsafe impl<T: SubscriberOps, P: Platform> Sync for Subscriber<T, P> {}

impl<T: SubscriberOps, P: Platform> Subscriber<T, P> {
    const VTABLE: VTable<P> = VTable {
        release: Self::v_release,
        start: Self::v_start,
        end: Self::v_end,
        secondary_tlbs: Self::v_tlbs,
        clear_flush_young: Self::v_cfy,
        clear_young: Self::v_cy,
        test_young: Self::v_ty,
        kind: None,
        free: None,
    };

    /// An unregistered subscriber with callbacks `ops`.
    pub fn new(ops: T) -> Self {
        Self::with_vtable(ops, &Self::VTABLE)
    }

    fn with_vtable(ops: T, vtable: &'static VTable<P>) -> Self {
        Subscriber {
            node: Node::new(vtable),
            ops,
            _pin: PhantomPinned,
        }
    }

    /// The node, with the provenance of the whole subscriber.
    fn node_ref(&self) -> NodeRef<'_, P> {
        // SAFETY: the node sits at offset 0 (`repr(C)`) of `self`, which its vtable was
        // built for, and lives as long as the borrow.
        unsafe { NodeRef::new(NonNull::from(self).cast()) }
    }

    /// # Safety
    ///
    /// `n` points to the node of a live `Subscriber<T, P>` with the provenance of the
    /// whole subscriber.
    unsafe fn ops_of<'a>(n: NonNull<Node<P>>) -> &'a T {
        // SAFETY: caller's contract; the node sits at offset 0 (`repr(C)`).
        unsafe { &(*n.cast::<Self>().as_ptr()).ops }
    }
    unsafe fn v_release(n: NonNull<Node<P>>) {
        // SAFETY: the vtable is only installed in nodes of `Self`.
        unsafe { Self::ops_of(n) }.release()
    }
    unsafe fn v_start(n: NonNull<Node<P>>, r: &Range) -> Result<(), WouldBlock> {
        // SAFETY: as in `v_release`.
        unsafe { Self::ops_of(n) }.invalidate_range_start(r)
    }
    unsafe fn v_end(n: NonNull<Node<P>>, r: &Range) {
        // SAFETY: as in `v_release`.
        unsafe { Self::ops_of(n) }.invalidate_range_end(r)
    }
    unsafe fn v_tlbs(n: NonNull<Node<P>>, s: usize, e: usize) {
        // SAFETY: as in `v_release`.
        unsafe { Self::ops_of(n) }.invalidate_secondary_tlbs(s, e)
    }
    unsafe fn v_cfy(n: NonNull<Node<P>>, s: usize, e: usize) -> bool {
        // SAFETY: as in `v_release`.
        unsafe { Self::ops_of(n) }.clear_flush_young(s, e)
    }
    unsafe fn v_cy(n: NonNull<Node<P>>, s: usize, e: usize) -> bool {
        // SAFETY: as in `v_release`.
        unsafe { Self::ops_of(n) }.clear_young(s, e)
    }
    unsafe fn v_ty(n: NonNull<Node<P>>, a: usize) -> bool {
        // SAFETY: as in `v_release`.
        unsafe { Self::ops_of(n) }.test_young(a)
    }

    /// Subscribe to `mm` (Linux: `mmu_notifier_register`). Once this returns `Ok`, every
    /// later invalidation of `mm` reaches the subscriber (C-01); invalidations already in
    /// flight have ended, and never call its end without its start (C-02).
    ///
    /// Errors: [`Error::AlreadyRegistered`], [`Error::Dead`] (torn down),
    /// [`Error::InCallback`], [`Error::NoMemory`]. May sleep.
    pub fn register(self: Pin<&Self>, mm: &AddressSpace<P>) -> Result<(), Error> {
        P::might_sleep();
        self.node.claim_for_register()?;
        Node::register_on(self.node_ref(), mm)
    }

    /// Unsubscribe (Linux: `mmu_notifier_unregister`). Calls `release` unless teardown
    /// already did (C-04), and returns only when none of the subscriber's callbacks runs
    /// or will run again (C-03): its memory may be freed at once.
    ///
    /// Errors: [`Error::NotRegistered`] (also while another thread registers or
    /// unregisters it), [`Error::InCallback`]: the list is unchanged then. May sleep.
    pub fn unregister(self: Pin<&Self>) -> Result<(), Error> {
        P::might_sleep();
        let subs = self.node.claim_for_unregister()?;
        Node::unregister_claimed(self.node_ref(), subs);
        Ok(())
    }

    /// Whether the subscriber is registered (also after teardown released it, until it
    /// unregisters).
    pub fn is_registered(&self) -> bool {
        !self.node.subscriptions_ptr().is_null()
    }

    /// Whether `release` has been called for the current registration.
    pub fn is_released(&self) -> bool {
        self.node.owner.load(Ordering::Acquire).addr() & RELEASED != 0
    }

    /// The callbacks.
    pub fn ops(&self) -> &T {
        &self.ops
    }
}

impl<T: SubscriberOps, P: Platform> Deref for Subscriber<T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<T: SubscriberOps, P: Platform> Drop for Subscriber<T, P> {
    fn drop(&mut self) {
        // `&mut self`: no concurrent register/unregister of this node is possible.
        if let Some(subs) = NonNull::new(self.node.subscriptions_ptr()) {
            // Dropping from inside a callback (or while holding an invalidation) would
            // wait for that callback forever; it is reported and waited for anyway,
            // because the memory must not go while callbacks may reach it.
            if task::busy::<P>() {
                P::report_bug(crate::Bug::DropInCallback);
            }
            self.node.set_flags(BUSY);
            Node::unregister_claimed(self.node_ref(), subs);
        }
    }
}

/// A subscriber that is shared by every user of one kind on an address space
/// (Linux: `mmu_notifier_get`/`mmu_notifier_put` with `alloc_notifier`/`free_notifier`).
///
/// Implemented by the callback type; `alloc` creates one when
/// [`AddressSpace::get`] finds none, `free` destroys it after the last
/// [`SharedRef`] is put and a grace period has passed.
///
/// # Safety
///
/// The core trusts `alloc`'s pointer: an implementation must return either `None` or a
/// pointer to a valid, pinned, unregistered [`Shared<Self, P>`] (made with
/// [`Shared::new`]) that nobody else uses and that stays valid until the core passes
/// it to [`free`](Self::free); `free` must accept exactly such pointers. A safe trait
/// could not promise this, which is why the trait is `unsafe` (C-22).
pub unsafe trait SharedOps<P: Platform>: SubscriberOps + Sized + 'static {
    /// Create the shared subscriber for `mm` (it is registered by the core).
    fn alloc(mm: &AddressSpace<P>) -> Option<NonNull<Shared<Self, P>>>;

    /// Destroy a subscriber made by `alloc`. Runs after a grace period, from the thread
    /// that completes it: must not sleep or take locks a registering thread may hold.
    ///
    /// # Safety
    ///
    /// `this` came from `alloc`, is unregistered, and is not used afterwards.
    unsafe fn free(this: NonNull<Shared<Self, P>>);
}

/// Storage of a shared subscriber: the subscriber, its user count, and the RCU head
/// its deferred free is queued by.
#[repr(C)]
pub struct Shared<T: SharedOps<P>, P: Platform> {
    sub: Subscriber<T, P>,
    /// Users; changed under the subscriptions lock.
    users: AtomicUsize,
    rcu: RcuHead,
}

impl<T: SharedOps<P>, P: Platform> Shared<T, P> {
    const VTABLE: VTable<P> = VTable {
        kind: Some(TypeId::of::<T>),
        free: Some(Self::v_free),
        ..Subscriber::<T, P>::VTABLE
    };

    /// Storage for a shared subscriber with callbacks `ops`; `SharedOps::alloc` places
    /// it in memory of its choice.
    pub fn new(ops: T) -> Self {
        Shared {
            sub: Subscriber::with_vtable(ops, &Self::VTABLE),
            users: AtomicUsize::new(0),
            rcu: RcuHead::new(),
        }
    }

    unsafe fn v_free(n: NonNull<Node<P>>) {
        let this = n.cast::<Self>();
        // SAFETY: the vtable is only installed in nodes of `Self`, whose node is at
        // offset 0; `n` has the provenance of the whole object.
        let head = unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*this.as_ptr()).rcu)) };
        // SAFETY: the node is unlinked; `free_rcu` runs once, after a grace period.
        unsafe { P::rcu().call(head, Self::free_rcu) };
    }

    unsafe extern "C" fn free_rcu(head: NonNull<RcuHead>) {
        let off = core::mem::offset_of!(Self, rcu);
        // SAFETY: `head` is the `rcu` field of a `Self` (queued by `v_free`).
        let this = unsafe { NonNull::new_unchecked(head.as_ptr().byte_sub(off).cast::<Self>()) };
        // SAFETY: grace periods of the in-flight count and of `P::rcu()` have passed
        // since the node was unlinked; nobody reaches it.
        let node = unsafe { &this.as_ref().sub.node };
        node.witness_give_back();
        let subs = node.subscriptions_ptr();
        node.owner.store(ptr::null_mut(), Ordering::Relaxed);
        if let Some(subs) = NonNull::new(subs) {
            // SAFETY: the reference taken when the shared subscriber was registered.
            unsafe { Subscriptions::put_ref(subs) };
        }
        // SAFETY: `this` came from `T::alloc` and is done with.
        unsafe { T::free(this) };
    }
}

/// One user's reference on a shared subscriber, from [`AddressSpace::get`]. Dropping
/// it (or [`put`](Self::put)) gives the reference back; the last one unlinks the
/// subscriber and frees it after a grace period, never under a caller's feet (C-05).
pub struct SharedRef<T: SharedOps<P>, P: Platform> {
    ptr: NonNull<Shared<T, P>>,
    _p: PhantomData<Shared<T, P>>,
}

// SAFETY: a handle to `Sync` callbacks; the count is changed under a lock.
unsafe impl<T: SharedOps<P> + Send, P: Platform> Send for SharedRef<T, P> {}
// SAFETY: as above.
unsafe impl<T: SharedOps<P>, P: Platform> Sync for SharedRef<T, P> {}

impl<T: SharedOps<P>, P: Platform> Deref for SharedRef<T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the reference keeps the subscriber alive.
        unsafe { &self.ptr.as_ref().sub.ops }
    }
}

impl<T: SharedOps<P>, P: Platform> SharedRef<T, P> {
    /// Give the reference back (Linux: `mmu_notifier_put`). Never sleeps; callable
    /// from inside a callback.
    pub fn put(self) {
        drop(self)
    }

    /// The number of users of the shared subscriber right now.
    pub fn users(&self) -> usize {
        // SAFETY: the reference keeps the subscriber alive.
        unsafe { self.ptr.as_ref().users.load(Ordering::Relaxed) }
    }

    /// The shared subscriber's address, to compare two handles.
    pub fn as_ptr(&self) -> *const Shared<T, P> {
        self.ptr.as_ptr()
    }
}

impl<T: SharedOps<P>, P: Platform> Drop for SharedRef<T, P> {
    fn drop(&mut self) {
        // SAFETY: the reference keeps the subscriber alive until the end of this call.
        let shared = unsafe { self.ptr.as_ref() };
        let node = &shared.sub.node;
        let subs = node.subscriptions_ptr();
        // Once our user is given back, another thread may sweep, free the node and drop
        // its reference on the subscriptions: this read-side section keeps both valid
        // until we are done (their frees wait for a grace period).
        let _rcu = P::rcu().read_lock();
        // SAFETY: a registered node holds a reference on its subscriptions.
        let Some(subs) = (unsafe { subs.as_ref() }) else {
            return;
        };
        {
            let _inner = subs.lock.lock();
            if shared.users.fetch_sub(1, Ordering::Relaxed) != 1 {
                return;
            }
            // Last user: no `release` (Linux's put does not call it either), no
            // waiting. New invalidations stop calling it; those in flight that started
            // it must still reach it for their end (C-02), so it stays linked as a
            // zombie until they have ended, and its memory goes a grace period after
            // it is unlinked.
            if node.state.load(Ordering::Relaxed) != UNLINKED {
                node.hide_locked(subs);
                node.set_flags(ZOMBIE);
                subs.add_zombie_locked();
            } else {
                // Teardown unlinked it already (after the invalidations that started
                // it), but invalidations that began later may still be walking over
                // it: its free waits for them on the pending list.
                // SAFETY: `self.ptr` covers the whole shared subscriber (node at
                // offset 0), alive until its free, which is queued only from there.
                subs.add_pending_locked(unsafe { NodeRef::<P>::new(self.ptr.cast()) });
            }
        }
        // Unlinks (or frees) it now if no invalidation is in flight, else the end of
        // the last one does.
        subs.sweep_zombies();
    }
}

impl<P: Platform> AddressSpace<P> {
    /// The one shared subscriber of kind `T` on this address space, created with
    /// `T::alloc` and registered if there is none (Linux: `mmu_notifier_get`) (C-05).
    ///
    /// Errors as for [`Subscriber::register`], and [`Error::NoMemory`] when `alloc`
    /// returns `None`. May sleep.
    pub fn get<T: SharedOps<P>>(&self) -> Result<SharedRef<T, P>, Error> {
        P::might_sleep();
        task::may_wait::<P>()?;
        let subs = self.subscriptions_or_create()?;
        let _get = subs.get_lock.lock::<P>();
        {
            let inner = subs.lock.lock();
            if inner.dead {
                return Err(Error::Dead);
            }
            let mut found = None;
            subs.for_each_node(|n| {
                if n.vtable.kind.map(|k| k()) == Some(TypeId::of::<T>()) {
                    let shared = n.as_ptr() as *const Shared<T, P>;
                    // SAFETY: the kind says the node is a `Shared<T, P>` (node at offset
                    // 0); linked nodes are valid while we hold the lock.
                    let users = unsafe { &(*shared).users };
                    if users.load(Ordering::Relaxed) != 0 && n.live() {
                        users.fetch_add(1, Ordering::Relaxed);
                        found = NonNull::new(shared as *mut Shared<T, P>);
                        return false;
                    }
                }
                true
            });
            if let Some(ptr) = found {
                return Ok(SharedRef {
                    ptr,
                    _p: PhantomData,
                });
            }
        }
        let ptr = T::alloc(self).ok_or(Error::NoMemory)?;
        // SAFETY: `alloc` returned a valid, unregistered `Shared<T, P>`.
        let shared = unsafe { ptr.as_ref() };
        shared.users.store(1, Ordering::Relaxed);
        let node = &shared.sub.node;
        // SAFETY: `ptr` covers the whole shared subscriber; its node is at offset 0.
        let node_ref = unsafe { NodeRef::new(ptr.cast()) };
        let r = node
            .claim_for_register()
            .and_then(|()| Node::register_on(node_ref, self));
        if let Err(e) = r {
            // SAFETY: never registered: give it straight back.
            unsafe { T::free(ptr) };
            return Err(e);
        }
        Ok(SharedRef {
            ptr,
            _p: PhantomData,
        })
    }
}

/// Wait until every deferred free queued so far (by the last `put` of shared
/// subscribers) has run, so that a module may unload (Linux:
/// `mmu_notifier_synchronize`) (C-05). May sleep.
///
/// Errors: [`Error::InCallback`] from inside a notifier callback and
/// [`Error::InvalidationHeld`] while the calling task holds an invalidation: the wait
/// would include the caller itself (C-16).
pub fn synchronize<P: Platform>() -> Result<(), Error> {
    P::might_sleep();
    task::may_wait::<P>()?;
    // Shared subscribers whose last `put` came while invalidations were in flight are
    // unlinked, and their frees queued, once those have ended: wait for that first, then
    // for the queued frees. (A barrier taken before the count reached zero misses a free
    // queued right after it: `synchronize` returned with that subscriber not yet freed.)
    while !crate::subscriptions::ZOMBIES.is_zero() {
        P::relax();
    }
    P::rcu().barrier();
    Ok(())
}

#[cfg(all(test, feature = "std", not(loom)))]
mod tests {
    use core::pin::pin;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use crate::std_platform::StdPlatform as P;
    use crate::{AddressSpace, Event, Range, Subscriber, SubscriberOps, WouldBlock};

    #[derive(Default)]
    struct Count {
        starts: AtomicUsize,
        ends: AtomicUsize,
    }
    impl SubscriberOps for Count {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            self.starts.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn invalidate_range_end(&self, _r: &Range) {
            self.ends.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Refuses;
    impl SubscriberOps for Refuses {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            Err(WouldBlock)
        }
    }

    /// C-01/C-22, issue 13 bug 3: after more registrations than 32 bits count (here:
    /// the generation moved past 2^32 + 2^31, which minutes of churn reach), a
    /// long-lived subscriber still gets every invalidation, a new one too, and the
    /// unwinding after a refusal still ends exactly the ones that started.
    #[test]
    fn c01_c22_generations_far_past_32_bits() {
        let mm = AddressSpace::<P>::new();
        let old = pin!(Subscriber::<_, P>::new(Count::default()));
        old.as_ref().register(&mm).unwrap();
        for jump in [1u64 << 31, (1 << 32) + (1 << 31) + 7, 1 << 61] {
            mm.subscriptions()
                .unwrap()
                .gen
                .fetch_add(jump, Ordering::Relaxed);
            let new = pin!(Subscriber::<_, P>::new(Count::default()));
            new.as_ref().register(&mm).unwrap();
            let before = old.starts.load(Ordering::Relaxed);
            mm.invalidate_range_start(Range::new(0, 4096, Event::Unmap))
                .unwrap()
                .end();
            assert_eq!(
                old.starts.load(Ordering::Relaxed),
                before + 1,
                "old one missed"
            );
            assert_eq!(new.starts.load(Ordering::Relaxed), 1, "new one missed");
            // The ends are counted (so that the unwinding check below can see one).
            assert_eq!(new.ends.load(Ordering::Relaxed), 1, "new one's end missed");
            // A refusal by a subscriber registered after both: it is first on the list
            // and nothing started before it, so nobody gets an end.
            let r = pin!(Subscriber::<_, P>::new(Refuses));
            r.as_ref().register(&mm).unwrap();
            let e0 = (
                old.ends.load(Ordering::Relaxed),
                new.ends.load(Ordering::Relaxed),
            );
            let res = mm.invalidate_range_start(Range::new(0, 4096, Event::Unmap).non_blocking());
            assert!(res.is_err());
            let e1 = (
                old.ends.load(Ordering::Relaxed),
                new.ends.load(Ordering::Relaxed),
            );
            assert_eq!(e0, e1, "unwinding ended subscribers that never started");
            r.as_ref().unregister().unwrap();
            new.as_ref().unregister().unwrap();
        }
        old.as_ref().unregister().unwrap();
    }

    /// C-04/C-22: unregistering after teardown leaves the list as teardown left it
    /// (empty): a node teardown unlinked is neither hidden again nor unlinked a second
    /// time through its stale links (which would put an unregistered node back on the
    /// list, or write into a freed one).
    #[test]
    fn c04_unregister_after_teardown_leaves_the_list_alone() {
        let mm = AddressSpace::<P>::new();
        let b = pin!(Subscriber::<_, P>::new(Count::default()));
        let a = pin!(Subscriber::<_, P>::new(Count::default()));
        b.as_ref().register(&mm).unwrap();
        a.as_ref().register(&mm).unwrap();
        mm.release().unwrap();
        let head = || mm.subscriptions().unwrap().head.load(Ordering::Relaxed);
        assert!(head().is_null(), "teardown left nodes on the list");
        a.as_ref().unregister().unwrap();
        assert!(
            head().is_null(),
            "unregister after teardown relinked a node"
        );
        b.as_ref().unregister().unwrap();
        assert!(head().is_null());
    }
}
