//! The command line: the scenarios, and the options with their help and defaults.
//!
//! Parsed with clap (derive): it documents every option with its default, takes
//! `--opt value` and `--opt=value`, suggests the nearest option or value on a typo and
//! prints `--version`. Bad input is folded onto one line with exit status 2
//! (`one_line`).

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::Parser;
use notifier_conformance::Twin;

/// A scenario: what runs, and how hard the primary MMU works.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line on what it shows.
    pub about: &'static str,
    /// Pages mapped in the address space.
    pub pages: usize,
    /// Frames of the machine: fewer than the pages mapped means memory pressure.
    pub frames: usize,
    /// Runs the KVM-like shadow MMU (and its vCPUs).
    pub kvm: bool,
    /// Runs the device TLB.
    pub device: bool,
    /// Runs the exporter and its remote importers.
    pub exporter: bool,
    /// Runs the one-pass interval mirror.
    pub mirror: bool,
    /// Weights of the primary operations: unmap, protect, migrate, cow, reclaim.
    pub mix: [u32; 5],
    /// Register/unregister and insert/remove subscribers while invalidations run.
    pub churn: bool,
    /// Two-pass interval mirrors (several devices invalidated in parallel).
    pub two_pass: bool,
    /// Primary operations when `--ops` is not given: a first run takes a few seconds
    /// on the deterministic scheduler (about 170 operations a second on the project's
    /// 2-core machine under load).
    pub default_ops: u64,
}

/// Every scenario, the default first.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "default",
        about: "every consumer; munmap, mprotect, migration, COW breaks and reclaim under pressure",
        pages: 48,
        frames: 96,
        kvm: true,
        device: true,
        exporter: true,
        mirror: true,
        mix: [3, 2, 2, 2, 3],
        churn: false,
        two_pass: true,
        default_ops: 300,
    },
    Scenario {
        name: "kvm-reclaim",
        about: "a KVM-like guest under memory pressure: ageing through the notifiers, eviction",
        pages: 48,
        frames: 64,
        kvm: true,
        device: false,
        exporter: false,
        mirror: false,
        mix: [1, 0, 1, 0, 6],
        churn: false,
        two_pass: false,
        default_ops: 600,
    },
    Scenario {
        name: "exporter-race",
        about: "an XPMEM-like exporter whose importers race munmap and migration",
        pages: 16,
        frames: 64,
        kvm: false,
        device: false,
        exporter: true,
        mirror: false,
        mix: [4, 0, 3, 0, 1],
        churn: false,
        two_pass: false,
        default_ops: 800,
    },
    Scenario {
        name: "interval-mirror",
        about: "an HMM-like interval mirror with the sequence protocol against unmap and migration",
        pages: 32,
        frames: 96,
        kvm: false,
        device: false,
        exporter: false,
        mirror: true,
        mix: [3, 1, 3, 1, 1],
        churn: false,
        two_pass: true,
        default_ops: 600,
    },
    Scenario {
        name: "churn",
        about: "subscribers registered, unregistered, inserted and removed during invalidations",
        pages: 32,
        frames: 96,
        kvm: true,
        device: false,
        exporter: false,
        mirror: true,
        mix: [3, 1, 1, 1, 1],
        churn: true,
        two_pass: false,
        default_ops: 400,
    },
    Scenario {
        name: "export-designs",
        about: "the seed's two export designs side by side: page-keyed hooked at free, and hooked in the reverse map",
        pages: 16,
        frames: 40,
        kvm: false,
        device: false,
        exporter: false,
        mirror: false,
        mix: [0, 0, 0, 0, 1],
        churn: false,
        two_pass: false,
        default_ops: 600,
    },
];

const AFTER_HELP: &str = "\
A run prints a summary, writes DIR/report.json and DIR/timeline.svg, and exits 0 if
every secondary MMU stayed coherent, 1 if one used a stale translation (the first one
is explained, events of both sides in order, with the command that replays it), 2 on
bad input. Make a run longer with --ops, concurrent with --threads (OS threads: fast,
not replayable).";

/// `notifier-sim`: watch MMU notifiers keep secondary MMUs coherent on a simulated
/// machine.
#[derive(Parser, Debug)]
#[command(
    name = "notifier-sim",
    version,
    about = "Watch MMU notifiers keep secondary MMUs (a KVM-like guest, a device TLB, an \
             exporter with remote importers, HMM-like mirrors) coherent on a simulated \
             machine; --broken swaps one consumer for its broken twin and explains the \
             race it loses.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// What runs and how hard the primary MMU works
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = scenario_values())]
    pub scenario: String,

    /// Print the scenarios, one line each, and exit
    #[arg(long)]
    pub list_scenarios: bool,

    /// Seed of the scheduler and of every choice: the same seed replays the same run
    /// [default: taken from the clock, and printed]
    #[arg(long, value_name = "N", value_parser = parse_seed)]
    pub seed: Option<u64>,

    /// Primary operations (munmap, mprotect, migrate, COW break, reclaim) [default: the
    /// scenario's: 300 for default; see --list-scenarios]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub ops: Option<u64>,

    /// vCPUs of the KVM-like guest, each faulting through the shadow MMU
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub vcpus: u64,

    /// Run the tasks on OS threads, in parallel, instead of the seeded deterministic
    /// scheduler: much faster, not replayable
    #[arg(long, alias = "real-threads")]
    pub threads: bool,

    /// Swap one consumer for its broken twin; the run then exits 1 and explains the
    /// first stale translation
    #[arg(long, value_name = "TWIN", value_parser = twin_values())]
    pub broken: Option<String>,

    /// Directory for report.json and timeline.svg (created if missing)
    #[arg(long, value_name = "DIR", default_value = "notifier-sim-out")]
    pub out: PathBuf,
}

fn scenario_values() -> PossibleValuesParser {
    PossibleValuesParser::new(
        SCENARIOS
            .iter()
            .map(|s| PossibleValue::new(s.name).help(s.about)),
    )
}

fn twin_values() -> PossibleValuesParser {
    PossibleValuesParser::new(Twin::ALL.iter().map(|t| {
        PossibleValue::new(t.name()).help(format!("caught by {}", t.catches().join(", ")))
    }))
}

/// A seed: decimal, or hexadecimal with `0x`.
fn parse_seed(v: &str) -> Result<u64, String> {
    let t = v.trim();
    match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    }
    .map_err(|_| "not a non-negative whole number (decimal, or hexadecimal with 0x)".to_string())
}

/// The options, resolved.
#[derive(Debug, Clone)]
pub struct Args {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed (given or from the clock).
    pub seed: u64,
    /// vCPUs of the guest.
    pub vcpus: usize,
    /// Primary operations.
    pub ops: u64,
    /// Output directory.
    pub out: PathBuf,
    /// The broken consumer, if any.
    pub broken: Option<Twin>,
    /// OS threads instead of the deterministic scheduler.
    pub threads: bool,
}

impl Args {
    /// Resolve the defaults that depend on other options (the scenario's operations,
    /// the seed from the clock). `Err` if the broken consumer is not in the scenario.
    pub fn resolve(c: Cli) -> Result<Args, String> {
        let scenario = *SCENARIOS
            .iter()
            .find(|s| s.name == c.scenario)
            .ok_or("unknown scenario")?;
        let broken = c.broken.as_deref().and_then(Twin::from_name);
        if let Some(t) = broken {
            if !runs(&scenario, t) {
                return Err(format!(
                    "scenario {} does not run the consumer that {} breaks (the default scenario runs every consumer; export-hooked-in-rmap runs in export-designs)",
                    scenario.name,
                    t.name()
                ));
            }
        }
        let seed = c.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                % 1_000_000
        });
        Ok(Args {
            scenario,
            seed,
            vcpus: c.vcpus as usize,
            ops: c.ops.unwrap_or(scenario.default_ops),
            out: c.out,
            broken,
            threads: c.threads,
        })
    }
}

/// Whether `scenario` runs the consumer that `twin` breaks (by the twin's name, so a
/// twin added later is placed by its prefix).
pub fn runs(scenario: &Scenario, twin: Twin) -> bool {
    let n = twin.name();
    if scenario.name == "export-designs" {
        // It always runs the rmap-hooked design beside the correct one.
        return n.starts_with("export-");
    }
    if n.starts_with("kvm-") {
        scenario.kvm
    } else if n.starts_with("device-") {
        scenario.device
    } else if n.starts_with("exporter-") {
        scenario.exporter
    } else if n.starts_with("mirror-") {
        scenario.mirror
    } else if n.starts_with("two-pass-") {
        scenario.two_pass
    } else {
        false
    }
}

/// The scenarios, one line each (`--list-scenarios`).
pub fn list() -> String {
    SCENARIOS
        .iter()
        .map(|s| {
            format!(
                "  {:<16} {} ({} primary operations by default)\n",
                s.name, s.about, s.default_ops
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn opt_equals_value_and_defaults() {
        let c = Cli::try_parse_from(["notifier-sim", "--seed=0x10", "--vcpus=4", "--threads"])
            .expect("parses");
        let a = Args::resolve(c).expect("resolves");
        assert_eq!((a.seed, a.vcpus, a.threads), (16, 4, true));
        assert_eq!(a.ops, SCENARIOS[0].default_ops);
        assert_eq!(a.out, PathBuf::from("notifier-sim-out"));
    }

    #[test]
    fn every_twin_runs_in_some_scenario() {
        for t in Twin::ALL {
            assert!(SCENARIOS.iter().any(|s| runs(s, t)), "{}", t.name());
        }
    }
}
