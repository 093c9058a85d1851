// SPDX-License-Identifier: GPL-2.0

//! Where Linux's page tables change: one kernel `mmu_notifier` per `mm_struct` (the
//! forwarder, C side in `helpers.c`) hands every callback of that mm to the core's
//! [`AddressSpace`] of it, and [`MmNotifier`] is how Rust kernel code gets at it.
//!
//! The kernel calls `invalidate_range_start` and `invalidate_range_end` as two
//! callbacks with the same `struct mmu_notifier_range`; the core returns an
//! [`Invalidation`] from the start that the end consumes. In between it is parked in a
//! per-mm table keyed by the range's address: a fixed number of slots, so the
//! invalidation path never allocates. A blockable start that finds the table full
//! waits for a slot; a non-blockable one answers `-EAGAIN`, which Linux allows.

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ops::Deref;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use kernel::bindings;
use kernel::error::{code, Error as KError, Result as KResult};
use kernel::ffi::{c_int, c_long, c_ulong};
use kernel::types::Opaque;
use notifier_core::primitive::AtomicU32;
use notifier_core::{AddressSpace, Error, Event, Invalidation, Platform, Range};

use crate::layout;
use crate::platform::Kernel;

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_mm_get(mm: *mut bindings::mm_struct, out: *mut *mut NkMmHead) -> c_long;
    fn nk_mm_put(m: *mut NkMmHead);
    fn nk_mmget_not_zero(mm: *mut bindings::mm_struct) -> bool;
}

/// `struct nk_mm` of `nk.h`: the kernel's two `mmu_notifier`s (Linux wants
/// `arch_invalidate_secondary_tlbs` on a subscription of its own) and the work item
/// that frees the forwarder. Only C touches it.
#[repr(C)]
pub(crate) struct NkMmHead {
    mn: bindings::mmu_notifier,
    tlb_mn: bindings::mmu_notifier,
    free_work: bindings::work_struct,
    tlb_registered: bool,
}

// The C and Rust views of the forwarder's head must agree (checked at build time).
const _: () = assert!(
    core::mem::size_of::<bindings::mmu_notifier>() == layout::MMU_NOTIFIER_SIZE,
    "layout mismatch: struct mmu_notifier"
);
const _: () = assert!(
    core::mem::offset_of!(NkMmHead, tlb_mn) == layout::NK_MM_TLB_MN
        && core::mem::offset_of!(NkMmHead, free_work) == layout::NK_MM_FREE_WORK
        && core::mem::offset_of!(NkMmHead, tlb_registered) == layout::NK_MM_TLB_REGISTERED,
    "layout mismatch: struct nk_mm"
);
const _: () = assert!(
    core::mem::size_of::<NkMmHead>() == layout::NK_MM_SIZE,
    "layout mismatch: struct nk_mm"
);

/// Invalidations in flight on one mm, between their start and end callbacks.
const INFLIGHT: usize = 64;
const FREE: usize = 0;
const FILLING: usize = 1;

struct Parked {
    /// `FREE`, `FILLING`, or the address of the `mmu_notifier_range` whose invalidation
    /// `inv` holds.
    key: AtomicUsize,
    inv: UnsafeCell<MaybeUninit<Invalidation<'static, Kernel>>>,
}

/// The forwarder of one mm.
///
/// # Invariants
///
/// - `head` is the first field: C converts between `struct nk_mm *` and this.
/// - A slot of `parked` whose key is neither `FREE` nor `FILLING` holds an initialised
///   invalidation of `space`, started by the range whose address is the key; only the
///   end callback of that range takes it out. Every parked invalidation is ended
///   before `space` is dropped.
#[repr(C)]
pub(crate) struct MmState {
    head: NkMmHead,
    space: AddressSpace<Kernel>,
    parked: [Parked; INFLIGHT],
    /// Bumped whenever a slot is freed; a blockable start waits on it for one.
    frees: AtomicU32,
}

/// How many forwarders exist: the tests check that every one is freed.
pub(crate) static FORWARDERS: AtomicUsize = AtomicUsize::new(0);
/// Calls the forwarder could not hand to the core (a range the core refused as
/// malformed, an unknown event): a Linux behaviour the core does not expect.
pub(crate) static FORWARD_ERRORS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static UNFORWARDABLE: AtomicUsize = AtomicUsize::new(0);
pub(crate) static CLAMPED: AtomicUsize = AtomicUsize::new(0);
pub(crate) static UNKNOWN_EVENTS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static REFUSALS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static NO_ROOM: AtomicUsize = AtomicUsize::new(0);
pub(crate) static OVERFLOWED: AtomicUsize = AtomicUsize::new(0);

fn forward_error(what: &str, e: Error) {
    FORWARD_ERRORS.fetch_add(1, Ordering::Relaxed);
    kernel::pr_err!("forwarder: {} refused by the core: {:?}\n", what, e);
}

impl MmState {
    /// # Safety
    ///
    /// `m` is the head of a live `MmState` (allocated by `nk_rust_mm_alloc`).
    unsafe fn from_head<'a>(m: *mut NkMmHead) -> &'a MmState {
        // SAFETY: `head` is the first field of the `repr(C)` `MmState` (type invariant).
        unsafe { &*m.cast::<MmState>() }
    }

    fn reserve(&self) -> Option<&Parked> {
        self.parked.iter().find(|p| {
            p.key
                .compare_exchange(FREE, FILLING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }

    fn unreserve(&self, p: &Parked) {
        p.key.store(FREE, Ordering::Release);
        self.frees.fetch_add(1, Ordering::Release);
        Kernel::wake_all(&self.frees);
    }
}

/// Linux's event code as the core's; `None` for a code newer than this module.
pub(crate) fn event(e: bindings::mmu_notifier_event) -> Option<Event> {
    Some(match e {
        bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP => Event::Unmap,
        bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR => Event::Clear,
        bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA => Event::ProtectionVma,
        bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE => Event::ProtectionPage,
        bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY => Event::SoftDirty,
        bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE => Event::Release,
        bindings::mmu_notifier_event_MMU_NOTIFY_MIGRATE => Event::Migrate,
        bindings::mmu_notifier_event_MMU_NOTIFY_EXCLUSIVE => Event::Exclusive,
        _ => return None,
    })
}

/// `alloc_notifier`: a new forwarder with an empty address space. Null on failure.
#[no_mangle]
pub(crate) extern "C" fn nk_rust_mm_alloc() -> *mut NkMmHead {
    let Some(p) = Kernel::alloc(Layout::new::<MmState>()) else {
        return ptr::null_mut();
    };
    let p = p.cast::<MmState>().as_ptr();
    // SAFETY: `p` is fresh memory for an `MmState`; each field is written in place (the
    // table is too large for the stack). The kernel fills `mn` in after we return, C
    // fills `tlb_mn` before registering it, the work item is initialised when it is
    // queued; a zeroed head (`tlb_registered == false`) is valid for all three.
    // INVARIANT: every slot starts `FREE`.
    unsafe {
        ptr::addr_of_mut!((*p).head).write_bytes(0, 1);
        ptr::addr_of_mut!((*p).space).write(AddressSpace::new());
        for i in 0..INFLIGHT {
            ptr::addr_of_mut!((*p).parked[i].key).write(AtomicUsize::new(FREE));
        }
        ptr::addr_of_mut!((*p).frees).write(AtomicU32::new(0));
    }
    FORWARDERS.fetch_add(1, Ordering::Relaxed);
    p.cast()
}

/// The deferred `free_notifier`, in process context.
///
/// # Safety
///
/// `m` came from `nk_rust_mm_alloc`, the kernel no longer reaches it, and this is
/// called once.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_mm_free(m: *mut NkMmHead) {
    let p = m.cast::<MmState>();
    // SAFETY: caller's contract: we own the forwarder now.
    let st = unsafe { &*p };
    for slot in &st.parked {
        if slot.key.load(Ordering::Acquire) > FILLING {
            // SAFETY: a keyed slot holds an initialised invalidation (type invariant);
            // nobody else can take it any more. Ended before `space` goes.
            drop(unsafe { (*slot.inv.get()).assume_init_read() });
        }
    }
    // SAFETY: the forwarder is ours alone; `space` is dropped exactly once, after every
    // invalidation that borrowed it; the memory came from `Kernel::alloc` with this
    // layout.
    unsafe {
        ptr::drop_in_place(ptr::addr_of_mut!((*p).space));
        Kernel::dealloc(NonNull::new_unchecked(p.cast()), Layout::new::<MmState>());
    }
    FORWARDERS.fetch_sub(1, Ordering::Relaxed);
}

/// `release`: the mm is being torn down (`exit_mmap`).
///
/// # Safety
///
/// `m` is a live forwarder.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_release(m: *mut NkMmHead) {
    // SAFETY: caller's contract.
    unsafe { MmState::from_head(m) }.space.release();
}

/// `invalidate_range_start`: 0, or `-EAGAIN` when a non-blockable start is refused.
///
/// # Safety
///
/// `m` is a live forwarder, `r` a live range that stays at its address until the
/// matching `nk_rust_end`.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_start(
    m: *mut NkMmHead,
    r: *const bindings::mmu_notifier_range,
) -> c_int {
    // SAFETY: caller's contract.
    let st = unsafe { MmState::from_head(m) };
    // SAFETY: caller's contract.
    let kr = unsafe { &*r };
    let Some(ev) = event(kr.event) else {
        forward_error("unknown event", Error::InvertedRange);
        return 0;
    };
    let blockable = kr.flags & bindings::MMU_NOTIFIER_RANGE_BLOCKABLE != 0;
    let mut range =
        Range::new(kr.start as usize, kr.end as usize, ev).with_owner(kr.owner as usize);
    if !blockable {
        range = range.non_blocking();
    }
    let slot = loop {
        let seen = st.frees.load(Ordering::Acquire);
        if let Some(s) = st.reserve() {
            break s;
        }
        if !blockable {
            return code::EAGAIN.to_errno();
        }
        Kernel::wait(&st.frees, seen);
    };
    match st.space.invalidate_range_start(range) {
        Ok(inv) => {
            // SAFETY: the invalidation borrows `st.space`, which lives until
            // `nk_rust_mm_free` ends every parked invalidation before dropping it
            // (type invariant): extending the borrow to `'static` never outlives it.
            let inv: Invalidation<'static, Kernel> = unsafe { core::mem::transmute(inv) };
            // SAFETY: the slot is `FILLING`: reserved for us alone.
            unsafe { (*slot.inv.get()).write(inv) };
            // INVARIANT: published with the key of its range once initialised.
            slot.key.store(r as usize, Ordering::Release);
            0
        }
        Err(Error::WouldBlock) => {
            st.unreserve(slot);
            code::EAGAIN.to_errno()
        }
        Err(e) => {
            st.unreserve(slot);
            forward_error("invalidate_range_start", e);
            0
        }
    }
}

/// `invalidate_range_end`.
///
/// # Safety
///
/// `m` is a live forwarder; `r` is the range of a start that returned 0.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_end(
    m: *mut NkMmHead,
    r: *const bindings::mmu_notifier_range,
) {
    // SAFETY: caller's contract.
    let st = unsafe { MmState::from_head(m) };
    let key = r as usize;
    let Some(slot) = st
        .parked
        .iter()
        .find(|p| p.key.load(Ordering::Acquire) == key)
    else {
        // The start was refused as malformed (counted there).
        return;
    };
    // SAFETY: keyed with our range: initialised, and ours alone to take (invariant).
    let inv = unsafe { (*slot.inv.get()).assume_init_read() };
    st.unreserve(slot);
    inv.end();
}

/// `arch_invalidate_secondary_tlbs`, under the page-table lock.
///
/// # Safety
///
/// `m` is a live forwarder.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_secondary_tlbs(
    m: *mut NkMmHead,
    start: c_ulong,
    end: c_ulong,
) {
    // SAFETY: caller's contract.
    let st = unsafe { MmState::from_head(m) };
    // x86 widens a large flush to `[0, TLB_FLUSH_ALL)`: all of user space.
    let (start, end) = if end as usize == usize::MAX {
        (0, Kernel::ADDRESS_LIMIT)
    } else {
        (start as usize, end as usize)
    };
    if let Err(e) = st.space.invalidate_secondary_tlbs(start, end) {
        forward_error("invalidate_secondary_tlbs", e);
    }
}

/// The ageing calls (`NK_*_YOUNG` of `nk.h`).
///
/// # Safety
///
/// `m` is a live forwarder.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_young(
    m: *mut NkMmHead,
    kind: c_int,
    start: c_ulong,
    end: c_ulong,
) -> c_int {
    // SAFETY: caller's contract.
    let st = unsafe { MmState::from_head(m) };
    let (start, end) = (start as usize, end as usize);
    let r = match kind {
        0 => st.space.clear_flush_young(start, end),
        1 => st.space.clear_young(start, end),
        _ => st.space.test_young(start),
    };
    match r {
        Ok(young) => c_int::from(young),
        Err(e) => {
            forward_error("young", e);
            0
        }
    }
}

/// An `mm_struct`, borrowed.
///
/// # Invariants
///
/// The wrapped `mm_struct` is live for the lifetime of the reference to `Mm`.
#[repr(transparent)]
pub struct Mm(Opaque<bindings::mm_struct>);

const _: () = assert!(
    core::mem::offset_of!(bindings::task_struct, mm) == layout::TASK_STRUCT_MM,
    "layout mismatch: task_struct.mm (bindgen: see the xtask's RECIPE)"
);
const _: () = assert!(
    core::mem::size_of::<bindings::task_struct>() == layout::TASK_STRUCT_SIZE,
    "layout mismatch: sizeof(struct task_struct)"
);

impl Mm {
    /// The running task's address space, `None` for a kernel thread. Kept alive by the
    /// task for the closure's duration (only the task itself changes `current->mm`).
    pub fn with_current<R>(f: impl FnOnce(Option<&Mm>) -> R) -> R {
        // SAFETY: `current` is valid in task context; its `mm` field is read at the
        // offset checked against C above.
        let mm = unsafe { (*bindings::get_current()).mm };
        if mm.is_null() {
            return f(None);
        }
        // SAFETY: non-null: the current task's own mm, alive while it runs `f`.
        // INVARIANT: live for the borrow.
        f(Some(unsafe { &*mm.cast::<Mm>() }))
    }

    /// The raw pointer, for the C API.
    pub fn as_raw(&self) -> *mut bindings::mm_struct {
        self.0.get()
    }

    /// Whether the mm still has users (`mmget_not_zero` then `mmput` would be the
    /// borrowing pattern; here only the answer).
    pub fn is_live(&self) -> bool {
        // SAFETY: live (type invariant).
        let live = unsafe { nk_mmget_not_zero(self.as_raw()) };
        if live {
            // SAFETY: we took a user reference just above.
            unsafe { bindings::mmput(self.as_raw()) };
        }
        live
    }
}

/// A user reference on an `mm_struct` (`mmget`; `mmput` on drop): while it lives the
/// address space is not torn down. Obtain one with `get_task_mm`-like C calls.
///
/// # Invariants
///
/// `mm` points to a live `mm_struct` on which this holds one `mm_users` reference.
pub struct MmUser {
    mm: NonNull<bindings::mm_struct>,
}

impl MmUser {
    /// Take over the user reference the caller holds on `mm`.
    ///
    /// # Safety
    ///
    /// `mm` is live and the caller owns one `mm_users` reference on it, which it gives
    /// to the returned value.
    pub unsafe fn from_raw(mm: NonNull<bindings::mm_struct>) -> Self {
        // INVARIANT: the caller's reference.
        MmUser { mm }
    }
}

impl Deref for MmUser {
    type Target = Mm;
    fn deref(&self) -> &Mm {
        // SAFETY: live while our reference is held (type invariant); `Mm` is a
        // transparent wrapper.
        unsafe { &*self.mm.as_ptr().cast::<Mm>() }
    }
}

impl Drop for MmUser {
    fn drop(&mut self) {
        // SAFETY: our reference, given back once (type invariant). May sleep (the
        // last one tears the address space down).
        unsafe { bindings::mmput(self.mm.as_ptr()) }
    }
}

/// The notifier side of one `mm_struct` for Rust kernel code: a reference on the one
/// forwarding `mmu_notifier` this module keeps per mm (`mmu_notifier_get`). Core
/// subscribers ([`notifier_core::Subscriber`], [`notifier_core::IntervalSubscriber`])
/// register on it through `Deref` to [`AddressSpace`].
///
/// Drop it (`mmu_notifier_put`) only after every subscriber registered through it has
/// unregistered or been released; the forwarder is freed after an SRCU grace period.
///
/// # Invariants
///
/// `state` is a live forwarder on which this handle holds one `users` reference.
pub struct MmNotifier {
    state: NonNull<MmState>,
}

// SAFETY: the forwarder is shared kernel state; the core's address space is `Sync`.
unsafe impl Send for MmNotifier {}
// SAFETY: as above.
unsafe impl Sync for MmNotifier {}

impl MmNotifier {
    /// The forwarder of `mm`, registered with the kernel on first use. May sleep
    /// (takes `mmap_lock` for writing).
    pub fn get(mm: &Mm) -> KResult<Self> {
        let mut out: *mut NkMmHead = ptr::null_mut();
        // SAFETY: `mm` is live (type invariant of `Mm`); `out` is valid for writes.
        let ret = unsafe { nk_mm_get(mm.as_raw(), &mut out) };
        if ret != 0 {
            return Err(KError::from_errno(ret as c_int));
        }
        // INVARIANT: `mmu_notifier_get` returned a live forwarder with a reference.
        Ok(MmNotifier {
            state: NonNull::new(out.cast()).ok_or(code::ENOMEM)?,
        })
    }

    pub(crate) fn head(&self) -> *mut NkMmHead {
        self.state.as_ptr().cast()
    }

    /// The core's address space of this mm.
    pub fn address_space(&self) -> &AddressSpace<Kernel> {
        // SAFETY: live while we hold our reference (type invariant).
        unsafe { &self.state.as_ref().space }
    }
}

impl Deref for MmNotifier {
    type Target = AddressSpace<Kernel>;
    fn deref(&self) -> &AddressSpace<Kernel> {
        self.address_space()
    }
}

impl Drop for MmNotifier {
    fn drop(&mut self) {
        // SAFETY: our reference, given back once (type invariant).
        unsafe { nk_mm_put(self.state.as_ptr().cast()) }
    }
}

macro_rules! range_field {
    ($f:ident, $c:ident) => {
        const _: () = assert!(
            core::mem::offset_of!(bindings::mmu_notifier_range, $f) == layout::$c,
            concat!("layout mismatch: mmu_notifier_range.", stringify!($f))
        );
    };
}
range_field!(mm, RANGE_MM);
range_field!(start, RANGE_START);
range_field!(end, RANGE_END);
range_field!(flags, RANGE_FLAGS);
range_field!(event, RANGE_EVENT);
range_field!(owner, RANGE_OWNER);
