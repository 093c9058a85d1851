//! A third-party secondary MMU checked with the conformance suite's public runner.
//!
//! [`ToyTlb`] is a small device TLB written only against the public APIs of
//! `notifier-core` (a [`Subscriber`] it owns) and `notifier-conformance` (the
//! [`Harness`] it reads the primary MMU through, the [`SecondaryMmu`] trait the runner
//! drives it by). It follows KVM's protocol: an invalidation count and a sequence
//! number under its lock; a fault reads the primary entry without the lock and installs
//! it only if no invalidation started or ended meanwhile.
//!
//! Two broken variants show what the runner catches:
//! - [`BrokenTlb`] installs what it read without that check (the race of 2008): a
//!   translation outlives its page, and the first oracle of C-09 (the frame was freed)
//!   catches it;
//! - [`LateTlb`] zaps its entries at the invalidation's `end` instead of its `start`:
//!   between the primary MMU's change and `end` the device uses translations of pages
//!   that are still allocated (a write lost after a migration, a write through a
//!   read-only entry). Only the second oracle of C-09 (`Harness::check_translation`,
//!   the translation is the primary entry at that moment) sees it.
//!
//! Run it through the runner on the simulator, the test bed for consumers:
//!
//! ```
//! use backend_sim::SimHarness;
//! use consumer_check::ToyTlb;
//! use notifier_conformance::{run_consumer, Config};
//!
//! let h = SimHarness::deterministic(7);
//! let cfg = Config { only: Some("C-09"), rounds: 40, ..Config::default() };
//! let mut out = String::new();
//! let report = run_consumer::<_, ToyTlb<'_, _>>(&h, &cfg, &mut out);
//! assert_eq!(report.failed, 0, "{out}");
//! assert!(out.contains("ok 1 C-09 no_stale_translation"), "{out}");
//! ```
//!
//! [`mirror`] has the interval kinds: an HMM-style mirror following `read_begin` /
//! `read_retry` (one-pass and two-pass), and their broken forms (no `read_retry`, a
//! second pass that does not complete the invalidation).
//!
//! `tests/runner.rs` runs every case of the runner on them, deterministic over several
//! seeds and on real threads, and shows the broken variant caught.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod mirror;

use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};

use notifier_conformance::consumers::FaultError;
use notifier_conformance::harness::{Frame, Harness, Mm, Pte};
use notifier_conformance::runner::{Kind, SecondaryMmu, Uses};
use notifier_core::sync::SpinLock;
use notifier_core::{Error, Range, Subscriber, SubscriberOps, WouldBlock};

/// Entries of the toy TLB.
pub const ENTRIES: usize = 32;

/// How many times a fault retries on a collision before it gives up.
const MAX_RETRIES: u32 = 100_000;

/// The TLB's state, under its lock.
struct State {
    /// Cached translations: page address and entry.
    entries: [Option<(usize, Pte)>; ENTRIES],
    /// Bumped at every invalidation's end.
    seq: u64,
    /// Invalidations between their start and their end.
    in_progress: u64,
    /// Set by `release`: the address space is gone.
    released: bool,
}

impl State {
    fn zap(&mut self, start: usize, end: usize) {
        for e in self.entries.iter_mut() {
            if e.is_some_and(|(a, _)| a >= start && a < end) {
                *e = None;
            }
        }
    }
    fn find(&self, addr: usize) -> Option<Pte> {
        self.entries
            .iter()
            .flatten()
            .find(|(a, _)| *a == addr)
            .map(|(_, p)| *p)
    }
    fn insert(&mut self, addr: usize, pte: Pte) -> Result<(), FaultError> {
        self.zap(addr, addr + 1);
        let slot = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(FaultError::Full)?;
        *slot = Some((addr, pte));
        Ok(())
    }
}

/// The TLB's callbacks: what the core calls.
pub struct TlbOps<P: notifier_core::Platform> {
    zap_at_end: bool,
    st: SpinLock<P, State>,
    callbacks: AtomicU64,
}

impl<P: notifier_core::Platform> SubscriberOps for TlbOps<P> {
    fn release(&self) {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.lock();
        st.released = true;
        st.zap(0, usize::MAX);
    }

    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.lock();
        st.in_progress += 1;
        if !self.zap_at_end {
            st.zap(r.start, r.end);
        }
        Ok(())
    }

    fn invalidate_range_end(&self, r: &Range) {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.lock();
        if self.zap_at_end {
            st.zap(r.start, r.end);
        }
        st.seq = st.seq.wrapping_add(1);
        st.in_progress -= 1;
    }
}

/// A correct TLB.
pub const NO_BUG: u8 = 0;
/// The fault path ignores the sequence: [`BrokenTlb`].
pub const SKIPS_SEQ_CHECK: u8 = 1;
/// The TLB zaps at `end`, not at `start`: [`LateTlb`].
pub const ZAPS_AT_END: u8 = 2;

/// The TLB returns frames from `access` without reporting the use to the oracles
/// ([`Uses::use_translation`]): [`SilentTlb`].
pub const HIDES_USES: u8 = 3;

/// A toy device TLB for address space `mm` of `h`, broken as `BUG` says ([`NO_BUG`],
/// [`SKIPS_SEQ_CHECK`], [`ZAPS_AT_END`], [`HIDES_USES`]).
pub struct Tlb<'h, H: Harness, const BUG: u8> {
    h: &'h H,
    mm: Mm,
    sub: Subscriber<TlbOps<H::P>, H::P>,
}

/// The correct toy TLB.
pub type ToyTlb<'h, H> = Tlb<'h, H, NO_BUG>;

/// Broken: its fault path neither waits for an invalidation in flight nor checks the
/// sequence before installing what it read.
pub type BrokenTlb<'h, H> = Tlb<'h, H, SKIPS_SEQ_CHECK>;

/// Broken: it zaps its entries in `invalidate_range_end` instead of
/// `invalidate_range_start`.
pub type LateTlb<'h, H> = Tlb<'h, H, ZAPS_AT_END>;

/// Broken test double: it hides its uses from the oracles (the runner must notice).
pub type SilentTlb<'h, H> = Tlb<'h, H, HIDES_USES>;

impl<H: Harness, const BUG: u8> Tlb<'_, H, BUG> {
    fn sub(self: Pin<&Self>) -> Pin<&Subscriber<TlbOps<H::P>, H::P>> {
        // SAFETY: structural pinning of `sub`: `Tlb` never moves it out or hands out
        // `&mut` to it, has no `Drop` of its own, and is `!Unpin` because the
        // subscriber is.
        unsafe { self.map_unchecked(|s| &s.sub) }
    }

    /// The primary entry of `addr`, faulted in if needed (writable if `write`).
    fn primary(&self, addr: usize, write: bool) -> Result<Pte, FaultError> {
        match self.h.lookup(self.mm, addr) {
            Some(p) if !write || p.writable => Ok(p),
            _ => Ok(self.h.touch(self.mm, addr, write)?),
        }
    }
}

impl<'h, H: Harness, const BUG: u8> SecondaryMmu<'h, H> for Tlb<'h, H, BUG> {
    const NAME: &'static str = match BUG {
        NO_BUG => "toy device TLB",
        SKIPS_SEQ_CHECK => "toy device TLB without the sequence check",
        ZAPS_AT_END => "toy device TLB zapping at end",
        _ => "toy device TLB hiding its uses",
    };
    const KIND: Kind = Kind::List;

    fn new(h: &'h H, mm: Mm) -> Self {
        Tlb {
            h,
            mm,
            sub: Subscriber::new(TlbOps {
                zap_at_end: BUG == ZAPS_AT_END,
                st: SpinLock::new(State {
                    entries: [None; ENTRIES],
                    seq: 0,
                    in_progress: 0,
                    released: false,
                }),
                callbacks: AtomicU64::new(0),
            }),
        }
    }

    fn subscribe(self: Pin<&Self>, _start: usize, _len: usize) -> Result<(), Error> {
        let mm = self.h.address_space(self.mm);
        self.sub().register(mm)
    }

    fn unsubscribe(self: Pin<&Self>) -> Result<(), Error> {
        self.sub().unregister()
    }

    fn fault(&self, addr: usize, write: bool) -> Result<(), FaultError> {
        let ops = self.sub.ops();
        let check_seq = BUG != SKIPS_SEQ_CHECK;
        let mut collisions = 0;
        while collisions < MAX_RETRIES {
            let seq = {
                let st = ops.st.lock();
                if st.released {
                    return Err(FaultError::Released);
                }
                if check_seq && st.in_progress > 0 {
                    drop(st);
                    self.h.yield_now();
                    continue;
                }
                st.seq
            };
            let pte = self.primary(addr, write)?;
            // The window of the race: the entry read above may change now.
            self.h.yield_now();
            let mut st = ops.st.lock();
            if st.released {
                return Err(FaultError::Released);
            }
            if check_seq && (st.seq != seq || st.in_progress > 0) {
                drop(st);
                collisions += 1;
                continue;
            }
            return st.insert(addr, pte);
        }
        Err(FaultError::Livelock)
    }

    fn access(&self, uses: &Uses<'h, H>, addr: usize, write: bool) -> Option<Frame> {
        let st = self.sub.ops().st.lock();
        let pte = st.find(addr)?;
        if write && !pte.writable {
            return None;
        }
        // Under the lock the callbacks take: the translation cannot be zapped meanwhile.
        if BUG != HIDES_USES {
            uses.use_translation(addr, pte.frame, write);
        }
        Some(pte.frame)
    }

    fn held(&self) -> usize {
        self.sub.ops().st.lock().entries.iter().flatten().count()
    }

    fn callbacks(&self) -> Option<u64> {
        Some(self.sub.ops().callbacks.load(Ordering::Relaxed))
    }

    fn check_idle(&self) -> Result<(), &'static str> {
        match self.sub.ops().st.lock().in_progress {
            0 => Ok(()),
            _ => Err("an invalidation is still counted in flight"),
        }
    }
}
