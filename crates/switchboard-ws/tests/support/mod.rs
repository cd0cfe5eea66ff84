//! Helpers shared by the socket tests: a recording component, a server on
//! 127.0.0.1:0, tungstenite clients, raw HTTP and raw WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use switchboard::ws::WsTransport;
use switchboard::{
    BoxError, CloseReason, Config, Connection, Message, MessageComponent, Reconnect, Server,
    ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for anything a test waits for.
pub const LIMIT: Duration = Duration::from_secs(10);

/// What the recording component saw.
#[derive(Debug)]
pub enum Event {
    Open {
        path: String,
        subprotocol: Option<String>,
        user: Option<User>,
        peer: SocketAddr,
        /// Which connection of a reconnecting client this is.
        reconnect: Option<u64>,
    },
    Message(Message),
    Error(String),
    Close(CloseReason),
}

/// State an authentication hook attaches to a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub String);

/// How a [`Recorder`] answers a message.
enum Reply {
    Echo,
    /// Text as `"{name}:{text}"`, binary as it is.
    Prefixed(&'static str),
    Nothing,
}

/// Answers every message (see [`Reply`]) and reports every lifecycle event
/// on a channel.
pub struct Recorder {
    reply: Reply,
    events: mpsc::UnboundedSender<Event>,
}

impl Recorder {
    /// A recorder that echoes.
    pub fn new() -> (Self, Events) {
        Recorder::with(Reply::Echo)
    }

    /// A recorder that answers text with `"{name}:{text}"`.
    pub fn named(name: &'static str) -> (Self, Events) {
        Recorder::with(Reply::Prefixed(name))
    }

    /// A recorder that answers nothing: a client of an echoing server.
    pub fn silent() -> (Self, Events) {
        Recorder::with(Reply::Nothing)
    }

    fn with(reply: Reply) -> (Self, Events) {
        let (events, rx) = mpsc::unbounded_channel();
        (Recorder { reply, events }, Events(rx))
    }
}

impl MessageComponent for Recorder {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let info = conn.transport();
        let _ = self.events.send(Event::Open {
            path: info.path().to_owned(),
            subprotocol: info.subprotocol().map(str::to_owned),
            user: conn.extension::<User>(),
            peer: conn.peer_addr(),
            reconnect: conn.extension::<Reconnect>().map(|r| r.connection()),
        });
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self.events.send(Event::Message(msg.clone()));
        match (&self.reply, msg.as_text()) {
            (Reply::Nothing, _) => {}
            (Reply::Prefixed(name), Some(text)) => conn.send(format!("{name}:{text}"))?,
            _ => conn.send(msg)?,
        }
        Ok(())
    }

    async fn on_error(&self, conn: &Connection, err: switchboard::Error) {
        let _ = self.events.send(Event::Error(err.to_string()));
        conn.close_with(switchboard::CloseCode::ERROR, "error");
    }

    async fn on_close(&self, _conn: &Connection, reason: CloseReason) {
        let _ = self.events.send(Event::Close(reason));
    }
}

/// The receiving end of a [`Recorder`].
pub struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    pub async fn next(&mut self) -> Event {
        timeout(LIMIT, self.0.recv())
            .await
            .expect("no event in time")
            .expect("component dropped")
    }

    /// Skips events until `on_close` reports, and returns its reason.
    pub async fn closed(&mut self) -> CloseReason {
        loop {
            if let Event::Close(reason) = self.next().await {
                return reason;
            }
        }
    }

    /// Whether an event is already waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

/// Short timeouts so limit tests finish quickly.
pub fn fast_config() -> Config {
    Config::default()
        .close_timeout(Duration::from_millis(500))
        .handshake_timeout(Duration::from_secs(5))
        .shutdown_grace(Duration::from_secs(2))
}

/// A server on 127.0.0.1 with a port of its own.
pub async fn start(transport: WsTransport, config: Config) -> ServerHandle {
    start_at("127.0.0.1:0", transport, config).await
}

/// A server listening on `addr`.
pub async fn start_at(
    addr: impl ToSocketAddrs + Debug + Send + Sync + 'static,
    transport: WsTransport,
    config: Config,
) -> ServerHandle {
    Server::builder()
        .config(config)
        .bind(addr, transport)
        .start()
        .await
        .expect("server starts")
}

/// A server whose one component is an echoing [`Recorder`], in what
/// `transport` makes of it (`WsTransport::new` serves it on every path).
pub async fn serve(
    transport: impl FnOnce(Recorder) -> WsTransport,
    config: Config,
) -> (ServerHandle, Events) {
    let (recorder, events) = Recorder::new();
    (start(transport(recorder), config).await, events)
}

/// An echoing server on every path with `config`, and a raw client of it.
pub async fn serve_raw(config: Config) -> (ServerHandle, Events, RawWs) {
    let (server, events) = serve(WsTransport::new, config).await;
    let ws = RawWs::connect(server.local_addr(), "/").await;
    (server, events, ws)
}

/// A tungstenite client, the reference implementation of the protocol.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects with extra request headers; `Err(status)` when refused.
pub async fn connect(
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<(Client, Option<String>), u16> {
    let mut request = url.into_client_request().expect("valid url");
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).expect("valid header"));
    }
    match timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
    {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().expect("ascii").to_owned());
            Ok((ws, protocol))
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(err) => panic!("handshake failed without an HTTP status: {err}"),
    }
}

/// The HTTP status `url` answers an upgrade with: 101 or a refusal.
pub async fn upgrade_status(url: &str, headers: &[(&'static str, &str)]) -> u16 {
    connect(url, headers)
        .await
        .map_or_else(|status| status, |_| 101)
}

/// A client of `ws://{addr}/`.
pub async fn client(addr: SocketAddr) -> Client {
    let url = format!("ws://{addr}/");
    connect(&url, &[]).await.expect("upgraded").0
}

/// The next data or close message (pings are skipped); `None` at the end.
pub async fn next(ws: &mut Client) -> Option<WsMessage> {
    timeout(LIMIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(msg)) => return Some(msg),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("message in time")
}

/// Sends `request` as is and returns the whole response (the server closes
/// the connection after a plain HTTP answer).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut response = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of a raw HTTP response.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A plain upgrade request for `path` (the RFC 6455 sample key).
pub fn upgrade_request(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
}

/// A raw socket after a successful upgrade, for tests that must control
/// every byte (silence, invalid frames).
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The 101's head.
    pub head: String,
}

/// A frame as the server sent it (servers never mask).
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::connect_with(addr, path, "").await
    }

    /// Upgrades with extra request header lines (each ending in `\r\n`).
    pub async fn connect_with(addr: SocketAddr, path: &str, extra_headers: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_request(addr, path, extra_headers).as_bytes())
            .await
            .expect("write");
        let mut buf = Vec::new();
        let head_end = timeout(LIMIT, async {
            loop {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "server closed during the handshake: {}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end + 4;
                }
            }
        })
        .await
        .expect("101 in time");
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..head_end);
        RawWs { stream, buf, head }
    }

    /// Sends one masked frame whose first byte is `first` (FIN, RSV bits
    /// and opcode as they go on the wire).
    pub async fn send_raw_frame(&mut self, first: u8, payload: &[u8]) {
        let mut frame = masked_frame(0, false, payload);
        frame[0] = first;
        self.stream.write_all(&frame).await.expect("write frame");
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        self.stream
            .write_all(&masked_frame(opcode, fin, payload))
            .await
            .expect("write frame");
    }

    /// Reads the next frame; `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, which must come within `LIMIT`.
    pub async fn frame(&mut self) -> RawFrame {
        timeout(LIMIT, self.read_frame())
            .await
            .expect("frame in time")
            .expect("a frame before EOF")
    }

    /// Skips frames until a close frame, which must come within `LIMIT`,
    /// and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x8 {
                return frame.close_code();
            }
        }
    }
}

/// Encodes a client frame (always masked, as RFC 6455 requires).
pub fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let rsv1 = buf[0] & 0x40 != 0;
    let (len, mut pos) = match buf[1] & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        pos += 4;
    }
    let payload = buf.get(pos..pos + len)?.to_vec();
    Some((
        RawFrame {
            opcode,
            rsv1,
            payload,
        },
        pos + len,
    ))
}

/// A hand-written server's side of an upgrade: reads the request's head
/// from `stream` and answers 101 with the key's accept value and, if
/// given, a `Sec-WebSocket-Extensions` header.
pub async fn answer_upgrade(stream: &mut TcpStream, extensions: Option<&str>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("request");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ascii");
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then_some(value)
        })
        .expect("a key");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let extensions = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    );
    stream.write_all(response.as_bytes()).await.expect("101");
}
