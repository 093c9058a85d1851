//! Sleepable RCU: the [`SleepableRcu`] trait a platform may implement with its native
//! SRCU, and [`Srcu`], a portable one built only on atomics and the platform's wait, so
//! that a backend without a native one is complete.
//!
//! # The algorithm
//!
//! Readers are counted, not listed. Each of [`SLOTS`] cache-line-sized slots holds two
//! pairs of counters, `lock[2]` and `unlock[2]`; a global index (`completed & 1`) says
//! which pair new readers use. A reader
//!
//! 1. reads the index, increments `lock[idx]` of *its* slot (the CPU's, or the thread's),
//!    then issues [`Platform::reader_barrier`] (B);
//! 2. on exit increments `unlock[idx]` of whatever slot it runs on then, with release
//!    ordering (C): the sums matter, not the slots.
//!
//! No lock, and no atomic read-modify-write on a cache line that other slots' readers
//! use. Where the platform gives a thread a slot of its own ([`ReaderSlot::Owned`]) an
//! increment is a plain load and store, no locked instruction at all (the hosted
//! platform does this, as liburcu's registered readers do); and where it has an
//! asymmetric heavy barrier (Linux's `membarrier`, the kernel's IPIs) barrier B may be
//! only a compiler fence, the writer paying once per grace period (`A'` below).
//!
//! A grace period (`synchronize`) issues the platform's writer barrier (A') after the
//! update it waits for, waits until the readers of the *inactive* index have left, flips
//! the index, then waits until the readers of the formerly active index have left.
//! "Have left" is checked by summing all `unlock[idx]` (acquire), a fence (A), then
//! summing all `lock[idx]`: equal sums mean that at some moment no reader of that index
//! was inside. A reader whose increment the check misses is harmless: barrier B orders
//! its increment before its reads, barrier A' orders the update before every check, so
//! it sees the update (store buffering forbids both missing each other). A reader
//! counted out left with a release increment, so its section happened before what
//! follows the grace period. This is the classic Linux SRCU
//! (`srcu_readers_active_idx_check`), with the writer's heavy barrier once per grace
//! period instead of once per check.
//!
//! The counters are also used on their own (the crate's internal `Readers`) to track
//! invalidations in flight on one address space: `start` enters, `end` leaves, possibly
//! on another CPU, and registration waits for a "grace period" of them (C-02).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::primitive::{AtomicPtr, AtomicUsize, Ordering};
use crate::sync::SleepMutex;
use crate::Platform;

/// Number of reader slots. CPUs (or threads) beyond this share slots, which costs
/// contention, never correctness.
pub const SLOTS: usize = if cfg!(loom) { 2 } else { 32 };

/// Where a reader counts itself, and how: what [`Platform::reader_slot`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderSlot {
    /// Slot `i % SLOTS`, which other threads (or the same CPU's next task) may count in
    /// at the same time: increments are atomic read-modify-writes (a locked instruction
    /// on x86). Always correct.
    Shared(usize),
    /// A slot only the calling thread counts in for now: increments are a plain load
    /// and store.
    Owned(OwnedSlot),
}

/// A slot index a thread owns (see [`ReaderSlot::Owned`]), and whether the thread's
/// read-side barrier is a compiler fence ([`light`](Self::light)).
///
/// # Invariants
///
/// The index is below [`SLOTS`]. While a thread is handed `Owned` of it, no other
/// thread is handed `Owned` of the same index or `Shared(j)` with `j % SLOTS` equal to
/// it, and the thread does not count in it from a context that interrupts its own
/// counting (a signal or interrupt handler). If it is light, the platform's
/// [`reader_barrier`](crate::Platform::reader_barrier) is a compiler fence on that
/// thread while it is handed the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedSlot(u8);

impl OwnedSlot {
    /// Slot `index` as owned by the calling thread; `None` when `index >= SLOTS`.
    ///
    /// # Safety
    ///
    /// From now until the thread gives the slot up, the thread is the only one given
    /// this index (as `Owned`, or as `Shared(j)` with `j % SLOTS == index`), it never
    /// counts in the slot from a handler that interrupts its own counting, and the slot
    /// changes hands with release/acquire ordering (the next owner must see the last
    /// owner's counts). The type's invariant holds from then on.
    pub const unsafe fn new(index: usize) -> Option<Self> {
        if index < SLOTS {
            // Below SLOTS, so it fits in a `u8` (SLOTS is 32) beside the flag.
            Some(OwnedSlot(index as u8 | Self::FENCED))
        } else {
            None
        }
    }

    /// [`new`](Self::new), for a thread whose read-side barrier is a compiler fence:
    /// the core then issues that fence itself around the slot's counts instead of
    /// calling [`Platform::reader_barrier`], which on
    /// a platform that chooses its barriers at run time has to look the choice up. The
    /// hosted platform hands these out once it has chosen `membarrier`.
    ///
    /// # Safety
    ///
    /// What [`new`](Self::new) asks, and: while the thread is handed the slot, its
    /// platform's `reader_barrier` is a compiler fence (its `writer_barrier` makes a
    /// compiler fence on the read side enough, as `membarrier` does).
    pub const unsafe fn new_light(index: usize) -> Option<Self> {
        if index < SLOTS {
            Some(OwnedSlot(index as u8))
        } else {
            None
        }
    }

    /// Not light (see [`new_light`](Self::new_light)).
    const FENCED: u8 = 0x80;

    /// The slot's index, below [`SLOTS`].
    pub const fn index(self) -> usize {
        (self.0 & !Self::FENCED) as usize
    }

    /// Whether the thread's read-side barrier is a compiler fence (made by
    /// [`new_light`](Self::new_light)).
    pub const fn light(self) -> bool {
        self.0 & Self::FENCED == 0
    }

    /// The same slot, not light: what a platform hands out when it passes on another
    /// platform's slots but has barriers of its own (a light slot would let the core
    /// skip its `reader_barrier`).
    ///
    /// ```
    /// # use notifier_core::srcu::OwnedSlot;
    /// // SAFETY: a doctest's only thread, and no platform counts in the slot.
    /// let light = unsafe { OwnedSlot::new_light(3) }.unwrap();
    /// assert!(light.light() && !light.fenced().light());
    /// assert_eq!(light.fenced().index(), 3);
    /// ```
    pub const fn fenced(self) -> Self {
        OwnedSlot(self.0 | Self::FENCED)
    }
}

/// The read-side barrier B of a section counted in `slot` (see [`Readers::enter`]): a
/// compiler fence where the slot says that is the platform's barrier (its invariant),
/// the platform's otherwise.
#[inline(always)]
fn reader_barrier<P: Platform>(slot: ReaderSlot) {
    match slot {
        ReaderSlot::Owned(o) if o.light() => {
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst)
        }
        _ => P::reader_barrier(),
    }
}

/// A sleepable RCU domain.
///
/// # Safety
///
/// `synchronize` must not return before every read-side section that began before it
/// was called has ended; callbacks queued by `call` must run only after such a grace
/// period, and `barrier` must not return before every callback queued before it ran.
pub unsafe trait SleepableRcu: Sync + 'static {
    /// Proof that the caller is inside a read-side section. Must be `!Send`.
    type Guard<'a>
    where
        Self: 'a;

    /// Enter a read-side section; it ends when the guard is dropped. Never sleeps,
    /// takes no lock.
    fn read_lock(&self) -> Self::Guard<'_>;

    /// Wait for a grace period. May sleep.
    fn synchronize(&self);

    /// Run `func(head)` after a grace period, without waiting for it. Callable from
    /// any context, including inside a read-side section; never allocates.
    ///
    /// # Safety
    ///
    /// `head` stays valid and is not queued again until `func` has been called with it.
    unsafe fn call(&self, head: NonNull<RcuHead>, func: RcuFn);

    /// Wait until every callback queued before this call has run. May sleep.
    fn barrier(&self);
}

/// The link a deferred free is queued by (Linux: `struct rcu_head`): two words,
/// embedded in the object to free.
///
/// It is laid out as Linux's `struct callback_head` (a next pointer, then a C function
/// pointer taking the head), and [`RcuFn`] has the C calling convention, so a kernel
/// platform can hand both straight to its native `call_srcu`.
///
/// # Invariants
///
/// `func` is written only by [`SleepableRcu::call`] before the head is published with
/// release ordering, and read only after the list is taken with acquire ordering.
#[repr(C)]
pub struct RcuHead {
    next: AtomicPtr<RcuHead>,
    func: UnsafeCell<Option<RcuFn>>,
}

/// What a deferred callback is: a C function taking the head (Linux: `rcu_callback_t`),
/// so that a native SRCU can call it. A panic inside it aborts.
pub type RcuFn = unsafe extern "C" fn(NonNull<RcuHead>);

// `struct callback_head`: two pointers.
#[cfg(not(loom))]
const _: () = assert!(
    core::mem::size_of::<RcuHead>() == 2 * core::mem::size_of::<usize>()
        && core::mem::align_of::<RcuHead>() == core::mem::align_of::<usize>()
        && core::mem::offset_of!(RcuHead, func) == core::mem::size_of::<usize>()
);

// SAFETY: `func` is accessed by one thread at a time, ordered by the release/acquire
// pair on the deferred list (type invariant).
unsafe impl Sync for RcuHead {}
// SAFETY: plain data.
unsafe impl Send for RcuHead {}

impl RcuHead {
    /// An unqueued head.
    pub fn new() -> Self {
        RcuHead {
            next: AtomicPtr::new(ptr::null_mut()),
            func: UnsafeCell::new(None),
        }
    }
}

impl Default for RcuHead {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-slot counters, one cache line each.
#[repr(align(64))]
struct Slot {
    lock: [AtomicUsize; 2],
    unlock: [AtomicUsize; 2],
}

impl Slot {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Slot {
            lock: [AtomicUsize::new(0), AtomicUsize::new(0)],
            unlock: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }
    #[cfg(loom)]
    fn new() -> Self {
        Slot {
            lock: [AtomicUsize::new(0), AtomicUsize::new(0)],
            unlock: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }
}

/// Reader counters with the grace-period check: the heart of [`Srcu`], also used bare
/// to track invalidations in flight.
///
/// # Invariants
///
/// For each index, the sum of `lock[idx]` over all slots minus the sum of
/// `unlock[idx]` is the number of readers inside that entered with `idx` (wrapping).
/// `completed` only grows, under `gp`.
pub(crate) struct Readers {
    completed: AtomicUsize,
    slots: [Slot; SLOTS],
    gp: SleepMutex,
}

/// What [`Readers::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Every section entered before the cookie has exited.
    Done,
    /// Some such section is still inside.
    NotYet,
    /// Another thread holds the grace-period mutex.
    Busy,
}

/// Token of a read-side section entered with [`Readers::enter`]; pass it to
/// [`Readers::exit`]. Unlike an RCU guard it may be sent to another thread (an
/// invalidation can end elsewhere).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub(crate) struct ReadToken(usize);

impl ReadToken {
    /// A token of no section, for an invalidation that counted itself nowhere (never
    /// passed to `exit`).
    pub(crate) const UNUSED: ReadToken = ReadToken(0);

    /// The token as one bit (which of the two counter pairs its section counted in).
    #[inline(always)]
    pub(crate) fn to_bit(self) -> usize {
        self.0 & 1
    }

    /// The token [`to_bit`](Self::to_bit) made `bit` of (the low bit of `bit` is read).
    #[inline(always)]
    pub(crate) fn from_bit(bit: usize) -> Self {
        ReadToken(bit & 1)
    }
}

impl Readers {
    /// Counters with no reader inside.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Readers {
            completed: AtomicUsize::new(0),
            slots: [const { Slot::new() }; SLOTS],
            gp: SleepMutex::new(crate::SleepClass::GracePeriod),
        }
    }

    /// Counters with no reader inside.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Readers {
            completed: AtomicUsize::new(0),
            slots: core::array::from_fn(|_| Slot::new()),
            gp: SleepMutex::new(crate::SleepClass::GracePeriod),
        }
    }

    #[inline]
    pub(crate) fn enter<P: Platform>(&self) -> ReadToken {
        let idx = self.completed.load(Ordering::Relaxed) & 1;
        let slot = P::reader_slot();
        match slot {
            ReaderSlot::Owned(o) => {
                // Only this thread writes the slot's counters (`OwnedSlot` invariant).
                // The index is below SLOTS already; the mask spares a bounds check.
                let c = &self.slots[o.index() % SLOTS].lock[idx];
                c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            }
            ReaderSlot::Shared(i) => {
                self.slots[i % SLOTS].lock[idx].fetch_add(1, Ordering::Relaxed);
            }
        }
        // B: order the increment before the section's reads (pairs with A).
        reader_barrier::<P>(slot);
        ReadToken(idx)
    }

    /// Leave the section of `token`. C: the release increment orders the section's
    /// accesses before it; a grace period that counts it (acquire) happens after them.
    #[inline]
    pub(crate) fn exit<P: Platform>(&self, token: ReadToken) {
        self.unlock_inc::<P>(token, Ordering::Release);
    }

    /// [`exit`](Self::exit), then order the increment before the loads the caller makes
    /// next: the exiting half of a store-then-load handshake whose other half is a
    /// [`Platform::writer_barrier`] (the zombie sweep, `Subscriptions::sweep_zombies`).
    #[inline]
    pub(crate) fn exit_then_load<P: Platform>(&self, token: ReadToken) {
        match self.unlock_inc::<P>(token, Ordering::SeqCst) {
            // A plain store: the barrier orders it before the loads.
            slot @ ReaderSlot::Owned(_) => reader_barrier::<P>(slot),
            ReaderSlot::Shared(_) => crate::primitive::seqcst_rmw_then_load(),
        }
    }

    /// Count the exit of `token`'s section; returns the slot it counted in: a plain
    /// store for an owned slot, a read-modify-write with `order` for a shared one.
    #[inline]
    fn unlock_inc<P: Platform>(&self, token: ReadToken, order: Ordering) -> ReaderSlot {
        let slot = P::reader_slot();
        match slot {
            ReaderSlot::Owned(o) => {
                // Only this thread writes the slot's counters (`OwnedSlot` invariant).
                let c = &self.slots[o.index() % SLOTS].unlock[token.0 & 1];
                c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
            }
            ReaderSlot::Shared(i) => {
                // SeqCst where asked (on x86 the same locked add as Release): a load the
                // exiting reader makes afterwards is ordered after it.
                self.slots[i % SLOTS].unlock[token.0 & 1].fetch_add(1, order);
            }
        }
        slot
    }

    fn idle(&self, idx: usize) -> bool {
        let mut unlocks = 0usize;
        for s in &self.slots {
            unlocks = unlocks.wrapping_add(s.unlock[idx].load(Ordering::Acquire));
        }
        // A: every unlock counted above happened before the locks counted below are read.
        // A plain fence: what pairs with the readers' barrier B is the writer barrier
        // every caller issues after the update it waits for and before its first check
        // (A' in `synchronize` and `poll`); a check repeated in a wait loop follows it
        // too. Linux's `srcu_readers_active_idx_check` has `smp_mb()` here because its
        // readers' barriers are full fences, so any full fence pairs with them.
        crate::primitive::fence(Ordering::SeqCst);
        let mut locks = 0usize;
        for s in &self.slots {
            locks = locks.wrapping_add(s.lock[idx].load(Ordering::Relaxed));
        }
        locks == unlocks
    }

    fn wait_idle<P: Platform>(&self, idx: usize) {
        let mut spins = 0u32;
        while !self.idle(idx) {
            spins = spins.saturating_add(1);
            if spins < 64 {
                crate::primitive::spin_hint();
            } else {
                P::relax();
            }
        }
    }

    /// A cookie for [`poll`](Self::poll): once `poll(cookie)` is true, every section
    /// entered before this call has exited.
    pub(crate) fn cookie(&self) -> usize {
        // The caller's updates before `completed` is read: a flip we do not see is
        // then followed, under the grace-period mutex, by a writer barrier that comes
        // after our updates, and the checks that lead to the next flip follow it (see
        // `poll`). A plain fence suffices for that order.
        crate::primitive::fence(Ordering::SeqCst);
        self.completed.load(Ordering::Acquire).wrapping_add(2)
    }

    /// A non-blocking step of a grace period (never sleeps, never spins): flips the
    /// index when the inactive one is idle, at most twice. True once two flips have
    /// happened since `cookie` was taken: each flip waits for the readers of the index
    /// it reuses, so after two every reader that entered before the cookie has left
    /// (Linux: `poll_state_synchronize_srcu`). False when another thread holds the
    /// grace-period mutex: that thread makes the progress.
    pub(crate) fn poll<P: Platform>(&self, cookie: usize) -> Poll {
        for _ in 0..2 {
            if (self.completed.load(Ordering::Acquire).wrapping_sub(cookie) as isize) >= 0 {
                return Poll::Done;
            }
            let Some(_gp) = self.gp.try_lock::<P>() else {
                return Poll::Busy;
            };
            // A': the writer barrier (the heavy one of an asymmetric pair) after every
            // update made before the cookie, *and after the last flip*, before the
            // check that allows the next flip. A check that followed only a barrier
            // older than the last flip could miss a reader that entered before a cookie
            // taken just before that flip.
            P::writer_barrier();
            let c = self.completed.load(Ordering::Relaxed);
            if !self.idle((c & 1) ^ 1) {
                return Poll::NotYet;
            }
            self.completed.store(c.wrapping_add(1), Ordering::Release);
            crate::primitive::fence(Ordering::SeqCst);
        }
        if (self.completed.load(Ordering::Acquire).wrapping_sub(cookie) as isize) >= 0 {
            Poll::Done
        } else {
            Poll::NotYet
        }
    }

    /// Whether nobody holds the grace-period mutex right now.
    pub(crate) fn gp_free(&self) -> bool {
        self.gp.is_free()
    }

    /// Wait until every section entered before this call has exited. May sleep.
    pub(crate) fn synchronize<P: Platform>(&self) {
        P::might_sleep();
        let _gp = self.gp.lock::<P>();
        // A': the caller's updates (and, under the mutex, the last flip) before any
        // counter is read. The only writer barrier of the grace period (with
        // `membarrier` as the heavy half, the one that interrupts running readers):
        // every check below follows it, and the flip below is preceded by a check
        // that follows it (see `poll` for why that matters).
        P::writer_barrier();
        let idx = (self.completed.load(Ordering::Relaxed) & 1) ^ 1;
        // Readers still on the inactive index entered before the previous flip.
        self.wait_idle::<P>(idx);
        self.completed.fetch_add(1, Ordering::Relaxed);
        // A reader that reads the new index entered after A' and sees the updates;
        // the plain fence only orders the flip before the checks below.
        crate::primitive::fence(Ordering::SeqCst);
        self.wait_idle::<P>(idx ^ 1);
        // Every reader counted out left with a release increment that the checks read
        // with acquire: what follows the grace period is ordered after their sections.
        crate::primitive::fence(Ordering::SeqCst);
    }
}

impl Default for Readers {
    fn default() -> Self {
        Self::new()
    }
}

/// Reader counters on their own, without an RCU's callbacks: what a platform keeps for
/// the invalidations that find nobody subscribed to their address space (see
/// [`Platform::unsubscribed`]). Such an invalidation counts itself here instead of in a
/// word of the address space, so that it costs no locked instruction on a platform with
/// owned reader slots, and the first registration waits for a grace period of these
/// counters before it returns (C-02).
///
/// ```
/// use notifier_core::srcu::ReaderCounts;
///
/// // One static per platform, returned by its `Platform::unsubscribed`.
/// static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();
/// ```
pub struct ReaderCounts {
    readers: Readers,
}

impl Default for ReaderCounts {
    fn default() -> Self {
        Self::new()
    }
}

impl ReaderCounts {
    /// Counters nobody is inside.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        ReaderCounts {
            readers: Readers::new(),
        }
    }

    /// Counters nobody is inside.
    #[cfg(loom)]
    pub fn new() -> Self {
        ReaderCounts {
            readers: Readers::new(),
        }
    }

    #[inline]
    pub(crate) fn enter<P: Platform>(&self) -> ReadToken {
        self.readers.enter::<P>()
    }

    #[inline]
    pub(crate) fn exit<P: Platform>(&self, token: ReadToken) {
        self.readers.exit::<P>(token);
    }

    /// Wait until every section entered before this call has exited. May sleep.
    pub(crate) fn synchronize<P: Platform>(&self) {
        self.readers.synchronize::<P>();
    }
}

/// The portable sleepable RCU domain.
///
/// Callbacks queued with [`SleepableRcu::call`] are run by the next grace period that
/// *starts* after they were queued (at its end, on the thread that waited for it), or by
/// [`barrier`](SleepableRcu::barrier). They must therefore not take locks that a caller
/// of `synchronize` may hold (the rule Linux has for RCU callbacks).
///
/// ```
/// use notifier_core::srcu::SleepableRcu;
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::Platform;
///
/// let rcu = StdPlatform::rcu();
/// {
///     let _guard = rcu.read_lock(); // no lock taken, never sleeps
/// }
/// rcu.synchronize(); // every reader that started before has left
/// ```
pub struct Srcu<P: Platform> {
    readers: Readers,
    deferred: AtomicPtr<RcuHead>,
    pending: AtomicUsize,
    _p: PhantomData<P>,
}

impl<P: Platform> Srcu<P> {
    /// A domain with no reader and no queued callback.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Srcu {
            readers: Readers::new(),
            deferred: AtomicPtr::new(ptr::null_mut()),
            pending: AtomicUsize::new(0),
            _p: PhantomData,
        }
    }

    /// A domain with no reader and no queued callback.
    #[cfg(loom)]
    pub fn new() -> Self {
        Srcu {
            readers: Readers::new(),
            deferred: AtomicPtr::new(ptr::null_mut()),
            pending: AtomicUsize::new(0),
            _p: PhantomData,
        }
    }

    /// Run every callback of the detached list `head`.
    fn run_list(&self, mut head: *mut RcuHead) {
        while let Some(h) = NonNull::new(head) {
            // SAFETY: `h` was queued by `call`, whose caller keeps it valid until its
            // function runs; we read its fields before running it.
            // The list was taken with acquire ordering, so `func` is visible (invariant).
            let (next, func) = unsafe {
                let r = h.as_ref();
                (r.next.load(Ordering::Relaxed), *r.func.get())
            };
            if let Some(func) = func {
                // SAFETY: a grace period has elapsed since `h` was queued (callers of
                // `run_list` detach before their grace period starts); `call`'s
                // contract lets us run `func(h)` now.
                unsafe { func(h) };
            }
            self.pending.fetch_sub(1, Ordering::Release);
            head = next;
        }
    }
}

impl<P: Platform> Default for Srcu<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Read-side guard of [`Srcu`]. `!Send`: the section ends on the thread that began it.
pub struct SrcuGuard<'a, P: Platform> {
    srcu: &'a Srcu<P>,
    token: Option<ReadToken>,
    _not_send: PhantomData<*mut ()>,
}

impl<P: Platform> Drop for SrcuGuard<'_, P> {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            self.srcu.readers.exit::<P>(t);
        }
    }
}

// SAFETY: `synchronize` waits for every section entered before it (see `Readers`);
// `call`ed heads are detached before a grace period starts and run after it ends;
// `barrier` detaches everything queued so far, waits a grace period and runs it.
unsafe impl<P: Platform> SleepableRcu for Srcu<P> {
    type Guard<'a> = SrcuGuard<'a, P>;

    #[inline]
    fn read_lock(&self) -> SrcuGuard<'_, P> {
        SrcuGuard {
            srcu: self,
            token: Some(self.readers.enter::<P>()),
            _not_send: PhantomData,
        }
    }

    fn synchronize(&self) {
        // Callbacks queued before this grace period starts may run after it.
        let ready = self.deferred.swap(ptr::null_mut(), Ordering::Acquire);
        self.readers.synchronize::<P>();
        self.run_list(ready);
    }

    unsafe fn call(&self, head: NonNull<RcuHead>, func: RcuFn) {
        // SAFETY: the caller keeps `head` valid until `func` runs.
        let h = unsafe { head.as_ref() };
        // SAFETY: the head is not queued (caller's contract), so nobody else reads
        // `func`; the release CAS below publishes the write (type invariant).
        unsafe { *h.func.get() = Some(func) };
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut cur = self.deferred.load(Ordering::Relaxed);
        loop {
            h.next.store(cur, Ordering::Relaxed);
            match self.deferred.compare_exchange_weak(
                cur,
                head.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    fn barrier(&self) {
        // A concurrent `synchronize` may have taken older callbacks and still be running
        // them: wait until none is pending.
        loop {
            self.synchronize();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            P::relax();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A slot is light only when made light, `fenced` makes any slot not light, and
    /// neither changes its index.
    #[test]
    fn owned_slots_light_and_fenced() {
        for i in 0..SLOTS {
            // SAFETY: no platform counts in these slots: they are only looked at.
            let (heavy, light) = unsafe { (OwnedSlot::new(i), OwnedSlot::new_light(i)) };
            let (heavy, light) = (heavy.unwrap(), light.unwrap());
            assert!(!heavy.light());
            assert!(light.light());
            assert_eq!((heavy.index(), light.index()), (i, i));
            assert_eq!(light.fenced(), heavy);
            assert_eq!(heavy.fenced(), heavy);
        }
        // SAFETY: as above.
        let (heavy, light) = unsafe { (OwnedSlot::new(SLOTS), OwnedSlot::new_light(SLOTS)) };
        assert!(heavy.is_none() && light.is_none());
    }
}
