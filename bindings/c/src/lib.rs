//! The C API of the ipchub client library (`libipchub.so.0`, `ipchub.h`).
//!
//! A thin layer over [`::ipchub_client::Client`]: every transport, shared
//! memory channel rings included, with the Rust client's own code. Every
//! entry point catches panics (none crosses into C), checks its pointers,
//! and reports failure as a negative `IPCHUB_ERR_*` code with a message kept
//! per thread ([`ipchub_last_error`]).
//!
//! `include/ipchub.h` is generated from this file by cbindgen; the test
//! `tests/header.rs` fails when the committed header differs from a fresh
//! rendering (`IPCHUB_UPDATE_HEADER=1 cargo test -p ipchub-c` rewrites it).
#![allow(non_camel_case_types)]

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::ipchub_client::TransportKind;
use ::ipchub_client::{Client, ClientError, Event, Message, Options, PublishOptions};

/// Success.
pub const IPCHUB_OK: c_int = 0;
/// `ipchub_receive`: no message arrived within the timeout (not an error).
pub const IPCHUB_TIMEOUT: c_int = 1;

/// An argument is invalid: a NULL pointer, a string that is not UTF-8, an
/// unknown transport.
pub const IPCHUB_ERR_INVALID_ARGUMENT: c_int = -1;
/// No hub listens at the socket path.
pub const IPCHUB_ERR_NOT_RUNNING: c_int = -2;
/// The hub's socket (or a channel) is not open to this user.
pub const IPCHUB_ERR_PERMISSION: c_int = -3;
/// Connecting failed for another reason.
pub const IPCHUB_ERR_CONNECT: c_int = -4;
/// The hub refused the request: `ipchub_last_hub_code()` gives its code
/// (docs/PROTOCOL.md, error codes), `ipchub_last_error()` its text.
pub const IPCHUB_ERR_REFUSED: c_int = -5;
/// Invalid channel name or pattern.
pub const IPCHUB_ERR_BAD_CHANNEL: c_int = -6;
/// The message exceeds the hub's limit or what the transport carries.
pub const IPCHUB_ERR_TOO_LARGE: c_int = -7;
/// Priority above 31.
pub const IPCHUB_ERR_BAD_PRIORITY: c_int = -8;
/// The hub sent something this library does not understand.
pub const IPCHUB_ERR_PROTOCOL: c_int = -9;
/// The connection is closed (the hub said goodbye or went away).
pub const IPCHUB_ERR_CLOSED: c_int = -10;
/// An operating-system error (`ipchub_last_error()` names it).
pub const IPCHUB_ERR_IO: c_int = -11;
/// The hub did not answer in time (connecting).
pub const IPCHUB_ERR_TIMED_OUT: c_int = -12;
/// Another thread is inside a call on the same client handle.
pub const IPCHUB_ERR_BUSY: c_int = -13;
/// A bug in the library was caught at the boundary; the handle is unusable
/// (close it).
pub const IPCHUB_ERR_INTERNAL: c_int = -14;

/// Transports, for `ipchub_connect`: UNIX stream socket.
pub const IPCHUB_TRANSPORT_SOCKET: c_int = 0;
/// A pair of pipes passed over the control socket.
pub const IPCHUB_TRANSPORT_PIPE: c_int = 1;
/// Named pipes in the hub's runtime directory.
pub const IPCHUB_TRANSPORT_FIFO: c_int = 2;
/// POSIX message queues (priorities are the queue's own).
pub const IPCHUB_TRANSPORT_MQUEUE: c_int = 3;
/// Shared memory rings, and the hub's channel rings where offered.
pub const IPCHUB_TRANSPORT_SHM: c_int = 4;

/// A connection to the hub. Opaque; made by `ipchub_connect`, ended by
/// `ipchub_close`.
///
/// Only shared references to it are ever made: what any thread may read is
/// fixed at connect time or atomic, and the rest sits in an UnsafeCell that
/// only the thread holding `in_use` touches.
pub struct ipchub_client {
    /// Set while a call runs: a second thread gets IPCHUB_ERR_BUSY.
    in_use: AtomicBool,
    /// Messages lost to the hub's drop-oldest policy since connecting.
    missed: AtomicU64,
    /// Fixed for the connection's life: the descriptor to poll, the
    /// client's id, the hub's payload limit.
    fd: c_int,
    id: u32,
    max_message: u32,
    state: UnsafeCell<State>,
}

/// The part of a handle that one call at a time works on.
struct State {
    client: Client,
    /// Messages that arrived while waiting for a confirmation.
    pending: VecDeque<Message>,
    /// What the last `ipchub_receive` view points into: the message
    /// (handed back to the client for reuse at the next call) and its
    /// channel as a C string (kept, and reused while the channel stays the
    /// same).
    current: Option<Message>,
    current_channel: CString,
    /// The channel of the last `ipchub_publish`, checked to be UTF-8: a
    /// publisher of one channel validates its name once, not per message.
    publish_channel: String,
    /// A panic was caught inside a call: the state may be torn.
    poisoned: bool,
}

/// A received message. From `ipchub_receive` it borrows the client's
/// memory and is valid until the next call on that client; from
/// `ipchub_receive_copy` it is the caller's, freed with `ipchub_message_free`.
#[repr(C)]
pub struct ipchub_message {
    /// The channel, NUL-terminated.
    pub channel: *const c_char,
    /// The payload (may hold any bytes, NUL included; not NUL-terminated).
    pub data: *const u8,
    /// Payload length in bytes.
    pub len: usize,
    /// The publisher's sequence number for this message.
    pub seq: u64,
    /// The publishing client's id.
    pub origin: u32,
    /// Priority 0..=31 as published.
    pub priority: u8,
}

/// A copied message: the view first, so a pointer to it is a pointer to
/// the view handed to C.
#[repr(C)]
struct OwnedMessage {
    view: ipchub_message,
    channel: CString,
    payload: Vec<u8>,
}

thread_local! {
    /// The last failure on this thread: message and hub code; None after
    /// a success.
    static LAST_ERROR: RefCell<Option<(CString, u16)>> = const { RefCell::new(None) };
    /// Whether LAST_ERROR holds a failure. Every call clears the error, so
    /// this is all a successful call touches: a plain flag, no destructor,
    /// no lazy initialisation. Resetting LAST_ERROR itself on every call
    /// cost a `malloc` and a `free` (`CString::default` allocates one
    /// byte), per message on a receive loop.
    static ERROR_SET: Cell<bool> = const { Cell::new(false) };
}

fn set_error(text: &str, hub_code: u16) {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some((text, hub_code)));
    ERROR_SET.with(|f| f.set(true));
}

fn clear_error() {
    if ERROR_SET.with(|f| f.replace(false)) {
        LAST_ERROR.with(|e| *e.borrow_mut() = None);
    }
}

/// Record `err` as this thread's last error and give its code.
fn fail(err: &ClientError) -> c_int {
    let code = match err {
        ClientError::NotRunning { .. } => IPCHUB_ERR_NOT_RUNNING,
        ClientError::PermissionDenied { .. } => IPCHUB_ERR_PERMISSION,
        ClientError::Connect { .. } => IPCHUB_ERR_CONNECT,
        ClientError::Refused { .. } => IPCHUB_ERR_REFUSED,
        ClientError::BadChannel(_) => IPCHUB_ERR_BAD_CHANNEL,
        ClientError::TooLarge { .. } | ClientError::TooLargeForTransport { .. } => {
            IPCHUB_ERR_TOO_LARGE
        }
        ClientError::BadPriority(_) => IPCHUB_ERR_BAD_PRIORITY,
        ClientError::Protocol(_) => IPCHUB_ERR_PROTOCOL,
        // Reconnection is off in this binding: these come only from a
        // client that gave up or lost its hub, i.e. a closed one.
        ClientError::Closed(_)
        | ClientError::BufferFull { .. }
        | ClientError::Lost { .. }
        | ClientError::GaveUp { .. } => IPCHUB_ERR_CLOSED,
        ClientError::Timeout => IPCHUB_ERR_TIMED_OUT,
        ClientError::Io(_) => IPCHUB_ERR_IO,
    };
    let hub_code = match err {
        ClientError::Refused { code, .. } => *code,
        _ => 0,
    };
    set_error(&err.to_string(), hub_code);
    code
}

fn invalid(what: &str) -> c_int {
    set_error(what, 0);
    IPCHUB_ERR_INVALID_ARGUMENT
}

/// Run `f` with panics caught: a panic becomes IPCHUB_ERR_INTERNAL.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(code) => code,
        Err(_) => {
            set_error("internal error in libipchub (a bug: please report it)", 0);
            IPCHUB_ERR_INTERNAL
        }
    }
}

/// Run `f` on the state behind `c`, one thread at a time, panics caught.
fn with_client(
    c: *mut ipchub_client,
    f: impl FnOnce(&mut State, &ipchub_client) -> Result<c_int, ClientError>,
) -> c_int {
    if c.is_null() {
        return invalid("client handle is NULL");
    }
    // SAFETY: a non-NULL handle was made by ipchub_connect and not yet
    // closed (the header's contract); only shared references to it are
    // ever made.
    let cl = unsafe { &*c };
    if cl.in_use.swap(true, Ordering::Acquire) {
        set_error("another thread is using this client handle", 0);
        return IPCHUB_ERR_BUSY;
    }
    let code = guard(|| {
        // SAFETY: this thread holds the in_use flag, so no other reference
        // to the state exists until the flag is released below.
        let state = unsafe { &mut *cl.state.get() };
        if state.poisoned {
            set_error(
                "client handle unusable after an internal error: close it",
                0,
            );
            return IPCHUB_ERR_INTERNAL;
        }
        clear_error();
        match f(state, cl) {
            Ok(code) => code,
            Err(e) => fail(&e),
        }
    });
    if code == IPCHUB_ERR_INTERNAL {
        // SAFETY: the flag is still held and the closure's reference is gone.
        unsafe { (*cl.state.get()).poisoned = true };
    }
    cl.in_use.store(false, Ordering::Release);
    code
}

/// A C string argument as UTF-8; NULL gives None.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, c_int> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract: a NUL-terminated string.
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Ok(Some(s)),
        Err(_) => Err(invalid(&format!("{what} is not valid UTF-8"))),
    }
}

/// # Safety
/// `p` points to a NUL-terminated string.
unsafe fn req_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, c_int> {
    // SAFETY: forwarded contract.
    match unsafe { opt_str(p, what) }? {
        Some(s) => Ok(s),
        None => Err(invalid(&format!("{what} is NULL"))),
    }
}

fn transport_of(t: c_int) -> Option<TransportKind> {
    Some(match t {
        IPCHUB_TRANSPORT_SOCKET => TransportKind::Socket,
        IPCHUB_TRANSPORT_PIPE => TransportKind::Pipe,
        IPCHUB_TRANSPORT_FIFO => TransportKind::Fifo,
        IPCHUB_TRANSPORT_MQUEUE => TransportKind::Mqueue,
        IPCHUB_TRANSPORT_SHM => TransportKind::Shm,
        _ => return None,
    })
}

/// The `IPCHUB_TRANSPORT_*` named `name` ("socket", "pipe", "fifo",
/// "mqueue", "shm", as `ipchubctl --transport` takes them), or
/// IPCHUB_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ipchub_transport_from_name(name: *const c_char) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let name = match unsafe { req_str(name, "transport name") } {
            Ok(n) => n,
            Err(e) => return e,
        };
        let all = IPCHUB_TRANSPORT_SOCKET..=IPCHUB_TRANSPORT_SHM;
        match all
            .into_iter()
            .find(|&t| transport_of(t).is_some_and(|k| k.name() == name))
        {
            Some(t) => t,
            None => invalid(&format!(
                "unknown transport '{name}' (socket, pipe, fifo, mqueue, shm)"
            )),
        }
    })
}

/// Connect to the hub and complete the handshake for `transport`.
///
/// `socket`: the hub's control socket, or NULL for the default (the
/// `IPCHUB_SOCKET` environment variable, else the user's or the system
/// hub, as `ipchubctl` resolves it). `transport`: an `IPCHUB_TRANSPORT_*`.
/// `name`: shown in the hub's statistics, or NULL. On success `*out` is a
/// new handle for `ipchub_close`; on failure it is NULL.
///
/// # Safety
/// `socket` and `name` are NULL or NUL-terminated strings; `out` points to
/// writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn ipchub_connect(
    socket: *const c_char,
    transport: c_int,
    name: *const c_char,
    out: *mut *mut ipchub_client,
) -> c_int {
    guard(|| {
        clear_error();
        if out.is_null() {
            return invalid("out is NULL");
        }
        // SAFETY: checked non-NULL; the caller's storage for one pointer.
        unsafe { *out = std::ptr::null_mut() };
        let Some(transport) = transport_of(transport) else {
            return invalid(&format!(
                "unknown transport {transport} (IPCHUB_TRANSPORT_SOCKET..IPCHUB_TRANSPORT_SHM)"
            ));
        };
        // SAFETY: the caller's contract for the name.
        let name = match unsafe { opt_str(name, "name") } {
            Ok(n) => n,
            Err(e) => return e,
        };
        // A path is bytes on Linux, UTF-8 or not.
        let socket = (!socket.is_null()).then(|| {
            // SAFETY: non-NULL, and NUL-terminated by the caller's contract.
            let bytes = unsafe { CStr::from_ptr(socket) }.to_bytes();
            PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
        });
        let opts = Options {
            socket,
            transport,
            name: name.unwrap_or("").to_string(),
            // Fail fast until the C API maps the reconnect events.
            reconnect: ::ipchub_client::Reconnect::off(),
        };
        match Client::connect(&opts) {
            Ok(client) => {
                let handle = Box::new(ipchub_client {
                    in_use: AtomicBool::new(false),
                    missed: AtomicU64::new(0),
                    fd: client.as_raw_fd(),
                    id: client.id(),
                    max_message: client.max_message(),
                    state: UnsafeCell::new(State {
                        client,
                        pending: VecDeque::new(),
                        current: None,
                        current_channel: CString::default(),
                        publish_channel: String::new(),
                        poisoned: false,
                    }),
                });
                // SAFETY: checked non-NULL above.
                unsafe { *out = Box::into_raw(handle) };
                IPCHUB_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Write what is still buffered (waiting until the hub took it, or the
/// connection failed), then disconnect and free the handle. NULL is ignored.
/// Returns the flush's result; the handle is freed either way, except
/// when another thread is inside a call on it (IPCHUB_ERR_BUSY: nothing was
/// done, close it again once that call returned).
///
/// # Safety
/// `c` is NULL or a handle from `ipchub_connect` not yet closed, and no
/// other thread uses it; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn ipchub_close(c: *mut ipchub_client) -> c_int {
    if c.is_null() {
        return IPCHUB_OK;
    }
    let code = with_client(c, |st, _| st.client.flush().map(|()| IPCHUB_OK));
    if code == IPCHUB_ERR_BUSY {
        // Another thread is inside a call on it: freeing it now would pull
        // the handle from under that call. Keep it and say so.
        return code;
    }
    guard(|| {
        // SAFETY: made by Box::into_raw in ipchub_connect; the caller gives
        // it up with this call.
        drop(unsafe { Box::from_raw(c) });
        IPCHUB_OK
    });
    code
}

/// Subscribe to a channel or a pattern (`+` matches one level, `#` the
/// rest), waiting for the hub's answer.
///
/// # Safety
/// `c` is a live handle; `pattern` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ipchub_subscribe(c: *mut ipchub_client, pattern: *const c_char) -> c_int {
    // SAFETY: the caller's contract.
    let pattern = match unsafe { req_str(pattern, "pattern") } {
        Ok(p) => p,
        Err(e) => return e,
    };
    // Messages that arrive while it waits stay queued in the client.
    with_client(c, |st, _| st.client.subscribe(pattern).map(|()| IPCHUB_OK))
}

/// Undo an `ipchub_subscribe` of the same pattern.
///
/// # Safety
/// `c` is a live handle; `pattern` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ipchub_unsubscribe(
    c: *mut ipchub_client,
    pattern: *const c_char,
) -> c_int {
    // SAFETY: the caller's contract.
    let pattern = match unsafe { req_str(pattern, "pattern") } {
        Ok(p) => p,
        Err(e) => return e,
    };
    with_client(c, |st, _| {
        st.client.unsubscribe(pattern).map(|()| IPCHUB_OK)
    })
}

/// Publish `len` bytes at `data` on `channel` with `priority` (0..=31,
/// carried end to end; the POSIX queue priority on mqueue).
///
/// With `delivered` NULL the message is buffered and leaves within about a
/// millisecond, or at the next call that waits (`ipchub_flush`,
/// `ipchub_receive`, `ipchub_close`). With `delivered` non-NULL the call
/// waits for the hub's confirmation and stores how many subscribers the
/// message was delivered to; messages that arrive meanwhile are kept for
/// `ipchub_receive`.
///
/// # Safety
/// `c` is a live handle; `channel` a NUL-terminated string; `data` points
/// to `len` readable bytes (it may be NULL when `len` is 0); `delivered` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ipchub_publish(
    c: *mut ipchub_client,
    channel: *const c_char,
    data: *const c_void,
    len: usize,
    priority: u8,
    delivered: *mut u32,
) -> c_int {
    if channel.is_null() {
        return invalid("channel is NULL");
    }
    // SAFETY: non-NULL, and NUL-terminated by the caller's contract. Its
    // UTF-8 check waits for the handle: a repeated channel skips it.
    let channel = unsafe { CStr::from_ptr(channel) }.to_bytes();
    if data.is_null() && len > 0 {
        return invalid("data is NULL");
    }
    let payload: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract: `len` readable bytes at `data`.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
    };
    with_client(c, |st, cl| {
        // The UTF-8 check (and the strlen before it) were a fifth of a C
        // publisher's time on shm at 64 B: a byte comparison with the last
        // channel is enough when it did not change.
        if st.publish_channel.as_bytes() != channel {
            let Ok(ch) = std::str::from_utf8(channel) else {
                return Ok(invalid("channel is not valid UTF-8"));
            };
            st.publish_channel.clear();
            st.publish_channel.push_str(ch);
        }
        let ack = !delivered.is_null();
        let seq = st.client.publish_with(
            &st.publish_channel,
            payload,
            PublishOptions { ack, priority },
        )?;
        if ack {
            let n = wait_ack(st, cl, seq)?;
            // SAFETY: checked non-NULL; the caller's writable u32.
            unsafe { *delivered = n };
        }
        Ok(IPCHUB_OK)
    })
}

/// Wait for the ACK of `seq`, keeping messages that arrive meanwhile.
fn wait_ack(st: &mut State, cl: &ipchub_client, seq: u64) -> Result<u32, ClientError> {
    loop {
        match st.client.next_event(None)? {
            Some(Event::Ack { seq: s, delivered }) if s == seq => return Ok(delivered),
            Some(Event::Error { seq: s, code, text }) if s == seq => {
                return Err(ClientError::Refused { code, text })
            }
            Some(other) => keep(st, cl, other),
            None => {}
        }
    }
}

/// An event nobody waits for: messages are queued, losses counted, the rest
/// (answers to requests no longer waited for) dropped.
fn keep(st: &mut State, cl: &ipchub_client, ev: Event) {
    match ev {
        Event::Message(m) => st.pending.push_back(m),
        Event::Missed(n) => {
            cl.missed.fetch_add(n, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// The next message, waiting up to `timeout_ms` milliseconds (0: only what
/// has arrived; negative: no limit).
fn next_message(
    st: &mut State,
    cl: &ipchub_client,
    timeout_ms: c_int,
) -> Result<Option<Message>, ClientError> {
    if let Some(m) = st.pending.pop_front() {
        return Ok(Some(m));
    }
    // What has already arrived is taken with `poll_events`: no clock read
    // (`next_event(Some(ZERO))` reads one for its deadline, an eighth of
    // a C subscriber's time on shm at 64 B) and no arming of the
    // wake-ups (`next_event` finding the rings empty tells each ring its
    // reader sleeps, only to return at once; the wait below arms them
    // again). Only when nothing is waiting to be written: a receive
    // writes pending publishes first, and `poll_events` does not.
    if st.client.pending_bytes() == 0 {
        // (`keep` queues only messages, and those are returned here.)
        while let Some(ev) = st.client.poll_events()? {
            match ev {
                Event::Message(m) => return Ok(Some(m)),
                other => keep(st, cl, other),
            }
        }
    }
    if timeout_ms == 0 {
        // This arms the wake-ups, as the descriptor's contract asks
        // (`ipchub_fileno`): after a TIMEOUT the next message wakes the
        // caller's loop.
        while let Some(ev) = st.client.next_event(Some(Duration::ZERO))? {
            match ev {
                Event::Message(m) => return Ok(Some(m)),
                other => keep(st, cl, other),
            }
        }
        return Ok(None);
    }
    let deadline =
        (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match st.client.next_event(left)? {
            Some(Event::Message(m)) => return Ok(Some(m)),
            Some(other) => keep(st, cl, other),
            None => return Ok(None),
        }
        if let Some(m) = st.pending.pop_front() {
            return Ok(Some(m));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}

fn view_of(channel: &CString, payload: &[u8], m: &Message) -> ipchub_message {
    ipchub_message {
        channel: channel.as_ptr(),
        data: payload.as_ptr(),
        len: payload.len(),
        seq: m.seq,
        origin: m.origin,
        priority: m.priority,
    }
}

fn channel_cstring(name: String) -> CString {
    // Channel names never contain NUL (the hub validates them).
    CString::new(name).unwrap_or_default()
}

/// Receive the next message, waiting up to `timeout_ms` milliseconds (0:
/// return at once; -1: no limit). Returns IPCHUB_OK and fills `*msg`,
/// IPCHUB_TIMEOUT when none came, or an error. Pending publishes are
/// written first.
///
/// `*msg` borrows the client's memory: it stays valid until the next call
/// on this client (any call) or `ipchub_close`. Use
/// `ipchub_receive_copy` for a message to keep.
///
/// # Safety
/// `c` is a live handle; `msg` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn ipchub_receive(
    c: *mut ipchub_client,
    timeout_ms: c_int,
    msg: *mut ipchub_message,
) -> c_int {
    if msg.is_null() {
        return invalid("msg is NULL");
    }
    with_client(c, |st, cl| {
        // The previous view ends here: its message's buffers go back to the
        // client for the next messages, its channel string is kept while
        // the channel stays the same (no allocation per message).
        if let Some(old) = st.current.take() {
            st.client.recycle(old);
        }
        let Some(m) = next_message(st, cl, timeout_ms)? else {
            return Ok(IPCHUB_TIMEOUT);
        };
        if st.current_channel.as_bytes() != m.channel.as_bytes() {
            st.current_channel = channel_cstring(m.channel.clone());
        }
        // Moved into place once; the view points into its heap buffers.
        let m = st.current.insert(m);
        let view = view_of(&st.current_channel, &m.payload, m);
        // SAFETY: checked non-NULL; the caller's writable storage.
        unsafe { *msg = view };
        Ok(IPCHUB_OK)
    })
}

/// Like `ipchub_receive`, but the message is copied: `*out` is the caller's
/// until `ipchub_message_free`. NULL in `*out` when none came.
///
/// # Safety
/// `c` is a live handle; `out` points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn ipchub_receive_copy(
    c: *mut ipchub_client,
    timeout_ms: c_int,
    out: *mut *mut ipchub_message,
) -> c_int {
    if out.is_null() {
        return invalid("out is NULL");
    }
    // SAFETY: checked non-NULL.
    unsafe { *out = std::ptr::null_mut() };
    with_client(c, |st, cl| {
        if let Some(old) = st.current.take() {
            st.client.recycle(old);
        }
        let Some(m) = next_message(st, cl, timeout_ms)? else {
            return Ok(IPCHUB_TIMEOUT);
        };
        let channel = channel_cstring(m.channel.clone());
        let view = view_of(&channel, &m.payload, &m);
        let owned = Box::new(OwnedMessage {
            view,
            channel,
            payload: m.payload,
        });
        // SAFETY: checked non-NULL. `view` is the first field of a
        // #[repr(C)] struct, so the pointer is also the view's.
        unsafe { *out = Box::into_raw(owned).cast::<ipchub_message>() };
        Ok(IPCHUB_OK)
    })
}

/// Free a message from `ipchub_receive_copy`. NULL is ignored.
///
/// # Safety
/// `m` is NULL or came from `ipchub_receive_copy` and was not freed yet
/// (never a view filled by `ipchub_receive`).
#[no_mangle]
pub unsafe extern "C" fn ipchub_message_free(m: *mut ipchub_message) {
    if m.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: made by Box::into_raw of an OwnedMessage whose first
        // field is this view (#[repr(C)]).
        drop(unsafe { Box::from_raw(m.cast::<OwnedMessage>()) });
        IPCHUB_OK
    });
}

/// Write every buffered publish now, waiting until the transport took it.
///
/// # Safety
/// `c` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipchub_flush(c: *mut ipchub_client) -> c_int {
    with_client(c, |st, _| st.client.flush().map(|()| IPCHUB_OK))
}

/// The descriptor to watch for input with poll/epoll/libuv/glib (readable
/// means: call `ipchub_receive` with timeout 0 until it gives
/// IPCHUB_TIMEOUT). Arm it that way too: only after `ipchub_receive`
/// returned IPCHUB_TIMEOUT is it sure to wake the loop for the next
/// message. The descriptor stays the client's: do not read it or close it.
/// On pipe, fifo and socket the hub going away makes it readable (the next
/// call returns IPCHUB_ERR_CLOSED); on mqueue and shm it does not, and a
/// loop learns of it at its next call, so such a loop should also call
/// `ipchub_receive` from a periodic timer. Returns -1 for a NULL handle.
///
/// # Safety
/// `c` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipchub_fileno(c: *const ipchub_client) -> c_int {
    if c.is_null() {
        set_error("client handle is NULL", 0);
        return -1;
    }
    // SAFETY: a live handle (the caller's contract); `fd` is fixed at
    // connect time, so any thread may read it.
    unsafe { &*c }.fd
}

/// Messages the hub dropped for this client (its `drop-oldest` policy)
/// since it connected, as far as received so far.
///
/// # Safety
/// `c` is NULL (gives 0) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipchub_missed(c: *const ipchub_client) -> u64 {
    if c.is_null() {
        return 0;
    }
    // SAFETY: a live handle (the caller's contract).
    unsafe { &*c }.missed.load(Ordering::Relaxed)
}

/// This client's id at the hub (the `origin` of its messages); 0 for NULL.
///
/// # Safety
/// `c` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipchub_client_id(c: *const ipchub_client) -> u32 {
    if c.is_null() {
        return 0;
    }
    // SAFETY: a live handle (the caller's contract).
    unsafe { &*c }.id
}

/// The hub's limit on payload size in bytes; 0 for NULL.
///
/// # Safety
/// `c` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ipchub_max_message(c: *const ipchub_client) -> u32 {
    if c.is_null() {
        return 0;
    }
    // SAFETY: a live handle (the caller's contract).
    unsafe { &*c }.max_message
}

/// The message of this thread's last failure ("" after a success). Valid
/// until the next call into the library on this thread.
#[no_mangle]
pub extern "C" fn ipchub_last_error() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some((text, _)) => text.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// The hub's error code (docs/PROTOCOL.md) of this thread's last failure
/// when it was IPCHUB_ERR_REFUSED, else 0.
#[no_mangle]
pub extern "C" fn ipchub_last_hub_code() -> c_int {
    LAST_ERROR.with(|e| {
        e.borrow()
            .as_ref()
            .map_or(0, |(_, code)| c_int::from(*code))
    })
}

/// A static description of an `IPCHUB_*` return code.
#[no_mangle]
pub extern "C" fn ipchub_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        IPCHUB_OK => c"success",
        IPCHUB_TIMEOUT => c"no message within the timeout",
        IPCHUB_ERR_INVALID_ARGUMENT => c"invalid argument",
        IPCHUB_ERR_NOT_RUNNING => c"hub not running",
        IPCHUB_ERR_PERMISSION => c"permission denied",
        IPCHUB_ERR_CONNECT => c"cannot connect to the hub",
        IPCHUB_ERR_REFUSED => c"the hub refused the request",
        IPCHUB_ERR_BAD_CHANNEL => c"invalid channel name or pattern",
        IPCHUB_ERR_TOO_LARGE => c"message too large",
        IPCHUB_ERR_BAD_PRIORITY => c"priority above 31",
        IPCHUB_ERR_PROTOCOL => c"protocol error",
        IPCHUB_ERR_CLOSED => c"connection closed",
        IPCHUB_ERR_IO => c"system error",
        IPCHUB_ERR_TIMED_OUT => c"the hub did not answer in time",
        IPCHUB_ERR_BUSY => c"client handle in use by another thread",
        IPCHUB_ERR_INTERNAL => c"internal error",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// The library's version, e.g. "0.1.0".
#[no_mangle]
pub extern "C" fn ipchub_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
