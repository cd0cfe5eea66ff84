//! The payloads of the runs. Broadcast payloads are text, so the same
//! message works over WebSocket and TCP lines, and carry the publisher,
//! a sequence number and the send time (µs since the run began):
//!
//! - [`encode`]: `b <publisher> <sequence> <sent>` padded with `x` to the
//!   requested size (`--payload x`, the default);
//! - [`chat_json`]: a chat message as a JSON object, its first field
//!   `"b":"<publisher> <sequence> <sent>"`, the rest the fields a chat
//!   application sends and ordinary words (`--payload json`): what
//!   permessage-deflate meets in practice, where a run of `x` would
//!   compress to almost nothing.
//!
//! [`json`] is the echo runs' JSON payload: one chat message, or a page
//! of history (an array of messages) past 2 KiB.

use std::fmt::Write as _;

/// Builds a broadcast payload of at least `size` bytes (more only if the
/// header alone is longer).
pub fn encode(publisher: u32, seq: u64, sent_us: u64, size: usize) -> String {
    let mut s = format!("b {publisher} {seq} {sent_us} ");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The start of a [`chat_json`] payload, before the timing header.
const JSON_PREFIX: &str = "{\"b\":\"";

/// The publisher, sequence and send time of a broadcast payload, of
/// either format.
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let header = if let Some(rest) = payload.strip_prefix(JSON_PREFIX.as_bytes()) {
        let end = rest.iter().position(|&b| b == b'"')?;
        &rest[..end]
    } else {
        payload.strip_prefix(b"b ")?
    };
    let text = std::str::from_utf8(header).ok()?;
    let mut it = text.split(' ');
    let publisher = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((publisher, seq, sent))
}

/// Words of the message texts: everyday English, so that a text
/// compresses as chat text does (neither one repeated byte nor random
/// bytes).
const WORDS: &[&str] = &[
    "the",
    "meeting",
    "is",
    "moved",
    "to",
    "tomorrow",
    "at",
    "ten",
    "and",
    "we",
    "still",
    "need",
    "a",
    "room",
    "for",
    "it",
    "can",
    "you",
    "check",
    "if",
    "build",
    "passed",
    "on",
    "main",
    "I",
    "think",
    "so",
    "but",
    "deploy",
    "failed",
    "again",
    "last",
    "night",
    "because",
    "of",
    "that",
    "flaky",
    "test",
    "in",
    "payments",
    "service",
    "let",
    "me",
    "know",
    "when",
    "are",
    "back",
    "from",
    "lunch",
    "thanks",
    "great",
    "work",
    "everyone",
    "release",
    "notes",
    "look",
    "good",
    "please",
    "review",
    "my",
    "pull",
    "request",
    "before",
    "end",
    "day",
    "sure",
    "will",
    "do",
    "after",
    "standup",
    "does",
    "anyone",
    "have",
    "link",
    "dashboard",
    "latency",
    "spiked",
    "around",
    "noon",
    "customers",
    "reported",
    "slow",
    "pages",
    "rolled",
    "config",
    "change",
    "looks",
    "fine",
    "now",
    "coffee",
    "anyone",
    "new",
    "office",
    "opens",
    "next",
    "week",
    "with",
    "more",
    "desks",
    "quiet",
    "rooms",
    "ok",
    "sounds",
    "plan",
    "ship",
    "Friday",
    "maybe",
    "Monday",
    "safer",
    "agreed",
    "update",
    "docs",
    "too",
    "numbers",
    "from",
    "yesterday",
    "are",
    "in",
    "sheet",
];

/// A small deterministic generator (xorshift64*): the same seed gives the
/// same message.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A chat message as a JSON object of exactly `size` bytes, or of its
/// fields' length if that is more (about 330 bytes): the timing header
/// `"b":"<publisher> <seq> <sent>"` first, then a type, room, id, author,
/// time, mentions and reactions, and a text of words chosen from `seq`
/// that fills the rest. ASCII only.
pub fn chat_json(publisher: u32, seq: u64, sent_us: u64, size: usize) -> String {
    let mut rng = Rng::new(seq ^ (u64::from(publisher) << 40));
    let user = 1000 + rng.below(9000);
    let second = seq % 60;
    let minute = (seq / 60) % 60;
    let reactions = rng.below(5);
    let mut s = String::with_capacity(size.max(512));
    let _ = write!(
        s,
        "{JSON_PREFIX}{publisher} {seq} {sent_us}\",\"type\":\"message\",\"room\":\"general\",\
         \"id\":\"msg-{publisher}-{seq}\",\"user\":{{\"id\":{user},\"name\":\"user{user}\",\
         \"avatar\":\"https://cdn.example.com/avatars/{user}.png\",\"status\":\"online\"}},\
         \"sent_at\":\"2025-03-14T10:{minute:02}:{second:02}.{:03}Z\",\"reply_to\":null,\
         \"mentions\":[],\"reactions\":{{\"thumbsup\":{reactions},\"eyes\":{}}},\"edited\":false,\
         \"text\":\"",
        seq % 1000,
        rng.below(3),
    );
    const END: &str = "\"}";
    while s.len() + END.len() < size {
        let word = WORDS[rng.below(WORDS.len())];
        if s.len() + END.len() + word.len() + 1 > size {
            // The last word cut to fit (ASCII: any cut is a boundary).
            let room = size - END.len() - s.len();
            s.push_str(&word[..room.min(word.len())]);
            while s.len() + END.len() < size {
                s.push('.');
            }
            break;
        }
        if !s.ends_with('"') {
            s.push(' ');
        }
        s.push_str(word);
    }
    s.push_str(END);
    s
}

/// The echo runs' JSON payload of exactly `size` bytes, from `seed`: one
/// [`chat_json`] message up to 2 KiB (cut to `size` when shorter than its
/// fields: only its start), beyond that a page of history,
/// `{"type":"history","room":"general","messages":[...]}` with messages of
/// 600 to 1,400 bytes.
pub fn json(size: usize, seed: u64) -> String {
    if size <= 2048 {
        let mut one = chat_json(0, seed, seed, size);
        one.truncate(size);
        return one;
    }
    const HEAD: &str = "{\"type\":\"history\",\"room\":\"general\",\"messages\":[";
    const TAIL: &str = "]}";
    let mut rng = Rng::new(seed);
    let mut s = String::with_capacity(size);
    s.push_str(HEAD);
    let mut i = 0u64;
    loop {
        let sep = usize::from(i > 0);
        let left = size - s.len() - TAIL.len() - sep;
        // The last message takes what is left (over 1,400 bytes here).
        let n = if left >= 2 * 1400 {
            600 + rng.below(800)
        } else {
            left
        };
        if sep == 1 {
            s.push(',');
        }
        s.push_str(&chat_json(0, seed + i, 1_000 * i, n));
        i += 1;
        if n == left {
            break;
        }
    }
    s.push_str(TAIL);
    s
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

    #[test]
    fn chat_json_has_the_size_and_the_header() {
        for size in [0, 100, 400, 1024, 1500] {
            let p = chat_json(2, 99, 4_567, size);
            assert!(
                p.len() == size || (size < 400 && p.len() > size),
                "{size}: {p}"
            );
            assert_eq!(decode(p.as_bytes()), Some((2, 99, 4_567)));
            assert!(
                p.starts_with("{\"b\":\"2 99 4567\"") && p.ends_with("\"}"),
                "{p}"
            );
        }
        // Messages differ from one sequence number to the next.
        assert_ne!(
            chat_json(0, 1, 0, 1024)[30..],
            chat_json(0, 2, 0, 1024)[30..]
        );
    }

    #[test]
    fn json_payloads_have_the_exact_size() {
        for size in [32, 1024, 2049, 4096, 65_536] {
            let p = json(size, 7);
            assert_eq!(p.len(), size);
            assert!(p.is_ascii());
        }
        let page = json(65_536, 7);
        assert!(page.starts_with("{\"type\":\"history\"") && page.ends_with("\"}]}"));
        assert!(page.matches("\"type\":\"message\"").count() >= 40);
    }
}
