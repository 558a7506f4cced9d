//! Log output: the journal when stderr is connected to it, plain text otherwise.
//!
//! systemd sets `JOURNAL_STREAM=dev:inode` for a service whose stderr goes to
//! the journal; when it matches our stderr (or under `--log journal`) we log
//! natively: each structured field becomes a journal field named
//! `IPCHUB_<FIELD>` (`client_pid` → `IPCHUB_CLIENT_PID`), the events an
//! operator filters on carry a fixed `MESSAGE_ID` ([`msgid`]), and levels map
//! to syslog priorities as journalctl shows them (INFO is 6, not 5). These
//! names are an interface, listed in ipchubd(8). Otherwise plain text, with
//! colours only on a terminal.
//!
//! Clients choose some of what is logged (names, rejected HELLO values, error
//! texts quoting them). In plain text every field and message is written
//! through [`escape`], so no byte a client sends can end a line (forging the
//! next one), move a terminal's cursor or recolour it; the journal keeps
//! each field length-delimited. Values are also escaped where they are
//! quoted ([`excerpt`]), and how many lines a client can cause is limited
//! (`hub::loglimit`).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::layer::Context;
use tracing_subscriber::{fmt as tfmt, prelude::*, EnvFilter};

pub use crate::hub::loglimit::msgid;

/// The field of a log call that carries its [`msgid`].
const MESSAGE_ID_FIELD: &str = "message_id";

/// Where the log goes (`ipchubd --log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogTarget {
    /// The journal when systemd connected standard error to it
    /// (`JOURNAL_STREAM`), else standard error.
    #[default]
    Auto,
    /// The journal's native protocol, whatever standard error is.
    Journal,
    /// Plain text on standard error.
    Stderr,
}

/// Characters that must not reach a log or a terminal as they are: control
/// characters (C0, DEL, C1: line ends, ANSI escapes) and the Unicode marks
/// that reorder text on display.
pub fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every hostile character escaped (`\n`, `\r`, `\u{1b}`…), so
/// it stays on one line and shows as written.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_hostile(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A client-supplied value as it may be quoted in an error or a log line:
/// escaped, and cut to at most `max` characters (with `…`).
pub fn excerpt(s: &str, max: usize) -> String {
    let escaped = escape(s);
    match escaped.char_indices().nth(max) {
        None => escaped.into_owned(),
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
    }
}

/// Formats event fields like the default formatter (`message` bare, the
/// others `name=value`), with every value escaped.
struct EscapingFields;

impl<'w> FormatFields<'w> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name() == MESSAGE_ID_FIELD {
            return;
        }
        let text = format!("{value:?}");
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{sep}{}", escape(&text)),
            name => write!(self.writer, "{sep}{name}={}", escape(&text)),
        };
    }
}

fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd().as_raw_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// The journal's native socket; `IPCHUB_JOURNAL_SOCKET` replaces it (for
/// tests, and containers that pass the journal in elsewhere).
fn journal_socket_path() -> PathBuf {
    std::env::var_os("IPCHUB_JOURNAL_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/systemd/journal/socket"))
}

/// Writes events to the journal in its native protocol
/// (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): one datagram an event,
/// every field length-prefixed, so nothing a client sends can forge one.
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalLayer {
    /// Fails if the journal's socket does not take a datagram.
    pub fn new() -> std::io::Result<JournalLayer> {
        let layer = JournalLayer {
            socket: UnixDatagram::unbound()?,
            path: journal_socket_path(),
        };
        // journald discards an empty datagram: a check that it listens.
        layer.socket.send_to(&[], &layer.path)?;
        Ok(layer)
    }
}

/// Syslog priority of a level: ERROR 3, WARN 4, INFO 6, DEBUG and TRACE 7.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Append one field, length-prefixed (safe for any value).
fn put_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// The journal field for a tracing field: `message` is `MESSAGE`,
/// `message_id` is `MESSAGE_ID`, any other `IPCHUB_` and its name in
/// capitals (characters journald refuses become `_`).
pub fn journal_field_name(name: &str) -> String {
    match name {
        "message" => "MESSAGE".into(),
        MESSAGE_ID_FIELD => "MESSAGE_ID".into(),
        other => {
            let mut out = String::from("IPCHUB_");
            out.extend(other.chars().map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            }));
            out
        }
    }
}

struct JournalVisitor<'a>(&'a mut Vec<u8>);

impl Visit for JournalVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        put_field(self.0, &journal_field_name(field.name()), value.as_bytes());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        put_field(self.0, &journal_field_name(field.name()), text.as_bytes());
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut buf = Vec::with_capacity(256);
        put_field(&mut buf, "PRIORITY", &[b'0' + priority(meta.level())]);
        put_field(&mut buf, "SYSLOG_IDENTIFIER", b"ipchubd");
        if let Some(file) = meta.file() {
            put_field(&mut buf, "CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            put_field(&mut buf, "CODE_LINE", line.to_string().as_bytes());
        }
        event.record(&mut JournalVisitor(&mut buf));
        // Nothing to do about a journal that is gone.
        let _ = self.socket.send_to(&buf, &self.path);
    }
}

/// Install the global subscriber. `level` is the config's `log.level`;
/// `IPCHUB_LOG` overrides it with any tracing filter.
pub fn init(level: &str, target: LogTarget) {
    let filter = EnvFilter::try_from_env("IPCHUB_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let journal = match target {
        LogTarget::Auto => stderr_is_journal(),
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
    };
    if journal {
        match JournalLayer::new() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) if target == LogTarget::Journal => {
                eprintln!(
                    "ipchubd: cannot log to the journal ({}: {e}); logging to standard error",
                    journal_socket_path().display()
                );
            }
            Err(_) => {}
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tfmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(false)
                .fmt_fields(EscapingFields),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_reordering_marks_are_escaped() {
        assert_eq!(escape("plain name/1"), "plain name/1");
        assert_eq!(
            escape("a\r\nINFO forged\u{1b}[31m\u{202e}x\u{7f}"),
            "a\\r\\nINFO forged\\u{1b}[31m\\u{202e}x\\u{7f}"
        );
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("a\nb", 10), "a\\nb");
    }

    #[test]
    fn journal_fields_are_prefixed_and_priorities_are_syslog_s() {
        assert_eq!(journal_field_name("client_pid"), "IPCHUB_CLIENT_PID");
        assert_eq!(journal_field_name("message"), "MESSAGE");
        assert_eq!(journal_field_name("message_id"), "MESSAGE_ID");
        assert_eq!(journal_field_name("a.b-c"), "IPCHUB_A_B_C");
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::DEBUG), 7);
        for id in [
            msgid::READY,
            msgid::CLIENT_CONNECTED,
            msgid::CLIENT_DISCONNECTED,
            msgid::ACCESS_DENIED,
            msgid::SLOW_CONSUMER,
            msgid::MESSAGES_DROPPED,
            msgid::RING_RETIRED,
            msgid::RELOADED,
            msgid::RELOAD_FAILED,
        ] {
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
