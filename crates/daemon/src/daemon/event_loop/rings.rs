//! Channel rings in the event loop: making them, handing them to shm clients
//! over the control socket (OPEN_RING → RING + memfd + eventfd), freeing a
//! departed client's slot and lock, and tearing a ring down when its last
//! participant leaves. Routing decisions are the hub's (`hub::rings`).
//!
//! Every participant can write every byte of the ring, so the hub trusts
//! nothing it reads there (docs/SECURITY.md §4). It looks at each ring on a
//! timer (`inspect`): whatever only the hub writes (header, slot tokens) must
//! be as it left it, cursors must be plausible, and a ring that stops moving
//! while someone waits is dealt with after `hub.block_timeout_ms`: a reader
//! that provably does not read (it leaves the wake-up the hub sent it
//! unread) is disconnected; anything the hub cannot pin on one participant
//! (a lock word, a cursor or a slot anyone could have written) retires the
//! ring, and its honest participants move on (readers become ordinary
//! subscribers, writers open a fresh ring).
//!
//! A planned restart hands rings over whole (`export_ring`,
//! `restore_rings`): nothing in the ring moves, and the successor checks
//! each as it would a new one before serving it, retiring any it will not.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::*;
use crate::config::Overflow;
use crate::hub::{RingRequest, RING_READ, RING_WRITE};
use crate::shm::bring::{self, BRing, MAX_SLOTS, NOT_READING};
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
    /// The uid of the client in each slot (meaningful where `slots` is Some).
    slot_uid: Vec<u32>,
    /// The one uid whose clients may share this ring: every participant can
    /// write every byte, so a writer could pass itself off as anyone to the
    /// ring's direct readers; sharing only within a uid (whose processes can
    /// already trace each other) keeps that from crossing users. Clients of
    /// other uids on the channel are relayed by the hub, which checks and
    /// stamps the origin of what it relays.
    owner: u32,
    /// Where the search for a free slot starts: slots are reused as late
    /// as possible, so a departed client still storing into its old slot
    /// is unlikely to meet a new owner.
    next_slot: usize,
    /// Bytes of shared memory the ring is: charged to the uid of every
    /// participant (`shm.max_ring_bytes_per_uid`).
    bytes: usize,
    watch: Watch,
}

/// What the hub saw of a ring at its last look (`inspect`).
struct Watch {
    /// When the hub looks again without being asked.
    next_check: Instant,
    /// `write_pos` at the last look.
    write_pos: u64,
    /// Since when the ring has not moved while someone waits to write.
    stalled_since: Option<Instant>,
    /// Each slot's cursor at the last look (NOT_READING: none), and whether
    /// the hub already woke its owner for that position.
    cursors: Vec<(u64, bool)>,
}

impl Watch {
    fn new(now: Instant, interval: Duration) -> Watch {
        Watch {
            next_check: now + interval,
            write_pos: 0,
            stalled_since: None,
            cursors: vec![(NOT_READING, false); MAX_SLOTS],
        }
    }
}

/// What clients and uids hold in channel rings, kept as they join and
/// leave so that a quota check costs a lookup, not a scan of every ring.
#[derive(Default)]
pub(super) struct RingUse {
    /// Per client: rings it holds a slot in, and its eventfd (one
    /// descriptor shared by all of them).
    clients: HashMap<ClientId, (usize, Arc<Notifier>)>,
    /// Per uid: rings its clients hold (a ring counted once), and their bytes.
    uids: HashMap<u32, (usize, usize)>,
}

/// What a look at a ring calls for.
enum Verdict {
    Fine,
    /// Nothing in it can be trusted any more (the reason says what).
    Retire(String),
    /// This reader provably stalls the ring's writers.
    Doom(ClientId, String),
}

/// How often the hub looks at a ring on its own: often enough that a lost
/// wake-up costs a fraction of the block timeout, rarely enough to cost
/// nothing (a look reads the header and 64 slots).
fn check_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// Was the eventfd written and never drained (its owner ignores wake-ups)?
fn undrained(n: &Notifier) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(n.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

/// Descriptors the hub holds per channel ring (memfd, its eventfd and the
/// copy handed out); each participating client adds one (its eventfd).
const FDS_PER_RING: usize = 3;

/// The share of RLIMIT_NOFILE channel rings may hold, so that connections
/// always find descriptors left.
fn ring_fd_budget() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        });
    soft / 4
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

impl RingUse {
    /// `client` (of `uid`) takes a slot of `r` (not yet recorded in it):
    /// the ring counts against its uid once, and against it once per ring.
    fn charge(&mut self, client: ClientId, uid: u32, r: &ChannelRing, waker: &Arc<Notifier>) {
        if !r.has_uid(uid) {
            let u = self.uids.entry(uid).or_default();
            u.0 += 1;
            u.1 += r.bytes;
        }
        self.clients
            .entry(client)
            .or_insert_with(|| (0, waker.clone()))
            .0 += 1;
    }

    /// `client` (of `uid`) left `r` (its slot already cleared).
    fn release(&mut self, client: ClientId, uid: u32, r: &ChannelRing) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.0 = c.0.saturating_sub(1);
            if c.0 == 0 {
                self.clients.remove(&client);
            }
        }
        if !r.has_uid(uid) {
            if let Some(u) = self.uids.get_mut(&uid) {
                u.0 = u.0.saturating_sub(1);
                u.1 = u.1.saturating_sub(r.bytes);
                if u.0 == 0 {
                    self.uids.remove(&uid);
                }
            }
        }
    }

    /// `r` is gone: everyone in it is released.
    fn release_all(&mut self, r: &mut ChannelRing) {
        for slot in 0..MAX_SLOTS {
            if let Some((c, _)) = r.slots[slot].take() {
                self.release(c, r.slot_uid[slot], r);
            }
        }
    }
}

impl ChannelRing {
    /// A ring of `owner`'s clients with no participant yet; the hub's
    /// endpoint `peer` in slot 0.
    #[allow(clippy::too_many_arguments)]
    fn new(
        mgmt: BRing,
        memfd: OwnedFd,
        hub_event: OwnedFd,
        peer: ClientId,
        shared: Arc<Mutex<RingShared>>,
        owner: u32,
        next_slot: usize,
        block_timeout_ms: u64,
    ) -> ChannelRing {
        let bytes = mgmt.capacity() + bring::HEADER_BYTES;
        ChannelRing {
            mgmt,
            memfd,
            hub_event,
            peer,
            shared,
            slots: (0..MAX_SLOTS).map(|_| None).collect(),
            slot_uid: vec![0; MAX_SLOTS],
            owner,
            next_slot,
            bytes,
            watch: Watch::new(
                Instant::now(),
                check_interval(Duration::from_millis(block_timeout_ms)),
            ),
        }
    }

    fn participants(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    fn has(&self, client: ClientId) -> bool {
        self.slots.iter().flatten().any(|(c, _)| *c == client)
    }

    fn has_uid(&self, uid: u32) -> bool {
        self.slots
            .iter()
            .zip(&self.slot_uid)
            .any(|(s, u)| s.is_some() && *u == uid)
    }

    /// Look at the ring as PROTOCOL.md §6.2 says a correct participant
    /// leaves it. `hub_waits`: the hub's own writer has messages it could
    /// not write. Wakes (`wake`) the owners of slots that may sleep through
    /// data or space because a wake-up mark was lost or wiped.
    fn inspect(
        &mut self,
        channel: &str,
        now: Instant,
        timeout: Duration,
        hub_waits: bool,
        mut wake: impl FnMut(usize),
    ) -> Verdict {
        self.watch.next_check = now + check_interval(timeout);
        let m = &self.mgmt;
        if !m.header_intact() {
            return Verdict::Retire(
                "its header was overwritten (or the memfd hole-punched)".into(),
            );
        }
        if m.reported_corrupt() {
            return Verdict::Retire(
                "a participant reported a record no correct writer writes".into(),
            );
        }
        if !m.positions_sane() {
            return Verdict::Retire("its write_pos and tail were overwritten".into());
        }
        let (hub_token, hub_reads) = match self.shared.lock() {
            Ok(s) => (s.token, s.want_reader),
            Err(_) => return Verdict::Retire("its state was lost".into()),
        };
        // Cursors first, then write_pos: both only grow, so a correct
        // reader's cursor is never seen past the write_pos loaded after it.
        let mut cur = vec![NOT_READING; MAX_SLOTS];
        for (s, c) in cur.iter_mut().enumerate() {
            let (token, pos) = m.slot_state(s);
            let (expect, reading) = if s == HUB_SLOT {
                (Some(hub_token), hub_reads)
            } else {
                match self.slots[s] {
                    Some((id, roles)) => (Some(u64::from(id)), roles & RING_READ != 0),
                    None => (None, false),
                }
            };
            match expect {
                None if token != 0 => {
                    return Verdict::Retire(format!(
                    "slot {s}, which the hub never handed out, was written (a phantom participant)"
                ))
                }
                None => continue,
                Some(t) if t != token => {
                    return Verdict::Retire(format!("slot {s}'s token was overwritten"))
                }
                Some(_) => {}
            }
            if !reading {
                if pos != NOT_READING {
                    return Verdict::Retire(format!("slot {s}, a writer's, was given a cursor"));
                }
                continue;
            }
            *c = pos;
        }
        let w = m.write_pos();
        if let Some(s) = (0..MAX_SLOTS)
            .find(|s| cur[*s] != NOT_READING && (cur[*s] > w || !cur[*s].is_multiple_of(8)))
        {
            return Verdict::Retire(format!("slot {s}'s cursor was overwritten"));
        }
        // Wake-ups the marks may have lost: a reader behind whose cursor did
        // not move since the last look may sleep through the data; writers
        // may sleep through space freed since then.
        let moved = w != self.watch.write_pos;
        let mut freed = false;
        for (s, (seen, &now_at)) in self.watch.cursors.iter_mut().zip(&cur).enumerate() {
            let (was, woken) = *seen;
            if now_at != was {
                freed |= was != NOT_READING && now_at != NOT_READING;
                *seen = (now_at, false);
            } else if s != HUB_SLOT && now_at != NOT_READING && now_at < w && !woken {
                wake(s);
                seen.1 = true;
            }
        }
        if !moved && freed {
            for s in (HUB_SLOT + 1..MAX_SLOTS)
                .filter(|s| self.slots[*s].is_some_and(|(_, r)| r & RING_WRITE != 0))
            {
                wake(s);
            }
        }
        // Stalls: the ring must move while someone waits to write.
        let lock = m.lock_holder();
        let waiting = lock != 0 || m.writer_waiting() || hub_waits;
        if moved {
            self.watch.write_pos = w;
            self.watch.stalled_since = None;
        }
        if !waiting {
            self.watch.stalled_since = None;
            return Verdict::Fine;
        }
        let since = *self.watch.stalled_since.get_or_insert(now);
        if now < since + timeout {
            self.watch.next_check = self.watch.next_check.min(since + timeout);
            return Verdict::Fine;
        }
        // Past the timeout: act, then start the clock again.
        self.watch.stalled_since = Some(now);
        let ms = timeout.as_millis();
        if lock != 0 {
            let named = self
                .slots
                .iter()
                .flatten()
                .find(|(c, _)| u64::from(*c) == lock)
                .map(|(c, _)| {
                    format!(
                        " (the lock word held client {c}'s id, which any participant can write)"
                    )
                })
                .unwrap_or_default();
            return Verdict::Retire(format!(
                "its write lock was held for more than {ms} ms{named}; nobody can be blamed"
            ));
        }
        let slowest = (0..MAX_SLOTS)
            .filter(|s| cur[*s] != NOT_READING)
            .min_by_key(|s| cur[*s]);
        let cap = m.capacity() as u64;
        match slowest {
            // Nobody is half a ring behind: no writer can really be waiting
            // for space (a wiped or forged mark); nobody to blame.
            Some(s) if w - cur[s] < cap / 2 => Verdict::Fine,
            Some(s) if s == HUB_SLOT => Verdict::Fine, // its subscribers have their own timeout
            Some(s) => {
                let Some((client, _)) = self.slots[s] else {
                    return Verdict::Fine;
                };
                let ignored = self
                    .shared
                    .lock()
                    .ok()
                    .and_then(|sh| sh.wakers[s].as_ref().map(|n| undrained(n)))
                    .unwrap_or(false);
                if ignored {
                    // The hub woke it at the start of the stall and it never
                    // even took the wake-up: it does not read, whatever any
                    // participant wrote.
                    Verdict::Doom(
                        client,
                        format!(
                            "not reading channel ring '{channel}' for more than {ms} ms while publishers waited (hub.block_timeout_ms)"
                        ),
                    )
                } else {
                    Verdict::Retire(format!(
                        "the cursor of slot {s} (client {client}) stood still for more than {ms} ms although its owner takes its wake-ups (any participant can write a cursor); nobody can be blamed"
                    ))
                }
            }
            None => Verdict::Fine,
        }
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
    /// serves is subscribed) and what a direct publish is delivered to; and
    /// look at each ring that is due (`ChannelRing::inspect`).
    pub(super) fn tend_rings(&mut self) {
        let mut idle = Vec::new();
        let now = Instant::now();
        let timeout = Duration::from_millis(self.hub.config().hub.block_timeout_ms);
        let mut changed_peers = Vec::new();
        let mut verdicts = Vec::new();
        for (channel, r) in self.rings.iter_mut() {
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
                        s.relayed.clear();
                        s.hub_cursor = None;
                    }
                    s.want_reader = want;
                    // Writers that left: their records are behind the
                    // hub's cursor once it passed where they left.
                    let (reading, at) = (s.want_reader, s.hub_cursor);
                    s.writers.retain(|(_, left)| {
                        left.is_none_or(|pos| reading && at.is_none_or(|c| c < pos))
                    });
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
            if now < r.watch.next_check {
                continue;
            }
            let hub_waits = self.hub.queue(r.peer).is_some_and(|q| !q.is_empty());
            let shared = r.shared.clone();
            let verdict = r.inspect(channel, now, timeout, hub_waits, |slot| {
                if let Ok(s) = shared.lock() {
                    if let Some(Some(n)) = s.wakers.get(slot) {
                        let _ = n.notify();
                    }
                }
            });
            // The hub's own side gets a turn at every look: a wake-up scan
            // it stopped rescheduling, or a cursor someone overwrote, is
            // taken up again (and its cursor stored again).
            if let Ok(mut s) = r.shared.lock() {
                s.unsettled = 0;
            }
            changed_peers.push(r.peer);
            if !matches!(verdict, Verdict::Fine) {
                verdicts.push((channel.clone(), verdict));
            }
        }
        changed_peers.dedup();
        for peer in changed_peers {
            // Its cursor (and any wait for space) was just reset, or it is
            // due a look: let it read and write again.
            self.pending.push(peer);
            self.flush(peer);
        }
        for channel in idle {
            self.retire_if_drained(&channel);
        }
        for (channel, verdict) in verdicts {
            match verdict {
                Verdict::Fine => {}
                Verdict::Retire(reason) => self.retire_ring(&channel, &reason),
                Verdict::Doom(client, reason) => {
                    self.hub.doom(client, ErrorCode::SlowConsumer, reason)
                }
            }
        }
    }

    /// After a reload: a ring whose participants include one the new access
    /// rules refuse is retired (a descriptor already handed out cannot be
    /// taken back, so only a fresh ring shuts the refused one out). The
    /// refused are disconnected with the reason; everyone else moves on as
    /// after any retirement (readers relayed, writers to a fresh ring).
    pub(super) fn recheck_ring_access(&mut self) {
        let mut retire = Vec::new();
        for (channel, r) in &self.rings {
            let refused: Vec<ClientId> = r
                .slots
                .iter()
                .flatten()
                .filter(|(c, _)| !self.hub.may_use_ring(*c, channel))
                .map(|(c, _)| *c)
                .collect();
            if !refused.is_empty() {
                retire.push((channel.clone(), refused));
            }
        }
        for (channel, refused) in retire {
            for c in &refused {
                let text =
                    format!("access to channel '{channel}' revoked by a configuration reload");
                self.hub.doom(*c, ErrorCode::NotPermitted, text);
            }
            let reason = format!(
                "access of {} participant(s) ({refused:?}) revoked by a configuration reload",
                refused.len()
            );
            self.retire_ring(&channel, &reason);
        }
    }

    /// When `tend_rings` must next look at a ring on its own.
    pub(super) fn next_ring_deadline(&self) -> Option<Instant> {
        self.rings.values().map(|r| r.watch.next_check).min()
    }

    fn join_ring(&mut self, req: &RingRequest) -> Result<(u32, Vec<OwnedFd>), (ErrorCode, String)> {
        let internal = |e: &dyn std::fmt::Display| {
            (
                ErrorCode::Internal,
                format!("cannot set up the channel ring: {e}"),
            )
        };
        let uid = self
            .clients
            .get(&req.client)
            .ok_or_else(|| internal(&"client gone"))?
            .ident
            .uid;
        let joined = self
            .rings
            .get(&req.channel)
            .is_some_and(|r| r.has(req.client));
        if let Some(r) = self.rings.get(&req.channel) {
            if r.owner != uid {
                let text = format!(
                    "the channel ring of '{}' is shared by another user's clients, and a ring is never shared across users (its writers could pass themselves off as anyone to its readers): the hub relays '{}'",
                    req.channel, req.channel
                );
                tracing::debug!(client = req.client, channel = %req.channel, "channel ring refused: {text}");
                return Err((ErrorCode::RingUnavailable, text));
            }
        }
        if !joined {
            self.check_ring_quota(req.client, uid, &req.channel)?;
        }
        // One descriptor per client for all its rings.
        let shared_waker = self
            .ring_use
            .clients
            .get(&req.client)
            .map(|(_, w)| w.clone());
        let waker = match shared_waker {
            Some(w) => w,
            None => {
                let c = self
                    .clients
                    .get(&req.client)
                    .ok_or_else(|| internal(&"client gone"))?;
                let fd = c.data.as_ref().and_then(|l| l.wake_fd()).ok_or((
                    ErrorCode::RingUnavailable,
                    "channel rings are for shm clients".to_string(),
                ))?;
                let owned = fd.try_clone_to_owned().map_err(|e| internal(&e))?;
                Arc::new(Notifier::from_fd(owned).map_err(|e| internal(&e))?)
            }
        };
        if !self.rings.contains_key(&req.channel) {
            if FDS_PER_RING * (self.rings.len() + 1) + self.ring_use.clients.len() + 1
                > ring_fd_budget()
            {
                let text = format!(
                    "the hub's descriptors for channel rings are spent ({} rings; a quarter of its RLIMIT_NOFILE): the hub relays '{}'",
                    self.rings.len(),
                    req.channel
                );
                tracing::debug!(client = req.client, channel = %req.channel, "channel ring refused: {text}");
                return Err((ErrorCode::RingUnavailable, text));
            }
            // Rings are a shortcut: if the hub cannot make one (no memory,
            // no descriptor, no client slot for its endpoint), it relays.
            self.make_ring(&req.channel, req.overflow, uid)
                .map_err(|e| {
                    (
                        ErrorCode::RingUnavailable,
                        format!(
                            "cannot set up the channel ring ({e}): the hub relays '{}'",
                            req.channel
                        ),
                    )
                })?;
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
                (0..MAX_SLOTS)
                    .map(|i| (r.next_slot + i) % MAX_SLOTS)
                    .find(|i| *i != HUB_SLOT && r.slots[*i].is_none())
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
        let was_writing = r.slots[slot].is_some_and(|(_, roles)| roles & RING_WRITE != 0);
        let reading = req.roles & RING_READ != 0;
        if fresh {
            r.next_slot = slot + 1;
            // Charged from now on (see `check_ring_quota`).
            self.ring_use.charge(req.client, uid, r, &waker);
            r.slot_uid[slot] = uid;
        }
        r.slots[slot] = Some((req.client, req.roles));
        // (Re)attach only when the slot is new or starts or stops reading: a
        // reader's cursor must never jump (what lies between is unread).
        if fresh || was_reading != reading {
            r.mgmt.attach(slot, u64::from(req.client), reading);
        }
        if let Ok(mut s) = r.shared.lock() {
            s.wakers[slot] = Some(waker);
            let id = req.client;
            let w = r.mgmt.write_pos();
            // A writer that stops writing may have left records the hub
            // has yet to read: its id stays a valid origin until then.
            if req.roles & RING_WRITE != 0 {
                s.set_writer(id, None);
            } else if was_writing {
                s.set_writer(id, Some(w));
            }
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

    /// May `client` (of `uid`) join one more ring, `channel`'s? Past a
    /// quota the hub relays the channel instead (RING_UNAVAILABLE naming
    /// the key): rings are a shortcut, never the only way.
    fn check_ring_quota(
        &self,
        client: ClientId,
        uid: u32,
        channel: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let shm = &self.hub.config().shm;
        let mine = self.ring_use.clients.get(&client).map_or(0, |c| c.0);
        let (uid_rings, uid_bytes) = self.ring_use.uids.get(&uid).copied().unwrap_or_default();
        let uid_has_it = self.rings.get(channel).is_some_and(|r| r.has_uid(uid));
        let size = self
            .rings
            .get(channel)
            .map_or_else(|| self.ring_size().1, |r| r.bytes);
        let refused = if mine >= shm.max_rings_per_client {
            Some(format!(
                "client {client} holds {mine} channel rings already (limit shm.max_rings_per_client)"
            ))
        } else if !uid_has_it && uid_rings >= shm.max_rings_per_uid {
            Some(format!(
                "uid {uid} holds {uid_rings} channel rings already (limit shm.max_rings_per_uid)"
            ))
        } else if !uid_has_it && uid_bytes + size > shm.max_ring_bytes_per_uid {
            Some(format!(
                "uid {uid} holds {uid_bytes} bytes of channel rings; {size} more would pass shm.max_ring_bytes_per_uid"
            ))
        } else {
            None
        };
        match refused {
            None => Ok(()),
            Some(why) => {
                let text = format!("{why}: the hub relays '{channel}'");
                tracing::debug!(client, uid, channel, "channel ring refused: {text}");
                Err((ErrorCode::RingUnavailable, text))
            }
        }
    }

    /// (data capacity, bytes of the whole memfd) of a ring made now.
    fn ring_size(&self) -> (usize, usize) {
        let cfg = self.hub.config();
        let need = 2 * (cfg.hub.max_message_size as usize + wire::HEADER_LEN + 255 + 64);
        let cap = cfg.shm.channel_ring_size.max(need).next_power_of_two();
        (cap, cap + bring::HEADER_BYTES)
    }

    fn make_ring(&mut self, channel: &str, overflow: Overflow, owner: u32) -> std::io::Result<()> {
        let (size, bytes) = self.ring_size();
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
            writers: Vec::new(),
            relayed: Default::default(),
            unsettled: 0,
            hub_cursor: None,
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
        info!(
            channel,
            size,
            policy = overflow.as_str(),
            "channel ring created"
        );
        let ring = ChannelRing::new(
            mgmt,
            memfd,
            hub_event,
            peer,
            shared,
            owner,
            HUB_SLOT + 1,
            self.hub.config().hub.block_timeout_ms,
        );
        debug_assert_eq!(ring.bytes, bytes);
        self.rings.insert(channel.to_string(), ring);
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
        if !self.ring_use.clients.contains_key(&client) {
            return; // in no ring: nothing to free (and no mapping to hold a lock with)
        }
        let mut retry = Vec::new();
        for (channel, r) in self.rings.iter_mut() {
            if only.is_some_and(|o| o != channel) {
                continue;
            }
            for slot in 0..MAX_SLOTS {
                if r.slots[slot].is_none_or(|(c, _)| c != client) {
                    continue;
                }
                let wrote = r.slots[slot].is_some_and(|(_, roles)| roles & RING_WRITE != 0);
                r.slots[slot] = None;
                self.ring_use.release(client, r.slot_uid[slot], r);
                r.mgmt.detach(slot);
                let w = r.mgmt.write_pos();
                if let Ok(mut s) = r.shared.lock() {
                    s.wakers[slot] = None;
                    if wrote {
                        // What it wrote may still be unread by the hub.
                        s.set_writer(client, Some(w));
                    }
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
    /// out corrupt: a participant wrote something no correct writer
    /// writes). The ring cannot be trusted any more: retire it.
    /// True if `id` was a ring's endpoint.
    pub(super) fn ring_failed(&mut self, id: ClientId, reason: &CloseReason) -> bool {
        let Some(channel) = self
            .rings
            .iter()
            .find(|(_, r)| r.peer == id)
            .map(|(ch, _)| ch.clone())
        else {
            return false;
        };
        self.retire_ring(&channel, &reason.to_string());
        true
    }

    /// Retire `channel`'s ring: nobody uses it any more, and since the hub
    /// cannot tell who broke it, nobody is disconnected for it. Each
    /// participant is told (an unsolicited RING with slot 2^32-1, roles 0);
    /// its readers become ordinary subscribers of the channel, so they lose
    /// at most what was in the ring; writers get a fresh ring when they ask.
    fn retire_ring(&mut self, channel: &str, reason: &str) {
        let Some(mut r) = self.rings.remove(channel) else {
            return;
        };
        let members: Vec<(ClientId, u8)> = r.slots.iter().flatten().copied().collect();
        self.ring_use.release_all(&mut r);
        warn!(message_id = crate::daemon::logging::msgid::RING_RETIRED, channel = %channel, "channel ring retired: {reason}");
        r.mgmt.mark_retired();
        self.hub.detach_ring(channel);
        self.hub.remove(r.peer);
        self.finalize(r.peer);
        for (c, roles) in members {
            if roles & RING_READ != 0 {
                self.hub.ring_reader_relayed(c, channel);
            }
            self.hub.send_ring_retired(c, channel);
        }
    }

    fn tear_down_ring(&mut self, channel: &str) {
        let Some(mut r) = self.rings.remove(channel) else {
            return;
        };
        self.ring_use.release_all(&mut r);
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
            self.close(client, CloseReason::RingAnswer(e));
        }
    }
}

use crate::wire::ErrorCode;

/// Planned restart: channel rings handed to the next hub
/// (`daemon/handover.rs`, `HandedRing`).
impl EventLoop {
    /// Of the clients in `keep` (those the hand-over could keep), leave out
    /// every participant of a ring that cannot go along whole, until only
    /// whole rings remain (a client may be in several). Returns the
    /// channels whose rings go along. A ring goes along when every one of
    /// its participants is kept, its endpoint is serving, and the ring is
    /// not being retired; one with no participant left (draining) stays.
    pub(super) fn rings_to_hand_over(
        &self,
        keep: &mut std::collections::HashSet<ClientId>,
    ) -> Vec<String> {
        loop {
            let mut changed = false;
            for r in self.rings.values() {
                let members: Vec<ClientId> = r.slots.iter().flatten().map(|(c, _)| *c).collect();
                let endpoint_ok = self
                    .clients
                    .get(&r.peer)
                    .is_some_and(|c| c.closing.is_none() && c.data.is_some());
                if members.iter().all(|c| keep.contains(c)) && endpoint_ok {
                    continue;
                }
                for c in members {
                    changed |= keep.remove(&c);
                }
            }
            // Whoever holds a slot in a ring that does not go along stays
            // behind: so do the other members of its rings.
            for (id, _) in self.ring_use.clients.iter() {
                if !keep.contains(id) {
                    continue;
                }
                let in_broken = self.rings.values().any(|r| {
                    r.has(*id) && r.slots.iter().flatten().any(|(c, _)| !keep.contains(c))
                });
                if in_broken {
                    keep.remove(id);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.rings
            .iter()
            .filter(|(_, r)| {
                r.participants() > 0 && r.slots.iter().flatten().all(|(c, _)| keep.contains(c))
            })
            .map(|(ch, _)| ch.clone())
            .collect()
    }

    /// The clients holding a slot in `channel`'s ring.
    pub(super) fn ring_members(&self, channel: &str) -> Vec<ClientId> {
        self.rings.get(channel).map_or_else(Vec::new, |r| {
            r.slots.iter().flatten().map(|(c, _)| *c).collect()
        })
    }

    /// Take `channel`'s ring out of the loop for the successor: its memfd
    /// and eventfd duplicated (close-on-exec cleared), its endpoint's queue
    /// and unhandled input, its slots and the hub's bookkeeping. The ring
    /// itself is left exactly as it is (no slot detached, no cursor moved):
    /// its participants carry on in it.
    pub(super) fn export_ring(
        &mut self,
        channel: &str,
    ) -> Option<crate::daemon::handover::HandedRing> {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let r = self.rings.get(channel)?;
        let endpoint = self.hub.export_client(r.peer)?;
        let memfd = nix::unistd::dup(r.memfd.as_raw_fd()).ok()?;
        let hub_event = match nix::unistd::dup(r.hub_event.as_raw_fd()) {
            Ok(fd) => fd,
            Err(_) => {
                let _ = nix::unistd::close(memfd);
                return None;
            }
        };
        let mut r = self.rings.remove(channel).expect("just seen");
        let (want_reader, written, writers, relayed, hub_cursor) = match r.shared.lock() {
            Ok(s) => (
                s.want_reader,
                s.written,
                s.writers.clone(),
                s.relayed
                    .export()
                    .into_iter()
                    .map(|(seq, record)| crate::daemon::handover::RelayedRecord { seq, record })
                    .collect(),
                s.hub_cursor,
            ),
            Err(_) => (false, 0, Vec::new(), Vec::new(), None),
        };
        let slots: Vec<(usize, u32, u8, u32)> = (0..MAX_SLOTS)
            .filter_map(|s| r.slots[s].map(|(c, roles)| (s, c, roles, r.slot_uid[s])))
            .collect();
        let policy = match r.mgmt.policy() {
            bring::Policy::Block => "block",
            bring::Policy::DropOldest => "drop-oldest",
        };
        let next_slot = r.next_slot;
        // Its endpoint leaves the loop (its mapping goes with it).
        let peer = r.peer;
        let endpoint_input = self
            .clients
            .get_mut(&peer)
            .map(|c| std::mem::take(&mut c.data_in))
            .unwrap_or_default();
        self.ring_use.release_all(&mut r);
        self.hub.detach_ring(channel);
        self.hub.remove(peer);
        self.finalize(peer);
        drop(r);
        Some(crate::daemon::handover::HandedRing {
            channel: channel.to_string(),
            memfd: memfd.into_raw_fd(),
            hub_event: hub_event.into_raw_fd(),
            policy: policy.into(),
            endpoint,
            endpoint_input,
            slots,
            next_slot,
            want_reader,
            written,
            writers,
            relayed,
            hub_cursor,
        })
    }

    /// After a planned restart, once the clients are back
    /// (`restore_clients`): serve the channel rings the predecessor handed
    /// over. Each is checked again as a new one would be: the memfd sealed
    /// against resizing, of a plausible size, its header's magic, version
    /// and capacity, and its policy the one the predecessor recorded (a
    /// participant could have rewritten the header's); the eventfd an
    /// eventfd; the channel still allowed a ring, every participant an shm
    /// client taken over and still allowed to read and write it. A ring
    /// that fails is retired as any other (its readers become ordinary
    /// subscribers, its writers go through the hub): no one reconnects.
    pub fn restore_rings(&mut self, rings: Vec<crate::daemon::handover::HandedRing>) {
        for h in rings {
            // Claimed first, whatever happens next: nothing inherited stays
            // open unowned.
            let memfd = crate::daemon::handover::claim(h.memfd);
            let event = crate::daemon::handover::claim(h.hub_event);
            let (memfd, event) = match (memfd, event) {
                (Ok(m), Ok(e)) => (m, e),
                (m, e) => {
                    let err = m.err().or(e.err()).expect("one failed");
                    self.refuse_handed_ring(&h, None, &format!("its descriptors: {err}"));
                    continue;
                }
            };
            if let Err((why, mgmt)) = self.adopt_ring(&h, memfd, event) {
                self.refuse_handed_ring(&h, mgmt.as_ref(), &why);
            }
        }
    }

    fn adopt_ring(
        &mut self,
        h: &crate::daemon::handover::HandedRing,
        memfd: OwnedFd,
        event: OwnedFd,
    ) -> Result<(), (String, Option<BRing>)> {
        use std::os::fd::AsRawFd;
        let _ = nix::fcntl::fcntl(
            memfd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let _ = nix::fcntl::fcntl(
            event.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // Sealed as the hub seals a ring it makes (shrink, grow, and no new
        // seal), not only as a participant requires (shrink).
        {
            use nix::fcntl::{fcntl, FcntlArg, SealFlag};
            let need = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
            let seals = fcntl(memfd.as_raw_fd(), FcntlArg::F_GET_SEALS)
                .map(SealFlag::from_bits_truncate)
                .map_err(|e| (format!("its memfd's seals: {e}"), None))?;
            if !seals.contains(need) {
                return Err((
                    "its memfd is not sealed as the hub seals rings".into(),
                    None,
                ));
            }
        }
        let mgmt = BRing::open(&memfd).map_err(|e| (format!("its memfd: {e}"), None))?;
        let fail = |why: String, mgmt: BRing| Err((why, Some(mgmt)));
        let policy = match h.policy.as_str() {
            "block" => bring::Policy::Block,
            "drop-oldest" => bring::Policy::DropOldest,
            _ => return fail("an unknown policy".into(), mgmt),
        };
        if mgmt.policy() != policy || !mgmt.header_intact() || !mgmt.positions_sane() {
            return fail(
                "its header or positions were overwritten while no hub ran".into(),
                mgmt,
            );
        }
        let cfg = self.hub.config();
        let need = cfg.hub.max_message_size as usize + wire::HEADER_LEN + 255 + 64;
        if mgmt.max_record() < need {
            return fail(
                "it is too small for today's hub.max_message_size".into(),
                mgmt,
            );
        }
        let channel = h.channel.as_str();
        // The channel may still have a ring (made if need be, charged to
        // the first participant's uid, as OPEN_RING would).
        let first_uid = h.slots.first().map_or(0, |s| s.3);
        if let Err(why) = self.hub.ring_still_allowed(channel, first_uid) {
            return fail(why, mgmt);
        }
        // Every participant: an shm client taken over, allowed in the ring.
        let mut wakers: Vec<(usize, ClientId, u8, u32, Arc<Notifier>)> = Vec::new();
        for &(slot, client, roles, _) in &h.slots {
            let Some(c) = self.clients.get(&client) else {
                return fail(format!("participant {client} was not taken over"), mgmt);
            };
            if c.transport != TransportKind::Shm || !self.hub.may_use_ring(client, channel) {
                return fail(format!("participant {client} may not use it"), mgmt);
            }
            let uid = c.ident.uid;
            // A ring is one uid's (see `ChannelRing::owner`).
            if uid != first_uid {
                return fail(
                    format!("participant {client} is of uid {uid}, the ring of uid {first_uid}"),
                    mgmt,
                );
            }
            let shared = self.ring_use.clients.get(&client).map(|(_, w)| w.clone());
            let waker = match shared {
                Some(w) => w,
                None => {
                    let fd = c
                        .data
                        .as_ref()
                        .and_then(|l| l.wake_fd())
                        .and_then(|fd| fd.try_clone_to_owned().ok())
                        .and_then(|fd| Notifier::from_fd(fd).ok());
                    match fd {
                        Some(n) => Arc::new(n),
                        None => return fail(format!("participant {client} has no eventfd"), mgmt),
                    }
                }
            };
            wakers.push((slot, client, roles, uid, waker));
        }
        let endpoint_map = match BRing::open(&memfd) {
            Ok(m) => m,
            Err(e) => return fail(format!("its memfd: {e}"), mgmt),
        };
        let own = match Notifier::from_fd(event) {
            Ok(n) => n,
            Err(e) => return fail(format!("its eventfd: {e}"), mgmt),
        };
        let hub_event = match own.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => return fail(format!("its eventfd: {e}"), mgmt),
        };
        let peer = h.endpoint.id;
        let token = u64::from(peer);
        let shared = Arc::new(Mutex::new(RingShared {
            wakers: (0..MAX_SLOTS).map(|_| None).collect(),
            want_reader: h.want_reader,
            reader_gen: 0,
            token,
            missed: 0,
            written: h.written,
            writers: h.writers.clone(),
            relayed: ipchub_os::transport::bring::Relayed::import(
                h.relayed.iter().map(|r| (r.seq, r.record.as_slice())),
            ),
            unsettled: 0,
            hub_cursor: h.hub_cursor,
        }));
        let link = BringLink::new(endpoint_map, channel, own, shared.clone());
        if let Err(why) = self.hub.import_ring_endpoint(&h.endpoint, channel) {
            return fail(format!("its endpoint: {why}"), mgmt);
        }
        if let Err(e) = self.register_link(peer, &link) {
            self.hub.detach_ring(channel);
            self.hub.remove(peer);
            return fail(format!("its endpoint: {e}"), mgmt);
        }
        self.hub.set_max_frame(peer, link.max_frame());
        self.clients.insert(
            peer,
            Client {
                ident: self.hub.identity(peer).expect("just imported"),
                ctrl: None,
                ctrl_in: Vec::new(),
                data: Some(Box::new(link)),
                data_in: h.endpoint_input.clone(),
                greeted: true,
                hello_fds: Vec::new(),
                input_accounted: 0,
                paused: false,
                transport: TransportKind::Shm,
                closing: None,
                ctrl_gone: false,
            },
        );
        self.sync_input(peer);
        let mut r = ChannelRing::new(
            mgmt,
            memfd,
            hub_event,
            peer,
            shared,
            first_uid,
            h.next_slot.clamp(HUB_SLOT + 1, MAX_SLOTS - 1),
            self.hub.config().hub.block_timeout_ms,
        );
        for (slot, client, roles, uid, waker) in wakers {
            self.ring_use.charge(client, uid, &r, &waker);
            r.slot_uid[slot] = uid;
            r.slots[slot] = Some((client, roles));
            if let Ok(mut s) = r.shared.lock() {
                s.wakers[slot] = Some(waker);
            }
            self.hub
                .set_direct_reader(channel, client, roles & RING_READ != 0);
        }
        self.rings.insert(channel.to_string(), r);
        // Whatever happened while no hub ran (records written, waits
        // armed): looked at now, not at the next wake-up.
        self.pending.push(peer);
        info!(channel, "channel ring taken over");
        Ok(())
    }

    /// A handed-over ring that cannot be served: retired as any other
    /// (`retire_ring`), for participants that were taken over.
    fn refuse_handed_ring(
        &mut self,
        h: &crate::daemon::handover::HandedRing,
        mgmt: Option<&BRing>,
        why: &str,
    ) {
        warn!(message_id = crate::daemon::logging::msgid::RING_RETIRED, channel = %h.channel, "channel ring handed over but not taken over, retired: {why}");
        if let Some(m) = mgmt {
            m.mark_retired();
        }
        for &(_, client, roles, _) in &h.slots {
            if !self.clients.contains_key(&client) {
                continue;
            }
            if roles & RING_READ != 0 {
                self.hub.ring_reader_relayed(client, &h.channel);
            }
            self.hub.send_ring_retired(client, &h.channel);
        }
    }
}
