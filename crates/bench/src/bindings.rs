//! `--bindings`: the C and Python clients (issue #19) against the Rust
//! client, publisher → hub → subscriber, on the same hub in one run.
//!
//! Every client runs as the same pair of programs speaking one small line
//! protocol, so the three rows differ only in the language binding:
//! - **Rust**: this executable re-run as `__bindings-client` (the client
//!   crate, as a Rust application uses it);
//! - **C**: `bindings/c/bench/ipchub_bench_client.c` compiled against
//!   `libipchub.so.0` (`--c-client`);
//! - **Python**: `bindings/python/bench_client.py` with the `ipchub` module
//!   (`--python-client`, `--python-path`).
//!
//! Each round starts a subscriber process (`sub`), waits for its `ready`
//! line, then starts a publisher process (`pub`) that sends COUNT messages
//! of SIZE bytes, each carrying its sequence number in its first 8 bytes.
//! The subscriber checks presence, order and size. msgs/s = messages
//! received / (last receipt − first send), both CLOCK_MONOTONIC, as in the
//! other throughput rows. A warm-up round of COUNT/4 is not counted; the
//! table shows the median of `--repetitions` rounds and the ratio to the
//! Rust client's median on the same transport and size.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cli::{size_label, Args};
use super::hub_runs::{self, HubProcess};
use super::measure::{now_ns, RunError, Spread};
use super::TempDir;
use crate::client::{Client, ClientError, Event, Options, Reconnect};
use crate::wire::TransportKind;

/// The argument that runs this executable as the Rust bench client.
pub const CLIENT_ARG: &str = "__bindings-client";

/// Messages per round when --messages is not given.
pub const DEFAULT_MESSAGES: u64 = 200_000;

/// How long a subscriber may take to connect and subscribe.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A subscriber hearing nothing this long stops (the rest counts as lost).
const IDLE: Duration = Duration::from_secs(10);

/// The C target: within 10 % of the Rust client.
pub const C_TARGET: f64 = 0.9;

// ---------------------------------------------------------------------------
// The Rust client program.

/// `ipchub-bench __bindings-client sub|pub SOCKET TRANSPORT CHANNEL SIZE COUNT`.
pub fn client_main(argv: &[String]) -> ExitCode {
    let parsed = (|| {
        let [role, socket, transport, channel, size, count] = argv else {
            return None;
        };
        Some((
            role.as_str(),
            PathBuf::from(socket),
            TransportKind::parse(transport)?,
            channel.as_str(),
            size.parse::<usize>().ok().filter(|&s| s >= 8)?,
            count.parse::<u64>().ok()?,
        ))
    })();
    let Some((role, socket, t, channel, size, count)) = parsed else {
        eprintln!("usage: ipchub-bench {CLIENT_ARG} sub|pub SOCKET TRANSPORT CHANNEL SIZE COUNT");
        return ExitCode::from(2);
    };
    let result = Client::connect(&Options {
        socket: Some(socket),
        transport: t,
        name: format!("bench-rust-{role}"),
        reconnect: Reconnect::off(),
    })
    .and_then(|mut c| match role {
        "sub" => rust_subscriber(&mut c, channel, size, count),
        _ => rust_publisher(&mut c, channel, size, count),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

fn rust_subscriber(
    c: &mut Client,
    channel: &str,
    size: usize,
    count: u64,
) -> Result<(), ClientError> {
    c.subscribe(channel)?;
    println!("ready");
    let (mut received, mut out_of_order, mut bad_size, mut expected, mut last_ns) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    while received < count {
        let Some(ev) = c.next_event(Some(IDLE))? else {
            break;
        };
        if let Event::Message(m) = ev {
            last_ns = now_ns();
            received += 1;
            if m.payload.len() != size {
                bad_size += 1;
            } else {
                let seq = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                if seq < expected {
                    out_of_order += 1;
                } else {
                    expected = seq + 1;
                }
            }
            c.recycle(m);
        }
    }
    println!(
        "result received={received} out_of_order={out_of_order} bad_size={bad_size} last_ns={last_ns}"
    );
    Ok(())
}

fn rust_publisher(
    c: &mut Client,
    channel: &str,
    size: usize,
    count: u64,
) -> Result<(), ClientError> {
    let mut buf = vec![0x5au8; size];
    let first_ns = now_ns();
    for seq in 0..count {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        c.publish(channel, &buf)?;
    }
    c.flush()?;
    let end_ns = now_ns();
    println!("result sent={count} first_ns={first_ns} end_ns={end_ns}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Running the programs.

/// One of the three clients and how to start it.
#[derive(Debug, Clone)]
enum Program {
    Rust(PathBuf),
    C(PathBuf),
    Python {
        script: PathBuf,
        path: Option<PathBuf>,
    },
}

impl Program {
    fn name(&self) -> &'static str {
        match self {
            Program::Rust(_) => "rust",
            Program::C(_) => "c",
            Program::Python { .. } => "python",
        }
    }

    fn command(&self, role: &str, job: &Job) -> Command {
        let mut c = match self {
            Program::Rust(exe) => {
                let mut c = Command::new(exe);
                c.arg(CLIENT_ARG);
                c
            }
            Program::C(path) => Command::new(path),
            Program::Python { script, path } => {
                let mut c = Command::new("python3");
                c.arg(script).env("PYTHONDONTWRITEBYTECODE", "1");
                if let Some(p) = path {
                    let mut pp = p.as_os_str().to_owned();
                    if let Some(old) = std::env::var_os("PYTHONPATH") {
                        pp.push(":");
                        pp.push(old);
                    }
                    c.env("PYTHONPATH", pp);
                }
                c
            }
        };
        c.arg(role)
            .arg(&job.socket)
            .arg(job.transport.name())
            .arg(&job.channel)
            .arg(job.size.to_string())
            .arg(job.count.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

struct Job {
    socket: PathBuf,
    transport: TransportKind,
    channel: String,
    size: usize,
    count: u64,
}

/// A started program: its stdout lines arrive on `lines`, its stderr is
/// collected; killed on drop.
struct Running {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn start(p: &Program, role: &str, job: &Job) -> Result<Running, RunError> {
        let what = format!("{} {role}", p.name());
        let mut child = p
            .command(role, job)
            .spawn()
            .map_err(|e| RunError::unavailable(format!("cannot start the {what} client: {e}")))?;
        let out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Running {
            what,
            child,
            lines,
            stderr: Some(stderr),
        })
    }

    /// The next line starting with `word`, within `timeout`; an `error`
    /// line, an exit or the deadline is a failure that says why.
    fn expect(&mut self, word: &str, timeout: Duration) -> Result<String, RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(word) => return Ok(l),
                Ok(l) if l.starts_with("error") => {
                    return Err(RunError::failed(format!("{}: {l}", self.what)))
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    return Err(RunError::failed(format!(
                        "{}: no '{word}' line within {} s",
                        self.what,
                        timeout.as_secs()
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.wait(Duration::from_secs(5));
                    let err = self.stderr_text();
                    return Err(RunError::failed(format!(
                        "{} exited ({st}) before '{word}': {}",
                        self.what,
                        err.trim()
                    )));
                }
            }
        }
    }

    fn wait(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "killed after its deadline".into();
                }
            }
        }
    }

    fn stderr_text(&mut self) -> String {
        let s = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        s.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
    }

    /// Wait for a clean exit.
    fn finish(mut self, timeout: Duration) -> Result<(), RunError> {
        let st = self.wait(timeout);
        if st == "exit status: 0" {
            Ok(())
        } else {
            let err = self.stderr_text();
            Err(RunError::failed(format!(
                "{} ended with {st}: {err}",
                self.what
            )))
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` of a result line.
fn field(line: &str, key: &str) -> Result<u64, RunError> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| RunError::failed(format!("no {key}= in '{line}'")))
}

#[derive(Debug, Clone, Copy, Default)]
struct RoundResult {
    sent: u64,
    received: u64,
    out_of_order: u64,
    bad_size: u64,
    msgs_per_sec: f64,
}

fn round(p: &Program, job: &Job, timeout: Duration) -> Result<RoundResult, RunError> {
    let mut sub = Running::start(p, "sub", job)?;
    sub.expect("ready", READY_TIMEOUT)?;
    let mut publ = Running::start(p, "pub", job)?;
    let pub_line = publ.expect("result", timeout)?;
    let sub_line = sub.expect("result", timeout + IDLE)?;
    publ.finish(Duration::from_secs(10))?;
    sub.finish(Duration::from_secs(10))?;
    let sent = field(&pub_line, "sent")?;
    let first_ns = field(&pub_line, "first_ns")?;
    let received = field(&sub_line, "received")?;
    let last_ns = field(&sub_line, "last_ns")?;
    let secs = last_ns.saturating_sub(first_ns) as f64 / 1e9;
    Ok(RoundResult {
        sent,
        received,
        out_of_order: field(&sub_line, "out_of_order")?,
        bad_size: field(&sub_line, "bad_size")?,
        msgs_per_sec: if received > 0 && secs > 0.0 {
            received as f64 / secs
        } else {
            0.0
        },
    })
}

// ---------------------------------------------------------------------------
// The report.

/// One client on one transport at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// rust, c or python.
    pub client: &'static str,
    pub transport: &'static str,
    pub size: usize,
    pub msgs_per_sec: Option<Spread>,
    pub mb_per_sec: Option<f64>,
    /// Median / the Rust client's median on the same transport and size.
    pub ratio_to_rust: Option<f64>,
    /// The bar of issue #19 for this client's ratio (C: 0.9), if any.
    pub target: Option<f64>,
    pub rounds: u32,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub bad_size: u64,
    /// "not available: …" or "failed: …" when there is no figure.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BindingsReport {
    pub schema: &'static str,
    pub messages_per_round: u64,
    pub repetitions: u32,
    pub hub: String,
    /// How each client was run.
    pub programs: Vec<(String, String)>,
    pub rows: Vec<Row>,
}

fn program_list(args: &Args, exe: &Path) -> Vec<(&'static str, Result<Program, RunError>)> {
    let c = match &args.c_client {
        Some(p) if p.exists() => Ok(Program::C(p.clone())),
        Some(p) => Err(RunError::unavailable(format!(
            "no C client at {}",
            p.display()
        ))),
        None => Err(RunError::unavailable(
            "give --c-client (bench/bindings.sh builds bindings/c/bench/ipchub_bench_client.c)",
        )),
    };
    let py = match &args.python_client {
        Some(p) if p.exists() => Ok(Program::Python {
            script: p.clone(),
            path: args.python_path.clone(),
        }),
        Some(p) => Err(RunError::unavailable(format!(
            "no Python client at {}",
            p.display()
        ))),
        None => Err(RunError::unavailable(
            "give --python-client bindings/python/bench_client.py and --python-path (bench/bindings.sh builds the module)",
        )),
    };
    vec![
        ("rust", Ok(Program::Rust(exe.to_path_buf()))),
        ("c", c),
        ("python", py),
    ]
}

fn describe((name, p): &(&'static str, Result<Program, RunError>)) -> (String, String) {
    match p {
        Ok(Program::Rust(exe)) => ("rust".into(), format!("{} {CLIENT_ARG}", exe.display())),
        Ok(Program::C(path)) => ("c".into(), path.display().to_string()),
        Ok(Program::Python { script, path }) => (
            "python".into(),
            format!(
                "python3 {} (PYTHONPATH {})",
                script.display(),
                path.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "inherited".into())
            ),
        ),
        Err(e) => (name.to_string(), error_text(e)),
    }
}

fn empty_row(client: &'static str, t: TransportKind, size: usize, rounds: u32) -> Row {
    Row {
        client,
        transport: t.name(),
        size,
        msgs_per_sec: None,
        mb_per_sec: None,
        ratio_to_rust: None,
        target: (client == "c").then_some(C_TARGET),
        rounds,
        sent: 0,
        received: 0,
        lost: 0,
        out_of_order: 0,
        bad_size: 0,
        error: None,
    }
}

/// Every client on one transport at one size. The rounds take turns
/// (Rust, C, Python, Rust, ...), so a change in the shared machine's load
/// falls on all three alike rather than on whichever ran then.
fn measure_all(
    programs: &[(&'static str, Result<Program, RunError>)],
    socket: &Path,
    t: TransportKind,
    size: usize,
    args: &Args,
    count: u64,
    hub: &mut Option<HubProcess>,
) -> Result<Vec<Row>, RunError> {
    let timeout = Duration::from_secs(args.round_timeout.max(1));
    let mut rows: Vec<Row> = programs
        .iter()
        .map(|(name, p)| {
            let mut row = empty_row(name, t, size, args.repetitions);
            if let Err(e) = p {
                row.error = Some(error_text(e));
            }
            row
        })
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); programs.len()];
    for r in 0..=u64::from(args.repetitions) {
        let n = if r == 0 {
            count.div_ceil(4).max(1)
        } else {
            count
        };
        for (i, (name, p)) in programs.iter().enumerate() {
            let Ok(p) = p else { continue };
            if rows[i].error.is_some() {
                continue;
            }
            if let Some(h) = hub.as_mut() {
                h.check()?;
            }
            let job = Job {
                socket: socket.to_path_buf(),
                transport: t,
                channel: format!(
                    "bench/{}/bindings/{}/{}/{name}/{r}",
                    std::process::id(),
                    t.name(),
                    size
                ),
                size,
                count: n,
            };
            match round(p, &job, timeout) {
                Ok(res) if r > 0 => {
                    let row = &mut rows[i];
                    rates[i].push(res.msgs_per_sec);
                    row.sent += res.sent;
                    row.received += res.received;
                    row.lost += res.sent.saturating_sub(res.received);
                    row.out_of_order += res.out_of_order;
                    row.bad_size += res.bad_size;
                }
                Ok(_) => {}
                Err(e) => rows[i].error = Some(error_text(&e)),
            }
        }
    }
    for (row, rates) in rows.iter_mut().zip(&rates) {
        if row.error.is_none() {
            row.msgs_per_sec = Spread::of(rates);
        }
    }
    let rust = rows
        .iter()
        .find(|r| r.client == "rust")
        .and_then(|r| r.msgs_per_sec.map(|s| s.median));
    for row in &mut rows {
        let median = row.msgs_per_sec.map(|s| s.median);
        row.mb_per_sec = median.map(|m| m * size as f64 / 1e6);
        row.ratio_to_rust = median.zip(rust).map(|(m, r)| m / r);
    }
    Ok(rows)
}

fn error_text(e: &RunError) -> String {
    match e {
        RunError::Unavailable(s) => format!("not available: {s}"),
        RunError::Failed(s) => format!("failed: {s}"),
        RunError::Io(e) => format!("failed: {e}"),
    }
}

/// Start a hub (or use --socket) and measure every client.
pub fn run(args: &Args) -> Result<BindingsReport, RunError> {
    let tmp = TempDir::new().map_err(|e| RunError::failed(e.to_string()))?;
    let exe = std::env::current_exe()?;
    let mut hub = None;
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let bin = match &args.hub_binary {
                Some(b) => b.clone(),
                None => hub_runs::default_hub_binary()?,
            };
            let h = HubProcess::start(&bin, &tmp.0)?;
            let s = h.socket.clone();
            hub = Some(h);
            s
        }
    };
    let count = args.messages.unwrap_or(DEFAULT_MESSAGES).max(1);
    let programs = program_list(args, &exe);
    let mut report = BindingsReport {
        schema: "ipchub-bench-bindings/1",
        messages_per_round: count,
        repetitions: args.repetitions,
        hub: match &args.socket {
            Some(s) => format!("running hub at {}", s.display()),
            None => format!("started for the run on {}", socket.display()),
        },
        programs: programs.iter().map(describe).collect(),
        rows: Vec::new(),
    };
    for &size in &args.sizes.0 {
        for &t in &args.transports.0 {
            let rows = measure_all(&programs, &socket, t, size, args, count, &mut hub)?;
            report.rows.extend(rows);
        }
    }
    Ok(report)
}

/// The table people read.
pub fn text(r: &BindingsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ipchub-bench --bindings: publisher -> hub -> subscriber, each a separate process of the same client"
    );
    let _ = writeln!(
        s,
        "{} messages per round, median of {} rounds after a warm-up; hub {}",
        r.messages_per_round, r.repetitions, r.hub
    );
    for (name, how) in &r.programs {
        let _ = writeln!(s, "  {name:<7} {how}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:>6}  {:<7} {:>12} {:>9} {:>12}  {:>7}  checks",
        "size", "trans", "client", "msgs/s", "MB/s", "min..max k", "vs Rust"
    );
    for row in &r.rows {
        let label = size_label(row.size);
        match (&row.msgs_per_sec, &row.error) {
            (Some(m), _) => {
                let ratio = row
                    .ratio_to_rust
                    .map(|x| {
                        let bar = match row.target {
                            Some(t) if x >= t => " ok",
                            Some(_) => " BELOW 0.90",
                            None => "",
                        };
                        format!("{x:.2}x{bar}")
                    })
                    .unwrap_or_else(|| "-".into());
                let checks = if row.lost == 0 && row.out_of_order == 0 && row.bad_size == 0 {
                    format!("{} of {} in order", row.received, row.sent)
                } else {
                    format!(
                        "LOST {} / out of order {} / bad size {}",
                        row.lost, row.out_of_order, row.bad_size
                    )
                };
                let _ = writeln!(
                    s,
                    "{label:<8} {:>6}  {:<7} {:>12.0} {:>9.1} {:>5.0}..{:<6.0} {:>7}  {checks}",
                    row.transport,
                    row.client,
                    m.median,
                    row.mb_per_sec.unwrap_or(0.0),
                    m.min / 1e3,
                    m.max / 1e3,
                    ratio
                );
            }
            (None, e) => {
                let _ = writeln!(
                    s,
                    "{label:<8} {:>6}  {:<7} {}",
                    row.transport,
                    row.client,
                    e.as_deref().unwrap_or("no figure")
                );
            }
        }
    }
    s
}

/// `--bindings`: report, exit status (a client that failed fails the run;
/// one not given does not).
pub fn main(args: &Args) -> ExitCode {
    let r = match run(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipchub-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::print_report(args, &r, text);
    let failed = r.rows.iter().any(|row| {
        row.error
            .as_deref()
            .is_some_and(|e| e.starts_with("failed"))
            || row.lost > 0
            || row.out_of_order > 0
            || row.bad_size > 0
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
