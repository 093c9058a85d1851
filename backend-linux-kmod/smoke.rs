// SPDX-License-Identifier: GPL-2.0

//! In-kernel tests of the backend against a real address space: the one of the task
//! that loads the module (`insmod`). Pages are mapped with `vm_mmap`, faulted in by a
//! write through `copy_to_user`, and unmapped with `vm_munmap`; the release case is
//! the real exit of that task, checked when the module unloads.
//!
//! Each case prints `ok - <name>` or `FAIL - <name>: <why>`; the module's exit prints
//! the `N passed, N failed` closing line that `cargo xtask kmod` checks.

use core::pin::pin;
use core::pin::Pin;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kernel::bindings;
use kernel::ffi::{c_int, c_uint, c_ulong, c_void};
use kernel::prelude::*;
use kernel::types::ARef;
use notifier_core::{
    AddressSpace, Error as CoreError, Event, IntervalHandle, IntervalOps, IntervalSubscriber,
    Platform, Range, Shared, SharedOps, Subscriber, SubscriberOps, WouldBlock,
};

use crate::mm::{
    nk_rust_end, nk_rust_start, KernelResult, Mm, MmNotifier, MmWithUser, CLAMPED, FORWARDERS,
    FORWARD_ERRORS, NO_ROOM, OVERFLOWED, REFUSALS, UNFORWARDABLE, UNKNOWN_EVENTS,
};
use crate::mmu_notifier::IntervalNotifier;
use crate::platform::Kernel;

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_touch_user(addr: c_ulong) -> c_int;
    fn nk_helper_pid() -> c_int;
    fn nk_task_mm(pid: c_int) -> *mut bindings::mm_struct;
    fn nk_signal(pid: c_int, sig: c_int) -> c_int;
    fn nk_msleep(ms: kernel::ffi::c_uint);
    fn nk_h_spawn() -> c_int;
    fn nk_h_mm(i: c_int) -> *mut bindings::mm_struct;
    fn nk_h_hold(i: c_int) -> kernel::ffi::c_long;
    fn nk_h_unhold();
    fn nk_h_kill(i: c_int);
    fn nk_h_mrelease(i: c_int) -> kernel::ffi::c_long;
    fn nk_h_forget(i: c_int);
    fn nk_run_on_mm(
        mm: *mut bindings::mm_struct,
        f: unsafe extern "C" fn(*mut c_void),
        args: *mut *mut c_void,
        n: c_int,
    ) -> c_int;
}

const PAGE: usize = bindings::PAGE_SIZE;
// uapi/asm-generic/mman-common.h: not in the bindings.
const PROT_READ: c_ulong = 0x1;
const PROT_WRITE: c_ulong = 0x2;
const MAP_PRIVATE: c_ulong = 0x02;
const MAP_ANONYMOUS: c_ulong = 0x20;

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Record and print one case.
fn case(name: &str, r: core::result::Result<(), ()>) {
    case_in(name, "", r)
}

/// Record and print one case run in a mode (`[core]`, `[reference]`).
fn case_in(name: &str, mode: &str, r: core::result::Result<(), ()>) {
    let sep = if mode.is_empty() { "" } else { " " };
    match r {
        Ok(()) => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            pr_info!("ok - {}{}{}\n", name, sep, mode);
        }
        Err(()) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            pr_info!("FAIL - {}{}{}\n", name, sep, mode);
        }
    }
}

/// Fail the enclosing case with a reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            pr_info!("  why: {}\n", format_args!($($why)*));
            return Err(());
        }
    };
}

/// What one list subscriber saw of a watched range.
///
/// Open ranges (started, not ended) are kept in a small table so that an end without
/// its start, or with another range or event, is caught (C-02, C-07).
struct Recorder {
    watch_start: AtomicUsize,
    watch_end: AtomicUsize,
    starts: AtomicUsize,
    ends: AtomicUsize,
    /// Starts and ends whose range covers the watched one with event `Unmap`.
    unmap_starts: AtomicUsize,
    unmap_ends: AtomicUsize,
    nonblocking_starts: AtomicUsize,
    /// Events (bit `1 << event`) of the starts that covered the watched range.
    events: AtomicUsize,
    tlbs_covering: AtomicUsize,
    /// Ageing calls (`clear_flush_young`, `clear_young`) covering the watched range.
    young_covering: AtomicUsize,
    releases: AtomicUsize,
    after_release: AtomicUsize,
    unpaired: AtomicUsize,
    open: [(AtomicUsize, AtomicUsize); 32],
    overflow: AtomicBool,
    /// Refuse every non-blockable start (C-08) while set.
    refuse: AtomicBool,
    /// Non-blockable starts refused (not counted as starts).
    refusals: AtomicUsize,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            watch_start: AtomicUsize::new(0),
            watch_end: AtomicUsize::new(0),
            starts: AtomicUsize::new(0),
            ends: AtomicUsize::new(0),
            unmap_starts: AtomicUsize::new(0),
            unmap_ends: AtomicUsize::new(0),
            nonblocking_starts: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
            tlbs_covering: AtomicUsize::new(0),
            young_covering: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            after_release: AtomicUsize::new(0),
            unpaired: AtomicUsize::new(0),
            open: core::array::from_fn(|_| (AtomicUsize::new(0), AtomicUsize::new(0))),
            overflow: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            refusals: AtomicUsize::new(0),
        }
    }

    fn watch(&self, start: usize, end: usize) {
        self.watch_start.store(start, Ordering::Relaxed);
        self.watch_end.store(end, Ordering::Relaxed);
    }

    fn covers(&self, start: usize, end: usize) -> bool {
        let ws = self.watch_start.load(Ordering::Relaxed);
        let we = self.watch_end.load(Ordering::Relaxed);
        ws < we && start <= ws && end >= we
    }

    fn key(r: &Range) -> (usize, usize) {
        (r.start + 1, r.end ^ ((r.event as usize) << 60))
    }

    fn check_live(&self) {
        if self.releases.load(Ordering::Relaxed) != 0 {
            self.after_release.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SubscriberOps for Recorder {
    fn release(&self) {
        self.releases.fetch_add(1, Ordering::Relaxed);
    }

    fn invalidate_range_start(&self, r: &Range) -> core::result::Result<(), WouldBlock> {
        self.check_live();
        if !r.blockable && self.refuse.load(Ordering::Relaxed) {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(WouldBlock);
        }
        self.starts.fetch_add(1, Ordering::Relaxed);
        if !r.blockable {
            self.nonblocking_starts.fetch_add(1, Ordering::Relaxed);
        }
        if self.covers(r.start, r.end) {
            self.events
                .fetch_or(1 << (r.event as usize), Ordering::Relaxed);
            if r.event == Event::Unmap {
                self.unmap_starts.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (a, b) = Self::key(r);
        let slot = self.open.iter().find(|(s, _)| {
            s.compare_exchange(0, a, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        match slot {
            Some((_, e)) => e.store(b, Ordering::Relaxed),
            None => self.overflow.store(true, Ordering::Relaxed),
        }
        Ok(())
    }

    fn invalidate_range_end(&self, r: &Range) {
        self.check_live();
        self.ends.fetch_add(1, Ordering::Relaxed);
        if r.event == Event::Unmap && self.covers(r.start, r.end) {
            self.unmap_ends.fetch_add(1, Ordering::Relaxed);
        }
        let (a, b) = Self::key(r);
        let slot = self
            .open
            .iter()
            .find(|(s, e)| s.load(Ordering::Relaxed) == a && e.load(Ordering::Relaxed) == b);
        match slot {
            Some((s, _)) => s.store(0, Ordering::Relaxed),
            None => {
                self.unpaired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn invalidate_secondary_tlbs(&self, start: usize, end: usize) {
        self.check_live();
        if self.covers(start, end) {
            self.tlbs_covering.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear_flush_young(&self, start: usize, end: usize) -> bool {
        self.clear_young(start, end)
    }

    fn clear_young(&self, start: usize, end: usize) -> bool {
        self.check_live();
        if self.covers(start, end) {
            self.young_covering.fetch_add(1, Ordering::Relaxed);
        }
        false
    }
}

/// An interval subscriber that counts its invalidations (the sequence protocol's
/// `set_seq` is all it needs for `read_retry`).
struct Mirror {
    invalidations: AtomicUsize,
}

/// Written once, for every interval handle: the core's `Interval` and the binding's
/// `KernelInterval` (issue 15: one callback trait for both worlds).
impl<I: IntervalHandle + ?Sized> IntervalOps<I> for Mirror {
    fn invalidate(&self, iv: &I, _r: &Range, cur_seq: u64) -> core::result::Result<(), WouldBlock> {
        iv.set_seq(cur_seq);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `vm_mmap` of `pages` anonymous read-write pages in the current mm.
fn map(pages: usize) -> core::result::Result<usize, ()> {
    // SAFETY: maps into the current task's mm, which exists (checked by the caller).
    let addr = unsafe {
        bindings::vm_mmap(
            core::ptr::null_mut(),
            0,
            pages * PAGE,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            0,
        )
    };
    ensure!(
        addr < (-4096isize) as usize,
        "vm_mmap: error {}",
        addr as isize
    );
    Ok(addr)
}

/// Fault in the page at `addr` by writing to it.
fn touch(addr: usize) -> core::result::Result<(), ()> {
    // SAFETY: a user address of the current mm; `copy_to_user` checks it.
    let r = unsafe { nk_touch_user(addr) };
    ensure!(r == 0, "fault-in write to {:#x}: {}", addr, r);
    Ok(())
}

fn unmap(addr: usize, len: usize) -> core::result::Result<(), ()> {
    // SAFETY: unmaps from the current task's mm.
    let r = unsafe { bindings::vm_munmap(addr, len) };
    ensure!(r == 0, "vm_munmap: {}", r);
    Ok(())
}

/// What the cases keep until the module unloads: a subscriber that stays registered
/// while `insmod` exits, so that its release comes from the real process exit.
pub(crate) struct AtExit {
    mm: MmNotifier,
    sub: Pin<KBox<Subscriber<Recorder, Kernel>>>,
}

fn list_cases(mmn: &MmNotifier) -> core::result::Result<(), ()> {
    let sub = pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new()));
    let sub = sub.into_ref();

    case(
        "C-01 register on a real mm, not twice",
        (|| {
            let r = sub.register(mmn);
            ensure!(r.is_ok(), "register: {:?}", r);
            let r = sub.register(mmn);
            ensure!(
                r == Err(CoreError::AlreadyRegistered),
                "second register: {:?}",
                r
            );
            // As a driver returning the kernel's `Result` sees it.
            let k = sub.register(mmn).kernel();
            ensure!(k == Err(EBUSY), "second register, as kernel error: {:?}", k);
            Ok(())
        })(),
    );

    let mut tlbs = false;
    case(
        "C-06/C-07 vm_munmap of a faulted page is bracketed by start/end (Unmap, blockable)",
        (|| {
            let addr = map(4)?;
            touch(addr + PAGE)?;
            sub.watch(addr + PAGE, addr + 2 * PAGE);
            let (s0, e0) = (
                sub.starts.load(Ordering::Relaxed),
                sub.ends.load(Ordering::Relaxed),
            );
            unmap(addr, 4 * PAGE)?;
            sub.watch(0, 0);
            let (s1, e1) = (
                sub.starts.load(Ordering::Relaxed),
                sub.ends.load(Ordering::Relaxed),
            );
            ensure!(
                sub.unmap_starts.load(Ordering::Relaxed) >= 1,
                "no start covering the page with Unmap ({} starts)",
                s1 - s0
            );
            ensure!(
                sub.unmap_ends.load(Ordering::Relaxed) >= 1,
                "no matching end"
            );
            ensure!(
                s1 - s0 == e1 - e0,
                "{} starts but {} ends",
                s1 - s0,
                e1 - e0
            );
            ensure!(
                sub.unpaired.load(Ordering::Relaxed) == 0,
                "an end without its start"
            );
            ensure!(
                !sub.overflow.load(Ordering::Relaxed),
                "too many open ranges"
            );
            ensure!(
                sub.nonblocking_starts.load(Ordering::Relaxed) == 0,
                "munmap is blockable, a start said otherwise"
            );
            tlbs = sub.tlbs_covering.load(Ordering::Relaxed) >= 1;
            Ok(())
        })(),
    );

    case(
        "invalidate_secondary_tlbs reaches the subscriber when the CPU TLB is flushed",
        (|| {
            ensure!(
                tlbs,
                "no arch_invalidate_secondary_tlbs covering the unmapped page"
            );
            Ok(())
        })(),
    );

    case(
        "C-03/C-04 unregister is a barrier and releases exactly once",
        (|| {
            let r = sub.unregister();
            ensure!(r.is_ok(), "unregister: {:?}", r);
            ensure!(
                sub.releases.load(Ordering::Relaxed) == 1,
                "releases: {}",
                sub.releases.load(Ordering::Relaxed)
            );
            let s0 = sub.starts.load(Ordering::Relaxed);
            let addr = map(2)?;
            touch(addr)?;
            unmap(addr, 2 * PAGE)?;
            ensure!(
                sub.starts.load(Ordering::Relaxed) == s0,
                "called after unregister"
            );
            ensure!(
                sub.after_release.load(Ordering::Relaxed) == 0,
                "a callback after release"
            );
            let r = sub.unregister();
            ensure!(
                r == Err(CoreError::NotRegistered),
                "second unregister: {:?}",
                r
            );
            ensure!(sub.releases.load(Ordering::Relaxed) == 1, "released again");
            Ok(())
        })(),
    );
    Ok(())
}

/// What one kthread of the concurrency case does: map, fault in, unmap, many times.
struct Churn {
    rounds: usize,
    failures: AtomicUsize,
}

/// The kthread body of one concurrency worker.
///
/// # Safety
///
/// `arg` points to a `Churn` that stays alive until this returns.
unsafe extern "C" fn churn(arg: *mut c_void) {
    // SAFETY: `arg` is a `Churn` that `concurrency_case` keeps alive until every
    // worker has returned.
    let c = unsafe { &*arg.cast::<Churn>() };
    for _ in 0..c.rounds {
        let ok = map(2).and_then(|a| {
            touch(a)?;
            touch(a + PAGE)?;
            unmap(a, 2 * PAGE)
        });
        if ok.is_err() {
            c.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn concurrency_case(mmn: &MmNotifier, mm: &Mm) {
    let sub = pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new()));
    let sub = sub.into_ref();
    case(
        "C-02/C-07 unmaps racing on 3 tasks of one mm: every start gets its end",
        (|| {
            let r = sub.register(mmn);
            ensure!(r.is_ok(), "register: {:?}", r);
            const WORKERS: usize = 2;
            const ROUNDS: usize = 40;
            let churns: [Churn; WORKERS] = core::array::from_fn(|_| Churn {
                rounds: ROUNDS,
                failures: AtomicUsize::new(0),
            });
            let mut args: [*mut c_void; WORKERS] =
                core::array::from_fn(|i| (&churns[i] as *const Churn).cast_mut().cast());
            let me = Churn {
                rounds: ROUNDS,
                failures: AtomicUsize::new(0),
            };
            // Workers on kthreads that adopt this mm, and this task at the same time.
            // SAFETY: `mm` is the current task's (alive); `churns` outlive the call,
            // which waits for every worker.
            let started =
                unsafe { nk_run_on_mm(mm.as_raw(), churn, args.as_mut_ptr(), WORKERS as c_int) };
            // SAFETY: `me` is alive for the call.
            unsafe { churn((&me as *const Churn).cast_mut().cast()) };
            ensure!(
                started == WORKERS as c_int,
                "started {} of {} kthreads",
                started,
                WORKERS
            );
            let failures: usize = churns
                .iter()
                .map(|c| c.failures.load(Ordering::Relaxed))
                .sum::<usize>()
                + me.failures.load(Ordering::Relaxed);
            ensure!(failures == 0, "{} map/touch/unmap rounds failed", failures);
            let r = sub.unregister();
            ensure!(r.is_ok(), "unregister: {:?}", r);
            let (s, e) = (
                sub.starts.load(Ordering::Relaxed),
                sub.ends.load(Ordering::Relaxed),
            );
            ensure!(
                s >= (WORKERS + 1) * ROUNDS,
                "only {} starts for {} unmaps",
                s,
                (WORKERS + 1) * ROUNDS
            );
            ensure!(s == e, "{} starts but {} ends", s, e);
            ensure!(
                sub.unpaired.load(Ordering::Relaxed) == 0,
                "an end without its start"
            );
            ensure!(
                !sub.overflow.load(Ordering::Relaxed),
                "too many open ranges"
            );
            Ok(())
        })(),
    );
}

fn interval_cases(mmn: &MmNotifier) {
    let iv = pin!(IntervalSubscriber::<Mirror, Kernel>::new(Mirror {
        invalidations: AtomicUsize::new(0),
    }));
    let iv = iv.into_ref();
    case(
        "C-11/C-12 interval subscriber: called only when its interval is unmapped; read_retry",
        (|| {
            let addr = map(4)?;
            let r = iv.insert(mmn, addr, PAGE);
            ensure!(r.is_ok(), "insert: {:?}", r);
            touch(addr)?;
            touch(addr + 2 * PAGE)?;
            let seq = iv.interval().read_begin();
            ensure!(seq.is_ok(), "read_begin: {:?}", seq);
            let seq = seq.unwrap_or(0);
            unmap(addr + 2 * PAGE, PAGE)?;
            let n = iv.ops().invalidations.load(Ordering::Relaxed);
            ensure!(n == 0, "called {} times for a page outside its interval", n);
            ensure!(
                !iv.interval().read_retry(seq),
                "read_retry true without an invalidation"
            );
            unmap(addr, PAGE)?;
            let n = iv.ops().invalidations.load(Ordering::Relaxed);
            ensure!(n == 1, "called {} times for its page, want 1", n);
            ensure!(
                iv.interval().read_retry(seq),
                "read_retry false after its page was unmapped"
            );
            let r = iv.remove();
            ensure!(r.is_ok(), "remove: {:?}", r);
            unmap(addr, 4 * PAGE)?;
            ensure!(
                iv.ops().invalidations.load(Ordering::Relaxed) == 1,
                "called after remove"
            );
            Ok(())
        })(),
    );
    case(
        "C-11/C-12 the same ops natively (binding IntervalNotifier over Linux's mmu_interval_notifier): called only for its interval; read_retry",
        binding_interval_case(),
    );
}

/// The scenario of the core's interval case, with the same `Mirror` ops inserted in
/// Linux's own interval tree through the binding.
fn binding_interval_case() -> core::result::Result<(), ()> {
    let mm = MmWithUser::current().ok_or(())?;
    let addr = map(4)?;
    let mirror = Mirror {
        invalidations: AtomicUsize::new(0),
    };
    let iv = KBox::pin_init(IntervalNotifier::new(&mm, addr, PAGE, mirror), GFP_KERNEL);
    ensure!(iv.is_ok(), "IntervalNotifier::new: {:?}", iv.as_ref().err());
    let iv = iv.map_err(|_| ())?;
    ensure!(
        iv.interval().start() == addr && iv.interval().last() == addr + PAGE - 1,
        "bounds [{:#x}, {:#x}]",
        iv.interval().start(),
        iv.interval().last()
    );
    ensure!(
        iv.mm().as_raw() == mm.as_raw(),
        "not on the loading process's mm"
    );
    touch(addr)?;
    touch(addr + 2 * PAGE)?;
    let seq = iv.read_begin();
    unmap(addr + 2 * PAGE, PAGE)?;
    let n = iv.invalidations.load(Ordering::Relaxed);
    ensure!(n == 0, "called {} times for a page outside its interval", n);
    ensure!(
        !iv.read_retry(seq),
        "read_retry true without an invalidation"
    );
    unmap(addr, PAGE)?;
    let n = iv.invalidations.load(Ordering::Relaxed);
    ensure!(n == 1, "called {} times for its page, want 1", n);
    ensure!(
        iv.read_retry(seq),
        "read_retry false after its page was unmapped"
    );
    drop(iv);
    unmap(addr, 4 * PAGE)?;
    Ok(())
}

/// Where nkhelper maps its pages (`nkhelper.c`: BASE).
const HELPER_BASE: usize = 0x2_0000_0000;
const SIGUSR1: c_int = 10;

/// `struct nk_ref_counts` of `nk.h`: what a reference-mode recorder saw.
#[repr(C)]
#[derive(Default)]
struct RefCounts {
    starts: c_uint,
    ends: c_uint,
    releases: c_uint,
    young: c_uint,
    after_release: c_uint,
    events: c_uint,
}

const _: () = assert!(
    core::mem::size_of::<RefCounts>() == 6 * core::mem::size_of::<c_uint>(),
    "layout mismatch: struct nk_ref_counts"
);

/// `struct nk_ref`, only ever behind a pointer.
#[repr(C)]
struct NkRef {
    _opaque: [u8; 0],
}

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_ref_register(mm: *mut bindings::mm_struct, start: c_ulong, end: c_ulong) -> *mut NkRef;
    fn nk_ref_read(r: *mut NkRef, out: *mut RefCounts);
    fn nk_ref_unregister(r: *mut NkRef);
}

/// What one mode saw of nkhelper's watched page.
#[derive(Clone, Copy, Default)]
struct Seen {
    events: usize,
    young: usize,
    releases: usize,
    starts: usize,
    ends: usize,
    unpaired: usize,
    after_release: usize,
}

impl Seen {
    fn of_core(r: &Recorder) -> Self {
        Seen {
            events: r.events.load(Ordering::Relaxed),
            young: r.young_covering.load(Ordering::Relaxed),
            releases: r.releases.load(Ordering::Relaxed),
            starts: r.starts.load(Ordering::Relaxed),
            ends: r.ends.load(Ordering::Relaxed),
            unpaired: r.unpaired.load(Ordering::Relaxed),
            after_release: r.after_release.load(Ordering::Relaxed),
        }
    }

    fn of_reference(r: *mut NkRef) -> Self {
        let mut c = RefCounts::default();
        // SAFETY: `r` is a registered reference recorder; `c` is valid for writes.
        unsafe { nk_ref_read(r, &mut c) };
        Seen {
            events: c.events as usize,
            young: c.young as usize,
            releases: c.releases as usize,
            starts: c.starts as usize,
            ends: c.ends as usize,
            unpaired: 0,
            after_release: c.after_release as usize,
        }
    }
}

/// One check of what a mode saw of nkhelper's page.
type ProcessCheck = fn(&Seen) -> core::result::Result<(), ()>;

/// The expectations on nkhelper's page, each checked in both modes.
const PROCESS_CASES: [(&str, ProcessCheck); 4] = [
    (
        "C-06 mprotect in a user process: start/end with ProtectionVma over its page",
        |s| {
            ensure!(
                s.events & (1 << Event::ProtectionVma as usize) != 0,
                "events seen: {:#x}",
                s.events
            );
            Ok(())
        },
    ),
    (
        "C-15 idle page tracking ages its page: clear_young reaches the subscriber",
        |s| {
            ensure!(s.young >= 1, "no ageing call covering the page");
            Ok(())
        },
    ),
    (
        "C-06 swap-out (MADV_PAGEOUT, swap on a RAM disk): start/end with Clear over its page",
        |s| {
            ensure!(
                s.events & (1 << Event::Clear as usize) != 0,
                "events seen: {:#x}",
                s.events
            );
            Ok(())
        },
    ),
    (
        "C-04/C-07 a user process exits: release exactly once, every start ended before",
        |s| {
            ensure!(s.releases == 1, "releases: {}", s.releases);
            ensure!(
                s.starts == s.ends,
                "{} starts but {} ends",
                s.starts,
                s.ends
            );
            ensure!(s.unpaired == 0, "an end without its start");
            ensure!(s.after_release == 0, "a callback after release");
            Ok(())
        },
    ),
];

/// The cases on the mm of another user process, nkhelper: it changes the protection
/// of its faulted pages, ages them, swaps them out, reads them back and exits when
/// told. A core-mode subscriber (through the forwarder) and a reference-mode one
/// (straight on Linux's `mmu_notifier_register`) watch the same page; every
/// expectation is checked in both modes and any case whose result differs is named.
fn process_cases() {
    // SAFETY: no precondition.
    let pid = unsafe { nk_helper_pid() };
    // SAFETY: no precondition; a non-null result carries a user reference.
    let mm = NonNull::new(unsafe { nk_task_mm(pid) });
    case(
        "nkhelper (helper_pid) is a running user process",
        (|| {
            ensure!(pid > 0, "no helper_pid given");
            ensure!(mm.is_some(), "no mm for pid {}", pid);
            Ok(())
        })(),
    );
    let Some(mm) = mm else { return };
    // SAFETY: `nk_task_mm` returned it with a user reference, handed over here.
    let mm: ARef<MmWithUser> = unsafe { ARef::from_raw(mm.cast()) };
    let Ok(mmn) = MmNotifier::get(&mm) else {
        case("the forwarder registers on nkhelper's mm", Err(()));
        return;
    };
    let Ok(sub) = KBox::pin(Subscriber::new(Recorder::new()), GFP_KERNEL) else {
        return;
    };
    sub.watch(HELPER_BASE, HELPER_BASE + PAGE);
    let r = sub.as_ref().register(&mmn);
    // SAFETY: we hold a user reference on `mm`.
    let rf = unsafe { nk_ref_register(mm.as_raw(), HELPER_BASE, HELPER_BASE + PAGE) };
    case(
        "core and reference subscribers register on nkhelper's mm",
        (|| {
            ensure!(r.is_ok(), "core register: {:?}", r);
            ensure!(!rf.is_null(), "mmu_notifier_register failed");
            Ok(())
        })(),
    );
    // From here the process may exit and tear its mm down (the registrations keep only
    // the mm_struct, not its pages).
    drop(mm);
    if r.is_err() || rf.is_null() {
        // Send the helper on its way anyway, so that it exits.
        // SAFETY: no precondition.
        unsafe { nk_signal(pid, SIGUSR1) };
        if !rf.is_null() {
            // SAFETY: registered above, unregistered once.
            unsafe { nk_ref_unregister(rf) };
        }
        let _ = sub.as_ref().unregister();
        return;
    }
    // SAFETY: no precondition.
    let told = unsafe { nk_signal(pid, SIGUSR1) };
    let mut waited = 0;
    while told == 0
        && (sub.releases.load(Ordering::Relaxed) == 0 || Seen::of_reference(rf).releases == 0)
        && waited < 30_000
    {
        // SAFETY: sleeping is allowed here (module init).
        unsafe { nk_msleep(50) };
        waited += 50;
    }
    case(
        "nkhelper was told to go and exited",
        (|| {
            ensure!(told == 0, "SIGUSR1 to {}: {}", pid, told);
            ensure!(waited < 30_000, "no release within 30 s");
            Ok(())
        })(),
    );
    let modes = [
        ("[core]", Seen::of_core(&sub)),
        ("[reference]", Seen::of_reference(rf)),
    ];
    let mut differ = 0;
    for (name, check) in PROCESS_CASES {
        let mut results = [true; 2];
        for (i, (mode, seen)) in modes.iter().enumerate() {
            let r = check(seen);
            results[i] = r.is_ok();
            case_in(name, mode, r);
        }
        if results[0] != results[1] {
            differ += 1;
            pr_info!("modes differ: {}\n", name);
        }
    }
    case(
        "core and reference (Linux's own mmu_notifier) modes agree on every process case",
        (|| {
            ensure!(differ == 0, "{} case(s) differ (named above)", differ);
            Ok(())
        })(),
    );
    let _ = sub.as_ref().unregister();
    drop(sub);
    drop(mmn);
    // SAFETY: registered above, unregistered once.
    unsafe { nk_ref_unregister(rf) };
}

extern "C" {
    fn nk_lockdep_teeth() -> c_int;
    fn nk_teeth_lock();
    fn nk_teeth_unlock();
}

/// Whether the module was loaded for the lockdep teeth run only.
pub(crate) fn lockdep_teeth_run() -> bool {
    // SAFETY: reads a module parameter.
    unsafe { nk_lockdep_teeth() != 0 }
}

/// A subscriber that takes a mutex of its own in its start callback.
struct TakesItsLock(AtomicUsize);

impl SubscriberOps for TakesItsLock {
    fn invalidate_range_start(&self, r: &Range) -> core::result::Result<(), WouldBlock> {
        if r.blockable {
            // SAFETY: a static mutex; a blockable start may sleep.
            unsafe {
                nk_teeth_lock();
                nk_teeth_unlock();
            }
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A shared kind whose `alloc` takes the teeth mutex: under `get`'s mutex.
struct AllocTakesItsLock;

impl SubscriberOps for AllocTakesItsLock {}

// SAFETY: `alloc` returns a fresh `KBox`, leaked; `free` takes back exactly those.
unsafe impl SharedOps<Kernel> for AllocTakesItsLock {
    fn alloc(_mm: &AddressSpace<Kernel>) -> Option<NonNull<Shared<Self, Kernel>>> {
        // SAFETY: a static mutex; `alloc` runs in `get`, which may sleep.
        unsafe {
            nk_teeth_lock();
            nk_teeth_unlock();
        }
        let b = KBox::new(Shared::new(AllocTakesItsLock), GFP_KERNEL).ok()?;
        NonNull::new(KBox::into_raw(b))
    }

    unsafe fn free(this: NonNull<Shared<Self, Kernel>>) {
        // SAFETY: from `alloc`, unregistered and not used again (the trait's contract).
        drop(unsafe { KBox::from_raw(this.as_ptr()) });
    }
}

/// The second lockdep teeth run (`lockdep_teeth=2`): a shared kind's `alloc` takes a
/// mutex (under `get`'s sleeping mutex), and a task holding that mutex calls `get`.
/// Lockdep must report the cycle through `notifier_get`, the core's sleeping lock.
fn lockdep_teeth_get() {
    pr_info!("lockdep-teeth: a mutex taken in a shared kind's alloc and held across get\n");
    with_teeth_forwarder(|mmn| {
        // Edge 1: get's mutex, then the teeth mutex (in `alloc`).
        let Ok(first) = mmn.get::<AllocTakesItsLock>() else {
            pr_err!("lockdep-teeth: get failed\n");
            return;
        };
        // Edge 2: the teeth mutex, then get's mutex (the kind exists: no `alloc`).
        // SAFETY: a static mutex, released below; `get` may sleep.
        unsafe { nk_teeth_lock() };
        let second = mmn.get::<AllocTakesItsLock>();
        // SAFETY: taken above.
        unsafe { nk_teeth_unlock() };
        if let Ok(s) = second {
            s.put();
        }
        first.put();
        let _ = notifier_core::synchronize::<Kernel>();
        pr_info!("lockdep-teeth: done (get)\n");
    });
}

/// Run a teeth scenario with the forwarder of the loading task's mm.
fn with_teeth_forwarder(f: impl FnOnce(&MmNotifier)) {
    crate::mm::with_current_mm(|mm| {
        let Some(mm) = mm else {
            pr_err!("lockdep-teeth: no mm\n");
            return;
        };
        let Ok(mmn) = MmNotifier::get(mm) else {
            pr_err!("lockdep-teeth: mmu_notifier_get failed\n");
            return;
        };
        f(&mmn);
    });
}

/// The lockdep teeth run: a subscriber's own mutex is taken in its start callback (under
/// the invalidation map) and held across a registration (which announces that it may
/// wait for invalidations). The two never deadlock here, but they could; lockdep must
/// report the cycle (`cargo xtask kmod --lockdep-teeth` checks that it does). With
/// `lockdep_teeth=2`, the cycle through `get`'s mutex instead.
pub(crate) fn lockdep_teeth() {
    // SAFETY: reads a module parameter.
    if unsafe { nk_lockdep_teeth() } == 2 {
        lockdep_teeth_get();
        return;
    }
    pr_info!("lockdep-teeth: a subscriber lock held across register and taken in a callback\n");
    with_teeth_forwarder(|mmn| {
        let sub = pin!(Subscriber::<TakesItsLock, Kernel>::new(TakesItsLock(
            AtomicUsize::new(0)
        )));
        let sub = sub.into_ref();
        if sub.register(mmn).is_err() {
            pr_err!("lockdep-teeth: register failed\n");
            return;
        }
        // Edge 1: the invalidation map, then the mutex (in the start callback).
        if let Ok(addr) = map(1) {
            let _ = touch(addr);
            let _ = unmap(addr, PAGE);
        }
        // Edge 2: the mutex, then the invalidation map (a registration announces that
        // it may wait for invalidations in flight).
        let other = pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new()));
        let other = other.into_ref();
        // SAFETY: a static mutex, released below; registering may sleep.
        unsafe { nk_teeth_lock() };
        let r = other.register(mmn);
        // SAFETY: taken above.
        unsafe { nk_teeth_unlock() };
        if r.is_ok() {
            let _ = other.unregister();
        }
        let _ = sub.unregister();
        pr_info!(
            "lockdep-teeth: done ({} start(s) took the mutex under the invalidation map)\n",
            sub.ops().0.load(Ordering::Relaxed)
        );
    });
}

/// The cases run while the module loads, in `insmod`'s context.
pub(crate) fn run_at_init() -> Result<AtExit> {
    pr_info!("in-kernel tests on the mm of the loading task (core mode)\n");
    crate::mm::with_current_mm(|mm| {
        let mmn = match mm {
            Some(mm) => MmNotifier::get(mm),
            None => Err(EINVAL),
        };
        case(
            "the forwarding mmu_notifier is registered on the current mm",
            match &mmn {
                Ok(_) => Ok(()),
                Err(e) => {
                    pr_info!("  why: mmu_notifier_get: {:?}\n", e);
                    Err(())
                }
            },
        );
        let (Some(mm), Ok(mmn)) = (mm, mmn) else {
            return Err(EINVAL);
        };
        let _ = list_cases(&mmn);
        interval_cases(&mmn);
        concurrency_case(&mmn, mm);
        forwarder_cases(&mmn);
        process_cases();

        let sub = KBox::pin(Subscriber::new(Recorder::new()), GFP_KERNEL)?;
        let r = sub.as_ref().register(&mmn);
        case(
            "a subscriber stays registered until insmod exits",
            if r.is_ok() { Ok(()) } else { Err(()) },
        );
        Ok(AtExit { mm: mmn, sub })
    })
}

impl AtExit {
    /// Check what the exit of `insmod` did, then give everything back.
    pub(crate) fn finish(self) {
        let AtExit { mm, sub } = self;
        case(
            "C-04 release is called exactly once at the real process exit",
            (|| {
                let n = sub.releases.load(Ordering::Relaxed);
                ensure!(n == 1, "releases: {}", n);
                ensure!(sub.as_ref().is_released(), "core does not mark it released");
                ensure!(mm.is_dead(), "the core's address space is not torn down");
                ensure!(
                    sub.after_release.load(Ordering::Relaxed) == 0,
                    "a callback after release"
                );
                Ok(())
            })(),
        );
        case(
            "unregister after release does not release again",
            (|| {
                let r = sub.as_ref().unregister();
                ensure!(r.is_ok(), "unregister: {:?}", r);
                ensure!(sub.releases.load(Ordering::Relaxed) == 1, "released twice");
                Ok(())
            })(),
        );
        drop(sub);
        drop(mm);
    }
}

/// Unforwardable ranges and unknown events `forwarder_cases` made on purpose.
static MADE_UNFORWARDABLE: AtomicUsize = AtomicUsize::new(0);
static MADE_UNKNOWN: AtomicUsize = AtomicUsize::new(0);

/// A kernel range as Linux's `mmu_notifier_range_init` makes it.
fn krange(start: u64, end: u64, event: u32, blockable: bool) -> bindings::mmu_notifier_range {
    // SAFETY: a C struct of integers and pointers: all zeroes is a valid value.
    let mut r: bindings::mmu_notifier_range = unsafe { core::mem::zeroed() };
    r.start = start as c_ulong;
    r.end = end as c_ulong;
    r.event = event as bindings::mmu_notifier_event;
    r.flags = if blockable {
        bindings::MMU_NOTIFIER_RANGE_BLOCKABLE
    } else {
        0
    };
    r
}

/// Start and end through the forwarder's own callbacks (what its two kernel notifiers
/// call): the start's return value.
fn start_end(mmn: &MmNotifier, r: &bindings::mmu_notifier_range) -> c_int {
    // SAFETY: a live forwarder (we hold a reference); `r` lives across both calls; the
    // end follows the start, as Linux calls them (also after a refused start).
    unsafe {
        let ret = nk_rust_start(mmn.head(), r);
        nk_rust_end(mmn.head(), r);
        ret
    }
}

/// The forwarder driven through its callbacks with what Linux sends rarely: soft-dirty's
/// `[0, ULONG_MAX)`, unaligned and out-of-range bounds, an unknown event code, more
/// non-blockable invalidations in flight than its table holds, a refusal.
fn forwarder_cases(mmn: &MmNotifier) {
    let sub = pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new()));
    let sub = sub.into_ref();
    if let Err(e) = sub.register(mmn) {
        pr_info!("  why: register: {:?}\n", e);
        case("the forwarder's edge cases", Err(()));
        return;
    }
    let limit = Kernel::ADDRESS_LIMIT;
    case(
        "C-06 soft-dirty's [0, ULONG_MAX) reaches the subscriber as [0, limit), SoftDirty",
        (|| {
            sub.watch(0, limit);
            let (s0, e0) = (
                sub.starts.load(Ordering::Relaxed),
                sub.ends.load(Ordering::Relaxed),
            );
            let r = krange(
                0,
                u64::MAX,
                bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY,
                true,
            );
            let ret = start_end(mmn, &r);
            sub.watch(0, 0);
            ensure!(ret == 0, "start: {}", ret);
            ensure!(
                sub.events.load(Ordering::Relaxed) & (1 << Event::SoftDirty as usize) != 0,
                "no SoftDirty start covering [0, {:#x})",
                limit
            );
            let (s1, e1) = (
                sub.starts.load(Ordering::Relaxed),
                sub.ends.load(Ordering::Relaxed),
            );
            ensure!(
                s1 - s0 >= 1 && e1 - e0 == s1 - s0,
                "{} starts, {} ends",
                s1 - s0,
                e1 - e0
            );
            Ok(())
        })(),
    );
    case(
        "C-06 unaligned bounds are rounded out to pages; an unknown event goes as Unmap",
        (|| {
            sub.watch(0x1000, 0x6000);
            let u0 = sub.unmap_starts.load(Ordering::Relaxed);
            let ret = start_end(mmn, &krange(0x1234, 0x5678, 99, true));
            MADE_UNKNOWN.fetch_add(1, Ordering::Relaxed);
            sub.watch(0, 0);
            ensure!(ret == 0, "start: {}", ret);
            ensure!(
                sub.unmap_starts.load(Ordering::Relaxed) == u0 + 1,
                "no Unmap start covering [0x1000, 0x6000)"
            );
            Ok(())
        })(),
    );
    case(
        "a range wholly above the address limit is counted, not forwarded, not refused",
        (|| {
            let (s0, n0) = (
                sub.starts.load(Ordering::Relaxed),
                UNFORWARDABLE.load(Ordering::Relaxed),
            );
            let r = krange(limit as u64, 2 * limit as u64, 0, false);
            let ret = start_end(mmn, &r);
            MADE_UNFORWARDABLE.fetch_add(1, Ordering::Relaxed);
            ensure!(ret == 0, "start: {}", ret);
            ensure!(sub.starts.load(Ordering::Relaxed) == s0, "forwarded");
            ensure!(
                UNFORWARDABLE.load(Ordering::Relaxed) == n0 + 1,
                "not counted"
            );
            Ok(())
        })(),
    );
    case(
        "C-08 a refused non-blockable start is -EAGAIN; the end Linux then calls finds none",
        (|| {
            sub.refuse.store(true, Ordering::Relaxed);
            let (e0, r0) = (
                sub.ends.load(Ordering::Relaxed),
                sub.refusals.load(Ordering::Relaxed),
            );
            let ret = start_end(mmn, &krange(PAGE as u64, 2 * PAGE as u64, 0, false));
            sub.refuse.store(false, Ordering::Relaxed);
            ensure!(ret == EAGAIN.to_errno(), "start: {}", ret);
            ensure!(
                sub.refusals.load(Ordering::Relaxed) == r0 + 1,
                "the subscriber was not asked"
            );
            ensure!(
                sub.ends.load(Ordering::Relaxed) == e0,
                "an end for a refused start"
            );
            Ok(())
        })(),
    );
    let r = sub.unregister();
    case(
        "the forwarder's edge cases leave no start open",
        (|| {
            ensure!(r.is_ok(), "unregister: {:?}", r);
            ensure!(
                sub.unpaired.load(Ordering::Relaxed) == 0,
                "an end without its start"
            );
            Ok(())
        })(),
    );
    // Its own subscriber: the recorder above keeps 32 open ranges, not 100.
    let many = pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new()));
    let many = many.into_ref();
    let reg = many.register(mmn);
    for (blockable, name) in [
        (
            false,
            "C-08 100 non-blockable invalidations in flight at once: none refused, all ended",
        ),
        // With the table alone the 65th of these would wait for a slot only it can free.
        (
            true,
            "C-07 100 blockable invalidations in flight on one task: none waits, all ended",
        ),
    ] {
        case(
            name,
            (|| {
                ensure!(reg.is_ok(), "register: {:?}", reg);
                const N: usize = 100;
                let ranges = KVec::<bindings::mmu_notifier_range>::with_capacity(N, GFP_KERNEL);
                let Ok(mut ranges) = ranges else {
                    ensure!(false, "out of memory");
                    return Ok(());
                };
                for i in 0..N {
                    let a = ((i + 1) * PAGE) as u64;
                    let pushed = ranges.push(krange(a, a + PAGE as u64, 0, blockable), GFP_KERNEL);
                    ensure!(pushed.is_ok(), "out of memory");
                }
                let (s0, e0) = (
                    many.starts.load(Ordering::Relaxed),
                    many.ends.load(Ordering::Relaxed),
                );
                let mut refused = 0;
                for r in ranges.iter() {
                    // SAFETY: a live forwarder; `r` stays put until its end below.
                    if unsafe { nk_rust_start(mmn.head(), r) } != 0 {
                        refused += 1;
                    }
                }
                for r in ranges.iter().rev() {
                    // SAFETY: as above: the end of each start, as Linux calls it.
                    unsafe { nk_rust_end(mmn.head(), r) };
                }
                let (s1, e1) = (
                    many.starts.load(Ordering::Relaxed),
                    many.ends.load(Ordering::Relaxed),
                );
                ensure!(refused == 0, "{} of {} refused", refused, N);
                ensure!(
                    s1 - s0 == N && e1 - e0 == N,
                    "{} starts, {} ends",
                    s1 - s0,
                    e1 - e0
                );
                Ok(())
            })(),
        );
    }
    let _ = many.unregister();
}

/// `struct nk_refuser` of `helpers.c`, only ever behind a pointer.
#[repr(C)]
struct NkRefuser {
    _opaque: [u8; 0],
}

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_refuser_register(mm: *mut bindings::mm_struct) -> *mut NkRefuser;
    fn nk_refuser_set(r: *mut NkRefuser, refuse: bool);
    fn nk_refuser_read(r: *mut NkRefuser, out: *mut [c_uint; 3]);
    fn nk_refuser_unregister(r: *mut NkRefuser);
}

/// What the reap cases read of one mode's three subscribers.
trait ReapMode {
    /// Refuse non-blockable starts (the refusing subscriber) or not.
    fn set_refuse(&self, on: bool);
    /// The refusing subscriber's refusals and accepted non-blockable starts.
    fn refuser(&self) -> (usize, usize);
    /// Whether every subscriber's starts are ended (and no end came unstarted).
    fn paired(&self) -> bool;
    /// Whether every subscriber saw a non-blockable start it accepted.
    fn all_nonblocking(&self) -> bool;
    /// Each subscriber's `release` count.
    fn releases(&self) -> [usize; 3];
}

/// Core mode: subscribers of the core, through the forwarder.
struct CoreReap<'a> {
    subs: [Pin<&'a Subscriber<Recorder, Kernel>>; 3],
}

impl ReapMode for CoreReap<'_> {
    fn set_refuse(&self, on: bool) {
        self.subs[1].refuse.store(on, Ordering::Relaxed);
    }
    fn refuser(&self) -> (usize, usize) {
        let r = &self.subs[1];
        (
            r.refusals.load(Ordering::Relaxed),
            r.nonblocking_starts.load(Ordering::Relaxed),
        )
    }
    fn paired(&self) -> bool {
        self.subs.iter().all(|s| {
            s.starts.load(Ordering::Relaxed) == s.ends.load(Ordering::Relaxed)
                && s.unpaired.load(Ordering::Relaxed) == 0
        })
    }
    fn all_nonblocking(&self) -> bool {
        self.subs
            .iter()
            .all(|s| s.nonblocking_starts.load(Ordering::Relaxed) >= 1)
    }
    fn releases(&self) -> [usize; 3] {
        self.subs.map(|s| s.releases.load(Ordering::Relaxed))
    }
}

/// Reference mode: recorders registered straight with Linux (`mmu_notifier_register`),
/// the refusing one without an end as Linux requires.
struct RefReap {
    before: *mut NkRef,
    refuser: *mut NkRefuser,
    after: *mut NkRef,
}

impl RefReap {
    fn refuser_counts(&self) -> [c_uint; 3] {
        let mut c = [0; 3];
        // SAFETY: a registered refuser; `c` is valid for writes.
        unsafe { nk_refuser_read(self.refuser, &mut c) };
        c
    }
}

impl ReapMode for RefReap {
    fn set_refuse(&self, on: bool) {
        // SAFETY: a registered refuser.
        unsafe { nk_refuser_set(self.refuser, on) }
    }
    fn refuser(&self) -> (usize, usize) {
        let c = self.refuser_counts();
        (c[0] as usize, c[1] as usize)
    }
    fn paired(&self) -> bool {
        [self.before, self.after].iter().all(|&r| {
            let s = Seen::of_reference(r);
            s.starts == s.ends
        })
    }
    fn all_nonblocking(&self) -> bool {
        // Linux's recorder does not tell non-blockable starts apart; the refuser does.
        self.refuser().1 >= 1
    }
    fn releases(&self) -> [usize; 3] {
        [
            Seen::of_reference(self.before).releases,
            self.refuser_counts()[2] as usize,
            Seen::of_reference(self.after).releases,
        ]
    }
}

/// After the conformance suite, with its harness: `process_mrelease(2)` on a dying
/// `nkhelper serve` process reaps its address space with the OOM reaper's own code
/// (`__oom_reap_task_mm`, non-blockable invalidations), while three subscribers watch,
/// the middle one refusing at first: in core mode (core subscribers through the
/// forwarder) and in reference mode (recorders on Linux's own notifier). The process is
/// killed while one of its threads is held in the module (so the mm is still attached
/// to it, as for a victim of the OOM killer); the guest runs with `panic_on_warn=1`, so
/// a WARN in Linux's notifier chain ends the run.
pub(crate) fn reap_cases() {
    reap_in("[core]", |mm, f| {
        let Ok(mmn) = MmNotifier::get(mm) else {
            return false;
        };
        let subs = [
            pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new())),
            pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new())),
            pin!(Subscriber::<Recorder, Kernel>::new(Recorder::new())),
        ];
        let subs = subs.map(|s| s.into_ref());
        subs[1].refuse.store(true, Ordering::Relaxed);
        let ok = subs.iter().all(|s| s.register(&mmn).is_ok());
        if ok {
            f(&CoreReap { subs });
        }
        for s in subs {
            let _ = s.unregister();
        }
        drop(mmn);
        ok
    });
    reap_in("[reference]", |mm, f| {
        let raw = mm.as_raw();
        // SAFETY: `mm` is live with a user reference (the harness slot's); each
        // recorder is unregistered below.
        let m = unsafe {
            RefReap {
                before: nk_ref_register(raw, 0, 0),
                refuser: nk_refuser_register(raw),
                after: nk_ref_register(raw, 0, 0),
            }
        };
        let ok = !m.before.is_null() && !m.refuser.is_null() && !m.after.is_null();
        if ok {
            f(&m);
        }
        // SAFETY: each registered above (or null) and unregistered once.
        unsafe {
            if !m.before.is_null() {
                nk_ref_unregister(m.before);
            }
            if !m.refuser.is_null() {
                nk_refuser_unregister(m.refuser);
            }
            if !m.after.is_null() {
                nk_ref_unregister(m.after);
            }
        }
        ok
    });
}

/// The reap cases in one mode: `setup` registers the mode's subscribers on the mm,
/// runs the body with them, and unregisters them; false if it could not.
fn reap_in(mode: &str, setup: impl FnOnce(&Mm, &mut dyn FnMut(&dyn ReapMode)) -> bool) {
    // SAFETY: after `nk_h_init`, from module init (sleepable).
    let i = unsafe { nk_h_spawn() };
    if i < 0 {
        pr_info!("  why: spawn: {}\n", i);
        case_in("C-08 process_mrelease of a dying process", mode, Err(()));
        return;
    }
    // SAFETY: slot `i` holds a user reference on its mm until `nk_h_forget`.
    let mm = unsafe { &*nk_h_mm(i).cast::<Mm>() };
    let mut body = |m: &dyn ReapMode| {
        let mut ready = false;
        case_in(
            "C-08 process_mrelease of a dying process: a refusal is -EAGAIN to Linux (no WARN), the others' starts ended",
            mode,
            (|| {
                // SAFETY: our slot.
                let r = unsafe { nk_h_hold(i) };
                ensure!(r == 0, "hold a thread: {}", r);
                // SAFETY: our slot.
                unsafe { nk_h_kill(i) };
                ready = true;
                // SAFETY: our slot; sleepable.
                let r = unsafe { nk_h_mrelease(i) };
                ensure!(
                    r == EAGAIN.to_errno() as kernel::ffi::c_long,
                    "process_mrelease: {}",
                    r
                );
                let (refusals, accepted) = m.refuser();
                ensure!(refusals >= 1, "nobody refused");
                ensure!(
                    accepted == 0,
                    "the refusing subscriber accepted a non-blockable range"
                );
                ensure!(m.paired(), "a start without its end");
                Ok(())
            })(),
        );
        m.set_refuse(false);
        case_in(
            "C-08 process_mrelease again: the reap goes through, every non-blockable start ended",
            mode,
            (|| {
                ensure!(ready, "not set up");
                // SAFETY: our slot; sleepable.
                let r = unsafe { nk_h_mrelease(i) };
                ensure!(r == 0, "process_mrelease: {}", r);
                ensure!(m.all_nonblocking(), "no non-blockable start accepted");
                ensure!(m.paired(), "a start without its end");
                Ok(())
            })(),
        );
        // SAFETY: our slot; the held thread goes first, so that the exit can finish.
        unsafe {
            nk_h_unhold();
            nk_h_forget(i);
        }
        case_in(
            "C-04 the reaped process's exit releases each subscriber once",
            mode,
            (|| {
                let r = m.releases();
                ensure!(r == [1, 1, 1], "releases: {:?}", r);
                ensure!(m.paired(), "a start without its end");
                Ok(())
            })(),
        );
    };
    if !setup(mm, &mut body) {
        case_in(
            "C-08 process_mrelease: subscribers registered",
            mode,
            Err(()),
        );
        // SAFETY: our slot; nothing of it is held.
        unsafe { nk_h_forget(i) };
    }
}

/// After the forwarders are put and `mmu_notifier_synchronize` ran: nothing leaked,
/// Subscriber bugs the conformance suite reported on purpose (C-08 refuses while
/// blockable to see the core report it), set by `conformance_suite`.
pub(crate) static SUITE_BUGS: AtomicUsize = AtomicUsize::new(0);

/// nothing went wrong on the way. Prints the closing line.
pub(crate) fn finish_after_exit() {
    case(
        "C-05 every forwarder is freed after mmu_notifier_put + synchronize",
        (|| {
            let n = FORWARDERS.load(Ordering::Relaxed);
            ensure!(n == 0, "{} forwarder(s) still allocated", n);
            Ok(())
        })(),
    );
    let n = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    pr_info!(
        "forwarder: {} range(s) clamped or page-rounded, {} not forwardable, {} unknown \
         event(s), {} refusal(s) passed to Linux, {} for want of room, {} parked past the table\n",
        n(&CLAMPED),
        n(&UNFORWARDABLE),
        n(&UNKNOWN_EVENTS),
        n(&REFUSALS),
        n(&NO_ROOM),
        n(&OVERFLOWED)
    );
    case(
        "every kernel callback was forwarded and accepted by the core; no subscriber bug",
        (|| {
            let n = FORWARD_ERRORS.load(Ordering::Relaxed);
            ensure!(n == 0, "{} forwarding error(s)", n);
            // Beyond the ones `forwarder_cases` made on purpose.
            let n = UNFORWARDABLE.load(Ordering::Relaxed);
            ensure!(
                n == MADE_UNFORWARDABLE.load(Ordering::Relaxed),
                "{} range(s) with nothing left after clamping",
                n
            );
            let n = UNKNOWN_EVENTS.load(Ordering::Relaxed);
            ensure!(
                n == MADE_UNKNOWN.load(Ordering::Relaxed),
                "{} unknown event code(s)",
                n
            );
            let n = NO_ROOM.load(Ordering::Relaxed);
            ensure!(n == 0, "{} start(s) refused for want of room", n);
            let made = SUITE_BUGS.load(Ordering::Relaxed);
            ensure!(
                Kernel::bugs() == made,
                "{} bug(s) reported beyond the {} the suite made on purpose (C-08: a \
                 refusal while blockable)",
                Kernel::bugs() - made,
                made
            );
            Ok(())
        })(),
    );
    pr_info!(
        "{} passed, {} failed\n",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
}
