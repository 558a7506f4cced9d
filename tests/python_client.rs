//! The Python module `ipchub` (bindings/python) from real Python scripts:
//! the wheel is built with maturin once per test run, installed into a
//! directory under target/, and tests/clients/py_client.py runs against a
//! real hub on every transport, talking with `ipchubctl` and with itself.
//!
//! Needs maturin (`pip install maturin`; .ci/run installs it).

mod bindings;
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use bindings::{arrival, c_subscriber, output_within, python, run_ok, sdk, wait_pattern};
use common::Hub;
use ipchub::hub::TransportKind;

#[test]
fn python_checks_pass_on_every_transport() {
    let _serial = bindings::serial();
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

#[test]
fn python_and_ipchubctl_exchange_messages_on_every_transport() {
    let _serial = bindings::serial();
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
            arrival(t, out.lines()),
            arrival(
                t,
                format!(
                    "[{channel}] from-ctl (priority 5)\n\
                 [{channel}] from-py-1 (priority 9)\n\
                 [{channel}] from-py-2 (priority 9)\n"
                )
                .lines()
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
            arrival(t, got),
            arrival(
                t,
                [
                    ("from-ctl".to_string(), 5),
                    ("from-py-1".to_string(), 9),
                    ("from-py-2".to_string(), 9)
                ]
            ),
            "ipchubctl sub on {name}"
        );
    }
}

#[test]
fn python_and_c_exchange_messages_on_every_transport() {
    let _serial = bindings::serial();
    let sdk = sdk();
    // Build the wheel before any subscriber starts its timeout: on a loaded
    // machine the build alone can outlast a subscriber's wait.
    bindings::site();
    let hub = Hub::start();
    let sock = hub.socket.to_str().unwrap();
    for t in TransportKind::ALL {
        let name = t.name();
        let channel = format!("pc/{name}");
        let c_sub = c_subscriber(sdk, &hub, t, &channel, 2);
        let mut py_sub = python(&["sub", sock, name, &channel, "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(py_sub.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "subscribed", "python sub on {name}");

        let out = run_ok(
            sdk.cmd("publisher")
                .args(["-s", sock, "-t", name, "-p", "12", "-c", &channel, "from-c"]),
            "C publisher",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "delivered to 2\n",
            "on {name}"
        );
        let out = run_ok(
            &mut python(&["pub", sock, name, &channel, "12", "from-py"]),
            "python pub",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "delivered to 2\n",
            "on {name}"
        );

        let want = format!("[{channel}] from-c (priority 12)\n[{channel}] from-py (priority 12)\n");
        for (child, who) in [(c_sub, "C subscriber"), (py_sub, "python sub")] {
            let (ok, out, err) = output_within(child, who);
            assert!(ok, "{who} on {name}: {err}");
            assert_eq!(out, want, "{who} on {name}");
        }
    }
}
