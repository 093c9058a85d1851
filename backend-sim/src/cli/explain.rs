//! The explanation of the first stale access: both sides, in order, for the page and
//! the frame involved.
//!
//! From the events kept ([`super::trace::Log`]) it takes the install of the stale
//! translation by the consumer at fault and the read of the primary entry that led to
//! it, then everything from that read to the stale use that concerns the page (the
//! primary's start, entry change and flush, end, ageing and eviction of that page in
//! that address space) or the frame (its free, its reuse), and the consumer's own
//! events for the page (reads, checks, installs). Other address spaces, pages, frames
//! and consumers are left out.

use backend_sim::harness::Mm;
use backend_sim::{SimEvent, PAGE_SIZE};
use notifier_conformance::Twin;

use super::run::Stale;
use super::trace::{Kind, Rec, What};

/// Events shown at most; beyond that the middle ones are counted, not shown.
const SHOWN: usize = 28;

/// The first stale access explained.
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    /// The related events, oldest first (the middle ones left out past `SHOWN`).
    pub events: Vec<Rec>,
    /// Related events left out (between `events[HEAD - 1]` and `events[HEAD]`).
    pub omitted: usize,
    /// Where the left-out events were (index into `events`).
    pub gap_at: usize,
    /// The read and the install of the stale translation were found among the events
    /// kept (else it was installed before the oldest one).
    pub found_install: bool,
}

/// Whether `r` concerns the stale access `s` in address space `mm`.
fn related(r: &Rec, s: &Stale, mm: Mm) -> bool {
    let page = s.addr & !(PAGE_SIZE - 1);
    let covers = |a: usize, b: usize| a <= page && page < b;
    match r.what {
        What::Primary(e) => match e {
            SimEvent::InvalidateStart { mm: m, range }
            | SimEvent::InvalidateEnd { mm: m, range }
            | SimEvent::Refused { mm: m, range } => m == mm && covers(range.start, range.end),
            SimEvent::SecondaryTlbs { mm: m, start, end } => m == mm && covers(start, end),
            SimEvent::FrameAlloc(f) | SimEvent::FrameFree(f) => f.pfn == s.frame.pfn,
            SimEvent::Aged { mm: m, addr, .. } | SimEvent::Reclaimed { mm: m, addr, .. } => {
                m == mm && addr == page
            }
            SimEvent::Released { mm: m } => m == mm,
        },
        What::Read { who, addr, .. }
        | What::Check { who, addr, .. }
        | What::Install { who, addr, .. }
        | What::Stale { who, addr, .. } => who.same_cache(s.who) && addr == page,
        // The exporter's callbacks serve every importer.
        What::Callback {
            who, start, end, ..
        } => {
            who.kind == s.who.kind
                && (who.unit == s.who.unit || who.kind == Kind::Importer)
                && covers(start, end)
        }
    }
}

/// An invalidation opens here: the primary's start, or a consumer's first callback.
fn opens(r: &Rec) -> bool {
    match r.what {
        What::Primary(SimEvent::InvalidateStart { .. }) => true,
        What::Callback { cb, .. } => cb.opens(),
        _ => false,
    }
}

/// Explain `s` from `events` (oldest first, the stale use last).
pub fn build(events: &[Rec], s: &Stale, mm: Mm) -> Explanation {
    let page = s.addr & !(PAGE_SIZE - 1);
    let install = events.iter().rposition(|r| {
        matches!(r.what, What::Install { who, addr, frame, .. }
            if who.same_cache(s.who) && addr == page && frame == s.frame)
    });
    let read = install.and_then(|i| {
        let who = events[i].what.who();
        events[..i].iter().rposition(|r| {
            matches!(r.what, What::Read { addr, .. } if addr == page) && r.what.who() == who
        })
    });
    // An invalidation of the page already in flight at the read belongs to the story:
    // start from its `invalidate_range_start`.
    let from = read.or(install).map(|i| {
        let last_end = events[..i].iter().rposition(|r| {
            related(r, s, mm) && matches!(r.what, What::Primary(SimEvent::InvalidateEnd { .. }))
        });
        let lo = last_end.map_or(0, |k| k + 1);
        events[lo..i]
            .iter()
            .position(|r| related(r, s, mm) && opens(r))
            .map_or(i, |k| lo + k)
    });
    let mut rel: Vec<Rec> = match from {
        Some(from) => events[from..]
            .iter()
            .filter(|r| related(r, s, mm))
            .copied()
            .collect(),
        None => {
            let all: Vec<Rec> = events
                .iter()
                .filter(|r| related(r, s, mm))
                .copied()
                .collect();
            all[all.len().saturating_sub(SHOWN)..].to_vec()
        }
    };
    // After the stale generation's free, only the consumer's own events and the
    // frame's reuse still tell the story.
    if let Some(f) = rel
        .iter()
        .position(|r| matches!(r.what, What::Primary(SimEvent::FrameFree(f)) if f == s.frame))
    {
        let mut reuse = false;
        let mut k = 0;
        rel.retain(|r| {
            k += 1;
            if k <= f + 1 {
                return true;
            }
            match r.what {
                What::Primary(SimEvent::FrameAlloc(_)) if !reuse => {
                    reuse = true;
                    true
                }
                What::Primary(_) | What::Callback { .. } => false,
                _ => true,
            }
        });
    }
    let mut omitted = 0;
    let mut gap_at = 0;
    if rel.len() > SHOWN {
        let head = 10;
        omitted = rel.len() - SHOWN;
        gap_at = head;
        rel.drain(head..head + omitted);
    }
    Explanation {
        events: rel,
        omitted,
        gap_at,
        found_install: install.is_some(),
    }
}

/// The short name of an event's operation (the report's `operation`).
pub fn operation(w: &What) -> &'static str {
    match w {
        What::Primary(e) => match e {
            SimEvent::InvalidateStart { .. } => "invalidate_range_start",
            SimEvent::InvalidateEnd { .. } => "invalidate_range_end",
            SimEvent::Refused { .. } => "start_refused",
            SimEvent::SecondaryTlbs { .. } => "entry_changed_tlbs_flushed",
            SimEvent::FrameAlloc(_) => "frame_allocated",
            SimEvent::FrameFree(_) => "frame_freed",
            SimEvent::Aged { .. } => "aged",
            SimEvent::Reclaimed { .. } => "evicted",
            SimEvent::Released { .. } => "released",
        },
        What::Read { .. } => "read_primary_entry",
        What::Check { .. } => "sequence_check",
        What::Install { .. } => "install",
        What::Callback { cb, .. } => cb.name(),
        What::Stale { .. } => "stale_use",
    }
}

/// Who did it: `primary`, or the secondary MMU (with its vCPU).
pub fn side(w: &What) -> String {
    match w {
        // The exporter's callbacks serve all its importers.
        What::Callback { who, .. } if who.kind == Kind::Importer => "exporter".to_string(),
        _ => w.who().map_or_else(|| "primary".to_string(), |w| w.label()),
    }
}

/// The event in words.
pub fn text(r: &Rec, freed_at: Option<u64>) -> String {
    match r.what {
        What::Primary(e) => primary(&e),
        What::Read {
            who,
            addr,
            frame,
            seen,
        } => {
            let got = frame.map_or("not present".to_string(), |f| {
                format!("frame {} (generation {})", f.pfn, f.gen)
            });
            let flight = if seen.in_flight > 0 {
                format!(", {}", who.flight_name(seen.in_flight))
            } else {
                String::new()
            };
            format!(
                "fault: reads the primary entry of {addr:#x}: {got}; {} {}{flight}",
                who.seq_name(),
                seen.seq
            )
        }
        What::Check { seq, retry, .. } => {
            if retry {
                format!("checks read_retry({seq}): an invalidation ran since its read: retries")
            } else {
                format!("checks read_retry({seq}): nothing ran since its read")
            }
        }
        What::Install {
            who,
            addr,
            frame,
            at_read,
            now,
            checked,
        } => {
            let f = format!(
                "installs {addr:#x} -> frame {} (generation {})",
                frame.pfn, frame.gen
            );
            match (who.kind, at_read, now) {
                (Kind::Mirror | Kind::TwoPass, _, _) if !checked => format!(
                    "{f} WITHOUT a read_retry check: nothing stops an install after an invalidation"
                ),
                (Kind::Mirror | Kind::TwoPass, _, _) => format!("{f} after its check"),
                (_, Some(a), Some(n)) if a.seq != n.seq => format!(
                    "{f} although its {} moved from {} (at its read) to {}: a fault path that checks would retry",
                    who.seq_name(),
                    a.seq,
                    n.seq,
                ),
                (_, Some(_), Some(n)) if n.in_flight > 0 => format!(
                    "{f} although {} in flight ({}): a fault path that checks would retry",
                    if n.in_flight == 1 { "an invalidation is" } else { "invalidations are" },
                    who.flight_name(n.in_flight)
                ),
                (_, Some(a), _) => format!(
                    "{f}; its {} is still {}, nothing in flight: nothing changed since its read",
                    who.seq_name(),
                    a.seq
                ),
                _ => f,
            }
        }
        What::Callback {
            cb, start, end, seq, ..
        } => {
            let r = if end == usize::MAX {
                String::new()
            } else {
                format!(" [{start:#x}, {end:#x})")
            };
            match seq {
                Some(q) => format!("callback {}{r} (interval sequence {q})", cb.name()),
                None => format!("callback {}{r}", cb.name()),
            }
        }
        What::Stale { addr, frame, .. } => format!(
            "uses {addr:#x} -> frame {} (generation {}): STALE, that generation of the frame was freed{}",
            frame.pfn,
            frame.gen,
            freed_at.map_or(String::new(), |t| format!(" at #{t}"))
        ),
    }
}

fn primary(e: &SimEvent) -> String {
    match e {
        SimEvent::InvalidateStart { range, .. } => format!(
            "invalidate_range_start [{:#x}, {:#x}) {:?}{} returned (every subscriber called): the entry may change now",
            range.start,
            range.end,
            range.event,
            if range.blockable {
                ""
            } else {
                " (non-blocking)"
            }
        ),
        SimEvent::InvalidateEnd { range, .. } => format!(
            "invalidate_range_end [{:#x}, {:#x}) {:?}",
            range.start, range.end, range.event
        ),
        SimEvent::Refused { range, .. } => format!(
            "non-blocking start refused [{:#x}, {:#x}): nothing changed",
            range.start, range.end
        ),
        SimEvent::SecondaryTlbs { start, end, .. } => format!(
            "entry changed; CPU TLB and secondary TLBs flushed (invalidate_secondary_tlbs [{start:#x}, {end:#x}))"
        ),
        SimEvent::FrameAlloc(f) => {
            format!("frame {} allocated (generation {})", f.pfn, f.gen)
        }
        SimEvent::FrameFree(f) => format!(
            "frame {} FREED (generation {} is over): its last reference went",
            f.pfn, f.gen
        ),
        SimEvent::Aged {
            addr,
            primary,
            secondary,
            ..
        } => format!(
            "reclaim ages {addr:#x}: primary young {primary}, secondary young {secondary}"
        ),
        SimEvent::Reclaimed { addr, frame, .. } => {
            format!("reclaim evicts {addr:#x} (frame {})", frame.pfn)
        }
        SimEvent::Released { .. } => "address space torn down: release returned".to_string(),
    }
}

/// The time the stale frame's generation was freed, among the events shown.
pub fn freed_at(x: &Explanation, s: &Stale) -> Option<u64> {
    x.events.iter().find_map(|r| match r.what {
        What::Primary(SimEvent::FrameFree(f)) if f == s.frame => Some(r.time),
        _ => None,
    })
}

/// What the broken consumer does wrong, for a reader who knows only the race.
pub fn story(t: Option<Twin>) -> String {
    let Some(t) = t else {
        return "No consumer was broken on purpose: this is a bug in the core or the simulator."
            .into();
    };
    let what = match t {
        Twin::KvmIgnoresSeq => "the shadow MMU installs the entry its fault read without comparing mmu_invalidate_seq with the value it saw before the read (nor looking for an invalidation in flight). An invalidation that starts and ends between its read and its install goes unnoticed: the 2008 race.",
        Twin::KvmFlushAfterEnd => "the shadow MMU postpones zapping its entries from invalidate_range_start to its next fault. After invalidate_range_end the primary MMU frees the page while a shadow entry still maps it.",
        Twin::KvmCachesPastRelease => "the shadow MMU keeps its entries after release. Once the address space is torn down and its pages freed, the guest still reaches them.",
        Twin::KvmRefusesWhileBlockable => "the shadow MMU refuses blockable invalidations (the core reports it as a bug).",
        Twin::DeviceTlbIgnoresFlush => "the device TLB ignores invalidate_secondary_tlbs. The entry it filled survives the primary's change of the entry and the free of the page.",
        Twin::ExporterIgnoresInvalidation => "the exporter grants map requests without looking for an invalidation in flight or since its read, and revokes remote mappings only at invalidate_range_end. A map granted after that revocation keeps the old frame.",
        Twin::MirrorIgnoresSeq => "the interval mirror installs without read_retry. An invalidation between its read_begin and its install goes unnoticed.",
        Twin::TwoPassSkipsFinish => "the two-pass mirror queues its device invalidation in invalidate_start and does not wait for it in invalidate_finish (it completes it at its next fault). The entry outlives invalidate_range_end and the free of the page.",
        // Twins added later are described by their documentation.
        #[allow(unreachable_patterns)]
        _ => "see the twin's documentation in tests/src/lib.rs.",
    };
    format!("The broken consumer ({}): {what}", t.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::trace::{Seen, Who};
    use backend_sim::harness::Frame;
    use notifier_core::{Event, Range};

    const PAGE: usize = 0x4000_5000;

    fn range(start: usize, end: usize) -> Range {
        Range::new(start, end, Event::Unmap)
    }

    #[test]
    fn both_sides_in_order_and_nothing_unrelated() {
        let kvm = Who::of(Kind::Kvm);
        let f = Frame { pfn: 7, gen: 3 };
        let seen = Seen {
            seq: 4,
            in_flight: 0,
        };
        let r = range(PAGE, PAGE + PAGE_SIZE);
        let whats = [
            What::Primary(SimEvent::Released { mm: 1 }), // another address space
            What::Read {
                who: kvm,
                addr: PAGE,
                frame: Some(f),
                seen,
            },
            What::Primary(SimEvent::InvalidateStart { mm: 0, range: r }),
            What::Primary(SimEvent::InvalidateStart {
                mm: 0,
                range: range(PAGE + PAGE_SIZE, PAGE + 2 * PAGE_SIZE), // another page
            }),
            What::Primary(SimEvent::FrameFree(Frame { pfn: 9, gen: 1 })), // another frame
            What::Read {
                who: Who::of(Kind::Mirror), // another consumer
                addr: PAGE,
                frame: Some(f),
                seen,
            },
            What::Primary(SimEvent::InvalidateEnd { mm: 0, range: r }),
            What::Primary(SimEvent::FrameFree(f)),
            What::Install {
                who: kvm,
                addr: PAGE,
                frame: f,
                at_read: Some(seen),
                now: Some(Seen {
                    seq: 5,
                    in_flight: 0,
                }),
                checked: false,
            },
            What::Primary(SimEvent::InvalidateStart { mm: 0, range: r }), // after the free
            What::Stale {
                who: kvm,
                addr: PAGE,
                frame: f,
            },
        ];
        let events: Vec<Rec> = whats
            .iter()
            .enumerate()
            .map(|(i, w)| Rec {
                time: i as u64,
                op: 0,
                what: *w,
            })
            .collect();
        let s = Stale {
            who: kvm,
            addr: PAGE,
            frame: f,
            time: 10,
        };
        let x = build(&events, &s, 0);
        assert!(x.found_install);
        let times: Vec<u64> = x.events.iter().map(|r| r.time).collect();
        assert_eq!(times, vec![1, 2, 6, 7, 8, 10]);
        let install = text(&x.events[4], freed_at(&x, &s));
        assert!(
            install.contains("moved from 4 (at its read) to 5"),
            "{install}"
        );
        assert!(text(&x.events[5], freed_at(&x, &s)).contains("freed at #7"));
    }
}
