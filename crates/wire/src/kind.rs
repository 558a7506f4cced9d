//! The transports a client can name in HELLO.

/// The transports a client can pick for its data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Socket,
    Pipe,
    Fifo,
    Mqueue,
    Shm,
}

impl TransportKind {
    pub const ALL: [TransportKind; 5] = [
        TransportKind::Socket,
        TransportKind::Pipe,
        TransportKind::Fifo,
        TransportKind::Mqueue,
        TransportKind::Shm,
    ];

    /// The name used on the command line and in HELLO.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Socket => "socket",
            TransportKind::Pipe => "pipe",
            TransportKind::Fifo => "fifo",
            TransportKind::Mqueue => "mqueue",
            TransportKind::Shm => "shm",
        }
    }

    /// The name for people (`Connected to hub via …`).
    pub fn describe(self) -> &'static str {
        match self {
            TransportKind::Socket => "UNIX socket",
            TransportKind::Pipe => "pipe",
            TransportKind::Fifo => "FIFO",
            TransportKind::Mqueue => "message queue",
            TransportKind::Shm => "shared memory",
        }
    }

    pub fn parse(s: &str) -> Option<TransportKind> {
        TransportKind::ALL.into_iter().find(|t| t.name() == s)
    }
}
