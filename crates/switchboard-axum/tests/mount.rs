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

    // Once the first connection has ended, its place is given back: the
    // next upgrade is served. The place goes just after the connection
    // leaves the counters, so an upgrade in that instant may still be
    // refused; it is tried again until then.
    drop(first);
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut second = loop {
        let mut request = format!("ws://{addr}/rooms/a")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-agent", "bob".parse().unwrap());
        match timeout(LIMIT, tokio_tungstenite::connect_async(request))
            .await
            .unwrap()
        {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == 503 && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => panic!("the place was not given back: {err}"),
        }
    };
    assert_eq!(
        next(&mut second).await,
        Some(WsMessage::text("bob in a from 127.0.0.1"))
    );
    assert_eq!(sockets.stats().connections_total, 2);

    // Denied by the IP filter: 403, before anything else.
    let filter = switchboard::IpFilter::default()
        .deny(["127.0.0.0/8"])
        .unwrap();
    let (denying, addr) = start(Config::default().ip_filter(filter)).await;
    assert_eq!(status_of_upgrade(addr).await, 403);
    assert_eq!(denying.stats().connections_denied, 1);
    drop(second);
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

/// Echoes.
struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

#[tokio::test]
async fn permessage_deflate_is_agreed_and_spoken_through_axum() {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::{DeflateDecoder, DeflateEncoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sockets = Server::builder().start().await.unwrap();
    let transport = WsTransport::builder()
        .fallback(Echo)
        .deflate(switchboard::ws::Deflate::new())
        .build()
        .unwrap();
    let app = Router::new().route("/echo", switchboard::axum::mount(&sockets, transport));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(timeout(LIMIT, stream.read_u8()).await.unwrap().unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        ),
        "{head}"
    );

    // A compressed text message (RSV1), masked with a zero key.
    let text = "{\"say\":\"hello through axum\"}".repeat(20);
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.flush().unwrap();
    let mut compressed = encoder.get_ref().clone();
    compressed.truncate(compressed.len() - 4);
    let mut frame = vec![0xC1, 0x80 | 126];
    frame.extend_from_slice(&(compressed.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&compressed);
    stream.write_all(&frame).await.unwrap();

    // The echo comes back compressed.
    let mut header = [0u8; 2];
    timeout(LIMIT, stream.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header[0], 0xC1, "FIN, RSV1, text");
    let len = match header[1] {
        126 => usize::from(stream.read_u16().await.unwrap()),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    let mut decoder = DeflateDecoder::new(Vec::new());
    decoder.write_all(&payload).unwrap();
    decoder.write_all(&[0, 0, 0xFF, 0xFF]).unwrap();
    decoder.flush().unwrap();
    assert_eq!(decoder.get_ref(), text.as_bytes());
    drop(stream);
    sockets.shutdown().await;
}
