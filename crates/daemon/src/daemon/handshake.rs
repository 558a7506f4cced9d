//! The handshake: HELLO names a transport, the hub builds that data path and
//! answers WELCOME (with descriptors over SCM_RIGHTS where the path needs them).

use super::logging::{excerpt, is_hostile};
use crate::hub::TransportKind;
use crate::transport::{Offer, Peer, ReadOutcome, SetupError};
use crate::wire::frame::parse_kv;
use crate::wire::{ErrorCode, HEADER_LEN, VERSION};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Most descriptors a client may send with HELLO (its two message queues).
pub const MAX_HELLO_FDS: usize = 2;

/// A parsed HELLO payload.
#[derive(Debug, Clone)]
pub struct Hello {
    pub transport: TransportKind,
    pub name: String,
    /// Extra keys a transport may read (e.g. `ring_size`).
    pub params: Vec<(String, String)>,
}

/// Longest client name, in bytes: it is logged with every connection and
/// shown in statistics, so it is a label, not a payload.
pub const MAX_NAME: usize = 64;

/// Longest excerpt of a rejected HELLO value quoted back (and logged).
const QUOTE_MAX: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("HELLO: name is {0} bytes long (at most {MAX_NAME})")]
    NameTooLong(usize),
    #[error("HELLO: name contains control character {0:?} at byte {1} (names are printable text)")]
    /// (Control characters and Unicode reordering marks alike.)
    NameNotPrintable(char, usize),
    #[error("HELLO: unsupported protocol version {0} (this hub speaks {VERSION})")]
    Version(String),
    #[error("HELLO: unknown transport '{0}' (known: socket, pipe, fifo, mqueue, shm)")]
    UnknownTransport(String),
    #[error("HELLO: transport '{0}' is not enabled on this hub")]
    Disabled(&'static str),
    #[error("HELLO: bad value for {key}: {value}")]
    BadParam { key: String, value: String },
    #[error(
        "HELLO for transport '{0}' carries descriptors; only mqueue takes them (its two queues)"
    )]
    UnexpectedFds(&'static str),
    #[error("cannot set up the {transport} data path: {source}")]
    Setup {
        transport: &'static str,
        source: SetupError,
    },
}

impl HandshakeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::Version(_) => ErrorCode::UnsupportedVersion,
            HandshakeError::UnknownTransport(_) | HandshakeError::Disabled(_) => {
                ErrorCode::UnknownTransport
            }
            HandshakeError::BadParam { .. }
            | HandshakeError::UnexpectedFds(_)
            | HandshakeError::NameTooLong(_)
            | HandshakeError::NameNotPrintable(..) => ErrorCode::BadHandshake,
            HandshakeError::Setup {
                source: SetupError::Handover(_),
                ..
            } => ErrorCode::BadHandshake,
            HandshakeError::Setup {
                source: SetupError::Permission(_),
                ..
            } => ErrorCode::NotPermitted,
            HandshakeError::Setup { .. } => ErrorCode::Internal,
        }
    }
}

impl Hello {
    pub fn parse(payload: &[u8]) -> Result<Hello, HandshakeError> {
        let mut hello = Hello {
            transport: TransportKind::Socket,
            name: String::new(),
            params: Vec::new(),
        };
        for (k, v) in parse_kv(payload) {
            match k.as_str() {
                // Rejected values are quoted back and logged: escaped and short.
                "version" => {
                    if v != VERSION.to_string() {
                        return Err(HandshakeError::Version(excerpt(&v, QUOTE_MAX)));
                    }
                }
                "transport" => {
                    hello.transport = TransportKind::parse(&v)
                        .ok_or_else(|| HandshakeError::UnknownTransport(excerpt(&v, QUOTE_MAX)))?
                }
                "name" => {
                    if v.len() > MAX_NAME {
                        return Err(HandshakeError::NameTooLong(v.len()));
                    }
                    if let Some((at, c)) = v.char_indices().find(|(_, c)| is_hostile(*c)) {
                        return Err(HandshakeError::NameNotPrintable(c, at));
                    }
                    hello.name = v
                }
                _ => hello.params.push((k, v)),
            }
        }
        Ok(hello)
    }
}

/// Build the data path the client asked for and the WELCOME text. `fds`
/// are the descriptors the client sent with HELLO (mqueue: its queues).
pub fn setup(
    peer: &Peer<'_>,
    hello: &Hello,
    fds: Vec<OwnedFd>,
) -> Result<(Offer, String), HandshakeError> {
    if !fds.is_empty() && hello.transport != TransportKind::Mqueue {
        return Err(HandshakeError::UnexpectedFds(hello.transport.name()));
    }
    let offer = match hello.transport {
        TransportKind::Socket => Ok(Offer {
            link: None,
            welcome: Vec::new(),
            fds: Vec::new(),
        }),
        TransportKind::Pipe => crate::transport::pipe::offer(peer),
        TransportKind::Fifo => crate::transport::fifo::offer(peer),
        TransportKind::Mqueue => crate::transport::mqueue::adopt(peer, fds),
        TransportKind::Shm => crate::transport::shm::offer(peer, peer.shm_ring_size),
    }
    .map_err(|source| HandshakeError::Setup {
        transport: hello.transport.name(),
        source,
    })?;
    let mut welcome = format!(
        "version={VERSION}\nclient={}\ntransport={}\nmax_message={}\nserver=ipchubd {}\n",
        peer.id,
        hello.transport.name(),
        peer.max_message,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in &offer.welcome {
        welcome.push_str(&format!("{k}={v}\n"));
    }
    Ok((offer, welcome))
}

/// Read from a connection that has not been greeted yet, never past the end
/// of its first frame: at most a header, then at most the frame the header
/// announces if its payload is within `max_payload` (`hub.max_hello_size`).
/// A bigger or non-HELLO header stops the reading here; the caller refuses
/// it. So a connection holds at most one small HELLO in the hub before it
/// is authenticated, and frames it sent after HELLO wait in the kernel.
///
/// Descriptors sent with the HELLO (SCM_RIGHTS) are collected into `fds`.
/// More than [`MAX_HELLO_FDS`] is refused as `InvalidData` and all are
/// closed here (every one arrives: the receive buffer has room for the
/// kernel's per-message maximum).
pub fn read_hello(
    sock: &OwnedFd,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    max_payload: u32,
) -> std::io::Result<ReadOutcome> {
    use nix::sys::socket::MsgFlags;
    use std::os::fd::AsFd;
    let mut out = ReadOutcome::default();
    loop {
        let need = if buf.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            match crate::wire::frame::decode_header(buf, u32::MAX) {
                Ok(Some(h)) if h.payload_len <= max_payload => h.frame_len(),
                // Malformed, or too big: the caller answers from the header.
                _ => return Ok(out),
            }
        };
        if buf.len() >= need {
            return Ok(out);
        }
        let mut chunk = vec![0u8; need - buf.len()];
        let got =
            match ipchub_os::sys::recv_with_fds(sock.as_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(out),
                Err(nix::errno::Errno::ECONNRESET) => {
                    out.eof = true;
                    return Ok(out);
                }
                Err(e) => return Err(e.into()),
            };
        let n = got.bytes;
        let truncated = got.truncated;
        fds.extend(got.fds);
        if truncated || fds.len() > MAX_HELLO_FDS {
            fds.clear();
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {MAX_HELLO_FDS} descriptors sent with HELLO"),
            ));
        }
        if n == 0 {
            out.eof = true;
            return Ok(out);
        }
        buf.extend_from_slice(&chunk[..n]);
        out.bytes += n;
    }
}

/// Send `bytes` on the control socket with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if n != bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "short write of WELCOME",
        ));
    }
    Ok(())
}
