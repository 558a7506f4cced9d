//! Shared memory: one ring per direction in sealed memfds, plus one eventfd
//! per side to sleep on, all handed over with SCM_RIGHTS (nothing named in
//! /dev/shm).
//!
//! Each ring record is one frame, as on a message queue. Each side sleeps on
//! its own eventfd, which means "your input ring has data or your output ring
//! has space"; the other side writes it only when the sleeper armed a wait
//! (see `shm::ring`), so a busy stream makes no wake-up syscalls at all.
//! Records read from a ring are copied out before they are validated: the
//! peer may change shared memory at any time.
//!
//! This is the point-to-point path every shm client has (control frames,
//! wildcard subscriptions, channels the hub relays). Exact channels go
//! through their broadcast ring instead (`shm::bring`, `transport::bring`):
//! there the hub is not on the data path.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{Link, Offer, Peer, ReadOutcome, SetupError};
use crate::queue::OutQueue;
use crate::shm::{Notifier, Ring, RingError};
use crate::wire::{self, ErrorCode, FrameType};

/// Default ring data size per direction.
pub const DEFAULT_RING_SIZE: usize = 4 << 20;

pub struct ShmLink {
    rx: Ring,
    tx: Ring,
    /// Where we sleep.
    own: Notifier,
    /// What we write to wake the other side.
    peer: Notifier,
    buf: Vec<u8>,
    /// Client side: an empty, still-armed ring is polled without a syscall;
    /// `prepare_sleep` drains the eventfd before the client sleeps.
    lazy: bool,
    /// Hub side: copies of the two ring memfds (`up`, `down`), kept so a
    /// planned restart can hand the link to the next hub
    /// (`Link::handover_fds`); the mappings alone cannot be passed on.
    memfds: Option<[OwnedFd; 2]>,
}

fn ring_error(e: RingError) -> io::Error {
    match e {
        RingError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl ShmLink {
    /// Largest frame the outgoing ring can carry.
    pub fn max_frame(&self) -> usize {
        self.tx.max_record()
    }
}

impl Link for ShmLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        loop {
            let mut bad = None;
            let left = budget.saturating_sub(out.bytes).max(1);
            let n = self
                .rx
                .pop_batch(left, |rec| {
                    if bad.is_some() {
                        return;
                    }
                    // Copy first, validate the copy: the peer can rewrite the
                    // ring under us.
                    let start = inbuf.len();
                    inbuf.extend_from_slice(rec);
                    if let Err(e) = wire::frame::check_record(&inbuf[start..]) {
                        inbuf.truncate(start);
                        bad = Some(e);
                    } else {
                        out.bytes += rec.len();
                    }
                })
                .map_err(ring_error)?;
            if let Some(e) = bad {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad record in shared memory ring: {e}"),
                ));
            }
            if n > 0 && self.rx.consumer_should_wake() {
                self.peer.notify()?;
            }
            if out.bytes >= budget {
                out.more = true;
                return Ok(out);
            }
            if n == 0 {
                if self.lazy && self.rx.consumer_armed() {
                    // Still armed from last time, nothing written since: no
                    // syscall (a client polling for events would pay one per
                    // call while its data comes through channel rings).
                    return Ok(out);
                }
                // Drain before arming (a notification after this is kept).
                self.own.drain()?;
                if self.rx.consumer_prepare_wait() {
                    return Ok(out);
                }
            }
        }
    }

    fn flush(&mut self, q: &mut OutQueue) -> io::Result<u64> {
        let mut lost = 0;
        let mut pushed = false;
        while let Some((a, b)) = q.front_parts() {
            let len = a.len() + b.len();
            let ok = if len > self.tx.max_record() {
                // Never truncate: say in-band what was lost and why.
                let text = format!(
                    "message of {len} bytes exceeds this shared memory ring's record limit ({} bytes); dropped",
                    self.tx.max_record()
                );
                let mut head = [0u8; wire::HEADER_LEN];
                head.iter_mut()
                    .zip(a.iter().chain(b))
                    .for_each(|(d, s)| *d = *s);
                let seq = u64::from_le_bytes(head[16..24].try_into().unwrap());
                self.buf.clear();
                let payload = wire::frame::error_payload(ErrorCode::TooLarge, &text);
                wire::encode(&mut self.buf, FrameType::Error, 0, 0, "", &payload, 0, seq);
                let ok = self.tx.try_push(&[&self.buf]).map_err(ring_error)?;
                if ok {
                    lost += 1;
                }
                ok
            } else {
                // Straight from the queue into shared memory: one copy.
                self.tx.try_push(&[a, b]).map_err(ring_error)?
            };
            if ok {
                q.pop_front();
                pushed = true;
                continue;
            }
            if pushed && self.tx.producer_should_wake() {
                self.peer.notify()?;
            }
            pushed = false;
            if self.tx.producer_prepare_wait(len.min(self.tx.max_record())) {
                // Full: the consumer wakes us once a good part is free.
                return Ok(lost);
            }
        }
        if pushed && self.tx.producer_should_wake() {
            self.peer.notify()?;
        }
        Ok(lost)
    }

    fn max_frame(&self) -> Option<usize> {
        Some(self.tx.max_record())
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

    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.peer.as_fd())
    }

    fn handover_fds(&self) -> Option<Vec<RawFd>> {
        let [up, down] = self.memfds.as_ref()?;
        Some(vec![
            up.as_raw_fd(),
            down.as_raw_fd(),
            self.own.as_fd().as_raw_fd(),
            self.peer.as_fd().as_raw_fd(),
        ])
    }

    fn prepare_sleep(&mut self) -> io::Result<bool> {
        if !self.lazy {
            return Ok(true); // read_into already drained and armed
        }
        // The eventfd also carries channel-ring wake-ups: reset it before
        // re-arming, so one that comes after is kept.
        self.own.drain()?;
        Ok(self.rx.consumer_prepare_wait())
    }
}

/// Hub side: rings `up` (client → hub) and `down` (hub → client), and the two
/// eventfds. WELCOME passes `up, down, hub_event, client_event`.
pub fn offer(peer: &Peer<'_>, ring_size: usize) -> Result<Offer, SetupError> {
    let setup = |what: &str, e: io::Error| SetupError::Io {
        what: what.into(),
        source: e,
    };
    let need = 2 * (peer.max_message as usize + wire::HEADER_LEN + 255 + 64);
    let size = ring_size.max(need).next_power_of_two();
    let (up, up_fd) = Ring::create(size).map_err(|e| setup("shm ring", ring_error(e)))?;
    let (down, down_fd) = Ring::create(size).map_err(|e| setup("shm ring", ring_error(e)))?;
    let hub_ev = Notifier::new().map_err(|e| setup("eventfd", e))?;
    let client_ev = Notifier::new().map_err(|e| setup("eventfd", e))?;
    let dup = |n: &Notifier| n.as_fd().try_clone_to_owned().map_err(|e| setup("dup", e));
    let keep = |fd: &OwnedFd| fd.try_clone().map_err(|e| setup("dup", e));
    let memfds = [keep(&up_fd)?, keep(&down_fd)?];
    let fds: Vec<OwnedFd> = vec![up_fd, down_fd, dup(&hub_ev)?, dup(&client_ev)?];
    Ok(Offer {
        link: Some(Box::new(ShmLink {
            rx: up,
            tx: down,
            own: hub_ev,
            peer: client_ev,
            buf: Vec::new(),
            lazy: false,
            memfds: Some(memfds),
        })),
        welcome: vec![
            ("fds".into(), "up,down,hub_event,client_event".into()),
            ("ring_size".into(), size.to_string()),
        ],
        fds,
    })
}

/// Client side: map the rings and adopt the eventfds from WELCOME.
pub fn accept(fds: Vec<OwnedFd>) -> Result<ShmLink, SetupError> {
    let [up, down, hub_ev, client_ev]: [OwnedFd; 4] =
        fds.try_into().map_err(|v: Vec<OwnedFd>| {
            SetupError::Handover(format!("expected 4 shm descriptors, got {}", v.len()))
        })?;
    let ring =
        |fd: &OwnedFd| Ring::open(fd).map_err(|e| SetupError::Handover(format!("shm ring: {e}")));
    let ev = |fd: OwnedFd| {
        Notifier::from_fd(fd).map_err(|e| SetupError::Handover(format!("eventfd: {e}")))
    };
    Ok(ShmLink {
        rx: ring(&down)?,
        tx: ring(&up)?,
        own: ev(client_ev)?,
        peer: ev(hub_ev)?,
        buf: Vec::new(),
        lazy: true,
        memfds: None,
    })
}

/// Hub side, after a planned restart: the link a predecessor handed over
/// (`Link::handover_fds`: `up, down, hub_event, client_event`). Every
/// descriptor is checked again exactly as a client's are at WELCOME (the
/// client could write every byte of the rings, and the descriptors come by
/// number from the state): each memfd sealed against shrinking (and, as
/// the hub made it, growing and new seals), of a plausible size, with the ring header's magic, version and capacity;
/// each eventfd really an eventfd. The rings' positions live in the shared
/// memory, so the stream carries on where the old hub left it. `max_message`
/// is the hub's message size now: a ring too small to carry it is refused
/// (its client then reconnects and gets rings of the right size).
pub fn restore(fds: [OwnedFd; 4], max_message: u32) -> Result<ShmLink, SetupError> {
    let [up, down, hub_ev, client_ev] = fds;
    // Sealed as `offer` sealed them (shrink, grow, no new seal), not only
    // as a client requires (shrink).
    for fd in [&up, &down] {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let need = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)
            .map(SealFlag::from_bits_truncate)
            .map_err(|e| SetupError::Handover(format!("shm ring seals: {e}")))?;
        if !seals.contains(need) {
            return Err(SetupError::Handover(
                "shm ring memfd not sealed as the hub seals its rings".into(),
            ));
        }
    }
    let ring =
        |fd: &OwnedFd| Ring::open(fd).map_err(|e| SetupError::Handover(format!("shm ring: {e}")));
    let ev = |fd: OwnedFd| {
        Notifier::from_fd(fd).map_err(|e| SetupError::Handover(format!("eventfd: {e}")))
    };
    let (rx, tx) = (ring(&up)?, ring(&down)?);
    let need = max_message as usize + wire::HEADER_LEN + 255;
    for (what, r) in [("up", &rx), ("down", &tx)] {
        if r.max_record() < need {
            return Err(SetupError::Handover(format!(
                "shm ring {what} carries records of {} bytes, the hub's messages need {need}",
                r.max_record()
            )));
        }
    }
    Ok(ShmLink {
        rx,
        tx,
        own: ev(hub_ev)?,
        peer: ev(client_ev)?,
        buf: Vec::new(),
        lazy: false,
        memfds: Some([up, down]),
    })
}
