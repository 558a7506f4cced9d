//! The handshake: HELLO names a transport, the hub builds that data path and
//! answers WELCOME (with descriptors over SCM_RIGHTS where the path needs them).

use super::logging::{excerpt, is_hostile};
use crate::hub::TransportKind;
use crate::transport::{Offer, Peer, SetupError};
use crate::wire::frame::parse_kv;
use crate::wire::{ErrorCode, VERSION};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

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
            | HandshakeError::NameTooLong(_)
            | HandshakeError::NameNotPrintable(..) => ErrorCode::BadHandshake,
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

/// Build the data path the client asked for and the WELCOME text.
pub fn setup(peer: &Peer<'_>, hello: &Hello) -> Result<(Offer, String), HandshakeError> {
    let offer = match hello.transport {
        TransportKind::Socket => Ok(Offer {
            link: None,
            welcome: Vec::new(),
            fds: Vec::new(),
        }),
        TransportKind::Pipe => crate::transport::pipe::offer(peer),
        TransportKind::Fifo => crate::transport::fifo::offer(peer),
        TransportKind::Mqueue => crate::transport::mqueue::offer(peer),
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
