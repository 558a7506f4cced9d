//! Raw baselines: each mechanism point to point, without the hub, driven by
//! the same publisher / sink / ping / echo code as the hub runs, so the
//! ratio hub ÷ raw isolates what the hub costs.
//!
//! Choices that decide the figures (each is what an application would get
//! with the mechanism's defaults):
//! - streams (pipe, FIFO, UNIX socket, TCP) carry fixed-size messages; the
//!   reader reads up to 256 KiB per call and cuts them; the writer makes one
//!   write per message, or (batched) collects 64 KiB per write;
//! - kernel buffers keep their defaults (pipe 64 KiB, socket buffers);
//! - the shm ring is the hub's (`ipchub::shm`), 4 MiB, woken like the
//!   hub's shm transport (eventfd only when the other side armed a wait);
//! - POSIX queues get as many slots as `fs.mqueue.msg_max` allows, each of
//!   the payload size, like the hub's mqueue transport;
//! - TCP has Nagle off (one write is one segment); UDP may lose datagrams
//!   under load, and the loss is reported, not hidden.

use ipchub_os::sys::claim_inherited;
use std::fs::File;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::mqueue::{mq_close, mq_open, mq_unlink, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use super::measure::{now_ns, Endpoint, Limit, RunError, Spread, Throughput};
use super::proc::{EndpointSpec, Role, Worker, WorkerSpec};
use super::session::{Plan, Session};
use crate::shm::{Notifier, Ring, RingError};
use crate::transport::shm::DEFAULT_RING_SIZE;

/// Bytes per write in the batched variants.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes per read on streams (at least two messages).
const READ_BYTES: usize = 256 * 1024;
/// Largest UDP payload over IPv4.
const UDP_MAX: usize = 65_507;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The raw mechanisms, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    Memcpy,
    Pipe,
    PipeBatched,
    Fifo,
    Unix,
    UnixBatched,
    Mqueue,
    Shm,
    Tcp,
    TcpBatched,
    Udp,
}

impl RawKind {
    pub const ALL: [RawKind; 11] = [
        RawKind::Memcpy,
        RawKind::Pipe,
        RawKind::PipeBatched,
        RawKind::Fifo,
        RawKind::Unix,
        RawKind::UnixBatched,
        RawKind::Mqueue,
        RawKind::Shm,
        RawKind::Tcp,
        RawKind::TcpBatched,
        RawKind::Udp,
    ];

    /// The name in --baselines, JSON and CSV.
    pub fn name(self) -> &'static str {
        match self {
            RawKind::Memcpy => "memcpy",
            RawKind::Pipe => "pipe",
            RawKind::PipeBatched => "pipe-batched",
            RawKind::Fifo => "fifo",
            RawKind::Unix => "unix",
            RawKind::UnixBatched => "unix-batched",
            RawKind::Mqueue => "mqueue",
            RawKind::Shm => "shm",
            RawKind::Tcp => "tcp",
            RawKind::TcpBatched => "tcp-batched",
            RawKind::Udp => "udp",
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            RawKind::Memcpy => "memcpy, one process",
            RawKind::Pipe => "pipe",
            RawKind::PipeBatched => "pipe, batched",
            RawKind::Fifo => "FIFO",
            RawKind::Unix => "UNIX socket",
            RawKind::UnixBatched => "UNIX socket, batched",
            RawKind::Mqueue => "POSIX mqueue",
            RawKind::Shm => "shm ring",
            RawKind::Tcp => "TCP loopback",
            RawKind::TcpBatched => "TCP loopback, batched",
            RawKind::Udp => "UDP loopback",
        }
    }

    pub fn from_name(s: &str) -> Option<RawKind> {
        RawKind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn batched(self) -> bool {
        matches!(
            self,
            RawKind::PipeBatched | RawKind::UnixBatched | RawKind::TcpBatched
        )
    }

    /// Batching means nothing for a ping-pong: one message is in flight.
    pub fn has_latency(self) -> bool {
        !self.batched() && self != RawKind::Memcpy
    }
}

/// A worker's end of a raw mechanism.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RawSpec {
    /// Inherited descriptors: read from `read`, echo to `write` (a socket
    /// reads and writes the same one).
    Fds {
        read: i32,
        write: Option<i32>,
    },
    Fifo {
        read: PathBuf,
        write: Option<PathBuf>,
    },
    Mqueue {
        read: String,
        write: Option<String>,
    },
    /// Connect to the measuring process on this loopback port.
    Tcp {
        port: u16,
    },
    /// Bind a loopback port (reported in Ready) and talk to this one.
    Udp {
        peer: u16,
    },
    /// [`ShmEndpoint`]'s rings and eventfds, inherited as: 3 the ring we
    /// read, then (echo) 4 the ring we write; then our eventfd, then the
    /// measuring process's.
    Shm {
        echo: bool,
    },
}

/// Fixed-size messages over a byte stream.
struct StreamEndpoint {
    r: Option<File>,
    w: Option<File>,
    size: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    batch: Option<Vec<u8>>,
}

impl StreamEndpoint {
    fn new(r: Option<File>, w: Option<File>, size: usize, batched: bool) -> StreamEndpoint {
        StreamEndpoint {
            r,
            w,
            size,
            buf: vec![0; READ_BYTES.max(2 * size)],
            start: 0,
            end: 0,
            batch: batched.then(|| Vec::with_capacity(BATCH_BYTES + size)),
        }
    }

    fn writer(&mut self) -> &mut File {
        self.w.as_mut().expect("writing endpoint")
    }
}

impl Endpoint for StreamEndpoint {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        match self.batch.as_mut() {
            None => self.writer().write_all(msg)?,
            Some(b) => {
                b.extend_from_slice(msg);
                if b.len() >= BATCH_BYTES {
                    let out = std::mem::take(b);
                    self.writer().write_all(&out)?;
                    let mut out = out;
                    out.clear();
                    self.batch = Some(out);
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        if let Some(mut b) = self.batch.take() {
            let r = self.writer().write_all(&b);
            b.clear();
            self.batch = Some(b);
            r?;
        }
        Ok(())
    }

    /// Blocks without a timeout: pipes have no timed read. A dead peer ends
    /// it with end of file (see the watchdog in `proc`).
    fn recv(&mut self, _timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        loop {
            if self.end - self.start >= self.size {
                let mut n = 0;
                while self.end - self.start >= self.size {
                    f(&self.buf[self.start..self.start + self.size]);
                    self.start += self.size;
                    n += 1;
                }
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(n);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let end = self.end;
            let r = self.r.as_mut().expect("reading endpoint");
            let k = r.read(&mut self.buf[end..])?;
            if k == 0 {
                return Err(RunError::failed("the other end closed the stream"));
            }
            self.end += k;
        }
    }
}

/// A POSIX queue descriptor, closed on drop.
struct Mq(Option<MqdT>);

impl Mq {
    fn get(&self) -> &MqdT {
        self.0.as_ref().expect("open until drop")
    }
}

impl Drop for Mq {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            let _ = mq_close(m);
        }
    }
}

/// Unlinks a queue name when the session ends.
struct MqName(String);

impl Drop for MqName {
    fn drop(&mut self) {
        let _ = mq_unlink(self.0.as_str());
    }
}

struct MqEndpoint {
    r: Option<Mq>,
    w: Option<Mq>,
    buf: Vec<u8>,
}

impl Endpoint for MqEndpoint {
    /// Timed, because a queue has no end of file: a reader that died would
    /// leave us blocked on a full queue for ever.
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let mq = self.w.as_ref().expect("writing endpoint").get();
        let ts = realtime_after(MQ_STALL);
        if let Err(e) = ipchub_os::sys::mq_timedsend(mq, msg, 0, &ts) {
            if e.raw_os_error() == Some(libc::ETIMEDOUT) {
                return Err(RunError::failed(format!(
                    "queue stayed full for {MQ_STALL:?}: the reader is gone"
                )));
            }
            return Err(e.into());
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        let mq = self.r.as_ref().expect("reading endpoint").get();
        let ts = realtime_after(timeout);
        let mut prio = 0u32;
        let n = match nix::mqueue::mq_timedreceive(mq, &mut self.buf, &mut prio, &ts) {
            Ok(n) => n,
            Err(nix::errno::Errno::ETIMEDOUT | nix::errno::Errno::EINTR) => return Ok(0),
            Err(e) => return Err(std::io::Error::from(e).into()),
        };
        f(&self.buf[..n]);
        Ok(1)
    }
}

/// How long a send may wait on a full queue.
const MQ_STALL: Duration = Duration::from_secs(10);

/// The absolute CLOCK_REALTIME deadline the timed queue calls take.
fn realtime_after(d: Duration) -> nix::sys::time::TimeSpec {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME");
    now + nix::sys::time::TimeSpec::from_duration(d.min(Duration::from_secs(86_400)))
}

struct UdpEndpoint {
    sock: UdpSocket,
    buf: Vec<u8>,
    timeout: Option<Duration>,
}

impl Endpoint for UdpEndpoint {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        loop {
            match self.sock.send(msg) {
                Ok(_) => return Ok(()),
                // The local queue is full: the kernel says so rather than dropping.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Datagrams get lost under load; the marker is sent a few times.
    /// A worker that got the close marker is gone: the repeats after it
    /// meet a closed port, which is no error.
    fn send_marker(&mut self, msg: &[u8]) -> Result<(), RunError> {
        for i in 0..5 {
            match self.send(msg) {
                Err(RunError::Io(e))
                    if i > 0 && e.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    return Ok(())
                }
                r => r?,
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        if self.timeout != Some(timeout) {
            self.sock.set_read_timeout(Some(timeout))?;
            self.timeout = Some(timeout);
        }
        match self.sock.recv(&mut self.buf) {
            Ok(n) => {
                f(&self.buf[..n]);
                Ok(1)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A worker's end, from its spec.
pub fn open_worker(
    spec: &RawSpec,
    role: Role,
    size: usize,
) -> Result<(Box<dyn Endpoint>, String), RunError> {
    let echo = role == Role::Echo;
    match spec {
        RawSpec::Fds { read, write } => {
            // The measuring process passed these descriptors to us (dup2
            // onto 3, 4).
            let r = File::from(claim_inherited(*read)?);
            let w = match write {
                Some(w) if w == read => Some(r.try_clone()?),
                Some(w) => Some(File::from(claim_inherited(*w)?)),
                None => None,
            };
            Ok((
                Box::new(StreamEndpoint::new(Some(r), w, size, false)),
                String::new(),
            ))
        }
        RawSpec::Fifo { read, write } => {
            // Blocks until the measuring process opens the other end.
            let r = File::open(read)?;
            let w = match write {
                Some(p) => Some(OpenOptions::new().write(true).open(p)?),
                None => None,
            };
            Ok((
                Box::new(StreamEndpoint::new(Some(r), w, size, false)),
                String::new(),
            ))
        }
        RawSpec::Mqueue { read, write } => {
            let flags = MQ_OFlag::O_RDWR | MQ_OFlag::O_CLOEXEC;
            let r = Mq(Some(mq_open(read.as_str(), flags, Mode::empty(), None)?));
            let msgsize = nix::mqueue::mq_getattr(r.get())?.msgsize() as usize;
            let w = match write {
                Some(n) => Some(Mq(Some(mq_open(n.as_str(), flags, Mode::empty(), None)?))),
                None => None,
            };
            Ok((
                Box::new(MqEndpoint {
                    r: Some(r),
                    w,
                    buf: vec![0; msgsize],
                }),
                String::new(),
            ))
        }
        RawSpec::Tcp { port } => {
            let s = TcpStream::connect(("127.0.0.1", *port))?;
            s.set_nodelay(true)?;
            let f = File::from(OwnedFd::from(s));
            let w = if echo { Some(f.try_clone()?) } else { None };
            Ok((
                Box::new(StreamEndpoint::new(Some(f), w, size, false)),
                String::new(),
            ))
        }
        RawSpec::Udp { peer } => {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            sock.connect(("127.0.0.1", *peer))?;
            let port = sock.local_addr()?.port();
            Ok((
                Box::new(UdpEndpoint {
                    sock,
                    buf: vec![0; UDP_MAX + 1],
                    timeout: None,
                }),
                port.to_string(),
            ))
        }
        RawSpec::Shm { echo } => {
            // Inherited from the measuring process (dup2 onto 3…6).
            let fd = claim_inherited;
            let rx = Ring::open(&fd(3)?).map_err(ring_error)?;
            let (tx, next) = if *echo {
                (Some(Ring::open(&fd(4)?).map_err(ring_error)?), 5)
            } else {
                (None, 4)
            };
            let own = Notifier::from_fd(fd(next)?)?;
            let peer = Notifier::from_fd(fd(next + 1)?)?;
            Ok((
                Box::new(ShmEndpoint {
                    tx,
                    rx: Some(rx),
                    own,
                    peer,
                }),
                String::new(),
            ))
        }
    }
}

/// Whether a session measures throughput (we only send) or latency (we ping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Throughput,
    Latency,
}

/// Where temporary FIFOs go, and unique names.
pub struct Scratch<'a> {
    pub dir: &'a Path,
    pub tag: u64,
    pub exe: &'a Path,
}

/// Set up one raw mechanism with its worker.
pub fn session(
    kind: RawKind,
    purpose: Purpose,
    size: usize,
    plan: &Plan,
    at: &Scratch<'_>,
) -> Result<Session, RunError> {
    let role = match purpose {
        Purpose::Throughput => Role::Sink,
        Purpose::Latency => Role::Echo,
    };
    let spec = |endpoint: RawSpec| WorkerSpec {
        role,
        endpoint: EndpointSpec::Raw(endpoint),
        size,
        cpu: plan.worker_cpu(0),
    };
    let lat = purpose == Purpose::Latency;
    let batched = kind.batched();
    match kind {
        RawKind::Memcpy => Err(RunError::failed("memcpy runs in process")),
        RawKind::Pipe | RawKind::PipeBatched => {
            let (r1, w1) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            if lat {
                let (r2, w2) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                let s = spec(RawSpec::Fds {
                    read: 3,
                    write: Some(4),
                });
                let w = Worker::spawn(at.exe, &s, &[r1.as_raw_fd(), w2.as_raw_fd()])?;
                let ep = StreamEndpoint::new(Some(r2.into()), Some(w1.into()), size, false);
                ready(ep, w)
            } else {
                let s = spec(RawSpec::Fds {
                    read: 3,
                    write: None,
                });
                let w = Worker::spawn(at.exe, &s, &[r1.as_raw_fd()])?;
                let ep = StreamEndpoint::new(None, Some(w1.into()), size, batched);
                ready(ep, w)
            }
        }
        RawKind::Unix | RawKind::UnixBatched => {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            let (a, b) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )?;
            let s = spec(RawSpec::Fds {
                read: 3,
                write: lat.then_some(3),
            });
            let w = Worker::spawn(at.exe, &s, &[b.as_raw_fd()])?;
            drop(b);
            let a = File::from(a);
            let r = if lat { Some(a.try_clone()?) } else { None };
            ready(StreamEndpoint::new(r, Some(a), size, batched), w)
        }
        RawKind::Fifo => fifo_session(size, lat, spec, at),
        RawKind::Mqueue => mqueue_session(size, lat, spec, at),
        RawKind::Tcp | RawKind::TcpBatched => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let port = l.local_addr()?.port();
            let mut w = Worker::spawn(at.exe, &spec(RawSpec::Tcp { port }), &[])?;
            w.ready(READY_TIMEOUT)?;
            // The worker connected before saying Ready: accept returns at once.
            let (s, _) = l.accept()?;
            s.set_nodelay(true)?;
            let f = File::from(OwnedFd::from(s));
            let r = if lat { Some(f.try_clone()?) } else { None };
            Ok(Session::new(
                Box::new(StreamEndpoint::new(r, Some(f), size, batched)),
                vec![w],
            ))
        }
        RawKind::Udp => {
            if size > UDP_MAX {
                return Err(RunError::unavailable(format!(
                    "a UDP datagram carries at most {UDP_MAX} bytes"
                )));
            }
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let peer = sock.local_addr()?.port();
            let mut w = Worker::spawn(at.exe, &spec(RawSpec::Udp { peer }), &[])?;
            let port: u16 = w
                .ready(READY_TIMEOUT)?
                .parse()
                .map_err(|_| RunError::failed("UDP worker reported no port"))?;
            sock.connect(("127.0.0.1", port))?;
            Ok(Session::new(
                Box::new(UdpEndpoint {
                    sock,
                    buf: vec![0; UDP_MAX + 1],
                    timeout: None,
                }),
                vec![w],
            ))
        }
        RawKind::Shm => shm_session(size, lat, spec, at),
    }
}

/// Wait for the worker, then hand over the endpoint.
fn ready(ep: StreamEndpoint, mut w: Worker) -> Result<Session, RunError> {
    w.ready(READY_TIMEOUT)?;
    Ok(Session::new(Box::new(ep), vec![w]))
}

/// Removes a temporary FIFO when the session ends.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fifo_session(
    size: usize,
    lat: bool,
    spec: impl Fn(RawSpec) -> WorkerSpec,
    at: &Scratch<'_>,
) -> Result<Session, RunError> {
    let make = |suffix: &str| -> Result<TempPath, RunError> {
        let p = at.dir.join(format!("fifo.{}.{suffix}", at.tag));
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))?;
        Ok(TempPath(p))
    };
    let down = make("down")?;
    let up = if lat { Some(make("up")?) } else { None };
    let mut w = Worker::spawn(
        at.exe,
        &spec(RawSpec::Fifo {
            read: down.0.clone(),
            write: up.as_ref().map(|u| u.0.clone()),
        }),
        &[],
    )?;
    // Opening for writing without a reader fails with ENXIO instead of
    // blocking, so a worker that never starts cannot hang us: retry until
    // the worker's blocking open for reading is under way.
    let deadline = Instant::now() + READY_TIMEOUT;
    let wfd = loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&down.0)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(RunError::failed(format!("opening FIFO: {e}"))),
        }
    };
    set_blocking(&wfd)?;
    // Our reading end exists before the worker opens its writing end, so
    // neither open blocks; reading starts only after Ready, once it has.
    let rfd = match &up {
        Some(u) => {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&u.0)?;
            set_blocking(&f)?;
            Some(f)
        }
        None => None,
    };
    w.ready(READY_TIMEOUT)?;
    let mut s = Session::new(
        Box::new(StreamEndpoint::new(rfd, Some(wfd), size, false)),
        vec![w],
    );
    s.guards.push(Box::new(down));
    if let Some(u) = up {
        s.guards.push(Box::new(u));
    }
    Ok(s)
}

fn set_blocking(fd: &File) -> Result<(), RunError> {
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A kernel limit from /proc/sys/fs/mqueue.
fn mq_limit(name: &str, default: i64) -> i64 {
    std::fs::read_to_string(format!("/proc/sys/fs/mqueue/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Create a queue with as many slots of `size` bytes as the kernel allows.
fn mq_create(name: &str, size: usize) -> Result<(Mq, MqName, i64), RunError> {
    let max = mq_limit("msg_max", 10);
    let mut slots = max;
    loop {
        let attr = MqAttr::new(0, slots, size as i64, 0);
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR | MQ_OFlag::O_CLOEXEC;
        match mq_open(name, flags, Mode::from_bits_truncate(0o600), Some(&attr)) {
            Ok(m) => return Ok((Mq(Some(m)), MqName(name.to_string()), slots)),
            // Over the per-user byte budget (RLIMIT_MSGQUEUE): fewer slots.
            Err(nix::errno::Errno::EMFILE | nix::errno::Errno::ENOMEM) if slots > 1 => slots /= 2,
            Err(nix::errno::Errno::EINVAL) => {
                return Err(RunError::unavailable(format!(
                "a {size}-byte message is above fs.mqueue.msgsize_max ({}); raise it with sysctl",
                mq_limit("msgsize_max", 8192)
            )))
            }
            Err(e) => {
                return Err(RunError::unavailable(format!(
                    "mq_open of {slots} x {size} bytes: {e}"
                )))
            }
        }
    }
}

fn mqueue_session(
    size: usize,
    lat: bool,
    spec: impl Fn(RawSpec) -> WorkerSpec,
    at: &Scratch<'_>,
) -> Result<Session, RunError> {
    let base = format!("/ipchub-bench.{}.{}", std::process::id(), at.tag);
    let (down, down_name, _) = mq_create(&format!("{base}.down"), size)?;
    let up = if lat {
        Some(mq_create(&format!("{base}.up"), size)?)
    } else {
        None
    };
    let w = Worker::spawn(
        at.exe,
        &spec(RawSpec::Mqueue {
            read: down_name.0.clone(),
            write: up.as_ref().map(|u| u.1 .0.clone()),
        }),
        &[],
    )?;
    let (r, guard) = match up {
        Some((q, n, _)) => (Some(q), Some(n)),
        None => (None, None),
    };
    let ep = MqEndpoint {
        r,
        w: Some(down),
        buf: vec![0; size],
    };
    let mut s = ready_mq(ep, w)?;
    s.guards.push(Box::new(down_name));
    if let Some(g) = guard {
        s.guards.push(Box::new(g));
    }
    Ok(s)
}

fn ready_mq(ep: MqEndpoint, mut w: Worker) -> Result<Session, RunError> {
    w.ready(READY_TIMEOUT)?;
    Ok(Session::new(Box::new(ep), vec![w]))
}

/// Ring data bytes per direction: the hub's shm transport's size, or more
/// when a message would not fit (a record takes at most half a ring).
fn ring_size(size: usize) -> usize {
    DEFAULT_RING_SIZE.max((2 * (size + 64)).next_power_of_two())
}

fn ring_error(e: RingError) -> RunError {
    match e {
        RingError::Io(e) => RunError::Io(e),
        e => RunError::failed(format!("shm ring: {e}")),
    }
}

/// The shm ring point to point, woken the way the hub's shm transport is:
/// each side sleeps on its own eventfd, written by the other side only when
/// the ring says a wait was armed, so a busy stream makes no syscalls.
struct ShmEndpoint {
    tx: Option<Ring>,
    rx: Option<Ring>,
    /// Where we sleep.
    own: Notifier,
    /// What we write to wake the other side.
    peer: Notifier,
}

impl ShmEndpoint {
    /// Sleep on our eventfd for at most `t`; false when nothing came.
    fn sleep(&self, t: Duration) -> Result<bool, RunError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = t.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.own.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

impl Endpoint for ShmEndpoint {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let tx = self.tx.as_ref().expect("writing endpoint");
        let start = Instant::now();
        loop {
            if tx.try_push(&[msg]).map_err(ring_error)? {
                if tx.producer_should_wake() {
                    self.peer.notify()?;
                }
                return Ok(());
            }
            // Drain before arming, or a wake-up in between is lost.
            self.own.drain()?;
            if tx.producer_prepare_wait(msg.len()) {
                self.sleep(Duration::from_secs(1))?;
                if start.elapsed() > MQ_STALL {
                    return Err(RunError::failed(format!(
                        "ring stayed full for {MQ_STALL:?}: the reader is gone"
                    )));
                }
            }
        }
    }

    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        let rx = self.rx.as_ref().expect("reading endpoint");
        let deadline = Instant::now() + timeout;
        loop {
            let n = rx.pop_batch(usize::MAX, &mut *f).map_err(ring_error)?;
            if n > 0 {
                if rx.consumer_should_wake() {
                    self.peer.notify()?;
                }
                return Ok(n);
            }
            self.own.drain()?;
            if rx.consumer_prepare_wait() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !self.sleep(left)? {
                    return Ok(0);
                }
            }
        }
    }
}

fn shm_session(
    size: usize,
    lat: bool,
    spec: impl Fn(RawSpec) -> WorkerSpec,
    at: &Scratch<'_>,
) -> Result<Session, RunError> {
    let (down, down_fd) = Ring::create(ring_size(size)).map_err(ring_error)?;
    let up = if lat {
        Some(Ring::create(ring_size(size)).map_err(ring_error)?)
    } else {
        None
    };
    let (ours, theirs) = (Notifier::new()?, Notifier::new()?);
    let mut fds = vec![down_fd.as_raw_fd()];
    if let Some((_, fd)) = &up {
        fds.push(fd.as_raw_fd());
    }
    fds.push(theirs.as_fd().as_raw_fd());
    fds.push(ours.as_fd().as_raw_fd());
    let mut w = Worker::spawn(at.exe, &spec(RawSpec::Shm { echo: lat }), &fds)?;
    w.ready(READY_TIMEOUT)?;
    let ep = ShmEndpoint {
        tx: Some(down),
        rx: up.map(|(r, _)| r),
        own: ours,
        peer: theirs,
    };
    Ok(Session::new(Box::new(ep), vec![w]))
}

/// memcpy of the payload in one process: the ceiling for any copy.
pub fn memcpy_throughput(size: usize, plan: &Plan) -> Throughput {
    let src = super::measure::message(size);
    let mut dst = vec![0u8; size];
    let mut rates = Vec::new();
    let mut total = 0;
    for round in 0..=plan.repetitions {
        let limit = if round == 0 { plan.warmup } else { plan.limit };
        let start = Instant::now();
        let t0 = now_ns();
        let mut n = 0u64;
        loop {
            let done = match limit {
                Limit::Messages(m) => n >= m,
                Limit::Time(d) => n.is_multiple_of(256) && start.elapsed() >= d,
            };
            if done {
                break;
            }
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            n += 1;
        }
        let secs = (now_ns() - t0) as f64 / 1e9;
        if round > 0 {
            rates.push(if secs > 0.0 { n as f64 / secs } else { 0.0 });
            total += n;
        }
    }
    let msgs = Spread::of(&rates).expect("at least one round");
    let mb: Vec<f64> = rates.iter().map(|r| r * size as f64 / 1e6).collect();
    Throughput {
        msgs_per_sec: msgs,
        mb_per_sec: Spread::of(&mb).expect("at least one round"),
        aggregate_msgs_per_sec: msgs,
        subscribers: 1,
        rounds: plan.repetitions,
        sent: total,
        received: total,
        lost: 0,
        out_of_order: 0,
        bad_size: 0,
    }
}
