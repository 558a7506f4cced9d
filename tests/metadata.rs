//! What the hub tells about itself (statistics) and writes about its clients
//! (logs), tried as a hostile local user would: another uid reading other
//! users' channels and clients, client-chosen names forging log lines, a
//! denial flood filling the log, and statistics that did not add up.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::time::Duration;

use common::{wait_for, Hub, Raw, IPCHUBCTL};
use ipchub::hub::TransportKind;
use ipchub::wire::{ErrorCode, FrameType};

const NOBODY: u32 = 65534;

/// `ipchubctl ARGS` as user nobody; its standard output.
fn ctl_as_nobody(hub: &Hub, args: &[&str]) -> String {
    let out = common::as_nobody(IPCHUBCTL)
        .args(args)
        .env("IPCHUB_SOCKET", &hub.socket)
        .output_within(LIMIT)
        .expect("setpriv (util-linux) is needed");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

const POLICY: &str = r#"
[access]
default = "allow"
[[access.rule]]
pattern = "secure/#"
publish = ["uid:0"]
subscribe = ["uid:0"]
"#;

/// D15: another uid asking for statistics (STATS_REQUEST through
/// `ipchubctl stats`) learns nothing of the channels it may not read and
/// nothing of other users' clients; root still sees everything.
#[test]
fn stats_show_another_uid_only_channels_it_may_read_and_its_own_clients() {
    let hub = Hub::start_shared(POLICY);
    let mut secret = hub.client_via(TransportKind::Socket);
    secret.subscribe("secure/door").unwrap();
    secret.subscribe("secure/#").unwrap();
    assert_eq!(secret.publish_confirmed("secure/door", b"open").unwrap(), 1);
    let mut public = hub.client();
    public.subscribe("public/news").unwrap();
    public.publish_confirmed("public/news", b"hi").unwrap();

    let json = ctl_as_nobody(&hub, &["stats", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&json).unwrap();
    let channels: Vec<&str> = st["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["public/news"], "{json}");
    let clients = st["clients"].as_array().unwrap();
    assert!(!clients.is_empty(), "nobody's own client is listed: {json}");
    for c in clients {
        assert_eq!(c["uid"].as_u64(), Some(NOBODY as u64), "{json}");
    }
    assert!(!json.contains("secure"), "{json}");
    let text = ctl_as_nobody(&hub, &["stats"]);
    assert!(!text.contains("secure"), "{text}");
    assert!(text.contains("public/news"), "{text}");

    // Root (and the hub's own uid) see every channel and client.
    let mut root = hub.client();
    let all = root.stats().unwrap();
    assert!(all.channels.iter().any(|c| c.name == "secure/door"));
    assert!(all.clients.iter().any(|c| c.id == secret.id()));
}

/// E16: names and other HELLO values a client chooses never reach the log
/// raw: control characters (a forged log line, ANSI escapes) and names over
/// 64 bytes are refused with an ERROR that names the key.
#[test]
fn hostile_hello_values_never_reach_the_log_raw() {
    let hub = Hub::start();
    let forged = "2099-01-01T00:00:00Z  INFO ipchubd ready FORGED";
    for hello in [
        format!("version=1\ntransport=socket\nname=x\r{forged}\x1b[2K\n"),
        format!("version=1\ntransport=x\r{forged}\x1b[31m\n"),
        format!("version=1\x1b[31m\r{forged}\n"),
        format!(
            "version=1\ntransport=socket\nname={}\n",
            "N".repeat(1_000_000)
        ),
    ] {
        let mut r = Raw::connect(&hub.socket);
        r.send_frame(FrameType::Hello, 0, "", hello.as_bytes(), 0);
        let frames = r.read_to_end();
        let (code, text) = common::error_text(&frames).expect("an ERROR");
        assert!(
            code == ErrorCode::BadHandshake as u16
                || code == ErrorCode::UnknownTransport as u16
                || code == ErrorCode::UnsupportedVersion as u16
                // A name too long for hub.max_hello_size is refused from the header.
                || code == ErrorCode::TooLarge as u16,
            "{code} {text}"
        );
        assert!(text.len() < 300, "the ERROR is short: {} bytes", text.len());
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
    }
    let mut r = Raw::connect(&hub.socket);
    r.send_frame(
        FrameType::Hello,
        0,
        "",
        format!("version=1\nname={}\n", "N".repeat(65)).as_bytes(),
        0,
    );
    let (_, text) = common::error_text(&r.read_to_end()).expect("an ERROR");
    assert!(text.contains("name") && text.contains("64"), "{text}");
    // A fine name still works.
    let mut ok = hub.raw();
    ok.send_frame(FrameType::Ping, 0, "", b"", 7);
    assert_eq!(ok.read_frame().unwrap().0, FrameType::Pong);

    let log = hub.log();
    assert!(!log.contains('\r') && !log.contains('\x1b'), "{log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("2099")),
        "a forged line: {log}"
    );
    assert!(
        !log.contains(&"N".repeat(100)),
        "the long name is not logged"
    );
    assert!(log.len() < 64 * 1024, "log grew to {} bytes", log.len());
}

/// E16: a client that keeps being denied triggers a bounded number of log
/// lines (per uid and kind), then one summary saying how many were left out.
#[test]
fn a_denial_flood_yields_a_bounded_number_of_log_lines() {
    let hub = Hub::start_with(
        r#"
[[access.rule]]
pattern = "secure/#"
publish = ["uid:12345"]
subscribe = ["uid:12345"]
"#,
    );
    let mut r = hub.raw();
    const N: u64 = 10_000;
    let mut batch = Vec::new();
    for seq in 1..=N {
        ipchub::wire::encode(
            &mut batch,
            FrameType::Publish,
            ipchub::wire::ACK_REQUESTED,
            0,
            "secure/door",
            b"x",
            0,
            seq,
        );
    }
    // Read the answers while writing, so neither side waits on the other.
    let mut w = r.sock.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(&batch).unwrap();
    });
    let mut denied = 0;
    while denied < N {
        let f = r.read_frame().expect("an answer per publish");
        assert_eq!(f.0, FrameType::Error);
        denied += 1;
    }
    writer.join().unwrap();
    let count = |log: &str| log.lines().filter(|l| l.contains("publish denied")).count();
    let logged = count(&hub.log());
    assert!(
        (1..=50).contains(&logged),
        "{logged} denial lines for {N} denials"
    );
    // The rest are summed up once the flood stops.
    wait_for(
        || hub.log().contains("similar messages suppressed"),
        "the suppression summary",
    );
    let log = hub.log();
    let summary = log
        .lines()
        .find(|l| l.contains("similar messages suppressed"))
        .unwrap();
    assert!(summary.contains("client_uid=0"), "{summary}");
    assert!(count(&log) <= 50, "{log}");
}

/// F19: `transports` lists every transport the hub serves, not just socket.
#[test]
fn stats_list_every_transport_the_hub_serves() {
    let hub = Hub::start();
    let mut c = hub.client();
    let st = c.stats().unwrap();
    let names: Vec<&str> = TransportKind::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(st.transports, names);
    for t in TransportKind::ALL {
        let mut c = hub.client_via(t);
        assert!(c
            .stats()
            .unwrap()
            .transports
            .contains(&t.name().to_string()));
    }
}

/// F19: messages an shm publisher writes straight into a channel ring and
/// an shm subscriber reads from it count as delivered.
#[test]
fn ring_to_ring_deliveries_count_as_delivered() {
    let hub = Hub::start();
    let _sub = hub.subscriber(TransportKind::Shm, "ring/a");
    let mut publisher = hub.client_via(TransportKind::Shm);
    for _ in 0..10 {
        assert_eq!(publisher.publish_confirmed("ring/a", b"hello").unwrap(), 1);
    }
    let mut probe = hub.client();
    wait_for(
        || {
            probe
                .stats()
                .unwrap()
                .channels
                .iter()
                .any(|c| c.name == "ring/a" && c.published == 10 && c.delivered == 10)
        },
        "10 published and 10 delivered on ring/a",
    );
    let st = probe.stats().unwrap();
    assert!(st.totals.messages_out >= 10, "{:?}", st.totals);
}

/// F19: a client's queue counts its frames and bytes alike: replies it does
/// not read show in both `queue_messages` and `queue_bytes`.
#[test]
fn queued_messages_and_bytes_agree() {
    let hub = Hub::start();
    let mut r = hub.raw();
    let id = {
        let mut probe = hub.client();
        probe.stats().unwrap().clients[0].id
    };
    for seq in 0..2000 {
        r.send_frame(FrameType::StatsRequest, 0, "", b"", seq);
    }
    let mut probe = hub.client();
    wait_for(
        || {
            probe
                .stats()
                .unwrap()
                .clients
                .iter()
                .any(|c| c.id == id && c.queue_bytes > 0)
        },
        "replies queued for a client that does not read",
    );
    let st = probe.stats().unwrap();
    let c = st.clients.iter().find(|c| c.id == id).unwrap();
    assert!(c.queue_messages > 0, "{c:?}");
    assert!(c.queue_bytes >= c.queue_messages * 32, "{c:?}");
    drop(r);
    std::thread::sleep(Duration::from_millis(10));
}
