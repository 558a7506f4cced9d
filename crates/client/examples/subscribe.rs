//! Subscribe to a pattern with wildcards and print what arrives.
//!
//! ```text
//! cargo run -p ipchub-client --example subscribe -- [--socket PATH] [PATTERN [COUNT]]
//! ```
//!
//! PATTERN is an MQTT topic filter (default `demo/#`): `+` matches one
//! level, `#` (last) every level below. With COUNT it exits after that many
//! messages, else it runs until interrupted. Without `--socket` the hub is
//! found as `ipchubctl` finds it: `IPCHUB_SOCKET`, else the default
//! runtime directory.

use std::path::PathBuf;

use ipchub_client::{Client, Event, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let socket = if args.peek().is_some_and(|a| a == "--socket") {
        args.next();
        Some(PathBuf::from(args.next().ok_or("--socket needs a path")?))
    } else {
        None
    };
    let pattern = args.next().unwrap_or_else(|| "demo/#".into());
    let count: Option<u64> = args.next().map(|n| n.parse()).transpose()?;

    let mut client = Client::connect(&Options {
        socket,
        name: "example-subscribe".into(),
        ..Options::default()
    })?;
    // Returns once the hub confirmed: whatever is published from now on
    // and matches reaches us.
    client.subscribe(&pattern)?;
    println!("subscribed to {pattern}");

    let mut received = 0;
    while count != Some(received) {
        // `next_event` rather than `recv`: besides messages it reports the
        // hub going away and coming back (the client reconnects by itself)
        // and messages lost to a full queue.
        match client.next_event(None)? {
            Some(Event::Message(m)) => {
                received += 1;
                println!("[{}] {}", m.channel, String::from_utf8_lossy(&m.payload));
            }
            Some(Event::Missed(n)) => {
                eprintln!("missed {n} message(s): this subscriber fell behind")
            }
            Some(Event::HubLost { reason }) => eprintln!("lost the hub ({reason}); reconnecting"),
            Some(Event::HubBack { outage, .. }) => eprintln!("hub back after {outage:?}"),
            Some(_) | None => {}
        }
    }
    Ok(())
}
