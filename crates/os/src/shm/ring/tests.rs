//! The ring's tests: single-process (also under Miri), corruption by a
//! hostile peer, the wake-up protocol, and multi-process hammering.

use super::*;
use std::os::fd::AsRawFd;

/// Tiny deterministic PRNG so the randomized tests need no extra crate.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Byte pattern that differs per record and per position, so a misplaced,
/// stale or reordered byte is caught.
fn fill(seq: u64, buf: &mut [u8]) {
    let s = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (s as u8).wrapping_add(i as u8).wrapping_add((i >> 8) as u8);
    }
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(seq, &mut v);
    v
}

/// (producer-side handle, consumer-side handle) over the same memory: two
/// mappings of one memfd, or one heap block under Miri.
#[cfg(not(miri))]
fn pair(cap: usize) -> (Ring, Ring) {
    let (a, fd) = Ring::create(cap).unwrap();
    let b = Ring::open(&fd).unwrap();
    (a, b)
}
#[cfg(miri)]
fn pair(cap: usize) -> (Ring, Ring) {
    heap::pair(cap)
}

#[test]
fn heap_backed_pair_works_like_a_mapping() {
    let (p, c) = heap::pair(4096);
    assert!(p.try_push(&[b"heap"]).unwrap());
    assert_eq!(pop_all(&c), vec![b"heap".to_vec()]);
    assert_eq!(pos(&c, Field::Magic), MAGIC);
}

fn pop_all(r: &Ring) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    r.pop_batch(usize::MAX, |s| v.push(s.to_vec())).unwrap();
    v
}

fn pos(r: &Ring, f: Field) -> u64 {
    r.hdr(f).load(Ordering::Relaxed)
}

fn set(r: &Ring, f: Field, v: u64) {
    r.hdr(f).store(v, Ordering::Relaxed)
}

fn free(r: &Ring) -> usize {
    r.cap - (pos(r, Field::WritePos) - pos(r, Field::ReadPos)) as usize
}

fn expect_corrupt<T: fmt::Debug>(res: Result<T, RingError>) -> &'static str {
    match res {
        Err(RingError::Corrupt(what)) => what,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// ---- 1. unit ------------------------------------------------------------

#[test]
fn sizes_roundtrip_one_by_one_and_batched() {
    let (p, c) = pair(16384);
    let max = p.max_record();
    assert_eq!(max, 8192 - 8);
    let sizes = [0, 1, 7, 8, 4095, max];
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(i as u64, len);
        assert!(p.try_push(&[&data]).unwrap(), "push of {len} bytes");
        assert!(!c.is_empty());
        assert_eq!(pop_all(&c), vec![data]);
        assert!(c.is_empty());
    }
    let small = [0, 1, 7, 8, 4095];
    for &len in &small {
        assert!(p.try_push(&[&pattern(len as u64, len)]).unwrap());
    }
    let got = pop_all(&c);
    let want: Vec<_> = small.iter().map(|&l| pattern(l as u64, l)).collect();
    assert_eq!(got, want);
}

#[test]
fn parts_are_concatenated() {
    let (p, c) = pair(4096);
    assert!(p.try_push(&[b"head", b"", b"-body", b"!"]).unwrap());
    assert!(p.try_push(&[]).unwrap());
    assert_eq!(pop_all(&c), vec![b"head-body!".to_vec(), Vec::new()]);
}

#[test]
fn wraparound_many_times_with_varying_sizes() {
    let (p, c) = pair(4096);
    let mut rng = XorShift(0x0bad_5eed_1234_5678);
    let mut expected = std::collections::VecDeque::new();
    let laps = if cfg!(miri) { 6 } else { 400 };
    let mut seq = 0u64;
    let mut pads_seen = 0;
    while pos(&p, Field::WritePos) < laps * 4096 {
        for _ in 0..1 + rng.below(8) {
            let len = if rng.below(16) == 0 {
                rng.below(p.max_record() as u64 + 1)
            } else {
                rng.below(200)
            } as usize;
            let data = pattern(seq, len);
            let w_before = pos(&p, Field::WritePos);
            if !p.try_push(&[&data[..len / 2], &data[len / 2..]]).unwrap() {
                break;
            }
            if pos(&p, Field::WritePos) - w_before > record_size(len) as u64 {
                pads_seen += 1;
            }
            expected.push_back(data);
            seq += 1;
        }
        let budget = rng.below(1500) as usize;
        c.pop_batch(budget, |s| {
            assert_eq!(s, &expected.pop_front().expect("extra record")[..]);
        })
        .unwrap();
    }
    c.pop_batch(usize::MAX, |s| {
        assert_eq!(s, &expected.pop_front().unwrap()[..])
    })
    .unwrap();
    assert!(expected.is_empty());
    assert!(c.is_empty());
    assert!(
        pads_seen >= laps / 2,
        "wrap padding exercised only {pads_seen} times"
    );
}

#[test]
fn too_large_is_an_error_even_when_full() {
    let (p, _c) = pair(4096);
    let max = p.max_record();
    let big = vec![0u8; max + 1];
    match p.try_push(&[&big]) {
        Err(RingError::TooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("{other:?}"),
    }
    match p.try_push(&[&big[..max], b"x"]) {
        Err(RingError::TooLarge { len, .. }) => assert_eq!(len, max + 1),
        other => panic!("{other:?}"),
    }
    while p.try_push(&[&big[..100]]).unwrap() {}
    assert!(matches!(
        p.try_push(&[&big]),
        Err(RingError::TooLarge { .. })
    ));
    assert!(p.try_push(&[&big[..max]]).is_ok());
}

#[test]
fn full_ring_returns_false_until_space_is_freed() {
    let (p, c) = pair(4096);
    let rec = [7u8; 100]; // 112 bytes with header and alignment
    let mut n = 0;
    while p.try_push(&[&rec]).unwrap() {
        n += 1;
        assert!(n <= 4096 / 112, "pushed more than fits");
    }
    assert_eq!(n, 4096 / 112);
    assert!(!p.try_push(&[&rec]).unwrap(), "still full");
    assert!(free(&p) < 112);
    // Free one record: the next one needs a pad to the end plus itself.
    assert_eq!(c.pop_batch(0, |_| {}).unwrap(), 1);
    assert!(p.try_push(&[&rec]).unwrap());
    assert!(!p.try_push(&[&rec]).unwrap());
    assert_eq!(pop_all(&c).len(), n);
    assert_eq!(free(&p), 4096);
}

#[test]
fn pop_batch_respects_max_bytes() {
    let (p, c) = pair(4096);
    for i in 0..10u8 {
        assert!(p.try_push(&[&[i; 100]]).unwrap());
    }
    let mut seen = Vec::new();
    assert_eq!(c.pop_batch(250, |s| seen.push(s[0])).unwrap(), 2);
    // The first record is always delivered, however small the budget.
    assert_eq!(c.pop_batch(0, |s| seen.push(s[0])).unwrap(), 1);
    assert_eq!(c.pop_batch(100, |s| seen.push(s[0])).unwrap(), 1);
    assert_eq!(c.pop_batch(399, |s| seen.push(s[0])).unwrap(), 3);
    assert_eq!(c.pop_batch(usize::MAX, |s| seen.push(s[0])).unwrap(), 3);
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    assert_eq!(c.pop_batch(usize::MAX, |_| panic!("empty")).unwrap(), 0);
}

#[cfg(not(miri))]
#[test]
fn create_rejects_bad_capacity() {
    for cap in [0, 1, 2048, 4097, 6144, 1 << 31] {
        assert!(matches!(Ring::create(cap), Err(RingError::InvalidCapacity(c)) if c == cap));
    }
    let (r, _fd) = Ring::create(8192).unwrap();
    assert_eq!((r.capacity(), r.max_record()), (8192, 4088));
}

// ---- 2. corruption -----------------------------------------------------

#[cfg(not(miri))]
#[test]
fn open_validates_fd_and_header() {
    let (a, fd) = Ring::create(4096).unwrap();
    for (field, what) in [
        (Field::Magic, "bad ring magic"),
        (Field::Version, "unsupported ring version"),
        (Field::Capacity, "ring capacity does not match memfd size"),
    ] {
        let saved = pos(&a, field);
        set(&a, field, saved ^ 0x10);
        assert_eq!(expect_corrupt(Ring::open(&fd)), what);
        set(&a, field, saved);
    }
    Ring::open(&fd).unwrap();

    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use nix::unistd::ftruncate;
    let unsealable = memfd_create(c"t", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    ftruncate(&unsealable, (HEADER_SIZE + 4096) as libc::off_t).unwrap();
    assert_eq!(
        expect_corrupt(Ring::open(&unsealable)),
        "ring memfd is not sealed against shrinking"
    );
    let unsealed = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
    ftruncate(&unsealed, (HEADER_SIZE + 4096) as libc::off_t).unwrap();
    assert_eq!(
        expect_corrupt(Ring::open(&unsealed)),
        "ring memfd is not sealed against shrinking"
    );
    let odd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
    ftruncate(&odd, (HEADER_SIZE + 5000) as libc::off_t).unwrap();
    fcntl(
        odd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK),
    )
    .unwrap();
    assert_eq!(
        expect_corrupt(Ring::open(&odd)),
        "ring memfd size is not header + power of two"
    );
    let (rd, _wr) = nix::unistd::pipe().unwrap();
    assert_eq!(
        expect_corrupt(Ring::open(&rd)),
        "ring fd is not a regular file"
    );
    let path = std::env::temp_dir().join(format!("shmring-test-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len((HEADER_SIZE + 4096) as u64).unwrap();
    assert_eq!(
        expect_corrupt(Ring::open(&file)),
        "ring fd is not a sealable memfd"
    );
}

#[test]
fn bad_positions_are_corrupt_for_both_sides() {
    let (p, c) = pair(4096);
    assert!(p.try_push(&[b"hello"]).unwrap());
    let cases: [(u64, u64, &str); 4] = [
        (
            4096 + 8,
            0,
            "write_pos more than capacity ahead of read_pos",
        ),
        (16, 24, "read_pos ahead of write_pos"),
        (13, 0, "ring position misaligned"),
        (16, 3, "ring position misaligned"),
    ];
    for (w, r, what) in cases {
        set(&c, Field::WritePos, w);
        set(&p, Field::ReadPos, r);
        assert_eq!(
            expect_corrupt(c.pop_batch(usize::MAX, |_| panic!("delivered"))),
            what
        );
        assert_eq!(expect_corrupt(p.try_push(&[b"x"])), what);
        assert_eq!(
            pos(&c, Field::ReadPos),
            r,
            "consumer advanced on corruption"
        );
        assert_eq!(
            pos(&p, Field::WritePos),
            w,
            "producer advanced on corruption"
        );
        // The wake-up calls must not panic on garbage either.
        let _ = c.consumer_prepare_wait();
        let _ = p.producer_should_wake();
        let _ = p.producer_prepare_wait(10);
        let _ = c.consumer_should_wake();
    }
}

#[test]
fn positions_near_u64_max_do_not_overflow() {
    let (p, c) = pair(4096);
    let top = u64::MAX - 7;
    set(&p, Field::WritePos, top);
    set(&p, Field::ReadPos, top);
    assert_eq!(
        expect_corrupt(p.try_push(&[b"x"])),
        "write_pos about to overflow"
    );
    assert_eq!(c.pop_batch(usize::MAX, |_| {}).unwrap(), 0);
    assert!(!p.producer_prepare_wait(10));
    assert!(c.consumer_prepare_wait());
    assert!(!p.producer_should_wake());
    let _ = c.consumer_should_wake();
    set(&p, Field::WritePos, u64::MAX);
    set(&p, Field::ReadPos, u64::MAX);
    assert!(c.consumer_prepare_wait()); // mark wraps to 0: harmless
    expect_corrupt(c.pop_batch(1, |_| {}));
    expect_corrupt(p.try_push(&[b"x"]));
    let _ = p.producer_prepare_wait(p.max_record());
    let _ = c.consumer_should_wake();
}

#[test]
fn bad_record_headers_are_corrupt_and_not_consumed() {
    let (p, c) = pair(4096);
    let max = p.max_record();
    let cases: [(u64, &str); 4] = [
        (
            encode_header(MARK_DATA, max + 1),
            "record length exceeds max_record",
        ),
        (
            encode_header(MARK_DATA, 100),
            "record extends past write_pos",
        ),
        (encode_header(0xdead_beef, 5), "bad record marker"),
        (
            encode_header(MARK_PAD, 4096 - 8),
            "padding record at start of data area",
        ),
    ];
    for (bad, what) in cases {
        set(&p, Field::WritePos, 0);
        set(&p, Field::ReadPos, 0);
        for i in 0..3u8 {
            assert!(p.try_push(&[&[i; 5]]).unwrap());
        }
        // First record bad: nothing delivered, read_pos unchanged, and it stays so.
        let saved = p.data_word(0).unwrap().swap(bad, Ordering::Relaxed);
        for _ in 0..2 {
            assert_eq!(
                expect_corrupt(c.pop_batch(usize::MAX, |_| panic!("delivered"))),
                what
            );
            assert_eq!(pos(&c, Field::ReadPos), 0);
        }
        // Third record bad: the two good ones are consumed, then the error.
        p.data_word(0).unwrap().store(saved, Ordering::Relaxed);
        let third = 2 * record_size(5);
        p.data_word(third).unwrap().store(bad, Ordering::Relaxed);
        if what == "padding record at start of data area" {
            // Not at offset 0 any more, so it is a pad of the wrong length.
            let mut n = 0;
            let e = expect_corrupt(c.pop_batch(usize::MAX, |_| n += 1));
            assert_eq!(
                (e, n),
                ("padding record does not end at end of data area", 2)
            );
        } else {
            let mut n = 0;
            assert_eq!(expect_corrupt(c.pop_batch(usize::MAX, |_| n += 1)), what);
            assert_eq!(n, 2);
        }
        assert_eq!(pos(&c, Field::ReadPos), third as u64);
    }
}

#[test]
fn bad_padding_and_straddling_records_are_corrupt() {
    let (p, c) = pair(4096);
    // Empty ring whose write index is 16 bytes before the end.
    let base = 10 * 4096 + 4096 - 16;
    set(&p, Field::WritePos, base);
    set(&p, Field::ReadPos, base);
    assert!(p.try_push(&[&[1u8; 8]]).unwrap()); // exactly fills the tail
    assert!(p.try_push(&[&[2u8; 8]]).unwrap()); // starts at 0, no pad
    p.data_word(4096 - 16)
        .unwrap()
        .store(encode_header(MARK_DATA, 16), Ordering::Relaxed);
    assert_eq!(
        expect_corrupt(c.pop_batch(usize::MAX, |_| panic!())),
        "record crosses end of data area"
    );

    // A padding record that is too long, too short, or past write_pos.
    set(&p, Field::WritePos, base);
    set(&p, Field::ReadPos, base);
    assert!(p.try_push(&[&[3u8; 40]]).unwrap()); // needs a 16-byte pad first
    assert_eq!(pos(&p, Field::WritePos), base + 16 + 48);
    let pad_ok = encode_header(MARK_PAD, 8);
    assert_eq!(
        p.data_word(4096 - 16).unwrap().load(Ordering::Relaxed),
        pad_ok
    );
    for bad in [encode_header(MARK_PAD, 0), encode_header(MARK_PAD, 16)] {
        p.data_word(4096 - 16)
            .unwrap()
            .store(bad, Ordering::Relaxed);
        assert_eq!(
            expect_corrupt(c.pop_batch(usize::MAX, |_| panic!())),
            "padding record does not end at end of data area"
        );
    }
    p.data_word(4096 - 16)
        .unwrap()
        .store(pad_ok, Ordering::Relaxed);
    set(&p, Field::WritePos, base + 8);
    assert_eq!(
        expect_corrupt(c.pop_batch(usize::MAX, |_| panic!())),
        "padding record extends past write_pos"
    );
    set(&p, Field::WritePos, base + 64);
    assert_eq!(pop_all(&c), vec![vec![3u8; 40]]);
}

#[test]
fn randomized_scribbles_never_panic_and_are_detected() {
    let (p, c) = pair(4096);
    let max = p.max_record();
    let mut rng = XorShift(0x5eed_0f5c_41bb_1e00);
    let buf = pattern(1, max);
    let iters = if cfg!(miri) { 40 } else { 4000 };
    let mut corrupt_seen = 0;
    let fields = [
        Field::Magic,
        Field::Version,
        Field::Capacity,
        Field::WritePos,
        Field::ReadPos,
        Field::ConsumerWait,
        Field::ProducerWait,
    ];
    for _ in 0..iters {
        // Start from a valid state at a random position.
        let base = rng.below(1 << 40) & !7;
        for f in [Field::WritePos, Field::ReadPos] {
            set(&p, f, base);
        }
        for f in [Field::ConsumerWait, Field::ProducerWait] {
            set(&p, f, 0);
        }
        for _ in 0..rng.below(12) {
            let len = if rng.below(8) == 0 {
                rng.below(max as u64 + 1)
            } else {
                rng.below(300)
            };
            let _ = p.try_push(&[&buf[..len as usize]]).unwrap();
        }
        if rng.below(2) == 0 {
            c.pop_batch(rng.below(600) as usize, |_| {}).unwrap();
        }
        let (w, r) = (pos(&p, Field::WritePos), pos(&p, Field::ReadPos));
        for _ in 0..1 + rng.below(3) {
            let value = match rng.below(8) {
                0 => rng.next(),
                1 => r.wrapping_add(rng.below(3 * 4096)).wrapping_sub(4096),
                2 => w.wrapping_add(rng.below(64)).wrapping_sub(32),
                3 => encode_header(MARK_DATA, rng.below(2 * 4096) as usize),
                4 => encode_header(MARK_PAD, rng.below(4096) as usize),
                5 => u64::MAX - rng.below(16),
                6 => rng.next() & 0xffff_ffff,
                _ => 0,
            };
            if rng.below(3) == 0 {
                set(&c, fields[rng.below(fields.len() as u64) as usize], value);
            } else {
                let idx = (rng.below(4096 / 8) * 8) as usize;
                p.data_word(idx).unwrap().store(value, Ordering::Relaxed);
            }
        }
        let r_before = pos(&c, Field::ReadPos);
        match c.pop_batch(rng.below(4096) as usize, |s| assert!(s.len() <= max)) {
            Ok(_) => {}
            Err(RingError::Corrupt(_)) => {
                corrupt_seen += 1;
                // Sticky and non-advancing: retrying neither delivers nor moves.
                let r_stuck = pos(&c, Field::ReadPos);
                assert!(r_stuck >= r_before, "read_pos moved backwards");
                expect_corrupt(c.pop_batch(usize::MAX, |_| panic!("bad record delivered")));
                assert_eq!(pos(&c, Field::ReadPos), r_stuck);
            }
            Err(e) => panic!("unexpected {e}"),
        }
        match p.try_push(&[&buf[..rng.below(300) as usize]]) {
            Ok(_) | Err(RingError::Corrupt(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        let _ = c.consumer_prepare_wait();
        let _ = p.producer_should_wake();
        let _ = p.producer_prepare_wait(rng.below(2 * max as u64) as usize);
        let _ = c.consumer_should_wake();
        let _ = c.is_empty();
        // Our capacity is a private copy: scribbling the header field changes nothing.
        assert_eq!(c.capacity(), 4096);
        set(&c, Field::Capacity, 4096);
    }
    assert!(
        corrupt_seen > iters / 10,
        "only {corrupt_seen} of {iters} scribbles detected"
    );
}

// ---- 3. wake-up protocol (single process) ---------------------------------

#[test]
fn no_wake_when_consumer_not_waiting() {
    let (p, c) = pair(4096);
    for _ in 0..3 {
        assert!(p.try_push(&[b"data"]).unwrap());
        assert!(!p.producer_should_wake());
    }
    pop_all(&c);
    assert!(!c.consumer_should_wake(), "producer was not waiting");
}

#[test]
fn consumer_wait_then_push_wakes_exactly_once() {
    let (p, c) = pair(4096);
    for round in 0..3 {
        assert!(
            c.consumer_prepare_wait(),
            "round {round}: empty ring must sleep"
        );
        assert!(
            !p.producer_should_wake(),
            "nothing written past the mark yet"
        );
        assert!(p.try_push(&[b"one"]).unwrap());
        assert!(p.producer_should_wake());
        assert!(!p.producer_should_wake(), "second wake for the same wait");
        assert!(p.try_push(&[b"two"]).unwrap());
        assert!(!p.producer_should_wake());
        assert_eq!(pop_all(&c).len(), 2);
    }
}

#[test]
fn consumer_prepare_wait_sees_pending_data() {
    let (p, c) = pair(4096);
    assert!(p.try_push(&[b"x"]).unwrap());
    assert!(!c.consumer_prepare_wait());
    assert_eq!(
        pos(&c, Field::ConsumerWait),
        0,
        "cancelled wait must clear the mark"
    );
    assert!(!p.producer_should_wake());
}

#[test]
fn producer_wait_wakes_once_a_quarter_is_free() {
    let (p, c) = pair(4096);
    let rec = [9u8; 100];
    while p.try_push(&[&rec]).unwrap() {}
    assert!(p.producer_prepare_wait(rec.len()));
    assert!(!c.consumer_should_wake(), "nothing freed yet");
    let mut woke = 0;
    while !c.is_empty() {
        c.pop_batch(0, |_| {}).unwrap();
        let should = c.consumer_should_wake();
        if should {
            woke += 1;
            assert!(free(&p) >= 1024, "woken with only {} free", free(&p));
        } else if woke == 0 {
            assert!(free(&p) < 1024, "not woken although {} free", free(&p));
        }
    }
    assert_eq!(woke, 1);
    assert!(p.try_push(&[&rec]).unwrap());
}

#[test]
fn producer_wait_for_big_record_needs_more_than_a_quarter() {
    let (p, c) = pair(4096);
    let max = p.max_record(); // 2040 payload, 2048 total
    while p.try_push(&[&[1u8; 200]]).unwrap() {}
    assert!(!p.try_push(&[&vec![0u8; max]]).unwrap());
    assert!(p.producer_prepare_wait(max));
    let w = pos(&p, Field::WritePos) as usize;
    let tail = 4096 - (w & 4095);
    let needed = if 2048 <= tail { 2048 } else { tail + 2048 };
    assert!(needed > 1024);
    let mut woke = false;
    while !woke && !c.is_empty() {
        c.pop_batch(0, |_| {}).unwrap();
        woke = c.consumer_should_wake();
        assert_eq!(
            woke,
            free(&p) >= needed,
            "free {} needed {needed}",
            free(&p)
        );
    }
    assert!(woke);
    assert!(p.try_push(&[&vec![0u8; max]]).unwrap());
}

#[test]
fn producer_prepare_wait_is_false_when_space_exists_or_never_will() {
    let (p, _c) = pair(4096);
    assert!(!p.producer_prepare_wait(100));
    assert_eq!(pos(&p, Field::ProducerWait), 0);
    assert!(!p.producer_prepare_wait(p.max_record() + 1));
    assert_eq!(pos(&p, Field::ProducerWait), 0);
}

// ---- 4./5. multi-process ---------------------------------------------------

#[cfg(not(miri))]
mod multiprocess {
    use super::super::super::notify::Notifier;
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult, Pid};
    use std::os::fd::BorrowedFd;
    use std::time::{Duration, Instant};

    const END: u64 = u64::MAX;
    const WAIT_TIMEOUT_MS: i32 = 10_000;

    struct Hammer {
        records: u64,
        cap: usize,
        /// Consumer sleeps 1 ms after this many records (0 = never).
        slow_every: u64,
        pop_budget: usize,
        verify: bool,
        fixed_len: Option<usize>,
        /// Ping-pong: after each record the producer waits until the
        /// consumer has taken it, then spins up to this many iterations,
        /// so the consumer is going to sleep right as the next record
        /// arrives. A lost wake-up then stalls both sides and the
        /// consumer's poll times out instead of the next push hiding it.
        jitter: u64,
    }

    #[derive(Debug)]
    struct Outcome {
        producer_wakes: u64,
        producer_sleeps: u64,
        consumer_wakes: u64,
        consumer_sleeps: u64,
        bytes: u64,
        elapsed: Duration,
    }

    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Record length (16-byte seq/len prefix included), mostly small with
    /// an occasional one up to max_record.
    fn rec_len(seq: u64, h: &Hammer, max: usize) -> usize {
        if let Some(l) = h.fixed_len {
            return l;
        }
        let m = splitmix(seq);
        let spread = if m.is_multiple_of(512) {
            max - 16 + 1
        } else {
            240
        };
        16 + (m >> 16) as usize % spread
    }

    fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: pfd is one valid, exclusively borrowed pollfd and nfds is 1.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if n >= 0 {
                return n > 0;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }

    /// Runs in the forked child: only syscalls and memcpy, no allocation,
    /// so locks held by other test threads at fork time do not matter.
    fn producer_main(fd: &OwnedFd, data_ev: &Notifier, space_ev: &Notifier, h: &Hammer) -> i32 {
        let Ok(ring) = Ring::open(fd) else { return 10 };
        let max = ring.max_record();
        let mut body = [0u8; 1 << 15];
        let (mut wakes, mut sleeps) = (0u64, 0u64);
        for seq in 0..=h.records {
            let mut head = [0u8; 24];
            let (head_len, body_len) = if seq == h.records {
                head[0..8].copy_from_slice(&END.to_le_bytes());
                head[8..16].copy_from_slice(&wakes.to_le_bytes());
                head[16..24].copy_from_slice(&sleeps.to_le_bytes());
                (24, 0)
            } else {
                let len = rec_len(seq, h, max);
                head[0..8].copy_from_slice(&seq.to_le_bytes());
                head[8..16].copy_from_slice(&(len as u64).to_le_bytes());
                if h.verify {
                    fill(seq, &mut body[..len - 16]);
                }
                (16, len - 16)
            };
            let parts: [&[u8]; 2] = [&head[..head_len], &body[..body_len]];
            loop {
                match ring.try_push(&parts) {
                    Ok(true) => break,
                    Ok(false) => {
                        if ring.producer_prepare_wait(head_len + body_len) {
                            sleeps += 1;
                            if !wait_readable(space_ev.as_fd(), WAIT_TIMEOUT_MS) {
                                return 11; // lost wake-up
                            }
                            if space_ev.drain().is_err() {
                                return 12;
                            }
                        }
                    }
                    Err(_) => return 13,
                }
            }
            if ring.producer_should_wake() {
                if data_ev.notify().is_err() {
                    return 14;
                }
                wakes += 1;
            }
            if h.jitter > 0 {
                let mut spins = 0u64;
                while !ring.is_empty() {
                    spins += 1;
                    if spins.is_multiple_of(1024) {
                        std::thread::yield_now(); // the consumer may share our core
                    }
                    std::hint::spin_loop();
                }
                for _ in 0..splitmix(seq) % h.jitter {
                    std::hint::spin_loop();
                }
            }
        }
        0
    }

    /// Kills and reaps the child if the parent side of a test panics.
    struct ChildGuard(Option<Pid>);
    impl Drop for ChildGuard {
        fn drop(&mut self) {
            if let Some(pid) = self.0.take() {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
        }
    }

    fn run(h: Hammer) -> Outcome {
        let (ring, fd) = Ring::create(h.cap).unwrap();
        let data_ev = Notifier::new().unwrap();
        let space_ev = Notifier::new().unwrap();
        let start = Instant::now();
        // SAFETY: the child runs only producer_main (syscalls, memcpy, no
        // allocation or locks) and leaves via _exit, never returning into
        // the test harness whose other threads do not exist in the child.
        let mut guard = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    producer_main(&fd, &data_ev, &space_ev, &h)
                }))
                .unwrap_or(15);
                // SAFETY: _exit is async-signal-safe and skips the parent's
                // atexit handlers and destructors, which the child must not run.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => ChildGuard(Some(child)),
        };
        drop(fd);
        let max = ring.max_record();
        let mut expect = vec![0u8; max];
        let mut next = 0u64;
        let mut end: Option<(u64, u64)> = None;
        let mut err: Option<String> = None;
        let (mut consumer_wakes, mut consumer_sleeps, mut bytes) = (0u64, 0u64, 0u64);
        let mut since_nap = 0u64;
        while end.is_none() {
            let n = ring
                .pop_batch(h.pop_budget, |rec| {
                    if err.is_some() {
                        return;
                    }
                    if end.is_some() {
                        err = Some("record after END".into());
                        return;
                    }
                    let word = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().unwrap());
                    if rec.len() < 16 {
                        err = Some(format!("short record of {} bytes", rec.len()));
                        return;
                    }
                    let seq = word(0);
                    if seq == END {
                        end = Some((word(8), word(16)));
                        return;
                    }
                    let len = rec_len(seq, &h, max);
                    if seq != next || word(8) != len as u64 || rec.len() != len {
                        err = Some(format!(
                            "expected seq {next} len {len}, got seq {seq} len {} ({} bytes)",
                            word(8),
                            rec.len()
                        ));
                        return;
                    }
                    if h.verify {
                        fill(seq, &mut expect[..len - 16]);
                        if rec[16..] != expect[..len - 16] {
                            err = Some(format!("payload mismatch in record {seq}"));
                            return;
                        }
                    }
                    next += 1;
                    bytes += len as u64;
                })
                .unwrap();
            if let Some(e) = err {
                panic!("{e}");
            }
            if n > 0 {
                if ring.consumer_should_wake() {
                    space_ev.notify().unwrap();
                    consumer_wakes += 1;
                }
                since_nap += n as u64;
                if h.slow_every > 0 && since_nap >= h.slow_every {
                    since_nap = 0;
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            if ring.consumer_prepare_wait() {
                consumer_sleeps += 1;
                assert!(
                    wait_readable(data_ev.as_fd(), WAIT_TIMEOUT_MS),
                    "consumer not woken within {WAIT_TIMEOUT_MS} ms: lost wake-up at record {next}"
                );
                data_ev.drain().unwrap();
            }
        }
        let pid = guard.0.take().unwrap();
        assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
        let elapsed = start.elapsed();
        assert_eq!(next, h.records, "records lost");
        assert!(ring.is_empty());
        let (producer_wakes, producer_sleeps) = end.unwrap();
        Outcome {
            producer_wakes,
            producer_sleeps,
            consumer_wakes,
            consumer_sleeps,
            bytes,
            elapsed,
        }
    }

    fn scaled(release: u64) -> u64 {
        if cfg!(debug_assertions) {
            release / 4
        } else {
            release
        }
    }

    #[test]
    fn hammer_fast_consumer() {
        let records = scaled(2_000_000);
        let o = run(Hammer {
            records,
            cap: 1 << 16,
            slow_every: 0,
            pop_budget: usize::MAX,
            verify: true,
            fixed_len: None,
            jitter: 0,
        });
        eprintln!("hammer_fast_consumer: {records} records {o:?}");
        let syscalls = o.producer_wakes + o.consumer_wakes;
        assert!(
            syscalls * 10 < records,
            "{syscalls} eventfd writes for {records} records"
        );
    }

    #[test]
    fn hammer_slow_consumer_exercises_producer_waits() {
        let records = scaled(1_000_000);
        let o = run(Hammer {
            records,
            cap: 1 << 16,
            slow_every: records / 50,
            pop_budget: 4096,
            verify: true,
            fixed_len: None,
            jitter: 0,
        });
        eprintln!("hammer_slow_consumer: {records} records {o:?}");
        assert!(o.producer_sleeps > 0, "producer never had to wait");
        assert!(o.consumer_wakes > 0, "producer was never woken");
        let syscalls = o.producer_wakes + o.consumer_wakes;
        assert!(
            syscalls * 10 < records,
            "{syscalls} eventfd writes for {records} records"
        );
    }

    /// Every record races the consumer's prepare_wait against the
    /// producer's push + should_wake: this is where a missing fence or a
    /// blind clear of the mark loses a wake-up (seen as a poll timeout).
    #[test]
    fn hammer_sleep_wake_race() {
        let records = scaled(150_000);
        let o = run(Hammer {
            records,
            cap: 1 << 16,
            slow_every: 0,
            pop_budget: usize::MAX,
            verify: false,
            fixed_len: Some(16),
            jitter: 8,
        });
        eprintln!("hammer_sleep_wake_race: {records} records {o:?}");
        assert!(
            o.consumer_sleeps > records / 100,
            "consumer rarely slept: {o:?}"
        );
    }

    /// `cargo test --release -- --ignored --nocapture throughput`
    #[test]
    #[ignore]
    fn throughput() {
        for len in [16, 64, 256, 1024] {
            let records = scaled(20_000_000) / (len as u64 / 16);
            let o = run(Hammer {
                records,
                cap: 1 << 20,
                slow_every: 0,
                pop_budget: usize::MAX,
                verify: false,
                fixed_len: Some(len),
                jitter: 0,
            });
            let s = o.elapsed.as_secs_f64();
            println!(
                "{len:>5} B records: {:>6.1} M rec/s {:>7.1} MB/s, eventfd writes {} + {}, consumer sleeps {}",
                records as f64 / s / 1e6,
                o.bytes as f64 / s / 1e6,
                o.producer_wakes,
                o.consumer_wakes,
                o.consumer_sleeps
            );
        }
    }
}
