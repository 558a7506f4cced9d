//! `--restart`: how long a planned restart (SIGUSR2, the hand-over of
//! issue #16) holds routing up, as the number of connected clients grows.
//!
//! For each step (1, 10, 100, 1,000 connected clients; `--quick`: 1 and 10)
//! the bench starts its own hub with its per-uid limits raised (all clients
//! come from this one uid), connects the step's idle socket clients, each
//! subscribed to a channel of its own (so the hub has a subscription per
//! client to carry over), and runs a ping-pong through the hub: a socket
//! publisher publishes with confirmation on `restart/stream`, a socket
//! subscriber receives, one message in flight. After a warm-up it sends
//! the hub SIGUSR2 and keeps the ping-pong going until the successor has
//! logged "planned restart: clients kept" and 200 more round trips passed.
//!
//! Reported per step: the longest round trip across the restart (the pause
//! a client sees: the old hub's export, the re-execution, the successor's
//! import and its first turn), the median round trip before the signal for
//! comparison, how many clients the successor said it kept, and how many
//! of the idle clients still answer afterwards on the same connection
//! (every client is made with reconnection off, so one the hand-over lost
//! would fail instead of quietly reconnecting).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cli::Args;
use super::hub_runs::{self, HubProcess};
use super::measure::RunError;
use super::TempDir;
use crate::client::Client;

/// Round trips before the signal (the baseline median comes from them).
const WARMUP: usize = 500;
/// Round trips after the successor took over.
const AFTER: usize = 200;
/// Longest the ping-pong may wait for the successor.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(60);

/// One step: this many idle clients connected during the restart.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub clients: u64,
    /// The median round trip before the signal.
    pub round_trip_p50_ns: Option<f64>,
    /// The longest round trip from the signal until the successor served.
    pub longest_pause_ns: Option<f64>,
    /// What the successor logged: clients kept (the idle ones plus the
    /// publisher and the subscriber).
    pub clients_kept: Option<u64>,
    /// Idle clients that answered a confirmed publish afterwards.
    pub idle_answering: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    pub schema: &'static str,
    pub quick: bool,
    pub hub_config: &'static str,
    pub points: Vec<Point>,
}

/// One publish and its delivery, timed.
fn round_trip(p: &mut Client, s: &mut Client) -> Result<Duration, RunError> {
    let t = Instant::now();
    let n = p
        .publish_confirmed("restart/stream", b"ping")
        .map_err(|e| RunError::failed(format!("publish: {e}")))?;
    if n != 1 {
        return Err(RunError::failed(format!("delivered to {n}, not 1")));
    }
    match s.recv(Some(Duration::from_secs(30))) {
        Ok(Some(_)) => Ok(t.elapsed()),
        Ok(None) => Err(RunError::failed("no message within 30 s")),
        Err(e) => Err(RunError::failed(format!("receive: {e}"))),
    }
}

/// The successor's "clients kept" line, if it is in the log yet.
fn clients_kept(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("planned restart: clients kept"))?;
    let n = line.split("clients=").nth(1)?;
    n.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

fn step(bin: &Path, n: u64) -> Point {
    let mut p = Point {
        clients: n,
        round_trip_p50_ns: None,
        longest_pause_ns: None,
        clients_kept: None,
        idle_answering: None,
        error: None,
    };
    if let Err(e) = measure_step(bin, &mut p) {
        p.error = Some(e.to_string());
    }
    p
}

fn measure_step(bin: &Path, p: &mut Point) -> Result<(), RunError> {
    let tmp = TempDir::new().map_err(|e| RunError::failed(e.to_string()))?;
    let mut hub = HubProcess::start_logging(bin, &tmp.0, super::scale::HUB_CONFIG, "info")?;
    let socket = hub.socket.clone();
    let mut idle = Vec::with_capacity(p.clients as usize);
    for i in 0..p.clients {
        let mut c = hub_runs::socket_client(&socket, "restart-idle")?;
        c.subscribe(&format!("restart/idle/{i}"))
            .map_err(|e| RunError::failed(format!("idle client {i}: {e}")))?;
        idle.push(c);
    }
    let mut publisher = hub_runs::socket_client(&socket, "restart-pub")?;
    let mut subscriber = hub_runs::socket_client(&socket, "restart-sub")?;
    subscriber
        .subscribe("restart/stream")
        .map_err(|e| RunError::failed(format!("subscribe: {e}")))?;

    let mut before = Vec::with_capacity(WARMUP);
    for _ in 0..WARMUP {
        before.push(round_trip(&mut publisher, &mut subscriber)?);
    }
    before.sort();
    p.round_trip_p50_ns = Some(before[before.len() / 2].as_nanos() as f64);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .map_err(|e| RunError::failed(format!("SIGUSR2: {e}")))?;
    let signalled = Instant::now();
    let mut longest = Duration::ZERO;
    let mut after = 0;
    loop {
        longest = longest.max(round_trip(&mut publisher, &mut subscriber)?);
        if p.clients_kept.is_none() {
            p.clients_kept = clients_kept(&hub.log);
        }
        if p.clients_kept.is_some() {
            after += 1;
            if after >= AFTER {
                break;
            }
        } else if signalled.elapsed() > TAKEOVER_LIMIT {
            hub.check()?;
            return Err(RunError::failed(
                "the successor never logged \"planned restart: clients kept\"",
            ));
        }
    }
    p.longest_pause_ns = Some(longest.as_nanos() as f64);
    let mut answering = 0;
    for c in &mut idle {
        if c.publish_confirmed("restart/idle/check", b"?").is_ok() {
            answering += 1;
        }
    }
    p.idle_answering = Some(answering);
    hub.check()
}

pub fn run(args: &Args) -> Result<RestartReport, String> {
    let bin = match &args.hub_binary {
        Some(b) => b.clone(),
        None => hub_runs::default_hub_binary().map_err(|e| e.to_string())?,
    };
    super::scale::raise_nofile();
    let steps: &[u64] = if args.quick {
        &[1, 10]
    } else {
        &[1, 10, 100, 1000]
    };
    Ok(RestartReport {
        schema: "ipchub-bench-restart/1",
        quick: args.quick,
        hub_config: super::scale::HUB_CONFIG,
        points: steps.iter().map(|&n| step(&bin, n)).collect(),
    })
}

fn ms(ns: Option<f64>) -> String {
    match ns {
        None => "-".into(),
        Some(v) if v < 1e6 => format!("{:.0} µs", v / 1e3),
        Some(v) => format!("{:.1} ms", v / 1e6),
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or("-".into(), |v| v.to_string())
}

pub fn text(r: &RestartReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== planned restart (SIGUSR2): the longest round trip a socket client sees =="
    );
    let _ = writeln!(
        s,
        "{:>8} {:>14} {:>16} {:>13} {:>14}",
        "clients", "round trip p50", "longest pause", "clients kept", "idle answering"
    );
    for p in &r.points {
        let _ = writeln!(
            s,
            "{:>8} {:>14} {:>16} {:>13} {:>14}{}",
            p.clients,
            ms(p.round_trip_p50_ns),
            ms(p.longest_pause_ns),
            count(p.clients_kept),
            count(p.idle_answering),
            p.error
                .as_ref()
                .map(|e| format!("  failed: {e}"))
                .unwrap_or_default()
        );
    }
    s
}
