//! Client library for the ipchub local publish/subscribe hub (`ipchubd`):
//! connect over a transport of your choice, publish, subscribe (with
//! MQTT-style wildcards), receive. The same calls work on every transport,
//! and a message published over one reaches the subscribers on all of
//! them; where a transport behaves differently, [Transports](#transports)
//! and the documentation of each call say so.
//!
//! ```no_run
//! use std::time::Duration;
//! use ipchub_client::{Client, Options};
//!
//! # fn main() -> Result<(), ipchub_client::ClientError> {
//! // Options::default(): the socket transport, the hub's default socket.
//! let mut sub = Client::connect(&Options::default())?;
//! sub.subscribe("weather/#")?;
//!
//! let mut publisher = Client::connect(&Options::default())?;
//! let delivered = publisher.publish_confirmed("weather/today", b"sunny")?;
//! println!("delivered to {delivered} subscriber(s)");
//!
//! if let Some(m) = sub.recv(Some(Duration::from_secs(5)))? {
//!     println!("[{}] {}", m.channel, String::from_utf8_lossy(&m.payload));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Small complete programs are in the crate's `examples/` directory:
//! `publish`, `subscribe` (a wildcard), `shm_ring` (a shared-memory channel
//! ring) and `mqueue_priorities` (POSIX message queue priorities).
//!
//! # Connecting
//!
//! Every client starts at the hub's control socket, [`Options::socket`].
//! Left `None` it is found as the hub finds it: the `IPCHUB_SOCKET`
//! environment variable, else `$XDG_RUNTIME_DIR/ipchub/ipchub.sock` (root:
//! `/run/ipchub/ipchub.sock`), and if that does not exist, the system hub's
//! `/run/ipchub/ipchub.sock`. After the handshake the client's frames travel
//! over its transport's *data path*; for every transport but `socket` the
//! control socket stays open beside it, and the hub removes the client's
//! FIFOs, queues and rings the moment it closes.
//!
//! # Transports
//!
//! | [`TransportKind`] | data path | differences |
//! |---|---|---|
//! | `Socket` (default) | the control connection itself | none: the reference behaviour |
//! | `Pipe` | two pipes the hub hands over with WELCOME | none beyond the data path |
//! | `Fifo` | two FIFOs the hub makes in `fifo/` beside its socket, owned by your uid, mode 0600 | none beyond the data path |
//! | `Mqueue` | two POSIX message queues this library creates (unnamed, charged to your uid's `RLIMIT_MSGQUEUE`) and hands over | one frame per queue message: a message larger than the queue's message size fails with [`ClientError::TooLargeForTransport`]; **priorities are honoured**: each queue hands out its highest [`PublishOptions::priority`] first, so a message can overtake earlier ones of lower priority (on both the way to the hub and the way back) |
//! | `Shm` | a ring per direction in shared memory (sealed memfds) and an eventfd per side | **channel rings**: an exact subscription reads the channel's broadcast ring, and a publish on an exact channel writes it, with no hub in between (see below) |
//!
//! On every transport but `Mqueue` the priority is carried end to end
//! ([`Message::priority`]) but changes nothing: messages from one publisher
//! arrive in the order they were published.
//!
//! Channel rings (`Shm` only, when the hub offers them: `[shm]
//! channel_rings`, on by default): a publish into a ring is written at once
//! (unbuffered, no [`flush`](Client::flush) needed), its confirmation is
//! counted by the client itself (the ring's readers plus the hub's other
//! subscribers) and arrives at once, and a subscriber reading a ring sees
//! messages within nanoseconds with [`Client::set_busy_poll`]. A channel
//! with a retained value, a history, `overflow = "disconnect"`, or past a
//! ring quota is relayed by the hub as on the other transports, and so is
//! every wildcard subscription; [`Client::set_channel_rings`] turns rings
//! off for one client.
//!
//! # Buffering and confirmations
//!
//! Publishing is buffered on every transport: frames collect in an
//! outgoing queue and leave in one write when it passes
//! [`AUTO_FLUSH_BYTES`], when the oldest has waited [`FLUSH_DELAY`]
//! (checked as the client publishes), on [`Client::flush`], whenever the
//! client waits for anything, and (as far as the transport takes it
//! without waiting) when the client is dropped. On shm, a channel with a
//! ring is written at once, unbuffered. Confirmations are pipelined: a
//! publish with `ack` returns at once with its sequence number, and the
//! ACK (with the delivery count) arrives later as [`Event::Ack`]. While it
//! writes, the client also reads, so neither side can deadlock on full
//! buffers.
//!
//! # Receiving
//!
//! [`Client::recv`] waits for the next message; [`Client::next_event`] for
//! the next event of any kind (messages, ACKs, MISSED notices, errors, the
//! hub going and coming back). To wait in your own `poll(2)`/`epoll` loop,
//! poll the descriptor of [`AsRawFd`] for reading and, when it is
//! readable, call `next_event(Some(Duration::ZERO))` until it returns
//! `None`: that also arms the wake-up for the next message, which `shm`
//! needs (its descriptor is an eventfd the hub and the channel rings'
//! writers only write when the client said it sleeps). On `mqueue` and
//! `shm` the hub going away does not make that descriptor readable: poll
//! with a timeout. [`Client::recv_ref`], [`Client::recv_batch`] and
//! [`Client::recycle`] receive without allocating per message.
//!
//! # When the hub goes away
//!
//! When the hub goes away (restart, upgrade, crash) the client reconnects
//! by itself unless told not to ([`Options::reconnect`], see
//! [`Reconnect`]): it reports [`Event::HubLost`] and [`Event::HubBack`],
//! restores its subscriptions, and holds publishes made meanwhile in a
//! bounded buffer.
//!
//! # Errors
//!
//! Failed calls return a [`ClientError`]: not reaching the hub at all
//! ([`ClientError::NotRunning`], which this runs without a hub):
//!
//! ```
//! use ipchub_client::{Client, ClientError, Options};
//!
//! let opts = Options {
//!     socket: Some("/nonexistent/ipchub.sock".into()),
//!     ..Options::default()
//! };
//! match Client::connect(&opts) {
//!     Err(ClientError::NotRunning { path, .. }) => {
//!         assert_eq!(path, std::path::Path::new("/nonexistent/ipchub.sock"))
//!     }
//!     other => panic!("expected NotRunning, got {:?}", other.err()),
//! }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod link;
mod reconnect;
mod rings;

use ipchub_os::{paths, queue, shm, sys, transport};
use ipchub_wire as wire;

pub use reconnect::Reconnect;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::queue::OutQueue;
use crate::transport::Link;
use crate::wire::frame::{parse_error_payload, parse_kv};
pub use crate::wire::stats::{ChannelStats, ClientStats, HubStats, Totals};
pub use crate::wire::{ChannelError, ErrorCode, TransportKind};
use crate::wire::{FrameType, Pattern, ACK_REQUESTED};

/// Buffered publishes are written once this many bytes are waiting.
pub const AUTO_FLUSH_BYTES: usize = 64 * 1024;
/// ... or once the oldest has waited this long (see [`Client::set_flush_delay`]).
pub const FLUSH_DELAY: Duration = Duration::from_millis(1);
/// Publishes between two looks at the clock for [`FLUSH_DELAY`] once 64
/// or more are queued.
const DELAY_CHECK_EVERY: u32 = 16;
/// How long connecting and the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the control socket (no such file, or connection
    /// refused): the hub is not running there.
    #[error("hub not running: cannot connect to {path}: {source}")]
    NotRunning {
        /// The control socket tried.
        path: PathBuf,
        /// What `connect(2)` said.
        source: io::Error,
    },
    /// The control socket (or its directory) is not open to this user.
    #[error("permission denied connecting to {path}")]
    PermissionDenied {
        /// The control socket tried.
        path: PathBuf,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The control socket tried.
        path: PathBuf,
        /// What `connect(2)` said.
        source: io::Error,
    },
    /// The hub answered a request with an ERROR (access denied, a limit
    /// reached, not subscribed…); [`ClientError::code`] names it.
    #[error("hub refused: {text}")]
    Refused {
        /// The protocol's error code (see [`ErrorCode`]).
        code: u16,
        /// The hub's explanation, for people.
        text: String,
    },
    /// The channel name or pattern is not valid (checked before sending).
    #[error("invalid channel: {0}")]
    BadChannel(#[from] ChannelError),
    /// The payload is larger than the hub accepts (`hub.max_message_size`,
    /// see [`Client::max_message`]).
    #[error(
        "message of {len} bytes exceeds the hub's limit of {max} bytes (hub.max_message_size)"
    )]
    TooLarge {
        /// The payload's size.
        len: usize,
        /// The hub's limit.
        max: u32,
    },
    /// The message does not fit one message of this transport: a POSIX
    /// message queue's message size (`mqueue`), or a channel ring's record
    /// (`shm`). Stream transports have no such limit.
    #[error("message of {len} bytes does not fit this {transport} (at most {max} bytes of payload on channel '{channel}'; raise fs.mqueue.msgsize_max, or use another transport)")]
    TooLargeForTransport {
        /// The payload's size.
        len: usize,
        /// The largest payload that fits on this channel.
        max: usize,
        /// The transport, for people.
        transport: &'static str,
        /// The channel published on.
        channel: String,
    },
    /// A priority above 31 (the range of POSIX message queues).
    #[error("priority {0} above the maximum 31")]
    BadPriority(u8),
    /// The hub sent something this library does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed (the hub disconnected this client, or went
    /// away with reconnection off); every later call fails too.
    #[error("hub closed the connection: {0}")]
    Closed(String),
    /// A bounded wait for the hub ran out (the handshake, statistics).
    #[error("timed out waiting for the hub")]
    Timeout,
    /// Between hubs, a publish did not fit the reconnect buffer
    /// ([`Reconnect::buffer_messages`], [`Reconnect::buffer_bytes`]).
    #[error("no hub connected and the reconnect buffer is full ({messages} messages, {bytes} bytes held; at most {max_messages} messages and {max_bytes} bytes: Options.reconnect.buffer_messages/buffer_bytes)")]
    BufferFull {
        /// Publishes held.
        messages: usize,
        /// Their bytes (whole frames).
        bytes: usize,
        /// The limit on publishes held.
        max_messages: usize,
        /// The limit on their bytes.
        max_bytes: usize,
    },
    /// The hub went away after taking a request and before answering it.
    #[error("the hub went away before confirming request {seq}: it may or may not have taken effect ({reason})")]
    Lost {
        /// The request's sequence number.
        seq: u64,
        /// How the connection was lost.
        reason: String,
    },
    /// No hub came back within [`Reconnect::give_up_after`]; the client is
    /// closed from then on.
    #[error("gave up reconnecting after {after:?} without a hub: {reason}")]
    GaveUp {
        /// The limit that ran out.
        after: Duration,
        /// Why the hub was lost, and the last attempt's failure.
        reason: String,
    },
    /// A system call on the data path failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ClientError {
    /// The hub's error code when the hub refused something.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }
}

/// How to connect.
///
/// ```
/// use ipchub_client::{Options, Reconnect, TransportKind};
///
/// let opts = Options {
///     socket: Some("/run/ipchub/ipchub.sock".into()),
///     transport: TransportKind::Mqueue,
///     name: "thermostat".into(),
///     reconnect: Reconnect::off(),
/// };
/// assert_eq!(opts.transport.name(), "mqueue");
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// The hub's control socket. `None`: `IPCHUB_SOCKET`, else the
    /// default runtime directory's socket, resolved as the hub resolves it
    /// (see [Connecting](crate#connecting)).
    pub socket: Option<PathBuf>,
    /// The data path (default [`TransportKind::Socket`]); see
    /// [Transports](crate#transports) for how they differ.
    pub transport: TransportKind,
    /// Shown in the hub's statistics and logs (`ipchubctl stats`).
    pub name: String,
    /// What to do when the hub goes away: reconnect (the default) or
    /// fail fast ([`Reconnect::off`]).
    pub reconnect: Reconnect,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: None,
            transport: TransportKind::Socket,
            name: String::new(),
            reconnect: Reconnect::default(),
        }
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel it was published on (never a pattern).
    pub channel: String,
    /// The bytes published, unchanged.
    pub payload: Vec<u8>,
    /// The publisher's sequence number for this message.
    pub seq: u64,
    /// The publishing client's id.
    pub origin: u32,
    /// The publish's priority, 0..=31, on every transport; only a
    /// message queue (`mqueue`) orders by it.
    pub priority: u8,
    /// A retained value sent on subscribing, not a live message.
    pub retained: bool,
    /// The channel's sequence number for this message, on channels with
    /// history: resume after it with [`Replay::FromSeq`] (this + 1).
    /// `None` for messages read from a channel ring (`shm`: such channels
    /// have no history).
    pub channel_seq: Option<u64>,
}

/// Everything the hub can send a client after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message on a channel this client subscribed to.
    Message(Message),
    /// Request `seq` succeeded; for a publish, `delivered` is the subscriber count.
    Ack {
        /// The request's sequence number (as returned by the publish).
        seq: u64,
        /// For a publish, how many subscribers it was delivered to (on a
        /// channel ring: the ring's readers plus the hub's subscribers).
        delivered: u32,
    },
    /// This many messages were lost to `drop-oldest` before the next one.
    Missed(u64),
    /// Request `seq` (0: none in particular) failed.
    Error {
        /// The failed request's sequence number, or 0.
        seq: u64,
        /// The protocol's error code (see [`ErrorCode`]).
        code: u16,
        /// The hub's explanation, for people.
        text: String,
    },
    /// The hub's statistics (the answer [`Client::stats`] waits for).
    Stats(Box<HubStats>),
    /// The hub's answer to a PING with this sequence number. This library
    /// sends no PING of its own, so a client only sees one if something
    /// else wrote a PING on its connection.
    Pong(u64),
    /// The connection to the hub was lost (restart, upgrade, crash); the
    /// client is reconnecting (only with [`Options::reconnect`] enabled).
    HubLost {
        /// How it was lost, for people.
        reason: String,
    },
    /// Connected to a hub again, every subscription asked for anew.
    /// Messages published by others while no hub ran are missing (nobody
    /// routed them); `unconfirmed` of this client's publishes went to the
    /// lost hub without a confirmation and may be missing too; `resent`
    /// held ones were sent to the new hub.
    HubBack {
        /// How long no hub was connected.
        outage: Duration,
        /// Publishes held meanwhile and sent to the new hub.
        resent: u64,
        /// Publishes the lost hub took without confirming them.
        unconfirmed: u64,
    },
}

/// Per-publish settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions {
    /// Ask for an ACK with the delivery count.
    pub ack: bool,
    /// POSIX mqueue priority, 0..=31, carried end to end on every
    /// transport ([`Message::priority`]). Only the `mqueue` transport acts
    /// on it: its queues hand out higher priorities first, on the way to
    /// the hub and (for `mqueue` subscribers) on the way back.
    pub priority: u8,
}

/// Per-subscription settings.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeOptions {
    /// Receive the retained values of the matching channels first (each
    /// marked [`Message::retained`]). On by default.
    pub retained: bool,
    /// Replay the stored history of the matching channels that have one
    /// (`[[channel]]` history keys) before live messages; on those channels
    /// it replaces the retained value.
    pub replay: Option<Replay>,
    /// Mark live messages that were published retained as
    /// [`Message::retained`] too (MQTT 5's "retain as published"), not only
    /// the stored value sent on subscribing. Off by default. Applies to
    /// every subscription of this connection from now on; a bridge that
    /// passes retained values on needs it.
    pub retain_as_published: bool,
}

pub use crate::wire::Replay;

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            retained: true,
            replay: None,
            retain_as_published: false,
        }
    }
}

/// A connection to the hub: publish, subscribe, receive.
///
/// Made by [`Client::connect`]; dropping it hands the transport what is
/// still buffered (as far as it takes it without waiting) and closes the
/// connection, which ends its subscriptions and removes its FIFOs, queues
/// and rings. A `Client` is used from one thread at a time (it is `Send`).
pub struct Client {
    /// Control socket, kept for liveness when data flows elsewhere.
    ctrl: Option<OwnedFd>,
    link: Box<dyn Link>,
    out: OutQueue,
    inbuf: Vec<u8>,
    events: VecDeque<Event>,
    next_seq: u64,
    id: u32,
    max_message: u32,
    transport: TransportKind,
    closed: Option<String>,
    /// Channel rings in use (shm transport).
    rings: rings::Rings,
    /// Spin this long watching the channel rings before sleeping.
    busy_poll: Option<Duration>,
    /// Bounded delay of buffered publishes: the limit, when the oldest
    /// unwritten one was queued, and publishes since the clock was read.
    flush_delay: Duration,
    unflushed_since: Option<Instant>,
    since_clock: u32,
    /// How we connected, to do it again.
    opts: Options,
    /// Patterns subscribed to, in order: restored on a new connection.
    subs: Vec<String>,
    /// Between hubs (reconnecting).
    down: Option<reconnect::Down>,
    ledger: reconnect::Ledger,
    /// Received messages' buffers, reused (see [`Client::recycle`]).
    recv_buffers: RecvBuffers,
}

/// Messages handed back with [`Client::recycle`], whose `String` and `Vec`
/// the next received messages reuse (a receiver's malloc/free per message
/// was about a tenth of its CPU, issue #15), and the one
/// [`Client::recv_ref`] lent out.
#[derive(Default)]
struct RecvBuffers {
    spare: Vec<Message>,
    lent: Option<Message>,
}

/// Most messages kept for reuse (a batch read from a ring holds hundreds),
/// and the largest payload buffer kept: allocation matters next to the copy
/// only for small messages, and this bounds what is held to about 4 MiB.
const MAX_SPARE: usize = 1024;
const MAX_SPARE_PAYLOAD: usize = 4096;

/// A message for a decoded DATA frame (`payload`: its payload past any
/// channel sequence prefix), in a spare's buffers when there is one.
fn message_from(
    spare: &mut Vec<Message>,
    f: &wire::Frame<'_>,
    payload: &[u8],
    retained: bool,
    channel_seq: Option<u64>,
) -> Message {
    let h = &f.header;
    match spare.pop() {
        Some(mut m) => {
            m.channel.clear();
            m.channel.push_str(f.channel);
            m.payload.clear();
            m.payload.extend_from_slice(payload);
            m.seq = h.seq;
            m.origin = h.origin;
            m.priority = h.priority;
            m.retained = retained;
            m.channel_seq = channel_seq;
            m
        }
        None => Message {
            channel: f.channel.to_string(),
            payload: payload.to_vec(),
            seq: h.seq,
            origin: h.origin,
            priority: h.priority,
            retained,
            channel_seq,
        },
    }
}

/// One connection's parts.
mod conn {
    use super::*;

    pub(super) struct Conn {
        pub(super) ctrl: Option<OwnedFd>,
        pub(super) link: Box<dyn Link>,
        pub(super) id: u32,
        pub(super) max_message: u32,
        pub(super) rings_offered: bool,
    }

    /// Connect and perform the handshake for `opts.transport`.
    pub(super) fn open(opts: &Options) -> Result<Conn, ClientError> {
        let path = crate::paths::client_socket_path(opts.socket.as_deref());
        let sock = UnixStream::connect(&path).map_err(|e| connect_error(&path, e))?;
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut hello = Vec::new();
        let text = format!(
            "version={}\ntransport={}\nname={}\n",
            wire::VERSION,
            opts.transport.name(),
            opts.name
        );
        wire::encode(
            &mut hello,
            FrameType::Hello,
            0,
            0,
            "",
            text.as_bytes(),
            0,
            0,
        );
        // mqueue: the client makes its own queues (charged to its own uid)
        // and hands them over with HELLO; see transport::mqueue.
        let queues = match opts.transport {
            TransportKind::Mqueue => Some(
                crate::transport::mqueue::create_pair(crate::transport::mqueue::DEFAULT_MAX_FRAME)
                    .map_err(|e| ClientError::Protocol(format!("mqueue data path: {e}")))?,
            ),
            _ => None,
        };
        match &queues {
            Some(q) => link::send_with_fds(&sock, &hello, &q.handover_fds())?,
            None => io::Write::write_all(&mut &sock, &hello)?,
        }
        let (welcome, fds) = link::recv_welcome(&sock)?;
        let kv = parse_kv(&welcome);
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let id = get("client")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Protocol("WELCOME without client id".into()))?;
        let max_message = get("max_message")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 20);
        // A hub that offers channel rings says so; an older one would take
        // OPEN_RING for a protocol error.
        let rings_offered = get("channel_rings") == Some("1");
        sock.set_nonblocking(true)?;
        let sock = OwnedFd::from(sock);
        let (ctrl, link) = link::client_link(opts.transport, sock, &kv, fds, queues)?;
        Ok(Conn {
            ctrl,
            link,
            id,
            max_message,
            rings_offered,
        })
    }
}

impl Client {
    /// Connect to the hub at [`Options::socket`] and set up the data path
    /// of `opts.transport` (waiting up to 10 s for the hub's answer).
    ///
    /// Per transport: `socket` uses the connection itself; `pipe` receives
    /// two pipes from the hub; `fifo` opens the two FIFOs the hub made for
    /// this user; `mqueue` first creates two message queues (as large as
    /// `fs.mqueue.msg_max`/`msgsize_max` and `RLIMIT_MSGQUEUE` allow, else
    /// 10 × 8192 bytes) and hands them to the hub; `shm` maps the two rings
    /// the hub hands over. Channel rings are opened later, per channel.
    ///
    /// ```no_run
    /// use ipchub_client::{Client, Options, TransportKind};
    ///
    /// # fn main() -> Result<(), ipchub_client::ClientError> {
    /// let client = Client::connect(&Options {
    ///     socket: Some("/run/ipchub/ipchub.sock".into()),
    ///     transport: TransportKind::Shm,
    ///     name: "camera".into(),
    ///     ..Options::default()
    /// })?;
    /// println!("connected as client {} via {}", client.id(), client.transport().describe());
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect(opts: &Options) -> Result<Client, ClientError> {
        let conn::Conn {
            ctrl,
            link,
            id,
            max_message,
            rings_offered,
        } = conn::open(opts)?;
        Ok(Client {
            ctrl,
            link,
            out: OutQueue::new(usize::MAX, usize::MAX),
            inbuf: Vec::new(),
            events: VecDeque::new(),
            next_seq: 1,
            id,
            max_message,
            transport: opts.transport,
            closed: None,
            rings: rings::Rings::new(rings_offered),
            busy_poll: None,
            flush_delay: FLUSH_DELAY,
            unflushed_since: None,
            since_clock: 0,
            opts: opts.clone(),
            subs: Vec::new(),
            down: None,
            ledger: reconnect::Ledger::default(),
            recv_buffers: RecvBuffers::default(),
        })
    }

    /// Between hubs, and not inside the restore of a new connection.
    fn between_hubs(&self) -> bool {
        self.down.is_some() && !self.ledger.restoring
    }

    /// While between hubs: try once more if an attempt is due, never wait.
    fn try_reconnect_now(&mut self) -> Result<(), ClientError> {
        if !self.between_hubs() {
            return Ok(());
        }
        match self.reconnect(Some(Instant::now())) {
            Ok(()) | Err(ClientError::Timeout) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Take the connection apart: the control socket (None for the socket
    /// transport, where it is the link) and the data link, to speak the
    /// protocol byte by byte (conformance and hostile-input tests, other
    /// language bindings' test suites). Not part of the supported API:
    /// only with the `test-hooks` feature, which the workspace's
    /// hostile-input tests and `ipchub-bench`'s attacks turn on.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn into_raw(mut self) -> (Option<OwnedFd>, Box<dyn Link>) {
        // What is still buffered goes with the link (its new owner decides).
        self.out = OutQueue::new(0, 0);
        let link = std::mem::replace(&mut self.link, Box::new(Detached { max_frame: None }));
        (self.ctrl.take(), link)
    }

    /// Longest a buffered publish waits for more to share its write
    /// (default [`FLUSH_DELAY`]); `Duration::ZERO` writes every publish at
    /// once. The clock is read every few publishes, so a publisher that
    /// stops publishing should call [`flush`](Self::flush) (or wait for
    /// anything, which flushes).
    pub fn set_flush_delay(&mut self, delay: Duration) {
        self.flush_delay = delay;
    }

    /// A publish was just queued: has the oldest queued one waited long enough?
    ///
    /// The clock is read about once per batch, not per publish (it was a
    /// tenth of a fast publisher's CPU): each reading gives the pace of this
    /// batch so far, and the next one comes after as many publishes as fit,
    /// at that pace, in half of the time left (at most DELAY_CHECK_EVERY).
    /// A slow publisher so still reads it every publish and its bound stays
    /// exact; a fast one reads it a few times per AUTO_FLUSH_BYTES batch.
    /// `since_clock` counts down the publishes before the next reading.
    fn delay_spent(&mut self) -> bool {
        let Some(since) = self.unflushed_since else {
            self.unflushed_since = Some(Instant::now());
            self.since_clock = 0;
            return self.flush_delay.is_zero();
        };
        if self.flush_delay.is_zero() {
            return true;
        }
        if self.since_clock > 0 {
            self.since_clock -= 1;
            return false;
        }
        let elapsed = since.elapsed();
        if elapsed >= self.flush_delay {
            return true;
        }
        let per_publish = elapsed.as_nanos() / self.out.frames().max(1) as u128;
        let left = (self.flush_delay - elapsed).as_nanos() / 2;
        self.since_clock = (left / per_publish.max(1)).min(u128::from(DELAY_CHECK_EVERY)) as u32;
        false
    }

    /// Busy-poll: before going to sleep for a message, spin up to `spin`
    /// watching the channel rings this client reads (shm). It trades a CPU
    /// for latency: a message is seen within nanoseconds of being written,
    /// with no wake-up at all. `None` (the default) sleeps at once. On the
    /// other transports, and for messages the hub relays, it changes
    /// nothing.
    pub fn set_busy_poll(&mut self, spin: Option<Duration>) {
        self.busy_poll = spin;
    }

    /// This client's id at the hub (the `origin` of its messages).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The transport this client was connected with.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// The hub's limit on payload size.
    pub fn max_message(&self) -> u32 {
        self.max_message
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn queue_frame(
        &mut self,
        ty: FrameType,
        flags: u8,
        priority: u8,
        channel: &str,
        payload: &[u8],
        seq: u64,
    ) {
        let header = wire::encode_header(ty, flags, priority, channel.len(), payload.len(), 0, seq);
        self.out.push(
            queue::Kind::Control,
            &[&header, channel.as_bytes(), payload],
        );
    }

    /// Queue a message; returns its sequence number. With `opts.ack` an
    /// [`Event::Ack`] carrying the same number follows.
    ///
    /// `opts.priority` is carried on every transport but only orders
    /// messages on `mqueue` (see [`PublishOptions::priority`]). On `shm` a
    /// publish on an exact channel with a ring goes into the ring at once
    /// and its ACK is queued at once; otherwise the message is buffered
    /// (see [Buffering](crate#buffering-and-confirmations)). Fails without
    /// sending anything for a bad channel name, a priority above 31, a
    /// payload above [`max_message`](Self::max_message), or one that does
    /// not fit this transport's messages (`mqueue`, `shm` channel rings:
    /// [`ClientError::TooLargeForTransport`]).
    ///
    /// ```no_run
    /// use ipchub_client::{Client, Event, Options, PublishOptions, TransportKind};
    ///
    /// # fn main() -> Result<(), ipchub_client::ClientError> {
    /// let mut c = Client::connect(&Options {
    ///     transport: TransportKind::Mqueue,
    ///     ..Options::default()
    /// })?;
    /// let urgent = PublishOptions { ack: true, priority: 31 };
    /// let seq = c.publish_with("alarms/fire", b"kitchen", urgent)?;
    /// while let Some(ev) = c.next_event(None)? {
    ///     if let Event::Ack { seq: s, delivered } = ev {
    ///         if s == seq {
    ///             println!("delivered to {delivered}");
    ///             break;
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_with(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: PublishOptions,
    ) -> Result<u64, ClientError> {
        self.publish_flagged(channel, payload, opts, false)
    }

    /// Publish and keep the message as the channel's retained value, which
    /// every later subscriber receives first (unless it opts out); an empty
    /// payload clears it, as in MQTT. Always goes through the hub, never
    /// into a channel ring. Past `hub.max_retained_bytes_per_uid` or
    /// `hub.max_retained_bytes` the hub refuses it (LIMIT_REACHED, as an
    /// [`Event::Error`] with this publish's seq) and delivers nothing.
    pub fn publish_retained(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: PublishOptions,
    ) -> Result<u64, ClientError> {
        self.publish_flagged(channel, payload, opts, true)
    }

    fn publish_flagged(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: PublishOptions,
        retain: bool,
    ) -> Result<u64, ClientError> {
        // At millions of messages a second the validating scan shows: it
        // runs once per change of channel (see `check_publish_channel`).
        self.rings.check_publish_channel(channel)?;
        if payload.len() > self.max_message as usize {
            return Err(ClientError::TooLarge {
                len: payload.len(),
                max: self.max_message,
            });
        }
        if opts.priority > wire::frame::MAX_PRIORITY {
            return Err(ClientError::BadPriority(opts.priority));
        }
        if let Some(max) = self.link.max_frame() {
            let overhead = wire::HEADER_LEN + channel.len();
            if overhead + payload.len() > max {
                return Err(ClientError::TooLargeForTransport {
                    len: payload.len(),
                    max: max.saturating_sub(overhead),
                    transport: self.transport.describe(),
                    channel: channel.to_string(),
                });
            }
        }
        self.try_reconnect_now()?;
        if self.between_hubs() {
            return self.hold_publish(channel, payload, opts, None);
        }
        self.check_open()?;
        let seq = self.next_seq();
        // A channel with a retained value has no ring: a retained publish
        // always goes through the hub.
        let ring = if retain {
            Ok(false)
        } else {
            self.ring_publish(channel, payload, opts, seq)
        };
        match ring {
            Ok(true) => return Ok(seq),
            Ok(false) => {}
            Err(e) => match self.loss(&e) {
                // Not written: held for the next hub like any publish now.
                Some(reason) => {
                    self.go_down(reason);
                    return self.hold_publish(channel, payload, opts, Some(seq));
                }
                None => return Err(e),
            },
        }
        let mut flags = if opts.ack { ACK_REQUESTED } else { 0 };
        if retain {
            flags |= wire::RETAIN;
        }
        self.queue_frame(
            FrameType::Publish,
            flags,
            opts.priority,
            channel,
            payload,
            seq,
        );
        self.ledger.note_publish(seq, opts.ack);
        if self.out.total_bytes() >= AUTO_FLUSH_BYTES || self.delay_spent() {
            if let Err(e) = self.flush_inner() {
                match self.loss(&e) {
                    // Unwritten publishes, this one included, are held.
                    Some(reason) => self.go_down(reason),
                    None => return Err(e),
                }
            }
        }
        Ok(seq)
    }

    /// Fire-and-forget publish (priority 0, no ACK): returns its sequence
    /// number once queued. The message leaves with the next write (see
    /// [Buffering](crate#buffering-and-confirmations); on `shm` a channel
    /// with a ring is written at once): call [`flush`](Self::flush) before
    /// a publisher exits to be sure it left.
    ///
    /// ```no_run
    /// use ipchub_client::{Client, Options};
    ///
    /// # fn main() -> Result<(), ipchub_client::ClientError> {
    /// let mut c = Client::connect(&Options::default())?;
    /// for i in 0..1000u32 {
    ///     c.publish("counter/ticks", &i.to_le_bytes())?;
    /// }
    /// c.flush()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<u64, ClientError> {
        self.publish_with(channel, payload, PublishOptions::default())
    }

    /// Publish and wait for the delivery count (one round trip to the hub;
    /// none on a `shm` channel ring, where the client counts the ring's
    /// readers itself). Flushes everything queued before it.
    pub fn publish_confirmed(&mut self, channel: &str, payload: &[u8]) -> Result<u32, ClientError> {
        let seq = self.publish_with(
            channel,
            payload,
            PublishOptions {
                ack: true,
                priority: 0,
            },
        )?;
        self.wait_ack(seq, false).map(|d| d.unwrap_or(0))
    }

    /// Subscribe to a pattern (wildcards allowed) and wait for the hub's answer.
    /// Between hubs, it first waits for one. The retained values of the
    /// matching channels come first (see [`subscribe_with`](Self::subscribe_with)
    /// to skip them).
    ///
    /// Patterns are MQTT topic filters: `+` matches one level, `#` (last)
    /// the rest. On `shm`, an exact channel that has a ring is read from
    /// the ring instead of through the hub; wildcards always go through
    /// the hub, on every transport.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use ipchub_client::{Client, Options};
    ///
    /// # fn main() -> Result<(), ipchub_client::ClientError> {
    /// let mut c = Client::connect(&Options::default())?;
    /// c.subscribe("sensors/+/temperature")?;
    /// while let Some(m) = c.recv(Some(Duration::from_secs(60)))? {
    ///     println!("{}: {}", m.channel, String::from_utf8_lossy(&m.payload));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&mut self, pattern: &str) -> Result<(), ClientError> {
        self.subscribe_with(pattern, SubscribeOptions::default())
    }

    /// Subscribe with options. The hub sends the retained values (if asked)
    /// right behind its ACK, before any live message: no gap, no duplicate.
    /// After a reconnect the pattern is asked for anew, without retained
    /// values or replay.
    pub fn subscribe_with(
        &mut self,
        pattern: &str,
        opts: SubscribeOptions,
    ) -> Result<(), ClientError> {
        let exact = Pattern::parse(pattern)?.is_exact();
        loop {
            if self.between_hubs() {
                self.reconnect(None)?;
            }
            let epoch = self.ledger.epoch;
            let res = self.subscribe_once(pattern, exact, &opts);
            if self.ledger.epoch != epoch {
                // Lost meanwhile: the restore asks the next hub (if this
                // went through first; otherwise ask again).
                if self.subs.iter().any(|p| p == pattern) {
                    return Ok(());
                }
                continue;
            }
            match res {
                Err(e) => match self.loss(&e) {
                    Some(reason) => self.go_down(reason),
                    None => return Err(e),
                },
                Ok(()) => {
                    if !self.subs.iter().any(|p| p == pattern) {
                        self.subs.push(pattern.to_string());
                    }
                    return Ok(());
                }
            }
        }
    }

    fn subscribe_once(
        &mut self,
        pattern: &str,
        exact: bool,
        opts: &SubscribeOptions,
    ) -> Result<(), ClientError> {
        // A channel with retained values has no ring (the hub refuses it),
        // so reading through a ring never skips a retained value.
        if exact && self.ring_subscribe(pattern)? {
            return Ok(());
        }
        let seq = self.next_seq();
        // Always ask for channel sequence numbers: this library reads them.
        let mut flags = wire::CHANNEL_SEQ;
        if opts.retained {
            flags |= wire::WITH_RETAINED;
        }
        if opts.replay.is_some() {
            flags |= wire::REPLAY;
        }
        if opts.retain_as_published {
            flags |= wire::RETAIN_AS_PUBLISHED;
        }
        let payload = opts.replay.map(Replay::encode).unwrap_or_default();
        self.queue_frame(
            FrameType::Subscribe,
            flags,
            0,
            pattern,
            payload.as_bytes(),
            seq,
        );
        self.wait_ack(seq, true).map(|_| ())
    }

    /// Stop receiving what `pattern` (exactly as subscribed) matches, and
    /// wait for the hub's answer (on `shm`, a ring read is left instead).
    /// Messages already received stay queued. Fails with
    /// [`ClientError::Refused`] (NOT_SUBSCRIBED) for a pattern this client
    /// did not subscribe to. Between hubs, the pattern is only forgotten
    /// (not restored).
    pub fn unsubscribe(&mut self, pattern: &str) -> Result<(), ClientError> {
        let had = self.subs.iter().position(|p| p == pattern);
        if self.between_hubs() {
            return match had {
                Some(i) => {
                    self.subs.remove(i);
                    Ok(())
                }
                None => Err(ClientError::Refused {
                    code: ErrorCode::NotSubscribed as u16,
                    text: format!("not subscribed to '{pattern}'"),
                }),
            };
        }
        let epoch = self.ledger.epoch;
        let res = self.unsubscribe_once(pattern);
        if let Some(i) = had {
            if res.is_ok() || self.ledger.epoch != epoch {
                self.subs.remove(i);
            }
        }
        match res {
            Err(e) if self.ledger.epoch != epoch || self.loss(&e).is_some() => {
                if let Some(reason) = self.loss(&e) {
                    self.go_down(reason);
                }
                Ok(())
            }
            other => other,
        }
    }

    fn unsubscribe_once(&mut self, pattern: &str) -> Result<(), ClientError> {
        if self.ring_unsubscribe(pattern)? {
            return Ok(());
        }
        let seq = self.next_seq();
        self.queue_frame(FrameType::Unsubscribe, 0, 0, pattern, b"", seq);
        self.wait_ack(seq, true).map(|_| ())
    }

    /// Ask the hub for its statistics (channels, clients, totals) and wait
    /// up to 10 s for them. What arrives meanwhile stays queued.
    pub fn stats(&mut self) -> Result<HubStats, ClientError> {
        let mut seq = self.next_seq();
        self.queue_frame(FrameType::StatsRequest, 0, 0, "", b"", seq);
        let deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
        let mut epoch = self.ledger.epoch;
        loop {
            if epoch != self.ledger.epoch && !self.between_hubs() {
                // The request went down with the hub: ask the new one.
                epoch = self.ledger.epoch;
                seq = self.next_seq();
                self.queue_frame(FrameType::StatsRequest, 0, 0, "", b"", seq);
            }
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::Stats(_)))
            {
                if let Some(Event::Stats(s)) = self.events.remove(pos) {
                    return Ok(*s);
                }
            }
            if let Some(e) = self.take_error(seq) {
                return Err(e);
            }
            self.pump(deadline)?;
        }
    }

    /// Wait for the answer to request `seq`: `Some(delivered)` for an ACK.
    /// Other events that arrive meanwhile stay queued for [`next_event`](Self::next_event).
    /// `restorable`: a request the restore repeats (subscriptions), whose
    /// wait ends when the connection does.
    fn wait_ack(&mut self, seq: u64, restorable: bool) -> Result<Option<u32>, ClientError> {
        let epoch = self.ledger.epoch;
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::Ack { seq: s, .. } if *s == seq))
            {
                if let Some(Event::Ack { delivered, .. }) = self.events.remove(pos) {
                    return Ok(Some(delivered));
                }
            }
            if let Some(e) = self.take_error(seq) {
                return Err(e);
            }
            if self.ledger.epoch != epoch {
                if restorable {
                    return Err(ClientError::Lost {
                        seq,
                        reason: "connection lost".into(),
                    });
                }
                // A publish still held is resent (its ACK comes from the
                // next hub); an earlier one went down with the old hub.
                if seq < self.ledger.resend_from {
                    return Err(ClientError::Lost {
                        seq,
                        reason: "the hub took it and went away".into(),
                    });
                }
            }
            self.pump(None)?;
        }
    }

    fn take_error(&mut self, seq: u64) -> Option<ClientError> {
        let pos = self
            .events
            .iter()
            .position(|e| matches!(e, Event::Error { seq: s, .. } if *s == seq))?;
        match self.events.remove(pos) {
            Some(Event::Error { code, text, .. }) => Some(ClientError::Refused { code, text }),
            _ => None,
        }
    }

    /// Write every buffered frame, reading meanwhile: a hub that cannot
    /// hand us our ACKs stops reading us, so a writer that never read would
    /// deadlock. What arrives waits in the event queue.
    /// Between hubs, it waits for one (see [`Reconnect`]).
    pub fn flush(&mut self) -> Result<(), ClientError> {
        loop {
            if self.between_hubs() {
                self.reconnect(None)?;
            }
            match self.flush_inner() {
                Err(e) => match self.loss(&e) {
                    Some(reason) => self.go_down(reason),
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    fn flush_inner(&mut self) -> Result<(), ClientError> {
        self.unflushed_since = None;
        while !self.out.is_empty() {
            self.check_open()?;
            self.link.flush(&mut self.out)?;
            if self.out.is_empty() {
                break;
            }
            self.read_available()?;
            if !self.link.prepare_sleep()? {
                continue; // input arrived: read it first
            }
            // Reading, or resetting the wake-up, may have consumed a "room
            // to write" notification (shared memory): try again before sleeping.
            self.link.flush(&mut self.out)?;
            if !self.out.is_empty() {
                self.wait_io(None, true)?;
            }
        }
        Ok(())
    }

    /// Bytes of frames queued and not yet written (publishes into a
    /// channel ring are never queued).
    pub fn pending_bytes(&self) -> usize {
        self.out.total_bytes()
    }

    /// The next event, waiting up to `timeout` (`None`: forever; `None`
    /// is returned at the timeout). Flushes first.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            match self.pump(deadline) {
                Ok(()) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Events already received, without waiting (after a non-blocking read).
    /// Between hubs, it tries to reconnect once if an attempt is due (the
    /// descriptor of [`AsRawFd`] is then -1: poll with a timeout).
    ///
    /// It does not arm the wake-up of the `shm` transport: an event loop
    /// that sleeps on [`AsRawFd`] drains with
    /// `next_event(Some(Duration::ZERO))` instead (see
    /// [Receiving](crate#receiving)).
    pub fn poll_events(&mut self) -> Result<Option<Event>, ClientError> {
        if self.events.is_empty() {
            if self.between_hubs() {
                self.try_reconnect_now()?;
            } else if let Err(e) = self.read_available() {
                match self.loss(&e) {
                    Some(reason) => self.go_down(reason),
                    None => return Err(e),
                }
            }
        }
        Ok(self.events.pop_front())
    }

    /// The next message (`None` at the timeout). Other events that arrive
    /// meanwhile (ACKs, MISSED notices, errors) stay queued, in order, for
    /// [`next_event`](Self::next_event): a client that asks for ACKs or may
    /// miss messages should use `next_event`, or its queue grows.
    /// Flushes first, like every wait.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use ipchub_client::{Client, Options};
    ///
    /// # fn main() -> Result<(), ipchub_client::ClientError> {
    /// let mut c = Client::connect(&Options::default())?;
    /// c.subscribe("weather/today")?;
    /// match c.recv(Some(Duration::from_secs(1)))? {
    ///     Some(m) => println!("{}", String::from_utf8_lossy(&m.payload)),
    ///     None => println!("nothing within a second"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::Message(_)))
            {
                if let Some(Event::Message(m)) = self.events.remove(pos) {
                    return Ok(Some(m));
                }
            }
            match self.pump(deadline) {
                Ok(()) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Hand a received message back: the next message received reuses its
    /// buffers instead of allocating (up to 1024 small ones are kept). For a
    /// receiver that is done with each message once it has looked at it.
    pub fn recycle(&mut self, m: Message) {
        if self.recv_buffers.spare.len() < MAX_SPARE && m.payload.capacity() <= MAX_SPARE_PAYLOAD {
            self.recv_buffers.spare.push(m);
        }
    }

    /// [`recv`](Self::recv) without the per-message allocation: the message
    /// is lent until the next call on this client (the borrow checker
    /// holds the caller to that), then its buffers are reused.
    pub fn recv_ref(&mut self, timeout: Option<Duration>) -> Result<Option<&Message>, ClientError> {
        if let Some(m) = self.recv_buffers.lent.take() {
            self.recycle(m);
        }
        let m = self.recv(timeout)?;
        self.recv_buffers.lent = m;
        Ok(self.recv_buffers.lent.as_ref())
    }

    /// Batch receive: wait up to `timeout` for a message like
    /// [`recv`](Self::recv), then hand it and every other message already
    /// received to `f` in order, reusing their buffers; returns how many
    /// (0 at the timeout). Other events stay queued for `next_event`.
    pub fn recv_batch(
        &mut self,
        timeout: Option<Duration>,
        mut f: impl FnMut(&Message),
    ) -> Result<usize, ClientError> {
        let Some(first) = self.recv(timeout)? else {
            return Ok(0);
        };
        f(&first);
        self.recycle(first);
        let mut n = 1;
        if self.events.is_empty() {
            self.read_available()?;
        }
        while let Some(pos) = self
            .events
            .iter()
            .position(|e| matches!(e, Event::Message(_)))
        {
            if let Some(Event::Message(m)) = self.events.remove(pos) {
                f(&m);
                self.recycle(m);
                n += 1;
            }
        }
        Ok(n)
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match &self.closed {
            Some(r) => Err(ClientError::Closed(r.clone())),
            None => Ok(()),
        }
    }

    /// Flush, then wait until at least one new event arrived (or the
    /// deadline). A lost hub is an event ([`Event::HubLost`]), and so is
    /// its return, which this waits for (up to the deadline).
    fn pump(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        if self.between_hubs() {
            return self.reconnect(deadline);
        }
        match self.pump_once(deadline) {
            Err(e) => match self.loss(&e) {
                Some(reason) => {
                    self.go_down(reason);
                    Ok(())
                }
                None => Err(e),
            },
            ok => ok,
        }
    }

    fn pump_once(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        let before = self.events.len();
        self.unflushed_since = None;
        loop {
            if !self.out.is_empty() {
                self.check_open()?;
                self.link.flush(&mut self.out)?;
            }
            self.read_available()?;
            if self.events.len() > before {
                return Ok(());
            }
            self.check_open()?;
            if !self.link.prepare_sleep()? {
                continue; // the data path has input already
            }
            if !self.out.is_empty() {
                // See `flush`: resetting the wake-up may have taken a
                // "room to write" notification, so write once more.
                self.link.flush(&mut self.out)?;
            }
            if let Some(spin) = self.busy_poll {
                let spin = deadline.map_or(spin, |d| {
                    spin.min(d.saturating_duration_since(Instant::now()))
                });
                if self.spin_for_rings(spin) {
                    continue;
                }
            }
            if !self.arm_rings() {
                continue; // a ring has data already
            }
            self.wait_io(deadline, !self.out.is_empty())?;
        }
    }

    /// Read whatever is there and decode it into events.
    fn read_available(&mut self) -> Result<(), ClientError> {
        let outcome = self.link.read_into(&mut self.inbuf, usize::MAX)?;
        let mut off = 0;
        loop {
            match wire::decode(&self.inbuf[off..], u32::MAX) {
                Ok(Some((f, used))) => {
                    off += used;
                    let seq = f.header.seq;
                    let ev = match f.header.ty {
                        FrameType::Data => {
                            let (channel_seq, payload) = split_channel_seq(&f)?;
                            Event::Message(message_from(
                                &mut self.recv_buffers.spare,
                                &f,
                                payload,
                                f.header.flags & wire::RETAIN != 0,
                                channel_seq,
                            ))
                        }
                        FrameType::Ack => {
                            self.ledger.answered(seq);
                            if self.ledger.restore_seqs.remove(&seq) {
                                continue; // a subscription restored
                            }
                            let delivered = f
                                .payload
                                .get(..4)
                                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
                            Event::Ack { seq, delivered }
                        }
                        FrameType::Missed => {
                            let n = f
                                .payload
                                .get(..8)
                                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                            Event::Missed(n)
                        }
                        FrameType::Error => {
                            let (code, text) = parse_error_payload(f.payload);
                            if seq == 0 && reconnect::is_kick(code) {
                                self.ledger.kicked = true;
                            }
                            self.ledger.answered(seq);
                            self.ledger.restore_seqs.remove(&seq);
                            Event::Error { seq, code, text }
                        }
                        FrameType::StatsReply => match serde_json::from_slice(f.payload) {
                            Ok(s) => Event::Stats(Box::new(s)),
                            Err(e) => {
                                return Err(ClientError::Protocol(format!("bad STATS_REPLY: {e}")))
                            }
                        },
                        FrameType::Pong => Event::Pong(seq),
                        FrameType::Ring if f.payload == [0xff, 0xff, 0xff, 0xff, 0] && seq == 0 => {
                            // The hub retired this channel's ring: what it
                            // still held for us goes before what follows.
                            let rest = self.rings.retire(f.channel);
                            rings::ring_frames_to_events(
                                &rest,
                                &mut self.events,
                                &mut self.recv_buffers.spare,
                            );
                            continue;
                        }
                        FrameType::Bye => {
                            self.closed = Some(String::from_utf8_lossy(f.payload).into_owned());
                            continue;
                        }
                        other => {
                            return Err(ClientError::Protocol(format!(
                                "unexpected {other:?} frame from hub"
                            )))
                        }
                    };
                    self.events.push_back(ev);
                }
                Ok(None) => break,
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
        self.inbuf.drain(..off);
        // The rings after the hub's frames: a notice that a ring was
        // retired comes with what it still held, ahead of what the hub
        // relays from then on.
        self.read_rings()?;
        if outcome.eof && self.closed.is_none() {
            self.closed = Some("connection lost".into());
        }
        if self.closed.is_some() && self.events.is_empty() {
            return self.check_open();
        }
        Ok(())
    }

    /// Sleep until the link is readable (or writable, when `want_write`), the
    /// control socket says the hub is gone, or the deadline passes.
    fn wait_io(&mut self, deadline: Option<Instant>, want_write: bool) -> Result<(), ClientError> {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::Timeout);
                }
                left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1
            }
        };
        // The link hands out descriptor numbers (it is a trait object over
        // five transports); poll_raw polls numbers without claiming them.
        let mut fds = vec![sys::pollfd(self.link.read_fd(), libc::POLLIN)];
        if want_write && !self.link.writable_via_read_fd() {
            fds.push(sys::pollfd(self.link.write_fd(), libc::POLLOUT));
        }
        if let Some(c) = &self.ctrl {
            fds.push(sys::pollfd(c.as_raw_fd(), libc::POLLIN));
        }
        match sys::poll_raw(&mut fds, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if self.ctrl.is_some() {
            let ctrl_gone = fds
                .last()
                .is_some_and(|f| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0);
            if ctrl_gone {
                self.check_ctrl()?;
            }
        }
        Ok(())
    }

    /// Something happened on the control socket of a non-socket transport:
    /// the hub only writes there to say goodbye, so read it and close.
    fn check_ctrl(&mut self) -> Result<(), ClientError> {
        let Some(c) = &self.ctrl else { return Ok(()) };
        let mut buf = Vec::new();
        let o = crate::transport::stream::read_stream(c, &mut buf, 1 << 16)?;
        if o.eof {
            // Whatever is still in the data path is read first.
            self.read_available()?;
            if self.closed.is_none() {
                self.closed = Some("hub closed the control connection".into());
            }
        }
        Ok(())
    }
}

/// The link of a client taken apart by `into_raw`, or of one between hubs:
/// never read or written, only dropped (or asked its frame limit).
struct Detached {
    max_frame: Option<usize>,
}

impl Link for Detached {
    fn read_into(
        &mut self,
        _: &mut Vec<u8>,
        _: usize,
    ) -> io::Result<crate::transport::ReadOutcome> {
        Ok(crate::transport::ReadOutcome {
            eof: true,
            ..Default::default()
        })
    }
    fn flush(&mut self, _: &mut OutQueue) -> io::Result<u64> {
        Ok(0)
    }
    fn read_fd(&self) -> std::os::fd::RawFd {
        -1
    }
    fn write_fd(&self) -> std::os::fd::RawFd {
        -1
    }
    fn max_frame(&self) -> Option<usize> {
        self.max_frame
    }
}

impl Drop for Client {
    /// Hand the transport what is still buffered, as far as it takes it
    /// without waiting (a hub that is gone or full must not hang the
    /// caller's exit): call [`Client::flush`] to be sure.
    fn drop(&mut self) {
        if !self.out.is_empty() && self.closed.is_none() {
            let _ = self.link.flush(&mut self.out);
        }
    }
}

fn connect_error(path: &Path, e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            path: path.to_path_buf(),
            source: e,
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: path.to_path_buf(),
        },
        _ => ClientError::Connect {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

impl AsRawFd for Client {
    /// The descriptor to poll (for reading) for incoming events: the
    /// connection (`socket`), the read end of the hub-to-client pipe or
    /// FIFO (`pipe`, `fifo`), the hub-to-client message queue (`mqueue`),
    /// or the client's eventfd (`shm`, armed only by a call that waits: see
    /// [Receiving](crate#receiving)). -1 while between hubs.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.link.read_fd()
    }
}

/// A DATA frame's channel sequence number (flag CHANNEL_SEQ: the first 8
/// payload bytes) and the message itself.
fn split_channel_seq<'a>(f: &wire::Frame<'a>) -> Result<(Option<u64>, &'a [u8]), ClientError> {
    if f.header.flags & wire::CHANNEL_SEQ == 0 {
        return Ok((None, f.payload));
    }
    let (cs, rest) = f.payload.split_first_chunk::<8>().ok_or_else(|| {
        ClientError::Protocol("DATA with CHANNEL_SEQ shorter than 8 bytes".into())
    })?;
    Ok((Some(u64::from_le_bytes(*cs)), rest))
}

/// The README's example, compiled with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// A client can move to another thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Client>();
};
