//! A hostile participant of a channel ring (issue #13, B8-B12 and A6):
//! each test maps the ring as a participant does and writes into it what
//! PROTOCOL.md §6.2 says nobody should, then checks that the hub neither
//! spins nor blames a bystander, that the honest participants keep working
//! (moved to a fresh ring), and that ring quotas hold.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, Hub, IPCHUBCTL};
use ipchub::client::{Client, Event};
use ipchub::hub::TransportKind::{Shm, Socket};
use ipchub::wire::{self, FrameType};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));
/// A small ring (it fills fast) and a short block timeout.
const CFG: &str =
    "[hub]\nblock_timeout_ms = 500\nmax_message_size = 1024\n[shm]\nchannel_ring_size = 4096\n";

// Offsets of PROTOCOL.md §6.2.
const LOCK: usize = 144;
const WAKE_HUB: usize = 256;
fn slot(s: usize) -> usize {
    4096 + 128 * s
}
const TOKEN: usize = 0;
const READ_POS: usize = 8;
const WAIT_DATA: usize = 16;

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The hub does not spin: over 2 s it uses well under a core (a spin is
/// ~200 ticks; this allows 40 for the shared, loaded test machine).
fn assert_hub_not_spinning(hub: &Hub, when: &str) {
    let before = cpu_ticks(hub.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(hub.pid()) - before;
    assert!(used <= 40, "{when}: the hub used {used} ticks in 2 s");
}

/// Run `f` on a thread and wait for it with a deadline (a wedged channel
/// must fail the test, not hang it).
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = std::thread::spawn(f);
    let t0 = Instant::now();
    while !h.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what} never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    h.join().unwrap()
}

/// The next message, skipping MISSED notices; panics on an error.
fn next_message(c: &mut Client, timeout: Duration) -> Option<ipchub::client::Message> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(Some(left)).unwrap() {
            Some(Event::Message(m)) => return Some(m),
            Some(Event::Missed(_)) => continue,
            Some(other) => panic!("unexpected {other:?}"),
            None => return None,
        }
    }
}

/// `c` keeps receiving on `channel`: `p` publishes until `c` gets one.
fn still_receives(p: &mut Client, c: &mut Client, channel: &str) {
    let t0 = Instant::now();
    loop {
        p.publish(channel, b"still here").unwrap();
        p.flush().unwrap();
        if let Some(m) = next_message(c, Duration::from_millis(200)) {
            if m.payload == b"still here" {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nothing arrives on '{channel}' any more"
        );
    }
}

/// Nobody was disconnected as a culprit (the log names each one).
fn nobody_blamed(hub: &Hub) {
    let log = hub.log();
    for blame in ["write lock for more than", "not reading channel ring"] {
        assert!(!log.contains(blame), "a participant was blamed:\n{log}");
    }
}

/// B8: the hub's own token (slot 0, readable by every participant) written
/// into the ring lock wedged every writer for good, with nobody
/// disconnected, and the hub spun at 100 % even after the attacker left.
#[test]
fn the_hubs_token_in_the_lock_costs_at_most_the_block_timeout() {
    let hub = Hub::start_with(CFG);
    let mut relayed = hub.subscriber(Socket, "b8/a"); // the hub reads the ring
    let mut sub = hub.subscriber(Shm, "b8/a");
    let mut honest = hub.client_via(Shm);
    honest.publish("b8/a", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    assert_eq!(relayed.recv(WAIT).unwrap().unwrap().payload, b"one");
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b8/a", b"hi").unwrap();
    let hub_token = attacker
        .peek_ring_for_test("b8/a", slot(0) + TOKEN)
        .unwrap();
    assert_ne!(hub_token, 0);
    assert!(attacker.poke_ring_for_test("b8/a", LOCK, hub_token));
    let mut honest = finishes("the honest publisher", move || {
        for i in 0..3u8 {
            honest.publish("b8/a", &[i]).unwrap();
        }
        honest.flush().unwrap();
        honest
    });
    assert_hub_not_spinning(&hub, "with the attacker connected");
    drop(attacker);
    assert_hub_not_spinning(&hub, "after the attacker left");
    still_receives(&mut honest, &mut sub, "b8/a");
    still_receives(&mut honest, &mut relayed, "b8/a");
    assert!(hub.log().contains("channel ring retired"));
    nobody_blamed(&hub);
}

/// B8: values rotated into the lock (never zero for long) wedge nobody for
/// more than the block timeout either.
#[test]
fn rotating_values_in_the_lock_do_not_wedge_the_channel() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b8/r");
    let mut honest = hub.client_via(Shm);
    honest.publish("b8/r", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    let attacker = hub.client_via(Shm);
    let mut attacker = attacker;
    attacker.publish("b8/r", b"hi").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (stop2, started2) = (stop.clone(), started.clone());
    let spinner = std::thread::spawn(move || {
        let mut v = 1u64;
        while !stop2.load(Ordering::Relaxed) {
            assert!(attacker.poke_ring_for_test("b8/r", LOCK, v));
            started2.store(true, Ordering::Relaxed);
            v = v.wrapping_add(1).max(1); // never the same twice, never free
        }
        attacker
    });
    wait_for(|| started.load(Ordering::Relaxed), "the attack");
    let mut honest = finishes("the honest publisher", move || {
        for i in 0..3u8 {
            honest.publish("b8/r", &[i]).unwrap();
            honest.flush().unwrap();
        }
        honest
    });
    still_receives(&mut honest, &mut sub, "b8/r");
    stop.store(true, Ordering::Relaxed);
    drop(spinner.join().unwrap());
    assert_hub_not_spinning(&hub, "after the attack");
    nobody_blamed(&hub);
}

/// B9: a phantom reader (a token and a cursor written into a slot the hub
/// never handed out) wedged the ring and the hub spun at one core.
#[test]
fn a_phantom_reader_does_not_wedge_the_ring() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b9/a");
    let mut honest = hub.client_via(Shm);
    honest.publish("b9/a", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b9/a", b"hi").unwrap();
    assert!(attacker.poke_ring_for_test("b9/a", slot(40) + READ_POS, 0));
    assert!(attacker.poke_ring_for_test("b9/a", slot(40) + TOKEN, 0xdead_beef));
    // Far more than the 4 KiB ring holds: the phantom's cursor at 0 would
    // hold the writer back for good.
    let reader = std::thread::spawn(move || {
        let mut last = None;
        while let Some(m) = next_message(&mut sub, Duration::from_secs(5)) {
            last = Some(m.payload);
            if last.as_deref() == Some(b"last") {
                break;
            }
        }
        (sub, last)
    });
    let _honest = finishes("the honest publisher", move || {
        for i in 0..300u32 {
            honest
                .publish("b9/a", &[i.to_le_bytes().as_slice(), &[7; 100]].concat())
                .unwrap();
        }
        honest.publish("b9/a", b"last").unwrap();
        honest.flush().unwrap();
        honest
    });
    let (_sub, last) = reader.join().unwrap();
    assert_eq!(last.as_deref(), Some(&b"last"[..]));
    assert_hub_not_spinning(&hub, "with the phantom in place");
    drop(attacker);
    nobody_blamed(&hub);
}

/// B10: an innocent reader's id written into the lock got that reader
/// disconnected as the lock's holder.
#[test]
fn an_innocent_readers_id_in_the_lock_does_not_get_it_disconnected() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b10/a");
    let mut honest = hub.client_via(Shm);
    honest.publish("b10/a", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b10/a", b"hi").unwrap();
    assert!(attacker.poke_ring_for_test("b10/a", LOCK, u64::from(sub.id())));
    // Well past the block timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let mut honest = finishes("the honest publisher", move || {
        honest.publish("b10/a", b"two").unwrap();
        honest.flush().unwrap();
        honest
    });
    still_receives(&mut honest, &mut sub, "b10/a");
    nobody_blamed(&hub);
    drop(attacker);
}

/// B11: wait marks cleared as fast as the reader sets them: the reader
/// never heard of new data. The hub's own look at the ring wakes it.
#[test]
fn cleared_wait_marks_do_not_leave_a_reader_asleep() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b11/a");
    let mut honest = hub.client_via(Shm);
    honest.publish("b11/a", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b11/a", b"hi").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"hi");
    let sub_slot = (1..64)
        .find(|s| {
            attacker.peek_ring_for_test("b11/a", slot(*s) + TOKEN) == Some(u64::from(sub.id()))
        })
        .expect("the reader's slot");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let clearer = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            attacker.poke_ring_for_test("b11/a", slot(sub_slot) + WAIT_DATA, 0);
            attacker.poke_ring_for_test("b11/a", WAKE_HUB, 0);
        }
        attacker
    });
    let reader = std::thread::spawn(move || {
        // Waiting longer than the test allows: a timeout would wake the
        // reader itself and hide the lost wake-up.
        let m = next_message(&mut sub, Duration::from_secs(8));
        (sub, m, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300)); // the reader sleeps
    let published = Instant::now();
    honest.publish("b11/a", b"wake up").unwrap();
    honest.flush().unwrap();
    let (_sub, m, at) = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    drop(clearer.join().unwrap());
    assert_eq!(
        m.map(|m| m.payload).as_deref(),
        Some(&b"wake up"[..]),
        "the reader slept through the message"
    );
    let late = at - published;
    assert!(
        late < Duration::from_secs(3),
        "the reader heard of the message only after {late:?}"
    );
    nobody_blamed(&hub);
}

/// B11: a hole punched into the memfd (which zeroes the header and every
/// slot) must neither crash the hub nor leave readers asleep.
#[test]
fn a_hole_punched_in_the_ring_retires_it() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b11/p");
    let mut honest = hub.client_via(Shm);
    honest.publish("b11/p", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    // The attacker's descriptor of the memfd: the same file as the hub's.
    let memfd = std::fs::read_dir(format!("/proc/{}/fd", hub.pid()))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("ipchub-channel"))
        })
        .expect("the ring's memfd");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(memfd.path())
        .unwrap();
    let len = f.metadata().unwrap().len() as i64;
    // SAFETY: fallocate on a descriptor we own, no memory involved.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let reader = std::thread::spawn(move || {
        let m = next_message(&mut sub, Duration::from_secs(10));
        (sub, m)
    });
    let t0 = Instant::now();
    while !reader.is_finished() && t0.elapsed() < Duration::from_secs(10) {
        honest.publish("b11/p", b"after").unwrap();
        honest.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut sub, m) = reader.join().unwrap();
    assert_eq!(m.map(|m| m.payload).as_deref(), Some(&b"after"[..]));
    still_receives(&mut honest, &mut sub, "b11/p");
    assert!(hub.log().contains("channel ring retired"));
    assert_hub_not_spinning(&hub, "after the hole");
    nobody_blamed(&hub);
}

/// B12: a record's `origin` naming another client reached the hub's
/// subscribers as if that client had published it.
#[test]
fn a_forged_origin_does_not_reach_the_hubs_subscribers() {
    let hub = Hub::start_with(CFG);
    let mut relayed = hub.subscriber(Socket, "b12/a");
    let victim = hub.client(); // never publishes
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b12/a", b"mine").unwrap();
    let m = relayed.recv(WAIT).unwrap().unwrap();
    assert_eq!(m.origin, attacker.id());
    let mut forged = Vec::new();
    wire::encode(
        &mut forged,
        FrameType::Data,
        0,
        0,
        "b12/a",
        b"forged",
        victim.id(),
        1,
    );
    assert!(attacker.write_ring_record_for_test("b12/a", &forged));
    wait_for(
        || hub.log().contains("channel ring retired"),
        "the hub retires the ring",
    );
    while let Some(m) = relayed.recv(Some(Duration::from_millis(300))).unwrap() {
        assert_ne!(
            m.origin,
            victim.id(),
            "a forged origin reached a subscriber"
        );
    }
    // The channel carries on.
    let mut p = hub.client_via(Shm);
    still_receives(&mut p, &mut relayed, "b12/a");
}

/// B12: a well-framed record that is not a DATA frame on the ring's
/// channel retires the ring (PROTOCOL.md §6.2), rather than being skipped.
#[test]
fn a_foreign_frame_in_the_ring_retires_it() {
    for (ty, channel) in [(FrameType::Ping, ""), (FrameType::Data, "b12/other")] {
        let hub = Hub::start_with(CFG);
        let mut relayed = hub.subscriber(Socket, "b12/f");
        let mut attacker = hub.client_via(Shm);
        attacker.publish("b12/f", b"mine").unwrap();
        assert_eq!(relayed.recv(WAIT).unwrap().unwrap().payload, b"mine");
        let mut rec = Vec::new();
        wire::encode(&mut rec, ty, 0, 0, channel, b"x", attacker.id(), 1);
        assert!(attacker.write_ring_record_for_test("b12/f", &rec));
        wait_for(
            || hub.log().contains("channel ring retired"),
            "the hub retires the ring",
        );
        let mut p = hub.client_via(Shm);
        still_receives(&mut p, &mut relayed, "b12/f");
    }
}

/// `ipchubctl sub` on `channel` over shm as user nobody.
fn nobody_sub(hub: &Hub, channel: &str) -> Child {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            IPCHUBCTL,
            "sub",
            "-t",
            "shm",
            "-c",
            channel,
        ])
        .env("IPCHUB_SOCKET", &hub.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux) is needed")
}

fn rings_created(hub: &Hub) -> usize {
    hub.log().matches("channel ring created").count()
}

/// A6: one client, and one uid, may hold only so many rings (count and
/// bytes); past that the hub relays the channel (RING_UNAVAILABLE naming
/// the key), and another uid still gets its ring.
#[test]
fn rings_are_bounded_per_client_and_per_uid() {
    // The test directory must be reachable for nobody.
    let hub = Hub::start_with(
        "[hub]\nmax_message_size = 1024\n[shm]\nchannel_ring_size = 65536\nmax_rings_per_client = 2\nmax_rings_per_uid = 3\n",
    );
    std::fs::set_permissions(
        hub.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Per client: the third channel is relayed, and still works.
    let mut greedy = hub.client_via(Shm);
    for i in 0..5 {
        greedy.subscribe(&format!("a6/c/{i}")).unwrap();
    }
    assert_eq!(rings_created(&hub), 2);
    assert!(hub.log().contains("shm.max_rings_per_client"));
    let mut p = hub.client();
    still_receives(&mut p, &mut greedy, "a6/c/4");
    drop(greedy);
    // Per uid, across clients: four clients of nobody get three rings.
    let mut subs: Vec<Child> = (0..4)
        .map(|i| nobody_sub(&hub, &format!("a6/u/{i}")))
        .collect();
    for i in 0..4 {
        hub.wait_subscribers(&format!("a6/u/{i}"), 1);
    }
    assert_eq!(rings_created(&hub), 5, "{}", hub.log());
    assert!(hub
        .log()
        .contains("uid 65534 holds 3 channel rings already (limit shm.max_rings_per_uid)"));
    // Root, another uid, still gets its ring.
    let mut bystander = hub.subscriber(Shm, "a6/root");
    assert_eq!(rings_created(&hub), 6);
    still_receives(&mut p, &mut bystander, "a6/root");
    for s in &mut subs {
        s.kill().unwrap();
        s.wait_within(LIMIT).unwrap();
    }
}

/// A6: ring memory is charged to the uid in bytes, too.
#[test]
fn ring_bytes_are_charged_to_the_uid() {
    let hub = Hub::start_with(
        "[hub]\nmax_message_size = 1024\n[shm]\nchannel_ring_size = 1048576\nmax_ring_bytes_per_uid = 3000000\n",
    );
    let mut c = hub.client_via(Shm);
    for i in 0..4 {
        c.subscribe(&format!("a6/b/{i}")).unwrap();
    }
    assert_eq!(rings_created(&hub), 2, "two 1 MiB rings fit in 3 MB");
    assert!(hub.log().contains("shm.max_ring_bytes_per_uid"));
}

/// A6: rings cannot use up the hub's descriptors: with a low descriptor
/// limit (below what the default ring quotas would allow), a client
/// opening rings on many channels still leaves the hub able to accept.
#[test]
fn rings_leave_the_hub_descriptors_to_accept_with() {
    let hub = Hub::start_with_nofile(
        "[shm]\nchannel_ring_size = 4096\n[hub]\nmax_message_size = 1024\n",
        256,
    );
    let mut greedy = hub.client_via(Shm);
    for i in 0..200 {
        greedy.subscribe(&format!("a6/fd/{i}")).unwrap();
    }
    let mut others: Vec<Client> = (0..20).map(|_| hub.client()).collect();
    for c in &mut others {
        c.stats().unwrap();
    }
    let mut p = hub.client();
    still_receives(&mut p, &mut greedy, "a6/fd/199");
}

/// B12, where the hub does not read the ring (it has no subscribers of its
/// own there): the direct reader that meets the foreign record reports it,
/// and the hub retires the ring.
#[test]
fn a_foreign_frame_seen_only_by_a_direct_reader_retires_the_ring() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b12/d");
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b12/d", b"mine").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"mine");
    let mut rec = Vec::new();
    wire::encode(&mut rec, FrameType::Ping, 0, 0, "", b"", attacker.id(), 1);
    assert!(attacker.write_ring_record_for_test("b12/d", &rec));
    match sub.next_event(WAIT).unwrap() {
        Some(Event::Missed(1)) => {}
        other => panic!("expected MISSED(1), got {other:?}"),
    }
    wait_for(
        || hub.log().contains("channel ring retired"),
        "the hub retires the ring",
    );
    let mut p = hub.client_via(Shm);
    still_receives(&mut p, &mut sub, "b12/d");
    nobody_blamed(&hub);
}

/// B10/B11: an innocent reader's cursor rewritten (as any participant can)
/// to hold the writers back does not get that reader disconnected as slow:
/// it takes its wake-ups, so the hub cannot pin the stall on it and
/// retires the ring instead.
#[test]
fn a_forged_cursor_does_not_get_an_innocent_reader_disconnected() {
    let hub = Hub::start_with(CFG);
    let mut sub = hub.subscriber(Shm, "b10/c");
    let mut honest = hub.client_via(Shm);
    honest.publish("b10/c", b"one").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"one");
    let mut attacker = hub.client_via(Shm);
    attacker.publish("b10/c", b"hi").unwrap();
    assert_eq!(sub.recv(WAIT).unwrap().unwrap().payload, b"hi");
    let sub_slot = (1..64)
        .find(|s| {
            attacker.peek_ring_for_test("b10/c", slot(*s) + TOKEN) == Some(u64::from(sub.id()))
        })
        .expect("the reader's slot");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (stop2, started2) = (stop.clone(), started.clone());
    let forger = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            attacker.poke_ring_for_test("b10/c", slot(sub_slot) + READ_POS, 0);
            started2.store(true, Ordering::Relaxed);
        }
        attacker
    });
    wait_for(|| started.load(Ordering::Relaxed), "the attack");
    let reader = std::thread::spawn(move || {
        let mut last = None;
        while let Some(m) = next_message(&mut sub, Duration::from_secs(5)) {
            last = Some(m.payload);
            if last.as_deref() == Some(b"last") {
                break;
            }
        }
        (sub, last)
    });
    let _honest = finishes("the honest publisher", move || {
        for i in 0..300u32 {
            honest
                .publish("b10/c", &[i.to_le_bytes().as_slice(), &[7; 100]].concat())
                .unwrap();
        }
        honest.publish("b10/c", b"last").unwrap();
        honest.flush().unwrap();
        honest
    });
    let (_sub, last) = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    drop(forger.join().unwrap());
    assert_eq!(last.as_deref(), Some(&b"last"[..]));
    nobody_blamed(&hub);
}

/// B12 across users: every ring participant can write every byte, so a
/// writer could pass itself off as anyone to the ring's direct readers. A
/// ring is therefore shared only by the clients of one uid: nobody's
/// subscriber owns the ring of `b12/users`, root's shm clients on the
/// same channel get no slot in it (the hub relays to them, stamping and
/// checking each origin), and both sides still get every message.
#[test]
fn a_ring_is_never_shared_across_users() {
    let hub = Hub::start_with(CFG);
    std::fs::set_permissions(
        hub.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut theirs = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            IPCHUBCTL,
            "sub",
            "-t",
            "shm",
            "-l",
            "-c",
            "b12/users",
        ])
        .env("IPCHUB_SOCKET", &hub.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux) is needed");
    hub.wait_subscribers("b12/users", 1);
    wait_for(|| rings_created(&hub) == 1, "nobody's ring");
    // Root's reader and writer on the same channel: refused the ring.
    let mut mine = hub.subscriber(Shm, "b12/users");
    let mut writer = hub.client_via(Shm);
    writer.publish("b12/users", b"from root").unwrap();
    writer.flush().unwrap();
    let m = next_message(&mut mine, Duration::from_secs(10)).expect("root's message");
    assert_eq!(m.payload, b"from root");
    assert_eq!(m.origin, writer.id());
    assert_eq!(rings_created(&hub), 1, "{}", hub.log());
    assert!(
        hub.log().contains(
            "is shared by another user's clients, and a ring is never shared across users"
        ),
        "{}",
        hub.log()
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(theirs.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "from root\n");
    theirs.kill().unwrap();
    let _ = theirs.wait_within(LIMIT);
}
