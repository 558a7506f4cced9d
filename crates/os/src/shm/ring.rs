//! SPSC ring of variable-size records in a sealed memfd shared by two processes, with flag-guarded wake-ups.

// ---------------------------------------------------------------------------
// Trust model
//
// The two ends are different processes and the peer may be hostile: it can
// write any value to any byte of the mapping at any time. So every value read
// from shared memory is loaded ONCE into a local, validated, and only the local
// is used afterwards (no double fetch). Offsets into the data area are always
// `pos & (cap - 1)` with `cap` taken from our own copy (read once at map time),
// and every access goes through `data_ptr`, which bounds-checks against that
// copy. A violation is `RingError::Corrupt`; loops are bounded by how much
// data was published when the call started. The memfd must carry
// F_SEAL_SHRINK, otherwise the peer could truncate it and turn our accesses
// into SIGBUS.
//
// Memory ordering (positions are monotonic u64 byte counts, never wrapped)
//
// 1. Data: the producer writes the record header and payload with plain or
//    Relaxed stores, then stores `write_pos` with Release. The consumer loads
//    `write_pos` with Acquire; everything the producer wrote before that store
//    is then visible, so records below `write_pos` can be read in place.
// 2. Space: the consumer finishes reading (the callback has returned) before
//    it stores `read_pos` with Release; the producer loads `read_pos` with
//    Acquire before reusing those bytes, so it never overwrites a record the
//    consumer is still reading.
// 3. Sleeping (the classic lost wake-up): the sleeper does
//        store(wait_mark); fence(SeqCst); load(other side's position)
//    and the waker does
//        store(own position) [Release, in push/pop]; fence(SeqCst); load(wait_mark)
//    This is the store-buffering pattern. With a SeqCst fence between the
//    store and the load on both sides, the two fences are ordered in the single
//    total order S, and whichever side's fence comes later must observe the
//    other side's store. So either the sleeper sees the new position and does
//    not sleep, or the waker sees the mark and wakes it; never neither. Plain
//    Release/Acquire is NOT enough here: it permits a store followed by a load
//    of another location to be reordered (x86 store buffer does exactly that).
// 4. The waker clears the mark with compare_exchange(seen_mark -> 0) and
//    writes the eventfd only if that CAS succeeded. The CAS (rather than a
//    swap or store) makes "wake" mean exactly "the wait I checked is
//    satisfied": if the sleeper meanwhile cancelled, or re-armed with a new
//    mark the waker has not reached, the CAS fails and nothing is cleared, so
//    there is one wake per wait and no spurious eventfd write. A failed CAS
//    cannot lose a wake-up: the waker's load saw the older mark, so by (3) the
//    re-arming sleeper's fence comes later in S and its re-check sees the
//    waker's position; it then either does not sleep, or sleeps waiting for
//    data past that position, which the waker has not written yet.
// 5. Marks are `target position + 1` so that 0 means "not waiting".
//
// Cross-process atomics: both processes map the same physical pages; Rust's
// atomics compile to plain hardware atomic instructions, which are coherent
// across address spaces, so the reasoning above holds between processes.
// ---------------------------------------------------------------------------

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::mman::munmap;

use super::memfd;

/// Smallest data area accepted by `create` / `open`.
pub const MIN_CAPACITY: usize = 4096;
/// Largest data area; also keeps every record length inside a u32.
pub const MAX_CAPACITY: usize = 1 << 30;

const MAGIC: u64 = u64::from_le_bytes(*b"IPCHRING");
const VERSION: u64 = 1;
/// The header takes a whole page so the data area starts page aligned.
const HEADER_SIZE: usize = 4096;
/// 128, not 64: x86 prefetches 64-byte lines in adjacent pairs, so two hot
/// fields 64 bytes apart would still ping-pong between the cores.
const LINE: usize = 128;
const REC_HDR: usize = 8;
const REC_ALIGN: usize = 8;
const MARK_DATA: u32 = u32::from_le_bytes(*b"RECD");
const MARK_PAD: u32 = u32::from_le_bytes(*b"PADD");

/// Header words. Immutable fields share the first line; each moving field has
/// its own line so the producer's and consumer's writes never share one.
#[derive(Clone, Copy)]
enum Field {
    Magic = 0,
    Version = 8,
    Capacity = 16,
    /// Producer-owned.
    WritePos = LINE as isize,
    /// Consumer-owned.
    ReadPos = 2 * LINE as isize,
    /// Set by the consumer before sleeping (`read_pos + 1`), cleared by the producer's CAS.
    ConsumerWait = 3 * LINE as isize,
    /// Set by the producer before sleeping (target `read_pos + 1`), cleared by the consumer's CAS.
    ProducerWait = 4 * LINE as isize,
}
const _: () = assert!(4 * LINE + 8 <= HEADER_SIZE);

/// Errors from ring operations.
#[derive(Debug)]
pub enum RingError {
    /// The record is larger than `max_record()` and could never be written.
    TooLarge { len: usize, max: usize },
    /// `create` was given a capacity that is not a power of two in range.
    InvalidCapacity(usize),
    /// The peer (or a bug) left shared state that no correct peer produces.
    /// The ring should be abandoned and the peer disconnected.
    Corrupt(&'static str),
    /// A system call failed.
    Io(io::Error),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::TooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds ring maximum of {max}")
            }
            RingError::InvalidCapacity(c) => write!(
                f,
                "ring capacity {c} is not a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            ),
            RingError::Corrupt(what) => write!(f, "shared ring corrupt: {what}"),
            RingError::Io(e) => write!(f, "ring i/o error: {e}"),
        }
    }
}

impl std::error::Error for RingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RingError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for RingError {
    fn from(e: io::Error) -> Self {
        RingError::Io(e)
    }
}

impl From<Errno> for RingError {
    fn from(e: Errno) -> Self {
        RingError::Io(e.into())
    }
}

fn corrupt<T>(what: &'static str) -> Result<T, RingError> {
    Err(RingError::Corrupt(what))
}

/// Bytes a record with `len` payload bytes occupies, header included.
fn record_size(len: usize) -> usize {
    REC_HDR + len.next_multiple_of(REC_ALIGN)
}

/// One u64 so the consumer reads length and marker in a single load and a
/// concurrent scribble cannot give it a length from one write and a marker
/// from another.
fn encode_header(marker: u32, len: usize) -> u64 {
    (u64::from(marker) << 32) | len as u64
}

/// One direction of a client<->hub channel: a mapping of header + data area.
///
/// `Send` but not `Sync`: the SPSC contract is one producer and one consumer,
/// and two threads of one process pushing concurrently would be a data race
/// inside this process. Share it behind a `Mutex` if several threads need it.
pub struct Ring {
    base: NonNull<u8>,
    map_len: usize,
    /// Our own copy, read once and validated when mapping; never re-read from
    /// shared memory, where the peer could change it.
    cap: usize,
    /// Tests under Miri use heap memory instead of a mapping.
    #[cfg(test)]
    heap: Option<std::sync::Arc<heap::HeapMem>>,
}

// SAFETY: the mapping is owned by the Ring and not tied to the creating
// thread; all shared accesses are atomics or raw-pointer copies, which are
// fine from any thread as long as only one thread uses the Ring at a time
// (guaranteed because Ring is not Sync).
unsafe impl Send for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring").field("capacity", &self.cap).finish()
    }
}

impl Ring {
    /// Creates a memfd-backed ring with `capacity` data bytes (power of two,
    /// `MIN_CAPACITY..=MAX_CAPACITY`). The returned fd is what gets sent to the
    /// peer; it is sealed against shrinking so the peer cannot make our
    /// accesses fault.
    pub fn create(capacity: usize) -> Result<(Ring, OwnedFd), RingError> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::InvalidCapacity(capacity));
        }
        let (base, fd) = memfd::create(c"ipchub-ring", HEADER_SIZE, capacity)?;
        let ring = Ring::mapped(base, capacity);
        ring.init_header();
        Ok((ring, fd))
    }

    /// Maps a ring from a memfd received from a (possibly hostile) peer.
    pub fn open(fd: &impl AsFd) -> Result<Ring, RingError> {
        let (base, cap) = memfd::open(fd, HEADER_SIZE, MIN_CAPACITY, MAX_CAPACITY)?;
        let ring = Ring::mapped(base, cap);
        if ring.hdr(Field::Magic).load(Ordering::Relaxed) != MAGIC {
            return corrupt("bad ring magic");
        }
        if ring.hdr(Field::Version).load(Ordering::Relaxed) != VERSION {
            return corrupt("unsupported ring version");
        }
        if ring.hdr(Field::Capacity).load(Ordering::Relaxed) != cap as u64 {
            return corrupt("ring capacity does not match memfd size");
        }
        Ok(ring)
    }

    /// Takes ownership of a mapping of `HEADER_SIZE + cap` bytes.
    fn mapped(base: NonNull<u8>, cap: usize) -> Ring {
        Ring {
            base,
            map_len: HEADER_SIZE + cap,
            cap,
            #[cfg(test)]
            heap: None,
        }
    }

    fn init_header(&self) {
        // Publication to the peer happens through the fd being sent over a
        // socket (a syscall), which orders these stores; Relaxed suffices.
        self.hdr(Field::Capacity)
            .store(self.cap as u64, Ordering::Relaxed);
        self.hdr(Field::Version).store(VERSION, Ordering::Relaxed);
        self.hdr(Field::Magic).store(MAGIC, Ordering::Relaxed);
    }

    /// Data bytes in the ring.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Largest payload `try_push` accepts. A record of at most cap/2 bytes
    /// (header included) fits into an empty ring at any write index: either
    /// before the end, or after a padding record of fewer than cap/2 bytes.
    /// Anything larger could wait forever, so it is refused up front.
    pub fn max_record(&self) -> usize {
        self.cap / 2 - REC_HDR
    }

    // ---- the only unsafe accessors of shared memory -------------------------

    fn hdr(&self, field: Field) -> &AtomicU64 {
        // SAFETY: every Field offset is a multiple of 8 and below HEADER_SIZE
        // (const-asserted above), map_len >= HEADER_SIZE + MIN_CAPACITY is a
        // construction invariant, and base is page aligned, so the pointer is
        // in bounds and 8-aligned. The mapping lives until `self` is dropped,
        // which outlives the returned borrow. AtomicU64 tolerates the peer's
        // concurrent writes (it is an UnsafeCell).
        unsafe { &*(self.base.as_ptr().add(field as usize) as *const AtomicU64) }
    }

    /// Pointer to `len` data-area bytes at data offset `idx`, bounds-checked
    /// against our own `cap`. All data-area accesses go through here.
    fn data_ptr(&self, idx: usize, len: usize) -> Result<*mut u8, RingError> {
        match idx.checked_add(len) {
            // wrapping_add is plain arithmetic; the check makes it in bounds.
            Some(end) if end <= self.cap => Ok(self.base.as_ptr().wrapping_add(HEADER_SIZE + idx)),
            _ => Err(bounds_bug()),
        }
    }

    /// The 8-byte record header word at data offset `idx`.
    fn data_word(&self, idx: usize) -> Result<&AtomicU64, RingError> {
        if !idx.is_multiple_of(REC_ALIGN) {
            return Err(bounds_bug());
        }
        let p = self.data_ptr(idx, 8)?;
        // SAFETY: data_ptr checked that 8 bytes at p are inside the mapping;
        // the data area starts at a page boundary and idx is a multiple of 8,
        // so p is 8-aligned. The mapping outlives the borrow of self.
        Ok(unsafe { &*(p as *const AtomicU64) })
    }

    fn write_bytes(&self, idx: usize, src: &[u8]) -> Result<(), RingError> {
        let dst = self.data_ptr(idx, src.len())?;
        // SAFETY: data_ptr checked the destination range lies in the mapping.
        // src is caller memory, never inside the ring's free space we are
        // filling, so the ranges do not overlap. No Rust reference to this free
        // space exists (pop_batch only hands out slices below write_pos, which
        // the producer never writes until read_pos has passed them).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    fn data_slice(&self, idx: usize, len: usize) -> Result<&[u8], RingError> {
        let p = self.data_ptr(idx, len)?;
        // SAFETY: data_ptr checked the range lies in the mapping, which lives
        // as long as the borrow of self. A correct producer does not write
        // these bytes until read_pos passes them (ordering rule 2). A hostile
        // producer could, which is outside Rust's model but cannot cause an
        // out-of-bounds access here: the length is our validated local copy.
        // Callers must treat the bytes as untrusted and possibly changing.
        Ok(unsafe { std::slice::from_raw_parts(p, len) })
    }

    // ---- producer side -------------------------------------------------------

    /// Validated (write_pos, read_pos) as seen by the producer.
    fn producer_positions(&self) -> Result<(u64, u64), RingError> {
        // Relaxed: only this process writes write_pos (program order suffices).
        let w = self.hdr(Field::WritePos).load(Ordering::Relaxed);
        // Acquire: pairs with the consumer's Release so its reads of the freed
        // bytes happen before we overwrite them (rule 2).
        let r = self.hdr(Field::ReadPos).load(Ordering::Acquire);
        check_positions(w, r, self.cap)?;
        Ok((w, r))
    }

    /// Appends one record made of the concatenation of `parts`.
    /// Ok(true) = written; Ok(false) = not enough free space right now;
    /// Err(TooLarge) if it could never fit.
    pub fn try_push(&self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let max = self.max_record();
        let len = parts
            .iter()
            .try_fold(0usize, |acc, p| acc.checked_add(p.len()))
            .unwrap_or(usize::MAX);
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        let (w, r) = self.producer_positions()?;
        let total = record_size(len);
        let idx = (w as usize) & (self.cap - 1);
        let tail = self.cap - idx;
        // A record is always contiguous so the consumer can read it in place;
        // if it does not fit before the end, pad out the tail and start at 0.
        let pad = if total <= tail { 0 } else { tail };
        let free = self.cap - (w - r) as usize;
        if pad + total > free {
            return Ok(false);
        }
        let Some(new_w) = w.checked_add((pad + total) as u64) else {
            return corrupt("write_pos about to overflow");
        };
        let start = if pad == 0 {
            idx
        } else {
            self.data_word(idx)?
                .store(encode_header(MARK_PAD, tail - REC_HDR), Ordering::Relaxed);
            0
        };
        self.data_word(start)?
            .store(encode_header(MARK_DATA, len), Ordering::Relaxed);
        let mut off = start + REC_HDR;
        for p in parts {
            self.write_bytes(off, p)?;
            off += p.len();
        }
        // Release: publishes the header and payload written above (rule 1).
        self.hdr(Field::WritePos).store(new_w, Ordering::Release);
        Ok(true)
    }

    /// Call after one or more pushes. True exactly when the consumer is asleep
    /// waiting for data we have now written; the caller then writes the
    /// consumer's eventfd. Calling it once per batch of pushes is enough.
    pub fn producer_should_wake(&self) -> bool {
        // Orders our write_pos store before the mark load (rule 3).
        fence(Ordering::SeqCst);
        let wait = self.hdr(Field::ConsumerWait);
        let mark = wait.load(Ordering::Relaxed);
        if mark == 0 {
            return false;
        }
        // mark = consumer's read_pos + 1: wake once we have written past it.
        if self.hdr(Field::WritePos).load(Ordering::Relaxed) < mark {
            return false;
        }
        // CAS against the mark we checked: see rule 4.
        wait.compare_exchange(mark, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Call when `try_push` of a `record_len`-byte record returned Ok(false).
    /// Records that we wait for enough free space and re-checks. True: sleep
    /// (poll the producer's eventfd), then retry the push. False: space
    /// appeared meanwhile (or the record can never fit), retry immediately.
    /// The consumer wakes us only once max(cap/4, space this record needs) is
    /// free, so a slow consumer does not cost one wake-up per freed record.
    pub fn producer_prepare_wait(&self, record_len: usize) -> bool {
        if record_len > self.max_record() {
            return false;
        }
        // Only we move write_pos, so the space this record needs (including a
        // possible padding record) is fixed until we push.
        let w = self.hdr(Field::WritePos).load(Ordering::Relaxed);
        let total = record_size(record_len);
        let tail = self.cap - ((w as usize) & (self.cap - 1));
        let needed = if total <= tail { total } else { tail + total };
        let want = needed.max(self.cap / 4) as u64;
        // free >= want  <=>  read_pos >= write_pos + want - cap
        let target = w.saturating_add(want).saturating_sub(self.cap as u64);
        let wait = self.hdr(Field::ProducerWait);
        wait.store(target.saturating_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst); // rule 3
        let r = self.hdr(Field::ReadPos).load(Ordering::Relaxed);
        if r >= target {
            // Only we set this mark, so clearing it with a store cannot erase a
            // mark of the consumer's; at worst the consumer already CASed it
            // and the eventfd gets one spurious write.
            wait.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    // ---- consumer side -------------------------------------------------------

    /// Calls `f` in place on every complete record available when the call
    /// starts, in order, then frees their space; returns how many were
    /// consumed. `max_bytes` is a soft budget of payload bytes: the first
    /// record is always delivered (a budget smaller than a record must not
    /// stall the ring), later ones only while the total stays within it.
    ///
    /// The slice points into shared memory: a hostile producer can change it
    /// while `f` runs, so `f` must copy any field before validating it.
    ///
    /// On Corrupt, the records before the bad one have been consumed and
    /// read_pos stops right before the bad record.
    pub fn pop_batch(
        &self,
        max_bytes: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, RingError> {
        // Relaxed: only this process writes read_pos.
        let r0 = self.hdr(Field::ReadPos).load(Ordering::Relaxed);
        // Acquire: makes the records below w visible (rule 1).
        let w = self.hdr(Field::WritePos).load(Ordering::Acquire);
        check_positions(w, r0, self.cap)?;
        let mut pos = r0;
        let mut count = 0usize;
        let mut bytes = 0usize;
        let mut result = Ok(());
        // Bounded: pos grows by at least 8 per iteration and w - r0 <= cap.
        while pos < w {
            match self.next_record(pos, w) {
                Ok(Rec::Pad(skip)) => pos += skip as u64,
                Ok(Rec::Data { off, len, total }) => {
                    if count > 0 && bytes.saturating_add(len) > max_bytes {
                        break;
                    }
                    match self.data_slice(off, len) {
                        Ok(s) => f(s),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                    count += 1;
                    bytes += len;
                    pos += total as u64;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if pos != r0 {
            // Release: our reads of the consumed records (f has returned)
            // happen before the producer may overwrite them (rule 2).
            self.hdr(Field::ReadPos).store(pos, Ordering::Release);
        }
        result.map(|()| count)
    }

    /// Validates the record at `pos`, given that the producer published up to `w`.
    fn next_record(&self, pos: u64, w: u64) -> Result<Rec, RingError> {
        let idx = (pos as usize) & (self.cap - 1);
        let avail = w - pos;
        // Single load into a local: the peer may change the word right after.
        let h = self.data_word(idx)?.load(Ordering::Relaxed);
        let marker = (h >> 32) as u32;
        let len = (h & 0xffff_ffff) as usize;
        let room = self.cap - idx;
        match marker {
            MARK_PAD => {
                // The producer pads only when a record does not fit before the
                // end, which is never the case at offset 0.
                if idx == 0 {
                    return corrupt("padding record at start of data area");
                }
                if len != room - REC_HDR {
                    return corrupt("padding record does not end at end of data area");
                }
                if room as u64 > avail {
                    return corrupt("padding record extends past write_pos");
                }
                Ok(Rec::Pad(room))
            }
            MARK_DATA => {
                if len > self.max_record() {
                    return corrupt("record length exceeds max_record");
                }
                let total = record_size(len);
                if total as u64 > avail {
                    return corrupt("record extends past write_pos");
                }
                if total > room {
                    return corrupt("record crosses end of data area");
                }
                Ok(Rec::Data {
                    off: idx + REC_HDR,
                    len,
                    total,
                })
            }
            _ => corrupt("bad record marker"),
        }
    }

    /// True when no record is waiting (or, for the consumer, until the next
    /// `pop_batch`, which also reports any corruption).
    pub fn is_empty(&self) -> bool {
        let r = self.hdr(Field::ReadPos).load(Ordering::Relaxed);
        r == self.hdr(Field::WritePos).load(Ordering::Acquire)
    }

    /// Call when the ring looked empty, before sleeping on the consumer's
    /// eventfd (drain the eventfd before this, not after). True: the ring is
    /// still empty and the producer will wake us; sleep. False: data arrived
    /// meanwhile; pop again instead of sleeping.
    pub fn consumer_prepare_wait(&self) -> bool {
        let r = self.hdr(Field::ReadPos).load(Ordering::Relaxed);
        let wait = self.hdr(Field::ConsumerWait);
        // wrapping: r == u64::MAX is already corrupt (misaligned); never
        // panic here, the next pop_batch reports it.
        wait.store(r.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst); // rule 3
                                 // Relaxed: we only compare; pop_batch does its own Acquire load.
        if self.hdr(Field::WritePos).load(Ordering::Relaxed) != r {
            // Only we set this mark, see producer_prepare_wait.
            wait.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// True while the wait `consumer_prepare_wait` armed is still in place
    /// (the producer has not written since, or it would have cleared it):
    /// the eventfd was drained before arming, so there is nothing to drain
    /// or re-arm, and a caller polling an empty ring can skip both syscalls.
    pub fn consumer_armed(&self) -> bool {
        let r = self.hdr(Field::ReadPos).load(Ordering::Relaxed);
        self.hdr(Field::ConsumerWait).load(Ordering::Relaxed) == r.wrapping_add(1)
            && self.hdr(Field::WritePos).load(Ordering::Acquire) == r
    }

    /// Call after `pop_batch` freed space. True exactly when the producer is
    /// asleep and enough space (max(cap/4, what its record needs)) is now
    /// free; the caller then writes the producer's eventfd.
    pub fn consumer_should_wake(&self) -> bool {
        // Orders our read_pos store before the mark load (rule 3).
        fence(Ordering::SeqCst);
        let wait = self.hdr(Field::ProducerWait);
        let mark = wait.load(Ordering::Relaxed);
        if mark == 0 {
            return false;
        }
        // mark = target read_pos + 1 (mark >= 1 here, no underflow).
        if self.hdr(Field::ReadPos).load(Ordering::Relaxed) < mark - 1 {
            return false;
        }
        wait.compare_exchange(mark, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }
}

enum Rec {
    Pad(usize),
    Data {
        off: usize,
        len: usize,
        total: usize,
    },
}

/// Invariants any correct pair of peers keeps; checked on every push/pop.
fn check_positions(w: u64, r: u64, cap: usize) -> Result<(), RingError> {
    if r > w {
        return corrupt("read_pos ahead of write_pos");
    }
    if w - r > cap as u64 {
        return corrupt("write_pos more than capacity ahead of read_pos");
    }
    if !(w | r).is_multiple_of(REC_ALIGN as u64) {
        return corrupt("ring position misaligned");
    }
    Ok(())
}

/// A data access failed the last-line bounds check. The validation before it
/// should make that impossible; tests turn it into a panic so a validation
/// gap is caught, production reports it as corruption instead of crashing.
fn bounds_bug() -> RingError {
    if cfg!(test) {
        panic!("ring bounds check failed: validation let a bad offset through");
    }
    RingError::Corrupt("internal bounds check failed")
}

impl Drop for Ring {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.heap.is_some() {
            return; // the Arc frees the memory
        }
        // SAFETY: base/map_len are exactly what mmap returned, and no borrow
        // of the mapping can outlive `self`. An error cannot be handled in
        // drop; the range would only leak.
        let _ = unsafe { munmap(self.base.cast(), self.map_len) };
    }
}

/// Heap-backed rings so the single-process tests also run under Miri, which
/// cannot do memfd_create/mmap.
#[cfg(test)]
pub(super) mod heap {
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::sync::Arc;

    pub struct HeapMem {
        ptr: NonNull<u8>,
        layout: Layout,
    }

    impl HeapMem {
        /// `size` zeroed bytes, page aligned (the channel ring's tests too).
        pub fn zeroed(size: usize) -> Arc<HeapMem> {
            let layout = Layout::from_size_align(size, 4096).unwrap();
            // SAFETY: layout has non-zero size.
            let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("alloc");
            Arc::new(HeapMem { ptr, layout })
        }

        pub fn ptr(&self) -> NonNull<u8> {
            self.ptr
        }
    }

    // SAFETY: plain owned allocation, only accessed through Ring's accessors.
    unsafe impl Send for HeapMem {}
    // SAFETY: as above; the memory is only touched via atomics/raw copies.
    unsafe impl Sync for HeapMem {}

    impl Drop for HeapMem {
        fn drop(&mut self) {
            // SAFETY: allocated in `pair` with this exact layout.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }

    /// Two Ring handles over the same zeroed memory, like two mappings of one memfd.
    pub fn pair(cap: usize) -> (Ring, Ring) {
        let layout = Layout::from_size_align(HEADER_SIZE + cap, 4096).unwrap();
        // SAFETY: layout has non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("alloc");
        let mem = Arc::new(HeapMem { ptr, layout });
        let mk = || Ring {
            base: ptr,
            map_len: layout.size(),
            cap,
            heap: Some(mem.clone()),
        };
        let a = mk();
        a.init_header();
        let b = mk();
        (a, b)
    }
}

#[cfg(test)]
mod tests;
