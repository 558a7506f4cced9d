//! Retained messages (issue #17): a late subscriber gets the channel's last
//! retained value first, on every transport and through wildcards, then live
//! messages with no gap and no duplicate; an empty retained publish clears
//! it; access rules and the per-uid and total bounds hold.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Hub, IPCHUBCTL};
use ipchub::client::{Client, Event, Message, PublishOptions, SubscribeOptions};
use ipchub::hub::TransportKind::{self, *};
use ipchub::wire::ErrorCode;

const TRANSPORTS: &[TransportKind] = &[Socket, Pipe, Fifo, Mqueue, Shm];
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn acked() -> PublishOptions {
    PublishOptions {
        ack: true,
        priority: 0,
    }
}

/// Publish retained and wait for the hub's answer.
fn retain(c: &mut Client, channel: &str, payload: &[u8]) -> Result<u32, (u16, String)> {
    let seq = c.publish_retained(channel, payload, acked()).unwrap();
    loop {
        match c.next_event(WAIT).unwrap() {
            Some(Event::Ack { seq: s, delivered }) if s == seq => return Ok(delivered),
            Some(Event::Error { seq: s, code, text }) if s == seq => return Err((code, text)),
            Some(_) => {}
            None => panic!("no answer to a retained publish"),
        }
    }
}

fn next_message(c: &mut Client) -> Message {
    c.recv(WAIT).unwrap().expect("a message within 10 s")
}

/// Nothing more arrives within a short while (a quiet channel stays quiet).
fn nothing_more(c: &mut Client) {
    if let Some(m) = c.recv(Some(Duration::from_millis(300))).unwrap() {
        panic!("unexpected message {m:?}");
    }
}

#[test]
fn late_subscribers_get_the_retained_value_first_on_every_transport() {
    let hub = Hub::start();
    for &from in TRANSPORTS {
        let chan = format!("state/{}/door", from.name());
        let mut publisher = hub.client_via(from);
        assert_eq!(retain(&mut publisher, &chan, b"open").unwrap(), 0);
        assert_eq!(retain(&mut publisher, &chan, b"closed").unwrap(), 0);
        for &to in TRANSPORTS {
            for pattern in [chan.clone(), "state/+/door".into(), "#".into()] {
                let mut sub = hub.subscriber(to, &pattern);
                let what = format!("{} -> {} via '{pattern}'", from.name(), to.name());
                let m = loop {
                    // Under '#', other channels' retained values come too.
                    let m = next_message(&mut sub);
                    assert!(m.retained, "{what}: {m:?}");
                    if m.channel == chan {
                        break m;
                    }
                };
                assert_eq!(
                    (m.channel.as_str(), &m.payload[..], m.retained),
                    (chan.as_str(), &b"closed"[..], true),
                    "{what}"
                );
                assert_eq!(m.origin, publisher.id(), "{what}");
                // Then live messages, marked as such.
                publisher
                    .publish_with(&chan, b"live", acked())
                    .and_then(|_| publisher.flush())
                    .unwrap();
                let live = loop {
                    // Under '#', retained values sorted after ours come too.
                    let m = next_message(&mut sub);
                    if m.channel == chan {
                        break m;
                    }
                    assert!(m.retained, "{what}: {m:?}");
                };
                assert_eq!(
                    (&live.payload[..], live.retained),
                    (&b"live"[..], false),
                    "{what}"
                );
            }
        }
        // Drain the ACKs of the live publishes.
        while publisher
            .next_event(Some(Duration::from_millis(50)))
            .unwrap()
            .is_some()
        {}
    }
}

#[test]
fn an_empty_retained_publish_clears_it_and_subscribers_may_skip_it() {
    let hub = Hub::start();
    let mut p = hub.client();
    retain(&mut p, "lamp", b"on").unwrap();
    let mut skip = hub.client();
    skip.subscribe_with(
        "lamp",
        SubscribeOptions {
            retained: false,
            ..Default::default()
        },
    )
    .unwrap();
    nothing_more(&mut skip);
    let mut s = hub.subscriber(Socket, "lamp");
    assert_eq!(next_message(&mut s).payload, b"on");
    // The clearing publish is delivered live (empty), then nothing is retained.
    assert_eq!(retain(&mut p, "lamp", b"").unwrap(), 2);
    assert_eq!(next_message(&mut s).payload, b"");
    // (Not shm: an shm reader of a channel without a retained value reads
    // it through a channel ring, which keeps retained values off it; see
    // a_channel_ring_and_a_retained_value_exclude_each_other.)
    let mut late = hub.subscriber(Mqueue, "lamp");
    nothing_more(&mut late);
    // A plain publish does not touch the retained value.
    retain(&mut p, "lamp", b"dim").unwrap();
    p.publish_confirmed("lamp", b"flash").unwrap();
    let mut later = hub.subscriber(Pipe, "lamp");
    let m = next_message(&mut later);
    assert_eq!((&m.payload[..], m.retained), (&b"dim"[..], true));
    nothing_more(&mut later);
    let st = p.stats().unwrap();
    assert_eq!(st.totals.retained_messages, 1);
    let ch = st.channels.iter().find(|c| c.name == "lamp").unwrap();
    assert_eq!(ch.retained_bytes, 3 + 4 + 64);
}

#[test]
fn a_retain_channel_keeps_every_message_even_from_shm_writers() {
    let hub = Hub::start_with("[[channel]]\npattern = \"state/#\"\nretain = true\n");
    for &from in TRANSPORTS {
        let chan = format!("state/{}", from.name());
        let mut p = hub.client_via(from);
        for v in [&b"1"[..], b"2", b"3"] {
            p.publish_confirmed(&chan, v).unwrap();
        }
        for &to in TRANSPORTS {
            let mut s = hub.subscriber(to, &chan);
            let m = next_message(&mut s);
            assert_eq!(
                (&m.payload[..], m.retained),
                (&b"3"[..], true),
                "{} -> {}",
                from.name(),
                to.name()
            );
        }
    }
    // Plain channels outside the pattern retain nothing.
    let mut p = hub.client();
    p.publish_confirmed("other", b"x").unwrap();
    let mut s = hub.subscriber(Socket, "other");
    nothing_more(&mut s);
}

/// The seam: while a publisher retains 1, 2, 3, … as fast as it can, each
/// new subscriber (every transport, exact and wildcard) gets some value k as
/// the retained one and then exactly k+1, k+2, … live: no gap, no duplicate.
#[test]
fn the_seam_between_retained_and_live_has_no_gap_and_no_duplicate() {
    let hub = Hub::start();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut p = hub.client();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                p.publish_retained("seam/counter", &n.to_le_bytes(), PublishOptions::default())
                    .unwrap();
                if n.is_multiple_of(64) {
                    p.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            p.flush().unwrap();
            n
        })
    };
    // Let it get going.
    std::thread::sleep(Duration::from_millis(100));
    for round in 0..3 {
        for &t in TRANSPORTS {
            for pattern in ["seam/counter", "seam/#"] {
                let mut s = hub.subscriber(t, pattern);
                let first = next_message(&mut s);
                assert!(first.retained, "{round} {} {pattern}", t.name());
                let start = u64::from_le_bytes(first.payload[..8].try_into().unwrap());
                for want in start + 1..=start + 200 {
                    let m = next_message(&mut s);
                    let got = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                    assert!(!m.retained);
                    assert_eq!(
                        got,
                        want,
                        "{round} {} {pattern}: gap or duplicate",
                        t.name()
                    );
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(publisher.join().unwrap() > 200);
}

fn open_hub(config: &str) -> Hub {
    let hub = Hub::start_with(config);
    std::fs::set_permissions(hub.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    hub
}

/// `ipchubctl ARGS` as user nobody.
fn as_nobody(hub: &Hub, args: &[&str]) -> Output {
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
}

#[test]
fn retained_values_obey_the_read_rules() {
    let hub = open_hub(
        "[access]\ndefault = \"allow\"\n[[access.rule]]\npattern = \"secure/#\"\npublish = [\"uid:0\"]\nsubscribe = [\"uid:0\"]\n",
    );
    let mut p = hub.client();
    retain(&mut p, "secure/code", b"1234").unwrap();
    retain(&mut p, "open/news", b"hello").unwrap();
    // nobody's wildcard gets what it may read, never the secret.
    let out = as_nobody(&hub, &["sub", "-c", "#", "--timeout", "1", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"payload\":\"hello\""), "{text}");
    assert!(text.contains("\"retained\":true"), "{text}");
    assert!(!text.contains("1234"), "{text}");
    // The exact channel is refused as any subscription is.
    let out = as_nobody(&hub, &["sub", "-c", "secure/code", "--timeout", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not subscribe"));
}

#[test]
fn retained_bytes_are_bounded_per_uid_and_in_total() {
    let hub = open_hub("[hub]\nmax_retained_bytes = 1500\nmax_retained_bytes_per_uid = 1000\n");
    let big = "x".repeat(900);
    // nobody may keep one value of 900 bytes, not two.
    let out = as_nobody(&hub, &["pub", "--retain", "-c", "n/a", &big]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_nobody(&hub, &["pub", "--retain", "-c", "n/b", &big]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub.max_retained_bytes_per_uid"), "{err}");
    // Replacing its own value frees the old one first.
    let out = as_nobody(&hub, &["pub", "--retain", "-c", "n/a", &big]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A refused retained publish is not delivered either.
    let mut s = hub.subscriber(Socket, "n/b");
    nothing_more(&mut s);
    // nobody's value outlives its client, and the CLI shows it on subscribe.
    let out = Command::new(IPCHUBCTL)
        .args(["sub", "-c", "n/a", "-n", "1", "--timeout", "5"])
        .env("IPCHUB_SOCKET", &hub.socket)
        .output_within(LIMIT)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("[n/a] {big}")
    );
    let out = Command::new(IPCHUBCTL)
        .args(["sub", "-c", "n/a", "--no-retained", "--timeout", "0.5"])
        .env("IPCHUB_SOCKET", &hub.socket)
        .output_within(LIMIT)
        .unwrap();
    assert!(out.stdout.is_empty());
    // Root's values count against the total: 934 + 934 > 1500.
    let mut p = hub.client();
    let (code, text) = retain(&mut p, "r/1", big.as_bytes()).unwrap_err();
    assert_eq!(code, ErrorCode::LimitReached as u16);
    assert!(text.contains("hub.max_retained_bytes "), "{text}");
    retain(&mut p, "r/small", b"s").unwrap();
    retain(&mut p, "r/small", b"").unwrap();
    // Clearing (anyone allowed to publish there may) gives room back.
    retain(&mut p, "n/a", b"").unwrap();
    retain(&mut p, "r/1", big.as_bytes()).unwrap();
    retain(&mut p, "r/1", b"").unwrap();
}

#[test]
fn a_channel_ring_and_a_retained_value_exclude_each_other() {
    let hub = Hub::start();
    // An shm reader gets a ring for a channel with no retained value …
    let mut reader = hub.subscriber(Shm, "ringed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub
        .client()
        .stats()
        .unwrap()
        .channels
        .iter()
        .any(|c| c.name == "ringed" && c.ring)
    {
        assert!(Instant::now() < deadline, "no ring was made");
        std::thread::sleep(Duration::from_millis(20));
    }
    // … so a retained publish there is refused with a reason, and not delivered.
    let mut p = hub.client();
    let (code, text) = retain(&mut p, "ringed", b"v").unwrap_err();
    assert_eq!(code, ErrorCode::NotPermitted as u16);
    assert!(text.contains("channel ring"), "{text}");
    nothing_more(&mut reader);
    // A channel holding a retained value gets no ring: shm readers are relayed.
    retain(&mut p, "held", b"v").unwrap();
    let mut r = hub.subscriber(Shm, "held");
    assert!(next_message(&mut r).retained);
    let st = p.stats().unwrap();
    assert!(!st.channels.iter().any(|c| c.name == "held" && c.ring));
}

/// The new flag bits only widen what decodes: every fuzz corpus input runs
/// through the decoder as the fuzz target does, and a frame with each new
/// flag decodes while bits 6..7 are still refused.
#[test]
fn the_fuzz_corpus_still_decodes_and_new_flags_are_known() {
    use ipchub::wire::{self, FrameType};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut frames = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let mut off = 0;
        while off < data.len() {
            match wire::decode(&data[off..], 4096) {
                Ok(Some((f, used))) => {
                    assert_eq!(used, f.header.frame_len());
                    frames += 1;
                    off += used;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert!(frames > 0);
    for flag in [
        wire::RETAIN,
        wire::WITH_RETAINED,
        wire::CHANNEL_SEQ,
        wire::REPLAY,
        wire::RETAIN_AS_PUBLISHED,
    ] {
        let mut v = Vec::new();
        wire::encode(&mut v, FrameType::Subscribe, flag, 0, "a", b"", 0, 1);
        assert!(wire::decode(&v, 4096).unwrap().is_some(), "{flag:#x}");
    }
    for bit in 6..8 {
        let mut v = Vec::new();
        wire::encode(&mut v, FrameType::Subscribe, 1 << bit, 0, "a", b"", 0, 1);
        assert!(wire::decode(&v, 4096).is_err(), "bit {bit}");
    }
}

/// A subscriber that asks (`retain_as_published`, SUBSCRIBE flag
/// RETAIN_AS_PUBLISHED) sees live retained publishes marked retained, on
/// plain channels and on channels with history (with their number); one
/// that does not sees them as ordinary messages, as before.
#[test]
fn live_retained_publishes_are_marked_only_for_subscribers_that_ask() {
    let hub = Hub::start_with(
        "[[channel]]\npattern = \"numbered/#\"\nhistory_messages = 10\nretain = true\n",
    );
    for &t in &[Socket, Mqueue] {
        let marked_opts = SubscribeOptions {
            retain_as_published: true,
            ..Default::default()
        };
        let mut marked = hub.client_via(t);
        let (live, numbered) = (
            format!("live/{}", t.name()),
            format!("numbered/{}", t.name()),
        );
        marked
            .subscribe_with(&format!("{live}/#"), marked_opts)
            .unwrap();
        marked
            .subscribe_with(&format!("{numbered}/#"), marked_opts)
            .unwrap();
        let mut plain = hub.client_via(t);
        plain.subscribe(&format!("{live}/#")).unwrap();
        plain.subscribe(&format!("{numbered}/#")).unwrap();
        let mut p = hub.client();
        let chan = format!("{live}/x");
        retain(&mut p, &chan, b"on").unwrap();
        p.publish_confirmed(&chan, b"ordinary").unwrap();
        let m = next_message(&mut marked);
        assert_eq!((&m.payload[..], m.retained), (&b"on"[..], true), "{t:?}");
        let m = next_message(&mut marked);
        assert_eq!((&m.payload[..], m.retained), (&b"ordinary"[..], false));
        let m = next_message(&mut plain);
        assert_eq!((&m.payload[..], m.retained), (&b"on"[..], false), "{t:?}");
        let m = next_message(&mut plain);
        assert_eq!((&m.payload[..], m.retained), (&b"ordinary"[..], false));
        // A channel retained by rule, with history: marked and numbered.
        let chan = format!("{numbered}/x");
        p.publish_confirmed(&chan, b"n1").unwrap();
        let m = next_message(&mut marked);
        assert_eq!((&m.payload[..], m.retained), (&b"n1"[..], true));
        assert!(m.channel_seq.is_some(), "{m:?}");
        let m = next_message(&mut plain);
        assert_eq!((&m.payload[..], m.retained), (&b"n1"[..], false));
        assert!(m.channel_seq.is_some(), "{m:?}");
        nothing_more(&mut marked);
        nothing_more(&mut plain);
    }
}
