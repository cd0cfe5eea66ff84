//! Unit-test components without sockets (feature `test-util`).
//!
//! [`TestServer`] runs a component on the real connection driver (the same
//! lifecycle, queues, limits and shutdown as a socket server) over an
//! in-memory transport; [`TestClient`] is the peer.
//!
//! ```
//! use switchboard::testing::TestServer;
//! use switchboard::{BoxError, Connection, Message, MessageComponent};
//!
//! struct Upper;
//!
//! impl MessageComponent for Upper {
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         let text = msg.as_text().ok_or("text only")?;
//!         conn.send(text.to_uppercase())?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = TestServer::new(Upper);
//! let mut client = server.connect().await;
//! client.send("hi").await;
//! assert_eq!(client.recv().await, Some(Message::text("HI")));
//!
//! // A binary message makes the handler fail: the default on_error closes with 1011.
//! client.send(vec![1u8, 2]).await;
//! assert_eq!(client.closed().await.map(|f| f.code.0), Some(1011));
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context as TaskContext, Poll, ready};

use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::close::{CloseCode, CloseFrame};
use crate::component::{DynComponent, IntoComponent};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::extensions::Extensions;
use crate::message::Message;
use crate::server::Context;
use crate::stats::Counters;
use crate::transport::{Received, TransportConn, TransportInfo};

/// In-flight frames per direction. Small, so a client that stops reading
/// backs up into the server's outbound queue as a real socket would. A
/// frame is what one side receives: a message, or the other side's close.
const CHANNEL_CAPACITY: usize = 16;

/// A component served over in-memory connections.
pub struct TestServer {
    ctx: Arc<Context>,
    component: Arc<dyn DynComponent>,
}

impl TestServer {
    /// Serves `component` with the default [`Config`]: a component value,
    /// or an `Arc` of one the test keeps to look inside
    /// ([`IntoComponent`]).
    pub fn new<K: ?Sized>(component: impl IntoComponent<K>) -> Self {
        Self::with_config(component, Config::default())
    }

    /// Serves `component` with `config`.
    ///
    /// # Panics
    ///
    /// If `config` is invalid ([`Config::validate`]): this is test code.
    pub fn with_config<K: ?Sized>(component: impl IntoComponent<K>, config: Config) -> Self {
        if let Err(err) = config.validate() {
            panic!("TestServer: {err}");
        }
        TestServer {
            ctx: Context::new(config),
            component: component.into_dyn(),
        }
    }

    /// Connects a new client; returns once the connection task started
    /// (`on_open` may still be running).
    pub async fn connect(&self) -> TestClient {
        self.connect_with(TransportInfo::new("memory")).await
    }

    /// Connects a client that presents `info` (path, headers, ...).
    pub async fn connect_with(&self, info: TransportInfo) -> TestClient {
        self.connect_with_state(info, Extensions::default()).await
    }

    /// Connects a client that presents `info`, with `state` attached to the
    /// connection before `on_open`, as a WebSocket handshake hook attaches
    /// it: `WsTransport::admit` runs a hook on a request and returns both.
    pub async fn connect_with_state(&self, info: TransportInfo, state: Extensions) -> TestClient {
        static PORT: AtomicU16 = AtomicU16::new(1);
        let port = PORT.fetch_add(1, Ordering::Relaxed);
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (to_server, from_client) = mpsc::channel(CHANNEL_CAPACITY);
        let (to_client, from_server) = mpsc::channel(CHANNEL_CAPACITY);
        let aborted = Arc::new(std::sync::Mutex::new(None));
        let conn = MemoryConn {
            rx: from_client,
            tx: PollSender::new(to_client),
            close_sent: false,
            aborted: aborted.clone(),
        };
        let ctx = self.ctx.clone();
        let component = self.component.clone();
        self.ctx.tracker.spawn(async move {
            let opened = ctx.open(peer, info, state, None);
            Context::drive(conn, opened, component, None).await;
        });
        TestClient {
            tx: to_server,
            rx: from_server,
            close: None,
            aborted,
            peer,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Counters {
        self.ctx.stats.snapshot()
    }

    /// Graceful shutdown, as [`ServerHandle::shutdown`](crate::ServerHandle::shutdown).
    pub async fn shutdown(&self) {
        self.ctx.shutdown().await;
    }
}

/// The peer of one in-memory connection.
#[derive(Debug)]
pub struct TestClient {
    tx: mpsc::Sender<Received>,
    rx: mpsc::Receiver<Received>,
    close: Option<Option<CloseFrame>>,
    /// The close frame of a connection the server let go at once (a slow
    /// consumer), delivered beside the channel rather than through it.
    aborted: Arc<std::sync::Mutex<Option<CloseFrame>>>,
    peer: SocketAddr,
}

impl TestClient {
    /// The address the server sees for this client.
    pub fn local_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Sends a message; waits while the server is not reading (its handler
    /// is busy). Returns false when the server side is gone.
    pub async fn send(&self, msg: impl Into<Message>) -> bool {
        self.tx.send(Received::Message(msg.into())).await.is_ok()
    }

    /// The next message, or `None` once the server closed the connection
    /// (then [`close_frame`](Self::close_frame) tells how).
    pub async fn recv(&mut self) -> Option<Message> {
        if self.close.is_some() {
            return None;
        }
        let frame = match self.rx.recv().await {
            Some(frame) => frame,
            None => Received::Closed(
                self.aborted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            ),
        };
        self.take(frame)
    }

    /// A message already delivered, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        let frame = self.rx.try_recv().ok()?;
        self.take(frame)
    }

    fn take(&mut self, frame: Received) -> Option<Message> {
        match frame {
            Received::Message(m) => Some(m),
            Received::Closed(frame) => {
                self.close = Some(frame);
                None
            }
        }
    }

    /// Waits until the server closes the connection, skipping messages;
    /// returns its close frame (`None` if it ended without one).
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        while self.recv().await.is_some() {}
        self.close_frame()
    }

    /// The close frame received, once the connection is closed.
    pub fn close_frame(&self) -> Option<CloseFrame> {
        self.close.clone().flatten()
    }

    /// Starts a normal close (1000) from the client side; the server answers
    /// with its own close frame, which [`closed`](Self::closed) returns.
    pub async fn close(&self) {
        let frame = CloseFrame::new(CloseCode::NORMAL, "");
        let _ = self.tx.send(Received::Closed(Some(frame))).await;
    }
}

/// The server side of an in-memory connection.
struct MemoryConn {
    rx: mpsc::Receiver<Received>,
    tx: PollSender<Received>,
    close_sent: bool,
    aborted: Arc<std::sync::Mutex<Option<CloseFrame>>>,
}

fn gone() -> Error {
    Error::Io(std::io::ErrorKind::BrokenPipe.into())
}

impl TransportConn for MemoryConn {
    fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Received>> {
        let frame = ready!(self.rx.poll_recv(cx));
        Poll::Ready(Ok(frame.unwrap_or(Received::Closed(None))))
    }

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.tx.poll_reserve(cx).map_err(|_| gone())
    }

    fn start_send(&mut self, msg: Message) -> Result<()> {
        self.tx
            .send_item(Received::Message(msg))
            .map_err(|_| gone())
    }

    fn poll_flush(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut TaskContext<'_>, frame: &CloseFrame) -> Poll<Result<()>> {
        if !self.close_sent {
            if ready!(self.tx.poll_reserve(cx)).is_ok() {
                let _ = self.tx.send_item(Received::Closed(Some(frame.clone())));
            }
            self.close_sent = true;
            self.tx.close();
        }
        Poll::Ready(Ok(()))
    }

    fn abort(&mut self, _cx: &mut TaskContext<'_>, frame: &CloseFrame) {
        // Messages still in the channel stand for bytes already in the
        // socket: the client reads them, then this frame.
        *self.aborted.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame.clone());
        self.close_sent = true;
        self.tx.close();
    }
}
