//! `cargo xtask bench-report` (issues #7 and #16): runs the benchmarks of `notifier-benches`,
//! the zero-allocation test and the `footprint` binary, reads criterion's medians, and
//! writes `benches/RESULTS.md`: the tables, the ratios against the baselines measured in
//! the same run, and a met/missed verdict per target.
//!
//! Options: `--skip-run` rebuilds the report from the results already on disk (the
//! zero-allocation test and `footprint` still run). The hand-written analysis between
//! the `ANALYSIS` markers of an existing RESULTS.md is kept.
//!
//! `CARGO_TARGET_DIR` is respected: criterion writes under `$CARGO_TARGET_DIR/criterion`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use crate::util::workspace_root;
use serde_json::Value;

const BEGIN_ANALYSIS: &str = "<!-- BEGIN ANALYSIS (hand-written, kept by the generator) -->";
const END_ANALYSIS: &str = "<!-- END ANALYSIS -->";

/// Dispatch subscriber counts and the lists, as the benchmark names them.
const NS: [u32; 4] = [1, 4, 16, 64];
const LISTS: [(&str, &str); 9] = [
    ("direct", "direct `&dyn` calls (limit)"),
    ("core", "notifier-core"),
    ("rwlock", "`RwLock<Vec<Arc<dyn>>>`"),
    ("arc_swap", "arc-swap"),
    ("crossbeam_epoch", "crossbeam-epoch list"),
    ("rcu_clean", "rcu-clean `ArcRcu`"),
    ("liburcu", "liburcu (C)"),
    (
        "linux_srcu",
        "Linux's algorithm (C): hlist under 6.12's SRCU read side",
    ),
    (
        "core_fenced",
        "what-if: notifier-core with a full fence on the read side (no `membarrier`)",
    ),
];

/// The Rust peers: "the fastest Rust peer" is the fastest of these in the run.
const RUST_PEERS: [&str; 4] = ["rwlock", "arc_swap", "crossbeam_epoch", "rcu_clean"];
/// Every peer of the churn table (the core is ahead of all of them, or not).
const CHURN_PEERS: [&str; 6] = [
    "rwlock",
    "arc_swap",
    "crossbeam_epoch",
    "rcu_clean",
    "liburcu",
    "linux_srcu",
];

/// `cargo xtask bench-report`: runs the benchmarks and writes benches/RESULTS.md.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Rebuild the report from the results already on disk (the zero-allocation test
    /// and footprint still run)
    #[arg(long)]
    skip_run: bool,
}

/// Entry point, dispatched from `main.rs` with the parsed options.
pub fn main(opts: Options) -> ExitCode {
    let skip_run = opts.skip_run;
    match run(skip_run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// The first line a command prints, or `unknown`.
fn output_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1-, 5- and 15-minute load averages: other work on the machine skews timings.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn run(skip_run: bool) -> Result<(), String> {
    let root = workspace_root();
    let target = target_dir(&root);
    let load_before = load_average();
    let criterion_dir = target.join("criterion");
    if !skip_run {
        // Only this run's results may end up in the tables.
        if criterion_dir.exists() {
            std::fs::remove_dir_all(&criterion_dir)
                .map_err(|e| format!("removing {}: {e}", criterion_dir.display()))?;
        }
        eprintln!("xtask bench-report: cargo bench -p notifier-benches (a few minutes)");
        let st = cargo()
            .args(["bench", "-p", "notifier-benches", "--bench", "notifier"])
            .status()
            .map_err(|e| format!("running cargo bench: {e}"))?;
        if !st.success() {
            return Err(format!("cargo bench failed: {st}"));
        }
    }
    eprintln!("xtask bench-report: the zero-allocation test");
    let zero_alloc = cargo()
        .args([
            "test",
            "--release",
            "-p",
            "notifier-benches",
            "--test",
            "zero_alloc",
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running the zero-allocation test: {e}"))?
        .success();
    eprintln!("xtask bench-report: footprint");
    let fp = cargo()
        .args([
            "run",
            "-q",
            "--release",
            "-p",
            "notifier-benches",
            "--bin",
            "footprint",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running footprint: {e}"))?;
    if !fp.status.success() {
        return Err(format!("footprint failed: {}", fp.status));
    }
    let footprint: Value = serde_json::from_slice(&fp.stdout)
        .map_err(|e| format!("footprint printed no JSON: {e}"))?;

    let medians = read_medians(&criterion_dir)?;
    if medians.is_empty() {
        return Err(format!(
            "no criterion results under {} (run without --skip-run)",
            criterion_dir.display()
        ));
    }
    let meta = Meta {
        load_before,
        load_after: load_average(),
        date: output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        nproc: output_of("nproc", &[]),
        rustc: output_of("rustc", &["--version"]),
        cpu: cpu_model(),
    };
    let results_path = root.join("benches/RESULTS.md");
    let analysis = std::fs::read_to_string(&results_path)
        .ok()
        .and_then(|old| kept_analysis(&old));
    let kbench = read_kbench(&root.join("target/kmod/kbench.txt"));
    let report = Report {
        m: &medians,
        footprint: &footprint,
        zero_alloc,
        kbench: &kbench,
    };
    let md = report.render(&meta, analysis.as_deref());
    std::fs::write(&results_path, md)
        .map_err(|e| format!("writing {}: {e}", results_path.display()))?;
    eprintln!("xtask bench-report: wrote {}", results_path.display());
    Ok(())
}

/// A criterion median with its 95 % confidence interval, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Median {
    ns: f64,
    lo: f64,
    hi: f64,
}

/// Every `new/benchmark.json` under `dir`: full benchmark id -> median.
fn read_medians(dir: &Path) -> Result<BTreeMap<String, Median>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.file_name().is_some_and(|n| n == "benchmark.json")
                && p.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == "new")
            {
                let bench = read_json(&p)?;
                let est = read_json(&p.with_file_name("estimates.json"))?;
                let id = bench["full_id"]
                    .as_str()
                    .ok_or_else(|| format!("{}: no full_id", p.display()))?;
                let m = &est["median"];
                let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
                out.insert(
                    id.to_owned(),
                    Median {
                        ns: num(&m["point_estimate"]),
                        lo: num(&m["confidence_interval"]["lower_bound"]),
                        hi: num(&m["confidence_interval"]["upper_bound"]),
                    },
                );
            }
        }
    }
    Ok(out)
}

fn read_json(p: &Path) -> Result<Value, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&s).map_err(|e| format!("{}: {e}", p.display()))
}

/// The hand-written block of an earlier RESULTS.md, markers included.
fn kept_analysis(old: &str) -> Option<String> {
    let a = old.find(BEGIN_ANALYSIS)?;
    let b = old[a..].find(END_ANALYSIS)? + a + END_ANALYSIS.len();
    Some(old[a..b].to_owned())
}

struct Meta {
    load_before: String,
    load_after: String,
    date: String,
    nproc: String,
    rustc: String,
    cpu: String,
}

/// A duration for humans: ns below a microsecond, µs below a millisecond.
fn t(ns: f64) -> String {
    if !ns.is_finite() {
        "—".to_owned()
    } else if ns < 0.0 {
        format!("−{}", t(-ns))
    } else if ns < 10.0 {
        format!("{ns:.2} ns")
    } else if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn x(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}x")
    } else {
        "—".to_owned()
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// One row of the in-kernel measurement (`kbench.rs` in the Linux module): medians in
/// nanoseconds per invalidation, for `n` subscribers of each kind.
#[derive(Debug, Clone, PartialEq)]
struct KbenchRow {
    n: u64,
    nobody: f64,
    linux_c: f64,
    binding: f64,
    core: f64,
    core_alone: f64,
}

/// The in-kernel rows of the last `cargo xtask kmod` and when it wrote them, if it did.
struct Kbench {
    rows: Vec<KbenchRow>,
    when: String,
}

/// Parse `kbench: row n=1 nobody=.. linux-c=.. binding=.. core=.. core-alone=..` lines
/// (`target/kmod/kbench.txt` holds them without the `kbench: ` prefix).
fn parse_kbench(text: &str) -> Vec<KbenchRow> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("kbench: ").unwrap_or(l.trim());
            let rest = l.strip_prefix("row ")?;
            let kv: BTreeMap<&str, f64> = rest
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect();
            Some(KbenchRow {
                n: *kv.get("n")? as u64,
                nobody: *kv.get("nobody")?,
                linux_c: *kv.get("linux-c")?,
                binding: *kv.get("binding")?,
                core: *kv.get("core")?,
                core_alone: *kv.get("core-alone")?,
            })
        })
        .collect()
}

fn read_kbench(path: &Path) -> Option<Kbench> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows = parse_kbench(&text);
    if rows.is_empty() {
        return None;
    }
    let when = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            output_of(
                "date",
                &[
                    "-u",
                    "-d",
                    &format!("@{}", d.as_secs()),
                    "+%Y-%m-%d %H:%M UTC",
                ],
            )
        })
        .unwrap_or_else(|| "unknown".to_owned());
    Some(Kbench { rows, when })
}

struct Report<'a> {
    m: &'a BTreeMap<String, Median>,
    footprint: &'a Value,
    zero_alloc: bool,
    kbench: &'a Option<Kbench>,
}

impl Report<'_> {
    fn get(&self, id: &str) -> Option<f64> {
        self.m.get(id).map(|m| m.ns)
    }

    /// Median of `id`, or NaN (printed as a dash).
    fn ns(&self, id: &str) -> f64 {
        self.get(id).unwrap_or(f64::NAN)
    }

    /// The 95 % confidence interval of the median of `id`.
    fn ci(&self, id: &str) -> String {
        self.m
            .get(id)
            .map_or("—".to_owned(), |m| format!("{} – {}", t(m.lo), t(m.hi)))
    }

    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.get(a)? / self.get(b)?)
    }

    fn footprint_bytes(&self, key: &str) -> Option<f64> {
        self.footprint["entries"]
            .as_array()?
            .iter()
            .find(|e| e["key"] == key)?["bytes"]
            .as_f64()
    }

    /// `a / b` as text, and whether it is at most `limit`.
    fn ratio_row(&self, a: &str, b: &str, limit: f64) -> (String, Option<bool>) {
        let r = self.ratio(a, b);
        (
            format!(
                "{} vs {} = {}",
                t(self.ns(a)),
                t(self.ns(b)),
                x(r.unwrap_or(f64::NAN))
            ),
            r.map(|r| r <= limit),
        )
    }

    /// The targets of issue #16: (target, measured, verdict).
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut v = Vec::new();
        let mut push = |target: &str, (measured, ok): (String, Option<bool>)| {
            v.push((target.to_owned(), measured, ok));
        };
        for (target, a, b, limit) in [
            (
                "no address-space object: start + end within 1.5x an empty call (through \
                 `RegistrationExcluded`: the caller excludes registration, as Linux's \
                 `mm_has_notifiers` callers do; the counted path is in the fast-path table)",
                "fast_path/no_subscriber_excluded",
                "fast_path/empty_call",
                1.5,
            ),
            (
                "object, no subscriber: start + end within 2x one liburcu read section",
                "fast_path/object_no_subscriber",
                "read_side/liburcu",
                2.0,
            ),
            (
                "SRCU read section within 1.5x liburcu's `rcu_read_lock` + `rcu_read_unlock`",
                "read_side/core_srcu",
                "read_side/liburcu",
                1.5,
            ),
            (
                "1 subscriber: within 2x liburcu",
                "dispatch/core/1",
                "dispatch/liburcu/1",
                2.0,
            ),
            (
                "16 subscribers: within 1.2x 16 direct `&dyn` calls",
                "dispatch/core/16",
                "dispatch/direct/16",
                1.2,
            ),
        ] {
            push(target, self.ratio_row(a, b, limit));
        }
        // The fastest Rust peer of this run at N = 1.
        let fastest = RUST_PEERS
            .iter()
            .filter_map(|p| {
                let id = format!("dispatch/{p}/1");
                self.get(&id).map(|ns| (id, ns))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        push(
            "1 subscriber: at most 0.9x the fastest Rust peer",
            match fastest {
                Some((id, _)) => {
                    let (m, ok) = self.ratio_row("dispatch/core/1", &id, 0.9);
                    (format!("{m} (fastest: `{id}`)"), ok)
                }
                None => ("no Rust peer measured".to_owned(), None),
            },
        );
        // Churning: every peer measured, at every N.
        let mut behind = Vec::new();
        let mut measured = 0;
        for (peer, _) in LISTS.iter().filter(|(k, _)| CHURN_PEERS.contains(k)) {
            for n in NS {
                if let Some(r) = self.ratio(
                    &format!("dispatch_churn/{peer}/{n}"),
                    &format!("dispatch_churn/core/{n}"),
                ) {
                    measured += 1;
                    if r <= 1.0 {
                        behind.push(format!("{peer} N={n} ({})", x(r)));
                    }
                }
            }
        }
        push(
            "a writer churning: ahead of every peer at every N",
            (
                if behind.is_empty() {
                    format!("ahead at all {measured} measured points")
                } else {
                    format!(
                        "peer time / core time at or below 1x: {}",
                        behind.join(", ")
                    )
                },
                (measured > 0).then_some(behind.is_empty()),
            ),
        );
        let ratios: Vec<(u32, Option<f64>)> = NS
            .iter()
            .map(|&n| {
                (
                    n,
                    self.ratio(
                        &format!("dispatch_churn/rwlock/{n}"),
                        &format!("dispatch_churn/core/{n}"),
                    ),
                )
            })
            .collect();
        let all = ratios
            .iter()
            .map(|(_, r)| r.map(|r| r >= 5.0))
            .collect::<Option<Vec<_>>>();
        push(
            "a writer churning: at least 5x faster than `RwLock<Vec<Arc<dyn>>>` at every N",
            (
                ratios
                    .iter()
                    .map(|(n, r)| format!("N={n}: {}", x(r.unwrap_or(f64::NAN))))
                    .collect::<Vec<_>>()
                    .join(", "),
                all.map(|a| a.iter().all(|&b| b)),
            ),
        );
        push(
            "intervals: 100 000 cost at most 6x what 10 cost (touching 1)",
            self.ratio_row(
                "intervals/core/touch1/100000",
                "intervals/core/touch1/10",
                6.0,
            ),
        );
        for k in [1, 64] {
            let r = self.ratio(
                &format!("intervals/linear/touch{k}/100000"),
                &format!("intervals/core/touch{k}/100000"),
            );
            push(
                &format!(
                    "intervals: at least 100x less than a linear scan (100 000, touching {k})"
                ),
                (
                    format!("scan / core = {}", x(r.unwrap_or(f64::NAN))),
                    r.map(|r| r >= 100.0),
                ),
            );
        }
        let all = self.get("teardown/unregister_all/32000");
        let drop = self.get("teardown/address_space_drop/32000");
        push(
            "32 000 subscribers: unregistering every one, and tearing the address space down under them, each under 50 ms (C-23)",
            (
                format!(
                    "unregister all: {}; teardown: {}",
                    t(all.unwrap_or(f64::NAN)),
                    t(drop.unwrap_or(f64::NAN))
                ),
                all.zip(drop).map(|(a, d)| a < 50e6 && d < 50e6),
            ),
        );
        let depth = &self.footprint["itree_depth"];
        let (n, d) = (depth["n"].as_f64(), depth["depth"].as_f64());
        push(
            "interval tree depth after an adversarial insertion order at most 2 log2(n) + 2 (C-23)",
            match n.zip(d) {
                Some((n, d)) => {
                    let bound = 2.0 * n.log2() + 2.0;
                    (
                        format!(
                            "{} intervals inserted in increasing order: depth {d} (bound {bound:.1}; every adversarial order: `c23_itree`)",
                            n as u64
                        ),
                        Some(d <= bound),
                    )
                }
                None => ("not printed by `footprint`".to_owned(), None),
            },
        );
        push(
            "zero allocations on every invalidation path (`cargo test -p notifier-benches --test zero_alloc`)",
            (
                if self.zero_alloc {
                    "test passed".into()
                } else {
                    "test FAILED".into()
                },
                Some(self.zero_alloc),
            ),
        );
        let b = self.footprint_bytes("core_subscriber_adds");
        push(
            "at most 32 bytes added by the core per subscriber",
            (
                format!("{} bytes", b.map_or("—".to_owned(), |b| b.to_string())),
                b.map(|b| b <= 32.0),
            ),
        );
        let u = self.get("grace_period/core_unregister/idle");
        push(
            "unregister with no reader in flight (its grace periods included) under 10 µs",
            (t(u.unwrap_or(f64::NAN)), u.map(|u| u < 10_000.0)),
        );
        v
    }

    /// The in-kernel section, from the last `cargo xtask kmod` (`kbench.rs`).
    fn render_kbench(&self, w: &mut String) {
        let _ = writeln!(w, "\n## In the kernel (QEMU, software emulation)\n");
        let Some(k) = self.kbench else {
            let _ = writeln!(
                w,
                "Not measured: no `target/kmod/kbench.txt` (run `cargo xtask kmod` first)."
            );
            return;
        };
        let _ = writeln!(w, "From the last `cargo xtask kmod` ({}): `kbench.rs` in the guest, Linux 6.12 with KASAN and lockdep under QEMU's software emulation (TCG). One invalidation is `zap_page_range_single` of one page of the loading process (what `MADV_DONTNEED` does), with N subscribers that do nothing: Linux's own notifier with C callbacks (`linux-c`), the binding's `MmuNotifier` (Rust callbacks on the same kernel path), and core subscribers behind the forwarder. Medians of 11 samples of 1 000 invalidations, the configurations taking turns. **Emulation distorts absolute times** (every instruction is translated; atomics, fences and lockdep's bookkeeping cost what the emulator and the debug kernel make them cost): read the ratios, and those as a rough guide only.\n", k.when);
        let _ = writeln!(w, "| N | nobody subscribed | extra: Linux (C) | extra: binding | extra: core via forwarder | binding / Linux | core / Linux | the core alone (start + end, no forwarder) |\n|---|---|---|---|---|---|---|---|");
        for r in &k.rows {
            let (l, b, c) = (
                r.linux_c - r.nobody,
                r.binding - r.nobody,
                r.core - r.nobody,
            );
            let ratio = |v: f64| if l > 0.0 { x(v / l) } else { "—".to_owned() };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                t(r.nobody),
                t(l),
                t(b),
                t(c),
                ratio(b),
                ratio(c),
                t(r.core_alone)
            );
        }
    }

    fn render(&self, meta: &Meta, analysis: Option<&str>) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "# notifier-core benchmark results\n");
        let _ = writeln!(w, "Generated by `cargo xtask bench-report` (issues #7 and #16); the tables and verdicts below come from one run. Do not edit them by hand: re-run the command. Only the analysis block at the end is hand-written.\n");
        let _ = writeln!(w, "| | |\n|---|---|");
        let _ = writeln!(w, "| date | {} |", meta.date);
        let _ = writeln!(w, "| cores (`nproc`) | {} |", meta.nproc);
        let _ = writeln!(w, "| CPU | {} |", meta.cpu);
        let _ = writeln!(w, "| rustc | {} |", meta.rustc);
        let _ = writeln!(
            w,
            "| load average (1, 5, 15 min) before / after the run | {} / {} |",
            meta.load_before, meta.load_after
        );
        let mb = self.footprint["liburcu_sys_membarrier"].as_bool();
        let _ = writeln!(
            w,
            "| liburcu read side | {} |",
            match mb {
                Some(true) => "sys_membarrier (no fence in readers)",
                Some(false) => "no sys_membarrier: a full fence in each reader",
                None => "unknown",
            }
        );
        let _ = writeln!(
            w,
            "| platform of the core | `StdPlatform` (hosted; {}) |",
            match self.footprint["core_asymmetric_barriers"].as_bool() {
                Some(true) => "owned reader slots; a compiler fence on the read side, `membarrier` in grace periods",
                Some(false) => "owned reader slots; no `membarrier` here: a full fence on each side",
                None => "unknown barriers",
            }
        );
        let _ = writeln!(w, "\nAll times are criterion medians per operation (95 % confidence interval in the raw data under `$CARGO_TARGET_DIR/criterion`). Ratios are against the baseline measured in the same run.\n");

        let _ = writeln!(w, "## Targets\n");
        let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
        for (target, measured, ok) in self.targets() {
            let _ = writeln!(w, "| {target} | {measured} | {} |", verdict(ok));
        }

        let _ = writeln!(w, "\n## No-subscriber fast path\n");
        let _ = writeln!(w, "`invalidate_range_start(range)` + `end()` on an address space nobody subscribed to, against an `#[inline(never)]` empty call that gets the same two addresses. The range is built from the two (opaque) addresses and a fixed event each time, as a kernel's caller builds it.\n");
        let _ = writeln!(w, "| | median | 95 % CI | ratio |\n|---|---|---|---|");
        let base = self.ns("fast_path/empty_call");
        for (id, label) in [
            ("fast_path/empty_call", "empty call"),
            (
                "fast_path/no_subscriber",
                "start + end, no subscriber, no per-address-space object yet",
            ),
            (
                "fast_path/no_subscriber_excluded",
                "the same through `RegistrationExcluded` (the caller excludes registration)",
            ),
            (
                "fast_path/object_no_subscriber",
                "start + end, no subscriber, the object exists (`prepare`)",
            ),
        ] {
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} |",
                t(self.ns(id)),
                self.ci(id),
                x(self.ns(id) / base)
            );
        }

        let _ = writeln!(w, "\n## Read side\n");
        let _ = writeln!(w, "One empty read-side section, looped (in Rust for the core, in C for liburcu and Linux's SRCU, so none pays a call per section).\n");
        let _ = writeln!(
            w,
            "| | median | 95 % CI | ratio to liburcu |\n|---|---|---|---|"
        );
        let base = self.ns("read_side/liburcu");
        for (id, label) in [
            (
                "read_side/liburcu",
                "liburcu `rcu_read_lock` + `rcu_read_unlock` (urcu-memb)",
            ),
            ("read_side/core_srcu", "core `Srcu::read_lock()` + drop"),
            (
                "read_side/core_srcu_fenced",
                "what-if: the same with a full fence on the read side (no `membarrier`)",
            ),
            (
                "read_side/linux_srcu",
                "Linux 6.12's `srcu_read_lock` + `srcu_read_unlock` in C (per-CPU increments, two full fences)",
            ),
        ] {
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} |",
                t(self.ns(id)),
                self.ci(id),
                x(self.ns(id) / base)
            );
        }

        for (group, title, what) in [
            ("dispatch", "Dispatch to N subscribers", "One `invalidate_range_start` + `end`: every subscriber's start, then every end, each list used through its own API. Ratio: to N direct `&dyn` calls."),
            ("dispatch_churn", "Dispatch with a second thread churning", "The same while another thread registers and unregisters one more subscriber in a loop (grace period included where the list has one). Ratio: to the core in the same conditions (above 1 = the core is faster). rcu-clean is left out unless `BENCH_RCU_CLEAN_CHURN=1`: used as documented (`clean()` on each clone) it crashes, see the analysis."),
        ] {
            let _ = writeln!(w, "\n## {title}\n\n{what}\n");
            let lists: Vec<_> = LISTS
                .iter()
                .filter(|(k, _)| group == "dispatch" || !matches!(*k, "direct" | "core_fenced"))
                .collect();
            let _ = write!(w, "| list |");
            for n in NS {
                let _ = write!(w, " N={n} |");
            }
            let _ = write!(w, "\n|---|");
            for _ in NS {
                let _ = write!(w, "---|");
            }
            let _ = writeln!(w);
            for (key, label) in lists {
                let _ = write!(w, "| {label} |");
                for n in NS {
                    let id = format!("{group}/{key}/{n}");
                    let base = if group == "dispatch" { format!("{group}/direct/{n}") } else { format!("{group}/core/{n}") };
                    let _ = write!(w, " {} ({}) |", t(self.ns(&id)), x(self.ns(&id) / self.ns(&base)));
                }
                let _ = writeln!(w);
            }
        }

        let _ = writeln!(w, "\n## Interval subscribers\n");
        let _ = writeln!(w, "An invalidation touching k of n interval subscribers (one page each, a page apart, at pseudo-random positions), in the core's interval tree and by a linear scan calling the same callback.\n");
        let _ = writeln!(w, "| n | k | core | linear scan | scan / core | core / core at n=10 |\n|---|---|---|---|---|---|");
        for k in [1u32, 64] {
            for n in [10u32, 1_000, 100_000] {
                let c = format!("intervals/core/touch{k}/{n}");
                if self.get(&c).is_none() {
                    continue;
                }
                let l = format!("intervals/linear/touch{k}/{n}");
                let c10 = self.ns(&format!("intervals/core/touch{k}/10"));
                let _ = writeln!(
                    w,
                    "| {n} | {k} | {} | {} | {} | {} |",
                    t(self.ns(&c)),
                    t(self.ns(&l)),
                    x(self.ns(&l) / self.ns(&c)),
                    x(self.ns(&c) / c10)
                );
            }
        }
        let _ = writeln!(
            w,
            "\n`read_begin` + `read_retry` on an idle interval: {}.",
            t(self.ns("interval_seq/read_begin_retry"))
        );

        let _ = writeln!(w, "\n## Registration and grace periods\n");
        let _ = writeln!(w, "`idle`: nothing else runs; `reader`: a second thread runs invalidations (core) or `shim_dispatch` (liburcu) on the same list in a loop.\n");
        let _ = writeln!(w, "| | idle | with a reader |\n|---|---|---|");
        for (key, label) in [
            ("core_register_unregister", "core: `register` + `unregister` (two grace periods of in-flight invalidations, one SRCU grace period)"),
            ("core_unregister", "core: `unregister` alone"),
            ("core_synchronize", "core: SRCU `synchronize()` alone"),
            ("liburcu_add_del", "liburcu: add + del (`synchronize_rcu`, `free`)"),
            ("liburcu_synchronize", "liburcu: `synchronize_rcu()` alone"),
        ] {
            let _ = writeln!(w, "| {label} | {} | {} |", t(self.ns(&format!("grace_period/{key}/idle"))), t(self.ns(&format!("grace_period/{key}/reader"))));
        }

        self.render_kbench(w);

        let _ = writeln!(w, "\n## Memory\n");
        let _ = writeln!(w, "From the `footprint` binary (sizes from `size_of`, heap bytes from a counting global allocator).\n");
        let _ = writeln!(w, "| what | bytes |\n|---|---|");
        if let Some(entries) = self.footprint["entries"].as_array() {
            for e in entries {
                let b = e["bytes"].as_f64().unwrap_or(f64::NAN);
                let _ = writeln!(
                    w,
                    "| {} | {} |",
                    e["what"].as_str().unwrap_or("?"),
                    if b.fract() == 0.0 {
                        format!("{b}")
                    } else {
                        format!("{b:.1}")
                    }
                );
            }
        }
        let _ = writeln!(w, "\nAllocations on the invalidation paths (list and interval start/end, refused non-blockable start with unwinding, end applying a deferred insertion, `invalidate_page`, `invalidate_secondary_tlbs`, the ageing calls): {}.", if self.zero_alloc { "**zero** (the `zero_alloc` test passed)" } else { "**the `zero_alloc` test FAILED**" });

        let _ = writeln!(w, "\n## Analysis\n");
        match analysis {
            Some(a) => {
                let _ = writeln!(w, "{a}");
            }
            None => {
                let _ = writeln!(w, "{BEGIN_ANALYSIS}\n\n(Not written yet: explain each missed target here.)\n\n{END_ANALYSIS}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbench_rows_parse_with_or_without_the_prefix() {
        let text = "kbench: row n=1 nobody=100 linux-c=110 binding=112 core=150 core-alone=30\n\
                    N=1: a human line\n\
                    row n=16 nobody=100 linux-c=200 binding=210 core=400 core-alone=90\n\
                    row n=4 nobody=oops\n";
        let rows = parse_kbench(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1],
            KbenchRow {
                n: 16,
                nobody: 100.0,
                linux_c: 200.0,
                binding: 210.0,
                core: 400.0,
                core_alone: 90.0
            }
        );
        assert_eq!(t(-1500.0), "−1.50 µs");
    }
}
