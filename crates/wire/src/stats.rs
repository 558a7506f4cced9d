//! Statistics snapshots as the STATS_REPLY frame carries them (JSON), the
//! schema `ipchubctl stats`, the D-Bus interface and the dashboard share.
//! What a requester may see is decided by the hub, not here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Messages accepted from publishers.
    pub messages_in: u64,
    /// Deliveries into subscriber queues (one message to three subscribers counts three).
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Messages lost to `drop-oldest` or to a `disconnect`ed subscriber.
    pub dropped: u64,
    /// Retained values the hub keeps (one per channel at most), and their
    /// bytes as charged against `hub.max_retained_bytes`.
    #[serde(default)]
    pub retained_messages: u64,
    #[serde(default)]
    pub retained_bytes: u64,
    /// Messages kept as channel history, and their bytes as charged
    /// against `hub.max_history_bytes`.
    #[serde(default)]
    pub history_messages: u64,
    #[serde(default)]
    pub history_bytes: u64,
    /// Writes to channel logs (storage = "disk") that failed: disk full,
    /// I/O errors, failed fsyncs.
    #[serde(default)]
    pub storage_errors: u64,
    /// fsync rounds under `sync = "always"`, and the publisher ACKs they
    /// made good (more ACKs than rounds: publishers shared fsyncs).
    #[serde(default)]
    pub storage_syncs: u64,
    #[serde(default)]
    pub storage_synced_acks: u64,
}

// Totals, `client_count` and `channel_count` are hub-wide in every view:
// aggregate numbers carry no name, no uid and no content, and the hub's
// activity is visible to every user anyway (its CPU time in /proc).

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStats {
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_secs: u64,
    /// The transports the hub serves, by name.
    pub transports: Vec<String>,
    pub client_count: usize,
    pub channel_count: usize,
    #[serde(flatten)]
    pub totals: Totals,
    pub channels: Vec<ChannelStats>,
    pub clients: Vec<ClientStats>,
    /// Per transport served: the clients connected through it now, and
    /// payload bytes (since the hub started, clients gone included).
    #[serde(default)]
    pub per_transport: Vec<TransportStats>,
    /// State reported by components such as the MQTT bridge, by name.
    #[serde(default)]
    pub components: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub name: String,
    pub subscribers: usize,
    pub overflow: String,
    pub published: u64,
    pub delivered: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// True while the channel has a shared-memory broadcast ring (shm).
    #[serde(default)]
    pub ring: bool,
    /// Clients reading that ring in place (counted in `subscribers` too).
    #[serde(default)]
    pub ring_readers: usize,
    /// Bytes of the channel's retained value as charged (payload, name and
    /// 64 bytes), 0 when it has none.
    #[serde(default)]
    pub retained_bytes: usize,
    /// Messages of its history kept now, their payload bytes, and the
    /// channel sequence numbers of the oldest kept and of the last one
    /// (0 without history).
    #[serde(default)]
    pub stored_messages: usize,
    #[serde(default)]
    pub stored_bytes: usize,
    #[serde(default)]
    pub first_seq: u64,
    #[serde(default)]
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    pub id: u32,
    pub name: String,
    pub transport: String,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub subscriptions: Vec<String>,
    /// Frames waiting in the hub for this client (messages, and the
    /// answers and notices between them), and their bytes: the same frames
    /// counted both ways.
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub messages_in: u64,
    /// Messages put into this client's queue: *queued*, not delivered
    /// (under `drop-oldest` some are dropped before it reads them).
    pub messages_out: u64,
    /// Messages handed to its transport (written to its socket or pipe,
    /// sent to its message queue or shm ring): *delivered*. Queued =
    /// delivered + dropped + still waiting.
    #[serde(default)]
    pub messages_delivered: u64,
    /// Payload bytes it published, and payload bytes queued for it.
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    pub dropped: u64,
    /// True while the hub is holding this publisher back (`block`).
    pub blocked: bool,
}

/// One transport's share of the traffic. Aggregates like the totals: every
/// viewer sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportStats {
    /// `pipe`, `fifo`, `socket`, `mqueue` or `shm`.
    pub name: String,
    /// Clients connected through it now.
    pub clients: usize,
    /// Payload bytes its clients published, and bytes queued for them.
    pub bytes_in: u64,
    pub bytes_out: u64,
}
