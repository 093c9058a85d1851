//! [`HermitPlatform`]: what the core needs, on Hermit's primitives.
//!
//! Hermit pins each task to a core and never preempts it: any loop that waits for
//! another task must yield, or the awaited task (maybe on the same core) never runs.
//! So the lock's relax strategy, [`Platform::relax`] and the futex fallback all call
//! `sys_yield`.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use notifier_core::srcu::{ReaderCounts, Srcu};
use notifier_core::{Bug, Platform, RawLock};

use crate::sys;

/// The Hermit platform.
#[derive(Debug, Clone, Copy, Default)]
pub struct HermitPlatform;

static RCU: Srcu<HermitPlatform> = Srcu::new();
/// Invalidations that found nobody subscribed (`Platform::unsubscribed`).
static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();

/// `spin`'s relax strategy for Hermit: give the core to another task.
#[derive(Debug)]
pub struct Yield;

impl spin::RelaxStrategy for Yield {
    fn relax() {
        // SAFETY: `sys_yield` takes no argument and may be called from any task.
        unsafe { sys::sys_yield() }
    }
}

/// The writer-side lock: a `spin` mutex that yields while it waits.
pub struct HermitRawLock(spin::mutex::SpinMutex<(), Yield>);

impl core::fmt::Debug for HermitRawLock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HermitRawLock")
            .field("locked", &self.0.is_locked())
            .finish()
    }
}

// SAFETY: `SpinMutex::lock` returns only when this caller set the lock word with
// acquire ordering; `force_unlock` clears it with release ordering. The guard is
// forgotten in `lock`, so the lock stays held until `unlock`.
unsafe impl RawLock for HermitRawLock {
    fn new() -> Self {
        HermitRawLock(spin::mutex::SpinMutex::new(()))
    }
    fn lock(&self) {
        core::mem::forget(self.0.lock());
    }
    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock (the trait's contract), taken by `lock`,
        // whose guard was forgotten.
        unsafe { self.0.force_unlock() }
    }
}

/// Per-task depth of non-blockable regions, indexed by task id (tasks of one image
/// are few; two live tasks sharing a slot would only blur the count).
const TASK_SLOTS: usize = 256;
static NON_BLOCK: [AtomicUsize; TASK_SLOTS] = [const { AtomicUsize::new(0) }; TASK_SLOTS];
static SLEEP_VIOLATIONS: AtomicUsize = AtomicUsize::new(0);
static BUGS: AtomicUsize = AtomicUsize::new(0);

fn task_id() -> usize {
    // SAFETY: no argument; callable from any task. (Not `sys_getpid`: it is always 0
    // in Hermit, which made every task look like the same one to the core.)
    unsafe { sys::sys_mmu_task_id() as usize }
}

impl HermitPlatform {
    /// How many times something that may sleep ran inside a non-blockable region.
    pub fn sleep_violations() -> usize {
        SLEEP_VIOLATIONS.load(Ordering::Relaxed)
    }

    /// How many subscriber bugs the core reported.
    pub fn bugs() -> usize {
        BUGS.load(Ordering::Relaxed)
    }

    /// The number of processors Hermit started.
    pub fn processors() -> usize {
        // SAFETY: no argument; callable from any task.
        unsafe { sys::sys_get_processor_count() }
    }

    /// The running task's id as the core sees it (non-zero).
    pub fn current_task_id() -> usize {
        task_id() + 1
    }

    /// Let another task run.
    pub fn yield_now() {
        // SAFETY: no argument; callable from any task.
        unsafe { sys::sys_yield() }
    }
}

// SAFETY: the kernel allocator, one static SRCU domain, the default task table keyed by the real task id, full fences: the promises of `Platform`.
unsafe impl Platform for HermitPlatform {
    type RawLock = HermitRawLock;
    type Rcu = Srcu<HermitPlatform>;

    fn rcu() -> &'static Srcu<HermitPlatform> {
        &RCU
    }

    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }

    fn slot() -> usize {
        task_id()
    }

    fn current_task() -> usize {
        task_id() + 1
    }

    fn wait(word: &AtomicU32, expected: u32) {
        // A timeout bounds the cost of a lost wake-up in a buggy caller.
        let timeout = sys::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        // SAFETY: `word` is a live `AtomicU32`, which has the layout of a `u32`; the
        // kernel only reads it atomically and uses its address as the key.
        let r =
            unsafe { sys::sys_futex_wait(word.as_ptr(), expected, &timeout, sys::FUTEX_RELATIVE) };
        if r != 0 {
            // Not slept (value changed, timeout, or an error): let others run anyway,
            // so that a caller's retry loop never starves the task it waits for.
            Self::yield_now();
        }
    }

    fn wake_all(word: &AtomicU32) {
        // SAFETY: the address is only used as the key.
        unsafe { sys::sys_futex_wake(word.as_ptr(), i32::MAX) };
    }

    fn relax() {
        Self::yield_now();
    }

    fn might_sleep() {
        if NON_BLOCK[task_id() % TASK_SLOTS].load(Ordering::Relaxed) != 0 {
            SLEEP_VIOLATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn non_block_start() {
        NON_BLOCK[task_id() % TASK_SLOTS].fetch_add(1, Ordering::Relaxed);
    }

    fn non_block_end() {
        NON_BLOCK[task_id() % TASK_SLOTS].fetch_sub(1, Ordering::Relaxed);
    }

    fn report_bug(_bug: Bug) {
        BUGS.fetch_add(1, Ordering::Relaxed);
    }

    fn alloc(layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the kernel allocator accepts any non-zero size and power-of-two
        // alignment, which a `Layout` of a non-zero-sized type has.
        NonNull::new(unsafe { sys::sys_alloc(layout.size(), layout.align()) })
    }

    unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract: `ptr` came from `alloc(layout)`.
        unsafe { sys::sys_dealloc(ptr.as_ptr(), layout.size(), layout.align()) }
    }
}
