//! ipchub's OS layer: the objects a client's frames travel through.
//!
//! - [`shm`], shared-memory rings and their wake-up notifiers;
//! - [`transport`], the five transports (socket, pipe, FIFO, POSIX message
//!   queue, shared memory) behind one [`transport::Link`] contract;
//! - [`queue`], the bounded output queue both ends write frames into;
//! - [`paths`], the runtime directory, opened without following links;
//! - [`sys`], safe wrappers over the descriptor operations the daemon and the
//!   tools need (descriptors received over SCM_RIGHTS or inherited across
//!   exec, per-process limits);
//! - [`crc`], CRC-32C by the CPU's instruction (the disk log's checksums).
//!
//! This crate is where the project's `unsafe` code lives (every other crate
//! is `#![forbid(unsafe_code)]`): each block carries a `// SAFETY:` comment,
//! and the shared-memory code never trusts the other process (see [`shm`]).

pub use ipchub_wire as wire;

pub mod crc;
pub mod paths;
pub mod queue;
pub mod shm;
pub mod sys;
pub mod transport;
