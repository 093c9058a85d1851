//! C-22: a `SpinGuard` is `!Send`: a lock is released by the thread that holds it.
use notifier_core::std_platform::StdPlatform as P;
use notifier_core::sync::SpinLock;

fn main() {
    let lock = SpinLock::<P, u32>::new(0);
    let guard = lock.lock();
    std::thread::scope(|s| {
        s.spawn(move || drop(guard));
    });
}
