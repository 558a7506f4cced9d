//! The systemd edge: socket activation, readiness, status and watchdog.
//!
//! Every call into sd-notify lives here, so the rest of the daemon runs the
//! same with or without a service manager (all of these are no-ops when the
//! environment does not name one).

use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;

/// A descriptor passed by the service manager, with its `FileDescriptorName=`.
pub struct PassedFd {
    pub fd: OwnedFd,
    pub name: String,
}

/// Take the descriptors systemd passed (LISTEN_FDS), clearing the variables
/// so children do not inherit them. Must run before any thread starts
/// (it edits the environment).
pub fn take_listen_fds() -> std::io::Result<Vec<PassedFd>> {
    let fds = sd_notify::listen_fds_with_names(true)?;
    fds.map(|(raw, name): (RawFd, String)| {
        // systemd passed this descriptor to us and nothing else in the
        // process knows it yet (LISTEN_FDS was just cleared).
        let fd = ipchub_os::sys::claim_inherited(raw)?;
        Ok(PassedFd { fd, name })
    })
    .collect::<std::io::Result<Vec<_>>>()
}

/// Whether a service manager listens for our notifications.
pub fn notify_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

pub fn reloading() {
    let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
}

pub fn reloaded(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(
        false,
        &[NotifyState::Stopping, NotifyState::Status("shutting down")],
    );
}

pub fn watchdog_ping() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// How often to ping the watchdog (half its timeout), if one is set.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
