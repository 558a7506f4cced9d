//! Shared by tests/c_client.rs and tests/python_client.rs: the C library
//! installed into a prefix with its programs compiled against it, the
//! Python wheel built and installed, and process helpers.

#![allow(dead_code)]

#[allow(unused_imports)]
use crate::common::deadline::{ChildWithin as _, CommandWithin as _};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use crate::common::{self, wait_child, wait_for, Hub};
use ipchub::hub::TransportKind;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One test of a binary at a time: each runs several clients on every
/// transport, and the message queues of all of a user's processes share
/// one RLIMIT_MSGQUEUE budget (800 KiB by default), which tests running
/// side by side would exhaust (mq_open: EMFILE).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The installed library and the compiled programs.
pub struct Sdk {
    prefix: PathBuf,
    bin: PathBuf,
}

pub fn target_dir() -> PathBuf {
    // target/debug/ipchubd -> target/
    Path::new(common::IPCHUBD)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output_within(LIMIT)
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
pub fn sdk() -> &'static Sdk {
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
                    .args(["-Wall", "-Wextra", "-Werror", "-g", "-pthread", "-o"])
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
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env("LD_LIBRARY_PATH", self.prefix.join("lib"));
        c
    }

    /// The same under valgrind's memcheck: any error or definitely lost
    /// block makes it exit 99.
    pub fn valgrind(&self, program: &str, log: &Path) -> Command {
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

pub const LIMIT: Duration = Duration::from_secs(120);

pub fn output_within(mut child: Child, what: &str) -> (bool, String, String) {
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

/// Wait until `n` clients hold a subscription to exactly `pattern`.
pub fn wait_pattern(hub: &Hub, pattern: &str, n: usize) {
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

/// The directory the wheel is installed into (for PYTHONPATH).
pub fn site() -> &'static Path {
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

pub fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(ROOT).join("tests/clients/py_client.py"))
        .args(args)
        .env("PYTHONPATH", site())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

/// Start the example subscriber and wait for its "subscribed" line.
pub fn c_subscriber(sdk: &Sdk, hub: &Hub, t: TransportKind, pattern: &str, n: usize) -> Child {
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

/// What a subscriber received, in an order the transport promises: a
/// message queue hands out waiting messages highest priority first, so on
/// mqueue messages of different priorities that were queued together may
/// arrive in either order; elsewhere arrival order is publish order.
pub fn arrival<T: Ord>(t: TransportKind, items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    if t == TransportKind::Mqueue {
        v.sort();
    }
    v
}
