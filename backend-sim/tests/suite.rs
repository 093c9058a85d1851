//! The conformance suite on the simulator: deterministic over several seeds, and with
//! real threads. Every case must pass (none is skipped: the simulator has every
//! capability).

use std::sync::Mutex;

use backend_sim::SimHarness;
use notifier_conformance::{run, Config};

/// The two tests run one after the other: on a small machine, a deterministic run's
/// threads competing for the CPUs would change the threads run's timing (and the
/// global RCU domain is shared).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_on(h: &SimHarness) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let sum = run(h, &Config::default(), &mut out);
    println!("{out}");
    println!("stats: {:?}", h.stats());
    assert_eq!(
        sum.failed,
        0,
        "failed cases {:?} (seed {:?})\n{out}",
        sum.failed_cases(),
        h.seed()
    );
    assert_eq!(sum.skipped, 0, "skipped cases\n{out}");
    assert!(sum.passed > 0, "{out}");
    assert!(!h.livelocked());
}

#[test]
fn deterministic_seeds() {
    for seed in [1u64, 2, 3, 0xC0FFEE] {
        run_on(&SimHarness::deterministic(seed));
    }
}

#[test]
fn threads() {
    run_on(&SimHarness::threads());
}
