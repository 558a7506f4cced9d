//! The dashboard page in a real headless Chromium (Debian's `chromium`),
//! driven over the DevTools protocol: it loads, shows a channel being
//! published on with a non-zero rate that updates without a reload, shows
//! a slow subscriber, logs no console error, and is saved as a screenshot
//! (`IPCHUB_UPDATE_SCREENSHOT=1` also writes docs/dashboard.png).

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};
mod dashboard_common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Hub;
use dashboard_common::{Dash, DEADLINE};
use ipchub::client::{Client, Options};
use ipchub::hub::TransportKind;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Chromium and every process it started, killed together.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
    ws_path: String,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("ipchub-chromium")
            .tempdir()
            .unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1400,1200",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium (Debian package `chromium`) is needed; .ci/run installs it");
        // Chromium writes the port it picked and the browser's path here.
        let file = profile.path().join("DevToolsActivePort");
        let t0 = Instant::now();
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&file) {
                if t.lines().count() >= 2 {
                    break t;
                }
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "chromium did not start its DevTools endpoint"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut lines = text.lines();
        let port = lines.next().unwrap().trim().parse().unwrap();
        let ws_path = lines.next().unwrap().trim().to_string();
        Browser {
            child,
            _profile: profile,
            port,
            ws_path,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::SIGKILL);
        let _ = self.child.wait_within(LIMIT);
    }
}

/// A DevTools protocol session on one page (flat mode, by session id).
struct Cdp {
    ws: WebSocket<TcpStream>,
    next: u64,
    session: Option<String>,
    /// Console errors, exceptions and error log entries seen so far.
    errors: Vec<String>,
}

impl Cdp {
    fn connect(b: &Browser) -> Cdp {
        let stream = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let url = format!("ws://127.0.0.1:{}{}", b.port, b.ws_path);
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        Cdp {
            ws,
            next: 0,
            session: None,
            errors: Vec::new(),
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools connection");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(format!("exception: {p}")),
            Some("Runtime.consoleAPICalled")
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors.push(format!("console.error: {}", p["args"]))
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", p["entry"]))
            }
            _ => {}
        }
    }

    /// Evaluate a JavaScript expression that yields a JSON string.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        serde_json::from_str(r["result"]["value"].as_str().unwrap_or("null")).unwrap()
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= (val(*c) as u32) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

const CONFIG: &str = r#"
[queue]
max_messages = 8
[[channel]]
pattern = "dash/slow"
overflow = "drop-oldest"
"#;

/// What the test reads off the page.
const PROBE: &str = r#"JSON.stringify((() => {
  const row = document.querySelector('#channels tr[data-channel="dash/load"]');
  const slow = document.querySelector('#clients tr.slow[data-client-name="slowpoke"]');
  return {
    origin: performance.timeOrigin,
    samples: window.ipchubDashboard ? window.ipchubDashboard.samples : 0,
    status: document.getElementById('status')?.textContent,
    rate: row ? parseFloat(row.querySelector('.rate-msgs').textContent) : null,
    published: row ? parseInt(row.querySelector('.published').textContent, 10) : null,
    slow: slow ? slow.querySelector('.missed').textContent : null,
    ring: document.querySelector('#channels tr[data-channel="dash/ring"] .ring')?.textContent,
    charts: document.querySelectorAll('.uplot').length,
  };
})())"#;

#[test]
fn the_page_shows_live_rates_and_a_slow_subscriber_in_headless_chromium() {
    let hub = Hub::start_with(CONFIG);
    // A subscriber that never reads, on a drop-oldest channel.
    let mut slow = Client::connect(&Options {
        socket: Some(hub.socket.clone()),
        transport: TransportKind::Socket,
        name: "slowpoke".into(),
        ..Options::default()
    })
    .unwrap();
    slow.subscribe("dash/slow").unwrap();
    let mut load_sub = hub.subscriber(TransportKind::Socket, "dash/load");
    // A channel with a shared-memory ring, read in place.
    let mut ring_sub = hub.subscriber(TransportKind::Shm, "dash/ring");
    let mut ring_pub = hub.client_via(TransportKind::Shm);
    ring_pub.publish("dash/ring", b"in place").unwrap();
    ring_pub.flush().unwrap();
    assert!(ring_sub.recv(Some(DEADLINE)).unwrap().is_some());
    let mut p = hub.client();
    let kb = vec![b'x'; 1024];
    for _ in 0..4000 {
        p.publish("dash/slow", &kb).unwrap();
    }
    p.flush().unwrap();
    // A steady publisher on dash/load for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut c = hub.client();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.publish("dash/load", format!("{{\"reading\": {i}}}").as_bytes())
                    .unwrap();
                c.flush().unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let drain_stop = stop.clone();
    let drain = std::thread::spawn(move || {
        while !drain_stop.load(Ordering::Relaxed) {
            let _ = load_sub.next_event(Some(Duration::from_millis(100)));
        }
    });

    let dash = Dash::start(
        &hub.socket,
        &["--listen", "127.0.0.1:0", "--interval", "0.5"],
    );
    let url = format!(
        "http://{}/?token={}",
        dash.addr,
        dash.token.as_ref().unwrap()
    );
    let browser = Browser::start();
    let mut cdp = Cdp::connect(&browser);
    let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" }));
    let att = cdp.call(
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    cdp.session = Some(att["sessionId"].as_str().unwrap().to_string());
    cdp.call("Runtime.enable", json!({}));
    cdp.call("Log.enable", json!({}));
    cdp.call("Page.enable", json!({}));
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1400, "height": 1250, "deviceScaleFactor": 1, "mobile": false }),
    );
    cdp.call("Page.navigate", json!({ "url": url }));

    // Live: the channel with a rate above zero, the slow subscriber flagged.
    let t0 = Instant::now();
    let first = loop {
        let v = cdp.eval(PROBE);
        if v["rate"].as_f64().is_some_and(|r| r > 0.0) && v["slow"].is_string() {
            break v;
        }
        assert!(t0.elapsed() < DEADLINE, "page never showed it: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first["status"], "live", "{first}");
    let missed: u64 = first["slow"].as_str().unwrap().parse().unwrap();
    assert!(missed > 0, "slowpoke missed messages: {first}");
    assert_eq!(first["charts"], 2, "{first}");
    assert!(
        first["ring"]
            .as_str()
            .is_some_and(|r| r.contains("reading in place")),
        "{first}"
    );
    // ... and it keeps updating without a reload.
    let t0 = Instant::now();
    let later = loop {
        let v = cdp.eval(PROBE);
        if v["samples"].as_u64() > first["samples"].as_u64().map(|n| n + 2)
            && v["published"].as_u64() > first["published"].as_u64()
        {
            break v;
        }
        assert!(t0.elapsed() < DEADLINE, "page stopped updating: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(later["origin"], first["origin"], "the page was reloaded");
    assert!(later["rate"].as_f64().unwrap() > 0.0);

    // The tail of a channel: messages arrive as text.
    cdp.eval(
        r#"JSON.stringify((() => { document.querySelector('#channels tr[data-channel="dash/load"] button').click(); return 1; })())"#,
    );
    let t0 = Instant::now();
    loop {
        let v = cdp.eval(
            r#"JSON.stringify([...document.querySelectorAll('#tail-lines li')].map(l => l.textContent))"#,
        );
        if v.as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("{\"reading\": "))
        {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "tail showed nothing: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    if std::env::var_os("IPCHUB_UPDATE_SCREENSHOT").is_some() {
        // A few more points on the charts for the README.
        std::thread::sleep(Duration::from_secs(10));
    }
    let shot = cdp.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": true }),
    );
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();
    if std::env::var_os("IPCHUB_UPDATE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::write(docs, &png).unwrap();
    }
    // Events that arrived after the last call.
    cdp.call("Runtime.evaluate", json!({ "expression": "1" }));
    assert!(cdp.errors.is_empty(), "console errors: {:#?}", cdp.errors);

    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    drain.join().unwrap();
    drop((slow, ring_sub, ring_pub));
}
