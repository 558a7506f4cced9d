//! Channel rings on the client side (shm transport): an exact subscription
//! reads the channel's broadcast ring, a publish writes it, with no hub in
//! between. The hub hands a ring out once per channel (OPEN_RING, answered on
//! the control socket with the memfd and its eventfd); a channel the hub
//! will not give a ring for is remembered and goes the ordinary way.
//!
//! Records are DATA frames, so what a ring yields joins the same input
//! buffer as the hub's frames; a gap (drop-oldest overwrote records we had
//! not read) becomes a MISSED frame in its place.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use super::{link, Client, ClientError, Event, PublishOptions};
use crate::shm::bring::{BRing, Cursor, Push, ReadEvent};
use crate::shm::{Notifier, RingError};
use crate::transport::bring::record_ok;
use crate::wire::{self, ErrorCode, FrameType};
use crate::wire::{RING_READ, RING_WRITE};

/// Most bytes read from one ring per call, so one busy channel cannot
/// starve the others or grow the input buffer without bound.
const READ_BUDGET: usize = 256 * 1024;
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a publisher waiting for a ring's lock looks again, once
/// spinning did not get it.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(1);

pub(super) struct ClientRing {
    channel: String,
    ring: BRing,
    /// The hub's eventfd: written when someone sleeps (see `shm::bring`).
    hub: Notifier,
    slot: usize,
    roles: u8,
    cursor: Option<Cursor>,
    /// We found it corrupt: read it no more, write through the hub, and
    /// wait for the hub to retire it.
    broken: bool,
    /// The hub retired it (an unsolicited RING): forgotten at the next
    /// safe point (`sweep`).
    retired: bool,
}

#[derive(Default)]
pub(super) struct Rings {
    /// False: never ask for a ring (`Client::set_channel_rings(false)`).
    pub(super) enabled: bool,
    /// The application turned rings off: kept across reconnections.
    user_off: bool,
    /// The hub offered channel rings in WELCOME.
    offered: bool,
    list: Vec<ClientRing>,
    /// Channels the hub relays: no ring to ask for again.
    refused: HashSet<String>,
    /// Index of the ring found last.
    last: std::cell::Cell<usize>,
    /// Reused buffer for what the rings yield.
    scratch: Vec<u8>,
    /// The last channel name a publish validated: a publisher usually
    /// sticks to one channel, and validating it on every publish was about
    /// a third of a relayed publisher's CPU (issue #15's profile).
    validated: String,
}

fn ring_io(e: RingError) -> ClientError {
    match e {
        RingError::Io(e) => ClientError::Io(e),
        other => ClientError::Protocol(format!("channel ring: {other}")),
    }
}

impl Rings {
    pub(super) fn new(offered: bool) -> Rings {
        Rings {
            enabled: offered,
            offered,
            ..Rings::default()
        }
    }

    /// Fresh state for a new connection to a hub that does (or does not)
    /// offer rings: the old hub's rings are gone with it, the
    /// application's choice stays.
    pub(super) fn renewed(&self, offered: bool) -> Rings {
        Rings {
            enabled: offered && !self.user_off,
            offered,
            user_off: self.user_off,
            ..Rings::default()
        }
    }

    /// Check `channel` as a publish target: a channel whose ring we write
    /// was validated when the ring was opened, and the last one validated
    /// here is remembered, so the scan runs once per change of channel.
    pub(super) fn check_publish_channel(
        &mut self,
        channel: &str,
    ) -> Result<(), crate::wire::channel::ChannelError> {
        if self.validated == channel || self.writer_for(channel) {
            return Ok(());
        }
        crate::wire::channel::validate_name(channel)?;
        self.validated.clear();
        self.validated.push_str(channel);
        Ok(())
    }

    fn find(&self, channel: &str) -> Option<usize> {
        // A publisher usually sticks to one channel: try the last one first.
        let last = self.last.get();
        if self
            .list
            .get(last)
            .is_some_and(|r| r.channel == channel && !r.retired)
        {
            return Some(last);
        }
        let i = self
            .list
            .iter()
            .position(|r| r.channel == channel && !r.retired)?;
        self.last.set(i);
        Some(i)
    }

    /// The ring we write `channel` through, if it is open for writing
    /// (the channel name was validated when it was opened).
    pub(super) fn writer_for(&self, channel: &str) -> bool {
        self.find(channel)
            .is_some_and(|i| self.list[i].roles & RING_WRITE != 0 && !self.list[i].broken)
    }

    /// The hub retired `channel`'s ring (PROTOCOL.md §6.2): stop using it.
    /// If we read it, what it still holds for us comes first (returned, as
    /// frames), then the hub relays the channel to us as to any subscriber;
    /// a publish asks for a fresh ring.
    pub(super) fn retire(&mut self, channel: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self
            .list
            .iter_mut()
            .filter(|r| r.channel == channel && !r.retired)
        {
            r.retired = true;
            let Some(mut cur) = r.cursor.take() else {
                continue;
            };
            // Bounded: nobody correct writes a retired ring any more.
            for _ in 0..16 {
                if !r.ring.has_data(&cur) {
                    break;
                }
                let mut bad = false;
                let res = r
                    .ring
                    .read_batch(&mut cur, &mut out, READ_BUDGET, |buf, ev| {
                        bad |= !ring_event(buf, ev, channel)
                    });
                if res.is_err() || bad {
                    if res.is_err() {
                        missed_frame(&mut out, 1);
                    }
                    break;
                }
            }
        }
        out
    }

    /// Forget retired rings (only where no index into `list` is held).
    fn sweep(&mut self) {
        if self.list.iter().any(|r| r.retired) {
            self.list.retain(|r| !r.retired);
            self.last.set(0);
        }
    }
}

impl Client {
    /// Use channel rings (shm transport only; on by default when the hub
    /// offers them, `channel_rings=1` in WELCOME). Off, every message goes
    /// through the hub as on other transports; rings already open stay in
    /// use, so call it before subscribing and publishing. On other
    /// transports it changes nothing.
    pub fn set_channel_rings(&mut self, on: bool) {
        self.rings.enabled = on && self.rings.offered;
        self.rings.user_off = !on;
    }

    // The *_for_test hooks below are hidden, not private, only because the
    // root package's integration tests (tests/channel_rings.rs,
    // tests/ring_attacks.rs) play a broken or hostile ring participant.

    /// Take `channel`'s ring lock and keep it, as a publisher that dies in
    /// the middle of a message would: for tests of the hub's recovery.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn hold_ring_lock_for_test(&self, channel: &str) -> bool {
        self.rings
            .find(channel)
            .is_some_and(|i| self.rings.list[i].ring.hold_lock(u64::from(self.id)))
    }

    /// Write garbage into `channel`'s ring, as a broken participant could:
    /// for tests of how the hub and the other participants cope.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn scribble_ring_for_test(&self, channel: &str) -> bool {
        self.rings
            .find(channel)
            .map(|i| self.rings.list[i].ring.scribble())
            .is_some()
    }

    /// Read a word of `channel`'s ring header or slots (byte offset as in
    /// PROTOCOL.md §6.2): for tests that play a hostile participant.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn peek_ring_for_test(&self, channel: &str, off: usize) -> Option<u64> {
        self.rings
            .find(channel)
            .map(|i| self.rings.list[i].ring.peek(off))
    }

    /// Write a word of `channel`'s ring header or slots, as any participant
    /// can: for tests of what the hub and the other participants survive.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn poke_ring_for_test(&self, channel: &str, off: usize, v: u64) -> bool {
        self.rings
            .find(channel)
            .map(|i| self.rings.list[i].ring.poke(off, v))
            .is_some()
    }

    /// Write `record` into `channel`'s ring as one record, whatever it
    /// holds, as a hostile writer could: for tests of the readers' checks.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn write_ring_record_for_test(&self, channel: &str, record: &[u8]) -> bool {
        let Some(i) = self.rings.find(channel) else {
            return false;
        };
        let r = &self.rings.list[i];
        for _ in 0..100_000 {
            match r.ring.try_push(u64::from(self.id), &[record]) {
                Ok(Push::Written { .. }) => {
                    let _ = r.hub.notify();
                    return true;
                }
                Ok(Push::Busy | Push::Full) => std::thread::yield_now(),
                Err(_) => return false,
            }
        }
        false
    }

    fn ring_candidate(&self, channel: &str) -> bool {
        self.transport == crate::wire::TransportKind::Shm
            && self.rings.enabled
            && !self.rings.refused.contains(channel)
    }

    /// Ask the hub for `roles` on `channel`'s ring. Ok(false): the hub relays
    /// this channel; use SUBSCRIBE/PUBLISH.
    fn open_ring(&mut self, channel: &str, roles: u8) -> Result<bool, ClientError> {
        self.rings.sweep();
        // Everything queued goes first: the hub must have routed our earlier
        // publishes on this channel before we write to its ring.
        self.flush()?;
        let seq = self.next_seq();
        self.queue_frame(FrameType::OpenRing, 0, 0, channel, &[roles], seq);
        self.flush()?;
        let ctrl = self
            .ctrl
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no control socket".into()))?;
        use std::os::fd::AsFd;
        let answer = link::recv_frame(ctrl.as_fd(), ANSWER_TIMEOUT, "OPEN_RING");
        let (ty, payload, fds) = match answer {
            Err(ClientError::Refused { code, .. }) if code == ErrorCode::RingUnavailable as u16 => {
                self.rings.refused.insert(channel.to_string());
                return Ok(false);
            }
            other => other?,
        };
        if ty != FrameType::Ring || payload.len() != 5 {
            return Err(ClientError::Protocol(format!(
                "expected RING for OPEN_RING, got {ty:?}"
            )));
        }
        let slot = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
        if roles == 0 {
            if let Some(i) = self.rings.find(channel) {
                self.rings.list.remove(i);
            }
            return Ok(true);
        }
        if slot >= crate::shm::bring::MAX_SLOTS {
            return Err(ClientError::Protocol(format!("RING names slot {slot}")));
        }
        let i = match self.rings.find(channel) {
            Some(i) => i,
            None => {
                let [memfd, hub]: [std::os::fd::OwnedFd; 2] =
                    fds.try_into().map_err(|v: Vec<std::os::fd::OwnedFd>| {
                        ClientError::Protocol(format!(
                            "RING came with {} descriptors, not 2",
                            v.len()
                        ))
                    })?;
                let ring = BRing::open(&memfd).map_err(ring_io)?;
                let hub = Notifier::from_fd(hub)?;
                self.rings.list.push(ClientRing {
                    channel: channel.to_string(),
                    ring,
                    hub,
                    slot,
                    roles: 0,
                    cursor: None,
                    broken: false,
                    retired: false,
                });
                self.rings.list.len() - 1
            }
        };
        let r = &mut self.rings.list[i];
        if r.slot != slot {
            return Err(ClientError::Protocol("RING moved our slot".into()));
        }
        // The hub attached our cursor at the ring's end when reading was
        // asked for; ours starts there too.
        if roles & RING_READ != 0 && r.roles & RING_READ == 0 {
            r.cursor = Some(r.ring.join(slot).map_err(ring_io)?);
        }
        if roles & RING_READ == 0 {
            r.cursor = None;
        }
        r.roles = roles;
        Ok(true)
    }

    /// SUBSCRIBE to an exact channel through its ring. Ok(false): not possible.
    pub(super) fn ring_subscribe(&mut self, channel: &str) -> Result<bool, ClientError> {
        if !self.ring_candidate(channel) {
            return Ok(false);
        }
        self.rings.sweep();
        let roles = self
            .rings
            .find(channel)
            .map_or(0, |i| self.rings.list[i].roles);
        if roles & RING_READ != 0 {
            return Ok(true);
        }
        self.open_ring(channel, roles | RING_READ)
    }

    /// Ok(true) when `channel` was read through its ring and no longer is.
    pub(super) fn ring_unsubscribe(&mut self, channel: &str) -> Result<bool, ClientError> {
        self.rings.sweep();
        let Some(i) = self.rings.find(channel) else {
            return Ok(false);
        };
        let roles = self.rings.list[i].roles;
        if roles & RING_READ == 0 {
            return Ok(false);
        }
        self.open_ring(channel, roles & !RING_READ)?;
        Ok(true)
    }

    /// Publish through the channel's ring if it has one for us. Ok(false):
    /// go through the hub.
    pub(super) fn ring_publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: PublishOptions,
        seq: u64,
    ) -> Result<bool, ClientError> {
        self.rings.sweep();
        let i = match self.rings.find(channel) {
            // Broken: the hub writes for us until it retires the ring.
            Some(i) if self.rings.list[i].broken => return Ok(false),
            Some(i) if self.rings.list[i].roles & RING_WRITE != 0 => i,
            _ if !self.ring_candidate(channel) => return Ok(false),
            found => {
                let roles = found.map_or(0, |i| self.rings.list[i].roles);
                if !self.open_ring(channel, roles | RING_WRITE)? {
                    return Ok(false);
                }
                self.rings.find(channel).expect("just opened")
            }
        };
        let len = wire::HEADER_LEN + channel.len() + payload.len();
        let max = self.rings.list[i].ring.max_record();
        if len > max {
            return Err(ClientError::TooLargeForTransport {
                len: payload.len(),
                max: max.saturating_sub(len - payload.len()),
                transport: "shared memory channel ring",
                channel: channel.to_string(),
            });
        }
        let header = wire::encode_header(
            FrameType::Data,
            0,
            opts.priority,
            channel.len(),
            payload.len(),
            self.id,
            seq,
        );
        let token = u64::from(self.id);
        let mut spins = 0u32;
        loop {
            let r = &self.rings.list[i];
            if r.retired || r.broken {
                // Retired (or found corrupt) while we waited: the hub
                // takes this message.
                return Ok(false);
            }
            let pushed = match r
                .ring
                .try_push(token, &[&header, channel.as_bytes(), payload])
            {
                Err(RingError::Corrupt(_)) => {
                    // Retired, or another participant broke it: tell the
                    // hub, which retires it (if it has not yet).
                    r.ring.report_corrupt();
                    r.hub.notify()?;
                    self.rings.list[i].broken = true;
                    return Ok(false);
                }
                other => other.map_err(ring_io)?,
            };
            match pushed {
                Push::Written { wake_hub, .. } => {
                    if wake_hub {
                        r.hub.notify()?;
                    }
                    break;
                }
                Push::Busy => {
                    // Another publisher is copying a message in: usually
                    // microseconds. A holder that stopped (or died) is the
                    // hub's to deal with: tell it once, then poll gently
                    // and notice if the hub disconnects us meanwhile.
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else if spins < 1024 {
                        std::thread::yield_now();
                    } else {
                        if spins == 1024 {
                            r.hub.notify()?;
                        }
                        self.check_open()?;
                        match self.wait_io(Some(Instant::now() + LOCK_POLL), false) {
                            Ok(()) | Err(ClientError::Timeout) => {}
                            Err(e) => return Err(e),
                        }
                        self.read_available()?;
                    }
                }
                Push::Full => {
                    // Under `block`: our own cursor may be the slow one.
                    // Read everything this ring holds for us (the budget of
                    // one read is less than the space a writer waits for).
                    loop {
                        self.read_available()?;
                        let r = &self.rings.list[i];
                        if r.cursor.as_ref().is_none_or(|c| !r.ring.has_data(c)) {
                            break;
                        }
                    }
                    if self.rings.list[i].retired || self.rings.list[i].broken {
                        continue;
                    }
                    // Reset our eventfd before arming the wait, so the
                    // hub's wake-up that follows is kept.
                    if !self.link.prepare_sleep()? {
                        continue;
                    }
                    let r = &self.rings.list[i];
                    if r.ring.prepare_wait_space(r.slot, len) {
                        // Tell the hub we wait: it wakes us, and times out a
                        // reader that never frees the space.
                        r.hub.notify()?;
                        self.check_open()?;
                        self.wait_io(None, false)?;
                        self.read_available()?;
                    }
                }
            }
        }
        if opts.ack {
            let delivered = self.rings.list[i].ring.audience();
            self.events.push_back(Event::Ack { seq, delivered });
        }
        Ok(true)
    }

    /// Turn what the rings hold into events.
    pub(super) fn read_rings(&mut self) -> Result<(), ClientError> {
        let mut buf = std::mem::take(&mut self.rings.scratch);
        let res = self.read_rings_into(&mut buf);
        ring_frames_to_events(&buf, &mut self.events, &mut self.recv_buffers.spare);
        buf.clear();
        self.rings.scratch = buf;
        res
    }

    /// Copy what the rings hold into `out`, as DATA and MISSED frames.
    fn read_rings_into(&mut self, out: &mut Vec<u8>) -> Result<(), ClientError> {
        for r in &mut self.rings.list {
            let Some(cur) = r.cursor.as_mut() else {
                continue;
            };
            let channel = &r.channel;
            let mut bad = false;
            let res = r.ring.read_batch(cur, out, READ_BUDGET, |buf, ev| {
                bad |= !ring_event(buf, ev, channel)
            });
            let b = match res {
                Err(RingError::Corrupt(_)) => None,
                other => Some(other.map_err(ring_io)?),
            };
            if bad || b.is_none() {
                // A participant wrote what no correct writer writes: say
                // something was lost, stop reading, and report it to the
                // hub, which retires the ring and relays the channel to us.
                if b.is_none() {
                    missed_frame(out, 1);
                }
                r.cursor = None;
                r.broken = true;
                r.ring.report_corrupt();
                r.hub.notify()?;
                continue;
            }
            if b.is_some_and(|b| b.wake_hub) {
                r.hub.notify()?;
            }
        }
        Ok(())
    }

    /// Busy-polling: spin up to `spin` watching the rings we read (no
    /// syscall). True: one has data.
    pub(super) fn spin_for_rings(&self, spin: std::time::Duration) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            let ready = self
                .rings
                .list
                .iter()
                .any(|r| r.cursor.as_ref().is_some_and(|cur| r.ring.has_data(cur)));
            if ready {
                return true;
            }
            if t0.elapsed() >= spin {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Before sleeping: tell each ring we wait. False: one has data already.
    pub(super) fn arm_rings(&self) -> bool {
        self.rings.list.iter().all(|r| {
            r.cursor
                .as_ref()
                .is_none_or(|cur| r.ring.prepare_wait_data(cur))
        })
    }
}

/// Handle one event of a ring read into `buf`: a gap becomes a MISSED
/// frame; a record that is not one DATA frame on `channel` is replaced by
/// MISSED(1). False for such a record.
fn ring_event(buf: &mut Vec<u8>, ev: ReadEvent, channel: &str) -> bool {
    match ev {
        ReadEvent::Gap(n) => {
            missed_frame(buf, n);
            true
        }
        ReadEvent::Record { start, .. } => {
            if record_ok(&buf[start..], channel) {
                return true;
            }
            buf.truncate(start);
            missed_frame(buf, 1);
            false
        }
    }
}

/// DATA and MISSED frames (what rings yield) as events.
pub(super) fn ring_frames_to_events(
    mut buf: &[u8],
    events: &mut VecDeque<Event>,
    spare: &mut Vec<super::Message>,
) {
    while let Ok(Some((f, used))) = wire::decode(buf, u32::MAX) {
        match f.header.ty {
            FrameType::Data => events.push_back(Event::Message(super::message_from(
                spare, &f, f.payload, false, None,
            ))),
            FrameType::Missed => {
                let n = f
                    .payload
                    .get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                events.push_back(Event::Missed(n));
            }
            _ => {}
        }
        buf = &buf[used..];
    }
}

fn missed_frame(buf: &mut Vec<u8>, n: u64) {
    wire::encode(buf, FrameType::Missed, 0, 0, "", &n.to_le_bytes(), 0, 0);
}
