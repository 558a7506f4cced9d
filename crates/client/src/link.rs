//! Client side of the handshake: receive WELCOME (and any descriptors) and
//! build the matching data path from the same [`Link`] types the hub uses.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::ClientError;
use crate::transport;
use crate::transport::stream::StreamLink;
use crate::transport::Link;
use crate::wire::frame::parse_error_payload;
use crate::wire::TransportKind;
use crate::wire::{self, FrameType, HEADER_LEN};
use ipchub_os::sys;

/// Most descriptors a WELCOME may carry.
const MAX_FDS: usize = 8;

/// Read exactly one frame (WELCOME or ERROR) from the socket, collecting
/// descriptors passed with it.
pub(super) fn recv_welcome(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), ClientError> {
    let (ty, payload, fds) = recv_frame(sock.as_fd(), Duration::from_secs(10), "HELLO")?;
    match ty {
        FrameType::Welcome => Ok((payload, fds)),
        other => Err(ClientError::Protocol(format!(
            "expected WELCOME, got {other:?}"
        ))),
    }
}

/// Read exactly one frame from the control socket (blocking or not) within
/// `timeout`, with the descriptors that came with it. An ERROR frame becomes
/// `ClientError::Refused`. Returns the type, the payload and the fds.
pub(super) fn recv_frame(
    sock: BorrowedFd<'_>,
    timeout: Duration,
    answer_to: &str,
) -> Result<(FrameType, Vec<u8>, Vec<OwnedFd>), ClientError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::MsgFlags;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    loop {
        let need = match wire::frame::decode_header(&buf, 1 << 20) {
            Ok(Some(h)) => h.frame_len(),
            Ok(None) => HEADER_LEN,
            Err(e) => {
                return Err(ClientError::Protocol(format!(
                    "bad answer to {answer_to}: {e}"
                )))
            }
        };
        if buf.len() >= need {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut pfd = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(&mut pfd, ms) {
            Ok(0) => continue,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ClientError::Io(e.into())),
        }
        let mut chunk = vec![0u8; need - buf.len()];
        let got = match sys::recv_with_fds(sock, &mut chunk, MsgFlags::MSG_DONTWAIT) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ClientError::Io(e.into())),
        };
        let n = got.bytes;
        fds.extend(got.fds);
        if got.truncated || fds.len() > MAX_FDS {
            return Err(ClientError::Protocol(format!(
                "the hub sent more than {MAX_FDS} descriptors with {answer_to}'s answer"
            )));
        }
        if n == 0 {
            return Err(ClientError::Closed(format!(
                "hub closed the connection before answering {answer_to}"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (frame, _) = wire::decode(&buf, 1 << 20)
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .ok_or_else(|| ClientError::Protocol(format!("short answer to {answer_to}")))?;
    match frame.header.ty {
        FrameType::Error => {
            let (code, text) = parse_error_payload(frame.payload);
            Err(ClientError::Refused { code, text })
        }
        ty => Ok((ty, frame.payload.to_vec(), fds)),
    }
}

/// Send HELLO with descriptors attached (SCM_RIGHTS), all in one message.
pub(super) fn send_with_fds(
    sock: &UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::RawFd],
) -> Result<(), ClientError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| ClientError::Io(e.into()))?;
    if n != bytes.len() {
        // The rest carries no descriptors: plain writes are fine.
        std::io::Write::write_all(&mut &*sock, &bytes[n..])?;
    }
    Ok(())
}

/// Build the client's data path from the WELCOME. Returns the control socket
/// to keep watching (None when it is itself the data path) and the link.
pub(super) fn client_link(
    transport: TransportKind,
    sock: OwnedFd,
    welcome: &[(String, String)],
    fds: Vec<OwnedFd>,
    queues: Option<transport::mqueue::MqueueLink>,
) -> Result<(Option<OwnedFd>, Box<dyn Link>), ClientError> {
    let get = |k: &str| {
        welcome
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                ClientError::Protocol(format!("WELCOME for {} lacks {k}", transport.name()))
            })
    };
    let setup = |e: crate::transport::SetupError| {
        ClientError::Protocol(format!("{} data path: {e}", transport.name()))
    };
    let link: Box<dyn Link> = match transport {
        TransportKind::Socket => return Ok((None, Box::new(StreamLink::duplex(sock)))),
        TransportKind::Pipe => Box::new(transport::pipe::accept(fds).map_err(setup)?),
        TransportKind::Fifo => {
            Box::new(transport::fifo::accept(get("fifo_up")?, get("fifo_down")?).map_err(setup)?)
        }
        // Our own queues, handed over with HELLO.
        TransportKind::Mqueue => Box::new(
            queues
                .ok_or_else(|| ClientError::Protocol("mqueue client without its queues".into()))?,
        ),
        TransportKind::Shm => Box::new(transport::shm::accept(fds).map_err(setup)?),
    };
    Ok((Some(sock), link))
}
