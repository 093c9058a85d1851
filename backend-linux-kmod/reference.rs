// SPDX-License-Identifier: GPL-2.0

//! Reference mode: the conformance suite's consumers registered straight with Linux's
//! own notifier, `mmu_notifier_register` and `mmu_interval_notifier_insert`, with no
//! notifier-core in between. Running the suite this way as well as through the core
//! ([`notifier_conformance::Core`]) shows that what the suite expects is what Linux's C
//! implementation does; a case whose result differs between the two is named by the
//! module.
//!
//! Each list subscription is two kernel `mmu_notifier`s: Linux refuses
//! `arch_invalidate_secondary_tlbs` on a notifier that also has start/end, and the
//! suite's consumers may use both. The first carries `release`, start/end and the
//! young calls, the second only the secondary-TLB flush. An interval subscription is
//! one `mmu_interval_notifier`; the sequence protocol is Linux's
//! (`mmu_interval_read_begin`, and `read_retry`/`set_seq`, which are static inlines in
//! C, as the same `READ_ONCE`/`WRITE_ONCE` of `invalidate_seq` here).
//!
//! What only the core offers (typed misuse errors, direct calls into its
//! `AddressSpace`, its shared subscribers, two-pass intervals, the export registry) is
//! reported as lacking, so the suite says "not applicable" for those checks.

use core::marker::PhantomPinned;
use core::mem::offset_of;
use core::ops::Deref;
use core::pin::Pin;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::bindings;
use kernel::ffi::{c_int, c_ulong};
use kernel::types::Opaque;
use notifier_conformance::harness::{Harness, Mm};
use notifier_conformance::subscribe::{
    Feature, IntervalSubscription, IvOps, Notifiers, Seq, Subscription,
};
use notifier_core::{Error, Event, Range, SubscriberOps};

use crate::platform::Kernel;

/// A harness whose address spaces are real kernel mms.
pub(crate) trait KernelMms: Harness<P = Kernel> {
    /// The `mm_struct` of suite address space `mm`. The harness holds a user reference
    /// on it (`mmget`) from `create_mm` until `teardown`, which is when the suite
    /// registers and inserts on it; registration itself holds `mmgrab` until the
    /// matching unregister or remove, so those may come after the teardown.
    fn kernel_mm(&self, mm: Mm) -> *mut bindings::mm_struct;
}

/// The reference mode: Linux's `mmu_notifier` and `mmu_interval_notifier`.
pub(crate) struct LinuxC;

impl<H: KernelMms> Notifiers<H> for LinuxC {
    const NAME: &'static str = "Linux's own mmu_notifier (reference mode)";
    type Sub<T: SubscriberOps> = CSub<T>;
    type Iv<T: IvOps> = CInterval<T>;

    fn lacks(f: Feature) -> Option<&'static str> {
        Some(match f {
            Feature::MisuseErrors => {
                "Linux's C has no typed errors for misuse (a double registration corrupts \
                 its list; it WARNs at most)"
            }
            Feature::DirectCalls => {
                "the suite's direct calls go to the core's AddressSpace, which Linux's \
                 notifier never sees"
            }
            Feature::SharedGetPut => {
                "the suite's shared subscribers are the core's get/put; mmu_notifier_get \
                 is not driven in reference mode"
            }
            Feature::TwoPass => "Linux 6.12 has no two-pass interval notifiers",
            Feature::Export => "no page-free hook for exporters on this platform",
            // `Feature` may grow (`#[non_exhaustive]`); what this mode predates it lacks.
            _ => "a core-only feature this mode does not know",
        })
    }
}

/// The kernel's range as the core's.
///
/// # Safety
///
/// `r` points to a live `mmu_notifier_range` (the kernel's argument to a callback).
unsafe fn range(r: *const bindings::mmu_notifier_range) -> Range {
    // SAFETY: caller's contract.
    let r = unsafe { &*r };
    // A code newer than this module: the safe reading is "it goes away".
    let ev = crate::mm::event(r.event).unwrap_or(Event::Unmap);
    let mut out = Range::new(r.start, r.end, ev);
    out.blockable = r.flags & bindings::MMU_NOTIFIER_RANGE_BLOCKABLE != 0;
    out.owner = r.owner as usize;
    out
}

/// Errors of `mmu_notifier_register` / `mmu_interval_notifier_insert` as the core's.
fn error(rc: c_int) -> Error {
    if rc == -(bindings::ENOMEM as c_int) {
        Error::NoMemory
    } else if rc == -(bindings::EINVAL as c_int) {
        Error::Overflow
    } else {
        Error::Dead
    }
}

// -------------------------------------------------------------------------------------
// List subscriptions
// -------------------------------------------------------------------------------------

/// A suite consumer registered with `mmu_notifier_register`.
///
/// # Invariants
///
/// - `registered` is true exactly between a successful [`Subscription::register`] and
///   the matching unregister; while it is, both notifiers are on the mm's list, their
///   `ops` point to this type's tables and `mn.mm` is the mm.
/// - The kernel reaches `ops` only through those notifiers, from callbacks that run
///   while they are registered (and `mmu_notifier_unregister` waits for them).
#[repr(C)]
pub(crate) struct CSub<T> {
    /// Start/end, the young calls and release. First, so that a pointer to it is one to
    /// the whole.
    mn: Opaque<bindings::mmu_notifier>,
    /// `arch_invalidate_secondary_tlbs` only.
    tlb: Opaque<bindings::mmu_notifier>,
    registered: AtomicBool,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: the notifiers are written only by `register` (before the kernel knows them)
// and otherwise by the kernel under its own locks; `ops` is `Sync` (SubscriberOps).
unsafe impl<T: SubscriberOps> Sync for CSub<T> {}
// SAFETY: as above; nothing is tied to the thread that made it.
unsafe impl<T: SubscriberOps + Send> Send for CSub<T> {}

impl<T: SubscriberOps> CSub<T> {
    const OPS: bindings::mmu_notifier_ops = bindings::mmu_notifier_ops {
        release: Some(Self::c_release),
        clear_flush_young: Some(Self::c_clear_flush_young),
        clear_young: Some(Self::c_clear_young),
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

    /// # Safety
    ///
    /// `mn` is the `mn` field of a registered `CSub<T>`.
    unsafe fn from_mn<'a>(mn: *mut bindings::mmu_notifier) -> &'a Self {
        // SAFETY: `mn` is the first field of a `#[repr(C)]` `CSub<T>` (caller's
        // contract), which stays alive while registered (type invariant).
        unsafe { &*mn.cast::<Self>() }
    }

    /// # Safety
    ///
    /// Called by the kernel only: `mn` is the `mn` field of a registered `CSub<T>`.
    unsafe extern "C" fn c_release(mn: *mut bindings::mmu_notifier, _mm: *mut bindings::mm_struct) {
        // SAFETY: the kernel calls this only on `mn` notifiers (OPS is theirs).
        unsafe { Self::from_mn(mn) }.ops.release();
    }

    /// # Safety
    ///
    /// Called by the kernel only: `mn` is the `mn` field of a registered `CSub<T>`,
    /// `r` a live range.
    unsafe extern "C" fn c_start(
        mn: *mut bindings::mmu_notifier,
        r: *const bindings::mmu_notifier_range,
    ) -> c_int {
        // SAFETY: as in `c_release`; `r` is the kernel's live range.
        let (s, r) = unsafe { (Self::from_mn(mn), range(r)) };
        match s.ops.invalidate_range_start(&r) {
            Ok(()) => 0,
            Err(_) => -(bindings::EAGAIN as c_int),
        }
    }

    /// # Safety
    ///
    /// Called by the kernel only: `mn` is the `mn` field of a registered `CSub<T>`,
    /// `r` a live range.
    unsafe extern "C" fn c_end(
        mn: *mut bindings::mmu_notifier,
        r: *const bindings::mmu_notifier_range,
    ) {
        // SAFETY: as in `c_start`.
        let (s, r) = unsafe { (Self::from_mn(mn), range(r)) };
        s.ops.invalidate_range_end(&r);
    }

    /// # Safety
    ///
    /// Called by the kernel only: `mn` is the `mn` field of a registered `CSub<T>`.
    unsafe extern "C" fn c_clear_flush_young(
        mn: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) -> c_int {
        // SAFETY: as in `c_release`.
        let s = unsafe { Self::from_mn(mn) };
        c_int::from(s.ops.clear_flush_young(start, end))
    }

    /// # Safety
    ///
    /// Called by the kernel only: `mn` is the `mn` field of a registered `CSub<T>`.
    unsafe extern "C" fn c_clear_young(
        mn: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) -> c_int {
        // SAFETY: as in `c_release`.
        let s = unsafe { Self::from_mn(mn) };
        c_int::from(s.ops.clear_young(start, end))
    }

    /// # Safety
    ///
    /// Called by the kernel only: `mn` is the `mn` field of a registered `CSub<T>`.
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
    /// Called by the kernel only: `tlb` is the `tlb` field of a registered `CSub<T>`.
    unsafe extern "C" fn c_tlbs(
        tlb: *mut bindings::mmu_notifier,
        _mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
    ) {
        // SAFETY: the kernel calls this only on `tlb` notifiers (TLB_OPS is theirs), the
        // `tlb` field of a registered `CSub<T>`, alive while registered.
        let s = unsafe { &*tlb.byte_sub(offset_of!(Self, tlb)).cast::<Self>() };
        s.ops.invalidate_secondary_tlbs(start, end);
    }
}

impl<T> CSub<T> {
    /// Take both notifiers off the mm's list.
    ///
    /// # Safety
    ///
    /// Registered (the flag is true, under the type invariant).
    unsafe fn unregister_now(&self) {
        // SAFETY: registered (caller's contract): both notifiers are on `mn.mm`'s list,
        // which registration keeps alive (mmgrab). Unregister waits for the callbacks
        // in flight and calls `release` if the exit did not.
        unsafe {
            let mm = (*self.mn.get()).mm;
            bindings::mmu_notifier_unregister(self.tlb.get(), mm);
            bindings::mmu_notifier_unregister(self.mn.get(), mm);
        }
    }
}

impl<T: SubscriberOps> Deref for CSub<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<H: KernelMms, T: SubscriberOps> Subscription<H, T> for CSub<T> {
    fn new(ops: T) -> Self {
        CSub {
            // SAFETY: all-zero is the unregistered state the kernel expects.
            mn: Opaque::new(unsafe { core::mem::zeroed() }),
            // SAFETY: as above.
            tlb: Opaque::new(unsafe { core::mem::zeroed() }),
            registered: AtomicBool::new(false),
            ops,
            _pin: PhantomPinned,
        }
    }

    fn register(self: Pin<&Self>, h: &H, mm: Mm) -> Result<(), Error> {
        if self.registered.swap(true, Ordering::AcqRel) {
            // Linux would corrupt its list: refuse, as the core does.
            return Err(Error::AlreadyRegistered);
        }
        let kmm = h.kernel_mm(mm);
        // SAFETY: not registered (the flag was false), so the kernel does not know
        // these notifiers yet; `self` is pinned and unregisters before it goes (Drop).
        // `kmm` has a user reference (KernelMms).
        unsafe {
            (*self.mn.get()).ops = &Self::OPS;
            (*self.tlb.get()).ops = &Self::TLB_OPS;
            let rc = bindings::mmu_notifier_register(self.mn.get(), kmm);
            if rc != 0 {
                self.registered.store(false, Ordering::Release);
                return Err(error(rc));
            }
            let rc = bindings::mmu_notifier_register(self.tlb.get(), kmm);
            if rc != 0 {
                bindings::mmu_notifier_unregister(self.mn.get(), kmm);
                self.registered.store(false, Ordering::Release);
                return Err(error(rc));
            }
        }
        Ok(())
    }

    fn unregister(self: Pin<&Self>) -> Result<(), Error> {
        if !self.registered.load(Ordering::Acquire) {
            return Err(Error::NotRegistered);
        }
        // SAFETY: registered (the flag).
        unsafe { self.unregister_now() };
        self.registered.store(false, Ordering::Release);
        Ok(())
    }

    fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }
}

impl<T> Drop for CSub<T> {
    fn drop(&mut self) {
        if *self.registered.get_mut() {
            // SAFETY: registered (the flag).
            unsafe { self.unregister_now() };
        }
    }
}

// -------------------------------------------------------------------------------------
// Interval subscriptions
// -------------------------------------------------------------------------------------

/// A suite interval consumer inserted with `mmu_interval_notifier_insert`.
///
/// # Invariants
///
/// `inserted` is true exactly between a successful insert and the matching remove;
/// while it is, `ivn` is in the mm's interval tree with `ops` pointing to this type's
/// table, and the kernel calls `invalidate` on it (`mmu_interval_notifier_remove`
/// waits for those calls).
#[repr(C)]
pub(crate) struct CInterval<T> {
    /// First, so that a pointer to it is one to the whole.
    ivn: Opaque<bindings::mmu_interval_notifier>,
    inserted: AtomicBool,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: as for `CSub`: the kernel's part is touched by the kernel under its locks
// and by us only before insert; `ops` is `Sync` (IvOps).
unsafe impl<T: IvOps> Sync for CInterval<T> {}
// SAFETY: as above.
unsafe impl<T: IvOps + Send> Send for CInterval<T> {}

impl<T: IvOps> CInterval<T> {
    const OPS: bindings::mmu_interval_notifier_ops = bindings::mmu_interval_notifier_ops {
        invalidate: Some(Self::c_invalidate),
    };

    /// # Safety
    ///
    /// Called by the kernel only: `ivn` is the `ivn` field of an inserted
    /// `CInterval<T>`, `r` a live range.
    unsafe extern "C" fn c_invalidate(
        ivn: *mut bindings::mmu_interval_notifier,
        r: *const bindings::mmu_notifier_range,
        cur_seq: c_ulong,
    ) -> bool {
        // SAFETY: the kernel calls this only on inserted `CInterval<T>`s (OPS is
        // theirs), whose first field `ivn` is; alive while inserted. `r` is live.
        let (s, r) = unsafe { (&*ivn.cast::<Self>(), range(r)) };
        // Linux 6.12 has one pass: a two-pass consumer's `invalidate` does both.
        s.ops.invalidate(s, &r, cur_seq as u64).is_ok()
    }
}

impl<T: IvOps> Seq for CInterval<T> {
    fn read_begin(&self) -> Result<u64, Error> {
        if !self.inserted.load(Ordering::Acquire) {
            return Err(Error::NotRegistered);
        }
        // SAFETY: inserted (invariant): `ivn` is in its mm's tree.
        Ok(unsafe { bindings::mmu_interval_read_begin(self.ivn.get()) } as u64)
    }

    fn read_retry(&self, seq: u64) -> bool {
        // SAFETY: `mmu_interval_read_retry` is `READ_ONCE(invalidate_seq) != seq`: a
        // volatile read of a field the kernel writes with `WRITE_ONCE`.
        let cur = unsafe { ptr::read_volatile(ptr::addr_of!((*self.ivn.get()).invalidate_seq)) };
        cur as u64 != seq
    }

    fn set_seq(&self, cur_seq: u64) {
        // SAFETY: `mmu_interval_set_seq` is `WRITE_ONCE(invalidate_seq, cur_seq)`, called
        // from `invalidate` under the consumer's lock, as here.
        unsafe {
            ptr::write_volatile(
                ptr::addr_of_mut!((*self.ivn.get()).invalidate_seq),
                cur_seq as c_ulong,
            )
        }
    }

    fn is_inserted(&self) -> bool {
        self.inserted.load(Ordering::Acquire)
    }

    fn start(&self) -> usize {
        // SAFETY: written by insert before `inserted` was set, not changed after.
        unsafe { (*self.ivn.get()).interval_tree.start }
    }

    fn last(&self) -> usize {
        // SAFETY: as in `start`.
        unsafe { (*self.ivn.get()).interval_tree.last }
    }
}

impl<T: IvOps> Deref for CInterval<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<H: KernelMms, T: IvOps> IntervalSubscription<H, T> for CInterval<T> {
    fn new(ops: T) -> Self {
        CInterval {
            // SAFETY: all-zero is the not-inserted state the kernel expects.
            ivn: Opaque::new(unsafe { core::mem::zeroed() }),
            inserted: AtomicBool::new(false),
            ops,
            _pin: PhantomPinned,
        }
    }

    fn insert(self: Pin<&Self>, h: &H, mm: Mm, start: usize, len: usize) -> Result<(), Error> {
        if self.inserted.swap(true, Ordering::AcqRel) {
            return Err(Error::AlreadyRegistered);
        }
        // SAFETY: not inserted, so the kernel does not know `ivn`; `self` is pinned and
        // removes it before it goes (Drop); the mm has a user reference (KernelMms).
        let rc = unsafe {
            bindings::mmu_interval_notifier_insert(
                self.ivn.get(),
                h.kernel_mm(mm),
                start as c_ulong,
                len as c_ulong,
                &Self::OPS,
            )
        };
        if rc != 0 {
            self.inserted.store(false, Ordering::Release);
            return Err(error(rc));
        }
        Ok(())
    }

    fn remove(self: Pin<&Self>) -> Result<(), Error> {
        if !self.inserted.load(Ordering::Acquire) {
            return Err(Error::NotRegistered);
        }
        // SAFETY: inserted (invariant); remove waits for invalidations in flight.
        unsafe { bindings::mmu_interval_notifier_remove(self.ivn.get()) };
        self.inserted.store(false, Ordering::Release);
        Ok(())
    }

    fn interval(&self) -> &dyn Seq {
        self
    }
}

impl<T> Drop for CInterval<T> {
    fn drop(&mut self) {
        if *self.inserted.get_mut() {
            // SAFETY: inserted (invariant).
            unsafe { bindings::mmu_interval_notifier_remove(self.ivn.get()) };
        }
    }
}
