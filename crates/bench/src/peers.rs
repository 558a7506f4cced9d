//! The systems ipchub talks to, measured the same way: D-Bus through a
//! dbus-daemon and MQTT through a Mosquitto broker.
//!
//! Clients are the Rust libraries ipchub already links for its own D-Bus and
//! MQTT edges, so no extra dependency and a fair fight (both are fast
//! native clients; `busctl` or `mosquitto_pub` would measure process start):
//! - D-Bus via zbus's blocking API: throughput is a stream of signals
//!   (`org.ipchub.Bench.Data`, body `ay`) matched by each subscriber;
//!   latency is a method call (`Echo(ay) → ay`) answered by the echo worker.
//!   zbus reads its socket on its own thread, a hand-off every zbus
//!   application pays too.
//! - MQTT via rumqttc's synchronous client, QoS 0 (fire and forget, like a
//!   hub publish), driven from the calling thread so no extra hand-off is
//!   measured; broker-side drops would show as lost messages.
//! - The MQTT bridge row is ipchub's own way to MQTT, end to end: a hub
//!   client publishes into an `ipchubd` whose bridge (`[[bridge.mqtt]]`,
//!   QoS 0 like the MQTT row) carries it to the same Mosquitto, where a
//!   rumqttc worker receives it; latency pings go out that way and the
//!   worker's pongs come back through the bridge's import. That hub is its
//!   own, started for the row, so the bridge's traffic stays off the hub
//!   rows'. The bridge drops the oldest spooled message when the broker
//!   falls behind rather than slow the hub, so a throughput round is a
//!   fixed count of messages the spool can hold ([`bridge_plan`]).
//! - Unless told otherwise the bench starts its own daemons (a private
//!   session `dbus-daemon`, a `mosquitto` on a free loopback port), so no
//!   other traffic shares them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{Event, Incoming, MqttOptions, Outgoing, QoS, RecvTimeoutError};
use serde::{Deserialize, Serialize};
use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type as MsgType;
use zbus::zvariant;

use super::hub_runs::{self, HubProcess};
use super::measure::{Endpoint, Limit, RunError};
use super::proc::{EndpointSpec, Role, Worker, WorkerSpec};
use super::session::{Plan, Session};
use crate::wire::TransportKind;

const OBJECT: &str = "/org/ipchub/Bench";
const IFACE: &str = "org.ipchub.Bench";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages zbus may hold for a slow reader before it drops the oldest
/// (its default, 64, would lose messages at full speed).
const DBUS_QUEUE: usize = 1 << 20;
/// Requests waiting in rumqttc's channel before `send` drives the connection.
const MQTT_CHANNEL: usize = 1024;

/// The peers, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Dbus,
    Mqtt,
    MqttBridge,
    Iceoryx2,
    Zmq,
    Nats,
}

impl PeerKind {
    pub const ALL: [PeerKind; 6] = [
        PeerKind::Dbus,
        PeerKind::Mqtt,
        PeerKind::MqttBridge,
        PeerKind::Iceoryx2,
        PeerKind::Zmq,
        PeerKind::Nats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Dbus => "dbus",
            PeerKind::Mqtt => "mqtt",
            PeerKind::MqttBridge => "mqtt-bridge",
            PeerKind::Iceoryx2 => "iceoryx2",
            PeerKind::Zmq => "zeromq",
            PeerKind::Nats => "nats",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Dbus => "D-Bus (dbus-daemon)",
            PeerKind::Mqtt => "MQTT QoS 0 (Mosquitto)",
            PeerKind::MqttBridge => "hub → bridge → Mosquitto",
            PeerKind::Iceoryx2 => "iceoryx2 (shm, polling)",
            PeerKind::Zmq => "ZeroMQ PUB/SUB ipc://",
            PeerKind::Nats => "NATS (nats-server)",
        }
    }

    pub fn from_name(s: &str) -> Option<PeerKind> {
        PeerKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

// ---------------------------------------------------------------- D-Bus --

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbusSpec {
    pub address: String,
}

/// A payload serialised as D-Bus `ay` in one copy (a plain `&[u8]` would
/// go byte by byte through serde's sequence path).
struct Bytes<'a>(&'a [u8]);

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl zvariant::Type for Bytes<'_> {
    const SIGNATURE: &'static zvariant::Signature = <&[u8] as zvariant::Type>::SIGNATURE;
}

fn dbus_error(e: zbus::Error) -> RunError {
    RunError::failed(format!("D-Bus: {e}"))
}

fn dbus_connect(address: &str) -> Result<Connection, RunError> {
    zbus::blocking::connection::Builder::address(address)
        .and_then(|b| b.max_queued(DBUS_QUEUE).build())
        .map_err(|e| RunError::unavailable(format!("cannot connect to the bus {address}: {e}")))
}

/// Signals out (throughput publisher).
struct DbusSignals {
    conn: Connection,
}

impl Endpoint for DbusSignals {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        self.conn
            .emit_signal(None::<&str>, OBJECT, IFACE, "Data", &Bytes(msg))
            .map_err(dbus_error)
    }

    fn recv(&mut self, _: Duration, _: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        Err(RunError::failed("the signal publisher receives nothing"))
    }
}

/// Signals in (sink), or method calls in and replies out (echo).
struct DbusWorker {
    conn: Connection,
    iter: MessageIterator,
    /// Calls received and not answered yet, oldest first.
    calls: VecDeque<zbus::Message>,
}

impl Endpoint for DbusWorker {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let call = self
            .calls
            .pop_front()
            .ok_or_else(|| RunError::failed("a reply without a call"))?;
        self.conn
            .reply(&call.header(), &Bytes(msg))
            .map_err(dbus_error)
    }

    /// Blocks without a timeout: a lost D-Bus message does not happen, and
    /// a dead peer ends the run through the watchdog.
    fn recv(&mut self, _: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        loop {
            let m = match self.iter.next() {
                Some(m) => m.map_err(dbus_error)?,
                None => return Err(RunError::failed("D-Bus connection closed")),
            };
            let h = m.header();
            let ours = h.interface().is_some_and(|i| i.as_str() == IFACE);
            if !ours {
                continue;
            }
            let body = m.body();
            let payload: &[u8] = body.deserialize().map_err(dbus_error)?;
            f(payload);
            if m.message_type() == MsgType::MethodCall {
                self.calls.push_back(m.clone());
            }
            return Ok(1);
        }
    }
}

/// Method calls out, replies in (latency pinger).
struct DbusCaller {
    conn: Connection,
    dest: String,
    reply: Option<zbus::Message>,
}

impl Endpoint for DbusCaller {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let r = self
            .conn
            .call_method(
                Some(self.dest.as_str()),
                OBJECT,
                Some(IFACE),
                "Echo",
                &Bytes(msg),
            )
            .map_err(dbus_error)?;
        self.reply = Some(r);
        Ok(())
    }

    /// The close marker expects no reply (the echo worker exits instead).
    fn send_marker(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let m = zbus::Message::method_call(OBJECT, "Echo")
            .and_then(|b| b.destination(self.dest.as_str()))
            .and_then(|b| b.interface(IFACE))
            .and_then(|b| b.with_flags(zbus::message::Flags::NoReplyExpected))
            .and_then(|b| b.build(&Bytes(msg)))
            .map_err(dbus_error)?;
        self.conn.send(&m).map_err(dbus_error)
    }

    fn recv(&mut self, _: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        let Some(r) = self.reply.take() else {
            return Ok(0);
        };
        let body = r.body();
        let payload: &[u8] = body.deserialize().map_err(dbus_error)?;
        f(payload);
        Ok(1)
    }
}

/// A worker's end: subscribe to the signals, or serve Echo. Ready carries
/// the unique bus name the pinger calls.
pub fn open_dbus_worker(
    spec: &DbusSpec,
    role: Role,
) -> Result<(Box<dyn Endpoint>, String), RunError> {
    let conn = dbus_connect(&spec.address)?;
    let name = conn
        .unique_name()
        .map(|n| n.to_string())
        .ok_or_else(|| RunError::failed("no unique name on the bus"))?;
    let iter = match role {
        Role::Sink => {
            let rule = zbus::MatchRule::builder()
                .msg_type(MsgType::Signal)
                .interface(IFACE)
                .and_then(|b| b.member("Data"))
                .map_err(dbus_error)?
                .build();
            MessageIterator::for_match_rule(rule, &conn, Some(DBUS_QUEUE)).map_err(dbus_error)?
        }
        Role::Echo => MessageIterator::from(&conn),
    };
    Ok((
        Box::new(DbusWorker {
            conn,
            iter,
            calls: VecDeque::new(),
        }),
        name,
    ))
}

pub fn dbus_session(
    exe: &Path,
    address: &str,
    role: Role,
    size: usize,
    plan: &Plan,
) -> Result<Session, RunError> {
    let conn = dbus_connect(address)?;
    let n = if role == Role::Sink {
        plan.subscribers as usize
    } else {
        1
    };
    let mut workers = Vec::new();
    let mut names = Vec::new();
    for i in 0..n {
        let spec = WorkerSpec {
            role,
            endpoint: EndpointSpec::Dbus(DbusSpec {
                address: address.into(),
            }),
            size,
            cpu: plan.worker_cpu(i),
        };
        workers.push(Worker::spawn(exe, &spec, &[])?);
    }
    for w in &mut workers {
        names.push(w.ready(READY_TIMEOUT)?);
    }
    let ep: Box<dyn Endpoint> = match role {
        Role::Sink => Box::new(DbusSignals { conn }),
        Role::Echo => Box::new(DbusCaller {
            conn,
            dest: names.pop().expect("one echo worker"),
            reply: None,
        }),
    };
    Ok(Session::new(ep, workers))
}

/// A private `dbus-daemon --session`, killed on drop.
pub struct DbusDaemon {
    child: Child,
    pub address: String,
}

impl DbusDaemon {
    pub fn start() -> Result<DbusDaemon, RunError> {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--print-address", "--nofork"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                RunError::unavailable(format!(
                    "cannot start dbus-daemon ({e}); install dbus or pass --dbus-address"
                ))
            })?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut d = DbusDaemon {
            child,
            address: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if !line.trim().is_empty() => {
                d.address = line.trim().to_string();
                Ok(d)
            }
            _ => Err(RunError::unavailable(
                "dbus-daemon printed no address (is /usr/share/dbus-1/session.conf there?)",
            )),
        }
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------------- MQTT --

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MqttSpec {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub subscribe: Option<String>,
    pub publish: Option<String>,
}

/// A rumqttc client driven from this thread.
struct MqttEndpoint {
    client: rumqttc::Client,
    conn: rumqttc::Connection,
    publish: Option<String>,
    inbox: VecDeque<bytes::Bytes>,
    /// Publishes handed to rumqttc / written by its event loop.
    queued: u64,
    written: u64,
    broker: String,
}

impl MqttEndpoint {
    fn connect(spec: &MqttSpec, size: usize) -> Result<MqttEndpoint, RunError> {
        let mut opts = MqttOptions::new(spec.client_id.clone(), spec.host.clone(), spec.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        // Room for the payload plus topic and header.
        opts.set_max_packet_size(size + 4096, size + 4096);
        let (client, conn) = rumqttc::Client::new(opts, MQTT_CHANNEL);
        let mut ep = MqttEndpoint {
            client,
            conn,
            publish: spec.publish.clone(),
            inbox: VecDeque::new(),
            queued: 0,
            written: 0,
            broker: format!("{}:{}", spec.host, spec.port),
        };
        ep.wait_for("the broker's CONNACK", |i| {
            matches!(i, Incoming::ConnAck(_))
        })
        .map_err(|e| {
            RunError::unavailable(format!(
                "cannot reach the MQTT broker at {}: {e}",
                ep.broker
            ))
        })?;
        if let Some(topic) = &spec.subscribe {
            ep.client
                .subscribe(topic.clone(), QoS::AtMostOnce)
                .map_err(|e| RunError::failed(format!("MQTT subscribe: {e}")))?;
            ep.wait_for("the SUBACK", |i| matches!(i, Incoming::SubAck(_)))?;
        }
        Ok(ep)
    }

    /// Drive the connection until an incoming packet satisfies `want`.
    fn wait_for(&mut self, what: &str, want: fn(&Incoming) -> bool) -> Result<(), RunError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RunError::failed(format!("no {what} within 10 s")));
            }
            match self.conn.recv_timeout(left) {
                Ok(Ok(Event::Incoming(i))) if want(&i) => return Ok(()),
                Ok(Ok(ev)) => self.note(ev),
                Ok(Err(e)) => return Err(RunError::failed(e.to_string())),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(RunError::failed("MQTT event loop gone"))
                }
            }
        }
    }

    fn note(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Incoming::Publish(p)) => self.inbox.push_back(p.payload),
            Event::Outgoing(Outgoing::Publish(_)) => self.written += 1,
            _ => {}
        }
    }

    /// One turn of rumqttc's event loop (reads, writes, keep-alive).
    fn pump(&mut self, timeout: Duration) -> Result<bool, RunError> {
        match self.conn.recv_timeout(timeout) {
            Ok(Ok(ev)) => {
                self.note(ev);
                Ok(true)
            }
            Ok(Err(e)) => Err(RunError::failed(format!(
                "MQTT connection to {}: {e}",
                self.broker
            ))),
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => Err(RunError::failed("MQTT event loop gone")),
        }
    }
}

impl Endpoint for MqttEndpoint {
    fn send(&mut self, msg: &[u8]) -> Result<(), RunError> {
        let topic = self.publish.clone().expect("publishing endpoint");
        loop {
            match self
                .client
                .try_publish(topic.as_str(), QoS::AtMostOnce, false, msg.to_vec())
            {
                Ok(()) => {
                    self.queued += 1;
                    return Ok(());
                }
                // The channel is full: let the event loop write some out.
                Err(rumqttc::ClientError::TryRequest(_)) => {
                    self.pump(Duration::from_millis(100))?;
                }
                Err(e) => return Err(RunError::failed(format!("MQTT publish: {e}"))),
            }
        }
    }

    fn flush(&mut self) -> Result<(), RunError> {
        while self.written < self.queued {
            self.pump(Duration::from_millis(100))?;
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> Result<usize, RunError> {
        let deadline = Instant::now() + timeout;
        while self.inbox.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            self.pump(left)?;
        }
        let n = self.inbox.len();
        for p in self.inbox.drain(..) {
            f(&p);
        }
        Ok(n)
    }
}

pub fn open_mqtt_worker(
    spec: &MqttSpec,
    size: usize,
) -> Result<(Box<dyn Endpoint>, String), RunError> {
    Ok((Box::new(MqttEndpoint::connect(spec, size)?), String::new()))
}

/// Where the broker is: `mqtt://host[:port]` or `host[:port]`.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), RunError> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    if rest.contains("://") {
        return Err(RunError::unavailable(format!(
            "{url}: only mqtt:// (plain TCP) is supported"
        )));
    }
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) => p
            .parse()
            .map(|p| (h.to_string(), p))
            .map_err(|_| RunError::unavailable(format!("{url}: bad port"))),
        None => Ok((rest.to_string(), 1883)),
    }
}

/// Fail early, with the reason, when nothing listens there.
pub fn check_reachable(host: &str, port: u16) -> Result<(), RunError> {
    let unreachable = |e: String| {
        RunError::unavailable(format!(
            "cannot reach the MQTT broker at {host}:{port}: {e}"
        ))
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| unreachable(e.to_string()))
}

pub fn mqtt_session(
    exe: &Path,
    broker: &(String, u16),
    role: Role,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let base = format!("ipchub-bench/{}/{tag}", std::process::id());
    let id = |who: &str| format!("ipchub-bench-{}-{tag}-{who}", std::process::id());
    let (ours, theirs) = match role {
        Role::Sink => (
            MqttSpec {
                host: broker.0.clone(),
                port: broker.1,
                client_id: id("pub"),
                subscribe: None,
                publish: Some(format!("{base}/data")),
            },
            MqttSpec {
                host: broker.0.clone(),
                port: broker.1,
                client_id: String::new(),
                subscribe: Some(format!("{base}/data")),
                publish: None,
            },
        ),
        Role::Echo => (
            MqttSpec {
                host: broker.0.clone(),
                port: broker.1,
                client_id: id("ping"),
                subscribe: Some(format!("{base}/pong")),
                publish: Some(format!("{base}/ping")),
            },
            MqttSpec {
                host: broker.0.clone(),
                port: broker.1,
                client_id: String::new(),
                subscribe: Some(format!("{base}/ping")),
                publish: Some(format!("{base}/pong")),
            },
        ),
    };
    let ep = MqttEndpoint::connect(&ours, size)?;
    let workers = mqtt_workers(exe, &theirs, role, size, plan, tag)?;
    Ok(Session::new(Box::new(ep), workers))
}

/// The MQTT workers of a session, each with its own client id, ready.
fn mqtt_workers(
    exe: &Path,
    theirs: &MqttSpec,
    role: Role,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Vec<Worker>, RunError> {
    let n = if role == Role::Sink {
        plan.subscribers as usize
    } else {
        1
    };
    let mut workers = Vec::new();
    for i in 0..n {
        let mut spec = theirs.clone();
        spec.client_id = format!("ipchub-bench-{}-{tag}-w{i}", std::process::id());
        let ws = WorkerSpec {
            role,
            endpoint: EndpointSpec::Mqtt(spec),
            size,
            cpu: plan.worker_cpu(i),
        };
        workers.push(Worker::spawn(exe, &ws, &[])?);
    }
    for w in &mut workers {
        w.ready(READY_TIMEOUT)?;
    }
    Ok(workers)
}

/// Most messages a bridge throughput round sends, and most bytes: the
/// bridge's spool holds what the broker has not taken yet.
const BRIDGE_ROUND: u64 = 20_000;
const BRIDGE_ROUND_BYTES: u64 = 64 << 20;
const BRIDGE_NAME: &str = "bench";

/// The bridge row's throughput plan: rounds of a fixed count of messages
/// (--messages, or as many as 20 000 messages and 64 MiB allow), so that
/// the bridge's spool never has to drop and the figure is what it carries
/// end to end, not how fast the hub fills its spool.
pub fn bridge_plan(plan: &Plan, size: usize) -> Plan {
    let cap = (BRIDGE_ROUND_BYTES / size.max(1) as u64).clamp(16, BRIDGE_ROUND);
    let n = match plan.limit {
        Limit::Messages(n) => n.min(cap),
        Limit::Time(_) => cap,
    };
    Plan {
        limit: Limit::Messages(n),
        warmup: Limit::Messages(n.div_ceil(4).max(1)),
        ..plan.clone()
    }
}

/// An `ipchubd` (its files in `dir`) whose MQTT bridge carries
/// `bench/+/+/data` and `bench/+/+/ping` to the broker and `bench/+/+/pong`
/// back, at QoS 0; returned once the bridge reports both sides connected.
pub fn start_bridge_hub(
    binary: &Path,
    dir: &Path,
    broker: &(String, u16),
) -> Result<HubProcess, RunError> {
    std::fs::create_dir_all(dir)?;
    // Twice a round in messages and bytes (a slow broker, a warm-up round
    // just before): nothing is dropped for lack of room.
    let extra = format!(
        "[[bridge.mqtt]]\nname = \"{BRIDGE_NAME}\"\nenabled = true\nurl = \"mqtt://{}:{}\"\n\
         client_id = \"ipchub-bench-{}-bridge\"\nspool_max_messages = {}\nspool_max_bytes = {}\n\
         [[bridge.mqtt.export]]\npattern = \"bench/+/+/data\"\nqos = 0\n\
         [[bridge.mqtt.export]]\npattern = \"bench/+/+/ping\"\nqos = 0\n\
         [[bridge.mqtt.import]]\nfilter = \"bench/+/+/pong\"\nqos = 0\n",
        broker.0,
        broker.1,
        std::process::id(),
        2 * BRIDGE_ROUND,
        2 * (BRIDGE_ROUND_BYTES + BRIDGE_ROUND * 4096),
    );
    let hub = HubProcess::start_with(binary, dir, &extra)?;
    let mut c = crate::client::Client::connect(&crate::client::Options {
        socket: Some(hub.socket.clone()),
        transport: TransportKind::Socket,
        name: "bench-bridge-check".into(),
        reconnect: crate::client::Reconnect::off(),
    })
    .map_err(|e| RunError::failed(format!("the bridge's hub: {e}")))?;
    let component = format!("bridge.mqtt.{BRIDGE_NAME}");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let stats = c
            .stats()
            .map_err(|e| RunError::failed(format!("the bridge's hub: {e}")))?;
        let st = stats.components.get(&component);
        let is = |k: &str| st.and_then(|s| s.get(k)).is_some_and(|v| v == "true");
        if is("connected") && is("hub_connected") && is("subscribed") {
            return Ok(hub);
        }
        if Instant::now() > deadline {
            let why = st
                .and_then(|s| s.get("last_error"))
                .cloned()
                .unwrap_or_default();
            return Err(RunError::failed(format!(
                "the bridge did not connect to {}:{} within {READY_TIMEOUT:?}: {why}",
                broker.0, broker.1
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Through the bridge: a hub client here, MQTT workers at the broker.
/// Throughput: hub → bridge → broker → worker(s). Latency: ping out that
/// way, pong back broker → bridge → hub (the bridge crossed twice).
pub fn bridge_session(
    exe: &Path,
    socket: &Path,
    broker: &(String, u16),
    role: Role,
    size: usize,
    plan: &Plan,
    tag: u64,
) -> Result<Session, RunError> {
    let base = format!("bench/{}/{tag}", std::process::id());
    let worker = |subscribe: String, publish: Option<String>| MqttSpec {
        host: broker.0.clone(),
        port: broker.1,
        client_id: String::new(),
        subscribe: Some(subscribe),
        publish,
    };
    let (ep, theirs) = match role {
        Role::Sink => (
            hub_runs::endpoint(socket, "bench-publisher", format!("{base}/data"), None)?,
            worker(format!("{base}/data"), None),
        ),
        Role::Echo => {
            let pong = format!("{base}/pong");
            (
                hub_runs::endpoint(socket, "bench-pinger", format!("{base}/ping"), Some(&pong))?,
                worker(format!("{base}/ping"), Some(pong)),
            )
        }
    };
    let workers = mqtt_workers(exe, &theirs, role, size, plan, tag)?;
    Ok(Session::new(ep, workers))
}

/// A `mosquitto` on a free loopback port, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Result<Mosquitto, RunError> {
        let binary = find_program("mosquitto").ok_or_else(|| {
            RunError::unavailable(
                "mosquitto not found (apt-get install mosquitto, or pass --mqtt-url)",
            )
        })?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.join("mosquitto.conf");
        // `user root` keeps a root-started broker from switching to the
        // mosquitto user (ignored when not root); nothing is persisted.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
            ),
        )?;
        let log = dir.join("mosquitto.log");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| {
                RunError::unavailable(format!("cannot start {}: {e}", binary.display()))
            })?;
        let mut m = Mosquitto { child, port };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = m.child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(RunError::unavailable(format!(
                    "mosquitto exited at start ({st}): {}",
                    text.trim()
                )));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(RunError::unavailable(format!(
                    "mosquitto never listened on 127.0.0.1:{port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(m)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program on PATH, or in the sbin directories a non-root PATH lacks.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
