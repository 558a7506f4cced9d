//! The hub's side of `storage = "disk"` (src/store/): write each stored
//! message to its channel's log, hold the ACKs of `sync = "always"`
//! publishers until the sync thread reports their record durable, and read
//! the logs back into the in-memory history at start.

use std::path::PathBuf;

use super::*;
use crate::config::Sync as SyncMode;
use crate::store::{self, ChannelLog, Record, Syncer};

/// Segments roll at this size (or a quarter of the channel's history bytes,
/// whichever is larger), so retention frees disk in steps of about that.
const MIN_SEGMENT: u64 = 64 << 10;

pub(super) struct DiskState {
    root: PathBuf,
    logs: HashMap<Box<str>, ChannelLog>,
    /// Started with the first log, so a hub storing nothing runs no thread.
    syncer: Option<Syncer>,
    wake: Option<(Box<dyn Fn() + Send>, crate::supervise::OnPanic)>,
    /// ACKs waiting for a sync ticket: (ticket, client, request seq, delivered).
    pending: std::collections::VecDeque<(u64, ClientId, u64, u32)>,
    /// Writes that failed (disk full, I/O error), for statistics and logs.
    pub(super) failures: u64,
    /// fsync rounds of `sync = "always"` (each serving every publisher
    /// waiting at that moment: group commit).
    syncs: u64,
    /// ACKs those rounds made good.
    synced_acks: u64,
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
                disk.logs.insert(name.into(), r.log);
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

    /// Write a delivered message to its channel's log (numbered `chan_seq`).
    /// Ok(Some(ticket)): its ACK waits for that sync ticket.
    pub(super) fn write_log(
        &mut self,
        id: ClientId,
        origin: ClientId,
        frame: &Frame<'_>,
        b: crate::config::HistoryBounds,
        chan_seq: u64,
        retained: bool,
    ) -> Result<Option<u64>, String> {
        let mode = b.disk.unwrap_or(SyncMode::Never);
        if self
            .disk
            .as_ref()
            .is_some_and(|d| !d.logs.contains_key(frame.channel))
        {
            self.open_log(frame.channel, b);
        }
        let uid = self.peers.get(&id).map_or(0, |p| p.ident.uid);
        let Some(disk) = self.disk.as_mut() else {
            return Err("the hub has no state directory (storage off in this process)".into());
        };
        let Some(log) = disk.logs.get_mut(frame.channel) else {
            disk.failures += 1;
            return Err(format!(
                "the log of channel '{}' could not be opened under {}",
                frame.channel,
                disk.root.display()
            ));
        };
        let mut bytes = Vec::with_capacity(store::RECORD_HEADER + frame.payload.len());
        store::encode(
            &Record {
                chan_seq,
                time_ms: store::now_ms(),
                origin,
                pub_seq: frame.header.seq,
                uid,
                priority: frame.header.priority,
                retained,
                payload: frame.payload.to_vec(),
            },
            &mut bytes,
        );
        match log.append(chan_seq, &bytes) {
            Ok(file) => Ok(match (mode, disk.syncer.as_mut()) {
                (SyncMode::Always, Some(s)) => Some(s.always(file)),
                (SyncMode::Interval, Some(s)) => {
                    s.interval(file, log.pending());
                    None
                }
                _ => None,
            }),
            Err(e) => {
                disk.failures += 1;
                Err(e.to_string())
            }
        }
    }

    /// The history of `channel` now starts at `first_kept`: free old segments.
    pub(super) fn trim_log(&mut self, channel: &str, first_kept: u64) {
        if let Some(log) = self.disk.as_mut().and_then(|d| d.logs.get_mut(channel)) {
            log.retain_from(first_kept);
        }
    }

    /// Hold client `id`'s ACK for request `seq` until `ticket` is durable.
    pub(super) fn hold_ack(&mut self, ticket: u64, id: ClientId, seq: u64, delivered: u32) {
        if let Some(d) = self.disk.as_mut() {
            d.pending.push_back((ticket, id, seq, delivered));
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
            while d.pending.front().is_some_and(|p| p.0 <= top) {
                let (_, id, seq, delivered) = d.pending.pop_front().expect("checked");
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
