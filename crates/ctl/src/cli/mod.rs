//! Command-line front ends built on the client library.

pub mod ctl;
pub mod format;
pub mod history;
pub mod reqrep;
