//! Channel history in memory (issue #17): channels configured with history
//! bounds number their messages and replay them (`--last N`, `--since D`,
//! `--from-seq S`) before live messages, with no gap and no duplicate at the
//! seam, on every transport and through wildcards; bounds, reload, access.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Hub, IPCHUBCTL};
use ipchub::client::{Client, Event, Message, PublishOptions, Replay, SubscribeOptions};
use ipchub::hub::TransportKind::{self, *};

const TRANSPORTS: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue, Shm];
const WAIT: Option<Duration> = Some(Duration::from_secs(10));
const CONFIG: &str = "[[channel]]\npattern = \"log/#\"\nhistory_messages = 100\n";

fn next_message(c: &mut Client) -> Message {
    c.recv(WAIT).unwrap().expect("a message within 10 s")
}

fn replaying(hub: &Hub, t: TransportKind, pattern: &str, replay: Replay) -> Client {
    let mut c = hub.client_via(t);
    c.subscribe_with(
        pattern,
        SubscribeOptions {
            replay: Some(replay),
            ..Default::default()
        },
    )
    .unwrap();
    c
}

fn nothing_more(c: &mut Client) {
    if let Some(m) = c.recv(Some(Duration::from_millis(300))).unwrap() {
        panic!("unexpected message {m:?}");
    }
}

fn counter(m: &Message) -> u64 {
    std::str::from_utf8(&m.payload).unwrap().parse().unwrap()
}

#[test]
fn late_subscribers_replay_by_count_time_and_sequence_on_every_transport() {
    let hub = Hub::start_with(CONFIG);
    let mut p = hub.client();
    for &t in TRANSPORTS {
        let chan = format!("log/{}/a", t.name());
        let mut total = 51u64;
        for i in 1..=total {
            p.publish(&chan, i.to_string().as_bytes()).unwrap();
        }
        p.flush().unwrap();
        let (hash, plus) = (format!("log/{}/#", t.name()), format!("log/{}/+", t.name()));
        for (pattern, replay) in [
            (chan.as_str(), Replay::Last(10)),
            (chan.as_str(), Replay::FromSeq(45)),
            (hash.as_str(), Replay::SinceMs(600_000)),
            (plus.as_str(), Replay::FromSeq(0)),
        ] {
            let what = format!("{} {pattern} {replay:?}", t.name());
            let first = match replay {
                Replay::Last(n) => total - n + 1,
                Replay::FromSeq(s) => s.max(1),
                Replay::SinceMs(_) => 1,
            };
            let mut s = replaying(&hub, t, pattern, replay);
            for want in first..=total {
                let m = next_message(&mut s);
                assert_eq!((counter(&m), m.channel_seq), (want, Some(want)), "{what}");
                assert!(!m.retained, "{what}");
            }
            // Then live, numbered on.
            total += 1;
            p.publish_confirmed(&chan, total.to_string().as_bytes())
                .unwrap();
            let m = next_message(&mut s);
            assert_eq!((counter(&m), m.channel_seq), (total, Some(total)), "{what}");
            nothing_more(&mut s);
        }
    }
}

#[test]
fn replay_without_history_config_is_nothing_and_plain_subscribers_see_no_prefix() {
    let hub = Hub::start_with(CONFIG);
    let mut p = hub.client();
    p.publish_confirmed("plain", b"x").unwrap();
    let mut s = replaying(&hub, Socket, "plain", Replay::Last(10));
    nothing_more(&mut s);
    // The library asks for channel sequence numbers …
    let mut lib = hub.subscriber(Pipe, "log/b");
    // … a client that does not gets the payload unchanged.
    let mut raw = hub.raw();
    raw.send_frame(ipchub::wire::FrameType::Subscribe, 0, "log/b", b"", 1);
    assert_eq!(raw.read_frame().unwrap().0, ipchub::wire::FrameType::Ack);
    p.publish_confirmed("log/b", b"abc").unwrap();
    let m = next_message(&mut lib);
    assert_eq!((&m.payload[..], m.channel_seq), (&b"abc"[..], Some(1)));
    let (ty, _, ch, payload) = raw.read_frame().unwrap();
    assert_eq!(
        (ty, ch.as_str(), &payload[..]),
        (ipchub::wire::FrameType::Data, "log/b", &b"abc"[..])
    );
    // A bad replay request is a clear, non-fatal error.
    raw.send_frame(
        ipchub::wire::FrameType::Subscribe,
        ipchub::wire::REPLAY,
        "log/b",
        b"last=many",
        7,
    );
    let (ty, seq, _, payload) = raw.read_frame().expect("an answer");
    assert_eq!((ty, seq), (ipchub::wire::FrameType::Error, 7));
    assert!(String::from_utf8_lossy(&payload).contains("'many' is not a number"));
    raw.send_frame(ipchub::wire::FrameType::Ping, 0, "", b"", 8);
    assert_eq!(raw.read_frame().unwrap().0, ipchub::wire::FrameType::Pong);
}

/// The seam: while a publisher numbers messages as fast as it can, each new
/// subscriber replaying the last 20 gets consecutive channel sequence
/// numbers across the switch from history to live: no gap, no duplicate.
#[test]
fn the_seam_between_history_and_live_has_no_gap_and_no_duplicate() {
    let hub = Hub::start_with(CONFIG);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut p = hub.client();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                p.publish("log/seam", n.to_string().as_bytes()).unwrap();
                if n.is_multiple_of(64) {
                    p.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            p.flush().unwrap();
            n
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    for round in 0..2 {
        for &t in TRANSPORTS {
            for pattern in ["log/seam", "log/#"] {
                let what = format!("{round} {} {pattern}", t.name());
                let mut s = replaying(&hub, t, pattern, Replay::Last(20));
                let first = next_message(&mut s);
                let start = first.channel_seq.expect("numbered");
                assert_eq!(counter(&first), start, "{what}");
                for want in start + 1..=start + 300 {
                    let m = next_message(&mut s);
                    assert_eq!(m.channel_seq, Some(want), "{what}: gap or duplicate");
                    assert_eq!(counter(&m), want, "{what}");
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(publisher.join().unwrap() > 300);
}

fn stored(hub: &Hub, channel: &str) -> (usize, u64, u64) {
    let st = hub.client().stats().unwrap();
    let c = st.channels.iter().find(|c| c.name == channel).unwrap();
    (c.stored_messages, c.first_seq, c.last_seq)
}

#[test]
fn bounds_evict_the_oldest_and_a_reload_applies_new_ones() {
    let hub = Hub::start_with(
        "[[channel]]\npattern = \"b/#\"\nhistory_messages = 5\nhistory_bytes = 1000\n",
    );
    let mut p = hub.client();
    for i in 1..=8u64 {
        p.publish_confirmed("b/n", i.to_string().as_bytes())
            .unwrap();
    }
    assert_eq!(stored(&hub, "b/n"), (5, 4, 8));
    // Bytes: two 400-byte messages fit, a third pushes the first out.
    for _ in 0..3 {
        p.publish_confirmed("b/bytes", &[b'x'; 400]).unwrap();
    }
    assert_eq!(stored(&hub, "b/bytes"), (2, 2, 3));
    // Reload: fewer messages kept at once, numbering goes on.
    std::fs::write(
        &hub.config,
        "[[channel]]\npattern = \"b/#\"\nhistory_messages = 2\n[dbus]\nenabled = false\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        || hub.log().contains("configuration reloaded"),
        "the reload",
    );
    assert_eq!(stored(&hub, "b/n"), (2, 7, 8));
    p.publish_confirmed("b/n", b"9").unwrap();
    assert_eq!(stored(&hub, "b/n"), (2, 8, 9));
    // Reload without history: dropped.
    std::fs::write(&hub.config, "[dbus]\nenabled = false\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        || hub.log().matches("configuration reloaded").count() >= 2,
        "the second reload",
    );
    assert_eq!(stored(&hub, "b/n"), (0, 0, 0));
}

#[test]
fn history_is_bounded_per_uid_and_obeys_the_read_rules() {
    let hub = Hub::start_with(
        "[hub]\nmax_history_bytes = 100000\nmax_history_bytes_per_uid = 1200\n\
         [[channel]]\npattern = \"#\"\nhistory_messages = 1000\n\
         [access]\ndefault = \"allow\"\n[[access.rule]]\npattern = \"secure/#\"\npublish = [\"uid:0\"]\nsubscribe = [\"uid:0\"]\n",
    );
    std::fs::set_permissions(hub.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                IPCHUBCTL,
            ])
            .args(args)
            .env("IPCHUB_SOCKET", &hub.socket)
            .stdin(Stdio::null())
            .output_within(LIMIT)
            .expect("setpriv (util-linux) is needed")
    };
    let mut p = hub.client();
    p.publish_confirmed("secure/code", b"1234").unwrap();
    p.publish_confirmed("open/news", b"hello").unwrap();
    let out = nobody(&[
        "sub",
        "-c",
        "#",
        "--from-seq",
        "1",
        "--json",
        "--timeout",
        "1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"payload\":\"hello\""), "{text}");
    assert!(text.contains("\"channel_seq\":1"), "{text}");
    assert!(!text.contains("1234"), "{text}");
    // nobody's stored messages are charged to it: 967 + 967 > 1200.
    let big = "x".repeat(900);
    let out = nobody(&["pub", "-c", "n/a", &big]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nobody(&["pub", "-c", "n/b", &big]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub.max_history_bytes_per_uid"), "{err}");
    // Root is not held back by nobody's quota.
    let seq = p
        .publish_with(
            "n/b",
            big.as_bytes(),
            PublishOptions {
                ack: true,
                priority: 0,
            },
        )
        .unwrap();
    match p.next_event(WAIT).unwrap() {
        Some(Event::Ack { seq: s, .. }) => assert_eq!(s, seq),
        other => panic!("{other:?}"),
    }
    // ipchubctl: --last, --since.
    for args in [
        &[
            "sub",
            "-c",
            "n/b",
            "--last",
            "1",
            "-n",
            "1",
            "--timeout",
            "5",
        ][..],
        &[
            "sub",
            "-c",
            "n/b",
            "--since",
            "10m",
            "-n",
            "1",
            "--timeout",
            "5",
        ],
    ] {
        let out = Command::new(IPCHUBCTL)
            .args(args)
            .env("IPCHUB_SOCKET", &hub.socket)
            .output_within(LIMIT)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("[n/b] {big}"),
            "{args:?}"
        );
    }
    let out = Command::new(IPCHUBCTL)
        .args(["sub", "-c", "n/b", "--since", "10 parsecs"])
        .env("IPCHUB_SOCKET", &hub.socket)
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit must be"));
}

/// A channel kept in memory loses its history at a restart but not its
/// numbering: numbers continue past what was handed out (they may jump,
/// never repeat), after a clean stop and after kill -9 alike.
#[test]
fn memory_channel_numbers_never_repeat_across_restarts() {
    let mut hub = Hub::start_with(CONFIG);
    let publish_numbered = |hub: &Hub, n: usize| -> Vec<u64> {
        let mut s = hub.subscriber(Socket, "log/seq");
        let mut p = hub.client();
        for i in 0..n {
            p.publish_confirmed("log/seq", format!("m{i}").as_bytes())
                .unwrap();
        }
        (0..n)
            .map(|_| next_message(&mut s).channel_seq.expect("numbered"))
            .collect()
    };
    let first = publish_numbered(&hub, 3);
    assert_eq!(first, vec![1, 2, 3]);
    hub.stop();
    hub.restart();
    let second = publish_numbered(&hub, 3);
    assert!(
        second[0] > first[2] && second.windows(2).all(|w| w[1] == w[0] + 1),
        "after a clean restart: {first:?} then {second:?}"
    );
    hub.kill9();
    hub.restart();
    let third = publish_numbered(&hub, 2);
    assert!(
        third[0] > second[2],
        "after kill -9: {second:?} then {third:?}"
    );
    // The reservations live in the hub's state directory, private to it.
    let file = hub.socket.parent().unwrap().join("state/sequences");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
}
