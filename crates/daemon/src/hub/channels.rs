//! Channels and subscriptions: who reads a channel, who pays for it, and
//! when it is collected.
//!
//! - Who reads: every pattern is indexed in a level trie ([`SubTrie`]); a
//!   channel's subscriber list is computed from it when the channel is made,
//!   and recomputed lazily (when next used) after subscriptions changed. So
//!   a wildcard subscription costs its own levels, and routing to a channel
//!   costs the subscriptions that match it, not every pattern held.
//! - Who pays: a channel is *held* by the clients subscribed to its exact
//!   name (and by its ring, if it has one). Each uid holding it is charged
//!   one channel; a channel nobody holds is charged to the uid that made it
//!   or held it last. A uid may be charged `hub.max_channels_per_uid`
//!   channels, and at most half of the `hub.max_channels` slots the other
//!   uids leave free, so one uid can never fill the table for the others.
//!   Wildcard subscriptions hold nothing: otherwise a bystander's `#` would
//!   make it pay for every channel an attacker invents.
//! - When collected: a channel nobody holds is a candidate, oldest first.
//!   It is collected when its uid or the table needs room; a publish
//!   recreates it with fresh counters. Its per-channel counters go with
//!   it; the hub-wide totals were counted when the traffic happened and
//!   stay exact.

use super::*;

/// Clients whose patterns match `name` and whom the access policy lets read
/// it (a wildcard subscriber silently skips channels it may not read), each
/// once, in id order.
fn matching(
    subs: &SubTrie,
    peers: &HashMap<ClientId, Peer>,
    policy: &Policy,
    name: &str,
    rule: Option<usize>,
) -> Vec<ClientId> {
    let mut v = Vec::new();
    subs.matches(name, &mut v);
    v.sort_unstable();
    v.dedup();
    v.retain(|id| {
        peers
            .get(id)
            .is_some_and(|p| policy.allows_with(rule, &p.creds, Op::Subscribe))
    });
    v
}

/// What a pattern is charged against `hub.max_pattern_levels_per_uid`: its
/// levels, each a node of the subscription index at most.
fn pattern_levels(pat: &Pattern) -> usize {
    pat.as_str().split('/').count()
}

impl Hub {
    pub(super) fn subscribe(
        &mut self,
        id: ClientId,
        text: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let pat = Pattern::parse(text).map_err(|e| (ErrorCode::BadChannel, e.to_string()))?;
        self.subscriptions_changed = true;
        let max = self.cfg.hub.max_subscriptions_per_client;
        let max_uid = self.cfg.hub.max_subscriptions_per_uid;
        let peer = self.peers.get(&id).expect("caller checked");
        if peer.patterns.contains(&pat) {
            return Ok(());
        }
        if peer.patterns.len() >= max {
            return Err((
                ErrorCode::LimitReached,
                format!("{max} subscriptions already (limit hub.max_subscriptions_per_client)"),
            ));
        }
        let uid = peer.ident.uid;
        let held = self.uid_subs.get(&uid).copied().unwrap_or(0);
        if held >= max_uid {
            return Err((
                ErrorCode::LimitReached,
                format!(
                    "uid {uid} holds {held} subscriptions over all its clients (limit hub.max_subscriptions_per_uid)"
                ),
            ));
        }
        let levels = pattern_levels(&pat);
        let max_levels = self.cfg.hub.max_pattern_levels_per_uid;
        let held_levels = self.uid_levels.get(&uid).copied().unwrap_or(0);
        if held_levels + levels > max_levels {
            return Err((
                ErrorCode::LimitReached,
                format!(
                    "uid {uid} holds patterns of {held_levels} levels over all its clients; {levels} more would pass hub.max_pattern_levels_per_uid ({max_levels})"
                ),
            ));
        }
        if pat.is_exact() && !self.policy.allows(pat.as_str(), &peer.creds, Op::Subscribe) {
            let text = format!(
                "uid {} may not subscribe to '{}' (access policy)",
                peer.creds.uid, pat
            );
            if self
                .log_limit
                .allow(peer.ident.uid, LogKind::Denied, Instant::now())
            {
                tracing::warn!(message_id = msgid::ACCESS_DENIED, client = id, client_pid = peer.ident.pid, client_uid = peer.ident.uid, channel = %pat, "subscribe denied");
            }
            return Err((ErrorCode::NotPermitted, text));
        }
        if pat.is_exact() {
            // Made now so it shows in statistics before traffic; held, so
            // it is never collected while subscribed.
            self.ensure_channel(pat.as_str(), uid)?;
            self.take_hold(pat.as_str(), uid)?;
        }
        self.subs.insert(pat.as_str(), id);
        *self.uid_subs.entry(uid).or_insert(0) += 1;
        *self.uid_levels.entry(uid).or_insert(0) += levels;
        if pat.is_exact() {
            // Only this channel is concerned; the policy allowed it above.
            let gen = self.sub_gen;
            let ch = self.channels.get_mut(pat.as_str()).expect("just ensured");
            if ch.gen == gen && !ch.subscribers.contains(&id) {
                ch.subscribers.push(id);
            }
        } else {
            self.subscriptions_changed();
        }
        // Routine, and as frequent as clients make them: debug level.
        tracing::debug!(client = id, channel = %pat, "subscribed");
        self.peers
            .get_mut(&id)
            .expect("caller checked")
            .patterns
            .push(pat);
        Ok(())
    }

    pub(super) fn unsubscribe(
        &mut self,
        id: ClientId,
        text: &str,
    ) -> Result<(), (ErrorCode, String)> {
        self.subscriptions_changed = true;
        let peer = self.peers.get_mut(&id).expect("caller checked");
        let Some(pos) = peer.patterns.iter().position(|p| p.as_str() == text) else {
            return Err((
                ErrorCode::NotSubscribed,
                format!("not subscribed to '{text}'"),
            ));
        };
        let pat = peer.patterns.remove(pos);
        let uid = peer.ident.uid;
        self.drop_subscriptions(id, uid, vec![pat]);
        Ok(())
    }

    /// Forget patterns a client held (it unsubscribed, left or was condemned).
    pub(super) fn drop_subscriptions(&mut self, id: ClientId, uid: u32, patterns: Vec<Pattern>) {
        if patterns.is_empty() {
            return;
        }
        for pat in &patterns {
            self.subs.remove(pat.as_str(), id);
            if let Some(n) = self.uid_subs.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    self.uid_subs.remove(&uid);
                }
            }
            if let Some(n) = self.uid_levels.get_mut(&uid) {
                *n = n.saturating_sub(pattern_levels(pat));
                if *n == 0 {
                    self.uid_levels.remove(&uid);
                }
            }
            if pat.is_exact() {
                self.release_hold(pat.as_str(), uid);
            }
        }
        self.subscriptions_changed();
    }

    /// Subscriptions changed in a way that may concern many channels: each
    /// recomputes its subscribers when next used, not now, so the change
    /// costs the same however many channels there are.
    pub(super) fn subscriptions_changed(&mut self) {
        self.sub_gen += 1;
    }

    /// Bring a channel's subscriber list up to date.
    pub(super) fn refresh(&mut self, name: &str) {
        let gen = self.sub_gen;
        let Some(ch) = self.channels.get(name) else {
            return;
        };
        if ch.gen == gen {
            return;
        }
        let subs = matching(&self.subs, &self.peers, &self.policy, name, ch.rule);
        let ch = self.channels.get_mut(name).expect("looked up above");
        ch.subscribers = subs;
        ch.gen = gen;
    }

    /// A channel's subscribers as of now, without updating it (for `&self`
    /// readers such as statistics).
    pub(super) fn current_subscribers<'a>(
        &self,
        name: &str,
        ch: &'a Channel,
    ) -> std::borrow::Cow<'a, [ClientId]> {
        if ch.gen == self.sub_gen {
            std::borrow::Cow::Borrowed(&ch.subscribers)
        } else {
            matching(&self.subs, &self.peers, &self.policy, name, ch.rule).into()
        }
    }

    /// Look up or make a channel for `uid`, collecting channels nobody
    /// holds if that uid or the table needs room.
    pub(super) fn ensure_channel(
        &mut self,
        name: &str,
        uid: u32,
    ) -> Result<(), (ErrorCode, String)> {
        if self.channels.contains_key(name) {
            return Ok(());
        }
        self.make_room(uid)?;
        let rule = self.policy.rule_for(name);
        let subscribers = matching(&self.subs, &self.peers, &self.policy, name, rule);
        self.channels.insert(
            name.into(),
            Channel {
                subscribers,
                gen: self.sub_gen,
                holds: Vec::new(),
                owner: uid,
                idle_at: None,
                overflow: self.cfg.overflow_for(name),
                retain: self.cfg.retain_for(name),
                history: self.cfg.history_for(name),
                rule,
                published: 0,
                delivered: 0,
                bytes: 0,
                dropped: 0,
                ring: None,
                direct: Vec::new(),
                published_direct: 0,
                direct_seen: 0,
            },
        );
        self.charge(uid);
        self.note_idle(name);
        self.record(HubEvent::ChannelCreated(name.to_string()));
        Ok(())
    }

    /// Room for one more channel charged to `uid`: within its own bound,
    /// within half of what the other uids leave free, and within the table.
    /// Collects that uid's oldest unheld channel first, then anyone's.
    fn make_room(&mut self, uid: u32) -> Result<(), (ErrorCode, String)> {
        let max = self.cfg.hub.max_channels;
        let max_uid = self.cfg.hub.max_channels_per_uid;
        loop {
            let mine = self.uid_channels.get(&uid).copied().unwrap_or(0);
            let total = self.channels.len();
            // Rounded up, so a hub with room for one channel has room for one.
            let share = max.saturating_sub(total - mine).div_ceil(2);
            let over_cap = mine >= max_uid;
            let over_share = mine >= share;
            if !over_cap && !over_share && total < max {
                return Ok(());
            }
            if over_cap || over_share {
                if let Some(n) = self.oldest_idle(Some(uid)) {
                    self.collect(&n);
                    continue;
                }
            }
            if over_cap {
                return Err((
                    ErrorCode::LimitReached,
                    format!(
                        "uid {uid} holds {mine} channels, all in use (limit hub.max_channels_per_uid)"
                    ),
                ));
            }
            if let Some(n) = self.oldest_idle(None) {
                self.collect(&n);
                continue;
            }
            return Err((
                ErrorCode::LimitReached,
                if total >= max {
                    format!("{total} channels in use (limit hub.max_channels)")
                } else {
                    format!(
                        "uid {uid} holds {mine} of the {total} channels in use, its share of the {max} of hub.max_channels: at most half of those the other users leave free"
                    )
                },
            ));
        }
    }

    /// `uid` holds `name` (a client of it subscribed to that exact name).
    fn take_hold(&mut self, name: &str, uid: u32) -> Result<(), (ErrorCode, String)> {
        let ch = &self.channels[name];
        let charged = if ch.holds.is_empty() {
            ch.owner == uid
        } else {
            ch.holds.iter().any(|(u, _)| *u == uid)
        };
        if !charged {
            // Holding someone else's channel costs a channel too.
            let max_uid = self.cfg.hub.max_channels_per_uid;
            while self.uid_channels.get(&uid).copied().unwrap_or(0) >= max_uid {
                // Never `name` itself: not charged to `uid`.
                let Some(n) = self.oldest_idle(Some(uid)) else {
                    return Err((
                        ErrorCode::LimitReached,
                        format!("uid {uid} holds {max_uid} channels, all in use (limit hub.max_channels_per_uid)"),
                    ));
                };
                self.collect(&n);
            }
        }
        self.unnote_idle(name);
        let ch = self.channels.get_mut(name).expect("caller ensured");
        if ch.holds.is_empty() {
            // The charge moves from the owner to the holders.
            if ch.owner != uid {
                let owner = ch.owner;
                ch.holds.push((uid, 1));
                self.uncharge(owner);
                self.charge(uid);
            } else {
                ch.holds.push((uid, 1));
            }
        } else if let Some(h) = ch.holds.iter_mut().find(|(u, _)| *u == uid) {
            h.1 += 1;
        } else {
            ch.holds.push((uid, 1));
            self.charge(uid);
        }
        Ok(())
    }

    /// A client of `uid` no longer subscribes to the exact name `name`.
    fn release_hold(&mut self, name: &str, uid: u32) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        let Some(pos) = ch.holds.iter().position(|(u, _)| *u == uid) else {
            return;
        };
        ch.holds[pos].1 -= 1;
        if ch.holds[pos].1 > 0 {
            return;
        }
        ch.holds.swap_remove(pos);
        if ch.holds.is_empty() {
            // The last holder keeps the charge until it is collected.
            ch.owner = uid;
            self.note_idle(name);
        } else {
            self.uncharge(uid);
        }
    }

    /// If nobody holds `name` any more, make it a candidate for collection.
    pub(super) fn note_idle(&mut self, name: &str) {
        let Some((key, ch)) = self.channels.get_key_value(name) else {
            return;
        };
        if ch.idle_at.is_some()
            || !ch.holds.is_empty()
            || ch.ring.is_some()
            || !ch.direct.is_empty()
        {
            return;
        }
        let key = key.clone();
        let owner = ch.owner;
        self.idle_tick += 1;
        let t = self.idle_tick;
        self.idle_by_uid.insert((owner, t), key.clone());
        self.idle.insert(t, key);
        self.channels
            .get_mut(name)
            .expect("looked up above")
            .idle_at = Some(t);
    }

    fn unnote_idle(&mut self, name: &str) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        if let Some(t) = ch.idle_at.take() {
            self.idle.remove(&t);
            self.idle_by_uid.remove(&(ch.owner, t));
        }
    }

    /// The oldest channel nobody holds (charged to `uid`, if given).
    /// Candidates that gained a ring since are dropped on the way (they are
    /// noted again when the ring goes); one with an OPEN_RING the event
    /// loop has yet to carry out is passed over, so its ring never finds
    /// the channel gone.
    fn oldest_idle(&mut self, uid: Option<u32>) -> Option<Box<str>> {
        loop {
            let pending = &self.ring_requests;
            let wanted = |n: &str| !pending.iter().any(|r| r.channel == n);
            let (owner, t, name) = match uid {
                Some(u) => {
                    let ((o, t), n) = self
                        .idle_by_uid
                        .range((u, 0)..=(u, u64::MAX))
                        .find(|(_, n)| wanted(n))?;
                    (*o, *t, n.clone())
                }
                None => {
                    let (t, n) = self.idle.iter().find(|(_, n)| wanted(n))?;
                    (self.channels.get(n).map_or(0, |c| c.owner), *t, n.clone())
                }
            };
            match self.channels.get(&name) {
                Some(ch) if ch.holds.is_empty() && ch.ring.is_none() && ch.direct.is_empty() => {
                    return Some(name)
                }
                Some(_) => self.unnote_idle(&name),
                None => {
                    // Not reachable (collecting unnotes), but never loop on it.
                    self.idle.remove(&t);
                    self.idle_by_uid.remove(&(owner, t));
                }
            }
        }
    }

    /// Forget a channel nobody holds. Its counters go with it; the totals
    /// already counted its traffic.
    fn collect(&mut self, name: &str) {
        self.unnote_idle(name);
        let Some(ch) = self.channels.remove(name) else {
            return;
        };
        debug_assert!(ch.holds.is_empty());
        self.uncharge(ch.owner);
        self.record(HubEvent::ChannelRemoved(name.to_string()));
    }

    fn charge(&mut self, uid: u32) {
        *self.uid_channels.entry(uid).or_insert(0) += 1;
    }

    fn uncharge(&mut self, uid: u32) {
        if let Some(n) = self.uid_channels.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.uid_channels.remove(&uid);
            }
        }
    }

    /// Channels charged to `uid` (for tests and statistics).
    pub fn channels_of_uid(&self, uid: u32) -> usize {
        self.uid_channels.get(&uid).copied().unwrap_or(0)
    }
}
