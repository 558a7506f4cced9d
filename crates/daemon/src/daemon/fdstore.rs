//! A stop under systemd that keeps every connection: the hand-over through
//! systemd's file descriptor store (`FileDescriptorStoreMax=`).
//!
//! On SIGTERM, when the service has a store, the hub exports the same state
//! as for SIGUSR2 (`handover::State`), writes it into a sealed memfd and
//! sends systemd that memfd and every kept client's descriptors, one
//! `FDSTORE=1` message each with a name (`FDNAME=`), then a `BARRIER=1` it
//! waits for, and exits 0 without closing anything: the descriptors live on
//! in the store. `systemctl restart` keeps the store (a job is running for
//! the unit), and the next `ipchubd` receives them with `LISTEN_FDS` and
//! their names in `LISTEN_FDNAMES`:
//!
//! | name        | descriptor                                        |
//! |-------------|---------------------------------------------------|
//! | `state`     | the sealed state memfd                            |
//! | `listener`  | the control socket, only when the hub bound it    |
//! | `c<id>`     | client `<id>`'s connection (`client:<id>`)        |
//! | `c<id>.0`   | its data path's read end (`client:<id>:data-in`)  |
//! | `c<id>.1`   | its data path's write end (`client:<id>:data-out`)|
//! | `c<id>.2`   | an shm client's hub eventfd (`client:<id>:hub-event`)|
//! | `c<id>.3`   | an shm client's own eventfd (`client:<id>:client-event`)|
//!
//! | `r<id>`     | a channel ring's memfd (`ring:<id>`, `<id>` its endpoint's)|
//! | `r<id>.e`   | the hub's eventfd of that ring (`ring:<id>:event`)|
//!
//! (For an shm client `c<id>.0` and `c<id>.1` are its `up` and `down` ring
//! memfds.)
//!
//! The new hub maps the names back onto the state's index ([`rebind`]),
//! takes the listening socket from the socket unit (or `listener`), and
//! tells systemd to forget every entry it received (`FDSTOREREMOVE=1`):
//! it holds them now, and the next stop sends what is current then, so a
//! client that left never leaves a descriptor behind, and a crash never
//! finds an old state in the store. A client whose descriptors did not
//! come back (systemd closes a stored socket whose peer hung up) is left
//! out; a state that cannot be read is logged and every stored descriptor
//! closed (the clients reconnect by themselves), never a crash loop.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::handover::{self, FdEntry, HandoverError, State};
use super::systemd::PassedFd;

/// Set by the unit (`Environment=IPCHUB_FDSTORE=`, the same number as
/// `FileDescriptorStoreMax=`): systemd before 254 does not tell a service
/// about its store. systemd 254 and later set `FDSTORE` themselves.
pub const ENV_MAX: &str = "IPCHUB_FDSTORE";
/// The state memfd's name in the store.
pub const STATE: &str = "state";
/// The control socket's name in the store (only when the hub bound it).
pub const LISTENER: &str = "listener";
/// How long the stopping hub waits for systemd to take its descriptors.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// How many descriptors systemd's store takes for us, if we have one: a
/// service manager listens (`NOTIFY_SOCKET`) and the unit set a store size.
pub fn capacity() -> Option<usize> {
    if !super::systemd::notify_enabled() {
        return None;
    }
    ["FDSTORE", ENV_MAX]
        .iter()
        .filter_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
        .max()
        .filter(|&n| n > 0)
}

/// The store name of a hand-over index entry (`client:7:data-in` → `c7.0`).
/// systemd's names may not contain `:` (`LISTEN_FDNAMES` is `:`-separated).
pub fn store_name(entry: &str) -> Option<String> {
    if entry == "listener" {
        return Some(LISTENER.into());
    }
    if let Some(ring) = entry.strip_prefix("ring:") {
        let (id, event) = match ring.split_once(':') {
            None => (ring, false),
            Some((id, "event")) => (id, true),
            Some(_) => return None,
        };
        let id: u32 = id.parse().ok()?;
        return Some(if event {
            format!("r{id}.e")
        } else {
            format!("r{id}")
        });
    }
    let rest = entry.strip_prefix("client:")?;
    let (id, role) = match rest.split_once(':') {
        None => (rest, None),
        Some((id, role)) => (
            id,
            Some(handover::DATA_ROLES.iter().position(|r| *r == role)?),
        ),
    };
    let id: u32 = id.parse().ok()?;
    Some(match role {
        None => format!("c{id}"),
        Some(k) => format!("c{id}.{k}"),
    })
}

/// Whether a `LISTEN_FDNAMES` name is one this module stores.
pub fn is_store_name(name: &str) -> bool {
    if name == STATE || name == LISTENER {
        return true;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix('r') {
        let (id, k) = rest.split_once('.').unwrap_or((rest, "e"));
        return digits(id) && k == "e";
    }
    let Some(rest) = name.strip_prefix('c') else {
        return false;
    };
    let (id, k) = rest.split_once('.').unwrap_or((rest, "0"));
    digits(id) && matches!(k, "0" | "1" | "2" | "3")
}

/// Descriptors each kept client costs in the store.
fn cost(c: &handover::HandedClient) -> usize {
    1 + c.data_fds.len()
}

/// Trim `state` to what `capacity` entries hold: the state memfd, the
/// listener when the hub bound it itself, the channel rings (two each),
/// then clients in id order. A client left out is dropped from the state
/// and its descriptors closed at exit: its library reconnects. A ring
/// whose participants are not all kept is left out with all of them (its
/// memfd is the one they read and write; none may stay without it). When
/// the rings alone do not fit, they are all left out, with their
/// participants. Returns how many clients were left out.
pub fn fit(state: &mut State, capacity: usize) -> usize {
    let listener = usize::from(state.unlink_on_exit.is_some());
    let mut budget = capacity.saturating_sub(1 + listener);
    let before = state.clients.len();
    let ring_cost = 2 * state.rings.len();
    if ring_cost > budget {
        let gone: Vec<handover::HandedRing> = std::mem::take(&mut state.rings);
        drop_participants(state, &gone);
    } else {
        budget -= ring_cost;
    }
    state.clients.sort_by_key(|c| c.hub.id);
    state.clients.retain(|c| {
        let n = cost(c);
        let keep = n <= budget;
        if keep {
            budget -= n;
        }
        keep
    });
    // Rings that lost a participant go, with the rest of theirs; repeat
    // until nothing changes (a client may be in several rings).
    loop {
        let ids: std::collections::HashSet<u32> = state.clients.iter().map(|c| c.hub.id).collect();
        let (whole, broken): (Vec<_>, Vec<_>) = std::mem::take(&mut state.rings)
            .into_iter()
            .partition(|r| r.slots.iter().all(|s| ids.contains(&s.1)));
        state.rings = whole;
        if broken.is_empty() {
            break;
        }
        drop_participants(state, &broken);
    }
    let kept: std::collections::HashSet<RawFd> = state
        .clients
        .iter()
        .flat_map(|c| std::iter::once(c.fd).chain(c.data_fds.iter().copied()))
        .chain(state.rings.iter().flat_map(|r| [r.memfd, r.hub_event]))
        .collect();
    state
        .fds
        .retain(|e| e.name == "listener" || kept.contains(&e.fd));
    before - state.clients.len()
}

/// Leave out every participant of `rings`.
fn drop_participants(state: &mut State, rings: &[handover::HandedRing]) {
    let ids: std::collections::HashSet<u32> = rings
        .iter()
        .flat_map(|r| r.slots.iter().map(|s| s.1))
        .collect();
    state.clients.retain(|c| !ids.contains(&c.hub.id));
}

/// What a stop leaves in the store: `(name, descriptor number)`, the state
/// last. The numbers are those of the state's index, which this process
/// holds open until it exits (`export_state` leaves them so on purpose).
fn entries(state: &State, memfd: RawFd) -> Vec<(String, RawFd)> {
    let mut out = Vec::new();
    for e in &state.fds {
        if e.name == "listener" && state.unlink_on_exit.is_none() {
            continue; // the socket unit holds it
        }
        if let Some(name) = store_name(&e.name) {
            out.push((name, e.fd));
        }
    }
    out.push((STATE.into(), memfd));
    out
}

/// Send systemd the state and every descriptor it names, and wait until
/// systemd has taken them. Returns how many clients are kept. On error,
/// whatever was stored already is removed again (the clients reconnect).
pub fn stash(state: &mut State, capacity: usize) -> io::Result<usize> {
    let path = std::env::var_os("NOTIFY_SOCKET")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no NOTIFY_SOCKET"))?;
    stash_to(&path, state, capacity)
}

/// [`stash`] to the service manager listening at `notify_socket`.
fn stash_to(
    notify_socket: &std::ffi::OsStr,
    state: &mut State,
    capacity: usize,
) -> io::Result<usize> {
    let left_out = fit(state, capacity);
    if left_out > 0 {
        tracing::warn!(
            clients = left_out,
            capacity,
            "fd store too small (FileDescriptorStoreMax=): these clients reconnect"
        );
    }
    let memfd = handover::write_memfd(state)?;
    let sock = Notifier::connect(notify_socket)?;
    let list = entries(state, memfd.as_raw_fd());
    let mut sent: Vec<&str> = Vec::new();
    let res = (|| {
        for (name, fd) in &list {
            sock.send(&format!("FDSTORE=1\nFDNAME={name}\n"), &[*fd])?;
            sent.push(name);
        }
        sock.barrier(BARRIER_TIMEOUT)
    })();
    if let Err(e) = res {
        for name in sent {
            let _ = sock.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]);
        }
        return Err(e);
    }
    Ok(state.clients.len())
}

/// Tell systemd to forget these names: their descriptors are ours now.
pub fn forget(names: &[String]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let Ok(sock) = Notifier::connect(&path) else {
        return;
    };
    let mut names: Vec<&String> = names.iter().collect();
    names.sort();
    names.dedup();
    for name in names {
        if let Err(e) = sock.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]) {
            tracing::warn!(name = %name, "could not remove a descriptor from the fd store: {e}");
        }
    }
}

/// At start, after `handover::take` and `systemd::take_listen_fds`: if
/// systemd passed a stored state, the hand-over it describes (or why it is
/// unusable), with its descriptors claimable by the numbers in it
/// (`handover::claim`); and the passed descriptors that are not ours.
/// Every stored entry is removed from the store, whatever the outcome.
pub fn take(
    handed: Option<Result<State, HandoverError>>,
    passed: Vec<PassedFd>,
) -> (Option<Result<State, HandoverError>>, Vec<PassedFd>) {
    let (ours, mut others): (Vec<PassedFd>, Vec<PassedFd>) =
        passed.into_iter().partition(|p| is_store_name(&p.name));
    if ours.is_empty() {
        return (handed, others);
    }
    forget(&ours.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
    if handed.is_some() {
        // Re-executed by SIGUSR2 with a store left over: the inherited
        // state is the current one.
        return (handed, others);
    }
    let mut stored: HashMap<String, OwnedFd> = HashMap::new();
    for p in ours {
        // A name twice (should not happen): the first one counts.
        stored.entry(p.name).or_insert(p.fd);
    }
    let res = (|| {
        let memfd = stored
            .remove(STATE)
            .ok_or(HandoverError::NoEntry("state"))?;
        let state = handover::read_sealed(&memfd)?;
        // The socket unit's listener, when the store has none.
        let socket = match state.unlink_on_exit {
            None => others
                .iter()
                .position(|p| p.name != "fifo")
                .map(|i| others.remove(i).fd),
            Some(_) => None,
        };
        let (state, fds) = rebind(state, stored, socket)?;
        Ok((state, fds))
    })();
    match res {
        Ok((state, fds)) => {
            for fd in fds {
                handover::provide(fd);
            }
            (Some(Ok(state)), others)
        }
        // Every stored descriptor is closed by now (dropped).
        Err(e) => (Some(Err(e)), others),
    }
}

/// Map the store's names onto a state written by the previous hub: every
/// index entry gets the number its descriptor has in this process. A client
/// whose descriptors are not all there is left out (its others closed): it
/// left while no hub ran, or systemd dropped its hung-up socket. The
/// listener is `listener` from the store, else `socket` (the socket unit's);
/// without one the state is refused. Stored descriptors the state does not
/// name are closed. Returns the state and the descriptors it now names.
pub fn rebind(
    mut state: State,
    mut stored: HashMap<String, OwnedFd>,
    socket: Option<OwnedFd>,
) -> Result<(State, Vec<OwnedFd>), HandoverError> {
    // Old number → (index name, descriptor here).
    let mut by_old: HashMap<RawFd, (String, OwnedFd)> = HashMap::new();
    let mut listener = None;
    for e in &state.fds {
        let Some(name) = store_name(&e.name) else {
            continue;
        };
        if let Some(fd) = stored.remove(&name) {
            if e.name == "listener" {
                listener = Some(fd);
            } else {
                by_old.insert(e.fd, (e.name.clone(), fd));
            }
        }
    }
    // The store's `listener` (the hub bound it), else the socket unit's;
    // never both (the other copy is closed).
    let listener = listener
        .or(socket)
        .ok_or(HandoverError::NoEntry("listener"))?;
    // Whatever else the store held is not the state's: closed here.
    drop(stored);
    let mut fds = Vec::new();
    let mut index = vec![FdEntry {
        name: "listener".into(),
        fd: listener.as_raw_fd(),
    }];
    fds.push(listener);
    // Which clients and rings came back whole: a client with all its
    // descriptors; a ring with its memfd, its eventfd and every
    // participant. A ring that did not is left out with its participants
    // (none may stay without the memfd it reads and writes), which may
    // break another ring: repeated until nothing changes.
    let all_back = |olds: &[RawFd]| olds.iter().all(|o| by_old.contains_key(o));
    let mut gone: std::collections::HashSet<u32> = state
        .clients
        .iter()
        .filter(|c| !all_back(&[&[c.fd][..], &c.data_fds[..]].concat()))
        .map(|c| c.hub.id)
        .collect();
    let mut broken: std::collections::HashSet<usize> = std::collections::HashSet::new();
    loop {
        let mut changed = false;
        for (i, r) in state.rings.iter().enumerate() {
            if broken.contains(&i) {
                continue;
            }
            if !all_back(&[r.memfd, r.hub_event]) || r.slots.iter().any(|s| gone.contains(&s.1)) {
                tracing::warn!(
                    channel = %r.channel,
                    "a channel ring did not come back whole from the fd store: left out, with its participants"
                );
                broken.insert(i);
                gone.extend(r.slots.iter().map(|s| s.1));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let clients = std::mem::take(&mut state.clients);
    for mut c in clients {
        let olds: Vec<RawFd> = std::iter::once(c.fd).chain(c.data_fds.clone()).collect();
        if gone.contains(&c.hub.id) {
            tracing::warn!(
                client = c.hub.id,
                "its descriptors (or a channel ring of its) did not come back from the fd store: left out"
            );
            for o in olds {
                by_old.remove(&o);
            }
            continue;
        }
        let mut new = Vec::with_capacity(olds.len());
        for o in olds {
            let (name, fd) = by_old.remove(&o).expect("checked");
            new.push(fd.as_raw_fd());
            index.push(FdEntry {
                name,
                fd: fd.as_raw_fd(),
            });
            fds.push(fd);
        }
        c.fd = new[0];
        c.data_fds = new[1..].to_vec();
        state.clients.push(c);
    }
    let rings = std::mem::take(&mut state.rings);
    for (i, mut r) in rings.into_iter().enumerate() {
        if broken.contains(&i) {
            by_old.remove(&r.memfd);
            by_old.remove(&r.hub_event);
            continue;
        }
        let mut new = [0; 2];
        for (k, o) in [r.memfd, r.hub_event].into_iter().enumerate() {
            let (name, fd) = by_old.remove(&o).expect("checked");
            new[k] = fd.as_raw_fd();
            index.push(FdEntry {
                name,
                fd: fd.as_raw_fd(),
            });
            fds.push(fd);
        }
        [r.memfd, r.hub_event] = new;
        state.rings.push(r);
    }
    state.fds = index;
    Ok((state, fds))
}

/// A datagram socket connected to `NOTIFY_SOCKET`, for many messages.
struct Notifier {
    sock: std::os::unix::net::UnixDatagram,
}

impl Notifier {
    fn connect(path: &std::ffi::OsStr) -> io::Result<Notifier> {
        use std::os::unix::ffi::OsStrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        } else {
            sock.connect(std::path::Path::new(path))?;
        }
        // systemd reads its notification socket all the time; a full queue
        // that does not drain within this is an error, not a hang.
        sock.set_write_timeout(Some(BARRIER_TIMEOUT))?;
        Ok(Notifier { sock })
    }

    /// One datagram; `fds` go with it (SCM_RIGHTS takes numbers: a closed
    /// one makes sendmsg fail with EBADF, nothing worse).
    fn send(&self, msg: &str, fds: &[RawFd]) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let iov = [io::IoSlice::new(msg.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let n = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        if n != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification cut short",
            ));
        }
        Ok(())
    }

    /// `BARRIER=1` (systemd 246): systemd closes the pipe end sent with it
    /// once it has handled every earlier message; wait for that.
    fn barrier(&self, timeout: Duration) -> io::Result<()> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        self.send("BARRIER=1\n", &[w.as_raw_fd()])?;
        drop(w);
        let mut pfd = [nix::poll::PollFd::new(
            r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "systemd did not confirm the fd store in time",
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::handover::HandedClient;
    use crate::hub::snapshot::ClientSnapshot;

    fn snap(id: u32) -> ClientSnapshot {
        ClientSnapshot {
            id,
            pid: 1,
            uid: 0,
            gid: 0,
            groups: vec![],
            name: format!("c{id}"),
            transport: "socket".into(),
            patterns: vec!["a/#".into()],
            queued: vec![],
            head_written: 0,
            messages_in: 0,
            messages_out: 0,
            dropped: 0,
            wants_seq: false,
            wants_retain_flag: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// A state as the old hub wrote it: its numbers mean nothing here.
    fn old_state(unlink: bool) -> State {
        let mut fds = vec![FdEntry {
            name: "listener".into(),
            fd: 3,
        }];
        fds.push(FdEntry {
            name: "client:5".into(),
            fd: 10,
        });
        fds.push(FdEntry {
            name: "client:7".into(),
            fd: 11,
        });
        fds.push(FdEntry {
            name: "client:7:data-in".into(),
            fd: 12,
        });
        fds.push(FdEntry {
            name: "client:7:data-out".into(),
            fd: 13,
        });
        let client = |id, fd, data_fds| HandedClient {
            fd,
            hub: snap(id),
            input: vec![],
            data_fds,
            data_input: vec![],
        };
        State {
            hub_version: "0.1.0".into(),
            generation: 1,
            socket_path: "/run/ipchub/ipchub.sock".into(),
            unlink_on_exit: unlink.then(|| "/run/ipchub/ipchub.sock".into()),
            fds,
            next_client_id: 8,
            clients: vec![client(5, 10, vec![]), client(7, 11, vec![12, 13])],
            rings: vec![],
            hub_state: Default::default(),
        }
    }

    fn fd() -> OwnedFd {
        nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap()
    }

    fn store(names: &[&str]) -> HashMap<String, OwnedFd> {
        names.iter().map(|n| (n.to_string(), fd())).collect()
    }

    #[test]
    fn names_map_both_ways_and_never_hold_a_colon() {
        for (entry, name) in [
            ("listener", "listener"),
            ("client:5", "c5"),
            ("client:5:data-in", "c5.0"),
            ("client:5:data-out", "c5.1"),
            ("client:5:hub-event", "c5.2"),
            ("client:5:client-event", "c5.3"),
        ] {
            assert_eq!(store_name(entry).as_deref(), Some(name));
            assert!(is_store_name(name), "{name}");
            assert!(!name.contains(':'));
        }
        assert!(is_store_name(STATE));
        for other in [
            "ipchub", "fifo", "c", "c5.4", "cx", "c5.", "client:5", "c.0",
        ] {
            assert!(!is_store_name(other), "{other}");
        }
        assert_eq!(store_name("client:x"), None);
        assert_eq!(store_name("client:5:data-sideways"), None);
    }

    #[test]
    fn rebind_gives_every_entry_its_number_here() {
        let socket = fd();
        let socket_raw = socket.as_raw_fd();
        let stored = store(&["c5", "c7", "c7.0", "c7.1"]);
        let want: HashMap<String, RawFd> = stored
            .iter()
            .map(|(n, f)| (n.clone(), f.as_raw_fd()))
            .collect();
        let (state, fds) = rebind(old_state(false), stored, Some(socket)).unwrap();
        assert_eq!(state.fd("listener").unwrap(), socket_raw);
        assert_eq!(fds.len(), 5);
        let by_name: HashMap<&str, RawFd> =
            state.fds.iter().map(|e| (e.name.as_str(), e.fd)).collect();
        assert_eq!(by_name["client:5"], want["c5"]);
        assert_eq!(by_name["client:7:data-in"], want["c7.0"]);
        assert_eq!(state.clients[0].fd, want["c5"]);
        assert_eq!(state.clients[1].fd, want["c7"]);
        assert_eq!(state.clients[1].data_fds, vec![want["c7.0"], want["c7.1"]]);
        // Every number named is one of the descriptors handed back.
        for e in &state.fds {
            assert!(fds.iter().any(|f| f.as_raw_fd() == e.fd), "{}", e.name);
        }
    }

    #[test]
    fn an_shm_clients_four_data_descriptors_rebind_by_name() {
        let mut state = old_state(false);
        for (k, role) in handover::DATA_ROLES.iter().enumerate() {
            state.fds.push(FdEntry {
                name: format!("client:9:{role}"),
                fd: 20 + k as RawFd,
            });
        }
        state.fds.push(FdEntry {
            name: "client:9".into(),
            fd: 19,
        });
        let mut c9 = state.clients[0].clone();
        c9.hub.id = 9;
        c9.hub.transport = "shm".into();
        c9.fd = 19;
        c9.data_fds = vec![20, 21, 22, 23];
        state.clients.push(c9);
        handover::check_consistent(&state).unwrap();
        let names: Vec<String> = entries(&state, 99).into_iter().map(|(n, _)| n).collect();
        for n in ["c9", "c9.0", "c9.1", "c9.2", "c9.3"] {
            assert!(names.iter().any(|x| x == n), "{n}: {names:?}");
        }
        let stored = store(&[
            "c5", "c7", "c7.0", "c7.1", "c9", "c9.0", "c9.1", "c9.2", "c9.3",
        ]);
        let want: Vec<RawFd> = ["c9.0", "c9.1", "c9.2", "c9.3"]
            .iter()
            .map(|n| stored[*n].as_raw_fd())
            .collect();
        let (state, fds) = rebind(state, stored, Some(fd())).unwrap();
        assert_eq!(fds.len(), 10);
        let c9 = state.clients.iter().find(|c| c.hub.id == 9).unwrap();
        assert_eq!(c9.data_fds, want);
        handover::check_consistent(&state).unwrap();
        // Capacity counts all five: with room for eight, c9 is left out.
        let mut s = old_state(false);
        s.clients.push(c9.clone());
        assert_eq!(fit(&mut s, 1 + 1 + 3 + 3), 1);
    }

    /// `old_state` plus an shm client 9 (descriptors 19..=23) in a ring
    /// whose endpoint is 30 (memfd 31, eventfd 32).
    fn state_with_ring() -> State {
        let mut state = old_state(false);
        state.fds.push(FdEntry {
            name: "client:9".into(),
            fd: 19,
        });
        for (k, role) in handover::DATA_ROLES.iter().enumerate() {
            state.fds.push(FdEntry {
                name: format!("client:9:{role}"),
                fd: 20 + k as RawFd,
            });
        }
        let mut c9 = state.clients[0].clone();
        c9.hub.id = 9;
        c9.hub.transport = "shm".into();
        c9.fd = 19;
        c9.data_fds = vec![20, 21, 22, 23];
        state.clients.push(c9);
        state.fds.push(FdEntry {
            name: "ring:30".into(),
            fd: 31,
        });
        state.fds.push(FdEntry {
            name: "ring:30:event".into(),
            fd: 32,
        });
        let mut endpoint = snap(30);
        endpoint.patterns.clear();
        state.rings.push(handover::HandedRing {
            channel: "a/b".into(),
            memfd: 31,
            hub_event: 32,
            policy: "block".into(),
            endpoint,
            endpoint_input: vec![],
            slots: vec![(1, 9, 1, 0)],
            next_slot: 2,
            want_reader: false,
            written: 0,
            writers: vec![],
            relayed: vec![],
            hub_cursor: None,
        });
        state
    }

    #[test]
    fn rings_have_store_names_and_come_back_whole_or_not_at_all() {
        assert_eq!(store_name("ring:30").as_deref(), Some("r30"));
        assert_eq!(store_name("ring:30:event").as_deref(), Some("r30.e"));
        assert_eq!(store_name("ring:30:other"), None);
        for n in ["r30", "r30.e"] {
            assert!(is_store_name(n), "{n}");
        }
        for n in ["r", "r.e", "r30.x", "rx"] {
            assert!(!is_store_name(n), "{n}");
        }
        let state = state_with_ring();
        handover::check_consistent(&state).unwrap();
        let all = [
            "c5", "c7", "c7.0", "c7.1", "c9", "c9.0", "c9.1", "c9.2", "c9.3", "r30", "r30.e",
        ];
        let (back, fds) = rebind(state.clone(), store(&all), Some(fd())).unwrap();
        assert_eq!(fds.len(), 12);
        assert_eq!(back.rings.len(), 1);
        handover::check_consistent(&back).unwrap();
        // The ring's eventfd did not come back: the ring and its participant
        // are left out; the others stay.
        let (back, fds) = rebind(state.clone(), store(&all[..10]), Some(fd())).unwrap();
        assert!(back.rings.is_empty());
        let ids: Vec<u32> = back.clients.iter().map(|c| c.hub.id).collect();
        assert_eq!(ids, vec![5, 7]);
        assert_eq!(fds.len(), 5);
        // A participant's descriptor did not come back: the ring goes too.
        let mut some: Vec<&str> = all.to_vec();
        some.retain(|n| *n != "c9.2");
        let (back, _) = rebind(state.clone(), store(&some), Some(fd())).unwrap();
        assert!(back.rings.is_empty() && back.clients.len() == 2);
        // fit: a ring costs two; without room for it, its participant goes.
        let mut s = state.clone();
        assert_eq!(fit(&mut s, 1 + 2 + 1 + 3 + 5), 0);
        assert_eq!(s.rings.len(), 1);
        let mut s = state;
        assert_eq!(fit(&mut s, 1 + 2 + 1 + 3 + 4), 1);
        assert!(s.rings.is_empty());
        assert!(s.fds.iter().all(|e| !e.name.starts_with("ring:")));
        handover::check_consistent(&s).unwrap();
    }

    #[test]
    fn a_self_bound_listener_comes_from_the_store() {
        let stored = store(&["listener", "c5", "c7", "c7.0", "c7.1"]);
        let l = stored["listener"].as_raw_fd();
        let (state, _fds) = rebind(old_state(true), stored, None).unwrap();
        assert_eq!(state.fd("listener").unwrap(), l);
        assert_eq!(state.clients.len(), 2);
    }

    #[test]
    fn a_client_whose_descriptors_are_missing_is_refused_the_rest_kept() {
        // c7's write end did not come back: c7 is left out, whole.
        let stored = store(&["c5", "c7", "c7.0", "stray"]);
        let (state, fds) = rebind(old_state(false), stored, Some(fd())).unwrap();
        let ids: Vec<u32> = state.clients.iter().map(|c| c.hub.id).collect();
        assert_eq!(ids, vec![5]);
        assert_eq!(fds.len(), 2, "listener and c5; c7's and the stray closed");
        assert!(state.fds.iter().all(|e| !e.name.starts_with("client:7")));
    }

    #[test]
    fn a_state_without_a_listener_is_refused() {
        let stored = store(&["c5", "c7", "c7.0", "c7.1"]);
        assert!(matches!(
            rebind(old_state(false), stored, None),
            Err(HandoverError::NoEntry("listener"))
        ));
        // Self-bound, but the store lost the listener.
        let stored = store(&["c5", "c7", "c7.0", "c7.1"]);
        assert!(matches!(
            rebind(old_state(true), stored, None),
            Err(HandoverError::NoEntry("listener"))
        ));
    }

    #[test]
    fn fit_keeps_whole_clients_within_the_store() {
        // Capacity 4: the state, then c5 (1); c7 (3) does not fit.
        let mut s = old_state(false);
        assert_eq!(fit(&mut s, 4), 1);
        assert_eq!(s.clients.len(), 1);
        let names: Vec<&str> = s.fds.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["listener", "client:5"]);
        let mut s = old_state(false);
        assert_eq!(fit(&mut s, 5), 0);
        // Self-bound: the listener takes one more.
        let mut s = old_state(true);
        assert_eq!(fit(&mut s, 5), 1);
    }

    #[test]
    fn the_store_entries_name_the_state_last_and_skip_the_units_socket() {
        let names = |s: &State| -> Vec<(String, RawFd)> { entries(s, 99) };
        let want = |l: bool| {
            let mut v: Vec<(String, RawFd)> = Vec::new();
            if l {
                v.push(("listener".into(), 3));
            }
            v.extend(
                [
                    ("c5", 10),
                    ("c7", 11),
                    ("c7.0", 12),
                    ("c7.1", 13),
                    ("state", 99),
                ]
                .map(|(n, f)| (n.to_string(), f)),
            );
            v
        };
        assert_eq!(names(&old_state(false)), want(false));
        assert_eq!(names(&old_state(true)), want(true));
    }

    /// A service manager in a thread: takes `FDSTORE=1` messages with
    /// their names, honours `FDSTOREREMOVE=1`, and answers `BARRIER=1` by
    /// closing the descriptor that came with it.
    fn fake_manager(
        dir: &std::path::Path,
    ) -> (
        std::path::PathBuf,
        std::thread::JoinHandle<HashMap<String, OwnedFd>>,
    ) {
        let path = dir.join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let mut store = HashMap::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let r = ipchub_os::sys::recv_with_fds(
                    sock.as_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                )
                .unwrap();
                let text = String::from_utf8_lossy(&buf[..r.bytes]).into_owned();
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .map(str::to_string);
                if text.contains("BARRIER=1") {
                    drop(r.fds);
                    return store;
                } else if text.contains("FDSTOREREMOVE=1") {
                    store.remove(&name.unwrap());
                } else if text.contains("FDSTORE=1") {
                    let mut fds = r.fds;
                    assert_eq!(fds.len(), 1, "one descriptor per name");
                    store.insert(name.unwrap(), fds.pop().unwrap());
                }
            }
        });
        (path, t)
    }

    #[test]
    fn a_stop_and_a_start_round_trip_through_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let (path, manager) = fake_manager(dir.path());
        // What the old hub holds: a connection (socket pair: the far end is
        // the client) and a pipe client's two data descriptors.
        let (conn, client_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let ctrl7 = fd();
        let mut state = old_state(false);
        let nums = [
            conn.as_raw_fd(),
            ctrl7.as_raw_fd(),
            r.as_raw_fd(),
            w.as_raw_fd(),
        ];
        for (e, n) in state.fds[1..].iter_mut().zip(nums) {
            e.fd = n;
        }
        state.clients[0].fd = nums[0];
        state.clients[1].fd = nums[1];
        state.clients[1].data_fds = vec![nums[2], nums[3]];
        let kept = stash_to(path.as_os_str(), &mut state, 16384).unwrap();
        assert_eq!(kept, 2);
        let mut store = manager.join().unwrap();
        let mut names: Vec<&String> = store.keys().collect();
        names.sort();
        assert_eq!(names, ["c5", "c7", "c7.0", "c7.1", "state"]);
        // The old hub is gone: its descriptors close; the store's live on.
        drop((conn, ctrl7, r, w));
        let memfd = store.remove(STATE).unwrap();
        let got = handover::read_sealed(&memfd).unwrap();
        assert_eq!(got.clients.len(), 2);
        let socket = fd();
        let (state, fds) = rebind(got, store, Some(socket)).unwrap();
        assert_eq!(fds.len(), 5);
        // Client 5's connection is the same socket: the client's end hears
        // what the new hub writes on it.
        let c5 = fds
            .iter()
            .find(|f| f.as_raw_fd() == state.clients[0].fd)
            .unwrap();
        nix::unistd::write(c5, b"still here").unwrap();
        let mut buf = [0u8; 10];
        use std::io::Read;
        (&client_end).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"still here");
    }

    #[test]
    fn a_store_that_never_confirms_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        // Bound but nobody reads: the barrier is never answered.
        let _sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let sock = Notifier::connect(path.as_os_str()).unwrap();
        let err = sock.barrier(Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    fn passed(names: &[&str]) -> Vec<PassedFd> {
        names
            .iter()
            .map(|n| PassedFd {
                fd: fd(),
                name: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_start_without_stored_entries_changes_nothing() {
        let (handed, others) = take(None, passed(&["ipchub"]));
        assert!(handed.is_none());
        assert_eq!(others.len(), 1);
    }

    #[test]
    fn stored_clients_without_a_state_are_refused_and_the_socket_kept() {
        let (handed, others) = take(None, passed(&["ipchub", "c5", "c7.0"]));
        assert!(matches!(handed, Some(Err(HandoverError::NoEntry("state")))));
        let names: Vec<&str> = others.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ipchub"], "the socket unit's socket stays");
    }

    #[test]
    fn a_foreign_or_corrupt_state_in_the_store_is_refused() {
        // Not sealed.
        let (handed, _) = take(None, passed(&["ipchub", "state", "c5"]));
        assert!(matches!(handed, Some(Err(HandoverError::NotSealed(..)))));
        // Sealed, but another format version.
        let mut list = passed(&["ipchub", "c5"]);
        let mut bytes = handover::encode(&old_state(false));
        bytes[8] = 99;
        let memfd = nix::sys::memfd::memfd_create(
            c"t",
            nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .unwrap();
        nix::unistd::write(&memfd, &bytes).unwrap();
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        fcntl(
            memfd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK,
            ),
        )
        .unwrap();
        list.push(PassedFd {
            fd: memfd,
            name: STATE.into(),
        });
        let (handed, others) = take(None, list);
        assert!(matches!(
            handed,
            Some(Err(HandoverError::Version { found: 99 }))
        ));
        assert_eq!(others.len(), 1);
    }

    #[test]
    fn a_good_state_in_the_store_is_taken_with_the_units_socket() {
        let mut list = passed(&["ipchub", "c5", "c7", "c7.0", "c7.1"]);
        let socket = list[0].fd.as_raw_fd();
        list.push(PassedFd {
            fd: handover::write_memfd(&old_state(false)).unwrap(),
            name: STATE.into(),
        });
        let (handed, others) = take(None, list);
        let state = handed.unwrap().unwrap();
        assert!(
            others.is_empty(),
            "the socket unit's socket is the listener"
        );
        assert_eq!(state.fd("listener").unwrap(), socket);
        assert_eq!(state.clients.len(), 2);
        // Every number the state names can be claimed, once.
        for e in &state.fds {
            let fd = handover::claim(e.fd).unwrap();
            assert_eq!(fd.as_raw_fd(), e.fd);
        }
    }
}
