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
//! * `harness`: the conformance suite (`tests/`) on real address spaces, run when the
//!   module loads, after the smoke tests.
//! * `kbench`: what one invalidation costs, Linux's notifier against the binding and
//!   the core (printed, not judged), run first.
//! * `shadow`: real programs (Linux's mm selftests) with a recorder on Linux's notifier
//!   and one on the core, compared when each exits; driven from user space through
//!   `/proc/nk_shadow` while the module is loaded.

use kernel::prelude::*;

/// Layouts measured by the C compiler (`forwarder/layout.c`), checked against the
/// bindings.
mod layout {
    include!("layout_offsets.rs");
}
mod harness;
mod kbench;
#[path = "forwarder/mm.rs"]
pub mod mm;
#[path = "binding/mmu_notifier.rs"]
pub mod mmu_notifier;
#[path = "forwarder/platform.rs"]
pub mod platform;
mod reference;
mod shadow;
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
    fn nk_h_init() -> kernel::ffi::c_int;
    fn nk_h_exit();
    fn nk_shadow_init() -> kernel::ffi::c_int;
    fn nk_shadow_fini();
}

/// Monotonic milliseconds.
fn now_ms() -> i64 {
    let mut ts = kernel::bindings::timespec64 {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes.
    unsafe { kernel::bindings::ktime_get_ts64(&mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec as i64 / 1_000_000
}

/// The conformance suite, after the smoke tests. Its lines (`suite: ...`) and closing
/// line are what `cargo xtask kmod` checks; a failure to run it at all is reported
/// here and shows as a missing closing line.
fn conformance_suite() {
    // SAFETY: called once, from module init.
    let r = unsafe { nk_h_init() };
    if r != 0 {
        pr_err!("suite-error: /proc/nk_harness: error {}\n", r);
        return;
    }
    let t0 = now_ms();
    let bugs = platform::Kernel::bugs();
    let r = harness::run();
    smoke::SUITE_BUGS.store(
        platform::Kernel::bugs() - bugs,
        core::sync::atomic::Ordering::Relaxed,
    );
    match r {
        Ok(failed) => pr_info!(
            "suite-done: {} case(s) failed, {} ms\n",
            failed,
            now_ms() - t0
        ),
        Err(e) => pr_err!("suite-error: the suite did not run: {:?}\n", e),
    }
    smoke::reap_cases();
    // SAFETY: paired with `nk_h_init`; every helper process was killed by the suite.
    unsafe { nk_h_exit() };
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
        if smoke::lockdep_teeth_run() {
            smoke::lockdep_teeth();
            // SAFETY: paired with `nk_init` above; nothing of ours is left.
            unsafe { nk_exit() };
            let _ = notifier_core::synchronize::<platform::Kernel>();
            return Err(ENODEV);
        }
        kbench::run();
        match smoke::run_at_init() {
            Ok(at_exit) => {
                conformance_suite();
                // SAFETY: called once; `nk_shadow_fini` in `drop` undoes it.
                if unsafe { nk_shadow_init() } != 0 {
                    pr_err!("shadow-error: /proc/nk_shadow not created\n");
                }
                Ok(NotifierKmod {
                    at_exit: Some(at_exit),
                })
            }
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
        // SAFETY: paired with `nk_shadow_init` (harmless if that failed); first, so
        // that no shadowed process keeps a forwarder.
        unsafe { nk_shadow_fini() };
        if let Some(a) = self.at_exit.take() {
            a.finish();
        }
        // SAFETY: every forwarder handle is dropped (put) above.
        unsafe { nk_exit() };
        let _ = notifier_core::synchronize::<platform::Kernel>();
        smoke::finish_after_exit();
    }
}
