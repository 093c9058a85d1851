//! Who runs when: the per-thread context, the deterministic scheduler, and the lock the
//! simulated machine is built from.
//!
//! # Two ways to run
//!
//! * **Threads**: tasks are plain OS threads running in parallel; a scheduling point is
//!   `std::thread::yield_now` at most.
//! * **Deterministic**: tasks are still OS threads, but only the one holding the
//!   *token* runs. At every scheduling point (every harness call, [`Platform::relax`],
//!   [`Platform::wait`], spinning on a lock, `yield_now`) the scheduler's seeded RNG
//!   picks which runnable task gets the token next. Given the seed and the same program,
//!   the interleaving is the same, so a race found is replayed from its seed.
//!
//! A task never blocks its OS thread while holding the token except on the scheduler's
//! own mutex: every lock of the machine and of the platform spins through scheduling
//! points, and `wait` marks the task as waiting and hands the token on. A core
//! spin-wait therefore cannot deadlock the scheduler.
//!
//! Which scheduler (and which counters) a thread belongs to is a thread-local, set by
//! the harness on every call and by [`run_group`] in the threads it spawns, so several
//! harnesses in one process (parallel `cargo test`) do not interfere.
//!
//! [`Platform::relax`]: notifier_core::Platform::relax
//! [`Platform::wait`]: notifier_core::Platform::wait

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::rng::Rng;

/// What one harness counts on behalf of the platform (whose functions are static).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// [`Platform::report_bug`](notifier_core::Platform::report_bug) calls.
    pub(crate) bugs: AtomicUsize,
    /// `might_sleep` inside a non-blockable region.
    pub(crate) sleep_violations: AtomicUsize,
}

/// The context a thread runs in: the counters of its harness and, in deterministic
/// mode, its scheduler.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) counters: Counters,
    pub(crate) sched: Option<Sched>,
}

/// Counters of threads that never called a harness (they cannot be attributed).
static UNBOUND: Counters = Counters {
    bugs: AtomicUsize::new(0),
    sleep_violations: AtomicUsize::new(0),
};
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CTX: RefCell<Option<Arc<Ctx>>> = const { RefCell::new(None) };
    /// The deterministic task id of this thread in its scheduler; 0: not a task.
    static TASK: Cell<usize> = const { Cell::new(0) };
    static THREAD_ID: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static NON_BLOCK: Cell<usize> = const { Cell::new(0) };
}

/// A non-zero id of the current thread, unique in the process.
pub(crate) fn thread_id() -> usize {
    THREAD_ID.with(|t| *t)
}

/// Make `ctx` the current thread's context (cheap if it already is).
pub(crate) fn bind(ctx: &Arc<Ctx>) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if !c.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, ctx)) {
            *c = Some(ctx.clone());
        }
    });
}

fn current() -> Option<Arc<Ctx>> {
    CTX.with(|c| c.borrow().clone())
}

/// Run `f` on the counters of the current thread's harness.
pub(crate) fn with_counters<R>(f: impl FnOnce(&Counters) -> R) -> R {
    match current() {
        Some(ctx) => f(&ctx.counters),
        None => f(&UNBOUND),
    }
}

/// The current thread's deterministic task: its context and id.
fn det_task() -> Option<(Arc<Ctx>, usize)> {
    let id = TASK.with(|t| t.get());
    if id == 0 {
        return None;
    }
    current().filter(|c| c.sched.is_some()).map(|c| (c, id))
}

/// Whether the current thread is inside a non-blockable region.
pub(crate) fn in_non_block() -> bool {
    NON_BLOCK.with(|c| c.get() != 0)
}

/// Enter a non-blockable region.
pub(crate) fn non_block_enter() {
    NON_BLOCK.with(|c| c.set(c.get() + 1));
}

/// Leave a non-blockable region.
pub(crate) fn non_block_exit() {
    NON_BLOCK.with(|c| c.set(c.get().saturating_sub(1)));
}

/// A scheduling point: in a deterministic task the RNG picks who runs next; elsewhere
/// nothing happens.
pub(crate) fn point() {
    if let Some((ctx, me)) = det_task() {
        if let Some(s) = &ctx.sched {
            s.point(me, false);
        }
    }
}

/// A scheduling point in a polling loop: as [`point`], and a real yield for threads.
pub(crate) fn spin() {
    match det_task() {
        Some((ctx, me)) => {
            if let Some(s) = &ctx.sched {
                s.point(me, true);
            }
        }
        None => std::thread::yield_now(),
    }
}

/// [`Platform::wait`](notifier_core::Platform::wait).
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    match det_task() {
        Some((ctx, me)) => {
            if let Some(s) = &ctx.sched {
                s.wait(me, word, expected);
            }
        }
        None => park(word, expected),
    }
}

/// [`Platform::wake_all`](notifier_core::Platform::wake_all): wakes both deterministic
/// waiters of the caller's scheduler and parked threads (which may belong to another
/// harness sharing the same word, e.g. the one global SRCU domain).
pub(crate) fn wake_all(word: &AtomicU32) {
    if let Some(ctx) = current() {
        if let Some(s) = &ctx.sched {
            s.wake(word);
        }
    }
    unpark(word);
}

// --- Parking for threads outside a deterministic scheduler -----------------------

const BUCKETS: usize = 64;
struct Bucket {
    m: Mutex<()>,
    cv: Condvar,
}
static PARK: [Bucket; BUCKETS] = [const {
    Bucket {
        m: Mutex::new(()),
        cv: Condvar::new(),
    }
}; BUCKETS];

fn bucket(word: &AtomicU32) -> &'static Bucket {
    let a = (word as *const AtomicU32).addr();
    &PARK[(a >> 2).wrapping_mul(0x9E37_79B9) % BUCKETS]
}

fn park(word: &AtomicU32, expected: u32) {
    let b = bucket(word);
    let g = b.m.lock().unwrap_or_else(|e| e.into_inner());
    if word.load(Ordering::SeqCst) == expected {
        // Bounded, like a futex with a timeout: a waiter whose waker belongs to a
        // deterministic scheduler still makes progress. Never a correctness input.
        let _ =
            b.cv.wait_timeout(g, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner());
    }
}

fn unpark(word: &AtomicU32) {
    let b = bucket(word);
    drop(b.m.lock().unwrap_or_else(|e| e.into_inner()));
    b.cv.notify_all();
}

// --- The deterministic scheduler ---------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Runnable,
    /// Sleeping in `wait` on the word at this address.
    Waiting(usize),
    /// Waiting for the tasks of a group it spawned.
    Joining,
}

#[derive(Debug)]
struct Task {
    state: TaskState,
}

#[derive(Debug)]
struct Group {
    remaining: usize,
    joiner: Option<usize>,
}

#[derive(Debug)]
struct State {
    rng: Rng,
    /// The task holding the token; 0: none.
    running: usize,
    tasks: BTreeMap<usize, Task>,
    groups: BTreeMap<usize, Group>,
    next_task: usize,
    next_group: usize,
    /// Scheduling points since the outermost group started.
    steps: u64,
    /// Voluntary scheduling points the running task may still pass without a switch.
    quantum: u64,
    runnable: Vec<usize>,
}

/// A seeded scheduler that lets one task run at a time.
///
/// # Invariants
///
/// `running` is 0 or the id of a task in `tasks` whose state is `Runnable`; only the
/// thread of that task runs simulated code (the others wait on `cv`).
#[derive(Debug)]
pub(crate) struct Sched {
    seed: u64,
    st: Mutex<State>,
    cv: Condvar,
    budget: u64,
    switches: AtomicU64,
    points: AtomicU64,
    exhausted: AtomicBool,
}

impl Sched {
    /// A scheduler with no task; `budget` scheduling points per outermost group before
    /// it declares a livelock.
    pub(crate) fn new(seed: u64, budget: u64) -> Self {
        Sched {
            seed,
            st: Mutex::new(State {
                rng: Rng::new(seed),
                running: 0,
                tasks: BTreeMap::new(),
                groups: BTreeMap::new(),
                next_task: 1,
                next_group: 1,
                steps: 0,
                quantum: 0,
                runnable: Vec::new(),
            }),
            cv: Condvar::new(),
            budget,
            switches: AtomicU64::new(0),
            points: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
        }
    }

    /// The seed this scheduler was made with.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Token hand-overs between different tasks so far.
    pub(crate) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Scheduling points reached by tasks so far.
    pub(crate) fn points(&self) -> u64 {
        self.points.load(Ordering::Relaxed)
    }

    /// Whether a run ever exceeded the step budget (a livelock was declared).
    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Choose the next task to run after `me` (0: nobody in particular) reached a
    /// scheduling point. A voluntary point keeps `me` running until its quantum is
    /// used up; a forced one (`me` spins on something another task must do, or sleeps) prefers
    /// any other runnable task. Waiting tasks are woken spuriously now and then (a
    /// futex with a timeout), and all of them when nothing else can run.
    fn pick(st: &mut State, me: usize, forced: bool) -> usize {
        let me_runnable = st
            .tasks
            .get(&me)
            .is_some_and(|t| t.state == TaskState::Runnable);
        if me_runnable && !forced && st.quantum > 0 {
            st.quantum -= 1;
            return me;
        }
        // The next task runs for a quantum of voluntary points drawn log-uniformly
        // from 0..64: short quanta interleave finely, long ones let a task finish a
        // whole operation inside another's window.
        let bits = st.rng.below(7);
        st.quantum = st.rng.below(1 << bits);
        let next = Self::pick_any(st, me);
        if next == 0 && me_runnable {
            return me;
        }
        next
    }

    /// A runnable task other than `me` if there is one, else any runnable task.
    fn pick_any(st: &mut State, me: usize) -> usize {
        let waiting = st
            .tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Waiting(_)))
            .count();
        if waiting > 0 && st.rng.below(256) == 0 {
            let k = st.rng.below(waiting as u64) as usize;
            if let Some(t) = st
                .tasks
                .values_mut()
                .filter(|t| matches!(t.state, TaskState::Waiting(_)))
                .nth(k)
            {
                t.state = TaskState::Runnable;
            }
        }
        let mut runnable = std::mem::take(&mut st.runnable);
        runnable.clear();
        runnable.extend(
            st.tasks
                .iter()
                .filter(|(_, t)| t.state == TaskState::Runnable)
                .map(|(id, _)| *id),
        );
        if runnable.is_empty() && waiting > 0 {
            for t in st.tasks.values_mut() {
                if matches!(t.state, TaskState::Waiting(_)) {
                    t.state = TaskState::Runnable;
                }
            }
            runnable.extend(
                st.tasks
                    .iter()
                    .filter(|(_, t)| t.state == TaskState::Runnable)
                    .map(|(id, _)| *id),
            );
        }
        if runnable.len() > 1 {
            runnable.retain(|&id| id != me);
        }
        let next = if runnable.is_empty() {
            0
        } else {
            runnable[st.rng.below(runnable.len() as u64) as usize]
        };
        st.runnable = runnable;
        next
    }

    /// Hand the token to `next` and wait until it comes back to `me`.
    fn switch_and_wait<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        me: usize,
        next: usize,
    ) -> MutexGuard<'a, State> {
        if next != me {
            self.switches.fetch_add(1, Ordering::Relaxed);
            st.running = next;
            self.cv.notify_all();
            while st.running != me {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        st
    }

    fn count_step(&self, st: &mut State) {
        st.steps += 1;
        self.points.fetch_add(1, Ordering::Relaxed);
        if st.steps > self.budget {
            self.exhausted.store(true, Ordering::Relaxed);
        }
    }

    fn check_budget(&self) {
        if self.exhausted.load(Ordering::Relaxed) && !std::thread::panicking() {
            // A livelock (or a deadlock through spinning): unwind this task so that the
            // run ends and reports instead of hanging. The token was handed on or is
            // handed on by `finish`.
            panic!(
                "backend-sim: deterministic run (seed {:#x}) exceeded {} scheduling points: livelock",
                self.seed, self.budget
            );
        }
    }

    /// A scheduling point of task `me`; `forced` if it cannot progress by itself.
    fn point(&self, me: usize, forced: bool) {
        let mut st = self.lock();
        self.count_step(&mut st);
        let next = Self::pick(&mut st, me, forced);
        let st = self.switch_and_wait(st, me, next);
        drop(st);
        self.check_budget();
    }

    /// `wait` of task `me`: sleeps while `word == expected`, may return spuriously.
    fn wait(&self, me: usize, word: &AtomicU32, expected: u32) {
        let mut st = self.lock();
        self.count_step(&mut st);
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        let addr = (word as *const AtomicU32).addr();
        if let Some(t) = st.tasks.get_mut(&me) {
            t.state = TaskState::Waiting(addr);
        }
        let next = Self::pick(&mut st, me, true);
        let mut st = self.switch_and_wait(st, me, next);
        if let Some(t) = st.tasks.get_mut(&me) {
            t.state = TaskState::Runnable;
        }
        let all_waiting = !st
            .tasks
            .iter()
            .any(|(id, t)| *id != me && t.state == TaskState::Runnable);
        drop(st);
        if all_waiting {
            // Nobody of ours can make the condition true: the waker may be a thread
            // of another harness. Let the host run it.
            std::thread::yield_now();
        }
        self.check_budget();
    }

    /// Make every task waiting on `word` runnable.
    fn wake(&self, word: &AtomicU32) {
        let addr = (word as *const AtomicU32).addr();
        let mut st = self.lock();
        for t in st.tasks.values_mut() {
            if t.state == TaskState::Waiting(addr) {
                t.state = TaskState::Runnable;
            }
        }
    }

    /// Task `me` of group `group` has returned: forget it and hand the token on.
    fn finish(&self, me: usize, group: usize) {
        let mut st = self.lock();
        st.tasks.remove(&me);
        let mut joiner = None;
        if let Some(g) = st.groups.get_mut(&group) {
            g.remaining -= 1;
            if g.remaining == 0 {
                joiner = g.joiner;
                st.groups.remove(&group);
            }
        }
        if let Some(j) = joiner {
            if let Some(t) = st.tasks.get_mut(&j) {
                t.state = TaskState::Runnable;
            }
        }
        if st.running == me {
            st.running = Self::pick(&mut st, 0, true);
        }
        self.cv.notify_all();
    }

    /// Wait until task `me` holds the token.
    fn wait_turn(&self, me: usize) {
        let mut st = self.lock();
        while st.running != me {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Run `tasks` at once under the current context of the caller (`ctx`): each on its own
/// OS thread; under `ctx`'s scheduler if it has one. Returns when all have returned; a
/// task's panic is resumed on the caller afterwards.
pub(crate) fn run_group(ctx: &Arc<Ctx>, tasks: &[&(dyn Fn() + Sync)]) {
    if tasks.is_empty() {
        return;
    }
    let Some(sched) = &ctx.sched else {
        std::thread::scope(|s| {
            for f in tasks {
                let ctx = ctx.clone();
                s.spawn(move || {
                    bind(&ctx);
                    f();
                });
            }
        });
        return;
    };
    let me = TASK.with(|t| t.get());
    // Register the tasks before any of them runs, so that the first choice already
    // sees all of them.
    let (group, ids) = {
        let mut st = sched.lock();
        if me == 0 {
            st.steps = 0;
        }
        let group = st.next_group;
        st.next_group += 1;
        let first = st.next_task;
        st.next_task += tasks.len();
        let ids: Vec<usize> = (first..first + tasks.len()).collect();
        for &id in &ids {
            st.tasks.insert(
                id,
                Task {
                    state: TaskState::Runnable,
                },
            );
        }
        st.groups.insert(
            group,
            Group {
                remaining: tasks.len(),
                joiner: (me != 0).then_some(me),
            },
        );
        (group, ids)
    };
    let mut panicked = None;
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(tasks.len());
        for (&id, f) in ids.iter().zip(tasks) {
            let ctx = ctx.clone();
            handles.push(s.spawn(move || {
                bind(&ctx);
                TASK.with(|t| t.set(id));
                let Some(sched) = ctx.sched.as_ref() else {
                    return Ok(());
                };
                sched.wait_turn(id);
                let r = panic::catch_unwind(AssertUnwindSafe(f));
                TASK.with(|t| t.set(0));
                sched.finish(id, group);
                r
            }));
        }
        {
            let mut st = sched.lock();
            if me == 0 {
                // The caller is not a task: nobody holds the token yet.
                if st.running == 0 {
                    st.running = Sched::pick(&mut st, 0, true);
                }
                sched.cv.notify_all();
            } else {
                if let Some(t) = st.tasks.get_mut(&me) {
                    t.state = TaskState::Joining;
                }
                let next = Sched::pick(&mut st, me, true);
                let st = sched.switch_and_wait(st, me, next);
                drop(st);
            }
        }
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(p)) | Err(p) => {
                    if panicked.is_none() {
                        panicked = Some(p);
                    }
                }
            }
        }
    });
    if let Some(p) = panicked {
        panic::resume_unwind(p);
    }
}

// --- The machine's lock --------------------------------------------------------

/// A lock that waits through scheduling points, so that a deterministic task never
/// blocks its thread on it. It remembers its holder, so a re-entrant attempt (the
/// primary MMU called from a callback it runs under the lock) is detected instead of
/// spinning forever.
///
/// # Invariants
///
/// `data` is only reached through a [`SimGuard`], which exists only while `held` is
/// true and was set by the guard's creator.
#[derive(Debug)]
pub struct SimLock<T> {
    held: AtomicBool,
    owner: AtomicUsize,
    data: UnsafeCell<T>,
}

// SAFETY: one guard at a time gives access to the data (type invariant), so the lock
// may be shared between threads whenever the data may be sent between them.
unsafe impl<T: Send> Sync for SimLock<T> {}
// SAFETY: owning the lock owns the data.
unsafe impl<T: Send> Send for SimLock<T> {}

impl<T> SimLock<T> {
    /// An unlocked lock holding `data`.
    pub fn new(data: T) -> Self {
        SimLock {
            held: AtomicBool::new(false),
            owner: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Take the lock, waiting through scheduling points. `None` if the current thread
    /// already holds it.
    pub fn lock(&self) -> Option<SimGuard<'_, T>> {
        let me = thread_id();
        if self.owner.load(Ordering::Relaxed) == me {
            return None;
        }
        loop {
            if !self.held.swap(true, Ordering::Acquire) {
                self.owner.store(me, Ordering::Relaxed);
                // INVARIANT: `held` was false and we set it.
                return Some(SimGuard { lock: self });
            }
            while self.held.load(Ordering::Relaxed) {
                spin();
            }
        }
    }
}

/// Proof that a [`SimLock`] is held.
#[derive(Debug)]
pub struct SimGuard<'a, T> {
    lock: &'a SimLock<T>,
}

impl<T> Deref for SimGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists, so the lock is held by its creator (invariant).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SimGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SimGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Relaxed);
        self.lock.held.store(false, Ordering::Release);
        // A kernel may preempt at an unlock (`preempt_enable`); without this point a
        // task that only ever yields while holding the lock would starve its waiters.
        point();
    }
}
