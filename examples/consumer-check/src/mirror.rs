//! A toy device page table mirroring one interval of an address space (HMM style): an
//! interval subscriber following `read_begin` / `read_retry`, in one-pass and two-pass
//! forms, with broken variants.

use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};

use notifier_conformance::consumers::FaultError;
use notifier_conformance::harness::{Frame, Harness, Mm, Pte};
use notifier_conformance::runner::{Kind, SecondaryMmu, Uses};
use notifier_core::sync::SpinLock;
use notifier_core::{
    Error, Interval, IntervalOps, IntervalSubscriber, Platform, Range, WouldBlock,
};

/// Entries of the toy page table.
const ENTRIES: usize = 32;

/// How many times a fault retries before it gives up.
const MAX_RETRIES: u32 = 100_000;

/// A correct one-pass mirror.
pub const ONE_PASS: u8 = 0;
/// A one-pass mirror whose fault installs without `read_retry`.
pub const NO_READ_RETRY: u8 = 1;
/// A correct two-pass mirror: `invalidate_start` queues the zap, `invalidate_finish`
/// carries it out.
pub const TWO_PASS: u8 = 2;
/// A two-pass mirror whose `invalidate_finish` does not wait for the queued zap (it is
/// carried out lazily, at the next fault).
pub const TWO_PASS_LAZY: u8 = 3;

/// The page table, under its lock.
struct Table {
    entries: [Option<(usize, Pte)>; ENTRIES],
    /// Ranges queued by `invalidate_start` (two-pass forms).
    queued: [Option<(usize, usize)>; 8],
}

impl Table {
    fn zap(&mut self, start: usize, end: usize) {
        for e in self.entries.iter_mut() {
            if e.is_some_and(|(a, _)| a >= start && a < end) {
                *e = None;
            }
        }
    }
    fn zap_queued(&mut self) {
        for i in 0..self.queued.len() {
            if let Some((s, e)) = self.queued[i].take() {
                self.zap(s, e);
            }
        }
    }
    fn queue(&mut self, start: usize, end: usize) {
        match self.queued.iter_mut().find(|q| q.is_none()) {
            Some(q) => *q = Some((start, end)),
            // Queue full: zap at once.
            None => self.zap(start, end),
        }
    }
}

/// The mirror's callbacks.
pub struct MirrorOps<P: Platform, const MODE: u8> {
    pt: SpinLock<P, Table>,
    callbacks: AtomicU64,
}

impl<P: Platform, const MODE: u8> IntervalOps<Interval<P>> for MirrorOps<P, MODE> {
    const TWO_PASS: bool = MODE == TWO_PASS || MODE == TWO_PASS_LAZY;

    fn invalidate(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
        let mut pt = self.pt.lock();
        iv.set_seq(cur_seq);
        pt.zap(r.start, r.end);
        Ok(())
    }

    fn invalidate_start(
        &self,
        iv: &Interval<P>,
        r: &Range,
        cur_seq: u64,
    ) -> Result<(), WouldBlock> {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
        let mut pt = self.pt.lock();
        iv.set_seq(cur_seq);
        pt.queue(r.start, r.end);
        Ok(())
    }

    fn invalidate_finish(&self, _iv: &Interval<P>, _r: &Range, _cur_seq: u64) {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
        if MODE != TWO_PASS_LAZY {
            self.pt.lock().zap_queued();
        }
    }
}

/// A toy device page table mirroring an interval of address space `mm` of `h`, of
/// form `MODE` ([`ONE_PASS`], [`NO_READ_RETRY`], [`TWO_PASS`], [`TWO_PASS_LAZY`]).
pub struct Mirror<'h, H: Harness, const MODE: u8> {
    h: &'h H,
    mm: Mm,
    sub: IntervalSubscriber<MirrorOps<H::P, MODE>, H::P>,
}

/// The correct one-pass mirror.
pub type ToyMirror<'h, H> = Mirror<'h, H, ONE_PASS>;
/// Broken: installs without `read_retry`.
pub type NoRetryMirror<'h, H> = Mirror<'h, H, NO_READ_RETRY>;
/// The correct two-pass mirror.
pub type TwoPassMirror<'h, H> = Mirror<'h, H, TWO_PASS>;
/// Broken: its second pass does not complete the invalidation.
pub type LazyTwoPassMirror<'h, H> = Mirror<'h, H, TWO_PASS_LAZY>;

impl<H: Harness, const MODE: u8> Mirror<'_, H, MODE> {
    fn sub(self: Pin<&Self>) -> Pin<&IntervalSubscriber<MirrorOps<H::P, MODE>, H::P>> {
        // SAFETY: structural pinning of `sub`: `Mirror` never moves it out or hands out
        // `&mut` to it, has no `Drop` of its own, and is `!Unpin` because the
        // subscriber is.
        unsafe { self.map_unchecked(|s| &s.sub) }
    }
}

impl<'h, H: Harness, const MODE: u8> SecondaryMmu<'h, H> for Mirror<'h, H, MODE> {
    const NAME: &'static str = match MODE {
        ONE_PASS => "toy interval mirror",
        NO_READ_RETRY => "toy interval mirror without read_retry",
        TWO_PASS => "toy two-pass mirror",
        _ => "toy two-pass mirror with a lazy second pass",
    };
    const KIND: Kind = if MODE == TWO_PASS || MODE == TWO_PASS_LAZY {
        Kind::TwoPass
    } else {
        Kind::Interval
    };

    fn new(h: &'h H, mm: Mm) -> Self {
        Mirror {
            h,
            mm,
            sub: IntervalSubscriber::new(MirrorOps {
                pt: SpinLock::new(Table {
                    entries: [None; ENTRIES],
                    queued: [None; 8],
                }),
                callbacks: AtomicU64::new(0),
            }),
        }
    }

    fn subscribe(self: Pin<&Self>, start: usize, len: usize) -> Result<(), Error> {
        let mm = self.h.address_space(self.mm);
        self.sub().insert(mm, start, len)
    }

    fn unsubscribe(self: Pin<&Self>) -> Result<(), Error> {
        self.sub().remove()
    }

    fn fault(&self, addr: usize, write: bool) -> Result<(), FaultError> {
        let iv = self.sub.interval();
        let ops = self.sub.ops();
        for _ in 0..MAX_RETRIES {
            let seq = iv.read_begin().map_err(|_| FaultError::Released)?;
            if MODE == TWO_PASS_LAZY {
                // The lazy second pass: what was queued is zapped now.
                ops.pt.lock().zap_queued();
            }
            let pte = match self.h.lookup(self.mm, addr) {
                Some(p) if !write || p.writable => p,
                _ => self.h.touch(self.mm, addr, write)?,
            };
            // The window of the race.
            self.h.yield_now();
            let mut pt = ops.pt.lock();
            if MODE != NO_READ_RETRY && iv.read_retry(seq) {
                continue;
            }
            pt.zap(addr, addr + 1);
            let slot = pt
                .entries
                .iter_mut()
                .find(|e| e.is_none())
                .ok_or(FaultError::Full)?;
            *slot = Some((addr, pte));
            return Ok(());
        }
        Err(FaultError::Livelock)
    }

    fn access(&self, uses: &Uses<'h, H>, addr: usize, write: bool) -> Option<Frame> {
        let pt = self.sub.ops().pt.lock();
        let (_, pte) = pt.entries.iter().flatten().find(|(a, _)| *a == addr)?;
        if write && !pte.writable {
            return None;
        }
        uses.use_translation(addr, pte.frame, write);
        Some(pte.frame)
    }

    fn held(&self) -> usize {
        self.sub.ops().pt.lock().entries.iter().flatten().count()
    }

    fn callbacks(&self) -> Option<u64> {
        Some(self.sub.ops().callbacks.load(Ordering::Relaxed))
    }
}
