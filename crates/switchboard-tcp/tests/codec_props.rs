//! Property tests of the built-in codecs: a valid stream decodes to the
//! same messages however the network splits it, and any byte soup yields
//! messages or an error, never more than the limit at a time.
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use switchboard::Message;
use switchboard::tcp::{BytesMut, Codec, Decoder, Encoder};

/// Length prefix of a length-delimited frame, and room for "\r\n" on lines.
const SLACK: usize = 4;

/// Decodes `stream` delivered in pieces cut at `cuts` (positions, any
/// order, out-of-range ones ignored), then the end of the stream. Checks
/// on the way that every message is within the limit, that every message
/// consumes input, and that what waits for more stays within the limit.
fn decode_split(mut codec: Codec, stream: &[u8], cuts: &[usize]) -> (Vec<Message>, Option<String>) {
    let max = codec.max_len();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for to in cuts {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    assert!(msg.len() <= max, "message of {} over {max}", msg.len());
                    assert!(buf.len() < before, "a message consumed no input");
                    out.push(msg);
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= max + SLACK,
                        "{} bytes buffered, limit {max}",
                        buf.len()
                    );
                    break;
                }
                Err(err) => return (out, Some(err.to_string())),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(msg)) => {
                assert!(msg.len() <= max, "message of {} over {max}", msg.len());
                out.push(msg);
            }
            Ok(None) => return (out, None),
            Err(err) => return (out, Some(err.to_string())),
        }
    }
}

fn encode_all(mut codec: Codec, msgs: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m.clone(), &mut buf).unwrap();
    }
    buf.to_vec()
}

/// A character, with line ends and control characters (C0, DEL, C1, the
/// escape of terminal sequences) far more often than chance would pick.
fn char_with_controls() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        2 => (b'a'..=b'z').prop_map(char::from),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => (0u8..0x20).prop_map(char::from),
        1 => prop_oneof![Just('\u{7f}'), Just('\u{1b}'), Just('\u{9b}'), Just('\u{85}')],
    ]
}

/// A byte, with line ends, control bytes and bytes that are never UTF-8
/// far more often than chance would pick.
fn byte_with_controls() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>(),
        2 => b'a'..=b'z',
        1 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => prop_oneof![Just(0xffu8), Just(0xc3), Just(0x1b), Just(0x07), Just(0x7f)],
    ]
}

/// Any message another user could send: text with line ends and control
/// characters, or binary bytes, UTF-8 or not.
fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        vec(char_with_controls(), 0..40)
            .prop_map(|c| Message::text(c.into_iter().collect::<String>())),
        vec(byte_with_controls(), 0..40).prop_map(Message::binary),
        // Binary that is UTF-8: accepted by lines unless it breaks a line.
        vec(char_with_controls(), 0..40)
            .prop_map(|c| Message::binary(c.into_iter().collect::<String>().into_bytes())),
    ]
}

/// The lines codec's rule, written plainly: one line is UTF-8 with no
/// `\n` and no `\r`.
fn is_one_line(msg: &Message) -> bool {
    std::str::from_utf8(msg.as_bytes()).is_ok_and(|s| !s.contains(['\n', '\r']))
}

/// A line's text: any UTF-8 without line ends (control characters
/// included), at most `max` bytes.
fn line(max: usize) -> impl Strategy<Value = String> {
    vec(
        char_with_controls().prop_filter("no line ends", |c| *c != '\n' && *c != '\r'),
        0..=max,
    )
    .prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    })
}

proptest! {
    // 256 cases each by default; PROPTEST_CASES=100000 for a longer run.

    #[test]
    fn lines_decode_the_same_however_split(
        max in 1usize..64,
        lines in vec(line(63), 0..20),
        crlf in vec(any::<bool>(), 20),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        let lines: Vec<String> = lines.into_iter().map(|l| {
            let mut end = l.len().min(max);
            while !l.is_char_boundary(end) { end -= 1; }
            l[..end].to_owned()
        }).collect();
        let mut stream = Vec::new();
        for (l, crlf) in lines.iter().zip(&crlf) {
            stream.extend_from_slice(l.as_bytes());
            stream.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        let codec = Codec::lines().max_length(max);
        let (msgs, err) = decode_split(codec, &stream, &cuts);
        prop_assert_eq!(err, None);
        let expected: Vec<Message> = lines.iter().map(|l| Message::text(l.as_str())).collect();
        prop_assert_eq!(msgs, expected);
    }

    #[test]
    fn frames_decode_the_same_however_split(
        max in 1usize..256,
        frames in vec(vec(any::<u8>(), 0..256), 0..20),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        let msgs: Vec<Message> = frames
            .into_iter()
            .map(|mut f| { f.truncate(max); Message::binary(f) })
            .collect();
        let codec = Codec::length_delimited().max_length(max);
        let stream = encode_all(codec.clone(), &msgs);
        let (got, err) = decode_split(codec, &stream, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn encoded_messages_round_trip(
        msgs in vec(line(100), 0..20),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        // What the server writes, a client's codec reads back unchanged,
        // control characters included.
        for codec in [Codec::lines(), Codec::length_delimited()] {
            let msgs: Vec<Message> = msgs.iter().map(|m| Message::text(m.as_str())).collect();
            let stream = encode_all(codec.clone(), &msgs);
            let (got, err) = decode_split(codec.clone(), &stream, &cuts);
            prop_assert_eq!(err, None);
            let got: Vec<&[u8]> = got.iter().map(Message::as_bytes).collect();
            let want: Vec<&[u8]> = msgs.iter().map(Message::as_bytes).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn lines_write_one_line_per_message_or_refuse_it(
        msgs in vec(any_message(), 0..20),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        // Any message, line ends, control characters and invalid UTF-8
        // included: the check agrees with the plain rule, a message that
        // passes is written as exactly one line and read back with the same
        // bytes, and one that does not is refused by the encoder too, with
        // nothing written. So the stream never holds more lines than
        // messages were accepted.
        let mut codec = Codec::lines();
        let check = codec.outbound_check().expect("lines check outbound messages");
        let mut stream = BytesMut::new();
        let mut accepted = Vec::new();
        for msg in &msgs {
            let ok = check(msg).is_ok();
            prop_assert_eq!(ok, is_one_line(msg), "{:?}", msg);
            prop_assert_eq!(ok, Codec::check_line(msg).is_ok());
            let before = stream.len();
            let encoded = codec.encode(msg.clone(), &mut stream);
            prop_assert_eq!(encoded.is_ok(), ok, "{:?}", msg);
            if ok {
                prop_assert_eq!(&stream[before..stream.len() - 1], msg.as_bytes());
                accepted.push(msg.clone());
            } else {
                prop_assert_eq!(stream.len(), before, "a refused message wrote bytes");
            }
        }
        prop_assert_eq!(stream.iter().filter(|b| **b == b'\n').count(), accepted.len());
        let (got, err) = decode_split(Codec::lines(), &stream, &cuts);
        prop_assert_eq!(err, None);
        let got: Vec<&[u8]> = got.iter().map(Message::as_bytes).collect();
        let want: Vec<&[u8]> = accepted.iter().map(Message::as_bytes).collect();
        prop_assert_eq!(got, want);
        // The other codecs carry everything, with no check.
        for other in [Codec::length_delimited(), Codec::raw()] {
            prop_assert!(other.outbound_check().is_none());
        }
        let framed = encode_all(Codec::length_delimited(), &msgs);
        let (got, err) = decode_split(Codec::length_delimited(), &framed, &cuts);
        prop_assert_eq!(err, None);
        let got: Vec<&[u8]> = got.iter().map(Message::as_bytes).collect();
        let want: Vec<&[u8]> = msgs.iter().map(Message::as_bytes).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn raw_chunks_keep_every_byte_within_the_limit(
        max in 1usize..64,
        stream in vec(any::<u8>(), 0..1024),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        let (msgs, err) = decode_split(Codec::raw().max_length(max), &stream, &cuts);
        prop_assert_eq!(err, None);
        let joined: Vec<u8> = msgs.iter().flat_map(|m| m.as_bytes().to_vec()).collect();
        prop_assert_eq!(joined, stream);
    }

    #[test]
    fn byte_soup_gives_messages_or_an_error_within_the_limit(
        kind in 0u8..3,
        max in 1usize..64,
        stream in vec(any::<u8>(), 0..2048),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        let codec = match kind {
            0 => Codec::lines(),
            1 => Codec::length_delimited(),
            _ => Codec::raw(),
        }
        .max_length(max);
        // The limits are asserted inside; the result must not depend on
        // the split for the framed codecs.
        let split = decode_split(codec.clone(), &stream, &cuts);
        let whole = decode_split(codec, &stream, &[]);
        if kind != 2 {
            prop_assert_eq!(split, whole);
        }
    }

    #[test]
    fn soup_of_valid_tokens_agrees_with_a_simple_model(
        max in 1usize..16,
        pieces in vec(prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(vec![0xff]),
            vec(b'a'..=b'z', 0..20),
        ], 0..30),
        cuts in vec(any::<usize>(), 0..30),
    ) {
        // Lines from a soup of line ends, stray '\r', bytes that are never
        // UTF-8 and words: compared with a plain model of the lines codec.
        let stream: Vec<u8> = pieces.concat();
        let (msgs, err) = decode_split(Codec::lines().max_length(max), &stream, &cuts);
        let mut expected = Vec::new();
        let mut model_err = None;
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let (line, next) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max {
                model_err = Some("too long");
                break;
            }
            match std::str::from_utf8(line) {
                Ok(s) => expected.push(Message::text(s)),
                Err(_) => { model_err = Some("utf-8"); break; }
            }
            rest = next;
        }
        prop_assert_eq!(msgs, expected);
        prop_assert_eq!(err.is_some(), model_err.is_some(), "{:?} vs {:?}", err, model_err);
    }
}
