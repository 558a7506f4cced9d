//! The wire format: frames and channel names, pure and I/O-free.
//!
//! Everything a client in any language needs to speak to the hub is defined
//! here and documented in `docs/PROTOCOL.md` (condensed in `ipchub-protocol(7)`).
//! Nothing in this module performs I/O or allocates from an untrusted length
//! before checking it against a limit, so it can be property-tested and fuzzed.

pub mod channel;
pub mod frame;

pub use channel::{ChannelError, Pattern};
pub use frame::{
    decode, encode, encode_header, DecodeError, ErrorCode, Frame, FrameType, Header, ACK_REQUESTED,
    CHANNEL_SEQ, HEADER_LEN, MAGIC, REPLAY, RETAIN, VERSION, WITH_RETAINED,
};
