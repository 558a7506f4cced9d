//! Channel rings (docs/ARCHITECTURE.md): the routing side of the shared-memory
//! broadcast rings. The event loop owns the rings themselves; the hub decides
//! who may use one and routes around them:
//! - a channel with a ring has a *ring peer*, an endpoint the event loop made
//!   that writes into the ring what other transports publish on the channel,
//!   and reads from it what direct writers published, for the hub's other
//!   subscribers;
//! - everything published on such a channel goes through the ring (the ring
//!   peer is then the only hub-side target), so all subscribers see one order;
//! - direct readers are not hub subscribers of the channel: they read the ring.

use std::time::Instant;

use super::*;

pub use crate::wire::{RING_READ, RING_WRITE};

/// An OPEN_RING the hub validated (or refused), for the event loop to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRequest {
    pub client: ClientId,
    pub channel: String,
    pub roles: u8,
    pub seq: u64,
    /// The channel's overflow policy, for a ring yet to be made.
    pub overflow: Overflow,
    pub result: Result<(), (ErrorCode, String)>,
}

impl Hub {
    /// Handle OPEN_RING: check it, and queue it for the event loop.
    pub(super) fn open_ring(&mut self, id: ClientId, frame: &Frame<'_>) {
        let roles = frame.payload.first().copied().unwrap_or(0);
        let result = self.check_open_ring(id, frame.channel, roles, frame.payload.len());
        let overflow = self
            .channels
            .get(frame.channel)
            .map_or(Overflow::Block, |c| c.overflow);
        self.ring_requests.push(RingRequest {
            client: id,
            channel: frame.channel.to_string(),
            roles,
            seq: frame.header.seq,
            overflow,
            result,
        });
    }

    fn check_open_ring(
        &mut self,
        id: ClientId,
        channel: &str,
        roles: u8,
        payload_len: usize,
    ) -> Result<(), (ErrorCode, String)> {
        if payload_len != 1 || roles & !(RING_READ | RING_WRITE) != 0 {
            return Err((
                ErrorCode::Malformed,
                "OPEN_RING payload is one byte of roles (1 read, 2 write)".into(),
            ));
        }
        let peer = &self.peers[&id];
        if peer.transport != TransportKind::Shm {
            return Err((
                ErrorCode::RingUnavailable,
                "channel rings are for shm clients".into(),
            ));
        }
        if !self.cfg.shm.channel_rings {
            return Err((
                ErrorCode::RingUnavailable,
                "channel rings are off (shm.channel_rings = false)".into(),
            ));
        }
        channel::validate_name(channel).map_err(|e| (ErrorCode::BadChannel, e.to_string()))?;
        if roles == 0 {
            return Ok(()); // leaving
        }
        let creds = peer.creds.clone();
        let (uid, pid) = (peer.ident.uid, peer.ident.pid);
        self.ensure_channel(channel, uid)?;
        let ch = &self.channels[channel];
        if ch.retain || ch.history.is_some() || self.retained.has(channel) {
            return Err((
                ErrorCode::RingUnavailable,
                format!("channel '{channel}' has retained messages: the hub relays it, retained value first"),
            ));
        }
        if ch.overflow == Overflow::Disconnect {
            return Err((
                ErrorCode::RingUnavailable,
                format!("channel '{channel}' has overflow = \"disconnect\": the hub relays it"),
            ));
        }
        for (bit, op, verb) in [
            (RING_READ, Op::Subscribe, "subscribe to"),
            (RING_WRITE, Op::Publish, "publish to"),
        ] {
            if roles & bit != 0 && !self.policy.allows_with(ch.rule, &creds, op) {
                if self.log_limit.allow(uid, LogKind::Denied, Instant::now()) {
                    tracing::warn!(
                        client = id,
                        client_pid = pid,
                        client_uid = uid,
                        channel,
                        "channel ring denied"
                    );
                }
                return Err((
                    ErrorCode::NotPermitted,
                    format!("uid {uid} may not {verb} '{channel}' (access policy)"),
                ));
            }
        }
        // The ring is one read-write mapping: whoever holds it can read
        // every message and write one. A client allowed only one of the two
        // is served by the hub, which enforces the other per message.
        if !self.policy.allows_with(ch.rule, &creds, Op::Subscribe)
            || !self.policy.allows_with(ch.rule, &creds, Op::Publish)
        {
            return Err((
                ErrorCode::RingUnavailable,
                format!("uid {uid} may not both read and write '{channel}': the hub relays it"),
            ));
        }
        Ok(())
    }

    /// After a planned restart: may `channel` still have a ring under this
    /// hub's configuration (rings on, nothing retained, no `disconnect`
    /// policy)? The channel is made if need be, as OPEN_RING would.
    pub fn ring_still_allowed(&mut self, channel: &str, uid: u32) -> Result<(), String> {
        if !self.cfg.shm.channel_rings {
            return Err("channel rings are off (shm.channel_rings = false)".into());
        }
        channel::validate_name(channel).map_err(|e| e.to_string())?;
        self.ensure_channel(channel, uid).map_err(|(_, t)| t)?;
        let ch = &self.channels[channel];
        if ch.retain || ch.history.is_some() || self.retained.has(channel) {
            return Err("the channel has retained messages".into());
        }
        if ch.overflow == Overflow::Disconnect {
            return Err("the channel has overflow = \"disconnect\"".into());
        }
        if ch.ring.is_some() {
            return Err("the channel has a ring already".into());
        }
        Ok(())
    }

    /// After a planned restart: take over a ring's endpoint under its id
    /// (the ring token the predecessor wrote with), with the messages
    /// queued for the ring, and make it `channel`'s ring peer.
    pub fn import_ring_endpoint(
        &mut self,
        s: &super::snapshot::ClientSnapshot,
        channel: &str,
    ) -> Result<(), String> {
        if !s.patterns.is_empty() {
            return Err("a ring endpoint with subscriptions".into());
        }
        self.import_client(s).map_err(|e| e.to_string())?;
        if let Some(p) = self.peers.get_mut(&s.id) {
            // Not a client: never announced, never listed as one.
            p.greeted = false;
        }
        self.attach_ring(channel, s.id);
        Ok(())
    }

    /// May `client` still hold a slot in `channel`'s ring (after a reload)?
    pub fn may_use_ring(&self, client: ClientId, channel: &str) -> bool {
        let (Some(p), Some(ch)) = (self.peers.get(&client), self.channels.get(channel)) else {
            return false;
        };
        // Whatever its roles, a participant can read and write the ring
        // (see `check_open_ring`).
        self.policy.allows_with(ch.rule, &p.creds, Op::Subscribe)
            && self.policy.allows_with(ch.rule, &p.creds, Op::Publish)
    }

    /// `channel`'s ring was retired while `client` read it: it becomes an
    /// ordinary subscriber, so the hub relays the channel to it from now on.
    pub fn ring_reader_relayed(&mut self, client: ClientId, channel: &str) {
        if self.peers.contains_key(&client) {
            if let Err((_, why)) = self.subscribe(client, channel) {
                tracing::warn!(
                    client,
                    channel,
                    "reader of a retired ring not subscribed: {why}"
                );
            }
        }
    }

    /// Tell `client` that its ring for `channel` is gone: an unsolicited
    /// RING (seq 0) with slot 2^32-1 and roles 0, on its data path.
    pub fn send_ring_retired(&mut self, client: ClientId, channel: &str) {
        let mut payload = u32::MAX.to_le_bytes().to_vec();
        payload.push(0);
        let header = encode_header(FrameType::Ring, 0, 0, channel.len(), payload.len(), 0, 0);
        self.push(
            client,
            Kind::Control,
            &[&header, channel.as_bytes(), &payload],
        );
    }

    /// OPEN_RING requests handled since the last call.
    pub fn take_ring_requests(&mut self, into: &mut Vec<RingRequest>) {
        into.append(&mut self.ring_requests);
    }

    /// The event loop made `peer` the ring peer of `channel`.
    pub fn attach_ring(&mut self, channel: &str, peer: ClientId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.internal = true;
            if !p.ring_endpoint {
                p.ring_endpoint = true;
                self.ring_endpoints += 1;
            }
        }
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.ring = Some(peer);
        }
    }

    /// The channel's ring is gone (no participant left).
    pub fn detach_ring(&mut self, channel: &str) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.ring = None;
            ch.direct.clear();
            // A new ring counts from zero again.
            ch.direct_seen = 0;
        }
        // Nobody may hold it any more: it can be collected.
        self.note_idle(channel);
    }

    /// `client` reads `channel` from its ring (or stopped doing so).
    pub fn set_direct_reader(&mut self, channel: &str, client: ClientId, on: bool) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.direct.retain(|c| *c != client);
            if on {
                ch.direct.push(client);
            }
        }
    }

    /// Subscribers the ring peer must serve: those of the channel that do
    /// not read its ring themselves.
    pub fn ring_audience(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |ch| {
            let subs = self.current_subscribers(channel, ch);
            subs.iter().filter(|s| !ch.direct.contains(s)).count()
        })
    }

    /// Messages the hub's side of the channel's ring lost (overwritten
    /// under drop-oldest before it read them, or not a valid record): its
    /// own subscribers never got them. Counted like any other drop.
    pub fn count_ring_lost(&mut self, channel: &str, n: u64) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.dropped += n;
        }
        self.totals.dropped += n;
    }

    /// Messages direct writers published (so far, on the channel's current
    /// ring), which the hub never saw. Each new one was delivered to every
    /// direct reader of the ring (the hub's own subscribers are counted when
    /// its endpoint reads it): as far as the hub can know, what the
    /// publisher's ACK said. Participants can garble these figures for their
    /// own channel (the count lives in the shared header); the arithmetic
    /// saturates.
    pub fn count_direct(&mut self, channel: &str, messages: u64) {
        if let Some(ch) = self.channels.get_mut(channel) {
            let new = messages.saturating_sub(ch.direct_seen);
            ch.direct_seen = messages;
            let delivered = new.saturating_mul(ch.direct.len() as u64);
            ch.published_direct = ch.published_direct.saturating_add(new);
            ch.delivered = ch.delivered.saturating_add(delivered);
            self.totals.messages_in = self.totals.messages_in.saturating_add(new);
            self.totals.messages_out = self.totals.messages_out.saturating_add(delivered);
        }
    }
}
