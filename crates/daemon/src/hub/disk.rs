//! The hub's side of `storage = "disk"` (src/store/): write each stored
//! message to its channel's log, hold the ACKs of `sync = "always"`
//! publishers until the sync thread reports their record durable, and read
//! the logs back into the in-memory history at start.
//!
//! Writes are batched per event-loop turn: a stored publish encodes its
//! record into one staging buffer ([`Hub::stage_log`]) and its answer
//! waits; [`Hub::flush_store`] then writes each channel's staged records
//! with one `writev(2)` and answers every publisher in the batch (ACK, the
//! held ACK of `sync = "always"`, or ERROR if its record did not make it).
//! `flush_store` runs before any client's queue can be written out: the
//! event loop calls it at the start of each settle, and [`Hub::queue`] and
//! [`Hub::take_queue`], the only ways to a queue's bytes, call it too. So
//! no ACK, and no DATA that reveals a stored message, leaves before the
//! record is in the file (a `kill -9` of the hub loses nothing
//! acknowledged), while the in-memory history, which replays and bounds
//! use, has the record from its publish on.

use std::path::PathBuf;

use super::*;
use crate::config::Sync as SyncMode;
use crate::store::{self, ChannelLog, RecordHead, Staged, Syncer};

/// Segments roll at this size (or a quarter of the channel's history bytes,
/// whichever is larger), so retention frees disk in steps of about that.
const MIN_SEGMENT: u64 = 64 << 10;

/// Staged bytes that make a publish write out what is staged first, so a
/// turn with many publishers keeps one buffer of about this size (the raw
/// baseline of `ipchub-bench --storage` writes 1 MiB per call too).
const STAGE_BYTES: usize = 1 << 20;

/// One channel's log and its records staged this turn.
struct LogSlot {
    log: ChannelLog,
    /// Where this channel's staged records are in [`DiskState::stage`].
    staged: Vec<Staged>,
    /// Who published each of them (same order).
    waiting: Vec<Waiter>,
}

/// The publisher of a staged record and what it is owed once written.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    id: ClientId,
    seq: u64,
    delivered: u32,
    /// It asked for an ACK (an ERROR is owed either way).
    ack: bool,
}

pub(super) struct DiskState {
    root: PathBuf,
    logs: HashMap<Box<str>, LogSlot>,
    /// Encoded records not written yet, every channel's, back to back:
    /// one buffer, reused turn after turn (no allocation per message).
    stage: Vec<u8>,
    /// Channels with staged records, in the order they got their first.
    staged_logs: Vec<Box<str>>,
    /// The wall clock (ms) read at an instant, to stamp records from the
    /// monotonic `now` the hub has anyway (see [`DiskState::wall_ms`]).
    clock: Option<(Instant, u64)>,
    /// Started with the first log, so a hub storing nothing runs no thread.
    syncer: Option<Syncer>,
    wake: Option<(Box<dyn Fn() + Send>, crate::supervise::OnPanic)>,
    /// ACKs waiting for a sync ticket: (last ticket of its batch, client,
    /// request seq, delivered, first ticket of its batch). A batch that
    /// crossed into a new segment has one ticket per segment; a failure of
    /// any of them fails its ACKs.
    pending: std::collections::VecDeque<(u64, ClientId, u64, u32, u64)>,
    /// Writes that failed (disk full, I/O error), for statistics and logs.
    pub(super) failures: u64,
    /// fsync rounds of `sync = "always"` (each serving every publisher
    /// waiting at that moment: group commit).
    syncs: u64,
    /// ACKs those rounds made good.
    synced_acks: u64,
}

/// How long a wall-clock reading serves (it follows clock changes after).
const CLOCK_READ_EVERY: Duration = Duration::from_secs(1);

impl DiskState {
    /// A record's time stamp (ms since the epoch) at `now`: the wall clock
    /// read once a second, plus the monotonic time since. A clock read per
    /// message showed in the profile (about 3 % of a stored publish).
    fn wall_ms(&mut self, now: Instant) -> u64 {
        match self.clock {
            Some((at, ms)) if now >= at && now - at < CLOCK_READ_EVERY => {
                ms + (now - at).as_millis() as u64
            }
            _ => {
                let ms = store::now_ms();
                self.clock = Some((now, ms));
                ms
            }
        }
    }
}

impl Hub {
    /// Open the state directory, start the sync thread (`wake` rouses the
    /// event loop when it reports; `on_panic` is told if it dies) and read back every channel log the
    /// configuration still stores on disk.
    pub fn attach_storage(
        &mut self,
        wake: Box<dyn Fn() + Send>,
        on_panic: crate::supervise::OnPanic,
    ) {
        let root = store::state_dir(&self.cfg.hub.state_dir);
        self.history.keep_sequences_in(root.join("sequences"));
        self.disk = Some(DiskState {
            root: root.clone(),
            logs: HashMap::default(),
            stage: Vec::new(),
            staged_logs: Vec::new(),
            clock: None,
            syncer: None,
            wake: Some((wake, on_panic)),
            pending: Default::default(),
            failures: 0,
            syncs: 0,
            synced_acks: 0,
        });
        for name in store::stored_channels(&root) {
            match self.cfg.history_for(&name) {
                Some(b) if b.disk.is_some() => self.open_log(&name, b),
                _ => {
                    tracing::info!(channel = %name, dir = %root.display(), "a channel log the configuration no longer stores on disk: left alone")
                }
            }
        }
    }

    /// Open `name`'s log and load what it holds into the history.
    fn open_log(&mut self, name: &str, b: crate::config::HistoryBounds) {
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        if disk.logs.contains_key(name) {
            return;
        }
        if let Some((wake, on_panic)) = disk.wake.take() {
            match Syncer::start(wake, on_panic) {
                Ok(s) => disk.syncer = Some(s),
                // Writes still work; nothing is ever fsynced: say so.
                Err(e) => tracing::error!(
                    "cannot start the sync thread: {e}; channel logs are not synced"
                ),
            }
        }
        let seg = (b.bytes as u64 / 4).max(MIN_SEGMENT);
        let max = self.cfg.hub.max_message_size as usize;
        match ChannelLog::open(
            &disk.root,
            name,
            b.disk.unwrap_or(SyncMode::Interval),
            seg,
            max,
        ) {
            Ok(r) => {
                if let Some(why) = &r.truncated {
                    tracing::warn!(channel = name, "channel log: a torn or corrupt tail was cut off ({why}); every record before it is kept");
                }
                let n = r.records.len();
                disk.logs.insert(
                    name.into(),
                    LogSlot {
                        log: r.log,
                        staged: Vec::new(),
                        waiting: Vec::new(),
                    },
                );
                // The last retained publish still in the log sets (or, if
                // empty, cleared) the channel's retained value.
                if let Some(last) = r.records.iter().rev().find(|r| r.retained) {
                    if !last.payload.is_empty() {
                        self.retained.restore(name, last);
                    }
                }
                self.history.load(name, b, r.records, store::now_ms());
                if n > 0 {
                    tracing::info!(
                        channel = name,
                        messages = n,
                        "channel history read back from disk"
                    );
                }
            }
            Err(e) => {
                disk.failures += 1;
                tracing::error!(channel = name, "{e}");
            }
        }
    }

    /// Stage a delivered message for its channel's log (numbered
    /// `chan_seq`); [`flush_store`](Self::flush_store) writes it and
    /// answers the publisher (`delivered`, `ack`: what the ACK says and
    /// whether one was asked for). Err: it cannot be stored at all (no
    /// state directory, the log would not open); answer at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_log(
        &mut self,
        id: ClientId,
        origin: ClientId,
        frame: &Frame<'_>,
        b: crate::config::HistoryBounds,
        chan_seq: u64,
        retained: bool,
        delivered: u32,
        ack: bool,
        now: Instant,
    ) -> Result<(), String> {
        if self
            .disk
            .as_ref()
            .is_some_and(|d| !d.logs.contains_key(frame.channel))
        {
            self.open_log(frame.channel, b);
        }
        if self
            .disk
            .as_ref()
            .is_some_and(|d| d.stage.len() >= STAGE_BYTES)
        {
            // Before this record is staged: a failure of what is staged
            // takes back history entries, and this one is not in yet.
            self.flush_store();
        }
        let uid = self.peers.get(&id).map_or(0, |p| p.ident.uid);
        let Some(disk) = self.disk.as_mut() else {
            return Err("the hub has no state directory (storage off in this process)".into());
        };
        let time_ms = disk.wall_ms(now);
        let Some(slot) = disk.logs.get_mut(frame.channel) else {
            disk.failures += 1;
            return Err(format!(
                "the log of channel '{}' could not be opened under {}",
                frame.channel,
                disk.root.display()
            ));
        };
        let start = disk.stage.len();
        store::encode_parts(
            RecordHead {
                chan_seq,
                time_ms,
                origin,
                pub_seq: frame.header.seq,
                uid,
                priority: frame.header.priority,
                retained,
            },
            frame.payload,
            &mut disk.stage,
        );
        if slot.staged.is_empty() {
            disk.staged_logs.push(frame.channel.into());
        }
        slot.staged.push(Staged {
            chan_seq,
            start,
            end: disk.stage.len(),
        });
        slot.waiting.push(Waiter {
            id,
            seq: frame.header.seq,
            delivered,
            ack,
        });
        Ok(())
    }

    /// Write every staged record, one `writev(2)` per channel (two if it
    /// crosses into a new segment), and answer their publishers: an ACK
    /// (under `sync = "always"` held for the fsync, as before), or, for
    /// each record that is not in the file, ERROR "not stored" (its
    /// history entry is taken back and its number stays skipped). Called
    /// before anything queued for a client leaves (see the module's notes).
    pub fn flush_store(&mut self) {
        let Some(d) = self.disk.as_mut() else {
            return;
        };
        if d.staged_logs.is_empty() {
            return;
        }
        let mut names = std::mem::take(&mut d.staged_logs);
        // Each publisher's answer: None for an ACK, else why not stored
        // (its number, channel and the write's error).
        type NotStored = (u64, Box<str>, String);
        let mut answers: Vec<(Waiter, Option<NotStored>)> = Vec::new();
        let mut taken_back: Vec<(Box<str>, u64)> = Vec::new();
        for name in names.drain(..) {
            let Some(slot) = d.logs.get_mut(&name) else {
                continue; // logs close only after a flush (reload)
            };
            let batch = slot.log.write_batch(&d.stage, &slot.staged);
            let mut ticket = None;
            let mut first_ticket = None;
            if let Some(s) = d.syncer.as_mut() {
                for (file, flag) in batch.segments {
                    match slot.log.sync {
                        // One ticket per segment (consecutive); the last
                        // covers the others (the thread reports tickets in
                        // order), and a failure of any fails the batch.
                        SyncMode::Always => {
                            let t = s.always(file);
                            first_ticket.get_or_insert(t);
                            ticket = Some(t);
                        }
                        SyncMode::Interval => s.interval(file, &flag),
                        SyncMode::Never => {}
                    }
                }
            }
            let error = batch.error.map(|e| e.to_string());
            if let Some(first) = slot.staged.get(batch.written) {
                taken_back.push((name.clone(), first.chan_seq));
            }
            for (k, (w, st)) in slot
                .waiting
                .drain(..)
                .zip(slot.staged.drain(..))
                .enumerate()
            {
                if k >= batch.written {
                    d.failures += 1;
                    let e = error.clone().unwrap_or_default();
                    answers.push((w, Some((st.chan_seq, name.clone(), e))));
                } else if w.ack {
                    match ticket {
                        // sync = "always": the ACK waits for the fsync.
                        Some(t) => d.pending.push_back((
                            t,
                            w.id,
                            w.seq,
                            w.delivered,
                            first_ticket.unwrap_or(t),
                        )),
                        None => answers.push((w, None)),
                    }
                }
            }
        }
        d.staged_logs = names;
        d.stage.clear();
        if d.stage.capacity() > 4 * STAGE_BYTES {
            // A burst of big messages: give most of it back.
            d.stage.shrink_to(STAGE_BYTES);
        }
        for (name, from) in taken_back {
            self.history.unstore_from(&name, from);
        }
        let now = Instant::now();
        for (w, failed) in answers {
            match failed {
                None => self.send_control(w.id, FrameType::Ack, w.seq, &w.delivered.to_le_bytes()),
                Some((chan_seq, channel, e)) => {
                    let uid = self.peers.get(&w.id).map_or(0, |p| p.ident.uid);
                    if self.log_limit.allow(uid, LogKind::Refused, now) {
                        tracing::error!(
                            client = w.id,
                            channel = &*channel,
                            "message not stored: {e}"
                        );
                    }
                    let text = format!(
                        "delivered to {} subscribers but not stored (channel sequence number {chan_seq} skipped): {e}",
                        w.delivered
                    );
                    self.send_error(w.id, w.seq, ErrorCode::LimitReached, &text);
                }
            }
        }
    }

    /// The history of `channel` now starts at `first_kept`: free old segments.
    pub(super) fn trim_log(&mut self, channel: &str, first_kept: u64) {
        if let Some(slot) = self.disk.as_mut().and_then(|d| d.logs.get_mut(channel)) {
            slot.log.retain_from(first_kept);
        }
    }

    /// Send the ACKs the sync thread made good (call when it woke the loop).
    pub fn collect_durable(&mut self) {
        let Some(d) = self.disk.as_mut() else {
            return;
        };
        let Some(s) = d.syncer.as_ref() else {
            return;
        };
        let mut answers = Vec::new();
        for report in s.completed() {
            let (top, failed) = match report {
                Ok(t) => (t, None),
                Err((t, e)) => (t, Some(e)),
            };
            d.syncs += 1;
            // Done: the batches whose last ticket is covered. Failed: also
            // those with any ticket covered (a segment of theirs was not
            // made durable), however their later tickets turn out.
            let failing = failed.is_some();
            while d
                .pending
                .front()
                .is_some_and(|p| p.0 <= top || (failing && p.4 <= top))
            {
                let (_, id, seq, delivered, _) = d.pending.pop_front().expect("checked");
                answers.push((id, seq, delivered, failed.clone()));
                d.synced_acks += 1;
            }
            if failed.is_some() {
                d.failures += 1;
            }
        }
        for (id, seq, delivered, failed) in answers {
            if !self.peers.contains_key(&id) {
                continue;
            }
            match failed {
                None => self.send_control(id, FrameType::Ack, seq, &delivered.to_le_bytes()),
                Some(e) => {
                    tracing::error!(client = id, "fsync of a channel log failed: {e}");
                    let text = format!("delivered, but not made durable: fsync failed: {e}");
                    self.send_error(id, seq, ErrorCode::LimitReached, &text);
                }
            }
        }
    }

    /// A reload dropped `channel`'s disk storage: close its log (the files stay).
    pub(super) fn close_logs_not_on_disk(&mut self) {
        // What is staged goes to the logs it was stored for first.
        self.flush_store();
        let Some(d) = self.disk.as_mut() else {
            return;
        };
        let cfg = &self.cfg;
        d.logs
            .retain(|name, _| cfg.history_for(name).is_some_and(|b| b.disk.is_some()));
    }

    /// fsync rounds for `sync = "always"`, and the ACKs they made good.
    pub fn storage_syncs(&self) -> (u64, u64) {
        self.disk
            .as_ref()
            .map_or((0, 0), |d| (d.syncs, d.synced_acks))
    }

    /// Failed log writes since start.
    pub fn storage_failures(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.failures)
    }
}
