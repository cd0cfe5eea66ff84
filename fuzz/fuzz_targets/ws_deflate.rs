//! permessage-deflate (RFC 7692) on the WebSocket message path: an upgrade
//! offering the extension to a transport that compresses every reply
//! (threshold 0), then frames built from the input, many of them
//! compressed, over an in-memory pipe through the connection driver to an
//! echo component; then a second connection on the same transport, which
//! must work whatever the first one did to the shared streams.
//!
//! Input: a write-size byte, a settings byte (bits 0-2: the offer; bit 3:
//! the server allows context takeover; bit 4: the client keeps its context
//! even when told not to; bits 5-7: the client's compression level), then
//! records of (flags, length, payload) that become frames (see
//! `Client::record`).
//!
//! Checks, besides those of `ws_connection` (the connection ends,
//! `on_open`/`on_close` once each, whole unmasked server frames, every
//! message received echoed once in order, one close frame at most): the
//! `101` answers the offer as RFC 7692 says; every echo is compressed (when
//! agreed) and inflates to the message received; up to the first record whose outcome
//! cannot be told in advance (garbage marked compressed, a truncated
//! message, raw bytes), the component gets exactly the messages sent and
//! the connection ends as it must: 1009 for a message too large (once
//! inflated), 1007 for text that is not UTF-8 (once inflated), 1002 for
//! RSV1 where it is not allowed or not agreed; after that record, the
//! close code is still one of those.
#![no_main]

#[path = "common.rs"]
mod common;

use common::{
    Echo, HANG, ServerFrame, check_http_response, parse_server_frames_with, peer, read_all,
    runtime, write_chunked,
};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use libfuzzer_sys::fuzz_target;
use switchboard_core::transport::{Transport, spawn_client};
use switchboard_core::{CloseReason, Config, Message};
use switchboard_ws::{Deflate, WsTransport};
use tokio::io::DuplexStream;
use tokio::time::timeout;

/// Limits small enough for records (payloads of up to 255 bytes, repeated
/// up to 8 times, bombs of up to 2 KiB once inflated) to reach.
const MAX_FRAME: usize = 200;
const MAX_MESSAGE: usize = 1000;
/// What a sync flush ends with, left off the wire (RFC 7692, 7.2.1).
const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// The client's `Sec-WebSocket-Extensions`, by the settings byte.
const OFFERS: [Option<&str>; 8] = [
    Some("permessage-deflate"),
    Some("permessage-deflate; client_no_context_takeover"),
    Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits"),
    // The first is declined (zlib has no 256-byte window), the second taken.
    Some(
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=10",
    ),
    Some("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"12\""),
    Some("permessage-deflate; server_max_window_bits=8"),
    None,
];

/// The window the client compresses with under each offer: what it said
/// it would use, if it said so.
fn client_bits(offer: usize) -> u8 {
    if offer == 4 { 10 } else { 15 }
}

fn upgrade(offer: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "GET /chat HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    if let Some(offer) = offer {
        head.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One masked client frame with first byte `first` (FIN, RSV, opcode).
fn encode(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    out.push(first);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// Compresses `data` as one message: a sync flush without its tail, or
/// (`finish`) a final block, as RFC 7692 allows both.
fn deflate(c: &mut Compress, data: &[u8], finish: bool) -> Vec<u8> {
    let flush = if finish {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let start = c.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let used = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&data[used..], &mut out, flush)
            .expect("compresses");
        let used = (c.total_in() - start) as usize;
        let done = if finish {
            status == Status::StreamEnd
        } else {
            used == data.len() && out.len() < out.capacity()
        };
        if done {
            break;
        }
    }
    if !finish && out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    if out.is_empty() {
        // Nothing new to flush (an empty message after a sync flush):
        // RFC 7692 (7.2.3.6) sends an empty stored block's first byte.
        out.push(0x00);
    }
    out
}

/// Inflates one compressed message from the server (with the tail it left
/// off); the server only ever sync-flushes.
fn inflate(d: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    for input in [data, &TAIL[..]] {
        let start = d.total_in();
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let used = (d.total_in() - start) as usize;
            let before = (used, out.len());
            let status = d
                .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                .expect("the server's compressed data inflates");
            assert_ne!(status, Status::StreamEnd, "the server sent a final block");
            let used = (d.total_in() - start) as usize;
            if used == input.len() && out.len() < out.capacity() {
                break;
            }
            assert_ne!(
                (used, out.len()),
                before,
                "the server's data stalls inflating"
            );
        }
    }
    assert!(
        out.len() <= MAX_MESSAGE,
        "echo larger than any message received"
    );
    out
}

/// How the connection must end, as far as the target can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// No frame so far ended it: the input's end does (the peer's EOF).
    Open,
    /// The server must close with this code.
    Close(u16),
    /// The client sent a close frame.
    PeerClose,
    /// A frame whose outcome the target does not predict.
    Unknown,
}

/// The server's reading of the frames, as RFC 6455/7692 and the limits
/// require it: the messages it must deliver, and how it must end.
struct Model {
    deflate: bool,
    end: End,
    messages: Vec<Message>,
    /// The message being fragmented.
    fragments: Option<Partial>,
}

/// A message as the server reads it.
struct Partial {
    opcode: u8,
    compressed: bool,
    /// The payload so far.
    data: Vec<u8>,
    /// What the payload inflates to (`None`: not known).
    inflates: Option<Vec<u8>>,
}

impl Model {
    fn fail(&mut self, code: u16) {
        self.end = End::Close(code);
    }

    /// One frame with first byte `first`; `inflates`: what the message it
    /// starts inflates to, if compressed and known.
    fn frame(&mut self, first: u8, payload: &[u8], inflates: Option<&[u8]>) {
        if self.end != End::Open {
            return;
        }
        let (fin, rsv1, opcode) = (first & 0x80 != 0, first & 0x40 != 0, first & 0x0F);
        if first & 0x30 != 0 || (rsv1 && (!self.deflate || !matches!(opcode, 1 | 2))) {
            return self.fail(1002);
        }
        match opcode {
            0..=2 => {}
            8..=10 if fin && payload.len() <= 125 => {}
            _ => return self.fail(1002),
        }
        if opcode <= 2 {
            let (so_far, compressed) = self
                .fragments
                .as_ref()
                .map_or((0, rsv1), |f| (f.data.len(), f.compressed));
            let (max_frame, max_message) = if compressed {
                (wire_limit(MAX_FRAME), wire_limit(MAX_MESSAGE))
            } else {
                (MAX_FRAME, MAX_MESSAGE)
            };
            if payload.len() > max_frame || so_far + payload.len() > max_message {
                return self.fail(1009);
            }
        }
        match opcode {
            1 | 2 => {
                if self.fragments.is_some() {
                    return self.fail(1002);
                }
                let partial = Partial {
                    opcode,
                    compressed: rsv1,
                    data: payload.to_vec(),
                    inflates: inflates.map(<[u8]>::to_vec),
                };
                if fin {
                    self.message(partial);
                } else if opcode == 1 && !rsv1 && not_utf8(payload, false) {
                    self.fail(1007);
                } else {
                    self.fragments = Some(partial);
                }
            }
            0 => {
                let Some(partial) = self.fragments.as_mut() else {
                    return self.fail(1002);
                };
                partial.data.extend_from_slice(payload);
                if partial.opcode == 1 && !partial.compressed && not_utf8(&partial.data, fin) {
                    return self.fail(1007);
                }
                if fin && let Some(partial) = self.fragments.take() {
                    self.message(partial);
                }
            }
            8 => self.end = End::PeerClose,
            _ => {}
        }
    }

    fn message(&mut self, partial: Partial) {
        let Partial {
            opcode,
            compressed,
            data,
            inflates,
        } = partial;
        let plain = match (compressed, inflates) {
            (false, _) => data,
            (true, Some(plain)) => plain,
            (true, None) => {
                self.end = End::Unknown;
                return;
            }
        };
        if plain.len() > MAX_MESSAGE {
            return self.fail(1009);
        }
        if opcode == 1 {
            match String::from_utf8(plain) {
                Ok(text) => self.messages.push(Message::text(text)),
                Err(_) => self.fail(1007),
            }
        } else {
            self.messages.push(Message::binary(plain));
        }
    }

    fn unknown(&mut self) {
        if self.end == End::Open {
            self.end = End::Unknown;
        }
    }
}

/// What a compressed message or frame may take on the wire under `limit`,
/// as the server allows it: deflate's fixed codes spend up to 9 bits on a
/// byte, and blocks add a few bytes, so a message that does not shrink
/// may still be sent compressed. Once inflated, `limit` itself holds.
fn wire_limit(limit: usize) -> usize {
    limit + limit / 8 + 64
}

/// Whether the text so far cannot be UTF-8 (an incomplete character at the
/// end waits for the next fragment unless `fin`).
fn not_utf8(data: &[u8], fin: bool) -> bool {
    match std::str::from_utf8(data) {
        Ok(_) => false,
        Err(e) => fin || e.error_len().is_some(),
    }
}

/// What was agreed, read from the `101`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Agreed {
    deflate: bool,
    server_resets: bool,
    client_resets: bool,
    server_bits: Option<u8>,
}

fn read_agreement(head: &str) -> Agreed {
    let lines: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .collect();
    assert!(lines.len() <= 1, "one extensions header: {head}");
    let Some(value) = lines.first() else {
        return Agreed::default();
    };
    let mut params = value.split(';').map(str::trim);
    assert_eq!(params.next(), Some("permessage-deflate"), "{value}");
    let mut agreed = Agreed {
        deflate: true,
        ..Agreed::default()
    };
    for param in params {
        match param.split_once('=') {
            None if param == "server_no_context_takeover" && !agreed.server_resets => {
                agreed.server_resets = true;
            }
            None if param == "client_no_context_takeover" && !agreed.client_resets => {
                agreed.client_resets = true;
            }
            Some(("server_max_window_bits", bits)) if agreed.server_bits.is_none() => {
                agreed.server_bits = Some(bits.parse().expect("a number"));
            }
            _ => panic!("unexpected parameter {param:?} in {value}"),
        }
    }
    agreed
}

/// What RFC 7692 makes of offer `offer` to a server that allows context
/// takeover or not.
fn expected_agreement(offer: usize, takeover: bool) -> Agreed {
    let Some(text) = OFFERS[offer] else {
        return Agreed::default();
    };
    let taken = match offer {
        4 => text.split(',').nth(1).expect("two offers"),
        5 => text.split(',').nth(1).expect("two offers"),
        6 => return Agreed::default(),
        _ => text,
    };
    Agreed {
        deflate: true,
        server_resets: !takeover || taken.contains("server_no_context_takeover"),
        client_resets: !takeover || taken.contains("client_no_context_takeover"),
        server_bits: match offer {
            3 => Some(9),
            5 => Some(12),
            _ => None,
        },
    }
}

/// The client's compressor: one stream kept across messages when it keeps
/// its context, else a new one per message.
struct Sender {
    level: Compression,
    bits: u8,
    kept: Option<Compress>,
    /// The server inflates each message on its own (the client was told
    /// to keep no context): a kept stream is a lie to it.
    server_forgets: bool,
    /// The kept stream holds earlier messages: one that refers to them is
    /// garbage to a server that does not keep them.
    history: bool,
}

impl Sender {
    /// Compresses one message (with a window of `bits` if given and no
    /// context is kept); and whether the server must inflate it to `data`.
    fn compress(&mut self, data: &[u8], finish: bool, bits: Option<u8>) -> (Vec<u8>, bool) {
        match self.kept.as_mut() {
            Some(stream) => {
                let known = !(self.server_forgets && self.history);
                let out = deflate(stream, data, finish);
                if finish {
                    // A final block ends the stream; the server starts anew too.
                    stream.reset();
                    self.history = false;
                } else {
                    self.history = true;
                }
                (out, known)
            }
            None => {
                let bits = bits.unwrap_or(self.bits);
                let mut stream = Compress::new_with_window_bits(self.level, false, bits);
                (deflate(&mut stream, data, finish), true)
            }
        }
    }
}

/// Builds the frames of the records and the model's prediction.
struct Client {
    wire: Vec<u8>,
    model: Model,
    sender: Sender,
}

impl Client {
    fn send(&mut self, first: u8, payload: &[u8], inflates: Option<&[u8]>) {
        encode(&mut self.wire, first, payload);
        self.model.frame(first, payload, inflates);
    }

    /// Sends `payload` as one message of `pieces` frames (RSV1 on the first
    /// if `compressed`), with a ping after the first when `ping`;
    /// `inflates` is what the server must inflate the payload to, if known.
    fn message(
        &mut self,
        opcode: u8,
        compressed: bool,
        payload: &[u8],
        pieces: usize,
        ping: bool,
        inflates: Option<&[u8]>,
    ) {
        let step = payload.len().div_ceil(pieces.max(1)).max(1);
        let mut parts: Vec<&[u8]> = payload.chunks(step).collect();
        parts.resize(pieces.max(parts.len()).max(1), &[]);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let fin = if i == last { 0x80 } else { 0 };
            let first = if i == 0 {
                fin | opcode | if compressed { 0x40 } else { 0 }
            } else {
                fin
            };
            self.send(first, part, inflates);
            if ping && i == 0 && last > 0 {
                self.send(0x89, b"p", None);
            }
        }
    }

    /// A compressed message of `plain`; what the server must get, if known.
    fn compressed(&mut self, opcode: u8, plain: &[u8], pieces: usize, finish: bool) {
        let (data, known) = self.sender.compress(plain, finish, None);
        self.message(
            opcode,
            true,
            &data,
            pieces,
            pieces > 1,
            known.then_some(plain),
        );
    }

    /// One record: the low 4 bits of `flags` say what it becomes, 0x10
    /// makes a data message text, the top 3 bits are a parameter (pieces,
    /// size, which misplaced bit).
    fn record(&mut self, flags: u8, payload: &[u8]) {
        let opcode = if flags & 0x10 != 0 { 0x1 } else { 0x2 };
        let p = usize::from(flags >> 5);
        match flags & 0x0F {
            0..=2 => self.compressed(opcode, payload, 1, false),
            3 => self.compressed(opcode, payload, p + 2, false),
            4 => self.message(opcode, false, payload, 1, false, None),
            // Uncompressed, the payload repeated 1-8 times: frames and
            // messages past the limits too.
            5 => {
                let long = payload.repeat(p + 1);
                self.message(opcode, false, &long, p + 2, p % 2 == 1, None);
            }
            // Raw bytes marked compressed: garbage to inflate, or not.
            6 => {
                self.message(opcode, true, payload, 1 + p % 2, false, None);
            }
            // A bomb: the payload repeated to 256 B-2 KiB once inflated
            // (past the limit from 1 KiB on), in one or two frames.
            7 => {
                let pattern = if payload.is_empty() {
                    &[0u8][..]
                } else {
                    payload
                };
                let plain: Vec<u8> = pattern.iter().copied().cycle().take((p + 1) << 8).collect();
                self.compressed(0x2, &plain, 1 + payload.len() % 2, false);
            }
            // Ended by a final block (BFINAL), as RFC 7692 allows.
            8 => self.compressed(opcode, payload, 1 + p % 2, true),
            // A final block, then more bytes: blocks that inflate are part
            // of the message (RFC 7692 7.2.1), anything else is 1007; which
            // one depends on the bytes.
            9 => {
                let (mut data, _) = self.sender.compress(payload, true, None);
                data.extend_from_slice(&payload[..p.min(payload.len())]);
                data.push(flags);
                self.message(opcode, true, &data, 1, false, None);
            }
            // Cut short: a message, an error, or (inflated as far as it
            // goes) part of one.
            10 => {
                let (mut data, _) = self.sender.compress(payload, false, None);
                data.truncate(data.len().saturating_sub(p + 1));
                self.message(opcode, true, &data, 1, false, None);
            }
            11 => {
                let ping = &payload[..payload.len().min(125)];
                let rsv1 = if flags & 0x10 != 0 { 0x40 } else { 0 };
                self.send(0x89 | rsv1, ping, None);
            }
            12 => self.misplaced_rsv(p, payload),
            13 => {
                let code: u16 = [1000, 1001, 1003, 1008, 1011, 3000, 4000, 4999][p];
                let mut close = code.to_be_bytes().to_vec();
                close.extend(payload.iter().take(100).map(|b| b'a' + b % 26));
                self.send(0x88, &close, None);
            }
            // A smaller window than the client's usual (when it keeps no
            // context, where a window of its own is possible).
            14 => {
                let bits = Some(9 + (p as u8).min(6)).filter(|_| self.sender.kept.is_none());
                let (data, known) = self.sender.compress(payload, false, bits);
                self.message(opcode, true, &data, 1, false, known.then_some(payload));
            }
            // Bytes as they are: any frame, or part of one.
            _ => {
                self.wire.extend_from_slice(payload);
                self.model.unknown();
            }
        }
    }

    /// RSV bits where RFC 6455 and 7692 allow none.
    fn misplaced_rsv(&mut self, which: usize, payload: &[u8]) {
        let short = &payload[..payload.len().min(125)];
        match which {
            // RSV1 on the continuation of a compressed message.
            0 => {
                let (data, known) = self.sender.compress(payload, false, None);
                let (a, b) = data.split_at(data.len() / 2);
                let inflates = known.then_some(payload);
                self.send(0x42, a, inflates);
                self.send(0xC0, b, inflates);
            }
            1 => self.send(0xC8, &[0x03, 0xE8], None),
            2 => self.send(0xCA, short, None),
            // RSV2, RSV3.
            3 => self.send(0xA2, short, None),
            4 => self.send(0x92, short, None),
            // RSV1 on the continuation of an uncompressed message.
            5 => {
                self.send(0x02, short, None);
                self.send(0xC0, short, None);
            }
            // A compressed continuation with no message.
            6 => self.send(0xC0, short, None),
            // RSV1 on a reserved opcode.
            _ => self.send(0xC3, short, None),
        }
    }
}

/// Runs one connection on `transport`: the upgrade with `offer`, then
/// `frames`, written `chunk` bytes at a time. Returns the `101`'s head and
/// the server's frames.
async fn connect(
    transport: &WsTransport,
    config: &Config,
    offer: Option<&str>,
    frames: &[u8],
    chunk: usize,
) -> (String, Vec<ServerFrame>) {
    let (client_io, server_io) = tokio::io::duplex(16 * 1024);
    let (r, w) = tokio::io::split(client_io);
    let reader = tokio::spawn(read_all(r));
    let writer = tokio::spawn({
        let mut input = upgrade(offer);
        input.extend_from_slice(frames);
        async move { write_chunked(w, &input, chunk).await }
    });
    let accepted = Transport::<DuplexStream>::accept(transport, server_io, peer(), config)
        .await
        .expect("a valid upgrade is accepted");
    let handle = spawn_client(
        accepted.conn,
        peer(),
        accepted.info,
        accepted.component,
        config.clone(),
    )
    .expect("valid config");
    timeout(HANG, handle.closed())
        .await
        .expect("the connection ends");
    timeout(HANG, writer)
        .await
        .expect("writer ends")
        .expect("writer");
    let out = timeout(HANG, reader)
        .await
        .expect("reader ends")
        .expect("reader");
    let (status, head) = check_http_response(&out, false);
    assert_eq!(status, 101);
    let text = String::from_utf8(out[..head].to_vec()).expect("UTF-8 head");
    let deflate = text.contains("Sec-WebSocket-Extensions");
    (text, parse_server_frames_with(&out[head..], deflate))
}

/// The messages the server echoed (inflated), and the code of its close
/// frame, if any. Checks what any server output must be.
fn replies(frames: &[ServerFrame], agreed: Agreed) -> (Vec<Message>, Option<u16>) {
    let mut inflater = Decompress::new(false);
    let mut echoed = Vec::new();
    let mut close = None;
    for f in frames {
        assert!(f.fin, "the server sends whole messages");
        assert!(close.is_none(), "a frame after the close frame");
        match f.opcode {
            0x1 | 0x2 => {
                // Threshold 0: compressed when that makes it smaller, so
                // either may come (RSV1 only when agreed: checked on parsing).
                let payload = if f.rsv1 {
                    // RFC 7692 (7.2.3.6): even an empty message compresses to
                    // a byte; an empty payload leaves an inflater that adds the
                    // tail inside a block header, lost for what follows.
                    assert!(!f.payload.is_empty(), "an empty compressed payload");
                    if agreed.server_resets {
                        inflater.reset(false);
                    }
                    inflate(&mut inflater, &f.payload)
                } else {
                    f.payload.clone()
                };
                echoed.push(if f.opcode == 0x1 {
                    Message::text(String::from_utf8(payload).expect("text echoes are UTF-8"))
                } else {
                    Message::binary(payload)
                });
            }
            0x8 => {
                assert!(!f.rsv1, "RSV1 on a close frame");
                let code = (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                if let Some(code) = code {
                    assert!(
                        (1000..5000).contains(&code) && !matches!(code, 1004..=1006 | 1015),
                        "close code {code} on the wire"
                    );
                }
                close = Some(code.unwrap_or(1005));
            }
            0x9 | 0xA => assert!(!f.rsv1, "RSV1 on a control frame"),
            other => panic!("opcode {other}"),
        }
    }
    (echoed, close)
}

fuzz_target!(|data: &[u8]| {
    let [size, settings, records @ ..] = data else {
        return;
    };
    let chunk = usize::from(*size) + 1;
    let offer = usize::from(settings & 0x07);
    let takeover = settings & 0x08 != 0;
    let lies = settings & 0x10 != 0;
    let level = Compression::new(u32::from(settings >> 5) + 1);
    let expected = expected_agreement(offer, takeover);
    // The client keeps its context when allowed to, or when it lies.
    let keeps = expected.deflate && (!expected.client_resets || lies);
    let mut client = Client {
        wire: Vec::new(),
        model: Model {
            deflate: expected.deflate,
            end: End::Open,
            messages: Vec::new(),
            fragments: None,
        },
        sender: Sender {
            level,
            bits: client_bits(offer),
            kept: keeps.then(|| Compress::new_with_window_bits(level, false, client_bits(offer))),
            server_forgets: expected.client_resets,
            history: false,
        },
    };
    let mut rest = records;
    while let [flags, len, tail @ ..] = rest {
        let (payload, after) = tail.split_at(usize::from(*len).min(tail.len()));
        client.record(*flags, payload);
        rest = after;
    }

    runtime().block_on(async {
        let echo = Echo::default();
        let transport = WsTransport::builder()
            .fallback(echo.clone())
            .deflate(Deflate::new().threshold(0).context_takeover(takeover))
            .build()
            .expect("valid transport");
        let config = Config::default()
            .max_frame_size(MAX_FRAME)
            .max_message_size(MAX_MESSAGE)
            .ping_interval(None)
            .idle_timeout(None);

        let (head, frames) = connect(&transport, &config, OFFERS[offer], &client.wire, chunk).await;
        let agreed = read_agreement(&head);
        assert_eq!(agreed, expected, "negotiation of {:?}", OFFERS[offer]);
        let (echoed, close) = replies(&frames, agreed);
        let seen = std::mem::take(&mut *echo.seen());
        assert_eq!(seen.opens, 1);
        assert_eq!(seen.closes.len(), 1, "{:?}", seen.closes);
        assert_eq!(echoed, seen.messages, "echo differs from what was received");
        let model = &client.model;
        let reason = &seen.closes[0];
        match model.end {
            End::Open | End::PeerClose | End::Close(_) => {
                assert_eq!(seen.messages, model.messages, "{:?}", model.end);
            }
            End::Unknown => assert!(
                seen.messages.starts_with(&model.messages),
                "before the unknown: {:?} then {:?}",
                model.messages,
                seen.messages
            ),
        }
        match (model.end, reason) {
            (End::Open, CloseReason::Peer(None)) => assert_eq!(close, None),
            (End::PeerClose, CloseReason::Peer(Some(_))) => {}
            (End::Close(code), CloseReason::Error(frame)) => {
                assert_eq!(frame.code.0, code, "{reason}");
                assert_eq!(close, Some(code), "close frame on the wire");
            }
            (End::Unknown, CloseReason::Error(frame)) => {
                assert!(
                    matches!(frame.code.0, 1002 | 1007 | 1009),
                    "unexpected close {reason}"
                );
                assert_eq!(close, Some(frame.code.0), "close frame on the wire");
            }
            (End::Unknown, CloseReason::Peer(_)) => {}
            (end, reason) => panic!("expected {end:?}, ended {reason}"),
        }

        // Another connection on the same transport: whatever the first did
        // (errors mid-inflate, final blocks, garbage), the shared streams
        // still compress and inflate correctly.
        let json = r#"{"probe":true,"text":"the same words, again and again"}"#.repeat(12);
        let binary: Vec<u8> = (0..900u32).map(|i| (i % 17 * 7) as u8).collect();
        let mut probe = Vec::new();
        for (opcode, plain) in [
            (0x81, json.as_bytes()),
            (0x82, &binary[..]),
            (0x81, json.as_bytes()),
        ] {
            let mut c = Compress::new(Compression::new(6), false);
            encode(&mut probe, opcode | 0x40, &deflate(&mut c, plain, false));
        }
        encode(&mut probe, 0x88, &1000u16.to_be_bytes());
        let (head, frames) = connect(&transport, &config, OFFERS[0], &probe, chunk).await;
        let agreed = read_agreement(&head);
        let (echoed, close) = replies(&frames, agreed);
        let seen = echo.seen();
        let want = [
            Message::text(json.clone()),
            Message::binary(binary.clone()),
            Message::text(json),
        ];
        assert_eq!(seen.messages, want, "the second connection's messages");
        assert_eq!(echoed, seen.messages, "the second connection's echoes");
        assert!(
            frames.iter().filter(|f| f.opcode < 8).all(|f| f.rsv1),
            "messages this compressible are echoed compressed"
        );
        assert_eq!(close, Some(1000));
        assert!(
            matches!(seen.closes[..], [CloseReason::Peer(Some(_))]),
            "{:?}",
            seen.closes
        );
    });
});
