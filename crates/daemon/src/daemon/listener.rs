//! Obtaining the listening socket: from systemd, or bound by the daemon.
//!
//! Binding by hand must never steal a live hub's socket: an existing path is
//! probed with `connect`; if a hub answers we refuse to start, if nothing
//! listens (ECONNREFUSED: a hub that died) the stale file is replaced.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another ipchubd is already running on {0} (refusing to take over its socket)")]
    InUse(PathBuf),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create runtime directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Bind `path`, replacing a stale socket file left by a dead hub.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| ListenError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ListenError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(ListenError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing stale socket of a hub that is gone");
                    let _ = std::fs::remove_file(path);
                }
                Err(e) => {
                    return Err(ListenError::Bind {
                        path: path.to_path_buf(),
                        source: e,
                    })
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ListenError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let l = UnixListener::bind(path).map_err(|source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    // Everyone may connect; who may do what is decided per client from its
    // kernel credentials, not by the socket's mode.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Ok(l)
}
