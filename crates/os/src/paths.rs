//! Where the hub's socket and runtime files live, resolved the same way by
//! the daemon and every client.
//!
//! Order: an explicit `--socket PATH`, then `IPCHUB_SOCKET`, then
//! `/run/ipchub/ipchub.sock` for root, else `$XDG_RUNTIME_DIR/ipchub/ipchub.sock`
//! (so a user can run a private hub without privileges).

use std::path::{Path, PathBuf};

pub const SYSTEM_RUNTIME_DIR: &str = "/run/ipchub";
pub const SOCKET_NAME: &str = "ipchub.sock";
pub const SOCKET_ENV: &str = "IPCHUB_SOCKET";

/// Resolve the control socket path a client connects to: as the daemon
/// does, except that a user without a hub of their own in
/// `$XDG_RUNTIME_DIR/ipchub/` reaches the system hub in `/run/ipchub/`.
pub fn client_socket_path(explicit: Option<&Path>) -> PathBuf {
    let p = socket_path(explicit);
    if explicit.is_some()
        || std::env::var_os(SOCKET_ENV).is_some_and(|v| !v.is_empty())
        || p.exists()
    {
        return p;
    }
    PathBuf::from(SYSTEM_RUNTIME_DIR).join(SOCKET_NAME)
}

/// Resolve the control socket path the daemon binds.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_runtime_dir().join(SOCKET_NAME)
}

/// `/run/ipchub` for root, `$XDG_RUNTIME_DIR/ipchub` otherwise (falling back
/// to `/run/ipchub` when XDG_RUNTIME_DIR is unset, e.g. under su).
pub fn default_runtime_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(SYSTEM_RUNTIME_DIR);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(x) => PathBuf::from(x).join("ipchub"),
        None => PathBuf::from(SYSTEM_RUNTIME_DIR),
    }
}

/// The runtime directory that belongs with a socket: its parent. FIFOs live
/// under `<dir>/fifo` and `<dir>/pub`, so a test hub on a temporary socket
/// keeps all its files in its own directory.
pub fn runtime_dir_for(socket: &Path) -> PathBuf {
    socket
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Why a directory is not fit to hold the hub's files. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is a symbolic link or not a directory; refusing to use it for the hub's files"
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by the hub's uid {me}{also}; refusing to use it: \
         its owner could replace the hub's files in it"
    )]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        me: u32,
        /// ", nor root" where root is trusted too (the directories above).
        also: &'static str,
    },
    #[error(
        "{path} is writable by others (mode {mode:04o}){what}; refusing to use it: anyone could \
         replace the hub's files in it"
    )]
    WritableByOthers {
        path: PathBuf,
        mode: u32,
        /// " without the sticky bit" for the directories above.
        what: &'static str,
    },
}

/// A directory the hub verified, held open: everything the hub creates or
/// removes in it is done relative to this descriptor (`*at` calls, never
/// following a symlink), so a name swapped in the path afterwards cannot
/// redirect it.
///
/// The runtime directory and every directory above it must be owned by
/// root or the hub's uid and, if others may write them, sticky (like
/// `/tmp`: others cannot rename or remove what is not theirs). The hub's
/// own subdirectories (`fifo/`, `pub/` and the channel levels under it) must
/// be owned by the hub's uid and writable by nobody else, so every entry in
/// them was made by the hub.
#[derive(Debug)]
pub struct SafeDir {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

/// Open a directory for reading, never through a symlink.
const DIR_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_RDONLY
    .union(nix::fcntl::OFlag::O_DIRECTORY)
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_CLOEXEC);

fn own_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: callers pass a descriptor `open`/`openat` just returned, which
    // nothing else owns.
    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

impl SafeDir {
    /// Open (creating it, mode 0755, if missing) the runtime directory
    /// `path` and verify it and every directory above it.
    pub fn runtime(path: &Path) -> Result<SafeDir, DirError> {
        use nix::fcntl::OFlag;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let io = |path: &Path, source: std::io::Error| DirError::Io {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::create_dir_all(path).map_err(|e| io(path, e))?;
            // Clients must reach the socket and their FIFOs below it.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        }
        // Symlinks the administrator made (/var/run -> /run) are resolved
        // once here; the walk below then follows none.
        let canon = path.canonicalize().map_err(|e| io(path, e))?;
        let root = nix::fcntl::open(
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io(Path::new("/"), e.into()))?;
        let mut dir = SafeDir {
            fd: own_fd(root),
            path: PathBuf::from("/"),
        };
        dir.check_trusted()?;
        for comp in canon.components().skip(1) {
            let next = dir.path.join(comp);
            let fd = nix::fcntl::openat(
                Some(dir.fd.as_raw_fd()),
                comp.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| match e {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                    DirError::NotADirectory { path: next.clone() }
                }
                e => io(&next, e.into()),
            })?;
            dir = SafeDir {
                fd: own_fd(fd),
                path: next,
            };
            dir.check_trusted()?;
        }
        // The walk used O_PATH descriptors; the runtime directory itself is
        // reopened for reading, through the verified descriptor.
        let fd = nix::fcntl::openat(
            Some(dir.fd.as_raw_fd()),
            ".",
            DIR_FLAGS,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io(&dir.path, e.into()))?;
        Ok(SafeDir {
            fd: own_fd(fd),
            path: canon,
        })
    }

    /// Open an existing directory the hub made, e.g. `<runtime>/fifo`, for
    /// one operation: the last component is not followed if a symlink, and
    /// the directory must be the hub's own and private.
    pub fn open_own(path: &Path) -> Result<SafeDir, DirError> {
        let fd =
            nix::fcntl::open(path, DIR_FLAGS, nix::sys::stat::Mode::empty()).map_err(
                |e| match e {
                    nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                        DirError::NotADirectory {
                            path: path.to_path_buf(),
                        }
                    }
                    e => DirError::Io {
                        path: path.to_path_buf(),
                        source: e.into(),
                    },
                },
            )?;
        let d = SafeDir {
            fd: own_fd(fd),
            path: path.to_path_buf(),
        };
        d.check_own()?;
        Ok(d)
    }

    /// The subdirectory `name` (one path component), created if missing and
    /// `create` (and then made mode 0755); `None` if missing and not
    /// `create`. It must be a real directory owned by the hub's uid that
    /// nobody else may write.
    pub fn subdir(&self, name: &str, create: bool) -> Result<Option<SafeDir>, DirError> {
        use std::os::fd::AsRawFd;
        let path = self.path.join(name);
        let io = |source: nix::errno::Errno| DirError::Io {
            path: path.clone(),
            source: source.into(),
        };
        if create {
            match nix::sys::stat::mkdirat(
                Some(self.fd.as_raw_fd()),
                name,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(io(e)),
            }
        }
        let fd = match nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            DIR_FLAGS,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) if !create => return Ok(None),
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                return Err(DirError::NotADirectory { path })
            }
            Err(e) => return Err(io(e)),
        };
        let d = SafeDir {
            fd: own_fd(fd),
            path: path.clone(),
        };
        let mode = d.check_own()?;
        // Clients must reach their FIFOs below it; the umask may have
        // narrowed mkdirat's mode. fchmod acts on the verified directory.
        if create && mode & 0o777 != 0o755 {
            nix::sys::stat::fchmod(
                d.fd.as_raw_fd(),
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            )
            .map_err(io)?;
        }
        Ok(Some(d))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Root or the hub's uid owns it; if others may write it, it is sticky.
    fn check_trusted(&self) -> Result<(), DirError> {
        use std::os::fd::AsRawFd;
        let st = nix::sys::stat::fstat(self.fd.as_raw_fd()).map_err(|e| DirError::Io {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != 0 && st.st_uid != me {
            return Err(DirError::ForeignOwner {
                path: self.path.clone(),
                owner: st.st_uid,
                me,
                also: ", nor root",
            });
        }
        if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
            return Err(DirError::WritableByOthers {
                path: self.path.clone(),
                mode: st.st_mode & 0o7777,
                what: " without the sticky bit",
            });
        }
        Ok(())
    }

    /// The hub's uid owns it and nobody else may write it. Returns the mode.
    fn check_own(&self) -> Result<u32, DirError> {
        use std::os::fd::AsRawFd;
        let st = nix::sys::stat::fstat(self.fd.as_raw_fd()).map_err(|e| DirError::Io {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me {
            return Err(DirError::ForeignOwner {
                path: self.path.clone(),
                owner: st.st_uid,
                me,
                also: "",
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(DirError::WritableByOthers {
                path: self.path.clone(),
                mode: st.st_mode & 0o7777,
                what: "",
            });
        }
        Ok(st.st_mode)
    }

    /// The names of the entries, without `.` and `..`.
    fn entries(&self) -> Vec<std::ffi::OsString> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let Ok(mut d) = nix::dir::Dir::openat(
            Some(self.fd.as_raw_fd()),
            ".",
            DIR_FLAGS,
            nix::sys::stat::Mode::empty(),
        ) else {
            return Vec::new();
        };
        d.iter()
            .flatten()
            .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect()
    }

    /// What `name` is, not following a symlink.
    fn kind(&self, name: &std::ffi::OsStr) -> Option<nix::sys::stat::SFlag> {
        use std::os::fd::AsRawFd;
        let st = nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        Some(nix::sys::stat::SFlag::from_bits_truncate(
            st.st_mode & nix::sys::stat::SFlag::S_IFMT.bits(),
        ))
    }

    /// Remove `name` if it is a FIFO (never anything else, never through a
    /// symlink). Whoever owns it: the hub gives client FIFOs to their
    /// clients, and only the hub can create entries in its own directories.
    pub fn remove_fifo(&self, name: &std::ffi::OsStr) -> bool {
        use std::os::fd::AsRawFd;
        self.kind(name) == Some(nix::sys::stat::SFlag::S_IFIFO)
            && nix::unistd::unlinkat(
                Some(self.fd.as_raw_fd()),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .is_ok()
    }

    /// Remove the FIFOs directly in this directory; returns how many.
    pub fn remove_fifos(&self) -> usize {
        self.entries()
            .iter()
            .filter(|n| self.remove_fifo(n))
            .count()
    }

    /// Remove the FIFOs in this directory and in the subdirectories the hub
    /// owns below it, and those subdirectories once empty. Symlinks and
    /// anything else stay.
    pub fn remove_fifo_tree(&self) {
        use std::os::fd::AsRawFd;
        for name in self.entries() {
            match self.kind(&name) {
                Some(nix::sys::stat::SFlag::S_IFIFO) => {
                    self.remove_fifo(&name);
                }
                Some(nix::sys::stat::SFlag::S_IFDIR) => {
                    if let Some(Ok(Some(sub))) = name.to_str().map(|n| self.subdir(n, false)) {
                        sub.remove_fifo_tree();
                        let _ = nix::unistd::unlinkat(
                            Some(self.fd.as_raw_fd()),
                            name.as_os_str(),
                            nix::unistd::UnlinkatFlags::RemoveDir,
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Remove the empty subdirectory `name` (not through a symlink).
    pub fn remove_empty_subdir(&self, name: &str) {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        );
    }
}
