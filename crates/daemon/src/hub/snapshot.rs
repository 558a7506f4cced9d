//! A client's routing state as data, for a planned restart: the old hub
//! exports each client it hands over, the new one imports it under the
//! same id (docs/ARCHITECTURE.md, "Planned restart").

use serde::{Deserialize, Serialize};

use super::queue::{Kind, OutQueue};
use super::{mark_dirty, Credentials, Hub, Identity, Peer, PeerCounters, TransportKind};
use crate::hub::ClientId;

/// One client as the hub knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientSnapshot {
    pub id: ClientId,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub transport: String,
    pub patterns: Vec<String>,
    /// The frames queued for it, whole; `head_written` bytes of the first
    /// were written already.
    pub queued: Vec<u8>,
    #[serde(default)]
    pub head_written: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub dropped: u64,
    /// It asked for channel sequence numbers in DATA (absent from older
    /// states: false).
    #[serde(default)]
    pub wants_seq: bool,
    /// SUBSCRIBE flag RETAIN_AS_PUBLISHED was given (absent in states
    /// written before it existed: false).
    #[serde(default)]
    pub wants_retain_flag: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("client id {0} is taken")]
    IdTaken(ClientId),
    #[error("client {0}: its queued bytes are not whole frames")]
    Queue(ClientId),
    #[error("unknown transport '{0}'")]
    Transport(String),
    #[error("subscription '{pattern}': {text}")]
    Subscribe { pattern: String, text: String },
}

impl Hub {
    /// The next client id this hub hands out (carried over, so a new
    /// client never takes an id a handed-over one holds).
    pub fn next_client_id(&self) -> ClientId {
        self.next_id
    }

    pub fn set_next_client_id(&mut self, id: ClientId) {
        self.next_id = self.next_id.max(id).max(1);
    }

    pub fn export_client(&self, id: ClientId) -> Option<ClientSnapshot> {
        let p = self.peers.get(&id)?;
        let (queued, head_written) = p.out.export_raw();
        Some(ClientSnapshot {
            id,
            pid: p.ident.pid,
            uid: p.ident.uid,
            gid: p.ident.gid,
            groups: p.creds.groups.clone(),
            name: p.name.clone(),
            transport: p.transport.name().to_string(),
            patterns: p.patterns.iter().map(|p| p.as_str().to_string()).collect(),
            queued,
            head_written,
            messages_in: p.counters.messages_in,
            messages_out: p.counters.messages_out,
            dropped: p.counters.dropped,
            wants_seq: p.wants_seq,
            wants_retain_flag: p.wants_retain_flag,
        })
    }

    /// Take over a client from the previous hub under its id: its
    /// subscriptions are made again (the access policy and limits apply
    /// as to any subscription) and its queued bytes are queued first.
    pub fn import_client(&mut self, s: &ClientSnapshot) -> Result<(), ImportError> {
        if self.peers.contains_key(&s.id) || s.id == 0 {
            return Err(ImportError::IdTaken(s.id));
        }
        let transport = TransportKind::parse(&s.transport)
            .ok_or_else(|| ImportError::Transport(s.transport.clone()))?;
        let q = &self.cfg.queue;
        let mut out = OutQueue::new(q.max_messages, q.max_bytes);
        // Frame by frame (a message transport writes one per message),
        // as control frames: they never count against (or wait for) the
        // queue's limits.
        let mut rest = &s.queued[..];
        while !rest.is_empty() {
            let len = match crate::wire::frame::decode_header(rest, u32::MAX) {
                Ok(Some(h)) if h.frame_len() <= rest.len() => h.frame_len(),
                _ => return Err(ImportError::Queue(s.id)),
            };
            out.push(Kind::Control, &[&rest[..len]]);
            rest = &rest[len..];
        }
        if !out.set_head_written(s.head_written) {
            return Err(ImportError::Queue(s.id));
        }
        let ident = Identity {
            pid: s.pid,
            uid: s.uid,
            gid: s.gid,
        };
        self.peers.insert(
            s.id,
            Peer {
                ident,
                creds: Credentials {
                    uid: s.uid,
                    gid: s.gid,
                    groups: s.groups.clone(),
                },
                internal: false,
                ring_endpoint: false,
                accounted: 0,
                transport,
                name: s.name.chars().take(64).collect(),
                patterns: Vec::new(),
                out,
                blocked: None,
                holding: Vec::new(),
                dirty: false,
                greeted: true,
                counters: PeerCounters {
                    messages_in: s.messages_in,
                    messages_out: s.messages_out,
                    dropped: s.dropped,
                    // Byte counters start again at a planned restart.
                    ..PeerCounters::default()
                },
                max_frame: None,
                told_too_big: false,
                wants_seq: s.wants_seq,
                wants_retain_flag: s.wants_retain_flag,
            },
        );
        self.set_next_client_id(s.id.wrapping_add(1));
        for pattern in &s.patterns {
            if let Err((_, text)) = self.subscribe(s.id, pattern) {
                self.remove(s.id);
                return Err(ImportError::Subscribe {
                    pattern: pattern.clone(),
                    text,
                });
            }
        }
        let p = self.peers.get_mut(&s.id).expect("just inserted");
        if !p.out.is_empty() {
            mark_dirty(&mut self.dirty, s.id, p);
        }
        Ok(())
    }
}
