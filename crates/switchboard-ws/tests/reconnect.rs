#![allow(clippy::unwrap_used)]
//! The WebSocket client reconnecting after the server restarts on the same
//! port, and stopping.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::ws::{Client, WsTransport};
use switchboard::{
    BoxError, CloseReason, Connection, Message, MessageComponent, Reconnect, ReconnectEnd,
    ReconnectPolicy, Server, ServerHandle,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

#[derive(Debug)]
enum Event {
    Open {
        connection: u64,
        path: Option<String>,
    },
    Message(String),
    Close(CloseReason),
}

struct Recorder(mpsc::UnboundedSender<Event>);

impl MessageComponent for Recorder {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let _ = self.0.send(Event::Open {
            connection: conn.extension::<Reconnect>().map_or(0, |r| r.connection()),
            path: conn.transport().path().map(str::to_owned),
        });
        Ok(())
    }

    async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self
            .0
            .send(Event::Message(msg.as_text().unwrap_or_default().to_owned()));
        Ok(())
    }

    async fn on_close(&self, _conn: &Connection, reason: CloseReason) {
        let _ = self.0.send(Event::Close(reason));
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    timeout(LIMIT, rx.recv())
        .await
        .expect("event in time")
        .expect("recorder alive")
}

async fn serve(listener: TcpListener) -> ServerHandle {
    Server::builder()
        .listener(listener, WsTransport::new(Echo))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = serve(listener).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let policy = ReconnectPolicy::default()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(200));
    let client = Client::new(format!("ws://{addr}/feed"))
        .reconnecting(Recorder(tx), policy)
        .unwrap();
    assert!(matches!(
        next(&mut rx).await,
        Event::Open { connection: 1, path: Some(p) } if p == "/feed"
    ));
    client.send("one").unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "one"));

    server.shutdown().await;
    // The server said goodbye with 1001.
    assert!(matches!(
        next(&mut rx).await,
        Event::Close(CloseReason::Peer(Some(frame))) if frame.code.0 == 1001
    ));

    let server = serve(TcpListener::bind(addr).await.unwrap()).await;
    assert!(matches!(
        next(&mut rx).await,
        Event::Open { connection: 2, .. }
    ));
    let conn = timeout(LIMIT, client.connection(2)).await.unwrap().unwrap();
    conn.send("two").unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "two"));

    client.stop();
    assert_eq!(
        timeout(LIMIT, client.finished()).await.unwrap(),
        ReconnectEnd::Stopped
    );
    assert!(matches!(
        next(&mut rx).await,
        Event::Close(CloseReason::Local(_))
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_urls_fail_at_once() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = Client::new("http://127.0.0.1:1/")
        .reconnecting(Recorder(tx), ReconnectPolicy::default())
        .unwrap_err();
    assert!(
        matches!(err, switchboard::ws::Error::InvalidUrl(_)),
        "{err}"
    );
}
