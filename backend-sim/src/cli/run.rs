//! The run: one address space, the scenario's secondary MMUs at work on their own
//! tasks, the primary MMU's operations on another, and the oracle on every access.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_sim::harness::{Frame, Harness, HarnessError, Mm};
use backend_sim::{Mode, SimConfig, SimHarness, SimPlatform, SimStats, PAGE_SIZE};
use notifier_conformance::consumers::{
    DeviceTlb, Exporter, Kvm, Mirror, PageExporter, RmapHook, TwoPass, EXPORT_SLOTS, IMPORTERS,
};
use notifier_conformance::subscribe::CoreInterval;
use notifier_conformance::Twin;
use notifier_core::Subscriber;

use super::args::Args;
use super::explain::{self, Explanation};
use super::trace::{set_role, Kind, Log, Traced, TracedSeq, Watched, Who};

/// Where the address space's pages are mapped.
pub const BASE: usize = 0x4000_0000;

/// The primary operations, in the order of `Scenario::mix`.
pub const OP_NAMES: [&str; 5] = ["munmap", "mprotect", "migrate", "cow-break", "reclaim"];

/// A small xorshift generator for the tasks' choices.
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

/// One sample of the counters (cumulative), taken after a primary operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Primary operations completed.
    pub op: u64,
    /// Invalidations started on the address space.
    pub invalidations: u64,
    /// Guest: translations installed.
    pub kvm_faults: u32,
    /// Guest: fault retries (sequence collisions and waits).
    pub kvm_retries: u32,
    /// Guest: `invalidate_range_start` calls.
    pub kvm_starts: u32,
    /// Device TLB: `invalidate_secondary_tlbs` calls.
    pub dev_flushes: u32,
    /// Exporter: revoke messages.
    pub exp_messages: u32,
    /// Exporter: map requests refused.
    pub exp_refusals: u32,
    /// Mirror: `invalidate` calls.
    pub mirror_inv: u32,
    /// Mirror: translations installed.
    pub mirror_faults: u32,
    /// Mirror: fault retries.
    pub mirror_retries: u32,
    /// Two-pass devices: fault retries.
    pub tp_retries: u32,
    /// Stale accesses, by lane: kvm, device TLB, importers, mirror, two-pass devices.
    pub stale: [u32; 5],
}

/// The first stale translation a consumer used.
#[derive(Debug, Clone, Copy)]
pub struct Stale {
    /// Who used it.
    pub who: Who,
    /// The page.
    pub addr: usize,
    /// The frame reached.
    pub frame: Frame,
    /// Its number in the run's order of events.
    pub time: u64,
}

/// Everything a run produced.
pub struct Report {
    /// Counters over the run.
    pub samples: Vec<Sample>,
    /// Primary operations by kind (`OP_NAMES`).
    pub primary: [u64; 5],
    /// Secondary accesses made.
    pub accesses: u64,
    /// Wall-clock time of the concurrent part.
    pub elapsed: Duration,
    /// The first stale access and its explanation.
    pub first_stale: Option<(Stale, Explanation)>,
    /// Callback and fault counts per subscriber.
    pub counts: Vec<(&'static str, u64)>,
    /// Stale accesses in all.
    pub stale_total: u64,
    /// Subscriber bugs the core reported (a refusal while blockable).
    pub bugs: u64,
    /// The machine's counters.
    pub stats: SimStats,
}

/// The lane of the timeline of each kind of consumer.
pub fn lane(kind: Kind) -> usize {
    match kind {
        Kind::Kvm => 0,
        Kind::DeviceTlb => 1,
        Kind::Importer => 2,
        Kind::Mirror => 3,
        Kind::TwoPass => 4,
    }
}

/// The scenario's machine: seeded scheduler (or OS threads), its frame pool, no step
/// budget to speak of (the run is bounded by `--ops`).
fn machine(a: &Args) -> SimHarness {
    let mut cfg = SimConfig::new(if a.threads {
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

/// Run the scenario; `progress` follows the primary operations.
pub fn run(a: &Args, progress: &AtomicU64) -> Result<Report, String> {
    let sc = a.scenario;
    let h = machine(a);
    let log = Arc::new(Log::new());
    {
        let log = log.clone();
        h.on_event(move |e| log.primary(e));
    }
    let len = sc.pages * PAGE_SIZE;
    let mm = populated_mm(&h, sc.pages)?;
    log.watch(mm);
    let t = Traced { h: &h, log: &log };
    let twin = a.broken;
    // Each consumer on the recording harness, its callbacks recorded (`Watched`).
    let w = |kind: Kind, unit: u8| Who {
        kind,
        unit,
        vcpu: None,
    };
    let kvm = pin!(Subscriber::<_, SimPlatform>::new(Watched::new(
        Kvm::new(&t, mm, twin),
        w(Kind::Kvm, 0),
        &log
    )));
    let dev = pin!(Subscriber::<_, SimPlatform>::new(Watched::new(
        DeviceTlb::new(&t, mm, twin),
        w(Kind::DeviceTlb, 0),
        &log
    )));
    let exp = pin!(Subscriber::<_, SimPlatform>::new(Watched::new(
        Exporter::new(&t, mm, false, twin),
        w(Kind::Importer, 0),
        &log
    )));
    let mir = pin!(CoreInterval::new(Watched::new(
        Mirror::new(&t, mm, twin),
        w(Kind::Mirror, 0),
        &log
    )));
    let clock = AtomicU32::new(0);
    let tp0 = pin!(CoreInterval::new(Watched::new(
        TwoPass::new(&t, mm, &clock, twin),
        w(Kind::TwoPass, 0),
        &log
    )));
    let tp1 = pin!(CoreInterval::new(Watched::new(
        TwoPass::new(&t, mm, &clock, twin),
        w(Kind::TwoPass, 1),
        &log
    )));
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
        for tp in [tp0.as_ref(), tp1.as_ref()] {
            reg(
                tp.insert(h.address_space(mm), BASE, len),
                "insert a two-pass device",
            )?;
        }
    }

    let stop = AtomicBool::new(false);
    let accesses = AtomicU64::new(0);
    let stale_total = AtomicU32::new(0);
    let first: Mutex<Option<(Stale, Explanation)>> = Mutex::new(None);
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let primary_counts: Mutex<[u64; 5]> = Mutex::new([0; 5]);
    let err: Mutex<Option<String>> = Mutex::new(None);

    // A stale access: record it, and explain the first one from the events kept.
    let caught = |who: Who, addr: usize, frame: Frame| {
        stale_total.fetch_add(1, Ordering::Relaxed);
        log.stale(who, addr, frame);
        let mut f = first.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            let events = log.snapshot();
            let time = events.last().map_or(0, |r| r.time);
            let s = Stale {
                who,
                addr,
                frame,
                time,
            };
            *f = Some((s, explain::build(&events, &s, mm)));
        }
    };
    let check = |who: Who, addr: usize, before: u32, after: u32, frame: Option<Frame>| {
        if after > before {
            if let Some(fr) = frame {
                caught(who, addr, fr);
            }
        }
    };

    let sample = |op: u64| {
        let st = h.stats();
        let v = |x: &AtomicU32| x.load(Ordering::Relaxed);
        let s = Sample {
            op,
            invalidations: st.invalidations.iter().sum(),
            kvm_faults: v(&kvm.faults),
            kvm_retries: v(&kvm.retries),
            kvm_starts: v(&kvm.starts),
            dev_flushes: v(&dev.flushes),
            exp_messages: v(&exp.messages),
            exp_refusals: v(&exp.refusals),
            mirror_inv: v(&mir.invalidations),
            mirror_faults: v(&mir.faults),
            mirror_retries: v(&mir.retries),
            tp_retries: v(&tp0.retries) + v(&tp1.retries),
            stale: [
                v(&kvm.violations),
                v(&dev.violations),
                v(&exp.violations),
                v(&mir.violations),
                v(&tp0.violations) + v(&tp1.violations),
            ],
        };
        samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    };

    let primary = || {
        set_role(None);
        let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let total: u32 = sc.mix.iter().sum();
        let every = (a.ops / 200).max(1);
        sample(0);
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
                if !matches!(e, HarnessError::Failed(_)) {
                    *err.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("{} at {addr:#x}: {e:?}", OP_NAMES[kind]));
                    break;
                }
            }
            primary_counts.lock().unwrap_or_else(|p| p.into_inner())[kind] += 1;
            progress.store(op + 1, Ordering::Relaxed);
            log.op.store(op + 1, Ordering::Relaxed);
            if (op + 1) % every == 0 {
                sample(op + 1);
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
        if a.ops % every != 0 {
            sample(a.ops);
        }
        stop.store(true, Ordering::Relaxed);
    };

    // One secondary MMU at work until the primary MMU is done: pick a page, use the
    // translation (checked by the oracle), fault it in on a miss (the fault path's read
    // is recorded by `Traced`, its install here).
    type Access<'x> = &'x dyn Fn(&mut Rng, usize) -> Option<Frame>;
    type Fault<'x> = &'x dyn Fn(&mut Rng, usize) -> Option<Frame>;
    let work =
        |salt: u64, who: Who, violations: &AtomicU32, access: Access<'_>, fault: Fault<'_>| {
            set_role(Some(who));
            let mut rng = Rng((a.seed ^ salt) | 1);
            while !stop.load(Ordering::Relaxed) {
                let addr = BASE + rng.below(sc.pages as u64) as usize * PAGE_SIZE;
                let before = violations.load(Ordering::Relaxed);
                let f = access(&mut rng, addr);
                // The importer is chosen inside `access`: the role says which.
                let who = who_now(who);
                check(who, addr, before, violations.load(Ordering::Relaxed), f);
                if f.is_none() {
                    if let Some(fr) = fault(&mut rng, addr) {
                        log.install(addr, fr);
                    }
                }
                accesses.fetch_add(1, Ordering::Relaxed);
                h.yield_now();
            }
            set_role(None);
        };
    let work = &work;
    let vcpu = |id: usize| {
        let kvm = &kvm;
        move || {
            work(
                (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
                Who {
                    kind: Kind::Kvm,
                    unit: 0,
                    vcpu: Some(id as u8),
                },
                &kvm.violations,
                &|_, addr| kvm.access(addr),
                &|rng, addr| kvm.fault(addr, rng.below(4) == 0).ok().map(|p| p.frame),
            )
        }
    };
    let device = || {
        work(
            0xD1CE,
            Who::of(Kind::DeviceTlb),
            &dev.violations,
            &|_, addr| dev.access(addr),
            &|_, addr| dev.fill(addr).map(|p| p.frame),
        )
    };
    let remote = || {
        let imp = std::cell::Cell::new(0);
        work(
            0xE4,
            Who::of(Kind::Importer),
            &exp.violations,
            &|rng, addr| {
                imp.set(rng.below(IMPORTERS as u64) as usize);
                set_role(Some(Who {
                    kind: Kind::Importer,
                    unit: imp.get() as u8,
                    vcpu: None,
                }));
                exp.remote_access(imp.get(), addr)
            },
            &|_, addr| exp.request_map(imp.get(), addr).ok(),
        )
    };
    let mirror = || {
        let iv = TracedSeq {
            iv: mir.interval(),
            log: &log,
        };
        work(
            0x3333,
            Who::of(Kind::Mirror),
            &mir.violations,
            &|_, addr| mir.access(addr),
            &|_, addr| mir.fault(&iv, addr).ok().map(|p| p.frame),
        )
    };
    let tps = [tp0.as_ref(), tp1.as_ref()];
    let device_of = |k: usize| {
        let tp = tps[k];
        let iv = TracedSeq {
            iv: tp.interval(),
            log: &log,
        };
        work(
            0x2222 + k as u64,
            Who {
                kind: Kind::TwoPass,
                unit: k as u8,
                vcpu: None,
            },
            &tp.violations,
            &|_, addr| tp.access(addr),
            &|_, addr| tp.fault(&iv, addr).ok().map(|p| p.frame),
        )
    };
    let devices0 = || device_of(0);
    let devices1 = || device_of(1);
    let vcpus: Vec<_> = (0..a.vcpus).map(vcpu).collect();
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
        let after = |who: Who, v: &AtomicU32, access: &dyn Fn() -> Option<Frame>| {
            set_role(Some(who));
            let b = v.load(Ordering::Relaxed);
            let f = access();
            check(who, addr, b, v.load(Ordering::Relaxed), f);
        };
        after(Who::of(Kind::Kvm), &kvm.violations, &|| kvm.access(addr));
        after(Who::of(Kind::Mirror), &mir.violations, &|| mir.access(addr));
        for (k, tp) in tps.iter().enumerate() {
            let who = Who {
                kind: Kind::TwoPass,
                unit: k as u8,
                vcpu: None,
            };
            after(who, &tp.violations, &|| tp.access(addr));
        }
        set_role(None);
    }
    // A last sample after the teardown: stale accesses past `release` are drawn too.
    sample(a.ops);
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

    let v = |x: &AtomicU32| u64::from(x.load(Ordering::Relaxed));
    let counts = vec![
        ("kvm: invalidate_range_start", v(&kvm.starts)),
        ("kvm: invalidate_range_end", v(&kvm.ends)),
        ("kvm: release", v(&kvm.releases)),
        ("kvm: faults installed", v(&kvm.faults)),
        ("kvm: sequence retries", v(&kvm.retries)),
        ("device-tlb: invalidate_secondary_tlbs", v(&dev.flushes)),
        ("exporter: revoke messages", v(&exp.messages)),
        ("exporter: map requests refused", v(&exp.refusals)),
        ("mirror: invalidate", v(&mir.invalidations)),
        ("mirror: faults installed", v(&mir.faults)),
        ("mirror: sequence retries", v(&mir.retries)),
        (
            "two-pass devices: sequence retries",
            v(&tp0.retries) + v(&tp1.retries),
        ),
    ];
    Ok(Report {
        samples: samples.into_inner().unwrap_or_else(|p| p.into_inner()),
        primary: primary_counts
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        accesses: accesses.load(Ordering::Relaxed),
        elapsed,
        first_stale: first.into_inner().unwrap_or_else(|p| p.into_inner()),
        counts,
        stale_total: u64::from(stale_total.load(Ordering::Relaxed)),
        bugs,
        stats,
    })
}

/// The role of the calling task now (the importer task changes it per access), or
/// `who` if it has none.
fn who_now(who: Who) -> Who {
    super::trace::role().unwrap_or(who)
}

/// What one export design did on the shared workload.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DesignResult {
    /// Pages exported.
    pub exported: u64,
    /// Remote maps granted.
    pub remote_maps: u64,
    /// Map requests refused (dying page).
    pub refused: u64,
    /// Revocations.
    pub revoked: u64,
    /// Pages reclaimed.
    pub reclaimed: u64,
    /// Stale remote accesses.
    pub stale: u64,
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

/// Both export designs, one after the other, on the same seed.
pub fn export_designs(
    a: &Args,
    progress: &AtomicU64,
) -> Result<(DesignResult, DesignResult), String> {
    let page = run_export_design(a, false, progress)?;
    progress.store(0, Ordering::Relaxed);
    let rmap = run_export_design(a, true, progress)?;
    Ok((page, rmap))
}
