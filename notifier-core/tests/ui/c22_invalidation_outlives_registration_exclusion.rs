//! An invalidation started through a `RegistrationExcluded` borrows it: it cannot
//! outlive the proof (and so the backend's lock the proof stands for), or a
//! registration could return while it is still in flight (C-02).
use notifier_core::std_platform::StdPlatform;
use notifier_core::{AddressSpace, Event, Range, RegistrationExcluded};

fn main() {
    let mm = AddressSpace::<StdPlatform>::new();
    let inv = {
        // SAFETY: nothing registers on `mm` in this program.
        let ex = unsafe { RegistrationExcluded::new(&mm) };
        ex.invalidate_range_start(Range::new(0, 4096, Event::Unmap))
            .unwrap()
    };
    inv.end();
}
