//! The brokerless and broker peers beyond D-Bus and MQTT: iceoryx2, ZeroMQ
//! and NATS, measured with the same drivers, rounds and checks.
//!
//! - **iceoryx2** (crate `iceoryx2`, feature `peers`): publish-subscribe of
//!   `[u8]` slices over its shared memory, `RetryUntilDelivered` so nothing
//!   is dropped (as the hub's `block`). Its publish-subscribe has no
//!   blocking receive: the subscriber polls (`receive`, then
//!   `yield_now` when empty), which is how iceoryx2 reaches its best figures;
//!   waking a sleeping subscriber would need its event service, a syscall
//!   per notification.
//! - **ZeroMQ** (crate `zmq` 0.9 over Debian's libzmq 4.3, feature
//!   `peers`): XPUB → SUB over `ipc://` in the bench's temporary directory.
//!   The real libzmq rather than a pure-Rust reimplementation, because the
//!   peer is the library people deploy. XPUB with `ZMQ_XPUB_NODROP` blocks
//!   at the high-water mark instead of dropping, and its subscription
//!   messages tell the publisher when every subscriber is connected (no
//!   slow-joiner loss).
//! - **NATS**: a `nats-server` the bench starts on a free loopback port, and
//!   a minimal client of NATS's text protocol over a buffered TCP stream
//!   (CONNECT, PUB, SUB, MSG, PING/PONG), so no crate and no runtime: the
//!   client costs what a socket write costs, the broker is what is measured.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::measure::{Endpoint, RunError};
use super::proc::{EndpointSpec, Role, Worker, WorkerSpec};
use super::session::{Plan, Session};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What a worker of one of these peers opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerSpec {
    Iceoryx2 {
        /// Service the worker receives on, and the one it answers on.
        input: String,
        output: Option<String>,
        subscribers: usize,
    },
    Zmq {
        /// `ipc://` endpoints: where to connect the SUB, where to bind the
        /// echo's publisher.
        input: String,
        output: Option<String>,
    },
    Nats {
        port: u16,
        input: String,
        output: Option<String>,
    },
}

pub fn open_worker(spec: &PeerSpec, size: usize) -> Result<(Box<dyn Endpoint>, String), RunError> {
    match spec {
        PeerSpec::Iceoryx2 {
            input,
            output,
            subscribers,
        } => ice::worker(input, output.as_deref(), *subscribers, size),
        PeerSpec::Zmq { input, output } => zmq_peer::worker(input, output.as_deref()),
        PeerSpec::Nats {
            port,
            input,
            output,
        } => Ok((
            Box::new(Nats::connect(*port, Some(input), output.clone())?),
            String::new(),
        )),
    }
}

fn spawn_workers(
    exe: &Path,
    plan: &Plan,
    role: Role,
    size: usize,
    spec: impl Fn(usize) -> PeerSpec,
) -> Result<Vec<Worker>, RunError> {
    let n = if role == Role::Sink {
        plan.subscribers as usize
    } else {
        1
    };
    let mut workers = Vec::new();
    for i in 0..n {
        let ws = WorkerSpec {
            role,
            endpoint: EndpointSpec::Peer(spec(i)),
            size,
            cpu: plan.worker_cpu(i),
        };
        workers.push(Worker::spawn(exe, &ws, &[])?);
    }
    for w in &mut workers {
        w.ready(READY_TIMEOUT)?;
    }
    Ok(workers)
}

// ------------------------------------------------------------- iceoryx2 --

#[cfg(feature = "peers")]
mod ice {
    use super::*;
    use iceoryx2::port::publisher::Publisher;
    use iceoryx2::port::subscriber::Subscriber;
    use iceoryx2::prelude::*;

    /// Samples a subscriber may have queued before the publisher waits.
    const BUFFER: usize = 256;

    fn err(what: &str, e: impl std::fmt::Debug) -> RunError {
        RunError::failed(format!("iceoryx2 {what}: {e:?}"))
    }

    pub struct Ice {
        // Field order: ports before the node that owns their service.
        publisher: Option<Publisher<ipc::Service, [u8], ()>>,
        subscriber: Option<Subscriber<ipc::Service, [u8], ()>>,
        _node: Node<ipc::Service>,
    }

    fn service(
        node: &Node<ipc::Service>,
        name: &str,
        subscribers: usize,
    ) -> Result<
        iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>,
        RunError,
    > {
        let name: ServiceName = name.try_into().map_err(|e| err("service name", e))?;
        node.service_builder(&name)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(BUFFER)
            .max_subscribers(subscribers.max(1))
            .max_publishers(1)
            .history_size(0)
            .open_or_create()
            .map_err(|e| err("service", e))
    }

    fn open(
        input: Option<&str>,
        output: Option<&str>,
        subscribers: usize,
        size: usize,
    ) -> Result<Ice, RunError> {
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new()
            .create::<ipc::Service>()
            .map_err(|e| RunError::unavailable(format!("iceoryx2 node: {e:?}")))?;
        let subscriber = match input {
            Some(n) => Some(
                service(&node, n, subscribers)?
                    .subscriber_builder()
                    .buffer_size(BUFFER)
                    .create()
                    .map_err(|e| err("subscriber", e))?,
            ),
            None => None,
        };
        let publisher = match output {
            Some(n) => Some(
                service(&node, n, subscribers)?
                    .publisher_builder()
                    .initial_max_slice_len(size.max(1))
                    .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                    .create()
                    .map_err(|e| err("publisher", e))?,
            ),
            None => None,
        };
        Ok(Ice {
            publisher,
            subscriber,
            _node: node,
        })
    }

    pub fn worker(
        input: &str,
        output: Option<&str>,
        subscribers: usize,
        size: usize,
    ) -> Result<(Box<dyn Endpoint>, String), RunError> {
        Ok((
            Box::new(open(Some(input), output, subscribers, size)?),
            String::new(),
        ))
    }

    pub fn ours(
        input: Option<&str>,
        output: &str,
        subscribers: usize,
        size: usize,
    ) -> Result<Box<dyn Endpoint>, RunError> {
        Ok(Box::new(open(input, Some(output), subscribers, size)?))
    }

    impl Endpoint for Ice {
        fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
            let p = self
                .publisher
                .as_ref()
                .ok_or_else(|| RunError::failed("this end only receives"))?;
            let s = p.loan_slice_uninit(msg.len()).map_err(|e| err("loan", e))?;
            s.write_from_slice(msg).send().map_err(|e| err("send", e))?;
            Ok(())
        }

        fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
            let s = self
                .subscriber
                .as_ref()
                .ok_or_else(|| RunError::failed("this end only sends"))?;
            let deadline = Instant::now() + timeout;
            loop {
                let mut n = 0;
                while let Some(sample) = s.receive().map_err(|e| err("receive", e))? {
                    f(sample.payload());
                    n += 1;
                    if n == BUFFER {
                        break;
                    }
                }
                if n > 0 {
                    return Ok(n);
                }
                if Instant::now() >= deadline {
                    return Ok(0);
                }
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(not(feature = "peers"))]
mod ice {
    use super::*;

    fn missing() -> RunError {
        RunError::unavailable(
            "built without the `peers` feature (cargo build --release --features peers)",
        )
    }

    pub fn worker(
        _: &str,
        _: Option<&str>,
        _: usize,
        _: usize,
    ) -> Result<(Box<dyn Endpoint>, String), RunError> {
        Err(missing())
    }

    pub fn ours(
        _: Option<&str>,
        _: &str,
        _: usize,
        _: usize,
    ) -> Result<Box<dyn Endpoint>, RunError> {
        Err(missing())
    }
}

pub fn iceoryx2_session(
    exe: &Path,
    role: Role,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let base = format!("ipchub-bench/{}/{tag}", std::process::id());
    let n = plan.subscribers.max(1) as usize;
    match role {
        Role::Sink => {
            let data = format!("{base}/data");
            let ep = ice::ours(None, &data, n, size)?;
            let workers = spawn_workers(exe, plan, role, size, |_| PeerSpec::Iceoryx2 {
                input: data.clone(),
                output: None,
                subscribers: n,
            })?;
            Ok(Session::new(ep, workers))
        }
        Role::Echo => {
            let (ping, pong) = (format!("{base}/ping"), format!("{base}/pong"));
            let ep = ice::ours(Some(&pong), &ping, 1, size)?;
            let workers = spawn_workers(exe, plan, role, size, |_| PeerSpec::Iceoryx2 {
                input: ping.clone(),
                output: Some(pong.clone()),
                subscribers: 1,
            })?;
            Ok(Session::new(ep, workers))
        }
    }
}

// --------------------------------------------------------------- ZeroMQ --

#[cfg(feature = "peers")]
mod zmq_peer {
    use super::*;

    /// `ZMQ_XPUB_NODROP` (zmq.h): block at the high-water mark instead of
    /// dropping; the `zmq` crate has no setter for it.
    const ZMQ_XPUB_NODROP: i32 = 69;
    /// Messages queued per pipe before the publisher blocks.
    const HWM: i32 = 10_000;

    fn err(what: &str, e: zmq::Error) -> RunError {
        RunError::failed(format!("ZeroMQ {what}: {e}"))
    }

    pub struct Zmq {
        _ctx: zmq::Context,
        publisher: Option<zmq::Socket>,
        subscriber: Option<zmq::Socket>,
        buf: Vec<u8>,
    }

    fn xpub(ctx: &zmq::Context, at: &str) -> Result<zmq::Socket, RunError> {
        let mut s = ctx.socket(zmq::XPUB).map_err(|e| err("socket", e))?;
        s.set_sndhwm(HWM).map_err(|e| err("SNDHWM", e))?;
        // Pass every subscription up, not only the first per topic: we
        // count them to know when all subscribers are connected.
        s.set_xpub_verbose(true)
            .map_err(|e| err("XPUB_VERBOSE", e))?;
        let one: libc::c_int = 1;
        #[allow(unsafe_code)]
        // SAFETY: zmq_setsockopt reads sizeof(int) bytes from a live int;
        // the socket pointer is the live socket `s` owns.
        let rc = unsafe {
            zmq_sys_setsockopt(
                s.as_mut_ptr(),
                ZMQ_XPUB_NODROP,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>(),
            )
        };
        if rc != 0 {
            return Err(RunError::failed("ZeroMQ: cannot set ZMQ_XPUB_NODROP"));
        }
        s.bind(at).map_err(|e| err("bind", e))?;
        Ok(s)
    }

    extern "C" {
        #[link_name = "zmq_setsockopt"]
        fn zmq_sys_setsockopt(
            s: *mut libc::c_void,
            option: libc::c_int,
            optval: *const libc::c_void,
            optvallen: libc::size_t,
        ) -> libc::c_int;
    }

    fn sub(ctx: &zmq::Context, at: &str) -> Result<zmq::Socket, RunError> {
        let s = ctx.socket(zmq::SUB).map_err(|e| err("socket", e))?;
        s.set_rcvhwm(HWM).map_err(|e| err("RCVHWM", e))?;
        s.connect(at).map_err(|e| err("connect", e))?;
        s.set_subscribe(b"").map_err(|e| err("subscribe", e))?;
        Ok(s)
    }

    /// Wait until `n` subscriptions reached the XPUB: from then on nothing
    /// it sends is lost to a slow joiner.
    fn await_subscribers(p: &zmq::Socket, n: usize) -> Result<(), RunError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = 0;
        while seen < n {
            if Instant::now() >= deadline {
                return Err(RunError::failed(format!(
                    "ZeroMQ: {seen} of {n} subscriptions arrived"
                )));
            }
            if p.poll(zmq::POLLIN, 100).map_err(|e| err("poll", e))? > 0 {
                let m = p.recv_bytes(0).map_err(|e| err("recv", e))?;
                if m.first() == Some(&1) {
                    seen += 1;
                }
            }
        }
        Ok(())
    }

    pub fn worker(
        input: &str,
        output: Option<&str>,
    ) -> Result<(Box<dyn Endpoint>, String), RunError> {
        let ctx = zmq::Context::new();
        let publisher = output.map(|o| xpub(&ctx, o)).transpose()?;
        let subscriber = Some(sub(&ctx, input)?);
        Ok((
            Box::new(Zmq {
                _ctx: ctx,
                publisher,
                subscriber,
                buf: Vec::new(),
            }),
            String::new(),
        ))
    }

    /// The measuring end: bind the publisher, start the workers, then
    /// (echo) connect to the worker's publisher.
    pub fn ours(
        output: &str,
        input: Option<&str>,
        subscribers: usize,
        start: impl FnOnce() -> Result<Vec<Worker>, RunError>,
    ) -> Result<(Box<dyn Endpoint>, Vec<Worker>), RunError> {
        let ctx = zmq::Context::new();
        let p = xpub(&ctx, output)?;
        let workers = start()?;
        await_subscribers(&p, subscribers)?;
        let subscriber = input.map(|i| sub(&ctx, i)).transpose()?;
        if subscriber.is_some() {
            // The echo's XPUB discards our frames until our subscription
            // arrived; a short settle (the echo cannot tell us).
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok((
            Box::new(Zmq {
                _ctx: ctx,
                publisher: Some(p),
                subscriber,
                buf: Vec::new(),
            }),
            workers,
        ))
    }

    impl Endpoint for Zmq {
        fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
            let p = self
                .publisher
                .as_ref()
                .ok_or_else(|| RunError::failed("this end only receives"))?;
            p.send(msg, 0).map_err(|e| err("send", e))
        }

        fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
            let s = self
                .subscriber
                .as_ref()
                .ok_or_else(|| RunError::failed("this end only sends"))?;
            let ms = timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
            if s.poll(zmq::POLLIN, ms).map_err(|e| err("poll", e))? == 0 {
                return Ok(0);
            }
            let mut n = 0;
            loop {
                match s.recv_bytes(if n == 0 { 0 } else { zmq::DONTWAIT }) {
                    Ok(m) => {
                        self.buf = m;
                        f(&self.buf);
                        n += 1;
                        if n == 256 {
                            return Ok(n);
                        }
                    }
                    Err(zmq::Error::EAGAIN) => return Ok(n),
                    Err(e) => return Err(err("recv", e)),
                }
            }
        }
    }
}

#[cfg(not(feature = "peers"))]
mod zmq_peer {
    use super::*;

    fn missing() -> RunError {
        RunError::unavailable(
            "built without the `peers` feature (cargo build --release --features peers)",
        )
    }

    pub fn worker(_: &str, _: Option<&str>) -> Result<(Box<dyn Endpoint>, String), RunError> {
        Err(missing())
    }

    pub fn ours(
        _: &str,
        _: Option<&str>,
        _: usize,
        _: impl FnOnce() -> Result<Vec<Worker>, RunError>,
    ) -> Result<(Box<dyn Endpoint>, Vec<Worker>), RunError> {
        Err(missing())
    }
}

pub fn zmq_session(
    exe: &Path,
    dir: &Path,
    role: Role,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let at = |what: &str| format!("ipc://{}/zmq-{tag}-{what}", dir.display());
    let (ep, workers) = match role {
        Role::Sink => {
            let data = at("data");
            let n = plan.subscribers.max(1) as usize;
            zmq_peer::ours(&data, None, n, || {
                spawn_workers(exe, plan, role, size, |_| PeerSpec::Zmq {
                    input: data.clone(),
                    output: None,
                })
            })?
        }
        Role::Echo => {
            let (ping, pong) = (at("ping"), at("pong"));
            zmq_peer::ours(&ping, Some(&pong), 1, || {
                spawn_workers(exe, plan, role, size, |_| PeerSpec::Zmq {
                    input: ping.clone(),
                    output: Some(pong.clone()),
                })
            })?
        }
    };
    Ok(Session::new(ep, workers))
}

// ----------------------------------------------------------------- NATS --

/// A client of NATS's text protocol: `PUB subject n\r\n<payload>\r\n` out,
/// `MSG subject sid n\r\n<payload>\r\n` in, PING answered with PONG.
struct Nats {
    out: BufWriter<TcpStream>,
    inp: BufReader<TcpStream>,
    publish: Option<String>,
    line: String,
    payload: Vec<u8>,
}

impl Nats {
    fn connect(
        port: u16,
        subscribe: Option<&str>,
        publish: Option<String>,
    ) -> Result<Nats, RunError> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| {
            RunError::unavailable(format!("cannot reach nats-server on 127.0.0.1:{port}: {e}"))
        })?;
        s.set_nodelay(true)?;
        let mut n = Nats {
            out: BufWriter::with_capacity(64 << 10, s.try_clone()?),
            inp: BufReader::with_capacity(256 << 10, s),
            publish,
            line: String::new(),
            payload: Vec::new(),
        };
        // The server speaks first (INFO).
        n.read_line(Some(Duration::from_secs(5)))?;
        if !n.line.starts_with("INFO") {
            return Err(RunError::failed(format!(
                "NATS: expected INFO, got {:?}",
                n.line
            )));
        }
        n.out.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"ipchub-bench\"}\r\n",
        )?;
        if let Some(subject) = subscribe {
            write!(n.out, "SUB {subject} 1\r\n")?;
        }
        // PONG answers our PING only after the server handled CONNECT and SUB.
        n.out.write_all(b"PING\r\n")?;
        n.out.flush()?;
        loop {
            n.read_line(Some(Duration::from_secs(5)))?;
            match n.line.trim_end() {
                "PONG" => return Ok(n),
                l if l.starts_with("-ERR") => return Err(RunError::failed(format!("NATS: {l}"))),
                _ => {}
            }
        }
    }

    fn read_line(&mut self, timeout: Option<Duration>) -> Result<bool, RunError> {
        self.inp.get_ref().set_read_timeout(timeout)?;
        self.line.clear();
        loop {
            match self.inp.read_line(&mut self.line) {
                Ok(0) => return Err(RunError::failed("NATS: server closed the connection")),
                Ok(_) if self.line.ends_with('\n') => return Ok(true),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) && self.line.is_empty() =>
                {
                    return Ok(false)
                }
                // Part of a line came: the server writes whole messages, so
                // the rest follows; wait for it rather than lose it.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    self.inp.get_ref().set_read_timeout(None)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Endpoint for Nats {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let subject = self
            .publish
            .as_deref()
            .ok_or_else(|| RunError::failed("this end only receives"))?;
        write!(self.out, "PUB {subject} {}\r\n", msg.len())?;
        self.out.write_all(msg)?;
        self.out.write_all(b"\r\n")?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.out.flush()?;
        Ok(())
    }

    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        // Whatever we sent must be on its way before we wait for answers.
        self.out.flush()?;
        let mut n = 0;
        loop {
            let t = if n == 0 {
                Some(timeout.max(Duration::from_millis(1)))
            } else if self.inp.buffer().is_empty() {
                return Ok(n);
            } else {
                None
            };
            if !self.read_line(t)? {
                return Ok(n);
            }
            let line = self.line.trim_end();
            if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .ok_or_else(|| RunError::failed(format!("NATS: bad MSG line {line:?}")))?;
                self.payload.resize(len + 2, 0);
                self.inp.get_ref().set_read_timeout(None)?;
                self.inp.read_exact(&mut self.payload)?;
                f(&self.payload[..len]);
                n += 1;
            } else if line == "PING" {
                self.out.write_all(b"PONG\r\n")?;
                self.out.flush()?;
            } else if line.starts_with("-ERR") {
                return Err(RunError::failed(format!("NATS: {line}")));
            }
        }
    }
}

pub fn nats_session(
    exe: &Path,
    port: u16,
    role: Role,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let base = format!("ipchub-bench.{}.{tag}", std::process::id());
    let (ep, workers) = match role {
        Role::Sink => {
            let data = format!("{base}.data");
            let ep = Nats::connect(port, None, Some(data.clone()))?;
            let w = spawn_workers(exe, plan, role, size, |_| PeerSpec::Nats {
                port,
                input: data.clone(),
                output: None,
            })?;
            (ep, w)
        }
        Role::Echo => {
            let (ping, pong) = (format!("{base}.ping"), format!("{base}.pong"));
            let ep = Nats::connect(port, Some(&pong), Some(ping.clone()))?;
            let w = spawn_workers(exe, plan, role, size, |_| PeerSpec::Nats {
                port,
                input: ping.clone(),
                output: Some(pong.clone()),
            })?;
            (ep, w)
        }
    };
    Ok(Session::new(Box::new(ep), workers))
}

/// A `nats-server` on a free loopback port, killed on drop.
pub struct NatsServer {
    child: Child,
    pub port: u16,
}

impl NatsServer {
    pub fn start(dir: &Path) -> Result<NatsServer, RunError> {
        let binary = find_program("nats-server").ok_or_else(|| {
            RunError::unavailable("nats-server not found (apt-get install nats-server)")
        })?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.join("nats-server.log");
        // Payloads up to the bench's largest size (1 MiB) plus headroom;
        // the default max_payload is exactly 1 MiB.
        let conf = dir.join("nats-server.conf");
        std::fs::write(&conf, "max_payload: 2097152\nmax_pending: 268435456\n")?;
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| {
                RunError::unavailable(format!("cannot start {}: {e}", binary.display()))
            })?;
        let mut s = NatsServer { child, port };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(RunError::unavailable(format!(
                    "nats-server exited at start ({st}): {}",
                    text.trim()
                )));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(RunError::unavailable(format!(
                    "nats-server never listened on 127.0.0.1:{port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(s)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program on PATH, or in the sbin directories a non-root PATH lacks.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
