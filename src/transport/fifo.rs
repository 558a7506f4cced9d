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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::stream::StreamLink;
use super::{Link, Offer, Peer, ReadOutcome, SetupError};
use crate::hub::queue::OutQueue;

/// Subdirectory of the runtime directory holding per-client FIFOs.
pub const FIFO_DIR: &str = "fifo";
/// Subdirectory holding the per-channel publish FIFOs.
pub const PUB_DIR: &str = "pub";

/// The hub's side: a stream link that removes its files when dropped.
pub struct FifoLink {
    inner: StreamLink,
    paths: [PathBuf; 2],
}

impl Drop for FifoLink {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
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
}

/// Create the FIFO directory and remove leftovers of a hub that was killed.
pub fn prepare_dir(runtime_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = runtime_dir.join(FIFO_DIR);
    std::fs::create_dir_all(&dir)?;
    // Clients must reach their own FIFOs; the 0600 mode of each protects it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    remove_publish_dir(&runtime_dir.join(PUB_DIR));
    Ok(dir)
}

fn make_fifo(path: &Path, peer: &Peer<'_>) -> Result<OwnedFd, SetupError> {
    let io = |what: &str, e: nix::errno::Errno| SetupError::Io {
        what: format!("{what} {}", path.display()),
        source: e.into(),
    };
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)).map_err(|e| io("mkfifo", e))?;
    // O_NOFOLLOW: never open through a symlink planted in the directory.
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| io("open", e))?;
    // SAFETY: `open` just returned this descriptor; we are its only owner.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let me = nix::unistd::geteuid();
    if me.as_raw() != peer.uid {
        nix::unistd::fchown(fd.as_raw_fd(), Some(peer.uid.into()), Some(peer.gid.into())).map_err(|e| {
            let _ = std::fs::remove_file(path);
            SetupError::Permission(format!(
                "cannot give {} to uid {}: {e} (the hub needs CAP_CHOWN to serve other users over FIFOs)",
                path.display(),
                peer.uid
            ))
        })?;
    }
    Ok(fd)
}

/// Hub side: create `<id>.up` (client writes) and `<id>.down` (hub writes).
pub fn offer(peer: &Peer<'_>) -> Result<Offer, SetupError> {
    let dir = peer.runtime_dir.join(FIFO_DIR);
    let up = dir.join(format!("{}.up", peer.id));
    let down = dir.join(format!("{}.down", peer.id));
    let up_fd = make_fifo(&up, peer)?;
    let down_fd = match make_fifo(&down, peer) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = std::fs::remove_file(&up);
            return Err(e);
        }
    };
    let welcome = vec![
        ("fifo_up".into(), up.display().to_string()),
        ("fifo_down".into(), down.display().to_string()),
    ];
    Ok(Offer {
        link: Some(Box::new(FifoLink {
            inner: StreamLink::pair(up_fd, down_fd),
            paths: [up, down],
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
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    // The hub holds both ends open, so neither open blocks nor fails with ENXIO.
    let down_fd = open(down, OFlag::O_RDONLY)?;
    let up_fd = open(up, OFlag::O_WRONLY)?;
    Ok(StreamLink::pair(down_fd, up_fd))
}

/// Create the publish FIFO for `channel` at `<dir>/<channel>` (levels become
/// directories). Channel names cannot contain `..` or empty levels, so the
/// path cannot leave `dir`; a symlink planted in the way is refused.
pub fn publish_fifo(dir: &Path, channel: &str, mode: u32) -> std::io::Result<(OwnedFd, PathBuf)> {
    crate::wire::channel::validate_name(channel)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let path = dir.join(channel);
    let parent = path.parent().expect("inside dir");
    std::fs::create_dir_all(parent)?;
    let mut d = parent.to_path_buf();
    while d.starts_with(dir) {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        if !d.pop() {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))?;
    // chmod after mkfifo: the umask must not narrow the configured mode.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    let fd = nix::fcntl::open(
        &path,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor; we are its only owner.
    Ok((
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        path,
    ))
}

/// Remove the publish FIFO directory tree (FIFOs and the directories made
/// for channel levels), leaving anything else in place.
pub fn remove_publish_dir(dir: &Path) {
    fn walk(d: &Path) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&p),
                    Ok(t) if std::os::unix::fs::FileTypeExt::is_fifo(&t) => {
                        let _ = std::fs::remove_file(&p);
                    }
                    _ => {}
                }
            }
        }
        let _ = std::fs::remove_dir(d);
    }
    walk(dir);
}
