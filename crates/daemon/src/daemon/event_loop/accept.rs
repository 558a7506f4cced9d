//! Taking connections in: accepting (retried on a timer after EMFILE),
//! admitting a peer by its credentials, and the handshake (HELLO within
//! `hub.handshake_timeout_ms`, then WELCOME with the chosen data path).

use super::*;

impl EventLoop {
    pub(super) fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(OwnedFd::from(stream)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_retry = None;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog, and edge-triggered readiness will not report
                    // it again, so retry on a timer (logged once per episode).
                    if self.accept_retry.is_none() {
                        warn!("accept failed, retrying every {ACCEPT_RETRY:?}: {e}");
                    }
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    pub(super) fn admit(&mut self, fd: OwnedFd) {
        let ident =
            match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials) {
                Ok(c) => Identity {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                },
                Err(e) => {
                    warn!("cannot read peer credentials, refusing client: {e}");
                    return;
                }
            };
        let groups = supplementary_groups(ident.uid, ident.gid);
        let id = match self.hub.admit_with_groups(ident, groups) {
            Ok(id) => id,
            Err(e) => {
                if self.hub.log_allowed(ident.uid, LogKind::Refused) {
                    warn!(
                        client_pid = ident.pid,
                        client_uid = ident.uid,
                        "refusing client: {e}"
                    );
                }
                let mut out = Vec::new();
                let p = wire::frame::error_payload(wire::ErrorCode::LimitReached, &e.to_string());
                wire::encode(&mut out, FrameType::Error, 0, 0, "", &p, 0, 0);
                let _ = nix::unistd::write(&fd, &out);
                return;
            }
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&raw),
            token(id, ROLE_CTRL),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot register client: {e}");
            self.hub.remove(id);
            return;
        }
        debug!(
            client = id,
            client_pid = ident.pid,
            client_uid = ident.uid,
            "client connected"
        );
        self.clients.insert(
            id,
            Client {
                ident,
                ctrl: Some(fd),
                ctrl_in: Vec::new(),
                data: None,
                data_in: Vec::new(),
                greeted: false,
                hello_fds: Vec::new(),
                input_accounted: 0,
                paused: false,
                transport: TransportKind::Socket,
                closing: None,
                ctrl_gone: false,
            },
        );
        let timeout = Duration::from_millis(self.hub.config().hub.handshake_timeout_ms);
        self.handshakes.push_back((Instant::now() + timeout, id));
        // Data may already be waiting; edge-triggered readiness may not tell us again.
        self.pending.push(id);
    }

    /// Close connections that did not send HELLO in time.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.handshakes.front() {
            if deadline > now {
                return;
            }
            self.handshakes.pop_front();
            let Some(c) = self.clients.get(&id) else {
                continue;
            };
            if c.greeted || c.closing.is_some() {
                continue;
            }
            let reason = CloseReason::HandshakeTimeout {
                ms: self.hub.config().hub.handshake_timeout_ms,
            };
            self.hub
                .send_error(id, 0, wire::ErrorCode::BadHandshake, &reason.to_string());
            self.close(id, reason);
        }
    }

    /// The first frame must be HELLO: set up the chosen data path and answer WELCOME.
    pub(super) fn greet(
        &mut self,
        id: ClientId,
        ty: FrameType,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<(), CloseReason> {
        let c = self.clients.get_mut(&id).expect("caller checked");
        let fail = |c: &Client, code: wire::ErrorCode, text: &str| {
            let mut out = Vec::new();
            wire::encode(
                &mut out,
                FrameType::Error,
                0,
                0,
                "",
                &wire::frame::error_payload(code, text),
                0,
                seq,
            );
            if let Some(fd) = &c.ctrl {
                let _ = nix::unistd::write(fd, &out);
            }
            CloseReason::Refused(text.to_string())
        };
        if ty != FrameType::Hello {
            return Err(fail(
                c,
                wire::ErrorCode::BadHandshake,
                &format!("expected HELLO as the first frame, got {ty:?}"),
            ));
        }
        let hello =
            handshake::Hello::parse(&payload).map_err(|e| fail(c, e.code(), &e.to_string()))?;
        let peer = crate::transport::Peer {
            id,
            uid: c.ident.uid,
            gid: c.ident.gid,
            runtime_dir: &self.opts.runtime_dir,
            max_message: self.hub.config().hub.max_message_size,
            shm_ring_size: self.hub.config().shm.ring_size,
        };
        let fds = std::mem::take(&mut c.hello_fds);
        let (offer, mut welcome) =
            handshake::setup(&peer, &hello, fds).map_err(|e| fail(c, e.code(), &e.to_string()))?;
        if hello.transport == TransportKind::Shm && self.hub.config().shm.channel_rings {
            // The client may ask for channel rings (OPEN_RING).
            welcome.push_str("channel_rings=1\n");
        }
        let crate::transport::Offer { link, fds, .. } = offer;
        let mut out = Vec::new();
        wire::encode(
            &mut out,
            FrameType::Welcome,
            0,
            0,
            "",
            welcome.as_bytes(),
            0,
            seq,
        );
        let ctrl = c
            .ctrl
            .as_ref()
            .ok_or_else(|| CloseReason::Refused("no control connection".into()))?;
        handshake::send_with_fds(ctrl, &out, &fds).map_err(CloseReason::SendWelcome)?;
        drop(fds);
        if let Some(link) = &link {
            self.register_link(id, link.as_ref())
                .map_err(CloseReason::RegisterData)?;
        }
        let c = self.clients.get_mut(&id).expect("caller checked");
        c.data = link;
        c.greeted = true;
        c.transport = hello.transport;
        self.hub.set_transport(id, hello.transport, &hello.name);
        self.hub
            .set_max_frame(id, c.data.as_ref().and_then(|l| l.max_frame()));
        if self.hub.log_allowed(c.ident.uid, LogKind::Connection) {
            info!(
                message_id = crate::daemon::logging::msgid::CLIENT_CONNECTED,
                client = id,
                client_pid = c.ident.pid,
                client_uid = c.ident.uid,
                transport = hello.transport.name(),
                name = %hello.name,
                "client connected via {}",
                hello.transport.describe()
            );
        }
        // Data may have arrived on the new path before we registered it.
        self.pending.push(id);
        Ok(())
    }
}

/// The uid's supplementary groups from the user database, for `group:`
/// access rules (SO_PEERCRED carries only the primary gid). A uid without
/// an entry has none.
pub(super) fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, gid.into()).map_or_else(
        |_| Vec::new(),
        |g| g.into_iter().map(|g| g.as_raw()).collect(),
    )
}
