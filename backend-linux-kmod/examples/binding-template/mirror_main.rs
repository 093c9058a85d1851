// SPDX-License-Identifier: GPL-2.0

//! A template for a driver that keeps a secondary MMU coherent with a process's page
//! tables, with the binding (`binding/mmu_notifier.rs`).
//!
//! The "device" here is a table of mirrored ranges behind a kernel `SpinLock`: the ops
//! are pin-initialised, the notifier is registered by constructing it, and dropping it
//! unregisters. At load the module registers on the loading process's address space,
//! maps and unmaps a page there, and checks that the unmap reached the mirror as one
//! start and one end; then it drops the notifier and checks that `release` ran once.
//! Then the same with an interval notifier (`PageMirror`, what a driver that calls
//! `hmm_range_fault` uses): the sequence protocol, and the unmap of its page seen as an
//! invalidation that makes `read_retry` true. Replace `Mirror` and `PageMirror` with the
//! driver's own state.

use core::sync::atomic::{AtomicUsize, Ordering};

use kernel::prelude::*;
use kernel::sync::{new_mutex, new_spinlock, Mutex, SpinLock};
use notifier_core::{IntervalHandle, IntervalOps, Range, SubscriberOps, WouldBlock};

// Public, as in a driver that hands the binding to its other files.
#[path = "binding/mmu_notifier.rs"]
pub mod mmu_notifier;

use mmu_notifier::{IntervalNotifier, MmWithUser, MmuNotifier};

module! {
    type: RustMirror,
    name: "rust_mirror",
    author: "notifier workspace",
    description: "Template: a secondary MMU kept coherent through the MMU-notifier binding",
    license: "GPL",
}

/// `release` calls, read after the notifier (and its ops) are gone.
static RELEASES: AtomicUsize = AtomicUsize::new(0);

/// What the driver caches about the process's memory (here: counts).
#[derive(Default)]
struct Table {
    starts: usize,
    ends: usize,
    /// The last range that was invalidated.
    last: Option<(usize, usize)>,
}

/// The secondary MMU: its state behind a kernel spinlock, which the notifier callbacks
/// take. A spinlock, because a list notifier must complete every start, the
/// non-blockable ones (the OOM reaper's) included, without sleeping: Linux WARNs when a
/// notifier that has an `end` fails its start. A driver that would rather refuse a
/// non-blockable range (and keep a mutex) uses an interval notifier, as `PageMirror`
/// below.
#[pin_data]
struct Mirror {
    #[pin]
    table: SpinLock<Table>,
}

impl SubscriberOps for Mirror {
    fn release(&self) {
        // The address space is going away (or the notifier is being dropped): drop
        // every translation.
        RELEASES.fetch_add(1, Ordering::Relaxed);
    }

    fn invalidate_range_start(&self, r: &Range) -> core::result::Result<(), WouldBlock> {
        // Blockable or not: a spinlock does not sleep.
        let mut t = self.table.lock();
        t.starts += 1;
        t.last = Some((r.start, r.end));
        Ok(())
    }

    fn invalidate_range_end(&self, _r: &Range) {
        self.table.lock().ends += 1;
    }
}

/// A device page table for one interval, kept by the sequence protocol: a "fault"
/// reads the CPU page tables after `read_begin` and installs its translation only if
/// `read_retry` is false under `lock`; `invalidate` takes `lock`, records the sequence
/// and zaps.
#[pin_data]
struct PageMirror {
    #[pin]
    lock: Mutex<Option<usize>>,
    invalidations: AtomicUsize,
}

/// Written for every interval handle, so the same ops also go into the core
/// (`notifier_core::IntervalSubscriber`) on Hermit, the simulator, or through the
/// forwarder.
impl<I: IntervalHandle + ?Sized> IntervalOps<I> for PageMirror {
    fn invalidate(&self, iv: &I, r: &Range, cur_seq: u64) -> core::result::Result<(), WouldBlock> {
        if !r.blockable {
            // The mutex may sleep: refuse, which an interval notifier may (Linux retries
            // the reap later).
            return Err(WouldBlock);
        }
        let mut installed = self.lock.lock();
        iv.set_seq(cur_seq);
        *installed = None;
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)`
/// in the calling process, then `munmap`.
fn map_and_unmap(len: usize) -> Result<usize> {
    let addr = map(len)?;
    // SAFETY: `[addr, addr + len)` is the mapping just made.
    kernel::error::to_result(unsafe { kernel::bindings::vm_munmap(addr, len) })?;
    Ok(addr)
}

/// The `mmap` of [`map_and_unmap`].
fn map(len: usize) -> Result<usize> {
    const PROT_READ_WRITE: usize = 0x1 | 0x2;
    const MAP_PRIVATE_ANONYMOUS_POPULATE: usize = 0x02 | 0x20 | 0x8000;
    // SAFETY: an anonymous mapping in the caller's own address space; no file.
    let addr = unsafe {
        kernel::bindings::vm_mmap(
            core::ptr::null_mut(),
            0,
            len,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS_POPULATE,
            0,
        )
    };
    // An error comes back as a negative errno in the address (`IS_ERR_VALUE`).
    if addr > usize::MAX - 4095 {
        return Err(Error::from_errno(addr as isize as i32));
    }
    Ok(addr)
}

/// The interval notifier on one page: a fault that installs, the unmap that zaps it.
fn interval_demo(mm: &MmWithUser) -> Result {
    let addr = map(4096)?;
    let dev = KBox::pin_init(
        IntervalNotifier::new(
            mm,
            addr,
            4096,
            try_pin_init!(PageMirror {
                lock <- new_mutex!(None),
                invalidations: AtomicUsize::new(0),
            }? Error),
        ),
        GFP_KERNEL,
    )?;
    // The device's fault: begin, read the CPU page tables (`hmm_range_fault` with
    // `dev.interval().as_raw()` as the range's notifier), install unless retried.
    let seq = dev.read_begin();
    {
        let mut installed = dev.lock.lock();
        if dev.read_retry(seq) {
            return Err(EAGAIN); // a real driver loops back to `read_begin`
        }
        *installed = Some(addr);
    }
    // SAFETY: `[addr, addr + 4096)` is the mapping made above.
    kernel::error::to_result(unsafe { kernel::bindings::vm_munmap(addr, 4096) })?;
    let zapped = dev.lock.lock().is_none();
    let n = dev.invalidations.load(Ordering::Relaxed);
    pr_info!(
        "interval: munmap of {:#x}: {} invalidation(s), zapped: {}, read_retry: {}\n",
        addr,
        n,
        zapped,
        dev.read_retry(seq)
    );
    if n == 0 || !zapped || !dev.read_retry(seq) {
        return Err(EINVAL);
    }
    // Removed from Linux's interval tree when dropped.
    drop(dev);
    Ok(())
}

struct RustMirror;

impl kernel::Module for RustMirror {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let mm = MmWithUser::current().ok_or(ESRCH)?;
        let mirror = KBox::pin_init(
            MmuNotifier::<Mirror>::new(
                &mm,
                try_pin_init!(Mirror {
                    table <- new_spinlock!(Table::default()),
                }? Error),
            ),
            GFP_KERNEL,
        )?;
        let addr = map_and_unmap(4096)?;
        {
            let t = mirror.table.lock();
            let seen = t.last.is_some_and(|(s, e)| s <= addr && addr + 4096 <= e);
            pr_info!(
                "munmap of {:#x}: {} start(s), {} end(s), covered: {}\n",
                addr,
                t.starts,
                t.ends,
                seen
            );
            if t.starts == 0 || t.starts != t.ends || !seen {
                return Err(EINVAL);
            }
        }
        // Unregister: Linux calls `release` now, the process being alive, and waits
        // for the callbacks in flight; then the ops are dropped with the box.
        drop(mirror);
        let releases = RELEASES.load(Ordering::Relaxed);
        pr_info!("unregistered, {} release(s)\n", releases);
        if releases != 1 {
            return Err(EINVAL);
        }
        interval_demo(&mm)?;
        Ok(RustMirror)
    }
}
