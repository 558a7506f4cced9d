//! The runtime directory, its `fifo/` and `pub/` subdirectories and the
//! publish FIFOs, attacked by another uid (`nobody`) the way a hostile local
//! user would when the hub's socket sits in a directory others can write
//! (a socket under /tmp): symlinks planted where the hub creates files, a
//! subdirectory the attacker owns, a publish FIFO that bypasses `[access]`.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_child, Hub, IPCHUBCTL, IPCHUBD};
use ipchub::client::{Client, Options};
use ipchub::hub::TransportKind;

/// Run `argv` as user nobody, group nogroup, no supplementary groups.
fn as_nobody(argv: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(argv)
        .output_within(LIMIT)
        .expect("setpriv (util-linux) is needed")
}

fn as_nobody_ok(argv: &[&str]) {
    let out = as_nobody(argv);
    assert!(
        out.status.success(),
        "as nobody {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory that looks like /tmp: world-writable with the sticky bit.
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("ipchub-shared")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Something only root may touch: a 0700 directory holding a 0600 file.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-victim")
            .tempdir()
            .unwrap();
        let path = dir.path().join("victim");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let secret = path.join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        // nobody must be able to name the victim (not read it) to link to it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Victim { _dir: dir, path }
    }

    fn assert_untouched(&self) {
        let m = std::fs::symlink_metadata(&self.path).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o700, "victim directory was chmod-ed");
        let secret = self.path.join("secret");
        let m = std::fs::symlink_metadata(&secret).expect("victim file was deleted");
        assert!(
            m.file_type().is_file(),
            "victim file was replaced: {:?}",
            m.file_type()
        );
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");
    }
}

/// What happened when ipchubd was started.
enum Start {
    /// It exited by itself; its stderr.
    Refused(String),
    /// It served a client; killed since.
    Served(String),
}

/// Start ipchubd on `socket` with `config`; if it comes up, make one round
/// trip (so start-up, publish FIFOs included, is over) and kill it.
fn start_daemon(socket: &Path, config: &str) -> Start {
    start_daemon_then(socket, config, |_| {})
}

/// As [`start_daemon`], running `served` while the hub serves.
fn start_daemon_then(socket: &Path, config: &str, served: impl FnOnce(&Path)) -> Start {
    let cfgdir = tempfile::tempdir().unwrap();
    let cfg = cfgdir.path().join("ipchub.toml");
    std::fs::write(&cfg, format!("{config}\n[dbus]\nenabled = false\n")).unwrap();
    let log = cfgdir.path().join("log");
    let mut child = Command::new(IPCHUBD)
        .arg("--socket")
        .arg(socket)
        .arg("--config")
        .arg(&cfg)
        .env("IPCHUB_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Start::Refused(std::fs::read_to_string(&log).unwrap());
        }
        let opts = Options {
            socket: Some(socket.to_path_buf()),
            transport: TransportKind::Socket,
            name: "probe".into(),
            ..Options::default()
        };
        if let Ok(mut c) = Client::connect(&opts) {
            let _ = c.stats();
            drop(c);
            served(socket);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGTERM,
            )
            .unwrap();
            wait_child(&mut child, Duration::from_secs(10));
            return Start::Served(std::fs::read_to_string(&log).unwrap());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ipchubd neither served nor exited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_refused(start: Start, needles: &[&str]) {
    match start {
        Start::Refused(err) => {
            for n in needles {
                assert!(err.contains(n), "refusal lacks {n:?}:\n{err}");
            }
        }
        Start::Served(log) => panic!("the hub started instead of refusing:\n{log}"),
    }
}

#[test]
fn a_symlink_planted_in_pub_neither_chmods_nor_replaces_the_victim() {
    let shared = shared_dir();
    let victim = Victim::new();
    let pub_dir = shared.path().join("pub");
    as_nobody_ok(&["mkdir", pub_dir.to_str().unwrap()]);
    as_nobody_ok(&[
        "ln",
        "-s",
        victim.path.to_str().unwrap(),
        pub_dir.join("x").to_str().unwrap(),
    ]);
    let start = start_daemon(
        &shared.path().join("ipchub.sock"),
        "[fifo]\npublish_channels = [\"x/secret\"]\npublish_mode = 0o622\n",
    );
    victim.assert_untouched();
    assert_refused(start, &[pub_dir.to_str().unwrap(), "owned by uid 65534"]);
}

#[test]
fn a_fifo_symlink_does_not_empty_the_victim_directory_at_start() {
    let shared = shared_dir();
    let victim = Victim::new();
    let fifo = shared.path().join("fifo");
    as_nobody_ok(&[
        "ln",
        "-s",
        victim.path.to_str().unwrap(),
        fifo.to_str().unwrap(),
    ]);
    let start = start_daemon(&shared.path().join("ipchub.sock"), "");
    victim.assert_untouched();
    assert_refused(start, &[fifo.to_str().unwrap(), "symbolic link"]);
}

#[test]
fn an_attacker_owned_fifo_directory_is_refused() {
    let shared = shared_dir();
    let fifo = shared.path().join("fifo");
    as_nobody_ok(&["mkdir", "-m", "0777", fifo.to_str().unwrap()]);
    // A FIFO the attacker prepared where a client's would go.
    as_nobody_ok(&[
        "mkfifo",
        "-m",
        "0666",
        fifo.join("1.down").to_str().unwrap(),
    ]);
    let start = start_daemon(&shared.path().join("ipchub.sock"), "");
    assert_refused(start, &[fifo.to_str().unwrap(), "owned by uid 65534"]);
    // Refusing, the hub removed nothing of the attacker's either.
    assert!(std::fs::symlink_metadata(fifo.join("1.down"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn a_runtime_directory_others_may_write_without_the_sticky_bit_is_refused() {
    let shared = shared_dir();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let start = start_daemon(&shared.path().join("ipchub.sock"), "");
    assert_refused(
        start,
        &[shared.path().to_str().unwrap(), "writable by others"],
    );
}

#[test]
fn a_runtime_directory_owned_by_another_user_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = parent.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(65534.into()), Some(65534.into())).unwrap();
    let start = start_daemon(&theirs.join("ipchub.sock"), "");
    assert_refused(start, &[theirs.to_str().unwrap(), "owned by uid 65534"]);
}

/// In a sticky shared directory with nothing planted, the hub works: its
/// subdirectories are its own and not writable by others, so nobody can
/// plant anything in them afterwards, and a FIFO client is served.
#[test]
fn a_sticky_shared_directory_works_and_the_hubs_subdirectories_are_its_own() {
    let shared = shared_dir();
    let socket = shared.path().join("ipchub.sock");
    let cfgdir = tempfile::tempdir().unwrap();
    let cfg = cfgdir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[fifo]\npublish_channels = [\"a/b\"]\n[dbus]\nenabled = false\n",
    )
    .unwrap();
    let mut child = Command::new(IPCHUBD)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .spawn()
        .unwrap();
    let opts = |t| Options {
        socket: Some(socket.clone()),
        transport: t,
        name: "t".into(),
        ..Options::default()
    };
    let t0 = Instant::now();
    let mut sub = loop {
        match Client::connect(&opts(TransportKind::Fifo)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(child.try_wait().unwrap().is_none(), "hub exited");
                assert!(t0.elapsed() < Duration::from_secs(10), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    sub.subscribe("a/b").unwrap();
    for d in ["fifo", "pub", "pub/a"] {
        let m = std::fs::symlink_metadata(shared.path().join(d)).unwrap();
        assert!(m.is_dir(), "{d}");
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{d}");
    }
    let out = as_nobody(&["mkdir", shared.path().join("pub/a/x").to_str().unwrap()]);
    assert!(!out.status.success(), "nobody wrote into the hub's pub/");
    let mut publ = Client::connect(&opts(TransportKind::Socket)).unwrap();
    assert_eq!(publ.publish_confirmed("a/b", b"hi").unwrap(), 1);
    let m = sub.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert_eq!(m.payload, b"hi");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_child(&mut child, Duration::from_secs(10)).success());
}

/// Leftovers of a hub killed with -9 are removed at the next start: FIFOs
/// only, and only inside the hub's own directories.
#[test]
fn cleanup_at_start_removes_only_fifos() {
    let mut hub = Hub::start_with("[fifo]\npublish_channels = [\"p/q\"]\n");
    let c = hub.client_via(TransportKind::Fifo);
    hub.kill9();
    drop(c);
    let fifo = hub.dir.path().join("fifo");
    std::fs::write(fifo.join("notes.txt"), "keep").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", fifo.join("link")).unwrap();
    let before: Vec<_> = std::fs::read_dir(&fifo).unwrap().flatten().collect();
    assert!(before.len() >= 4, "two FIFOs, a file, a link");
    hub.restart();
    // A round trip: the publish FIFOs are made before the first client is served.
    hub.client().stats().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&fifo)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["link", "notes.txt"]);
    assert!(std::fs::metadata("/etc/hostname").is_ok());
    assert!(std::fs::symlink_metadata(hub.dir.path().join("pub/p/q"))
        .unwrap()
        .file_type()
        .is_fifo());
}

const FORBIDDEN: &str = r#"
[access]
default = "allow"
[[access.rule]]
pattern = "secure/#"
publish = ["uid:0"]
subscribe = ["*"]
"#;

fn check_both(config: &str) -> Vec<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config).unwrap();
    let d = Command::new(IPCHUBD)
        .arg("--check-config")
        .arg("--config")
        .arg(&cfg)
        .output_within(LIMIT)
        .unwrap();
    let c = Command::new(IPCHUBCTL)
        .arg("check-config")
        .arg(&cfg)
        .output_within(LIMIT)
        .unwrap();
    [d, c]
        .into_iter()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

#[test]
fn a_publish_fifo_others_may_write_on_a_forbidden_channel_is_refused() {
    let bad = format!("{FORBIDDEN}\n[fifo]\npublish_channels = [\"ok\", \"secure/door\"]\n");
    let line = bad.lines().position(|l| l.contains("secure/door")).unwrap() + 1;
    for (ok, err) in check_both(&bad) {
        assert!(!ok, "accepted a publish FIFO that bypasses [access]");
        assert!(
            err.contains("fifo.publish_channels[1]")
                && err.contains(&format!("line {line}"))
                && err.contains("secure/door")
                && err.contains("publish_mode"),
            "{err}"
        );
    }
    // Group-writable is as bad when the rule does not name the group.
    let grp = format!("{bad}publish_mode = 0o620\n");
    for (ok, err) in check_both(&grp) {
        assert!(!ok && err.contains("group"), "{err}");
    }
    // Only the hub's own user may write: accepted.
    for (ok, err) in check_both(&format!("{bad}publish_mode = 0o600\n")) {
        assert!(ok, "{err}");
    }
    // The hub refuses to start on it, so nobody can publish through it...
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let door = shared.path().join("pub/secure/door");
    let start = start_daemon_then(&shared.path().join("s.sock"), &bad, |socket| {
        // What the hub as it was allowed: nobody publishes through the FIFO.
        let mut sub = Client::connect(&Options {
            socket: Some(socket.to_path_buf()),
            transport: TransportKind::Socket,
            name: "sub".into(),
            ..Options::default()
        })
        .unwrap();
        sub.subscribe("secure/door").unwrap();
        let out = as_nobody(&["sh", "-c", &format!("echo forged > {}", door.display())]);
        let got = sub.recv(Some(Duration::from_secs(2))).unwrap();
        assert!(
            got.is_none(),
            "nobody published {:?} on secure/door (write: {:?})",
            got.map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
            out.status
        );
    });
    assert_refused(start, &["fifo.publish_channels[1]"]);
    assert!(!door.exists());
    // ...and with a mode that keeps others out, nobody's write goes nowhere
    // while the hub's own user still publishes through it.
    let hub = Hub::start_with(&format!("{bad}publish_mode = 0o600\n"));
    std::fs::set_permissions(hub.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut sub = hub.subscriber(TransportKind::Socket, "secure/door");
    let door = hub.dir.path().join("pub/secure/door");
    let out = as_nobody(&["sh", "-c", &format!("echo forged > {}", door.display())]);
    assert!(!out.status.success(), "nobody opened the publish FIFO");
    std::fs::write(&door, "real\n").unwrap();
    let m = sub.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert_eq!(m.payload, b"real");
    assert!(sub
        .recv(Some(Duration::from_millis(300)))
        .unwrap()
        .is_none());
}

/// Group-write bits serve exactly the group the rules allow: the FIFO
/// gets `publish_group`, whose member `nobody` publishes through it. (Lines
/// are published with the hub's credentials, so the rule names root too.)
#[test]
fn a_group_writable_publish_fifo_serves_the_group_the_rules_allow() {
    let hub = Hub::start_with(
        r#"
[fifo]
publish_channels = ["team/news"]
publish_mode = 0o620
publish_group = "nogroup"
[[access.rule]]
pattern = "team/#"
publish = ["user:root", "group:nogroup"]
subscribe = ["*"]
"#,
    );
    std::fs::set_permissions(hub.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut sub = hub.subscriber(TransportKind::Socket, "team/news");
    let fifo = hub.dir.path().join("pub/team/news");
    let m = std::fs::metadata(&fifo).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 65534, 0o620));
    let out = as_nobody(&["sh", "-c", &format!("echo hello > {}", fifo.display())]);
    assert!(out.status.success(), "{out:?}");
    let m = sub.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert_eq!(m.payload, b"hello");
}

/// On SIGHUP a new `[access]` that the running publish FIFOs would bypass
/// is refused, keeping the running configuration.
#[test]
fn a_reload_whose_rules_the_running_publish_fifos_bypass_is_refused() {
    let hub = Hub::start_with("[fifo]\npublish_channels = [\"secure/door\"]\n");
    // A round trip: the event loop (and its SIGHUP handler) is running.
    hub.client().stats().unwrap();
    std::fs::write(
        &hub.config,
        format!("{FORBIDDEN}\n[dbus]\nenabled = false\n"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    common::wait_for(|| hub.log().contains("reload failed"), "the reload refusal");
    let log = hub.log();
    assert!(
        log.contains("fifo.publish_channels[0]") && log.contains("secure/door"),
        "{log}"
    );
}

#[test]
fn semantic_config_errors_name_key_and_line_through_both_binaries() {
    for (text, key, line, extra) in [
        (
            "[log]\nlevel = \"loud\"\n",
            "log.level",
            2,
            "error, warn, info, debug, trace",
        ),
        (
            "# c\n[hub]\nblock_timeout_ms = 0\n",
            "hub.block_timeout_ms",
            3,
            "",
        ),
        (
            "[fifo]\n\npublish_mode = 0o666\n",
            "fifo.publish_mode",
            3,
            "read",
        ),
        (
            "[fifo]\npublish_mode = 0o4622\n",
            "fifo.publish_mode",
            2,
            "setuid",
        ),
        (
            "\n\n[queue]\nmax_messages = 0\n",
            "queue.max_messages",
            4,
            "",
        ),
        (
            "[[access.rule]]\npattern = \"a\"\n[[access.rule]]\npattern = \"a/#/b\"\n",
            "access.rule[1].pattern",
            4,
            "",
        ),
    ] {
        for (ok, err) in check_both(text) {
            assert!(!ok, "accepted {text:?}");
            assert!(
                err.contains(key) && err.contains(&format!("line {line}")) && err.contains(extra),
                "{text:?}: {err}"
            );
        }
    }
}
