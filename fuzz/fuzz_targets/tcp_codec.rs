//! The TCP codecs (lines, length-delimited, raw) on arbitrary bytes.
//!
//! Input: a selector byte (codec and chunk size), a limit byte, then the
//! stream. The stream is decoded twice, in one piece and in small chunks;
//! both must give the same messages and the same error, every message must
//! be within the limit, and what stays buffered must stay within it too.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_core::Message;
use switchboard_tcp::Codec;
use tokio_util::codec::Decoder;

/// Length prefix of length-delimited frames, plus "\r\n" for lines.
const SLACK: usize = 4;

fn decode_all(mut codec: Codec, data: &[u8], chunk: usize) -> (Vec<Message>, Option<String>) {
    let max = codec.max_len();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in data.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    assert!(msg.len() <= max, "{} > {max}", msg.len());
                    out.push(msg);
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= max + SLACK,
                        "{} bytes buffered under a limit of {max}",
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
                assert!(msg.len() <= max, "{} > {max}", msg.len());
                out.push(msg);
            }
            Ok(None) => return (out, None),
            Err(err) => return (out, Some(err.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, limit, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) + 1;
    let codec = match selector % 3 {
        0 => Codec::lines(),
        1 => Codec::length_delimited(),
        _ => Codec::raw(),
    }
    .max_length(max);
    let chunk = usize::from(selector / 3 % 16) + 1;
    let raw = selector % 3 == 2;

    let (whole, whole_err) = decode_all(codec.clone(), stream, stream.len().max(1));
    let (split, split_err) = decode_all(codec, stream, chunk);
    if raw {
        // Raw chunks are wherever the reads ended; the bytes are the same.
        let cat = |msgs: &[Message]| {
            msgs.iter()
                .flat_map(|m| m.as_bytes().to_vec())
                .collect::<Vec<u8>>()
        };
        assert_eq!(cat(&whole), cat(&split));
        assert_eq!(cat(&whole), stream);
    } else {
        assert_eq!(whole, split, "messages depend on how the stream was split");
        assert_eq!(
            whole_err, split_err,
            "errors depend on how the stream was split"
        );
    }
});
