//! Channel names and subscription patterns (MQTT-style `+` and `#` wildcards).
//!
//! A channel name is 1..=255 bytes of `/`-separated levels. Each level is
//! non-empty and made of ASCII letters, digits and `_ - . : @ =`. The
//! restrictive alphabet is deliberate: names become FIFO paths under
//! `/run/ipchub/pub/` and MQTT topics, so anything that could mean something to
//! a shell, a filesystem (`..`, NUL) or a broker is refused up front.
//! Patterns add `+` (exactly one level) and `#` (zero or more trailing levels,
//! only as the last level), mapping one-to-one onto MQTT topic filters.

use std::fmt;

/// Longest channel name or pattern, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Deepest hierarchy accepted, in levels.
pub const MAX_LEVELS: usize = 32;

/// Why a channel name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} bytes long (limit {MAX_CHANNEL_LEN})")]
    TooLong { len: usize },
    #[error("channel name has more than {MAX_LEVELS} levels")]
    TooDeep,
    #[error("channel name '{name}' has an empty level (leading, trailing or double '/')")]
    EmptyLevel { name: String },
    #[error("channel name '{name}' contains {found:?}; allowed are letters, digits and _ - . : @ = with '/' between levels")]
    BadCharacter { name: String, found: char },
    #[error("channel level '..' or '.' is not allowed in '{name}'")]
    DotLevel { name: String },
    #[error("wildcards ('+', '#') are only allowed when subscribing, not in '{name}'")]
    WildcardInName { name: String },
    #[error(
        "'#' must be the last level and stand alone, and '+' must be a whole level, in '{name}'"
    )]
    BadWildcard { name: String },
}

fn level_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=')
}

fn check_common(s: &str) -> Result<(), ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong { len: s.len() });
    }
    if s.split('/').count() > MAX_LEVELS {
        return Err(ChannelError::TooDeep);
    }
    Ok(())
}

/// Validate a concrete channel name (what PUBLISH carries).
pub fn validate_name(s: &str) -> Result<(), ChannelError> {
    check_common(s)?;
    for level in s.split('/') {
        check_level(s, level, false)?;
    }
    Ok(())
}

fn check_level(whole: &str, level: &str, wildcards: bool) -> Result<(), ChannelError> {
    if level.is_empty() {
        return Err(ChannelError::EmptyLevel {
            name: whole.to_string(),
        });
    }
    if level == "+" || level == "#" {
        return if wildcards {
            Ok(())
        } else {
            Err(ChannelError::WildcardInName {
                name: whole.to_string(),
            })
        };
    }
    if level == "." || level == ".." {
        return Err(ChannelError::DotLevel {
            name: whole.to_string(),
        });
    }
    if let Some(found) = level.chars().find(|c| !level_char_ok(*c)) {
        return Err(if found == '+' || found == '#' {
            if wildcards {
                ChannelError::BadWildcard {
                    name: whole.to_string(),
                }
            } else {
                ChannelError::WildcardInName {
                    name: whole.to_string(),
                }
            }
        } else {
            ChannelError::BadCharacter {
                name: whole.to_string(),
                found,
            }
        });
    }
    Ok(())
}

/// A validated subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    /// True when the pattern has no wildcard, so matching is string equality.
    exact: bool,
}

impl Pattern {
    /// Parse and validate a subscription pattern.
    pub fn parse(s: &str) -> Result<Pattern, ChannelError> {
        check_common(s)?;
        let levels: Vec<&str> = s.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            check_level(s, level, true)?;
            if *level == "#" && i != levels.len() - 1 {
                return Err(ChannelError::BadWildcard {
                    name: s.to_string(),
                });
            }
        }
        let exact = !levels.iter().any(|l| *l == "+" || *l == "#");
        Ok(Pattern {
            text: s.to_string(),
            exact,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Does this pattern match the (already validated) channel name?
    pub fn matches(&self, channel: &str) -> bool {
        if self.exact {
            return self.text == channel;
        }
        levels_match(&self.text, channel)
    }
}

/// Level-by-level MQTT filter matching, with no validation: `+` matches one
/// level, a trailing `#` the parent level and everything below it. Shared
/// with the MQTT bridge, whose topics use a wider alphabet than channels.
pub fn levels_match(filter: &str, name: &str) -> bool {
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for n in [
            "weather",
            "sensors/kitchen/temp",
            "a-b_c.d:e@f=g",
            "x/1/2/3",
        ] {
            validate_name(n).unwrap();
        }
    }

    #[test]
    fn bad_names_name_the_problem() {
        assert_eq!(validate_name(""), Err(ChannelError::Empty));
        assert!(matches!(
            validate_name("a//b"),
            Err(ChannelError::EmptyLevel { .. })
        ));
        assert!(matches!(
            validate_name("/a"),
            Err(ChannelError::EmptyLevel { .. })
        ));
        assert!(matches!(
            validate_name("a/"),
            Err(ChannelError::EmptyLevel { .. })
        ));
        assert!(matches!(
            validate_name("a/../b"),
            Err(ChannelError::DotLevel { .. })
        ));
        assert!(matches!(
            validate_name("a b"),
            Err(ChannelError::BadCharacter { found: ' ', .. })
        ));
        assert!(matches!(
            validate_name("a/+"),
            Err(ChannelError::WildcardInName { .. })
        ));
        assert!(matches!(
            validate_name("a/#"),
            Err(ChannelError::WildcardInName { .. })
        ));
        assert!(matches!(
            validate_name(&"x".repeat(256)),
            Err(ChannelError::TooLong { len: 256 })
        ));
        assert!(matches!(
            validate_name("a/".repeat(40).trim_end_matches('/')),
            Err(ChannelError::TooDeep)
        ));
        assert!(validate_name("caf\u{e9}").is_err());
    }

    #[test]
    fn wildcard_rules() {
        Pattern::parse("a/+/c").unwrap();
        Pattern::parse("#").unwrap();
        Pattern::parse("a/#").unwrap();
        assert!(Pattern::parse("a/#/c").is_err());
        assert!(Pattern::parse("a+/b").is_err());
        assert!(Pattern::parse("a/b#").is_err());
    }

    #[test]
    fn matching_follows_mqtt() {
        let m = |p: &str, c: &str| Pattern::parse(p).unwrap().matches(c);
        assert!(m("weather", "weather"));
        assert!(!m("weather", "weather/x"));
        assert!(m("sensors/+/temp", "sensors/kitchen/temp"));
        assert!(!m("sensors/+/temp", "sensors/kitchen/hall/temp"));
        assert!(!m("sensors/+", "sensors"));
        assert!(m("sensors/#", "sensors"));
        assert!(m("sensors/#", "sensors/a/b/c"));
        assert!(m("#", "anything/at/all"));
        assert!(!m("a/b", "a"));
        assert!(!m("a", "a/b"));
    }

    proptest::proptest! {
        #[test]
        fn exact_pattern_matches_only_itself(a in "[a-z]{1,5}(/[a-z]{1,5}){0,3}", b in "[a-z]{1,5}(/[a-z]{1,5}){0,3}") {
            let p = Pattern::parse(&a).unwrap();
            proptest::prop_assert_eq!(p.matches(&b), a == b);
            proptest::prop_assert!(Pattern::parse("#").unwrap().matches(&b));
        }
    }
}
