//! `ipchubd` under valgrind's memcheck through a short session on every
//! transport: no invalid read or write, no use of uninitialised memory and
//! no definitely lost block. The unsafe code (rings, mappings, descriptor
//! passing) is exercised by every transport, so this is where memcheck sees it.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipchub::client::{Client, Options};
use ipchub::hub::TransportKind;

const IPCHUBD: &str = env!("CARGO_BIN_EXE_ipchubd");

#[test]
fn a_session_on_every_transport_is_clean_under_memcheck() {
    let dir = tempfile::Builder::new()
        .prefix("ipchub-vg")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("ipchub.sock");
    let config = dir.path().join("ipchub.toml");
    std::fs::write(&config, "[dbus]\nenabled = false\n").unwrap();
    let log = dir.path().join("valgrind.log");
    let mut hub = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
        ])
        .arg(format!("--log-file={}", log.display()))
        .arg(IPCHUBD)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .env("STATE_DIRECTORY", dir.path().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("valgrind is needed: apt-get install valgrind");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        if let Some(status) = hub.try_wait().unwrap() {
            panic!(
                "ipchubd under valgrind exited at start ({status}):\n{}",
                read_log()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "hub never listened:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    for t in TransportKind::ALL {
        session(&socket, t);
    }

    // SIGTERM: a clean shutdown, after which memcheck writes its summary.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = hub.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = hub.kill();
            panic!("ipchubd did not stop under valgrind:\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = read_log();
    assert!(
        report.contains("ERROR SUMMARY: 0 errors"),
        "memcheck found errors:\n{report}"
    );
    assert!(
        !report.contains("definitely lost:") || report.contains("definitely lost: 0 bytes"),
        "memcheck found leaks:\n{report}"
    );
    assert!(status.success(), "ipchubd exited with {status}:\n{report}");
}

/// Subscribe, publish with a confirmation, receive, on one transport.
fn session(socket: &Path, t: TransportKind) {
    let opts = Options {
        socket: Some(socket.to_path_buf()),
        transport: t,
        name: format!("vg-{}", t.name()),
        ..Options::default()
    };
    // Connections under valgrind are slow: generous deadlines throughout.
    let mut sub = Client::connect(&opts).unwrap_or_else(|e| panic!("{}: {e}", t.name()));
    let channel = format!("vg/{}", t.name());
    sub.subscribe(&channel).unwrap();
    let mut publisher = Client::connect(&opts).unwrap();
    for i in 0..20u32 {
        let n = publisher
            .publish_confirmed(&channel, format!("message {i}").as_bytes())
            .unwrap();
        assert_eq!(n, 1, "{}: delivery count", t.name());
    }
    for i in 0..20u32 {
        let m = sub
            .recv(Some(Duration::from_secs(30)))
            .unwrap()
            .unwrap_or_else(|| panic!("{}: message {i} never came", t.name()));
        assert_eq!(m.payload, format!("message {i}").as_bytes(), "{}", t.name());
    }
    // A wildcard subscriber and a stats request cover the relayed paths.
    let mut wild = Client::connect(&opts).unwrap();
    wild.subscribe("vg/#").unwrap();
    publisher.publish_confirmed(&channel, b"last").unwrap();
    let m = wild
        .recv(Some(Duration::from_secs(30)))
        .unwrap()
        .unwrap_or_else(|| panic!("{}: the wildcard subscriber got nothing", t.name()));
    assert_eq!(m.payload, b"last");
    publisher.stats().unwrap();
}
