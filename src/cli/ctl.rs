//! `ipchubctl`: publish, subscribe and inspect a running hub.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::client::{Client, Event, Options, PublishOptions};
use crate::daemon::logging::escape;
use crate::hub::TransportKind;

/// ipchubctl: publish, subscribe and inspect the ipchub message hub.
///
/// Every command starts at the hub's control socket. The pub and sub
/// commands then carry messages over the transport chosen with
/// --transport, so each transport can be tried from a shell.
#[derive(Debug, Parser)]
#[command(name = "ipchubctl", version, about, long_about)]
pub struct Args {
    /// Control socket of the hub [default: $XDG_RUNTIME_DIR/ipchub/ipchub.sock
    /// when a hub of your own runs there (never for root), else the system
    /// hub's /run/ipchub/ipchub.sock]
    #[arg(
        long,
        short = 's',
        env = "IPCHUB_SOCKET",
        value_name = "PATH",
        global = true
    )]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a message (or one message per line of standard input).
    ///
    /// Prints `Published (N subscribers)` for each message, N being how many
    /// subscribers it was delivered to. Confirmations are pipelined: lines
    /// from a pipe stream without a round trip each.
    Pub(PubArgs),
    /// Subscribe and print messages as `[channel] payload`.
    Sub(SubArgs),
    /// Show the hub's statistics: totals, the channels you may read and your
    /// own clients (root and the hub's user: all of them).
    Stats(StatsArgs),
    /// Serve a live web dashboard and Prometheus /metrics for this hub.
    ///
    /// Connects as the user who runs it, so it shows what that user may see.
    /// On TCP it prints a URL with a random token that every request must
    /// carry (?token=, a cookie the page then keeps, or Authorization:
    /// Bearer TOKEN) unless --no-token; it refuses non-loopback addresses
    /// unless --allow-remote. It asks the hub for statistics only while a
    /// page is open or /metrics is scraped. Metric names, types and labels:
    /// the DASHBOARD section below.
    Dashboard(crate::dashboard::DashboardArgs),
    /// List the messages a channel's history holds (`[[channel]]` history
    /// keys), oldest first: its channel sequence number, then the payload.
    History(crate::cli::history::HistoryArgs),
    /// Check a configuration file without starting a hub.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

/// Transport choice, shared by pub and sub.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TransportArg {
    Socket,
    Pipe,
    Fifo,
    Mqueue,
    Shm,
}

impl From<TransportArg> for TransportKind {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Socket => TransportKind::Socket,
            TransportArg::Pipe => TransportKind::Pipe,
            TransportArg::Fifo => TransportKind::Fifo,
            TransportArg::Mqueue => TransportKind::Mqueue,
            TransportArg::Shm => TransportKind::Shm,
        }
    }
}

#[derive(Debug, ClapArgs)]
pub struct ConnectArgs {
    /// How to reach the hub for data.
    #[arg(
        long,
        short = 't',
        alias = "backend",
        value_enum,
        default_value = "socket"
    )]
    pub transport: TransportArg,
}

#[derive(Debug, ClapArgs)]
pub struct PubArgs {
    /// Channel to publish on, e.g. `sensors/kitchen/temp`.
    #[arg(long, short = 'c')]
    pub channel: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Message priority 0..=31 (the POSIX mqueue priority, carried to every transport).
    #[arg(long, short = 'p', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=31))]
    pub priority: u8,
    /// Do not ask for delivery counts (prints nothing per message).
    #[arg(long)]
    pub no_confirm: bool,
    /// Keep the message as the channel's retained value, sent first to every
    /// later subscriber; an empty message clears it.
    #[arg(long)]
    pub retain: bool,
    /// The message. Without it, each line of standard input is one message.
    pub message: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct SubArgs {
    /// Channel or pattern to subscribe to (`+` matches one level, `#` the rest); repeatable.
    #[arg(long, short = 'c', required = true)]
    pub channel: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Exit after this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Print one JSON object per message (channel, payload, sequence, publisher, priority).
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Write payload bytes unchanged, nothing else.
    #[arg(long)]
    pub raw: bool,
    /// Give up after this many seconds without a message.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Skip the retained values of the channels (sent first by default).
    #[arg(long)]
    pub no_retained: bool,
    /// Replay the last N stored messages of each channel with history first.
    #[arg(long, value_name = "N", conflicts_with_all = ["since", "from_seq"])]
    pub last: Option<u64>,
    /// Replay the stored messages of the last DURATION first (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration, conflicts_with = "from_seq")]
    pub since: Option<Duration>,
    /// Replay the stored messages from channel sequence number S on first.
    #[arg(long, value_name = "S")]
    pub from_seq: Option<u64>,
}

#[derive(Debug, ClapArgs)]
pub struct StatsArgs {
    /// Print the statistics as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main_with(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Command::Pub(p) => publish(args.socket, p),
        Command::Sub(s) => subscribe(args.socket, s),
        Command::Stats(s) => stats(args.socket, s),
        Command::History(h) => crate::cli::history::run(args.socket, h),
        Command::Dashboard(d) => crate::dashboard::run(args.socket, &d),
        Command::CheckConfig { file } => {
            crate::config::Config::load(Some(&file))?;
            println!("{}: OK", file.display());
            Ok(0)
        }
    }
}

fn connect(socket: Option<PathBuf>, t: TransportArg, role: &str) -> anyhow::Result<Client> {
    let kind: TransportKind = t.into();
    let opts = Options {
        socket,
        transport: kind,
        name: format!("ipchubctl {role}"),
    };
    let client = Client::connect(&opts)?;
    eprintln!("Connected to hub via {}", kind.describe());
    Ok(client)
}

fn publish(socket: Option<PathBuf>, a: PubArgs) -> anyhow::Result<i32> {
    crate::wire::channel::validate_name(&a.channel)
        .map_err(|e| anyhow::anyhow!("invalid channel: {e}"))?;
    let mut client = connect(socket, a.connect.transport, "pub")?;
    let opts = PublishOptions {
        ack: !a.no_confirm,
        priority: a.priority,
    };
    let mut out = std::io::stdout().lock();
    let mut outstanding = 0u64;
    let mut failed = false;
    // Print every confirmation already received, in order.
    let mut report =
        |client: &mut Client, wait_all: bool, outstanding: &mut u64| -> anyhow::Result<bool> {
            let mut ok = true;
            while *outstanding > 0 {
                let ev = if wait_all {
                    client.next_event(None)?
                } else {
                    client.poll_events()?
                };
                match ev {
                    Some(Event::Ack { delivered, .. }) => {
                        *outstanding -= 1;
                        writeln!(out, "Published ({delivered} subscribers)")?;
                    }
                    Some(Event::Error { text, .. }) => {
                        *outstanding -= 1;
                        eprintln!("ipchubctl: publish failed: {text}");
                        ok = false;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            out.flush()?;
            Ok(ok)
        };
    match &a.message {
        Some(m) => {
            publish_one(&mut client, &a, m.as_bytes(), opts)?;
            outstanding += u64::from(opts.ack);
        }
        None => {
            let mut reader = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin().lock());
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader
                    .read_until(b'\n', &mut line)
                    .context("reading standard input")?
                    == 0
                {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                publish_one(&mut client, &a, &line, opts)?;
                outstanding += u64::from(opts.ack);
                // Nothing more buffered from stdin: send now rather than wait
                // for more lines that may come much later.
                if reader.buffer().is_empty() {
                    client.flush()?;
                    failed |= !report(&mut client, false, &mut outstanding)?;
                }
            }
        }
    }
    client.flush()?;
    failed |= !report(&mut client, true, &mut outstanding)?;
    Ok(if failed { 1 } else { 0 })
}

/// One message of `pub`, retained if asked.
fn publish_one(
    client: &mut Client,
    a: &PubArgs,
    payload: &[u8],
    opts: PublishOptions,
) -> Result<u64, crate::client::ClientError> {
    if a.retain {
        client.publish_retained(&a.channel, payload, opts)
    } else {
        client.publish_with(&a.channel, payload, opts)
    }
}

fn subscribe(socket: Option<PathBuf>, a: SubArgs) -> anyhow::Result<i32> {
    for c in &a.channel {
        crate::wire::Pattern::parse(c).map_err(|e| anyhow::anyhow!("invalid channel: {e}"))?;
    }
    let mut client = connect(socket, a.connect.transport, "sub")?;
    for c in &a.channel {
        use crate::client::Replay;
        let replay = match (a.last, a.since, a.from_seq) {
            (Some(n), _, _) => Some(Replay::Last(n)),
            (_, Some(d), _) => Some(Replay::SinceMs(d.as_millis().min(u64::MAX as u128) as u64)),
            (_, _, Some(s)) => Some(Replay::FromSeq(s)),
            _ => None,
        };
        let opts = crate::client::SubscribeOptions {
            retained: !a.no_retained,
            replay,
        };
        client.subscribe_with(c, opts)?;
        eprintln!("Subscribed to '{c}'");
    }
    let timeout = a.timeout.map(Duration::from_secs_f64);
    let mut seen = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while a.count.is_none_or(|n| seen < n) {
        let ev = match client.next_event(timeout) {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                out.flush()?;
                bail!("no message within {} s", a.timeout.unwrap_or(0.0));
            }
            Err(crate::client::ClientError::Closed(reason)) => {
                out.flush()?;
                eprintln!("ipchubctl: hub closed the connection: {reason}");
                return Ok(1);
            }
            Err(e) => return Err(e.into()),
        };
        match ev {
            Event::Message(m) => {
                seen += 1;
                if a.raw {
                    out.write_all(&m.payload)?;
                } else if a.json {
                    let payload = match std::str::from_utf8(&m.payload) {
                        Ok(s) => ("payload", serde_json::Value::from(s)),
                        Err(_) => (
                            "payload_base64",
                            serde_json::Value::from(base64(&m.payload)),
                        ),
                    };
                    let mut obj = serde_json::Map::new();
                    obj.insert("channel".into(), m.channel.into());
                    obj.insert(payload.0.into(), payload.1);
                    obj.insert("sequence".into(), m.seq.into());
                    obj.insert(
                        "publisher".into(),
                        serde_json::json!({ "client": m.origin }),
                    );
                    obj.insert("priority".into(), m.priority.into());
                    if m.retained {
                        obj.insert("retained".into(), true.into());
                    }
                    if let Some(cs) = m.channel_seq {
                        obj.insert("channel_seq".into(), cs.into());
                    }
                    writeln!(out, "{}", serde_json::Value::Object(obj))?;
                } else {
                    write!(out, "[{}] ", m.channel)?;
                    out.write_all(&m.payload)?;
                    out.write_all(b"\n")?;
                }
                // Flush per message unless more are already waiting.
                out.flush()?;
            }
            Event::Missed(n) => eprintln!(
                "ipchubctl: {n} messages missed (subscriber too slow; overflow = drop-oldest)"
            ),
            Event::Error { text, .. } => eprintln!("ipchubctl: hub error: {text}"),
            _ => {}
        }
    }
    out.flush()?;
    Ok(0)
}

fn stats(socket: Option<PathBuf>, a: StatsArgs) -> anyhow::Result<i32> {
    let opts = Options {
        socket,
        transport: TransportKind::Socket,
        name: "ipchubctl stats".into(),
    };
    let mut client = Client::connect(&opts)?;
    let st = client.stats()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &st)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(
        out,
        "ipchubd {}  up {}s  transports: {}",
        st.version,
        st.uptime_secs,
        st.transports.join(", ")
    )?;
    writeln!(
        out,
        "clients {}  channels {}  messages in {}  out {}  bytes in {}  out {}  dropped {}",
        st.client_count,
        st.channel_count,
        st.totals.messages_in,
        st.totals.messages_out,
        st.totals.bytes_in,
        st.totals.bytes_out,
        st.totals.dropped
    )?;
    writeln!(
        out,
        "\nCHANNEL                          SUBS  OVERFLOW     PUBLISHED  DELIVERED    DROPPED"
    )?;
    for c in &st.channels {
        writeln!(
            out,
            "{:<32} {:>4}  {:<11} {:>10} {:>10} {:>10}",
            escape(&c.name),
            c.subscribers,
            c.overflow,
            c.published,
            c.delivered,
            c.dropped
        )?;
    }
    writeln!(out, "\nCLIENT  TRANSPORT     PID    UID  QUEUED   MSGS IN  MSGS OUT  DROPPED  NAME / SUBSCRIPTIONS")?;
    for c in &st.clients {
        writeln!(
            out,
            "{:>6}  {:<9} {:>7} {:>6} {:>7} {:>9} {:>9} {:>8}  {}{}{}",
            c.id,
            c.transport,
            c.pid,
            c.uid,
            c.queue_messages,
            c.messages_in,
            c.messages_out,
            c.dropped,
            // Names come from clients: never let one drive the terminal.
            escape(&c.name),
            if c.subscriptions.is_empty() { "" } else { " " },
            escape(&c.subscriptions.join(","))
        )?;
    }
    // Components (e.g. bridge.mqtt) report free-form key=value state.
    for (name, status) in &st.components {
        let kv: Vec<String> = status.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "\nCOMPONENT {}\n  {}",
            escape(name),
            escape(&kv.join("  "))
        )?;
    }
    Ok(0)
}

/// Standard base64 (RFC 4648) for binary payloads in JSON output.
fn base64(data: &[u8]) -> String {
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

/// True when `e` is our standard output closing under us (a pipe reader
/// that exited): a normal way for `sub` to end, not an error to report.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
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
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
