//! `--storage`: what keeping a channel's history on disk costs, against
//! what the disk itself does, in one run (issue #17's bars):
//! - **interval**: a publisher streaming 1 KiB messages on a channel with
//!   `storage = "disk"`, `sync = "interval"`, in bytes per second, against
//!   the raw sequential write speed of the same file system (1 MiB writes,
//!   one `fdatasync` at the end) — the bar is ≥ 0.5 ×;
//! - **always**: 1 and 8 publishers each waiting for the ACK of every
//!   message under `sync = "always"` (the ACK waits for the fsync; the
//!   hub's sync thread shares one fsync among everyone waiting), against
//!   one `fdatasync` per 1 KiB record written by this process — the bar
//!   is ≥ 5 × with 8 publishers (all on one channel, so one log file: the
//!   case group commit is for);
//! - **non-persisted**: a stream on a plain channel of a hub that has a
//!   disk channel configured, against the same stream on a hub without
//!   one: the store must cost the other paths nothing.
//!
//! The hubs are started by the bench (state directory in its temporary
//! directory, on the file system `TMPDIR` names); publishers are threads of
//! this process, each with its own connection (socket transport).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cli::Args;
use super::hub_runs::{self, HubProcess};
use super::measure::RunError;
use super::TempDir;
use crate::client::{Event, PublishOptions};

/// Payload of every measured message.
const SIZE: usize = 1024;

/// One figure and what it is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: &'static str,
    pub unit: &'static str,
    pub value: Option<f64>,
    pub baseline_name: &'static str,
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    /// The bar the issue sets for the ratio, if any.
    pub target: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    pub schema: &'static str,
    pub quick: bool,
    pub size: usize,
    /// Where the logs and the raw files were written.
    pub dir: String,
    pub rows: Vec<Row>,
}

fn hub_config(state: &Path) -> String {
    format!(
        "[hub]\nstate_dir = \"{}\"\nmax_history_bytes = 1073741824\nmax_history_bytes_per_uid = 536870912\n\n\
         [[channel]]\npattern = \"bench/interval/#\"\nstorage = \"disk\"\nsync = \"interval\"\n\
         history_messages = 1000000\nhistory_bytes = 67108864\n\n\
         [[channel]]\npattern = \"bench/always/#\"\nstorage = \"disk\"\nsync = \"always\"\n\
         history_messages = 1000000\nhistory_bytes = 67108864\n",
        state.display()
    )
}

fn client_error(e: crate::client::ClientError) -> RunError {
    RunError::failed(e.to_string())
}

/// Stream `SIZE`-byte messages on `channel` for `time`, then wait until the
/// hub has taken all of them (one confirmed publish at the end): messages
/// per second.
fn stream(socket: &Path, channel: &str, time: Duration) -> Result<f64, RunError> {
    let mut c = hub_runs::socket_client(socket, "bench-storage")?;
    let msg = vec![0x5au8; SIZE];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < time {
        for _ in 0..256 {
            c.publish(channel, &msg).map_err(client_error)?;
        }
        n += 256;
    }
    c.publish_confirmed(channel, &msg).map_err(client_error)?;
    n += 1;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// `publishers` threads, each publishing and waiting for every ACK:
/// messages per second in total.
fn confirmed(
    socket: &Path,
    channel: &str,
    publishers: usize,
    time: Duration,
) -> Result<f64, RunError> {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..publishers)
        .map(|i| {
            let socket = socket.to_path_buf();
            // One channel for all: the publishers share its log, so an
            // fsync done for one serves everyone waiting (group commit).
            let channel = channel.to_string();
            let _ = i;
            std::thread::spawn(move || -> Result<u64, RunError> {
                let mut c = hub_runs::socket_client(&socket, "bench-storage-always")?;
                let msg = vec![0xa5u8; SIZE];
                let mut n = 0u64;
                while t0.elapsed() < time {
                    c.publish_confirmed(&channel, &msg).map_err(client_error)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| RunError::failed("a publisher thread panicked".to_string()))??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// A publisher → hub → subscriber stream on a plain channel: messages per
/// second the subscriber received.
fn relayed(socket: &Path, time: Duration) -> Result<f64, RunError> {
    let mut sub = hub_runs::socket_client(socket, "bench-storage-sub")?;
    sub.subscribe("bench/plain").map_err(client_error)?;
    let stop_at = Instant::now() + time;
    let publisher = {
        let socket = socket.to_path_buf();
        std::thread::spawn(move || -> Result<u64, RunError> {
            let mut c = hub_runs::socket_client(&socket, "bench-storage-pub")?;
            let msg = vec![1u8; SIZE];
            let mut n = 0u64;
            while Instant::now() < stop_at {
                for _ in 0..256 {
                    c.publish_with("bench/plain", &msg, PublishOptions::default())
                        .map_err(client_error)?;
                }
                n += 256;
            }
            c.publish_confirmed("bench/plain", b"end")
                .map_err(client_error)?;
            Ok(n)
        })
    };
    let t0 = Instant::now();
    let mut got = 0u64;
    let deadline = stop_at + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            return Err(RunError::failed(
                "the plain stream never ended (30 s past its time)".to_string(),
            ));
        }
        match sub
            .next_event(Some(Duration::from_millis(200)))
            .map_err(client_error)?
        {
            Some(Event::Message(m)) if m.payload == b"end" => break,
            Some(Event::Message(m)) => {
                got += 1;
                sub.recycle(m);
            }
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let sent = publisher
        .join()
        .map_err(|_| RunError::failed("the publisher thread panicked".to_string()))??;
    if got != sent {
        return Err(RunError::failed(format!(
            "the subscriber got {got} of {sent} messages under block"
        )));
    }
    Ok(got as f64 / secs)
}

/// Raw sequential writes of `total` bytes in 1 MiB chunks to a new file in
/// `dir`, made durable by one `fdatasync`: bytes per second.
fn raw_sequential(dir: &Path, total: usize) -> Result<f64, RunError> {
    let path = dir.join("raw-sequential");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x33u8; 1 << 20];
    let t0 = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    f.sync_data()?;
    let secs = t0.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(total as f64 / secs)
}

/// Make everything under `dir` durable (fsync of every file): what a
/// previous row left dirty is on disk before the next row is timed.
fn settle_disk(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            settle_disk(&p);
        } else if let Ok(f) = std::fs::File::open(&p) {
            let _ = f.sync_all();
        }
    }
}

/// One `SIZE`-byte append and one `fdatasync` per message, for `time`:
/// messages per second.
fn raw_fsync_each(dir: &Path, time: Duration) -> Result<f64, RunError> {
    let path = dir.join("raw-fsync");
    let mut f = std::fs::File::create(&path)?;
    let rec = vec![0x44u8; SIZE];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < time {
        f.write_all(&rec)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

fn row(
    name: &'static str,
    unit: &'static str,
    value: Result<f64, RunError>,
    baseline_name: &'static str,
    baseline: &Result<f64, RunError>,
    target: Option<f64>,
) -> Row {
    let error = match (&value, baseline) {
        (Err(e), _) => Some(e.to_string()),
        (_, Err(e)) => Some(format!("baseline: {e}")),
        _ => None,
    };
    let value = value.ok();
    let baseline = baseline.as_ref().ok().copied();
    Row {
        name,
        unit,
        value,
        baseline_name,
        baseline,
        ratio: value.zip(baseline).map(|(v, b)| v / b.max(1e-9)),
        target,
        error,
    }
}

pub fn run(args: &Args) -> Result<StorageReport, String> {
    let tmp = TempDir::new().map_err(|e| e.to_string())?;
    let (time, raw_bytes) = if args.quick {
        (Duration::from_millis(300), 16 << 20)
    } else {
        (args.duration.max(Duration::from_secs(2)), 256 << 20)
    };
    let bin = match &args.hub_binary {
        Some(b) => b.clone(),
        None => hub_runs::default_hub_binary().map_err(|e| e.to_string())?,
    };
    let raw_dir = tmp.0.join("raw");
    std::fs::create_dir_all(&raw_dir).map_err(|e| e.to_string())?;
    let raw_seq = raw_sequential(&raw_dir, raw_bytes);
    let raw_sync = raw_fsync_each(&raw_dir, time);

    let mut rows = Vec::new();
    // The hub with disk channels.
    let disk_dir = tmp.0.join("disk");
    let state = disk_dir.join("state");
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let started = HubProcess::start_with(&bin, &disk_dir, &hub_config(&state));
    let plain_with_store = match started {
        Ok(mut hub) => {
            let socket: PathBuf = hub.socket.clone();
            let interval = stream(&socket, "bench/interval/x", time).map(|m| m * SIZE as f64);
            rows.push(row(
                "persisted publish, sync = interval",
                "B/s",
                interval,
                "raw sequential write",
                &raw_seq,
                Some(0.5),
            ));
            // The interval stream leaves gigabytes for the kernel to write
            // back; fsyncs measured on top of that backlog would measure
            // it, not the hub (the raw baseline ran without one).
            settle_disk(&state);
            for (name, n, target) in [
                ("persisted publish, sync = always, 1 publisher", 1, None),
                (
                    "persisted publish, sync = always, 8 publishers",
                    8,
                    Some(5.0),
                ),
            ] {
                let v = confirmed(&socket, "bench/always/x", n, time);
                rows.push(row(
                    name,
                    "msgs/s",
                    v,
                    "one fdatasync per message",
                    &raw_sync,
                    target,
                ));
            }
            let plain = relayed(&socket, time);
            hub.check().and(plain)
        }
        Err(e) => Err(e),
    };
    // The same plain stream on a hub without any disk channel.
    let bare_dir = tmp.0.join("bare");
    std::fs::create_dir_all(&bare_dir).map_err(|e| e.to_string())?;
    let plain_bare = HubProcess::start(&bin, &bare_dir).and_then(|hub| {
        let r = relayed(&hub.socket, time);
        drop(hub);
        r
    });
    rows.push(row(
        "plain channel, hub with disk channels",
        "msgs/s",
        plain_with_store,
        "same hub without disk channels",
        &plain_bare,
        None,
    ));
    Ok(StorageReport {
        schema: "ipchub-bench-storage/1",
        quick: args.quick,
        size: SIZE,
        dir: tmp.0.display().to_string(),
        rows,
    })
}

fn human(v: f64, unit: &str) -> String {
    match unit {
        "B/s" => format!("{:.1} MiB/s", v / (1 << 20) as f64),
        _ => format!("{:.0} {unit}", v),
    }
}

pub fn text(r: &StorageReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== disk storage, {} B messages, socket publishers (files under {}) ==",
        r.size, r.dir
    );
    for row in &r.rows {
        let v = row.value.map_or("-".into(), |v| human(v, row.unit));
        let b = row.baseline.map_or("-".into(), |v| human(v, row.unit));
        let ratio = row.ratio.map_or("-".into(), |x| format!("{x:.2} ×"));
        let bar = match (row.target, row.ratio) {
            (Some(t), Some(x)) if x >= t => format!("  (bar ≥ {t} ×: met)"),
            (Some(t), Some(_)) => format!("  (bar ≥ {t} ×: missed)"),
            (Some(t), None) => format!("  (bar ≥ {t} ×)"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<48} {:>14}   {} {}: {}{}{}",
            row.name,
            v,
            ratio,
            row.baseline_name,
            b,
            bar,
            row.error
                .as_ref()
                .map(|e| format!("  failed: {e}"))
                .unwrap_or_default()
        );
    }
    s
}
