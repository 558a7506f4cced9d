//! The daemon's core runs in-process: `ipchub::daemon::run` on a thread,
//! on a socket the test bound, stopped with its `Shutdown` handle.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use ipchub::client::{Client, ClientError, Options, Reconnect};
use ipchub::config::Config;
use ipchub::daemon::{self, Shutdown};
use ipchub::wire::TransportKind;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn run_serves_on_a_thread_and_stops_on_shutdown() {
    let dir = tempfile::Builder::new()
        .prefix("ipchub-inprocess")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("ipchub.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Never the machine's system bus from a test.
    let config = Config::parse("[dbus]\nenabled = false\n", Path::new("test.toml")).unwrap();
    let shutdown = Shutdown::new();
    let hub = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("ipchubd".into())
            .spawn(move || daemon::run(listener, config, shutdown))
            .unwrap()
    };

    let options = Options {
        socket: Some(socket.clone()),
        transport: TransportKind::Socket,
        name: "inprocess".into(),
        reconnect: Reconnect::off(),
    };
    let mut sub = Client::connect(&options).unwrap();
    sub.subscribe("inprocess.demo").unwrap();
    let mut publisher = Client::connect(&options).unwrap();
    publisher
        .publish_confirmed("inprocess.demo", b"hello")
        .unwrap();
    let msg = sub
        .recv(Some(WAIT))
        .unwrap()
        .expect("a message within the deadline");
    assert_eq!(msg.channel, "inprocess.demo");
    assert_eq!(msg.payload, b"hello");

    shutdown.trigger();
    // The hub says goodbye as on SIGTERM.
    match sub.recv(Some(WAIT)) {
        Err(ClientError::Closed(reason)) => {
            assert!(reason.contains("shutting down"), "{reason}")
        }
        other => panic!("expected BYE, got {other:?}"),
    }
    let deadline = Instant::now() + WAIT;
    while !hub.is_finished() {
        assert!(
            Instant::now() < deadline,
            "run did not return after shutdown"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    hub.join().unwrap().unwrap();
}

#[test]
fn a_shutdown_triggered_before_run_stops_it_at_once() {
    let dir = tempfile::Builder::new()
        .prefix("ipchub-inprocess")
        .tempdir()
        .unwrap();
    let listener = UnixListener::bind(dir.path().join("ipchub.sock")).unwrap();
    let config = Config::parse("[dbus]\nenabled = false\n", Path::new("test.toml")).unwrap();
    let shutdown = Shutdown::new();
    shutdown.fail("a test says so");
    let hub = std::thread::spawn(move || daemon::run(listener, config, shutdown));
    let deadline = Instant::now() + WAIT;
    while !hub.is_finished() {
        assert!(Instant::now() < deadline, "run did not return");
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = hub.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("a test says so"), "{err}");
}
