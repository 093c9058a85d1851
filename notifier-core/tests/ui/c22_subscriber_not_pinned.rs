//! C-22: a `Subscriber` is linked intrusively while registered, so it must be pinned to
//! register: it is `!Unpin`, and `Pin::new` on it does not compile.
use core::pin::Pin;
use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{AddressSpace, Subscriber, SubscriberOps};

struct Nop;
impl SubscriberOps for Nop {}

fn main() {
    let mm = AddressSpace::<P>::new();
    let sub = Subscriber::<Nop, P>::new(Nop);
    let _ = Pin::new(&sub).register(&mm);
}
