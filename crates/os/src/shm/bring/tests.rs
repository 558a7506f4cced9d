//! Single-process tests (threads share the ring as processes would), also
//! under Miri, data-race checker included:
//! `MIRIFLAGS=-Zmiri-disable-weak-memory-emulation cargo +nightly miri test --lib shm::bring`
//! (heap memory instead of a memfd there; the many-writers test runs
//! shorter). The flag works around a Miri panic in its weak-memory
//! emulation (nightly 2026-05-19) on the ring's record words, which are
//! written as atomics and read back as bytes; all 8 tests pass with it.
//! Several processes at once: tests/channel_rings.rs.

use super::*;

/// `n` handles on one ring: mappings of one memfd, or one heap block under
/// Miri (which cannot memfd_create or mmap).
fn handles(cap: usize, policy: Policy, n: usize) -> Vec<BRing> {
    if cfg!(miri) {
        return BRing::heap_handles(cap, policy, n);
    }
    let (first, fd) = BRing::create(cap, policy).expect("create");
    let mut v = vec![first];
    v.extend((1..n).map(|_| BRing::open(&fd).expect("open")));
    v
}

fn pair(cap: usize, policy: Policy) -> (BRing, BRing) {
    let mut v = handles(cap, policy, 2);
    let b = v.pop().unwrap();
    (v.pop().unwrap(), b)
}

fn no_gap(_: &mut Vec<u8>, ev: ReadEvent) {
    assert!(matches!(ev, ReadEvent::Record { .. }), "unexpected {ev:?}");
}

fn rec(writer: u8, n: u32, len: usize) -> Vec<u8> {
    let mut v = vec![writer; len.max(5)];
    v[..4].copy_from_slice(&n.to_le_bytes());
    v
}

#[test]
fn records_arrive_in_order_across_the_wrap() {
    let (w, r) = pair(4096, Policy::Block);
    let mut cur = r.attach(1, 2, true);
    w.attach(0, 1, false);
    let mut got = Vec::new();
    for round in 0..50u32 {
        for i in 0..7u32 {
            let n = round * 7 + i;
            let len = 16 + (n as usize * 13) % 300;
            match w.try_push(1, &[&rec(1, n, len)]).unwrap() {
                Push::Written { seq, .. } => assert_eq!(seq, u64::from(n)),
                other => panic!("push {n}: {other:?}"),
            }
        }
        let mut out = Vec::new();
        let b = r
            .read_batch(&mut cur, &mut out, usize::MAX, no_gap)
            .unwrap();
        assert_eq!(b.records, 7);
        let mut off = 0;
        for i in 0..7u32 {
            let n = round * 7 + i;
            let len = (16 + (n as usize * 13) % 300).max(5);
            assert_eq!(&out[off..off + len], &rec(1, n, len)[..], "record {n}");
            off += len;
            got.push(n);
        }
        assert_eq!(off, out.len());
    }
    assert_eq!(got.len(), 350);
    assert_eq!(w.published(), 350);
}

#[test]
fn block_policy_waits_for_the_slowest_reader() {
    let (w, r) = pair(4096, Policy::Block);
    let mut fast = r.attach(1, 2, true);
    let mut slow = r.attach(2, 3, true);
    w.attach(0, 1, false);
    let msg = [7u8; 500];
    let mut written = 0;
    loop {
        match w.try_push(1, &[&msg]).unwrap() {
            Push::Written { .. } => written += 1,
            Push::Full => break,
            Push::Busy => unreachable!(),
        }
        let mut sink = Vec::new();
        r.read_batch(&mut fast, &mut sink, usize::MAX, no_gap)
            .unwrap();
    }
    assert!(written >= 7, "a 4 KiB ring holds several 500-byte records");
    // The writer sleeps until the slow reader frees a good part of the ring.
    assert!(w.prepare_wait_space(0, msg.len()));
    let mut sink = Vec::new();
    let b = r
        .read_batch(&mut slow, &mut sink, usize::MAX, no_gap)
        .unwrap();
    assert_eq!(b.records, written);
    assert!(
        b.wake_hub,
        "the reader that freed space must get the hub to wake the writer"
    );
    let mut woken = Vec::new();
    assert!(w.wake_scan(|s| woken.push(s)));
    assert_eq!(woken, vec![0]);
    assert!(matches!(
        w.try_push(1, &[&msg]).unwrap(),
        Push::Written { .. }
    ));
}

#[test]
fn drop_oldest_overwrites_and_the_lagging_reader_counts_the_gap() {
    let (w, r) = pair(4096, Policy::DropOldest);
    assert_eq!(r.policy(), Policy::DropOldest);
    let mut cur = r.attach(1, 2, true);
    w.attach(0, 1, false);
    for n in 0..100u32 {
        assert!(matches!(
            w.try_push(1, &[&rec(1, n, 200)]).unwrap(),
            Push::Written { .. }
        ));
    }
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    let b = r
        .read_batch(&mut cur, &mut out, usize::MAX, |o, ev| {
            if let ReadEvent::Gap(n) = ev {
                gaps.push((o.len(), n))
            }
        })
        .unwrap();
    // Each record takes 16 + 200 bytes: at most 18 fit in 4 KiB.
    assert!(b.records > 0 && b.records <= 18, "{b:?}");
    assert_eq!(
        b.missed + b.records as u64,
        100,
        "every message is read or counted"
    );
    assert_eq!(gaps, vec![(0, b.missed)], "the gap notice comes first");
    let first = u32::from_le_bytes(out[..4].try_into().unwrap());
    assert_eq!(u64::from(first), b.missed);
    for (i, chunk) in out.chunks(200).enumerate() {
        assert_eq!(chunk, &rec(1, first + i as u32, 200)[..]);
    }
}

#[test]
fn sleeping_reader_is_woken_through_the_hub_exactly_when_data_arrives() {
    let (w, r) = pair(4096, Policy::Block);
    let cur = r.attach(5, 9, true);
    w.attach(0, 1, false);
    // While nobody sleeps, pushing never asks for a wake-up.
    assert!(matches!(
        w.try_push(1, &[b"a"]).unwrap(),
        Push::Written {
            wake_hub: false,
            ..
        }
    ));
    // Caught up? Not yet: data is there, so the reader must not sleep.
    assert!(!r.prepare_wait_data(&cur));
    let mut cur = cur;
    let mut sink = Vec::new();
    r.read_batch(&mut cur, &mut sink, usize::MAX, |_, _| {})
        .unwrap();
    assert!(r.prepare_wait_data(&cur));
    let mut woken = Vec::new();
    assert!(w.wake_scan(|s| woken.push(s)));
    assert!(woken.is_empty(), "nothing new: nobody is woken");
    match w.try_push(1, &[b"b"]).unwrap() {
        Push::Written { wake_hub, .. } => assert!(wake_hub),
        other => panic!("{other:?}"),
    }
    assert!(w.wake_scan(|s| woken.push(s)));
    assert_eq!(woken, vec![5]);
    // One wake per wait.
    woken.clear();
    assert!(w.wake_scan(|s| woken.push(s)));
    assert!(woken.is_empty());
}

#[test]
fn a_lock_left_by_a_dead_writer_is_broken_by_the_hub() {
    let (w, r) = pair(4096, Policy::Block);
    let mut cur = r.attach(1, 2, true);
    // Writer 7 took the lock and died mid-record.
    w.hdr(Field::Lock).store(7, Ordering::Relaxed);
    assert_eq!(w.try_push(3, &[b"x"]).unwrap(), Push::Busy);
    assert!(w.prepare_wait_lock());
    assert!(!w.break_lock(3), "only the holder's lock is broken");
    assert!(w.break_lock(7));
    assert!(matches!(
        w.try_push(3, &[b"after"]).unwrap(),
        Push::Written { seq: 0, .. }
    ));
    let mut out = Vec::new();
    r.read_batch(&mut cur, &mut out, usize::MAX, no_gap)
        .unwrap();
    assert_eq!(out, b"after");
}

#[test]
fn corrupt_shared_state_is_an_error_not_a_crash() {
    let (w, r) = pair(4096, Policy::Block);
    let mut cur = r.attach(1, 2, true);
    w.try_push(1, &[b"hello"]).unwrap();
    // A hostile participant scribbles a huge length into the record.
    w.data_word(0)
        .unwrap()
        .store(encode_header(MARK_DATA, 1 << 30), Ordering::Relaxed);
    let mut out = Vec::new();
    let e = r.read_batch(&mut cur, &mut out, usize::MAX, |_, _| {});
    assert!(matches!(e, Err(RingError::Corrupt(_))), "{e:?}");
    w.hdr(Field::Tail).store(1 << 40, Ordering::Relaxed);
    assert!(matches!(w.try_push(1, &[b"x"]), Err(RingError::Corrupt(_))));
    #[cfg(not(miri))]
    assert!(BRing::open(
        &nix::sys::memfd::memfd_create(c"x", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap()
    )
    .is_err());
}

#[test]
fn too_large_is_refused_up_front() {
    let (w, _r) = pair(4096, Policy::Block);
    let big = vec![0u8; w.max_record() + 1];
    assert!(matches!(
        w.try_push(1, &[&big]),
        Err(RingError::TooLarge { .. })
    ));
}

/// Four writers and three readers on their own mappings, at once: under
/// `block` every reader gets every record, each writer's in order.
#[test]
fn many_writers_many_readers_lose_nothing() {
    const WRITERS: u8 = 4;
    // Miri runs every access through its checker: a shorter run there.
    const PER: u32 = if cfg!(miri) { 150 } else { 20_000 };
    let mut all = handles(1 << 14, Policy::Block, 1 + 3 + WRITERS as usize);
    let hub = all.remove(0);
    let mut readers = Vec::new();
    for i in 0..3usize {
        let r = all.remove(0);
        let mut cur = hub.attach(10 + i, 100 + i as u64, true);
        readers.push(std::thread::spawn(move || {
            let mut next = [0u32; WRITERS as usize];
            let mut total = 0u32;
            let mut out = Vec::new();
            while total < PER * u32::from(WRITERS) {
                out.clear();
                let b = r.read_batch(&mut cur, &mut out, 1 << 16, no_gap).unwrap();
                if b.records == 0 {
                    std::thread::yield_now();
                    continue;
                }
                for chunk in out.chunks(24) {
                    let n = u32::from_le_bytes(chunk[..4].try_into().unwrap());
                    let wr = chunk[4] as usize;
                    assert_eq!(n, next[wr], "writer {wr} out of order");
                    next[wr] += 1;
                    total += 1;
                }
            }
        }));
    }
    let mut writers = Vec::new();
    for wr in 0..WRITERS {
        let w = all.remove(0);
        writers.push(std::thread::spawn(move || {
            let slot = wr as usize;
            w.attach(slot, 1 + u64::from(wr), false);
            for n in 0..PER {
                let mut m = rec(wr, n, 24);
                m[4] = wr;
                loop {
                    match w.try_push(1 + u64::from(wr), &[&m]).unwrap() {
                        Push::Written { .. } => break,
                        Push::Busy | Push::Full => std::hint::spin_loop(),
                    }
                    std::thread::yield_now();
                }
            }
        }));
    }
    for t in writers {
        t.join().unwrap();
    }
    for t in readers {
        t.join().unwrap();
    }
    assert_eq!(hub.published(), u64::from(PER) * u64::from(WRITERS));
}

/// What the hub checks of a ring (SECURITY.md §4): the header it wrote,
/// positions a correct writer leaves, a reader's corruption report; and a
/// ring it retired refuses writers.
#[test]
fn the_hubs_checks_see_what_a_participant_overwrote() {
    let (hub, other) = pair(4096, Policy::Block);
    assert!(hub.header_intact() && hub.positions_sane() && !hub.reported_corrupt());
    hub.attach(1, 7, false);
    assert!(matches!(
        other.try_push(7, &[&rec(1, 0, 8)]).unwrap(),
        Push::Written { seq: 0, .. }
    ));
    assert!(hub.positions_sane());
    // A participant rewrites the tail past write_pos, then the capacity.
    let tail = other.peek(136);
    other.poke(136, other.write_pos() + 8);
    assert!(!hub.positions_sane());
    other.poke(136, tail);
    other.poke(16, 8192);
    assert!(!hub.header_intact());
    other.poke(16, 4096);
    assert!(hub.header_intact());
    other.report_corrupt();
    assert!(hub.reported_corrupt());
    // Retired: writers are told, whatever they try.
    hub.mark_retired();
    assert!(matches!(
        other.try_push(7, &[&rec(1, 1, 8)]),
        Err(RingError::Corrupt(_))
    ));
    assert_eq!(hub.slot_state(1), (7, NOT_READING));
}
