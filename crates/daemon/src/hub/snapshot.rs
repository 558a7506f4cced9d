//! A client's routing state as data, for a planned restart: the old hub
//! exports each client it hands over, the new one imports it under the
//! same id (docs/ARCHITECTURE.md, "Planned restart").

use serde::{Deserialize, Serialize};

use super::queue::{Kind, OutQueue};
use super::{mark_dirty, Credentials, Hub, Identity, Peer, PeerCounters, TransportKind};
use crate::hub::ClientId;
use std::time::Instant;

/// One client as the hub knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientSnapshot {
    pub id: ClientId,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub transport: String,
    pub patterns: Vec<String>,
    /// The frames queued for it, whole; `head_written` bytes of the first
    /// were written already.
    #[serde(with = "b64")]
    pub queued: Vec<u8>,
    #[serde(default)]
    pub head_written: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub dropped: u64,
    /// It asked for channel sequence numbers in DATA (absent from older
    /// states: false).
    #[serde(default)]
    pub wants_seq: bool,
    /// SUBSCRIBE flag RETAIN_AS_PUBLISHED was given (absent in states
    /// written before it existed: false).
    #[serde(default)]
    pub wants_retain_flag: bool,
    /// Payload bytes it published and was sent (its transport's byte
    /// counters in statistics go on from them).
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("client id {0} is taken")]
    IdTaken(ClientId),
    #[error("client {0}: its queued bytes are not whole frames")]
    Queue(ClientId),
    #[error("unknown transport '{0}'")]
    Transport(String),
    #[error("subscription '{pattern}': {text}")]
    Subscribe { pattern: String, text: String },
}

impl Hub {
    /// The next client id this hub hands out (carried over, so a new
    /// client never takes an id a handed-over one holds).
    pub fn next_client_id(&self) -> ClientId {
        self.next_id
    }

    pub fn set_next_client_id(&mut self, id: ClientId) {
        self.next_id = self.next_id.max(id).max(1);
    }

    pub fn export_client(&self, id: ClientId) -> Option<ClientSnapshot> {
        let p = self.peers.get(&id)?;
        let (queued, head_written) = p.out.export_raw();
        Some(ClientSnapshot {
            id,
            pid: p.ident.pid,
            uid: p.ident.uid,
            gid: p.ident.gid,
            groups: p.creds.groups.clone(),
            name: p.name.clone(),
            transport: p.transport.name().to_string(),
            patterns: p.patterns.iter().map(|p| p.as_str().to_string()).collect(),
            queued,
            head_written,
            messages_in: p.counters.messages_in,
            messages_out: p.counters.messages_out,
            dropped: p.counters.dropped,
            wants_seq: p.wants_seq,
            wants_retain_flag: p.wants_retain_flag,
            bytes_in: p.counters.bytes_in,
            bytes_out: p.counters.bytes_out,
        })
    }

    /// Take over a client from the previous hub under its id: its
    /// subscriptions are made again (the access policy and limits apply
    /// as to any subscription) and its queued bytes are queued first.
    pub fn import_client(&mut self, s: &ClientSnapshot) -> Result<(), ImportError> {
        if self.peers.contains_key(&s.id) || s.id == 0 {
            return Err(ImportError::IdTaken(s.id));
        }
        let transport = TransportKind::parse(&s.transport)
            .ok_or_else(|| ImportError::Transport(s.transport.clone()))?;
        let q = &self.cfg.queue;
        let mut out = OutQueue::new(q.max_messages, q.max_bytes);
        // Frame by frame (a message transport writes one per message),
        // as control frames: they never count against (or wait for) the
        // queue's limits.
        let mut rest = &s.queued[..];
        while !rest.is_empty() {
            let len = match crate::wire::frame::decode_header(rest, u32::MAX) {
                Ok(Some(h)) if h.frame_len() <= rest.len() => h.frame_len(),
                _ => return Err(ImportError::Queue(s.id)),
            };
            out.push(Kind::Control, &[&rest[..len]]);
            rest = &rest[len..];
        }
        if !out.set_head_written(s.head_written) {
            return Err(ImportError::Queue(s.id));
        }
        let ident = Identity {
            pid: s.pid,
            uid: s.uid,
            gid: s.gid,
        };
        self.peers.insert(
            s.id,
            Peer {
                ident,
                creds: Credentials {
                    uid: s.uid,
                    gid: s.gid,
                    groups: s.groups.clone(),
                },
                internal: false,
                ring_endpoint: false,
                accounted: 0,
                transport,
                name: s.name.chars().take(64).collect(),
                patterns: Vec::new(),
                out,
                blocked: None,
                holding: Vec::new(),
                dirty: false,
                greeted: true,
                counters: PeerCounters {
                    messages_in: s.messages_in,
                    messages_out: s.messages_out,
                    dropped: s.dropped,
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out,
                    ..PeerCounters::default()
                },
                max_frame: None,
                told_too_big: false,
                wants_seq: s.wants_seq,
                wants_retain_flag: s.wants_retain_flag,
            },
        );
        self.set_next_client_id(s.id.wrapping_add(1));
        for pattern in &s.patterns {
            if let Err((_, text)) = self.subscribe(s.id, pattern) {
                self.remove(s.id);
                return Err(ImportError::Subscribe {
                    pattern: pattern.clone(),
                    text,
                });
            }
        }
        let p = self.peers.get_mut(&s.id).expect("just inserted");
        if !p.out.is_empty() {
            mark_dirty(&mut self.dirty, s.id, p);
        }
        Ok(())
    }
}

/// Bytes in the hand-over's JSON as one base64 string (RFC 4648, padded):
/// a JSON array of numbers costs up to four bytes per byte against the
/// state's size bound. An array is still read (states written before).
pub mod b64 {
    use serde::{de, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
                } else {
                    out.push(b'=');
                }
            }
        }
        String::from_utf8(out).expect("ASCII")
    }

    /// The bytes of a padded base64 string; None for anything else.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let t = text.as_bytes();
        if !t.len().is_multiple_of(4) {
            return None;
        }
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(t.len() / 4 * 3);
        let quads = t.len() / 4;
        for (q, chunk) in t.chunks(4).enumerate() {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && q + 1 != quads) {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                n = (n << 6) | val(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Some(out)
    }

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("base64 bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                decode(v).ok_or_else(|| E::custom("not base64"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// The hub's own state beyond its clients, for a planned restart: what a
/// client would notice losing (statistics counters, retained values, the
/// memory history of channels). Disk channels are not in it: their logs
/// are read back at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HubSnapshot {
    /// Hub-wide counters (the stored-message and storage figures in it are
    /// recomputed, never taken over).
    #[serde(default)]
    pub totals: super::Totals,
    /// Byte counters of the clients gone, by transport.
    #[serde(default)]
    pub gone_bytes: Vec<GoneBytes>,
    #[serde(default)]
    pub channels: Vec<ChannelCounters>,
    #[serde(default)]
    pub retained: Vec<RetainedValue>,
    /// Channels kept in memory with history bounds.
    #[serde(default)]
    pub history: Vec<HistorySnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GoneBytes {
    pub transport: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One channel of the channel table: the uid charged for it while nobody
/// holds it, and its counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelCounters {
    pub name: String,
    pub owner: u32,
    pub published: u64,
    pub delivered: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// Direct publishes into its ring, and the ring's count when last
    /// counted (the ring goes on counting in its shared memory).
    #[serde(default)]
    pub published_direct: u64,
    #[serde(default)]
    pub direct_seen: u64,
}

/// A channel's retained value, charged to `uid`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetainedValue {
    pub channel: String,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    pub origin: ClientId,
    pub seq: u64,
    pub priority: u8,
    pub uid: u32,
}

/// A memory channel's history: its numbering and its stored messages,
/// oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistorySnapshot {
    pub channel: String,
    /// The channel sequence number its next message gets.
    pub next_seq: u64,
    pub entries: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    pub chan_seq: u64,
    /// How old it was when handed over (its age bound goes on counting).
    pub age_ms: u64,
    pub origin: ClientId,
    pub seq: u64,
    pub priority: u8,
    pub uid: u32,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
}

/// What a hub took over of a [`HubSnapshot`], and what it left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    pub channels: usize,
    pub channels_left: usize,
    pub retained: usize,
    pub retained_left: usize,
    pub history_messages: usize,
    pub history_left: usize,
}

impl Hub {
    /// Everything of [`HubSnapshot`] but the byte counters of clients gone
    /// (see [`export_gone_bytes`](Self::export_gone_bytes)). Taken before
    /// the rings are (a ring leaving resets its channel's direct count).
    pub fn export_hub_state(&self) -> HubSnapshot {
        let now = Instant::now();
        let mut channels: Vec<(Option<u64>, ChannelCounters)> = self
            .channels
            .iter()
            .map(|(name, c)| {
                (
                    c.idle_at,
                    ChannelCounters {
                        name: name.to_string(),
                        owner: c.owner,
                        published: c.published,
                        delivered: c.delivered,
                        bytes: c.bytes,
                        dropped: c.dropped,
                        published_direct: c.published_direct,
                        direct_seen: c.direct_seen,
                    },
                )
            })
            .collect();
        // Held channels first, then those nobody holds, oldest first: the
        // successor makes them in this order, so they are collected in the
        // same order.
        channels.sort_by_key(|(idle, _)| (idle.is_some(), *idle));
        HubSnapshot {
            totals: self.totals.clone(),
            gone_bytes: self.export_gone_bytes(),
            channels: channels.into_iter().map(|(_, c)| c).collect(),
            retained: self.retained.export(),
            history: self.history.export(now),
        }
    }

    /// The byte counters of the clients that left, by transport.
    pub fn export_gone_bytes(&self) -> Vec<GoneBytes> {
        self.gone_bytes
            .iter()
            .map(|(t, b)| GoneBytes {
                transport: t.name().to_string(),
                bytes_in: b.bytes_in,
                bytes_out: b.bytes_out,
            })
            .collect()
    }

    /// The hand-over failed and this hub carries on: the byte counters of
    /// the clients gone are again what they were before it.
    pub fn replace_gone_bytes(&mut self, g: &[GoneBytes]) {
        self.gone_bytes.clear();
        for g in g {
            if let Some(kind) = TransportKind::parse(&g.transport) {
                self.note_gone_bytes(kind, g.bytes_in, g.bytes_out);
            }
        }
    }

    /// The hand-over failed and this hub carries on: its rings, taken over
    /// again, go on counting their direct publishes from where they were.
    pub fn restore_direct_seen(&mut self, s: &HubSnapshot) {
        for c in &s.channels {
            if let Some(ch) = self.channels.get_mut(c.name.as_str()) {
                ch.direct_seen = c.direct_seen;
            }
        }
    }

    /// Take over a predecessor's [`HubSnapshot`], before its clients and
    /// rings (so the channels' counters are in place when rings count on).
    /// Today's configuration and bounds apply: a channel the table has no
    /// room for (without collecting another), a retained value or stored
    /// message past a bound, or one larger than `hub.max_message_size`
    /// is left out, and logged; nothing here fails.
    pub fn import_hub_state(&mut self, s: &HubSnapshot) -> Imported {
        let mut done = Imported::default();
        let t = &mut self.totals;
        t.messages_in = t.messages_in.saturating_add(s.totals.messages_in);
        t.messages_out = t.messages_out.saturating_add(s.totals.messages_out);
        t.bytes_in = t.bytes_in.saturating_add(s.totals.bytes_in);
        t.bytes_out = t.bytes_out.saturating_add(s.totals.bytes_out);
        t.dropped = t.dropped.saturating_add(s.totals.dropped);
        for g in &s.gone_bytes {
            if let Some(kind) = TransportKind::parse(&g.transport) {
                self.note_gone_bytes(kind, g.bytes_in, g.bytes_out);
            }
        }
        for c in &s.channels {
            let name = c.name.as_str();
            if crate::wire::channel::validate_name(name).is_err() {
                done.channels_left += 1;
                continue;
            }
            let made = self.channels.contains_key(name)
                || (self.room_for_channel(c.owner) && self.ensure_channel(name, c.owner).is_ok());
            if !made {
                done.channels_left += 1;
                continue;
            }
            let ch = self.channels.get_mut(name).expect("made above");
            ch.published = ch.published.saturating_add(c.published);
            ch.delivered = ch.delivered.saturating_add(c.delivered);
            ch.bytes = ch.bytes.saturating_add(c.bytes);
            ch.dropped = ch.dropped.saturating_add(c.dropped);
            ch.published_direct = ch.published_direct.saturating_add(c.published_direct);
            ch.direct_seen = c.direct_seen;
            done.channels += 1;
        }
        let max_payload = self.cfg.hub.max_message_size as usize;
        for v in &s.retained {
            let refused = if crate::wire::channel::validate_name(&v.channel).is_err() {
                Some("not a channel name".to_string())
            } else if v.payload.len() > max_payload {
                Some(format!(
                    "{} bytes, more than hub.max_message_size",
                    v.payload.len()
                ))
            } else {
                self.retained
                    .import(
                        v,
                        self.cfg.hub.max_retained_bytes_per_uid,
                        self.cfg.hub.max_retained_bytes,
                    )
                    .err()
                    .map(|e| e.to_string())
            };
            match refused {
                None => done.retained += 1,
                Some(why) => {
                    done.retained_left += 1;
                    tracing::warn!(channel = %v.channel, "planned restart: retained value left out: {why}");
                }
            }
        }
        let now = Instant::now();
        for h in &s.history {
            let name = h.channel.as_str();
            let bounds = match self.cfg.history_for(name) {
                _ if crate::wire::channel::validate_name(name).is_err() => {
                    Err("not a channel name".to_string())
                }
                Some(b) if b.disk.is_none() => Ok(b),
                Some(_) => Err("the channel is stored on disk now (its log is read back)".into()),
                None => Err("the channel has no history bounds now".into()),
            };
            let res = bounds.and_then(|b| {
                self.history.import(
                    h,
                    b,
                    (
                        self.cfg.hub.max_history_bytes_per_uid,
                        self.cfg.hub.max_history_bytes,
                    ),
                    max_payload,
                    now,
                )
            });
            match res {
                Ok((kept, left)) => {
                    done.history_messages += kept;
                    done.history_left += left;
                    if left > 0 {
                        tracing::warn!(channel = name, messages = left, "planned restart: stored messages left out (past today's history bounds or hub.max_message_size)");
                    }
                }
                Err(why) => {
                    done.history_left += h.entries.len();
                    tracing::warn!(
                        channel = name,
                        messages = h.entries.len(),
                        "planned restart: channel history left out: {why}"
                    );
                }
            }
        }
        if done.channels_left > 0 {
            tracing::warn!(
                channels = done.channels_left,
                "planned restart: channels nobody holds left out (no room in the channel table: hub.max_channels, hub.max_channels_per_uid); their counters are gone"
            );
        }
        done
    }

    /// Room for one more channel charged to `uid` without collecting one
    /// (the checks of `make_room`).
    fn room_for_channel(&self, uid: u32) -> bool {
        let max = self.cfg.hub.max_channels;
        let mine = self.uid_channels.get(&uid).copied().unwrap_or(0);
        let total = self.channels.len();
        let share = max.saturating_sub(total - mine).div_ceil(2);
        mine < self.cfg.hub.max_channels_per_uid && mine < share && total < max
    }
}

#[cfg(test)]
mod b64_tests {
    use super::b64;

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        for n in 0..70usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let text = b64::encode(&data);
            assert_eq!(text.len(), n.div_ceil(3) * 4);
            assert_eq!(b64::decode(&text).unwrap(), data, "{n}");
        }
        assert_eq!(b64::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64::encode(b"fo"), "Zm8=");
        for bad in ["Zm9", "Zm=v", "Z===", "Zm8=Zm8=", "Zm9v!A==", "=AAA"] {
            assert_eq!(b64::decode(bad), None, "{bad}");
        }
        // A JSON array (what states held before) is still read.
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(with = "b64")]
            b: Vec<u8>,
        }
        let t: T = serde_json::from_str(r#"{"b":[1,2,255]}"#).unwrap();
        assert_eq!(t.b, vec![1, 2, 255]);
        let t: T = serde_json::from_str(r#"{"b":"AQL/"}"#).unwrap();
        assert_eq!(t.b, vec![1, 2, 255]);
    }
}

#[cfg(test)]
mod hub_state_tests {
    use super::*;
    use crate::config::Config;
    use crate::wire::{decode, encode, FrameType, ACK_REQUESTED, RETAIN};

    fn cfg(extra: &str) -> crate::config::Config {
        let text = format!(
            "{extra}\n[[channel]]\npattern = \"log/#\"\nhistory_messages = 10\n\n\
             [[channel]]\npattern = \"disk/#\"\nhistory_messages = 10\nstorage = \"disk\"\n"
        );
        Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    fn client(hub: &mut Hub, uid: u32) -> ClientId {
        let id = hub
            .admit(Identity {
                pid: 1,
                uid,
                gid: uid,
            })
            .unwrap();
        hub.set_transport(id, TransportKind::Pipe, "t");
        id
    }

    fn publish(hub: &mut Hub, id: ClientId, chan: &str, payload: &[u8], flags: u8) {
        let mut v = Vec::new();
        encode(
            &mut v,
            FrameType::Publish,
            flags | ACK_REQUESTED,
            0,
            chan,
            payload,
            0,
            7,
        );
        let (f, _) = decode(&v, 1 << 20).unwrap().unwrap();
        hub.handle(id, &f, Instant::now());
        let q = hub.queue(id).unwrap();
        let n = q.total_bytes();
        q.consume(n);
    }

    /// As the successor reads it: through JSON.
    fn carried(s: &HubSnapshot) -> HubSnapshot {
        let json = serde_json::to_string(s).unwrap();
        // Payload bytes as base64 strings, never arrays of numbers.
        assert!(!json.contains("[0,"), "{json}");
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn counters_retained_values_and_history_cross_with_their_numbers() {
        let mut a = Hub::new(cfg(""));
        let id = client(&mut a, 1000);
        for i in 1..=15u8 {
            publish(&mut a, id, "log/a", &[i; 100], 0);
        }
        publish(&mut a, id, "door", b"closed", RETAIN);
        publish(&mut a, id, "x", b"plain", 0);
        let snap = carried(&a.export_hub_state());
        assert_eq!(snap.history.len(), 1);
        assert_eq!(snap.history[0].next_seq, 16);
        assert_eq!(snap.history[0].entries.len(), 10);

        let mut b = Hub::new(cfg(""));
        let done = b.import_hub_state(&snap);
        assert_eq!(
            (done.channels, done.retained, done.history_messages),
            (3, 1, 10),
            "{done:?}"
        );
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.totals, sb.totals);
        for (ca, cb) in sa.channels.iter().zip(&sb.channels) {
            assert_eq!(
                (&ca.name, ca.published, ca.delivered, ca.bytes, ca.dropped),
                (&cb.name, cb.published, cb.delivered, cb.bytes, cb.dropped)
            );
            assert_eq!(
                (
                    ca.retained_bytes,
                    ca.stored_messages,
                    ca.first_seq,
                    ca.last_seq
                ),
                (
                    cb.retained_bytes,
                    cb.stored_messages,
                    cb.first_seq,
                    cb.last_seq
                )
            );
        }
        // Numbering goes on where it was.
        assert_eq!(b.history.next_seq("log/a"), 16);
        let id = client(&mut b, 1000);
        publish(&mut b, id, "log/a", b"16", 0);
        let f = b.history.figures("log/a").unwrap();
        assert_eq!((f.first_seq, f.last_seq, f.messages), (7, 16, 10));
        // Taken over twice: the history is not doubled, the retained value
        // replaced (not charged twice).
        let again = b.import_hub_state(&snap);
        assert_eq!((again.history_messages, again.history_left), (0, 10));
        assert_eq!(b.stats().totals.retained_messages, 1);
        assert_eq!(
            b.stats().totals.retained_bytes,
            a.stats().totals.retained_bytes
        );
    }

    #[test]
    fn todays_bounds_apply_to_what_is_taken_over() {
        let mut a = Hub::new(cfg(""));
        let id = client(&mut a, 1000);
        for i in 1..=10u8 {
            publish(&mut a, id, "log/a", &[i; 1000], 0);
        }
        publish(&mut a, id, "door", &[1; 3000], RETAIN);
        publish(&mut a, id, "small", b"s", RETAIN);
        let mut snap = carried(&a.export_hub_state());
        // A history of a channel with no bounds now, and of a disk one.
        let mut other = snap.history[0].clone();
        other.channel = "nobounds".into();
        snap.history.push(other);
        let mut disk = snap.history[0].clone();
        disk.channel = "disk/a".into();
        snap.history.push(disk);
        // Room for 3 stored messages of uid 1000 and a small retained value.
        let per = 1000 + "log/a".len() + super::super::history::ENTRY_OVERHEAD;
        let mut b = Hub::new(cfg(&format!(
            "[hub]\nmax_history_bytes_per_uid = {}\nmax_retained_bytes_per_uid = 2000\n",
            3 * per + 10
        )));
        let done = b.import_hub_state(&snap);
        assert_eq!((done.retained, done.retained_left), (1, 1), "{done:?}");
        assert_eq!(
            (done.history_messages, done.history_left),
            (3, 27),
            "{done:?}"
        );
        // The newest are kept, their numbers unchanged.
        let f = b.history.figures("log/a").unwrap();
        assert_eq!((f.first_seq, f.last_seq), (8, 10));
        assert!(b.history.figures("nobounds").is_none());
        assert!(b.history.figures("disk/a").is_none());
        assert!(b.retained.has("small") && !b.retained.has("door"));
        // Larger than today's hub.max_message_size: left out.
        let mut c = Hub::new(cfg("[hub]\nmax_message_size = 500\n"));
        let done = c.import_hub_state(&snap);
        assert_eq!((done.retained, done.history_messages), (1, 0), "{done:?}");
    }

    #[test]
    fn the_channel_table_bounds_apply_and_nothing_is_collected() {
        let mut a = Hub::new(cfg(""));
        let id = client(&mut a, 1000);
        for i in 0..8 {
            publish(&mut a, id, &format!("c/{i}"), b"x", 0);
        }
        let snap = carried(&a.export_hub_state());
        let mut b = Hub::new(cfg("[hub]\nmax_channels = 4\n"));
        let done = b.import_hub_state(&snap);
        assert_eq!(b.channel_count(), done.channels);
        assert!(done.channels <= 4 && done.channels_left >= 4, "{done:?}");
        assert_eq!(b.stats().totals.messages_in, 8);
    }
}
