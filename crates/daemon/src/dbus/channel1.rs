//! `org.ipchub.Channel1`: one object per channel under `/org/ipchub/channel`.
//!
//! Like `Hub1`'s properties these are a sample refreshed every
//! `dbus.stats_interval_ms`; the object itself appears and disappears with
//! the channel (InterfacesAdded/InterfacesRemoved on the ObjectManager at
//! `/org/ipchub`).

use zbus::interface;
use zbus::zvariant::Value;

use super::hub1::count;
use crate::hub::stats::ChannelStats;

pub struct Channel1 {
    stats: ChannelStats,
}

impl Channel1 {
    pub fn new(stats: ChannelStats) -> Channel1 {
        Channel1 { stats }
    }

    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    pub fn set_stats(&mut self, stats: ChannelStats) {
        self.stats = stats;
    }
}

/// The properties announced with PropertiesChanged, by D-Bus name.
pub fn notified_properties(s: &ChannelStats) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("Subscribers", Value::from(count(s.subscribers))),
        ("Overflow", Value::from(s.overflow.clone())),
        ("Published", Value::from(s.published)),
        ("Delivered", Value::from(s.delivered)),
        ("Bytes", Value::from(s.bytes)),
        ("Dropped", Value::from(s.dropped)),
        ("RetainedBytes", Value::from(s.retained_bytes as u64)),
        ("StoredMessages", Value::from(s.stored_messages as u64)),
        ("StoredBytes", Value::from(s.stored_bytes as u64)),
        ("FirstSeq", Value::from(s.first_seq)),
        ("LastSeq", Value::from(s.last_seq)),
    ]
}

/// The notified properties whose values differ from `old` to `new`.
pub fn changed_properties(
    old: &ChannelStats,
    new: &ChannelStats,
) -> Vec<(&'static str, Value<'static>)> {
    super::changed_properties(old, new, notified_properties)
}

#[interface(name = "org.ipchub.Channel1")]
impl Channel1 {
    /// The channel's name (levels separated by '/').
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.stats.name.clone()
    }

    /// Subscribers whose patterns match this channel now.
    #[zbus(property)]
    fn subscribers(&self) -> u32 {
        count(self.stats.subscribers)
    }

    /// What happens when a subscriber's queue is full: block, drop-oldest or disconnect.
    #[zbus(property)]
    fn overflow(&self) -> String {
        self.stats.overflow.clone()
    }

    /// Messages published on this channel since it came into use.
    #[zbus(property)]
    fn published(&self) -> u64 {
        self.stats.published
    }

    /// Deliveries into subscriber queues (one message to three subscribers counts three).
    #[zbus(property)]
    fn delivered(&self) -> u64 {
        self.stats.delivered
    }

    /// Payload bytes published on this channel.
    #[zbus(property)]
    fn bytes(&self) -> u64 {
        self.stats.bytes
    }

    /// Messages on this channel that subscribers lost.
    #[zbus(property)]
    fn dropped(&self) -> u64 {
        self.stats.dropped
    }

    /// Bytes of its retained value as charged (payload, name, 64); 0: none.
    #[zbus(property)]
    fn retained_bytes(&self) -> u64 {
        self.stats.retained_bytes as u64
    }

    /// Messages of its history kept now (`[[channel]]` history keys).
    #[zbus(property)]
    fn stored_messages(&self) -> u64 {
        self.stats.stored_messages as u64
    }

    /// Payload bytes of its history kept now.
    #[zbus(property)]
    fn stored_bytes(&self) -> u64 {
        self.stats.stored_bytes as u64
    }

    /// Channel sequence number of the oldest message kept (0: none).
    #[zbus(property)]
    fn first_seq(&self) -> u64 {
        self.stats.first_seq
    }

    /// Channel sequence number of the last message (0: none yet).
    #[zbus(property)]
    fn last_seq(&self) -> u64 {
        self.stats.last_seq
    }
}
