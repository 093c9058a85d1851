//! The Hermit system calls this backend uses (the kernel's `sys_*` interface, as
//! exported by `libhermit.a`), and the ABI of the project's notifier hook.

use core::ffi::c_void;

/// `arch::mm::paging::unmap`: entries are cleared.
pub const EVENT_UNMAP: u32 = 0;
/// `arch::mm::paging::map` over present entries (mprotect, remap).
pub const EVENT_PROTECT: u32 = 1;
/// Before the entries change.
pub const PHASE_START: u32 = 0;
/// After the entries changed and every core's TLB was flushed.
pub const PHASE_END: u32 = 1;
/// Right after every core's TLB was flushed, before `PHASE_END` (result ignored).
pub const PHASE_TLB: u32 = 2;

/// The hook the kernel calls: `(ctx, phase, start, end, event, blockable)`; a non-zero
/// result from a non-blockable start makes the kernel leave the entries untouched.
pub type HookFn = unsafe extern "C" fn(*mut c_void, u32, usize, usize, u32, bool) -> i32;

/// What is registered with [`sys_mmu_notifier_register`] (layout shared with the
/// kernel patch).
#[repr(C)]
#[derive(Debug)]
pub struct Hook {
    /// The function.
    pub func: HookFn,
    /// Its first argument.
    pub ctx: *mut c_void,
}

/// `sys_futex_wait` flag: the timeout is relative to now (without it, Hermit reads it
/// as an absolute time since boot).
pub const FUTEX_RELATIVE: u32 = 1;

/// `struct timespec` as Hermit's futex takes it.
#[repr(C)]
#[derive(Debug)]
pub struct Timespec {
    /// Seconds.
    pub tv_sec: i64,
    /// Nanoseconds.
    pub tv_nsec: i64,
}

extern "C" {
    /// Sleep while `*address == expected` (or until the timeout, or spuriously).
    pub fn sys_futex_wait(
        address: *mut u32,
        expected: u32,
        timeout: *const Timespec,
        flags: u32,
    ) -> i32;
    /// Wake up to `count` tasks sleeping on `address`.
    pub fn sys_futex_wake(address: *mut u32, count: i32) -> i32;
    /// Let another task of this core run.
    pub fn sys_yield();
    /// The id of the running task (the project's patch: Hermit's `sys_getpid` is
    /// always 0). Ids are not reused.
    pub fn sys_mmu_task_id() -> i32;
    /// How many processors the kernel started.
    pub fn sys_get_processor_count() -> usize;
    /// The kernel's allocator.
    pub fn sys_alloc(size: usize, align: usize) -> *mut u8;
    /// Free memory from [`sys_alloc`].
    pub fn sys_dealloc(ptr: *mut u8, size: usize, align: usize);
    /// Register the notifier hook (the project's patch); null unregisters and waits
    /// until no call of the old hook runs. 0, or `-EBUSY` if one is registered.
    pub fn sys_mmu_notifier_register(hook: *mut Hook) -> i32;
    /// The physical address `addr` is mapped to, or `usize::MAX` (the project's patch).
    pub fn sys_mmu_translate(addr: usize) -> usize;
    /// Unmap the pages of `[ptr, ptr + size)` one by one and free their frames, keeping
    /// the virtual range reserved (the project's patch). `-EAGAIN` if refused.
    pub fn sys_mmu_unmap_pages(ptr: *mut u8, size: usize) -> i32;
}
