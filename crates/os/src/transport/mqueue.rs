//! POSIX message queues: a queue pair per client, one frame per message, the
//! frame's priority byte as the message priority.
//!
//! **The client makes its own queues** and hands them to the hub with HELLO
//! (SCM_RIGHTS, `up` then `down`). It creates each under an unguessable
//! name with O_EXCL and unlinks it at once, so:
//! - the queues are charged to the *client's* uid (RLIMIT_MSGQUEUE): a uid
//!   that keeps its queues after disconnecting spends its own budget, never
//!   the hub's (the packaged hub runs as user `ipchub`, not root, and could
//!   not charge anyone else);
//! - no name exists for anyone to squat, guess or open;
//! - nothing is left behind: a queue vanishes with its last descriptor.
//!
//! The hub trusts nothing about them: it checks that each descriptor is a
//! message queue (`mq_getattr`), open for the direction it needs, that the
//! two are different queues, and that the sizes are within bounds
//! ([`max_up_msgsize`], [`MIN_DOWN_MSGSIZE`]). The open file description is
//! shared with the client, which may clear O_NONBLOCK on it at any time, so
//! the hub never relies on that flag: it only uses `mq_timedreceive` and
//! `mq_timedsend` with a deadline already past, which never block.
//!
//! Queues are made as large as the kernel and the client's RLIMIT_MSGQUEUE
//! allow (`fs.mqueue.msg_max`/`msgsize_max`), falling back to the defaults
//! (10 x 8192); a frame bigger than a queue's message size is refused, never
//! truncated.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::mqueue::{mq_attr_member_t, mq_getattr, mq_open, mq_unlink, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;

use super::{Link, Offer, Peer, ReadOutcome, SetupError};
use crate::queue::OutQueue;
use crate::wire::{self, ErrorCode, FrameType};

/// Where Linux shows the mqueue namespace (when mounted).
pub const MQUEUE_FS: &str = "/dev/mqueue";
/// Queues of hubs before 0.2 were named `/ipchub.<hub pid>.<id>.up|down`;
/// a hub still reaps those a dead one left.
const PREFIX: &str = "ipchub.";
/// The smallest `down` message size the hub accepts: room for any ERROR
/// it may have to write there.
pub const MIN_DOWN_MSGSIZE: usize = 1024;
/// The largest frame the client library sizes its queues for before it
/// knows the hub's `max_message` (the default 1 MiB, plus header and channel).
pub const DEFAULT_MAX_FRAME: usize = (1 << 20) + wire::HEADER_LEN + 255;

/// The largest `up` message size the hub accepts for a hub whose largest
/// frame is `max_frame`: a client sizes its queues before WELCOME tells it
/// `max_message`, so the library default is always accepted too.
pub fn max_up_msgsize(max_frame: usize) -> usize {
    max_frame.max(DEFAULT_MAX_FRAME)
}

thread_local! {
    /// One message's worth of scratch per thread (the hub has one data
    /// thread), so an idle client's queue pair costs the hub no buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A deadline already past: the timed calls return at once instead of
/// blocking, whatever O_NONBLOCK says.
const PAST: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// An open queue, closed on drop.
struct Queue {
    mqd: Option<MqdT>,
    /// For messages: which queue this is.
    what: String,
    msgsize: usize,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(m) = self.mqd.take() {
            let _ = nix::mqueue::mq_close(m);
        }
    }
}

impl Queue {
    fn raw(&self) -> RawFd {
        self.mqd
            .as_ref()
            .expect("open until drop")
            .as_fd()
            .as_raw_fd()
    }

    /// Receive one message into `buf` (at least `msgsize` long) without blocking.
    fn receive(&self, buf: &mut [u8], prio: &mut u32) -> nix::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes, `prio`
        // for one u32 and PAST for one timespec, all for the whole call.
        let n = unsafe {
            libc::mq_timedreceive(self.raw(), buf.as_mut_ptr().cast(), buf.len(), prio, &PAST)
        };
        nix::errno::Errno::result(n).map(|n| n as usize)
    }

    /// Send one message without blocking.
    fn send(&self, msg: &[u8], prio: u32) -> nix::Result<()> {
        // SAFETY: `msg` is valid for reads of `msg.len()` bytes and PAST
        // for one timespec for the whole call.
        let r =
            unsafe { libc::mq_timedsend(self.raw(), msg.as_ptr().cast(), msg.len(), prio, &PAST) };
        nix::errno::Errno::result(r).map(drop)
    }
}

/// Would-block outcomes of the timed calls: the queue is empty or full.
fn is_would_block(e: nix::errno::Errno) -> bool {
    matches!(e, nix::errno::Errno::EAGAIN | nix::errno::Errno::ETIMEDOUT)
}

/// The hub's (or client's) side of a queue pair.
pub struct MqueueLink {
    rx: Queue,
    tx: Queue,
}

impl MqueueLink {
    /// Largest frame the outgoing queue takes.
    pub fn max_frame(&self) -> usize {
        self.tx.msgsize
    }

    /// Largest frame the incoming queue carries.
    pub fn max_frame_in(&self) -> usize {
        self.rx.msgsize
    }

    /// The two descriptors to hand to the hub with HELLO: `up`, then `down`
    /// (the client's `tx` and `rx`).
    pub fn handover_fds(&self) -> [RawFd; 2] {
        [self.tx.raw(), self.rx.raw()]
    }
}

impl Link for MqueueLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> std::io::Result<ReadOutcome> {
        SCRATCH.with_borrow_mut(|buf| {
            let mut out = ReadOutcome::default();
            buf.resize(self.rx.msgsize, 0);
            let res = loop {
                if out.bytes >= budget {
                    out.more = true;
                    break Ok(out);
                }
                let mut prio = 0u32;
                match self.rx.receive(buf, &mut prio) {
                    Ok(n) => {
                        // One message must be exactly one frame: refuse anything
                        // else here, before it can desynchronise the stream.
                        wire::frame::check_record(&buf[..n]).map_err(|e| {
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("bad message on {}: {e}", self.rx.what),
                            )
                        })?;
                        inbuf.extend_from_slice(&buf[..n]);
                        out.bytes += n;
                    }
                    Err(e) if is_would_block(e) => break Ok(out),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => break Err(e.into()),
                }
            };
            release_big(buf);
            res
        })
    }

    fn flush(&mut self, q: &mut OutQueue) -> std::io::Result<u64> {
        SCRATCH.with_borrow_mut(|buf| {
            let res = self.flush_with(q, buf);
            release_big(buf);
            res
        })
    }

    fn max_frame(&self) -> Option<usize> {
        Some(self.tx.msgsize)
    }

    fn read_fd(&self) -> RawFd {
        self.rx.raw()
    }

    fn handover_fds(&self) -> Option<Vec<RawFd>> {
        Some(vec![self.rx.raw(), self.tx.raw()])
    }

    fn write_fd(&self) -> RawFd {
        self.tx.raw()
    }
}

/// Keep the scratch buffer only while it is small: one big message must
/// not pin its size in the hub for good.
fn release_big(buf: &mut Vec<u8>) {
    if buf.capacity() > 256 << 10 {
        *buf = Vec::new();
    }
}

impl MqueueLink {
    fn flush_with(&mut self, q: &mut OutQueue, buf: &mut Vec<u8>) -> std::io::Result<u64> {
        let mut lost = 0;
        while q.front_frame(buf) {
            let prio = buf[5] as u32;
            if buf.len() > self.tx.msgsize {
                // Never truncate: tell the reader in-band what it lost and why.
                let text = format!(
                    "message of {} bytes on channel '{}' exceeds this message queue's message size ({} bytes); dropped",
                    buf.len(),
                    wire::decode(buf, u32::MAX).ok().flatten().map_or("", |(f, _)| f.channel),
                    self.tx.msgsize
                );
                let mut err = Vec::new();
                // The hub never queues DATA bigger than this queue takes
                // (`Hub::set_max_frame`); what remains is an answer to this
                // client's own request, whose seq it may carry. Never echo
                // another client's seq: DATA carries the publisher's.
                let seq = if buf[3] == FrameType::Data as u8 {
                    0
                } else {
                    u64::from_le_bytes(buf[16..24].try_into().unwrap())
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
                match self.tx.send(&err, 0) {
                    Ok(()) => {
                        q.pop_front();
                        lost += 1;
                        continue;
                    }
                    Err(e) if is_would_block(e) => return Ok(lost),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            match self.tx.send(buf, prio) {
                Ok(()) => q.pop_front(),
                Err(e) if is_would_block(e) => return Ok(lost),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(lost)
    }
}

/// Check one descriptor the client handed over: a message queue, open for
/// `need` (O_RDONLY: the hub reads it; O_WRONLY: the hub writes it).
fn adopt_one(fd: OwnedFd, what: &str, need: libc::c_int) -> Result<Queue, SetupError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
        .map_err(|e| SetupError::Handover(format!("{what}: {e}")))?;
    let mode = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
    let ok = mode == OFlag::O_RDWR
        || (need == libc::O_RDONLY && mode == OFlag::O_RDONLY)
        || (need == libc::O_WRONLY && mode == OFlag::O_WRONLY);
    // SAFETY: `fd` is an open descriptor we own; MqdT takes it over (and
    // closes it on drop). If it is not a message queue, mq_getattr fails
    // and the drop is a plain close.
    let mqd = unsafe { MqdT::from_raw_fd(fd.into_raw_fd()) };
    let attr = match mq_getattr(&mqd) {
        Ok(a) => a,
        Err(_) => {
            let _ = nix::mqueue::mq_close(mqd);
            return Err(SetupError::Handover(format!(
                "{what} is not a POSIX message queue"
            )));
        }
    };
    let q = Queue {
        mqd: Some(mqd),
        what: what.to_string(),
        msgsize: attr.msgsize().max(0) as usize,
    };
    if !ok {
        let dir = if need == libc::O_RDONLY {
            "reading"
        } else {
            "writing"
        };
        return Err(SetupError::Handover(format!(
            "{what} is not open for {dir} (open it O_RDWR)"
        )));
    }
    Ok(q)
}

/// Hub side: take the client's `up` (client → hub) and `down` (hub →
/// client) queues, sent with HELLO, after checking them.
pub fn adopt(peer: &Peer<'_>, fds: Vec<OwnedFd>) -> Result<Offer, SetupError> {
    let [up, down]: [OwnedFd; 2] = fds.try_into().map_err(|v: Vec<OwnedFd>| {
        SetupError::Handover(format!(
            "send your two message queues (up, then down) with HELLO (SCM_RIGHTS); got {} descriptors. The hub does not create queues: see PROTOCOL.md",
            v.len()
        ))
    })?;
    let up = adopt_one(up, "the up queue", libc::O_RDONLY)?;
    let down = adopt_one(down, "the down queue", libc::O_WRONLY)?;
    let same = match (
        nix::sys::stat::fstat(up.raw()),
        nix::sys::stat::fstat(down.raw()),
    ) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    };
    if same {
        return Err(SetupError::Handover(
            "up and down are the same message queue".into(),
        ));
    }
    let max_frame = peer.max_message as usize + wire::HEADER_LEN + 255;
    let max_up = max_up_msgsize(max_frame);
    if up.msgsize > max_up {
        return Err(SetupError::Handover(format!(
            "the up queue's message size {} exceeds the largest frame this hub reads ({max_up} bytes)",
            up.msgsize
        )));
    }
    if down.msgsize < MIN_DOWN_MSGSIZE {
        return Err(SetupError::Handover(format!(
            "the down queue's message size {} is below {MIN_DOWN_MSGSIZE} bytes",
            down.msgsize
        )));
    }
    let welcome = vec![
        ("mq_msgsize_up".into(), up.msgsize.to_string()),
        ("mq_msgsize_down".into(), down.msgsize.to_string()),
    ];
    Ok(Offer {
        link: Some(Box::new(MqueueLink { rx: up, tx: down })),
        welcome,
        fds: Vec::new(),
    })
}

/// Hub side after a planned restart: the `up` and `down` queues a
/// predecessor handed over (`Link::handover_fds`), checked again.
pub fn restore(up: OwnedFd, down: OwnedFd) -> Result<MqueueLink, SetupError> {
    Ok(MqueueLink {
        rx: adopt_one(up, "the up queue", libc::O_RDONLY)?,
        tx: adopt_one(down, "the down queue", libc::O_WRONLY)?,
    })
}

/// Client side: create the queue pair to hand over with HELLO, each under
/// an unguessable name with O_EXCL, unlinked at once. Sized as large as
/// the kernel and this user's RLIMIT_MSGQUEUE allow, up to `max_frame`.
///
/// The queues are charged to this user's RLIMIT_MSGQUEUE until both ends
/// are closed, and the hub closes its ends only when it handles a
/// disconnect. So a program that closes a client and connects again at once
/// can find its budget still held for that moment: on EMFILE (the budget,
/// or descriptors) it tries again for up to [`BUDGET_WAIT`] before giving up.
pub fn create_pair(max_frame: usize) -> Result<MqueueLink, SetupError> {
    let deadline = std::time::Instant::now() + BUDGET_WAIT;
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        let pair = create(max_frame, "up").and_then(|up| {
            let down = create(max_frame, "down")?;
            Ok(MqueueLink { rx: down, tx: up })
        });
        match pair {
            Err(SetupError::Io { ref source, .. })
                if source.raw_os_error() == Some(libc::EMFILE)
                    && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// How long [`create_pair`] waits for queue budget the hub is about to free.
pub const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn create(max_frame: usize, what: &str) -> Result<Queue, SetupError> {
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
    let size = size_max.min(max_frame.max(8192));
    // Largest first; smaller ones fit a small RLIMIT_MSGQUEUE (EMFILE).
    let mut tries = vec![
        (msg_max, size),
        (msg_max.min(16), size.min(65536)),
        (10, 8192),
    ];
    tries.dedup();
    let mut last = None;
    for (maxmsg, msgsize) in tries {
        let attr = MqAttr::new(
            0,
            maxmsg as mq_attr_member_t,
            msgsize as mq_attr_member_t,
            0,
        );
        for _ in 0..8 {
            let name = format!("/ipchub-client.{}.{:016x}", std::process::id(), random());
            match mq_open(name.as_str(), flags, mode, Some(&attr)) {
                Ok(mqd) => {
                    // Nobody needs the name: the descriptor is the queue.
                    let _ = mq_unlink(name.as_str());
                    return Ok(Queue {
                        mqd: Some(mqd),
                        what: format!("the {what} queue"),
                        msgsize,
                    });
                }
                // Somebody holds that name: draw another.
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    let e = last.unwrap_or(nix::errno::Errno::EEXIST);
    Err(SetupError::Io {
        what: format!("creating the {what} message queue"),
        source: e.into(),
    })
}

/// 64 unpredictable bits for a queue name.
fn random() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: `b` is valid for writes of 8 bytes for the whole call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // No entropy source: a seeded hash of the time still differs per try.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        return h.finish();
    }
    u64::from_le_bytes(b)
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
