//! POSIX message queues: a queue pair per client, one frame per message, the
//! frame's priority byte as the message priority.
//!
//! Names are `/ipchub.<hub pid>.<client id>.up|down`: the hub's pid makes them
//! unique across hubs sharing the mqueue namespace (parallel test hubs) and
//! lets a restarted hub recognise leftovers of a dead one. Queues are created
//! as large as the kernel allows (`fs.mqueue.msg_max`/`msgsize_max`; the
//! package raises both) and fall back to the defaults (10 × 8192); a frame
//! bigger than a queue's message size is refused, never truncated.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::mqueue::{
    mq_attr_member_t, mq_getattr, mq_open, mq_receive, mq_send, mq_unlink, MQ_OFlag, MqAttr, MqdT,
};
use nix::sys::stat::Mode;

use super::{Link, Offer, Peer, ReadOutcome, SetupError};
use crate::hub::queue::OutQueue;
use crate::wire::{self, ErrorCode, FrameType};

/// Where Linux shows the mqueue namespace (when mounted).
pub const MQUEUE_FS: &str = "/dev/mqueue";
const PREFIX: &str = "ipchub.";

/// An open queue, closed on drop and unlinked too when we created it.
struct Queue {
    mqd: Option<MqdT>,
    name: String,
    owned: bool,
    msgsize: usize,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(m) = self.mqd.take() {
            let _ = nix::mqueue::mq_close(m);
        }
        if self.owned {
            let _ = mq_unlink(self.name.as_str());
        }
    }
}

impl Queue {
    fn mqd(&self) -> &MqdT {
        self.mqd.as_ref().expect("open until drop")
    }
}

/// Create a queue as big as the kernel lets us, falling back step by step.
fn create(name: &str, max_frame: usize, peer: &Peer<'_>) -> Result<Queue, SetupError> {
    let flags = MQ_OFlag::O_CREAT
        | MQ_OFlag::O_EXCL
        | MQ_OFlag::O_RDWR
        | MQ_OFlag::O_NONBLOCK
        | MQ_OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o600);
    let limit = |path: &str, default: usize| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(default)
    };
    let msg_max = limit("/proc/sys/fs/mqueue/msg_max", 10).min(256);
    let size_max = limit("/proc/sys/fs/mqueue/msgsize_max", 8192);
    let mut tries = vec![(msg_max, size_max.min(max_frame.max(8192))), (10, 8192)];
    tries.dedup();
    let mut last = None;
    for (maxmsg, msgsize) in tries {
        let attr = MqAttr::new(
            0,
            maxmsg as mq_attr_member_t,
            msgsize as mq_attr_member_t,
            0,
        );
        match mq_open(name, flags, mode, Some(&attr)) {
            Ok(mqd) => {
                let q = Queue {
                    mqd: Some(mqd),
                    name: name.to_string(),
                    owned: true,
                    msgsize,
                };
                if nix::unistd::geteuid().as_raw() != peer.uid {
                    nix::unistd::fchown(
                        q.mqd().as_fd().as_raw_fd(),
                        Some(peer.uid.into()),
                        Some(peer.gid.into()),
                    )
                    .map_err(|e| {
                        SetupError::Permission(format!(
                            "cannot give message queue {name} to uid {}: {e}",
                            peer.uid
                        ))
                    })?;
                }
                return Ok(q);
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one try");
    Err(SetupError::Io {
        what: format!("mq_open {name}"),
        source: e.into(),
    })
}

/// The hub's (or client's) side of a queue pair.
pub struct MqueueLink {
    rx: Queue,
    tx: Queue,
    buf: Vec<u8>,
}

impl MqueueLink {
    /// Largest frame the outgoing queue takes.
    pub fn max_frame(&self) -> usize {
        self.tx.msgsize
    }
}

impl Link for MqueueLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> std::io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        self.buf.resize(self.rx.msgsize, 0);
        loop {
            if out.bytes >= budget {
                out.more = true;
                return Ok(out);
            }
            let mut prio = 0u32;
            match mq_receive(self.rx.mqd(), &mut self.buf, &mut prio) {
                Ok(n) => {
                    // One message must be exactly one frame: refuse anything
                    // else here, before it can desynchronise the stream.
                    wire::frame::check_record(&self.buf[..n]).map_err(|e| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("bad message on {}: {e}", self.rx.name),
                        )
                    })?;
                    inbuf.extend_from_slice(&self.buf[..n]);
                    out.bytes += n;
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(out),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self, q: &mut OutQueue) -> std::io::Result<u64> {
        let mut lost = 0;
        while q.front_frame(&mut self.buf) {
            let prio = self.buf[5] as u32;
            if self.buf.len() > self.tx.msgsize {
                // Never truncate: tell the reader in-band what it lost and why.
                let text = format!(
                    "message of {} bytes on channel '{}' exceeds this message queue's message size ({} bytes); dropped",
                    self.buf.len(),
                    wire::decode(&self.buf, u32::MAX).ok().flatten().map_or("", |(f, _)| f.channel),
                    self.tx.msgsize
                );
                let mut err = Vec::new();
                // The hub never queues DATA bigger than this queue takes
                // (`Hub::set_max_frame`); what remains is an answer to this
                // client's own request, whose seq it may carry. Never echo
                // another client's seq: DATA carries the publisher's.
                let seq = if self.buf[3] == FrameType::Data as u8 {
                    0
                } else {
                    u64::from_le_bytes(self.buf[16..24].try_into().unwrap())
                };
                wire::encode(
                    &mut err,
                    FrameType::Error,
                    0,
                    0,
                    "",
                    &wire::frame::error_payload(ErrorCode::TooLarge, &text),
                    0,
                    seq,
                );
                err.truncate(self.tx.msgsize);
                match mq_send(self.tx.mqd(), &err, 0) {
                    Ok(()) => {
                        q.pop_front();
                        lost += 1;
                        continue;
                    }
                    Err(nix::errno::Errno::EAGAIN) => return Ok(lost),
                    Err(e) => return Err(e.into()),
                }
            }
            match mq_send(self.tx.mqd(), &self.buf, prio) {
                Ok(()) => q.pop_front(),
                Err(nix::errno::Errno::EAGAIN) => return Ok(lost),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(lost)
    }

    fn max_frame(&self) -> Option<usize> {
        Some(self.tx.msgsize)
    }

    fn read_fd(&self) -> RawFd {
        self.rx.mqd().as_fd().as_raw_fd()
    }

    fn write_fd(&self) -> RawFd {
        self.tx.mqd().as_fd().as_raw_fd()
    }
}

fn queue_name(peer: &Peer<'_>, dir: &str) -> String {
    format!("/{PREFIX}{}.{}.{dir}", std::process::id(), peer.id)
}

/// Hub side: create `up` (client → hub) and `down` (hub → client).
pub fn offer(peer: &Peer<'_>) -> Result<Offer, SetupError> {
    let max_frame = peer.max_message as usize + wire::HEADER_LEN + 255;
    let up = create(&queue_name(peer, "up"), max_frame, peer)?;
    let down = create(&queue_name(peer, "down"), max_frame, peer)?;
    let welcome = vec![
        ("mq_up".into(), up.name.clone()),
        ("mq_down".into(), down.name.clone()),
        ("mq_msgsize_up".into(), up.msgsize.to_string()),
        ("mq_msgsize_down".into(), down.msgsize.to_string()),
    ];
    Ok(Offer {
        link: Some(Box::new(MqueueLink {
            rx: up,
            tx: down,
            buf: Vec::new(),
        })),
        welcome,
        fds: Vec::new(),
    })
}

/// Client side: open the queues named in WELCOME.
pub fn accept(up: &str, down: &str) -> Result<MqueueLink, SetupError> {
    let open = |name: &str, flags: MQ_OFlag| -> Result<Queue, SetupError> {
        let mqd = mq_open(
            name,
            flags | MQ_OFlag::O_NONBLOCK | MQ_OFlag::O_CLOEXEC,
            Mode::empty(),
            None,
        )
        .map_err(|e| SetupError::Io {
            what: format!("mq_open {name}"),
            source: e.into(),
        })?;
        let attr = mq_getattr(&mqd).map_err(|e| SetupError::Io {
            what: format!("mq_getattr {name}"),
            source: e.into(),
        })?;
        Ok(Queue {
            mqd: Some(mqd),
            name: name.to_string(),
            owned: false,
            msgsize: attr.msgsize() as usize,
        })
    };
    let rx = open(down, MQ_OFlag::O_RDONLY)?;
    let tx = open(up, MQ_OFlag::O_WRONLY)?;
    Ok(MqueueLink {
        rx,
        tx,
        buf: Vec::new(),
    })
}

/// Remove queues left by hubs that no longer run (killed with -9). Only
/// looks where the namespace is mounted; returns how many were removed.
pub fn reap_stale() -> usize {
    let Ok(dir) = std::fs::read_dir(MQUEUE_FS) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = pid == std::process::id() as i32
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .is_ok_and(|()| is_ipchubd(pid));
        if !alive && mq_unlink(format!("/{name}").as_str()).is_ok() {
            n += 1;
        }
    }
    n
}

/// A recycled pid may belong to anything: only an ipchubd keeps its queues.
fn is_ipchubd(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ipchubd")
}
