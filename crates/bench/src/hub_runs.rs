//! Runs through the hub: the bench's own `ipchubd` (or one already running),
//! and publisher → hub → subscriber sessions over each transport, using the
//! client library exactly as applications do.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::measure::{Endpoint, RunError};
use super::proc::{EndpointSpec, Role, Worker, WorkerSpec};
use super::session::{Plan, Session};
use crate::client::{Client, ClientError, Event, Options};
use crate::wire::TransportKind;

/// How long a worker may take to connect and subscribe.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A hub client's job in a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubSpec {
    pub socket: PathBuf,
    pub transport: String,
    /// Channel to subscribe to.
    pub subscribe: String,
    /// Channel to publish on (echo only).
    pub publish: Option<String>,
    /// Busy-poll the channel rings this many microseconds before sleeping.
    #[serde(default)]
    pub busy_poll_us: Option<u64>,
}

/// A client plus the channel it publishes on.
struct HubEndpoint {
    client: Client,
    publish: Option<String>,
}

fn client_error(e: ClientError) -> RunError {
    match e {
        ClientError::Refused { text, .. } => RunError::unavailable(format!("hub refused: {text}")),
        ClientError::TooLarge { .. } => RunError::unavailable(e.to_string()),
        e => RunError::failed(e.to_string()),
    }
}

impl Endpoint for HubEndpoint {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let ch = self.publish.as_deref().expect("publishing endpoint");
        self.client.publish(ch, msg).map_err(client_error)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.client.flush().map_err(client_error)
    }

    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        let mut n = 0;
        let mut ev = self
            .client
            .next_event(Some(timeout))
            .map_err(client_error)?;
        // Then whatever else already arrived, without waiting again.
        while let Some(e) = ev {
            match e {
                Event::Message(m) => {
                    f(&m.payload);
                    // Its buffers take the next message's bytes: no
                    // allocation per message (Client::recycle).
                    self.client.recycle(m);
                    n += 1;
                }
                // Lost messages show up as gaps in the sequence numbers.
                Event::Missed(_) => {}
                Event::Error { code, text, .. } => {
                    return Err(RunError::failed(format!("hub error {code}: {text}")))
                }
                _ => {}
            }
            ev = self.client.poll_events().map_err(client_error)?;
        }
        Ok(n)
    }
}

fn transport(name: &str) -> Result<TransportKind, RunError> {
    TransportKind::parse(name).ok_or_else(|| RunError::failed(format!("unknown transport {name}")))
}

fn connect(socket: &Path, t: TransportKind, name: &str) -> Result<Client, RunError> {
    Client::connect(&Options {
        socket: Some(socket.to_path_buf()),
        transport: t,
        name: name.into(),
        // A measurement must not hide a lost hub.
        reconnect: crate::client::Reconnect::off(),
    })
    .map_err(|e| match e {
        // An old client or hub without this transport.
        ClientError::Protocol(p) if p.contains("not supported") => RunError::unavailable(p),
        e => client_error(e),
    })
}

/// A worker's end: connect, subscribe, and publish replies if echoing.
pub fn open_worker(spec: &HubSpec) -> Result<(Box<dyn Endpoint>, String), RunError> {
    let t = transport(&spec.transport)?;
    let mut client = connect(&spec.socket, t, "bench-worker")?;
    client.set_busy_poll(spec.busy_poll_us.map(Duration::from_micros));
    client.subscribe(&spec.subscribe).map_err(client_error)?;
    Ok((
        Box::new(HubEndpoint {
            client,
            publish: spec.publish.clone(),
        }),
        String::new(),
    ))
}

/// This process's end of a session through the hub at `socket` (UNIX
/// socket transport): publishes on `publish`, receives what `subscribe`
/// matches. For rows whose far end is not a hub client (the MQTT bridge).
pub fn endpoint(
    socket: &Path,
    name: &str,
    publish: String,
    subscribe: Option<&str>,
) -> Result<Box<dyn Endpoint>, RunError> {
    let mut client = connect(socket, TransportKind::Socket, name)?;
    if let Some(p) = subscribe {
        client.subscribe(p).map_err(client_error)?;
    }
    Ok(Box::new(HubEndpoint {
        client,
        publish: Some(publish),
    }))
}

/// A message queue carries one frame per message and the hub sizes its
/// queues by `fs.mqueue.msgsize_max`; a bigger frame cannot pass, so say so
/// up front rather than report the disconnect that follows.
fn check_fits(t: TransportKind, size: usize, channel: &str) -> Result<(), RunError> {
    if t != TransportKind::Mqueue {
        return Ok(());
    }
    let max: usize = std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192);
    let frame = crate::wire::HEADER_LEN + channel.len() + size;
    if frame > max {
        return Err(RunError::unavailable(format!(
            "a frame of {frame} bytes exceeds the hub's message queues (fs.mqueue.msgsize_max = {max})"
        )));
    }
    Ok(())
}

/// Publisher in this process, `plan.subscribers` sink workers.
pub fn throughput_session(
    exe: &Path,
    socket: &Path,
    t: TransportKind,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let channel = format!("bench/{}/{tag}/data", std::process::id());
    check_fits(t, size, &channel)?;
    let client = connect(socket, t, "bench-publisher")?;
    let mut workers = Vec::new();
    for i in 0..plan.subscribers as usize {
        let spec = WorkerSpec {
            role: Role::Sink,
            endpoint: EndpointSpec::Hub(HubSpec {
                socket: socket.to_path_buf(),
                transport: t.name().into(),
                subscribe: channel.clone(),
                publish: None,
                busy_poll_us: plan.busy_poll.map(|d| d.as_micros() as u64),
            }),
            size,
            cpu: plan.worker_cpu(i),
        };
        workers.push(Worker::spawn(exe, &spec, &[])?);
    }
    for w in &mut workers {
        w.ready(READY_TIMEOUT)?;
    }
    Ok(Session::new(
        Box::new(HubEndpoint {
            client,
            publish: Some(channel),
        }),
        workers,
    ))
}

/// Pinger in this process (publishes on ping, subscribed to pong), one echo
/// worker the other way round: two trips through the hub per round trip.
pub fn latency_session(
    exe: &Path,
    socket: &Path,
    t: TransportKind,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let base = format!("bench/{}/{tag}", std::process::id());
    let (ping, pong) = (format!("{base}/ping"), format!("{base}/pong"));
    check_fits(t, size, &ping)?;
    let mut client = connect(socket, t, "bench-pinger")?;
    client.set_busy_poll(plan.busy_poll);
    client.subscribe(&pong).map_err(client_error)?;
    let spec = WorkerSpec {
        role: Role::Echo,
        endpoint: EndpointSpec::Hub(HubSpec {
            socket: socket.to_path_buf(),
            transport: t.name().into(),
            subscribe: ping.clone(),
            publish: Some(pong),
            busy_poll_us: plan.busy_poll.map(|d| d.as_micros() as u64),
        }),
        size,
        cpu: plan.worker_cpu(0),
    };
    let mut w = Worker::spawn(exe, &spec, &[])?;
    w.ready(READY_TIMEOUT)?;
    Ok(Session::new(
        Box::new(HubEndpoint {
            client,
            publish: Some(ping),
        }),
        vec![w],
    ))
}

/// An `ipchubd` started for the run on a temporary socket, killed on drop.
pub struct HubProcess {
    child: Child,
    pub socket: PathBuf,
    /// Where its standard error (its log) goes.
    pub log: PathBuf,
}

impl HubProcess {
    /// Start `binary` with its defaults (overflow = block, so nothing is
    /// dropped), D-Bus off when this hub knows the key, logs to `dir`.
    pub fn start(binary: &Path, dir: &Path) -> Result<HubProcess, RunError> {
        HubProcess::start_with(binary, dir, "")
    }

    /// The same with `extra` (TOML keys of sections other than [log] and
    /// [dbus]) in its configuration: `--scale` raises the hub's limits.
    pub fn start_with(binary: &Path, dir: &Path, extra: &str) -> Result<HubProcess, RunError> {
        HubProcess::start_logging(binary, dir, extra, "warn")
    }

    /// The same, logging at `level` (`--restart` reads the successor's
    /// "clients kept" line, logged at info).
    pub fn start_logging(
        binary: &Path,
        dir: &Path,
        extra: &str,
        level: &str,
    ) -> Result<HubProcess, RunError> {
        if !binary.exists() {
            return Err(RunError::unavailable(format!(
                "no ipchubd at {} (build it, or give --hub-binary or --socket)",
                binary.display()
            )));
        }
        let socket = dir.join("ipchub.sock");
        let config = dir.join("ipchub.toml");
        let log = dir.join("ipchubd.log");
        // The bench hub must not claim the hub's name on the system bus; a
        // hub too old to know [dbus] has no D-Bus side at all.
        let quiet = format!("{extra}\n[log]\nlevel = \"{level}\"\n\n[dbus]\nenabled = false\n");
        std::fs::write(&config, &quiet)?;
        let known = Command::new(binary)
            .arg("--check-config")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !known {
            std::fs::write(&config, format!("{extra}\n[log]\nlevel = \"{level}\"\n"))?;
        }
        let child = Command::new(binary)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            // Its own state directory: a bench hub leaves nothing behind.
            .env("STATE_DIRECTORY", dir.join("state"))
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("IPCHUB_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| RunError::failed(format!("starting {}: {e}", binary.display())))?;
        let mut hub = HubProcess { child, socket, log };
        hub.wait_listening()?;
        Ok(hub)
    }

    fn wait_listening(&mut self) -> Result<(), RunError> {
        let t0 = Instant::now();
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                return Err(RunError::failed(format!(
                    "ipchubd exited at start ({st}): {}",
                    self.log_tail()
                )));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(RunError::failed(format!(
                    "ipchubd never listened on {}: {}",
                    self.socket.display(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its process id (the same after a planned restart: it re-executes).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running? (A crash mid-run explains every failure after it.)
    pub fn check(&mut self) -> Result<(), RunError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(st) => Err(RunError::failed(format!(
                "ipchubd died ({st}): {}",
                self.log_tail()
            ))),
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A socket client of the bench's own hub that fails instead of
/// reconnecting (a lost connection is a failed run, not a pause).
pub fn socket_client(socket: &Path, name: &str) -> Result<Client, RunError> {
    Client::connect(&Options {
        socket: Some(socket.to_path_buf()),
        transport: TransportKind::Socket,
        name: name.into(),
        reconnect: crate::client::Reconnect::off(),
    })
    .map_err(|e| RunError::failed(format!("connecting {name}: {e}")))
}

/// The ipchubd next to this executable: cargo puts all binaries of a
/// package in one directory.
pub fn default_hub_binary() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("ipchubd"))
}
