//! Request/reply over ordinary channels: the reply-to envelope, `ipchubctl request` and `ipchubctl reply`.
//!
//! The wire protocol carries a channel and a payload, nothing like MQTT 5's
//! response topic, so the reply channel travels in the payload. A request
//! is a message whose payload starts with one line
//!
//! ```text
//! reply-to=<reply channel>\n<body>
//! ```
//!
//! The requester first subscribes to a reply channel of its own,
//! `_reply/<its client id>/<16 random hex digits>`, then publishes the
//! request; a replier publishes its answer (the body only, no envelope) on
//! that channel. This is an application-level convention: the hub routes
//! these as any other messages, so access rules apply to `_reply/...` too.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError, Event, PublishOptions};
use crate::wire::channel;

/// What opens a request's payload.
pub const REPLY_TO: &[u8] = b"reply-to=";
/// Where reply channels live.
pub const REPLY_PREFIX: &str = "_reply";

/// How a request ended without a reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no subscriber on '{0}': nobody received the request")]
    NoResponders(String),
    #[error("no reply within {0} s")]
    Timeout(f64),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Wrap `body` in the envelope naming `reply_to`.
pub fn envelope(reply_to: &str, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(REPLY_TO.len() + reply_to.len() + 1 + body.len());
    v.extend_from_slice(REPLY_TO);
    v.extend_from_slice(reply_to.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(body);
    v
}

/// The reply channel and the body of a request, or `None` when the payload
/// has no valid envelope (then it is not a request).
pub fn open_envelope(payload: &[u8]) -> Option<(String, &[u8])> {
    let rest = payload.strip_prefix(REPLY_TO)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let ch = std::str::from_utf8(&rest[..nl]).ok()?;
    channel::validate_name(ch).ok()?;
    Some((ch.to_string(), &rest[nl + 1..]))
}

/// A reply channel nobody else can guess: the client id keeps it unique
/// on this hub, the random part keeps others from predicting it.
pub fn reply_channel(client_id: u32) -> std::io::Result<String> {
    let mut r = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut r)?;
    Ok(format!(
        "{REPLY_PREFIX}/{client_id}/{}",
        super::format::hex(&r)
    ))
}

/// Send one request and wait up to `timeout` for its reply.
pub fn request(
    client: &mut Client,
    channel: &str,
    body: &[u8],
    priority: u8,
    timeout: Duration,
) -> Result<Vec<u8>, RequestError> {
    let reply_to = reply_channel(client.id()).map_err(ClientError::Io)?;
    client.subscribe(&reply_to)?;
    let deadline = Instant::now() + timeout;
    let seq = client.publish_with(
        channel,
        &envelope(&reply_to, body),
        PublishOptions {
            ack: true,
            priority,
        },
    )?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(Some(left))? {
            None => return Err(RequestError::Timeout(timeout.as_secs_f64())),
            Some(Event::Message(m)) if m.channel == reply_to => return Ok(m.payload),
            Some(Event::Ack { seq: s, delivered }) if s == seq && delivered == 0 => {
                return Err(RequestError::NoResponders(channel.to_string()))
            }
            Some(Event::Error { seq: s, code, text }) if s == seq => {
                return Err(ClientError::Refused { code, text }.into())
            }
            Some(_) => {}
        }
    }
}

/// What a replier answers with.
pub enum Responder {
    /// The same text to every request.
    Fixed(Vec<u8>),
    /// The standard output of `sh -c CMD`, given the body on standard input.
    Exec(String),
}

impl Responder {
    /// The answer to `body`, which arrived on `channel`.
    pub fn answer(&self, channel: &str, reply_to: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let cmd = match self {
            Responder::Fixed(v) => return Ok(v.clone()),
            Responder::Exec(cmd) => cmd,
        };
        // The body goes to standard input, never into the command line: a
        // request cannot inject shell syntax.
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("IPCHUB_CHANNEL", channel)
            .env("IPCHUB_REPLY_TO", reply_to)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let body = body.to_vec();
        // A writer thread: a command that writes before it has read all of
        // its input would otherwise deadlock against us.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_end(&mut out)?;
        let status = child.wait()?;
        let _ = writer.join();
        if !status.success() {
            eprintln!("ipchubctl: reply command {status}; replying with its output anyway");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_others_are_not_requests() {
        let e = envelope("_reply/7/00ff", b"body\nwith lines");
        assert_eq!(
            open_envelope(&e),
            Some(("_reply/7/00ff".to_string(), &b"body\nwith lines"[..]))
        );
        assert_eq!(open_envelope(b"plain message"), None);
        assert_eq!(open_envelope(b"reply-to=no newline"), None);
        assert_eq!(open_envelope(b"reply-to=bad//name\nx"), None);
        assert_eq!(open_envelope(b"reply-to=a/#\nx"), None);
    }
}
