//! `ipchub-bench`: every transport through the hub against its raw limit
//! and against the peers (D-Bus, MQTT), in one run on one machine.
//!
//! The contract of the tool, so its figures can be trusted:
//! - **separate processes**: the far end of every measurement is a worker
//!   process (this executable re-run with a hidden subcommand, `proc`);
//! - **checked, not assumed**: every message carries its sequence number and
//!   the receiver verifies presence, order and size (`measure`); a lossy
//!   mechanism is reported as lossy;
//! - **same code for all**: hub, raw and peer runs share the drivers and the
//!   round structure (`session`); mechanisms only move bytes;
//! - **ratios from one run**: baselines run in the same invocation, so each
//!   hub figure is compared with what this machine allows right now;
//! - **nothing silently missing**: a mechanism that cannot run is a row with
//!   its reason (`measure::Outcome`).
//!
//! Files by concern: `cli` (options), `measure` (message format, checks,
//! figures), `session` (rounds), `proc` (worker processes), `hub_runs`,
//! `raw`, `peers` (the mechanisms), `report` and `svg` (output).

// No unsafe code, except one call with the optional `peers` feature: the
// ZeroMQ peer sets ZMQ_XPUB_NODROP, which the zmq crate does not wrap
// (more_peers.rs); the rest of the crate stays denied even then.
#![cfg_attr(not(feature = "peers"), forbid(unsafe_code))]
#![cfg_attr(feature = "peers", deny(unsafe_code))]

use ipchub_client as client;
use ipchub_os::{shm, transport};
use ipchub_wire as wire;

mod attacks;
mod bindings;
pub mod cli;
mod hub_runs;
mod measure;
mod more_peers;
mod peers;
mod proc;
mod raw;
mod report;
mod restart;
mod scale;
mod session;
mod storage;
mod svg;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cli::Args;
use hub_runs::HubProcess;
use measure::{Limit, Outcome, RunError};
use peers::{DbusDaemon, Mosquitto, PeerKind};
use proc::Role;
use raw::{Purpose, RawKind, Scratch};
use report::{Kind, Report, Row};
use session::Plan;

use crate::wire::TransportKind;

/// Why the bench as a whole could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot find this executable to start workers: {0}")]
    OwnPath(std::io::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The binary's body: a worker when re-executed as one, else the bench.
pub fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == cli::WORKER_ARG) {
        let spec = argv.get(2).and_then(|s| s.to_str()).unwrap_or("");
        return proc::worker_main(spec);
    }
    if argv.get(1).is_some_and(|a| a == bindings::CLIENT_ARG) {
        let rest: Vec<String> = argv[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return bindings::client_main(&rest);
    }
    if let Some(arg) = argv
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| [attacks::ATTACKER_ARG, attacks::BYSTANDER_ARG].contains(a))
    {
        let spec = argv.get(2).and_then(|s| s.to_str()).unwrap_or("");
        return attacks::worker_main(arg, spec);
    }
    main_with(<Args as clap::Parser>::parse_from(argv))
}

/// The bench with parsed arguments.
pub fn main_with(args: Args) -> ExitCode {
    if (args.c_client.is_some() || args.python_client.is_some() || args.python_path.is_some())
        && !args.bindings
    {
        eprintln!("ipchub-bench: --c-client, --python-client and --python-path go with --bindings");
        return ExitCode::from(2);
    }
    if args.bindings {
        return bindings::main(&args);
    }
    if args.quick && !(args.attacks || args.scale || args.storage || args.restart) {
        eprintln!("ipchub-bench: --quick goes with --attacks, --scale, --storage or --restart");
        return ExitCode::from(2);
    }
    if args.restart {
        return restart_main(&args);
    }
    if args.attacks {
        return attacks::main(&args);
    }
    if args.scale {
        return scale_main(&args);
    }
    if args.storage {
        return storage_main(&args);
    }
    match run(&args) {
        Ok(report) => {
            if let Err(e) = emit(&args, &report) {
                eprintln!("ipchub-bench: {e}");
                return ExitCode::FAILURE;
            }
            // No hub figure at all means the hub was never reached: that is
            // a failure of the run, not a row to shrug at.
            if report.hub_error.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ipchub-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--scale`: its own report (text or JSON) and chart.
fn scale_main(args: &Args) -> ExitCode {
    let r = match scale::run(args, &plan_of(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipchub-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_report(args, &r, scale::text);
    if let Some(path) = &args.svg {
        if let Err(e) = std::fs::write(path, scale::svg(&r)) {
            eprintln!("ipchub-bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if r.hub_error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A mode's own report on stdout: JSON with `--json`, else its text.
pub(crate) fn print_report<R: serde::Serialize>(args: &Args, r: &R, text: fn(&R) -> String) {
    let out = if args.json {
        serde_json::to_string_pretty(r).expect("serialisable") + "\n"
    } else {
        text(r)
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}

/// `--restart`: its own report (text or JSON). A step that failed fails
/// the run.
fn restart_main(args: &Args) -> ExitCode {
    let r = match restart::run(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipchub-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_report(args, &r, restart::text);
    if r.points.iter().any(|p| p.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `--storage`: its own report (text or JSON). A row that failed fails
/// the run.
fn storage_main(args: &Args) -> ExitCode {
    let r = match storage::run(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipchub-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_report(args, &r, storage::text);
    if r.rows.iter().any(|row| row.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn emit(args: &Args, report: &Report) -> Result<(), BenchError> {
    let out = if args.json {
        serde_json::to_string_pretty(report).expect("serialisable") + "\n"
    } else if args.csv {
        report::csv(report)
    } else {
        report::text(report)
    };
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    // A closed stdout (`| head`) is not worth an error.
    let _ = lock.write_all(out.as_bytes());
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::chart(report)).map_err(|source| BenchError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// A private directory for sockets, FIFOs and daemon files, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, BenchError> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for i in 0..100u32 {
            let p = base.join(format!(
                "ipchub-bench.{}.{}",
                std::process::id(),
                measure::now_ns() % 1_000_000 + u64::from(i)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(BenchError::TempDir(e)),
            }
        }
        Err(BenchError::TempDir(std::io::Error::other(
            "no free name after 100 tries",
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A start-up failure kept for every row it affects (RunError is not Clone).
fn again(e: &RunError) -> RunError {
    match e {
        RunError::Unavailable(s) => RunError::Unavailable(s.clone()),
        RunError::Failed(s) => RunError::Failed(s.clone()),
        RunError::Io(e) => RunError::Failed(e.to_string()),
    }
}

/// Everything a run holds on to: daemons, where they are, the plan.
struct Bench {
    plan: Plan,
    exe: PathBuf,
    tmp: TempDir,
    hub: Result<PathBuf, RunError>,
    hub_process: Option<HubProcess>,
    dbus: Result<String, RunError>,
    _dbus_daemon: Option<DbusDaemon>,
    mqtt: Result<(String, u16), RunError>,
    _mosquitto: Option<Mosquitto>,
    nats: Result<u16, RunError>,
    _nats_server: Option<more_peers::NatsServer>,
    /// The ipchubd to start for the MQTT bridge row (--hub-binary).
    hub_binary: Option<PathBuf>,
    /// That row's hub, bridged to the broker: started for its first use.
    bridge_hub: Option<Result<HubProcess, RunError>>,
    next_tag: u64,
}

impl Bench {
    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn hub_socket(&mut self) -> Result<PathBuf, RunError> {
        if let Some(h) = self.hub_process.as_mut() {
            h.check()?;
        }
        self.hub.as_ref().map(Clone::clone).map_err(again)
    }

    /// The socket of the hub whose bridge goes to the bench's broker.
    fn bridge_socket(&mut self) -> Result<PathBuf, RunError> {
        if self.bridge_hub.is_none() {
            let started = self.mqtt.as_ref().map_err(again).and_then(|broker| {
                let bin = match &self.hub_binary {
                    Some(b) => b.clone(),
                    None => hub_runs::default_hub_binary()?,
                };
                peers::start_bridge_hub(&bin, &self.tmp.0.join("bridge"), broker)
            });
            self.bridge_hub = Some(started);
        }
        match self.bridge_hub.as_mut().expect("just set") {
            Ok(h) => {
                h.check()?;
                Ok(h.socket.clone())
            }
            Err(e) => Err(again(e)),
        }
    }
}

fn plan_of(args: &Args) -> Plan {
    let (limit, warmup) = match args.messages {
        Some(n) => (Limit::Messages(n), Limit::Messages(n.div_ceil(4).max(1))),
        None => (Limit::Time(args.duration), Limit::Time(args.warmup)),
    };
    Plan {
        limit,
        warmup,
        repetitions: args.repetitions,
        subscribers: args.subscribers,
        round_timeout: Duration::from_secs(args.round_timeout.max(1)),
        pin: args.pin,
        busy_poll: args.busy_poll,
    }
}

/// Start (or find) the hub and the peers' daemons, then measure.
fn run(args: &Args) -> Result<Report, BenchError> {
    let tmp = TempDir::new()?;
    // Workers are this executable, re-run.
    let exe = std::env::current_exe().map_err(BenchError::OwnPath)?;
    let mut hub_process = None;
    let hub = match &args.socket {
        Some(s) => Ok(s.clone()),
        None => {
            let bin = match &args.hub_binary {
                Some(b) => Ok(b.clone()),
                None => hub_runs::default_hub_binary().map_err(RunError::from),
            };
            bin.and_then(|b| HubProcess::start(&b, &tmp.0)).map(|h| {
                let s = h.socket.clone();
                hub_process = Some(h);
                s
            })
        }
    };
    let wants_dbus = args.peers.has("dbus");
    let wants_mqtt = args.peers.has("mqtt") || args.peers.has("mqtt-bridge");
    let mut dbus_daemon = None;
    let dbus = match (&args.dbus_address, wants_dbus) {
        (_, false) => Err(RunError::unavailable("not requested")),
        (Some(a), true) => Ok(a.clone()),
        (None, true) => DbusDaemon::start().map(|d| {
            let a = d.address.clone();
            dbus_daemon = Some(d);
            a
        }),
    };
    let mut mosquitto = None;
    let mqtt = match (&args.mqtt_url, wants_mqtt) {
        (_, false) => Err(RunError::unavailable("not requested")),
        (Some(u), true) => peers::parse_mqtt_url(u)
            .and_then(|(h, p)| peers::check_reachable(&h, p).map(|()| (h, p))),
        (None, true) => Mosquitto::start(&tmp.0).map(|m| {
            let p = m.port;
            mosquitto = Some(m);
            ("127.0.0.1".to_string(), p)
        }),
    };
    let mut nats_server = None;
    let nats = if args.peers.has("nats") {
        more_peers::NatsServer::start(&tmp.0).map(|n| {
            let p = n.port;
            nats_server = Some(n);
            p
        })
    } else {
        Err(RunError::unavailable("not requested"))
    };
    if args.pin {
        // After the daemons started, so they do not inherit it.
        if let Err(e) = proc::pin_to_cpu(0) {
            eprintln!("ipchub-bench: --pin: {e}");
        }
    }
    let mut bench = Bench {
        plan: plan_of(args),
        exe,
        tmp,
        hub,
        hub_process,
        dbus,
        _dbus_daemon: dbus_daemon,
        mqtt,
        _mosquitto: mosquitto,
        nats,
        _nats_server: nats_server,
        hub_binary: args.hub_binary.clone(),
        bridge_hub: None,
        next_tag: 0,
    };
    let mut report = Report::new(args, &bench.plan);
    report.hub_error = bench.hub.as_ref().err().map(|e| e.to_string());
    report.settings.hub = match (&args.socket, &bench.hub) {
        (Some(s), _) => format!("running hub at {}", s.display()),
        (None, Ok(s)) => format!("started for the run on {}", s.display()),
        (None, Err(e)) => format!("could not start: {e}"),
    };
    report.settings.dbus = match (&args.dbus_address, &bench.dbus) {
        (_, Err(e)) => format!("not available: {e}"),
        (Some(a), Ok(_)) => a.clone(),
        (None, Ok(a)) => format!("private dbus-daemon at {a}"),
    };
    report.settings.mqtt = match (&args.mqtt_url, &bench.mqtt) {
        (_, Err(e)) => format!("not available: {e}"),
        (Some(u), Ok(_)) => u.clone(),
        (None, Ok((h, p))) => format!("mosquitto started for the run on {h}:{p}"),
    };
    if let Ok(socket) = &bench.hub {
        report.machine.hub_version = hub_version(socket);
    }
    let progress = progress_bar(args);
    for &size in &args.sizes.0 {
        for &t in &args.transports.0 {
            progress.set_message(format!(
                "{} through the hub, {}",
                t.name(),
                cli::size_label(size)
            ));
            let row = hub_row(&mut bench, t, size, &progress);
            report.rows.push(row);
        }
        for name in &args.baselines.0 {
            let kind = RawKind::from_name(name).expect("checked by the parser");
            progress.set_message(format!("raw {}, {}", kind.label(), cli::size_label(size)));
            let row = raw_row(&mut bench, kind, size, &progress);
            report.rows.push(row);
        }
        for name in &args.peers.0 {
            let kind = PeerKind::from_name(name).expect("checked by the parser");
            progress.set_message(format!("{}, {}", kind.label(), cli::size_label(size)));
            let row = peer_row(&mut bench, kind, size, &progress);
            report.rows.push(row);
        }
    }
    progress.finish_and_clear();
    report.finish();
    Ok(report)
}

/// The hub's own version, when it answers.
fn hub_version(socket: &Path) -> Option<String> {
    let mut c = crate::client::Client::connect(&crate::client::Options {
        socket: Some(socket.to_path_buf()),
        transport: TransportKind::Socket,
        name: "bench".into(),
        reconnect: crate::client::Reconnect::off(),
    })
    .ok()?;
    c.stats().ok().map(|s| s.version)
}

/// A bar on a terminal only; scripts and CI get clean stderr.
fn progress_bar(args: &Args) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let per_size =
        args.transports.0.len() * 2 + args.baselines.0.len() * 2 + args.peers.0.len() * 2;
    let bar = indicatif::ProgressBar::new((per_size * args.sizes.0.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn hub_row(b: &mut Bench, t: TransportKind, size: usize, bar: &indicatif::ProgressBar) -> Row {
    let tput = b.hub_socket().and_then(|s| {
        let tag = b.tag();
        hub_runs::throughput_session(&b.exe, &s, t, size, &b.plan, tag)
            .and_then(|sess| session::throughput(sess, size, &b.plan))
    });
    bar.inc(1);
    let lat = b.hub_socket().and_then(|s| {
        let tag = b.tag();
        hub_runs::latency_session(&b.exe, &s, t, size, &b.plan, tag)
            .and_then(|sess| session::latency(sess, size, &b.plan))
    });
    bar.inc(1);
    Row::new(
        Kind::Hub,
        t.name(),
        t.describe(),
        size,
        Outcome::from_result(tput),
        Outcome::from_result(lat),
    )
}

fn raw_row(b: &mut Bench, kind: RawKind, size: usize, bar: &indicatif::ProgressBar) -> Row {
    let one_subscriber = Plan {
        subscribers: 1,
        ..b.plan.clone()
    };
    let tput = if kind == RawKind::Memcpy {
        Outcome::Ok(raw::memcpy_throughput(size, &b.plan))
    } else {
        let tag = b.tag();
        let at = Scratch {
            dir: &b.tmp.0,
            tag,
            exe: &b.exe,
        };
        Outcome::from_result(
            raw::session(kind, Purpose::Throughput, size, &one_subscriber, &at)
                .and_then(|s| session::throughput(s, size, &one_subscriber)),
        )
    };
    bar.inc(1);
    let lat = if kind == RawKind::Memcpy {
        Outcome::NotMeasured {
            reason: "no second party to answer".into(),
        }
    } else if !kind.has_latency() {
        Outcome::NotMeasured {
            reason: "one message in flight leaves nothing to batch; see the per-message row".into(),
        }
    } else {
        let tag = b.tag();
        let at = Scratch {
            dir: &b.tmp.0,
            tag,
            exe: &b.exe,
        };
        Outcome::from_result(
            raw::session(kind, Purpose::Latency, size, &one_subscriber, &at)
                .and_then(|s| session::latency(s, size, &one_subscriber)),
        )
    };
    bar.inc(1);
    Row::new(Kind::Raw, kind.name(), kind.label(), size, tput, lat)
}

fn peer_row(b: &mut Bench, kind: PeerKind, size: usize, bar: &indicatif::ProgressBar) -> Row {
    let session_for = |b: &mut Bench, role: Role| match kind {
        PeerKind::Dbus => b
            .dbus
            .as_ref()
            .map_err(again)
            .and_then(|a| peers::dbus_session(&b.exe, a, role, size, &b.plan)),
        PeerKind::Mqtt => {
            let tag = b.tag();
            b.mqtt
                .as_ref()
                .map_err(again)
                .and_then(|m| peers::mqtt_session(&b.exe, m, role, size, &b.plan, tag))
        }
        PeerKind::MqttBridge => {
            let tag = b.tag();
            let broker = b.mqtt.as_ref().map_err(again).cloned();
            broker.and_then(|m| {
                let socket = b.bridge_socket()?;
                peers::bridge_session(&b.exe, &socket, &m, role, size, &b.plan, tag)
            })
        }
        PeerKind::Iceoryx2 => {
            let tag = b.tag();
            more_peers::iceoryx2_session(&b.exe, role, size, &b.plan, tag)
        }
        PeerKind::Zmq => {
            let tag = b.tag();
            more_peers::zmq_session(&b.exe, &b.tmp.0, role, size, &b.plan, tag)
        }
        PeerKind::Nats => {
            let tag = b.tag();
            b.nats
                .as_ref()
                .map_err(again)
                .and_then(|&p| more_peers::nats_session(&b.exe, p, role, size, &b.plan, tag))
        }
    };
    // The bridge's rounds are counts its spool holds (peers::bridge_plan).
    let tput_plan = if kind == PeerKind::MqttBridge {
        peers::bridge_plan(&b.plan, size)
    } else {
        b.plan.clone()
    };
    let tput = session_for(b, Role::Sink).and_then(|s| session::throughput(s, size, &tput_plan));
    bar.inc(1);
    let lat = session_for(b, Role::Echo).and_then(|s| session::latency(s, size, &b.plan));
    bar.inc(1);
    Row::new(
        Kind::Peer,
        kind.name(),
        kind.label(),
        size,
        Outcome::from_result(tput),
        Outcome::from_result(lat),
    )
}
