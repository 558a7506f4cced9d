//! Hub snapshots for the dashboard: one shared connection, reconnected when
//! the hub restarts, and rates from successive snapshots.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::client::{Client, ClientError, Options};
use crate::wire::Pattern;
use crate::wire::{
    stats::{ChannelStats, ClientStats, HubStats, Totals},
    TransportKind,
};

/// The dashboard's one statistics connection to the hub.
pub struct HubLink {
    socket: Option<PathBuf>,
    client: Mutex<Option<Client>>,
}

impl HubLink {
    pub fn new(socket: Option<PathBuf>) -> HubLink {
        HubLink {
            socket,
            client: Mutex::new(None),
        }
    }

    /// A fresh snapshot. Blocks (call from a blocking thread). A broken
    /// connection (the hub restarted) is replaced once before giving up.
    pub fn snapshot(&self) -> Result<HubStats, ClientError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(Client::connect(&self.options())?);
            }
            let Some(client) = guard.as_mut() else {
                unreachable!()
            };
            match client.stats() {
                Ok(s) => return Ok(s),
                Err(e) => {
                    *guard = None;
                    if attempt == 1 || matches!(e, ClientError::Refused { .. }) {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!()
    }

    pub fn options(&self) -> Options {
        Options {
            socket: self.socket.clone(),
            transport: TransportKind::Socket,
            name: "ipchubctl dashboard".into(),
            // The poller replaces its connection itself and shows the hub down meanwhile.
            reconnect: crate::client::Reconnect::off(),
        }
    }
}

/// Per-second rates between two snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub messages_in: f64,
    pub messages_out: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
    pub dropped: f64,
}

#[derive(Debug, Serialize)]
pub struct ChannelView {
    #[serde(flatten)]
    pub stats: ChannelStats,
    /// Published messages and bytes per second (`None` on the first sample).
    pub rate_messages: Option<f64>,
    pub rate_bytes: Option<f64>,
    /// Subscribers (clients whose subscriptions match) per transport.
    pub subscribers_by_transport: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct ClientView {
    #[serde(flatten)]
    pub stats: ClientStats,
    /// Deliveries to this client per second.
    pub rate_out: Option<f64>,
    /// Many messages queued, or messages missed (dropped) at some point.
    pub slow: bool,
}

/// What one server-sent event carries to the page.
#[derive(Debug, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Why the hub could not be reached; everything else is empty then.
    pub error: Option<String>,
    pub version: String,
    pub uptime_secs: u64,
    pub transports: Vec<String>,
    pub client_count: usize,
    pub channel_count: usize,
    pub totals: Totals,
    pub rates: Option<Rates>,
    pub channels: Vec<ChannelView>,
    pub clients: Vec<ClientView>,
    pub components: BTreeMap<String, BTreeMap<String, String>>,
}

/// Turns successive snapshots into samples with rates.
#[derive(Default)]
pub struct RateTracker {
    prev: Option<(Instant, HubStats)>,
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    // A counter that went down belongs to another hub: no rate rather than a
    // huge one.
    now.saturating_sub(before) as f64 / secs
}

impl RateTracker {
    pub fn error(&mut self, e: &ClientError) -> Sample {
        self.prev = None;
        Sample {
            time_ms: now_ms(),
            error: Some(e.to_string()),
            version: String::new(),
            uptime_secs: 0,
            transports: Vec::new(),
            client_count: 0,
            channel_count: 0,
            totals: Totals::default(),
            rates: None,
            channels: Vec::new(),
            clients: Vec::new(),
            components: BTreeMap::new(),
        }
    }

    pub fn sample(&mut self, st: HubStats, slow_queue: usize) -> Sample {
        let now = Instant::now();
        // A restarted hub starts its counters again.
        let prev = self
            .prev
            .take()
            .filter(|(_, p)| p.started_at == st.started_at && p.version == st.version);
        let secs = prev
            .as_ref()
            .map(|(t, _)| now.duration_since(*t).as_secs_f64())
            .filter(|s| *s > 0.0);
        let prev_stats = prev.as_ref().map(|(_, p)| p);
        let rates = match (prev_stats, secs) {
            (Some(p), Some(s)) => Some(Rates {
                messages_in: per_sec(st.totals.messages_in, p.totals.messages_in, s),
                messages_out: per_sec(st.totals.messages_out, p.totals.messages_out, s),
                bytes_in: per_sec(st.totals.bytes_in, p.totals.bytes_in, s),
                bytes_out: per_sec(st.totals.bytes_out, p.totals.bytes_out, s),
                dropped: per_sec(st.totals.dropped, p.totals.dropped, s),
            }),
            _ => None,
        };
        let patterns: Vec<(String, Vec<Pattern>)> = st
            .clients
            .iter()
            .map(|c| {
                (
                    c.transport.clone(),
                    c.subscriptions
                        .iter()
                        .filter_map(|s| Pattern::parse(s).ok())
                        .collect(),
                )
            })
            .collect();
        let channels = st
            .channels
            .iter()
            .map(|c| {
                let before = prev_stats.and_then(|p| p.channels.iter().find(|o| o.name == c.name));
                let rate = |f: fn(&ChannelStats) -> u64| {
                    secs.map(|s| per_sec(f(c), before.map(f).unwrap_or(0), s))
                };
                let mut by_t = BTreeMap::new();
                for (t, pats) in &patterns {
                    if pats.iter().any(|p| p.matches(&c.name)) {
                        *by_t.entry(t.clone()).or_insert(0) += 1;
                    }
                }
                ChannelView {
                    rate_messages: rate(|c| c.published),
                    rate_bytes: rate(|c| c.bytes),
                    subscribers_by_transport: by_t,
                    stats: c.clone(),
                }
            })
            .collect();
        let clients = st
            .clients
            .iter()
            .map(|c| {
                let before = prev_stats.and_then(|p| p.clients.iter().find(|o| o.id == c.id));
                ClientView {
                    rate_out: secs.map(|s| {
                        per_sec(
                            c.messages_out,
                            before.map(|b| b.messages_out).unwrap_or(0),
                            s,
                        )
                    }),
                    slow: c.dropped > 0 || c.queue_messages >= slow_queue.max(1),
                    stats: c.clone(),
                }
            })
            .collect();
        let sample = Sample {
            time_ms: now_ms(),
            error: None,
            version: st.version.clone(),
            uptime_secs: st.uptime_secs,
            transports: st.transports.clone(),
            client_count: st.client_count,
            channel_count: st.channel_count,
            totals: st.totals.clone(),
            rates,
            channels,
            clients,
            components: st.components.clone(),
        };
        self.prev = Some((now, st));
        sample
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
