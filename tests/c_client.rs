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

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use common::{wait_child, wait_for, Hub};
use ipchub::hub::TransportKind;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The installed library and the compiled programs.
struct Sdk {
    prefix: PathBuf,
    bin: PathBuf,
}

fn target_dir() -> PathBuf {
    // target/debug/ipchubd -> target/
    Path::new(common::IPCHUBD)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

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

/// Build the library once per test run, install it into a prefix, compile
/// the C programs against it.
fn sdk() -> &'static Sdk {
    static SDK: OnceLock<Sdk> = OnceLock::new();
    SDK.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_dir = Path::new(common::IPCHUBD).parent().unwrap().to_path_buf();
        let mut build = Command::new(cargo);
        build
            .args(["build", "--locked", "-p", "ipchub-c"])
            .current_dir(ROOT)
            .env("CARGO_TARGET_DIR", target_dir());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        run_ok(&mut build, "cargo build -p ipchub-c");
        let built = profile_dir.join("libipchub_c.so");

        let prefix = target_dir().join("capi-test");
        let _ = std::fs::remove_dir_all(&prefix);
        let lib = prefix.join("lib");
        let include = prefix.join("include");
        let pc_dir = lib.join("pkgconfig");
        let bin = prefix.join("bin");
        for d in [&lib, &include, &pc_dir, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::copy(&built, lib.join("libipchub.so.0")).unwrap();
        std::os::unix::fs::symlink("libipchub.so.0", lib.join("libipchub.so")).unwrap();
        std::fs::copy(
            Path::new(ROOT).join("bindings/c/include/ipchub.h"),
            include.join("ipchub.h"),
        )
        .unwrap();
        let pc = std::fs::read_to_string(Path::new(ROOT).join("bindings/c/ipchub.pc.in"))
            .unwrap()
            .replace("@PREFIX@", prefix.to_str().unwrap())
            .replace("@LIBDIR@", lib.to_str().unwrap())
            .replace("@INCLUDEDIR@", include.to_str().unwrap())
            .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
        std::fs::write(pc_dir.join("ipchub.pc"), pc).unwrap();

        let flags = run_ok(
            Command::new("pkg-config")
                .args(["--cflags", "--libs", "ipchub"])
                .env("PKG_CONFIG_PATH", &pc_dir),
            "pkg-config --cflags --libs ipchub (apt-get install pkg-config)",
        );
        let flags: Vec<String> = String::from_utf8(flags.stdout)
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        for (src, name) in [
            ("examples/c/publisher.c", "publisher"),
            ("examples/c/subscriber.c", "subscriber"),
            ("tests/clients/c_api.c", "c_api"),
        ] {
            run_ok(
                Command::new("cc")
                    .args(["-Wall", "-Wextra", "-Werror", "-g", "-o"])
                    .arg(bin.join(name))
                    .arg(Path::new(ROOT).join(src))
                    .args(&flags),
                &format!("cc {src}"),
            );
        }
        // The header is valid C++ too (cbindgen's cpp_compat).
        run_ok(
            Command::new("c++")
                .args(["-fsyntax-only", "-Wall", "-Werror", "-x", "c++", "-"])
                .args(&flags)
                .stdin(std::fs::File::open(include.join("ipchub.h")).unwrap()),
            "c++ -fsyntax-only ipchub.h",
        );
        Sdk { prefix, bin }
    })
}

impl Sdk {
    /// A compiled program, finding the library like an installed one would.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env("LD_LIBRARY_PATH", self.prefix.join("lib"));
        c
    }

    /// The same under valgrind's memcheck: any error or definitely lost
    /// block makes it exit 99.
    fn valgrind(&self, program: &str, log: &Path) -> Command {
        let mut c = Command::new("valgrind");
        c.args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
        ])
        .arg(format!("--log-file={}", log.display()))
        .arg(self.bin.join(program))
        .env("LD_LIBRARY_PATH", self.prefix.join("lib"));
        c
    }
}

const LIMIT: Duration = Duration::from_secs(120);

fn output_within(mut child: Child, what: &str) -> (bool, String, String) {
    use std::io::Read;
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
    let sdk = sdk();
    let hub = Hub::start();
    for t in TransportKind::ALL {
        checks_pass(&hub, t, sdk.cmd("c_api"), "c_api");
    }
}

#[test]
fn c_api_checks_are_clean_under_valgrind_on_every_transport() {
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

/// Start the example subscriber and wait for its "subscribed" line.
fn c_subscriber(sdk: &Sdk, hub: &Hub, t: TransportKind, pattern: &str, n: usize) -> Child {
    let mut child = sdk
        .cmd("subscriber")
        .args(["-s", hub.socket.to_str().unwrap(), "-t", t.name()])
        .args(["-n", &n.to_string(), "-w", "60", pattern])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first.trim(),
        "subscribed",
        "C subscriber on {}: {}",
        t.name(),
        hub.log()
    );
    child
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
fn c_programs_and_ipchubctl_exchange_messages_on_every_transport() {
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
            out,
            format!(
                "[{channel}] from-ctl (priority 5)\n\
                 [{channel}] from-c-1 (priority 9)\n\
                 [{channel}] from-c-2 (priority 31)\n"
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
            got,
            [
                ("from-ctl".to_string(), 5),
                ("from-c-1".to_string(), 9),
                ("from-c-2".to_string(), 31)
            ],
            "ipchubctl sub on {name}"
        );
    }
}

#[test]
fn the_examples_are_clean_under_valgrind() {
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
            .output()
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
