//! `ipchub-bench` measures honestly: counts, order checks, the JSON schema,
//! and baselines that cannot run are reported, not dropped. Speed is not
//! checked here (the machine is shared); every run uses a handful of
//! messages.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::process::{Command, Output};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_ipchub-bench");

/// Run the bench with tiny rounds and these arguments.
fn bench(args: &[&str]) -> Output {
    Command::new(BENCH)
        .args(["--messages", "40", "--repetitions", "2"])
        .args(args)
        .output_within(LIMIT)
        .expect("run ipchub-bench")
}

/// Run it with --json and parse the report; the run must succeed.
fn report(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = bench(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ipchub-bench failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn rows<'a>(r: &'a Value, kind: &str) -> Vec<&'a Value> {
    r["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|x| x["kind"] == kind)
        .collect()
}

fn row<'a>(r: &'a Value, kind: &str, name: &str) -> &'a Value {
    rows(r, kind)
        .into_iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} row {name} in {r:#}"))
}

/// Every message of every measured round arrived once, in order, whole.
fn assert_lossless(t: &Value, sent: u64, subscribers: u64) {
    assert_eq!(t["status"], "ok", "{t:#}");
    assert_eq!(t["sent"], sent, "{t:#}");
    assert_eq!(t["received"], sent * subscribers, "{t:#}");
    assert_eq!(t["lost"], 0, "{t:#}");
    assert_eq!(t["out_of_order"], 0, "{t:#}");
    assert_eq!(t["bad_size"], 0, "{t:#}");
}

#[test]
fn json_report_follows_the_schema() {
    let r = report(&[
        "--transports",
        "socket",
        "--baselines",
        "memcpy,unix",
        "--peers",
        "none",
    ]);
    assert_eq!(r["schema"], "ipchub-bench/1");
    for key in ["cpu", "kernel", "os", "ipchub_version", "date"] {
        assert!(r["machine"][key].is_string(), "machine.{key} in {r:#}");
    }
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(r["settings"]["messages"], 40);
    assert_eq!(r["settings"]["repetitions"], 2);
    assert_eq!(r["settings"]["sizes"], serde_json::json!([1024]));
    let hub = row(&r, "hub", "socket");
    assert_eq!(hub["size"], 1024);
    let t = &hub["throughput"];
    for key in ["msgs_per_sec", "mb_per_sec", "aggregate_msgs_per_sec"] {
        let s = &t[key];
        let (min, med, max) = (
            s["min"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= med && med <= max, "{key}: {s}");
    }
    let l = &hub["latency"];
    assert_eq!(l["status"], "ok", "{l:#}");
    for key in ["avg", "p50", "p99", "p999", "max"] {
        let one = l["one_way_ns"][key].as_f64().unwrap();
        let rtt = l["round_trip_ns"][key].as_f64().unwrap();
        assert!(one > 0.0 && (rtt - 2.0 * one).abs() < 1e-6, "{key}: {l}");
    }
    assert_eq!(l["samples"], 80, "two rounds of 40 round trips");
    assert_eq!(
        row(&r, "raw", "memcpy")["latency"]["status"],
        "not_measured"
    );
    let ratio = r["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["transport"] == "socket" && x["reference"] == "unix")
        .expect("socket is held against the raw UNIX socket");
    assert!(ratio["throughput"].as_f64().unwrap() > 0.0);
    assert!(ratio["latency_p50"].as_f64().unwrap() > 0.0);
    assert_eq!(ratio["latency_bar"], 2.0);
    let topics: Vec<&str> = r["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        topics,
        [
            "high throughput",
            "low latency",
            "simplicity",
            "message boundaries"
        ]
    );
}

#[test]
fn every_transport_through_the_hub_delivers_every_message_in_order() {
    let r = report(&["--baselines", "none", "--peers", "none"]);
    for name in ["socket", "pipe", "fifo", "mqueue", "shm"] {
        assert_lossless(&row(&r, "hub", name)["throughput"], 80, 1);
        assert_eq!(row(&r, "hub", name)["latency"]["lost"], 0);
    }
}

#[test]
fn every_raw_baseline_counts_its_messages() {
    let r = report(&["--transports", "socket", "--peers", "none"]);
    for name in [
        "pipe",
        "pipe-batched",
        "fifo",
        "unix",
        "unix-batched",
        "mqueue",
        "shm",
        "tcp",
        "tcp-batched",
    ] {
        assert_lossless(&row(&r, "raw", name)["throughput"], 80, 1);
    }
    // UDP may lose datagrams; it must say how many, never more than were sent.
    let udp = &row(&r, "raw", "udp")["throughput"];
    assert_eq!(udp["status"], "ok", "{udp:#}");
    assert!(udp["received"].as_u64().unwrap() + udp["lost"].as_u64().unwrap() >= 80);
    assert_eq!(
        row(&r, "raw", "unix-batched")["latency"]["status"],
        "not_measured"
    );
}

#[test]
fn fan_out_counts_every_subscriber() {
    let r = report(&[
        "--subscribers",
        "3",
        "--transports",
        "socket,pipe",
        "--baselines",
        "none",
        "--peers",
        "none",
    ]);
    for name in ["socket", "pipe"] {
        let t = &row(&r, "hub", name)["throughput"];
        assert_lossless(t, 80, 3);
        assert_eq!(t["subscribers"], 3);
    }
}

#[test]
fn sizes_the_kernel_refuses_are_listed_with_the_reason() {
    let r = report(&[
        "--sizes",
        "64,64K",
        "--transports",
        "socket,mqueue",
        "--baselines",
        "udp",
        "--peers",
        "none",
    ]);
    let at = |kind: &str, name: &str, size: u64| {
        rows(&r, kind)
            .into_iter()
            .find(|x| x["name"] == name && x["size"] == size)
            .unwrap()
            .clone()
    };
    assert_lossless(&at("hub", "socket", 65536)["throughput"], 80, 1);
    assert_lossless(&at("hub", "socket", 64)["throughput"], 80, 1);
    let udp = &at("raw", "udp", 65536)["throughput"];
    assert_eq!(udp["status"], "not_available");
    assert!(udp["reason"].as_str().unwrap().contains("65507"), "{udp}");
    let msgsize_max: usize = std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if msgsize_max < 65536 {
        let mq = &at("hub", "mqueue", 65536)["throughput"];
        assert_eq!(mq["status"], "not_available", "{mq}");
        assert!(
            mq["reason"].as_str().unwrap().contains("msgsize_max"),
            "{mq}"
        );
    }
}

#[test]
fn an_unreachable_mqtt_broker_is_reported_not_skipped() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let r = report(&[
        "--transports",
        "socket",
        "--baselines",
        "none",
        "--peers",
        "mqtt",
        "--mqtt-url",
        &url,
    ]);
    let mqtt = row(&r, "peer", "mqtt");
    for m in ["throughput", "latency"] {
        assert_eq!(mqtt[m]["status"], "not_available", "{mqtt:#}");
        let reason = mqtt[m]["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
    }
    // The table says so too.
    let out = bench(&[
        "--transports",
        "socket",
        "--baselines",
        "none",
        "--peers",
        "mqtt",
        "--mqtt-url",
        &url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MQTT QoS 0 (Mosquitto)"), "{text}");
    assert!(
        text.contains("not available: cannot reach the MQTT broker"),
        "{text}"
    );
}

#[test]
fn peers_run_through_their_own_daemons() {
    let r = report(&["--transports", "socket", "--baselines", "none"]);
    // mqtt-bridge: a hub client → ipchubd → its MQTT bridge → the same
    // Mosquitto → an MQTT client, and pongs back through the bridge.
    for name in ["dbus", "mqtt", "mqtt-bridge"] {
        let p = row(&r, "peer", name);
        assert_lossless(&p["throughput"], 80, 1);
        assert_eq!(p["latency"]["status"], "ok", "{p:#}");
    }
    let ratio = r["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["transport"] == "socket" && x["reference"] == "mqtt")
        .expect("socket vs mqtt ratio");
    assert!(ratio["throughput"].as_f64().unwrap() > 0.0);
    assert_eq!(ratio["throughput_bar"], 5.0);
}

/// iceoryx2, ZeroMQ and NATS each produce their row, 1 → 1 and 1 → N.
/// Built with `--features peers` all three must measure every message;
/// without it iceoryx2 and ZeroMQ are rows saying how to get them.
#[test]
fn iceoryx2_zeromq_and_nats_each_produce_a_row() {
    for subscribers in ["1", "2"] {
        let r = report(&[
            "--transports",
            "socket",
            "--baselines",
            "none",
            "--peers",
            "iceoryx2,zeromq,nats",
            "--subscribers",
            subscribers,
        ]);
        let n: u64 = subscribers.parse().unwrap();
        assert_eq!(rows(&r, "peer").len(), 3, "{r:#}");
        for name in ["iceoryx2", "zeromq", "nats"] {
            let p = row(&r, "peer", name);
            if name == "nats" || cfg!(feature = "peers") {
                assert_lossless(&p["throughput"], 80, n);
                assert_eq!(p["latency"]["status"], "ok", "{p:#}");
            } else {
                for m in ["throughput", "latency"] {
                    assert_eq!(p[m]["status"], "not_available", "{p:#}");
                    let reason = p[m]["reason"].as_str().unwrap();
                    assert!(reason.contains("--features peers"), "{reason}");
                }
            }
        }
        // The hub is held against them too.
        let ratio = r["ratios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["transport"] == "socket" && x["reference"] == "nats")
            .expect("socket vs nats ratio");
        assert!(ratio["throughput"].as_f64().unwrap() > 0.0, "{ratio:#}");
    }
}

/// `--scale --quick`: every step of every dimension is measured on a hub
/// the bench started with raised limits it reports, and drawn.
#[test]
fn scale_mode_measures_every_step_and_draws_it() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("scale.svg");
    let out = Command::new(BENCH)
        .args(["--scale", "--quick", "--json", "--svg"])
        .arg(&svg)
        .output_within(LIMIT)
        .expect("run ipchub-bench --scale");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ipchub-bench --scale failed: {stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["schema"], "ipchub-bench-scale/1");
    assert!(r["hub_config"]
        .as_str()
        .unwrap()
        .contains("max_subscriptions_per_uid"));
    let points = r["points"].as_array().unwrap();
    for (dim, steps) in [
        ("clients", vec![1, 10]),
        ("channels", vec![1, 10, 100]),
        ("patterns", vec![0, 1, 10, 100]),
    ] {
        let held: Vec<u64> = points
            .iter()
            .filter(|p| p["dimension"] == dim)
            .map(|p| p["held"].as_u64().unwrap())
            .collect();
        assert_eq!(held, steps, "{dim}: {r:#}");
    }
    for p in points {
        assert!(p["error"].is_null(), "{p:#}");
        assert!(p["ns_per_msg"].as_f64().unwrap() > 0.0, "{p:#}");
        assert!(p["one_way_p50_ns"].as_f64().unwrap() > 0.0, "{p:#}");
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg"), "{chart}");
    assert_eq!(chart.matches("<polyline").count(), 6, "{chart}");
    // The text table says which limits were raised.
    let out = Command::new(BENCH)
        .args(["--scale", "--quick", "--messages", "200"])
        .output_within(LIMIT)
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("raised per-uid limits"), "{text}");
    assert!(text.contains("hub.max_channels_per_uid"), "{text}");
    assert!(text.contains("non-matching patterns held"), "{text}");
}

#[test]
fn a_running_hub_is_used_with_socket() {
    let hub = common::Hub::start();
    let r = report(&[
        "--socket",
        hub.socket.to_str().unwrap(),
        "--transports",
        "socket,fifo",
        "--baselines",
        "none",
        "--peers",
        "none",
    ]);
    assert!(r["settings"]["hub"]
        .as_str()
        .unwrap()
        .contains("running hub"));
    assert_lossless(&row(&r, "hub", "fifo")["throughput"], 80, 1);
}

#[test]
fn a_hub_that_cannot_start_fails_the_run_with_the_reason() {
    let out = bench(&[
        "--hub-binary",
        "/nonexistent/ipchubd",
        "--baselines",
        "pipe",
        "--peers",
        "none",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no ipchubd at /nonexistent/ipchubd"),
        "{text}"
    );
    // The baselines still ran.
    assert!(text.contains("pipe"), "{text}");
}

#[test]
fn csv_has_a_line_per_row_with_every_column() {
    let out = bench(&[
        "--csv",
        "--transports",
        "socket",
        "--baselines",
        "memcpy,unix",
        "--peers",
        "none",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "header and three rows:\n{text}");
    let columns = lines[0].split(',').count();
    assert!(lines[0].starts_with("kind,name,size,"));
    for l in &lines[1..] {
        assert_eq!(l.split(',').count(), columns, "{l}");
    }
    assert!(
        lines[1].starts_with("hub,socket,1024,1,ok,"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains(",not_measured,"), "{}", lines[2]);
}

#[test]
fn svg_chart_is_written_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chart.svg");
    let out = bench(&[
        "--sizes",
        "64,1K",
        "--transports",
        "socket,pipe",
        "--baselines",
        "pipe",
        "--peers",
        "none",
        "--svg",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let svg = std::fs::read_to_string(&file).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 6, "3 series x 2 panels");
    for label in [
        "hub: UNIX socket",
        "hub: pipe",
        "raw: pipe",
        "1 KiB",
        "64 B",
    ] {
        assert!(svg.contains(label), "{label}");
    }
}

#[test]
fn help_explains_every_figure_and_benchmarks_md_agrees() {
    let out = Command::new(BENCH)
        .arg("--help")
        .output_within(LIMIT)
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"))
        .expect("BENCHMARKS.md");
    for term in [
        "msgs/s",
        "MB/s",
        "p50",
        "p99.9",
        "round trip",
        "one way",
        "aggregate",
        "--repetitions",
        "memcpy",
        "not available",
    ] {
        assert!(help.contains(term), "--help lacks {term}");
        assert!(doc.contains(term), "BENCHMARKS.md lacks {term}");
    }
    for flag in [
        "--transports",
        "--sizes",
        "--messages",
        "--duration",
        "--subscribers",
        "--pin",
        "--json",
        "--csv",
        "--svg",
        "--socket",
        "--hub-binary",
        "--mqtt-url",
        "--dbus-address",
        "--scale",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
        assert!(doc.contains(flag), "BENCHMARKS.md lacks {flag}");
    }
}

#[test]
fn attacks_mode_runs_every_attack_as_another_uid_and_reports_the_bystander() {
    // The harness itself is checked here, not the hub's resistance (other
    // tests do that): every attack runs, as nobody, bounded, and the
    // bystander's view is reported for each.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("--attacks needs root to switch uids; skipped");
        return;
    }
    let t0 = std::time::Instant::now();
    let out = Command::new(BENCH)
        .args(["--attacks", "--quick", "--json"])
        .output_within(LIMIT)
        .expect("run ipchub-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ipchub-bench --attacks failed: {stderr}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(300),
        "every attack is bounded in time"
    );
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(r["schema"], "ipchub-bench-attacks/1");
    assert_eq!(r["quick"], true);
    assert_eq!(r["attacker_uid"], 65534, "the attacker is nobody");
    assert_ne!(r["bystander_uid"], r["attacker_uid"]);
    assert!(r["all_passed"].is_boolean());
    let rows = r["rows"].as_array().expect("rows");
    let ids: Vec<&str> = rows.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["none", "A1", "A2", "A3", "A4", "A5", "A6", "A7"]);
    for row in rows {
        assert!(row["attack"].is_string(), "{row:#}");
        assert_eq!(
            row["attacker"]["ready"], true,
            "every attack was set up: {row:#}"
        );
        assert!(row["attacker"]["summary"].is_string(), "{row:#}");
        assert!(row["hub_alive"].is_boolean(), "{row:#}");
        assert!(row["passed"].is_boolean(), "{row:#}");
        let b = &row["bystander"];
        for key in ["connect", "subscribe", "publish", "receive", "ping"] {
            assert!(b[key].is_boolean(), "bystander.{key}: {row:#}");
        }
        assert!(b["errors"].is_array(), "{row:#}");
    }
    assert_eq!(rows[7]["bystander_transport"], "mqueue");
    // Without an attack the bystander does everything, and its round trips
    // are measured (their values are not judged here).
    let base = &rows[0];
    assert_eq!(base["passed"], true, "{base:#}");
    for kind in ["publish_rtt", "ping_rtt"] {
        let l = &base["bystander"][kind];
        assert!(l["samples"].as_u64().unwrap() > 0, "{base:#}");
        assert!(l["p50_us"].as_u64().unwrap() <= l["p99_us"].as_u64().unwrap());
    }
    // The table form names every attack and the figures.
    let out = Command::new(BENCH)
        .args(["--attacks", "--quick"])
        .output_within(LIMIT)
        .expect("run ipchub-bench");
    let table = String::from_utf8_lossy(&out.stdout);
    for term in ["A1", "A7", "pub p99", "ping p99", "A5 attacker:"] {
        assert!(table.contains(term), "table lacks {term}:\n{table}");
    }
}

/// `--restart --quick`: a planned restart under every step's clients,
/// each kept on its own connection (the bench's clients never reconnect),
/// and the pause measured.
#[test]
fn restart_mode_keeps_every_client_and_measures_the_pause() {
    let out = Command::new(BENCH)
        .args(["--restart", "--quick", "--json"])
        .output_within(LIMIT)
        .expect("run ipchub-bench --restart");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ipchub-bench --restart failed: {stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["schema"], "ipchub-bench-restart/1");
    let points = r["points"].as_array().unwrap();
    let clients: Vec<u64> = points
        .iter()
        .map(|p| p["clients"].as_u64().unwrap())
        .collect();
    assert_eq!(clients, [1, 10], "{r:#}");
    for p in points {
        assert!(p["error"].is_null(), "{p:#}");
        let n = p["clients"].as_u64().unwrap();
        // The idle ones plus the ping-pong's publisher and subscriber.
        assert_eq!(p["clients_kept"].as_u64(), Some(n + 2), "{p:#}");
        assert_eq!(p["idle_answering"].as_u64(), Some(n), "{p:#}");
        let pause = p["longest_pause_ns"].as_f64().unwrap();
        assert!(pause >= p["round_trip_p50_ns"].as_f64().unwrap(), "{p:#}");
    }
    // --quick belongs to the modes that have a short form.
    let out = Command::new(BENCH)
        .args(["--quick"])
        .output_within(LIMIT)
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--restart"));
}
