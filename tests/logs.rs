//! What the daemon tells an operator: the ready line, `ipchubctl stats`
//! (transports, queued apart from delivered), the lines a drop-oldest loss,
//! a slow consumer and a reload cause, and the journal's fields
//! (ipchubd(8), LOGGING and JOURNAL FIELDS), through the real binaries.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Hub, IPCHUBD};
use ipchub::client::{Client, Options, Reconnect};
use ipchub::hub::{HubStats, TransportKind};

/// Wait up to `secs` for `cond` (the drop report comes every 10 s).
fn wait_long(secs: u64, mut cond: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn named(hub: &Hub, name: &str) -> Client {
    Client::connect(&Options {
        name: name.into(),
        reconnect: Reconnect::off(),
        ..hub.options(TransportKind::Socket)
    })
    .unwrap()
}

fn stats_json(hub: &Hub) -> HubStats {
    let out = hub
        .ctl()
        .args(["stats", "--json"])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn ready_line_names_the_transports_the_socket_and_the_configuration() {
    let hub = Hub::start();
    wait_for(|| hub.log().contains("ipchubd ready"), "the ready line");
    let log = hub.log();
    let line = log.lines().find(|l| l.contains("ipchubd ready")).unwrap();
    assert!(
        line.contains("Backends available: socket, pipe, fifo, mqueue, shm"),
        "{line}"
    );
    assert!(line.contains(hub.socket.to_str().unwrap()), "{line}");
    assert!(
        line.contains(&format!("configuration: {}", hub.config.display())),
        "{line}"
    );
    // The journal field is left out of plain text.
    assert!(!line.contains("message_id"), "{line}");
}

/// Issue #18 item 12 and item 6: a drop-oldest subscriber that read
/// some messages of 3000 shows 3000 queued, far fewer delivered, the rest
/// dropped or waiting; `stats` has a table per transport; and the losses
/// are logged once per interval, per subscriber and channel.
#[test]
fn stats_say_queued_and_delivered_apart_and_drops_are_reported() {
    let hub = Hub::start_with("[queue]\nmax_messages = 16\noverflow = \"drop-oldest\"\n");
    let mut sub = named(&hub, "reader160");
    sub.subscribe("news").unwrap();
    let mut publisher = named(&hub, "publisher");
    const N: u64 = 3000;
    let payload = vec![b'x'; 1000];
    let mut read = 0;
    for i in 0..N {
        if i == 200 {
            // The subscriber reads what came of these (drop-oldest
            // already lost some), then stops reading.
            publisher.flush().unwrap();
            while sub
                .recv(Some(Duration::from_millis(500)))
                .unwrap()
                .is_some()
            {
                read += 1;
            }
        }
        if i + 1 == N {
            publisher.publish_confirmed("news", &payload).unwrap();
        } else {
            publisher.publish("news", &payload).unwrap();
        }
    }
    let st = stats_json(&hub);
    let c = st
        .clients
        .iter()
        .find(|c| c.name == "reader160")
        .unwrap_or_else(|| panic!("no reader160 in {st:#?}\n{}", hub.log()));
    assert_eq!(c.messages_out, N, "queued: every message");
    assert!(
        read > 0 && c.messages_delivered >= read,
        "{read} read: {c:?}"
    );
    assert!(
        c.messages_delivered < N / 2,
        "delivered is not queued: {c:?}"
    );
    assert!(c.dropped > 0, "{c:?}");
    assert!(
        c.messages_delivered + c.dropped <= N
            && N - c.messages_delivered - c.dropped <= c.queue_messages as u64,
        "queued = delivered + dropped + waiting: {c:?}"
    );
    assert_eq!(c.bytes_out, N * 1000);
    let socket = st
        .per_transport
        .iter()
        .find(|t| t.name == "socket")
        .unwrap();
    assert!(socket.clients >= 2, "{socket:?}");
    assert_eq!(socket.bytes_in, N * 1000, "{socket:?}");
    assert_eq!(
        st.per_transport
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        st.transports
    );

    let out = hub.ctl().arg("stats").output_within(LIMIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TRANSPORT  CLIENTS     BYTES IN    BYTES OUT"),
        "{text}"
    );
    assert!(text.contains("QUEUED  DELIVERED  DROPPED"), "{text}");
    let row = text.lines().find(|l| l.contains("reader160")).unwrap();
    assert!(
        row.contains(&format!(" {N} {:>10} ", c.messages_delivered))
            || row.contains(&format!(" {N} ")),
        "{row}"
    );

    // One line for this subscriber and channel, with the count.
    wait_long(
        25,
        || hub.log().contains("messages dropped for client"),
        "the drop report",
    );
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("messages dropped for client"))
        .unwrap();
    assert!(line.contains("channel 'news'"), "{line}");
    assert!(line.contains("name=reader160"), "{line}");
    assert!(line.contains("overflow = \\\"drop-oldest\\\"") || line.contains("drop-oldest"));
    let n: u64 = line
        .split(" messages dropped")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(n > 0 && n <= c.dropped + 1, "{n} vs {c:?}");
}

#[test]
fn a_slow_consumer_disconnect_names_the_client() {
    let hub = Hub::start_with("[queue]\nmax_messages = 16\noverflow = \"disconnect\"\n");
    let mut sub = named(&hub, "slowpoke");
    sub.subscribe("feed").unwrap();
    let mut publisher = named(&hub, "fast");
    let payload = vec![b'y'; 1000];
    for _ in 0..3000 {
        if publisher.publish("feed", &payload).is_err() {
            break;
        }
    }
    let _ = publisher.publish_confirmed("feed", b"end");
    wait_for(
        || hub.log().contains("disconnected: queue full"),
        "the slow consumer's disconnection",
    );
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("disconnected: queue full"))
        .unwrap();
    assert!(line.contains("(slowpoke) disconnected"), "{line}");
    assert!(line.contains("name=slowpoke"), "{line}");
    assert!(
        line.contains(&format!("client_pid={}", std::process::id())),
        "{line}"
    );
    drop(sub);
}

#[test]
fn a_reload_says_what_changed_and_subscriptions_are_debug() {
    let hub = Hub::start_with("[queue]\nmax_messages = 16\n");
    let _sub = hub.subscriber(TransportKind::Socket, "weather/#");
    wait_for(|| hub.log().contains("subscribed"), "the subscription line");
    let log = hub.log();
    let line = log.lines().find(|l| l.contains("subscribed")).unwrap();
    assert!(
        line.contains("DEBUG") && line.contains("channel=weather/#"),
        "{line}"
    );

    let text = std::fs::read_to_string(&hub.config)
        .unwrap()
        .replace("max_messages = 16", "max_messages = 32");
    std::fs::write(&hub.config, text).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        || hub.log().contains("configuration reloaded:"),
        "the reload line",
    );
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded:"))
        .unwrap();
    assert!(line.contains("queue.max_messages 16 -> 32"), "{line}");

    // A reload that changes nothing says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        || {
            hub.log()
                .contains("configuration reloaded: nothing changed")
        },
        "the second reload line",
    );
}

/// One native-protocol datagram as field → value (every field the daemon
/// sends is length-prefixed: `NAME\n<u64 le><value>\n`).
fn parse_entry(mut d: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    while !d.is_empty() {
        let nl = d.iter().position(|b| *b == b'\n').expect("field name");
        let name = String::from_utf8(d[..nl].to_vec()).unwrap();
        assert!(!name.contains('='), "text form not expected: {name}");
        d = &d[nl + 1..];
        let len = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
        let value = String::from_utf8_lossy(&d[8..8 + len]).into_owned();
        assert_eq!(d[8 + len], b'\n');
        d = &d[9 + len..];
        out.insert(name, value);
    }
    out
}

/// The journal's side, through a socket of our own standing in for
/// /run/systemd/journal/socket (`IPCHUB_JOURNAL_SOCKET`).
#[test]
fn journal_entries_carry_stable_fields_message_ids_and_syslog_priorities() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = dir.path().join("ipchub.sock");
    let config = dir.path().join("ipchub.toml");
    std::fs::write(&config, "[dbus]\nenabled = false\n").unwrap();
    let mut child = Command::new(IPCHUBD)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .args(["--log", "journal"])
        .env("IPCHUB_JOURNAL_SOCKET", &journal_path)
        .env("IPCHUB_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut entries: Vec<HashMap<String, String>> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut next = |entries: &mut Vec<HashMap<String, String>>| {
        let n = journal.recv(&mut buf).expect("a journal entry");
        if n > 0 {
            entries.push(parse_entry(&buf[..n]));
        }
    };
    while !entries
        .iter()
        .any(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(READY))
    {
        next(&mut entries);
    }
    let mut client = Client::connect(&Options {
        socket: Some(socket.clone()),
        name: "journal-test".into(),
        reconnect: Reconnect::off(),
        ..Options::default()
    })
    .unwrap();
    client.subscribe("sensors/#").unwrap();
    while !entries
        .iter()
        .any(|e| e.get("MESSAGE").is_some_and(|m| m == "subscribed"))
    {
        next(&mut entries);
    }
    // A reload, found by its MESSAGE_ID, says what changed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    while !entries
        .iter()
        .any(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(RELOADED))
    {
        next(&mut entries);
    }
    let _ = child.kill();
    let _ = child.wait_within(LIMIT);
    let reloaded = entries
        .iter()
        .find(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(RELOADED))
        .unwrap();
    assert_eq!(reloaded["IPCHUB_CHANGED"], "nothing changed");
    assert_eq!(reloaded["PRIORITY"], "6");

    let ready = entries
        .iter()
        .find(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(READY))
        .unwrap();
    assert_eq!(ready["PRIORITY"], "6", "INFO is priority 6: {ready:?}");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "ipchubd");
    assert_eq!(
        ready["IPCHUB_TRANSPORTS"],
        "socket, pipe, fifo, mqueue, shm"
    );
    assert_eq!(ready["IPCHUB_SOCKET"], socket.display().to_string());
    assert_eq!(ready["IPCHUB_CONFIG"], config.display().to_string());

    let connected = entries
        .iter()
        .find(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(CLIENT_CONNECTED))
        .unwrap_or_else(|| panic!("no client-connected entry in {entries:?}"));
    assert_eq!(connected["PRIORITY"], "6");
    assert_eq!(connected["IPCHUB_NAME"], "journal-test");
    assert_eq!(connected["IPCHUB_TRANSPORT"], "socket");
    assert_eq!(
        connected["IPCHUB_CLIENT_PID"],
        std::process::id().to_string()
    );
    assert!(connected["MESSAGE"].starts_with("client connected via"));
    let id = &connected["IPCHUB_CLIENT"];

    let subscribed = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m == "subscribed"))
        .unwrap();
    assert_eq!(subscribed["PRIORITY"], "7", "debug");
    assert_eq!(&subscribed["IPCHUB_CLIENT"], id);
    assert_eq!(subscribed["IPCHUB_CHANNEL"], "sensors/#");

    for e in &entries {
        for k in e.keys() {
            assert!(!k.starts_with("F_"), "unprefixed field {k} in {e:?}");
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "journald refuses the field name {k}"
            );
        }
    }
}

const READY: &str = "6fba17bdb7b24bba8d52effca717f834";
const CLIENT_CONNECTED: &str = "241d444c39854de78145bdd778af6a26";
const RELOADED: &str = "830cee4813784e3d94261d423e306bc8";

#[test]
fn message_ids_in_the_man_page_are_the_code_s() {
    use ipchub::daemon::logging::msgid;
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/ipchubd.8")).unwrap();
    assert_eq!(READY, msgid::READY);
    assert_eq!(CLIENT_CONNECTED, msgid::CLIENT_CONNECTED);
    assert_eq!(RELOADED, msgid::RELOADED);
    for id in [
        msgid::READY,
        msgid::CLIENT_CONNECTED,
        msgid::CLIENT_DISCONNECTED,
        msgid::ACCESS_DENIED,
        msgid::SLOW_CONSUMER,
        msgid::MESSAGES_DROPPED,
        msgid::RING_RETIRED,
        msgid::RELOADED,
        msgid::RELOAD_FAILED,
    ] {
        assert!(page.contains(id), "{id} is not in ipchubd(8)");
    }
}

#[test]
fn a_channel_ring_s_policy_is_spelled_as_in_the_configuration() {
    let hub = Hub::start_with("[queue]\noverflow = \"drop-oldest\"\n");
    let _sub = hub.subscriber(TransportKind::Shm, "ring/a");
    let mut p = hub.client_via(TransportKind::Shm);
    p.publish("ring/a", b"x").unwrap();
    p.flush().unwrap();
    wait_for(
        || hub.log().contains("channel ring created"),
        "the ring line",
    );
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("channel ring created"))
        .unwrap();
    assert!(
        line.contains("policy=\"drop-oldest\"") || line.contains("policy=drop-oldest"),
        "{line}"
    );
}

/// Without message queues to give (RLIMIT_MSGQUEUE 0), the ready line and
/// `stats` leave mqueue out: they name what is served.
#[test]
fn transports_the_host_cannot_serve_are_not_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipchub.sock");
    let config = dir.path().join("ipchub.toml");
    let log = dir.path().join("ipchubd.log");
    std::fs::write(&config, "[dbus]\nenabled = false\n").unwrap();
    let mut child = Command::new("prlimit")
        .args(["--msgqueue=0:0", "--"])
        .arg(IPCHUBD)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .args(["--log", "stderr"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_long(15, || read().contains("ipchubd ready"), "the ready line");
    let out = Command::new(common::IPCHUBCTL)
        .arg("--socket")
        .arg(&socket)
        .args(["stats", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait_within(LIMIT);
    let text = read();
    assert!(
        text.contains("Backends available: socket, pipe, fifo, shm;"),
        "{text}"
    );
    assert!(text.contains("the mqueue transport is not available here"));
    let st: HubStats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st.transports, ["socket", "pipe", "fifo", "shm"]);
    assert!(st.per_transport.iter().all(|t| t.name != "mqueue"));
}
