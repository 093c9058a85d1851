//! What differs per kernel: the [`Platform`] a backend implements.
//!
//! The core needs very little from its host: a short spinning lock for the writer side
//! ([`RawLock`]), a sleepable RCU domain ([`SleepableRcu`], with a portable one in
//! [`srcu`](crate::srcu) for hosts that have none), an address-keyed wait/wake (a futex,
//! Linux's `wait_var_event`/`wake_up_var`, Hermit's `sys_futex_*`), a per-CPU or
//! per-thread slot number, the id of the running task, a "may sleep here" assertion,
//! and an allocator for the one lazily created object per address space.

use core::alloc::Layout;
use core::ptr::NonNull;

use crate::primitive::{fence, AtomicU32, Ordering};
use crate::srcu::{ReaderCounts, ReaderSlot, SleepableRcu};
use crate::task::TaskState;
use crate::Bug;

/// A lock for short writer-side critical sections that never sleep inside (Linux:
/// `spinlock_t`). It is taken on the invalidation path only per address space, never
/// globally.
///
/// # Safety
///
/// An implementation must provide mutual exclusion: between a `lock` that returned and
/// the matching `unlock`, no other `lock` returns; `unlock` must make every write of the
/// critical section visible to the next holder (release/acquire).
pub unsafe trait RawLock: Send + Sync {
    /// A new, unlocked lock.
    fn new() -> Self;
    /// A new, unlocked lock of the given class. A kernel with a lock validator gives
    /// each class its own identity (Linux: a `lock_class_key` per class, which lockdep
    /// keys its checks by), so that an order between two kinds of lock is checked, and
    /// two locks of different kinds are never mistaken for one lock taken twice. The
    /// default ignores the class.
    fn new_class(class: LockClass) -> Self
    where
        Self: Sized,
    {
        let _ = class;
        Self::new()
    }
    /// Spin (or otherwise wait without sleeping) until the lock is held.
    fn lock(&self);
    /// Release the lock.
    ///
    /// # Safety
    ///
    /// The caller holds the lock.
    unsafe fn unlock(&self);
}

/// What a [`RawLock`] protects, for a kernel's lock validator (see
/// [`RawLock::new_class`]).
///
/// ```
/// use notifier_core::LockClass;
///
/// assert_eq!(LockClass::Subscriptions.name(), "notifier_subscriptions");
/// assert_eq!(LockClass::ALL[LockClass::Secondary.index()], LockClass::Secondary);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockClass {
    /// The per-address-space lock: the subscriber list, the interval tree and its
    /// deferred changes, the zombies.
    Subscriptions,
    /// The state of one exported page (`export::ExportPage`).
    ExportPage,
    /// An export registry's list of exporters.
    ExportRegistry,
    /// A secondary MMU's own lock: a [`SpinLock`](crate::sync::SpinLock) made with
    /// [`SpinLock::new`](crate::sync::SpinLock::new), such as the one a subscriber
    /// takes around `set_seq` in its `invalidate` and around `read_retry` when it faults.
    Secondary,
}

impl LockClass {
    /// Every class, in the order of [`index`](Self::index).
    pub const ALL: [LockClass; 4] = [
        LockClass::Subscriptions,
        LockClass::ExportPage,
        LockClass::ExportRegistry,
        LockClass::Secondary,
    ];

    /// A small number, below `ALL.len()`, for a platform that keeps a table of
    /// validator keys.
    pub const fn index(self) -> usize {
        match self {
            LockClass::Subscriptions => 0,
            LockClass::ExportPage => 1,
            LockClass::ExportRegistry => 2,
            LockClass::Secondary => 3,
        }
    }

    /// The name a validator prints.
    pub const fn name(self) -> &'static str {
        match self {
            LockClass::Subscriptions => "notifier_subscriptions",
            LockClass::ExportPage => "notifier_export_page",
            LockClass::ExportRegistry => "notifier_export_registry",
            LockClass::Secondary => "notifier_secondary",
        }
    }
}

/// The core's sleeping locks (its own mutexes, built on [`Platform::wait`]), each a
/// class of its own for a lock validator: see [`Platform::sleep_lock_acquired`].
///
/// ```
/// use notifier_core::SleepClass;
///
/// assert_eq!(SleepClass::GracePeriod.name(), "notifier_grace_period");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SleepClass {
    /// The grace-period mutex of a set of reader counters: the in-flight invalidations
    /// of one address space (registration, unregistration, the zombie sweep's
    /// try-lock), or the portable SRCU domain.
    GracePeriod,
    /// The mutex that makes `AddressSpace::get` create one shared subscriber per kind.
    Get,
}

impl SleepClass {
    /// Every class, in the order of [`index`](Self::index).
    pub const ALL: [SleepClass; 2] = [SleepClass::GracePeriod, SleepClass::Get];

    /// A small number, below `ALL.len()`, for a platform that keeps a table of
    /// validator maps.
    pub const fn index(self) -> usize {
        match self {
            SleepClass::GracePeriod => 0,
            SleepClass::Get => 1,
        }
    }

    /// The name a validator prints.
    pub const fn name(self) -> &'static str {
        match self {
            SleepClass::GracePeriod => "notifier_grace_period",
            SleepClass::Get => "notifier_get",
        }
    }
}

/// Everything the core asks of its host kernel. Implemented by a zero-sized type per
/// backend; every method is an associated function, so the dispatch is static.
///
/// Default methods are correct everywhere and may be overridden for speed (the
/// asymmetric barriers) or for checking (`might_sleep`, `non_block_*`, `report_bug`).
///
/// # Safety
///
/// The core's unsafe code trusts what these functions return, so an implementation
/// must keep these promises (which is why the trait is `unsafe`, C-22):
///
/// - [`alloc`](Self::alloc) returns `None` or memory valid for `layout`, not in use
///   elsewhere, that stays valid until passed to [`dealloc`](Self::dealloc);
/// - [`rcu`](Self::rcu) returns the same domain on every call;
/// - [`with_task_state`](Self::with_task_state) passes each task its own state, the
///   same one on every call from that task;
/// - [`unsubscribed`](Self::unsubscribed) returns the same counters on every call, and
///   no other platform returns them;
/// - [`reader_slot`](Self::reader_slot) keeps [`OwnedSlot::new`]'s promise for every
///   `Owned` slot it returns, and [`OwnedSlot::new_light`]'s (this platform's
///   `reader_barrier` is a compiler fence on that thread) for every light one: a
///   platform that passes on another's slots with barriers of its own passes them on
///   [`fenced`](crate::srcu::OwnedSlot::fenced);
/// - [`reader_barrier`](Self::reader_barrier) and
///   [`writer_barrier`](Self::writer_barrier) together order memory at least as a full
///   fence on each side would.
///
/// [`OwnedSlot::new`]: crate::srcu::OwnedSlot::new
/// [`OwnedSlot::new_light`]: crate::srcu::OwnedSlot::new_light
pub unsafe trait Platform: Sized + Send + Sync + 'static {
    /// The writer-side lock.
    type RawLock: RawLock;
    /// The sleepable RCU domain that protects subscriber lists for every walker but
    /// the invalidations (whose in-flight count keeps the nodes they walk alive) and
    /// defers the frees of shared subscribers (Linux uses one static SRCU domain for
    /// all address spaces; so does this core).
    type Rcu: SleepableRcu;

    /// The page size; ranges must be multiples of it when
    /// [`REQUIRE_ALIGNMENT`](Self::REQUIRE_ALIGNMENT) is set.
    const PAGE_SIZE: usize = 4096;
    /// Whether invalidation ranges must be page aligned (C-16).
    const REQUIRE_ALIGNMENT: bool = true;
    /// One past the highest address of an address space (C-16: larger ranges overflow).
    const ADDRESS_LIMIT: usize = usize::MAX;

    /// The RCU domain, one per platform.
    fn rcu() -> &'static Self::Rcu;

    /// A small number identifying the CPU (or thread) the caller runs on. Two readers
    /// that run at the same time should get different slots for speed; correctness
    /// never depends on it, and the value may change between two calls of one thread.
    fn slot() -> usize;

    /// The reader slot the caller counts itself in, and how. The default,
    /// `ReaderSlot::Shared(Self::slot())`, is always correct: the counters are then
    /// updated with atomic read-modify-writes. A platform that can give a thread a slot
    /// of its own for a while (a registry of thread slots, as liburcu's reader
    /// registration) returns [`ReaderSlot::Owned`] and the read side takes no locked
    /// instruction; [`OwnedSlot::new`]'s contract is the promise it makes. Where this
    /// platform's [`reader_barrier`](Self::reader_barrier) is a compiler fence, an
    /// [`OwnedSlot::new_light`] slot also lets the core issue that fence itself.
    ///
    /// [`OwnedSlot::new`]: crate::srcu::OwnedSlot::new
    /// [`OwnedSlot::new_light`]: crate::srcu::OwnedSlot::new_light
    #[inline]
    fn reader_slot() -> ReaderSlot {
        ReaderSlot::Shared(Self::slot())
    }

    /// The counters of invalidations that found nobody subscribed to their address
    /// space (no per-address-space object yet): such an invalidation counts itself
    /// there, and the first registration on an address space waits for a grace period
    /// of them. One static per platform (`static UNSUBSCRIBED: ReaderCounts =
    /// ReaderCounts::new();`, returned here; see [`ReaderCounts`]), not shared with
    /// another platform: their slot numbers and their `wait`/`wake_all` need not agree.
    fn unsubscribed() -> &'static ReaderCounts;

    /// A non-zero id of the running thread or task, unique among live ones.
    fn current_task() -> usize;

    /// Run `f` on the running task's [`TaskState`]: the core's record of whether the
    /// task is inside a callback or holds an invalidation, which lets it refuse calls
    /// that would wait for the caller itself (C-16). Only the task itself ever touches
    /// its state.
    ///
    /// The default keeps states in [`TaskTable`](crate::task::TaskTable), a fixed table
    /// of [`TASK_TABLE_ENTRIES`](crate::task::TASK_TABLE_ENTRIES) keyed by
    /// [`current_task`](Self::current_task) and shared by every platform of the image
    /// that uses the default; a platform with per-task storage (a thread-local, a field
    /// of its task structure) should keep one `TaskState` per task there instead: it is
    /// faster and has no capacity limit.
    #[cfg(not(loom))]
    #[inline]
    fn with_task_state<R>(f: impl FnOnce(&TaskState) -> R) -> R {
        crate::task::DEFAULT_TABLE.with(Self::current_task(), f)
    }

    /// Run `f` on the running task's [`TaskState`] (see the non-loom docs).
    #[cfg(loom)]
    fn with_task_state<R>(f: impl FnOnce(&TaskState) -> R) -> R;

    /// Sleep while `word` holds `expected`. May return spuriously.
    fn wait(word: &AtomicU32, expected: u32);

    /// Wake every task sleeping in [`wait`](Self::wait) on `word`.
    fn wake_all(word: &AtomicU32);

    /// Called in polling loops (grace-period waits). Must let the awaited task run on a
    /// platform without time slicing.
    fn relax() {
        core::hint::spin_loop();
    }

    /// Assert that the caller may sleep (Linux: `might_sleep()`). Called at the top of
    /// every sleepable core operation.
    fn might_sleep() {}

    /// Entering a region where sleeping is a bug (a non-blockable callback; Linux:
    /// `non_block_start()`). A platform that checks `might_sleep` should flag it here.
    fn non_block_start() {}

    /// Leaving the region entered by [`non_block_start`](Self::non_block_start).
    fn non_block_end() {}

    /// Lock-validator annotation (Linux: `lock_map_acquire` of a lockdep map, as
    /// `mm/mmu_notifier.c` does around its callbacks): the calling task runs the
    /// subscriber callbacks of an invalidation's start or end until
    /// [`invalidation_map_release`](Self::invalidation_map_release). Together with
    /// [`may_wait_for_invalidations`](Self::may_wait_for_invalidations) it lets a
    /// validator report a subscriber lock that is held across a call that waits for
    /// invalidations and is also taken inside a callback: a deadlock, even in a run
    /// where the two never met. Default: nothing.
    fn invalidation_map_acquire() {}

    /// See [`invalidation_map_acquire`](Self::invalidation_map_acquire).
    fn invalidation_map_release() {}

    /// Lock-validator annotation (Linux: `lock_map_acquire` on a map per class, what
    /// `mutex_lock` does for a kernel mutex): the calling task is about to wait for one
    /// of the core's sleeping locks of `class` (`try_lock` false), or has just taken one
    /// without waiting (`try_lock` true). Paired with
    /// [`sleep_lock_released`](Self::sleep_lock_released) in the same task. Default:
    /// nothing.
    fn sleep_lock_acquired(_class: SleepClass, _try_lock: bool) {}

    /// See [`sleep_lock_acquired`](Self::sleep_lock_acquired): the lock is about to be
    /// released.
    fn sleep_lock_released(_class: SleepClass) {}

    /// Lock-validator annotation: the calling task is about to wait for invalidations in
    /// flight (`read_begin` for one that touched its interval, `remove` for a walk of
    /// the tree, a registration or first insertion for those that skipped it,
    /// unregistration and teardown for those that called the subscriber). Called only
    /// once the core has checked that the task is neither inside a callback nor holding
    /// an invalidation (those get an error instead). The default acquires and releases
    /// the invalidation map, as Linux's `mmu_interval_read_begin` does.
    fn may_wait_for_invalidations() {
        Self::invalidation_map_acquire();
        Self::invalidation_map_release();
    }

    /// Barrier on the RCU read side, paired with [`writer_barrier`](Self::writer_barrier).
    /// The default is a full fence; a platform with an asymmetric heavy barrier
    /// (membarrier, IPIs) may make this a compiler fence and do the work in
    /// `writer_barrier`.
    fn reader_barrier() {
        fence(Ordering::SeqCst);
    }

    /// Barrier on the RCU grace-period side. See [`reader_barrier`](Self::reader_barrier).
    fn writer_barrier() {
        fence(Ordering::SeqCst);
    }

    /// A subscriber broke the contract (the core carries on). Linux would `WARN`.
    fn report_bug(_bug: Bug) {}

    /// Allocate `layout` bytes (Linux: `kmalloc`), or `None`. Used once per address
    /// space, on the sleepable registration path, never on an invalidation path.
    fn alloc(layout: Layout) -> Option<NonNull<u8>>;

    /// Free memory from [`alloc`](Self::alloc).
    ///
    /// # Safety
    ///
    /// `ptr` came from `alloc(layout)` and is not used afterwards.
    unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout);
}
