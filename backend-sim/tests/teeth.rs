//! The suite has teeth on the simulator: with each deliberately broken consumer
//! ([`Twin::ALL`]) it fails exactly the cases [`Twin::catches`] names.
//!
//! Runs are deterministic (fixed seeds). A race needs its interleaving, so each twin
//! gets up to `SEEDS.len()` seeds until one run fails exactly its cases; no run may
//! fail any other case (a false alarm), and some run must catch it.

use backend_sim::SimHarness;
use notifier_conformance::{run, Config, Twin};

const SEEDS: [u64; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn check(twin: Twin) {
    let want = twin.catches();
    for seed in SEEDS {
        let h = SimHarness::deterministic(seed);
        let mut out = String::new();
        let cfg = Config {
            twin: Some(twin),
            ..Default::default()
        };
        let sum = run(&h, &cfg, &mut out);
        let got = sum.failed_cases();
        assert!(
            got.iter().all(|c| want.contains(c)),
            "{}: seed {seed} failed {got:?}, only {want:?} may fail\n{out}",
            twin.name()
        );
        if got == want {
            println!("{}: caught by seed {seed}: {got:?}", twin.name());
            return;
        }
    }
    panic!(
        "{}: no seed of {SEEDS:?} made exactly {want:?} fail",
        twin.name()
    );
}

#[test]
fn every_twin_is_caught_by_exactly_its_cases() {
    for twin in Twin::ALL {
        check(twin);
    }
}
