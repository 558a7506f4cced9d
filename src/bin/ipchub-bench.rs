//! `ipchub-bench`: shim over [`ipchub::bench`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ipchub::bench::main()
}
