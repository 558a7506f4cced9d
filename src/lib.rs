//! ipchub: a local publish/subscribe hub for Linux — the programs.
//!
//! This package builds `ipchubd`, `ipchubctl` and `ipchub-bench` and holds
//! the integration tests. The code lives in the workspace's layer crates
//! (docs/ARCHITECTURE.md), re-exported here under the module names the
//! tests and the fuzz targets use:
//! - [`wire`] ([`ipchub_wire`]), frames and channel names, pure;
//! - [`shm`], [`transport`], [`paths`], [`queue`] ([`ipchub_os`]), the OS
//!   objects bytes travel through, and the project's only unsafe code;
//! - [`client`] ([`ipchub_client`]), the client library;
//! - [`hub`], [`config`], [`daemon`], [`dbus`], [`bridge`], [`store`]
//!   ([`ipchub_daemon`]), the daemon;
//! - [`cli`], [`dashboard`] ([`ipchub_ctl`]), `ipchubctl`;
//! - [`mod@bench`] ([`ipchub_bench`]), `ipchub-bench`.

#![forbid(unsafe_code)]

pub use ipchub_bench as bench;
pub use ipchub_bench;
pub use ipchub_client as client;
pub use ipchub_client;
pub use ipchub_ctl;
pub use ipchub_ctl::{cli, dashboard};
pub use ipchub_daemon;
pub use ipchub_daemon::{bridge, config, daemon, dbus, hub, store};
pub use ipchub_os;
pub use ipchub_os::{paths, queue, shm, transport};
pub use ipchub_wire as wire;
pub use ipchub_wire;
