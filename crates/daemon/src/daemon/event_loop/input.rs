//! Reading: a chunk at a time from each ready source, within the turn's
//! budget and the uid's input bound, each chunk's complete frames decoded
//! and handed to the hub before the next is read.

use super::*;

impl EventLoop {
    /// Read and handle input from one of a client's sources: a chunk at a
    /// time, each handled before the next is read, up to the turn's budget.
    pub(super) fn service(&mut self, id: ClientId, role: usize) {
        let mut spent = 0;
        while let Some(n) = self.service_chunk(id, role) {
            spent += n;
            if spent >= READ_BUDGET {
                // Others get their turn; this one is serviced again soon
                // (edge-triggered readiness will not report it again).
                self.pending.push(id);
                return;
            }
        }
    }

    /// Bring the uid's input bytes up to date with a client's buffers; when
    /// they fall below the bound, clients starved for it are read again.
    pub(super) fn sync_input(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let now = if c.ctrl.is_some() {
            c.ctrl_in.len() + c.data_in.len()
        } else {
            0 // the hub's own endpoints are not a user's
        };
        if now == c.input_accounted {
            return;
        }
        let uid = c.ident.uid;
        let total = self.input_bytes.entry(uid).or_insert(0);
        *total = (*total + now).saturating_sub(c.input_accounted);
        let shrank = now < c.input_accounted;
        c.input_accounted = now;
        let below = *total < self.hub.config().queue.max_bytes_per_uid;
        if *total == 0 {
            self.input_bytes.remove(&uid);
        }
        if shrank && below {
            if let Some(waiting) = self.starved.remove(&uid) {
                self.pending.extend(waiting);
            }
        }
    }

    /// Read one chunk from a client's source and handle what it completed.
    /// Some(bytes read) when there may be more to read right away.
    pub(super) fn service_chunk(&mut self, id: ClientId, role: usize) -> Option<usize> {
        let c = self.clients.get_mut(&id)?;
        if c.closing.is_some() {
            // Only waiting for it to read its ERROR: discard input, notice EOF.
            let mut sink = Vec::new();
            let gone = match role {
                ROLE_CTRL => match &c.ctrl {
                    Some(fd) => read_stream(fd, &mut sink, READ_CHUNK),
                    None => return None,
                },
                _ => match c.data.as_mut() {
                    Some(link) => link.read_into(&mut sink, READ_CHUNK),
                    None => return None,
                },
            }
            .map_or(true, |o| o.eof);
            if gone {
                self.finalize(id);
            }
            return None;
        }
        if c.paused {
            // Not reading it, but a ring endpoint still wakes the clients
            // that sleep on its ring.
            if let Some(link) = c.data.as_mut() {
                link.wake_others();
            }
            return None;
        }
        let max = self.hub.config().hub.max_message_size;
        let max_hello = self.hub.config().hub.max_hello_size;
        // A client in the middle of a frame is not read further while its
        // uid's clients together buffer max_bytes_per_uid: a uid cannot
        // park a largest partial frame in every connection. A stream with
        // an empty buffer may still read one chunk (at most READ_CHUNK), so
        // small frames flow; a message transport may not (one message may
        // be a largest frame).
        let uid = c.ident.uid;
        let held = match role {
            ROLE_CTRL => !c.ctrl_in.is_empty(),
            _ => !c.data_in.is_empty() || c.data.as_ref().is_some_and(|l| l.max_frame().is_some()),
        };
        if c.greeted
            && c.ctrl.is_some()
            && !c.ctrl_gone
            && held
            && self.input_bytes.get(&uid).copied().unwrap_or(0)
                >= self.hub.config().queue.max_bytes_per_uid
        {
            // Not read, but a client that went away must not stay: its
            // slot would be held for good (its unfinished frame is lost).
            if role == ROLE_CTRL && c.ctrl.as_ref().is_some_and(peer_hung_up) {
                let reason = CloseReason::MidFrame {
                    discarded: c.ctrl_in.len(),
                };
                self.close(id, reason);
                return None;
            }
            let waiting = self.starved.entry(uid).or_default();
            if !waiting.contains(&id) {
                waiting.push(id);
            }
            return None;
        }
        let res = match role {
            ROLE_CTRL if !c.greeted => match &c.ctrl {
                Some(fd) => handshake::read_hello(fd, &mut c.ctrl_in, &mut c.hello_fds, max_hello),
                None => return None,
            },
            ROLE_CTRL => match &c.ctrl {
                Some(fd) => read_stream(fd, &mut c.ctrl_in, READ_CHUNK),
                None => return None,
            },
            ROLE_DATA_IN => match c.data.as_mut() {
                Some(link) => link.read_into(&mut c.data_in, READ_CHUNK),
                None => return None,
            },
            _ => return None,
        };
        let outcome = match res {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A message transport refused a record that is not exactly
                // one frame: malformed input, answered like any other.
                self.hub
                    .send_error(id, 0, wire::ErrorCode::Malformed, &e.to_string());
                self.close(id, CloseReason::Malformed(e.to_string()));
                return None;
            }
            Err(e) => {
                self.close(id, CloseReason::Read(e));
                return None;
            }
        };
        let step = self.process(id, role, max);
        self.sync_input(id);
        match step {
            Step::Close => None,
            _ if outcome.eof && role == ROLE_CTRL && self.clients[&id].data.is_some() => {
                // The client is gone, but what it wrote to its data path
                // before going is still owed to the subscribers.
                let c = self.clients.get_mut(&id).expect("present");
                c.ctrl_gone = true;
                if let Some(fd) = &c.ctrl {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&fd.as_raw_fd()));
                }
                self.service(id, ROLE_DATA_IN);
                None
            }
            Step::Continue
                if role == ROLE_DATA_IN && !outcome.more && self.clients[&id].ctrl_gone =>
            {
                // Drained (the source would block and the client is gone).
                let reason = reason::ended(self.clients[&id].data_in.len());
                self.close(id, reason);
                None
            }
            _ if outcome.eof => {
                let c = &self.clients[&id];
                let buf = if role == ROLE_CTRL {
                    &c.ctrl_in
                } else {
                    &c.data_in
                };
                if step == Step::Pause && !buf.is_empty() {
                    // Keep the client until its buffered frames are handled; the
                    // EOF is seen again once it is resumed and reads.
                    return None;
                }
                let reason = reason::ended(buf.len());
                self.close(id, reason);
                None
            }
            Step::Continue if outcome.more => Some(outcome.bytes),
            _ => None,
        }
    }

    /// Decode and handle every complete frame buffered from `role`.
    pub(super) fn process(&mut self, id: ClientId, role: usize, max: u32) -> Step {
        let Some(c) = self.clients.get_mut(&id) else {
            return Step::Close;
        };
        if !c.greeted {
            if role != ROLE_CTRL {
                return Step::Continue;
            }
            // Judge the first frame by its header, before its body is
            // buffered: only a HELLO within hub.max_hello_size is read.
            if let Ok(Some(h)) = wire::frame::decode_header(&c.ctrl_in, u32::MAX) {
                let max_hello = self.hub.config().hub.max_hello_size;
                let refusal = if h.ty != FrameType::Hello {
                    Some((
                        wire::ErrorCode::BadHandshake,
                        format!("expected HELLO as the first frame, got {:?}", h.ty),
                    ))
                } else if h.payload_len > max_hello {
                    Some((
                        wire::ErrorCode::TooLarge,
                        format!(
                            "HELLO payload of {} bytes exceeds hub.max_hello_size ({max_hello} bytes)",
                            h.payload_len
                        ),
                    ))
                } else {
                    None
                };
                if let Some((code, text)) = refusal {
                    self.hub.send_error(id, h.seq, code, &text);
                    self.close(id, CloseReason::Refused(text));
                    return Step::Close;
                }
            }
            let hello = match wire::decode(&c.ctrl_in, max) {
                Ok(None) => return Step::Continue,
                Ok(Some((frame, used))) => Ok((
                    frame.header.ty,
                    frame.header.seq,
                    frame.payload.to_vec(),
                    used,
                )),
                Err(e) => Err(e),
            };
            match hello {
                Ok((ty, seq, payload, used)) => {
                    let res = self.greet(id, ty, seq, payload);
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.ctrl_in.drain(..used);
                    }
                    if let Err(reason) = res {
                        self.close(id, reason);
                        return Step::Close;
                    }
                }
                Err(e) => {
                    self.reject_frame(id, &e);
                    return Step::Close;
                }
            }
        }
        let now = Instant::now();
        let Some(c) = self.clients.get_mut(&id) else {
            return Step::Close;
        };
        let buf = if role == ROLE_CTRL {
            &mut c.ctrl_in
        } else {
            &mut c.data_in
        };
        let mut off = 0;
        let step = loop {
            match wire::decode(&buf[off..], max) {
                Ok(Some((frame, used))) => match self.hub.handle(id, &frame, now) {
                    Step::Continue => off += used,
                    Step::Pause => {
                        c.paused = true;
                        break Step::Pause;
                    }
                    Step::Close => {
                        off += used;
                        break Step::Close;
                    }
                },
                Ok(None) => break Step::Continue,
                Err(e) => {
                    buf.drain(..off);
                    self.reject_frame(id, &e);
                    return Step::Close;
                }
            }
        };
        buf.drain(..off);
        if buf.is_empty() && buf.capacity() > 4 * READ_BUDGET {
            // Give back the memory a burst of big frames needed.
            *buf = Vec::new();
        }
        if step == Step::Close {
            self.close(id, CloseReason::ProtocolViolation);
        }
        step
    }

    pub(super) fn reject_frame(&mut self, id: ClientId, e: &DecodeError) {
        self.hub.send_error(id, 0, e.code(), &e.to_string());
        self.close(id, CloseReason::Malformed(e.to_string()));
    }
}

/// Has the other end of this socket closed (whatever is still unread)?
pub(super) fn peer_hung_up(fd: &OwnedFd) -> bool {
    let mut pfd = [ipchub_os::sys::pollfd(fd.as_raw_fd(), libc::POLLRDHUP)];
    matches!(ipchub_os::sys::poll_raw(&mut pfd, 0), Ok(n) if n > 0)
        && pfd[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
