//! A subscriber's bounded outbound queue of encoded frames.
//!
//! Frames are stored back to back in one byte ring so a stream transport can
//! hand the whole backlog to the kernel in a single `writev` of at most two
//! slices, however many small messages it holds; a second ring of lengths
//! keeps the frame boundaries that message transports (mqueue, shm) and the
//! `drop-oldest` policy need.
//!
//! Only data frames count against the message limits here. Control frames
//! (ACK, ERROR, MISSED, STATS_REPLY…) answer the peer's own requests and
//! are bounded by the hub, which counts every queued byte (`total_bytes`)
//! against the client's and its uid's byte limits and stops reading a peer
//! whose answers pile up.

use std::collections::VecDeque;

use crate::wire::{encode_header, FrameType, HEADER_LEN};

/// Capacity a queue keeps however little it holds.
const SHRINK_ABOVE: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message under `block` or `disconnect`: never evicted.
    Data,
    /// A message under `drop-oldest`: may be evicted to make room.
    Droppable,
    /// A MISSED notice; its count may still grow while it waits.
    Missed,
    Control,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    len: u32,
    kind: Kind,
}

#[derive(Debug)]
pub struct OutQueue {
    buf: VecDeque<u8>,
    frames: VecDeque<Meta>,
    /// Bytes of the front frame already handed to the transport.
    head_written: usize,
    data_msgs: usize,
    data_bytes: usize,
    max_msgs: usize,
    max_bytes: usize,
    /// Messages (data frames) handed to the transport whole, ever.
    written: u64,
}

impl OutQueue {
    pub fn new(max_msgs: usize, max_bytes: usize) -> OutQueue {
        OutQueue {
            buf: VecDeque::new(),
            frames: VecDeque::new(),
            head_written: 0,
            data_msgs: 0,
            data_bytes: 0,
            max_msgs,
            max_bytes,
            written: 0,
        }
    }

    pub fn set_limits(&mut self, max_msgs: usize, max_bytes: usize) {
        self.max_msgs = max_msgs;
        self.max_bytes = max_bytes;
    }

    /// Would a data frame of `len` bytes fit within the limits? An empty
    /// queue always accepts one frame, so a limit below one message can
    /// never wedge a subscriber.
    pub fn has_room(&self, len: usize) -> bool {
        self.data_msgs == 0
            || (self.data_msgs < self.max_msgs && self.data_bytes + len <= self.max_bytes)
    }

    /// Below half of both limits: where blocked publishers are resumed, so they
    /// are not woken for every freed slot.
    pub fn below_low_watermark(&self) -> bool {
        self.data_msgs <= self.max_msgs / 2 && self.total_bytes() <= self.max_bytes / 2
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    pub fn messages(&self) -> usize {
        self.data_msgs
    }
    /// Every queued frame, control frames included (what
    /// [`total_bytes`](Self::total_bytes) counts in bytes).
    pub fn frames(&self) -> usize {
        self.frames.len()
    }
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }
    /// Messages handed to the transport whole since the queue was made
    /// (written to the socket or pipe, sent to the message queue or the
    /// shm ring): what was delivered, as opposed to queued. The client may
    /// not have read all of them yet.
    pub fn written(&self) -> u64 {
        self.written
    }
    /// Every queued byte, control frames included.
    pub fn total_bytes(&self) -> usize {
        self.buf.len() - self.head_written
    }

    /// Append a frame given as parts (header, channel, payload): no
    /// intermediate buffer, one copy from the publisher's read buffer.
    pub fn push(&mut self, kind: Kind, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        for p in parts {
            self.buf.extend(p.iter());
        }
        self.frames.push_back(Meta {
            len: len as u32,
            kind,
        });
        if matches!(kind, Kind::Data | Kind::Droppable) {
            self.data_msgs += 1;
            self.data_bytes += len;
        }
    }

    /// Evict the oldest droppable frames until a frame of `len` fits, leaving
    /// a MISSED notice where they were. Returns whether it now fits (if not,
    /// the caller drops the new message instead and notes that) and how many
    /// were evicted. A frame partly written to the transport is never touched.
    pub fn evict_for(&mut self, len: usize) -> (bool, u64) {
        let mut evicted = 0u64;
        let mut idx = 0usize;
        let mut off = 0usize;
        let fits = 'evict: loop {
            if self.has_room(len) {
                break true;
            }
            // Find the next droppable frame from the front.
            loop {
                let Some(&meta) = self.frames.get(idx) else {
                    break 'evict false;
                };
                let untouched = idx > 0 || self.head_written == 0;
                if meta.kind == Kind::Droppable && untouched {
                    break;
                }
                off += meta.len as usize;
                idx += 1;
            }
            let meta = self.frames.remove(idx).expect("index checked above");
            self.buf.drain(off..off + meta.len as usize);
            self.data_msgs -= 1;
            self.data_bytes -= meta.len as usize;
            evicted += 1;
        };
        if evicted > 0 {
            self.note_missed_at(idx, off, evicted);
        }
        (fits, evicted)
    }

    /// Record `n` messages lost at the back of the queue (the new message
    /// itself was dropped): the notice goes where the gap is.
    pub fn note_missed_at_back(&mut self, n: u64) {
        let (idx, off) = (self.frames.len(), self.buf.len());
        self.note_missed_at(idx, off, n);
    }

    /// Insert a MISSED notice at frame index `idx` (byte offset `off`), or add
    /// to the notice already standing just before it.
    fn note_missed_at(&mut self, idx: usize, off: usize, n: u64) {
        if idx > 0 {
            let prev = self.frames[idx - 1];
            let prev_off = off - prev.len as usize;
            let untouched = idx - 1 > 0 || self.head_written == 0;
            if prev.kind == Kind::Missed && untouched {
                let mut count = [0u8; 8];
                for (i, b) in count.iter_mut().enumerate() {
                    *b = self.buf[prev_off + HEADER_LEN + i];
                }
                let total = u64::from_le_bytes(count).saturating_add(n);
                for (i, b) in total.to_le_bytes().iter().enumerate() {
                    self.buf[prev_off + HEADER_LEN + i] = *b;
                }
                return;
            }
        }
        let mut frame = [0u8; HEADER_LEN + 8];
        frame[..HEADER_LEN].copy_from_slice(&encode_header(FrameType::Missed, 0, 0, 0, 8, 0, 0));
        frame[HEADER_LEN..].copy_from_slice(&n.to_le_bytes());
        for (i, b) in frame.iter().enumerate() {
            self.buf.insert(off + i, *b);
        }
        self.frames.insert(
            idx,
            Meta {
                len: frame.len() as u32,
                kind: Kind::Missed,
            },
        );
    }

    /// Throw away every queued message not yet started (keeping control
    /// frames and a partly written head frame, so the stream stays
    /// well-formed). Returns how many messages were discarded. Used when a
    /// client is being disconnected: its ERROR must not wait behind data.
    pub fn discard_unstarted(&mut self) -> u64 {
        let mut buf = VecDeque::with_capacity(self.total_bytes().min(1 << 16));
        let mut frames = VecDeque::new();
        let mut discarded = 0;
        let mut off = 0usize;
        for (i, meta) in self.frames.iter().enumerate() {
            let len = meta.len as usize;
            let started = i == 0 && self.head_written > 0;
            let is_data = matches!(meta.kind, Kind::Data | Kind::Droppable);
            if is_data && !started {
                discarded += 1;
                self.data_msgs -= 1;
                self.data_bytes -= len;
            } else {
                buf.extend(self.buf.range(off..off + len));
                frames.push_back(*meta);
            }
            off += len;
        }
        self.buf = buf;
        self.frames = frames;
        discarded
    }

    /// Every queued frame whole (the written part of the head included)
    /// and how many bytes of the head were written: a planned restart
    /// hands the queue over as this.
    pub fn export_raw(&self) -> (Vec<u8>, usize) {
        (self.buf.iter().copied().collect(), self.head_written)
    }

    /// After pushing an exported queue's frames: `n` bytes of the front
    /// frame were written already. False (and nothing changed) unless
    /// `n` is less than the front frame.
    pub fn set_head_written(&mut self, n: usize) -> bool {
        match self.frames.front() {
            Some(m) if n < m.len as usize => {
                self.head_written = n;
                true
            }
            None if n == 0 => true,
            _ => false,
        }
    }

    /// Drop a front frame partly handed to a transport that then failed
    /// (the client library salvaging its queue after losing the hub: the
    /// rest of a torn frame must not start a new connection). Returns
    /// whether there was one.
    pub fn drop_partial_head(&mut self) -> bool {
        if self.head_written == 0 {
            return false;
        }
        let rest = self.frames.front().map_or(0, |m| m.len as usize) - self.head_written;
        self.consume(rest);
        true
    }

    /// The unwritten bytes, as at most two slices (for `writev`).
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let (a, b) = self.buf.as_slices();
        if self.head_written <= a.len() {
            (&a[self.head_written..], b)
        } else {
            (&b[self.head_written - a.len()..], &[])
        }
    }

    /// Mark `n` bytes as handed to a stream transport.
    pub fn consume(&mut self, n: usize) {
        self.head_written += n;
        while let Some(meta) = self.frames.front() {
            let len = meta.len as usize;
            if self.head_written < len {
                break;
            }
            self.head_written -= len;
            let meta = self.frames.pop_front().unwrap();
            if matches!(meta.kind, Kind::Data | Kind::Droppable) {
                self.data_msgs -= 1;
                self.data_bytes -= len;
                self.written += 1;
            }
            self.buf.drain(..len);
        }
        // Give back what a burst needed: the queue's memory follows what it
        // holds, not the most it ever held.
        if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() < self.buf.capacity() / 4 {
            self.buf.shrink_to((self.buf.len() * 2).max(SHRINK_ABOVE));
        }
    }

    /// Copy the front frame into `out` (cleared first) without removing it,
    /// for message transports that may refuse it (full queue) and retry.
    pub fn front_frame(&self, out: &mut Vec<u8>) -> bool {
        let Some((a, b)) = self.front_parts() else {
            return false;
        };
        out.clear();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        true
    }

    /// The front frame in place, as at most two slices (the ring may wrap
    /// inside it): a message transport that can gather (the shm ring) pushes
    /// these without an intermediate copy.
    pub fn front_parts(&self) -> Option<(&[u8], &[u8])> {
        let meta = self.frames.front()?;
        debug_assert_eq!(
            self.head_written, 0,
            "message transports never write partial frames"
        );
        let len = meta.len as usize;
        let (a, b) = self.buf.as_slices();
        Some(if a.len() >= len {
            (&a[..len], &[][..])
        } else {
            (a, &b[..len - a.len()])
        })
    }

    /// Remove the front frame after a message transport accepted it whole.
    pub fn pop_front(&mut self) {
        if let Some(meta) = self.frames.front() {
            let len = meta.len as usize;
            self.consume(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    fn data(seq: u64, n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, FrameType::Data, 0, 0, "c", &vec![b'x'; n], 1, seq);
        v
    }

    fn drain_all(q: &mut OutQueue) -> Vec<(FrameType, u64, Vec<u8>)> {
        let (a, b) = q.as_slices();
        let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
        q.consume(bytes.len());
        let mut out = Vec::new();
        let mut off = 0;
        while let Some((f, used)) = decode(&bytes[off..], 1 << 20).unwrap() {
            out.push((f.header.ty, f.header.seq, f.payload.to_vec()));
            off += used;
        }
        assert_eq!(off, bytes.len());
        out
    }

    #[test]
    fn limits_count_messages_and_bytes() {
        let mut q = OutQueue::new(2, 1000);
        assert!(
            q.has_room(10_000),
            "an empty queue takes one frame of any size"
        );
        q.push(Kind::Data, &[&data(1, 10)]);
        assert!(q.has_room(35));
        q.push(Kind::Data, &[&data(2, 10)]);
        assert!(!q.has_room(35), "message limit");
        q.push(Kind::Control, &[&data(3, 10)]);
        assert_eq!(q.messages(), 2, "control frames do not count");
        let mut q = OutQueue::new(100, 100);
        q.push(Kind::Data, &[&data(1, 50)]);
        assert!(!q.has_room(74 + 1), "byte limit");
    }

    #[test]
    fn partial_writes_keep_frame_boundaries() {
        let mut q = OutQueue::new(10, 10_000);
        for s in 0..3 {
            q.push(Kind::Data, &[&data(s, 100)]);
        }
        q.consume(30);
        assert_eq!(q.messages(), 3);
        q.consume(125 - 30);
        assert_eq!(q.messages(), 2);
        assert_eq!(q.total_bytes(), 250);
        let rest = drain_all(&mut q);
        assert_eq!(rest.iter().map(|f| f.1).collect::<Vec<_>>(), vec![1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_oldest_evicts_and_leaves_a_missed_notice_in_the_gap() {
        let mut q = OutQueue::new(3, 1 << 20);
        for s in 0..3 {
            q.push(Kind::Droppable, &[&data(s, 10)]);
        }
        assert_eq!(q.evict_for(34), (true, 1));
        q.push(Kind::Droppable, &[&data(3, 10)]);
        assert_eq!(q.evict_for(34), (true, 1));
        q.push(Kind::Droppable, &[&data(4, 10)]);
        let frames = drain_all(&mut q);
        let kinds: Vec<_> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            vec![
                (FrameType::Missed, 0),
                (FrameType::Data, 2),
                (FrameType::Data, 3),
                (FrameType::Data, 4)
            ]
        );
        assert_eq!(
            frames[0].2,
            2u64.to_le_bytes(),
            "one notice counting both losses"
        );
    }

    #[test]
    fn eviction_never_touches_partly_written_or_block_frames() {
        let mut q = OutQueue::new(2, 1 << 20);
        q.push(Kind::Droppable, &[&data(0, 10)]);
        q.push(Kind::Data, &[&data(1, 10)]);
        q.consume(5);
        assert_eq!(q.evict_for(34), (false, 0), "nothing may be evicted");
        q.note_missed_at_back(1);
        let (a, b) = q.as_slices();
        assert_eq!(a.len() + b.len(), 35 * 2 - 5 + 32);
    }

    #[test]
    fn discarding_keeps_the_stream_well_formed() {
        let mut q = OutQueue::new(10, 10_000);
        q.push(Kind::Data, &[&data(0, 10)]);
        q.push(Kind::Control, &[&data(1, 3)]);
        q.push(Kind::Droppable, &[&data(2, 10)]);
        q.consume(4);
        assert_eq!(q.discard_unstarted(), 1);
        q.push(Kind::Control, &[&data(3, 1)]);
        let mut rest = vec![0u8; 4];
        rest.copy_from_slice(&data(0, 10)[..4]);
        let (a, b) = q.as_slices();
        rest.extend(a.iter().chain(b));
        q.consume(rest.len() - 4);
        let mut off = 0;
        let mut seqs = Vec::new();
        while let Some((f, used)) = decode(&rest[off..], 1 << 20).unwrap() {
            seqs.push(f.header.seq);
            off += used;
        }
        assert_eq!(seqs, vec![0, 1, 3]);
        assert!(q.is_empty());
        assert_eq!(q.messages(), 0);
    }

    #[test]
    fn message_transports_take_whole_frames() {
        let mut q = OutQueue::new(10, 10_000);
        q.push(Kind::Data, &[&data(7, 3)[..20], &data(7, 3)[20..]]);
        let mut f = Vec::new();
        assert!(q.front_frame(&mut f));
        assert_eq!(f, data(7, 3));
        q.pop_front();
        assert!(q.is_empty());
        assert!(!q.front_frame(&mut f));
    }
}
