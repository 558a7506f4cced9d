//! The hub's end of a channel's broadcast ring (see `shm::bring` for the ring
//! and `hub::rings` for the routing): an endpoint of the event loop, like a
//! client, whose "link" is the ring.
//!
//! - reading: while the hub has subscribers on the channel that do not read
//!   the ring themselves, it holds a reader cursor and turns every record
//!   (a DATA frame written by a direct publisher, or by itself) into a
//!   PUBLISH for the hub to route to them;
//! - writing: DATA frames the hub routes to this endpoint (what clients of
//!   other transports publish on the channel) are written into the ring;
//! - waking: its eventfd is the one every participant writes when someone
//!   sleeps; on each wake-up it clears satisfied waits and writes the eventfd
//!   of each client to wake (one hub wake-up for all of a fan-out).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use super::{Link, ReadOutcome};
use crate::queue::OutQueue;
use crate::shm::bring::{BRing, Cursor, Push};
use crate::shm::{Notifier, RingError};
use crate::wire::{self, FrameType, HEADER_LEN};

pub use crate::shm::bring::HUB_SLOT;

/// What the event loop and the endpoint share.
pub struct RingShared {
    /// Eventfd of the client in each slot (None: free, or the hub's); one
    /// descriptor per client, shared by all its rings.
    pub wakers: Vec<Option<Arc<Notifier>>>,
    /// The hub has subscribers on the channel that need it to read; the
    /// event loop attaches the hub's cursor when this turns on.
    pub want_reader: bool,
    /// Bumped at each attach/detach, so the endpoint rejoins its cursor.
    pub reader_gen: u64,
    /// Our client id (the ring's lock token), set once the endpoint exists.
    pub token: u64,
    /// Messages lost before the hub read them (overwritten, or garbage),
    /// not yet counted in the hub's statistics (`tend_rings` takes them).
    pub missed: u64,
    /// Records the hub wrote itself.
    pub written: u64,
    /// Client ids a record read by the hub may name as its `origin`: the
    /// ring's writers, and for a while after they leave (until the hub's
    /// cursor passes the `write_pos` at their departure) those that left.
    pub writers: Vec<(u32, Option<u64>)>,
    /// While the hub reads: the records it wrote and has yet to read back.
    pub relayed: Relayed,
    /// Wake-up scans in a row that found the ring moving under them: past
    /// a few, the hub stops rescheduling itself at once (a participant
    /// rewriting positions must not make it spin) and the event loop's
    /// periodic look at the ring takes over.
    pub unsettled: u32,
    /// The hub's own cursor as its endpoint last stored it (None: not
    /// reading), to tell a forged slot-0 cursor.
    pub hub_cursor: Option<u64>,
}

impl RingShared {
    /// `id` writes the ring (`left` None), or stopped writing it when
    /// `write_pos` was `left`. Departed writers are kept for the hub's
    /// reader to get past their records, but at most a few rings' worth,
    /// oldest forgotten first (their records then retire the ring when read).
    pub fn set_writer(&mut self, id: u32, left: Option<u64>) {
        self.writers.retain(|(c, _)| *c != id);
        self.writers.push((id, left));
        while self.writers.len() > 4 * crate::shm::bring::MAX_SLOTS {
            match self.writers.iter().position(|(_, l)| l.is_some()) {
                Some(i) => self.writers.remove(i),
                None => break,
            };
        }
    }
}

/// Self-rescheduled wake-up scans in a row before the hub waits for its timer.
const MAX_UNSETTLED: u32 = 8;
/// Batches one `read_into` reads at most (each moves the cursor), so a
/// participant that keeps moving `write_pos` cannot hold the loop.
const MAX_BATCHES: usize = 64;

pub struct BringLink {
    ring: BRing,
    channel: String,
    own: Notifier,
    /// Our reader cursor, and the `reader_gen` it belongs to.
    cursor: Option<(Cursor, u64)>,
    shared: Arc<Mutex<RingShared>>,
}

/// The `origin` field of a record that passed [`record_ok`].
pub fn record_origin(rec: &[u8]) -> u32 {
    u32::from_le_bytes([rec[12], rec[13], rec[14], rec[15]])
}

/// True when `rec` (copied out of a channel ring) is exactly one DATA frame
/// on `channel`: anything else is a participant's garbage.
pub fn record_ok(rec: &[u8], channel: &str) -> bool {
    if wire::frame::check_record(rec).is_err() || rec[3] != FrameType::Data as u8 {
        return false;
    }
    let clen = u16::from_le_bytes([rec[6], rec[7]]) as usize;
    rec.get(HEADER_LEN..HEADER_LEN + clen) == Some(channel.as_bytes())
}

impl BringLink {
    pub fn new(ring: BRing, channel: &str, own: Notifier, shared: Arc<Mutex<RingShared>>) -> Self {
        BringLink {
            ring,
            channel: channel.to_string(),
            own,
            cursor: None,
            shared,
        }
    }

    fn token(&self) -> u64 {
        // Set by the event loop right after the endpoint is added.
        self.shared.lock().map_or(0, |s| s.token)
    }

    /// Rule 4 of `shm::bring`, hub side: wake every client whose wait is met.
    fn wake_clients(&self) {
        wake_clients(&self.ring, &self.shared, &self.own);
    }
}

fn wake_clients(ring: &BRing, shared: &Mutex<RingShared>, own: &Notifier) {
    let Ok(mut shared) = shared.lock() else {
        return;
    };
    let wakers = &shared.wakers;
    let settled = ring.wake_scan(|slot| {
        if let Some(Some(n)) = wakers.get(slot) {
            let _ = n.notify();
        }
    });
    if settled {
        shared.unsettled = 0;
    } else {
        shared.unsettled += 1;
        if shared.unsettled <= MAX_UNSETTLED {
            // Come back on the loop's next turn rather than spin here.
            let _ = own.notify();
        }
    }
}

/// The records the hub wrote into a ring, oldest first, kept until it reads
/// them back. What it reads back must be those bytes exactly: the record
/// travelled through memory every participant can write, and the hub
/// delivers it to its own subscribers (other users' clients among them)
/// under its original publisher's name. One byte buffer for all of them
/// (no allocation per message), at most the ring's capacity: a record the
/// hub has yet to read back is among the last that many bytes it wrote.
#[derive(Debug, Default)]
pub struct Relayed {
    /// (ring seq, length) of each record in `bytes`.
    records: VecDeque<(u64, usize)>,
    bytes: VecDeque<u8>,
}

impl Relayed {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
    }

    fn pop_front(&mut self) -> Option<(u64, usize)> {
        let (seq, len) = self.records.pop_front()?;
        self.bytes.drain(..len);
        Some((seq, len))
    }

    /// Keep record `seq` (written in `parts`), within `max` bytes in all.
    pub fn push(&mut self, seq: u64, parts: &[&[u8]], max: usize) {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        while self.bytes.len() + len > max && self.pop_front().is_some() {}
        for p in parts {
            self.bytes.extend(p.iter());
        }
        self.records.push_back((seq, len));
    }

    /// The hub read `rec` as record `seq`: None if it wrote no such record,
    /// else whether `rec` is what it wrote. Older records it kept were
    /// overwritten before it read them, and are forgotten.
    fn check(&mut self, seq: u64, rec: &[u8]) -> Option<bool> {
        while self.records.front().is_some_and(|(q, _)| *q < seq) {
            self.pop_front();
        }
        let &(q, len) = self.records.front()?;
        if q != seq {
            return None;
        }
        let (a, b) = self.bytes.as_slices();
        let same = len == rec.len() && {
            let n = a.len().min(len);
            a[..n] == rec[..n] && b[..len - n] == rec[n..]
        };
        self.pop_front();
        Some(same)
    }

    /// Each kept record, for a planned restart.
    pub fn export(&self) -> Vec<(u64, Vec<u8>)> {
        let mut at = 0;
        self.records
            .iter()
            .map(|&(seq, len)| {
                let rec = self.bytes.range(at..at + len).copied().collect();
                at += len;
                (seq, rec)
            })
            .collect()
    }

    /// What [`export`](Self::export) gave, taken back.
    pub fn import<'a>(records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Relayed {
        let mut r = Relayed::default();
        for (seq, rec) in records {
            r.push(seq, &[rec], usize::MAX);
        }
        r
    }
}

/// Why a record the hub read is not one a correct writer writes (None: it is).
fn check_read(rec: &[u8], seq: u64, channel: &str, s: &mut RingShared) -> Option<&'static str> {
    if !record_ok(rec, channel) {
        return Some("a record that is not a DATA frame on the ring's channel");
    }
    let origin = record_origin(rec);
    if let Some(same) = s.relayed.check(seq, rec) {
        return (!same).then_some("a record the hub wrote, overwritten");
    }
    if !s.writers.iter().any(|(id, _)| *id == origin) {
        return Some("a record whose origin is not one of the ring's writers");
    }
    None
}

impl Link for BringLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
        // Drain before scanning: a wake-up that comes after is kept.
        self.own.drain()?;
        if self.ring.reported_corrupt() {
            // PROTOCOL.md §6.2: a reader found a record no correct writer
            // writes; the ring is retired (the event loop hears of it as a
            // read error).
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a participant reported a record no correct writer writes",
            ));
        }
        self.wake_clients();
        let (want, gen) = match self.shared.lock() {
            Ok(s) => (s.want_reader, s.reader_gen),
            Err(_) => (false, 0),
        };
        if !want {
            self.cursor = None;
            return Ok(ReadOutcome::default());
        }
        if self.cursor.as_ref().is_none_or(|(_, g)| *g != gen) {
            let cur = self.ring.join(HUB_SLOT)?;
            // After a planned restart the shared slot-0 position must be
            // where the old hub left it: participants could move it while
            // no hub ran, and skip what other users published.
            let left = self.shared.lock().ok().and_then(|s| s.hub_cursor);
            if left.is_some_and(|p| p != cur.pos()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the hub's read position in the ring was moved while no hub ran",
                ));
            }
            self.cursor = Some((cur, gen));
        }
        let (cur, _) = self.cursor.as_mut().expect("just set");
        let mut out = ReadOutcome::default();
        let mut missed = 0u64;
        let mut bad: Option<&'static str> = None;
        let shared = self.shared.clone();
        let mut guard = shared.lock().ok();
        for batch in 0.. {
            if batch == MAX_BATCHES {
                out.more = true;
                break;
            }
            let channel = &self.channel;
            let b = self.ring.read_batch(
                cur,
                inbuf,
                budget.saturating_sub(out.bytes).max(1),
                |buf, ev| match ev {
                    crate::shm::bring::ReadEvent::Gap(n) => missed += n,
                    crate::shm::bring::ReadEvent::Record { start, seq } => {
                        let why = match guard.as_deref_mut() {
                            Some(s) => check_read(&buf[start..], seq, channel, s),
                            None => Some("ring state lost"),
                        };
                        match why {
                            None => buf[start + 3] = FrameType::Publish as u8,
                            Some(why) => {
                                buf.truncate(start);
                                bad.get_or_insert(why);
                            }
                        }
                    }
                },
            )?;
            if let Some(s) = guard.as_deref_mut() {
                s.hub_cursor = Some(cur.pos());
            }
            if let Some(why) = bad {
                // PROTOCOL.md §6.2: no correct writer writes this; the ring
                // is retired (the event loop hears of it as a read error).
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
            if b.wake_hub {
                drop(guard.take());
                wake_clients(&self.ring, &self.shared, &self.own);
                guard = shared.lock().ok();
            }
            out.bytes += b.bytes;
            if out.bytes >= budget {
                out.more = true;
                break;
            }
            if b.records == 0 && !self.ring.prepare_wait_data(cur) {
                continue;
            }
            if b.records == 0 {
                break;
            }
        }
        if let Some(s) = guard.as_deref_mut() {
            s.missed += missed;
        }
        drop(guard);
        if missed > 0 {
            tracing::warn!(channel = %self.channel, missed, "hub fell behind on a channel ring (drop-oldest)");
        }
        Ok(out)
    }

    fn flush(&mut self, q: &mut OutQueue) -> io::Result<u64> {
        let token = self.token();
        let mut lost = 0;
        let mut written = 0;
        while let Some((a, b)) = q.front_parts() {
            // Only messages go into the ring; notices for this endpoint
            // (MISSED after an eviction here) have no one to read them.
            let ty = if a.len() > 3 {
                a.get(3)
            } else {
                b.get(3 - a.len())
            }
            .copied();
            if ty != Some(FrameType::Data as u8) {
                q.pop_front();
                continue;
            }
            match self.ring.try_push(token, &[a, b]) {
                Ok(Push::Written { wake_hub, seq }) => {
                    written += 1;
                    if let Ok(mut s) = self.shared.lock() {
                        if s.want_reader {
                            // What the hub reads back must be these bytes.
                            s.relayed.push(seq, &[a, b], self.ring.capacity());
                        }
                    }
                    q.pop_front();
                    if wake_hub {
                        self.wake_clients();
                    }
                }
                Ok(Push::Full) => {
                    let len = a.len() + b.len();
                    if self.ring.prepare_wait_space(HUB_SLOT, len) {
                        break;
                    }
                }
                Ok(Push::Busy) => {
                    if self.ring.prepare_wait_lock() {
                        break;
                    }
                }
                Err(RingError::TooLarge { .. }) => {
                    q.pop_front();
                    lost += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if written > 0 {
            let reading = match self.shared.lock() {
                Ok(mut s) => {
                    s.written += written;
                    s.want_reader
                }
                Err(_) => false,
            };
            if reading {
                // What we wrote is also owed to the hub's own subscribers:
                // read it back on the next turn.
                self.own.notify()?;
            }
        }
        Ok(lost)
    }

    fn read_fd(&self) -> RawFd {
        self.own.as_fd().as_raw_fd()
    }

    fn write_fd(&self) -> RawFd {
        self.own.as_fd().as_raw_fd()
    }

    fn writable_via_read_fd(&self) -> bool {
        true
    }

    fn max_frame(&self) -> Option<usize> {
        Some(self.ring.max_record())
    }

    fn wake_others(&mut self) {
        // Draining is safe: resuming re-reads the ring whatever the eventfd says.
        let _ = self.own.drain();
        self.wake_clients();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::bring::Policy;
    use std::os::fd::AsFd;

    /// The hub's endpoint on a fresh ring, reading for its own subscribers.
    fn endpoint() -> (BringLink, std::os::fd::OwnedFd) {
        let (mgmt, memfd) = BRing::create(1 << 16, Policy::Block).unwrap();
        let shared = Arc::new(Mutex::new(RingShared {
            wakers: (0..crate::shm::bring::MAX_SLOTS).map(|_| None).collect(),
            want_reader: true,
            reader_gen: 0,
            token: 7,
            missed: 0,
            written: 0,
            writers: Vec::new(),
            relayed: Relayed::default(),
            unsettled: 0,
            hub_cursor: None,
        }));
        mgmt.attach(HUB_SLOT, 7, true);
        let link = BringLink::new(
            BRing::open(&memfd).unwrap(),
            "c",
            Notifier::new().unwrap(),
            shared,
        );
        (link, memfd)
    }

    fn data(payload: &[u8], origin: u32) -> Vec<u8> {
        let mut f = Vec::new();
        wire::encode(&mut f, FrameType::Data, 0, 0, "c", payload, origin, 1);
        f
    }

    /// The kept records, however the buffer wraps: each is checked byte
    /// for byte once, older ones are forgotten, the bound holds, and an
    /// export taken back checks the same.
    #[test]
    fn relayed_records_are_checked_byte_for_byte_across_the_buffer_wrap() {
        let mut r = Relayed::default();
        for seq in 0..200u64 {
            let rec: Vec<u8> = (0..(seq % 37 + 1)).map(|i| (seq + i) as u8).collect();
            let (a, b) = rec.split_at(rec.len() / 2);
            r.push(seq, &[a, b], 256);
            assert!(r.bytes() <= 256);
            if seq % 3 == 0 {
                let mut bad = rec.clone();
                *bad.last_mut().unwrap() ^= 1;
                assert_eq!(r.check(seq, &bad), Some(false));
            } else if seq % 3 == 1 {
                let again = Relayed::import(r.export().iter().map(|(q, v)| (*q, v.as_slice())));
                r = again;
                assert_eq!(r.check(seq, &rec), Some(true));
            }
        }
        assert_eq!(r.check(1000, b"x"), None);
        assert_eq!(r.bytes(), 0);
    }

    /// After a planned restart the hub reads on from where the old hub
    /// left off (the state says where), not from wherever a participant
    /// moved slot 0's shared position while no hub ran.
    #[test]
    fn a_moved_hub_position_after_a_restart_is_refused() {
        for (left, ok) in [(None, true), (Some(0), true), (Some(4096), false)] {
            let (mut link, _memfd) = endpoint();
            link.shared.lock().unwrap().hub_cursor = left;
            let got = link.read_into(&mut Vec::new(), 1 << 16);
            assert_eq!(got.is_ok(), ok, "{left:?}: {got:?}");
        }
    }

    /// A record the hub wrote for another client comes back byte for byte
    /// or not at all: a participant that rewrites its payload in the
    /// shared memory (keeping length, seq and origin) gets the ring
    /// retired, and the forged payload reaches no subscriber of the hub.
    #[test]
    fn a_relayed_record_rewritten_in_the_ring_is_refused() {
        for forge in [false, true] {
            let (mut link, memfd) = endpoint();
            let mut q = OutQueue::new(16, 1 << 16);
            let frame = data(b"honest!", 42);
            q.push(crate::queue::Kind::Data, &[&frame]);
            link.flush(&mut q).unwrap();
            if forge {
                // Find the payload in the memfd and rewrite it in place.
                let mut all = vec![0u8; 1 << 17];
                let n = nix::sys::uio::pread(memfd.as_fd(), &mut all, 0).unwrap();
                let at = all[..n]
                    .windows(7)
                    .position(|w| w == b"honest!")
                    .expect("the record is in the ring");
                nix::sys::uio::pwrite(memfd.as_fd(), b"FORGED!", at as i64).unwrap();
            }
            let mut inbuf = Vec::new();
            let got = link.read_into(&mut inbuf, 1 << 16);
            if forge {
                let e = got.expect_err("a rewritten record retires the ring");
                assert!(e.to_string().contains("overwritten"), "{e}");
                assert!(!inbuf.windows(7).any(|w| w == b"FORGED!"));
            } else {
                got.unwrap();
                assert!(inbuf.windows(7).any(|w| w == b"honest!"));
                assert_eq!(link.shared.lock().unwrap().relayed.bytes(), 0);
            }
        }
    }
}
