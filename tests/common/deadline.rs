//! Deadlines for the processes tests run: a regression that leaves a
//! program hanging fails its test instead of hanging the run. The methods
//! behave like `Command::output`, `Command::status` and `Child::wait`, and
//! kill the program when the limit passes (the error says which one).

#![allow(dead_code)]

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Longer than any program a test runs should take, even on a loaded
/// machine (cargo builds included); short enough to end a hung CI run.
pub const LIMIT: Duration = Duration::from_secs(600);

fn timed_out(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} still running after {limit:?}: killed"),
    )
}

/// Wait for `child` until `limit`, killing it then.
fn wait_until(child: &mut Child, what: &str, limit: Duration) -> io::Result<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out(what, limit));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `output` and `status` with a deadline.
pub trait CommandWithin {
    /// As `Command::output` (standard input from /dev/null, output
    /// captured), for at most `limit`.
    fn output_within(&mut self, limit: Duration) -> io::Result<Output>;
    /// As `Command::status` (standard streams inherited), for at most
    /// `limit`.
    fn status_within(&mut self, limit: Duration) -> io::Result<ExitStatus>;
}

impl CommandWithin for Command {
    fn output_within(&mut self, limit: Duration) -> io::Result<Output> {
        let what = format!("{:?}", self.get_program());
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut v);
                }
                v
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let status = wait_until(&mut child, &what, limit)?;
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    fn status_within(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        let what = format!("{:?}", self.get_program());
        let mut child = self.spawn()?;
        wait_until(&mut child, &what, limit)
    }
}

/// `wait` with a deadline.
pub trait ChildWithin {
    /// As `Child::wait` (standard input closed first), for at most `limit`
    /// (then the child is killed).
    fn wait_within(&mut self, limit: Duration) -> io::Result<ExitStatus>;
}

impl ChildWithin for Child {
    fn wait_within(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        // As `Child::wait`: its standard input is closed first, so a child
        // reading it to the end can finish.
        drop(self.stdin.take());
        let what = format!("process {}", self.id());
        wait_until(self, &what, limit)
    }
}
