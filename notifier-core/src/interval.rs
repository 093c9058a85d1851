//! Interval subscribers (Linux: `struct mmu_interval_notifier`): a subscriber that
//! covers `[start, start + length)` and uses the sequence protocol instead of
//! start/end pairs.
//!
//! # The sequence protocol (C-12)
//!
//! The address space keeps `invalidate_seq`: even when no invalidation touching the
//! interval tree is in flight, odd while one is. An invalidation that finds an
//! overlapping interval makes it odd (`cur_seq`) and calls each overlapping subscriber's
//! `invalidate(…, cur_seq)`, which must take the subscriber's own lock and call
//! [`Interval::set_seq`]`(cur_seq)`. When the last in-flight invalidation ends, the
//! sequence is made even again and waiters are woken.
//!
//! A secondary MMU's fault path:
//!
//! 1. `seq = interval.read_begin()` — waits while an invalidation of this interval is in
//!    flight;
//! 2. read the primary page-table entries (no lock of the subscriber held);
//! 3. take the subscriber's lock; if `interval.read_retry(seq)`, drop everything read and
//!    go back to 1; otherwise install the translation, then unlock.
//!
//! Because `set_seq` happens under the same lock, a translation is never installed from
//! an entry that an invalidation has cleared since `read_begin`.
//!
//! # Deferred insert and remove (C-13)
//!
//! While invalidations are in flight the tree is walked without the lock, so it must not
//! change: insertions and removals are queued (an intrusive list) and applied by the
//! last `end`. This is deterministic and cannot livelock.

use core::marker::PhantomPinned;
use core::ops::{ControlFlow, Deref};
use core::pin::Pin;
use core::ptr::{self, NonNull};

use intrusive_collections::linked_list::AtomicLink;
use intrusive_collections::{intrusive_adapter, UnsafeRef};

use crate::itree::{Links, Node};
use crate::primitive::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::subscriptions::Subscriptions;
use crate::{task, AddressSpace, Bug, Error, Event, Platform, Range, WouldBlock};

/// What an interval callback may do with the interval it is called for: read its bounds
/// and record the invalidation's sequence (C-12).
///
/// The core's [`Interval`] is one. A binding to a kernel's own interval notifiers (the
/// Linux module's `IntervalNotifier`, over `struct mmu_interval_notifier`) is another,
/// so that a driver writes its [`IntervalOps`] once, generic over the handle, and
/// inserts the same ops in the core or natively:
///
/// ```
/// use notifier_core::{IntervalHandle, IntervalOps, Range, WouldBlock};
/// use std::sync::Mutex;
///
/// struct Mirror {
///     table: Mutex<Vec<(usize, u64)>>, // address -> device frame
/// }
///
/// impl<I: IntervalHandle + ?Sized> IntervalOps<I> for Mirror {
///     fn invalidate(&self, iv: &I, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
///         let mut t = self.table.lock().unwrap();
///         iv.set_seq(cur_seq);
///         t.retain(|&(a, _)| a < r.start || a >= r.end);
///         Ok(())
///     }
/// }
/// ```
pub trait IntervalHandle {
    /// First byte covered.
    fn start(&self) -> usize;
    /// Last byte covered (inclusive).
    fn last(&self) -> usize;
    /// Record the invalidation `cur_seq`, under the subscriber's lock (Linux:
    /// `mmu_interval_set_seq`).
    fn set_seq(&self, cur_seq: u64);
}

impl<P: Platform> IntervalHandle for Interval<P> {
    fn start(&self) -> usize {
        Interval::start(self)
    }
    fn last(&self) -> usize {
        Interval::last(self)
    }
    fn set_seq(&self, cur_seq: u64) {
        Interval::set_seq(self, cur_seq)
    }
}

/// The callbacks of an interval subscriber (Linux: `struct mmu_interval_notifier_ops`),
/// for intervals of handle type `I`: [`Interval<P>`] in the core. Implement it for every
/// [`IntervalHandle`] to use the same ops with a kernel binding as well.
pub trait IntervalOps<I: IntervalHandle + ?Sized>: Sync {
    /// Whether the core should call [`invalidate_start`](Self::invalidate_start) then,
    /// after every overlapping subscriber's start, [`invalidate_finish`](Self::invalidate_finish)
    /// (C-14). When false only [`invalidate`](Self::invalidate) is called.
    const TWO_PASS: bool = false;

    /// `range`, which overlaps the interval, is about to change. Take the subscriber's
    /// lock, call `interval.set_seq(cur_seq)`, zap the translations of the overlap,
    /// unlock. May refuse with [`WouldBlock`] only if `range.blockable` is false (C-08).
    fn invalidate(&self, interval: &I, range: &Range, cur_seq: u64) -> Result<(), WouldBlock>;

    /// Two-pass form, first pass: `set_seq` and *queue* the hardware invalidation.
    /// Defaults to [`invalidate`](Self::invalidate).
    fn invalidate_start(
        &self,
        interval: &I,
        range: &Range,
        cur_seq: u64,
    ) -> Result<(), WouldBlock> {
        self.invalidate(interval, range, cur_seq)
    }

    /// Two-pass form, second pass: wait for what `invalidate_start` queued. Called for
    /// every subscriber whose `invalidate_start` succeeded, after all of them ran.
    fn invalidate_finish(&self, _interval: &I, _range: &Range, _cur_seq: u64) {}
}

type StartFn<P> = unsafe fn(NonNull<Interval<P>>, &Range, u64) -> Result<(), WouldBlock>;

pub(crate) struct IntervalVTable<P: Platform> {
    start: StartFn<P>,
    finish: unsafe fn(NonNull<Interval<P>>, &Range, u64),
    two_pass: bool,
}

const BUSY: usize = 2;

/// The part of an interval subscriber the core owns (Linux: the fields of
/// `struct mmu_interval_notifier`).
///
/// # Invariants
///
/// - `owner` is null while not inserted, else the subscriptions the interval holds a
///   reference on (tagged `BUSY` during insert/remove).
/// - The tree fields (`links`, `start`, `last`, `in_tree`) change
///   only under the subscriptions lock, under the rules of `Subscriptions`; relaxed
///   atomics make the lock-free walk of a frozen tree well defined.
#[repr(C)]
pub struct Interval<P: Platform> {
    links: Links<Interval<P>>,
    start: AtomicUsize,
    last: AtomicUsize,
    in_tree: AtomicBool,
    invalidate_seq: AtomicU64,
    /// `read_begin`s looking at `owner` right now: `remove` waits for them before it
    /// drops its reference on the subscriptions (C-22).
    readers: AtomicUsize,
    owner: AtomicPtr<Subscriptions<P>>,
    deferred: AtomicLink,
    vtable: &'static IntervalVTable<P>,
}

// SAFETY: every field is an atomic or immutable.
unsafe impl<P: Platform> Send for Interval<P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Sync for Interval<P> {}

intrusive_adapter!(pub(crate) DeferredAdapter<P> = UnsafeRef<Interval<P>>: Interval<P> { deferred => AtomicLink } where P: Platform);

impl<P: Platform> Interval<P> {
    fn new(vtable: &'static IntervalVTable<P>) -> Self {
        Interval {
            links: Links::new(),
            start: AtomicUsize::new(0),
            last: AtomicUsize::new(0),
            in_tree: AtomicBool::new(false),
            invalidate_seq: AtomicU64::new(0),
            readers: AtomicUsize::new(0),
            owner: AtomicPtr::new(ptr::null_mut()),
            deferred: AtomicLink::new(),
            vtable,
        }
    }

    /// First byte covered.
    pub fn start(&self) -> usize {
        self.start.load(Ordering::Relaxed)
    }

    /// Last byte covered (inclusive).
    pub fn last(&self) -> usize {
        self.last.load(Ordering::Relaxed)
    }

    /// Begin a read of the primary page tables for this interval (Linux:
    /// `mmu_interval_read_begin`): returns the sequence to check with
    /// [`read_retry`](Self::read_retry), after waiting while an invalidation that
    /// touched this interval is still in flight (C-12). May sleep.
    ///
    /// Errors: [`Error::NotRegistered`] if the interval is not inserted;
    /// [`Error::InCallback`] or [`Error::InvalidationHeld`] if it would have to wait
    /// while the caller is inside a callback or holds an invalidation, which may be the
    /// very one it would wait for (C-16).
    pub fn read_begin(&self) -> Result<u64, Error> {
        // `remove` on another thread may drop the last reference on the subscriptions
        // (the address space may be gone already) while we look at them: count
        // ourselves first; `remove` clears `owner`, then waits for the count (both
        // sides write, then read the other's word, sequentially consistent) (C-22).
        self.readers.fetch_add(1, Ordering::SeqCst);
        let _reading = Reading(&self.readers);
        crate::primitive::seqcst_rmw_then_load();
        let p = self.owner.load(Ordering::SeqCst).map_addr(|a| a & !BUSY);
        // SAFETY: non-null: the interval holds a reference on its subscriptions, which
        // `remove` drops only after this reader has left (`readers`).
        let subs = unsafe { p.as_ref() }.ok_or(Error::NotRegistered)?;
        let (seq, invalidating) = {
            let _inner = subs.lock.lock();
            // Pairs with the store in `set_seq`.
            let seq = self.invalidate_seq.load(Ordering::Acquire);
            (seq, seq == subs.invalidate_seq.load(Ordering::Relaxed))
        };
        // `set_seq` is always given an odd `cur_seq` and the idle sequence is even, so
        // this sleep ends once the invalidation in flight is over, even if `seq` wraps.
        if invalidating {
            // C-16: from inside a callback (its own `invalidate`, say) or while this
            // task holds an invalidation, the one in flight may be the caller's own.
            task::may_wait::<P>()?;
            P::might_sleep();
            P::may_wait_for_invalidations();
            subs.wq
                .wait_until::<P>(|| subs.invalidate_seq.load(Ordering::Acquire) != seq);
        }
        // `read_retry` may already be true here; not looping lets the caller bound its
        // own time.
        Ok(seq)
    }

    /// Whether an invalidation touched the interval since `read_begin` returned `seq`
    /// (Linux: `mmu_interval_read_retry`). Call it under the subscriber's own lock, the
    /// one its `invalidate` takes around [`set_seq`](Self::set_seq) (C-12).
    #[inline]
    pub fn read_retry(&self, seq: u64) -> bool {
        self.invalidate_seq.load(Ordering::Acquire) != seq
    }

    /// Lock-free hint that `read_retry` would be true (Linux:
    /// `mmu_interval_check_retry`); only a hint, confirm under the lock.
    #[inline]
    pub fn check_retry(&self, seq: u64) -> bool {
        self.read_retry(seq)
    }

    /// Record the invalidation `cur_seq` (Linux: `mmu_interval_set_seq`). Called from
    /// `invalidate` under the subscriber's lock.
    #[inline]
    pub fn set_seq(&self, cur_seq: u64) {
        self.invalidate_seq.store(cur_seq, Ordering::Release);
    }

    /// Whether the interval is inserted in an address space.
    pub fn is_inserted(&self) -> bool {
        self.owner.load(Ordering::Acquire).addr() & !BUSY != 0
    }
}

// SAFETY: `links` is a field of the interval, the same one every time; `start` and
// `last` change only under the subscriptions lock while the interval is not in the tree
// (insert sets them before it links the interval).
unsafe impl<P: Platform> Node for Interval<P> {
    fn links(&self) -> &Links<Self> {
        &self.links
    }
    fn start(&self) -> usize {
        self.start.load(Ordering::Relaxed)
    }
    fn last(&self) -> usize {
        self.last.load(Ordering::Relaxed)
    }
}

/// One `read_begin` looking at the interval's subscriptions (see `Interval::readers`).
struct Reading<'a>(&'a AtomicUsize);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// The interval part of `invalidate_range_start` (Linux: `mn_itree_invalidate`).
/// On success the caller owes one [`itree_inv_end`]; on refusal it has been paid.
pub(crate) fn itree_invalidate<P: Platform>(
    subs: &Subscriptions<P>,
    range: &Range,
) -> Result<(), Error> {
    let last = range.end - 1;
    let (matches, cur_seq) = {
        let mut inner = subs.lock.lock();
        inner.active_invalidate_ranges += 1;
        // SAFETY: when some interval meets the range, the tree is frozen from here (the
        // lock is held, and `invalidate_seq` is made odd below before it is released;
        // we are counted in `active_invalidate_ranges`) until the last in-flight
        // invalidation ends, which is after this invalidation's walks: insert and
        // remove defer, remove waits. Reading the root under the lock orders the walks
        // after every tree change.
        let matches = unsafe { inner.itree.freeze_matches(range.start, last) };
        if matches.is_some() {
            let s = subs.invalidate_seq.load(Ordering::Relaxed) | 1;
            subs.invalidate_seq.store(s, Ordering::Release);
        }
        (matches, subs.invalidate_seq.load(Ordering::Relaxed))
    };
    let Some(frozen) = matches else {
        return Ok(());
    };
    let _mark = task::CallbackMark::<P>::new();
    let mut failed: Option<*const Interval<P>> = None;
    let mut two_pass = false;
    let mut first_pass = |n: NonNull<Interval<P>>| {
        // SAFETY: a frozen tree's nodes stay valid (removal waits for the sequence).
        let iv = unsafe { n.as_ref() };
        if !range.blockable {
            P::non_block_start();
        }
        // SAFETY: the vtable was built for the type embedding this interval, and `n`
        // has the provenance of the whole subscriber (it was inserted that way).
        let r = unsafe { (iv.vtable.start)(n, range, cur_seq) };
        if !range.blockable {
            P::non_block_end();
        }
        two_pass |= iv.vtable.two_pass;
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) if range.blockable => {
                P::report_bug(Bug::RefusedWhileBlockable);
                ControlFlow::Continue(())
            }
            Err(_) => {
                failed = Some(n.as_ptr());
                ControlFlow::Break(())
            }
        }
    };
    let _ = frozen.walk(&mut first_pass);
    // C-14: every first pass has run; now the second passes, for every subscriber whose
    // first pass succeeded (those before the refusing one, in the same order).
    if two_pass {
        let mut second_pass = |n: NonNull<Interval<P>>| {
            if Some(n.as_ptr() as *const Interval<P>) == failed {
                return ControlFlow::Break(());
            }
            // SAFETY: as in the first pass.
            let iv = unsafe { n.as_ref() };
            if iv.vtable.two_pass {
                if !range.blockable {
                    P::non_block_start();
                }
                // SAFETY: as in the first pass.
                unsafe { (iv.vtable.finish)(n, range, cur_seq) };
                if !range.blockable {
                    P::non_block_end();
                }
            }
            ControlFlow::Continue(())
        };
        let _ = frozen.walk(&mut second_pass);
    }
    if failed.is_some() {
        // C-08: the subscribers already told have recorded `cur_seq`; ending rolls the
        // sequence forward, so their readers retry.
        drop(_mark);
        itree_inv_end(subs);
        return Err(Error::WouldBlock);
    }
    Ok(())
}

/// The interval part of `invalidate_range_end` (Linux: `mn_itree_inv_end`).
pub(crate) fn itree_inv_end<P: Platform>(subs: &Subscriptions<P>) {
    {
        let mut inner = subs.lock.lock();
        inner.active_invalidate_ranges -= 1;
        if inner.active_invalidate_ranges != 0
            || subs.invalidate_seq.load(Ordering::Relaxed) & 1 == 0
        {
            return;
        }
        // The last invalidation ended: apply the deferred insertions and removals
        // (like `rtnl_unlock()`), so that insert/remove never spin on a busy tree.
        while let Some(iv) = inner.deferred.pop_front() {
            let p = UnsafeRef::into_raw(iv);
            // SAFETY: queued intervals are valid until processed (remove waits for the
            // sequence to change, which happens below, after this loop).
            let ivr = unsafe { &*p };
            if ivr.in_tree.load(Ordering::Relaxed) {
                // SAFETY: lock held, `p` is in the tree; the last in-flight invalidation
                // has ended, so no frozen snapshot is in use.
                unsafe { inner.itree.remove(NonNull::new_unchecked(p)) };
                ivr.in_tree.store(false, Ordering::Relaxed);
                subs.intervals.fetch_sub(1, Ordering::Relaxed);
            } else {
                // SAFETY: lock held, `p` is in no tree, pinned and valid until its
                // removal (remove and drop take it out first); no snapshot is in use,
                // as above.
                unsafe { inner.itree.insert(NonNull::new_unchecked(p)) };
                ivr.in_tree.store(true, Ordering::Relaxed);
            }
        }
        // Even again, last: a `remove` waiting for this may free its interval as soon
        // as it sees the new value.
        let s = subs.invalidate_seq.load(Ordering::Relaxed).wrapping_add(1);
        subs.invalidate_seq.store(s, Ordering::Release);
    }
    subs.wq.wake_all::<P>();
}

/// Teardown for interval subscribers: one invalidation with event
/// [`Event::Release`] over the whole address space (Linux: `mn_itree_release`).
pub(crate) fn itree_release<P: Platform>(subs: &Subscriptions<P>) {
    if subs.intervals.load(Ordering::Relaxed) == 0 {
        return;
    }
    let range = Range::new(0, P::ADDRESS_LIMIT, Event::Release);
    // Blockable: cannot be refused.
    let _ = itree_invalidate(subs, &range);
    itree_inv_end(subs);
}

/// An interval subscriber: your callbacks `T` with the [`Interval`] node (Linux: a
/// driver structure embedding `struct mmu_interval_notifier`). Must be pinned while
/// inserted; dropping it removes it.
///
/// ```
/// use core::pin::pin;
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::{AddressSpace, Event, Interval, IntervalOps, IntervalSubscriber, Range, WouldBlock};
/// use std::sync::Mutex;
///
/// struct Mirror { lock: Mutex<()> }
/// impl IntervalOps<Interval<StdPlatform>> for Mirror {
///     fn invalidate(&self, iv: &Interval<StdPlatform>, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
///         let _g = self.lock.lock().unwrap();
///         iv.set_seq(cur_seq);
///         Ok(())
///     }
/// }
///
/// let mm = AddressSpace::<StdPlatform>::new();
/// let m = pin!(IntervalSubscriber::new(Mirror { lock: Mutex::new(()) }));
/// m.as_ref().insert(&mm, 0x10000, 0x4000).unwrap();
/// let seq = m.interval().read_begin().unwrap();
/// mm.invalidate_range_start(Range::new(0x11000, 0x12000, Event::Unmap)).unwrap().end();
/// let _g = m.lock.lock().unwrap();
/// assert!(m.interval().read_retry(seq)); // the fault must retry
/// ```
#[repr(C)]
pub struct IntervalSubscriber<T: IntervalOps<Interval<P>>, P: Platform> {
    interval: Interval<P>,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: the node is atomics; callbacks reach `T: Sync` through `&T`.
unsafe impl<T: IntervalOps<Interval<P>> + Send, P: Platform> Send for IntervalSubscriber<T, P> {}
// SAFETY: as above.
unsafe impl<T: IntervalOps<Interval<P>>, P: Platform> Sync for IntervalSubscriber<T, P> {}

impl<T: IntervalOps<Interval<P>>, P: Platform> IntervalSubscriber<T, P> {
    const VTABLE: IntervalVTable<P> = IntervalVTable {
        start: Self::v_start,
        finish: Self::v_finish,
        two_pass: T::TWO_PASS,
    };

    /// A subscriber not inserted anywhere yet.
    pub fn new(ops: T) -> Self {
        IntervalSubscriber {
            interval: Interval::new(&Self::VTABLE),
            ops,
            _pin: PhantomPinned,
        }
    }

    unsafe fn v_start(n: NonNull<Interval<P>>, r: &Range, seq: u64) -> Result<(), WouldBlock> {
        // SAFETY: the vtable is only installed in `Self`, whose interval sits at offset
        // 0 (`repr(C)`); `n` has the provenance of the whole subscriber.
        let this = unsafe { &*n.cast::<Self>().as_ptr() };
        if T::TWO_PASS {
            this.ops.invalidate_start(&this.interval, r, seq)
        } else {
            this.ops.invalidate(&this.interval, r, seq)
        }
    }

    unsafe fn v_finish(n: NonNull<Interval<P>>, r: &Range, seq: u64) {
        // SAFETY: as in `v_start`.
        let this = unsafe { &*n.cast::<Self>().as_ptr() };
        this.ops.invalidate_finish(&this.interval, r, seq)
    }

    /// The node: `read_begin`, `read_retry`, `set_seq`.
    pub fn interval(&self) -> &Interval<P> {
        &self.interval
    }

    /// The callbacks.
    pub fn ops(&self) -> &T {
        &self.ops
    }

    fn raw(&self) -> *mut Interval<P> {
        (self as *const Self as *mut Self).cast()
    }

    /// Start covering `[start, start + length)` of `mm` (Linux:
    /// `mmu_interval_notifier_insert`). If invalidations are in flight the insertion is
    /// deferred to the end of the last one and the sequence starts odd, so a
    /// `read_begin` waits for them (C-13). May sleep.
    ///
    /// The first insertion on an address space waits for the invalidations in flight
    /// (they did not know about the tree when they started), like registration does;
    /// called by a task that holds an [`Invalidation`](crate::Invalidation), it would wait
    /// for that task itself and is refused with [`Error::InvalidationHeld`]. Later
    /// insertions never wait.
    ///
    /// Errors: [`Error::ZeroLength`], [`Error::Overflow`], [`Error::AlreadyRegistered`],
    /// [`Error::Dead`], [`Error::InCallback`], [`Error::InvalidationHeld`],
    /// [`Error::NoMemory`]; nothing changes then.
    pub fn insert(
        self: Pin<&Self>,
        mm: &AddressSpace<P>,
        start: usize,
        length: usize,
    ) -> Result<(), Error> {
        P::might_sleep();
        if length == 0 {
            return Err(Error::ZeroLength);
        }
        let end = start.checked_add(length).ok_or(Error::Overflow)?;
        if end > P::ADDRESS_LIMIT {
            return Err(Error::Overflow);
        }
        let iv = &self.interval;
        iv.owner
            .compare_exchange(
                ptr::null_mut(),
                ptr::null_mut::<Subscriptions<P>>().map_addr(|_| BUSY),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| Error::AlreadyRegistered)?;
        let subs = if task::in_callback::<P>() {
            Err(Error::InCallback)
        } else {
            mm.subscriptions_or_create()
        };
        let subs = match subs {
            Ok(s) => s,
            Err(e) => {
                iv.owner.store(ptr::null_mut(), Ordering::Release);
                return Err(e);
            }
        };
        // Until the tree is armed, an insertion waits for invalidations that skipped it
        // (also those that found no subscriptions object at all); one this task holds
        // would be waited for by itself (C-16).
        let must_wait = !subs.itree_armed.load(Ordering::Acquire);
        if must_wait {
            if let Err(e) = task::may_wait::<P>() {
                iv.owner.store(ptr::null_mut(), Ordering::Release);
                return Err(e);
            }
        }
        {
            let mut inner = subs.lock.lock();
            if inner.dead {
                drop(inner);
                iv.owner.store(ptr::null_mut(), Ordering::Release);
                return Err(Error::Dead);
            }
            subs.get_ref();
            iv.owner.store(
                mm.subscriptions_raw().map_addr(|a| a | BUSY),
                Ordering::Release,
            );
            iv.start.store(start, Ordering::Relaxed);
            iv.last.store(end - 1, Ordering::Relaxed);
            subs.intervals.fetch_add(1, Ordering::Relaxed);
            subs.has_itree.store(true, Ordering::Relaxed);
            let p = self.raw();
            let seq = subs.invalidate_seq.load(Ordering::Relaxed);
            if inner.active_invalidate_ranges != 0 {
                // An invalidation in flight may cover this range for all we know.
                if seq & 1 == 1 {
                    // The tree is being walked: defer (C-13).
                    // SAFETY: the interval is pinned and stays valid until it is taken
                    // off the list (remove and drop take it off or wait for it).
                    inner.deferred.push_back(unsafe { UnsafeRef::from_raw(p) });
                } else {
                    subs.invalidate_seq.store(seq | 1, Ordering::Release);
                    // SAFETY: lock held; `p` is in no tree, pinned and valid until its
                    // removal; `invalidate_seq` is even, so no invalidation walks a
                    // frozen snapshot (walks happen only while it is odd).
                    unsafe { inner.itree.insert(NonNull::new_unchecked(p)) };
                    iv.in_tree.store(true, Ordering::Relaxed);
                }
                // Odd: `read_begin` waits for the in-flight invalidations.
                iv.invalidate_seq.store(
                    subs.invalidate_seq.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            } else {
                // Odd, different from the current sequence, and far from where it will
                // wrap to.
                iv.invalidate_seq
                    .store(seq.wrapping_sub(1), Ordering::Relaxed);
                // SAFETY: lock held; `p` is in no tree, pinned and valid until its
                // removal; no invalidation is in flight through the tree, so no
                // snapshot is in use.
                unsafe { inner.itree.insert(NonNull::new_unchecked(p)) };
                iv.in_tree.store(true, Ordering::Relaxed);
            }
        }
        // An invalidation that started before `has_itree` was set skipped the tree
        // without counting itself in `active_invalidate_ranges`, so nothing above saw
        // it. Wait for it, so that no invalidation this interval missed is still
        // changing page tables once we return (Linux gets the same from
        // `mm_take_all_locks` in the registration the first insertion does). Not only
        // the insertion that set `has_itree` waits: one that comes just after it and
        // finds the flag set must wait for the same invalidations (C-09). Once a grace
        // period has passed since the flag was set, the tree is armed and insertions
        // no longer wait.
        if must_wait {
            task::annotate_wait::<P>();
            subs.synchronize_inflight();
            AddressSpace::wait_unbracketed(subs);
            subs.itree_armed.store(true, Ordering::Release);
        }
        let cur = iv.owner.load(Ordering::Acquire);
        iv.owner
            .store(cur.map_addr(|a| a & !BUSY), Ordering::Release);
        Ok(())
    }

    /// Stop covering (Linux: `mmu_interval_notifier_remove`). If an invalidation is
    /// walking the tree the removal is deferred and this waits for it to end; when it
    /// returns no callback of this subscriber runs or will run (C-13, C-03). May sleep.
    ///
    /// Errors: [`Error::NotRegistered`], [`Error::InCallback`], and
    /// [`Error::InvalidationHeld`] when it would wait while the calling task holds an
    /// invalidation (the one walking the tree may be its own); nothing changes then.
    pub fn remove(self: Pin<&Self>) -> Result<(), Error> {
        P::might_sleep();
        let iv = &self.interval;
        let mut cur = iv.owner.load(Ordering::Acquire);
        loop {
            if cur.addr() & !BUSY == 0 || cur.addr() & BUSY != 0 {
                return Err(Error::NotRegistered);
            }
            match iv.owner.compare_exchange(
                cur,
                cur.map_addr(|a| a | BUSY),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let Some(subs) = NonNull::new(cur) else {
            return Err(Error::NotRegistered);
        };
        if task::in_callback::<P>() {
            iv.owner.store(cur, Ordering::Release);
            return Err(Error::InCallback);
        }
        if let Err(e) = self.remove_claimed(subs, true) {
            iv.owner.store(cur, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// With `refuse_self_wait`, refuses (changing nothing) when the removal would have
    /// to wait while this task holds an invalidation, which may be the one it waits for.
    fn remove_claimed(
        &self,
        subs_ptr: NonNull<Subscriptions<P>>,
        refuse_self_wait: bool,
    ) -> Result<(), Error> {
        // SAFETY: the interval's reference keeps the subscriptions alive until
        // `put_ref` below; `subs` is not used after it.
        let subs = unsafe { subs_ptr.as_ref() };
        let iv = &self.interval;
        let p = self.raw();
        let mut wait_for = None;
        {
            let mut inner = subs.lock.lock();
            let seq = subs.invalidate_seq.load(Ordering::Relaxed);
            if seq & 1 == 1 {
                if !iv.in_tree.load(Ordering::Relaxed) {
                    // Inserted while the tree was busy and not applied yet: just take it
                    // off the deferred list.
                    // SAFETY: lock held; the interval is on the deferred list.
                    unsafe { inner.deferred.cursor_mut_from_ptr(p).remove() };
                    subs.intervals.fetch_sub(1, Ordering::Relaxed);
                } else {
                    if refuse_self_wait {
                        task::may_wait::<P>()?;
                    }
                    if !iv.deferred.is_linked() {
                        // SAFETY: pinned, valid until the deferred removal is applied,
                        // which we wait for below.
                        inner.deferred.push_back(unsafe { UnsafeRef::from_raw(p) });
                    }
                    wait_for = Some(seq);
                }
            } else {
                // SAFETY: lock held; the interval is in the tree; `invalidate_seq` is
                // even, so no frozen snapshot is in use.
                unsafe { inner.itree.remove(NonNull::new_unchecked(p)) };
                iv.in_tree.store(false, Ordering::Relaxed);
                subs.intervals.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(seq) = wait_for {
            task::annotate_wait::<P>();
            // The walk may be calling us right now: wait until the last in-flight
            // invalidation has ended and applied the removal.
            subs.wq
                .wait_until::<P>(|| subs.invalidate_seq.load(Ordering::Acquire) != seq);
            // The sequence becomes even only after the deferred changes are applied
            // (release, read above with acquire): the interval is out of the tree.
            debug_assert!(
                !iv.in_tree.load(Ordering::Relaxed),
                "C-13: remove returned while the interval is still in the tree"
            );
            // And the applier's critical section is over before the caller may free
            // the interval.
            drop(subs.lock.lock());
        }
        // No new `read_begin` reaches the subscriptions through us from here; wait for
        // those that did (the store, then the load of `readers`: see `read_begin`).
        iv.owner.store(ptr::null_mut(), Ordering::SeqCst);
        crate::primitive::seqcst_rmw_then_load();
        while iv.readers.load(Ordering::SeqCst) != 0 {
            P::relax();
        }
        // SAFETY: the reference taken at insert, dropped once, through the pointer
        // loaded from `owner`.
        unsafe { Subscriptions::put_ref(subs_ptr) };
        Ok(())
    }
}

impl<T: IntervalOps<Interval<P>>, P: Platform> Deref for IntervalSubscriber<T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<T: IntervalOps<Interval<P>>, P: Platform> Drop for IntervalSubscriber<T, P> {
    fn drop(&mut self) {
        let p = self
            .interval
            .owner
            .load(Ordering::Acquire)
            .map_addr(|a| a & !BUSY);
        if let Some(subs) = NonNull::new(p) {
            if task::busy::<P>() {
                P::report_bug(Bug::DropInCallback);
            }
            // The memory goes after this: wait even if that may never end.
            let _ = self.remove_claimed(subs, false);
        }
    }
}
