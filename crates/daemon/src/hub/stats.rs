//! Statistics snapshots: what `ipchubctl stats`, the STATS_REPLY frame and the
//! D-Bus interface report. One serde schema serves all three.
//!
//! Every snapshot is built for a [`Viewer`] (`Hub::stats_for`, the one place
//! that decides what a requester may see): the control socket passes the
//! requesting client's credentials, D-Bus those the bus reports for the
//! caller, and what D-Bus broadcasts is built for [`Viewer::Public`].

use super::access::Credentials;

/// Who a statistics snapshot is for, and so what it may show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Root, the hub's own uid (and on D-Bus group `ipchub`): everything.
    All,
    /// One local user: the channels its credentials may subscribe to under
    /// the `[access]` rules, and its own clients (same uid).
    User(Credentials),
    /// Anyone at all (what D-Bus broadcasts in properties and signals):
    /// channels every uid may subscribe to, and no clients.
    Public,
}

impl Viewer {
    /// The viewer for a requester with these kernel credentials, asking a
    /// hub that runs as `hub_uid`. Root and the hub's own uid could read
    /// the hub's memory anyway; they see everything.
    pub fn of(creds: &Credentials, hub_uid: u32) -> Viewer {
        if creds.uid == 0 || creds.uid == hub_uid {
            Viewer::All
        } else {
            Viewer::User(creds.clone())
        }
    }
}

pub use crate::wire::stats::{ChannelStats, ClientStats, HubStats, Totals, TransportStats};

/// Payload bytes in and out, as the hub counts them per transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportBytes {
    pub bytes_in: u64,
    pub bytes_out: u64,
}
