//! The conformance suite's [`Harness`] on Hermit's real page tables.
//!
//! Hermit has one address space, and it chooses where memory goes, while the suite
//! maps at its own addresses. So each suite address space is a [`KernelMm`] with a
//! *window*: a virtual range reserved once with `sys_mmap` (no pages), whose changes
//! are reported to the suite at the suite's addresses; changes elsewhere (thread
//! stacks, the kernel heap) are not part of it. [`SPACES`] windows exist, so that many
//! suite address spaces live at once (C-12 uses two).
//!
//! * map: `sys_mprotect` page by page on the reserved range (Hermit maps and populates
//!   a page there, eagerly);
//! * unmap: `sys_mmu_unmap_pages` (the patch), page by page, freeing the frames;
//! * lookup: `sys_mmu_translate` (the patch);
//! * the oracle: a table of the frames this harness saw allocated, with a generation
//!   bumped when the kernel freed them (right after the unmap returns);
//! * a lock per window page, held by map, unmap, touch and lookup (Linux serialises changes of
//!   one page with its page-table lock; Hermit's kernel does not, and two tasks
//!   unmapping the same page would both free its frame, a double free that panics the
//!   kernel's frame allocator, while a touch racing an unmap would write to an
//!   unmapped page). It is held across the kernel's notifier calls, as Linux holds
//!   `mmap_lock` across them.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use backend_hermit::sys;
use backend_hermit::{HermitPlatform as P, KernelMm};
use notifier_conformance::harness::{Cap, Frame, Harness, HarnessError, Mm, Pte};
use notifier_core::AddressSpace;
use spin::mutex::SpinMutex;

use crate::{sys_join, sys_mmap, sys_mprotect, sys_spawn2, PAGE, PROT_READ, PROT_WRITE};

/// Where the suite maps (its `BASE`), and how much of it the window covers.
const SEEN: usize = 0x4000_0000;
const WINDOW: usize = 1 << 21;
/// Suite address spaces alive at once (one window each).
const SPACES: usize = 4;
const ARENA: usize = 16 << 20;
const FRAMES: usize = 2048;

#[derive(Clone, Copy)]
struct FrameEntry {
    pfn: u64,
    gen: u64,
    live: bool,
}

/// One window: reserved virtual memory a suite address space sees at `SEEN`.
struct Window {
    base: usize,
    /// The `KernelMm` (in kernel memory) using it, or 0.
    km: AtomicUsize,
    /// One lock per page (see the module documentation).
    locks: [AtomicBool; WINDOW / PAGE],
}

/// The Hermit harness.
pub struct HermitHarness {
    windows: [Window; SPACES],
    arena: usize,
    /// The oracle's table. Its lock spins without yielding, unlike every other wait
    /// here: it is taken under a page lock (lookup), and a task that yielded there
    /// while holding the page lock could hand its core to a task that loops without
    /// a scheduling point (C-09's remote importers do, while their translations hit),
    /// which then never gives it back, while the primary MMU on the other core waits
    /// for that page lock and so never invalidates the importers' translations (a
    /// livelock seen once in C-09). Its holders neither block nor yield, and Hermit
    /// does not preempt them, so waiting for one is waiting for another core.
    frames: SpinMutex<[FrameEntry; FRAMES], spin::relax::Spin>,
    next_gen: AtomicU64,
}

impl Window {
    /// Lock the pages of `[real, real + len)` (a range inside this window).
    fn lock(&self, real: usize, len: usize) -> PagesLocked<'_> {
        PagesLocked::new(&self.locks, (real - self.base) / PAGE, len / PAGE)
    }
}

/// Window pages `[first, first + n)` locked in ascending order (so two tasks locking
/// overlapping ranges cannot deadlock); unlocked when dropped.
struct PagesLocked<'a> {
    locks: &'a [AtomicBool],
}

impl<'a> PagesLocked<'a> {
    fn new(all: &'a [AtomicBool], first: usize, n: usize) -> Self {
        let locks = &all[first..first + n];
        for l in locks {
            while l
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                // Held by a task that may be on this core: let it run.
                P::yield_now();
            }
        }
        PagesLocked { locks }
    }
}

impl Drop for PagesLocked<'_> {
    fn drop(&mut self) {
        for l in self.locks.iter().rev() {
            l.store(false, Ordering::Release);
        }
    }
}

fn reserve(len: usize, prot: u32) -> Option<usize> {
    let mut p = core::ptr::null_mut();
    // SAFETY: `p` is a valid out-pointer.
    let r = unsafe { sys_mmap(len, prot, &mut p) };
    (r == 0 && !p.is_null()).then_some(p as usize)
}

fn translate(real: usize) -> Option<u64> {
    // SAFETY: only reads the page tables.
    let pa = unsafe { sys::sys_mmu_translate(real) };
    (pa != usize::MAX).then_some((pa / PAGE) as u64)
}

impl HermitHarness {
    /// Reserves the windows and the arena.
    pub fn new() -> Option<Self> {
        let mut bases = [0usize; SPACES];
        for b in &mut bases {
            *b = reserve(WINDOW, 0)?;
        }
        Some(HermitHarness {
            windows: bases.map(|base| Window {
                base,
                km: AtomicUsize::new(0),
                locks: [const { AtomicBool::new(false) }; WINDOW / PAGE],
            }),
            arena: reserve(ARENA, PROT_READ | PROT_WRITE)?,
            frames: SpinMutex::new(
                [FrameEntry {
                    pfn: 0,
                    gen: 0,
                    live: false,
                }; FRAMES],
            ),
            next_gen: AtomicU64::new(1),
        })
    }

    /// The window of `mm`.
    fn window(&self, mm: Mm) -> Result<&Window, HarnessError> {
        self.windows
            .iter()
            .find(|w| w.km.load(Ordering::Acquire) == mm)
            .ok_or(HarnessError::Failed("unknown address space"))
    }

    /// `[addr, addr + len)` of `mm`: its window and the real address of `addr`.
    fn real(&self, mm: Mm, addr: usize, len: usize) -> Result<(&Window, usize), HarnessError> {
        if addr < SEEN
            || addr + len > SEEN + WINDOW
            || !addr.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
        {
            return Err(HarnessError::Failed("outside the harness window"));
        }
        let w = self.window(mm)?;
        Ok((w, w.base + (addr - SEEN)))
    }

    fn km(&self, mm: Mm) -> &'static KernelMm {
        // SAFETY: `mm` is a pointer from `create_mm`, valid until `destroy_mm`, which
        // the suite calls only after its last use.
        unsafe { &*(mm as *const KernelMm) }
    }

    fn gen_of(&self, pfn: u64) -> u64 {
        let t = self.frames.lock();
        t.iter()
            .find(|e| e.pfn == pfn && e.live)
            .map_or(0, |e| e.gen)
    }

    fn born(&self, pfn: u64) {
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let mut t = self.frames.lock();
        let i = t
            .iter()
            .position(|e| e.pfn == pfn)
            .or_else(|| t.iter().position(|e| !e.live))
            .unwrap_or(0);
        t[i] = FrameEntry {
            pfn,
            gen,
            live: true,
        };
    }

    fn died(&self, pfn: u64) {
        let mut t = self.frames.lock();
        if let Some(e) = t.iter_mut().find(|e| e.pfn == pfn) {
            e.live = false;
        }
    }

    /// The entry of window page `real`; the caller holds the page's lock.
    fn entry(&self, real: usize) -> Option<Pte> {
        let pfn = translate(real)?;
        Some(Pte {
            frame: Frame {
                pfn,
                gen: self.gen_of(pfn),
            },
            writable: true,
        })
    }

    fn unmap_real(&self, w: &Window, real: usize, len: usize) -> Result<(), HarnessError> {
        let _locked = w.lock(real, len);
        let mut pfns = [0u64; WINDOW / PAGE];
        let n = len / PAGE;
        for (i, p) in pfns.iter_mut().enumerate().take(n) {
            *p = translate(real + i * PAGE).unwrap_or(u64::MAX);
        }
        // SAFETY: the range is inside this harness's reserved window.
        let r = unsafe { sys::sys_mmu_unmap_pages(real as *mut u8, len) };
        // The kernel freed the frames right after the invalidation ended.
        for (i, &p) in pfns.iter().enumerate().take(n) {
            if p != u64::MAX && translate(real + i * PAGE).is_none() {
                self.died(p);
            }
        }
        if r != 0 {
            return Err(HarnessError::Refused);
        }
        Ok(())
    }
}

unsafe extern "C" fn task_trampoline(arg: usize) {
    // SAFETY: `arg` points at a `&dyn Fn` that `run_concurrently` keeps alive until it
    // joined this task.
    let f = unsafe { &*(arg as *const &(dyn Fn() + Sync)) };
    f();
}

impl Harness for HermitHarness {
    type P = P;

    fn name(&self) -> &'static str {
        "hermit (patched hermit-kernel 0.11.0, QEMU, 2 CPUs)"
    }

    fn lacks(&self, cap: Cap) -> Option<&'static str> {
        match cap {
            Cap::Protect => {
                Some("Hermit's mprotect leaves entries writable (PROT_READ is not enforced)")
            }
            Cap::Migrate => Some("Hermit does not migrate pages"),
            Cap::Cow => Some("Hermit has no fork and no copy-on-write"),
            Cap::Reclaim => Some("Hermit has no reclaim, ageing or swap"),
            Cap::NonBlockingUnmap => {
                Some("Hermit has no unmap from a context that cannot sleep (no OOM reaper)")
            }
            Cap::FrameRefs => Some("Hermit frees a page at munmap whatever references others hold"),
            Cap::Concurrency | Cap::DirectCalls => None,
            // `Cap` may grow (`#[non_exhaustive]`): a case needing a capability this
            // harness predates is reported not applicable, never run blind.
            _ => Some("a capability this harness does not know"),
        }
    }

    fn create_mm(&self) -> Result<Mm, HarnessError> {
        // 1 marks a window taken while its `KernelMm` is made.
        let w = self
            .windows
            .iter()
            .find(|w| {
                w.km.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(HarnessError::Failed("every harness window is in use"))?;
        let layout = core::alloc::Layout::new::<KernelMm>();
        // SAFETY: a non-zero size and a power-of-two alignment.
        let p = unsafe { sys::sys_alloc(layout.size(), layout.align()) } as *mut KernelMm;
        if p.is_null() {
            w.km.store(0, Ordering::Release);
            return Err(HarnessError::Failed("out of kernel memory"));
        }
        // SAFETY: `p` is fresh memory for one `KernelMm`.
        unsafe { p.write(KernelMm::with_window(w.base, WINDOW, SEEN)) };
        // SAFETY: initialised above; lives until `destroy_mm`.
        let km: &'static KernelMm = unsafe { &*p };
        if km.attach().is_err() {
            // SAFETY: never attached: nobody else refers to it.
            unsafe {
                p.drop_in_place();
                sys::sys_dealloc(p.cast(), layout.size(), layout.align());
            }
            w.km.store(0, Ordering::Release);
            return Err(HarnessError::Failed("the kernel refused the hook"));
        }
        w.km.store(p as usize, Ordering::Release);
        Ok(p as usize)
    }

    fn address_space(&self, mm: Mm) -> &AddressSpace<P> {
        self.km(mm).address_space()
    }

    fn teardown(&self, mm: Mm) {
        self.km(mm).detach();
        if let Ok(w) = self.window(mm) {
            let _ = self.unmap_real(w, w.base, WINDOW);
        }
    }

    fn destroy_mm(&self, mm: Mm) {
        let p = mm as *mut KernelMm;
        let layout = core::alloc::Layout::new::<KernelMm>();
        // SAFETY: torn down (detached: the kernel no longer calls it) and the suite's
        // consumers have unregistered; the memory came from `sys_alloc` in `create_mm`.
        unsafe {
            p.drop_in_place();
            sys::sys_dealloc(p.cast(), layout.size(), layout.align());
        }
        if let Ok(w) = self.window(mm) {
            w.km.store(0, Ordering::Release);
        }
    }

    fn map(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        let (w, real) = self.real(mm, addr, len)?;
        let _locked = w.lock(real, len);
        for off in (0..len).step_by(PAGE) {
            // SAFETY: a page of the reserved window; mapping it is what the suite asked.
            if unsafe { sys_mprotect((real + off) as *mut u8, PAGE, PROT_READ | PROT_WRITE) } != 0 {
                return Err(HarnessError::Failed("sys_mprotect failed"));
            }
            if let Some(pfn) = translate(real + off) {
                self.born(pfn);
            }
        }
        Ok(())
    }

    fn touch(&self, mm: Mm, addr: usize, write: bool) -> Result<Pte, HarnessError> {
        let (w, real) = self.real(mm, addr, PAGE)?;
        let _locked = w.lock(real, PAGE);
        let Some(pte) = self.entry(real) else {
            return Err(HarnessError::Failed("not mapped"));
        };
        if write {
            // SAFETY: the page is mapped read-write (Hermit maps eagerly).
            unsafe { core::ptr::write_volatile(real as *mut u8, 1) };
        }
        Ok(pte)
    }

    fn lookup(&self, mm: Mm, addr: usize) -> Option<Pte> {
        let (w, real) = self.real(mm, addr, PAGE).ok()?;
        // Under the page's lock: a map in progress has the entry in the page table
        // before the oracle knows its frame was born.
        let _locked = w.lock(real, PAGE);
        self.entry(real)
    }

    fn unmap(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError> {
        let (w, real) = self.real(mm, addr, len)?;
        self.unmap_real(w, real, len)
    }

    fn protect(&self, _: Mm, _: usize, _: usize, _: bool) -> Result<(), HarnessError> {
        Err(HarnessError::Unsupported(
            self.lacks(Cap::Protect).unwrap_or(""),
        ))
    }

    fn migrate(&self, _: Mm, _: usize) -> Result<Pte, HarnessError> {
        Err(HarnessError::Unsupported(
            self.lacks(Cap::Migrate).unwrap_or(""),
        ))
    }

    fn fork(&self, _: Mm) -> Result<Mm, HarnessError> {
        Err(HarnessError::Unsupported(
            self.lacks(Cap::Cow).unwrap_or(""),
        ))
    }

    fn reclaim(&self, _: Mm, _: usize, _: usize) -> Result<usize, HarnessError> {
        Err(HarnessError::Unsupported(
            self.lacks(Cap::Reclaim).unwrap_or(""),
        ))
    }

    fn reap(&self, _: Mm, _: usize, _: usize) -> Result<usize, HarnessError> {
        Err(HarnessError::Unsupported(
            self.lacks(Cap::NonBlockingUnmap).unwrap_or(""),
        ))
    }

    fn get_frame(&self, _: Frame) -> bool {
        false
    }

    fn put_frame(&self, _: Frame) {}

    fn frame_live(&self, frame: Frame) -> bool {
        let t = self.frames.lock();
        t.iter()
            .any(|e| e.pfn == frame.pfn && e.live && (frame.gen == 0 || e.gen == frame.gen))
    }

    fn run_concurrently(&self, tasks: &[&(dyn Fn() + Sync)]) {
        // In batches of 16: each task is joined before its batch's slice is left.
        for batch in tasks.chunks(16) {
            self.run_batch(batch);
        }
    }

    fn yield_now(&self) {
        P::yield_now();
    }

    fn arena(&self) -> Option<(NonNull<u8>, usize)> {
        NonNull::new(self.arena as *mut u8).map(|p| (p, ARENA))
    }

    fn bugs_reported(&self) -> usize {
        P::bugs()
    }

    fn sleep_violations(&self) -> usize {
        P::sleep_violations()
    }
}

/// The core task `i` of a batch runs on. Hermit never preempts a task for another of
/// the same priority, so tasks that share a core take turns only where one yields.
/// The suite's first task is the primary MMU, whose progress ends every case
/// (it sets the others' `stop`), while the other tasks may loop without a scheduling
/// point once their translations are cached (C-09's shadow MMU and remote importers
/// hit in their tables and never yield). So the first task gets a core of its own and
/// the others share the remaining ones; with one core, all share it.
fn core_for(i: usize, cpus: usize) -> usize {
    match (i, cpus) {
        (_, 0 | 1) | (0, _) => 0,
        _ => 1 + (i - 1) % (cpus - 1),
    }
}

impl HermitHarness {
    fn run_batch(&self, tasks: &[&(dyn Fn() + Sync)]) {
        let cpus = P::processors().max(1);
        let mut ids = [0i32; 16];
        for (i, t) in tasks.iter().enumerate().take(ids.len()) {
            // SAFETY: `t` outlives the task: it is joined below before returning.
            ids[i] = unsafe {
                sys_spawn2(
                    task_trampoline,
                    t as *const &(dyn Fn() + Sync) as usize,
                    8,
                    0x20000,
                    core_for(i, cpus) as isize,
                )
            };
        }
        for &id in ids.iter().take(tasks.len().min(16)) {
            if id >= 0 {
                // SAFETY: a task spawned above.
                unsafe { sys_join(id) };
            }
        }
    }
}
