//! The disk log of channels with `storage = "disk"`: per channel, an
//! append-only series of segment files of checksummed records
//! (docs/STORAGE.md), read back at start, and a sync thread that makes
//! writes durable without ever blocking the event loop.
//!
//! The hub keeps a channel's history in memory as always (history.rs) and
//! serves replays from there; the log only makes that history survive a
//! restart. So the log is written, never read, while the hub runs: one
//! `write(2)` per message into the page cache on the event loop, and the
//! `fsync(2)`s on the sync thread:
//! - `sync = "always"`: the publisher's ACK waits for the fsync. The
//!   thread takes every request queued while it was busy and syncs each
//!   file once for all of them (group commit), then reports the highest
//!   ticket done through the event loop's waker.
//! - `sync = "interval"`: the thread syncs files written to at most once
//!   per [`INTERVAL`].
//! - `sync = "never"`: the kernel writes back when it likes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use crate::config::Sync as SyncMode;

/// How often `sync = "interval"` files are made durable.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Record header: magic u32, crc32c u32, payload_len u32, origin u32,
/// chan_seq u64, time_ms u64, pub_seq u64, uid u32, priority u8, flags u8
/// (bit 0: retained), 2 zero bytes.
pub const RECORD_HEADER: usize = 48;
const MAGIC: u32 = u32::from_le_bytes(*b"IHRC");

/// Why the log could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot write the log of channel '{channel}' in {path}: {source}")]
    Write {
        channel: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// One stored record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub chan_seq: u64,
    pub time_ms: u64,
    pub origin: u32,
    pub pub_seq: u64,
    pub uid: u32,
    pub priority: u8,
    /// Published with the retain flag (it set or cleared the channel's
    /// retained value).
    pub retained: bool,
    pub payload: Vec<u8>,
}

/// Slice-by-8 tables of CRC-32C (reflected polynomial 0x82F63B78), built
/// at compile time: `CRC_TABLES[0]` is the classic byte table, table `k`
/// advances a byte that is `k` positions further back.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (!(crc & 1)).wrapping_add(1));
            k += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// CRC-32C (Castagnoli), eight bytes per step (slice-by-8): a bit at a
/// time cost about 10 µs per KiB, more than the rest of a stored publish.
pub fn crc32c(data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

/// Encode a record into `out`.
pub fn encode(r: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, below
    out.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&r.origin.to_le_bytes());
    out.extend_from_slice(&r.chan_seq.to_le_bytes());
    out.extend_from_slice(&r.time_ms.to_le_bytes());
    out.extend_from_slice(&r.pub_seq.to_le_bytes());
    out.extend_from_slice(&r.uid.to_le_bytes());
    out.extend_from_slice(&[r.priority, u8::from(r.retained), 0, 0]);
    out.extend_from_slice(&r.payload);
    let crc = crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decode the record at the start of `buf`: Ok(Some((record, len))), Ok(None)
/// at a clean end, Err(why) for a torn or corrupt record.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Record, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < RECORD_HEADER {
        return Err(format!("{} bytes of a record header", buf.len()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    if u32_at(0) != MAGIC {
        return Err("no record marker".into());
    }
    let len = u32_at(8) as usize;
    if len > max_payload {
        return Err(format!("a length of {len} bytes"));
    }
    let total = RECORD_HEADER + len;
    if buf.len() < total {
        return Err(format!("{} of {total} bytes", buf.len()));
    }
    if crc32c(&buf[8..total]) != u32_at(4) {
        return Err("a checksum mismatch".into());
    }
    Ok(Some((
        Record {
            origin: u32_at(12),
            chan_seq: u64_at(16),
            time_ms: u64_at(24),
            pub_seq: u64_at(32),
            uid: u32_at(40),
            priority: buf[44],
            retained: buf[45] & 1 != 0,
            payload: buf[RECORD_HEADER..total].to_vec(),
        },
        total,
    )))
}

/// The state directory: the configured one, else `$STATE_DIRECTORY`
/// (systemd's `StateDirectory=ipchub`), else /var/lib/ipchub for root,
/// else `$XDG_STATE_HOME/ipchub` or `~/.local/state/ipchub`.
pub fn state_dir(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, colon-separated: ours is the first.
        let d = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !d.is_empty() {
            return PathBuf::from(d);
        }
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/ipchub");
    }
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("ipchub"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
            .join(".local/state/ipchub"),
    }
}

/// A channel name as one path element: ASCII letters, digits, `-` and `.`
/// stay, every other byte is `_` and two hex digits (one-to-one).
pub fn escape(channel: &str) -> String {
    let mut s = String::new();
    for b in channel.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && !s.is_empty()) {
            s.push(b as char);
        } else {
            s.push_str(&format!("_{b:02x}"));
        }
    }
    s
}

pub fn unescape(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One segment file: the first sequence number it holds and its path.
struct Segment {
    first_seq: u64,
    path: PathBuf,
}

/// One channel's log.
pub struct ChannelLog {
    channel: String,
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The segment being appended to.
    file: Option<Arc<File>>,
    /// Set while an interval sync of `file` is requested and not yet done
    /// (see [`Syncer::interval`]); a new segment gets a new flag.
    pending: Arc<AtomicBool>,
    written: u64,
    segment_bytes: u64,
    pub sync: SyncMode,
}

/// What [`ChannelLog::open`] read back.
pub struct Recovered {
    pub log: ChannelLog,
    pub records: Vec<Record>,
    /// A torn or corrupt tail was cut off: where, and why.
    pub truncated: Option<String>,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

impl ChannelLog {
    /// Open (creating if need be) `channel`'s log under `root`, reading every
    /// valid record back; the first invalid one and everything after it
    /// (in its segment and later ones) is cut off and reported.
    pub fn open(
        root: &Path,
        channel: &str,
        sync: SyncMode,
        segment_bytes: u64,
        max_payload: usize,
    ) -> Result<Recovered, StoreError> {
        let dir = root.join("channels").join(escape(channel));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Dir {
                path: dir.clone(),
                source,
            })?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|source| StoreError::Dir {
                path: dir.clone(),
                source,
            })?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let first = name.strip_suffix(".seg")?.parse::<u64>().ok()?;
                Some((first, e.path()))
            })
            .collect();
        names.sort();
        let mut records = Vec::new();
        let mut segments = VecDeque::new();
        let mut truncated = None;
        for (first_seq, path) in names {
            if truncated.is_some() {
                // After a cut, nothing later can be trusted to follow on.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let mut buf = Vec::new();
            if let Err(e) = File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
                truncated = Some(format!("{}: unreadable: {e}", path.display()));
                continue;
            }
            let mut off = 0;
            loop {
                match decode(&buf[off..], max_payload) {
                    Ok(None) => break,
                    Ok(Some((r, used))) => {
                        let in_order = records
                            .last()
                            .is_none_or(|l: &Record| r.chan_seq > l.chan_seq);
                        if !in_order {
                            truncated = Some(format!(
                                "{} at byte {off}: sequence number {} out of order",
                                path.display(),
                                r.chan_seq
                            ));
                            break;
                        }
                        records.push(r);
                        off += used;
                    }
                    Err(why) => {
                        truncated = Some(format!("{} at byte {off}: {why}", path.display()));
                        break;
                    }
                }
            }
            if truncated.is_some() {
                let cut = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(off as u64).and_then(|()| f.sync_all()));
                if let Err(e) = cut {
                    tracing::error!(path = %path.display(), "cannot truncate a corrupt log tail: {e}");
                }
            }
            segments.push_back(Segment { first_seq, path });
        }
        Ok(Recovered {
            log: ChannelLog {
                channel: channel.to_string(),
                dir,
                segments,
                file: None,
                pending: Arc::new(AtomicBool::new(false)),
                written: 0,
                segment_bytes,
                sync,
            },
            records,
            truncated,
        })
    }

    /// Append one encoded record numbered `chan_seq`. One `write(2)`: the
    /// page cache, not the disk (see the sync modes).
    pub fn append(&mut self, chan_seq: u64, bytes: &[u8]) -> Result<Arc<File>, StoreError> {
        let err = |path: &Path, source| StoreError::Write {
            channel: self.channel.clone(),
            path: path.to_path_buf(),
            source,
        };
        if self.file.is_none() || self.written >= self.segment_bytes {
            let path = self.dir.join(segment_name(chan_seq));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(&path, e))?;
            self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(Arc::new(f));
            self.pending = Arc::new(AtomicBool::new(false));
            if self.segments.back().is_none_or(|s| s.path != path) {
                self.segments.push_back(Segment {
                    first_seq: chan_seq,
                    path,
                });
            }
        }
        let f = self.file.clone().expect("opened above");
        let path = self
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let mut w: &File = &f;
        let before = self.written;
        if let Err(e) = w.write_all(bytes) {
            // A partial record must not stay: cut back to where it began.
            let _ = f.set_len(before);
            let _ = (&*f).seek(SeekFrom::End(0));
            return Err(err(&path, e));
        }
        self.written += bytes.len() as u64;
        Ok(f)
    }

    /// The current segment's interval-sync flag (see [`Syncer::interval`]).
    pub fn pending(&self) -> &Arc<AtomicBool> {
        &self.pending
    }

    /// Delete whole segments holding only records numbered below `first_kept`.
    pub fn retain_from(&mut self, first_kept: u64) {
        while self.segments.len() > 1 && self.segments[1].first_seq <= first_kept {
            let s = self.segments.pop_front().expect("checked");
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), "cannot remove an old log segment: {e}");
            }
        }
    }

    /// Remove the whole log (its history was dropped by configuration).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Channels with a log under `root`, by name.
pub fn stored_channels(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root.join("channels")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| unescape(&e.file_name().to_string_lossy()))
        .collect()
}

/// A request to the sync thread.
pub enum SyncRequest {
    /// fsync this file; report `ticket` done after.
    Always(Arc<File>, u64),
    /// fsync this file within [`INTERVAL`], clearing its flag first.
    Interval(Arc<File>, Arc<AtomicBool>),
}

/// The sync thread's handle: requests in, completed tickets out.
pub struct Syncer {
    tx: mpsc::Sender<SyncRequest>,
    done: mpsc::Receiver<Result<u64, (u64, String)>>,
    next_ticket: u64,
}

impl Syncer {
    /// Start the thread; `wake` is called after each report.
    /// A panic in it stops the daemon (`on_panic`): channel logs that are
    /// never synced again must not pass for durable.
    pub fn start(
        wake: Box<dyn Fn() + Send>,
        on_panic: crate::supervise::OnPanic,
    ) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<SyncRequest>();
        let (done_tx, done) = mpsc::channel();
        crate::supervise::spawn("ipchub-sync", on_panic, move || {
            sync_thread(rx, done_tx, wake)
        })?;
        Ok(Syncer {
            tx,
            done,
            next_ticket: 1,
        })
    }

    /// Ask for `file` to be made durable; the returned ticket is reported
    /// by [`completed`](Self::completed) once it is.
    pub fn always(&mut self, file: Arc<File>) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        let _ = self.tx.send(SyncRequest::Always(file, t));
        t
    }

    /// Have `file` made durable within [`INTERVAL`]. `pending` is the
    /// file's flag ([`ChannelLog::pending`]): only the write that sets it
    /// sends a request, so a stream costs one request per interval, not one
    /// (and a thread wake-up) per message. The thread clears the flag
    /// *before* its fsync: a write after the clear sends a new request, a
    /// write before it is covered by that fsync.
    pub fn interval(&self, file: Arc<File>, pending: &Arc<AtomicBool>) {
        if !pending.swap(true, Ordering::AcqRel) {
            let _ = self
                .tx
                .send(SyncRequest::Interval(file, Arc::clone(pending)));
        }
    }

    /// Tickets done since the last call: the highest, and any that failed.
    pub fn completed(&self) -> Vec<Result<u64, (u64, String)>> {
        self.done.try_iter().collect()
    }
}

fn same(a: &Arc<File>, b: &Arc<File>) -> bool {
    Arc::ptr_eq(a, b)
}

fn sync_thread(
    rx: mpsc::Receiver<SyncRequest>,
    done: mpsc::Sender<Result<u64, (u64, String)>>,
    wake: Box<dyn Fn() + Send>,
) {
    let mut lazy: Vec<(Arc<File>, Arc<AtomicBool>)> = Vec::new();
    let mut lazy_due: Option<Instant> = None;
    loop {
        let first = match lazy_due {
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => return,
            },
        };
        // Group commit: everything queued meanwhile shares these fsyncs.
        let mut urgent: Vec<Arc<File>> = Vec::new();
        let mut top = 0u64;
        for r in first.into_iter().chain(rx.try_iter()) {
            match r {
                SyncRequest::Always(f, t) => {
                    top = top.max(t);
                    if !urgent.iter().any(|u| same(u, &f)) {
                        urgent.push(f);
                    }
                }
                SyncRequest::Interval(f, flag) => {
                    if !lazy.iter().any(|(u, _)| same(u, &f)) {
                        lazy.push((f, flag));
                    }
                    lazy_due.get_or_insert_with(|| Instant::now() + INTERVAL);
                }
            }
        }
        if top > 0 {
            let mut failed = None;
            for f in &urgent {
                if let Err(e) = f.sync_data() {
                    failed = Some(e.to_string());
                }
            }
            let _ = done.send(match failed {
                None => Ok(top),
                Some(e) => Err((top, e)),
            });
            wake();
        }
        if lazy_due.is_some_and(|d| d <= Instant::now()) {
            for (f, flag) in lazy.drain(..) {
                flag.store(false, Ordering::Release);
                if let Err(e) = f.sync_data() {
                    tracing::warn!("fsync of a channel log failed: {e}");
                }
            }
            lazy_due = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    /// The slice-by-8 form against the bitwise definition, at every length
    /// around the 8-byte steps and at every alignment of the tail.
    #[test]
    fn crc32c_by_slices_equals_the_bitwise_definition() {
        fn bitwise(data: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in data {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = (crc >> 1) ^ (0x82F6_3B78 & (!(crc & 1)).wrapping_add(1));
                }
            }
            !crc
        }
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in 0..data.len() {
            for start in 0..3.min(data.len() - len) {
                let d = &data[start..start + len];
                assert_eq!(crc32c(d), bitwise(d), "len {len} start {start}");
            }
        }
    }

    /// An interval sync is requested once per flag, and again only after
    /// the thread cleared it.
    #[test]
    fn interval_syncs_send_one_request_per_flag() {
        let (tx, rx) = mpsc::channel();
        let (_done_tx, done) = mpsc::channel();
        let s = Syncer {
            tx,
            done,
            next_ticket: 1,
        };
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::create(dir.path().join("seg")).unwrap());
        let flag = Arc::new(AtomicBool::new(false));
        for _ in 0..1000 {
            s.interval(Arc::clone(&f), &flag);
        }
        assert_eq!(rx.try_iter().count(), 1);
        flag.store(false, Ordering::Release);
        s.interval(Arc::clone(&f), &flag);
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn names_escape_one_to_one() {
        for n in ["a/b", "x_y", "..", "sensors/hall:1/temp", ".a"] {
            let e = escape(n);
            assert!(!e.contains('/') && e != "." && e != "..", "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(n));
        }
    }

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let r = Record {
            chan_seq: 7,
            time_ms: 1,
            origin: 3,
            pub_seq: 9,
            uid: 0,
            priority: 2,
            retained: true,
            payload: b"hello".to_vec(),
        };
        let mut v = Vec::new();
        encode(&r, &mut v);
        assert_eq!(decode(&v, 100).unwrap().unwrap(), (r, v.len()));
        for bit in 0..v.len() * 8 {
            let mut w = v.clone();
            w[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&w, 100).is_err(), "bit {bit}");
        }
        assert!(decode(&v[..v.len() - 1], 100).is_err());
    }
}
