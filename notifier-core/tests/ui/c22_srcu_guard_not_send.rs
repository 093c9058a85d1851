//! C-22: an `SrcuGuard` is `!Send`: a read-side section ends on the thread that began
//! it (its counters are per slot).
use notifier_core::srcu::SleepableRcu;
use notifier_core::std_platform::StdPlatform as P;
use notifier_core::Platform;

fn main() {
    let guard = P::rcu().read_lock();
    std::thread::spawn(move || drop(guard));
}
