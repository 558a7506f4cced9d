//! SIGTERM under systemd with an fd store: the hand-over of SIGUSR2, into
//! systemd's file descriptor store instead of an exec (`daemon/fdstore.rs`).

use tracing::{info, warn};

use super::EventLoop;
use crate::daemon::{fdstore, systemd};

impl EventLoop {
    /// Export every client that can be kept (as for SIGUSR2) and leave
    /// them, with the state, in systemd's fd store. The caller then stops
    /// as usual (`shutdown`), which finds only the clients not kept. If
    /// the store refuses, the kept clients' connections close when the
    /// process exits and their libraries reconnect, as after any stop.
    pub(super) fn stop_into_fdstore(&mut self) {
        let Some(capacity) = fdstore::capacity() else {
            return;
        };
        systemd::stopping();
        info!("stopping: handing the clients over to systemd's fd store");
        let mut state = self.export_state();
        match fdstore::stash(&mut state, capacity) {
            Ok(kept) => {
                info!(
                    clients = kept,
                    "clients and state left in the fd store for the next start"
                );
                // The socket file stays: the store holds its socket.
                if state.unlink_on_exit.is_some() {
                    self.opts.unlink_on_exit = None;
                }
            }
            Err(e) => warn!("could not use the fd store, clients reconnect: {e}"),
        }
    }
}
