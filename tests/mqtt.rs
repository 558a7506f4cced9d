//! The MQTT bridge against a real Mosquitto on a free loopback port and a
//! real `ipchubd`: both directions, QoS 0 and 1, loops, a broker that
//! restarts mid-stream, one that is not there at start, and a full spool;
//! TLS with certificates made by `openssl` per test (client certificates,
//! a wrong CA, a wrong name, an expired certificate, a missing key), two
//! brokers at once, the state channel and will, reloads and persistent
//! sessions. mosquitto_sub and mosquitto_pub play the outside MQTT world.

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Hub;
use ipchub::client::Client;
use ipchub::hub::TransportKind::Socket;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Poll `cond` every 20 ms until it holds, failing after `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto broker on a loopback port, killed when dropped.
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_on(free_port(), false)
    }

    /// With `persistent`, sessions and queued messages survive a SIGTERM
    /// restart (saved in the broker's temporary directory).
    fn start_on(port: u16, persistent: bool) -> Broker {
        Broker::start_conf(port, persistent, "")
    }

    /// With `extra` appended to the configuration (more listeners).
    fn start_conf(port: u16, persistent: bool, extra: &str) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-mqtt")
            .tempdir()
            .unwrap();
        let mut conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
        if persistent {
            // As root, Mosquitto would otherwise switch to its own user, which
            // cannot write the temporary directory; as anyone else it is ignored.
            conf += &format!(
                "persistence true\npersistence_location {}/\nuser root\n",
                dir.path().display()
            );
        } else {
            conf += "persistence false\n";
        }
        conf += extra;
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            child: None,
            port,
            dir,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            TcpStream::connect(&addr).is_ok()
        });
    }

    /// SIGTERM (Mosquitto saves its state) and wait for the exit.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("broker running");
        signal(&c, nix::sys::signal::SIGTERM);
        common::wait_child(&mut c, Duration::from_secs(10));
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().expect("broker running");
        c.kill().unwrap();
        c.wait_within(LIMIT).unwrap();
    }

    fn restart(&mut self) {
        self.spawn();
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mosquitto_pub` one message.
    fn publish(&self, topic: &str, payload: &str, qos: u8) {
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-t", topic, "-m", payload, "-q", &qos.to_string()])
            .status_within(LIMIT)
            .expect("run mosquitto_pub");
        assert!(st.success(), "mosquitto_pub failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait_within(LIMIT);
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("mosquitto.log"));
            eprintln!("--- mosquitto log ---\n{}", log.unwrap_or_default());
        }
    }
}

fn signal(c: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
}

/// A `mosquitto_sub -v` whose output lines ("topic payload") are read back
/// from a file; killed when dropped.
struct Sub {
    child: Child,
    out: PathBuf,
}

impl Sub {
    /// Subscribe to `filter` and return once messages flow: a probe topic
    /// is published until it shows up, since mosquitto_sub cannot say when
    /// its subscription is active.
    fn start(broker: &Broker, filter: &str, extra: &[&str]) -> Sub {
        let out = broker.dir.path().join(format!("sub-{}.out", free_port()));
        let probe = format!("probe/{}", free_port());
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-v"])
            .args(["-t", filter, "-t", &probe])
            .args(extra)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let sub = Sub { child, out };
        wait_until(
            Duration::from_secs(10),
            "mosquitto_sub to subscribe",
            || {
                broker.publish(&probe, "ready", 0);
                std::thread::sleep(Duration::from_millis(30));
                sub.raw_lines().iter().any(|l| l.starts_with(&probe))
            },
        );
        sub
    }

    fn raw_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }

    /// Received messages as "topic payload", probes left out.
    fn lines(&self) -> Vec<String> {
        let mut v = self.raw_lines();
        v.retain(|l| !l.starts_with("probe/"));
        v
    }

    fn wait_line(&self, line: &str) {
        wait_until(
            Duration::from_secs(10),
            &format!("'{line}' on the broker"),
            || self.lines().iter().any(|l| l == line),
        );
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait_within(LIMIT);
    }
}

/// The hub's configuration for a bridge to `url` plus `rules`.
fn bridge_config(url: &str, extra: &str) -> String {
    format!(
        "[bridge.mqtt]\nenabled = true\nurl = \"{url}\"\nclient_id = \"ipchub-test-{}\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 400\n{extra}",
        free_port()
    )
}

/// The bridge's status as the hub reports it.
fn status(c: &mut Client) -> BTreeMap<String, String> {
    c.stats()
        .unwrap()
        .components
        .get("bridge.mqtt")
        .cloned()
        .unwrap_or_default()
}

fn num(st: &BTreeMap<String, String>, key: &str) -> u64 {
    st.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Wait until the bridge is connected to both sides and its MQTT
/// subscriptions are confirmed.
fn wait_bridge_ready(c: &mut Client) {
    wait_until(Duration::from_secs(15), "the bridge to connect", || {
        let st = status(c);
        st.get("connected").map(String::as_str) == Some("true")
            && st.get("subscribed").map(String::as_str) == Some("true")
            && st.get("hub_connected").map(String::as_str) == Some("true")
    });
}

/// The next message on `c` that is not a bridge's state message
/// (`ipchub/bridge/<name>/state`, which a `#` subscriber sees too).
fn recv_data(c: &mut Client, limit: Option<Duration>) -> Option<ipchub::client::Message> {
    loop {
        let m = c.recv(limit).unwrap()?;
        if !m.channel.starts_with("ipchub/bridge/") {
            return Some(m);
        }
    }
}

fn bridge_client_id(c: &mut Client) -> u32 {
    let st = c.stats().unwrap();
    st.clients
        .iter()
        .find(|cl| cl.name == "bridge.mqtt")
        .expect("the bridge is a client of the hub")
        .id
}

#[test]
fn hub_messages_reach_the_broker_at_qos_0_and_1() {
    let broker = Broker::start();
    let sub = Sub::start(&broker, "ipchub/#", &["-q", "1"]);
    let hub = Hub::start_with(&bridge_config(
        &broker.url(),
        "[[bridge.mqtt.export]]\npattern = \"sensors/#\"\nprefix = \"ipchub/\"\nqos = 0\n\
         [[bridge.mqtt.export]]\npattern = \"jobs/+\"\nprefix = \"ipchub/\"\nqos = 1\n",
    ));
    let mut ctl = hub.client();
    wait_bridge_ready(&mut ctl);

    let mut publisher = hub.client_via(Socket);
    publisher
        .publish_confirmed("sensors/kitchen/temp", b"21.5")
        .unwrap();
    publisher.publish_confirmed("jobs/7", b"done").unwrap();
    publisher
        .publish_confirmed("elsewhere", b"not exported")
        .unwrap();
    let out = hub
        .ctl()
        .args(["pub", "-c", "jobs/8", "from ipchubctl"])
        .output_within(LIMIT)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    sub.wait_line("ipchub/sensors/kitchen/temp 21.5");
    sub.wait_line("ipchub/jobs/7 done");
    sub.wait_line("ipchub/jobs/8 from ipchubctl");
    assert!(!sub.lines().iter().any(|l| l.contains("not exported")));
    wait_until(Duration::from_secs(5), "sent = 3 in the status", || {
        let st = status(&mut ctl);
        num(&st, "sent") == 3 && num(&st, "spooled") == 0
    });
}

#[test]
fn broker_messages_reach_hub_subscribers_at_qos_0_and_1() {
    let broker = Broker::start();
    let hub = Hub::start_with(&bridge_config(
        &broker.url(),
        "[[bridge.mqtt.import]]\nfilter = \"cmd/#\"\nprefix = \"mqtt/\"\nqos = 1\n\
         [[bridge.mqtt.import]]\nfilter = \"raw/+\"\nqos = 0\n",
    ));
    let mut ctl = hub.client();
    let mut sub = hub.subscriber(Socket, "mqtt/#");
    let mut raw = hub.subscriber(Socket, "raw/#");
    wait_bridge_ready(&mut ctl);
    let bridge = bridge_client_id(&mut ctl);

    broker.publish("cmd/lamp/on", "1", 1);
    let m = sub.recv(WAIT).unwrap().expect("imported message");
    assert_eq!(
        (m.channel.as_str(), m.payload.as_slice()),
        ("mqtt/cmd/lamp/on", &b"1"[..])
    );
    assert_eq!(
        m.origin, bridge,
        "imports are published by the bridge's own connection"
    );

    broker.publish("raw/x", "qos0", 0);
    let m = raw.recv(WAIT).unwrap().expect("imported message");
    assert_eq!(
        (m.channel.as_str(), m.payload.as_slice()),
        ("raw/x", &b"qos0"[..])
    );

    // A topic that is no valid channel name is dropped and counted.
    broker.publish("cmd/with space", "x", 1);
    wait_until(
        Duration::from_secs(5),
        "the bad topic to be counted",
        || num(&status(&mut ctl), "dropped_import") == 1,
    );
    let st = status(&mut ctl);
    assert_eq!(
        (num(&st, "received"), num(&st, "imported")),
        (3, 2),
        "{st:?}"
    );
    // The warning names the topic and why.
    wait_until(
        Duration::from_secs(5),
        "a warning naming the dropped topic",
        || {
            hub.log()
                .contains("topic 'cmd/with space' does not map to a valid channel")
        },
    );
}

#[test]
fn overlapping_rules_never_loop_a_message() {
    let broker = Broker::start();
    let mqtt = Sub::start(&broker, "#", &["-q", "1"]);
    // Everything goes out, everything comes in, under the same names.
    let hub = Hub::start_with(&bridge_config(
        &broker.url(),
        "[[bridge.mqtt.export]]\npattern = \"#\"\n[[bridge.mqtt.import]]\nfilter = \"#\"\n",
    ));
    let mut ctl = hub.client();
    let mut local = hub.subscriber(Socket, "#");
    wait_bridge_ready(&mut ctl);

    // Hub → broker: not echoed back into the hub (MQTT 5 no-local).
    let mut publisher = hub.client();
    publisher.publish_confirmed("a/b", b"from-hub").unwrap();
    mqtt.wait_line("a/b from-hub");
    // Broker → hub: not exported again (the hub-side origin check).
    broker.publish("c/d", "from-mqtt", 1);
    let first = recv_data(&mut local, WAIT).unwrap();
    assert_eq!(first.payload, b"from-hub");
    // Had "a/b" come back, the broker would have sent it before "c/d".
    let second = recv_data(&mut local, WAIT).unwrap();
    assert_eq!(
        (second.channel.as_str(), second.payload.as_slice()),
        ("c/d", &b"from-mqtt"[..])
    );
    wait_until(
        Duration::from_secs(5),
        "the bridge to skip its own import",
        || num(&status(&mut ctl), "loops_prevented") == 1,
    );
    // Exports leave in order: had "c/d" gone out again it would precede this.
    publisher.publish_confirmed("z/sentinel", b"end").unwrap();
    mqtt.wait_line("z/sentinel end");
    let lines = mqtt.lines();
    assert_eq!(
        lines,
        ["a/b from-hub", "c/d from-mqtt", "z/sentinel end"],
        "the broker saw a loop"
    );
    assert!(
        recv_data(&mut local, Some(Duration::from_millis(200)))
            .unwrap()
            .payload
            == b"end"
    );
    assert!(
        recv_data(&mut local, Some(Duration::from_millis(200))).is_none(),
        "the hub saw a loop"
    );
}

#[test]
fn broker_restart_mid_stream_loses_nothing_at_qos_1() {
    let mut broker = Broker::start_on(free_port(), true);
    // A persistent session, so the subscriber misses nothing while it
    // reconnects after the restart either.
    let sub = Sub::start(
        &broker,
        "ipchub/seq/#",
        &["-q", "1", "-c", "-i", "restart-test-sub"],
    );
    let hub = Hub::start_with(&bridge_config(
        &broker.url(),
        "[[bridge.mqtt.export]]\npattern = \"seq/#\"\nprefix = \"ipchub/\"\nqos = 1\n\
         [[bridge.mqtt.import]]\nfilter = \"back/#\"\n",
    ));
    let mut ctl = hub.client();
    let mut imports = hub.subscriber(Socket, "back/#");
    wait_bridge_ready(&mut ctl);

    const N: usize = 300;
    let mut publisher = hub.client();
    for i in 0..N {
        publisher
            .publish("seq/n", i.to_string().as_bytes())
            .unwrap();
        publisher.flush().unwrap();
        if i == 100 {
            broker.stop();
            // While the broker is away the hub routes as usual.
            let mut local = hub.subscriber(Socket, "seq/#");
            publisher
                .publish_confirmed("seq/local", b"still routing")
                .unwrap();
            assert_eq!(local.recv(WAIT).unwrap().unwrap().payload, b"still routing");
        }
        if i == 150 {
            // The status is at most a second old.
            wait_until(
                Duration::from_secs(3),
                "spooled messages in the status",
                || {
                    let st = status(&mut ctl);
                    st["connected"] == "false" && num(&st, "spooled") > 0
                },
            );
            broker.restart();
        }
        // A burst before the stop leaves messages in flight when it comes;
        // after the restart a steady stream.
        if i > 150 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let want: BTreeSet<String> = (0..N).map(|i| format!("ipchub/seq/n {i}")).collect();
    wait_until(
        Duration::from_secs(30),
        "every message on the broker",
        || {
            let got: BTreeSet<String> = sub.lines().into_iter().collect();
            want.is_subset(&got)
        },
    );
    // QoS 1 allows a duplicate after a reconnect, never a reordering of the
    // first appearances.
    let mut seen = BTreeSet::new();
    let firsts: Vec<usize> = sub
        .lines()
        .iter()
        .filter_map(|l| l.strip_prefix("ipchub/seq/n ")?.parse().ok())
        .filter(|n| seen.insert(*n))
        .collect();
    assert_eq!(firsts, (0..N).collect::<Vec<_>>());

    // The bridge subscribed again after the restart.
    wait_bridge_ready(&mut ctl);
    broker.publish("back/after-restart", "yes", 1);
    let m = imports
        .recv(WAIT)
        .unwrap()
        .expect("import after the restart");
    assert_eq!(m.channel, "back/after-restart");
    let st = status(&mut ctl);
    assert!(num(&st, "reconnects") >= 1, "{st:?}");
    assert_eq!(num(&st, "dropped"), 0, "{st:?}");
}

#[test]
fn bridge_connects_once_an_absent_broker_appears() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let hub = Hub::start_with(&bridge_config(
        &url,
        "[[bridge.mqtt.export]]\npattern = \"late/#\"\nprefix = \"ipchub/\"\nretain = true\n\
         [[bridge.mqtt.import]]\nfilter = \"in/#\"\n",
    ));
    let mut ctl = hub.client();
    let mut local = hub.subscriber(Socket, "#");
    wait_until(Duration::from_secs(10), "the bridge on the hub", || {
        status(&mut ctl).get("hub_connected").map(String::as_str) == Some("true")
    });
    let mut publisher = hub.client();
    for i in 1..=3 {
        publisher
            .publish_confirmed(&format!("late/{i}"), b"spooled")
            .unwrap();
        assert_eq!(
            recv_data(&mut local, WAIT).unwrap().channel,
            format!("late/{i}")
        );
    }
    wait_until(Duration::from_secs(5), "three spooled messages", || {
        num(&status(&mut ctl), "spooled") == 3
    });
    let st = status(&mut ctl);
    assert_eq!(st["connected"], "false");
    assert!(!st["last_error"].is_empty(), "{st:?}");

    let broker = Broker::start_on(port, false);
    wait_bridge_ready(&mut ctl);
    // Retained, so a subscriber that comes after the bridge sees them.
    let sub = Sub::start(&broker, "ipchub/late/#", &[]);
    for i in 1..=3 {
        sub.wait_line(&format!("ipchub/late/{i} spooled"));
    }
    broker.publish("in/hello", "world", 1);
    let m = recv_data(&mut local, WAIT).expect("import");
    assert_eq!(
        (m.channel.as_str(), m.payload.as_slice()),
        ("in/hello", &b"world"[..])
    );
    wait_until(Duration::from_secs(5), "an empty spool", || {
        let st = status(&mut ctl);
        num(&st, "spooled") == 0 && num(&st, "sent") == 3
    });
}

#[test]
fn a_full_spool_drops_the_oldest_counts_and_logs() {
    let mut broker = Broker::start();
    let hub = Hub::start_with(&bridge_config(
        &broker.url(),
        "spool_max_messages = 5\n\
         [[bridge.mqtt.export]]\npattern = \"s/#\"\nprefix = \"ipchub/\"\nretain = true\n",
    ));
    let mut ctl = hub.client();
    wait_bridge_ready(&mut ctl);
    let port = broker.port;
    broker.kill9();
    wait_until(Duration::from_secs(10), "the bridge to notice", || {
        status(&mut ctl)["connected"] == "false"
    });
    let mut publisher = hub.client();
    for i in 0..8 {
        publisher
            .publish_confirmed(&format!("s/{i}"), b"v")
            .unwrap();
    }
    wait_until(Duration::from_secs(5), "three drops", || {
        let st = status(&mut ctl);
        num(&st, "dropped_spool_full") == 3 && num(&st, "spooled") == 5
    });
    wait_until(Duration::from_secs(5), "the drops in the log", || {
        hub.log().contains("dropped messages")
    });

    let broker = Broker::start_on(port, false);
    wait_bridge_ready(&mut ctl);
    wait_until(Duration::from_secs(10), "the spool to empty", || {
        num(&status(&mut ctl), "spooled") == 0
    });
    let sub = Sub::start(&broker, "ipchub/s/#", &[]);
    for i in 3..8 {
        sub.wait_line(&format!("ipchub/s/{i} v"));
    }
    let lines = sub.lines();
    for i in 0..3 {
        assert!(
            !lines.contains(&format!("ipchub/s/{i} v")),
            "oldest should be dropped: {lines:?}"
        );
    }
}

#[test]
fn ipchubctl_stats_shows_the_bridge() {
    let broker = Broker::start();
    let hub = Hub::start_with(&bridge_config(&broker.url(), ""));
    let mut ctl = hub.client();
    wait_until(Duration::from_secs(10), "the bridge to connect", || {
        status(&mut ctl).get("connected").map(String::as_str) == Some("true")
    });
    let out = hub.ctl().arg("stats").output_within(LIMIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("COMPONENT bridge.mqtt"), "{text}");
    assert!(text.contains("connected=true"), "{text}");
}

// ---- TLS, several brokers, state, reload, persistent sessions ----

/// Certificates made with `openssl` for one test: a CA, a second CA nobody
/// trusts, server certificates (good, wrong name, expired) and a client
/// certificate, all EC P-256.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-pki")
            .tempdir()
            .unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
            30,
        );
        pki.leaf(
            "wrongname",
            "ca",
            "subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth",
            30,
        );
        // -days -1: expired a day before it was made.
        pki.leaf(
            "expired",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
            -1,
        );
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth", 30);
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output_within(LIMIT)
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/CN=ipchub test {name}"),
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, ext: &str, days: i32) {
        std::fs::write(
            self.dir.path().join(format!("{name}.ext")),
            format!("{ext}\n"),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    /// A Mosquitto TLS listener on `port` serving certificate `cert`.
    fn listener(&self, port: u16, cert: &str, require_client_cert: bool) -> String {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_client_cert}\n",
            self.path("ca.pem"),
            self.path(&format!("{cert}.pem")),
            self.path(&format!("{cert}.key")),
        )
    }
}

/// A broker with a cleartext listener (for mosquitto_pub/sub) and the TLS
/// listeners `tls` describes. As root, Mosquitto would switch to its own
/// user, which cannot read the test's keys.
fn tls_broker(tls: &str) -> Broker {
    Broker::start_conf(free_port(), false, &format!("user root\n{tls}"))
}

/// Status of the bridge named `name`.
fn status_of(c: &mut Client, name: &str) -> BTreeMap<String, String> {
    c.stats()
        .unwrap()
        .components
        .get(&format!("bridge.mqtt.{name}"))
        .cloned()
        .unwrap_or_default()
}

fn wait_named_ready(c: &mut Client, name: &str) {
    wait_until(
        Duration::from_secs(15),
        &format!("bridge {name} to connect"),
        || {
            let st = status_of(c, name);
            st.get("state").map(String::as_str) == Some("connected")
                && st.get("subscribed").map(String::as_str) == Some("true")
                && st.get("hub_connected").map(String::as_str) == Some("true")
        },
    );
}

/// One `[[bridge.mqtt]]` block.
fn named_bridge(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[bridge.mqtt]]\nname = \"{name}\"\nenabled = true\nurl = \"{url}\"\n\
         client_id = \"ipchub-test-{name}-{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 400\n{extra}",
        free_port()
    )
}

#[test]
fn export_and_import_over_mqtts_with_a_client_certificate() {
    let pki = Pki::new();
    let tls_port = free_port();
    let broker = tls_broker(&pki.listener(tls_port, "server", true));
    let sub = Sub::start(&broker, "out/#", &["-q", "1"]);
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let certs = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key")
    );
    let hub = Hub::start_with(&format!(
        "{}{}",
        named_bridge(
            "tls",
            &url,
            &format!(
                "{certs}[[bridge.mqtt.export]]\npattern = \"s/#\"\nprefix = \"out/\"\n\
                 [[bridge.mqtt.import]]\nfilter = \"in/#\"\n"
            )
        ),
        // The same broker without a client certificate: refused.
        named_bridge(
            "nocert",
            &url,
            &format!("ca_file = \"{}\"\n", pki.path("ca.pem"))
        ),
    ));
    let mut ctl = hub.client();
    wait_named_ready(&mut ctl, "tls");
    // Generated 0600: no warning about the key.
    assert!(
        !hub.log().contains("key_file) is readable"),
        "{}",
        hub.log()
    );
    let mut local = hub.subscriber(Socket, "in/#");

    hub.client().publish_confirmed("s/temp", b"21").unwrap();
    sub.wait_line("out/s/temp 21");
    broker.publish("in/cmd", "on", 1);
    let m = local.recv(WAIT).unwrap().expect("import over TLS");
    assert_eq!(
        (m.channel.as_str(), m.payload.as_slice()),
        ("in/cmd", &b"on"[..])
    );

    wait_until(
        Duration::from_secs(15),
        "the certificate-less bridge to be refused twice",
        || hub.log().matches("require a client certificate").count() >= 2,
    );
    wait_until(Duration::from_secs(5), "nocert's status", || {
        let st = status_of(&mut ctl, "nocert");
        st.get("state").map(String::as_str) == Some("disconnected")
            && st
                .get("last_error")
                .is_some_and(|e| e.contains("client certificate"))
    });
}

#[test]
fn untrusted_misnamed_and_expired_certificates_are_refused_clearly_and_retried() {
    let pki = Pki::new();
    let (good, misnamed, expired) = (free_port(), free_port(), free_port());
    let _broker = tls_broker(&format!(
        "{}{}{}",
        pki.listener(good, "server", false),
        pki.listener(misnamed, "wrongname", false),
        pki.listener(expired, "expired", false)
    ));
    let url = |p: u16| format!("mqtts://127.0.0.1:{p}");
    let ca = |f: &str| format!("ca_file = \"{}\"\n", pki.path(f));
    let hub = Hub::start_with(&format!(
        "{}{}{}{}",
        named_bridge("wrongca", &url(good), &ca("other-ca.pem")),
        named_bridge("wrongname", &url(misnamed), &ca("ca.pem")),
        named_bridge("expired", &url(expired), &ca("ca.pem")),
        named_bridge(
            "nokey",
            &url(good),
            &format!(
                "{}cert_file = \"{}\"\nkey_file = \"{}\"\n",
                ca("ca.pem"),
                pki.path("client.pem"),
                pki.path("missing.key")
            )
        ),
    ));
    let mut ctl = hub.client();
    for (name, text) in [
        ("wrongca", "not signed by a trusted CA"),
        ("wrongname", "not valid for the name '127.0.0.1'"),
        ("expired", "certificate has expired"),
        ("nokey", "cannot read key_file"),
    ] {
        wait_until(
            Duration::from_secs(20),
            &format!("bridge {name}: '{text}' logged on two attempts"),
            || hub.log().matches(text).count() >= 2,
        );
        // The status follows within its one-second report interval.
        wait_until(
            Duration::from_secs(5),
            &format!("bridge {name}'s status"),
            || {
                let st = status_of(&mut ctl, name);
                st.get("state").map(String::as_str) == Some("disconnected")
                    && st.get("last_error").is_some_and(|e| e.contains(text))
            },
        );
    }
    // Each failed attempt is logged once, naming the bridge.
    assert!(hub.log().contains("bridge.mqtt.wrongca"), "{}", hub.log());
}

#[test]
fn one_broker_down_never_stops_the_other() {
    let mut a = Broker::start();
    let b = Broker::start();
    let sub_b = Sub::start(&b, "x/#", &["-q", "1"]);
    let rules = "[[bridge.mqtt.export]]\npattern = \"x/#\"\n";
    let hub = Hub::start_with(&format!(
        "{}{}",
        named_bridge("a", &a.url(), rules),
        named_bridge("b", &b.url(), rules)
    ));
    let mut ctl = hub.client();
    wait_named_ready(&mut ctl, "a");
    wait_named_ready(&mut ctl, "b");
    let mut state_a = hub.subscriber(Socket, "ipchub/bridge/a/state");

    a.kill9();
    let m = state_a.recv(WAIT).unwrap().expect("a's state change");
    let text = String::from_utf8_lossy(&m.payload).to_string();
    assert!(text.starts_with("disconnected: "), "{text}");
    let mut publisher = hub.client();
    for i in 0..20 {
        publisher
            .publish_confirmed(&format!("x/{i}"), b"v")
            .unwrap();
    }
    for i in 0..20 {
        sub_b.wait_line(&format!("x/{i} v"));
    }
    wait_until(Duration::from_secs(5), "a's status: 20 spooled", || {
        let st = status_of(&mut ctl, "a");
        st.get("state").map(String::as_str) == Some("disconnected") && num(&st, "spooled") == 20
    });
    wait_until(Duration::from_secs(5), "b's status: 20 out", || {
        num(&status_of(&mut ctl, "b"), "messages_out") == 20
    });

    // a comes back: its spool drains, and its state channel says so.
    a.restart();
    let m = state_a.recv(WAIT).unwrap().expect("a's state change");
    assert_eq!(m.payload, b"connected");
    wait_until(Duration::from_secs(10), "a's spool to drain", || {
        num(&status_of(&mut ctl, "a"), "spooled") == 0
    });
}

#[test]
fn the_will_tells_the_broker_when_the_bridge_is_gone() {
    let broker = Broker::start();
    let sub = Sub::start(&broker, "hosts/#", &["-q", "1"]);
    let mut hub = Hub::start_with(&named_bridge(
        "w",
        &broker.url(),
        "state_topic = \"hosts/test/state\"\n",
    ));
    sub.wait_line("hosts/test/state connected");
    // Killed: no DISCONNECT, so the broker publishes the will.
    hub.kill9();
    sub.wait_line("hosts/test/state disconnected");
    // Retained: a late subscriber sees the last state too.
    let late = Sub::start(&broker, "hosts/#", &[]);
    late.wait_line("hosts/test/state disconnected");
}

/// Rewrite the hub's config and reload it.
fn reload(hub: &Hub, config: &str) {
    std::fs::write(&hub.config, format!("{config}\n[dbus]\nenabled = false\n")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
}

fn client_id_named(c: &mut Client, name: &str) -> Option<u32> {
    c.stats()
        .unwrap()
        .clients
        .iter()
        .find(|cl| cl.name == name)
        .map(|cl| cl.id)
}

#[test]
fn a_reload_restarts_only_the_bridge_that_changed() {
    let broker = Broker::start();
    let sub = Sub::start(&broker, "#", &["-q", "1"]);
    let b = named_bridge(
        "b",
        &broker.url(),
        "[[bridge.mqtt.export]]\npattern = \"b/#\"\nprefix = \"from-b/\"\n",
    );
    let a_old = named_bridge(
        "a",
        &broker.url(),
        "[[bridge.mqtt.export]]\npattern = \"a/#\"\nprefix = \"old/\"\n",
    );
    let hub = Hub::start_with(&format!("{a_old}{b}"));
    let mut ctl = hub.client();
    wait_named_ready(&mut ctl, "a");
    wait_named_ready(&mut ctl, "b");
    let b_client = client_id_named(&mut ctl, "bridge.mqtt.b").unwrap();
    let a_client = client_id_named(&mut ctl, "bridge.mqtt.a").unwrap();
    let mut publisher = hub.client();
    publisher.publish_confirmed("a/1", b"v").unwrap();
    sub.wait_line("old/a/1 v");

    // a's rules change (its client id with them, as a new block would);
    // b's block is the same text.
    let a_new = named_bridge(
        "a",
        &broker.url(),
        "[[bridge.mqtt.export]]\npattern = \"a/#\"\nprefix = \"new/\"\n",
    );
    reload(&hub, &format!("{a_new}{b}"));
    wait_until(Duration::from_secs(15), "a restarted on the hub", || {
        client_id_named(&mut ctl, "bridge.mqtt.a").is_some_and(|id| id != a_client)
    });
    wait_named_ready(&mut ctl, "a");
    publisher.publish_confirmed("a/2", b"v").unwrap();
    sub.wait_line("new/a/2 v");
    publisher.publish_confirmed("b/1", b"v").unwrap();
    sub.wait_line("from-b/b/1 v");
    assert!(!sub.lines().contains(&"old/a/2 v".to_string()));
    // b kept its hub connection and its broker connection throughout.
    assert_eq!(client_id_named(&mut ctl, "bridge.mqtt.b"), Some(b_client));
    let st = status_of(&mut ctl, "b");
    assert_eq!(num(&st, "reconnects"), 0, "{st:?}");

    assert!(
        !hub.log()
            .lines()
            .any(|l| l.contains("stopping the bridge") && l.contains("component=bridge.mqtt.b")),
        "{}",
        hub.log()
    );

    // Removed on reload: gone from the statistics.
    reload(&hub, &b);
    wait_until(Duration::from_secs(15), "a removed", || {
        !ctl.stats()
            .unwrap()
            .components
            .contains_key("bridge.mqtt.a")
            && client_id_named(&mut ctl, "bridge.mqtt.a").is_none()
    });
    assert_eq!(client_id_named(&mut ctl, "bridge.mqtt.b"), Some(b_client));
}

#[test]
fn a_persistent_session_keeps_qos1_imports_while_the_bridge_is_away() {
    let broker = Broker::start();
    let id = format!("ipchub-test-persist-{}", free_port());
    let cfg = |enabled: bool| {
        format!(
            "[bridge.mqtt]\nenabled = {enabled}\nurl = \"{}\"\nclient_id = \"{id}\"\n\
             clean_start = false\nsession_expiry_secs = 600\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 400\n\
             [[bridge.mqtt.import]]\nfilter = \"q/#\"\nqos = 1\n",
            broker.url()
        )
    };
    let hub = Hub::start_with(&cfg(true));
    let mut ctl = hub.client();
    wait_bridge_ready(&mut ctl);
    let mut local = hub.subscriber(Socket, "q/#");

    // The bridge goes away (a clean stop); the broker keeps its session.
    reload(&hub, &cfg(false));
    wait_until(Duration::from_secs(15), "the bridge to stop", || {
        !ctl.stats().unwrap().components.contains_key("bridge.mqtt")
    });
    broker.publish("q/while-away", "kept", 1);
    // Back with the same client id: the broker delivers what it queued.
    reload(&hub, &cfg(true));
    let m = local
        .recv(Some(Duration::from_secs(15)))
        .unwrap()
        .expect("queued import");
    assert_eq!(
        (m.channel.as_str(), m.payload.as_slice()),
        ("q/while-away", &b"kept"[..])
    );
}

#[test]
fn secrets_readable_by_everyone_are_warned_about_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::start();
    let pki = Pki::new();
    let hub = Hub::start_with("");
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let cfg = |keep_alive: u32| {
        format!(
            "{}username = \"u\"\npassword = \"p\"\nkeep_alive_secs = {keep_alive}\n",
            named_bridge("s", &broker.url(), "")
        )
    };
    let warning = "holds the MQTT password and every local user can read it";
    let mut ctl = hub.client();
    mode(&hub.config, 0o600);
    reload(&hub, &cfg(30));
    wait_named_ready(&mut ctl, "s");
    assert!(!hub.log().contains(warning), "{}", hub.log());

    mode(&hub.config, 0o644);
    reload(&hub, &cfg(31));
    let named = format!("file={}", hub.config.display());
    wait_until(
        Duration::from_secs(10),
        "the warning naming the file",
        || {
            hub.log()
                .lines()
                .any(|l| l.contains(warning) && l.contains(&named))
        },
    );

    // A world-readable private key is named too.
    let key = pki.dir.path().join("client.key");
    mode(&key, 0o644);
    let tls_port = free_port();
    let _tls = tls_broker(&pki.listener(tls_port, "server", false));
    mode(&hub.config, 0o600);
    reload(
        &hub,
        &named_bridge(
            "k",
            &format!("mqtts://127.0.0.1:{tls_port}"),
            &format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                pki.path("ca.pem"),
                pki.path("client.pem"),
                key.display()
            ),
        ),
    );
    let named = format!("file={}", key.display());
    wait_until(Duration::from_secs(10), "the key warning", || {
        hub.log()
            .lines()
            .any(|l| l.contains("key_file) is readable") && l.contains(&named))
    });
    wait_named_ready(&mut ctl, "k");
}

/// `mosquitto_pub -r` one retained message (empty: clear the topic's value).
fn mqtt_retain(broker: &Broker, topic: &str, payload: &str) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", topic, "-q", "1", "-r"]);
    if payload.is_empty() {
        cmd.arg("-n");
    } else {
        cmd.args(["-m", payload]);
    }
    assert!(cmd
        .status_within(LIMIT)
        .expect("run mosquitto_pub")
        .success());
}

/// Publish a retained value into the hub and wait for the hub's ACK.
fn hub_retain(c: &mut Client, channel: &str, payload: &[u8]) {
    use ipchub::client::{Event, PublishOptions};
    let opts = PublishOptions {
        ack: true,
        priority: 0,
    };
    let seq = c.publish_retained(channel, payload, opts).unwrap();
    loop {
        match c.next_event(WAIT).unwrap() {
            Some(Event::Ack { seq: s, .. }) if s == seq => return,
            Some(Event::Error { seq: s, text, .. }) if s == seq => panic!("refused: {text}"),
            Some(_) => {}
            None => panic!("no answer to a retained publish within 10 s"),
        }
    }
}

/// The retained value a new subscriber of `channel` is sent first, if any
/// (it comes right behind the subscription's ACK, so a short wait tells).
fn hub_retained(hub: &Hub, channel: &str) -> Option<ipchub::client::Message> {
    let mut c = hub.subscriber(Socket, channel);
    let m = c.recv(Some(Duration::from_millis(500))).unwrap()?;
    assert!(m.retained, "a live message, not a retained value: {m:?}");
    Some(m)
}

/// A late MQTT subscriber's retained values under `filter`, as
/// "topic payload retain-flag" (they arrive before its probe).
fn mqtt_retained(broker: &Broker, filter: &str) -> Vec<String> {
    Sub::start(broker, filter, &["-F", "%t %p %r"]).lines()
}

fn bridge_id(c: &mut Client) -> u32 {
    client_id_named(c, "bridge.mqtt").expect("the bridge is a client of the hub")
}

#[test]
fn retained_broker_values_become_the_channels_retained_values_and_never_bounce() {
    let broker = Broker::start();
    // Sees every message on the broker, to tell a bounce.
    let watcher = Sub::start(&broker, "#", &["-q", "1"]);
    // Retained before the bridge subscribes: the broker replays it.
    mqtt_retain(&broker, "m/early", "1");
    // Everything goes out, m/# comes in under the same names; the hub
    // retains every message of m/kept/#.
    let cfg = |keep_alive: u32| {
        format!(
            "[bridge.mqtt]\nenabled = true\nurl = \"{}\"\nclient_id = \"ipchub-test-r{}\"\n\
             keep_alive_secs = {keep_alive}\nreconnect_min_ms = 100\nreconnect_max_ms = 400\n\
             [[bridge.mqtt.export]]\npattern = \"#\"\n\
             [[bridge.mqtt.import]]\nfilter = \"m/#\"\n\
             [[channel]]\npattern = \"m/kept/#\"\nretain = true\n",
            broker.url(),
            broker.port
        )
    };
    let hub = Hub::start_with(&cfg(30));
    let mut ctl = hub.client();
    wait_bridge_ready(&mut ctl);
    let bridge = bridge_id(&mut ctl);
    wait_until(Duration::from_secs(10), "the replayed import", || {
        num(&status(&mut ctl), "imported") == 1
    });
    let m = hub_retained(&hub, "m/early").expect("the broker's retained value");
    assert_eq!((m.payload.as_slice(), m.origin), (&b"1"[..], bridge));

    // A live retained publish keeps its flag (retain as published).
    mqtt_retain(&broker, "m/lamp", "on");
    // An ordinary one stays ordinary, unless the channel retains all.
    broker.publish("m/plain", "x", 1);
    broker.publish("m/kept/a", "v", 1);
    wait_until(Duration::from_secs(10), "three more imports", || {
        num(&status(&mut ctl), "imported") == 4
    });
    assert_eq!(hub_retained(&hub, "m/lamp").unwrap().payload, b"on");
    assert!(hub_retained(&hub, "m/plain").is_none());
    assert_eq!(hub_retained(&hub, "m/kept/a").unwrap().payload, b"v");
    let st = status(&mut ctl);
    assert_eq!(num(&st, "received_retained"), 2, "{st:?}");

    // An empty retained publish clears, as in MQTT.
    mqtt_retain(&broker, "m/lamp", "");
    wait_until(Duration::from_secs(10), "the clear to be imported", || {
        num(&status(&mut ctl), "imported") == 5
    });
    assert!(hub_retained(&hub, "m/lamp").is_none());

    // A restart on reload: the hub replays m/early and m/kept/a to the new
    // bridge's subscription under the old bridge's id; neither may go back
    // out.
    reload(&hub, &cfg(31));
    wait_until(Duration::from_secs(15), "the bridge restarted", || {
        client_id_named(&mut ctl, "bridge.mqtt").is_some_and(|id| id != bridge)
    });
    wait_bridge_ready(&mut ctl);
    wait_until(Duration::from_secs(10), "the replay recognised", || {
        num(&status(&mut ctl), "loops_prevented") >= 1
    });
    // Exports leave in order: a bounce would precede this.
    let mut publisher = hub.client();
    publisher.publish_confirmed("z/end", b"end").unwrap();
    watcher.wait_line("z/end end");
    let lines = watcher.lines();
    let count = |l: &str| lines.iter().filter(|x| *x == l).count();
    assert_eq!(count("m/early 1"), 1, "{lines:?}");
    assert_eq!(count("m/lamp on"), 1, "{lines:?}");
    assert_eq!(count("m/plain x"), 1, "{lines:?}");
    assert_eq!(count("m/kept/a v"), 1, "{lines:?}");
}

#[test]
fn retained_hub_values_reach_the_broker_retained_clear_and_never_bounce() {
    let broker = Broker::start();
    let watcher = Sub::start(&broker, "#", &["-q", "1"]);
    let hub = Hub::start_with("");
    let mut ctl = hub.client();
    let mut local = hub.subscriber(Socket, "#");
    let mut publisher = hub.client();
    // Retained before the bridge exists: replayed to its subscription.
    hub_retain(&mut publisher, "s/lamp", b"on");
    // Overlapping rules: everything goes out and comes in under the same
    // names; st/# carries states, retained whatever the hub says; the hub
    // retains every message of cfg/#.
    let cfg = |keep_alive: u32| {
        format!(
            "[bridge.mqtt]\nenabled = true\nurl = \"{}\"\nclient_id = \"ipchub-test-h{}\"\n\
             keep_alive_secs = {keep_alive}\nreconnect_min_ms = 100\nreconnect_max_ms = 400\n\
             [[bridge.mqtt.export]]\npattern = \"st/#\"\nretain = true\n\
             [[bridge.mqtt.export]]\npattern = \"#\"\n\
             [[bridge.mqtt.import]]\nfilter = \"#\"\n\
             [[channel]]\npattern = \"cfg/#\"\nretain = true\n",
            broker.url(),
            broker.port
        )
    };
    reload(&hub, &cfg(30));
    wait_bridge_ready(&mut ctl);
    let first_bridge = bridge_id(&mut ctl);
    watcher.wait_line("s/lamp on");
    assert_eq!(mqtt_retained(&broker, "s/#"), ["s/lamp on 1"]);

    // A rule with retain = true: set, then cleared by an empty message.
    hub_retain(&mut publisher, "st/door", b"open");
    watcher.wait_line("st/door open");
    assert_eq!(mqtt_retained(&broker, "st/#"), ["st/door open 1"]);
    hub_retain(&mut publisher, "st/door", b"");
    publisher
        .publish_confirmed("z/1", b"after the clear")
        .unwrap();
    watcher.wait_line("z/1 after the clear");
    assert!(mqtt_retained(&broker, "st/#").is_empty());

    // A live retained publish on an ordinary channel, once the bridge is
    // subscribed: exported retained too (retain as published).
    hub_retain(&mut publisher, "s/fan", b"high");
    watcher.wait_line("s/fan high");
    let mut kept = mqtt_retained(&broker, "s/#");
    kept.sort();
    assert_eq!(kept, ["s/fan high 1", "s/lamp on 1"]);

    // A channel the hub retains every message of: exported retained.
    publisher.publish_confirmed("cfg/mode", b"eco").unwrap();
    watcher.wait_line("cfg/mode eco");
    assert_eq!(mqtt_retained(&broker, "cfg/#"), ["cfg/mode eco 1"]);

    // A restart on reload: the broker replays s/lamp to the new bridge's
    // subscription; it must not come back into the hub.
    reload(&hub, &cfg(31));
    wait_until(Duration::from_secs(15), "the bridge restarted", || {
        client_id_named(&mut ctl, "bridge.mqtt").is_some_and(|id| id != first_bridge)
    });
    wait_bridge_ready(&mut ctl);
    let second_bridge = bridge_id(&mut ctl);
    wait_until(
        Duration::from_secs(10),
        "the broker's replay recognised",
        || num(&status(&mut ctl), "loops_prevented") >= 1,
    );
    // The broker delivers in order: a bounce would precede this.
    broker.publish("zz/end", "end", 1);
    let mut seen = Vec::new();
    loop {
        let m = recv_data(&mut local, WAIT).expect("the sentinel");
        if m.channel == "zz/end" {
            assert_eq!(m.origin, second_bridge);
            break;
        }
        seen.push(m);
    }
    // (Probes of the late subscribers came in too: they are MQTT's own.)
    for m in seen.iter().filter(|m| !m.channel.starts_with("probe/")) {
        assert!(
            m.origin != first_bridge && m.origin != second_bridge,
            "came back into the hub: {m:?} (all: {seen:?})"
        );
    }
    // The hub's value is still the publisher's own.
    assert_eq!(hub_retained(&hub, "s/lamp").unwrap().origin, publisher.id());
}
