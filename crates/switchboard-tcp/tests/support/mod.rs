//! Helpers shared by the socket tests: a component that records what
//! happens to it, a server on 127.0.0.1:0, and bounded waits.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard::tcp::TcpTransport;
use switchboard::{
    BoxError, CloseCode, CloseReason, Config, Connection, ConnectionId, Error, Message,
    MessageComponent, Server, ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Upper bound for any single wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// What an error looked like when `on_error` saw it.
#[derive(Debug, Clone)]
pub struct SeenError {
    pub code: Option<u16>,
    pub idle: bool,
    pub text: String,
}

#[derive(Debug)]
pub enum Event {
    Open(Connection),
    Message(ConnectionId, Message),
    Error(ConnectionId, SeenError),
    Close(ConnectionId, CloseReason),
}

/// Records every callback; echoes messages when `echo` is set.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Event>,
    echo: bool,
}

pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

pub fn recorder(echo: bool) -> (Recorder, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Recorder { tx, echo }, Events { rx })
}

impl MessageComponent for Recorder {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let _ = self.tx.send(Event::Open(conn.clone()));
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self.tx.send(Event::Message(conn.id(), msg.clone()));
        if self.echo {
            conn.send(msg)?;
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection, reason: CloseReason) {
        let _ = self.tx.send(Event::Close(conn.id(), reason));
    }

    async fn on_error(&self, conn: &Connection, err: Error) {
        let seen = SeenError {
            code: match &err {
                Error::Protocol { code, .. } => Some(code.0),
                _ => None,
            },
            idle: matches!(err, Error::IdleTimeout),
            text: err.to_string(),
        };
        let _ = self.tx.send(Event::Error(conn.id(), seen));
        conn.close_with(CloseCode::ERROR, "error");
    }
}

impl Events {
    pub async fn next(&mut self) -> Event {
        within("next event", self.rx.recv())
            .await
            .expect("the component is alive")
    }

    /// Waits for the next `on_open`.
    pub async fn opened(&mut self) -> Connection {
        match self.next().await {
            Event::Open(conn) => conn,
            other => panic!("expected on_open, got {other:?}"),
        }
    }

    /// Waits for the next message of `id`, skipping nothing.
    pub async fn message(&mut self, id: ConnectionId) -> Message {
        match self.next().await {
            Event::Message(from, msg) if from == id => msg,
            other => panic!("expected a message from {id}, got {other:?}"),
        }
    }

    /// Waits for `on_error` then `on_close` of `id`, ignoring other connections' events.
    pub async fn error_then_close(&mut self, id: ConnectionId) -> (SeenError, CloseReason) {
        let mut error = None;
        loop {
            match self.next().await {
                Event::Error(from, seen) if from == id => {
                    assert!(error.is_none(), "on_error ran twice for {id}");
                    error = Some(seen);
                }
                Event::Close(from, reason) if from == id => {
                    let error = error
                        .unwrap_or_else(|| panic!("on_close before on_error for {id} ({reason})"));
                    return (error, reason);
                }
                Event::Message(from, msg) if from == id => {
                    panic!("unexpected message {msg:?} from {id}")
                }
                _ => {}
            }
        }
    }

    /// Waits for `on_close` of `id`; messages of `id` before it are returned.
    pub async fn close_of(&mut self, id: ConnectionId) -> (Vec<Message>, CloseReason) {
        let mut msgs = Vec::new();
        loop {
            match self.next().await {
                Event::Message(from, msg) if from == id => msgs.push(msg),
                Event::Close(from, reason) if from == id => return (msgs, reason),
                Event::Error(from, seen) if from == id => {
                    panic!("unexpected error on {id}: {seen:?}")
                }
                _ => {}
            }
        }
    }

    /// The next event already recorded, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// How many `on_close` of `id` were recorded and not yet taken, without
    /// waiting.
    pub fn closes_left(&mut self, id: ConnectionId) -> usize {
        let mut closes = 0;
        while let Ok(ev) = self.rx.try_recv() {
            closes += usize::from(matches!(ev, Event::Close(from, _) if from == id));
        }
        closes
    }
}

/// Starts a server on 127.0.0.1:0 with `transport`.
pub async fn serve<K: ?Sized, C>(transport: TcpTransport<K, C>, config: Config) -> ServerHandle
where
    TcpTransport<K, C>: switchboard::transport::Transport<TcpStream>,
{
    within(
        "server start",
        Server::builder()
            .config(config)
            .bind("127.0.0.1:0", transport)
            .start(),
    )
    .await
    .expect("server starts")
}

/// A server on 127.0.0.1:0 whose component records and echoes (see
/// [`recorder`]), behind the transport `make` builds around it.
pub async fn echo_server<C>(
    make: impl FnOnce(Recorder) -> TcpTransport<Recorder, C>,
    config: Config,
) -> (ServerHandle, Events)
where
    TcpTransport<Recorder, C>: switchboard::transport::Transport<TcpStream>,
{
    let (component, events) = recorder(true);
    (serve(make(component), config).await, events)
}

pub async fn dial(addr: SocketAddr) -> TcpStream {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Dials `server` and waits for the connection's `on_open`.
pub async fn peer(server: &ServerHandle, events: &mut Events) -> (TcpStream, Connection) {
    let stream = dial(server.local_addr()).await;
    (stream, events.opened().await)
}

/// Writes `bytes` and shuts down the write side while reading what comes
/// back, until the server ends the stream.
pub async fn write_all_then_read_to_end(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = stream.split();
    let writer = async {
        wr.write_all(bytes).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut read = Vec::new();
    let reader = rd.read_to_end(&mut read);
    within("write then read to end", async {
        tokio::join!(writer, reader).1.unwrap()
    })
    .await;
    read
}

/// Reads until the server ends the stream.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    within("end of stream", stream.read_to_end(&mut out))
        .await
        .expect("read to end");
    out
}

/// Reads exactly `n` bytes.
pub async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    within("read", stream.read_exact(&mut out))
        .await
        .expect("read");
    out
}

/// Writes `line` and reads back the echo (lines codec).
pub async fn roundtrip(stream: &mut TcpStream, line: &str) {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let echoed = read_n(stream, line.len() + 1).await;
    assert_eq!(echoed, format!("{line}\n").as_bytes());
}
