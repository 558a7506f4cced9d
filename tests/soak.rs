//! Crash soak: clients on every transport are killed with -9 at random
//! while surviving publishers stream under `block`. Every message of a
//! surviving publisher must reach every surviving subscriber exactly once and
//! in order, and the hub's descriptors and IPC objects must return to where
//! they started. Default run is short; IPCHUB_SOAK_SECS=60 runs longer.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, Hub};
use ipchub::client::Event;
use ipchub::hub::TransportKind;

fn soak_secs() -> u64 {
    std::env::var("IPCHUB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn hub_objects(hub: &Hub) -> (usize, usize) {
    (hub.open_fds(), hub.ipc_objects().len())
}

/// A tiny xorshift so the run is random but needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A client process to kill: `ipchubctl sub`, or `ipchubctl pub` fed by `yes`.
struct Victim(Vec<Child>);

impl Victim {
    fn kill(mut self) {
        for c in &mut self.0 {
            let _ = c.kill(); // SIGKILL
            c.wait_within(LIMIT).unwrap();
        }
    }
}

fn victim(hub: &Hub, rng: &mut Rng) -> Victim {
    let t = TransportKind::ALL[(rng.next() % 5) as usize].name();
    if rng.next().is_multiple_of(2) {
        let sub = hub
            .ctl()
            .args(["sub", "-c", "soak/#", "-t", t])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Victim(vec![sub])
    } else {
        let mut yes = std::process::Command::new("yes")
            .arg("victim line")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let publisher = hub
            .ctl()
            .args(["pub", "-c", "soak/victims", "-t", t, "--no-confirm"])
            .stdin(yes.stdout.take().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Victim(vec![publisher, yes])
    }
}

#[test]
fn killing_clients_at_random_loses_nothing_for_the_survivors_and_leaks_nothing() {
    let hub = Hub::start_with(
        "[queue]\nmax_messages = 256\noverflow = \"block\"\n[hub]\nblock_timeout_ms = 2000\n",
    );
    let mut probe = hub.client();
    let base = hub_objects(&hub);

    // Surviving subscribers, one per transport, on the whole tree.
    let mut subs: Vec<_> = TransportKind::ALL
        .iter()
        .map(|&t| (t, hub.subscriber(t, "soak/#")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Surviving publishers, one per transport, each with its own channel.
    let mut pubs = Vec::new();
    for &t in TransportKind::ALL.iter() {
        let mut p = hub.client_via(t);
        let stop = stop.clone();
        pubs.push(std::thread::spawn(move || {
            let chan = format!("soak/{}", t.name());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                p.publish(&chan, &n.to_le_bytes()).unwrap();
                n += 1;
                if n.is_multiple_of(64) {
                    p.flush().unwrap();
                    // Bounded rate: the point is the kills, not the volume,
                    // and the drain at the end must stay short in debug builds.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            p.flush().unwrap();
            (p.id(), n)
        }));
    }
    // Readers: record, per origin, the sequence of payload counters seen.
    let mut readers = Vec::new();
    for (t, mut s) in subs.drain(..) {
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut seen: HashMap<u32, u64> = HashMap::new();
            let mut quiet_since = None;
            loop {
                match s.next_event(Some(Duration::from_millis(200))).unwrap() {
                    Some(Event::Message(m)) if m.channel != "soak/victims" => {
                        let v = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                        let next = seen.entry(m.origin).or_insert(0);
                        assert_eq!(
                            v,
                            *next,
                            "{}: message from client {} out of order or lost",
                            t.name(),
                            m.origin
                        );
                        *next += 1;
                        quiet_since = None;
                    }
                    Some(Event::Missed(n)) => panic!("{}: {n} missed under block", t.name()),
                    Some(_) => {}
                    None if stop.load(Ordering::Relaxed) => {
                        // Done once the stream has been quiet for a while:
                        // longer than block_timeout_ms (2 s here), the
                        // longest a subscriber the hub still has to time
                        // out may hold everyone back under `block`.
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_secs(5) {
                            return (t, seen);
                        }
                    }
                    None => {}
                }
            }
        }));
    }

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64);
    let mut victims: Vec<Victim> = Vec::new();
    let end = Instant::now() + Duration::from_secs(soak_secs());
    let mut killed = 0;
    while Instant::now() < end {
        if victims.len() < 6 {
            victims.push(victim(&hub, &mut rng));
        }
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 150));
        let i = (rng.next() as usize) % victims.len();
        victims.swap_remove(i).kill();
        killed += 1;
    }
    for v in victims {
        v.kill();
    }
    stop.store(true, Ordering::Relaxed);
    let sent: HashMap<u32, u64> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();

    for (t, seen) in &results {
        for (origin, n) in &sent {
            assert_eq!(
                seen.get(origin).copied().unwrap_or(0),
                *n,
                "subscriber via {}: every message of publisher {origin} exactly once (sent {sent:?}, all seen {results:?})",
                t.name()
            );
        }
    }
    assert!(killed >= 5, "the soak must kill clients ({killed})");
    // The survivors are gone now too: everything returns to the start.
    wait_for(
        || probe.stats().unwrap().client_count == 1,
        "all clients gone",
    );
    wait_for(
        || hub_objects(&hub) == base,
        "descriptors and IPC objects back to their starting counts",
    );
}
