// SPDX-License-Identifier: GPL-2.0

//! What one invalidation costs in the kernel (issue 16), for Linux's own notifier and
//! for this project's two ways onto it, with N = 1, 4 and 16 subscribers that do
//! nothing:
//!
//! - `linux-c`: N `struct mmu_notifier`s with C callbacks (`helpers.c`): the native
//!   path, what a C driver pays;
//! - `binding`: N `MmuNotifier<T>`s of the binding, the same kernel path with Rust
//!   callbacks;
//! - `core`: N core subscribers behind the module's one forwarding notifier.
//!
//! The workload is the one `MADV_DONTNEED` makes: `zap_page_range_single` of one page of
//! the loading process (`nk_zap_loop`), a start/end pair with little else around it,
//! `ITERS` times per sample. The configurations take turns within each round, so that
//! drift of the emulated machine falls on all of them alike, and each figure is the
//! median of `ROUNDS` samples. Printed per N: the time per invalidation with nobody
//! subscribed, each configuration's extra time over that, and the extra of the binding
//! and of the core as a percentage of Linux's own.
//!
//! Under QEMU's software emulation (TCG), on a kernel with KASAN and lockdep, absolute
//! times are distorted: every instruction is translated, atomics and fences cost what
//! the emulator makes them cost, and lockdep's bookkeeping on every SRCU read section
//! (Linux's and the core's alike) dominates. Read the ratios, and those only as a rough
//! guide; the hosted benchmarks (`benches/RESULTS.md`) are the measurement.

use core::ffi::c_int;

use kernel::bindings;
use kernel::prelude::*;
use notifier_core::{AddressSpace, Event, Range, Subscriber, SubscriberOps, WouldBlock};

use crate::mm::{KernelResult, MmNotifier};
use crate::mmu_notifier::{MmWithUser, MmuNotifier};
use crate::platform::Kernel;

/// Invalidations per sample, samples per configuration.
const ITERS: c_int = 1000;
const ROUNDS: usize = 11;

/// `struct nk_cbench`, only ever behind a pointer.
#[repr(C)]
struct NkCbench {
    _opaque: [u8; 0],
}

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_cbench_register(mm: *mut bindings::mm_struct, n: c_int) -> *mut NkCbench;
    fn nk_cbench_unregister(v: *mut NkCbench, mm: *mut bindings::mm_struct, n: c_int);
    fn nk_zap_loop(addr: usize, iters: c_int) -> u64;
}

/// A subscriber that does nothing: what is measured is the notifier's own cost.
struct Empty;

impl SubscriberOps for Empty {
    fn invalidate_range_start(&self, _r: &Range) -> core::result::Result<(), WouldBlock> {
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {}
}

/// N C notifiers on `mm`, unregistered on drop.
struct CNotifiers<'a> {
    mm: &'a MmWithUser,
    v: *mut NkCbench,
    n: c_int,
}

impl<'a> CNotifiers<'a> {
    fn new(mm: &'a MmWithUser, n: c_int) -> Result<Self> {
        // SAFETY: `mm` has a user reference for `'a`, which outlives the notifiers.
        let v = unsafe { nk_cbench_register(mm.as_raw(), n) };
        if v.is_null() {
            return Err(ENOMEM);
        }
        Ok(CNotifiers { mm, v, n })
    }
}

impl Drop for CNotifiers<'_> {
    fn drop(&mut self) {
        // SAFETY: the `n` notifiers `nk_cbench_register` registered on this mm.
        unsafe { nk_cbench_unregister(self.v, self.mm.as_raw(), self.n) };
    }
}

/// The configurations, in the order they take turns.
#[derive(Clone, Copy)]
enum Config {
    Nobody,
    LinuxC,
    Binding,
    Core,
}

const CONFIGS: [Config; 4] = [
    Config::Nobody,
    Config::LinuxC,
    Config::Binding,
    Config::Core,
];

/// Nanoseconds per invalidation of one sample, `n` subscribers of configuration `c`.
fn sample(mm: &MmWithUser, addr: usize, c: Config, n: usize) -> Result<u64> {
    let zap = || -> Result<u64> {
        // SAFETY: `addr` is a page mapped in the current (loading) process.
        let ns = unsafe { nk_zap_loop(addr, ITERS) };
        if ns == 0 {
            return Err(EFAULT);
        }
        Ok(ns / ITERS as u64)
    };
    match c {
        Config::Nobody => zap(),
        Config::LinuxC => {
            let _c = CNotifiers::new(mm, n as c_int)?;
            zap()
        }
        Config::Binding => {
            let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
            for _ in 0..n {
                v.push(
                    KBox::pin_init(MmuNotifier::<Empty>::new(mm, Empty), GFP_KERNEL)?,
                    GFP_KERNEL,
                )?;
            }
            zap()
        }
        Config::Core => {
            let mmn = MmNotifier::get(mm)?;
            let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
            for _ in 0..n {
                let s = KBox::pin(Subscriber::new(Empty), GFP_KERNEL)?;
                s.as_ref().register(&mmn).kernel()?;
                v.push(s, GFP_KERNEL)?;
            }
            let r = zap();
            for s in &v {
                s.as_ref().unregister().kernel()?;
            }
            drop(v);
            drop(mmn);
            r
        }
    }
}

/// Nanoseconds per start/end pair of the core alone: an `AddressSpace` of no mm, `n`
/// subscribers, no forwarder, no page tables (what the core itself adds on this
/// platform).
fn core_alone(n: usize) -> Result<u64> {
    let space = KBox::new(AddressSpace::<Kernel>::new(), GFP_KERNEL)?;
    let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        let s = KBox::pin(Subscriber::new(Empty), GFP_KERNEL)?;
        s.as_ref().register(&space).kernel()?;
        v.push(s, GFP_KERNEL)?;
    }
    let r = Range::new(0, bindings::PAGE_SIZE, Event::Clear);
    // SAFETY: a plain clock read.
    let t0 = unsafe { bindings::ktime_get_mono_fast_ns() };
    for _ in 0..ITERS {
        space.invalidate_range_start(r).kernel()?.end();
    }
    // SAFETY: as above.
    let t1 = unsafe { bindings::ktime_get_mono_fast_ns() };
    for s in &v {
        s.as_ref().unregister().kernel()?;
    }
    Ok((t1 - t0) / ITERS as u64)
}

fn median(v: &mut [u64; ROUNDS]) -> u64 {
    v.sort_unstable();
    v[ROUNDS / 2]
}

/// `extra` as a percentage of `base`, or -1 if `base` is not positive.
fn percent(extra: i64, base: i64) -> i64 {
    if base > 0 {
        extra * 100 / base
    } else {
        -1
    }
}

fn run_in(mm: &MmWithUser, addr: usize) -> Result {
    for n in [1usize, 4, 16] {
        let mut samples = [[0u64; ROUNDS]; 4];
        let mut alone = [0u64; ROUNDS];
        for round in 0..ROUNDS {
            for (s, &c) in samples.iter_mut().zip(CONFIGS.iter()) {
                s[round] = sample(mm, addr, c, n)?;
            }
            alone[round] = core_alone(n)?;
        }
        let alone = median(&mut alone);
        let [nobody, linux, binding, core] = samples.map(|mut s| median(&mut s) as i64);
        let (l, b, c) = (linux - nobody, binding - nobody, core - nobody);
        // For `cargo xtask bench-report` (RESULTS.md): the medians, in nanoseconds.
        pr_info!(
            "kbench: row n={} nobody={} linux-c={} binding={} core={} core-alone={}\n",
            n,
            nobody,
            linux,
            binding,
            core,
            alone
        );
        pr_info!(
            "kbench: N={}: {} ns per invalidation with nobody subscribed; extra: linux-c {} ns, binding {} ns, core {} ns; binding {}% and core {}% of linux-c's extra; the core alone (no forwarder, no mm) {} ns per start/end\n",
            n,
            nobody,
            l,
            b,
            c,
            percent(b, l),
            percent(c, l),
            alone
        );
    }
    Ok(())
}

/// Run the measurement in the loading process. A failure is printed, not fatal: the
/// figures are information, not a test.
pub(crate) fn run() {
    let Some(mm) = MmWithUser::current() else {
        pr_info!("kbench: not loaded by a user process: nothing measured\n");
        return;
    };
    const PROT_READ_WRITE: usize = 0x1 | 0x2;
    const MAP_PRIVATE_ANONYMOUS: usize = 0x02 | 0x20;
    // SAFETY: an anonymous mapping in the loading process's own address space.
    let addr = unsafe {
        bindings::vm_mmap(
            core::ptr::null_mut(),
            0,
            bindings::PAGE_SIZE,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            0,
        )
    };
    if addr > usize::MAX - 4095 {
        pr_info!("kbench: vm_mmap failed: {}\n", addr as isize);
        return;
    }
    if let Err(e) = run_in(&mm, addr) {
        pr_info!("kbench: failed: {:?}\n", e);
    }
    // SAFETY: the mapping made above, in the same process.
    unsafe { bindings::vm_munmap(addr, bindings::PAGE_SIZE) };
    pr_info!(
        "kbench: done (QEMU software emulation, KASAN and lockdep: absolute times are distorted, read the ratios)\n"
    );
}
