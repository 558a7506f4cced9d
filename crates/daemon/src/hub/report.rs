//! The statistics snapshot of the hub (see `stats.rs` for its schema), built
//! for a [`Viewer`]: the one place that decides who may see which channel
//! and which client.

use std::time::SystemTime;

use super::stats::{TransportStats, Viewer};
use super::*;

impl Hub {
    /// Everything (for the hub's own use and privileged callers).
    pub fn stats(&self) -> HubStats {
        self.stats_for(&Viewer::All)
    }

    /// The transports the daemon serves, by name, in the order it lists them.
    pub fn transport_names(&self) -> Vec<&'static str> {
        self.transports.iter().map(|t| t.name()).collect()
    }

    /// Clients and bytes per transport served: the live clients' counters
    /// plus those of the clients that left.
    fn per_transport(&self) -> Vec<TransportStats> {
        self.transports
            .iter()
            .map(|t| {
                let gone = self.gone_bytes(*t);
                let mut ts = TransportStats {
                    name: t.name().to_string(),
                    clients: 0,
                    bytes_in: gone.bytes_in,
                    bytes_out: gone.bytes_out,
                };
                for p in self.peers.values() {
                    if p.transport == *t && !p.ring_endpoint && !p.internal && p.greeted {
                        ts.clients += 1;
                        ts.bytes_in += p.counters.bytes_in;
                        ts.bytes_out += p.counters.bytes_out;
                    }
                }
                ts
            })
            .collect()
    }

    /// The STATS_REPLY payload for client `id`: what its credentials may see.
    pub(super) fn stats_reply(&self, id: ClientId) -> Vec<u8> {
        let viewer = match self.peers.get(&id) {
            Some(p) if p.internal => Viewer::All,
            Some(p) => Viewer::of(&p.creds, nix::unistd::geteuid().as_raw()),
            None => Viewer::Public,
        };
        serde_json::to_vec(&self.stats_for(&viewer)).unwrap_or_default()
    }

    /// A channel is shown if the viewer may subscribe to it under the
    /// `[access]` rules (so a name it may not read is never shown, nor its
    /// counters); a client only to its own uid. Totals and counts are
    /// hub-wide aggregates (see `stats.rs`).
    pub fn stats_for(&self, viewer: &Viewer) -> HubStats {
        let now = SystemTime::now();
        let sees_channel = |c: &Channel| match viewer {
            Viewer::All => true,
            Viewer::User(creds) => self.policy.allows_with(c.rule, creds, Op::Subscribe),
            Viewer::Public => self.policy.open_to_all(c.rule, Op::Subscribe),
        };
        let sees_client = |p: &Peer| match viewer {
            Viewer::All => true,
            Viewer::User(creds) => p.ident.uid == creds.uid,
            Viewer::Public => false,
        };
        let hist = |name: &str| self.history.figures(name).unwrap_or_default();
        let mut channels: Vec<ChannelStats> = self
            .channels
            .iter()
            .filter(|(_, c)| sees_channel(c))
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
                ring: c.ring.is_some(),
                ring_readers: c.direct.len(),
                retained_bytes: self.retained.bytes_of(name).unwrap_or(0),
                stored_messages: hist(name).messages,
                stored_bytes: hist(name).bytes,
                first_seq: hist(name).first_seq,
                last_seq: hist(name).last_seq,
            })
            .collect();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut clients: Vec<ClientStats> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.ring_endpoint && sees_client(p))
            .map(|(id, p)| ClientStats {
                id: *id,
                name: p.name.clone(),
                transport: p.transport.name().to_string(),
                pid: p.ident.pid,
                uid: p.ident.uid,
                gid: p.ident.gid,
                subscriptions: p.patterns.iter().map(|p| p.to_string()).collect(),
                // Frames and bytes alike: answers (ACK, STATS_REPLY…) and
                // notices wait in the same queue as messages.
                queue_messages: p.out.frames(),
                queue_bytes: p.out.total_bytes(),
                messages_in: p.counters.messages_in,
                messages_out: p.counters.messages_out,
                messages_delivered: p.out.written(),
                bytes_in: p.counters.bytes_in,
                bytes_out: p.counters.bytes_out,
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
            totals: {
                let (n, bytes) = self.retained.totals();
                let (hn, hbytes) = self.history.totals();
                Totals {
                    retained_messages: n as u64,
                    retained_bytes: bytes as u64,
                    history_messages: hn as u64,
                    history_bytes: hbytes as u64,
                    storage_errors: self.storage_failures(),
                    storage_syncs: self.storage_syncs().0,
                    storage_synced_acks: self.storage_syncs().1,
                    ..self.totals.clone()
                }
            },
            per_transport: self.per_transport(),
            channels,
            clients,
            // Components (the MQTT bridge's broker, its state) are the
            // administrator's business.
            components: match viewer {
                Viewer::All => self.components.clone(),
                _ => Default::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessConfig, AccessDefault, AccessRule};

    fn client(hub: &mut Hub, uid: u32, patterns: &[&str]) -> ClientId {
        let groups = if uid == 1000 { vec![50] } else { Vec::new() };
        let id = hub
            .admit_with_groups(
                Identity {
                    pid: 1,
                    uid,
                    gid: uid,
                },
                groups,
            )
            .unwrap();
        hub.set_transport(id, TransportKind::Socket, &format!("uid{uid}"));
        for p in patterns {
            hub.subscribe(id, p).unwrap();
        }
        id
    }

    #[test]
    fn each_viewer_sees_what_its_credentials_may_read() {
        let cfg = Config {
            access: AccessConfig {
                default: AccessDefault::Allow,
                rule: vec![
                    AccessRule {
                        pattern: "team/#".into(),
                        publish: vec!["gid:50".into()],
                        subscribe: vec!["gid:50".into()],
                    },
                    AccessRule {
                        pattern: "root/#".into(),
                        publish: vec!["uid:0".into()],
                        subscribe: vec!["uid:0".into()],
                    },
                ],
            },
            ..Config::default()
        };
        let mut hub = Hub::new(cfg);
        let root = client(&mut hub, 0, &["root/secret"]);
        let member = client(&mut hub, 1000, &["team/x"]);
        let other = client(&mut hub, 1001, &["pub/news"]);
        let names = |st: &HubStats| -> (Vec<String>, Vec<ClientId>) {
            (
                st.channels.iter().map(|c| c.name.clone()).collect(),
                st.clients.iter().map(|c| c.id).collect(),
            )
        };
        let all = hub.stats_for(&Viewer::All);
        assert_eq!(
            names(&all),
            (
                vec!["pub/news".into(), "root/secret".into(), "team/x".into()],
                vec![root, member, other]
            )
        );
        let user = |uid, groups: Vec<u32>| {
            Viewer::User(Credentials {
                uid,
                gid: uid,
                groups,
            })
        };
        let m = hub.stats_for(&user(1000, vec![50]));
        assert_eq!(
            names(&m),
            (vec!["pub/news".into(), "team/x".into()], vec![member])
        );
        let o = hub.stats_for(&user(1001, vec![]));
        assert_eq!(names(&o), (vec!["pub/news".into()], vec![other]));
        let public = hub.stats_for(&Viewer::Public);
        assert_eq!(names(&public), (vec!["pub/news".into()], vec![]));
        // Aggregates stay hub-wide in every view.
        assert_eq!((o.client_count, o.channel_count), (3, 3));
        assert_eq!(Viewer::of(&Credentials::default(), 996), Viewer::All);
        assert_eq!(
            Viewer::of(
                &Credentials {
                    uid: 996,
                    ..Default::default()
                },
                996
            ),
            Viewer::All
        );
    }
}
