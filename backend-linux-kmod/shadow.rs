// SPDX-License-Identifier: GPL-2.0

//! Real programs, shadowed (issue 14): two recorders on the address space of a process
//! running a workload nobody here wrote (Linux's own mm selftests), one registered
//! straight with Linux (`MmuNotifier`, the binding), one a core subscriber through the
//! forwarder (`MmNotifier`). When the process has exited, the two must agree: every
//! range Linux's notifier saw, the core's saw with the same event, bounds and
//! blockable flag (after the forwarder's documented clamping: rounded outwards to
//! pages, cut at the core's address limit), every start ended, `release` once each.
//!
//! Driven by `nkshadow` (user space) through `/proc/nk_shadow` (helpers.c):
//! `attach PID NAME [teeth]` while the process is stopped right after its `execve`,
//! `report PID EXIT` once it has exited, which prints one `shadow:` line that `cargo
//! xtask kmod` checks. One process is shadowed at a time.
//!
//! Each recorder keeps a multiset of what it saw, as 64 buckets of (count, wrapping
//! sum of fingerprints): fixed memory, no allocation and no lock in the callbacks, and
//! independent of the order in which concurrent invalidations reach the two. A bucket
//! whose count or sum differs between the two is a mismatch.
//!
//! `teeth`: the core recorder ignores every soft-dirty and every protection-change
//! invalidation, as a forwarder that dropped those would; the run that uses it must
//! report mismatches, or the comparison has no teeth.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel::ffi::{c_char, c_int, c_long};
use kernel::prelude::*;
use kernel::types::ARef;
use notifier_core::{Event, Platform, Range, Subscriber, SubscriberOps, WouldBlock};

use crate::mm::{MmNotifier, MmWithUser};
use crate::mmu_notifier::MmuNotifier;
use crate::platform::Kernel;

// `mm_struct` is only passed by pointer; rustc flags a field type deep inside it.
#[allow(improper_ctypes)]
extern "C" {
    fn nk_task_mm(nr: c_int) -> *mut kernel::bindings::mm_struct;
}

const BUCKETS: usize = 64;

/// Whether the recorders record: set once both are registered, cleared before they
/// are compared. Both read the same flag.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The teeth run (module doc).
static TEETH: AtomicBool = AtomicBool::new(false);

/// One multiset of ranges: per bucket, how many and the wrapping sum of their
/// fingerprints.
struct Multiset {
    n: [AtomicU64; BUCKETS],
    sum: [AtomicU64; BUCKETS],
}

impl Multiset {
    const fn new() -> Self {
        Multiset {
            n: [const { AtomicU64::new(0) }; BUCKETS],
            sum: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    fn add(&self, h: u64) {
        let b = (h % BUCKETS as u64) as usize;
        self.n[b].fetch_add(1, Ordering::Relaxed);
        self.sum[b].fetch_add(h, Ordering::Relaxed);
    }

    /// Invalidations in `self` not matched in `other` (or the other way round): per
    /// bucket the difference of the counts, or one if only the sums differ.
    fn mismatches(&self, other: &Multiset) -> u64 {
        (0..BUCKETS)
            .map(|b| {
                let (a, c) = (
                    self.n[b].load(Ordering::Relaxed),
                    other.n[b].load(Ordering::Relaxed),
                );
                if a != c {
                    a.abs_diff(c)
                } else {
                    u64::from(
                        self.sum[b].load(Ordering::Relaxed) != other.sum[b].load(Ordering::Relaxed),
                    )
                }
            })
            .sum()
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fingerprint(start: usize, end: usize, ev: Event, blockable: bool) -> u64 {
    let tag = ((ev as u64) << 1) | u64::from(blockable);
    mix(start as u64 ^ mix(end as u64 ^ mix(tag)))
}

/// What one recorder saw.
struct Tally {
    starts: AtomicU64,
    ends: AtomicU64,
    releases: AtomicU64,
    /// Ranges with nothing left after clamping (Linux's recorder only).
    unforwardable: AtomicU64,
    start_set: Multiset,
    end_set: Multiset,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            starts: AtomicU64::new(0),
            ends: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            unforwardable: AtomicU64::new(0),
            start_set: Multiset::new(),
            end_set: Multiset::new(),
        }
    }

    fn note(&self, start: bool, s: usize, e: usize, ev: Event, blockable: bool) {
        if !ARMED.load(Ordering::Acquire) {
            return;
        }
        let h = fingerprint(s, e, ev, blockable);
        if start {
            self.starts.fetch_add(1, Ordering::Relaxed);
            self.start_set.add(h);
        } else {
            self.ends.fetch_add(1, Ordering::Relaxed);
            self.end_set.add(h);
        }
    }

    fn release(&self) {
        if ARMED.load(Ordering::Acquire) {
            self.releases.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The clamping the forwarder documents (forwarder/mm.rs, `clamp`), written again
/// here from its description rather than shared: rounded outwards to pages, cut at the
/// core's address limit; `None` when nothing is left.
fn documented_clamp(start: usize, end: usize) -> Option<(usize, usize)> {
    let pg = Kernel::PAGE_SIZE;
    let s = start & !(pg - 1);
    let e = match end.checked_add(pg - 1) {
        Some(x) => (x & !(pg - 1)).min(Kernel::ADDRESS_LIMIT),
        None => Kernel::ADDRESS_LIMIT,
    };
    (s < e).then_some((s, e))
}

/// Which notifier a [`Recorder`] is on.
#[derive(Clone, Copy)]
enum Side {
    /// Registered straight with Linux: it sees Linux's own ranges, which it clamps as
    /// the forwarder documents.
    Linux,
    /// A core subscriber behind the forwarder.
    Core,
}

/// One of the two recorders.
struct Recorder {
    tally: &'static Tally,
    side: Side,
}

impl Recorder {
    fn note(&self, start: bool, r: &Range) {
        match self.side {
            Side::Linux => match documented_clamp(r.start, r.end) {
                Some((s, e)) => self.tally.note(start, s, e, r.event, r.blockable),
                None => {
                    if start && ARMED.load(Ordering::Acquire) {
                        self.tally.unforwardable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
            Side::Core => {
                let ignored = TEETH.load(Ordering::Relaxed)
                    && matches!(
                        r.event,
                        Event::SoftDirty | Event::ProtectionPage | Event::ProtectionVma
                    );
                if !ignored {
                    self.tally.note(start, r.start, r.end, r.event, r.blockable);
                }
            }
        }
    }
}

impl SubscriberOps for Recorder {
    fn release(&self) {
        self.tally.release();
    }
    fn invalidate_range_start(&self, r: &Range) -> core::result::Result<(), WouldBlock> {
        self.note(true, r);
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        self.note(false, r);
    }
}

/// The two tallies: static, so that the recorders can borrow them for `'static` and
/// be reset between runs (only while nothing is attached).
static LINUX: Tally = Tally::new();
static CORE: Tally = Tally::new();

fn reset(t: &Tally) {
    for a in [&t.starts, &t.ends, &t.releases, &t.unforwardable] {
        a.store(0, Ordering::Relaxed);
    }
    for m in [&t.start_set, &t.end_set] {
        for b in 0..BUCKETS {
            m.n[b].store(0, Ordering::Relaxed);
            m.sum[b].store(0, Ordering::Relaxed);
        }
    }
}

/// The process being shadowed.
struct Attached {
    pid: c_int,
    name: [u8; 32],
    name_len: usize,
    teeth: bool,
    linux: Pin<KBox<MmuNotifier<Recorder>>>,
    core: Pin<KBox<Subscriber<Recorder, Kernel>>>,
    /// Dropped after `core` has unregistered.
    forwarder: MmNotifier,
}

/// The one shadow slot.
///
/// # Invariants
///
/// Reached only from `nk_shadow_cmd` and `nk_shadow_exit`, which helpers.c calls with
/// `nk_shadow_mutex` held: one at a time.
struct Slot(UnsafeCell<Option<Attached>>);

// SAFETY: every access is serialised by `nk_shadow_mutex` (type invariant).
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot(UnsafeCell::new(None));

fn attach(pid: c_int, name: &[u8], teeth: bool) -> Result<Attached> {
    // SAFETY: no precondition; a non-null result carries a user reference.
    let raw = unsafe { nk_task_mm(pid) };
    let raw = core::ptr::NonNull::new(raw).ok_or(ESRCH)?;
    // SAFETY: the user reference `nk_task_mm` took is handed to the `ARef`.
    let mm: ARef<MmWithUser> = unsafe { ARef::from_raw(raw.cast()) };
    ARMED.store(false, Ordering::Release);
    reset(&LINUX);
    reset(&CORE);
    TEETH.store(teeth, Ordering::Relaxed);
    let linux = Recorder {
        tally: &LINUX,
        side: Side::Linux,
    };
    let linux = KBox::pin_init(MmuNotifier::new(&mm, linux), GFP_KERNEL)?;
    let forwarder = MmNotifier::get(&mm)?;
    let core = Recorder {
        tally: &CORE,
        side: Side::Core,
    };
    let core = KBox::pin(Subscriber::new(core), GFP_KERNEL)?;
    core.as_ref()
        .register(&forwarder)
        .map_err(crate::mm::to_kernel_error)?;
    // The process is stopped (ptrace, right after its execve): it changes nothing of
    // its own until `nkshadow` lets it go. Kernel threads (reclaim, compaction) could,
    // between the two registrations; the window is the one below.
    ARMED.store(true, Ordering::Release);
    let mut n = [0u8; 32];
    let len = name.len().min(n.len());
    n[..len].copy_from_slice(&name[..len]);
    Ok(Attached {
        pid,
        name: n,
        name_len: len,
        teeth,
        linux,
        core,
        forwarder,
    })
}

fn report(a: Attached, exit: c_long) {
    // The process has exited: `release` has run on both (exit_mmap), and Linux calls
    // nothing after it.
    ARMED.store(false, Ordering::Release);
    let (l, c) = (&LINUX, &CORE);
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let ranges = l.start_set.mismatches(&c.start_set) + l.end_set.mismatches(&c.end_set);
    let unended = ld(&l.starts).abs_diff(ld(&l.ends)) + ld(&c.starts).abs_diff(ld(&c.ends));
    let releases = ld(&l.releases).abs_diff(1) + ld(&c.releases).abs_diff(1);
    let mismatches = ranges + unended + releases;
    let name = core::str::from_utf8(&a.name[..a.name_len]).unwrap_or("?");
    pr_info!(
        "shadow: {} teeth={} exit={} invalidations={} linux-starts={} core-starts={} \
         ends={}/{} releases={}/{} unforwardable={} mismatches={} (ranges {}, unended {}, \
         releases {}) pid={}\n",
        name,
        u8::from(a.teeth),
        exit,
        ld(&l.starts),
        ld(&l.starts),
        ld(&c.starts),
        ld(&l.ends),
        ld(&c.ends),
        ld(&l.releases),
        ld(&c.releases),
        ld(&l.unforwardable),
        mismatches,
        ranges,
        unended,
        releases,
        a.pid,
    );
    detach(a);
}

fn detach(a: Attached) {
    let Attached {
        core,
        forwarder,
        linux,
        ..
    } = a;
    // Unregistering after teardown is allowed and calls nothing; before it (a run that
    // failed half-way) it calls `release`, which is no longer recorded.
    let _ = core.as_ref().unregister();
    drop(core);
    drop(forwarder);
    drop(linux);
}

/// Parse a decimal (possibly negative) number.
fn number(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// One command written to `/proc/nk_shadow` (`buf`: `len` bytes, without the NUL).
/// Returns 0 or a negative errno.
///
/// # Safety
///
/// `buf` is valid for reads of `len` bytes; the caller holds `nk_shadow_mutex`.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_shadow_cmd(buf: *const c_char, len: usize) -> c_int {
    // SAFETY: caller's contract.
    let cmd = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len) };
    let mut words = cmd
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|w| !w.is_empty());
    // SAFETY: the caller holds `nk_shadow_mutex` (type invariant of `Slot`).
    let slot = unsafe { &mut *SLOT.0.get() };
    let (Some(verb), Some(pid)) = (words.next(), words.next().and_then(number)) else {
        return EINVAL.to_errno();
    };
    let Ok(pid) = c_int::try_from(pid) else {
        return EINVAL.to_errno();
    };
    match verb {
        b"attach" => {
            if slot.is_some() {
                return EBUSY.to_errno();
            }
            let name = words.next().unwrap_or(b"?");
            let teeth = words.next() == Some(b"teeth");
            match attach(pid, name, teeth) {
                Ok(a) => {
                    *slot = Some(a);
                    0
                }
                Err(e) => {
                    pr_err!("shadow-error: attach to pid {}: {:?}\n", pid, e);
                    e.to_errno()
                }
            }
        }
        b"report" => {
            let exit = words.next().and_then(number).unwrap_or(-1);
            match slot.take() {
                Some(a) if a.pid == pid => {
                    report(a, exit as c_long);
                    0
                }
                Some(a) => {
                    *slot = Some(a);
                    ESRCH.to_errno()
                }
                None => ESRCH.to_errno(),
            }
        }
        _ => EINVAL.to_errno(),
    }
}

/// At unload: a process still shadowed (its `nkshadow` died) is let go.
///
/// # Safety
///
/// The caller holds `nk_shadow_mutex`.
#[no_mangle]
pub(crate) unsafe extern "C" fn nk_shadow_exit() {
    ARMED.store(false, Ordering::Release);
    // SAFETY: the caller holds `nk_shadow_mutex` (type invariant of `Slot`).
    if let Some(a) = unsafe { &mut *SLOT.0.get() }.take() {
        pr_err!("shadow-error: pid {} still attached at unload\n", a.pid);
        detach(a);
    }
}
