//! Bridges: ordinary hub clients that carry channels to and from other systems.
//!
//! The contract every bridge keeps:
//! - it reaches the hub only as a client (`crate::client` over the control
//!   socket) and reports its state with `ControlOp::SetStatus`; nothing in
//!   `crate::hub` knows bridges exist;
//! - it runs on its own threads, so a slow or absent remote system never
//!   slows local routing;
//! - it never sends a message back where it came from: what it published
//!   into the hub carries its own client id as `origin` and is never
//!   exported, and the remote side is asked not to echo what the bridge sent;
//! - what waits to go out is bounded in messages and bytes; every drop is
//!   counted in its status and logged (at most once per second);
//! - it reconnects to either side with exponential backoff and restores its
//!   subscriptions on every connection;
//! - it can be stopped ([`Stop`]) wherever its threads sleep, and then says
//!   goodbye to both sides and removes its status (an empty `SetStatus`):
//!   a reload restarts exactly the bridges whose settings changed;
//! - it publishes its state on its own channel
//!   (`ipchub/bridge/<name>/state`), never counted as an import or a loop.
//!
//! Several MQTT bridges run side by side (`[[bridge.mqtt]]`), each with its
//! own threads, spool and backoff, so one broker never delays another.

pub mod hub_side;
pub mod mqtt;
pub mod rules;
pub mod spool;
pub mod tls;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::config::{Config, MqttBridgeConfig};
use crate::daemon::control::ControlHandle;

/// The running bridges' supervisor, told of every successful reload.
static SUPERVISOR: OnceLock<Mutex<SyncSender<Config>>> = OnceLock::new();

/// Start every enabled bridge, and a supervisor thread that restarts the
/// bridges whose settings change on reload ([`reload`]). Failures are
/// logged here, once; the hub runs on without the bridge.
pub fn start(cfg: &Config, socket: &Path, config_path: Option<&Path>, control: ControlHandle) {
    let (tx, rx) = mpsc::sync_channel::<Config>(4);
    if SUPERVISOR.set(Mutex::new(tx)).is_err() {
        tracing::error!("bridges started twice; the second start is ignored");
        return;
    }
    let mut sup = Supervisor {
        socket: socket.to_path_buf(),
        config_path: config_path.map(Path::to_path_buf),
        control,
        running: BTreeMap::new(),
    };
    sup.apply(cfg);
    // A panic stops the daemon rather than leaving bridges unsupervised.
    let spawned = crate::supervise::spawn("ipchub-bridges", sup.control.on_panic(), move || {
        sup.run(rx)
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the bridge supervisor; bridges will not reload");
    }
}

/// Apply a reloaded configuration to the bridges (called by the data
/// thread after a successful reload; never blocks it).
pub fn reload(cfg: &Config) {
    if let Some(tx) = SUPERVISOR.get() {
        let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.try_send(cfg.clone()).is_err() {
            tracing::warn!("bridge reloads are piling up; this one is skipped");
        }
    }
}

/// What a bridge's threads need to be asked to stop, wherever they sleep.
pub struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
    /// Readable once stopped, for threads asleep in poll(2).
    fd: EventFd,
}

impl Stop {
    pub fn new() -> std::io::Result<Stop> {
        Ok(Stop {
            stopped: Mutex::new(false),
            cv: Condvar::new(),
            fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)?,
        })
    }

    pub fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
        // Cannot fail short of the counter overflowing; never read back.
        let _ = self.fd.write(1);
    }

    pub fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleep for `d` or until stopped; true when stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = self
                .cv
                .wait_timeout(stopped, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A bridge's identity for reloads: the settings it was started with.
#[derive(PartialEq)]
struct Settings {
    bridge: MqttBridgeConfig,
    max_message_size: u32,
    /// `[[channel]]` retain rules: their messages are exported retained.
    retain_rules: Vec<(String, bool)>,
}

struct Supervisor {
    socket: PathBuf,
    config_path: Option<PathBuf>,
    control: ControlHandle,
    running: BTreeMap<String, (Settings, mqtt::Running)>,
}

impl Supervisor {
    fn run(mut self, rx: Receiver<Config>) {
        while let Ok(cfg) = rx.recv() {
            self.apply(&cfg);
        }
    }

    /// Stop the bridges that are gone or changed, then start the new and
    /// changed ones; the others run on untouched.
    fn apply(&mut self, cfg: &Config) {
        let mut wanted: BTreeMap<String, Settings> = cfg
            .bridge
            .mqtt
            .enabled()
            .map(|b| {
                (
                    b.bridge_name().to_string(),
                    Settings {
                        bridge: b.clone(),
                        max_message_size: cfg.hub.max_message_size,
                        retain_rules: cfg.retain_rules(),
                    },
                )
            })
            .collect();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            if wanted.get(&name) == self.running.get(&name).map(|(s, _)| s) {
                wanted.remove(&name);
                continue;
            }
            if let Some((_, r)) = self.running.remove(&name) {
                tracing::info!(component = %r.component(), "stopping the bridge: its settings changed or it was removed");
                r.stop();
            }
        }
        for (name, settings) in wanted {
            secrets_check(self.config_path.as_deref(), &settings.bridge);
            match mqtt::start(
                &settings.bridge,
                settings.max_message_size,
                &settings.retain_rules,
                &self.socket,
                self.control.clone(),
            ) {
                Ok(r) => {
                    self.running.insert(name, (settings, r));
                }
                Err(e) => {
                    tracing::error!(component = %mqtt::component(&settings.bridge), error = %e, "MQTT bridge not started");
                }
            }
        }
    }
}

/// Warn, naming the file, when a secret the bridge uses can be read by
/// every local user: a password in a world-readable config file, or a
/// world-readable private key.
fn secrets_check(config_path: Option<&Path>, b: &MqttBridgeConfig) {
    use std::os::unix::fs::PermissionsExt;
    let world_readable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
    let component = mqtt::component(b);
    if b.password.is_some() {
        let path = config_path.unwrap_or(Path::new(crate::config::DEFAULT_CONFIG_PATH));
        if world_readable(path) {
            tracing::warn!(%component, file = %path.display(),
                "the config file holds the MQTT password and every local user can read it; chmod o-r it (e.g. 0640 root:ipchub)");
        }
    }
    if let Some(key) = &b.key_file {
        if world_readable(key) {
            tracing::warn!(%component, file = %key.display(),
                "the TLS private key (key_file) is readable by every local user; chmod o-r it");
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let seen: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }
}
