//! The architecture as the build enforces it (docs/ARCHITECTURE.md,
//! "Layers"): which crate may depend on which, what the client library
//! pulls in, and where unsafe code may live. The compiler already refuses a
//! crate that names what it does not depend on; these checks keep the
//! manifests themselves from drifting.

#[path = "common/deadline.rs"]
mod deadline;
#[allow(unused_imports)]
use deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn metadata() -> serde_json::Value {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .output_within(LIMIT)
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The layer of each workspace crate: a crate may depend (normally) only
/// on crates of a lower layer.
fn layers() -> BTreeMap<&'static str, u8> {
    BTreeMap::from([
        ("ipchub-wire", 0),
        ("ipchub-os", 1),
        ("ipchub-client", 2),
        ("ipchub-daemon", 3),
        ("ipchub-ctl", 4),
        ("ipchub-bench", 4),
        ("ipchub-c", 4),
        ("ipchub-python", 4),
        ("ipchub", 5),
    ])
}

#[test]
fn workspace_dependencies_point_inward_only() {
    let meta = metadata();
    let layers = layers();
    let members: Vec<&serde_json::Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"].is_null())
        .collect();
    let mut seen = Vec::new();
    for p in &members {
        let name = p["name"].as_str().unwrap();
        let Some(&mine) = layers.get(name) else {
            panic!("workspace crate {name} has no layer in tests/layering.rs: add it, and say why in docs/ARCHITECTURE.md");
        };
        seen.push(name);
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            // Only normal dependencies shape the layering; tests may use
            // anything below or beside them.
            if !d["kind"].is_null() {
                continue;
            }
            if let Some(&theirs) = layers.get(dep) {
                assert!(
                    theirs < mine,
                    "{name} (layer {mine}) depends on {dep} (layer {theirs}): dependencies must point inward"
                );
            }
        }
    }
    for name in layers.keys() {
        assert!(seen.contains(name), "{name} is no longer in the workspace");
    }
}

#[test]
fn the_client_library_pulls_in_no_daemon_or_tool_dependencies() {
    let out = cargo()
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "-p",
            "ipchub-client",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output_within(LIMIT)
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for banned in [
        "tokio",
        "zbus",
        "rumqttc",
        "clap",
        "indicatif",
        "hdrhistogram",
        "axum",
        "mio",
        "toml",
        "sd-notify",
        "ipchub-daemon",
    ] {
        assert!(
            !crates.contains(&banned),
            "ipchub-client depends on {banned}:\n{tree}"
        );
    }
    assert!(crates.contains(&"ipchub-wire"), "{tree}");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn unsafe_code_lives_only_in_the_os_crate_and_the_c_abi() {
    // Everything but crates/os and bindings/c forbids it; those two deny
    // unsafe blocks without a SAFETY comment through the workspace lints.
    let r = root();
    let mut libs = vec![r.join("src/lib.rs"), r.join("bindings/python/src/lib.rs")];
    // The bench forbids it unless built with `peers` (one FFI call to
    // libzmq the zmq crate does not wrap), and denies it even then.
    let bench = std::fs::read_to_string(r.join("crates/bench/src/lib.rs")).unwrap();
    assert!(
        bench.contains("#![cfg_attr(not(feature = \"peers\"), forbid(unsafe_code))]")
            && bench.contains("#![cfg_attr(feature = \"peers\", deny(unsafe_code))]"),
        "crates/bench/src/lib.rs must forbid unsafe code (deny it with `peers`)"
    );
    for c in ["wire", "client", "daemon", "ctl"] {
        libs.push(r.join(format!("crates/{c}/src/lib.rs")));
    }
    for lib in &libs {
        let text = std::fs::read_to_string(lib).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{} lacks #![forbid(unsafe_code)]",
            lib.display()
        );
    }
    let mut bins = Vec::new();
    rust_files(&r.join("src/bin"), &mut bins);
    for b in bins {
        let text = std::fs::read_to_string(&b).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{} lacks #![forbid(unsafe_code)]",
            b.display()
        );
    }
}

#[test]
fn every_crate_takes_the_workspace_lints() {
    let r = root();
    let top = std::fs::read_to_string(r.join("Cargo.toml")).unwrap();
    let table: toml::Table = toml::from_str(&top).unwrap();
    let lints = &table["workspace"]["lints"];
    assert_eq!(
        lints["rust"]["unsafe_op_in_unsafe_fn"].as_str(),
        Some("deny"),
        "{lints:?}"
    );
    assert_eq!(
        lints["clippy"]["undocumented_unsafe_blocks"].as_str(),
        Some("deny"),
        "{lints:?}"
    );
    let members = table["workspace"]["members"].as_array().unwrap();
    for m in members {
        let dir = r.join(m.as_str().unwrap());
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        assert_eq!(
            manifest
                .get("lints")
                .and_then(|l| l.get("workspace"))
                .and_then(|w| w.as_bool()),
            Some(true),
            "{} does not take the workspace lints ([lints] workspace = true)",
            dir.display()
        );
    }
}
