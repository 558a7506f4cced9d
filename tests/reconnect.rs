//! Clients ride out a hub that goes away (issue #16, behaviours 1 and 3):
//! a hub killed with -9 or stopped, and started again, while subscribers on
//! every transport wait and publishers publish. Every client reconnects by
//! itself, restores its subscriptions (channel rings included), resends
//! what it had not written, and reports the loss as events, never silently.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Hub;
use ipchub::client::{Client, ClientError, Event, Options, Reconnect};
use ipchub::hub::TransportKind::{self, *};

const TRANSPORTS: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue, Shm];
const WAIT: Duration = Duration::from_secs(20);

/// Every event until `want` matches one (failing after `WAIT`); the
/// messages among them are returned, in order.
fn events_until(c: &mut Client, what: &str, mut want: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = WAIT.saturating_sub(t0.elapsed());
        assert!(!left.is_zero(), "no {what} within {WAIT:?}; saw {seen:?}");
        match c.next_event(Some(left)) {
            Ok(Some(ev)) => {
                let done = want(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(None) => {}
            Err(e) => panic!("waiting for {what}: {e}; saw {seen:?}"),
        }
    }
}

fn payloads(evs: &[Event]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// Each publisher's messages, in order, as its subscriber must see them.
fn expect_from(pubs: &[TransportKind], tag: &str, n: usize) -> Vec<String> {
    pubs.iter()
        .flat_map(|t| (0..n).map(move |i| format!("{}:{tag}:{i}", t.name())))
        .collect()
}

/// What `got` holds from publisher `t`, in the order received.
fn from_publisher(got: &[String], t: TransportKind) -> Vec<String> {
    let p = format!("{}:", t.name());
    got.iter().filter(|s| s.starts_with(&p)).cloned().collect()
}

/// Each subscriber receives every publisher's round in order, up to the
/// five confirmed end markers.
fn check_round(subs: &mut [Client], tag: &str, n: usize) {
    for (s, t) in subs.iter_mut().zip(TRANSPORTS) {
        let mut ends = 0;
        let evs = events_until(s, tag, |e| {
            if matches!(e, Event::Message(m) if m.payload == b"-") {
                ends += 1;
            }
            ends == TRANSPORTS.len()
        });
        let got = payloads(&evs);
        for &p in TRANSPORTS {
            let want = expect_from(&[p], tag, n);
            assert_eq!(
                from_publisher(&got, p),
                want,
                "{} from {}",
                t.name(),
                p.name()
            );
        }
    }
}

fn crash_and_restart(planned: bool) {
    let mut hub = Hub::start_with("[queue]\noverflow = \"block\"\n");
    let mut subs: Vec<Client> = TRANSPORTS
        .iter()
        .map(|&t| hub.subscriber(t, "ride/out"))
        .collect();
    let mut pubs: Vec<Client> = TRANSPORTS.iter().map(|&t| hub.client_via(t)).collect();
    const N: usize = 30;
    let publish_round = |pubs: &mut Vec<Client>, tag: &str| {
        for (p, t) in pubs.iter_mut().zip(TRANSPORTS) {
            for i in 0..N {
                p.publish("ride/out", format!("{}:{tag}:{i}", t.name()).as_bytes())
                    .unwrap();
            }
            // Every subscriber has them (block policy).
            assert_eq!(p.publish_confirmed("ride/out", b"-").unwrap(), 5);
        }
    };
    publish_round(&mut pubs, "before");
    check_round(&mut subs, "before", N);
    if planned {
        assert!(hub.stop().success());
    } else {
        hub.kill9();
    }
    // Every client notices by itself, and says so.
    for (s, t) in subs.iter_mut().zip(TRANSPORTS) {
        let evs = events_until(s, "HubLost", |e| matches!(e, Event::HubLost { .. }));
        let Some(Event::HubLost { reason }) = evs.last() else {
            unreachable!()
        };
        if planned {
            assert!(reason.contains("shutting down"), "{}: {reason}", t.name());
        }
    }
    hub.restart();
    for (s, t) in subs.iter_mut().zip(TRANSPORTS) {
        let evs = events_until(s, "HubBack", |e| matches!(e, Event::HubBack { .. }));
        assert!(
            matches!(evs.last(), Some(Event::HubBack { .. })),
            "{}: {evs:?}",
            t.name()
        );
        assert!(!s.is_reconnecting());
    }
    hub.wait_subscribers("ride/out", 5);
    // The publishers notice too (an mqueue or shm publisher would
    // otherwise write its next messages into the dead hub's queue or ring:
    // reported then as unconfirmed, see below), reconnect, and go on.
    for p in pubs.iter_mut() {
        events_until(p, "HubLost", |e| matches!(e, Event::HubLost { .. }));
    }
    publish_round(&mut pubs, "after");
    check_round(&mut subs, "after", N);
    // The new hub sees the ten clients and our probe: nobody connected
    // twice, nobody is missing.
    let st = hub.client().stats().unwrap();
    assert_eq!(st.client_count, 11, "{:?}", st.clients);
}

#[test]
fn every_transport_reconnects_by_itself_after_kill_9() {
    crash_and_restart(false);
}

#[test]
fn every_transport_reconnects_by_itself_after_a_stop_and_start() {
    crash_and_restart(true);
}

fn hub_options(hub: &Hub, t: TransportKind, reconnect: Reconnect) -> Options {
    Options {
        reconnect,
        ..hub.options(t)
    }
}

/// Publishes made while no hub runs are held, up to the configured bound
/// (then a clear error), and reach the next hub in order.
#[test]
fn publishes_between_hubs_are_held_within_the_bound_and_sent_to_the_next_hub() {
    let mut hub = Hub::start();
    let mut p = Client::connect(&hub_options(
        &hub,
        Socket,
        Reconnect {
            buffer_messages: 5,
            ..Reconnect::default()
        },
    ))
    .unwrap();
    p.publish_confirmed("held", b"warm-up").unwrap();
    hub.kill9();
    events_until(&mut p, "HubLost", |e| matches!(e, Event::HubLost { .. }));
    assert!(p.is_reconnecting());
    for i in 0..5 {
        p.publish("held", format!("m{i}").as_bytes()).unwrap();
    }
    match p.publish("held", b"one too many") {
        Err(e @ ClientError::BufferFull { .. }) => {
            let text = e.to_string();
            assert!(text.contains("buffer_messages"), "{text}");
        }
        other => panic!("expected BufferFull, got {other:?}"),
    }
    hub.restart();
    let mut sub = hub.subscriber(Socket, "held");
    p.flush().unwrap();
    let evs = events_until(&mut p, "HubBack", |e| matches!(e, Event::HubBack { .. }));
    assert!(
        matches!(
            evs.last(),
            Some(Event::HubBack {
                resent: 5,
                unconfirmed: 0,
                ..
            })
        ),
        "{evs:?}"
    );
    for i in 0..5 {
        let m = sub.recv(Some(WAIT)).unwrap().expect("a held message");
        assert_eq!(m.payload, format!("m{i}").as_bytes());
    }
}

/// What a publisher wrote into the dead hub's message queue before it
/// noticed is lost, and the client says how much: never silently.
#[test]
fn publishes_the_lost_hub_took_are_reported_as_unconfirmed() {
    let mut hub = Hub::start();
    let mut p = hub.client_via(Mqueue);
    p.set_flush_delay(Duration::ZERO);
    p.publish_confirmed("gone", b"confirmed").unwrap();
    hub.kill9();
    for i in 0..3 {
        p.publish("gone", format!("lost{i}").as_bytes()).unwrap();
    }
    events_until(&mut p, "HubLost", |e| matches!(e, Event::HubLost { .. }));
    hub.restart();
    let evs = events_until(&mut p, "HubBack", |e| matches!(e, Event::HubBack { .. }));
    assert!(
        matches!(
            evs.last(),
            Some(Event::HubBack {
                unconfirmed: 3,
                resent: 0,
                ..
            })
        ),
        "{evs:?}"
    );
    assert_eq!(p.publish_confirmed("gone", b"again").unwrap(), 0);
}

/// Fail fast: with reconnection off, the loss is an error, as before.
#[test]
fn opting_out_fails_fast() {
    let mut hub = Hub::start();
    let mut sub = Client::connect(&hub_options(&hub, Socket, Reconnect::off())).unwrap();
    sub.subscribe("x").unwrap();
    hub.kill9();
    match sub.recv(Some(WAIT)) {
        Err(ClientError::Closed(_)) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
    hub.restart();
    assert!(matches!(sub.recv(Some(WAIT)), Err(ClientError::Closed(_))));
}

/// `give_up_after` bounds the wait for a hub that does not come back.
#[test]
fn a_client_gives_up_after_the_configured_time() {
    let mut hub = Hub::start();
    let mut sub = Client::connect(&hub_options(
        &hub,
        Shm,
        Reconnect {
            give_up_after: Some(Duration::from_millis(300)),
            ..Reconnect::default()
        },
    ))
    .unwrap();
    sub.subscribe("x").unwrap();
    hub.kill9();
    let t0 = Instant::now();
    let err = loop {
        match sub.next_event(Some(WAIT)) {
            Ok(Some(Event::HubLost { .. })) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, ClientError::GaveUp { .. }), "{err}");
    assert!(t0.elapsed() < WAIT);
    // And stays closed.
    assert!(sub.publish("x", b"y").is_err());
}

/// `ipchubctl sub` keeps running across a hub crash and restart, and says
/// so on standard error.
#[test]
fn ipchubctl_sub_keeps_running_across_a_restart() {
    let mut hub = Hub::start();
    let mut child = hub
        .ctl()
        .args(["sub", "--channel", "cli/r"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(r).lines() {
                if tx.send(l.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let out = lines(Box::new(child.stdout.take().unwrap()));
    let err = lines(Box::new(child.stderr.take().unwrap()));
    let wait_line = |rx: &std::sync::mpsc::Receiver<String>, want: &str| {
        let t0 = Instant::now();
        loop {
            let left = WAIT.saturating_sub(t0.elapsed());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with '{want}': {e}"),
            }
        }
    };
    hub.wait_subscribers("cli/r", 1);
    hub.client().publish_confirmed("cli/r", b"one").unwrap();
    wait_line(&out, "[cli/r] one");
    hub.kill9();
    wait_line(&err, "lost the hub");
    hub.restart();
    wait_line(&err, "reconnected to the hub");
    hub.wait_subscribers("cli/r", 1);
    hub.client().publish_confirmed("cli/r", b"two").unwrap();
    wait_line(&out, "[cli/r] two");
    assert!(child.try_wait().unwrap().is_none(), "sub still runs");
    child.kill().unwrap();
    child.wait_within(LIMIT).unwrap();
}
