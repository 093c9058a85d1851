//! MMU notifiers: how a **secondary MMU** learns that the **primary** page tables of an
//! address space are about to change, so that it never keeps a translation to a page
//! that is gone.
//!
//! # The problem
//!
//! A hypervisor's shadow or EPT tables, a device or IOMMU TLB, a GPU page table, a
//! remote node that imported pages: each caches translations of a process's (or
//! guest's) virtual addresses to physical pages *outside* the CPU page tables. When the
//! kernel unmaps, protects, migrates, reclaims or copy-on-write-breaks a page, it
//! flushes the CPU TLB — but nothing tells those secondary MMUs. If one keeps its
//! translation, it reaches a page after the kernel freed and reused it.
//!
//! The answer (Linux, 2008) is to let the secondary MMUs subscribe to the **address
//! space**, not to pages: a page that is no longer mapped in the primary tables is never
//! visited by the reverse map again, so only the address space can reliably say "this
//! range is changing".
//!
//! # The model
//!
//! * An [`AddressSpace`] is what a backend embeds in its `mm_struct`. It costs one
//!   pointer; the per-address-space [`Subscriptions`](AddressSpace) object is created by
//!   the first registration.
//! * A [`Subscriber`] is a pinned, intrusive node with your [`SubscriberOps`] callbacks.
//!   Registration allocates nothing. The list of subscribers is read under a sleepable
//!   RCU ([`srcu`]), so the invalidation path takes no lock and allocates nothing. An
//!   invalidation counts itself in flight from its start to its end (registration and
//!   unregistration wait for that count), and that one read-side section also keeps
//!   the nodes it walks alive: a node's memory goes back only after grace periods of
//!   both the in-flight count and the platform's RCU that began after its unlink.
//! * The primary MMU brackets every page-table change:
//!   [`AddressSpace::invalidate_range_start`] **before** clearing entries (pages still
//!   mapped and referenced), then [`Invalidation::end`] **after** the entries changed and
//!   the TLB is flushed. Between the two a secondary MMU must not establish a
//!   translation inside the range. Why a bracket and not one call: a secondary MMU that
//!   faults *during* the change could otherwise read the old entry after its
//!   invalidation ran and keep it forever (the 2008 race, C-09). A kernel whose
//!   page-table changes already exclude registration (Linux: `mmap_lock` and the
//!   reverse-map locks, all taken by `mmu_notifier_register`) starts them through a
//!   [`RegistrationExcluded`] proof instead: with nobody ever subscribed that start is
//!   one load and one branch.
//! * An [`IntervalSubscriber`] covers one virtual range and uses the sequence protocol
//!   ([`interval`]): faults snapshot a sequence with [`Interval::read_begin`], read the
//!   primary entries, and retry if [`Interval::read_retry`] says an invalidation
//!   happened meanwhile.
//! * Teardown ([`AddressSpace::release`]) calls every subscriber's `release` exactly
//!   once; [`Subscriber::unregister`] is a barrier after which no callback runs.
//! * Non-blockable invalidations (from atomic context) may be refused with
//!   [`WouldBlock`]; the core unwinds and the primary MMU retries later.
//!
//! What differs per kernel — the RCU flavour, the lock, how to wait, the CPU id — is the
//! [`Platform`] a backend implements; [`srcu::Srcu`] is a portable sleepable RCU for
//! kernels without one. The crate is `#![no_std]` and needs only `core`: the Linux
//! kernel builds no `alloc`.
//!
//! # A KVM-like secondary MMU
//!
//! A shadow page table with one entry per guest page. The fault path snapshots the
//! sequence, reads the primary entry without holding its own lock, then installs the
//! translation under its lock only if no invalidation ran meanwhile.
//!
//! ```
//! use core::pin::pin;
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use notifier_core::std_platform::StdPlatform as P;
//! use notifier_core::{AddressSpace, Event, Interval, IntervalOps, IntervalSubscriber, Range, WouldBlock};
//!
//! /// Shadow entries: guest address -> host frame.
//! struct Shadow { spte: Mutex<HashMap<usize, u64>> }
//!
//! impl IntervalOps<Interval<P>> for Shadow {
//!     fn invalidate(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
//!         let mut spte = self.spte.lock().unwrap();
//!         iv.set_seq(cur_seq); // under the same lock the fault path checks
//!         spte.retain(|&gva, _| gva < r.start || gva >= r.end); // zap
//!         Ok(())
//!     }
//! }
//!
//! /// The primary page table, as the fault path would read it.
//! let primary = Mutex::new(HashMap::from([(0x1000usize, 42u64)]));
//! let mm = AddressSpace::<P>::new();
//! let kvm = pin!(IntervalSubscriber::new(Shadow { spte: Mutex::new(HashMap::new()) }));
//! kvm.as_ref().insert(&mm, 0, 1 << 20).unwrap();
//!
//! let fault = |gva: usize| loop {
//!     let seq = kvm.interval().read_begin().unwrap();
//!     let Some(frame) = primary.lock().unwrap().get(&gva).copied() else { return None };
//!     let mut spte = kvm.spte.lock().unwrap();
//!     if kvm.interval().read_retry(seq) {
//!         continue; // an invalidation ran since read_begin: the frame may be stale
//!     }
//!     spte.insert(gva, frame);
//!     return Some(frame);
//! };
//!
//! assert_eq!(fault(0x1000), Some(42));
//! // The primary MMU unmaps the page: start, change the entry, flush, end.
//! let inv = mm.invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap)).unwrap();
//! primary.lock().unwrap().remove(&0x1000);
//! inv.end();
//! assert!(kvm.spte.lock().unwrap().is_empty()); // zapped
//! assert_eq!(fault(0x1000), None);
//! ```
//!
//! # Cases
//!
//! The contract's cases (C-01…C-23) are described in the repository's
//! `docs/CONTRACT.md`, each with the tests that check it; a case id is also named in the
//! documentation of the call that keeps it. Bringing the core to a new kernel (the
//! [`Platform`], where the primary MMU calls the core, running the conformance suite)
//! is `docs/PORTING.md`.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "std", loom))]
extern crate std;

/// Not part of the API: the atomics the core is built from (`core`'s, or loom's when
/// model checking). Outside loom they are `core::sync::atomic`'s types, which is what a
/// backend names in its [`Platform`].
#[doc(hidden)]
pub mod primitive;

mod error;
pub mod export;
pub mod interval;
pub mod itree;
mod platform;
mod range;
mod release;
pub mod srcu;
mod subscriber;
mod subscriptions;
pub mod sync;
pub mod task;
mod young;

#[cfg(all(feature = "std", not(loom)))]
pub mod std_platform;

pub use error::{Bug, Error, WouldBlock};
pub use interval::{Interval, IntervalHandle, IntervalOps, IntervalSubscriber};
pub use platform::{LockClass, Platform, RawLock, SleepClass};
pub use range::{Event, Range};
pub use subscriber::{synchronize, Shared, SharedOps, SharedRef, Subscriber, SubscriberOps};
pub use subscriptions::{AddressSpace, ExcludesRegistration, Invalidation, RegistrationExcluded};
