//! permessage-deflate against hostile peers, over real sockets: inflate
//! bombs (one frame, and many fragments) against the default message limit
//! and the 16 MiB one of the echo example, data that does not inflate,
//! RSV1 where RFC 7692 allows none, valid compressed messages on other
//! connections afterwards, and many connections asking for context
//! takeover against its cap.
//!
//! The server runs in a child process (this test binary again, as
//! `deflate_child`) whose live and peak heap the counting allocator below
//! reports, so that what one attack costs is measured in the process that
//! pays for it. The client is a raw socket: the handshake by hand, every
//! frame built here. Figures print as `FIGURE` lines (`--nocapture`);
//! docs/reliability.md has them.
#![cfg(feature = "ws")]
#![allow(clippy::unwrap_used)]

mod reliability;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Instant;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use switchboard::ws::{Deflate, WsTransport};
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use reliability::{read_tagged, within};

/// Counts live heap bytes and the most ever live (`max_allocated`), over
/// the allocator of the test servers.
#[global_allocator]
static HEAP: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// Carries the child's message limit.
const CHILD_ENV: &str = "SWITCHBOARD_DEFLATE_CHILD";
/// Carries the child's `max_context_takeover`, when it allows context
/// takeover.
const CHILD_TAKEOVER_ENV: &str = "SWITCHBOARD_DEFLATE_CHILD_TAKEOVER";

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// What a sync flush ends with, left off the wire (RFC 7692, 7.2.1).
const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];

const OFFER: &str = "permessage-deflate; client_no_context_takeover";

fn figure(test: &str, text: impl std::fmt::Display) {
    println!("FIGURE {test}: {text}");
}

// ---- The server -------------------------------------------------------------

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

/// The server half of every test here, in a child process: an echo with
/// permessage-deflate (`Deflate::new()`) under the default `Config`, or,
/// for a larger message limit, the settings of the echo example
/// (`--max-message-size`); with context takeover allowed up to a cap, when
/// the test asks. Answers `heap` on stdin with the live and the peak heap
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the deflate tests"]
async fn deflate_child() {
    let Some(max) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let max: usize = max.to_str().unwrap().parse().unwrap();
    let config = if max == Config::default().max_message_size {
        Config::default()
    } else {
        Config::default()
            .max_message_size(max)
            .max_frame_size(max)
            .queue_max_bytes(max.max(MIB) * 2)
    };
    let deflate = match std::env::var(CHILD_TAKEOVER_ENV) {
        Ok(cap) => Deflate::new()
            .context_takeover(true)
            .max_context_takeover(cap.parse().unwrap()),
        Err(_) => Deflate::new(),
    };
    let ws = WsTransport::builder()
        .fallback(Echo)
        .deflate(deflate)
        .build()
        .unwrap();
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0", ws)
        .start()
        .await
        .unwrap();
    println!("READY {}", server.local_addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(cmd)) = lines.next_line().await {
        match cmd.as_str() {
            "heap" => println!("HEAP {} {}", HEAP.allocated(), HEAP.max_allocated()),
            other => panic!("unknown command {other:?}"),
        }
    }
    server.shutdown().await;
}

/// Live and peak heap bytes of the child.
#[derive(Clone, Copy, Debug)]
struct Heap {
    live: usize,
    peak: usize,
}

/// The deflate echo server in a child process.
struct ChildServer {
    _child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
}

impl ChildServer {
    async fn start(max_message: usize) -> ChildServer {
        Self::start_with(max_message, None).await
    }

    /// With `takeover`, the server allows context takeover on at most that
    /// many connections at once.
    async fn start_with(max_message: usize, takeover: Option<usize>) -> ChildServer {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "deflate_child", "--ignored", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, max_message.to_string());
        if let Some(cap) = takeover {
            command.env(CHILD_TAKEOVER_ENV, cap.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = read_tagged(&mut out, "READY ")
            .await
            .trim()
            .parse()
            .unwrap();
        ChildServer {
            _child: child,
            stdin,
            out,
            addr,
        }
    }

    async fn heap(&mut self) -> Heap {
        self.stdin.write_all(b"heap\n").await.unwrap();
        self.stdin.flush().await.unwrap();
        let line = read_tagged(&mut self.out, "HEAP ").await;
        let (live, peak) = line.trim().split_once(' ').unwrap();
        Heap {
            live: live.parse().unwrap(),
            peak: peak.parse().unwrap(),
        }
    }
}

// ---- Deflate ----------------------------------------------------------------

/// One message compressed on its own: a sync flush without its tail.
fn compress(plain: &[u8], level: u32) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(plain.len() / 2 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let used = c.total_in() as usize;
        c.compress_vec(&plain[used..], &mut out, FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// `zeros` zero bytes compressed as one message at level 9, without
/// holding them: about 1/1032 of their size.
fn bomb(zeros: usize) -> Vec<u8> {
    let chunk = vec![0u8; MIB];
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(zeros / 1000 + 64);
    let mut left = zeros;
    while left > 0 {
        let n = left.min(MIB);
        let start = c.total_in();
        while ((c.total_in() - start) as usize) < n {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let used = (c.total_in() - start) as usize;
            c.compress_vec(&chunk[used..n], &mut out, FlushCompress::None)
                .unwrap();
        }
        left -= n;
    }
    loop {
        out.reserve(64);
        c.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
        if out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// Inflates one message (and the tail) as a peer must; `None` if the data
/// does not inflate. With `count_only`, counts the bytes without keeping
/// them (the `Vec` stays empty).
fn inflate(data: &[u8], count_only: bool) -> Option<(usize, Vec<u8>)> {
    let mut d = Decompress::new(false);
    let mut out = Vec::new();
    let mut scratch = vec![0u8; MIB];
    for input in [data, &TAIL[..]] {
        let start = d.total_in();
        loop {
            let used = (d.total_in() - start) as usize;
            let before = d.total_out();
            let status = d
                .decompress(&input[used..], &mut scratch, FlushDecompress::Sync)
                .ok()?;
            let produced = (d.total_out() - before) as usize;
            if !count_only {
                out.extend_from_slice(&scratch[..produced]);
            }
            if status == Status::StreamEnd {
                return Some((d.total_out() as usize, out));
            }
            // Room left over: all this input could give is out.
            if produced < scratch.len() {
                break;
            }
        }
    }
    Some((d.total_out() as usize, out))
}

// ---- The client -------------------------------------------------------------

/// What the client read.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
    Eof,
}

/// A WebSocket client over a raw socket, for tests that control every byte.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` of the `101`.
    extensions: Option<String>,
}

impl Peer {
    /// Connects and upgrades, offering `offer` as `Sec-WebSocket-Extensions`.
    async fn connect(addr: SocketAddr, offer: Option<&str>) -> Peer {
        let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = within("101", async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end + 4;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed during the handshake");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        Peer {
            stream,
            buf,
            extensions,
        }
    }

    /// Connects offering permessage-deflate; checks what was agreed.
    async fn deflate(addr: SocketAddr) -> Peer {
        let peer = Peer::connect(addr, Some(OFFER)).await;
        assert_eq!(
            peer.extensions.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        peer
    }

    /// Sends one masked frame whose first byte is `first` (FIN, RSV bits,
    /// opcode as on the wire).
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(first);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        within("send", self.stream.write_all(&frame)).await.unwrap();
    }

    /// The next frame: first byte and payload; `None` at the end of the
    /// stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        within("frame", async {
            loop {
                if let Some((first, payload, used)) = parse_frame(&self.buf) {
                    self.buf.drain(..used);
                    return Some((first, payload));
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    /// The next message (inflated if compressed) or close.
    async fn next(&mut self) -> Got {
        self.next_rsv1().await.0
    }

    /// The next message (inflated if compressed) or close, and whether it
    /// came compressed.
    async fn next_rsv1(&mut self) -> (Got, bool) {
        loop {
            let Some((first, payload)) = self.frame().await else {
                return (Got::Eof, false);
            };
            assert_ne!(first & 0x80, 0, "the server sends whole messages");
            let compressed = first & 0x40 != 0;
            let payload = if compressed {
                assert!(self.extensions.is_some(), "RSV1 without permessage-deflate");
                inflate(&payload, false)
                    .expect("the server's data inflates")
                    .1
            } else {
                payload
            };
            let got = match first & 0x0F {
                0x1 => Got::Text(String::from_utf8(payload).unwrap()),
                0x2 => Got::Binary(payload),
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    Got::Close(code)
                }
                _ => continue,
            };
            return (got, compressed);
        }
    }

    /// Reads until the server's close frame and returns its code; fails
    /// on a message or the end of the stream first.
    async fn closed(&mut self) -> Option<u16> {
        match self.next().await {
            Got::Close(code) => code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Parses one server frame: (first byte, payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let first = *buf.first()?;
    let second = *buf.get(1)?;
    assert_eq!(second & 0x80, 0, "the server masked a frame");
    let (len, pos) = match second & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(pos..pos + len)?.to_vec();
    Some((first, payload, pos + len))
}

/// On a new connection to `addr`: compressed messages (text and binary,
/// small and large) come back whole, compressed from 256 bytes on
/// (`Deflate::new()`'s threshold), and the connection closes cleanly.
async fn valid_messages_still_work(addr: SocketAddr) {
    let mut peer = Peer::deflate(addr).await;
    let text = r#"{"user":"ann","room":"lobby","text":"still here"}"#.repeat(60);
    let binary: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8)
        .collect();
    // The echoes come compressed too: the server's compressors work.
    peer.send(0xC1, &compress(text.as_bytes(), 6)).await;
    assert_eq!(peer.next_rsv1().await, (Got::Text(text.clone()), true));
    peer.send(0xC2, &compress(&binary, 1)).await;
    assert_eq!(peer.next_rsv1().await, (Got::Binary(binary), true));
    // Uncompressed still allowed; a short one comes back uncompressed.
    peer.send(0x81, b"plain").await;
    let (first, payload) = peer.frame().await.unwrap();
    assert_eq!((first, payload.as_slice()), (0x81, &b"plain"[..]));
    // A fragmented compressed message.
    let data = compress(text.as_bytes(), 9);
    let (a, b) = data.split_at(data.len() / 2);
    peer.send(0x41, a).await;
    peer.send(0x80, b).await;
    assert_eq!(peer.next().await, Got::Text(text));
    peer.send(0x88, &1000u16.to_be_bytes()).await;
    assert_eq!(peer.closed().await, Some(1000));
}

// ---- Tests -------------------------------------------------------------------

/// One frame of about 64 KiB inflating to 64 MiB of zeros against a
/// server whose limit is `max_message`: it must close with 1009 having
/// inflated no further than the limit, its peak heap growing by less than
/// `bound`. Then another connection's messages must still work.
async fn bomb_is_refused(test: &str, max_message: usize, bound: usize) {
    let bomb = bomb(64 * MIB);
    assert!(bomb.len() < 80 * KIB, "{} bytes", bomb.len());
    // The bomb is real: what a peer without a limit would hold.
    assert_eq!(inflate(&bomb, true).unwrap().0, 64 * MIB);

    let mut server = ChildServer::start(max_message).await;
    let mut peer = Peer::deflate(server.addr).await;
    let before = server.heap().await;
    let started = Instant::now();
    peer.send(0xC2, &bomb).await;
    assert_eq!(peer.closed().await, Some(1009));
    let took = started.elapsed();
    let after = server.heap().await;
    let growth = after.peak - before.live;

    assert!(
        growth < bound,
        "peak heap grew by {growth} bytes, bound {bound} (live before {}, peak before {})",
        before.live,
        before.peak
    );
    // Inflation went up to the limit (so the counter saw it) and no
    // further: the peak before the bomb cannot account for it.
    assert!(
        growth > max_message && before.peak < before.live + max_message,
        "peak growth {growth} not past the limit {max_message}: {before:?} {after:?}"
    );
    valid_messages_still_work(server.addr).await;
    figure(
        test,
        format_args!(
            "max_message_size {} MiB: one {} B frame inflating to 64 MiB of zeros, closed 1009 in {took:.1?}; \
             server heap {} KiB live before, peak growth {} KiB (bound {} KiB)",
            max_message / MIB,
            bomb.len(),
            before.live / KIB,
            growth / KIB,
            bound / KIB
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_is_refused_at_the_default_limit_with_bounded_memory() {
    bomb_is_refused(
        "deflate_bomb_1mib",
        Config::default().max_message_size,
        4 * MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_is_refused_at_a_16_mib_limit_with_bounded_memory() {
    bomb_is_refused("deflate_bomb_16mib", 16 * MIB, 24 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_in_many_fragments_is_refused_once_inflated_past_the_limit() {
    let max_message = Config::default().max_message_size;
    let bomb = bomb(64 * MIB);
    // Each fragment, and all of them together, well within the limit:
    // only inflating can exceed it.
    let fragments: Vec<&[u8]> = bomb.chunks(1000).collect();
    assert!(fragments.len() > 50 && bomb.len() < max_message / 8);

    let mut server = ChildServer::start(max_message).await;
    let mut peer = Peer::deflate(server.addr).await;
    let before = server.heap().await;
    let last = fragments.len() - 1;
    for (i, fragment) in fragments.iter().enumerate() {
        let first = match i {
            0 => 0x42,
            _ if i == last => 0x80,
            _ => 0x00,
        };
        peer.send(first, fragment).await;
    }
    assert_eq!(peer.closed().await, Some(1009));
    let after = server.heap().await;
    let growth = after.peak - before.live;
    assert!(
        growth < 4 * MIB,
        "peak heap grew by {growth} bytes: {before:?} {after:?}"
    );
    valid_messages_still_work(server.addr).await;
    figure(
        "deflate_bomb_fragments",
        format_args!(
            "max_message_size 1 MiB: {} fragments of at most 1000 B ({} B) inflating to 64 MiB, closed 1009; \
             server peak heap growth {} KiB (bound 4096 KiB)",
            fragments.len(),
            bomb.len(),
            growth / KIB
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_does_not_inflate_is_1007_and_misplaced_rsv1_is_1002() {
    let server = ChildServer::start(Config::default().max_message_size).await;
    let addr = server.addr;
    let hello = compress(b"hello", 6);

    // A block of the reserved type 3 (BFINAL, BTYPE=11): not deflate data.
    let mut peer = Peer::deflate(addr).await;
    peer.send(0xC2, &[0xFF; 16]).await;
    assert_eq!(peer.closed().await, Some(1007));
    valid_messages_still_work(addr).await;

    // Valid data that refers back past the start of its message: from a
    // client that keeps its context after agreeing not to, or one hoping
    // to read what a pooled inflater held before (another connection's
    // message). Neither inflates.
    let secret = "the words of another connection";
    let mut c = Compress::new(Compression::new(6), false);
    let mut with_context = |plain: &str| {
        let mut out = Vec::with_capacity(256);
        c.compress_vec(plain.as_bytes(), &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    };
    let (first, second) = (with_context(secret), with_context(secret));
    let mut a = Peer::deflate(addr).await;
    a.send(0xC1, &first).await;
    assert_eq!(a.next().await, Got::Text(secret.into()));
    let mut b = Peer::deflate(addr).await;
    b.send(0xC1, &second).await;
    assert_eq!(b.closed().await, Some(1007));
    a.send(0xC1, &second).await;
    assert_eq!(a.closed().await, Some(1007));

    // Compressed text that is not UTF-8 once inflated.
    let mut peer = Peer::deflate(addr).await;
    peer.send(0xC1, &compress(b"caf\xC3", 6)).await;
    assert_eq!(peer.closed().await, Some(1007));

    // RSV1 on a connection that did not agree to permessage-deflate.
    let mut peer = Peer::connect(addr, None).await;
    assert_eq!(peer.extensions, None);
    peer.send(0xC1, &hello).await;
    assert_eq!(peer.closed().await, Some(1002));
    // Nor when the only offer was declined (a 256-byte window).
    let mut peer = Peer::connect(addr, Some("permessage-deflate; server_max_window_bits=8")).await;
    assert_eq!(peer.extensions, None);
    peer.send(0xC1, &hello).await;
    assert_eq!(peer.closed().await, Some(1002));

    // RSV1 on a continuation (of a compressed message, and of a plain one).
    let (a, b) = hello.split_at(2);
    let mut peer = Peer::deflate(addr).await;
    peer.send(0x41, a).await;
    peer.send(0xC0, b).await;
    assert_eq!(peer.closed().await, Some(1002));
    let mut peer = Peer::deflate(addr).await;
    peer.send(0x01, b"hel").await;
    peer.send(0xC0, b"lo").await;
    assert_eq!(peer.closed().await, Some(1002));

    // RSV1 on control frames: ping, pong, close.
    for first in [0xC9, 0xCA, 0xC8] {
        let mut peer = Peer::deflate(addr).await;
        let payload: &[u8] = if first == 0xC8 { &[0x03, 0xE8] } else { b"x" };
        peer.send(first, payload).await;
        assert_eq!(peer.closed().await, Some(1002), "first byte {first:#x}");
    }
    // RSV2 and RSV3 stay reserved.
    for first in [0xA1, 0x91] {
        let mut peer = Peer::deflate(addr).await;
        peer.send(first, b"x").await;
        assert_eq!(peer.closed().await, Some(1002), "first byte {first:#x}");
    }

    // After all of these, the transport's shared streams are still clean.
    valid_messages_still_work(addr).await;
}

/// Connections that all ask for context takeover, against a server that
/// allows it on at most `CAP` at once: only `CAP` are agreed to, and after
/// every connection exchanged a compressed message (so that each one with
/// context holds both its streams), the server's heap holds no more than
/// the cap's share of streams. Without the cap, 40 connections would hold
/// about 40 × 420 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_asking_for_context_hold_no_more_streams_than_the_cap() {
    const CAP: usize = 4;
    const CONNS: usize = 40;
    const WITHOUT: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let mut server = ChildServer::start_with(Config::default().max_message_size, Some(CAP)).await;
    let before = server.heap().await;
    let text = r#"{"user":"ann","room":"lobby","text":"hello there"}"#.repeat(40);
    let mut peers = Vec::new();
    let mut with_context = 0;
    for _ in 0..CONNS {
        let mut peer = Peer::connect(server.addr, Some("permessage-deflate")).await;
        match peer.extensions.as_deref() {
            Some("permessage-deflate") => with_context += 1,
            Some(WITHOUT) => {}
            other => panic!("unexpected agreement {other:?}"),
        }
        peer.send(0xC1, &compress(text.as_bytes(), 6)).await;
        assert_eq!(peer.next_rsv1().await, (Got::Text(text.clone()), true));
        peers.push(peer);
    }
    assert_eq!(with_context, CAP);
    let after = server.heap().await;
    let growth = after.live.saturating_sub(before.live);
    // A connection with context: a compressor (371 KiB) and an inflater
    // (46 KiB). Room for the cap's, the pooled pair the others share, and
    // each connection's own state and buffers.
    let bound = (CAP + 1) * 420 * KIB + CONNS * 16 * KIB;
    assert!(
        growth < bound,
        "live heap grew by {growth} bytes with {CONNS} connections, bound {bound}"
    );
    figure(
        "deflate_context_cap",
        format_args!(
            "{CONNS} connections asking for context takeover, cap {CAP}: {with_context} agreed to; \
             live heap growth {} KiB after one compressed message each (bound {} KiB)",
            growth / KIB,
            bound / KIB
        ),
    );
    for mut peer in peers {
        peer.send(0x88, &1000u16.to_be_bytes()).await;
        assert_eq!(peer.closed().await, Some(1000));
    }
}
