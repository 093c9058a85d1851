//! The simulated machine: physical frames with reference counts and generations, a
//! reverse map, a swap area, per-address-space page tables and VMAs, and the primary
//! MMU operations that change them — each calling the core on the address space's
//! [`AddressSpace`] exactly where Linux does.
//!
//! # Locks
//!
//! Per address space, `mmap` (Linux: `mmap_lock` taken for writing) serialises the
//! operations that change mappings (unmap, protect, migrate, fork, reclaim, reap,
//! teardown) and is held across `invalidate_range_start`/`end`; `pt` (the page-table
//! lock) guards the entries and is held only for short sections that call no
//! subscriber except `invalidate_secondary_tlbs`, as in Linux. Faults (`touch`) take only
//! `pt`, so a secondary MMU faulting while an invalidation is in flight is never blocked
//! by it. Machine-wide, `frames` and `swap` are leaves. Order: `mmap` → `pt` →
//! `frames`/`swap`; no two `pt` locks are ever held at once except a parent's and its
//! child's during fork (the child is not yet visible to anybody).
//!
//! # Page lifetime (C-10)
//!
//! A page-table entry holds one reference on its frame. Every operation that removes
//! entries collects their frames and drops those references only after
//! [`Invalidation::end`] has returned; a frame is freed when its last reference goes,
//! so a secondary MMU that took its own reference ([`Machine::get_frame`]) may flush
//! after `end`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use notifier_core::export::ExportRegistry;
use notifier_core::{AddressSpace, Event, Invalidation, Platform, Range};

use crate::harness::{Frame, HarnessError, Mm, Pte};
use crate::platform::SimPlatform;
use crate::sched::{self, SimGuard, SimLock};

/// The page size of the simulated machine.
pub const PAGE_SIZE: usize = <SimPlatform as Platform>::PAGE_SIZE;

/// The event the primary MMU uses when a write fault breaks copy-on-write (Linux's
/// `wp_page_copy` uses `MMU_NOTIFY_CLEAR`).
pub const COW_BREAK_EVENT: Event = Event::Clear;
/// The event the primary MMU uses when reclaim unmaps an old page (Linux's
/// `try_to_unmap_one` uses `MMU_NOTIFY_CLEAR`).
pub const RECLAIM_EVENT: Event = Event::Clear;

/// Address spaces per chunk of the address-space table.
const MM_CHUNK: usize = 256;
/// Chunks of the address-space table (so at most `MM_CHUNK * MM_CHUNKS` address spaces
/// per machine).
const MM_CHUNKS: usize = 256;

/// How often an operation that raced a fault retries before giving up.
const RACE_RETRIES: usize = 64;

// --- Events and statistics ------------------------------------------------------------

/// Something the simulated machine did, reported to the event hook
/// ([`crate::SimHarness::set_event_hook`]) as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimEvent {
    /// The primary MMU called `invalidate_range_start`, and it succeeded.
    InvalidateStart {
        /// The address space.
        mm: Mm,
        /// The range, as passed to the core.
        range: Range,
    },
    /// The primary MMU ended an invalidation (`Invalidation::end` returned).
    InvalidateEnd {
        /// The address space.
        mm: Mm,
        /// The range.
        range: Range,
    },
    /// A non-blockable start was refused by a subscriber (C-08): nothing changed.
    Refused {
        /// The address space.
        mm: Mm,
        /// The range.
        range: Range,
    },
    /// `invalidate_secondary_tlbs` was called under the page-table lock.
    SecondaryTlbs {
        /// The address space.
        mm: Mm,
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// A frame was allocated.
    FrameAlloc(Frame),
    /// A frame's last reference went: it is free (and its generation is over).
    FrameFree(Frame),
    /// Reclaim asked whether a page is young.
    Aged {
        /// The address space.
        mm: Mm,
        /// The page.
        addr: usize,
        /// The primary accessed bit was set.
        primary: bool,
        /// A subscriber said young (`clear_flush_young`).
        secondary: bool,
    },
    /// Reclaim evicted a page to swap.
    Reclaimed {
        /// The address space.
        mm: Mm,
        /// The page.
        addr: usize,
        /// The frame it was mapped to.
        frame: Frame,
    },
    /// The address space was torn down (`release` has returned).
    Released {
        /// The address space.
        mm: Mm,
    },
}

/// Counters of what the machine did since it was created (see [`crate::SimHarness::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Successful `invalidate_range_start` calls by event, indexed by
    /// [`event_index`] (`Unmap`, `Clear`, `ProtectionVma`, `ProtectionPage`, `SoftDirty`,
    /// `Release`, `Migrate`, `Exclusive`).
    pub invalidations: [u64; 8],
    /// Non-blockable starts refused by a subscriber.
    pub refused: u64,
    /// `invalidate_secondary_tlbs` calls.
    pub secondary_tlb_flushes: u64,
    /// Primary faults handled.
    pub faults: u64,
    /// Frames allocated.
    pub frames_allocated: u64,
    /// Frames freed.
    pub frames_freed: u64,
    /// `put_frame` calls on a frame that held no such reference (ignored).
    pub bad_puts: u64,
    /// Pages evicted by reclaim.
    pub pages_reclaimed: u64,
    /// Pages brought back from swap by a fault.
    pub pages_swapped_in: u64,
    /// Pages reclaim found young by their primary accessed bit.
    pub young_primary: u64,
    /// Pages reclaim found young because a subscriber said so.
    pub young_secondary: u64,
    /// Copy-on-write breaks (a copy was made).
    pub cow_breaks: u64,
    /// Write faults on copy-on-write pages that reused the page (sole owner).
    pub cow_reuses: u64,
    /// Pages migrated.
    pub migrations: u64,
    /// Forks.
    pub forks: u64,
    /// Pages unmapped by `reap`.
    pub reaped: u64,
    /// Address spaces torn down.
    pub teardowns: u64,
    /// Exports revoked by the free path (`ExportRegistry::before_free`).
    pub export_revocations: u64,
    /// Frames kept allocated because an exporter still counted a remote mapping after
    /// its revocation (an exporter's bug: the page must not be freed).
    pub frames_held_back: u64,
    /// Calls into the primary MMU from a callback it ran under the same page-table
    /// lock (refused with an error).
    pub reentrant_calls: u64,
    /// Uses of a translation checked by the second oracle of C-09
    /// ([`crate::SimHarness`]'s `check_translation`).
    pub translation_checks: u64,
    /// Of those, the stale ones (another frame, no entry, or a write through a
    /// read-only or copy-on-write entry).
    pub stale_translations: u64,
}

impl SimStats {
    /// Successful starts with event `e`.
    pub const fn invalidations_of(&self, e: Event) -> u64 {
        self.invalidations[event_index(e)]
    }

    /// Successful starts of every event.
    pub fn total_invalidations(&self) -> u64 {
        self.invalidations.iter().sum()
    }
}

/// The index of `e` in [`SimStats::invalidations`].
pub const fn event_index(e: Event) -> usize {
    match e {
        Event::Unmap => 0,
        Event::Clear => 1,
        Event::ProtectionVma => 2,
        Event::ProtectionPage => 3,
        Event::SoftDirty => 4,
        Event::Release => 5,
        Event::Migrate => 6,
        Event::Exclusive => 7,
        // `Event` may grow (`#[non_exhaustive]`); the simulator makes none other.
        _ => 7,
    }
}

#[derive(Debug, Default)]
struct StatCounters {
    invalidations: [AtomicU64; 8],
    refused: AtomicU64,
    secondary_tlb_flushes: AtomicU64,
    faults: AtomicU64,
    frames_allocated: AtomicU64,
    frames_freed: AtomicU64,
    bad_puts: AtomicU64,
    pages_reclaimed: AtomicU64,
    pages_swapped_in: AtomicU64,
    young_primary: AtomicU64,
    young_secondary: AtomicU64,
    cow_breaks: AtomicU64,
    cow_reuses: AtomicU64,
    migrations: AtomicU64,
    forks: AtomicU64,
    reaped: AtomicU64,
    teardowns: AtomicU64,
    export_revocations: AtomicU64,
    frames_held_back: AtomicU64,
    reentrant_calls: AtomicU64,
    translation_checks: AtomicU64,
    stale_translations: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl StatCounters {
    fn snapshot(&self) -> SimStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            invalidations: core::array::from_fn(|i| r(&self.invalidations[i])),
            refused: r(&self.refused),
            secondary_tlb_flushes: r(&self.secondary_tlb_flushes),
            faults: r(&self.faults),
            frames_allocated: r(&self.frames_allocated),
            frames_freed: r(&self.frames_freed),
            bad_puts: r(&self.bad_puts),
            pages_reclaimed: r(&self.pages_reclaimed),
            pages_swapped_in: r(&self.pages_swapped_in),
            young_primary: r(&self.young_primary),
            young_secondary: r(&self.young_secondary),
            cow_breaks: r(&self.cow_breaks),
            cow_reuses: r(&self.cow_reuses),
            migrations: r(&self.migrations),
            forks: r(&self.forks),
            reaped: r(&self.reaped),
            teardowns: r(&self.teardowns),
            export_revocations: r(&self.export_revocations),
            frames_held_back: r(&self.frames_held_back),
            reentrant_calls: r(&self.reentrant_calls),
            translation_checks: r(&self.translation_checks),
            stale_translations: r(&self.stale_translations),
        }
    }
}

/// The event hook type.
pub type EventHook = Arc<dyn Fn(&SimEvent) + Send + Sync>;

// --- Frames, reverse map and swap -------------------------------------------------------

#[derive(Debug, Default)]
struct FrameSlot {
    gen: u64,
    live: bool,
    refs: u32,
    /// The page's content (a counter that every write fault bumps).
    data: u64,
    /// Reverse map: every (address space, address) whose entry maps this frame.
    rmap: Vec<(Mm, usize)>,
}

/// The physical memory: a small pool, reused last-freed-first so that a stale
/// translation meets a reused frame at once.
#[derive(Debug)]
struct Frames {
    slots: Vec<FrameSlot>,
    free: Vec<u64>,
}

impl Frames {
    fn new(n: usize) -> Self {
        Frames {
            slots: (0..n).map(|_| FrameSlot::default()).collect(),
            free: (0..n as u64).rev().collect(),
        }
    }

    fn slot(&self, f: Frame) -> Option<&FrameSlot> {
        let s = self.slots.get(usize::try_from(f.pfn).ok()?)?;
        (s.live && s.gen == f.gen).then_some(s)
    }

    fn slot_mut(&mut self, f: Frame) -> Option<&mut FrameSlot> {
        let s = self.slots.get_mut(usize::try_from(f.pfn).ok()?)?;
        (s.live && s.gen == f.gen).then_some(s)
    }

    /// A fresh frame with one reference and content `data`.
    fn alloc(&mut self, data: u64) -> Option<Frame> {
        let pfn = self.free.pop()?;
        let s = &mut self.slots[pfn as usize];
        s.gen += 1;
        s.live = true;
        s.refs = 1;
        s.data = data;
        s.rmap.clear();
        Some(Frame { pfn, gen: s.gen })
    }

    /// Drop one reference; `Some(true)` if that freed the frame, `None` if `f` held
    /// none.
    fn put(&mut self, f: Frame) -> Option<bool> {
        let s = self.slot_mut(f)?;
        if s.refs == 0 {
            return None;
        }
        s.refs -= 1;
        if s.refs > 0 {
            return Some(false);
        }
        s.live = false;
        s.rmap.clear();
        self.free.push(f.pfn);
        Some(true)
    }

    fn rmap_add(&mut self, f: Frame, mm: Mm, addr: usize) {
        if let Some(s) = self.slot_mut(f) {
            s.rmap.push((mm, addr));
        }
    }

    fn rmap_remove(&mut self, f: Frame, mm: Mm, addr: usize) {
        if let Some(s) = self.slot_mut(f) {
            if let Some(i) = s.rmap.iter().position(|&x| x == (mm, addr)) {
                s.rmap.swap_remove(i);
            }
        }
    }
}

/// The swap area: slots holding a page's content.
#[derive(Debug)]
struct Swap {
    slots: Vec<Option<u64>>,
    free: Vec<usize>,
}

impl Swap {
    fn new(n: usize) -> Self {
        Swap {
            slots: vec![None; n],
            free: (0..n).rev().collect(),
        }
    }

    fn alloc(&mut self, data: u64) -> Option<usize> {
        let i = self.free.pop()?;
        self.slots[i] = Some(data);
        Some(i)
    }

    fn take(&mut self, i: usize) -> Option<u64> {
        let d = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        Some(d)
    }
}

// --- Page tables ----------------------------------------------------------------------

/// A present entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Present {
    frame: Frame,
    writable: bool,
    accessed: bool,
    dirty: bool,
    /// Shared copy-on-write: write-protected until a write fault breaks (or reuses) it.
    cow: bool,
}

impl Present {
    /// A new private entry for `frame`, not yet accessed.
    fn fresh(frame: Frame, writable: bool) -> Self {
        Present {
            frame,
            writable,
            accessed: false,
            dirty: false,
            cow: false,
        }
    }
}

/// A page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Present(Present),
    /// Swapped out to this swap slot.
    Swapped(usize),
}

/// The mappings (Linux: VMAs): non-overlapping `[start, end)` with their protection.
#[derive(Debug, Default, Clone)]
struct Vmas(BTreeMap<usize, (usize, bool)>);

impl Vmas {
    fn find(&self, addr: usize) -> Option<bool> {
        let (_, &(end, w)) = self.0.range(..=addr).next_back()?;
        (addr < end).then_some(w)
    }

    fn overlaps(&self, start: usize, end: usize) -> bool {
        if let Some((_, &(e, _))) = self.0.range(..start).next_back() {
            if e > start {
                return true;
            }
        }
        self.0.range(start..end).next().is_some()
    }

    /// Whether `[start, end)` is mapped without a hole.
    fn covers(&self, start: usize, end: usize) -> bool {
        let mut at = start;
        while at < end {
            let Some((_, &(e, _))) = self.0.range(..=at).next_back() else {
                return false;
            };
            if e <= at {
                return false;
            }
            at = e;
        }
        true
    }

    /// Split so that `at` is a boundary.
    fn split(&mut self, at: usize) {
        let Some((&s, &(e, w))) = self.0.range(..at).next_back() else {
            return;
        };
        if e > at {
            self.0.insert(s, (at, w));
            self.0.insert(at, (e, w));
        }
    }

    fn remove(&mut self, start: usize, end: usize) {
        self.split(start);
        self.split(end);
        let keys: Vec<usize> = self.0.range(start..end).map(|(&k, _)| k).collect();
        for k in keys {
            self.0.remove(&k);
        }
    }

    fn insert(&mut self, start: usize, end: usize, writable: bool) {
        self.remove(start, end);
        self.0.insert(start, (end, writable));
    }

    /// The mappings, as `(start, end, writable)`.
    fn iter(&self) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        self.0.iter().map(|(&s, &(e, w))| (s, e, w))
    }
}

#[derive(Debug, Default)]
struct Tables {
    vmas: Vmas,
    ptes: BTreeMap<usize, Entry>,
}

impl Tables {
    fn present(&self, addr: usize) -> Option<Present> {
        match self.ptes.get(&addr) {
            Some(Entry::Present(p)) => Some(*p),
            _ => None,
        }
    }
}

const LIVE: u8 = 0;
const TORN_DOWN: u8 = 1;
const DESTROYED: u8 = 2;

/// One simulated address space (Linux: `mm_struct`).
struct MmState {
    asp: AddressSpace<SimPlatform>,
    mmap: SimLock<()>,
    pt: SimLock<Tables>,
    /// The present entries as the TLBs know them, for the second oracle of C-09 (see
    /// [`publish`]). A leaf lock, never held across a scheduling point or a call out.
    view: Mutex<BTreeMap<usize, Pte>>,
    state: AtomicU8,
}

/// Publish the entries of `[start, end)` of `t` to the translation oracle's view of
/// `m`. Called in the page-table section that changed them: at once for a fault (it
/// adds or widens an entry, which needs no flush), and right after the TLB flush
/// (`invalidate_secondary_tlbs`) for an operation that removes or narrows entries inside
/// an invalidation.
///
/// So the view equals the page table whenever the page-table lock is free, and inside
/// such a section it still shows the old entry until the flush has run: a device TLB
/// that the flush has not reached yet (it waits for its own lock, held by an access in
/// progress) used a translation that was current when its access began. Checking the
/// page table itself would need the page-table lock under the secondary MMU's lock,
/// the reverse of the order `invalidate_secondary_tlbs` takes them in.
fn publish(m: &MmState, t: &Tables, start: usize, end: usize) {
    let mut v = m.view.lock().unwrap_or_else(|e| e.into_inner());
    let gone: Vec<usize> = v.range(start..end).map(|(&a, _)| a).collect();
    for a in gone {
        v.remove(&a);
    }
    for (&a, e) in t.ptes.range(start..end) {
        if let Entry::Present(p) = e {
            v.insert(
                a,
                Pte {
                    frame: p.frame,
                    writable: p.writable && !p.cow,
                },
            );
        }
    }
}

/// The outcome of the locked part of a fault.
enum Fault {
    /// The entry is in place.
    Done(Pte),
    /// A write to this shared copy-on-write entry: copy it.
    Copy(Present),
}

/// What to do with the entries an operation removes, once its invalidation has ended.
#[derive(Debug, Default)]
struct Freed {
    frames: Vec<Frame>,
    swap: Vec<usize>,
}

// --- The machine ----------------------------------------------------------------------

/// A chunk of the address-space table, allocated when its first id is handed out.
type MmChunk = Box<[OnceLock<MmState>]>;

/// The simulated machine.
pub(crate) struct Machine {
    mms: Box<[OnceLock<MmChunk>]>,
    next_mm: AtomicUsize,
    frames: SimLock<Frames>,
    swap: SimLock<Swap>,
    stats: StatCounters,
    hook: Mutex<Option<EventHook>>,
    /// Exporters of physical pages; the free paths call it right before a frame goes.
    exports: ExportRegistry<SimPlatform>,
    /// The address space `address_space` answers for an unknown handle: torn down, so
    /// that registration on it fails with `Dead`.
    dead: AddressSpace<SimPlatform>,
    /// Whether the second oracle of C-09 answers (off: it says "not checked").
    translation_oracle: bool,
}

fn range_of(addr: usize, len: usize) -> Result<(usize, usize), HarnessError> {
    if len == 0 {
        return Err(HarnessError::Failed("empty range"));
    }
    if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(HarnessError::Failed("range not page aligned"));
    }
    let end = addr
        .checked_add(len)
        .ok_or(HarnessError::Failed("range overflows the address space"))?;
    if end > <SimPlatform as Platform>::ADDRESS_LIMIT {
        return Err(HarnessError::Failed("range overflows the address space"));
    }
    Ok((addr, end))
}

fn page_of(addr: usize) -> Result<(usize, usize), HarnessError> {
    range_of(addr, PAGE_SIZE)
}

fn reentrant() -> HarnessError {
    HarnessError::Failed("primary MMU called under its own page-table lock")
}

impl Machine {
    /// A machine with `frames` physical frames and `swap` swap slots; the second oracle
    /// of C-09 answers if `translation_oracle`.
    pub(crate) fn new(frames: usize, swap: usize, translation_oracle: bool) -> Self {
        let dead = AddressSpace::new();
        // A fresh address space: teardown cannot be refused (no callback, no
        // invalidation held by this thread).
        let _ = dead.release();
        Machine {
            mms: (0..MM_CHUNKS).map(|_| OnceLock::new()).collect(),
            next_mm: AtomicUsize::new(0),
            frames: SimLock::new(Frames::new(frames)),
            swap: SimLock::new(Swap::new(swap)),
            stats: StatCounters::default(),
            hook: Mutex::new(None),
            exports: ExportRegistry::new(),
            dead,
            translation_oracle,
        }
    }

    pub(crate) fn stats(&self) -> SimStats {
        self.stats.snapshot()
    }

    pub(crate) fn set_hook(&self, hook: Option<EventHook>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn emit(&self, ev: SimEvent) {
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook {
            h(&ev);
        }
    }

    fn frames(&self) -> SimGuard<'_, Frames> {
        // The frame table is a leaf lock: never held while calling out, so it cannot be
        // re-entered.
        loop {
            if let Some(g) = self.frames.lock() {
                return g;
            }
            sched::spin();
        }
    }

    fn swap_lock(&self) -> SimGuard<'_, Swap> {
        loop {
            if let Some(g) = self.swap.lock() {
                return g;
            }
            sched::spin();
        }
    }

    fn slot(&self, mm: Mm) -> Option<&MmState> {
        self.mms
            .get(mm / MM_CHUNK)?
            .get()?
            .get(mm % MM_CHUNK)?
            .get()
    }

    /// The address space `mm` if it is alive (not torn down).
    fn live(&self, mm: Mm) -> Result<&MmState, HarnessError> {
        let m = self
            .slot(mm)
            .ok_or(HarnessError::Failed("no such address space"))?;
        match m.state.load(Ordering::Acquire) {
            LIVE => Ok(m),
            TORN_DOWN => Err(HarnessError::Failed("address space torn down")),
            _ => Err(HarnessError::Failed("no such address space")),
        }
    }

    /// Take `m`'s mmap lock and check, under it, that the space is still alive
    /// (teardown marks it before it clears the tables under this lock).
    fn lock_mmap<'a>(&self, m: &'a MmState) -> Result<SimGuard<'a, ()>, HarnessError> {
        let g = m.mmap.lock().ok_or_else(reentrant)?;
        if m.state.load(Ordering::Acquire) != LIVE {
            return Err(HarnessError::Failed("address space torn down"));
        }
        Ok(g)
    }

    pub(crate) fn create_mm(&self) -> Result<Mm, HarnessError> {
        let id = self.next_mm.fetch_add(1, Ordering::Relaxed);
        let chunk = self
            .mms
            .get(id / MM_CHUNK)
            .ok_or(HarnessError::Failed("too many address spaces"))?;
        let chunk = chunk.get_or_init(|| (0..MM_CHUNK).map(|_| OnceLock::new()).collect());
        let fresh = MmState {
            asp: AddressSpace::new(),
            mmap: SimLock::new(()),
            pt: SimLock::new(Tables::default()),
            view: Mutex::new(BTreeMap::new()),
            state: AtomicU8::new(LIVE),
        };
        chunk[id % MM_CHUNK]
            .set(fresh)
            .map_err(|_| HarnessError::Failed("address-space id reused"))?;
        Ok(id)
    }

    pub(crate) fn address_space(&self, mm: Mm) -> &AddressSpace<SimPlatform> {
        match self.slot(mm) {
            Some(m) => &m.asp,
            None => &self.dead,
        }
    }

    // --- The core calls, with the hook and the counters -----------------------------

    fn start<'a>(
        &self,
        mm: Mm,
        m: &'a MmState,
        range: Range,
    ) -> Result<Invalidation<'a, SimPlatform>, notifier_core::Error> {
        match m.asp.invalidate_range_start(range) {
            Ok(inv) => {
                bump(&self.stats.invalidations[event_index(range.event)], 1);
                self.emit(SimEvent::InvalidateStart { mm, range });
                // Let another task run while the range is in flight (C-09 windows).
                sched::point();
                Ok(inv)
            }
            Err(e) => {
                if e == notifier_core::Error::WouldBlock {
                    bump(&self.stats.refused, 1);
                    self.emit(SimEvent::Refused { mm, range });
                }
                Err(e)
            }
        }
    }

    fn blockable_start<'a>(
        &self,
        mm: Mm,
        m: &'a MmState,
        range: Range,
    ) -> Result<Invalidation<'a, SimPlatform>, HarnessError> {
        self.start(mm, m, range)
            .map_err(|_| HarnessError::Failed("invalidate_range_start failed"))
    }

    fn end(&self, mm: Mm, inv: Invalidation<'_, SimPlatform>) {
        let range = *inv.range();
        sched::point();
        inv.end();
        self.emit(SimEvent::InvalidateEnd { mm, range });
    }

    /// The CPU TLB flush of `[start, end)` and, right with it under the page-table
    /// lock, the secondary TLBs (the caller holds `pt`).
    fn flush(&self, mm: Mm, m: &MmState, start: usize, end: usize) {
        if m.asp.invalidate_secondary_tlbs(start, end).is_ok() {
            bump(&self.stats.secondary_tlb_flushes, 1);
            self.emit(SimEvent::SecondaryTlbs { mm, start, end });
        }
    }

    /// Drop the references of removed entries (after `end`): frames whose last
    /// reference goes are freed, each right after the export registry was told
    /// (`before_free`), as Linux's free path would.
    fn release_entries(&self, freed: Freed) {
        let dying: Vec<Frame> = {
            let fr = self.frames();
            freed
                .frames
                .iter()
                .copied()
                .filter(|&f| fr.slot(f).is_some_and(|s| s.refs == 1))
                .collect()
        };
        let mut keep = Vec::new();
        for f in dying {
            if !self.before_free(f) {
                keep.push(f);
            }
        }
        let mut gone = Vec::new();
        {
            let mut fr = self.frames();
            for f in freed.frames {
                if keep.contains(&f) {
                    continue;
                }
                if fr.put(f) == Some(true) {
                    gone.push(f);
                }
            }
        }
        if !freed.swap.is_empty() {
            let mut sw = self.swap_lock();
            for s in freed.swap {
                sw.take(s);
            }
        }
        bump(&self.stats.frames_freed, gone.len() as u64);
        for f in gone {
            self.emit(SimEvent::FrameFree(f));
        }
    }

    /// Tell the export registry that `f` is about to be freed (no machine lock held:
    /// exporters revoke remote mappings and drop their references, through the
    /// harness). False if the page must not be freed.
    fn before_free(&self, f: Frame) -> bool {
        match self.exports.before_free(f.pfn) {
            Ok(n) => {
                bump(&self.stats.export_revocations, n as u64);
                true
            }
            Err(_) => {
                bump(&self.stats.frames_held_back, 1);
                false
            }
        }
    }

    pub(crate) fn exports(&self) -> &ExportRegistry<SimPlatform> {
        &self.exports
    }

    fn alloc_frame(&self, data: u64) -> Option<Frame> {
        let f = self.frames().alloc(data)?;
        bump(&self.stats.frames_allocated, 1);
        self.emit(SimEvent::FrameAlloc(f));
        Some(f)
    }

    /// Remove every entry of `[start, end)` from `t`, keeping the reverse map right;
    /// returns what to release after `end` and how many were present.
    fn zap(&self, mm: Mm, t: &mut Tables, start: usize, end: usize) -> (Freed, usize) {
        let addrs: Vec<usize> = t.ptes.range(start..end).map(|(&a, _)| a).collect();
        let mut freed = Freed::default();
        let mut present = 0;
        let mut fr = self.frames();
        for a in addrs {
            match t.ptes.remove(&a) {
                Some(Entry::Present(p)) => {
                    fr.rmap_remove(p.frame, mm, a);
                    freed.frames.push(p.frame);
                    present += 1;
                }
                Some(Entry::Swapped(s)) => freed.swap.push(s),
                None => {}
            }
        }
        (freed, present)
    }

    // --- Primary MMU operations ----------------------------------------------------

    /// mmap with `MAP_FIXED` semantics: whatever was mapped in the range is unmapped
    /// first (with its invalidation), in the same mmap-lock section.
    pub(crate) fn map(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        let (start, end) = range_of(addr, len)?;
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        self.unmap_locked(mm, m, start, end)?;
        let mut t = m.pt.lock().ok_or_else(reentrant)?;
        t.vmas.insert(start, end, true);
        Ok(())
    }

    /// munmap (Linux: `unmap_region`): the mappings go first, so that no fault
    /// repopulates the range; then start, clear, flush, end, and only then the pages
    /// are released.
    pub(crate) fn unmap(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        let (start, end) = range_of(addr, len)?;
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        self.unmap_locked(mm, m, start, end)
    }

    /// [`unmap`](Self::unmap) with the mmap lock held.
    fn unmap_locked(
        &self,
        mm: Mm,
        m: &MmState,
        start: usize,
        end: usize,
    ) -> Result<(), HarnessError> {
        {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            let busy = t.vmas.overlaps(start, end) || t.ptes.range(start..end).next().is_some();
            if !busy {
                return Ok(());
            }
            t.vmas.remove(start, end);
        }
        let inv = self.blockable_start(mm, m, Range::new(start, end, Event::Unmap))?;
        let freed = {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            let (freed, _) = self.zap(mm, &mut t, start, end);
            self.flush(mm, m, start, end);
            publish(m, &t, start, end);
            freed
        };
        self.end(mm, inv);
        self.release_entries(freed);
        Ok(())
    }

    /// mprotect (Linux: `change_protection`, event `ProtectionVma`).
    pub(crate) fn protect(
        &self,
        mm: Mm,
        addr: usize,
        len: usize,
        writable: bool,
    ) -> Result<(), HarnessError> {
        let (start, end) = range_of(addr, len)?;
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        let populated = {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            if !t.vmas.covers(start, end) {
                return Err(HarnessError::Failed("range not mapped"));
            }
            t.vmas.split(start);
            t.vmas.split(end);
            let keys: Vec<usize> = t.vmas.0.range(start..end).map(|(&k, _)| k).collect();
            for k in keys {
                if let Some(v) = t.vmas.0.get_mut(&k) {
                    v.1 = writable;
                }
            }
            t.ptes
                .range(start..end)
                .any(|(_, e)| matches!(e, Entry::Present(_)))
        };
        if !populated {
            return Ok(());
        }
        let inv = self.blockable_start(mm, m, Range::new(start, end, Event::ProtectionVma))?;
        {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            for (_, e) in t.ptes.range_mut(start..end) {
                if let Entry::Present(p) = e {
                    // A copy-on-write page stays write-protected: the write fault
                    // decides between copy and reuse.
                    p.writable = writable && !p.cow;
                }
            }
            self.flush(mm, m, start, end);
            publish(m, &t, start, end);
        }
        self.end(mm, inv);
        Ok(())
    }

    /// Page migration (event `Migrate`): a new frame, the entry switched under the
    /// page-table lock with the content copied, the old frame released after `end`. A
    /// page that is mapped but not present is faulted in first.
    pub(crate) fn migrate(&self, mm: Mm, addr: usize) -> Result<Pte, HarnessError> {
        let (start, _) = page_of(addr)?;
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        for _ in 0..RACE_RETRIES {
            let present = m.pt.lock().ok_or_else(reentrant)?.present(start);
            let old = match present {
                Some(p) => p,
                None => {
                    // Mapped but not populated (or swapped out): fault it in first,
                    // then migrate what the fault brought.
                    self.fault_locked(mm, m, start, false)?;
                    continue;
                }
            };
            // The entry keeps its bits; only the frame changes.
            let moved = self.replace_page(mm, m, start, Event::Migrate, old, |p, _| p)?;
            if let Some(p) = moved {
                bump(&self.stats.migrations, 1);
                return Ok(Pte {
                    frame: p.frame,
                    writable: p.writable,
                });
            }
            // A fault changed the entry meanwhile (copy-on-write break): retry.
        }
        Err(HarnessError::Failed("page kept changing during migration"))
    }

    /// Fork (Linux: `dup_mmap` / `copy_page_range`): for each mapping with present
    /// pages, the parent's entries are write-protected inside a `ProtectionPage`
    /// invalidation and shared with the child, both copy-on-write.
    ///
    /// Faults take only the page-table lock, so a page may be faulted in at any moment
    /// the lock is free. Whether a mapping needs the invalidation is therefore decided
    /// in the same page-table section that copies it when it has no present page (the
    /// swapped entries are copied there and then); otherwise the invalidation starts
    /// first and the write-protect, its TLB flush and the copy are one section inside
    /// it, so that whatever was faulted in meanwhile is covered too (Linux holds the
    /// mmap lock for writing, which keeps faults out, and starts the invalidation
    /// before it takes the PTE lock).
    pub(crate) fn fork(&self, mm: Mm) -> Result<Mm, HarnessError> {
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        let child = self.create_mm()?;
        let c = self
            .slot(child)
            .ok_or(HarnessError::Failed("no such address space"))?;
        let vmas = {
            let t = m.pt.lock().ok_or_else(reentrant)?;
            let mut ct = c.pt.lock().ok_or_else(reentrant)?;
            ct.vmas = t.vmas.clone();
            t.vmas.iter().collect::<Vec<_>>()
        };
        for (start, end, _) in vmas {
            {
                let mut t = m.pt.lock().ok_or_else(reentrant)?;
                let has_present = t
                    .ptes
                    .range(start..end)
                    .any(|(_, e)| matches!(e, Entry::Present(_)));
                if !has_present {
                    // Nothing a secondary MMU can have cached: no invalidation, and no
                    // fault can slip in before the copy (the lock is held).
                    let mut ct = c.pt.lock().ok_or_else(reentrant)?;
                    self.share_range(child, &mut t, &mut ct, start, end);
                    publish(c, &ct, start, end);
                    continue;
                }
            }
            let inv = self.blockable_start(mm, m, Range::new(start, end, Event::ProtectionPage))?;
            let copied = (|| {
                let mut t = m.pt.lock().ok_or_else(reentrant)?;
                let mut ct = c.pt.lock().ok_or_else(reentrant)?;
                self.share_range(child, &mut t, &mut ct, start, end);
                self.flush(mm, m, start, end);
                publish(m, &t, start, end);
                publish(c, &ct, start, end);
                Ok(())
            })();
            self.end(mm, inv);
            copied?;
        }
        bump(&self.stats.forks, 1);
        Ok(child)
    }

    /// Fork's copy of `[start, end)` (the caller holds both page-table locks): present
    /// entries are write-protected and shared copy-on-write, swapped ones copied to a
    /// new swap slot.
    fn share_range(&self, child: Mm, t: &mut Tables, ct: &mut Tables, start: usize, end: usize) {
        let mut fr = self.frames();
        let mut sw = self.swap_lock();
        for (&a, e) in t.ptes.range_mut(start..end) {
            match e {
                Entry::Present(p) => {
                    p.writable = false;
                    p.cow = true;
                    let shared = *p;
                    if let Some(s) = fr.slot_mut(shared.frame) {
                        s.refs += 1;
                        s.rmap.push((child, a));
                    }
                    ct.ptes.insert(a, Entry::Present(shared));
                }
                Entry::Swapped(slot) => {
                    let data = sw.slots.get(*slot).copied().flatten().unwrap_or(0);
                    if let Some(ns) = sw.alloc(data) {
                        ct.ptes.insert(a, Entry::Swapped(ns));
                    }
                }
            }
        }
    }

    /// A primary fault: populate `addr` (from swap if it was swapped out), or break
    /// copy-on-write on a write.
    pub(crate) fn touch(&self, mm: Mm, addr: usize, write: bool) -> Result<Pte, HarnessError> {
        let (start, _) = page_of(addr)?;
        let m = self.live(mm)?;
        bump(&self.stats.faults, 1);
        for _ in 0..RACE_RETRIES {
            let old = match self.fault_locked(mm, m, start, write)? {
                Fault::Done(pte) => return Ok(pte),
                Fault::Copy(old) => old,
            };
            if let Some(pte) = self.cow_break(mm, m, start, old)? {
                return Ok(pte);
            }
        }
        Err(HarnessError::Failed("page kept changing during the fault"))
    }

    /// The part of a fault done under the page-table lock.
    fn fault_locked(
        &self,
        mm: Mm,
        m: &MmState,
        start: usize,
        write: bool,
    ) -> Result<Fault, HarnessError> {
        let mut t = m.pt.lock().ok_or_else(reentrant)?;
        // Checked under the lock: teardown marks the space before it clears the tables.
        if m.state.load(Ordering::Acquire) != LIVE {
            return Err(HarnessError::Failed("address space torn down"));
        }
        let vma_writable = t
            .vmas
            .find(start)
            .ok_or(HarnessError::Failed("address not mapped"))?;
        if write && !vma_writable {
            return Err(HarnessError::Failed("write to a read-only mapping"));
        }
        let mut p = match t.ptes.get(&start).copied() {
            Some(Entry::Present(mut p)) => {
                if write && !p.writable {
                    if p.cow {
                        let sole = self.frames().slot(p.frame).is_some_and(|s| s.refs == 1);
                        if !sole {
                            // Shared: copy, outside the lock (start may sleep).
                            return Ok(Fault::Copy(p));
                        }
                        // Sole owner: reuse the page (Linux: `wp_page_reuse`). Making an
                        // entry more permissive needs no invalidation.
                        p.cow = false;
                        bump(&self.stats.cow_reuses, 1);
                    }
                    p.writable = true;
                }
                p
            }
            entry @ (None | Some(Entry::Swapped(_))) => {
                let frame = self
                    .alloc_frame(0)
                    .ok_or(HarnessError::Failed("out of frames"))?;
                if let Some(Entry::Swapped(slot)) = entry {
                    // Swap-in: the slot is given up only once the frame is there.
                    let data = self.swap_lock().take(slot).unwrap_or(0);
                    if let Some(s) = self.frames().slot_mut(frame) {
                        s.data = data;
                    }
                    bump(&self.stats.pages_swapped_in, 1);
                }
                self.frames().rmap_add(frame, mm, start);
                Present::fresh(frame, vma_writable)
            }
        };
        let pte = self.access(&mut p, write);
        t.ptes.insert(start, Entry::Present(p));
        publish(m, &t, start, start + PAGE_SIZE);
        Ok(Fault::Done(pte))
    }

    /// Mark `p` accessed (and written) by the CPU; the entry as the fault returns it.
    fn access(&self, p: &mut Present, write: bool) -> Pte {
        p.accessed = true;
        if write {
            p.dirty = true;
            if let Some(s) = self.frames().slot_mut(p.frame) {
                s.data = s.data.wrapping_add(1);
            }
        }
        Pte {
            frame: p.frame,
            writable: p.writable,
        }
    }

    /// Linux's `wp_page_copy`: copy the shared page into a new frame mapped writable,
    /// inside an invalidation of the page. `None` if the entry changed meanwhile (the
    /// caller retries the fault).
    fn cow_break(
        &self,
        mm: Mm,
        m: &MmState,
        start: usize,
        old: Present,
    ) -> Result<Option<Pte>, HarnessError> {
        let mut pte = None;
        let done = self.replace_page(mm, m, start, COW_BREAK_EVENT, old, |p, t| {
            let mut np = Present::fresh(p.frame, t.vmas.find(start).unwrap_or(false));
            pte = Some(self.access(&mut np, true));
            np
        })?;
        if done.is_some() {
            bump(&self.stats.cow_breaks, 1);
        }
        Ok(done.and(pte))
    }

    /// Switch the page at `start` from the frame of `old` to a fresh one, inside an
    /// invalidation with `event` (migration, copy-on-write break). Under the page-table
    /// lock, if the entry still is `old` (Linux: `pte_same`), the content is copied,
    /// the entry becomes `make(entry with the new frame, tables)` and the TLBs are
    /// flushed; the old frame's reference goes only after `end`. `None` (and nothing
    /// changed) if the entry changed meanwhile.
    fn replace_page(
        &self,
        mm: Mm,
        m: &MmState,
        start: usize,
        event: Event,
        old: Present,
        make: impl FnOnce(Present, &Tables) -> Present,
    ) -> Result<Option<Present>, HarnessError> {
        let end = start + PAGE_SIZE;
        let new = self
            .alloc_frame(0)
            .ok_or(HarnessError::Failed("out of frames"))?;
        let inv = match self.start(mm, m, Range::new(start, end, event)) {
            Ok(inv) => inv,
            Err(_) => {
                self.put_one(new);
                return Err(HarnessError::Failed("invalidate_range_start failed"));
            }
        };
        let done = {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            match t.present(start) {
                Some(p) if p.frame == old.frame && p.cow == old.cow => {
                    {
                        let mut fr = self.frames();
                        let data = fr.slot(p.frame).map_or(0, |s| s.data);
                        if let Some(s) = fr.slot_mut(new) {
                            s.data = data;
                        }
                        fr.rmap_remove(p.frame, mm, start);
                        fr.rmap_add(new, mm, start);
                    }
                    let np = make(Present { frame: new, ..p }, &t);
                    t.ptes.insert(start, Entry::Present(np));
                    self.flush(mm, m, start, end);
                    publish(m, &t, start, end);
                    Some(np)
                }
                _ => None,
            }
        };
        self.end(mm, inv);
        self.put_one(if done.is_some() { old.frame } else { new });
        Ok(done)
    }

    /// Drop one page-table reference on `f` after an invalidation ended.
    fn put_one(&self, f: Frame) {
        self.release_entries(Freed {
            frames: vec![f],
            swap: Vec::new(),
        });
    }

    pub(crate) fn lookup(&self, mm: Mm, addr: usize) -> Option<Pte> {
        let m = self.live(mm).ok()?;
        if addr % PAGE_SIZE != 0 {
            return None;
        }
        let Some(t) = m.pt.lock() else {
            bump(&self.stats.reentrant_calls, 1);
            return None;
        };
        t.present(addr).map(|p| Pte {
            frame: p.frame,
            writable: p.writable,
        })
    }

    /// The content of the page mapped at `addr` (every write fault bumps it).
    pub(crate) fn read(&self, mm: Mm, addr: usize) -> Option<u64> {
        let pte = self.lookup(mm, addr)?;
        self.frames().slot(pte.frame).map(|s| s.data)
    }

    /// Page reclaim (Linux: `shrink_folio_list`). For each present page of the range:
    /// ageing through the reverse map, as `folio_referenced` does (every mapping's
    /// accessed bit, test-and-cleared, OR `clear_flush_young` of that mapping's address
    /// space); a page that nobody used since the last pass is written to swap and
    /// unmapped from this address space inside an invalidation of the page
    /// (`try_to_unmap_one`); its frame is released after `end`.
    pub(crate) fn reclaim(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError> {
        let (start, end) = range_of(addr, len)?;
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        let pages: Vec<(usize, Frame)> = {
            let t = m.pt.lock().ok_or_else(reentrant)?;
            t.ptes
                .range(start..end)
                .filter_map(|(&a, e)| match e {
                    Entry::Present(p) => Some((a, p.frame)),
                    Entry::Swapped(_) => None,
                })
                .collect()
        };
        let mut evicted = 0;
        for (a, frame) in pages {
            sched::point();
            let Some(mappers) = self.frames().slot(frame).map(|s| s.rmap.clone()) else {
                continue;
            };
            let (mut primary, mut secondary) = (false, false);
            for (m2, a2) in mappers {
                let Some(ms2) = self.slot(m2) else { continue };
                {
                    let Some(mut t2) = ms2.pt.lock() else {
                        bump(&self.stats.reentrant_calls, 1);
                        continue;
                    };
                    if let Some(Entry::Present(p)) = t2.ptes.get_mut(&a2) {
                        if p.frame == frame && p.accessed {
                            p.accessed = false;
                            primary = true;
                        }
                    }
                }
                // Called without the page-table lock: subscribers take their own.
                if ms2.asp.clear_flush_young(a2, a2 + PAGE_SIZE) == Ok(true) {
                    secondary = true;
                }
            }
            bump(&self.stats.young_primary, u64::from(primary));
            bump(&self.stats.young_secondary, u64::from(secondary));
            self.emit(SimEvent::Aged {
                mm,
                addr: a,
                primary,
                secondary,
            });
            if primary || secondary {
                continue;
            }
            if self.evict(mm, m, a, frame)? {
                evicted += 1;
            }
        }
        // The shrink list also holds pages that no primary entry maps any more (only a
        // secondary's reference keeps them, e.g. an exporter's): the free-path hook runs
        // for them too, mapped or not (C-20). An exporter revokes and drops its
        // reference; the page is freed when the last one goes.
        let unmapped: Vec<Frame> = {
            let fr = self.frames();
            fr.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.live && s.refs > 0 && s.rmap.is_empty())
                .map(|(i, s)| Frame {
                    pfn: i as u64,
                    gen: s.gen,
                })
                .collect()
        };
        for f in unmapped {
            sched::point();
            self.before_free(f);
        }
        Ok(evicted)
    }

    /// Swap out the page at `a` of `mm` if it still maps `frame`.
    fn evict(&self, mm: Mm, m: &MmState, a: usize, frame: Frame) -> Result<bool, HarnessError> {
        let inv = self.blockable_start(mm, m, Range::new(a, a + PAGE_SIZE, RECLAIM_EVENT))?;
        let done = {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            match t.present(a) {
                Some(p) if p.frame == frame => {
                    let data = self.frames().slot(frame).map_or(0, |s| s.data);
                    match self.swap_lock().alloc(data) {
                        Some(slot) => {
                            t.ptes.insert(a, Entry::Swapped(slot));
                            self.frames().rmap_remove(frame, mm, a);
                            self.flush(mm, m, a, a + PAGE_SIZE);
                            publish(m, &t, a, a + PAGE_SIZE);
                            true
                        }
                        // Swap is full: the page stays.
                        None => false,
                    }
                }
                _ => false,
            }
        };
        self.end(mm, inv);
        if done {
            // The shrink-list step: whoever exported the page revokes and drops its
            // reference now, mapped in a primary page table or not (C-18..C-21).
            if !self.before_free(frame) {
                return Ok(true);
            }
            self.put_one(frame);
            bump(&self.stats.pages_reclaimed, 1);
            self.emit(SimEvent::Reclaimed { mm, addr: a, frame });
        }
        Ok(done)
    }

    /// The OOM reaper (Linux: `__oom_reap_task_mm`): a non-blockable invalidation of the
    /// range; if a subscriber refuses, nothing is touched. Otherwise the pages are
    /// unmapped (the mappings stay) and released after `end`.
    pub(crate) fn reap(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError> {
        let (start, end) = range_of(addr, len)?;
        let m = self.live(mm)?;
        let _mmap = self.lock_mmap(m)?;
        {
            let t = m.pt.lock().ok_or_else(reentrant)?;
            if !t.vmas.overlaps(start, end) && t.ptes.range(start..end).next().is_none() {
                return Ok(0);
            }
        }
        let inv = match self.start(mm, m, Range::new(start, end, Event::Unmap).non_blocking()) {
            Ok(inv) => inv,
            Err(notifier_core::Error::WouldBlock) => return Err(HarnessError::Refused),
            Err(_) => return Err(HarnessError::Failed("invalidate_range_start failed")),
        };
        let (freed, present) = {
            let mut t = m.pt.lock().ok_or_else(reentrant)?;
            let r = self.zap(mm, &mut t, start, end);
            self.flush(mm, m, start, end);
            publish(m, &t, start, end);
            r
        };
        self.end(mm, inv);
        self.release_entries(freed);
        bump(&self.stats.reaped, present as u64);
        Ok(present)
    }

    /// Exit (Linux: `exit_mmap`): `release` first, so that every subscriber drops its
    /// translations while the pages are still allocated; then everything is unmapped
    /// without notifier brackets (nobody is subscribed any more) and released.
    pub(crate) fn teardown(&self, mm: Mm) {
        let Some(m) = self.slot(mm) else { return };
        if m.state
            .compare_exchange(LIVE, TORN_DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        if m.asp.release().is_err() {
            // Refused: the caller runs inside a callback or holds an invalidation.
            bump(&self.stats.reentrant_calls, 1);
            return;
        }
        self.emit(SimEvent::Released { mm });
        let Some(_mmap) = m.mmap.lock() else {
            bump(&self.stats.reentrant_calls, 1);
            return;
        };
        let freed = {
            let Some(mut t) = m.pt.lock() else {
                bump(&self.stats.reentrant_calls, 1);
                return;
            };
            let (freed, _) = self.zap(mm, &mut t, 0, usize::MAX);
            publish(m, &t, 0, usize::MAX);
            t.vmas = Vmas::default();
            freed
        };
        self.release_entries(freed);
        bump(&self.stats.teardowns, 1);
    }

    pub(crate) fn destroy_mm(&self, mm: Mm) {
        self.teardown(mm);
        if let Some(m) = self.slot(mm) {
            // The `AddressSpace` itself stays allocated until the machine goes: the
            // harness handed out references to it for as long as it lives.
            m.state.store(DESTROYED, Ordering::Release);
        }
    }

    // --- The second oracle of C-09 -------------------------------------------------

    /// Whether the second oracle answers; if not, why.
    pub(crate) fn translation_oracle(&self) -> Option<&'static str> {
        (!self.translation_oracle)
            .then_some("the simulator was built with its translation oracle off")
    }

    /// The second oracle of C-09: a secondary MMU uses a translation of `addr` in `mm`
    /// to `frame` (for writing if `write`). It is current if the primary entry maps
    /// `frame` (and allows writes, for a write) as the TLBs know it now (see
    /// [`publish`]): the primary MMU changes an entry only inside an invalidation,
    /// and the view moves to the new entry when that invalidation flushes the TLBs,
    /// which is what a secondary MMU must have followed by then (it zapped in `start`,
    /// or was flushed with the CPU TLB). A translation used after that, until its
    /// `end` or later, is stale even if its frame is still allocated.
    pub(crate) fn check_translation(
        &self,
        mm: Mm,
        addr: usize,
        frame: Frame,
        write: bool,
    ) -> Result<(), &'static str> {
        bump(&self.stats.translation_checks, 1);
        let r = match self.slot(mm) {
            None => Err("no such address space"),
            Some(m) => {
                let v = m.view.lock().unwrap_or_else(|e| e.into_inner());
                match v.get(&addr) {
                    None => Err("the primary entry is not present"),
                    Some(p) if p.frame != frame => Err("the primary entry maps another frame"),
                    Some(p) if write && !p.writable => {
                        Err("a write through a read-only or copy-on-write primary entry")
                    }
                    Some(_) => Ok(()),
                }
            }
        };
        if r.is_err() {
            bump(&self.stats.stale_translations, 1);
        }
        r
    }

    // --- Frames for secondary MMUs ------------------------------------------------

    pub(crate) fn get_frame(&self, f: Frame) -> bool {
        let mut fr = self.frames();
        match fr.slot_mut(f) {
            Some(s) => {
                s.refs += 1;
                true
            }
            None => false,
        }
    }

    pub(crate) fn put_frame(&self, f: Frame) {
        let r = self.frames().put(f);
        match r {
            Some(true) => {
                bump(&self.stats.frames_freed, 1);
                self.emit(SimEvent::FrameFree(f));
            }
            Some(false) => {}
            None => bump(&self.stats.bad_puts, 1),
        }
    }

    pub(crate) fn frame_live(&self, f: Frame) -> bool {
        self.frames().slot(f).is_some()
    }

    /// References held on `f` (0 if it is not live).
    pub(crate) fn frame_refs(&self, f: Frame) -> u32 {
        self.frames().slot(f).map_or(0, |s| s.refs)
    }

    /// Every (address space, address) that maps `f`.
    pub(crate) fn mappers(&self, f: Frame) -> Vec<(Mm, usize)> {
        self.frames()
            .slot(f)
            .map_or_else(Vec::new, |s| s.rmap.clone())
    }

    /// Frames not allocated.
    pub(crate) fn free_frames(&self) -> usize {
        self.frames().free.len()
    }

    /// Whether the entry of `addr` is swapped out.
    pub(crate) fn is_swapped(&self, mm: Mm, addr: usize) -> bool {
        let Some(m) = self.slot(mm) else { return false };
        let Some(t) = m.pt.lock() else { return false };
        matches!(t.ptes.get(&addr), Some(Entry::Swapped(_)))
    }
}
