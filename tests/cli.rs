//! `ipchubctl` as a user and a script see it: every way to publish and to
//! print, request/reply on every transport, exit statuses, help texts.
//! Real binaries against a real hub.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Hub, IPCHUBCTL, IPCHUBD};
use ipchub::hub::TransportKind::Socket;

const TRANSPORTS: [&str; 5] = ["socket", "pipe", "fifo", "mqueue", "shm"];
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Wait for `child` to exit, killing it (and failing) after 30 s.
fn finish(mut child: Child) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("ipchubctl did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Run `cmd` with `input` on its standard input, within 30 s.
fn run(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = finish(child);
    writer.join().unwrap();
    out
}

fn ctl(hub: &Hub, args: &[&str]) -> Output {
    let mut c = hub.ctl();
    c.args(args);
    run(c, b"")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Wait until, for each (pattern, n), n clients have subscribed to exactly that pattern.
fn wait_subscriptions(hub: &Hub, want: &[(&str, usize)]) {
    let mut probe = hub.client();
    wait_for(
        || {
            let st = probe.stats().unwrap();
            want.iter().all(|(p, n)| {
                st.clients
                    .iter()
                    .filter(|c| c.subscriptions.iter().any(|s| s == p))
                    .count()
                    == *n
            })
        },
        &format!("subscriptions {want:?}"),
    );
}

/// Start `ipchubctl ARGS` in the background with piped output.
fn spawn(hub: &Hub, args: &[&str]) -> Child {
    hub.ctl()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn pub_takes_a_file_all_of_stdin_lines_and_repeats_and_says_1_subscriber() {
    let hub = Hub::start();
    let mut s = hub.subscriber(Socket, "in");
    let file = hub.dir.path().join("msg.txt");
    std::fs::write(&file, "first line\nsecond line\n").unwrap();

    let out = ctl(&hub, &["pub", "-c", "in", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Published (1 subscriber)\n");
    assert_eq!(
        s.recv(WAIT).unwrap().unwrap().payload,
        b"first line\nsecond line\n"
    );

    // `-s` is all of standard input as one message, as in mosquitto_pub;
    // after `pub` the socket is the long `--socket`, before it `-s` still is.
    let sock = hub.socket.to_str().unwrap();
    let mut c = Command::new(IPCHUBCTL);
    c.args(["pub", "-c", "in", "-s", "--quiet", "--socket", sock]);
    let out = run(c, b"all\nof it");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "--quiet prints no Connected line");
    assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"all\nof it");
    let mut c = Command::new(IPCHUBCTL);
    c.args(["-s", sock, "pub", "-c", "in", "--stdin", "-q"]);
    let out = run(c, b"long\nform");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"long\nform");

    for flags in [&["-l"][..], &[][..]] {
        let mut c = hub.ctl();
        c.args(["pub", "-c", "in"]).args(flags);
        let out = run(c, b"one\ntwo\n");
        assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
        assert!(stderr(&out).starts_with("Connected to hub via UNIX socket"));
        assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"one");
        assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"two");
    }

    let out = ctl(
        &hub,
        &[
            "pub",
            "-c",
            "in",
            "--repeat",
            "3",
            "--interval",
            "0.05",
            "r",
        ],
    );
    assert_eq!(stdout(&out), "Published (1 subscriber)\n".repeat(3));
    for _ in 0..3 {
        assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"r");
    }
    // Zero and two subscribers keep the plural scripts parse.
    assert_eq!(
        stdout(&ctl(&hub, &["pub", "-c", "nobody/here", "x"])),
        "Published (0 subscribers)\n"
    );
    let _s2 = hub.subscriber(Socket, "in");
    assert_eq!(
        stdout(&ctl(&hub, &["pub", "-c", "in", "x"])),
        "Published (2 subscribers)\n"
    );
    // Two sources at once, or --repeat of a stream of lines, are usage errors.
    let out = ctl(&hub, &["pub", "-c", "in", "-f", "x", "-s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = ctl(&hub, &["pub", "-c", "in", "--repeat", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_line_over_the_limit_is_reported_by_number_and_the_rest_goes_on() {
    let hub = Hub::start_with("[hub]\nmax_message_size = 1000\n");
    let mut s = hub.subscriber(Socket, "lines");
    let mut input = b"before\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 5000));
    input.extend_from_slice(b"\nafter\n");
    let mut c = hub.ctl();
    c.args(["pub", "-c", "lines"]);
    let out = run(c, &input);
    assert_eq!(out.status.code(), Some(5), "too large: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("line 2: message of 5000 bytes exceeds the hub's limit of 1000 bytes"),
        "{err}"
    );
    assert_eq!(stdout(&out).lines().count(), 2);
    assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"before");
    assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"after");
    // A file over the limit is one message too large.
    let big = hub.dir.path().join("big");
    std::fs::write(&big, vec![b'y'; 2000]).unwrap();
    let out = ctl(&hub, &["pub", "-c", "lines", "-f", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn pub_on_a_terminal_says_it_reads_standard_input() {
    let hub = Hub::start();
    // script(1) gives ipchubctl a terminal; its end of input ends the run.
    let cmd = format!(
        "IPCHUB_SOCKET='{}' '{IPCHUBCTL}' pub -c tty",
        hub.socket.display()
    );
    let out = match Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            let mut stdin = child.stdin.take().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let _ = stdin.write_all(b"typed\n\x04");
            drop(stdin);
            finish(child)
        }
        Err(e) => panic!("script (package bsdutils) is needed: {e}"),
    };
    let text = stdout(&out);
    assert!(
        text.contains("reading messages from standard input, one per line"),
        "{text}"
    );
}

#[test]
fn sub_prints_payload_lines_raw_bytes_formats_and_json_with_the_publisher() {
    let hub = Hub::start();
    let lines = spawn(&hub, &["sub", "-c", "a", "-c", "b/#", "--lines", "-n", "2"]);
    let raw = spawn(&hub, &["sub", "-c", "a", "--raw", "-n", "2"]);
    let fmt = spawn(
        &hub,
        &[
            "sub",
            "-c",
            "a",
            "-n",
            "1",
            "-F",
            "%t|%p|%x|%l|%s|%o|%y|%I|%U|%%",
        ],
    );
    let json = spawn(&hub, &["sub", "-c", "a", "--json", "-n", "1"]);
    let excl = spawn(
        &hub,
        &[
            "sub",
            "-c",
            "#",
            "--exclude",
            "b/#",
            "--exclude",
            "c",
            "-n",
            "1",
        ],
    );
    wait_subscriptions(&hub, &[("a", 4), ("b/#", 1), ("#", 1)]);
    // A publisher that stays connected, so the hub still knows who it is.
    let mut p = ipchub::client::Client::connect(&ipchub::client::Options {
        socket: Some(hub.socket.clone()),
        transport: Socket,
        name: "the-publisher".into(),
        ..Default::default()
    })
    .unwrap();
    // Excluded channels first: the --exclude subscriber must skip them.
    p.publish_confirmed("b/c", b"\x00\xff").unwrap();
    p.publish_confirmed("c", b"skip").unwrap();
    p.publish_with(
        "a",
        b"hi",
        ipchub::client::PublishOptions {
            ack: true,
            priority: 7,
        },
    )
    .unwrap();
    p.publish_confirmed("a", b"raw").unwrap();

    let out = finish(lines);
    assert_eq!(out.stdout, b"\x00\xff\nhi\n");
    let out = finish(raw);
    assert_eq!(out.stdout, b"hiraw");
    let out = finish(fmt);
    let text = stdout(&out);
    let f: Vec<&str> = text.trim_end().split('|').collect();
    assert_eq!(&f[..4], ["a", "hi", "6869", "2"], "{text}");
    assert_eq!(f[4], "3", "the third message from p");
    assert_eq!(f[5], p.id().to_string());
    assert_eq!(f[6], "7");
    assert!(
        f[7].len() == 20 && f[7].ends_with('Z') && f[7].contains('T'),
        "{text}"
    );
    let unix: f64 = f[8].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - unix).abs() < 600.0, "{text}");
    assert_eq!(f[9], "%");
    let out = finish(json);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payload"], "hi");
    assert_eq!(v["priority"], 7);
    assert_eq!(v["publisher"]["client"], p.id());
    assert_eq!(v["publisher"]["pid"], std::process::id());
    assert_eq!(v["publisher"]["uid"], nix::unistd::getuid().as_raw());
    assert_eq!(v["publisher"]["name"], "the-publisher");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert!(v["time_unix"].as_f64().unwrap() > 1.0e9);
    // --exclude: neither b/c nor c was printed, "hi" on a was.
    let out = finish(excl);
    assert_eq!(stdout(&out), "[a] hi\n");
    // A format token that does not exist is a usage error.
    let out = ctl(&hub, &["sub", "-c", "a", "-F", "%q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown format token '%q'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sub_timeout_is_the_whole_run_and_idle_timeout_the_gap() {
    let hub = Hub::start();
    // --timeout: a steady trickle does not keep it alive.
    let total = spawn(&hub, &["sub", "-c", "t", "--timeout", "1.5"]);
    let idle = spawn(&hub, &["sub", "-c", "t", "--idle-timeout", "1.5"]);
    hub.wait_subscribers("t", 2);
    let mut p = hub.client();
    let t0 = Instant::now();
    let mut total = Some(total);
    let mut total_out = None;
    while t0.elapsed() < Duration::from_secs(4) {
        p.publish_confirmed("t", b"tick").unwrap();
        if let Some(c) = total.as_mut() {
            if c.try_wait().unwrap().is_some() {
                total_out = Some(finish(total.take().unwrap()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let total_out = total_out.expect("sub --timeout 1.5 still ran after 4 s of messages");
    assert_eq!(total_out.status.code(), Some(0), "messages came: success");
    assert!(stdout(&total_out).starts_with("[t] tick\n"));
    // --idle-timeout: alive while messages come, ends 1.5 s after the last.
    let mut idle = idle;
    assert!(idle.try_wait().unwrap().is_none(), "idle sub ended early");
    let out = finish(idle);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("no message within 1.5 s"));
    // --timeout before --count messages is a timeout.
    let out = ctl(&hub, &["sub", "-c", "t", "-n", "1", "--timeout", "0.2"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
}

/// A replier and a requester on each transport; the replier's command
/// gets the body on stdin and the channels in its environment.
#[test]
fn request_and_reply_work_on_every_transport() {
    let hub = Hub::start();
    for t in TRANSPORTS {
        let ch = format!("svc/{t}");
        let replier = spawn(
            &hub,
            &[
                "reply",
                &ch,
                "-t",
                t,
                "-n",
                "1",
                "--exec",
                "tr a-z A-Z; printf ' %s' \"$IPCHUB_CHANNEL\"",
            ],
        );
        hub.wait_subscribers(&ch, 1);
        let out = ctl(&hub, &["request", &ch, "hello", "-t", t, "--timeout", "10"]);
        assert!(out.status.success(), "{t}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("HELLO {ch}\n"), "{t}");
        let r = finish(replier);
        assert!(r.status.success(), "{t}: {}", stderr(&r));
    }
    // A fixed answer, the body from standard input.
    let replier = spawn(&hub, &["reply", "ping", "pong", "-n", "1"]);
    hub.wait_subscribers("ping", 1);
    let mut c = hub.ctl();
    c.args(["request", "ping"]);
    let out = run(c, b"are you there?");
    assert_eq!(stdout(&out), "pong\n", "{}", stderr(&out));
    finish(replier);
    // The request as a plain subscriber sees it: the documented envelope.
    let mut s = hub.subscriber(Socket, "peek");
    let out = ctl(&hub, &["request", "peek", "body", "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(6), "no reply: timeout");
    let m = s.recv(WAIT).unwrap().unwrap();
    let text = String::from_utf8(m.payload).unwrap();
    let (head, body) = text.split_once('\n').unwrap();
    assert!(head.starts_with("reply-to=_reply/"), "{text}");
    assert_eq!(body, "body");
    // Nobody on the channel: says so at once, its own status.
    let out = ctl(&hub, &["request", "void", "x", "--timeout", "20"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("no subscriber on 'void'"));
    // A message without the envelope is skipped with a warning.
    let replier = spawn(&hub, &["reply", "mixed", "ok", "-n", "1"]);
    hub.wait_subscribers("mixed", 1);
    hub.client()
        .publish_confirmed("mixed", b"not a request")
        .unwrap();
    let out = ctl(&hub, &["request", "mixed", "x"]);
    assert_eq!(stdout(&out), "ok\n");
    let r = finish(replier);
    assert!(stderr(&r).contains("no reply-to line"), "{}", stderr(&r));
}

#[test]
fn exit_statuses_are_distinct_and_errors_name_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(IPCHUBCTL);
    c.env("IPCHUB_SOCKET", dir.path().join("nope.sock"))
        .args(["pub", "-c", "x", "y"]);
    let out = run(c, b"");
    assert_eq!(out.status.code(), Some(3), "unreachable");
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.contains("systemctl start ipchub.socket") && err.contains("ipchubd"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let hub = Hub::start_with(
        "[hub]\nmax_message_size = 100\n[access]\ndefault = \"allow\"\n[[access.rule]]\npattern = \"locked/#\"\npublish = [\"uid:4242\"]\nsubscribe = [\"uid:4242\"]\n",
    );
    let out = ctl(&hub, &["pub", "-c", "locked/door", "x"]);
    assert_eq!(out.status.code(), Some(4), "denied: {}", stderr(&out));
    let out = ctl(&hub, &["sub", "-c", "locked/door"]);
    assert_eq!(out.status.code(), Some(4), "denied: {}", stderr(&out));
    let out = ctl(&hub, &["pub", "-c", "open", &"z".repeat(200)]);
    assert_eq!(out.status.code(), Some(5), "too large: {}", stderr(&out));
    let out = ctl(&hub, &["pub", "-c", "bad//name", "x"]);
    assert_eq!(out.status.code(), Some(2), "usage: {}", stderr(&out));
    let out = ctl(&hub, &["pub", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "usage");
    let out = ctl(&hub, &["sub", "-c", "quiet", "--idle-timeout", "0.1"]);
    assert_eq!(out.status.code(), Some(6), "timeout");
    let out = ctl(&hub, &["sub", "-c", "x", "--timeout", "-1"]);
    assert_eq!(out.status.code(), Some(2), "negative seconds");

    // The hub going away under a subscriber that asked not to wait for it
    // (by default it reconnects: tests/reconnect.rs).
    let mut hub = hub;
    let sub = spawn(&hub, &["sub", "-c", "open", "--no-reconnect"]);
    hub.wait_subscribers("open", 1);
    hub.stop();
    let out = finish(sub);
    assert_eq!(out.status.code(), Some(7), "closed: {}", stderr(&out));
    assert!(stderr(&out).contains("hub closed the connection"));
}

#[test]
fn short_and_long_help_agree_and_check_config_has_no_socket() {
    let first_line = |args: &[&str]| -> String {
        let out = Command::new(IPCHUBCTL)
            .args(args)
            .output_within(LIMIT)
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    let subs = ["pub", "sub", "request", "reply", "stats", "check-config"];
    assert_eq!(first_line(&["-h"]), first_line(&["--help"]));
    assert!(first_line(&["-h"]).starts_with("ipchubctl: "));
    for s in subs {
        assert_eq!(first_line(&[s, "-h"]), first_line(&[s, "--help"]), "{s}");
    }
    let out = Command::new(IPCHUBCTL)
        .args(["check-config", "--help"])
        .output_within(LIMIT)
        .unwrap();
    assert!(!stdout(&out).contains("--socket"), "{}", stdout(&out));
    let out = Command::new(IPCHUBCTL)
        .arg("--help")
        .output_within(LIMIT)
        .unwrap();
    assert!(stdout(&out).contains("Exit status:"));
    // --socket before or after the command.
    let hub = Hub::start();
    for args in [
        vec!["--socket", hub.socket.to_str().unwrap(), "stats"],
        vec!["stats", "--socket", hub.socket.to_str().unwrap()],
    ] {
        let out = Command::new(IPCHUBCTL)
            .env_remove("IPCHUB_SOCKET")
            .env("XDG_RUNTIME_DIR", "/nonexistent")
            .args(&args)
            .output_within(LIMIT)
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn both_checkers_say_the_same_and_a_missing_spawn_program_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[spawn]]\nname = \"t\"\ncommand = [\"true\"]\n").unwrap();
    let ctl = Command::new(IPCHUBCTL)
        .args(["check-config"])
        .arg(&good)
        .output_within(LIMIT)
        .unwrap();
    let d = Command::new(IPCHUBD)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output_within(LIMIT)
        .unwrap();
    let expect = format!("{}: configuration OK\n", good.display());
    assert_eq!(stdout(&ctl), expect);
    assert_eq!(stdout(&d), expect);

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[spawn]]\nname = \"t\"\ncommand = [\"/nonexistent/prog\", \"x\"]\n[[spawn]]\nname = \"u\"\ncommand = [\"no-such-program-on-path\"]\n",
    )
    .unwrap();
    for out in [
        Command::new(IPCHUBCTL)
            .args(["check-config"])
            .arg(&bad)
            .output_within(LIMIT)
            .unwrap(),
        Command::new(IPCHUBD)
            .args(["--check-config", "--config"])
            .arg(&bad)
            .output_within(LIMIT)
            .unwrap(),
    ] {
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("spawn[0].command") && err.contains("/nonexistent/prog"),
            "{err}"
        );
    }
    let one = dir.path().join("one.toml");
    std::fs::write(
        &one,
        "[[spawn]]\nname = \"u\"\ncommand = [\"no-such-program-on-path\"]\n",
    )
    .unwrap();
    let out = Command::new(IPCHUBCTL)
        .args(["check-config"])
        .arg(&one)
        .output_within(LIMIT)
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("spawn[0].command") && err.contains("not found on PATH"),
        "{err}"
    );
}

/// A child that keeps failing is restarted with a growing delay, not every
/// restart_delay_ms forever.
#[test]
fn a_failing_spawn_is_restarted_with_backoff() {
    let hub = Hub::start_with(
        "[[spawn]]\nname = \"flaky\"\ncommand = [\"false\"]\nrestart = \"on-failure\"\nrestart_delay_ms = 100\n",
    );
    wait_for(
        || hub.log().contains("delay_ms=400"),
        "a third restart with a doubled delay",
    );
    let log = hub.log();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("restarting"))
        .take(3)
        .collect();
    assert!(delays[0].contains("delay_ms=100"), "{log}");
    assert!(delays[1].contains("delay_ms=200"), "{log}");
    assert!(delays[2].contains("delay_ms=400"), "{log}");
}

/// `sub` output line by line as it arrives (a pipe reader sees each message
/// at once, not when a buffer fills).
#[test]
fn sub_lines_arrive_one_by_one() {
    let hub = Hub::start();
    let mut sub = spawn(&hub, &["sub", "-c", "live", "-l", "-n", "2"]);
    hub.wait_subscribers("live", 1);
    let mut p = hub.client();
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    for m in ["one", "two"] {
        p.publish_confirmed("live", m.as_bytes()).unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{m}\n"));
    }
    assert!(finish(sub).status.success());
}
