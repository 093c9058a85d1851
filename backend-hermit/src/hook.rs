//! [`KernelMm`]: an address space of the unikernel, fed by the kernel's page-table hook.
//!
//! The patched kernel calls one hook, three times per change, from the task that
//! changes the entries and with nothing else of its own in between: `PHASE_START`
//! before present entries change, `PHASE_TLB` right after every core's TLB was flushed,
//! `PHASE_END` after that. The kernel takes one hook; this module registers its own
//! dispatcher while at least one [`KernelMm`] is attached, and hands each change to
//! every attached one (a `KernelMm` with a window sees only changes inside it, so a
//! test harness can run several address spaces in Hermit's one). The core's
//! [`Invalidation`] returned by the start is parked in a slot keyed by (task, range)
//! until the end finds it, so `end` gets exactly the range and event of its start
//! (C-07).

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use notifier_core::{AddressSpace, Error, Event, Invalidation, Range};
use spin::mutex::SpinMutex;

use crate::platform::{HermitPlatform as P, Yield};
use crate::sys;

/// Invalidations in flight at once (one per task changing page tables at a time).
const SLOTS: usize = 32;
/// Address spaces attached at once.
const ATTACHED: usize = 8;

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
    /// This address space is attached already.
    AlreadyAttached,
    /// As many address spaces as this backend dispatches to are attached.
    Full,
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
    slots: [SpinMutex<Option<Pending>, Yield>; SLOTS],
}

/// What a start did for one address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// Not its business (outside its window), or nothing to bracket: no end follows.
    Nothing,
    /// Started: an invalidation is parked until the end.
    Parked,
    /// Refused (non-blockable only): the kernel must leave the entries untouched.
    Refused,
}

/// One entry of the dispatch table.
struct Attached {
    mm: AtomicPtr<KernelMm>,
    /// Set by `detach`: no new start reaches this address space.
    closing: AtomicBool,
    /// Invalidations started on this address space and not ended yet.
    in_flight: AtomicUsize,
    /// Dispatcher calls using `mm` right now (so `detach` knows when none can).
    users: AtomicUsize,
}

impl Attached {
    /// `f` on the attached address space, if any, counted in `users`.
    fn with<R>(&self, f: impl FnOnce(&'static KernelMm) -> R) -> Option<R> {
        self.users.fetch_add(1, Ordering::SeqCst);
        let p = self.mm.load(Ordering::SeqCst);
        // SAFETY: `detach` nulls `mm` and then waits until `users` is zero before it
        // returns (and the `KernelMm` may be freed), so a pointer read here while
        // counted in `users` stays valid until the count is dropped below.
        let r = (!p.is_null()).then(|| f(unsafe { &*p }));
        self.users.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

static TABLE: [Attached; ATTACHED] = [const {
    Attached {
        mm: AtomicPtr::new(core::ptr::null_mut()),
        closing: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        users: AtomicUsize::new(0),
    }
}; ATTACHED];

/// Changes the kernel reported with interrupts off (not blockable).
static NON_BLOCKABLE_STARTS: AtomicUsize = AtomicUsize::new(0);

/// How many page-table changes reached the hook with interrupts off (a start that may
/// not sleep) since boot. The patch leaves none in Hermit's own paths; an application
/// that sees this grow changes page tables from a context that cannot sleep.
pub fn non_blockable_starts() -> usize {
    NON_BLOCKABLE_STARTS.load(Ordering::Relaxed)
}

/// How many address spaces are attached; held while attaching and detaching, and
/// while registering the dispatcher with the kernel or unregistering it.
static REGISTRY: SpinMutex<usize, Yield> = SpinMutex::new(0);

/// The hook registered with the kernel (its `ctx` is unused).
struct KernelHook(sys::Hook);
// SAFETY: never written; the kernel only reads it, and its `ctx` is null.
unsafe impl Sync for KernelHook {}
static HOOK: KernelHook = KernelHook(sys::Hook {
    func: dispatch,
    ctx: core::ptr::null_mut(),
});

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

    /// Attach to the kernel's hook: from now on every change of present page-table
    /// entries (inside the window, if any) is bracketed on
    /// [`address_space`](Self::address_space).
    pub fn attach(&'static self) -> Result<(), AttachError> {
        let me = self as *const KernelMm as *mut KernelMm;
        let mut n = REGISTRY.lock();
        if TABLE.iter().any(|a| a.mm.load(Ordering::SeqCst) == me) {
            return Err(AttachError::AlreadyAttached);
        }
        let Some(slot) = TABLE.iter().find(|a| a.mm.load(Ordering::SeqCst).is_null()) else {
            return Err(AttachError::Full);
        };
        if *n == 0 {
            let hook = &HOOK.0 as *const sys::Hook as *mut sys::Hook;
            // SAFETY: `HOOK` is a static, valid for as long as the kernel uses it.
            match unsafe { sys::sys_mmu_notifier_register(hook) } {
                0 => {}
                -16 => return Err(AttachError::Busy),
                e => return Err(AttachError::Kernel(e)),
            }
        }
        slot.closing.store(false, Ordering::SeqCst);
        slot.mm.store(me, Ordering::SeqCst);
        *n += 1;
        Ok(())
    }

    /// Teardown: every subscriber's `release` (C-04), then detach from the kernel's
    /// hook. When it returns, no callback for this address space runs or will run (the
    /// last detach also unregisters the dispatcher, which waits for every call of it).
    pub fn detach(&'static self) {
        // Refused only from inside a callback or while this task holds an
        // invalidation, which the kernel's teardown never does: nothing to release then.
        if self.space.release().is_err() {
            return;
        }
        let me = self as *const KernelMm as *mut KernelMm;
        let Some(slot) = TABLE.iter().find(|a| a.mm.load(Ordering::SeqCst) == me) else {
            return;
        };
        // No new start reaches it; the started ones end (their end still reaches it).
        slot.closing.store(true, Ordering::SeqCst);
        while slot.in_flight.load(Ordering::SeqCst) != 0 {
            P::yield_now();
        }
        let mut n = REGISTRY.lock();
        slot.mm.store(core::ptr::null_mut(), Ordering::SeqCst);
        while slot.users.load(Ordering::SeqCst) != 0 {
            P::yield_now();
        }
        *n -= 1;
        if *n == 0 {
            // SAFETY: null unregisters; always valid.
            unsafe { sys::sys_mmu_notifier_register(core::ptr::null_mut()) };
        }
    }

    /// `[start, end)` as this address space sees it, or `None` if outside its window.
    fn seen(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        match self.window {
            None => Some((start, end)),
            Some((lo, hi, seen)) => (end > lo && start < hi)
                .then(|| (start.max(lo) - lo + seen, end.min(hi) - lo + seen)),
        }
    }

    fn start(&'static self, start: usize, end: usize, event: u32, blockable: bool) -> Started {
        let event = match event {
            sys::EVENT_UNMAP => Event::Unmap,
            _ => Event::ProtectionVma,
        };
        let Some((seen_start, seen_end)) = self.seen(start, end) else {
            return Started::Nothing;
        };
        let mut range = Range::new(seen_start, seen_end, event);
        if !blockable {
            range = range.non_blocking();
        }
        let inv = match self.space.invalidate_range_start(range) {
            Ok(inv) => inv,
            // Refused (C-08): the kernel leaves the entries untouched.
            Err(Error::WouldBlock) => return Started::Refused,
            // Nothing to bracket (a range the core rejects, e.g. the top page): let the
            // kernel go on; there is no end to call.
            Err(_) => return Started::Nothing,
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
                        return Started::Parked;
                    }
                }
            }
            if !blockable {
                // No slot and no way to wait: end what was started and refuse.
                drop(pending);
                return Started::Refused;
            }
            P::yield_now();
        }
    }

    fn tlb_flushed(&self, start: usize, end: usize) {
        if let Some((s, e)) = self.seen(start, end) {
            // Errors are bad ranges, which the start refused already.
            let _ = self.space.invalidate_secondary_tlbs(s, e);
        }
    }

    /// Ends this task's invalidation of `[start, end)`; false if there is none.
    fn end(&self, start: usize, end: usize) -> bool {
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
                return true;
            }
        }
        false
    }
}

/// The function the kernel calls (see [`sys::HookFn`]): hands the change to every
/// attached address space.
unsafe extern "C" fn dispatch(
    _ctx: *mut c_void,
    phase: u32,
    start: usize,
    end: usize,
    event: u32,
    blockable: bool,
) -> i32 {
    match phase {
        sys::PHASE_START => {
            if !blockable {
                NON_BLOCKABLE_STARTS.fetch_add(1, Ordering::Relaxed);
            }
            for (i, a) in TABLE.iter().enumerate() {
                // Counted before `closing` is read: `detach` either sees this start
                // and waits for its end, or this start sees `closing`.
                a.in_flight.fetch_add(1, Ordering::SeqCst);
                let r = a
                    .with(|mm| {
                        if a.closing.load(Ordering::SeqCst) {
                            Started::Nothing
                        } else {
                            mm.start(start, end, event, blockable)
                        }
                    })
                    .unwrap_or(Started::Nothing);
                match r {
                    Started::Parked => {}
                    Started::Nothing => {
                        a.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    Started::Refused => {
                        a.in_flight.fetch_sub(1, Ordering::SeqCst);
                        // The kernel changes nothing and calls no end: end the ones
                        // this change started on the other address spaces.
                        for b in &TABLE[..i] {
                            if b.with(|mm| mm.end(start, end)) == Some(true) {
                                b.in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        return 1;
                    }
                }
            }
            0
        }
        sys::PHASE_TLB => {
            for a in &TABLE {
                a.with(|mm| mm.tlb_flushed(start, end));
            }
            0
        }
        _ => {
            for a in &TABLE {
                if a.with(|mm| mm.end(start, end)) == Some(true) {
                    a.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            0
        }
    }
}
