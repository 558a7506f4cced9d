//! `ipchubctl`: the command-line front end of an ipchub hub, built on the
//! client library, and its live web dashboard.
//!
//! - [`cli`], the commands (`pub`, `sub`, `req`, `reply`, `history`,
//!   `stats`, `dashboard`), their output formats and exit codes;
//! - [`dashboard`], `ipchubctl dashboard`: HTTP, server-sent events and
//!   Prometheus metrics from the hub's statistics.

#![forbid(unsafe_code)]

use ipchub_client as client;
use ipchub_daemon::{config, daemon};
use ipchub_wire as wire;

pub mod cli;
pub mod dashboard;
