//! Sealed memfds mapped shared: what both kinds of ring are made of (a
//! header of fixed size, then a power-of-two data area). Creating one seals
//! it against resizing; opening one received from a peer checks that it is
//! a sealed memfd of a plausible size before mapping it, so a peer can never
//! make our accesses fault (truncation would turn them into SIGBUS).

use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::ftruncate;

use super::RingError;

/// A new memfd of `header + capacity` bytes, sealed against resizing (and
/// against new seals, so nobody can later add a write seal that would make
/// the peer's mmap fail), mapped shared. The caller owns the mapping.
pub(super) fn create(
    name: &CStr,
    header: usize,
    capacity: usize,
) -> Result<(NonNull<u8>, OwnedFd), RingError> {
    let fd = memfd_create(
        name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let size = header + capacity;
    ftruncate(&fd, size as libc::off_t)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    let base = map(&fd, size)?;
    Ok((base, fd))
}

/// Maps a memfd received from a (possibly hostile) peer after checking it
/// is a memfd sealed against shrinking, of `header` plus a power of two in
/// `min_cap..=max_cap`. Returns the mapping (the caller owns it) and the
/// data capacity.
pub(super) fn open(
    fd: &impl AsFd,
    header: usize,
    min_cap: usize,
    max_cap: usize,
) -> Result<(NonNull<u8>, usize), RingError> {
    let raw = fd.as_fd().as_raw_fd();
    let st = fstat(raw)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(RingError::Corrupt("ring fd is not a regular file"));
    }
    // Only shmem/memfd files have seals; EINVAL means something else (a
    // regular file someone else could truncate).
    let seals = match fcntl(raw, FcntlArg::F_GET_SEALS) {
        Ok(s) => SealFlag::from_bits_truncate(s),
        Err(Errno::EINVAL) => return Err(RingError::Corrupt("ring fd is not a sealable memfd")),
        Err(e) => return Err(e.into()),
    };
    if !seals.contains(SealFlag::F_SEAL_SHRINK) {
        return Err(RingError::Corrupt(
            "ring memfd is not sealed against shrinking",
        ));
    }
    let size = match usize::try_from(st.st_size) {
        Ok(s) if (header + min_cap..=header + max_cap).contains(&s) => s,
        _ => return Err(RingError::Corrupt("ring memfd size out of range")),
    };
    let cap = size - header;
    if !cap.is_power_of_two() {
        return Err(RingError::Corrupt(
            "ring memfd size is not header + power of two",
        ));
    }
    Ok((map(fd, size)?, cap))
}

fn map(fd: &impl AsFd, len: usize) -> Result<NonNull<u8>, RingError> {
    let len = NonZeroUsize::new(len).ok_or(RingError::Corrupt("empty mapping"))?;
    // SAFETY: addr is None, so the kernel picks a fresh range and no existing
    // Rust object is aliased or unmapped. Both callers made sure the file is
    // at least `len` bytes (ftruncate'd here, or fstat-checked) and sealed
    // against shrinking, so no page of the mapping can SIGBUS.
    let p = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )?
    };
    Ok(p.cast())
}
