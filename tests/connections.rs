//! Connections and the handshake under attack from other uids (issue #13,
//! A1, A2, A3, A7): idle and half-greeted connections, replies nobody
//! reads, hoarded and squatted message queues. Each attacker runs as
//! another uid (`setpriv`, helper `tests/clients/hostile_conn.py`); a
//! bystander of another uid must still connect, publish and receive, and
//! the hub's memory must stay under the bound of docs/SECURITY.md §8.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_text, Hub, Raw};
use ipchub::hub::TransportKind;
use ipchub::wire::FrameType;

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/hostile_conn.py");

/// An attacker process of `uid`, holding what it made until dropped.
struct Attacker {
    child: Child,
    stdin: Option<ChildStdin>,
    report: serde_json::Value,
}

impl Attacker {
    fn start(hub: &Hub, uid: u32, mode: &str, n: usize, arg: &str) -> Attacker {
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                // Not a PATH lookup: root's may point into /root, which
                // the other uid cannot enter.
                "/usr/bin/python3",
                HELPER,
            ])
            .arg(&hub.socket)
            .args([mode, &n.to_string(), arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("setpriv and python3 are needed");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let report = line
            .strip_prefix("ready ")
            .and_then(|j| serde_json::from_str(j.trim()).ok())
            .unwrap_or_else(|| panic!("attacker {mode} failed: {line:?}\n{}", hub.log()));
        Attacker {
            child,
            stdin,
            report,
        }
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"");
        }
        let _ = self.child.wait_within(LIMIT);
    }
}

/// The hub's resident memory in bytes.
fn rss(hub: &Hub) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hub.pid())).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A bystander (root) connects over `t`, subscribes, publishes and receives.
fn bystander_works(hub: &Hub, t: TransportKind) {
    let t0 = Instant::now();
    let mut c = ipchub::client::Client::connect(&hub.options(t))
        .unwrap_or_else(|e| panic!("bystander cannot connect via {}: {e}", t.name()));
    c.subscribe("bystander").unwrap();
    assert_eq!(c.publish_confirmed("bystander", b"still here").unwrap(), 1);
    let m = c.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert_eq!(m.payload, b"still here");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "bystander took {:?}",
        t0.elapsed()
    );
}

#[test]
fn four_uids_of_idle_connections_cannot_lock_root_out() {
    // The attack of A1 scaled down: max_clients = 4 x max_clients_per_uid.
    let hub = Hub::start_shared("[hub]\nmax_clients = 64\nmax_clients_per_uid = 16\n");
    let attackers: Vec<Attacker> = (0..4)
        .map(|i| Attacker::start(&hub, 60001 + i, "idle", 16, "-"))
        .collect();
    let held: u64 = attackers
        .iter()
        .map(|a| a.report["open"].as_u64().unwrap())
        .sum();
    assert!(held > 0, "the attackers got no connection at all");
    bystander_works(&hub, TransportKind::Socket);
    bystander_works(&hub, TransportKind::Shm);
    let log = hub.log();
    assert!(
        log.contains("share of hub.max_clients"),
        "the refusal names the quota:\n{log}"
    );
}

#[test]
fn a_connection_that_never_says_hello_is_closed_at_the_deadline() {
    let hub = Hub::start();
    let mut idle = Raw::connect(&hub.socket);
    idle.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t0 = Instant::now();
    let frames = idle.read_to_end();
    let (code, text) = error_text(&frames).expect("an ERROR before the close");
    assert_eq!(code, ipchub::wire::ErrorCode::BadHandshake as u16);
    assert!(text.contains("hub.handshake_timeout_ms"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    // A client that does say HELLO in time is not affected.
    let mut r = hub.raw();
    r.send_frame(FrameType::Ping, 0, "", b"", 5);
    assert_eq!(r.read_frame().unwrap().0, FrameType::Pong);
}

#[test]
fn a_partial_hello_is_refused_past_max_hello_size() {
    let hub = Hub::start_shared("");
    let before = rss(&hub);
    // A2: HELLOs announcing 256 KiB, never completed, on 100 connections.
    let a = Attacker::start(&hub, 65534, "partial-hello", 100, "262144");
    let grown = rss(&hub).saturating_sub(before);
    assert_eq!(a.report["errors"], 100, "{}", a.report);
    let text = a.report["first_error"].as_str().unwrap();
    assert!(text.contains("hub.max_hello_size"), "{text}");
    assert!(grown < 8 << 20, "the hub grew by {grown} bytes");
    bystander_works(&hub, TransportKind::Socket);
}

#[test]
fn unread_replies_count_against_the_uids_queue_bytes() {
    // A3: 24 clients flood STATS_REQUEST and never read the replies.
    let hub = Hub::start_shared(
        "[hub]\nmax_message_size = 65536\nblock_timeout_ms = 60000\n\
         [queue]\nmax_bytes = 1048576\nmax_bytes_per_uid = 2097152\n",
    );
    let mut probe = hub.raw();
    let before = rss(&hub);
    let _a = Attacker::start(&hub, 65534, "flood-stats", 24, "3");
    // The bystander's PING is answered at once while the flood holds.
    let t0 = Instant::now();
    probe.send_frame(FrameType::Ping, 0, "", b"", 9);
    assert_eq!(probe.read_frame().unwrap().0, FrameType::Pong);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let grown = rss(&hub).saturating_sub(before);
    // max_bytes_per_uid plus, per client, one reply and one read chunk,
    // plus 4 MiB for the allocator's slack.
    let bound = (2 << 20) + 24 * (64 << 10) + 24 * (64 << 10) + (4 << 20);
    assert!(
        grown < bound,
        "the hub grew by {grown} bytes (bound {bound})"
    );
    bystander_works(&hub, TransportKind::Socket);
}

#[test]
fn a_uid_hoarding_message_queues_cannot_exhaust_anyone_elses() {
    // A7: connect via mqueue, keep the queues, disconnect, again and again.
    let hub = Hub::start_shared("");
    let a = Attacker::start(&hub, 65534, "mq-hoard", 16, "-");
    // Its first clients (queues made as PROTOCOL.md §1.1 says, from
    // Python) were welcome; then its own RLIMIT_MSGQUEUE ran out, not the hub's.
    assert!(a.report["kept"].as_u64().unwrap() >= 1, "{}", a.report);
    assert!(
        hub.client()
            .stats()
            .unwrap()
            .clients
            .iter()
            .all(|c| c.uid != 65534),
        "no client of the attacker is connected"
    );
    for _ in 0..3 {
        bystander_works(&hub, TransportKind::Mqueue);
    }
    drop(a);
}

#[test]
fn squatted_queue_names_refuse_no_client() {
    let hub = Hub::start_shared("");
    let _a = Attacker::start(&hub, 65534, "squat", 40, &hub.pid().to_string());
    for _ in 0..5 {
        bystander_works(&hub, TransportKind::Mqueue);
    }
}

/// docs/SECURITY.md §8: the most the hub holds for one uid's clients, as a
/// formula of the limits (the part of it for connections, handshakes,
/// read buffers and answer/message queues).
fn uid_memory_bound(
    max_clients: usize,
    max_clients_per_uid: usize,
    max_message_size: usize,
    max_bytes_per_uid: usize,
    largest_answer: usize,
) -> usize {
    // Bookkeeping per connection (client record, peer, poll registration).
    const C: usize = 16 << 10;
    const CHUNK: usize = 64 << 10;
    let n = max_clients_per_uid.min(max_clients.div_ceil(2));
    let f = max_message_size + 24 + 255;
    let a = largest_answer.max(f);
    n * C + 2 * (max_bytes_per_uid + n * CHUNK + CHUNK + f) + 2 * (max_bytes_per_uid + n * a)
}

#[test]
fn one_uid_at_every_connection_limit_stays_under_the_memory_bound() {
    let hub = Hub::start_shared(
        "[hub]\nmax_clients = 64\nmax_clients_per_uid = 32\nmax_message_size = 65536\n\
         handshake_timeout_ms = 60000\nblock_timeout_ms = 60000\n\
         [queue]\nmax_bytes = 262144\nmax_bytes_per_uid = 1048576\n",
    );
    let mut probe = hub.raw();
    probe.send_frame(FrameType::Ping, 0, "", b"", 1);
    assert_eq!(probe.read_frame().unwrap().0, FrameType::Pong);
    let before = rss(&hub);
    // Uid 65534 takes its whole share (32 of 64) as: HELLOs within
    // max_hello_size never completed, PUBLISH frames of max_message_size
    // never completed, and STATS_REQUEST floods never read; it also holds
    // message queues of clients long gone.
    let mq = Attacker::start(&hub, 65534, "mq-hoard", 4, "-");
    let hello = Attacker::start(&hub, 65534, "partial-hello", 8, "4096");
    assert_eq!(hello.report["errors"], 0, "{}", hello.report);
    let frames = Attacker::start(&hub, 65534, "partial-frame", 8, "65536");
    let flood = Attacker::start(&hub, 65534, "flood-stats", 16, "3");
    let connected = hub
        .client()
        .stats()
        .unwrap()
        .clients
        .iter()
        .filter(|c| c.uid == 65534)
        .count();
    let grown = rss(&hub).saturating_sub(before);
    // Stats list at most 64 clients: far below one largest frame.
    let bound = uid_memory_bound(64, 32, 65536, 1 << 20, 64 * 512);
    eprintln!("uid 65534: {connected} connections; the hub grew by {grown} bytes, bound {bound}");
    assert!(
        grown < bound,
        "the hub grew by {grown} bytes, over the bound {bound}"
    );
    bystander_works(&hub, TransportKind::Socket);
    bystander_works(&hub, TransportKind::Mqueue);
    drop((mq, hello, frames, flood));
}

#[test]
fn handed_over_queues_are_checked_and_each_refusal_says_why() {
    use std::os::fd::{AsRawFd, RawFd};
    let hub = Hub::start();
    let attempt = |transport: &str, fds: &[RawFd]| -> String {
        let mut r = Raw::connect(&hub.socket);
        let mut hello = Vec::new();
        ipchub::wire::encode(
            &mut hello,
            FrameType::Hello,
            0,
            0,
            "",
            format!("version=1\ntransport={transport}\n").as_bytes(),
            0,
            0,
        );
        let iov = [std::io::IoSlice::new(&hello)];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
        nix::sys::socket::sendmsg::<()>(
            r.sock.as_raw_fd(),
            &iov,
            if fds.is_empty() { &[] } else { &cmsg },
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        match r.read_frame() {
            Some(f) if f.0 == FrameType::Welcome => "welcome".to_string(),
            Some(f) => ipchub::wire::frame::parse_error_payload(&f.3).1,
            None => "closed".to_string(),
        }
    };
    let (pr, pw) = nix::unistd::pipe().unwrap();
    let q = ipchub::transport::mqueue::create_pair(4096).unwrap();
    let [up, down] = q.handover_fds();
    for (transport, fds, expect) in [
        ("mqueue", vec![], "send your two message queues"),
        (
            "mqueue",
            vec![pr.as_raw_fd(), pw.as_raw_fd()],
            "not a POSIX message queue",
        ),
        ("mqueue", vec![up, up], "the same message queue"),
        ("mqueue", vec![up, down, up], "more than 2 descriptors"),
        ("socket", vec![up, down], "only mqueue takes them"),
    ] {
        let text = attempt(transport, &fds);
        assert!(text.contains(expect), "{transport} {fds:?}: {text}");
    }
    // The same queues, handed over properly, work.
    assert_eq!(attempt("mqueue", &[up, down]), "welcome");
}

#[test]
fn partial_frames_in_every_connection_are_charged_to_the_uid() {
    // A largest PUBLISH, never finished, in each of 32 connections.
    let hub = Hub::start_shared(
        "[hub]\nmax_clients = 128\nmax_clients_per_uid = 64\n\
         [queue]\nmax_bytes = 2097152\nmax_bytes_per_uid = 2097152\n",
    );
    let mut probe = hub.raw();
    probe.send_frame(FrameType::Ping, 0, "", b"", 1);
    assert_eq!(probe.read_frame().unwrap().0, FrameType::Pong);
    let before = rss(&hub);
    let a = Attacker::start(&hub, 65534, "partial-frame", 32, "1048576");
    let grown = rss(&hub).saturating_sub(before);
    // max_bytes_per_uid, one 64 KiB chunk per connection, allocator slack.
    let bound = (2 << 20) + 32 * (64 << 10) + (8 << 20);
    assert!(
        grown < bound,
        "the hub grew by {grown} bytes (bound {bound})"
    );
    bystander_works(&hub, TransportKind::Socket);
    // Connections the hub stopped reading still go when their client does.
    drop(a);
    let mut root = hub.client();
    common::wait_for(
        || root.stats().unwrap().clients.iter().all(|c| c.uid != 65534),
        "the attacker's connections to close",
    );
}
