//! A proof made from a guard borrows it: it cannot outlive the guard, and so the lock
//! that keeps registration out (C-02).
use std::sync::{RwLock, RwLockReadGuard};

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{AddressSpace, ExcludesRegistration, RegistrationExcluded};

struct MmapRead<'a> {
    _guard: RwLockReadGuard<'a, ()>,
    notifiers: &'a AddressSpace<P>,
}

// SAFETY: nothing registers on the address space in this program.
unsafe impl ExcludesRegistration<P> for MmapRead<'_> {
    fn address_space(&self) -> &AddressSpace<P> {
        self.notifiers
    }
}

fn main() {
    let mmap = RwLock::new(());
    let notifiers = AddressSpace::<P>::new();
    let proof = {
        let read = MmapRead {
            _guard: mmap.read().unwrap(),
            notifiers: &notifiers,
        };
        RegistrationExcluded::from_guard(&read)
    };
    drop(proof);
}
