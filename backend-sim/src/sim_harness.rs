//! [`SimHarness`]: the conformance suite's harness on the simulated machine.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use notifier_core::export::ExportRegistry;
use notifier_core::AddressSpace;

use crate::harness::{Cap, Frame, Harness, HarnessError, Mm, Pte, TranslationCheck};
use crate::machine::{EventHook, Machine, SimEvent, SimStats};
use crate::platform::SimPlatform;
use crate::sched::{self, Counters, Ctx, Sched};

/// How the harness runs concurrent tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One task at a time, the next chosen by an RNG seeded with this value at every
    /// scheduling point: replayable.
    Deterministic(u64),
    /// Plain OS threads in parallel.
    Threads,
}

/// How to build a [`SimHarness`].
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// How tasks run.
    pub mode: Mode,
    /// Physical frames of the machine (small, so that frames are reused).
    pub frames: usize,
    /// Swap slots.
    pub swap_slots: usize,
    /// Deterministic mode: scheduling points per top-level
    /// [`run_concurrently`](Harness::run_concurrently) after which the run is declared
    /// a livelock and its tasks panic (the panic reaches the caller).
    pub step_budget: u64,
    /// Whether the second oracle of C-09 ([`Harness::check_translation`]) answers. Off,
    /// the suite runs with the frame-liveness oracle alone (to show what only the
    /// second one catches).
    pub translation_oracle: bool,
}

impl SimConfig {
    /// The defaults for `mode`: 512 frames, 4096 swap slots, 20 million steps, both
    /// oracles.
    pub const fn new(mode: Mode) -> Self {
        SimConfig {
            mode,
            frames: 512,
            swap_slots: 4096,
            step_budget: 20_000_000,
            translation_oracle: true,
        }
    }
}

/// A simulated machine implementing the suite's [`Harness`].
///
/// It is also the test bed for a secondary MMU of your own: implement
/// `notifier_conformance::SecondaryMmu` for it and call
/// `notifier_conformance::run_consumer` on [`SimHarness::deterministic`] (a seeded
/// scheduler switches tasks at every `yield_now` and lock: a failing seed replays) for a
/// few seeds, and on [`SimHarness::threads`] (real threads). The machine has every
/// capability of [`Cap`] but soft-dirty tracking, both oracles of C-09
/// ([`Harness::frame_live`] with allocation generations, so that a reused frame is told
/// apart, and [`Harness::check_translation`]; [`SimConfig::translation_oracle`] turns
/// the second off to show what only it catches), few frames (so that they are reused),
/// and a step budget that turns a livelock into a panic in deterministic mode. The
/// repository's `examples/consumer-check` is a worked example.
///
/// ```
/// use backend_sim::harness::Harness;
/// use backend_sim::SimHarness;
///
/// let h = SimHarness::deterministic(42);
/// let mm = h.create_mm().unwrap();
/// h.map(mm, 0x10000, 0x4000).unwrap();
/// let pte = h.touch(mm, 0x10000, true).unwrap();
/// assert!(h.frame_live(pte.frame));
/// h.unmap(mm, 0x10000, 0x4000).unwrap();
/// assert!(!h.frame_live(pte.frame)); // freed after the invalidation ended
/// assert_eq!(h.stats().frames_freed, 1);
/// ```
pub struct SimHarness {
    ctx: Arc<Ctx>,
    machine: Machine,
    mode: Mode,
    arena: OnceLock<Option<Arena>>,
}

/// Memory lent to the suite ([`Harness::arena`]).
///
/// # Invariants
///
/// `ptr` was returned by the global allocator for `Arena::LAYOUT` and is freed only in
/// `drop`.
struct Arena {
    ptr: NonNull<u8>,
}

// SAFETY: the arena is plain memory; the harness never reads or writes it, the suite
// that borrows it synchronises its own use.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// 16 MiB, page aligned: the default scale of C-17 needs a few megabytes.
    const LAYOUT: Layout = match Layout::from_size_align(16 << 20, 4096) {
        Ok(l) => l,
        Err(_) => Layout::new::<u8>(),
    };

    fn new() -> Option<Self> {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        // INVARIANT: from the global allocator with `LAYOUT`.
        NonNull::new(p).map(|ptr| Arena { ptr })
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout (invariant) and not used after the
        // harness, which owns the arena, is gone.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::LAYOUT) }
    }
}

impl std::fmt::Debug for SimHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHarness")
            .field("mode", &self.mode)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SimHarness {
    /// A harness built as `cfg` says.
    pub fn new(cfg: SimConfig) -> Self {
        let sched = match cfg.mode {
            Mode::Deterministic(seed) => Some(Sched::new(seed, cfg.step_budget)),
            Mode::Threads => None,
        };
        SimHarness {
            ctx: Arc::new(Ctx {
                counters: Counters::default(),
                sched,
            }),
            machine: Machine::new(cfg.frames, cfg.swap_slots, cfg.translation_oracle),
            mode: cfg.mode,
            arena: OnceLock::new(),
        }
    }

    /// A deterministic harness: tasks run one at a time, scheduled by an RNG seeded
    /// with `seed`.
    pub fn deterministic(seed: u64) -> Self {
        Self::new(SimConfig::new(Mode::Deterministic(seed)))
    }

    /// A harness whose tasks are plain OS threads.
    pub fn threads() -> Self {
        Self::new(SimConfig::new(Mode::Threads))
    }

    /// How this harness runs tasks.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The seed of a deterministic harness.
    pub fn seed(&self) -> Option<u64> {
        self.ctx.sched.as_ref().map(Sched::seed)
    }

    /// A snapshot of the machine's counters.
    pub fn stats(&self) -> SimStats {
        self.machine.stats()
    }

    /// Deterministic mode: (scheduling points reached, hand-overs between tasks).
    pub fn schedule_counts(&self) -> (u64, u64) {
        self.ctx
            .sched
            .as_ref()
            .map_or((0, 0), |s| (s.points(), s.switches()))
    }

    /// Whether a deterministic run was declared a livelock (it exceeded the step
    /// budget).
    pub fn livelocked(&self) -> bool {
        self.ctx.sched.as_ref().is_some_and(Sched::exhausted)
    }

    /// Install (or, with `None`, remove) a callback that sees every [`SimEvent`] as it
    /// happens, on the thread that causes it. It may run under the machine's
    /// page-table lock: it must not call back into the harness.
    pub fn set_event_hook(&self, hook: Option<EventHook>) {
        self.machine.set_hook(hook);
    }

    /// Install `f` as the event hook (see [`set_event_hook`](Self::set_event_hook)).
    pub fn on_event(&self, f: impl Fn(&SimEvent) + Send + Sync + 'static) {
        self.machine.set_hook(Some(Arc::new(f)));
    }

    /// The content of the page mapped at `addr` of `mm` (a counter every write fault
    /// bumps; copies carry it), or `None` if it is not present.
    pub fn read(&self, mm: Mm, addr: usize) -> Option<u64> {
        self.enter();
        self.machine.read(mm, addr)
    }

    /// References held on `frame` (page-table entries and secondary MMUs'); 0 if it is
    /// not live.
    pub fn frame_refs(&self, frame: Frame) -> u32 {
        self.enter();
        self.machine.frame_refs(frame)
    }

    /// The reverse map of `frame`: every (address space, address) that maps it.
    pub fn mappers(&self, frame: Frame) -> Vec<(Mm, usize)> {
        self.enter();
        self.machine.mappers(frame)
    }

    /// Frames not allocated.
    pub fn free_frames(&self) -> usize {
        self.enter();
        self.machine.free_frames()
    }

    /// Whether the page at `addr` of `mm` is swapped out.
    pub fn is_swapped(&self, mm: Mm, addr: usize) -> bool {
        self.enter();
        self.machine.is_swapped(mm, addr)
    }

    /// Every harness call: bind this thread to the harness (its counters and its
    /// scheduler), and a scheduling point.
    fn enter(&self) {
        sched::bind(&self.ctx);
        sched::point();
    }
}

impl Harness for SimHarness {
    type P = SimPlatform;

    fn name(&self) -> &'static str {
        match self.mode {
            Mode::Deterministic(_) => "sim (deterministic)",
            Mode::Threads => "sim (threads)",
        }
    }

    fn lacks(&self, _cap: Cap) -> Option<&'static str> {
        None
    }

    fn create_mm(&self) -> Result<Mm, HarnessError> {
        self.enter();
        self.machine.create_mm()
    }

    fn address_space(&self, mm: Mm) -> &AddressSpace<SimPlatform> {
        self.enter();
        self.machine.address_space(mm)
    }

    fn teardown(&self, mm: Mm) {
        self.enter();
        self.machine.teardown(mm);
    }

    fn destroy_mm(&self, mm: Mm) {
        self.enter();
        self.machine.destroy_mm(mm);
    }

    fn map(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        self.enter();
        self.machine.map(mm, addr, len)
    }

    fn touch(&self, mm: Mm, addr: usize, write: bool) -> Result<Pte, HarnessError> {
        self.enter();
        self.machine.touch(mm, addr, write)
    }

    fn lookup(&self, mm: Mm, addr: usize) -> Option<Pte> {
        self.enter();
        self.machine.lookup(mm, addr)
    }

    fn unmap(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        self.enter();
        self.machine.unmap(mm, addr, len)
    }

    fn protect(&self, mm: Mm, addr: usize, len: usize, writable: bool) -> Result<(), HarnessError> {
        self.enter();
        self.machine.protect(mm, addr, len, writable)
    }

    fn migrate(&self, mm: Mm, addr: usize) -> Result<Pte, HarnessError> {
        self.enter();
        self.machine.migrate(mm, addr)
    }

    fn fork(&self, mm: Mm) -> Result<Mm, HarnessError> {
        self.enter();
        self.machine.fork(mm)
    }

    fn reclaim(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError> {
        self.enter();
        self.machine.reclaim(mm, addr, len)
    }

    fn reap(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError> {
        self.enter();
        self.machine.reap(mm, addr, len)
    }

    fn get_frame(&self, frame: Frame) -> bool {
        self.enter();
        self.machine.get_frame(frame)
    }

    fn put_frame(&self, frame: Frame) {
        self.enter();
        self.machine.put_frame(frame);
    }

    fn frame_live(&self, frame: Frame) -> bool {
        self.enter();
        self.machine.frame_live(frame)
    }

    fn translation_oracle(&self) -> Option<&'static str> {
        self.machine.translation_oracle()
    }

    fn check_translation(
        &self,
        mm: Mm,
        addr: usize,
        frame: Frame,
        write: bool,
    ) -> TranslationCheck {
        // No scheduling point: the caller holds its own lock and the answer is about
        // this instant (the view's lock is a leaf).
        sched::bind(&self.ctx);
        if self.machine.translation_oracle().is_some() {
            return TranslationCheck::NotChecked;
        }
        match self.machine.check_translation(mm, addr, frame, write) {
            Ok(()) => TranslationCheck::Current,
            Err(why) => TranslationCheck::Stale(why),
        }
    }

    fn run_concurrently(&self, tasks: &[&(dyn Fn() + Sync)]) {
        sched::bind(&self.ctx);
        sched::run_group(&self.ctx, tasks);
    }

    fn yield_now(&self) {
        sched::bind(&self.ctx);
        sched::spin();
    }

    fn arena(&self) -> Option<(NonNull<u8>, usize)> {
        self.enter();
        self.arena
            .get_or_init(Arena::new)
            .as_ref()
            .map(|a| (a.ptr, Arena::LAYOUT.size()))
    }

    fn export_registry(&self) -> Option<&ExportRegistry<SimPlatform>> {
        self.enter();
        Some(self.machine.exports())
    }

    fn bugs_reported(&self) -> usize {
        sched::bind(&self.ctx);
        self.ctx
            .counters
            .bugs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sleep_violations(&self) -> usize {
        sched::bind(&self.ctx);
        self.ctx
            .counters
            .sleep_violations
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
