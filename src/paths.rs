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
