//! Secondary MMUs written against the core's public API the way real ones are, each
//! with the deliberately broken form ([`Twin`]) that the suite must catch.
//!
//! Every consumer checks each access it makes through a translation with the two
//! oracles of C-09: [`Harness::frame_live`] (counted in `violations`) and, where the
//! backend has it, [`Harness::check_translation`] (counted in `stale`). A correct
//! consumer on a correct core never counts one.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arrayvec::ArrayVec;
use notifier_core::sync::SpinLock;
use notifier_core::{Event, Range, SubscriberOps, WouldBlock};

use crate::harness::{Frame, Harness, HarnessError, Mm, Pte, TranslationCheck};
use crate::subscribe::{IvOps, Seq};
use crate::Twin;

/// How often a fault path retries before it reports a livelock.
const MAX_RETRIES: u32 = 100_000;

/// Page slots of a [`Window`] (pages are counted modulo this).
const WINDOW_SLOTS: usize = 64;
/// How long a fault waits in its window for an invalidation of its page, in
/// [`Harness::yield_now`] calls.
const WINDOW_YIELDS: u32 = 256;

/// The race window of a consumer's fault, held open on purpose (issue 14: "teeth in the
/// kernels"). A fault reads the primary entry, then waits here, before it takes its lock
/// and checks whether an invalidation ran meanwhile, until an invalidation of that page
/// has started, or for a consumer that revokes at `end` has ended (or a bound of
/// `WINDOW_YIELDS` yields has passed). A correct consumer
/// then sees the invalidation and retries (only its first attempt waits); a broken one
/// that ignores it installs a translation the primary MMU is removing, in every run
/// rather than when the scheduler happens to interleave the two. Only while a case has
/// opened it for a concurrent phase ([`open`](Self::open)); otherwise the window is one
/// [`Harness::yield_now`], as before.
pub struct Window {
    open: AtomicBool,
    /// Invalidation starts seen, per page slot.
    starts: [AtomicU32; WINDOW_SLOTS],
    /// Invalidation ends seen, per page slot (consumers that have an `end`).
    ends: [AtomicU32; WINDOW_SLOTS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            open: AtomicBool::new(false),
            starts: [const { AtomicU32::new(0) }; WINDOW_SLOTS],
            ends: [const { AtomicU32::new(0) }; WINDOW_SLOTS],
        }
    }
}

impl Window {
    /// Hold faults' windows open (`true`) for a concurrent phase, or not.
    pub fn open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    fn slot<H: Harness>(addr: usize) -> usize {
        (addr / page_size::<H>()) % WINDOW_SLOTS
    }

    fn count<H: Harness>(counts: &[AtomicU32; WINDOW_SLOTS], r: &Range) {
        let pages = (r.end - r.start).div_ceil(page_size::<H>());
        if pages >= WINDOW_SLOTS {
            for c in counts {
                c.fetch_add(1, Ordering::SeqCst);
            }
        } else {
            for i in 0..pages {
                let a = r.start + i * page_size::<H>();
                counts[Self::slot::<H>(a)].fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// An invalidation of `r` started (called by the consumer's callback).
    fn started<H: Harness>(&self, r: &Range) {
        Self::count::<H>(&self.starts, r);
    }

    /// An invalidation of `r` ended (called by the consumer's callback).
    fn ended<H: Harness>(&self, r: &Range) {
        Self::count::<H>(&self.ends, r);
    }

    /// Whether an invalidation of `addr`'s page is between its start and its end, for a
    /// consumer that counts both (a hint: the two counts are read one after the other).
    pub fn in_flight<H: Harness>(&self, addr: usize) -> bool {
        let s = Self::slot::<H>(addr);
        self.starts[s].load(Ordering::SeqCst) != self.ends[s].load(Ordering::SeqCst)
    }

    /// Before the fault reads the primary entry of `addr`: what it waits to change.
    /// `until_end`: an invalidation of the page must have ended (a consumer that
    /// revokes at `end` is wrong only about a translation that lands after it).
    fn mark<H: Harness>(&self, addr: usize, until_end: bool) -> (bool, u32) {
        let c = if until_end { &self.ends } else { &self.starts };
        (until_end, c[Self::slot::<H>(addr)].load(Ordering::SeqCst))
    }

    /// After the read: wait (if open and `first`) for the change `mark` names;
    /// otherwise yield once.
    fn wait<H: Harness>(&self, h: &H, addr: usize, mark: (bool, u32), first: bool) {
        if !(first && self.open.load(Ordering::Relaxed)) {
            h.yield_now();
            return;
        }
        let c = if mark.0 { &self.ends } else { &self.starts };
        for _ in 0..WINDOW_YIELDS {
            if c[Self::slot::<H>(addr)].load(Ordering::SeqCst) != mark.1 {
                return;
            }
            h.yield_now();
        }
    }
}

fn page_size<H: Harness>() -> usize {
    <H::P as notifier_core::Platform>::PAGE_SIZE
}

/// Why a secondary fault did not install a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// The primary fault failed (unmapped address, …).
    Primary(HarnessError),
    /// The consumer refused while an invalidation is in flight (the exporter's importers).
    Refused,
    /// The subscriber was released: the address space is gone.
    Released,
    /// More than `MAX_RETRIES` collisions in a row.
    Livelock,
    /// The consumer's table is full.
    Full,
}

impl From<HarnessError> for FaultError {
    fn from(e: HarnessError) -> Self {
        FaultError::Primary(e)
    }
}

/// A small translation cache: page address to entry, with an accessed bit.
#[derive(Default)]
pub struct Tlb<const N: usize> {
    e: ArrayVec<(usize, Pte, bool), N>,
}

impl<const N: usize> Tlb<N> {
    /// An empty cache.
    pub const fn new() -> Self {
        Tlb {
            e: ArrayVec::new_const(),
        }
    }
    fn find(&mut self, addr: usize) -> Option<&mut (usize, Pte, bool)> {
        self.e.iter_mut().find(|x| x.0 == addr)
    }
    /// Install (or replace) a translation.
    fn insert(&mut self, addr: usize, pte: Pte) -> Result<(), FaultError> {
        if let Some(x) = self.find(addr) {
            *x = (addr, pte, false);
            return Ok(());
        }
        self.e
            .try_push((addr, pte, false))
            .map_err(|_| FaultError::Full)
    }
    /// Drop every translation in `[start, end)`; calls `f` on each before.
    fn zap(&mut self, start: usize, end: usize, mut f: impl FnMut(usize, Pte)) {
        self.e.retain(|x| {
            let hit = x.0 >= start && x.0 < end;
            if hit {
                f(x.0, x.1);
            }
            !hit
        });
    }
    /// Clear the accessed bits of `[start, end)`; true if any was set.
    fn age(&mut self, start: usize, end: usize, clear: bool) -> bool {
        let mut young = false;
        for x in self.e.iter_mut().filter(|x| x.0 >= start && x.0 < end) {
            young |= x.2;
            if clear {
                x.2 = false;
            }
        }
        young
    }
    /// Number of translations.
    pub fn len(&self) -> usize {
        self.e.len()
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.e.is_empty()
    }
}

/// Read the primary entry of `addr`, faulting it in if needed (Linux:
/// `hmm_range_fault` / `get_user_pages`).
fn primary_entry<H: Harness>(h: &H, mm: Mm, addr: usize, write: bool) -> Result<Pte, FaultError> {
    match h.lookup(mm, addr) {
        Some(p) if !write || p.writable => Ok(p),
        _ => Ok(h.touch(mm, addr, write)?),
    }
}

/// Access a cached translation: mark it accessed and check the frame-liveness oracle.
fn access_tlb<H: Harness, const N: usize>(
    h: &H,
    tlb: &mut Tlb<N>,
    addr: usize,
    violations: &AtomicU32,
) -> Option<Frame> {
    let x = tlb.find(addr)?;
    x.2 = true;
    let f = x.1.frame;
    if !h.frame_live(f) {
        violations.fetch_add(1, Ordering::Relaxed);
    }
    Some(f)
}

/// The uses of translations that the second oracle of C-09
/// ([`Harness::check_translation`]) found stale.
pub struct StaleUses<P: notifier_core::Platform> {
    count: AtomicU32,
    first: SpinLock<P, Option<(usize, &'static str)>>,
}

impl<P: notifier_core::Platform> Default for StaleUses<P> {
    fn default() -> Self {
        StaleUses {
            count: AtomicU32::new(0),
            first: SpinLock::new(None),
        }
    }
}

impl<P: notifier_core::Platform> StaleUses<P> {
    /// How many.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first one: its address and what was wrong.
    pub fn first(&self) -> Option<(usize, &'static str)> {
        *self.first.lock()
    }

    pub(crate) fn check<H: Harness<P = P>>(
        &self,
        h: &H,
        mm: Mm,
        addr: usize,
        frame: Frame,
        write: bool,
    ) {
        if let TranslationCheck::Stale(why) = h.check_translation(mm, addr, frame, write) {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.first.lock().get_or_insert((addr, why));
        }
    }
}

/// Use the cached translation of `addr` in `mm` (for writing if `write`; a read-only
/// one is then a miss, to be faulted for writing), under the caller's lock: checked by
/// both oracles of C-09.
fn use_tlb<H: Harness, const N: usize>(
    h: &H,
    mm: Mm,
    tlb: &mut Tlb<N>,
    addr: usize,
    write: bool,
    violations: &AtomicU32,
    stale: &StaleUses<H::P>,
) -> Option<Frame> {
    if write && !tlb.find(addr)?.1.writable {
        return None;
    }
    let f = access_tlb(h, tlb, addr, violations)?;
    stale.check(h, mm, addr, f, write);
    Some(f)
}

/// C-10: the pages of a range are still allocated while its `start` (and
/// `invalidate_secondary_tlbs`) runs.
fn check_live<H: Harness, const N: usize>(
    h: &H,
    tlb: &mut Tlb<N>,
    r: (usize, usize),
    v: &AtomicU32,
) {
    for x in tlb.e.iter().filter(|x| x.0 >= r.0 && x.0 < r.1) {
        if !h.frame_live(x.1.frame) {
            v.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// -------------------------------------------------------------------------------------
// KVM-like shadow page table.
// -------------------------------------------------------------------------------------

/// The shadow MMU's state, under its `mmu_lock`.
#[derive(Default)]
struct KvmState {
    sptes: Tlb<64>,
    /// Bumped by every `end` (Linux: `mmu_invalidate_seq`).
    seq: u64,
    /// Invalidations between start and end (Linux: `mmu_invalidate_in_progress`, a
    /// signed count as there: a correct shadow MMU never takes it below zero).
    in_progress: i64,
    /// Ranges whose flush the broken twin postponed past `end`.
    pending: ArrayVec<(usize, usize), 16>,
    released: bool,
}

/// A spin lock with a `try_lock` (the platform's has none): a flag taken before the
/// platform's lock, so that holding the flag is holding the lock.
struct TryLock<P: notifier_core::Platform, T> {
    busy: AtomicBool,
    inner: SpinLock<P, T>,
}

/// Clears [`TryLock::busy`] when dropped (after the inner guard: field order).
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Proof that a [`TryLock`] is held.
struct TryGuard<'a, P: notifier_core::Platform, T> {
    g: notifier_core::sync::SpinGuard<'a, P, T>,
    _busy: Busy<'a>,
}

impl<P: notifier_core::Platform, T> core::ops::Deref for TryGuard<'_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<P: notifier_core::Platform, T> core::ops::DerefMut for TryGuard<'_, P, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}

impl<P: notifier_core::Platform, T> TryLock<P, T> {
    fn new(t: T) -> Self {
        TryLock {
            busy: AtomicBool::new(false),
            inner: SpinLock::new(t),
        }
    }

    fn try_lock(&self) -> Option<TryGuard<'_, P, T>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(TryGuard {
            g: self.inner.lock(),
            _busy: Busy(&self.busy),
        })
    }

    fn lock(&self) -> TryGuard<'_, P, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            P::relax();
        }
    }
}

/// A KVM-like shadow page table: a list subscriber. Faults snapshot the sequence, read
/// the primary entry without the lock, and install only if no invalidation started or
/// ended meanwhile; `start` zaps (a non-blockable one refuses if the lock is busy,
/// C-08); `end` lets faults continue; ageing from its own accessed bits.
pub struct Kvm<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    twin: Option<Twin>,
    st: TryLock<H::P, KvmState>,
    /// Stale accesses seen (must stay 0).
    pub violations: AtomicU32,
    /// Uses the second oracle found stale (must stay 0).
    pub stale: StaleUses<H::P>,
    /// Callbacks received.
    pub starts: AtomicU32,
    /// Callbacks received.
    pub ends: AtomicU32,
    /// Callbacks received.
    pub releases: AtomicU32,
    /// Fault retries on a sequence collision.
    pub retries: AtomicU32,
    /// Translations installed by the fault path.
    pub faults: AtomicU32,
    /// The fault path's race window.
    pub window: Window,
}

impl<'h, H: Harness> Kvm<'h, H> {
    /// A shadow MMU for `mm`, broken as `twin` says if it names one of its twins.
    pub fn new(h: &'h H, mm: Mm, twin: Option<Twin>) -> Self {
        Kvm {
            h,
            mm,
            twin,
            st: TryLock::new(KvmState::default()),
            violations: AtomicU32::new(0),
            stale: StaleUses::default(),
            starts: AtomicU32::new(0),
            ends: AtomicU32::new(0),
            releases: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            faults: AtomicU32::new(0),
            window: Window::default(),
        }
    }

    fn is(&self, t: Twin) -> bool {
        self.twin == Some(t)
    }

    /// A guest access to `addr` that misses the shadow table: fault it in.
    pub fn fault(&self, addr: usize, write: bool) -> Result<Pte, FaultError> {
        let ignore = self.is(Twin::KvmIgnoresSeq);
        let mut collisions = 0;
        let mut first = true;
        while collisions < MAX_RETRIES {
            let seq = {
                let mut st = self.st.lock();
                if self.is(Twin::KvmFlushAfterEnd) {
                    // The broken twin flushes lazily, on the next fault.
                    while let Some((s, e)) = st.pending.pop() {
                        st.sptes.zap(s, e, |_, _| {});
                    }
                }
                if st.released && !self.is(Twin::KvmCachesPastRelease) {
                    return Err(FaultError::Released);
                }
                if st.in_progress > 0 && !ignore {
                    // Waiting for the invalidation in flight to end is not a collision:
                    // its length is the primary MMU's (a preempted thread's) business.
                    drop(st);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    self.h.yield_now();
                    continue;
                }
                st.seq
            };
            let mark = self.window.mark::<H>(addr, false);
            let pte = primary_entry(self.h, self.mm, addr, write)?;
            // The window of the 2008 race: the entry read above may be cleared now.
            self.window
                .wait(self.h, addr, mark, core::mem::take(&mut first));
            let mut st = self.st.lock();
            if !ignore && (st.seq != seq || st.in_progress > 0) {
                drop(st);
                self.retries.fetch_add(1, Ordering::Relaxed);
                collisions += 1;
                continue;
            }
            st.sptes.insert(addr, pte)?;
            self.faults.fetch_add(1, Ordering::Relaxed);
            return Ok(pte);
        }
        Err(FaultError::Livelock)
    }

    /// A guest read through the shadow table: the frame reached, or `None` on a miss.
    pub fn access(&self, addr: usize) -> Option<Frame> {
        self.access_for(addr, false)
    }

    /// A guest access through the shadow table, for writing if `write` (a read-only
    /// shadow entry is then a miss): the frame reached, or `None` on a miss.
    pub fn access_for(&self, addr: usize, write: bool) -> Option<Frame> {
        let mut st = self.st.lock();
        use_tlb(
            self.h,
            self.mm,
            &mut st.sptes,
            addr,
            write,
            &self.violations,
            &self.stale,
        )
    }

    /// Access `addr` (for writing if `write`), faulting it in on a miss.
    pub fn run(&self, addr: usize, write: bool) -> Result<Frame, FaultError> {
        match self.access_for(addr, write) {
            Some(f) => Ok(f),
            None => self.fault(addr, write).map(|p| p.frame),
        }
    }

    /// Number of shadow entries.
    pub fn sptes(&self) -> usize {
        self.st.lock().sptes.len()
    }
}

impl<H: Harness> SubscriberOps for Kvm<'_, H> {
    fn release(&self) {
        self.releases.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.lock();
        st.released = true;
        if !self.is(Twin::KvmCachesPastRelease) {
            st.sptes.zap(0, usize::MAX, |_, _| {});
        }
    }

    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.starts.fetch_add(1, Ordering::Relaxed);
        self.window.started::<H>(r);
        let mut st = if r.blockable {
            self.st.lock()
        } else {
            // Non-blockable: waiting for a fault or an access that holds the lock is
            // not allowed, so a busy lock is a refusal (C-08), and nothing was begun.
            match self.st.try_lock() {
                Some(st) => st,
                None => {
                    if self.is(Twin::KvmCountsRefusedStart) {
                        // The broken twin counts the refused start as begun and, as a
                        // refuser gets no `end`, closes it at once with its end
                        // bookkeeping: the count of invalidations in flight is one
                        // below the truth from now on, so while one invalidation is in
                        // flight a fault goes ahead.
                        let mut st = self.st.lock();
                        st.seq = st.seq.wrapping_add(1);
                        st.in_progress -= 1;
                    }
                    // No `end` follows a refusal: the window's count of it neither.
                    self.window.ended::<H>(r);
                    return Err(WouldBlock);
                }
            }
        };
        st.in_progress += 1;
        check_live(self.h, &mut st.sptes, (r.start, r.end), &self.violations);
        if self.is(Twin::KvmFlushAfterEnd) {
            if st.pending.try_push((r.start, r.end)).is_err() {
                st.sptes.zap(r.start, r.end, |_, _| {});
            }
        } else if !self.is(Twin::KvmZapsInEnd) {
            st.sptes.zap(r.start, r.end, |_, _| {});
        }
        drop(st);
        if self.is(Twin::KvmRefusesWhileBlockable) && r.blockable {
            // Did the work, then refuses anyway: only the core's bug report shows it.
            return Err(WouldBlock);
        }
        Ok(())
    }

    fn invalidate_range_end(&self, r: &Range) {
        self.ends.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.lock();
        if self.is(Twin::KvmZapsInEnd) {
            // The broken twin zaps only now: between the primary's change and this,
            // the guest still used the old translations.
            st.sptes.zap(r.start, r.end, |_, _| {});
        }
        st.seq = st.seq.wrapping_add(1);
        st.in_progress -= 1;
        drop(st);
        // Last: the guest's accesses aimed at a page in flight (C-09) go on until now.
        self.window.ended::<H>(r);
    }

    fn clear_flush_young(&self, start: usize, end: usize) -> bool {
        self.st.lock().sptes.age(start, end, true)
    }

    fn clear_young(&self, start: usize, end: usize) -> bool {
        self.st.lock().sptes.age(start, end, true)
    }

    fn test_young(&self, addr: usize) -> bool {
        self.st.lock().sptes.age(addr, addr + 1, false)
    }
}

// -------------------------------------------------------------------------------------
// Device TLB (IOMMU SVA): walks the CPU page tables itself, flushed with the CPU TLB.
// -------------------------------------------------------------------------------------

/// A device TLB that relies on `invalidate_secondary_tlbs` alone: it fills from the
/// primary entries as the hardware walker would and is flushed right when the CPU TLB
/// is, under the page-table lock.
pub struct DeviceTlb<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    twin: Option<Twin>,
    tlb: SpinLock<H::P, Tlb<64>>,
    /// Stale accesses seen (must stay 0).
    pub violations: AtomicU32,
    /// Uses the second oracle found stale (must stay 0).
    pub stale: StaleUses<H::P>,
    /// `invalidate_secondary_tlbs` calls.
    pub flushes: AtomicU32,
    /// Flushes done (a walk that raced one is discarded).
    epoch: AtomicU32,
}

impl<'h, H: Harness> DeviceTlb<'h, H> {
    /// A device TLB on `mm`.
    pub fn new(h: &'h H, mm: Mm, twin: Option<Twin>) -> Self {
        DeviceTlb {
            h,
            mm,
            twin,
            tlb: SpinLock::new(Tlb::new()),
            violations: AtomicU32::new(0),
            stale: StaleUses::default(),
            flushes: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
        }
    }

    /// The device walks the CPU page tables for `addr` (no fault: a miss stays a miss).
    ///
    /// A walk that raced a flush is discarded, as an IOMMU's invalidation discards the
    /// walks in flight: the flush count is read before the walk and checked, under the
    /// TLB's lock, before the entry is inserted.
    pub fn fill(&self, addr: usize) -> Option<Pte> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let pte = self.h.lookup(self.mm, addr)?;
        let mut tlb = self.tlb.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return None;
        }
        tlb.insert(addr, pte).ok()?;
        Some(pte)
    }

    /// A device read through its TLB.
    pub fn access(&self, addr: usize) -> Option<Frame> {
        self.access_for(addr, false)
    }

    /// A device access through its TLB, for writing if `write` (a read-only entry is
    /// then a miss).
    pub fn access_for(&self, addr: usize, write: bool) -> Option<Frame> {
        use_tlb(
            self.h,
            self.mm,
            &mut self.tlb.lock(),
            addr,
            write,
            &self.violations,
            &self.stale,
        )
    }

    /// Access `addr` (for writing if `write`), walking the page tables on a miss.
    pub fn run(&self, addr: usize, write: bool) -> Option<Frame> {
        match self.access_for(addr, write) {
            Some(f) => Some(f),
            None => self
                .fill(addr)
                .filter(|p| !write || p.writable)
                .map(|p| p.frame),
        }
    }

    fn flush(&self, tlb: &mut Tlb<64>, start: usize, end: usize) {
        // Under the lock: a fill that read the epoch before this flush sees it changed.
        self.epoch.fetch_add(1, Ordering::Release);
        tlb.zap(start, end, |_, _| {});
    }
}

impl<H: Harness> SubscriberOps for DeviceTlb<'_, H> {
    fn invalidate_secondary_tlbs(&self, start: usize, end: usize) {
        let mut tlb = self.tlb.lock();
        self.flushes.fetch_add(1, Ordering::Relaxed);
        check_live(self.h, &mut tlb, (start, end), &self.violations);
        match self.twin {
            Some(Twin::DeviceTlbIgnoresFlush | Twin::DeviceTlbFlushesAtEnd) => {}
            _ => self.flush(&mut tlb, start, end),
        }
    }

    fn invalidate_range_end(&self, r: &Range) {
        if self.twin == Some(Twin::DeviceTlbFlushesAtEnd) {
            // The broken twin flushes once per invalidation, at its end: the pages are
            // still allocated, but the device used the old entries after the primary
            // MMU changed them.
            self.flush(&mut self.tlb.lock(), r.start, r.end);
        }
    }

    fn release(&self) {
        self.tlb.lock().zap(0, usize::MAX, |_, _| {});
    }
}

// -------------------------------------------------------------------------------------
// XPMEM/GRU-like exporter with remote importers.
// -------------------------------------------------------------------------------------

/// Remote nodes that import pages from the exporter.
pub const IMPORTERS: usize = 3;
/// Preallocated revoke messages (the seed thread: allocate them statically and
/// serialise access to the pool with a lock; nothing is allocated on the invalidation
/// path).
pub const POOL: usize = 4;

#[derive(Clone, Copy)]
struct Revoke {
    importer: usize,
    addr: usize,
}

#[derive(Default)]
struct ExpState {
    importers: [Tlb<32>; IMPORTERS],
    active: u32,
    seq: u64,
    /// Messages in flight (the bounded pool).
    pool: ArrayVec<Revoke, POOL>,
    /// Pinned mode: frames to revoke and give back after `end`.
    deferred: ArrayVec<(usize, usize), 16>,
}

/// An exporter of an address space's pages to remote importers that map them by
/// message. A map request is refused while an invalidation of the address space is in
/// flight, and one that raced an invalidation is refused at the end; `start` revokes
/// every remote mapping of the range with messages from a fixed pool.
///
/// In pinned mode the exporter takes its own reference on each exported page and
/// revokes after `end` — allowed, because the page cannot be freed under it (C-10).
pub struct Exporter<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    twin: Option<Twin>,
    pinned: bool,
    st: SpinLock<H::P, ExpState>,
    /// Stale remote accesses (must stay 0).
    pub violations: AtomicU32,
    /// Remote uses the second oracle found stale (must stay 0).
    pub stale: StaleUses<H::P>,
    /// Map requests refused because of an invalidation.
    pub refusals: AtomicU32,
    /// Revoke messages sent.
    pub messages: AtomicU32,
    /// The map request's race window.
    pub window: Window,
    /// Whether a map request waits in its window (while it is open) until an
    /// invalidation of its page has ended, instead of yielding once. C-09 sets it only
    /// in a phase of its own, with no other secondary MMU running: the exporter's twin
    /// is wrong only about a grant that lands after `end`'s revocations, and the wait
    /// makes every request that raced an invalidation land there.
    pub widen: AtomicBool,
}

impl<'h, H: Harness> Exporter<'h, H> {
    /// An exporter of `mm`'s pages; `pinned` selects the flush-after-end form.
    pub fn new(h: &'h H, mm: Mm, pinned: bool, twin: Option<Twin>) -> Self {
        Exporter {
            h,
            mm,
            twin,
            pinned,
            st: SpinLock::new(ExpState::default()),
            violations: AtomicU32::new(0),
            stale: StaleUses::default(),
            refusals: AtomicU32::new(0),
            messages: AtomicU32::new(0),
            window: Window::default(),
            widen: AtomicBool::new(false),
        }
    }

    fn ignores(&self) -> bool {
        self.twin == Some(Twin::ExporterIgnoresInvalidation)
    }

    /// A map request from remote node `importer` for `addr`.
    pub fn request_map(&self, importer: usize, addr: usize) -> Result<Frame, FaultError> {
        let importer = importer % IMPORTERS;
        let seq = {
            let st = self.st.lock();
            if st.active > 0 && !self.ignores() {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return Err(FaultError::Refused);
            }
            st.seq
        };
        let mark = self.window.mark::<H>(addr, true);
        let pte = primary_entry(self.h, self.mm, addr, false)?;
        if self.pinned && !self.h.get_frame(pte.frame) {
            return Err(FaultError::Refused);
        }
        // The message travels to the remote node; the entry may be cleared meanwhile.
        self.window
            .wait(self.h, addr, mark, self.widen.load(Ordering::Relaxed));
        let mut st = self.st.lock();
        if !self.ignores() && (st.seq != seq || st.active > 0) {
            drop(st);
            if self.pinned {
                self.h.put_frame(pte.frame);
            }
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(FaultError::Refused);
        }
        if let Err(e) = st.importers[importer].insert(addr, pte) {
            drop(st);
            if self.pinned {
                self.h.put_frame(pte.frame);
            }
            return Err(e);
        }
        Ok(pte.frame)
    }

    /// A remote node's (read) access through its imported mapping.
    pub fn remote_access(&self, importer: usize, addr: usize) -> Option<Frame> {
        let mut st = self.st.lock();
        use_tlb(
            self.h,
            self.mm,
            &mut st.importers[importer % IMPORTERS],
            addr,
            false,
            &self.violations,
            &self.stale,
        )
    }

    /// Revoke every remote mapping of `[start, end)`, through the bounded pool: when it
    /// is full the queued messages are delivered (and acknowledged) first.
    fn revoke(&self, st: &mut ExpState, start: usize, end: usize) {
        let mut victims: ArrayVec<Revoke, 32> = ArrayVec::new();
        for (i, imp) in st.importers.iter().enumerate() {
            for x in imp.e.iter().filter(|x| x.0 >= start && x.0 < end) {
                if victims
                    .try_push(Revoke {
                        importer: i,
                        addr: x.0,
                    })
                    .is_err()
                {
                    break;
                }
            }
        }
        for m in victims {
            if st.pool.is_full() {
                self.deliver(st);
            }
            st.pool.push(m);
            self.messages.fetch_add(1, Ordering::Relaxed);
        }
        self.deliver(st);
    }

    /// The remote nodes process the queued messages and acknowledge them.
    fn deliver(&self, st: &mut ExpState) {
        while let Some(m) = st.pool.pop() {
            let pinned = self.pinned;
            let h = self.h;
            st.importers[m.importer].zap(m.addr, m.addr + 1, |_, pte| {
                if pinned {
                    h.put_frame(pte.frame);
                }
            });
        }
    }
}

impl<H: Harness> SubscriberOps for Exporter<'_, H> {
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.window.started::<H>(r);
        let mut st = self.st.lock();
        st.active += 1;
        st.seq = st.seq.wrapping_add(1);
        if self.ignores() {
            // The broken twin only revokes at `end` and lets maps through meanwhile.
            return Ok(());
        }
        if self.pinned && st.deferred.try_push((r.start, r.end)).is_ok() {
            return Ok(());
        }
        self.revoke(&mut st, r.start, r.end);
        Ok(())
    }

    fn invalidate_range_end(&self, r: &Range) {
        let mut st = self.st.lock();
        st.active = st.active.saturating_sub(1);
        st.seq = st.seq.wrapping_add(1);
        if self.ignores() {
            self.revoke(&mut st, r.start, r.end);
        }
        if let Some(i) = st.deferred.iter().position(|d| *d == (r.start, r.end)) {
            st.deferred.swap_remove(i);
            // Flushing after `end` is safe: our references keep the pages (C-10).
            self.revoke(&mut st, r.start, r.end);
        }
        drop(st);
        // Counted once this end's revocations are done: a map request waiting in its
        // window for the end then lands after them (counted first, it could land
        // before them and be revoked with the rest).
        self.window.ended::<H>(r);
    }

    fn release(&self) {
        let mut st = self.st.lock();
        self.revoke(&mut st, 0, usize::MAX);
    }
}

// -------------------------------------------------------------------------------------
// HMM-like interval mirror, one pass and two pass.
// -------------------------------------------------------------------------------------

/// An HMM-like mirror of one interval (a device page table), using the sequence
/// protocol: `invalidate` takes the mirror's lock, calls `set_seq`, zaps the overlap;
/// faults retry when `read_retry` says an invalidation ran since `read_begin`.
pub struct Mirror<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    twin: Option<Twin>,
    /// The device page table, under the mirror's lock (the one `read_retry` is checked
    /// under).
    pub pt: SpinLock<H::P, Tlb<64>>,
    /// Stale accesses (must stay 0).
    pub violations: AtomicU32,
    /// Uses the second oracle found stale (must stay 0).
    pub stale: StaleUses<H::P>,
    /// `invalidate` calls.
    pub invalidations: AtomicU32,
    /// The last event seen.
    pub last_event: SpinLock<H::P, Option<Range>>,
    /// The first `Release` invalidation seen.
    pub release_seen: SpinLock<H::P, Option<Range>>,
    /// Fault retries.
    pub retries: AtomicU32,
    /// Set when the test frees the mirror: a callback after that is a violation.
    pub gone: AtomicBool,
    /// Translations installed by the fault path.
    pub faults: AtomicU32,
    /// The fault path's race window.
    pub window: Window,
}

impl<'h, H: Harness> Mirror<'h, H> {
    /// A mirror of part of `mm`.
    pub fn new(h: &'h H, mm: Mm, twin: Option<Twin>) -> Self {
        Mirror {
            h,
            mm,
            twin,
            pt: SpinLock::new(Tlb::new()),
            violations: AtomicU32::new(0),
            stale: StaleUses::default(),
            invalidations: AtomicU32::new(0),
            last_event: SpinLock::new(None),
            release_seen: SpinLock::new(None),
            retries: AtomicU32::new(0),
            gone: AtomicBool::new(false),
            faults: AtomicU32::new(0),
            window: Window::default(),
        }
    }

    /// Fault `addr` into the device page table (for reading).
    pub fn fault(&self, iv: &dyn Seq, addr: usize) -> Result<Pte, FaultError> {
        self.fault_for(iv, addr, false)
    }

    /// Fault `addr` into the device page table, for writing if `write`.
    pub fn fault_for(&self, iv: &dyn Seq, addr: usize, write: bool) -> Result<Pte, FaultError> {
        let ignore = self.twin == Some(Twin::MirrorIgnoresSeq);
        let mut first = true;
        for _ in 0..MAX_RETRIES {
            let seq = iv
                .read_begin()
                .map_err(|_| FaultError::Primary(HarnessError::Failed("read_begin")))?;
            let mark = self.window.mark::<H>(addr, false);
            let pte = primary_entry(self.h, self.mm, addr, write)?;
            self.window
                .wait(self.h, addr, mark, core::mem::take(&mut first));
            let mut pt = self.pt.lock();
            if !ignore && iv.read_retry(seq) {
                drop(pt);
                self.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            pt.insert(addr, pte)?;
            self.faults.fetch_add(1, Ordering::Relaxed);
            return Ok(pte);
        }
        Err(FaultError::Livelock)
    }

    /// A device read.
    pub fn access(&self, addr: usize) -> Option<Frame> {
        self.access_for(addr, false)
    }

    /// A device access, for writing if `write` (a read-only entry is then a miss).
    pub fn access_for(&self, addr: usize, write: bool) -> Option<Frame> {
        use_tlb(
            self.h,
            self.mm,
            &mut self.pt.lock(),
            addr,
            write,
            &self.violations,
            &self.stale,
        )
    }

    /// Read, faulting on a miss.
    pub fn run(&self, iv: &dyn Seq, addr: usize) -> Result<Frame, FaultError> {
        self.run_for(iv, addr, false)
    }

    /// Access (for writing if `write`), faulting on a miss.
    pub fn run_for(&self, iv: &dyn Seq, addr: usize, write: bool) -> Result<Frame, FaultError> {
        match self.access_for(addr, write) {
            Some(f) => Ok(f),
            None => self.fault_for(iv, addr, write).map(|p| p.frame),
        }
    }
}

impl<H: Harness> IvOps for Mirror<'_, H> {
    fn invalidate(&self, iv: &dyn Seq, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        if self.gone.load(Ordering::Relaxed) {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        *self.last_event.lock() = Some(*r);
        if r.event == Event::Release {
            self.release_seen.lock().get_or_insert(*r);
        }
        let mut pt = self.pt.lock();
        let late = self.twin == Some(Twin::MirrorSetsSeqAfterUnlock);
        if !late {
            iv.set_seq(cur_seq);
        }
        check_live(self.h, &mut pt, (r.start, r.end), &self.violations);
        pt.zap(r.start, r.end, |_, _| {});
        drop(pt);
        // A fault waiting in its window goes on now: after the zap, when a correct
        // mirror has set the sequence (it retries) and the late twin has not (it
        // installs the entry it read, which the primary MMU is about to change).
        self.window.started::<H>(r);
        if late {
            // The broken twin: a fault that read the old entry and takes the lock
            // right after the zap above still sees `read_retry` false, installs it,
            // and keeps it once the primary MMU changed the entry. (It lets such a
            // fault run first where it may sleep.)
            if r.blockable {
                self.h.yield_now();
            }
            iv.set_seq(cur_seq);
        }
        Ok(())
    }
}

/// A device page table and the invalidations queued for it.
type DevicePt = (Tlb<64>, ArrayVec<(usize, usize), 8>);

/// A two-pass mirror (several devices invalidated in parallel): `invalidate_start`
/// records the sequence and queues the hardware invalidation, `invalidate_finish` waits
/// for it. The order of passes is stamped from a clock shared by all mirrors.
pub struct TwoPass<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    twin: Option<Twin>,
    clock: &'h AtomicU32,
    pt: SpinLock<H::P, DevicePt>,
    /// Stale accesses (must stay 0).
    pub violations: AtomicU32,
    /// Uses the second oracle found stale (must stay 0).
    pub stale: StaleUses<H::P>,
    /// Clock value at the last `invalidate_start`.
    pub started_at: AtomicU32,
    /// Clock value at the last `invalidate_finish`.
    pub finished_at: AtomicU32,
    /// Fault retries.
    pub retries: AtomicU32,
}

impl<'h, H: Harness> TwoPass<'h, H> {
    /// A two-pass mirror of part of `mm`, stamping passes from `clock`.
    pub fn new(h: &'h H, mm: Mm, clock: &'h AtomicU32, twin: Option<Twin>) -> Self {
        TwoPass {
            h,
            mm,
            twin,
            clock,
            pt: SpinLock::new((Tlb::new(), ArrayVec::new())),
            violations: AtomicU32::new(0),
            stale: StaleUses::default(),
            started_at: AtomicU32::new(0),
            finished_at: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        }
    }

    fn flush_queued(pt: &mut DevicePt) {
        while let Some((s, e)) = pt.1.pop() {
            pt.0.zap(s, e, |_, _| {});
        }
    }

    /// Fault `addr` into the device page table.
    pub fn fault(&self, iv: &dyn Seq, addr: usize) -> Result<Pte, FaultError> {
        for _ in 0..MAX_RETRIES {
            let seq = iv
                .read_begin()
                .map_err(|_| FaultError::Primary(HarnessError::Failed("read_begin")))?;
            let pte = primary_entry(self.h, self.mm, addr, false)?;
            self.h.yield_now();
            let mut pt = self.pt.lock();
            if self.twin == Some(Twin::TwoPassSkipsFinish) {
                // The broken twin completes queued invalidations lazily.
                Self::flush_queued(&mut pt);
            }
            if iv.read_retry(seq) {
                drop(pt);
                self.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            pt.0.insert(addr, pte)?;
            return Ok(pte);
        }
        Err(FaultError::Livelock)
    }

    /// A device read.
    pub fn access(&self, addr: usize) -> Option<Frame> {
        use_tlb(
            self.h,
            self.mm,
            &mut self.pt.lock().0,
            addr,
            false,
            &self.violations,
            &self.stale,
        )
    }
}

impl<H: Harness> IvOps for TwoPass<'_, H> {
    const TWO_PASS: bool = true;

    fn invalidate(&self, iv: &dyn Seq, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.invalidate_start(iv, r, cur_seq)?;
        self.invalidate_finish(iv, r, cur_seq);
        Ok(())
    }

    fn invalidate_start(&self, iv: &dyn Seq, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.started_at.store(
            self.clock.fetch_add(1, Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        let mut pt = self.pt.lock();
        iv.set_seq(cur_seq);
        check_live(self.h, &mut pt.0, (r.start, r.end), &self.violations);
        if pt.1.try_push((r.start, r.end)).is_err() {
            pt.0.zap(r.start, r.end, |_, _| {});
        }
        Ok(())
    }

    fn invalidate_finish(&self, _iv: &dyn Seq, _r: &Range, _cur_seq: u64) {
        self.finished_at.store(
            self.clock.fetch_add(1, Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        if self.twin != Some(Twin::TwoPassSkipsFinish) {
            Self::flush_queued(&mut self.pt.lock());
        }
    }
}

// -------------------------------------------------------------------------------------
// Recorders for the lifetime and pairing cases.
// -------------------------------------------------------------------------------------

/// What a [`Recorder`] saw, in order (bounded; the count goes on past the bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `invalidate_range_start`.
    Start(Range),
    /// `invalidate_range_end`.
    End(Range),
    /// `release`.
    Release,
    /// `invalidate_secondary_tlbs`.
    Tlbs(usize, usize),
}

/// The log of a [`Recorder`].
pub struct RecLog {
    /// The first events.
    pub seen: ArrayVec<Seen, 64>,
    /// Starts without their end yet.
    pub open: ArrayVec<Range, 16>,
    /// Contract breaches observed (end without start, mismatched end, …).
    pub breaches: u32,
    /// Total callbacks.
    pub total: u32,
}

/// A subscriber that records every callback and checks pairing on the fly; optionally
/// refuses non-blockable starts. `gone` is set by the test when the subscriber's memory
/// is "freed": a callback after that is a breach (C-03).
pub struct Recorder<P: notifier_core::Platform> {
    /// The log.
    pub log: SpinLock<P, RecLog>,
    /// Refuse non-blockable starts.
    pub refuse_non_blocking: AtomicBool,
    /// Refuse every start (a buggy subscriber, for the core's report).
    pub refuse_always: AtomicBool,
    /// Set by the test once the subscriber is unregistered.
    pub gone: AtomicBool,
    /// Young answers for the ageing case.
    pub young: AtomicBool,
    /// Young calls received.
    pub young_calls: AtomicU32,
}

impl<P: notifier_core::Platform> Default for Recorder<P> {
    fn default() -> Self {
        Recorder {
            log: SpinLock::new(RecLog {
                seen: ArrayVec::new(),
                open: ArrayVec::new(),
                breaches: 0,
                total: 0,
            }),
            refuse_non_blocking: AtomicBool::new(false),
            refuse_always: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            young: AtomicBool::new(false),
            young_calls: AtomicU32::new(0),
        }
    }
}

impl<P: notifier_core::Platform> Recorder<P> {
    fn note(&self, s: Seen) {
        let mut l = self.log.lock();
        l.total += 1;
        if self.gone.load(Ordering::Relaxed) {
            l.breaches += 1;
        }
        let _ = l.seen.try_push(s);
    }

    /// Counts of (starts, ends, releases) in the bounded log.
    pub fn counts(&self) -> (usize, usize, usize) {
        let l = self.log.lock();
        let n = |f: fn(&Seen) -> bool| l.seen.iter().filter(|s| f(s)).count();
        (
            n(|s| matches!(s, Seen::Start(_))),
            n(|s| matches!(s, Seen::End(_))),
            n(|s| matches!(s, Seen::Release)),
        )
    }

    /// Breaches so far.
    pub fn breaches(&self) -> u32 {
        self.log.lock().breaches
    }

    /// Forget the log (keeps the breach count).
    pub fn clear(&self) {
        let mut l = self.log.lock();
        l.seen.clear();
    }
}

impl<P: notifier_core::Platform> SubscriberOps for Recorder<P> {
    fn release(&self) {
        self.note(Seen::Release);
    }

    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if self.refuse_always.load(Ordering::Relaxed)
            || (!r.blockable && self.refuse_non_blocking.load(Ordering::Relaxed))
        {
            return Err(WouldBlock);
        }
        self.note(Seen::Start(*r));
        let mut l = self.log.lock();
        if l.open.try_push(*r).is_err() {
            l.breaches += 1;
        }
        Ok(())
    }

    fn invalidate_range_end(&self, r: &Range) {
        self.note(Seen::End(*r));
        let mut l = self.log.lock();
        // C-07: the end carries the range and event of a start this subscriber saw.
        match l.open.iter().position(|o| o == r) {
            Some(i) => {
                l.open.swap_remove(i);
            }
            None => l.breaches += 1,
        }
    }

    fn invalidate_secondary_tlbs(&self, s: usize, e: usize) {
        self.note(Seen::Tlbs(s, e));
    }

    fn clear_flush_young(&self, _s: usize, _e: usize) -> bool {
        self.young_calls.fetch_add(1, Ordering::Relaxed);
        self.young.load(Ordering::Relaxed)
    }

    fn clear_young(&self, _s: usize, _e: usize) -> bool {
        self.young_calls.fetch_add(1, Ordering::Relaxed);
        self.young.load(Ordering::Relaxed)
    }

    fn test_young(&self, _a: usize) -> bool {
        self.young_calls.fetch_add(1, Ordering::Relaxed);
        self.young.load(Ordering::Relaxed)
    }
}

// -------------------------------------------------------------------------------------
// The seed's other design: a page-keyed exporter.
// -------------------------------------------------------------------------------------

/// Pages a [`PageExporter`] exports at most.
pub const EXPORT_SLOTS: usize = 8;

#[derive(Default)]
struct PxState {
    /// Exported pages: the address they were exported from, and the frame.
    slots: [Option<(usize, Frame)>; EXPORT_SLOTS],
    /// Remote mappings per importer: slot -> frame.
    importers: [Tlb<EXPORT_SLOTS>; IMPORTERS],
}

/// An XPMEM-like exporter keyed by *physical page*: it exports frames (taking its own
/// reference on each) through the platform's [`ExportRegistry`], importers map them by
/// slot, and the platform's free path makes it revoke (`before_free`), mapped in the
/// primary page tables or not.
///
/// Its broken twin ([`Twin::ExportHookedInRmap`]) is the design first proposed in 2008:
/// it hears only from the reverse-map walk (here: the address-space invalidations, which
/// come only while a primary entry maps the page), keeps no state the free path can see,
/// and grants a map request that arrives after the primary entry was cleared.
///
/// [`ExportRegistry`]: notifier_core::export::ExportRegistry
pub struct PageExporter<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    twin: Option<Twin>,
    pages: [notifier_core::export::ExportedPage<'h, H::P>; EXPORT_SLOTS],
    st: SpinLock<H::P, PxState>,
    /// Stale remote accesses (must stay 0).
    pub violations: AtomicU32,
    /// Pages revoked by the platform's free path (or, in the twin, by invalidations).
    pub revoked: AtomicU32,
    /// Map requests refused because the page was dying.
    pub refusals: AtomicU32,
    /// Set by the test after `unexport` returned: a revoke after that is a breach.
    pub gone: AtomicBool,
}

impl<'h, H: Harness> PageExporter<'h, H> {
    /// An exporter of `mm`'s pages.
    pub fn new(h: &'h H, mm: Mm, twin: Option<Twin>) -> Self {
        PageExporter {
            h,
            mm,
            twin,
            pages: core::array::from_fn(|_| notifier_core::export::ExportedPage::new()),
            st: SpinLock::new(PxState::default()),
            violations: AtomicU32::new(0),
            revoked: AtomicU32::new(0),
            refusals: AtomicU32::new(0),
            gone: AtomicBool::new(false),
        }
    }

    fn rmap_hooked(&self) -> bool {
        self.twin == Some(Twin::ExportHookedInRmap)
    }

    /// The pinned page node of `slot` (the exporter is pinned inside its `Exporter`).
    fn page(&self, slot: usize) -> core::pin::Pin<&notifier_core::export::ExportedPage<'h, H::P>> {
        // SAFETY: `self` lives pinned inside an `Exporter` (the only way the suite uses
        // it), so its fields never move.
        unsafe { core::pin::Pin::new_unchecked(&self.pages[slot % EXPORT_SLOTS]) }
    }

    /// Export the page at `addr` as `slot`: fault it in, take the exporter's own
    /// reference, register the frame in the registry (the twin skips the registry).
    pub fn export(
        this: core::pin::Pin<&notifier_core::export::Exporter<'h, Self, H::P>>,
        slot: usize,
        addr: usize,
    ) -> Result<Frame, FaultError> {
        let me = this.ops();
        let slot = slot % EXPORT_SLOTS;
        let pte = primary_entry(me.h, me.mm, addr, false)?;
        if !me.rmap_hooked() {
            if !me.h.get_frame(pte.frame) {
                return Err(FaultError::Refused);
            }
            let mut r = this.export(me.page(slot), pte.frame.pfn);
            if r.is_err() && me.st.lock().slots[slot].is_none() {
                // Revoked by the free path earlier: the node is still in the table
                // (dying); take it out (a barrier) and export the new frame.
                let _ = this.unexport(me.page(slot));
                r = this.export(me.page(slot), pte.frame.pfn);
            }
            if r.is_err() {
                me.h.put_frame(pte.frame);
                return Err(FaultError::Refused);
            }
        }
        me.st.lock().slots[slot] = Some((addr, pte.frame));
        Ok(pte.frame)
    }

    /// Stop exporting `slot` (a barrier: no `revoke` of it runs after this).
    pub fn unexport(
        this: core::pin::Pin<&notifier_core::export::Exporter<'h, Self, H::P>>,
        slot: usize,
    ) -> bool {
        let me = this.ops();
        let slot = slot % EXPORT_SLOTS;
        if me.rmap_hooked() {
            return me.st.lock().slots[slot].take().is_some();
        }
        if this.unexport(me.page(slot)).is_err() {
            return false;
        }
        // Revoke what importers still map and give the reference back.
        let mut st = me.st.lock();
        if let Some((_, frame)) = st.slots[slot].take() {
            me.drop_remote(&mut st, slot);
            drop(st);
            me.h.put_frame(frame);
        }
        true
    }

    fn drop_remote(&self, st: &mut PxState, slot: usize) {
        for imp in st.importers.iter_mut() {
            imp.zap(slot, slot + 1, |_, _| {
                let _ = self.pages[slot].unmap_remote();
            });
        }
    }

    /// A remote node asks to map `slot`.
    pub fn request_map(&self, importer: usize, slot: usize) -> Result<Frame, FaultError> {
        let slot = slot % EXPORT_SLOTS;
        let mut st = self.st.lock();
        let Some((_, frame)) = st.slots[slot] else {
            return Err(FaultError::Refused);
        };
        if !self.rmap_hooked() && self.pages[slot].map_remote().is_err() {
            // The page is dying: refused (the window of the 2008 thread, closed).
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(FaultError::Refused);
        }
        let pte = Pte {
            frame,
            writable: false,
        };
        if st.importers[importer % IMPORTERS]
            .insert(slot, pte)
            .is_err()
        {
            if !self.rmap_hooked() {
                let _ = self.pages[slot].unmap_remote();
            }
            return Err(FaultError::Full);
        }
        Ok(frame)
    }

    /// A remote access through an imported mapping.
    pub fn remote_access(&self, importer: usize, slot: usize) -> Option<Frame> {
        let mut st = self.st.lock();
        access_tlb(
            self.h,
            &mut st.importers[importer % IMPORTERS],
            slot % EXPORT_SLOTS,
            &self.violations,
        )
    }
}

impl<H: Harness> notifier_core::export::ExportOps<H::P> for PageExporter<'_, H> {
    fn revoke(&self, page: &notifier_core::export::ExportedPage<'_, H::P>, _pfn: u64) {
        if self.gone.load(Ordering::Relaxed) {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        let Some(slot) = self.pages.iter().position(|p| core::ptr::addr_eq(p, page)) else {
            return;
        };
        let mut st = self.st.lock();
        self.drop_remote(&mut st, slot);
        let frame = st.slots[slot].take();
        drop(st);
        if let Some((_, f)) = frame {
            self.h.put_frame(f);
        }
        self.revoked.fetch_add(1, Ordering::Relaxed);
    }
}

/// The rmap-hooked twin's hook: a list subscriber that forwards the address-space
/// invalidations (which come only while a primary entry maps a page) to the exporter.
pub struct RmapHook<'a, 'h, H: Harness>(pub &'a PageExporter<'h, H>);

impl<H: Harness> SubscriberOps for RmapHook<'_, '_, H> {
    /// The twin hears about a page while a primary entry maps it and drops the remote
    /// mappings then — but keeps the slot, so a later request is granted from it.
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        let x = self.0;
        let mut st = x.st.lock();
        for slot in 0..EXPORT_SLOTS {
            if let Some((a, _)) = st.slots[slot] {
                if a >= r.start && a < r.end {
                    for imp in st.importers.iter_mut() {
                        imp.zap(slot, slot + 1, |_, _| {});
                    }
                    x.revoked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}
