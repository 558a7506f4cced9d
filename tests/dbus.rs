//! The D-Bus interface against a real `ipchubd` on a private system-like bus.
//!
//! Each test starts its own `dbus-daemon` (a system-bus configuration that
//! includes the shipped policy file `etc/dbus-1/system.d/org.ipchub.conf`)
//! and points the daemon at it with `DBUS_SYSTEM_BUS_ADDRESS`, as systemd
//! would. The helpers are private to this file on purpose: they need a bus
//! beside the hub, which the shared harness does not start.
//!
//! Needs `dbus-daemon`, `busctl` and `setpriv`, and root (the denial test
//! switches to `nobody`); a test whose tools are missing fails, it does not skip.

#[path = "common/deadline.rs"]
mod deadline;
#[allow(unused_imports)]
use deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipchub::client::{Client, Event, Options};
use ipchub::hub::TransportKind;
use zbus::blocking::{Connection, MessageIterator, Proxy};
use zbus::message::Type as MsgType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::MatchRule;

const IPCHUBD: &str = env!("CARGO_BIN_EXE_ipchubd");
const IPCHUBCTL: &str = env!("CARGO_BIN_EXE_ipchubctl");
const POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/etc/dbus-1/system.d/org.ipchub.conf"
);
/// How long anything may take before a test gives up.
const PATIENCE: Duration = Duration::from_secs(10);
/// The sampling interval the test hubs use, so property tests are quick.
const INTERVAL_MS: u64 = 200;

const NAME: &str = "org.ipchub";
const HUB_PATH: &str = "/org/ipchub";
const HUB1: &str = "org.ipchub.Hub1";

/// Poll `cond` until it holds or PATIENCE runs out.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait_within(LIMIT);
}

/// A private `dbus-daemon` with system-bus rules plus our policy file.
struct Bus {
    child: Child,
    dir: tempfile::TempDir,
    address: String,
    /// Policy rules added after the shipped file's.
    extra_policy: String,
}

impl Bus {
    fn start() -> Bus {
        Bus::start_with_policy("")
    }

    /// A bus whose configuration ends with these policy rules.
    fn start_with_policy(extra_policy: &str) -> Bus {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-bus")
            .tempdir()
            .unwrap();
        // `nobody` must reach the socket for the denial test.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (child, address) = spawn_bus(dir.path(), extra_policy);
        Bus {
            child,
            dir,
            address,
            extra_policy: extra_policy.to_string(),
        }
    }

    /// Stop this bus and start a new one on the same socket path.
    fn restart(&mut self) {
        kill(&mut self.child);
        let (child, address) = spawn_bus(self.dir.path(), &self.extra_policy);
        self.child = child;
        self.address = address;
    }

    fn connect(&self) -> Connection {
        zbus::blocking::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .expect("connect to the test bus")
    }

    fn name_has_owner(&self, conn: &Connection) -> bool {
        zbus::blocking::fdo::DBusProxy::new(conn)
            .unwrap()
            .name_has_owner(NAME.try_into().unwrap())
            .unwrap()
    }

    /// `busctl --address=… ARGS`, optionally as `nobody`.
    fn busctl(&self, as_nobody: bool, args: &[&str]) -> Output {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "busctl",
            ]);
            c
        } else {
            Command::new("busctl")
        };
        cmd.arg(format!("--address={}", self.address))
            .args(args)
            .output_within(LIMIT)
            .expect("run busctl")
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Start `dbus-daemon` on `dir/system_bus_socket`; its address.
fn spawn_bus(dir: &Path, extra_policy: &str) -> (Child, String) {
    let socket = dir.join("system_bus_socket");
    let _ = std::fs::remove_file(&socket);
    let conf = dir.join("system.conf");
    std::fs::write(&conf, bus_config(&socket, extra_policy)).unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--print-address", "--nofork"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus-daemon (apt-get install dbus-daemon)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("unix:"), "dbus-daemon printed {line:?}");
    // Without the printed guid, as a real DBUS_SYSTEM_BUS_ADDRESS: a
    // restarted bus has a new one, and a client checks it.
    (child, format!("unix:path={}", socket.display()))
}

/// Debian's system.conf minus what needs a real system (user switch,
/// activation helper, syslog), plus the policy file the package installs.
fn bus_config(socket: &Path, extra_policy: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{policy}</include>
  {extra_policy}
</busconfig>
"#,
        socket = socket.display(),
        policy = POLICY,
    )
}

/// A running `ipchubd` pointed at a bus; killed when dropped.
struct Hub {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Hub {
    /// A hub on `bus_address` with this extra configuration text.
    fn start(bus_address: &str, extra_config: &str) -> Hub {
        let dir = tempfile::Builder::new()
            .prefix("ipchub-dbus")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("ipchub.sock");
        let config = dir.path().join("ipchub.toml");
        std::fs::write(
            &config,
            format!("{extra_config}\n[dbus]\nstats_interval_ms = {INTERVAL_MS}\n"),
        )
        .unwrap();
        let log = dir.path().join("ipchubd.log");
        let child = Command::new(IPCHUBD)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
            // Its own state (sequence reservations, logs), never /var/lib.
            .env("STATE_DIRECTORY", dir.path().join("state"))
            .env("IPCHUB_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ipchubd");
        let hub = Hub {
            child,
            dir,
            socket,
            config,
            log,
        };
        wait_for("the hub socket", || {
            UnixStream::connect(&hub.socket).is_ok()
        });
        hub
    }

    /// A hub on `bus`, once it owns its name there.
    fn on(bus: &Bus, extra_config: &str) -> (Hub, Connection) {
        let hub = Hub::start(&bus.address, extra_config);
        let conn = bus.connect();
        wait_for("org.ipchub on the bus", || bus.name_has_owner(&conn));
        (hub, conn)
    }

    fn client(&self, name: &str) -> Client {
        Client::connect(&Options {
            socket: Some(self.socket.clone()),
            transport: TransportKind::Socket,
            name: name.into(),
            ..Options::default()
        })
        .expect("connect a client")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ipchubctl stats --json` as JSON.
    fn ctl_stats(&self) -> serde_json::Value {
        let out = Command::new(IPCHUBCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(["stats", "--json"])
            .output_within(LIMIT)
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        kill(&mut self.child);
        let _ = &self.dir;
    }
}

fn hub_proxy(conn: &Connection) -> Proxy<'static> {
    proxy(conn, HUB_PATH, HUB1)
}

/// A proxy that reads properties from the bus every time (no cache), so
/// tests see what the daemon serves, not what signals told the proxy.
fn proxy(conn: &Connection, path: &str, iface: &str) -> Proxy<'static> {
    zbus::blocking::proxy::Builder::new(conn)
        .destination(NAME)
        .unwrap()
        .path(path.to_string())
        .unwrap()
        .interface(iface.to_string())
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .unwrap()
}

fn prop<T: TryFrom<OwnedValue>>(p: &Proxy<'_>, name: &str) -> T
where
    T::Error: Into<zbus::Error>,
{
    p.get_property(name)
        .unwrap_or_else(|e| panic!("property {name}: {e}"))
}

/// The D-Bus error name of a failed call.
fn error_name(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => panic!("expected a D-Bus error reply, got {other}"),
    }
}

/// Every matching message on a connection, collected by a thread so tests
/// can wait with a timeout.
struct Watch {
    rx: mpsc::Receiver<zbus::message::Message>,
}

impl Watch {
    fn new(conn: &Connection, rule: MatchRule<'static>) -> Watch {
        let iter = MessageIterator::for_match_rule(rule, conn, Some(1024)).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for msg in iter {
                let Ok(m) = msg else { return };
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
        Watch { rx }
    }

    fn hub_signals(conn: &Connection) -> Watch {
        let rule = MatchRule::builder()
            .msg_type(MsgType::Signal)
            .sender(NAME)
            .unwrap()
            .interface(HUB1)
            .unwrap()
            .build();
        Watch::new(conn, rule)
    }

    fn properties_changed(conn: &Connection, path: &str) -> Watch {
        let rule = MatchRule::builder()
            .msg_type(MsgType::Signal)
            .sender(NAME)
            .unwrap()
            .path(path.to_string())
            .unwrap()
            .interface("org.freedesktop.DBus.Properties")
            .unwrap()
            .member("PropertiesChanged")
            .unwrap()
            .build();
        Watch::new(conn, rule)
    }

    /// The next signal called `member`, skipping others.
    fn next(&self, member: &str) -> zbus::message::Message {
        let end = Instant::now() + PATIENCE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let m = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {member} signal within {PATIENCE:?}"));
            if m.header().member().is_some_and(|n| n.as_str() == member) {
                return m;
            }
        }
    }

    /// Everything that arrives within `d`.
    fn collect_for(&self, d: Duration) -> Vec<zbus::message::Message> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(m) = self
            .rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            out.push(m);
        }
        out
    }
}

type ChangedProps = (String, HashMap<String, OwnedValue>, Vec<String>);

#[test]
fn properties_describe_the_running_hub_and_match_ipchubctl() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(&bus, "");
    let p = hub_proxy(&conn);

    assert_eq!(prop::<String>(&p, "Version"), env!("CARGO_PKG_VERSION"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let started: u64 = prop(&p, "StartedAt");
    assert!(
        started <= now && now - started < 60,
        "StartedAt {started}, now {now}"
    );
    assert!(prop::<u64>(&p, "Uptime") <= now - started + 1);
    assert!(prop::<Vec<String>>(&p, "Transports").contains(&"socket".to_string()));

    let mut sub = hub.client("sub");
    sub.subscribe("weather").unwrap();
    let mut publisher = hub.client("pub");
    for _ in 0..3 {
        assert_eq!(publisher.publish_confirmed("weather", b"sunny").unwrap(), 1);
    }
    wait_for("MessagesIn to reach 3", || {
        prop::<u64>(&p, "MessagesIn") == 3
    });
    assert_eq!(prop::<u32>(&p, "ClientCount"), 2);
    assert_eq!(prop::<u32>(&p, "ChannelCount"), 1);
    assert_eq!(prop::<u64>(&p, "MessagesOut"), 3);
    assert_eq!(prop::<u64>(&p, "BytesIn"), 15);
    assert_eq!(prop::<u64>(&p, "BytesOut"), 15);
    assert_eq!(prop::<u64>(&p, "Dropped"), 0);

    // The same figures through the control socket.
    let ctl = hub.ctl_stats();
    for (json, dbus) in [
        ("messages_in", "MessagesIn"),
        ("messages_out", "MessagesOut"),
        ("bytes_in", "BytesIn"),
        ("bytes_out", "BytesOut"),
        ("dropped", "Dropped"),
    ] {
        assert_eq!(ctl[json].as_u64().unwrap(), prop::<u64>(&p, dbus), "{json}");
    }
    assert_eq!(ctl["started_at"].as_u64().unwrap(), started);
    assert_eq!(ctl["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ctl["channel_count"].as_u64().unwrap(), 1);
    // ipchubctl is itself a client while it asks.
    assert_eq!(ctl["client_count"].as_u64().unwrap(), 3);
}

#[test]
fn counters_are_signalled_at_a_bounded_rate_and_only_when_changed() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(&bus, "");
    let changes = Watch::properties_changed(&conn, HUB_PATH);
    let mut publisher = hub.client("pub");

    // Publish continuously for a while: many messages, few signals.
    let start = Instant::now();
    let window = Duration::from_millis(INTERVAL_MS * 6);
    let mut sent = 0u64;
    while start.elapsed() < window {
        publisher.publish_confirmed("busy", b"x").unwrap();
        sent += 1;
    }
    assert!(sent > 20, "only {sent} messages published");
    // Follow the signals until one reports the final total.
    let mut signals = 0u64;
    let mut latest_in = 0;
    let deadline = Instant::now() + PATIENCE;
    while latest_in != sent {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = changes
            .rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("MessagesIn never signalled as {sent} (last {latest_in})"));
        signals += 1;
        let (iface, changed, _): ChangedProps = m.body().deserialize().unwrap();
        assert_eq!(iface, HUB1);
        assert!(
            !changed.is_empty(),
            "a PropertiesChanged with nothing in it"
        );
        assert!(!changed.contains_key("Uptime"), "Uptime is never signalled");
        if let Some(v) = changed.get("MessagesIn") {
            latest_in = u64::try_from(v.try_clone().unwrap()).unwrap();
        }
    }
    // One per sample at most, however many messages.
    let bound = start.elapsed().as_millis() as u64 / INTERVAL_MS + 1;
    assert!(
        signals <= bound,
        "{signals} PropertiesChanged for {sent} messages (bound {bound})"
    );

    // Nothing changes, nothing is sent.
    let quiet = changes.collect_for(Duration::from_millis(INTERVAL_MS * 3));
    assert!(
        quiet.is_empty(),
        "{} PropertiesChanged while idle",
        quiet.len()
    );
}

#[test]
fn signals_announce_clients_and_channels() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(&bus, "[hub]\nmax_channels = 2\n");
    let signals = Watch::hub_signals(&conn);

    let mut client = hub.client("announced");
    let m = signals.next("ClientConnected");
    let (id, transport, pid, uid): (u32, String, i32, u32) = m.body().deserialize().unwrap();
    assert_eq!(id, client.id());
    assert_eq!(transport, "socket");
    assert_eq!(pid, std::process::id() as i32);
    assert_eq!(uid, nix::unistd::getuid().as_raw());

    client
        .publish_confirmed("sensors/kitchen/temp-1", b"21")
        .unwrap();
    let m = signals.next("ChannelCreated");
    let (name, path): (String, OwnedObjectPath) = m.body().deserialize().unwrap();
    assert_eq!(name, "sensors/kitchen/temp-1");
    assert_eq!(
        path.as_str(),
        "/org/ipchub/channel/sensors/kitchen/temp_2d1"
    );
    // The object exists by the time the signal names it.
    let ch = proxy(&conn, path.as_str(), "org.ipchub.Channel1");
    assert_eq!(prop::<String>(&ch, "Name"), "sensors/kitchen/temp-1");

    // At hub.max_channels the idle channel is evicted.
    client.publish_confirmed("b", b"").unwrap();
    client.publish_confirmed("c", b"").unwrap();
    let m = signals.next("ChannelRemoved");
    let (name, path): (String, OwnedObjectPath) = m.body().deserialize().unwrap();
    // Either idle channel may go; the signal names it and its path.
    match name.as_str() {
        "sensors/kitchen/temp-1" => assert_eq!(
            path.as_str(),
            "/org/ipchub/channel/sensors/kitchen/temp_2d1"
        ),
        "b" => assert_eq!(path.as_str(), "/org/ipchub/channel/b"),
        other => panic!("ChannelRemoved({other})"),
    }
    // ...and its object is gone by then.
    let gone = proxy(&conn, path.as_str(), "org.ipchub.Channel1");
    let e = gone.get_property::<String>("Name").unwrap_err();
    assert!(e.to_string().contains("Unknown"), "{e}");

    drop(client);
    let m = signals.next("ClientDisconnected");
    let (gone,): (u32,) = m.body().deserialize().unwrap();
    assert_eq!(gone, id);
}

#[test]
fn every_channel_has_an_object_under_the_object_manager() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(&bus, "");
    let mut sub = hub.client("sub");
    sub.subscribe("sensors/#").unwrap();
    let mut publisher = hub.client("pub");
    publisher
        .publish_confirmed("sensors/hall:1/temp", b"20.5")
        .unwrap();
    publisher.publish_confirmed("weather", b"rain").unwrap();

    let om = proxy(&conn, HUB_PATH, "org.freedesktop.DBus.ObjectManager");
    type Managed = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;
    let end = Instant::now() + PATIENCE;
    let objects = loop {
        let mut objects: Managed = om.call("GetManagedObjects", &()).unwrap();
        // zbus also lists the intermediate nodes (…/channel, …/sensors),
        // with no interfaces; only channel objects carry Channel1.
        objects.retain(|_, ifaces| ifaces.contains_key("org.ipchub.Channel1"));
        if objects.len() == 2 {
            break objects;
        }
        assert!(
            Instant::now() < end,
            "managed objects: {:?}",
            objects.keys()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let temp = &objects
        [&OwnedObjectPath::try_from("/org/ipchub/channel/sensors/hall_3a1/temp").unwrap()]
        ["org.ipchub.Channel1"];
    assert_eq!(
        String::try_from(temp["Name"].try_clone().unwrap()).unwrap(),
        "sensors/hall:1/temp"
    );
    assert_eq!(
        u32::try_from(temp["Subscribers"].try_clone().unwrap()).unwrap(),
        1
    );
    assert!(
        objects.contains_key(&OwnedObjectPath::try_from("/org/ipchub/channel/weather").unwrap())
    );

    // Channel statistics follow traffic, sampled like the hub's.
    let ch = proxy(&conn, "/org/ipchub/channel/weather", "org.ipchub.Channel1");
    publisher.publish_confirmed("weather", b"snow").unwrap();
    wait_for("Published to reach 2", || {
        prop::<u64>(&ch, "Published") == 2
    });
    assert_eq!(prop::<u64>(&ch, "Bytes"), 8);
    assert_eq!(prop::<u32>(&ch, "Subscribers"), 0);
    assert_eq!(prop::<String>(&ch, "Overflow"), "block");

    let tree = bus.busctl(false, &["tree", NAME]);
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.contains("/org/ipchub/channel/sensors/hall_3a1/temp"),
        "{tree}"
    );
    assert!(tree.contains("/org/ipchub/channel/weather"), "{tree}");
}

#[test]
fn methods_list_publish_disconnect_and_reload() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(&bus, "");
    let p = hub_proxy(&conn);
    let mut sub = hub.client("listener");
    sub.subscribe("weather").unwrap();

    // Publish: binary payloads arrive intact; the answer is the delivery count.
    let payload = b"\x00\x01bin\xffary".to_vec();
    let delivered: u32 = p.call("Publish", &("weather", &payload)).unwrap();
    assert_eq!(delivered, 1);
    let m = sub.recv(Some(PATIENCE)).unwrap().expect("message");
    assert_eq!((m.channel.as_str(), &m.payload), ("weather", &payload));
    let e = p
        .call::<_, _, u32>("Publish", &("bad/#", b"x".to_vec()))
        .unwrap_err();
    assert_eq!(error_name(e), "org.ipchub.Error.Refused");

    let channels: Vec<(String, OwnedObjectPath)> = p.call("ListChannels", &()).unwrap();
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].0, "weather");
    assert_eq!(channels[0].1.as_str(), "/org/ipchub/channel/weather");

    let (subs, overflow, published, delivered, bytes, dropped): (u32, String, u64, u64, u64, u64) =
        p.call("ChannelStats", &("weather",)).unwrap();
    assert_eq!((subs, overflow.as_str()), (1, "block"));
    assert_eq!(
        (published, delivered, bytes, dropped),
        (1, 1, payload.len() as u64, 0)
    );
    let e = p.call::<_, _, (u32, String, u64, u64, u64, u64)>("ChannelStats", &("nowhere",));
    assert_eq!(error_name(e.unwrap_err()), "org.ipchub.Error.NoSuchChannel");

    type Row = (
        u32,
        String,
        String,
        i32,
        u32,
        u32,
        Vec<String>,
        u32,
        u64,
        u64,
        u64,
        u64,
        bool,
    );
    let clients: Vec<Row> = p.call("ListClients", &()).unwrap();
    assert_eq!(clients.len(), 1);
    let c = &clients[0];
    assert_eq!(
        (c.0, c.1.as_str(), c.2.as_str()),
        (sub.id(), "listener", "socket")
    );
    assert_eq!(
        (c.3, c.4),
        (std::process::id() as i32, nix::unistd::getuid().as_raw())
    );
    assert_eq!(c.6, vec!["weather".to_string()]);
    assert_eq!((c.7, c.10, c.11, c.12), (0, 1, 0, false));

    // Reload: fine with a valid file, refused (and harmless) with a broken one.
    let () = p.call("Reload", &()).unwrap();
    std::fs::write(&hub.config, "[hub]\nmax_clientz = 1\n").unwrap();
    let e = p.call::<_, _, ()>("Reload", &()).unwrap_err();
    assert_eq!(error_name(e), "org.ipchub.Error.Refused");

    // DisconnectClient: the client is told and dropped.
    let signals = Watch::hub_signals(&conn);
    let () = p.call("DisconnectClient", &(sub.id(),)).unwrap();
    let m = signals.next("ClientDisconnected");
    assert_eq!(m.body().deserialize::<(u32,)>().unwrap().0, sub.id());
    let mut told = String::new();
    loop {
        match sub.next_event(Some(PATIENCE)) {
            Ok(Some(Event::Error { text, .. })) => told.push_str(&text),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                told.push_str(&e.to_string());
                break;
            }
        }
    }
    assert!(told.contains("administrator"), "client was told: {told}");
    let e = p
        .call::<_, _, ()>("DisconnectClient", &(sub.id(),))
        .unwrap_err();
    assert_eq!(error_name(e), "org.ipchub.Error.NoSuchClient");
}

#[test]
fn unprivileged_callers_may_read_but_not_change() {
    let bus = Bus::start();
    let (_hub, _conn) = Hub::on(&bus, "");

    let read = bus.busctl(true, &["get-property", NAME, HUB_PATH, HUB1, "Version"]);
    assert!(read.status.success(), "nobody cannot read: {read:?}");
    let list = bus.busctl(true, &["call", NAME, HUB_PATH, HUB1, "ListChannels"]);
    assert!(list.status.success(), "nobody cannot list: {list:?}");

    for args in [
        &[
            "call", NAME, HUB_PATH, HUB1, "Publish", "say", "weather", "1", "65",
        ][..],
        &["call", NAME, HUB_PATH, HUB1, "DisconnectClient", "u", "1"][..],
        &["call", NAME, HUB_PATH, HUB1, "Reload"][..],
    ] {
        let out = bus.busctl(true, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody may {}: {out:?}", args[4]);
        assert!(err.contains("Access denied"), "{}: {err}", args[4]);
    }
    // Root may.
    let out = bus.busctl(
        false,
        &[
            "call", NAME, HUB_PATH, HUB1, "Publish", "say", "weather", "1", "65",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "u 0");
}

/// Another uid reading the hub over D-Bus learns nothing of channels it may
/// not read (names, counters, objects, signals) nor of other users' clients;
/// root still sees them (issue #13, D15).
#[test]
fn unprivileged_callers_see_only_channels_they_may_read_and_their_own_clients() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(
        &bus,
        r#"
[[access.rule]]
pattern = "secure/#"
publish = ["uid:0"]
subscribe = ["uid:0"]
"#,
    );
    let signals = Watch::hub_signals(&conn);
    let mut secret = hub.client("secret-holder");
    secret.subscribe("secure/door").unwrap();
    secret.publish_confirmed("secure/door", b"open").unwrap();
    let mut public = hub.client("newsreader");
    public.subscribe("public/news").unwrap();
    public.publish_confirmed("public/news", b"hi").unwrap();
    // The public channel's announcement comes; wait for it, so anything
    // about the secret one would have come too.
    let created = signals.next("ChannelCreated");
    let mut names = vec![
        created
            .body()
            .deserialize::<(String, OwnedObjectPath)>()
            .unwrap()
            .0,
    ];
    names.extend(
        signals
            .collect_for(Duration::from_millis(INTERVAL_MS * 3))
            .iter()
            .filter(|m| {
                m.header()
                    .member()
                    .is_some_and(|n| n.as_str() == "ChannelCreated")
            })
            .map(|m| {
                m.body()
                    .deserialize::<(String, OwnedObjectPath)>()
                    .unwrap()
                    .0
            }),
    );
    assert_eq!(names, ["public/news"], "broadcast to every bus member");

    let call = |nobody: bool, args: &[&str]| {
        let mut v = vec!["call", NAME, HUB_PATH, HUB1];
        v.extend_from_slice(args);
        bus.busctl(nobody, &v)
    };
    let out = call(true, &["ListChannels"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("public/news") && !text.contains("secure"),
        "{text}"
    );
    let out = call(true, &["ListClients"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "a(ussiuuasuttttb) 0",
        "nobody has no clients; it sees no one else's"
    );
    let out = call(true, &["ChannelStats", "s", "secure/door"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no channel named"),
        "{out:?}"
    );
    assert!(call(true, &["ChannelStats", "s", "public/news"])
        .status
        .success());
    for args in [
        &["tree", NAME][..],
        &[
            "call",
            NAME,
            HUB_PATH,
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ][..],
    ] {
        let out = bus.busctl(true, args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            text.contains("public") && !text.contains("secure"),
            "{text}"
        );
    }

    // Root sees everything through the methods.
    let p = hub_proxy(&conn);
    let channels: Vec<(String, OwnedObjectPath)> = p.call("ListChannels", &()).unwrap();
    assert!(
        channels.iter().any(|c| c.0 == "secure/door"),
        "{channels:?}"
    );
    let (subs, ..): (u32, String, u64, u64, u64, u64) =
        p.call("ChannelStats", &("secure/door",)).unwrap();
    assert_eq!(subs, 1);
    #[allow(clippy::type_complexity)]
    let clients: Vec<(
        u32,
        String,
        String,
        i32,
        u32,
        u32,
        Vec<String>,
        u32,
        u64,
        u64,
        u64,
        u64,
        bool,
    )> = p.call("ListClients", &()).unwrap();
    assert!(clients.iter().any(|c| c.1 == "secret-holder"));
}

/// ClientConnected carries the pid and uid of every client: only root and
/// group ipchub receive it (and ClientDisconnected); others do not learn
/// who uses the hub (issue #13, D15).
#[test]
fn only_administrators_receive_client_signals() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(&bus, "");
    let mut monitor = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "dbus-monitor",
        ])
        .args(["--address", &bus.address])
        .arg("type='signal',sender='org.ipchub'")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-monitor");
    let (tx, rx) = mpsc::channel();
    let out = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // dbus-monitor is listening once it prints its NameAcquired.
    let end = Instant::now() + PATIENCE;
    while !rx
        .recv_timeout(end.saturating_duration_since(Instant::now()))
        .expect("dbus-monitor started")
        .contains("NameAcquired")
    {}
    let root_signals = Watch::hub_signals(&conn);
    let mut c = hub.client("someone");
    c.subscribe("public/news").unwrap();
    root_signals.next("ClientConnected");
    root_signals.next("ChannelCreated");
    drop(c);
    root_signals.next("ClientDisconnected");
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut monitor);
    let seen: Vec<String> = rx.try_iter().collect();
    let seen = seen.join("\n");
    assert!(
        seen.contains("member=ChannelCreated"),
        "a public signal still reaches nobody:\n{seen}"
    );
    assert!(!seen.contains("member=ClientConnected"), "{seen}");
    assert!(!seen.contains("member=ClientDisconnected"), "{seen}");
}

#[test]
fn the_daemon_refuses_unprivileged_callers_even_where_the_policy_lets_them_through() {
    // A local policy that (wrongly) opens every method to everyone.
    let bus = Bus::start_with_policy(
        r#"<policy context="default"><allow send_destination="org.ipchub"/></policy>"#,
    );
    let (hub, _conn) = Hub::on(&bus, "");
    for args in [
        &[
            "call", NAME, HUB_PATH, HUB1, "Publish", "say", "weather", "1", "65",
        ][..],
        &["call", NAME, HUB_PATH, HUB1, "DisconnectClient", "u", "1"][..],
        &["call", NAME, HUB_PATH, HUB1, "Reload"][..],
    ] {
        let out = bus.busctl(true, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody may {}: {out:?}", args[4]);
        assert!(err.contains("Access denied"), "{}: {err}", args[4]);
        // The daemon's refusal, not the bus's: it logs each one.
        let log = hub.log();
        assert!(
            log.lines().any(|l| l.contains("D-Bus call refused")
                && l.contains(&format!("method=\"{}\"", args[4]))
                && l.contains("uid 65534")),
            "{}: no refusal logged:\n{log}",
            args[4]
        );
    }
}

/// A caller the daemon refuses cannot flood its log: refusals are logged
/// a bounded number of times per uid, then summed up (issue #13, E16).
#[test]
fn a_flood_of_refused_calls_is_logged_a_bounded_number_of_times() {
    let bus = Bus::start_with_policy(
        r#"<policy context="default"><allow send_destination="org.ipchub"/></policy>"#,
    );
    let (hub, _conn) = Hub::on(
        &bus,
        "[log]\nrate_limit_burst = 3\nrate_limit_per_minute = 1\n",
    );
    for _ in 0..20 {
        let out = bus.busctl(true, &["call", NAME, HUB_PATH, HUB1, "Reload"]);
        assert!(!out.status.success());
    }
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("D-Bus call refused"))
            .count()
    };
    let logged = refusals(&hub.log());
    assert!((1..=4).contains(&logged), "{logged} lines for 20 refusals");
    wait_for("the suppression summary", || {
        hub.log()
            .lines()
            .any(|l| l.contains("similar messages suppressed") && l.contains("uid 65534"))
    });
}

#[test]
fn introspection_explains_the_interface() {
    let bus = Bus::start();
    let (_hub, _conn) = Hub::on(&bus, "");
    let out = bus.busctl(false, &["introspect", NAME, HUB_PATH]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "org.ipchub.Hub1",
        "org.freedesktop.DBus.ObjectManager",
        ".Publish",
        ".ChannelStats",
        ".ClientConnected",
        ".MessagesIn",
        "emits-change",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // The XML carries the documentation.
    let out = bus.busctl(false, &["introspect", "--xml-interface", NAME, HUB_PATH]);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(xml.contains("subscribers it was delivered to"), "{xml}");
}

/// Signal arguments carry no direction (the D-Bus specification gives them
/// none): `busctl tree` and `introspect` print no warnings about them.
#[test]
fn introspection_gives_signal_arguments_no_direction() {
    let bus = Bus::start();
    let (hub, _conn) = Hub::on(&bus, "");
    let mut c = hub.client("x");
    c.publish_confirmed("some/channel", b"x").unwrap();
    let tree = bus.busctl(false, &["tree", NAME]);
    assert!(tree.status.success(), "{tree:?}");
    let mut paths: Vec<String> = String::from_utf8_lossy(&tree.stdout)
        .lines()
        .filter_map(|l| l.find('/').map(|i| l[i..].trim().to_string()))
        .collect();
    paths.push(HUB_PATH.to_string());
    let mut warnings = String::from_utf8_lossy(&tree.stderr).into_owned();
    for path in &paths {
        let out = bus.busctl(false, &["introspect", "--xml-interface", NAME, path]);
        let xml = String::from_utf8_lossy(&out.stdout);
        for signal in xml.split("<signal ").skip(1) {
            let signal = &signal[..signal.find("</signal>").unwrap_or(signal.len())];
            assert!(!signal.contains("direction="), "{path}: <signal {signal}");
        }
        let out = bus.busctl(false, &["introspect", NAME, path]);
        warnings.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        !warnings.contains("direction"),
        "busctl warned:\n{warnings}"
    );
}

#[test]
fn without_a_bus_the_hub_runs_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:path={}", dir.path().join("no-bus").display());
    let hub = Hub::start(&nowhere, "");
    let mut sub = hub.client("sub");
    sub.subscribe("weather").unwrap();
    assert_eq!(
        hub.client("pub")
            .publish_confirmed("weather", b"1")
            .unwrap(),
        1
    );
    // Long enough for several retries.
    wait_for("the D-Bus warning", || hub.log().contains("not available"));
    std::thread::sleep(Duration::from_millis(1500));
    let log = hub.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("D-Bus")).collect();
    assert_eq!(lines.len(), 1, "{log}");
}

#[test]
fn the_hub_reconnects_when_the_bus_comes_back() {
    let mut bus = Bus::start();
    let (hub, _conn) = Hub::on(&bus, "");
    bus.restart();
    let conn = bus.connect();
    let end = Instant::now() + PATIENCE;
    while !bus.name_has_owner(&conn) {
        assert!(
            Instant::now() < end,
            "no org.ipchub on the new bus; hub log:\n{}",
            hub.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = hub_proxy(&conn);
    let mut sub = hub.client("sub");
    sub.subscribe("weather").unwrap();
    let delivered: u32 = p.call("Publish", &("weather", b"back".to_vec())).unwrap();
    assert_eq!(delivered, 1);
    let log = hub.log();
    assert!(log.contains("lost the D-Bus system bus"), "{log}");
    assert_eq!(log.matches("serving org.ipchub").count(), 2, "{log}");
}

#[test]
fn components_show_each_bridge_state() {
    let bus = Bus::start();
    // A bridge to a port nobody listens on: it reports itself disconnected.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_hub, conn) = Hub::on(
        &bus,
        &format!(
            "[[bridge.mqtt]]\nname = \"far\"\nenabled = true\nurl = \"mqtt://127.0.0.1:{port}\"\n"
        ),
    );
    let p = hub_proxy(&conn);
    wait_for("the bridge's state on D-Bus", || {
        let c: std::collections::HashMap<String, std::collections::HashMap<String, String>> =
            p.call("Components", &()).unwrap();
        c.get("bridge.mqtt.far").is_some_and(|b| {
            b.get("state").map(String::as_str) == Some("disconnected")
                && b.get("last_error").is_some_and(|e| e.contains("refused"))
                && b.contains_key("messages_out")
                && b.contains_key("spooled")
        })
    });
}

#[test]
fn channel_objects_show_retained_and_stored_messages() {
    let bus = Bus::start();
    let (hub, conn) = Hub::on(
        &bus,
        "[[channel]]\npattern = \"hist\"\nhistory_messages = 2\n",
    );
    let mut publisher = hub.client("pub");
    for v in [&b"a"[..], b"b", b"c"] {
        let seq = publisher
            .publish_retained(
                "hist",
                v,
                ipchub::client::PublishOptions {
                    ack: true,
                    priority: 0,
                },
            )
            .unwrap();
        match publisher.next_event(Some(PATIENCE)).unwrap() {
            Some(Event::Ack { seq: s, .. }) => assert_eq!(s, seq),
            other => panic!("{other:?}"),
        }
    }
    let ch = proxy(&conn, "/org/ipchub/channel/hist", "org.ipchub.Channel1");
    // The channel's object appears with the next statistics sample: until
    // then reading it fails, which is not yet an answer.
    wait_for("LastSeq to reach 3", || {
        ch.get_property::<u64>("LastSeq").is_ok_and(|v| v == 3)
    });
    assert_eq!(prop::<u64>(&ch, "FirstSeq"), 2);
    assert_eq!(prop::<u64>(&ch, "StoredMessages"), 2);
    assert_eq!(prop::<u64>(&ch, "StoredBytes"), 2);
    assert_eq!(prop::<u64>(&ch, "RetainedBytes"), 1 + 4 + 64);
}
