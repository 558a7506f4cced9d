//! Tail of one channel for a page: a hub subscription of its own, held only
//! while the page's event stream is open, forwarding at most a bounded rate
//! of cut payloads (as text or hex) through a bounded queue.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::client::{Client, ClientError, Event, Options};

/// Events queued towards one page at most; beyond, messages are skipped.
const QUEUE: usize = 64;
/// How often the thread looks whether the page went away.
const CHECK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Hex,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TailEvent {
    /// The subscription is in place.
    Subscribed { pattern: String },
    Message {
        channel: String,
        seq: u64,
        origin: u32,
        /// Full payload length in bytes.
        len: usize,
        /// The first bytes, as text (invalid UTF-8 replaced) or hex.
        payload: String,
        truncated: bool,
        /// Messages not shown since the previous one (rate limit or a slow page).
        skipped: u64,
    },
    /// Messages the hub dropped for this tail (overflow = drop-oldest).
    Missed { count: u64 },
    /// The tail ended: refused (no read right), or the hub went away.
    Error { text: String },
}

pub struct TailRequest {
    pub options: Options,
    pub pattern: String,
    pub format: Format,
    pub max_bytes: usize,
    pub rate: u32,
}

fn render(payload: &[u8], format: Format, max: usize) -> (String, bool) {
    let cut = &payload[..payload.len().min(max)];
    let s = match format {
        Format::Text => String::from_utf8_lossy(cut).into_owned(),
        Format::Hex => {
            let mut s = String::with_capacity(cut.len() * 3);
            for (i, b) in cut.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
    };
    (s, payload.len() > max)
}

/// Start the tail's thread; it ends soon after the receiver is dropped.
pub fn start(req: TailRequest) -> mpsc::Receiver<TailEvent> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("dashboard-tail".into())
        .spawn(move || {
            if let Err(e) = run(&req, &tx) {
                let _ = tx.try_send(TailEvent::Error {
                    text: e.to_string(),
                });
            }
        })
        .ok();
    rx
}

fn run(req: &TailRequest, tx: &mpsc::Sender<TailEvent>) -> Result<(), ClientError> {
    let mut client = Client::connect(&req.options)?;
    client.subscribe(&req.pattern)?;
    let _ = tx.try_send(TailEvent::Subscribed {
        pattern: req.pattern.clone(),
    });
    let mut window = Instant::now();
    let mut in_window = 0u32;
    let mut skipped = 0u64;
    while !tx.is_closed() {
        let Some(ev) = client.next_event(Some(CHECK))? else {
            continue;
        };
        match ev {
            Event::Message(m) => {
                if window.elapsed() >= Duration::from_secs(1) {
                    window = Instant::now();
                    in_window = 0;
                }
                if in_window >= req.rate {
                    skipped += 1;
                    continue;
                }
                let (payload, truncated) = render(&m.payload, req.format, req.max_bytes);
                let ev = TailEvent::Message {
                    channel: m.channel,
                    seq: m.seq,
                    origin: m.origin,
                    len: m.payload.len(),
                    payload,
                    truncated,
                    skipped,
                };
                match tx.try_send(ev) {
                    Ok(()) => {
                        in_window += 1;
                        skipped = 0;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => skipped += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            Event::Missed(n) => {
                let _ = tx.try_send(TailEvent::Missed { count: n });
            }
            Event::Error { text, .. } => {
                let _ = tx.try_send(TailEvent::Error { text });
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_cut_and_shown_as_text_or_hex() {
        assert_eq!(render(b"hello", Format::Text, 3), ("hel".into(), true));
        assert_eq!(render(b"hi", Format::Text, 3), ("hi".into(), false));
        assert_eq!(
            render(&[0, 255, 16], Format::Hex, 8),
            ("00 ff 10".into(), false)
        );
        assert_eq!(
            render(&[0xff, b'a'], Format::Text, 8),
            ("\u{fffd}a".into(), false)
        );
    }
}
