//! One connection to the bus, from claiming `org.ipchub` until the bus goes
//! away: the objects served and what is announced on them.
//!
//! Everything here runs on the D-Bus thread inside `zbus::block_on`; zbus's
//! own executor thread answers incoming calls meanwhile. Statistics samples
//! are blocking control calls from this thread, which is ours to block.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use zbus::fdo::{ObjectManager, Properties};
use zbus::names::InterfaceName;
use zbus::object_server::{Interface, InterfaceRef, SignalEmitter};
use zbus::zvariant::{ObjectPath, Value};
use zbus::Connection;

use super::access::Access;
use super::channel1::{self, Channel1};
use super::hub1::{self, Hub1, CALL_TIMEOUT};
use super::path::{channel_path, HUB_PATH};
use super::BUS_NAME;
use crate::config::BusKind;
use crate::daemon::control::{ControlError, ControlHandle};
use crate::hub::stats::ChannelStats;
use crate::hub::{ControlOp, ControlReply, HubEvent, HubStats, Viewer};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Bus(#[from] zbus::Error),
    #[error("{0}")]
    Hub(#[from] ControlError),
}

pub struct Session {
    conn: Connection,
    hub: InterfaceRef<Hub1>,
    control: ControlHandle,
    /// The channel objects served, by channel name.
    channels: BTreeMap<String, InterfaceRef<Channel1>>,
}

/// A statistics snapshot from the data thread, of what anyone may see:
/// properties, channel objects and signals reach every bus member, so they
/// show only channels every uid may read (the hub-wide totals and counts
/// are aggregates; see `hub::stats`).
fn sample(control: &ControlHandle) -> Result<HubStats, ControlError> {
    match control.call(ControlOp::StatsFor(Viewer::Public), CALL_TIMEOUT)? {
        ControlReply::Stats(s) => Ok(*s),
        // The data thread answers Stats with Stats; anything else is a bug
        // there, and "gone" is the safest reading of it.
        _ => Err(ControlError::Gone),
    }
}

fn object_path(name: &str) -> zbus::Result<ObjectPath<'static>> {
    Ok(ObjectPath::try_from(channel_path(name))?)
}

async fn emit_changes(
    emitter: &SignalEmitter<'_>,
    interface: InterfaceName<'static>,
    changes: Vec<(&'static str, Value<'static>)>,
) -> zbus::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let changed: HashMap<&str, Value<'_>> = changes.into_iter().collect();
    Properties::properties_changed(emitter, interface, changed, Cow::Borrowed(&[])).await
}

impl Session {
    /// Connect, serve the objects, then claim the name: a client that sees
    /// `org.ipchub` appear finds every object already there.
    pub async fn open(
        bus: BusKind,
        control: &ControlHandle,
        access: Access,
    ) -> Result<Session, SessionError> {
        let stats = sample(control)?;
        let builder = match bus {
            BusKind::System => zbus::connection::Builder::system()?,
            BusKind::Session => zbus::connection::Builder::session()?,
        };
        let channels = stats.channels.clone();
        let conn = builder
            .serve_at(HUB_PATH, ObjectManager)?
            .serve_at(HUB_PATH, Hub1::new(control.clone(), access, stats))?
            .build()
            .await?;
        let hub = conn.object_server().interface(HUB_PATH).await?;
        let mut session = Session {
            conn,
            hub,
            control: control.clone(),
            channels: BTreeMap::new(),
        };
        session.reconcile(&channels).await?;
        session.conn.request_name(BUS_NAME).await?;
        Ok(session)
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Make the channel objects those of `channels`: add the new ones (with
    /// their current statistics, announced by InterfacesAdded), remove the
    /// gone. Existing objects are left for [`tick`](Self::tick) to update.
    async fn reconcile(&mut self, channels: &[ChannelStats]) -> zbus::Result<()> {
        let server = self.conn.object_server();
        let wanted: BTreeMap<&str, &ChannelStats> =
            channels.iter().map(|c| (c.name.as_str(), c)).collect();
        let gone: Vec<String> = self
            .channels
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.channels.remove(&name);
            server.remove::<Channel1, _>(object_path(&name)?).await?;
        }
        for (name, stats) in wanted {
            if self.channels.contains_key(name) {
                continue;
            }
            let path = object_path(name)?;
            server
                .at(path.clone(), Channel1::new(stats.clone()))
                .await?;
            let iface = server.interface::<_, Channel1>(path).await?;
            self.channels.insert(name.to_string(), iface);
        }
        Ok(())
    }

    /// Sample the counters; update every object and announce what changed,
    /// one PropertiesChanged per object at most.
    pub async fn tick(&mut self) -> Result<(), SessionError> {
        let stats = sample(&self.control)?;
        let changes = {
            let mut hub = self.hub.get_mut().await;
            let changes = hub1::changed_properties(hub.stats(), &stats);
            hub.set_stats(stats.clone());
            changes
        };
        emit_changes(self.hub.signal_emitter(), Hub1::name(), changes).await?;
        self.reconcile(&stats.channels).await?;
        for c in &stats.channels {
            let Some(iface) = self.channels.get(&c.name) else {
                continue;
            };
            let changes = {
                let mut ch = iface.get_mut().await;
                let changes = channel1::changed_properties(ch.stats(), c);
                if !changes.is_empty() {
                    ch.set_stats(c.clone());
                }
                changes
            };
            emit_changes(iface.signal_emitter(), Channel1::name(), changes).await?;
        }
        Ok(())
    }

    /// Announce hub events as signals. Channel objects are added or removed
    /// first, so a ChannelCreated signal names an object that exists.
    pub async fn announce(&mut self, events: Vec<HubEvent>) -> Result<(), SessionError> {
        let channels_moved = events
            .iter()
            .any(|e| matches!(e, HubEvent::ChannelCreated(_) | HubEvent::ChannelRemoved(_)));
        if channels_moved {
            // One sample per batch of events, not per channel.
            let stats = sample(&self.control)?;
            self.reconcile(&stats.channels).await?;
        }
        let emitter = self.hub.signal_emitter();
        for ev in events {
            match ev {
                HubEvent::ClientConnected {
                    id,
                    transport,
                    pid,
                    uid,
                } => Hub1::client_connected(emitter, id, &transport, pid, uid).await?,
                HubEvent::ClientDisconnected { id } => {
                    Hub1::client_disconnected(emitter, id).await?
                }
                // The hub records these only for channels every uid may
                // read (`Hub::record`): signals reach every bus member.
                HubEvent::ChannelCreated(name) => {
                    Hub1::channel_created(emitter, &name, object_path(&name)?).await?
                }
                HubEvent::ChannelRemoved(name) => {
                    Hub1::channel_removed(emitter, &name, object_path(&name)?).await?
                }
            }
        }
        Ok(())
    }
}
