//! Access control from kernel credentials, the same on every transport, and
//! per-client IPC objects owned by the client. Runs clients as `nobody`.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};

use common::{wait_for, Hub, IPCHUBCTL};

const NOBODY: u32 = 65534;

/// `ipchubctl ARGS` as user nobody.
fn as_nobody(hub: &Hub, args: &[&str]) -> Command {
    let mut c = common::as_nobody(IPCHUBCTL);
    c.args(args).env("IPCHUB_SOCKET", &hub.socket);
    c
}

fn run(mut c: Command) -> Output {
    c.output_within(LIMIT)
        .expect("setpriv (util-linux) is needed")
}

const POLICY: &str = r#"
[access]
default = "allow"
[[access.rule]]
pattern = "secure/#"
publish = ["uid:0"]
subscribe = ["user:root"]
"#;

#[test]
fn denied_publish_and_subscribe_are_clear_errors_on_every_transport() {
    let hub = Hub::start_shared(POLICY);
    for t in ["socket", "pipe", "fifo", "mqueue", "shm"] {
        let out = run({
            let mut c = as_nobody(&hub, &["pub", "-t", t, "-c", "secure/door", "open"]);
            c.stdin(Stdio::null());
            c
        });
        assert!(!out.status.success(), "{t}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("uid 65534 may not publish to 'secure/door'"),
            "{t}: {err}"
        );
        let out = run(as_nobody(&hub, &["pub", "-t", t, "-c", "public", "hello"]));
        assert!(
            out.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(as_nobody(
            &hub,
            &["sub", "-t", t, "-c", "secure/door", "-n", "1"],
        ));
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("may not subscribe"),
            "{t}"
        );
    }
    assert!(hub.log().contains("publish denied") && hub.log().contains("client_uid=65534"));
}

#[test]
fn a_wildcard_subscriber_only_sees_channels_it_may_read() {
    let hub = Hub::start_shared(POLICY);
    let sub = as_nobody(&hub, &["sub", "-t", "mqueue", "-c", "#", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut root = hub.client();
    wait_for(
        || {
            root.stats()
                .unwrap()
                .clients
                .iter()
                .any(|c| c.uid == NOBODY && !c.subscriptions.is_empty())
        },
        "subscriber",
    );
    assert_eq!(
        root.publish_confirmed("secure/door", b"secret").unwrap(),
        0,
        "not delivered to nobody"
    );
    assert_eq!(root.publish_confirmed("public", b"news").unwrap(), 1);
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[public] news\n");
}

#[test]
fn a_clients_fifos_and_queues_belong_to_it_with_mode_0600() {
    let hub = Hub::start_shared("");
    let mut subs = Vec::new();
    for t in ["fifo", "mqueue"] {
        subs.push(
            as_nobody(&hub, &["sub", "-t", t, "-c", "x"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let mut root = hub.client();
    wait_for(
        || {
            root.stats()
                .unwrap()
                .clients
                .iter()
                .filter(|c| c.uid == NOBODY && !c.subscriptions.is_empty())
                .count()
                == 2
        },
        "subscribers",
    );
    // The mqueue client made its own queues and unlinked them: they are
    // charged to it and have no name; only the FIFOs are the hub's.
    let objects = hub.ipc_objects();
    assert_eq!(objects.len(), 2, "two FIFOs, no named queue: {objects:?}");
    for path in &objects {
        let m = std::fs::metadata(path).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (NOBODY, 0o600), "{path:?}");
    }
    for mut s in subs {
        s.kill().unwrap();
        s.wait_within(LIMIT).unwrap();
    }
}

#[test]
fn unknown_principals_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[access.rule]]\npattern = \"a\"\npublish = [\"user:no-such-user-x\"]\n",
    )
    .unwrap();
    let out = Command::new(IPCHUBCTL)
        .arg("check-config")
        .arg(&cfg)
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access.rule[0].publish") && err.contains("no such user"),
        "{err}"
    );
}

/// A channel ring is one read-write mapping, so only a client allowed both
/// to read and to write a channel gets it; one allowed only to read is
/// served by the hub, which keeps refusing its publishes.
#[test]
fn a_reader_that_may_not_publish_never_gets_the_channel_ring() {
    let hub = Hub::start_shared(
        r#"
[[access.rule]]
pattern = "ro/#"
publish = ["uid:0"]
subscribe = ["*"]
"#,
    );
    let sub = as_nobody(&hub, &["sub", "-t", "shm", "-c", "ro/a", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hub.wait_subscribers("ro/a", 1);
    let out = run(as_nobody(
        &hub,
        &["pub", "-t", "shm", "-c", "ro/a", "forged"],
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not publish"),
        "{out:?}"
    );
    let mut root = hub.client_via(ipchub::hub::TransportKind::Shm);
    root.publish("ro/a", b"real").unwrap();
    root.flush().unwrap();
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[ro/a] real");
    // Only root joined the ring; nobody was relayed.
    assert_eq!(hub.log().matches("client joined channel ring").count(), 1);
}

/// `group:`/`gid:` rules see the supplementary groups the connecting
/// process holds (read from /proc at accept, never from the user
/// database): nobody with group 4242 added may publish, nobody without
/// it may not, though the user database gives nobody no such group.
#[test]
fn a_group_rule_admits_a_process_holding_the_group() {
    let hub = Hub::start_shared(
        r#"
[access]
default = "allow"
[[access.rule]]
pattern = "staff/#"
publish = ["gid:4242"]
subscribe = ["gid:4242"]
"#,
    );
    let nobody_with = |groups: &str, t: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", groups, IPCHUBCTL])
            .args(["pub", "-t", t, "-c", "staff/notes", "hello"])
            .env("IPCHUB_SOCKET", &hub.socket)
            .stdin(Stdio::null());
        run(c)
    };
    for t in ["socket", "pipe", "shm"] {
        let out = nobody_with("--groups=4242", t);
        assert!(
            out.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = nobody_with("--clear-groups", t);
        assert!(!out.status.success(), "{t}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("uid 65534 may not publish to 'staff/notes'"),
            "{t}: {err}"
        );
    }
}
