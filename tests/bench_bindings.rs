//! `ipchub-bench --bindings` (issue #19): the Rust, C and Python clients
//! each run publisher → hub → subscriber with a handful of messages, every
//! message counted and checked; without the C and Python clients their rows
//! say how to get them. Speed is not checked here (the machine is shared).
//!
//! Builds the C library and the Python wheel as tests/c_client.rs and
//! tests/python_client.rs do (needs gcc and maturin).

mod bindings;
mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use bindings::{output_within, run_ok, sdk, site, target_dir, ROOT};

const BENCH: &str = env!("CARGO_BIN_EXE_ipchub-bench");

/// Run the bench (its rounds have their own deadlines; the whole run has
/// output_within's) and parse its JSON.
fn bench(extra: &[&str]) -> (bool, Value, String) {
    let child = Command::new(BENCH)
        .args([
            "--bindings",
            "--json",
            "--messages",
            "200",
            "--repetitions",
            "1",
            "--round-timeout",
            "30",
            "--transports",
            "socket,shm",
            "--sizes",
            "64",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ipchub-bench");
    let (ok, out, err) = output_within(child, "ipchub-bench --bindings");
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}{err}"));
    (ok, v, err)
}

/// The C bench client compiled against the library the SDK installed.
fn c_client() -> std::path::PathBuf {
    sdk();
    let prefix = target_dir().join("capi-test");
    let exe = prefix.join("bin/ipchub_bench_client");
    run_ok(
        Command::new("cc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg(Path::new(ROOT).join("bindings/c/bench/ipchub_bench_client.c"))
            .arg(format!("-I{}", prefix.join("include").display()))
            .arg(format!("-L{}", prefix.join("lib").display()))
            .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
            .arg("-lipchub"),
        "cc ipchub_bench_client.c",
    );
    exe
}

#[test]
fn rust_c_and_python_rows_count_every_message() {
    let _serial = bindings::serial();
    let c = c_client();
    let script = Path::new(ROOT).join("bindings/python/bench_client.py");
    let (ok, r, err) = bench(&[
        "--c-client",
        c.to_str().unwrap(),
        "--python-client",
        script.to_str().unwrap(),
        "--python-path",
        site().to_str().unwrap(),
    ]);
    assert!(ok, "ipchub-bench --bindings failed: {err}\n{r:#}");
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 6, "{r:#}");
    for t in ["socket", "shm"] {
        for client in ["rust", "c", "python"] {
            let row = rows
                .iter()
                .find(|x| x["transport"] == t && x["client"] == client)
                .unwrap_or_else(|| panic!("no {client} row on {t}: {r:#}"));
            assert!(row["error"].is_null(), "{row:#}");
            assert_eq!(row["sent"], 200, "{row:#}");
            assert_eq!(row["received"], 200, "{row:#}");
            assert_eq!(row["lost"], 0, "{row:#}");
            assert_eq!(row["out_of_order"], 0, "{row:#}");
            assert_eq!(row["bad_size"], 0, "{row:#}");
            assert!(
                row["msgs_per_sec"]["median"].as_f64().unwrap() > 0.0,
                "{row:#}"
            );
            assert!(row["ratio_to_rust"].as_f64().unwrap() > 0.0, "{row:#}");
        }
    }
}

#[test]
fn missing_clients_say_how_to_get_them() {
    let (ok, r, err) = bench(&[]);
    assert!(ok, "a client not given is no failure: {err}\n{r:#}");
    let rows = r["rows"].as_array().expect("rows");
    for row in rows {
        match row["client"].as_str().unwrap() {
            "rust" => assert_eq!(row["received"], 200, "{row:#}"),
            "c" => {
                let e = row["error"].as_str().unwrap();
                assert!(
                    e.starts_with("not available") && e.contains("--c-client"),
                    "{e}"
                );
            }
            "python" => {
                let e = row["error"].as_str().unwrap();
                assert!(e.contains("--python-client"), "{e}");
            }
            other => panic!("unknown client {other}"),
        }
    }
}
