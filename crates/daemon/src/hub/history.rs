//! Channel history in memory: the last messages of channels configured with
//! history bounds, each numbered with a per-channel sequence number, replayed
//! to subscribers that ask (`last=N`, `since_ms=T`, `from_seq=S`).
//!
//! - The channel sequence number is assigned when the message is delivered,
//!   and reaches subscribers that asked for it (SUBSCRIBE flag
//!   `CHANNEL_SEQ`) as an 8-byte prefix of the DATA payload, marked by the
//!   same flag on DATA; others get the message unchanged.
//! - The seam: like retained values (retain.rs), a replay is queued in the
//!   SUBSCRIBE's own step, right behind its ACK, so every live message comes
//!   after the replayed ones: no gap, no duplicate.
//! - Bounded per channel (`history_messages`, `history_bytes`,
//!   `history_age`: the oldest go first), and per uid and in total
//!   (`hub.max_history_bytes_per_uid`, `hub.max_history_bytes`), each
//!   message charged to the uid that published it while it is kept. A
//!   publish whose storing would pass a uid or total bound is refused
//!   before it is delivered.
//! - Kept apart from the channel table, so collecting an idle channel does
//!   not lose its history or restart its numbering.

use std::collections::VecDeque;

use super::*;
use crate::config::HistoryBounds;
use crate::wire::{CHANNEL_SEQ, HEADER_LEN};

/// Bookkeeping charged per stored message beyond its payload and name.
pub const ENTRY_OVERHEAD: usize = 64;

struct Entry {
    chan_seq: u64,
    at: Instant,
    origin: ClientId,
    seq: u64,
    priority: u8,
    payload: Box<[u8]>,
    uid: u32,
    cost: usize,
}

/// One channel's stored messages.
pub(super) struct ChannelHistory {
    entries: VecDeque<Entry>,
    /// Payload bytes of `entries` (what `history_bytes` bounds).
    payload_bytes: usize,
    next_seq: u64,
    bounds: HistoryBounds,
}

/// Every channel's history and what each uid is charged for it.
#[derive(Default)]
pub(super) struct HistoryStore {
    channels: HashMap<Box<str>, ChannelHistory>,
    by_uid: HashMap<u32, usize>,
    bytes: usize,
    floors: SeqFloors,
}

/// How many channel sequence numbers one reservation covers.
pub const SEQ_RESERVATION: u64 = 1 << 20;

/// Channel sequence numbers increase across restarts, for channels kept in
/// memory too (a disk channel's log numbers it, exactly): numbers are
/// reserved in blocks of [`SEQ_RESERVATION`] in a small file under the
/// state directory (`sequences`, mode 0600), an append-only list of
/// `<escaped channel> <first unreserved number>` lines (the last line of a
/// channel wins). A block is appended, one `write(2)`, *before* a number of
/// it is used, so a restart after a clean stop or a `kill -9` continues
/// from the reservation: numbers may jump, never repeat. No fsync on the
/// data thread (a power loss, which also loses the memory history, may
/// repeat numbers). The file is rewritten without its stale lines when
/// they outnumber the live ones. One line per million messages per
/// channel, and one per channel that starts numbering.
///
/// Per-channel numbering is kept only while it is needed, so invented
/// channel names cannot grow it: at start no memory channel holds a
/// message, so every reservation read back folds into one hub-wide floor
/// (the empty name: a line `" <n>"`), where every channel's numbering
/// starts in this process; a channel whose history is dropped folds its
/// reservation into that floor too. Every channel's numbers still only
/// increase (they jump to the floor). What remains per channel belongs to
/// channels holding stored messages, which are charged to their uids.
#[derive(Default)]
struct SeqFloors {
    path: Option<std::path::PathBuf>,
    /// Open for appending (opened at the first reservation).
    file: Option<std::fs::File>,
    /// Lines in the file, to know when to compact it.
    lines: usize,
    /// Where each channel's numbering starts in this process: what was
    /// reserved when it started.
    start: HashMap<Box<str>, u64>,
    /// First number not yet reserved, per channel.
    reserved: HashMap<Box<str>, u64>,
}

impl SeqFloors {
    /// Where the reservations live, and what they say now. A missing file
    /// is an empty one; unreadable lines are skipped (logged once).
    fn load(path: std::path::PathBuf) -> SeqFloors {
        let mut reserved: HashMap<Box<str>, u64> = HashMap::default();
        let mut lines = 0;
        let mut bad = 0;
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                lines += 1;
                let parsed = line.split_once(' ').and_then(|(name, n)| {
                    Some((crate::store::unescape(name)?, n.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some((name, n)) => {
                        let r = reserved.entry(name.into_boxed_str()).or_insert(n);
                        *r = (*r).max(n);
                    }
                    None => bad += 1,
                }
            }
        }
        if bad > 0 {
            tracing::warn!(
                file = %path.display(),
                lines = bad,
                "unreadable lines in the sequence reservations: skipped"
            );
        }
        // No memory channel has a message yet: one floor serves them all.
        let mut folded: HashMap<Box<str>, u64> = HashMap::default();
        if let Some(&n) = reserved.values().max() {
            folded.insert("".into(), n);
        }
        SeqFloors {
            path: Some(path),
            file: None,
            lines,
            start: folded.clone(),
            reserved: folded,
        }
    }

    /// The first number `channel` may use now.
    fn floor(&self, channel: &str) -> u64 {
        self.start
            .get(channel)
            .or_else(|| self.start.get(""))
            .copied()
            .unwrap_or(1)
            .max(1)
    }

    /// `channel` (whose next number was `next`) keeps no numbering of its
    /// own any more: fold what it reserved into the hub-wide floor.
    fn forget(&mut self, channel: &str, next: u64) {
        let mine = [
            self.reserved.remove(channel),
            self.start.remove(channel),
            Some(next),
        ];
        let n = mine.into_iter().flatten().max().unwrap_or(1);
        if self.start.get("").is_some_and(|&f| f >= n) {
            return;
        }
        self.start.insert("".into(), n);
        self.reserved.insert("".into(), n);
        if self.path.is_some() {
            if let Err(e) = self.append(format!(" {n}\n").as_bytes()) {
                self.file = None;
                tracing::warn!("cannot save channel sequence reservations ({e}): numbers may repeat after a restart");
            }
        }
    }

    /// Make sure `seq` is reserved for `channel` before it is used.
    fn reserve(&mut self, channel: &str, seq: u64) {
        if self.path.is_none() || self.reserved.get(channel).is_some_and(|&r| seq < r) {
            return;
        }
        let next = seq.saturating_add(SEQ_RESERVATION);
        self.reserved.insert(channel.into(), next);
        let line = format!("{} {next}\n", crate::store::escape(channel));
        let res = if self.lines > 2 * self.reserved.len() + 64 {
            self.compact()
        } else {
            self.append(line.as_bytes())
        };
        if let Err(e) = res {
            self.file = None;
            let path = self.path.as_deref().unwrap_or(std::path::Path::new(""));
            tracing::warn!(
                file = %path.display(),
                "cannot save channel sequence reservations ({e}): numbers may repeat after a restart"
            );
        }
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            let path = self.path.as_deref().expect("checked by reserve");
            self.file = Some(open_private(path, false)?);
        }
        self.file.as_mut().expect("opened above").write_all(line)?;
        self.lines += 1;
        Ok(())
    }

    /// Rewrite the file with one line per channel (a temporary file renamed
    /// over it: a crash leaves the old list or the new one).
    fn compact(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.path.clone().expect("checked by reserve");
        let mut text = String::new();
        for (name, n) in &self.reserved {
            text.push_str(&crate::store::escape(name));
            text.push(' ');
            text.push_str(&n.to_string());
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        open_private(&tmp, true)?.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, &path)?;
        self.file = Some(open_private(&path, false)?);
        self.lines = self.reserved.len();
        Ok(())
    }
}

/// Open `path` (mode 0600, its directory 0700 if missing) for appending,
/// or truncated for writing.
fn open_private(path: &std::path::Path, truncate: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    o.create(true).mode(0o600).open(path)
}

pub use crate::wire::Replay;

/// Why a publish on a channel with history was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("uid {uid} would hold {would} bytes of channel history (limit hub.max_history_bytes_per_uid = {limit})")]
    OverUid {
        uid: u32,
        would: usize,
        limit: usize,
    },
    #[error("the hub would hold {would} bytes of channel history (limit hub.max_history_bytes = {limit})")]
    OverTotal { would: usize, limit: usize },
}

/// Stored-message figures of one channel, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryFigures {
    pub messages: usize,
    pub bytes: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl HistoryStore {
    /// The channel sequence number the next message on `channel` gets.
    pub(super) fn next_seq(&self, channel: &str) -> u64 {
        self.channels
            .get(channel)
            .map_or_else(|| self.floors.floor(channel), |h| h.next_seq)
    }

    pub(super) fn figures(&self, channel: &str) -> Option<HistoryFigures> {
        let h = self.channels.get(channel)?;
        Some(HistoryFigures {
            messages: h.entries.len(),
            bytes: h.payload_bytes,
            first_seq: h.entries.front().map_or(0, |e| e.chan_seq),
            last_seq: h.next_seq - 1,
        })
    }

    /// Hub-wide: stored messages and their charged bytes.
    pub(super) fn totals(&self) -> (usize, usize) {
        (
            self.channels.values().map(|h| h.entries.len()).sum(),
            self.bytes,
        )
    }

    /// How many of `h`'s oldest entries go to make room for `len` more
    /// payload bytes at `now` (age first, then the count and byte bounds).
    fn evictions(h: &ChannelHistory, len: usize, now: Instant) -> usize {
        let mut n = 0;
        let mut count = h.entries.len();
        let mut bytes = h.payload_bytes;
        for e in &h.entries {
            let old = h
                .bounds
                .age
                .is_some_and(|a| now.saturating_duration_since(e.at) > a);
            if !(old || count + 1 > h.bounds.messages || bytes + len > h.bounds.bytes) {
                break;
            }
            n += 1;
            count -= 1;
            bytes -= e.payload.len();
        }
        n
    }

    fn evict_front(&mut self, channel: &str, n: usize) {
        let Some(h) = self.channels.get_mut(channel) else {
            return;
        };
        for _ in 0..n {
            let Some(e) = h.entries.pop_front() else {
                break;
            };
            h.payload_bytes -= e.payload.len();
            self.bytes -= e.cost;
            if let Some(c) = self.by_uid.get_mut(&e.uid) {
                *c -= e.cost;
                if *c == 0 {
                    self.by_uid.remove(&e.uid);
                }
            }
        }
    }

    /// New bounds (a reload): trim at once; None drops the history.
    pub(super) fn rebound(&mut self, channel: &str, bounds: Option<HistoryBounds>, now: Instant) {
        let Some(h) = self.channels.get_mut(channel) else {
            return;
        };
        match bounds {
            Some(b) => {
                h.bounds = b;
                let (mut n, mut count, mut bytes) = (0, h.entries.len(), h.payload_bytes);
                for e in &h.entries {
                    let old = b
                        .age
                        .is_some_and(|a| now.saturating_duration_since(e.at) > a);
                    if !(old || count > b.messages || bytes > b.bytes) {
                        break;
                    }
                    n += 1;
                    count -= 1;
                    bytes -= e.payload.len();
                }
                self.evict_front(channel, n);
            }
            None => {
                let n = h.entries.len();
                self.evict_front(channel, n);
                self.forget(channel);
                return;
            }
        }
        // A memory channel left without messages keeps no record.
        if self
            .channels
            .get(channel)
            .is_some_and(|h| h.entries.is_empty() && h.bounds.disk.is_none())
        {
            self.forget(channel);
        }
    }

    /// Drop `channel`'s record; its numbering folds into the hub-wide
    /// floor, so its numbers never repeat, even if it comes back as a
    /// memory channel (a disk channel's numbers are in no reservation).
    fn forget(&mut self, channel: &str) {
        if let Some(h) = self.channels.remove(channel) {
            self.floors.forget(channel, h.next_seq);
        }
    }

    /// Read-back records (disk storage, at start): the channel's history
    /// and its numbering continue from them. Ignored for a channel that
    /// already has a history in memory.
    pub(super) fn load(
        &mut self,
        channel: &str,
        bounds: HistoryBounds,
        records: Vec<crate::store::Record>,
        now_ms: u64,
    ) {
        if records.is_empty() || self.channels.contains_key(channel) {
            return;
        }
        let now = Instant::now();
        // The log numbers a disk channel: it continues exactly.
        let next_seq = records.last().map_or(1, |r| r.chan_seq + 1);
        let mut h = ChannelHistory {
            entries: VecDeque::new(),
            payload_bytes: 0,
            next_seq,
            bounds,
        };
        for r in records {
            let cost = r.payload.len() + channel.len() + ENTRY_OVERHEAD;
            let age = Duration::from_millis(now_ms.saturating_sub(r.time_ms));
            h.payload_bytes += r.payload.len();
            self.bytes += cost;
            *self.by_uid.entry(r.uid).or_insert(0) += cost;
            h.entries.push_back(Entry {
                chan_seq: r.chan_seq,
                at: now.checked_sub(age).unwrap_or(now),
                origin: r.origin,
                seq: r.pub_seq,
                priority: r.priority,
                payload: r.payload.into(),
                uid: r.uid,
                cost,
            });
        }
        self.channels.insert(channel.into(), h);
        self.rebound(channel, Some(bounds), now);
    }

    /// A message got `channel`'s next number but could not be stored.
    pub(super) fn skip_seq(&mut self, channel: &str, bounds: HistoryBounds) {
        let floor = self.floors.floor(channel);
        let h = self
            .channels
            .entry(channel.into())
            .or_insert_with(|| ChannelHistory {
                entries: VecDeque::new(),
                payload_bytes: 0,
                next_seq: floor,
                bounds,
            });
        h.next_seq += 1;
        let next = h.next_seq;
        if bounds.disk.is_none() {
            self.floors.reserve(channel, next);
        }
    }

    /// Take back `channel`'s entries numbered `from` and up (their disk
    /// write failed: they were never stored). Their numbers stay skipped.
    pub(super) fn unstore_from(&mut self, channel: &str, from: u64) {
        let Some(h) = self.channels.get_mut(channel) else {
            return;
        };
        while h.entries.back().is_some_and(|e| e.chan_seq >= from) {
            let e = h.entries.pop_back().expect("checked");
            h.payload_bytes -= e.payload.len();
            self.bytes -= e.cost;
            if let Some(c) = self.by_uid.get_mut(&e.uid) {
                *c -= e.cost;
                if *c == 0 {
                    self.by_uid.remove(&e.uid);
                }
            }
        }
    }

    /// Keep sequence reservations in `path` (the daemon, once it has a
    /// state directory): numbering continues from what it says.
    pub(super) fn keep_sequences_in(&mut self, path: std::path::PathBuf) {
        self.floors = SeqFloors::load(path);
    }

    /// Reserve `channel`'s next number before it is handed out (called
    /// before delivery, so a number on the wire is always reserved).
    pub(super) fn reserve_next(&mut self, channel: &str) {
        let next = self.next_seq(channel);
        self.floors.reserve(channel, next);
    }

    /// Channels that have a history now.
    pub(super) fn names(&self) -> Vec<Box<str>> {
        self.channels.keys().cloned().collect()
    }
}

impl Hub {
    /// Check, before delivering, that `uid` may store a message of `len`
    /// payload bytes on `channel` (with history `bounds`).
    pub(super) fn check_history(
        &self,
        uid: u32,
        channel: &str,
        len: usize,
        now: Instant,
    ) -> Result<(), HistoryError> {
        let store = &self.history;
        let cost = len + channel.len() + ENTRY_OVERHEAD;
        let (mut freed_total, mut freed_uid) = (0, 0);
        if let Some(h) = store.channels.get(channel) {
            for e in h.entries.iter().take(HistoryStore::evictions(h, len, now)) {
                freed_total += e.cost;
                if e.uid == uid {
                    freed_uid += e.cost;
                }
            }
        }
        let mine = store.by_uid.get(&uid).copied().unwrap_or(0) - freed_uid + cost;
        if mine > self.cfg.hub.max_history_bytes_per_uid {
            return Err(HistoryError::OverUid {
                uid,
                would: mine,
                limit: self.cfg.hub.max_history_bytes_per_uid,
            });
        }
        let total = store.bytes - freed_total + cost;
        if total > self.cfg.hub.max_history_bytes {
            return Err(HistoryError::OverTotal {
                would: total,
                limit: self.cfg.hub.max_history_bytes,
            });
        }
        Ok(())
    }

    /// Store a delivered message as `channel`'s next, numbered `chan_seq`
    /// (what [`HistoryStore::next_seq`] said before delivery). Some(first
    /// number kept) when older entries went to make room (a disk log may
    /// then drop segments).
    pub(super) fn store_history(
        &mut self,
        id: ClientId,
        origin: ClientId,
        frame: &Frame<'_>,
        bounds: HistoryBounds,
        now: Instant,
    ) -> Option<u64> {
        let uid = self.peers.get(&id).map_or(0, |p| p.ident.uid);
        let name = frame.channel;
        let store = &mut self.history;
        if !store.channels.contains_key(name) {
            let floor = store.floors.floor(name);
            store.channels.insert(
                name.into(),
                ChannelHistory {
                    entries: VecDeque::new(),
                    payload_bytes: 0,
                    next_seq: floor,
                    bounds,
                },
            );
        }
        let h = &store.channels[name];
        let n = HistoryStore::evictions(h, frame.payload.len(), now);
        store.evict_front(name, n);
        let cost = frame.payload.len() + name.len() + ENTRY_OVERHEAD;
        store.bytes += cost;
        *store.by_uid.entry(uid).or_insert(0) += cost;
        let h = store.channels.get_mut(name).expect("made above");
        let chan_seq = h.next_seq;
        h.next_seq += 1;
        h.payload_bytes += frame.payload.len();
        h.entries.push_back(Entry {
            chan_seq,
            at: now,
            origin,
            seq: frame.header.seq,
            priority: frame.header.priority,
            payload: frame.payload.into(),
            uid,
            cost,
        });
        (n > 0).then(|| h.entries.front().map_or(chan_seq, |e| e.chan_seq))
    }

    /// After client `id` subscribed to `pat` asking for `replay`: queue the
    /// stored messages of every channel with history the pattern matches and
    /// the client may read (except channels another of its patterns already
    /// matched), channel by channel in name order, each in sequence order.
    /// What does not fit its queue is announced as MISSED and counted.
    pub(super) fn send_history(&mut self, id: ClientId, pat: &Pattern, replay: Replay) {
        let now = Instant::now();
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let mut names: Vec<&str> = self
            .history
            .channels
            .keys()
            .map(|k| &**k)
            .filter(|k| pat.matches(k))
            .filter(|name| {
                !peer.patterns.iter().any(|p| p != pat && p.matches(name))
                    && self.policy.allows(name, &peer.creds, Op::Subscribe)
            })
            .collect();
        names.sort_unstable();
        let names: Vec<Box<str>> = names.into_iter().map(Into::into).collect();
        let with_seq = peer.wants_seq;
        let (mut sent, mut missed, mut bytes) = (0u64, 0u64, 0u64);
        for name in names {
            let h = &self.history.channels[&*name];
            let age = h.bounds.age;
            let picked: Vec<&Entry> = h
                .entries
                .iter()
                .filter(|e| age.is_none_or(|a| now.saturating_duration_since(e.at) <= a))
                .collect();
            let from = match replay {
                Replay::Last(n) => picked
                    .len()
                    .saturating_sub(n.min(usize::MAX as u64) as usize),
                Replay::SinceMs(ms) => {
                    let d = Duration::from_millis(ms);
                    picked.partition_point(|e| now.saturating_duration_since(e.at) > d)
                }
                Replay::FromSeq(s) => picked.partition_point(|e| e.chan_seq < s),
            };
            let p = self.peers.get_mut(&id).expect("looked up above");
            for e in &picked[from..] {
                let extra = if with_seq { 8 } else { 0 };
                let len = HEADER_LEN + name.len() + extra + e.payload.len();
                if !fits_link(p, len)
                    || !p.out.has_room(len)
                    || !uid_room(&self.uid_bytes, &self.cfg, p, len)
                {
                    missed += 1;
                    continue;
                }
                let flags = if with_seq { CHANNEL_SEQ } else { 0 };
                let header = encode_header(
                    FrameType::Data,
                    flags,
                    e.priority,
                    name.len(),
                    extra + e.payload.len(),
                    e.origin,
                    e.seq,
                );
                let cs = e.chan_seq.to_le_bytes();
                let prefix: &[u8] = if with_seq { &cs } else { &[] };
                p.out
                    .push(Kind::Data, &[&header, name.as_bytes(), prefix, &e.payload]);
                sync_uid(&mut self.uid_bytes, p);
                p.counters.messages_out += 1;
                sent += 1;
                bytes += e.payload.len() as u64;
            }
            mark_dirty(&mut self.dirty, id, p);
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

    /// Does a replay of `pat` cover `channel` (so its retained value, which
    /// the history holds anyway, is not sent as well)?
    pub(super) fn has_history(&self, channel: &str) -> bool {
        self.history.channels.contains_key(channel)
    }

    /// A reload changed the history bounds: trim or drop what is stored.
    pub(super) fn rebound_history(&mut self) {
        let now = Instant::now();
        for name in self.history.names() {
            let b = self.cfg.history_for(&name);
            self.history.rebound(&name, b, now);
            if let Some(f) = self.history.figures(&name) {
                self.trim_log(&name, f.first_seq);
            }
        }
    }
}

/// Planned restart (hub/snapshot.rs): the memory channels' histories as
/// data, and back. Disk channels are left out: their logs are read back.
impl HistoryStore {
    pub(super) fn export(&self, now: Instant) -> Vec<super::snapshot::HistorySnapshot> {
        let mut v: Vec<_> = self
            .channels
            .iter()
            .filter(|(_, h)| h.bounds.disk.is_none())
            .map(|(name, h)| super::snapshot::HistorySnapshot {
                channel: name.to_string(),
                next_seq: h.next_seq,
                entries: h
                    .entries
                    .iter()
                    .map(|e| super::snapshot::HistoryEntry {
                        chan_seq: e.chan_seq,
                        age_ms: now.saturating_duration_since(e.at).as_millis() as u64,
                        origin: e.origin,
                        seq: e.seq,
                        priority: e.priority,
                        uid: e.uid,
                        payload: e.payload.to_vec(),
                    })
                    .collect(),
            })
            .collect();
        v.sort_by(|a, b| a.channel.cmp(&b.channel));
        v
    }

    /// Take over a memory channel's history with its numbering unchanged:
    /// the newest messages that fit `limits` (per uid, total) and are no
    /// larger than `max_payload`, then trimmed to `bounds` as after a
    /// reload. Ok((kept, left out)); Err if the channel has a history
    /// already or the numbers are not in order.
    pub(super) fn import(
        &mut self,
        s: &super::snapshot::HistorySnapshot,
        bounds: HistoryBounds,
        limits: (usize, usize),
        max_payload: usize,
        now: Instant,
    ) -> Result<(usize, usize), String> {
        let name = s.channel.as_str();
        if self.channels.contains_key(name) {
            return Err("the channel has a history already".into());
        }
        let ordered = s.entries.windows(2).all(|w| w[0].chan_seq < w[1].chan_seq);
        if s.next_seq == 0 || !ordered || s.entries.last().is_some_and(|e| e.chan_seq >= s.next_seq)
        {
            return Err("its sequence numbers are not in order".into());
        }
        // Newest first, as long as they fit: what is kept stays a run of
        // consecutive stored messages.
        let (mut by_uid, mut total) = (HashMap::<u32, usize>::default(), self.bytes);
        let mut keep = 0;
        for e in s.entries.iter().rev() {
            let cost = e.payload.len() + name.len() + ENTRY_OVERHEAD;
            let mine = self.by_uid.get(&e.uid).copied().unwrap_or(0)
                + by_uid.get(&e.uid).copied().unwrap_or(0)
                + cost;
            if e.payload.len() > max_payload || mine > limits.0 || total + cost > limits.1 {
                break;
            }
            *by_uid.entry(e.uid).or_insert(0) += cost;
            total += cost;
            keep += 1;
        }
        let left = s.entries.len() - keep;
        let mut h = ChannelHistory {
            entries: VecDeque::with_capacity(keep),
            payload_bytes: 0,
            next_seq: s.next_seq,
            bounds,
        };
        for e in &s.entries[left..] {
            let cost = e.payload.len() + name.len() + ENTRY_OVERHEAD;
            h.payload_bytes += e.payload.len();
            h.entries.push_back(Entry {
                chan_seq: e.chan_seq,
                at: now
                    .checked_sub(Duration::from_millis(e.age_ms))
                    .unwrap_or(now),
                origin: e.origin,
                seq: e.seq,
                priority: e.priority.min(crate::wire::frame::MAX_PRIORITY),
                payload: e.payload.clone().into(),
                uid: e.uid,
                cost,
            });
        }
        for (uid, n) in by_uid {
            *self.by_uid.entry(uid).or_insert(0) += n;
        }
        self.bytes = total;
        self.channels.insert(name.into(), h);
        // Today's per-channel bounds; a channel left empty folds its
        // numbering into the hub-wide floor (numbers never repeat).
        self.rebound(name, Some(bounds), now);
        let kept = self.channels.get(name).map_or(0, |h| h.entries.len());
        Ok((kept, s.entries.len() - kept))
    }
}

#[cfg(test)]
mod seq_floor_tests {
    use super::*;

    /// Reservations append one line each, are read back (the highest per
    /// channel), and the file is compacted so stale lines never pile up.
    #[test]
    fn reservations_append_reload_and_compact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sequences");
        let mut f = SeqFloors::load(path.clone());
        for round in 0..50u64 {
            for c in 0..10 {
                f.reserve(&format!("ch/{c}"), 1 + round * SEQ_RESERVATION);
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().count() <= 2 * 10 + 64 + 1,
            "{}",
            text.lines().count()
        );
        let mut again = SeqFloors::load(path.clone());
        // Every reservation read back folds into one floor: no channel
        // holds a message after a restart, and per-name state must not
        // grow with the names ever used.
        for c in 0..10 {
            assert_eq!(again.floor(&format!("ch/{c}")), 1 + 50 * SEQ_RESERVATION);
        }
        assert_eq!(again.floor("never/seen"), 1 + 50 * SEQ_RESERVATION);
        assert_eq!(again.reserved.len(), 1);
        assert_eq!(again.start.len(), 1);
        // The file shrinks to a few lines at the next compaction.
        for i in 0..70u64 {
            again.reserve("busy", 1 + 50 * SEQ_RESERVATION + i * SEQ_RESERVATION);
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 2 * 2 + 64 + 1, "{lines}");
    }

    /// A forgotten channel's reservation folds into the hub-wide floor:
    /// its numbers and every newcomer's start above anything it used, in
    /// this process and after a restart.
    #[test]
    fn forgetting_a_channel_folds_its_numbers_into_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sequences");
        let mut f = SeqFloors::load(path.clone());
        assert_eq!(f.floor("a"), 1);
        f.reserve("a", 7);
        f.start.insert("a".into(), 7);
        f.forget("a", 9);
        assert_eq!(f.reserved.len(), 1, "only the floor is left");
        assert_eq!(f.floor("a"), 7 + SEQ_RESERVATION);
        assert_eq!(f.floor("b"), 7 + SEQ_RESERVATION);
        let again = SeqFloors::load(path);
        assert_eq!(again.floor("a"), 7 + SEQ_RESERVATION);
    }
}
