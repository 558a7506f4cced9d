//! `ipchubctl history`: list what a channel's history holds (in memory, and
//! on disk for `storage = "disk"`), oldest first.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args as ClapArgs;

use crate::client::{Client, Options, Replay, SubscribeOptions};
use crate::wire::TransportKind;

#[derive(Debug, ClapArgs)]
pub struct HistoryArgs {
    /// The channel (exact name) whose stored messages to list.
    pub channel: String,
    /// One JSON object per message (channel_seq, sequence, publisher, priority, payload).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: Option<PathBuf>, a: HistoryArgs) -> anyhow::Result<i32> {
    crate::wire::channel::validate_name(&a.channel)
        .map_err(|e| anyhow::anyhow!("invalid channel: {e}"))?;
    let mut c = Client::connect(&Options {
        socket,
        transport: TransportKind::Socket,
        name: "ipchubctl history".into(),
        reconnect: crate::client::Reconnect::off(),
    })?;
    // Subscribing makes the channel known (a log read back at start has
    // none yet) and checks that we may read it; then statistics say what
    // is stored.
    let plain = SubscribeOptions {
        retained: false,
        ..SubscribeOptions::default()
    };
    c.subscribe_with(&a.channel, plain)?;
    let st = c.stats()?;
    c.unsubscribe(&a.channel)?;
    let Some(ch) = st.channels.iter().find(|ch| ch.name == a.channel) else {
        bail!("no channel '{}' (or you may not read it)", a.channel);
    };
    if ch.stored_messages == 0 {
        println!(
            "'{}': no stored messages (last sequence number {})",
            a.channel, ch.last_seq
        );
        return Ok(0);
    }
    let (first, last) = (ch.first_seq, ch.last_seq);
    if !a.json {
        println!(
            "'{}': {} messages, {} bytes, sequence numbers {first}..{last}",
            a.channel, ch.stored_messages, ch.stored_bytes
        );
    }
    c.subscribe_with(
        &a.channel,
        SubscribeOptions {
            retained: false,
            replay: Some(Replay::FromSeq(first)),
            ..SubscribeOptions::default()
        },
    )?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let deadline = Instant::now() + Duration::from_secs(30);
    // Live messages from the first subscription may come first: skip all
    // but the next number expected.
    let mut expected = first;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = c.recv(Some(left))? else {
            bail!("the replay stopped short of sequence number {last}");
        };
        let Some(seq) = m.channel_seq.filter(|s| *s == expected) else {
            continue;
        };
        expected += 1;
        if a.json {
            let payload = String::from_utf8_lossy(&m.payload);
            let obj = serde_json::json!({
                "channel_seq": seq,
                "sequence": m.seq,
                "publisher": { "client": m.origin },
                "priority": m.priority,
                "payload": payload,
            });
            writeln!(out, "{obj}")?;
        } else {
            // Control characters escaped: a payload cannot rewrite the terminal.
            let text = String::from_utf8_lossy(&m.payload);
            writeln!(out, "{seq}\t{}", crate::daemon::logging::escape(&text))?;
        }
        if seq >= last {
            break;
        }
    }
    out.flush()?;
    Ok(0)
}
