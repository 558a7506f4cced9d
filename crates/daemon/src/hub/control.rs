//! Control operations: one meaning, many marshallings.
//!
//! The D-Bus interface, the MQTT bridge's status and any future control
//! surface translate to and from these types; the data thread executes them
//! (see `daemon::control`), so no other thread ever touches hub state.

use std::collections::BTreeMap;

use super::{ClientId, HubStats, Viewer};

/// A request from a control thread to the data thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// Full statistics snapshot (for the control thread's own use, e.g.
    /// what D-Bus broadcasts is filtered from it by `StatsFor`).
    Stats,
    /// A statistics snapshot showing only what `Viewer` may see.
    StatsFor(Viewer),
    /// Publish as the hub itself (origin 0); replies with the delivery count.
    Publish {
        channel: String,
        payload: Vec<u8>,
        priority: u8,
    },
    /// Disconnect a client, as if it had gone away.
    DisconnectClient(ClientId),
    /// Re-read the configuration file (as SIGHUP does).
    Reload,
    /// A component (e.g. `bridge.mqtt`) reports its state; it shows in
    /// statistics under `components` until replaced (an empty status
    /// removes it).
    SetStatus {
        component: String,
        status: BTreeMap<String, String>,
    },
}

/// The data thread's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    Stats(Box<HubStats>),
    Published(u32),
    Done,
    /// The operation failed; the text says why, for the caller to pass on.
    Failed(String),
}

/// Things control threads may want to announce (D-Bus signals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    ClientConnected {
        id: ClientId,
        transport: String,
        pid: i32,
        uid: u32,
    },
    ClientDisconnected {
        id: ClientId,
    },
    ChannelCreated(String),
    ChannelRemoved(String),
}
