// SPDX-License-Identifier: GPL-2.0

//! `rust_dmirror`: the `dmirror` test device of Linux's `lib/test_hmm.c`, written in
//! Rust on the MMU-notifier binding (`binding/mmu_notifier.rs`), as a driver that
//! mirrors user memory with `hmm_range_fault` would be.
//!
//! Each open file is a device that mirrors the opening process's address space: a
//! device page table (an xarray from page index to `struct page`, tagged when the
//! device may write) kept coherent by an [`IntervalNotifier`] over the whole address
//! space. A device access looks the pages up; a missing one is faulted in with
//! `hmm_range_fault` under the sequence protocol (`read_begin`, fault, then under the
//! table's mutex `read_retry`, install only if false); the notifier's `invalidate`
//! takes the same mutex, records the sequence and zaps the range. A snapshot inserts a
//! temporary interval notifier over the range it reads, as the C driver does.
//!
//! The user ABI is `lib/test_hmm_uapi.h`'s, on `/dev/hmm_dmirror0` and `1` (the C
//! module's two device-private units), so Linux's own
//! `tools/testing/selftests/mm/hmm-tests` runs unchanged against it.
//!
//! Ported: `open`/`release`, `mmap` of the device (zeroed pages inserted with
//! `vm_insert_page`), and the `HMM_DMIRROR_READ`, `HMM_DMIRROR_WRITE`,
//! `HMM_DMIRROR_SNAPSHOT`, `HMM_DMIRROR_EXCLUSIVE` and `HMM_DMIRROR_CHECK_EXCLUSIVE`
//! ioctls. Not ported: device memory (`MIGRATE_TO_DEV`, `MIGRATE_TO_SYS` and `RELEASE`
//! return `EINVAL`), so the hmm-tests that migrate to the device fail here.
//!
//! The module parameter `teeth=1` (glue.c) makes `invalidate` keep the device's
//! entries: the broken driver `cargo xtask kmod` checks hmm-tests catch. It pins (and
//! leaks) every page it maps, so its stale entries never reach a freed page.
//!
//! Where it differs from the C driver: 6.12's kernel `Mutex` has no `try_lock`, so a
//! non-blockable invalidation (the OOM reaper's) is refused (Linux retries it) where
//! the C driver tries the lock; an `hmm_range_fault` result that the C driver WARNs
//! about is an `EFAULT` here (the test kernel panics on WARN).

use core::ffi::{c_int, c_uint, c_void};
use core::pin::Pin;

use kernel::alloc::flags::{__GFP_ZERO, GFP_KERNEL};
use kernel::bindings;
use kernel::ioctl::_IOWR;
use kernel::page::Page;
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{new_mutex, Mutex};
use kernel::types::{AsBytes, ForeignOwnable, FromBytes, Opaque};
use kernel::uaccess::UserSlice;
use notifier_core::{IntervalHandle, IntervalOps, Range, WouldBlock};

/// C's `unsigned long`, as the kernel's bindings map it (`usize`, not `core::ffi`'s).
#[allow(non_camel_case_types)]
type c_ulong = usize;
/// C's `long`, likewise.
#[allow(non_camel_case_types)]
type c_long = isize;

#[path = "binding/mmu_notifier.rs"]
pub mod mmu_notifier;

use mmu_notifier::{IntervalNotifier, KernelInterval, MmWithUser};

module! {
    type: RustDmirror,
    name: "rust_dmirror",
    author: "notifier workspace",
    description: "The dmirror HMM test device of lib/test_hmm.c, in Rust on the MMU-notifier binding",
    license: "GPL",
}

const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Pages per `hmm_range_fault` call, as in the C driver.
const CHUNK: usize = 64;
/// `HMM_RANGE_DEFAULT_TIMEOUT`, milliseconds.
const RANGE_TIMEOUT_MS: c_uint = 1000;

// `enum hmm_pfn_flags` of <linux/hmm.h> (checked by glue.c's static asserts).
const HMM_PFN_VALID: c_ulong = 1 << 63;
const HMM_PFN_WRITE: c_ulong = 1 << 62;
const HMM_PFN_ERROR: c_ulong = 1 << 61;
const HMM_PFN_ORDER_SHIFT: u32 = 56;
const HMM_PFN_FLAGS: c_ulong = 0xff << HMM_PFN_ORDER_SHIFT;
const HMM_PFN_REQ_FAULT: c_ulong = HMM_PFN_VALID;
const HMM_PFN_REQ_WRITE: c_ulong = HMM_PFN_WRITE;
/// `XA_PRESENT`: `xa_find`'s filter for any present entry.
const XA_PRESENT: bindings::xa_mark_t = 8;

// `lib/test_hmm_uapi.h`.
const PROT_ERROR: u8 = 0xff;
const PROT_NONE: u8 = 0x00;
const PROT_READ: u8 = 0x01;
const PROT_WRITE: u8 = 0x02;
const PROT_PMD: u8 = 0x04;
const PROT_PUD: u8 = 0x08;
const PROT_ZERO: u8 = 0x10;

/// `struct hmm_dmirror_cmd`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DmirrorCmd {
    addr: u64,
    ptr: u64,
    npages: u64,
    cpages: u64,
    faults: u64,
}

// SAFETY: five `u64`s: no padding, every bit pattern valid.
unsafe impl FromBytes for DmirrorCmd {}
// SAFETY: as above.
unsafe impl AsBytes for DmirrorCmd {}

const HMM_DMIRROR_READ: u32 = _IOWR::<DmirrorCmd>(b'H' as u32, 0x00);
const HMM_DMIRROR_WRITE: u32 = _IOWR::<DmirrorCmd>(b'H' as u32, 0x01);
const HMM_DMIRROR_SNAPSHOT: u32 = _IOWR::<DmirrorCmd>(b'H' as u32, 0x04);
const HMM_DMIRROR_EXCLUSIVE: u32 = _IOWR::<DmirrorCmd>(b'H' as u32, 0x05);
const HMM_DMIRROR_CHECK_EXCLUSIVE: u32 = _IOWR::<DmirrorCmd>(b'H' as u32, 0x06);

/// `struct hmm_range` of <linux/hmm.h> (6.12's Rust bindings do not include that
/// header; glue.c asserts this layout).
#[repr(C)]
struct HmmRange {
    notifier: *mut bindings::mmu_interval_notifier,
    notifier_seq: c_ulong,
    start: c_ulong,
    end: c_ulong,
    hmm_pfns: *mut c_ulong,
    default_flags: c_ulong,
    pfn_flags_mask: c_ulong,
    dev_private_owner: *mut c_void,
}
const _: () = assert!(core::mem::size_of::<HmmRange>() == 64);

// `mm_struct` holds a bindgen-opaque field; only pointers cross here.
#[allow(improper_ctypes)]
extern "C" {
    fn hmm_range_fault(range: *mut HmmRange) -> c_int;
    fn rdm_devices_add() -> c_int;
    fn rdm_teeth() -> c_int;
    fn rdm_devices_del();
    fn rdm_mmap_read_lock(mm: *mut bindings::mm_struct);
    fn rdm_mmap_read_unlock(mm: *mut bindings::mm_struct);
    fn rdm_xa_init(xa: *mut bindings::xarray);
    fn rdm_xa_err(entry: *mut c_void) -> c_int;
    fn rdm_pfn_to_page(pfn: c_ulong) -> *mut bindings::page;
    fn rdm_is_zero_pfn(pfn: c_ulong) -> bool;
    fn rdm_memcpy_from_page(to: *mut u8, page: *mut bindings::page);
    fn rdm_memcpy_to_page(page: *mut bindings::page, from: *const u8);
    fn make_device_exclusive_range(
        mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
        pages: *mut *mut bindings::page,
        owner: *mut c_void,
    ) -> c_int;
    fn rdm_unlock_put_page(page: *mut bindings::page);
    fn rdm_get_page(page: *mut bindings::page);
    fn rdm_deadline(ms: c_uint) -> c_ulong;
    fn rdm_past(deadline: c_ulong) -> bool;
}

// -------------------------------------------------------------------------------------
// The device page table
// -------------------------------------------------------------------------------------

/// The tag of an entry the device may only read through.
const READ_TAG: usize = 0;
/// The tag of an entry the device holds for exclusive (atomic) access
/// (`DPT_XA_TAG_ATOMIC`): the CPU's entry is a device-exclusive one, and the CPU's
/// next access revokes it (an `Exclusive` invalidation).
const ATOMIC_TAG: usize = 1;
/// The tag of an entry the device may write through (`DPT_XA_TAG_WRITE`).
const WRITE_TAG: usize = 3;

/// The device's page table: page index to `struct page *`, tagged [`WRITE_TAG`] when
/// writable. It holds no reference on the pages: the notifier zaps an entry before
/// the CPU page tables stop mapping its page, which is what makes that safe.
///
/// # Invariants
///
/// `xa` is initialised (`xa_init`) from construction until drop, which destroys it;
/// every entry is a `struct page *` (4-aligned) tagged [`READ_TAG`], [`ATOMIC_TAG`] or
/// [`WRITE_TAG`]. The
/// xarray lives in a box of its own (its nodes point back to it, so it must not move;
/// 6.12's `Mutex` takes its data by value).
struct PageTable {
    xa: Pin<KBox<Opaque<bindings::xarray>>>,
}

// SAFETY: the xarray has no thread affinity (its own spinlock serialises writers) and
// the page pointers are addresses, not references.
unsafe impl Send for PageTable {}

impl PageTable {
    fn new() -> Result<Self> {
        Ok(Self {
            xa: KBox::pin_init(
                // SAFETY: `xa_init` initialises the xarray in place (pinned, boxed).
                Opaque::ffi_init(|xa| unsafe { rdm_xa_init(xa) }),
                GFP_KERNEL,
            )?,
        })
    }

    /// The page at `index` and its tag.
    fn get(&self, index: usize) -> Option<(*mut bindings::page, usize)> {
        // SAFETY: initialised (type invariant).
        let e = unsafe { bindings::xa_load(self.xa.get(), index as c_ulong) } as usize;
        let page = (e & !3) as *mut bindings::page;
        (!page.is_null()).then_some((page, e & 3))
    }

    /// Map `index` to `page` with `tag` (atomic allocation: called under the table's
    /// mutex).
    fn store(&self, index: usize, page: *mut bindings::page, tag: usize) -> Result {
        // SAFETY: reads a module parameter.
        if unsafe { rdm_teeth() } == 1 {
            // The broken driver keeps stale entries: it pins each page it maps (and never
            // lets go), so that a stale read finds old contents, not a freed page (a
            // KASAN report would end the whole run).
            // SAFETY: `page` is mapped by the process now (hmm_range_fault's answer, or
            // a page made exclusive, locked and referenced): taking a reference is valid.
            unsafe { rdm_get_page(page) };
        }
        let entry = (page as usize | tag) as *mut c_void;
        // SAFETY: initialised (type invariant); the entry is a tagged page pointer.
        let old = unsafe {
            bindings::xa_store(self.xa.get(), index as c_ulong, entry, bindings::GFP_ATOMIC)
        };
        // SAFETY: `old` is what `xa_store` returned.
        kernel::error::to_result(unsafe { rdm_xa_err(old) })
    }

    /// Drop every entry of the pages `first..=last`.
    fn zap(&self, first: usize, last: usize) {
        let mut index = first as c_ulong;
        loop {
            // SAFETY: initialised (type invariant); `index` is ours.
            let e = unsafe {
                bindings::xa_find(self.xa.get(), &mut index, last as c_ulong, XA_PRESENT)
            };
            if e.is_null() {
                break;
            }
            // SAFETY: as above.
            unsafe { bindings::xa_erase(self.xa.get(), index) };
            if index >= last as c_ulong {
                break;
            }
            index += 1;
        }
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        // SAFETY: initialised (type invariant), and not used again.
        unsafe { bindings::xa_destroy(self.xa.get()) };
    }
}

// -------------------------------------------------------------------------------------
// The notifier callbacks
// -------------------------------------------------------------------------------------

/// The mirror's state the notifier reaches: the page table behind the mutex that
/// orders installs (fault) against zaps (invalidate).
#[pin_data]
struct Mirror {
    #[pin]
    pt: Mutex<PageTable>,
}

/// The whole-address-space notifier (`dmirror_interval_invalidate`).
impl<I: IntervalHandle + ?Sized> IntervalOps<I> for Mirror {
    fn invalidate(&self, iv: &I, r: &Range, cur_seq: u64) -> core::result::Result<(), WouldBlock> {
        if !r.blockable {
            // The mutex may sleep and 6.12's has no try_lock: Linux retries later.
            return Err(WouldBlock);
        }
        let pt = self.pt.lock();
        iv.set_seq(cur_seq);
        // SAFETY: reads a module parameter.
        if unsafe { rdm_teeth() } == 1 {
            // The broken driver of the teeth run: translations outlive the invalidation.
            return Ok(());
        }
        if r.end > r.start {
            // As the C driver: the page holding `end` too (ranges are page-aligned).
            pt.zap(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT);
        }
        Ok(())
    }
}

/// A snapshot's temporary notifier (`dmirror_snapshot_invalidate`): any invalidation
/// of its range voids the snapshot, so only the sequence is recorded.
struct SnapshotOps<'a> {
    pt: &'a Mutex<PageTable>,
}

impl<I: IntervalHandle + ?Sized> IntervalOps<I> for SnapshotOps<'_> {
    fn invalidate(&self, iv: &I, r: &Range, cur_seq: u64) -> core::result::Result<(), WouldBlock> {
        if !r.blockable {
            return Err(WouldBlock);
        }
        let _pt = self.pt.lock();
        iv.set_seq(cur_seq);
        Ok(())
    }
}

// -------------------------------------------------------------------------------------
// The device
// -------------------------------------------------------------------------------------

/// One open file: the mirror of the opener's address space.
#[pin_data]
struct Dmirror {
    /// Which device (`/dev/hmm_dmirror<unit>`); its address is the pages' owner.
    unit: usize,
    #[pin]
    notifier: IntervalNotifier<Mirror>,
}

/// The devices' identities (`hmm_range.dev_private_owner`).
static OWNERS: [u8; 2] = [0, 1];

/// The permission byte a snapshot reports for one `hmm_range_fault` output
/// (`dmirror_mkentry`, without device pages: this port has no device memory).
fn perm(e: c_ulong) -> u8 {
    if e & HMM_PFN_ERROR != 0 {
        return PROT_ERROR;
    }
    if e & HMM_PFN_VALID == 0 {
        return PROT_NONE;
    }
    // SAFETY: a pure test of the pfn.
    let mut p = if unsafe { rdm_is_zero_pfn(e & !HMM_PFN_FLAGS) } {
        PROT_ZERO
    } else {
        PROT_NONE
    };
    p |= if e & HMM_PFN_WRITE != 0 {
        PROT_WRITE
    } else {
        PROT_READ
    };
    let order = ((e >> HMM_PFN_ORDER_SHIFT) & 0x1f) as u32;
    if order + PAGE_SHIFT == 21 {
        p |= PROT_PMD;
    } else if order + PAGE_SHIFT == 30 {
        p |= PROT_PUD;
    }
    p
}

/// `ENOENT` from a device access: a page is not (or not writably) mirrored yet.
fn is_enoent(e: &Error) -> bool {
    e.to_errno() == ENOENT.to_errno()
}

impl Dmirror {
    fn open(unit: usize) -> Result<Pin<KBox<Self>>> {
        let mm = MmWithUser::current().ok_or(EINVAL)?;
        let pt = PageTable::new()?;
        KBox::pin_init(
            try_pin_init!(Self {
                unit,
                notifier <- IntervalNotifier::new(
                    &mm,
                    0,
                    usize::MAX & !(PAGE_SIZE - 1),
                    try_pin_init!(Mirror { pt <- new_mutex!(pt) }? Error),
                ),
            }? Error),
            GFP_KERNEL,
        )
    }

    fn owner(&self) -> *mut c_void {
        core::ptr::addr_of!(OWNERS[self.unit]).cast_mut().cast()
    }

    /// `hmm_range_fault` of `[start, end)` (at most [`CHUNK`] pages, inside `notifier`'s
    /// interval) into `pfns` with `flags`, retried until no invalidation of `notifier`
    /// came in between; returns
    /// with the table's mutex held, which `read_retry` was checked under.
    fn range_fault<'a>(
        &'a self,
        mm: &MmWithUser,
        notifier: &KernelInterval,
        (start, end): (usize, usize),
        flags: c_ulong,
        pfns: &mut [c_ulong; CHUNK],
    ) -> Result<Guard<'a, PageTable, MutexBackend>> {
        // SAFETY: reads jiffies.
        let deadline = unsafe { rdm_deadline(RANGE_TIMEOUT_MS) };
        loop {
            // SAFETY: reads jiffies.
            if unsafe { rdm_past(deadline) } {
                return Err(EBUSY);
            }
            let seq = notifier.read_begin();
            let mut range = HmmRange {
                notifier: notifier.as_raw(),
                notifier_seq: seq as c_ulong,
                start,
                end,
                hmm_pfns: pfns.as_mut_ptr(),
                default_flags: flags,
                pfn_flags_mask: 0,
                dev_private_owner: self.owner(),
            };
            // SAFETY: `mm` has a user reference (its page tables exist); `range` is
            // complete, its `pfns` hold `(end - start) / PAGE_SIZE` <= CHUNK entries, its
            // notifier is inserted in `mm` for the duration.
            let ret = unsafe {
                rdm_mmap_read_lock(mm.as_raw());
                let ret = hmm_range_fault(&mut range);
                rdm_mmap_read_unlock(mm.as_raw());
                ret
            };
            if ret == EBUSY.to_errno() {
                continue;
            }
            kernel::error::to_result(ret)?;
            let pt = self.notifier.pt.lock();
            if notifier.read_retry(seq) {
                continue;
            }
            return Ok(pt);
        }
    }

    /// `dmirror_fault`: mirror `[start, end)`, writable if `write`.
    fn fault(&self, start: usize, end: usize, write: bool) -> Result {
        let mm = self.notifier.mm().mmget_not_zero().ok_or(EFAULT)?;
        let flags = HMM_PFN_REQ_FAULT | if write { HMM_PFN_REQ_WRITE } else { 0 };
        let mut pfns = [0; CHUNK];
        let mut addr = start;
        while addr < end {
            let next = addr.saturating_add(CHUNK * PAGE_SIZE).min(end);
            let pt = self.range_fault(
                &mm,
                self.notifier.interval(),
                (addr, next),
                flags,
                &mut pfns,
            )?;
            for (i, &e) in pfns[..(next - addr) >> PAGE_SHIFT].iter().enumerate() {
                // hmm_range_fault was asked to fault every page in: an invalid or
                // read-only answer to a write is its bug (the C driver WARNs).
                if e & HMM_PFN_ERROR != 0 || e & HMM_PFN_VALID == 0 {
                    return Err(EFAULT);
                }
                let writable = e & HMM_PFN_WRITE != 0;
                if write && !writable {
                    return Err(EFAULT);
                }
                // SAFETY: a valid pfn hmm_range_fault returned (memmap exists).
                let page = unsafe { rdm_pfn_to_page(e & !HMM_PFN_FLAGS) };
                let tag = if writable { WRITE_TAG } else { READ_TAG };
                pt.store((addr >> PAGE_SHIFT) + i, page, tag)?;
            }
            drop(pt);
            addr = next;
        }
        Ok(())
    }

    /// Copy each mirrored page of `[from, end)` into `bounce` (which holds
    /// `[base, end)`) while the device's table maps it (writable if `write`), or the
    /// other way; `done` counts pages. `ENOENT` at the first page it does not map.
    fn access(
        &self,
        (base, from, end): (usize, usize, usize),
        bounce: &mut [u8],
        write: bool,
        done: &mut u64,
    ) -> Result {
        let pt = self.notifier.pt.lock();
        for index in from >> PAGE_SHIFT..end >> PAGE_SHIFT {
            let (page, tag) = pt.get(index).ok_or(ENOENT)?;
            if write && tag != WRITE_TAG {
                return Err(ENOENT);
            }
            let off = (index << PAGE_SHIFT) - base;
            let buf = &mut bounce[off..off + PAGE_SIZE];
            // SAFETY: `page` is mapped by the process now: the table holds it only
            // between an install and the zap the notifier does, under this mutex, before
            // the page can be freed. `buf` is one page.
            unsafe {
                if write {
                    rdm_memcpy_to_page(page, buf.as_ptr());
                } else {
                    rdm_memcpy_from_page(buf.as_mut_ptr(), page);
                }
            }
            *done += 1;
        }
        Ok(())
    }

    /// `dmirror_read` and `dmirror_write`: the device reads (or writes) `npages` from
    /// `addr`, through a bounce buffer from (to) `ptr`, faulting in what it misses.
    fn read_write(&self, cmd: &mut DmirrorCmd, write: bool) -> Result {
        let start = cmd.addr as usize;
        let size = (cmd.npages as usize) << PAGE_SHIFT;
        let end = start.checked_add(size).ok_or(EINVAL)?;
        let mut bounce = VVec::from_elem(0u8, size, GFP_KERNEL)?;
        if write {
            UserSlice::new(cmd.ptr as usize, size)
                .reader()
                .read_slice(&mut bounce)?;
        }
        let mut done = 0;
        let mut from = start;
        loop {
            match self.access((start, from, end), &mut bounce, write, &mut done) {
                Err(e) if is_enoent(&e) => {}
                other => {
                    cmd.cpages = done;
                    other?;
                    break;
                }
            }
            from = start + ((done as usize) << PAGE_SHIFT);
            if let Err(e) = self.fault(from, end, write) {
                cmd.cpages = done;
                return Err(e);
            }
            cmd.faults += 1;
        }
        if !write {
            UserSlice::new(cmd.ptr as usize, size)
                .writer()
                .write_slice(&bounce)?;
        }
        Ok(())
    }

    /// `dmirror_snapshot`: what the CPU page tables map over `npages` from `addr`, one
    /// permission byte per page to `ptr`, without faulting anything in.
    fn snapshot(&self, cmd: &mut DmirrorCmd) -> Result {
        let start = cmd.addr as usize;
        let end = start
            .checked_add((cmd.npages as usize) << PAGE_SHIFT)
            .ok_or(EINVAL)?;
        let mm = self.notifier.mm().mmget_not_zero().ok_or(EINVAL)?;
        let mut pfns = [0; CHUNK];
        let mut perms = [0u8; CHUNK];
        let mut uptr = cmd.ptr as usize;
        let mut addr = start;
        while addr < end {
            let next = addr.saturating_add(CHUNK * PAGE_SIZE).min(end);
            let n = (next - addr) >> PAGE_SHIFT;
            {
                // A notifier over exactly this range, removed when dropped (after the
                // mutex guard below, which is declared later).
                let snap = KBox::pin_init(
                    IntervalNotifier::new(
                        &mm,
                        addr,
                        next - addr,
                        SnapshotOps {
                            pt: &self.notifier.pt,
                        },
                    ),
                    GFP_KERNEL,
                )?;
                let _pt = self.range_fault(&mm, snap.interval(), (addr, next), 0, &mut pfns)?;
                for (p, &e) in perms[..n].iter_mut().zip(&pfns[..n]) {
                    *p = perm(e);
                }
            }
            UserSlice::new(uptr, n).writer().write_slice(&perms[..n])?;
            cmd.cpages += n as u64;
            uptr += n;
            addr = next;
        }
        Ok(())
    }

    /// `dmirror_exclusive`: take `npages` from `addr` for exclusive device access
    /// (`make_device_exclusive_range`: the CPU's entries become device-exclusive ones
    /// that the CPU's next touch revokes), map them [`ATOMIC_TAG`], and return what the
    /// device reads there.
    fn exclusive(&self, cmd: &mut DmirrorCmd) -> Result {
        let start = cmd.addr as usize;
        let size = (cmd.npages as usize) << PAGE_SHIFT;
        let end = start.checked_add(size).ok_or(EINVAL)?;
        let mm = self.notifier.mm().mmget_not_zero().ok_or(EINVAL)?;
        let mut pages = [core::ptr::null_mut(); CHUNK];
        // SAFETY: `mm` has a user reference.
        unsafe { rdm_mmap_read_lock(mm.as_raw()) };
        let mut res = Ok(());
        let mut addr = start;
        while addr < end {
            let next = addr.saturating_add(CHUNK * PAGE_SIZE).min(end);
            let n = (next - addr) >> PAGE_SHIFT;
            // SAFETY: mmap lock held for reading; `pages` holds `n` <= CHUNK entries.
            let got = unsafe {
                make_device_exclusive_range(
                    mm.as_raw(),
                    addr,
                    next,
                    pages.as_mut_ptr(),
                    core::ptr::null_mut(),
                )
            };
            // Map only if every page was made exclusive: the others' fields are unset.
            let mapped = if got == n as c_int {
                self.atomic_map(addr, &pages[..n])
            } else {
                Ok(0)
            };
            for &p in &pages[..got.max(0) as usize] {
                if !p.is_null() {
                    // SAFETY: returned locked and referenced by
                    // `make_device_exclusive_range`; ours to release.
                    unsafe { rdm_unlock_put_page(p) };
                }
            }
            match mapped {
                Ok(m) if m == n => {}
                Ok(_) => res = Err(EBUSY),
                Err(e) => res = Err(e),
            }
            if res.is_err() {
                break;
            }
            addr = next;
        }
        // SAFETY: taken above.
        unsafe { rdm_mmap_read_unlock(mm.as_raw()) };
        res?;
        // What the device reads through its exclusive entries.
        let mut bounce = VVec::from_elem(0u8, size, GFP_KERNEL)?;
        let mut done = 0;
        let read = self.access((start, start, end), &mut bounce, false, &mut done);
        cmd.cpages = done;
        read?;
        UserSlice::new(cmd.ptr as usize, size)
            .writer()
            .write_slice(&bounce)
    }

    /// Map the exclusive `pages` from `start` [`ATOMIC_TAG`]; how many were mapped.
    fn atomic_map(&self, start: usize, pages: &[*mut bindings::page]) -> Result<usize> {
        let pt = self.notifier.pt.lock();
        let mut mapped = 0;
        for (i, &p) in pages.iter().enumerate() {
            if p.is_null() {
                continue;
            }
            pt.store((start >> PAGE_SHIFT) + i, p, ATOMIC_TAG)?;
            mapped += 1;
        }
        Ok(mapped)
    }

    /// `dmirror_check_atomic`: `EPERM` if the device still holds a page of `npages`
    /// from `addr` for exclusive access (the CPU's touch must have revoked it).
    fn check_exclusive(&self, cmd: &DmirrorCmd) -> Result {
        let start = cmd.addr as usize;
        let end = start
            .checked_add((cmd.npages as usize) << PAGE_SHIFT)
            .ok_or(EINVAL)?;
        let pt = self.notifier.pt.lock();
        for index in start >> PAGE_SHIFT..end >> PAGE_SHIFT {
            if matches!(pt.get(index), Some((_, ATOMIC_TAG))) {
                return Err(EPERM);
            }
        }
        Ok(())
    }

    fn ioctl(&self, command: u32, arg: usize) -> Result {
        let (mut reader, mut writer) =
            UserSlice::new(arg, core::mem::size_of::<DmirrorCmd>()).reader_writer();
        let mut cmd: DmirrorCmd = reader.read()?;
        if cmd.addr & (PAGE_SIZE as u64 - 1) != 0 {
            return Err(EINVAL);
        }
        if cmd.addr >= cmd.addr.wrapping_add(cmd.npages << PAGE_SHIFT) {
            return Err(EINVAL);
        }
        cmd.cpages = 0;
        cmd.faults = 0;
        match command {
            HMM_DMIRROR_READ => self.read_write(&mut cmd, false)?,
            HMM_DMIRROR_WRITE => self.read_write(&mut cmd, true)?,
            HMM_DMIRROR_SNAPSHOT => self.snapshot(&mut cmd)?,
            HMM_DMIRROR_EXCLUSIVE => self.exclusive(&mut cmd)?,
            HMM_DMIRROR_CHECK_EXCLUSIVE => self.check_exclusive(&cmd)?,
            // Device memory (migration to and from it, releasing it) is not ported.
            _ => return Err(EINVAL),
        }
        writer.write(&cmd)
    }
}

// -------------------------------------------------------------------------------------
// The file operations (called by glue.c)
// -------------------------------------------------------------------------------------

/// `open`: a mirror of the caller's address space in `*private`.
///
/// # Safety
///
/// Called by glue.c's `open` with the file's `private_data`.
#[no_mangle]
unsafe extern "C" fn rdm_open(unit: c_uint, private: *mut *mut c_void) -> c_int {
    if unit as usize >= OWNERS.len() {
        return ENODEV.to_errno();
    }
    match Dmirror::open(unit as usize) {
        Ok(d) => {
            // SAFETY: caller's contract.
            unsafe { *private = d.into_foreign().cast_mut() };
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// `release`: the mirror's notifier is removed and its table destroyed.
///
/// # Safety
///
/// `private` is what [`rdm_open`] stored, released once (the file's last close).
#[no_mangle]
unsafe extern "C" fn rdm_release(private: *mut c_void) {
    // SAFETY: caller's contract: from `into_foreign`, not used again.
    drop(unsafe { <Pin<KBox<Dmirror>> as ForeignOwnable>::from_foreign(private) });
}

/// `unlocked_ioctl`.
///
/// # Safety
///
/// `private` is what [`rdm_open`] stored, not yet released (the file is open).
#[no_mangle]
unsafe extern "C" fn rdm_ioctl(private: *mut c_void, command: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: caller's contract: `release` cannot run during an ioctl of the file.
    let d = unsafe { <Pin<KBox<Dmirror>> as ForeignOwnable>::borrow(private) };
    match d.ioctl(command, arg) {
        Ok(()) => 0,
        Err(e) => e.to_errno() as c_long,
    }
}

/// `mmap` of the device: zeroed pages of its own, inserted into the mapping (what
/// hmm-tests' `mixedmap` snapshots).
///
/// # Safety
///
/// `vma` is the mapping being set up (`[start, end)`), mmap lock held for writing.
#[no_mangle]
unsafe extern "C" fn rdm_mmap(
    vma: *mut bindings::vm_area_struct,
    start: c_ulong,
    end: c_ulong,
) -> c_int {
    for addr in (start..end).step_by(PAGE_SIZE) {
        let page = match Page::alloc_page(GFP_KERNEL | __GFP_ZERO) {
            Ok(p) => p,
            Err(_) => return ENOMEM.to_errno(),
        };
        // SAFETY: caller's contract; `addr` is a page of the mapping; the page is ours
        // and `vm_insert_page` takes its own reference, ours goes with `page`.
        let ret = unsafe { bindings::vm_insert_page(vma, addr as c_ulong, page.as_ptr()) };
        if ret != 0 {
            return ret;
        }
    }
    0
}

struct RustDmirror;

impl kernel::Module for RustDmirror {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: registers the character devices whose operations are the functions
        // above; undone in `drop`.
        kernel::error::to_result(unsafe { rdm_devices_add() })?;
        pr_info!("/dev/hmm_dmirror0 and 1 ready\n");
        Ok(RustDmirror)
    }
}

impl Drop for RustDmirror {
    fn drop(&mut self) {
        // SAFETY: registered in `init`; no file is open (the module is referenced by
        // every open file, so it cannot be unloaded before their release).
        unsafe { rdm_devices_del() };
    }
}
