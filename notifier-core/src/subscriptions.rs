//! The per-address-space state ([`Subscriptions`], behind an [`AddressSpace`]) and the
//! invalidation path: `invalidate_range_start`, `invalidate_range_end`,
//! `invalidate_page`, `invalidate_secondary_tlbs`.
//!
//! The order of operations here is the contract; each non-obvious step says which race
//! it closes.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use intrusive_collections::LinkedList;

use crate::interval::{DeferredAdapter, Interval};
use crate::primitive::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::range::validate_bounds;
use crate::srcu::{ReadToken, Readers, SleepableRcu};
use crate::subscriber::{Node, NodeRef};
use crate::sync::{SleepMutex, SpinLock, WaitQueue};
use crate::{Bug, Error, Event, Platform, Range};

/// How many tasks may be recorded as "inside a callback" per address space at once;
/// beyond that, the [`Error::InCallback`] check is not made for the extra tasks.
const CALLERS: usize = if cfg!(loom) { 4 } else { 16 };

/// Tag bit of [`AddressSpace`]'s pointer: the address space has been torn down.
const TORN_DOWN: usize = 1;

/// State under the address space's spin lock.
pub(crate) struct Inner<P: Platform> {
    /// Root of the interval tree (a treap ordered by start, augmented with the largest
    /// `last` of each subtree).
    pub(crate) itree: *const Interval<P>,
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
/// - `head` is an RCU list: nodes are linked at the head and unlinked under `lock`, and
///   freed (or reused) only after a grace period of `P::rcu()` (unregister, put).
///   Because nodes are only ever linked at the head, registration generations decrease
///   along the list.
/// - `gen` is written under `lock` after the node it names is linked.
/// - The interval tree changes only under `lock`, and only while `invalidate_seq` is
///   even or no invalidation walks it; walkers walk it only while `invalidate_seq` is
///   odd and they are counted in `active_invalidate_ranges`.
pub(crate) struct Subscriptions<P: Platform> {
    pub(crate) head: AtomicPtr<Node<P>>,
    pub(crate) gen: AtomicU32,
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
    pub(crate) wq: WaitQueue,
    /// Serialises `get` so that one kind has one shared subscriber.
    pub(crate) get_lock: SleepMutex,
    callers: [AtomicUsize; CALLERS],
    refs: AtomicUsize,
    _p: PhantomData<P>,
}

impl<P: Platform> Subscriptions<P> {
    fn new() -> Self {
        Subscriptions {
            head: AtomicPtr::new(ptr::null_mut()),
            gen: AtomicU32::new(0),
            inflight: Readers::new(),
            lock: SpinLock::new(Inner {
                itree: ptr::null(),
                active_invalidate_ranges: 0,
                deferred: LinkedList::new(DeferredAdapter::NEW),
                dead: false,
            }),
            // Even: idle. Starts high so that `seq - 1` of a new interval never collides.
            invalidate_seq: AtomicU64::new(2),
            intervals: AtomicUsize::new(0),
            has_itree: AtomicBool::new(false),
            wq: WaitQueue::new(),
            get_lock: SleepMutex::new(),
            callers: core::array::from_fn(|_| AtomicUsize::new(0)),
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
    /// The caller owns one reference and does not use `this` afterwards.
    pub(crate) unsafe fn put_ref(this: NonNull<Self>) {
        // SAFETY: the caller's reference keeps the object alive until here.
        let s = unsafe { this.as_ref() };
        if s.refs.fetch_sub(1, Ordering::Release) == 1 {
            crate::primitive::fence(Ordering::Acquire);
            // SAFETY: that was the last reference: nobody else can reach the object; it
            // was allocated by `P::alloc` with this layout in `subscriptions_or_create`.
            unsafe {
                ptr::drop_in_place(this.as_ptr());
                P::dealloc(this.cast(), Layout::new::<Self>());
            }
        }
    }

    /// Record that the current task runs callbacks of this address space.
    pub(crate) fn enter_callbacks(&self) -> CallerMark<'_> {
        let me = P::current_task();
        let start = me.wrapping_mul(0x9E37_79B9) % CALLERS;
        for i in 0..CALLERS {
            let s = &self.callers[(start + i) % CALLERS];
            if s.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return CallerMark(Some(s));
            }
        }
        CallerMark(None)
    }

    /// Whether the current task is inside one of this address space's callbacks.
    pub(crate) fn in_callback(&self) -> bool {
        let me = P::current_task();
        self.callers.iter().any(|s| s.load(Ordering::Relaxed) == me)
    }

    /// Walk the RCU list, calling `f` on every node. The caller holds a read-side
    /// section of `P::rcu()`.
    #[inline]
    pub(crate) fn for_each_node(&self, mut f: impl FnMut(NodeRef<'_, P>) -> bool) {
        let mut cur = self.head.load(Ordering::Acquire);
        while let Some(p) = NonNull::new(cur) {
            // SAFETY: nodes reachable from `head` were linked with the provenance of
            // their whole subscriber and are freed only after a grace period of
            // `P::rcu()`; the caller is inside a read-side section or holds the lock
            // (type invariant).
            let n = unsafe { NodeRef::new(p) };
            if !f(n) {
                return;
            }
            cur = n.next.load(Ordering::Acquire);
        }
    }

    /// The list part of `start`: call every node visible at generation `g`.
    fn hlist_start(&self, range: &Range, g: u32) -> Result<(), Error> {
        let rcu = P::rcu().read_lock();
        let _mark = self.enter_callbacks();
        let mut failed: Option<u32> = None;
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
                    failed = Some(n.reg_gen());
                    false
                }
            }
        });
        let Some(failed_gen) = failed else {
            drop(rcu);
            return Ok(());
        };
        // C-08 unwinding: every node whose start succeeded gets its end. Those are the
        // visible nodes before the refusing one; the list is ordered by decreasing
        // registration generation (invariant), so they are exactly the visible nodes
        // registered after it, even if some were unlinked meanwhile.
        self.for_each_node(|n| {
            if !gen_after(n.reg_gen(), failed_gen) {
                return false;
            }
            if n.visible(g) {
                n.call_end(range);
            }
            true
        });
        drop(rcu);
        Err(Error::WouldBlock)
    }

    fn hlist_end(&self, range: &Range, g: u32) {
        let _rcu = P::rcu().read_lock();
        let _mark = self.enter_callbacks();
        self.for_each_node(|n| {
            if n.visible(g) {
                n.call_end(range);
            }
            true
        });
    }
}

/// `a` registered after `b` (wrapping generations; windows are tiny).
#[inline]
pub(crate) fn gen_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Clears the "inside a callback" record on drop.
pub(crate) struct CallerMark<'a>(Option<&'a AtomicUsize>);

impl Drop for CallerMark<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.store(0, Ordering::Relaxed);
        }
    }
}

/// The notifier side of one address space: what a backend embeds in its `mm_struct`
/// (Linux: `mm->notifier_subscriptions`) and calls from wherever its primary MMU
/// changes page tables.
///
/// It is one pointer wide. The [`Subscriptions`] behind it are allocated on the first
/// registration (with [`Platform::alloc`]) and published with release ordering; until
/// then every invalidation is one load and a branch.
///
/// Dropping an address space tears it down ([`release`](Self::release)) if that has not
/// happened yet.
///
/// ```
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::{AddressSpace, Event, Range};
///
/// let mm = AddressSpace::<StdPlatform>::new();
/// // Nobody subscribed: a valid range costs nothing...
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
        match self.subs.compare_exchange(
            ptr::null_mut(),
            mem.as_ptr(),
            Ordering::AcqRel,
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
    #[inline]
    pub fn invalidate_range_start(&self, range: Range) -> Result<Invalidation<'_, P>, Error> {
        validate_bounds::<P>(range.start, range.end)?;
        match self.subscriptions() {
            None => Ok(Invalidation { range, inner: None }),
            Some(s) => self.start_slow(s, range),
        }
    }

    #[inline(never)]
    fn start_slow<'a>(
        &'a self,
        s: &'a Subscriptions<P>,
        range: Range,
    ) -> Result<Invalidation<'a, P>, Error> {
        if range.blockable {
            P::might_sleep();
        }
        // Counted in flight before anything is read, so that a registration either sees
        // this invalidation (and waits for its end) or is seen by it (C-02).
        let token = s.inflight.enter::<P>();
        let g = s.gen.load(Ordering::Acquire);
        let mut itree = false;
        // Read after `enter` (its barrier pairs with the first insertion's grace
        // period): either this invalidation sees the tree, or the insertion waits for it.
        if s.has_itree.load(Ordering::Relaxed) {
            itree = true;
            if let Err(e) = crate::interval::itree_invalidate(s, &range) {
                s.inflight.exit::<P>(token);
                return Err(e);
            }
        }
        if !s.head.load(Ordering::Relaxed).is_null() {
            if let Err(e) = s.hlist_start(&range, g) {
                if itree {
                    crate::interval::itree_inv_end(s);
                }
                s.inflight.exit::<P>(token);
                return Err(e);
            }
        }
        Ok(Invalidation {
            range,
            inner: Some(Started {
                subs: s,
                gen: g,
                itree,
                token,
            }),
        })
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
        let _mark = s.enter_callbacks();
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
        self.release();
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

pub(crate) struct Started<'a, P: Platform> {
    subs: &'a Subscriptions<P>,
    gen: u32,
    itree: bool,
    token: ReadToken,
}

/// An invalidation between its start and its end (returned by
/// [`AddressSpace::invalidate_range_start`]).
///
/// Holding it keeps the range "in flight": interval subscribers' `read_begin` waits,
/// registrations wait. End it with [`end`](Self::end) once the page-table entries are
/// changed and the TLB is flushed; pages may be freed after that (C-10). Dropping it
/// ends it as well.
#[must_use = "an invalidation must be ended after the page tables are changed"]
pub struct Invalidation<'a, P: Platform> {
    range: Range,
    inner: Option<Started<'a, P>>,
}

impl<P: Platform> Invalidation<'_, P> {
    /// The range being invalidated.
    pub fn range(&self) -> &Range {
        &self.range
    }

    /// `invalidate_range_end`: tell every subscriber that saw the start that the
    /// entries are changed (C-07).
    pub fn end(self) {
        drop(self)
    }
}

impl<P: Platform> Drop for Invalidation<'_, P> {
    /// Inline: with nobody subscribed, ending is one branch.
    #[inline]
    fn drop(&mut self) {
        if let Some(st) = self.inner.take() {
            Self::end_slow(&self.range, st);
        }
    }
}

impl<P: Platform> Invalidation<'_, P> {
    #[inline(never)]
    fn end_slow(range: &Range, st: Started<'_, P>) {
        if range.blockable {
            P::might_sleep();
        }
        let s = st.subs;
        if !s.head.load(Ordering::Relaxed).is_null() {
            s.hlist_end(range, st.gen);
        }
        if st.itree {
            crate::interval::itree_inv_end(s);
        }
        s.inflight.exit::<P>(st.token);
    }
}
