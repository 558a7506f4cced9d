//! `ipchubd`: configuration, the listening socket, logging, then the event loop.
//!
//! [`run`] drives an already open listener until a [`Shutdown`] is
//! triggered, so the binary (socket-activated, self-bound or handed over)
//! and tests running a hub in-process share one entry point; [`main_with`]
//! is the set-up around it (arguments, hand-over state, systemd's sockets,
//! logging, signals).

pub mod control;
pub mod event_loop;
pub mod fdstore;
pub mod handover;
pub mod handshake;
pub mod listener;
pub mod logging;
mod shutdown;
pub mod spawn;
pub mod systemd;

pub use event_loop::CloseReason;
pub use shutdown::Shutdown;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::Config;
use crate::hub::{ClientId, TransportKind};
use event_loop::{EventLoop, LoopOptions};

/// ipchubd: the ipchub publish/subscribe daemon.
///
/// Routes messages on named channels between local processes over UNIX
/// sockets, pipes, FIFOs, POSIX message queues and shared memory. Runs in the
/// foreground; under systemd it uses the socket passed by ipchub.socket.
#[derive(Debug, Parser)]
#[command(name = "ipchubd", version, about, long_about)]
pub struct Args {
    /// Control socket to bind when not socket-activated [default: /run/ipchub/ipchub.sock as root,
    /// else $XDG_RUNTIME_DIR/ipchub/ipchub.sock]
    #[arg(long, short = 's', env = "IPCHUB_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file [default: /etc/ipchub/ipchub.toml if it exists, else built-in defaults]
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit: status 0 if valid, else the error.
    #[arg(long)]
    pub check_config: bool,
    /// Where to log: auto is the journal when systemd connects standard error to it, else
    /// standard error; journal always uses the journal's native protocol (structured fields, see
    /// JOURNAL FIELDS); stderr is plain text
    #[arg(long, value_enum, default_value_t = logging::LogTarget::Auto, value_name = "TARGET")]
    pub log: logging::LogTarget,
}

/// The transports this host can serve: all of them, less POSIX message
/// queues when the kernel or this user's RLIMIT_MSGQUEUE has none to give
/// (tried once, with a pair of queues unlinked at once).
fn served_transports() -> Vec<TransportKind> {
    let mqueue = match crate::transport::mqueue::create_pair(1024) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("the mqueue transport is not available here: {e}");
            false
        }
    };
    TransportKind::ALL
        .into_iter()
        .filter(|t| *t != TransportKind::Mqueue || mqueue)
        .collect()
}

/// The daemon's whole life; `main` is a shim over this.
pub fn main_with(args: Args) -> anyhow::Result<()> {
    // A planned restart's state, then socket activation: both edit the
    // environment, which must happen before any thread exists.
    let handed = handover::take();
    let passed = systemd::take_listen_fds().context("reading LISTEN_FDS")?;
    // A stop under systemd may have left the state in its fd store.
    let (handed, passed) = fdstore::take(handed, passed);
    let config = Config::load(args.config.as_deref())?;
    if args.check_config {
        // Worded as `ipchubctl check-config` says it.
        let file = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
        if file.exists() {
            println!("{}: configuration OK", file.display());
        } else {
            println!("built-in defaults: configuration OK");
        }
        return Ok(());
    }
    logging::init(&config.log.level, args.log);
    let mut handed = match handed {
        Some(Ok(state)) => {
            tracing::info!(
                from = %state.hub_version,
                generation = state.generation,
                "planned restart: took over the hand-over state"
            );
            Some(state)
        }
        Some(Err(e)) => {
            // Never a crash loop: start as after a crash, and let the
            // clients reconnect by themselves.
            tracing::warn!("hand-over state unusable ({e}); starting fresh, clients reconnect");
            None
        }
        None => None,
    };
    let generation = handed.as_ref().map_or(0, |s| s.generation);
    let kept = handed
        .as_mut()
        .map(|s| (std::mem::take(&mut s.clients), s.next_client_id));
    let kept_rings = handed
        .as_mut()
        .map(|s| std::mem::take(&mut s.rings))
        .unwrap_or_default();
    let kept_hub = handed.as_mut().map(|s| std::mem::take(&mut s.hub_state));

    let (listener, unlink, socket_path) =
        match (handed, passed.into_iter().find(|p| p.name != "fifo")) {
            (Some(state), _) => {
                let fd = state.fd("listener").expect("checked by handover::take");
                // The predecessor handed this descriptor over by this number
                // (or systemd's fd store passed it: `handover::claim`).
                let fd = handover::claim(fd)?;
                let l = UnixListener::from(fd);
                // Inherited without close-on-exec: set it again, so children
                // we spawn do not hold the hub's socket.
                let _ = nix::fcntl::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&l),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                );
                tracing::info!(socket = %state.socket_path.display(), "listening (handed over)");
                (l, state.unlink_on_exit, state.socket_path)
            }
            (None, Some(p)) => {
                let l = UnixListener::from(p.fd);
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(PathBuf::from))
                    .unwrap_or_else(|| crate::paths::socket_path(args.socket.as_deref()));
                tracing::info!(socket = %path.display(), "using socket passed by systemd");
                (l, None, path)
            }
            (None, None) => {
                let path = crate::paths::socket_path(args.socket.as_deref());
                // Nothing is bound in a directory others could tamper with.
                let runtime = crate::paths::SafeDir::runtime(&crate::paths::runtime_dir_for(&path))
                    .context("checking the runtime directory")?;
                crate::transport::fifo::check_dirs(&runtime)
                    .context("checking the runtime directory")?;
                let l = listener::bind(&path)?;
                tracing::info!(socket = %path.display(), "listening");
                (l, Some(path.clone()), path)
            }
        };
    run_with(
        listener,
        config,
        Shutdown::new(),
        Setup {
            config_path: args.config.clone(),
            socket_path: Some(socket_path),
            unlink_on_exit: unlink,
            generation,
            kept,
            kept_rings,
            kept_hub,
            signals: true,
        },
    )
}

/// What [`run_with`] needs besides the listener, the configuration and the
/// shutdown handle; the defaults are those of a hub run in-process.
#[derive(Default)]
pub struct Setup {
    /// The configuration file a reload reads again (None: built-in defaults).
    pub config_path: Option<PathBuf>,
    /// The listening socket's path (None: the listener's own address).
    pub socket_path: Option<PathBuf>,
    /// Socket file to remove at exit (None when systemd owns it).
    pub unlink_on_exit: Option<PathBuf>,
    /// Planned restarts this process has been through.
    pub generation: u64,
    /// Clients a predecessor handed over, and its next client id.
    pub kept: Option<(Vec<handover::HandedClient>, ClientId)>,
    /// Channel rings a predecessor handed over (with those clients).
    pub kept_rings: Vec<handover::HandedRing>,
    /// The predecessor hub's own state (counters, retained values, memory
    /// history), taken over before its clients.
    pub kept_hub: Option<crate::hub::snapshot::HubSnapshot>,
    /// Handle SIGINT, SIGTERM, SIGHUP and SIGUSR2 (the daemon does; a hub
    /// run inside another program leaves its signals alone).
    pub signals: bool,
}

/// Run a hub on `listener` with `config` until `shutdown` is triggered:
/// the daemon's core, without its process set-up (no signals, logging or
/// hand-over), so a test or another program can run a hub on a thread.
/// The runtime directory is the listener's socket's directory.
pub fn run(listener: UnixListener, config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    run_with(listener, config, shutdown, Setup::default())
}

/// [`run`] with the daemon's extras ([`Setup`]); [`main_with`] uses it.
pub fn run_with(
    listener: UnixListener,
    config: Config,
    shutdown: Shutdown,
    setup: Setup,
) -> anyhow::Result<()> {
    let socket_path = match setup.socket_path {
        Some(p) => p,
        None => listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(PathBuf::from))
            .context("the listener has no path")?,
    };
    // The runtime directory, the directories above it and the hub's own
    // subdirectories are verified (refused, naming the path, if others could
    // tamper with them); then leftovers of a hub killed with -9 go: its FIFOs
    // and message queues.
    let runtime = crate::paths::SafeDir::runtime(&crate::paths::runtime_dir_for(&socket_path))
        .context("checking the runtime directory")?;
    crate::transport::fifo::prepare_dir(&runtime).context("checking the runtime directory")?;
    let runtime_dir = runtime.path().to_path_buf();
    drop(runtime);
    let reaped = crate::transport::mqueue::reap_stale();
    if reaped > 0 {
        tracing::info!(
            count = reaped,
            "removed message queues left by a hub that is gone"
        );
    }
    let mut ev = EventLoop::new(
        listener,
        LoopOptions {
            config,
            config_path: setup.config_path.clone(),
            runtime_dir,
            unlink_on_exit: setup.unlink_on_exit,
            socket_path: socket_path.clone(),
            generation: setup.generation,
            shutdown: shutdown.clone(),
            signals: setup.signals,
        },
    )
    .context("starting the event loop")?;
    // Stats and the ready line name the transports this host can serve.
    ev.hub_mut().set_transports(served_transports());
    if let Some(h) = setup.kept_hub {
        let done = ev.hub_mut().import_hub_state(&h);
        tracing::info!(
            channels = done.channels,
            retained = done.retained,
            history_messages = done.history_messages,
            "planned restart: counters, retained values and history taken over"
        );
    }
    if let Some((clients, next_id)) = setup.kept {
        tracing::info!(clients = clients.len(), "planned restart: clients kept");
        ev.restore_clients(clients, next_id);
        ev.restore_rings(setup.kept_rings);
    }
    start_components(&mut ev, &socket_path, setup.config_path.as_deref());
    systemd::ready(&format!("listening on {}", socket_path.display()));
    // As the original hub did: the transports served, the socket, and
    // where the configuration came from.
    let transports = ev.hub().transport_names().join(", ");
    let config_from = match &setup.config_path {
        Some(path) => path.display().to_string(),
        None if std::path::Path::new(crate::config::DEFAULT_CONFIG_PATH).exists() => {
            crate::config::DEFAULT_CONFIG_PATH.to_string()
        }
        None => "built-in defaults".to_string(),
    };
    tracing::info!(
        message_id = logging::msgid::READY,
        version = env!("CARGO_PKG_VERSION"),
        transports = %transports,
        socket = %socket_path.display(),
        config = %config_from,
        "ipchubd ready. Backends available: {transports}; socket {}; configuration: {config_from}",
        socket_path.display()
    );
    ev.run().context("event loop failed")?;
    match shutdown.failure() {
        Some(why) => Err(anyhow::anyhow!("stopped: {why}")),
        None => Ok(()),
    }
}

/// Start the threads that sit beside the data thread (D-Bus, MQTT bridge).
/// Each gets a [`control::ControlHandle`] and/or an event receiver from the
/// loop, never the hub itself, so none of them can slow routing.
fn start_components(
    ev: &mut EventLoop,
    socket_path: &std::path::Path,
    config_path: Option<&std::path::Path>,
) {
    let dbus = ev.hub().config().dbus.clone();
    if dbus.enabled {
        let log = ev.hub().config().log.clone();
        crate::dbus::start(dbus, &log, ev.control_handle(), ev.subscribe_events());
    }
    crate::bridge::start(
        ev.hub().config(),
        socket_path,
        config_path,
        ev.control_handle(),
    );
}
