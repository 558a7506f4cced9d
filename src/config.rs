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

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_message_size: 1 << 20,
            max_clients: 1024,
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
        // Below 100 ms the property signals would approach per-message
        // chatter; above an hour nobody would call them statistics.
        if !(100..=3_600_000).contains(&self.dbus.stats_interval_ms) {
            return Err(bad(
                "dbus.stats_interval_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        for (i, rule) in self.channels.iter().enumerate() {
            Pattern::parse(&rule.pattern)
                .map_err(|e| bad(&format!("channel[{i}].pattern"), e.to_string()))?;
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
        for (table, v) in &defaults {
            let toml::Value::Table(keys) = v else {
                continue;
            };
            for key in keys.keys() {
                assert!(
                    file.get(table).and_then(|t| t.get(key)).is_some(),
                    "etc/ipchub.toml lacks [{table}] {key}"
                );
            }
        }
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
