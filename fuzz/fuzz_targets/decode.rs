//! Fuzz the frame decoder as the hub uses it: a stream of frames in one
//! buffer, each checked against a small limit, channels validated.
#![no_main]

use ipchub::wire::{self, channel, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut off = 0;
    while off < data.len() {
        match wire::decode(&data[off..], 4096) {
            Ok(Some((frame, used))) => {
                assert!(used >= wire::HEADER_LEN && used <= data.len() - off);
                assert_eq!(used, frame.header.frame_len());
                let _ = channel::validate_name(frame.channel);
                if let Ok(p) = Pattern::parse(frame.channel) {
                    let _ = p.matches("a/b/c");
                }
                let _ = wire::frame::decode_exact(&data[off..off + used], 4096);
                off += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
