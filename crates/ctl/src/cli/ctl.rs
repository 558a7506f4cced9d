//! `ipchubctl`: publish, subscribe, request/reply and inspect a running hub.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args as ClapArgs, Parser, Subcommand, ValueEnum};

use super::format::{self, Piece, Publisher, Publishers, Stamp};
use super::reqrep::{self, RequestError, Responder};
use crate::client::{Client, ClientError, Event, Options, PublishOptions};
use crate::daemon::logging::escape;
use crate::wire::TransportKind;
use crate::wire::{ErrorCode, Pattern};

/// Exit statuses, distinct per outcome so that scripts can tell them apart.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other failure (the reason is on standard error).
    pub const FAILURE: i32 = 1;
    /// Bad usage: an unknown flag, a bad value, an invalid channel name.
    pub const USAGE: i32 = 2;
    /// The hub cannot be reached (not running, no such socket).
    pub const UNREACHABLE: i32 = 3;
    /// Access denied, by the socket's permissions or the hub's access rules.
    pub const DENIED: i32 = 4;
    /// A message is larger than the hub or the transport takes.
    pub const TOO_LARGE: i32 = 5;
    /// A timeout ran out first.
    pub const TIMEOUT: i32 = 6;
    /// The hub closed the connection.
    pub const CLOSED: i32 = 7;
    /// `request`: nobody was subscribed to the request's channel.
    pub const NO_RESPONDERS: i32 = 8;
}

/// The EXIT STATUS part of `--help` and of ipchubctl(1).
const EXIT_STATUS: &str = "\
Exit status:
  0  success
  1  any other failure; the reason is printed on standard error
  2  usage: an unknown flag, a bad value, an invalid channel name or format
  3  the hub cannot be reached: not running, or no socket at that path
  4  denied: by the socket's permissions or the hub's access rules
  5  too large: a message exceeds hub.max_message_size or what the transport carries (pub goes on with the next line and exits 5 at the end)
  6  timeout: sub --timeout ran out before --count messages (or, without --count, before any message); sub --idle-timeout passed without a message; request --timeout ran out before the reply
  7  the hub closed the connection (it stopped, or cut this client off)
  8  request: nobody was subscribed to the request's channel";

/// ipchubctl: publish, subscribe and inspect the ipchub message hub
///
/// Every command starts at the hub's control socket. The pub, sub, request
/// and reply commands then carry messages over the transport chosen with
/// --transport, so each transport can be tried from a shell.
#[derive(Debug, Parser)]
#[command(name = "ipchubctl", version, after_long_help = EXIT_STATUS)]
pub struct Args {
    /// Control socket of the hub [default: $XDG_RUNTIME_DIR/ipchub/ipchub.sock
    /// when a hub of your own runs there (never for root), else the system
    /// hub's /run/ipchub/ipchub.sock]
    #[arg(long, short = 's', env = "IPCHUB_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a message, a file, all of standard input, or one message per line of standard input
    ///
    /// Prints `Published (N subscribers)` (`Published (1 subscriber)` for
    /// one) for each message, N being how many subscribers it was delivered
    /// to. Confirmations are pipelined: lines from a pipe stream without a
    /// round trip each. A line over the size limit is reported with its
    /// number and skipped; the rest of the stream goes on.
    Pub(PubArgs),
    /// Subscribe and print messages as `[channel] payload`, payload lines, raw bytes, JSON or a format
    ///
    /// Format tokens (-F): %t channel, %p payload, %x payload as hex, %l
    /// payload length, %I time received (ISO 8601, UTC), %U time received
    /// (Unix time with nanoseconds), %s the publisher's sequence number, %o
    /// the publisher's client id, %y priority, %% a percent sign; escapes
    /// \n, \t and \\. A newline follows each message.
    Sub(SubArgs),
    /// Send one request and print the reply (request/reply over channels)
    ///
    /// Subscribes to a reply channel of its own, `_reply/<client
    /// id>/<random>`, publishes the message on CHANNEL as `reply-to=<reply
    /// channel>` plus a newline plus the body, and prints the first message
    /// on the reply channel. See `reply` for the other side, and
    /// docs/PROTOCOL.md for the convention.
    Request(RequestArgs),
    /// Answer requests on a channel: a fixed text, or the output of a command
    ///
    /// Each request's body goes to the standard input of `sh -c CMD`
    /// (IPCHUB_CHANNEL and IPCHUB_REPLY_TO in its environment); its standard
    /// output is published, unchanged, on the request's reply channel.
    /// Messages without a reply-to line are not requests and are skipped
    /// with a warning.
    Reply(ReplyArgs),
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

/// Transport choice, shared by the commands that carry messages.
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

/// Where the hub is, for the commands that talk to one.
#[derive(Debug, ClapArgs)]
pub struct HubArgs {
    /// Control socket of the hub, as the --socket before the command (this one wins).
    #[arg(long, short = 's', value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Where the hub is, for `pub`: there `-s` reads standard input as one
/// message (mosquitto_pub's habit), so the socket has only the long flag
/// (or `ipchubctl -s PATH pub …` before the command).
#[derive(Debug, ClapArgs)]
pub struct PubHubArgs {
    /// Control socket of the hub, as the --socket before the command (this one wins).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
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
    /// Print no "Connected to hub" (or "Subscribed to") line on standard error.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Exit (status 7) when the hub goes away, instead of reconnecting and
    /// carrying on once it is back (the default, said on standard error).
    #[arg(long)]
    pub no_reconnect: bool,
}

#[derive(Debug, ClapArgs)]
#[command(group(ArgGroup::new("source").args(["message", "file", "stdin", "lines"])))]
pub struct PubArgs {
    /// Channel to publish on, e.g. `sensors/kitchen/temp`.
    #[arg(long, short = 'c')]
    pub channel: String,
    #[command(flatten)]
    pub hub: PubHubArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Message priority 0..=31 (the POSIX mqueue priority, carried to every transport).
    #[arg(long, short = 'p', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=31))]
    pub priority: u8,
    /// Do not ask for delivery counts (prints nothing per message).
    #[arg(long)]
    pub no_confirm: bool,
    /// Publish the whole content of FILE as one message.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Publish all of standard input, up to its end, as one message (`-s`, as
    /// in mosquitto_pub; the control socket is `--socket` after `pub`).
    #[arg(long, short = 's')]
    pub stdin: bool,
    /// Publish each line of standard input as one message (the default without a message).
    #[arg(long, short = 'l')]
    pub lines: bool,
    /// Publish the message (or file, or standard input) N times.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "lines",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Wait this long between repeated messages (fractions allowed).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub interval: Option<f64>,
    /// Keep the message as the channel's retained value, sent first to every
    /// later subscriber; an empty message clears it.
    #[arg(long)]
    pub retain: bool,
    /// The message. Without it (or -f, -s), each line of standard input is one message.
    pub message: Option<String>,
}

#[derive(Debug, ClapArgs)]
#[command(group(ArgGroup::new("output").args(["json", "raw", "lines", "format"])))]
pub struct SubArgs {
    /// Channel or pattern to subscribe to (`+` matches one level, `#` the rest); repeatable.
    #[arg(long, short = 'c', required = true)]
    pub channel: Vec<String>,
    /// Leave out messages on channels matching this pattern; repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Exit after this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Print one JSON object per message (channel, payload, sequence,
    /// publisher with its client id and, while it is connected, pid, uid and
    /// name; priority, time received).
    #[arg(long)]
    pub json: bool,
    /// Write payload bytes unchanged, nothing else.
    #[arg(long)]
    pub raw: bool,
    /// Print each payload followed by a newline, nothing else.
    #[arg(long, short = 'l')]
    pub lines: bool,
    /// Print each message as FORMAT (tokens above), then a newline.
    #[arg(long, short = 'F', value_name = "FORMAT")]
    pub format: Option<String>,
    /// Stop after this many seconds in all (fractions allowed).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Option<f64>,
    /// Give up after this many seconds without a message.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub idle_timeout: Option<f64>,
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
pub struct RequestArgs {
    /// Channel on which the request is published.
    pub channel: String,
    /// The request's body. Without it, all of standard input is the body.
    pub message: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Message priority 0..=31.
    #[arg(long, short = 'p', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=31))]
    pub priority: u8,
    /// Give up after this many seconds without a reply.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    pub timeout: f64,
}

#[derive(Debug, ClapArgs)]
#[command(group(ArgGroup::new("answer").args(["response", "exec"]).required(true)))]
pub struct ReplyArgs {
    /// Channel or pattern on which requests arrive.
    pub channel: String,
    /// The text to answer every request with.
    pub response: Option<String>,
    /// Answer with the standard output of `sh -c CMD`, given the request's body on standard input.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Exit after answering this many requests.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, ClapArgs)]
pub struct StatsArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// Print the statistics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Outcomes of ipchubctl itself that end it with a particular status.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("no message within {0} s")]
    Idle(f64),
    #[error("--timeout: {secs} s passed after {seen} messages")]
    RunTime { secs: f64, seen: u64 },
    #[error("{0}")]
    Closed(String),
}

impl CtlError {
    fn code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Idle(_) | CtlError::RunTime { .. } => exit::TIMEOUT,
            CtlError::Closed(_) => exit::CLOSED,
        }
    }
}

/// A duration in seconds: finite, not negative, at most a year.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=31_536_000.0).contains(&v) {
        return Err(format!("'{s}': seconds must be between 0 and 31536000"));
    }
    Ok(v)
}

pub fn main_with(args: Args) -> anyhow::Result<i32> {
    let top = args.socket;
    match args.command {
        Command::Pub(p) => publish(p.hub.socket.clone().or(top), p),
        Command::Sub(s) => subscribe(s.hub.socket.clone().or(top), s),
        Command::Request(r) => request(r.hub.socket.clone().or(top), r),
        Command::Reply(r) => reply(r.hub.socket.clone().or(top), r),
        Command::Stats(s) => stats(s.hub.socket.clone().or(top), s),
        Command::History(h) => crate::cli::history::run(top, h),
        Command::Dashboard(d) => crate::dashboard::run(top, &d),
        Command::CheckConfig { file } => {
            crate::config::Config::load(Some(&file))?;
            println!("{}: configuration OK", file.display());
            Ok(exit::OK)
        }
    }
}

/// The exit status for an error `main_with` returned.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CtlError>() {
            return c.code();
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return client_code(c);
        }
        if let Some(r) = cause.downcast_ref::<RequestError>() {
            return match r {
                RequestError::NoResponders(_) => exit::NO_RESPONDERS,
                RequestError::Timeout(_) => exit::TIMEOUT,
                RequestError::Client(c) => client_code(c),
            };
        }
    }
    exit::FAILURE
}

fn client_code(e: &ClientError) -> i32 {
    match e {
        ClientError::NotRunning { .. } | ClientError::Connect { .. } => exit::UNREACHABLE,
        ClientError::PermissionDenied { .. } => exit::DENIED,
        ClientError::Refused { code, .. } => refused_code(*code),
        ClientError::BadChannel(_) | ClientError::BadPriority(_) => exit::USAGE,
        ClientError::TooLarge { .. } | ClientError::TooLargeForTransport { .. } => exit::TOO_LARGE,
        // The hub went away and the library could not carry on for us.
        ClientError::Closed(_) | ClientError::Lost { .. } => exit::CLOSED,
        ClientError::GaveUp { .. } => exit::UNREACHABLE,
        ClientError::BufferFull { .. } => exit::FAILURE,
        ClientError::Timeout => exit::TIMEOUT,
        ClientError::Protocol(_) | ClientError::Io(_) => exit::FAILURE,
    }
}

/// The exit status for an ERROR frame's code.
fn refused_code(code: u16) -> i32 {
    match ErrorCode::from_u16(code) {
        Some(ErrorCode::NotPermitted) => exit::DENIED,
        Some(ErrorCode::TooLarge) => exit::TOO_LARGE,
        Some(ErrorCode::BadChannel) => exit::USAGE,
        _ => exit::FAILURE,
    }
}

/// The error as one line: each cause once (an error whose text already
/// quotes its source, such as "cannot connect to P: No such file or
/// directory", does not repeat it), and for a hub that is not running, how
/// to start one.
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if text.contains(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    let not_running = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::NotRunning { .. })
        ) || matches!(
            c.downcast_ref::<RequestError>(),
            Some(RequestError::Client(ClientError::NotRunning { .. }))
        )
    });
    if not_running {
        text.push_str(
            " (start one with `systemctl start ipchub.socket`, or run `ipchubd` in a terminal)",
        );
    }
    text
}

fn connect(socket: Option<PathBuf>, c: &ConnectArgs, role: &str) -> Result<Client, ClientError> {
    let kind: TransportKind = c.transport.into();
    let opts = Options {
        socket,
        transport: kind,
        name: format!("ipchubctl {role}"),
        reconnect: if c.no_reconnect {
            crate::client::Reconnect::off()
        } else {
            Default::default()
        },
    };
    let client = Client::connect(&opts)?;
    if !c.quiet {
        eprintln!("Connected to hub via {}", kind.describe());
    }
    Ok(client)
}

/// `Published (N subscribers)`, singular for one.
fn published_line(delivered: u32) -> String {
    if delivered == 1 {
        "Published (1 subscriber)".to_string()
    } else {
        format!("Published ({delivered} subscribers)")
    }
}

/// Confirmations still owed by the hub, and the worst outcome so far.
struct Acks {
    outstanding: u64,
    status: i32,
}

impl Acks {
    /// Print every confirmation already received (`wait_all`: all owed), in order.
    fn report(
        &mut self,
        client: &mut Client,
        wait_all: bool,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        while self.outstanding > 0 {
            let ev = if wait_all {
                client.next_event(None)?
            } else {
                client.poll_events()?
            };
            match ev {
                Some(Event::Ack { delivered, .. }) => {
                    self.outstanding -= 1;
                    writeln!(out, "{}", published_line(delivered))?;
                }
                Some(Event::Error { text, code, .. }) => {
                    self.outstanding -= 1;
                    eprintln!("ipchubctl: publish failed: {text}");
                    self.fail(refused_code(code));
                }
                Some(_) => {}
                None => break,
            }
        }
        out.flush()?;
        Ok(())
    }

    /// Remember a failure; the first one decides the exit status.
    fn fail(&mut self, code: i32) {
        if self.status == exit::OK {
            self.status = code;
        }
    }
}

/// Read all of `r`, keeping at most `cap` bytes; returns them and the
/// whole length, so that an over-long input is measured without holding it.
fn read_capped(mut r: impl Read, cap: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut kept = Vec::new();
    let mut total = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => return Ok((kept, total)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        let room = cap.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&chunk[..room]);
    }
}

/// The next line of `r` without its newline, keeping at most `cap` bytes
/// of it in `buf`; returns the line's whole length, `None` at the end.
fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(total));
        }
        any = true;
        let (data, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = cap.saturating_sub(buf.len()).min(data.len());
        buf.extend_from_slice(&data[..room]);
        total += data.len();
        r.consume(used);
        if done {
            return Ok(Some(total));
        }
    }
}

fn publish(socket: Option<PathBuf>, a: PubArgs) -> anyhow::Result<i32> {
    crate::wire::channel::validate_name(&a.channel)
        .map_err(|e| CtlError::Usage(format!("invalid channel: {e}")))?;
    let one_message = a.message.is_some() || a.file.is_some() || a.stdin;
    if !one_message && a.repeat > 1 {
        return Err(
            CtlError::Usage("--repeat needs a message, -f FILE or -s (--stdin)".into()).into(),
        );
    }
    let mut client = connect(socket, &a.connect, "pub")?;
    let opts = PublishOptions {
        ack: !a.no_confirm,
        priority: a.priority,
    };
    let max = client.max_message() as usize;
    let mut out = std::io::stdout().lock();
    let mut acks = Acks {
        outstanding: 0,
        status: exit::OK,
    };
    let whole = |data: Vec<u8>, total: u64| -> anyhow::Result<Vec<u8>> {
        if total > max as u64 {
            return Err(ClientError::TooLarge {
                len: total as usize,
                max: max as u32,
            }
            .into());
        }
        Ok(data)
    };
    let message = if let Some(m) = &a.message {
        Some(m.as_bytes().to_vec())
    } else if let Some(f) = &a.file {
        let file = std::fs::File::open(f)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
        let (data, total) =
            read_capped(file, max).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
        Some(whole(data, total)?)
    } else if a.stdin {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("ipchubctl: reading one message from standard input, up to Ctrl-D");
        }
        let (data, total) = read_capped(stdin.lock(), max)
            .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
        Some(whole(data, total)?)
    } else {
        None
    };
    match message {
        Some(m) => {
            let interval = Duration::from_secs_f64(a.interval.unwrap_or(0.0));
            for i in 0..a.repeat {
                if i > 0 && !interval.is_zero() {
                    client.flush()?;
                    acks.report(&mut client, false, &mut out)?;
                    std::thread::sleep(interval);
                }
                publish_one(&mut client, &a, m.as_ref(), opts)?;
                acks.outstanding += u64::from(opts.ack);
            }
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "ipchubctl: reading messages from standard input, one per line, up to Ctrl-D \
                     (or give the message as an argument)"
                );
            }
            let mut reader = std::io::BufReader::with_capacity(64 * 1024, stdin.lock());
            let mut line = Vec::new();
            let mut number = 0u64;
            while let Some(len) = read_line_capped(&mut reader, &mut line, max)
                .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?
            {
                number += 1;
                let sent = if len > max {
                    Err(ClientError::TooLarge {
                        len,
                        max: max as u32,
                    })
                } else {
                    publish_one(&mut client, &a, &line, opts)
                };
                match sent {
                    Ok(_) => acks.outstanding += u64::from(opts.ack),
                    Err(
                        e @ (ClientError::TooLarge { .. }
                        | ClientError::TooLargeForTransport { .. }),
                    ) => {
                        eprintln!("ipchubctl: line {number}: {e}; skipped");
                        acks.fail(exit::TOO_LARGE);
                    }
                    Err(e) => return Err(e.into()),
                }
                // Nothing more buffered from stdin: send now rather than wait
                // for more lines that may come much later.
                if reader.buffer().is_empty() {
                    client.flush()?;
                    acks.report(&mut client, false, &mut out)?;
                }
            }
        }
    }
    client.flush()?;
    acks.report(&mut client, true, &mut out)?;
    Ok(acks.status)
}

/// How `sub` prints each message.
enum Output {
    Bracketed,
    Raw,
    Lines,
    Json,
    Format(Vec<Piece>),
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
        Pattern::parse(c).map_err(|e| CtlError::Usage(format!("invalid channel: {e}")))?;
    }
    let exclude = a
        .exclude
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| CtlError::Usage(format!("invalid --exclude: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let output = if a.raw {
        Output::Raw
    } else if a.json {
        Output::Json
    } else if a.lines {
        Output::Lines
    } else if let Some(f) = &a.format {
        Output::Format(format::parse(f).map_err(|e| CtlError::Usage(e.to_string()))?)
    } else {
        Output::Bracketed
    };
    let mut client = connect(socket, &a.connect, "sub")?;
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
            ..Default::default()
        };
        client.subscribe_with(c, opts)?;
        if !a.connect.quiet {
            eprintln!("Subscribed to '{c}'");
        }
    }
    let idle = a.idle_timeout.map(Duration::from_secs_f64);
    let deadline = a
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut publishers = Publishers::new();
    let mut seen = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while a.count.is_none_or(|n| seen < n) {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(idle.map_or(left, |i| i.min(left)))
            }
            None => idle,
        };
        let ev = match client.next_event(wait) {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                out.flush()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    if a.count.is_none() && seen > 0 {
                        return Ok(exit::OK);
                    }
                    return Err(CtlError::RunTime {
                        secs: a.timeout.unwrap_or(0.0),
                        seen,
                    }
                    .into());
                }
                return Err(CtlError::Idle(a.idle_timeout.unwrap_or(0.0)).into());
            }
            Err(ClientError::Closed(reason)) => {
                out.flush()?;
                return Err(
                    CtlError::Closed(format!("hub closed the connection: {reason}")).into(),
                );
            }
            Err(e) => return Err(e.into()),
        };
        match ev {
            Event::Message(m) => {
                if exclude.iter().any(|p| p.matches(&m.channel)) {
                    continue;
                }
                seen += 1;
                let at = Stamp::now();
                match &output {
                    Output::Raw => out.write_all(&m.payload)?,
                    Output::Lines => {
                        out.write_all(&m.payload)?;
                        out.write_all(b"\n")?;
                    }
                    Output::Json => {
                        let who = publisher(&mut client, &mut publishers, m.origin)?;
                        writeln!(out, "{}", format::json(&m, who.as_ref(), at))?;
                    }
                    Output::Format(pieces) => format::write_formatted(&mut out, pieces, &m, at)?,
                    Output::Bracketed => {
                        write!(out, "[{}] ", m.channel)?;
                        out.write_all(&m.payload)?;
                        out.write_all(b"\n")?;
                    }
                }
                out.flush()?;
            }
            Event::Missed(n) => eprintln!(
                "ipchubctl: {n} messages missed (subscriber too slow; overflow = drop-oldest)"
            ),
            Event::Error { text, .. } => eprintln!("ipchubctl: hub error: {text}"),
            Event::HubLost { reason } => {
                eprintln!("ipchubctl: lost the hub ({reason}); reconnecting")
            }
            Event::HubBack { outage, .. } => eprintln!(
                "ipchubctl: reconnected to the hub after {} ms; messages published meanwhile are missing",
                outage.as_millis()
            ),
            _ => {}
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// Who client `id` is, from the hub's statistics (looked up once per id).
fn publisher(
    client: &mut Client,
    known: &mut Publishers,
    id: u32,
) -> Result<Option<Publisher>, ClientError> {
    if !known.contains_key(&id) {
        match client.stats() {
            Ok(st) => {
                for c in st.clients {
                    known.insert(
                        c.id,
                        Some(Publisher {
                            pid: c.pid,
                            uid: c.uid,
                            name: c.name,
                        }),
                    );
                }
            }
            Err(e @ ClientError::Closed(_)) => return Err(e),
            // A hub that does not show us its clients: we only know the id.
            Err(_) => {}
        }
        known.entry(id).or_insert(None);
    }
    Ok(known.get(&id).cloned().flatten())
}

fn request(socket: Option<PathBuf>, a: RequestArgs) -> anyhow::Result<i32> {
    crate::wire::channel::validate_name(&a.channel)
        .map_err(|e| CtlError::Usage(format!("invalid channel: {e}")))?;
    let mut client = connect(socket, &a.connect, "request")?;
    let body = match &a.message {
        Some(m) => m.as_bytes().to_vec(),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("ipchubctl: reading the request from standard input, up to Ctrl-D");
            }
            let max = client.max_message() as usize;
            let (data, total) = read_capped(stdin.lock(), max)
                .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
            if total > max as u64 {
                return Err(ClientError::TooLarge {
                    len: total as usize,
                    max: max as u32,
                }
                .into());
            }
            data
        }
    };
    let reply = reqrep::request(
        &mut client,
        &a.channel,
        &body,
        a.priority,
        Duration::from_secs_f64(a.timeout),
    )?;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply)?;
    if reply.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn reply(socket: Option<PathBuf>, a: ReplyArgs) -> anyhow::Result<i32> {
    Pattern::parse(&a.channel).map_err(|e| CtlError::Usage(format!("invalid channel: {e}")))?;
    let responder = match (&a.exec, &a.response) {
        (Some(cmd), _) => Responder::Exec(cmd.clone()),
        (None, Some(text)) => Responder::Fixed(text.as_bytes().to_vec()),
        (None, None) => unreachable!("clap requires one"),
    };
    let mut client = connect(socket, &a.connect, "reply")?;
    client.subscribe(&a.channel)?;
    if !a.connect.quiet {
        eprintln!("Subscribed to '{}'", a.channel);
    }
    let mut answered = 0u64;
    while a.count.is_none_or(|n| answered < n) {
        let ev = match client.next_event(None) {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(ClientError::Closed(reason)) => {
                return Err(CtlError::Closed(format!("hub closed the connection: {reason}")).into())
            }
            Err(e) => return Err(e.into()),
        };
        match ev {
            Event::Message(m) => {
                let Some((reply_to, body)) = reqrep::open_envelope(&m.payload) else {
                    eprintln!(
                        "ipchubctl: message on '{}' has no reply-to line; not a request, skipped",
                        m.channel
                    );
                    continue;
                };
                let answer = responder
                    .answer(&m.channel, &reply_to, body)
                    .map_err(|e| anyhow::anyhow!("running the reply command: {e}"))?;
                match client.publish_with(&reply_to, &answer, PublishOptions::default()) {
                    Ok(_) => client.flush()?,
                    Err(
                        e @ (ClientError::TooLarge { .. }
                        | ClientError::TooLargeForTransport { .. }),
                    ) => {
                        eprintln!("ipchubctl: reply to '{reply_to}': {e}; not sent");
                    }
                    Err(e) => return Err(e.into()),
                }
                answered += 1;
            }
            Event::Error { text, .. } => eprintln!("ipchubctl: hub error: {text}"),
            Event::Missed(n) => eprintln!(
                "ipchubctl: {n} requests missed (replier too slow; overflow = drop-oldest)"
            ),
            _ => {}
        }
    }
    client.flush()?;
    Ok(exit::OK)
}

fn stats(socket: Option<PathBuf>, a: StatsArgs) -> anyhow::Result<i32> {
    let opts = Options {
        socket,
        transport: TransportKind::Socket,
        name: "ipchubctl stats".into(),
        // One question: fail at once if the hub goes away.
        reconnect: crate::client::Reconnect::off(),
    };
    let mut client = Client::connect(&opts)?;
    let st = client.stats()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &st)?;
        writeln!(out)?;
        return Ok(exit::OK);
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
        "clients {}  channels {}  messages in {}  queued {}  bytes in {}  out {}  dropped {}",
        st.client_count,
        st.channel_count,
        st.totals.messages_in,
        st.totals.messages_out,
        st.totals.bytes_in,
        st.totals.bytes_out,
        st.totals.dropped
    )?;
    if !st.per_transport.is_empty() {
        writeln!(out, "\nTRANSPORT  CLIENTS     BYTES IN    BYTES OUT")?;
        for t in &st.per_transport {
            writeln!(
                out,
                "{:<9} {:>8} {:>12} {:>12}",
                t.name, t.clients, t.bytes_in, t.bytes_out
            )?;
        }
    }
    // QUEUED counts messages put into subscriber queues, DELIVERED those
    // handed to the client's transport (see ipchubctl(1), STATISTICS).
    writeln!(
        out,
        "\nCHANNEL                          SUBS  OVERFLOW     PUBLISHED     QUEUED    DROPPED"
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
    writeln!(out, "\nCLIENT  TRANSPORT     PID    UID  WAITING   MSGS IN    QUEUED  DELIVERED  DROPPED  NAME / SUBSCRIPTIONS")?;
    for c in &st.clients {
        writeln!(
            out,
            "{:>6}  {:<9} {:>7} {:>6} {:>8} {:>9} {:>9} {:>10} {:>8}  {}{}{}",
            c.id,
            c.transport,
            c.pid,
            c.uid,
            c.queue_messages,
            c.messages_in,
            c.messages_out,
            c.messages_delivered,
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
    Ok(exit::OK)
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
    use super::*;

    #[test]
    fn long_lines_are_measured_but_not_kept() {
        let mut r = std::io::BufReader::with_capacity(4, &b"abcdefgh\nxy\n\nz"[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_capped(&mut r, &mut buf, 3).unwrap(), Some(8));
        assert_eq!(buf, b"abc");
        assert_eq!(read_line_capped(&mut r, &mut buf, 3).unwrap(), Some(2));
        assert_eq!(buf, b"xy");
        assert_eq!(read_line_capped(&mut r, &mut buf, 3).unwrap(), Some(0));
        assert_eq!(read_line_capped(&mut r, &mut buf, 3).unwrap(), Some(1));
        assert_eq!(buf, b"z");
        assert_eq!(read_line_capped(&mut r, &mut buf, 3).unwrap(), None);
    }

    #[test]
    fn one_subscriber_is_singular() {
        assert_eq!(published_line(1), "Published (1 subscriber)");
        assert_eq!(published_line(0), "Published (0 subscribers)");
        assert_eq!(published_line(2), "Published (2 subscribers)");
    }
}
