//! Recording both sides of a run, for the explanation of a stale access.
//!
//! The primary side comes from the machine's event hook ([`SimEvent`]). The secondary
//! side is recorded here, around the consumers rather than inside them: each consumer
//! is built on [`Traced`], a harness that forwards every call to the simulator and
//! records the primary entry a secondary MMU's fault path read (`lookup`/`touch` on a
//! consumer's task), with the sequence it had seen; [`TracedSeq`] records the interval
//! sequence a mirror's `read_begin` returned and its `read_retry` check; the tasks of
//! `run` record each install when a fault path returns a translation, and each stale
//! use when the oracle catches one. Everything goes into one [`Log`], numbered in one
//! order (the `time` of the report).

use std::cell::Cell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use backend_sim::harness::{Cap, Frame, Harness, HarnessError, Mm, Pte};
use backend_sim::{SimEvent, SimHarness, SimPlatform};
use notifier_conformance::subscribe::{IvOps, Seq};
use notifier_core::export::ExportRegistry;
use notifier_core::{AddressSpace, Error, Range, SubscriberOps, WouldBlock};

/// The kinds of secondary MMU in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The KVM-like shadow MMU (one table, faulted by several vCPUs).
    Kvm,
    /// The device TLB flushed with the CPU TLB.
    DeviceTlb,
    /// A remote importer of the exporter.
    Importer,
    /// The one-pass interval mirror.
    Mirror,
    /// A two-pass interval mirror.
    TwoPass,
}

/// Which secondary MMU did something: its kind, which one of that kind (importer or
/// two-pass device), and for the guest the vCPU that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    /// The kind.
    pub kind: Kind,
    /// Importer or two-pass device number (0 otherwise).
    pub unit: u8,
    /// The guest's vCPU, for the KVM-like shadow MMU.
    pub vcpu: Option<u8>,
}

impl Who {
    /// A consumer without units.
    pub const fn of(kind: Kind) -> Who {
        Who {
            kind,
            unit: 0,
            vcpu: None,
        }
    }

    /// The same translation cache (vCPUs of one guest share its shadow table).
    pub fn same_cache(self, o: Who) -> bool {
        self.kind == o.kind && self.unit == o.unit
    }

    /// The consumer's name in the report (`kvm`, `importer 2`, …): the lane of the
    /// timeline.
    pub fn consumer(self) -> String {
        match self.kind {
            Kind::Kvm => "kvm".into(),
            Kind::DeviceTlb => "device-tlb".into(),
            Kind::Importer => format!("importer {}", self.unit),
            Kind::Mirror => "mirror".into(),
            Kind::TwoPass => format!("two-pass device {}", self.unit),
        }
    }

    /// The name with the vCPU, for the text.
    pub fn label(self) -> String {
        match self.vcpu {
            Some(v) => format!("{} vCPU {v}", self.consumer()),
            None => self.consumer(),
        }
    }

    /// `n` invalidations in flight, as this consumer calls it.
    pub fn flight_name(self, n: u64) -> String {
        match self.kind {
            Kind::Kvm => format!("mmu_invalidate_in_progress {n}"),
            _ => format!("{n} invalidation(s) in flight"),
        }
    }

    /// What the sequence this consumer checks is called.
    pub fn seq_name(self) -> &'static str {
        match self.kind {
            Kind::Kvm => "mmu_invalidate_seq",
            Kind::DeviceTlb => "flush count",
            Kind::Importer => "exporter sequence",
            Kind::Mirror | Kind::TwoPass => "interval sequence",
        }
    }
}

/// What a secondary MMU's fault path had seen of the invalidations when it read the
/// primary entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The sequence the consumer compares before it installs: the interval's
    /// `read_begin` for the mirrors; for the others the count their own counter follows
    /// (`invalidate_range_end` calls for the guest's `mmu_invalidate_seq`,
    /// `invalidate_secondary_tlbs` calls for the device, starts and ends for the
    /// exporter).
    pub seq: u64,
    /// Invalidations of the address space in flight (started, not ended).
    pub in_flight: u64,
}

/// One recorded event.
#[derive(Debug, Clone, Copy)]
pub enum What {
    /// The primary MMU (the machine's own event).
    Primary(SimEvent),
    /// A fault path read the primary entry of `addr` (`None`: not present).
    Read {
        /// Who.
        who: Who,
        /// The page.
        addr: usize,
        /// The frame the entry mapped.
        frame: Option<Frame>,
        /// The sequence it had seen.
        seen: Seen,
    },
    /// A mirror's fault path checked its sequence (`read_retry`).
    Check {
        /// Who.
        who: Who,
        /// The page.
        addr: usize,
        /// The sequence from `read_begin`.
        seq: u64,
        /// `read_retry` said an invalidation ran since: the fault retries.
        retry: bool,
    },
    /// A fault path installed a translation.
    Install {
        /// Who.
        who: Who,
        /// The page.
        addr: usize,
        /// The frame installed.
        frame: Frame,
        /// What it had seen at its read.
        at_read: Option<Seen>,
        /// The same count now (`None` for the mirrors: their check is `Check`).
        now: Option<Seen>,
        /// A `read_retry` check ran between the read and the install (mirrors).
        checked: bool,
    },
    /// A secondary MMU's callback was called (recorded as it is entered).
    Callback {
        /// Whose (for the exporter: every importer's, unit 0).
        who: Who,
        /// Which callback.
        cb: Cb,
        /// First byte of the range.
        start: usize,
        /// One past the last byte.
        end: usize,
        /// The interval's new sequence (interval callbacks).
        seq: Option<u64>,
    },
    /// A secondary MMU reached a frame through a translation the oracle says is stale.
    Stale {
        /// Who.
        who: Who,
        /// The page.
        addr: usize,
        /// The frame reached.
        frame: Frame,
    },
}

impl What {
    /// The secondary MMU that did it (`None` for the primary's events).
    pub fn who(&self) -> Option<Who> {
        match *self {
            What::Primary(_) => None,
            What::Read { who, .. }
            | What::Check { who, .. }
            | What::Install { who, .. }
            | What::Callback { who, .. }
            | What::Stale { who, .. } => Some(who),
        }
    }
}

/// A consumer's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cb {
    /// `invalidate_range_start`.
    Start,
    /// `invalidate_range_end`.
    End,
    /// `invalidate_secondary_tlbs`.
    Tlbs,
    /// `release`.
    Release,
    /// An interval's `invalidate` (one pass).
    Invalidate,
    /// An interval's `invalidate_start` (first of two passes).
    InvalidateStart,
    /// An interval's `invalidate_finish` (second pass).
    InvalidateFinish,
}

impl Cb {
    /// The callback's name.
    pub fn name(self) -> &'static str {
        match self {
            Cb::Start => "invalidate_range_start",
            Cb::End => "invalidate_range_end",
            Cb::Tlbs => "invalidate_secondary_tlbs",
            Cb::Release => "release",
            Cb::Invalidate => "invalidate",
            Cb::InvalidateStart => "invalidate_start",
            Cb::InvalidateFinish => "invalidate_finish",
        }
    }

    /// It opens an invalidation (the consumer must stop using the range from here).
    pub fn opens(self) -> bool {
        matches!(self, Cb::Start | Cb::Invalidate | Cb::InvalidateStart)
    }
}

/// An event with its place in the run.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Its number in the run's one order of recorded events.
    pub time: u64,
    /// Primary operations completed when it happened.
    pub op: u64,
    /// What happened.
    pub what: What,
}

/// Events kept (the newest): enough to reach back from a stale use to the read that
/// led to it in every scenario.
const KEEP: usize = 1 << 17;

thread_local! {
    /// The secondary MMU this task runs (`None` on the primary MMU's task).
    static ROLE: Cell<Option<Who>> = const { Cell::new(None) };
    /// What this task's fault path saw at its last read, whether it checked since, and
    /// the page it read.
    static LAST: Cell<(Option<Seen>, bool, usize)> = const { Cell::new((None, false, 0)) };
    /// The sequence a mirror's `read_begin` returned on this task.
    static BEGIN: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Mark the calling task as running `who` (or the primary MMU, `None`).
pub fn set_role(who: Option<Who>) {
    ROLE.with(|r| r.set(who));
}

/// The log of one run.
#[derive(Default)]
pub struct Log {
    ring: Mutex<VecDeque<Rec>>,
    next: AtomicU64,
    /// Primary operations completed (set by the primary task).
    pub op: AtomicU64,
    /// The address space watched (`usize::MAX` before it exists).
    mm: AtomicUsize,
    starts: AtomicU64,
    ends: AtomicU64,
    flushes: AtomicU64,
}

impl Log {
    /// An empty log, not yet watching an address space.
    pub fn new() -> Log {
        let l = Log::default();
        l.mm.store(usize::MAX, Ordering::Relaxed);
        l
    }

    /// Count the invalidations of `mm` from now on.
    pub fn watch(&self, mm: Mm) {
        self.mm.store(mm, Ordering::Relaxed);
    }

    /// The address space watched.
    pub fn mm(&self) -> Mm {
        self.mm.load(Ordering::Relaxed)
    }

    fn push(&self, what: What) {
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Numbered under the lock, so that the numbers are the order of the ring.
        let time = self.next.fetch_add(1, Ordering::Relaxed);
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(Rec {
            time,
            op: self.op.load(Ordering::Relaxed),
            what,
        });
    }

    /// The machine's event hook: record it, and count the watched address space's
    /// invalidations.
    pub fn primary(&self, e: &SimEvent) {
        let mm = self.mm();
        match *e {
            SimEvent::InvalidateStart { mm: m, .. } if m == mm => {
                self.starts.fetch_add(1, Ordering::Relaxed);
            }
            SimEvent::InvalidateEnd { mm: m, .. } if m == mm => {
                self.ends.fetch_add(1, Ordering::Relaxed);
            }
            SimEvent::SecondaryTlbs { mm: m, .. } if m == mm => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.push(What::Primary(*e));
    }

    /// What `who` compares now (`None` for the mirrors, whose sequence is the
    /// interval's).
    fn seen(&self, who: Who) -> Option<Seen> {
        let starts = self.starts.load(Ordering::Relaxed);
        let ends = self.ends.load(Ordering::Relaxed);
        let in_flight = starts.saturating_sub(ends);
        let seq = match who.kind {
            Kind::Kvm => ends,
            Kind::DeviceTlb => self.flushes.load(Ordering::Relaxed),
            Kind::Importer => starts + ends,
            Kind::Mirror | Kind::TwoPass => return None,
        };
        Some(Seen { seq, in_flight })
    }

    /// A fault path of the calling task read the primary entry of `addr`.
    fn read(&self, addr: usize, frame: Option<Frame>) {
        let Some(who) = ROLE.with(Cell::get) else {
            return;
        };
        let seen = match who.kind {
            Kind::Mirror | Kind::TwoPass => {
                BEGIN.with(Cell::get).map(|seq| Seen { seq, in_flight: 0 })
            }
            _ => self.seen(who),
        };
        let Some(seen) = seen else {
            return;
        };
        LAST.with(|l| l.set((Some(seen), false, addr)));
        self.push(What::Read {
            who,
            addr,
            frame,
            seen,
        });
    }

    /// The calling task's fault path installed `frame` at `addr`.
    pub fn install(&self, addr: usize, frame: Frame) {
        let Some(who) = ROLE.with(Cell::get) else {
            return;
        };
        let (at_read, checked, _) = LAST.with(Cell::get);
        self.push(What::Install {
            who,
            addr,
            frame,
            at_read,
            now: self.seen(who),
            checked,
        });
    }

    /// The calling task reached `frame` through a stale translation of `addr`.
    pub fn stale(&self, who: Who, addr: usize, frame: Frame) {
        self.push(What::Stale { who, addr, frame });
    }

    /// The events kept, oldest first.
    pub fn snapshot(&self) -> Vec<Rec> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().copied().collect()
    }
}

/// The simulator as the consumers see it: every call forwarded, the fault paths' reads
/// of primary entries recorded in the log.
pub struct Traced<'a> {
    /// The simulator.
    pub h: &'a SimHarness,
    /// Where the reads go.
    pub log: &'a Log,
}

impl Harness for Traced<'_> {
    type P = SimPlatform;

    fn name(&self) -> &'static str {
        self.h.name()
    }
    fn lacks(&self, cap: Cap) -> Option<&'static str> {
        self.h.lacks(cap)
    }
    fn create_mm(&self) -> Result<Mm, HarnessError> {
        self.h.create_mm()
    }
    fn address_space(&self, mm: Mm) -> &AddressSpace<SimPlatform> {
        self.h.address_space(mm)
    }
    fn teardown(&self, mm: Mm) {
        self.h.teardown(mm)
    }
    fn destroy_mm(&self, mm: Mm) {
        self.h.destroy_mm(mm)
    }
    fn map(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        self.h.map(mm, addr, len)
    }
    fn touch(&self, mm: Mm, addr: usize, write: bool) -> Result<Pte, HarnessError> {
        let r = self.h.touch(mm, addr, write);
        if let Ok(p) = r {
            self.log.read(addr, Some(p.frame));
        }
        r
    }
    fn lookup(&self, mm: Mm, addr: usize) -> Option<Pte> {
        let r = self.h.lookup(mm, addr);
        self.log.read(addr, r.map(|p| p.frame));
        r
    }
    fn unmap(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        self.h.unmap(mm, addr, len)
    }
    fn protect(&self, mm: Mm, addr: usize, len: usize, writable: bool) -> Result<(), HarnessError> {
        self.h.protect(mm, addr, len, writable)
    }
    fn migrate(&self, mm: Mm, addr: usize) -> Result<Pte, HarnessError> {
        self.h.migrate(mm, addr)
    }
    fn fork(&self, mm: Mm) -> Result<Mm, HarnessError> {
        self.h.fork(mm)
    }
    fn reclaim(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError> {
        self.h.reclaim(mm, addr, len)
    }
    fn reap(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError> {
        self.h.reap(mm, addr, len)
    }
    fn get_frame(&self, frame: Frame) -> bool {
        self.h.get_frame(frame)
    }
    fn put_frame(&self, frame: Frame) {
        self.h.put_frame(frame)
    }
    fn frame_live(&self, frame: Frame) -> bool {
        self.h.frame_live(frame)
    }
    fn run_concurrently(&self, tasks: &[&(dyn Fn() + Sync)]) {
        self.h.run_concurrently(tasks)
    }
    fn yield_now(&self) {
        self.h.yield_now()
    }
    fn arena(&self) -> Option<(NonNull<u8>, usize)> {
        self.h.arena()
    }
    fn export_registry(&self) -> Option<&ExportRegistry<SimPlatform>> {
        self.h.export_registry()
    }
    fn bugs_reported(&self) -> usize {
        self.h.bugs_reported()
    }
    fn sleep_violations(&self) -> usize {
        self.h.sleep_violations()
    }
}

/// An interval as a mirror's fault path sees it: `read_begin` and `read_retry` are
/// recorded (the sequence it saw, the check it made).
pub struct TracedSeq<'a> {
    /// The interval.
    pub iv: &'a dyn Seq,
    /// Where the checks go.
    pub log: &'a Log,
}

impl Seq for TracedSeq<'_> {
    fn read_begin(&self) -> Result<u64, Error> {
        let r = self.iv.read_begin();
        BEGIN.with(|b| b.set(r.as_ref().ok().copied()));
        r
    }
    fn read_retry(&self, seq: u64) -> bool {
        let retry = self.iv.read_retry(seq);
        if let Some(who) = ROLE.with(Cell::get) {
            let (seen, _, addr) = LAST.with(Cell::get);
            LAST.with(|l| l.set((seen, true, addr)));
            self.log.push(What::Check {
                who,
                addr,
                seq,
                retry,
            });
        }
        retry
    }
    fn set_seq(&self, cur_seq: u64) {
        self.iv.set_seq(cur_seq)
    }
    fn is_inserted(&self) -> bool {
        self.iv.is_inserted()
    }
    fn start(&self) -> usize {
        self.iv.start()
    }
    fn last(&self) -> usize {
        self.iv.last()
    }
}

/// The secondary MMU the calling task runs, if any.
pub fn role() -> Option<Who> {
    ROLE.with(Cell::get)
}

/// A consumer whose callbacks are recorded as they are entered, then passed on: the
/// secondary side of an invalidation, at the moment it happens (the machine reports
/// `invalidate_range_start` only once every subscriber has returned).
pub struct Watched<'a, T> {
    inner: T,
    who: Who,
    log: &'a Log,
}

impl<'a, T> Watched<'a, T> {
    /// `inner`, recorded as `who`.
    pub fn new(inner: T, who: Who, log: &'a Log) -> Self {
        Watched { inner, who, log }
    }

    fn note(&self, cb: Cb, start: usize, end: usize, seq: Option<u64>) {
        self.log.push(What::Callback {
            who: self.who,
            cb,
            start,
            end,
            seq,
        });
    }
}

impl<T> std::ops::Deref for Watched<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: SubscriberOps> SubscriberOps for Watched<'_, T> {
    fn release(&self) {
        self.note(Cb::Release, 0, usize::MAX, None);
        self.inner.release()
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.note(Cb::Start, r.start, r.end, None);
        self.inner.invalidate_range_start(r)
    }
    fn invalidate_range_end(&self, r: &Range) {
        self.note(Cb::End, r.start, r.end, None);
        self.inner.invalidate_range_end(r)
    }
    fn invalidate_secondary_tlbs(&self, start: usize, end: usize) {
        self.note(Cb::Tlbs, start, end, None);
        self.inner.invalidate_secondary_tlbs(start, end)
    }
    fn clear_flush_young(&self, start: usize, end: usize) -> bool {
        self.inner.clear_flush_young(start, end)
    }
    fn clear_young(&self, start: usize, end: usize) -> bool {
        self.inner.clear_young(start, end)
    }
    fn test_young(&self, addr: usize) -> bool {
        self.inner.test_young(addr)
    }
}

impl<T: IvOps> IvOps for Watched<'_, T> {
    const TWO_PASS: bool = T::TWO_PASS;

    fn invalidate(&self, iv: &dyn Seq, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.note(Cb::Invalidate, r.start, r.end, Some(cur_seq));
        self.inner.invalidate(iv, r, cur_seq)
    }
    fn invalidate_start(&self, iv: &dyn Seq, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.note(Cb::InvalidateStart, r.start, r.end, Some(cur_seq));
        self.inner.invalidate_start(iv, r, cur_seq)
    }
    fn invalidate_finish(&self, iv: &dyn Seq, r: &Range, cur_seq: u64) {
        self.note(Cb::InvalidateFinish, r.start, r.end, Some(cur_seq));
        self.inner.invalidate_finish(iv, r, cur_seq)
    }
}
