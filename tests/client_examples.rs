//! The client library's examples (crates/client/examples) built and run
//! against a real hub, their output checked: what a stranger starts from
//! must work. Every wait has a deadline: a program that hangs is killed and
//! the test fails.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use common::Hub;

/// The longest any example may take (they finish in well under a second).
const LIMIT: Duration = Duration::from_secs(60);
/// The longest building the examples (from scratch, on a slow machine) or
/// listing the dependency tree may take.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// `target/<profile>/examples/`, next to the hub binary the tests use.
fn examples_dir() -> PathBuf {
    Path::new(common::IPCHUBD)
        .parent()
        .unwrap()
        .join("examples")
}

/// Build the examples (once per run; a no-op when `cargo test` built them
/// already, and it keeps them current when only this test was built).
/// Without a cargo to run, examples already there are used.
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = examples_dir();
        let profile_dir = dir.parent().unwrap();
        let target = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--locked", "-p", "ipchub-client", "--examples"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        match build
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => {
                let (ok, _, stderr) = finish(child, BUILD_LIMIT, "cargo build --examples");
                assert!(
                    ok,
                    "cargo build -p ipchub-client --examples failed:\n{stderr}"
                );
            }
            Err(e) => eprintln!("cannot run cargo ({e}): using the examples already built"),
        }
        for name in ["publish", "subscribe", "shm_ring", "mqueue_priorities"] {
            assert!(
                dir.join(name).is_file(),
                "example {name} not built in {}",
                dir.display()
            );
        }
        dir
    })
}

/// An example, with no hub socket from the environment.
fn example(name: &str) -> Command {
    let mut c = Command::new(built().join(name));
    c.env_remove("IPCHUB_SOCKET");
    c
}

/// Run to completion within LIMIT (else kill it and fail); its standard
/// output, after checking it succeeded.
fn run(mut cmd: Command, what: &str) -> String {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let (ok, stdout, stderr) = finish(child, LIMIT, what);
    assert!(ok, "{what} failed:\n{stdout}{stderr}");
    stdout
}

/// Wait up to `limit` for `child` to exit (killing it and failing after
/// that): whether it succeeded, its stdout and stderr. Both pipes are
/// drained by threads meanwhile, so a chatty child cannot block on them.
fn finish(mut child: Child, limit: Duration, what: &str) -> (bool, String, String) {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {limit:?}; it printed:\n{}{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// A child whose stdout lines arrive on a channel, killed when dropped.
struct Running {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Running {
    fn start(mut cmd: Command, what: &str) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            lines,
            what: what.into(),
        }
    }

    /// The next line of output, within `limit` (else kill and fail).
    fn line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(l) => l,
            Err(e) => {
                self.kill();
                panic!("{}: no line of output within {limit:?} ({e})", self.what)
            }
        }
    }

    /// Wait for it to exit successfully within `limit` (else kill and fail).
    fn wait_success(&mut self, limit: Duration) {
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "{} failed: {s}", self.what);
                return;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {limit:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// (a) + (b): the wildcard subscriber, run as another user (nobody) on a
/// hub it shares, receives what the publisher example sends on channels
/// its pattern matches, and nothing else; the publisher's delivery counts
/// say the same.
#[test]
fn the_subscriber_example_receives_what_the_publisher_example_sends() {
    let hub = Hub::start_shared("");
    built();
    // The socket from the environment here, from --socket below.
    let mut cmd = common::as_nobody(built().join("subscribe"));
    cmd.args(["demo/+/today", "3"])
        .env("IPCHUB_SOCKET", &hub.socket);
    let mut sub = Running::start(cmd, "example subscribe (as nobody)");
    assert_eq!(sub.line(LIMIT), "subscribed to demo/+/today");

    let publish = |channel: &str, messages: &[&str]| {
        let mut c = example("publish");
        c.arg("--socket")
            .arg(&hub.socket)
            .arg(channel)
            .args(messages);
        run(c, "example publish")
    };
    assert_eq!(
        publish("demo/weather/today", &["sunny", "windy"]),
        "published \"sunny\" on demo/weather/today: delivered to 1 subscriber(s)\n\
         published \"windy\" on demo/weather/today: delivered to 1 subscriber(s)\n"
    );
    // Not matched: a level too many, another root.
    assert_eq!(
        publish("demo/weather/today/noon", &["hot"]),
        "published \"hot\" on demo/weather/today/noon: delivered to 0 subscriber(s)\n"
    );
    assert_eq!(
        publish("other/news/today", &["quiet"]),
        "published \"quiet\" on other/news/today: delivered to 0 subscriber(s)\n"
    );
    publish("demo/traffic/today", &["jammed"]);

    let got: Vec<String> = (0..3).map(|_| sub.line(LIMIT)).collect();
    assert_eq!(
        got,
        [
            "[demo/weather/today] sunny",
            "[demo/weather/today] windy",
            "[demo/traffic/today] jammed"
        ]
    );
    // COUNT reached: it exits by itself.
    sub.wait_success(LIMIT);
}

/// (c): the shm example's messages went through the channel's ring, which
/// the hub reports, and never through the hub itself.
#[test]
fn the_shm_example_uses_a_channel_ring() {
    let hub = Hub::start();
    let mut c = example("shm_ring");
    c.arg("--socket").arg(&hub.socket).arg("5000");
    let out = run(c, "example shm_ring");
    assert!(
        out.contains("received all 5000 in order"),
        "shm_ring output:\n{out}"
    );
    assert!(
        out.contains("ring: yes (1 reader(s)); the hub relayed 0 of the writer's 5001 messages"),
        "shm_ring did not use a channel ring:\n{out}\nhub log:\n{}",
        hub.log()
    );
    assert!(hub.log().contains("channel ring created"));
}

/// (d): the mqueue example's subscriber reads its messages highest
/// priority first, not in the order they were published.
#[test]
fn the_mqueue_example_receives_by_priority() {
    let hub = Hub::start();
    let mut c = example("mqueue_priorities");
    // The socket from the environment this time.
    c.env("IPCHUB_SOCKET", &hub.socket);
    let out = run(c, "example mqueue_priorities");
    let priorities = |prefix: &str| -> Vec<u8> {
        out.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|rest| {
                let n = rest.trim_start().split(')').next().unwrap();
                n.trim().parse().unwrap()
            })
            .collect()
    };
    assert_eq!(
        priorities("publish  (priority"),
        [0, 12, 1, 31, 5],
        "output:\n{out}"
    );
    assert_eq!(
        priorities("received (priority"),
        [31, 12, 5, 1, 0],
        "output:\n{out}"
    );
    assert!(out.contains("received (priority 31) ALERT: fire in the kitchen"));
}

/// The library's normal dependency tree stays small: nothing of the
/// daemon's, the control tool's or the bench's heavy dependencies.
#[test]
fn the_client_library_has_a_small_dependency_tree() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut tree = Command::new(cargo);
    tree.args([
        "tree",
        "--locked",
        "--offline",
        "-e",
        "normal",
        "-p",
        "ipchub-client",
        "--prefix",
        "none",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = tree.spawn().expect("cargo tree");
    let (ok, tree, stderr) = finish(child, BUILD_LIMIT, "cargo tree -p ipchub-client");
    assert!(ok, "cargo tree failed:\n{stderr}");
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"ipchub-os"), "{tree}");
    for heavy in [
        "tokio",
        "zbus",
        "rumqttc",
        "rustls",
        "clap",
        "indicatif",
        "hdrhistogram",
        "axum",
        "ipchub-daemon",
    ] {
        assert!(
            !names.contains(&heavy),
            "ipchub-client depends on {heavy}:\n{tree}"
        );
    }
}
