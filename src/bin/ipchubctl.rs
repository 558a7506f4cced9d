//! `ipchubctl`: shim over [`ipchub::cli::ctl`].

#![forbid(unsafe_code)]
use clap::Parser;
use ipchub::cli::ctl;

fn main() {
    match ctl::main_with(ctl::Args::parse()) {
        Ok(code) => std::process::exit(code),
        // `ipchubctl sub | head -1`: the reader went away; nothing to report.
        Err(e) if ctl::is_broken_pipe(&e) => std::process::exit(ctl::exit::OK),
        Err(e) => {
            eprintln!("ipchubctl: {}", ctl::describe(&e));
            std::process::exit(ctl::exit_code(&e));
        }
    }
}
