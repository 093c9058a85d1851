// SPDX-License-Identifier: GPL-2.0

//! MMU notifiers for Rust drivers: Linux's own `struct mmu_notifier`, with pin-init.
//!
//! A driver with a secondary MMU (a device or IOMMU TLB, a GPU page table, a
//! hypervisor's shadow tables) caches translations of a process's memory. It must drop
//! them before the process's page tables change, or the device keeps reaching a page
//! that is gone. Linux tells it through an *MMU notifier* registered on the process's
//! `mm_struct`: a start before the change, an end after it, `release` when the address
//! space goes away.
//!
//! This file is the binding, apart from any test code; copy `binding/` into a module
//! (see `examples/`) and include it with `#[path]`. It offers:
//!
//! - [`Mm`] and [`MmWithUser`]: reference-counted handles on an `mm_struct`, in the
//!   shape of upstream `kernel::mm` (which Linux 6.12 lacks). `ARef<Mm>` keeps the
//!   structure (`mmgrab`), `ARef<MmWithUser>` also its page tables (`mmget`).
//! - [`MmuNotifier<T>`]: a registered `struct mmu_notifier` whose callbacks are `T`.
//!   It is built in place with pin-init; constructed means registered, and dropping it
//!   unregisters (`PinnedDrop`). `T` may itself be pin-initialised (a kernel `Mutex`
//!   inside).
//! - [`IntervalNotifier<T>`]: an inserted `struct mmu_interval_notifier` over
//!   `[start, start + length)` whose `invalidate` is `T`, with the sequence protocol
//!   (`read_begin`, `read_retry`, `set_seq`) and the raw notifier for `hmm_range_fault`
//!   and `migrate_vma` ([`KernelInterval::as_raw`]). Inserted when constructed, removed
//!   when dropped.
//!
//! # One callback trait for both worlds
//!
//! `T` implements [`notifier_core::SubscriberOps`], the trait a subscriber of the core
//! implements. The same ops can be registered natively here, or as a
//! `notifier_core::Subscriber` on the core (through the forwarder of `mm.rs` on Linux,
//! directly on Hermit and the simulator). The range a callback gets is the core's
//! [`Range`]: bounds, [`Event`], blockable flag and owner, as Linux gave them.
//!
//! Interval ops implement [`notifier_core::IntervalOps`] over an interval handle:
//! written generic over every [`IntervalHandle`] (`impl<I: IntervalHandle + ?Sized>
//! IntervalOps<I> for Mirror`), the same ops go into an [`IntervalNotifier`] here
//! (handle: [`KernelInterval`]) or into the core as a `notifier_core::IntervalSubscriber`
//! (handle: `notifier_core::Interval`).
//!
//! # Where Linux gives less than the core's contract
//!
//! - A start callback that refuses (`Err(WouldBlock)` on a non-blockable range) makes
//!   Linux return `-EAGAIN` to the OOM reaper, which retries later; but Linux WARNs
//!   when a notifier that has an end refuses (it cannot tell it that its start failed,
//!   and calls its end anyway). A driver that must refuse uses an interval notifier.
//! - Linux does not promise that an end is delivered only for a start this notifier
//!   saw when it registers while invalidations are in flight, nor that `release` is
//!   the last callback (C-02 and C-04 in `docs/CONTRACT.md`;
//!   `reference-differences.txt` lists what the suite observed).
//!
//! # Example
//!
//! ```ignore
//! // A spinlock: the start callback must complete non-blockable ranges too.
//! #[pin_data]
//! struct Mirror {
//!     #[pin]
//!     table: SpinLock<PageTable>,
//! }
//!
//! impl SubscriberOps for Mirror {
//!     fn invalidate_range_start(&self, r: &Range) -> core::result::Result<(), WouldBlock> {
//!         self.table.lock().zap(r.start, r.end);
//!         Ok(())
//!     }
//! }
//!
//! let mm = MmWithUser::current().ok_or(ESRCH)?;
//! let mirror = KBox::pin_init(
//!     MmuNotifier::<Mirror>::new(&mm, try_pin_init!(Mirror { table <- new_spinlock!(PageTable::new()) }? Error)),
//!     GFP_KERNEL,
//! )?;
//! // Registered: every later change of the mm's page tables reaches `Mirror`.
//! drop(mirror); // unregistered, after the callbacks in flight have returned
//! ```

use core::marker::PhantomPinned;
use core::mem::offset_of;
use core::ops::Deref;
use core::ptr::{self, NonNull};

use kernel::bindings;
use kernel::error::{to_result, Error};
use kernel::ffi::{c_int, c_ulong};
use kernel::init::{self, PinInit};
use kernel::prelude::*;
use kernel::types::{ARef, AlwaysRefCounted, Opaque};
use notifier_core::{Event, IntervalHandle, IntervalOps, Range, SubscriberOps, WouldBlock};

// `mm_struct` holds a bindgen-opaque field (`sched_info`); only pointers cross here.
#[allow(improper_ctypes)]
extern "C" {
    fn nkb_mmgrab(mm: *mut bindings::mm_struct);
    fn nkb_mmdrop(mm: *mut bindings::mm_struct);
    fn nkb_mmget(mm: *mut bindings::mm_struct);
    fn nkb_mmget_not_zero(mm: *mut bindings::mm_struct) -> bool;
    fn nkb_current_mm_get() -> *mut bindings::mm_struct;
}

// -------------------------------------------------------------------------------------
// Address spaces
// -------------------------------------------------------------------------------------

/// An address space (`struct mm_struct`) whose structure is kept alive: a reference
/// taken with `mmgrab`. Its page tables may already be gone (the process exited);
/// [`Mm::mmget_not_zero`] says whether they are not.
///
/// # Invariants
///
/// Every `Mm` a reference or an [`ARef`] reaches has a non-zero `mm_count`.
#[repr(transparent)]
pub struct Mm {
    mm: Opaque<bindings::mm_struct>,
}

// SAFETY: an `mm_struct` is not tied to a thread; its reference counts are atomic.
unsafe impl Send for Mm {}
// SAFETY: every method takes `&self` and is safe to call concurrently (atomic counts).
unsafe impl Sync for Mm {}

// SAFETY: `mmgrab` and `mmdrop` keep the structure alive while the count is non-zero.
unsafe impl AlwaysRefCounted for Mm {
    fn inc_ref(&self) {
        // SAFETY: the count is non-zero (type invariant), so it may be raised.
        unsafe { nkb_mmgrab(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: the caller gives back a reference it owned.
        unsafe { nkb_mmdrop(obj.cast().as_ptr()) };
    }
}

impl Mm {
    /// The `Mm` at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` points to an `mm_struct` whose `mm_count` stays non-zero for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *const bindings::mm_struct) -> &'a Mm {
        // SAFETY: `Mm` is a transparent wrapper; the count is the caller's promise.
        unsafe { &*ptr.cast::<Mm>() }
    }

    /// The underlying `mm_struct`.
    pub fn as_raw(&self) -> *mut bindings::mm_struct {
        self.mm.get()
    }

    /// A user reference (`mmget`), unless the address space's page tables are already
    /// torn down (its `mm_users` reached zero).
    pub fn mmget_not_zero(&self) -> Option<ARef<MmWithUser>> {
        // SAFETY: the structure is alive (type invariant).
        if unsafe { nkb_mmget_not_zero(self.as_raw()) } {
            // SAFETY: the user reference just taken is handed to the `ARef`.
            Some(unsafe { ARef::from_raw(NonNull::from(self).cast()) })
        } else {
            None
        }
    }
}

/// An address space whose page tables are kept alive: a user reference (`mmget`).
/// Registering a notifier needs one; it derefs to [`Mm`].
///
/// # Invariants
///
/// Every `MmWithUser` a reference or an [`ARef`] reaches has a non-zero `mm_users`
/// (and therefore a non-zero `mm_count`).
#[repr(transparent)]
pub struct MmWithUser {
    mm: Mm,
}

// SAFETY: `mmget` and `mmput` keep the page tables (and the structure) alive while the
// count is non-zero.
unsafe impl AlwaysRefCounted for MmWithUser {
    fn inc_ref(&self) {
        // SAFETY: `mm_users` is non-zero (type invariant), so it may be raised.
        unsafe { nkb_mmget(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: the caller gives back a user reference it owned. `mmput` may sleep:
        // `ARef<MmWithUser>` is dropped in process context, as in Linux.
        unsafe { bindings::mmput(obj.cast().as_ptr()) };
    }
}

impl MmWithUser {
    /// The address space of the calling process, with a user reference; `None` for a
    /// kernel thread or a process that is exiting.
    pub fn current() -> Option<ARef<MmWithUser>> {
        // SAFETY: `get_task_mm(current)` is callable from any task; it returns null or
        // an mm with a new user reference.
        let mm = NonNull::new(unsafe { nkb_current_mm_get() })?;
        // SAFETY: that new user reference is handed to the `ARef`.
        Some(unsafe { ARef::from_raw(mm.cast()) })
    }

    /// The `MmWithUser` at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` points to an `mm_struct` whose `mm_users` stays non-zero for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *const bindings::mm_struct) -> &'a MmWithUser {
        // SAFETY: transparent wrapper; the count is the caller's promise.
        unsafe { &*ptr.cast::<MmWithUser>() }
    }
}

impl Deref for MmWithUser {
    type Target = Mm;
    fn deref(&self) -> &Mm {
        &self.mm
    }
}

// -------------------------------------------------------------------------------------
// Ranges
// -------------------------------------------------------------------------------------

/// Linux's event code as the core's [`Event`]; `None` for a code newer than this
/// binding. Every code of Linux 6.12's `enum mmu_notifier_event` has its own.
pub fn event(e: bindings::mmu_notifier_event) -> Option<Event> {
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

/// The kernel's range as the core's: bounds as Linux gave them, the event (an unknown
/// code reads as [`Event::Unmap`]: the safe reading is "it goes away"), the blockable
/// flag and the owner.
///
/// # Safety
///
/// `r` points to a live `mmu_notifier_range` (the kernel's argument to a callback).
pub unsafe fn range_from_raw(r: *const bindings::mmu_notifier_range) -> Range {
    // SAFETY: caller's contract.
    let r = unsafe { &*r };
    let mut out = Range::new(r.start, r.end, event(r.event).unwrap_or(Event::Unmap));
    out.blockable = r.flags & bindings::MMU_NOTIFIER_RANGE_BLOCKABLE != 0;
    out.owner = r.owner as usize;
    out
}

// -------------------------------------------------------------------------------------
// MmuNotifier
// -------------------------------------------------------------------------------------

/// The kernel's part of an [`MmuNotifier`]: the notifier that carries `release`,
/// start/end and ageing, and, when asked for, a second one for
/// `arch_invalidate_secondary_tlbs` (Linux refuses a notifier that has both).
#[repr(C)]
struct RawNotifiers {
    mn: bindings::mmu_notifier,
    tlb: bindings::mmu_notifier,
    with_tlbs: bool,
}

/// A `struct mmu_notifier` registered on an address space, whose callbacks are `T`.
///
/// Built in place with [`MmuNotifier::new`] (or
/// [`MmuNotifier::new_with_secondary_tlbs`]): the initialiser registers, so an
/// `MmuNotifier` that exists is registered. Dropping it unregisters: Linux calls
/// `release` then if the address space has not been torn down yet, and waits for the
/// callbacks in flight. Drop it in process context.
///
/// # Invariants
///
/// - `raw.mn` (and `raw.tlb` when `raw.with_tlbs`) is registered with
///   `mmu_notifier_register` on `raw.mn.mm`, with `ops` pointing to this type's tables,
///   from the end of initialisation until `drop`; Linux holds `mmgrab` on that mm.
/// - The kernel reaches `ops` only through these notifiers, while they are registered
///   (`mmu_notifier_unregister` waits for callbacks in flight).
#[pin_data(PinnedDrop)]
pub struct MmuNotifier<T: SubscriberOps> {
    #[pin]
    ops: T,
    /// Initialised last: registering makes the callbacks reachable, and every other
    /// field is in place by then.
    #[pin]
    raw: Opaque<RawNotifiers>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the kernel's part is written before registration and by the kernel under its
// own locks after; `T: SubscriberOps` is `Sync`; nothing is tied to a thread.
unsafe impl<T: SubscriberOps + Send> Send for MmuNotifier<T> {}
// SAFETY: as above: `&MmuNotifier<T>` gives `&T`, and `T` is `Sync`.
unsafe impl<T: SubscriberOps> Sync for MmuNotifier<T> {}

impl<T: SubscriberOps> MmuNotifier<T> {
    const OPS: bindings::mmu_notifier_ops = bindings::mmu_notifier_ops {
        release: Some(Self::c_release),
        clear_flush_young: Some(Self::c_young::<true>),
        clear_young: Some(Self::c_young::<false>),
        test_young: Some(Self::c_test_young),
        invalidate_range_start: Some(Self::c_start),
        invalidate_range_end: Some(Self::c_end),
        arch_invalidate_secondary_tlbs: None,
        alloc_notifier: None,
        free_notifier: None,
    };

    const TLB_OPS: bindings::mmu_notifier_ops = bindings::mmu_notifier_ops {
        release: None,
        clear_flush_young: None,
        clear_young: None,
        test_young: None,
        invalidate_range_start: None,
        invalidate_range_end: None,
        arch_invalidate_secondary_tlbs: Some(Self::c_tlbs),
        alloc_notifier: None,
        free_notifier: None,
    };

    /// Register `ops` on `mm`: `release`, start/end and the ageing callbacks.
    /// `invalidate_secondary_tlbs` is not called (see
    /// [`new_with_secondary_tlbs`](Self::new_with_secondary_tlbs)).
    ///
    /// Errors: `ENOMEM`, or what `ops`' initialiser returns. May sleep.
    pub fn new<'a>(
        mm: &'a MmWithUser,
        ops: impl PinInit<T, Error> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        T: 'a,
    {
        Self::build(mm, ops, false)
    }

    /// Like [`new`](Self::new), and `invalidate_secondary_tlbs` is called whenever the
    /// CPU TLB is flushed (an IOMMU that walks the CPU page tables itself). Costs a
    /// second kernel notifier.
    pub fn new_with_secondary_tlbs<'a>(
        mm: &'a MmWithUser,
        ops: impl PinInit<T, Error> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        T: 'a,
    {
        Self::build(mm, ops, true)
    }

    fn build<'a>(
        mm: &'a MmWithUser,
        ops: impl PinInit<T, Error> + 'a,
        with_tlbs: bool,
    ) -> impl PinInit<Self, Error> + 'a
    where
        T: 'a,
    {
        try_pin_init!(Self {
            ops <- ops,
            // SAFETY: `slot` is the field's memory, inside the `MmuNotifier` being built
            // in place (pinned); `ops` is initialised already. On success the
            // notifiers are registered and stay so until `drop` (type invariant); on
            // failure nothing is registered and the initialiser drops `ops`.
            raw <- unsafe {
                init::pin_init_from_closure(move |slot: *mut Opaque<RawNotifiers>| {
                    let raw = Opaque::raw_get(slot);
                    // All-zero is the unregistered state the kernel expects.
                    raw.write_bytes(0, 1);
                    (*raw).with_tlbs = with_tlbs;
                    (*raw).mn.ops = &Self::OPS;
                    (*raw).tlb.ops = &Self::TLB_OPS;
                    let mn = ptr::addr_of_mut!((*raw).mn);
                    to_result(bindings::mmu_notifier_register(mn, mm.as_raw()))?;
                    if with_tlbs {
                        let tlb = ptr::addr_of_mut!((*raw).tlb);
                        if let Err(e) = to_result(bindings::mmu_notifier_register(tlb, mm.as_raw())) {
                            bindings::mmu_notifier_unregister(mn, mm.as_raw());
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            },
            _pin: PhantomPinned,
        }? Error)
    }

    /// The callbacks.
    pub fn ops(&self) -> &T {
        &self.ops
    }

    /// The address space it is registered on.
    pub fn mm(&self) -> &Mm {
        // SAFETY: registered (type invariant): `mn.mm` is the mm, which Linux keeps
        // alive with `mmgrab` until unregister.
        unsafe { Mm::from_raw((*self.raw.get()).mn.mm) }
    }

    /// The kernel's `struct mmu_notifier` (the one with start/end), for C APIs.
    pub fn as_raw(&self) -> *mut bindings::mmu_notifier {
        // SAFETY: in bounds of `raw`; no reference is made.
        unsafe { ptr::addr_of_mut!((*self.raw.get()).mn) }
    }

    /// # Safety
    ///
    /// `mn` is the `raw.mn` field of a registered `MmuNotifier<T>`.
    unsafe fn from_mn<'a>(mn: *mut bindings::mmu_notifier) -> &'a Self {
        // SAFETY: `mn` lies at this offset inside a live, pinned `Self` (caller's
        // contract), alive while registered.
        unsafe {
            &*mn.byte_sub(offset_of!(Self, raw) + offset_of!(RawNotifiers, mn))
                .cast::<Self>()
        }
    }

    /// # Safety
    ///
    /// Called by the kernel only, on notifiers whose ops are `OPS`.
    unsafe extern "C" fn c_release(mn: *mut bindings::mmu_notifier, _mm: *mut bindings::mm_struct) {
        // SAFETY: the kernel calls `OPS` only on the `mn` of a registered `Self`.
        unsafe { Self::from_mn(mn) }.ops.release();
    }

    /// # Safety
    ///
    /// Called by the kernel only, on notifiers whose ops are `OPS`, with a live range.
    unsafe extern "C" fn c_start(
        mn: *mut bindings::mmu_notifier,
        r: *const bindings::mmu_notifier_range,
    ) -> c_int {
        // SAFETY: as in `c_release`; `r` is the kernel's live range.
        let (s, r) = unsafe { (Self::from_mn(mn), range_from_raw(r)) };
        match s.ops.invalidate_range_start(&r) {
            Ok(()) => 0,
            Err(_) => EAGAIN.to_errno(),
        }
    }

    /// # Safety
    ///
    /// As for `c_start`.
    unsafe extern "C" fn c_end(
        mn: *mut bindings::mmu_notifier,
        r: *const bindings::mmu_notifier_range,
    ) {
        // SAFETY: as in `c_start`.
        let (s, r) = unsafe { (Self::from_mn(mn), range_from_raw(r)) };
        s.ops.invalidate_range_end(&r);
    }

    /// `clear_flush_young` (`FLUSH`) or `clear_young`.
    ///
    /// # Safety
    ///
    /// As for `c_release`.
    unsafe extern "C" fn c_young<const FLUSH: bool>(
        mn: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) -> c_int {
        // SAFETY: as in `c_release`.
        let s = unsafe { Self::from_mn(mn) };
        c_int::from(if FLUSH {
            s.ops.clear_flush_young(start, end)
        } else {
            s.ops.clear_young(start, end)
        })
    }

    /// # Safety
    ///
    /// As for `c_release`.
    unsafe extern "C" fn c_test_young(
        mn: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        addr: c_ulong,
    ) -> c_int {
        // SAFETY: as in `c_release`.
        let s = unsafe { Self::from_mn(mn) };
        c_int::from(s.ops.test_young(addr))
    }

    /// # Safety
    ///
    /// Called by the kernel only, on notifiers whose ops are `TLB_OPS`.
    unsafe extern "C" fn c_tlbs(
        tlb: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) {
        // SAFETY: the kernel calls `TLB_OPS` only on the `tlb` of a registered `Self`,
        // at this offset inside it.
        let s = unsafe {
            &*tlb
                .byte_sub(offset_of!(Self, raw) + offset_of!(RawNotifiers, tlb))
                .cast::<Self>()
        };
        s.ops.invalidate_secondary_tlbs(start, end);
    }
}

impl<T: SubscriberOps> Deref for MmuNotifier<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

#[pinned_drop]
impl<T: SubscriberOps> PinnedDrop for MmuNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        let raw = self.raw.get();
        // SAFETY: registered (type invariant) on `mn.mm`, which Linux keeps alive until
        // the last of these calls. Unregister calls `release` if the exit did not and
        // waits for callbacks in flight; after it the kernel no longer reaches `ops`.
        unsafe {
            let mm = (*raw).mn.mm;
            if (*raw).with_tlbs {
                bindings::mmu_notifier_unregister(ptr::addr_of_mut!((*raw).tlb), mm);
            }
            bindings::mmu_notifier_unregister(ptr::addr_of_mut!((*raw).mn), mm);
        }
    }
}

// -------------------------------------------------------------------------------------
// IntervalNotifier
// -------------------------------------------------------------------------------------

/// The kernel's `struct mmu_interval_notifier`, as the handle an interval callback gets:
/// the interval's bounds and `set_seq` ([`IntervalHandle`]). The core's own
/// `notifier_core::Interval` is the other handle: ops written generic over
/// `I: IntervalHandle` serve both.
///
/// # Invariants
///
/// Reached only inside an [`IntervalNotifier`]; while that is inserted, the kernel owns
/// the tree fields (written at insertion, read here) and `invalidate_seq` is written
/// only through [`set_seq`](IntervalHandle::set_seq) or by the kernel under its lock.
#[repr(transparent)]
pub struct KernelInterval {
    raw: Opaque<bindings::mmu_interval_notifier>,
}

// SAFETY: the kernel writes the fields under its own locks; `set_seq` is a single
// `WRITE_ONCE`-style store; nothing is tied to a thread.
unsafe impl Send for KernelInterval {}
// SAFETY: as above.
unsafe impl Sync for KernelInterval {}

impl IntervalHandle for KernelInterval {
    fn start(&self) -> usize {
        // SAFETY: written by `mmu_interval_notifier_insert` before any callback
        // (type invariant); read in place.
        unsafe { (*self.raw.get()).interval_tree.start }
    }

    fn last(&self) -> usize {
        // SAFETY: as in `start`.
        unsafe { (*self.raw.get()).interval_tree.last }
    }

    /// `mmu_interval_set_seq`: a `WRITE_ONCE` of the sequence, from `invalidate`, under
    /// the driver's lock.
    fn set_seq(&self, cur_seq: u64) {
        // SAFETY: in bounds of the live notifier; a volatile store is `WRITE_ONCE`.
        unsafe {
            ptr::write_volatile(
                ptr::addr_of_mut!((*self.raw.get()).invalidate_seq),
                cur_seq as c_ulong,
            )
        }
    }
}

impl KernelInterval {
    /// The kernel's notifier, for C APIs: `hmm_range.notifier` of `hmm_range_fault`,
    /// `migrate_vma`.
    pub fn as_raw(&self) -> *mut bindings::mmu_interval_notifier {
        self.raw.get()
    }

    /// `mmu_interval_read_begin`: the sequence to check with
    /// [`read_retry`](Self::read_retry); sleeps while an invalidation of this interval
    /// is in flight. Not from inside the notifier's own callback.
    pub fn read_begin(&self) -> u64 {
        // SAFETY: inserted (type invariant: reached only inside an `IntervalNotifier`).
        unsafe { bindings::mmu_interval_read_begin(self.as_raw()) as u64 }
    }

    /// `mmu_interval_read_retry`: whether an invalidation touched the interval since
    /// `read_begin` returned `seq`. Call it under the lock `invalidate` takes around
    /// `set_seq`.
    pub fn read_retry(&self, seq: u64) -> bool {
        // SAFETY: in bounds of the live notifier; a volatile load is `READ_ONCE`.
        let cur = unsafe { ptr::read_volatile(ptr::addr_of!((*self.raw.get()).invalidate_seq)) };
        cur as u64 != seq
    }
}

/// An interval of an address space watched through Linux's `struct
/// mmu_interval_notifier`, whose callbacks are `T` (any [`IntervalOps`] over
/// [`KernelInterval`], typically ops generic over every [`IntervalHandle`]).
///
/// Built in place with [`IntervalNotifier::new`]: the initialiser inserts it
/// (`mmu_interval_notifier_insert`), so one that exists is inserted. Dropping it removes
/// it (`mmu_interval_notifier_remove`, which waits for invalidations of it in flight).
/// Drop it in process context.
///
/// The read side is Linux's sequence protocol: [`read_begin`](Self::read_begin) before
/// reading the CPU page tables (or `hmm_range_fault`), then, under the driver's lock
/// that its `invalidate` also takes, [`read_retry`](Self::read_retry): if true, an
/// invalidation came in between and the translation must not be installed.
///
/// A `T` whose `TWO_PASS` is set gets `invalidate_start` then at once
/// `invalidate_finish` (Linux's interval notifier has a single pass). A refusal
/// (`Err(WouldBlock)`) is passed to Linux only for a non-blockable range; Linux WARNs on
/// a blockable one, so there it counts as done (the ops' bug, as in the core).
///
/// # Invariants
///
/// `interval` is inserted in `interval.raw.mm` with `ops` pointing to `Self::OPS` from
/// the end of initialisation until `drop`; Linux holds `mmgrab` on that mm meanwhile.
#[pin_data(PinnedDrop)]
pub struct IntervalNotifier<T: IntervalOps<KernelInterval>> {
    #[pin]
    ops: T,
    /// Initialised last: inserting makes the callbacks reachable.
    #[pin]
    interval: KernelInterval,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: `T: IntervalOps` is `Sync`; the kernel part is `Send + Sync` (above).
unsafe impl<T: IntervalOps<KernelInterval> + Send> Send for IntervalNotifier<T> {}
// SAFETY: as above.
unsafe impl<T: IntervalOps<KernelInterval>> Sync for IntervalNotifier<T> {}

impl<T: IntervalOps<KernelInterval>> IntervalNotifier<T> {
    const OPS: bindings::mmu_interval_notifier_ops = bindings::mmu_interval_notifier_ops {
        invalidate: Some(Self::c_invalidate),
    };

    /// Watch `[start, start + length)` of `mm` with `ops`.
    ///
    /// Errors: `EINVAL` for an empty or overflowing range, `ENOMEM`, or what `ops`'
    /// initialiser returns. May sleep.
    pub fn new<'a>(
        mm: &'a MmWithUser,
        start: usize,
        length: usize,
        ops: impl PinInit<T, Error> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        T: 'a,
    {
        try_pin_init!(Self {
            ops <- ops,
            // SAFETY: `slot` is the field's memory inside the `IntervalNotifier` being
            // built in place (pinned); `ops` is initialised already. On success the
            // notifier is inserted until `drop` (type invariant); on failure nothing is
            // inserted and the initialiser drops `ops`.
            interval <- unsafe {
                init::pin_init_from_closure(move |slot: *mut KernelInterval| {
                    let raw = Opaque::raw_get(ptr::addr_of!((*slot).raw));
                    // All-zero is the state `mmu_interval_notifier_insert` expects.
                    raw.write_bytes(0, 1);
                    to_result(bindings::mmu_interval_notifier_insert(
                        raw,
                        mm.as_raw(),
                        start,
                        length,
                        &Self::OPS,
                    ))
                })
            },
            _pin: PhantomPinned,
        }? Error)
    }

    /// `mmu_interval_read_begin`: the sequence to check with
    /// [`read_retry`](Self::read_retry); sleeps while an invalidation of this interval
    /// is in flight. Not from inside the notifier's own callback.
    pub fn read_begin(&self) -> u64 {
        self.interval.read_begin()
    }

    /// `mmu_interval_read_retry`: whether an invalidation touched the interval since
    /// `read_begin` returned `seq`. Call it under the lock `invalidate` takes around
    /// `set_seq`.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.interval.read_retry(seq)
    }

    /// `mmu_interval_check_retry`: a lock-free hint that `read_retry` would be true.
    pub fn check_retry(&self, seq: u64) -> bool {
        self.read_retry(seq)
    }

    /// The kernel's interval notifier (also for `hmm_range.notifier`).
    pub fn interval(&self) -> &KernelInterval {
        &self.interval
    }

    /// The callbacks.
    pub fn ops(&self) -> &T {
        &self.ops
    }

    /// The address space it watches.
    pub fn mm(&self) -> &Mm {
        // SAFETY: inserted (type invariant): Linux keeps the mm alive with `mmgrab`
        // until removal.
        unsafe { Mm::from_raw((*self.interval.as_raw()).mm) }
    }

    /// # Safety
    ///
    /// Called by the kernel only, on interval notifiers whose ops are `OPS`, with a
    /// live range.
    unsafe extern "C" fn c_invalidate(
        sub: *mut bindings::mmu_interval_notifier,
        r: *const bindings::mmu_notifier_range,
        cur_seq: c_ulong,
    ) -> bool {
        // SAFETY: the kernel calls `OPS` only on the `interval` field of an inserted
        // `Self` (`KernelInterval` is a transparent wrapper of the notifier), at this
        // offset, alive while inserted; `r` is the kernel's live range.
        let (this, r) = unsafe {
            (
                &*sub.byte_sub(offset_of!(Self, interval)).cast::<Self>(),
                range_from_raw(r),
            )
        };
        let (iv, seq) = (&this.interval, cur_seq as u64);
        let res: core::result::Result<(), WouldBlock> = if T::TWO_PASS {
            this.ops
                .invalidate_start(iv, &r, seq)
                .map(|()| this.ops.invalidate_finish(iv, &r, seq))
        } else {
            this.ops.invalidate(iv, &r, seq)
        };
        // A refusal reaches Linux only where it is legal (a non-blockable range).
        res.is_ok() || r.blockable
    }
}

impl<T: IntervalOps<KernelInterval>> Deref for IntervalNotifier<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

#[pinned_drop]
impl<T: IntervalOps<KernelInterval>> PinnedDrop for IntervalNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: inserted (type invariant). Removal waits for the invalidations of this
        // interval in flight; after it the kernel no longer reaches `ops`.
        unsafe { bindings::mmu_interval_notifier_remove(self.interval.as_raw()) };
    }
}
