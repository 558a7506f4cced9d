//! The data thread: one mio (epoll, edge-triggered) loop owning every client.
//!
//! Shape of one iteration: wait for readiness; read every ready client in
//! large chunks and hand each complete frame to the [`Hub`]; flush every
//! queue the hub marked dirty with one `writev` per client; close clients the
//! hub condemned. Edge-triggered readiness is only reported once, so a client
//! we stop reading early (budget spent, or paused by back-pressure) goes on
//! the `pending` list and is serviced again without waiting for the kernel.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, info, warn};

use super::control::{ControlHandle, EventFanout, Request};
use super::handshake;
use super::systemd;
use crate::config::Config;
use crate::hub::loglimit::LogKind;
use crate::hub::{ClientId, ControlOp, ControlReply, Hub, HubEvent, Identity, Step, TransportKind};
use crate::transport::stream::{flush_stream, read_stream};
use crate::transport::Link;
use crate::wire::{self, DecodeError, FrameType};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
/// Client tokens are `id << 2 | role`.
const ROLE_CTRL: usize = 0;
const ROLE_DATA_IN: usize = 1;
const ROLE_DATA_OUT: usize = 2;
/// Bytes read from one client per turn before others get theirs.
const READ_BUDGET: usize = 512 * 1024;
/// Bytes read from one client before its complete frames are handled: what
/// a client can have buffered in the hub beyond one partial frame, so a
/// paused client holds at most this much of unhandled requests.
const READ_CHUNK: usize = 64 * 1024;
/// How soon to retry accepting after the process ran out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How often the STATUS= line for systemd is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long a disconnected client may take to read its final ERROR.
const LINGER: Duration = Duration::from_secs(2);

fn token(id: ClientId, role: usize) -> Token {
    Token(((id as usize) << 2) | role)
}

/// What the loop needs besides the listener.
pub struct LoopOptions {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    /// Runtime directory for FIFOs and other per-client files.
    pub runtime_dir: PathBuf,
    /// Socket file to remove at exit (None when systemd owns it).
    pub unlink_on_exit: Option<PathBuf>,
    /// The control socket's path (handed to a successor on SIGUSR2).
    pub socket_path: PathBuf,
    /// Planned restarts (SIGUSR2) this process has been through.
    pub generation: u64,
}

struct Client {
    ident: Identity,
    /// The control connection; None for endpoints the hub made itself
    /// (spawned children, publish FIFOs), which only have a data link.
    ctrl: Option<OwnedFd>,
    ctrl_in: Vec<u8>,
    /// The data path once the handshake chose one; None = frames on `ctrl`.
    data: Option<Box<dyn Link>>,
    data_in: Vec<u8>,
    greeted: bool,
    /// Descriptors sent with HELLO (mqueue: the client's own queues),
    /// held until the handshake uses or refuses them.
    hello_fds: Vec<OwnedFd>,
    /// Bytes of `ctrl_in` and `data_in` as last added to the uid's input.
    input_accounted: usize,
    paused: bool,
    transport: TransportKind,
    /// Set once disconnected but still owed its last frames (an ERROR
    /// saying why): until when, and what is left to write.
    closing: Option<(Instant, crate::hub::queue::OutQueue)>,
    /// The control connection closed while the data path (pipe, FIFO,
    /// queue, ring) may still hold frames the client wrote before it went:
    /// they are handled first, then the client is closed.
    ctrl_gone: bool,
}

pub struct EventLoop {
    poll: Poll,
    listener: mio::net::UnixListener,
    signals: Signals,
    hub: Hub,
    clients: HashMap<ClientId, Client>,
    pending: Vec<ClientId>,
    opts: LoopOptions,
    scratch_ids: Vec<ClientId>,
    waker: std::sync::Arc<mio::Waker>,
    control_tx: std::sync::mpsc::Sender<Request>,
    control_rx: std::sync::mpsc::Receiver<Request>,
    fanout: EventFanout,
    spawner: super::spawn::Spawner,
    /// Set while accepting fails for lack of resources: when to try again.
    accept_retry: Option<Instant>,
    /// Channels with a broadcast ring (shm clients read and write it directly).
    rings: HashMap<String, rings::ChannelRing>,
    /// Connections not greeted yet, in order of their handshake deadline
    /// (`hub.handshake_timeout_ms` after accept).
    handshakes: VecDeque<(Instant, ClientId)>,
    /// Bytes buffered from each uid's clients (partial frames, requests not
    /// handled yet), bounded by `queue.max_bytes_per_uid` like its output.
    input_bytes: HashMap<u32, usize>,
    /// Clients not read because their uid's input is at its bound.
    starved: HashMap<u32, Vec<ClientId>>,
    /// What each client and uid holds in channel rings (their quotas).
    ring_use: rings::RingUse,
}

impl EventLoop {
    pub fn new(listener: StdListener, opts: LoopOptions) -> io::Result<EventLoop> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mut listener = mio::net::UnixListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut hub = Hub::new(opts.config.clone());
        // Disk storage's sync thread reports through the control waker.
        let wake = waker.clone();
        hub.attach_storage(Box::new(move || {
            let _ = wake.wake();
        }));
        let (control_tx, control_rx) = std::sync::mpsc::channel();
        Ok(EventLoop {
            waker,
            control_tx,
            control_rx,
            fanout: EventFanout::default(),
            accept_retry: None,
            rings: HashMap::new(),
            handshakes: VecDeque::new(),
            input_bytes: HashMap::new(),
            starved: HashMap::new(),
            ring_use: rings::RingUse::default(),
            spawner: super::spawn::Spawner::new(
                &opts.config.spawn,
                opts.config.hub.max_message_size as usize,
            ),
            poll,
            listener,
            signals,
            hub,
            clients: HashMap::new(),
            pending: Vec::new(),
            opts,
            scratch_ids: Vec::new(),
        })
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn hub_mut(&mut self) -> &mut Hub {
        &mut self.hub
    }

    /// A handle for a control thread (D-Bus, bridge) to run operations here.
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle {
            tx: self.control_tx.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Receive [`HubEvent`]s (clients and channels coming and going).
    pub fn subscribe_events(&mut self) -> std::sync::mpsc::Receiver<HubEvent> {
        self.hub.set_event_recording(true);
        self.fanout.subscribe()
    }

    fn writes_on_read(&self, id: ClientId) -> bool {
        self.clients
            .get(&id)
            .and_then(|c| c.data.as_ref())
            .is_some_and(|l| l.writable_via_read_fd())
    }

    /// Register a client's data link for readiness.
    fn register_link(&self, id: ClientId, link: &dyn Link) -> io::Result<()> {
        let (r, w) = (link.read_fd(), link.write_fd());
        let reg = self.poll.registry();
        if link.writable_via_read_fd() {
            reg.register(
                &mut SourceFd(&r),
                token(id, ROLE_DATA_IN),
                Interest::READABLE,
            )
        } else if r == w {
            reg.register(
                &mut SourceFd(&r),
                token(id, ROLE_DATA_IN),
                Interest::READABLE | Interest::WRITABLE,
            )
        } else {
            reg.register(
                &mut SourceFd(&r),
                token(id, ROLE_DATA_IN),
                Interest::READABLE,
            )?;
            reg.register(
                &mut SourceFd(&w),
                token(id, ROLE_DATA_OUT),
                Interest::WRITABLE,
            )
        }
    }

    /// Run until SIGINT/SIGTERM. Returns after every client got a BYE.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let watchdog = systemd::watchdog_interval();
        let mut next_ping = watchdog.map(|w| Instant::now() + w);
        // `systemctl status ipchub` shows what the hub is doing: refreshed
        // every few seconds, and only sent when it changed.
        let status_every = systemd::notify_enabled().then_some(STATUS_EVERY);
        let mut next_status = status_every.map(|d| Instant::now() + d);
        let mut last_status = String::new();
        self.open_publish_fifos();
        self.tend_children(Instant::now());
        loop {
            let now = Instant::now();
            let mut timeout = if self.pending.is_empty() {
                None
            } else {
                Some(Duration::ZERO)
            };
            for deadline in [
                self.hub.next_deadline(),
                next_ping,
                self.next_linger_deadline(),
                self.spawner.next_deadline(),
                self.accept_retry,
                next_status,
                self.next_ring_deadline(),
                self.handshakes.front().map(|h| h.0),
            ]
            .into_iter()
            .flatten()
            {
                let d = deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(d, |t: Duration| t.min(d)));
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.run_control(),
                    SIGNALS => {
                        if self.handle_signals() {
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    Token(t) => {
                        let id = (t >> 2) as ClientId;
                        let role = t & 3;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.service(id, role);
                            // One eventfd may also mean "room to write".
                            if role == ROLE_DATA_IN && self.writes_on_read(id) {
                                self.flush(id);
                            }
                        }
                        if ev.is_writable() && (role == ROLE_DATA_OUT || role == ROLE_CTRL) {
                            self.flush(id);
                        }
                    }
                }
            }
            let pending = std::mem::take(&mut self.pending);
            for id in pending {
                self.service(id, ROLE_CTRL);
                self.service(id, ROLE_DATA_IN);
            }
            self.settle();
            self.forward_events();
            let now = Instant::now();
            if self.hub.next_deadline().is_some_and(|d| d <= now) {
                self.hub.check_timeouts(now);
                self.settle();
            }
            if self.accept_retry.is_some_and(|d| d <= now) {
                self.accept_all();
            }
            if self.handshakes.front().is_some_and(|h| h.0 <= now) {
                self.expire_handshakes(now);
                self.settle();
            }
            if self.next_ring_deadline().is_some_and(|d| d <= now) {
                self.settle(); // tends the rings: stalled readers go
            }
            if self.spawner.next_deadline().is_some_and(|d| d <= now) {
                self.tend_children(now);
            }
            if self.next_linger_deadline().is_some_and(|d| d <= now) {
                self.expire_lingering(now);
            }
            if let (Some(every), Some(at)) = (status_every, next_status) {
                if now >= at {
                    let line = self.status_line();
                    if line != last_status {
                        systemd::status(&line);
                        last_status = line;
                    }
                    next_status = Some(now + every);
                }
            }
            if let (Some(w), Some(at)) = (watchdog, next_ping) {
                if now >= at {
                    systemd::watchdog_ping();
                    next_ping = Some(now + w);
                }
            }
        }
    }

    /// Flush everything the hub queued, resume publishers that may go on,
    /// close the condemned; repeat until nothing changes.
    fn settle(&mut self) {
        loop {
            self.serve_ring_requests();
            self.tend_rings();
            let mut ids = std::mem::take(&mut self.scratch_ids);
            self.hub.take_dirty(&mut ids);
            for id in ids.drain(..) {
                self.flush(id);
            }
            let mut doomed = Vec::new();
            self.hub.take_doomed(&mut doomed);
            for (id, reason) in doomed {
                self.close(id, CloseReason::Condemned(reason));
            }
            self.hub.take_resumed(&mut ids);
            let resumed = !ids.is_empty();
            for id in ids.drain(..) {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.paused = false;
                    self.pending.push(id);
                }
            }
            self.scratch_ids = ids;
            if !resumed {
                return;
            }
            // Resumed publishers are handled now rather than next turn, so a
            // drained subscriber gets new data without an extra wake-up.
            let pending = std::mem::take(&mut self.pending);
            for id in pending {
                self.service(id, ROLE_CTRL);
                self.service(id, ROLE_DATA_IN);
            }
        }
    }

    fn handle_signals(&mut self) -> bool {
        let mut stop = false;
        for sig in self.signals.pending() {
            match sig {
                SIGHUP => {
                    let _ = self.reload();
                }
                // Planned restart: re-execute with the state handed over
                // (returns only if that failed; the hub then carries on).
                SIGUSR2 => self.handover(),
                _ => {
                    info!(signal = sig, "shutting down on signal");
                    stop = true;
                }
            }
        }
        stop
    }

    fn reload(&mut self) -> Result<(), String> {
        systemd::reloading();
        // The publish FIFOs stay those opened at start; the new [access]
        // must not be one they would bypass.
        let loaded = Config::load(self.opts.config_path.as_deref()).and_then(|cfg| {
            match crate::config::check_publish_fifo_access(&self.opts.config.fifo, &cfg.access) {
                Ok(()) => Ok(cfg),
                Err((key, message)) => Err(crate::config::ConfigError::Value {
                    path: self.opts.config_path.clone().unwrap_or_default(),
                    key: format!("{key} (running since start)"),
                    message,
                }),
            }
        });
        let res = match loaded {
            Ok(cfg) => {
                // The bridges' supervisor restarts those whose settings changed.
                crate::bridge::reload(&cfg);
                let changes = crate::hub::config_changes(self.hub.config(), &cfg);
                self.hub.reload(cfg);
                self.recheck_ring_access();
                let changed = if changes.is_empty() {
                    "nothing changed".to_string()
                } else {
                    changes.join(", ")
                };
                info!(message_id = crate::daemon::logging::msgid::RELOADED, %changed, "configuration reloaded: {changed}");
                Ok(())
            }
            Err(e) => {
                warn!(
                    message_id = crate::daemon::logging::msgid::RELOAD_FAILED,
                    "reload failed, keeping the running configuration: {e}"
                );
                Err(e.to_string())
            }
        };
        systemd::reloaded(&self.status_line());
        res
    }

    fn status_line(&self) -> String {
        let t = self.hub.totals();
        format!(
            "{} clients, {} channels; {} messages in, {} delivered, {} dropped",
            self.hub.client_count(),
            self.hub.channel_count(),
            t.messages_in,
            t.messages_out,
            t.dropped
        )
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(OwnedFd::from(stream)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_retry = None;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog, and edge-triggered readiness will not report
                    // it again, so retry on a timer (logged once per episode).
                    if self.accept_retry.is_none() {
                        warn!("accept failed, retrying every {ACCEPT_RETRY:?}: {e}");
                    }
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, fd: OwnedFd) {
        let ident =
            match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials) {
                Ok(c) => Identity {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                },
                Err(e) => {
                    warn!("cannot read peer credentials, refusing client: {e}");
                    return;
                }
            };
        let groups = supplementary_groups(ident.uid, ident.gid);
        let id = match self.hub.admit_with_groups(ident, groups) {
            Ok(id) => id,
            Err(e) => {
                if self.hub.log_allowed(ident.uid, LogKind::Refused) {
                    warn!(
                        client_pid = ident.pid,
                        client_uid = ident.uid,
                        "refusing client: {e}"
                    );
                }
                let mut out = Vec::new();
                let p = wire::frame::error_payload(wire::ErrorCode::LimitReached, &e.to_string());
                wire::encode(&mut out, FrameType::Error, 0, 0, "", &p, 0, 0);
                let _ = nix::unistd::write(&fd, &out);
                return;
            }
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&raw),
            token(id, ROLE_CTRL),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot register client: {e}");
            self.hub.remove(id);
            return;
        }
        debug!(
            client = id,
            client_pid = ident.pid,
            client_uid = ident.uid,
            "client connected"
        );
        self.clients.insert(
            id,
            Client {
                ident,
                ctrl: Some(fd),
                ctrl_in: Vec::new(),
                data: None,
                data_in: Vec::new(),
                greeted: false,
                hello_fds: Vec::new(),
                input_accounted: 0,
                paused: false,
                transport: TransportKind::Socket,
                closing: None,
                ctrl_gone: false,
            },
        );
        let timeout = Duration::from_millis(self.hub.config().hub.handshake_timeout_ms);
        self.handshakes.push_back((Instant::now() + timeout, id));
        // Data may already be waiting; edge-triggered readiness may not tell us again.
        self.pending.push(id);
    }

    /// Read and handle input from one of a client's sources: a chunk at a
    /// time, each handled before the next is read, up to the turn's budget.
    fn service(&mut self, id: ClientId, role: usize) {
        let mut spent = 0;
        while let Some(n) = self.service_chunk(id, role) {
            spent += n;
            if spent >= READ_BUDGET {
                // Others get their turn; this one is serviced again soon
                // (edge-triggered readiness will not report it again).
                self.pending.push(id);
                return;
            }
        }
    }

    /// Bring the uid's input bytes up to date with a client's buffers; when
    /// they fall below the bound, clients starved for it are read again.
    pub(super) fn sync_input(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let now = if c.ctrl.is_some() {
            c.ctrl_in.len() + c.data_in.len()
        } else {
            0 // the hub's own endpoints are not a user's
        };
        if now == c.input_accounted {
            return;
        }
        let uid = c.ident.uid;
        let total = self.input_bytes.entry(uid).or_insert(0);
        *total = (*total + now).saturating_sub(c.input_accounted);
        let shrank = now < c.input_accounted;
        c.input_accounted = now;
        let below = *total < self.hub.config().queue.max_bytes_per_uid;
        if *total == 0 {
            self.input_bytes.remove(&uid);
        }
        if shrank && below {
            if let Some(waiting) = self.starved.remove(&uid) {
                self.pending.extend(waiting);
            }
        }
    }

    /// Close connections that did not send HELLO in time.
    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.handshakes.front() {
            if deadline > now {
                return;
            }
            self.handshakes.pop_front();
            let Some(c) = self.clients.get(&id) else {
                continue;
            };
            if c.greeted || c.closing.is_some() {
                continue;
            }
            let reason = CloseReason::HandshakeTimeout {
                ms: self.hub.config().hub.handshake_timeout_ms,
            };
            self.hub
                .send_error(id, 0, wire::ErrorCode::BadHandshake, &reason.to_string());
            self.close(id, reason);
        }
    }

    /// Read one chunk from a client's source and handle what it completed.
    /// Some(bytes read) when there may be more to read right away.
    fn service_chunk(&mut self, id: ClientId, role: usize) -> Option<usize> {
        let c = self.clients.get_mut(&id)?;
        if c.closing.is_some() {
            // Only waiting for it to read its ERROR: discard input, notice EOF.
            let mut sink = Vec::new();
            let gone = match role {
                ROLE_CTRL => match &c.ctrl {
                    Some(fd) => read_stream(fd, &mut sink, READ_CHUNK),
                    None => return None,
                },
                _ => match c.data.as_mut() {
                    Some(link) => link.read_into(&mut sink, READ_CHUNK),
                    None => return None,
                },
            }
            .map_or(true, |o| o.eof);
            if gone {
                self.finalize(id);
            }
            return None;
        }
        if c.paused {
            // Not reading it, but a ring endpoint still wakes the clients
            // that sleep on its ring.
            if let Some(link) = c.data.as_mut() {
                link.wake_others();
            }
            return None;
        }
        let max = self.hub.config().hub.max_message_size;
        let max_hello = self.hub.config().hub.max_hello_size;
        // A client in the middle of a frame is not read further while its
        // uid's clients together buffer max_bytes_per_uid: a uid cannot
        // park a largest partial frame in every connection. A stream with
        // an empty buffer may still read one chunk (at most READ_CHUNK), so
        // small frames flow; a message transport may not (one message may
        // be a largest frame).
        let uid = c.ident.uid;
        let held = match role {
            ROLE_CTRL => !c.ctrl_in.is_empty(),
            _ => !c.data_in.is_empty() || c.data.as_ref().is_some_and(|l| l.max_frame().is_some()),
        };
        if c.greeted
            && c.ctrl.is_some()
            && !c.ctrl_gone
            && held
            && self.input_bytes.get(&uid).copied().unwrap_or(0)
                >= self.hub.config().queue.max_bytes_per_uid
        {
            // Not read, but a client that went away must not stay: its
            // slot would be held for good (its unfinished frame is lost).
            if role == ROLE_CTRL && c.ctrl.as_ref().is_some_and(peer_hung_up) {
                let reason = CloseReason::MidFrame {
                    discarded: c.ctrl_in.len(),
                };
                self.close(id, reason);
                return None;
            }
            let waiting = self.starved.entry(uid).or_default();
            if !waiting.contains(&id) {
                waiting.push(id);
            }
            return None;
        }
        let res = match role {
            ROLE_CTRL if !c.greeted => match &c.ctrl {
                Some(fd) => handshake::read_hello(fd, &mut c.ctrl_in, &mut c.hello_fds, max_hello),
                None => return None,
            },
            ROLE_CTRL => match &c.ctrl {
                Some(fd) => read_stream(fd, &mut c.ctrl_in, READ_CHUNK),
                None => return None,
            },
            ROLE_DATA_IN => match c.data.as_mut() {
                Some(link) => link.read_into(&mut c.data_in, READ_CHUNK),
                None => return None,
            },
            _ => return None,
        };
        let outcome = match res {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A message transport refused a record that is not exactly
                // one frame: malformed input, answered like any other.
                self.hub
                    .send_error(id, 0, wire::ErrorCode::Malformed, &e.to_string());
                self.close(id, CloseReason::Malformed(e.to_string()));
                return None;
            }
            Err(e) => {
                self.close(id, CloseReason::Read(e));
                return None;
            }
        };
        let step = self.process(id, role, max);
        self.sync_input(id);
        match step {
            Step::Close => None,
            _ if outcome.eof && role == ROLE_CTRL && self.clients[&id].data.is_some() => {
                // The client is gone, but what it wrote to its data path
                // before going is still owed to the subscribers.
                let c = self.clients.get_mut(&id).expect("present");
                c.ctrl_gone = true;
                if let Some(fd) = &c.ctrl {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&fd.as_raw_fd()));
                }
                self.service(id, ROLE_DATA_IN);
                None
            }
            Step::Continue
                if role == ROLE_DATA_IN && !outcome.more && self.clients[&id].ctrl_gone =>
            {
                // Drained (the source would block and the client is gone).
                let reason = reason::ended(self.clients[&id].data_in.len());
                self.close(id, reason);
                None
            }
            _ if outcome.eof => {
                let c = &self.clients[&id];
                let buf = if role == ROLE_CTRL {
                    &c.ctrl_in
                } else {
                    &c.data_in
                };
                if step == Step::Pause && !buf.is_empty() {
                    // Keep the client until its buffered frames are handled; the
                    // EOF is seen again once it is resumed and reads.
                    return None;
                }
                let reason = reason::ended(buf.len());
                self.close(id, reason);
                None
            }
            Step::Continue if outcome.more => Some(outcome.bytes),
            _ => None,
        }
    }

    /// Decode and handle every complete frame buffered from `role`.
    fn process(&mut self, id: ClientId, role: usize, max: u32) -> Step {
        let Some(c) = self.clients.get_mut(&id) else {
            return Step::Close;
        };
        if !c.greeted {
            if role != ROLE_CTRL {
                return Step::Continue;
            }
            // Judge the first frame by its header, before its body is
            // buffered: only a HELLO within hub.max_hello_size is read.
            if let Ok(Some(h)) = wire::frame::decode_header(&c.ctrl_in, u32::MAX) {
                let max_hello = self.hub.config().hub.max_hello_size;
                let refusal = if h.ty != FrameType::Hello {
                    Some((
                        wire::ErrorCode::BadHandshake,
                        format!("expected HELLO as the first frame, got {:?}", h.ty),
                    ))
                } else if h.payload_len > max_hello {
                    Some((
                        wire::ErrorCode::TooLarge,
                        format!(
                            "HELLO payload of {} bytes exceeds hub.max_hello_size ({max_hello} bytes)",
                            h.payload_len
                        ),
                    ))
                } else {
                    None
                };
                if let Some((code, text)) = refusal {
                    self.hub.send_error(id, h.seq, code, &text);
                    self.close(id, CloseReason::Refused(text));
                    return Step::Close;
                }
            }
            let hello = match wire::decode(&c.ctrl_in, max) {
                Ok(None) => return Step::Continue,
                Ok(Some((frame, used))) => Ok((
                    frame.header.ty,
                    frame.header.seq,
                    frame.payload.to_vec(),
                    used,
                )),
                Err(e) => Err(e),
            };
            match hello {
                Ok((ty, seq, payload, used)) => {
                    let res = self.greet(id, ty, seq, payload);
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.ctrl_in.drain(..used);
                    }
                    if let Err(reason) = res {
                        self.close(id, reason);
                        return Step::Close;
                    }
                }
                Err(e) => {
                    self.reject_frame(id, &e);
                    return Step::Close;
                }
            }
        }
        let now = Instant::now();
        let Some(c) = self.clients.get_mut(&id) else {
            return Step::Close;
        };
        let buf = if role == ROLE_CTRL {
            &mut c.ctrl_in
        } else {
            &mut c.data_in
        };
        let mut off = 0;
        let step = loop {
            match wire::decode(&buf[off..], max) {
                Ok(Some((frame, used))) => match self.hub.handle(id, &frame, now) {
                    Step::Continue => off += used,
                    Step::Pause => {
                        c.paused = true;
                        break Step::Pause;
                    }
                    Step::Close => {
                        off += used;
                        break Step::Close;
                    }
                },
                Ok(None) => break Step::Continue,
                Err(e) => {
                    buf.drain(..off);
                    self.reject_frame(id, &e);
                    return Step::Close;
                }
            }
        };
        buf.drain(..off);
        if buf.is_empty() && buf.capacity() > 4 * READ_BUDGET {
            // Give back the memory a burst of big frames needed.
            *buf = Vec::new();
        }
        if step == Step::Close {
            self.close(id, CloseReason::ProtocolViolation);
        }
        step
    }

    fn reject_frame(&mut self, id: ClientId, e: &DecodeError) {
        self.hub.send_error(id, 0, e.code(), &e.to_string());
        self.close(id, CloseReason::Malformed(e.to_string()));
    }

    /// The first frame must be HELLO: set up the chosen data path and answer WELCOME.
    fn greet(
        &mut self,
        id: ClientId,
        ty: FrameType,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<(), CloseReason> {
        let c = self.clients.get_mut(&id).expect("caller checked");
        let fail = |c: &Client, code: wire::ErrorCode, text: &str| {
            let mut out = Vec::new();
            wire::encode(
                &mut out,
                FrameType::Error,
                0,
                0,
                "",
                &wire::frame::error_payload(code, text),
                0,
                seq,
            );
            if let Some(fd) = &c.ctrl {
                let _ = nix::unistd::write(fd, &out);
            }
            CloseReason::Refused(text.to_string())
        };
        if ty != FrameType::Hello {
            return Err(fail(
                c,
                wire::ErrorCode::BadHandshake,
                &format!("expected HELLO as the first frame, got {ty:?}"),
            ));
        }
        let hello =
            handshake::Hello::parse(&payload).map_err(|e| fail(c, e.code(), &e.to_string()))?;
        let peer = crate::transport::Peer {
            id,
            uid: c.ident.uid,
            gid: c.ident.gid,
            runtime_dir: &self.opts.runtime_dir,
            max_message: self.hub.config().hub.max_message_size,
            shm_ring_size: self.hub.config().shm.ring_size,
        };
        let fds = std::mem::take(&mut c.hello_fds);
        let (offer, mut welcome) =
            handshake::setup(&peer, &hello, fds).map_err(|e| fail(c, e.code(), &e.to_string()))?;
        if hello.transport == TransportKind::Shm && self.hub.config().shm.channel_rings {
            // The client may ask for channel rings (OPEN_RING).
            welcome.push_str("channel_rings=1\n");
        }
        let crate::transport::Offer { link, fds, .. } = offer;
        let mut out = Vec::new();
        wire::encode(
            &mut out,
            FrameType::Welcome,
            0,
            0,
            "",
            welcome.as_bytes(),
            0,
            seq,
        );
        let ctrl = c
            .ctrl
            .as_ref()
            .ok_or_else(|| CloseReason::Refused("no control connection".into()))?;
        handshake::send_with_fds(ctrl, &out, &fds).map_err(CloseReason::SendWelcome)?;
        drop(fds);
        if let Some(link) = &link {
            self.register_link(id, link.as_ref())
                .map_err(CloseReason::RegisterData)?;
        }
        let c = self.clients.get_mut(&id).expect("caller checked");
        c.data = link;
        c.greeted = true;
        c.transport = hello.transport;
        self.hub.set_transport(id, hello.transport, &hello.name);
        self.hub
            .set_max_frame(id, c.data.as_ref().and_then(|l| l.max_frame()));
        if self.hub.log_allowed(c.ident.uid, LogKind::Connection) {
            info!(
                message_id = crate::daemon::logging::msgid::CLIENT_CONNECTED,
                client = id,
                client_pid = c.ident.pid,
                client_uid = c.ident.uid,
                transport = hello.transport.name(),
                name = %hello.name,
                "client connected via {}",
                hello.transport.describe()
            );
        }
        // Data may have arrived on the new path before we registered it.
        self.pending.push(id);
        Ok(())
    }

    fn flush(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.closing.is_some() {
            self.flush_closing(id);
            return;
        }
        let Some(q) = self.hub.queue(id) else { return };
        let res = match c.data.as_mut() {
            Some(link) => link.flush(q),
            None => flush_ctrl(&c.ctrl, q).map(|()| 0),
        };
        match res {
            Ok(lost) => {
                if lost > 0 {
                    self.hub.count_lost(id, lost);
                }
                self.hub.flushed(id);
            }
            Err(e) => self.close(id, CloseReason::Write(e)),
        }
    }
}

/// Has the other end of this socket closed (whatever is still unread)?
fn peer_hung_up(fd: &OwnedFd) -> bool {
    let mut pfd = [ipchub_os::sys::pollfd(fd.as_raw_fd(), libc::POLLRDHUP)];
    matches!(ipchub_os::sys::poll_raw(&mut pfd, 0), Ok(n) if n > 0)
        && pfd[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Flush to the control connection (socket transport); a client without one
/// always has a data link, so this is never reached for it.
fn flush_ctrl(ctrl: &Option<OwnedFd>, q: &mut crate::hub::queue::OutQueue) -> io::Result<()> {
    match ctrl {
        Some(fd) => flush_stream(fd, q),
        None => Ok(()),
    }
}

/// The uid's supplementary groups from the user database, for `group:`
/// access rules (SO_PEERCRED carries only the primary gid). A uid without
/// an entry has none.
fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, gid.into()).map_or_else(
        |_| Vec::new(),
        |g| g.into_iter().map(|g| g.as_raw()).collect(),
    )
}

mod closing;
mod internal;
mod reason;
mod rings;

pub use reason::CloseReason;
