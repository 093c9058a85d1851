//! A counting global allocator: how many allocations (and bytes) the *calling thread*
//! made while it ran a closure. Install it with
//! `#[global_allocator] static A: CountingAlloc = CountingAlloc;` in a test or binary,
//! then call [`measure`].
//!
//! Counting per thread keeps the test harness's own threads (and any other thread)
//! out of the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting what armed threads allocate.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

/// What a thread allocated while armed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Allocs {
    /// Calls of `alloc`, `alloc_zeroed` and `realloc`.
    pub count: u64,
    /// Bytes requested by those calls.
    pub bytes: u64,
}

std::thread_local! {
    // Const-initialised and without destructors: touching them never allocates.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator may be called while the thread's locals are torn down.
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        let _ = BYTES.try_with(|b| b.set(b.get() + size as u64));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counting touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Run `f` and return what the calling thread allocated meanwhile. Only meaningful when
/// [`CountingAlloc`] is the global allocator (otherwise the count is zero).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    COUNT.with(|c| c.set(0));
    BYTES.with(|b| b.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    let allocs = Allocs {
        count: COUNT.with(Cell::get),
        bytes: BYTES.with(Cell::get),
    };
    (r, allocs)
}
