//! Planned restarts keep shm clients too (issue #16): their control
//! connection, their two shared memory rings and two eventfds are handed to
//! the next hub, by SIGUSR2 (re-execution) and through systemd's fd store
//! (SIGTERM under a service manager; here a fake one in the test: it takes
//! `FDSTORE=1` descriptors by name, answers `BARRIER=1`, honours
//! `FDSTOREREMOVE=1`, and starts the next hub with them in `LISTEN_FDS`).
//! The clients see nothing: no HubLost, no HubBack, every message once, in
//! order, with the block policy; and repeated restarts leave nothing
//! behind in the hub (descriptors, shared memory) or in the store.
//!
//! Each runs twice: with channel rings (the default: exact channels go
//! through the channel's broadcast ring, which is handed over too, with its
//! slots, its endpoint and the per-uid ring charges) and without
//! (`shm.channel_rings = false`: they go over each client's own rings).

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_for, IPCHUBD};
use ipchub::client::{Client, Event, Options};
use ipchub::hub::TransportKind::{self, *};

const WAIT: Duration = Duration::from_secs(20);
const NO_RINGS: &str =
    "[queue]\noverflow = \"block\"\n[shm]\nchannel_rings = false\n[dbus]\nenabled = false\n";
const RINGS: &str =
    "[queue]\noverflow = \"block\"\n[shm]\nchannel_rings = true\n[dbus]\nenabled = false\n";

/// What systemd's store holds: `(FDNAME, descriptor)` in arrival order.
type Store = Arc<Mutex<Vec<(String, OwnedFd)>>>;

/// A service manager in a thread, on `NOTIFY_SOCKET`: keeps what
/// `FDSTORE=1` sends under its `FDNAME=`, forgets on `FDSTOREREMOVE=1`,
/// and answers `BARRIER=1` by closing the descriptor that came with it.
struct Manager {
    path: PathBuf,
    store: Store,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Manager {
    fn start(dir: &Path) -> Manager {
        let path = dir.join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let store: Store = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !stop.load(Ordering::Relaxed) {
                    let r = match ipchub::ipchub_os::sys::recv_with_fds(
                        sock.as_fd(),
                        &mut buf,
                        nix::sys::socket::MsgFlags::empty(),
                    ) {
                        Ok(r) => r,
                        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                        Err(e) => panic!("fake manager: {e}"),
                    };
                    let text = String::from_utf8_lossy(&buf[..r.bytes]).into_owned();
                    let has = |l: &str| text.lines().any(|x| x == l);
                    let name = text
                        .lines()
                        .find_map(|l| l.strip_prefix("FDNAME="))
                        .map(str::to_string);
                    let mut s = store.lock().unwrap();
                    if has("BARRIER=1") {
                        drop(r.fds);
                    } else if has("FDSTOREREMOVE=1") {
                        let name = name.expect("FDSTOREREMOVE names");
                        s.retain(|(n, _)| *n != name);
                    } else if has("FDSTORE=1") {
                        let name = name.expect("FDSTORE names");
                        for fd in r.fds {
                            s.push((name.clone(), fd));
                        }
                    }
                }
            })
        };
        Manager {
            path,
            store,
            stop,
            thread: Some(thread),
        }
    }

    fn names(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a test restarts its hub.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// SIGUSR2: the same process executes itself again.
    Sigusr2,
    /// SIGTERM into the fd store, then a new process started with it.
    FdStore,
}

/// A hub under the fake manager (`NOTIFY_SOCKET`, `IPCHUB_FDSTORE`), killed
/// when dropped.
struct ManagedHub {
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    manager: Manager,
    /// Hubs started so far (each logs "ipchubd ready" once per image).
    starts: usize,
}

impl ManagedHub {
    fn start(config: &str) -> ManagedHub {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-hoshm")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("ipchub.sock");
        let cfg = dir.path().join("ipchub.toml");
        std::fs::write(&cfg, config).unwrap();
        let manager = Manager::start(dir.path());
        let log = dir.path().join("ipchubd.log");
        let mut hub = ManagedHub {
            socket,
            config: cfg,
            log,
            child: None,
            manager,
            starts: 0,
            dir,
        };
        hub.spawn(Vec::new());
        hub
    }

    /// Start ipchubd with `passed` as systemd passes descriptors: numbers
    /// 3.. in order, `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` = its pid
    /// (bash places them, then executes the daemon in its own process).
    fn spawn(&mut self, passed: Vec<(String, OwnedFd)>) {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        // The passed descriptors lose close-on-exec until the child has
        // them: no other test's child may inherit them meanwhile.
        static SPAWN: Mutex<()> = Mutex::new(());
        let guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let mut script = String::new();
        let n = passed.len();
        for (i, (_, fd)) in passed.iter().enumerate() {
            let raw = fd.as_raw_fd();
            assert!(
                raw > 2 && raw < 600,
                "descriptor {raw} out of the shuffle's way"
            );
            fcntl(raw, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
            script += &format!("exec {}<&{raw}\n", 600 + i);
        }
        for (_, fd) in &passed {
            script += &format!("exec {}<&-\n", fd.as_raw_fd());
        }
        for i in 0..n {
            script += &format!("exec {}<&{}\nexec {}<&-\n", 3 + i, 600 + i, 600 + i);
        }
        if n > 0 {
            let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
            script += &format!(
                "export LISTEN_PID=$$ LISTEN_FDS={n} LISTEN_FDNAMES={}\n",
                names.join(":")
            );
        }
        script += "exec \"$@\"\n";
        let child = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .arg("bash")
            .arg(IPCHUBD)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .env("IPCHUB_LOG", "debug")
            .env("STATE_DIRECTORY", self.dir.path().join("state"))
            .env("NOTIFY_SOCKET", &self.manager.path)
            .env("IPCHUB_FDSTORE", "64")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .expect("start ipchubd");
        // Our copies: the child has its own now.
        drop(passed);
        drop(guard);
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready(self.starts);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self, n: usize) {
        let t0 = Instant::now();
        while self.log().matches("ipchubd ready").count() < n {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ipchubd exited ({st}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < WAIT,
                "ready #{n} never came:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn options(&self, t: TransportKind) -> Options {
        Options {
            socket: Some(self.socket.clone()),
            transport: t,
            name: "test".into(),
            ..Options::default()
        }
    }

    fn client_via(&self, t: TransportKind) -> Client {
        Client::connect(&self.options(t))
            .unwrap_or_else(|e| panic!("connect via {}: {e}\nlog:\n{}", t.name(), self.log()))
    }

    fn subscriber(&self, t: TransportKind, pattern: &str) -> Client {
        let mut c = self.client_via(t);
        c.subscribe(pattern).unwrap();
        c
    }

    /// Restart the hub the way `how` says; back once the new image is ready.
    fn restart(&mut self, how: Restart) {
        match how {
            Restart::Sigusr2 => {
                signal(self.pid(), nix::sys::signal::SIGUSR2);
                self.starts += 1;
                self.wait_ready(self.starts);
            }
            Restart::FdStore => {
                let mut child = self.child.take().unwrap();
                signal(child.id() as i32, nix::sys::signal::SIGTERM);
                let st = child.wait_within(WAIT).unwrap();
                assert!(st.success(), "stopped into the store: {st}\n{}", self.log());
                // What systemd passes: copies; the store keeps its own until
                // the new hub says FDSTOREREMOVE=1.
                let passed: Vec<(String, OwnedFd)> = self
                    .manager
                    .store
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(n, fd)| (n.clone(), fd.try_clone().unwrap()))
                    .collect();
                assert!(
                    passed.iter().any(|(n, _)| n == "state"),
                    "no state in the store: {:?}\n{}",
                    self.manager.names(),
                    self.log()
                );
                self.spawn(passed);
                let m = &self.manager;
                wait_for(|| m.names().is_empty(), "the store emptied by the new hub");
            }
        }
    }
}

impl Drop for ManagedHub {
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

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Nothing but messages on `channel`, numbered 0.., in order, each once;
/// then nothing at all (no HubLost, no HubBack, no MISSED).
fn expect_stream(c: &mut Client, n: u32, who: &str) {
    for i in 0..n {
        match c.next_event(Some(WAIT)) {
            Ok(Some(Event::Message(m))) => {
                assert_eq!(m.payload, i.to_le_bytes(), "{who}: message {i}")
            }
            other => panic!("{who}: at {i}: {other:?}"),
        }
    }
    assert_eq!(c.poll_events().unwrap(), None, "{who}: after the stream");
}

/// Publish `n` numbered messages on `channel` from `p`, pausing at each
/// gate until the test opens it, so the restarts fall mid-stream however
/// loaded the machine is. Returns what the publisher saw besides its
/// publishes (must be nothing: no HubLost, no HubBack).
fn publisher(
    mut p: Client,
    channel: &'static str,
    n: u32,
    progress: Arc<AtomicU32>,
    gate: Arc<AtomicU32>,
) -> std::thread::JoinHandle<Vec<Event>> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        for i in 0..n {
            while i >= gate.load(Ordering::Acquire) {
                assert!(t0.elapsed() < LIMIT, "gate never opened");
                std::thread::sleep(Duration::from_millis(1));
            }
            p.publish(channel, &i.to_le_bytes()).unwrap();
            if i % 100 == 99 {
                p.flush().unwrap();
                progress.store(i + 1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        p.flush().unwrap();
        // A confirmed publish: the hub took every earlier one.
        p.publish_confirmed("stream-end", b"").unwrap();
        let mut other = Vec::new();
        while let Some(ev) = p.poll_events().unwrap() {
            other.push(ev);
        }
        other
    })
}

/// An shm publisher streams to an shm and a socket subscriber, and a socket
/// publisher to an shm subscriber, through two restarts by `how`; the
/// subscribers read only at the end (their messages wait in the hub's
/// queues and in their shm rings, and cross the restarts there).
fn shm_streams_through(how: Restart, config: &str) {
    let mut hub = ManagedHub::start(config);
    const N: u32 = 10_000;
    let mut subs: Vec<(Client, &str)> = vec![
        (hub.subscriber(Shm, "from-shm"), "shm <- shm"),
        (hub.subscriber(Socket, "from-shm"), "socket <- shm"),
        (hub.subscriber(Shm, "from-socket"), "shm <- socket"),
    ];
    let gate = Arc::new(AtomicU32::new(2000));
    let progress: Vec<Arc<AtomicU32>> = (0..2).map(|_| Arc::default()).collect();
    let pubs = [
        publisher(
            hub.client_via(Shm),
            "from-shm",
            N,
            progress[0].clone(),
            gate.clone(),
        ),
        publisher(
            hub.client_via(Socket),
            "from-socket",
            N,
            progress[1].clone(),
            gate.clone(),
        ),
    ];
    for (at, next) in [(2000, 6000), (6000, N)] {
        wait_for(
            || progress.iter().all(|p| p.load(Ordering::Relaxed) >= at),
            "publishers' progress",
        );
        hub.restart(how);
        assert!(
            progress.iter().all(|p| p.load(Ordering::Relaxed) < N),
            "restart mid-stream"
        );
        gate.store(next, Ordering::Release);
    }
    for (p, who) in pubs.into_iter().zip(["shm publisher", "socket publisher"]) {
        let other = p.join().unwrap();
        assert!(other.is_empty(), "{who} saw {other:?}");
    }
    for (s, who) in subs.iter_mut() {
        expect_stream(s, N, who);
    }
    let log = hub.log();
    assert!(log.contains("clients kept"), "{log}");
    assert!(!log.contains("hub restarting"), "{log}");
    if config == RINGS {
        // Both channels' rings went along, twice each, and none retired.
        assert_eq!(log.matches("channel ring taken over").count(), 4, "{log}");
        assert!(!log.contains("retired"), "{log}");
    }
}

#[test]
fn shm_clients_stream_through_sigusr2_restarts_once_in_order_without_reconnecting() {
    shm_streams_through(Restart::Sigusr2, NO_RINGS);
}

#[test]
fn shm_clients_stream_through_fd_store_restarts_once_in_order_without_reconnecting() {
    shm_streams_through(Restart::FdStore, NO_RINGS);
}

#[test]
fn channel_rings_stream_through_sigusr2_restarts_once_in_order_without_reconnecting() {
    shm_streams_through(Restart::Sigusr2, RINGS);
}

#[test]
fn channel_rings_stream_through_fd_store_restarts_once_in_order_without_reconnecting() {
    shm_streams_through(Restart::FdStore, RINGS);
}

/// Descriptors of `pid` by kind: memfds (shm rings, state), eventfds, and
/// all; and the shared memory it maps from memfds, in KiB.
fn footprint(pid: i32) -> (usize, usize, usize, u64) {
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    let mut all = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        all += 1;
        let t = std::fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if t.starts_with("/memfd:") {
            *kinds.entry("memfd").or_default() += 1;
        } else if t == "anon_inode:[eventfd]" {
            *kinds.entry("eventfd").or_default() += 1;
        }
    }
    // Size of every memfd mapping (smaps: one "Size:" after each header).
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut kib = 0;
    let mut in_memfd = false;
    for l in smaps.lines() {
        if l.contains(" /memfd:") {
            in_memfd = true;
        } else if let Some(v) = l.strip_prefix("Size:") {
            if in_memfd {
                kib += v
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap();
            }
            in_memfd = false;
        }
    }
    (kinds["memfd"], kinds["eventfd"], all, kib)
}

/// What each of `pid`'s descriptors is, sorted (for a failure message).
fn fd_listing(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let t = std::fs::read_link(e.path()).unwrap_or_default();
            let t = t.to_string_lossy();
            // Numbers of sockets and pipes differ between rounds.
            t.split(':').next().unwrap_or("").to_string() + t.strip_prefix("/memfd").unwrap_or("")
        })
        .collect();
    v.sort();
    v
}

/// Restarts in a loop with shm clients connected: the hub holds the same
/// descriptors and maps the same shared memory after each, the clients
/// never notice, and a message still goes through after every one.
fn no_growth(how: Restart, config: &str) {
    let mut hub = ManagedHub::start(config);
    let mut sub = hub.subscriber(Shm, "loop");
    let mut p = hub.client_via(Shm);
    // Both in their rings (when there are rings) before the first restart:
    // what a restart hands over is then the same every round.
    assert_eq!(p.publish_confirmed("loop", b"warm-up").unwrap(), 1);
    let m = sub.recv(Some(WAIT)).unwrap().expect("warm-up");
    assert_eq!(m.payload, b"warm-up");
    // Counted from the first restart on: the first hub started
    // differently (no descriptors passed, nothing inherited).
    let mut seen = Vec::new();
    let mut listings = Vec::new();
    for round in 0..8u32 {
        hub.restart(how);
        assert_eq!(
            p.publish_confirmed("loop", &round.to_le_bytes()).unwrap(),
            1
        );
        let m = sub
            .recv(Some(WAIT))
            .unwrap()
            .expect("message after restart");
        assert_eq!(m.payload, round.to_le_bytes());
        seen.push(footprint(hub.pid()));
        listings.push(fd_listing(hub.pid()));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "(memfds, eventfds, descriptors, memfd KiB) after each round: {seen:?}\nfirst: {:?}\nlast: {:?}",
        listings[0],
        listings[listings.len() - 1]
    );
    // Two shm clients: two rings each, mapped, and two eventfds each.
    assert!(seen[0].0 >= 4 && seen[0].1 >= 4, "{seen:?}");
    for c in [&mut sub, &mut p] {
        assert_eq!(c.poll_events().unwrap(), None, "no reconnection");
    }
    assert_eq!(hub.log().matches("hand-over state unusable").count(), 0);
}

#[test]
fn repeated_sigusr2_restarts_with_shm_clients_grow_nothing() {
    no_growth(Restart::Sigusr2, NO_RINGS);
}

#[test]
fn repeated_fd_store_restarts_with_shm_clients_grow_nothing() {
    no_growth(Restart::FdStore, NO_RINGS);
}

#[test]
fn repeated_sigusr2_restarts_with_channel_rings_grow_nothing() {
    no_growth(Restart::Sigusr2, RINGS);
}

#[test]
fn repeated_fd_store_restarts_with_channel_rings_grow_nothing() {
    no_growth(Restart::FdStore, RINGS);
}

/// The per-uid ring charges cross a restart: with room for one ring per
/// uid, a ring held before the restart still counts after it (a second
/// channel is relayed, not given a ring), and is released when its last
/// participant leaves (a third channel then gets one).
fn ring_charges_cross(how: Restart) {
    let config = RINGS.replace(
        "[shm]\n",
        "[shm]\nmax_rings_per_uid = 1\nmax_rings_per_client = 1\n",
    );
    let mut hub = ManagedHub::start(&config);
    let mut a = hub.subscriber(Shm, "charge/a");
    let mut pa = hub.client_via(Shm);
    assert_eq!(pa.publish_confirmed("charge/a", b"1").unwrap(), 1);
    assert_eq!(a.recv(Some(WAIT)).unwrap().unwrap().payload, b"1");
    let created = |hub: &ManagedHub| hub.log().matches("channel ring created").count();
    assert_eq!(created(&hub), 1);
    hub.restart(how);
    // The same uid: refused a second ring, relayed instead.
    let mut b = hub.subscriber(Shm, "charge/b");
    let mut pb = hub.client_via(Socket);
    assert_eq!(pb.publish_confirmed("charge/b", b"2").unwrap(), 1);
    assert_eq!(b.recv(Some(WAIT)).unwrap().unwrap().payload, b"2");
    assert_eq!(created(&hub), 1, "{}", hub.log());
    assert!(
        hub.log()
            .contains("channel rings already (limit shm.max_rings_per_uid)"),
        "{}",
        hub.log()
    );
    // The ring still works, and once its participants go, its charge too.
    assert_eq!(pa.publish_confirmed("charge/a", b"3").unwrap(), 1);
    assert_eq!(a.recv(Some(WAIT)).unwrap().unwrap().payload, b"3");
    for c in [&mut a, &mut pa] {
        assert_eq!(c.poll_events().unwrap(), None, "no reconnection");
    }
    drop((a, pa));
    let log_has_removed = |hub: &ManagedHub| hub.log().contains("channel ring removed");
    wait_for(
        || log_has_removed(&hub),
        "the ring removed with its participants",
    );
    let mut c = hub.subscriber(Shm, "charge/c");
    let mut pc = hub.client_via(Socket);
    assert_eq!(pc.publish_confirmed("charge/c", b"4").unwrap(), 1);
    assert_eq!(c.recv(Some(WAIT)).unwrap().unwrap().payload, b"4");
    assert_eq!(created(&hub), 2, "{}", hub.log());
}

#[test]
fn per_uid_ring_charges_cross_a_sigusr2_restart() {
    ring_charges_cross(Restart::Sigusr2);
}

#[test]
fn per_uid_ring_charges_cross_an_fd_store_restart() {
    ring_charges_cross(Restart::FdStore);
}

/// A ring the new hub will not serve (here: its configuration turned
/// channel rings off meanwhile) is retired, not dropped with its clients:
/// they stay connected, its reader becomes an ordinary subscriber, its
/// writer publishes through the hub.
#[test]
fn a_ring_the_new_hub_refuses_is_retired_and_nobody_reconnects() {
    let mut hub = ManagedHub::start(RINGS);
    let mut sub = hub.subscriber(Shm, "refused");
    let mut p = hub.client_via(Shm);
    assert_eq!(p.publish_confirmed("refused", b"before").unwrap(), 1);
    assert_eq!(sub.recv(Some(WAIT)).unwrap().unwrap().payload, b"before");
    std::fs::write(&hub.config, NO_RINGS).unwrap();
    hub.restart(Restart::Sigusr2);
    let log = hub.log();
    assert!(
        log.contains("handed over but not taken over, retired"),
        "{log}"
    );
    for i in 0..100u32 {
        p.publish("refused", &i.to_le_bytes()).unwrap();
    }
    p.flush().unwrap();
    for i in 0..100u32 {
        let m = sub
            .recv(Some(WAIT))
            .unwrap()
            .expect("relayed after the restart");
        assert_eq!(m.payload, i.to_le_bytes());
    }
    for c in [&mut sub, &mut p] {
        assert_eq!(c.poll_events().unwrap(), None, "no reconnection");
    }
}

/// Small rings, read while they are written: writers wait for space and
/// readers for data (wait marks armed in the rings, wake-ups owed) at the
/// moment of each restart. The stream still arrives whole, in order,
/// once, and nobody sees anything else.
fn full_rings_keep_flowing(how: Restart) {
    let config = RINGS.replace(
        "[shm]\n",
        "[hub]\nmax_message_size = 1024\n[shm]\nchannel_ring_size = 8192\nring_size = 8192\n",
    );
    let mut hub = ManagedHub::start(&config);
    const N: u32 = 20_000;
    let readers: Vec<std::thread::JoinHandle<()>> = [
        (hub.subscriber(Shm, "full"), "shm reader"),
        (hub.subscriber(Socket, "full"), "socket reader"),
    ]
    .into_iter()
    .map(|(mut c, who)| {
        std::thread::spawn(move || {
            expect_stream(&mut c, N, who);
        })
    })
    .collect();
    let gate = Arc::new(AtomicU32::new(5000));
    let progress = Arc::new(AtomicU32::new(0));
    let p = publisher(
        hub.client_via(Shm),
        "full",
        N,
        progress.clone(),
        gate.clone(),
    );
    for (at, next) in [(5000, 12_000), (12_000, N)] {
        wait_for(
            || progress.load(Ordering::Relaxed) >= at,
            "publisher's progress",
        );
        // Let it hit the gate with the rings full behind it.
        std::thread::sleep(Duration::from_millis(20));
        gate.store(next, Ordering::Release);
        hub.restart(how);
    }
    let other = p.join().unwrap();
    assert!(other.is_empty(), "publisher saw {other:?}");
    for r in readers {
        r.join().unwrap();
    }
    let log = hub.log();
    assert_eq!(log.matches("channel ring taken over").count(), 2, "{log}");
    assert!(!log.contains("retired"), "{log}");
}

#[test]
fn full_channel_rings_keep_flowing_through_sigusr2_restarts() {
    full_rings_keep_flowing(Restart::Sigusr2);
}

#[test]
fn full_channel_rings_keep_flowing_through_fd_store_restarts() {
    full_rings_keep_flowing(Restart::FdStore);
}

/// The hub's own state crosses both restart paths (issue #16): counters
/// continue (a channel ring's direct publishes, which the ring itself
/// counts on in shared memory, are counted once, not again by the new
/// hub), a retained value and a memory history too, numbers unchanged.
fn hub_state_crosses(how: Restart) {
    use ipchub::client::{PublishOptions, Replay, SubscribeOptions};
    let config = format!("{RINGS}\n[[channel]]\npattern = \"log/#\"\nhistory_messages = 50\n");
    let mut hub = ManagedHub::start(&config);
    let mut shm_sub = hub.subscriber(Shm, "from-shm");
    let mut sock_sub = hub.subscriber(Socket, "from-shm");
    let mut p = hub.client_via(Shm);
    const N: u32 = 200;
    for i in 0..N {
        p.publish("from-shm", &i.to_le_bytes()).unwrap();
    }
    p.flush().unwrap();
    for s in [&mut shm_sub, &mut sock_sub] {
        expect_stream(s, N, "before");
    }
    let mut q = hub.client_via(Socket);
    q.publish_retained(
        "door",
        b"closed",
        PublishOptions {
            ack: true,
            priority: 0,
        },
    )
    .unwrap();
    for i in 1..=30u32 {
        q.publish("log/a", i.to_string().as_bytes()).unwrap();
    }
    q.publish_confirmed("log/a", b"31").unwrap();
    let published = |c: &mut Client| {
        let s = c.stats().unwrap();
        let ch = s.channels.iter().find(|c| c.name == "from-shm").cloned();
        (s.totals, ch.map(|c| (c.published, c.delivered)))
    };
    // Everything counted before the restart (the hub counts a ring's
    // direct publishes when it reads the ring).
    wait_for(
        || published(&mut q).1.is_some_and(|(p, _)| p == u64::from(N)),
        "direct publishes counted",
    );
    let before = published(&mut q);
    hub.restart(how);
    assert!(
        hub.log().contains("channel ring taken over"),
        "{}",
        hub.log()
    );
    let mut q = hub.client_via(Socket);
    let after = published(&mut q);
    assert_eq!(after.1, before.1, "{how:?}: channel counters");
    assert_eq!(
        (after.0.messages_in, after.0.messages_out, after.0.bytes_in),
        (
            before.0.messages_in,
            before.0.messages_out,
            before.0.bytes_in
        ),
        "{how:?}: totals"
    );
    let mut r = hub.client_via(Pipe);
    r.subscribe("door").unwrap();
    let m = r.recv(Some(WAIT)).unwrap().expect("retained value");
    assert_eq!((&m.payload[..], m.retained), (&b"closed"[..], true));
    r.subscribe_with(
        "log/a",
        SubscribeOptions {
            replay: Some(Replay::FromSeq(29)),
            ..Default::default()
        },
    )
    .unwrap();
    for want in 29..=31u64 {
        let m = r.recv(Some(WAIT)).unwrap().expect("replayed");
        assert_eq!(m.channel_seq, Some(want), "{how:?}");
    }
    // The ring goes on: counted once more per message, not twice.
    p.publish_confirmed("from-shm", &N.to_le_bytes()).unwrap();
    for s in [&mut shm_sub, &mut sock_sub] {
        let m = s.recv(Some(WAIT)).unwrap().expect("after the restart");
        assert_eq!(m.payload, N.to_le_bytes());
    }
    wait_for(
        || {
            published(&mut q)
                .1
                .is_some_and(|(p, _)| p == u64::from(N) + 1)
        },
        "the next direct publish counted once",
    );
}

#[test]
fn hub_state_crosses_a_sigusr2_restart() {
    hub_state_crosses(Restart::Sigusr2);
}

#[test]
fn hub_state_crosses_a_fd_store_restart() {
    hub_state_crosses(Restart::FdStore);
}
