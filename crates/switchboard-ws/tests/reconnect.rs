#![allow(clippy::unwrap_used)]
//! The WebSocket client reconnecting after the server restarts on the same
//! port, and stopping.

mod support;

use std::time::Duration;

use support::{Event, LIMIT, Recorder, fast_config, serve, start_at};
use switchboard::ws::{Client, WsTransport};
use switchboard::{CloseReason, ReconnectEnd, ReconnectPolicy};
use tokio::time::timeout;

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let (server, _events) = serve(WsTransport::new, fast_config()).await;
    let addr = server.local_addr();

    let (recorder, mut events) = Recorder::silent();
    let policy = ReconnectPolicy::default()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(200));
    let client = Client::new(format!("ws://{addr}/feed"))
        .reconnecting(recorder, policy)
        .unwrap();
    assert!(matches!(
        events.next().await,
        Event::Open { reconnect: Some(1), path: p, .. } if p == "/feed"
    ));
    client.send("one").unwrap();
    assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some("one")));

    server.shutdown().await;
    // The server said goodbye with 1001.
    assert!(matches!(
        events.next().await,
        Event::Close(CloseReason::Peer(Some(frame))) if frame.code.0 == 1001
    ));

    let (recorder, _server_events) = Recorder::new();
    let server = start_at(addr, WsTransport::new(recorder), fast_config()).await;
    assert!(matches!(
        events.next().await,
        Event::Open {
            reconnect: Some(2),
            ..
        }
    ));
    let conn = timeout(LIMIT, client.connection(2)).await.unwrap().unwrap();
    conn.send("two").unwrap();
    assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some("two")));

    client.stop();
    assert_eq!(
        timeout(LIMIT, client.finished()).await.unwrap(),
        ReconnectEnd::Stopped
    );
    assert!(matches!(
        events.next().await,
        Event::Close(CloseReason::Local(_))
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_urls_fail_at_once() {
    let (recorder, _events) = Recorder::silent();
    let err = Client::new("http://127.0.0.1:1/")
        .reconnecting(recorder, ReconnectPolicy::default())
        .unwrap_err();
    assert!(
        matches!(err, switchboard::ws::Error::InvalidUrl(_)),
        "{err}"
    );
}
