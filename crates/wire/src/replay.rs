//! The replay a SUBSCRIBE may ask for (its payload, PROTOCOL.md).

/// What a subscriber asked to have replayed (the SUBSCRIBE payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The last N stored messages of each channel.
    Last(u64),
    /// Those stored within the last this many milliseconds.
    SinceMs(u64),
    /// Those with a channel sequence number from S on.
    FromSeq(u64),
}

impl Replay {
    /// Parse a SUBSCRIBE payload: empty (no replay), or one `key=value`
    /// line, `last=N`, `since_ms=T` or `from_seq=S`.
    pub fn parse(payload: &[u8]) -> Result<Option<Replay>, String> {
        if payload.is_empty() {
            return Ok(None);
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| "SUBSCRIBE payload is not UTF-8".to_string())?
            .trim();
        let (key, value) = text.split_once('=').ok_or_else(|| {
            "SUBSCRIBE payload must be last=N, since_ms=T or from_seq=S".to_string()
        })?;
        let n: u64 = value.trim().parse().map_err(|_| {
            format!(
                "SUBSCRIBE {}: '{}' is not a number",
                key.trim(),
                value.trim()
            )
        })?;
        match key.trim() {
            "last" => Ok(Some(Replay::Last(n))),
            "since_ms" => Ok(Some(Replay::SinceMs(n))),
            "from_seq" => Ok(Some(Replay::FromSeq(n))),
            k => Err(format!(
                "SUBSCRIBE payload key '{}' unknown (last, since_ms, from_seq)",
                k.chars().take(32).collect::<String>()
            )),
        }
    }

    /// The SUBSCRIBE payload for this replay.
    pub fn encode(self) -> String {
        match self {
            Replay::Last(n) => format!("last={n}"),
            Replay::SinceMs(n) => format!("since_ms={n}"),
            Replay::FromSeq(n) => format!("from_seq={n}"),
        }
    }
}
