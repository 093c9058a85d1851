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
//! the run then ends non-zero and explains the first stale translation, replayable from
//! the printed seed.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_sim::harness::{Frame, Harness, Mm};
use backend_sim::{event_index, Mode, SimConfig, SimEvent, SimHarness, SimPlatform, PAGE_SIZE};
use notifier_conformance::consumers::{
    DeviceTlb, Exporter, Kvm, Mirror, PageExporter, RmapHook, TwoPass, EXPORT_SLOTS, IMPORTERS,
};
use notifier_conformance::subscribe::CoreInterval;
use notifier_conformance::Twin;
use notifier_core::{Event, Subscriber};

const BASE: usize = 0x4000_0000;

/// A scenario: what runs, and how hard the primary MMU works.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    about: &'static str,
    pages: usize,
    /// Frames of the machine: fewer than the pages mapped means memory pressure.
    frames: usize,
    kvm: bool,
    device: bool,
    exporter: bool,
    mirror: bool,
    /// Weights of the primary operations: unmap, protect, migrate, cow, reclaim.
    mix: [u32; 5],
    /// Register/unregister and insert/remove subscribers while invalidations run.
    churn: bool,
    /// Two-pass interval mirrors (several devices invalidated in parallel).
    two_pass: bool,
    default_ops: u64,
}

const SCENARIOS: [Scenario; 6] = [
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
        default_ops: 3000,
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
        default_ops: 3000,
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
        default_ops: 3000,
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
        default_ops: 3000,
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
        default_ops: 2000,
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
        default_ops: 1500,
    },
];

struct Args {
    scenario: Scenario,
    seed: u64,
    threads: usize,
    ops: u64,
    out: PathBuf,
    broken: Option<Twin>,
    real_threads: bool,
}

const USAGE: &str = "usage: notifier-sim [--scenario NAME] [--list-scenarios] [--seed N] [--threads N] [--ops N] [--out DIR] [--broken TWIN] [--real-threads]";

fn parse_num(flag: &str, v: Option<String>) -> Result<u64, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    let t = v.trim();
    let n = if let Some(h) = t.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        t.parse()
    };
    n.map_err(|_| format!("{flag}: `{v}` is not a non-negative whole number"))
}

fn parse() -> Result<Option<Args>, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        scenario: SCENARIOS[0],
        seed: 0,
        threads: 2,
        ops: 0,
        out: PathBuf::from("notifier-sim-out"),
        broken: None,
        real_threads: false,
    };
    let mut seed = None;
    while let Some(f) = it.next() {
        match f.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                println!();
                println!("Scenarios (--list-scenarios):");
                list();
                println!();
                println!("Broken consumers (--broken):");
                for t in Twin::ALL {
                    println!("  {:<30} caught by {}", t.name(), t.catches().join(", "));
                }
                return Ok(None);
            }
            "--list-scenarios" => {
                list();
                return Ok(None);
            }
            "--scenario" => {
                let v = it.next().ok_or("--scenario needs a value")?;
                a.scenario = *SCENARIOS
                    .iter()
                    .find(|s| s.name == v)
                    .ok_or_else(|| format!("unknown scenario `{v}` (see --list-scenarios)"))?;
            }
            "--seed" => seed = Some(parse_num("--seed", it.next())?),
            "--threads" => {
                let n = parse_num("--threads", it.next())?;
                if !(1..=16).contains(&n) {
                    return Err(format!("--threads: {n} vCPUs; give 1 to 16"));
                }
                a.threads = n as usize;
            }
            "--ops" => {
                let n = parse_num("--ops", it.next())?;
                if n == 0 || n > 10_000_000 {
                    return Err(format!("--ops: {n}; give 1 to 10000000 primary operations"));
                }
                a.ops = n;
            }
            "--out" => a.out = PathBuf::from(it.next().ok_or("--out needs a directory")?),
            "--broken" => {
                let v = it.next().ok_or("--broken needs a consumer name")?;
                a.broken = Some(Twin::from_name(&v).ok_or_else(|| {
                    let names: Vec<_> = Twin::ALL.iter().map(|t| t.name()).collect();
                    format!(
                        "unknown broken consumer `{v}` (one of: {})",
                        names.join(", ")
                    )
                })?);
            }
            "--real-threads" => a.real_threads = true,
            other => return Err(format!("unknown option `{other}` ({USAGE})")),
        }
    }
    if a.ops == 0 {
        a.ops = a.scenario.default_ops;
    }
    a.seed = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        t % 1_000_000
    });
    Ok(Some(a))
}

fn list() {
    for s in SCENARIOS {
        println!("  {:<16} {}", s.name, s.about);
    }
}

/// A small xorshift generator for the primary MMU's choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One sample of the counters, taken after a primary operation.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    op: u64,
    invalidations: u64,
    kvm_faults: u32,
    kvm_retries: u32,
    dev_flushes: u32,
    exp_messages: u32,
    exp_refusals: u32,
    mirror_inv: u32,
    mirror_faults: u32,
    mirror_retries: u32,
    stale: u32,
}

/// The first stale translation a consumer used.
#[derive(Debug, Clone)]
struct Stale {
    who: &'static str,
    addr: usize,
    frame: Frame,
}

/// The first stale access and the events (numbered) that led to it.
type FirstStale = (Stale, Vec<(u64, SimEvent)>);

/// Everything a run produced.
struct Report {
    samples: Vec<Sample>,
    primary: [u64; 5],
    accesses: u64,
    elapsed: Duration,
    first_stale: Option<FirstStale>,
    counts: Vec<(&'static str, u64)>,
    stale_total: u64,
    /// Subscriber bugs the core reported (a refusal while blockable).
    bugs: u64,
}

const OP_NAMES: [&str; 5] = ["munmap", "mprotect", "migrate", "cow-break", "reclaim"];

/// The scenario's machine: seeded scheduler (or real threads), its frame pool, no step
/// budget to speak of (the run is bounded by `--ops`).
fn machine(a: &Args) -> SimHarness {
    let mut cfg = SimConfig::new(if a.real_threads {
        Mode::Threads
    } else {
        Mode::Deterministic(a.seed)
    });
    cfg.frames = a.scenario.frames;
    cfg.step_budget = u64::MAX / 4;
    SimHarness::new(cfg)
}

/// A new address space with `pages` pages mapped at `BASE` and written.
fn populated_mm(h: &SimHarness, pages: usize) -> Result<Mm, String> {
    let mm = h
        .create_mm()
        .map_err(|e| format!("create address space: {e:?}"))?;
    h.map(mm, BASE, pages * PAGE_SIZE)
        .map_err(|e| format!("map: {e:?}"))?;
    for i in 0..pages {
        h.touch(mm, BASE + i * PAGE_SIZE, true)
            .map_err(|e| format!("populate: {e:?}"))?;
    }
    Ok(mm)
}

fn run(a: &Args, progress: &AtomicU64) -> Result<(Report, backend_sim::SimStats), String> {
    let sc = a.scenario;
    let h = machine(a);

    // The last events, for explaining a stale translation.
    let ring: Arc<Mutex<VecDeque<(u64, SimEvent)>>> = Arc::new(Mutex::new(VecDeque::new()));
    let seq = Arc::new(AtomicU64::new(0));
    {
        let (ring, seq) = (ring.clone(), seq.clone());
        h.on_event(move |e| {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == 4096 {
                r.pop_front();
            }
            r.push_back((n, *e));
        });
    }

    let len = sc.pages * PAGE_SIZE;
    let mm = populated_mm(&h, sc.pages)?;
    let twin = a.broken;
    let kvm = pin!(Subscriber::<_, SimPlatform>::new(Kvm::new(&h, mm, twin)));
    let dev = pin!(Subscriber::<_, SimPlatform>::new(DeviceTlb::new(
        &h, mm, twin
    )));
    let exp = pin!(Subscriber::<_, SimPlatform>::new(Exporter::new(
        &h, mm, false, twin
    )));
    let mir = pin!(CoreInterval::new(Mirror::new(&h, mm, twin)));
    let clock = AtomicU32::new(0);
    let tp0 = pin!(CoreInterval::new(TwoPass::new(&h, mm, &clock, twin)));
    let tp1 = pin!(CoreInterval::new(TwoPass::new(&h, mm, &clock, twin)));
    let reg =
        |ok: Result<(), notifier_core::Error>, what: &str| ok.map_err(|e| format!("{what}: {e}"));
    if sc.kvm {
        reg(
            kvm.as_ref().register(h.address_space(mm)),
            "register the guest",
        )?;
    }
    if sc.device {
        reg(
            dev.as_ref().register(h.address_space(mm)),
            "register the device TLB",
        )?;
    }
    if sc.exporter {
        reg(
            exp.as_ref().register(h.address_space(mm)),
            "register the exporter",
        )?;
    }
    if sc.mirror {
        reg(
            mir.as_ref().insert(h.address_space(mm), BASE, len),
            "insert the mirror",
        )?;
    }
    if sc.two_pass {
        for t in [tp0.as_ref(), tp1.as_ref()] {
            reg(
                t.insert(h.address_space(mm), BASE, len),
                "insert a two-pass device",
            )?;
        }
    }

    let stop = AtomicBool::new(false);
    let accesses = AtomicU64::new(0);
    let stale_total = AtomicU32::new(0);
    let first: Mutex<Option<FirstStale>> = Mutex::new(None);
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let primary_counts: Mutex<[u64; 5]> = Mutex::new([0; 5]);
    let err: Mutex<Option<String>> = Mutex::new(None);

    // Record the first stale access, with the events that led to it.
    let caught = |who: &'static str, addr: usize, frame: Frame| {
        stale_total.fetch_add(1, Ordering::Relaxed);
        let mut f = first.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            let r = ring.lock().unwrap_or_else(|p| p.into_inner());
            let page = addr & !(PAGE_SIZE - 1);
            let related: Vec<(u64, SimEvent)> = r
                .iter()
                .filter(|(_, e)| match e {
                    SimEvent::InvalidateStart { range, .. }
                    | SimEvent::InvalidateEnd { range, .. }
                    | SimEvent::Refused { range, .. } => range.start <= page && page < range.end,
                    SimEvent::SecondaryTlbs { start, end, .. } => *start <= page && page < *end,
                    SimEvent::FrameAlloc(fr) | SimEvent::FrameFree(fr) => fr.pfn == frame.pfn,
                    SimEvent::Reclaimed { addr: a, .. } | SimEvent::Aged { addr: a, .. } => {
                        *a == page
                    }
                    SimEvent::Released { .. } => true,
                })
                .copied()
                .collect();
            let tail = related.len().saturating_sub(12);
            *f = Some((Stale { who, addr, frame }, related[tail..].to_vec()));
        }
    };
    let check = |who: &'static str, addr: usize, before: u32, after: u32, frame: Option<Frame>| {
        if after > before {
            if let Some(fr) = frame {
                caught(who, addr, fr);
            }
        }
    };

    let sample = |op: u64| {
        let st = h.stats();
        let s = Sample {
            op,
            invalidations: st.invalidations.iter().sum(),
            kvm_faults: kvm.faults.load(Ordering::Relaxed),
            kvm_retries: kvm.retries.load(Ordering::Relaxed),
            dev_flushes: dev.flushes.load(Ordering::Relaxed),
            exp_messages: exp.messages.load(Ordering::Relaxed),
            exp_refusals: exp.refusals.load(Ordering::Relaxed),
            mirror_inv: mir.invalidations.load(Ordering::Relaxed),
            mirror_faults: mir.faults.load(Ordering::Relaxed),
            mirror_retries: mir.retries.load(Ordering::Relaxed),
            stale: stale_total.load(Ordering::Relaxed),
        };
        samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    };

    let primary = || {
        let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let total: u32 = sc.mix.iter().sum();
        let every = (a.ops / 200).max(1);
        for op in 0..a.ops {
            let mut pick = rng.below(u64::from(total)) as u32;
            let mut kind = 0;
            for (k, w) in sc.mix.iter().enumerate() {
                if pick < *w {
                    kind = k;
                    break;
                }
                pick -= w;
            }
            let page = rng.below(sc.pages as u64) as usize;
            let addr = BASE + page * PAGE_SIZE;
            let r = match kind {
                0 => h
                    .unmap(mm, addr, PAGE_SIZE)
                    .and_then(|()| h.map(mm, addr, PAGE_SIZE))
                    .and_then(|()| h.touch(mm, addr, true).map(|_| ())),
                1 => h
                    .protect(mm, addr, PAGE_SIZE, false)
                    .and_then(|()| h.protect(mm, addr, PAGE_SIZE, true)),
                2 => h.migrate(mm, addr).map(|_| ()),
                3 => h.fork(mm).and_then(|child| {
                    let r = h.touch(mm, addr, true).map(|_| ());
                    h.teardown(child);
                    h.destroy_mm(child);
                    r
                }),
                _ => {
                    let n = 1 + rng.below(8) as usize;
                    let start = page.min(sc.pages - n.min(sc.pages));
                    h.reclaim(mm, BASE + start * PAGE_SIZE, n.min(sc.pages) * PAGE_SIZE)
                        .map(|_| ())
                }
            };
            // A page that migration or reclaim cannot take right now is not an error.
            if let Err(e) = r {
                if !matches!(e, backend_sim::harness::HarnessError::Failed(_)) {
                    *err.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("{} at {addr:#x}: {e:?}", OP_NAMES[kind]));
                    break;
                }
            }
            primary_counts.lock().unwrap_or_else(|p| p.into_inner())[kind] += 1;
            progress.store(op + 1, Ordering::Relaxed);
            if op % every == 0 {
                sample(op);
            }
            if sc.churn && op % 16 == 0 {
                // Subscribers come and go while the primary MMU works.
                let s = pin!(Subscriber::<_, SimPlatform>::new(Kvm::new(&h, mm, None)));
                if s.as_ref().register(h.address_space(mm)).is_ok() {
                    let _ = s.run(addr, false);
                    let _ = s.as_ref().unregister();
                }
                let m = pin!(CoreInterval::new(Mirror::new(&h, mm, None)));
                if m.as_ref()
                    .insert(h.address_space(mm), addr, 2 * PAGE_SIZE)
                    .is_ok()
                {
                    let _ = m.run(m.interval(), addr);
                    let _ = m.as_ref().remove();
                }
            }
            h.yield_now();
        }
        sample(a.ops);
        stop.store(true, Ordering::Relaxed);
    };

    // One secondary MMU at work until the primary MMU is done: pick a page, use the
    // translation (checked by the oracle), fault it in on a miss.
    type Access<'x> = &'x dyn Fn(&mut Rng, usize) -> Option<Frame>;
    type Fault<'x> = &'x dyn Fn(&mut Rng, usize);
    let work = |salt: u64,
                who: &'static str,
                violations: &AtomicU32,
                access: Access<'_>,
                fault: Fault<'_>| {
        let mut rng = Rng((a.seed ^ salt) | 1);
        while !stop.load(Ordering::Relaxed) {
            let addr = BASE + rng.below(sc.pages as u64) as usize * PAGE_SIZE;
            let before = violations.load(Ordering::Relaxed);
            let f = access(&mut rng, addr);
            check(who, addr, before, violations.load(Ordering::Relaxed), f);
            if f.is_none() {
                fault(&mut rng, addr);
            }
            accesses.fetch_add(1, Ordering::Relaxed);
            h.yield_now();
        }
    };
    let work = &work;
    let vcpu = |id: usize| {
        let kvm = &kvm;
        move || {
            work(
                (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
                "kvm",
                &kvm.violations,
                &|_, addr| kvm.access(addr),
                &|rng, addr| {
                    let _ = kvm.fault(addr, rng.below(4) == 0);
                },
            )
        }
    };
    let device = || {
        work(
            0xD1CE,
            "device-tlb",
            &dev.violations,
            &|_, addr| dev.access(addr),
            &|_, addr| {
                dev.fill(addr);
            },
        )
    };
    let remote = || {
        let imp = std::cell::Cell::new(0);
        work(
            0xE4,
            "importer",
            &exp.violations,
            &|rng, addr| {
                imp.set(rng.below(IMPORTERS as u64) as usize);
                exp.remote_access(imp.get(), addr)
            },
            &|_, addr| {
                let _ = exp.request_map(imp.get(), addr);
            },
        )
    };
    let mirror = || {
        work(
            0x3333,
            "mirror",
            &mir.violations,
            &|_, addr| mir.access(addr),
            &|_, addr| {
                let _ = mir.fault(mir.interval(), addr);
            },
        )
    };
    let tps = [tp0.as_ref(), tp1.as_ref()];
    let device_of = |k: usize| {
        let t = tps[k];
        work(
            0x2222 + k as u64,
            "two-pass device",
            &t.violations,
            &|_, addr| t.access(addr),
            &|_, addr| {
                let _ = t.fault(t.interval(), addr);
            },
        )
    };
    let devices0 = || device_of(0);
    let devices1 = || device_of(1);
    let vcpus: Vec<_> = (0..a.threads).map(vcpu).collect();
    let mut tasks: Vec<&(dyn Fn() + Sync)> = vec![&primary];
    if sc.kvm {
        for v in &vcpus {
            tasks.push(v);
        }
    }
    if sc.device {
        tasks.push(&device);
    }
    if sc.exporter {
        tasks.push(&remote);
    }
    if sc.mirror {
        tasks.push(&mirror);
    }
    if sc.two_pass {
        tasks.push(&devices0);
        tasks.push(&devices1);
    }
    let t0 = Instant::now();
    h.run_concurrently(&tasks);
    let elapsed = t0.elapsed();

    // Teardown: release reaches every subscriber once; then nothing may reach a page.
    h.teardown(mm);
    for i in 0..sc.pages {
        let addr = BASE + i * PAGE_SIZE;
        let b = kvm.violations.load(Ordering::Relaxed);
        let f = kvm.access(addr);
        check("kvm", addr, b, kvm.violations.load(Ordering::Relaxed), f);
        let b = mir.violations.load(Ordering::Relaxed);
        let f = mir.access(addr);
        check("mirror", addr, b, mir.violations.load(Ordering::Relaxed), f);
        for t in [tp0.as_ref(), tp1.as_ref()] {
            let b = t.violations.load(Ordering::Relaxed);
            let f = t.access(addr);
            check(
                "two-pass device",
                addr,
                b,
                t.violations.load(Ordering::Relaxed),
                f,
            );
        }
    }
    if let Some(e) = err.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let _ = kvm.as_ref().unregister();
    let _ = dev.as_ref().unregister();
    let _ = exp.as_ref().unregister();
    let _ = mir.as_ref().remove();
    let _ = tp0.as_ref().remove();
    let _ = tp1.as_ref().remove();
    let bugs = h.bugs_reported() as u64;
    let stats = h.stats();
    h.destroy_mm(mm);

    let counts = vec![
        (
            "kvm: invalidate_range_start",
            u64::from(kvm.starts.load(Ordering::Relaxed)),
        ),
        (
            "kvm: invalidate_range_end",
            u64::from(kvm.ends.load(Ordering::Relaxed)),
        ),
        (
            "kvm: release",
            u64::from(kvm.releases.load(Ordering::Relaxed)),
        ),
        (
            "kvm: faults installed",
            u64::from(kvm.faults.load(Ordering::Relaxed)),
        ),
        (
            "kvm: sequence retries",
            u64::from(kvm.retries.load(Ordering::Relaxed)),
        ),
        (
            "device-tlb: invalidate_secondary_tlbs",
            u64::from(dev.flushes.load(Ordering::Relaxed)),
        ),
        (
            "exporter: revoke messages",
            u64::from(exp.messages.load(Ordering::Relaxed)),
        ),
        (
            "exporter: map requests refused",
            u64::from(exp.refusals.load(Ordering::Relaxed)),
        ),
        (
            "mirror: invalidate",
            u64::from(mir.invalidations.load(Ordering::Relaxed)),
        ),
        (
            "mirror: faults installed",
            u64::from(mir.faults.load(Ordering::Relaxed)),
        ),
        (
            "mirror: sequence retries",
            u64::from(mir.retries.load(Ordering::Relaxed)),
        ),
        (
            "two-pass devices: sequence retries",
            u64::from(tp0.retries.load(Ordering::Relaxed) + tp1.retries.load(Ordering::Relaxed)),
        ),
    ];
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    let primary = primary_counts
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok((
        Report {
            samples,
            primary,
            accesses: accesses.load(Ordering::Relaxed),
            elapsed,
            first_stale: first.into_inner().unwrap_or_else(|p| p.into_inner()),
            counts,
            stale_total: u64::from(stale_total.load(Ordering::Relaxed)),
            bugs,
        },
        stats,
    ))
}

/// What one export design did on the shared workload.
#[derive(Debug, Clone, Copy, Default)]
struct DesignResult {
    exported: u64,
    remote_maps: u64,
    refused: u64,
    revoked: u64,
    reclaimed: u64,
    stale: u64,
}

/// The seed's two designs on the same workload (same seed, same operations): importers
/// map exported pages while reclaim evicts them under memory pressure.
fn run_export_design(a: &Args, rmap: bool, progress: &AtomicU64) -> Result<DesignResult, String> {
    let sc = a.scenario;
    let h = machine(a);
    let reg = h
        .export_registry()
        .ok_or("the simulator has no export registry")?;
    let mm = populated_mm(&h, sc.pages)?;
    let twin = rmap.then_some(Twin::ExportHookedInRmap);
    let ex = pin!(notifier_core::export::Exporter::new(
        reg,
        PageExporter::new(&h, mm, twin)
    ));
    let ex = ex.into_ref();
    let hook = pin!(Subscriber::<_, SimPlatform>::new(RmapHook(ex.ops())));
    if rmap {
        hook.as_ref()
            .register(h.address_space(mm))
            .map_err(|e| format!("register the rmap hook: {e}"))?;
    }
    let exported = AtomicU64::new(0);
    let maps = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let slots = EXPORT_SLOTS.min(sc.pages);
    let primary = || {
        let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for op in 0..a.ops {
            // Keep every slot exported: a page reclaim took is faulted back and exported
            // again (the new frame).
            for slot in 0..slots {
                let addr = BASE + slot * PAGE_SIZE;
                if h.lookup(mm, addr).is_none() || op == 0 {
                    let _ = h.touch(mm, addr, false);
                    if PageExporter::export(ex, slot, addr).is_ok() {
                        exported.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let n = 1 + rng.below(sc.pages as u64) as usize;
            let _ = h.reclaim(mm, BASE, n * PAGE_SIZE);
            progress.store(op + 1, Ordering::Relaxed);
            h.yield_now();
        }
        stop.store(true, Ordering::Relaxed);
    };
    let remote = || {
        let mut rng = Rng(a.seed ^ 0xE4 | 1);
        while !stop.load(Ordering::Relaxed) {
            let imp = rng.below(IMPORTERS as u64) as usize;
            let slot = rng.below(slots as u64) as usize;
            if ex.remote_access(imp, slot).is_none() && ex.request_map(imp, slot).is_ok() {
                maps.fetch_add(1, Ordering::Relaxed);
            }
            h.yield_now();
        }
    };
    h.run_concurrently(&[&primary, &remote]);
    for slot in 0..slots {
        for imp in 0..IMPORTERS {
            ex.remote_access(imp, slot);
        }
    }
    for slot in 0..slots {
        PageExporter::unexport(ex, slot);
    }
    if rmap {
        let _ = hook.as_ref().unregister();
    }
    let r = DesignResult {
        exported: exported.load(Ordering::Relaxed),
        remote_maps: maps.load(Ordering::Relaxed),
        refused: u64::from(ex.refusals.load(Ordering::Relaxed)),
        revoked: u64::from(ex.revoked.load(Ordering::Relaxed)),
        reclaimed: h.stats().pages_reclaimed,
        stale: u64::from(ex.violations.load(Ordering::Relaxed)),
    };
    h.teardown(mm);
    h.destroy_mm(mm);
    Ok(r)
}

fn export_designs(a: &Args, progress: &AtomicU64) -> Result<(DesignResult, DesignResult), String> {
    let page = run_export_design(a, false, progress)?;
    progress.store(0, Ordering::Relaxed);
    let rmap = run_export_design(a, true, progress)?;
    Ok((page, rmap))
}

fn export_report(a: &Args, page: &DesignResult, rmap: &DesignResult) -> (String, String, String) {
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "scenario {}  seed {}  {} reclaim passes per design, same seed and workload",
        a.scenario.name, a.seed, a.ops
    );
    let _ = writeln!(s, "{:-<72}", "");
    let _ = writeln!(
        s,
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
        let _ = writeln!(s, "{k:<32} {x:>18} {y:>18}");
    }
    let _ = writeln!(s, "{:-<72}", "");
    let caught = |d: &DesignResult| {
        if d.stale == 0 {
            "every page revoked before it was freed"
        } else {
            "remote nodes kept pages past their freeing"
        }
    };
    let _ = writeln!(
        s,
        "page-keyed, hooked where reclaim frees the page: {}",
        caught(page)
    );
    let _ = writeln!(
        s,
        "export notifier hooked in the reverse-map walk:  {}",
        caught(rmap)
    );
    let j = serde_json::json!({
        "scenario": a.scenario.name, "seed": a.seed, "ops": a.ops,
        "designs": {
            "page_keyed_at_free": {"exported": page.exported, "remote_maps": page.remote_maps, "refused": page.refused, "revoked": page.revoked, "reclaimed": page.reclaimed, "stale": page.stale},
            "hooked_in_rmap": {"exported": rmap.exported, "remote_maps": rmap.remote_maps, "refused": rmap.refused, "revoked": rmap.revoked, "reclaimed": rmap.reclaimed, "stale": rmap.stale},
        },
        "verdict": if page.stale == 0 { "page-keyed design coherent" } else { "page-keyed design used a freed page" },
    });
    let mut v = String::new();
    let (w, hgt) = (720.0, 300.0);
    let _ = writeln!(
        v,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(v, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = writeln!(
        v,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">export designs, seed {}: what each caught</text>"#,
        a.seed
    );
    let rows = [
        ("revocations", page.revoked, rmap.revoked),
        ("refused maps", page.refused, rmap.refused),
        ("stale accesses", page.stale, rmap.stale),
    ];
    let max = rows.iter().map(|r| r.1.max(r.2)).max().unwrap_or(1).max(1) as f64;
    for (i, (k, x, y)) in rows.iter().enumerate() {
        let y0 = 60.0 + i as f64 * 75.0;
        let _ = writeln!(v, r#"<text x="10" y="{}">{k}</text>"#, y0 + 20.0);
        for (j, (val, color, who)) in [(x, "#2f855a", "page-keyed"), (y, "#e53e3e", "rmap-hooked")]
            .iter()
            .enumerate()
        {
            let bw = **val as f64 / max * 420.0;
            let yy = y0 + j as f64 * 28.0;
            let _ = writeln!(
                v,
                r#"<rect x="130" y="{yy}" width="{bw:.1}" height="22" fill="{color}"/>"#
            );
            let _ = writeln!(
                v,
                r#"<text x="{:.1}" y="{}">{who}: {val}</text>"#,
                136.0 + bw,
                yy + 16.0
            );
        }
    }
    let _ = writeln!(v, "</svg>");
    (s, serde_json::to_string_pretty(&j).unwrap_or_default(), v)
}

const EVENTS: [(Event, &str); 8] = [
    (Event::Unmap, "Unmap"),
    (Event::Clear, "Clear"),
    (Event::ProtectionVma, "ProtectionVma"),
    (Event::ProtectionPage, "ProtectionPage"),
    (Event::SoftDirty, "SoftDirty"),
    (Event::Release, "Release"),
    (Event::Migrate, "Migrate"),
    (Event::Exclusive, "Exclusive"),
];

fn describe(e: &SimEvent) -> String {
    match e {
        SimEvent::InvalidateStart { mm, range } => format!(
            "mm {mm}: invalidate_range_start [{:#x}, {:#x}) {:?}{}",
            range.start,
            range.end,
            range.event,
            if range.blockable { "" } else { " non-blocking" }
        ),
        SimEvent::InvalidateEnd { mm, range } => format!(
            "mm {mm}: invalidate_range_end   [{:#x}, {:#x}) {:?}",
            range.start, range.end, range.event
        ),
        SimEvent::Refused { mm, range } => format!(
            "mm {mm}: non-blocking start refused [{:#x}, {:#x})",
            range.start, range.end
        ),
        SimEvent::SecondaryTlbs { mm, start, end } => {
            format!("mm {mm}: invalidate_secondary_tlbs [{start:#x}, {end:#x})")
        }
        SimEvent::FrameAlloc(f) => format!("frame {} allocated (generation {})", f.pfn, f.gen),
        SimEvent::FrameFree(f) => format!("frame {} FREED (generation {} over)", f.pfn, f.gen),
        SimEvent::Aged {
            mm,
            addr,
            primary,
            secondary,
        } => format!(
            "mm {mm}: reclaim ages {addr:#x}: primary young {primary}, secondary young {secondary}"
        ),
        SimEvent::Reclaimed { mm, addr, frame } => {
            format!("mm {mm}: reclaim evicts {addr:#x} (frame {})", frame.pfn)
        }
        SimEvent::Released { mm } => format!("mm {mm}: torn down (release returned)"),
    }
}

fn summary(a: &Args, r: &Report, st: &backend_sim::SimStats) -> String {
    let mut s = String::new();
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let prim: u64 = r.primary.iter().sum();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "scenario {}  seed {}  vCPUs {}  {} mode{}",
        a.scenario.name,
        a.seed,
        a.threads,
        if a.real_threads {
            "threads"
        } else {
            "deterministic"
        },
        a.broken.map_or(String::new(), |t| format!(
            "  broken consumer: {}",
            t.name()
        ))
    );
    let _ = writeln!(s, "{:-<64}", "");
    let _ = writeln!(s, "{:<40} {:>12}", "primary operation", "count");
    for (k, n) in OP_NAMES.iter().zip(r.primary) {
        let _ = writeln!(s, "  {:<38} {:>12}", k, n);
    }
    let _ = writeln!(s, "{:<40} {:>12}", "invalidations by event", "");
    for (e, name) in EVENTS {
        let n = st.invalidations[event_index(e)];
        if n > 0 {
            let _ = writeln!(s, "  {:<38} {:>12}", name, n);
        }
    }
    let _ = writeln!(s, "{:<40} {:>12}", "callbacks per subscriber", "");
    for (k, n) in &r.counts {
        let _ = writeln!(s, "  {:<38} {:>12}", k, n);
    }
    let _ = writeln!(s, "{:<40} {:>12}", "machine", "");
    for (k, n) in [
        ("refused non-blocking starts", st.refused),
        ("pages reclaimed", st.pages_reclaimed),
        ("young hits (primary accessed bit)", st.young_primary),
        ("young hits (secondary MMU)", st.young_secondary),
        ("copy-on-write breaks", st.cow_breaks),
        ("pages migrated", st.migrations),
        ("frames freed", st.frames_freed),
    ] {
        let _ = writeln!(s, "  {:<38} {:>12}", k, n);
    }
    let _ = writeln!(
        s,
        "{:<40} {:>12}",
        "subscriber bugs reported by the core", r.bugs
    );
    let _ = writeln!(
        s,
        "{:<40} {:>12}",
        "stale translations detected", r.stale_total
    );
    let _ = writeln!(s, "{:-<64}", "");
    let _ = writeln!(
        s,
        "throughput: {prim} primary operations and {} secondary accesses in {:.2} s ({:.0} ops/s)",
        r.accesses,
        secs,
        (prim + r.accesses) as f64 / secs
    );
    s
}

fn json(a: &Args, r: &Report, st: &backend_sim::SimStats) -> String {
    let events: serde_json::Map<String, serde_json::Value> = EVENTS
        .iter()
        .map(|(e, n)| ((*n).to_string(), st.invalidations[event_index(*e)].into()))
        .collect();
    let samples: Vec<serde_json::Value> = r
        .samples
        .iter()
        .map(|s| {
            serde_json::json!({
                "op": s.op, "invalidations": s.invalidations,
                "kvm_faults": s.kvm_faults, "kvm_retries": s.kvm_retries,
                "device_flushes": s.dev_flushes, "exporter_messages": s.exp_messages,
                "exporter_refusals": s.exp_refusals, "mirror_invalidations": s.mirror_inv,
                "mirror_faults": s.mirror_faults, "mirror_retries": s.mirror_retries,
                "stale": s.stale,
            })
        })
        .collect();
    let v = serde_json::json!({
        "scenario": a.scenario.name,
        "seed": a.seed,
        "vcpus": a.threads,
        "mode": if a.real_threads { "threads" } else { "deterministic" },
        "broken": a.broken.map(|t| t.name()),
        "ops": a.ops,
        "elapsed_seconds": r.elapsed.as_secs_f64(),
        "primary": OP_NAMES.iter().zip(r.primary).map(|(k, n)| ((*k).to_string(), serde_json::Value::from(n))).collect::<serde_json::Map<_, _>>(),
        "invalidations_by_event": events,
        "callbacks": r.counts.iter().map(|(k, n)| ((*k).to_string(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
        "machine": {
            "refused_non_blocking": st.refused, "pages_reclaimed": st.pages_reclaimed,
            "young_primary": st.young_primary, "young_secondary": st.young_secondary,
            "cow_breaks": st.cow_breaks, "migrations": st.migrations,
            "frames_allocated": st.frames_allocated, "frames_freed": st.frames_freed,
        },
        "secondary_accesses": r.accesses,
        "stale_translations": r.stale_total,
        "subscriber_bugs_reported": r.bugs,
        "first_stale": r.first_stale.as_ref().map(|(s, ev)| serde_json::json!({
            "consumer": s.who, "address": s.addr, "pfn": s.frame.pfn, "generation": s.frame.gen,
            "events": ev.iter().map(|(n, e)| serde_json::json!({"seq": n, "what": describe(e)})).collect::<Vec<_>>(),
        })),
        "verdict": if r.stale_total > 0 { "stale translation used" } else if r.bugs > 0 { "subscriber bug reported" } else { "coherent" },
        "timeline": samples,
    });
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
}

/// The timeline: one lane per subscriber, callbacks (bars) and faults and retries
/// (lines) over the primary operations.
fn svg(a: &Args, r: &Report) -> String {
    let w = 960.0;
    let lane_h = 90.0;
    let left = 170.0;
    let top = 60.0;
    type Get = fn(&Sample) -> u64;
    // (name, solid line, dashed line, bars, colour, what each shows)
    let lanes: [(&str, Get, Get, Get, &str, &str); 4] = [
        (
            "kvm (list)",
            |s| u64::from(s.kvm_faults),
            |s| u64::from(s.kvm_retries),
            |s| s.invalidations,
            "#2b6cb0",
            "bars: invalidations; line: faults; dashed: retries",
        ),
        (
            "device TLB",
            |_| 0,
            |_| 0,
            |s| u64::from(s.dev_flushes),
            "#2f855a",
            "bars: invalidate_secondary_tlbs",
        ),
        (
            "exporter",
            |_| 0,
            |s| u64::from(s.exp_refusals),
            |s| u64::from(s.exp_messages),
            "#b7791f",
            "bars: revoke messages; dashed: refused map requests",
        ),
        (
            "mirror (interval)",
            |s| u64::from(s.mirror_faults),
            |s| u64::from(s.mirror_retries),
            |s| u64::from(s.mirror_inv),
            "#805ad5",
            "bars: invalidate; line: faults; dashed: retries",
        ),
    ];
    let h = top + lane_h * lanes.len() as f64 + 70.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        o,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">notifier-sim: scenario {} (seed {}){}</text>"#,
        a.scenario.name,
        a.seed,
        a.broken
            .map_or(String::new(), |t| format!(", broken: {}", t.name()))
    );
    let _ = writeln!(
        o,
        r##"<text x="10" y="42" fill="#555">per interval of primary operations, each lane scaled to its own peak; red lines: stale translations used</text>"##
    );
    let n = r.samples.len();
    if n >= 2 {
        let span = (w - left - 20.0) / (n - 1) as f64;
        for (li, (name, fault, retry, inv, color, legend)) in lanes.iter().enumerate() {
            let y0 = top + lane_h * li as f64;
            let base = y0 + lane_h - 15.0;
            let _ = writeln!(
                o,
                r##"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="#ccc"/>"##,
                w - 20.0
            );
            let _ = writeln!(o, r#"<text x="10" y="{}">{name}</text>"#, y0 + lane_h / 2.0);
            let _ = writeln!(
                o,
                r##"<text x="{}" y="{}" text-anchor="end" font-size="10" fill="#777">{legend}</text>"##,
                w - 20.0,
                y0 + 10.0
            );
            let d = |g: &Get| -> Vec<u64> {
                r.samples
                    .windows(2)
                    .map(|p| g(&p[1]).saturating_sub(g(&p[0])))
                    .collect()
            };
            let (di, df, dr) = (d(inv), d(fault), d(retry));
            let max = di
                .iter()
                .chain(&df)
                .chain(&dr)
                .copied()
                .max()
                .unwrap_or(0)
                .max(1) as f64;
            let scale = (lane_h - 25.0) / max;
            for (k, v) in di.iter().enumerate() {
                if *v > 0 {
                    let x = left + span * k as f64;
                    let hh = *v as f64 * scale;
                    let _ = writeln!(
                        o,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{hh:.1}" fill="{color}" opacity="0.35"/>"#,
                        base - hh,
                        span.max(1.0)
                    );
                }
            }
            for (vals, dash) in [(&df, ""), (&dr, r#" stroke-dasharray="4 3""#)] {
                let pts: Vec<String> = vals
                    .iter()
                    .enumerate()
                    .map(|(k, v)| {
                        format!(
                            "{:.1},{:.1}",
                            left + span * k as f64 + span / 2.0,
                            base - *v as f64 * scale
                        )
                    })
                    .collect();
                let _ = writeln!(
                    o,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>"#,
                    pts.join(" ")
                );
            }
        }
        // Stale translations, across all lanes.
        for (k, p) in r.samples.windows(2).enumerate() {
            if p[1].stale > p[0].stale {
                let x = left + span * k as f64;
                let _ = writeln!(
                    o,
                    r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e53e3e" stroke-width="2"/>"##,
                    top + lane_h * lanes.len() as f64
                );
            }
        }
        let ybot = top + lane_h * lanes.len() as f64 + 20.0;
        let _ = writeln!(
            o,
            r#"<text x="{left}" y="{ybot}">primary operation 0</text>"#
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{ybot}" text-anchor="end">{}</text>"#,
            w - 20.0,
            a.ops
        );
    }
    let verdict = if r.stale_total == 0 {
        (
            "coherent: no secondary MMU used a stale translation",
            "#2f855a",
        )
    } else {
        ("STALE TRANSLATION USED", "#e53e3e")
    };
    let _ = writeln!(
        o,
        r#"<text x="10" y="{}" font-size="14" fill="{}">{}</text>"#,
        h - 12.0,
        verdict.1,
        verdict.0
    );
    let _ = writeln!(o, "</svg>");
    o
}

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

fn main() -> ExitCode {
    let a = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notifier-sim: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = a.broken {
        let exercised = match t {
            Twin::KvmIgnoresSeq
            | Twin::KvmFlushAfterEnd
            | Twin::KvmCachesPastRelease
            | Twin::KvmRefusesWhileBlockable
            | Twin::KvmZapsInEnd
            | Twin::KvmCountsRefusedStart => a.scenario.kvm,
            Twin::DeviceTlbIgnoresFlush | Twin::DeviceTlbFlushesAtEnd => a.scenario.device,
            Twin::ExporterIgnoresInvalidation => a.scenario.exporter,
            Twin::MirrorIgnoresSeq | Twin::MirrorSetsSeqAfterUnlock => a.scenario.mirror,
            Twin::TwoPassSkipsFinish => a.scenario.two_pass,
            Twin::ExportHookedInRmap => false,
        };
        if !exercised && a.scenario.name != "export-designs" {
            eprintln!(
                "notifier-sim: scenario {} does not run the consumer that {} breaks (the export-designs scenario always runs the rmap-hooked design beside the correct one)",
                a.scenario.name,
                t.name()
            );
            return ExitCode::from(2);
        }
    }
    if let Err(e) = check_out_dir(&a.out) {
        eprintln!("notifier-sim: {e}");
        return ExitCode::from(2);
    }
    println!(
        "notifier-sim: scenario {} ({}), seed {}, {} primary operations, {} vCPUs",
        a.scenario.name, a.scenario.about, a.seed, a.ops, a.threads
    );
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let tty = std::io::stderr().is_terminal();
    let ticker = {
        let (progress, done, total) = (progress.clone(), done.clone(), a.ops);
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
    };
    if a.scenario.name == "export-designs" {
        let res = export_designs(&a, &progress);
        done.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        let (page, rmap) = match res {
            Ok(x) => x,
            Err(e) => {
                eprintln!("notifier-sim: run failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (text, j, v) = export_report(&a, &page, &rmap);
        print!("{text}");
        match write_atomic(&a.out, "report.json", &j)
            .and_then(|jp| write_atomic(&a.out, "timeline.svg", &v).map(|sp| (jp, sp)))
        {
            Ok((jp, sp)) => {
                println!("report:   {}", jp.display());
                println!("timeline: {}", sp.display());
            }
            Err(e) => {
                eprintln!("notifier-sim: {e}");
                let _ = std::fs::remove_file(a.out.join("report.json"));
                return ExitCode::from(2);
            }
        }
        return if page.stale == 0 {
            println!(
                "verdict: COHERENT — the page-keyed design revoked every page before it was freed"
            );
            ExitCode::SUCCESS
        } else {
            println!("verdict: STALE — the page-keyed design let a remote node reach a freed page (replay with --seed {})", a.seed);
            ExitCode::FAILURE
        };
    }
    let res = run(&a, &progress);
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let (r, st) = match res {
        Ok(x) => x,
        Err(e) => {
            eprintln!("notifier-sim: run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary(&a, &r, &st));
    let json_path = write_atomic(&a.out, "report.json", &json(&a, &r, &st));
    let svg_path =
        json_path.and_then(|j| write_atomic(&a.out, "timeline.svg", &svg(&a, &r)).map(|s| (j, s)));
    match svg_path {
        Ok((j, s)) => {
            println!("report:   {}", j.display());
            println!("timeline: {}", s.display());
        }
        Err(e) => {
            eprintln!("notifier-sim: {e}");
            let _ = std::fs::remove_file(a.out.join("report.json"));
            return ExitCode::from(2);
        }
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
        Some((s, events)) => {
            println!(
                "verdict: STALE TRANSLATION — {} stale accesses; the first: {} reached frame {} (generation {}) through {:#x} after the primary MMU freed it",
                r.stale_total, s.who, s.frame.pfn, s.frame.gen, s.addr
            );
            println!("events that led to it (this page and this frame, oldest first):");
            for (n, e) in events {
                println!("  #{n:<8} {}", describe(e));
            }
            let how = a
                .broken
                .map_or(String::new(), |t| format!(" --broken {}", t.name()));
            println!(
                "replay: cargo run --release -p backend-sim -- --scenario {} --seed {} --ops {} --threads {}{}{}",
                a.scenario.name,
                a.seed,
                a.ops,
                a.threads,
                how,
                if a.real_threads { " --real-threads (not replayable: real threads)" } else { "" }
            );
            ExitCode::FAILURE
        }
    }
}
