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

/// A mode that subscribes to the core but claims none of the core-only features, as a
/// reference mode on a platform's own notifier does: the cases and checks that need
/// them must say "not applicable" with the mode's reason, and the rest still pass.
struct CoreOnlyTheCommonPart;

impl notifier_conformance::Notifiers<SimHarness> for CoreOnlyTheCommonPart {
    const NAME: &'static str = "core, common features only";
    type Sub<T: notifier_core::SubscriberOps> =
        notifier_core::Subscriber<T, backend_sim::SimPlatform>;
    type Iv<T: notifier_conformance::subscribe::IvOps> =
        notifier_conformance::subscribe::CoreInterval<T, backend_sim::SimPlatform>;
    fn lacks(_f: notifier_conformance::subscribe::Feature) -> Option<&'static str> {
        Some("not in this mode")
    }
}

#[test]
fn a_mode_without_the_core_only_features() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let h = SimHarness::deterministic(1);
    let mut out = String::new();
    let sum = notifier_conformance::run_with::<_, CoreOnlyTheCommonPart>(
        &h,
        &Config::default(),
        &mut out,
    );
    println!("{out}");
    assert!(
        out.starts_with(
            "KTAP version 1\n# notifier conformance suite on sim (deterministic), subscribed to: core, common features only\n"
        ),
        "{out}"
    );
    assert_eq!(sum.failed, 0, "{out}");
    let skipped: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("ok ") && l.ends_with(" # SKIP not in this mode"))
        .filter_map(|l| l.split(' ').nth(2))
        .collect();
    assert_eq!(
        skipped,
        ["C-05", "C-14", "C-16", "C-17", "C-18", "C-19", "C-20", "C-21"],
        "{out}"
    );
    assert_eq!(sum.skipped as usize, skipped.len(), "{out}");
}
