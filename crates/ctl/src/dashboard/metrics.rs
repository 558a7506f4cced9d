//! `/metrics`: a hub snapshot in the Prometheus text exposition format
//! (version 0.0.4). Names, types and labels are documented in
//! the DASHBOARD section of ipchubctl(1); the channel label is bounded to the top N channels
//! plus `(other)` (not a valid channel name, so it cannot collide).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::wire::stats::HubStats;

/// The label value that sums every channel beyond the top N.
pub const OTHER: &str = "(other)";

/// Longest component key or value exported as a label; longer ones are cut.
const MAX_LABEL: usize = 64;

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn value(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars().take(MAX_LABEL * 4) {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn cut(s: &str) -> &str {
    match s.char_indices().nth(MAX_LABEL) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The exposition for a snapshot, or for an unreachable hub (`None`).
pub fn render(stats: Option<&HubStats>, top_channels: usize) -> String {
    let mut o = Out(String::new());
    o.head(
        "ipchub_up",
        "gauge",
        "1 if the dashboard reached the hub for this scrape, else 0.",
    );
    o.value("ipchub_up", &[], u8::from(stats.is_some()));
    let Some(st) = stats else {
        return o.0;
    };
    o.head(
        "ipchub_info",
        "gauge",
        "Always 1; the hub's version as a label.",
    );
    o.value("ipchub_info", &[("version", &st.version)], 1);
    o.head(
        "ipchub_start_time_seconds",
        "gauge",
        "When the hub started, in seconds since the Unix epoch.",
    );
    o.value("ipchub_start_time_seconds", &[], st.started_at);
    o.head(
        "ipchub_clients",
        "gauge",
        "Clients connected (that this user may see).",
    );
    o.value("ipchub_clients", &[], st.client_count);
    o.head(
        "ipchub_channels",
        "gauge",
        "Channels known (that this user may see).",
    );
    o.value("ipchub_channels", &[], st.channel_count);
    let t = &st.totals;
    for (name, help, v) in [
        (
            "ipchub_messages_in_total",
            "Messages accepted from publishers.",
            t.messages_in,
        ),
        (
            "ipchub_messages_out_total",
            "Deliveries into subscriber queues.",
            t.messages_out,
        ),
        (
            "ipchub_bytes_in_total",
            "Payload bytes accepted from publishers.",
            t.bytes_in,
        ),
        (
            "ipchub_bytes_out_total",
            "Payload bytes delivered into subscriber queues.",
            t.bytes_out,
        ),
        (
            "ipchub_dropped_total",
            "Messages lost to drop-oldest or to a disconnected subscriber.",
            t.dropped,
        ),
    ] {
        o.head(name, "counter", help);
        o.value(name, &[], v);
    }

    // Channels: the top N by messages published, the rest summed.
    let mut chans: Vec<_> = st.channels.iter().collect();
    chans.sort_by(|a, b| b.published.cmp(&a.published).then(a.name.cmp(&b.name)));
    let split = chans.len().min(top_channels);
    let (top, rest) = chans.split_at(split);
    type Field = fn(&crate::wire::stats::ChannelStats) -> u64;
    let fields: [(&str, &str, &str, Field); 6] = [
        (
            "ipchub_channel_published_total",
            "counter",
            "Messages published on the channel.",
            |c| c.published,
        ),
        (
            "ipchub_channel_delivered_total",
            "counter",
            "Deliveries of the channel's messages.",
            |c| c.delivered,
        ),
        (
            "ipchub_channel_bytes_total",
            "counter",
            "Payload bytes published on the channel.",
            |c| c.bytes,
        ),
        (
            "ipchub_channel_dropped_total",
            "counter",
            "The channel's messages dropped.",
            |c| c.dropped,
        ),
        (
            "ipchub_channel_subscribers",
            "gauge",
            "Subscribers of the channel.",
            |c| c.subscribers as u64,
        ),
        (
            "ipchub_channel_ring_readers",
            "gauge",
            "Clients reading the channel's shared-memory ring in place.",
            |c| c.ring_readers as u64,
        ),
    ];
    for (name, kind, help, f) in fields {
        o.head(name, kind, help);
        for c in top {
            o.value(name, &[("channel", &c.name)], f(c));
        }
        if !rest.is_empty() {
            let sum: u64 = rest.iter().map(|c| f(c)).sum();
            o.value(name, &[("channel", OTHER)], sum);
        }
    }

    // Transports: a handful of fixed names, so no bound needed.
    #[derive(Default)]
    struct T {
        clients: u64,
        queue_messages: u64,
        queue_bytes: u64,
        blocked: u64,
    }
    let mut by_t: BTreeMap<&str, T> = st
        .transports
        .iter()
        .map(|t| (t.as_str(), T::default()))
        .collect();
    for c in &st.clients {
        let e = by_t.entry(c.transport.as_str()).or_default();
        e.clients += 1;
        e.queue_messages += c.queue_messages as u64;
        e.queue_bytes += c.queue_bytes as u64;
        e.blocked += u64::from(c.blocked);
    }
    type TField = fn(&T) -> u64;
    let tfields: [(&str, &str, TField); 4] = [
        (
            "ipchub_transport_clients",
            "Clients connected over the transport.",
            |t| t.clients,
        ),
        (
            "ipchub_transport_queue_messages",
            "Messages queued to the transport's clients.",
            |t| t.queue_messages,
        ),
        (
            "ipchub_transport_queue_bytes",
            "Bytes queued to the transport's clients.",
            |t| t.queue_bytes,
        ),
        (
            "ipchub_transport_blocked_clients",
            "The transport's publishers held back (overflow = block).",
            |t| t.blocked,
        ),
    ];
    for (name, help, f) in tfields {
        o.head(name, "gauge", help);
        for (t, v) in &by_t {
            o.value(name, &[("transport", t)], f(v));
        }
    }

    // Components report key=value text: numbers become values, the rest
    // an info series. Keys and values are cut to bound the labels.
    o.head(
        "ipchub_component_value",
        "gauge",
        "A numeric value a component (e.g. bridge.mqtt) reports.",
    );
    for (comp, kv) in &st.components {
        for (k, v) in kv {
            if let Ok(n) = v.parse::<f64>() {
                if n.is_finite() {
                    o.value(
                        "ipchub_component_value",
                        &[("component", cut(comp)), ("key", cut(k))],
                        n,
                    );
                }
            }
        }
    }
    o.head(
        "ipchub_component_info",
        "gauge",
        "Always 1; a component's non-numeric state as the value label.",
    );
    for (comp, kv) in &st.components {
        for (k, v) in kv {
            if v.parse::<f64>().is_err() {
                o.value(
                    "ipchub_component_info",
                    &[("component", cut(comp)), ("key", cut(k)), ("value", cut(v))],
                    1,
                );
            }
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stats::{ChannelStats, Totals};

    fn chan(name: &str, published: u64) -> ChannelStats {
        ChannelStats {
            name: name.into(),
            subscribers: 1,
            overflow: "block".into(),
            published,
            delivered: published,
            bytes: published * 10,
            dropped: 0,
            ring: false,
            ring_readers: 0,
            retained_bytes: 0,
            stored_messages: 0,
            stored_bytes: 0,
            first_seq: 0,
            last_seq: 0,
        }
    }

    #[test]
    fn channels_beyond_the_top_n_are_summed_under_other() {
        let st = HubStats {
            version: "0.1.0".into(),
            started_at: 1,
            uptime_secs: 2,
            transports: vec!["socket".into()],
            client_count: 0,
            channel_count: 3,
            totals: Totals::default(),
            channels: vec![chan("a", 5), chan("b", 50), chan("c", 7)],
            clients: vec![],
            per_transport: Vec::new(),
            components: BTreeMap::from([(
                "bridge.mqtt".to_string(),
                BTreeMap::from([
                    ("state".to_string(), "conn\"ected".to_string()),
                    ("spooled".to_string(), "3".to_string()),
                ]),
            )]),
        };
        let text = render(Some(&st), 1);
        assert!(
            text.contains("ipchub_channel_published_total{channel=\"b\"} 50\n"),
            "{text}"
        );
        assert!(text.contains("ipchub_channel_published_total{channel=\"(other)\"} 12\n"));
        assert!(!text.contains("channel=\"a\""));
        assert!(
            text.contains("ipchub_component_value{component=\"bridge.mqtt\",key=\"spooled\"} 3\n")
        );
        assert!(text.contains("value=\"conn\\\"ected\"} 1\n"), "{text}");
        assert!(text.contains("ipchub_transport_clients{transport=\"socket\"} 0\n"));
        let all = render(Some(&st), 10);
        assert!(!all.contains(OTHER));
        assert_eq!(render(None, 1), "# HELP ipchub_up 1 if the dashboard reached the hub for this scrape, else 0.\n# TYPE ipchub_up gauge\nipchub_up 0\n");
    }
}
