//! The broadcast payload: text, so the same message works over WebSocket
//! and TCP lines. `b <publisher> <sequence> <sent, µs since the run began>`
//! padded with `x` to the requested size.

/// Builds a broadcast payload of at least `size` bytes (more only if the
/// header alone is longer).
pub fn encode(publisher: u32, seq: u64, sent_us: u64, size: usize) -> String {
    let mut s = format!("b {publisher} {seq} {sent_us} ");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The publisher, sequence and send time of a broadcast payload.
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut it = text.strip_prefix("b ")?.split(' ');
    let publisher = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((publisher, seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = encode(3, 17, 123_456, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(decode(p.as_bytes()), Some((3, 17, 123_456)));
        assert_eq!(decode(b"hello"), None);
    }
}
