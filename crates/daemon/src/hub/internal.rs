//! Publishing as the hub itself (D-Bus `Publish`), through the same path as
//! any client so policies and counters stay exactly the same.

use std::time::Instant;

use super::*;

impl Hub {
    /// Publish as the hub itself (D-Bus `Publish`): origin 0, never pauses.
    /// Under `block`, a full subscriber queue makes the whole publish fail
    /// rather than lose the message silently.
    pub fn publish_internal(
        &mut self,
        channel: &str,
        payload: &[u8],
        priority: u8,
    ) -> Result<u32, String> {
        if payload.len() > self.cfg.hub.max_message_size as usize {
            return Err(format!(
                "message of {} bytes exceeds hub.max_message_size ({})",
                payload.len(),
                self.cfg.hub.max_message_size
            ));
        }
        let mut buf = Vec::with_capacity(crate::wire::HEADER_LEN + channel.len() + payload.len());
        crate::wire::encode(
            &mut buf,
            FrameType::Publish,
            ACK_REQUESTED,
            priority.min(MAX_PRIORITY),
            channel,
            payload,
            0,
            0,
        );
        let (frame, _) = crate::wire::decode(&buf, u32::MAX)
            .map_err(|e| e.to_string())?
            .ok_or("channel name too long")?;
        // Route through the ordinary path with a transient internal peer, so
        // policies, counters and statistics are exactly those of any client.
        let id = self.admit_internal();
        let step = self.publish(id, &frame, Instant::now());
        // A disk channel answers once its record is written.
        self.flush_store();
        let peer = self.peers.remove(&id).expect("just admitted");
        for h in &peer.holding {
            self.resume(*h);
        }
        if step == Step::Pause {
            if let Some((on, _)) = peer.blocked {
                if let Some(holder) = self.peers.get_mut(&on) {
                    holder.holding.retain(|h| *h != id);
                }
            }
            return Err(
                "a subscriber's queue is full (overflow = \"block\"); try again later".into(),
            );
        }
        let mut answer = Vec::new();
        let (a, b) = peer.out.as_slices();
        answer.extend_from_slice(a);
        answer.extend_from_slice(b);
        match crate::wire::decode(&answer, u32::MAX) {
            Ok(Some((f, _))) if f.header.ty == FrameType::Ack => Ok(f
                .payload
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))),
            Ok(Some((f, _))) if f.header.ty == FrameType::Error => {
                Err(crate::wire::frame::parse_error_payload(f.payload).1)
            }
            _ => Err("internal error: no answer to publish".into()),
        }
    }

    pub(super) fn admit_internal(&mut self) -> ClientId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.peers.insert(
            id,
            Peer {
                ident: Identity {
                    pid: std::process::id() as i32,
                    uid: nix::unistd::geteuid().as_raw(),
                    gid: 0,
                },
                // The hub's own publishes (D-Bus Publish) were authorised by
                // the D-Bus policy; the channel policy is for clients.
                creds: Credentials::default(),
                internal: true,
                ring_endpoint: false,
                accounted: 0,
                transport: TransportKind::Socket,
                name: "hub".into(),
                patterns: Vec::new(),
                out: OutQueue::new(usize::MAX, usize::MAX),
                blocked: None,
                holding: Vec::new(),
                // Already "dirty" so it never enters the flush list: its
                // answer is read back directly by `publish_internal`.
                dirty: true,
                greeted: false,
                counters: PeerCounters::default(),
                wants_seq: false,
                wants_retain_flag: false,
                max_frame: None,
                told_too_big: false,
            },
        );
        id
    }
}
