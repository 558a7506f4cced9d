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
        let groups = peer_groups(&ident);
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

/// The peer's supplementary groups, for `group:`/`gid:` access rules
/// (SO_PEERCRED carries only the primary gid): the `Groups:` line of
/// `/proc/<pid>/status`, read right at accept. A file read, never a user
/// database (NSS, possibly LDAP) lookup, so a slow directory server cannot
/// stall the data thread. These are the groups the connecting process
/// holds, as the kernel judges its file access; a user added to a group
/// gains it here after logging in again, as for files.
///
/// The pid may have exited and been reused since it connected: the file
/// is only believed if its effective uid and gid are those SO_PEERCRED
/// gave, so the groups can only be those of a process of the same
/// credentials. Anything unreadable (no pid, another pid namespace,
/// `hidepid`) gives no supplementary groups: a rule naming one refuses.
pub(super) fn peer_groups(ident: &Identity) -> Vec<u32> {
    if ident.pid <= 0 {
        return Vec::new();
    }
    std::fs::read_to_string(format!("/proc/{}/status", ident.pid))
        .ok()
        .and_then(|status| status_groups(&status, ident.uid, ident.gid))
        .unwrap_or_default()
}

/// The `Groups:` of a `/proc/<pid>/status` text whose effective uid and gid
/// are `uid` and `gid`; None if they are not (or a line is malformed).
pub(super) fn status_groups(status: &str, uid: u32, gid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::split_whitespace)
    };
    // Uid: and Gid: are real, effective, saved, filesystem.
    let effective = |name: &str| field(name)?.nth(1)?.parse::<u32>().ok();
    if effective("Uid:")? != uid || effective("Gid:")? != gid {
        return None;
    }
    field("Groups:")?
        .map(|g| g.parse::<u32>().ok())
        .collect::<Option<Vec<u32>>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
        FDSize:\t64\nGroups:\t4 24 27 100 \nNStgid:\t42\n";

    #[test]
    fn groups_come_from_the_status_of_the_same_credentials() {
        assert_eq!(status_groups(STATUS, 1000, 100), Some(vec![4, 24, 27, 100]));
        // A pid reused by a process of other credentials is not believed.
        assert_eq!(status_groups(STATUS, 1001, 100), None);
        assert_eq!(status_groups(STATUS, 1000, 0), None);
        let none = STATUS.replace("4 24 27 100 ", "");
        assert_eq!(status_groups(&none, 1000, 100), Some(vec![]));
        assert_eq!(status_groups("Name:\tx\n", 1000, 100), None);
    }

    #[test]
    fn this_process_reads_its_own_groups() {
        let ident = Identity {
            pid: std::process::id() as i32,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = peer_groups(&ident);
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
    }
}
