//! Project automation, run as `cargo xtask <command>`.
//!
//! Each command lives in its own module, owned by the backend or tool it drives:
//!
//! * `bench-report` ([`bench_report`]): runs the criterion benchmarks and writes
//!   `benches/RESULTS.md`.
//! * `kmod` ([`kmod`]): builds (or reuses) a Linux 6.12 kernel with Rust support, builds
//!   the notifier module and runs its in-kernel tests under QEMU.
//! * `hermit` ([`hermit`]): builds (or reuses) a patched Hermit kernel, the loader and the
//!   test image, and runs it on 2 CPUs under QEMU.
//! * `suite-table` ([`suite_table`]): the conformance suite's results on the simulator,
//!   Linux (core and reference mode) and Hermit, case by case.
//!
//! The options are parsed with clap, as in `notifier-sim` and `notifier-suite`: each
//! command's `--help` lists them with their defaults; bad input is one line on stderr
//! and exit status 2.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod bench_report;
mod hermit;
mod kmod;
mod suite_table;
mod util;

/// Project automation for the MMU notifier workspace.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the criterion benchmarks and write benches/RESULTS.md
    BenchReport(bench_report::Options),
    /// Build a Linux 6.12 kernel with Rust (cached), the module, and run its tests and
    /// the conformance suite under QEMU
    Kmod(kmod::Options),
    /// Build the patched Hermit kernel (cached), the loader and the test image, and run
    /// it under QEMU
    Hermit(hermit::Options),
    /// The conformance suite case by case: simulator, Linux (core, reference), Hermit
    SuiteTable(suite_table::Options),
}

/// A duration in whole seconds (`--timeout`).
fn secs(v: &str) -> Result<Duration, String> {
    v.trim()
        .parse()
        .map(Duration::from_secs)
        .map_err(|_| "a whole number of seconds".to_string())
}

/// clap's error on one line: the error and its tip, without the usage.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    format!("xtask: {} (see cargo xtask --help)", parts.join("; "))
}

fn main() -> ExitCode {
    // `cargo xtask kmod …` runs this binary with the command as its first argument.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    eprintln!("{}", one_line(&e.render().to_string()));
                    ExitCode::from(2)
                }
            };
        }
    };
    match cli.cmd {
        Cmd::BenchReport(o) => bench_report::main(o),
        Cmd::Kmod(o) => kmod::main(o),
        Cmd::Hermit(o) => hermit::main(o),
        Cmd::SuiteTable(o) => suite_table::main(o),
    }
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
    fn options_parse_with_equals_and_lists() {
        let c = Cli::try_parse_from(["cargo xtask", "suite-table", "--require=host,kmod"])
            .expect("parses");
        assert!(matches!(c.cmd, Cmd::SuiteTable(_)));
        assert!(
            Cli::try_parse_from(["cargo xtask", "kmod", "--timeout=30", "--no-install"]).is_ok()
        );
        assert!(Cli::try_parse_from(["cargo xtask", "hermit", "--smoke-only", "--suite"]).is_ok());
        let e = Cli::try_parse_from(["cargo xtask", "kmod", "--timout", "5"]).unwrap_err();
        assert_eq!(one_line(&e.render().to_string()).lines().count(), 1);
    }
}
