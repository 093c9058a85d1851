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
use crate::subscriptions::{gen_after, Subscriptions};
use crate::{AddressSpace, Error, Platform, Range, WouldBlock};

/// The callbacks of a secondary MMU (Linux: `struct mmu_notifier_ops`). Every method
/// has a default that does nothing, so a subscriber implements only what it caches.
///
/// Callbacks run inside a read-side section of the platform's sleepable RCU; those that
/// get a non-blockable range, and the ageing and `invalidate_secondary_tlbs` callbacks,
/// run in a region where sleeping is a bug ([`Platform::non_block_start`]).
pub trait SubscriberOps: Sync {
    /// The address space is torn down, or the subscriber unregisters, whichever comes
    /// first: called exactly once (C-04). Drop every translation; no callback follows.
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

/// Tag bits of [`Node::owner`].
const RELEASED: usize = 1;
const BUSY: usize = 2;
const FLAGS: usize = RELEASED | BUSY;

/// The part of a subscriber the core owns: 32 bytes on 64-bit targets.
///
/// # Invariants
///
/// - `owner` is null while unregistered; otherwise it points to the [`Subscriptions`]
///   the node holds a reference on, tagged with `RELEASED` once `release` has been
///   claimed (it is never called twice) and `BUSY` while a registration or
///   unregistration of this node is in progress.
/// - `gens` holds the registration generation in its high half and the unregistration
///   generation in its low half; both are equal while the node is live. Written under
///   the subscriptions lock before the generation counter is published.
/// - `next` is written under the subscriptions lock; readers follow it under RCU.
#[repr(C)]
pub(crate) struct Node<P: Platform> {
    pub(crate) next: AtomicPtr<Node<P>>,
    vtable: &'static VTable<P>,
    gens: AtomicU64,
    owner: AtomicPtr<Subscriptions<P>>,
}

impl<P: Platform> Node<P> {
    fn new(vtable: &'static VTable<P>) -> Self {
        Node {
            next: AtomicPtr::new(ptr::null_mut()),
            vtable,
            gens: AtomicU64::new(0),
            owner: AtomicPtr::new(ptr::null_mut()),
        }
    }

    pub(crate) fn reg_gen(&self) -> u32 {
        (self.gens.load(Ordering::Relaxed) >> 32) as u32
    }

    /// Whether an invalidation that started at generation `g` calls this node: it was
    /// registered at or before `g`, not unregistered at or before `g`, not released.
    #[inline]
    pub(crate) fn visible(&self, g: u32) -> bool {
        let gens = self.gens.load(Ordering::Relaxed);
        let reg = (gens >> 32) as u32;
        let unreg = gens as u32;
        !gen_after(reg, g)
            && (unreg == reg || gen_after(unreg, g))
            && self.owner.load(Ordering::Relaxed).addr() & RELEASED == 0
    }

    /// Whether the node is registered, not unregistering and not released.
    #[inline]
    pub(crate) fn live(&self) -> bool {
        let gens = self.gens.load(Ordering::Relaxed);
        (gens >> 32) as u32 == gens as u32
            && self.owner.load(Ordering::Relaxed).addr() & RELEASED == 0
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
        let subs = match mm.subscriptions_or_create() {
            Ok(s) => s,
            Err(e) => {
                this.owner.store(ptr::null_mut(), Ordering::Release);
                return Err(e);
            }
        };
        if subs.in_callback() {
            this.owner.store(ptr::null_mut(), Ordering::Release);
            return Err(Error::InCallback);
        }
        {
            let inner = subs.lock.lock();
            if inner.dead {
                drop(inner);
                this.owner.store(ptr::null_mut(), Ordering::Release);
                return Err(Error::Dead);
            }
            subs.get_ref();
            this.owner.store(
                (subs as *const Subscriptions<P> as *mut Subscriptions<P>).map_addr(|a| a | BUSY),
                Ordering::Release,
            );
            let gen = subs.gen.load(Ordering::Relaxed).wrapping_add(1);
            this.gens
                .store((u64::from(gen) << 32) | u64::from(gen), Ordering::Relaxed);
            this.next
                .store(subs.head.load(Ordering::Relaxed), Ordering::Relaxed);
            subs.head.store(me, Ordering::Release);
            // INVARIANT: the generation is published after the node it names is linked,
            // so an invalidation that reads it finds the node.
            subs.gen.store(gen, Ordering::Release);
        }
        // C-02: invalidations that started before the node became visible skip it; wait
        // until they have ended, so that a translation it establishes from now on is
        // never one such an invalidation is about to remove.
        subs.inflight.synchronize::<P>();
        this.clear_flags(BUSY);
        Ok(())
    }

    /// Claim the node for unregistration; returns its subscriptions.
    fn claim_for_unregister(&self) -> Result<&Subscriptions<P>, Error> {
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
        let subs = cur.map_addr(|a| a & !FLAGS);
        // SAFETY: the node holds a reference on its subscriptions (invariant).
        let subs = unsafe { &*subs };
        if subs.in_callback() {
            self.clear_flags(BUSY);
            return Err(Error::InCallback);
        }
        Ok(subs)
    }

    /// Unlink `self` from the list if it is there. Caller holds the lock.
    fn unlink_locked(&self, subs: &Subscriptions<P>) -> bool {
        let me = self as *const Node<P> as *mut Node<P>;
        let mut link = &subs.head;
        loop {
            let cur = link.load(Ordering::Relaxed);
            if cur.is_null() {
                return false;
            }
            if cur == me {
                // Readers already past `link` keep following `self.next`, which stays
                // intact until the grace period the caller waits for.
                link.store(self.next.load(Ordering::Relaxed), Ordering::Release);
                return true;
            }
            // SAFETY: linked nodes stay valid while linked; we hold the lock.
            link = unsafe { &(*cur).next };
        }
    }

    fn is_linked_locked(&self, subs: &Subscriptions<P>) -> bool {
        let me = self as *const Node<P> as *mut Node<P>;
        let mut cur = subs.head.load(Ordering::Relaxed);
        while !cur.is_null() {
            if cur == me {
                return true;
            }
            // SAFETY: linked nodes stay valid while linked; we hold the lock.
            cur = unsafe { (*cur).next.load(Ordering::Relaxed) };
        }
        false
    }

    /// The unregistration barrier (C-03) after a successful claim.
    fn unregister_claimed(this: NodeRef<'_, P>, subs: &Subscriptions<P>) {
        P::might_sleep();
        // 1. New invalidations stop calling the node.
        let marked = {
            let _inner = subs.lock.lock();
            if this.is_linked_locked(subs) {
                let gen = subs.gen.load(Ordering::Relaxed).wrapping_add(1);
                let reg = this.gens.load(Ordering::Relaxed) & !0xffff_ffff;
                this.gens.store(reg | u64::from(gen), Ordering::Relaxed);
                subs.gen.store(gen, Ordering::Release);
                true
            } else {
                false
            }
        };
        // 2. Invalidations that did call its start deliver their end first (C-02).
        if marked {
            subs.inflight.synchronize::<P>();
        }
        // 3. Release exactly once, unless teardown already did (C-04). Inside a read
        //    section, so that a concurrent teardown waits for it to return.
        {
            let _rcu = P::rcu().read_lock();
            if this.claim_release() {
                let _mark = subs.enter_callbacks();
                this.call_release();
            }
        }
        // 4. Unlink, 5. wait until no callback runs any more (C-03).
        {
            let _inner = subs.lock.lock();
            this.unlink_locked(subs);
        }
        P::rcu().synchronize();
        this.owner.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: the reference taken at registration, dropped once.
        unsafe { Subscriptions::put_ref(NonNull::from(subs)) };
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
        let subs = self.node.subscriptions_ptr();
        // SAFETY: a registered node holds a reference on its subscriptions.
        if let Some(subs) = unsafe { subs.as_ref() } {
            // Dropping from inside one of the address space's callbacks would wait for
            // that callback forever; it is reported and waited for anyway, because the
            // memory must not go while callbacks may reach it.
            if subs.in_callback() {
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
pub trait SharedOps<P: Platform>: SubscriberOps + Sized + 'static {
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
        // SAFETY: a grace period has passed since the node was unlinked; nobody
        // reaches it.
        let node = unsafe { &this.as_ref().sub.node };
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
        // SAFETY: a registered node holds a reference on its subscriptions.
        let Some(subs) = (unsafe { subs.as_ref() }) else {
            return;
        };
        {
            let _inner = subs.lock.lock();
            if shared.users.fetch_sub(1, Ordering::Relaxed) != 1 {
                return;
            }
            // Last user: stop new invalidations from calling it and unlink it. No
            // `release` (Linux's put does not call it either), no waiting: the memory
            // goes after a grace period.
            let gen = subs.gen.load(Ordering::Relaxed).wrapping_add(1);
            let reg = node.gens.load(Ordering::Relaxed) & !0xffff_ffff;
            node.gens.store(reg | u64::from(gen), Ordering::Relaxed);
            subs.gen.store(gen, Ordering::Release);
            node.unlink_locked(subs);
        }
        if let Some(free) = node.vtable.free {
            // SAFETY: the vtable's `free` belongs to this node's type; the pointer has
            // the provenance of the whole shared subscriber.
            unsafe { free(self.ptr.cast()) };
        }
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
        let subs = self.subscriptions_or_create()?;
        if subs.in_callback() {
            return Err(Error::InCallback);
        }
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
pub fn synchronize<P: Platform>() {
    P::might_sleep();
    P::rcu().barrier();
}
