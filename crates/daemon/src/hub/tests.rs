//! Routing behaviour, driven frame by frame without any I/O.

use super::*;
use crate::wire::{decode, encode};

fn hub_with(cfg: Config) -> Hub {
    Hub::new(cfg)
}

fn ident() -> Identity {
    Identity {
        pid: 1,
        uid: 1000,
        gid: 1000,
    }
}

struct Bytes(Vec<u8>);

fn frame(ty: FrameType, flags: u8, chan: &str, payload: &[u8], seq: u64) -> Bytes {
    let mut v = Vec::new();
    encode(&mut v, ty, flags, 0, chan, payload, 0, seq);
    Bytes(v)
}

fn send(hub: &mut Hub, id: ClientId, b: &Bytes) -> Step {
    let (f, _) = decode(&b.0, 1 << 20).unwrap().unwrap();
    hub.handle(id, &f, Instant::now())
}

fn sub(hub: &mut Hub, id: ClientId, pat: &str) {
    assert_eq!(
        send(hub, id, &frame(FrameType::Subscribe, 0, pat, b"", 1)),
        Step::Continue
    );
    let out = drain(hub, id);
    assert_eq!(out[0].0, FrameType::Ack, "subscribe to {pat}: {:?}", out[0]);
}

fn publish(hub: &mut Hub, id: ClientId, chan: &str, payload: &[u8], seq: u64) -> Step {
    send(
        hub,
        id,
        &frame(FrameType::Publish, ACK_REQUESTED, chan, payload, seq),
    )
}

/// Everything queued for `id`, as (type, seq, channel, payload).
fn drain(hub: &mut Hub, id: ClientId) -> Vec<(FrameType, u64, String, Vec<u8>)> {
    let q = hub.queue(id).unwrap();
    let (a, b) = q.as_slices();
    let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
    q.consume(bytes.len());
    hub.flushed(id);
    let mut out = Vec::new();
    let mut off = 0;
    while let Some((f, used)) = decode(&bytes[off..], 1 << 20).unwrap() {
        out.push((
            f.header.ty,
            f.header.seq,
            f.channel.to_string(),
            f.payload.to_vec(),
        ));
        off += used;
    }
    out
}

fn ack_count(frames: &[(FrameType, u64, String, Vec<u8>)], seq: u64) -> u32 {
    let f = frames
        .iter()
        .find(|f| f.0 == FrameType::Ack && f.1 == seq)
        .expect("ack");
    u32::from_le_bytes(f.3[..4].try_into().unwrap())
}

#[test]
fn fan_out_reaches_every_subscriber_once_and_counts_them() {
    let mut hub = hub_with(Config::default());
    let p = hub.admit(ident()).unwrap();
    let subs: Vec<_> = (0..3).map(|_| hub.admit(ident()).unwrap()).collect();
    for &s in &subs {
        sub(&mut hub, s, "weather");
    }
    // A second, overlapping pattern must not duplicate delivery.
    sub(&mut hub, subs[0], "#");
    publish(&mut hub, p, "weather", b"{\"temp\": 72}", 9);
    assert_eq!(ack_count(&drain(&mut hub, p), 9), 3);
    for &s in &subs {
        let got = drain(&mut hub, s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, FrameType::Data);
        assert_eq!(got[0].3, b"{\"temp\": 72}");
    }
}

#[test]
fn wildcards_match_channels_created_before_and_after() {
    let mut hub = hub_with(Config::default());
    let p = hub.admit(ident()).unwrap();
    publish(&mut hub, p, "sensors/kitchen/temp", b"1", 1);
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "sensors/+/temp");
    publish(&mut hub, p, "sensors/kitchen/temp", b"2", 2);
    publish(&mut hub, p, "sensors/hall/temp", b"3", 3);
    publish(&mut hub, p, "sensors/hall/humidity", b"4", 4);
    let got: Vec<_> = drain(&mut hub, s).into_iter().map(|f| f.3).collect();
    assert_eq!(got, vec![b"2".to_vec(), b"3".to_vec()]);
    let acks = drain(&mut hub, p);
    assert_eq!(ack_count(&acks, 1), 0);
    assert_eq!(ack_count(&acks, 4), 0);
    assert_eq!(ack_count(&acks, 3), 1);
}

#[test]
fn unsubscribe_keeps_channels_another_pattern_still_matches() {
    let mut hub = hub_with(Config::default());
    let p = hub.admit(ident()).unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "a/#");
    sub(&mut hub, s, "a/b");
    send(
        &mut hub,
        s,
        &frame(FrameType::Unsubscribe, 0, "a/#", b"", 5),
    );
    assert_eq!(drain(&mut hub, s)[0].0, FrameType::Ack);
    publish(&mut hub, p, "a/b", b"x", 1);
    publish(&mut hub, p, "a/c", b"y", 2);
    let got = drain(&mut hub, s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, "a/b");
    send(
        &mut hub,
        s,
        &frame(FrameType::Unsubscribe, 0, "nope", b"", 6),
    );
    assert_eq!(drain(&mut hub, s)[0].0, FrameType::Error);
}

#[test]
fn bad_channel_is_an_error_but_not_fatal() {
    let mut hub = hub_with(Config::default());
    let p = hub.admit(ident()).unwrap();
    assert_eq!(publish(&mut hub, p, "a//b", b"x", 3), Step::Continue);
    let out = drain(&mut hub, p);
    assert_eq!(out[0].0, FrameType::Error);
    assert_eq!(out[0].1, 3);
    let (code, text) = crate::wire::frame::parse_error_payload(&out[0].3);
    assert_eq!(code, ErrorCode::BadChannel as u16);
    assert!(text.contains("empty level"), "{text}");
    assert_eq!(publish(&mut hub, p, "ok", b"x", 4), Step::Continue);
}

#[test]
fn client_only_frames_from_a_client_close_it() {
    let mut hub = hub_with(Config::default());
    let p = hub.admit(ident()).unwrap();
    assert_eq!(
        send(&mut hub, p, &frame(FrameType::Data, 0, "a", b"", 1)),
        Step::Close
    );
    assert_eq!(drain(&mut hub, p)[0].0, FrameType::Error);
}

fn small_queue(overflow: Overflow) -> Config {
    let mut cfg = Config::default();
    cfg.queue.max_messages = 4;
    cfg.queue.overflow = overflow;
    cfg
}

#[test]
fn block_pauses_the_publisher_and_loses_nothing() {
    let mut hub = hub_with(small_queue(Overflow::Block));
    let p = hub.admit(ident()).unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "c");
    for i in 0..4 {
        assert_eq!(publish(&mut hub, p, "c", b"m", i), Step::Continue);
    }
    assert_eq!(publish(&mut hub, p, "c", b"m", 4), Step::Pause);
    assert!(hub.stats().clients.iter().any(|c| c.id == p && c.blocked));
    let mut resumed = Vec::new();
    hub.take_resumed(&mut resumed);
    assert!(resumed.is_empty());
    assert_eq!(drain(&mut hub, s).len(), 4);
    hub.take_resumed(&mut resumed);
    assert_eq!(resumed, vec![p]);
    // The loop re-handles the same frame: now it goes through.
    assert_eq!(publish(&mut hub, p, "c", b"m", 4), Step::Continue);
    let seqs: Vec<u64> = drain(&mut hub, s).iter().map(|f| f.1).collect();
    assert_eq!(seqs, vec![4]);
    assert_eq!(hub.stats().totals.dropped, 0);
}

#[test]
fn a_resumed_publishers_block_timeout_no_longer_counts() {
    let mut cfg = small_queue(Overflow::Block);
    cfg.hub.block_timeout_ms = 50;
    let mut hub = hub_with(cfg);
    let p = hub.admit(ident()).unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "c");
    assert_eq!(hub.next_deadline(), None, "nothing paused, no timer");
    for i in 0..4 {
        publish(&mut hub, p, "c", b"m", i);
    }
    assert_eq!(publish(&mut hub, p, "c", b"m", 4), Step::Pause);
    let armed = hub.next_deadline().expect("a paused publisher has a timer");
    // The subscriber drains: the publisher resumes, its timer is stale.
    assert_eq!(drain(&mut hub, s).len(), 4);
    let mut resumed = Vec::new();
    hub.take_resumed(&mut resumed);
    assert_eq!(resumed, vec![p]);
    assert_eq!(hub.next_deadline(), None, "the stale timer is skipped");
    hub.check_timeouts(armed + Duration::from_millis(1));
    let mut doomed = Vec::new();
    hub.take_doomed(&mut doomed);
    assert!(doomed.is_empty(), "a resumed publisher dooms nobody");
    // Paused again: a fresh timer, from the new pause.
    for i in 5..9 {
        publish(&mut hub, p, "c", b"m", i);
    }
    assert_eq!(publish(&mut hub, p, "c", b"m", 9), Step::Pause);
    assert!(hub.next_deadline().unwrap() >= armed);
}

#[test]
fn block_timeout_condemns_the_stuck_subscriber() {
    let mut cfg = small_queue(Overflow::Block);
    cfg.hub.block_timeout_ms = 50;
    let mut hub = hub_with(cfg);
    let p = hub.admit(ident()).unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "c");
    for i in 0..5 {
        publish(&mut hub, p, "c", b"m", i);
    }
    let t0 = Instant::now();
    assert!(hub.next_deadline().unwrap() > t0);
    hub.check_timeouts(t0);
    let mut doomed = Vec::new();
    hub.take_doomed(&mut doomed);
    assert!(doomed.is_empty());
    hub.check_timeouts(t0 + Duration::from_millis(60));
    hub.take_doomed(&mut doomed);
    assert_eq!(doomed.len(), 1);
    assert_eq!(doomed[0].0, s);
    assert!(doomed[0].1.contains("block_timeout_ms"));
    hub.remove(s);
    let mut resumed = Vec::new();
    hub.take_resumed(&mut resumed);
    assert_eq!(
        resumed,
        vec![p],
        "removing the holder resumes the publisher"
    );
}

#[test]
fn drop_oldest_counts_and_notifies() {
    let mut hub = hub_with(small_queue(Overflow::DropOldest));
    let p = hub.admit(ident()).unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "c");
    for i in 0..10 {
        assert_eq!(publish(&mut hub, p, "c", b"m", i), Step::Continue);
    }
    let got = drain(&mut hub, s);
    assert_eq!(got[0].0, FrameType::Missed);
    assert_eq!(u64::from_le_bytes(got[0].3[..8].try_into().unwrap()), 6);
    let seqs: Vec<u64> = got[1..].iter().map(|f| f.1).collect();
    assert_eq!(seqs, vec![6, 7, 8, 9]);
    let st = hub.stats();
    assert_eq!(st.totals.dropped, 6);
    assert_eq!(st.channels[0].dropped, 6);
    assert_eq!(st.clients.iter().find(|c| c.id == s).unwrap().dropped, 6);
}

#[test]
fn disconnect_policy_condemns_with_the_limit_named() {
    let mut hub = hub_with(small_queue(Overflow::Disconnect));
    let p = hub.admit(ident()).unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "c");
    for i in 0..5 {
        publish(&mut hub, p, "c", b"m", i);
    }
    let mut doomed = Vec::new();
    hub.take_doomed(&mut doomed);
    assert_eq!(doomed.len(), 1);
    assert!(
        doomed[0].1.contains("queue.max_messages=4"),
        "{}",
        doomed[0].1
    );
    // The message that did not fit, and the four queued ones the
    // disconnected subscriber will never read: every loss counted.
    assert_eq!(hub.stats().totals.dropped, 5);
    assert_eq!(ack_count(&drain(&mut hub, p), 4), 0);
}

#[test]
fn limits_name_themselves() {
    let mut cfg = Config::default();
    cfg.hub.max_clients = 1;
    cfg.hub.max_subscriptions_per_client = 1;
    cfg.hub.max_channels = 1;
    let mut hub = hub_with(cfg);
    let p = hub.admit(ident()).unwrap();
    assert!(hub
        .admit(ident())
        .unwrap_err()
        .to_string()
        .contains("hub.max_clients"));
    sub(&mut hub, p, "a");
    send(&mut hub, p, &frame(FrameType::Subscribe, 0, "b", b"", 2));
    let e = drain(&mut hub, p);
    assert!(String::from_utf8_lossy(&e[0].3).contains("max_subscriptions_per_client"));
    publish(&mut hub, p, "z", b"", 3);
    let e = drain(&mut hub, p);
    assert!(
        String::from_utf8_lossy(&e[0].3).contains("hub.max_channels"),
        "{e:?}"
    );
}

#[test]
fn stats_report_per_channel_and_client() {
    let mut hub = hub_with(Config::default());
    let p = hub
        .admit(Identity {
            pid: 42,
            uid: 7,
            gid: 8,
        })
        .unwrap();
    let s = hub.admit(ident()).unwrap();
    sub(&mut hub, s, "weather");
    publish(&mut hub, p, "weather", b"12345", 1);
    send(&mut hub, p, &frame(FrameType::StatsRequest, 0, "", b"", 77));
    let out = drain(&mut hub, p);
    let reply = out.iter().find(|f| f.0 == FrameType::StatsReply).unwrap();
    assert_eq!(reply.1, 77);
    let st: HubStats = serde_json::from_slice(&reply.3).unwrap();
    assert_eq!(st.client_count, 2);
    assert_eq!(st.totals.messages_in, 1);
    assert_eq!(st.totals.bytes_in, 5);
    let ch = st.channels.iter().find(|c| c.name == "weather").unwrap();
    assert_eq!((ch.subscribers, ch.published, ch.delivered), (1, 1, 1));
    let c = st.clients.iter().find(|c| c.id == p).unwrap();
    assert_eq!((c.pid, c.uid, c.messages_in), (42, 7, 1));
}

#[test]
fn events_announce_clients_coming_and_going() {
    let mut hub = hub_with(Config::default());
    hub.set_event_recording(true);
    let quiet = hub.admit(ident()).unwrap();
    let id = hub.admit(ident()).unwrap();
    hub.set_transport(id, TransportKind::Socket, "x");
    hub.remove(quiet); // never finished its handshake: never announced
    hub.remove(id);
    let mut events = Vec::new();
    hub.take_events(&mut events);
    assert_eq!(
        events,
        vec![
            HubEvent::ClientConnected {
                id,
                transport: "socket".into(),
                pid: 1,
                uid: 1000
            },
            HubEvent::ClientDisconnected { id },
        ]
    );
}

#[test]
fn one_uid_cannot_multiply_its_queue_bound_with_many_connections() {
    let mut cfg = Config::default();
    cfg.hub.max_message_size = 1000;
    cfg.queue.max_bytes = 4000;
    cfg.queue.max_bytes_per_uid = 6000;
    let mut hub = hub_with(cfg);
    let p = hub
        .admit(Identity {
            pid: 1,
            uid: 1,
            gid: 1,
        })
        .unwrap();
    // Three subscribers of uid 7, none reading: together they may hold
    // 6000 bytes, not 3 × 4000.
    let subs: Vec<_> = (0..3)
        .map(|_| {
            hub.admit(Identity {
                pid: 2,
                uid: 7,
                gid: 7,
            })
            .unwrap()
        })
        .collect();
    for &s in &subs {
        sub(&mut hub, s, "c");
    }
    let mut step = Step::Continue;
    let mut sent = 0;
    while step == Step::Continue && sent < 100 {
        step = publish(&mut hub, p, "c", &[0u8; 900], sent);
        sent += 1;
    }
    assert_eq!(
        step,
        Step::Pause,
        "the publisher is held back by the uid bound"
    );
    let queued: usize = subs
        .iter()
        .map(|s| hub.queue(*s).unwrap().data_bytes())
        .sum();
    assert!(
        queued <= 6000 + 3 * 926,
        "uid total {queued} stays near its bound"
    );
    // Draining one subscriber frees room for the uid and resumes the publisher.
    for &s in &subs {
        drain(&mut hub, s);
    }
    let mut resumed = Vec::new();
    hub.take_resumed(&mut resumed);
    assert_eq!(resumed, vec![p]);
}

#[test]
fn clients_per_uid_are_limited() {
    let mut cfg = Config::default();
    cfg.hub.max_clients_per_uid = 2;
    let mut hub = hub_with(cfg);
    let me = Identity {
        pid: 1,
        uid: 42,
        gid: 42,
    };
    hub.admit(me).unwrap();
    hub.admit(me).unwrap();
    let e = hub.admit(me).unwrap_err().to_string();
    assert!(
        e.contains("hub.max_clients_per_uid") && e.contains("uid 42"),
        "{e}"
    );
    assert!(
        hub.admit(Identity {
            pid: 1,
            uid: 43,
            gid: 43
        })
        .is_ok(),
        "other users unaffected"
    );
}

#[test]
fn a_message_too_big_for_a_subscribers_transport_is_dropped_for_it_with_a_missed_notice() {
    let mut hub = hub_with(Config::default());
    let p = hub.admit(ident()).unwrap();
    let small = hub.admit(ident()).unwrap();
    let big = hub.admit(ident()).unwrap();
    hub.set_max_frame(small, Some(100));
    sub(&mut hub, small, "t");
    sub(&mut hub, big, "t");
    publish(&mut hub, p, "t", &[7u8; 200], 1);
    assert_eq!(
        ack_count(&drain(&mut hub, p), 1),
        1,
        "only the one it reached"
    );
    let got = drain(&mut hub, small);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0, got[0].1),
        (FrameType::Missed, 0),
        "never the publisher's seq"
    );
    assert_eq!(got[0].3, 1u64.to_le_bytes());
    assert_eq!(drain(&mut hub, big)[0].0, FrameType::Data);
    let stats = hub.stats();
    let ch = stats.channels.iter().find(|c| c.name == "t").unwrap();
    assert_eq!((ch.delivered, ch.dropped), (1, 1));
    // What fits still arrives.
    publish(&mut hub, p, "t", b"ok", 2);
    assert_eq!(ack_count(&drain(&mut hub, p), 2), 2);
    assert_eq!(drain(&mut hub, small)[0].0, FrameType::Data);
}

#[test]
fn a_uid_may_hold_no_more_slots_than_remain_free() {
    let mut cfg = Config::default();
    cfg.hub.max_clients = 10;
    cfg.hub.max_clients_per_uid = 10;
    let mut hub = hub_with(cfg);
    let as_uid = |uid| Identity {
        pid: 1,
        uid,
        gid: uid,
    };
    let mut taken = 0;
    while hub.admit(as_uid(42)).is_ok() {
        taken += 1;
    }
    assert_eq!(taken, 5, "one uid alone gets half");
    let e = hub.admit(as_uid(42)).unwrap_err().to_string();
    assert!(
        e.contains("share of hub.max_clients") && e.contains("uid 42"),
        "{e}"
    );
    let mut second = 0;
    while hub.admit(as_uid(43)).is_ok() {
        second += 1;
    }
    assert_eq!(second, 3, "a second uid gets a share of what is left");
    assert!(
        hub.admit(as_uid(0)).is_ok(),
        "a uid holding nothing still connects"
    );
}

#[test]
fn unread_answers_count_against_the_uid_and_pause_the_asker() {
    let mut cfg = Config::default();
    cfg.queue.max_bytes_per_uid = 4096;
    let mut hub = hub_with(cfg);
    let (a, b) = (hub.admit(ident()).unwrap(), hub.admit(ident()).unwrap());
    let ping = frame(FrameType::Ping, 0, "", b"", 1);
    // Client a never reads its PONGs: once its uid holds 4096 bytes, it is
    // paused although its own queue is far below queue.max_bytes.
    let mut n = 0;
    while send(&mut hub, a, &ping) == Step::Continue {
        n += 1;
        assert!(n < 1000, "never paused");
    }
    assert_eq!(n, 4096usize.div_ceil(crate::wire::HEADER_LEN));
    // Its uid's other client, with nothing queued, still gets one answer,
    // then waits for it to be read, like a.
    assert_eq!(send(&mut hub, b, &ping), Step::Continue);
    assert_eq!(send(&mut hub, b, &ping), Step::Pause);
    // A reads its answers: it goes on.
    drain(&mut hub, a);
    let mut resumed = Vec::new();
    hub.take_resumed(&mut resumed);
    assert!(resumed.contains(&a), "{resumed:?}");
}

fn of_uid(uid: u32) -> Identity {
    Identity {
        pid: 1,
        uid,
        gid: uid,
    }
}

fn error_of(hub: &mut Hub, id: ClientId) -> String {
    let e = drain(hub, id);
    assert_eq!(e[0].0, FrameType::Error, "{e:?}");
    crate::wire::frame::parse_error_payload(&e[0].3).1
}

#[test]
fn a_channel_is_charged_to_whoever_holds_it() {
    let mut hub = hub_with(Config::default());
    let a = hub.admit(of_uid(1)).unwrap();
    let b = hub.admit(of_uid(2)).unwrap();
    publish(&mut hub, a, "x", b"", 1);
    assert_eq!((hub.channels_of_uid(1), hub.channels_of_uid(2)), (1, 0));
    // uid 2 holds it now: the charge moves, so uid 1 cannot be pinned at
    // its limit by channels others keep alive.
    sub(&mut hub, b, "x");
    assert_eq!((hub.channels_of_uid(1), hub.channels_of_uid(2)), (0, 1));
    sub(&mut hub, a, "x");
    assert_eq!((hub.channels_of_uid(1), hub.channels_of_uid(2)), (1, 1));
    send(&mut hub, b, &frame(FrameType::Unsubscribe, 0, "x", b"", 2));
    assert_eq!((hub.channels_of_uid(1), hub.channels_of_uid(2)), (1, 0));
    // The last holder keeps the charge of the idle channel until collected.
    hub.remove(a);
    assert_eq!((hub.channels_of_uid(1), hub.channel_count()), (1, 1));
    // A wildcard holds nothing and costs its owner no channel.
    sub(&mut hub, b, "#");
    publish(&mut hub, b, "y", b"", 3);
    assert_eq!(hub.channels_of_uid(2), 1, "created, not held");
}

#[test]
fn at_its_channel_limit_a_uid_recycles_its_own_idle_channels_first() {
    let mut cfg = Config::default();
    cfg.hub.max_channels_per_uid = 3;
    let mut hub = hub_with(cfg);
    let a = hub.admit(of_uid(1)).unwrap();
    let other = hub.admit(of_uid(2)).unwrap();
    publish(&mut hub, other, "theirs", b"", 1);
    sub(&mut hub, a, "h1");
    sub(&mut hub, a, "h2");
    for (i, name) in ["p1", "p2", "p3"].into_iter().enumerate() {
        publish(&mut hub, a, name, b"", 2 + i as u64);
        drain(&mut hub, a);
    }
    // p1 and p2 were collected to make room; the other uid's idle one stays.
    let names: Vec<String> = hub.stats().channels.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["h1", "h2", "p3", "theirs"]);
    sub(&mut hub, a, "h3"); // collects p3
    send(&mut hub, a, &frame(FrameType::Subscribe, 0, "h4", b"", 9));
    let e = error_of(&mut hub, a);
    assert!(
        e.contains("uid 1 holds 3 channels") && e.contains("hub.max_channels_per_uid"),
        "{e}"
    );
    // Holding another uid's channel counts too.
    send(
        &mut hub,
        a,
        &frame(FrameType::Subscribe, 0, "theirs", b"", 10),
    );
    assert!(error_of(&mut hub, a).contains("hub.max_channels_per_uid"));
    // Collected channels took their counters; the totals kept them.
    assert_eq!(hub.totals().messages_in, 4);
}

#[test]
fn one_uid_takes_at_most_half_of_what_others_leave_free() {
    let mut cfg = Config::default();
    cfg.hub.max_channels = 8;
    let mut hub = hub_with(cfg);
    let a = hub.admit(of_uid(1)).unwrap();
    let b = hub.admit(of_uid(2)).unwrap();
    for i in 0..4 {
        sub(&mut hub, a, &format!("a{i}"));
    }
    send(&mut hub, a, &frame(FrameType::Subscribe, 0, "a4", b"", 9));
    let e = error_of(&mut hub, a);
    assert!(e.contains("hub.max_channels") && e.contains("half"), "{e}");
    // uid 2 still finds room.
    sub(&mut hub, b, "b0");
    sub(&mut hub, b, "b1");
}

#[test]
fn subscriptions_per_uid_are_limited_over_all_its_clients() {
    let mut cfg = Config::default();
    cfg.hub.max_subscriptions_per_uid = 3;
    let mut hub = hub_with(cfg);
    let a1 = hub.admit(of_uid(1)).unwrap();
    let a2 = hub.admit(of_uid(1)).unwrap();
    let b = hub.admit(of_uid(2)).unwrap();
    sub(&mut hub, a1, "x/+");
    sub(&mut hub, a1, "y/#");
    sub(&mut hub, a2, "z");
    send(&mut hub, a2, &frame(FrameType::Subscribe, 0, "w/+", b"", 5));
    let e = error_of(&mut hub, a2);
    assert!(
        e.contains("uid 1 holds 3 subscriptions") && e.contains("hub.max_subscriptions_per_uid"),
        "{e}"
    );
    sub(&mut hub, b, "w/+");
    // Leaving gives the patterns back.
    hub.remove(a1);
    sub(&mut hub, a2, "w/+");
    // A wildcard subscriber that left no longer receives (lists are
    // recomputed from the index).
    publish(&mut hub, b, "w/1", b"", 6);
    let got = drain(&mut hub, b);
    assert_eq!(ack_count(&got, 6), 2);
    assert_eq!(drain(&mut hub, a2).len(), 1);
}

#[test]
fn pattern_levels_per_uid_are_limited_and_given_back() {
    let mut cfg = Config::default();
    cfg.hub.max_pattern_levels_per_uid = 40;
    let mut hub = hub_with(cfg);
    let a1 = hub.admit(of_uid(1)).unwrap();
    let a2 = hub.admit(of_uid(1)).unwrap();
    let b = hub.admit(of_uid(2)).unwrap();
    let deep = |tag: &str| format!("{tag}/{}#", "l/".repeat(30));
    sub(&mut hub, a1, &deep("a")); // 32 levels
    sub(&mut hub, a2, "x/y/+/z"); // 36
    sub(&mut hub, a2, "p/q/r/s"); // 40: exactly the limit
    send(&mut hub, a2, &frame(FrameType::Subscribe, 0, "t", b"", 5));
    let e = error_of(&mut hub, a2);
    assert!(
        e.contains("uid 1 holds patterns of 40 levels")
            && e.contains("hub.max_pattern_levels_per_uid"),
        "{e}"
    );
    // Another uid has its own budget.
    sub(&mut hub, b, &deep("b"));
    // Unsubscribing and leaving give the levels back.
    send(
        &mut hub,
        a2,
        &frame(FrameType::Unsubscribe, 0, "p/q/r/s", b"", 6),
    );
    let got = drain(&mut hub, a2);
    assert!(
        got.iter().any(|f| f.0 == FrameType::Ack && f.1 == 6),
        "{got:?}"
    );
    sub(&mut hub, a2, "t");
    hub.remove(a1);
    sub(&mut hub, a2, &deep("c"));
}

#[test]
fn a_channel_about_to_get_its_ring_is_never_collected() {
    let mut cfg = Config::default();
    cfg.shm.channel_rings = true;
    cfg.hub.max_channels_per_uid = 1;
    let mut hub = hub_with(cfg);
    let a = hub.admit(of_uid(1)).unwrap();
    hub.set_transport(a, TransportKind::Shm, "shm");
    send(
        &mut hub,
        a,
        &frame(FrameType::OpenRing, 0, "r", &[RING_READ | RING_WRITE], 1),
    );
    // Before the event loop makes the ring, the same uid needs room.
    publish(&mut hub, a, "p", b"", 2);
    let e = error_of(&mut hub, a);
    assert!(e.contains("hub.max_channels_per_uid"), "{e}");
    let mut reqs = Vec::new();
    hub.take_ring_requests(&mut reqs);
    assert_eq!(reqs[0].result, Ok(()));
    let names: Vec<String> = hub.stats().channels.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["r"]);
}

#[test]
fn a_reload_names_what_changed_but_not_the_bridges_strings() {
    let old: Config = toml::from_str(
        "[queue]\nmax_messages = 16\n[[bridge.mqtt]]\nurl = \"mqtt://a\"\npassword = \"s3cret\"\n",
    )
    .unwrap();
    let new: Config = toml::from_str(
        "[queue]\nmax_messages = 32\noverflow = \"drop-oldest\"\n[[bridge.mqtt]]\nurl = \"mqtt://a\"\npassword = \"other\"\n",
    )
    .unwrap();
    let changes = config_changes(&old, &new).join(", ");
    assert!(changes.contains("queue.max_messages 16 -> 32"), "{changes}");
    assert!(
        changes.contains("queue.overflow \"block\" -> \"drop-oldest\""),
        "{changes}"
    );
    assert!(changes.contains("bridge.mqtt"), "{changes}");
    assert!(
        !changes.contains("s3cret") && !changes.contains("other"),
        "{changes}"
    );
    assert!(config_changes(&old, &old).is_empty());
}

/// Disk storage writes a turn's records together, then answers: several
/// publishers' records staged in one turn are each ACKed once written.
/// When the batched write fails, every publisher whose record was in it
/// gets its own ERROR (no ACK), their history entries are taken back (the
/// numbers stay skipped) and each failure is counted.
#[test]
fn a_failed_batched_write_answers_every_publisher_in_it() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        &format!(
            "[hub]\nstate_dir = \"{}\"\n[[channel]]\npattern = \"d/#\"\nstorage = \"disk\"\n\
             sync = \"interval\"\nhistory_messages = 1000\nhistory_bytes = 100000\n",
            state.path().display()
        ),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let mut hub = hub_with(cfg);
    hub.attach_storage(Box::new(|| {}), crate::supervise::unsupervised());
    let pubs: Vec<ClientId> = (0..3).map(|_| hub.admit(ident()).unwrap()).collect();
    let payload = vec![b'x'; 1000];
    // One turn, three publishers: nothing is answered before the write.
    for n in 0..63u64 {
        let p = pubs[(n % 3) as usize];
        assert_eq!(publish(&mut hub, p, "d/x", &payload, n + 1), Step::Continue);
    }
    for &p in &pubs {
        let got = drain(&mut hub, p);
        let acks = got.iter().filter(|f| f.0 == FrameType::Ack).count();
        assert_eq!(acks, 21, "{got:?}");
    }
    let f = hub.history.figures("d/x").unwrap();
    assert_eq!((f.messages, f.last_seq), (63, 63));
    // 63 records of 1048 bytes fill the first 64 KiB segment: the next
    // record starts segment 64, which here is /dev/full (ENOSPC).
    let dir = state.path().join("channels/d_2fx");
    std::os::unix::fs::symlink("/dev/full", dir.join(format!("{:020}.seg", 64))).unwrap();
    let mut seqs = Vec::new();
    for (i, &p) in pubs.iter().enumerate() {
        let seq = 1000 + i as u64;
        publish(&mut hub, p, "d/x", &payload, seq);
        seqs.push(seq);
    }
    for (i, &p) in pubs.iter().enumerate() {
        let got = drain(&mut hub, p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (FrameType::Error, seqs[i]));
        let text = String::from_utf8_lossy(&got[0].3).into_owned();
        assert!(
            text.contains("not stored")
                && text.contains("No space left on device")
                && text.contains(&format!("sequence number {} skipped", 64 + i)),
            "{text}"
        );
    }
    let f = hub.history.figures("d/x").unwrap();
    assert_eq!((f.messages, f.first_seq, f.last_seq), (63, 1, 66));
    assert_eq!(hub.storage_failures(), 3);
    std::fs::remove_file(dir.join(format!("{:020}.seg", 64))).unwrap();
}

/// Retention by bounds still frees whole segments of a disk channel's log
/// (trimmed when publishing evicts old entries), and what is left reads
/// back as the history after a restart.
#[test]
fn a_disk_channel_drops_old_segments_as_its_history_evicts() {
    let state = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        &format!(
            "[hub]\nstate_dir = \"{}\"\n[[channel]]\npattern = \"d/#\"\nstorage = \"disk\"\n\
             sync = \"never\"\nhistory_messages = 10\nhistory_bytes = 100000\n",
            state.path().display()
        ),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let mut hub = hub_with(cfg.clone());
    hub.attach_storage(Box::new(|| {}), crate::supervise::unsupervised());
    let p = hub.admit(ident()).unwrap();
    let payload = vec![b'r'; 1000];
    for n in 1..=400u64 {
        publish(&mut hub, p, "d/r", &payload, n);
        if n % 50 == 0 {
            drain(&mut hub, p); // a turn ends: the batch is written
        }
    }
    drain(&mut hub, p);
    let segs = std::fs::read_dir(state.path().join("channels/d_2fr"))
        .unwrap()
        .count();
    // 400 KiB written in segments of 64 KiB; only the last one or two hold
    // the 10 messages kept.
    assert!(segs <= 2, "{segs} segments left");
    drop(hub);
    let mut hub = hub_with(cfg);
    hub.attach_storage(Box::new(|| {}), crate::supervise::unsupervised());
    let f = hub.history.figures("d/r").unwrap();
    assert_eq!((f.messages, f.first_seq, f.last_seq), (10, 391, 400));
}
