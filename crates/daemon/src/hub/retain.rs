//! Retained messages: the last value of a channel, kept in memory and sent
//! to each new subscriber first (MQTT's retain).
//!
//! - Kept apart from the channel table, so a channel collected for room
//!   keeps its retained value (as a broker does) and the table's bounds stay
//!   what they were.
//! - Bounded: every value costs its payload, its name and [`ENTRY_OVERHEAD`];
//!   it is charged to the uid that published it (`hub.max_retained_bytes_per_uid`)
//!   and to the hub (`hub.max_retained_bytes`) until replaced or cleared.
//!   A retained publish past a bound is refused before anything is delivered.
//! - The seam: a value is stored when its publish was delivered, in the
//!   same step, and sent to a subscriber right after the ACK of its
//!   SUBSCRIBE, in the same step; the hub is single-threaded, so every
//!   later message follows the retained one in the subscriber's queue and
//!   none comes before it: no gap, no duplicate. Channels with a shared-memory
//!   ring are the exception the hub avoids: the ring orders messages on its
//!   own, so a channel holding a retained value gets no ring (its readers are
//!   relayed), and a retained publish onto a channel that has one is refused.
//! - With nothing retained and no `retain = true` channel the data path pays
//!   one flag test per publish and one per subscribe.

use super::*;
use crate::wire::WITH_RETAINED;

/// Bookkeeping charged per retained value beyond its payload and name.
pub const ENTRY_OVERHEAD: usize = 64;

/// One channel's retained value.
pub(super) struct Retained {
    payload: Box<[u8]>,
    origin: ClientId,
    seq: u64,
    priority: u8,
    /// The uid charged for it, and how much.
    uid: u32,
    cost: usize,
}

/// Every retained value and what each uid is charged for them.
#[derive(Default)]
pub(super) struct RetainStore {
    values: HashMap<Box<str>, Retained>,
    by_uid: HashMap<u32, usize>,
    bytes: usize,
}

impl RetainStore {
    pub(super) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub(super) fn has(&self, channel: &str) -> bool {
        self.values.contains_key(channel)
    }

    /// Retained values and their bytes (with overhead), for statistics.
    pub(super) fn totals(&self) -> (usize, usize) {
        (self.values.len(), self.bytes)
    }

    /// The bytes of `channel`'s retained value, if it has one.
    pub(super) fn bytes_of(&self, channel: &str) -> Option<usize> {
        self.values.get(channel).map(|r| r.cost)
    }

    /// A retained value read back from a channel log at start (charged to
    /// its publisher's uid as when it was set; the bounds were checked then).
    pub(super) fn restore(&mut self, channel: &str, r: &crate::store::Record) {
        self.remove(channel);
        let cost = cost_of(channel, r.payload.len());
        self.bytes += cost;
        *self.by_uid.entry(r.uid).or_insert(0) += cost;
        self.values.insert(
            channel.into(),
            Retained {
                payload: r.payload.clone().into(),
                origin: r.origin,
                seq: r.pub_seq,
                priority: r.priority,
                uid: r.uid,
                cost,
            },
        );
    }

    fn remove(&mut self, channel: &str) {
        if let Some(old) = self.values.remove(channel) {
            self.bytes -= old.cost;
            if let Some(n) = self.by_uid.get_mut(&old.uid) {
                *n -= old.cost;
                if *n == 0 {
                    self.by_uid.remove(&old.uid);
                }
            }
        }
    }
}

/// Why a retained publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetainError {
    #[error("uid {uid} would hold {would} bytes of retained messages (limit hub.max_retained_bytes_per_uid = {limit})")]
    OverUid {
        uid: u32,
        would: usize,
        limit: usize,
    },
    #[error("the hub would hold {would} bytes of retained messages (limit hub.max_retained_bytes = {limit})")]
    OverTotal { would: usize, limit: usize },
    #[error("channel '{0}' is carried by a shared-memory channel ring, which the hub does not order: retain on it needs a relayed channel (retain = true in a [[channel]] block keeps rings off it)")]
    RingChannel(String),
}

impl Hub {
    /// Whether a publish of `frame` on channel `ch` sets the retained value.
    #[inline]
    pub(super) fn wants_retain(frame: &Frame<'_>, ch: &Channel) -> bool {
        frame.header.flags & RETAIN != 0 || ch.retain
    }

    /// Check, before delivering, that `uid` may store `frame` as `channel`'s
    /// retained value. An empty payload clears and is always allowed.
    pub(super) fn check_retain(&self, uid: u32, frame: &Frame<'_>) -> Result<(), RetainError> {
        let ch = &self.channels[frame.channel];
        if ch.ring.is_some() {
            return Err(RetainError::RingChannel(frame.channel.to_string()));
        }
        if frame.payload.is_empty() {
            return Ok(());
        }
        let cost = cost_of(frame.channel, frame.payload.len());
        let store = &self.retained;
        // What the new value replaces is given back first.
        let old = store.values.get(frame.channel);
        let freed_total = old.map_or(0, |o| o.cost);
        let freed_uid = old.filter(|o| o.uid == uid).map_or(0, |o| o.cost);
        let mine = store.by_uid.get(&uid).copied().unwrap_or(0) - freed_uid + cost;
        if mine > self.cfg.hub.max_retained_bytes_per_uid {
            return Err(RetainError::OverUid {
                uid,
                would: mine,
                limit: self.cfg.hub.max_retained_bytes_per_uid,
            });
        }
        let total = store.bytes - freed_total + cost;
        if total > self.cfg.hub.max_retained_bytes {
            return Err(RetainError::OverTotal {
                would: total,
                limit: self.cfg.hub.max_retained_bytes,
            });
        }
        Ok(())
    }

    /// Store (or, for an empty payload, clear) `channel`'s retained value:
    /// called once the publish was delivered, after [`check_retain`](Self::check_retain).
    pub(super) fn store_retained(&mut self, id: ClientId, origin: ClientId, frame: &Frame<'_>) {
        let uid = self.peers.get(&id).map_or(0, |p| p.ident.uid);
        let store = &mut self.retained;
        store.remove(frame.channel);
        if frame.payload.is_empty() {
            return;
        }
        let cost = cost_of(frame.channel, frame.payload.len());
        store.bytes += cost;
        *store.by_uid.entry(uid).or_insert(0) += cost;
        store.values.insert(
            frame.channel.into(),
            Retained {
                payload: frame.payload.into(),
                origin,
                seq: frame.header.seq,
                priority: frame.header.priority,
                uid,
                cost,
            },
        );
    }

    /// After client `id` subscribed to `pat` with WITH_RETAINED: queue the
    /// retained value of every channel the pattern matches and the client
    /// may read, except those another of its patterns already matched (it
    /// has had their value, and receives each message once). What does not
    /// fit its queue is announced as MISSED and counted as dropped.
    /// With `replay`, channels that have history are left to the replay.
    pub(super) fn send_retained(&mut self, id: ClientId, pat: &Pattern, flags: u8, replay: bool) {
        if flags & WITH_RETAINED == 0 || self.retained.is_empty() {
            return;
        }
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let mut names: Vec<&str> = if pat.is_exact() {
            self.retained
                .values
                .get_key_value(pat.as_str())
                .map(|(k, _)| &**k)
                .into_iter()
                .collect()
        } else {
            self.retained
                .values
                .keys()
                .map(|k| &**k)
                .filter(|k| pat.matches(k))
                .collect()
        };
        names.retain(|name| {
            !peer.patterns.iter().any(|p| p != pat && p.matches(name))
                && self.policy.allows(name, &peer.creds, Op::Subscribe)
                && !(replay && self.has_history(name))
        });
        // Oldest name first would need a clock; name order is stable and
        // tells a subscriber nothing it may not read anyway.
        names.sort_unstable();
        let names: Vec<Box<str>> = names.into_iter().map(Into::into).collect();
        let mut missed = 0u64;
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for name in names {
            let r = &self.retained.values[&*name];
            let len = HEADER_LEN + name.len() + r.payload.len();
            let p = self.peers.get_mut(&id).expect("looked up above");
            if !fits_link(p, len)
                || !p.out.has_room(len)
                || !uid_room(&self.uid_bytes, &self.cfg, p, len)
            {
                missed += 1;
                continue;
            }
            let header = encode_header(
                FrameType::Data,
                RETAIN,
                r.priority,
                name.len(),
                r.payload.len(),
                r.origin,
                r.seq,
            );
            p.out
                .push(Kind::Data, &[&header, name.as_bytes(), &r.payload]);
            sync_uid(&mut self.uid_bytes, p);
            p.counters.messages_out += 1;
            mark_dirty(&mut self.dirty, id, p);
            sent += 1;
            bytes += r.payload.len() as u64;
        }
        let p = self.peers.get_mut(&id).expect("looked up above");
        if missed > 0 {
            p.out.note_missed_at_back(missed);
            p.counters.dropped += missed;
            mark_dirty(&mut self.dirty, id, p);
        }
        self.totals.dropped += missed;
        self.totals.messages_out += sent;
        self.totals.bytes_out += bytes;
    }
}

/// Planned restart (hub/snapshot.rs): every value as data, and back.
impl RetainStore {
    pub(super) fn export(&self) -> Vec<super::snapshot::RetainedValue> {
        let mut v: Vec<_> = self
            .values
            .iter()
            .map(|(name, r)| super::snapshot::RetainedValue {
                channel: name.to_string(),
                payload: r.payload.to_vec(),
                origin: r.origin,
                seq: r.seq,
                priority: r.priority,
                uid: r.uid,
            })
            .collect();
        v.sort_by(|a, b| a.channel.cmp(&b.channel));
        v
    }

    /// Take over a value handed over (it replaces one read back from a
    /// channel log: it is the newer), charged to its uid, unless today's
    /// bounds refuse it. An empty payload holds nothing.
    pub(super) fn import(
        &mut self,
        v: &super::snapshot::RetainedValue,
        max_uid: usize,
        max_total: usize,
    ) -> Result<(), RetainError> {
        if v.payload.is_empty() {
            return Ok(());
        }
        let cost = cost_of(&v.channel, v.payload.len());
        let old = self.values.get(v.channel.as_str());
        let freed_total = old.map_or(0, |o| o.cost);
        let freed_uid = old.filter(|o| o.uid == v.uid).map_or(0, |o| o.cost);
        let mine = self.by_uid.get(&v.uid).copied().unwrap_or(0) - freed_uid + cost;
        if mine > max_uid {
            return Err(RetainError::OverUid {
                uid: v.uid,
                would: mine,
                limit: max_uid,
            });
        }
        let total = self.bytes - freed_total + cost;
        if total > max_total {
            return Err(RetainError::OverTotal {
                would: total,
                limit: max_total,
            });
        }
        self.remove(&v.channel);
        self.bytes += cost;
        *self.by_uid.entry(v.uid).or_insert(0) += cost;
        self.values.insert(
            v.channel.as_str().into(),
            Retained {
                payload: v.payload.clone().into(),
                origin: v.origin,
                seq: v.seq,
                priority: v.priority.min(crate::wire::frame::MAX_PRIORITY),
                uid: v.uid,
                cost,
            },
        );
        Ok(())
    }
}

fn cost_of(channel: &str, payload: usize) -> usize {
    payload + channel.len() + ENTRY_OVERHEAD
}

use crate::wire::HEADER_LEN;
