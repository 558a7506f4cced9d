//! The daemon's contract with its environment: systemd socket activation and
//! readiness, configuration errors, and `ipchubctl` as scripts see it.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_child, wait_for, Hub, IPCHUBCTL, IPCHUBD};
use ipchub::client::{Client, Options};

#[test]
fn socket_activation_uses_the_passed_socket_reports_ready_and_never_unlinks_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ipchub.sock");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg(IPCHUBD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    wait_for(|| sock.exists(), "the activation socket");
    // The first client triggers the start; it is served on the passed socket.
    let opts = Options {
        socket: Some(sock.clone()),
        ..Options::default()
    };
    let mut c = Client::connect(&opts).expect("connect through the activated socket");
    assert_eq!(c.publish_confirmed("a", b"x").unwrap(), 0);
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).expect("a notify message");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("STATUS="), "{msg}");
    // The status line then says what the hub is doing (refreshed every 5 s).
    let mut status = String::new();
    while !status.contains("1 messages in") {
        let n = notify.recv(&mut buf).expect("a STATUS= update within 10 s");
        status = String::from_utf8_lossy(&buf[..n]).to_string();
    }
    assert!(
        status.starts_with("STATUS=") && status.contains("clients"),
        "{status}"
    );
    drop(c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        sock.exists(),
        "a socket owned by systemd is never unlinked by the daemon"
    );
}

#[test]
fn config_errors_name_the_key_and_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[queue]\nmax_mesages = 3\n").unwrap();
    let out = Command::new(IPCHUBD)
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_mesages") && err.contains("line 2"),
        "{err}"
    );
    assert!(
        !dir.path().join("s").exists(),
        "nothing bound on a bad config"
    );
    let out = Command::new(IPCHUBCTL)
        .arg("check-config")
        .arg(&cfg)
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/ipchub.toml");
    let out = Command::new(IPCHUBD)
        .arg("--check-config")
        .arg("--config")
        .arg(good)
        .output_within(LIMIT)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ctl_sub_and_pub_print_what_scripts_expect() {
    let hub = Hub::start();
    let sub = hub
        .ctl()
        .args(["sub", "--channel", "weather", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hub.wait_subscribers("weather", 1);
    let out = hub
        .ctl()
        .args(["pub", "--channel", "weather", "{\"temp\": 72}"])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Published (1 subscriber)\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Connected to hub via UNIX socket"));
    // One message per stdin line, each confirmed; --backend is an alias.
    let mut p = hub
        .ctl()
        .args(["pub", "--backend", "socket", "--channel", "weather"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), b"line one\nline two\n").unwrap();
    drop(p.stdin.take());
    let out = p.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Published (1 subscriber)\nPublished (1 subscriber)\n"
    );
    let out = sub.wait_with_output_timeout();
    assert_eq!(
        String::from_utf8_lossy(&out.0),
        "[weather] {\"temp\": 72}\n[weather] line one\n[weather] line two\n"
    );
    let err = String::from_utf8_lossy(&out.1);
    assert!(
        err.contains("Connected to hub via UNIX socket") && err.contains("Subscribed to 'weather'"),
        "{err}"
    );
}

#[test]
fn ctl_sub_json_and_raw_keep_payloads_exact() {
    let hub = Hub::start();
    let json = hub
        .ctl()
        .args(["sub", "-c", "bin", "-n", "2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let raw = hub
        .ctl()
        .args(["sub", "-c", "bin", "-n", "2", "--raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    hub.wait_subscribers("bin", 2);
    let mut p = hub.client();
    assert_eq!(p.publish_confirmed("bin", b"text").unwrap(), 2);
    assert_eq!(p.publish_confirmed("bin", &[0, 255, 10, 0]).unwrap(), 2);
    let out = json.wait_with_output_timeout();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.0)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["channel"], "bin");
    assert_eq!(lines[0]["payload"], "text");
    assert_eq!(lines[0]["publisher"]["client"], p.id());
    assert!(lines[0]["sequence"].is_u64());
    assert_eq!(lines[1]["payload_base64"], "AP8KAA==");
    assert_eq!(raw.wait_with_output_timeout().0, b"text\x00\xff\x0a\x00");
}

#[test]
fn ctl_errors_are_one_clear_line_and_a_failure_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(IPCHUBCTL)
        .env("IPCHUB_SOCKET", dir.path().join("nope.sock"))
        .args(["pub", "--channel", "weather", "x"])
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ipchubctl: hub not running"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let hub = Hub::start();
    let out = hub
        .ctl()
        .args(["pub", "--channel", "bad//name", "x"])
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid channel") && err.contains("empty level"),
        "{err}"
    );
}

#[test]
fn ctl_stats_prints_a_table_and_json() {
    let hub = Hub::start();
    let _s = hub.subscriber(ipchub::hub::TransportKind::Socket, "weather");
    hub.client().publish_confirmed("weather", b"x").unwrap();
    let out = hub.ctl().arg("stats").output_within(LIMIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("weather") && text.contains("CHANNEL") && text.contains("messages in 1"),
        "{text}"
    );
    let out = hub
        .ctl()
        .args(["stats", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["messages_in"], 1);
    assert!(v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["subscriptions"][0] == "weather"));
}

trait WaitOutput {
    fn wait_with_output_timeout(self) -> (Vec<u8>, Vec<u8>);
}

impl WaitOutput for std::process::Child {
    /// Collect output, failing the test if the process hangs.
    fn wait_with_output_timeout(self) -> (Vec<u8>, Vec<u8>) {
        let pid = self.id() as i32;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        });
        let out = self.wait_with_output().unwrap();
        drop(killer);
        assert!(out.status.code().is_some(), "process hung and was killed");
        (out.stdout, out.stderr)
    }
}

#[test]
fn ctl_sub_into_a_closed_pipe_ends_quietly() {
    let hub = Hub::start();
    let mut sub = hub
        .ctl()
        .args(["sub", "-c", "p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hub.wait_subscribers("p", 1);
    drop(sub.stdout.take()); // like `| head -0`
    let mut p = hub.client();
    // Keep publishing until the subscriber notices its stdout is gone.
    let t0 = std::time::Instant::now();
    while sub.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sub kept running with no reader"
        );
        p.publish_confirmed("p", b"x").unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches("ipchubctl:")
            .count(),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_keeps_the_running_config() {
    let hub = Hub::start_with("[hub]\nmax_subscriptions_per_client = 1\n");
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(hub.pid()),
            nix::sys::signal::SIGHUP,
        )
        .unwrap()
    };
    let mut c = hub.client();
    c.subscribe("a").unwrap();
    assert!(c
        .subscribe("b")
        .unwrap_err()
        .to_string()
        .contains("max_subscriptions_per_client"));
    std::fs::write(
        &hub.config,
        "[hub]\nmax_subscriptions_per_client = 5\n[dbus]\nenabled = false\n",
    )
    .unwrap();
    hup();
    common::wait_for(
        || hub.log().contains("configuration reloaded"),
        "the reload",
    );
    c.subscribe("b").unwrap();
    std::fs::write(&hub.config, "[hub]\nmax_subscriptions_per_client = 0\n").unwrap();
    hup();
    common::wait_for(
        || hub.log().contains("reload failed"),
        "the failed reload to be logged",
    );
    assert!(
        hub.log().contains("hub.max_subscriptions_per_client"),
        "the bad key is named"
    );
    c.subscribe("c").unwrap();
    assert_eq!(c.publish_confirmed("c", b"still running").unwrap(), 1);
}
