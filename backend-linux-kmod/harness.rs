// SPDX-License-Identifier: GPL-2.0

//! The conformance suite (`notifier-conformance`, the crate every backend runs
//! unchanged) inside Linux, on real address spaces.
//!
//! [`KernelHarness`] implements the suite's `Harness` with Linux's own primary MMU
//! (the kernel half is `harness_linux.c`):
//!
//! * an address space is a user process, `nkhelper serve`, started with
//!   `call_usermodehelper`; its `AddressSpace` is this module's forwarder on its mm;
//! * map / unmap: `vm_mmap(MAP_FIXED)` / `vm_munmap` from a kthread that adopts the
//!   mm (`kthread_use_mm`); touch / lookup: `get_user_pages_remote` (lookup with
//!   `FOLL_NOFAULT`);
//! * protect, reclaim and fork are done by the process itself when the module asks
//!   (`/proc/nk_harness`): `mprotect`; a pass of idle-page tracking (the kernel asks
//!   the notifiers through `clear_young`) with `MADV_PAGEOUT` of the pages still idle;
//!   `fork`;
//! * migrate: `migrate_vma_setup`/`pages`/`finalize` with an ordinary page as the
//!   destination (the kernel announces `MMU_NOTIFY_MIGRATE`);
//! * teardown: `SIGKILL`, then the module's `mmput` is the last: `exit_mmap` calls
//!   `mmu_notifier_release` and frees every page;
//! * tasks are kthreads; the frame oracle is a tag (frame number, generation) the
//!   harness writes into each anonymous page it sees, checked with a speculative
//!   page reference (see `harness_linux.c` and the README for what it catches).
//!
//! The non-blockable unmap (the OOM reaper) is not reachable from a module, so C-08 is
//! not applicable; Linux has no page-free hook for exporters, so C-18 to C-21 are not.

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kernel::bindings;
use kernel::ffi::{c_int, c_long, c_ulong, c_void};
use kernel::prelude::*;
use notifier_conformance::harness::{Cap, Frame, Harness, HarnessError, Mm as MmId, Pte};
use notifier_conformance::{Config, Twin};
use notifier_core::{AddressSpace, Platform};

use crate::mm::{Mm, MmNotifier};
use crate::platform::{self, Kernel};

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_h_spawn() -> c_int;
    fn nk_h_mm(i: c_int) -> *mut bindings::mm_struct;
    fn nk_h_fork(i: c_int) -> c_int;
    fn nk_h_teardown(i: c_int);
    fn nk_h_forget(i: c_int);
    fn nk_h_hold(i: c_int) -> c_long;
    fn nk_h_unhold();
    fn nk_h_kill(i: c_int);
    fn nk_h_mrelease(i: c_int) -> c_long;
    fn nk_h_map(i: c_int, addr: c_ulong, len: c_ulong) -> c_long;
    fn nk_h_unmap(i: c_int, addr: c_ulong, len: c_ulong) -> c_long;
    fn nk_h_protect(i: c_int, addr: c_ulong, len: c_ulong, writable: bool) -> c_long;
    fn nk_h_clear_refs(i: c_int) -> c_long;
    fn nk_h_reclaim(i: c_int, addr: c_ulong, len: c_ulong) -> c_long;
    fn nk_h_pte(
        i: c_int,
        addr: c_ulong,
        mode: c_int,
        pfn: *mut u64,
        gen: *mut u64,
        writable: *mut bool,
    ) -> c_long;
    fn nk_h_migrate(i: c_int, addr: c_ulong) -> c_long;
    fn nk_h_can_migrate() -> bool;
    fn nk_h_frame_live(pfn: u64, gen: u64) -> bool;
    fn nk_h_get_frame(pfn: u64, gen: u64) -> bool;
    fn nk_h_put_frame(pfn: u64, gen: u64);
    fn nk_h_run_tasks(
        f: unsafe extern "C" fn(*mut c_void),
        args: *mut *mut c_void,
        n: c_int,
    ) -> c_int;
    fn nk_h_run_kthread(f: unsafe extern "C" fn(*mut c_void), arg: *mut c_void) -> c_int;
    fn nk_h_yield();
    fn nk_h_vmalloc(size: c_ulong) -> *mut c_void;
    fn nk_h_vfree(p: *mut c_void);
    fn nk_h_suite_twin() -> *const kernel::ffi::c_char;
}

/// Address spaces at once (`NK_SLOTS` of `harness_linux.c`).
const SLOTS: usize = 32;
/// Tasks `run_concurrently` starts at once (`nk_h_run_tasks` takes at most 8).
const MAX_TASKS: usize = 8;
/// The arena for the scale case (C-17).
const ARENA_BYTES: usize = 16 << 20;

const NK_LOOKUP: c_int = 0;
const NK_TOUCH_READ: c_int = 1;
const NK_TOUCH_WRITE: c_int = 2;

const ENOENT: c_long = 2;
const EBUSY: c_long = 16;
const EAGAIN: c_long = 11;

/// The forwarder handle of one address space, set between `create_mm` (or `fork`) and
/// `destroy_mm`, and whether its process was killed for the OOM reaper.
struct Slot {
    notifier: UnsafeCell<Option<MmNotifier>>,
    /// A thread of the process is held in the module and the process killed: it is an
    /// OOM victim, its address space still attached (`reap`).
    reaped: AtomicBool,
}

/// The harness: Linux's primary MMU on user processes.
///
/// # Invariants
///
/// A slot's `notifier` is written only by `create_mm`/`fork` (before its index is
/// handed out) and by `destroy_mm` (after the suite's last use of the index), so
/// shared reads in `address_space` never race a write.
pub(crate) struct KernelHarness {
    slots: [Slot; SLOTS],
    arena: Option<(NonNull<u8>, usize)>,
}

// SAFETY: the slots follow the write discipline of the type invariant; the arena is
// plain memory the suite uses from one case at a time; `MmNotifier` is `Sync`.
unsafe impl Sync for KernelHarness {}

/// The core's address space the suite gets for a handle it should not use (none of
/// its cases does): a fresh, empty one, never torn down.
static NO_SPACE: AddressSpace<Kernel> = AddressSpace::new();

/// Failed operations reported so far (the first few are printed with their errno).
static FAILURES: AtomicUsize = AtomicUsize::new(0);

fn failed(op: &'static str, errno: c_long) -> HarnessError {
    // Some failures are expected (a touch racing another task's unmap in C-07): print
    // the first few only.
    if FAILURES.fetch_add(1, Ordering::Relaxed) < 8 {
        pr_info!("harness: {} failed: errno {}\n", op, -errno);
    }
    HarnessError::Failed(op)
}

impl KernelHarness {
    fn new() -> Self {
        // SAFETY: no precondition; NULL on failure.
        let arena = NonNull::new(unsafe { nk_h_vmalloc(ARENA_BYTES as c_ulong) }.cast::<u8>());
        KernelHarness {
            slots: core::array::from_fn(|_| Slot {
                notifier: UnsafeCell::new(None),
                reaped: AtomicBool::new(false),
            }),
            arena: arena.map(|p| (p, ARENA_BYTES)),
        }
    }

    /// Give the process in slot `i` its forwarder; forget the slot if that fails.
    fn adopt(&self, i: c_int) -> Result<MmId, HarnessError> {
        if i < 0 || i as usize >= SLOTS {
            return Err(failed("start a helper process", i as c_long));
        }
        // SAFETY: `i` is a live slot: its mm_struct stays allocated until `nk_h_forget`.
        let raw = unsafe { nk_h_mm(i) };
        let got = if raw.is_null() {
            Err(ENOENT as c_long)
        } else {
            // SAFETY: live (above), and with a user reference held by harness_linux.c until
            // teardown, which cannot happen before this returns. `Mm` is transparent.
            let mm = unsafe { &*raw.cast::<Mm>() };
            MmNotifier::get(mm).map_err(|e| e.to_errno() as c_long)
        };
        match got {
            Ok(n) => {
                // SAFETY: slot `i` was just handed out by harness_linux.c and its index is not
                // known to the suite yet: no reader (type invariant).
                unsafe { *self.slots[i as usize].notifier.get() = Some(n) };
                Ok(i as usize)
            }
            Err(e) => {
                // SAFETY: a live slot, forgotten once.
                unsafe { nk_h_forget(i) };
                Err(failed("register the forwarder", e))
            }
        }
    }

    fn slot(mm: MmId) -> c_int {
        mm as c_int
    }

    /// Let the held thread of a reaped process go, so that it can exit.
    fn unhold(&self, mm: MmId) {
        if self
            .slots
            .get(mm)
            .is_some_and(|s| s.reaped.swap(false, Ordering::Relaxed))
        {
            // SAFETY: no precondition (it lets every held thread go; the suite holds
            // threads of one process at a time).
            unsafe { nk_h_unhold() };
        }
    }

    fn pte(&self, mm: MmId, addr: usize, mode: c_int) -> Result<Pte, c_long> {
        let (mut pfn, mut gen, mut writable) = (0u64, 0u64, false);
        // SAFETY: the out-pointers are valid for writes; harness_linux.c checks the slot.
        let r = unsafe {
            nk_h_pte(
                Self::slot(mm),
                addr as c_ulong,
                mode,
                &mut pfn,
                &mut gen,
                &mut writable,
            )
        };
        if r != 0 {
            return Err(r);
        }
        Ok(Pte {
            frame: Frame { pfn, gen },
            writable,
        })
    }
}

impl Drop for KernelHarness {
    fn drop(&mut self) {
        for i in 0..SLOTS {
            if self.slots[i].notifier.get_mut().take().is_some() {
                // SAFETY: a slot the suite left behind: torn down and forgotten once.
                unsafe { nk_h_forget(i as c_int) };
            }
        }
        if let Some((p, _)) = self.arena {
            // SAFETY: from `nk_h_vmalloc`, freed once.
            unsafe { nk_h_vfree(p.as_ptr().cast()) };
        }
    }
}

/// The kthread body of one task of `run_concurrently`.
///
/// # Safety
///
/// `arg` points to a `&(dyn Fn() + Sync)` that stays alive until this returns.
unsafe extern "C" fn run_task(arg: *mut c_void) {
    // SAFETY: `arg` points to an element of the task slice `run_concurrently` keeps
    // alive until every task has returned.
    let f = unsafe { &*arg.cast::<&(dyn Fn() + Sync)>() };
    f();
}

impl Harness for KernelHarness {
    type P = Kernel;

    fn name(&self) -> &'static str {
        "linux-6.12 kernel module (real mm_structs, user helper processes)"
    }

    fn lacks(&self, cap: Cap) -> Option<&'static str> {
        match cap {
            // SAFETY: no precondition.
            Cap::Migrate if !unsafe { nk_h_can_migrate() } => {
                Some("kernel built without DEVICE_MIGRATION (migrate_vma)")
            }
            _ => None,
        }
    }

    fn create_mm(&self) -> Result<MmId, HarnessError> {
        // SAFETY: no precondition; sleeps (process context).
        let i = unsafe { nk_h_spawn() };
        self.adopt(i)
    }

    fn address_space(&self, mm: MmId) -> &AddressSpace<Kernel> {
        let notifier = self.slots.get(mm).map(|s| s.notifier.get());
        // SAFETY: a read of a live handle's slot, never concurrent with its writes
        // (type invariant).
        match notifier.and_then(|n| unsafe { (*n).as_ref() }) {
            Some(n) => n.address_space(),
            None => {
                pr_err!("harness: address_space of unknown handle {}\n", mm);
                &NO_SPACE
            }
        }
    }

    fn teardown(&self, mm: MmId) {
        self.unhold(mm);
        // SAFETY: harness_linux.c checks the slot; a second teardown does nothing.
        unsafe { nk_h_teardown(Self::slot(mm)) }
    }

    fn destroy_mm(&self, mm: MmId) {
        let Some(s) = self.slots.get(mm) else { return };
        self.unhold(mm);
        // SAFETY: the suite's last use of `mm` (type invariant's writer side).
        let n = unsafe { (*s.notifier.get()).take() };
        if n.is_some() {
            drop(n);
            // SAFETY: a live slot, forgotten once (its notifier was still set).
            unsafe { nk_h_forget(Self::slot(mm)) };
        }
    }

    fn map(&self, mm: MmId, addr: usize, len: usize) -> Result<(), HarnessError> {
        // SAFETY: harness_linux.c checks the slot and that the caller is a kthread.
        match unsafe { nk_h_map(Self::slot(mm), addr as c_ulong, len as c_ulong) } {
            0 => Ok(()),
            e => Err(failed("vm_mmap", e)),
        }
    }

    fn touch(&self, mm: MmId, addr: usize, write: bool) -> Result<Pte, HarnessError> {
        let mode = if write { NK_TOUCH_WRITE } else { NK_TOUCH_READ };
        self.pte(mm, addr, mode)
            .map_err(|e| failed("get_user_pages_remote (fault)", e))
    }

    fn lookup(&self, mm: MmId, addr: usize) -> Option<Pte> {
        self.pte(mm, addr, NK_LOOKUP).ok()
    }

    fn unmap(&self, mm: MmId, addr: usize, len: usize) -> Result<(), HarnessError> {
        // SAFETY: harness_linux.c checks the slot and that the caller is a kthread.
        match unsafe { nk_h_unmap(Self::slot(mm), addr as c_ulong, len as c_ulong) } {
            0 => Ok(()),
            e => Err(failed("vm_munmap", e)),
        }
    }

    fn protect(
        &self,
        mm: MmId,
        addr: usize,
        len: usize,
        writable: bool,
    ) -> Result<(), HarnessError> {
        // SAFETY: harness_linux.c checks the slot.
        match unsafe { nk_h_protect(Self::slot(mm), addr as c_ulong, len as c_ulong, writable) } {
            0 => Ok(()),
            e => Err(failed("mprotect (helper process)", e)),
        }
    }

    fn clear_soft_dirty(&self, mm: MmId) -> Result<(), HarnessError> {
        // SAFETY: harness_linux.c checks the slot.
        match unsafe { nk_h_clear_refs(Self::slot(mm)) } {
            0 => Ok(()),
            e => Err(failed("clear_refs (helper process)", e)),
        }
    }

    fn migrate(&self, mm: MmId, addr: usize) -> Result<Pte, HarnessError> {
        // Migration is best effort in Linux: a page someone holds a transient reference
        // on (a concurrent fault's get_user_pages, the oracle's speculative reference)
        // stays where it is. Retry like migrate_pages() does. A page mapped but not
        // populated (or swapped out) is faulted in first, then moved.
        let mut r = 0;
        for _ in 0..50 {
            if self.lookup(mm, addr).is_none() {
                self.touch(mm, addr, false)?;
            }
            // SAFETY: harness_linux.c checks the slot.
            r = unsafe { nk_h_migrate(Self::slot(mm), addr as c_ulong) };
            if r != -EBUSY && r != -ENOENT {
                break;
            }
            // SAFETY: no precondition (sleepable context).
            unsafe { nk_h_yield() };
        }
        if r != 0 {
            return Err(failed("migrate_vma", r));
        }
        self.pte(mm, addr, NK_LOOKUP)
            .map_err(|e| failed("lookup after migration", e))
    }

    fn fork(&self, mm: MmId) -> Result<MmId, HarnessError> {
        // SAFETY: harness_linux.c checks the slot.
        let i = unsafe { nk_h_fork(Self::slot(mm)) };
        self.adopt(i)
    }

    fn reclaim(&self, mm: MmId, addr: usize, len: usize) -> Result<usize, HarnessError> {
        // SAFETY: harness_linux.c checks the slot.
        match unsafe { nk_h_reclaim(Self::slot(mm), addr as c_ulong, len as c_ulong) } {
            n if n >= 0 => Ok(n as usize),
            e => Err(failed("page_idle + MADV_PAGEOUT (helper process)", e)),
        }
    }

    /// The OOM reaper's own code: `process_mrelease(2)` (`__oom_reap_task_mm`, with
    /// `mmu_notifier_invalidate_range_start_nonblock` for every private mapping) on the
    /// process, killed on the first call with one of its threads held in the module, so
    /// that its address space stays attached as an OOM victim's does.
    fn reap(&self, mm: MmId, addr: usize, len: usize) -> Result<usize, HarnessError> {
        let s = self
            .slots
            .get(mm)
            .ok_or(HarnessError::Failed("reap: no such mm"))?;
        let i = Self::slot(mm);
        if !s.reaped.swap(true, Ordering::Relaxed) {
            // SAFETY: harness_linux.c checks the slot; sleepable (the suite's kthread).
            let r = unsafe { nk_h_hold(i) };
            if r != 0 {
                s.reaped.store(false, Ordering::Relaxed);
                return Err(failed("hold a thread of the victim", r));
            }
            // SAFETY: as above.
            unsafe { nk_h_kill(i) };
        }
        let pg = Kernel::PAGE_SIZE;
        let present = || {
            (addr..addr.saturating_add(len))
                .step_by(pg)
                .filter(|a| self.lookup(mm, *a).is_some())
                .count()
        };
        let before = present();
        // SAFETY: as above.
        match unsafe { nk_h_mrelease(i) } {
            0 => Ok(before.saturating_sub(present())),
            e if e == -EAGAIN => Err(HarnessError::Refused),
            e => Err(failed("process_mrelease", e)),
        }
    }

    fn reap_kills(&self) -> bool {
        true
    }

    fn get_frame(&self, frame: Frame) -> bool {
        // SAFETY: no precondition; never sleeps.
        unsafe { nk_h_get_frame(frame.pfn, frame.gen) }
    }

    fn put_frame(&self, frame: Frame) {
        // SAFETY: the suite pairs it with a successful `get_frame` of the same frame.
        unsafe { nk_h_put_frame(frame.pfn, frame.gen) }
    }

    fn frame_live(&self, frame: Frame) -> bool {
        // SAFETY: no precondition; never sleeps (called from notifier callbacks).
        unsafe { nk_h_frame_live(frame.pfn, frame.gen) }
    }

    fn run_concurrently(&self, tasks: &[&(dyn Fn() + Sync)]) {
        for chunk in tasks.chunks(MAX_TASKS) {
            if chunk.len() < tasks.len() {
                pr_warn!("harness: more than {} tasks: run in groups\n", MAX_TASKS);
            }
            let mut args = [core::ptr::null_mut::<c_void>(); MAX_TASKS];
            for (a, t) in args.iter_mut().zip(chunk) {
                *a = (t as *const &(dyn Fn() + Sync)).cast_mut().cast();
            }
            // SAFETY: every argument points into `chunk`, alive until the call, which
            // returns only after every task returned.
            let started =
                unsafe { nk_h_run_tasks(run_task, args.as_mut_ptr(), chunk.len() as c_int) };
            if started as usize + 1 < chunk.len() {
                pr_warn!(
                    "harness: only {} of {} task kthreads started\n",
                    started,
                    chunk.len() - 1
                );
            }
        }
    }

    fn yield_now(&self) {
        // SAFETY: no precondition; the suite yields from sleepable contexts only.
        unsafe { nk_h_yield() }
    }

    fn arena(&self) -> Option<(NonNull<u8>, usize)> {
        self.arena
    }

    fn bugs_reported(&self) -> usize {
        Kernel::bugs()
    }

    fn sleep_violations(&self) -> usize {
        platform::sleep_violations()
    }
}

impl crate::reference::KernelMms for KernelHarness {
    fn kernel_mm(&self, mm: MmId) -> *mut bindings::mm_struct {
        // SAFETY: the suite passes handles of live slots only; harness_linux.c holds a
        // user reference on the slot's mm from creation until teardown.
        unsafe { nk_h_mm(Self::slot(mm)) }
    }
}

/// The suite's output, one printk per line, each marked with `prefix` (`suite: `, or
/// `suite-ref: ` in reference mode) so that the xtask can tell it from the smoke
/// tests' lines.
struct PrintkLines {
    prefix: &'static str,
    buf: [u8; 512],
    len: usize,
}

impl PrintkLines {
    fn new(prefix: &'static str) -> Self {
        PrintkLines {
            prefix,
            buf: [0; 512],
            len: 0,
        }
    }

    fn flush(&mut self) {
        let s = core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<non-UTF-8 line>");
        pr_info!("{}{}\n", self.prefix, s);
        self.len = 0;
    }
}

impl Write for PrintkLines {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.flush();
            } else if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// The configuration of the in-kernel run: the suite's defaults (200 rounds, 2 000
/// list and 20 000 interval subscribers), which the software-emulated guest runs in
/// seconds, with the broken consumer the `suite_twin` parameter names, if any.
fn config() -> Result<Config> {
    // SAFETY: a NUL-terminated module parameter, never changed after load (0444).
    let name = unsafe { core::ffi::CStr::from_ptr(nk_h_suite_twin().cast()) };
    let name = name.to_str().map_err(|_| EINVAL)?;
    let twin = match name {
        "" => None,
        n => match Twin::from_name(n) {
            Some(t) => Some(t),
            None => {
                pr_err!("suite-error: no broken consumer called {}\n", n);
                return Err(EINVAL);
            }
        },
    };
    Ok(Config {
        twin,
        ..Config::default()
    })
}

struct SuiteRun {
    done: AtomicBool,
    failed: u32,
}

/// The kthread that runs the suite.
///
/// # Safety
///
/// `arg` points to a `SuiteRun` that nothing else touches until `done` is set.
unsafe extern "C" fn suite_main(arg: *mut c_void) {
    // SAFETY: `arg` is the `SuiteRun` of `run`, alive until this kthread returns.
    let run = unsafe { &mut *arg.cast::<SuiteRun>() };
    let Ok(cfg) = config() else { return };
    let h = KernelHarness::new();
    if let Some(t) = cfg.twin {
        // For the xtask: the cases that must fail, and only those.
        let mut line = PrintkLines::new("");
        let _ = write!(line, "{} catches", t.name());
        for id in t.catches_on(&h) {
            let _ = write!(line, " {id}");
        }
        pr_info!(
            "suite-twin: {}\n",
            core::str::from_utf8(&line.buf[..line.len]).unwrap_or("")
        );
    }
    pr_info!(
        "suite-config: rounds {}, many_list {}, many_intervals {}, arena {} KiB\n",
        cfg.rounds,
        cfg.many_list,
        cfg.many_intervals,
        h.arena.map_or(0, |(_, n)| n >> 10)
    );
    let mut out = PrintkLines::new("suite: ");
    let sum = notifier_conformance::run(&h, &cfg, &mut out);
    if out.len > 0 {
        out.flush();
    }
    // Reference mode: the same consumers registered straight with Linux's own
    // notifier (not with a broken consumer: its teeth are the core mode's).
    let mut ref_failed = 0;
    if cfg.twin.is_none() {
        let mut out = PrintkLines::new("suite-ref: ");
        let sum = notifier_conformance::run_with::<_, crate::reference::LinuxC>(&h, &cfg, &mut out);
        if out.len > 0 {
            out.flush();
        }
        ref_failed = sum.failed;
    }
    drop(h);
    run.failed = sum.failed + ref_failed;
    run.done.store(true, Ordering::Release);
}

/// Run the conformance suite on a kthread of its own (every harness operation adopts
/// a process's mm, which only a kthread may) and wait for it. Returns the number of
/// failed cases, or an error if the kthread did not run.
pub(crate) fn run() -> Result<u32> {
    let mut r = SuiteRun {
        done: AtomicBool::new(false),
        failed: 0,
    };
    // SAFETY: `r` outlives the call, which waits for the kthread.
    let e = unsafe { nk_h_run_kthread(suite_main, (&mut r as *mut SuiteRun).cast()) };
    if e != 0 {
        return Err(Error::from_errno(e));
    }
    if !r.done.load(Ordering::Acquire) {
        return Err(EINVAL);
    }
    Ok(r.failed)
}
