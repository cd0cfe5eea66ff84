//! Messages and closes over real sockets: echo, limits (1009, 1007, 1002),
//! keepalive and the idle timeout, close codes in both directions.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{Event, LIMIT, RawWs, client, fast_config, masked_frame, next, serve, serve_raw};
use switchboard::ws::WsTransport;
use switchboard::{CloseCode, CloseFrame, CloseReason, Message};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

fn close_code(msg: Option<WsMessage>) -> Option<u16> {
    match msg {
        Some(WsMessage::Close(Some(frame))) => Some(frame.code.into()),
        _ => None,
    }
}

#[tokio::test]
async fn echoes_text_as_text_and_binary_as_binary() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let mut ws = client(server.local_addr()).await;

    ws.send(WsMessage::text("héllo")).await.expect("send");
    ws.send(WsMessage::binary(vec![0u8, 159, 146, 150]))
        .await
        .expect("send");
    let big = "x".repeat(100_000);
    ws.send(WsMessage::text(big.clone())).await.expect("send");
    assert_eq!(next(&mut ws).await, Some(WsMessage::text("héllo")));
    assert_eq!(
        next(&mut ws).await,
        Some(WsMessage::binary(vec![0u8, 159, 146, 150]))
    );
    assert_eq!(next(&mut ws).await, Some(WsMessage::text(big)));

    assert!(matches!(events.next().await, Event::Open { .. }));
    assert!(matches!(events.next().await, Event::Message(Message::Text(t)) if t == "héllo"));
    assert!(
        matches!(events.next().await, Event::Message(Message::Binary(b)) if b[..] == [0, 159, 146, 150])
    );
    server.shutdown().await;
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    // "hello" is the message limit itself; the ping between its fragments
    // is not part of the message and does not count toward it.
    let (server, mut events, mut ws) = serve_raw(fast_config().max_message_size(5)).await;
    ws.send_frame(0x1, false, b"hel").await;
    ws.send_frame(0x9, true, b"ping in between").await;
    ws.send_frame(0x0, true, b"lo").await;
    let pong = ws.frame().await;
    assert_eq!(
        (pong.opcode, &pong.payload[..]),
        (0xA, &b"ping in between"[..])
    );
    let echo = ws.frame().await;
    assert_eq!((echo.opcode, &echo.payload[..]), (0x1, &b"hello"[..]));
    assert!(matches!(events.next().await, Event::Open { .. }));
    assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some("hello")));
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_message_is_closed_with_1009() {
    let config = fast_config().max_message_size(1024).max_frame_size(1024);
    let (server, mut events) = serve(WsTransport::new, config).await;
    let mut ws = client(server.local_addr()).await;

    ws.send(WsMessage::binary(vec![7u8; 1024]))
        .await
        .expect("send");
    assert_eq!(
        next(&mut ws).await,
        Some(WsMessage::binary(vec![7u8; 1024])),
        "the limit itself is allowed"
    );
    ws.send(WsMessage::binary(vec![7u8; 1025]))
        .await
        .expect("send");
    assert_eq!(close_code(next(&mut ws).await), Some(1009));
    assert_eq!(events.closed().await.code(), Some(CloseCode::SIZE));
    server.shutdown().await;
}

/// Each fault closes its connection with the code that names it, after
/// `on_error` heard of it.
#[tokio::test]
async fn faults_are_closed_with_1009_1007_and_1002() {
    let config = fast_config().max_message_size(1000).max_frame_size(600);
    let (server, mut events) = serve(WsTransport::new, config).await;
    let cases = [
        // Two frames under the frame limit whose sum is over the message limit.
        (
            [
                masked_frame(0x2, false, &[1; 600]),
                masked_frame(0x0, true, &[1; 600]),
            ]
            .concat(),
            1009,
        ),
        (masked_frame(0x1, true, b"ok \xff\xfe not utf-8"), 1007),
        // Invalid in the first fragment: closed although the message never ends.
        (masked_frame(0x1, false, b"ok \xFF"), 1007),
        // An unknown opcode.
        (masked_frame(0x3, true, b"?"), 1002),
        // An unmasked frame from a client.
        (vec![0x81, 0x02, b'h', b'i'], 1002),
    ];
    for (bytes, code) in cases {
        let mut ws = RawWs::connect(server.local_addr(), "/").await;
        ws.stream.write_all(&bytes).await.expect("write");
        assert_eq!(ws.close_code().await, Some(code));
        assert!(matches!(events.next().await, Event::Open { .. }));
        let said = format!("close {code}");
        assert!(matches!(events.next().await, Event::Error(e) if e.contains(&said)));
        assert!(matches!(events.closed().await, CloseReason::Error(f) if f.code.0 == code));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn silent_peer_is_closed_after_the_idle_timeout() {
    let ping = Duration::from_millis(150);
    let idle = Duration::from_millis(500);
    let config = fast_config()
        .ping_interval(Some(ping))
        .idle_timeout(Some(idle))
        .close_timeout(Duration::from_millis(300));
    // A raw client answers nothing, not even the pings.
    let (server, mut events, mut ws) = serve_raw(config).await;
    let started = Instant::now();
    let mut pings = 0;
    let close = loop {
        let frame = ws.frame().await;
        match frame.opcode {
            0x9 => pings += 1,
            0x8 => break frame,
            other => panic!("unexpected opcode {other}"),
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(close.close_code(), Some(1001));
    assert!(pings >= 2, "pings before the timeout: {pings}");
    assert!(
        elapsed >= idle - Duration::from_millis(50),
        "closed too early: {elapsed:?}"
    );
    assert!(elapsed < idle * 4, "closed too late: {elapsed:?}");
    assert!(matches!(events.closed().await, CloseReason::IdleTimeout));
    // The server then hangs up (its close_timeout bounds the wait for our reply).
    assert!(
        timeout(LIMIT, ws.read_frame())
            .await
            .expect("EOF in time")
            .is_none()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn peer_answering_pings_stays_open_past_the_idle_timeout() {
    // Generous against a loaded machine: a pong is due every 100 ms, the
    // server gives up only after 800 ms without one.
    let idle = Duration::from_millis(800);
    let config = fast_config()
        .ping_interval(Some(Duration::from_millis(100)))
        .idle_timeout(Some(idle));
    let (server, mut events) = serve(WsTransport::new, config).await;
    let mut ws = client(server.local_addr()).await;
    // The client reads (and so answers pings) for two idle timeouts.
    let deadline = tokio::time::Instant::now() + idle * 2;
    let mut pings = 0;
    while let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            other => panic!("connection should stay open, got {other:?}"),
        }
    }
    assert!(pings >= 3, "pings: {pings}");
    ws.send(WsMessage::text("still here")).await.expect("send");
    assert_eq!(next(&mut ws).await, Some(WsMessage::text("still here")));
    assert!(matches!(events.next().await, Event::Open { .. }));
    assert!(matches!(events.next().await, Event::Message(_)));
    assert!(events.try_next().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn on_close_sees_the_peers_close_code() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let mut ws = client(server.local_addr()).await;
    ws.close(Some(WsCloseFrame {
        code: WsCloseCode::from(4001),
        reason: "bye now".into(),
    }))
    .await
    .expect("close");
    // The server answers with the same code, then hangs up.
    assert_eq!(close_code(next(&mut ws).await), Some(4001));
    assert!(next(&mut ws).await.is_none());
    assert_eq!(
        events.closed().await,
        CloseReason::Peer(Some(CloseFrame::new(CloseCode(4001), "bye now")))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn peer_vanishing_without_a_close_frame_is_a_plain_close() {
    let (server, mut events, ws) = serve_raw(fast_config()).await;
    assert!(matches!(events.next().await, Event::Open { .. }));
    drop(ws);
    assert_eq!(events.closed().await, CloseReason::Peer(None));
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_with_1001() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let mut ws = client(server.local_addr()).await;
    assert!(matches!(events.next().await, Event::Open { .. }));
    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    assert_eq!(close_code(next(&mut ws).await), Some(1001));
    // Our reply completes the closing handshake; shutdown then finishes.
    assert!(next(&mut ws).await.is_none());
    timeout(LIMIT, shutdown)
        .await
        .expect("shutdown in time")
        .expect("no panic");
    assert_eq!(events.closed().await, CloseReason::Shutdown);
}

#[tokio::test]
async fn utf8_split_across_fragments_is_whole() {
    // "é" is 0xC3 0xA9: one byte in each fragment.
    let (server, mut events, mut ws) = serve_raw(fast_config()).await;
    ws.send_frame(0x1, false, b"caf\xC3").await;
    ws.send_frame(0x0, true, b"\xA9").await;
    let echo = ws.frame().await;
    assert_eq!((echo.opcode, &echo.payload[..]), (0x1, "café".as_bytes()));
    assert!(matches!(events.next().await, Event::Open { .. }));
    assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some("café")));
    server.shutdown().await;
}

#[tokio::test]
async fn the_latest_of_many_pings_is_answered() {
    let (server, _events, mut ws) = serve_raw(fast_config()).await;
    for i in 0..1000u32 {
        ws.send_frame(0x9, true, &i.to_be_bytes()).await;
    }
    ws.send_frame(0x1, true, b"after the pings").await;
    // Pongs come back for some of the pings, in order, and the last one
    // answers the last ping; then the echo.
    let mut last = None;
    loop {
        let frame = ws.frame().await;
        match frame.opcode {
            0xA => {
                let n = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                assert!(last.is_none_or(|l| n > l), "pongs out of order");
                last = Some(n);
            }
            0x1 => {
                assert_eq!(&frame.payload[..], b"after the pings");
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    // The echo may overtake the last pong by one batch: read on until it.
    while last != Some(999) {
        let frame = ws.frame().await;
        assert_eq!(frame.opcode, 0xA);
        last = Some(u32::from_be_bytes(frame.payload[..4].try_into().unwrap()));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn large_and_small_messages_keep_their_order_both_ways() {
    let (server, _events) = serve(WsTransport::new, fast_config()).await;
    let mut ws = client(server.local_addr()).await;
    let sizes = [10usize, 70_000, 3, 5_000, 200_000, 1, 4_096, 4_097, 65_536];
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i + j) as u8).collect())
        .collect();
    for msg in &messages {
        ws.feed(WsMessage::binary(msg.clone())).await.expect("send");
    }
    ws.flush().await.expect("flush");
    for msg in messages {
        assert_eq!(next(&mut ws).await, Some(WsMessage::binary(msg)));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn replies_reach_a_peer_that_half_closed_after_its_message() {
    let (server, _events, mut ws) = serve_raw(fast_config()).await;
    ws.send_frame(0x1, true, b"last words").await;
    // The end of our stream, without a close frame; our read half stays open.
    ws.stream.shutdown().await.expect("shutdown");
    let echo = ws.frame().await;
    assert_eq!((echo.opcode, &echo.payload[..]), (0x1, &b"last words"[..]));
    server.shutdown().await;
}
