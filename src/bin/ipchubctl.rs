//! `ipchubctl`: shim over [`ipchub::cli::ctl`].
use clap::Parser;

fn main() {
    match ipchub::cli::ctl::main_with(ipchub::cli::ctl::Args::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ipchubctl: {e:#}");
            std::process::exit(1);
        }
    }
}
