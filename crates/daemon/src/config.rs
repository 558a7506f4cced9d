//! The typed configuration tree (`/etc/ipchub/ipchub.toml`).
//!
//! One struct per table, every field with a default, unknown keys refused
//! (`deny_unknown_fields`), so a typo is an error naming the key and line
//! rather than a silently ignored setting. `etc/ipchub.toml` in the repository
//! lists every key with its default; a test keeps the two in agreement.

use crate::wire::channel::{Pattern, MAX_LEVELS};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ipchub/ipchub.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {key}: {message}")]
    Value {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A [`Value`](Self::Value) error located in the file: the line of the
    /// key, or of the table holding it where the key is not written.
    #[error("invalid config {path}, line {line}: {key}: {message}")]
    ValueAt {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// Give a [`Value`](Self::Value) error the line of its key in `text`.
    fn located(self, text: &str) -> ConfigError {
        match self {
            ConfigError::Value { path, key, message } => match key_line(text, &key) {
                Some(line) => ConfigError::ValueAt {
                    path,
                    line,
                    key,
                    message,
                },
                None => ConfigError::Value { path, key, message },
            },
            e => e,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hub: HubConfig,
    pub queue: QueueConfig,
    pub log: LogConfig,
    pub dbus: DbusConfig,
    pub bridge: BridgeConfig,
    pub fifo: FifoConfig,
    pub shm: ShmConfig,
    pub access: AccessConfig,
    /// Child processes the hub runs, wired to channels through pipes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spawn: Vec<SpawnConfig>,
    /// Per-channel overrides of the queue settings, first match wins.
    #[serde(rename = "channel", skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Largest payload a client may publish, in bytes.
    pub max_message_size: u32,
    /// Most clients connected at once.
    pub max_clients: usize,
    /// Most clients one uid may have connected at once.
    pub max_clients_per_uid: usize,
    /// Most distinct channels with traffic or subscribers at once.
    pub max_channels: usize,
    /// Most subscriptions one client may hold.
    pub max_subscriptions_per_client: usize,
    /// Most channels one uid may hold (subscribed to exactly, or created and
    /// not yet collected); it may also take at most half the free ones.
    pub max_channels_per_uid: usize,
    /// Most subscriptions all the clients of one uid may hold together.
    pub max_subscriptions_per_uid: usize,
    /// Most levels the patterns of one uid's clients may have together: each
    /// level of a pattern is a node of the subscription index (hundreds of
    /// bytes), so the index memory one uid holds is charged by level.
    pub max_pattern_levels_per_uid: usize,
    /// Under `block`, how long a subscriber may hold publishers back before it is disconnected.
    pub block_timeout_ms: u64,
    /// How long a new connection may take to send its HELLO before it is closed.
    pub handshake_timeout_ms: u64,
    /// Largest HELLO payload, in bytes: all the hub buffers for a connection
    /// before it is greeted.
    pub max_hello_size: u32,
    /// Bytes of retained messages (payload, channel name and 64 bytes of
    /// bookkeeping each) the hub keeps in all.
    pub max_retained_bytes: usize,
    /// Bytes of retained messages charged to one uid (the uid that
    /// published each current value).
    pub max_retained_bytes_per_uid: usize,
    /// Bytes of channel history (payload, channel name and 64 bytes per
    /// message) the hub keeps in memory in all.
    pub max_history_bytes: usize,
    /// Bytes of channel history charged to one uid (the publisher of each
    /// stored message).
    pub max_history_bytes_per_uid: usize,
    /// Where channels with storage = "disk" keep their logs; empty:
    /// $STATE_DIRECTORY (systemd), else /var/lib/ipchub for root, else
    /// $XDG_STATE_HOME/ipchub or ~/.local/state/ipchub.
    pub state_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Stop reading from publishers until the subscriber catches up (lossless).
    Block,
    /// Evict the subscriber's oldest queued messages; it gets an in-band MISSED notice.
    DropOldest,
    /// Disconnect the subscriber with an error naming the limit.
    Disconnect,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop-oldest",
            Overflow::Disconnect => "disconnect",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most messages queued for one subscriber.
    pub max_messages: usize,
    /// Most bytes (frames, headers included) queued for one subscriber.
    pub max_bytes: usize,
    /// What happens when a subscriber's queue is full.
    pub overflow: Overflow,
    /// Most bytes queued for all subscribers of one uid together, so many
    /// connections cannot multiply the per-client bound.
    pub max_bytes_per_uid: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FifoConfig {
    /// Channels that get a publish FIFO `<runtime>/pub/<channel>`: each line
    /// written to it is one message.
    pub publish_channels: Vec<String>,
    /// Mode of the publish FIFOs (who may publish by writing to them).
    pub publish_mode: u32,
    /// Group of the publish FIFOs (name or number); empty: the hub's own
    /// (effective) group. Its members may write when publish_mode has
    /// group-write bits.
    pub publish_group: String,
}

impl Default for FifoConfig {
    fn default() -> Self {
        FifoConfig {
            publish_channels: Vec::new(),
            publish_mode: 0o622,
            publish_group: String::new(),
        }
    }
}

impl FifoConfig {
    /// The gid the publish FIFOs get: `publish_group` resolved, or the
    /// calling process's effective gid when it is empty.
    pub fn group_gid(&self) -> Result<u32, String> {
        let g = self.publish_group.as_str();
        if g.is_empty() {
            return Ok(nix::unistd::getegid().as_raw());
        }
        if let Ok(n) = g.parse::<u32>() {
            return Ok(n);
        }
        nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|gr| gr.gid.as_raw())
            .ok_or_else(|| format!("'{g}': no such group"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessDefault {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// What channels no rule matches allow: "allow" or "deny".
    pub default: AccessDefault,
    /// Rules, first matching pattern wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<AccessRule>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            default: AccessDefault::Allow,
            rule: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Channel pattern the rule governs.
    pub pattern: String,
    /// Who may publish: "*", "uid:N", "gid:N", "user:NAME", "group:NAME".
    #[serde(default)]
    pub publish: Vec<String>,
    /// Who may subscribe (same forms).
    #[serde(default)]
    pub subscribe: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShmConfig {
    /// Bytes of each shared memory ring (one per direction per client);
    /// rounded up to a power of two that holds two largest frames.
    pub ring_size: usize,
    /// Give shm clients a broadcast ring per channel, so between them the
    /// hub is not on the data path (off: the hub relays every message).
    pub channel_rings: bool,
    /// Bytes of each channel's broadcast ring, a power of two that holds two
    /// largest frames (rounded up).
    pub channel_ring_size: usize,
    /// Channel rings one client may hold at once; past it the hub relays.
    pub max_rings_per_client: usize,
    /// Channel rings the clients of one uid may hold at once (a ring shared
    /// by several of them counts once).
    pub max_rings_per_uid: usize,
    /// Bytes of shared memory in the channel rings the clients of one uid
    /// hold (each ring counted whole, header included).
    pub max_ring_bytes_per_uid: usize,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_size: crate::transport::shm::DEFAULT_RING_SIZE,
            channel_rings: true,
            channel_ring_size: crate::transport::shm::DEFAULT_RING_SIZE,
            max_rings_per_client: 64,
            max_rings_per_uid: 128,
            max_ring_bytes_per_uid: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnConfig {
    /// Name in logs and statistics.
    pub name: String,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Pattern whose messages are written to the child's stdin, one per line.
    pub stdin_channel: Option<String>,
    /// Channel each line of the child's stdout is published on.
    pub stdout_channel: Option<String>,
    #[serde(default = "default_restart")]
    pub restart: Restart,
    #[serde(default = "default_restart_delay")]
    pub restart_delay_ms: u64,
}

fn default_restart() -> Restart {
    Restart::OnFailure
}

fn default_restart_delay() -> u64 {
    1000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// Channel pattern (wildcards allowed) this rule applies to.
    pub pattern: String,
    pub overflow: Option<Overflow>,
    /// Keep every message of a matching channel as its retained value (as if
    /// each were published with the retain flag).
    pub retain: Option<bool>,
    /// Keep the channel's last messages in memory, each with a channel
    /// sequence number, for replay to subscribers: at most this many
    /// (any history key turns history on; default 1000) …
    pub history_messages: Option<usize>,
    /// … at most this many payload bytes (default 1048576) …
    pub history_bytes: Option<usize>,
    /// … and none older than this ("90s", "10m", "2h", "1d"; default: no age bound).
    pub history_age: Option<String>,
    /// Where the history lives: "memory" (lost on restart) or "disk" (a
    /// log under the state directory, read back at start). "disk" turns
    /// history on with the default bounds if no other history key does.
    pub storage: Option<Storage>,
    /// With storage = "disk": "always" (a publisher's ACK waits until the
    /// message is on disk), "interval" (synced within a second; the
    /// default) or "never" (the kernel writes back when it likes).
    pub sync: Option<Sync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Storage {
    Memory,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sync {
    Always,
    Interval,
    Never,
}

/// A channel's history bounds (`[[channel]]` history keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBounds {
    pub messages: usize,
    pub bytes: usize,
    pub age: Option<std::time::Duration>,
    /// Some: kept on disk too, synced so.
    pub disk: Option<Sync>,
}

/// Parse a duration such as "500ms", "90s", "10m", "2h", "1d" (a bare
/// number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 10m, 2h or 1d"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("'{text}': the unit must be ms, s, m, h or d")),
    };
    n.checked_mul(ms)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("'{text}' is too long"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter: error, warn, info, debug, trace (IPCHUB_LOG overrides).
    pub level: String,
    /// Log lines one uid may trigger of one kind (denials, refusals,
    /// protocol errors…) in a burst before they are rate-limited.
    pub rate_limit_burst: u32,
    /// After the burst, lines of one kind per uid per minute; the rest are
    /// counted and summed up in one "N similar messages suppressed" line.
    pub rate_limit_per_minute: u32,
}

/// The D-Bus control interface (`org.ipchub`). Read at start only: a reload
/// does not reconnect the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbusConfig {
    /// Serve `org.ipchub`; without a reachable bus the hub runs anyway and retries.
    pub enabled: bool,
    pub bus: BusKind,
    /// How often counters are sampled for properties and PropertiesChanged.
    pub stats_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    /// `DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`.
    System,
    /// `DBUS_SESSION_BUS_ADDRESS`: for development without root.
    Session,
}

impl Default for DbusConfig {
    fn default() -> Self {
        DbusConfig {
            enabled: true,
            bus: BusKind::System,
            stats_interval_ms: 1000,
        }
    }
}

/// Bridges to other messaging systems; each is an ordinary client of the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub mqtt: MqttBridges,
}

/// `[bridge.mqtt]` (one broker, the original form) or `[[bridge.mqtt]]`
/// blocks (several brokers, each with a `name`). Both forms stay valid.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttBridges {
    pub list: Vec<MqttBridgeConfig>,
    /// Written as the single `[bridge.mqtt]` table.
    pub table_form: bool,
}

impl Default for MqttBridges {
    fn default() -> Self {
        MqttBridges {
            list: vec![MqttBridgeConfig::default()],
            table_form: true,
        }
    }
}

impl MqttBridges {
    /// The bridges that run.
    pub fn enabled(&self) -> impl Iterator<Item = &MqttBridgeConfig> {
        self.list.iter().filter(|b| b.enabled)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, b) in self.list.iter().enumerate() {
            let prefix = if self.table_form {
                "bridge.mqtt".to_string()
            } else {
                format!("bridge.mqtt[{i}]")
            };
            b.validate(&prefix, !self.table_form)?;
            if !seen.insert(b.bridge_name()) {
                return Err((
                    format!("{prefix}.name"),
                    format!("'{}' names two bridges", b.bridge_name()),
                ));
            }
        }
        Ok(())
    }
}

impl Serialize for MqttBridges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.list.as_slice() {
            [one] if self.table_form => one.serialize(s),
            list => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MqttBridges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MqttBridges;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [bridge.mqtt] table or [[bridge.mqtt]] blocks")
            }
            // Streaming into the inner types keeps toml's key and line in errors.
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<MqttBridges, A::Error> {
                let one =
                    MqttBridgeConfig::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(MqttBridges {
                    list: vec![one],
                    table_form: true,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                s: A,
            ) -> Result<MqttBridges, A::Error> {
                let list = Vec::<MqttBridgeConfig>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(s),
                )?;
                Ok(MqttBridges {
                    list,
                    table_form: false,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One MQTT bridge: channels to and from one broker. Changes apply on
/// reload by restarting only the bridges whose settings changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttBridgeConfig {
    /// Required in `[[bridge.mqtt]]` blocks (letters, digits, `_ - .`);
    /// names the bridge in statistics (`bridge.mqtt.<name>`) and its state
    /// channel. Empty in the `[bridge.mqtt]` table: `bridge.mqtt`, state on
    /// `ipchub/bridge/mqtt/state`.
    pub name: String,
    pub enabled: bool,
    /// `mqtt://host:port` (cleartext, default port 1883) or
    /// `mqtts://host:port` (TLS 1.2+, default port 8883).
    pub url: String,
    /// Empty: `ipchubd-<host name>` (plus `-<name>` for a named bridge).
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM CA certificates the broker's certificate must chain to (mqtts://);
    /// unset: the system trust store (/etc/ssl/certs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and its private key (mqtts://), for
    /// brokers that authenticate clients by certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    /// false: a persistent session; the broker keeps the bridge's
    /// subscriptions and queues its QoS 1/2 messages while it is away, for
    /// `session_expiry_secs`.
    pub clean_start: bool,
    pub session_expiry_secs: u32,
    /// Broker topic for the bridge's state: `connected` (retained) when it
    /// connects, `disconnected` as its will when the broker loses it.
    /// Empty: none.
    pub state_topic: String,
    /// First delay before reconnecting (to the broker or the hub); doubles up to the max.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Bounds on messages waiting for the broker (and on imports waiting for the hub).
    pub spool_max_messages: usize,
    pub spool_max_bytes: usize,
    #[serde(rename = "export", skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<MqttExport>,
    #[serde(rename = "import", skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<MqttImport>,
}

/// `[[bridge.mqtt.export]]`: hub channels matching `pattern` go to topic `prefix + channel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttExport {
    pub pattern: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_mqtt_qos")]
    pub qos: u8,
    /// The MQTT retain flag: `true` on every message, `false` on none; left
    /// out, on the hub's retained values (those the bridge receives flagged
    /// retained, when it subscribes), so the broker keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
}

/// `[[bridge.mqtt.import]]`: topics matching `filter` go to channel `prefix + topic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttImport {
    pub filter: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_mqtt_qos")]
    pub qos: u8,
    /// Publish into the hub as the channel's retained value: `true` every
    /// message, `false` none; left out, those the broker flags retained
    /// (an empty one clears the channel's value, as in MQTT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
}

fn default_mqtt_qos() -> u8 {
    1
}

impl Default for MqttBridgeConfig {
    fn default() -> Self {
        MqttBridgeConfig {
            name: String::new(),
            enabled: false,
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: String::new(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive_secs: 30,
            clean_start: true,
            session_expiry_secs: 3600,
            state_topic: String::new(),
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            spool_max_messages: 10_000,
            spool_max_bytes: 16 << 20,
            exports: Vec::new(),
            imports: Vec::new(),
        }
    }
}

impl MqttBridgeConfig {
    /// The name in channels and logs: `name`, or `mqtt` when unnamed.
    pub fn bridge_name(&self) -> &str {
        if self.name.is_empty() {
            "mqtt"
        } else {
            &self.name
        }
    }

    /// Host, port and whether to speak TLS, from `url`.
    pub fn broker_address(&self) -> Result<(String, u16, bool), String> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| format!("'{}' is not mqtt://host:port", self.url))?;
        let (tls, default_port) = match scheme {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            other => {
                return Err(format!(
                    "unknown scheme '{other}://'; use mqtt://host:port or mqtts://host:port"
                ))
            }
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("bad port '{p}' in '{}'", self.url))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?']) {
            return Err(format!("bad host in '{}'; use mqtt://host:port", self.url));
        }
        Ok((host.to_string(), port, tls))
    }

    /// The first invalid key and why; `key` prefixes every key named.
    fn validate(&self, prefix: &str, name_required: bool) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{prefix}.{k}");
        if name_required && self.name.is_empty() {
            return Err((
                key("name"),
                "every [[bridge.mqtt]] block needs a name".into(),
            ));
        }
        if self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err((
                key("name"),
                "must be at most 64 letters, digits, '_', '-' or '.'".into(),
            ));
        }
        let (_, _, tls) = self.broker_address().map_err(|m| (key("url"), m))?;
        if !tls {
            for (k, v) in [
                ("ca_file", &self.ca_file),
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
            ] {
                if v.is_some() {
                    return Err((key(k), "needs an mqtts:// url".into()));
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err((
                key(if self.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                }),
                "cert_file and key_file go together".into(),
            ));
        }
        if !(5..=65535).contains(&self.keep_alive_secs) {
            return Err((key("keep_alive_secs"), "must be between 5 and 65535".into()));
        }
        if !self.clean_start && self.session_expiry_secs == 0 {
            return Err((
                key("session_expiry_secs"),
                "must be at least 1 with clean_start = false".into(),
            ));
        }
        if self.state_topic.contains(['+', '#', '\0']) || self.state_topic.starts_with('$') {
            return Err((
                key("state_topic"),
                "must not contain '+', '#' or NUL, nor start with '$'".into(),
            ));
        }
        if self.reconnect_min_ms < 10 {
            return Err((key("reconnect_min_ms"), "must be at least 10".into()));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err((
                key("reconnect_max_ms"),
                "must be at least reconnect_min_ms".into(),
            ));
        }
        if self.spool_max_messages == 0 {
            return Err((key("spool_max_messages"), "must be at least 1".into()));
        }
        if self.spool_max_bytes == 0 {
            return Err((key("spool_max_bytes"), "must be at least 1".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err((key("password"), "needs a username".into()));
        }
        for (i, r) in self.exports.iter().enumerate() {
            let k = |f: &str| key(&format!("export[{i}].{f}"));
            Pattern::parse(&r.pattern).map_err(|e| (k("pattern"), e.to_string()))?;
            if r.prefix.contains(['+', '#', '\0']) || r.prefix.starts_with('$') {
                return Err((
                    k("prefix"),
                    "must not contain '+', '#' or NUL, nor start with '$'".into(),
                ));
            }
            if r.qos > 2 {
                return Err((k("qos"), "must be 0, 1 or 2".into()));
            }
        }
        for (i, r) in self.imports.iter().enumerate() {
            let k = |f: &str| key(&format!("import[{i}].{f}"));
            mqtt_filter_check(&r.filter).map_err(|m| (k("filter"), m))?;
            if !r.prefix.is_empty() {
                crate::wire::channel::validate_name(&format!("{}x", r.prefix))
                    .map_err(|e| (k("prefix"), e.to_string()))?;
            }
            if r.qos > 2 {
                return Err((k("qos"), "must be 0, 1 or 2".into()));
            }
        }
        Ok(())
    }
}

/// An MQTT topic filter as a broker would accept it for a plain subscription.
fn mqtt_filter_check(f: &str) -> Result<(), String> {
    if f.is_empty() || f.len() > 65535 || f.contains('\0') {
        return Err("must be 1 to 65535 bytes without NUL".into());
    }
    if f.starts_with("$share/") {
        return Err("shared subscriptions ($share/) are not supported".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let bad_hash = l.contains('#') && (*l != "#" || i + 1 != levels.len());
        if bad_hash || (l.contains('+') && *l != "+") {
            return Err(format!(
                "'{f}': '#' must be the last level and stand alone, '+' must be a whole level"
            ));
        }
    }
    Ok(())
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_message_size: 1 << 20,
            max_clients: 1024,
            max_clients_per_uid: 256,
            max_channels: 65536,
            max_subscriptions_per_client: 1024,
            max_channels_per_uid: 4096,
            max_subscriptions_per_uid: 16384,
            max_pattern_levels_per_uid: 131072,
            block_timeout_ms: 10_000,
            handshake_timeout_ms: 5_000,
            max_hello_size: 4096,
            max_retained_bytes: 64 << 20,
            max_retained_bytes_per_uid: 4 << 20,
            max_history_bytes: 256 << 20,
            max_history_bytes_per_uid: 32 << 20,
            state_dir: String::new(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_messages: 65536,
            max_bytes: 16 << 20,
            overflow: Overflow::Block,
            max_bytes_per_uid: 256 << 20,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            rate_limit_burst: 10,
            rate_limit_per_minute: 60,
        }
    }
}

impl Config {
    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate(path).map_err(|e| e.located(text))?;
        Ok(cfg)
    }

    /// Load a file. `None` means the default path, where a missing file means defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let h = &self.hub;
        if h.max_message_size == 0 || h.max_message_size > 256 << 20 {
            return Err(bad(
                "hub.max_message_size",
                "must be between 1 and 268435456".into(),
            ));
        }
        if h.max_clients == 0 {
            return Err(bad("hub.max_clients", "must be at least 1".into()));
        }
        if h.max_clients_per_uid == 0 {
            return Err(bad("hub.max_clients_per_uid", "must be at least 1".into()));
        }
        if h.max_channels == 0 {
            return Err(bad("hub.max_channels", "must be at least 1".into()));
        }
        if h.max_subscriptions_per_client == 0 {
            return Err(bad(
                "hub.max_subscriptions_per_client",
                "must be at least 1".into(),
            ));
        }
        if !(100..=600_000).contains(&h.handshake_timeout_ms) {
            return Err(bad(
                "hub.handshake_timeout_ms",
                "must be between 100 and 600000".into(),
            ));
        }
        if !(256..=65536).contains(&h.max_hello_size) {
            return Err(bad(
                "hub.max_hello_size",
                "must be between 256 and 65536".into(),
            ));
        }
        if h.max_retained_bytes == 0 {
            return Err(bad("hub.max_retained_bytes", "must be at least 1".into()));
        }
        if h.max_retained_bytes_per_uid == 0 || h.max_retained_bytes_per_uid > h.max_retained_bytes
        {
            return Err(bad(
                "hub.max_retained_bytes_per_uid",
                "must be at least 1 and at most hub.max_retained_bytes".into(),
            ));
        }
        if h.max_history_bytes == 0 {
            return Err(bad("hub.max_history_bytes", "must be at least 1".into()));
        }
        if h.max_history_bytes_per_uid == 0 || h.max_history_bytes_per_uid > h.max_history_bytes {
            return Err(bad(
                "hub.max_history_bytes_per_uid",
                "must be at least 1 and at most hub.max_history_bytes".into(),
            ));
        }
        if h.max_channels_per_uid == 0 {
            return Err(bad("hub.max_channels_per_uid", "must be at least 1".into()));
        }
        if h.max_subscriptions_per_uid == 0 {
            return Err(bad(
                "hub.max_subscriptions_per_uid",
                "must be at least 1".into(),
            ));
        }
        if h.max_pattern_levels_per_uid < MAX_LEVELS {
            return Err(bad(
                "hub.max_pattern_levels_per_uid",
                format!("must be at least {MAX_LEVELS}, the levels one pattern may have"),
            ));
        }
        if self.queue.max_messages == 0 {
            return Err(bad("queue.max_messages", "must be at least 1".into()));
        }
        // A queue must be able to hold at least one largest message, or a
        // subscriber could never receive it under `block`.
        let largest = h.max_message_size as usize + crate::wire::HEADER_LEN + 255;
        if self.queue.max_bytes < largest {
            return Err(bad(
                "queue.max_bytes",
                format!("must hold at least one largest frame ({largest} bytes for max_message_size {})", h.max_message_size),
            ));
        }
        if self.queue.max_bytes_per_uid < self.queue.max_bytes {
            return Err(bad(
                "queue.max_bytes_per_uid",
                "must be at least queue.max_bytes".into(),
            ));
        }
        if self.log.rate_limit_burst == 0 {
            return Err(bad("log.rate_limit_burst", "must be at least 1".into()));
        }
        if !(1..=60_000).contains(&self.log.rate_limit_per_minute) {
            return Err(bad(
                "log.rate_limit_per_minute",
                "must be between 1 and 60000".into(),
            ));
        }
        // Below 100 ms the property signals would approach per-message
        // chatter; above an hour nobody would call them statistics.
        if !(100..=3_600_000).contains(&self.dbus.stats_interval_ms) {
            return Err(bad(
                "dbus.stats_interval_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        for (i, ch) in self.fifo.publish_channels.iter().enumerate() {
            crate::wire::channel::validate_name(ch)
                .map_err(|e| bad(&format!("fifo.publish_channels[{i}]"), e.to_string()))?;
        }
        crate::hub::access::Policy::from_config(&self.access).map_err(|e| {
            let (key, msg) = e.split_once(": ").unwrap_or(("access", e.as_str()));
            bad(key, msg.to_string())
        })?;
        if self.shm.ring_size < 4096 || self.shm.ring_size > 1 << 30 {
            return Err(bad(
                "shm.ring_size",
                "must be between 4096 and 1073741824".into(),
            ));
        }
        if self.shm.channel_ring_size < 4096 || self.shm.channel_ring_size > 1 << 30 {
            return Err(bad(
                "shm.channel_ring_size",
                "must be between 4096 and 1073741824".into(),
            ));
        }
        for (key, v) in [
            ("shm.max_rings_per_client", self.shm.max_rings_per_client),
            ("shm.max_rings_per_uid", self.shm.max_rings_per_uid),
        ] {
            if v == 0 {
                return Err(bad(
                    key,
                    "must be at least 1 (shm.channel_rings = false turns rings off)".into(),
                ));
            }
        }
        if self.shm.max_ring_bytes_per_uid < self.shm.channel_ring_size {
            return Err(bad(
                "shm.max_ring_bytes_per_uid",
                "must be at least shm.channel_ring_size".into(),
            ));
        }
        for (i, sp) in self.spawn.iter().enumerate() {
            if sp.command.is_empty() || sp.command[0].is_empty() {
                return Err(bad(
                    &format!("spawn[{i}].command"),
                    "must name a program".into(),
                ));
            }
            if sp.name.is_empty() {
                return Err(bad(&format!("spawn[{i}].name"), "must not be empty".into()));
            }
            if let Some(p) = &sp.stdin_channel {
                Pattern::parse(p)
                    .map_err(|e| bad(&format!("spawn[{i}].stdin_channel"), e.to_string()))?;
            }
            if let Some(c) = &sp.stdout_channel {
                crate::wire::channel::validate_name(c)
                    .map_err(|e| bad(&format!("spawn[{i}].stdout_channel"), e.to_string()))?;
            }
        }
        for (i, rule) in self.channels.iter().enumerate() {
            Pattern::parse(&rule.pattern)
                .map_err(|e| bad(&format!("channel[{i}].pattern"), e.to_string()))?;
            if rule.history_messages == Some(0) {
                return Err(bad(
                    &format!("channel[{i}].history_messages"),
                    "must be at least 1 (leave the history keys out for no history)".into(),
                ));
            }
            if rule.sync.is_some() && rule.storage != Some(Storage::Disk) {
                return Err(bad(
                    &format!("channel[{i}].sync"),
                    "applies only with storage = \"disk\"".into(),
                ));
            }
            if rule.history_bytes == Some(0) {
                return Err(bad(
                    &format!("channel[{i}].history_bytes"),
                    "must be at least 1 (leave the history keys out for no history)".into(),
                ));
            }
            if let Some(age) = &rule.history_age {
                let d = parse_duration(age)
                    .map_err(|e| bad(&format!("channel[{i}].history_age"), e))?;
                if d.is_zero() {
                    return Err(bad(
                        &format!("channel[{i}].history_age"),
                        "must be more than 0".into(),
                    ));
                }
            }
        }
        self.bridge
            .mqtt
            .validate()
            .map_err(|(key, message)| bad(&key, message))?;
        self.validate_semantics()
            .map_err(|(key, message)| bad(&key, message))?;
        check_publish_fifo_access(&self.fifo, &self.access)
            .map_err(|(key, message)| bad(&key, message))?;
        self.check_spawn_programs(path)?;
        Ok(())
    }

    /// Values that parse but would not do what they say: a log level that
    /// logs nothing, a block timeout of zero, a publish FIFO mode that lets
    /// others read (and so steal) what is written to it.
    fn validate_semantics(&self) -> Result<(), (String, String)> {
        if !LOG_LEVELS.contains(&self.log.level.to_ascii_lowercase().as_str()) {
            return Err((
                "log.level".into(),
                format!(
                    "'{}' is not a log level; use one of {} (IPCHUB_LOG takes any tracing filter)",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if self.hub.block_timeout_ms == 0 {
            return Err((
                "hub.block_timeout_ms".into(),
                "must be at least 1 (0 would disconnect any subscriber the moment it is behind)"
                    .into(),
            ));
        }
        let mode = self.fifo.publish_mode;
        let key = || "fifo.publish_mode".to_string();
        if mode > 0o7777 {
            return Err((key(), "must be a file mode such as 0o622".into()));
        }
        if mode & 0o7000 != 0 {
            return Err((
                key(),
                format!("{mode:#o} has setuid, setgid or sticky bits (0o7000), which mean nothing on a FIFO; use write bits only, e.g. 0o622"),
            ));
        }
        if mode & 0o044 != 0 {
            return Err((
                key(),
                format!("{mode:#o} lets group or others read the publish FIFOs: a reader would take messages before the hub does; use write bits only, e.g. 0o622"),
            ));
        }
        if mode & 0o111 != 0 {
            return Err((
                key(),
                format!("{mode:#o} has execute bits, which mean nothing on a FIFO; use e.g. 0o622"),
            ));
        }
        Ok(())
    }

    /// Every `[[spawn]]` program exists and is executable now, found as
    /// the hub will start it (a name without `/` on `PATH`), so that a typo
    /// fails `--check-config` instead of a restart loop at run time.
    fn check_spawn_programs(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let executable = |p: &Path| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        for (i, sp) in self.spawn.iter().enumerate() {
            let program = &sp.command[0];
            let message = if program.contains('/') {
                let p = Path::new(program);
                if !p.exists() {
                    format!("program '{program}' does not exist")
                } else if !executable(p) {
                    format!("program '{program}' is not an executable file")
                } else {
                    continue;
                }
            } else {
                // Command::new searches the PATH the daemon runs with; so do we.
                let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
                if std::env::split_paths(&search).any(|dir| executable(&dir.join(program))) {
                    continue;
                }
                format!(
                    "program '{program}' not found on PATH ({})",
                    search.to_string_lossy()
                )
            };
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: format!("spawn[{i}].command"),
                message,
            });
        }
        Ok(())
    }

    /// The `[[channel]]` blocks that say `retain`, in order: (pattern,
    /// retain). The bridge exports the messages of such channels retained.
    pub fn retain_rules(&self) -> Vec<(String, bool)> {
        self.channels
            .iter()
            .filter_map(|r| Some((r.pattern.clone(), r.retain?)))
            .collect()
    }

    /// Whether `channel` keeps every message as its retained value (the
    /// first `[[channel]]` block matching it that says `retain`).
    pub fn retain_for(&self, channel: &str) -> bool {
        self.channels
            .iter()
            .filter_map(|r| Some((Pattern::parse(&r.pattern).ok()?, r.retain?)))
            .find(|(p, _)| p.matches(channel))
            .is_some_and(|(_, r)| r)
    }

    /// The history bounds of `channel`: the first `[[channel]]` block
    /// matching it that has a history key; None: no history.
    pub fn history_for(&self, channel: &str) -> Option<HistoryBounds> {
        let r = self.channels.iter().find(|r| {
            (r.history_messages.is_some()
                || r.history_bytes.is_some()
                || r.history_age.is_some()
                || r.storage.is_some())
                && Pattern::parse(&r.pattern).is_ok_and(|p| p.matches(channel))
        })?;
        Some(HistoryBounds {
            messages: r.history_messages.unwrap_or(1000),
            bytes: r.history_bytes.unwrap_or(1 << 20),
            age: r
                .history_age
                .as_deref()
                .and_then(|a| parse_duration(a).ok()),
            disk: (r.storage == Some(Storage::Disk)).then(|| r.sync.unwrap_or(Sync::Interval)),
        })
    }

    /// The overflow policy for messages on `channel`.
    pub fn overflow_for(&self, channel: &str) -> Overflow {
        self.channels
            .iter()
            .filter_map(|r| Some((Pattern::parse(&r.pattern).ok()?, r.overflow?)))
            .find(|(p, _)| p.matches(channel))
            .map_or(self.queue.overflow, |(_, o)| o)
    }
}

/// The values `log.level` accepts.
pub const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Refuse publish FIFOs that would let someone publish where `[access]`
/// forbids it. Whoever writes to a FIFO is unknown to the hub (a FIFO
/// carries no credentials), so the set of users its mode lets write must
/// all be allowed to publish on its channel: with other-write bits every
/// user (the rule must grant "*"), with group-write bits every member of
/// the FIFO's group, `publish_group` or else the hub's effective group (the
/// rule must grant "*" or that group). The owner is the hub's own uid. Also used on reload, with
/// the publish FIFOs the running hub has open and the new `[access]`.
pub fn check_publish_fifo_access(
    fifo: &FifoConfig,
    access: &AccessConfig,
) -> Result<(), (String, String)> {
    use crate::hub::access::{Op, Policy, Principal};
    // An invalid [access] is reported by the caller's own check.
    let Ok(policy) = Policy::from_config(access) else {
        return Ok(());
    };
    let gid = fifo
        .group_gid()
        .map_err(|m| ("fifo.publish_group".to_string(), m))?;
    let group = if fifo.publish_group.is_empty() {
        format!("group gid {gid} (the hub's group: fifo.publish_group is empty)")
    } else {
        format!("group gid {gid} (fifo.publish_group)")
    };
    let mode = fifo.publish_mode;
    for (i, ch) in fifo.publish_channels.iter().enumerate() {
        let governing = || match policy.rule_for(ch) {
            Some(r) => format!("access.rule[{r}] (pattern '{}')", access.rule[r].pattern),
            None => format!(
                "[access] default = \"{}\"",
                if access.default == AccessDefault::Allow {
                    "allow"
                } else {
                    "deny"
                }
            ),
        };
        let refuse = |who: String, fix: String| {
            Err((
                format!("fifo.publish_channels[{i}]"),
                format!(
                    "publish_mode {mode:#o} lets {who} write the publish FIFO of '{ch}', but {} does not let all of them publish there (a FIFO's writer has no credentials the hub could check); {fix}",
                    governing()
                ),
            ))
        };
        if mode & 0o002 != 0 && !policy.allows_all_of(ch, &Principal::Anyone, Op::Publish) {
            return refuse(
                "every local user".into(),
                "use publish_mode = 0o600 (the hub's user only) or 0o620, or let \"*\" publish there".into(),
            );
        }
        if mode & 0o020 != 0 && !policy.allows_all_of(ch, &Principal::Gid(gid), Op::Publish) {
            return refuse(
                group.clone(),
                format!("use publish_mode = 0o600, or let \"gid:{gid}\" publish there"),
            );
        }
    }
    Ok(())
}

/// The 1-based line of `key` ("queue.max_bytes", "access.rule[1].publish",
/// "fifo.publish_channels[0]") in `text`; where the key is not written (its
/// default applies), the line of the nearest table or array holding it.
fn key_line(text: &str, key: &str) -> Option<usize> {
    use toml_edit::{Item, Value};
    /// Where the walk is: a table (standard, inline or the root) or a value.
    enum At<'a> {
        Table(&'a dyn toml_edit::TableLike),
        Item(&'a Item),
        Value(&'a Value),
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut at = At::Item(doc.as_item());
    let mut found: Option<std::ops::Range<usize>> = None;
    'walk: for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').unwrap_or((part, ""));
        let table = match at {
            At::Table(t) => Some(t),
            At::Item(i) => i.as_table_like(),
            At::Value(v) => v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike),
        };
        let Some((k, v)) = table.and_then(|t| t.get_key_value(name)) else {
            break;
        };
        found = k.span().or_else(|| v.span()).or(found);
        at = At::Item(v);
        while let Some((idx, after)) = rest.split_once(']') {
            let Ok(i) = idx.parse::<usize>() else {
                break 'walk;
            };
            at = match at {
                At::Item(Item::ArrayOfTables(a)) => match a.get(i) {
                    Some(t) => {
                        found = t.span().or(found);
                        At::Table(t)
                    }
                    None => break 'walk,
                },
                At::Item(Item::Value(Value::Array(a))) | At::Value(Value::Array(a)) => {
                    match a.get(i) {
                        Some(v) => {
                            found = v.span().or(found);
                            At::Value(v)
                        }
                        None => break 'walk,
                    }
                }
                _ => break 'walk,
            };
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    let start = found?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_default_file() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../etc/ipchub.toml"
        ))
        .unwrap()
    }

    #[test]
    fn shipped_default_file_matches_built_in_defaults() {
        let parsed = Config::parse(&repo_default_file(), Path::new("etc/ipchub.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn shipped_default_file_names_every_key() {
        // Equality above cannot see a key that is missing from the file (it
        // would default), so walk the defaults and look for each key.
        let text = repo_default_file();
        let file: toml::Table = toml::from_str(&text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        fn walk(defaults: &toml::Table, file: Option<&toml::Table>, table: &str) {
            for (key, v) in defaults {
                let found = file.and_then(|f| f.get(key));
                match v {
                    // Nested tables such as [bridge.mqtt] are walked too.
                    toml::Value::Table(inner) => {
                        let name = if table.is_empty() {
                            key.clone()
                        } else {
                            format!("{table}.{key}")
                        };
                        walk(inner, found.and_then(|f| f.as_table()), &name);
                    }
                    _ if table.is_empty() => {}
                    _ => assert!(found.is_some(), "etc/ipchub.toml lacks [{table}] {key}"),
                }
            }
        }
        walk(&defaults, Some(&file), "");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[hub]\nmax_clientz = 3\n", Path::new("x.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("max_clientz"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("[queue]\nmax_messages = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("queue.max_messages"), "{e}");
        let e =
            Config::parse("[queue]\noverflow = \"sometimes\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e =
            Config::parse("[[channel]]\npattern = \"a/#/b\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("channel[0].pattern"), "{e}");
        let e = Config::parse("[dbus]\nstats_interval_ms = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("dbus.stats_interval_ms"), "{e}");
        let e = Config::parse("[dbus]\nbus = \"user\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("user"), "{e}");
    }

    #[test]
    fn mqtt_bridge_rules_and_url_are_checked() {
        let parse = |t: &str| Config::parse(t, Path::new("x.toml"));
        let cfg = parse(
            "[bridge.mqtt]\nenabled = true\nurl = \"mqtt://broker.lan:1884\"\n\
             [[bridge.mqtt.export]]\npattern = \"sensors/#\"\nprefix = \"ipchub/\"\n\
             [[bridge.mqtt.import]]\nfilter = \"cmd/+/set\"\nprefix = \"mqtt/\"\nqos = 0\n",
        )
        .unwrap();
        let m = &cfg.bridge.mqtt.list[0];
        assert!(cfg.bridge.mqtt.table_form);
        assert_eq!(
            m.broker_address().unwrap(),
            ("broker.lan".into(), 1884, false)
        );
        assert_eq!((m.exports[0].qos, m.imports[0].qos), (1, 0));
        for (text, key) in [
            (
                "[bridge.mqtt]\nurl = \"http://b:8883\"\n",
                "bridge.mqtt.url",
            ),
            (
                "[bridge.mqtt]\nca_file = \"/ca.pem\"\n",
                "bridge.mqtt.ca_file",
            ),
            (
                "[bridge.mqtt]\nurl = \"mqtts://b\"\ncert_file = \"/c.pem\"\n",
                "bridge.mqtt.key_file",
            ),
            (
                "[bridge.mqtt]\nclean_start = false\nsession_expiry_secs = 0\n",
                "bridge.mqtt.session_expiry_secs",
            ),
            ("[[bridge.mqtt]]\nenabled = true\n", "bridge.mqtt[0].name"),
            (
                "[[bridge.mqtt]]\nname = \"a\"\n[[bridge.mqtt]]\nname = \"a\"\n",
                "bridge.mqtt[1].name",
            ),
            ("[[bridge.mqtt]]\nname = \"a/b\"\n", "bridge.mqtt[0].name"),
            (
                "[[bridge.mqtt]]\nname = \"a\"\n[[bridge.mqtt.export]]\npattern = \"#\"\nqos = 3\n",
                "bridge.mqtt[0].export[0].qos",
            ),
            ("[bridge.mqtt]\nurl = \"b:1883\"\n", "bridge.mqtt.url"),
            (
                "[bridge.mqtt]\nkeep_alive_secs = 1\n",
                "bridge.mqtt.keep_alive_secs",
            ),
            ("[bridge.mqtt]\npassword = \"x\"\n", "bridge.mqtt.password"),
            (
                "[[bridge.mqtt.export]]\npattern = \"a/#/b\"\n",
                "bridge.mqtt.export[0].pattern",
            ),
            (
                "[[bridge.mqtt.export]]\npattern = \"a\"\nqos = 3\n",
                "bridge.mqtt.export[0].qos",
            ),
            (
                "[[bridge.mqtt.import]]\nfilter = \"a/#/b\"\n",
                "bridge.mqtt.import[0].filter",
            ),
            (
                "[[bridge.mqtt.import]]\nfilter = \"a\"\nprefix = \"bad prefix/\"\n",
                "bridge.mqtt.import[0].prefix",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[[bridge.mqtt.export]]\nprefix = \"x/\"\n").unwrap_err();
        assert!(e.to_string().contains("pattern"), "{e}");
        assert_eq!(
            MqttBridgeConfig {
                url: "mqtt://[::1]".into(),
                ..Default::default()
            }
            .broker_address(),
            Ok(("::1".to_string(), 1883, false))
        );
        assert_eq!(
            MqttBridgeConfig {
                url: "mqtts://broker.example".into(),
                ..Default::default()
            }
            .broker_address(),
            Ok(("broker.example".to_string(), 8883, true))
        );
        // Several brokers, each with its own rules.
        let cfg = parse(
            "[[bridge.mqtt]]\nname = \"a\"\nenabled = true\n\
             [[bridge.mqtt.export]]\npattern = \"x/#\"\n\
             [[bridge.mqtt]]\nname = \"b\"\nurl = \"mqtts://b.example\"\n\
             [[bridge.mqtt.import]]\nfilter = \"y/#\"\n",
        )
        .unwrap();
        let l = &cfg.bridge.mqtt.list;
        assert!(!cfg.bridge.mqtt.table_form);
        assert_eq!(
            (l[0].name.as_str(), l[0].exports.len(), l[0].imports.len()),
            ("a", 1, 0)
        );
        assert_eq!(
            (l[1].name.as_str(), l[1].exports.len(), l[1].imports.len()),
            ("b", 0, 1)
        );
        assert_eq!(cfg.bridge.mqtt.enabled().count(), 1);
        let e = parse("[[bridge.mqtt]]\nname = \"a\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn channel_rules_pick_retain_and_history() {
        let cfg = Config::parse(
            "[[channel]]\npattern = \"s/#\"\nretain = true\n[[channel]]\npattern = \"e/#\"\nhistory_age = \"10m\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(cfg.retain_for("s/a") && !cfg.retain_for("e/a"));
        assert_eq!(cfg.history_for("s/a"), None);
        assert_eq!(
            cfg.history_for("e/a"),
            Some(HistoryBounds {
                messages: 1000,
                bytes: 1 << 20,
                age: Some(std::time::Duration::from_secs(600)),
                disk: None,
            })
        );
        for (text, key) in [
            ("history_age = \"10 parsecs\"", "channel[0].history_age"),
            ("history_age = \"0s\"", "channel[0].history_age"),
            ("history_messages = 0", "channel[0].history_messages"),
            ("history_bytes = 0", "channel[0].history_bytes"),
        ] {
            let e = Config::parse(
                &format!("[[channel]]\npattern = \"a\"\n{text}\n"),
                Path::new("x.toml"),
            )
            .unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Config::parse(
            "[hub]\nmax_retained_bytes_per_uid = 1000000000\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("hub.max_retained_bytes_per_uid"),
            "{e}"
        );
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn channel_rules_pick_the_policy() {
        let cfg = Config::parse(
            "[[channel]]\npattern = \"logs/#\"\noverflow = \"drop-oldest\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(cfg.overflow_for("logs/app"), Overflow::DropOldest);
        assert_eq!(cfg.overflow_for("weather"), Overflow::Block);
    }

    #[test]
    fn semantic_errors_name_the_line_of_their_key() {
        let parse = |t: &str| {
            Config::parse(t, Path::new("x.toml"))
                .unwrap_err()
                .to_string()
        };
        for (text, key, line) in [
            ("\n[queue]\n\nmax_messages = 0\n", "queue.max_messages", 4),
            ("[hub]\nblock_timeout_ms = 0\n", "hub.block_timeout_ms", 2),
            (
                "[[access.rule]]\npattern = \"a\"\n\n[[access.rule]]\npattern = \"a\"\npublish = [\n  \"*\",\n  \"user:no-such-user-x\",\n]\n",
                "access.rule[1].publish",
                6,
            ),
            (
                "[bridge.mqtt]\n[[bridge.mqtt.export]]\npattern = \"a\"\n[[bridge.mqtt.export]]\npattern = \"b\"\nqos = 7\n",
                "bridge.mqtt.export[1].qos",
                6,
            ),
            ("fifo = { publish_channels = [\"a\", \"b/\"] }\n", "fifo.publish_channels[1]", 1),
            // Not written: the line of the table that holds it.
            (
                "[queue]\nmax_bytes = 2000000\nmax_bytes_per_uid = 1000000\n",
                "queue.max_bytes_per_uid",
                3,
            ),
        ] {
            let e = parse(text);
            assert!(e.contains(key) && e.contains(&format!("line {line}:")), "{text:?}: {e}");
        }
        assert_eq!(
            key_line("[queue]\nmax_bytes = 1\n", "queue.max_messages"),
            Some(1)
        );
        assert_eq!(key_line("", "queue.max_messages"), None);
    }

    #[test]
    fn log_levels_are_checked_and_listed() {
        let e = Config::parse("[log]\nlevel = \"loud\"\n", Path::new("x.toml")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("log.level") && e.contains("line 2"), "{e}");
        for l in LOG_LEVELS {
            assert!(e.contains(l), "{e}");
            Config::parse(&format!("[log]\nlevel = \"{l}\"\n"), Path::new("x.toml")).unwrap();
        }
        Config::parse("[log]\nlevel = \"DEBUG\"\n", Path::new("x.toml")).unwrap();
    }

    #[test]
    fn publish_mode_keeps_to_write_bits() {
        let parse = |m: &str| {
            Config::parse(
                &format!("[fifo]\npublish_mode = {m}\n"),
                Path::new("x.toml"),
            )
        };
        for (m, why) in [
            ("0o666", "read"),
            ("0o642", "read"),
            ("0o4622", "setuid"),
            ("0o1622", "sticky"),
            ("0o722", "execute"),
            ("0o17777", "file mode"),
        ] {
            let e = parse(m).unwrap_err().to_string();
            assert!(
                e.contains("fifo.publish_mode") && e.contains(why),
                "{m}: {e}"
            );
        }
        for m in ["0o622", "0o620", "0o600", "0o200"] {
            parse(m).unwrap();
        }
    }

    #[test]
    fn publish_fifos_must_not_bypass_access_rules() {
        let gid = nix::unistd::getegid().as_raw();
        let cfg = |default: &str, publish: &str, mode: &str| {
            format!(
                "[fifo]\npublish_channels = [\"open\", \"s/door\"]\npublish_mode = {mode}\n\
                 [access]\ndefault = \"{default}\"\n[[access.rule]]\npattern = \"s/#\"\npublish = {publish}\n"
            )
        };
        let parse = |t: String| Config::parse(&t, Path::new("x.toml"));
        // Everyone may write: the rule must let everyone publish.
        let e = parse(cfg("allow", "[\"uid:0\"]", "0o622"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fifo.publish_channels[1]")
                && e.contains("line 2")
                && e.contains("access.rule[0]"),
            "{e}"
        );
        parse(cfg("allow", "[\"*\"]", "0o622")).unwrap();
        // The group may write: the rule must grant that group (or everyone).
        let e = parse(cfg("allow", &format!("[\"uid:{}\"]", gid + 1), "0o620")).unwrap_err();
        assert!(e.to_string().contains(&format!("gid {gid}")), "{e}");
        parse(cfg("allow", &format!("[\"gid:{gid}\"]",), "0o620")).unwrap();
        // A default of deny governs "open": no write bits for others there.
        let e = parse(cfg("deny", "[\"*\"]", "0o622"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fifo.publish_channels[0]") && e.contains("default"),
            "{e}"
        );
        // Only the hub's user: always fine.
        parse(cfg("deny", "[]", "0o600")).unwrap();
        // A named group: the rule must grant that group.
        let with_group = |publish: &str| {
            let t = cfg("allow", publish, "0o620").replace(
                "publish_mode = 0o620\n",
                &format!("publish_mode = 0o620\npublish_group = \"{}\"\n", gid + 7),
            );
            parse(t)
        };
        let e = with_group(&format!("[\"gid:{gid}\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("gid {}", gid + 7)) && e.contains("fifo.publish_group"),
            "{e}"
        );
        with_group(&format!("[\"gid:{}\"]", gid + 7)).unwrap();
        let e = parse(
            "[fifo]\npublish_group = \"no-such-group-x\"\npublish_channels = [\"a\"]\n".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fifo.publish_group") && e.contains("line 2") && e.contains("no such group"),
            "{e}"
        );
    }
}
