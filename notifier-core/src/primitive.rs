//! The atomics and cells the core is built from, taken from `core` or, when the crate is
//! compiled with `--cfg loom`, from [loom] so that every protocol can be model-checked
//! without a line of duplicated logic (the crossbeam-epoch arrangement).
//!
//! Backends name these types in their [`Platform`](crate::Platform) implementation
//! (`wait`/`wake_all` take an `AtomicU32`); outside loom they are exactly the `core`
//! types.
//!
//! [loom]: https://docs.rs/loom

cfg_if::cfg_if! {
    if #[cfg(loom)] {
        pub use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    } else {
        pub use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    }
}

/// Orders a sequentially consistent read-modify-write before a later sequentially
/// consistent load of another location, as the C++20 memory model already does for
/// two `SeqCst` operations (they are both in the single total order). loom does not
/// model `SeqCst` accesses, only `SeqCst` fences, so under loom this is that fence;
/// elsewhere it is nothing.
#[inline]
pub(crate) fn seqcst_rmw_then_load() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// Spin-loop hint; under loom a yield so that the model checker can schedule the thread
/// the spinner waits for.
#[inline]
pub(crate) fn spin_hint() {
    cfg_if::cfg_if! {
        if #[cfg(loom)] {
            loom::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}
