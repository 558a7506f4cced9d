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
//! An export goes hub → hub side → [`Spool::push`] → handed to rumqttc under
//! the spool lock (by the hub side when it arrives, or by the MQTT thread
//! when the window frees up) → written → confirmed by the broker. rumqttc
//! neither restores subscriptions nor keeps unacknowledged publishes over a
//! clean reconnect, so the MQTT thread subscribes again on every ConnAck and
//! the spool sends again what was not confirmed. QoS 0 is at most once,
//! QoS 1 and 2 at least once across broker restarts within the spool bounds.

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
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client as MqttClient, Connection, ConnectionError, Event, MqttOptions};
use rumqttc::Outgoing;

use super::hub_side::{import_queue, HubCounters, HubSide, Import, ImportSender};
use super::rules::Rules;
use super::spool::Spool;
use super::Backoff;
use crate::client::Options;
use crate::config::{Config, MqttBridgeConfig};
use crate::daemon::control::{ControlError, ControlHandle};
use crate::hub::{ControlOp, TransportKind};

/// The name in logs and in the hub's `components` statistics.
pub const COMPONENT: &str = "bridge.mqtt";
/// Most messages handed to rumqttc and not yet confirmed. Beyond what the
/// broker lets fly at once (its receive maximum, 20 for Mosquitto) they wait
/// in rumqttc's channel, which is sized to never refuse one.
const WINDOW: usize = 100;
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Room in MQTT packets around the payload: topic, properties, header.
const PACKET_OVERHEAD: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bridge.mqtt.url: {0}")]
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
            tracing::debug!(component = COMPONENT, error = %e, "rumqttc refused a publish; it stays spooled");
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

/// `ipchubd-<host name>` unless the config names one.
fn client_id(cfg: &MqttBridgeConfig) -> String {
    if !cfg.client_id.is_empty() {
        return cfg.client_id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match host.trim() {
        "" => "ipchubd".to_string(),
        h => format!("ipchubd-{h}"),
    }
}

/// Start the bridge's threads. They run for the life of the process.
pub fn start(cfg: &Config, socket: &Path, control: ControlHandle) -> Result<(), StartError> {
    let m = &cfg.bridge.mqtt;
    let (host, port) = m.broker_address().map_err(StartError::Url)?;
    let rules = Rules::new(m);
    let mut opts = MqttOptions::new(client_id(m), host, port);
    opts.set_keep_alive(Duration::from_secs(m.keep_alive_secs))
        .set_clean_start(true)
        .set_max_packet_size(Some(
            cfg.hub.max_message_size.saturating_add(PACKET_OVERHEAD),
        ))
        .set_outgoing_inflight_upper_limit(WINDOW as u16);
    if let Some(user) = &m.username {
        opts.set_credentials(user, m.password.clone().unwrap_or_default());
    }
    let filters: Vec<Filter> = rules
        .import_filters()
        .map(|(f, q)| {
            let mut filter = Filter::new(f, qos(q));
            filter.nolocal = true;
            filter
        })
        .collect();
    // Room for the window, one SUBSCRIBE, and a DISCONNECT.
    let (mqtt, connection) = MqttClient::new(opts, WINDOW + 4);

    let shared = Arc::new(Shared {
        spool: Mutex::new(Spool::new(m.spool_max_messages, m.spool_max_bytes, WINDOW)),
        mqtt,
        url: m.url.clone(),
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
        connected: false,
        ever_connected: false,
        reported_down: false,
    };
    std::thread::Builder::new()
        .name("ipchub-mqtt".into())
        .spawn(move || mqtt_side.run())?;

    let export_shared = shared.clone();
    let hub_notify = notify;
    let hub_side = HubSide {
        component: COMPONENT,
        options: Options {
            socket: Some(socket.to_path_buf()),
            transport: TransportKind::Socket,
            name: COMPONENT.into(),
        },
        patterns: rules.export_patterns(),
        export: move |msg: crate::client::Message| {
            let Some(out) = rules.export(&msg.channel) else {
                return;
            };
            let mut spool = export_shared.spool();
            spool.push(out.topic, Bytes::from(msg.payload), out.qos, out.retain);
            hand_off(&mut spool, &export_shared.mqtt);
        },
        imports: import_rx,
        counters: counters.clone(),
        on_change: Box::new(move || {
            let _ = hub_notify.try_send(());
        }),
        backoff,
    };
    std::thread::Builder::new()
        .name("ipchub-mqtt-hub".into())
        .spawn(move || hub_side.run())?;

    std::thread::Builder::new()
        .name("ipchub-mqtt-stat".into())
        .spawn(move || report_status(&shared, &counters, &control, notified))?;
    tracing::info!(component = COMPONENT, broker = %m.url, "MQTT bridge started");
    Ok(())
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
    connected: bool,
    ever_connected: bool,
    /// The broker's absence was logged since the last connection.
    reported_down: bool,
}

impl MqttSide {
    fn run(mut self) {
        // `recv` fails only once every sender is gone, and `Shared` holds one.
        while let Ok(ev) = self.conn.recv() {
            match ev {
                Ok(ev) => self.on_event(ev),
                Err(e) => self.on_error(e),
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected(),
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
                        tracing::warn!(component = COMPONENT, filter = %filter.path, reason = ?code,
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

    fn on_connected(&mut self) {
        self.backoff.reset();
        // rumqttc does not restore subscriptions: ask again on every ConnAck.
        self.shared
            .subscribed
            .store(self.filters.is_empty(), Ordering::Relaxed);
        if !self.filters.is_empty() {
            if let Err(e) = self.shared.mqtt.try_subscribe_many(self.filters.clone()) {
                tracing::error!(component = COMPONENT, error = %e, "cannot queue the import subscriptions");
            }
        }
        let resent = {
            let mut spool = self.shared.spool();
            spool.set_connected(true);
            let n = spool.len();
            hand_off(&mut spool, &self.shared.mqtt);
            n
        };
        if self.ever_connected {
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.connected = true;
        self.reported_down = false;
        let _ = self.notify.try_send(());
        tracing::info!(component = COMPONENT, broker = %self.shared.url, spooled = resent,
            "connected to the MQTT broker");
    }

    fn confirmed(&mut self, pkid: u16, ok: bool, reason: &str) {
        let mut spool = self.shared.spool();
        if spool.confirmed(pkid, ok) && !ok {
            tracing::warn!(
                component = COMPONENT,
                pkid,
                reason,
                "broker refused an exported message"
            );
        }
        hand_off(&mut spool, &self.shared.mqtt);
    }

    fn import(&mut self, p: Publish) {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        let channel = match std::str::from_utf8(&p.topic) {
            Ok(t) => self.rules.import(t).map_err(|e| printable(&e.to_string())),
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
            Some(channel) => self.imports.send(Import {
                channel,
                payload: p.payload,
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
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = e.to_string();
        let url = &self.shared.url;
        if self.connected {
            self.connected = false;
            self.reported_down = true;
            let _ = self.notify.try_send(());
            tracing::warn!(component = COMPONENT, broker = %url, error = %e, requeued,
                "lost the MQTT broker; spooling and reconnecting");
        } else if !self.reported_down {
            self.reported_down = true;
            tracing::warn!(component = COMPONENT, broker = %url, error = %e,
                "cannot reach the MQTT broker; spooling and retrying");
        }
        std::thread::sleep(self.backoff.next_delay());
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
            tracing::warn!(component = COMPONENT, dropped = drops - logged_drops,
                last_bad_import = %bad_topic,
                spool_full = %status["dropped_spool_full"], rejected = %status["rejected_by_broker"],
                import = %status["dropped_import"], hub_missed = %status["missed_from_hub"],
                "MQTT bridge dropped messages");
            logged_drops = drops;
        }
        let op = ControlOp::SetStatus {
            component: COMPONENT.into(),
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
    [
        ("broker", shared.url.clone()),
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
        ("imported", get(&hub.imported).to_string()),
        ("dropped", dropped.to_string()),
        ("dropped_spool_full", spool_full.to_string()),
        ("rejected_by_broker", rejected.to_string()),
        ("dropped_import", import_dropped.to_string()),
        ("missed_from_hub", missed.to_string()),
        ("loops_prevented", get(&hub.looped).to_string()),
        ("reconnects", get(&shared.reconnects).to_string()),
        ("last_error", last_error),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
