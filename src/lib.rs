//! ipchub: a local publish/subscribe hub for Linux.
//!
//! The layers, bottom to top (dependencies point downward only):
//! - [`wire`], frames and channel names, pure;
//! - [`config`], the typed configuration tree;
//! - [`hub`], the routing core (peers, subscriptions, bounded queues), no I/O;
//! - [`transport`], the OS objects a peer's bytes travel through;
//! - [`daemon`], the event loop and the systemd edge (`ipchubd`);
//! - [`dbus`], the D-Bus control and statistics edge (its own thread);
//! - [`client`], the client library every tool uses;
//! - [`bridge`], bridges to other systems (MQTT), ordinary clients of the hub;
//! - [`cli`], `ipchubctl`;
//! - [`mod@bench`], `ipchub-bench`: transports against raw mechanisms and peers.

pub mod bench;
pub mod bridge;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod dbus;
pub mod hub;
pub mod paths;
pub mod shm;
pub mod store;
pub mod transport;
pub mod wire;
