//! Channel rings in the event loop: making them, handing them to shm clients
//! over the control socket (OPEN_RING → RING + memfd + eventfd), freeing a
//! departed client's slot and lock, and tearing a ring down when its last
//! participant leaves. Routing decisions are the hub's (`hub::rings`).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::*;
use crate::config::Overflow;
use crate::hub::{RingRequest, RING_READ};
use crate::shm::bring::{self, BRing, MAX_SLOTS};
use crate::shm::Notifier;
use crate::transport::bring::{BringLink, RingShared, HUB_SLOT};

/// One channel's ring as the loop keeps it.
pub(super) struct ChannelRing {
    /// Our own mapping, for slot bookkeeping (the endpoint has another).
    mgmt: BRing,
    memfd: OwnedFd,
    hub_event: OwnedFd,
    /// The endpoint (ring peer) serving the ring in the hub.
    peer: ClientId,
    shared: Arc<Mutex<RingShared>>,
    /// Which client holds each slot, with its roles (slot 0 is the hub's).
    slots: Vec<Option<(ClientId, u8)>>,
    /// Under `block`, while a writer waits for space: the slowest cursor
    /// (position, slot) and since when it has not moved.
    stall: Option<(u64, usize, Instant)>,
    /// The write lock's holder and `write_pos` when first seen held, and
    /// since when: a holder that keeps it past the timeout is stuck.
    lock_seen: Option<(u64, u64, Instant)>,
}

/// What stands between an abandoned ring and its removal.
enum Drain {
    Done,
    /// The hub has not read all of it (or not handled what it read).
    Unread(ClientId),
    /// The hub has not written all it owes it.
    Unwritten(ClientId),
    /// The hub's subscribers hold it back.
    Paused,
}

impl ChannelRing {
    fn participants(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

impl EventLoop {
    /// Carry out the OPEN_RING requests the hub validated.
    pub(super) fn serve_ring_requests(&mut self) {
        let mut reqs = Vec::new();
        self.hub.take_ring_requests(&mut reqs);
        if reqs.is_empty() {
            return;
        }
        let mut replies = Vec::with_capacity(reqs.len());
        for req in reqs {
            let reply = match &req.result {
                Err((code, text)) => Err((*code, text.clone())),
                Ok(()) if req.roles == 0 => Ok(self.leave_ring(req.client, &req.channel)),
                Ok(()) => self.join_ring(&req),
            };
            replies.push((req, reply));
        }
        // Before answering: a publish right after the answer must find the
        // hub reading (if it serves subscribers) and the audience counted.
        self.tend_rings();
        for (req, reply) in replies {
            self.answer_ring(req.client, &req, reply);
        }
    }

    /// Tell the hub's side of each ring whether it must read (someone it
    /// serves is subscribed) and what a direct publish is delivered to.
    pub(super) fn tend_rings(&mut self) {
        let mut idle = Vec::new();
        let now = Instant::now();
        let timeout = Duration::from_millis(self.hub.config().hub.block_timeout_ms);
        let mut stuck = Vec::new();
        let mut changed_peers = Vec::new();
        let mut stuck_lock = Vec::new();
        for (channel, r) in self.rings.iter_mut() {
            // `block`: a reader that holds writers back past the timeout is
            // disconnected, as a hub subscriber would be.
            r.stall = match (r.mgmt.writer_waiting(), r.mgmt.slowest(), r.stall) {
                // Only a reader that is behind holds anyone back.
                (true, Some((pos, _)), _) if pos >= r.mgmt.write_pos() => None,
                (true, Some((pos, slot)), Some((p, s, since))) if (p, s) == (pos, slot) => {
                    if now >= since + timeout && slot != HUB_SLOT {
                        if let Some((client, _)) = r.slots[slot] {
                            stuck.push((client, channel.clone()));
                        }
                    }
                    Some((p, s, since))
                }
                (true, Some((pos, slot)), _) => Some((pos, slot, now)),
                _ => None,
            };
            // A writer holds the lock for one copy; one that keeps it past
            // the timeout (stopped, or a participant writing a foreign
            // token) stalls every writer: disconnect it, or break the lock.
            let holder = r.mgmt.lock_holder();
            let w = r.mgmt.write_pos();
            r.lock_seen = match r.lock_seen {
                _ if holder == 0 => None,
                Some((h, pos, since)) if (h, pos) == (holder, w) => {
                    if now >= since + timeout {
                        let client = r
                            .slots
                            .iter()
                            .flatten()
                            .map(|(c, _)| *c)
                            .find(|c| u64::from(*c) == holder);
                        match client {
                            Some(c) => stuck_lock.push((c, channel.clone())),
                            None if holder != r.shared.lock().map_or(0, |s| s.token) => {
                                warn!(channel = %channel, holder, "channel ring lock held by no participant; broken");
                                r.mgmt.break_lock(holder);
                                changed_peers.push(r.peer);
                            }
                            None => {}
                        }
                    }
                    Some((h, pos, since))
                }
                _ => Some((holder, w, now)),
            };
            if r.participants() == 0 {
                idle.push(channel.clone());
            }
            let audience = self.hub.ring_audience(channel);
            r.mgmt.set_hub_subscribers(audience as u64);
            let want = audience > 0;
            let (changed, written, missed) = match r.shared.lock() {
                Ok(mut s) => {
                    let changed = s.want_reader != want;
                    if changed {
                        // Attach (or detach) the hub's cursor now, not when
                        // the endpoint next runs: whatever is published from
                        // this moment on is owed to the new subscriber.
                        r.mgmt.attach(HUB_SLOT, s.token, want);
                        s.reader_gen += 1;
                    }
                    s.want_reader = want;
                    (changed, s.written, std::mem::take(&mut s.missed))
                }
                Err(_) => (false, 0, 0),
            };
            self.hub
                .count_direct(channel, r.mgmt.published().saturating_sub(written));
            if missed > 0 {
                // Lost before the hub read them for its own subscribers.
                self.hub.count_ring_lost(channel, missed);
            }
            if changed {
                changed_peers.push(r.peer);
            }
        }
        for peer in changed_peers {
            // Its cursor (and any wait for space) was just reset: let it
            // read and write again.
            self.pending.push(peer);
            self.flush(peer);
        }
        for channel in idle {
            self.retire_if_drained(&channel);
        }
        for (client, channel) in stuck_lock {
            let reason = format!(
                "held channel ring '{channel}''s write lock for more than {} ms (hub.block_timeout_ms)",
                timeout.as_millis()
            );
            self.hub.doom(client, ErrorCode::SlowConsumer, reason);
        }
        for (client, channel) in stuck {
            let reason = format!(
                "not reading channel ring '{channel}' for more than {} ms while publishers waited (hub.block_timeout_ms)",
                timeout.as_millis()
            );
            self.hub.doom(client, ErrorCode::SlowConsumer, reason);
        }
    }

    /// After a reload: a ring whose participants include one the new access
    /// rules refuse is retired. Its participants are disconnected (with the
    /// reason) and the ring goes once they are: a descriptor already handed
    /// out cannot be taken back, so only a fresh ring shuts the refused one
    /// out. Everyone else reconnects and gets the new ring.
    pub(super) fn recheck_ring_access(&mut self) {
        let mut out = Vec::new();
        for (channel, r) in &self.rings {
            let refused: Vec<ClientId> = r
                .slots
                .iter()
                .flatten()
                .filter(|(c, _)| !self.hub.may_use_ring(*c, channel))
                .map(|(c, _)| *c)
                .collect();
            if refused.is_empty() {
                continue;
            }
            warn!(channel = %channel, ?refused, "access to a channel ring revoked by reload; retiring the ring");
            for (c, _) in r.slots.iter().flatten() {
                let text = if refused.contains(c) {
                    format!("access to channel '{channel}' revoked by a configuration reload")
                } else {
                    format!("channel '{channel}' ring retired after a configuration reload (another participant's access was revoked); reconnect")
                };
                out.push((*c, text));
            }
        }
        for (c, text) in out {
            self.hub.doom(c, ErrorCode::NotPermitted, text);
        }
    }

    /// When the stalled-reader check of `tend_rings` must run next.
    pub(super) fn next_ring_deadline(&self) -> Option<Instant> {
        let timeout = Duration::from_millis(self.hub.config().hub.block_timeout_ms);
        self.rings
            .values()
            .flat_map(|r| [r.stall.map(|s| s.2), r.lock_seen.map(|l| l.2)])
            .flatten()
            .map(|since| since + timeout)
            .min()
    }

    fn join_ring(&mut self, req: &RingRequest) -> Result<(u32, Vec<OwnedFd>), (ErrorCode, String)> {
        let internal = |e: &dyn std::fmt::Display| {
            (
                ErrorCode::Internal,
                format!("cannot set up the channel ring: {e}"),
            )
        };
        let waker = {
            let c = self
                .clients
                .get(&req.client)
                .ok_or_else(|| internal(&"client gone"))?;
            let fd = c.data.as_ref().and_then(|l| l.wake_fd()).ok_or((
                ErrorCode::RingUnavailable,
                "channel rings are for shm clients".to_string(),
            ))?;
            let owned = fd.try_clone_to_owned().map_err(|e| internal(&e))?;
            Notifier::from_fd(owned).map_err(|e| internal(&e))?
        };
        if !self.rings.contains_key(&req.channel) {
            self.make_ring(&req.channel, req.overflow)
                .map_err(|e| internal(&e))?;
        }
        let r = self.rings.get_mut(&req.channel).expect("made above");
        let mut fresh = false;
        let slot = match r
            .slots
            .iter()
            .position(|s| s.is_some_and(|(c, _)| c == req.client))
        {
            Some(s) => s,
            None => {
                fresh = true;
                r.slots
                    .iter()
                    .enumerate()
                    .skip(HUB_SLOT + 1)
                    .find(|(_, s)| s.is_none())
                    .map(|(i, _)| i)
                    .ok_or((
                        ErrorCode::LimitReached,
                        format!(
                            "channel ring '{}' has {} participants already",
                            req.channel,
                            MAX_SLOTS - 1
                        ),
                    ))?
            }
        };
        let was_reading = r.slots[slot].is_some_and(|(_, roles)| roles & RING_READ != 0);
        let reading = req.roles & RING_READ != 0;
        r.slots[slot] = Some((req.client, req.roles));
        // (Re)attach only when the slot is new or starts or stops reading: a
        // reader's cursor must never jump (what lies between is unread).
        if fresh || was_reading != reading {
            r.mgmt.attach(slot, u64::from(req.client), reading);
        }
        if let Ok(mut s) = r.shared.lock() {
            s.wakers[slot] = Some(waker);
        }
        let fds = if fresh {
            vec![
                r.memfd.try_clone().map_err(|e| internal(&e))?,
                r.hub_event.try_clone().map_err(|e| internal(&e))?,
            ]
        } else {
            Vec::new()
        };
        self.hub
            .set_direct_reader(&req.channel, req.client, req.roles & RING_READ != 0);
        tracing::debug!(client = req.client, channel = %req.channel, slot, roles = req.roles, "client joined channel ring");
        Ok((slot as u32, fds))
    }

    fn make_ring(&mut self, channel: &str, overflow: Overflow) -> std::io::Result<()> {
        let cfg = self.hub.config();
        let need = 2 * (cfg.hub.max_message_size as usize + wire::HEADER_LEN + 255 + 64);
        let size = cfg.shm.channel_ring_size.max(need).next_power_of_two();
        let policy = match overflow {
            Overflow::DropOldest => bring::Policy::DropOldest,
            _ => bring::Policy::Block,
        };
        let (mgmt, memfd) = BRing::create(size, policy)?;
        let endpoint_map = BRing::open(&memfd)?;
        let own = Notifier::new()?;
        let hub_event = own.as_fd().try_clone_to_owned()?;
        let shared = Arc::new(Mutex::new(RingShared {
            wakers: (0..MAX_SLOTS).map(|_| None).collect(),
            want_reader: false,
            reader_gen: 0,
            token: 0,
            missed: 0,
            written: 0,
        }));
        let link = BringLink::new(endpoint_map, channel, own, shared.clone());
        let name = format!("ring:{channel}");
        let peer = self
            .add_internal(Box::new(link), std::process::id() as i32, None, &name, None)
            .ok_or_else(|| std::io::Error::other("the hub is full (hub.max_clients)"))?;
        if let Ok(mut s) = shared.lock() {
            s.token = u64::from(peer);
        }
        mgmt.attach(HUB_SLOT, u64::from(peer), false);
        self.hub.attach_ring(channel, peer);
        info!(channel, size, ?policy, "channel ring created");
        self.rings.insert(
            channel.to_string(),
            ChannelRing {
                mgmt,
                memfd,
                hub_event,
                peer,
                shared,
                slots: (0..MAX_SLOTS).map(|_| None).collect(),
                stall: None,
                lock_seen: None,
            },
        );
        Ok(())
    }

    /// A client leaves one ring (roles 0). Returns the RING answer.
    fn leave_ring(&mut self, client: ClientId, channel: &str) -> (u32, Vec<OwnedFd>) {
        self.free_slots(client, Some(channel));
        (u32::MAX, Vec::new())
    }

    /// Free every slot `client` holds (in `only` channel, or all), breaking
    /// the ring lock if it died holding it; rings left empty are torn down.
    pub(super) fn free_slots(&mut self, client: ClientId, only: Option<&str>) {
        let mut retry = Vec::new();
        for (channel, r) in self.rings.iter_mut() {
            if only.is_some_and(|o| o != channel) {
                continue;
            }
            for slot in 0..MAX_SLOTS {
                if r.slots[slot].is_none_or(|(c, _)| c != client) {
                    continue;
                }
                r.slots[slot] = None;
                r.mgmt.detach(slot);
                if let Ok(mut s) = r.shared.lock() {
                    s.wakers[slot] = None;
                }
                self.hub.set_direct_reader(channel, client, false);
                // A writer may have waited for this cursor: re-scan the
                // waits, and let the hub's own writer try again.
                retry.push(r.peer);
            }
            if r.mgmt.break_lock(u64::from(client)) {
                warn!(channel = %channel, client, "client left holding the channel ring's lock; released (its unfinished message was never published)");
                // Writers and the hub may be waiting for the lock.
                retry.push(r.peer);
            }
        }
        retry.dedup();
        for peer in retry {
            self.pending.push(peer);
            self.flush(peer);
        }
        let idle: Vec<String> = self
            .rings
            .iter()
            .filter(|(ch, r)| r.participants() == 0 && only.is_none_or(|o| o == ch.as_str()))
            .map(|(ch, _)| ch.clone())
            .collect();
        for channel in idle {
            self.retire_if_drained(&channel);
        }
    }

    /// Whether anything in the ring or its endpoint is still owed to anyone.
    fn ring_drained(&mut self, channel: &str) -> Drain {
        let Some(r) = self.rings.get(channel) else {
            return Drain::Done;
        };
        let peer = r.peer;
        let caught_up = r
            .mgmt
            .cursor_of(HUB_SLOT)
            .is_none_or(|p| p >= r.mgmt.write_pos());
        let Some(c) = self.clients.get(&peer) else {
            return Drain::Done;
        };
        if c.paused {
            return Drain::Paused;
        }
        if !caught_up || !c.data_in.is_empty() {
            return Drain::Unread(peer);
        }
        if self.hub.queue(peer).is_some_and(|q| !q.is_empty()) {
            return Drain::Unwritten(peer);
        }
        Drain::Done
    }

    /// A ring without participants goes once nothing in it is owed to the
    /// hub's subscribers. What is owed is written and read right away, so
    /// the ring usually goes together with its last participant (before
    /// anyone can ask the hub what it holds).
    fn retire_if_drained(&mut self, channel: &str) {
        let mut state = self.ring_drained(channel);
        for _ in 0..3 {
            match state {
                Drain::Unwritten(peer) => self.flush(peer),
                Drain::Unread(peer) => self.service(peer, ROLE_DATA_IN),
                Drain::Done | Drain::Paused => break,
            }
            state = self.ring_drained(channel);
        }
        match state {
            Drain::Done => self.tear_down_ring(channel),
            // Keep it moving so the check runs again without waiting for an
            // unrelated event.
            Drain::Unread(peer) => self.pending.push(peer),
            Drain::Unwritten(peer) => self.flush(peer),
            Drain::Paused => {} // resumed (and re-checked) once its subscribers drain
        }
    }

    /// `id` is a ring's endpoint and something closes it (the ring turned
    /// out corrupt: a participant wrote garbage into it). The ring cannot be
    /// trusted any more: retire it, tell every participant why, and let the
    /// channel go back to the hub (a new ring is made when asked for).
    /// True if `id` was a ring's endpoint.
    pub(super) fn ring_failed(&mut self, id: ClientId, reason: &str) -> bool {
        let Some(channel) = self
            .rings
            .iter()
            .find(|(_, r)| r.peer == id)
            .map(|(ch, _)| ch.clone())
        else {
            return false;
        };
        let Some(r) = self.rings.remove(&channel) else {
            return false;
        };
        warn!(channel = %channel, "channel ring retired: {reason}");
        self.hub.detach_ring(&channel);
        self.hub.remove(id);
        self.finalize(id);
        let text = format!("channel '{channel}' ring retired by the hub ({reason}); reconnect");
        for (c, _) in r.slots.iter().flatten() {
            self.hub.doom(*c, ErrorCode::Internal, text.clone());
        }
        true
    }

    fn tear_down_ring(&mut self, channel: &str) {
        let Some(r) = self.rings.remove(channel) else {
            return;
        };
        self.hub.detach_ring(channel);
        // Part of the hub, not a client: no "client disconnected" for it.
        self.hub.remove(r.peer);
        self.finalize(r.peer);
        info!(channel, "channel ring removed (no participant left)");
    }

    fn answer_ring(
        &mut self,
        client: ClientId,
        req: &RingRequest,
        reply: Result<(u32, Vec<OwnedFd>), (ErrorCode, String)>,
    ) {
        let Some(c) = self.clients.get(&client) else {
            return;
        };
        let Some(ctrl) = c.ctrl.as_ref() else {
            return;
        };
        let mut out = Vec::new();
        let fds = match reply {
            Ok((slot, fds)) => {
                let mut payload = slot.to_le_bytes().to_vec();
                payload.push(req.roles);
                wire::encode(
                    &mut out,
                    FrameType::Ring,
                    0,
                    0,
                    &req.channel,
                    &payload,
                    0,
                    req.seq,
                );
                fds
            }
            Err((code, text)) => {
                let payload = wire::frame::error_payload(code, &text);
                wire::encode(&mut out, FrameType::Error, 0, 0, "", &payload, 0, req.seq);
                Vec::new()
            }
        };
        if let Err(e) = handshake::send_with_fds(ctrl, &out, &fds) {
            let reason = format!("cannot answer OPEN_RING: {e}");
            self.close(client, &reason);
        }
    }
}

use crate::wire::ErrorCode;
