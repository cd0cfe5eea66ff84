#![allow(clippy::unwrap_used)]
//! The TCP client over real sockets: its lifecycle, reconnecting after the
//! server restarts on the same port, stopping, giving up.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::tcp::{Client, Codec, TcpTransport};
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
    Open { connection: u64, reconnect: bool },
    Message(String),
    Close(CloseReason),
}

struct Recorder(mpsc::UnboundedSender<Event>);

impl MessageComponent for Recorder {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let marker = conn.extension::<Reconnect>();
        let _ = self.0.send(Event::Open {
            connection: marker.as_ref().map_or(0, Reconnect::connection),
            reconnect: marker.is_some_and(|m| m.is_reconnect()),
        });
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let text = msg.as_text().unwrap_or_default().to_owned();
        if text == "stop"
            && let Some(marker) = conn.extension::<Reconnect>()
        {
            marker.stop();
        }
        let _ = self.0.send(Event::Message(text));
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
        .listener(listener, TcpTransport::lines(Echo))
        .start()
        .await
        .unwrap()
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(200))
}

#[tokio::test]
async fn client_lifecycle_against_a_server() {
    let server = serve(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::new(server.local_addr().to_string(), Codec::lines())
        .connect(Recorder(tx))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut rx).await,
        Event::Open { connection: 0, .. }
    ));
    for word in ["a", "b", "c"] {
        client.send(word).unwrap();
    }
    for word in ["a", "b", "c"] {
        assert!(matches!(next(&mut rx).await, Event::Message(m) if m == word));
    }
    client.close();
    assert!(matches!(
        next(&mut rx).await,
        Event::Close(CloseReason::Local(_))
    ));
    timeout(LIMIT, client.closed()).await.unwrap();
    // on_close ran exactly once: nothing more until the component is dropped.
    assert!(timeout(LIMIT, rx.recv()).await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = serve(listener).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::new(addr.to_string(), Codec::lines())
        .reconnecting(Recorder(tx), policy())
        .unwrap();
    assert!(matches!(
        next(&mut rx).await,
        Event::Open {
            connection: 1,
            reconnect: false
        }
    ));
    timeout(LIMIT, client.connected())
        .await
        .unwrap()
        .unwrap()
        .send("first")
        .unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "first"));

    // Kill the server: the connection ends, attempts fail meanwhile.
    server.shutdown().await;
    assert!(matches!(next(&mut rx).await, Event::Close(_)));

    // The same port again.
    let server = serve(TcpListener::bind(addr).await.unwrap()).await;
    assert!(matches!(
        next(&mut rx).await,
        Event::Open {
            connection: 2,
            reconnect: true
        }
    ));
    let conn = timeout(LIMIT, client.connection(2)).await.unwrap().unwrap();
    conn.send("second").unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "second"));
    assert_eq!(client.connections(), 2);

    client.stop();
    assert_eq!(
        timeout(LIMIT, client.finished()).await.unwrap(),
        ReconnectEnd::Stopped
    );
    assert!(matches!(
        next(&mut rx).await,
        Event::Close(CloseReason::Local(_))
    ));
    assert!(client.send("late").is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn a_handler_can_stop_reconnecting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve(listener).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::new(server.local_addr().to_string(), Codec::lines())
        .reconnecting(Recorder(tx), policy())
        .unwrap();
    assert!(matches!(next(&mut rx).await, Event::Open { .. }));
    // The echo of "stop" makes the component stop the client.
    client.send("stop").unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "stop"));
    assert!(matches!(next(&mut rx).await, Event::Close(_)));
    assert_eq!(
        timeout(LIMIT, client.finished()).await.unwrap(),
        ReconnectEnd::Stopped
    );
    // The server sees the connection go and none come back.
    timeout(LIMIT, async {
        while server.stats().open_connections > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(server.stats().connections_total, 1);
    assert_eq!(client.connections(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    // A port with nobody listening.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let client = Client::new(addr.to_string(), Codec::lines())
        .reconnecting(Recorder(tx), policy().max_attempts(Some(3)))
        .unwrap();
    let end = timeout(LIMIT, client.finished()).await.unwrap();
    assert!(matches!(end, ReconnectEnd::GaveUp(_)), "{end:?}");
    assert!(client.is_finished());
    assert_eq!(client.connections(), 0);
    assert!(timeout(LIMIT, client.connected()).await.unwrap().is_none());
}
