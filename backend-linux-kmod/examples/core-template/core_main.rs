// SPDX-License-Identifier: GPL-2.0

//! A template for a module that uses notifier-core itself on Linux: the core's
//! subscribers (its typed errors, shared subscribers, two-pass intervals, the same
//! code as on Hermit and the simulator) behind the forwarder, one kernel
//! `mmu_notifier` per mm that hands every callback to the core's address space of it.
//!
//! At load the module sets up the forwarders, gets the one of the loading process's
//! mm, registers a list subscriber and inserts an interval subscriber (whose ops are
//! written for every interval handle, so the binding's `IntervalNotifier` takes them
//! too), maps and unmaps pages, and checks what each saw; at unload it waits for the
//! forwarders' frees. Replace `Counter` and `PageMirror` with the driver's own state.

use core::sync::atomic::{AtomicUsize, Ordering};

use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use notifier_core::{
    IntervalHandle, IntervalOps, IntervalSubscriber, Range, Subscriber, SubscriberOps, WouldBlock,
};

/// Layouts measured by the C compiler (`forwarder/layout.c`), which `mm` and
/// `platform` check against the bindings at compile time.
mod layout {
    include!("layout_offsets.rs");
}
// The three modules the forwarder's files expect at the crate root, by these names.
#[path = "forwarder/mm.rs"]
pub mod mm;
#[path = "binding/mmu_notifier.rs"]
pub mod mmu_notifier;
#[path = "forwarder/platform.rs"]
pub mod platform;

use mm::{Forwarders, KernelResult, MmNotifier, MmWithUser};
use platform::Kernel;

module! {
    type: RustCoreMirror,
    name: "rust_core_mirror",
    author: "notifier workspace",
    description: "Template: notifier-core on Linux through the forwarder",
    license: "GPL",
}

const PAGE: usize = kernel::bindings::PAGE_SIZE;

/// A list subscriber: counts what it is told.
#[derive(Default)]
struct Counter {
    starts: AtomicUsize,
    ends: AtomicUsize,
}

impl SubscriberOps for Counter {
    fn invalidate_range_start(&self, _r: &Range) -> core::result::Result<(), WouldBlock> {
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.ends.fetch_add(1, Ordering::Relaxed);
    }
}

/// An interval subscriber kept by the sequence protocol (see the binding template):
/// its installed translation behind a kernel mutex. The core takes its ops by value, so
/// what must be pinned (the mutex) lives in a reference-counted allocation they share
/// with the fault path.
struct PageMirror {
    installed: Arc<Mutex<Option<usize>>>,
}

impl<I: IntervalHandle + ?Sized> IntervalOps<I> for PageMirror {
    fn invalidate(&self, iv: &I, _r: &Range, cur_seq: u64) -> core::result::Result<(), WouldBlock> {
        let mut installed = self.installed.lock();
        iv.set_seq(cur_seq);
        *installed = None;
        Ok(())
    }
}

/// `mmap` of `len` bytes of anonymous memory in the loading process.
fn map(len: usize) -> Result<usize> {
    const PROT_READ_WRITE: usize = 0x1 | 0x2;
    const MAP_PRIVATE_ANONYMOUS: usize = 0x02 | 0x20;
    // SAFETY: an anonymous mapping in the caller's own address space; no file.
    let addr = unsafe {
        kernel::bindings::vm_mmap(
            core::ptr::null_mut(),
            0,
            len,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            0,
        )
    };
    if addr > usize::MAX - 4095 {
        return Err(Error::from_errno(addr as isize as i32));
    }
    Ok(addr)
}

fn unmap(addr: usize, len: usize) -> Result {
    // SAFETY: a mapping this module made in the caller's address space.
    kernel::error::to_result(unsafe { kernel::bindings::vm_munmap(addr, len) })
}

fn demo() -> Result {
    let mm = MmWithUser::current().ok_or(ESRCH)?;
    // The forwarder of this mm, registered with Linux on first use; it derefs to the
    // core's `AddressSpace`.
    let mmn = MmNotifier::get(&mm)?;
    let addr = map(4 * PAGE)?;

    // A list subscriber: every change of the mm.
    let counter = KBox::pin(Subscriber::<_, Kernel>::new(Counter::default()), GFP_KERNEL)?;
    counter.as_ref().register(&mmn).kernel()?;
    // An interval subscriber on the first page.
    let installed = Arc::pin_init(new_mutex!(None), GFP_KERNEL)?;
    let iv = KBox::pin(
        IntervalSubscriber::<_, Kernel>::new(PageMirror {
            installed: installed.clone(),
        }),
        GFP_KERNEL,
    )?;
    iv.as_ref().insert(&mmn, addr, PAGE).kernel()?;

    // The device's fault on that page: begin, read the CPU page tables, install unless
    // an invalidation came in between.
    let seq = iv.interval().read_begin().kernel()?;
    {
        let mut t = installed.lock();
        if iv.interval().read_retry(seq) {
            return Err(EAGAIN); // a real driver loops back to `read_begin`
        }
        *t = Some(addr);
    }

    unmap(addr, PAGE)?;
    let (s, e) = (
        counter.starts.load(Ordering::Relaxed),
        counter.ends.load(Ordering::Relaxed),
    );
    let zapped = installed.lock().is_none();
    let retry = iv.interval().read_retry(seq);
    pr_info!(
        "munmap of {:#x}: list subscriber {} start(s), {} end(s); interval zapped: {}, read_retry: {}\n",
        addr,
        s,
        e,
        zapped,
        retry
    );
    if s == 0 || s != e || !zapped || !retry {
        return Err(EINVAL);
    }
    // Remove and unregister before the forwarder handle goes.
    iv.as_ref().remove().kernel()?;
    counter.as_ref().unregister().kernel()?;
    unmap(addr, 4 * PAGE)?;
    drop(mmn);
    Ok(())
}

struct RustCoreMirror {
    _forwarders: Forwarders,
}

impl kernel::Module for RustCoreMirror {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let forwarders = Forwarders::new()?;
        demo()?;
        Ok(RustCoreMirror {
            _forwarders: forwarders,
        })
    }
}
