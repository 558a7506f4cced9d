//! Ending connections: disconnecting a client (lingering while it is owed
//! an ERROR), forgetting it, and shutting the hub down.

use std::time::Instant;

use mio::unix::SourceFd;
use tracing::{info, warn};

use super::*;
use crate::hub::loglimit::LogKind;

impl EventLoop {
    /// Disconnect a client. Its subscriptions end at once; if an explanation
    /// (ERROR) is still queued and the client is alive, the connection
    /// lingers up to [`LINGER`] so the client learns why, then closes.
    pub(super) fn close(&mut self, id: ClientId, reason: CloseReason) {
        if self.ring_failed(id, &reason) {
            return;
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.closing.is_some() {
            return;
        }
        let peer_gone = reason.peer_gone();
        if !peer_gone {
            if let Some(q) = self.hub.queue(id) {
                let _ = match c.data.as_mut() {
                    Some(link) => link.flush(q).map(|_| ()),
                    None => flush_ctrl(&c.ctrl, q),
                };
            }
        }
        // Client-caused lines, rate-limited per uid (hub::loglimit).
        let kind = if peer_gone {
            LogKind::Connection
        } else {
            LogKind::Disconnected
        };
        if self.hub.log_allowed(c.ident.uid, kind) {
            // Which client: its name too (a slow consumer's above all).
            let (name, message_id) = self.hub.close_log(id);
            if peer_gone {
                info!(
                    message_id,
                    client = id,
                    client_pid = c.ident.pid,
                    client_uid = c.ident.uid,
                    transport = c.transport.name(),
                    name = %name,
                    "client disconnected"
                );
            } else {
                warn!(
                    message_id,
                    client = id,
                    client_pid = c.ident.pid,
                    client_uid = c.ident.uid,
                    transport = c.transport.name(),
                    name = %name,
                    "client {id} ({name}) disconnected: {reason}"
                );
            }
        }
        let leftover = if peer_gone {
            None
        } else {
            self.hub.take_queue(id).filter(|q| !q.is_empty())
        };
        self.hub.remove(id);
        self.spawner.client_closed(id);
        match leftover {
            Some(q) => {
                let until = Instant::now() + LINGER;
                c.closing = Some((until, q));
                self.lingering.push(until, id);
            }
            None => self.finalize(id),
        }
        // Its ring slots and any ring lock it held (a writer that died
        // mid-message must not wedge the channel).
        self.free_slots(id, None);
    }

    /// Forget a client for good: deregister and drop its descriptors (its
    /// link's Drop removes any files or IPC objects it created).
    pub(super) fn finalize(&mut self, id: ClientId) {
        // Its buffered input no longer counts against its uid.
        if let Some(c) = self.clients.get_mut(&id) {
            c.ctrl_in = Vec::new();
            c.data_in = Vec::new();
        }
        self.sync_input(id);
        let Some(c) = self.clients.remove(&id) else {
            return;
        };
        let reg = self.poll.registry();
        if let Some(fd) = &c.ctrl {
            let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        if let Some(link) = &c.data {
            let (r, w) = (link.read_fd(), link.write_fd());
            let _ = reg.deregister(&mut SourceFd(&r));
            if w != r {
                let _ = reg.deregister(&mut SourceFd(&w));
            }
        }
    }

    /// Flush a lingering client's last words; finalize once done.
    pub(super) fn flush_closing(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let Some((_, q)) = c.closing.as_mut() else {
            return;
        };
        let res = match c.data.as_mut() {
            Some(link) => link.flush(q).map(|_| ()),
            None => flush_ctrl(&c.ctrl, q),
        };
        if res.is_err() || q.is_empty() {
            self.finalize(id);
        }
    }

    /// When the first lingering client must go (no walk over clients).
    pub(super) fn next_linger_deadline(&mut self) -> Option<Instant> {
        let clients = &self.clients;
        self.lingering
            .next(|id, at| lingers_until(clients, id) == Some(at))
    }

    pub(super) fn expire_lingering(&mut self, now: Instant) {
        let clients = &self.clients;
        let expired = self
            .lingering
            .pop_due(now, |id, at| lingers_until(clients, id) == Some(at));
        for id in expired {
            self.finalize(id);
        }
    }

    /// Say goodbye to everyone and release what we created.
    pub(super) fn shutdown(&mut self) {
        systemd::stopping();
        // Staged disk records are written and answered ahead of the BYEs.
        self.hub.flush_store();
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in &ids {
            self.hub
                .send_control(*id, FrameType::Bye, 0, b"hub shutting down");
        }
        for id in ids {
            self.flush(id);
            if let Some(c) = self.clients.remove(&id) {
                drop(c);
            }
            self.hub.remove(id);
        }
        // Every link is dropped by now, removing its FIFOs and queues; the
        // directory they lived in goes too.
        self.spawner.stop_all();
        let _ = std::fs::remove_dir(self.opts.runtime_dir.join(crate::transport::fifo::FIFO_DIR));
        crate::transport::fifo::remove_publish_dir(
            &self.opts.runtime_dir.join(crate::transport::fifo::PUB_DIR),
        );
        if let Some(p) = &self.opts.unlink_on_exit {
            let _ = std::fs::remove_file(p);
        }
        info!("stopped");
    }
}

/// Until when `id` lingers, if it does.
fn lingers_until(clients: &HashMap<ClientId, Client>, id: ClientId) -> Option<Instant> {
    clients
        .get(&id)
        .and_then(|c| c.closing.as_ref())
        .map(|(until, _)| *until)
}

impl EventLoop {
    /// Planned restart (SIGUSR2): hand every client that can be kept to
    /// the successor (`export_state`), say goodbye to the others ("hub
    /// restarting": their libraries reconnect by themselves), stop our
    /// children, and execute ipchubd again with the listening socket handed
    /// over (`daemon/handover.rs`), so the socket never goes away and
    /// connections made meanwhile wait in its backlog. Returns only if the
    /// re-execution failed; the hub then carries on.
    pub(super) fn handover(&mut self) {
        systemd::reloading();
        info!(
            generation = self.opts.generation + 1,
            "planned restart: handing over to a new ipchubd"
        );
        let state = self.export_state();
        self.exec_successor(state);
    }

    /// The hand-over's first half, shared by SIGUSR2 (re-execution) and a
    /// stop into systemd's fd store (`event_loop/fdstore_stop.rs`): every
    /// client whose data path is descriptors alone (shm included: ring
    /// memfds and eventfds) leaves the loop with its descriptors open
    /// (close-on-exec cleared, numbers in the state's index); the others
    /// (an shm client in a channel ring, one closing or not greeted) get
    /// BYE "hub restarting"; children stop.
    pub(super) fn export_state(&mut self) -> crate::daemon::handover::State {
        use crate::daemon::handover;
        use std::os::fd::AsRawFd;
        // Staged disk records are written, and their ACKs queued, before
        // the queues are exported.
        self.hub.flush_store();
        // The hub's own state, before the rings leave (a ring leaving
        // resets its channel's count of direct publishes).
        let mut hub_state = self.hub.export_hub_state();
        let listener = self.listener.as_raw_fd();
        let mut fds = vec![handover::FdEntry {
            name: "listener".into(),
            fd: listener,
        }];
        let mut handed = Vec::new();
        // Clients whose data path is descriptors alone keep their
        // connection (socket, pipe, FIFO, mqueue, and shm: its two ring
        // memfds and two eventfds), and the channel rings whose every
        // participant is kept go along with them; the participants of a
        // ring that cannot go along stay behind (they reconnect).
        let mut keepable: std::collections::HashSet<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.greeted
                    && c.ctrl.is_some()
                    && c.closing.is_none()
                    && !c.ctrl_gone
                    && c.data.as_ref().is_none_or(|l| l.handover_fds().is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        let mut rings = Vec::new();
        for channel in self.rings_to_hand_over(&mut keepable) {
            match self.export_ring(&channel) {
                Some(r) => {
                    fds.push(handover::FdEntry {
                        name: format!("ring:{}", r.endpoint.id),
                        fd: r.memfd,
                    });
                    fds.push(handover::FdEntry {
                        name: format!("ring:{}:event", r.endpoint.id),
                        fd: r.hub_event,
                    });
                    rings.push(r);
                }
                None => {
                    warn!(channel = %channel, "cannot hand a channel ring over: its participants reconnect");
                    for c in self.ring_members(&channel) {
                        keepable.remove(&c);
                    }
                }
            }
        }
        // A ring that could not be exported takes its participants out of
        // the hand-over; so do, in turn, the rings those were in.
        let mut rings_left = Vec::new();
        for r in rings {
            if r.slots.iter().all(|s| keepable.contains(&s.1)) {
                rings_left.push(r);
            } else {
                // Its participants are not handed over: its descriptors
                // close with this process.
                fds.retain(|e| e.fd != r.memfd && e.fd != r.hub_event);
                let _ = nix::unistd::close(r.memfd);
                let _ = nix::unistd::close(r.hub_event);
                for s in &r.slots {
                    keepable.remove(&s.1);
                }
            }
        }
        let rings = rings_left;
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            let keep = keepable.contains(&id);
            if keep {
                if let Some(snap) = self.hub.export_client(id) {
                    let mut c = self.clients.remove(&id).expect("listed");
                    let fd = c.ctrl.take().expect("checked");
                    let raw = fd.as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                    // The data path's descriptors are duplicated (dup(2)
                    // clears close-on-exec), then the link is dropped.
                    let data_fds: Vec<std::os::fd::RawFd> = match &c.data {
                        Some(l) => l
                            .handover_fds()
                            .expect("checked")
                            .iter()
                            .filter_map(|&f| nix::unistd::dup(f).ok())
                            .collect(),
                        None => Vec::new(),
                    };
                    let want = c
                        .data
                        .as_ref()
                        .and_then(|l| l.handover_fds())
                        .map_or(0, |v| v.len());
                    let complete = data_fds.len() == want;
                    if complete && handover::inherit(raw).is_ok() {
                        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
                        fds.push(handover::FdEntry {
                            name: format!("client:{id}"),
                            fd: raw,
                        });
                        for (&d, role) in data_fds.iter().zip(handover::DATA_ROLES) {
                            fds.push(handover::FdEntry {
                                name: format!("client:{id}:{role}"),
                                fd: d,
                            });
                        }
                        if let Some(l) = &c.data {
                            let reg = self.poll.registry();
                            let _ = reg.deregister(&mut SourceFd(&l.read_fd()));
                            if l.write_fd() != l.read_fd() {
                                let _ = reg.deregister(&mut SourceFd(&l.write_fd()));
                            }
                        }
                        handed.push(handover::HandedClient {
                            fd: raw,
                            hub: snap,
                            input: std::mem::take(&mut c.ctrl_in),
                            data_fds,
                            data_input: std::mem::take(&mut c.data_in),
                        });
                        continue;
                    }
                    for d in data_fds {
                        let _ = nix::unistd::close(d);
                    }
                    self.hub.remove(id);
                    continue; // dropped: the client sees the end and reconnects
                }
            }
            self.hub
                .send_control(id, FrameType::Bye, 0, b"hub restarting");
            self.flush(id);
            self.clients.remove(&id);
            self.hub.remove(id);
        }
        // A participant that could not be handed over after all (its
        // descriptors could not be duplicated) is gone: its slot is no
        // longer the state's. Its token stays in the ring, where the new
        // hub sees a slot nobody was given and retires the ring (its other
        // participants carry on through the hub, none reconnects).
        let mut rings = rings;
        for r in &mut rings {
            r.slots.retain(|s| {
                handed
                    .iter()
                    .any(|c: &handover::HandedClient| c.hub.id == s.1)
            });
        }
        let (rings, emptied): (Vec<_>, Vec<_>) =
            rings.into_iter().partition(|r| !r.slots.is_empty());
        for r in emptied {
            fds.retain(|e| e.fd != r.memfd && e.fd != r.hub_event);
            let _ = nix::unistd::close(r.memfd);
            let _ = nix::unistd::close(r.hub_event);
        }
        self.spawner.stop_all();
        crate::transport::fifo::remove_publish_dir(
            &self.opts.runtime_dir.join(crate::transport::fifo::PUB_DIR),
        );
        // The clients not kept are gone now: their bytes are the gone ones'.
        hub_state.gone_bytes = self.hub.export_gone_bytes();
        let mut state = handover::State {
            hub_version: env!("CARGO_PKG_VERSION").into(),
            generation: self.opts.generation + 1,
            socket_path: self.opts.socket_path.clone(),
            unlink_on_exit: self.opts.unlink_on_exit.clone(),
            fds,
            next_client_id: self.hub.next_client_id(),
            clients: handed,
            rings,
            hub_state,
        };
        handover::fit(&mut state);
        state
    }

    /// The hand-over's second half on SIGUSR2: execute ipchubd again with
    /// `state`. Returns only if that failed; the hub then carries on.
    fn exec_successor(&mut self, state: crate::daemon::handover::State) {
        use crate::daemon::handover;
        use std::os::fd::AsRawFd;
        let listener = self.listener.as_raw_fd();
        let err = match handover::write_memfd(&state) {
            Ok(memfd) => match handover::inherit(listener) {
                Ok(()) => handover::exec(memfd),
                Err(e) => e,
            },
            Err(e) => e,
        };
        warn!("planned restart failed, carrying on: {err}");
        let _ = nix::fcntl::fcntl(
            listener,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // Serve the kept clients again, as the successor would have. The
        // hub's own state never left; its rings count on from where they
        // were, and the kept clients' bytes stay theirs (not the gone ones').
        for c in &state.clients {
            self.hub.remove(c.hub.id);
        }
        self.hub.replace_gone_bytes(&state.hub_state.gone_bytes);
        self.hub.restore_direct_seen(&state.hub_state);
        self.restore_clients(state.clients, state.next_client_id);
        self.restore_rings(state.rings);
        self.open_publish_fifos();
        systemd::reloaded(&self.status_line());
    }
}

impl EventLoop {
    /// Serve the clients a predecessor handed over (`handover::State`)
    /// under their ids. One that cannot be taken over (a subscription the
    /// configuration now refuses, say) is closed: its library reconnects.
    pub fn restore_clients(
        &mut self,
        clients: Vec<crate::daemon::handover::HandedClient>,
        next_id: ClientId,
    ) {
        use std::os::fd::AsRawFd;
        self.hub.set_next_client_id(next_id);
        for h in clients {
            let id = h.hub.id;
            // The predecessor handed these descriptors over by number.
            // (Or systemd's fd store passed them: `handover::claim`.)
            let claimed = crate::daemon::handover::claim(h.fd).and_then(|fd| {
                let data = h
                    .data_fds
                    .iter()
                    .map(|&f| crate::daemon::handover::claim(f))
                    .collect::<io::Result<Vec<OwnedFd>>>()?;
                Ok((fd, data))
            });
            let (fd, data) = match claimed {
                Ok(c) => c,
                Err(e) => {
                    warn!(client = id, error = %e, "handed-over descriptor unusable, it reconnects");
                    continue;
                }
            };
            let _ = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            for d in &data {
                let _ = nix::fcntl::fcntl(
                    d.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                );
            }
            let Some(transport) = TransportKind::parse(&h.hub.transport) else {
                warn!(client = id, "unknown transport, it reconnects");
                continue;
            };
            let link: Option<Box<dyn crate::transport::Link>> = match (transport, data.len()) {
                (TransportKind::Socket, 0) => None,
                (TransportKind::Pipe | TransportKind::Fifo, 2) => {
                    let [r, w]: [OwnedFd; 2] = data.try_into().expect("two");
                    Some(Box::new(crate::transport::stream::StreamLink::pair(r, w)))
                }
                (TransportKind::Shm, 4) => {
                    let fds: [OwnedFd; 4] = data.try_into().expect("four");
                    let max = self.hub.config().hub.max_message_size;
                    match crate::transport::shm::restore(fds, max) {
                        Ok(l) => Some(Box::new(l)),
                        Err(e) => {
                            warn!(
                                client = id,
                                "cannot take over its shared memory rings, it reconnects: {e}"
                            );
                            continue;
                        }
                    }
                }
                (TransportKind::Mqueue, 2) => {
                    let [r, w]: [OwnedFd; 2] = data.try_into().expect("two");
                    match crate::transport::mqueue::restore(r, w) {
                        Ok(l) => Some(Box::new(l)),
                        Err(e) => {
                            warn!(
                                client = id,
                                "cannot take over its queues, it reconnects: {e}"
                            );
                            continue;
                        }
                    }
                }
                (t, n) => {
                    warn!(
                        client = id,
                        "a {} client with {n} data descriptors: it reconnects",
                        t.name()
                    );
                    continue;
                }
            };
            if let Err(e) = self.hub.import_client(&h.hub) {
                warn!(client = id, "cannot take over client, it reconnects: {e}");
                continue;
            }
            if let Some(l) = &link {
                if let Err(e) = self.register_link(id, l.as_ref()) {
                    warn!(
                        client = id,
                        "cannot register its data path, it reconnects: {e}"
                    );
                    self.hub.remove(id);
                    continue;
                }
                self.hub.set_max_frame(id, l.max_frame());
            }
            let raw = fd.as_raw_fd();
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&raw),
                token(id, ROLE_CTRL),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(client = id, "cannot register client taken over: {e}");
                self.hub.remove(id);
                continue;
            }
            let ident = self.hub.identity(id).expect("just imported");
            self.clients.insert(
                id,
                Client {
                    ident,
                    ctrl: Some(fd),
                    ctrl_in: h.input,
                    data: link,
                    data_in: h.data_input,
                    greeted: true,
                    hello_fds: Vec::new(),
                    input_accounted: 0,
                    paused: false,
                    transport,
                    closing: None,
                    ctrl_gone: false,
                },
            );
            self.sync_input(id);
            // Its input may hold frames already; readiness will not say so.
            self.pending.push(id);
        }
    }
}
