//! Disk storage (issue #17): a channel with `storage = "disk"` keeps its
//! history across restarts and crashes, numbering goes on, a torn or
//! corrupt tail is cut off and logged, `sync = "always"` ACKs only what is
//! written, and a full disk gives publishers a clear error while the hub
//! serves everything else.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Hub;
use ipchub::client::{Client, Event, Message, PublishOptions, Replay, SubscribeOptions};
use ipchub::hub::TransportKind::{self, *};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn config(state: &Path, sync: &str) -> String {
    format!(
        "[hub]\nstate_dir = \"{}\"\n[[channel]]\npattern = \"d/#\"\nstorage = \"disk\"\nsync = \"{sync}\"\nhistory_messages = 100000\nhistory_bytes = 100000000\n",
        state.display()
    )
}

fn replay_all(hub: &Hub, t: TransportKind, channel: &str) -> Vec<Message> {
    let mut c = hub.client_via(t);
    c.subscribe_with(
        channel,
        SubscribeOptions {
            replay: Some(Replay::FromSeq(0)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut out = Vec::new();
    while let Some(m) = c.recv(Some(Duration::from_millis(500))).unwrap() {
        out.push(m);
    }
    out
}

fn acked() -> PublishOptions {
    PublishOptions {
        ack: true,
        priority: 0,
    }
}

fn segments(state: &Path, escaped: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("channels").join(escaped))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn history_survives_a_restart_and_numbering_continues() {
    let state = tempfile::tempdir().unwrap();
    let mut hub = Hub::start_with(&config(state.path(), "interval"));
    let mut p = hub.client();
    for i in 1..=10u32 {
        p.publish_confirmed("d/a", format!("m{i}").as_bytes())
            .unwrap();
    }
    drop(p);
    hub.stop();
    // Stored data is the hub's alone.
    let dir = state.path().join("channels").join("d_2fa");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in segments(state.path(), "d_2fa") {
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    hub.restart();
    for t in [Socket, Pipe, Fifo, Mqueue, Shm] {
        let got = replay_all(&hub, t, "d/#");
        let seqs: Vec<_> = got.iter().map(|m| m.channel_seq.unwrap()).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{}", t.name());
        assert_eq!(got[9].payload, b"m10");
    }
    let mut s = hub.client();
    s.subscribe("d/a").unwrap();
    let mut p = hub.client();
    p.publish_confirmed("d/a", b"m11").unwrap();
    assert_eq!(s.recv(WAIT).unwrap().unwrap().channel_seq, Some(11));
    let st = p.stats().unwrap();
    let c = st.channels.iter().find(|c| c.name == "d/a").unwrap();
    assert_eq!((c.stored_messages, c.first_seq, c.last_seq), (11, 1, 11));
}

/// kill -9 while several publishers stream under `sync = "always"`, at a
/// different moment per seed: after the restart every acknowledged message
/// is there, the stored numbers run 1, 2, 3, … without a hole, and new
/// messages number on from the last.
#[test]
fn kill_9_during_writes_loses_no_acknowledged_message() {
    for seed in [3u64, 11, 29] {
        let state = tempfile::tempdir().unwrap();
        let mut hub = Hub::start_with(&config(state.path(), "always"));
        let acked_all: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                // Fail fast when the hub dies: a reconnecting client would
                // hold its publishes for the next hub instead.
                let mut c: Client = Client::connect(&ipchub::client::Options {
                    reconnect: ipchub::client::Reconnect::off(),
                    ..hub.options(ipchub::hub::TransportKind::Socket)
                })
                .unwrap();
                let acked_all = acked_all.clone();
                std::thread::spawn(move || {
                    let mut sent = std::collections::HashMap::new();
                    for i in 0u64.. {
                        let payload = format!("t{t}-{i}").into_bytes();
                        let Ok(seq) = c.publish_with("d/crash", &payload, acked()) else {
                            return;
                        };
                        sent.insert(seq, payload);
                        if c.flush().is_err() {
                            return;
                        }
                        while let Ok(Some(ev)) = c.poll_events() {
                            if let Event::Ack { seq, .. } = ev {
                                let p = sent.remove(&seq).unwrap();
                                acked_all.lock().unwrap().push(p);
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + seed * 13 % 300));
        hub.kill9();
        for t in threads {
            t.join().unwrap();
        }
        let acked = acked_all.lock().unwrap().clone();
        assert!(!acked.is_empty(), "seed {seed}: nothing was acknowledged");
        hub.restart();
        let got = replay_all(&hub, Socket, "d/crash");
        let seqs: Vec<u64> = got.iter().map(|m| m.channel_seq.unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "seed {seed}: stored numbers with a hole"
        );
        let stored: std::collections::HashSet<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
        for a in &acked {
            assert!(
                stored.contains(&a[..]),
                "seed {seed}: acknowledged {} lost",
                String::from_utf8_lossy(a)
            );
        }
        let mut s = hub.client();
        s.subscribe("d/crash").unwrap();
        hub.client().publish_confirmed("d/crash", b"after").unwrap();
        assert_eq!(
            s.recv(WAIT).unwrap().unwrap().channel_seq,
            Some(got.len() as u64 + 1),
            "seed {seed}: numbering does not continue"
        );
    }
}

#[test]
fn a_torn_or_bit_flipped_segment_is_cut_off_and_logged() {
    let state = tempfile::tempdir().unwrap();
    let mut hub = Hub::start_with(&config(state.path(), "never"));
    let mut p = hub.client();
    for i in 1..=10u32 {
        p.publish_confirmed("d/t", format!("msg-{i:04}").as_bytes())
            .unwrap();
    }
    drop(p);
    hub.stop();
    let seg = segments(state.path(), "d_2ft").pop().unwrap();
    // A torn tail: half a record after the ten.
    let mut bytes = std::fs::read(&seg).unwrap();
    let one = bytes.len() / 10;
    let whole = bytes.clone();
    bytes.extend_from_slice(&whole[..one / 2]);
    std::fs::write(&seg, &bytes).unwrap();
    hub.restart();
    assert_eq!(replay_all(&hub, Socket, "d/t").len(), 10);
    assert!(
        hub.log().contains("torn or corrupt tail was cut off"),
        "{}",
        hub.log()
    );
    assert_eq!(std::fs::read(&seg).unwrap(), whole, "the tail was not cut");
    hub.stop();
    // A flipped bit in the 7th record's payload: 1..6 are served, never 7.
    let mut bytes = whole.clone();
    bytes[6 * one + one - 2] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    hub.restart();
    let got = replay_all(&hub, Socket, "d/t");
    let payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        (1..=6).map(|i| format!("msg-{i:04}")).collect::<Vec<_>>()
    );
    assert!(hub.log().contains("checksum mismatch"), "{}", hub.log());
}

/// A tmpfs of 1 MiB as the state directory, unmounted when dropped.
struct SmallDisk(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(dir.path())
            .status_within(LIMIT)
            .expect("mount(8)");
        assert!(ok.success(), "mounting a tmpfs needs root");
        SmallDisk(dir.path().to_path_buf(), dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status_within(LIMIT);
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_hub_serves_everything_else() {
    let disk = SmallDisk::mount();
    let hub = Hub::start_with(&config(&disk.0, "interval"));
    let mut p = hub.client();
    let mut sub = hub.client();
    sub.subscribe("d/full").unwrap();
    let chunk = vec![b'x'; 16 << 10];
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        assert!(Instant::now() < deadline, "the disk never filled");
        let seq = p.publish_with("d/full", &chunk, acked()).unwrap();
        match p.next_event(WAIT).unwrap() {
            Some(Event::Ack { seq: s, .. }) => assert_eq!(s, seq),
            Some(Event::Error { seq: s, text, .. }) if s == seq => break text,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        text.contains("not stored") && text.contains("No space left"),
        "{text}"
    );
    // Everything else goes on: live delivery (the refused message too),
    // other channels, new clients, statistics.
    let mut n = 0;
    while sub
        .recv(Some(Duration::from_millis(300)))
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    assert!(n > 10, "{n}");
    assert_eq!(p.publish_confirmed("plain", b"ok").unwrap(), 0);
    let mut late = hub.client();
    late.subscribe("plain").unwrap();
    assert!(p.stats().unwrap().totals.storage_errors >= 1);
    drop(hub);
}

#[test]
fn ipchubctl_history_lists_what_is_stored() {
    let state = tempfile::tempdir().unwrap();
    let mut hub = Hub::start_with(&format!(
        "{}[[channel]]\npattern = \"m/#\"\nhistory_messages = 2\n",
        config(state.path(), "never")
    ));
    let mut p = hub.client();
    for v in ["one", "two", "three\x1b[2J"] {
        p.publish_confirmed("d/h", v.as_bytes()).unwrap();
        p.publish_confirmed("m/h", v.as_bytes()).unwrap();
    }
    hub.stop();
    hub.restart();
    let run = |args: &[&str]| {
        let out = hub.ctl().args(args).output_within(LIMIT).unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = run(&["history", "d/h"]);
    assert!(ok, "{text}");
    assert_eq!(
        text,
        "'d/h': 3 messages, 15 bytes, sequence numbers 1..3\n1\tone\n2\ttwo\n3\tthree\\u{1b}[2J\n"
    );
    // A memory channel forgot its history in the restart.
    let (ok, text) = run(&["history", "m/h"]);
    assert!(!ok || text.contains("no stored messages"), "{text}");
    let (ok, text) = run(&["history", "d/h", "--json"]);
    assert!(ok);
    assert!(
        text.lines().count() == 3 && text.contains("\"channel_seq\":2"),
        "{text}"
    );
}

/// Group commit: 8 publishers streaming under `sync = "always"` get every
/// ACK only through fsync rounds, and share them (fewer rounds than ACKs).
#[test]
fn publishers_under_sync_always_share_fsyncs() {
    let state = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(&config(state.path(), "always"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mut c: Client = hub.client();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    c.publish_with("d/group", format!("{t}-{i}").as_bytes(), acked())
                        .unwrap();
                }
                c.flush().unwrap();
                let mut acks = 0;
                while acks < 200 {
                    match c.next_event(WAIT).unwrap() {
                        Some(Event::Ack { .. }) => acks += 1,
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = hub.client().stats().unwrap().totals;
    assert_eq!(st.storage_synced_acks, 1600);
    assert!(
        st.storage_syncs < 1600,
        "{} fsync rounds for 1600 ACKs: none shared",
        st.storage_syncs
    );
}

#[test]
fn a_retained_value_on_a_disk_channel_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut hub = Hub::start_with(&config(state.path(), "always"));
    let mut p = hub.client();
    for (c, v) in [
        ("d/kept", &b"v1"[..]),
        ("d/kept", b"v2"),
        ("d/gone", b"x"),
        ("d/gone", b""),
    ] {
        let seq = p.publish_retained(c, v, acked()).unwrap();
        match p.next_event(WAIT).unwrap() {
            Some(Event::Ack { seq: s, .. }) => assert_eq!(s, seq),
            other => panic!("{other:?}"),
        }
    }
    p.publish_confirmed("d/kept", b"not retained").unwrap();
    drop(p);
    hub.kill9();
    hub.restart();
    let mut s = hub.client();
    s.subscribe("d/kept").unwrap();
    let m = s.recv(WAIT).unwrap().unwrap();
    assert_eq!((&m.payload[..], m.retained), (&b"v2"[..], true));
    let mut s = hub.client();
    s.subscribe("d/gone").unwrap();
    assert!(s.recv(Some(Duration::from_millis(300))).unwrap().is_none());
}
