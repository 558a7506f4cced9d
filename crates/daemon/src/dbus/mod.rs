//! The D-Bus edge: `org.ipchub` on the system (or session) bus.
//!
//! What it serves (see `busctl introspect org.ipchub /org/ipchub`):
//! - `/org/ipchub`: `org.ipchub.Hub1` (properties, methods, signals, in
//!   [`hub1`]) and `org.freedesktop.DBus.ObjectManager`;
//! - `/org/ipchub/channel/…`: one `org.ipchub.Channel1` object per channel,
//!   its path escaped from the channel name as [`path`] describes.
//!
//! The contract with the rest of the daemon:
//! - it runs on its own thread ([`start`]) and reaches the hub only through
//!   [`ControlHandle::call`] and the [`HubEvent`] receiver, so the data
//!   thread never waits on D-Bus and nothing below this module knows zbus;
//! - counters are sampled every `dbus.stats_interval_ms` and each object
//!   sends at most one PropertiesChanged per sample, only with values that
//!   changed; signals for clients and channels follow the hub's events;
//! - without a reachable bus (or with the name taken) the hub runs normally:
//!   one log line says so, and the thread retries with backoff. A bus that
//!   goes away is noticed within a second and reconnected the same way;
//! - Publish, DisconnectClient and Reload are for root and group `ipchub`
//!   ([`access`]), matching the bus policy `etc/dbus-1/system.d/org.ipchub.conf`.
//!
//! zbus 5 (not 6) with its async-io executor: our thread is a blocking loop
//! over a `std::sync::mpsc` receiver and the blocking control door, and it
//! drives zbus's async API with `zbus::block_on`; zbus answers incoming calls
//! on its own executor thread meanwhile.

pub mod access;
pub mod channel1;
pub mod error;
pub mod hub1;
pub mod path;
mod session;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::{BusKind, DbusConfig, LogConfig};
use crate::daemon::control::{ControlError, ControlHandle};
use crate::hub::HubEvent;
use access::Access;
use session::{Session, SessionError};
use zbus::zvariant::Value;

/// The well-known name the daemon owns.
pub const BUS_NAME: &str = "org.ipchub";

/// First retry after a failed connection; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// A restarted bus is found again within this long.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a quiet session checks that the bus is still there.
const LIVENESS: Duration = Duration::from_secs(1);
/// Most events announced in one batch, so a flood cannot delay sampling.
const MAX_BATCH: usize = 1024;

/// Start the D-Bus thread. A failure to start it is logged and the hub
/// goes on without D-Bus.
pub fn start(cfg: DbusConfig, log: &LogConfig, control: ControlHandle, events: Receiver<HubEvent>) {
    let access =
        Access::from_system().with_log_limits(log.rate_limit_burst, log.rate_limit_per_minute);
    // A panic stops the daemon rather than leaving it without D-Bus.
    let spawned = crate::supervise::spawn("ipchub-dbus", control.on_panic(), move || {
        run(&cfg, &control, &events, access)
    });
    if let Err(e) = spawned {
        error!("cannot start the D-Bus thread, running without D-Bus: {e}");
    }
}

fn bus_label(bus: BusKind) -> &'static str {
    match bus {
        BusKind::System => "system",
        BusKind::Session => "session",
    }
}

/// Why a session ended.
enum End {
    /// The data thread is gone: the daemon is stopping.
    HubGone,
    BusLost(String),
}

/// The thread: connect, serve until the bus goes away, wait, reconnect;
/// until the daemon stops.
fn run(cfg: &DbusConfig, control: &ControlHandle, events: &Receiver<HubEvent>, access: Access) {
    let bus = bus_label(cfg.bus);
    let interval = Duration::from_millis(cfg.stats_interval_ms);
    let mut retry = RETRY_FIRST;
    // Once the outage has been reported, further failed attempts are quiet.
    let mut outage_reported = false;
    loop {
        match zbus::block_on(Session::open(cfg.bus, control, access.clone())) {
            Ok(mut session) => {
                info!(bus, "serving {BUS_NAME} on the D-Bus {bus} bus");
                retry = RETRY_FIRST;
                match serve(&mut session, events, interval, &access) {
                    End::HubGone => return,
                    End::BusLost(why) => {
                        warn!(
                            bus,
                            "lost the D-Bus {bus} bus ({why}); reconnecting in the background"
                        );
                        outage_reported = true;
                    }
                }
            }
            Err(SessionError::Hub(ControlError::Gone)) => return,
            Err(e) => {
                if outage_reported {
                    debug!(bus, "D-Bus still unavailable: {e}");
                } else {
                    warn!(
                        bus,
                        "D-Bus {bus} bus not available ({e}); the hub runs without D-Bus and keeps retrying"
                    );
                    outage_reported = true;
                }
            }
        }
        // Events that happen while there is no bus have nobody to reach;
        // draining them keeps the data thread from counting them as lost.
        let until = Instant::now() + retry;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(RecvTimeoutError::Disconnected) = events.recv_timeout(left) {
                return;
            }
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Announce events as they come and sample on every tick, until the bus
/// goes away or the daemon stops.
fn serve(
    session: &mut Session,
    events: &Receiver<HubEvent>,
    interval: Duration,
    access: &Access,
) -> End {
    let mut next_tick = Instant::now() + interval;
    loop {
        let wait = next_tick
            .saturating_duration_since(Instant::now())
            .min(LIVENESS);
        let result = match events.recv_timeout(wait) {
            Ok(first) => {
                let mut batch = vec![first];
                batch.extend(events.try_iter().take(MAX_BATCH - 1));
                zbus::block_on(session.announce(batch))
            }
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => return End::HubGone,
        };
        // At least once a second (LIVENESS): summaries of refusals left out.
        access.log_summaries();
        let result = result.and_then(|()| {
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + interval;
                zbus::block_on(session.tick())
            } else {
                Ok(())
            }
        });
        if session.is_closed() {
            return End::BusLost("connection closed".into());
        }
        match result {
            Ok(()) => {}
            Err(SessionError::Hub(ControlError::Gone)) => return End::HubGone,
            // A busy data thread: skip this sample, the next one catches up.
            Err(SessionError::Hub(e @ ControlError::Timeout(_))) => {
                warn!("D-Bus statistics skipped: {e}")
            }
            // Any bus error leaves us unsure what the bus knows of our
            // objects; starting over from a fresh connection is simplest.
            Err(SessionError::Bus(e)) => return End::BusLost(e.to_string()),
        }
    }
}

/// The properties `props` announces whose values differ from `old` to
/// `new`: what a PropertiesChanged signal must carry (one object kind each
/// passes its own list of notified properties).
pub fn changed_properties<T>(
    old: &T,
    new: &T,
    props: fn(&T) -> Vec<(&'static str, Value<'static>)>,
) -> Vec<(&'static str, Value<'static>)> {
    props(old)
        .into_iter()
        .zip(props(new))
        .filter(|((_, a), (_, b))| a != b)
        .map(|(_, new)| new)
        .collect()
}
