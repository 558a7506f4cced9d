//! `ipchubd`: shim over [`ipchub::daemon`].

#![forbid(unsafe_code)]
use clap::Parser;

fn main() {
    if let Err(e) = ipchub::daemon::main_with(ipchub::daemon::Args::parse()) {
        eprintln!("ipchubd: {e:#}");
        std::process::exit(1);
    }
}
