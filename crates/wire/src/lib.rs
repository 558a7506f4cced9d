//! The wire format: frames and channel names, pure and I/O-free.
//!
//! Everything a client in any language needs to speak to the hub is defined
//! here (frames, channel names, the transport names of HELLO, the replay of
//! SUBSCRIBE, the statistics schema) and documented in `docs/PROTOCOL.md` (condensed in `ipchub-protocol(7)`).
//! Nothing in this module performs I/O or allocates from an untrusted length
//! before checking it against a limit, so it can be property-tested and fuzzed.

#![forbid(unsafe_code)]

pub mod channel;
pub mod frame;
pub mod kind;
pub mod replay;
pub mod stats;

pub use channel::{ChannelError, Pattern};
pub use frame::{
    decode, encode, encode_header, DecodeError, ErrorCode, Frame, FrameType, Header, ACK_REQUESTED,
    CHANNEL_SEQ, HEADER_LEN, MAGIC, REPLAY, RETAIN, RETAIN_AS_PUBLISHED, VERSION, WITH_RETAINED,
};
pub use kind::TransportKind;
pub use replay::Replay;

/// Role bits of OPEN_RING (PROTOCOL.md §6.2): read the channel's ring.
pub const RING_READ: u8 = 1;
/// Role bits of OPEN_RING: write into the channel's ring.
pub const RING_WRITE: u8 = 2;
