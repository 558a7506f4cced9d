//! Transports: the OS objects a client's frames travel through.
//!
//! Every transport carries the same frames (see [`crate::wire`]); they differ
//! only in how bytes move. The contract every implementation keeps, checked by
//! the conformance suite in `tests/transports.rs`:
//! - **order**: frames leave in the order they were queued and are read in the
//!   order they were written;
//! - **whole frames**: a message transport (mqueue, shm) carries exactly one
//!   frame per message and refuses one that does not fit, never truncating;
//!   a stream transport (socket, pipe, FIFO) carries a byte stream of frames;
//! - **non-blocking**: `read_into` and `flush` never block; `WouldBlock`
//!   leaves everything in place for the next readiness event;
//! - **bounded reads**: `read_into` takes at most `budget` bytes per call so
//!   one busy client cannot starve the others;
//! - **close**: end of stream (or a peer that went away) is reported as
//!   `eof`, never as data; a client that dies mid-frame leaves a partial frame
//!   that the caller discards and reports.

pub mod bring;
pub mod fifo;
pub mod lines;
pub mod mqueue;
pub mod pipe;
pub mod shm;
pub mod stream;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;

use crate::queue::OutQueue;

/// What one `read_into` call found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes appended to the input buffer.
    pub bytes: usize,
    /// The other side has gone: no more input will ever come.
    pub eof: bool,
    /// The budget ran out before the source was drained: call again soon
    /// (edge-triggered readiness will not say so again).
    pub more: bool,
}

/// One direction-pair of a client's data path, as the event loop sees it.
pub trait Link: Send {
    /// Append ready input to `inbuf` (at most about `budget` bytes).
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome>;
    /// Hand queued frames to the OS until the queue is empty or the OS would block.
    /// Returns how many frames were lost because the transport cannot carry them.
    fn flush(&mut self, q: &mut OutQueue) -> io::Result<u64>;
    /// The descriptor that becomes readable when input is ready.
    fn read_fd(&self) -> RawFd;
    /// The descriptor that becomes writable when output may proceed (may equal `read_fd`).
    fn write_fd(&self) -> RawFd;
    /// The descriptors a successor hub rebuilds this link from (planned
    /// restart, `daemon/handover.rs`), when they are all it needs: the read
    /// and write ends (pipe, FIFO, mqueue), or a shm link's two ring memfds
    /// and two eventfds (`up, down, hub_event, client_event`, the WELCOME
    /// order); `None`: the link cannot be handed over (its client
    /// reconnects).
    fn handover_fds(&self) -> Option<Vec<RawFd>> {
        None
    }
    /// True when room to write is signalled by `read_fd` becoming readable
    /// (shared memory: one eventfd means "input ready or output space"), so
    /// a waiter must not poll for POLLOUT, and must retry `flush` after
    /// every `read_into` (which may consume the notification).
    fn writable_via_read_fd(&self) -> bool {
        false
    }
    /// The largest frame this link can carry outward, when it is bounded
    /// below the hub's message size (a message queue's message size, a
    /// ring's record limit). Senders refuse bigger frames up front.
    fn max_frame(&self) -> Option<usize> {
        None
    }
    /// The eventfd that wakes the client on the other side (shared memory),
    /// for channel rings whose readers the hub wakes on their behalf.
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// The caller is about to sleep on `read_fd` after `read_into` found
    /// nothing: reset the readiness and arm whatever wake-up is needed.
    /// False: input arrived meanwhile, read again instead of sleeping.
    fn prepare_sleep(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    /// Readiness arrived while the hub is not reading this endpoint (paused
    /// by back-pressure): do what must not wait (a channel ring's wake-ups).
    fn wake_others(&mut self) {}
}

/// True for errors that mean "try again on the next readiness event".
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What a transport's hub side needs to know to build a client's data path.
pub struct Peer<'a> {
    pub id: u32,
    pub uid: u32,
    pub gid: u32,
    /// Where per-client files go (`<runtime>/fifo/…`).
    pub runtime_dir: &'a Path,
    /// The hub's largest payload, to size message queues and rings.
    pub max_message: u32,
    /// Requested shared memory ring size (`[shm] ring_size`).
    pub shm_ring_size: usize,
}

/// A data path built by the hub for one client.
pub struct Offer {
    /// The hub's side; None means data stays on the control socket.
    pub link: Option<Box<dyn Link>>,
    /// `key=value` pairs added to WELCOME (paths, queue names, sizes).
    pub welcome: Vec<(String, String)>,
    /// Descriptors passed with WELCOME (SCM_RIGHTS), in the documented order.
    pub fds: Vec<OwnedFd>,
}

/// Why a data path could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Permission(String),
    #[error("bad handover: {0}")]
    Handover(String),
}
