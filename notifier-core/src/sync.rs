//! The small synchronisation pieces the core builds from a [`Platform`]: a spin lock
//! holding data, a sleeping mutex for grace-period writers, and a wait queue.
//!
//! [`SpinLock`] is public: a secondary MMU's own lock (the one its `invalidate` takes
//! around [`set_seq`](crate::Interval::set_seq) and its fault path around
//! [`read_retry`](crate::Interval::read_retry)) should be the platform's, so that it
//! behaves as the platform's other locks do (Linux: `spinlock_t`; a simulator: a
//! scheduling point while contended).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use crate::primitive::{fence, AtomicU32, Ordering};
use crate::{LockClass, Platform, RawLock, SleepClass};

/// Data behind the platform's [`RawLock`] (Linux: a `spinlock_t` and what it protects).
///
/// ```
/// use notifier_core::std_platform::StdPlatform;
/// use notifier_core::sync::SpinLock;
///
/// let sptes = SpinLock::<StdPlatform, [u64; 4]>::new([0; 4]);
/// sptes.lock()[1] = 42;
/// assert_eq!(sptes.lock()[1], 42);
/// ```
///
/// # Invariants
///
/// `data` is only accessed through a [`SpinGuard`], which exists only while `raw` is held.
pub struct SpinLock<P: Platform, T> {
    raw: P::RawLock,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time (type invariant), so the
// data may be reached from any thread as long as it may be sent there.
unsafe impl<P: Platform, T: Send> Sync for SpinLock<P, T> {}
// SAFETY: as above; owning the lock owns the data.
unsafe impl<P: Platform, T: Send> Send for SpinLock<P, T> {}

impl<P: Platform, T> SpinLock<P, T> {
    /// An unlocked lock holding `data`, of class [`LockClass::Secondary`] (a
    /// subscriber's own lock).
    pub fn new(data: T) -> Self {
        Self::new_class(LockClass::Secondary, data)
    }

    /// An unlocked lock of the given class holding `data` (see [`RawLock::new_class`]).
    pub fn new_class(class: LockClass, data: T) -> Self {
        SpinLock {
            raw: P::RawLock::new_class(class),
            data: UnsafeCell::new(data),
        }
    }

    /// Spin until the lock is held; it is released when the guard drops. Never sleeps.
    pub fn lock(&self) -> SpinGuard<'_, P, T> {
        self.raw.lock();
        SpinGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }
}

/// Proof that a [`SpinLock`] is held. `!Send`: a lock is released by its holder.
pub struct SpinGuard<'a, P: Platform, T> {
    lock: &'a SpinLock<P, T>,
    _not_send: PhantomData<*mut ()>,
}

impl<P: Platform, T> Deref for SpinGuard<'_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists, so the lock is held (type invariant of `SpinLock`).
        unsafe { &*self.lock.data.get() }
    }
}

impl<P: Platform, T> DerefMut for SpinGuard<'_, P, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<P: Platform, T> Drop for SpinGuard<'_, P, T> {
    fn drop(&mut self) {
        // SAFETY: the guard was created by `lock`, which acquired the lock.
        unsafe { self.lock.raw.unlock() }
    }
}

/// A mutex whose waiters sleep in [`Platform::wait`] (the classic three-state futex
/// mutex). Serialises grace periods, which may take long. Each is of a
/// [`SleepClass`], which the platform's lock validator sees
/// ([`Platform::sleep_lock_acquired`]).
pub(crate) struct SleepMutex {
    // 0: unlocked, 1: locked, 2: locked with possible sleepers.
    state: AtomicU32,
    class: SleepClass,
}

impl SleepMutex {
    #[cfg(not(loom))]
    pub(crate) const fn new(class: SleepClass) -> Self {
        SleepMutex {
            state: AtomicU32::new(0),
            class,
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(class: SleepClass) -> Self {
        SleepMutex {
            state: AtomicU32::new(0),
            class,
        }
    }

    /// Take the mutex if it is free; never waits.
    pub(crate) fn try_lock<P: Platform>(&self) -> Option<SleepGuard<'_, P>> {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| {
                P::sleep_lock_acquired(self.class, true);
                SleepGuard {
                    m: self,
                    _p: PhantomData,
                }
            })
    }

    pub(crate) fn lock<P: Platform>(&self) -> SleepGuard<'_, P> {
        // Announced before waiting, as a kernel mutex is: a validator reports the
        // deadlock instead of sleeping in it.
        P::sleep_lock_acquired(self.class, false);
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.state.swap(2, Ordering::Acquire) != 0 {
                P::wait(&self.state, 2);
                crate::primitive::spin_hint();
            }
        }
        SleepGuard {
            m: self,
            _p: PhantomData,
        }
    }
}

/// Holder of a [`SleepMutex`].
pub(crate) struct SleepGuard<'a, P: Platform> {
    m: &'a SleepMutex,
    _p: PhantomData<(P, *mut ())>,
}

impl SleepMutex {
    /// Whether the mutex is free right now (sequentially consistent, paired with the
    /// unlock: see `Subscriptions::sweep_zombies`).
    pub(crate) fn is_free(&self) -> bool {
        self.state.load(Ordering::SeqCst) == 0
    }
}

impl<P: Platform> Drop for SleepGuard<'_, P> {
    fn drop(&mut self) {
        P::sleep_lock_released(self.m.class);
        if self.m.state.swap(0, Ordering::SeqCst) == 2 {
            P::wake_all(&self.m.state);
        }
    }
}

/// Sleep until a condition holds (Linux: `wait_queue_head_t` with `wait_event` and
/// `wake_up_all`), built on the platform's address-keyed wait.
///
/// Waking checks for sleepers first (Linux: `wq_has_sleeper`), so the invalidation path
/// that ends every interval invalidation pays no call into the platform when nobody
/// waits.
pub(crate) struct WaitQueue {
    epoch: AtomicU32,
    sleepers: AtomicU32,
}

impl WaitQueue {
    pub(crate) fn new() -> Self {
        WaitQueue {
            epoch: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Returns once `cond()` is true.
    pub(crate) fn wait_until<P: Platform>(&self, mut cond: impl FnMut() -> bool) {
        loop {
            let e = self.epoch.load(Ordering::Acquire);
            // Announce ourselves before checking: pairs with the fence in `wake_all`,
            // which changes the condition, fences, then reads `sleepers`. Either the
            // waker sees us (and bumps `epoch`, so `wait` returns), or we see its change.
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if cond() {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            P::wait(&self.epoch, e);
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Wake every waiter; the condition must already be changed.
    pub(crate) fn wake_all<P: Platform>(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.epoch.fetch_add(1, Ordering::Release);
        P::wake_all(&self.epoch);
    }
}
