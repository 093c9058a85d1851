//! A ready-made [`Platform`] for hosted Rust (feature `std`): threads, a parking table
//! for the address-keyed wait, the global allocator, and checks that count what a
//! kernel would warn about (sleeping in a non-blockable region, subscriber bugs).
//!
//! It is what the unit tests, the documentation examples and the benchmarks use; the
//! simulator has its own platform with a deterministic scheduler.
//!
//! # The read side
//!
//! As liburcu does for registered threads, the platform gives each thread a reader slot
//! of its own ([`ReaderSlot::Owned`]) from a registry of `SLOTS - 1` slots, taken on
//! the thread's first read-side section and given back when the thread exits; threads
//! beyond share the last slot. A read-side section then takes no locked instruction:
//! a plain increment, barrier B, and a release increment on exit.
//!
//! # The barriers
//!
//! On a Linux host that has `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Linux 4.14
//! and later) the barriers are asymmetric, as liburcu's `urcu-memb` flavour: the read
//! side's [`reader_barrier`](Platform::reader_barrier) is a compiler fence only, and
//! every grace period's [`writer_barrier`](Platform::writer_barrier) is the system
//! call, which makes each CPU that runs a thread of this process execute a full barrier
//! before it returns. That is what a full fence on each side would order: a reader
//! whose counter store the grace period misses stored it after its CPU's barrier, so
//! its later loads see what the writer stored before the call. The read side is where
//! the time goes (every invalidation takes one section: the fence after its counter
//! update drains the store buffer, which then holds the invalidation's own stores, and
//! was half of a start + end with one subscriber); the grace periods pay a system call
//! instead, and interrupt the CPUs that run this process's threads right then.
//!
//! The zombie sweep at an invalidation's end may issue a writer barrier too, so the
//! system call can run inside a non-blockable region; it may wait briefly in the host
//! kernel, but it never waits for this process's own tasks, which is what a
//! non-blockable region forbids (and what [`StdPlatform::sleep_violations`] counts).
//!
//! The choice is made once per process, on the first read-side section or grace
//! period, and never changes: elsewhere (other hosts, Miri, a kernel without the
//! command) both barriers are full fences. A reader that ran before the choice used a
//! full fence, which pairs with either kind of writer barrier.
//! [`StdPlatform::asymmetric_barriers`] says which was chosen; `NOTIFIER_MEMBARRIER=0`
//! in the environment keeps the full fences.
//!
//! A thread's slot says which (a [light](OwnedSlot::light) owned slot, made after the
//! choice of `membarrier`), so that a section asks one thread-local byte for both and
//! the core issues the compiler fence itself. Under full fences a thread counts in the
//! slot it claimed with atomic increments, as a shared slot (no thread owns one then):
//! what such a section costs is its fence, and the slot of its own keeps the threads
//! off one cache line.

extern crate std;

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;
use std::sync::{Condvar, Mutex};

use crate::primitive::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use crate::srcu::{OwnedSlot, ReaderCounts, ReaderSlot, Srcu, SLOTS};
use crate::{Bug, Platform, RawLock};

/// How the barriers pair in this process (see [the barriers](self#the-barriers)):
/// `UNDECIDED` until the first read-side section or grace period, then `MEMBARRIER` or
/// `FENCES` for good.
static BARRIERS: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const FENCES: u8 = 2;

/// The heavy barrier, on Linux hosts.
#[cfg(all(target_os = "linux", not(miri)))]
mod membarrier {
    // From the kernel's `include/uapi/linux/membarrier.h`.
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: `membarrier(cmd, flags = 0, cpu_id = 0)` reads and writes no memory of
        // ours; every argument is a plain integer.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Register the process for private expedited barriers; false where the host
    /// kernel lacks them (no system call: `ENOSYS`; Linux 4.3 to 4.13, no such
    /// command: `EINVAL`).
    pub(super) fn register() -> bool {
        call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// A full barrier on every CPU that runs a thread of this process. Only after
    /// `register` succeeded (the registration belongs to the address space: threads
    /// share it, a child of `fork` inherits it, `exec` drops it with everything else).
    pub(super) fn private_expedited() {
        if call(CMD_PRIVATE_EXPEDITED) != 0 {
            // Cannot fail once registered (membarrier(2)); were it to, readers that
            // trusted it would go unordered: stop rather than free memory under them.
            std::eprintln!("notifier-core: membarrier failed after registration");
            std::process::abort();
        }
    }
}

#[cfg(not(all(target_os = "linux", not(miri))))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }
    pub(super) fn private_expedited() {
        unreachable!("never registered")
    }
}

/// Decide how the barriers pair, once per process; returns the decision. The
/// environment variable `NOTIFIER_MEMBARRIER=0` keeps full fences (to compare, or to
/// test that pairing on a host that has `membarrier`).
#[cold]
fn decide_barriers() -> u8 {
    let off = std::env::var_os("NOTIFIER_MEMBARRIER").is_some_and(|v| v == "0");
    let mode = if !off && membarrier::register() {
        MEMBARRIER
    } else {
        FENCES
    };
    // Release: a thread that reads MEMBARRIER also sees that the process is registered.
    match BARRIERS.compare_exchange(UNDECIDED, mode, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => mode,
        Err(decided) => decided,
    }
}

/// The decision, made now if it was not yet.
fn barriers() -> u8 {
    match BARRIERS.load(Ordering::Acquire) {
        UNDECIDED => decide_barriers(),
        decided => decided,
    }
}

/// The hosted platform.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdPlatform;

static RCU: Srcu<StdPlatform> = Srcu::new();
static UNSUBSCRIBED: ReaderCounts = ReaderCounts::new();
static NEXT_TASK: AtomicUsize = AtomicUsize::new(1);
static SLEEP_VIOLATIONS: AtomicUsize = AtomicUsize::new(0);
static REFUSED_WHILE_BLOCKABLE: AtomicUsize = AtomicUsize::new(0);
static DROP_IN_CALLBACK: AtomicUsize = AtomicUsize::new(0);
static OTHER_BUGS: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    static TASK: usize = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
    static NON_BLOCK: Cell<usize> = const { Cell::new(0) };
    /// Depth of the invalidation map this thread holds (lock-validator annotation).
    static INVALIDATION_MAP: Cell<usize> = const { Cell::new(0) };
    /// Waits for invalidations this thread announced, and those announced while it
    /// held the invalidation map (a validator would report those as a deadlock).
    static WAITS: WaitAnnotations = WaitAnnotations(std::sync::Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]));
    static TASK_STATE: crate::task::TaskState = const { crate::task::TaskState::new() };
    /// The thread's claim on a reader slot, taken on first use and given back at thread
    /// exit.
    static READER_SLOT: SlotClaim = SlotClaim::claim();
    /// What every read-side section reads (a plain thread-local byte, no lazy state):
    /// `UNCLAIMED` until the thread's first section, then the index its claim owns
    /// (with `FENCED` set when the process keeps full fences), or `SHARED_SLOT` (no
    /// slot was free, or the claim was given back at thread exit).
    static SLOT_INDEX: Cell<u8> = const { Cell::new(UNCLAIMED) };
}

/// `SLOT_INDEX` before the thread's first read-side section.
const UNCLAIMED: u8 = u8::MAX;

/// Set in `SLOT_INDEX` beside a claimed index when the process keeps full fences: the
/// thread then counts in its slot as a shared one (atomic increments; the fence is what
/// a section costs there), so that an index alone, below `SHARED_SLOT`, says both that
/// the slot is owned and that the read-side barrier is a compiler fence, and the fast
/// path's one compare decides both (`OwnedSlot::light`).
const FENCED: u8 = 0x40;

/// Reader slots owned by a thread: bit `i` set while a thread owns slot `i`. Slot
/// `SLOTS - 1` is never owned: it is the shared slot of the threads that found every
/// other taken (and of a thread whose claim is already destroyed at its exit).
static SLOT_OWNERS: AtomicU32 = AtomicU32::new(0);
const SHARED_SLOT: usize = SLOTS - 1;

/// One thread's claim on an owned reader slot.
///
/// # Invariants
///
/// `Some(i)`: bit `i` of `SLOT_OWNERS` was set by this claim, `i < SHARED_SLOT`, and is
/// cleared only by its drop, on the thread that made the claim. The thread's
/// `SLOT_INDEX` is `i` (the process chose `membarrier` before the claim) or
/// `i | FENCED` (it chose full fences) from the claim until the drop, which sets it to
/// `SHARED_SLOT` before it clears the bit; it is never below `SHARED_SLOT`, nor
/// `FENCED` with an index below `SHARED_SLOT`, otherwise.
struct SlotClaim(Option<OwnedSlot>);

impl SlotClaim {
    fn claim() -> Self {
        // The thread's first read-side section: choose the barriers now, so that this
        // and later sections can take the light one. The choice never changes.
        let fenced = if barriers() == MEMBARRIER { 0 } else { FENCED };
        let mut cur = SLOT_OWNERS.load(Ordering::Relaxed);
        loop {
            let free = !cur & ((1u32 << SHARED_SLOT) - 1);
            if free == 0 {
                SLOT_INDEX.with(|c| c.set(SHARED_SLOT as u8));
                return SlotClaim(None);
            }
            let i = free.trailing_zeros();
            // Acquire: the previous owner's counts (given back with release) are seen
            // before this thread's first plain increment builds on them.
            match SLOT_OWNERS.compare_exchange_weak(
                cur,
                cur | (1 << i),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                // SAFETY: the bit is ours until the drop clears it: no other thread is
                // handed this index, the shared slot is `SHARED_SLOT` (never owned), the
                // hand-over is the release clear and the acquire set, and the core never
                // counts from a signal handler on this platform.
                Ok(_) => {
                    SLOT_INDEX.with(|c| c.set(i as u8 | fenced));
                    return SlotClaim(unsafe { OwnedSlot::new(i as usize) });
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// The thread's first read-side section: take a slot. Returns `SLOT_INDEX` afterwards:
/// the claim's (see `SlotClaim::claim`), or `UNCLAIMED` if the claim cannot be made
/// (the thread is exiting), and the section counts in the shared slot. An index and not
/// a `ReaderSlot`: the hot path's index then stays in a register (a returned enum came
/// back through memory, and the fast path paid for its stores).
#[cold]
#[inline(never)]
fn reader_slot_slow() -> u8 {
    let _ = READER_SLOT.try_with(|_| ());
    SLOT_INDEX.with(Cell::get)
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            // From now on this thread counts in the shared slot (a later section in
            // another thread-local's destructor, say).
            SLOT_INDEX.with(|c| c.set(SHARED_SLOT as u8));
            // Release: the next owner sees this thread's last counts.
            SLOT_OWNERS.fetch_and(!(1u32 << o.index()), Ordering::Release);
        }
    }
}

const BUCKETS: usize = 64;
struct Bucket {
    m: Mutex<()>,
    cv: Condvar,
}
#[allow(clippy::declare_interior_mutable_const)]
const BUCKET: Bucket = Bucket {
    m: Mutex::new(()),
    cv: Condvar::new(),
};
static PARK: [Bucket; BUCKETS] = [BUCKET; BUCKETS];

fn bucket(word: &AtomicU32) -> &'static Bucket {
    let a = (word as *const AtomicU32).addr();
    &PARK[(a >> 2).wrapping_mul(0x9E37_79B9) % BUCKETS]
}

/// A test-and-test-and-set spin lock that yields the CPU after a while.
#[derive(Debug)]
pub struct StdRawLock(AtomicBool);

// SAFETY: `lock` returns only after swapping `false` to `true` with acquire ordering;
// `unlock` stores `false` with release ordering.
unsafe impl RawLock for StdRawLock {
    fn new() -> Self {
        StdRawLock(AtomicBool::new(false))
    }
    fn lock(&self) {
        let mut spins = 0u32;
        loop {
            if !self.0.swap(true, Ordering::Acquire) {
                return;
            }
            while self.0.load(Ordering::Relaxed) {
                spins += 1;
                if spins > 100 {
                    std::thread::yield_now();
                } else {
                    core::hint::spin_loop();
                }
            }
        }
    }
    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl StdPlatform {
    /// How many times `might_sleep` was called inside a non-blockable region, in this
    /// process: a callback that may sleep was called with `blockable == false` (C-08).
    /// Counted in builds with debug assertions only (see [`Platform::might_sleep`]'s
    /// implementation here); always 0 in release builds.
    pub fn sleep_violations() -> usize {
        SLEEP_VIOLATIONS.load(Ordering::Relaxed)
    }

    /// How many [`Bug`]s of kind `bug` subscribers committed, in this process.
    pub fn bugs(bug: Bug) -> usize {
        match bug {
            Bug::RefusedWhileBlockable => REFUSED_WHILE_BLOCKABLE.load(Ordering::Relaxed),
            Bug::DropInCallback => DROP_IN_CALLBACK.load(Ordering::Relaxed),
            _ => OTHER_BUGS.load(Ordering::Relaxed),
        }
    }

    /// Whether this process pairs a compiler fence on the read side with `membarrier` in
    /// grace periods (true), or uses full fences on both sides (see
    /// [the barriers](self#the-barriers)). Decides now if nothing did yet.
    ///
    /// ```
    /// use notifier_core::std_platform::StdPlatform;
    /// // Asymmetric on a Linux host with `membarrier`, never under Miri.
    /// let asymmetric = StdPlatform::asymmetric_barriers();
    /// assert_eq!(asymmetric, StdPlatform::asymmetric_barriers()); // fixed once chosen
    /// ```
    pub fn asymmetric_barriers() -> bool {
        barriers() == MEMBARRIER
    }

    /// Whether the current thread is inside a non-blockable region.
    #[inline]
    pub fn in_non_block() -> bool {
        NON_BLOCK.with(|c| c.get() != 0)
    }

    /// Whether the current thread holds the invalidation map: it runs the callbacks of
    /// an invalidation's start or end ([`Platform::invalidation_map_acquire`]). Tracked
    /// in debug builds only (always false otherwise).
    pub fn in_invalidation_map() -> bool {
        INVALIDATION_MAP.with(|c| c.get() != 0)
    }

    /// On the current thread: how many waits for invalidations the core announced
    /// ([`Platform::may_wait_for_invalidations`]), and how many of them while the
    /// thread held the invalidation map. A lock validator (Linux's lockdep) would
    /// report each of the latter as a deadlock; a hosted run just counts them.
    pub fn wait_annotations() -> (usize, usize) {
        WAITS.with(|w| w.get())
    }

    /// The current thread's counts of [`wait_annotations`](Self::wait_annotations),
    /// readable from another thread (a test that keeps an invalidation in flight until
    /// the waiter has announced its wait).
    pub fn wait_annotations_of_this_thread() -> WaitAnnotations {
        WAITS.with(|w| w.clone())
    }
}

/// One thread's counts of announced waits for invalidations (see
/// [`StdPlatform::wait_annotations_of_this_thread`]).
#[derive(Clone, Debug)]
pub struct WaitAnnotations(std::sync::Arc<[AtomicUsize; 2]>);

impl WaitAnnotations {
    /// Waits announced, and those announced while the thread held the invalidation map.
    pub fn get(&self) -> (usize, usize) {
        (
            self.0[0].load(Ordering::SeqCst),
            self.0[1].load(Ordering::SeqCst),
        )
    }
}

// SAFETY: the global allocator, one static SRCU domain and one static set of unsubscribed counters, a thread-local task state, owned reader slots from a registry that hands each index to one live thread at a time (`SlotClaim`), and barriers that order as full fences on both sides do (full fences, or a compiler fence against `membarrier`, chosen once per process: `BARRIERS`): the promises of `Platform`.
unsafe impl Platform for StdPlatform {
    type RawLock = StdRawLock;
    type Rcu = Srcu<StdPlatform>;

    fn rcu() -> &'static Srcu<StdPlatform> {
        &RCU
    }

    #[inline]
    fn slot() -> usize {
        TASK.with(|t| *t)
    }

    #[inline]
    fn unsubscribed() -> &'static ReaderCounts {
        &UNSUBSCRIBED
    }

    /// An owned slot from the registry (see the [module docs](self)), light once the
    /// process chose `membarrier`, or the shared one.
    #[inline]
    fn reader_slot() -> ReaderSlot {
        let mut i = SLOT_INDEX.with(Cell::get);
        if usize::from(i) < SHARED_SLOT {
            // SAFETY: `SLOT_INDEX` is an index below `SHARED_SLOT` only while this
            // thread's `SlotClaim` owns that index, made after the process chose
            // `membarrier` (its invariant): the claim's promise, and `reader_barrier`
            // is a compiler fence for good (the choice never changes).
            if let Some(o) = unsafe { OwnedSlot::new_light(usize::from(i)) } {
                return ReaderSlot::Owned(o);
            }
        }
        if i == UNCLAIMED {
            i = reader_slot_slow();
            if usize::from(i) < SHARED_SLOT {
                // SAFETY: as above.
                if let Some(o) = unsafe { OwnedSlot::new_light(usize::from(i)) } {
                    return ReaderSlot::Owned(o);
                }
            }
        }
        if i & FENCED != 0 && usize::from(i & !FENCED) < SHARED_SLOT {
            // Full fences: the thread's own slot, counted with atomic increments (what a
            // section costs is the fence; its own slot keeps threads off one line). No
            // thread is handed an owned slot then, so sharing it breaks no promise.
            return ReaderSlot::Shared(usize::from(i & !FENCED));
        }
        ReaderSlot::Shared(SHARED_SLOT)
    }

    #[inline]
    fn current_task() -> usize {
        TASK.with(|t| *t)
    }

    /// A thread-local: no table, no limit on threads.
    #[inline]
    fn with_task_state<R>(f: impl FnOnce(&crate::task::TaskState) -> R) -> R {
        TASK_STATE.with(f)
    }

    fn wait(word: &AtomicU32, expected: u32) {
        let b = bucket(word);
        let g = b.m.lock().unwrap_or_else(|e| e.into_inner());
        if word.load(Ordering::SeqCst) == expected {
            // A timeout bounds the damage of a lost wake-up in a buggy caller.
            let _ =
                b.cv.wait_timeout(g, std::time::Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wake_all(word: &AtomicU32) {
        let b = bucket(word);
        drop(b.m.lock().unwrap_or_else(|e| e.into_inner()));
        b.cv.notify_all();
    }

    fn relax() {
        std::thread::yield_now();
    }

    /// Checked in debug builds only, as Linux checks `might_sleep` only with
    /// `CONFIG_DEBUG_ATOMIC_SLEEP`: release builds, which the benchmarks use, pay nothing
    /// for it (it was two thread-local loads and two branches per invalidation). The
    /// non-blockable depth is kept in every build.
    #[inline]
    fn might_sleep() {
        if cfg!(debug_assertions) && Self::in_non_block() {
            SLEEP_VIOLATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    fn non_block_start() {
        NON_BLOCK.with(|c| c.set(c.get() + 1));
    }

    #[inline]
    fn non_block_end() {
        NON_BLOCK.with(|c| c.set(c.get().saturating_sub(1)));
    }

    /// Counted in debug builds only (as a kernel's lock validator is a debug option):
    /// release builds, which the benchmarks use, pay nothing for it.
    #[inline]
    fn invalidation_map_acquire() {
        if cfg!(debug_assertions) {
            INVALIDATION_MAP.with(|c| c.set(c.get() + 1));
        }
    }

    #[inline]
    fn invalidation_map_release() {
        if cfg!(debug_assertions) {
            INVALIDATION_MAP.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }

    fn may_wait_for_invalidations() {
        let held = Self::in_invalidation_map() as usize;
        WAITS.with(|w| {
            w.0[1].fetch_add(held, Ordering::SeqCst);
            w.0[0].fetch_add(1, Ordering::SeqCst);
        });
    }

    /// A compiler fence where grace periods use `membarrier`, else a full fence (see
    /// [the barriers](self#the-barriers)).
    #[inline]
    fn reader_barrier() {
        if BARRIERS.load(Ordering::Relaxed) == MEMBARRIER {
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            core::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    /// A full fence, then, where the host has it, `membarrier`: every reader of this
    /// process that runs right now executes a full barrier too (see
    /// [the barriers](self#the-barriers)).
    fn writer_barrier() {
        core::sync::atomic::fence(Ordering::SeqCst);
        if barriers() == MEMBARRIER {
            membarrier::private_expedited();
        }
    }

    fn report_bug(bug: Bug) {
        match bug {
            Bug::RefusedWhileBlockable => REFUSED_WHILE_BLOCKABLE.fetch_add(1, Ordering::Relaxed),
            Bug::DropInCallback => DROP_IN_CALLBACK.fetch_add(1, Ordering::Relaxed),
            _ => OTHER_BUGS.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn alloc(layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the layout is that of a non-zero-sized type.
        NonNull::new(unsafe { std::alloc::alloc(layout) })
    }

    unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: caller's contract: from `alloc` with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}
