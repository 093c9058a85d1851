//! What a run prints and `report.json`: the summary table, the verdict with the
//! explanation of the first stale access, and the typed JSON report
//! (`schema_version` 1, documented in `backend-sim/README.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use backend_sim::{event_index, SimEvent};
use notifier_core::Event;
use serde::Serialize;

use super::args::Args;
use super::explain::{self, Explanation};
use super::run::{DesignResult, Report, Stale, OP_NAMES};
use super::trace::{Rec, What};

/// The version of `report.json`'s layout: bumped when a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

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

/// `report.json` of a scenario run.
#[derive(Debug, Serialize)]
pub struct RunJson {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `notifier-sim` and its version.
    pub program: String,
    /// The scenario.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// `deterministic` (seeded scheduler) or `threads` (OS threads).
    pub mode: &'static str,
    /// vCPUs of the guest.
    pub vcpus: usize,
    /// Primary operations asked for.
    pub ops: u64,
    /// The broken consumer, if any.
    pub broken: Option<&'static str>,
    /// Wall-clock seconds of the concurrent part.
    pub elapsed_seconds: f64,
    /// Primary operations done, by kind.
    pub primary_operations: BTreeMap<&'static str, u64>,
    /// Invalidations started, by event.
    pub invalidations_by_event: BTreeMap<&'static str, u64>,
    /// Callbacks and faults per subscriber.
    pub callbacks: BTreeMap<&'static str, u64>,
    /// The machine's counters.
    pub machine: MachineJson,
    /// Accesses the secondary MMUs made through their translations.
    pub secondary_accesses: u64,
    /// Accesses through a stale translation.
    pub stale_translations: u64,
    /// Refusals of blockable invalidations the core reported.
    pub subscriber_bugs_reported: u64,
    /// `coherent`, `stale translation used` or `subscriber bug reported`.
    pub verdict: &'static str,
    /// The first stale access and the events that explain it.
    pub first_stale: Option<FirstStaleJson>,
    /// Cumulative counters sampled over the run.
    pub timeline: Vec<SampleJson>,
}

/// The machine's counters.
#[derive(Debug, Serialize)]
pub struct MachineJson {
    /// Non-blockable starts refused.
    pub refused_non_blocking: u64,
    /// Pages reclaimed.
    pub pages_reclaimed: u64,
    /// Young hits from the primary accessed bit.
    pub young_primary: u64,
    /// Young hits from a secondary MMU.
    pub young_secondary: u64,
    /// Copy-on-write breaks.
    pub cow_breaks: u64,
    /// Pages migrated.
    pub migrations: u64,
    /// Frames allocated.
    pub frames_allocated: u64,
    /// Frames freed.
    pub frames_freed: u64,
}

/// The first stale access.
#[derive(Debug, Serialize)]
pub struct FirstStaleJson {
    /// The consumer at fault (`kvm`, `device-tlb`, `importer N`, `mirror`, `two-pass device N`).
    pub consumer: String,
    /// The page.
    pub address: u64,
    /// The frame reached.
    pub frame: u64,
    /// Its generation (freed before the access).
    pub generation: u64,
    /// The stale use's number in the run's order of events.
    pub time: u64,
    /// What the broken consumer does wrong.
    pub story: String,
    /// The related events of both sides, oldest first.
    pub events: Vec<EventJson>,
    /// Related events left out of `events` (the middle of a long story).
    pub events_omitted: usize,
}

/// One event of the explanation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventJson {
    /// Its number in the run's one order of recorded events (both sides).
    pub time: u64,
    /// Primary operations completed then.
    pub primary_ops_done: u64,
    /// `primary` or `secondary`.
    pub side: &'static str,
    /// The secondary MMU (`null` for the primary).
    pub consumer: Option<String>,
    /// The guest's vCPU, for the KVM-like shadow MMU.
    pub vcpu: Option<u8>,
    /// What happened (`read_primary_entry`, `sequence_check`, `install`, `stale_use`,
    /// the consumer's callbacks by name (`invalidate_range_start`, `invalidate`, …),
    /// `invalidate_range_start`, `entry_changed_tlbs_flushed`, `invalidate_range_end`,
    /// `frame_freed`, `frame_allocated`, `aged`, `evicted`, `start_refused`, `released`).
    pub operation: &'static str,
    /// The page, or the first byte of the range.
    pub address: Option<u64>,
    /// One past the range's last byte (invalidations and flushes).
    pub end: Option<u64>,
    /// The frame number.
    pub frame: Option<u64>,
    /// The frame's generation.
    pub generation: Option<u64>,
    /// The sequence the consumer saw (reads, checks) or holds at its install.
    pub sequence: Option<u64>,
    /// The event in words, as printed.
    pub text: String,
}

/// One sample of the timeline (cumulative counts).
#[derive(Debug, Serialize)]
pub struct SampleJson {
    /// Primary operations done.
    pub op: u64,
    /// Invalidations started.
    pub invalidations: u64,
    /// Guest: faults installed.
    pub kvm_faults: u32,
    /// Guest: retries.
    pub kvm_retries: u32,
    /// Device TLB flushes.
    pub device_flushes: u32,
    /// Exporter revoke messages.
    pub exporter_messages: u32,
    /// Exporter refusals.
    pub exporter_refusals: u32,
    /// Mirror invalidations.
    pub mirror_invalidations: u32,
    /// Mirror faults installed.
    pub mirror_faults: u32,
    /// Mirror retries.
    pub mirror_retries: u32,
    /// Two-pass devices' retries.
    pub two_pass_retries: u32,
    /// Stale accesses so far, all consumers.
    pub stale: u32,
}

/// `report.json` of the export-designs scenario.
#[derive(Debug, Serialize)]
pub struct DesignsJson {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `notifier-sim` and its version.
    pub program: String,
    /// `export-designs`.
    pub scenario: &'static str,
    /// The seed.
    pub seed: u64,
    /// Reclaim passes per design.
    pub ops: u64,
    /// What each design did.
    pub designs: Designs,
    /// Whether the page-keyed design stayed coherent.
    pub verdict: &'static str,
}

/// The two designs.
#[derive(Debug, Serialize)]
pub struct Designs {
    /// Page-keyed, hooked where reclaim frees the page.
    pub page_keyed_at_free: DesignResult,
    /// Hooked in the reverse-map walk.
    pub hooked_in_rmap: DesignResult,
}

fn program() -> String {
    format!("notifier-sim {}", env!("CARGO_PKG_VERSION"))
}

/// One explanation event as the report's fields.
pub fn event_json(r: &Rec, freed_at: Option<u64>) -> EventJson {
    let who = r.what.who();
    let mut e = EventJson {
        time: r.time,
        primary_ops_done: r.op,
        side: if who.is_some() {
            "secondary"
        } else {
            "primary"
        },
        consumer: who.map(|w| match r.what {
            What::Callback { .. } if w.kind == super::trace::Kind::Importer => "exporter".into(),
            _ => w.consumer(),
        }),
        vcpu: who.and_then(|w| w.vcpu),
        operation: explain::operation(&r.what),
        address: None,
        end: None,
        frame: None,
        generation: None,
        sequence: None,
        text: explain::text(r, freed_at),
    };
    let a = |x: usize| Some(x as u64);
    match r.what {
        What::Primary(p) => match p {
            SimEvent::InvalidateStart { range, .. }
            | SimEvent::InvalidateEnd { range, .. }
            | SimEvent::Refused { range, .. } => {
                e.address = a(range.start);
                e.end = a(range.end);
            }
            SimEvent::SecondaryTlbs { start, end, .. } => {
                e.address = a(start);
                e.end = a(end);
            }
            SimEvent::FrameAlloc(f) | SimEvent::FrameFree(f) => {
                e.frame = Some(f.pfn);
                e.generation = Some(f.gen);
            }
            SimEvent::Aged { addr, .. } => e.address = a(addr),
            SimEvent::Reclaimed { addr, frame, .. } => {
                e.address = a(addr);
                e.frame = Some(frame.pfn);
                e.generation = Some(frame.gen);
            }
            SimEvent::Released { .. } => {}
        },
        What::Read {
            addr, frame, seen, ..
        } => {
            e.address = a(addr);
            e.frame = frame.map(|f| f.pfn);
            e.generation = frame.map(|f| f.gen);
            e.sequence = Some(seen.seq);
        }
        What::Check { addr, seq, .. } => {
            e.address = a(addr);
            e.sequence = Some(seq);
        }
        What::Install {
            addr, frame, now, ..
        } => {
            e.address = a(addr);
            e.frame = Some(frame.pfn);
            e.generation = Some(frame.gen);
            e.sequence = now.map(|n| n.seq);
        }
        What::Callback {
            start, end, seq, ..
        } => {
            e.address = a(start);
            e.end = a(end);
            e.sequence = seq;
        }
        What::Stale { addr, frame, .. } => {
            e.address = a(addr);
            e.frame = Some(frame.pfn);
            e.generation = Some(frame.gen);
        }
    }
    e
}

fn verdict(r: &Report) -> &'static str {
    if r.stale_total > 0 {
        "stale translation used"
    } else if r.bugs > 0 {
        "subscriber bug reported"
    } else {
        "coherent"
    }
}

/// The typed report of a scenario run.
pub fn run_json(a: &Args, r: &Report) -> RunJson {
    let st = &r.stats;
    RunJson {
        schema_version: SCHEMA_VERSION,
        program: program(),
        scenario: a.scenario.name.to_string(),
        seed: a.seed,
        mode: if a.threads {
            "threads"
        } else {
            "deterministic"
        },
        vcpus: a.vcpus,
        ops: a.ops,
        broken: a.broken.map(|t| t.name()),
        elapsed_seconds: r.elapsed.as_secs_f64(),
        primary_operations: OP_NAMES.iter().copied().zip(r.primary).collect(),
        invalidations_by_event: EVENTS
            .iter()
            .map(|(e, n)| (*n, st.invalidations[event_index(*e)]))
            .collect(),
        callbacks: r.counts.iter().copied().collect(),
        machine: MachineJson {
            refused_non_blocking: st.refused,
            pages_reclaimed: st.pages_reclaimed,
            young_primary: st.young_primary,
            young_secondary: st.young_secondary,
            cow_breaks: st.cow_breaks,
            migrations: st.migrations,
            frames_allocated: st.frames_allocated,
            frames_freed: st.frames_freed,
        },
        secondary_accesses: r.accesses,
        stale_translations: r.stale_total,
        subscriber_bugs_reported: r.bugs,
        verdict: verdict(r),
        first_stale: r.first_stale.as_ref().map(|(s, x)| {
            let freed = explain::freed_at(x, s);
            FirstStaleJson {
                consumer: s.who.consumer(),
                address: s.addr as u64,
                frame: s.frame.pfn,
                generation: s.frame.gen,
                time: s.time,
                story: explain::story(a.broken),
                events: x.events.iter().map(|e| event_json(e, freed)).collect(),
                events_omitted: x.omitted,
            }
        }),
        timeline: r
            .samples
            .iter()
            .map(|s| SampleJson {
                op: s.op,
                invalidations: s.invalidations,
                kvm_faults: s.kvm_faults,
                kvm_retries: s.kvm_retries,
                device_flushes: s.dev_flushes,
                exporter_messages: s.exp_messages,
                exporter_refusals: s.exp_refusals,
                mirror_invalidations: s.mirror_inv,
                mirror_faults: s.mirror_faults,
                mirror_retries: s.mirror_retries,
                two_pass_retries: s.tp_retries,
                stale: s.stale.iter().sum(),
            })
            .collect(),
    }
}

/// The typed report of the export-designs scenario.
pub fn designs_json(a: &Args, page: &DesignResult, rmap: &DesignResult) -> DesignsJson {
    DesignsJson {
        schema_version: SCHEMA_VERSION,
        program: program(),
        scenario: "export-designs",
        seed: a.seed,
        ops: a.ops,
        designs: Designs {
            page_keyed_at_free: *page,
            hooked_in_rmap: *rmap,
        },
        verdict: if page.stale == 0 {
            "page-keyed design coherent"
        } else {
            "page-keyed design used a freed page"
        },
    }
}

/// The summary table of a scenario run.
pub fn summary(a: &Args, r: &Report) -> String {
    let st = &r.stats;
    let mut s = String::new();
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let prim: u64 = r.primary.iter().sum();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "scenario {}  seed {}  vCPUs {}  {} mode{}",
        a.scenario.name,
        a.seed,
        a.vcpus,
        if a.threads {
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
        let _ = writeln!(s, "  {k:<38} {n:>12}");
    }
    let _ = writeln!(s, "{:<40} {:>12}", "invalidations by event", "");
    for (e, name) in EVENTS {
        let n = st.invalidations[event_index(e)];
        if n > 0 {
            let _ = writeln!(s, "  {name:<38} {n:>12}");
        }
    }
    let _ = writeln!(s, "{:<40} {:>12}", "callbacks per subscriber", "");
    for (k, n) in &r.counts {
        let _ = writeln!(s, "  {k:<38} {n:>12}");
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
        let _ = writeln!(s, "  {k:<38} {n:>12}");
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

/// The explanation of the first stale access, as printed.
pub fn explanation(a: &Args, s: &Stale, x: &Explanation) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "what happened to {:#x} (frame {}, generation {}), both sides in order; other pages, frames, address spaces and consumers left out:",
        s.addr, s.frame.pfn, s.frame.gen
    );
    if !x.found_install {
        let _ = writeln!(
            o,
            "  (the translation was installed before the oldest event kept: the last related events follow)"
        );
    }
    let freed = explain::freed_at(x, s);
    let w = x
        .events
        .iter()
        .map(|r| explain::side(&r.what).len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(o, "  {:<9} {:<w$}  what", "time", "side");
    for (i, r) in x.events.iter().enumerate() {
        if x.omitted > 0 && i == x.gap_at {
            let _ = writeln!(
                o,
                "  {:<9} {:<w$}  … {} related events left out …",
                "", "", x.omitted
            );
        }
        let _ = writeln!(
            o,
            "  #{:<8} {:<w$}  {}",
            r.time,
            explain::side(&r.what),
            explain::text(r, freed)
        );
    }
    let _ = writeln!(o, "{}", wrap(&explain::story(a.broken), 88));
    o
}

/// `text` wrapped at `width` columns.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}
