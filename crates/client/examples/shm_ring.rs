//! Shared memory with a channel ring: a publisher writes each message once
//! into the channel's ring and the subscriber reads it in place; the hub is
//! not on the data path at all.
//!
//! ```text
//! cargo run -p ipchub-client --example shm_ring -- [--socket PATH] [COUNT]
//! ```
//!
//! Both clients use the `shm` transport on one exact channel, which is what
//! gets a ring (wildcard subscriptions, and channels with a retained value
//! or a history, go through the hub). At the end it asks the hub whether
//! the channel had a ring and how many of the messages the hub itself had
//! to handle. Without `--socket`: `IPCHUB_SOCKET`, else the default.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipchub_client::{Client, Options, TransportKind};

const CHANNEL: &str = "demo/ring";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let socket = if args.peek().is_some_and(|a| a == "--socket") {
        args.next();
        Some(PathBuf::from(args.next().ok_or("--socket needs a path")?))
    } else {
        None
    };
    let count: u32 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000);
    let shm = |name: &str| Options {
        socket: socket.clone(),
        transport: TransportKind::Shm,
        name: name.into(),
        ..Options::default()
    };

    let mut reader = Client::connect(&shm("example-ring-reader"))?;
    // An exact channel on shm: the client maps the channel's ring and
    // reads it instead of subscribing through the hub.
    reader.subscribe(CHANNEL)?;
    // Spin up to 50 µs watching the ring before sleeping: a CPU for latency.
    reader.set_busy_poll(Some(Duration::from_micros(50)));

    let mut writer = Client::connect(&shm("example-ring-writer"))?;
    let t0 = Instant::now();
    let mut next = 0u32; // the next message the reader expects
    for i in 0..count {
        // Into the ring at once: no buffering, no flush needed.
        writer.publish(CHANNEL, &i.to_le_bytes())?;
        // Read as we go, so the ring (4 MiB by default) never fills.
        while let Some(m) = reader.recv(Some(Duration::ZERO))? {
            expect(&m.payload, &mut next)?;
        }
    }
    // The confirmation of a ring publish is counted by the writer itself
    // (the ring's readers plus the hub's subscribers): no round trip.
    let delivered = writer.publish_confirmed(CHANNEL, b"done")?;
    println!(
        "published {count} messages and \"done\" on {CHANNEL}: delivered to {delivered} reader(s)"
    );
    loop {
        let m = reader
            .recv(Some(Duration::from_secs(10)))?
            .ok_or("timed out waiting for a message")?;
        if m.payload == b"done" {
            break;
        }
        expect(&m.payload, &mut next)?;
    }
    if next != count {
        return Err(format!("received {next} of {count} messages").into());
    }
    println!("received all {count} in order in {:?}", t0.elapsed());

    // Ask the hub (over the reader's control path) what happened.
    let stats = reader.stats()?;
    let ring = stats.channels.iter().find(|c| c.name == CHANNEL);
    let relayed = stats
        .clients
        .iter()
        .find(|c| c.id == writer.id())
        .map_or(0, |c| c.messages_in);
    match ring {
        Some(c) if c.ring => println!(
            "ring: yes ({} reader(s)); the hub relayed {relayed} of the writer's {} messages",
            c.ring_readers,
            count + 1
        ),
        _ => println!("ring: no (the hub relays this channel: [shm] channel_rings is off, or a quota was reached)"),
    }
    Ok(())
}

/// The payload should be the number `next`: count it.
fn expect(payload: &[u8], next: &mut u32) -> Result<(), Box<dyn std::error::Error>> {
    if payload != next.to_le_bytes() {
        return Err(format!("expected message {next}, got {payload:?}").into());
    }
    *next += 1;
    Ok(())
}
