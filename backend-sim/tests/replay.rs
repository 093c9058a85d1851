//! A deterministic run of the whole suite replays from its seed: the same cases fail,
//! the machine does the same work, the scheduler makes the same choices. (Alone in its
//! process: parallel runs would share the global RCU domain.)

use backend_sim::SimHarness;
use notifier_conformance::{run, Config};

fn once(seed: u64) -> (String, backend_sim::SimStats, (u64, u64)) {
    let h = SimHarness::deterministic(seed);
    let mut out = String::new();
    run(&h, &Config::default(), &mut out);
    (out, h.stats(), h.schedule_counts())
}

#[test]
fn the_suite_replays_from_its_seed() {
    let a = once(0x5EED);
    let b = once(0x5EED);
    assert!(a.2 .1 > 0, "no task switch happened");
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
}
