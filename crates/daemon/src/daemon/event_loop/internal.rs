//! Endpoints and requests that do not come from clients: children the hub
//! spawns, publish FIFOs, and control operations from the D-Bus and bridge
//! threads.

use std::time::Instant;

use tracing::{info, warn};

use super::*;

impl EventLoop {
    /// Add an endpoint the hub made itself (spawned child, publish FIFO):
    /// already "greeted", optionally subscribed, no control connection.
    /// `transport` None: part of the hub itself (a channel ring's endpoint),
    /// never announced as a client (no D-Bus ClientConnected for it).
    pub(super) fn add_internal(
        &mut self,
        link: Box<dyn Link>,
        pid: i32,
        transport: Option<TransportKind>,
        name: &str,
        subscribe: Option<&str>,
    ) -> Option<ClientId> {
        let ident = Identity {
            pid,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let id = match self.hub.admit(ident) {
            Ok(id) => id,
            Err(e) => {
                warn!(endpoint = name, "cannot add endpoint: {e}");
                return None;
            }
        };
        if let Err(e) = self.register_link(id, link.as_ref()) {
            warn!(endpoint = name, "cannot register endpoint: {e}");
            self.hub.remove(id);
            return None;
        }
        if let Some(t) = transport {
            self.hub.set_transport(id, t, name);
        }
        self.hub.set_max_frame(id, link.max_frame());
        let transport = transport.unwrap_or(TransportKind::Shm);
        if let Some(pattern) = subscribe {
            let mut f = Vec::new();
            wire::encode(&mut f, FrameType::Subscribe, 0, 0, pattern, b"", 0, 0);
            if let Ok(Some((frame, _))) = wire::decode(&f, u32::MAX) {
                self.hub.handle(id, &frame, Instant::now());
            }
        }
        self.clients.insert(
            id,
            Client {
                ident,
                ctrl: None,
                ctrl_in: Vec::new(),
                data: Some(link),
                data_in: Vec::new(),
                greeted: true,
                hello_fds: Vec::new(),
                input_accounted: 0,
                paused: false,
                transport,
                closing: None,
                ctrl_gone: false,
            },
        );
        self.pending.push(id);
        Some(id)
    }

    /// Start children that are due and reap those that ended.
    pub(super) fn tend_children(&mut self, now: Instant) {
        self.spawner.reap(now);
        for started in self.spawner.due(now) {
            let cfg = self.spawner.config(started.slot).clone();
            let sub = cfg.stdin_channel.clone();
            if let Some(id) = self.add_internal(
                Box::new(started.link),
                started.pid,
                Some(TransportKind::Pipe),
                &cfg.name,
                sub.as_deref(),
            ) {
                self.spawner.attach(started.slot, id);
            }
        }
    }

    /// Create the per-channel publish FIFOs of `[fifo] publish_channels`.
    pub(super) fn open_publish_fifos(&mut self) {
        let cfg = self.hub.config().fifo.clone();
        if cfg.publish_channels.is_empty() {
            return;
        }
        // Validated at load: a group that cannot be resolved never gets here.
        let gid = cfg
            .group_gid()
            .unwrap_or_else(|_| nix::unistd::getegid().as_raw());
        for ch in &cfg.publish_channels {
            match crate::transport::fifo::publish_fifo(
                &self.opts.runtime_dir,
                ch,
                cfg.publish_mode,
                gid,
            ) {
                Ok((fd, placed)) => {
                    let path = placed.path();
                    let max = self.hub.config().hub.max_message_size as usize;
                    let link = crate::transport::lines::LineLink::new(
                        Some(fd),
                        None,
                        Some(ch.clone()),
                        max,
                        &path.display().to_string(),
                    )
                    .remove_on_drop(placed);
                    let name = format!("publish FIFO {}", path.display());
                    if self
                        .add_internal(
                            Box::new(link),
                            std::process::id() as i32,
                            Some(TransportKind::Fifo),
                            &name,
                            None,
                        )
                        .is_some()
                    {
                        info!(channel = %ch, path = %path.display(), "publish FIFO ready");
                    }
                }
                Err(e) => warn!(channel = %ch, "cannot create publish FIFO: {e}"),
            }
        }
    }

    pub(super) fn run_control(&mut self) {
        // The sync thread shares this waker: ACKs it made good go out.
        self.hub.collect_durable();
        self.finish_reload();
        while let Ok((op, reply)) = self.control_rx.try_recv() {
            let answer = match op {
                ControlOp::Stats => ControlReply::Stats(Box::new(self.hub.stats())),
                ControlOp::StatsFor(viewer) => {
                    ControlReply::Stats(Box::new(self.hub.stats_for(&viewer)))
                }
                ControlOp::Publish {
                    channel,
                    payload,
                    priority,
                } => match self.hub.publish_internal(&channel, &payload, priority) {
                    Ok(n) => ControlReply::Published(n),
                    Err(e) => ControlReply::Failed(e),
                },
                ControlOp::DisconnectClient(id) => {
                    if self.clients.contains_key(&id) {
                        self.hub.send_error(
                            id,
                            0,
                            wire::ErrorCode::NotPermitted,
                            &CloseReason::Administrator.to_string(),
                        );
                        self.close(id, CloseReason::Administrator);
                        ControlReply::Done
                    } else {
                        ControlReply::Failed(format!("no client with id {id}"))
                    }
                }
                ControlOp::Reload => {
                    // Answered when the reload thread is done.
                    self.reload_waiters.push(reply);
                    self.reload();
                    continue;
                }
                ControlOp::SetStatus { component, status } => {
                    self.hub.set_component_status(component, status);
                    ControlReply::Done
                }
            };
            let _ = reply.send(answer);
        }
    }

    pub(super) fn forward_events(&mut self) {
        if self.fanout.is_empty() {
            return;
        }
        let mut events = Vec::new();
        self.hub.take_events(&mut events);
        if !events.is_empty() {
            self.fanout.send(&events);
        }
    }
}
