//! The client: a component on the client side of a real connection.

mod support;

use std::sync::Arc;

use support::{Event, LIMIT, Recorder, fast_config, serve, start};
use switchboard::ws::{self, WsTransport};
use switchboard::{CloseCode, CloseReason};
use tokio::time::timeout;

#[tokio::test]
async fn client_component_talks_to_a_server() {
    let (server_side, mut server_events) = Recorder::named("srv");
    let transport = WsTransport::builder()
        .route("/chat", server_side)
        .subprotocols(["chat.v1"])
        .build()
        .expect("valid");
    let server = start(transport, fast_config()).await;

    let (client_side, mut client_events) = Recorder::new();
    let url = format!("ws://{}/chat?room=1", server.local_addr());
    let client = ws::connect_with(
        &url,
        &[("Sec-WebSocket-Protocol", "chat.v1")],
        Arc::new(client_side),
        fast_config(),
    )
    .await
    .expect("connects");

    match client_events.next().await {
        Event::Open {
            path, subprotocol, ..
        } => {
            assert_eq!(path, "/chat");
            assert_eq!(subprotocol.as_deref(), Some("chat.v1"));
        }
        other => panic!("expected open, got {other:?}"),
    }
    assert!(
        matches!(server_events.next().await, Event::Open { subprotocol: Some(p), .. } if p == "chat.v1")
    );

    client.send("hello").expect("queued");
    // The server answers "srv:hello"; the client's recorder echoes that back,
    // and so on: two hops are enough to show both directions work.
    assert!(
        matches!(server_events.next().await, Event::Message(m) if m.as_text() == Some("hello"))
    );
    assert!(
        matches!(client_events.next().await, Event::Message(m) if m.as_text() == Some("srv:hello"))
    );
    assert!(
        matches!(server_events.next().await, Event::Message(m) if m.as_text() == Some("srv:hello"))
    );

    client.connection().close_with(CloseCode(4000), "done");
    let reason = timeout(LIMIT, client.closed())
        .await
        .expect("closed in time");
    assert_eq!(reason.code(), Some(CloseCode(4000)));
    assert!(
        matches!(server_events.closed().await, CloseReason::Peer(Some(f)) if f.code == CloseCode(4000))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn refused_upgrade_reports_the_status() {
    let chat_only = |r| {
        WsTransport::builder()
            .route("/chat", r)
            .build()
            .expect("valid")
    };
    let (server, _events) = serve(chat_only, fast_config()).await;
    let (client_side, _client_events) = Recorder::new();
    let url = format!("ws://{}/nope", server.local_addr());
    let err = ws::connect_with_config(&url, client_side, fast_config())
        .await
        .expect_err("404");
    assert!(matches!(err, ws::Error::Refused { status: 404 }), "{err}");

    let (client_side, _) = Recorder::new();
    let err = ws::connect_with_config("http://example.com/", client_side, fast_config())
        .await
        .expect_err("scheme");
    assert!(matches!(err, ws::Error::InvalidUrl(_)), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn server_shutdown_reaches_the_client_component() {
    let (server, _events) = serve(WsTransport::new, fast_config()).await;
    let (client_side, mut client_events) = Recorder::new();
    let client = ws::connect_with_config(
        &format!("ws://{}/", server.local_addr()),
        client_side,
        fast_config(),
    )
    .await
    .expect("connects");
    assert!(matches!(client_events.next().await, Event::Open { .. }));
    server.shutdown().await;
    let reason = timeout(LIMIT, client.closed())
        .await
        .expect("closed in time");
    assert_eq!(reason.code(), Some(CloseCode::AWAY));
    assert!(
        matches!(client_events.closed().await, CloseReason::Peer(Some(f)) if f.code == CloseCode::AWAY)
    );
}

/// The client's pings and idle timeout come from its own keepalive sweep
/// (there is no server of ours on this side): a server that completes the
/// handshake and then answers nothing sees the client's pings, then its
/// close for the idle timeout.
#[tokio::test]
async fn a_client_pings_a_silent_server_then_times_out() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        support::answer_upgrade(&mut stream, None).await;
        let started = Instant::now();
        // Every frame the client sends, by opcode, until its close.
        let mut opcodes = Vec::new();
        loop {
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).await.expect("frame header");
            // Control frames only: short, masked.
            let len = usize::from(header[1] & 0x7F);
            let mut rest = vec![0u8; 4 + len];
            stream.read_exact(&mut rest).await.expect("frame");
            opcodes.push(header[0] & 0x0F);
            if header[0] & 0x0F == 0x8 {
                return (opcodes, started.elapsed());
            }
        }
    });

    let ping = Duration::from_millis(100);
    let idle = Duration::from_millis(400);
    let config = fast_config()
        .ping_interval(Some(ping))
        .idle_timeout(Some(idle));
    let (client_side, _events) = Recorder::new();
    let client = ws::connect_with(&format!("ws://{addr}/"), &[], Arc::new(client_side), config)
        .await
        .expect("connects");
    let reason = timeout(LIMIT, client.closed())
        .await
        .expect("closed in time");
    assert!(matches!(reason, CloseReason::IdleTimeout), "{reason:?}");
    let (opcodes, elapsed) = timeout(LIMIT, server)
        .await
        .expect("in time")
        .expect("server");
    let pings = opcodes.iter().filter(|&&op| op == 0x9).count();
    assert!(pings >= 2, "pings before the timeout: {opcodes:?}");
    assert_eq!(opcodes.last(), Some(&0x8));
    // At the idle timeout, at most one sweep (a quarter of the ping
    // interval) later, with room for a loaded machine.
    assert!(elapsed >= idle - Duration::from_millis(50), "{elapsed:?}");
    assert!(elapsed < idle * 4, "{elapsed:?}");
}
