//! The door between control threads (D-Bus, MQTT bridge) and the data thread.
//!
//! A control thread sends a [`ControlOp`] with a reply channel and wakes the
//! event loop through a `mio::Waker`; the loop executes it between readiness
//! events and answers. Events flow the other way through bounded channels
//! with `try_send`: a stuck listener loses events (counted), it never
//! stalls routing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use crate::hub::{ControlOp, ControlReply, HubEvent};

/// How many events may wait for a slow listener before new ones are dropped.
pub const EVENT_BACKLOG: usize = 4096;

pub(crate) type Request = (ControlOp, Sender<ControlReply>);

/// A cloneable handle control threads use to reach the data thread.
#[derive(Clone)]
pub struct ControlHandle {
    pub(crate) tx: Sender<Request>,
    pub(crate) waker: Arc<mio::Waker>,
    /// Where the threads holding this handle report a panic.
    pub(crate) on_panic: crate::supervise::OnPanic,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the hub's data thread is gone")]
    Gone,
    #[error("the hub did not answer within {0:?}")]
    Timeout(Duration),
}

impl ControlHandle {
    /// The sink for [`crate::supervise::spawn`] of threads beside this hub:
    /// a panic in one stops the daemon.
    pub fn on_panic(&self) -> crate::supervise::OnPanic {
        self.on_panic.clone()
    }

    /// Run `op` on the data thread and wait for its answer.
    pub fn call(&self, op: ControlOp, timeout: Duration) -> Result<ControlReply, ControlError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send((op, tx)).map_err(|_| ControlError::Gone)?;
        self.waker.wake().map_err(|_| ControlError::Gone)?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => ControlError::Timeout(timeout),
            mpsc::RecvTimeoutError::Disconnected => ControlError::Gone,
        })
    }
}

/// The data thread's side: fans events out to every listener.
#[derive(Default)]
pub(crate) struct EventFanout {
    listeners: Vec<SyncSender<HubEvent>>,
    pub(crate) lost: Arc<AtomicU64>,
}

impl EventFanout {
    pub(crate) fn subscribe(&mut self) -> Receiver<HubEvent> {
        let (tx, rx) = mpsc::sync_channel(EVENT_BACKLOG);
        self.listeners.push(tx);
        rx
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    pub(crate) fn send(&mut self, events: &[HubEvent]) {
        self.listeners.retain(|l| {
            for ev in events {
                match l.try_send(ev.clone()) {
                    Ok(()) => {}
                    Err(mpsc::TrySendError::Full(_)) => {
                        self.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::TrySendError::Disconnected(_)) => return false,
                }
            }
            true
        });
    }
}
