//! FIFOs: a pair of named pipes per client under `<runtime>/fifo/`, owned by
//! the client's uid (from SO_PEERCRED) with mode 0600, removed when the
//! client goes.
//!
//! The hub opens both FIFOs O_RDWR: a FIFO reader opened O_RDONLY sees EOF
//! (and a level-triggered loop spins) whenever the last writer leaves, and
//! an O_WRONLY open fails while no reader exists. Holding both ends keeps
//! each FIFO open from the moment it is created; liveness comes from the
//! control socket instead.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::stream::StreamLink;
use super::{Link, Offer, Peer, ReadOutcome, SetupError};
use crate::paths::{DirError, SafeDir};
use crate::queue::OutQueue;

/// Subdirectory of the runtime directory holding per-client FIFOs.
pub const FIFO_DIR: &str = "fifo";
/// Subdirectory holding the per-channel publish FIFOs.
pub const PUB_DIR: &str = "pub";

/// A FIFO the hub made in one of its own directories; dropping it removes
/// the FIFO, through a freshly verified descriptor of that directory and
/// only if the name still is a FIFO.
#[derive(Debug)]
pub struct PlacedFifo {
    dir: PathBuf,
    name: String,
}

impl PlacedFifo {
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

impl Drop for PlacedFifo {
    fn drop(&mut self) {
        if let Ok(d) = SafeDir::open_own(&self.dir) {
            d.remove_fifo(self.name.as_ref());
        }
    }
}

/// The hub's side: a stream link that removes its files when dropped.
pub struct FifoLink {
    inner: StreamLink,
    _files: [PlacedFifo; 2],
}

impl Link for FifoLink {
    fn read_into(&mut self, inbuf: &mut Vec<u8>, budget: usize) -> std::io::Result<ReadOutcome> {
        self.inner.read_into(inbuf, budget)
    }
    fn flush(&mut self, q: &mut OutQueue) -> std::io::Result<u64> {
        self.inner.flush(q)
    }
    fn read_fd(&self) -> std::os::fd::RawFd {
        self.inner.read_fd()
    }
    fn write_fd(&self) -> std::os::fd::RawFd {
        self.inner.write_fd()
    }
    /// The open FIFOs carry on without their names (which a new hub's start
    /// removes anyway): a pipe-like stream pair.
    fn handover_fds(&self) -> Option<Vec<std::os::fd::RawFd>> {
        self.inner.handover_fds()
    }
}

/// Verify `<runtime>/fifo` (created if missing) and `<runtime>/pub` (if
/// present) and remove the FIFOs a killed hub left in them. Nothing but
/// FIFOs is removed, nothing through a symlink, and nothing in a directory
/// that is not the hub's own: such a directory is refused, naming it.
pub fn prepare_dir(runtime: &SafeDir) -> Result<SafeDir, DirError> {
    let dir = runtime
        .subdir(FIFO_DIR, true)?
        .expect("subdir(create) yields the directory");
    dir.remove_fifos();
    if let Some(publ) = runtime.subdir(PUB_DIR, false)? {
        publ.remove_fifo_tree();
        drop(publ);
        runtime.remove_empty_subdir(PUB_DIR);
    }
    Ok(dir)
}

/// Verify `<runtime>/fifo` and `<runtime>/pub` where they exist, changing
/// nothing in them (before the socket is bound: a live hub's files stay).
pub fn check_dirs(runtime: &SafeDir) -> Result<(), DirError> {
    runtime.subdir(FIFO_DIR, false)?;
    runtime.subdir(PUB_DIR, false)?;
    Ok(())
}

/// Make the FIFO `name` in `dir`, mode 0600, and open it. Every step is
/// relative to the verified directory and never follows a symlink.
fn make_fifo_at(dir: &SafeDir, name: &str) -> Result<OwnedFd, nix::errno::Errno> {
    // A stale FIFO of a client id reused; nothing else is ever removed.
    dir.remove_fifo(name.as_ref());
    nix::unistd::mkfifoat(
        Some(dir.fd().as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o600),
    )?;
    let fd = nix::fcntl::openat(
        Some(dir.fd().as_raw_fd()),
        name,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    );
    let fd = match fd {
        // SAFETY: `openat` just returned this descriptor; we are its only owner.
        Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        Err(e) => {
            dir.remove_fifo(name.as_ref());
            return Err(e);
        }
    };
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO || st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(nix::errno::Errno::EEXIST);
    }
    Ok(fd)
}

/// Hub side: create `<id>.up` (client writes) and `<id>.down` (hub writes).
pub fn offer(peer: &Peer<'_>) -> Result<Offer, SetupError> {
    let dir = SafeDir::open_own(&peer.runtime_dir.join(FIFO_DIR))
        .map_err(|e| SetupError::Permission(e.to_string()))?;
    let make = |name: String| -> Result<(OwnedFd, PlacedFifo), SetupError> {
        let path = dir.path().join(&name);
        let fd = make_fifo_at(&dir, &name).map_err(|e| SetupError::Io {
            what: format!("mkfifo {}", path.display()),
            source: e.into(),
        })?;
        let placed = PlacedFifo {
            dir: dir.path().to_path_buf(),
            name,
        };
        let me = nix::unistd::geteuid();
        if me.as_raw() != peer.uid {
            nix::unistd::fchown(fd.as_raw_fd(), Some(peer.uid.into()), Some(peer.gid.into()))
                .map_err(|e| {
                    SetupError::Permission(format!(
                        "cannot give {} to uid {}: {e} (the hub needs CAP_CHOWN to serve other users over FIFOs)",
                        path.display(),
                        peer.uid
                    ))
                })?;
        }
        Ok((fd, placed))
    };
    // On error the PlacedFifo already made is dropped, removing its FIFO.
    let (up_fd, up) = make(format!("{}.up", peer.id))?;
    let (down_fd, down) = make(format!("{}.down", peer.id))?;
    let welcome = vec![
        ("fifo_up".into(), up.path().display().to_string()),
        ("fifo_down".into(), down.path().display().to_string()),
    ];
    Ok(Offer {
        link: Some(Box::new(FifoLink {
            inner: StreamLink::pair(up_fd, down_fd),
            _files: [up, down],
        })),
        welcome,
        fds: Vec::new(),
    })
}

/// Client side: open the paths named in WELCOME.
pub fn accept(up: &str, down: &str) -> Result<StreamLink, SetupError> {
    let open = |p: &str, flags: OFlag| -> Result<OwnedFd, SetupError> {
        let fd = nix::fcntl::open(
            p,
            flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| SetupError::Io {
            what: format!("open {p}"),
            source: e.into(),
        })?;
        // SAFETY: `open` just returned this descriptor; we are its only owner.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The hub gives both FIFOs to us: one owned by anyone else was put
        // there by someone who could read or forge our traffic.
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| SetupError::Io {
            what: format!("fstat {p}"),
            source: e.into(),
        })?;
        let me = nix::unistd::geteuid().as_raw();
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO || st.st_uid != me {
            return Err(SetupError::Permission(format!(
                "{p} is not a FIFO owned by uid {me} (owner {}); refusing to use it",
                st.st_uid
            )));
        }
        Ok(fd)
    };
    // The hub holds both ends open, so neither open blocks nor fails with ENXIO.
    let down_fd = open(down, OFlag::O_RDONLY)?;
    let up_fd = open(up, OFlag::O_WRONLY)?;
    Ok(StreamLink::pair(down_fd, up_fd))
}

/// Create the publish FIFO for `channel` at `<runtime>/pub/<channel>`
/// (levels become directories), mode `mode`, group `gid`. Channel names
/// have no `.`, `..` or empty levels, so the path cannot leave `pub/`; each
/// level is a directory the hub owns, made and opened relative to the one
/// above without following symlinks, and the mode is set on the open FIFO.
pub fn publish_fifo(
    runtime_dir: &Path,
    channel: &str,
    mode: u32,
    gid: u32,
) -> Result<(OwnedFd, PlacedFifo), DirError> {
    let invalid = |m: String| DirError::Io {
        path: runtime_dir.join(PUB_DIR).join(channel),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, m),
    };
    crate::wire::channel::validate_name(channel).map_err(|e| invalid(e.to_string()))?;
    let runtime = SafeDir::runtime(runtime_dir)?;
    let mut dir = runtime
        .subdir(PUB_DIR, true)?
        .expect("subdir(create) yields the directory");
    let (levels, leaf) = channel
        .rsplit_once('/')
        .map_or(("", channel), |(a, b)| (a, b));
    for level in levels.split('/').filter(|l| !l.is_empty()) {
        dir = dir
            .subdir(level, true)?
            .expect("subdir(create) yields the directory");
    }
    let path = dir.path().join(leaf);
    let io = |e: nix::errno::Errno| DirError::Io {
        path: path.clone(),
        source: e.into(),
    };
    let fd = make_fifo_at(&dir, leaf).map_err(io)?;
    let placed = PlacedFifo {
        dir: dir.path().to_path_buf(),
        name: leaf.to_string(),
    };
    // The group is `[fifo] publish_group` (or the hub's), whatever the
    // directory: the access check of `publish_mode` (config.rs) counts on it.
    nix::unistd::fchown(fd.as_raw_fd(), None, Some(gid.into())).map_err(io)?;
    // On the descriptor, after mkfifo: the umask must not narrow the mode.
    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(io)?;
    Ok((fd, placed))
}

/// Remove the publish FIFO directory tree (FIFOs and the directories made
/// for channel levels), leaving anything else in place. A `dir` that is not
/// the hub's own directory is left alone.
pub fn remove_publish_dir(dir: &Path) {
    if let Ok(d) = SafeDir::open_own(dir) {
        d.remove_fifo_tree();
        drop(d);
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client never uses a FIFO someone else owns: whoever made it could
    /// read or forge its traffic.
    #[test]
    fn the_client_refuses_fifos_it_does_not_own() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path().join("1.up");
        let down = dir.path().join("1.down");
        for p in [&up, &down] {
            nix::unistd::mkfifo(p.as_path(), Mode::from_bits_truncate(0o666)).unwrap();
        }
        // Hold a reader on `up` so the client's O_WRONLY open succeeds.
        let _r = nix::fcntl::open(
            up.as_path(),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 65534 { 65533 } else { 65534 };
        // Like the other multi-user tests, this one runs as root.
        let chown = |p: &Path, uid: u32| nix::unistd::chown(p, Some(uid.into()), None).unwrap();
        chown(&down, other);
        let e = accept(up.to_str().unwrap(), down.to_str().unwrap())
            .err()
            .expect("a foreign FIFO was accepted");
        assert!(e.to_string().contains("not a FIFO owned by uid"), "{e}");
        chown(&down, me);
        accept(up.to_str().unwrap(), down.to_str().unwrap()).unwrap();
    }
}
