//! POSIX message queues honour priorities: messages waiting in a client's
//! queue come out highest priority first, whatever order they were
//! published in.
//!
//! ```text
//! cargo run -p ipchub-client --example mqueue_priorities -- [--socket PATH]
//! ```
//!
//! A subscriber on the `mqueue` transport subscribes, then (while it is not
//! reading) a publisher sends five messages of mixed priorities. Once the
//! hub has put them all into the subscriber's queue, the subscriber reads
//! them: most urgent first. On the other transports the priority is carried
//! too ([`Message::priority`](ipchub_client::Message::priority)) but
//! messages keep the order they were published in. Without `--socket`:
//! `IPCHUB_SOCKET`, else the default runtime directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipchub_client::{Client, Event, Options, PublishOptions, TransportKind};

const CHANNEL: &str = "demo/alerts";
const MESSAGES: [(u8, &str); 5] = [
    (0, "routine: disk 71% full"),
    (12, "warning: temperature high"),
    (1, "notice: backup finished"),
    (31, "ALERT: fire in the kitchen"),
    (5, "notice: new device attached"),
];
const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let socket = if args.peek().is_some_and(|a| a == "--socket") {
        args.next();
        Some(PathBuf::from(args.next().ok_or("--socket needs a path")?))
    } else {
        None
    };
    let mqueue = |name: &str| Options {
        socket: socket.clone(),
        transport: TransportKind::Mqueue,
        name: name.into(),
        ..Options::default()
    };

    let mut subscriber = Client::connect(&mqueue("example-mq-subscriber"))?;
    subscriber.subscribe(CHANNEL)?;
    let mut publisher = Client::connect(&mqueue("example-mq-publisher"))?;

    let mut unconfirmed = Vec::new();
    for (priority, text) in MESSAGES {
        println!("publish  (priority {priority:2}) {text}");
        let opts = PublishOptions {
            ack: true,
            priority,
        };
        unconfirmed.push(publisher.publish_with(CHANNEL, text.as_bytes(), opts)?);
    }
    // The hub confirms each once it has routed it to the subscriber.
    let deadline = Instant::now() + WAIT;
    while !unconfirmed.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match publisher.next_event(Some(left))? {
            Some(Event::Ack { seq, .. }) => unconfirmed.retain(|s| *s != seq),
            Some(Event::Error { text, .. }) => return Err(text.into()),
            Some(_) => {}
            None => return Err("timed out waiting for the hub's confirmations".into()),
        }
    }
    // Routed is not yet written: wait until the hub has nothing left for
    // the subscriber, so all five wait in its message queue together.
    loop {
        let stats = publisher.stats()?;
        let queued = stats
            .clients
            .iter()
            .find(|c| c.id == subscriber.id())
            .map_or(0, |c| c.queue_messages);
        if queued == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the hub never handed the messages over".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    for _ in MESSAGES {
        let m = subscriber
            .recv(Some(WAIT))?
            .ok_or("timed out waiting for a message")?;
        println!(
            "received (priority {:2}) {}",
            m.priority,
            String::from_utf8_lossy(&m.payload)
        );
    }
    Ok(())
}
