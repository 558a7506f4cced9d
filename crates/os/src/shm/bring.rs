//! Broadcast ring: one per channel in a sealed memfd, many writers (one at a
//! time, under a lock word), many readers each with its own cursor. A message
//! is copied in once by its publisher and read by every subscriber from the
//! same bytes; the hub is not on the data path (docs/ARCHITECTURE.md, channel rings).
//!
//! ```text
//! page 0      header: magic, version, capacity, policy | write_pos, tail,
//!             lock, next_seq | wake_hub | wake_space | hub_subs   (128-byte lines)
//! pages 1-2   MAX_SLOTS participant slots, one line each:
//!             token (0 = free) | read_pos (NOT_READING for a writer) |
//!             wait_data mark | wait_space mark | start_seq
//! data        capacity bytes of records: [u64 marker|len][u64 seq][frame, padded to 8]
//! ```
//!
//! The hub creates the ring, hands out slots and keeps every participant
//! honest from the outside: it frees the slot (and a held lock) of a client
//! whose control connection closes, so a process that dies mid-write cannot
//! wedge the ring (its half-written record was never published: `write_pos`
//! only moves after the copy).
//!
//! # Trust
//!
//! Every participant maps the whole ring read-write (a reader must store its
//! cursor). Access to a channel's ring is granted per channel by the hub's
//! access policy, so only clients allowed to read (or write) that channel get
//! it. Between them a hostile participant can garble or stall *that channel*;
//! it can never make another process read out of bounds: as in `ring.rs`,
//! every shared value is loaded once, validated, and offsets are masked with
//! our own copy of the capacity.
//!
//! # Memory ordering
//!
//! 1. Publication: a writer takes the lock (CAS 0 -> token, Acquire: the
//!    previous holder's records and `write_pos` are visible), copies the record,
//!    stores `write_pos` with Release and releases the lock with Release. A
//!    reader loads `write_pos` with Acquire and may then read everything below.
//! 2. Overwrite (`drop-oldest`, and reuse of consumed space under `block`):
//!    before a writer overwrites bytes it advances `tail` past the records
//!    there: store `tail`, fence(Release), then write. A reader copies a record
//!    out, fence(Acquire), reloads `tail`: if the writer had started
//!    overwriting what the reader copied, the fences synchronise and the
//!    reader sees the moved `tail`, discards the copy and reports the gap
//!    (seqlock). So a torn record is never delivered.
//! 3. Space (`block`): a writer only overwrites below the smallest reader
//!    cursor; readers store `read_pos` with Release after copying, the writer
//!    loads cursors with Acquire.
//! 4. Sleeping: as in `ring.rs` (store-buffering with SeqCst fences on both
//!    sides). A reader that caught up stores its `wait_data` mark, then
//!    `wake_hub = 1` (Release), fence(SeqCst), reloads `write_pos`. A writer
//!    stores `write_pos`, fence(SeqCst), loads `wake_hub`; if it is set, swaps
//!    it to 0 and writes the hub's eventfd. The hub then scans the slots,
//!    clears each satisfied mark with CAS and writes that client's eventfd
//!    (one hub wake-up serves every sleeping reader: grouped wake-ups in
//!    fan-out), re-arms `wake_hub` for marks still unsatisfied, and re-checks.
//!    Writers waiting for space do the same with `wait_space`/`wake_space`,
//!    and readers check `wake_space` after moving their cursor. While
//!    everyone keeps up, nobody sets a flag and no wake-up syscall happens.
//! 5. Marks are position + 1 so that 0 means "not waiting".
//!
//! Records are read with plain copies that may race with a (buggy or
//! hostile, or under drop-oldest a lapping) writer: outside the Rust memory
//! model, like every shared-memory IPC, but never out of bounds, and rule 2
//! discards any copy that raced.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use nix::sys::mman::munmap;

use super::memfd;
use super::RingError;

/// Participants (readers and writers together) one ring can have.
pub const MAX_SLOTS: usize = 64;
/// The slot the hub itself uses: its cursor serves the hub's subscribers,
/// who are counted in `hub_subs`, so it is not an audience of its own.
pub const HUB_SLOT: usize = 0;
/// `read_pos` of a slot that only writes.
pub const NOT_READING: u64 = u64::MAX;
/// Smallest and largest data area.
pub const MIN_CAPACITY: usize = 4096;
pub const MAX_CAPACITY: usize = 1 << 30;

const MAGIC: u64 = u64::from_le_bytes(*b"IPCHBRNG");
const VERSION: u64 = 1;
const LINE: usize = 128;
const HEADER_SIZE: usize = 4096;
const DATA_OFF: usize = HEADER_SIZE + MAX_SLOTS * LINE;
const _: () = assert!(DATA_OFF.is_multiple_of(4096));
/// Bytes of a ring's memfd before its data area (header and slots).
pub const HEADER_BYTES: usize = DATA_OFF;
const REC_HDR: usize = 16;
const REC_ALIGN: usize = 8;
const MARK_DATA: u32 = u32::from_le_bytes(*b"BREC");
const MARK_PAD: u32 = u32::from_le_bytes(*b"BPAD");

#[derive(Clone, Copy)]
enum Field {
    Magic = 0,
    Version = 8,
    Capacity = 16,
    Policy = 24,
    // Everything a writer changes per message shares one line: a push then
    // moves one cache line between cores, and a reader polling `write_pos`
    // finds `tail` next to it (measured: the busy-poll latency dropped).
    WritePos = LINE as isize,
    Tail = LINE as isize + 8,
    Lock = LINE as isize + 16,
    NextSeq = LINE as isize + 24,
    // Written only when someone sleeps.
    WakeHub = 2 * LINE as isize,
    WakeSpace = 3 * LINE as isize,
    HubSubs = 4 * LINE as isize,
    /// Nonzero: a participant found a record no correct writer writes.
    Corrupt = 5 * LINE as isize,
}
const _: () = assert!(5 * LINE + 8 <= HEADER_SIZE);

#[derive(Clone, Copy)]
enum SlotField {
    Token = 0,
    ReadPos = 8,
    WaitData = 16,
    WaitSpace = 24,
    /// Sequence number expected at the cursor when the hub attached it.
    StartSeq = 32,
}

/// What a full ring does to a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Wait for the slowest reader (lossless).
    Block,
    /// Overwrite the oldest records; readers that fall behind see a gap.
    DropOldest,
}

/// The result of [`BRing::try_push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Written with this ring sequence number. `wake_hub`: the caller must
    /// write the hub's eventfd (someone sleeps).
    Written { seq: u64, wake_hub: bool },
    /// `block` policy and no room: wait ([`BRing::prepare_wait_space`]) and retry.
    Full,
    /// Another writer holds the lock right now; retry shortly.
    Busy,
}

/// What one [`BRing::read_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub records: usize,
    pub bytes: usize,
    /// Records overwritten before this reader got to them.
    pub missed: u64,
    /// The caller must write the hub's eventfd (a writer waits for space).
    pub wake_hub: bool,
}

/// What [`BRing::read_batch`] reports, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEvent {
    /// This many records were overwritten before we read them.
    Gap(u64),
    /// A record was appended to the output at this offset (the callback may
    /// check it and truncate it away), with the ring sequence number its
    /// header claims.
    Record { start: usize, seq: u64 },
}

/// A reader's private state; the shared cursor is a copy of `pos`.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub slot: usize,
    pos: u64,
    /// Sequence number expected next (None until the first record).
    next_seq: Option<u64>,
}

impl Cursor {
    /// The position this reader reads next.
    pub fn pos(&self) -> u64 {
        self.pos
    }
}

/// One mapping of a broadcast ring.
pub struct BRing {
    base: NonNull<u8>,
    map_len: usize,
    /// Our own validated copy: never re-read from shared memory.
    cap: usize,
    policy: Policy,
    /// Writer-side cache of the smallest reader cursor (rescanned when short).
    min_cache: std::cell::Cell<u64>,
    /// Tests under Miri use heap memory instead of a mapping.
    #[cfg(test)]
    heap: Option<std::sync::Arc<super::ring::heap::HeapMem>>,
}

// SAFETY: the mapping is owned by the BRing and not tied to a thread; shared
// accesses are atomics or raw copies. Not Sync (the Cell, and one thread per
// handle keeps the writer/reader bookkeeping simple).
unsafe impl Send for BRing {}

impl std::fmt::Debug for BRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BRing")
            .field("capacity", &self.cap)
            .field("policy", &self.policy)
            .finish()
    }
}

fn corrupt<T>(what: &'static str) -> Result<T, RingError> {
    Err(RingError::Corrupt(what))
}

fn record_size(len: usize) -> usize {
    REC_HDR + len.next_multiple_of(REC_ALIGN)
}

fn encode_header(marker: u32, len: usize) -> u64 {
    (u64::from(marker) << 32) | len as u64
}

impl BRing {
    /// Creates a ring with `capacity` data bytes (a power of two). The fd is
    /// what participants receive; it is sealed against resizing.
    pub fn create(capacity: usize, policy: Policy) -> Result<(BRing, OwnedFd), RingError> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::InvalidCapacity(capacity));
        }
        let (base, fd) = memfd::create(c"ipchub-channel", DATA_OFF, capacity)?;
        let ring = BRing::mapped(base, capacity, policy);
        ring.init_header();
        Ok((ring, fd))
    }

    /// Maps a ring received from the hub, checking everything about it.
    pub fn open(fd: &impl AsFd) -> Result<BRing, RingError> {
        let (base, cap) = memfd::open(fd, DATA_OFF, MIN_CAPACITY, MAX_CAPACITY)?;
        let mut ring = BRing::mapped(base, cap, Policy::Block);
        if ring.hdr(Field::Magic).load(Ordering::Relaxed) != MAGIC {
            return corrupt("bad channel ring magic");
        }
        if ring.hdr(Field::Version).load(Ordering::Relaxed) != VERSION {
            return corrupt("unsupported channel ring version");
        }
        if ring.hdr(Field::Capacity).load(Ordering::Relaxed) != cap as u64 {
            return corrupt("channel ring capacity does not match memfd size");
        }
        ring.policy = match ring.hdr(Field::Policy).load(Ordering::Relaxed) {
            0 => Policy::Block,
            1 => Policy::DropOldest,
            _ => return corrupt("bad channel ring policy"),
        };
        Ok(ring)
    }

    /// Takes ownership of a mapping of `DATA_OFF + cap` bytes.
    fn mapped(base: NonNull<u8>, cap: usize, policy: Policy) -> BRing {
        BRing {
            base,
            map_len: DATA_OFF + cap,
            cap,
            policy,
            min_cache: std::cell::Cell::new(0),
            #[cfg(test)]
            heap: None,
        }
    }

    /// `n` handles on one heap block, like `n` mappings of one memfd, for
    /// the single-process tests (Miri cannot memfd_create or mmap).
    #[cfg(test)]
    fn heap_handles(cap: usize, policy: Policy, n: usize) -> Vec<BRing> {
        let mem = super::ring::heap::HeapMem::zeroed(DATA_OFF + cap);
        let v: Vec<BRing> = (0..n)
            .map(|_| {
                let mut r = BRing::mapped(mem.ptr(), cap, policy);
                r.heap = Some(mem.clone());
                r
            })
            .collect();
        v[0].init_header();
        v
    }

    fn init_header(&self) {
        // Published to participants through the fd sent over a socket.
        self.hdr(Field::Capacity)
            .store(self.cap as u64, Ordering::Relaxed);
        let p = match self.policy {
            Policy::Block => 0,
            Policy::DropOldest => 1,
        };
        self.hdr(Field::Policy).store(p, Ordering::Relaxed);
        self.hdr(Field::Version).store(VERSION, Ordering::Relaxed);
        self.hdr(Field::Magic).store(MAGIC, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Largest record `try_push` accepts (it fits an empty ring at any offset).
    pub fn max_record(&self) -> usize {
        self.cap / 2 - REC_HDR
    }

    // ---- the only unsafe accessors --------------------------------------------

    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= DATA_OFF);
        // SAFETY: off is 8-aligned and inside the header/slot pages (asserted),
        // the mapping is at least DATA_OFF + MIN_CAPACITY bytes and page
        // aligned, and lives as long as self. AtomicU64 tolerates concurrent
        // writes from other processes.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU64) }
    }

    fn data_ptr(&self, idx: usize, len: usize) -> Result<*mut u8, RingError> {
        match idx.checked_add(len) {
            Some(end) if end <= self.cap => Ok(self.base.as_ptr().wrapping_add(DATA_OFF + idx)),
            _ => corrupt("internal bounds check failed"),
        }
    }

    fn data_word(&self, idx: usize) -> Result<&AtomicU64, RingError> {
        if !idx.is_multiple_of(REC_ALIGN) {
            return corrupt("misaligned record");
        }
        let p = self.data_ptr(idx, 8)?;
        // SAFETY: data_ptr checked 8 bytes at p are inside the mapping; the
        // data area is page aligned and idx a multiple of 8, so p is aligned.
        Ok(unsafe { &*(p as *const AtomicU64) })
    }

    fn write_bytes(&self, idx: usize, src: &[u8]) -> Result<(), RingError> {
        let dst = self.data_ptr(idx, src.len())?;
        // SAFETY: destination range checked inside the mapping; src is caller
        // memory outside it, so no overlap. Readers of these bytes discard
        // what they copy if it raced (ordering rule 2).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Appends `len` data-area bytes at `idx` to `out` (one pass: no
    /// zero-filling first; it showed at 16 KiB and up).
    fn append_bytes(&self, idx: usize, len: usize, out: &mut Vec<u8>) -> Result<(), RingError> {
        let src = self.data_ptr(idx, len)?;
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        // SAFETY: the source range was checked inside the mapping; the
        // destination is `len` bytes of `out`'s reserved capacity, outside
        // the mapping, so the ranges do not overlap. The bytes may change
        // underneath (rule 2 checks afterwards); a byte copy of changing
        // bytes cannot go out of bounds, and the copy is validated before use.
        unsafe { std::ptr::copy_nonoverlapping(src, spare.as_mut_ptr().cast::<u8>(), len) };
        // SAFETY: the copy above initialised exactly these `len` bytes.
        unsafe { out.set_len(out.len() + len) };
        Ok(())
    }

    fn hdr(&self, f: Field) -> &AtomicU64 {
        self.word(f as usize)
    }

    fn slot(&self, slot: usize, f: SlotField) -> &AtomicU64 {
        assert!(slot < MAX_SLOTS);
        self.word(HEADER_SIZE + slot * LINE + f as usize)
    }

    // ---- hub: slots and recovery ---------------------------------------------

    /// Claims `slot` for `token` (nonzero). A reader starts at the current
    /// end of the ring: it sees what is published from now on.
    pub fn attach(&self, slot: usize, token: u64, reader: bool) -> Cursor {
        let first = if reader {
            self.hdr(Field::WritePos).load(Ordering::Acquire)
        } else {
            NOT_READING
        };
        self.slot(slot, SlotField::WaitData)
            .store(0, Ordering::Relaxed);
        self.slot(slot, SlotField::WaitSpace)
            .store(0, Ordering::Relaxed);
        self.slot(slot, SlotField::ReadPos)
            .store(first, Ordering::Relaxed);
        // Release: the cursor is set before writers see the slot in use.
        self.slot(slot, SlotField::Token)
            .store(token, Ordering::Release);
        if !reader {
            self.slot(slot, SlotField::StartSeq)
                .store(0, Ordering::Relaxed);
            return Cursor {
                slot,
                pos: NOT_READING,
                next_seq: None,
            };
        }
        // A writer that scanned the cursors before it could see this slot
        // may have cached a smallest cursor up to its own write_pos, past
        // `first`, and would overwrite what lies between without looking
        // again. So start where the ring is once every later scan sees us
        // (store-buffering again: our token store, fence, load of write_pos
        // against the writer's write_pos store, fence, cursor scan).
        fence(Ordering::SeqCst);
        let pos = self.hdr(Field::WritePos).load(Ordering::Acquire);
        // At or past the sequence of the first record at `pos`: a gap before
        // our first record is then counted, never over-counted.
        let next_seq = self.hdr(Field::NextSeq).load(Ordering::Relaxed);
        self.slot(slot, SlotField::StartSeq)
            .store(next_seq, Ordering::Relaxed);
        self.slot(slot, SlotField::ReadPos)
            .store(pos, Ordering::Release);
        Cursor {
            slot,
            pos,
            next_seq: Some(next_seq),
        }
    }

    /// The cursor of a slot the hub attached for us (as it is now).
    pub fn join(&self, slot: usize) -> Result<Cursor, RingError> {
        let pos = self.slot(slot, SlotField::ReadPos).load(Ordering::Acquire);
        if pos == NOT_READING || pos > self.write_pos() || !pos.is_multiple_of(8) {
            return corrupt("our channel ring slot has no valid cursor");
        }
        Ok(Cursor {
            slot,
            pos,
            next_seq: Some(self.slot(slot, SlotField::StartSeq).load(Ordering::Relaxed)),
        })
    }

    /// Frees a slot: its cursor no longer holds writers back.
    pub fn detach(&self, slot: usize) {
        self.slot(slot, SlotField::Token)
            .store(0, Ordering::Release);
        self.slot(slot, SlotField::ReadPos)
            .store(NOT_READING, Ordering::Release);
        self.slot(slot, SlotField::WaitData)
            .store(0, Ordering::Relaxed);
        self.slot(slot, SlotField::WaitSpace)
            .store(0, Ordering::Relaxed);
    }

    /// Releases the lock if `token` holds it (its holder died mid-write).
    /// True if it did. The half-written record was never published.
    pub fn break_lock(&self, token: u64) -> bool {
        self.hdr(Field::Lock)
            .compare_exchange(token, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the write lock and keeps it, as a writer that dies mid-message
    /// would: for tests of the recovery (see `break_lock`).
    #[doc(hidden)]
    pub fn hold_lock(&self, token: u64) -> bool {
        self.hdr(Field::Lock)
            .compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The cursor of a reader slot (None: free or not reading).
    pub fn cursor_of(&self, slot: usize) -> Option<u64> {
        let p = self.slot(slot, SlotField::ReadPos).load(Ordering::Acquire);
        (self.slot(slot, SlotField::Token).load(Ordering::Acquire) != 0 && p != NOT_READING)
            .then_some(p)
    }

    /// Some writer sleeps until readers free space.
    pub fn writer_waiting(&self) -> bool {
        (0..MAX_SLOTS).any(|s| self.slot(s, SlotField::WaitSpace).load(Ordering::Relaxed) != 0)
    }

    /// Publishes eight bytes of garbage as if they were a record, as a
    /// hostile or broken participant could: for tests of the readers' checks.
    #[doc(hidden)]
    pub fn scribble(&self) {
        let w = self.hdr(Field::WritePos).load(Ordering::Relaxed);
        if let Ok(word) = self.data_word((w as usize) & (self.cap - 1)) {
            word.store(0x0bad_0bad_0bad_0bad, Ordering::Relaxed);
        }
        self.hdr(Field::WritePos).store(w + 8, Ordering::Release);
    }

    /// Reads the shared word at byte offset `off` of the header or slot
    /// pages (as laid out in PROTOCOL.md §6.2): for tests that play a
    /// hostile participant.
    #[doc(hidden)]
    pub fn peek(&self, off: usize) -> u64 {
        self.word(off).load(Ordering::Acquire)
    }

    /// Writes `v` at byte offset `off` of the header or slot pages, as any
    /// participant can: for tests of what the hub and the others survive.
    #[doc(hidden)]
    pub fn poke(&self, off: usize, v: u64) {
        self.word(off).store(v, Ordering::Release);
    }

    /// The header fields only the hub writes are as it made them. A
    /// participant can overwrite them (or punch a hole in the memfd, which
    /// reads back as zeros): the ring is then no longer trustworthy.
    pub fn header_intact(&self) -> bool {
        let p = match self.policy {
            Policy::Block => 0,
            Policy::DropOldest => 1,
        };
        self.hdr(Field::Magic).load(Ordering::Relaxed) == MAGIC
            && self.hdr(Field::Version).load(Ordering::Relaxed) == VERSION
            && self.hdr(Field::Capacity).load(Ordering::Relaxed) == self.cap as u64
            && self.hdr(Field::Policy).load(Ordering::Relaxed) == p
    }

    /// A reader found a record no correct writer writes: ask the hub to
    /// retire the ring (after this, write the hub's eventfd).
    pub fn report_corrupt(&self) {
        self.hdr(Field::Corrupt).store(1, Ordering::Release);
    }

    /// Some participant reported the ring corrupt.
    pub fn reported_corrupt(&self) -> bool {
        self.hdr(Field::Corrupt).load(Ordering::Acquire) != 0
    }

    /// The hub retires the ring: writers that try it from now on are told
    /// it is gone ([`RingError::Corrupt`]).
    pub fn mark_retired(&self) {
        self.hdr(Field::Magic).store(0, Ordering::Release);
    }

    /// `tail <= write_pos <= tail + capacity`, both 8-aligned, as every
    /// correct writer leaves them (loaded in an order that concurrent
    /// correct writers cannot make look wrong: both only grow).
    pub fn positions_sane(&self) -> bool {
        let w1 = self.hdr(Field::WritePos).load(Ordering::Acquire);
        let t = self.hdr(Field::Tail).load(Ordering::Acquire);
        let w2 = self.hdr(Field::WritePos).load(Ordering::Acquire);
        (w1 | t | w2).is_multiple_of(8) && t <= w2 && w1.saturating_sub(t) <= self.cap as u64
    }

    /// A slot's token and cursor as they are in shared memory (untrusted).
    pub fn slot_state(&self, slot: usize) -> (u64, u64) {
        (
            self.slot(slot, SlotField::Token).load(Ordering::Acquire),
            self.slot(slot, SlotField::ReadPos).load(Ordering::Acquire),
        )
    }

    /// Who holds the write lock (0: nobody).
    pub fn lock_holder(&self) -> u64 {
        self.hdr(Field::Lock).load(Ordering::Relaxed)
    }

    /// Subscribers the hub serves on this channel besides the direct readers
    /// (counted in a direct publisher's delivery count).
    pub fn set_hub_subscribers(&self, n: u64) {
        self.hdr(Field::HubSubs).store(n, Ordering::Relaxed);
    }

    /// Direct readers (slots with a cursor) plus the hub's other subscribers:
    /// what a publish right now is delivered to.
    pub fn audience(&self) -> u32 {
        let mut n = self.hdr(Field::HubSubs).load(Ordering::Relaxed);
        for s in (0..MAX_SLOTS).filter(|s| *s != HUB_SLOT) {
            if self.slot(s, SlotField::Token).load(Ordering::Relaxed) != 0
                && self.slot(s, SlotField::ReadPos).load(Ordering::Relaxed) != NOT_READING
            {
                n += 1;
            }
        }
        n.min(u64::from(u32::MAX)) as u32
    }

    /// Messages written so far.
    pub fn published(&self) -> u64 {
        self.hdr(Field::NextSeq).load(Ordering::Relaxed)
    }

    /// Position of the slowest reader cursor and the slot holding it, if any
    /// reader is attached (`block` policy bookkeeping).
    pub fn slowest(&self) -> Option<(u64, usize)> {
        let mut best: Option<(u64, usize)> = None;
        for s in 0..MAX_SLOTS {
            if self.slot(s, SlotField::Token).load(Ordering::Acquire) == 0 {
                continue;
            }
            let p = self.slot(s, SlotField::ReadPos).load(Ordering::Acquire);
            if p == NOT_READING {
                continue;
            }
            if best.is_none_or(|(b, _)| p < b) {
                best = Some((p, s));
            }
        }
        best
    }

    pub fn write_pos(&self) -> u64 {
        self.hdr(Field::WritePos).load(Ordering::Acquire)
    }

    /// Hub side of rule 4: clear every satisfied wait mark, calling `wake`
    /// with its slot, and re-arm the flags for the waits still pending.
    ///
    /// Returns false when the ring kept moving under the scan (a busy
    /// stream with an unsatisfied wait): the caller must scan again soon,
    /// without blocking (the hub writes its own eventfd).
    #[must_use]
    pub fn wake_scan(&self, mut wake: impl FnMut(usize)) -> bool {
        for _ in 0..4 {
            let w = self.hdr(Field::WritePos).load(Ordering::Acquire);
            let min = self.slowest().map_or(u64::MAX, |(p, _)| p);
            let mut pending_data = false;
            let mut pending_space = false;
            for s in 0..MAX_SLOTS {
                let wd = self.slot(s, SlotField::WaitData);
                let m = wd.load(Ordering::Acquire);
                if m != 0 {
                    if w >= m
                        && wd
                            .compare_exchange(m, 0, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok()
                    {
                        wake(s);
                    } else {
                        pending_data = true;
                    }
                }
                let ws = self.slot(s, SlotField::WaitSpace);
                let m = ws.load(Ordering::Acquire);
                if m != 0 {
                    if min >= m - 1
                        && ws
                            .compare_exchange(m, 0, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok()
                    {
                        wake(s);
                    } else {
                        pending_space = true;
                    }
                }
            }
            if !pending_data && !pending_space {
                return true;
            }
            if pending_data {
                self.hdr(Field::WakeHub).store(1, Ordering::Release);
            }
            if pending_space {
                self.hdr(Field::WakeSpace).store(1, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            let w2 = self.hdr(Field::WritePos).load(Ordering::Acquire);
            let min2 = self.slowest().map_or(u64::MAX, |(p, _)| p);
            if w2 == w && min2 == min {
                return true; // armed; whoever moves next wakes us
            }
        }
        false
    }

    // ---- writers -------------------------------------------------------------

    /// Appends one record (the concatenation of `parts`) as `token`, which
    /// must hold `slot` (used to wait for space).
    pub fn try_push(&self, token: u64, parts: &[&[u8]]) -> Result<Push, RingError> {
        let len = parts
            .iter()
            .try_fold(0usize, |a, p| a.checked_add(p.len()))
            .unwrap_or(usize::MAX);
        let max = self.max_record();
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        // The hub clears the magic of a ring it retires: writers must stop
        // (readers hear of it from the hub).
        if self.hdr(Field::Magic).load(Ordering::Relaxed) != MAGIC {
            return corrupt("channel ring retired (or its header overwritten)");
        }
        let lock = self.hdr(Field::Lock);
        if lock
            .compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(Push::Busy);
        }
        let res = self.push_locked(len, parts);
        // Release: our record and write_pos before the next holder (rule 1).
        lock.store(0, Ordering::Release);
        match res? {
            Some(seq) => {
                // Rule 4: write_pos (and the unlock) before the flag load.
                fence(Ordering::SeqCst);
                let wake_hub = self.hdr(Field::WakeHub).load(Ordering::Relaxed) != 0
                    && self.hdr(Field::WakeHub).swap(0, Ordering::AcqRel) != 0;
                Ok(Push::Written { seq, wake_hub })
            }
            None => Ok(Push::Full),
        }
    }

    fn push_locked(&self, len: usize, parts: &[&[u8]]) -> Result<Option<u64>, RingError> {
        let w = self.hdr(Field::WritePos).load(Ordering::Relaxed);
        let tail = self.hdr(Field::Tail).load(Ordering::Relaxed);
        if tail > w || w - tail > self.cap as u64 || !(w | tail).is_multiple_of(8) {
            return corrupt("channel ring positions inconsistent");
        }
        let total = record_size(len);
        let idx = (w as usize) & (self.cap - 1);
        let room = self.cap - idx;
        let pad = if total <= room { 0 } else { room };
        let end = w + (pad + total) as u64;
        let need_min = end.saturating_sub(self.cap as u64);
        if self.policy == Policy::Block && self.min_cache.get() < need_min {
            // Pairs with the fence in `attach`: a reader attached after this
            // scan starts at or past w (and no reader yet means none below w).
            fence(Ordering::SeqCst);
            let min = self.slowest().map_or(w, |(p, _)| p.min(w));
            self.min_cache.set(min);
            if min < need_min {
                return Ok(None);
            }
        }
        // Rule 2: move tail past what we are about to overwrite, then fence.
        if tail < need_min {
            let mut t = tail;
            while t < need_min {
                let i = (t as usize) & (self.cap - 1);
                let h = self.data_word(i)?.load(Ordering::Relaxed);
                let (marker, l) = ((h >> 32) as u32, (h & 0xffff_ffff) as usize);
                let step = match marker {
                    MARK_PAD => self.cap - i,
                    MARK_DATA if l <= self.max_record() => record_size(l),
                    _ => return corrupt("bad record under the channel ring tail"),
                };
                t += step as u64;
            }
            self.hdr(Field::Tail).store(t, Ordering::Relaxed);
            fence(Ordering::Release);
        }
        let seq = self.hdr(Field::NextSeq).load(Ordering::Relaxed);
        let start = if pad == 0 {
            idx
        } else {
            self.data_word(idx)?
                .store(encode_header(MARK_PAD, room), Ordering::Relaxed);
            0
        };
        self.data_word(start)?
            .store(encode_header(MARK_DATA, len), Ordering::Relaxed);
        self.data_word(start + 8)?.store(seq, Ordering::Relaxed);
        let mut off = start + REC_HDR;
        for p in parts {
            self.write_bytes(off, p)?;
            off += p.len();
        }
        self.hdr(Field::NextSeq).store(seq + 1, Ordering::Relaxed);
        self.hdr(Field::WritePos).store(end, Ordering::Release);
        Ok(Some(seq))
    }

    /// After [`Push::Full`]: record in `slot` that we wait until a record of
    /// `len` bytes (plus a quarter of the ring, so a slow reader does not cost
    /// a wake-up per record) fits. True: sleep on your eventfd, the hub wakes
    /// you. False: room appeared, retry now.
    pub fn prepare_wait_space(&self, slot: usize, len: usize) -> bool {
        let w = self.hdr(Field::WritePos).load(Ordering::Relaxed);
        let want = (record_size(len) * 2).max(self.cap / 4).min(self.cap) as u64;
        let target = (w + want).saturating_sub(self.cap as u64);
        let ws = self.slot(slot, SlotField::WaitSpace);
        ws.store(target + 1, Ordering::Relaxed);
        self.hdr(Field::WakeSpace).store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        let min = self.slowest().map_or(u64::MAX, |(p, _)| p);
        self.min_cache.set(min.min(w));
        if min >= target || self.hdr(Field::WritePos).load(Ordering::Relaxed) != w {
            ws.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// After [`Push::Busy`] from the hub, which must not spin: ask the holder
    /// to write the hub's eventfd when it commits. False: retry now.
    pub fn prepare_wait_lock(&self) -> bool {
        self.hdr(Field::WakeHub).store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        self.hdr(Field::Lock).load(Ordering::Relaxed) != 0
    }

    // ---- readers -------------------------------------------------------------

    /// Copies the records available into `out`, up to about `budget` bytes
    /// (at least one record), and moves the cursor. `on` hears of each record
    /// appended and of each gap (records overwritten before we got to them),
    /// in stream order.
    pub fn read_batch(
        &self,
        cur: &mut Cursor,
        out: &mut Vec<u8>,
        budget: usize,
        mut on: impl FnMut(&mut Vec<u8>, ReadEvent),
    ) -> Result<Batch, RingError> {
        let mut b = Batch::default();
        let w = self.hdr(Field::WritePos).load(Ordering::Acquire);
        if cur.pos > w {
            return corrupt("reader cursor ahead of write_pos");
        }
        let mut result = Ok(());
        // Bounded: every iteration moves pos forward (by a record, or to a
        // tail that only grows and is at most w).
        while cur.pos < w && (b.records == 0 || b.bytes < budget) {
            let tail = self.hdr(Field::Tail).load(Ordering::Acquire);
            if cur.pos < tail {
                // Overwritten before we got here: the sequence numbers of
                // what follows say how much was lost.
                if tail > w {
                    result = corrupt("channel ring tail past write_pos");
                    break;
                }
                cur.pos = tail;
                continue;
            }
            let idx = (cur.pos as usize) & (self.cap - 1);
            let h = match self.data_word(idx) {
                Ok(h) => h.load(Ordering::Relaxed),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let (marker, len) = ((h >> 32) as u32, (h & 0xffff_ffff) as usize);
            let room = self.cap - idx;
            let total = record_size(len);
            let valid = match marker {
                MARK_PAD => len == room && idx != 0 && cur.pos + room as u64 <= w,
                MARK_DATA => {
                    len <= self.max_record() && total <= room && cur.pos + total as u64 <= w
                }
                _ => false,
            };
            if !valid {
                // Either a writer lapped us (tail moved) or the ring is corrupt.
                fence(Ordering::Acquire);
                if self.hdr(Field::Tail).load(Ordering::Relaxed) > cur.pos {
                    continue;
                }
                result = corrupt("bad record in channel ring");
                break;
            }
            if marker == MARK_PAD {
                cur.pos += room as u64;
                continue;
            }
            let seq = match self.data_word(idx + 8) {
                Ok(s) => s.load(Ordering::Relaxed),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let start = out.len();
            if let Err(e) = self.append_bytes(idx + REC_HDR, len, out) {
                result = Err(e);
                break;
            }
            // Rule 2: did a writer start overwriting what we copied?
            fence(Ordering::Acquire);
            if self.hdr(Field::Tail).load(Ordering::Relaxed) > cur.pos {
                out.truncate(start);
                continue;
            }
            if let Some(exp) = cur.next_seq {
                if seq > exp {
                    // The notice goes before the record that follows the gap.
                    let rec: Vec<u8> = out.drain(start..).collect();
                    on(out, ReadEvent::Gap(seq - exp));
                    b.missed += seq - exp;
                    let start = out.len();
                    out.extend_from_slice(&rec);
                    on(out, ReadEvent::Record { start, seq });
                } else {
                    on(out, ReadEvent::Record { start, seq });
                }
            } else {
                on(out, ReadEvent::Record { start, seq });
            }
            cur.next_seq = Some(seq + 1);
            cur.pos += total as u64;
            b.records += 1;
            b.bytes += len;
        }
        // Release: our copies are done before a writer may reuse the space.
        self.slot(cur.slot, SlotField::ReadPos)
            .store(cur.pos, Ordering::Release);
        fence(Ordering::SeqCst); // rule 4
                                 // Acquire: the marks the writer stored before raising the flag.
        b.wake_hub = self.hdr(Field::WakeSpace).load(Ordering::Acquire) != 0
            && self.space_waiter_satisfied()
            && self.hdr(Field::WakeSpace).swap(0, Ordering::AcqRel) != 0;
        result.map(|()| b)
    }

    /// Some writer's space wait is satisfied by the cursors as they are now.
    fn space_waiter_satisfied(&self) -> bool {
        let min = self.slowest().map_or(u64::MAX, |(p, _)| p);
        (0..MAX_SLOTS).any(|s| {
            let m = self.slot(s, SlotField::WaitSpace).load(Ordering::Relaxed);
            m != 0 && min >= m - 1
        })
    }

    /// True when records past the cursor are published.
    pub fn has_data(&self, cur: &Cursor) -> bool {
        self.hdr(Field::WritePos).load(Ordering::Acquire) > cur.pos
    }

    /// A reader that caught up, before sleeping on its eventfd (drained
    /// first). True: sleep, the hub wakes you. False: data arrived, read again.
    pub fn prepare_wait_data(&self, cur: &Cursor) -> bool {
        let wd = self.slot(cur.slot, SlotField::WaitData);
        wd.store(cur.pos + 1, Ordering::Relaxed);
        self.hdr(Field::WakeHub).store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.hdr(Field::WritePos).load(Ordering::Relaxed) > cur.pos {
            let _ = wd.compare_exchange(cur.pos + 1, 0, Ordering::Relaxed, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl Drop for BRing {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.heap.is_some() {
            return; // the Arc frees the memory
        }
        // SAFETY: base/map_len are what mmap returned; no borrow outlives self.
        let _ = unsafe { munmap(self.base.cast(), self.map_len) };
    }
}

impl From<RingError> for io::Error {
    fn from(e: RingError) -> io::Error {
        match e {
            RingError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
