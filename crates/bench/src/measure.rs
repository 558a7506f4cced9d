//! One measurement, whatever carries the bytes: the message format, the
//! sequence check, the publisher / sink / ping / echo drivers every mechanism
//! shares, and the figures they produce.
//!
//! Every message starts with its sequence number and round id (16 bytes,
//! little endian); the rest is filler of the chosen size. Two sequence values
//! are reserved: [`ROUND_END`] closes a round (the sink then reports it) and
//! [`CLOSE`] tells a worker to exit. Mechanisms only move opaque messages, so
//! the drivers here are the single place where "present, in order, right
//! size" is decided, identically for the hub, the raw baselines and the peers.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Sequence number of the message that ends a round.
pub const ROUND_END: u64 = u64::MAX;
/// Sequence number of the message that tells a worker to exit.
pub const CLOSE: u64 = u64::MAX - 1;
/// How long a latency ping waits for its echo before it counts as lost.
const PONG_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings lost one after another before the echo counts as gone.
const MAX_LOST_IN_A_ROW: u64 = 5;
/// Quiet time after which a sink reports a started round that never ended
/// (only a lossy mechanism such as UDP loses the end marker).
const SINK_IDLE: Duration = Duration::from_secs(2);
/// Longest round trip the histograms hold (longer ones are clamped).
const HIST_MAX_NS: u64 = 60_000_000_000;

/// Why a measurement produced no figure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The mechanism cannot run here (missing program, kernel limit, size);
    /// reported as "not available: …".
    #[error("{0}")]
    Unavailable(String),
    /// It started but broke; reported as "failed: …".
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl RunError {
    pub fn unavailable(s: impl Into<String>) -> RunError {
        RunError::Unavailable(s.into())
    }
    pub fn failed(s: impl Into<String>) -> RunError {
        RunError::Failed(s.into())
    }
}

impl From<nix::errno::Errno> for RunError {
    fn from(e: nix::errno::Errno) -> RunError {
        RunError::Io(e.into())
    }
}

/// Nanoseconds on CLOCK_MONOTONIC: one clock for every process of the
/// machine, so a send time taken by the publisher and a receipt time taken by
/// a subscriber process can be subtracted.
pub fn now_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux.
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Write the sequence number and round into the first 16 bytes.
pub fn stamp(msg: &mut [u8], seq: u64, round: u64) {
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    msg[8..16].copy_from_slice(&round.to_le_bytes());
}

/// The (sequence, round) a message carries, if it is long enough.
pub fn read_stamp(msg: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(msg.get(..8)?.try_into().ok()?);
    let round = u64::from_le_bytes(msg.get(8..16)?.try_into().ok()?);
    Some((seq, round))
}

/// A message of `size` bytes with recognisable filler after the stamp.
pub fn message(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Whatever moves messages between the measuring process and a worker: a
/// hub client, a raw pipe, a D-Bus connection… Message boundaries are the
/// endpoint's business (stream endpoints cut fixed-size messages).
pub trait Endpoint {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError>;
    /// Push out anything `send` buffered.
    fn flush(&mut self) -> Result<(), RunError> {
        Ok(())
    }
    /// Send a round or close marker; lossy endpoints repeat it.
    fn send_marker(&mut self, msg: &[u8]) -> Result<(), RunError> {
        self.send(msg)?;
        self.flush()
    }
    /// Wait up to about `timeout` for messages and hand each to `f`; returns
    /// how many (0: nothing came). Endpoints over descriptors without a timed
    /// read may block longer; the measuring process's watchdog then kills the
    /// worker, which ends the wait with end of file.
    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError>;
}

/// How long a round lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Messages(u64),
    Time(Duration),
}

impl Limit {
    fn done(&self, sent: u64, start: Instant) -> bool {
        match *self {
            Limit::Messages(n) => sent >= n,
            // Reading the clock every message would cost more than a raw send.
            Limit::Time(d) => sent.is_multiple_of(32) && start.elapsed() >= d,
        }
    }
}

/// The publisher's half of a throughput round: send until the limit, then the
/// round marker. Returns (messages sent, start time in ns).
pub fn publish_round(
    ep: &mut dyn Endpoint,
    msg: &mut [u8],
    round: u64,
    limit: Limit,
) -> Result<(u64, u64), RunError> {
    let t0 = now_ns();
    let start = Instant::now();
    let mut seq = 0;
    while !limit.done(seq, start) {
        stamp(msg, seq, round);
        ep.send(msg)?;
        seq += 1;
    }
    stamp(msg, ROUND_END, round);
    ep.send_marker(msg)?;
    Ok((seq, t0))
}

/// What a sink saw in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u64,
    /// Data messages received (duplicates included).
    pub received: u64,
    /// Sequence numbers skipped over (lost before a later message came).
    pub missing: u64,
    /// Messages whose sequence number was below the one expected.
    pub out_of_order: u64,
    /// Messages of another length than the payload size.
    pub bad_size: u64,
    /// Receipt time of the last data message (CLOCK_MONOTONIC ns).
    pub last_ns: u64,
    /// The round marker never came; the report was made after a quiet spell.
    pub unterminated: bool,
}

/// The in-order check of one round.
struct SeqCheck {
    report: RoundReport,
    expected: u64,
}

impl SeqCheck {
    fn new(round: u64) -> SeqCheck {
        SeqCheck {
            report: RoundReport {
                round,
                ..RoundReport::default()
            },
            expected: 0,
        }
    }

    fn data(&mut self, seq: u64, len: usize, size: usize) {
        let r = &mut self.report;
        r.received += 1;
        r.last_ns = now_ns();
        if len != size {
            r.bad_size += 1;
        }
        if seq == self.expected {
            self.expected += 1;
        } else if seq > self.expected {
            r.missing += seq - self.expected;
            self.expected = seq + 1;
        } else {
            r.out_of_order += 1;
        }
    }
}

/// The subscriber's side: check every message, report each round through
/// `report`, return on [`CLOSE`].
pub fn sink(
    ep: &mut dyn Endpoint,
    size: usize,
    report: &mut dyn FnMut(&RoundReport),
) -> Result<(), RunError> {
    let mut check: Option<SeqCheck> = None;
    // Rounds already reported: a repeated end marker must not end the next one.
    let mut last_reported: Option<u64> = None;
    let mut closed = false;
    while !closed {
        let n = ep.recv(SINK_IDLE, &mut |m| {
            let Some((seq, round)) = read_stamp(m) else {
                if let Some(c) = check.as_mut() {
                    c.report.bad_size += 1;
                }
                return;
            };
            match seq {
                CLOSE => closed = true,
                ROUND_END => {
                    if last_reported.is_some_and(|r| r >= round) {
                        return;
                    }
                    let c = check.take().unwrap_or_else(|| SeqCheck::new(round));
                    report(&c.report);
                    last_reported = Some(round);
                }
                _ => {
                    if last_reported.is_some_and(|r| r >= round) {
                        return;
                    }
                    check
                        .get_or_insert_with(|| SeqCheck::new(round))
                        .data(seq, m.len(), size);
                }
            }
        })?;
        if n == 0 {
            if let Some(mut c) = check.take() {
                c.report.unterminated = true;
                report(&c.report);
                last_reported = Some(c.report.round);
            }
        }
    }
    Ok(())
}

/// The echo worker: send back every message until [`CLOSE`]; returns how
/// many were echoed.
pub fn echo(ep: &mut dyn Endpoint) -> Result<u64, RunError> {
    let mut pending: Vec<u8> = Vec::new();
    let mut lens: Vec<usize> = Vec::new();
    let mut echoed = 0;
    loop {
        let mut closed = false;
        ep.recv(Duration::from_secs(3600), &mut |m| {
            if read_stamp(m).is_some_and(|(s, _)| s == CLOSE) {
                closed = true;
            } else {
                pending.extend_from_slice(m);
                lens.push(m.len());
            }
        })?;
        let mut off = 0;
        for &len in &lens {
            ep.send(&pending[off..off + len])?;
            off += len;
        }
        if !lens.is_empty() {
            ep.flush()?;
        }
        echoed += lens.len() as u64;
        pending.clear();
        lens.clear();
        if closed {
            return Ok(echoed);
        }
    }
}

/// A histogram of round trips in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// One ping-pong round: one message in flight at a time. Returns how many
/// pings got no echo within [`PONG_TIMEOUT`].
pub fn ping_round(
    ep: &mut dyn Endpoint,
    msg: &mut [u8],
    round: u64,
    limit: Limit,
    hist: &mut Histogram<u64>,
) -> Result<u64, RunError> {
    let start = Instant::now();
    let mut lost = 0;
    let mut lost_in_a_row = 0;
    let mut seq = 0;
    while !limit.done(seq, start) {
        stamp(msg, seq, round);
        let t = Instant::now();
        ep.send(msg)?;
        ep.flush()?;
        let mut got = false;
        while !got {
            let n = ep.recv(PONG_TIMEOUT, &mut |m| {
                got |= read_stamp(m) == Some((seq, round));
            })?;
            if n == 0 {
                break;
            }
        }
        if got {
            let ns = t.elapsed().as_nanos().min(HIST_MAX_NS as u128) as u64;
            hist.record(ns.max(1))
                .expect("clamped into the histogram's range");
            lost_in_a_row = 0;
        } else {
            lost += 1;
            lost_in_a_row += 1;
            if lost_in_a_row >= MAX_LOST_IN_A_ROW {
                return Err(RunError::failed(format!(
                    "no echo for {MAX_LOST_IN_A_ROW} pings in a row"
                )));
            }
        }
        seq += 1;
    }
    Ok(lost)
}

/// Minimum, median and maximum over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// None for no values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// Latency figures in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            avg: h.mean(),
            p50: h.value_at_quantile(0.50) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
        }
    }

    pub fn halved(&self) -> Percentiles {
        Percentiles {
            avg: self.avg / 2.0,
            p50: self.p50 / 2.0,
            p99: self.p99 / 2.0,
            p999: self.p999 / 2.0,
            max: self.max / 2.0,
        }
    }
}

/// Throughput of one mechanism at one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Rate at which every subscriber received the stream (the slowest one).
    pub msgs_per_sec: Spread,
    /// `msgs_per_sec` × payload bytes / 10^6.
    pub mb_per_sec: Spread,
    /// Deliveries per second summed over subscribers (equals msgs_per_sec with one).
    pub aggregate_msgs_per_sec: Spread,
    pub subscribers: u32,
    /// Measured rounds.
    pub rounds: u32,
    /// Messages sent in the measured rounds.
    pub sent: u64,
    /// Messages received in the measured rounds, over all subscribers.
    pub received: u64,
    /// Sent but never received, over all subscribers.
    pub lost: u64,
    pub out_of_order: u64,
    pub bad_size: u64,
}

impl Throughput {
    /// Every message arrived, once, in order, whole.
    pub fn lossless(&self) -> bool {
        self.lost == 0 && self.out_of_order == 0 && self.bad_size == 0
    }
}

/// Ping-pong latency of one mechanism at one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Round trip / 2, from all measured rounds merged.
    pub one_way_ns: Percentiles,
    pub round_trip_ns: Percentiles,
    /// Round-trip p50 of each round: how repeatable the figure is.
    pub round_trip_p50_ns: Spread,
    pub samples: u64,
    /// Pings that got no echo within a second.
    pub lost: u64,
    pub rounds: u32,
}

/// A figure, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome<T> {
    Ok(T),
    /// Could not run here; the reason says why.
    NotAvailable {
        reason: String,
    },
    /// Started but broke.
    Failed {
        reason: String,
    },
    /// Not part of this mechanism (memcpy has no latency).
    NotMeasured {
        reason: String,
    },
}

impl<T> Outcome<T> {
    pub fn from_result(r: Result<T, RunError>) -> Outcome<T> {
        match r {
            Ok(v) => Outcome::Ok(v),
            Err(RunError::Unavailable(reason)) => Outcome::NotAvailable { reason },
            Err(RunError::Failed(reason)) => Outcome::Failed { reason },
            Err(RunError::Io(e)) => Outcome::Failed {
                reason: e.to_string(),
            },
        }
    }

    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// A word for CSV: ok, not_available, failed, not_measured.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::NotAvailable { .. } => "not_available",
            Outcome::Failed { .. } => "failed",
            Outcome::NotMeasured { .. } => "not_measured",
        }
    }

    /// The explanation when there is no figure.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::NotAvailable { reason } => Some(format!("not available: {reason}")),
            Outcome::Failed { reason } => Some(format!("failed: {reason}")),
            Outcome::NotMeasured { reason } => Some(format!("not measured: {reason}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// An in-memory endpoint: what is sent comes back on recv.
    #[derive(Default)]
    struct Loop {
        q: VecDeque<Vec<u8>>,
        drop_seq: Option<u64>,
        swap: bool,
    }

    impl Endpoint for Loop {
        fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
            let seq = read_stamp(msg).unwrap().0;
            if Some(seq) == self.drop_seq {
                return Ok(());
            }
            self.q.push_back(msg.to_vec());
            if self.swap && seq == 3 {
                let n = self.q.len();
                self.q.swap(n - 1, n - 2);
            }
            Ok(())
        }
        fn recv(&mut self, _: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
            let n = self.q.len();
            for m in self.q.drain(..) {
                f(&m);
            }
            Ok(n)
        }
    }

    fn one_round(ep: &mut Loop, n: u64) -> RoundReport {
        let mut msg = message(64);
        publish_round(ep, &mut msg, 1, Limit::Messages(n)).unwrap();
        stamp(&mut msg, CLOSE, 0);
        ep.send(&msg).unwrap();
        let mut got = Vec::new();
        sink(ep, 64, &mut |r| got.push(r.clone())).unwrap();
        assert_eq!(got.len(), 1);
        got.pop().unwrap()
    }

    #[test]
    fn a_clean_round_counts_every_message() {
        let r = one_round(&mut Loop::default(), 100);
        assert_eq!((r.received, r.missing, r.out_of_order), (100, 0, 0));
    }

    #[test]
    fn a_lost_message_is_missing() {
        let mut ep = Loop {
            drop_seq: Some(7),
            ..Loop::default()
        };
        let r = one_round(&mut ep, 100);
        assert_eq!((r.received, r.missing, r.out_of_order), (99, 1, 0));
    }

    #[test]
    fn a_reordered_message_is_out_of_order() {
        let mut ep = Loop {
            swap: true,
            ..Loop::default()
        };
        let r = one_round(&mut ep, 10);
        assert_eq!(r.received, 10);
        assert_eq!(r.out_of_order, 1);
    }

    #[test]
    fn spread_takes_the_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 3.0]).unwrap().median, 2.0);
        assert!(Spread::of(&[]).is_none());
    }
}
