//! Per-task bookkeeping: what the running task is doing inside the core, so that a call
//! that would wait for the caller itself gets a typed error instead of a hang (C-16).
//!
//! Two numbers per task:
//!
//! - **callbacks**: how many notifier callbacks (of any address space) the task is
//!   running right now. `register`, `unregister`, `insert`, `remove`, `get`, teardown,
//!   [`synchronize`](crate::synchronize) and the export barriers all wait for callbacks
//!   in flight, the caller's own included; from inside a callback they are refused with
//!   [`Error::InCallback`].
//! - **held**: how many [`Invalidation`](crate::Invalidation)s the task has started and
//!   not ended. Registration and the first interval insertion wait for the invalidations
//!   in flight; while the task holds one they are refused with
//!   [`Error::InvalidationHeld`]. A leaked invalidation
//!   (`mem::forget`) stays held: the task that leaked it keeps getting the error, and
//!   other tasks wait for it as for any invalidation still changing page tables.
//!
//! Only the task itself writes its numbers, so they are plain loads and stores, never a
//! locked read-modify-write or a cache line shared with other CPUs. Where they live is
//! the platform's choice ([`Platform::with_task_state`]):
//! thread-local storage on hosted platforms, a field of the task structure in a kernel,
//! or, by default, [`TaskTable`], a fixed table keyed by
//! [`Platform::current_task`].

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::{Error, Platform};

/// What the core records about one task (see the [module docs](self)).
///
/// Every field is written only by the task it describes; atomics make a shared table
/// of them well defined, relaxed loads and stores are all that is needed.
#[derive(Debug, Default)]
pub struct TaskState {
    callbacks: AtomicU32,
    held: AtomicU32,
}

impl TaskState {
    /// A task doing nothing inside the core.
    pub const fn new() -> Self {
        TaskState {
            callbacks: AtomicU32::new(0),
            held: AtomicU32::new(0),
        }
    }

    fn is_idle(&self) -> bool {
        self.callbacks.load(Ordering::Relaxed) == 0 && self.held.load(Ordering::Relaxed) == 0
    }

    /// Only the owning task writes its state: a load and a store, no locked
    /// instruction. Inlined: it is on every invalidation's path.
    #[inline(always)]
    fn add(c: &AtomicU32, d: i32) {
        c.store(
            c.load(Ordering::Relaxed).saturating_add_signed(d),
            Ordering::Relaxed,
        );
    }
}

/// Entries of the default [`TaskTable`].
pub const TASK_TABLE_ENTRIES: usize = 1024;

/// The default home of [`TaskState`]s for platforms without per-task storage: an
/// open-addressing table keyed by task id. A task owns an entry only while it is inside
/// a callback or holds an invalidation, so the table holds the tasks doing that *at
/// once*; a task that finds it full is not tracked (its checks are not made), which
/// the platform should make impossible by sizing or by overriding
/// [`Platform::with_task_state`].
///
/// A task's entry lives among the [`TASK_TABLE_WINDOW`] entries from its hash position
/// when one of them is free, so that a query looks at that many entries, not `N`: the
/// query of an idle task (every invalidation makes several) is the common case. Only
/// when a window is full does a task take an entry further away; while any task holds
/// such an entry (`spilled`), queries look through the whole table.
pub struct TaskTable<const N: usize> {
    entries: [Entry; N],
    /// Entries held outside their task's window. Only the holder changes it (up when it
    /// takes one, down when it gives it back), so a task always sees its own count.
    spilled: AtomicUsize,
}

/// Entries a task looks at first (see [`TaskTable`]).
pub const TASK_TABLE_WINDOW: usize = 8;

/// One task's entry, alone on its cache line: tasks on different CPUs never write the
/// same line.
#[repr(align(64))]
struct Entry {
    task: AtomicUsize,
    state: TaskState,
}

impl<const N: usize> TaskTable<N> {
    /// An empty table.
    pub const fn new() -> Self {
        TaskTable {
            entries: [const {
                Entry {
                    task: AtomicUsize::new(0),
                    state: TaskState::new(),
                }
            }; N],
            spilled: AtomicUsize::new(0),
        }
    }

    /// Run `f` on the state of task `task` (non-zero). A task owns an entry only while
    /// its state is not idle: a query from an idle task claims nothing.
    pub fn with<R>(&self, task: usize, f: impl FnOnce(&TaskState) -> R) -> R {
        let start = task.wrapping_mul(0x9E37_79B9) % N;
        let window = TASK_TABLE_WINDOW.min(N);
        // Its window first; the rest only if some task holds an entry outside its own
        // window (ours included: we would have counted it ourselves).
        let probes = if self.spilled.load(Ordering::Relaxed) == 0 {
            window
        } else {
            N
        };
        for i in 0..probes {
            let k = (start + i) % N;
            if self.entries[k].task.load(Ordering::Relaxed) == task {
                return self.run(k, i >= window, f);
            }
        }
        // Not present: the task is idle. Run `f` on a fresh state and keep the result
        // only if it is no longer idle.
        let fresh = TaskState::new();
        let r = f(&fresh);
        if fresh.is_idle() {
            return r;
        }
        for i in 0..N {
            let k = (start + i) % N;
            if i == window {
                // Counted before the entry is taken, so that our next query, which
                // may find the entry only by the full scan, sees the count.
                self.spilled.fetch_add(1, Ordering::Relaxed);
            }
            if self.entries[k]
                .task
                .compare_exchange(0, task, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                let s = &self.entries[k].state;
                s.callbacks
                    .store(fresh.callbacks.load(Ordering::Relaxed), Ordering::Relaxed);
                s.held
                    .store(fresh.held.load(Ordering::Relaxed), Ordering::Relaxed);
                return r;
            }
        }
        // Full: untracked (documented above).
        if N > window {
            self.spilled.fetch_sub(1, Ordering::Relaxed);
        }
        r
    }

    fn run<R>(&self, k: usize, spilled: bool, f: impl FnOnce(&TaskState) -> R) -> R {
        let s = &self.entries[k].state;
        let r = f(s);
        if s.is_idle() {
            self.entries[k].task.store(0, Ordering::Relaxed);
            if spilled {
                self.spilled.fetch_sub(1, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<const N: usize> Default for TaskTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The table behind the default [`Platform::with_task_state`].
#[cfg(not(loom))]
pub(crate) static DEFAULT_TABLE: TaskTable<TASK_TABLE_ENTRIES> = TaskTable::new();

/// Refuse a call that waits for callbacks or invalidations in flight when the caller
/// itself is inside a callback or holds an invalidation (C-16).
pub(crate) fn may_wait<P: Platform>() -> Result<(), Error> {
    P::with_task_state(|s| {
        if s.callbacks.load(Ordering::Relaxed) != 0 {
            Err(Error::InCallback)
        } else if s.held.load(Ordering::Relaxed) != 0 {
            Err(Error::InvalidationHeld)
        } else {
            Ok(())
        }
    })
}

/// Whether the caller runs inside a callback (of any address space).
pub(crate) fn in_callback<P: Platform>() -> bool {
    P::with_task_state(|s| s.callbacks.load(Ordering::Relaxed) != 0)
}

/// Whether the caller is inside a callback or holds an invalidation.
pub(crate) fn busy<P: Platform>() -> bool {
    P::with_task_state(|s| !s.is_idle())
}

/// Marks the running task as inside callbacks until dropped (also when a callback
/// panics and unwinds). `!Send`: it describes the task that made it.
///
/// It remembers the count it found and puts it back when dropped, instead of counting
/// down: the write on the way out then does not wait for a load of the word (marks
/// nest and drop in reverse order, so the count found is the count to restore). Two
/// walks per invalidation made four dependent read-modify-writes of one word per pair;
/// now each walk's exit is a plain store.
pub(crate) struct CallbackMark<P: Platform> {
    before: u32,
    _task: core::marker::PhantomData<(P, *mut ())>,
}

impl<P: Platform> CallbackMark<P> {
    #[inline]
    pub(crate) fn new() -> Self {
        let before = P::with_task_state(|s| {
            let n = s.callbacks.load(Ordering::Relaxed);
            s.callbacks.store(n.saturating_add(1), Ordering::Relaxed);
            n
        });
        CallbackMark {
            before,
            _task: core::marker::PhantomData,
        }
    }
}

impl<P: Platform> Drop for CallbackMark<P> {
    #[inline]
    fn drop(&mut self) {
        let before = self.before;
        P::with_task_state(|s| s.callbacks.store(before, Ordering::Relaxed));
    }
}

/// The running task runs an invalidation's callbacks while this lives: the platform's
/// lock validator sees the invalidation map held (see
/// [`Platform::invalidation_map_acquire`]).
pub(crate) struct InvalidationMap<P: Platform>(core::marker::PhantomData<(P, *mut ())>);

impl<P: Platform> InvalidationMap<P> {
    #[inline]
    pub(crate) fn acquire() -> Self {
        P::invalidation_map_acquire();
        InvalidationMap(core::marker::PhantomData)
    }
}

impl<P: Platform> Drop for InvalidationMap<P> {
    #[inline]
    fn drop(&mut self) {
        P::invalidation_map_release();
    }
}

/// The running task is about to wait for invalidations in flight: tell the platform's
/// lock validator ([`Platform::may_wait_for_invalidations`]). Not from inside a
/// callback or while holding an invalidation: such a wait is refused or reported as a
/// bug on its own, and the validator would report the nesting as well.
pub(crate) fn annotate_wait<P: Platform>() {
    if P::with_task_state(|s| s.is_idle()) {
        P::may_wait_for_invalidations();
    }
}

/// Count one more invalidation held by the running task.
#[inline]
pub(crate) fn hold<P: Platform>() {
    P::with_task_state(|s| TaskState::add(&s.held, 1));
}

/// Count one invalidation fewer held by the running task.
#[inline]
pub(crate) fn unhold<P: Platform>() {
    P::with_task_state(|s| TaskState::add(&s.held, -1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(t: &TaskTable<4>, task: usize) {
        t.with(task, |s| TaskState::add(&s.callbacks, 1));
    }
    fn leave(t: &TaskTable<4>, task: usize) {
        t.with(task, |s| TaskState::add(&s.callbacks, -1));
    }
    fn inside(t: &TaskTable<4>, task: usize) -> bool {
        t.with(task, |s| s.callbacks.load(Ordering::Relaxed) != 0)
    }
    fn used(t: &TaskTable<4>) -> usize {
        t.entries
            .iter()
            .filter(|e| e.task.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// The default table (the kernels' home of task states): a task owns an entry only
    /// while busy, tasks do not see each other's states, and a query claims nothing.
    #[test]
    fn c16_default_task_table() {
        let t = TaskTable::<4>::new();
        assert!(!inside(&t, 7));
        assert_eq!(used(&t), 0, "a query claimed an entry");
        enter(&t, 7);
        enter(&t, 7);
        enter(&t, 9);
        assert!(inside(&t, 7) && inside(&t, 9) && !inside(&t, 11));
        assert_eq!(used(&t), 2);
        leave(&t, 7);
        assert!(inside(&t, 7), "nested: still inside");
        leave(&t, 7);
        assert!(!inside(&t, 7));
        assert_eq!(used(&t), 1, "an idle task gives its entry back");
        // Full: a fifth busy task is not tracked (and the others keep theirs).
        for task in [20, 21, 22] {
            enter(&t, task);
        }
        enter(&t, 23);
        assert!(!inside(&t, 23));
        assert!(inside(&t, 9) && inside(&t, 22));
        t.with(9, |s| TaskState::add(&s.held, 1));
        leave(&t, 9);
        assert!(t.with(9, |s| s.held.load(Ordering::Relaxed)) == 1);
        t.with(9, |s| TaskState::add(&s.held, -1));
        assert_eq!(used(&t), 3);
        // Every window is the whole table here: nothing was counted as spilled.
        assert_eq!(t.spilled.load(Ordering::Relaxed), 0);
    }

    /// A full table: the task that finds no entry is untracked, and the spill count
    /// still counts exactly the entries held outside their windows.
    #[test]
    fn c16_task_table_full_keeps_the_spill_count() {
        let t = TaskTable::<16>::new();
        // Ids 16 apart share a start: the first 8 fill the window, the next 8 spill.
        for j in 0..16 {
            t.with(7 + 16 * j, |s| TaskState::add(&s.callbacks, 1));
        }
        assert_eq!(t.spilled.load(Ordering::Relaxed), 8);
        t.with(7 + 16 * 16, |s| TaskState::add(&s.callbacks, 1));
        assert!(!t.with(7 + 16 * 16, |s| s.callbacks.load(Ordering::Relaxed) != 0));
        assert_eq!(t.spilled.load(Ordering::Relaxed), 8);
        for j in 0..16 {
            t.with(7 + 16 * j, |s| TaskState::add(&s.callbacks, -1));
        }
        assert_eq!(t.spilled.load(Ordering::Relaxed), 0);
    }

    /// With nothing spilled a query looks at the task's window only (the point of the
    /// window: an idle task's query reads 8 entries, not the table). Seen from inside:
    /// an entry planted outside the window is not found.
    #[test]
    fn c16_task_table_query_reads_the_window_only() {
        let t = TaskTable::<64>::new();
        let task: usize = 5;
        let start = task.wrapping_mul(0x9E37_79B9) % 64;
        let far = (start + TASK_TABLE_WINDOW + 3) % 64;
        t.entries[far].task.store(task, Ordering::Relaxed);
        TaskState::add(&t.entries[far].state.callbacks, 1);
        assert!(
            !t.with(task, |s| s.callbacks.load(Ordering::Relaxed) != 0),
            "the query read past the window with nothing spilled"
        );
        // Counted as spilled, the same entry is found.
        t.spilled.store(1, Ordering::Relaxed);
        assert!(t.with(task, |s| s.callbacks.load(Ordering::Relaxed) != 0));
    }

    /// Tasks whose windows are full take entries further away and are still found; the
    /// count of such entries goes back to zero when they are given back, and queries
    /// then look at windows only again.
    #[test]
    fn c16_task_table_spills_past_a_full_window() {
        let t = TaskTable::<32>::new();
        // Ids 32 apart hash to the same start (the multiplier times 32 is 0 mod 32).
        let ids: [usize; TASK_TABLE_WINDOW + 3] = core::array::from_fn(|j| 7 + 32 * j);
        for &id in &ids {
            t.with(id, |s| TaskState::add(&s.callbacks, 1));
        }
        assert_eq!(t.spilled.load(Ordering::Relaxed), 3);
        for &id in &ids {
            assert!(t.with(id, |s| s.callbacks.load(Ordering::Relaxed) == 1));
        }
        assert!(!t.with(7 + 32 * 100, |s| s.callbacks.load(Ordering::Relaxed) != 0));
        // Nested entry and exit of a spilled task keep one entry.
        let last = *ids.last().unwrap();
        t.with(last, |s| TaskState::add(&s.callbacks, 1));
        t.with(last, |s| TaskState::add(&s.callbacks, -1));
        assert_eq!(t.spilled.load(Ordering::Relaxed), 3);
        for &id in &ids {
            t.with(id, |s| TaskState::add(&s.callbacks, -1));
        }
        assert_eq!(t.spilled.load(Ordering::Relaxed), 0);
        let used = t
            .entries
            .iter()
            .filter(|e| e.task.load(Ordering::Relaxed) != 0)
            .count();
        assert_eq!(used, 0);
    }
}
