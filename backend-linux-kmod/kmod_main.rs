// SPDX-License-Identifier: GPL-2.0

//! MMU notifiers for Rust kernel code: `notifier-core` (the same sources the hosted
//! build uses) on top of Linux's `mmu_notifier`.
//!
//! * [`platform`]: the core's `Platform` in Linux terms (spinlock, wait_var_event,
//!   might_sleep, kmalloc).
//! * [`mm`]: one kernel `mmu_notifier` per `mm_struct` forwarding every callback to the
//!   core's `AddressSpace` of that mm, and [`mm::MmNotifier`], the handle Rust code
//!   registers core subscribers through.
//! * `smoke`: the in-kernel tests, run when the module loads and unloads.

use kernel::prelude::*;

/// Layouts measured by the C compiler (`layout.c`), checked against the bindings.
mod layout {
    include!("layout_offsets.rs");
}
pub mod mm;
pub mod platform;
mod smoke;

module! {
    type: NotifierKmod,
    name: "notifier_kmod",
    author: "notifier workspace",
    description: "MMU notifiers for Rust kernel code (notifier-core on mmu_notifier)",
    license: "GPL",
}

extern "C" {
    fn nk_init() -> kernel::ffi::c_int;
    fn nk_exit();
}

struct NotifierKmod {
    at_exit: Option<smoke::AtExit>,
}

impl kernel::Module for NotifierKmod {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: called once, before anything else of the module.
        let r = unsafe { nk_init() };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        match smoke::run_at_init() {
            Ok(at_exit) => Ok(NotifierKmod {
                at_exit: Some(at_exit),
            }),
            Err(e) => {
                // SAFETY: paired with `nk_init` above; nothing of ours is left.
                unsafe { nk_exit() };
                smoke::finish_after_exit();
                Err(e)
            }
        }
    }
}

impl Drop for NotifierKmod {
    fn drop(&mut self) {
        if let Some(a) = self.at_exit.take() {
            a.finish();
        }
        // SAFETY: every forwarder handle is dropped (put) above.
        unsafe { nk_exit() };
        notifier_core::synchronize::<platform::Kernel>();
        smoke::finish_after_exit();
    }
}
