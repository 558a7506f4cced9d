//! Shared memory: the rings and wake-up notifiers behind the `shm` transport.
//!
//! Contract of this module (everything else in ipchub is safe code):
//! - a [`ring::Ring`] is single-producer single-consumer between two
//!   processes, carries variable-size records, and never trusts the peer:
//!   every value read from shared memory is validated, a violation is
//!   [`ring::RingError::Corrupt`], never undefined behaviour;
//! - wake-ups cost nothing while streaming: a side that is about to sleep
//!   records what it waits for, and the other side writes the [`notify::Notifier`]
//!   (an eventfd, so it can be polled with sockets) only when that wait is
//!   satisfied; the memory-ordering argument is at the top of `ring.rs`;
//! - the memory is a sealed memfd passed over SCM_RIGHTS: no name in /dev/shm.

pub mod bring;
mod memfd;
pub mod notify;
pub mod ring;

pub use notify::Notifier;
pub use ring::{Ring, RingError};
