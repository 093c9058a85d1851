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

use std::process::ExitCode;

mod bench_report;
mod hermit;
mod kmod;
mod suite_table;
mod util;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <bench-report|kmod|hermit|suite-table> [options]   (--help after a command for more)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        return usage();
    };
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "bench-report" => bench_report::main(&rest),
        "kmod" => kmod::main(&rest),
        "hermit" => hermit::main(&rest),
        "suite-table" => suite_table::main(&rest),
        "-h" | "--help" | "help" => {
            usage();
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("xtask: unknown command `{other}`");
            usage()
        }
    }
}
