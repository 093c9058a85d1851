//! A what-if platform, for the analysis only: [`StdPlatform`] with full fences on both
//! sides of every SRCU handshake, as the hosted platform had before it paired a
//! compiler fence on the read side with `membarrier` in grace periods.
//!
//! Everything else is `StdPlatform`'s, the owned reader slots included, so the
//! difference between `dispatch/core/<N>` and `dispatch/core_fenced/<N>` (and between
//! `read_side/core_srcu` and `read_side/core_srcu_fenced`) is what the read side's fences
//! cost, measured in the same run. Where the host has no `membarrier` the two platforms
//! are the same.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use notifier_core::srcu::{ReaderCounts, ReaderSlot, Srcu};
use notifier_core::std_platform::{StdPlatform, StdRawLock};
use notifier_core::{Bug, Platform};

/// [`StdPlatform`] with the default barriers: a full fence on each side.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fenced;

static RCU: Srcu<Fenced> = Srcu::new();
/// Invalidations that found nobody subscribed (`Platform::unsubscribed`).
static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();

// SAFETY: allocation, the task state and the reader slots are `StdPlatform`'s, which
// keeps those promises (a thread's owned slot is its own in every platform's counters),
// the slots passed on not light (this platform's `reader_barrier` is a full fence);
// the RCU domain and the unsubscribed counters are this platform's own statics; the
// barriers are the trait's defaults, full fences.
unsafe impl Platform for Fenced {
    type RawLock = StdRawLock;
    type Rcu = Srcu<Fenced>;

    fn rcu() -> &'static Srcu<Fenced> {
        &RCU
    }
    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }
    fn slot() -> usize {
        StdPlatform::slot()
    }
    /// `StdPlatform`'s slot, never light: this platform's read-side barrier is a full
    /// fence, which a light slot would let the core skip.
    #[inline]
    fn reader_slot() -> ReaderSlot {
        match StdPlatform::reader_slot() {
            ReaderSlot::Owned(o) => ReaderSlot::Owned(o.fenced()),
            shared => shared,
        }
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
    #[inline]
    fn might_sleep() {
        StdPlatform::might_sleep()
    }
    #[inline]
    fn with_task_state<R>(f: impl FnOnce(&notifier_core::task::TaskState) -> R) -> R {
        StdPlatform::with_task_state(f)
    }
    fn non_block_start() {
        StdPlatform::non_block_start()
    }
    fn non_block_end() {
        StdPlatform::non_block_end()
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

#[cfg(test)]
mod tests {
    use super::*;
    use notifier_core::srcu::SleepableRcu;

    /// A light slot would let the core skip this platform's full fence: the what-if
    /// rows would then measure the hosted platform again.
    #[test]
    fn slots_passed_on_are_never_light() {
        drop(Fenced::rcu().read_lock());
        match Fenced::reader_slot() {
            ReaderSlot::Owned(o) => assert!(!o.light(), "{o:?}"),
            ReaderSlot::Shared(_) => assert!(!StdPlatform::asymmetric_barriers()),
        }
    }
}
