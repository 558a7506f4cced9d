//! How `ipchubctl sub` prints a message: `[channel] payload`, payload lines, raw bytes, JSON or a `-F` format.

use std::collections::HashMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::Message;

/// A `-F/--format` string that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format token '%{0}' (see ipchubctl(1) for the tokens)")]
    UnknownToken(char),
    #[error("the format ends in a lone '%'; write '%%' for a percent sign")]
    TrailingPercent,
}

/// One piece of a parsed `-F` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u8>),
    /// `%t`
    Channel,
    /// `%p`
    Payload,
    /// `%x`
    PayloadHex,
    /// `%l`
    PayloadLen,
    /// `%I`
    IsoTime,
    /// `%U`
    UnixTime,
    /// `%s` (ours)
    Seq,
    /// `%o` (ours)
    Origin,
    /// `%y` (ours)
    Priority,
}

/// Parse a format string: mosquitto_sub's `%` tokens that apply here, ours,
/// and the escapes `\n`, `\t`, `\\`.
pub fn parse(fmt: &str) -> Result<Vec<Piece>, FormatError> {
    let mut out = Vec::new();
    let mut text = Vec::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        let piece = match c {
            '%' => match chars.next() {
                None => return Err(FormatError::TrailingPercent),
                Some('%') => {
                    text.push(b'%');
                    continue;
                }
                Some('t') => Piece::Channel,
                Some('p') => Piece::Payload,
                Some('x') => Piece::PayloadHex,
                Some('l') => Piece::PayloadLen,
                Some('I') => Piece::IsoTime,
                Some('U') => Piece::UnixTime,
                Some('s') => Piece::Seq,
                Some('o') => Piece::Origin,
                Some('y') => Piece::Priority,
                Some(other) => return Err(FormatError::UnknownToken(other)),
            },
            '\\' => {
                match chars.next() {
                    Some('n') => text.push(b'\n'),
                    Some('t') => text.push(b'\t'),
                    Some('\\') => text.push(b'\\'),
                    Some(other) => {
                        text.push(b'\\');
                        text.extend_from_slice(other.to_string().as_bytes());
                    }
                    None => text.push(b'\\'),
                }
                continue;
            }
            c => {
                let mut b = [0u8; 4];
                text.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                continue;
            }
        };
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        out.push(piece);
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// The moment a message was received, as the output formats print it.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    secs: u64,
    nanos: u32,
}

impl Stamp {
    pub fn now() -> Stamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }

    /// Unix time with nanoseconds: `1765062225.123456789`.
    pub fn unix(&self) -> String {
        format!("{}.{:09}", self.secs, self.nanos)
    }

    /// ISO 8601 in UTC: `2026-12-06T22:43:45Z` (`with_micros`:
    /// `2026-12-06T22:43:45.123456Z`).
    pub fn iso(&self, with_micros: bool) -> String {
        let days = (self.secs / 86_400) as i64;
        let rem = self.secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
        if with_micros {
            format!(
                "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
                self.nanos / 1000
            )
        } else {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Write `m` as the pieces say, then a newline.
pub fn write_formatted(
    out: &mut impl Write,
    pieces: &[Piece],
    m: &Message,
    at: Stamp,
) -> std::io::Result<()> {
    for p in pieces {
        match p {
            Piece::Text(t) => out.write_all(t)?,
            Piece::Channel => out.write_all(m.channel.as_bytes())?,
            Piece::Payload => out.write_all(&m.payload)?,
            Piece::PayloadHex => out.write_all(hex(&m.payload).as_bytes())?,
            Piece::PayloadLen => write!(out, "{}", m.payload.len())?,
            Piece::IsoTime => out.write_all(at.iso(false).as_bytes())?,
            Piece::UnixTime => out.write_all(at.unix().as_bytes())?,
            Piece::Seq => write!(out, "{}", m.seq)?,
            Piece::Origin => write!(out, "{}", m.origin)?,
            Piece::Priority => write!(out, "{}", m.priority)?,
        }
    }
    out.write_all(b"\n")
}

/// Lower-case hex, two digits a byte.
pub fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What the hub said about a publishing client, from its statistics.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub pid: i32,
    pub uid: u32,
    pub name: String,
}

/// Publishers looked up by client id; `None` remembers "not known" (the
/// client had gone, or the hub did not show it to us) so that every
/// message from it does not cost a statistics round trip.
pub type Publishers = HashMap<u32, Option<Publisher>>;

/// One message as a JSON object: channel, payload (or payload_base64 when
/// it is not UTF-8), sequence, publisher (client id, and pid/uid/name where
/// known), priority, and the time it was received.
pub fn json(m: &Message, publisher: Option<&Publisher>, at: Stamp) -> serde_json::Value {
    let payload = match std::str::from_utf8(&m.payload) {
        Ok(s) => ("payload", serde_json::Value::from(s)),
        Err(_) => (
            "payload_base64",
            serde_json::Value::from(base64(&m.payload)),
        ),
    };
    let mut obj = serde_json::Map::new();
    obj.insert("channel".into(), m.channel.clone().into());
    obj.insert(payload.0.into(), payload.1);
    obj.insert("sequence".into(), m.seq.into());
    let mut p = serde_json::Map::new();
    p.insert("client".into(), m.origin.into());
    if let Some(info) = publisher {
        p.insert("pid".into(), info.pid.into());
        p.insert("uid".into(), info.uid.into());
        p.insert("name".into(), info.name.clone().into());
    }
    obj.insert("publisher".into(), p.into());
    obj.insert("priority".into(), m.priority.into());
    if m.retained {
        obj.insert("retained".into(), true.into());
    }
    if let Some(cs) = m.channel_seq {
        obj.insert("channel_seq".into(), cs.into());
    }
    obj.insert("time".into(), at.iso(true).into());
    obj.insert(
        "time_unix".into(),
        at.unix().parse::<f64>().unwrap_or(0.0).into(),
    );
    serde_json::Value::Object(obj)
}

/// Standard base64 (RFC 4648) for binary payloads in JSON output.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn dates_come_out_in_the_gregorian_calendar() {
        for (secs, iso) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(Stamp { secs, nanos: 0 }.iso(false), iso);
        }
        let s = Stamp {
            secs: 1,
            nanos: 5_000,
        };
        assert_eq!(s.iso(true), "1970-01-01T00:00:01.000005Z");
        assert_eq!(s.unix(), "1.000005000");
    }

    #[test]
    fn formats_parse_tokens_escapes_and_reject_unknown_ones() {
        assert_eq!(
            parse("%t\\t%p 100%%").unwrap(),
            vec![
                Piece::Channel,
                Piece::Text(b"\t".to_vec()),
                Piece::Payload,
                Piece::Text(b" 100%".to_vec()),
            ]
        );
        assert!(matches!(parse("%q"), Err(FormatError::UnknownToken('q'))));
        assert!(matches!(parse("x%"), Err(FormatError::TrailingPercent)));
    }
}
