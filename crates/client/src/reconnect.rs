//! Riding out a hub that goes away: reconnect with backoff on the same
//! transport, restore subscriptions (and so channel rings), hold publishes
//! made meanwhile in a bounded buffer, and tell the application.
//!
//! A connection counts as lost when the hub closes it without saying why
//! (crash, kill -9), says goodbye because it is shutting down (restart,
//! upgrade), or a write fails with a broken connection. A client the hub
//! disconnected *for a reason* (an ERROR with sequence 0: slow consumer,
//! refused access, bad input) is not reconnected: the hub meant it.
//!
//! What the application sees, in order, as events: [`Event::HubLost`] when
//! the loss is noticed, then [`Event::HubBack`] once the new connection is
//! up and every subscription was asked for again. Messages others
//! published while no hub ran were never routed to this client; the
//! subscriber cannot count them, and `HubBack` says so by being there.
//! Publishes of this client that the old hub took but never confirmed are
//! counted in `HubBack::unconfirmed`: they may or may not have reached
//! their subscribers. Publishes not yet written when the hub went away, and
//! those made while it was away (up to [`Reconnect::buffer_messages`] and
//! [`Reconnect::buffer_bytes`]), are sent to the new hub, in order, with
//! their sequence numbers.

use std::time::{Duration, Instant};

/// How long the new hub may take to answer the restored subscriptions.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(10);

use super::{conn, Client, ClientError, Detached, Event};
use crate::queue::{Kind, OutQueue};
use crate::wire::{self, ErrorCode, FrameType, Pattern, ACK_REQUESTED};

/// What the client does when the hub goes away (a field of
/// [`Options`](super::Options)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// Reconnect at all. `false` (see [`Reconnect::off`]): the first call
    /// after the loss fails with [`ClientError::Closed`] or an I/O error,
    /// as it always did, for programs that want to fail fast.
    pub enabled: bool,
    /// Wait before the second attempt; doubled per failed attempt.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// Give up after this long without a hub (`None`: never). Then every
    /// call fails with [`ClientError::GaveUp`].
    pub give_up_after: Option<Duration>,
    /// Most publishes held while no hub is connected; one more fails with
    /// [`ClientError::BufferFull`].
    pub buffer_messages: usize,
    /// Most bytes (whole frames) held while no hub is connected.
    pub buffer_bytes: usize,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            enabled: true,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            give_up_after: None,
            buffer_messages: 10_000,
            buffer_bytes: 8 << 20,
        }
    }
}

impl Reconnect {
    /// Fail fast: no reconnection, no buffer.
    pub fn off() -> Reconnect {
        Reconnect {
            enabled: false,
            ..Reconnect::default()
        }
    }
}

/// The client is between hubs.
pub(super) struct Down {
    since: Instant,
    reason: String,
    backoff: Duration,
    next_try: Instant,
    /// Publishes the lost hub took and never confirmed.
    unconfirmed: u64,
    /// The last attempt's failure, for `GaveUp`.
    last_error: String,
}

/// Per-connection bookkeeping for what may be lost with it.
#[derive(Default)]
pub(super) struct Ledger {
    /// Publishes handed to this connection (queued or written).
    pub(super) sent: u64,
    /// Of those, how many the hub confirmed: an ACK (or ERROR) for
    /// sequence S means it handled every earlier publish too.
    pub(super) confirmed: u64,
    /// (sequence, `sent` when it was queued) of publishes awaiting an ACK.
    pub(super) marks: std::collections::VecDeque<(u64, u64)>,
    /// Publishes and bytes held while no hub is connected (the bound).
    pub(super) held_msgs: usize,
    pub(super) held_bytes: usize,
    /// Changed at every loss, so a waiter notices its answer cannot come.
    pub(super) epoch: u64,
    /// Lowest sequence resent to the next hub: publishes from here on
    /// were not lost.
    pub(super) resend_from: u64,
    /// SUBSCRIBEs sent by the restore, whose ACKs the application never asked for.
    pub(super) restore_seqs: std::collections::HashSet<u64>,
    /// The hub disconnected us for a reason: do not come back.
    pub(super) kicked: bool,
    /// Inside the restore: a failure there is the attempt's, not a new loss.
    pub(super) restoring: bool,
}

impl Ledger {
    /// The hub answered request `seq` (ACK or ERROR).
    pub(super) fn answered(&mut self, seq: u64) {
        while let Some(&(s, n)) = self.marks.front() {
            if s > seq {
                break;
            }
            self.confirmed = self.confirmed.max(n);
            self.marks.pop_front();
        }
    }

    /// A publish was queued for (or written to) the hub.
    pub(super) fn note_publish(&mut self, seq: u64, ack: bool) {
        self.sent += 1;
        if ack {
            self.marks.push_back((seq, self.sent));
        }
    }
}

/// An ERROR with sequence 0 and one of these codes precedes a disconnect
/// the hub meant.
pub(super) fn is_kick(code: u16) -> bool {
    use ErrorCode::*;
    matches!(
        ErrorCode::from_u16(code),
        Some(
            SlowConsumer
                | NotPermitted
                | Malformed
                | UnknownType
                | UnsupportedVersion
                | BadHandshake
                | TooLarge
                | Internal
        )
    )
}

impl Client {
    /// Whether `e` means the hub went away (and we should come back):
    /// the reason, if so.
    pub(super) fn loss(&self, e: &ClientError) -> Option<String> {
        if !self.opts.reconnect.enabled || self.ledger.kicked || self.ledger.restoring {
            return None;
        }
        match e {
            ClientError::Closed(r) => Some(r.clone()),
            ClientError::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::UnexpectedEof
            )
            .then(|| io.to_string()),
            _ => None,
        }
    }

    /// Whether the client is between hubs.
    pub fn is_reconnecting(&self) -> bool {
        self.down.is_some()
    }

    /// The connection is lost: keep what can be resent, drop the rest
    /// (counted), and tell the application.
    pub(super) fn go_down(&mut self, reason: String) {
        let unconfirmed = self.salvage();
        let now = Instant::now();
        self.down = Some(Down {
            since: now,
            reason: reason.clone(),
            backoff: self.opts.reconnect.initial_backoff,
            // At once: a planned restart is usually back already.
            next_try: now,
            unconfirmed,
            last_error: String::new(),
        });
        tracing::debug!(%reason, unconfirmed, "lost the hub; reconnecting");
        self.events.push_back(Event::HubLost { reason });
    }

    /// Tear down the dead connection, keeping the publishes not yet
    /// written (whole frames only) for the next one. Returns how many
    /// publishes the dead hub took without confirming.
    fn salvage(&mut self) -> u64 {
        self.ledger.epoch += 1;
        let max_frame = self.link.max_frame();
        self.link = Box::new(Detached { max_frame });
        self.ctrl = None;
        self.rings = self.rings.renewed(false);
        self.inbuf.clear();
        self.closed = None;
        self.ledger.restore_seqs.clear();
        self.out.drop_partial_head();
        let (a, b) = self.out.as_slices();
        let bytes = [a, b].concat();
        let mut fresh = OutQueue::new(usize::MAX, usize::MAX);
        let mut ledger_marks = std::collections::VecDeque::new();
        let (mut msgs, mut held_bytes) = (0u64, 0usize);
        self.ledger.resend_from = self.next_seq;
        let mut off = 0;
        while let Ok(Some((f, used))) = wire::decode(&bytes[off..], u32::MAX) {
            let frame = &bytes[off..off + used];
            off += used;
            // Requests other than publishes are asked again by whoever
            // waits for them (subscriptions by the restore).
            if f.header.ty != FrameType::Publish {
                continue;
            }
            if msgs == 0 {
                self.ledger.resend_from = f.header.seq;
            }
            msgs += 1;
            held_bytes += used;
            if f.header.flags & ACK_REQUESTED != 0 {
                ledger_marks.push_back((f.header.seq, msgs));
            }
            fresh.push(Kind::Control, &[frame]);
        }
        let unconfirmed = self
            .ledger
            .sent
            .saturating_sub(self.ledger.confirmed)
            .saturating_sub(msgs);
        self.out = fresh;
        self.ledger.sent = msgs;
        self.ledger.confirmed = 0;
        self.ledger.marks = ledger_marks;
        self.ledger.held_msgs = msgs as usize;
        self.ledger.held_bytes = held_bytes;
        self.unflushed_since = None;
        unconfirmed
    }

    /// Hold a publish for the next hub, within the buffer's bounds.
    pub(super) fn hold_publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: super::PublishOptions,
        seq: Option<u64>,
    ) -> Result<u64, ClientError> {
        let len = wire::HEADER_LEN + channel.len() + payload.len();
        let r = &self.opts.reconnect;
        if self.ledger.held_msgs + 1 > r.buffer_messages
            || self.ledger.held_bytes + len > r.buffer_bytes
        {
            return Err(ClientError::BufferFull {
                messages: self.ledger.held_msgs,
                bytes: self.ledger.held_bytes,
                max_messages: r.buffer_messages,
                max_bytes: r.buffer_bytes,
            });
        }
        let seq = seq.unwrap_or_else(|| self.next_seq());
        let flags = if opts.ack { ACK_REQUESTED } else { 0 };
        self.queue_frame(
            FrameType::Publish,
            flags,
            opts.priority,
            channel,
            payload,
            seq,
        );
        self.ledger.note_publish(seq, opts.ack);
        self.ledger.held_msgs += 1;
        self.ledger.held_bytes += len;
        Ok(seq)
    }

    /// Try to get a hub back until `deadline` (`None`: as long as
    /// [`Reconnect::give_up_after`] allows). Ok: connected again, with
    /// [`Event::HubBack`] queued; `Timeout` at the deadline.
    pub(super) fn reconnect(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        loop {
            let Some(d) = self.down.as_mut() else {
                return Ok(());
            };
            if let Some(limit) = self.opts.reconnect.give_up_after {
                if d.since.elapsed() >= limit {
                    let err = ClientError::GaveUp {
                        after: limit,
                        reason: format!("{}; last attempt: {}", d.reason, d.last_error),
                    };
                    // From now on the client is closed, as without reconnection.
                    self.closed = Some(err.to_string());
                    self.ledger.kicked = true;
                    self.down = None;
                    return Err(err);
                }
            }
            let now = Instant::now();
            if now >= d.next_try {
                match self.attempt() {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        let d = self.down.as_mut().expect("still down");
                        d.last_error = e.to_string();
                        d.next_try = Instant::now() + d.backoff;
                        d.backoff = (d.backoff * 2).min(self.opts.reconnect.max_backoff);
                        continue;
                    }
                }
            }
            let wake = d.next_try;
            if let Some(dl) = deadline {
                if dl <= wake {
                    std::thread::sleep(dl.saturating_duration_since(now));
                    return Err(ClientError::Timeout);
                }
            }
            std::thread::sleep(wake.saturating_duration_since(now));
        }
    }

    /// One attempt: connect, restore the subscriptions, queue `HubBack`.
    fn attempt(&mut self) -> Result<(), ClientError> {
        let c = conn::open(&self.opts)?;
        self.ctrl = c.ctrl;
        self.link = c.link;
        self.id = c.id;
        self.max_message = c.max_message;
        self.rings = self.rings.renewed(c.rings_offered);
        self.closed = None;
        self.ledger.kicked = false;
        self.ledger.restoring = true;
        let res = self.restore();
        self.ledger.restoring = false;
        if let Err(e) = res {
            // This connection failed too: back to waiting, quietly (the
            // application was told already).
            self.salvage();
            return Err(e);
        }
        let d = self.down.take().expect("was down");
        tracing::debug!(outage = ?d.since.elapsed(), "hub back");
        self.events.push_back(Event::HubBack {
            outage: d.since.elapsed(),
            resent: self.ledger.held_msgs as u64,
            unconfirmed: d.unconfirmed,
        });
        self.ledger.held_msgs = 0;
        self.ledger.held_bytes = 0;
        Ok(())
    }

    /// Ask the new hub for every subscription again. A subscription it
    /// refuses now becomes an [`Event::Error`]; the rest carry on.
    fn restore(&mut self) -> Result<(), ClientError> {
        for pattern in self.subs.clone() {
            let exact = Pattern::parse(&pattern).is_ok_and(|p| p.is_exact());
            if exact {
                match self.ring_subscribe(&pattern) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(ClientError::Refused { code, text }) => {
                        self.events.push_back(Event::Error { seq: 0, code, text });
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let seq = self.next_seq();
            self.queue_frame(FrameType::Subscribe, 0, 0, &pattern, b"", seq);
            self.ledger.restore_seqs.insert(seq);
        }
        self.flush_inner()?;
        // Back means subscribed: wait for the hub's answers, so what is
        // published after `HubBack` reaches us.
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        while !self.ledger.restore_seqs.is_empty() {
            self.read_available()?;
            if self.ledger.restore_seqs.is_empty() || !self.link.prepare_sleep()? {
                continue;
            }
            self.wait_io(Some(deadline), false)?;
        }
        Ok(())
    }
}
