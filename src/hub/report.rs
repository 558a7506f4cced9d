//! The statistics snapshot of the whole hub (see `stats.rs` for its schema).

use std::time::SystemTime;

use super::*;

impl Hub {
    pub fn stats(&self) -> HubStats {
        let now = SystemTime::now();
        let mut channels: Vec<ChannelStats> = self
            .channels
            .iter()
            .map(|(name, c)| ChannelStats {
                name: name.to_string(),
                // Direct readers of the channel's ring count too (a client
                // may be both, through a wildcard: counted once).
                subscribers: {
                    let subs = self.current_subscribers(name, c);
                    subs.len() + c.direct.iter().filter(|d| !subs.contains(d)).count()
                },
                overflow: c.overflow.as_str().to_string(),
                published: c.published + c.published_direct,
                delivered: c.delivered,
                bytes: c.bytes,
                dropped: c.dropped,
            })
            .collect();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut clients: Vec<ClientStats> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.ring_endpoint)
            .map(|(id, p)| ClientStats {
                id: *id,
                name: p.name.clone(),
                transport: p.transport.name().to_string(),
                pid: p.ident.pid,
                uid: p.ident.uid,
                gid: p.ident.gid,
                subscriptions: p.patterns.iter().map(|p| p.to_string()).collect(),
                queue_messages: p.out.messages(),
                queue_bytes: p.out.total_bytes(),
                messages_in: p.counters.messages_in,
                messages_out: p.counters.messages_out,
                dropped: p.counters.dropped,
                blocked: p.blocked.is_some(),
            })
            .collect();
        // A ring reader's subscription is to the exact channel it reads.
        for (name, c) in &self.channels {
            for d in &c.direct {
                if let Some(cs) = clients.iter_mut().find(|cs| cs.id == *d) {
                    if !cs.subscriptions.iter().any(|s| s == &**name) {
                        cs.subscriptions.push(name.to_string());
                    }
                }
            }
        }
        clients.sort_by_key(|c| c.id);
        let epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        HubStats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: epoch(self.started),
            uptime_secs: now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            transports: self
                .transports
                .iter()
                .map(|t| t.name().to_string())
                .collect(),
            client_count: self.client_count(),
            channel_count: self.channels.len(),
            totals: self.totals.clone(),
            channels,
            clients,
            components: self.components.clone(),
        }
    }
}
