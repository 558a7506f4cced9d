//! Anonymous pipes: two pipe pairs per client, the client's ends handed over
//! the control socket with SCM_RIGHTS. Also used for children the hub spawns.

use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;

use super::stream::StreamLink;
use super::{Offer, Peer, SetupError};

/// Pipe buffer size to ask for: bigger buffers mean fewer wake-ups. The
/// kernel caps unprivileged requests at /proc/sys/fs/pipe-max-size (1 MiB
/// by default); failure just keeps the 64 KiB default.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe with the hub's end non-blocking and the client's end blocking
/// until the client decides (the library sets it non-blocking itself).
pub fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and only resizes the pipe
    // buffer of a descriptor we own; failure is harmless and ignored.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&w),
            libc::F_SETPIPE_SZ,
            PIPE_SIZE,
        );
    }
    Ok((r, w))
}

/// Put `fd` in non-blocking mode.
pub fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Hub side: `up` carries client → hub, `down` hub → client.
pub fn offer(_peer: &Peer<'_>) -> Result<Offer, SetupError> {
    let setup = |e: std::io::Error| SetupError::Io {
        what: "pipe".into(),
        source: e,
    };
    let (up_r, up_w) = pipe_pair().map_err(setup)?;
    let (down_r, down_w) = pipe_pair().map_err(setup)?;
    set_nonblocking(&up_r).map_err(setup)?;
    set_nonblocking(&down_w).map_err(setup)?;
    Ok(Offer {
        link: Some(Box::new(StreamLink::pair(up_r, down_w))),
        welcome: vec![("fds".into(), "down,up".into())],
        fds: vec![down_r, up_w],
    })
}

/// Client side: the two descriptors from WELCOME, in its `fds` order.
pub fn accept(mut fds: Vec<OwnedFd>) -> Result<StreamLink, SetupError> {
    if fds.len() != 2 {
        return Err(SetupError::Handover(format!(
            "expected 2 pipe descriptors, got {}",
            fds.len()
        )));
    }
    let up_w = fds.pop().unwrap();
    let down_r = fds.pop().unwrap();
    let setup = |e: std::io::Error| SetupError::Io {
        what: "pipe".into(),
        source: e,
    };
    set_nonblocking(&down_r).map_err(setup)?;
    set_nonblocking(&up_w).map_err(setup)?;
    Ok(StreamLink::pair(down_r, up_w))
}
