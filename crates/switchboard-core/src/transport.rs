//! The seam between the core runtime and a wire protocol.
//!
//! A [`Transport`] turns an accepted byte stream into a [`TransportConn`]: a
//! message stream and sink with a close operation. The core owns everything
//! else: the accept loop, limits, the connection lifecycle, queues and
//! shutdown. A new transport (QUIC, Unix sockets) is a crate, not a fork;
//! one over a byte stream builds on [`io`]: read and write buffers, the
//! keepalive checks and client connects, shared by the WebSocket and TCP
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
use std::fmt;
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

/// A request's headers, as [`TransportInfo::headers`] presents them: names
/// lower-cased, in request order.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    info: &'a TransportInfo,
}

impl<'a> Headers<'a> {
    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter()
            .find_map(|(n, v)| n.eq_ignore_ascii_case(name).then_some(v))
    }

    /// Every value of header `name` (case-insensitive), in request order.
    pub fn get_all(&self, name: &'a str) -> impl Iterator<Item = &'a str> + use<'a> {
        self.iter()
            .filter_map(move |(n, v)| n.eq_ignore_ascii_case(name).then_some(v))
    }

    /// All headers as `(lower-case name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + Clone + use<'a> {
        let info = self.info;
        (0..self.len()).map(move |i| info.pair(info.first_header() + 2 * i))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        (self.info.strings() - self.info.first_header()) / 2
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
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
/// use switchboard::{BoxError, Connection, Message, MessageComponent, TransportInfo};
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
///     .with_headers([("User-Agent", "curl/8"), ("Cookie", "sid=abc; theme=dark")]);
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
///
/// The builders (`with_path`, `with_query`, ...) panic if the request's
/// strings together exceed 4 GiB; a WebSocket request head is limited to a
/// few KiB.
#[derive(Clone)]
pub struct TransportInfo {
    kind: &'static str,
    /// The request's strings one after another, in one allocation (every
    /// connection keeps its request for its component, idle or not): the
    /// path, the query, the subprotocol, each route parameter's name and
    /// value, each header's lower-cased name and value.
    text: Box<str>,
    /// `[header word, end of path, end of query, end of subprotocol,
    /// end of each parameter's name and value, end of each header's name
    /// and value]`: where each string of `text` ends; empty for a
    /// transport without requests (every string is then empty). The header word (see `Layout`) says how many route
    /// parameters there are and whether there is a query and a subprotocol
    /// (either can be present and empty). Kept here rather than in fields
    /// of their own: 8 bytes less in every connection's state.
    ends: Box<[u32]>,
}

/// The header word of `TransportInfo::ends`.
#[derive(Clone, Copy)]
struct Layout {
    params: u32,
    has_query: bool,
    has_subprotocol: bool,
}

impl Layout {
    const QUERY: u32 = 1;
    const SUBPROTOCOL: u32 = 2;

    fn word(self) -> u32 {
        self.params << 2
            | if self.has_query { Self::QUERY } else { 0 }
            | if self.has_subprotocol {
                Self::SUBPROTOCOL
            } else {
                0
            }
    }

    fn of(word: u32) -> Self {
        Layout {
            params: word >> 2,
            has_query: word & Self::QUERY != 0,
            has_subprotocol: word & Self::SUBPROTOCOL != 0,
        }
    }
}

/// The strings before the route parameters: path, query, subprotocol.
const FIXED: usize = 3;

/// A request's parts, borrowed, to build a [`TransportInfo`] from.
struct Parts<'a, P, H> {
    path: &'a str,
    query: Option<&'a str>,
    subprotocol: Option<&'a str>,
    params: P,
    headers: H,
}

impl TransportInfo {
    /// Info for a transport of the given kind (`"ws"`, `"tcp"`, `"memory"`).
    pub fn new(kind: &'static str) -> Self {
        TransportInfo {
            kind,
            text: Box::default(),
            ends: Box::default(),
        }
    }

    /// Builds the info from `parts`; header names are lower-cased.
    ///
    /// # Panics
    ///
    /// If the strings together exceed 4 GiB (a request never comes near:
    /// the WebSocket handshake reads at most a few KiB).
    fn build<'a, P, H>(kind: &'static str, parts: Parts<'a, P, H>) -> Self
    where
        P: Iterator<Item = (&'a str, &'a str)> + Clone,
        H: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        let pairs = |it: P| it.flat_map(|(n, v)| [n, v]);
        let headers = |it: H| it.flat_map(|(n, v)| [n, v]);
        let fixed = [
            parts.path,
            parts.query.unwrap_or(""),
            parts.subprotocol.unwrap_or(""),
        ];
        let all = || {
            fixed
                .into_iter()
                .chain(pairs(parts.params.clone()))
                .chain(headers(parts.headers.clone()))
        };
        let params = parts.params.clone().count();
        let layout = Layout {
            params: u32::try_from(params)
                .ok()
                .filter(|&n| n <= u32::MAX >> 2)
                .expect("too many route parameters"),
            has_query: parts.query.is_some(),
            has_subprotocol: parts.subprotocol.is_some(),
        };
        let mut text = String::with_capacity(all().map(str::len).sum());
        let mut ends = Vec::with_capacity(1 + all().count());
        ends.push(layout.word());
        let first_header = FIXED + 2 * params;
        for (i, string) in all().enumerate() {
            let start = text.len();
            text.push_str(string);
            if i >= first_header && (i - first_header).is_multiple_of(2) {
                text[start..].make_ascii_lowercase();
            }
            let end = u32::try_from(text.len()).expect("a request's strings exceed 4 GiB");
            ends.push(end);
        }
        TransportInfo {
            kind,
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// This info's parts, to build a changed copy from.
    fn parts(
        &self,
    ) -> Parts<
        '_,
        impl Iterator<Item = (&str, &str)> + Clone,
        impl Iterator<Item = (&str, &str)> + Clone,
    > {
        Parts {
            path: self.path(),
            query: self.query(),
            subprotocol: self.subprotocol(),
            params: self.params(),
            headers: self.headers().iter(),
        }
    }

    fn layout(&self) -> Layout {
        Layout::of(self.ends.first().copied().unwrap_or(0))
    }

    /// The string at `index` (see `text`).
    fn string(&self, index: usize) -> &str {
        // `ends[0]` is the header word; string `i` ends at `ends[i + 1]`.
        let Some(&end) = self.ends.get(index + 1) else {
            return "";
        };
        let start = match index {
            0 => 0,
            _ => self.ends[index] as usize,
        };
        &self.text[start..end as usize]
    }

    /// The strings at `index` and the one after.
    fn pair(&self, index: usize) -> (&str, &str) {
        (self.string(index), self.string(index + 1))
    }

    /// How many strings there are (with the three fixed ones).
    fn strings(&self) -> usize {
        self.ends.len().saturating_sub(1).max(FIXED)
    }

    fn first_header(&self) -> usize {
        FIXED + 2 * self.layout().params as usize
    }

    /// Sets the request path.
    #[must_use]
    pub fn with_path(self, path: impl Into<Box<str>>) -> Self {
        let path = path.into();
        let parts = Parts {
            path: &path,
            ..self.parts()
        };
        Self::build(self.kind, parts)
    }

    /// Sets the query string (without `?`).
    #[must_use]
    pub fn with_query(self, query: impl Into<Box<str>>) -> Self {
        let query = query.into();
        let parts = Parts {
            query: Some(&query),
            ..self.parts()
        };
        Self::build(self.kind, parts)
    }

    /// Sets the route's parameters (name, percent-decoded value), as a
    /// transport that routes by pattern found them.
    #[must_use]
    pub fn with_params<N, V>(self, params: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let params: Vec<(N, V)> = params.into_iter().collect();
        let this = self.parts();
        let parts = Parts {
            path: this.path,
            query: this.query,
            subprotocol: this.subprotocol,
            params: params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())),
            headers: this.headers,
        };
        Self::build(self.kind, parts)
    }

    /// Sets the request headers (names are kept lower-cased).
    #[must_use]
    pub fn with_headers<N, V>(self, headers: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let headers: Vec<(N, V)> = headers.into_iter().collect();
        let this = self.parts();
        let parts = Parts {
            path: this.path,
            query: this.query,
            subprotocol: this.subprotocol,
            params: this.params,
            headers: headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref())),
        };
        Self::build(self.kind, parts)
    }

    /// Sets the negotiated subprotocol.
    #[must_use]
    pub fn with_subprotocol(self, protocol: impl Into<Box<str>>) -> Self {
        let protocol = protocol.into();
        let parts = Parts {
            subprotocol: Some(&protocol),
            ..self.parts()
        };
        Self::build(self.kind, parts)
    }

    /// The transport kind: `"ws"`, `"tcp"`, `"memory"`, ...
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The request path, without the query, as the request spelled it
    /// (not percent-decoded); `""` for a transport without requests (raw
    /// TCP).
    pub fn path(&self) -> &str {
        self.string(0)
    }

    /// The query string without `?`, as the request spelled it.
    pub fn query(&self) -> Option<&str> {
        self.layout().has_query.then(|| self.string(1))
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
        self.params().find_map(|(k, v)| (k == name).then_some(v))
    }

    /// Every route parameter as `(name, value)`, in the route's order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        (0..self.layout().params as usize).map(move |i| self.pair(FIXED + 2 * i))
    }

    /// The request headers (WebSocket).
    pub fn headers(&self) -> Headers<'_> {
        Headers { info: self }
    }

    /// The value of one cookie from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers()
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
        self.layout().has_subprotocol.then(|| self.string(2))
    }
}

impl fmt::Debug for TransportInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportInfo")
            .field("kind", &self.kind)
            .field("path", &self.path())
            .field("query", &self.query())
            .field("params", &self.params().collect::<Vec<_>>())
            .field("headers", &self.headers())
            .field("subprotocol", &self.subprotocol())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_without_requests_has_empty_strings_and_no_allocation() {
        let info = TransportInfo::new("tcp");
        assert_eq!(info.kind(), "tcp");
        assert_eq!(info.path(), "");
        assert_eq!(info.query(), None);
        assert_eq!(info.subprotocol(), None);
        assert_eq!(info.params().count(), 0);
        assert!(info.headers().is_empty());
        assert!(info.text.is_empty() && info.ends.is_empty());
    }

    #[test]
    fn the_builders_set_each_part_in_any_order() {
        let info = TransportInfo::new("ws")
            .with_headers([("X-One", "1"), ("Cookie", "a=b"), ("x-one", "2")])
            .with_query("")
            .with_params([("room", "news"), ("id", "")])
            .with_subprotocol("chat")
            .with_path("/rooms/news");
        assert_eq!(info.path(), "/rooms/news");
        // Present and empty is not absent.
        assert_eq!(info.query(), Some(""));
        assert_eq!(info.subprotocol(), Some("chat"));
        assert_eq!(
            info.params().collect::<Vec<_>>(),
            [("room", "news"), ("id", "")]
        );
        assert_eq!(info.param("id"), Some(""));
        assert_eq!(info.param("nope"), None);
        let headers = info.headers();
        assert_eq!(headers.len(), 3);
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [("x-one", "1"), ("cookie", "a=b"), ("x-one", "2")]
        );
        assert_eq!(headers.get("X-ONE"), Some("1"));
        assert_eq!(headers.get_all("x-one").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(info.cookie("a"), Some("b"));
        // Setting a part again replaces it and keeps the others.
        let info = info.with_query("q=1").with_params([("room", "sport")]);
        assert_eq!(info.query(), Some("q=1"));
        assert_eq!(info.param("room"), Some("sport"));
        assert_eq!(info.param("id"), None);
        assert_eq!(info.headers().len(), 3);
        assert_eq!(info.path(), "/rooms/news");
        assert_eq!(
            format!("{info:?}"),
            "TransportInfo { kind: \"ws\", path: \"/rooms/news\", query: Some(\"q=1\"), \
             params: [(\"room\", \"sport\")], headers: {\"x-one\": \"1\", \"cookie\": \"a=b\", \
             \"x-one\": \"2\"}, subprotocol: Some(\"chat\") }"
        );
    }
}
