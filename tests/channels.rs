//! Channels and subscriptions under attack by another uid (docs/SECURITY.md
//! §3): one user holding every channel, inventing endless channel names, or
//! piling up wildcard patterns must not keep a bystander from creating
//! channels, subscribing, publishing and receiving, promptly.
//!
//! The attacker is this same test binary re-executed as `nobody` (the
//! ignored test `attacker`, which does nothing unless told to by the
//! environment), so it speaks the protocol byte by byte with its own uid.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{error_text, Hub, Raw};
use ipchub::wire::{self, FrameType, ACK_REQUESTED};

const ATTACK: &str = "IPCHUB_TEST_ATTACK";
const NOBODY: u32 = 65534;
/// How long a bystander may wait for any answer while an attack runs.
const PROMPT: Duration = Duration::from_secs(2);

/// A raw connection that did the handshake, as whoever runs this.
fn raw_at(socket: &Path) -> Raw {
    let mut r = Raw::connect(socket);
    r.send_frame(
        FrameType::Hello,
        0,
        "",
        b"version=1\ntransport=socket\nname=raw\n",
        0,
    );
    let f = r.read_frame().expect("WELCOME");
    assert_eq!(f.0, FrameType::Welcome, "{f:?}");
    r
}

fn frame(ty: FrameType, flags: u8, channel: &str, seq: u64) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode(&mut v, ty, flags, 0, channel, b"x", 0, seq);
    v
}

/// Read `n` answers; returns (ACKs, the first ERROR's text).
fn answers(r: &mut Raw, n: usize) -> (usize, Option<String>) {
    let (mut acks, mut first) = (0, None);
    for _ in 0..n {
        let f = r.read_frame().expect("an answer");
        match f.0 {
            FrameType::Ack => acks += 1,
            FrameType::Error if first.is_none() => {
                first = Some(wire::frame::parse_error_payload(&f.3).1)
            }
            _ => {}
        }
    }
    (acks, first)
}

/// The attacker's side, run as `nobody` by the tests below.
#[test]
#[ignore = "run by the other tests as another uid"]
fn attacker() {
    let Ok(what) = std::env::var(ATTACK) else {
        return;
    };
    let socket = std::path::PathBuf::from(std::env::var("IPCHUB_SOCKET").unwrap());
    let n: usize = std::env::var("IPCHUB_TEST_N").unwrap().parse().unwrap();
    let mut out = std::io::stdout();
    let mut keep = Vec::new();
    match what.as_str() {
        // Subscribe to `n` new channels by exact name: each one held.
        "hold" => {
            let mut r = raw_at(&socket);
            let mut buf = Vec::new();
            for i in 0..n {
                buf.extend(frame(
                    FrameType::Subscribe,
                    0,
                    &format!("junk/{i}"),
                    i as u64 + 1,
                ));
            }
            r.send(&buf);
            let (acks, err) = answers(&mut r, n);
            writeln!(out, "REPORT acks={acks} error={}", err.unwrap_or_default()).unwrap();
            keep.push(r);
        }
        // Publish to `n` new channel names nobody subscribes to.
        "invent" => {
            let mut r = raw_at(&socket);
            let mut buf = Vec::new();
            for i in 0..n {
                buf.extend(frame(
                    FrameType::Publish,
                    0,
                    &format!("dead/{i}"),
                    i as u64 + 1,
                ));
            }
            buf.extend(frame(FrameType::Ping, 0, "", 0));
            r.send(&buf);
            let mut refused = 0;
            loop {
                let f = r.read_frame().expect("PONG");
                match f.0 {
                    FrameType::Pong => break,
                    FrameType::Error => refused += 1,
                    _ => {}
                }
            }
            writeln!(out, "REPORT refused={refused}").unwrap();
            keep.push(r);
        }
        // Every channel, subscription and ring limit at once (the hub's
        // configuration is the test's): shm clients opening rings and
        // filling them, one client holding exact channels, and deep
        // patterns (one trie node per level) from several clients.
        "all-limits" => {
            use ipchub::client::{Client, Options, Reconnect};
            use ipchub::hub::TransportKind;
            let opts = |t| Options {
                socket: Some(socket.clone()),
                transport: t,
                name: "all-limits".into(),
                reconnect: Reconnect::off(),
            };
            let mut shm = Vec::new();
            for c in 0..3 {
                let mut cl = Client::connect(&opts(TransportKind::Shm)).unwrap();
                for i in 0..4 {
                    let ch = format!("lim/ring/{c}/{i}");
                    cl.subscribe(&ch).unwrap();
                    for _ in 0..96 {
                        cl.publish(&ch, &[0x5a; 1024]).unwrap();
                    }
                }
                shm.push(cl);
            }
            // `n` exact channels, 200 per client (under the per-client limit).
            let (mut channels, mut ch_err) = (0, None);
            for c in 0..n.div_ceil(200) {
                let mut r = raw_at(&socket);
                let mut buf = Vec::new();
                let k = 200.min(n - c * 200);
                for i in 0..k {
                    let ch = format!("lim/ch/{c}/{i}");
                    buf.extend(frame(FrameType::Subscribe, 0, &ch, i as u64 + 1));
                }
                r.send(&buf);
                let (a, e) = answers(&mut r, k);
                channels += a;
                ch_err = ch_err.or(e);
                keep.push(r);
            }
            // 32 levels, the most a name may have.
            let deep = "a/".repeat(30);
            let (mut patterns, mut pat_err) = (0, None);
            for c in 0..5 {
                let mut r = raw_at(&socket);
                let mut buf = Vec::new();
                for i in 0..256u64 {
                    let p = format!("p{c}-{i}/{deep}#");
                    buf.extend(frame(FrameType::Subscribe, 0, &p, i + 1));
                }
                r.send(&buf);
                let (a, e) = answers(&mut r, 256);
                patterns += a;
                pat_err = pat_err.or(e);
                keep.push(r);
            }
            writeln!(
                out,
                "REPORT channels={channels} channel_error={} patterns={patterns} pattern_error={}",
                ch_err.unwrap_or_default(),
                pat_err.unwrap_or_default()
            )
            .unwrap();
            out.flush().unwrap();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            drop(shm);
        }
        // 200 clients × 1024 wildcard patterns, then `n` publishes to new
        // channels none of them matches.
        "wildcards" => {
            for c in 0..200 {
                let mut r = raw_at(&socket);
                let mut buf = Vec::new();
                for i in 0..1024 {
                    let p = format!("+/{c}-{i}/#");
                    buf.extend(frame(FrameType::Subscribe, 0, &p, i + 1));
                }
                r.send(&buf);
                keep.push(r);
            }
            let (mut acks, mut err) = (0, None);
            for r in &mut keep {
                let (a, e) = answers(r, 1024);
                acks += a;
                err = err.or(e);
            }
            writeln!(out, "REPORT acks={acks} error={}", err.unwrap_or_default()).unwrap();
            let mut buf = Vec::new();
            for i in 0..n {
                buf.extend(frame(FrameType::Publish, 0, &format!("fresh/{i}"), 0));
            }
            keep[0].send(&buf);
            writeln!(out, "REPORT published").unwrap();
        }
        other => panic!("unknown attack {other}"),
    }
    out.flush().unwrap();
    // Keep every connection until the test closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Start the attacker as `nobody`; returns it and its report lines.
fn attack(hub: &Hub, what: &str, n: usize) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "attacker", "--ignored", "--nocapture", "--quiet"])
        .env(ATTACK, what)
        .env("IPCHUB_TEST_N", n.to_string())
        .env("IPCHUB_SOCKET", &hub.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) is needed");
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The attacker's next report line, within a generous deadline.
fn report(out: &mut BufReader<ChildStdout>, hub: &Hub) -> String {
    // The attacker's own reads time out after 10 s if the hub stalls.
    loop {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the attacker failed; hub log:\n{}",
            hub.log()
        );
        // Skip what the test harness itself prints.
        if let Some(r) = line.trim().strip_prefix("REPORT ") {
            return r.to_string();
        }
    }
}

/// Send `frames` and wait for `n` answers on another thread, failing the
/// test if they take longer than `PROMPT`.
fn promptly(r: Raw, frames: Vec<u8>, n: usize, what: &str) -> (Raw, Vec<common::RawFrame>) {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let mut r = r;
        r.send(&frames);
        let got: Vec<_> = (0..n).map_while(|_| r.read_frame()).collect();
        let _ = tx.send((r, got));
    });
    match rx.recv_timeout(PROMPT) {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: no answer within {PROMPT:?} (waited {:?})",
            t0.elapsed()
        ),
    }
}

fn stop(mut child: Child) {
    drop(child.stdin.take());
    common::wait_child(&mut child, Duration::from_secs(30));
}

#[test]
fn one_uid_cannot_take_every_channel() {
    let hub = Hub::start_shared("[hub]\nmax_channels = 256\n");
    // The attacker tries to hold more channels than the hub has.
    let (child, mut out) = attack(&hub, "hold", 300);
    let line = report(&mut out, &hub);
    let acks: usize = line["acks=".len()..line.find(' ').unwrap()]
        .parse()
        .unwrap();
    assert!(acks <= 128, "one uid took {acks} of 256 channels: {line}");
    assert!(
        line.contains(&format!("uid {NOBODY} holds"))
            && line.contains("hub.max_channels")
            && line.contains("half"),
        "{line}"
    );

    // A bystander still makes channels: by publishing, and by holding
    // a hundred of its own.
    let mut me = hub.raw();
    me.send_frame(
        FrameType::Publish,
        ACK_REQUESTED,
        "bystander/news",
        b"hi",
        1,
    );
    let f = me.read_frame().unwrap();
    assert_eq!(
        f.0,
        FrameType::Ack,
        "{:?}",
        error_text(std::slice::from_ref(&f))
    );
    // (It may take half of what the attacker leaves free, 64.)
    let mut buf = Vec::new();
    for i in 0..50 {
        buf.extend(frame(FrameType::Subscribe, 0, &format!("mine/{i}"), i + 2));
    }
    me.send(&buf);
    let (acks, err) = answers(&mut me, 50);
    assert_eq!(acks, 50, "{err:?}");

    // When the attacker leaves, what it held is collected as room is
    // needed: the bystander can now hold more than the 64 it could.
    stop(child);
    let mut probe = hub.client();
    common::wait_for(
        || {
            !probe
                .stats()
                .unwrap()
                .clients
                .iter()
                .any(|c| c.uid == NOBODY)
        },
        "the attacker's connection closed",
    );
    let mut buf = Vec::new();
    for i in 50..110 {
        buf.extend(frame(FrameType::Subscribe, 0, &format!("mine/{i}"), i + 2));
    }
    me.send(&buf);
    let (acks, err) = answers(&mut me, 60);
    assert_eq!(acks, 60, "{err:?}");
    let stats = hub.client().stats().unwrap();
    assert!(stats.channel_count <= 256, "{}", stats.channel_count);
    assert!(!stats
        .channels
        .iter()
        .any(|c| c.name.starts_with("junk/") && c.subscribers > 0));
}

#[test]
fn invented_channel_names_are_collected_not_kept() {
    let hub = Hub::start_shared("");
    let mut me = hub.raw();
    me.send_frame(FrameType::Subscribe, 0, "kept", b"", 1);
    assert_eq!(me.read_frame().unwrap().0, FrameType::Ack);
    // 10,000 channel names nobody holds, from one uid.
    let (child, mut out) = attack(&hub, "invent", 10_000);
    assert_eq!(
        report(&mut out, &hub),
        "refused=0",
        "publishing never fails"
    );
    let stats = hub.client().stats().unwrap();
    // The attacker's uid is charged at most hub.max_channels_per_uid
    // (4096): older names were collected to make room for newer ones.
    let dead = stats
        .channels
        .iter()
        .filter(|c| c.name.starts_with("dead/"))
        .count();
    assert!(dead <= 4096, "{dead} dead channels kept");
    assert!(stats.channel_count <= 4096 + 1, "{}", stats.channel_count);
    // The bystander's held channel is still there, counters intact.
    me.send_frame(FrameType::Publish, ACK_REQUESTED, "kept", b"x", 2);
    let got: Vec<_> = (0..2).map_while(|_| me.read_frame()).collect();
    assert!(got.iter().any(|f| f.0 == FrameType::Data), "{got:?}");
    assert!(got.iter().any(|f| f.0 == FrameType::Ack), "{got:?}");
    let stats = hub.client().stats().unwrap();
    let kept = stats.channels.iter().find(|c| c.name == "kept").unwrap();
    assert_eq!((kept.published, kept.subscribers), (1, 1));
    // Totals count every message, collected channels' included.
    assert_eq!(stats.totals.messages_in, 10_001);
    stop(child);
}

#[test]
fn wildcard_flood_does_not_freeze_routing_for_a_bystander() {
    let hub = Hub::start_shared("");
    let me = hub.raw();
    let (child, mut out) = attack(&hub, "wildcards", 3000);
    let line = report(&mut out, &hub);
    assert_eq!(report(&mut out, &hub), "published");
    // The 3000 publishes to new channels are on their way: a bystander
    // pings, subscribes, publishes and receives, each promptly.
    let (me, got) = promptly(me, frame(FrameType::Ping, 0, "", 7), 1, "PING");
    assert_eq!(got[0].0, FrameType::Pong);
    let (me, got) = promptly(
        me,
        frame(FrameType::Subscribe, 0, "news/+", 8),
        1,
        "SUBSCRIBE",
    );
    assert_eq!(got[0].0, FrameType::Ack, "{:?}", error_text(&got));
    let (_me, got) = promptly(
        me,
        frame(FrameType::Publish, ACK_REQUESTED, "news/today", 9),
        2,
        "PUBLISH",
    );
    assert!(
        got.iter()
            .any(|f| f.0 == FrameType::Data && f.2 == "news/today"),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|f| f.0 == FrameType::Ack && f.3 == 1u32.to_le_bytes()),
        "{got:?}"
    );
    // One uid holds at most hub.max_subscriptions_per_uid patterns,
    // however many clients it opens.
    assert!(line.starts_with("acks=16384 "), "{line}");
    assert!(
        line.contains(&format!("uid {NOBODY} holds 16384 subscriptions"))
            && line.contains("hub.max_subscriptions_per_uid"),
        "{line}"
    );
    stop(child);
}

/// The hub's resident memory, in bytes.
fn rss(hub: &Hub) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hub.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap()
        * 1024
}

/// docs/SECURITY.md §8: one uid held at its channel, pattern-level and
/// ring limits at once (besides the connections its clients need) makes
/// the hub grow by less than the formula of the limits says, and a
/// bystander of another uid still gets a ring of its own and its messages.
#[test]
fn one_uid_at_every_channel_pattern_and_ring_limit_stays_under_the_memory_bound() {
    const MAX_CLIENTS_PER_UID: usize = 32;
    const MAX_MESSAGE: usize = 65536;
    const BYTES_PER_UID: usize = 1 << 20;
    const CHANNELS_PER_UID: usize = 512;
    const PATTERNS_PER_UID: usize = 1024;
    const LEVELS_PER_UID: usize = 16384;
    const RING_BYTES_PER_UID: usize = 512 << 10;
    const RING_SIZE: usize = 64 << 10;
    let hub = Hub::start_shared(&format!(
        "[hub]\nmax_clients = 64\nmax_clients_per_uid = {MAX_CLIENTS_PER_UID}\n\
         max_message_size = {MAX_MESSAGE}\nmax_channels_per_uid = {CHANNELS_PER_UID}\n\
         max_subscriptions_per_client = 256\nmax_subscriptions_per_uid = {PATTERNS_PER_UID}\n\
         max_pattern_levels_per_uid = {LEVELS_PER_UID}\n\
         [queue]\nmax_bytes = 262144\nmax_bytes_per_uid = {BYTES_PER_UID}\n\
         [shm]\nring_size = {RING_SIZE}\nchannel_ring_size = 65536\n\
         max_rings_per_client = 4\nmax_rings_per_uid = 8\n\
         max_ring_bytes_per_uid = {RING_BYTES_PER_UID}\n"
    ));
    // Warm the hub up with a ring of root's own before the baseline.
    let mut warm = hub.subscriber(ipchub::hub::TransportKind::Shm, "warm");
    let mut p = hub.client();
    p.publish_confirmed("warm", b"x").unwrap();
    assert!(warm.recv(Some(PROMPT)).unwrap().is_some());
    let before = rss(&hub);
    let (child, mut out) = attack(&hub, "all-limits", 600);
    let line = report(&mut out, &hub);
    eprintln!("{line}");
    // Each limit was reached, and each refusal names its key.
    assert!(line.contains("hub.max_channels_per_uid"), "{line}");
    // The patterns have 32 levels each: the level budget runs out first.
    assert!(line.contains("hub.max_pattern_levels_per_uid"), "{line}");
    let log = hub.log();
    assert!(
        log.contains("(limit shm.max_rings_per_uid)") || log.contains("shm.max_ring_bytes_per_uid"),
        "{log}"
    );
    let grown = rss(&hub).saturating_sub(before);
    // M(uid) of §8 with the connections this uid may have, then the
    // channel, pattern and ring terms. A pattern costs one trie node per
    // level at most, charged against the uid's level budget.
    const C: usize = 16 << 10;
    const K: usize = 64 << 10;
    // Measured: about 510 bytes a level (a node in its parent's table of
    // four buckets, and the level's name), allocator included.
    const B_CH: usize = 512;
    const B_LEVEL: usize = 640;
    let n = MAX_CLIENTS_PER_UID;
    let f = MAX_MESSAGE + 279;
    let m_uid = n * C + 2 * (BYTES_PER_UID + n * K + K + f) + 2 * (BYTES_PER_UID + n * f);
    let n_shm = 3;
    let bound = m_uid
        + CHANNELS_PER_UID * (B_CH + 255)
        + (PATTERNS_PER_UID * (32 * B_LEVEL + 255))
            .min(LEVELS_PER_UID * B_LEVEL + PATTERNS_PER_UID * 255)
        + 2 * RING_BYTES_PER_UID
        + n_shm * RING_SIZE;
    eprintln!("the hub grew by {grown} bytes; bound {bound} (M(uid) {m_uid})");
    assert!(
        grown < bound,
        "the hub grew by {grown} bytes, over the bound {bound}"
    );
    // A bystander of another uid gets a ring and its messages.
    let mut mine = hub.subscriber(ipchub::hub::TransportKind::Shm, "bystander/ring");
    p.publish_confirmed("bystander/ring", b"still here")
        .unwrap();
    assert_eq!(
        mine.recv(Some(PROMPT)).unwrap().unwrap().payload,
        b"still here"
    );
    stop(child);
}
