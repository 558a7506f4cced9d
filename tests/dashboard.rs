//! `ipchubctl dashboard` through the real binaries: the token, the loopback
//! rule, the UNIX listener, /metrics against `ipchubctl stats --json`,
//! access filtering as another uid, hub restarts, tails, and no polling
//! while nobody looks.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};
mod dashboard_common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::{Hub, IPCHUBCTL};
use dashboard_common::{http, http_host, http_unix, metric, Dash};
use ipchub::client::PublishOptions;
use ipchub::hub::TransportKind;

fn local() -> [&'static str; 2] {
    ["--listen", "127.0.0.1:0"]
}

#[test]
fn tcp_requires_the_printed_token_and_keeps_it_in_a_cookie() {
    let hub = Hub::start();
    let d = Dash::start(&hub.socket, &local());
    let token = d.token.clone().expect("a token in the printed URL");
    assert_eq!(token.len(), 32, "128 random bits as hex: {token}");
    assert!(
        d.banner.contains(&format!("Authorization: Bearer {token}")),
        "{}",
        d.banner
    );
    // Another dashboard gets another token.
    let d2 = Dash::start(&hub.socket, &local());
    assert_ne!(d2.token, d.token);

    for path in [
        "/",
        "/metrics",
        "/api/events",
        "/app.js",
        "/api/tail?channel=a",
    ] {
        let r = http(&d.addr, path, "");
        assert_eq!(r.status, 401, "{path} without a token: {}", r.head);
        let r = http(
            &d.addr,
            path,
            "Authorization: Bearer 00000000000000000000000000000000\r\n",
        );
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let wrong = http(&d.addr, &format!("{path}?token=x{token}"), "");
        assert_eq!(wrong.status, 401, "{path} with a longer token");
    }
    // The printed URL: the token goes into a cookie and the browser back to /.
    let r = http(&d.addr, &format!("/?token={token}"), "");
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(r.header("location").as_deref(), Some("/"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let page = http(&d.addr, "/", &format!("Cookie: {pair}\r\n"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>ipchub"), "{}", page.body);
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    let m = d.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(m.body.contains("\nipchub_up 1\n") || m.body.contains("ipchub_up 1\n"));

    // A page served from elsewhere reaching 127.0.0.1 by DNS rebinding
    // names its own host: refused even with the token.
    let auth = format!("Authorization: Bearer {token}\r\n");
    let r = http_host(&d.addr, "evil.example:80", "/metrics", &auth);
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(
        http_host(&d.addr, "localhost", "/metrics", &auth).status,
        200
    );

    // --no-token: explicit opt-out.
    let open = Dash::start(&hub.socket, &["--listen", "127.0.0.1:0", "--no-token"]);
    assert!(open.token.is_none(), "{}", open.banner);
    assert_eq!(http(&open.addr, "/metrics", "").status, 200);
}

#[test]
fn a_token_file_is_used_and_not_printed() {
    let hub = Hub::start();
    let file = hub.dir.path().join("token");
    std::fs::write(&file, "s3cret-token_1\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(IPCHUBCTL)
        .args(["dashboard", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&file)
        .env("IPCHUB_SOCKET", &hub.socket)
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by other users"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Dash::start(
        &hub.socket,
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!d.banner.contains("s3cret"), "{}", d.banner);
    assert_eq!(http(&d.addr, "/metrics", "").status, 401);
    let ok = http(
        &d.addr,
        "/metrics",
        "Authorization: Bearer s3cret-token_1\r\n",
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn non_loopback_addresses_are_refused_without_allow_remote() {
    let hub = Hub::start();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9178"] {
        let out = Command::new(IPCHUBCTL)
            .args(["dashboard", "--listen", addr])
            .env("IPCHUB_SOCKET", &hub.socket)
            .output_within(LIMIT)
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{addr}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to listen on non-loopback address")
                && err.contains("--allow-remote"),
            "{addr}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    for bad in ["localhost", "127.0.0.1", "unix:", "http://127.0.0.1:1"] {
        let out = Command::new(IPCHUBCTL)
            .args(["dashboard", "--listen", bad])
            .env("IPCHUB_SOCKET", &hub.socket)
            .output_within(LIMIT)
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid --listen"),
            "{bad}"
        );
    }
    // With the flag it listens (and still wants the token).
    let d = Dash::start(&hub.socket, &["--listen", "0.0.0.0:0", "--allow-remote"]);
    assert!(d.token.is_some());
    let port = d.addr.rsplit_once(':').unwrap().1;
    let r = http(&format!("127.0.0.1:{port}"), "/metrics", "");
    assert_eq!(r.status, 401);
}

#[test]
fn a_unix_listener_is_private_to_its_owner_and_needs_no_token() {
    let hub = Hub::start();
    let path = hub.dir.path().join("dash.sock");
    let arg = format!("unix:{}", path.display());
    let d = Dash::start(&hub.socket, &["--listen", &arg]);
    assert!(d.token.is_none());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let r = http_unix(&path, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("ipchub_up 1"));
    // A stale socket of a killed dashboard is replaced; a live one is not.
    let out = Command::new(IPCHUBCTL)
        .args(["dashboard", "--listen", &arg])
        .env("IPCHUB_SOCKET", &hub.socket)
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on unix:"));
    drop(d);
    assert!(path.exists());
    let d = Dash::start(&hub.socket, &["--listen", &arg]);
    assert_eq!(http_unix(&path, "/metrics").status, 200);
    drop(d);
}

#[test]
fn metrics_match_stats_json_and_bound_the_channel_label() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(TransportKind::Socket, "m/#");
    let mut publ = hub.client();
    for (ch, n) in [("m/a", 30), ("m/b", 20), ("m/c", 5), ("m/d", 1)] {
        for i in 0..n {
            publ.publish_with(
                ch,
                format!("payload {i}").as_bytes(),
                PublishOptions {
                    ack: true,
                    priority: 0,
                },
            )
            .unwrap();
        }
    }
    publ.flush().unwrap();
    let mut got = 0;
    while got < 56 {
        if sub.recv(Some(Duration::from_secs(10))).unwrap().is_some() {
            got += 1;
        }
    }
    let d = Dash::start(
        &hub.socket,
        &["--listen", "127.0.0.1:0", "--metrics-top-channels", "2"],
    );
    let m = d.metrics();
    let out = hub
        .ctl()
        .args(["stats", "--json"])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success());
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (series, key) in [
        ("ipchub_messages_in_total", "messages_in"),
        ("ipchub_messages_out_total", "messages_out"),
        ("ipchub_bytes_in_total", "bytes_in"),
        ("ipchub_bytes_out_total", "bytes_out"),
        ("ipchub_dropped_total", "dropped"),
    ] {
        assert_eq!(metric(&m, series), st[key].as_f64(), "{series}");
    }
    assert_eq!(metric(&m, "ipchub_messages_in_total"), Some(56.0));
    assert_eq!(
        metric(&m, "ipchub_start_time_seconds"),
        st["started_at"].as_f64()
    );
    let chans = st["channels"].as_array().unwrap();
    let get = |name: &str, key: &str| {
        chans.iter().find(|c| c["name"] == name).unwrap()[key]
            .as_f64()
            .unwrap()
    };
    for (field, key) in [
        ("published", "published"),
        ("delivered", "delivered"),
        ("bytes", "bytes"),
        ("dropped", "dropped"),
    ] {
        for ch in ["m/a", "m/b"] {
            assert_eq!(
                metric(
                    &m,
                    &format!("ipchub_channel_{field}_total{{channel=\"{ch}\"}}")
                ),
                Some(get(ch, key)),
                "{field} {ch}"
            );
        }
        // Beyond the top two: one "(other)" series with the sum.
        assert_eq!(
            metric(
                &m,
                &format!("ipchub_channel_{field}_total{{channel=\"(other)\"}}")
            ),
            Some(get("m/c", key) + get("m/d", key)),
        );
        assert!(metric(
            &m,
            &format!("ipchub_channel_{field}_total{{channel=\"m/c\"}}")
        )
        .is_none());
    }
    assert_eq!(
        metric(&m, "ipchub_channel_subscribers{channel=\"m/a\"}"),
        Some(get("m/a", "subscribers"))
    );
    let series: std::collections::BTreeSet<&str> = m
        .iter()
        .filter(|(k, _)| k.starts_with("ipchub_channel_published_total"))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(series.len(), 3, "{series:?}");
    // Our subscriber and publisher are socket clients; so are the dashboard's own.
    assert!(metric(&m, "ipchub_transport_clients{transport=\"socket\"}").unwrap() >= 2.0);
    drop(sub);
}

const POLICY: &str = r#"
[access]
default = "allow"
[[access.rule]]
pattern = "secure/#"
publish = ["uid:0"]
subscribe = ["user:root"]
"#;

#[test]
fn another_user_sees_only_the_channels_it_may_read() {
    let hub = Hub::start_with(POLICY);
    std::fs::set_permissions(hub.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = hub.client();
    c.publish("secure/door", b"open").unwrap();
    c.publish("public/weather", b"sunny").unwrap();
    c.flush().unwrap();
    hub.wait_subscribers("public/weather", 0);
    // Root's view has both.
    let root = Dash::start(&hub.socket, &local());
    let m = root.metrics();
    assert!(
        metric(
            &m,
            "ipchub_channel_published_total{channel=\"secure/door\"}"
        )
        .is_some(),
        "{m:?}"
    );

    let d = Dash::start_as_nobody(&hub.socket, &local());
    let m = d.metrics();
    assert_eq!(metric(&m, "ipchub_up"), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "ipchub_channel_published_total{channel=\"public/weather\"}"
        ),
        Some(1.0),
        "{m:?}"
    );
    assert!(
        !m.iter().any(|(k, _)| k.contains("secure")),
        "nobody sees a channel it may not read: {m:?}"
    );
    // The page's feed says the same, and a tail of the secret channel is refused.
    let mut ev = d.stream("/api/events");
    let sample = ev.wait_for("\"channels\"");
    assert!(
        sample.contains("public/weather") && !sample.contains("secure"),
        "{sample}"
    );
    let mut tail = d.stream("/api/tail?channel=secure/door");
    let err = tail.wait_for("\"kind\":\"error\"");
    assert!(err.contains("may not subscribe"), "{err}");
}

#[test]
fn it_stays_up_across_hub_restarts() {
    let mut hub = Hub::start();
    let d = Dash::start(&hub.socket, &local());
    let m = d.metrics();
    assert_eq!(metric(&m, "ipchub_up"), Some(1.0));
    let started = metric(&m, "ipchub_start_time_seconds").unwrap();
    let mut ev = d.stream("/api/events");
    ev.wait_for("\"error\":null");
    hub.kill9();
    assert_eq!(metric(&d.metrics(), "ipchub_up"), Some(0.0));
    ev.wait_for("\"error\":\"hub not running");
    std::thread::sleep(Duration::from_millis(1100)); // a new start time
    hub.restart();
    let m = d.metrics();
    assert_eq!(metric(&m, "ipchub_up"), Some(1.0));
    assert!(metric(&m, "ipchub_start_time_seconds").unwrap() > started);
    ev.wait_for("\"error\":null");
}

#[test]
fn a_tail_shows_payloads_cut_as_text_or_hex() {
    let hub = Hub::start();
    let d = Dash::start(
        &hub.socket,
        &["--listen", "127.0.0.1:0", "--tail-max-bytes", "8"],
    );
    let mut text = d.stream("/api/tail?channel=t/a");
    text.wait_for("\"kind\":\"subscribed\"");
    let mut hex = d.stream("/api/tail?channel=t/%2B&format=hex&max=3");
    hex.wait_for("\"kind\":\"subscribed\"");
    let mut c = hub.client();
    c.publish("t/a", b"hello tail world").unwrap();
    c.flush().unwrap();
    let line = text.wait_for("\"kind\":\"message\"");
    assert!(
        line.contains("\"payload\":\"hello ta\"")
            && line.contains("\"truncated\":true")
            && line.contains("\"len\":16"),
        "{line}"
    );
    let line = hex.wait_for("\"kind\":\"message\"");
    assert!(line.contains("\"payload\":\"68 65 6c\""), "{line}");
    for bad in [
        "/api/tail?channel=a//b",
        "/api/tail?channel=a&format=bin",
        "/api/tail",
    ] {
        assert_eq!(d.get(bad).status, 400, "{bad}");
    }
    // Closing the page ends the subscription.
    drop(text);
    drop(hex);
    hub.wait_subscribers("t/a", 0);
}

/// Voluntary context switches of all the process's threads.
fn switches(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
            n += s
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        }
    }
    n
}

#[test]
fn it_polls_the_hub_only_while_someone_looks() {
    let hub = Hub::start();
    let d = Dash::start(
        &hub.socket,
        &["--listen", "127.0.0.1:0", "--interval", "0.1"],
    );
    let dash_clients = || {
        let out = hub
            .ctl()
            .args(["stats", "--json"])
            .output_within(LIMIT)
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st["clients"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "ipchubctl dashboard")
            .count()
    };
    // Started, nobody looking: not even connected.
    assert_eq!(dash_clients(), 0);
    // A page open: ten samples a second, each a wake-up.
    let mut ev = d.stream("/api/events");
    ev.wait_for("\"error\":null");
    let before = switches(d.pid());
    std::thread::sleep(Duration::from_secs(2));
    let busy = switches(d.pid()).saturating_sub(before);
    assert!(busy >= 10, "{busy} wake-ups in 2 s while polling");
    drop(ev);
    std::thread::sleep(Duration::from_millis(500));
    // Closed: the poller stops; a few wake-ups at most (threads parking).
    let before = switches(d.pid());
    std::thread::sleep(Duration::from_secs(2));
    let idle = switches(d.pid()).saturating_sub(before);
    assert!(idle <= 3, "{idle} wake-ups in 2 s with nobody looking");
}

#[test]
fn open_pages_and_tails_are_bounded() {
    let hub = Hub::start();
    let d = Dash::start(
        &hub.socket,
        &["--listen", "127.0.0.1:0", "--max-streams", "2"],
    );
    let mut a = d.stream("/api/events");
    a.wait_for("event: sample");
    let mut b = d.stream("/api/tail?channel=x");
    b.wait_for("\"kind\":\"subscribed\"");
    for path in ["/api/events", "/api/tail?channel=y"] {
        let r = d.get(path);
        assert_eq!(r.status, 503, "{path}: {}", r.head);
        assert!(r.body.contains("--max-streams"));
    }
    // Closing one frees its place (the tail's subscription ends with it).
    drop(b);
    hub.wait_subscribers("x", 0);
    let mut c = d.stream("/api/tail?channel=y");
    c.wait_for("\"kind\":\"subscribed\"");
    // /metrics is not a stream.
    assert_eq!(d.get("/metrics").status, 200);
}

#[test]
fn channel_rings_and_their_readers_are_shown() {
    let hub = Hub::start();
    let d = Dash::start(&hub.socket, &local());
    // An shm subscriber of an exact channel reads its ring in place.
    let mut r = hub.subscriber(TransportKind::Shm, "ring/x");
    let mut p = hub.client_via(TransportKind::Shm);
    p.publish("ring/x", b"in place").unwrap();
    p.flush().unwrap();
    assert!(r.recv(Some(Duration::from_secs(10))).unwrap().is_some());
    let out = hub
        .ctl()
        .args(["stats", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ch = st["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ring/x")
        .unwrap()
        .clone();
    assert_eq!(ch["ring"], true, "{ch}");
    let readers = ch["ring_readers"].as_f64().unwrap();
    assert!(readers >= 1.0, "{ch}");
    let m = d.metrics();
    assert_eq!(
        metric(&m, "ipchub_channel_ring_readers{channel=\"ring/x\"}"),
        Some(readers)
    );
    let mut ev = d.stream("/api/events");
    let sample = ev.wait_for("ring/x");
    assert!(sample.contains("\"ring\":true"), "{sample}");
}
