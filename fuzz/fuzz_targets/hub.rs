//! Fuzz the routing core's event handling: admit and remove clients of a
//! few uids, feed them arbitrary (well-framed) requests, drain their queues
//! partially, let time pass and reload. The hub is pure, so any panic or a
//! broken invariant here is a bug a hostile client could trigger.
#![no_main]

use std::time::{Duration, Instant};

use ipchub::config::Config;
use ipchub::hub::{Hub, Identity};
use ipchub::wire::{self, FrameType};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that queues fill, publishers pause and channels run out.
const CONFIG: &str = r#"
[hub]
max_message_size = 256
max_clients = 6
max_clients_per_uid = 4
max_channels = 8
max_subscriptions_per_client = 4
block_timeout_ms = 50
[queue]
max_messages = 4
max_bytes = 4096
max_bytes_per_uid = 8192
"#;

/// Channels and patterns drawn by index, so that they collide often.
const NAMES: [&str; 10] = [
    "a", "a/b", "a/c", "b", "a/b/c", "+", "#", "a/+", "a/#", "+/b",
];

/// Frame types a client may send, and some it may not.
const TYPES: [FrameType; 8] = [
    FrameType::Subscribe,
    FrameType::Unsubscribe,
    FrameType::Publish,
    FrameType::StatsRequest,
    FrameType::Ping,
    FrameType::Hello,
    FrameType::Data,
    FrameType::Ack,
];

fuzz_target!(|data: &[u8]| {
    static CFG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    let cfg = CFG
        .get_or_init(|| {
            Config::parse(CONFIG, std::path::Path::new("fuzz.toml")).expect("fuzz config")
        })
        .clone();
    let max_payload = cfg.hub.max_message_size;
    let mut hub = Hub::new(cfg);
    let mut clients: Vec<u32> = Vec::new();
    let mut now = Instant::now();
    let mut scratch = Vec::new();
    let mut doomed = Vec::new();
    let mut frame = Vec::new();
    for op in data.chunks(4) {
        let [kind, a, b, c] = [
            op[0],
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        ];
        match kind % 8 {
            0 => {
                let ident = Identity {
                    pid: 1,
                    uid: u32::from(a % 3) * 1000,
                    gid: 0,
                };
                if let Ok(id) = hub.admit(ident) {
                    clients.push(id);
                }
            }
            1 if !clients.is_empty() => {
                let id = clients.swap_remove(a as usize % clients.len());
                hub.remove(id);
            }
            2 | 3 | 4 if !clients.is_empty() => {
                let id = clients[a as usize % clients.len()];
                let ty = TYPES[b as usize % TYPES.len()];
                let channel = NAMES[c as usize % NAMES.len()];
                let payload = vec![c; (b as usize) * 2];
                frame.clear();
                wire::encode(
                    &mut frame,
                    ty,
                    b & 1,
                    c % 32,
                    channel,
                    &payload,
                    0,
                    u64::from(a),
                );
                if let Ok(Some((f, _))) = wire::decode(&frame, max_payload) {
                    let _ = hub.handle(id, &f, now);
                }
            }
            5 if !clients.is_empty() => {
                // The transport wrote part of one client's queue.
                let id = clients[a as usize % clients.len()];
                if let Some(q) = hub.queue(id) {
                    let (x, y) = q.as_slices();
                    let n = (x.len() + y.len()).min(usize::from(b) * 64);
                    q.consume(n);
                }
                hub.flushed(id);
            }
            6 => {
                now += Duration::from_millis(u64::from(a));
                hub.check_timeouts(now);
            }
            _ => {
                hub.take_dirty(&mut scratch);
                scratch.clear();
                hub.take_resumed(&mut scratch);
                scratch.clear();
                hub.take_doomed(&mut doomed);
                for (id, _) in doomed.drain(..) {
                    clients.retain(|&c| c != id);
                    hub.remove(id);
                }
            }
        }
        assert!(hub.client_count() <= 6, "max_clients exceeded");
        assert!(hub.channel_count() <= 8, "max_channels exceeded");
    }
    for id in clients {
        hub.remove(id);
    }
    assert_eq!(hub.client_count(), 0);
});
