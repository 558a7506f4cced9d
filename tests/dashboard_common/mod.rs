//! Test harness for `ipchubctl dashboard`: start one against a test hub
//! (optionally as `nobody`), read the URL it prints, and speak just enough
//! HTTP/1.0 to check responses and event streams.

#![allow(dead_code)]

#[allow(unused_imports)]
use crate::common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const IPCHUBCTL: &str = env!("CARGO_BIN_EXE_ipchubctl");

/// How long anything may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Dash {
    pub child: Child,
    /// `127.0.0.1:PORT` for TCP listeners.
    pub addr: String,
    pub token: Option<String>,
    /// Everything printed on standard output so far (first lines).
    pub banner: String,
}

impl Dash {
    /// `ipchubctl dashboard ARGS` on `socket`, waiting for its banner.
    pub fn start(socket: &Path, args: &[&str]) -> Dash {
        Dash::start_cmd(Command::new(IPCHUBCTL), socket, args)
    }

    /// The same as user nobody (setpriv, util-linux).
    pub fn start_as_nobody(socket: &Path, args: &[&str]) -> Dash {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            IPCHUBCTL,
        ]);
        Dash::start_cmd(c, socket, args)
    }

    fn start_cmd(mut c: Command, socket: &Path, args: &[&str]) -> Dash {
        let mut child = c
            .arg("dashboard")
            .args(args)
            .env("IPCHUB_SOCKET", socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipchubctl dashboard");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("dashboard printed no banner; stderr: {err}");
            }
        };
        let url = line
            .strip_prefix("Dashboard: ")
            .unwrap_or_else(|| panic!("unexpected banner: {line}"))
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        let (addr, token) = match url.strip_prefix("http://") {
            Some(rest) => {
                let (addr, q) = rest.split_once('/').unwrap();
                let token = q
                    .strip_prefix("?token=")
                    .filter(|t| *t != "TOKEN")
                    .map(str::to_string);
                (addr.to_string(), token)
            }
            None => (url.clone(), None),
        };
        let mut banner = line;
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            banner.push('\n');
            banner.push_str(&l);
        }
        Dash {
            child,
            addr,
            token,
            banner,
        }
    }

    /// GET with the token as a bearer token.
    pub fn get(&self, path: &str) -> Response {
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        http(&self.addr, path, &auth)
    }

    /// Metric lines of /metrics (comments left out), as name{labels} -> value.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        parse_metrics(&r.body)
    }

    /// Open an event stream (e.g. /api/events) with the token.
    pub fn stream(&self, path: &str) -> EventStream {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n{auth}\r\n",
            self.addr
        )
        .unwrap();
        EventStream {
            sock: s,
            text: String::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dash {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait_within(LIMIT);
    }
}

pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.0 GET (the server closes after the body).
pub fn http(addr: &str, path: &str, extra_headers: &str) -> Response {
    http_host(addr, addr, path, extra_headers)
}

/// The same naming another host in the Host header.
pub fn http_host(addr: &str, host: &str, path: &str, extra_headers: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\n{extra_headers}\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_response(&buf)
}

/// The same over a UNIX socket.
pub fn http_unix(path: &Path, target: &str) -> Response {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Response {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

pub fn parse_metrics(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The value of one series, e.g. `ipchub_up` or `x{channel="a"}`.
pub fn metric(m: &[(String, f64)], series: &str) -> Option<f64> {
    m.iter().find(|(k, _)| k == series).map(|(_, v)| *v)
}

pub struct EventStream {
    sock: TcpStream,
    pub text: String,
}

impl EventStream {
    /// Read until an event's data contains `needle`; returns that data line.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let t0 = Instant::now();
        let mut buf = [0u8; 65536];
        loop {
            if let Some(at) = self.text.find(needle) {
                let start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = self.text[at..]
                    .find('\n')
                    .map_or(self.text.len(), |i| at + i);
                let line = self.text[start..end].to_string();
                // Consume what was seen.
                self.text.drain(..end);
                return line;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "no event with {needle:?} within {DEADLINE:?}; got:\n{}",
                self.text
            );
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("stream closed without {needle:?}; got:\n{}", self.text),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("stream: {e}"),
            }
        }
    }
}
