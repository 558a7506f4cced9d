//! Connect/disconnect cycles on every transport leave nothing behind: no
//! descriptor, no memory growth, no FIFO or message queue. 10 000 cycles per
//! transport by default (IPCHUB_LEAK_CYCLES to change).

mod common;

use common::{wait_for, Hub};
use ipchub::hub::TransportKind;

fn cycles() -> usize {
    std::env::var("IPCHUB_LEAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

struct Usage {
    fds: usize,
    rss_kib: u64,
    ipc: usize,
}

fn usage(hub: &Hub) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hub.pid())).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    Usage {
        fds: hub.open_fds(),
        rss_kib,
        ipc: hub.ipc_objects().len(),
    }
}

#[test]
fn ten_thousand_connect_disconnect_cycles_per_transport_leak_nothing() {
    // Small rings and messages keep each shm connection cheap to set up.
    let hub = Hub::start_with("[hub]\nmax_message_size = 1024\n[shm]\nring_size = 4096\n");
    let mut probe = hub.client();
    let n = cycles();
    // Warm up: allocator pools, maps and buffers that live as long as the hub.
    for &t in TransportKind::ALL.iter() {
        for _ in 0..200 {
            hub.client_via(t).publish_confirmed("leak", b"x").unwrap();
        }
    }
    wait_for(
        || probe.stats().unwrap().client_count == 1,
        "warm-up clients gone",
    );
    let before = usage(&hub);
    for &t in TransportKind::ALL.iter() {
        for i in 0..n {
            let mut c = hub.client_via(t);
            if i % 100 == 0 {
                // Now and then do real work on the connection too.
                c.subscribe("leak").unwrap();
                c.publish_confirmed("leak", b"x").unwrap();
            }
        }
    }
    wait_for(
        || probe.stats().unwrap().client_count == 1,
        "all clients gone",
    );
    let after = usage(&hub);
    assert_eq!(after.fds, before.fds, "descriptors leaked");
    assert_eq!(after.ipc, 0, "FIFOs or message queues left behind");
    // Allocator noise is a few hundred KiB; a leak of even 100 bytes per
    // connection would show as several MiB here.
    assert!(
        after.rss_kib <= before.rss_kib + 2048,
        "memory grew from {} KiB to {} KiB over {} connections",
        before.rss_kib,
        after.rss_kib,
        n * TransportKind::ALL.len()
    );
}
