//! The bridge's side facing the hub: one ordinary client connection.
//!
//! One connection carries both directions on purpose. The hub stamps every
//! DATA frame with its publisher's client id, so "never export what we
//! imported" is one comparison with our own id. With two connections the
//! exporting one would have to learn the importing one's id, which changes
//! on every reconnect, and a message could slip through in between.
//!
//! The thread sleeps in poll(2) on the connection and on an eventfd the
//! remote side writes when it queued an import. It never stops reading from
//! the hub for long: exports go straight to the caller's (non-blocking)
//! sink, and while its own publishes wait to be written it keeps handling
//! what arrives, so the hub never has to hold anyone back on its account.
//!
//! Retained values need more than the origin check: the hub keeps the
//! retained value the bridge imported with the client id of the connection
//! that published it, and replays it flagged retained to every later
//! subscription, the bridge's own after a reconnect included, under its new
//! id. So the hub side remembers what it last set as each channel's
//! retained value ([`RetainedLedger`]) and does not export that value back;
//! the MQTT side does the same for what it set on the broker.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ipchub_os::sys;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Backoff, Stop};
use crate::client::{
    Client, ClientError, Event, Message, Options, PublishOptions, AUTO_FLUSH_BYTES,
};

/// A message from the remote side for a hub channel.
#[derive(Debug, Clone)]
pub struct Import {
    pub channel: String,
    pub payload: Bytes,
    /// Publish it as the channel's retained value (an empty payload
    /// clears that value).
    pub retain: bool,
    /// The hub keeps it as the channel's retained value: `retain`, or a
    /// channel configured to retain every message. Noted, so that the
    /// hub's replay of it is not exported back.
    pub kept: bool,
    /// The bridge's own state message, not an import: not counted as one.
    pub state: bool,
}

/// The remote side's end of the import queue: bounded in messages and
/// bytes, so a hub that is away cannot make imports grow memory.
pub struct ImportSender {
    tx: SyncSender<Import>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    wake: Arc<EventFd>,
}

/// The hub side's end of the import queue.
pub struct ImportReceiver {
    rx: Receiver<Import>,
    bytes: Arc<AtomicUsize>,
    wake: Arc<EventFd>,
}

/// A queue for imports waiting to be published into the hub.
pub fn import_queue(
    max_messages: usize,
    max_bytes: usize,
) -> std::io::Result<(ImportSender, ImportReceiver)> {
    let wake = Arc::new(
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?,
    );
    let bytes = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::sync_channel(max_messages.max(1));
    Ok((
        ImportSender {
            tx,
            bytes: bytes.clone(),
            max_bytes,
            wake: wake.clone(),
        },
        ImportReceiver { rx, bytes, wake },
    ))
}

impl ImportSender {
    /// Queue an import and wake the hub side; false when it had to be dropped.
    pub fn send(&self, imp: Import) -> bool {
        let len = imp.payload.len();
        if self.bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            return false;
        }
        if self.tx.try_send(imp).is_err() {
            return false;
        }
        self.bytes.fetch_add(len, Ordering::Relaxed);
        // Cannot fail short of the counter overflowing, which a read resets.
        let _ = self.wake.write(1);
        true
    }
}

impl ImportReceiver {
    fn try_recv(&self) -> Option<Import> {
        let imp = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(imp.payload.len(), Ordering::Relaxed);
        Some(imp)
    }
}

/// The retained values one side of the bridge set on the other: name →
/// fingerprint of the payload. A retained value that comes back unchanged
/// came from the bridge and is not sent back; one that differs was set by
/// someone else, and its entry goes. Bounded: past [`RetainedLedger::MAX`]
/// names new ones are not noted (and could then bounce once).
#[derive(Debug, Default)]
pub struct RetainedLedger {
    set: std::collections::HashMap<String, u64>,
}

impl RetainedLedger {
    pub const MAX: usize = 100_000;

    fn fingerprint(payload: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        payload.hash(&mut h);
        h.finish()
    }

    /// The bridge set `name`'s retained value to `payload` (empty: cleared).
    pub fn note(&mut self, name: &str, payload: &[u8]) {
        if payload.is_empty() {
            self.set.remove(name);
        } else if self.set.len() < Self::MAX || self.set.contains_key(name) {
            self.set
                .insert(name.to_string(), Self::fingerprint(payload));
        }
    }

    /// A retained value arrived from the other side: true when it is the
    /// one the bridge set there (not to be sent back).
    pub fn is_echo(&mut self, name: &str, payload: &[u8]) -> bool {
        match self.set.get(name) {
            Some(&f) if f == Self::fingerprint(payload) => true,
            Some(_) => {
                self.set.remove(name);
                false
            }
            None => false,
        }
    }
}

/// What one bridge set on each side. Kept by bridge name for the daemon's
/// lifetime ([`RetainedLedgers::of`]), so a bridge restarted on reload
/// still recognises the values its predecessor set, which both sides replay
/// to its new subscriptions.
#[derive(Debug, Default)]
pub struct RetainedLedgers {
    /// Hub channels whose retained value the bridge imported.
    pub imported: Mutex<RetainedLedger>,
    /// Broker topics whose retained value the bridge exported.
    pub exported: Mutex<RetainedLedger>,
}

impl RetainedLedgers {
    pub fn of(bridge: &str) -> Arc<RetainedLedgers> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<RetainedLedgers>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(bridge.to_string()).or_default().clone()
    }

    pub fn imported(&self) -> MutexGuard<'_, RetainedLedger> {
        self.imported.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exported(&self) -> MutexGuard<'_, RetainedLedger> {
        self.exported.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the hub side did, read by the status reporter.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub connected: AtomicBool,
    /// Imports published into the hub.
    pub imported: AtomicU64,
    /// Imports the hub refused (too large, bad channel).
    pub import_failed: AtomicU64,
    /// Our own imports seen again on an export pattern, and not exported.
    pub looped: AtomicU64,
    /// Messages the hub dropped before reaching us (`drop-oldest` MISSED notices).
    pub missed: AtomicU64,
}

pub struct HubSide<F: FnMut(Message)> {
    /// Component name for logs, e.g. `bridge.mqtt`.
    pub component: String,
    pub options: Options,
    /// Hub patterns to subscribe to; matching messages go to `export`.
    pub patterns: Vec<String>,
    /// Where the bridge publishes its state; seen again on an export
    /// pattern it is neither exported nor counted as a loop.
    pub state_channel: String,
    pub export: F,
    pub imports: ImportReceiver,
    pub counters: Arc<HubCounters>,
    /// Called when the connection comes up or goes down.
    pub on_change: Box<dyn Fn() + Send>,
    /// Published once on every connection, after subscribing (the state).
    pub greeting: Box<dyn Fn() -> Import + Send>,
    pub backoff: Backoff,
    pub stop: Arc<Stop>,
    /// The retained values this bridge set on either side.
    pub retained: Arc<RetainedLedgers>,
}

impl<F: FnMut(Message)> HubSide<F> {
    /// Connect, serve, reconnect: until stopped.
    pub fn run(mut self) {
        let mut reported_down = false;
        let component = self.component.clone();
        while !self.stop.is_set() {
            match Client::connect(&self.options) {
                Ok(mut client) => {
                    self.backoff.reset();
                    reported_down = false;
                    let res = self.serve(&mut client);
                    self.counters.connected.store(false, Ordering::Relaxed);
                    (self.on_change)();
                    match res {
                        Ok(()) => break,
                        Err(ClientError::Closed(reason)) => {
                            // The hub said goodbye, usually because it is stopping.
                            tracing::info!(%component, %reason,
                                "hub closed the connection; reconnecting");
                        }
                        Err(e) => {
                            tracing::warn!(%component, error = %e,
                                "lost the hub connection; reconnecting");
                        }
                    }
                }
                Err(e) if !reported_down => {
                    reported_down = true;
                    tracing::warn!(%component, error = %e,
                        "cannot connect to the hub; retrying");
                }
                Err(_) => {}
            }
            if self.stop.wait(self.backoff.next_delay()) {
                break;
            }
        }
    }

    /// Subscribe, then move messages both ways until the connection fails
    /// (an error) or the bridge is stopped (`Ok`).
    fn serve(&mut self, client: &mut Client) -> Result<(), ClientError> {
        // Live retained publishes come marked, so that a value set here
        // is exported retained (issue #21), not only the value stored
        // when the bridge subscribed.
        let opts = crate::client::SubscribeOptions {
            retain_as_published: true,
            ..Default::default()
        };
        for p in &self.patterns {
            client.subscribe_with(p, opts)?;
        }
        let me = client.id();
        self.counters.connected.store(true, Ordering::Relaxed);
        (self.on_change)();
        tracing::info!(
            component = %self.component,
            client = me,
            "connected to the hub"
        );
        let hello = (self.greeting)();
        if let Err(e @ (ClientError::TooLarge { .. } | ClientError::BadChannel(_))) =
            client.publish(&hello.channel, &hello.payload)
        {
            tracing::warn!(component = %self.component, error = %e, "cannot publish the bridge state");
        }
        loop {
            if self.stop.is_set() {
                // Deliver what was imported before going.
                let _ = self.write_out(client, me);
                return Ok(());
            }
            while let Some(imp) = self.imports.try_recv() {
                // Never let a publish trigger the client's blocking auto-flush
                // while unread exports pile up: write out first, reading meanwhile.
                if client.pending_bytes() + imp.payload.len() >= AUTO_FLUSH_BYTES {
                    self.write_out(client, me)?;
                }
                if imp.kept {
                    self.retained.imported().note(&imp.channel, &imp.payload);
                }
                let published = if imp.retain {
                    client.publish_retained(&imp.channel, &imp.payload, PublishOptions::default())
                } else {
                    client.publish(&imp.channel, &imp.payload)
                };
                match published {
                    Ok(_) if imp.state => {}
                    Ok(_) => {
                        self.counters.imported.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ClientError::TooLarge { .. } | ClientError::BadChannel(_)) => {
                        self.counters.import_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            // Write what the socket takes, handle everything already readable.
            while let Some(ev) = client.next_event(Some(Duration::ZERO))? {
                self.on_event(ev, me);
            }
            self.wait(client)?;
        }
    }

    /// Write every queued publish, handling arriving events meanwhile.
    fn write_out(&mut self, client: &mut Client, me: u32) -> Result<(), ClientError> {
        while client.pending_bytes() > 0 {
            if let Some(ev) = client.next_event(Some(Duration::from_millis(100)))? {
                self.on_event(ev, me);
            }
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event, me: u32) {
        match ev {
            Event::Message(m) if m.origin == me => {
                if m.channel != self.state_channel {
                    self.counters.looped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A retained value the bridge imported, replayed to a later
            // subscription of its own under the id of an older connection.
            Event::Message(m)
                if m.retained && self.retained.imported().is_echo(&m.channel, &m.payload) =>
            {
                self.counters.looped.fetch_add(1, Ordering::Relaxed);
            }
            Event::Message(m) => (self.export)(m),
            Event::Missed(n) => {
                self.counters.missed.fetch_add(n, Ordering::Relaxed);
            }
            Event::Error { code, text, .. } => {
                tracing::warn!(component = %self.component, code, error = %text, "hub reported an error");
            }
            // Reconnection is off here: HubSide reconnects itself.
            Event::Ack { .. }
            | Event::Stats(_)
            | Event::Pong(_)
            | Event::HubLost { .. }
            | Event::HubBack { .. } => {}
        }
    }

    /// Sleep until the hub sends something, the socket can take what is
    /// queued, or the remote side queued an import.
    fn wait(&mut self, client: &Client) -> Result<(), ClientError> {
        let mut events = libc::POLLIN;
        if client.pending_bytes() > 0 {
            events |= libc::POLLOUT;
        }
        // The client hands out its descriptor's number (it is polled by
        // number, see ipchub_os::sys::poll_raw).
        let mut fds = [
            sys::pollfd(client.as_raw_fd(), events),
            sys::pollfd(self.imports.wake.as_fd().as_raw_fd(), libc::POLLIN),
            sys::pollfd(self.stop.as_fd().as_raw_fd(), libc::POLLIN),
        ];
        match sys::poll_raw(&mut fds, -1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if fds[1].revents != 0 {
            // Non-blocking: only resets the counter.
            let _ = self.imports.wake.read();
        }
        Ok(())
    }
}
