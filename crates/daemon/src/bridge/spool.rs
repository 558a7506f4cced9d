//! The export spool: every message on its way to the broker, bounded in
//! messages and bytes. Pure bookkeeping; the MQTT thread drives it.
//!
//! A message stays here from the moment the hub delivers it to the bridge
//! until the broker has taken responsibility for it, in three stages:
//! - `waiting`: not yet given to the MQTT client (the broker is down, or the
//!   window is full);
//! - `handed`: in rumqttc's request channel, no packet id yet. rumqttc takes
//!   requests in order and reports each as `Outgoing::Publish(pkid)` when it
//!   writes it, so the front of `handed` is always the next one written;
//! - `inflight`: written with packet id `pkid`, waiting for PUBACK (QoS 1) or
//!   PUBREC (QoS 2). QoS 0 messages are done once written.
//!
//! Why keep our own copy: on a clean session rumqttc discards unacknowledged
//! publishes when it reconnects. So on every disconnect `handed` and
//! `inflight` go back to the front of `waiting` in their original order and
//! are sent again: QoS 1 and 2 become at-least-once across reconnects.
//!
//! Overflow (the broker is away for long): the oldest *waiting* message is
//! dropped to make room, since a bridge usually carries state where the
//! newest value matters most; messages already handed over are never
//! dropped. Every drop is counted.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMsg {
    /// Arrival order, to restore it after a disconnect.
    pub seq: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

impl OutMsg {
    /// What a message costs against `max_bytes`.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

#[derive(Debug)]
pub struct Spool {
    waiting: VecDeque<OutMsg>,
    handed: VecDeque<OutMsg>,
    inflight: BTreeMap<u16, OutMsg>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// Most messages handed over and not yet confirmed, so that rumqttc's
    /// bounded request channel never refuses one.
    window: usize,
    connected: bool,
    next_seq: u64,
    /// Confirmed by the broker (QoS 1, 2) or written (QoS 0).
    pub sent: u64,
    /// Dropped because the spool was full.
    pub dropped: u64,
    /// Refused by the broker (a PUBACK/PUBREC with an error reason).
    pub rejected: u64,
}

impl Spool {
    pub fn new(max_messages: usize, max_bytes: usize, window: usize) -> Spool {
        Spool {
            waiting: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: BTreeMap::new(),
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes,
            window: window.clamp(1, max_messages.max(1)),
            connected: false,
            next_seq: 0,
            sent: 0,
            dropped: 0,
            rejected: 0,
        }
    }

    /// Messages not yet confirmed, in every stage.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.handed.len() + self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Add a message; returns how many messages were dropped to stay within
    /// the bounds (the oldest waiting ones, or this one if nothing else can go).
    pub fn push(&mut self, topic: String, payload: Bytes, qos: u8, retain: bool) -> u64 {
        let msg = OutMsg {
            seq: self.next_seq,
            topic,
            payload,
            qos,
            retain,
        };
        self.next_seq += 1;
        let size = msg.size();
        if size > self.max_bytes {
            self.dropped += 1;
            return 1;
        }
        let mut dropped = 0;
        while self.len() >= self.max_messages || self.bytes + size > self.max_bytes {
            match self.waiting.pop_front() {
                Some(old) => {
                    self.bytes -= old.size();
                    dropped += 1;
                }
                None => {
                    // Too big for what the in-flight messages leave free.
                    self.dropped += dropped + 1;
                    return dropped + 1;
                }
            }
        }
        self.bytes += size;
        self.waiting.push_back(msg);
        self.dropped += dropped;
        dropped
    }

    /// The next message to give to the MQTT client, moved to `handed`; `None`
    /// while disconnected or when the window is full.
    pub fn next_to_hand(&mut self) -> Option<&OutMsg> {
        if !self.connected || self.handed.len() + self.inflight.len() >= self.window {
            return None;
        }
        let m = self.waiting.pop_front()?;
        self.handed.push_back(m);
        self.handed.back()
    }

    /// The MQTT client refused the message just returned by
    /// [`next_to_hand`](Self::next_to_hand): it waits again, first in line.
    pub fn unhand_last(&mut self) {
        if let Some(m) = self.handed.pop_back() {
            self.waiting.push_front(m);
        }
    }

    /// rumqttc wrote the oldest handed message with packet id `pkid` (0 for QoS 0).
    pub fn written(&mut self, pkid: u16) {
        let Some(m) = self.handed.pop_front() else {
            return;
        };
        if m.qos == 0 || pkid == 0 {
            self.done(&m);
            self.sent += 1;
        } else if let Some(old) = self.inflight.insert(pkid, m) {
            // rumqttc only reuses an id once it is acknowledged, so this is
            // not expected; keep the message rather than lose it.
            self.waiting.push_front(old);
        }
    }

    /// The broker answered for packet `pkid`: `ok` false means it refused
    /// the message. Returns false for an id we do not know.
    pub fn confirmed(&mut self, pkid: u16, ok: bool) -> bool {
        let Some(m) = self.inflight.remove(&pkid) else {
            return false;
        };
        self.done(&m);
        if ok {
            self.sent += 1;
        } else {
            self.rejected += 1;
        }
        true
    }

    fn done(&mut self, m: &OutMsg) {
        self.bytes -= m.size();
    }

    /// The broker connection came up or went down. Going down, every message
    /// handed over but not confirmed waits again, in order; returns how many.
    pub fn set_connected(&mut self, up: bool) -> usize {
        self.connected = up;
        if up {
            return 0;
        }
        let mut back: Vec<OutMsg> = self.handed.drain(..).collect();
        back.extend(std::mem::take(&mut self.inflight).into_values());
        back.sort_by_key(|m| m.seq);
        let n = back.len();
        for m in back.into_iter().rev() {
            self.waiting.push_front(m);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(s: &mut Spool, n: u8, qos: u8) -> u64 {
        s.push(format!("t/{n}"), Bytes::from(vec![n]), qos, false)
    }

    fn hand_all(s: &mut Spool) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(m) = s.next_to_hand() {
            v.push(m.payload[0]);
        }
        v
    }

    #[test]
    fn nothing_is_handed_while_disconnected_and_the_window_bounds_the_rest() {
        let mut s = Spool::new(100, 1 << 20, 3);
        for i in 0..5 {
            push(&mut s, i, 1);
        }
        assert!(hand_all(&mut s).is_empty());
        s.set_connected(true);
        assert_eq!(hand_all(&mut s), [0, 1, 2]);
        s.written(1);
        s.written(2);
        assert!(s.confirmed(1, true));
        assert_eq!(hand_all(&mut s), [3]);
        assert_eq!((s.sent, s.len()), (1, 4));
    }

    #[test]
    fn a_disconnect_puts_unconfirmed_messages_back_in_order() {
        let mut s = Spool::new(100, 1 << 20, 10);
        s.set_connected(true);
        for i in 0..6 {
            push(&mut s, i, 1);
        }
        assert_eq!(hand_all(&mut s), [0, 1, 2, 3, 4, 5]);
        s.written(7); // 0
        s.written(8); // 1
        s.written(9); // 2
        assert!(s.confirmed(8, true)); // 1 is done, 0 and 2 are not
        push(&mut s, 6, 1);
        assert_eq!(s.set_connected(false), 5);
        s.set_connected(true);
        assert_eq!(hand_all(&mut s), [0, 2, 3, 4, 5, 6]);
        assert!(!s.confirmed(9, true), "old packet ids are forgotten");
    }

    #[test]
    fn qos0_is_done_once_written() {
        let mut s = Spool::new(10, 1 << 20, 10);
        s.set_connected(true);
        push(&mut s, 1, 0);
        hand_all(&mut s);
        s.written(0);
        assert!(s.is_empty());
        assert_eq!((s.sent, s.bytes()), (1, 0));
    }

    #[test]
    fn overflow_drops_the_oldest_waiting_message_and_counts_it() {
        let mut s = Spool::new(3, 1 << 20, 1);
        s.set_connected(true);
        push(&mut s, 0, 1);
        hand_all(&mut s); // 0 is handed and must survive
        push(&mut s, 1, 1);
        push(&mut s, 2, 1);
        assert_eq!(push(&mut s, 3, 1), 1);
        assert_eq!(s.dropped, 1);
        s.set_connected(false);
        s.set_connected(true);
        let mut order = Vec::new();
        while let Some(m) = s.next_to_hand() {
            order.push(m.payload[0]);
            s.written(0);
        }
        // written(0) on a QoS 1 message is treated as done, keeping the test short.
        assert_eq!(order, [0, 2, 3]);
    }

    #[test]
    fn byte_bound_holds_and_oversized_messages_are_dropped() {
        let mut s = Spool::new(100, 10, 10);
        assert_eq!(s.push("t".into(), Bytes::from(vec![0; 6]), 1, false), 0);
        assert_eq!(s.push("t".into(), Bytes::from(vec![0; 6]), 1, false), 1);
        assert_eq!(s.bytes(), 7);
        assert_eq!(s.push("t".into(), Bytes::from(vec![0; 20]), 1, false), 1);
        assert_eq!((s.len(), s.dropped), (1, 2));
    }

    #[test]
    fn broker_refusals_are_counted_apart() {
        let mut s = Spool::new(10, 1 << 20, 10);
        s.set_connected(true);
        push(&mut s, 1, 1);
        hand_all(&mut s);
        s.written(4);
        assert!(s.confirmed(4, false));
        assert_eq!((s.sent, s.rejected, s.len()), (0, 1, 0));
    }

    #[test]
    fn unhanded_message_keeps_its_place() {
        let mut s = Spool::new(10, 1 << 20, 10);
        s.set_connected(true);
        push(&mut s, 1, 1);
        push(&mut s, 2, 1);
        assert_eq!(s.next_to_hand().unwrap().payload[0], 1);
        s.unhand_last();
        assert_eq!(hand_all(&mut s), [1, 2]);
    }
}
