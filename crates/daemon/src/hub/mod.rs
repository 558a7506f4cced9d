//! The routing core: clients, channels, subscriptions and bounded queues.
//!
//! The hub sees frames in and leaves encoded frames in per-client queues; it
//! never touches a file descriptor. The event loop feeds it and flushes the
//! queues it marks dirty. That keeps every routing decision testable without
//! sockets, and lets every transport share one set of semantics:
//! - fan-out: a message goes once to every client with a matching
//!   subscription, however many of its patterns match;
//! - order: frames of one publisher are handled in arrival order and each
//!   subscriber queue is FIFO, so per-publisher order holds per subscriber;
//! - bounded: every subscriber queue has limits and an overflow policy, and
//!   every loss is counted and announced in-band (MISSED);
//! - back-pressure: under `block` the hub stops *handling* a publisher's
//!   frames ([`Step::Pause`]) until the subscriber drains, so nothing is
//!   queued past a limit and nothing is lost.

pub mod access;
mod channels;
pub mod control;
pub mod deadlines;
mod disk;
mod history;
pub mod loglimit;
pub use ipchub_os::queue;
mod retain;
pub mod rings;
pub mod snapshot;
pub mod stats;
mod trie;

use std::collections::{BTreeMap, HashMap as StdHashMap};

/// The hub's maps: looked up per message, so a fast seeded hasher.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, Overflow};
use crate::wire::frame::{error_payload, MAX_PRIORITY};
use crate::wire::{
    channel, encode_header, ErrorCode, Frame, FrameType, Pattern, ACK_REQUESTED, RETAIN,
};
use access::{Credentials, Op, Policy};
pub use control::{ControlOp, ControlReply, HubEvent};
pub use history::{HistoryError, HistoryFigures, Replay};
use loglimit::{msgid, LogKind, LogLimiter};
use queue::{Kind, OutQueue};
pub use retain::RetainError;
pub use rings::{RingRequest, RING_READ, RING_WRITE};
pub use stats::{ChannelStats, ClientStats, HubStats, Totals, Viewer};
use trie::SubTrie;

/// A client's id, unique for the life of the hub (never reused).
pub type ClientId = u32;

pub use crate::wire::TransportKind;

/// Who a client is, from the kernel (SO_PEERCRED), never from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// What the event loop should do with the client whose frame was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on with its next frame.
    Continue,
    /// Stop handling its frames (keep them buffered) until [`Hub::take_resumed`] names it.
    Pause,
    /// Disconnect it; an ERROR naming the reason is already queued.
    Close,
}

/// Why a client could not be admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("hub is full: {0} clients connected (limit hub.max_clients)")]
    TooManyClients(usize),
    #[error("uid {uid} has {count} clients connected (limit hub.max_clients_per_uid)")]
    TooManyForUid { uid: u32, count: usize },
    #[error("uid {uid} has {count} clients connected and only {free} client slots are free: a uid may hold no more than remain free (its share of hub.max_clients)")]
    OverShare { uid: u32, count: usize, free: usize },
}

#[derive(Debug, Default)]
struct PeerCounters {
    messages_in: u64,
    /// Messages put into its queue (not all of them reach it: see
    /// `OutQueue::written`).
    messages_out: u64,
    /// Payload bytes of those.
    bytes_in: u64,
    bytes_out: u64,
    dropped: u64,
    /// Condemned as a slow consumer (how its disconnection is logged).
    slow_consumer: bool,
}

struct Peer {
    ident: Identity,
    /// Credentials for access control (uid, gid and supplementary groups).
    creds: Credentials,
    /// The hub itself (D-Bus Publish): authorised by its own front end.
    internal: bool,
    /// A channel ring's endpoint: part of the hub, not a client; left out of
    /// client counts, limits and statistics.
    ring_endpoint: bool,
    /// This client's queued data bytes as last added to `Hub::uid_bytes`.
    accounted: usize,
    transport: TransportKind,
    name: String,
    patterns: Vec<Pattern>,
    out: OutQueue,
    /// Set while this publisher is paused: on whom, and since when.
    blocked: Option<(ClientId, Instant)>,
    /// Publishers paused until this client's queue drains.
    holding: Vec<ClientId>,
    dirty: bool,
    /// Handshake done (only greeted clients are announced).
    greeted: bool,
    counters: PeerCounters,
    /// The largest frame this client's data path carries (a message
    /// queue's message size, a ring's record limit); None: any frame.
    max_frame: Option<usize>,
    /// A message too big for `max_frame` was already logged for it (once
    /// per client: the count is in its `dropped`).
    told_too_big: bool,
    /// It asked for channel sequence numbers (SUBSCRIBE flag CHANNEL_SEQ).
    wants_seq: bool,
    /// It asked for live retained publishes to be marked RETAIN (SUBSCRIBE
    /// flag RETAIN_AS_PUBLISHED).
    wants_retain_flag: bool,
}

struct Channel {
    /// Clients with at least one matching subscription that the access
    /// policy lets read this channel, each once, as of generation `gen` of
    /// the subscriptions (see `Hub::refresh`).
    subscribers: Vec<ClientId>,
    /// The `Hub::sub_gen` `subscribers` was computed at.
    gen: u64,
    /// Who holds this channel, so that it is not collected: uids with
    /// clients subscribed to its exact name, and how many such clients.
    /// Each of these uids is charged for it (hub.max_channels_per_uid).
    holds: Vec<(u32, u32)>,
    /// The uid charged for it while `holds` is empty: its creator, or the
    /// last uid that held it.
    owner: u32,
    /// Set while it is a candidate for collection (see `Hub::idle`).
    idle_at: Option<u64>,
    overflow: Overflow,
    /// `retain = true` in its `[[channel]]` block: every message is retained.
    retain: bool,
    /// Its history bounds, if its `[[channel]]` block has history keys.
    history: Option<crate::config::HistoryBounds>,
    /// The access rule governing this channel (None: the default).
    rule: Option<usize>,
    published: u64,
    delivered: u64,
    bytes: u64,
    dropped: u64,
    /// The endpoint serving this channel's broadcast ring, if it has one.
    ring: Option<ClientId>,
    /// Clients that read this channel from its ring themselves.
    direct: Vec<ClientId>,
    /// Messages written straight into the ring by shm clients.
    published_direct: u64,
    /// The current ring's count of direct publishes when last counted.
    direct_seen: u64,
}

pub struct Hub {
    cfg: Config,
    policy: Policy,
    /// Bytes queued for each uid's subscribers together (queue.max_bytes_per_uid).
    uid_bytes: HashMap<u32, usize>,
    peers: HashMap<ClientId, Peer>,
    channels: HashMap<Box<str>, Channel>,
    /// Every client's patterns, indexed by level.
    subs: SubTrie,
    /// Bumped whenever subscriptions change in a way that may concern many
    /// channels: a channel's `subscribers` is recomputed when next used.
    sub_gen: u64,
    /// Patterns held by each uid's clients together (hub.max_subscriptions_per_uid).
    uid_subs: HashMap<u32, usize>,
    /// Levels of those patterns together (hub.max_pattern_levels_per_uid):
    /// each is a node of the subscription index.
    uid_levels: HashMap<u32, usize>,
    /// Channels charged to each uid (hub.max_channels_per_uid).
    uid_channels: HashMap<u32, usize>,
    /// Channels nobody holds, oldest first: collected when room is needed.
    idle: BTreeMap<u64, Box<str>>,
    /// The same, by the uid charged for them.
    idle_by_uid: BTreeMap<(u32, u64), Box<str>>,
    idle_tick: u64,
    next_id: ClientId,
    totals: Totals,
    dirty: Vec<ClientId>,
    resumed: Vec<ClientId>,
    doomed: Vec<(ClientId, String)>,
    /// Byte counters of the clients that left, by transport (`stats`
    /// adds those of the clients still here).
    gone_bytes: Vec<(TransportKind, stats::TransportBytes)>,
    /// Messages subscribers lost under `drop-oldest` since the last report,
    /// by subscriber and channel; logged every [`DROP_REPORT_EVERY`].
    drop_report: HashMap<ClientId, HashMap<Box<str>, u64>>,
    drop_report_at: Instant,
    /// Paused publishers by the time they were paused (their block timeout
    /// is that plus `hub.block_timeout_ms`); current while `blocked` says so.
    block_deadlines: deadlines::Deadlines<ClientId>,
    ring_requests: Vec<RingRequest>,
    /// How many peers are ring endpoints (see `Peer::ring_endpoint`).
    ring_endpoints: usize,
    started: SystemTime,
    transports: Vec<TransportKind>,
    /// Collected only while someone listens (`set_event_recording`), so a
    /// hub without D-Bus never accumulates them.
    events: Option<Vec<HubEvent>>,
    components: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Rate limits for log lines clients cause (`log.rate_limit_*`).
    log_limit: LogLimiter,
    /// Retained messages (retain.rs).
    retained: retain::RetainStore,
    /// Channel history in memory (history.rs).
    history: history::HistoryStore,
    /// Disk storage, once the daemon attached a state directory (disk.rs).
    disk: Option<disk::DiskState>,
    /// A subscription was added or removed since the event loop last asked.
    subscriptions_changed: bool,
}

impl Hub {
    pub fn new(cfg: Config) -> Hub {
        Hub {
            policy: policy_of(&cfg),
            log_limit: LogLimiter::new(cfg.log.rate_limit_burst, cfg.log.rate_limit_per_minute),
            uid_bytes: HashMap::default(),
            cfg,
            peers: HashMap::default(),
            subscriptions_changed: false,
            channels: HashMap::default(),
            subs: SubTrie::default(),
            sub_gen: 0,
            uid_subs: HashMap::default(),
            uid_levels: HashMap::default(),
            uid_channels: HashMap::default(),
            idle: BTreeMap::new(),
            idle_by_uid: BTreeMap::new(),
            idle_tick: 0,
            next_id: 1,
            totals: Totals::default(),
            dirty: Vec::new(),
            resumed: Vec::new(),
            doomed: Vec::new(),
            gone_bytes: Vec::new(),
            drop_report: HashMap::default(),
            drop_report_at: Instant::now(),
            block_deadlines: Default::default(),
            ring_requests: Vec::new(),
            ring_endpoints: 0,
            started: SystemTime::now(),
            // The daemon serves every transport (see `set_transports`).
            transports: TransportKind::ALL.to_vec(),
            events: None,
            components: Default::default(),
            retained: Default::default(),
            history: Default::default(),
            disk: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Start or stop recording [`HubEvent`]s for [`take_events`](Self::take_events).
    pub fn set_event_recording(&mut self, on: bool) {
        self.events = if on { Some(Vec::new()) } else { None };
    }

    pub fn take_events(&mut self, into: &mut Vec<HubEvent>) {
        if let Some(ev) = self.events.as_mut() {
            into.append(ev);
        }
    }

    fn record(&mut self, ev: HubEvent) {
        // Events become D-Bus signals, which reach every bus member: a
        // channel only some may read is not announced (docs/SECURITY.md §6).
        if let HubEvent::ChannelCreated(name) | HubEvent::ChannelRemoved(name) = &ev {
            if !self
                .policy
                .open_to_all(self.policy.rule_for(name), Op::Subscribe)
            {
                return;
            }
        }
        if let Some(events) = self.events.as_mut() {
            events.push(ev);
        }
    }

    /// Record a component's reported state (see [`ControlOp::SetStatus`]).
    pub fn set_component_status(
        &mut self,
        name: String,
        status: std::collections::BTreeMap<String, String>,
    ) {
        // An empty status is a component going away (a bridge removed on reload).
        if status.is_empty() {
            self.components.remove(&name);
        } else {
            self.components.insert(name, status);
        }
    }

    /// Tell the hub which transports the daemon serves (for statistics).
    pub fn set_transports(&mut self, t: Vec<TransportKind>) {
        self.transports = t;
    }

    /// Apply a reloaded configuration: limits and policies change for
    /// existing queues and channels at once.
    pub fn reload(&mut self, cfg: Config) {
        let policy = policy_of(&cfg);
        self.reload_with(cfg, policy);
    }

    /// [`reload`](Self::reload) with the access policy already resolved
    /// (by the daemon's reload thread: no user or group lookup here).
    pub fn reload_with(&mut self, cfg: Config, policy: Policy) {
        for peer in self.peers.values_mut() {
            peer.out
                .set_limits(cfg.queue.max_messages, cfg.queue.max_bytes);
        }
        self.policy = policy;
        self.log_limit
            .set_limits(cfg.log.rate_limit_burst, cfg.log.rate_limit_per_minute);
        for (name, ch) in self.channels.iter_mut() {
            ch.overflow = cfg.overflow_for(name);
            ch.retain = cfg.retain_for(name);
            ch.history = cfg.history_for(name);
            ch.rule = self.policy.rule_for(name);
        }
        // Access may have changed: every channel recomputes who reads it.
        self.subscriptions_changed();
        self.cfg = cfg;
        self.rebound_history();
        self.close_logs_not_on_disk();
    }

    /// Admit a new client; its transport may still change at handshake.
    pub fn admit(&mut self, ident: Identity) -> Result<ClientId, AdmitError> {
        self.admit_with_groups(ident, Vec::new())
    }

    /// Admit a client whose supplementary groups the caller looked up
    /// (for `group:` access rules).
    pub fn admit_with_groups(
        &mut self,
        ident: Identity,
        groups: Vec<u32>,
    ) -> Result<ClientId, AdmitError> {
        let clients = self.client_count();
        if clients >= self.cfg.hub.max_clients {
            return Err(AdmitError::TooManyClients(clients));
        }
        let count = self
            .peers
            .values()
            .filter(|p| p.ident.uid == ident.uid && !p.internal)
            .count();
        if count >= self.cfg.hub.max_clients_per_uid {
            return Err(AdmitError::TooManyForUid {
                uid: ident.uid,
                count,
            });
        }
        // Fair share (as dbus-broker's quotas): a uid may take a slot only
        // while it holds fewer than remain free. One uid alone gets at most
        // half of max_clients, k uids together at most k/(k+1) of it, and a
        // uid holding nothing can always connect while any slot is free.
        let free = self.cfg.hub.max_clients - clients;
        if count >= free {
            return Err(AdmitError::OverShare {
                uid: ident.uid,
                count,
                free,
            });
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let q = &self.cfg.queue;
        self.peers.insert(
            id,
            Peer {
                ident,
                creds: Credentials {
                    uid: ident.uid,
                    gid: ident.gid,
                    groups,
                },
                internal: false,
                ring_endpoint: false,
                accounted: 0,
                transport: TransportKind::Socket,
                name: String::new(),
                patterns: Vec::new(),
                out: OutQueue::new(q.max_messages, q.max_bytes),
                blocked: None,
                holding: Vec::new(),
                dirty: false,
                greeted: false,
                counters: PeerCounters::default(),
                max_frame: None,
                told_too_big: false,
                wants_seq: false,
                wants_retain_flag: false,
            },
        );
        Ok(id)
    }

    /// The handshake is done: record the transport and announce the client.
    pub fn set_transport(&mut self, id: ClientId, transport: TransportKind, name: &str) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.transport = transport;
        p.name = name.chars().take(64).collect();
        let ev = HubEvent::ClientConnected {
            id,
            transport: transport.name().to_string(),
            pid: p.ident.pid,
            uid: p.ident.uid,
        };
        p.greeted = true;
        self.record(ev);
    }

    /// The largest frame the client's data path carries (`Link::max_frame`):
    /// messages bigger than that are never queued for it, so they are
    /// neither counted as delivered nor turned into a notice at flush time.
    pub fn set_max_frame(&mut self, id: ClientId, max: Option<usize>) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.max_frame = max;
        }
    }

    pub fn identity(&self, id: ClientId) -> Option<Identity> {
        self.peers.get(&id).map(|p| p.ident)
    }

    pub fn client_count(&self) -> usize {
        self.peers.len() - self.ring_endpoints
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Hub-wide counters (cheap; [`stats`](Self::stats) builds the full report).
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Forget a client: its subscriptions end, publishers it held resume.
    pub fn remove(&mut self, id: ClientId) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        peer.out = OutQueue::new(0, 0);
        sync_uid(&mut self.uid_bytes, &mut peer);
        if !peer.ring_endpoint && !peer.internal {
            self.note_gone_bytes(
                peer.transport,
                peer.counters.bytes_in,
                peer.counters.bytes_out,
            );
        }
        if peer.ring_endpoint {
            self.ring_endpoints -= 1;
        }
        // Only clients announced by `set_transport` are announced leaving.
        if peer.greeted {
            self.record(HubEvent::ClientDisconnected { id });
        }
        self.drop_subscriptions(id, peer.ident.uid, std::mem::take(&mut peer.patterns));
        if let Some((on, _)) = peer.blocked {
            if let Some(holder) = self.peers.get_mut(&on) {
                holder.holding.retain(|h| *h != id);
            }
        }
        for p in peer.holding {
            self.resume(p);
        }
    }

    /// Queue a control frame for a client (ACK, ERROR, WELCOME, STATS_REPLY…).
    pub fn send_control(&mut self, id: ClientId, ty: FrameType, seq: u64, payload: &[u8]) {
        let header = encode_header(ty, 0, 0, 0, payload.len(), 0, seq);
        self.push(id, Kind::Control, &[&header, payload]);
        if let Some(p) = self.peers.get_mut(&id) {
            sync_uid(&mut self.uid_bytes, p);
        }
    }

    pub fn send_error(&mut self, id: ClientId, seq: u64, code: ErrorCode, text: &str) {
        self.send_control(id, FrameType::Error, seq, &error_payload(code, text));
    }

    fn push(&mut self, id: ClientId, kind: Kind, parts: &[&[u8]]) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.out.push(kind, parts);
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Whether a SUBSCRIBE or UNSUBSCRIBE was handled since the last call
    /// (the event loop then re-tends the channel rings before flushing).
    pub fn take_subscriptions_changed(&mut self) -> bool {
        std::mem::take(&mut self.subscriptions_changed)
    }

    /// Clients whose queues gained frames since the last call: flush them.
    pub fn take_dirty(&mut self, into: &mut Vec<ClientId>) {
        for id in self.dirty.drain(..) {
            if let Some(p) = self.peers.get_mut(&id) {
                p.dirty = false;
                into.push(id);
            }
        }
    }

    /// Paused publishers that may go on: handle their buffered frames, then read.
    pub fn take_resumed(&mut self, into: &mut Vec<ClientId>) {
        into.append(&mut self.resumed);
    }

    /// Clients the overflow policy or a timeout condemned, with the reason.
    pub fn take_doomed(&mut self, into: &mut Vec<(ClientId, String)>) {
        into.append(&mut self.doomed);
    }

    /// The outbound queue a transport flushes. Records staged for disk
    /// logs are written first (and their publishers answered): nothing
    /// leaves the hub ahead of the stored messages it acknowledges or
    /// reveals (disk.rs).
    pub fn queue(&mut self, id: ClientId) -> Option<&mut OutQueue> {
        self.flush_store();
        self.peers.get_mut(&id).map(|p| &mut p.out)
    }

    /// Take a client's queue out of the hub (before [`remove`](Self::remove)),
    /// so its last frames can still be written after the hub forgot it
    /// (staged disk records are written first, as for [`queue`](Self::queue)).
    pub fn take_queue(&mut self, id: ClientId) -> Option<OutQueue> {
        self.flush_store();
        let p = self.peers.get_mut(&id)?;
        let q = std::mem::replace(&mut p.out, OutQueue::new(0, 0));
        sync_uid(&mut self.uid_bytes, p);
        Some(q)
    }

    /// Call after a flush: resumes publishers once this client has drained enough.
    pub fn flushed(&mut self, id: ClientId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        sync_uid(&mut self.uid_bytes, p);
        if p.holding.is_empty() || !p.out.below_low_watermark() {
            return;
        }
        // A client paused on itself because its uid is at its bound goes on
        // only once its own answers are out (or the uid has room again):
        // resuming it earlier would pause it again at once, in a loop.
        let uid_full = self.uid_bytes.get(&p.ident.uid).copied().unwrap_or(0)
            >= self.cfg.queue.max_bytes_per_uid;
        let keep_self = uid_full && !p.out.is_empty() && p.holding.contains(&id);
        let mut holding = std::mem::take(&mut p.holding);
        if keep_self {
            holding.retain(|h| *h != id);
            p.holding.push(id);
        }
        for h in holding {
            self.resume(h);
        }
    }

    fn resume(&mut self, id: ClientId) {
        if let Some(p) = self.peers.get_mut(&id) {
            if p.blocked.take().is_some() {
                self.resumed.push(id);
            }
        }
    }

    /// When the next block timeout can fire, if any publisher is paused, or
    /// the next summary of suppressed log lines or drop report is due.
    /// Costs no walk over the clients (`deadlines`), so idle ones are free.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let timeout = Duration::from_millis(self.cfg.hub.block_timeout_ms);
        let drops =
            (!self.drop_report.is_empty()).then_some(self.drop_report_at + DROP_REPORT_EVERY);
        let peers = &self.peers;
        self.block_deadlines
            .next(|id, since| blocked_since(peers, id) == Some(since))
            .map(|since| since + timeout)
            .into_iter()
            .chain(self.log_limit.next_due())
            .chain(drops)
            .min()
    }

    /// May a log line of `kind` that a client of `uid` caused be written
    /// now? (The rest are counted and summed up; see `loglimit`.)
    pub fn log_allowed(&mut self, uid: u32, kind: LogKind) -> bool {
        self.log_limit.allow(uid, kind, Instant::now())
    }

    /// Condemn subscribers that held publishers back past `block_timeout_ms`
    /// (and log the summaries of suppressed log lines that are due).
    pub fn check_timeouts(&mut self, now: Instant) {
        self.report_drops(now);
        for (uid, kind, n) in self.log_limit.take_due(now) {
            tracing::warn!(
                client_uid = uid,
                kind = kind.as_str(),
                suppressed = n,
                "{n} similar messages suppressed (log lines of kind '{}' caused by uid {uid}; limits log.rate_limit_burst, log.rate_limit_per_minute)",
                kind.as_str()
            );
        }
        let timeout = Duration::from_millis(self.cfg.hub.block_timeout_ms);
        // Publishers paused since `now - timeout` or earlier (none if the
        // timeout reaches back before there is a clock).
        let late_publishers = match now.checked_sub(timeout) {
            Some(due) => {
                let peers = &self.peers;
                self.block_deadlines
                    .pop_due(due, |id, since| blocked_since(peers, id) == Some(since))
            }
            None => Vec::new(),
        };
        let mut late: Vec<ClientId> = late_publishers
            .iter()
            .filter_map(|id| self.peers.get(id).and_then(|p| p.blocked))
            .map(|(on, _)| on)
            .collect();
        late.sort_unstable();
        late.dedup();
        for holder in late {
            let reason = format!(
                "queue full for more than {} ms while publishers waited (hub.block_timeout_ms); not reading fast enough",
                self.cfg.hub.block_timeout_ms
            );
            self.doom(holder, ErrorCode::SlowConsumer, reason);
        }
        // Dooming a holder resumes its publishers; one still paused (its
        // holder could not be doomed) stays due, as it was.
        for id in late_publishers {
            if let Some((_, since)) = self.peers.get(&id).and_then(|p| p.blocked) {
                self.block_deadlines.push(since, id);
            }
        }
    }

    /// Condemn a client: it receives no more messages, publishers it held
    /// resume, what was queued for it is discarded (and counted), and an
    /// ERROR with the reason is queued first in line. The loop then closes it.
    pub fn doom(&mut self, id: ClientId, code: ErrorCode, reason: String) {
        if self.doomed.iter().any(|(d, _)| *d == id) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let lost = peer.out.discard_unstarted();
        sync_uid(&mut self.uid_bytes, peer);
        peer.counters.dropped += lost;
        peer.counters.slow_consumer = code == ErrorCode::SlowConsumer;
        let patterns = std::mem::take(&mut peer.patterns);
        let holding = std::mem::take(&mut peer.holding);
        let uid = peer.ident.uid;
        self.totals.dropped += lost;
        self.drop_subscriptions(id, uid, patterns);
        for h in holding {
            self.resume(h);
        }
        self.send_error(id, 0, code, &reason);
        self.doomed.push((id, reason));
    }

    /// Handle one frame from client `id`.
    pub fn handle(&mut self, id: ClientId, frame: &Frame<'_>, now: Instant) -> Step {
        let Some(peer) = self.peers.get(&id) else {
            return Step::Close;
        };
        // A client that does not read our answers cannot make us queue more
        // of them: stop handling its requests until it reads. Answers count
        // against its own queue's bound and against its uid's, like data;
        // a client with nothing queued may always have one answer, so the
        // pause always ends when the client reads (or at block_timeout_ms).
        let own = peer.out.total_bytes();
        let uid_full = self.uid_bytes.get(&peer.ident.uid).copied().unwrap_or(0)
            >= self.cfg.queue.max_bytes_per_uid;
        if own > self.cfg.queue.max_bytes || (own > 0 && uid_full && !peer.internal) {
            return self.block(id, id, now);
        }
        let seq = frame.header.seq;
        match frame.header.ty {
            FrameType::Publish => self.publish(id, frame, now),
            FrameType::Subscribe => {
                let request: &[u8] = if frame.header.flags & crate::wire::REPLAY != 0 {
                    frame.payload
                } else {
                    &[]
                };
                let replay = match Replay::parse(request) {
                    Ok(r) => r,
                    Err(text) => {
                        self.send_error(id, seq, ErrorCode::Malformed, &text);
                        return Step::Continue;
                    }
                };
                match self.subscribe(id, frame.channel) {
                    Ok(()) => {
                        if let Some(p) = self.peers.get_mut(&id) {
                            let f = frame.header.flags;
                            p.wants_seq |= f & crate::wire::CHANNEL_SEQ != 0;
                            p.wants_retain_flag |= f & crate::wire::RETAIN_AS_PUBLISHED != 0;
                        }
                        self.send_control(id, FrameType::Ack, seq, &[]);
                        // Retained values and history right behind the ACK,
                        // in this same step: no live message between.
                        let flags = frame.header.flags;
                        if flags & crate::wire::WITH_RETAINED != 0 || replay.is_some() {
                            if let Ok(pat) = Pattern::parse(frame.channel) {
                                self.send_retained(id, &pat, flags, replay.is_some());
                                if let Some(r) = replay {
                                    self.send_history(id, &pat, r);
                                }
                            }
                        }
                    }
                    Err((code, text)) => self.send_error(id, seq, code, &text),
                }
                Step::Continue
            }
            FrameType::Unsubscribe => {
                match self.unsubscribe(id, frame.channel) {
                    Ok(()) => self.send_control(id, FrameType::Ack, seq, &[]),
                    Err((code, text)) => self.send_error(id, seq, code, &text),
                }
                Step::Continue
            }
            FrameType::StatsRequest => {
                // Only what this client's credentials may see (report.rs).
                let json = self.stats_reply(id);
                self.send_control(id, FrameType::StatsReply, seq, &json);
                Step::Continue
            }
            FrameType::Ping => {
                self.send_control(id, FrameType::Pong, seq, &[]);
                Step::Continue
            }
            FrameType::OpenRing => {
                self.open_ring(id, frame);
                Step::Continue
            }
            FrameType::Hello => {
                self.send_error(
                    id,
                    seq,
                    ErrorCode::BadHandshake,
                    "HELLO may only be the first frame",
                );
                Step::Close
            }
            other => {
                let text = format!(
                    "frame type {other:?} ({}) is sent by the hub, never by a client",
                    other as u8
                );
                self.send_error(id, seq, ErrorCode::UnknownType, &text);
                Step::Close
            }
        }
    }

    fn block(&mut self, id: ClientId, on: ClientId, now: Instant) -> Step {
        if let Some(p) = self.peers.get_mut(&id) {
            p.blocked = Some((on, now));
            self.block_deadlines.push(now, id);
        }
        if let Some(h) = self.peers.get_mut(&on) {
            if !h.holding.contains(&id) {
                h.holding.push(id);
            }
        }
        Step::Pause
    }

    fn publish(&mut self, id: ClientId, frame: &Frame<'_>, now: Instant) -> Step {
        let seq = frame.header.seq;
        // A known channel was validated when it was created: the common case
        // costs one lookup here.
        if !self.channels.contains_key(frame.channel) {
            if let Err(e) = channel::validate_name(frame.channel) {
                self.send_error(id, seq, ErrorCode::BadChannel, &e.to_string());
                return Step::Continue;
            }
            let uid = self.peers[&id].ident.uid;
            if let Err((code, text)) = self.ensure_channel(frame.channel, uid) {
                self.send_error(id, seq, code, &text);
                return Step::Continue;
            }
        }
        if !self.policy.is_open() {
            let rule = self.channels[frame.channel].rule;
            let peer = &self.peers[&id];
            if !peer.internal && !self.policy.allows_with(rule, &peer.creds, Op::Publish) {
                if self.log_limit.allow(peer.ident.uid, LogKind::Denied, now) {
                    tracing::warn!(
                        message_id = msgid::ACCESS_DENIED,
                        client = id,
                        client_pid = peer.ident.pid,
                        client_uid = peer.ident.uid,
                        channel = frame.channel,
                        "publish denied"
                    );
                }
                let text = format!(
                    "uid {} may not publish to '{}' (access policy)",
                    peer.creds.uid, frame.channel
                );
                self.send_error(id, seq, ErrorCode::NotPermitted, &text);
                return Step::Continue;
            }
        }
        self.refresh(frame.channel);
        let mut ch = self.channels.get_mut(frame.channel).expect("just ensured");
        // What retained messages and history need, from the lookup routing
        // makes anyway: with neither configured, one flag test and one
        // `Option` test per message.
        let mut retain = ch.ring != Some(id) && Hub::wants_retain(frame, ch);
        let history = if ch.ring == Some(id) {
            None
        } else {
            ch.history
        };
        if retain || history.is_some() {
            if let Some(step) = self.check_storing(id, frame, &mut retain, history.is_some(), now) {
                return step;
            }
            ch = self.channels.get_mut(frame.channel).expect("just ensured");
        }
        // Room for the channel sequence number some subscribers get.
        let len = frame.header.frame_len() + if history.is_some() { 8 } else { 0 };
        // A channel with a ring: what others publish goes into the ring (its
        // peer is the only target here), and what the ring peer reads back
        // goes to the subscribers that do not read the ring themselves.
        let from_ring = ch.ring == Some(id);
        let ring_only = [ch.ring.unwrap_or(0)];
        let targets: &[ClientId] = match ch.ring {
            Some(_) if !from_ring => &ring_only,
            _ => &ch.subscribers,
        };
        let origin = if from_ring { frame.header.origin } else { id };

        // Under `block`, check every target before delivering to any, so a
        // message is delivered to all of them or (for now) to none.
        // (A target the message cannot reach at all never holds it back.)
        if ch.overflow == Overflow::Block {
            let full = targets.iter().copied().find(|s| {
                self.peers.get(s).is_some_and(|p| {
                    fits_link(p, len)
                        && (!p.out.has_room(len) || !uid_room(&self.uid_bytes, &self.cfg, p, len))
                })
            });
            if let Some(holder) = full {
                return self.block(id, holder, now);
            }
        }

        let header = encode_header(
            FrameType::Data,
            0,
            frame.header.priority,
            frame.channel.len(),
            frame.payload.len(),
            origin,
            seq,
        );
        let parts: [&[u8]; 3] = [&header, frame.channel.as_bytes(), frame.payload];
        // Channels with history: the variant carrying the channel sequence
        // number, for subscribers that asked (built only here). The number
        // is reserved on disk before it can leave (history.rs, SeqFloors).
        if history.is_some_and(|b| b.disk.is_none()) {
            self.history.reserve_next(frame.channel);
        }
        let chan_seq = history.map(|_| self.history.next_seq(frame.channel).to_le_bytes());
        let seq_header = chan_seq.map(|_| {
            encode_header(
                FrameType::Data,
                crate::wire::CHANNEL_SEQ,
                frame.header.priority,
                frame.channel.len(),
                frame.payload.len() + 8,
                origin,
                seq,
            )
        });
        // A retained publish, for subscribers that asked to see it marked:
        // the same frames with RETAIN (built only for retained publishes).
        let retain_headers = retain.then(|| {
            let plain = encode_header(
                FrameType::Data,
                crate::wire::RETAIN,
                frame.header.priority,
                frame.channel.len(),
                frame.payload.len(),
                origin,
                seq,
            );
            let with_seq = chan_seq.map(|_| {
                encode_header(
                    FrameType::Data,
                    crate::wire::RETAIN | crate::wire::CHANNEL_SEQ,
                    frame.header.priority,
                    frame.channel.len(),
                    frame.payload.len() + 8,
                    origin,
                    seq,
                )
            });
            (plain, with_seq)
        });
        let mut delivered = 0u32;
        let mut dropped = 0u64;
        let mut condemned: Vec<(ClientId, String)> = Vec::new();
        let mut ring_refused = false;
        for &sub in targets {
            if from_ring && ch.direct.contains(&sub) {
                continue;
            }
            let Some(p) = self.peers.get_mut(&sub) else {
                continue;
            };
            if !fits_link(p, len) {
                // Its transport cannot carry the message: it is lost for
                // this subscriber, counted as dropped and not as delivered,
                // and the subscriber learns of the gap from a MISSED notice
                // (which answers no request, so no one's seq is reused).
                if !p.told_too_big {
                    p.told_too_big = true;
                    tracing::warn!(
                        client = sub,
                        channel = frame.channel,
                        bytes = len,
                        limit = p.max_frame.unwrap_or(0),
                        "message bigger than the subscriber's transport carries: dropped for it (logged once per client)"
                    );
                }
                p.counters.dropped += 1;
                dropped += 1;
                p.out.note_missed_at_back(1);
                mark_dirty(&mut self.dirty, sub, p);
                ring_refused |= ch.ring == Some(sub);
                continue;
            }
            let kind = match ch.overflow {
                Overflow::Block => Kind::Data,
                Overflow::Disconnect => {
                    if !p.out.has_room(len) || !uid_room(&self.uid_bytes, &self.cfg, p, len) {
                        let reason = format!(
                            "queue full ({} messages / {} bytes, limits queue.max_messages={} queue.max_bytes={}) on channel '{}' with overflow = \"disconnect\"",
                            p.out.messages(), p.out.data_bytes(), self.cfg.queue.max_messages, self.cfg.queue.max_bytes, frame.channel
                        );
                        condemned.push((sub, reason));
                        p.counters.dropped += 1;
                        dropped += 1;
                        continue;
                    }
                    Kind::Data
                }
                Overflow::DropOldest => {
                    let (fits, evicted) = p.out.evict_for(len);
                    p.counters.dropped += evicted;
                    dropped += evicted;
                    sync_uid(&mut self.uid_bytes, p);
                    if !fits || !uid_room(&self.uid_bytes, &self.cfg, p, len) {
                        p.out.note_missed_at_back(1);
                        p.counters.dropped += 1;
                        dropped += 1;
                        note_drops(&mut self.drop_report, sub, frame.channel, evicted + 1);
                        mark_dirty(&mut self.dirty, sub, p);
                        continue;
                    }
                    note_drops(&mut self.drop_report, sub, frame.channel, evicted);
                    Kind::Droppable
                }
            };
            let marked = retain_headers.as_ref().filter(|_| p.wants_retain_flag);
            match (marked, &seq_header, &chan_seq) {
                (Some((_, Some(h))), _, Some(cs)) if p.wants_seq => p
                    .out
                    .push(kind, &[h, frame.channel.as_bytes(), cs, frame.payload]),
                (Some((h, _)), _, _) => p
                    .out
                    .push(kind, &[h, frame.channel.as_bytes(), frame.payload]),
                (None, Some(h), Some(cs)) if p.wants_seq => p
                    .out
                    .push(kind, &[h, frame.channel.as_bytes(), cs, frame.payload]),
                _ => p.out.push(kind, &parts),
            }
            sync_uid(&mut self.uid_bytes, p);
            p.counters.messages_out += 1;
            p.counters.bytes_out += frame.payload.len() as u64;
            mark_dirty(&mut self.dirty, sub, p);
            delivered += 1;
        }
        if ring_refused {
            // Too big for the channel's ring: nobody on the channel gets it.
        } else if ch.ring.is_some() && !from_ring {
            // Into the ring: what counts is who reads it, directly or via
            // the ring peer (which counts its own deliveries when it reads).
            delivered = (ch.direct.len() + ring_audience(ch)) as u32;
            let direct = ch.direct.len() as u64;
            ch.delivered += direct;
            self.totals.messages_out += direct;
            self.totals.bytes_out += direct * frame.payload.len() as u64;
        } else {
            ch.delivered += delivered as u64;
            self.totals.messages_out += delivered as u64;
            self.totals.bytes_out += delivered as u64 * frame.payload.len() as u64;
        }
        ch.dropped += dropped;
        if !from_ring {
            ch.published += 1;
            ch.bytes += frame.payload.len() as u64;
            self.totals.messages_in += 1;
            self.totals.bytes_in += frame.payload.len() as u64;
        }
        self.totals.dropped += dropped;
        if let Some(p) = self.peers.get_mut(&id) {
            p.counters.messages_in += 1;
            p.counters.bytes_in += frame.payload.len() as u64;
        }
        for (sub, reason) in condemned {
            self.doom(sub, ErrorCode::SlowConsumer, reason);
        }
        if retain {
            self.store_retained(id, origin, frame);
        }
        let mut answered = false;
        if let Some(b) = history {
            let chan_seq = self.history.next_seq(frame.channel);
            let mut stored = true;
            if b.disk.is_some() {
                let ack = frame.header.flags & ACK_REQUESTED != 0;
                match self.stage_log(id, origin, frame, b, chan_seq, retain, delivered, ack, now) {
                    // Written with the rest of the turn's records, before
                    // any answer leaves; the publisher is answered then.
                    Ok(()) => answered = true,
                    Err(e) => {
                        let uid = self.peers.get(&id).map_or(0, |p| p.ident.uid);
                        if self.log_limit.allow(uid, LogKind::Refused, now) {
                            tracing::error!(
                                client = id,
                                channel = frame.channel,
                                "message not stored: {e}"
                            );
                        }
                        let text = format!(
                            "delivered to {delivered} subscribers but not stored (channel sequence number {chan_seq} skipped): {e}"
                        );
                        self.send_error(id, seq, ErrorCode::LimitReached, &text);
                        answered = true;
                        stored = false;
                    }
                }
            }
            if stored {
                // Old segments can only go when old entries did.
                let evicted = self.store_history(id, origin, frame, b, now);
                if let (Some(first), Some(_)) = (evicted, b.disk) {
                    self.trim_log(frame.channel, first);
                }
            } else {
                self.history.skip_seq(frame.channel, b);
            }
        }
        if frame.header.flags & ACK_REQUESTED != 0 && !answered {
            self.send_control(id, FrameType::Ack, seq, &delivered.to_le_bytes());
        }
        Step::Continue
    }
    /// Before delivering a message that is to be retained or stored: may
    /// it be (bounds, rings)? Some(step): refused, the ERROR is queued.
    fn check_storing(
        &mut self,
        id: ClientId,
        frame: &Frame<'_>,
        retain: &mut bool,
        history: bool,
        now: Instant,
    ) -> Option<Step> {
        let seq = frame.header.seq;
        if *retain {
            // Checked before anything is delivered: refused means not published.
            let checked = self.check_retain(self.peers[&id].ident.uid, frame);
            if let (Err(RetainError::RingChannel(_)), 0) = (&checked, frame.header.flags & RETAIN) {
                // `retain = true` came with a reload, after the channel got
                // its ring: the channel goes on, unretained, until the ring
                // is gone (then it gets none).
                *retain = false;
            } else if let Err(e) = checked {
                if self
                    .log_limit
                    .allow(self.peers[&id].ident.uid, LogKind::Refused, now)
                {
                    tracing::warn!(
                        client = id,
                        channel = frame.channel,
                        "retained publish refused: {e}"
                    );
                }
                let code = match e {
                    RetainError::RingChannel(_) => ErrorCode::NotPermitted,
                    _ => ErrorCode::LimitReached,
                };
                self.send_error(id, seq, code, &e.to_string());
                return Some(Step::Continue);
            }
        }
        if history {
            let uid = self.peers[&id].ident.uid;
            if let Err(e) = self.check_history(uid, frame.channel, frame.payload.len(), now) {
                if self.log_limit.allow(uid, LogKind::Refused, now) {
                    tracing::warn!(client = id, channel = frame.channel, "publish refused: {e}");
                }
                self.send_error(id, seq, ErrorCode::LimitReached, &e.to_string());
                return Some(Step::Continue);
            }
        }
        None
    }

    /// Evictions under drop-oldest are counted where they happen; this
    /// records messages a subscriber lost for other reasons (its transport
    /// refused them) so no loss goes uncounted.
    pub fn count_lost(&mut self, id: ClientId, n: u64) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.counters.dropped += n;
        }
        self.totals.dropped += n;
    }
}

/// The access policy of a validated configuration.
fn policy_of(cfg: &Config) -> Policy {
    Policy::from_config(&cfg.access).unwrap_or_else(|e| {
        // Config::validate resolved the same rules moments ago; a user or
        // group deleted in between is the only way here. Fail closed.
        tracing::error!("access policy no longer valid ({e}); denying everything until reload");
        Policy::from_config(&crate::config::AccessConfig {
            default: crate::config::AccessDefault::Deny,
            rule: Vec::new(),
        })
        .expect("empty policy")
    })
}

/// Subscribers of a ring channel the ring peer serves (not direct readers).
fn ring_audience(ch: &Channel) -> usize {
    ch.subscribers
        .iter()
        .filter(|s| !ch.direct.contains(s))
        .count()
}

/// Every queued byte counts, answers (ACK, ERROR, PONG, STATS_REPLY)
/// included: what a client does not read is charged to its uid.
fn sync_uid(uid_bytes: &mut HashMap<u32, usize>, p: &mut Peer) {
    let now = p.out.total_bytes();
    if now != p.accounted {
        let total = uid_bytes.entry(p.ident.uid).or_insert(0);
        *total = (*total + now).saturating_sub(p.accounted);
        p.accounted = now;
        if *total == 0 {
            uid_bytes.remove(&p.ident.uid);
        }
    }
}

/// Would `len` more bytes for this client keep its uid within its bound?
/// An empty queue always takes one frame, as with the per-client bound.
fn uid_room(uid_bytes: &HashMap<u32, usize>, cfg: &Config, p: &Peer, len: usize) -> bool {
    p.out.messages() == 0
        || uid_bytes.get(&p.ident.uid).copied().unwrap_or(0) + len <= cfg.queue.max_bytes_per_uid
}

/// Can this client's data path carry a frame of `len` bytes?
fn fits_link(p: &Peer, len: usize) -> bool {
    p.max_frame.is_none_or(|max| len <= max)
}

fn mark_dirty(dirty: &mut Vec<ClientId>, id: ClientId, p: &mut Peer) {
    if !p.dirty {
        p.dirty = true;
        dirty.push(id);
    }
}

/// Since when `id` is paused, if it is.
fn blocked_since(peers: &HashMap<ClientId, Peer>, id: ClientId) -> Option<Instant> {
    peers
        .get(&id)
        .and_then(|p| p.blocked)
        .map(|(_, since)| since)
}

mod internal;
mod report;

#[cfg(test)]
mod tests;

/// How often the messages subscribers lost under `drop-oldest` are logged
/// (one line per subscriber and channel that lost any).
pub const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Count `n` messages lost by subscriber `sub` on `channel` for the next
/// drop report (no allocation once the pair is known).
fn note_drops(
    report: &mut HashMap<ClientId, HashMap<Box<str>, u64>>,
    sub: ClientId,
    channel: &str,
    n: u64,
) {
    if n == 0 {
        return;
    }
    let per = report.entry(sub).or_default();
    match per.get_mut(channel) {
        Some(c) => *c += n,
        None => {
            per.insert(channel.into(), n);
        }
    }
}

impl Hub {
    /// Add a departed client's byte counters to its transport's.
    fn note_gone_bytes(&mut self, t: TransportKind, bytes_in: u64, bytes_out: u64) {
        match self.gone_bytes.iter_mut().find(|(k, _)| *k == t) {
            Some((_, b)) => {
                b.bytes_in += bytes_in;
                b.bytes_out += bytes_out;
            }
            None => self.gone_bytes.push((
                t,
                stats::TransportBytes {
                    bytes_in,
                    bytes_out,
                },
            )),
        }
    }

    /// Byte counters of the clients that left, for `transport`.
    pub(super) fn gone_bytes(&self, t: TransportKind) -> stats::TransportBytes {
        self.gone_bytes
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, b)| *b)
            .unwrap_or_default()
    }

    /// Log what subscribers lost under `drop-oldest` since the last report,
    /// once per [`DROP_REPORT_EVERY`]: one line per subscriber and channel
    /// (rate-limited per uid like every client-caused line).
    fn report_drops(&mut self, now: Instant) {
        if now < self.drop_report_at + DROP_REPORT_EVERY {
            return;
        }
        let secs = now.saturating_duration_since(self.drop_report_at).as_secs();
        self.drop_report_at = now;
        let mut report: Vec<_> = std::mem::take(&mut self.drop_report).into_iter().collect();
        report.sort_by_key(|(id, _)| *id);
        for (id, per) in report {
            let mut per: Vec<_> = per.into_iter().collect();
            per.sort();
            let (name, pid, uid) = match self.peers.get(&id) {
                Some(p) => (p.name.as_str(), p.ident.pid, p.ident.uid),
                None => ("(gone)", 0, 0),
            };
            for (channel, n) in per {
                if !self.log_limit.allow(uid, LogKind::Dropped, now) {
                    continue;
                }
                tracing::warn!(
                    message_id = msgid::MESSAGES_DROPPED,
                    client = id,
                    client_pid = pid,
                    client_uid = uid,
                    name = %name,
                    channel = %channel,
                    dropped = n,
                    "{n} messages dropped for client {id} on channel '{channel}' in the last {secs} s (overflow = \"drop-oldest\": its queue was full)"
                );
            }
        }
    }

    /// How a client's disconnection is logged: its name and the `MESSAGE_ID` (slow consumer, or disconnected).
    pub fn close_log(&self, id: ClientId) -> (String, &'static str) {
        match self.peers.get(&id) {
            Some(p) => (
                p.name.clone(),
                if p.counters.slow_consumer {
                    msgid::SLOW_CONSUMER
                } else {
                    msgid::CLIENT_DISCONNECTED
                },
            ),
            None => (String::new(), msgid::CLIENT_DISCONNECTED),
        }
    }
}

/// What a reload changes, for its log line: the keys whose values differ
/// (`queue.max_messages 1000 -> 16`, `access.rule`), at most
/// [`MAX_CHANGES_LOGGED`] of them. Numbers, booleans and strings are shown
/// with their values, except the bridges' (which may hold credentials);
/// arrays and tables only by name (a rule list is long).
pub fn config_changes(old: &Config, new: &Config) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        if a == b {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &sub,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            (
                Value::Number(_) | Value::Bool(_) | Value::Null,
                Value::Number(_) | Value::Bool(_) | Value::Null,
            ) => out.push(format!("{path} {a} -> {b}")),
            // Bridge settings may hold credentials: named, not shown.
            (Value::String(_), Value::String(_)) if !path.starts_with("bridge") => {
                out.push(format!("{path} {a} -> {b}"))
            }
            _ => out.push(path.to_string()),
        }
    }
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["(not comparable)".into()];
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    if out.len() > MAX_CHANGES_LOGGED {
        let more = out.len() - MAX_CHANGES_LOGGED;
        out.truncate(MAX_CHANGES_LOGGED);
        out.push(format!("and {more} more"));
    }
    out
}

/// How many changed keys a reload's log line names.
pub const MAX_CHANGES_LOGGED: usize = 20;
