//! Command-line front ends built on the client library.

pub mod ctl;
pub mod history;
