//! Planned restart by SIGUSR2 (issue #16, behaviour 2, first step): the
//! hub re-executes itself in place with its listening socket handed over
//! in a sealed memfd; clients reconnect by themselves. A state the new
//! binary cannot read falls back to a fresh start, logged, never a crash.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, Hub, IPCHUBD};
use ipchub::client::{Client, Event};
use ipchub::daemon::handover;
use ipchub::hub::TransportKind::{self, *};

const TRANSPORTS: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue, Shm];
const WAIT: Duration = Duration::from_secs(20);

fn until(c: &mut Client, what: &str, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = WAIT.saturating_sub(t0.elapsed());
        assert!(!left.is_zero(), "no {what}; saw {seen:?}");
        match c.next_event(Some(left)) {
            Ok(Some(ev)) => {
                let done = want(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(None) => {}
            Err(e) => panic!("waiting for {what}: {e}; saw {seen:?}"),
        }
    }
}

fn sigusr2(hub: &Hub) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::SIGUSR2,
    )
    .unwrap();
}

/// The new image is up once its log says ready for the n-th time.
fn wait_ready(hub: &Hub, n: usize) {
    wait_for(
        || hub.log().matches("ipchubd ready").count() >= n,
        &format!("ready #{n}"),
    );
}

#[test]
fn sigusr2_restarts_in_place_keeping_the_socket_and_every_client_comes_back() {
    let hub = Hub::start();
    let pid = hub.pid();
    let mut subs: Vec<Client> = TRANSPORTS
        .iter()
        .map(|&t| hub.subscriber(t, "planned"))
        .collect();
    // Meanwhile, connecting never fails: the socket is handed over, never
    // closed, and connections wait in its backlog.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let opts = ipchub::client::Options {
            reconnect: ipchub::client::Reconnect::off(),
            ..hub.options(Socket)
        };
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = Client::connect(&opts) {
                    return Err(format!("connect #{n} failed: {e}"));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(n)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    sigusr2(&hub);
    for (s, t) in subs.iter_mut().zip(TRANSPORTS) {
        let evs = until(s, "HubLost", |e| matches!(e, Event::HubLost { .. }));
        assert!(
            matches!(evs.last(), Some(Event::HubLost { reason }) if reason.contains("restarting")),
            "{}: {evs:?}",
            t.name()
        );
        until(s, "HubBack", |e| matches!(e, Event::HubBack { .. }));
    }
    wait_ready(&hub, 2);
    stop.store(true, Ordering::Relaxed);
    let probes = prober.join().unwrap().unwrap();
    assert!(probes > 0);
    assert_eq!(hub.pid(), pid, "same process");
    assert!(
        hub.log().contains("took over the hand-over state"),
        "{}",
        hub.log()
    );
    // Everyone subscribed again; a publisher on each transport reaches all.
    hub.wait_subscribers("planned", 5);
    for &t in TRANSPORTS {
        let mut p = hub.client_via(t);
        assert_eq!(
            p.publish_confirmed("planned", t.name().as_bytes()).unwrap(),
            5
        );
        for s in subs.iter_mut() {
            let m = s.recv(Some(WAIT)).unwrap().expect("message after restart");
            assert_eq!(m.payload, t.name().as_bytes());
        }
    }
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn repeated_planned_restarts_leak_no_descriptors_or_memory() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Shm, "loop");
    let mut counts = Vec::new();
    let mut rss = Vec::new();
    for round in 0..8 {
        sigusr2(&hub);
        wait_ready(&hub, round + 2);
        until(&mut sub, "HubBack", |e| matches!(e, Event::HubBack { .. }));
        hub.wait_subscribers("loop", 1);
        counts.push(hub.open_fds());
        rss.push(vm_rss_kib(hub.pid()));
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "descriptors: {counts:?}"
    );
    assert!(rss.last().unwrap() <= &(rss[0] * 2), "VmRSS KiB: {rss:?}");
    assert!(hub.log().contains("generation=8"), "{}", hub.log());
}

/// Start ipchubd by hand with `IPCHUB_HANDOVER_FD` naming `state`, and an
/// extra inherited descriptor (standing for the predecessor's listener).
fn start_with_state(state: &[u8], seal: bool) -> (std::process::Child, tempfile::TempDir) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let dir = tempfile::Builder::new()
        .prefix("ipchub-ho")
        .tempdir()
        .unwrap();
    let cfg = dir.path().join("ipchub.toml");
    std::fs::write(&cfg, "[dbus]\nenabled = false\n").unwrap();
    let memfd = memfd_create(c"state", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::write(&memfd, state).unwrap();
    if seal {
        fcntl(
            memfd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK,
            ),
        )
        .unwrap();
    }
    let stray = std::os::unix::net::UnixListener::bind(dir.path().join("old.sock")).unwrap();
    fcntl(stray.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let log = dir.path().join("log");
    let child = Command::new(IPCHUBD)
        .arg("--socket")
        .arg(dir.path().join("ipchub.sock"))
        .arg("--config")
        .arg(&cfg)
        .env(handover::ENV, memfd.as_raw_fd().to_string())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The stray fd's number, to look for in the child.
    let stray_fd = stray.as_raw_fd();
    let sock = dir.path().join("ipchub.sock");
    wait_for(
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        "the fresh hub listening",
    );
    let target = std::fs::read_link(format!("/proc/{}/fd/{stray_fd}", child.id()));
    let ours = std::fs::read_link(format!("/proc/self/fd/{stray_fd}")).unwrap();
    assert_ne!(target.ok(), Some(ours), "inherited descriptor closed");
    (child, dir)
}

#[test]
fn an_unreadable_state_falls_back_to_a_fresh_start() {
    let good = handover::State {
        hub_version: "0.0.0".into(),
        generation: 1,
        socket_path: "/nonexistent".into(),
        unlink_on_exit: None,
        fds: vec![handover::FdEntry {
            name: "listener".into(),
            fd: 3,
        }],
    };
    let mut foreign = handover::encode(&good);
    foreign[8..12].copy_from_slice(&2u32.to_le_bytes());
    let mut corrupt = handover::encode(&good);
    let n = corrupt.len();
    corrupt[n / 2] ^= 0x55;
    for (bytes, seal, says) in [
        (&b"not a state at all"[..], false, "not a sealed memfd"),
        (&foreign[..], true, "format version 2"),
        (&corrupt[..], true, "corrupt"),
    ] {
        let (mut child, dir) = start_with_state(bytes, seal);
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(log.contains("hand-over state unusable"), "{log}");
        assert!(log.contains(says), "{says}: {log}");
        // A working hub.
        let mut c = Client::connect(&ipchub::client::Options {
            socket: Some(dir.path().join("ipchub.sock")),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.publish_confirmed("x", b"y").unwrap(), 0);
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
