//! Non-blocking eventfd that wakes a ring peer sleeping in poll/epoll.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, readlink, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Reads per `drain()` call. One read resets a normal eventfd; the bound only
/// matters for a peer-made EFD_SEMAPHORE eventfd, where each read takes 1 off a
/// counter that could be ~2^64 and "read until EAGAIN" would never end.
const MAX_DRAIN_READS: usize = 16;

/// An eventfd in EFD_NONBLOCK mode: waking never blocks the waker, and the fd
/// can sit in the same poll/epoll set as sockets.
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// Creates a fresh eventfd (EFD_NONBLOCK | EFD_CLOEXEC, counter 0).
    pub fn new() -> io::Result<Notifier> {
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Notifier { fd: efd.into() })
    }

    /// Adopts an fd received from a peer. The peer may be hostile, so the fd
    /// must really be an eventfd (a pipe or a file could block or be written
    /// into) and is forced non-blocking (which also affects the peer's copy:
    /// the protocol requires it anyway).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Notifier> {
        let raw = fd.as_raw_fd();
        let target = readlink(format!("/proc/self/fd/{raw}").as_str())?;
        if target != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "notifier fd is not an eventfd",
            ));
        }
        let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
        if !flags.contains(OFlag::O_NONBLOCK) {
            fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Notifier { fd })
    }

    /// Adds 1 to the counter. EAGAIN means the counter is saturated, so the
    /// fd is already readable and the wake-up is already pending.
    pub fn notify(&self) -> io::Result<()> {
        loop {
            match nix::unistd::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) | Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Resets the counter so the fd stops polling readable; returns the sum read
    /// (saturating). Call it before re-checking the ring, never after, or a
    /// wake-up that arrives in between is lost.
    pub fn drain(&self) -> io::Result<u64> {
        let mut total = 0u64;
        let mut buf = [0u8; 8];
        let mut reads = 0;
        while reads < MAX_DRAIN_READS {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(8) => total = total.saturating_add(u64::from_ne_bytes(buf)),
                // An eventfd read is all 8 bytes or an error; anything else is not ours to interpret.
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short eventfd read",
                    ))
                }
                Err(Errno::EAGAIN) => return Ok(total),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            reads += 1;
        }
        Ok(total)
    }

    /// The fd to register with poll/epoll (readable = woken) or to send to the peer.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn notify_then_drain_counts_and_empties() {
        let n = Notifier::new().unwrap();
        assert_eq!(n.drain().unwrap(), 0, "fresh eventfd must be empty");
        n.notify().unwrap();
        n.notify().unwrap();
        n.notify().unwrap();
        assert_eq!(n.drain().unwrap(), 3);
        assert_eq!(n.drain().unwrap(), 0, "drain must reset the counter");
    }

    #[test]
    fn notify_on_saturated_counter_is_not_an_error() {
        let n = Notifier::new().unwrap();
        // The largest value an eventfd holds is u64::MAX - 1; one more write would block.
        nix::unistd::write(n.as_fd(), &(u64::MAX - 1).to_ne_bytes()).unwrap();
        n.notify().unwrap();
        assert_eq!(n.drain().unwrap(), u64::MAX - 1);
    }

    #[test]
    fn from_fd_accepts_eventfd_and_forces_nonblocking() {
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap();
        let n = Notifier::from_fd(efd.into()).unwrap();
        let fl =
            OFlag::from_bits_truncate(fcntl(n.as_fd().as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(fl.contains(OFlag::O_NONBLOCK));
        // Would block forever if O_NONBLOCK had not been set.
        assert_eq!(n.drain().unwrap(), 0);
        n.notify().unwrap();
        assert_eq!(n.drain().unwrap(), 1);
    }

    #[test]
    fn from_fd_rejects_non_eventfd() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let err = Notifier::from_fd(r).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn drain_of_semaphore_eventfd_is_bounded() {
        let efd = EventFd::from_value_and_flags(
            u32::MAX,
            EfdFlags::EFD_SEMAPHORE | EfdFlags::EFD_NONBLOCK,
        )
        .unwrap();
        let n = Notifier::from_fd(efd.into()).unwrap();
        assert_eq!(n.drain().unwrap(), MAX_DRAIN_READS as u64);
    }
}
