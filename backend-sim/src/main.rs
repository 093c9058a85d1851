//! `notifier-sim`: watch MMU notifiers keep secondary MMUs coherent on a simulated
//! machine.
//!
//! One address space; a KVM-like guest whose vCPUs fault through the sequence protocol;
//! a device TLB flushed with the CPU TLB; an XPMEM-like exporter with remote importers;
//! an HMM-like interval mirror. The primary MMU unmaps, protects, migrates, breaks
//! copy-on-write and reclaims under memory pressure with ageing, then tears the address
//! space down. Every access a secondary MMU makes is checked against the machine's
//! frame generations: a stale translation is caught the moment it is used.
//!
//! `--broken NAME` swaps one consumer for its broken twin (the 2008 race and its kin):
//! the run then ends non-zero and explains the first stale translation from both
//! sides, replayable from the printed seed. The parts are in [`cli`].

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

mod cli;

use cli::args::{self, Args, Cli};
use cli::{report, run, timeline};

/// Write `data` to `dir/name` through a temporary file, so that a report is either
/// complete or absent.
fn write_atomic(dir: &Path, name: &str, data: &str) -> Result<PathBuf, String> {
    let tmp = dir.join(format!(".{name}.partial"));
    let fin = dir.join(name);
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &fin));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", fin.display()));
    }
    Ok(fin)
}

fn check_out_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
    let probe = dir.join(".notifier-sim-probe");
    std::fs::write(&probe, b"")
        .map_err(|e| format!("output directory {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Write the report and the timeline (the report is removed if the timeline fails).
fn write_outputs(out: &Path, json: &str, svg: &str) -> Result<(), String> {
    let r = write_atomic(out, "report.json", json)
        .and_then(|j| write_atomic(out, "timeline.svg", svg).map(|s| (j, s)));
    match r {
        Ok((j, s)) => {
            println!("report:   {}", j.display());
            println!("timeline: {}", s.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(out.join("report.json"));
            Err(e)
        }
    }
}

/// A progress bar on a terminal, plain lines every 2 s otherwise, until `done`.
fn ticker(
    total: u64,
    progress: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let tty = std::io::stderr().is_terminal();
    std::thread::spawn(move || {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} primary ops ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let t0 = Instant::now();
        let mut last = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let p = progress.load(Ordering::Relaxed);
            match &bar {
                Some(b) => b.set_position(p),
                None if last.elapsed() >= Duration::from_secs(2) => {
                    last = Instant::now();
                    eprintln!(
                        "progress: {p}/{total} primary operations ({:.1} s)",
                        t0.elapsed().as_secs_f64()
                    );
                }
                None => {}
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    })
}

fn main() -> ExitCode {
    let c = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return cli::one_line::report("notifier-sim", &e),
    };
    if c.list_scenarios {
        print!("{}", args::list());
        return ExitCode::SUCCESS;
    }
    let a = match Args::resolve(c) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("notifier-sim: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = check_out_dir(&a.out) {
        eprintln!("notifier-sim: {e}");
        return ExitCode::from(2);
    }
    println!(
        "notifier-sim: scenario {} ({}), seed {}, {} primary operations, {} vCPUs, {}",
        a.scenario.name,
        a.scenario.about,
        a.seed,
        a.ops,
        a.vcpus,
        if a.threads {
            "OS threads"
        } else {
            "deterministic scheduler"
        }
    );
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let tick = ticker(a.ops, progress.clone(), done.clone());
    if a.scenario.name == "export-designs" {
        let res = run::export_designs(&a, &progress);
        done.store(true, Ordering::Relaxed);
        let _ = tick.join();
        return match res {
            Ok((page, rmap)) => designs_done(&a, &page, &rmap),
            Err(e) => {
                eprintln!("notifier-sim: run failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let res = run::run(&a, &progress);
    done.store(true, Ordering::Relaxed);
    let _ = tick.join();
    let r = match res {
        Ok(r) => r,
        Err(e) => {
            eprintln!("notifier-sim: run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report::summary(&a, &r));
    let json = serde_json::to_string_pretty(&report::run_json(&a, &r))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    if let Err(e) = write_outputs(&a.out, &json, &timeline::timeline(&a, &r)) {
        eprintln!("notifier-sim: {e}");
        return ExitCode::from(2);
    }
    match &r.first_stale {
        None if r.bugs > 0 => {
            println!(
                "verdict: SUBSCRIBER BUG — the core reported {} refusals of blockable invalidations (C-08); translations stayed coherent",
                r.bugs
            );
            ExitCode::FAILURE
        }
        None => {
            println!("verdict: COHERENT — no secondary MMU used a stale translation");
            ExitCode::SUCCESS
        }
        Some((s, x)) => {
            println!(
                "verdict: STALE TRANSLATION — {} stale access{}; the first: {} reached frame {} (generation {}) through {:#x} after the primary MMU freed it",
                r.stale_total,
                if r.stale_total == 1 { "" } else { "es" },
                s.who.label(),
                s.frame.pfn,
                s.frame.gen,
                s.addr
            );
            print!("{}", report::explanation(&a, s, x));
            println!("{}", replay(&a));
            ExitCode::FAILURE
        }
    }
}

/// The command that replays the run.
fn replay(a: &Args) -> String {
    format!(
        "replay: cargo run --release -p backend-sim -- --scenario {} --seed {} --ops {} --vcpus {}{}{}",
        a.scenario.name,
        a.seed,
        a.ops,
        a.vcpus,
        a.broken
            .map_or(String::new(), |t| format!(" --broken {}", t.name())),
        if a.threads {
            " --threads (OS threads: the interleaving is not replayable)"
        } else {
            ""
        }
    )
}

fn designs_done(a: &Args, page: &run::DesignResult, rmap: &run::DesignResult) -> ExitCode {
    println!();
    println!(
        "scenario {}  seed {}  {} reclaim passes per design, same seed and workload",
        a.scenario.name, a.seed, a.ops
    );
    println!("{:-<72}", "");
    println!(
        "{:<32} {:>18} {:>18}",
        "", "page-keyed at free", "hooked in rmap"
    );
    for (k, x, y) in [
        ("pages exported", page.exported, rmap.exported),
        ("remote maps granted", page.remote_maps, rmap.remote_maps),
        (
            "map requests refused (dying page)",
            page.refused,
            rmap.refused,
        ),
        ("revocations", page.revoked, rmap.revoked),
        ("pages reclaimed", page.reclaimed, rmap.reclaimed),
        ("stale remote accesses", page.stale, rmap.stale),
    ] {
        println!("{k:<32} {x:>18} {y:>18}");
    }
    println!("{:-<72}", "");
    let caught = |d: &run::DesignResult| {
        if d.stale == 0 {
            "every page revoked before it was freed"
        } else {
            "remote nodes kept pages past their freeing"
        }
    };
    println!(
        "page-keyed, hooked where reclaim frees the page: {}",
        caught(page)
    );
    println!(
        "export notifier hooked in the reverse-map walk:  {}",
        caught(rmap)
    );
    let json = serde_json::to_string_pretty(&report::designs_json(a, page, rmap))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    if let Err(e) = write_outputs(&a.out, &json, &timeline::designs(a, page, rmap)) {
        eprintln!("notifier-sim: {e}");
        return ExitCode::from(2);
    }
    if page.stale == 0 {
        println!(
            "verdict: COHERENT — the page-keyed design revoked every page before it was freed"
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "verdict: STALE — the page-keyed design let a remote node reach a freed page (replay with --seed {})",
            a.seed
        );
        ExitCode::FAILURE
    }
}
