//! The disk log of channels with `storage = "disk"`: per channel, an
//! append-only series of segment files of checksummed records
//! (docs/STORAGE.md), read back at start, and a sync thread that makes
//! writes durable without ever blocking the event loop.
//!
//! The hub keeps a channel's history in memory as always (history.rs) and
//! serves replays from there; the log only makes that history survive a
//! restart. So the log is written, never read, while the hub runs: the
//! records an event-loop turn stored on a channel go into the page cache
//! with one `writev(2)` ([`ChannelLog::write_batch`], before any answer of
//! that turn leaves: hub/disk.rs), and the `fsync(2)`s run on the sync
//! thread:
//! - `sync = "always"`: the publisher's ACK waits for the fsync. The
//!   thread takes every request queued while it was busy and syncs each
//!   file once for all of them (group commit), then reports the highest
//!   ticket done through the event loop's waker.
//! - `sync = "interval"`: the thread syncs files written to at most once
//!   per [`INTERVAL`].
//! - `sync = "never"`: the kernel writes back when it likes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
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

/// CRC-32C (Castagnoli): the CPU's instruction where there is one
/// (x86-64 SSE4.2, `ipchub_os::crc`), else [`crc32c_table`]. Even eight
/// bytes a step by tables, the checksum was the largest single cost of a
/// stored publish (a perf profile of `ipchub-bench --storage`).
pub fn crc32c(data: &[u8]) -> u32 {
    match ipchub_os::crc::crc32c_update(!0, data) {
        Some(c) => !c,
        None => crc32c_table(data),
    }
}

/// CRC-32C eight bytes per step (slice-by-8): a bit at a time cost about
/// 10 µs per KiB, more than the rest of a stored publish.
pub fn crc32c_table(data: &[u8]) -> u32 {
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
    encode_parts(
        RecordHead {
            chan_seq: r.chan_seq,
            time_ms: r.time_ms,
            origin: r.origin,
            pub_seq: r.pub_seq,
            uid: r.uid,
            priority: r.priority,
            retained: r.retained,
        },
        &r.payload,
        out,
    );
}

/// A record's fields but its payload (what [`encode_parts`] takes, so the
/// hub encodes straight from the frame it handles: no copy of the payload
/// but the one into `out`).
#[derive(Debug, Clone, Copy)]
pub struct RecordHead {
    pub chan_seq: u64,
    pub time_ms: u64,
    pub origin: u32,
    pub pub_seq: u64,
    pub uid: u32,
    pub priority: u8,
    pub retained: bool,
}

/// Encode a record of `head` and `payload` at the end of `out`.
pub fn encode_parts(head: RecordHead, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(RECORD_HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, below
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&head.origin.to_le_bytes());
    out.extend_from_slice(&head.chan_seq.to_le_bytes());
    out.extend_from_slice(&head.time_ms.to_le_bytes());
    out.extend_from_slice(&head.pub_seq.to_le_bytes());
    out.extend_from_slice(&head.uid.to_le_bytes());
    out.extend_from_slice(&[head.priority, u8::from(head.retained), 0, 0]);
    out.extend_from_slice(payload);
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
    /// `write(2)`/`writev(2)` calls made (what batching saves; tests).
    write_calls: u64,
    /// A record written in part could not be cut off again: the segment
    /// ends in torn bytes, and anything written after them would be lost
    /// at read-back (which stops at the first bad record). The log takes
    /// no more records until it is opened again (a reload or a restart,
    /// whose read-back cuts the torn tail).
    broken: Option<(PathBuf, String)>,
}

/// One encoded record waiting in a staging buffer for
/// [`ChannelLog::write_batch`]: its number and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub chan_seq: u64,
    pub start: usize,
    pub end: usize,
}

/// What [`ChannelLog::write_batch`] did.
#[derive(Debug)]
pub struct Batch {
    /// How many of the staged records, from the first, are in the file
    /// now (each whole: a record cut short by the failure was cut off).
    pub written: usize,
    /// The segments written to, each with its interval-sync flag (two when
    /// the batch crossed into a new segment), for the sync thread.
    pub segments: Vec<(Arc<File>, Arc<AtomicBool>)>,
    /// Why the records from `written` on are not in the file.
    pub error: Option<StoreError>,
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
                write_calls: 0,
                broken: None,
            },
            records,
            truncated,
        })
    }

    /// Append one encoded record numbered `chan_seq` (a batch of one).
    pub fn append(&mut self, chan_seq: u64, bytes: &[u8]) -> Result<Arc<File>, StoreError> {
        let staged = Staged {
            chan_seq,
            start: 0,
            end: bytes.len(),
        };
        let b = self.write_batch(bytes, &[staged]);
        match (b.error, b.segments.into_iter().next()) {
            (None, Some((f, _))) => Ok(f),
            (Some(e), _) => Err(e),
            (None, None) => unreachable!("a written record has a segment"),
        }
    }

    /// Append the records `staged` locates in `buf` (encoded, numbers
    /// increasing), in order, with one `writev(2)` per segment they go to:
    /// the page cache, not the disk (see the sync modes). A record goes to
    /// a new segment, named by its number, when the current one holds
    /// `segment_bytes` or more, exactly as if each were appended alone (the
    /// format does not know about batches).
    ///
    /// If a write fails (disk full, I/O error), the records it took whole
    /// stay, a record it took in part is cut off (the file is truncated
    /// back to the end of the last whole one: no torn tail is left behind
    /// for the next batch to follow), and that record and every later one
    /// of the batch are reported not written.
    pub fn write_batch(&mut self, buf: &[u8], staged: &[Staged]) -> Batch {
        let mut out = Batch {
            written: 0,
            segments: Vec::new(),
            error: None,
        };
        if let Some((path, why)) = &self.broken {
            if !staged.is_empty() {
                out.error = Some(StoreError::Write {
                    channel: self.channel.clone(),
                    path: path.clone(),
                    source: io::Error::other(format!(
                        "the log ends in a torn record that could not be cut off ({why}); it takes no more records until a reload or restart"
                    )),
                });
            }
            return out;
        }
        let mut i = 0;
        while i < staged.len() {
            let (f, path) = match self.segment_for(staged[i].chan_seq) {
                Ok(x) => x,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            };
            // The records that go to this segment: at least one, then
            // while the segment is below its size.
            let before = self.written;
            let mut end = before;
            let mut j = i;
            while j < staged.len() && (j == i || end < self.segment_bytes) {
                end += (staged[j].end - staged[j].start) as u64;
                j += 1;
            }
            let (done, failed) = write_ranges(&f, buf, &staged[i..j], &mut self.write_calls);
            let Some(e) = failed else {
                self.written = end;
                out.segments.push((f, Arc::clone(&self.pending)));
                out.written = j;
                i = j;
                continue;
            };
            // Keep the records written whole; cut one written in part.
            let mut kept = 0u64;
            let mut k = i;
            while k < j && kept + (staged[k].end - staged[k].start) as u64 <= done as u64 {
                kept += (staged[k].end - staged[k].start) as u64;
                k += 1;
            }
            if kept < done as u64 {
                let cut = f
                    .set_len(before + kept)
                    .and_then(|()| (&*f).seek(SeekFrom::End(0)).map(|_| ()));
                if let Err(c) = cut {
                    tracing::error!(path = %path.display(), "cannot cut a partly written record off a channel log: {c}; the log takes no more records until a reload or restart");
                    self.broken = Some((path.clone(), c.to_string()));
                }
            }
            self.written = before + kept;
            if k > i {
                out.segments.push((f, Arc::clone(&self.pending)));
            }
            out.written = k;
            out.error = Some(StoreError::Write {
                channel: self.channel.clone(),
                path,
                source: e,
            });
            return out;
        }
        out
    }

    /// The segment a record numbered `chan_seq` goes to: the current one,
    /// or a new one (named by that number) when it holds `segment_bytes`.
    fn segment_for(&mut self, chan_seq: u64) -> Result<(Arc<File>, PathBuf), StoreError> {
        if self.file.is_none() || self.written >= self.segment_bytes {
            let path = self.dir.join(segment_name(chan_seq));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| StoreError::Write {
                    channel: self.channel.clone(),
                    path: path.clone(),
                    source,
                })?;
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
        Ok((f, path))
    }

    /// `write(2)`/`writev(2)` calls made so far.
    pub fn write_calls(&self) -> u64 {
        self.write_calls
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

/// Write the bytes of `staged` (ranges of `buf`) to `f`: ranges that
/// follow each other in `buf` (one channel's stream, the usual case) are
/// one slice, and a short write goes on where it stopped (every call is
/// counted in `calls`). Returns the bytes written and the error that
/// stopped it, if one did.
fn write_ranges(
    f: &File,
    buf: &[u8],
    staged: &[Staged],
    calls: &mut u64,
) -> (usize, Option<io::Error>) {
    let mut slices: Vec<IoSlice<'_>> = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    for s in staged {
        run = match run {
            Some((a, b)) if b == s.start => Some((a, s.end)),
            Some((a, b)) => {
                slices.push(IoSlice::new(&buf[a..b]));
                Some((s.start, s.end))
            }
            None => Some((s.start, s.end)),
        };
    }
    if let Some((a, b)) = run {
        slices.push(IoSlice::new(&buf[a..b]));
    }
    let mut rest = &mut slices[..];
    let mut done = 0;
    while !rest.is_empty() {
        *calls += 1;
        match (&*f).write_vectored(rest) {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                done += n;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
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

    /// The slice-by-8 form and the one in use (the CPU's instruction where
    /// there is one) against the bitwise definition, at every length
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
                assert_eq!(crc32c_table(d), bitwise(d), "len {len} start {start}");
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

    fn record(chan_seq: u64, len: usize) -> Record {
        Record {
            chan_seq,
            time_ms: 1000 + chan_seq,
            origin: 7,
            pub_seq: chan_seq * 10,
            uid: 1000,
            priority: 1,
            retained: chan_seq.is_multiple_of(3),
            payload: (0..len).map(|i| (i as u64 + chan_seq) as u8).collect(),
        }
    }

    /// Records staged back to back in one buffer, as the hub stages a turn.
    fn stage(records: &[Record]) -> (Vec<u8>, Vec<Staged>) {
        let mut buf = Vec::new();
        let mut staged = Vec::new();
        for r in records {
            let start = buf.len();
            encode(r, &mut buf);
            staged.push(Staged {
                chan_seq: r.chan_seq,
                start,
                end: buf.len(),
            });
        }
        (buf, staged)
    }

    /// Several records staged in one turn go out with one write, and are
    /// all read back, in order and intact, after reopening; a batch that
    /// crosses the segment size goes on in a new segment named by its
    /// record's number, exactly as records appended one by one would.
    #[test]
    fn a_batch_is_one_write_and_every_record_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let open = |seg| ChannelLog::open(dir.path(), "a/b", SyncMode::Interval, seg, 1 << 20);
        let mut log = open(1 << 20).unwrap().log;
        let records: Vec<Record> = (1..=20).map(|n| record(n, 1024)).collect();
        let (buf, staged) = stage(&records);
        let b = log.write_batch(&buf, &staged);
        assert!(b.error.is_none());
        assert_eq!((b.written, b.segments.len(), log.write_calls()), (20, 1, 1));
        drop(log);
        let r = open(1 << 20).unwrap();
        assert_eq!(r.records, records);
        assert!(r.truncated.is_none());

        // Reopened with segments of 5 records: 21..=32 in one batch start
        // a new segment at 21 (a reopened log always does), then one
        // every 5 records, each with its own write.
        let seg = 5 * (RECORD_HEADER + 1024) as u64 - 1;
        let mut log = open(seg).unwrap().log;
        let more: Vec<Record> = (21..=32).map(|n| record(n, 1024)).collect();
        let (buf, staged) = stage(&more);
        let b = log.write_batch(&buf, &staged);
        assert!(b.error.is_none());
        assert_eq!((b.written, b.segments.len(), log.write_calls()), (12, 3, 3));
        drop(log);
        let r = open(seg).unwrap();
        let all: Vec<Record> = records.iter().chain(&more).cloned().collect();
        assert_eq!(r.records, all);
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("channels/a_2fb"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                segment_name(1),
                segment_name(21),
                segment_name(26),
                segment_name(31)
            ]
        );
    }

    /// Records of other channels between a channel's records in the
    /// staging buffer: still one `writev`, only this channel's bytes.
    #[test]
    fn a_batch_picks_its_records_out_of_a_shared_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ChannelLog::open(dir.path(), "x", SyncMode::Never, 1 << 20, 1 << 20)
            .unwrap()
            .log;
        let mut buf = Vec::new();
        let mut staged = Vec::new();
        let mine: Vec<Record> = (1..=4).map(|n| record(n, 100 * n as usize)).collect();
        for r in &mine {
            encode(&record(99, 33), &mut buf); // another channel's
            let start = buf.len();
            encode(r, &mut buf);
            staged.push(Staged {
                chan_seq: r.chan_seq,
                start,
                end: buf.len(),
            });
        }
        let b = log.write_batch(&buf, &staged);
        assert!(b.error.is_none());
        assert_eq!((b.written, log.write_calls()), (4, 1));
        drop(log);
        let r = ChannelLog::open(dir.path(), "x", SyncMode::Never, 1 << 20, 1 << 20).unwrap();
        assert_eq!(r.records, mine);
    }

    /// A batch whose write fails (here: its new segment is /dev/full, so
    /// every write is ENOSPC) reports the records before the failure
    /// written and the rest not, with the error; what was written before
    /// reads back intact.
    #[test]
    fn a_failed_batch_reports_which_records_are_written() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let seg = 2 * (RECORD_HEADER + 64) as u64;
        let mut log = ChannelLog::open(dir.path(), "f", SyncMode::Always, seg, 1 << 20)
            .unwrap()
            .log;
        let first: Vec<Record> = (1..=2).map(|n| record(n, 64)).collect();
        let (buf, staged) = stage(&first);
        assert_eq!(log.write_batch(&buf, &staged).written, 2);
        // The next segment will be named 3 and starts at record 3.
        std::os::unix::fs::symlink(
            "/dev/full",
            dir.path().join("channels/f").join(segment_name(3)),
        )
        .unwrap();
        let (buf, staged) = stage(&(3..=6).map(|n| record(n, 64)).collect::<Vec<_>>());
        let b = log.write_batch(&buf, &staged);
        assert_eq!(b.written, 0);
        let e = b.error.expect("a failure").to_string();
        assert!(e.contains("No space left on device"), "{e}");
        std::fs::remove_file(dir.path().join("channels/f").join(segment_name(3))).unwrap();
        drop(log);
        let r = ChannelLog::open(dir.path(), "f", SyncMode::Always, seg, 1 << 20).unwrap();
        assert_eq!(r.records, first);
    }

    /// A log whose torn tail could not be cut off takes no more records
    /// (each batch is refused with the reason), so no acknowledged record
    /// lands behind torn bytes where read-back would drop it; opened
    /// again, it reads back what it held.
    #[test]
    fn a_log_left_with_a_torn_tail_refuses_more_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ChannelLog::open(dir.path(), "t", SyncMode::Never, 1 << 20, 1 << 20)
            .unwrap()
            .log;
        let first: Vec<Record> = (1..=2).map(|n| record(n, 64)).collect();
        let (buf, staged) = stage(&first);
        assert_eq!(log.write_batch(&buf, &staged).written, 2);
        log.broken = Some((dir.path().join("t.seg"), "EIO".into()));
        let (buf, staged) = stage(&[record(3, 64)]);
        let b = log.write_batch(&buf, &staged);
        assert_eq!(b.written, 0);
        let e = b.error.expect("refused").to_string();
        assert!(e.contains("torn record that could not be cut off"), "{e}");
        drop(log);
        let r = ChannelLog::open(dir.path(), "t", SyncMode::Never, 1 << 20, 1 << 20).unwrap();
        assert_eq!(r.records, first);
        assert!(r.log.broken.is_none());
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
