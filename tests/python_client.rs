//! The Python module `ipchub` (bindings/python) from real Python scripts:
//! the wheel is built with maturin once per test run, installed into a
//! directory under target/, and tests/clients/py_client.py runs against a
//! real hub on every transport, talking with `ipchubctl` and with itself.
//!
//! Needs maturin (`pip install maturin`; .ci/run installs it).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use common::{wait_child, wait_for, Hub};
use ipchub::hub::TransportKind;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const LIMIT: Duration = Duration::from_secs(120);

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The directory the wheel is installed into (for PYTHONPATH).
fn site() -> &'static Path {
    static SITE: OnceLock<PathBuf> = OnceLock::new();
    SITE.get_or_init(|| {
        let target = Path::new(common::IPCHUBD)
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        let base = target.join("python-test");
        let _ = std::fs::remove_dir_all(&base);
        let wheels = base.join("wheels");
        let site = base.join("site");
        run_ok(
            Command::new("python3")
                .args(["-m", "maturin", "build", "--locked", "--manifest-path"])
                .arg(Path::new(ROOT).join("bindings/python/Cargo.toml"))
                .arg("--out")
                .arg(&wheels)
                .args(["-i", "python3"])
                .env("CARGO_TARGET_DIR", &target),
            "python3 -m maturin build (pip install maturin)",
        );
        let wheel = std::fs::read_dir(&wheels)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .expect("maturin made no wheel");
        run_ok(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--no-index", "--no-deps"])
                .arg("--target")
                .arg(&site)
                .arg(&wheel),
            "pip install the wheel",
        );
        site
    })
}

fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(ROOT).join("tests/clients/py_client.py"))
        .args(args)
        .env("PYTHONPATH", site())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

fn output_within(mut child: Child, what: &str) -> (bool, String, String) {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let _ = stdout.read_to_string(&mut o);
        let _ = stderr.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    let status = wait_child(&mut child, LIMIT);
    let (o, e) = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: output never closed"));
    (status.success(), o, e)
}

#[test]
fn python_checks_pass_on_every_transport() {
    let hub = Hub::start();
    let sock = hub.socket.to_str().unwrap();
    for t in TransportKind::ALL {
        let child = python(&["checks", sock, t.name()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ok, out, err) = output_within(child, "py_client.py checks");
        assert!(
            ok && out.lines().any(|l| l == "ok close"),
            "python checks on {} failed:\n{out}{err}\nhub log:\n{}",
            t.name(),
            hub.log()
        );
    }
}

/// Wait until `n` clients hold a subscription to exactly `pattern`.
fn wait_pattern(hub: &Hub, pattern: &str, n: usize) {
    let mut probe = hub.client();
    wait_for(
        || {
            let stats = probe.stats().unwrap();
            stats
                .clients
                .iter()
                .filter(|c| c.subscriptions.iter().any(|s| s == pattern))
                .count()
                == n
        },
        &format!("{n} subscribers of '{pattern}'"),
    );
}

#[test]
fn python_and_ipchubctl_exchange_messages_on_every_transport() {
    let hub = Hub::start();
    let sock = hub.socket.to_str().unwrap();
    for t in TransportKind::ALL {
        let name = t.name();
        let channel = format!("px/{name}/data");
        // The Python subscriber on the exact channel (a channel ring on
        // shm), ipchubctl on a wildcard.
        let mut py_sub = python(&["sub", sock, name, &channel, "3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(py_sub.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "subscribed", "python sub on {name}");
        let ctl_pattern = format!("px/{name}/#");
        let ctl_sub = hub
            .ctl()
            .args(["sub", "-t", name, "-c", &ctl_pattern, "--json", "-n", "3"])
            .args(["--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_pattern(&hub, &ctl_pattern, 1);

        let out = run_ok(
            hub.ctl()
                .args(["pub", "-t", name, "-c", &channel, "-p", "5", "from-ctl"]),
            "ipchubctl pub",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "Published (2 subscribers)",
            "on {name}"
        );
        let out = run_ok(
            &mut python(&["pub", sock, name, &channel, "9", "from-py-1", "from-py-2"]),
            "python pub",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "delivered to 2\ndelivered to 2\n",
            "on {name}"
        );

        let (ok, out, err) = output_within(py_sub, "python sub");
        assert!(ok, "python sub on {name}: {err}");
        assert_eq!(
            out,
            format!(
                "[{channel}] from-ctl (priority 5)\n\
                 [{channel}] from-py-1 (priority 9)\n\
                 [{channel}] from-py-2 (priority 9)\n"
            ),
            "python sub on {name}"
        );
        let (ok, out, err) = output_within(ctl_sub, "ipchubctl sub");
        assert!(ok, "ipchubctl sub on {name}: {err}");
        let got: Vec<(String, u64)> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["payload"].as_str().unwrap().to_string(),
                    v["priority"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("from-ctl".to_string(), 5),
                ("from-py-1".to_string(), 9),
                ("from-py-2".to_string(), 9)
            ],
            "ipchubctl sub on {name}"
        );
    }
}
