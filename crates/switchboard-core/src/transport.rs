//! The seam between the core runtime and a wire protocol.
//!
//! A [`Transport`] turns an accepted byte stream into a [`TransportConn`]: a
//! message stream and sink with a close operation. The core owns everything
//! else: the accept loop, limits, the connection lifecycle, queues and
//! shutdown. A new transport (QUIC, Unix sockets) is a crate, not a fork;
//! one over a byte stream builds on [`io`]: read and write buffers, the
//! keepalive timer and client connects, shared by the WebSocket and TCP
//! transports.
//!
//! Clients use the same seam from the other side: a transport crate dials,
//! runs its handshake and hands the connection to [`spawn_client`] (one
//! connection) or to [`spawn_reconnecting`] through a connect function that
//! returns [`Dialed`] connections.
//!
//! [`TransportInfo`] and [`Headers`], which components read, are also at
//! the crate root.

pub mod io;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::close::CloseFrame;
use crate::component::{DynComponent, MessageComponent};
use crate::config::Config;
use crate::error::Result;
use crate::extensions::Extensions;
use crate::message::Message;

pub use crate::client::spawn_client;
pub use crate::reconnect::{Dialed, spawn_reconnecting};

/// What the transport read from the peer.
#[derive(Debug)]
pub enum Received {
    /// An application message.
    Message(Message),
    /// The peer closed: a close frame, or `None` for a plain end of stream.
    Closed(Option<CloseFrame>),
}

/// How a transport checks an outbound message before it is queued: `Ok`
/// when the message can be written as one message of the wire protocol,
/// otherwise a short reason. See [`TransportConn::outbound_check`].
pub type OutboundCheck = fn(&Message) -> std::result::Result<(), &'static str>;

/// How far a transport's writing has got: see
/// [`TransportConn::write_progress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteProgress {
    /// Bytes taken into the transport's buffers so far, framing included.
    pub buffered: u64,
    /// Of those, bytes written to the stream.
    pub written: u64,
}

/// One established connection, as the core's connection driver sees it.
///
/// The driver polls both directions from one task: `poll_recv` only when the
/// component is ready for the next message (the inbound back-pressure), and
/// the send side whenever messages are queued. `start_send` may buffer;
/// `poll_flush` writes the buffer out, and the driver calls it once per batch.
pub trait TransportConn: Send + Unpin + 'static {
    /// Reads the next message. Transport-level traffic (pings, keepalive
    /// timers) is handled in here; an idle peer yields [`Error::IdleTimeout`](crate::Error::IdleTimeout).
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received>>;

    /// Ready to accept one more message into `start_send`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>>;

    /// Buffers one message for writing; call `poll_ready` first.
    fn start_send(&mut self, msg: Message) -> Result<()>;

    /// Writes out everything buffered.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>>;

    /// Writes out what is buffered, then closes the connection with `frame`
    /// (transports without close frames just end the stream). Called
    /// repeatedly with the same frame until it returns `Ready`; the driver
    /// bounds it with `Config::close_timeout`.
    fn poll_close(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) -> Poll<Result<()>>;

    /// Ends the connection at once, for a peer that is not reading: drops
    /// what is buffered and at most tries, without waiting, to send
    /// `frame`. The driver drops the connection right after; the default
    /// does nothing more.
    fn abort(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) {
        let _ = (cx, frame);
    }

    /// How far writing has got, for a transport that counts it (the
    /// built-in ones do). With it, the driver releases each message from
    /// the outbox's bounds once the stream has taken its last byte, and
    /// closes a connection whose stream takes no byte for
    /// `Config::write_timeout` while output waits. `None` (the default):
    /// a message leaves the bounds once handed to `start_send` and
    /// flushed, and the write timeout does not apply.
    fn write_progress(&self) -> Option<WriteProgress> {
        None
    }

    /// How [`Connection::send`](crate::Connection::send) checks a message
    /// for this connection before queueing it, if the wire protocol cannot
    /// carry every message (a line cannot hold a line break). Asked once,
    /// when the connection is created; a refused message fails `send` with
    /// [`SendError::Invalid`](crate::SendError::Invalid) and is never
    /// queued. `None` (the default, and what WebSocket returns) costs
    /// `send` one branch.
    fn outbound_check(&self) -> Option<OutboundCheck> {
        None
    }
}

/// A boxed connection is a connection, so that a client can choose its
/// stream at run time (`ws://` or `wss://`, say) behind one type.
impl<T: TransportConn + ?Sized> TransportConn for Box<T> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received>> {
        (**self).poll_recv(cx)
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        (**self).poll_ready(cx)
    }

    fn start_send(&mut self, msg: Message) -> Result<()> {
        (**self).start_send(msg)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        (**self).poll_flush(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) -> Poll<Result<()>> {
        (**self).poll_close(cx, frame)
    }

    fn abort(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) {
        (**self).abort(cx, frame);
    }

    fn write_progress(&self) -> Option<WriteProgress> {
        (**self).write_progress()
    }

    fn outbound_check(&self) -> Option<OutboundCheck> {
        (**self).outbound_check()
    }
}

/// What a transport hands to the core for each accepted connection.
pub struct Accepted<C, K: ?Sized = dyn DynComponent> {
    /// The established connection.
    pub conn: C,
    /// What the component can learn about the connection.
    pub info: TransportInfo,
    /// The component that serves this connection. A transport that routes
    /// (by WebSocket request path, say) hands over an `Arc<dyn DynComponent>`.
    pub component: Arc<K>,
    /// Typed state for the connection (see [`Connection::extension`](crate::Connection::extension)),
    /// for example the user an authentication hook identified.
    pub extensions: Extensions,
}

impl<C, K: ?Sized> Accepted<C, K> {
    /// An accepted connection with no extensions.
    pub fn new(conn: C, info: TransportInfo, component: Arc<K>) -> Self {
        Accepted {
            conn,
            info,
            component,
            extensions: Extensions::default(),
        }
    }
}

/// Turns accepted byte streams of type `IO` into connections.
///
/// `IO` is a TCP stream for a plain listener; a TLS layer wraps a transport
/// for `TlsStream<TcpStream>`. The core applies
/// [`Config::handshake_timeout`] around [`accept`](Transport::accept).
pub trait Transport<IO>: Send + Sync + 'static {
    /// The connection type this transport produces.
    type Conn: TransportConn;
    /// The component it hands its connections to: the component's own type
    /// for a transport that serves one (its handlers are then called
    /// directly), [`DynComponent`] for one that chooses among several.
    type Component: MessageComponent + ?Sized;

    /// Performs the handshake (if any) on a freshly accepted stream.
    fn accept(
        &self,
        io: IO,
        peer: SocketAddr,
        config: &Config,
    ) -> impl Future<Output = Result<Accepted<Self::Conn, Self::Component>>> + Send;
}

/// Request headers, kept compactly (names lower-cased).
#[derive(Clone, Debug, Default)]
pub struct Headers(Box<[(Box<str>, Box<str>)]>);

impl Headers {
    /// Builds the set from name/value pairs.
    pub fn new<N: AsRef<str>, V: Into<Box<str>>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        Headers(
            pairs
                .into_iter()
                .map(|(n, v)| (n.as_ref().to_ascii_lowercase().into_boxed_str(), v.into()))
                .collect(),
        )
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find_map(|(n, v)| n.eq_ignore_ascii_case(name).then_some(v))
    }

    /// Every value of header `name` (case-insensitive), in request order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter_map(move |(n, v)| n.eq_ignore_ascii_case(name).then_some(v))
    }

    /// All headers as `(lower-case name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (&**n, &**v))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a component can learn about how a connection arrived, from
/// [`Connection::transport`](crate::Connection::transport).
///
/// For WebSocket: the request path, query, the route's parameters,
/// headers and the negotiated subprotocol. Raw TCP fills in only the kind.
///
/// ```
/// use switchboard::testing::TestServer;
/// use switchboard::{BoxError, Connection, Headers, Message, MessageComponent, TransportInfo};
///
/// struct Rooms;
///
/// impl MessageComponent for Rooms {
///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
///         let info = conn.transport();
///         // `ws://host/rooms/{room}?name=...`; TCP peers have neither.
///         let room = info.param("room").unwrap_or("lobby");
///         let name = info.query_param("name").unwrap_or("anonymous".into());
///         let agent = info.headers().get("user-agent").unwrap_or("unknown");
///         conn.send(format!("{} peer {name} in {room}, using {agent}", info.kind()))?;
///         Ok(())
///     }
///
///     async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // What a WebSocket request presents, built by hand for a unit test.
/// let info = TransportInfo::new("ws")
///     .with_path("/rooms/news")
///     .with_params([("room", "news")])
///     .with_query("name=J%C3%BCrgen+K&flag")
///     .with_headers(Headers::new([("User-Agent", "curl/8"), ("Cookie", "sid=abc; theme=dark")]));
/// assert_eq!(info.cookie("theme"), Some("dark"));
/// assert_eq!(info.cookie("sid"), Some("abc"));
/// assert_eq!(info.query_param("flag").as_deref(), Some(""));
/// assert_eq!(info.query_param("nope"), None);
/// // Decoded, and as the request spelled it.
/// assert_eq!(info.query_param("name").as_deref(), Some("Jürgen K"));
/// assert_eq!(info.raw_query_param("name"), Some("J%C3%BCrgen+K"));
///
/// let server = TestServer::new(Rooms);
/// let mut client = server.connect_with(info).await;
/// assert_eq!(
///     client.recv().await,
///     Some(Message::text("ws peer Jürgen K in news, using curl/8"))
/// );
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TransportInfo {
    kind: &'static str,
    path: Box<str>,
    query: Option<Box<str>>,
    /// The route's parameters, percent-decoded, in the route's order.
    params: Box<[(Box<str>, Box<str>)]>,
    headers: Headers,
    subprotocol: Option<Box<str>>,
}

impl TransportInfo {
    /// Info for a transport of the given kind (`"ws"`, `"tcp"`, `"memory"`).
    pub fn new(kind: &'static str) -> Self {
        TransportInfo {
            kind,
            path: Box::default(),
            query: None,
            params: Box::default(),
            headers: Headers::default(),
            subprotocol: None,
        }
    }

    /// Sets the request path.
    #[must_use]
    pub fn with_path(mut self, path: impl Into<Box<str>>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the query string (without `?`).
    #[must_use]
    pub fn with_query(mut self, query: impl Into<Box<str>>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Sets the route's parameters (name, percent-decoded value), as a
    /// transport that routes by pattern found them.
    #[must_use]
    pub fn with_params<N, V>(mut self, params: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<Box<str>>,
        V: Into<Box<str>>,
    {
        self.params = params
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .collect();
        self
    }

    /// Sets the request headers.
    #[must_use]
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the negotiated subprotocol.
    #[must_use]
    pub fn with_subprotocol(mut self, protocol: impl Into<Box<str>>) -> Self {
        self.subprotocol = Some(protocol.into());
        self
    }

    /// The transport kind: `"ws"`, `"tcp"`, `"memory"`, ...
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The request path, without the query, as the request spelled it
    /// (not percent-decoded); `""` for a transport without requests (raw
    /// TCP).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string without `?`, as the request spelled it.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The first value of query parameter `name`, percent-decoded as a
    /// form field (`+` is a space; a sequence that is not UTF-8 becomes
    /// U+FFFD). `name` is compared with the decoded names.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        form_urlencoded::parse(self.query()?.as_bytes()).find_map(|(k, v)| (k == name).then_some(v))
    }

    /// The first value of query parameter `name` exactly as the request
    /// spelled it (not decoded; compared with the raw names).
    pub fn raw_query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The value of the route parameter `name` (`{name}` or `{*name}` in
    /// the route the request matched), percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find_map(|(k, v)| (&**k == name).then_some(&**v))
    }

    /// Every route parameter as `(name, value)`, in the route's order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The request headers (WebSocket).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The value of one cookie from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all("cookie")
            .flat_map(|h| h.split(';'))
            .find_map(|c| {
                c.trim()
                    .split_once('=')
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v)
            })
    }

    /// The negotiated subprotocol (WebSocket).
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }
}
