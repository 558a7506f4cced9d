//! The results of a run and their three renderings: tables with ratios and a
//! recommendation (people), JSON (machines; schema `ipchub-bench/1`), CSV
//! (spreadsheets). Ratios and recommendations are computed here from the
//! measured rows only; the bars quoted next to ratios are the design's
//! (the bars in docs/ARCHITECTURE.md).

use std::fmt::Write as _;

use serde::Serialize;

use super::cli::{size_label, Args};
use super::measure::{Latency, Limit, Outcome, Throughput};
use super::session::Plan;

/// Identifies the JSON layout; bumped on incompatible changes.
pub const SCHEMA: &str = "ipchub-bench/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Through ipchubd.
    Hub,
    /// The mechanism point to point, no hub.
    Raw,
    /// Another system (D-Bus, MQTT).
    Peer,
}

/// One mechanism at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub kind: Kind,
    pub name: String,
    pub label: String,
    pub size: usize,
    pub throughput: Outcome<Throughput>,
    pub latency: Outcome<Latency>,
}

impl Row {
    pub fn new(
        kind: Kind,
        name: &str,
        label: &str,
        size: usize,
        throughput: Outcome<Throughput>,
        latency: Outcome<Latency>,
    ) -> Row {
        Row {
            kind,
            name: name.into(),
            label: label.into(),
            size,
            throughput,
            latency,
        }
    }

    fn msgs(&self) -> Option<f64> {
        self.throughput.ok().map(|t| t.msgs_per_sec.median)
    }

    fn p50(&self) -> Option<f64> {
        self.latency.ok().map(|l| l.one_way_ns.p50)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub os: String,
    pub ipchub_version: String,
    /// What the measured hub says it is.
    pub hub_version: Option<String>,
    /// UTC, when the run started.
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub sizes: Vec<usize>,
    pub transports: Vec<String>,
    /// Messages per round, when fixed; else `round_ms` applies.
    pub messages: Option<u64>,
    pub round_ms: Option<u64>,
    pub warmup: String,
    pub repetitions: u32,
    pub subscribers: u32,
    pub pinned: bool,
    /// Hub clients busy-polled their channel rings this long (µs) before sleeping.
    pub busy_poll_us: Option<u64>,
    pub hub: String,
    pub dbus: String,
    pub mqtt: String,
}

/// One hub figure against one reference, at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub size: usize,
    pub transport: String,
    pub reference: String,
    pub reference_kind: Kind,
    /// Hub msgs/s ÷ reference msgs/s (medians): higher is better.
    pub throughput: Option<f64>,
    /// The design's lowest acceptable throughput ratio, where it sets one.
    pub throughput_bar: Option<f64>,
    /// Hub one-way p50 ÷ reference one-way p50: lower is better.
    pub latency_p50: Option<f64>,
    /// The design's highest acceptable latency ratio, where it sets one.
    pub latency_bar: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub topic: String,
    /// The transport recommended, when one could be measured.
    pub transport: Option<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub machine: Machine,
    pub settings: Settings,
    /// Set when the hub could not be started or reached.
    pub hub_error: Option<String>,
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub recommendations: Vec<Recommendation>,
}

impl Report {
    pub fn new(args: &Args, plan: &Plan) -> Report {
        let (messages, round_ms) = match plan.limit {
            Limit::Messages(n) => (Some(n), None),
            Limit::Time(d) => (None, Some(d.as_millis() as u64)),
        };
        let warmup = match plan.warmup {
            Limit::Messages(n) => format!("{n} messages"),
            Limit::Time(d) => format!("{} ms", d.as_millis()),
        };
        Report {
            schema: SCHEMA,
            machine: Machine::describe(),
            settings: Settings {
                sizes: args.sizes.0.clone(),
                transports: args.transports.0.iter().map(|t| t.name().into()).collect(),
                messages,
                round_ms,
                warmup,
                repetitions: plan.repetitions,
                subscribers: plan.subscribers,
                pinned: plan.pin,
                busy_poll_us: plan.busy_poll.map(|d| d.as_micros() as u64),
                hub: String::new(),
                dbus: String::new(),
                mqtt: String::new(),
            },
            hub_error: None,
            rows: Vec::new(),
            ratios: Vec::new(),
            recommendations: Vec::new(),
        }
    }

    /// Derive ratios and recommendations from the rows.
    pub fn finish(&mut self) {
        self.ratios = ratios(&self.rows);
        self.recommendations = recommend(&self.rows);
    }

    fn row(&self, kind: Kind, name: &str, size: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.kind == kind && r.name == name && r.size == size)
    }
}

impl Machine {
    fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".into(), |(_, v)| v.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| format!("Linux {}", s.trim()));
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores: super::session::online_cpus(),
            kernel,
            os,
            ipchub_version: env!("CARGO_PKG_VERSION").into(),
            hub_version: None,
            date: utc_now(),
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// What each hub transport is held against: (kind, name, throughput bar,
/// latency bar). Bars from docs/ARCHITECTURE.md; the peers' apply at 1 KiB.
fn references(transport: &str) -> Vec<(Kind, &'static str, Option<f64>, Option<f64>)> {
    let mut v = match transport {
        "socket" => vec![
            (Kind::Raw, "unix-batched", Some(0.3), None),
            (Kind::Raw, "unix", None, Some(2.0)),
        ],
        "pipe" => vec![
            (Kind::Raw, "pipe-batched", Some(0.5), None),
            (Kind::Raw, "pipe", None, Some(2.0)),
        ],
        "fifo" => vec![
            (Kind::Raw, "pipe-batched", Some(0.5), None),
            (Kind::Raw, "fifo", None, Some(2.0)),
        ],
        "mqueue" => vec![(Kind::Raw, "mqueue", Some(0.4), Some(2.0))],
        "shm" => vec![(Kind::Raw, "shm", Some(0.35), Some(2.0))],
        _ => Vec::new(),
    };
    v.push((Kind::Peer, "mqtt", Some(5.0), None));
    v.push((Kind::Peer, "dbus", Some(50.0), None));
    // Issue #15's comparisons; its targets are per path and size, so no
    // bar here (BENCHMARKS.md holds them against these ratios).
    for peer in ["zeromq", "iceoryx2", "nats"] {
        v.push((Kind::Peer, peer, None, None));
    }
    v
}

fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for hub in rows.iter().filter(|r| r.kind == Kind::Hub) {
        for (kind, name, tbar, lbar) in references(&hub.name) {
            let Some(other) = rows
                .iter()
                .find(|r| r.kind == kind && r.name == name && r.size == hub.size)
            else {
                continue;
            };
            let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let peer_bar = |b: Option<f64>| if hub.size == 1024 { b } else { None };
            out.push(Ratio {
                size: hub.size,
                transport: hub.name.clone(),
                reference: name.into(),
                reference_kind: kind,
                throughput: div(hub.msgs(), other.msgs()),
                throughput_bar: if kind == Kind::Peer {
                    peer_bar(tbar)
                } else {
                    tbar
                },
                latency_p50: div(hub.p50(), other.p50()),
                latency_bar: lbar,
            });
        }
    }
    out
}

/// Transports from least to most to set up: socket is one connection; pipe
/// adds two descriptors passed over it; FIFO adds two files; mqueue adds two
/// named queues bound by kernel limits; shm adds a shared mapping and
/// wake-up descriptors.
const SIMPLICITY: [&str; 5] = ["socket", "pipe", "fifo", "mqueue", "shm"];
/// Transports whose OS object keeps one message per record.
const BOUNDARIES: [&str; 2] = ["mqueue", "shm"];

/// The size recommendations speak about: 1 KiB when measured, else the first.
fn reference_size(rows: &[Row]) -> Option<usize> {
    let sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    if sizes.contains(&1024) {
        Some(1024)
    } else {
        sizes.first().copied()
    }
}

fn recommend(rows: &[Row]) -> Vec<Recommendation> {
    let Some(size) = reference_size(rows) else {
        return Vec::new();
    };
    let at = format!("at {}", size_label(size));
    let hub: Vec<&Row> = rows
        .iter()
        .filter(|r| r.kind == Kind::Hub && r.size == size)
        .collect();
    let lossless = |r: &Row| r.throughput.ok().is_some_and(|t| t.lossless());
    let best_tput = hub
        .iter()
        .filter(|r| lossless(r))
        .max_by(|a, b| a.msgs().unwrap_or(0.0).total_cmp(&b.msgs().unwrap_or(0.0)))
        .copied();
    let best_lat = hub
        .iter()
        .filter(|r| r.p50().is_some())
        .min_by(|a, b| {
            a.p50()
                .unwrap_or(f64::MAX)
                .total_cmp(&b.p50().unwrap_or(f64::MAX))
        })
        .copied();
    let mut out = Vec::new();

    out.push(match best_tput {
        Some(b) => {
            let t = b.throughput.ok().expect("filtered");
            let runner_up = hub
                .iter()
                .filter(|r| lossless(r))
                .filter(|r| r.name != b.name)
                .max_by(|x, y| x.msgs().unwrap_or(0.0).total_cmp(&y.msgs().unwrap_or(0.0)));
            let margin = runner_up.map_or(String::new(), |r| {
                format!(
                    ", {:.1}x the next best ({})",
                    b.msgs().unwrap_or(0.0) / r.msgs().unwrap_or(1.0).max(1e-9),
                    r.name
                )
            });
            Recommendation {
                topic: "high throughput".into(),
                transport: Some(b.name.clone()),
                why: format!(
                    "{}: {} msgs/s, {} MB/s {at}{margin}{}",
                    b.name,
                    fmt_count(t.msgs_per_sec.median),
                    fmt_mb(t.mb_per_sec.median),
                    best_elsewhere(rows, size, &b.name)
                ),
            }
        }
        None => none_measured("high throughput"),
    });

    out.push(match best_lat {
        Some(b) => Recommendation {
            topic: "low latency".into(),
            transport: Some(b.name.clone()),
            why: format!(
                "{}: {} one way at p50, {} at p99 {at}",
                b.name,
                fmt_ns(b.p50().unwrap_or(0.0)),
                fmt_ns(b.latency.ok().map_or(0.0, |l| l.one_way_ns.p99))
            ),
        },
        None => none_measured("low latency"),
    });

    // The simplest transport that gives up at most half the best throughput
    // and at most doubles the best latency.
    out.push(match (best_tput, best_lat) {
        (Some(bt), Some(bl)) => {
            let (top, low) = (bt.msgs().unwrap_or(0.0), bl.p50().unwrap_or(0.0));
            let fits = |r: &Row| {
                lossless(r)
                    && r.msgs().unwrap_or(0.0) >= 0.5 * top
                    && r.p50().is_some_and(|p| p <= 2.0 * low)
            };
            let pick = SIMPLICITY
                .iter()
                .filter_map(|n| hub.iter().find(|r| r.name == *n))
                .find(|r| fits(r))
                .copied()
                .unwrap_or(bt);
            let simplest_measured = SIMPLICITY
                .iter()
                .filter_map(|n| hub.iter().find(|r| r.name == *n && lossless(r)))
                .next();
            let share = |r: &Row| {
                format!(
                    "{:.0}% of the best throughput ({}), {:.1}x the best latency ({})",
                    100.0 * r.msgs().unwrap_or(0.0) / top.max(1e-9),
                    bt.name,
                    r.p50().unwrap_or(0.0) / low.max(1e-9),
                    bl.name
                )
            };
            let why = match simplest_measured {
                Some(s) if s.name != pick.name => format!(
                    "{}: the simplest transport within 2x of the best {at}: {}; {} is simpler but outside 2x: {}",
                    pick.name,
                    share(pick),
                    s.name,
                    share(s)
                ),
                _ => format!(
                    "{}: the simplest transport measured, and within 2x of the best {at}: {}",
                    pick.name,
                    share(pick)
                ),
            };
            Recommendation {
                topic: "simplicity".into(),
                transport: Some(pick.name.clone()),
                why,
            }
        }
        _ => none_measured("simplicity"),
    });

    // Where the OS object itself keeps one message per record (readers
    // outside the client library, mqueue priorities).
    let candidates: Vec<&&Row> = hub
        .iter()
        .filter(|r| BOUNDARIES.contains(&r.name.as_str()) && lossless(r))
        .collect();
    out.push(
        match candidates
            .iter()
            .max_by(|a, b| a.msgs().unwrap_or(0.0).total_cmp(&b.msgs().unwrap_or(0.0)))
        {
            Some(b) => {
                let limits: Vec<String> = rows
                    .iter()
                    .filter(|r| r.kind == Kind::Hub && r.name == b.name && r.throughput.ok().is_none())
                    .map(|r| format!("not at {}", size_label(r.size)))
                    .collect();
                let limits = if limits.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", limits.join(", "))
                };
                Recommendation {
                    topic: "message boundaries".into(),
                    transport: Some(b.name.clone()),
                    why: format!(
                        "{}: one record per message in the OS object itself, {} msgs/s {at}{limits}",
                        b.name,
                        fmt_count(b.msgs().unwrap_or(0.0))
                    ),
                }
            }
            None => Recommendation {
                topic: "message boundaries".into(),
                transport: None,
                why: "neither mqueue nor shm could be measured; every transport still delivers whole messages through the client library".into(),
            },
        },
    );
    out
}

/// ", best at 64 B: shm" for the other sizes where another transport wins.
fn best_elsewhere(rows: &[Row], size: usize, winner: &str) -> String {
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    sizes.dedup();
    let mut parts = Vec::new();
    for s in sizes.into_iter().filter(|s| *s != size) {
        let best = rows
            .iter()
            .filter(|r| r.kind == Kind::Hub && r.size == s)
            .filter(|r| r.throughput.ok().is_some_and(|t| t.lossless()))
            .max_by(|a, b| a.msgs().unwrap_or(0.0).total_cmp(&b.msgs().unwrap_or(0.0)));
        if let Some(b) = best {
            if b.name != winner {
                parts.push(format!("{} at {}", b.name, size_label(s)));
            }
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("; best elsewhere: {}", parts.join(", "))
    }
}

fn none_measured(topic: &str) -> Recommendation {
    Recommendation {
        topic: topic.into(),
        transport: None,
        why: "no hub transport could be measured".into(),
    }
}

/// 1234567 → "1.23 M", 45678 → "45.7 k".
pub fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub fn fmt_mb(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub fn fmt_ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} µs", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10.0 => format!("{v:.0}x"),
        Some(v) => format!("{v:.2}x"),
        None => "-".into(),
    }
}

fn verdict(v: Option<f64>, bar: Option<f64>, higher_is_better: bool) -> String {
    match (v, bar) {
        (Some(v), Some(b)) => {
            let ok = if higher_is_better { v >= b } else { v <= b };
            let rel = if higher_is_better { ">=" } else { "<=" };
            format!(" (bar {rel} {b}: {})", if ok { "meets" } else { "MISSES" })
        }
        _ => String::new(),
    }
}

/// The tables, ratios and recommendations for a terminal.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let s = &r.settings;
    let _ = writeln!(o, "ipchub-bench {}  {}", m.ipchub_version, m.date);
    let _ = writeln!(
        o,
        "machine: {}, {} cores, {}, {}",
        m.cpu, m.cores, m.kernel, m.os
    );
    let _ = writeln!(
        o,
        "hub: {}{}",
        s.hub,
        m.hub_version
            .as_ref()
            .map_or(String::new(), |v| format!(" (ipchubd {v})"))
    );
    let round = match (s.messages, s.round_ms) {
        (Some(n), _) => format!("{n} messages"),
        (_, Some(ms)) => format!("{ms} ms"),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "rounds: warm-up {}, then {} x {round}; figures are medians (min-max over rounds){}{}{}",
        s.warmup,
        s.repetitions,
        if s.subscribers > 1 {
            format!("; {} subscribers", s.subscribers)
        } else {
            String::new()
        },
        if s.pinned { "; pinned" } else { "" },
        match s.busy_poll_us {
            Some(us) => format!("; hub clients busy-poll {us} µs"),
            None => String::new(),
        }
    );
    let fanout = s.subscribers > 1;
    let mut sizes: Vec<usize> = r.rows.iter().map(|x| x.size).collect();
    sizes.dedup();
    let mut notes = Vec::new();
    for size in sizes {
        let _ = writeln!(o, "\n== {} messages ==", size_label(size));
        let _ = writeln!(
            o,
            "{:<26} {:>9} {:>21} {:>8}{} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9}",
            "",
            "msgs/s",
            "(min-max)",
            "MB/s",
            if fanout {
                format!(" {:>9}", "aggregate")
            } else {
                String::new()
            },
            "avg",
            "p50",
            "p99",
            "p99.9",
            "max",
            "rtt p50"
        );
        for (kind, title) in [
            (Kind::Hub, "through ipchubd"),
            (Kind::Raw, "raw, point to point"),
            (Kind::Peer, "peers"),
        ] {
            let rows: Vec<&Row> = r
                .rows
                .iter()
                .filter(|x| x.kind == kind && x.size == size)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(o, "{title}  (latency: one way = round trip / 2)");
            for row in rows {
                let _ = write!(o, "  {:<24}", row.label);
                match &row.throughput {
                    Outcome::Ok(t) => {
                        let _ = write!(
                            o,
                            " {:>9} {:>21} {:>8}",
                            fmt_count(t.msgs_per_sec.median),
                            format!(
                                "({}-{})",
                                fmt_count(t.msgs_per_sec.min),
                                fmt_count(t.msgs_per_sec.max)
                            ),
                            fmt_mb(t.mb_per_sec.median)
                        );
                        if fanout {
                            let _ = write!(o, " {:>9}", fmt_count(t.aggregate_msgs_per_sec.median));
                        }
                        if !t.lossless() {
                            notes.push(format!(
                                "{} at {}: LOSSY - {} of {} messages lost, {} out of order, {} of wrong size",
                                row.label,
                                size_label(size),
                                t.lost,
                                t.sent * u64::from(t.subscribers),
                                t.out_of_order,
                                t.bad_size
                            ));
                        }
                    }
                    other => {
                        let _ = write!(
                            o,
                            " {:>9} {:>21} {:>8}{}",
                            "-",
                            "",
                            "-",
                            if fanout {
                                format!(" {:>9}", "-")
                            } else {
                                String::new()
                            }
                        );
                        if let Some(why) = other.reason() {
                            notes.push(format!(
                                "{} at {}, throughput: {why}",
                                row.label,
                                size_label(size)
                            ));
                        }
                    }
                }
                match &row.latency {
                    Outcome::Ok(l) => {
                        let w = &l.one_way_ns;
                        let _ = write!(
                            o,
                            " | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9}",
                            fmt_ns(w.avg),
                            fmt_ns(w.p50),
                            fmt_ns(w.p99),
                            fmt_ns(w.p999),
                            fmt_ns(w.max),
                            fmt_ns(l.round_trip_ns.p50)
                        );
                        if l.lost > 0 {
                            notes.push(format!(
                                "{} at {}: {} pings lost (no echo within 1 s)",
                                row.label,
                                size_label(size),
                                l.lost
                            ));
                        }
                    }
                    other => {
                        let _ = write!(
                            o,
                            " | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9}",
                            "-", "-", "-", "-", "-", "-"
                        );
                        if let (Some(why), false) =
                            (other.reason(), matches!(other, Outcome::NotMeasured { .. }))
                        {
                            notes.push(format!(
                                "{} at {}, latency: {why}",
                                row.label,
                                size_label(size)
                            ));
                        }
                    }
                }
                let _ = writeln!(o);
            }
        }
        let ratios: Vec<&Ratio> = r.ratios.iter().filter(|x| x.size == size).collect();
        if !ratios.is_empty() {
            let _ = writeln!(
                o,
                "\nratios at {} (hub / reference; throughput: higher is better, latency p50: lower is better)",
                size_label(size)
            );
            for x in ratios {
                let label = r
                    .row(x.reference_kind, &x.reference, x.size)
                    .map_or(x.reference.clone(), |row| row.label.clone());
                let _ = writeln!(
                    o,
                    "  {:<7} vs {:<24} throughput {:>6}{:<22} latency {:>6}{}",
                    x.transport,
                    label,
                    fmt_ratio(x.throughput),
                    verdict(x.throughput, x.throughput_bar, true),
                    fmt_ratio(x.latency_p50),
                    verdict(x.latency_p50, x.latency_bar, false)
                );
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "\nnotes:");
        for n in notes {
            let _ = writeln!(o, "  - {n}");
        }
    }
    if !r.recommendations.is_empty() {
        let _ = writeln!(o, "\nrecommendation (from the figures above):");
        for rec in &r.recommendations {
            let _ = writeln!(o, "  {:<19} {}", format!("{}:", rec.topic), rec.why);
        }
    }
    o
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One line per mechanism and size; empty fields where there is no figure.
pub fn csv(r: &Report) -> String {
    let mut o = String::from(
        "kind,name,size,subscribers,throughput_status,msgs_per_sec,msgs_per_sec_min,msgs_per_sec_max,mb_per_sec,aggregate_msgs_per_sec,sent,received,lost,out_of_order,latency_status,one_way_avg_ns,one_way_p50_ns,one_way_p99_ns,one_way_p999_ns,one_way_max_ns,rtt_p50_ns,rtt_p99_ns,latency_samples,reason\n",
    );
    for row in &r.rows {
        let kind = match row.kind {
            Kind::Hub => "hub",
            Kind::Raw => "raw",
            Kind::Peer => "peer",
        };
        let ts = row.throughput.status();
        let ls = row.latency.status();
        let t = match row.throughput.ok() {
            Some(t) => format!(
                "{:.0},{:.0},{:.0},{:.2},{:.0},{},{},{},{}",
                t.msgs_per_sec.median,
                t.msgs_per_sec.min,
                t.msgs_per_sec.max,
                t.mb_per_sec.median,
                t.aggregate_msgs_per_sec.median,
                t.sent,
                t.received,
                t.lost,
                t.out_of_order
            ),
            None => ",,,,,,,,".into(),
        };
        let l = match row.latency.ok() {
            Some(l) => format!(
                "{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{}",
                l.one_way_ns.avg,
                l.one_way_ns.p50,
                l.one_way_ns.p99,
                l.one_way_ns.p999,
                l.one_way_ns.max,
                l.round_trip_ns.p50,
                l.round_trip_ns.p99,
                l.samples
            ),
            None => ",,,,,,,".into(),
        };
        let reasons: Vec<String> = [row.throughput.reason(), row.latency.reason()]
            .into_iter()
            .flatten()
            .collect();
        let subs = row.throughput.ok().map_or(1, |t| t.subscribers);
        let _ = writeln!(
            o,
            "{kind},{},{},{subs},{ts},{t},{ls},{l},{}",
            row.name,
            row.size,
            csv_field(&reasons.join("; "))
        );
    }
    o
}
