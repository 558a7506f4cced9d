//! Command line of `ipchub-bench`: every option with its documentation, and
//! the parsers for sizes, durations and lists.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::wire::TransportKind;

/// What every figure means; shown by `--help` and kept in step with
/// BENCHMARKS.md by a test.
pub const FIGURES_HELP: &str = "\
What is measured:
  throughput   A one-way stream: the publisher sends as fast as it can, the
               subscriber (a separate process) counts. Every message carries
               its sequence number; the subscriber checks that each one is
               present, in order and of the right size. msgs/s = messages
               received / (time of the last receipt - time of the first
               send), both on CLOCK_MONOTONIC. MB/s = msgs/s x payload bytes
               / 10^6 (headers not counted).
  latency      Ping-pong: one message in flight, echoed back by a separate
               process. The round trip (rtt) is recorded in an HDR histogram;
               one way = round trip / 2. Figures: avg, p50, p99, p99.9, max.
  repetitions  After a warm-up round (not counted), each figure is measured
               --repetitions times; tables show the median, JSON and CSV also
               give min and max. Latency percentiles merge all rounds.
  fan-out      With --subscribers N, msgs/s is the rate at which every
               subscriber received the whole stream (the slowest one), and
               'aggregate' is the sum of deliveries per second.

What is compared:
  hub          publisher -> ipchubd -> subscriber, through the client library,
               for each transport (socket, pipe, fifo, mqueue, shm).
  raw          the same mechanism point to point without the hub: memcpy in
               one process, pipe and UNIX socket (one write per message, and
               batched into 64 KiB writes), FIFO, POSIX mqueue, shm ring, TCP
               and UDP on loopback.
  peers        D-Bus signals (throughput) and method calls (latency) through
               a dbus-daemon; MQTT QoS 0 through a Mosquitto broker;
               ipchub's MQTT bridge end to end (hub client -> ipchubd ->
               bridge -> the same Mosquitto -> MQTT client, QoS 0; rounds of
               at most 20 000 messages, which its spool holds);
               iceoryx2 publish-subscribe over shared memory (polling
               subscriber); ZeroMQ XPUB/SUB over ipc:// (libzmq); NATS
               through a nats-server started on loopback. iceoryx2 and
               ZeroMQ need the build feature `peers`.
  ratios       hub / raw baseline of the same mechanism, and hub / peer.
A mechanism that cannot run here is listed as \"not available\" with the
reason; one that broke while running as \"failed\".";

/// ipchub-bench: measure every ipchub transport against its raw limit and
/// against D-Bus and MQTT.
///
/// With no arguments: a quick comparison at 1 KiB (about a minute on two
/// cores) against a hub it starts itself on a temporary socket.
#[derive(Debug, Parser)]
#[command(name = "ipchub-bench", version, about, long_about, after_long_help = FIGURES_HELP)]
pub struct Args {
    /// Transports to measure through the hub (comma separated).
    #[arg(long, value_name = "LIST", default_value = "socket,pipe,fifo,mqueue,shm", value_parser = parse_transports)]
    pub transports: TransportList,

    /// Payload sizes (comma separated; K = 1024, M = 1048576), e.g. 64,1K,16K,64K,1M.
    #[arg(long, value_name = "LIST", default_value = "1K", value_parser = parse_sizes)]
    pub sizes: SizeList,

    /// Messages per round (throughput) and round trips per round (latency),
    /// instead of --duration.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub messages: Option<u64>,

    /// Length of each measured round, e.g. 400ms, 2s.
    #[arg(long, value_name = "TIME", default_value = "500ms", value_parser = parse_duration)]
    pub duration: Duration,

    /// Length of the warm-up round before the measured ones (with --messages:
    /// a quarter of the messages).
    #[arg(long, value_name = "TIME", default_value = "250ms", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Measured rounds per figure (the table shows their median).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repetitions: u32,

    /// Subscribers per throughput run, each its own process (fan-out). Hub
    /// and peers only; raw baselines stay point to point.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub subscribers: u32,

    /// Pin the publisher to CPU 0 and each subscriber or echo process to
    /// another CPU (the daemons are not pinned).
    #[arg(long)]
    pub pin: bool,

    /// Hub clients on shm busy-poll their channel rings this long before
    /// sleeping (e.g. 50ms): latency without wake-ups, at the cost of a
    /// spinning CPU per client. Best with --pin on a machine with a core
    /// per process.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub busy_poll: Option<Duration>,

    /// Print the results as one JSON document instead of tables.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Print the results as CSV (one row per mechanism and size) instead of tables.
    #[arg(long)]
    pub csv: bool,

    /// Also write a chart of throughput and latency by size (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Use the hub already listening on this socket instead of starting one.
    #[arg(long, value_name = "PATH", conflicts_with = "hub_binary")]
    pub socket: Option<PathBuf>,

    /// The ipchubd to start [default: ipchubd next to this executable].
    #[arg(long, value_name = "PATH")]
    pub hub_binary: Option<PathBuf>,

    /// Raw baselines to run (comma separated), or "none": memcpy, pipe,
    /// pipe-batched, fifo, unix, unix-batched, mqueue, shm, tcp, tcp-batched, udp.
    #[arg(long, value_name = "LIST", default_value = "all", value_parser = parse_baselines)]
    pub baselines: NameList,

    /// Peer systems to compare with (comma separated), or "none": dbus,
    /// mqtt, mqtt-bridge, iceoryx2, zeromq, nats.
    #[arg(long, value_name = "LIST", default_value = "all", value_parser = parse_peers)]
    pub peers: NameList,

    /// D-Bus bus to use [default: a private dbus-daemon started for the run].
    #[arg(long, value_name = "ADDRESS")]
    pub dbus_address: Option<String>,

    /// MQTT broker to use, `mqtt://host[:port]` [default: a mosquitto started
    /// for the run on a free loopback port].
    #[arg(long, value_name = "URL")]
    pub mqtt_url: Option<String>,

    /// Longest a single round may take before it is abandoned (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub round_timeout: u64,

    /// Instead of measuring throughput: run each denial-of-service attack
    /// on a fresh hub as the user nobody (idle connections, partial HELLOs,
    /// a STATS_REQUEST flood, channels to the limit, wildcard patterns,
    /// channel rings, hoarded message queues) and report whether a
    /// bystander of another uid still connects, subscribes, publishes and
    /// receives, with its round-trip p50/p99. Must run as root.
    #[arg(long, conflicts_with_all = ["socket", "csv", "svg"])]
    pub attacks: bool,

    /// With --attacks: small attacks (seconds, for tests), not the sizes
    /// of issue #13. With --scale: up to 10 clients, 100 channels and 100
    /// patterns, short rounds. With --storage: short runs, 16 MiB raw. With
    /// --restart: 1 and 10 clients.
    #[arg(long)]
    pub quick: bool,

    /// Instead of comparing mechanisms: measure the per-message cost
    /// (ns per message, 1 / msgs/s) and one-way latency of a socket
    /// publisher → hub → socket subscriber at 64 B while the hub holds more
    /// and more idle clients (1 .. 10,000), channels (1 .. 100,000) and
    /// non-matching wildcard patterns (0 .. 100,000), by powers of ten. The
    /// bench starts its own hub with its per-uid limits raised to fit (the
    /// report shows the configuration). --svg draws it.
    #[arg(long, conflicts_with_all = ["socket", "csv", "attacks"])]
    pub scale: bool,

    /// Instead of comparing mechanisms: measure disk storage (1 KiB
    /// messages). A publisher on a `storage = "disk"`, `sync = "interval"`
    /// channel against the raw sequential write speed of the same file
    /// system; 1 and 8 publishers waiting for each ACK under
    /// `sync = "always"` against one fdatasync per message; a plain channel
    /// of a hub with disk channels against a hub without. The bench starts
    /// its own hubs; files go to its temporary directory (TMPDIR).
    #[arg(long, conflicts_with_all = ["socket", "csv", "svg", "attacks", "scale"])]
    pub storage: bool,

    /// Instead of comparing mechanisms: the pause a planned restart
    /// (SIGUSR2, the hand-over to a re-executed hub) makes, with 1, 10, 100
    /// and 1,000 idle socket clients connected: the longest round trip of a
    /// confirmed ping-pong through the hub across the restart, next to its
    /// median before, and how many clients the new hub kept. The bench
    /// starts its own hubs with raised per-uid limits. --quick: 1 and 10.
    #[arg(long, conflicts_with_all = ["socket", "csv", "svg", "attacks", "scale", "storage"])]
    pub restart: bool,

    /// Instead of comparing mechanisms: the C and Python clients against
    /// the Rust client, publisher → hub → subscriber, each end a separate
    /// process of the same client (--transports, --sizes, --messages
    /// [default: 200000], --repetitions). Prints msgs/s and the ratio to
    /// Rust; bench/bindings.sh builds the clients and runs it with
    /// `--transports socket,shm --sizes 64,1K`.
    #[arg(long, conflicts_with_all = ["csv", "svg", "attacks", "scale", "storage", "restart"])]
    pub bindings: bool,

    /// With --bindings: the compiled C client
    /// (bindings/c/bench/ipchub_bench_client.c) [default: no C rows].
    #[arg(long, value_name = "PATH")]
    pub c_client: Option<PathBuf>,

    /// With --bindings: the Python client (bindings/python/bench_client.py),
    /// run with python3 [default: no Python rows].
    #[arg(long, value_name = "PATH")]
    pub python_client: Option<PathBuf>,

    /// With --bindings: a directory with the `ipchub` Python module,
    /// put in front of PYTHONPATH.
    #[arg(long, value_name = "DIR")]
    pub python_path: Option<PathBuf>,
}

/// The argument that makes this executable a worker: the bench re-executes
/// itself (`ipchub-bench __worker SPEC`) so that the other end of every
/// measurement is a separate process. Not a clap subcommand, so it stays out
/// of --help and the man page.
pub const WORKER_ARG: &str = "__worker";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportList(pub Vec<TransportKind>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(pub Vec<usize>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameList(pub Vec<String>);

impl NameList {
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

/// Smallest payload: the sequence number and round id must fit.
pub const MIN_SIZE: usize = 16;
/// Largest payload the hub accepts by default (hub.max_message_size).
pub const MAX_SIZE: usize = 1 << 20;

pub const BASELINES: [&str; 11] = [
    "memcpy",
    "pipe",
    "pipe-batched",
    "fifo",
    "unix",
    "unix-batched",
    "mqueue",
    "shm",
    "tcp",
    "tcp-batched",
    "udp",
];

pub const PEERS: [&str; 6] = ["dbus", "mqtt", "mqtt-bridge", "iceoryx2", "zeromq", "nats"];

fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn parse_transports(s: &str) -> Result<TransportList, String> {
    let mut v = Vec::new();
    for p in split(s) {
        let t = TransportKind::parse(p).ok_or_else(|| {
            format!("unknown transport '{p}' (known: socket, pipe, fifo, mqueue, shm)")
        })?;
        if !v.contains(&t) {
            v.push(t);
        }
    }
    if v.is_empty() {
        return Err("no transport given".into());
    }
    Ok(TransportList(v))
}

/// One size: digits with an optional K/KiB or M/MiB suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("bad size '{s}': unit must be K or M")),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("bad size '{s}': expected a number like 64, 1K or 1M"))?;
    let size = n * mult;
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(format!(
            "size {s} out of range: {MIN_SIZE} bytes (sequence number and round) to 1M (the hub's default limit)"
        ));
    }
    Ok(size)
}

fn parse_sizes(s: &str) -> Result<SizeList, String> {
    let mut v = Vec::new();
    for p in split(s) {
        let n = parse_size(p)?;
        if !v.contains(&n) {
            v.push(n);
        }
    }
    if v.is_empty() {
        return Err("no size given".into());
    }
    Ok(SizeList(v))
}

/// `400ms`, `2s`, `1.5s`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration '{s}': expected e.g. 400ms or 2s"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("duration '{s}' must be positive"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_names(s: &str, known: &[&str]) -> Result<NameList, String> {
    match s.trim() {
        "all" => return Ok(NameList(known.iter().map(|s| s.to_string()).collect())),
        "none" => return Ok(NameList(Vec::new())),
        _ => {}
    }
    let mut v: Vec<String> = Vec::new();
    for p in split(s) {
        if !known.contains(&p) {
            return Err(format!("unknown name '{p}' (known: {})", known.join(", ")));
        }
        if !v.iter().any(|x| x == p) {
            v.push(p.to_string());
        }
    }
    Ok(NameList(v))
}

fn parse_baselines(s: &str) -> Result<NameList, String> {
    parse_names(s, &BASELINES)
}

fn parse_peers(s: &str) -> Result<NameList, String> {
    parse_names(s, &PEERS)
}

/// `1024` → `1 KiB`, as sizes are shown in tables.
pub fn size_label(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("8").is_err());
        assert!(parse_size("2M").is_err());
        assert!(parse_size("1G").is_err());
    }

    #[test]
    fn durations_take_ms_and_s() {
        assert_eq!(parse_duration("400ms"), Ok(Duration::from_millis(400)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn name_lists_know_all_and_none() {
        assert_eq!(
            parse_peers("all").unwrap().0,
            vec!["dbus", "mqtt", "mqtt-bridge", "iceoryx2", "zeromq", "nats"]
        );
        assert!(parse_peers("none").unwrap().0.is_empty());
        assert!(parse_baselines("pipe,nope").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
