//! One component instance served on WebSocket and TCP lines at once: both
//! kinds of client share one room.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use support::{LIMIT, LineClient};
use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{BoxError, Connection, Hub, Message, MessageComponent, Server};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite;

#[derive(Default)]
struct Room {
    hub: Hub,
}

impl MessageComponent for Room {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        // Tell the client it is in, so the test knows both joined.
        conn.send(format!("welcome {}", conn.transport().kind()))?;
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        self.hub.broadcast_except(msg, conn.id()).await?;
        Ok(())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match timeout(LIMIT, ws.next())
            .await
            .expect("ws message in time")
            .unwrap()
            .unwrap()
        {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn tcp_and_websocket_clients_share_one_room() {
    // An `Arc<Room>`: the TCP listener calls `Room` directly, the
    // WebSocket one through `DynComponent`, and both reach the same room.
    let room = Arc::new(Room::default());
    let server = Server::builder()
        .bind("127.0.0.1:0", WsTransport::new(room.clone()))
        .bind("127.0.0.1:0", TcpTransport::lines(room))
        .start()
        .await
        .unwrap();
    let [ws_addr, tcp_addr] = server.local_addrs() else {
        panic!("two listeners")
    };

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{ws_addr}/"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "welcome ws");
    let mut tcp = LineClient::connect(*tcp_addr).await;
    assert_eq!(tcp.recv().await.as_deref(), Some("welcome tcp"));

    // TCP -> WebSocket.
    tcp.send("from nc").await;
    assert_eq!(next_text(&mut ws).await, "from nc");

    // WebSocket -> TCP, and not back to the sender.
    ws.send(tungstenite::Message::text("from the browser"))
        .await
        .unwrap();
    assert_eq!(tcp.recv().await.as_deref(), Some("from the browser"));
    tcp.send("second").await;
    assert_eq!(
        next_text(&mut ws).await,
        "second",
        "the browser did not get its own message back"
    );

    drop(tcp);
    ws.close(None).await.unwrap();
    server.shutdown().await;
    assert_eq!(server.stats().connections_total, 2);
    assert_eq!(server.stats().open_connections, 0);
}

#[tokio::test]
async fn a_burst_in_one_write_reaches_every_member_of_the_room() {
    // 5,000 lines in one write: far more messages in one read than a
    // member's queue holds (1,024 by default). The sender's task yields
    // while it handles them, so that the members' tasks write them out
    // as they come; none is closed as a slow consumer.
    let server = Server::builder()
        .bind("127.0.0.1:0", TcpTransport::lines(Room::default()))
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    let mut members = Vec::new();
    for _ in 0..3 {
        let mut member = LineClient::connect(addr).await;
        assert_eq!(member.recv().await.as_deref(), Some("welcome tcp"));
        members.push(member);
    }
    let mut sender = LineClient::connect(addr).await;
    assert_eq!(sender.recv().await.as_deref(), Some("welcome tcp"));

    const LINES: usize = 5_000;
    let burst: String = (0..LINES).map(|i| format!("line {i:05}\n")).collect();
    tokio::io::AsyncWriteExt::write_all(&mut sender.writer, burst.as_bytes())
        .await
        .unwrap();
    for member in &mut members {
        for i in 0..LINES {
            let expected = format!("line {i:05}");
            assert_eq!(member.recv().await, Some(expected), "line {i}");
        }
    }
    assert_eq!(server.stats().slow_consumer_closes, 0);
    assert_eq!(server.stats().dropped, 0);
    server.shutdown().await;
}
