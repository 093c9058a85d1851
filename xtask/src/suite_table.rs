//! `cargo xtask suite-table`: the conformance suite's results on every backend, case by
//! case, side by side.
//!
//! It runs the suite on the simulator (`notifier-suite`, seed 1) and reads what the
//! kernel runs saved: `target/kmod/suite.txt` (Linux, consumers on the core),
//! `target/kmod/suite-reference.txt` (Linux, consumers on Linux's own notifier) and
//! `target/hermit/suite.txt` (Hermit). It prints a table, lists every case whose
//! result differs from the simulator's with the reason the backend gave, and writes
//! both to `target/suite-table.md`.
//!
//! Exit status 1 if a run has a failed case or no closing line, or if a run named with
//! `--require` is missing; 2 on bad input. The one exception: reference mode may fail
//! the cases `backend-linux-kmod/reference-differences.txt` lists, where Linux's own
//! notifier is known to give less than the contract; those are marked, not fatal.

use crate::util::workspace_root;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};

/// A run's column: its name and where its output is.
struct Column {
    key: &'static str,
    title: &'static str,
    file: &'static str,
    /// Where the cases this run may fail are listed with the reason (Linux's own
    /// notifier giving less than the contract), if anywhere.
    known: Option<&'static str>,
}

const COLUMNS: [Column; 4] = [
    Column {
        key: "host",
        title: "simulator",
        file: "target/suite/host.txt",
        known: None,
    },
    Column {
        key: "kmod",
        title: "Linux (core)",
        file: "target/kmod/suite.txt",
        known: None,
    },
    Column {
        key: "kmod-reference",
        title: "Linux (reference: its C notifier)",
        file: "target/kmod/suite-reference.txt",
        known: Some(KNOWN_DIFFERENCES),
    },
    Column {
        key: "hermit",
        title: "Hermit",
        file: "target/hermit/suite.txt",
        known: None,
    },
];

/// One case's result in one run.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Res {
    /// Passed; with what ran when the backend could make only part of the case.
    Ok(Option<String>),
    Failed(String),
    NotApplicable(String),
}

impl Res {
    pub(crate) fn short(&self) -> &'static str {
        match self {
            Res::Ok(None) => "ok",
            Res::Ok(Some(_)) => "ok, in part",
            Res::Failed(_) => "FAILED",
            Res::NotApplicable(_) => "n/a",
        }
    }
    fn same_kind(&self, other: &Res) -> bool {
        self.short() == other.short()
    }
}

/// A parsed run: case id to (name, result), and the closing line.
struct Run {
    cases: BTreeMap<String, (String, Res)>,
    closing: Option<String>,
}

/// One case line of the suite (`C-NN name ... ok|ok (part)|FAILED: why|not applicable:
/// why`) as its id, name and result; `None` for any other line.
pub(crate) fn case_line(line: &str) -> Option<(&str, &str, Res)> {
    let (head, result) = line.trim_end().split_once(" ... ")?;
    let mut w = head.split_whitespace();
    let (id, name) = (w.next()?, w.next()?);
    if !id.starts_with("C-") {
        return None;
    }
    let res = if result == "ok" {
        Res::Ok(None)
    } else if let Some(part) = result.strip_prefix("ok (") {
        Res::Ok(Some(part.trim_end_matches(')').to_string()))
    } else if let Some(why) = result.strip_prefix("FAILED: ") {
        Res::Failed(why.to_string())
    } else if let Some(why) = result.strip_prefix("not applicable: ") {
        Res::NotApplicable(why.to_string())
    } else {
        Res::Failed(format!("unreadable result `{result}`"))
    };
    Some((id, name, res))
}

/// Parse the suite's lines (case lines, then `N passed, N failed[, N skipped]`).
fn parse(text: &str) -> Run {
    let mut cases = BTreeMap::new();
    let mut closing = None;
    for line in text.lines() {
        if let Some((id, name, res)) = case_line(line) {
            cases.insert(id.to_string(), (name.to_string(), res));
        } else if line.contains(" passed, ") && line.contains(" failed") {
            closing = Some(line.trim_end().to_string());
        }
    }
    Run { cases, closing }
}

/// Where the cases in which Linux's own notifier is known to give less than the
/// contract are listed, each with the reason (`C-NN why`; `#` starts a comment).
pub(crate) const KNOWN_DIFFERENCES: &str = "backend-linux-kmod/reference-differences.txt";

/// The case ids a known-differences file lists.
pub(crate) fn known_ids(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("C-"))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// Run the suite on the simulator and save its output where the table reads it.
fn host_run(root: &Path) -> Result<(), String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "run",
            "-q",
            "--release",
            "-p",
            "backend-sim",
            "--bin",
            "notifier-suite",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let path = root.join(COLUMNS[0].file);
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&path, &out.stdout))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !out.status.success() && out.stdout.is_empty() {
        return Err(format!(
            "notifier-suite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// `cargo xtask suite-table`: the suite's results on the simulator, Linux (core and
/// reference mode) and Hermit, case by case.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Runs whose saved lines must be there (comma-separated); the others are shown if
    /// present
    #[arg(long, value_name = "RUNS", value_delimiter = ',', value_parser = run_keys())]
    require: Vec<String>,
}

fn run_keys() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(COLUMNS.iter().map(|c| c.key))
}

/// Entry point, dispatched from `main.rs` with the parsed options.
pub fn main(opts: Options) -> ExitCode {
    let require = opts.require;
    let root = workspace_root();
    if let Err(e) = host_run(&root) {
        eprintln!("suite-table: {e}");
        return ExitCode::FAILURE;
    }
    let mut ok = true;
    let mut runs: Vec<(&Column, Option<Run>)> = Vec::new();
    for c in &COLUMNS {
        let run = std::fs::read_to_string(root.join(c.file))
            .ok()
            .map(|t| parse(&t));
        if run.is_none() && require.iter().any(|r| r == c.key) {
            eprintln!(
                "suite-table: {} is required and {} is missing",
                c.key, c.file
            );
            ok = false;
        }
        runs.push((c, run));
    }
    let mut md = String::new();
    let _ = writeln!(md, "# The conformance suite on every backend\n");
    let _ = write!(md, "| case |");
    for (c, _) in &runs {
        let _ = write!(md, " {} |", c.title);
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---|".repeat(runs.len()));
    let host = runs[0].1.as_ref().expect("the host run was just written");
    for (id, (name, _)) in &host.cases {
        let _ = write!(md, "| {id} {name} |");
        for (_, run) in &runs {
            let cell = match run {
                None => "not run",
                Some(r) => r.cases.get(id).map_or("missing", |(_, res)| res.short()),
            };
            let _ = write!(md, " {cell} |");
        }
        let _ = writeln!(md);
    }
    let _ = write!(md, "| closing line |");
    for (_, run) in &runs {
        let cell = match run {
            None => "not run".to_string(),
            Some(r) => r.closing.clone().unwrap_or_else(|| "MISSING".into()),
        };
        let _ = write!(md, " {cell} |");
    }
    let _ = writeln!(md, "\n");
    let _ = writeln!(
        md,
        "## Where a backend's result differs from the simulator's\n"
    );
    let mut differences = 0;
    for (c, run) in runs.iter().skip(1) {
        let Some(run) = run else {
            let _ = writeln!(md, "- {}: not run (no `{}`)", c.title, c.file);
            continue;
        };
        if run.closing.is_none() {
            ok = false;
            let _ = writeln!(
                md,
                "- {}: no closing line (the run did not finish)",
                c.title
            );
        }
        for (id, (name, want)) in &host.cases {
            match run.cases.get(id) {
                None => {
                    ok = false;
                    differences += 1;
                    let _ = writeln!(md, "- {}: {id} {name} missing", c.title);
                }
                Some((_, got)) if !got.same_kind(want) => {
                    differences += 1;
                    let why = match got {
                        Res::Failed(w) | Res::NotApplicable(w) | Res::Ok(Some(w)) => w.as_str(),
                        Res::Ok(None) => "",
                    };
                    let _ = writeln!(
                        md,
                        "- {}: {id} {name}: {} (simulator: {}){}{}",
                        c.title,
                        got.short(),
                        want.short(),
                        if why.is_empty() { "" } else { " — " },
                        why
                    );
                }
                Some(_) => {}
            }
        }
    }
    for (c, run) in &runs {
        let Some(run) = run else { continue };
        let known_text = c
            .known
            .and_then(|f| std::fs::read_to_string(root.join(f)).ok())
            .unwrap_or_default();
        let known = known_ids(&known_text);
        for (id, (name, res)) in &run.cases {
            if let Res::Failed(why) = res {
                if known.contains(&id.as_str()) {
                    let _ = writeln!(
                        md,
                        "- FAILED on {} as known ({}): {id} {name}: {why}",
                        c.title,
                        c.known.unwrap_or("")
                    );
                } else {
                    ok = false;
                    let _ = writeln!(md, "- FAILED on {}: {id} {name}: {why}", c.title);
                }
            }
        }
    }
    if differences == 0 && runs.iter().skip(1).any(|(_, r)| r.is_some()) {
        let _ = writeln!(md, "None.");
    }
    print!("{md}");
    let path = root.join("target/suite-table.md");
    if let Err(e) = std::fs::write(&path, &md) {
        eprintln!("suite-table: {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("suite-table: written to {}", path.display());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
