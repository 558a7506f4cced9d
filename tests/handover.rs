//! Planned restart by SIGUSR2 (issue #16, behaviour 2): the hub
//! re-executes itself in place with its listening socket and its clients
//! (connections, subscriptions, queued messages; an shm client's rings and
//! eventfds, and channel rings: tests/handover_shm.rs) handed over in a
//! sealed memfd; they see nothing. A state the new binary cannot read
//! falls back to a fresh start, logged, never a crash.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Hub, IPCHUBD};
use ipchub::client::{Client, Event};
use ipchub::daemon::handover;
use ipchub::hub::TransportKind::{self, *};

const TRANSPORTS: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue, Shm];
const WAIT: Duration = Duration::from_secs(20);

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
fn sigusr2_restarts_in_place_keeping_every_client() {
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
    // Everyone is still subscribed (the shm one through the channel's ring,
    // handed over too); a publisher on each transport reaches all.
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
    // Everyone kept their connection: no loss, nothing else.
    for (s, t) in subs.iter_mut().zip(TRANSPORTS) {
        assert_eq!(s.poll_events().unwrap(), None, "{}", t.name());
    }
}

/// Nothing but messages, in order, each once.
fn expect_stream(c: &mut Client, n: u32, who: &str) {
    for i in 0..n {
        match c.next_event(Some(WAIT)) {
            Ok(Some(Event::Message(m))) => {
                assert_eq!(m.payload, i.to_le_bytes(), "{who}: message {i}")
            }
            other => panic!("{who}: at {i}: {other:?}"),
        }
    }
}

/// The transports whose subscribers these streams go to (shm ones, with
/// and without channel rings: tests/handover_shm.rs).
const KEPT: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue];

/// A publisher on `via` streams to subscribers on every kept transport
/// through two restarts: every message once, in order, and nobody sees
/// anything else (no loss, no reconnection).
fn stream_through_planned_restarts(via: TransportKind) {
    let hub = Hub::start_with("[queue]\noverflow = \"block\"\n");
    // They read only at the end: their messages wait in the hub's queues
    // (and are handed over with them).
    let mut subs: Vec<Client> = KEPT.iter().map(|&t| hub.subscriber(t, "stream")).collect();
    let mut p = hub.client_via(via);
    const N: u32 = 30_000;
    let progress = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sent = progress.clone();
    // The publisher stops at each restart point until the restart was
    // asked for, so the restarts fall mid-stream however the machine is
    // loaded.
    let gate = Arc::new(std::sync::atomic::AtomicU32::new(3000));
    let open_until = gate.clone();
    let publisher = std::thread::spawn(move || {
        for i in 0..N {
            while i >= open_until.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            p.publish("stream", &i.to_le_bytes()).unwrap();
            if i % 100 == 99 {
                // Paced, so the restarts fall in the middle of the stream.
                p.flush().unwrap();
                sent.store(i + 1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let delivered = p.publish_confirmed("stream-end", b"").unwrap();
        let mut other = Vec::new();
        while let Some(ev) = p.poll_events().unwrap() {
            other.push(ev);
        }
        (delivered, other)
    });
    // Two restarts while it streams.
    for (n, at, next) in [(2, 3000, 12_000), (3, 12_000, N)] {
        wait_for(
            || progress.load(Ordering::Relaxed) >= at,
            "publisher progress",
        );
        sigusr2(&hub);
        assert!(
            progress.load(Ordering::Relaxed) < N,
            "restart #{n} mid-stream"
        );
        gate.store(next, Ordering::Release);
        wait_ready(&hub, n);
    }
    let (delivered, other) = publisher.join().unwrap();
    assert_eq!(delivered, 0);
    assert!(other.is_empty(), "publisher saw {other:?}");
    for (s, t) in subs.iter_mut().zip(KEPT) {
        expect_stream(s, N, t.name());
        assert_eq!(s.poll_events().unwrap(), None, "{}", t.name());
    }
    assert!(hub.log().contains("clients kept"), "{}", hub.log());
}

#[test]
fn a_socket_publisher_streams_through_planned_restarts_exactly_once_in_order() {
    stream_through_planned_restarts(Socket);
}

#[test]
fn a_pipe_publisher_streams_through_planned_restarts_exactly_once_in_order() {
    stream_through_planned_restarts(Pipe);
}

#[test]
fn a_fifo_publisher_streams_through_planned_restarts_exactly_once_in_order() {
    stream_through_planned_restarts(Fifo);
}

#[test]
fn an_mqueue_publisher_streams_through_planned_restarts_exactly_once_in_order() {
    stream_through_planned_restarts(Mqueue);
}

/// Messages queued in the hub for a subscriber that is not reading are
/// handed over and delivered once, in order, to the same client ids.
#[test]
fn queued_messages_cross_a_planned_restart() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Socket, "queued");
    let mut p = hub.client_via(Socket);
    let payload = vec![7u8; 1024];
    const N: u32 = 3000;
    for i in 0..N {
        let mut m = i.to_le_bytes().to_vec();
        m.extend_from_slice(&payload);
        p.publish("queued", &m).unwrap();
    }
    assert_eq!(p.publish_confirmed("other", b"").unwrap(), 0);
    // Far more than a socket buffer holds: most wait in the hub's queue.
    let queued = p
        .stats()
        .unwrap()
        .clients
        .iter()
        .find(|c| c.id == sub.id())
        .map(|c| c.queue_messages)
        .unwrap();
    assert!(queued > 0, "messages queued in the hub");
    sigusr2(&hub);
    wait_ready(&hub, 2);
    for i in 0..N {
        let m = sub.recv(Some(WAIT)).unwrap().expect("queued message");
        assert_eq!(m.payload[..4], i.to_le_bytes(), "message {i}");
    }
    assert_eq!(sub.poll_events().unwrap(), None);
    let ids: Vec<u32> = p.stats().unwrap().clients.iter().map(|c| c.id).collect();
    assert!(ids.contains(&sub.id()) && ids.contains(&p.id()), "{ids:?}");
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
    // Both kept across every restart.
    let mut sub = hub.subscriber(Shm, "loop");
    let mut kept = hub.subscriber(Socket, "loop");
    // One probe for the whole loop (kept too): a probe connected anew each
    // round may still be open in the hub when its descriptors are counted.
    let mut probe = hub.client();
    let mut counts = Vec::new();
    let mut rss = Vec::new();
    for round in 0..8 {
        sigusr2(&hub);
        wait_ready(&hub, round + 2);
        wait_for(
            || {
                probe
                    .stats()
                    .unwrap()
                    .channels
                    .iter()
                    .any(|c| c.name == "loop" && c.subscribers == 2)
            },
            "2 subscribers on 'loop'",
        );
        counts.push(hub.open_fds());
        rss.push(vm_rss_kib(hub.pid()));
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "descriptors: {counts:?}"
    );
    assert!(rss.last().unwrap() <= &(rss[0] * 2), "VmRSS KiB: {rss:?}");
    assert!(hub.log().contains("generation=8"), "{}", hub.log());
    for c in [&mut kept, &mut sub] {
        assert_eq!(c.poll_events().unwrap(), None, "no loss, no reconnection");
    }
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
        next_client_id: 1,
        clients: Vec::new(),
        rings: Vec::new(),
        hub_state: Default::default(),
    };
    // A newer format, and the previous one (version 1, which kept no shm
    // client): both refused by number.
    let version = |v: u32| {
        let mut b = handover::encode(&good);
        b[8..12].copy_from_slice(&v.to_le_bytes());
        (b, format!("format version {v}"))
    };
    let (newer, says_newer) = version(handover::FORMAT_VERSION + 1);
    let (older, says_older) = version(handover::FORMAT_VERSION - 1);
    let mut corrupt = handover::encode(&good);
    let n = corrupt.len();
    corrupt[n / 2] ^= 0x55;
    for (bytes, seal, says) in [
        (&b"not a state at all"[..], false, "not a sealed memfd"),
        (&newer[..], true, says_newer.as_str()),
        (&older[..], true, says_older.as_str()),
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
        child.wait_within(LIMIT).unwrap();
    }
}

/// What a client can see of the hub's own state survives a planned
/// restart (issue #16): retained values (on a `retain = true` channel and
/// from a RETAIN publish), the memory history of a channel with history
/// bounds (replayed with the same channel sequence numbers, numbering on
/// without a gap), and the statistics counters (totals, per channel, per
/// transport, those of clients gone included), which continue, never reset.
#[test]
fn retained_values_history_and_counters_survive_a_planned_restart() {
    use ipchub::client::{PublishOptions, Replay, SubscribeOptions};
    let hub = Hub::start_with(
        "[[channel]]\npattern = \"keep/state\"\nretain = true\n\n\
         [[channel]]\npattern = \"keep/log/#\"\nhistory_messages = 100\n",
    );
    let mut p = hub.client();
    let mut live = hub.subscriber(Pipe, "keep/log/a");
    let seq = p
        .publish_retained(
            "plain/door",
            b"closed",
            PublishOptions {
                ack: true,
                priority: 0,
            },
        )
        .unwrap();
    assert!(seq > 0);
    p.publish("keep/state", b"v1").unwrap();
    p.publish("keep/state", b"v2").unwrap();
    for i in 1..=20u32 {
        p.publish("keep/log/a", i.to_string().as_bytes()).unwrap();
    }
    p.publish_confirmed("keep/log/a", b"21").unwrap();
    for _ in 1..=21 {
        live.recv(Some(WAIT)).unwrap().expect("live message");
    }
    // A client that leaves: its bytes stay in its transport's counters.
    {
        let mut gone = hub.client_via(Fifo);
        gone.publish_confirmed("keep/gone", &[9u8; 1000]).unwrap();
    }
    let before = p.stats().unwrap();
    let chan = |s: &ipchub::wire::stats::HubStats, n: &str| {
        s.channels
            .iter()
            .find(|c| c.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("channel {n} in {:?}", s.channels))
    };
    let fifo = |s: &ipchub::wire::stats::HubStats| {
        s.per_transport
            .iter()
            .find(|t| t.name == "fifo")
            .map(|t| t.bytes_in)
            .unwrap()
    };
    assert!(fifo(&before) >= 1000);
    sigusr2(&hub);
    wait_ready(&hub, 2);
    let after = p.stats().unwrap();
    for (what, b, a) in [
        (
            "messages_in",
            before.totals.messages_in,
            after.totals.messages_in,
        ),
        (
            "messages_out",
            before.totals.messages_out,
            after.totals.messages_out,
        ),
        ("bytes_in", before.totals.bytes_in, after.totals.bytes_in),
        ("bytes_out", before.totals.bytes_out, after.totals.bytes_out),
        ("fifo bytes_in", fifo(&before), fifo(&after)),
    ] {
        assert!(b > 0 && a >= b, "{what}: {b} before, {a} after");
    }
    for n in ["keep/log/a", "keep/state", "keep/gone"] {
        let (b, a) = (chan(&before, n), chan(&after, n));
        assert_eq!(
            (a.published, a.delivered, a.bytes),
            (b.published, b.delivered, b.bytes),
            "{n}"
        );
    }
    assert_eq!(
        after.totals.retained_messages, before.totals.retained_messages,
        "retained values"
    );
    assert_eq!(after.totals.history_messages, 21, "history");
    // A new subscriber gets both retained values …
    for (ch, want) in [("plain/door", &b"closed"[..]), ("keep/state", b"v2")] {
        let mut s = hub.subscriber(Socket, ch);
        let m = s.recv(Some(WAIT)).unwrap().expect("retained value");
        assert_eq!((&m.payload[..], m.retained), (want, true), "{ch}");
    }
    // … and the replay, numbered as before, then live numbers on.
    let mut r = hub.client_via(Mqueue);
    r.subscribe_with(
        "keep/log/a",
        SubscribeOptions {
            replay: Some(Replay::Last(5)),
            ..Default::default()
        },
    )
    .unwrap();
    for want in 17..=21u64 {
        let m = r.recv(Some(WAIT)).unwrap().expect("replayed");
        assert_eq!(
            (m.payload, m.channel_seq),
            (want.to_string().into_bytes(), Some(want))
        );
    }
    p.publish_confirmed("keep/log/a", b"22").unwrap();
    let m = r.recv(Some(WAIT)).unwrap().expect("live after replay");
    assert_eq!((&m.payload[..], m.channel_seq), (&b"22"[..], Some(22)));
    assert_eq!(
        live.recv(Some(WAIT)).unwrap().unwrap().channel_seq,
        Some(22)
    );
    assert_eq!(
        live.poll_events().unwrap(),
        None,
        "no loss, no reconnection"
    );
}

/// A disk channel's history is read back from its log by the new hub, and
/// only from there: after a planned restart its replay holds each message
/// once, and its retained value is one value.
#[test]
fn a_disk_channels_history_is_not_doubled_by_a_planned_restart() {
    use ipchub::client::{PublishOptions, Replay, SubscribeOptions};
    let hub = Hub::start_with(
        "[[channel]]\npattern = \"disk/#\"\nhistory_messages = 100\nstorage = \"disk\"\n",
    );
    let mut p = hub.client();
    for i in 1..=10u32 {
        p.publish("disk/a", i.to_string().as_bytes()).unwrap();
    }
    p.publish_retained(
        "disk/a",
        b"11",
        PublishOptions {
            ack: true,
            priority: 0,
        },
    )
    .unwrap();
    p.publish_confirmed("disk/a", b"12").unwrap();
    let before = p.stats().unwrap().totals;
    sigusr2(&hub);
    wait_ready(&hub, 2);
    let after = p.stats().unwrap().totals;
    assert_eq!(
        (after.history_messages, after.retained_messages),
        (before.history_messages, before.retained_messages)
    );
    assert_eq!((after.history_messages, after.retained_messages), (12, 1));
    let mut r = hub.client_via(Socket);
    r.subscribe_with(
        "disk/a",
        SubscribeOptions {
            replay: Some(Replay::FromSeq(0)),
            ..Default::default()
        },
    )
    .unwrap();
    for want in 1..=12u64 {
        let m = r.recv(Some(WAIT)).unwrap().expect("replayed");
        assert_eq!(
            (m.payload, m.channel_seq),
            (want.to_string().into_bytes(), Some(want))
        );
    }
    assert!(r.recv(Some(Duration::from_millis(300))).unwrap().is_none());
}
