//! The toy device TLB through the public runner on the simulator: the correct one
//! passes every case that applies to a list subscriber, deterministic over several
//! seeds and on real threads; the broken ones fail C-09: the one without the sequence
//! check through the frame-liveness oracle, the one that zaps at `end` through the
//! translation oracle alone.

use std::sync::Mutex;

use backend_sim::{Mode, SimConfig, SimHarness};
use consumer_check::mirror::{LazyTwoPassMirror, NoRetryMirror, ToyMirror, TwoPassMirror};
use consumer_check::{BrokenTlb, LateTlb, SilentTlb, ToyTlb};
use notifier_conformance::{run_consumer, Config, Report};

/// One run at a time: a deterministic run's threads would change a threaded run's
/// timing on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn correct(h: &SimHarness) -> (Report, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let r = run_consumer::<_, ToyTlb<'_, _>>(h, &Config::default(), &mut out);
    println!("{out}");
    (r, out)
}

fn assert_passes(h: &SimHarness) {
    let (r, out) = correct(h);
    assert_eq!(
        r.failed,
        0,
        "failed {:?} (seed {:?})\n{out}",
        r.failed_cases(),
        h.seed()
    );
    // A list subscriber: the interval cases are not its; everything else ran.
    let skipped: Vec<&str> = r.skipped_cases().iter().map(|(id, _)| *id).collect();
    assert_eq!(skipped, ["C-12", "C-14"], "{out}");
    assert_eq!(r.passed, 8, "{out}");
    assert!(out.starts_with("KTAP version 1\n"), "{out}");
    assert!(!h.livelocked());
}

#[test]
fn toy_tlb_passes_deterministic() {
    for seed in [1u64, 2, 3, 0xC0FFEE] {
        assert_passes(&SimHarness::deterministic(seed));
    }
}

#[test]
fn toy_tlb_passes_threads() {
    assert_passes(&SimHarness::threads());
}

#[test]
fn broken_tlb_is_caught_by_c09() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut caught = None;
    for seed in 1u64..=8 {
        let h = SimHarness::deterministic(seed);
        let mut out = String::new();
        let r = run_consumer::<_, BrokenTlb<'_, _>>(&h, &Config::default(), &mut out);
        println!("seed {seed}:\n{out}");
        // Only the race cases may catch it: the sequential ones never open the window.
        for id in r.failed_cases() {
            assert!(
                ["C-02", "C-03", "C-07", "C-09"].contains(id),
                "seed {seed}: {id} failed\n{out}"
            );
        }
        if r.failed_cases().contains(&"C-09") {
            assert!(
                out.contains("not ok 7 C-09 no_stale_translation # "),
                "{out}"
            );
            caught = Some(seed);
            break;
        }
    }
    assert!(
        caught.is_some(),
        "no seed of eight caught the broken TLB with C-09"
    );
}

#[test]
fn late_tlb_is_caught_by_the_second_oracle_only() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        only: Some("C-09"),
        ..Config::default()
    };
    // With both oracles: C-09 fails, on uses of pages that are still allocated.
    let h = SimHarness::deterministic(1);
    let mut out = String::new();
    let r = run_consumer::<_, LateTlb<'_, _>>(&h, &cfg, &mut out);
    println!("{out}");
    assert_eq!(r.failed_cases(), ["C-09"], "{out}");
    assert!(out.contains("still allocated"), "{out}");
    // With the frame-liveness oracle alone, the same run passes: the pages it used
    // stale were never freed while it held them. The second oracle is what caught it.
    let h = SimHarness::new(SimConfig {
        translation_oracle: false,
        ..SimConfig::new(Mode::Deterministic(1))
    });
    let mut out = String::new();
    let r = run_consumer::<_, LateTlb<'_, _>>(&h, &cfg, &mut out);
    println!("{out}");
    assert_eq!(r.failed, 0, "{out}");
    assert!(out.contains("translation oracle not applicable"), "{out}");
}

#[test]
fn a_consumer_hiding_its_uses_fails() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let h = SimHarness::deterministic(1);
    let cfg = Config {
        only: Some("C-01"),
        ..Config::default()
    };
    let mut out = String::new();
    let r = run_consumer::<_, SilentTlb<'_, _>>(&h, &cfg, &mut out);
    println!("{out}");
    assert_eq!(r.failed_cases(), ["C-01"], "{out}");
    assert!(out.contains("without reporting the use"), "{out}");
}

/// Every case, deterministic over two seeds and on threads: the report, the output.
fn every_mode<F: Fn(&SimHarness) -> (Report, String)>(run: F) -> Vec<(Report, String)> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = Vec::new();
    for h in [
        SimHarness::deterministic(1),
        SimHarness::deterministic(2),
        SimHarness::threads(),
    ] {
        let r = run(&h);
        println!("{}", r.1);
        v.push(r);
    }
    v
}

fn with<'h, C: notifier_conformance::SecondaryMmu<'h, SimHarness>>(
    h: &'h SimHarness,
) -> (Report, String) {
    let mut out = String::new();
    let r = run_consumer::<_, C>(h, &Config::default(), &mut out);
    (r, out)
}

#[test]
fn interval_mirrors_pass() {
    for (r, out) in every_mode(|h| with::<ToyMirror<'_, _>>(h)) {
        assert_eq!(r.failed, 0, "{out}");
        let skipped: Vec<&str> = r.skipped_cases().iter().map(|(id, _)| *id).collect();
        assert_eq!(skipped, ["C-14"], "{out}");
    }
    for (r, out) in every_mode(|h| with::<TwoPassMirror<'_, _>>(h)) {
        assert_eq!(r.failed, 0, "{out}");
        assert_eq!(r.skipped, 0, "{out}");
    }
}

#[test]
fn broken_mirrors_are_caught() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Without read_retry: the race cases catch it on some seed, C-12 among them.
    let mut caught = false;
    for seed in 1u64..=8 {
        let (r, out) = with::<NoRetryMirror<'_, _>>(&SimHarness::deterministic(seed));
        println!("seed {seed}:\n{out}");
        for id in r.failed_cases() {
            assert!(
                ["C-02", "C-03", "C-07", "C-09", "C-12"].contains(id),
                "{id}\n{out}"
            );
        }
        if r.failed_cases().contains(&"C-12") {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "no seed of eight caught the mirror without read_retry"
    );
    // The lazy second pass: C-14 sees the page still mapped in the device when the
    // unmap returned; it is deterministic (no race needed).
    let (r, out) = with::<LazyTwoPassMirror<'_, _>>(&SimHarness::deterministic(1));
    println!("{out}");
    assert!(r.failed_cases().contains(&"C-14"), "{out}");
}
