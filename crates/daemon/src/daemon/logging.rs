//! Log output: the journal when stderr is connected to it, plain text otherwise.
//!
//! systemd sets `JOURNAL_STREAM=dev:inode` for a service whose stderr goes to
//! the journal; when it matches our stderr we log natively (structured fields
//! such as `client_pid` become journal fields). Otherwise plain text, with
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

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::{fmt as tfmt, prelude::*, EnvFilter};

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
        if self.result.is_err() {
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

/// Install the global subscriber. `level` is the config's `log.level`;
/// `IPCHUB_LOG` overrides it with any tracing filter.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_env("IPCHUB_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
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
}
