//! RFC 6455 framing: frame headers, masking, close payloads, and the
//! encoder that appends frames to a connection's
//! [`WriteBuffer`]. Pure functions over bytes, tested without sockets.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_core::transport::io::WriteBuffer;
use switchboard_core::{CloseCode, CloseFrame, Error};

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;
/// The first byte's bit that marks a compressed message (RFC 7692: RSV1 on
/// a message's first frame). Or-ed into an opcode for [`encode`].
pub(crate) const RSV1: u8 = 0x40;

/// The largest control frame payload (RFC 6455, 5.5).
pub(crate) const MAX_CONTROL: usize = 125;

/// Which end of the connection this is: a server expects masked frames and
/// sends unmasked ones, a client the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

/// A parsed frame header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    /// RSV1: the first frame of a compressed message.
    pub(crate) compressed: bool,
    pub(crate) mask: Option<[u8; 4]>,
    /// Header bytes, payload length.
    pub(crate) header_len: usize,
    pub(crate) payload_len: usize,
}

impl Header {
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// A protocol error, closed with 1002.
pub(crate) fn protocol(reason: &'static str) -> Error {
    Error::protocol(CloseCode::PROTOCOL, reason)
}

/// Parses the frame header at the start of `buf`: `Ok(None)` if more bytes
/// are needed. Rejects what RFC 6455 forbids (reserved bits, reserved
/// opcodes, fragmented or long control frames, wrong masking for `role`)
/// with 1002, and a payload longer than `max_payload` with 1009, before
/// any of the payload is buffered. With `deflate` (permessage-deflate
/// agreed), RSV1 may mark the first frame of a text or binary message.
pub(crate) fn parse_header(
    buf: &[u8],
    role: Role,
    max_payload: usize,
    deflate: bool,
) -> Result<Option<Header>, Error> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let compressed = b0 & RSV1 != 0;
    if b0 & 0x30 != 0 || (compressed && !deflate) {
        return Err(protocol("reserved bits set without an extension"));
    }
    if compressed && !matches!(opcode, OP_TEXT | OP_BINARY) {
        return Err(protocol("RSV1 on a frame other than a message's first"));
    }
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(protocol("fragmented control frame"));
            }
            if usize::from(b1 & 0x7F) > MAX_CONTROL {
                return Err(protocol("control frame payload over 125 bytes"));
            }
        }
        _ => return Err(protocol("reserved opcode")),
    }
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(protocol("unmasked frame from a client")),
        (Role::Client, true) => return Err(protocol("masked frame from a server")),
        _ => {}
    }
    let (len, mut header_len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if len >> 63 != 0 {
                    return Err(protocol("payload length with the high bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let payload_len = match usize::try_from(len) {
        Ok(n) if n <= max_payload => n,
        _ => {
            return Err(Error::protocol(
                CloseCode::SIZE,
                format!("frame of {len} bytes exceeds the limit of {max_payload}"),
            ));
        }
    };
    let mask = if masked {
        let Some(b) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([b[0], b[1], b[2], b[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        compressed,
        mask,
        header_len,
        payload_len,
    }))
}

/// Applies (or removes: the same operation) a masking key to `buf`, whose
/// first byte is at offset 0 of the payload.
pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key starts over.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// The header of a final frame with a payload of `len` bytes, and its
/// length (2 to 14 bytes). `opcode` may carry [`RSV1`].
fn header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut head = [0u8; 14];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    head[0] = 0x80 | opcode;
    let mut n = if len < 126 {
        head[1] = mask_bit | len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        head[1] = mask_bit | 126;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        head[1] = mask_bit | 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        head[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    (head, n)
}

/// Appends one complete frame to `out` (`opcode` may carry [`RSV1`]). A
/// server's payload goes as it is (a large one written from its own
/// memory); a client's is masked, so copied.
pub(crate) fn encode(out: &mut WriteBuffer, role: Role, opcode: u8, payload: Bytes) {
    let len = payload.len();
    match role {
        Role::Server => {
            let (head, n) = header(opcode, len, None);
            out.frame(&head[..n], payload, &[]);
        }
        Role::Client => {
            let key = mask_key();
            let (head, n) = header(opcode, len, Some(key));
            let buf = out.buf_mut();
            buf.reserve(n + len);
            buf.put_slice(&head[..n]);
            let start = buf.len();
            buf.put_slice(&payload);
            apply_mask(&mut buf[start..], key);
        }
    }
}

/// The close frame's payload as the peer sent it: `None` for an empty one.
/// A one-byte payload, a code that may not be sent, or a reason that is not
/// UTF-8 is an error (1002, 1002, 1007).
pub(crate) fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999) {
                return Err(protocol("close code that may not be sent"));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|e| Error::protocol(CloseCode::INVALID, e))?;
            Ok(Some(CloseFrame::new(CloseCode(code), reason)))
        }
    }
}

/// A close frame's payload for `frame`: a code that may go on the wire
/// (1005, 1006, 1015 and codes outside 1000-4999 become 1000) and the
/// reason cut to 123 bytes on a character boundary.
pub(crate) fn close_payload(frame: &CloseFrame) -> Bytes {
    let code = match frame.code.0 {
        1005 | 1006 | 1015 | 0..=999 | 5000.. => 1000,
        n => n,
    };
    let reason = frame.reason.as_str();
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = BytesMut::with_capacity(2 + end);
    payload.put_u16(code);
    payload.put_slice(&reason.as_bytes()[..end]);
    payload.freeze()
}

/// A masking key for a client frame: unpredictable to the peer, as RFC
/// 6455 asks, from std's randomly keyed SipHash over a process-wide
/// counter (keys never repeat within a process).
fn mask_key() -> [u8; 4] {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let [a, b, c, d, ..] = KEYS.get_or_init(RandomState::new).hash_one(n).to_ne_bytes();
    [a, b, c, d]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client's final frame, masked with a fixed key.
    pub(crate) fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let (head, n) = header(opcode, payload.len(), Some(key));
        let mut out = [&head[..n], payload].concat();
        apply_mask(&mut out[n..], key);
        out
    }

    /// What `out` writes to a socket.
    fn written(out: &mut WriteBuffer) -> Vec<u8> {
        let mut sink = Vec::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(out.poll_write(&mut sink, &mut cx).is_ready());
        sink
    }

    #[test]
    fn headers_round_trip_at_each_length_format() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20] {
            let (head, n) = header(OP_BINARY, len, Some([1, 2, 3, 4]));
            let out = &head[..n];
            let h = parse_header(out, Role::Server, usize::MAX, false)
                .unwrap()
                .unwrap();
            assert_eq!(h.payload_len, len);
            assert_eq!(h.header_len, out.len());
            assert_eq!(h.mask, Some([1, 2, 3, 4]));
            assert!(h.fin);
            // Every prefix is incomplete, not an error.
            for cut in 0..out.len() {
                assert_eq!(
                    parse_header(&out[..cut], Role::Server, usize::MAX, false).unwrap(),
                    None
                );
            }
        }
    }

    #[test]
    fn masking_matches_the_byte_by_byte_definition() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }

    #[test]
    fn forbidden_headers_are_rejected_with_their_codes() {
        let high_bit: &[u8] = &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        let cases: [(&[u8], Role, CloseCode); 8] = [
            (&[0xC1, 0x80, 0, 0, 0, 0], Role::Server, CloseCode::PROTOCOL), // rsv1
            (&[0x83, 0x80, 0, 0, 0, 0], Role::Server, CloseCode::PROTOCOL), // opcode 3
            (&[0x09, 0x80, 0, 0, 0, 0], Role::Server, CloseCode::PROTOCOL), // !fin ping
            (&[0x89, 0xFE, 0, 126], Role::Server, CloseCode::PROTOCOL),     // long ping
            (&[0x81, 0x01, b'a'], Role::Server, CloseCode::PROTOCOL),       // unmasked
            (&[0x81, 0x81, 0, 0, 0, 0], Role::Client, CloseCode::PROTOCOL), // masked
            (&[0x82, 0xFE, 0x03, 0xE9], Role::Server, CloseCode::SIZE),     // 1001 > 1000
            (high_bit, Role::Server, CloseCode::PROTOCOL),
        ];
        for (bytes, role, expected) in cases {
            match parse_header(bytes, role, 1000, false) {
                Err(Error::Protocol { code, .. }) => assert_eq!(code, expected, "{bytes:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // The control frame limit itself is allowed.
        let ping = parse_header(&[0x89, 0x80 | 125, 0, 0, 0, 0], Role::Server, 1000, false)
            .expect("valid")
            .expect("whole");
        assert_eq!((ping.payload_len, ping.header_len), (125, 6));
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_where_deflate_allows_it() {
        let first = parse_header(&[0xC1, 0x80, 0, 0, 0, 0], Role::Server, 1000, true)
            .expect("valid")
            .expect("whole");
        assert!(first.compressed && first.fin);
        let plain = parse_header(&[0x81, 0x80, 0, 0, 0, 0], Role::Server, 1000, true);
        assert!(!plain.unwrap().unwrap().compressed);
        for bytes in [
            [0xC0, 0x80, 0, 0, 0, 0], // a continuation
            [0xC9, 0x80, 0, 0, 0, 0], // a ping
            [0xA1, 0x80, 0, 0, 0, 0], // RSV2
            [0x91, 0x80, 0, 0, 0, 0], // RSV3
        ] {
            let err = parse_header(&bytes, Role::Server, 1000, true).unwrap_err();
            assert!(matches!(err, Error::Protocol { code, .. } if code == CloseCode::PROTOCOL));
        }
    }

    #[test]
    fn close_payloads() {
        assert!(parse_close(&[]).unwrap().is_none());
        assert!(parse_close(&[3]).is_err());
        let ok = parse_close(&[0x03, 0xE8, b'o', b'k']).unwrap().unwrap();
        assert_eq!((ok.code, ok.reason.as_str()), (CloseCode::NORMAL, "ok"));
        for bad in [0u16, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
            assert!(parse_close(&bad.to_be_bytes()).is_err(), "{bad}");
        }
        let invalid_utf8 = parse_close(&[0x03, 0xE8, 0xFF]);
        assert!(
            matches!(invalid_utf8, Err(Error::Protocol { code, .. }) if code == CloseCode::INVALID)
        );
        let long = CloseFrame::new(CloseCode(4000), "é".repeat(100));
        let payload = close_payload(&long);
        assert_eq!(payload.len(), 2 + 122);
        assert_eq!(&payload[..2], &4000u16.to_be_bytes());
        let reserved = close_payload(&CloseFrame::new(CloseCode::ABNORMAL, ""));
        assert_eq!(&reserved[..], &1000u16.to_be_bytes());
    }

    #[test]
    fn server_frames_keep_their_order_and_large_payloads_their_memory() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let mut out = WriteBuffer::new(16 * 1024);
        encode(&mut out, Role::Server, OP_TEXT, Bytes::from_static(b"a"));
        encode(&mut out, Role::Server, OP_BINARY, big.clone());
        encode(&mut out, Role::Server, OP_TEXT, Bytes::from_static(b"b"));
        // Headers and small payloads copied, the large payload not.
        assert_eq!(out.len(), 3 + 10 + big.len() + 3);
        assert_eq!(out.copied(), 3);
        let mut expected = vec![0x81, 1, b'a', 0x82, 127];
        expected.extend_from_slice(&100_000u64.to_be_bytes());
        expected.extend_from_slice(&big);
        expected.extend_from_slice(&[0x81, 1, b'b']);
        assert_eq!(written(&mut out), expected);
    }

    #[test]
    fn client_frames_are_masked_and_unmask_to_the_payload() {
        let mut keys = std::collections::HashSet::new();
        for _ in 0..2 {
            let mut out = WriteBuffer::new(16 * 1024);
            encode(
                &mut out,
                Role::Client,
                OP_TEXT,
                Bytes::from_static(b"hello"),
            );
            let bytes = written(&mut out);
            let h = parse_header(&bytes, Role::Server, 1000, false)
                .unwrap()
                .unwrap();
            let key = h.mask.unwrap();
            keys.insert(key);
            let mut payload = bytes[h.header_len..].to_vec();
            apply_mask(&mut payload, key);
            assert_eq!(payload, b"hello");
        }
        // Every frame has a key of its own.
        assert_eq!(keys.len(), 2);
    }
}
