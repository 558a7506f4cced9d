//! Worker processes: the far end of every measurement runs in a separate
//! process, the bench itself re-executed as `ipchub-bench __worker SPEC`
//! ([`super::cli::WORKER_ARG`]).
//!
//! Processes rather than threads because that is how IPC is used: separate
//! address spaces, separate schedulers' view, no shared allocator. A worker
//! opens its end of the mechanism from the [`WorkerSpec`], says `Ready` on
//! stdout (one JSON [`Line`] per line), then sinks or echoes until the close
//! marker. Descriptors (pipe ends, socket pairs) are passed by inheritance
//! as fd 3, 4, …
//!
//! Every worker has a watchdog: a measurement that stalls past its deadline
//! gets its workers killed, which turns the measuring process's blocked read
//! or write into end of file or EPIPE, so the bench never hangs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::RawFd;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::measure::{self, Endpoint, RoundReport, RunError};
use super::{hub_runs, more_peers, peers, raw};

/// What a worker does with the messages it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Check and count them, report each round.
    Sink,
    /// Send each one back.
    Echo,
}

/// How the worker reaches the measuring process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EndpointSpec {
    Hub(hub_runs::HubSpec),
    Raw(raw::RawSpec),
    Dbus(peers::DbusSpec),
    Mqtt(peers::MqttSpec),
    /// iceoryx2, ZeroMQ, NATS.
    Peer(more_peers::PeerSpec),
}

/// A worker's whole job, passed as JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub role: Role,
    pub endpoint: EndpointSpec,
    pub size: usize,
    /// CPU to pin to (--pin).
    pub cpu: Option<usize>,
}

/// One line of a worker's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Line {
    /// Set up; the text is endpoint information (a port, a bus name).
    Ready(String),
    Round(RoundReport),
    Done {
        echoed: u64,
    },
    Error(String),
}

fn emit(line: &Line) {
    let mut out = std::io::stdout().lock();
    // The measuring process reads these; if it is gone, so is our purpose.
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(line).expect("serialisable")
    );
    let _ = out.flush();
}

/// The hidden subcommand's body.
pub fn worker_main(spec: &str) -> ExitCode {
    let spec: WorkerSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            emit(&Line::Error(format!("bad worker spec: {e}")));
            return ExitCode::FAILURE;
        }
    };
    match run_worker(&spec) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = match e {
                RunError::Unavailable(r) => format!("{UNAVAILABLE_PREFIX}{r}"),
                e => e.to_string(),
            };
            emit(&Line::Error(text));
            ExitCode::FAILURE
        }
    }
}

fn run_worker(spec: &WorkerSpec) -> Result<(), RunError> {
    if let Some(cpu) = spec.cpu {
        pin_to_cpu(cpu)?;
    }
    let (mut ep, info): (Box<dyn Endpoint>, String) = match &spec.endpoint {
        EndpointSpec::Hub(s) => hub_runs::open_worker(s)?,
        EndpointSpec::Raw(s) => raw::open_worker(s, spec.role, spec.size)?,
        EndpointSpec::Dbus(s) => peers::open_dbus_worker(s, spec.role)?,
        EndpointSpec::Mqtt(s) => peers::open_mqtt_worker(s, spec.size)?,
        EndpointSpec::Peer(s) => more_peers::open_worker(s, spec.size)?,
    };
    emit(&Line::Ready(info));
    match spec.role {
        Role::Sink => measure::sink(&mut *ep, spec.size, &mut |r| emit(&Line::Round(r.clone()))),
        Role::Echo => {
            let echoed = measure::echo(&mut *ep)?;
            emit(&Line::Done { echoed });
            Ok(())
        }
    }
}

/// Restrict the calling process to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<(), RunError> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)
        .and_then(|()| sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .map_err(|e| RunError::failed(format!("pinning to CPU {cpu}: {e}")))
}

/// A running worker, killed when dropped.
pub struct Worker {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    watchdog: Arc<Watchdog>,
}

/// Kills a worker that outlives its deadline; the lock makes sure it never
/// kills a pid after `Worker::drop` reaped it (the pid could be reused).
struct Watchdog {
    state: Mutex<WatchState>,
    stop: AtomicBool,
}

struct WatchState {
    deadline: Option<Instant>,
    reaped: bool,
    fired: bool,
}

impl Worker {
    /// Start `exe __worker SPEC` with `fds` as its descriptors 3, 4, ….
    pub fn spawn(exe: &Path, spec: &WorkerSpec, fds: &[RawFd]) -> Result<Worker, RunError> {
        let json = serde_json::to_string(spec).expect("serialisable");
        let mut cmd = Command::new(exe);
        cmd.arg(super::cli::WORKER_ARG)
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ipchub_os::sys::pass_fds_from_3(&mut cmd, fds.to_vec());
        let mut child = cmd
            .spawn()
            .map_err(|e| RunError::failed(format!("starting worker {}: {e}", exe.display())))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().expect("not poisoned");
                // Keep the tail only: it holds the reason.
                if s.len() > 8192 {
                    s.drain(..4096);
                }
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let watchdog = Arc::new(Watchdog {
            state: Mutex::new(WatchState {
                deadline: None,
                reaped: false,
                fired: false,
            }),
            stop: AtomicBool::new(false),
        });
        let w = watchdog.clone();
        let pid = child.id() as i32;
        std::thread::spawn(move || {
            while !w.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                let mut st = w.state.lock().expect("not poisoned");
                if st.reaped {
                    break;
                }
                if st.deadline.is_some_and(|d| Instant::now() >= d) {
                    // Our own un-reaped child (checked under the lock
                    // Worker::drop takes before reaping): the pid is its.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    st.fired = true;
                    st.deadline = None;
                }
            }
        });
        Ok(Worker {
            child,
            lines,
            stderr,
            watchdog,
        })
    }

    /// Kill the worker if it is still busy `limit` from now.
    pub fn arm(&self, limit: Duration) {
        self.watchdog.state.lock().expect("not poisoned").deadline = Some(Instant::now() + limit);
    }

    fn next_line(&mut self, timeout: Duration) -> Result<Line, RunError> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => serde_json::from_str(&l)
                .map_err(|e| RunError::failed(format!("worker said {l:?}: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(RunError::failed(format!(
                "worker silent for {timeout:?}{}",
                self.stderr_tail()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(self.death()),
        }
    }

    /// Why the worker went away.
    fn death(&mut self) -> RunError {
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        if self.watchdog.state.lock().expect("not poisoned").fired {
            return RunError::failed("round took longer than --round-timeout; worker killed");
        }
        RunError::failed(format!("worker exited ({status}){}", self.stderr_tail()))
    }

    fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().expect("not poisoned");
        let t = s.trim();
        if t.is_empty() {
            String::new()
        } else {
            let tail: String = t.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            format!(": {tail}")
        }
    }

    /// Wait for `Ready`; its text.
    pub fn ready(&mut self, timeout: Duration) -> Result<String, RunError> {
        match self.next_line(timeout)? {
            Line::Ready(info) => Ok(info),
            Line::Error(e) => Err(classify(e)),
            other => Err(RunError::failed(format!(
                "worker sent {other:?} before Ready"
            ))),
        }
    }

    /// Wait for the report of one round.
    pub fn round(&mut self, timeout: Duration) -> Result<RoundReport, RunError> {
        match self.next_line(timeout)? {
            Line::Round(r) => Ok(r),
            Line::Error(e) => Err(classify(e)),
            other => Err(RunError::failed(format!(
                "worker sent {other:?}, not a round"
            ))),
        }
    }

    /// After the close marker: wait for a clean exit.
    pub fn finish(&mut self, timeout: Duration) -> Result<(), RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    if let Ok(Line::Error(e)) = serde_json::from_str(&l) {
                        return Err(classify(e));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(RunError::failed(
                        "worker did not exit after the close marker",
                    ))
                }
            }
        }
        match self.child.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(RunError::failed(format!(
                "worker exited ({s}){}",
                self.stderr_tail()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The worker's own account of a failure, if it gave one (after the
    /// measuring side saw an error such as EPIPE).
    pub fn explain(&mut self) -> Option<RunError> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    if let Ok(Line::Error(e)) = serde_json::from_str(&l) {
                        return Some(classify(e));
                    }
                }
                // A clean exit explains nothing.
                Err(RecvTimeoutError::Disconnected) => {
                    let clean = self.child.wait().is_ok_and(|s| s.success());
                    return (!clean).then(|| self.death());
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }
}

/// Worker errors travel as text; "not available: …" keeps its meaning.
fn classify(e: String) -> RunError {
    match e.strip_prefix(UNAVAILABLE_PREFIX) {
        Some(r) => RunError::Unavailable(r.to_string()),
        None => RunError::Failed(e),
    }
}

/// How a worker marks an error that means "cannot run here".
pub const UNAVAILABLE_PREFIX: &str = "not available: ";

impl Drop for Worker {
    fn drop(&mut self) {
        let mut st = self.watchdog.state.lock().expect("not poisoned");
        let _ = self.child.kill();
        let _ = self.child.wait();
        st.reaped = true;
        self.watchdog.stop.store(true, Ordering::Relaxed);
    }
}
