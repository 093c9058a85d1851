//! Bindings of `csrc/urcu_shim.c`, the liburcu baseline: a subscriber list the way a C
//! user of liburcu writes it (urcu-memb flavour, `<urcu/rculist.h>`, a mutex for
//! writers, `synchronize_rcu()` before freeing a node).

use std::ffi::{c_int, c_void};
use std::marker::PhantomData;

use notifier_core::Range;

use crate::callbacks::Callbacks;

/// `int (*)(const void *ctx, const void *range)`.
pub type StartFn = unsafe extern "C" fn(*const c_void, *const c_void) -> c_int;
/// `void (*)(const void *ctx, const void *range)`.
pub type EndFn = unsafe extern "C" fn(*const c_void, *const c_void);

/// `struct shim_list` (opaque).
#[repr(C)]
pub struct ShimList {
    _opaque: [u8; 0],
}

/// `struct shim_node` (opaque).
#[repr(C)]
pub struct ShimNode {
    _opaque: [u8; 0],
}

extern "C" {
    /// Register the calling thread as an RCU reader (nested calls count).
    pub fn shim_register_thread();
    /// Undo one `shim_register_thread`.
    pub fn shim_unregister_thread();
    /// Whether liburcu uses `sys_membarrier` (readers then issue no fence).
    pub fn shim_has_sys_membarrier() -> c_int;
    /// `sizeof(struct shim_node)`.
    pub fn shim_node_size() -> usize;
    /// A new empty list, or null.
    pub fn shim_list_new() -> *mut ShimList;
    /// Free a list and its nodes after a grace period.
    pub fn shim_list_free(l: *mut ShimList);
    /// Allocate and publish a node; null when out of memory.
    pub fn shim_add(l: *mut ShimList, ctx: *const c_void, s: StartFn, e: EndFn) -> *mut ShimNode;
    /// Unlink a node, wait for a grace period, free it.
    pub fn shim_del(l: *mut ShimList, n: *mut ShimNode);
    /// One invalidation: every start in one read-side section, every end in another.
    pub fn shim_dispatch(l: *mut ShimList, range: *const c_void) -> c_int;
    /// `iters` empty read-side sections.
    pub fn shim_read_lock_loop(iters: u64);
    /// `synchronize_rcu()`.
    pub fn shim_synchronize();

    /// Linux's algorithm (`csrc/linux_hlist.c`): a new empty list, or null.
    pub fn lx_list_new() -> *mut ShimList;
    /// Free a list and its nodes after a grace period.
    pub fn lx_list_free(l: *mut ShimList);
    /// Allocate and publish a node at the head; null when out of memory.
    pub fn lx_add(l: *mut ShimList, ctx: *const c_void, s: StartFn, e: EndFn) -> *mut ShimNode;
    /// Unlink a node, `synchronize_srcu`, free it.
    pub fn lx_del(l: *mut ShimList, n: *mut ShimNode);
    /// One invalidation: every start in one SRCU section, every end in another.
    pub fn lx_dispatch(l: *mut ShimList, range: *const c_void) -> c_int;
    /// `iters` empty SRCU read-side sections of list `l`.
    pub fn lx_read_lock_loop(l: *mut ShimList, iters: u64);
}

/// The start callback of `T`, as liburcu calls it: one indirect call into code where
/// `T::start` is inlined, like the core's vtable entry.
///
/// # Safety
///
/// `ctx` points to a live `T`; `range` to a live [`Range`].
pub unsafe extern "C" fn start_tramp<T: Callbacks>(
    ctx: *const c_void,
    range: *const c_void,
) -> c_int {
    // SAFETY: caller's contract.
    let (cb, r) = unsafe { (&*ctx.cast::<T>(), &*range.cast::<Range>()) };
    c_int::from(cb.start(r).is_err())
}

/// The end callback of `T`, see [`start_tramp`].
///
/// # Safety
///
/// As for [`start_tramp`].
pub unsafe extern "C" fn end_tramp<T: Callbacks>(ctx: *const c_void, range: *const c_void) {
    // SAFETY: caller's contract.
    let (cb, r) = unsafe { (&*ctx.cast::<T>(), &*range.cast::<Range>()) };
    cb.end(r)
}

/// The calling thread's registration as a liburcu reader, undone on drop. `!Send`:
/// it belongs to the thread.
pub struct ReaderThread {
    _not_send: PhantomData<*mut ()>,
}

impl ReaderThread {
    /// Register the calling thread (liburcu requires it of every reader thread).
    pub fn register() -> Self {
        // SAFETY: plain liburcu call; nested registrations are counted by the shim.
        unsafe { shim_register_thread() };
        ReaderThread {
            _not_send: PhantomData,
        }
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        // SAFETY: undoes the registration made by `register` on this thread.
        unsafe { shim_unregister_thread() };
    }
}

/// Whether liburcu found `sys_membarrier` (its read side then has no fence).
pub fn has_sys_membarrier() -> bool {
    // SAFETY: reads a flag liburcu set at load time.
    unsafe { shim_has_sys_membarrier() != 0 }
}

/// `iters` empty liburcu read-side sections, looped in C so that no call per section
/// is counted; `_reader` is the proof that the calling thread is registered.
pub fn read_lock_loop(_reader: &ReaderThread, iters: u64) {
    // SAFETY: the calling thread is registered (it holds a `ReaderThread`).
    unsafe { shim_read_lock_loop(iters) }
}
