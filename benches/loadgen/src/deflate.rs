//! permessage-deflate (RFC 7692) on the load generator's side, without
//! context takeover in either direction: the offer, the reading of the
//! server's answer, compressing one message, and inflating one.
//!
//! Every message stands alone (both sides reset after each), so one
//! [`Inflater`] serves every connection of a run, and identical compressed
//! bytes always inflate to the same message.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` offer: permessage-deflate, neither side
/// keeping a context between messages.
pub const OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What a sync flush ends with; RFC 7692 leaves it off the wire.
const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];

/// The level of what the load generator compresses: zlib's default (6).
pub const CLIENT_LEVEL: u32 = 6;

/// Whether the server's `Sec-WebSocket-Extensions` answer (`None`: no such
/// header) agreed to permessage-deflate. An agreement the load generator
/// cannot keep (the server keeping its context, or limiting our window)
/// is an error.
pub fn agreed(answer: Option<&str>) -> io::Result<bool> {
    let Some(answer) = answer else {
        return Ok(false);
    };
    let answer = answer.to_ascii_lowercase();
    if !answer.contains("permessage-deflate") {
        return Err(io::Error::other(format!(
            "the server answered an extension not offered: {answer}"
        )));
    }
    if !answer.contains("server_no_context_takeover") || answer.contains("client_max_window_bits") {
        return Err(io::Error::other(format!(
            "permessage-deflate agreed with parameters the load generator does not handle: {answer}"
        )));
    }
    Ok(true)
}

/// `payload` compressed as one message (a sync flush, its tail left off)
/// at `level`, with a 32 KiB window.
pub fn compress(payload: &[u8], level: u32) -> Vec<u8> {
    let mut stream = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let used = stream.total_in() as usize;
        stream
            .compress_vec(&payload[used..], &mut out, FlushCompress::Sync)
            .expect("deflate of a complete buffer");
        // All input in and room to spare: the flush is complete.
        if stream.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// Inflates messages compressed without context, one at a time, into a
/// buffer it keeps.
pub struct Inflater {
    stream: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            stream: Decompress::new(false),
            out: Vec::with_capacity(4096),
        }
    }
}

impl Inflater {
    /// A new inflater.
    pub fn new() -> Self {
        Inflater::default()
    }

    /// The message whose compressed payload is `data`, of at most `max`
    /// bytes.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> io::Result<&[u8]> {
        self.out.clear();
        let result = self.run(data, max);
        self.stream.reset(false);
        result?;
        Ok(&self.out)
    }

    fn run(&mut self, data: &[u8], max: usize) -> io::Result<()> {
        let (stream, out) = (&mut self.stream, &mut self.out);
        for input in [data, &TAIL[..]] {
            let start = stream.total_in();
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(io::Error::other("inflated message over the limit"));
                    }
                    out.reserve(out.capacity().max(4096));
                }
                let before = (stream.total_in(), out.len());
                let used = (stream.total_in() - start) as usize;
                let status = stream
                    .decompress_vec(&input[used..], out, FlushDecompress::Sync)
                    .map_err(io::Error::other)?;
                if status == Status::StreamEnd {
                    return Ok(());
                }
                let used = (stream.total_in() - start) as usize;
                let stalled = (stream.total_in(), out.len()) == before;
                if out.len() < out.capacity() && (used == input.len() || stalled) {
                    break;
                }
            }
        }
        if out.len() > max {
            return Err(io::Error::other("inflated message over the limit"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_messages_inflate_back() {
        let mut inflater = Inflater::new();
        for size in [0usize, 32, 1024, 65_536, 300_000] {
            let payload = crate::payload::json(size.max(1), size as u64);
            let compressed = compress(payload.as_bytes(), CLIENT_LEVEL);
            assert!(!compressed.ends_with(&TAIL));
            if size >= 1024 {
                assert!(compressed.len() < payload.len() * 3 / 4, "{size}");
            }
            let back = inflater.inflate(&compressed, 1 << 20).unwrap();
            assert_eq!(back, payload.as_bytes(), "{size}");
        }
        // Over the limit.
        let big = compress(&[b'a'; 100_000], 1);
        assert!(inflater.inflate(&big, 10_000).is_err());
        // Garbage.
        assert!(inflater.inflate(&[0xff, 0xff, 0xff], 1 << 20).is_err());
        // And the inflater still works after both.
        let ok = compress(b"hello", 1);
        assert_eq!(inflater.inflate(&ok, 100).unwrap(), b"hello");
    }

    #[test]
    fn answers_are_read() {
        assert!(!agreed(None).unwrap());
        assert!(agreed(Some(OFFER)).unwrap());
        assert!(agreed(Some("permessage-deflate")).is_err());
        assert!(
            agreed(Some(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
            ))
            .is_err()
        );
        assert!(agreed(Some("x-other")).is_err());
    }
}
