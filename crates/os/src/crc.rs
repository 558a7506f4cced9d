//! CRC-32C with the CPU's own instruction (x86-64 SSE4.2 `crc32`), for
//! the disk log's record checksums: a table-driven CRC was the largest
//! single cost of a stored publish. The table-driven form stays in the
//! daemon (`store::crc32c`) for CPUs without it and as the reference.

/// Continue the CRC-32C register `crc` (not inverted: the caller starts
/// with `!0` and inverts the end result, as for the table form) over
/// `data`. None when this CPU has no CRC-32C instruction.
pub fn crc32c_update(crc: u32, data: &[u8]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the function only needs SSE4.2, detected just above.
            return Some(unsafe { sse42::update(crc, data) });
        }
    }
    let _ = (crc, data);
    None
}

#[cfg(target_arch = "x86_64")]
mod sse42 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};

    /// Eight bytes per instruction, then the tail a byte at a time.
    #[target_feature(enable = "sse4.2")]
    pub(super) fn update(crc: u32, data: &[u8]) -> u32 {
        let mut c = u64::from(crc);
        let mut chunks = data.chunks_exact(8);
        for w in &mut chunks {
            c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut c = c as u32;
        for &b in chunks.remainder() {
            c = _mm_crc32_u8(c, b);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value_where_available() {
        if let Some(c) = crc32c_update(!0, b"123456789") {
            assert_eq!(!c, 0xE306_9283);
        }
    }
}
