//! Access control: who may publish to and subscribe to which channels.
//!
//! Rules are evaluated from kernel credentials only (SO_PEERCRED uid/gid and
//! the connecting process's supplementary groups), never from anything a client says, so one
//! policy covers every transport. The first rule whose pattern matches a
//! channel decides; channels no rule matches get `[access] default`
//! ("allow" unless configured: a local hub is open to local users, like the
//! session bus). A subscription with wildcards is accepted, but channels its
//! owner may not read are left out of it, as MQTT brokers do; an exact
//! subscription that is denied is refused with NOT_PERMITTED.

use crate::config::{AccessConfig, AccessDefault};
use crate::wire::Pattern;

/// Who a rule grants to, resolved to numbers when the configuration loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anyone,
    Uid(u32),
    Gid(u32),
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Publish,
    Subscribe,
}

impl Op {
    pub fn verb(self) -> &'static str {
        match self {
            Op::Publish => "publish to",
            Op::Subscribe => "subscribe to",
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    publish: Vec<Principal>,
    subscribe: Vec<Principal>,
}

/// A client's credentials as access control sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups the connecting process holds (read from
    /// `/proc/<pid>/status` at accept, never the user database).
    pub groups: Vec<u32>,
}

impl Credentials {
    fn has(&self, p: &Principal) -> bool {
        match p {
            Principal::Anyone => true,
            Principal::Uid(u) => *u == self.uid,
            Principal::Gid(g) => *g == self.gid || self.groups.contains(g),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default_allow: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            default_allow: true,
        }
    }
}

/// Resolve `user:NAME`, `group:NAME`, `uid:N`, `gid:N` and `*`.
pub fn parse_principal(s: &str) -> Result<Principal, String> {
    if s == "*" {
        return Ok(Principal::Anyone);
    }
    let (kind, value) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}': expected *, uid:N, gid:N, user:NAME or group:NAME"))?;
    let num = |v: &str| v.parse::<u32>().map_err(|_| format!("'{s}': not a number"));
    match kind {
        "uid" => Ok(Principal::Uid(num(value)?)),
        "gid" => Ok(Principal::Gid(num(value)?)),
        "user" => nix::unistd::User::from_name(value)
            .ok()
            .flatten()
            .map(|u| Principal::Uid(u.uid.as_raw()))
            .ok_or_else(|| format!("'{s}': no such user")),
        "group" => nix::unistd::Group::from_name(value)
            .ok()
            .flatten()
            .map(|g| Principal::Gid(g.gid.as_raw()))
            .ok_or_else(|| format!("'{s}': no such group")),
        _ => Err(format!(
            "'{s}': expected *, uid:N, gid:N, user:NAME or group:NAME"
        )),
    }
}

impl Policy {
    /// Build from configuration (names resolved now; errors name the rule).
    pub fn from_config(cfg: &AccessConfig) -> Result<Policy, String> {
        let mut rules = Vec::new();
        for (i, r) in cfg.rule.iter().enumerate() {
            let pattern =
                Pattern::parse(&r.pattern).map_err(|e| format!("access.rule[{i}].pattern: {e}"))?;
            let list = |v: &[String], key: &str| -> Result<Vec<Principal>, String> {
                v.iter()
                    .map(|p| parse_principal(p).map_err(|e| format!("access.rule[{i}].{key}: {e}")))
                    .collect()
            };
            rules.push(Rule {
                pattern,
                publish: list(&r.publish, "publish")?,
                subscribe: list(&r.subscribe, "subscribe")?,
            });
        }
        Ok(Policy {
            rules,
            default_allow: cfg.default == AccessDefault::Allow,
        })
    }

    /// The index of the rule governing a concrete channel (None: default).
    pub fn rule_for(&self, channel: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.pattern.matches(channel))
    }

    /// May `who` do `op` on `channel`, given the rule found by [`rule_for`](Self::rule_for)?
    pub fn allows_with(&self, rule: Option<usize>, who: &Credentials, op: Op) -> bool {
        match rule.and_then(|i| self.rules.get(i)) {
            None => self.default_allow,
            Some(r) => {
                let list = match op {
                    Op::Publish => &r.publish,
                    Op::Subscribe => &r.subscribe,
                };
                list.iter().any(|p| who.has(p))
            }
        }
    }

    /// May every local user, whoever it is, do `op` on a channel governed
    /// by `rule`? (What may be shown to anyone, e.g. broadcast on D-Bus.)
    pub fn open_to_all(&self, rule: Option<usize>, op: Op) -> bool {
        match rule.and_then(|i| self.rules.get(i)) {
            None => self.default_allow,
            Some(r) => match op {
                Op::Publish => &r.publish,
                Op::Subscribe => &r.subscribe,
            }
            .contains(&Principal::Anyone),
        }
    }

    pub fn allows(&self, channel: &str, who: &Credentials, op: Op) -> bool {
        self.allows_with(self.rule_for(channel), who, op)
    }

    /// Whether every member of `who` may do `op` on `channel`: `Anyone`
    /// needs a rule granting "*", `Gid(g)` one granting "*" or `gid:g`
    /// (a grant to some of the members does not cover all of them).
    pub fn allows_all_of(&self, channel: &str, who: &Principal, op: Op) -> bool {
        match self.rule_for(channel).and_then(|i| self.rules.get(i)) {
            None => self.default_allow,
            Some(r) => {
                let list = match op {
                    Op::Publish => &r.publish,
                    Op::Subscribe => &r.subscribe,
                };
                list.iter().any(|p| *p == Principal::Anyone || p == who)
            }
        }
    }

    /// Whether the policy restricts anything at all (fast path when not).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.default_allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessRule;

    fn policy(default: AccessDefault, rules: &[(&str, &[&str], &[&str])]) -> Policy {
        let cfg = AccessConfig {
            default,
            rule: rules
                .iter()
                .map(|(p, publ, sub)| AccessRule {
                    pattern: p.to_string(),
                    publish: publ.iter().map(|s| s.to_string()).collect(),
                    subscribe: sub.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        };
        Policy::from_config(&cfg).unwrap()
    }

    fn who(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn first_matching_rule_decides_and_default_covers_the_rest() {
        let p = policy(
            AccessDefault::Allow,
            &[
                ("secure/#", &["uid:0", "gid:50"], &["*"]),
                ("#", &["*"], &["uid:1000"]),
            ],
        );
        assert!(p.allows("secure/x", &who(0, 0, &[]), Op::Publish));
        assert!(
            p.allows("secure/x", &who(1000, 1000, &[50]), Op::Publish),
            "supplementary group"
        );
        assert!(!p.allows("secure/x", &who(1000, 1000, &[]), Op::Publish));
        assert!(p.allows("secure/x", &who(1000, 1000, &[]), Op::Subscribe));
        assert!(!p.allows("other", &who(1001, 1001, &[]), Op::Subscribe));
        let closed = policy(AccessDefault::Deny, &[("public/#", &["*"], &["*"])]);
        assert!(closed.allows("public/a", &who(5, 5, &[]), Op::Publish));
        assert!(!closed.allows("private", &who(5, 5, &[]), Op::Publish));
        assert!(Policy::default().is_open());
    }

    #[test]
    fn principals_are_resolved_or_refused_by_name() {
        assert_eq!(parse_principal("user:root"), Ok(Principal::Uid(0)));
        assert_eq!(parse_principal("group:root"), Ok(Principal::Gid(0)));
        assert!(parse_principal("user:no-such-user-here")
            .unwrap_err()
            .contains("no such user"));
        assert!(parse_principal("uid:x").is_err());
        assert!(parse_principal("friend:bob").is_err());
    }
}
