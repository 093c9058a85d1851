//! The conformance suite on the simulator, printed exactly as every backend prints it:
//! the header, one line per case, the closing line `N passed, N failed`.
//!
//! `notifier-suite [--seed N | --threads] [--broken TWIN] [--only C-NN]`: on the
//! deterministic scheduler with seed `N` (default 1), or on OS threads (`--threads`, as
//! in `notifier-sim`). Exit status 0 if no case failed, 1 if one did, 2 on bad input.
//! `cargo xtask suite-table` puts this output side by side with the Linux and Hermit
//! runs.

use std::process::ExitCode;

use backend_sim::SimHarness;
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::Parser;
use notifier_conformance::{run, Config, Twin};

#[path = "../cli/one_line.rs"]
mod one_line;

/// The conformance suite on the simulator.
#[derive(Parser, Debug)]
#[command(
    name = "notifier-suite",
    version,
    about = "Run the conformance suite (cases C-01..) on the simulator and print one line per case."
)]
struct Cli {
    /// Seed of the deterministic scheduler: the same seed replays the same interleavings
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        conflicts_with = "threads"
    )]
    seed: u64,

    /// Run the cases' tasks on OS threads, in parallel, instead of the seeded
    /// deterministic scheduler (not replayable)
    #[arg(long)]
    threads: bool,

    /// Swap one consumer for its broken twin: the cases that must catch it fail
    #[arg(long, value_name = "TWIN", value_parser = twin_values())]
    broken: Option<String>,

    /// Run only the case with this id
    #[arg(long, value_name = "C-NN", value_parser = case_id)]
    only: Option<String>,
}

fn twin_values() -> PossibleValuesParser {
    PossibleValuesParser::new(Twin::ALL.iter().map(|t| {
        PossibleValue::new(t.name()).help(format!("caught by {}", t.catches().join(", ")))
    }))
}

/// A case id: `C-` and digits.
fn case_id(v: &str) -> Result<String, String> {
    match v.strip_prefix("C-") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Ok(v.to_string()),
        _ => Err("a case id is C- and its number, e.g. C-09".to_string()),
    }
}

fn main() -> ExitCode {
    let c = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return one_line::report("notifier-suite", &e),
    };
    let cfg = Config {
        twin: c.broken.as_deref().and_then(Twin::from_name),
        // The suite keeps the id for the whole run; one small string per process.
        only: c.only.map(|o| &*Box::leak(o.into_boxed_str())),
        ..Config::default()
    };
    let h = if c.threads {
        SimHarness::threads()
    } else {
        SimHarness::deterministic(c.seed)
    };
    let mut out = String::new();
    let sum = run(&h, &cfg, &mut out);
    print!("{out}");
    if sum.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
