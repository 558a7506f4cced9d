//! Idle means idle: with a client waiting on every transport, neither the
//! hub nor the waiting clients spin. (A spin burns a whole core; the bound
//! here is two orders of magnitude below that, so noise cannot fail it.)

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::time::Duration;

use common::Hub;
use ipchub::hub::TransportKind;

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_hub_with_idle_clients_on_every_transport_uses_no_cpu() {
    let hub = Hub::start();
    // Waiting subscribers in child processes, one per transport.
    let mut subs: Vec<_> = TransportKind::ALL
        .iter()
        .map(|t| {
            hub.ctl()
                .args(["sub", "-c", "idle", "-t", t.name()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    hub.wait_subscribers("idle", TransportKind::ALL.len());
    let hub_pid = hub.pid() as u32;
    let before: Vec<u64> = std::iter::once(hub_pid)
        .chain(subs.iter().map(|s| s.id()))
        .map(cpu_ticks)
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<u64> = std::iter::once(hub_pid)
        .chain(subs.iter().map(|s| s.id()))
        .map(cpu_ticks)
        .collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let who = if i == 0 {
            "the hub".to_string()
        } else {
            format!("the {} subscriber", TransportKind::ALL[i - 1].name())
        };
        // 2 s of spinning would be ~200 ticks; allow 2 (20 ms) for timers.
        assert!(a - b <= 2, "{who} used {} ticks of CPU while idle", a - b);
    }
    for s in &mut subs {
        s.kill().unwrap();
        s.wait_within(LIMIT).unwrap();
    }
}
