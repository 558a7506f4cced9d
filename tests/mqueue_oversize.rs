//! A message too big for a subscriber's transport (issue #13, F18): it is
//! lost for that subscriber and counted so, never counted as delivered, and
//! the subscriber's notice never carries another client's seq.

mod common;

use std::time::Duration;

use common::Hub;
use ipchub::client::Event;
use ipchub::hub::TransportKind::Mqueue;
use ipchub::wire::{frame::ACK_REQUESTED, FrameType};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// The message size of the queues the hub makes, when the kernel keeps it
/// below the hub's largest message (the default 8192 does); None otherwise.
fn small_queue_limit() -> Option<usize> {
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (limit < (1 << 20)).then_some(limit)
}

#[test]
fn a_message_too_big_for_an_mqueue_subscriber_is_dropped_not_delivered_and_never_answers_its_requests(
) {
    let Some(limit) = small_queue_limit() else {
        eprintln!("fs.mqueue.msgsize_max is at least 1 MiB: no message is too big for a queue");
        return;
    };
    let hub = Hub::start();
    let mut sub = hub.subscriber(Mqueue, "big/one");
    // The subscriber's next request will carry the seq after this one.
    let taken = sub.publish("elsewhere", b"x").unwrap();
    sub.flush().unwrap();
    let victim_seq = taken + 1;

    // Another client publishes, over the socket, a message bigger than the
    // subscriber's queue takes, choosing the seq the subscriber will use.
    let mut raw = hub.raw(); // handshake done
    let big = vec![7u8; limit + 1];
    raw.send_frame(
        FrameType::Publish,
        ACK_REQUESTED,
        "big/one",
        &big,
        victim_seq,
    );
    let (ty, seq, _, payload) = raw.read_frame().unwrap();
    assert_eq!((ty, seq), (FrameType::Ack, victim_seq), "{payload:?}");
    let delivered = u32::from_le_bytes(payload[..4].try_into().unwrap());
    assert_eq!(delivered, 0, "the subscriber's queue cannot carry it");

    // The subscriber's own request with that seq gets its own answer.
    let stats = sub
        .stats()
        .expect("the subscriber's request is answered by the hub, not by the lost message");
    let chan = stats
        .channels
        .iter()
        .find(|c| c.name == "big/one")
        .expect("channel listed");
    assert_eq!((chan.delivered, chan.dropped), (0, 1), "{chan:?}");
    let me = stats
        .clients
        .iter()
        .find(|c| c.id == sub.id())
        .expect("subscriber listed");
    assert_eq!(me.dropped, 1, "{me:?}");
    assert_eq!(me.messages_out, 0, "{me:?}");
    assert_eq!(stats.totals.dropped, 1);

    // What it is told: a MISSED notice (seq 0, never an answer), then the
    // next message that fits arrives normally.
    match sub.next_event(WAIT).unwrap() {
        Some(Event::Missed(1)) => {}
        other => panic!("expected MISSED 1, got {other:?}"),
    }
    raw.send_frame(FrameType::Publish, ACK_REQUESTED, "big/one", b"small", 9);
    let (ty, _, _, payload) = raw.read_frame().unwrap();
    assert_eq!(ty, FrameType::Ack);
    assert_eq!(u32::from_le_bytes(payload[..4].try_into().unwrap()), 1);
    let m = sub.recv(WAIT).unwrap().expect("the small message");
    assert_eq!(m.payload, b"small");
    assert!(
        hub.log()
            .contains("bigger than the subscriber's transport carries"),
        "the reason is logged:\n{}",
        hub.log()
    );
}
