//! Publish messages on a channel and say how many subscribers each reached.
//!
//! ```text
//! cargo run -p ipchub-client --example publish -- [--socket PATH] CHANNEL MESSAGE...
//! ```
//!
//! Without `--socket` the hub is found as `ipchubctl` finds it: the
//! `IPCHUB_SOCKET` environment variable, else the default runtime directory.

use std::path::PathBuf;

use ipchub_client::{Client, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let socket = if args.peek().is_some_and(|a| a == "--socket") {
        args.next();
        Some(PathBuf::from(args.next().ok_or("--socket needs a path")?))
    } else {
        None // IPCHUB_SOCKET, else the default
    };
    let channel = args
        .next()
        .ok_or("usage: publish [--socket PATH] CHANNEL MESSAGE...")?;

    let mut client = Client::connect(&Options {
        socket,
        name: "example-publish".into(),
        ..Options::default()
    })?;
    for message in args {
        // One round trip each: the hub answers with the delivery count.
        // (`publish` would only queue the message, for throughput.)
        let delivered = client.publish_confirmed(&channel, message.as_bytes())?;
        println!("published {message:?} on {channel}: delivered to {delivered} subscriber(s)");
    }
    Ok(())
}
