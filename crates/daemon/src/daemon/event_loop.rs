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
use crate::hub::deadlines::Deadlines;
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
    /// Stops the loop from another thread.
    pub shutdown: super::Shutdown,
    /// Handle SIGINT, SIGTERM, SIGHUP and SIGUSR2 (the daemon does; a hub
    /// run inside another program leaves its signals alone).
    pub signals: bool,
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
    signals: Option<Signals>,
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
    /// A reload being read on its own thread (user and group names are
    /// resolved there, never on this one), who waits for its outcome, and
    /// whether another was asked for meanwhile.
    reloading: Option<std::sync::mpsc::Receiver<Result<Loaded, String>>>,
    reload_waiters: Vec<std::sync::mpsc::Sender<crate::hub::ControlReply>>,
    reload_again: bool,
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
    /// Lingering clients by when they must go (current while their
    /// `closing` says so): no turn walks every client to find them.
    lingering: Deadlines<ClientId>,
}

impl EventLoop {
    pub fn new(listener: StdListener, opts: LoopOptions) -> io::Result<EventLoop> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mut listener = mio::net::UnixListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let signals = if opts.signals {
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        opts.shutdown.attach(waker.clone());
        let mut hub = Hub::new(opts.config.clone());
        // Disk storage's sync thread reports through the control waker.
        let wake = waker.clone();
        hub.attach_storage(
            Box::new(move || {
                let _ = wake.wake();
            }),
            opts.shutdown.on_panic(),
        );
        let (control_tx, control_rx) = std::sync::mpsc::channel();
        Ok(EventLoop {
            waker,
            control_tx,
            control_rx,
            fanout: EventFanout::default(),
            accept_retry: None,
            reloading: None,
            reload_waiters: Vec::new(),
            reload_again: false,
            rings: HashMap::new(),
            handshakes: VecDeque::new(),
            input_bytes: HashMap::new(),
            starved: HashMap::new(),
            ring_use: rings::RingUse::default(),
            lingering: Deadlines::default(),
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
            on_panic: self.opts.shutdown.on_panic(),
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

    /// Run until SIGINT/SIGTERM or [`super::Shutdown`]. Returns after every
    /// client got a BYE.
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
                    WAKER => {
                        self.run_control();
                        if self.opts.shutdown.is_requested() {
                            info!("shutting down on request");
                            self.shutdown();
                            return Ok(());
                        }
                    }
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
                                // A SUBSCRIBE's ACK must not leave before the
                                // hub reads the channel rings it now serves:
                                // a ring publish right after it would be
                                // behind the hub's cursor, never relayed.
                                if self.hub.take_subscriptions_changed() {
                                    self.tend_rings();
                                }
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
            // The disk records this turn stored, written before the queues
            // their ACKs (queued now) and DATA are in go out (hub/disk.rs).
            self.hub.flush_store();
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
        let Some(signals) = self.signals.as_mut() else {
            return false;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for sig in pending {
            match sig {
                SIGHUP => {
                    self.reload();
                }
                // Planned restart: re-execute with the state handed over
                // (returns only if that failed; the hub then carries on).
                SIGUSR2 => self.handover(),
                // A stop under systemd with an fd store keeps every
                // connection there for the next start (event_loop/fdstore_stop.rs).
                SIGTERM if super::fdstore::capacity().is_some() => {
                    self.stop_into_fdstore();
                    stop = true;
                }
                _ => {
                    info!(signal = sig, "shutting down on signal");
                    stop = true;
                }
            }
        }
        stop
    }

    /// Start reading the configuration again (SIGHUP, D-Bus `Reload`). The
    /// file is read and its `[access]` user and group names resolved on a
    /// thread of its own: NSS (and LDAP behind it) can take seconds, and
    /// this thread carries every message. The outcome is applied by
    /// [`finish_reload`](Self::finish_reload) when the thread wakes us.
    fn reload(&mut self) {
        if self.reloading.is_some() {
            // Read again once this one is applied: the file may have
            // changed after the thread read it.
            self.reload_again = true;
            return;
        }
        systemd::reloading();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = self.opts.config_path.clone();
        let fifo = self.opts.config.fifo.clone();
        let waker = self.waker.clone();
        let spawned = std::thread::Builder::new()
            .name("ipchub-reload".into())
            .spawn(move || {
                let _ = tx.send(load_for_reload(path, &fifo));
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => self.reloading = Some(rx),
            Err(e) => self.apply_reload(Err(format!("cannot start the reload thread: {e}"))),
        }
    }

    /// Apply a reload whose reading finished, if one did.
    pub(super) fn finish_reload(&mut self) {
        let Some(rx) = &self.reloading else { return };
        let outcome = match rx.try_recv() {
            Ok(o) => o,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Err("the reload thread ended without an answer".to_string())
            }
        };
        self.reloading = None;
        self.apply_reload(outcome);
        if std::mem::take(&mut self.reload_again) {
            self.reload();
        }
    }

    fn apply_reload(&mut self, loaded: Result<Loaded, String>) {
        let res = match loaded {
            Ok(Loaded {
                config: cfg,
                policy,
            }) => {
                // The bridges' supervisor restarts those whose settings changed.
                crate::bridge::reload(&cfg);
                let changes = crate::hub::config_changes(self.hub.config(), &cfg);
                self.hub.reload_with(cfg, policy);
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
                Err(e)
            }
        };
        systemd::reloaded(&self.status_line());
        let answer = match res {
            Ok(()) => crate::hub::ControlReply::Done,
            Err(e) => crate::hub::ControlReply::Failed(e),
        };
        for w in self.reload_waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
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
}

/// A configuration read for a reload, its access policy resolved.
pub(super) struct Loaded {
    config: Config,
    policy: crate::hub::access::Policy,
}

/// Read the configuration for a reload (on the reload thread): the same
/// checks as at start, plus that the publish FIFOs opened at start do not
/// bypass the new `[access]` rules, and the rules' names resolved.
fn load_for_reload(
    path: Option<std::path::PathBuf>,
    fifo: &crate::config::FifoConfig,
) -> Result<Loaded, String> {
    let cfg = Config::load(path.as_deref()).map_err(|e| e.to_string())?;
    if let Err((key, message)) = crate::config::check_publish_fifo_access(fifo, &cfg.access) {
        return Err(crate::config::ConfigError::Value {
            path: path.unwrap_or_default(),
            key: format!("{key} (running since start)"),
            message,
        }
        .to_string());
    }
    let policy = crate::hub::access::Policy::from_config(&cfg.access)
        .map_err(|e| format!("[access]: {e}"))?;
    Ok(Loaded {
        config: cfg,
        policy,
    })
}

mod accept;
mod closing;
mod fdstore_stop;
mod input;
mod internal;
mod output;
mod reason;
mod rings;

use output::flush_ctrl;

pub use reason::CloseReason;
