//! A [`Platform`] made of loom primitives, so that the core's protocols can be
//! model-checked with `RUSTFLAGS="--cfg loom"` (see `tests/loom.rs`).
//!
//! * `RawLock`: a compare-and-set lock on a loom `AtomicBool`, spinning with
//!   `loom::thread::yield_now()` so that the model checker schedules the holder.
//! * `rcu()`: the crate's portable [`Srcu`], one per loom execution (`loom::lazy_static!`
//!   values are dropped and re-created for every execution).
//! * `slot()` / `current_task()`: a per-loom-thread id from a per-execution counter
//!   (starting at 1, so never zero). `reader_slot()`: task 1 owns reader slot 0, the
//!   others share slot 1.
//! * `wait`: a yield (spurious returns are allowed by the trait); `wake_all`: nothing.

use core::alloc::Layout;
use core::ptr::NonNull;

use loom::sync::atomic::{AtomicBool, Ordering};
use notifier_core::primitive::AtomicU32;
use notifier_core::srcu::{OwnedSlot, ReaderCounts, ReaderSlot, Srcu};
use notifier_core::{Bug, Platform, RawLock};

/// The loom platform.
pub struct LoomPlatform;

/// Test-and-set spin lock.
pub struct LoomRawLock(AtomicBool);

// SAFETY: `lock` returns only after swapping `false` to `true` with acquire ordering, so
// one holder at a time; `unlock` stores `false` with release ordering.
unsafe impl RawLock for LoomRawLock {
    fn new() -> Self {
        LoomRawLock(AtomicBool::new(false))
    }

    fn lock(&self) {
        // A compare-exchange, not a swap: with loom 0.7 a spinning `swap` kept reading
        // `true` after the holder's release store (every model that raced two lockers
        // then ran out of branches); the compare-exchange models the same lock.
        while self
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            loom::thread::yield_now();
        }
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

loom::lazy_static! {
    static ref RCU: Srcu<LoomPlatform> = Srcu::new();
    static ref UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();
    // A plain (non-loom) counter: loom runs one thread at a time, and the value only
    // names threads; reset with every execution, so executions are deterministic.
    static ref NEXT_TASK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
}

loom::thread_local! {
    static TASK: usize = NEXT_TASK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    static TASK_STATE: notifier_core::task::TaskState = notifier_core::task::TaskState::new();
}

// SAFETY: the global allocator, one lazily created domain per model execution, a loom thread-local task state, full fences: the promises of `Platform`.
unsafe impl Platform for LoomPlatform {
    type RawLock = LoomRawLock;
    type Rcu = Srcu<LoomPlatform>;

    fn rcu() -> &'static Srcu<LoomPlatform> {
        // `RCU` is a static item, so the deref is `'static` (loom's lazy static lives
        // for the whole execution).
        &RCU
    }

    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }

    fn slot() -> usize {
        TASK.with(|t| *t)
    }

    /// Task 1 owns slot 0 (plain increments); every other task shares slot 1 (atomic
    /// ones), so the models check both kinds of reader, and their mix, against every
    /// grace period.
    fn reader_slot() -> ReaderSlot {
        if TASK.with(|t| *t) == 1 {
            // SAFETY: task ids are unique within an execution, so only task 1 is
            // handed index 0, and every other task gets `Shared(1)` (1 % SLOTS is 1);
            // loom runs no handler inside a thread.
            ReaderSlot::Owned(unsafe { OwnedSlot::new(0) }.expect("SLOTS is 2 under loom"))
        } else {
            ReaderSlot::Shared(1)
        }
    }

    fn current_task() -> usize {
        TASK.with(|t| *t)
    }

    fn with_task_state<R>(f: impl FnOnce(&notifier_core::task::TaskState) -> R) -> R {
        TASK_STATE.with(f)
    }

    fn wait(_word: &AtomicU32, _expected: u32) {
        loom::thread::yield_now();
    }

    fn wake_all(_word: &AtomicU32) {}

    fn relax() {
        loom::thread::yield_now();
    }

    fn report_bug(bug: Bug) {
        panic!("the core reported a subscriber bug: {bug:?}");
    }

    fn alloc(layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the core allocates non-zero-sized types only.
        NonNull::new(unsafe { std::alloc::alloc(layout) })
    }

    unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: caller's contract: from `alloc` with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}
