//! The built-in framings: lines, length-delimited frames and raw bytes.

use bytes::{Buf, BufMut, BytesMut};
use switchboard_core::transport::OutboundCheck;
use switchboard_core::transport::io::WriteBuffer;
use switchboard_core::{Config, Message, Utf8Bytes};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::Error;

/// Size of the length prefix of a length-delimited frame.
const PREFIX: usize = 4;

/// A built-in framing of messages on a byte stream:
/// [`lines`](Self::lines), [`length_delimited`](Self::length_delimited) or
/// [`raw`](Self::raw) (the crate docs compare them).
///
/// Every codec has a maximum length ([`max_length`](Self::max_length)); on a
/// server it defaults to the smaller of [`Config::max_frame_size`] and
/// [`Config::max_message_size`], and to 1 MiB when the codec is used on its
/// own. A line or frame over it is an [`Error::LineTooLong`] or
/// [`Error::FrameTooLong`], found before more than the limit is buffered.
/// A raw chunk over it is split into several messages.
///
/// Decoding is zero-copy: a message's payload is a slice of the read buffer
/// ([`BytesMut::split_to`] then `freeze`), and a line's UTF-8 is checked once.
///
/// ```
/// use bytes::BytesMut;
/// use switchboard::tcp::Codec;
/// use switchboard::Message;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = Codec::lines().max_length(16);
/// let mut buf = BytesMut::from(&b"hello\r\nwor"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::text("hello")));
/// assert_eq!(codec.decode(&mut buf).unwrap(), None); // waits for the rest
/// let mut out = BytesMut::new();
/// codec.encode(Message::text("hi"), &mut out).unwrap();
/// assert_eq!(&out[..], b"hi\n");
///
/// let mut codec = Codec::length_delimited().max_length(1024);
/// let mut buf = BytesMut::from(&b"\0\0\0\x02hi\0\0\x10\0"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::binary(&b"hi"[..])));
/// // 4096 > 1024: refused from the prefix, before the body is buffered.
/// assert!(codec.decode(&mut buf).is_err());
///
/// let mut out = BytesMut::new();
/// Codec::raw().encode(Message::text("as is"), &mut out).unwrap();
/// assert_eq!(&out[..], b"as is");
/// ```
#[derive(Clone, Debug)]
pub struct Codec {
    kind: Kind,
    /// The limit in force.
    max: usize,
    /// `max` is the user's choice, not taken from the `Config` (a flag
    /// rather than an `Option` beside `max`: 16 bytes less in every
    /// connection's task).
    explicit_max: bool,
    /// Lines: how far the buffer was already searched for `\n`, so a line
    /// arriving in many reads is scanned once.
    next_index: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lines,
    LengthDelimited,
    Raw,
}

impl Codec {
    fn new(kind: Kind) -> Self {
        Codec {
            kind,
            explicit_max: false,
            max: Config::default().max_frame_size,
            next_index: 0,
        }
    }

    /// Newline-delimited UTF-8 text, what `nc` and telnet send: each line
    /// (ended by `\n` or `\r\n`, which are stripped) is one
    /// [`Message::Text`]; invalid UTF-8 is an error (close code 1007). An
    /// unfinished last line is delivered when the peer ends the stream.
    ///
    /// Outbound, a message is written as exactly one line: its payload
    /// followed by `\n`. A message that is not one valid line is refused,
    /// never written as several (see [`check_line`](Self::check_line)):
    /// one with `\n` or `\r` anywhere in it, and a binary message whose
    /// bytes are not UTF-8. A binary message that is UTF-8 without line
    /// breaks is written like text (the peer reads it back as
    /// [`Message::Text`]). On a connection,
    /// [`Connection::send`](switchboard_core::Connection::send) applies the
    /// check before queueing and fails with
    /// [`SendError::Invalid`](switchboard_core::SendError::Invalid); the
    /// encoder checks again and returns [`Error::InvalidLine`] without
    /// writing anything. Other control characters (tab, escape sequences)
    /// are carried as they are: what a terminal should not see is the
    /// component's to remove.
    pub fn lines() -> Self {
        Self::new(Kind::Lines)
    }

    /// Binary frames with a u32 big-endian length prefix (the payload
    /// length, not counting the prefix), each one [`Message::Binary`].
    /// Outbound, text and binary messages alike are written as frames.
    pub fn length_delimited() -> Self {
        Self::new(Kind::LengthDelimited)
    }

    /// No framing: each chunk the socket delivers is one
    /// [`Message::Binary`], and each message sent is written as is. For
    /// protocols that frame themselves, where the component reassembles.
    pub fn raw() -> Self {
        Self::new(Kind::Raw)
    }

    /// Sets the maximum line, frame or chunk length in bytes (a line's end
    /// is not counted), overriding the server's [`Config`]. 0 counts as 1:
    /// a raw chunk cannot be empty.
    #[must_use]
    pub fn max_length(mut self, max: usize) -> Self {
        let max = max.max(1);
        self.explicit_max = true;
        self.max = max;
        self
    }

    /// The maximum length in force.
    pub fn max_len(&self) -> usize {
        self.max
    }

    /// This codec with the limits of `config` applied (unless
    /// [`max_length`](Self::max_length) set one), ready for a new
    /// connection. Transports and `connect` call this for you.
    ///
    /// ```
    /// use switchboard::tcp::Codec;
    /// use switchboard::Config;
    ///
    /// let config = Config::default().max_frame_size(4096).max_message_size(2048);
    /// assert_eq!(Codec::lines().for_config(&config).max_len(), 2048);
    /// assert_eq!(Codec::lines().max_length(80).for_config(&config).max_len(), 80);
    /// // On its own: 1 MiB.
    /// assert_eq!(Codec::raw().max_len(), 1 << 20);
    /// ```
    #[must_use]
    pub fn for_config(&self, config: &Config) -> Self {
        let max = if self.explicit_max {
            self.max
        } else {
            config.max_frame_size.min(config.max_message_size)
        };
        Codec {
            max: max.max(1),
            next_index: 0,
            ..self.clone()
        }
    }

    /// How a connection with this codec checks outbound messages:
    /// [`check_line`](Self::check_line) for lines, `None` for
    /// length-delimited and raw, which carry any message.
    /// [`TcpConn`](crate::TcpConn) hands it to the core.
    pub fn outbound_check(&self) -> Option<OutboundCheck> {
        match self.kind {
            Kind::Lines => Some(Self::check_line),
            Kind::LengthDelimited | Kind::Raw => None,
        }
    }

    /// Whether `msg` can be written as one line: no `\n` or `\r` in it,
    /// and UTF-8 (always true of a text message; checked for a binary
    /// one). Costs one scan of the payload (two for binary).
    ///
    /// ```
    /// use switchboard::Message;
    /// use switchboard::tcp::Codec;
    ///
    /// assert!(Codec::check_line(&Message::text("hello")).is_ok());
    /// assert!(Codec::check_line(&Message::binary(&b"utf-8 is fine"[..])).is_ok());
    /// assert!(Codec::check_line(&Message::text("hello\nFAKE <admin>: hi")).is_err());
    /// assert!(Codec::check_line(&Message::text("trailing\r")).is_err());
    /// assert!(Codec::check_line(&Message::binary(&b"\xff"[..])).is_err());
    /// ```
    pub fn check_line(msg: &Message) -> Result<(), &'static str> {
        let payload = msg.as_bytes();
        if has_line_break(payload) {
            return Err("a line break (\\n or \\r) in a message to a lines peer");
        }
        if msg.is_text() {
            return Ok(());
        }
        binary_line(payload)
    }

    /// The name of the framing: `"lines"`, `"length-delimited"` or `"raw"`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Lines => "lines",
            Kind::LengthDelimited => "length-delimited",
            Kind::Raw => "raw",
        }
    }

    #[inline]
    fn decode_line(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        // A line of `max` bytes may be followed by "\r\n": its '\n' is at
        // index max + 1 at the latest. Searching no further bounds both the
        // scan and what is buffered.
        let window = src.len().min(self.max.saturating_add(2));
        let start = self.next_index.min(window);
        match memchr::memchr(b'\n', &src[start..window]) {
            Some(offset) => {
                let end = start + offset;
                self.next_index = 0;
                self.line(src.split_to(end + 1), end).map(Some)
            }
            // More than `max` bytes without a line end are too many, unless
            // the last of `max + 1` is the '\r' of a "\r\n".
            None if src.len() > self.max && (window > self.max + 1 || src[self.max] != b'\r') => {
                Err(Error::LineTooLong { max: self.max })
            }
            None => {
                self.next_index = window;
                Ok(None)
            }
        }
    }

    /// The first `end` bytes of `line`, without a trailing '\r', as a text
    /// message within the limit.
    #[inline]
    fn line(&self, mut line: BytesMut, end: usize) -> Result<Message, Error> {
        let end = match line[..end] {
            [.., b'\r'] => end - 1,
            _ => end,
        };
        line.truncate(end);
        if line.len() > self.max {
            return Err(Error::LineTooLong { max: self.max });
        }
        Ok(Message::Text(Utf8Bytes::try_from(line.freeze())?))
    }

    fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let Some(&prefix) = src.first_chunk::<PREFIX>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        if len > self.max {
            return Err(Error::FrameTooLong { len, max: self.max });
        }
        let total = PREFIX + len;
        if src.len() < total {
            // Make room for the rest now, so it arrives in as few reads as
            // possible; bounded by the limit checked above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(Message::Binary(src.split_to(len).freeze())))
    }

    /// Encodes `msg` into a connection's write buffer: the framing is
    /// copied, and so is a small payload; a large one is written from its
    /// own memory.
    #[inline]
    pub(crate) fn encode_to(&self, msg: Message, out: &mut WriteBuffer) -> Result<(), Error> {
        match self.kind {
            // `Connection::send` checked the line already, with this
            // codec's own check (see `TcpConn::outbound_check`).
            Kind::Lines => out.frame(&[], msg.into_bytes(), b"\n"),
            Kind::LengthDelimited => {
                let payload = msg.into_bytes();
                let len = u32::try_from(payload.len())
                    .map_err(|_| Error::MessageTooLong { len: payload.len() })?;
                out.frame(&len.to_be_bytes(), payload, &[]);
            }
            Kind::Raw => out.frame(&[], msg.into_bytes(), &[]),
        }
        Ok(())
    }
}

/// Whether a binary message's payload can be a line: UTF-8. Out of line,
/// so that checking a text message (the common case) needs no stack frame.
#[cold]
#[inline(never)]
fn binary_line(payload: &[u8]) -> Result<(), &'static str> {
    match std::str::from_utf8(payload) {
        Ok(_) => Ok(()),
        Err(_) => Err("a binary message that is not UTF-8, to a lines peer"),
    }
}

/// Whether `bytes` hold a `\n` or a `\r`. Up to 256 bytes (most
/// messages), 16 bytes at a time, each 16 a few vector compares; the
/// tail past the last whole 16 is checked by scanning the final 16 bytes
/// (overlapping the 16 before), so only a message shorter than 16 is
/// looked at byte by byte. Far fewer instructions for a short message
/// than `memchr2`'s setup; longer ones take `memchr2`. The early exit per
/// 16 is what keeps it small: without it the compiler vectorizes across
/// the 16s into a 12 KiB function whose prologue alone outweighs a
/// 32-byte message's scan (the check of a 32-byte line: 71 → 55
/// instructions, with `binary_line` out of line; `callgrind_annotate` of
/// `scripts/callgrind.sh switchboard-tcp-echo`'s profile).
#[inline]
fn has_line_break(bytes: &[u8]) -> bool {
    if bytes.len() > 256 {
        return memchr::memchr2(b'\n', b'\r', bytes).is_some();
    }
    let is_break = |b: &u8| *b == b'\n' || *b == b'\r';
    let (chunks, rest) = bytes.as_chunks::<16>();
    if chunks.is_empty() {
        return rest.iter().any(is_break);
    }
    if chunks.iter().any(has_break_in_16) {
        return true;
    }
    match bytes.last_chunk::<16>() {
        Some(last) if !rest.is_empty() => has_break_in_16(last),
        _ => false,
    }
}

/// Whether 16 bytes hold a `\n` or a `\r`, with no branch per byte.
#[inline(always)]
fn has_break_in_16(chunk: &[u8; 16]) -> bool {
    chunk
        .iter()
        .map(|b| u8::from(*b == b'\n') | u8::from(*b == b'\r'))
        .fold(0, |a, b| a | b)
        != 0
}

impl Decoder for Codec {
    type Item = Message;
    type Error = Error;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        match self.kind {
            Kind::Lines => self.decode_line(src),
            Kind::LengthDelimited => self.decode_frame(src),
            Kind::Raw if src.is_empty() => Ok(None),
            Kind::Raw => {
                let n = src.len().min(self.max);
                Ok(Some(Message::Binary(src.split_to(n).freeze())))
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        if let Some(msg) = self.decode(src)? {
            return Ok(Some(msg));
        }
        if src.is_empty() {
            return Ok(None);
        }
        match self.kind {
            // The peer ended the stream without a final line end ("printf
            // 'a' | nc"): the rest is the last line.
            Kind::Lines => {
                self.next_index = 0;
                let end = src.len();
                self.line(src.split(), end).map(Some)
            }
            Kind::LengthDelimited => {
                let buffered = src.len();
                src.clear();
                Err(Error::Truncated { buffered })
            }
            // `decode` made a chunk of whatever was buffered.
            Kind::Raw => Ok(None),
        }
    }
}

impl Encoder<Message> for Codec {
    type Error = Error;

    #[inline]
    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        let payload = msg.as_bytes();
        match self.kind {
            Kind::Lines => {
                Self::check_line(&msg).map_err(|reason| Error::InvalidLine { reason })?;
                dst.reserve(payload.len() + 1);
                dst.put_slice(payload);
                dst.put_u8(b'\n');
            }
            Kind::LengthDelimited => {
                let len = u32::try_from(payload.len())
                    .map_err(|_| Error::MessageTooLong { len: payload.len() })?;
                dst.reserve(PREFIX + payload.len());
                dst.put_u32(len);
                dst.put_slice(payload);
            }
            Kind::Raw => dst.extend_from_slice(payload),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `codec` makes of `input`, then of the end of the stream: "[a]"
    /// for a message a, "|" where the stream ends, "! error" for the error
    /// that stopped it. Every message must be a slice of the input buffer.
    fn decoded(mut codec: Codec, input: &[u8]) -> String {
        let mut buf = BytesMut::from(input);
        let within = buf.as_ptr_range();
        let mut out = String::new();
        for eof in [false, true] {
            if eof {
                out.push('|');
            }
            loop {
                let next = match eof {
                    false => codec.decode(&mut buf),
                    true => codec.decode_eof(&mut buf),
                };
                match next {
                    Ok(Some(msg)) => {
                        let bytes = msg.as_bytes();
                        assert!(
                            bytes.is_empty() || within.contains(&bytes.as_ptr()),
                            "a copy"
                        );
                        out += &format!("[{}]", String::from_utf8_lossy(bytes));
                    }
                    Ok(None) => break,
                    Err(err) => return format!("{out}! {err}"),
                }
            }
        }
        out
    }

    #[test]
    fn decoding_each_framing_and_its_errors() {
        let lines = Codec::lines().max_length(4);
        let too_long = "! line longer than the limit of 4 bytes";
        let cases: &[(&Codec, &[u8], &str)] = &[
            // Line ends are stripped; an unfinished last line is delivered
            // at the end of the stream.
            (&lines, b"one\ntwo\r\n\r\nend", "[one][two][]|[end]"),
            // A line of the limit passes, and "abcd\r" may still be one;
            // one byte more fails, without waiting for the line end.
            (&lines, b"abcd\r\nabcd\nabcd\r", "[abcd][abcd]|[abcd]"),
            (&lines, b"abcde", too_long),
            (&lines, b"abcd\rx", too_long),
            (&lines, b"abcde\n", too_long),
            (
                &Codec::lines(),
                b"ok\n\xff\xfe\n",
                "[ok]! line is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
            ),
            // Refused from the prefix, before the body is buffered.
            (
                &Codec::length_delimited().max_length(10),
                &[0, 0, 0, 11],
                "! frame of 11 bytes is longer than the limit of 10 bytes",
            ),
            (
                &Codec::length_delimited(),
                &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 5, 1],
                "[hi]|! stream ended inside a frame (5 bytes of it received)",
            ),
            // Raw chunks are split at the limit.
            (&Codec::raw().max_length(4), b"abcdefg", "[abcd][efg]|"),
        ];
        for &(codec, input, expected) in cases {
            assert_eq!(decoded(codec.clone(), input), expected, "{input:?}");
        }
    }

    #[test]
    fn a_codec_made_for_a_config_starts_with_a_fresh_scan() {
        // This codec has scanned 5 bytes of an unfinished line.
        let mut used = Codec::lines();
        assert_eq!(used.decode(&mut BytesMut::from("abcde")).expect("ok"), None);
        let mut fresh = used.for_config(&Config::default());
        let mut stream = BytesMut::from("a\nbcdefg");
        let line = fresh.decode(&mut stream).expect("ok");
        assert_eq!(line, Some(Message::text("a")));
    }

    #[test]
    fn an_invalid_line_given_to_the_encoder_writes_nothing() {
        for msg in [
            Message::text("hello\nFAKE <admin>: x"),
            Message::text("dropped\r"),
            Message::binary(&b"\xff\n"[..]),
            Message::binary(
                vec![b'x'; 10_000]
                    .into_iter()
                    .chain(*b"\xff")
                    .collect::<Vec<u8>>(),
            ),
        ] {
            let mut dst = BytesMut::new();
            let err = Codec::lines().encode(msg.clone(), &mut dst);
            assert!(matches!(err, Err(Error::InvalidLine { .. })), "{msg:?}");
            assert!(dst.is_empty());
        }
        // UTF-8 binary without line breaks is one line, like text.
        let mut dst = BytesMut::new();
        Codec::lines()
            .encode(Message::binary(&b"caf\xc3\xa9"[..]), &mut dst)
            .expect("one line");
        assert_eq!(&dst[..], "café\n".as_bytes());
    }

    #[test]
    fn each_codec_says_its_name() {
        assert_eq!(Codec::lines().name(), "lines");
        assert_eq!(Codec::length_delimited().name(), "length-delimited");
        assert_eq!(Codec::raw().name(), "raw");
    }

    #[test]
    fn a_line_break_is_found_at_every_position_and_length() {
        // Shorter than 16 (byte by byte), whole 16s, the last 16 looked at
        // again for the remainder, and the switch to memchr2 past 256.
        for len in [
            0, 1, 2, 15, 16, 17, 18, 31, 32, 33, 47, 48, 49, 255, 256, 257, 300,
        ] {
            let clean = vec![b'x'; len];
            assert!(!has_line_break(&clean), "{len}");
            for at in 0..len {
                for byte in [b'\n', b'\r'] {
                    let mut bytes = clean.clone();
                    bytes[at] = byte;
                    assert!(has_line_break(&bytes), "{len} {at} {byte}");
                }
            }
        }
        // Neighbours of the two bytes are not breaks, byte by byte and 16
        // at a time.
        let neighbours = [0x09, 0x0b, 0x0c, 0x0e, 0x8a, 0x8d];
        assert!(!has_line_break(&neighbours));
        assert!(!has_line_break(&neighbours.repeat(5)));
    }

    #[test]
    fn limits_are_found_before_more_is_buffered() {
        let mut codec = Codec::lines().max_length(8);
        let mut buf = BytesMut::new();
        for n in 1..=9 {
            buf.put_u8(b'x');
            let got = codec.decode(&mut buf);
            assert!(
                matches!(
                    (n, got),
                    (..=8, Ok(None)) | (9, Err(Error::LineTooLong { max: 8 }))
                ),
                "after {n} bytes"
            );
        }
        // A prefix of 4 GiB - 1 does not make a frame reserve anything.
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(Codec::length_delimited().decode(&mut buf).is_err());
        assert!(buf.capacity() < 64);
    }

    #[test]
    fn writing_to_a_connection_matches_the_encoder_without_copying_large_payloads() {
        let big = bytes::Bytes::from(vec![b'x'; 10_000]);
        for mut codec in [Codec::lines(), Codec::length_delimited(), Codec::raw()] {
            let mut expected = BytesMut::new();
            let mut out = WriteBuffer::new(usize::MAX);
            for msg in [
                Message::text("hi"),
                Message::binary(big.clone()),
                Message::text(""),
            ] {
                codec.encode(msg.clone(), &mut expected).expect("encode");
                codec.encode_to(msg, &mut out).expect("encode_to");
            }
            assert_eq!(out.len(), expected.len(), "{}", codec.name());
            // Framing and the small payloads only.
            assert!(out.copied() < 16, "{}: {}", codec.name(), out.copied());
            let mut written = Vec::new();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(out.poll_write(&mut written, &mut cx).is_ready());
            assert_eq!(written, expected, "{}", codec.name());
        }
    }
}
