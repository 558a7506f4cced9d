//! Why a connection ends: one value per cause, so the loop decides how to
//! close (flush the explanation or not, which log line) by matching on the
//! cause, never on its wording. [`Display`](std::fmt::Display) gives the
//! exact text the log lines and ERROR frames have always carried; users and
//! tests match those texts, so they do not change.

use std::fmt;
use std::io;

/// Why the loop closes a client.
#[derive(Debug)]
pub enum CloseReason {
    /// The peer closed its end with nothing left unread.
    Disconnected,
    /// The peer closed its end in the middle of a frame.
    MidFrame {
        /// Bytes of the incomplete frame thrown away.
        discarded: usize,
    },
    /// Reading from the client failed (a reset, say).
    Read(io::Error),
    /// Writing to the client failed (a broken pipe, say).
    Write(io::Error),
    /// The client sent something that is not a frame (the decoder's or the
    /// message transport's wording).
    Malformed(String),
    /// A frame the hub refused to handle (`Step::Close`).
    ProtocolViolation,
    /// The handshake was refused (the text the client got in its ERROR).
    Refused(String),
    /// WELCOME could not be sent.
    SendWelcome(io::Error),
    /// The chosen data path could not be registered for readiness.
    RegisterData(io::Error),
    /// No HELLO within `hub.handshake_timeout_ms`.
    HandshakeTimeout {
        /// The timeout in force, in milliseconds.
        ms: u64,
    },
    /// The hub condemned the client (slow consumer, access revoked by a
    /// reload): its own wording, already sent in an ERROR.
    Condemned(String),
    /// `DisconnectClient` from D-Bus or a control thread.
    Administrator,
    /// The answer to OPEN_RING could not be sent.
    RingAnswer(io::Error),
}

impl CloseReason {
    /// The other end is gone (or unusable): nothing can be flushed to it any
    /// more, and its going is routine, not a complaint.
    pub fn peer_gone(&self) -> bool {
        matches!(
            self,
            CloseReason::Disconnected | CloseReason::Read(_) | CloseReason::Write(_)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Disconnected => f.write_str("disconnected"),
            CloseReason::MidFrame { discarded } => write!(
                f,
                "disconnected mid-frame ({discarded} bytes of an incomplete frame discarded)"
            ),
            CloseReason::Read(e) => write!(f, "read error: {e}"),
            CloseReason::Write(e) => write!(f, "write error: {e}"),
            CloseReason::Malformed(e) => write!(f, "malformed input: {e}"),
            CloseReason::ProtocolViolation => f.write_str("protocol violation"),
            CloseReason::Refused(text) | CloseReason::Condemned(text) => f.write_str(text),
            CloseReason::SendWelcome(e) => write!(f, "cannot send WELCOME: {e}"),
            CloseReason::RegisterData(e) => write!(f, "cannot register data path: {e}"),
            CloseReason::HandshakeTimeout { ms } => write!(
                f,
                "no HELLO within {ms} ms of connecting (hub.handshake_timeout_ms)"
            ),
            CloseReason::Administrator => f.write_str("disconnected by the administrator"),
            CloseReason::RingAnswer(e) => write!(f, "cannot answer OPEN_RING: {e}"),
        }
    }
}

/// A stream that ended: cleanly, or with `buffered` bytes of a frame.
pub fn ended(buffered: usize) -> CloseReason {
    if buffered == 0 {
        CloseReason::Disconnected
    } else {
        CloseReason::MidFrame {
            discarded: buffered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are part of the interface (logs, ERROR frames, tests).
    #[test]
    fn texts_are_unchanged() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        let cases: Vec<(CloseReason, String)> = vec![
            (CloseReason::Disconnected, "disconnected".into()),
            (
                ended(7),
                "disconnected mid-frame (7 bytes of an incomplete frame discarded)".into(),
            ),
            (CloseReason::Read(pipe()), format!("read error: {}", pipe())),
            (
                CloseReason::Write(pipe()),
                format!("write error: {}", pipe()),
            ),
            (
                CloseReason::Malformed("bad".into()),
                "malformed input: bad".into(),
            ),
            (CloseReason::ProtocolViolation, "protocol violation".into()),
            (CloseReason::Refused("no".into()), "no".into()),
            (
                CloseReason::SendWelcome(pipe()),
                format!("cannot send WELCOME: {}", pipe()),
            ),
            (
                CloseReason::RegisterData(pipe()),
                format!("cannot register data path: {}", pipe()),
            ),
            (
                CloseReason::HandshakeTimeout { ms: 5000 },
                "no HELLO within 5000 ms of connecting (hub.handshake_timeout_ms)".into(),
            ),
            (CloseReason::Condemned("slow".into()), "slow".into()),
            (
                CloseReason::Administrator,
                "disconnected by the administrator".into(),
            ),
            (
                CloseReason::RingAnswer(pipe()),
                format!("cannot answer OPEN_RING: {}", pipe()),
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
        assert!(ended(0).peer_gone());
        assert!(!ended(1).peer_gone());
        assert!(CloseReason::Write(pipe()).peer_gone());
        assert!(!CloseReason::ProtocolViolation.peer_gone());
    }
}
