//! A `RegistrationExcluded` stands for a lock guard of the thread that made it: it
//! cannot be sent to another thread, which does not hold that lock.
use notifier_core::std_platform::StdPlatform;
use notifier_core::{AddressSpace, RegistrationExcluded};

fn main() {
    let mm = AddressSpace::<StdPlatform>::new();
    // SAFETY: nothing registers on `mm` in this program.
    let ex = unsafe { RegistrationExcluded::new(&mm) };
    std::thread::scope(|s| {
        s.spawn(move || drop(ex));
    });
}
