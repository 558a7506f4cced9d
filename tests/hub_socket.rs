//! The hub over UNIX sockets: routing semantics, overflow policies, bad
//! input, and the daemon's life cycle, each against a real `ipchubd`.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::time::Duration;

use common::{error_text, Hub};
use ipchub::client::{ClientError, Event, PublishOptions};
use ipchub::hub::TransportKind::Socket;
use ipchub::wire::{self, ErrorCode, FrameType, ACK_REQUESTED};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn fan_out_reaches_three_subscribers_and_counts_them() {
    let hub = Hub::start();
    let mut subs: Vec<_> = (0..3).map(|_| hub.subscriber(Socket, "weather")).collect();
    let mut publisher = hub.client();
    assert_eq!(
        publisher
            .publish_confirmed("weather", b"{\"temp\": 72}")
            .unwrap(),
        3
    );
    for s in &mut subs {
        let m = s.recv(WAIT).unwrap().expect("message");
        assert_eq!(m.channel, "weather");
        assert_eq!(m.payload, b"{\"temp\": 72}");
        assert_eq!(m.origin, publisher.id());
    }
}

#[test]
fn wildcards_select_channels() {
    let hub = Hub::start();
    let mut plus = hub.subscriber(Socket, "sensors/+/temp");
    let mut hash = hub.subscriber(Socket, "sensors/#");
    let mut p = hub.client();
    assert_eq!(
        p.publish_confirmed("sensors/kitchen/temp", b"1").unwrap(),
        2
    );
    assert_eq!(
        p.publish_confirmed("sensors/kitchen/humidity", b"2")
            .unwrap(),
        1
    );
    assert_eq!(p.publish_confirmed("other", b"3").unwrap(), 0);
    assert_eq!(plus.recv(WAIT).unwrap().unwrap().payload, b"1");
    assert_eq!(hash.recv(WAIT).unwrap().unwrap().payload, b"1");
    assert_eq!(hash.recv(WAIT).unwrap().unwrap().payload, b"2");
    assert_eq!(plus.recv(Some(Duration::from_millis(100))).unwrap(), None);
}

#[test]
fn hundred_thousand_messages_arrive_in_order_with_pipelined_acks() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Socket, "seq");
    let mut p = hub.client();
    let n = 100_000u64;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let m = sub.recv(WAIT).unwrap().expect("message");
            assert_eq!(m.payload, i.to_le_bytes(), "message {i} out of order");
        }
    });
    // Every publish asks for an ACK, yet none waits for one: confirmations
    // are pipelined and collected afterwards.
    let mut seqs = Vec::with_capacity(n as usize);
    for i in 0..n {
        seqs.push(
            p.publish_with(
                "seq",
                &i.to_le_bytes(),
                PublishOptions {
                    ack: true,
                    priority: 0,
                },
            )
            .unwrap(),
        );
    }
    p.flush().unwrap();
    let mut acked = 0;
    while acked < n {
        match p.next_event(WAIT).unwrap().expect("ack") {
            Event::Ack { seq, delivered } => {
                assert_eq!(seq, seqs[acked as usize], "acks arrive in publish order");
                assert_eq!(delivered, 1);
                acked += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    reader.join().unwrap();
}

#[test]
fn block_policy_slows_the_publisher_and_loses_nothing() {
    let hub =
        Hub::start_with("[queue]\nmax_messages = 16\nmax_bytes = 2000000\noverflow = \"block\"\n");
    let mut sub = hub.subscriber(Socket, "slow");
    let mut p = hub.client();
    let n = 2_000u32;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let m = sub.recv(WAIT).unwrap().expect("message");
            assert_eq!(m.payload, i.to_le_bytes());
        }
    });
    for i in 0..n {
        p.publish("slow", &i.to_le_bytes()).unwrap();
    }
    p.flush().unwrap();
    reader.join().unwrap();
    let st = p.stats().unwrap();
    assert_eq!(st.totals.dropped, 0);
    assert_eq!(st.totals.messages_out, n as u64);
}

#[test]
fn drop_oldest_gives_a_missed_notice_and_counts() {
    let hub = Hub::start_with(
        "[queue]\nmax_messages = 10\nmax_bytes = 2000000\noverflow = \"drop-oldest\"\n",
    );
    // A raw subscriber that does not read while the burst is sent.
    let mut raw = hub.raw();
    raw.send_frame(FrameType::Subscribe, 0, "burst", b"", 1);
    assert_eq!(raw.read_frame().unwrap().0, FrameType::Ack);
    raw.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Shrink the socket buffer so the queue in the hub, not the kernel, fills.
    nix::sys::socket::setsockopt(&raw.sock, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    let mut p = hub.client();
    let payload = vec![7u8; 1000];
    for _ in 0..2000 {
        p.publish("burst", &payload).unwrap();
    }
    assert_eq!(p.publish_confirmed("burst", &payload).unwrap(), 1);
    let mut data = 0u64;
    let mut missed = 0u64;
    while data + missed < 2001 {
        let f = raw.read_frame().expect("frame");
        match f.0 {
            FrameType::Data => data += 1,
            FrameType::Missed => missed += u64::from_le_bytes(f.3[..8].try_into().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(missed > 0, "the burst must overflow a 10-message queue");
    let st = p.stats().unwrap();
    assert_eq!(st.totals.dropped, missed, "every loss counted");
    assert_eq!(
        st.channels
            .iter()
            .find(|c| c.name == "burst")
            .unwrap()
            .dropped,
        missed
    );
}

#[test]
fn disconnect_policy_names_the_limit() {
    let hub = Hub::start_with(
        "[queue]\nmax_messages = 4\nmax_bytes = 2000000\noverflow = \"disconnect\"\n",
    );
    let mut raw = hub.raw();
    nix::sys::socket::setsockopt(&raw.sock, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    raw.send_frame(FrameType::Subscribe, 0, "c", b"", 1);
    assert_eq!(raw.read_frame().unwrap().0, FrameType::Ack);
    let mut p = hub.client();
    for _ in 0..500 {
        p.publish("c", &[1u8; 1000]).unwrap();
    }
    p.flush().unwrap();
    let frames = raw.read_to_end();
    let (code, text) = error_text(&frames).expect("an ERROR before the close");
    assert_eq!(code, ErrorCode::SlowConsumer as u16);
    assert!(text.contains("queue.max_messages=4"), "{text}");
    assert!(
        hub.log().contains("overflow = \\\"disconnect\\\"") || hub.log().contains("disconnect")
    );
    // The publisher and the hub carry on.
    assert_eq!(p.publish_confirmed("c", b"x").unwrap(), 0);
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_after_the_block_timeout() {
    let hub = Hub::start_with(
        "[hub]\nblock_timeout_ms = 300\n[queue]\nmax_messages = 4\nmax_bytes = 2000000\n",
    );
    let mut raw = hub.raw();
    nix::sys::socket::setsockopt(&raw.sock, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    raw.send_frame(FrameType::Subscribe, 0, "c", b"", 1);
    assert_eq!(raw.read_frame().unwrap().0, FrameType::Ack);
    let mut p = hub.client();
    for _ in 0..200 {
        p.publish("c", &[1u8; 1000]).unwrap();
    }
    // Blocked until the stuck subscriber is cut off, then it goes through.
    assert_eq!(p.publish_confirmed("c", b"last").unwrap(), 0);
    let frames = raw.read_to_end();
    let (code, text) = error_text(&frames).expect("ERROR naming the reason");
    assert_eq!(code, ErrorCode::SlowConsumer as u16);
    assert!(text.contains("block_timeout_ms"), "{text}");
    assert!(hub.log().contains("block_timeout_ms"), "reason logged");
}

#[test]
fn bad_channel_names_are_refused_clearly_and_the_client_goes_on() {
    let hub = Hub::start();
    let mut c = hub.client();
    match c.subscribe("a/#/b") {
        Err(ClientError::BadChannel(e)) => {
            assert!(e.to_string().contains("'#' must be the last level"))
        }
        other => panic!("{other:?}"),
    }
    // The hub itself refuses too (the library checks first, so use raw frames).
    let mut raw = hub.raw();
    raw.send_frame(FrameType::Publish, ACK_REQUESTED, "bad name", b"x", 5);
    let f = raw.read_frame().unwrap();
    assert_eq!((f.0, f.1), (FrameType::Error, 5));
    assert!(String::from_utf8_lossy(&f.3).contains("contains ' '"));
    raw.send_frame(FrameType::Publish, ACK_REQUESTED, "good", b"x", 6);
    assert_eq!(raw.read_frame().unwrap().0, FrameType::Ack);
}

/// The client remembers the last channel it validated for publishing
/// (issue #15: validation was a third of a publisher's CPU); every other
/// name is still checked, before and after the remembered one, and one
/// that differs from it only in its tail is not taken for it.
#[test]
fn publishing_checks_each_new_channel_though_it_remembers_the_last() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Socket, "valid/#");
    let mut p = hub.client();
    for bad in [
        "valid/+",
        "valid/a/",
        "valid/a/#",
        "valid/..",
        "",
        "valid/a b",
    ] {
        p.publish("valid/a", b"ok").unwrap();
        match p.publish(bad, b"no") {
            Err(ClientError::BadChannel(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
        p.publish("valid/a", b"ok").unwrap();
    }
    p.publish_confirmed("valid/b", b"end").unwrap();
    for _ in 0..12 {
        let m = sub.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
        assert_eq!(
            (m.channel.as_str(), m.payload.as_slice()),
            ("valid/a", &b"ok"[..])
        );
    }
    let m = sub.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert_eq!(m.channel, "valid/b");
}

/// Each malformed input gets an ERROR naming it and a disconnect; a
/// bystander subscriber keeps receiving throughout.
#[test]
fn malformed_input_disconnects_only_the_offender() {
    let hub = Hub::start_with("[hub]\nmax_message_size = 1000\n[queue]\nmax_bytes = 100000\n");
    let mut bystander = hub.subscriber(Socket, "live");
    let mut p = hub.client();

    let mut frame = Vec::new();
    wire::encode(&mut frame, FrameType::Publish, 0, 0, "live", b"x", 0, 1);
    let mut cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = Vec::new();
    cases.push((
        "garbage",
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ErrorCode::Malformed,
        "bad magic",
    ));
    let mut t = frame.clone();
    t[3] = 99;
    cases.push((
        "unknown type",
        t,
        ErrorCode::UnknownType,
        "unknown frame type 99",
    ));
    let mut t = frame.clone();
    t[8..12].copy_from_slice(&1_000_000u32.to_le_bytes());
    cases.push((
        "oversize",
        t[..24].to_vec(),
        ErrorCode::TooLarge,
        "max_message_size",
    ));
    let mut t = frame.clone();
    t[2] = 7;
    cases.push(("version", t, ErrorCode::UnsupportedVersion, "version 7"));
    let mut t = Vec::new();
    wire::encode(&mut t, FrameType::Data, 0, 0, "live", b"x", 0, 1);
    cases.push((
        "hub-only type",
        t,
        ErrorCode::UnknownType,
        "sent by the hub",
    ));

    for (name, bytes, code, needle) in cases {
        let mut raw = hub.raw();
        raw.send(&bytes);
        let frames = raw.read_to_end();
        let (got, text) = error_text(&frames).unwrap_or_else(|| panic!("{name}: no ERROR"));
        assert_eq!(got, code as u16, "{name}: {text}");
        assert!(text.contains(needle), "{name}: {text}");
        assert_eq!(
            p.publish_confirmed("live", name.as_bytes()).unwrap(),
            1,
            "{name}"
        );
        assert_eq!(
            bystander.recv(WAIT).unwrap().unwrap().payload,
            name.as_bytes()
        );
    }
    let log = hub.log();
    assert!(
        log.contains("malformed input")
            && log.contains("client_pid=")
            && log.contains("client_uid="),
        "{log}"
    );
}

#[test]
fn a_client_that_dies_mid_frame_is_logged_and_forgotten() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Socket, "c");
    {
        let mut raw = hub.raw();
        let mut f = Vec::new();
        wire::encode(&mut f, FrameType::Publish, 0, 0, "c", &[0u8; 500], 0, 1);
        raw.send(&f[..100]);
    }
    common::wait_for(|| hub.log().contains("mid-frame"), "mid-frame log line");
    let mut p = hub.client();
    assert_eq!(p.publish_confirmed("c", b"after").unwrap(), 1);
    assert_eq!(
        sub.recv(WAIT).unwrap().unwrap().payload,
        b"after",
        "the half frame was not delivered"
    );
}

#[test]
fn handshake_must_come_first_and_name_a_known_transport() {
    let hub = Hub::start();
    let mut raw = common::Raw::connect(&hub.socket);
    raw.send_frame(FrameType::Publish, 0, "c", b"x", 1);
    let (code, text) = error_text(&raw.read_to_end()).unwrap();
    assert_eq!(code, ErrorCode::BadHandshake as u16);
    assert!(text.contains("expected HELLO"), "{text}");
    let mut raw = common::Raw::connect(&hub.socket);
    raw.send_frame(
        FrameType::Hello,
        0,
        "",
        b"version=1\ntransport=carrier-pigeon\n",
        1,
    );
    let (code, text) = error_text(&raw.read_to_end()).unwrap();
    assert_eq!(code, ErrorCode::UnknownTransport as u16);
    assert!(text.contains("carrier-pigeon"), "{text}");
}

#[test]
fn sigterm_says_goodbye_removes_the_socket_and_exits_zero() {
    let mut hub = Hub::start();
    // Fail fast (reconnecting is the default: tests/reconnect.rs).
    let mut sub = ipchub::client::Client::connect(&ipchub::client::Options {
        reconnect: ipchub::client::Reconnect::off(),
        ..hub.options(Socket)
    })
    .unwrap();
    sub.subscribe("c").unwrap();
    let status = hub.stop();
    assert!(status.success(), "{status:?}");
    match sub.recv(WAIT) {
        Err(ClientError::Closed(reason)) => assert!(reason.contains("shutting down"), "{reason}"),
        other => panic!("expected BYE, got {other:?}"),
    }
    assert!(!hub.socket.exists(), "bound socket removed at exit");
}

#[test]
fn a_second_hub_refuses_and_a_stale_socket_is_replaced() {
    let mut hub = Hub::start();
    let out = std::process::Command::new(common::IPCHUBD)
        .arg("--socket")
        .arg(&hub.socket)
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(hub.client().publish_confirmed("x", b"still alive").is_ok());
    hub.kill9();
    assert!(hub.socket.exists(), "a killed hub leaves its socket file");
    hub.restart();
    assert_eq!(hub.client().publish_confirmed("x", b"y").unwrap(), 0);
}

#[test]
fn stats_show_channels_and_clients() {
    let hub = Hub::start();
    let _s = hub.subscriber(Socket, "weather");
    let mut p = hub.client();
    p.publish_confirmed("weather", b"12345").unwrap();
    let st = p.stats().unwrap();
    assert_eq!(st.client_count, 2);
    assert_eq!(st.totals.messages_in, 1);
    assert_eq!(st.totals.bytes_in, 5);
    let ch = st.channels.iter().find(|c| c.name == "weather").unwrap();
    assert_eq!((ch.subscribers, ch.published, ch.delivered), (1, 1, 1));
    let me = st.clients.iter().find(|c| c.id == p.id()).unwrap();
    assert_eq!(me.pid, std::process::id() as i32);
    assert_eq!(me.transport, "socket");
}

/// Small publishes are coalesced, but never held longer than the flush
/// delay while the publisher goes on publishing, even without a flush.
#[test]
fn buffered_publishes_leave_within_the_flush_delay_without_a_flush() {
    let hub = Hub::start();
    let mut sub = hub.subscriber(Socket, "delay/a");
    let mut p = hub.client();
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let publisher = std::thread::spawn(move || {
        for i in 0..100u32 {
            p.publish("delay/a", &i.to_le_bytes()).unwrap();
            let _ = tx.send(i);
            std::thread::sleep(Duration::from_millis(3));
        }
        p // dropped by the test only after the check below
    });
    let m = sub
        .recv(Some(Duration::from_secs(10)))
        .unwrap()
        .expect("message");
    assert_eq!(m.payload, 0u32.to_le_bytes());
    let published: Vec<u32> = rx.try_iter().collect();
    assert!(
        published.len() < 50,
        "message 0 waited for {} more publishes (about {} ms)",
        published.len(),
        published.len() * 3
    );
    let mut p = publisher.join().unwrap();
    p.flush().unwrap();
    for i in 1..100u32 {
        assert_eq!(
            sub.recv(Some(Duration::from_secs(10)))
                .unwrap()
                .unwrap()
                .payload,
            i.to_le_bytes()
        );
    }
    // With no delay at all, each publish leaves at once.
    p.set_flush_delay(Duration::ZERO);
    p.publish("delay/a", b"now").unwrap();
    assert_eq!(
        sub.recv(Some(Duration::from_secs(10)))
            .unwrap()
            .unwrap()
            .payload,
        b"now"
    );
}

/// The receive paths that reuse buffers (`recv_batch`, `recv_ref`,
/// `recycle`): every message arrives whole and only its own bytes, whether
/// the one before it was longer or shorter, on another channel, relayed
/// (socket) or read from a channel ring (shm).
#[test]
fn reused_receive_buffers_hold_exactly_each_message() {
    use ipchub::hub::TransportKind::Shm;
    let hub = Hub::start();
    const N: u32 = 4000;
    let body = |i: u32| -> Vec<u8> {
        let len = (i as usize * 37) % 3001;
        (0..len).map(|k| (i as usize + k) as u8).collect()
    };
    let chan = |i: u32| {
        if i.is_multiple_of(3) {
            "reuse/a"
        } else {
            "reuse/bbbb"
        }
    };
    for t in [Socket, Shm] {
        let mut sub = hub.client_via(t);
        sub.subscribe("reuse/a").unwrap();
        sub.subscribe("reuse/bbbb").unwrap();
        let mut p = hub.client_via(t);
        let publisher = std::thread::spawn(move || {
            for i in 0..N {
                p.publish(chan(i), &body(i)).unwrap();
            }
            p.flush().unwrap();
            p
        });
        // Order holds per channel (on shm each channel has its own ring).
        let mut next = [0u32, 1u32];
        let got = std::cell::Cell::new(0u32);
        let mut check = |channel: &str, payload: &[u8]| {
            let k = usize::from(channel != "reuse/a");
            let i = next[k];
            assert_eq!(channel, chan(i), "{t:?} message {i}");
            assert_eq!(payload, body(i).as_slice(), "{t:?} message {i}");
            next[k] += 1;
            while chan(next[k]) != channel {
                next[k] += 1;
            }
            got.set(got.get() + 1);
        };
        while got.get() < N / 2 {
            let n = sub
                .recv_batch(Some(Duration::from_secs(10)), |m| {
                    check(&m.channel, &m.payload)
                })
                .unwrap();
            assert!(n > 0, "{t:?}: nothing within 10 s after {}", got.get());
        }
        while got.get() < N {
            let m = sub
                .recv_ref(Some(Duration::from_secs(10)))
                .unwrap()
                .expect("a message within 10 s");
            let (c, p) = (m.channel.clone(), m.payload.clone());
            check(&c, &p);
        }
        let _p = publisher.join().unwrap();
        assert!(sub
            .recv(Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
    }
}
