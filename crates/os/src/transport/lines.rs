//! Line links: shell-friendly endpoints that speak lines, not frames.
//!
//! Used for children the hub spawns (their stdout lines are published, the
//! messages of a channel are written to their stdin, one per line) and for
//! per-channel publish FIFOs (`echo hi > /run/ipchub/pub/weather`). The link
//! turns each complete input line into a PUBLISH frame, so the hub sees an
//! ordinary client with ordinary back-pressure, and turns each DATA frame it
//! must deliver into `payload\n`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::stream::read_stream;
use super::{Link, ReadOutcome};
use crate::queue::OutQueue;
use crate::wire::{self, FrameType};

pub struct LineLink {
    rd: Option<OwnedFd>,
    wr: Option<OwnedFd>,
    /// Where input lines are published (None: input is discarded).
    channel: Option<String>,
    max_line: usize,
    partial: Vec<u8>,
    /// Bytes of a line that was too long, being skipped up to its newline.
    skipping: bool,
    out: Vec<u8>,
    out_off: usize,
    seq: u64,
    /// Lines refused because they exceeded the hub's message size.
    pub refused: u64,
    /// Dropped with the link: e.g. a publish FIFO's [`super::fifo::PlacedFifo`],
    /// which removes the FIFO.
    remove_on_drop: Option<Box<dyn Send>>,
    name: String,
}

impl LineLink {
    /// `rd` lines are published on `channel`; DATA frames are written to `wr`.
    pub fn new(
        rd: Option<OwnedFd>,
        wr: Option<OwnedFd>,
        channel: Option<String>,
        max_line: usize,
        name: &str,
    ) -> LineLink {
        LineLink {
            rd,
            wr,
            channel,
            max_line,
            partial: Vec::new(),
            skipping: false,
            out: Vec::new(),
            out_off: 0,
            seq: 0,
            refused: 0,
            remove_on_drop: None,
            name: name.to_string(),
        }
    }

    /// Keep `guard` until the link is dropped (a publish FIFO's
    /// [`super::fifo::PlacedFifo`] removes the FIFO then).
    pub fn remove_on_drop(mut self, guard: impl Send + 'static) -> LineLink {
        self.remove_on_drop = Some(Box::new(guard));
        self
    }

    fn emit(&mut self, line: &[u8], inbuf: &mut Vec<u8>) {
        let Some(ch) = &self.channel else { return };
        self.seq += 1;
        wire::encode(inbuf, FrameType::Publish, 0, 0, ch, line, 0, self.seq);
    }
}

impl Link for LineLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
        let Some(rd) = &self.rd else {
            return Ok(ReadOutcome::default());
        };
        let start = self.partial.len();
        let outcome = read_stream(rd, &mut self.partial, budget)?;
        let mut from = 0;
        let mut scan = start;
        while let Some(pos) = self.partial[scan..].iter().position(|b| *b == b'\n') {
            let end = scan + pos;
            if self.skipping {
                self.skipping = false;
            } else if end - from > self.max_line {
                self.refused += 1;
                tracing::warn!(endpoint = %self.name, limit = self.max_line, "line longer than hub.max_message_size refused");
            } else {
                let line = self.partial[from..end].to_vec();
                self.emit(&line, inbuf);
            }
            from = end + 1;
            scan = from;
        }
        self.partial.drain(..from);
        if self.partial.len() > self.max_line {
            // Never truncate and never buffer without bound: refuse the line.
            if !self.skipping {
                self.refused += 1;
                tracing::warn!(endpoint = %self.name, limit = self.max_line, "line longer than hub.max_message_size refused");
            }
            self.skipping = true;
            self.partial.clear();
        }
        if outcome.eof && !self.partial.is_empty() && !self.skipping {
            // A last line without a newline is still a message.
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, inbuf);
        }
        Ok(outcome)
    }

    fn flush(&mut self, q: &mut OutQueue) -> io::Result<u64> {
        let Some(wr) = &self.wr else {
            // Nobody to deliver to: drop whatever was queued (nothing
            // subscribes a write-less link, so only control frames land here).
            while q.front_frame(&mut self.out) {
                q.pop_front();
            }
            self.out.clear();
            return Ok(0);
        };
        loop {
            if self.out_off < self.out.len() {
                match nix::unistd::write(wr, &self.out[self.out_off..]) {
                    Ok(n) => self.out_off += n,
                    Err(nix::errno::Errno::EAGAIN) => return Ok(0),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            self.out.clear();
            self.out_off = 0;
            let mut frame = Vec::new();
            // Convert a batch of frames into lines, then write them at once.
            while self.out.len() < 64 * 1024 && q.front_frame(&mut frame) {
                q.pop_front();
                if let Ok(Some((f, _))) = wire::decode(&frame, u32::MAX) {
                    if f.header.ty == FrameType::Data {
                        self.out.extend_from_slice(f.payload);
                        self.out.push(b'\n');
                    }
                }
            }
            if self.out.is_empty() {
                return Ok(0);
            }
        }
    }

    fn read_fd(&self) -> RawFd {
        self.rd
            .as_ref()
            .or(self.wr.as_ref())
            .map_or(-1, |f| f.as_raw_fd())
    }

    fn write_fd(&self) -> RawFd {
        self.wr
            .as_ref()
            .or(self.rd.as_ref())
            .map_or(-1, |f| f.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_frames_and_data_becomes_lines() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        super::super::pipe::set_nonblocking(&r).unwrap();
        let mut link = LineLink::new(Some(r), Some(w2), Some("ch".into()), 8, "test");
        nix::unistd::write(&w, b"one\ntwo\nthis line is too long\nthr").unwrap();
        let mut inbuf = Vec::new();
        link.read_into(&mut inbuf, 1 << 20).unwrap();
        let mut payloads = Vec::new();
        let mut off = 0;
        while let Some((f, used)) = wire::decode(&inbuf[off..], 1 << 20).unwrap() {
            assert_eq!((f.header.ty, f.channel), (FrameType::Publish, "ch"));
            payloads.push(f.payload.to_vec());
            off += used;
        }
        assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(link.refused, 1);
        drop(w);
        inbuf.clear();
        assert!(link.read_into(&mut inbuf, 1 << 20).unwrap().eof);
        assert_eq!(wire::decode(&inbuf, 99).unwrap().unwrap().0.payload, b"thr");

        let mut q = OutQueue::new(10, 10_000);
        let mut f = Vec::new();
        wire::encode(&mut f, FrameType::Data, 0, 0, "ch", b"hello", 1, 1);
        q.push(crate::queue::Kind::Data, &[&f]);
        f.clear();
        wire::encode(&mut f, FrameType::Ack, 0, 0, "", b"", 0, 1);
        q.push(crate::queue::Kind::Control, &[&f]);
        link.flush(&mut q).unwrap();
        assert!(q.is_empty());
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&r2), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
    }
}
