//! Byte-stream links: UNIX socket, pipe pair and FIFO pair.
//!
//! All three move a stream of frames with `read(2)` and `writev(2)`: input is
//! read in large chunks and every complete frame in them is decoded by the
//! caller; output hands the whole backlog (at most two slices of the queue's
//! ring) to the kernel in one call. That keeps syscalls per message far below
//! one, which is what decides throughput (docs/ARCHITECTURE.md, the performance model).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use super::{would_block, Link, ReadOutcome};
use crate::queue::OutQueue;

/// Read chunk: large enough that a busy stream needs few syscalls.
const CHUNK: usize = 64 * 1024;

pub struct StreamLink {
    rd: OwnedFd,
    /// None: writes go to `rd` (a socket is both directions).
    wr: Option<OwnedFd>,
}

impl StreamLink {
    /// A bidirectional stream (a connected UNIX socket).
    pub fn duplex(fd: OwnedFd) -> StreamLink {
        StreamLink { rd: fd, wr: None }
    }

    /// Two one-way streams (pipes, FIFOs): read from `rd`, write to `wr`.
    pub fn pair(rd: OwnedFd, wr: OwnedFd) -> StreamLink {
        StreamLink { rd, wr: Some(wr) }
    }

    fn wfd(&self) -> &OwnedFd {
        self.wr.as_ref().unwrap_or(&self.rd)
    }
}

/// Read from `fd` into `inbuf` until it would block, hits EOF or `budget`.
pub fn read_stream(fd: &impl AsFd, inbuf: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
    let mut out = ReadOutcome::default();
    loop {
        if out.bytes >= budget {
            out.more = true;
            return Ok(out);
        }
        if inbuf.capacity() - inbuf.len() < CHUNK / 2 {
            inbuf.reserve(CHUNK);
        }
        let spare = inbuf.spare_capacity_mut();
        // Never more than the budget left: what a caller buffers per call
        // is bounded by its budget, not by the buffer's capacity.
        let want = spare.len().min(budget - out.bytes);
        // SAFETY: `spare` is writable, uninitialised memory owned by `inbuf`
        // of `spare.len()` ≥ `want` bytes; read(2) writes at most `want`
        // and reports how many, which are then marked initialised below.
        let n = unsafe { libc::read(fd.as_fd().as_raw_fd(), spare.as_mut_ptr().cast(), want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => continue,
                _ if would_block(&e) => Ok(out),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    out.eof = true;
                    Ok(out)
                }
                _ => Err(e),
            };
        }
        if n == 0 {
            out.eof = true;
            return Ok(out);
        }
        // SAFETY: read(2) initialised the first `n` spare bytes.
        unsafe { inbuf.set_len(inbuf.len() + n as usize) };
        out.bytes += n as usize;
    }
}

/// Write as much of the queue as the kernel takes, one `writev` per round.
pub fn flush_stream(fd: &impl AsFd, q: &mut OutQueue) -> io::Result<()> {
    while !q.is_empty() {
        let (a, b) = q.as_slices();
        let iov = [IoSlice::new(a), IoSlice::new(b)];
        let iov = if b.is_empty() { &iov[..1] } else { &iov[..] };
        match nix::sys::uio::writev(fd.as_fd(), iov) {
            Ok(n) => q.consume(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Link for StreamLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
        read_stream(&self.rd, inbuf, budget)
    }

    fn flush(&mut self, q: &mut OutQueue) -> io::Result<u64> {
        flush_stream(self.wfd(), q).map(|()| 0)
    }

    fn read_fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    fn write_fd(&self) -> RawFd {
        self.wfd().as_raw_fd()
    }

    fn handover_fds(&self) -> Option<Vec<RawFd>> {
        Some(vec![self.read_fd(), self.write_fd()])
    }
}
