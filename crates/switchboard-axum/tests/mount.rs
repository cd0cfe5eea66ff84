//! Components mounted in an axum router, over real sockets: what the
//! handler's extractors found reaches `on_open` as connection state, axum's
//! path parameters reach `Connection::param`, and the connections are the
//! switchboard server's (its counters, its limits, its shutdown).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use switchboard::axum::WsUpgrade;
use switchboard::ws::WsTransport;
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server, ServerHandle};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Agent(String);

/// Says who and where it is, then echoes.
struct Room;

impl MessageComponent for Room {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let Agent(agent) = conn.extension::<Agent>().ok_or("no agent")?;
        let room = conn.param("room").ok_or("no room")?;
        conn.send(format!("{agent} in {room} from {}", conn.peer_addr().ip()))?;
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    sockets: ServerHandle,
    transport: WsTransport,
}

async fn room(State(app): State<AppState>, headers: HeaderMap, upgrade: WsUpgrade) -> Response {
    let agent = headers
        .get("x-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_owned();
    upgrade
        .with(Agent(agent))
        .serve(&app.sockets, &app.transport)
        .await
}

async fn start(config: Config) -> (ServerHandle, SocketAddr) {
    let sockets = Server::builder().config(config).start().await.unwrap();
    let state = AppState {
        sockets: sockets.clone(),
        transport: WsTransport::new(Room),
    };
    let app = Router::new()
        .route("/rooms/{room}", get(room))
        .route("/ping", get(|| async { "pong" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    (sockets, addr)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, path: &str, agent: &str) -> Ws {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-agent", agent.parse().unwrap());
    let (ws, _) = timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .unwrap();
    ws
}

async fn next(ws: &mut Ws) -> Option<WsMessage> {
    timeout(LIMIT, ws.next()).await.unwrap().map(Result::unwrap)
}

#[tokio::test]
async fn extractors_and_path_parameters_reach_on_open() {
    let (sockets, addr) = start(Config::default()).await;
    let mut ws = connect(addr, "/rooms/news%20desk", "curl").await;
    assert_eq!(
        next(&mut ws).await,
        Some(WsMessage::text("curl in news desk from 127.0.0.1"))
    );
    ws.send(WsMessage::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(WsMessage::text("hi")));
    assert_eq!(sockets.stats().open_connections, 1);

    // The server's shutdown reaches the mounted socket: 1001.
    let (closed, ()) = tokio::join!(
        async {
            let code = match next(&mut ws).await {
                Some(WsMessage::Close(Some(frame))) => u16::from(frame.code),
                other => panic!("expected a close, got {other:?}"),
            };
            assert_eq!(next(&mut ws).await, None);
            code
        },
        sockets.shutdown()
    );
    assert_eq!(closed, 1001);
}

#[tokio::test]
async fn the_servers_limits_hold_for_mounted_sockets() {
    let config = Config::default()
        .max_message_size(1024)
        .max_frame_size(1024);
    let (sockets, addr) = start(config).await;
    let mut ws = connect(addr, "/rooms/a", "ann").await;
    next(&mut ws).await.unwrap();
    ws.send(WsMessage::binary(vec![0u8; 1025])).await.unwrap();
    match next(&mut ws).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected 1009, got {other:?}"),
    }
    // Reading on answers the close; then the stream ends.
    assert_eq!(next(&mut ws).await, None);
    assert_eq!(sockets.stats().connections_total, 1);
    sockets.shutdown().await;
}

#[tokio::test]
async fn a_peer_the_server_refuses_gets_a_status_not_an_upgrade() {
    let config = Config::default().max_connections(Some(1));
    let (sockets, addr) = start(config).await;
    let mut first = connect(addr, "/rooms/a", "ann").await;
    next(&mut first).await.unwrap();
    assert_eq!(status_of_upgrade(addr).await, 503);
    assert_eq!(sockets.stats().connections_rejected, 1);
    assert_eq!(sockets.stats().connections_total, 1);

    // Denied by the IP filter: 403, before anything else.
    let filter = switchboard::IpFilter::default()
        .deny(["127.0.0.0/8"])
        .unwrap();
    let (denying, addr) = start(Config::default().ip_filter(filter)).await;
    assert_eq!(status_of_upgrade(addr).await, 403);
    assert_eq!(denying.stats().connections_denied, 1);
    drop(first);
    sockets.shutdown().await;
    denying.shutdown().await;
}

/// The HTTP status of a refused upgrade to `/rooms/a`.
async fn status_of_upgrade(addr: SocketAddr) -> u16 {
    let request = format!("ws://{addr}/rooms/a")
        .into_client_request()
        .unwrap();
    match timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}
