//! `ipchubctl dashboard`: a live web page and a Prometheus `/metrics` endpoint.
//!
//! The dashboard is an ordinary hub client running as the user who starts
//! it, so the hub's per-requester filtering of statistics and its `[access]`
//! rules decide what it shows. It polls the hub only while a page is open
//! (server-sent events) or `/metrics` is scraped, reconnects when the hub
//! restarts, and serves every asset from the binary (no internet needed).
//!
//! Listeners: TCP (loopback unless `--allow-remote`; a random token is
//! required unless `--no-token`) or a UNIX socket (`unix:PATH`, mode 0600,
//! the file permissions being the access control).

mod metrics;
mod sample;
mod server;
mod tail;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

pub use metrics::render as render_metrics;

/// Default TCP listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9178";

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(
        "invalid --listen '{0}': expected HOST:PORT (e.g. 127.0.0.1:9178, [::1]:9178) or unix:PATH"
    )]
    BadListen(String),
    #[error("refusing to listen on non-loopback address {0}: anyone who can reach it could try the token; pass --allow-remote to do so anyway")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is empty or holds characters other than A-Z a-z 0-9 - _ .")]
    BadToken(PathBuf),
    #[error("token file {0} is readable by other users (chmod 0600 or 0640)")]
    TokenFileOpen(PathBuf),
    #[error("cannot get random bytes for the token: {0}")]
    Random(std::io::Error),
    #[error("--no-token and --token-file exclude each other")]
    TokenConflict,
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = DashboardError;
    fn from_str(s: &str) -> Result<Listen, DashboardError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(DashboardError::BadListen(s.into()));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(Listen::Tcp)
            .map_err(|_| DashboardError::BadListen(s.into()))
    }
}

/// `ipchubctl dashboard` options.
#[derive(Debug, Clone, ClapArgs)]
pub struct DashboardArgs {
    /// Where to serve: HOST:PORT (loopback unless --allow-remote; port 0
    /// picks a free one) or unix:PATH (a socket of mode 0600, no token).
    #[arg(long, short = 'l', value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Accept a TCP address that is not loopback (e.g. 0.0.0.0:9178). The
    /// dashboard shows what its user may see to whoever has the token.
    #[arg(long)]
    pub allow_remote: bool,
    /// Serve TCP without a token: any local user (of any uid) can then read
    /// what this user may see.
    #[arg(long)]
    pub no_token: bool,
    /// Read the token from this file (not readable by others) instead of
    /// making a random one; it is then not printed. For the service and a
    /// Prometheus `bearer_token_file`.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Seconds between two snapshots while a page is open.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// /metrics labels at most this many channels (most published first);
    /// the rest are summed under channel="(other)".
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub metrics_top_channels: usize,
    /// A subscriber with at least this many queued messages is shown as slow
    /// (as is any that missed messages).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub slow_queue: usize,
    /// Payload bytes shown per tailed message; longer ones are cut.
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub tail_max_bytes: u32,
    /// Messages per second sent to the page per tail; the rest are counted
    /// as skipped.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub tail_rate: u32,
    /// Open pages and tails at most (each holds a connection; a tail also a
    /// hub subscription).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_streams: u32,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if !(0.1..=3600.0).contains(&v) {
        return Err("must be between 0.1 and 3600 seconds".into());
    }
    Ok(v)
}

/// Settings the server runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: Option<PathBuf>,
    pub listen: Listen,
    pub token: Option<String>,
    /// The token came from --token-file (so it is not printed).
    pub token_from_file: bool,
    pub interval: Duration,
    pub top_channels: usize,
    pub slow_queue: usize,
    pub tail_max_bytes: usize,
    pub tail_rate: u32,
    pub max_streams: usize,
}

impl Settings {
    pub fn from_args(
        socket: Option<PathBuf>,
        a: &DashboardArgs,
    ) -> Result<Settings, DashboardError> {
        let listen: Listen = a.listen.parse()?;
        if let Listen::Tcp(addr) = &listen {
            if !addr.ip().is_loopback() && !a.allow_remote {
                return Err(DashboardError::NotLoopback(*addr));
            }
        }
        if a.no_token && a.token_file.is_some() {
            return Err(DashboardError::TokenConflict);
        }
        let token = match (&listen, &a.token_file) {
            (_, Some(path)) => Some(read_token_file(path)?),
            (Listen::Unix(_), None) => None,
            (Listen::Tcp(_), None) if a.no_token => None,
            (Listen::Tcp(_), None) => Some(random_token()?),
        };
        Ok(Settings {
            socket,
            listen,
            token,
            token_from_file: a.token_file.is_some(),
            interval: Duration::from_secs_f64(a.interval),
            top_channels: a.metrics_top_channels,
            slow_queue: a.slow_queue,
            tail_max_bytes: a.tail_max_bytes as usize,
            tail_rate: a.tail_rate,
            max_streams: a.max_streams as usize,
        })
    }
}

fn read_token_file(path: &std::path::Path) -> Result<String, DashboardError> {
    use std::os::unix::fs::MetadataExt;
    let err = |source| DashboardError::TokenFile {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.mode() & 0o004 != 0 {
        return Err(DashboardError::TokenFileOpen(path.into()));
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    let token = text.trim();
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(DashboardError::BadToken(path.into()));
    }
    Ok(token.to_string())
}

/// 128 random bits from the kernel, as 32 hex digits.
fn random_token() -> Result<String, DashboardError> {
    let mut buf = [0u8; 16];
    ipchub_os::sys::random_bytes(&mut buf).map_err(DashboardError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Run the dashboard until killed.
pub fn run(socket: Option<PathBuf>, args: &DashboardArgs) -> anyhow::Result<i32> {
    let settings = Settings::from_args(socket, args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(DashboardError::Runtime)?;
    rt.block_on(server::serve(settings))?;
    Ok(0)
}
