//! The ipchub daemon, `ipchubd`, as a library.
//!
//! The layers inside it, bottom to top (dependencies point downward only):
//! - [`config`], the typed configuration tree;
//! - [`store`], the on-disk segment log of channel history;
//! - [`hub`], the routing core (peers, subscriptions, bounded queues), no I/O;
//! - [`daemon`], the event loop and the systemd edge;
//! - [`dbus`], the D-Bus control and statistics edge (its own thread);
//! - [`bridge`], bridges to other systems (MQTT), ordinary clients of the hub.
//!
//! Below it: `ipchub-wire` (frames), `ipchub-os` (transports, shared
//! memory) and `ipchub-client` (the bridge's hub side).

#![forbid(unsafe_code)]

pub use ipchub_client as client;
pub use ipchub_os::{paths, shm, transport};
pub use ipchub_wire as wire;

pub mod bridge;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod hub;
pub mod store;
pub mod supervise;
