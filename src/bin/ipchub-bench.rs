//! `ipchub-bench`: shim over [`ipchub::bench`].

fn main() -> std::process::ExitCode {
    ipchub::bench::main()
}
