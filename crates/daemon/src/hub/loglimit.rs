//! Rate limits for log lines a client can cause: per uid and kind, a token
//! bucket, and one summary line for what was left out.
//!
//! A denied publish is logged, so without a limit one user could write a
//! log line per message (10,000 a second fill a disk and bury everything
//! else). Each (uid, kind) pair gets `log.rate_limit_burst` lines at once
//! and `log.rate_limit_per_minute` after; the lines over the limit are
//! counted, and [`SUMMARY_AFTER`] after the first of them one line says how
//! many were suppressed. Keys are uids, not clients, so reconnecting does
//! not buy a fresh bucket; buckets that are full again are forgotten, so
//! the table holds only uids that logged recently.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The journal's `MESSAGE_ID`s of the events an operator filters on
/// (`journalctl MESSAGE_ID=…`). Fixed for good: changing one breaks the
/// operators' filters. A log call carries one as its `message_id` field,
/// which the journal gets as `MESSAGE_ID` and plain text leaves out.
pub mod msgid {
    /// The hub is ready: listening, its transports named.
    pub const READY: &str = "6fba17bdb7b24bba8d52effca717f834";
    /// A client completed its handshake.
    pub const CLIENT_CONNECTED: &str = "241d444c39854de78145bdd778af6a26";
    /// A client went away or was disconnected (for a reason other than
    /// being a slow consumer).
    pub const CLIENT_DISCONNECTED: &str = "cc5327aa1bd64beab5829cfe2cbf226b";
    /// The access rules refused a publish, a subscription or a ring.
    pub const ACCESS_DENIED: &str = "116fbab72ed84a9d8bbbcfe4028e6699";
    /// A subscriber was disconnected for not reading fast enough.
    pub const SLOW_CONSUMER: &str = "5f1aeceae2e64ed48ab02718228fdcf9";
    /// Messages a subscriber lost to `drop-oldest` (or too big for it).
    pub const MESSAGES_DROPPED: &str = "8022a3288c474180bead8f2b19b41b20";
    /// A channel's shared-memory ring was retired.
    pub const RING_RETIRED: &str = "f71f031403424757a29f58ab1917eb31";
    /// The configuration was reloaded (the line says what changed).
    pub const RELOADED: &str = "830cee4813784e3d94261d423e306bc8";
    /// A reload failed; the running configuration stays.
    pub const RELOAD_FAILED: &str = "fd2eafcc52c44b5aa40c2565a6fc6528";
}

/// How long suppressed lines are counted before their summary is logged.
pub const SUMMARY_AFTER: Duration = Duration::from_secs(5);

/// Kinds of client-caused log lines, limited separately so a flood of one
/// does not hide another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogKind {
    /// A publish, subscription or channel ring the access rules refused.
    Denied,
    /// A connection refused at admission (a limit reached).
    Refused,
    /// A client disconnected for a reason (protocol error, slow consumer…).
    Disconnected,
    /// Connections and disconnections themselves.
    Connection,
    /// Reports of messages lost under `drop-oldest`.
    Dropped,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Denied => "denied",
            LogKind::Refused => "refused",
            LogKind::Disconnected => "disconnected",
            LogKind::Connection => "connection",
            LogKind::Dropped => "dropped",
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
    /// When the first line now counted in `suppressed` was left out.
    since: Option<Instant>,
}

#[derive(Debug)]
pub struct LogLimiter {
    burst: f64,
    per_sec: f64,
    buckets: HashMap<(u32, LogKind), Bucket>,
}

impl LogLimiter {
    pub fn new(burst: u32, per_minute: u32) -> LogLimiter {
        let mut l = LogLimiter {
            burst: 1.0,
            per_sec: 1.0,
            buckets: HashMap::new(),
        };
        l.set_limits(burst, per_minute);
        l
    }

    pub fn set_limits(&mut self, burst: u32, per_minute: u32) {
        self.burst = f64::from(burst.max(1));
        self.per_sec = f64::from(per_minute.max(1)) / 60.0;
    }

    fn refill(b: &mut Bucket, now: Instant, burst: f64, per_sec: f64) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * per_sec).min(burst);
        b.at = now;
    }

    /// May a line of `kind` caused by `uid` be logged now? If not, it is
    /// counted for the summary.
    pub fn allow(&mut self, uid: u32, kind: LogKind, now: Instant) -> bool {
        let (burst, per_sec) = (self.burst, self.per_sec);
        let b = self.buckets.entry((uid, kind)).or_insert(Bucket {
            tokens: burst,
            at: now,
            suppressed: 0,
            since: None,
        });
        Self::refill(b, now, burst, per_sec);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.suppressed += 1;
            b.since.get_or_insert(now);
            false
        }
    }

    /// When the next summary is due, if lines are being suppressed.
    pub fn next_due(&self) -> Option<Instant> {
        self.buckets
            .values()
            .filter_map(|b| b.since.map(|s| s + SUMMARY_AFTER))
            .min()
    }

    /// The summaries due at `now`: (uid, kind, lines suppressed). Buckets
    /// that are full again and owe nothing are forgotten.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u32, LogKind, u64)> {
        let (burst, per_sec) = (self.burst, self.per_sec);
        let mut due = Vec::new();
        self.buckets.retain(|&(uid, kind), b| {
            if b.since.is_some_and(|s| now >= s + SUMMARY_AFTER) {
                due.push((uid, kind, b.suppressed));
                b.suppressed = 0;
                b.since = None;
            }
            Self::refill(b, now, burst, per_sec);
            b.since.is_some() || b.tokens < burst
        });
        due.sort_unstable();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_one_summary() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, 60);
        let allowed = (0..1000)
            .filter(|_| l.allow(7, LogKind::Denied, t0))
            .count();
        assert_eq!(allowed, 3);
        // Another uid and another kind have their own buckets.
        assert!(l.allow(8, LogKind::Denied, t0));
        assert!(l.allow(7, LogKind::Refused, t0));
        // One token a second comes back.
        assert!(l.allow(7, LogKind::Denied, t0 + Duration::from_millis(1000)));
        assert!(!l.allow(7, LogKind::Denied, t0 + Duration::from_millis(1100)));
        assert_eq!(l.next_due(), Some(t0 + SUMMARY_AFTER));
        assert!(l.take_due(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            l.take_due(t0 + SUMMARY_AFTER),
            vec![(7, LogKind::Denied, 998)]
        );
        assert_eq!(l.next_due(), None);
        // Full buckets are forgotten.
        l.take_due(t0 + Duration::from_secs(60));
        assert!(l.buckets.is_empty());
    }
}
