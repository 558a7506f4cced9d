//! Who may change things over D-Bus (Publish, DisconnectClient and Reload),
//! and what a caller may see (ListChannels, ListClients, ChannelStats).
//!
//! The bus policy (`etc/dbus-1/system.d/org.ipchub.conf`) already limits
//! those methods to root and group `ipchub`. We check again here, from the
//! caller's credentials as the bus daemon reports them, because a policy file
//! is easy to loosen by accident and the methods publish into every client.
//! The read-only methods answer from a statistics view built for the
//! caller's credentials ([`Access::viewer`]), as the control socket does.

use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::names::BusName;
use zbus::Connection;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::CallError;
use crate::hub::access::Credentials;
use crate::hub::loglimit::{LogKind, LogLimiter};
use crate::hub::Viewer;

/// The group whose members may administer the hub (besides root).
pub const ADMIN_GROUP: &str = "ipchub";

#[derive(Debug, Clone)]
pub struct Access {
    /// The daemon's own uid: a caller running as the same user could signal
    /// or kill the daemon anyway, and it makes a session bus usable in development.
    own_uid: u32,
    /// gid of [`ADMIN_GROUP`], if the group exists on this system.
    admin_gid: Option<u32>,
    /// Refusals are logged per caller uid within `log.rate_limit_*`, so a
    /// caller let through by a loosened bus policy cannot flood the log.
    log: Arc<Mutex<LogLimiter>>,
}

impl Access {
    /// Look the admin group up once, at start.
    pub fn from_system() -> Access {
        let admin_gid = nix::unistd::Group::from_name(ADMIN_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        let d = crate::config::LogConfig::default();
        Access {
            own_uid: nix::unistd::geteuid().as_raw(),
            admin_gid,
            log: Arc::new(Mutex::new(LogLimiter::new(
                d.rate_limit_burst,
                d.rate_limit_per_minute,
            ))),
        }
    }

    /// Use the configured limits for refusal log lines.
    pub fn with_log_limits(self, burst: u32, per_minute: u32) -> Access {
        if let Ok(mut l) = self.log.lock() {
            l.set_limits(burst, per_minute);
        }
        self
    }

    /// May a refusal caused by `uid` be logged now (u32::MAX: unknown)?
    fn log_allowed(&self, uid: u32) -> bool {
        self.log
            .lock()
            .map_or(true, |mut l| l.allow(uid, LogKind::Denied, Instant::now()))
    }

    /// Log the summaries of suppressed refusals that are due (called
    /// periodically by the D-Bus thread).
    pub fn log_summaries(&self) {
        let due = match self.log.lock() {
            Ok(mut l) => l.take_due(Instant::now()),
            Err(_) => return,
        };
        for (uid, _, n) in due {
            tracing::warn!(
                caller_uid = uid,
                suppressed = n,
                "{n} similar messages suppressed (D-Bus calls refused to uid {uid}; limits log.rate_limit_burst, log.rate_limit_per_minute)"
            );
        }
    }

    /// The decision itself, pure.
    pub fn may_administer(&self, uid: u32, gids: &[u32]) -> bool {
        uid == 0 || uid == self.own_uid || self.admin_gid.is_some_and(|g| gids.contains(&g))
    }

    /// What a caller with these credentials may see: everything for those
    /// who may administer (they disconnect clients by id), otherwise what
    /// its uid and groups may read, as on the control socket.
    pub fn viewer_for(&self, uid: u32, gids: &[u32]) -> Viewer {
        if self.may_administer(uid, gids) {
            return Viewer::All;
        }
        // The bus reports every group of the caller; the primary one comes
        // from the user database, as for clients of the socket.
        let gid = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(
                || gids.first().copied().unwrap_or(u32::MAX),
                |u| u.gid.as_raw(),
            );
        Viewer::User(Credentials {
            uid,
            gid,
            groups: gids.to_vec(),
        })
    }

    /// Ask the bus who sent `call` and what it may see. A caller the bus
    /// cannot identify sees what everyone may see.
    pub async fn viewer(&self, conn: &Connection, call: &Header<'_>) -> Viewer {
        let Some(sender) = call.sender() else {
            return Viewer::Public;
        };
        let creds = async {
            DBusProxy::new(conn)
                .await?
                .get_connection_credentials(BusName::Unique(sender.to_owned()))
                .await
        }
        .await;
        match creds {
            Ok(c) => match c.unix_user_id() {
                Some(uid) => {
                    self.viewer_for(uid, c.unix_group_ids().map_or(&[][..], |g| g.as_slice()))
                }
                None => Viewer::Public,
            },
            Err(e) => {
                tracing::warn!("cannot get the credentials of D-Bus caller {sender}: {e}");
                Viewer::Public
            }
        }
    }

    /// Ask the bus who sent `call` and decide. Any failure to find out denies.
    pub async fn check(
        &self,
        conn: &Connection,
        call: &Header<'_>,
        what: &str,
    ) -> Result<(), CallError> {
        let denied = |why: String, uid: u32| {
            if self.log_allowed(uid) {
                tracing::warn!(method = what, "D-Bus call refused: {why}");
            }
            Err(CallError::AccessDenied(format!(
                "{what} is limited to root and members of group {ADMIN_GROUP}"
            )))
        };
        let Some(sender) = call.sender() else {
            return denied("no sender on the message".into(), u32::MAX);
        };
        let creds = async {
            DBusProxy::new(conn)
                .await?
                .get_connection_credentials(BusName::Unique(sender.to_owned()))
                .await
        }
        .await;
        let creds = match creds {
            Ok(c) => c,
            Err(e) => {
                return denied(
                    format!("cannot get the credentials of {sender}: {e}"),
                    u32::MAX,
                )
            }
        };
        let Some(uid) = creds.unix_user_id() else {
            return denied(
                format!("the bus did not report the uid of {sender}"),
                u32::MAX,
            );
        };
        let gids = creds.unix_group_ids().map_or(&[][..], |g| g.as_slice());
        if self.may_administer(uid, gids) {
            Ok(())
        } else {
            denied(
                format!(
                    "caller {sender} (uid {uid}, pid {}) is not root nor in group {ADMIN_GROUP}",
                    creds.process_id().map_or(-1, |p| p as i64)
                ),
                uid,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_the_daemons_user_and_the_admin_group_may_administer() {
        let a = Access {
            own_uid: 996,
            admin_gid: Some(995),
            ..Access::from_system()
        };
        assert!(a.may_administer(0, &[]));
        assert!(a.may_administer(996, &[]));
        assert!(a.may_administer(1000, &[100, 995]));
        assert!(!a.may_administer(1000, &[100]));
        assert!(!a.may_administer(65534, &[65534]));
    }

    #[test]
    fn administrators_see_everything_others_what_their_credentials_may() {
        let a = Access {
            own_uid: 996,
            admin_gid: Some(995),
            ..Access::from_system()
        };
        assert_eq!(a.viewer_for(0, &[]), Viewer::All);
        assert_eq!(a.viewer_for(1000, &[995]), Viewer::All);
        match a.viewer_for(65534, &[65534, 7]) {
            Viewer::User(c) => assert_eq!((c.uid, c.groups), (65534, vec![65534, 7])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_the_group_only_root_and_the_daemons_user_may() {
        let a = Access {
            own_uid: 0,
            admin_gid: None,
            ..Access::from_system()
        };
        assert!(a.may_administer(0, &[]));
        assert!(!a.may_administer(1000, &[995]));
    }
}
