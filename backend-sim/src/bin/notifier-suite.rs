//! The conformance suite on the simulator, printed exactly as every backend prints it:
//! the header, one line per case, the closing line `N passed, N failed`.
//!
//! `notifier-suite [--seed N | --threads] [--broken TWIN] [--only C-NN]`: on the
//! deterministic scheduler with seed `N` (default 1), or on real threads. Exit status 0
//! if no case failed, 1 if one did, 2 on bad input. `cargo xtask suite-table` puts this
//! output side by side with the Linux and Hermit runs.

use std::process::ExitCode;

use backend_sim::SimHarness;
use notifier_conformance::{run, Config, Twin};

fn main() -> ExitCode {
    let mut seed = Some(1u64);
    let mut cfg = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let r: Result<(), String> = match a.as_str() {
            "--seed" => value().and_then(|v| {
                v.parse()
                    .map(|s| seed = Some(s))
                    .map_err(|_| format!("--seed: `{v}` is not a number"))
            }),
            "--threads" => {
                seed = None;
                Ok(())
            }
            "--broken" => value().and_then(|v| {
                Twin::from_name(&v)
                    .map(|t| cfg.twin = Some(t))
                    .ok_or_else(|| format!("--broken: no twin `{v}`"))
            }),
            "--only" => value().map(|v| cfg.only = Some(Box::leak(v.into_boxed_str()))),
            "-h" | "--help" => {
                println!(
                    "usage: notifier-suite [--seed N | --threads] [--broken TWIN] [--only C-NN]"
                );
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown option `{other}`")),
        };
        if let Err(e) = r {
            eprintln!("notifier-suite: {e}");
            return ExitCode::from(2);
        }
    }
    let h = match seed {
        Some(s) => SimHarness::deterministic(s),
        None => SimHarness::threads(),
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
