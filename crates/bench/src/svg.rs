//! `--svg`: throughput (MB/s) and one-way latency (p50) by message size for
//! every mechanism, as a hand-written SVG (no plotting crate): two log-log
//! panels side by side; hub transports solid, raw baselines dashed, peers
//! dotted; a legend below.

use std::fmt::Write as _;

use super::cli::size_label;
use super::report::{Kind, Report, Row};

const WIDTH: f64 = 1000.0;
const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 60.0;
const LEFTS: [f64; 2] = [80.0, 580.0];
pub(super) const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22",
];

/// One line of the chart.
struct Series<'a> {
    label: String,
    kind: Kind,
    rows: Vec<&'a Row>,
}

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Log scale from `lo..hi` (positive) onto `a..b` pixels.
pub(super) struct LogAxis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    a: f64,
    b: f64,
}

impl LogAxis {
    /// Whole decades around the data (or one either side of a single value).
    pub(super) fn decades(values: &[f64], a: f64, b: f64) -> LogAxis {
        let (mut lo, mut hi) = values
            .iter()
            .filter(|v| **v > 0.0)
            .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        }
        let lo = 10f64.powf(lo.log10().floor());
        let mut hi = 10f64.powf(hi.log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        LogAxis { lo, hi, a, b }
    }

    pub(super) fn at(&self, v: f64) -> f64 {
        let t = (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        self.a + t * (self.b - self.a)
    }
}

pub fn chart(r: &Report) -> String {
    let mut series: Vec<Series> = Vec::new();
    for row in &r.rows {
        match series
            .iter_mut()
            .find(|s| s.kind == row.kind && s.rows[0].name == row.name)
        {
            Some(s) => s.rows.push(row),
            None => series.push(Series {
                label: match row.kind {
                    Kind::Hub => format!("hub: {}", row.label),
                    Kind::Raw => format!("raw: {}", row.label),
                    Kind::Peer => row.label.clone(),
                },
                kind: row.kind,
                rows: vec![row],
            }),
        }
    }
    let mut sizes: Vec<f64> = r.rows.iter().map(|x| x.size as f64).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let panels: [(&str, Figure); 2] = [
        ("throughput, MB/s (median)", mb_per_sec),
        ("latency one way p50, µs", p50_us),
    ];
    let legend_rows = series.len().div_ceil(3);
    let height = TOP + PANEL_H + 70.0 + 20.0 * legend_rows as f64 + 20.0;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let m = &r.machine;
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(&format!(
            "ipchub-bench {} - {}, {} cores, {} - {}",
            m.ipchub_version, m.cpu, m.cores, m.kernel, m.date
        ))
    );
    for (p, (title, value)) in panels.iter().enumerate() {
        let left = LEFTS[p];
        let (x0, x1) = (left, left + PANEL_W);
        let (y0, y1) = (TOP + PANEL_H, TOP);
        let values: Vec<f64> = r.rows.iter().filter_map(value).collect();
        let y = LogAxis::decades(&values, y0, y1);
        let (xlo, xhi) = match (sizes.first(), sizes.last()) {
            (Some(a), Some(b)) if b > a => (*a, *b),
            (Some(a), _) => (a / 2.0, a * 2.0),
            _ => (1.0, 2.0),
        };
        // Sizes sit on a log axis with a margin either side.
        let pad = (xhi / xlo).powf(0.06);
        let x = LogAxis {
            lo: xlo / pad,
            hi: xhi * pad,
            a: x0,
            b: x1,
        };
        let _ = writeln!(
            o,
            r##"<rect x="{x0}" y="{y1}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            (x0 + x1) / 2.0,
            TOP - 10.0,
            escape(title)
        );
        // Decade grid lines on y.
        let mut d = y.lo;
        while d <= y.hi * 1.0001 {
            let py = y.at(d);
            let _ = writeln!(
                o,
                r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                py + 4.0,
                tick(d)
            );
            d *= 10.0;
        }
        for &s in &sizes {
            let px = x.at(s);
            let _ = writeln!(
                o,
                r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{}" stroke="#444"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + 5.0,
                y0 + 18.0,
                size_label(s as usize)
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">message size</text>"#,
            (x0 + x1) / 2.0,
            y0 + 36.0
        );
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = s
                .rows
                .iter()
                .filter_map(|row| value(row).map(|v| (x.at(row.size as f64), y.at(v))))
                .collect();
            if points.len() > 1 {
                let path: Vec<String> = points
                    .iter()
                    .map(|(a, b)| format!("{a:.1},{b:.1}"))
                    .collect();
                let _ = writeln!(
                    o,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{}"{}/>"#,
                    path.join(" "),
                    if s.kind == Kind::Hub { 2.5 } else { 1.5 },
                    dash(s.kind)
                );
            }
            for (a, b) in points {
                let _ = writeln!(
                    o,
                    r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="{color}"/>"#
                );
            }
        }
    }
    let ly = TOP + PANEL_H + 60.0;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let lx = 80.0 + (i % 3) as f64 * 300.0;
        let y = ly + (i / 3) as f64 * 20.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="{}"{}/><text x="{}" y="{}">{}</text>"#,
            lx + 30.0,
            if s.kind == Kind::Hub { 2.5 } else { 1.5 },
            dash(s.kind),
            lx + 36.0,
            y + 4.0,
            escape(&s.label)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// What a panel plots for one row.
type Figure = fn(&Row) -> Option<f64>;

fn mb_per_sec(row: &Row) -> Option<f64> {
    row.throughput.ok().map(|t| t.mb_per_sec.median)
}

fn p50_us(row: &Row) -> Option<f64> {
    row.latency.ok().map(|l| l.one_way_ns.p50 / 1e3)
}

fn dash(k: Kind) -> &'static str {
    match k {
        Kind::Hub => "",
        Kind::Raw => r#" stroke-dasharray="6 4""#,
        Kind::Peer => r#" stroke-dasharray="2 3""#,
    }
}

/// Axis labels: 0.01, 0.1, 1, 10, … 1k, 10k, 1M.
pub(super) fn tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}
