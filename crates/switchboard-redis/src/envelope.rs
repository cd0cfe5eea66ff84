//! The envelope: what one published message looks like on a Redis channel.
//!
//! Binary, so payloads of either kind travel unchanged and unescaped
//! (Redis strings are binary-safe):
//!
//! ```text
//! offset  size  field
//! 0       1     version, 1
//! 1       1     flags: 0x01 binary payload (else UTF-8 text)
//!                      0x02 the topic is a room (else every member)
//!                      0x04 an except-connection id follows
//!                      0x08 a position follows (a room message with history)
//!                      0x10 the payload is a presence change (text)
//! 2       1     origin length N, 1..=255
//! 3       N     origin node id (UTF-8)
//!         2+R   if room: R as u16 big-endian, then the room name (UTF-8)
//!         1+P   if position: P as u8, then the position as text (`{epoch}-{seq}`)
//!         8     if except: connection id, u64 big-endian
//!         rest  the payload
//! ```
//!
//! Envelopes with a position or a presence change are written by the
//! store's scripts inside Redis (the position is only known there); the
//! client gives them the [`head`] and the payload. A presence payload is
//! `{j|l} {version} {F} {field}{name}`: joined or left, the member list's
//! version, the length of the member's field (`{connection}@{instance}`, see `presence.rs`), the
//! field, then the name.
//!
//! Decoding slices the received buffer: no payload is copied.

use bytes::{Buf, Bytes};
use switchboard_core::rooms::Position;
use switchboard_core::{Message, Topic, Utf8Bytes};

use crate::error::{Error, Result};
use crate::options::MAX_NODE_ID_LEN;

/// The only version this crate writes and reads.
pub(crate) const VERSION: u8 = 1;

const BINARY: u8 = 0x01;
const ROOM: u8 = 0x02;
const EXCEPT: u8 = 0x04;
pub(crate) const POSITION: u8 = 0x08;
pub(crate) const PRESENCE: u8 = 0x10;
const KNOWN: u8 = BINARY | ROOM | EXCEPT | POSITION | PRESENCE;

/// The start of a room envelope, up to the room name, for a script to
/// complete: `flags` are added to the room flag.
pub(crate) fn head(origin: &str, room: &str, flags: u8, msg: Option<&Message>) -> Result<Vec<u8>> {
    let binary = msg.is_some_and(Message::is_binary);
    let flags = flags | ROOM | if binary { BINARY } else { 0 };
    let mut out = encode(origin, Topic::Room(room), None, &Message::text(""))?;
    out[1] = flags;
    Ok(out)
}

/// Encodes one message. `origin` is at most 255 bytes (checked by
/// [`RedisOptions::validate`](crate::RedisOptions::validate)).
pub(crate) fn encode(
    origin: &str,
    topic: Topic<'_>,
    except: Option<u64>,
    msg: &Message,
) -> Result<Vec<u8>> {
    let origin_len = u8::try_from(origin.len())
        .ok()
        .filter(|len| *len > 0)
        .ok_or(Error::Encode("origin must be 1 to 255 bytes"))?;
    let mut flags = 0;
    if msg.is_binary() {
        flags |= BINARY;
    }
    let room = match topic {
        Topic::All => None,
        Topic::Room(room) => {
            flags |= ROOM;
            let len = u16::try_from(room.len()).map_err(|_| Error::Encode("room name too long"))?;
            Some((len, room))
        }
    };
    if except.is_some() {
        flags |= EXCEPT;
    }
    let mut out =
        Vec::with_capacity(3 + origin.len() + room.map_or(0, |(_, r)| 2 + r.len()) + 8 + msg.len());
    out.extend_from_slice(&[VERSION, flags, origin_len]);
    out.extend_from_slice(origin.as_bytes());
    if let Some((len, room)) = room {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(room.as_bytes());
    }
    if let Some(id) = except {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(msg.as_bytes());
    Ok(out)
}

/// A decoded envelope; every field is a slice of the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) origin: Bytes,
    /// `None` for every member of the hub.
    pub(crate) room: Option<Utf8Bytes>,
    pub(crate) except: Option<u64>,
    /// Set for a room message recorded in the history.
    pub(crate) position: Option<Position>,
    /// The payload is a presence change.
    pub(crate) presence: bool,
    pub(crate) message: Message,
}

impl Envelope {
    pub(crate) fn topic(&self) -> Topic<'_> {
        match &self.room {
            None => Topic::All,
            Some(room) => Topic::Room(room.as_str()),
        }
    }
}

/// Why an envelope was refused (counted, logged, dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("truncated envelope")]
    Truncated,
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("unknown envelope flags {0:#04x}")]
    Flags(u8),
    #[error("empty origin")]
    Origin,
    #[error("invalid UTF-8 in a text field")]
    Utf8,
    #[error("invalid position")]
    Position,
}

pub(crate) fn decode(mut buf: Bytes) -> Result<Envelope, DecodeError> {
    let take = |buf: &mut Bytes, n: usize| {
        if buf.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(buf.split_to(n))
        }
    };
    let header = take(&mut buf, 3)?;
    let (version, flags, origin_len) = (header[0], header[1], usize::from(header[2]));
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    if flags & !KNOWN != 0 {
        return Err(DecodeError::Flags(flags));
    }
    if origin_len == 0 || origin_len > MAX_NODE_ID_LEN {
        return Err(DecodeError::Origin);
    }
    let origin = take(&mut buf, origin_len)?;
    let room = if flags & ROOM != 0 {
        let len = take(&mut buf, 2)?.get_u16();
        let room = take(&mut buf, usize::from(len))?;
        Some(Utf8Bytes::try_from(room).map_err(|_| DecodeError::Utf8)?)
    } else {
        None
    };
    let position = if flags & POSITION != 0 {
        let len = take(&mut buf, 1)?[0];
        let text = take(&mut buf, usize::from(len))?;
        let text = std::str::from_utf8(&text).map_err(|_| DecodeError::Position)?;
        Some(text.parse().map_err(|_| DecodeError::Position)?)
    } else {
        None
    };
    let except = if flags & EXCEPT != 0 {
        Some(take(&mut buf, 8)?.get_u64())
    } else {
        None
    };
    let message = if flags & BINARY != 0 {
        Message::Binary(buf)
    } else {
        Message::Text(Utf8Bytes::try_from(buf).map_err(|_| DecodeError::Utf8)?)
    };
    Ok(Envelope {
        origin,
        room,
        except,
        position,
        presence: flags & PRESENCE != 0,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_keep_topic_except_and_payload_kind() {
        for (topic, except, msg) in [
            (Topic::Room("lobby"), Some(42), Message::text("héllo")),
            (Topic::All, None, Message::binary(&b"\x00\xff\n\x80"[..])),
            (Topic::All, None, Message::text("")),
            (Topic::All, None, Message::binary(Vec::new())),
        ] {
            let bytes = encode("node-1", topic, except, &msg).expect("encodes");
            let env = decode(Bytes::from(bytes)).expect("decodes");
            assert_eq!(&env.origin[..], b"node-1");
            assert_eq!((env.topic(), env.except), (topic, except));
            assert_eq!(env.message, msg);
        }
    }

    #[test]
    fn exact_layout() {
        let bytes =
            encode("n", Topic::Room("r"), Some(1), &Message::binary(vec![9u8])).expect("ok");
        assert_eq!(
            bytes,
            [1, 0x07, 1, b'n', 0, 1, b'r', 0, 0, 0, 0, 0, 0, 0, 1, 9]
        );
    }

    #[test]
    fn refuses_bad_input() {
        let good = encode("n", Topic::Room("room"), Some(7), &Message::text("hi")).expect("ok");
        // Every strict prefix that cuts a header field is refused.
        for cut in 0..(good.len() - 2) {
            let res = decode(Bytes::copy_from_slice(&good[..cut]));
            assert!(res.is_err(), "prefix of {cut} bytes decoded: {res:?}");
        }
        // A version, flags and origin length this crate does not write.
        for (at, byte, err) in [
            (0, 2, DecodeError::Version(2)),
            (1, 0x86, DecodeError::Flags(0x86)),
            (1, 0x26, DecodeError::Flags(0x26)),
            (2, 0, DecodeError::Origin),
        ] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert_eq!(decode(Bytes::from(bad)), Err(err));
        }
        let mut bad_text = encode("n", Topic::All, None, &Message::text("x")).expect("ok");
        let last = bad_text.len() - 1;
        bad_text[last] = 0xff;
        assert_eq!(decode(Bytes::from(bad_text)), Err(DecodeError::Utf8));
        // Fields too long (or short) for the envelope are refused when encoding.
        let long_room = "r".repeat(70_000);
        assert!(encode("n", Topic::Room(&long_room), None, &Message::text("x")).is_err());
        assert!(encode(&"n".repeat(256), Topic::All, None, &Message::text("x")).is_err());
        assert!(encode("", Topic::All, None, &Message::text("x")).is_err());
    }

    /// What the append script writes: the head, the position, the payload.
    #[test]
    fn scripted_envelopes_decode() {
        let mut bytes = head("n", "r", POSITION, Some(&Message::binary(vec![1u8]))).unwrap();
        let position = "00000000000000ab-7";
        bytes.push(position.len() as u8);
        bytes.extend_from_slice(position.as_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        let env = decode(Bytes::from(bytes)).unwrap();
        assert_eq!(env.position, Some(Position::new(0xab, 7)));
        assert_eq!(env.room.as_deref(), Some("r"));
        assert_eq!(env.message, Message::binary(vec![1u8, 2, 3]));
        assert!(!env.presence);

        let mut bytes = head("n", "r", PRESENCE, None).unwrap();
        bytes.extend_from_slice(b"j 3 3 1@nada");
        let env = decode(Bytes::from(bytes)).unwrap();
        assert!(env.presence && env.position.is_none());
        assert_eq!(env.message, Message::text("j 3 3 1@nada"));

        let mut bad = head("n", "r", POSITION, None).unwrap();
        bad.extend_from_slice(b"\x03abc");
        assert_eq!(decode(Bytes::from(bad)), Err(DecodeError::Position));
    }
}
