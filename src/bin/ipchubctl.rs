//! `ipchubctl`: shim over [`ipchub::cli::ctl`].
use clap::Parser;

fn main() {
    match ipchub::cli::ctl::main_with(ipchub::cli::ctl::Args::parse()) {
        Ok(code) => std::process::exit(code),
        // `ipchubctl sub | head -1`: the reader went away; nothing to report.
        Err(e) if ipchub::cli::ctl::is_broken_pipe(&e) => std::process::exit(0),
        Err(e) => {
            eprintln!("ipchubctl: {e:#}");
            std::process::exit(1);
        }
    }
}
