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
//!   subscriptions on every connection.

pub mod hub_side;
pub mod mqtt;
pub mod rules;
pub mod spool;

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::daemon::control::ControlHandle;

/// Start every enabled bridge. Failures are logged here, once; the hub runs
/// on without the bridge.
pub fn start(cfg: &Config, socket: &Path, control: ControlHandle) {
    if cfg.bridge.mqtt.enabled {
        if let Err(e) = mqtt::start(cfg, socket, control) {
            tracing::error!(component = "bridge.mqtt", error = %e, "MQTT bridge not started");
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
