//! The Python module `ipchub`: the Rust client library through PyO3.
//!
//! Every transport works, shared-memory channel rings included, with the
//! same code `ipchubctl` runs. Waiting calls release the GIL and look for
//! signals (Ctrl-C) every `SIGNAL_CHECK`. Type hints: `ipchub.pyi`.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipchub_client::TransportKind;
use ipchub_client::{Client, ClientError, Event, Message as RawMessage, Options, PublishOptions};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A waiting call looks for signals this often.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

create_exception!(ipchub, Error, PyException, "Any ipchub failure; `code` is the hub's error code (docs/PROTOCOL.md) when the hub refused, else None.");
create_exception!(
    ipchub,
    NotRunningError,
    Error,
    "No hub listens at the socket."
);
create_exception!(
    ipchub,
    RefusedError,
    Error,
    "The hub refused the request (see `code`)."
);
create_exception!(ipchub, ClosedError, Error, "The connection is closed.");

fn to_py(py: Python<'_>, e: ClientError) -> PyErr {
    let msg = e.to_string();
    let (err, code) = match &e {
        ClientError::NotRunning { .. } => (NotRunningError::new_err(msg), None),
        ClientError::Refused { code, .. } => (RefusedError::new_err(msg), Some(*code)),
        ClientError::Closed(_) => (ClosedError::new_err(msg), None),
        _ => (Error::new_err(msg), None),
    };
    // Setting an attribute on a fresh exception object cannot fail in
    // practice; if it did, the exception still carries its message.
    let _ = err.value(py).setattr("code", code);
    err
}

fn transport_of(name: &str) -> PyResult<TransportKind> {
    TransportKind::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown transport '{name}' (socket, pipe, fifo, mqueue, shm)"
            ))
        })
}

/// A received message.
#[pyclass(module = "ipchub", frozen, get_all)]
struct Message {
    /// The channel it was published on.
    channel: String,
    /// The payload.
    payload: Py<PyBytes>,
    /// The publisher's sequence number.
    seq: u64,
    /// The publishing client's id.
    origin: u32,
    /// Priority 0..=31 as published.
    priority: u8,
}

#[pymethods]
impl Message {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Message(channel={:?}, payload={}, priority={}, origin={}, seq={})",
            self.channel,
            self.payload
                .bind(py)
                .repr()
                .map_or_else(|_| "?".into(), |r| r.to_string()),
            self.priority,
            self.origin,
            self.seq
        )
    }
}

fn message(py: Python<'_>, m: RawMessage) -> Message {
    Message {
        channel: m.channel,
        payload: PyBytes::new(py, &m.payload).unbind(),
        seq: m.seq,
        origin: m.origin,
        priority: m.priority,
    }
}

struct Inner {
    client: Client,
    /// Messages that arrived while waiting for a confirmation.
    pending: VecDeque<RawMessage>,
    missed: u64,
}

impl Inner {
    fn keep(&mut self, ev: Event) {
        match ev {
            Event::Message(m) => self.pending.push_back(m),
            Event::Missed(n) => self.missed = self.missed.saturating_add(n),
            _ => {}
        }
    }

    /// Wait up to `slice` for the next message.
    fn next_message(&mut self, slice: Duration) -> Result<Option<RawMessage>, ClientError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(Some(m));
        }
        let deadline = Instant::now() + slice;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.next_event(Some(left))? {
                Some(Event::Message(m)) => return Ok(Some(m)),
                Some(other) => self.keep(other),
                None => return Ok(None),
            }
            if let Some(m) = self.pending.pop_front() {
                return Ok(Some(m));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Wait up to `slice` for the ACK of `seq`.
    fn ack(&mut self, seq: u64, slice: Duration) -> Result<Option<u32>, ClientError> {
        let deadline = Instant::now() + slice;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.next_event(Some(left))? {
                Some(Event::Ack { seq: s, delivered }) if s == seq => return Ok(Some(delivered)),
                Some(Event::Error { seq: s, code, text }) if s == seq => {
                    return Err(ClientError::Refused { code, text })
                }
                Some(other) => self.keep(other),
                None => return Ok(None),
            }
        }
    }
}

/// A connection to the hub. Use it as a context manager, iterate over it
/// for messages, and give it to `selectors` or `loop.add_reader` (it has a
/// `fileno()`).
#[pyclass(module = "ipchub", name = "Client")]
struct Client_ {
    inner: Mutex<Option<Inner>>,
}

impl Client_ {
    fn lock(&self) -> PyResult<MutexGuard<'_, Option<Inner>>> {
        let g = self
            .inner
            .lock()
            .map_err(|_| Error::new_err("client unusable after an internal error"))?;
        if g.is_none() {
            return Err(ClosedError::new_err("client is closed"));
        }
        Ok(g)
    }

    /// Run `step` with the GIL released, in slices, checking for signals
    /// between them, until it gives Some or `timeout` passes.
    fn wait<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        mut step: impl FnMut(&mut Inner, Duration) -> Result<Option<T>, ClientError> + Send,
    ) -> PyResult<Option<T>> {
        let deadline = match timeout {
            Some(t) if !(t >= 0.0 && t.is_finite()) => {
                return Err(PyValueError::new_err(
                    "timeout must be a number >= 0 or None",
                ))
            }
            Some(t) => Some(Instant::now() + Duration::from_secs_f64(t)),
            None => None,
        };
        loop {
            let slice = deadline.map_or(SIGNAL_CHECK, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK)
            });
            let got = py.allow_threads(|| -> PyResult<_> {
                let mut g = self.lock()?;
                let inner = g.as_mut().expect("checked by lock");
                Ok(step(inner, slice))
            })?;
            match got {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) => {}
                Err(e) => return Err(to_py(py, e)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl Client_ {
    /// Subscribe to a channel or pattern (`+` one level, `#` the rest).
    fn subscribe(&self, py: Python<'_>, pattern: &str) -> PyResult<()> {
        let r = py.allow_threads(|| -> PyResult<_> {
            let mut g = self.lock()?;
            Ok(g.as_mut().expect("checked").client.subscribe(pattern))
        })?;
        r.map_err(|e| to_py(py, e))
    }

    /// Undo a subscription of the same pattern.
    fn unsubscribe(&self, py: Python<'_>, pattern: &str) -> PyResult<()> {
        let r = py.allow_threads(|| -> PyResult<_> {
            let mut g = self.lock()?;
            Ok(g.as_mut().expect("checked").client.unsubscribe(pattern))
        })?;
        r.map_err(|e| to_py(py, e))
    }

    /// Publish `data` (bytes, or str sent as UTF-8) on `channel`. With
    /// `confirm=True` wait for the hub and return how many subscribers it
    /// was delivered to; else return None (the message leaves within about
    /// a millisecond, or at `flush()`).
    #[pyo3(signature = (channel, data, priority = 0, confirm = false))]
    fn publish(
        &self,
        py: Python<'_>,
        channel: &str,
        data: &Bound<'_, PyAny>,
        priority: u8,
        confirm: bool,
    ) -> PyResult<Option<u32>> {
        let payload: Vec<u8> = if let Ok(b) = data.downcast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(s) = data.extract::<String>() {
            s.into_bytes()
        } else {
            data.extract::<Vec<u8>>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("data must be bytes, bytearray or str")
            })?
        };
        let opts = PublishOptions {
            ack: confirm,
            priority,
        };
        let seq = {
            let mut g = self.lock()?;
            g.as_mut()
                .expect("checked")
                .client
                .publish_with(channel, &payload, opts)
                .map_err(|e| to_py(py, e))?
        };
        if !confirm {
            return Ok(None);
        }
        self.wait(py, None, |inner, slice| inner.ack(seq, slice))
    }

    /// The next message, waiting up to `timeout` seconds (None: no limit);
    /// None when none came.
    #[pyo3(signature = (timeout = None))]
    fn receive(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Message>> {
        let m = self.wait(py, timeout, |inner, slice| inner.next_message(slice))?;
        Ok(m.map(|m| message(py, m)))
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Iteration waits for each message and ends when the hub closes the
    /// connection.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Message>> {
        match self.receive(py, None) {
            Ok(m) => Ok(m),
            Err(e) if e.is_instance_of::<ClosedError>(py) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write every buffered publish now.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let r = py.allow_threads(|| -> PyResult<_> {
            let mut g = self.lock()?;
            Ok(g.as_mut().expect("checked").client.flush())
        })?;
        r.map_err(|e| to_py(py, e))
    }

    /// The descriptor to watch for input (selectors, `loop.add_reader`).
    /// When it is readable, call `receive(0)` until it returns None: only
    /// then is it armed for the next message. On mqueue and shm the hub
    /// going away does not make it readable: call `receive(0)` now and then.
    fn fileno(&self) -> PyResult<i32> {
        let g = self.lock()?;
        Ok(g.as_ref().expect("checked").client.as_raw_fd())
    }

    /// This client's id at the hub (the `origin` of its messages).
    #[getter]
    fn id(&self) -> PyResult<u32> {
        Ok(self.lock()?.as_ref().expect("checked").client.id())
    }

    /// The hub's limit on payload size in bytes.
    #[getter]
    fn max_message(&self) -> PyResult<u32> {
        Ok(self.lock()?.as_ref().expect("checked").client.max_message())
    }

    /// Messages the hub dropped for this client (drop-oldest) so far.
    #[getter]
    fn missed(&self) -> PyResult<u64> {
        Ok(self.lock()?.as_ref().expect("checked").missed)
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().map_or(true, |g| g.is_none())
    }

    /// Flush and disconnect. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken =
            py.allow_threads(|| self.inner.lock().map(|mut g| g.take()).unwrap_or_default());
        let Some(mut inner) = taken else {
            return Ok(());
        };
        let r = py.allow_threads(|| inner.client.flush());
        drop(inner);
        r.map_err(|e| to_py(py, e))
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// Connect to the hub. `transport`: "socket", "pipe", "fifo", "mqueue" or
/// "shm"; `socket`: the control socket (None: $IPCHUB_SOCKET, else the
/// user's or the system hub); `name`: shown in the hub's statistics.
#[pyfunction]
#[pyo3(signature = (transport = "shm", socket = None, name = None))]
fn connect(
    py: Python<'_>,
    transport: &str,
    socket: Option<PathBuf>,
    name: Option<String>,
) -> PyResult<Client_> {
    let opts = Options {
        socket,
        transport: transport_of(transport)?,
        name: name.unwrap_or_else(|| "python".into()),
        // Fail fast until the module maps the reconnect events.
        reconnect: ipchub_client::Reconnect::off(),
    };
    let client = py
        .allow_threads(|| Client::connect(&opts))
        .map_err(|e| to_py(py, e))?;
    Ok(Client_ {
        inner: Mutex::new(Some(Inner {
            client,
            pending: VecDeque::new(),
            missed: 0,
        })),
    })
}

/// Client library of the ipchub local publish/subscribe hub.
#[pymodule]
#[pyo3(name = "ipchub")]
fn ipchub_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_class::<Client_>()?;
    m.add_class::<Message>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("NotRunningError", py.get_type::<NotRunningError>())?;
    m.add("RefusedError", py.get_type::<RefusedError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("TRANSPORTS", TransportKind::ALL.map(|t| t.name()).to_vec())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
