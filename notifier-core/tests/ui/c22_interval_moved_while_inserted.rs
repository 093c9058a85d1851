//! C-22: an `IntervalSubscriber` sits in the address space's interval tree while
//! inserted, so it cannot be moved out of its pin (it is `!Unpin`).
use core::pin::Pin;
use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{AddressSpace, Interval, IntervalOps, IntervalSubscriber, Range, WouldBlock};

struct Nop;
impl IntervalOps<Interval<P>> for Nop {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        iv.set_seq(cur_seq);
        Ok(())
    }
}

fn main() {
    let mm = AddressSpace::<P>::new();
    let iv = Box::pin(IntervalSubscriber::new(Nop));
    iv.as_ref().insert(&mm, 0, 1 << 20).unwrap();
    let moved = *Pin::into_inner(iv);
    let _ = moved.interval().read_begin();
}
