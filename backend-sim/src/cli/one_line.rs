//! clap's errors as one line (shared by `notifier-sim` and `notifier-suite`).
//!
//! clap prints an error, a tip, the usage and a pointer to `--help` on separate lines;
//! the project's CLIs promise one line and exit status 2 for bad input, so the same
//! text is folded onto one line here. `--help` and `--version` print as clap prints
//! them and exit 0.

use std::process::ExitCode;

/// Print `e` for the program `bin` and return the exit status: 0 for `--help` and
/// `--version`, 2 for bad input (on one line: the error, then clap's tip).
pub fn report(bin: &str, e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut line = fold(bin, &e.render().to_string());
    if threads_given_a_value(std::env::args().skip(1)) {
        line.push_str(
            "; --threads takes no value: it runs the tasks on OS threads (the guest's vCPUs are notifier-sim's --vcpus N)",
        );
    }
    eprintln!("{line}");
    ExitCode::from(2)
}

/// `--threads` followed by a number or given one with `=`: its meaning before it was
/// the same in every command.
pub fn threads_given_a_value(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().enumerate().any(|(i, a)| {
        a.starts_with("--threads=")
            || (a == "--threads"
                && args
                    .get(i + 1)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
    })
}

/// clap's rendered error text on one line, without the usage and the `--help` hint
/// (replaced by a shorter one).
pub fn fold(bin: &str, text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    format!("{bin}: {} (see {bin} --help)", parts.join("; "))
}
