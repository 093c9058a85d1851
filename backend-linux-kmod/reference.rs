// SPDX-License-Identifier: GPL-2.0

//! Reference mode: the conformance suite's consumers registered straight with Linux's
//! own notifier, `mmu_notifier_register` and `mmu_interval_notifier_insert`, with no
//! notifier-core in between. Running the suite this way as well as through the core
//! ([`notifier_conformance::Core`]) shows that what the suite expects is what Linux's C
//! implementation does; a case whose result differs between the two is named by the
//! module.
//!
//! The list subscriptions are the public binding's [`MmuNotifier`]
//! (`binding/mmu_notifier.rs`, with the secondary-TLB notifier), so the suite exercises
//! what a driver uses: the suite's consumers are `SubscriberOps`, the trait both worlds
//! share. The interval subscriptions are the binding's [`IntervalNotifier`] (one
//! `mmu_interval_notifier` each); the sequence protocol is Linux's, through the binding
//! (`mmu_interval_read_begin`, and the `READ_ONCE`/`WRITE_ONCE` of `invalidate_seq` that
//! C's static inlines `read_retry`/`set_seq` are).
//!
//! What only the core offers (typed misuse errors, direct calls into its
//! `AddressSpace`, its shared subscribers, two-pass intervals, the export registry) is
//! reported as lacking, so the suite says "not applicable" for those checks.

use core::marker::PhantomPinned;
use core::ops::Deref;
use core::pin::Pin;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kernel::bindings;
use kernel::ffi::c_int;
use kernel::init::PinInit;
use kernel::types::Opaque;
use notifier_conformance::harness::{Harness, Mm};
use notifier_conformance::subscribe::{
    Feature, IntervalSubscription, IvOps, Notifiers, Seq, Subscription,
};
use notifier_core::{Error, IntervalHandle, IntervalOps, Range, SubscriberOps, WouldBlock};

use crate::mmu_notifier::{IntervalNotifier, KernelInterval, MmWithUser, MmuNotifier};

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
            Feature::ListRefusal => {
                "Linux WARNs when a notifier with an end fails its start \
                 (mn_hlist_invalidate_range_start); here an interval notifier refuses"
            }
            // `Feature` may grow (`#[non_exhaustive]`); what this mode predates it lacks.
            _ => "a core-only feature this mode does not know",
        })
    }
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

/// The suite's consumer as the binding's callbacks: every call goes to the `ops` of
/// the [`CSub`] that registered it.
///
/// # Invariants
///
/// `0` points to the `ops` of a pinned `CSub<T>`, which drops the notifier holding this
/// `Fwd` before its `ops` (unregister or `Drop`).
struct Fwd<T>(NonNull<T>);

// SAFETY: only `&T` is reached through it, and `T: SubscriberOps` is `Sync`.
unsafe impl<T: SubscriberOps> Sync for Fwd<T> {}
// SAFETY: as above.
unsafe impl<T: SubscriberOps> Send for Fwd<T> {}

impl<T: SubscriberOps> Fwd<T> {
    fn ops(&self) -> &T {
        // SAFETY: alive as long as this `Fwd` (type invariant).
        unsafe { self.0.as_ref() }
    }
}

impl<T: SubscriberOps> SubscriberOps for Fwd<T> {
    fn release(&self) {
        self.ops().release()
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.ops().invalidate_range_start(r)
    }
    fn invalidate_range_end(&self, r: &Range) {
        self.ops().invalidate_range_end(r)
    }
    fn invalidate_secondary_tlbs(&self, start: usize, end: usize) {
        self.ops().invalidate_secondary_tlbs(start, end)
    }
    fn clear_flush_young(&self, start: usize, end: usize) -> bool {
        self.ops().clear_flush_young(start, end)
    }
    fn clear_young(&self, start: usize, end: usize) -> bool {
        self.ops().clear_young(start, end)
    }
    fn test_young(&self, addr: usize) -> bool {
        self.ops().test_young(addr)
    }
}

/// A suite consumer registered through the public binding
/// ([`MmuNotifier::new_with_secondary_tlbs`]): the suite's separate `new` and
/// `register` become an [`MmuNotifier`] initialised in place at registration and
/// dropped in place at unregistration.
///
/// # Invariants
///
/// `notifier` holds an initialised (so registered) `MmuNotifier` exactly while
/// `registered` is true, whose `Fwd` points to `ops`.
pub(crate) struct CSub<T: SubscriberOps> {
    notifier: Opaque<MmuNotifier<Fwd<T>>>,
    registered: AtomicBool,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: `notifier` is written only by register/unregister, which the flag makes
// exclusive, and otherwise by the kernel under its own locks; `ops` is `Sync`.
unsafe impl<T: SubscriberOps> Sync for CSub<T> {}
// SAFETY: as above; nothing is tied to the thread that made it.
unsafe impl<T: SubscriberOps + Send> Send for CSub<T> {}

impl<T: SubscriberOps> Deref for CSub<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<H: KernelMms, T: SubscriberOps> Subscription<H, T> for CSub<T> {
    fn new(ops: T) -> Self {
        CSub {
            notifier: Opaque::uninit(),
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
        // SAFETY: the harness holds a user reference on the mm (KernelMms) for as long
        // as the suite registers on it.
        let kmm = unsafe { MmWithUser::from_raw(h.kernel_mm(mm)) };
        // INVARIANT: `Fwd` points to `ops`, which outlives the notifier.
        let init = MmuNotifier::new_with_secondary_tlbs(kmm, Fwd(NonNull::from(&self.ops)));
        // SAFETY: the slot is uninitialised (the flag was false) and pinned with `self`;
        // it is dropped in place, never moved (unregister, Drop).
        match unsafe { init.__pinned_init(self.notifier.get()) } {
            Ok(()) => Ok(()),
            Err(e) => {
                self.registered.store(false, Ordering::Release);
                Err(error(e.to_errno()))
            }
        }
    }

    fn unregister(self: Pin<&Self>) -> Result<(), Error> {
        if !self.registered.load(Ordering::Acquire) {
            return Err(Error::NotRegistered);
        }
        // SAFETY: initialised while registered (invariant); the suite does not race
        // unregister with itself. Dropping it unregisters (PinnedDrop).
        unsafe { ptr::drop_in_place(self.notifier.get()) };
        self.registered.store(false, Ordering::Release);
        Ok(())
    }

    fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }
}

impl<T: SubscriberOps> Drop for CSub<T> {
    fn drop(&mut self) {
        if *self.registered.get_mut() {
            // SAFETY: initialised while registered (invariant); dropped in place.
            unsafe { ptr::drop_in_place(self.notifier.get()) };
        }
    }
}

// -------------------------------------------------------------------------------------
// Interval subscriptions
// -------------------------------------------------------------------------------------

/// The suite's interval consumer as the binding's interval ops: every call goes to the
/// `ops` of the [`CInterval`] that inserted it, with that `CInterval` as the suite's
/// view of the interval ([`Seq`]).
///
/// # Invariants
///
/// `0` points to a pinned `CInterval<T>`, which drops the notifier holding this
/// `IvFwd` before anything else of it (remove or `Drop`).
struct IvFwd<T: IvOps>(NonNull<CInterval<T>>);

// SAFETY: only `&CInterval<T>` is reached through it, which is `Sync`.
unsafe impl<T: IvOps> Sync for IvFwd<T> {}
// SAFETY: as above.
unsafe impl<T: IvOps> Send for IvFwd<T> {}

/// Linux 6.12's interval notifier has one pass: a two-pass consumer's `invalidate`
/// does both (the suite reports two-pass as lacking in this mode).
impl<T: IvOps> IntervalOps<KernelInterval> for IvFwd<T> {
    fn invalidate(&self, _iv: &KernelInterval, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        // SAFETY: alive as long as this `IvFwd` (type invariant).
        let owner = unsafe { self.0.as_ref() };
        owner.ops.invalidate(owner, r, cur_seq)
    }
}

/// A suite interval consumer inserted through the public binding
/// ([`IntervalNotifier`]): the suite's separate `new` and `insert` become an
/// `IntervalNotifier` initialised in place at insertion and dropped in place (removed)
/// at removal.
///
/// # Invariants
///
/// `notifier` holds an initialised (so inserted) `IntervalNotifier` exactly while
/// `inserted` is true, whose `IvFwd` points to this `CInterval`. `start` and `last` hold
/// the bounds of the last insertion.
pub(crate) struct CInterval<T: IvOps> {
    notifier: Opaque<IntervalNotifier<IvFwd<T>>>,
    inserted: AtomicBool,
    start: AtomicUsize,
    last: AtomicUsize,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: `notifier` is written only by insert/remove, which the flag makes exclusive,
// and otherwise by the kernel under its own locks; `ops` is `Sync` (IvOps).
unsafe impl<T: IvOps> Sync for CInterval<T> {}
// SAFETY: as above; nothing is tied to the thread that made it.
unsafe impl<T: IvOps + Send> Send for CInterval<T> {}

impl<T: IvOps> CInterval<T> {
    /// The binding's notifier, while inserted.
    fn notifier(&self) -> Option<&IntervalNotifier<IvFwd<T>>> {
        // SAFETY: initialised while `inserted` (type invariant); the suite does not race
        // a removal with the calls that look at the interval.
        self.inserted
            .load(Ordering::Acquire)
            .then(|| unsafe { &*self.notifier.get() })
    }
}

impl<T: IvOps> Seq for CInterval<T> {
    fn read_begin(&self) -> Result<u64, Error> {
        Ok(self.notifier().ok_or(Error::NotRegistered)?.read_begin())
    }

    fn read_retry(&self, seq: u64) -> bool {
        // Removed (or never inserted): nothing may be installed, retry.
        self.notifier().map_or(true, |n| n.read_retry(seq))
    }

    fn set_seq(&self, cur_seq: u64) {
        // Only `invalidate` calls it, which runs only while inserted.
        if let Some(n) = self.notifier() {
            n.interval().set_seq(cur_seq);
        }
    }

    fn is_inserted(&self) -> bool {
        self.inserted.load(Ordering::Acquire)
    }

    fn start(&self) -> usize {
        self.start.load(Ordering::Relaxed)
    }

    fn last(&self) -> usize {
        self.last.load(Ordering::Relaxed)
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
            notifier: Opaque::uninit(),
            inserted: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            last: AtomicUsize::new(0),
            ops,
            _pin: PhantomPinned,
        }
    }

    fn insert(self: Pin<&Self>, h: &H, mm: Mm, start: usize, len: usize) -> Result<(), Error> {
        if self.inserted.load(Ordering::Acquire) {
            return Err(Error::AlreadyRegistered);
        }
        // SAFETY: the harness holds a user reference on the mm (KernelMms) for as long
        // as the suite inserts on it.
        let kmm = unsafe { MmWithUser::from_raw(h.kernel_mm(mm)) };
        // INVARIANT: `IvFwd` points to this pinned `CInterval`, which outlives the
        // notifier.
        let init = IntervalNotifier::new(kmm, start, len, IvFwd(NonNull::from(&*self)));
        // SAFETY: the slot is uninitialised (not inserted) and pinned with `self`; it is
        // dropped in place, never moved (remove, Drop).
        match unsafe { init.__pinned_init(self.notifier.get()) } {
            Ok(()) => {
                self.start.store(start, Ordering::Relaxed);
                self.last
                    .store(start.wrapping_add(len).wrapping_sub(1), Ordering::Relaxed);
                self.inserted.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(error(e.to_errno())),
        }
    }

    fn remove(self: Pin<&Self>) -> Result<(), Error> {
        if self.notifier().is_none() {
            return Err(Error::NotRegistered);
        }
        self.inserted.store(false, Ordering::Release);
        // SAFETY: initialised while inserted (invariant); the suite does not race remove
        // with itself. Dropping it removes it (PinnedDrop), after the invalidations of
        // it in flight.
        unsafe { ptr::drop_in_place(self.notifier.get()) };
        Ok(())
    }

    fn interval(&self) -> &dyn Seq {
        self
    }
}

impl<T: IvOps> Drop for CInterval<T> {
    fn drop(&mut self) {
        if *self.inserted.get_mut() {
            // SAFETY: initialised while inserted (invariant); dropped in place.
            unsafe { ptr::drop_in_place(self.notifier.get()) };
        }
    }
}
