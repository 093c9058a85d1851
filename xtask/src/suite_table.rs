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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The suite's output as KTAP (version 1, as KUnit prints it) read back: the one reader
/// of the suite's results, for the simulator, the Linux module's log and Hermit's.
#[derive(Debug, Default)]
pub(crate) struct Ktap<'a> {
    /// The `KTAP version 1` line was there.
    pub(crate) version: bool,
    /// The plan (`1..N`): how many cases the run meant to report.
    pub(crate) plan: Option<usize>,
    /// Each result line's case id, name and result, in the order printed.
    pub(crate) cases: Vec<(&'a str, &'a str, Res)>,
    /// The closing line as printed (`N passed, N failed[, N skipped]`).
    pub(crate) closing: Option<&'a str>,
    /// Result lines out of order or unreadable (a broken or interleaved log).
    pub(crate) problems: Vec<String>,
}

impl Ktap<'_> {
    /// Every planned case reported and the closing line printed.
    pub(crate) fn complete(&self) -> bool {
        self.closing.is_some() && self.plan.is_some_and(|p| p == self.cases.len())
    }

    /// The ids of the cases that failed, in order.
    pub(crate) fn failed(&self) -> Vec<&str> {
        self.cases
            .iter()
            .filter(|(_, _, r)| matches!(r, Res::Failed(_)))
            .map(|(id, _, _)| *id)
            .collect()
    }
}

/// Read the suite's KTAP from `lines` (already stripped of any log prefix). Lines that
/// are not the suite's (diagnostics `# …`, a kernel's own messages) are passed over.
pub(crate) fn ktap<'a>(lines: impl IntoIterator<Item = &'a str>) -> Ktap<'a> {
    let mut k = Ktap::default();
    for line in lines {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim() == "KTAP version 1" {
            k.version = true;
        } else if let Some(n) = line.strip_prefix("1..").and_then(|n| n.parse().ok()) {
            k.plan = Some(n);
        } else if let Some((n, id, name, res)) = result_line(line) {
            if n != k.cases.len() + 1 {
                k.problems
                    .push(format!("result {n} ({id}) after {} results", k.cases.len()));
            }
            k.cases.push((id, name, res));
        } else if closing_line(line).is_some() {
            k.closing = Some(line.trim());
        } else if line.starts_with("ok ") || line.starts_with("not ok ") {
            k.problems.push(format!("unreadable result line `{line}`"));
        }
    }
    k
}

/// One KTAP result line of the suite (`ok N C-NN name`, `ok N C-NN name # what ran`,
/// `ok N C-NN name # SKIP why`, `not ok N C-NN name # why`) as its number, case id,
/// name and result; `None` for any other line.
pub(crate) fn result_line(line: &str) -> Option<(usize, &str, &str, Res)> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        (false, line.strip_prefix("not ok ")?)
    };
    let (head, directive) = match rest.split_once(" # ") {
        Some((h, d)) => (h, Some(d.trim())),
        None => (rest.strip_suffix(" #").unwrap_or(rest), None),
    };
    let mut w = head.split_whitespace();
    let n = w.next()?.parse().ok()?;
    let (id, name) = (w.next()?, w.next().unwrap_or(""));
    if !id.starts_with("C-") || w.next().is_some() {
        return None;
    }
    let skip = directive.and_then(|d| {
        d.strip_prefix("SKIP")
            .filter(|r| r.is_empty() || r.starts_with(' '))
    });
    let res = match (ok, skip, directive) {
        (true, Some(why), _) => Res::NotApplicable(why.trim().to_string()),
        (true, None, None) => Res::Ok(None),
        (true, None, Some(part)) => Res::Ok(Some(part.to_string())),
        (false, _, why) => Res::Failed(why.unwrap_or("").to_string()),
    };
    Some((n, id, name, res))
}

/// The cases after `NAME catches` in a `suite-twin:` line, the ones a run with that
/// broken consumer must fail: none when the backend cannot catch it (it lacks the
/// oracle that would), and then no case may fail.
pub(crate) fn twin_catchers(rest: &str) -> Option<Vec<&str>> {
    let (_, ids) = rest.trim_end().split_once(" catches")?;
    Some(ids.split_whitespace().collect())
}

/// How a run with a broken consumer went, for the log.
pub(crate) fn twin_verdict(want: &[&str]) -> String {
    if want.is_empty() {
        "the broken consumer cannot be caught on this backend (it lacks the oracle that \
         would see it): no case failed"
            .to_owned()
    } else {
        format!("the broken consumer was caught by exactly {want:?}")
    }
}

/// The closing line `N passed, N failed` (optionally `, N skipped`) as (passed, failed,
/// skipped).
pub(crate) fn closing_line(line: &str) -> Option<(usize, usize, usize)> {
    let mut parts = line.trim().split(", ");
    let p = parts.next()?.strip_suffix(" passed")?.parse().ok()?;
    let f = parts.next()?.strip_suffix(" failed")?.parse().ok()?;
    let s = match parts.next() {
        None => 0,
        Some(s) => s.strip_suffix(" skipped")?.parse().ok()?,
    };
    match parts.next() {
        None => Some((p, f, s)),
        Some(_) => None,
    }
}

/// A saved run (one file: the suite's output alone) as the table's column reads it.
fn parse(text: &str) -> Run {
    let k = ktap(text.lines());
    // A run that did not report every case it planned did not finish, whatever it
    // printed last.
    let finished = k.plan.is_none_or(|p| p == k.cases.len());
    let cases = k
        .cases
        .into_iter()
        .map(|(id, name, res)| (id.to_string(), (name.to_string(), res)))
        .collect();
    Run {
        cases,
        closing: k.closing.filter(|_| finished).map(str::to_string),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            result_line("ok 1 C-01 register"),
            Some((1, "C-01", "register", Res::Ok(None)))
        );
        assert_eq!(
            result_line("ok 6 C-06 coverage # 1 of 5 operations; not on this backend: cow"),
            Some((
                6,
                "C-06",
                "coverage",
                Res::Ok(Some("1 of 5 operations; not on this backend: cow".into()))
            ))
        );
        assert_eq!(
            result_line("ok 8 C-08 non_blocking # SKIP no OOM reaper"),
            Some((
                8,
                "C-08",
                "non_blocking",
                Res::NotApplicable("no OOM reaper".into())
            ))
        );
        assert_eq!(
            result_line("not ok 9 C-09 no_stale_translation # stale at 0x1000"),
            Some((
                9,
                "C-09",
                "no_stale_translation",
                Res::Failed("stale at 0x1000".into())
            ))
        );
        assert_eq!(
            result_line("not ok 9 C-09 no_stale_translation"),
            Some((
                9,
                "C-09",
                "no_stale_translation",
                Res::Failed(String::new())
            ))
        );
        // Not the suite's: another test's KTAP, a diagnostic, the old format.
        assert_eq!(result_line("ok 1 example_simple_test"), None);
        assert_eq!(result_line("# ok 1 C-01 register"), None);
        assert_eq!(result_line("C-01 register ... ok"), None);
        assert_eq!(result_line("ok x C-01 register"), None);
    }

    #[test]
    fn twin_lines() {
        assert_eq!(
            twin_catchers("kvm-ignores-seq catches C-09 C-12"),
            Some(vec!["C-09", "C-12"])
        );
        assert_eq!(twin_catchers("kvm-zaps-in-end catches"), Some(vec![]));
        assert_eq!(twin_catchers("kvm-zaps-in-end"), None);
    }

    #[test]
    fn closing_lines() {
        assert_eq!(closing_line("7 passed, 0 failed"), Some((7, 0, 0)));
        assert_eq!(
            closing_line("7 passed, 2 failed, 1 skipped"),
            Some((7, 2, 1))
        );
        assert_eq!(closing_line("ok 7 passed"), None);
        assert_eq!(closing_line("7 passed, 2 failed, 1 lost"), None);
    }

    #[test]
    fn a_run() {
        let text = "KTAP version 1\n# notifier conformance suite on sim\n1..3\n\
                    ok 1 C-01 register\nnot ok 2 C-02 no_half_pairs # why\n\
                    ok 3 C-05 get_put_synchronize # SKIP no\n1 passed, 1 failed, 1 skipped\n";
        let k = ktap(text.lines());
        assert!(k.version && k.complete() && k.problems.is_empty());
        assert_eq!(k.plan, Some(3));
        assert_eq!(k.failed(), ["C-02"]);
        assert_eq!(k.closing, Some("1 passed, 1 failed, 1 skipped"));
        let run = parse(text);
        assert_eq!(run.cases.len(), 3);
        assert!(run.closing.is_some());
        // Fewer results than planned: not finished, whatever the last line says.
        let short = text.replace("ok 1 C-01 register\n", "");
        assert!(!ktap(short.lines()).complete());
        assert!(parse(&short).closing.is_none());
        // Out of order numbers are reported.
        let twice = text.replace("ok 3 C-05", "ok 2 C-05");
        assert_eq!(ktap(twice.lines()).problems.len(), 1);
    }
}
