//! A what-if platform, for the analysis only: [`StdPlatform`] without the full fences
//! the default [`Platform::reader_barrier`] puts on the SRCU read side.
//!
//! On x86-64 every SRCU reader barrier sits next to the `fetch_add` of a reader counter,
//! which compiles to a `lock`-prefixed instruction, itself a full barrier in hardware;
//! the `mfence` after it orders nothing more there. This platform replaces it with a
//! compiler fence on x86-64 (and keeps the fence elsewhere) to measure what those fences
//! cost. It is not a recommendation as it stands: in the Rust memory model a relaxed
//! read-modify-write is not a fence, so a real platform would make the counter update
//! itself `SeqCst` or pair a light reader barrier with a heavy writer one (membarrier),
//! which the core's grace-period check would then have to use too (see RESULTS.md).

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::{compiler_fence, fence, AtomicU32, Ordering};

use notifier_core::srcu::{ReaderCounts, Srcu};
use notifier_core::std_platform::{StdPlatform, StdRawLock};
use notifier_core::{Bug, Platform};

/// [`StdPlatform`] with compiler-only SRCU reader barriers on x86-64.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fenceless;

static RCU: Srcu<Fenceless> = Srcu::new();
/// Invalidations that found nobody subscribed (`Platform::unsubscribed`).
static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();

// SAFETY: allocation, the RCU domain and the task state are `StdPlatform`'s. The barrier
// promise is kept only in x86-64 hardware (the reader's counter update is a `lock`ed
// instruction, a full barrier there), not in the Rust memory model: this what-if platform
// exists to measure what the fences cost, in benchmarks only (see the module docs).
unsafe impl Platform for Fenceless {
    type RawLock = StdRawLock;
    type Rcu = Srcu<Fenceless>;

    fn rcu() -> &'static Srcu<Fenceless> {
        &RCU
    }
    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }

    fn slot() -> usize {
        StdPlatform::slot()
    }
    fn current_task() -> usize {
        StdPlatform::current_task()
    }
    fn wait(word: &AtomicU32, expected: u32) {
        StdPlatform::wait(word, expected)
    }
    fn wake_all(word: &AtomicU32) {
        StdPlatform::wake_all(word)
    }
    fn relax() {
        StdPlatform::relax()
    }
    fn might_sleep() {
        StdPlatform::might_sleep()
    }
    fn with_task_state<R>(f: impl FnOnce(&notifier_core::task::TaskState) -> R) -> R {
        StdPlatform::with_task_state(f)
    }
    fn non_block_start() {
        StdPlatform::non_block_start()
    }
    fn non_block_end() {
        StdPlatform::non_block_end()
    }
    #[inline]
    fn reader_barrier() {
        if cfg!(target_arch = "x86_64") {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }
    fn report_bug(bug: Bug) {
        StdPlatform::report_bug(bug)
    }
    fn alloc(layout: Layout) -> Option<NonNull<u8>> {
        StdPlatform::alloc(layout)
    }
    unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract, forwarded: `ptr` came from `alloc` (which is
        // `StdPlatform::alloc`) with this layout.
        unsafe { StdPlatform::dealloc(ptr, layout) }
    }
}
