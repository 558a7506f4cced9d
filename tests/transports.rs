//! The transport conformance suite: every transport keeps the contract of
//! `crates/os/src/transport/mod.rs`, and every pair of transports meets through the
//! same channels. Adding a transport is one line in `TRANSPORTS`.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::time::Duration;

use common::{wait_for, Hub};
use ipchub::client::{ClientError, Event, PublishOptions};
use ipchub::hub::TransportKind::{self, *};

const TRANSPORTS: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue, Shm];
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Every byte value, NUL included, in a payload that fits every transport.
fn all_bytes() -> Vec<u8> {
    (0..=255u8).chain((0..=255u8).rev()).collect()
}

#[test]
fn every_pair_of_transports_delivers_in_order_with_counts_and_binary_intact() {
    let hub = Hub::start();
    for &from in TRANSPORTS {
        for &to in TRANSPORTS {
            let chan = format!("matrix/{}/{}", from.name(), to.name());
            let mut sub = hub.subscriber(to, &chan);
            let mut publisher = hub.client_via(from);
            for i in 0..50u32 {
                let mut payload = i.to_le_bytes().to_vec();
                payload.extend(all_bytes());
                let seq = publisher
                    .publish_with(
                        &chan,
                        &payload,
                        PublishOptions {
                            ack: true,
                            priority: 0,
                        },
                    )
                    .unwrap();
                assert!(seq > 0);
            }
            publisher.flush().unwrap();
            for _ in 0..50 {
                match publisher.next_event(WAIT).unwrap() {
                    Some(Event::Ack { delivered, .. }) => assert_eq!(delivered, 1, "{chan}"),
                    other => panic!("{chan}: {other:?}"),
                }
            }
            for i in 0..50u32 {
                let m = sub
                    .recv(WAIT)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{chan}: message {i} missing"));
                assert_eq!(m.payload[..4], i.to_le_bytes(), "{chan}: order");
                assert_eq!(m.payload[4..], all_bytes()[..], "{chan}: payload bytes");
                assert_eq!(m.origin, publisher.id());
            }
        }
    }
}

#[test]
fn one_channel_with_subscribers_on_every_transport() {
    let hub = Hub::start();
    let mut subs: Vec<_> = TRANSPORTS
        .iter()
        .map(|&t| hub.subscriber(t, "all"))
        .collect();
    for &from in TRANSPORTS {
        let mut p = hub.client_via(from);
        assert_eq!(
            p.publish_confirmed("all", from.name().as_bytes()).unwrap() as usize,
            TRANSPORTS.len()
        );
        for (s, to) in subs.iter_mut().zip(TRANSPORTS) {
            let m = s.recv(WAIT).unwrap().expect("message");
            assert_eq!(
                m.payload,
                from.name().as_bytes(),
                "{} -> {}",
                from.name(),
                to.name()
            );
        }
    }
}

#[test]
fn each_transport_streams_many_messages_in_order() {
    let hub = Hub::start();
    for &t in TRANSPORTS {
        let chan = format!("stream/{}", t.name());
        let mut sub = hub.subscriber(t, &chan);
        let mut p = hub.client_via(t);
        let n = 20_000u32;
        let reader = std::thread::spawn(move || {
            for i in 0..n {
                let m = sub.recv(WAIT).unwrap().expect("message");
                assert_eq!(m.payload, i.to_le_bytes());
            }
        });
        for i in 0..n {
            p.publish(&chan, &i.to_le_bytes()).unwrap();
        }
        p.flush().unwrap();
        reader.join().unwrap();
    }
}

#[test]
fn each_transport_refuses_oversize_messages_clearly() {
    let hub = Hub::start_with("[hub]\nmax_message_size = 4096\n[queue]\nmax_bytes = 100000\n");
    for &t in TRANSPORTS {
        let mut p = hub.client_via(t);
        match p.publish("big", &vec![0u8; 5000]) {
            Err(ClientError::TooLarge {
                len: 5000,
                max: 4096,
            }) => {}
            other => panic!("{}: {other:?}", t.name()),
        }
        assert_eq!(
            p.publish_confirmed("big", &vec![1u8; 4096]).unwrap(),
            0,
            "{}",
            t.name()
        );
    }
}

#[test]
fn each_transport_backs_off_on_a_full_queue_and_loses_nothing() {
    let hub = Hub::start_with(
        "[hub]\nmax_message_size = 4096\n[queue]\nmax_messages = 8\nmax_bytes = 100000\n",
    );
    for &t in TRANSPORTS {
        let chan = format!("full/{}", t.name());
        let mut sub = hub.subscriber(t, &chan);
        let mut p = hub.client_via(t);
        // The subscriber starts late, so the hub must hold the publisher
        // back (the queue takes 8) and then let it go on.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            for i in 0..500u32 {
                assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, i.to_le_bytes());
            }
        });
        for i in 0..500u32 {
            p.publish(&chan, &i.to_le_bytes()).unwrap();
        }
        p.flush().unwrap();
        reader.join().unwrap_or_else(|_| panic!("{}", t.name()));
        assert_eq!(p.stats().unwrap().totals.dropped, 0);
    }
}

#[test]
fn closing_a_client_ends_its_subscriptions_on_every_transport() {
    let hub = Hub::start();
    for &t in TRANSPORTS {
        let chan = format!("close/{}", t.name());
        let sub = hub.subscriber(t, &chan);
        let mut p = hub.client();
        assert_eq!(p.publish_confirmed(&chan, b"x").unwrap(), 1);
        drop(sub);
        wait_for(
            || p.publish_confirmed(&chan, b"y").unwrap() == 0,
            "subscription to end",
        );
    }
}

fn mqueue_mounted() -> bool {
    if !std::path::Path::new("/dev/mqueue").exists() {
        let _ = std::fs::create_dir_all("/dev/mqueue");
    }
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/dev/mqueue"));
    mounted
        || std::process::Command::new("mount")
            .args(["-t", "mqueue", "mqueue", "/dev/mqueue"])
            .status_within(LIMIT)
            .is_ok_and(|s| s.success())
}

#[test]
fn a_clients_fifos_and_queues_vanish_when_it_exits_or_is_killed() {
    assert!(
        mqueue_mounted(),
        "the mqueue filesystem is needed to list queues"
    );
    let hub = Hub::start();
    // A message queue client makes its own queues and unlinks them at
    // once: they are never in the namespace, and vanish with their last
    // descriptor.
    let c = hub.subscriber(Mqueue, "x");
    assert!(hub.ipc_objects().is_empty(), "{:?}", hub.ipc_objects());
    drop(c);
    let c = hub.subscriber(Fifo, "x");
    assert!(!hub.ipc_objects().is_empty(), "fifo created objects");
    drop(c);
    wait_for(
        || hub.ipc_objects().is_empty(),
        "objects removed after exit",
    );
    // kill -9 of a client process: run ipchubctl sub and kill it.
    let mut child = hub
        .ctl()
        .args(["sub", "-c", "x", "-t", "fifo"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(|| hub.ipc_objects().len() == 2, "the client's objects");
    child.kill().unwrap();
    child.wait_within(LIMIT).unwrap();
    wait_for(
        || hub.ipc_objects().is_empty(),
        "objects removed after kill -9",
    );
}

#[test]
fn sigterm_leaves_nothing_and_a_killed_hub_is_reaped_at_restart() {
    assert!(mqueue_mounted());
    let mut hub = Hub::start();
    let keep: Vec<_> = [Fifo, Mqueue, Pipe]
        .iter()
        .map(|&t| hub.subscriber(t, "x"))
        .collect();
    let pid = hub.pid();
    assert!(hub.stop().success());
    drop(keep);
    let left: Vec<_> = std::fs::read_dir(hub.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter().all(|n| n != "fifo" && n != "ipchub.sock"),
        "{left:?}"
    );
    let prefix = format!("ipchub.{pid}.");
    assert!(!std::fs::read_dir("/dev/mqueue")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix)));

    hub.restart();
    let stale: Vec<_> = [Fifo, Mqueue]
        .iter()
        .map(|&t| hub.subscriber(t, "x"))
        .collect();
    let dead_pid = hub.pid();
    hub.kill9();
    std::mem::forget(stale); // the clients' descriptors stay open: only the hub died
    let dead = format!("ipchub.{dead_pid}.");
    hub.restart();
    assert!(
        !std::fs::read_dir("/dev/mqueue")
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&dead)),
        "queues of the killed hub reaped"
    );
    assert_eq!(
        std::fs::read_dir(hub.dir.path().join("fifo"))
            .unwrap()
            .count(),
        0,
        "FIFOs of the killed hub reaped"
    );
}

#[test]
fn mqueue_priority_reaches_every_subscriber() {
    let hub = Hub::start();
    let mut subs: Vec<_> = TRANSPORTS
        .iter()
        .map(|&t| hub.subscriber(t, "prio"))
        .collect();
    let mut p = hub.client_via(Mqueue);
    p.publish_with(
        "prio",
        b"urgent",
        PublishOptions {
            ack: false,
            priority: 7,
        },
    )
    .unwrap();
    p.flush().unwrap();
    for s in &mut subs {
        let m = s.recv(WAIT).unwrap().unwrap();
        assert_eq!(m.priority, 7);
    }
}

#[test]
fn a_message_bigger_than_the_queues_message_size_is_refused_never_truncated() {
    let hub = Hub::start();
    let mut p = hub.client_via(Mqueue);
    // The hub sizes queues as the kernel allows: find this queue's limit.
    let limit = std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max")
        .unwrap()
        .trim()
        .parse::<usize>()
        .unwrap();
    if limit >= (1 << 20) + 300 {
        return; // the kernel allows queues as big as any message: nothing to refuse
    }
    let big = vec![1u8; limit + 1];
    match p.publish("big", &big) {
        Err(e @ ClientError::TooLargeForTransport { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("message queue") && text.contains("msgsize_max"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The connection is still good.
    assert_eq!(p.publish_confirmed("big", b"small").unwrap(), 0);
    // A subscriber on a message queue is told in-band that it lost a
    // message (MISSED) instead of getting a truncated one when someone else
    // publishes something too big for it; it is not counted as delivered.
    let mut s = hub.subscriber(Mqueue, "big");
    let mut other = hub.client();
    assert_eq!(other.publish_confirmed("big", &big).unwrap(), 0);
    match s.next_event(WAIT).unwrap() {
        Some(Event::Missed(1)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(p.stats().unwrap().totals.dropped, 1, "the loss is counted");
}
