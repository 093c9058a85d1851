//! notifier-core inside a Hermit unikernel.
//!
//! Hermit is a library OS: the application and the kernel share one address space and
//! one set of page tables, changed only in `arch::x86_64::mm::paging::{map, unmap}`.
//! Stock Hermit tells nobody when they change, so anything that caches translations
//! outside the CPU (a device, a remote node, a software TLB) can keep a stale one.
//! The project's kernel patch (`kernel/mmu-notifier.patch`, applied by
//! `cargo xtask hermit`) adds one syscall, `sys_mmu_notifier_register`, and calls the
//! registered hook before present entries change, right after every core's TLB was
//! flushed, and after that.
//!
//! This crate is what the application links:
//!
//! * [`HermitPlatform`]: the core's [`Platform`] on Hermit primitives: `sys_futex_wait`
//!   and `sys_futex_wake` for the address-keyed wait, `sys_yield` in every loop that
//!   waits for another task (Hermit has no time slicing: a task that spins without
//!   yielding never lets the awaited one run on its core), a `spin` mutex whose relax
//!   strategy yields as the writer-side lock, and `sys_alloc`/`sys_dealloc`.
//! * [`KernelMm`]: an [`AddressSpace`] fed by the kernel's hook, attached with
//!   [`KernelMm::attach`]; [`KernelMm::detach`] releases it (teardown). The unikernel
//!   has one address space; several `KernelMm`s may be attached at once, each seeing
//!   all of it or only a window of it (what the test harness uses).
//!
//! ```ignore
//! static MM: KernelMm = KernelMm::new();
//! MM.attach().expect("kernel without the notifier patch?");
//! // register subscribers on MM.address_space() …
//! MM.detach(); // at exit: every subscriber's release, then no more calls
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod hook;
mod platform;
pub mod sys;

pub use hook::{non_blockable_starts, AttachError, KernelMm};
pub use platform::{HermitPlatform, HermitRawLock, Yield};

/// Re-exported so that a user names one crate.
pub use notifier_core::{AddressSpace, Platform};
