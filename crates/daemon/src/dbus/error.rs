//! What a D-Bus caller of `org.ipchub.Hub1` can be told when a call fails.
//!
//! Each outcome has its own D-Bus error name, so scripts can tell "not
//! allowed" from "no such channel" without parsing text. A refusal by our
//! own permission check uses the same name as the bus's policy denial
//! (`org.freedesktop.DBus.Error.AccessDenied`): one name to handle.

use zbus::message::{Header, Message};
use zbus::names::ErrorName;
use zbus::DBusError;

use crate::daemon::control::ControlError;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The caller is neither root nor in group `ipchub`.
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    NoSuchChannel(String),
    #[error("{0}")]
    NoSuchClient(String),
    /// The hub refused the operation (bad channel, message too large, full
    /// queue under `block`, invalid configuration on reload); the text says why.
    #[error("{0}")]
    Refused(String),
    /// The data thread did not answer (shutting down or wedged).
    #[error("{0}")]
    Unavailable(String),
}

impl CallError {
    fn name_str(&self) -> &'static str {
        match self {
            CallError::AccessDenied(_) => "org.freedesktop.DBus.Error.AccessDenied",
            CallError::NoSuchChannel(_) => "org.ipchub.Error.NoSuchChannel",
            CallError::NoSuchClient(_) => "org.ipchub.Error.NoSuchClient",
            CallError::Refused(_) => "org.ipchub.Error.Refused",
            CallError::Unavailable(_) => "org.ipchub.Error.Unavailable",
        }
    }

    fn text(&self) -> &str {
        match self {
            CallError::AccessDenied(t)
            | CallError::NoSuchChannel(t)
            | CallError::NoSuchClient(t)
            | CallError::Refused(t)
            | CallError::Unavailable(t) => t,
        }
    }
}

impl From<ControlError> for CallError {
    fn from(e: ControlError) -> Self {
        CallError::Unavailable(e.to_string())
    }
}

impl DBusError for CallError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.name())?.build(&self.text())
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.name_str())
    }

    fn description(&self) -> Option<&str> {
        Some(self.text())
    }
}
