//! Planned restart by re-execution: the state a hub hands to its successor.
//!
//! On SIGUSR2 the hub writes its state into a sealed memfd, clears
//! close-on-exec on that memfd and on every descriptor the state names,
//! and executes its own binary again (the same pid, so systemd and
//! supervisors see no exit) with `IPCHUB_HANDOVER_FD` naming the memfd.
//! The successor reads the state before anything else; one it cannot read
//! (another format version, corruption, a descriptor that is not open) is
//! logged and set aside: the successor closes every inherited descriptor
//! and starts fresh, and the clients reconnect by themselves (the client
//! library's reconnection), never a crash loop.
//!
//! Format (docs/ARCHITECTURE.md, "Planned restart"): the magic
//! `IPCHUBST`, the format version (u32 LE), the body length (u64 LE), the
//! body (JSON), and an FNV-1a 64 checksum of the body (u64 LE). A
//! successor reads only the format version it was built for.
//!
//! Version 2 hands over the listening socket (by descriptor, so the socket
//! file never disappears and clients connecting meanwhile wait in its
//! backlog) and every client whose data path is descriptors alone
//! (socket, pipe, FIFO, mqueue, shm): its connection and data descriptors
//! (two for a pipe, FIFO or mqueue; for shm its two ring memfds and two
//! eventfds, the rings' positions being in the shared memory itself), its
//! subscriptions, the frames queued for it and the input not handled yet,
//! under its id. (Version 1 kept no shm client: it is not read.) With them
//! go the channel rings whose every participant is kept ([`HandedRing`]:
//! memfd, the hub's eventfd, its endpoint, slots and bookkeeping), checked
//! again by the successor as new rings are. Clients not kept (being
//! disconnected, or sharing a ring with one) are sent BYE "hub
//! restarting", and their libraries reconnect.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The environment variable naming the state memfd in the successor.
pub const ENV: &str = "IPCHUB_HANDOVER_FD";
/// What this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"IPCHUBST";
/// A state larger than this is not ours.
const MAX_BODY: u64 = 64 << 20;
/// What a client's data descriptors are, in `HandedClient::data_fds`
/// order: the index names them `client:<id>:<role>` (the first two for a
/// pipe, FIFO or mqueue client, all four for shm: `up` ring memfd, `down`
/// ring memfd, the hub's eventfd, the client's eventfd).
pub const DATA_ROLES: [&str; 4] = ["data-in", "data-out", "hub-event", "client-event"];

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{ENV}={0} is not a descriptor number")]
    BadEnv(String),
    #[error("descriptor {0} is not a sealed memfd: {1}")]
    NotSealed(RawFd, String),
    #[error("not a hand-over state (bad magic)")]
    Magic,
    #[error("state format version {found}, this ipchubd reads {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("state truncated or oversized (body of {0} bytes)")]
    Length(u64),
    #[error("state corrupt (checksum mismatch)")]
    Checksum,
    #[error("state body unreadable: {0}")]
    Body(String),
    #[error("state names descriptor {fd} ('{name}'), which is not open")]
    MissingFd { fd: RawFd, name: String },
    #[error("state has no '{0}' descriptor")]
    NoEntry(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One inherited descriptor: its number in the successor (unchanged by
/// exec) and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdEntry {
    pub name: String,
    pub fd: RawFd,
}

/// What version 1 hands over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The predecessor's `CARGO_PKG_VERSION`, for the log.
    pub hub_version: String,
    /// How many hand-overs this process has been through.
    pub generation: u64,
    /// The control socket's path, and whether the hub bound it itself
    /// (then it removes the file at its final exit).
    pub socket_path: PathBuf,
    pub unlink_on_exit: Option<PathBuf>,
    /// Every inherited descriptor, by name: `listener` is the control
    /// socket, `client:<id>` a client's connection.
    pub fds: Vec<FdEntry>,
    /// The next client id to hand out.
    #[serde(default)]
    pub next_client_id: u32,
    /// Clients whose connections are handed over.
    #[serde(default)]
    pub clients: Vec<HandedClient>,
    /// Channel rings handed over with all their participants.
    #[serde(default)]
    pub rings: Vec<HandedRing>,
    /// The hub's own state: counters, retained values, memory history.
    #[serde(default)]
    pub hub_state: crate::hub::snapshot::HubSnapshot,
}

/// A channel ring kept across the restart: its memfd and the hub's eventfd
/// (index `ring:<endpoint>` and `ring:<endpoint>:event`), the hub's
/// endpoint (its id is the ring token of slot 0 and of the hub's writes),
/// the slots, and the hub's bookkeeping of who may have written what. The
/// ring's positions, cursors and wake-up flags are in the shared memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandedRing {
    pub channel: String,
    pub memfd: RawFd,
    pub hub_event: RawFd,
    /// The ring's policy as the hub made it ("block", "drop-oldest"): the
    /// header's copy is checked against it, never trusted.
    pub policy: String,
    /// The endpoint's routing state (its queue: messages to write into the
    /// ring) and the input it read from the ring but did not handle yet.
    pub endpoint: crate::hub::snapshot::ClientSnapshot,
    #[serde(with = "crate::hub::snapshot::b64")]
    pub endpoint_input: Vec<u8>,
    /// `(slot, client, roles, uid)` of every participant.
    pub slots: Vec<(usize, u32, u8, u32)>,
    pub next_slot: usize,
    /// The hub reads the ring for its own subscribers.
    pub want_reader: bool,
    /// Records the hub wrote itself (for the direct-publish count).
    pub written: u64,
    /// Ids a record may name as its origin: `(id, write_pos when it left)`.
    pub writers: Vec<(u32, Option<u64>)>,
    /// Records the hub wrote and has yet to read back, byte for byte.
    pub relayed: Vec<RelayedRecord>,
    pub hub_cursor: Option<u64>,
}

/// A record the hub wrote into a channel ring: what it must read back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayedRecord {
    pub seq: u64,
    #[serde(with = "crate::hub::snapshot::b64")]
    pub record: Vec<u8>,
}

/// A client kept across the restart: its connection, its routing state,
/// and the input read from it but not handled yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandedClient {
    pub fd: RawFd,
    pub hub: crate::hub::snapshot::ClientSnapshot,
    #[serde(with = "crate::hub::snapshot::b64")]
    pub input: Vec<u8>,
    /// The data path's descriptors: read and write ends (pipe, FIFO,
    /// mqueue), or `up, down, hub_event, client_event` (shm); empty on the
    /// socket transport, where `fd` carries the data.
    #[serde(default)]
    pub data_fds: Vec<RawFd>,
    /// Input read from the data path but not handled yet.
    #[serde(default, with = "crate::hub::snapshot::b64")]
    pub data_input: Vec<u8>,
}

impl State {
    pub fn fd(&self, name: &'static str) -> Result<RawFd, HandoverError> {
        self.fds
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.fd)
            .ok_or(HandoverError::NoEntry(name))
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The bytes of `state` in the hand-over format.
pub fn encode(state: &State) -> Vec<u8> {
    let body = serde_json::to_vec(state).expect("state serializes");
    let mut out = Vec::with_capacity(body.len() + 28);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&fnv1a(&body).to_le_bytes());
    out
}

/// Parse the hand-over format; every field is checked, nothing trusted.
pub fn decode(bytes: &[u8]) -> Result<State, HandoverError> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(HandoverError::Magic);
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if found != FORMAT_VERSION {
        return Err(HandoverError::Version { found });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    if len > MAX_BODY || bytes.len() as u64 != 20 + len + 8 {
        return Err(HandoverError::Length(len));
    }
    let body = &bytes[20..20 + len as usize];
    let sum = u64::from_le_bytes(bytes[20 + len as usize..].try_into().unwrap());
    if sum != fnv1a(body) {
        return Err(HandoverError::Checksum);
    }
    serde_json::from_slice(body).map_err(|e| HandoverError::Body(e.to_string()))
}

/// Write `state` into a new memfd and seal it: nobody, ourselves included,
/// changes it after this.
pub fn write_memfd(state: &State) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(
        c"ipchub-state",
        MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let bytes = encode(state);
    let mut off = 0;
    while off < bytes.len() {
        off += nix::unistd::write(&fd, &bytes[off..])?;
    }
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Read a state memfd: it must be sealed against writing and resizing, and
/// every descriptor its index names must be open in this process.
pub fn read_memfd(fd: &OwnedFd) -> Result<State, HandoverError> {
    let state = read_sealed(fd)?;
    use nix::fcntl::{fcntl, FcntlArg};
    for e in &state.fds {
        if e.fd < 3 || fcntl(e.fd, FcntlArg::F_GETFD).is_err() {
            return Err(HandoverError::MissingFd {
                fd: e.fd,
                name: e.name.clone(),
            });
        }
    }
    Ok(state)
}

/// Read a state memfd without looking at the descriptors it names: the
/// seals, the format and the consistency of the client list with the index
/// (systemd's fd store passes the descriptors by name, under new numbers:
/// `daemon/fdstore.rs` maps them).
pub fn read_sealed(fd: &OwnedFd) -> Result<State, HandoverError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let raw = fd.as_raw_fd();
    let seals = fcntl(raw, FcntlArg::F_GET_SEALS)
        .map_err(|e| HandoverError::NotSealed(raw, e.to_string()))?;
    let need = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK;
    if !SealFlag::from_bits_truncate(seals).contains(need) {
        return Err(HandoverError::NotSealed(
            raw,
            "writable or resizable".into(),
        ));
    }
    let size = nix::sys::stat::fstat(raw).map_err(io::Error::from)?.st_size as u64;
    if size > MAX_BODY + 28 {
        return Err(HandoverError::Length(size));
    }
    let mut bytes = vec![0u8; size as usize];
    let mut off = 0;
    while off < bytes.len() {
        let n = nix::sys::uio::pread(fd.as_fd(), &mut bytes[off..], off as i64)
            .map_err(io::Error::from)?;
        if n == 0 {
            return Err(HandoverError::Length(size));
        }
        off += n;
    }
    let state = decode(&bytes)?;
    check_consistent(&state)?;
    Ok(state)
}

/// The state's own consistency, whatever wrote it: every descriptor a
/// client names is in the index, the index names each number once (two
/// owners of one descriptor would close it twice), each client has a data
/// path its transport can have, and no client id appears twice.
pub fn check_consistent(state: &State) -> Result<(), HandoverError> {
    let mut numbers = std::collections::HashSet::new();
    for e in &state.fds {
        if !numbers.insert(e.fd) {
            return Err(HandoverError::Body(format!(
                "descriptor {} is named twice in the index",
                e.fd
            )));
        }
    }
    let mut ids = std::collections::HashSet::new();
    let mut used = std::collections::HashSet::new();
    for r in &state.rings {
        let what = |t: &str| HandoverError::Body(format!("ring '{}': {t}", r.channel));
        if ipchub_wire::channel::validate_name(&r.channel).is_err() {
            return Err(what("not a channel name"));
        }
        for fd in [r.memfd, r.hub_event] {
            if !numbers.contains(&fd) {
                return Err(HandoverError::MissingFd {
                    fd,
                    name: format!("ring '{}' (not in the index)", r.channel),
                });
            }
            if !used.insert(fd) {
                return Err(what("a descriptor named twice"));
            }
        }
        if !ids.insert(r.endpoint.id) {
            return Err(what("its endpoint id is taken"));
        }
        if !matches!(r.policy.as_str(), "block" | "drop-oldest") {
            return Err(what("unknown policy"));
        }
        let max = ipchub_os::shm::bring::MAX_SLOTS;
        let mut slots = std::collections::HashSet::new();
        if r.slots.is_empty() || r.slots.len() >= max {
            return Err(what("a participant count no ring has"));
        }
        for &(slot, _, roles, _) in &r.slots {
            if slot == 0 || slot >= max || !slots.insert(slot) || roles == 0 || roles > 3 {
                return Err(what("a slot no ring has"));
            }
        }
        // Bounded as the old hub bounds them.
        let relayed_bytes: usize = r.relayed.iter().map(|x| x.record.len()).sum();
        if r.writers.len() > 4 * max + max || r.relayed.len() > (1 << 25) || relayed_bytes > 1 << 30
        {
            return Err(what("more bookkeeping than a ring holds"));
        }
    }
    let mut ring_names = std::collections::HashSet::new();
    if !state.rings.iter().all(|r| ring_names.insert(&r.channel)) {
        return Err(HandoverError::Body("a channel's ring appears twice".into()));
    }
    for c in &state.clients {
        if !ids.insert(c.hub.id) {
            return Err(HandoverError::Body(format!(
                "client {} appears twice",
                c.hub.id
            )));
        }
        for &fd in std::iter::once(&c.fd).chain(&c.data_fds) {
            if !numbers.contains(&fd) {
                return Err(HandoverError::MissingFd {
                    fd,
                    name: format!("client:{} (not in the index)", c.hub.id),
                });
            }
            if !used.insert(fd) {
                return Err(HandoverError::Body(format!(
                    "descriptor {fd} is claimed by two clients (client {})",
                    c.hub.id
                )));
            }
        }
        let fits = match c.data_fds.len() {
            0 | 2 => c.hub.transport != "shm",
            4 => c.hub.transport == "shm",
            _ => false,
        };
        if !fits {
            return Err(HandoverError::Body(format!(
                "client {} ({}) has {} data descriptors",
                c.hub.id,
                c.hub.transport,
                c.data_fds.len()
            )));
        }
    }
    check_hub_state(&state.hub_state)?;
    // Every participant of a ring is an shm client handed over.
    for r in &state.rings {
        for &(_, id, _, _) in &r.slots {
            if !state
                .clients
                .iter()
                .any(|c| c.hub.id == id && c.hub.transport == "shm")
            {
                return Err(HandoverError::Body(format!(
                    "ring '{}': participant {id} is not an shm client handed over",
                    r.channel
                )));
            }
        }
    }
    Ok(())
}

/// At most this many channels, retained values and stored messages in a
/// state: far above what a hub holds under its bounds (`hub.max_channels`,
/// the retained and history byte bounds with their per-entry overhead).
const MAX_ITEMS: usize = 1 << 24;

/// The hub state's own consistency: bounded counts and channel names.
/// (Bounds of today's configuration, payload sizes among them, are
/// applied item by item when it is taken over: `Hub::import_hub_state`.)
fn check_hub_state(h: &crate::hub::snapshot::HubSnapshot) -> Result<(), HandoverError> {
    let stored: usize = h.history.iter().map(|c| c.entries.len()).sum();
    if h.channels.len() > MAX_ITEMS
        || h.retained.len() > MAX_ITEMS
        || h.history.len() > MAX_ITEMS
        || stored > MAX_ITEMS
        || h.gone_bytes.len() > 16
    {
        return Err(HandoverError::Body(
            "hub state: more items than a hub holds".into(),
        ));
    }
    let names = h
        .channels
        .iter()
        .map(|c| &c.name)
        .chain(h.retained.iter().map(|r| &r.channel))
        .chain(h.history.iter().map(|c| &c.channel));
    for name in names {
        if ipchub_wire::channel::validate_name(name).is_err() {
            return Err(HandoverError::Body(format!(
                "hub state: '{}' is not a channel name",
                name.escape_debug()
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if !h.channels.iter().all(|c| seen.insert(&c.name)) {
        return Err(HandoverError::Body("hub state: a channel twice".into()));
    }
    seen.clear();
    if !h.retained.iter().all(|c| seen.insert(&c.channel)) {
        return Err(HandoverError::Body(
            "hub state: a retained value twice".into(),
        ));
    }
    seen.clear();
    if !h.history.iter().all(|c| seen.insert(&c.channel)) {
        return Err(HandoverError::Body("hub state: a history twice".into()));
    }
    Ok(())
}

/// Keep the state's body within `MAX_BODY`: what the clients need goes
/// first (their connections, subscriptions and queues, the rings); of the
/// hub's own state, stored history messages are left out first (the
/// oldest of all channels first; each channel keeps its numbering), then
/// retained values (the largest first). Never fails: what is left out is
/// logged. Returns (history messages, retained values) left out.
pub fn fit(state: &mut State) -> (usize, usize) {
    fit_within(state, MAX_BODY)
}

fn fit_within(state: &mut State, max: u64) -> (usize, usize) {
    let size = |s: &State| serde_json::to_vec(s).map_or(u64::MAX, |b| b.len() as u64);
    let mut over = size(state).saturating_sub(max);
    let (mut history, mut retained) = (0, 0);
    if over == 0 {
        return (0, 0);
    }
    let h = &mut state.hub_state;
    // Stored messages, oldest first, until their encoded size covers the
    // excess (estimated, then measured again; at worst all of them go).
    let mut all: Vec<(u64, usize, usize)> = h
        .history
        .iter()
        .enumerate()
        .flat_map(|(c, ch)| {
            ch.entries
                .iter()
                .enumerate()
                .map(move |(i, e)| (e.age_ms, c, i))
        })
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut drop_n = vec![0usize; h.history.len()];
    let mut freed = 0u64;
    for &(_, c, i) in &all {
        if freed >= over {
            break;
        }
        let e = &h.history[c].entries[i];
        freed += serde_json::to_vec(e).map_or(0, |b| b.len() as u64 + 1);
        drop_n[c] += 1;
    }
    for (ch, n) in h.history.iter_mut().zip(drop_n) {
        // Oldest first within a channel too: a run from its front.
        let n = n.min(ch.entries.len());
        ch.entries.drain(..n);
        history += n;
    }
    over = size(state).saturating_sub(max);
    if over > 0 {
        for ch in &mut state.hub_state.history {
            history += ch.entries.len();
            ch.entries.clear();
        }
        over = size(state).saturating_sub(max);
    }
    state
        .hub_state
        .retained
        .sort_by_key(|v| std::cmp::Reverse(v.payload.len()));
    while over > 0 && !state.hub_state.retained.is_empty() {
        let v = state.hub_state.retained.remove(0);
        retained += 1;
        over = over.saturating_sub(v.payload.len() as u64 * 4 / 3 + v.channel.len() as u64);
        if over == 0 {
            over = size(state).saturating_sub(max);
        }
    }
    tracing::warn!(
        history_messages = history,
        retained_values = retained,
        "hand-over state over {max} bytes: stored messages and retained values left out"
    );
    if size(state) > max {
        tracing::warn!("hand-over state still over {max} bytes (the clients' queues): the successor will not read it, clients reconnect");
    }
    (history, retained)
}

/// Descriptors this process received already owned (from systemd's fd
/// store) and handed to the state under their numbers, waiting for
/// [`claim`].
static PROVIDED: std::sync::Mutex<Option<std::collections::HashMap<RawFd, OwnedFd>>> =
    std::sync::Mutex::new(None);

/// Make an owned descriptor claimable by its number: the state names
/// descriptors by number, and the fd store's arrive owned.
pub fn provide(fd: OwnedFd) -> RawFd {
    let raw = fd.as_raw_fd();
    PROVIDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Default::default)
        .insert(raw, fd);
    raw
}

/// Take ownership of a descriptor the state names: one [`provide`]d, else
/// one inherited across exec (`ipchub_os::sys::claim_inherited`).
pub fn claim(raw: RawFd) -> io::Result<OwnedFd> {
    let provided = PROVIDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|m| m.remove(&raw));
    match provided {
        Some(fd) => Ok(fd),
        None => ipchub_os::sys::claim_inherited(raw),
    }
}

/// In the successor, before any thread exists: the state handed over, if
/// any. `Some(Err)`: there was one and it is unusable; every inherited
/// descriptor (all but stdio and systemd's `LISTEN_FDS`) is closed then, so
/// the fresh start finds no stale listener in its way.
pub fn take() -> Option<Result<State, HandoverError>> {
    let val = std::env::var(ENV).ok()?;
    // Called at the start of main, before any other thread exists (the
    // same rule as systemd::take_listen_fds): editing the environment is
    // then race-free.
    std::env::remove_var(ENV);
    let res = (|| {
        let fd: RawFd = val
            .parse()
            .ok()
            .filter(|&fd| fd > 2)
            .ok_or_else(|| HandoverError::BadEnv(val.clone()))?;
        // The predecessor passed us this descriptor by number.
        let memfd =
            ipchub_os::sys::claim_inherited(fd).map_err(|_| HandoverError::BadEnv(val.clone()))?;
        let state = read_memfd(&memfd)?;
        state.fd("listener")?;
        Ok(state)
    })();
    match res {
        Ok(state) => Some(Ok(state)),
        Err(e) => {
            close_inherited();
            Some(Err(e))
        }
    }
}

/// Close every descriptor above stdio except those systemd passed
/// (`LISTEN_FDS`, from 3): after an unusable hand-over, what the
/// predecessor left open is unknown and must not hold its socket.
fn close_inherited() {
    let keep = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd: &RawFd| fd >= 3 + keep)
        .collect();
    for fd in fds {
        // The directory's own descriptor is closed already (the iterator
        // is gone); closing it again fails harmlessly with EBADF.
        let _ = nix::unistd::close(fd);
    }
}

/// Clear close-on-exec on `fd` (`dup2(fd, fd)` would keep it).
pub fn inherit(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// The binary to execute again: the path we were started from, which after
/// a package upgrade holds the new version (`/proc/self/exe` would name the
/// old, deleted one).
pub fn own_binary() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// Execute our own binary again with the same arguments and `state_fd`
/// named in the environment. Returns only on failure.
pub fn exec(state_fd: OwnedFd) -> io::Error {
    use std::os::unix::process::CommandExt;
    let bin = match own_binary() {
        Ok(b) => b,
        Err(e) => return e,
    };
    if let Err(e) = inherit(state_fd.as_raw_fd()) {
        return e;
    }
    let fd = state_fd.as_raw_fd();
    // The descriptor must stay open through exec: forgotten here; on
    // failure the caller carries on with it leaked (one descriptor, once).
    std::mem::forget(state_fd);
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    std::process::Command::new(bin)
        .arg0(argv0)
        .args(args)
        .env(ENV, fd.to_string())
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            hub_version: "0.1.0".into(),
            generation: 3,
            socket_path: "/run/ipchub/ipchub.sock".into(),
            unlink_on_exit: None,
            fds: vec![FdEntry {
                name: "listener".into(),
                fd: 999_999,
            }],
            next_client_id: 1,
            clients: Vec::new(),
            rings: Vec::new(),
            hub_state: Default::default(),
        }
    }

    #[test]
    fn a_state_round_trips_and_every_damage_is_refused() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes).unwrap(), sample());
        // Another version (the previous one too) is refused.
        for other in [1u8, 3] {
            let mut v = bytes.clone();
            v[8] = other;
            assert!(matches!(
                decode(&v),
                Err(HandoverError::Version { found }) if found == u32::from(other)
            ));
        }
        let mut v = bytes.clone();
        let last = v.len() - 9;
        v[last] ^= 1;
        assert!(matches!(decode(&v), Err(HandoverError::Checksum)));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(HandoverError::Length(_))
        ));
        assert!(matches!(
            decode(b"garbage garbage garbage"),
            Err(HandoverError::Magic)
        ));
    }

    fn client(id: u32, transport: &str, fd: RawFd, data_fds: Vec<RawFd>) -> HandedClient {
        HandedClient {
            fd,
            hub: crate::hub::snapshot::ClientSnapshot {
                id,
                pid: 1,
                uid: 0,
                gid: 0,
                groups: vec![],
                name: format!("c{id}"),
                transport: transport.into(),
                patterns: vec![],
                queued: vec![],
                head_written: 0,
                messages_in: 0,
                messages_out: 0,
                dropped: 0,
                wants_seq: false,
                wants_retain_flag: false,
                bytes_in: 0,
                bytes_out: 0,
            },
            input: vec![],
            data_fds,
            data_input: vec![],
        }
    }

    fn indexed(clients: Vec<HandedClient>) -> State {
        let mut s = sample();
        for c in &clients {
            for (i, &fd) in std::iter::once(&c.fd).chain(&c.data_fds).enumerate() {
                let name = match i {
                    0 => format!("client:{}", c.hub.id),
                    k => format!("client:{}:{}", c.hub.id, DATA_ROLES[k - 1]),
                };
                if !s.fds.iter().any(|e| e.fd == fd) {
                    s.fds.push(FdEntry { name, fd });
                }
            }
        }
        s.clients = clients;
        s
    }

    #[test]
    fn an_inconsistent_state_is_refused_whatever_wrote_it() {
        // Fine: a socket, a pipe and an shm client.
        let good = indexed(vec![
            client(1, "socket", 10, vec![]),
            client(2, "pipe", 11, vec![12, 13]),
            client(3, "shm", 14, vec![15, 16, 17, 18]),
        ]);
        check_consistent(&good).unwrap();
        for bad in [
            // An shm client with a pipe's data path, and the reverse.
            indexed(vec![client(3, "shm", 14, vec![15, 16])]),
            indexed(vec![client(2, "pipe", 11, vec![12, 13, 14, 15])]),
            indexed(vec![client(2, "socket", 11, vec![12])]),
            // One descriptor, two owners.
            indexed(vec![
                client(1, "socket", 10, vec![]),
                client(2, "pipe", 11, vec![10, 13]),
            ]),
            // One id twice.
            indexed(vec![
                client(1, "socket", 10, vec![]),
                client(1, "socket", 11, vec![]),
            ]),
        ] {
            assert!(
                matches!(check_consistent(&bad), Err(HandoverError::Body(_))),
                "{:?}",
                bad.clients
            );
        }
        // A ring whose participant is not an shm client handed over, or
        // with a slot no ring has.
        let ring = |slots: Vec<(usize, u32, u8, u32)>| {
            let mut s = indexed(vec![
                client(1, "socket", 10, vec![]),
                client(3, "shm", 14, vec![15, 16, 17, 18]),
            ]);
            s.fds.push(FdEntry {
                name: "ring:40".into(),
                fd: 41,
            });
            s.fds.push(FdEntry {
                name: "ring:40:event".into(),
                fd: 42,
            });
            let mut endpoint = s.clients[0].hub.clone();
            endpoint.id = 40;
            s.rings.push(HandedRing {
                channel: "ch".into(),
                memfd: 41,
                hub_event: 42,
                policy: "block".into(),
                endpoint,
                endpoint_input: vec![],
                slots,
                next_slot: 1,
                want_reader: false,
                written: 0,
                writers: vec![],
                relayed: vec![],
                hub_cursor: None,
            });
            s
        };
        check_consistent(&ring(vec![(1, 3, 1, 0)])).unwrap();
        for slots in [
            vec![(1, 1, 1, 0)],
            vec![(1, 9, 1, 0)],
            vec![(0, 3, 1, 0)],
            vec![(64, 3, 1, 0)],
            vec![(1, 3, 4, 0)],
            vec![],
        ] {
            assert!(check_consistent(&ring(slots.clone())).is_err(), "{slots:?}");
        }
        // A number the index names twice.
        let mut twice = good.clone();
        twice.fds.push(FdEntry {
            name: "client:9".into(),
            fd: 10,
        });
        assert!(matches!(
            check_consistent(&twice),
            Err(HandoverError::Body(_))
        ));
        // A client's descriptor missing from the index.
        let mut missing = good;
        missing.fds.retain(|e| e.fd != 17);
        assert!(matches!(
            check_consistent(&missing),
            Err(HandoverError::MissingFd { fd: 17, .. })
        ));
    }

    fn with_hub_state() -> State {
        use crate::hub::snapshot::{HistoryEntry, HistorySnapshot, RetainedValue};
        let mut s = sample();
        let entry = |i: u64| HistoryEntry {
            chan_seq: i,
            age_ms: 1000 - i,
            origin: 1,
            seq: i,
            priority: 0,
            uid: 1000,
            payload: vec![i as u8; 1000],
        };
        for c in ["a", "b"] {
            s.hub_state.history.push(HistorySnapshot {
                channel: c.into(),
                next_seq: 101,
                entries: (1..=100).map(entry).collect(),
            });
        }
        for (c, n) in [("r1", 5000), ("r2", 100)] {
            s.hub_state.retained.push(RetainedValue {
                channel: c.into(),
                payload: vec![7; n],
                origin: 1,
                seq: 1,
                priority: 0,
                uid: 1000,
            });
        }
        s
    }

    #[test]
    fn the_hub_state_round_trips_compactly_and_bad_names_are_refused() {
        let s = with_hub_state();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        // 200 kB of payload: base64, not arrays of numbers (~3.5 bytes each).
        assert!(bytes.len() < 300_000, "{}", bytes.len());
        check_consistent(&s).unwrap();
        let mut bad = s.clone();
        bad.hub_state.retained[0].channel = "a/+".into();
        assert!(matches!(
            check_consistent(&bad),
            Err(HandoverError::Body(_))
        ));
        let mut twice = s.clone();
        twice.hub_state.history[1].channel = "a".into();
        assert!(matches!(
            check_consistent(&twice),
            Err(HandoverError::Body(_))
        ));
    }

    #[test]
    fn an_oversized_state_leaves_history_out_first_then_retained_values() {
        let full = serde_json::to_vec(&with_hub_state()).unwrap().len() as u64;
        // A little too big: some of the oldest stored messages go, from the
        // front of each channel, and every retained value stays.
        let mut s = with_hub_state();
        let (h, r) = fit_within(&mut s, full - 5000);
        assert!(h > 0 && r == 0, "{h} {r}");
        assert!(serde_json::to_vec(&s).unwrap().len() as u64 <= full - 5000);
        for c in &s.hub_state.history {
            assert_eq!(c.next_seq, 101, "numbering kept");
            assert_eq!(c.entries.last().unwrap().chan_seq, 100, "newest kept");
            assert!(c
                .entries
                .windows(2)
                .all(|w| w[1].chan_seq == w[0].chan_seq + 1));
        }
        // Far too big for any history: it all goes, then the largest
        // retained value.
        let mut s = with_hub_state();
        let (h, r) = fit_within(&mut s, 3000);
        assert_eq!((h, r), (200, 1));
        assert_eq!(s.hub_state.retained.len(), 1);
        assert_eq!(s.hub_state.retained[0].channel, "r2");
        // Fitting already: nothing changes.
        let mut s = with_hub_state();
        assert_eq!(fit_within(&mut s, full), (0, 0));
        assert_eq!(s, with_hub_state());
    }

    #[test]
    fn the_memfd_is_sealed_and_an_unsealed_one_refused() {
        let fd = write_memfd(&sample()).unwrap();
        assert!(nix::unistd::write(&fd, b"x").is_err(), "sealed");
        // Its descriptor 999999 is not open: refused, named.
        assert!(matches!(
            read_memfd(&fd),
            Err(HandoverError::MissingFd { fd: 999_999, .. })
        ));
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let open = memfd_create(c"t", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::write(&open, &encode(&sample())).unwrap();
        assert!(matches!(
            read_memfd(&open),
            Err(HandoverError::NotSealed(..))
        ));
    }
}
