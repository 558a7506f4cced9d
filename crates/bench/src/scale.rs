//! `--scale`: does a message cost the same when the hub holds a lot? The
//! per-message cost and latency of one relayed stream as idle clients,
//! channels and non-matching patterns grow by powers of ten.
//!
//! One hub, started by the bench with raised limits (all load comes from
//! one uid, so the built-in per-uid quotas of docs/SECURITY.md — 256
//! clients, 4096 channels, 16384 subscriptions, half of what is free —
//! would refuse it; the configuration is printed with the figures). For
//! each dimension the load is built up step by step in this process (held
//! by socket clients that never read), and at each step the same two
//! sessions run as in the main comparison: socket publisher → hub → socket
//! subscriber (throughput; cost = 1 / msgs/s) and a ping-pong (one-way p50,
//! p99). The load is dropped before the next dimension.
//! - clients: N idle connected clients;
//! - channels: N channels held by exact subscriptions `scale/c<i>` (at most
//!   1000 per client, within the per-client default);
//! - patterns: N wildcard patterns `bench/+/p<i>/x`, which share the first
//!   level and a wildcard with the measured channel `bench/<pid>/<tag>/data`
//!   but never match it (1000 per client).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::cli::Args;
use super::hub_runs::{self, HubProcess};
use super::measure::{Limit, RunError};
use super::session::{self, Plan};
use super::svg::{escape, tick, LogAxis, PALETTE};
use super::{BenchError, TempDir};
use crate::client::{Client, Options};
use crate::wire::TransportKind;

/// Payload of the measured stream.
const SIZE: usize = 64;
/// Subscriptions per holding client (the per-client default is 1024).
const PER_CLIENT: u64 = 1000;

/// What the bench's own hub is given so one uid may build the whole load:
/// every per-uid quota at least twice the largest step (a uid may take at
/// most half of what the others leave free).
pub const HUB_CONFIG: &str = "[hub]\n\
max_clients = 40000\n\
max_clients_per_uid = 20000\n\
max_channels = 250000\n\
max_channels_per_uid = 120000\n\
max_subscriptions_per_uid = 250000\n\
max_pattern_levels_per_uid = 1000000\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Clients,
    Channels,
    Patterns,
}

impl Dimension {
    const ALL: [Dimension; 3] = [Dimension::Clients, Dimension::Channels, Dimension::Patterns];

    fn label(self) -> &'static str {
        match self {
            Dimension::Clients => "idle clients connected",
            Dimension::Channels => "channels held",
            Dimension::Patterns => "non-matching patterns held",
        }
    }

    fn steps(self, quick: bool) -> Vec<u64> {
        let (first, last) = match (self, quick) {
            (Dimension::Clients, false) => (1, 10_000),
            (Dimension::Clients, true) => (1, 10),
            (Dimension::Channels, false) => (1, 100_000),
            (Dimension::Channels, true) => (1, 100),
            (Dimension::Patterns, false) => (0, 100_000),
            (Dimension::Patterns, true) => (0, 100),
        };
        let mut v = Vec::new();
        if first == 0 {
            v.push(0);
        }
        let mut n = 1;
        while n <= last {
            v.push(n);
            n *= 10;
        }
        v
    }
}

/// One step of one dimension.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub dimension: Dimension,
    pub held: u64,
    /// Seconds it took to build this step's load (from the previous step).
    pub setup_secs: f64,
    pub msgs_per_sec: Option<f64>,
    /// 10^9 / msgs_per_sec: the pipeline's time per message.
    pub ns_per_msg: Option<f64>,
    pub one_way_p50_ns: Option<f64>,
    pub one_way_p99_ns: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub schema: &'static str,
    pub quick: bool,
    pub transport: &'static str,
    pub size: usize,
    pub hub_config: &'static str,
    pub hub_error: Option<String>,
    pub points: Vec<Point>,
}

/// The clients holding one dimension's load.
struct Load {
    socket: std::path::PathBuf,
    clients: Vec<Client>,
    /// Subscriptions made so far (channels or patterns).
    held: u64,
}

impl Load {
    fn connect(&mut self) -> Result<&mut Client, RunError> {
        let c = Client::connect(&Options {
            socket: Some(self.socket.clone()),
            transport: TransportKind::Socket,
            name: "scale-load".into(),
            reconnect: crate::client::Reconnect::off(),
        })
        .map_err(|e| RunError::failed(format!("load client {}: {e}", self.clients.len())))?;
        self.clients.push(c);
        Ok(self.clients.last_mut().expect("just pushed"))
    }

    /// Grow to `n` of `d`.
    fn grow(&mut self, d: Dimension, n: u64) -> Result<(), RunError> {
        match d {
            Dimension::Clients => {
                while (self.clients.len() as u64) < n {
                    self.connect()?;
                }
            }
            Dimension::Channels | Dimension::Patterns => {
                while self.held < n {
                    if self.held.is_multiple_of(PER_CLIENT) {
                        self.connect()?;
                    }
                    let i = self.held;
                    let name = match d {
                        Dimension::Channels => format!("scale/c{i}"),
                        _ => format!("bench/+/p{i}/x"),
                    };
                    let c = self.clients.last_mut().expect("connected above");
                    c.subscribe(&name)
                        .map_err(|e| RunError::failed(format!("subscribing {name}: {e}")))?;
                    self.held += 1;
                }
            }
        }
        Ok(())
    }
}

/// Take every descriptor the hard limit allows (raised to 65536 when root
/// may): 10,000 clients need one each here and in the hub, which inherits it.
pub(crate) fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.max(65536);
        if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn measure(exe: &Path, socket: &Path, plan: &Plan, tag: &mut u64) -> Point {
    let mut p = Point {
        dimension: Dimension::Clients,
        held: 0,
        setup_secs: 0.0,
        msgs_per_sec: None,
        ns_per_msg: None,
        one_way_p50_ns: None,
        one_way_p99_ns: None,
        error: None,
    };
    *tag += 1;
    let t = TransportKind::Socket;
    match hub_runs::throughput_session(exe, socket, t, SIZE, plan, *tag)
        .and_then(|s| session::throughput(s, SIZE, plan))
    {
        Ok(f) => {
            p.msgs_per_sec = Some(f.msgs_per_sec.median);
            p.ns_per_msg = Some(1e9 / f.msgs_per_sec.median.max(1e-9));
        }
        Err(e) => p.error = Some(format!("throughput: {e}")),
    }
    *tag += 1;
    match hub_runs::latency_session(exe, socket, t, SIZE, plan, *tag)
        .and_then(|s| session::latency(s, SIZE, plan))
    {
        Ok(l) => {
            p.one_way_p50_ns = Some(l.one_way_ns.p50);
            p.one_way_p99_ns = Some(l.one_way_ns.p99);
        }
        Err(e) => {
            let prev = p.error.take().map(|s| s + "; ").unwrap_or_default();
            p.error = Some(format!("{prev}latency: {e}"));
        }
    }
    p
}

pub fn run(args: &Args, plan: &Plan) -> Result<ScaleReport, BenchError> {
    let tmp = TempDir::new()?;
    let exe = std::env::current_exe().map_err(BenchError::OwnPath)?;
    raise_nofile();
    let mut plan = plan.clone();
    plan.subscribers = 1;
    if args.quick && args.messages.is_none() {
        plan.limit = Limit::Messages(2_000);
        plan.warmup = Limit::Messages(500);
        plan.repetitions = 1;
    }
    let mut report = ScaleReport {
        schema: "ipchub-bench-scale/1",
        quick: args.quick,
        transport: "socket",
        size: SIZE,
        hub_config: HUB_CONFIG,
        hub_error: None,
        points: Vec::new(),
    };
    let bin = match &args.hub_binary {
        Some(b) => Ok(b.clone()),
        None => hub_runs::default_hub_binary().map_err(RunError::from),
    };
    let mut hub = match bin.and_then(|b| HubProcess::start_with(&b, &tmp.0, HUB_CONFIG)) {
        Ok(h) => h,
        Err(e) => {
            report.hub_error = Some(e.to_string());
            return Ok(report);
        }
    };
    let socket = hub.socket.clone();
    let mut tag = 0;
    for d in Dimension::ALL {
        let mut load = Load {
            socket: socket.clone(),
            clients: Vec::new(),
            held: 0,
        };
        for n in d.steps(args.quick) {
            let t0 = Instant::now();
            let built = load.grow(d, n);
            let setup_secs = t0.elapsed().as_secs_f64();
            let mut p = match built.and_then(|()| hub.check()) {
                Ok(()) => measure(&exe, &socket, &plan, &mut tag),
                Err(e) => Point {
                    dimension: d,
                    held: n,
                    setup_secs,
                    msgs_per_sec: None,
                    ns_per_msg: None,
                    one_way_p50_ns: None,
                    one_way_p99_ns: None,
                    error: Some(format!("building the load: {e}")),
                },
            };
            p.dimension = d;
            p.held = n;
            p.setup_secs = setup_secs;
            let failed = p.error.is_some() && p.msgs_per_sec.is_none();
            report.points.push(p);
            if failed {
                // A larger step of a load that already failed says nothing new.
                break;
            }
        }
    }
    Ok(report)
}

pub fn text(r: &ScaleReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== cost as the hub's state grows: {} publisher -> hub -> {} subscriber, {} B ==",
        r.transport, r.transport, r.size
    );
    let _ = writeln!(
        s,
        "hub started by the bench with raised per-uid limits (one uid holds the whole load):"
    );
    for l in r.hub_config.lines().filter(|l| !l.starts_with('[')) {
        let _ = writeln!(s, "  hub.{l}");
    }
    if let Some(e) = &r.hub_error {
        let _ = writeln!(s, "hub could not start: {e}");
    }
    let mut last = None;
    for p in &r.points {
        if last != Some(p.dimension) {
            let _ = writeln!(s, "\n{}", p.dimension.label());
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>8} {:>12} {:>12} {:>8}",
                "held", "msgs/s", "ns/msg", "one-way p50", "p99", "setup"
            );
            last = Some(p.dimension);
        }
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
        let _ = writeln!(
            s,
            "{:>10} {:>10} {:>8} {:>12} {:>12} {:>7.1}s{}",
            p.held,
            opt(p.msgs_per_sec, &|v| format!("{:.0}", v)),
            opt(p.ns_per_msg, &|v| format!("{v:.0}")),
            opt(p.one_way_p50_ns, &|v| format!("{:.1} µs", v / 1e3)),
            opt(p.one_way_p99_ns, &|v| format!("{:.1} µs", v / 1e3)),
            p.setup_secs,
            p.error
                .as_ref()
                .map(|e| format!("  failed: {e}"))
                .unwrap_or_default(),
        );
    }
    s
}

/// A figure of a point, when it has one.
type Figure = dyn Fn(&Point) -> Option<f64>;

/// Two log-log panels: ns per message and one-way p50 against what is held
/// (0 patterns is drawn at 1), one line per dimension.
pub fn svg(r: &ScaleReport) -> String {
    const W: f64 = 1000.0;
    const PW: f64 = 400.0;
    const PH: f64 = 300.0;
    const TOP: f64 = 60.0;
    const LEFTS: [f64; 2] = [80.0, 580.0];
    let x_of = |p: &Point| (p.held.max(1)) as f64;
    let xs: Vec<f64> = r.points.iter().map(x_of).collect();
    let panels: [(&str, &Figure); 2] = [
        ("ns per message (1 / msgs/s)", &|p| p.ns_per_msg),
        ("one-way p50 (µs)", &|p| p.one_way_p50_ns.map(|v| v / 1e3)),
    ];
    let mut s = String::new();
    let h = TOP + PH + 110.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(&format!(
            "ipchub-bench --scale: {} → hub → {}, {} B, as the hub holds more",
            r.transport, r.transport, r.size
        ))
    );
    for (i, (title, get)) in panels.iter().enumerate() {
        let left = LEFTS[i];
        let ys: Vec<f64> = r.points.iter().filter_map(get).collect();
        let xa = LogAxis::decades(&xs, left, left + PW);
        let ya = LogAxis::decades(&ys, TOP + PH, TOP);
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{TOP}" width="{PW}" height="{PH}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + PW / 2.0,
            TOP - 8.0,
            escape(title)
        );
        let mut v = xa.lo;
        while v <= xa.hi * 1.0001 {
            let x = xa.at(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                TOP + PH,
                TOP + PH + 16.0,
                tick(v)
            );
            v *= 10.0;
        }
        let mut v = ya.lo;
        while v <= ya.hi * 1.0001 {
            let y = ya.at(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + PW,
                left - 6.0,
                y + 4.0,
                tick(v)
            );
            v *= 10.0;
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">held (clients, channels, patterns)</text>"#,
            left + PW / 2.0,
            TOP + PH + 34.0
        );
        for (k, d) in Dimension::ALL.iter().enumerate() {
            let pts: Vec<String> = r
                .points
                .iter()
                .filter(|p| p.dimension == *d)
                .filter_map(|p| get(p).map(|y| format!("{:.1},{:.1}", xa.at(x_of(p)), ya.at(y))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                PALETTE[k],
                pts.join(" ")
            );
        }
    }
    for (k, d) in Dimension::ALL.iter().enumerate() {
        let x = 80.0 + k as f64 * 300.0;
        let y = TOP + PH + 70.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            x + 30.0,
            PALETTE[k],
            x + 36.0,
            y + 4.0,
            escape(d.label())
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
