//! Safe wrappers over the few system calls the rest of the workspace needs
//! and neither `std` nor `nix` offers safely: descriptors received over
//! SCM_RIGHTS or inherited across exec, poll(2) over raw descriptor numbers,
//! `mq_timedsend`, `getrandom`, and the descriptor shuffle a child does
//! before exec. Every other crate is `#![forbid(unsafe_code)]`; what they
//! would have done with `unsafe` they do through here.

use std::collections::HashSet;
use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Room for descriptors in one [`recv_with_fds`] call: the kernel's own
/// limit per message (SCM_MAX_FD), so every descriptor a peer can attach
/// arrives and is owned (and closed when dropped) rather than lost in a
/// truncated control message. Callers bound what they accept themselves.
pub const MAX_RECV_FDS: usize = 253;

/// What one [`recv_with_fds`] call read.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read into the buffer (0: the peer closed the connection).
    pub bytes: usize,
    /// Descriptors that came with them (SCM_RIGHTS), now ours.
    pub fds: Vec<OwnedFd>,
    /// The control data did not fit (MSG_CTRUNC); cannot happen for
    /// SCM_RIGHTS alone, whose count the kernel caps at [`MAX_RECV_FDS`].
    pub truncated: bool,
}

/// `recvmsg(2)` on `sock` into `buf`, taking ownership of any descriptors
/// passed with the bytes (close-on-exec set atomically). `flags` are added
/// to `MSG_CMSG_CLOEXEC`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> nix::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_RECV_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut out = Received {
        bytes: msg.bytes,
        fds: Vec::new(),
        truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    };
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel installed this descriptor in our table
                // for this very message (SCM_RIGHTS); no other owner exists.
                out.fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok(out)
}

/// Descriptors already claimed by [`claim_inherited`]: a second claim of
/// the same number is refused rather than making two owners.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Take ownership of a descriptor this process inherited across exec by
/// number (systemd's `LISTEN_FDS`, a hand-over from the previous `ipchubd`,
/// a bench worker's descriptors 3, 4, …), after checking it is open.
///
/// Only for numbers that came with the process and that nothing in it has
/// opened or wrapped since: call it at start-up, before anything else can
/// have reused the number. Each number can be claimed once per process.
pub fn claim_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is not a descriptor number"),
        ));
    }
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    if !claimed.get_or_insert_with(HashSet::new).insert(raw) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("inherited descriptor {raw} was already claimed"),
        ));
    }
    // SAFETY: `raw` is open (F_GETFD succeeded), came with the process (the
    // caller's contract above) and has not been claimed before in this
    // process (CLAIMED), so the OwnedFd made here is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `poll(2)` over descriptor numbers, for waits whose descriptors sit
/// behind trait objects that hand out numbers (the transports' `Link`).
/// poll only queries: a negative number is skipped and a closed one reports
/// `POLLNVAL`, so no number can make it touch memory or another owner's
/// descriptor. `timeout_ms` < 0 waits without limit. Returns how many
/// entries have events; EINTR comes back as `ErrorKind::Interrupted`.
pub fn poll_raw(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `n` pollfd
    // structs for the whole call; poll writes only their `revents`.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// A `pollfd` entry for [`poll_raw`].
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `mq_timedsend(3)`, which `nix` lacks: send `msg` with `priority`,
/// waiting at most until the CLOCK_REALTIME instant `abstime` on a full
/// queue (`ETIMEDOUT` then).
pub fn mq_timedsend(
    mq: &nix::mqueue::MqdT,
    msg: &[u8],
    priority: u32,
    abstime: &nix::sys::time::TimeSpec,
) -> io::Result<()> {
    // SAFETY: the queue descriptor is open for the borrow of `mq`; the
    // message pointer and length describe `msg`, and the timespec is a
    // valid reference, both for the duration of the call.
    let rc = unsafe {
        libc::mq_timedsend(
            mq.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            priority,
            abstime.as_ref(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fill `buf` from the kernel's random source (`getrandom(2)`, blocking
/// only until the pool is first initialised).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let tail = &mut buf[got..];
        // SAFETY: the pointer and length describe `tail`, exclusively
        // borrowed across the call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(tail.as_mut_ptr().cast(), tail.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(())
}

/// Arrange for the child `cmd` starts to receive `fds` as its descriptors
/// 3, 4, … (in order, close-on-exec cleared), whatever numbers they have
/// here. The descriptors must stay open until `cmd.spawn()` returns.
pub fn pass_fds_from_3(cmd: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    let mut high = Vec::with_capacity(fds.len());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (fcntl, dup2, close) on descriptor
    // numbers the parent keeps open until spawn returns; it allocates
    // nothing (`high` was allocated here, before the fork, with room for
    // every descriptor).
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (a source may sit on a target number),
            // then onto 3, 4, …; dup2 clears CLOEXEC.
            high.clear();
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(h);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_passed_with_bytes_are_received_and_owned() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let raw = [r.as_raw_fd(), w.as_raw_fd()];
        let cm = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(b"hi")];
        nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cm, MsgFlags::empty(), None).unwrap();
        let mut buf = [0u8; 8];
        let got = recv_with_fds(b.as_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..got.bytes], b"hi");
        assert_eq!(got.fds.len(), 2);
        assert!(!got.truncated);
        // The received write end reaches the original read end.
        nix::unistd::write(&got.fds[1], b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut one).unwrap(), 1);
    }

    #[test]
    fn many_descriptors_all_arrive_owned() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let pipes: Vec<_> = (0..40).map(|_| nix::unistd::pipe().unwrap()).collect();
        let raw: Vec<RawFd> = pipes
            .iter()
            .flat_map(|(r, w)| [r.as_raw_fd(), w.as_raw_fd()])
            .collect();
        let cm = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(b"x")];
        nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cm, MsgFlags::empty(), None).unwrap();
        let mut buf = [0u8; 1];
        let got = recv_with_fds(b.as_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert!(!got.truncated);
        assert_eq!(got.fds.len(), 80);
    }

    #[test]
    fn a_closed_or_doubly_claimed_number_is_refused() {
        assert!(claim_inherited(-1).is_err());
        // A number far above anything open here.
        assert!(claim_inherited(900_000).is_err());
        let (r, _w) = nix::unistd::pipe().unwrap();
        // Leak the pipe's read end into a plain number, as exec would.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(r);
        let owned = claim_inherited(raw).unwrap();
        assert_eq!(
            claim_inherited(raw).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        drop(owned);
    }

    #[test]
    fn poll_raw_skips_negative_numbers_and_flags_closed_ones() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"x").unwrap();
        let mut fds = [
            pollfd(-1, libc::POLLIN),
            pollfd(r.as_raw_fd(), libc::POLLIN),
            pollfd(900_000, libc::POLLIN),
        ];
        let n = poll_raw(&mut fds, 0).unwrap();
        assert_eq!(n, 2);
        assert_eq!(fds[0].revents, 0);
        assert_ne!(fds[1].revents & libc::POLLIN, 0);
        assert_ne!(fds[2].revents & libc::POLLNVAL, 0);
    }

    #[test]
    fn random_bytes_fill_the_buffer() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
