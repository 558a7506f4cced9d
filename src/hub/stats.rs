//! Statistics snapshots: what `ipchubctl stats`, the STATS_REPLY frame and the
//! D-Bus interface report. One serde schema serves all three.

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStats {
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_secs: u64,
    pub transports: Vec<String>,
    pub client_count: usize,
    pub channel_count: usize,
    #[serde(flatten)]
    pub totals: Totals,
    pub channels: Vec<ChannelStats>,
    pub clients: Vec<ClientStats>,
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
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub dropped: u64,
    /// True while the hub is holding this publisher back (`block`).
    pub blocked: bool,
}
