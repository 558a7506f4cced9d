//! Frame encoding and the pure, bounded frame decoder.
//!
//! Layout (all integers little-endian), 24-byte header then two bodies:
//!
//! ```text
//!  0  magic        2 bytes  "IH"
//!  2  version      u8       1
//!  3  type         u8       FrameType
//!  4  flags        u8       bit 0 ACK_REQUESTED (PUBLISH), bit 1 RETAIN (PUBLISH,
//!                           DATA), bit 2 WITH_RETAINED (SUBSCRIBE), bit 3
//!                           CHANNEL_SEQ (SUBSCRIBE, DATA), bit 4 REPLAY
//!                           (SUBSCRIBE); others 0
//!  5  priority     u8       0..=31, POSIX mqueue priority, carried end to end
//!  6  channel_len  u16      <= 255
//!  8  payload_len  u32      <= the hub's max message size
//! 12  origin       u32      DATA: id of the publishing client; else 0
//! 16  seq          u64      request/publish sequence chosen by the sender
//! 24  channel      channel_len bytes, UTF-8
//!     payload      payload_len bytes, opaque (NUL bytes are fine)
//! ```
//!
//! The decoder never trusts a length: it checks both lengths against their
//! limits before asking for more bytes, so a hostile `payload_len` cannot make
//! a reader allocate or wait for 4 GiB.

use super::channel::MAX_CHANNEL_LEN;

pub const MAGIC: [u8; 2] = *b"IH";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// PUBLISH flag: the hub answers with an ACK carrying the delivery count.
pub const ACK_REQUESTED: u8 = 0x01;
/// PUBLISH flag: keep this message as the channel's retained value (an
/// empty payload clears it). On DATA: this is the retained value, sent on
/// subscribing, not a live message.
pub const RETAIN: u8 = 0x02;
/// SUBSCRIBE flag: send me the retained values of the channels the pattern
/// matches. Opt-in, so that clients written before retained messages never
/// see a DATA flag they do not know.
pub const WITH_RETAINED: u8 = 0x04;
/// SUBSCRIBE flag: prefix the DATA payloads of channels with history with
/// their channel sequence number, for this client (from now on). On DATA:
/// the payload starts with that number, a u64 (little-endian).
pub const CHANNEL_SEQ: u8 = 0x08;
/// SUBSCRIBE flag: the payload is a replay request (`last=N`,
/// `since_ms=T`, `from_seq=S`). Without it the payload means nothing, as
/// it always did.
pub const REPLAY: u8 = 0x10;
/// SUBSCRIBE flag: mark live messages that were published retained with
/// RETAIN on DATA too, for this client (from now on), as MQTT 5's "retain
/// as published". Without it RETAIN on DATA means only "the stored value,
/// sent on subscribing". A bridge needs it to pass retained values on.
pub const RETAIN_AS_PUBLISHED: u8 = 0x20;
const KNOWN_FLAGS: u8 =
    ACK_REQUESTED | RETAIN | WITH_RETAINED | CHANNEL_SEQ | REPLAY | RETAIN_AS_PUBLISHED;
/// Highest priority POSIX guarantees (`MQ_PRIO_MAX` is at least 32).
pub const MAX_PRIORITY: u8 = 31;

/// Every frame type of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// client → hub, first frame: `key=value` lines (version, transport, name).
    Hello = 1,
    /// hub → client, answer to HELLO: `key=value` lines (client, max_message, …).
    Welcome = 2,
    /// client → hub: subscribe to the pattern in `channel`; answered by ACK/ERROR with the same seq.
    Subscribe = 3,
    /// client → hub: drop a subscription; answered by ACK/ERROR.
    Unsubscribe = 4,
    /// client → hub: publish `payload` on `channel`.
    Publish = 5,
    /// hub → client: a message on `channel` from client `origin` with the publisher's `seq`.
    Data = 6,
    /// hub → client: request `seq` succeeded; for PUBLISH the payload is the u32 delivery count.
    Ack = 7,
    /// hub → client: request `seq` failed (0 = not tied to a request); payload u16 code + UTF-8 text.
    Error = 8,
    /// hub → subscriber: u64 count of messages this subscriber lost to `drop-oldest`.
    Missed = 9,
    /// hub → client: the hub is going away; payload is the reason.
    Bye = 10,
    /// client → hub: statistics request; answered by STATS_REPLY.
    StatsRequest = 11,
    /// hub → client: JSON statistics document.
    StatsReply = 12,
    /// either way: liveness probe, answered by PONG with the same seq.
    Ping = 13,
    Pong = 14,
    /// shm client → hub: read and/or write `channel` through its broadcast
    /// ring; payload u8 roles (bit 0 read, bit 1 write; 0 = leave the ring).
    /// Answered on the control socket by RING or ERROR with the same seq.
    OpenRing = 15,
    /// hub → shm client, on the control socket: payload u32 slot + u8 roles;
    /// the first RING for a channel carries two descriptors (SCM_RIGHTS): the
    /// ring's memfd and the hub's eventfd.
    Ring = 16,
}

impl FrameType {
    pub fn from_u8(v: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            3 => Subscribe,
            4 => Unsubscribe,
            5 => Publish,
            6 => Data,
            7 => Ack,
            8 => Error,
            9 => Missed,
            10 => Bye,
            11 => StatsRequest,
            12 => StatsReply,
            13 => Ping,
            14 => Pong,
            15 => OpenRing,
            16 => Ring,
            _ => return None,
        })
    }
}

/// Codes carried in ERROR frames (first two payload bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    Malformed = 1,
    UnsupportedVersion = 2,
    UnknownType = 3,
    TooLarge = 4,
    BadChannel = 5,
    NotPermitted = 6,
    LimitReached = 7,
    BadHandshake = 8,
    SlowConsumer = 9,
    Internal = 10,
    UnknownTransport = 11,
    NotSubscribed = 12,
    /// OPEN_RING: this channel has no broadcast ring here (rings are off, the
    /// client is not on shm, or the channel is relayed): use SUBSCRIBE/PUBLISH.
    RingUnavailable = 13,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => Malformed,
            2 => UnsupportedVersion,
            3 => UnknownType,
            4 => TooLarge,
            5 => BadChannel,
            6 => NotPermitted,
            7 => LimitReached,
            8 => BadHandshake,
            9 => SlowConsumer,
            10 => Internal,
            11 => UnknownTransport,
            12 => NotSubscribed,
            13 => RingUnavailable,
            _ => return None,
        })
    }
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: FrameType,
    pub flags: u8,
    pub priority: u8,
    pub channel_len: u16,
    pub payload_len: u32,
    pub origin: u32,
    pub seq: u64,
}

impl Header {
    /// Total encoded length of the frame this header starts.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.channel_len as usize + self.payload_len as usize
    }
}

/// A decoded frame borrowing its bodies from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub channel: &'a str,
    pub payload: &'a [u8],
}

/// Why bytes could not be decoded. Each is fatal for the connection: after a
/// framing error the stream position is unknown, so nothing after it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {0:02x?}: not an ipchub frame (expected \"IH\")")]
    BadMagic([u8; 2]),
    #[error("protocol version {0} not supported (this hub speaks version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("priority {0} above the maximum {MAX_PRIORITY}")]
    BadPriority(u8),
    #[error("channel length {0} above the limit {MAX_CHANNEL_LEN}")]
    ChannelTooLong(u16),
    #[error("payload of {len} bytes exceeds the limit of {max} bytes (max_message_size)")]
    PayloadTooLarge { len: u32, max: u32 },
    #[error("channel is not valid UTF-8")]
    ChannelNotUtf8,
    #[error("frame of {frame} bytes does not match the {got} bytes of its datagram")]
    LengthMismatch { frame: usize, got: usize },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::PayloadTooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::ChannelTooLong(_) => ErrorCode::BadChannel,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Decode and validate a header from the first [`HEADER_LEN`] bytes of `buf`.
/// Returns `Ok(None)` when fewer bytes are available.
pub fn decode_header(buf: &[u8], max_payload: u32) -> Result<Option<Header>, DecodeError> {
    // Check the magic as soon as two bytes are in, so garbage is refused
    // without waiting for a full header that may never come.
    if buf.len() >= 2 && buf[0..2] != MAGIC {
        return Err(DecodeError::BadMagic([buf[0], buf[1]]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[2] != VERSION {
        return Err(DecodeError::UnsupportedVersion(buf[2]));
    }
    let ty = FrameType::from_u8(buf[3]).ok_or(DecodeError::UnknownType(buf[3]))?;
    let flags = buf[4];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let priority = buf[5];
    if priority > MAX_PRIORITY {
        return Err(DecodeError::BadPriority(priority));
    }
    let channel_len = u16::from_le_bytes([buf[6], buf[7]]);
    if channel_len as usize > MAX_CHANNEL_LEN {
        return Err(DecodeError::ChannelTooLong(channel_len));
    }
    let payload_len = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    if payload_len > max_payload {
        return Err(DecodeError::PayloadTooLarge {
            len: payload_len,
            max: max_payload,
        });
    }
    Ok(Some(Header {
        ty,
        flags,
        priority,
        channel_len,
        payload_len,
        origin: u32::from_le_bytes(buf[12..16].try_into().unwrap()),
        seq: u64::from_le_bytes(buf[16..24].try_into().unwrap()),
    }))
}

/// Decode one frame from the front of a byte stream.
///
/// `Ok(None)`: need more bytes (the header, once complete, has already been
/// validated, so the caller may safely reserve `frame_len`).
/// `Ok(Some((frame, used)))`: a frame and how many bytes it took.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(header) = decode_header(buf, max_payload)? else {
        return Ok(None);
    };
    let len = header.frame_len();
    if buf.len() < len {
        return Ok(None);
    }
    let chan_end = HEADER_LEN + header.channel_len as usize;
    let channel =
        std::str::from_utf8(&buf[HEADER_LEN..chan_end]).map_err(|_| DecodeError::ChannelNotUtf8)?;
    Ok(Some((
        Frame {
            header,
            channel,
            payload: &buf[chan_end..len],
        },
        len,
    )))
}

/// Decode a frame that must fill `buf` exactly (message-oriented transports:
/// one POSIX mqueue message or one shared-memory record is one frame).
pub fn decode_exact(buf: &[u8], max_payload: u32) -> Result<Frame<'_>, DecodeError> {
    match decode(buf, max_payload)? {
        Some((frame, used)) if used == buf.len() => Ok(frame),
        Some((_, used)) => Err(DecodeError::LengthMismatch {
            frame: used,
            got: buf.len(),
        }),
        None => {
            let frame = decode_header(buf, max_payload)?.map_or(HEADER_LEN, |h| h.frame_len());
            Err(DecodeError::LengthMismatch {
                frame,
                got: buf.len(),
            })
        }
    }
}

/// Check that a datagram (an mqueue message, a ring record) holds exactly
/// one frame, from its header alone. Cheaper than [`decode_exact`]: the
/// bodies are validated later by the stream decoder; this only guarantees
/// that concatenated records cannot desynchronise it.
pub fn check_record(buf: &[u8]) -> Result<(), DecodeError> {
    match decode_header(buf, u32::MAX)? {
        Some(h) if h.frame_len() == buf.len() => Ok(()),
        Some(h) => Err(DecodeError::LengthMismatch {
            frame: h.frame_len(),
            got: buf.len(),
        }),
        None => Err(DecodeError::LengthMismatch {
            frame: HEADER_LEN,
            got: buf.len(),
        }),
    }
}

/// Encode a header into 24 bytes. The caller guarantees the lengths fit.
#[allow(clippy::too_many_arguments)]
pub fn encode_header(
    ty: FrameType,
    flags: u8,
    priority: u8,
    channel_len: usize,
    payload_len: usize,
    origin: u32,
    seq: u64,
) -> [u8; HEADER_LEN] {
    debug_assert!(channel_len <= MAX_CHANNEL_LEN);
    debug_assert!(payload_len <= u32::MAX as usize);
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = ty as u8;
    h[4] = flags;
    h[5] = priority;
    h[6..8].copy_from_slice(&(channel_len as u16).to_le_bytes());
    h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&origin.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Append a whole frame to `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    out: &mut Vec<u8>,
    ty: FrameType,
    flags: u8,
    priority: u8,
    channel: &str,
    payload: &[u8],
    origin: u32,
    seq: u64,
) {
    out.extend_from_slice(&encode_header(
        ty,
        flags,
        priority,
        channel.len(),
        payload.len(),
        origin,
        seq,
    ));
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(payload);
}

/// Payload of an ERROR frame: code then human-readable text.
pub fn error_payload(code: ErrorCode, text: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + text.len());
    p.extend_from_slice(&(code as u16).to_le_bytes());
    p.extend_from_slice(text.as_bytes());
    p
}

/// Split an ERROR payload into its code (raw, in case it is newer than us) and text.
pub fn parse_error_payload(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (0, String::from_utf8_lossy(p).into_owned());
    }
    (
        u16::from_le_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}

/// Parse the `key=value` lines of HELLO and WELCOME payloads.
pub fn parse_kv(p: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(p)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(ty: FrameType, chan: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, ty, 0, 0, chan, payload, 7, 42);
        v
    }

    #[test]
    fn round_trip() {
        let bytes = frame(FrameType::Publish, "a/b", b"\0hello\xff");
        let (f, used) = decode(&bytes, 1024).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.header.ty, FrameType::Publish);
        assert_eq!(f.channel, "a/b");
        assert_eq!(f.payload, b"\0hello\xff");
        assert_eq!(f.header.origin, 7);
        assert_eq!(f.header.seq, 42);
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let bytes = frame(FrameType::Publish, "weather", b"{\"temp\": 72}");
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n], 1024), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn bad_input_gets_precise_errors() {
        let good = frame(FrameType::Publish, "a", b"x");
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b, 10), Err(DecodeError::BadMagic(_))));
        assert!(matches!(
            decode(b"GET / HTTP/1.1", 10),
            Err(DecodeError::BadMagic(_))
        ));
        let mut b = good.clone();
        b[2] = 9;
        assert_eq!(decode(&b, 10), Err(DecodeError::UnsupportedVersion(9)));
        let mut b = good.clone();
        b[3] = 200;
        assert_eq!(decode(&b, 10), Err(DecodeError::UnknownType(200)));
        let mut b = good.clone();
        b[4] = 0x80;
        assert_eq!(decode(&b, 10), Err(DecodeError::UnknownFlags(0x80)));
        let mut b = good.clone();
        b[5] = 32;
        assert_eq!(decode(&b, 10), Err(DecodeError::BadPriority(32)));
        let mut b = good.clone();
        b[6..8].copy_from_slice(&300u16.to_le_bytes());
        assert_eq!(decode(&b, 10), Err(DecodeError::ChannelTooLong(300)));
        // A huge length is refused from the header alone, before any body arrives.
        let mut b = good[..HEADER_LEN].to_vec();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&b, 1 << 20),
            Err(DecodeError::PayloadTooLarge {
                len: u32::MAX,
                max: 1 << 20
            })
        );
        let mut b = frame(FrameType::Publish, "ab", b"");
        b[HEADER_LEN] = 0xff;
        assert_eq!(decode(&b, 10), Err(DecodeError::ChannelNotUtf8));
    }

    #[test]
    fn exact_decoding_for_datagrams() {
        let b = frame(FrameType::Publish, "a", b"xyz");
        assert!(decode_exact(&b, 10).is_ok());
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            decode_exact(&longer, 10),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_exact(&b[..b.len() - 1], 10),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(check_record(&b).is_ok());
        assert!(check_record(&longer).is_err());
        assert!(check_record(&b[..b.len() - 1]).is_err());
        assert!(check_record(&b[..10]).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics_and_never_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((f, used))) = decode(&bytes, 64) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(used, f.header.frame_len());
            }
        }

        #[test]
        fn stream_of_frames_round_trips(msgs in proptest::collection::vec(("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..64), 0u8..=31), 1..20)) {
            let mut buf = Vec::new();
            for (i, (c, p, prio)) in msgs.iter().enumerate() {
                encode(&mut buf, FrameType::Data, 0, *prio, c, p, 3, i as u64);
            }
            let mut off = 0;
            for (i, (c, p, prio)) in msgs.iter().enumerate() {
                let (f, used) = decode(&buf[off..], 64).unwrap().unwrap();
                prop_assert_eq!(f.channel, c.as_str());
                prop_assert_eq!(f.payload, &p[..]);
                prop_assert_eq!(f.header.priority, *prio);
                prop_assert_eq!(f.header.seq, i as u64);
                off += used;
            }
            prop_assert_eq!(off, buf.len());
        }
    }
}
