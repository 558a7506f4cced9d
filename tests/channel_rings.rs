//! Channel rings (docs/ARCHITECTURE.md): shm clients on an exact channel publish into
//! and read from the channel's broadcast ring, with the hub off the data
//! path; clients of other transports still meet them on the same channel.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::time::Duration;

use common::{wait_for, Hub};
use ipchub::client::{Client, Event};
use ipchub::hub::TransportKind::{Shm, Socket};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn stats_of(c: &mut Client, id: u32) -> ipchub::hub::ClientStats {
    c.stats()
        .unwrap()
        .clients
        .into_iter()
        .find(|s| s.id == id)
        .expect("client in stats")
}

#[test]
fn between_shm_clients_the_hub_is_not_on_the_data_path() {
    let hub = Hub::start();
    let mut subs: Vec<Client> = (0..3).map(|_| hub.subscriber(Shm, "direct/a")).collect();
    let mut p = hub.client_via(Shm);
    let n = 5_000u32;
    for i in 0..n {
        p.publish("direct/a", &i.to_le_bytes()).unwrap();
    }
    p.flush().unwrap();
    for s in &mut subs {
        for i in 0..n {
            let m = s.recv(WAIT).unwrap().expect("message");
            assert_eq!(m.payload, i.to_le_bytes());
            assert_eq!(m.channel, "direct/a");
            assert_eq!(m.origin, p.id());
        }
    }
    // The hub never handled one of those messages, yet counts them.
    let mut ctl = hub.client();
    assert_eq!(stats_of(&mut ctl, p.id()).messages_in, 0);
    let st = ctl.stats().unwrap();
    let ch = st.channels.iter().find(|c| c.name == "direct/a").unwrap();
    assert_eq!(ch.published, u64::from(n));
    assert_eq!(ch.subscribers, 3);
    let sub_stats = stats_of(&mut ctl, subs[0].id());
    assert_eq!(sub_stats.subscriptions, vec!["direct/a".to_string()]);
    assert!(hub.log().contains("channel ring created"));
}

#[test]
fn acks_count_ring_readers_and_the_hubs_subscribers() {
    let hub = Hub::start();
    let _direct = hub.subscriber(Shm, "count/x");
    let _relayed = hub.subscriber(Socket, "count/x");
    let _wild = hub.subscriber(Shm, "count/+");
    let mut p = hub.client_via(Shm);
    assert_eq!(p.publish_confirmed("count/x", b"1").unwrap(), 3);
    let mut q = hub.client_via(Socket);
    assert_eq!(q.publish_confirmed("count/x", b"2").unwrap(), 3);
}

#[test]
fn every_transport_meets_the_ring_in_one_order_without_duplicates() {
    let hub = Hub::start();
    // Reads the ring for count/x and also matches it through a wildcard: once each.
    let mut both = hub.subscriber(Shm, "mix/a");
    both.subscribe("mix/#").unwrap();
    let mut sock = hub.subscriber(Socket, "mix/a");
    let mut shm_pub = hub.client_via(Shm);
    let mut sock_pub = hub.client_via(Socket);
    for i in 0..200u32 {
        let (p, tag) = if i % 3 == 0 {
            (&mut sock_pub, b's')
        } else {
            (&mut shm_pub, b'm')
        };
        let mut payload = i.to_le_bytes().to_vec();
        payload.push(tag);
        p.publish("mix/a", &payload).unwrap();
        p.flush().unwrap();
    }
    let mut seen_both = Vec::new();
    let mut seen_sock = Vec::new();
    for (c, seen) in [(&mut both, &mut seen_both), (&mut sock, &mut seen_sock)] {
        for _ in 0..200 {
            let m = c.recv(WAIT).unwrap().expect("message");
            seen.push(u32::from_le_bytes(m.payload[..4].try_into().unwrap()));
        }
        assert!(
            c.recv(Some(Duration::from_millis(200))).unwrap().is_none(),
            "a duplicate arrived"
        );
    }
    // Per publisher order holds for every subscriber.
    for seen in [&seen_both, &seen_sock] {
        let shm: Vec<_> = seen.iter().filter(|i| *i % 3 != 0).collect();
        let sock: Vec<_> = seen.iter().filter(|i| *i % 3 == 0).collect();
        assert!(shm.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert!(sock.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    }
}

#[test]
fn drop_oldest_ring_tells_a_lagging_reader_how_many_it_missed() {
    let hub = Hub::start_with(
        r#"
[hub]
max_message_size = 1024
[shm]
channel_ring_size = 4096
[[channel]]
pattern = "lossy/#"
overflow = "drop-oldest"
"#,
    );
    let mut sub = hub.subscriber(Shm, "lossy/a");
    let mut p = hub.client_via(Shm);
    let n = 2_000u32;
    for i in 0..n {
        p.publish(
            "lossy/a",
            &[i.to_le_bytes().as_slice(), &[0u8; 96]].concat(),
        )
        .unwrap();
    }
    p.flush().unwrap();
    let mut missed = 0u64;
    let mut got = Vec::new();
    while let Some(ev) = sub.next_event(Some(Duration::from_millis(300))).unwrap() {
        match ev {
            Event::Missed(k) => missed += k,
            Event::Message(m) => got.push(u32::from_le_bytes(m.payload[..4].try_into().unwrap())),
            other => panic!("{other:?}"),
        }
    }
    assert!(missed > 0, "a 4 KiB ring cannot hold 2000 messages");
    assert_eq!(
        missed + got.len() as u64,
        u64::from(n),
        "every message is read or counted"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*got.last().unwrap(), n - 1, "the newest survive");
}

#[test]
fn block_ring_holds_a_fast_publisher_to_a_slow_reader_and_loses_nothing() {
    let hub = Hub::start_with("[shm]\nchannel_ring_size = 4096\n[hub]\nmax_message_size = 1024\n");
    let mut sub = hub.subscriber(Shm, "slow/a");
    let n = 3_000u32;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let m = sub.recv(WAIT).unwrap().expect("message");
            assert_eq!(m.payload[..4], i.to_le_bytes());
        }
    });
    let mut p = hub.client_via(Shm);
    for i in 0..n {
        p.publish(
            "slow/a",
            &[i.to_le_bytes().as_slice(), &[1u8; 200]].concat(),
        )
        .unwrap();
    }
    p.flush().unwrap();
    reader.join().unwrap();
}

#[test]
fn a_ring_reader_stuck_past_the_block_timeout_is_disconnected() {
    let hub = Hub::start_with(
        "[hub]\nmax_message_size = 1024\nblock_timeout_ms = 300\n[shm]\nchannel_ring_size = 4096\n",
    );
    let mut stuck = hub.subscriber(Shm, "stuck/a");
    let mut live = hub.subscriber(Shm, "stuck/a");
    let n = 500u32;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let m = live.recv(WAIT).unwrap().expect("message");
            assert_eq!(m.payload[..4], i.to_le_bytes());
        }
    });
    let mut p = hub.client_via(Shm);
    for i in 0..n {
        p.publish(
            "stuck/a",
            &[i.to_le_bytes().as_slice(), &[2u8; 100]].concat(),
        )
        .unwrap();
    }
    p.flush().unwrap();
    reader.join().unwrap();
    wait_for(
        || hub.log().contains("not reading channel ring 'stuck/a'"),
        "the stuck reader is disconnected with a reason",
    );
    // It still gets what it had, then learns why it was cut off.
    let mut err = None;
    for _ in 0..n + 1 {
        match stuck.next_event(WAIT) {
            Ok(Some(Event::Message(_))) => continue,
            Ok(Some(Event::Error { text, .. })) => {
                err = Some(text);
                break;
            }
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(err.is_some_and(|t| t.contains("block_timeout_ms")));
}

#[test]
fn a_writer_that_leaves_holding_the_ring_lock_does_not_wedge_the_channel() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Shm, "wedge/a");
    let mut rogue = hub.client_via(Shm);
    rogue.publish("wedge/a", b"first").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"first");
    let mut p = hub.client_via(Shm);
    p.publish("wedge/a", b"warm-up").unwrap();
    // The rogue takes the lock as if it died in the middle of a message.
    assert!(rogue.hold_ring_lock_for_test("wedge/a"));
    let handle = std::thread::spawn(move || {
        for i in 0..10u32 {
            p.publish("wedge/a", &i.to_le_bytes()).unwrap();
        }
        p
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !handle.is_finished(),
        "the publisher must wait while the lock is held"
    );
    drop(rogue); // its control connection closes: the hub breaks the lock
    let _p = handle.join().unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"warm-up");
    for i in 0..10u32 {
        assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, i.to_le_bytes());
    }
    wait_for(
        || hub.log().contains("holding the channel ring's lock"),
        "the hub logs the broken lock",
    );
}

#[test]
fn rings_can_be_turned_off_on_either_side() {
    let hub = Hub::start_with("[shm]\nchannel_rings = false\n");
    let mut sub = hub.subscriber(Shm, "off/a");
    let mut p = hub.client_via(Shm);
    p.publish("off/a", b"x").unwrap();
    p.flush().unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"x");
    let mut ctl = hub.client();
    assert_eq!(
        stats_of(&mut ctl, p.id()).messages_in,
        1,
        "relayed by the hub"
    );
    assert!(!hub.log().contains("channel ring created"));

    let hub = Hub::start();
    let mut sub = hub.client_via(Shm);
    sub.set_channel_rings(false);
    sub.subscribe("off/b").unwrap();
    let mut p = hub.client_via(Shm);
    p.set_channel_rings(false);
    p.publish("off/b", b"y").unwrap();
    p.flush().unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"y");
    assert!(!hub.log().contains("channel ring created"));
}

#[test]
fn the_ring_goes_when_its_last_participant_leaves() {
    let hub = Hub::start();
    // Settle first: the harness's readiness probe and what a first shm
    // client allocates for the hub's life.
    drop(hub.client_via(Shm));
    let mut probe = hub.client();
    wait_for(
        || probe.stats().unwrap().client_count == 1,
        "warm-up clients gone",
    );
    let fds_before = hub.open_fds();
    {
        let mut sub = hub.subscriber(Shm, "gone/a");
        let mut p = hub.client_via(Shm);
        p.publish("gone/a", b"x").unwrap();
        assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"x");
        sub.unsubscribe("gone/a").unwrap();
        p.publish("gone/a", b"unread").unwrap();
        p.flush().unwrap();
        assert!(sub
            .recv(Some(Duration::from_millis(200)))
            .unwrap()
            .is_none());
    }
    wait_for(
        || hub.log().contains("channel ring removed"),
        "the ring is removed",
    );
    wait_for(
        || hub.open_fds() == fds_before,
        "descriptors back to before",
    );
}

/// Several processes at once on one ring: four publisher processes and two
/// subscriber processes (`ipchubctl` on shm), every message to both, each
/// publisher's in order; then publishers killed with SIGKILL mid-stream
/// (possibly holding the ring's lock) must not wedge the channel.
#[test]
fn publisher_and_subscriber_processes_hammer_one_ring_and_survive_kill_9() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    const WRITERS: usize = 4;
    const PER: usize = 5_000;
    let hub = Hub::start();
    let subs: Vec<_> = (0..2)
        .map(|_| {
            hub.ctl()
                .args(["sub", "-t", "shm", "-c", "hammer/a", "-n"])
                .arg((WRITERS * PER + 1).to_string())
                .arg("--idle-timeout")
                .arg("20")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    hub.wait_subscribers("hammer/a", 2);
    let pubs: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut child = hub
                .ctl()
                .args(["pub", "-t", "shm", "-c", "hammer/a", "--no-confirm"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                for i in 0..PER {
                    writeln!(stdin, "{w} {i}").unwrap();
                }
            });
            child
        })
        .collect();
    for mut p in pubs {
        assert!(p.wait_within(LIMIT).unwrap().success());
    }
    // Publishers killed in the middle of a stream.
    for _ in 0..5 {
        let mut killed = hub
            .ctl()
            .args(["pub", "-t", "shm", "-c", "hammer/b", "--no-confirm"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = killed.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            while writeln!(stdin, "spam spam spam spam spam spam spam spam").is_ok() {}
        });
        std::thread::sleep(Duration::from_millis(60));
        killed.kill().unwrap();
        killed.wait_within(LIMIT).unwrap();
        feeder.join().unwrap();
    }
    let st = hub
        .ctl()
        .args(["pub", "-t", "shm", "-c", "hammer/a", "done"])
        .output_within(LIMIT)
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    for s in subs {
        let out = s.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut next = [0usize; WRITERS];
        let mut lines = BufReader::new(&out.stdout[..]).lines();
        for _ in 0..WRITERS * PER {
            let line = lines.next().expect("a line").unwrap();
            let msg = line.strip_prefix("[hammer/a] ").unwrap();
            let (w, i) = msg.split_once(' ').unwrap();
            let (w, i): (usize, usize) = (w.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[w], "publisher {w} out of order");
            next[w] += 1;
        }
        assert_eq!(lines.next().unwrap().unwrap(), "[hammer/a] done");
    }
}

/// A descriptor handed out cannot be taken back: when a reload refuses a
/// participant, the ring is retired, everyone on it is told why, and the
/// refused client cannot get a new one.
#[test]
fn a_reload_that_revokes_access_retires_the_ring() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Shm, "sec/a");
    let mut p = hub.client_via(Shm);
    p.publish("sec/a", b"before").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"before");
    std::fs::write(
        &hub.config,
        "[[access.rule]]\npattern = \"sec/#\"\npublish = [\"*\"]\nsubscribe = [\"uid:4242\"]\n[dbus]\nenabled = false\n",
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
    let why = loop {
        match sub.next_event(WAIT) {
            Ok(Some(Event::Error { text, .. })) => break text,
            Err(e) => break e.to_string(),
            Ok(other) => assert!(other.is_some(), "no word from the hub"),
        }
    };
    assert!(why.contains("revoked"), "{why}");
    wait_for(
        || hub.log().contains("channel ring retired"),
        "the ring is retired",
    );
    // (The publisher was refused too: a ring needs both read and write.)
    drop(p);
    // The refused reader cannot come back; the publisher can.
    let err = hub.client_via(Shm).subscribe("sec/a").unwrap_err();
    assert!(err.to_string().contains("may not subscribe"), "{err}");
    let mut p2 = hub.client_via(Shm);
    p2.publish_confirmed("sec/a", b"after").unwrap();
}

/// A participant that writes garbage into a ring harms that channel's ring
/// and nothing else: the hub detects it and retires the ring (it cannot
/// tell who wrote the garbage, so nobody is disconnected), and the channel
/// carries on for everyone.
#[test]
fn garbage_in_a_ring_retires_it_and_the_channel_carries_on() {
    let hub = Hub::start();
    let mut relayed = hub.subscriber(Socket, "evil/a");
    let mut bystander = hub.subscriber(Socket, "calm/a");
    let mut rogue = hub.client_via(Shm);
    rogue.publish("evil/a", b"fine").unwrap();
    assert_eq!(relayed.recv(WAIT).unwrap().unwrap().payload, b"fine");
    assert!(rogue.scribble_ring_for_test("evil/a"));
    rogue.publish("evil/a", b"wake the hub").unwrap();
    wait_for(
        || hub.log().contains("channel ring retired"),
        "the hub retires the corrupt ring",
    );
    // The channel works again (a fresh ring), and nobody else noticed.
    let mut p = hub.client_via(Shm);
    p.publish("evil/a", b"after").unwrap();
    p.flush().unwrap();
    let got: Vec<Vec<u8>> = std::iter::from_fn(|| {
        relayed
            .recv(Some(Duration::from_millis(500)))
            .unwrap()
            .map(|m| m.payload)
    })
    .collect();
    assert_eq!(
        got.last().map(Vec::as_slice),
        Some(&b"after"[..]),
        "{got:?}"
    );
    let mut q = hub.client();
    q.publish("calm/a", b"still here").unwrap();
    q.flush().unwrap();
    assert_eq!(
        bystander.recv(WAIT).unwrap().unwrap().payload,
        b"still here"
    );
}

/// A participant that keeps the ring's write lock (stopped, or hostile)
/// stalls the channel for the block timeout at most: the lock word is
/// anyone's to write, so the hub blames nobody and retires the ring; the
/// publishers go on (through the hub, then a fresh ring) and the reader
/// still gets everything, what the old ring held first.
#[test]
fn a_writer_that_keeps_the_ring_lock_stalls_the_channel_for_the_timeout_at_most() {
    let hub = Hub::start_with("[hub]\nblock_timeout_ms = 300\n");
    let mut sub = hub.subscriber(Shm, "stall/a");
    let mut rogue = hub.client_via(Shm);
    rogue.publish("stall/a", b"first").unwrap();
    let mut p = hub.client_via(Shm);
    p.publish("stall/a", b"second").unwrap();
    assert!(rogue.hold_ring_lock_for_test("stall/a"));
    let handle = std::thread::spawn(move || {
        p.publish("stall/a", b"third").unwrap();
        p.flush().unwrap();
        p
    });
    let _p = handle.join().unwrap();
    for want in [&b"first"[..], b"second", b"third"] {
        assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, want);
    }
    wait_for(
        || {
            hub.log()
                .contains("write lock was held for more than 300 ms")
        },
        "the ring is retired with a reason",
    );
    assert!(!hub.log().contains("SLOW_CONSUMER"));
    drop(rogue);
}

/// A client that reads the channel it publishes on, publishing faster
/// than it reads: under `block` its own cursor is the slow one, so it reads
/// while it waits rather than wait for itself.
#[test]
fn a_client_reading_its_own_channel_does_not_block_on_itself() {
    // The default 4 MiB ring: more than one read's budget must be freed
    // before a writer is let go.
    let hub = Hub::start_with("[hub]\nblock_timeout_ms = 2000\n");
    let mut c = hub.subscriber(Shm, "self/a");
    let n = 12_000u32;
    for i in 0..n {
        c.publish(
            "self/a",
            &[i.to_le_bytes().as_slice(), &[3u8; 1020]].concat(),
        )
        .unwrap();
    }
    for i in 0..n {
        match c.next_event(WAIT).unwrap() {
            Some(Event::Message(m)) => assert_eq!(m.payload[..4], i.to_le_bytes()),
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(!hub.log().contains("not reading channel ring"));
}
