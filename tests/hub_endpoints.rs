//! Endpoints the hub makes itself: spawned children wired through pipes and
//! per-channel publish FIFOs; and resources that must not outlive a client.

mod common;

use std::time::Duration;

use common::{wait_for, Hub};
use ipchub::client::{Event, PublishOptions};
use ipchub::hub::TransportKind::{self, *};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn a_spawned_child_reads_a_channel_and_publishes_its_output() {
    let hub = Hub::start_with(
        "[[spawn]]\nname = \"upper\"\ncommand = [\"stdbuf\", \"-oL\", \"tr\", \"a-z\", \"A-Z\"]\nstdin_channel = \"text/in\"\nstdout_channel = \"text/out\"\n",
    );
    let mut out = hub.subscriber(Shm, "text/out");
    let mut p = hub.client();
    wait_for(
        || p.stats().unwrap().clients.iter().any(|c| c.name == "upper"),
        "the child to be wired",
    );
    assert_eq!(p.publish_confirmed("text/in", b"hello child").unwrap(), 1);
    assert_eq!(out.recv(WAIT).unwrap().unwrap().payload, b"HELLO CHILD");
    let log = hub.log();
    assert!(log.contains("started") && log.contains("upper"), "{log}");
}

#[test]
fn a_child_that_exits_is_logged_and_restarted() {
    let hub = Hub::start_with(
        "[[spawn]]\nname = \"once\"\ncommand = [\"sh\", \"-c\", \"echo tick; exit 3\"]\nstdout_channel = \"ticks\"\nrestart = \"on-failure\"\nrestart_delay_ms = 50\n",
    );
    let mut s = hub.subscriber(Socket, "ticks");
    // Each run prints one tick and fails, so it is restarted again and again.
    for _ in 0..2 {
        assert_eq!(s.recv(WAIT).unwrap().unwrap().payload, b"tick");
    }
    wait_for(
        || hub.log().contains("exit status: 3"),
        "the exit to be logged",
    );
    assert!(hub.log().contains("restarting"));
}

#[test]
fn publish_fifo_lines_become_messages() {
    let hub = Hub::start_with("[fifo]\npublish_channels = [\"weather\", \"sensors/kitchen\"]\n");
    let mut s = hub.subscriber(Mqueue, "#");
    let path = hub.dir.path().join("pub/weather");
    wait_for(|| path.exists(), "the publish FIFO");
    std::fs::write(&path, "{\"temp\": 72}\nsecond line\n").unwrap();
    let nested = hub.dir.path().join("pub/sensors/kitchen");
    std::fs::write(&nested, "no newline at the end").unwrap();
    let mut got: Vec<(String, Vec<u8>)> = (0..2)
        .map(|_| {
            s.recv(WAIT)
                .unwrap()
                .map(|m| (m.channel, m.payload))
                .unwrap()
        })
        .collect();
    assert_eq!(got[0], ("weather".into(), b"{\"temp\": 72}".to_vec()));
    assert_eq!(got[1], ("weather".into(), b"second line".to_vec()));
    // The partial line is published when... the writer closes; the hub
    // holds the FIFO open, so a line needs its newline: nothing arrives yet.
    assert!(s.recv(Some(Duration::from_millis(200))).unwrap().is_none());
    std::fs::write(&nested, "\n").unwrap();
    got.push(
        s.recv(WAIT)
            .unwrap()
            .map(|m| (m.channel, m.payload))
            .unwrap(),
    );
    assert_eq!(
        got[2],
        ("sensors/kitchen".into(), b"no newline at the end".to_vec())
    );
}

#[test]
fn publish_fifos_are_removed_at_shutdown() {
    let mut hub = Hub::start_with("[fifo]\npublish_channels = [\"a/b\"]\n");
    wait_for(
        || hub.dir.path().join("pub/a/b").exists(),
        "the publish FIFO",
    );
    assert!(hub.stop().success());
    assert!(!hub.dir.path().join("pub").exists());
}

#[test]
fn connect_disconnect_cycles_leave_no_descriptor_behind_on_any_transport() {
    let hub = Hub::start();
    // Warm up allocations that live for the hub's life (epoll, buffers).
    for &t in TransportKind::ALL.iter() {
        drop(hub.subscriber(t, "warm"));
    }
    let mut probe = hub.client();
    wait_for(
        || probe.stats().unwrap().client_count == 1,
        "warm-up clients gone",
    );
    let base = hub.open_fds();
    for _ in 0..20 {
        for &t in TransportKind::ALL.iter() {
            let mut c = hub.subscriber(t, "cycle");
            c.publish_confirmed("cycle", b"x").unwrap();
        }
    }
    wait_for(
        || probe.stats().unwrap().client_count == 1,
        "all clients gone",
    );
    assert_eq!(hub.open_fds(), base, "descriptors leaked");
}

#[test]
fn a_publisher_that_only_flushes_at_the_end_does_not_deadlock_on_its_acks() {
    // A small queue limit makes the hub stop reading the publisher after a
    // few thousand unread ACKs; the library must read them while it writes.
    let hub = Hub::start_with("[hub]\nmax_message_size = 1024\n[queue]\nmax_bytes = 65536\n");
    for &t in &[Socket, Shm, Pipe] {
        let mut p = hub.client_via(t);
        let n = 30_000u64;
        for i in 0..n {
            p.publish_with(
                "acks",
                &i.to_le_bytes(),
                PublishOptions {
                    ack: true,
                    priority: 0,
                },
            )
            .unwrap();
        }
        p.flush().unwrap();
        let mut acks = 0;
        while acks < n {
            if let Some(Event::Ack { .. }) = p.next_event(WAIT).unwrap() {
                acks += 1;
            }
        }
    }
}

#[test]
fn running_out_of_descriptors_delays_clients_but_loses_none() {
    use std::io::{Read, Write};
    let hub = Hub::start_with_nofile("", 48);
    let mut hello = Vec::new();
    ipchub::wire::encode(
        &mut hello,
        ipchub::wire::FrameType::Hello,
        0,
        0,
        "",
        b"version=1\n",
        0,
        0,
    );
    // More connections than the hub has descriptors for: some wait in the
    // listen backlog while accept fails with EMFILE.
    let mut conns: Vec<std::os::unix::net::UnixStream> = (0..60)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&hub.socket).unwrap();
            s.write_all(&hello).unwrap();
            s
        })
        .collect();
    let welcomed = |s: &mut std::os::unix::net::UnixStream, wait: Duration| {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 4];
        s.read(&mut b).map(|n| n > 0 && b[3] == 2).unwrap_or(false)
    };
    let served: Vec<bool> = conns
        .iter_mut()
        .map(|s| welcomed(s, Duration::from_millis(300)))
        .collect();
    let waiting = served.iter().filter(|s| !**s).count();
    assert!(
        waiting > 0,
        "the limit must bite for this test to mean anything"
    );
    // Free descriptors: the waiting connections are then served too.
    let mut rest: Vec<_> = conns
        .into_iter()
        .zip(served)
        .filter(|(_, s)| !s)
        .map(|(c, _)| c)
        .collect();
    for c in rest.iter_mut() {
        assert!(
            welcomed(c, Duration::from_secs(5)),
            "a connection left in the backlog was never served"
        );
    }
    assert!(
        hub.log().contains("accept failed"),
        "the condition is logged"
    );
}
