//! `org.ipchub.Hub1` at `/org/ipchub`: the hub's statistics, control methods
//! and announcements.
//!
//! Properties are served from the last statistics sample (at most
//! `dbus.stats_interval_ms` old), so reading them never costs the data
//! thread anything; methods take a fresh sample or run a control operation.
//! Methods run the (blocking) control call on `blocking`'s thread pool, so a
//! slow answer from the data thread never stalls zbus's executor, and with
//! it every other caller and signal.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, Type, Value};
use zbus::{interface, Connection};

use super::access::Access;
use super::error::CallError;
use super::path::channel_path;
use crate::daemon::control::ControlHandle;
use crate::hub::{ControlOp, ControlReply, HubStats};

/// How long a D-Bus method waits for the data thread; it answers between
/// readiness events, normally within microseconds.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Hub1 {
    control: ControlHandle,
    access: Access,
    stats: HubStats,
}

/// One row of `ListClients`, signature `(ussiuuasuttttb)`.
#[derive(Debug, Serialize, Type)]
pub struct ClientRow {
    pub id: u32,
    pub name: String,
    pub transport: String,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub channels: Vec<String>,
    pub queue_messages: u32,
    pub queue_bytes: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub dropped: u64,
    pub blocked: bool,
}

pub(crate) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn path(name: &str) -> OwnedObjectPath {
    ObjectPath::try_from(channel_path(name))
        .expect("channel_path makes valid object paths")
        .into()
}

impl Hub1 {
    pub fn new(control: ControlHandle, access: Access, stats: HubStats) -> Hub1 {
        Hub1 {
            control,
            access,
            stats,
        }
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    pub fn set_stats(&mut self, stats: HubStats) {
        self.stats = stats;
    }

    async fn call(&self, op: ControlOp) -> Result<ControlReply, CallError> {
        let control = self.control.clone();
        Ok(blocking::unblock(move || control.call(op, CALL_TIMEOUT)).await?)
    }

    /// A fresh sample of what the caller of `call` may see.
    async fn fresh_stats(
        &self,
        conn: &Connection,
        call: &Header<'_>,
    ) -> Result<HubStats, CallError> {
        let viewer = self.access.viewer(conn, call).await;
        match self.call(ControlOp::StatsFor(viewer)).await? {
            ControlReply::Stats(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: ControlReply) -> CallError {
    CallError::Unavailable(format!("unexpected answer from the hub: {reply:?}"))
}

/// The properties announced with PropertiesChanged, by D-Bus name, with
/// their values in `s`. The getters below return the same values.
pub fn notified_properties(s: &HubStats) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("Transports", Value::from(s.transports.clone())),
        ("ClientCount", Value::from(count(s.client_count))),
        ("ChannelCount", Value::from(count(s.channel_count))),
        ("MessagesIn", Value::from(s.totals.messages_in)),
        ("MessagesOut", Value::from(s.totals.messages_out)),
        ("BytesIn", Value::from(s.totals.bytes_in)),
        ("BytesOut", Value::from(s.totals.bytes_out)),
        ("Dropped", Value::from(s.totals.dropped)),
    ]
}

/// The notified properties whose values differ from `old` to `new`.
pub fn changed_properties(old: &HubStats, new: &HubStats) -> Vec<(&'static str, Value<'static>)> {
    super::changed_properties(old, new, notified_properties)
}

#[interface(name = "org.ipchub.Hub1")]
impl Hub1 {
    // The signals come first in the introspection XML, on purpose. Signal
    // arguments carry no direction (zbus writes none), but busctl 252 keeps
    // the direction of the last method argument it saw while it reads a
    // nested <node> ("busctl tree" on "/" and "/org") and applies it to
    // later signal arguments: after a method's "in" argument it warned
    // "Unexpected signal <arg> direction value 'in'" once per argument.
    // Here they follow org.freedesktop.DBus.Properties, whose last argument
    // is "out". tests/dbus.rs: introspection_gives_signal_arguments_no_direction.
    /// A client finished its handshake.
    #[zbus(signal)]
    pub async fn client_connected(
        emitter: &SignalEmitter<'_>,
        id: u32,
        transport: &str,
        pid: i32,
        uid: u32,
    ) -> zbus::Result<()>;

    /// A client went away (closed, crashed, or was disconnected).
    #[zbus(signal)]
    pub async fn client_disconnected(emitter: &SignalEmitter<'_>, id: u32) -> zbus::Result<()>;

    /// A channel came into use; its object now exists at `path`.
    #[zbus(signal)]
    pub async fn channel_created(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    /// A channel was forgotten (evicted at hub.max_channels); its object is gone.
    #[zbus(signal)]
    pub async fn channel_removed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    /// Version of the running ipchubd.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        self.stats.version.clone()
    }

    /// When ipchubd started, in seconds since the Unix epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn started_at(&self) -> u64 {
        self.stats.started_at
    }

    /// Seconds since ipchubd started (computed when read; never signalled).
    #[zbus(property(emits_changed_signal = "false"))]
    fn uptime(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(self.stats.started_at)
    }

    /// Transports clients may choose for their data path (socket, pipe, fifo, mqueue, shm).
    #[zbus(property)]
    fn transports(&self) -> Vec<String> {
        self.stats.transports.clone()
    }

    /// Clients connected now, over every transport.
    #[zbus(property)]
    fn client_count(&self) -> u32 {
        count(self.stats.client_count)
    }

    /// Channels the hub knows now, all of them (a count; only channels every uid may
    /// read have an object under /org/ipchub/channel).
    #[zbus(property)]
    fn channel_count(&self) -> u32 {
        count(self.stats.channel_count)
    }

    /// Messages accepted from publishers since start. Counters are sampled
    /// every dbus.stats_interval_ms and PropertiesChanged is sent at most once
    /// per sample, only for values that changed.
    #[zbus(property)]
    fn messages_in(&self) -> u64 {
        self.stats.totals.messages_in
    }

    /// Deliveries into subscriber queues since start (one message to three subscribers counts three).
    #[zbus(property)]
    fn messages_out(&self) -> u64 {
        self.stats.totals.messages_out
    }

    /// Payload bytes accepted from publishers since start.
    #[zbus(property)]
    fn bytes_in(&self) -> u64 {
        self.stats.totals.bytes_in
    }

    /// Payload bytes delivered into subscriber queues since start.
    #[zbus(property)]
    fn bytes_out(&self) -> u64 {
        self.stats.totals.bytes_out
    }

    /// Messages lost since start (drop-oldest evictions, disconnected subscribers); every loss is counted.
    #[zbus(property)]
    fn dropped(&self) -> u64 {
        self.stats.totals.dropped
    }

    /// State reported by components, by name (e.g. `bridge.mqtt.<name>`:
    /// state, messages_in, messages_out, spooled, dropped, last_error, ...),
    /// fresh, as in `ipchubctl stats`. A method, not a property: it names
    /// brokers and their errors, so only administrators (root, the hub's
    /// user, group ipchub) get it; others get an empty map.
    #[zbus(out_args("components"))]
    async fn components(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<
        std::collections::HashMap<String, std::collections::HashMap<String, String>>,
        CallError,
    > {
        let stats = self.fresh_stats(conn, &call).await?;
        // zvariant converts HashMaps, not BTreeMaps.
        Ok(stats
            .components
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect())
    }

    /// Every channel the caller may read: (name, object path of its org.ipchub.Channel1
    /// object; only channels every uid may read have one).
    /// Object paths escape each level: letters and digits stay, any other byte becomes _xx (hex).
    #[zbus(out_args("channels"))]
    async fn list_channels(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<Vec<(String, OwnedObjectPath)>, CallError> {
        let stats = self.fresh_stats(conn, &call).await?;
        Ok(stats
            .channels
            .iter()
            .map(|c| (c.name.clone(), path(&c.name)))
            .collect())
    }

    /// Every connected client the caller may see (its own uid's; all for root and group
    /// ipchub): (id, name, transport, pid, uid, gid, subscribed patterns,
    /// queued frames, queued bytes, messages published, messages delivered to it,
    /// messages it lost, whether it is holding publishers back under "block").
    #[zbus(out_args("clients"))]
    async fn list_clients(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<Vec<ClientRow>, CallError> {
        let stats = self.fresh_stats(conn, &call).await?;
        Ok(stats
            .clients
            .into_iter()
            .map(|c| ClientRow {
                id: c.id,
                name: c.name,
                transport: c.transport,
                pid: c.pid,
                uid: c.uid,
                gid: c.gid,
                channels: c.subscriptions,
                queue_messages: count(c.queue_messages),
                queue_bytes: c.queue_bytes as u64,
                messages_in: c.messages_in,
                messages_out: c.messages_out,
                dropped: c.dropped,
                blocked: c.blocked,
            })
            .collect())
    }

    /// Statistics of one channel, fresh. Fails with org.ipchub.Error.NoSuchChannel.
    #[zbus(out_args(
        "subscribers",
        "overflow",
        "published",
        "delivered",
        "bytes",
        "dropped"
    ))]
    async fn channel_stats(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
        name: String,
    ) -> Result<(u32, String, u64, u64, u64, u64), CallError> {
        // A channel the caller may not read is "no such channel": its
        // existence is not told either.
        let stats = self.fresh_stats(conn, &call).await?;
        let c = stats
            .channels
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| CallError::NoSuchChannel(format!("no channel named '{name}'")))?;
        Ok((
            count(c.subscribers),
            c.overflow,
            c.published,
            c.delivered,
            c.bytes,
            c.dropped,
        ))
    }

    /// Publish a message as the hub itself (client id 0); returns how many
    /// subscribers it was delivered to. Root and group ipchub only.
    /// Fails with org.ipchub.Error.Refused (bad channel name, message too
    /// large, a full queue under overflow "block").
    #[zbus(out_args("delivered"))]
    async fn publish(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<u32, CallError> {
        self.access.check(conn, &call, "Publish").await?;
        match self
            .call(ControlOp::Publish {
                channel,
                payload,
                priority: 0,
            })
            .await?
        {
            ControlReply::Published(n) => Ok(n),
            ControlReply::Failed(why) => Err(CallError::Refused(why)),
            other => Err(unexpected(other)),
        }
    }

    /// Disconnect a client (by the id ListClients shows); it is told why.
    /// Root and group ipchub only. Fails with org.ipchub.Error.NoSuchClient.
    async fn disconnect_client(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
        id: u32,
    ) -> Result<(), CallError> {
        self.access.check(conn, &call, "DisconnectClient").await?;
        match self.call(ControlOp::DisconnectClient(id)).await? {
            ControlReply::Done => Ok(()),
            ControlReply::Failed(why) => Err(CallError::NoSuchClient(why)),
            other => Err(unexpected(other)),
        }
    }

    /// Re-read the configuration file, as SIGHUP does. Root and group ipchub
    /// only. Fails with org.ipchub.Error.Refused if the file is invalid (the
    /// running configuration stays). The [dbus] table applies at restart only.
    async fn reload(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<(), CallError> {
        self.access.check(conn, &call, "Reload").await?;
        match self.call(ControlOp::Reload).await? {
            ControlReply::Done => Ok(()),
            ControlReply::Failed(why) => Err(CallError::Refused(why)),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Totals;
    use zbus::object_server::Interface;

    fn stats() -> HubStats {
        HubStats {
            version: "1".into(),
            started_at: 10,
            uptime_secs: 0,
            transports: vec!["socket".into()],
            client_count: 1,
            channel_count: 0,
            totals: Totals::default(),
            channels: Vec::new(),
            clients: Vec::new(),
            per_transport: Vec::new(),
            components: Default::default(),
        }
    }

    fn control() -> ControlHandle {
        let poll = mio::Poll::new().unwrap();
        ControlHandle {
            tx: std::sync::mpsc::channel().0,
            waker: std::sync::Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap()),
            on_panic: crate::supervise::unsupervised(),
        }
    }

    #[test]
    fn every_notified_property_is_declared_as_emitting_changes() {
        let hub = Hub1::new(control(), Access::from_system(), stats());
        let mut xml = String::new();
        hub.introspect_to_writer(&mut xml, 0);
        for (name, _) in notified_properties(&stats()) {
            let decl = xml
                .split("<property ")
                .find(|p| p.starts_with(&format!("name=\"{name}\"")))
                .unwrap_or_else(|| panic!("{name} is not a property:\n{xml}"));
            let decl = &decl[..decl.find("</property>").unwrap_or(decl.len())];
            assert!(!decl.contains("EmitsChangedSignal"), "{name}: {decl}");
        }
    }

    #[test]
    fn only_changed_counters_are_reported() {
        let old = stats();
        assert!(changed_properties(&old, &old).is_empty());
        let mut new = old.clone();
        new.totals.messages_in = 5;
        new.client_count = 2;
        new.uptime_secs = 99;
        let changed: Vec<&str> = changed_properties(&old, &new)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(changed, ["ClientCount", "MessagesIn"]);
    }
}
