//! The suite has teeth on the simulator: with each deliberately broken consumer
//! ([`Twin::ALL`]) it fails exactly the cases [`Twin::catches`] names; with the second
//! oracle of C-09 off (as on Linux and Hermit), exactly
//! [`Twin::catches_without_translation_oracle`].
//!
//! Runs are deterministic (fixed seeds). A race needs its interleaving, so each twin
//! gets up to `SEEDS.len()` seeds until one run fails exactly its cases; no run may
//! fail any other case (a false alarm), and some run must catch it. A twin that nothing
//! may catch runs on `QUIET_SEEDS` and must make no case fail.

use backend_sim::{Mode, SimConfig, SimHarness};
use notifier_conformance::{run, Config, Twin};

const SEEDS: [u64; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const QUIET_SEEDS: usize = 3;

/// The simulator's platform is process-wide (one RCU domain, one zombie count): two
/// suite runs at once in this binary would disturb each other's seeded schedules, so
/// the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(twin: Twin, translation_oracle: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let want = if translation_oracle {
        twin.catches()
    } else {
        twin.catches_without_translation_oracle()
    };
    let seeds = if want.is_empty() {
        &SEEDS[..QUIET_SEEDS]
    } else {
        &SEEDS[..]
    };
    for &seed in seeds {
        let h = SimHarness::new(SimConfig {
            translation_oracle,
            ..SimConfig::new(Mode::Deterministic(seed))
        });
        let mut out = String::new();
        let cfg = Config {
            twin: Some(twin),
            ..Default::default()
        };
        let sum = run(&h, &cfg, &mut out);
        let got = sum.failed_cases();
        assert!(
            got.iter().all(|c| want.contains(c)),
            "{} (translation oracle {translation_oracle}): seed {seed} failed {got:?}, only {want:?} may fail\n{out}",
            twin.name()
        );
        if !want.is_empty() && got == want {
            println!("{}: caught by seed {seed}: {got:?}", twin.name());
            return;
        }
    }
    assert!(
        want.is_empty(),
        "{} (translation oracle {translation_oracle}): no seed of {seeds:?} made exactly {want:?} fail",
        twin.name()
    );
}

#[test]
fn every_twin_is_caught_by_exactly_its_cases() {
    for twin in Twin::ALL {
        check(twin, true);
    }
}

/// Linux and Hermit have the frame-liveness oracle only: the twins that use old
/// translations of live pages are caught by nothing there, and the suite must say so
/// rather than claim it.
#[test]
fn without_the_translation_oracle_each_twin_fails_exactly_its_cases() {
    for twin in Twin::ALL {
        check(twin, false);
    }
}
