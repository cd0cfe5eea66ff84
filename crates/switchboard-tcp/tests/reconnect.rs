//! The TCP client over real sockets: its lifecycle, reconnecting after the
//! server restarts on the same port, stopping, giving up.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use switchboard::tcp::{Client, Codec, TcpTransport};
use switchboard::{
    BoxError, CloseReason, Connection, Message, MessageComponent, Reconnect, ReconnectEnd,
    ReconnectPolicy, Server, ServerHandle,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::{recorder, within};

const ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

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
    within("next event", rx.recv())
        .await
        .expect("recorder alive")
}

/// A lines server listening on `addr` that echoes (the support module's
/// recorder, whose events nobody reads here).
async fn serve(addr: SocketAddr) -> ServerHandle {
    let listener = TcpListener::bind(addr).await.unwrap();
    let (echo, _) = recorder(true);
    let builder = Server::builder().listener(listener, TcpTransport::lines(echo));
    within("server start", builder.start()).await.unwrap()
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(200))
}

#[tokio::test]
async fn client_lifecycle_against_a_server() {
    let server = serve(ANY_PORT).await;
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
    within("client closed", client.closed()).await;
    // on_close ran exactly once: nothing more until the component is dropped.
    assert!(within("component dropped", rx.recv()).await.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let server = serve(ANY_PORT).await;
    let addr = server.local_addr();

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
    within("client connected", client.connected())
        .await
        .unwrap()
        .send("first")
        .unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "first"));

    // Kill the server: the connection ends, attempts fail meanwhile.
    server.shutdown().await;
    assert!(matches!(next(&mut rx).await, Event::Close(_)));

    // The same port again.
    let server = serve(addr).await;
    assert!(matches!(
        next(&mut rx).await,
        Event::Open {
            connection: 2,
            reconnect: true
        }
    ));
    let conn = within("connection 2", client.connection(2)).await.unwrap();
    conn.send("second").unwrap();
    assert!(matches!(next(&mut rx).await, Event::Message(m) if m == "second"));
    assert_eq!(client.connections(), 2);

    client.stop();
    assert_eq!(
        within("client finished", client.finished()).await,
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
    let server = serve(ANY_PORT).await;
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
        within("client finished", client.finished()).await,
        ReconnectEnd::Stopped
    );
    // The server sees the connection go and none come back.
    within("connection gone", async {
        while server.stats().open_connections > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
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
    let end = within("client finished", client.finished()).await;
    assert!(matches!(end, ReconnectEnd::GaveUp(_)), "{end:?}");
    assert!(client.is_finished());
    assert_eq!(client.connections(), 0);
    assert!(
        within("client connected", client.connected())
            .await
            .is_none()
    );
}
