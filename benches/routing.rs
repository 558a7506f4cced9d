//! Routing cost per publish, in process: `cargo bench --bench routing`.
//!
//! Drives `Hub::handle` frame by frame (no I/O, no daemon), so what it
//! measures is the routing core alone: looking up or creating the channel,
//! finding its subscribers and queueing the message. Each scenario runs with
//! no wildcard patterns held and with 100,000 patterns none of which
//! matches, to show that the cost follows the matching subscriptions, not
//! the patterns held (the subscription trie, docs/SECURITY.md §3). A tiny
//! timing loop, not a statistics package: the figures are medians of a few
//! runs, for a table in BENCHMARKS.md, and no test depends on them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ipchub::config::Config;
use ipchub::hub::{ClientId, Hub, Identity, Step};
use ipchub::wire::{self, FrameType};

const PATTERNS: usize = 100_000;
const PER_CLIENT: usize = 1000;
const PUBLISHES: usize = 100_000;
const RUNS: usize = 5;

fn ident(uid: u32) -> Identity {
    Identity {
        pid: 1,
        uid,
        gid: uid,
    }
}

fn send(hub: &mut Hub, id: ClientId, ty: FrameType, channel: &str, payload: &[u8]) {
    let mut buf = Vec::with_capacity(64);
    wire::encode(&mut buf, ty, 0, 0, channel, payload, 0, 1);
    let (frame, _) = wire::decode(&buf, u32::MAX).unwrap().unwrap();
    assert_eq!(hub.handle(id, &frame, Instant::now()), Step::Continue);
}

/// Empty a client's queue, as the event loop's flush would.
fn drain(hub: &mut Hub, id: ClientId) {
    let q = hub.queue(id).unwrap();
    let n = q.as_slices().0.len() + q.as_slices().1.len();
    q.consume(n);
    hub.flushed(id);
}

struct Setup {
    hub: Hub,
    publisher: ClientId,
    subscriber: ClientId,
    holders: Vec<ClientId>,
}

/// A hub with one subscriber of `bench/live` and `patterns` wildcard
/// patterns (held by other clients of another uid) that match nothing
/// published here: half under other first levels, half starting with `+`.
fn setup(patterns: usize) -> Setup {
    let mut cfg = Config::default();
    cfg.hub.max_subscriptions_per_uid = PATTERNS;
    let mut hub = Hub::new(cfg);
    let publisher = hub.admit(ident(1000)).unwrap();
    let subscriber = hub.admit(ident(1001)).unwrap();
    send(
        &mut hub,
        subscriber,
        FrameType::Subscribe,
        "bench/live",
        b"",
    );
    drain(&mut hub, subscriber);
    let mut holders = Vec::new();
    for c in 0..patterns.div_ceil(PER_CLIENT) {
        let id = hub.admit(ident(2000)).unwrap();
        for i in 0..PER_CLIENT.min(patterns - c * PER_CLIENT) {
            let p = if i % 2 == 0 {
                format!("s{c}/+/{i}/#")
            } else {
                format!("+/p{c}-{i}/#")
            };
            send(&mut hub, id, FrameType::Subscribe, &p, b"");
        }
        drain(&mut hub, id);
        holders.push(id);
    }
    Setup {
        hub,
        publisher,
        subscriber,
        holders,
    }
}

/// Nanoseconds per publish: to `bench/live` (an existing channel with one
/// subscriber), or to a new channel each time.
fn run(s: &mut Setup, fresh: bool, round: usize) -> f64 {
    let names: Vec<String> = (0..PUBLISHES)
        .map(|i| {
            if fresh {
                format!("bench/new{round}-{i}")
            } else {
                "bench/live".to_string()
            }
        })
        .collect();
    let payload = [7u8; 32];
    let mut frames = Vec::with_capacity(PUBLISHES);
    for name in &names {
        let mut buf = Vec::with_capacity(64);
        wire::encode(&mut buf, FrameType::Publish, 0, 0, name, &payload, 0, 0);
        frames.push(buf);
    }
    let t0 = Instant::now();
    let mut busy = Duration::ZERO;
    for (i, buf) in frames.iter().enumerate() {
        let (frame, _) = wire::decode(buf, u32::MAX).unwrap().unwrap();
        black_box(s.hub.handle(s.publisher, &frame, Instant::now()));
        if i % 1024 == 1023 {
            // The flush is the event loop's work, not routing: not timed.
            let t = Instant::now();
            drain(&mut s.hub, s.subscriber);
            drain(&mut s.hub, s.publisher);
            busy += t.elapsed();
        }
    }
    let elapsed = t0.elapsed() - busy;
    drain(&mut s.hub, s.subscriber);
    drain(&mut s.hub, s.publisher);
    elapsed.as_nanos() as f64 / PUBLISHES as f64
}

/// For reference: what the linear matcher the trie replaced spent finding
/// the subscribers of one new channel among the same patterns.
fn linear_reference(patterns: usize) -> f64 {
    let pats: Vec<wire::Pattern> = (0..patterns)
        .map(|n| {
            let (c, i) = (n / PER_CLIENT, n % PER_CLIENT);
            let p = if i % 2 == 0 {
                format!("s{c}/+/{i}/#")
            } else {
                format!("+/p{c}-{i}/#")
            };
            wire::Pattern::parse(&p).unwrap()
        })
        .collect();
    let rounds = 20;
    let t0 = Instant::now();
    for r in 0..rounds {
        let name = format!("bench/new-{r}");
        black_box(pats.iter().filter(|p| p.matches(&name)).count());
    }
    t0.elapsed().as_nanos() as f64 / rounds as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with no argument but `--bench`
    // missing; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("routing: run with `cargo bench --bench routing`");
        return;
    }
    println!("publish cost through Hub::handle (in process, no I/O), median of {RUNS} runs of {PUBLISHES}");
    println!("| scenario | wildcard patterns held (none matching) | ns per publish |");
    println!("|---|---:|---:|");
    for (fresh, what) in [
        (false, "existing channel, 1 subscriber"),
        (true, "new channel every publish, 0 subscribers"),
    ] {
        for patterns in [0, PATTERNS] {
            let t = Instant::now();
            let mut s = setup(patterns);
            let setup_time = t.elapsed();
            let ns = median((0..RUNS).map(|r| run(&mut s, fresh, r)).collect());
            println!("| {what} | {patterns} | {ns:.0} |");
            eprintln!("  (setup of {} holders: {setup_time:?})", s.holders.len());
        }
    }
    let ns = median((0..RUNS).map(|_| linear_reference(PATTERNS)).collect());
    println!(
        "| (before the trie: scanning every pattern for one new channel) | {PATTERNS} | {ns:.0} |"
    );
}
