//! Helpers shared by the socket tests: a recording component, a server on
//! 127.0.0.1:0, raw HTTP and raw WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::ws::WsTransport;
use switchboard::{
    BoxError, CloseReason, Config, Connection, Message, MessageComponent, Server, ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for anything a test waits for.
pub const LIMIT: Duration = Duration::from_secs(10);

/// What the recording component saw.
#[derive(Debug)]
pub enum Event {
    Open {
        path: Option<String>,
        subprotocol: Option<String>,
        user: Option<User>,
        peer: SocketAddr,
    },
    Message(Message),
    Error(String),
    Close(CloseReason),
}

/// State an authentication hook attaches to a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub String);

/// Echoes every message (prefixed with `name` for text when it is set) and
/// reports every lifecycle event on a channel.
pub struct Recorder {
    name: Option<&'static str>,
    events: mpsc::UnboundedSender<Event>,
}

impl Recorder {
    pub fn new() -> (Self, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Recorder {
                name: None,
                events: tx,
            },
            Events(rx),
        )
    }

    /// A recorder that answers text with `"{name}:{text}"`.
    pub fn named(name: &'static str) -> (Self, Events) {
        let (mut r, events) = Recorder::new();
        r.name = Some(name);
        (r, events)
    }
}

impl MessageComponent for Recorder {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let info = conn.transport();
        let _ = self.events.send(Event::Open {
            path: info.path().map(str::to_owned),
            subprotocol: info.subprotocol().map(str::to_owned),
            user: conn.extension::<User>(),
            peer: conn.peer_addr(),
        });
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self.events.send(Event::Message(msg.clone()));
        match (self.name, msg.as_text()) {
            (Some(name), Some(text)) => conn.send(format!("{name}:{text}"))?,
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

pub async fn start(transport: WsTransport, config: Config) -> ServerHandle {
    Server::builder()
        .config(config)
        .bind("127.0.0.1:0", transport)
        .start()
        .await
        .expect("server starts")
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
}

/// A frame as the server sent it (servers never mask).
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
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
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_request(addr, path, "").as_bytes())
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
        RawWs { stream, buf }
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

    /// Reads frames until a close frame (returned) or EOF (`None`).
    pub async fn read_until_close(&mut self) -> Option<RawFrame> {
        while let Some(frame) = self.read_frame().await {
            if frame.opcode == 0x8 {
                return Some(frame);
            }
        }
        None
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
    Some((RawFrame { opcode, payload }, pos + len))
}
