//! Children the hub runs from `[[spawn]]`, wired to channels through pipes.
//!
//! The hub side of each child is a [`LineLink`]: its stdout lines become
//! PUBLISH frames and the DATA frames of its stdin channel become lines, so a
//! child is an ordinary client to the router (same queues, same
//! back-pressure). This module only starts, watches and restarts processes;
//! the event loop owns the clients.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{Restart, SpawnConfig};
use crate::hub::ClientId;
use crate::transport::lines::LineLink;
use crate::transport::pipe::{pipe_pair, set_nonblocking};

struct Slot {
    cfg: SpawnConfig,
    child: Option<Child>,
    client: Option<ClientId>,
    restart_at: Option<Instant>,
    /// When to look again whether a child whose client went away has exited.
    reap_at: Option<Instant>,
    /// Failed starts and short failed runs in a row: each doubles the delay.
    failures: u32,
    /// When the running child was started.
    started_at: Option<Instant>,
}

/// The longest wait between restarts of a child that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long counts as healthy: the backoff starts over.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// The wait before restart number `failures` (1, 2, ...): the configured
/// delay, doubled for each further failure in a row, capped at
/// [`MAX_BACKOFF`] (or the configured delay, if that is longer).
fn backoff(base_ms: u64, failures: u32) -> Duration {
    let base = Duration::from_millis(base_ms);
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_BACKOFF.max(base))
}

/// A started child: its hub-side link and pid.
pub struct Started {
    pub slot: usize,
    pub link: LineLink,
    pub pid: i32,
}

pub struct Spawner {
    slots: Vec<Slot>,
    max_line: usize,
}

impl Spawner {
    pub fn new(cfgs: &[SpawnConfig], max_line: usize) -> Spawner {
        let now = Instant::now();
        Spawner {
            slots: cfgs
                .iter()
                .map(|c| Slot {
                    cfg: c.clone(),
                    child: None,
                    client: None,
                    restart_at: Some(now),
                    reap_at: None,
                    failures: 0,
                    started_at: None,
                })
                .collect(),
            max_line,
        }
    }

    pub fn config(&self, slot: usize) -> &SpawnConfig {
        &self.slots[slot].cfg
    }

    /// Start every child whose (re)start time has come.
    pub fn due(&mut self, now: Instant) -> Vec<Started> {
        let mut started = Vec::new();
        for i in 0..self.slots.len() {
            if self.slots[i].restart_at.is_some_and(|t| t <= now) {
                self.slots[i].restart_at = None;
                match self.launch(i) {
                    Ok(s) => started.push(s),
                    Err(e) => {
                        let slot = &mut self.slots[i];
                        slot.failures = slot.failures.saturating_add(1);
                        let delay = backoff(slot.cfg.restart_delay_ms.max(100), slot.failures);
                        if slot.cfg.restart != Restart::Never {
                            warn!(spawn = %slot.cfg.name, retry_in_ms = delay.as_millis() as u64,
                                "cannot start {:?}: {e}", slot.cfg.command);
                            slot.restart_at = Some(now + delay);
                        } else {
                            warn!(spawn = %slot.cfg.name, "cannot start {:?}: {e}", slot.cfg.command);
                        }
                    }
                }
            }
        }
        started
    }

    fn launch(&mut self, i: usize) -> std::io::Result<Started> {
        let slot = &mut self.slots[i];
        let (in_r, in_w) = pipe_pair()?; // child's stdin
        let (out_r, out_w) = pipe_pair()?; // child's stdout
        set_nonblocking(&in_w)?;
        set_nonblocking(&out_r)?;
        // Stdio::from dup2s the ends onto 0 and 1 and clears close-on-exec
        // there; our copies of them are CLOEXEC and close with this scope.
        let child = Command::new(&slot.cfg.command[0])
            .args(&slot.cfg.command[1..])
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id() as i32;
        info!(spawn = %slot.cfg.name, pid, "started {:?}", slot.cfg.command);
        slot.child = Some(child);
        slot.started_at = Some(Instant::now());
        let link = LineLink::new(
            Some(out_r),
            slot.cfg.stdin_channel.as_ref().map(|_| in_w),
            slot.cfg.stdout_channel.clone(),
            self.max_line,
            &slot.cfg.name,
        );
        Ok(Started { slot: i, link, pid })
    }

    pub fn attach(&mut self, slot: usize, client: ClientId) {
        self.slots[slot].client = Some(client);
    }

    /// A child's client went away (its stdout closed, or the hub cut it off
    /// as a slow consumer): make sure the process ends too.
    pub fn client_closed(&mut self, client: ClientId) {
        for slot in &mut self.slots {
            if slot.client == Some(client) {
                slot.client = None;
                slot.reap_at = Some(Instant::now());
                if let Some(c) = slot.child.as_mut() {
                    if c.try_wait().ok().flatten().is_none() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(c.id() as i32),
                            nix::sys::signal::SIGTERM,
                        );
                    }
                }
            }
        }
    }

    /// Reap exited children, log how they ended, schedule restarts.
    pub fn reap(&mut self, now: Instant) {
        for slot in &mut self.slots {
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            if slot.reap_at.is_none_or(|t| t > now) {
                continue;
            }
            let Ok(Some(status)) = child.try_wait() else {
                slot.reap_at = Some(now + Duration::from_millis(50));
                continue;
            };
            slot.child = None;
            slot.reap_at = None;
            let restart = match slot.cfg.restart {
                Restart::Always => true,
                Restart::OnFailure => !status.success(),
                Restart::Never => false,
            };
            if status.success() {
                info!(spawn = %slot.cfg.name, "exited: {status}");
            } else {
                warn!(spawn = %slot.cfg.name, "exited: {status}");
            }
            let ran = slot
                .started_at
                .take()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if status.success() || ran >= STABLE_RUN {
                slot.failures = 0;
            } else {
                slot.failures = slot.failures.saturating_add(1);
            }
            if restart {
                let delay = backoff(slot.cfg.restart_delay_ms, slot.failures.max(1));
                info!(spawn = %slot.cfg.name, delay_ms = delay.as_millis() as u64, "restarting");
                slot.restart_at = Some(now + delay);
            }
        }
    }

    /// When the loop must look again: a pending restart, or a child whose
    /// client is gone and that has not been reaped yet.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|s| [s.restart_at, s.reap_at])
            .flatten()
            .min()
    }

    /// Stop every child: SIGTERM, a moment's grace, then SIGKILL.
    pub fn stop_all(&mut self) {
        for slot in &mut self.slots {
            slot.restart_at = None;
            if let Some(c) = &slot.child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for slot in &mut self.slots {
            if let Some(mut c) = slot.child.take() {
                while c.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_up_to_a_minute() {
        assert_eq!(backoff(100, 1), Duration::from_millis(100));
        assert_eq!(backoff(100, 2), Duration::from_millis(200));
        assert_eq!(backoff(100, 4), Duration::from_millis(800));
        assert_eq!(backoff(1000, 40), MAX_BACKOFF);
        assert_eq!(backoff(120_000, 3), Duration::from_secs(120));
    }
}
