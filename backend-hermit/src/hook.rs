//! [`KernelMm`]: the unikernel's one address space, fed by the kernel's page-table hook.
//!
//! The patched kernel calls the hook twice per change, from the task that changes the
//! entries and with nothing else of its own in between: `PHASE_START` before present
//! entries change, `PHASE_END` after every core's TLB was flushed. The core's
//! [`Invalidation`] returned by the start is parked in a slot keyed by (task, range)
//! until the end finds it, so `end` gets exactly the range and event of its start
//! (C-07).

use core::cell::UnsafeCell;
use core::ffi::c_void;

use notifier_core::{AddressSpace, Error, Event, Invalidation, Range};
use spin::mutex::SpinMutex;

use crate::platform::{HermitPlatform as P, Yield};
use crate::sys;

/// Invalidations in flight at once (one per task changing page tables at a time).
const SLOTS: usize = 32;

struct Pending {
    task: usize,
    start: usize,
    end: usize,
    inv: Invalidation<'static, P>,
}

// SAFETY: an `Invalidation` refers to the address space's `Subscriptions`, which are
// shared between tasks by design (atomics and locks); ending it from the slot is what
// the task that started it does, only after parking it here.
unsafe impl Send for Pending {}

/// Why [`KernelMm::attach`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// Another hook is registered with the kernel (`-EBUSY`).
    Busy,
    /// The kernel refused with this error number.
    Kernel(i32),
}

/// The unikernel's address space as the notifier core sees it.
pub struct KernelMm {
    space: AddressSpace<P>,
    /// `(real start, real end, seen start)`: only changes inside the real window are
    /// reported, moved to start at `seen start` (a test harness's view); `None`: all
    /// changes, at their own addresses.
    window: Option<(usize, usize, usize)>,
    hook: UnsafeCell<sys::Hook>,
    slots: [SpinMutex<Option<Pending>, Yield>; SLOTS],
}

// SAFETY: `hook` is written only in `attach`, before the kernel learns its address,
// and read only by the kernel afterwards; everything else is `Sync`.
unsafe impl Sync for KernelMm {}
// SAFETY: the only non-`Send` field is the hook's raw `ctx`, which points at the
// `KernelMm` itself and is used by the kernel only while it is attached.
unsafe impl Send for KernelMm {}

impl core::fmt::Debug for KernelMm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KernelMm")
            .field("dead", &self.space.is_dead())
            .finish()
    }
}

impl Default for KernelMm {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelMm {
    /// A new address space, not yet attached to the kernel.
    pub fn new() -> Self {
        KernelMm {
            space: AddressSpace::new(),
            window: None,
            hook: UnsafeCell::new(sys::Hook {
                func: on_change,
                ctx: core::ptr::null_mut(),
            }),
            slots: [const { SpinMutex::new(None) }; SLOTS],
        }
    }

    /// An address space that sees only `[real, real + len)`, as if it started at
    /// `seen` (the conformance suite chooses its own addresses; Hermit chooses where
    /// memory is mapped).
    pub fn with_window(real: usize, len: usize, seen: usize) -> Self {
        KernelMm {
            window: Some((real, real + len, seen)),
            ..Self::new()
        }
    }

    /// What secondary MMUs register on.
    pub fn address_space(&self) -> &AddressSpace<P> {
        &self.space
    }

    /// Register with the kernel: from now on every change of present page-table
    /// entries is bracketed on [`address_space`](Self::address_space).
    pub fn attach(&'static self) -> Result<(), AttachError> {
        // SAFETY: nobody else reads `hook` before the kernel gets its address below
        // (a second `attach` gets `-EBUSY` and writes the same values).
        unsafe { (*self.hook.get()).ctx = self as *const KernelMm as *mut c_void };
        // SAFETY: `hook` lives as long as `self`, which is `'static`.
        match unsafe { sys::sys_mmu_notifier_register(self.hook.get()) } {
            0 => Ok(()),
            -16 => Err(AttachError::Busy),
            e => Err(AttachError::Kernel(e)),
        }
    }

    /// Teardown: every subscriber's `release` (C-04), then unregister from the kernel,
    /// which waits until no call of the hook is running.
    pub fn detach(&'static self) {
        self.space.release();
        // SAFETY: null unregisters; always valid.
        unsafe { sys::sys_mmu_notifier_register(core::ptr::null_mut()) };
    }

    fn start(&'static self, start: usize, end: usize, event: u32, blockable: bool) -> i32 {
        let event = match event {
            sys::EVENT_UNMAP => Event::Unmap,
            _ => Event::ProtectionVma,
        };
        let (seen_start, seen_end) = match self.window {
            None => (start, end),
            Some((lo, hi, seen)) => {
                if end <= lo || start >= hi {
                    // Outside the window: nothing to tell, nothing to end.
                    return 0;
                }
                (start.max(lo) - lo + seen, end.min(hi) - lo + seen)
            }
        };
        let mut range = Range::new(seen_start, seen_end, event);
        if !blockable {
            range = range.non_blocking();
        }
        let inv = match self.space.invalidate_range_start(range) {
            Ok(inv) => inv,
            // Refused (C-08): the kernel leaves the entries untouched.
            Err(Error::WouldBlock) => return 1,
            // Nothing to bracket (a range the core rejects, e.g. the top page): let the
            // kernel go on; there is no end to call.
            Err(_) => return 0,
        };
        let task = P::current_task_id();
        let mut pending = Some(Pending {
            task,
            start,
            end,
            inv,
        });
        loop {
            for slot in &self.slots {
                if let Some(mut s) = slot.try_lock() {
                    if s.is_none() {
                        *s = pending.take();
                        return 0;
                    }
                }
            }
            if !blockable {
                // No slot and no way to wait: end what was started and refuse.
                drop(pending);
                return 1;
            }
            P::yield_now();
        }
    }

    fn end(&self, start: usize, end: usize) {
        let task = P::current_task_id();
        for slot in &self.slots {
            let mut s = slot.lock();
            if s.as_ref()
                .is_some_and(|p| p.task == task && p.start == start && p.end == end)
            {
                let p = s.take();
                drop(s);
                if let Some(p) = p {
                    p.inv.end();
                }
                return;
            }
        }
    }
}

/// The function the kernel calls (see [`sys::HookFn`]).
unsafe extern "C" fn on_change(
    ctx: *mut c_void,
    phase: u32,
    start: usize,
    end: usize,
    event: u32,
    blockable: bool,
) -> i32 {
    // SAFETY: `ctx` is the `&'static KernelMm` that `attach` registered.
    let mm: &'static KernelMm = unsafe { &*(ctx as *const KernelMm) };
    match phase {
        sys::PHASE_START => mm.start(start, end, event, blockable),
        _ => {
            mm.end(start, end);
            0
        }
    }
}
