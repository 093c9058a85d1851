// SPDX-License-Identifier: GPL-2.0

//! notifier-core's [`Platform`] in Linux terms: `spinlock_t` for the writer lock,
//! `wait_var_event`/`wake_up_var` for the address-keyed wait, `might_sleep` and
//! `non_block_start`/`end` for the sleep checks (which splat under
//! `CONFIG_DEBUG_ATOMIC_SLEEP`), the CPU number for the reader slots, `kmalloc`.
//!
//! The sleepable RCU is the kernel's own SRCU ([`KernelSrcu`]: `srcu_read_lock`,
//! `synchronize_srcu`, `call_srcu`, `srcu_barrier` on one static domain of the
//! module): the core's `RcuHead` is laid out as `struct callback_head` and its
//! callbacks are C functions, so they are queued as they are.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kernel::bindings;
use kernel::types::Opaque;
use notifier_core::primitive::AtomicU32;
use notifier_core::srcu::{RcuFn, RcuHead, ReaderCounts, SleepableRcu};
use notifier_core::{Bug, LockClass, Platform, RawLock, SleepClass};

extern "C" {
    fn nk_might_sleep();
    fn nk_sleep_violations() -> kernel::ffi::c_uint;
    fn nk_non_block_start();
    fn nk_non_block_end();
    fn nk_invalidation_map_acquire();
    fn nk_invalidation_map_release();
    fn nk_sleep_lock_acquire(class: kernel::ffi::c_uint, try_lock: bool);
    fn nk_sleep_lock_release(class: kernel::ffi::c_uint);
    fn nk_cpu() -> kernel::ffi::c_uint;
    fn nk_current() -> *mut kernel::ffi::c_void;
    fn nk_relax();
    fn nk_wait(word: *mut u32, expected: u32);
    fn nk_wake_all(word: *mut u32);
    fn nk_spin_lock_init(lock: *mut bindings::spinlock_t, class: kernel::ffi::c_uint);
    fn nk_spin_lock(lock: *mut bindings::spinlock_t);
    fn nk_spin_unlock(lock: *mut bindings::spinlock_t);
    fn nk_kmalloc(size: usize) -> *mut kernel::ffi::c_void;
    fn nk_kfree(p: *mut kernel::ffi::c_void);
    fn nk_srcu_read_lock() -> kernel::ffi::c_int;
    fn nk_srcu_read_unlock(idx: kernel::ffi::c_int);
    fn nk_synchronize_srcu();
    fn nk_call_srcu(head: *mut bindings::callback_head, func: RcuFn);
    fn nk_srcu_barrier();
}

/// The Linux platform.
pub struct Kernel;

static RCU: KernelSrcu = KernelSrcu;
/// Invalidations that found nobody subscribed (`Platform::unsubscribed`).
static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();

/// The module's SRCU domain (`DEFINE_STATIC_SRCU(nk_srcu)` in `srcu.c`).
pub struct KernelSrcu;

/// A read-side section of [`KernelSrcu`]: `srcu_read_unlock` when dropped, on the task
/// that entered (hence `!Send`).
pub struct KernelSrcuGuard {
    idx: kernel::ffi::c_int,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl Drop for KernelSrcuGuard {
    fn drop(&mut self) {
        // SAFETY: `idx` came from the matching `srcu_read_lock` on this task.
        unsafe { nk_srcu_read_unlock(self.idx) }
    }
}

// The core's deferred-free link is handed to `call_srcu` as a `struct callback_head`.
const _: () = assert!(
    core::mem::size_of::<RcuHead>() == core::mem::size_of::<bindings::callback_head>()
        && core::mem::align_of::<RcuHead>() == core::mem::align_of::<bindings::callback_head>(),
    "layout mismatch: RcuHead and struct callback_head"
);

// SAFETY: the kernel's SRCU: `synchronize_srcu` waits for every read-side section that
// began before it, `call_srcu` runs its callback after a grace period, `srcu_barrier`
// waits for the callbacks queued before it.
unsafe impl SleepableRcu for KernelSrcu {
    type Guard<'a> = KernelSrcuGuard;

    fn read_lock(&self) -> KernelSrcuGuard {
        KernelSrcuGuard {
            // SAFETY: no precondition; never sleeps.
            idx: unsafe { nk_srcu_read_lock() },
            _not_send: core::marker::PhantomData,
        }
    }

    fn synchronize(&self) {
        // SAFETY: sleepable context (the core calls this from registration paths only).
        unsafe { nk_synchronize_srcu() }
    }

    unsafe fn call(&self, head: NonNull<RcuHead>, func: RcuFn) {
        // SAFETY: `head` stays valid and unqueued until `func` ran (caller's contract);
        // it has the layout of a `callback_head` (asserted above) and `func` the C
        // signature of an `rcu_callback_t`.
        unsafe { nk_call_srcu(head.as_ptr().cast(), func) }
    }

    fn barrier(&self) {
        // SAFETY: sleepable context (module teardown, `synchronize`).
        unsafe { nk_srcu_barrier() }
    }
}
static REFUSED_WHILE_BLOCKABLE: AtomicUsize = AtomicUsize::new(0);
static DROP_IN_CALLBACK: AtomicUsize = AtomicUsize::new(0);

impl Kernel {
    /// How many contract bugs subscribers committed so far ([`Platform::report_bug`]).
    pub fn bugs() -> usize {
        REFUSED_WHILE_BLOCKABLE.load(Ordering::Relaxed) + DROP_IN_CALLBACK.load(Ordering::Relaxed)
    }
}

/// How many times something that may sleep was called inside a non-blockable region
/// (`might_sleep` between `non_block_start` and `non_block_end`) so far.
pub fn sleep_violations() -> usize {
    // SAFETY: no precondition; reads a counter.
    unsafe { nk_sleep_violations() as usize }
}

// `forwarder.c` keeps `NK_LOCK_CLASSES` (4) lockdep keys, one per class.
const _: () = assert!(LockClass::ALL.len() == 4);
// And `NK_SLEEP_CLASSES` (2) lockdep maps, one per sleeping-lock class.
const _: () = assert!(SleepClass::ALL.len() == 2);

/// A `spinlock_t`.
///
/// # Invariants
///
/// `inner` was initialised by `spin_lock_init`, with the lockdep class of its
/// [`LockClass`].
pub struct KernelLock {
    inner: Opaque<bindings::spinlock_t>,
}

// SAFETY: a `spinlock_t` may be taken and released from any task.
unsafe impl Send for KernelLock {}
// SAFETY: as above; every access goes through the C lock functions.
unsafe impl Sync for KernelLock {}

// SAFETY: `spin_lock` returns only to the one holder and `spin_unlock` has release
// semantics (the kernel's locking contract).
unsafe impl RawLock for KernelLock {
    fn new() -> Self {
        Self::new_class(LockClass::Secondary)
    }

    fn new_class(class: LockClass) -> Self {
        let l = KernelLock {
            inner: Opaque::uninit(),
        };
        // The class table in `forwarder.c` has one key per class, by index.
        let index = class.index() as kernel::ffi::c_uint;
        // SAFETY: `inner` is valid for writes. A `spinlock_t` holds no pointer to
        // itself (lockdep keys it by its static class), so it may move while unlocked.
        // INVARIANT: initialised here.
        unsafe { nk_spin_lock_init(l.inner.get(), index) };
        l
    }

    fn lock(&self) {
        // SAFETY: initialised (type invariant).
        unsafe { nk_spin_lock(self.inner.get()) }
    }

    unsafe fn unlock(&self) {
        // SAFETY: initialised (type invariant), held by the caller (method contract).
        unsafe { nk_spin_unlock(self.inner.get()) }
    }
}

/// `kmalloc` returns naturally aligned blocks for power-of-two sizes: allocate the
/// smallest power of two that holds `layout` and is a multiple of its alignment.
fn kmalloc_size(layout: Layout) -> usize {
    layout.size().max(layout.align()).next_power_of_two()
}

// SAFETY: kmalloc, the one static kernel SRCU domain, the default task table keyed by `current`, smp_mb on both sides: the promises of `Platform`.
unsafe impl Platform for Kernel {
    type RawLock = KernelLock;
    type Rcu = KernelSrcu;

    /// x86-64 user addresses stay below 2^56 even with 5-level paging.
    const ADDRESS_LIMIT: usize = 1 << 56;

    fn rcu() -> &'static KernelSrcu {
        &RCU
    }

    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }

    fn slot() -> usize {
        // SAFETY: no precondition (`raw_smp_processor_id`).
        unsafe { nk_cpu() as usize }
    }

    fn current_task() -> usize {
        // SAFETY: no precondition; `current` is never null in task context.
        unsafe { nk_current() as usize }
    }

    fn wait(word: &AtomicU32, expected: u32) {
        // SAFETY: `word` is a live `u32`-sized atomic for the whole call; the C side
        // only reads it (READ_ONCE) and uses its address as the wait key.
        unsafe { nk_wait(word.as_ptr(), expected) }
    }

    fn wake_all(word: &AtomicU32) {
        // SAFETY: only the address is used, as the wait key.
        unsafe { nk_wake_all(word.as_ptr()) }
    }

    fn relax() {
        // SAFETY: called from polling loops of sleepable operations only.
        unsafe { nk_relax() }
    }

    fn might_sleep() {
        // SAFETY: no precondition; it splats if the caller is atomic.
        unsafe { nk_might_sleep() }
    }

    fn non_block_start() {
        // SAFETY: paired with `non_block_end` by the core.
        unsafe { nk_non_block_start() }
    }

    fn non_block_end() {
        // SAFETY: paired with `non_block_start` by the core.
        unsafe { nk_non_block_end() }
    }

    fn invalidation_map_acquire() {
        // SAFETY: a static lockdep map; paired with `invalidation_map_release` by the
        // core, in the same task.
        unsafe { nk_invalidation_map_acquire() }
    }

    fn invalidation_map_release() {
        // SAFETY: paired with `invalidation_map_acquire` by the core.
        unsafe { nk_invalidation_map_release() }
    }

    fn sleep_lock_acquired(class: SleepClass, try_lock: bool) {
        // SAFETY: a static lockdep map per class (forwarder.c, `NK_SLEEP_CLASSES` of
        // them, in `SleepClass::index` order; a larger index is ignored there); paired
        // with `sleep_lock_released` by the core, in the same task.
        unsafe { nk_sleep_lock_acquire(class.index() as kernel::ffi::c_uint, try_lock) }
    }

    fn sleep_lock_released(class: SleepClass) {
        // SAFETY: as above.
        unsafe { nk_sleep_lock_release(class.index() as kernel::ffi::c_uint) }
    }

    fn report_bug(bug: Bug) {
        let n = match bug {
            Bug::RefusedWhileBlockable => &REFUSED_WHILE_BLOCKABLE,
            Bug::DropInCallback => &DROP_IN_CALLBACK,
            _ => &REFUSED_WHILE_BLOCKABLE,
        };
        n.fetch_add(1, Ordering::Relaxed);
        kernel::pr_warn!("subscriber bug: {:?}\n", bug);
    }

    fn alloc(layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: `kmalloc` with a non-zero size; sleepable callers only (the core
        // allocates on registration paths).
        let p = unsafe { nk_kmalloc(kmalloc_size(layout)) }.cast::<u8>();
        let p = NonNull::new(p)?;
        // `as usize`, not `addr()`: the kernel's MSRV (1.78) predates `addr()`.
        if p.as_ptr() as usize % layout.align() != 0 {
            // SAFETY: just allocated, never handed out.
            unsafe { nk_kfree(p.as_ptr().cast()) };
            return None;
        }
        Some(p)
    }

    unsafe fn dealloc(ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: from `alloc` (caller's contract), so from `kmalloc`.
        unsafe { nk_kfree(ptr.as_ptr().cast()) }
    }
}

const _: () = assert!(
    core::mem::size_of::<bindings::spinlock_t>() == crate::layout::SPINLOCK_SIZE
        && core::mem::align_of::<bindings::spinlock_t>() == crate::layout::SPINLOCK_ALIGN,
    "layout mismatch: spinlock_t"
);
