//! `timeline.svg`: what each secondary MMU did over the run, one lane each with its
//! own axis and values, stale accesses marked in the lane of the consumer at fault,
//! and a close-up of the first stale access with both sides' events in order.

use super::args::Args;
use super::explain;
use super::run::{lane, DesignResult, Report, Sample};
use super::svg::{ticks, Anchor, Svg};
use super::trace::What;
use backend_sim::SimEvent;

const W: f64 = 1100.0;
const LEFT: f64 = 200.0;
const RIGHT: f64 = 30.0;
const LANE_H: f64 = 84.0;
const LANE_GAP: f64 = 22.0;
const RED: &str = "#d62728";

type Get = fn(&Sample) -> u64;

/// A lane: id, title, colour, then (what, getter) for bars, line and dashed line.
struct Lane {
    id: &'static str,
    title: &'static str,
    color: &'static str,
    bars: Option<(&'static str, Get)>,
    line: Option<(&'static str, Get)>,
    dashed: Option<(&'static str, Get)>,
}

const LANES: [Lane; 5] = [
    Lane {
        id: "kvm",
        title: "kvm (shadow MMU)",
        color: "#1f77b4",
        bars: Some(("invalidate_range_start", |s| u64::from(s.kvm_starts))),
        line: Some(("faults installed", |s| u64::from(s.kvm_faults))),
        dashed: Some(("fault retries", |s| u64::from(s.kvm_retries))),
    },
    Lane {
        id: "device-tlb",
        title: "device TLB",
        color: "#2ca02c",
        bars: Some(("invalidate_secondary_tlbs", |s| u64::from(s.dev_flushes))),
        line: None,
        dashed: None,
    },
    Lane {
        id: "importers",
        title: "exporter's importers",
        color: "#b8860b",
        bars: Some(("revoke messages", |s| u64::from(s.exp_messages))),
        line: None,
        dashed: Some(("map requests refused", |s| u64::from(s.exp_refusals))),
    },
    Lane {
        id: "mirror",
        title: "mirror (interval)",
        color: "#9467bd",
        bars: Some(("invalidate", |s| u64::from(s.mirror_inv))),
        line: Some(("faults installed", |s| u64::from(s.mirror_faults))),
        dashed: Some(("fault retries", |s| u64::from(s.mirror_retries))),
    },
    Lane {
        id: "two-pass",
        title: "two-pass devices",
        color: "#8c564b",
        bars: None,
        line: None,
        dashed: Some(("fault retries", |s| u64::from(s.tp_retries))),
    },
];

/// The lane id of a consumer kind (what the test command's checks look for).
pub fn lane_id(i: usize) -> &'static str {
    LANES[i].id
}

/// The timeline of a scenario run.
pub fn timeline(a: &Args, r: &Report) -> String {
    let sc = a.scenario;
    let shown: Vec<usize> = [sc.kvm, sc.device, sc.exporter, sc.mirror, sc.two_pass]
        .iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(i, _)| i)
        .collect();
    let top = 96.0;
    let lanes_bottom = top + shown.len() as f64 * (LANE_H + LANE_GAP);
    let axis_y = lanes_bottom - LANE_GAP + 4.0;
    let zoom_top = axis_y + 64.0;
    let zoom_h = if r.first_stale.is_some() { 500.0 } else { 0.0 };
    let h = zoom_top + zoom_h + 40.0;
    let mut s = Svg::new(W, h);
    let title = format!(
        "notifier-sim: scenario {}, seed {}, {} primary operations{}",
        sc.name,
        a.seed,
        a.ops,
        a.broken.map_or(String::new(), |t| format!(
            ", broken consumer: {}",
            t.name()
        ))
    );
    s.text(12.0, 24.0, &title, 16.0, Anchor::Start, "#000", 0.0, true);
    let n = r.samples.len();
    let every = if n >= 2 {
        r.samples[1].op.saturating_sub(r.samples[0].op).max(1)
    } else {
        1
    };
    s.text(
        12.0,
        44.0,
        &format!("Each lane: what one secondary MMU did per {} (own y-axis: count per interval). x: primary operations completed.", per(every)),
        12.0,
        Anchor::Start,
        "#444",
        0.0,
        false,
    );
    legend(&mut s, 12.0, 66.0, r.first_stale.is_some());

    let plot_w = W - LEFT - RIGHT;
    let max_op = r.samples.last().map_or(a.ops, |x| x.op).max(1) as f64;
    let xo = |op: u64| LEFT + op as f64 / max_op * plot_w;
    // The close-up's span of primary operations, shaded in every lane.
    let zoom_ops = r.first_stale.as_ref().and_then(|(_, x)| {
        let f = x.events.first()?;
        let l = x.events.last()?;
        Some((f.op, l.op))
    });
    for (row, &li) in shown.iter().enumerate() {
        let l = &LANES[li];
        let y0 = top + row as f64 * (LANE_H + LANE_GAP);
        let base = y0 + LANE_H;
        s.group(
            &format!("lane-{}", l.id),
            &[
                ("top", format!("{y0:.1}")),
                ("bottom", format!("{base:.1}")),
                ("left", format!("{LEFT:.1}")),
                ("right", format!("{:.1}", W - RIGHT)),
            ],
        );
        s.rect(LEFT, y0, plot_w, LANE_H, "#fafafa", r##" stroke="#ddd""##);
        s.text(
            12.0,
            y0 + 16.0,
            l.title,
            13.0,
            Anchor::Start,
            l.color,
            0.0,
            true,
        );
        s.text(
            12.0,
            y0 + 32.0,
            &format!("count per {}", per(every)),
            10.0,
            Anchor::Start,
            "#666",
            0.0,
            false,
        );
        if let Some((lo, hi)) = zoom_ops {
            let x1 = xo(lo);
            let x2 = xo(hi).max(x1 + 3.0);
            s.rect(x1, y0, x2 - x1, LANE_H, "#ffd54f", r#" opacity="0.45""#);
        }
        let d = |g: Get| -> Vec<u64> {
            r.samples
                .windows(2)
                .map(|p| g(&p[1]).saturating_sub(g(&p[0])))
                .collect()
        };
        let series: Vec<(Vec<u64>, &str, u8)> = [(l.bars, 0u8), (l.line, 1), (l.dashed, 2)]
            .iter()
            .filter_map(|(x, k)| x.map(|(name, g)| (d(g), name, *k)))
            .collect();
        let peak = series
            .iter()
            .flat_map(|(v, _, _)| v.iter().copied())
            .max()
            .unwrap_or(0) as f64;
        let t = ticks(peak, 2);
        let ymax = t.last().copied().unwrap_or(1.0).max(1.0);
        let yv = |v: f64| base - v / ymax * (LANE_H - 6.0);
        s.group(&format!("y-axis-{}", l.id), &[]);
        s.line(LEFT, y0, LEFT, base, "#333", 1.0, "");
        for tv in &t {
            let y = yv(*tv);
            s.line(LEFT - 4.0, y, LEFT, y, "#333", 1.0, "");
            s.line(LEFT, y, W - RIGHT, y, "#e6e6e6", 1.0, "");
            s.text(
                LEFT - 7.0,
                y + 4.0,
                &fmt_num(*tv),
                10.0,
                Anchor::End,
                "#333",
                0.0,
                false,
            );
        }
        s.end_group();
        let span = if n >= 2 {
            plot_w / (n - 1) as f64
        } else {
            plot_w
        };
        for (v, _, kind) in &series {
            match kind {
                0 => {
                    for (k, x) in v.iter().enumerate() {
                        if *x > 0 {
                            let xx = xo(r.samples[k].op);
                            let yy = yv(*x as f64);
                            s.rect(
                                xx,
                                yy,
                                (span - 0.5).max(0.8),
                                base - yy,
                                l.color,
                                r#" opacity="0.3""#,
                            );
                        }
                    }
                }
                _ => {
                    let pts: Vec<(f64, f64)> = v
                        .iter()
                        .enumerate()
                        .map(|(k, x)| (xo(r.samples[k].op) + span / 2.0, yv(*x as f64)))
                        .collect();
                    let dash = if *kind == 2 {
                        r#" stroke-dasharray="5 3""#
                    } else {
                        ""
                    };
                    s.polyline(&pts, l.color, 1.4, dash);
                }
            }
        }
        // What each mark of this lane shows.
        let key: Vec<String> = series
            .iter()
            .map(|(_, name, k)| format!("{}: {name}", ["bars", "line", "dashed"][usize::from(*k)]))
            .collect();
        s.text(
            W - RIGHT - 4.0,
            y0 - 4.0,
            &key.join("  ·  "),
            10.0,
            Anchor::End,
            "#555",
            0.0,
            false,
        );
        // Stale accesses by this lane's consumer, at the top of the lane.
        s.group(&format!("stale-{}", l.id), &[("lane", l.id.to_string())]);
        for (k, p) in r.samples.windows(2).enumerate() {
            let more = p[1].stale[li].saturating_sub(p[0].stale[li]);
            if more > 0 {
                let x = (xo(r.samples[k].op) + span / 2.0).min(W - RIGHT - 6.0);
                let y = y0 + 4.0;
                s.polygon(
                    &[(x - 6.0, y), (x + 6.0, y), (x, y + 11.0)],
                    RED,
                    &format!(
                        r#" class="stale-mark" data-x="{x:.1}" data-y="{:.1}""#,
                        y + 4.0
                    ),
                );
            }
        }
        s.end_group();
        s.end_group();
    }
    // The shared x-axis.
    s.group("x-axis", &[("y", format!("{axis_y:.1}"))]);
    s.line(LEFT, axis_y, W - RIGHT, axis_y, "#333", 1.0, "");
    for tv in ticks(max_op, 8) {
        if tv > max_op {
            break;
        }
        let x = xo(tv as u64);
        s.line(x, axis_y, x, axis_y + 5.0, "#333", 1.0, "");
        s.text(
            x,
            axis_y + 18.0,
            &fmt_num(tv),
            10.0,
            Anchor::Middle,
            "#333",
            0.0,
            false,
        );
    }
    s.text(
        LEFT + plot_w / 2.0,
        axis_y + 36.0,
        "primary operations completed (munmap, mprotect, migrate, COW break, reclaim)",
        12.0,
        Anchor::Middle,
        "#333",
        0.0,
        false,
    );
    s.end_group();
    if let Some((st, x)) = &r.first_stale {
        zoom(&mut s, zoom_top, st, x);
    }
    let (v, c) = if r.stale_total > 0 {
        (
            format!(
                "STALE TRANSLATION USED: {} stale access{} (red marks, in the lane of the consumer at fault)",
                r.stale_total,
                if r.stale_total == 1 { "" } else { "es" }
            ),
            RED,
        )
    } else if r.bugs > 0 {
        (
            format!("SUBSCRIBER BUG: {} refusals of blockable invalidations reported by the core; translations stayed coherent", r.bugs),
            RED,
        )
    } else {
        (
            "coherent: no secondary MMU used a stale translation".to_string(),
            "#2ca02c",
        )
    };
    s.text(12.0, h - 14.0, &v, 14.0, Anchor::Start, c, 0.0, true);
    s.finish()
}

/// The legend row.
fn legend(s: &mut Svg, x: f64, y: f64, zoomed: bool) {
    s.group("legend", &[]);
    let mut x = x;
    s.rect(x, y - 9.0, 16.0, 10.0, "#888", r#" opacity="0.4""#);
    s.text(
        x + 21.0,
        y,
        "bars: callbacks received",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 175.0;
    s.line(x, y - 4.0, x + 22.0, y - 4.0, "#555", 1.6, "");
    s.text(
        x + 27.0,
        y,
        "line: translations installed",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 200.0;
    s.line(
        x,
        y - 4.0,
        x + 22.0,
        y - 4.0,
        "#555",
        1.6,
        r#" stroke-dasharray="5 3""#,
    );
    s.text(
        x + 27.0,
        y,
        "dashed: retries / refusals",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 190.0;
    s.polygon(
        &[(x, y - 10.0), (x + 12.0, y - 10.0), (x + 6.0, y + 1.0)],
        RED,
        "",
    );
    s.text(
        x + 17.0,
        y,
        "stale access (lane of the consumer at fault)",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    if zoomed {
        x += 275.0;
        s.rect(x, y - 9.0, 16.0, 10.0, "#ffd54f", r#" opacity="0.6""#);
        s.text(
            x + 21.0,
            y,
            "close-up below",
            11.0,
            Anchor::Start,
            "#333",
            0.0,
            false,
        );
    }
    s.end_group();
}

/// The close-up's marks.
fn zoom_legend(s: &mut Svg, x: f64, y: f64) {
    let c = "#1f77b4";
    let mut x = x;
    s.text(x, y, "marks:", 11.0, Anchor::Start, "#333", 0.0, false);
    x += 48.0;
    s.rect(x, y - 10.0, 4.0, 12.0, "#1f4e79", "");
    s.text(
        x + 9.0,
        y,
        "primary start, end",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 130.0;
    s.rect(x, y - 10.0, 4.0, 12.0, "#555", "");
    s.text(
        x + 9.0,
        y,
        "callback received",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 125.0;
    s.rect(x, y - 10.0, 4.0, 12.0, "#ff7f0e", "");
    s.text(
        x + 9.0,
        y,
        "entry changed + TLB flush",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 170.0;
    s.circle(x + 5.0, y - 4.0, 5.0, "#000", "");
    s.text(
        x + 14.0,
        y,
        "frame freed / reused",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 140.0;
    s.circle(
        x + 5.0,
        y - 4.0,
        5.0,
        "#fff",
        &format!(r#" stroke="{c}" stroke-width="2""#),
    );
    s.text(
        x + 14.0,
        y,
        "reads the primary entry",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 160.0;
    s.polygon(
        &[
            (x + 5.0, y - 10.0),
            (x + 11.0, y - 4.0),
            (x + 5.0, y + 2.0),
            (x - 1.0, y - 4.0),
        ],
        c,
        "",
    );
    s.text(
        x + 15.0,
        y,
        "checks its sequence",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 130.0;
    s.rect(x, y - 9.0, 10.0, 10.0, c, "");
    s.text(
        x + 14.0,
        y,
        "installs",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
    x += 66.0;
    s.polygon(
        &[(x, y - 10.0), (x + 12.0, y - 10.0), (x + 6.0, y + 1.0)],
        RED,
        "",
    );
    s.text(
        x + 16.0,
        y,
        "stale use",
        11.0,
        Anchor::Start,
        "#333",
        0.0,
        false,
    );
}

/// The close-up of the first stale access: the primary's row and the consumer's row,
/// the events evenly spaced in their order, each labelled.
fn zoom(s: &mut Svg, top: f64, st: &super::run::Stale, x: &explain::Explanation) {
    let ev = &x.events;
    if ev.is_empty() {
        return;
    }
    let consumer = st.who.consumer();
    s.group(
        "zoom",
        &[
            ("lane", lane_id(lane(st.who.kind)).to_string()),
            ("events", ev.len().to_string()),
        ],
    );
    s.text(
        12.0,
        top,
        &format!(
            "Close-up of the first stale access: {} at {:#x} reached frame {} generation {}",
            st.who.label(),
            st.addr,
            st.frame.pfn,
            st.frame.gen,
        ),
        14.0,
        Anchor::Start,
        "#000",
        0.0,
        true,
    );
    s.text(
        12.0,
        top + 18.0,
        &format!(
            "Events #{} to #{} (during primary operations {} to {}): only this page, this frame and this consumer, in the order they happened, evenly spaced.",
            ev[0].time,
            ev[ev.len() - 1].time,
            ev[0].op,
            ev[ev.len() - 1].op
        ),
        11.0,
        Anchor::Start,
        "#555",
        0.0,
        false,
    );
    // Room on the right for the last labels.
    let plot_w = W - LEFT - RIGHT - 90.0;
    let step = plot_w / ev.len() as f64;
    // Crowded labels stand steeper.
    let angle = if step < 75.0 { -58.0 } else { -32.0 };
    let xi = |i: usize| LEFT + (i as f64 + 0.5) * step;
    zoom_legend(s, 12.0, top + 40.0);
    let prim_y = top + 180.0;
    let sec_y = top + 380.0;
    let axis_y = sec_y + 30.0;
    let consumer = match st.who.kind {
        super::trace::Kind::Kvm => "kvm shadow MMU".to_string(),
        _ => consumer,
    };
    for (y, name) in [(prim_y, "primary MMU".to_string()), (sec_y, consumer)] {
        s.line(LEFT, y, W - RIGHT, y, "#bbb", 1.0, "");
        s.text(12.0, y + 4.0, &name, 13.0, Anchor::Start, "#000", 0.0, true);
    }
    // Invalidation brackets: from the first sign of each (the consumer's callback or
    // the primary's start) to its end, or to the edge.
    let mut open: Option<usize> = None;
    let mut brackets = Vec::new();
    for (i, r) in ev.iter().enumerate() {
        let opens = match r.what {
            What::Primary(SimEvent::InvalidateStart { .. }) => true,
            What::Callback { cb, .. } => cb.opens(),
            _ => false,
        };
        if opens && open.is_none() {
            open = Some(i);
        }
        if matches!(r.what, What::Primary(SimEvent::InvalidateEnd { .. })) {
            brackets.push((open.take().unwrap_or(i), Some(i)));
        }
    }
    if let Some(i) = open {
        brackets.push((i, None));
    }
    for (i, j) in brackets {
        {
            let x2 = j.map_or(W - RIGHT, xi);
            s.rect(
                xi(i),
                prim_y - 9.0,
                x2 - xi(i),
                18.0,
                "#aec7e8",
                r#" class="zoom-bracket" opacity="0.8""#,
            );
            s.text(
                (xi(i) + x2) / 2.0,
                prim_y + 24.0,
                "invalidation in flight",
                10.0,
                Anchor::Middle,
                "#1f4e79",
                0.0,
                false,
            );
        }
    }
    for (i, r) in ev.iter().enumerate() {
        let x = xi(i);
        let op = explain::operation(&r.what);
        let (y, label, color) = match r.what {
            What::Primary(e) => (
                prim_y,
                match e {
                    SimEvent::InvalidateStart { range, .. } => {
                        format!("start returned ({:?})", range.event)
                    }
                    SimEvent::InvalidateEnd { .. } => "end".to_string(),
                    SimEvent::SecondaryTlbs { .. } => "entry changed + flush".to_string(),
                    SimEvent::FrameFree(f) => format!("frame {} freed (gen {})", f.pfn, f.gen),
                    SimEvent::FrameAlloc(f) => format!("frame {} reused (gen {})", f.pfn, f.gen),
                    SimEvent::Aged { .. } => "aged".to_string(),
                    SimEvent::Reclaimed { .. } => "evicted".to_string(),
                    SimEvent::Refused { .. } => "start refused".to_string(),
                    SimEvent::Released { .. } => "torn down (release returned)".to_string(),
                },
                match e {
                    SimEvent::FrameFree(_) => "#000",
                    SimEvent::SecondaryTlbs { .. } => "#ff7f0e",
                    _ => "#1f4e79",
                },
            ),
            What::Read { frame, seen, .. } => (
                sec_y,
                {
                    let fl = if seen.in_flight > 0 {
                        format!(", {} in flight", seen.in_flight)
                    } else {
                        String::new()
                    };
                    match frame {
                        Some(f) => {
                            format!("read: frame {} gen {} (seq {}{fl})", f.pfn, f.gen, seen.seq)
                        }
                        None => format!("read: not present (seq {}{fl})", seen.seq),
                    }
                },
                "#1f77b4",
            ),
            What::Check { retry, .. } => (
                sec_y,
                if retry { "check: retry" } else { "check: ok" }.to_string(),
                "#1f77b4",
            ),
            What::Install {
                frame,
                at_read,
                now,
                checked,
                ..
            } => (
                sec_y,
                {
                    let moved = matches!((at_read, now), (Some(a), Some(n)) if a.seq != n.seq || n.in_flight > 0);
                    let unchecked = matches!(
                        st.who.kind,
                        super::trace::Kind::Mirror | super::trace::Kind::TwoPass
                    ) && !checked;
                    format!(
                        "install frame {} gen {}{}",
                        frame.pfn,
                        frame.gen,
                        if moved || unchecked {
                            " (no check)"
                        } else {
                            ""
                        }
                    )
                },
                "#1f77b4",
            ),
            What::Callback { who, cb, .. } => (
                sec_y,
                if who.kind == super::trace::Kind::Importer {
                    format!("exporter callback {}", cb.name())
                } else {
                    format!("callback {}", cb.name())
                },
                "#555",
            ),
            What::Stale { .. } => (sec_y, "STALE use".to_string(), RED),
        };
        let cls = format!(r#" class="zoom-{op}""#);
        match r.what {
            What::Stale { .. } => s.polygon(
                &[(x - 8.0, y - 12.0), (x + 8.0, y - 12.0), (x, y + 4.0)],
                RED,
                &cls,
            ),
            What::Install { .. } => s.rect(x - 6.0, y - 6.0, 12.0, 12.0, color, &cls),
            What::Read { .. } => s.circle(
                x,
                y,
                6.0,
                "#fff",
                &format!(r#"{cls} stroke="{color}" stroke-width="2""#),
            ),
            What::Callback { .. } => s.rect(x - 2.0, y - 12.0, 4.0, 24.0, color, &cls),
            What::Check { .. } => s.polygon(
                &[(x, y - 7.0), (x + 7.0, y), (x, y + 7.0), (x - 7.0, y)],
                color,
                &cls,
            ),
            What::Primary(SimEvent::FrameFree(_) | SimEvent::FrameAlloc(_)) => {
                s.circle(x, y, 6.0, color, &cls)
            }
            What::Primary(_) => s.rect(x - 2.0, y - 12.0, 4.0, 24.0, color, &cls),
        }
        s.text(
            x + 2.0,
            y - 16.0,
            &label,
            10.0,
            Anchor::Start,
            color,
            angle,
            false,
        );
        // The time axis.
        s.line(x, axis_y, x, axis_y + 4.0, "#333", 1.0, "");
        s.line(x, prim_y + 12.0, x, sec_y - 12.0, "#eee", 1.0, "");
        s.text(
            x,
            axis_y + 16.0,
            &format!("#{}", r.time),
            9.0,
            Anchor::Middle,
            "#333",
            0.0,
            false,
        );
    }
    if x.omitted > 0 && x.gap_at > 0 {
        let gx = LEFT + x.gap_at as f64 * step;
        s.line(
            gx,
            prim_y - 30.0,
            gx,
            axis_y,
            "#999",
            1.0,
            r#" stroke-dasharray="2 3""#,
        );
        s.text(
            gx,
            axis_y + 30.0,
            &format!("{} related events left out", x.omitted),
            10.0,
            Anchor::Middle,
            "#555",
            0.0,
            false,
        );
    }
    s.line(LEFT, axis_y, W - RIGHT, axis_y, "#333", 1.0, "");
    s.text(
        LEFT + plot_w / 2.0,
        axis_y + 44.0,
        "time: events in run order (the run's event number under each)",
        12.0,
        Anchor::Middle,
        "#333",
        0.0,
        false,
    );
    s.end_group();
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// The export-designs chart: what each design caught, bars with their values.
pub fn designs(a: &Args, page: &DesignResult, rmap: &DesignResult) -> String {
    let (w, h) = (760.0, 330.0);
    let mut s = Svg::new(w, h);
    s.text(
        12.0,
        24.0,
        &format!(
            "export designs, seed {}, {} reclaim passes each: what each caught",
            a.seed, a.ops
        ),
        16.0,
        Anchor::Start,
        "#000",
        0.0,
        true,
    );
    let rows = [
        ("revocations", page.revoked, rmap.revoked),
        ("refused maps", page.refused, rmap.refused),
        ("stale accesses", page.stale, rmap.stale),
    ];
    let max = rows.iter().map(|r| r.1.max(r.2)).max().unwrap_or(1).max(1) as f64;
    for (i, (k, x, y)) in rows.iter().enumerate() {
        let y0 = 60.0 + i as f64 * 80.0;
        s.text(12.0, y0 + 20.0, k, 12.0, Anchor::Start, "#000", 0.0, false);
        for (j, (val, color, who)) in [
            (x, "#2ca02c", "page-keyed at free"),
            (y, RED, "hooked in rmap"),
        ]
        .iter()
        .enumerate()
        {
            let bw = **val as f64 / max * 420.0;
            let yy = y0 + j as f64 * 28.0;
            s.rect(140.0, yy, bw, 22.0, color, "");
            s.text(
                146.0 + bw,
                yy + 16.0,
                &format!("{who}: {val}"),
                12.0,
                Anchor::Start,
                "#000",
                0.0,
                false,
            );
        }
    }
    s.finish()
}

/// "operation" or "N operations".
fn per(n: u64) -> String {
    if n == 1 {
        "primary operation".to_string()
    } else {
        format!("{n} primary operations")
    }
}
