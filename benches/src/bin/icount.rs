//! A fixed workload for counting instructions: `N` start+end pairs of one
//! invalidation over one page, in one of five states of the address space. Run it
//! under `valgrind --tool=callgrind` twice with different `N` and divide the difference
//! (`benches/icount.sh` does that for every state): the count is repeatable on a loaded
//! machine, where wall-clock benchmarks are not. It is a proxy: a locked instruction or
//! a fence costs more than one.
//!
//! ```text
//! icount <none|excluded|object|one|sixteen|intervals> <N>
//! ```
//!
//! - `none`: nobody ever subscribed (no per-address-space object);
//! - `excluded`: the same, started through a [`RegistrationExcluded`] proof;
//! - `object`: a subscriber came and went (the object exists, the list is empty);
//! - `one`, `sixteen`: that many list subscribers;
//! - `intervals`: 1 000 interval subscribers of one page each, inserted in address
//!   order; the range touches the first.

use std::hint::black_box;
use std::pin::{pin, Pin};

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Event, Interval, IntervalOps, IntervalSubscriber, Range, RegistrationExcluded,
    Subscriber, SubscriberOps, WouldBlock,
};

const PAGE: usize = 4096;

struct Nop;

impl SubscriberOps for Nop {
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        black_box(r);
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        black_box(r);
    }
}

struct Iv;

impl IntervalOps<Interval<P>> for Iv {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, seq: u64) -> Result<(), WouldBlock> {
        iv.set_seq(seq);
        Ok(())
    }
}

/// `pairs` through a registration-exclusion proof.
#[inline(never)]
fn pairs_excluded(ex: &RegistrationExcluded<'_, P>, n: usize) {
    for _ in 0..n {
        let r = Range::new(black_box(PAGE), black_box(2 * PAGE), Event::Unmap);
        ex.invalidate_range_start(r)
            .expect("a valid range, nobody refuses")
            .end();
    }
}

#[inline(never)]
fn pairs(mm: &AddressSpace<P>, n: usize) {
    for _ in 0..n {
        let r = Range::new(black_box(PAGE), black_box(2 * PAGE), Event::Unmap);
        mm.invalidate_range_start(r)
            .expect("a valid range, nobody refuses")
            .end();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(state), Some(n)) = (args.next(), args.next().and_then(|n| n.parse().ok())) else {
        eprintln!("usage: icount <none|excluded|object|one|sixteen|intervals> <N>");
        std::process::exit(2);
    };
    let mm = AddressSpace::<P>::new();
    let subs: Vec<Pin<Box<Subscriber<Nop, P>>>> = (0..match state.as_str() {
        "one" => 1,
        "sixteen" => 16,
        _ => 0,
    })
        .map(|_| Box::pin(Subscriber::new(Nop)))
        .collect();
    let ivs: Vec<Pin<Box<IntervalSubscriber<Iv, P>>>> =
        (0..if state == "intervals" { 1000 } else { 0 })
            .map(|_| Box::pin(IntervalSubscriber::new(Iv)))
            .collect();
    match state.as_str() {
        "none" => {}
        "excluded" => {
            // SAFETY: nothing registers on `mm` while the proof lives.
            let ex = unsafe { RegistrationExcluded::new(&mm) };
            pairs_excluded(&ex, n);
            return;
        }
        "object" => {
            let s = pin!(Subscriber::<Nop, P>::new(Nop));
            s.as_ref().register(&mm).expect("register");
            s.as_ref().unregister().expect("unregister");
        }
        "one" | "sixteen" => {
            for s in &subs {
                s.as_ref().register(&mm).expect("register");
            }
        }
        "intervals" => {
            for (i, iv) in ivs.iter().enumerate() {
                iv.as_ref()
                    .insert(&mm, (i + 1) * PAGE, PAGE)
                    .expect("insert");
            }
        }
        other => {
            eprintln!("icount: no state `{other}`");
            std::process::exit(2);
        }
    }
    pairs(&mm, n);
    for s in &subs {
        s.as_ref().unregister().expect("unregister");
    }
    for iv in &ivs {
        iv.as_ref().remove().expect("remove");
    }
}
