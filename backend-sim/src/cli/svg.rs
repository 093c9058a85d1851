//! A small SVG writer: the few shapes the timeline needs, every text escaped.

use std::fmt::Write as _;

/// `s` with the characters XML gives a meaning escaped.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// An SVG document being written.
pub struct Svg {
    out: String,
}

/// How a text is anchored at its point.
#[derive(Clone, Copy)]
pub enum Anchor {
    /// At its start.
    Start,
    /// At its middle.
    Middle,
    /// At its end.
    End,
}

impl Svg {
    /// A `w` × `h` document on a white background.
    pub fn new(w: f64, h: f64) -> Svg {
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            out,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
        );
        Svg { out }
    }

    /// Open a group with an id and `data-*` attributes (what the test command's checks
    /// look for).
    pub fn group(&mut self, id: &str, data: &[(&str, String)]) {
        let _ = write!(self.out, r#"<g id="{}""#, esc(id));
        for (k, v) in data {
            let _ = write!(self.out, r#" data-{k}="{}""#, esc(v));
        }
        let _ = writeln!(self.out, ">");
    }

    /// Close the innermost group.
    pub fn end_group(&mut self) {
        let _ = writeln!(self.out, "</g>");
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, extra: &str) {
        let _ = writeln!(
            self.out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}"{extra}/>"#,
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// A line.
    #[allow(clippy::too_many_arguments)]
    pub fn line(
        &mut self,
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        stroke: &str,
        width: f64,
        extra: &str,
    ) {
        let _ = writeln!(
            self.out,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}" shape-rendering="crispEdges"{extra}/>"#
        );
    }

    /// A polyline through `pts`.
    pub fn polyline(&mut self, pts: &[(f64, f64)], stroke: &str, width: f64, extra: &str) {
        let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            self.out,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}"{extra}/>"#,
            p.join(" ")
        );
    }

    /// A closed polygon through `pts`.
    pub fn polygon(&mut self, pts: &[(f64, f64)], fill: &str, extra: &str) {
        let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            self.out,
            r#"<polygon points="{}" fill="{fill}"{extra}/>"#,
            p.join(" ")
        );
    }

    /// A circle.
    pub fn circle(&mut self, x: f64, y: f64, r: f64, fill: &str, extra: &str) {
        let _ = writeln!(
            self.out,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}"{extra}/>"#
        );
    }

    /// A text (escaped), optionally rotated by `rotate` degrees about its point.
    #[allow(clippy::too_many_arguments)]
    pub fn text(
        &mut self,
        x: f64,
        y: f64,
        s: &str,
        size: f64,
        anchor: Anchor,
        fill: &str,
        rotate: f64,
        bold: bool,
    ) {
        let a = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let r = if rotate == 0.0 {
            String::new()
        } else {
            format!(r#" transform="rotate({rotate} {x:.1} {y:.1})""#)
        };
        let b = if bold { r#" font-weight="bold""# } else { "" };
        let _ = writeln!(
            self.out,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{a}" fill="{fill}"{r}{b}>{}</text>"#,
            esc(s)
        );
    }

    /// The document.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// Round ticks from 0 to the first at or above `max`: about `n` of them, at 1, 2 or 5
/// times a power of ten (the last one is the axis' top).
pub fn ticks(max: f64, n: usize) -> Vec<f64> {
    if max <= 0.0 {
        return vec![0.0];
    }
    let raw = max / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = 0.0;
    loop {
        v.push(t);
        if t >= max * 0.999_999 {
            break;
        }
        t += step;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        let mut s = Svg::new(10.0, 10.0);
        s.text(
            0.0,
            0.0,
            "a<b & \"c\"",
            12.0,
            Anchor::Start,
            "#000",
            0.0,
            false,
        );
        let out = s.finish();
        assert!(out.contains("a&lt;b &amp; &quot;c&quot;"), "{out}");
        assert!(!out.contains("a<b"));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(400.0, 5), vec![0.0, 100.0, 200.0, 300.0, 400.0]);
        assert_eq!(ticks(7.0, 3), vec![0.0, 5.0, 10.0]);
        assert_eq!(ticks(0.0, 3), vec![0.0]);
    }
}
