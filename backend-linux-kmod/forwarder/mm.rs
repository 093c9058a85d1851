// SPDX-License-Identifier: GPL-2.0

//! Where Linux's page tables change: one forwarder per `mm_struct` (kernel
//! `mmu_notifier`s, C side in `forwarder.c`) hands every callback of that mm to the
//! core's [`AddressSpace`] of it, and [`MmNotifier`] is how Rust kernel code gets at it.
//!
//! The kernel calls `invalidate_range_start` and `invalidate_range_end` as two
//! callbacks with the same `struct mmu_notifier_range`; the core returns an
//! [`Invalidation`] from the start that the end consumes. They arrive on two kernel
//! notifiers (`forwarder.h`): the start on one without an end, so that it may refuse a
//! non-blockable range with `-EAGAIN` as Linux allows, the end on one without a start,
//! which Linux calls once for every start the first accepted. In between, the
//! invalidation is parked, keyed by the range's address: in a fixed table without
//! locks, and when that is full in a list of nodes allocated without reclaim
//! (`GFP_NOWAIT`, `GFP_ATOMIC` for a non-blockable start). Only when both fail does a
//! blockable start wait for room, and a non-blockable one refuse (counted).
//!
//! Linux's ranges are not always the core's: soft-dirty clearing invalidates `[0,
//! ULONG_MAX)`, and x86 widens a large TLB flush to the same. Every range is rounded
//! outwards to pages and cut at the core's address limit ([`clamp`]); one with nothing
//! left (wholly above the limit, or empty) is counted ([`UNFORWARDABLE`]), as is an
//! event code this module does not know, which is forwarded as [`Event::Unmap`].

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ops::Deref;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use kernel::bindings;
use kernel::error::{code, Error as KError, Result as KResult};
use kernel::ffi::{c_int, c_long, c_ulong, c_void};
use kernel::types::Opaque;
use notifier_core::primitive::AtomicU32;
use notifier_core::{AddressSpace, Error as CoreError, Event, Invalidation, Platform, Range};

use crate::layout;
pub use crate::mmu_notifier::{Mm, MmWithUser};
use crate::platform::Kernel;

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_mm_get(mm: *mut bindings::mm_struct, out: *mut *mut NkMmHead) -> c_long;
    fn nk_mm_put(m: *mut NkMmHead);
    fn nk_kmalloc_nowait(size: usize, atomic: bool) -> *mut c_void;
    fn nk_kfree(p: *mut c_void);
    fn nk_park_lock_init(lock: *mut bindings::spinlock_t);
    fn nk_spin_lock(lock: *mut bindings::spinlock_t);
    fn nk_spin_unlock(lock: *mut bindings::spinlock_t);
    fn nk_init() -> c_int;
    fn nk_exit();
}

/// The forwarders' module-wide state (a workqueue for their frees). A module that uses
/// the core on Linux makes one in its `init`, before any [`MmNotifier::get`], and keeps
/// it in its module struct: dropping it (at unload, after every [`MmNotifier`] is
/// dropped) waits until every forwarder is freed and every deferred free of the core
/// has run.
pub struct Forwarders {
    _private: (),
}

impl Forwarders {
    /// Set up the forwarders. Once per module.
    pub fn new() -> KResult<Self> {
        // SAFETY: no precondition; paired with `nk_exit` in `drop`.
        let r = unsafe { nk_init() };
        if r != 0 {
            return Err(KError::from_errno(r));
        }
        Ok(Forwarders { _private: () })
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        // SAFETY: paired with `nk_init`; the module has dropped its `MmNotifier`s.
        unsafe { nk_exit() };
        let _ = notifier_core::synchronize::<Kernel>();
    }
}

/// `struct nk_mm` of `forwarder.h`: the kernel's three `mmu_notifier`s (the refusable start,
/// the end, `arch_invalidate_secondary_tlbs`) and the work item that frees the
/// forwarder. Only C touches it.
#[repr(C)]
pub(crate) struct NkMmHead {
    mn: bindings::mmu_notifier,
    end_mn: bindings::mmu_notifier,
    tlb_mn: bindings::mmu_notifier,
    free_work: bindings::work_struct,
    end_registered: bool,
    tlb_registered: bool,
}

// The C and Rust views of the forwarder's head must agree (checked at build time).
const _: () = assert!(
    core::mem::size_of::<bindings::mmu_notifier>() == layout::MMU_NOTIFIER_SIZE,
    "layout mismatch: struct mmu_notifier"
);
const _: () = assert!(
    core::mem::offset_of!(NkMmHead, end_mn) == layout::NK_MM_END_MN
        && core::mem::offset_of!(NkMmHead, tlb_mn) == layout::NK_MM_TLB_MN
        && core::mem::offset_of!(NkMmHead, free_work) == layout::NK_MM_FREE_WORK
        && core::mem::offset_of!(NkMmHead, end_registered) == layout::NK_MM_END_REGISTERED
        && core::mem::offset_of!(NkMmHead, tlb_registered) == layout::NK_MM_TLB_REGISTERED,
    "layout mismatch: struct nk_mm"
);
const _: () = assert!(
    core::mem::size_of::<NkMmHead>() == layout::NK_MM_SIZE,
    "layout mismatch: struct nk_mm"
);

/// Invalidations parked without a lock on one mm; more go to the overflow list.
const INFLIGHT: usize = 64;
const FREE: usize = 0;
const FILLING: usize = 1;

struct Parked {
    /// `FREE`, `FILLING`, or the address of the `mmu_notifier_range` whose invalidation
    /// `inv` holds.
    key: AtomicUsize,
    inv: UnsafeCell<MaybeUninit<Invalidation<'static, Kernel>>>,
}

/// An invalidation parked in the overflow list (`kmalloc`ed, linked under
/// `MmState::lock`).
struct Node {
    next: AtomicPtr<Node>,
    key: usize,
    inv: Invalidation<'static, Kernel>,
}

// `kmalloc` aligns every block to at least 8 bytes.
const _: () = assert!(core::mem::align_of::<Node>() <= 8);

/// Where a start keeps its invalidation until the end.
enum Room<'a> {
    Slot(&'a Parked),
    Node(NonNull<Node>),
}

/// The forwarder of one mm.
///
/// # Invariants
///
/// - `head` is the first field: C converts between `struct nk_mm *` and this.
/// - A slot of `parked` whose key is neither `FREE` nor `FILLING` holds an initialised
///   invalidation of `space`, started by the range whose address is the key; only the
///   end callback of that range takes it out. The same holds for every node of the
///   list at `overflow` (owned by the list, linked and unlinked under `lock`). Every
///   parked invalidation is ended before `space` is dropped.
/// - `lock` was initialised by `nk_park_lock_init`.
#[repr(C)]
pub(crate) struct MmState {
    head: NkMmHead,
    space: AddressSpace<Kernel>,
    parked: [Parked; INFLIGHT],
    /// Bumped whenever room is freed; a blockable start that found none waits on it.
    frees: AtomicU32,
    lock: Opaque<bindings::spinlock_t>,
    overflow: AtomicPtr<Node>,
}

/// How many forwarders exist: the tests check that every one is freed.
pub(crate) static FORWARDERS: AtomicUsize = AtomicUsize::new(0);
/// Calls the core refused although the forwarder had made them valid: a Linux
/// behaviour the core does not expect.
pub(crate) static FORWARD_ERRORS: AtomicUsize = AtomicUsize::new(0);
/// Linux ranges with nothing left after [`clamp`] (wholly above the core's address
/// limit, or empty): not forwarded, counted here and reported.
pub(crate) static UNFORWARDABLE: AtomicUsize = AtomicUsize::new(0);
/// Linux ranges that [`clamp`] changed (cut at the limit or rounded to pages).
pub(crate) static CLAMPED: AtomicUsize = AtomicUsize::new(0);
/// Event codes this module does not know (forwarded as `Unmap`).
pub(crate) static UNKNOWN_EVENTS: AtomicUsize = AtomicUsize::new(0);
/// Non-blockable starts a core subscriber refused (`-EAGAIN` to Linux: legal).
pub(crate) static REFUSALS: AtomicUsize = AtomicUsize::new(0);
/// Non-blockable starts refused because neither the table nor memory had room.
pub(crate) static NO_ROOM: AtomicUsize = AtomicUsize::new(0);
/// Invalidations parked in the overflow list (the table was full).
pub(crate) static OVERFLOWED: AtomicUsize = AtomicUsize::new(0);

fn forward_error(what: &str, e: CoreError) {
    FORWARD_ERRORS.fetch_add(1, Ordering::Relaxed);
    kernel::pr_err!("forwarder: {} refused by the core: {:?}\n", what, e);
}

/// Count `n` and print the first occurrence.
fn count_first(n: &AtomicUsize, what: &str, start: c_ulong, end: c_ulong) {
    if n.fetch_add(1, Ordering::Relaxed) == 0 {
        kernel::pr_warn!("forwarder: {} [{:#x}, {:#x})\n", what, start, end);
    }
}

/// Linux's `[start, end)` as the core takes it: rounded outwards to whole pages and cut
/// at the core's address limit. `None` when nothing is left (the range lies wholly at
/// or above the limit, or is empty or inverted).
pub(crate) fn clamp(start: usize, end: usize) -> Option<(usize, usize)> {
    let pg = Kernel::PAGE_SIZE;
    let end = end.min(Kernel::ADDRESS_LIMIT);
    let start = start & !(pg - 1);
    // `end <= ADDRESS_LIMIT`, far below `usize::MAX`: no overflow.
    let end = (end + pg - 1) & !(pg - 1);
    (start < end).then_some((start, end))
}

/// [`clamp`] for a callback: counts a changed range, and an unforwardable one (also
/// printed the first time).
fn clamp_counted(what: &str, start: c_ulong, end: c_ulong) -> Option<(usize, usize)> {
    let (s, e) = (start, end);
    match clamp(s, e) {
        None => {
            count_first(&UNFORWARDABLE, what, start, end);
            None
        }
        Some(r) => {
            if r != (s, e) {
                CLAMPED.fetch_add(1, Ordering::Relaxed);
            }
            Some(r)
        }
    }
}

impl MmState {
    /// # Safety
    ///
    /// `m` is the head of a live `MmState` (allocated by `nk_rust_mm_alloc`).
    unsafe fn from_head<'a>(m: *mut NkMmHead) -> &'a MmState {
        // SAFETY: `head` is the first field of the `repr(C)` `MmState` (type invariant).
        unsafe { &*m.cast::<MmState>() }
    }

    fn lock(&self) {
        // SAFETY: initialised (type invariant).
        unsafe { nk_spin_lock(self.lock.get()) }
    }

    fn unlock(&self) {
        // SAFETY: initialised (type invariant); every call follows our own `lock`.
        unsafe { nk_spin_unlock(self.lock.get()) }
    }

    /// Room for one invalidation: a free slot, else a node from `kmalloc` without
    /// reclaim. `None` when neither is there.
    fn reserve(&self, blockable: bool) -> Option<Room<'_>> {
        if let Some(p) = self.parked.iter().find(|p| {
            p.key
                .compare_exchange(FREE, FILLING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }) {
            return Some(Room::Slot(p));
        }
        // SAFETY: no precondition; never sleeps.
        let p = unsafe { nk_kmalloc_nowait(core::mem::size_of::<Node>(), !blockable) };
        NonNull::new(p.cast::<Node>()).map(Room::Node)
    }

    fn freed(&self) {
        self.frees.fetch_add(1, Ordering::Release);
        Kernel::wake_all(&self.frees);
    }

    /// Give back room that holds nothing.
    fn unreserve(&self, room: Room<'_>) {
        match room {
            Room::Slot(p) => p.key.store(FREE, Ordering::Release),
            // SAFETY: from `nk_kmalloc_nowait`, never initialised nor linked.
            Room::Node(n) => unsafe { nk_kfree(n.as_ptr().cast()) },
        }
        self.freed();
    }

    /// Park `inv`, started by the range at `key`, in `room`.
    fn park(&self, room: Room<'_>, key: usize, inv: Invalidation<'_, Kernel>) {
        // SAFETY: the invalidation borrows `self.space`, which lives until
        // `nk_rust_mm_free` ends every parked invalidation before dropping it (type
        // invariant): extending the borrow to `'static` never outlives it.
        let inv: Invalidation<'static, Kernel> = unsafe { core::mem::transmute(inv) };
        match room {
            Room::Slot(p) => {
                // SAFETY: the slot is `FILLING`: reserved for us alone.
                unsafe { (*p.inv.get()).write(inv) };
                // INVARIANT: published with the key of its range once initialised.
                p.key.store(key, Ordering::Release);
            }
            Room::Node(n) => {
                let n = n.as_ptr();
                self.lock();
                // SAFETY: `n` is fresh memory for a `Node`, ours alone; linked under the
                // lock. INVARIANT: the node holds the invalidation of the range `key`.
                unsafe {
                    n.write(Node {
                        next: AtomicPtr::new(self.overflow.load(Ordering::Relaxed)),
                        key,
                        inv,
                    })
                };
                self.overflow.store(n, Ordering::Relaxed);
                self.unlock();
                OVERFLOWED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Take out the invalidation parked for the range at `key`, if any.
    fn take(&self, key: usize) -> Option<Invalidation<'static, Kernel>> {
        if let Some(slot) = self
            .parked
            .iter()
            .find(|p| p.key.load(Ordering::Acquire) == key)
        {
            // SAFETY: keyed with our range: initialised, and ours alone to take
            // (invariant).
            let inv = unsafe { (*slot.inv.get()).assume_init_read() };
            slot.key.store(FREE, Ordering::Release);
            self.freed();
            return Some(inv);
        }
        if self.overflow.load(Ordering::Relaxed).is_null() {
            return None;
        }
        self.lock();
        let mut link: &AtomicPtr<Node> = &self.overflow;
        let mut found = None;
        loop {
            let n = link.load(Ordering::Relaxed);
            if n.is_null() {
                break;
            }
            // SAFETY: a linked node: alive while linked, and nobody unlinks it while we
            // hold the lock (invariant).
            let node = unsafe { &*n };
            if node.key == key {
                link.store(node.next.load(Ordering::Relaxed), Ordering::Relaxed);
                found = Some(n);
                break;
            }
            link = &node.next;
        }
        self.unlock();
        let n = found?;
        // SAFETY: unlinked: ours alone; initialised (invariant). Read out, then freed.
        let inv = unsafe { ptr::addr_of!((*n).inv).read() };
        // SAFETY: from `nk_kmalloc_nowait`; its invalidation was moved out just above.
        unsafe { nk_kfree(n.cast()) };
        self.freed();
        Some(inv)
    }
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
    // fills `end_mn` and `tlb_mn` before registering them, the work item is initialised
    // when it is queued; a zeroed head (nothing registered) is valid for all of them.
    // INVARIANT: every slot starts `FREE`, the list empty, the lock initialised.
    unsafe {
        ptr::addr_of_mut!((*p).head).write_bytes(0, 1);
        ptr::addr_of_mut!((*p).space).write(AddressSpace::new());
        for i in 0..INFLIGHT {
            ptr::addr_of_mut!((*p).parked[i].key).write(AtomicUsize::new(FREE));
        }
        ptr::addr_of_mut!((*p).frees).write(AtomicU32::new(0));
        ptr::addr_of_mut!((*p).overflow).write(AtomicPtr::new(ptr::null_mut()));
        nk_park_lock_init(Opaque::raw_get(ptr::addr_of!((*p).lock)));
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
        let key = slot.key.load(Ordering::Acquire);
        if key > FILLING {
            // Only an invalidation whose end Linux never called (impossible with the
            // end on its own notifier, registered first) could be left here.
            drop(st.take(key));
        }
    }
    let mut n = st.overflow.load(Ordering::Acquire);
    while !n.is_null() {
        // SAFETY: a node of the list (invariant), ours alone now.
        let key = unsafe { (*n).key };
        drop(st.take(key));
        n = st.overflow.load(Ordering::Acquire);
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
    if let Err(e) = unsafe { MmState::from_head(m) }.space.release() {
        // Linux calls release from exit_mmap, never from inside a callback: report it.
        forward_error("release", e);
    }
}

/// `invalidate_range_start` (on the notifier without an end): 0, or `-EAGAIN` when a
/// non-blockable start is refused — by a core subscriber, or for want of room to park
/// it — which Linux allows from a notifier without an end. Never anything else.
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
    let Some((start, end)) = clamp_counted("range not forwarded", kr.start, kr.end) else {
        return 0;
    };
    let ev = crate::mmu_notifier::event(kr.event).unwrap_or_else(|| {
        count_first(
            &UNKNOWN_EVENTS,
            "unknown event, forwarded as Unmap:",
            kr.start,
            kr.end,
        );
        Event::Unmap
    });
    let blockable = kr.flags & bindings::MMU_NOTIFIER_RANGE_BLOCKABLE != 0;
    let mut range = Range::new(start, end, ev).with_owner(kr.owner as usize);
    if !blockable {
        range = range.non_blocking();
    }
    let room = loop {
        let seen = st.frees.load(Ordering::Acquire);
        if let Some(room) = st.reserve(blockable) {
            break room;
        }
        if !blockable {
            NO_ROOM.fetch_add(1, Ordering::Relaxed);
            return code::EAGAIN.to_errno();
        }
        Kernel::wait(&st.frees, seen);
    };
    match st.space.invalidate_range_start(range) {
        Ok(inv) => {
            st.park(room, r as usize, inv);
            0
        }
        Err(CoreError::WouldBlock) if !blockable => {
            st.unreserve(room);
            REFUSALS.fetch_add(1, Ordering::Relaxed);
            code::EAGAIN.to_errno()
        }
        Err(e) => {
            st.unreserve(room);
            forward_error("invalidate_range_start", e);
            0
        }
    }
}

/// `invalidate_range_end` (on the notifier without a start). Linux calls it once for
/// each start the forwarder accepted, and also after a start it refused (another
/// notifier's or its own): then nothing is parked for the range.
///
/// # Safety
///
/// `m` is a live forwarder; `r` is a live range.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_rust_end(
    m: *mut NkMmHead,
    r: *const bindings::mmu_notifier_range,
) {
    // SAFETY: caller's contract.
    let st = unsafe { MmState::from_head(m) };
    if let Some(inv) = st.take(r as usize) {
        inv.end();
    }
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
    let Some((start, end)) = clamp_counted("TLB flush not forwarded", start, end) else {
        return;
    };
    if let Err(e) = st.space.invalidate_secondary_tlbs(start, end) {
        forward_error("invalidate_secondary_tlbs", e);
    }
}

/// The ageing calls (`NK_*_YOUNG` of `forwarder.h`).
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
    let Some((start, end)) = clamp_counted("young range not forwarded", start, end) else {
        return 0;
    };
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

/// The running task's address space, `None` for a kernel thread. Kept alive by the
/// task for the closure's duration (only the task itself changes `current->mm`).
pub fn with_current_mm<R>(f: impl FnOnce(Option<&Mm>) -> R) -> R {
    // SAFETY: `current` is valid in task context; its `mm` field is read at the offset
    // checked against C below.
    let mm = unsafe { (*bindings::get_current()).mm };
    if mm.is_null() {
        return f(None);
    }
    // SAFETY: non-null: the current task's own mm, whose `mm_count` the task holds
    // while it runs `f`.
    f(Some(unsafe { Mm::from_raw(mm) }))
}

const _: () = assert!(
    core::mem::offset_of!(bindings::task_struct, mm) == layout::TASK_STRUCT_MM,
    "layout mismatch: task_struct.mm (bindgen: see the xtask's RECIPE)"
);
const _: () = assert!(
    core::mem::size_of::<bindings::task_struct>() == layout::TASK_STRUCT_SIZE,
    "layout mismatch: sizeof(struct task_struct)"
);

/// A core error as a kernel error, so that a driver's function returning the kernel's
/// `Result` can use `?` on core calls (through [`KernelResult::kernel`]). Neither the
/// core nor a driver may implement `From` between the two (the orphan rule: both types
/// are foreign to them), so this crate offers the conversion. The numbers follow what
/// Linux's own notifier returns where it has a counterpart (`-EAGAIN` for a refused
/// non-blockable start, `-ENOMEM`, `-EINVAL` for a bad range).
pub fn to_kernel_error(e: CoreError) -> KError {
    match e {
        CoreError::WouldBlock => code::EAGAIN,
        CoreError::NoMemory => code::ENOMEM,
        CoreError::AlreadyRegistered => code::EBUSY,
        CoreError::NotRegistered => code::ENOENT,
        // The address space is torn down: its process is exiting.
        CoreError::Dead => code::ESRCH,
        // The call would wait for the caller itself.
        CoreError::InCallback | CoreError::InvalidationHeld => {
            KError::from_errno(-(bindings::EDEADLK as c_int))
        }
        // Bad ranges and handles of another address space, and anything added later.
        _ => code::EINVAL,
    }
}

/// `.kernel()` on a core result: `sub.as_ref().register(&mmn).kernel()?` in a function
/// that returns the kernel's `Result`.
pub trait KernelResult<T> {
    /// The result with its error converted by [`to_kernel_error`].
    fn kernel(self) -> KResult<T>;
}

impl<T> KernelResult<T> for core::result::Result<T, CoreError> {
    fn kernel(self) -> KResult<T> {
        self.map_err(to_kernel_error)
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

    /// The forwarder itself, for the in-kernel tests that drive its callbacks (a
    /// module without those tests does not call it).
    #[allow(dead_code)]
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
