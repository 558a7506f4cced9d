//! Log output: the journal when stderr is connected to it, plain text otherwise.
//!
//! systemd sets `JOURNAL_STREAM=dev:inode` for a service whose stderr goes to
//! the journal; when it matches our stderr we log natively (structured fields
//! such as `client_pid` become journal fields). Otherwise plain text, with
//! colours only on a terminal.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd().as_raw_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Install the global subscriber. `level` is the config's `log.level`;
/// `IPCHUB_LOG` overrides it with any tracing filter.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_env("IPCHUB_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(false),
        )
        .try_init();
}
