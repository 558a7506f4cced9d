//! The typed configuration tree (`/etc/ipchub/ipchub.toml`).
//!
//! One struct per table, every field with a default, unknown keys refused
//! (`deny_unknown_fields`), so a typo is an error naming the key and line
//! rather than a silently ignored setting. `etc/ipchub.toml` in the repository
//! lists every key with its default; a test keeps the two in agreement.

use crate::wire::channel::Pattern;
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
    /// Under `block`, how long a subscriber may hold publishers back before it is disconnected.
    pub block_timeout_ms: u64,
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
}

impl Default for FifoConfig {
    fn default() -> Self {
        FifoConfig {
            publish_channels: Vec::new(),
            publish_mode: 0o622,
        }
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
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_size: crate::transport::shm::DEFAULT_RING_SIZE,
            channel_rings: true,
            channel_ring_size: crate::transport::shm::DEFAULT_RING_SIZE,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter: error, warn, info, debug, trace (IPCHUB_LOG overrides).
    pub level: String,
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
    pub mqtt: MqttBridgeConfig,
}

/// `[bridge.mqtt]`: channels to and from an MQTT broker. Read at start only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttBridgeConfig {
    pub enabled: bool,
    /// `mqtt://host:port`; `mqtts://` (TLS) is refused until it is supported.
    pub url: String,
    /// Empty: `ipchubd-<host name>`.
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub keep_alive_secs: u64,
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
    #[serde(default)]
    pub retain: bool,
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
}

fn default_mqtt_qos() -> u8 {
    1
}

impl Default for MqttBridgeConfig {
    fn default() -> Self {
        MqttBridgeConfig {
            enabled: false,
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: String::new(),
            username: None,
            password: None,
            keep_alive_secs: 30,
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
    /// Host and port from `url`.
    pub fn broker_address(&self) -> Result<(String, u16), String> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| format!("'{}' is not mqtt://host:port", self.url))?;
        match scheme {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" => {
                return Err("TLS (mqtts://) is not supported yet; use mqtt:// (e.g. to a local broker that bridges over TLS)".into())
            }
            other => return Err(format!("unknown scheme '{other}://'; use mqtt://host:port")),
        }
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
            _ => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?']) {
            return Err(format!("bad host in '{}'; use mqtt://host:port", self.url));
        }
        Ok((host.to_string(), port))
    }

    /// The first invalid key and why.
    fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("bridge.mqtt.{k}");
        self.broker_address().map_err(|m| (key("url"), m))?;
        if !(5..=65535).contains(&self.keep_alive_secs) {
            return Err((key("keep_alive_secs"), "must be between 5 and 65535".into()));
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
            block_timeout_ms: 10_000,
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
        cfg.validate(path)?;
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
        if self.fifo.publish_mode > 0o777 {
            return Err(bad(
                "fifo.publish_mode",
                "must be a file mode such as 0o622".into(),
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
        }
        self.bridge
            .mqtt
            .validate()
            .map_err(|(key, message)| bad(&key, message))?;
        self.check_spawn_programs(path)?;
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

    /// The overflow policy for messages on `channel`.
    pub fn overflow_for(&self, channel: &str) -> Overflow {
        self.channels
            .iter()
            .filter_map(|r| Some((Pattern::parse(&r.pattern).ok()?, r.overflow?)))
            .find(|(p, _)| p.matches(channel))
            .map_or(self.queue.overflow, |(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_default_file() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/ipchub.toml")).unwrap()
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
        let m = &cfg.bridge.mqtt;
        assert_eq!(m.broker_address().unwrap(), ("broker.lan".into(), 1884));
        assert_eq!((m.exports[0].qos, m.imports[0].qos), (1, 0));
        for (text, key) in [
            (
                "[bridge.mqtt]\nurl = \"mqtts://b:8883\"\n",
                "bridge.mqtt.url",
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
            Ok(("::1".to_string(), 1883))
        );
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
}
