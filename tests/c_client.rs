//! The C API (`libipchub.so.0`, bindings/c) from real C programs built
//! with gcc: the examples and a checks program, against a real hub on every
//! transport, talking with `ipchubctl` and with each other, and under
//! valgrind's memcheck.
//!
//! The library is installed as a packager would into a prefix under
//! target/ (`lib/libipchub.so.0`, the `libipchub.so` link, `include/`,
//! `lib/pkgconfig/ipchub.pc`), and every program is compiled with
//! `cc $(pkg-config --cflags --libs ipchub)`, so the pkg-config file and
//! the soname are tested too.

mod bindings;
mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bindings::{arrival, c_subscriber, output_within, run_ok, sdk, wait_pattern};
use common::Hub;
use ipchub::hub::TransportKind;

fn checks_pass(hub: &Hub, t: TransportKind, mut cmd: Command, what: &str) -> String {
    let child = cmd
        .arg(&hub.socket)
        .arg(t.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (ok, out, err) = output_within(child, what);
    assert!(
        ok,
        "{what} on {} failed:\n{out}{err}\nhub log:\n{}",
        t.name(),
        hub.log()
    );
    assert!(
        out.lines().any(|l| l == "ok close"),
        "{what}: not every check ran:\n{out}"
    );
    out
}

#[test]
fn c_api_checks_pass_on_every_transport() {
    let _serial = bindings::serial();
    let sdk = sdk();
    let hub = Hub::start();
    for t in TransportKind::ALL {
        checks_pass(&hub, t, sdk.cmd("c_api"), "c_api");
    }
}

#[test]
fn c_api_checks_are_clean_under_valgrind_on_every_transport() {
    let _serial = bindings::serial();
    let sdk = sdk();
    let hub = Hub::start();
    for t in TransportKind::ALL {
        let log = hub.dir.path().join(format!("valgrind-{}.log", t.name()));
        let run = std::panic::catch_unwind(|| {
            checks_pass(&hub, t, sdk.valgrind("c_api", &log), "c_api under valgrind")
        });
        let report = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            run.is_ok(),
            "valgrind on {} found errors or leaks:\n{report}",
            t.name()
        );
        assert!(
            report.contains("ERROR SUMMARY: 0 errors"),
            "valgrind on {}:\n{report}",
            t.name()
        );
        assert!(
            !report.contains("definitely lost: ") || report.contains("definitely lost: 0 bytes"),
            "valgrind on {}: leaks:\n{report}",
            t.name()
        );
    }
}

#[test]
fn c_programs_and_ipchubctl_exchange_messages_on_every_transport() {
    let _serial = bindings::serial();
    let sdk = sdk();
    let hub = Hub::start();
    for t in TransportKind::ALL {
        let name = t.name();
        let channel = format!("cx/{name}/data");
        // The C subscriber on the exact channel (a channel ring on shm),
        // ipchubctl on a wildcard.
        let c_sub = c_subscriber(sdk, &hub, t, &channel, 3);
        let ctl_pattern = format!("cx/{name}/#");
        let ctl_sub = hub
            .ctl()
            .args(["sub", "-t", name, "-c", &ctl_pattern, "--json", "-n", "3"])
            .args(["--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_pattern(&hub, &ctl_pattern, 1);

        // ipchubctl -> both, priority 5.
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
        // C publisher -> both, priorities 9 and 31, confirmed.
        let out = run_ok(
            sdk.cmd("publisher")
                .args(["-s", hub.socket.to_str().unwrap(), "-t", name])
                .args(["-p", "9", "-c", &channel, "from-c-1"]),
            "C publisher",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "delivered to 2\n",
            "on {name}"
        );
        let out = run_ok(
            sdk.cmd("publisher")
                .args(["-s", hub.socket.to_str().unwrap(), "-t", name])
                .args(["-p", "31", &channel, "from-c-2"]),
            "C publisher without confirmation",
        );
        assert!(out.stdout.is_empty());

        let (ok, out, err) = output_within(c_sub, "C subscriber");
        assert!(ok, "C subscriber on {name}: {err}");
        assert_eq!(
            arrival(t, out.lines()),
            arrival(
                t,
                format!(
                    "[{channel}] from-ctl (priority 5)\n\
                 [{channel}] from-c-1 (priority 9)\n\
                 [{channel}] from-c-2 (priority 31)\n"
                )
                .lines()
            ),
            "C subscriber on {name}"
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
                    ("from-c-1".to_string(), 9),
                    ("from-c-2".to_string(), 31)
                ]
            ),
            "ipchubctl sub on {name}"
        );
    }
}

#[test]
fn the_examples_are_clean_under_valgrind() {
    let _serial = bindings::serial();
    let sdk = sdk();
    let hub = Hub::start();
    for t in [TransportKind::Shm, TransportKind::Mqueue] {
        let name = t.name();
        let channel = format!("vg/{name}");
        let sub_log = hub.dir.path().join(format!("vg-sub-{name}.log"));
        let mut sub = sdk
            .valgrind("subscriber", &sub_log)
            .args(["-s", hub.socket.to_str().unwrap(), "-t", name])
            .args(["-n", "2", "-w", "60", &channel])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(sub.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "subscribed");
        let pub_log = hub.dir.path().join(format!("vg-pub-{name}.log"));
        let out = sdk
            .valgrind("publisher", &pub_log)
            .args(["-s", hub.socket.to_str().unwrap(), "-t", name])
            .args(["-p", "4", "-c", &channel, "one", "two"])
            .output_within(LIMIT)
            .unwrap();
        let report = std::fs::read_to_string(&pub_log).unwrap_or_default();
        assert!(out.status.success(), "publisher under valgrind:\n{report}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "delivered to 1\ndelivered to 1\n"
        );
        let (ok, out, _) = output_within(sub, "subscriber under valgrind");
        let report = std::fs::read_to_string(&sub_log).unwrap_or_default();
        assert!(ok, "subscriber under valgrind:\n{report}");
        assert_eq!(
            out,
            format!("[{channel}] one (priority 4)\n[{channel}] two (priority 4)\n")
        );
    }
}
