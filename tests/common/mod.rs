//! Test harness: a real `ipchubd` on a temporary runtime directory, plus
//! clients, so each test reads as a few lines of intent.
#![allow(dead_code)]

pub mod deadline;
#[allow(unused_imports)]
use deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipchub::client::{Client, Options};
use ipchub::hub::TransportKind;
use ipchub::wire::{self, FrameType};

pub const IPCHUBD: &str = env!("CARGO_BIN_EXE_ipchubd");
pub const IPCHUBCTL: &str = env!("CARGO_BIN_EXE_ipchubctl");

/// `program` as user nobody (group nogroup, no supplementary groups),
/// through setpriv (util-linux): how tests act as another local user.
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(program);
    c
}

/// A running hub that is killed when dropped.
pub struct Hub {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
}

impl Hub {
    /// A hub with built-in defaults.
    pub fn start() -> Hub {
        Hub::start_with("")
    }

    /// A hub with this configuration text.
    pub fn start_with(config: &str) -> Hub {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-test")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("ipchub.sock");
        let cfg = dir.path().join("ipchub.toml");
        // Test hubs never join the machine's real system bus (two would
        // fight over org.ipchub); D-Bus tests configure their own bus.
        let config = if config.contains("[dbus]") {
            config.to_string()
        } else {
            format!("{config}\n[dbus]\nenabled = false\n")
        };
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("ipchubd.log");
        let mut hub = Hub {
            child: None,
            dir,
            socket,
            config: cfg,
            log,
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        self.spawn_with_nofile(None)
    }

    /// A hub that other users can reach: the test's temporary directory is
    /// private by default, so it is opened (0755) for tests that act as
    /// another uid.
    pub fn start_shared(config: &str) -> Hub {
        let hub = Hub::start_with(config);
        std::fs::set_permissions(
            hub.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        hub
    }

    /// A hub whose descriptor limit is `nofile` (to run it out of them).
    pub fn start_with_nofile(config: &str, nofile: u64) -> Hub {
        let mut hub = Hub::start_with(config);
        hub.kill9();
        hub.spawn_with_nofile(Some(nofile));
        hub
    }

    fn spawn_with_nofile(&mut self, nofile: Option<u64>) {
        let mut cmd = match nofile {
            // prlimit (util-linux) sets the limit and execs the daemon in place.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(IPCHUBD);
                c
            }
            None => Command::new(IPCHUBD),
        };
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .env("IPCHUB_LOG", "debug")
            // Each test hub keeps its state (channel logs, sequence
            // reservations) in its own directory, never in /var/lib/ipchub;
            // a restarted hub finds it again.
            .env(
                "STATE_DIRECTORY",
                self.socket
                    .parent()
                    .expect("socket in a directory")
                    .join("state"),
            )
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("start ipchubd");
        self.child = Some(child);
        let t0 = Instant::now();
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ipchubd exited at start ({status}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "hub socket never accepted:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn options(&self, t: TransportKind) -> Options {
        Options {
            socket: Some(self.socket.clone()),
            transport: t,
            name: "test".into(),
            ..Options::default()
        }
    }

    pub fn client(&self) -> Client {
        self.client_via(TransportKind::Socket)
    }

    pub fn client_via(&self, t: TransportKind) -> Client {
        Client::connect(&self.options(t))
            .unwrap_or_else(|e| panic!("connect via {}: {e}\nlog:\n{}", t.name(), self.log()))
    }

    /// A subscriber on `pattern`, handshake and subscription confirmed.
    pub fn subscriber(&self, t: TransportKind, pattern: &str) -> Client {
        let mut c = self.client_via(t);
        c.subscribe(pattern).unwrap();
        c
    }

    /// Descriptors the hub process has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The hub's per-client IPC objects: its FIFOs and the message queues
    /// named after its pid, as paths.
    pub fn ipc_objects(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("fifo"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let prefix = format!("ipchub.{}.", self.pid());
        if let Ok(d) = std::fs::read_dir("/dev/mqueue") {
            v.extend(
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path()),
            );
        }
        v.sort();
        v
    }

    /// Wait until `channel` has `n` subscribers (e.g. an `ipchubctl sub`
    /// started in the background has subscribed).
    pub fn wait_subscribers(&self, channel: &str, n: usize) {
        let mut probe = self.client();
        wait_for(
            || {
                probe
                    .stats()
                    .unwrap()
                    .channels
                    .iter()
                    .any(|c| c.name == channel && c.subscribers == n)
            },
            &format!("{n} subscribers on '{channel}'"),
        );
    }

    /// `ipchubctl` pointed at this hub.
    pub fn ctl(&self) -> Command {
        let mut c = Command::new(IPCHUBCTL);
        c.env("IPCHUB_SOCKET", &self.socket);
        c
    }

    /// A raw connection that has done the HELLO/WELCOME handshake.
    pub fn raw(&self) -> Raw {
        let mut r = Raw::connect(&self.socket);
        r.send_frame(
            FrameType::Hello,
            0,
            "",
            b"version=1\ntransport=socket\nname=raw\n",
            0,
        );
        let f = r.read_frame().expect("WELCOME");
        assert_eq!(f.0, FrameType::Welcome);
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        wait_child(&mut child, Duration::from_secs(10))
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait_within(LIMIT).unwrap();
    }

    /// Start again on the same socket and config.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait_within(LIMIT);
        }
        if std::thread::panicking() {
            eprintln!("--- ipchubd log ---\n{}", self.log());
        }
    }
}

pub fn wait_child(child: &mut Child, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `cond` until true, failing the test after 10 s.
pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > Duration::from_secs(10) {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw protocol connection, for bad input and byte-exact checks.
pub struct Raw {
    pub sock: UnixStream,
    buf: Vec<u8>,
}

pub type RawFrame = (FrameType, u64, String, Vec<u8>);

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    /// Write `bytes`. A hub that refuses what it has seen so far (a HELLO
    /// over its size limit, say) may hang up before the rest is written:
    /// that is not an error here, what it answered is read afterwards.
    pub fn send(&mut self, bytes: &[u8]) {
        match self.sock.write_all(bytes) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => panic!("write to the hub: {e}"),
        }
    }

    pub fn send_frame(
        &mut self,
        ty: FrameType,
        flags: u8,
        channel: &str,
        payload: &[u8],
        seq: u64,
    ) {
        let mut v = Vec::new();
        wire::encode(&mut v, ty, flags, 0, channel, payload, 0, seq);
        self.send(&v);
    }

    /// The next frame, or None at end of stream.
    pub fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((f, used)) =
                wire::decode(&self.buf, u32::MAX).expect("hub sent a malformed frame")
            {
                let out = (
                    f.header.ty,
                    f.header.seq,
                    f.channel.to_string(),
                    f.payload.to_vec(),
                );
                self.buf.drain(..used);
                return Some(out);
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Read until the hub closes; returns every frame seen.
    pub fn read_to_end(&mut self) -> Vec<RawFrame> {
        let mut v = Vec::new();
        while let Some(f) = self.read_frame() {
            v.push(f);
        }
        v
    }
}

/// The text of the first ERROR frame in `frames`.
pub fn error_text(frames: &[RawFrame]) -> Option<(u16, String)> {
    frames
        .iter()
        .find(|f| f.0 == FrameType::Error)
        .map(|f| wire::frame::parse_error_payload(&f.3))
}
