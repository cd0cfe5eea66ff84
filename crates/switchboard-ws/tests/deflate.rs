//! permessage-deflate over real sockets: the handshake's answer, what goes
//! on the wire each way, a broadcast's frames, and the client against a
//! server that keeps its context.

mod support;

use std::io::Write;
use std::sync::Arc;

use flate2::Compression;
use flate2::write::{DeflateDecoder, DeflateEncoder};
use support::{
    Event, LIMIT, RawWs, Recorder, fast_config, raw_http, serve, start, status_of, upgrade_request,
};
use switchboard::ws::{Accept, Client, Deflate, Reject, WsTransport};
use switchboard::{BoxError, Connection, Hub, Message, MessageComponent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Compresses one message as a sender keeping no context does: a sync
/// flush, without the 4-byte tail.
fn compress(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("compress");
    encoder.flush().expect("sync flush");
    let mut out = encoder.get_ref().clone();
    assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates one message compressed without context.
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut decoder = DeflateDecoder::new(Vec::new());
    decoder.write_all(data).expect("inflate");
    decoder.write_all(&[0, 0, 0xFF, 0xFF]).expect("inflate");
    decoder.flush().expect("flush");
    decoder.get_ref().clone()
}

/// A JSON-ish text of `n` repetitions, well over the threshold.
fn json(n: usize) -> String {
    r#"{"user":"ann","text":"hello there","room":"lobby"}"#.repeat(n)
}

fn deflating(recorder: Recorder) -> WsTransport {
    WsTransport::builder()
        .fallback(recorder)
        .deflate(Deflate::new())
        .build()
        .expect("valid")
}

fn extensions_of(head: &str) -> Option<&str> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim())
    })
}

#[tokio::test]
async fn the_handshake_agrees_only_when_deflate_is_on_and_the_offer_is_valid() {
    let (plain, _events) = serve(WsTransport::new, fast_config()).await;
    let ws = RawWs::connect_with(plain.local_addr(), "/", OFFER).await;
    assert_eq!(extensions_of(&ws.head), None, "{}", ws.head);

    let (server, _events) = serve(deflating, fast_config()).await;
    let addr = server.local_addr();
    let ws = RawWs::connect_with(addr, "/", OFFER).await;
    assert_eq!(extensions_of(&ws.head), Some(AGREED), "{}", ws.head);
    // No offer, no extension.
    let ws = RawWs::connect_with(addr, "/", "").await;
    assert_eq!(extensions_of(&ws.head), None);
    // An offer we cannot honour is declined; the next one is taken.
    let eight = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n";
    let ws = RawWs::connect_with(addr, "/", eight).await;
    assert_eq!(extensions_of(&ws.head), None);
    let two = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8, \
               permessage-deflate; server_max_window_bits=10\r\n";
    let ws = RawWs::connect_with(addr, "/", two).await;
    let agreed = format!("{AGREED}; server_max_window_bits=10");
    assert_eq!(extensions_of(&ws.head), Some(agreed.as_str()));
    plain.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn compressed_messages_are_inflated_and_echoed_compressed() {
    let (server, mut events) = serve(deflating, fast_config()).await;
    let mut ws = RawWs::connect_with(server.local_addr(), "/", OFFER).await;
    assert!(matches!(events.next().await, Event::Open { .. }));

    // One frame, RSV1 set: the component sees the inflated text.
    let text = json(20);
    ws.send_raw_frame(0x80 | 0x40 | 0x1, &compress(text.as_bytes()))
        .await;
    assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some(&text)));
    let echo = ws.frame().await;
    assert!(echo.rsv1 && echo.opcode == 0x1);
    assert!(
        echo.payload.len() < text.len() / 5,
        "{}",
        echo.payload.len()
    );
    assert_eq!(inflate(&echo.payload), text.as_bytes());

    // Below the threshold, the echo goes as it is.
    ws.send_raw_frame(0x80 | 0x40 | 0x1, &compress(b"hi")).await;
    let echo = ws.frame().await;
    assert!(!echo.rsv1);
    assert_eq!(echo.payload, b"hi");

    // A compressed binary message in three fragments, RSV1 on the first.
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let compressed = compress(&binary);
    let third = compressed.len() / 3;
    ws.send_raw_frame(0x40 | 0x2, &compressed[..third]).await;
    ws.send_raw_frame(0x0, &compressed[third..2 * third]).await;
    ws.send_raw_frame(0x80, &compressed[2 * third..]).await;
    let echo = ws.frame().await;
    assert!(echo.rsv1 && echo.opcode == 0x2);
    assert_eq!(inflate(&echo.payload), binary);

    // Uncompressed messages still work on the same connection.
    ws.send_raw_frame(0x80 | 0x1, text.as_bytes()).await;
    assert_eq!(inflate(&ws.frame().await.payload), text.as_bytes());
    server.shutdown().await;
}

/// Joins every connection to one hub, says "joined" once it has, and
/// broadcasts every message to all.
struct Room {
    hub: Hub,
}

impl MessageComponent for Room {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        conn.send("joined")?;
        Ok(())
    }

    async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
        self.hub.broadcast(msg).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_broadcast_goes_to_every_compressing_member_as_the_same_bytes() {
    let transport = WsTransport::builder()
        .fallback(Room { hub: Hub::new() })
        .deflate(Deflate::new())
        .build()
        .expect("valid");
    let server = start(transport, fast_config()).await;
    let addr = server.local_addr();
    let mut compressing = Vec::new();
    for _ in 0..4 {
        compressing.push(RawWs::connect_with(addr, "/", OFFER).await);
    }
    let mut plain = RawWs::connect(addr, "/").await;
    for ws in compressing.iter_mut().chain([&mut plain]) {
        assert_eq!(ws.frame().await.payload, b"joined");
    }

    let text = json(30);
    plain.send_raw_frame(0x81, text.as_bytes()).await;
    let first = compressing[0].frame().await;
    assert!(first.rsv1);
    assert_eq!(inflate(&first.payload), text.as_bytes());
    for ws in &mut compressing[1..] {
        let frame = ws.frame().await;
        assert!(frame.rsv1);
        assert_eq!(frame.payload, first.payload);
    }
    // A member that did not agree gets the text as it is.
    let frame = plain.frame().await;
    assert!(!frame.rsv1);
    assert_eq!(frame.payload, text.as_bytes());
    server.shutdown().await;
}

#[tokio::test]
async fn our_client_and_server_agree_and_exchange_large_messages() {
    let (server, mut server_events) = serve(deflating, fast_config()).await;
    let (client_side, mut client_events) = Recorder::new();
    let url = format!("ws://{}/", server.local_addr());
    let client = Client::new(url)
        .config(fast_config())
        .deflate(Deflate::new())
        .connect(Arc::new(client_side))
        .await
        .expect("connects");
    assert!(matches!(client_events.next().await, Event::Open { .. }));
    assert!(matches!(server_events.next().await, Event::Open { .. }));
    let text = json(1000);
    client.send(text.as_str()).expect("queued");
    assert!(matches!(server_events.next().await, Event::Message(m) if m.as_text() == Some(&text)));
    // The server's recorder echoes; the client's records it.
    assert!(matches!(client_events.next().await, Event::Message(m) if m.as_text() == Some(&text)));
    client.close();
    server.shutdown().await;
}

/// What a hand-written server reads of the client's first frame.
struct FirstFrame {
    first_byte: u8,
    payload: Vec<u8>,
}

/// Answers one upgrade with `extensions`, sends `frames` (each a whole
/// unmasked frame), then reads the client's first frame.
async fn one_shot_server(
    extensions: &'static str,
    frames: Vec<Vec<u8>>,
) -> (String, tokio::task::JoinHandle<FirstFrame>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        support::answer_upgrade(&mut stream, Some(extensions)).await;
        for frame in frames {
            stream.write_all(&frame).await.expect("frame");
        }
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.expect("frame header");
        let len = match header[1] & 0x7F {
            126 => usize::from(stream.read_u16().await.expect("length")),
            127 => stream.read_u64().await.expect("length") as usize,
            n => usize::from(n),
        };
        let mut mask = [0u8; 4];
        stream.read_exact(&mut mask).await.expect("mask");
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("payload");
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        FirstFrame {
            first_byte: header[0],
            payload,
        }
    });
    (url, task)
}

/// An unmasked frame of `payload` (under 64 KiB) with first byte `first`.
fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first, 126];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn the_client_inflates_a_server_that_keeps_its_context_and_compresses_its_own() {
    // Two messages from one deflate stream: the second refers to the first.
    let text = json(10);
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    let mut frames = Vec::new();
    for _ in 0..2 {
        encoder.write_all(text.as_bytes()).expect("compress");
        encoder.flush().expect("sync flush");
        let mut bytes = std::mem::take(encoder.get_mut());
        bytes.truncate(bytes.len() - 4);
        frames.push(server_frame(0xC1, &bytes));
    }
    assert!(
        frames[1].len() < frames[0].len() / 2,
        "the second uses the context"
    );
    let (url, server) =
        one_shot_server("permessage-deflate; client_no_context_takeover", frames).await;

    let (recorder, mut events) = Recorder::silent();
    let client = Client::new(url)
        .config(fast_config())
        .deflate(Deflate::new())
        .connect(Arc::new(recorder))
        .await
        .expect("connects");
    assert!(matches!(events.next().await, Event::Open { .. }));
    for _ in 0..2 {
        assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some(&text)));
    }
    // What the client sends is compressed, masked, and inflates on its own.
    let big = json(100);
    client.send(big.as_str()).expect("queued");
    let first = timeout(LIMIT, server)
        .await
        .expect("in time")
        .expect("server");
    assert_eq!(first.first_byte, 0xC1);
    assert_eq!(inflate(&first.payload), big.as_bytes());
    client.close();
}

#[tokio::test]
async fn the_client_refuses_an_extension_it_did_not_offer() {
    for (offered, answer, says) in [
        (false, "permessage-deflate", "which was not offered"),
        (
            true,
            "permessage-deflate; client_max_window_bits=10",
            "client_max_window_bits",
        ),
        (true, "x-unknown", "an extension that was not offered"),
    ] {
        let (url, _server) = one_shot_server(answer, Vec::new()).await;
        let (recorder, _events) = Recorder::silent();
        let mut client = Client::new(url).config(fast_config());
        if offered {
            client = client.deflate(Deflate::new());
        }
        let err = client
            .connect(Arc::new(recorder))
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            err.starts_with("WebSocket handshake failed") && err.contains(says),
            "{answer}: {err}"
        );
    }
}

#[tokio::test]
async fn a_message_at_the_limit_passes_even_when_compression_made_it_larger() {
    let limit = 64 * 1024;
    let config = fast_config().max_message_size(limit).max_frame_size(limit);
    let (server, _events) = serve(deflating, config).await;
    let addr = server.local_addr();
    // Random bytes, compressed as stored blocks: a few bytes more than
    // the limit on the wire, exactly the limit once inflated.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..limit)
        .map(|_| {
            // xorshift64: bytes with nothing for deflate to find.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::none());
    encoder.write_all(&noise).expect("compress");
    encoder.flush().expect("sync flush");
    let mut stored = encoder.get_ref().clone();
    stored.truncate(stored.len() - 4);
    assert!(stored.len() > limit);

    let mut ws = RawWs::connect_with(addr, "/", OFFER).await;
    ws.send_raw_frame(0x80 | 0x40 | 0x2, &stored).await;
    let echo = ws.frame().await;
    // It does not shrink, so the echo goes as it is.
    assert!(!echo.rsv1);
    assert_eq!(echo.payload, noise);

    // Uncompressed, one byte over is still too large.
    let mut ws = RawWs::connect_with(addr, "/", OFFER).await;
    ws.send_raw_frame(0x82, &vec![0; limit + 1]).await;
    assert_eq!(ws.close_code().await, Some(1009));
    // And one byte over once inflated is too.
    let mut ws = RawWs::connect_with(addr, "/", OFFER).await;
    ws.send_raw_frame(0xC2, &compress(&vec![7; limit + 1]))
        .await;
    assert_eq!(ws.close_code().await, Some(1009));
    server.shutdown().await;
}

/// An echo whose first `on_close` says it started, then waits until told.
struct SlowClose {
    closing: tokio::sync::mpsc::UnboundedSender<()>,
    finish: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl MessageComponent for SlowClose {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }

    async fn on_close(&self, _conn: &Connection, _reason: switchboard::CloseReason) {
        let _ = self.closing.send(());
        let finish = self.finish.lock().expect("not poisoned").take();
        if let Some(finish) = finish {
            let _ = finish.await;
        }
    }
}

#[tokio::test]
async fn context_takeover_is_agreed_with_at_most_the_cap_and_a_closed_one_makes_room() {
    const KEEP: &str = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    // The hook refuses `/deny`, and holds `/slow` until told, saying when
    // it started judging it.
    let (judging, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (closing, mut on_close) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let (finish, finished) = tokio::sync::oneshot::channel();
    let hold = release.clone();
    let transport = WsTransport::builder()
        .fallback(SlowClose {
            closing,
            finish: std::sync::Mutex::new(Some(finished)),
        })
        .deflate(
            Deflate::new()
                .context_takeover(true)
                .max_context_takeover(1),
        )
        .on_handshake(move |req| {
            let (judging, hold) = (judging.clone(), hold.clone());
            async move {
                match req.path() {
                    "/deny" => Err(Reject::forbidden()),
                    "/slow" => {
                        judging.send(()).expect("the test waits");
                        hold.notified().await;
                        Ok(Accept::new())
                    }
                    _ => Ok(Accept::new()),
                }
            }
        })
        .build()
        .expect("valid");
    let server = start(transport, fast_config()).await;
    let addr = server.local_addr();

    // Requests the hook refuses, or is still judging, hold no place.
    let denied = raw_http(addr, upgrade_request(addr, "/deny", KEEP).as_bytes()).await;
    assert_eq!(status_of(&denied), 403, "{denied}");
    let slow = tokio::spawn(async move { RawWs::connect_with(addr, "/slow", KEEP).await });
    started.recv().await.expect("the hook judges /slow");
    let mut first = RawWs::connect_with(addr, "/", KEEP).await;
    assert_eq!(extensions_of(&first.head), Some("permessage-deflate"));

    // The one place is taken: the next connection (the one the hook let
    // through) is answered without context, and still gets its messages
    // compressed.
    release.notify_one();
    let mut second = timeout(LIMIT, slow)
        .await
        .expect("in time")
        .expect("no panic");
    assert_eq!(extensions_of(&second.head), Some(AGREED), "{}", second.head);
    let text = json(20);
    second
        .send_raw_frame(0x80 | 0x40 | 0x1, &compress(text.as_bytes()))
        .await;
    let echo = second.frame().await;
    assert!(echo.rsv1);
    assert_eq!(inflate(&echo.payload), text.as_bytes());

    // The first one closes: its place is back once the close is done,
    // while its `on_close` still runs.
    first.send_frame(0x8, true, &1000u16.to_be_bytes()).await;
    assert_eq!(first.close_code().await, Some(1000));
    timeout(LIMIT, on_close.recv())
        .await
        .expect("on_close in time");
    let third = RawWs::connect_with(addr, "/", KEEP).await;
    assert_eq!(extensions_of(&third.head), Some("permessage-deflate"));
    finish.send(()).expect("on_close waits");
    drop((second, third));
    server.shutdown().await;
}
