//! The MQTT bridge: hub channels to and from an MQTT broker, over rumqttc.
//!
//! Three threads, none of which touches hub state:
//! - the hub side ([`HubSide`]): one ordinary client connection that
//!   subscribes to the export patterns and publishes imports;
//! - the MQTT thread: owns the rumqttc `Connection` and iterates it. That
//!   runs rumqttc's own current-thread tokio runtime inside this thread and
//!   nowhere else (it must never be nested in another runtime);
//! - the status thread: reports to the hub with `ControlOp::SetStatus` once
//!   a second, and at once when either connection comes or goes.
//!
//! MQTT 5 is used for its `no_local` subscription option: the broker does
//! not send the bridge what the bridge itself published, so an export never
//! comes back as an import however the filters overlap (3.1.1 has no such
//! option). Together with the hub-side origin check, no message loops.
//!
//! Retained values pass both ways. The import subscriptions ask for
//! "retain as published", so a live retained MQTT publish keeps its flag
//! (an empty one clears, as in MQTT) and becomes the channel's retained
//! value through `publish_retained`; a retained value the hub replays to
//! the bridge's subscription, and every message of a channel configured
//! `retain = true`, goes out with the retain flag (per rule: `retain`).
//! The bridge subscribes with `retain_as_published` (SUBSCRIBE flag
//! RETAIN_AS_PUBLISHED), so a live retained publish on any channel reaches
//! it marked and leaves retained too. What each side last set on the other is remembered
//! ([`RetainedLedgers`], kept across a restart on reload): the broker replays retained values on every
//! SUBSCRIBE, no-local or not, and the hub on every subscription, so
//! those values come back and are recognised instead of bouncing.
//!
//! An export goes hub → hub side → [`Spool::push`] → handed to rumqttc under
//! the spool lock (by the hub side when it arrives, or by the MQTT thread
//! when the window frees up) → written → confirmed by the broker. rumqttc
//! neither restores subscriptions nor keeps unacknowledged publishes over a
//! clean reconnect, so the MQTT thread subscribes again on every ConnAck and
//! the spool sends again what was not confirmed. QoS 0 is at most once,
//! QoS 1 and 2 at least once across broker restarts within the spool bounds.
//!
//! Each `[[bridge.mqtt]]` block is one such set of threads with its own
//! spool, backoff and connection, so one broker's outage never delays
//! another's traffic. A bridge stops (for a reload) through its [`Stop`]:
//! the threads notice it wherever they sleep, say goodbye to the broker and
//! remove the bridge's entry from the hub's statistics.
//!
//! State is visible three ways: the hub's statistics (`bridge.mqtt[.<name>]`),
//! the local channel `ipchub/bridge/<name>/state` (`connected`, or
//! `disconnected: <reason>`), and with `state_topic` a retained broker topic
//! whose will message says `disconnected` when the broker loses the bridge.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAckReason, PubRecReason, Publish, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::Error as MqttError;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{
    Client as MqttClient, Connection, ConnectionError, Event, MqttOptions, StateError,
};
use rumqttc::Outgoing;

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::{TlsConfiguration, Transport};

use super::hub_side::{import_queue, HubCounters, HubSide, Import, ImportSender, RetainedLedgers};
use super::rules::Rules;
use super::spool::Spool;
use super::{Backoff, Stop};
use crate::client::Options;
use crate::config::MqttBridgeConfig;
use crate::daemon::control::{ControlError, ControlHandle};
use crate::hub::{ControlOp, TransportKind};

/// The name of the unnamed (`[bridge.mqtt]` table) bridge in logs and in
/// the hub's `components` statistics; a named one is `bridge.mqtt.<name>`.
pub const COMPONENT: &str = "bridge.mqtt";

/// The bridge's name in logs, statistics and as the hub client's name.
pub fn component(cfg: &MqttBridgeConfig) -> String {
    if cfg.name.is_empty() {
        COMPONENT.to_string()
    } else {
        format!("{COMPONENT}.{}", cfg.name)
    }
}

/// The local channel carrying the bridge's state. Channel names cannot
/// start with `$` (src/wire/channel.rs), hence `ipchub/` rather than the
/// `$ipchub/` an MQTT user might expect.
pub fn state_channel(cfg: &MqttBridgeConfig) -> String {
    format!("ipchub/bridge/{}/state", cfg.bridge_name())
}
/// Most messages handed to rumqttc and not yet confirmed. Beyond what the
/// broker lets fly at once (its receive maximum, 20 for Mosquitto) they wait
/// in rumqttc's channel, which is sized to never refuse one.
const WINDOW: usize = 100;
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Room in MQTT packets around the payload: topic, properties, header.
const PACKET_OVERHEAD: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("url: {0}")]
    Url(String),
    #[error("cannot start the bridge: {0}")]
    Io(#[from] std::io::Error),
}

/// State both the hub side and the MQTT thread touch.
struct Shared {
    spool: Mutex<Spool>,
    /// Cloneable sender into rumqttc's request channel.
    mqtt: MqttClient,
    url: String,
    component: String,
    stop: Arc<Stop>,
    state_topic: Option<String>,
    /// The broker connection is up (ConnAck seen, not lost since).
    up: AtomicBool,
    /// Imported messages the broker marked retained.
    received_retained: AtomicU64,
    /// The retained values this bridge set on either side.
    retained: Arc<RetainedLedgers>,
    /// Retained values the broker replayed that the bridge had set there.
    retained_echoes: AtomicU64,
    /// Messages received from the broker.
    received: AtomicU64,
    /// Received but not imported: no valid channel, or the import queue was full.
    import_dropped: AtomicU64,
    /// Why the latest topic could not be imported (it names the topic,
    /// escaped), for the rate-limited drop warning.
    last_bad_import: Mutex<Option<String>>,
    reconnects: AtomicU64,
    /// The broker confirmed every import subscription on this connection.
    subscribed: AtomicBool,
    last_error: Mutex<String>,
}

impl Shared {
    fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves plain counters and queues,
        // still consistent enough to carry on.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Give rumqttc as many waiting messages as the window allows. Called with
/// the spool locked, so the order in rumqttc's channel is the spool order.
fn hand_off(spool: &mut Spool, mqtt: &MqttClient) {
    while let Some(m) = spool.next_to_hand() {
        let r = mqtt.try_publish(m.topic.clone(), qos(m.qos), m.retain, m.payload.clone());
        if let Err(e) = r {
            tracing::debug!(error = %e, "rumqttc refused a publish; it stays spooled");
            spool.unhand_last();
            break;
        }
    }
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// `ipchubd-<host name>` (and `-<name>` for a named bridge, so two bridges
/// to one broker do not take over each other's session) unless the config
/// names one.
fn client_id(cfg: &MqttBridgeConfig) -> String {
    if !cfg.client_id.is_empty() {
        return cfg.client_id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let base = match host.trim() {
        "" => "ipchubd".to_string(),
        h => format!("ipchubd-{h}"),
    };
    if cfg.name.is_empty() {
        base
    } else {
        format!("{base}-{}", cfg.name)
    }
}

/// A started bridge: its threads, and how to stop them.
pub struct Running {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn component(&self) -> &str {
        &self.shared.component
    }

    /// Stop the threads and wait for them (bounded: a connection attempt
    /// in progress may take rumqttc's connect timeout to give up).
    pub fn stop(self) {
        if self.shared.up.load(Ordering::Relaxed) {
            if let Some(topic) = &self.shared.state_topic {
                // A clean DISCONNECT discards the will: say it ourselves.
                let mut spool = self.shared.spool();
                spool.push(topic.clone(), Bytes::from_static(b"disconnected"), 1, true);
                hand_off(&mut spool, &self.shared.mqtt);
            }
        }
        self.shared.stop.set();
        // Wakes the MQTT thread if it waits for the broker's next packet.
        let _ = self.shared.mqtt.try_disconnect();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        for t in self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(component = %self.shared.component, "a bridge thread did not stop in time; left behind");
            }
        }
    }
}

/// Start one bridge's threads; they run until [`Running::stop`].
pub fn start(
    m: &MqttBridgeConfig,
    max_message_size: u32,
    retain_rules: &[(String, bool)],
    socket: &Path,
    control: ControlHandle,
) -> Result<Running, StartError> {
    let (host, port, tls) = m.broker_address().map_err(StartError::Url)?;
    let component = component(m);
    let rules = Rules::new(m).with_retained_channels(retain_rules);
    let mut opts = MqttOptions::new(client_id(m), host.clone(), port);
    opts.set_keep_alive(Duration::from_secs(m.keep_alive_secs))
        .set_clean_start(m.clean_start)
        .set_max_packet_size(Some(max_message_size.saturating_add(PACKET_OVERHEAD)))
        .set_outgoing_inflight_upper_limit(WINDOW as u16);
    if !m.clean_start {
        opts.set_session_expiry_interval(Some(m.session_expiry_secs));
    }
    if !m.state_topic.is_empty() {
        opts.set_last_will(LastWill::new(
            m.state_topic.clone(),
            "disconnected",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    if let Some(user) = &m.username {
        opts.set_credentials(user, m.password.clone().unwrap_or_default());
    }
    let filters: Vec<Filter> = rules
        .import_filters()
        .map(|(f, q)| {
            let mut filter = Filter::new(f, qos(q));
            filter.nolocal = true;
            // Retain as published: a live retained publish keeps its flag.
            filter.preserve_retain = true;
            filter
        })
        .collect();
    // Room for the window, one SUBSCRIBE, the state message and a DISCONNECT.
    let (mqtt, connection) = MqttClient::new(opts, WINDOW + 6);

    let stop = Arc::new(Stop::new()?);
    let shared = Arc::new(Shared {
        spool: Mutex::new(Spool::new(m.spool_max_messages, m.spool_max_bytes, WINDOW)),
        mqtt,
        url: m.url.clone(),
        component: component.clone(),
        stop: stop.clone(),
        state_topic: (!m.state_topic.is_empty()).then(|| m.state_topic.clone()),
        up: AtomicBool::new(false),
        received_retained: AtomicU64::new(0),
        retained: RetainedLedgers::of(m.bridge_name()),
        retained_echoes: AtomicU64::new(0),
        received: AtomicU64::new(0),
        import_dropped: AtomicU64::new(0),
        last_bad_import: Mutex::new(None),
        reconnects: AtomicU64::new(0),
        subscribed: AtomicBool::new(false),
        last_error: Mutex::new(String::new()),
    });
    let counters = Arc::new(HubCounters::default());
    let (import_tx, import_rx) = import_queue(m.spool_max_messages, m.spool_max_bytes)?;
    let (notify, notified) = mpsc::sync_channel::<()>(1);
    let backoff = Backoff::new(
        Duration::from_millis(m.reconnect_min_ms),
        Duration::from_millis(m.reconnect_max_ms),
    );

    let mqtt_side = MqttSide {
        conn: connection,
        shared: shared.clone(),
        rules: rules.clone(),
        filters,
        imports: import_tx,
        notify: notify.clone(),
        backoff: backoff.clone(),
        tls: tls.then(|| (m.clone(), host.clone())),
        state_channel: state_channel(m),
        state_topic: m.state_topic.clone(),
        connected: false,
        ever_connected: false,
        last_logged: String::new(),
    };
    let mut threads = Vec::new();
    let short = m.bridge_name().chars().take(6).collect::<String>();
    threads.push(crate::supervise::spawn(
        format!("mqtt-{short}"),
        control.on_panic(),
        move || mqtt_side.run(),
    )?);

    let export_shared = shared.clone();
    let hub_notify = notify;
    let greeting_shared = shared.clone();
    let greeting_channel = state_channel(m);
    let hub_side = HubSide {
        component: component.clone(),
        options: Options {
            socket: Some(socket.to_path_buf()),
            transport: TransportKind::Socket,
            name: component.clone(),
            // HubSide reconnects itself (and republishes its state).
            reconnect: crate::client::Reconnect::off(),
        },
        patterns: rules.export_patterns(),
        state_channel: state_channel(m),
        export: move |msg: crate::client::Message| {
            let Some(out) = rules.export(&msg.channel, msg.retained) else {
                return;
            };
            if out.retain {
                export_shared
                    .retained
                    .exported()
                    .note(&out.topic, &msg.payload);
            }
            let mut spool = export_shared.spool();
            spool.push(out.topic, Bytes::from(msg.payload), out.qos, out.retain);
            hand_off(&mut spool, &export_shared.mqtt);
        },
        imports: import_rx,
        counters: counters.clone(),
        on_change: Box::new(move || {
            let _ = hub_notify.try_send(());
        }),
        // Whoever subscribes to the state channel after a hub restart
        // learns the current state at once.
        greeting: Box::new(move || Import {
            channel: greeting_channel.clone(),
            payload: Bytes::from(state_text(&greeting_shared)),
            retain: false,
            kept: false,
            state: true,
        }),
        backoff,
        stop: stop.clone(),
        retained: shared.retained.clone(),
    };
    threads.push(crate::supervise::spawn(
        format!("mqtt-{short}-hub"),
        control.on_panic(),
        move || hub_side.run(),
    )?);

    let stat_shared = shared.clone();
    threads.push(crate::supervise::spawn(
        format!("mqtt-{short}-st"),
        control.on_panic(),
        move || report_status(&stat_shared, &counters, &control, notified),
    )?);
    tracing::info!(component = %component, broker = %m.url, "MQTT bridge started");
    Ok(Running { shared, threads })
}

/// `connected`, or `disconnected: <last error>`.
fn state_text(shared: &Shared) -> String {
    if shared.up.load(Ordering::Relaxed) {
        "connected".to_string()
    } else {
        let e = shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if e.is_empty() {
            "disconnected: not connected yet".to_string()
        } else {
            format!("disconnected: {e}")
        }
    }
}

/// The MQTT thread's state.
struct MqttSide {
    conn: Connection,
    shared: Arc<Shared>,
    rules: Rules,
    filters: Vec<Filter>,
    imports: ImportSender,
    notify: SyncSender<()>,
    backoff: Backoff,
    /// For mqtts://: the settings to build the TLS configuration from
    /// before every attempt, and the broker's host name.
    tls: Option<(MqttBridgeConfig, String)>,
    state_channel: String,
    state_topic: String,
    connected: bool,
    ever_connected: bool,
    /// The last failure logged since the last connection: a repeat of the
    /// same failure is not logged again, except TLS failures (every attempt).
    last_logged: String,
}

impl MqttSide {
    fn run(mut self) {
        loop {
            if self.shared.stop.is_set() {
                break;
            }
            if !self.connected && !self.prepare_tls() {
                if self.shared.stop.wait(self.backoff.next_delay()) {
                    break;
                }
                continue;
            }
            // `recv` fails only once every sender is gone, and `Shared` holds one.
            let Ok(ev) = self.conn.recv() else { break };
            match ev {
                Ok(Event::Outgoing(Outgoing::Disconnect)) if self.shared.stop.is_set() => break,
                Ok(ev) => self.on_event(ev),
                Err(_) if self.shared.stop.is_set() => break,
                Err(e) => self.on_error(e),
            }
        }
        self.shared.up.store(false, Ordering::Relaxed);
        tracing::info!(component = %self.shared.component, "MQTT bridge stopped");
    }

    /// Build the TLS configuration for the next attempt; false (logged,
    /// recorded as the last error) when it cannot be built.
    fn prepare_tls(&mut self) -> bool {
        let Some((cfg, _)) = &self.tls else {
            return true;
        };
        match super::tls::client_config(cfg) {
            Ok(c) => {
                self.conn
                    .eventloop
                    .options
                    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(c)));
                true
            }
            Err(e) => {
                let text = e.to_string();
                self.set_last_error(&text);
                tracing::error!(component = %self.shared.component, broker = %self.shared.url,
                    error = %text, "cannot set up TLS for the MQTT broker; retrying");
                false
            }
        }
    }

    fn set_last_error(&self, text: &str) {
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = text.to_string();
    }

    /// Tell local subscribers of the state channel.
    fn publish_state(&self) {
        let _ = self.imports.send(Import {
            channel: self.state_channel.clone(),
            payload: Bytes::from(state_text(&self.shared)),
            retain: false,
            kept: false,
            state: true,
        });
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(a)) => self.on_connected(a.session_present),
            Event::Incoming(Packet::Publish(p)) => self.import(p),
            Event::Incoming(Packet::PubAck(a)) => {
                let ok = matches!(
                    a.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                );
                self.confirmed(a.pkid, ok, &format!("{:?}", a.reason));
            }
            // For QoS 2 the broker owns the message from PUBREC on; waiting
            // for PUBCOMP would only hold the window longer.
            Event::Incoming(Packet::PubRec(r)) => {
                let ok = matches!(
                    r.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                self.confirmed(r.pkid, ok, &format!("{:?}", r.reason));
            }
            Event::Incoming(Packet::SubAck(s)) => {
                let mut all = true;
                for (code, filter) in s.return_codes.iter().zip(&self.filters) {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        all = false;
                        tracing::warn!(component = %self.shared.component, filter = %filter.path, reason = ?code,
                            "broker refused the import subscription");
                    }
                }
                self.shared.subscribed.store(all, Ordering::Relaxed);
                let _ = self.notify.try_send(());
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut spool = self.shared.spool();
                spool.written(pkid);
                hand_off(&mut spool, &self.shared.mqtt);
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        self.backoff.reset();
        // rumqttc does not restore subscriptions: ask again on every ConnAck
        // (with a persistent session the broker kept them; asking again is
        // harmless and covers a session that expired meanwhile).
        self.shared
            .subscribed
            .store(self.filters.is_empty(), Ordering::Relaxed);
        if !self.filters.is_empty() {
            if let Err(e) = self.shared.mqtt.try_subscribe_many(self.filters.clone()) {
                tracing::error!(component = %self.shared.component, error = %e, "cannot queue the import subscriptions");
            }
        }
        let resent = {
            let mut spool = self.shared.spool();
            spool.set_connected(true);
            let n = spool.len();
            if !self.state_topic.is_empty() {
                // Replaces the will the broker may have published.
                spool.push(
                    self.state_topic.clone(),
                    Bytes::from_static(b"connected"),
                    1,
                    true,
                );
            }
            hand_off(&mut spool, &self.shared.mqtt);
            n
        };
        if self.ever_connected {
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.connected = true;
        self.last_logged.clear();
        self.shared.up.store(true, Ordering::Relaxed);
        self.publish_state();
        let _ = self.notify.try_send(());
        tracing::info!(component = %self.shared.component, broker = %self.shared.url, spooled = resent,
            session_present, "connected to the MQTT broker");
    }

    fn confirmed(&mut self, pkid: u16, ok: bool, reason: &str) {
        let mut spool = self.shared.spool();
        if spool.confirmed(pkid, ok) && !ok {
            tracing::warn!(
                component = %self.shared.component,
                pkid,
                reason,
                "broker refused an exported message"
            );
        }
        hand_off(&mut spool, &self.shared.mqtt);
    }

    fn import(&mut self, p: Publish) {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        if p.retain {
            self.shared
                .received_retained
                .fetch_add(1, Ordering::Relaxed);
        }
        if p.retain {
            if let Ok(topic) = std::str::from_utf8(&p.topic) {
                let echo = self.shared.retained.exported().is_echo(topic, &p.payload);
                if echo {
                    // The broker replays what the bridge exported retained.
                    self.shared.retained_echoes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let channel = match std::str::from_utf8(&p.topic) {
            Ok(t) => self
                .rules
                .import(t, p.retain)
                .map_err(|e| printable(&e.to_string())),
            Err(_) => Err(format!(
                "topic {:?} is not UTF-8",
                String::from_utf8_lossy(&p.topic[..p.topic.len().min(200)])
            )),
        };
        let channel = match channel {
            Ok(c) => Some(c),
            Err(why) => {
                *self
                    .shared
                    .last_bad_import
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(why);
                None
            }
        };
        let queued = match channel {
            Some((channel, retain)) => self.imports.send(Import {
                kept: retain || self.rules.always_retained(&channel),
                channel,
                payload: p.payload,
                retain,
                state: false,
            }),
            None => false,
        };
        if !queued {
            self.shared.import_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The connection failed or could not be made: take back everything
    /// rumqttc held, then wait before the next attempt.
    fn on_error(&mut self, e: ConnectionError) {
        // Events rumqttc produced before the failure are still ours: a
        // PUBACK among them confirms a message that need not be sent again.
        let leftovers: Vec<Event> = self.conn.eventloop.state.events.drain(..).collect();
        for ev in leftovers {
            self.on_event(ev);
        }
        let requeued = {
            let mut spool = self.shared.spool();
            // Under the spool lock nobody hands over more, so this sees all
            // of it: rumqttc's copies go, the spool's wait to be sent again.
            self.conn.eventloop.clean();
            self.conn.eventloop.pending.clear();
            spool.set_connected(false)
        };
        self.shared.subscribed.store(false, Ordering::Relaxed);
        // Under TLS 1.3 the broker's verdict on our certificate arrives
        // after the handshake, as an I/O error on the first read, which
        // rumqttc wraps without a `source()`: dig it out.
        let tls_late = match &e {
            ConnectionError::MqttState(StateError::Deserialization(MqttError::Io(io)))
            | ConnectionError::MqttState(StateError::Io(io)) => Some(io),
            _ => None,
        }
        .filter(|io| {
            io.get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        });
        let text = match (&self.tls, tls_late) {
            (Some((_, host)), Some(io)) => super::tls::describe(io, host),
            (Some((_, host)), None) => super::tls::describe(&e, host),
            (None, _) => e.to_string(),
        };
        self.set_last_error(&text);
        self.shared.up.store(false, Ordering::Relaxed);
        let url = &self.shared.url;
        let component = &self.shared.component;
        let is_tls = matches!(e, ConnectionError::Tls(_)) || tls_late.is_some();
        if self.connected {
            self.connected = false;
            self.publish_state();
            let _ = self.notify.try_send(());
            tracing::warn!(%component, broker = %url, error = %text, requeued,
                "lost the MQTT broker; spooling and reconnecting");
        } else if is_tls || self.last_logged != text {
            tracing::warn!(%component, broker = %url, error = %text,
                "cannot reach the MQTT broker; spooling and retrying");
            if !self.ever_connected && self.last_logged.is_empty() {
                self.publish_state();
            }
        }
        self.last_logged = text;
        self.shared.stop.wait(self.backoff.next_delay());
    }
}

/// `s` for a log line: control characters escaped (a topic comes from the
/// broker, so from anyone who may publish there), at most 300 characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(300)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Report the bridge's state to the hub once a second and on every change
/// of connection, and log drops (at most once a second, with counts).
fn report_status(
    shared: &Shared,
    hub: &HubCounters,
    control: &ControlHandle,
    notified: mpsc::Receiver<()>,
) {
    let mut logged_drops = 0;
    loop {
        match notified.recv_timeout(STATUS_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if shared.stop.is_set() {
            // An empty status removes the bridge from the statistics.
            let op = ControlOp::SetStatus {
                component: shared.component.clone(),
                status: BTreeMap::new(),
            };
            let _ = control.call(op, Duration::from_secs(5));
            return;
        }
        let status = status(shared, hub);
        let drops: u64 = status["dropped"].parse().unwrap_or(0);
        if drops > logged_drops {
            // The latest topic that could not become a channel, named once
            // per report (a broker can send many; this is rate-limited).
            let bad_topic = shared
                .last_bad_import
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            tracing::warn!(component = %shared.component, dropped = drops - logged_drops,
                last_bad_import = %bad_topic,
                spool_full = %status["dropped_spool_full"], rejected = %status["rejected_by_broker"],
                import = %status["dropped_import"], hub_missed = %status["missed_from_hub"],
                "MQTT bridge dropped messages");
            logged_drops = drops;
        }
        let op = ControlOp::SetStatus {
            component: shared.component.clone(),
            status,
        };
        if let Err(ControlError::Gone) = control.call(op, Duration::from_secs(5)) {
            return;
        }
    }
}

/// The bridge's state as the hub shows it (`ipchubctl stats`, D-Bus).
fn status(shared: &Shared, hub: &HubCounters) -> BTreeMap<String, String> {
    let (connected, spooled, spooled_bytes, sent, spool_full, rejected) = {
        let s = shared.spool();
        (
            s.is_connected(),
            s.len(),
            s.bytes(),
            s.sent,
            s.dropped,
            s.rejected,
        )
    };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let import_dropped = get(&shared.import_dropped) + get(&hub.import_failed);
    let missed = get(&hub.missed);
    let dropped = spool_full + rejected + import_dropped + missed;
    let last_error = shared
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let state = if shared.up.load(Ordering::Relaxed) {
        "connected"
    } else {
        "disconnected"
    };
    [
        ("broker", shared.url.clone()),
        ("state", state.to_string()),
        ("connected", connected.to_string()),
        (
            "hub_connected",
            hub.connected.load(Ordering::Relaxed).to_string(),
        ),
        (
            "subscribed",
            shared.subscribed.load(Ordering::Relaxed).to_string(),
        ),
        ("spooled", spooled.to_string()),
        ("spooled_bytes", spooled_bytes.to_string()),
        ("sent", sent.to_string()),
        ("received", get(&shared.received).to_string()),
        (
            "received_retained",
            get(&shared.received_retained).to_string(),
        ),
        ("messages_in", get(&hub.imported).to_string()),
        ("messages_out", sent.to_string()),
        ("imported", get(&hub.imported).to_string()),
        ("dropped", dropped.to_string()),
        ("dropped_spool_full", spool_full.to_string()),
        ("rejected_by_broker", rejected.to_string()),
        ("dropped_import", import_dropped.to_string()),
        ("missed_from_hub", missed.to_string()),
        (
            "loops_prevented",
            (get(&hub.looped) + get(&shared.retained_echoes)).to_string(),
        ),
        ("reconnects", get(&shared.reconnects).to_string()),
        ("last_error", last_error),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
