//! [`SimPlatform`]: the core's [`Platform`] on the simulator.
//!
//! RCU is the core's portable [`Srcu`]; the raw lock and the waits go through the
//! scheduler (`sched`), so that in deterministic mode every spin and every sleep is a
//! scheduling point; the checks (`might_sleep` in a non-blockable region, subscriber
//! bugs) are counted per harness.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use notifier_core::srcu::{ReaderCounts, Srcu};
use notifier_core::{Bug, Platform, RawLock};

use crate::sched;

/// The simulator's platform (a zero-sized type: the state is per thread and per
/// harness, see the crate documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimPlatform;

/// One sleepable RCU domain for the whole process, as Linux has one for all address
/// spaces: a subscriber's deferred free must be waited for by any later `synchronize`.
static RCU: Srcu<SimPlatform> = Srcu::new();
/// Invalidations that found nobody subscribed (`Platform::unsubscribed`).
static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();

/// A test-and-test-and-set spin lock whose spinning is a scheduling point.
#[derive(Debug)]
pub struct SimRawLock(AtomicBool);

// SAFETY: `lock` returns only after swapping `false` to `true` with acquire ordering,
// so two holders never coexist; `unlock` stores `false` with release ordering.
unsafe impl RawLock for SimRawLock {
    fn new() -> Self {
        SimRawLock(AtomicBool::new(false))
    }

    fn lock(&self) {
        loop {
            if !self.0.swap(true, Ordering::Acquire) {
                return;
            }
            while self.0.load(Ordering::Relaxed) {
                sched::spin();
            }
        }
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
        // `spin_unlock` ends with `preempt_enable`, a preemption point: without it a
        // task that yields only while holding the lock would starve its waiters.
        sched::point();
    }
}

// SAFETY: the global allocator, one static SRCU domain, a thread-local task state (each simulated task is an OS thread), full fences: the promises of `Platform`.
unsafe impl Platform for SimPlatform {
    type RawLock = SimRawLock;
    type Rcu = Srcu<SimPlatform>;

    /// A 47-bit user address space, as on x86-64.
    const ADDRESS_LIMIT: usize = 1 << 47;

    fn rcu() -> &'static Srcu<SimPlatform> {
        &RCU
    }

    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }

    fn slot() -> usize {
        sched::thread_id()
    }

    fn current_task() -> usize {
        sched::thread_id()
    }

    /// A thread-local: every simulated task runs on an OS thread of its own.
    fn with_task_state<R>(f: impl FnOnce(&notifier_core::task::TaskState) -> R) -> R {
        std::thread_local! {
            static STATE: notifier_core::task::TaskState =
                const { notifier_core::task::TaskState::new() };
        }
        STATE.with(f)
    }

    fn wait(word: &AtomicU32, expected: u32) {
        sched::wait(word, expected);
    }

    fn wake_all(word: &AtomicU32) {
        sched::wake_all(word);
    }

    fn relax() {
        sched::spin();
    }

    fn might_sleep() {
        if sched::in_non_block() {
            sched::with_counters(|c| c.sleep_violations.fetch_add(1, Ordering::Relaxed));
        } else {
            // Where a kernel may sleep it may also be preempted.
            sched::point();
        }
    }

    fn non_block_start() {
        sched::non_block_enter();
    }

    fn non_block_end() {
        sched::non_block_exit();
    }

    fn report_bug(_bug: Bug) {
        sched::with_counters(|c| c.bugs.fetch_add(1, Ordering::Relaxed));
    }

    fn alloc(layout: Layout) -> Option<NonNull<u8>> {
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size (checked above).
        NonNull::new(unsafe { std::alloc::alloc(layout) })
    }

    unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract: `ptr` came from `alloc(layout)`, which used the
        // global allocator with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}
