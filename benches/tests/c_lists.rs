//! The C peers of the dispatch benchmark call every subscriber's start and end, and
//! survive a second thread registering and unregistering while a first dispatches (a
//! grace period that returned early would free a node a reader still walks: under the
//! address sanitizer or by luck, a crash; here, the counts and no crash).

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use notifier_benches::lists::{CFlavour, CList, Churn, Dispatch, LibUrcu, LinuxHlist};
use notifier_core::{Event, Range};

fn every_callback<F: CFlavour>() {
    let list = CList::<F>::with_subscribers(3);
    let mut h = list.handle();
    let r = Range::new(0x1000, 0x2000, Event::Unmap);
    assert!(CList::<F>::dispatch(&mut h, &r));
    assert_eq!(
        list.calls(),
        6,
        "{}: a start and an end for each of 3",
        F::NAME
    );
}

fn churn_while_dispatching<F: CFlavour>() {
    let list = CList::<F>::with_subscribers(4);
    let stop = AtomicBool::new(false);
    let r = Range::new(0x1000, 0x2000, Event::Unmap);
    thread::scope(|s| {
        s.spawn(|| {
            let mut h = list.handle();
            for _ in 0..2_000 {
                CList::<F>::churn_once(&mut h);
            }
            stop.store(true, Ordering::Relaxed);
        });
        let mut h = list.handle();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            assert!(CList::<F>::dispatch(&mut h, &r));
            n += 1;
        }
        assert_eq!(list.calls(), n * 8, "{}", F::NAME);
    });
}

#[test]
fn liburcu_calls_every_callback() {
    every_callback::<LibUrcu>();
}

#[test]
fn linux_srcu_calls_every_callback() {
    every_callback::<LinuxHlist>();
}

#[test]
fn liburcu_churn() {
    churn_while_dispatching::<LibUrcu>();
}

#[test]
fn linux_srcu_churn() {
    churn_while_dispatching::<LinuxHlist>();
}
