//! `ipchub-bench --attacks`: what a bystander of another uid still gets while one unprivileged uid attacks the hub.
//!
//! For each exhaustion attack of issue #13 (section A) the bench starts a
//! fresh hub with its built-in defaults, runs the attacker as the
//! unprivileged user `nobody` (this executable re-run as `__attacker SPEC`,
//! uid/gid switched and supplementary groups dropped before exec), waits
//! until the attack is in place, then runs a bystander of another uid
//! (`daemon` if it exists, else root; re-run as `__bystander SPEC`) that
//! connects, subscribes, publishes, receives its own messages and PINGs,
//! timing every round trip. Every attack is bounded in count and in time:
//! the attacker stops when the bench closes its stdin or its own deadline
//! passes, the bystander reports what it managed by its deadline, and the
//! hub is killed after each attack so nothing carries over.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cli::Args;
use super::hub_runs::{self, HubProcess};
use crate::client::{Client, Event, Options, PublishOptions};
use crate::wire::TransportKind;
use crate::wire::{self, FrameType};

/// Hidden first arguments that make this executable an attacker or a bystander.
pub const ATTACKER_ARG: &str = "__attacker";
pub const BYSTANDER_ARG: &str = "__bystander";

/// The target for a bystander's round trip under attack.
const TARGET_P99_MS: f64 = 50.0;

/// One attack of issue #13, section A (or none: the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Attack {
    None,
    IdleConnections,
    PartialHellos,
    StatsFlood,
    Channels,
    Patterns,
    Rings,
    Mqueues,
}

impl Attack {
    const ALL: [Attack; 8] = [
        Attack::None,
        Attack::IdleConnections,
        Attack::PartialHellos,
        Attack::StatsFlood,
        Attack::Channels,
        Attack::Patterns,
        Attack::Rings,
        Attack::Mqueues,
    ];

    fn id(self) -> &'static str {
        match self {
            Attack::None => "none",
            Attack::IdleConnections => "A1",
            Attack::PartialHellos => "A2",
            Attack::StatsFlood => "A3",
            Attack::Channels => "A4",
            Attack::Patterns => "A5",
            Attack::Rings => "A6",
            Attack::Mqueues => "A7",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Attack::None => "no attack (baseline)",
            Attack::IdleConnections => "idle connections that never send HELLO",
            Attack::PartialHellos => "connections holding a partial HELLO",
            Attack::StatsFlood => "STATS_REQUEST flood, replies never read",
            Attack::Channels => "creating channels up to the limit",
            Attack::Patterns => "wildcard patterns, then publishes to new channels",
            Attack::Rings => "one shm client opening many channel rings",
            Attack::Mqueues => "hoarding message queues, pre-creating queue names",
        }
    }

    /// The bystander's transport: the one the attack aims at.
    fn bystander_transport(self) -> TransportKind {
        match self {
            Attack::Mqueues => TransportKind::Mqueue,
            _ => TransportKind::Socket,
        }
    }
}

/// Sizes of every attack: the figures, or small ones (`--quick`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Scale {
    quick: bool,
}

impl Scale {
    fn pick(self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
    /// Longest the attacker may run in all (it stops by itself after this).
    fn attacker_secs(self) -> u64 {
        if self.quick {
            30
        } else {
            300
        }
    }
    /// Longest the bystander may take in all.
    fn bystander_secs(self) -> u64 {
        if self.quick {
            15
        } else {
            60
        }
    }
    fn round_trips(self) -> usize {
        self.pick(200, 20)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AttackerSpec {
    attack: Attack,
    socket: PathBuf,
    hub_pid: i32,
    scale: Scale,
}

/// The attacker's one line on stdout, once its attack is in place.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AttackerReport {
    /// The attack was set up (false: it could not even start; see error).
    ready: bool,
    /// What it holds or did, e.g. "1100 connections open without HELLO".
    summary: String,
    error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BystanderSpec {
    socket: PathBuf,
    transport: String,
    round_trips: usize,
    secs: u64,
}

/// Round-trip times of one kind, in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Latency {
    samples: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Latency {
    fn of(mut v: Vec<u64>) -> Option<Latency> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[(((v.len() as f64) * q).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Latency {
            samples: v.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: *v.last().expect("not empty"),
        })
    }
}

/// What the bystander managed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct BystanderReport {
    connect: bool,
    subscribe: bool,
    /// A PUBLISH with ACK_REQUESTED was confirmed, delivered to its own subscription.
    publish: bool,
    /// Its own message came back on its subscription.
    receive: bool,
    /// A PING on a socket connection was answered.
    ping: bool,
    /// publish -> own subscriber receives it.
    publish_rtt: Option<Latency>,
    /// PING -> PONG on a socket connection.
    ping_rtt: Option<Latency>,
    errors: Vec<String>,
}

/// One row of the report.
#[derive(Debug, Serialize)]
struct Row {
    id: &'static str,
    attack: &'static str,
    attacker: AttackerReport,
    bystander_transport: &'static str,
    bystander: BystanderReport,
    /// The hub was still running after the attack.
    hub_alive: bool,
    /// Everything worked and both p99 stayed below the target.
    passed: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    quick: bool,
    attacker_uid: u32,
    bystander_uid: u32,
    target_p99_ms: f64,
    rows: Vec<Row>,
    all_passed: bool,
}

/// `ipchub-bench --attacks [--quick] [--json]`.
pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(report) => {
            let out = if args.json {
                serde_json::to_string_pretty(&report).expect("serialisable") + "\n"
            } else {
                text(&report)
            };
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipchub-bench: --attacks: {e}");
            ExitCode::FAILURE
        }
    }
}

fn user(name: &str) -> Option<(u32, u32)> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

fn run(args: &Args) -> Result<Report, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("must run as root: each attacker runs as the user nobody and the bystander as another uid".into());
    }
    let attacker = user("nobody").ok_or("no user 'nobody' to run the attackers as")?;
    let bystander = user("daemon")
        .filter(|b| b.0 != attacker.0)
        .unwrap_or((0, 0));
    let binary = match &args.hub_binary {
        Some(b) => b.clone(),
        None => hub_runs::default_hub_binary().map_err(|e| format!("finding ipchubd: {e}"))?,
    };
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let tmp = super::TempDir::new().map_err(|e| e.to_string())?;
    // The attacker and the bystander must reach the sockets inside.
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", tmp.0.display()))?;
    let scale = Scale { quick: args.quick };
    let mut rows = Vec::new();
    for attack in Attack::ALL {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("ipchub-bench: {} {}", attack.id(), attack.title());
        }
        rows.push(run_one(
            attack, scale, &binary, &exe, &tmp.0, attacker, bystander,
        )?);
    }
    let all_passed = rows.iter().all(|r| r.passed);
    Ok(Report {
        schema: "ipchub-bench-attacks/1",
        quick: args.quick,
        attacker_uid: attacker.0,
        bystander_uid: bystander.0,
        target_p99_ms: TARGET_P99_MS,
        rows,
        all_passed,
    })
}

/// A worker process as `uid:gid` (supplementary groups dropped), with its
/// stdout lines delivered to a channel so reads can time out.
struct Worker {
    child: Child,
    lines: Receiver<String>,
}

impl Worker {
    fn spawn(exe: &Path, arg: &str, spec: &str, (uid, gid): (u32, u32)) -> Result<Worker, String> {
        let mut cmd = Command::new(exe);
        cmd.arg(arg)
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if uid != 0 {
            // As root, std drops the supplementary groups (setgroups(0))
            // before it switches gid and uid.
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting {arg}: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker { child, lines })
    }

    fn line_within(&self, d: Duration) -> Option<String> {
        self.lines.recv_timeout(d).ok()
    }

    /// Close its stdin (the stop signal), give it a moment, then kill it.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the process listening on `socket` (SO_PEERCRED).
fn hub_pid(socket: &Path) -> Result<i32, String> {
    let s =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.pid())
        .map_err(|e| format!("SO_PEERCRED: {e}"))
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    attack: Attack,
    scale: Scale,
    binary: &Path,
    exe: &Path,
    tmp: &Path,
    attacker_ids: (u32, u32),
    bystander_ids: (u32, u32),
) -> Result<Row, String> {
    let dir = tmp.join(attack.id());
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    let mut hub = HubProcess::start(binary, &dir).map_err(|e| format!("starting the hub: {e}"))?;
    let pid = hub_pid(&hub.socket)?;

    let mut attacker = AttackerReport {
        ready: true,
        summary: "nothing".into(),
        error: None,
    };
    let mut attacker_worker = None;
    if attack != Attack::None {
        let spec = serde_json::to_string(&AttackerSpec {
            attack,
            socket: hub.socket.clone(),
            hub_pid: pid,
            scale,
        })
        .expect("serialisable");
        let w = Worker::spawn(exe, ATTACKER_ARG, &spec, attacker_ids)?;
        attacker = match w.line_within(Duration::from_secs(scale.attacker_secs())) {
            Some(l) => serde_json::from_str(&l).unwrap_or_else(|e| AttackerReport {
                ready: false,
                summary: String::new(),
                error: Some(format!("bad report from the attacker ({e}): {l}")),
            }),
            None => AttackerReport {
                ready: false,
                summary: String::new(),
                error: Some("the attacker set nothing up in time".into()),
            },
        };
        attacker_worker = Some(w);
    }

    let transport = attack.bystander_transport();
    let spec = serde_json::to_string(&BystanderSpec {
        socket: hub.socket.clone(),
        transport: transport.name().into(),
        round_trips: scale.round_trips(),
        secs: scale.bystander_secs(),
    })
    .expect("serialisable");
    let bystander = match Worker::spawn(exe, BYSTANDER_ARG, &spec, bystander_ids) {
        Ok(w) => {
            let line = w.line_within(Duration::from_secs(scale.bystander_secs() + 10));
            w.stop();
            match line {
                Some(l) => serde_json::from_str(&l).unwrap_or_else(|e| BystanderReport {
                    errors: vec![format!("bad report from the bystander ({e}): {l}")],
                    ..BystanderReport::default()
                }),
                None => BystanderReport {
                    errors: vec!["the bystander never reported".into()],
                    ..BystanderReport::default()
                },
            }
        }
        Err(e) => BystanderReport {
            errors: vec![e],
            ..BystanderReport::default()
        },
    };
    if let Some(w) = attacker_worker {
        w.stop();
    }
    let hub_alive = hub.check().is_ok();
    drop(hub);
    let fast = |l: &Option<Latency>| {
        l.as_ref()
            .is_some_and(|l| (l.p99_us as f64) < TARGET_P99_MS * 1000.0)
    };
    let b = &bystander;
    let passed = hub_alive
        && b.connect
        && b.subscribe
        && b.publish
        && b.receive
        && b.ping
        && fast(&b.publish_rtt)
        && fast(&b.ping_rtt);
    Ok(Row {
        id: attack.id(),
        attack: attack.title(),
        attacker,
        bystander_transport: transport.name(),
        bystander,
        hub_alive,
        passed,
    })
}

fn text(r: &Report) -> String {
    let mut s = format!(
        "Bystander (uid {}) under attack by uid {} ({}; target: p99 below {} ms)\n\n",
        r.bystander_uid,
        r.attacker_uid,
        if r.quick {
            "quick sizes"
        } else {
            "the issue's sizes"
        },
        TARGET_P99_MS
    );
    s += &format!(
        "{:<5} {:<50} {:<7} {:>7} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}  {}\n",
        "id",
        "attack",
        "via",
        "connect",
        "subscribe",
        "publish",
        "receive",
        "pub p50",
        "pub p99",
        "ping p50",
        "ping p99",
        "verdict"
    );
    let yn = |b: bool| if b { "yes" } else { "NO" };
    let ms = |l: &Option<Latency>, p99: bool| {
        l.as_ref().map_or("-".to_string(), |l| {
            format!(
                "{:.2}ms",
                (if p99 { l.p99_us } else { l.p50_us }) as f64 / 1000.0
            )
        })
    };
    for row in &r.rows {
        let b = &row.bystander;
        s += &format!(
            "{:<5} {:<50} {:<7} {:>7} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}  {}\n",
            row.id,
            row.attack,
            row.bystander_transport,
            yn(b.connect),
            yn(b.subscribe),
            yn(b.publish),
            yn(b.receive),
            ms(&b.publish_rtt, false),
            ms(&b.publish_rtt, true),
            ms(&b.ping_rtt, false),
            ms(&b.ping_rtt, true),
            if row.passed {
                "ok"
            } else if !row.hub_alive {
                "FAILED (hub died)"
            } else {
                "FAILED"
            }
        );
    }
    s += "\n";
    for row in &r.rows {
        let a = &row.attacker;
        s += &format!("{} attacker: {}", row.id, a.summary);
        if let Some(e) = &a.error {
            s += &format!(" (error: {e})");
        }
        s += "\n";
        for e in &row.bystander.errors {
            s += &format!("{} bystander: {e}\n", row.id);
        }
    }
    s += &format!(
        "\n{}\n",
        if r.all_passed {
            "every bystander connected, subscribed, published and received within the target"
        } else {
            "some bystanders were denied service or slowed past the target (see above)"
        }
    );
    s
}

// ---------------------------------------------------------------------
// Workers

/// Entry point of a re-executed attacker or bystander.
pub fn worker_main(arg: &str, spec: &str) -> ExitCode {
    if arg == ATTACKER_ARG {
        match serde_json::from_str::<AttackerSpec>(spec) {
            Ok(s) => attacker_main(&s),
            Err(e) => {
                println!(
                    "{}",
                    serde_json::to_string(&AttackerReport {
                        ready: false,
                        summary: String::new(),
                        error: Some(format!("bad spec: {e}")),
                    })
                    .expect("serialisable")
                );
                ExitCode::FAILURE
            }
        }
    } else {
        match serde_json::from_str::<BystanderSpec>(spec) {
            Ok(s) => bystander_main(&s),
            Err(e) => {
                let r = BystanderReport {
                    errors: vec![format!("bad spec: {e}")],
                    ..BystanderReport::default()
                };
                println!("{}", serde_json::to_string(&r).expect("serialisable"));
                ExitCode::FAILURE
            }
        }
    }
}

/// The attacker's controls: report once, then run until told to stop.
struct Ctl {
    stop: Arc<AtomicBool>,
    deadline: Instant,
    reported: bool,
}

impl Ctl {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    fn ready(&mut self, summary: String, error: Option<String>) {
        if self.reported {
            return;
        }
        self.reported = true;
        let r = AttackerReport {
            ready: true,
            summary,
            error,
        };
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
        let _ = std::io::stdout().flush();
    }

    /// Hold what the attack built until stopped.
    fn hold(&self) {
        while self.running() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn attacker_main(spec: &AttackerSpec) -> ExitCode {
    // Many connections need descriptors: take all the hard limit allows.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut ctl = Ctl {
        stop,
        deadline: Instant::now() + Duration::from_secs(spec.scale.attacker_secs()),
        reported: false,
    };
    let res = match spec.attack {
        Attack::None => Ok(()),
        Attack::IdleConnections => idle_connections(spec, &mut ctl),
        Attack::PartialHellos => partial_hellos(spec, &mut ctl),
        Attack::StatsFlood => stats_flood(spec, &mut ctl),
        Attack::Channels => channels(spec, &mut ctl),
        Attack::Patterns => patterns(spec, &mut ctl),
        Attack::Rings => rings(spec, &mut ctl),
        Attack::Mqueues => mqueues(spec, &mut ctl),
    };
    if let Err(e) = res {
        if ctl.reported {
            return ExitCode::FAILURE;
        }
        let r = AttackerReport {
            ready: false,
            summary: String::new(),
            error: Some(e),
        };
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
        return ExitCode::FAILURE;
    }
    ctl.ready("nothing".into(), None);
    ctl.hold();
    ExitCode::SUCCESS
}

fn frame(ty: FrameType, flags: u8, channel: &str, payload: &[u8], seq: u64) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode(&mut v, ty, flags, 0, channel, payload, 0, seq);
    v
}

/// Read one whole frame (blocking, with the socket's timeout).
fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<(FrameType, u64, Vec<u8>)> {
    loop {
        match wire::decode(buf, u32::MAX) {
            Ok(Some((f, used))) => {
                let out = (f.header.ty, f.header.seq, f.payload.to_vec());
                buf.drain(..used);
                return Ok(out);
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A socket-transport connection past its handshake.
fn greeted(socket: &Path, name: &str) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let hello = format!("version=1\ntransport=socket\nname={name}\n");
    s.write_all(&frame(FrameType::Hello, 0, "", hello.as_bytes(), 0))
        .map_err(|e| format!("HELLO: {e}"))?;
    let mut buf = Vec::new();
    match read_frame(&mut s, &mut buf) {
        Ok((FrameType::Welcome, _, _)) => Ok(s),
        Ok((FrameType::Error, _, p)) => Err(format!(
            "refused: {}",
            wire::frame::parse_error_payload(&p).1
        )),
        Ok((t, _, _)) => Err(format!("unexpected {t:?} instead of WELCOME")),
        Err(e) => Err(format!("no WELCOME: {e}")),
    }
}

/// Drain everything the hub sends on `s` in a thread; count ERRORs and
/// report PONGs by seq.
fn drain(s: &UnixStream) -> (Arc<AtomicU64>, Receiver<u64>) {
    let errors = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    if let Ok(mut r) = s.try_clone() {
        let errors = errors.clone();
        let _ = r.set_read_timeout(None);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while let Ok((ty, seq, _)) = read_frame(&mut r, &mut buf) {
                match ty {
                    FrameType::Error => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    FrameType::Pong => {
                        let _ = tx.send(seq);
                    }
                    _ => {}
                }
            }
        });
    }
    (errors, rx)
}

/// A1: connections that never send HELLO.
fn idle_connections(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let n = spec.scale.pick(1100, 30);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        if !ctl.running() {
            break;
        }
        match UnixStream::connect(&spec.socket) {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    ctl.ready(
        format!(
            "{} connections open without HELLO ({refused} refused at connect)",
            held.len()
        ),
        None,
    );
    ctl.hold();
    Ok(())
}

/// A2: connections each holding a HELLO whose payload never completes.
fn partial_hellos(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let n = spec.scale.pick(250, 8);
    let len = spec.scale.pick(1 << 20, 64 << 10);
    let header = wire::encode_header(FrameType::Hello, 0, 0, 0, len, 0, 0);
    let body = vec![b'a'; 64 << 10];
    let mut held = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..n {
        if !ctl.running() {
            break;
        }
        let Ok(mut s) = UnixStream::connect(&spec.socket) else {
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        if s.write_all(&header).is_err() {
            continue;
        }
        let mut left = len - 1;
        while left > 0 && ctl.running() {
            let k = left.min(body.len());
            match s.write(&body[..k]) {
                Ok(w) if w > 0 => {
                    left -= w;
                    bytes += w;
                }
                _ => break,
            }
        }
        held.push(s);
    }
    ctl.ready(
        format!(
            "{} connections holding {} KiB of unfinished HELLOs",
            held.len(),
            bytes >> 10
        ),
        None,
    );
    ctl.hold();
    Ok(())
}

/// A3: clients flooding STATS_REQUEST and never reading the replies.
fn stats_flood(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let n = spec.scale.pick(24, 3);
    let mut conns = Vec::new();
    for i in 0..n {
        match greeted(&spec.socket, &format!("flood{i}")) {
            Ok(s) => {
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                conns.push(s);
            }
            Err(e) if conns.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let batch: Vec<u8> = (0..64)
        .flat_map(|i| frame(FrameType::StatsRequest, 0, "", b"", i))
        .collect();
    let mut sent = 0u64;
    let mut flood = |conns: &mut Vec<UnixStream>| {
        let mut moved = false;
        for s in conns.iter_mut() {
            if let Ok(w) = s.write(&batch) {
                sent += (w / wire::HEADER_LEN) as u64;
                moved |= w > 0;
            }
        }
        moved
    };
    // Fill the sockets first, then keep flooding while the bystander runs.
    let t0 = Instant::now();
    while ctl.running() && t0.elapsed() < Duration::from_secs(2) {
        if !flood(&mut conns) {
            break;
        }
    }
    ctl.ready(
        format!(
            "{} clients flooding STATS_REQUEST without reading",
            conns.len()
        ),
        None,
    );
    while ctl.running() {
        if !flood(&mut conns) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Publish `count` messages on channels `prefix/k` (each new) on `s`.
fn publish_new_channels(s: &mut UnixStream, prefix: &str, count: usize, ctl: &Ctl) -> usize {
    let mut batch = Vec::new();
    let mut done = 0;
    for k in 0..count {
        if !ctl.running() {
            break;
        }
        batch.extend(frame(
            FrameType::Publish,
            0,
            &format!("{prefix}/{k}"),
            b"x",
            0,
        ));
        if batch.len() >= 32 << 10 || k + 1 == count {
            if s.write_all(&batch).is_err() {
                break;
            }
            batch.clear();
            done = k + 1;
        }
    }
    done
}

/// Wait until the hub answered a PING on `s` (all before it was handled).
fn sync(s: &mut UnixStream, pongs: &Receiver<u64>, seq: u64, ctl: &Ctl) -> bool {
    if s.write_all(&frame(FrameType::Ping, 0, "", b"", seq))
        .is_err()
    {
        return false;
    }
    while ctl.running() {
        match pongs.recv_timeout(Duration::from_millis(100)) {
            Ok(s) if s == seq => return true,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
    false
}

/// A4: one uid creates channels up to the hub's limit (and past it).
fn channels(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let n = spec.scale.pick(65536 + 64, 300);
    let mut s = greeted(&spec.socket, "channels")?;
    let (errors, pongs) = drain(&s);
    let done = publish_new_channels(&mut s, "flood", n, ctl);
    let synced = sync(&mut s, &pongs, u64::MAX, ctl);
    ctl.ready(
        format!(
            "published on {done} new channels, {} refused{}",
            errors.load(Ordering::Relaxed),
            if synced {
                ""
            } else {
                " (the hub never caught up)"
            }
        ),
        None,
    );
    ctl.hold();
    Ok(())
}

/// A5: many wildcard patterns, then publishes to new channels.
fn patterns(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let conns = spec.scale.pick(200, 4);
    let per = spec.scale.pick(1024, 50);
    let mut held = Vec::new();
    let mut accepted = 0usize;
    for c in 0..conns {
        if !ctl.running() {
            break;
        }
        let Ok(mut s) = greeted(&spec.socket, &format!("patterns{c}")) else {
            break;
        };
        let batch: Vec<u8> = (0..per)
            .flat_map(|j| {
                frame(
                    FrameType::Subscribe,
                    0,
                    &format!("a{c}/{j}/+"),
                    b"",
                    j as u64,
                )
            })
            .collect();
        if s.write_all(&batch).is_err() {
            break;
        }
        let mut buf = Vec::new();
        for _ in 0..per {
            match read_frame(&mut s, &mut buf) {
                Ok((FrameType::Ack, _, _)) => accepted += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        held.push(s);
    }
    let mut publisher = greeted(&spec.socket, "fresh")?;
    let (errors, _pongs) = drain(&publisher);
    ctl.ready(
        format!(
            "{accepted} wildcard patterns held by {} clients, then publishes to new channels",
            held.len()
        ),
        None,
    );
    // While the bystander measures: publishes that each create a channel.
    let count = spec.scale.pick(3000, 100);
    let done = publish_new_channels(&mut publisher, "fresh", count, ctl);
    let _ = (done, errors);
    ctl.hold();
    Ok(())
}

/// A6: one shm client opens as many channel rings as it can.
fn rings(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let n = spec.scale.pick(400, 8);
    let mut c = Client::connect(&Options {
        socket: Some(spec.socket.clone()),
        transport: TransportKind::Shm,
        name: "rings".into(),
        reconnect: crate::client::Reconnect::off(),
    })
    .map_err(|e| format!("shm connect: {e}"))?;
    let mut opened = 0;
    let mut error = None;
    for i in 0..n {
        if !ctl.running() {
            break;
        }
        match c.subscribe(&format!("ring/{i}")) {
            Ok(()) => opened += 1,
            Err(e) => {
                error = Some(format!("after {opened}: {e}"));
                break;
            }
        }
    }
    ctl.ready(
        format!("one shm client subscribed to {opened} exact channels (a ring each)"),
        error,
    );
    ctl.hold();
    drop(c);
    Ok(())
}

/// A7: keep message queues after disconnecting, and pre-create the names
/// of the next clients' queues.
fn mqueues(spec: &AttackerSpec, ctl: &mut Ctl) -> Result<(), String> {
    let n = spec.scale.pick(64, 3);
    let mut kept = Vec::new();
    let mut last_id = 0;
    let mut error = None;
    for _ in 0..n {
        if !ctl.running() {
            break;
        }
        match Client::connect(&Options {
            socket: Some(spec.socket.clone()),
            transport: TransportKind::Mqueue,
            name: "hoard".into(),
            reconnect: crate::client::Reconnect::off(),
        }) {
            Ok(c) => {
                last_id = c.id();
                // Close the control connection, keep the queues open.
                let (ctrl, link) = c.into_raw();
                drop(ctrl);
                kept.push(link);
            }
            Err(e) => {
                error = Some(format!("after {}: {e}", kept.len()));
                break;
            }
        }
    }
    if last_id == 0 {
        // Learn the current client id from a socket client.
        if let Ok(c) = Client::connect(&Options {
            socket: Some(spec.socket.clone()),
            transport: TransportKind::Socket,
            name: "hoard".into(),
            reconnect: crate::client::Reconnect::off(),
        }) {
            last_id = c.id();
        }
    }
    let squat = spec.scale.pick(32, 4);
    let mut names = Vec::new();
    for k in 1..=squat as u32 {
        let name = format!("/ipchub.{}.{}.up", spec.hub_pid, last_id + k);
        let flags = nix::mqueue::MQ_OFlag::O_CREAT
            | nix::mqueue::MQ_OFlag::O_EXCL
            | nix::mqueue::MQ_OFlag::O_RDWR;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        // The smallest queue: the name is what counts.
        let attr = nix::mqueue::MqAttr::new(0, 1, 64, 0);
        match nix::mqueue::mq_open(name.as_str(), flags, mode, Some(&attr)) {
            Ok(q) => names.push((name, q)),
            Err(e) => {
                error.get_or_insert_with(|| format!("pre-creating {name}: {e}"));
            }
        }
    }
    ctl.ready(
        format!(
            "kept {} queue pairs after disconnecting; pre-created {} queue names of the next clients",
            kept.len(),
            names.len()
        ),
        error,
    );
    ctl.hold();
    for (name, q) in names {
        let _ = nix::mqueue::mq_close(q);
        let _ = nix::mqueue::mq_unlink(name.as_str());
    }
    drop(kept);
    Ok(())
}

fn bystander_main(spec: &BystanderSpec) -> ExitCode {
    let state = Arc::new(Mutex::new(BystanderReport::default()));
    let done = Arc::new(AtomicU64::new(0));
    {
        let (state, done) = (state.clone(), done.clone());
        let spec = BystanderSpec {
            socket: spec.socket.clone(),
            transport: spec.transport.clone(),
            round_trips: spec.round_trips,
            secs: spec.secs,
        };
        std::thread::spawn(move || {
            if let Err(e) = bystander_messages(&spec, &state) {
                if let Ok(mut s) = state.lock() {
                    s.errors.push(e);
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    {
        let (state, done) = (state.clone(), done.clone());
        let (socket, n) = (spec.socket.clone(), spec.round_trips);
        std::thread::spawn(move || {
            if let Err(e) = bystander_pings(&socket, n, &state) {
                if let Ok(mut s) = state.lock() {
                    s.errors.push(format!("ping: {e}"));
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(spec.secs);
    while done.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut r = state.lock().map(|s| s.clone()).unwrap_or_default();
    if done.load(Ordering::SeqCst) < 2 {
        r.errors
            .push(format!("gave up after {} s without an answer", spec.secs));
    }
    println!("{}", serde_json::to_string(&r).expect("serialisable"));
    let _ = std::io::stdout().flush();
    // The threads may still wait on a hub that never answers.
    std::process::exit(0)
}

const STEP: Duration = Duration::from_secs(5);

fn bystander_messages(spec: &BystanderSpec, state: &Mutex<BystanderReport>) -> Result<(), String> {
    let set = |f: &dyn Fn(&mut BystanderReport)| {
        if let Ok(mut s) = state.lock() {
            f(&mut s);
        }
    };
    let t = TransportKind::parse(&spec.transport).ok_or("unknown transport")?;
    let mut c = Client::connect(&Options {
        socket: Some(spec.socket.clone()),
        transport: t,
        name: "bystander".into(),
        reconnect: crate::client::Reconnect::off(),
    })
    .map_err(|e| format!("connect via {}: {e}", t.name()))?;
    c.set_flush_delay(Duration::ZERO);
    set(&|s| s.connect = true);
    let ch = format!("bystander/{}/echo", std::process::id());
    c.subscribe(&ch).map_err(|e| format!("subscribe: {e}"))?;
    set(&|s| s.subscribe = true);
    let seq = c
        .publish_with(
            &ch,
            b"hello",
            PublishOptions {
                ack: true,
                priority: 0,
            },
        )
        .map_err(|e| format!("publish: {e}"))?;
    c.flush().map_err(|e| format!("publish: {e}"))?;
    let until = Instant::now() + STEP;
    let (mut acked, mut got) = (false, false);
    while !(acked && got) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no {} for its own publish within {} s",
                if acked { "message" } else { "ACK" },
                STEP.as_secs()
            ));
        }
        match c
            .next_event(Some(left))
            .map_err(|e| format!("publish: {e}"))?
        {
            Some(Event::Ack { seq: s, delivered }) if s == seq => {
                if delivered == 0 {
                    return Err("its publish was delivered to nobody".into());
                }
                acked = true;
                set(&|s| s.publish = true);
            }
            Some(Event::Error { seq: s, text, .. }) if s == seq || s == 0 => {
                return Err(format!("publish refused: {text}"));
            }
            Some(Event::Message(m)) if m.payload == b"hello" => {
                got = true;
                set(&|s| s.receive = true);
            }
            _ => {}
        }
    }
    let mut rtts = Vec::with_capacity(spec.round_trips);
    for i in 0..spec.round_trips {
        let payload = format!("rt{i}");
        let t0 = Instant::now();
        c.publish(&ch, payload.as_bytes())
            .and_then(|_| c.flush())
            .map_err(|e| format!("publish: {e}"))?;
        loop {
            let left = STEP.saturating_sub(t0.elapsed());
            if left.is_zero() {
                set(&|s| s.publish_rtt = Latency::of(rtts.clone()));
                return Err(format!("round trip {i} took over {} s", STEP.as_secs()));
            }
            match c.recv(Some(left)).map_err(|e| format!("receive: {e}"))? {
                Some(m) if m.payload == payload.as_bytes() => break,
                _ => {}
            }
        }
        rtts.push(t0.elapsed().as_micros() as u64);
    }
    set(&|s| s.publish_rtt = Latency::of(rtts.clone()));
    Ok(())
}

fn bystander_pings(socket: &Path, n: usize, state: &Mutex<BystanderReport>) -> Result<(), String> {
    let mut s = greeted(socket, "bystander-ping")?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut rtts = Vec::with_capacity(n);
    for i in 1..=n as u64 {
        let t0 = Instant::now();
        s.write_all(&frame(FrameType::Ping, 0, "", b"", i))
            .map_err(|e| e.to_string())?;
        loop {
            let (ty, seq, _) = read_frame(&mut s, &mut buf).map_err(|e| {
                if let Ok(mut st) = state.lock() {
                    st.ping_rtt = Latency::of(rtts.clone());
                }
                format!("no PONG {i}: {e}")
            })?;
            if ty == FrameType::Pong && seq == i {
                break;
            }
        }
        rtts.push(t0.elapsed().as_micros() as u64);
        if let Ok(mut st) = state.lock() {
            st.ping = true;
        }
    }
    if let Ok(mut st) = state.lock() {
        st.ping_rtt = Latency::of(rtts);
    }
    Ok(())
}
