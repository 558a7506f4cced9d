//! Bridge rules: which hub channels become which MQTT topics, and back. Pure.
//!
//! First matching rule wins in each direction, like `[[channel]]` rules. An
//! export turns channel `c` into topic `prefix + c`; an import turns topic
//! `t` into channel `prefix + t`, which must then be a valid channel name
//! (MQTT allows characters and empty levels that channel names do not).
//!
//! Retained values pass both ways unless a rule says otherwise (`retain`):
//! a hub message flagged retained leaves with the MQTT retain flag, and an
//! MQTT message flagged retained becomes the channel's retained value.

use crate::config::{MqttBridgeConfig, MqttExport, MqttImport};
use crate::wire::channel::{self, ChannelError, Pattern};

/// Where and how an exported message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
}

/// Why an incoming MQTT message was not imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("no import rule matches topic '{0}'")]
    NoRule(String),
    #[error("topic '{topic}' does not map to a valid channel: {source}")]
    BadChannel { topic: String, source: ChannelError },
}

#[derive(Debug, Clone)]
pub struct Rules {
    exports: Vec<(Pattern, MqttExport)>,
    imports: Vec<MqttImport>,
    /// `[[channel]]` blocks saying `retain`: every message of a channel
    /// whose first such block says `true` is a retained value.
    retained_channels: Vec<(Pattern, bool)>,
}

impl Rules {
    /// Rules from a validated config (invalid patterns, which validation
    /// already refused, are skipped).
    pub fn new(cfg: &MqttBridgeConfig) -> Rules {
        Rules {
            exports: cfg
                .exports
                .iter()
                .filter_map(|r| Some((Pattern::parse(&r.pattern).ok()?, r.clone())))
                .collect(),
            imports: cfg.imports.clone(),
            retained_channels: Vec::new(),
        }
    }

    /// With the `[[channel]]` retain rules (pattern, retain): a message on
    /// a channel that keeps every message as its retained value is
    /// exported as one.
    pub fn with_retained_channels(mut self, rules: &[(String, bool)]) -> Rules {
        self.retained_channels = rules
            .iter()
            .filter_map(|(p, r)| Some((Pattern::parse(p).ok()?, *r)))
            .collect();
        self
    }

    /// Does the hub keep every message of `channel` as its retained value?
    pub fn always_retained(&self, channel: &str) -> bool {
        self.retained_channels
            .iter()
            .find(|(p, _)| p.matches(channel))
            .is_some_and(|(_, r)| *r)
    }

    /// The hub patterns to subscribe to.
    pub fn export_patterns(&self) -> Vec<String> {
        self.exports
            .iter()
            .map(|(p, _)| p.as_str().to_string())
            .collect()
    }

    /// The MQTT filters to subscribe to, with their QoS.
    pub fn import_filters(&self) -> impl Iterator<Item = (&str, u8)> {
        self.imports.iter().map(|r| (r.filter.as_str(), r.qos))
    }

    /// Where a hub message on `channel` goes; `retained`: the hub flagged
    /// it as the channel's retained value (sent on subscribing).
    pub fn export(&self, channel: &str, retained: bool) -> Option<Outbound> {
        let (_, rule) = self.exports.iter().find(|(p, _)| p.matches(channel))?;
        Some(Outbound {
            topic: format!("{}{}", rule.prefix, channel),
            qos: rule.qos,
            retain: rule
                .retain
                .unwrap_or_else(|| retained || self.always_retained(channel)),
        })
    }

    /// The hub channel for a message received on `topic`, and whether it is
    /// to be published as the channel's retained value (`retained`: the
    /// broker flagged it so).
    pub fn import(&self, topic: &str, retained: bool) -> Result<(String, bool), ImportError> {
        let rule = self
            .imports
            .iter()
            .find(|r| topic_matches(&r.filter, topic))
            .ok_or_else(|| ImportError::NoRule(topic.to_string()))?;
        let name = format!("{}{}", rule.prefix, topic);
        channel::validate_name(&name).map_err(|source| ImportError::BadChannel {
            topic: topic.to_string(),
            source,
        })?;
        Ok((name, rule.retain.unwrap_or(retained)))
    }
}

/// MQTT topic filter matching (MQTT 3.1.1 §4.7, 5.0 §4.7): `+` is one level,
/// a trailing `#` is the parent level and everything below it, and a filter
/// that starts with a wildcard does not match topics starting with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    crate::wire::channel::levels_match(filter, topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        let cfg = crate::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        Rules::new(&cfg.bridge.mqtt.list[0])
    }

    #[test]
    fn mqtt_filters_match_like_a_broker() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/x/c"));
        assert!(!topic_matches("a/+/c", "a/x/y/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("+/+", "/x"));
        assert!(!topic_matches("#", "$SYS/broker/uptime"));
        assert!(!topic_matches("+/broker/#", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn first_matching_export_rule_names_the_topic() {
        let r = rules(
            "[[bridge.mqtt.export]]\npattern = \"sensors/#\"\nprefix = \"home/\"\nqos = 0\nretain = true\n\
             [[bridge.mqtt.export]]\npattern = \"#\"\nprefix = \"ipchub/\"\n",
        );
        assert_eq!(
            r.export("sensors/kitchen", false),
            Some(Outbound {
                topic: "home/sensors/kitchen".into(),
                qos: 0,
                retain: true
            })
        );
        let other = r.export("logs/app", false).unwrap();
        assert_eq!(
            (other.topic.as_str(), other.qos, other.retain),
            ("ipchub/logs/app", 1, false)
        );
    }

    #[test]
    fn retained_flags_pass_through_unless_a_rule_says_otherwise() {
        let r = rules(
            "[[bridge.mqtt.export]]\npattern = \"never/#\"\nretain = false\n\
             [[bridge.mqtt.export]]\npattern = \"#\"\n\
             [[bridge.mqtt.import]]\nfilter = \"always/#\"\nretain = true\n\
             [[bridge.mqtt.import]]\nfilter = \"never/#\"\nretain = false\n\
             [[bridge.mqtt.import]]\nfilter = \"#\"\n",
        );
        assert!(r.export("a", true).unwrap().retain);
        assert!(!r.export("a", false).unwrap().retain);
        assert!(!r.export("never/a", true).unwrap().retain);
        assert_eq!(r.import("x", true).unwrap(), ("x".to_string(), true));
        assert_eq!(r.import("x", false).unwrap(), ("x".to_string(), false));
        assert!(r.import("always/x", false).unwrap().1);
        assert!(!r.import("never/x", true).unwrap().1);
        // A channel that retains every message is exported retained.
        let r = r.with_retained_channels(&[("st/#".into(), true)]);
        assert!(r.export("st/a", false).unwrap().retain);
        assert!(!r.export("other", false).unwrap().retain);
        assert!(!r.export("never/a", false).unwrap().retain);
    }

    #[test]
    fn imports_map_topics_to_valid_channels_only() {
        let r = rules("[[bridge.mqtt.import]]\nfilter = \"cmd/#\"\nprefix = \"mqtt/\"\n");
        assert_eq!(
            r.import("cmd/lamp/on", false).unwrap().0,
            "mqtt/cmd/lamp/on"
        );
        assert!(matches!(
            r.import("other", false),
            Err(ImportError::NoRule(_))
        ));
        assert!(matches!(
            r.import("cmd/with space", false),
            Err(ImportError::BadChannel { .. })
        ));
        assert!(matches!(
            r.import("cmd//empty", false),
            Err(ImportError::BadChannel { .. })
        ));
    }
}
