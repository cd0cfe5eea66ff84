//! Transport settings: routes, pages, origin policy, subprotocols, the
//! handshake hook and buffer sizes. Limits (message size, timeouts) stay in
//! the core [`Config`](switchboard_core::Config).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::{DynComponent, IntoComponent};

use crate::deflate::{self, Deflate};
use crate::error::{Error, Result};
use crate::hook::{Accept, HookFuture, Reject, Request};
use crate::router::Router;
use crate::transport::{Shared, WsTransport};

/// Default [`WsTransportBuilder::read_buffer_size`]: 4 KiB.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 4 * 1024;
/// Default [`WsTransportBuilder::write_buffer_size`]: 16 KiB.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 16 * 1024;
/// Default [`WsTransportBuilder::max_request_head`]: 8 KiB.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Which `Origin` headers may open a WebSocket (others get 403).
///
/// Browsers send `Origin` with every WebSocket request and let any page
/// connect anywhere; the server is the only one who can refuse a page from
/// another site (cross-site WebSocket hijacking). Requests without `Origin`
/// come from non-browser clients and are allowed under every policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginPolicy {
    /// Allow an `Origin` whose host (and port) equals the request's `Host`
    /// header: pages served by this server. The default.
    #[default]
    SameHost,
    /// Allow exactly these origins (`scheme://host[:port]`, compared
    /// case-insensitively).
    List(Vec<String>),
    /// Allow every origin. Only for servers that authenticate each
    /// connection by other means (a token, not a cookie).
    Any,
}

impl OriginPolicy {
    /// Whether a request with this `Origin` and `Host` may upgrade.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::List(list) => list
                .iter()
                .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin)),
            OriginPolicy::SameHost => {
                let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
                host.is_some_and(|host| {
                    !authority.is_empty() && authority.eq_ignore_ascii_case(host.trim())
                })
            }
        }
    }
}

/// A static page answered to plain HTTP `GET` (and `HEAD`) requests, so a
/// browser page and its WebSocket share one origin.
///
/// ```
/// use switchboard::ws::Page;
///
/// let page = Page::html("<!doctype html><title>hi</title>");
/// assert_eq!(page.content_type(), "text/html; charset=utf-8");
/// ```
#[derive(Clone, Debug)]
pub struct Page {
    content_type: Cow<'static, str>,
    body: Bytes,
}

impl Page {
    /// An HTML page (`text/html; charset=utf-8`).
    pub fn html(body: impl Into<Bytes>) -> Self {
        Page::new("text/html; charset=utf-8", body)
    }

    /// A page of any content type.
    pub fn new(content_type: impl Into<Cow<'static, str>>, body: impl Into<Bytes>) -> Self {
        Page {
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// The `Content-Type` sent with the page.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The page's bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// Builds a [`WsTransport`]; start with [`WsTransport::builder`].
///
/// Setters take and return the builder; [`build`](Self::build) checks the
/// whole configuration and reports the first mistake.
///
/// ```
/// use switchboard::ws::{OriginPolicy, Page, WsTransport};
/// use switchboard::{BoxError, Connection, Message, MessageComponent};
///
/// struct Echo;
///
/// impl MessageComponent for Echo {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         conn.send(msg)?;
///         Ok(())
///     }
/// }
///
/// let transport = WsTransport::builder()
///     .route("/echo", Echo)
///     .page("/", Page::html("<!doctype html><p>hello</p>"))
///     .origins(OriginPolicy::List(vec!["https://example.com".into()]))
///     .subprotocols(["echo.v1"])
///     .build()?;
/// # let _ = transport;
/// # Ok::<(), switchboard::ws::Error>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Default)]
pub struct WsTransportBuilder {
    routes: Vec<(String, Arc<dyn DynComponent>)>,
    pages: Vec<(String, Page)>,
    /// Everything else, as the transport will hold it (its routes and
    /// pages are indexed by `build`).
    shared: Shared,
}

impl WsTransportBuilder {
    /// Serves `component` to WebSocket requests whose path matches
    /// `path`; unknown paths get 404. Routes take any form of
    /// [`IntoComponent`] and may serve components of different types.
    ///
    /// A route is an exact path (`/chat`: no query, no trailing-slash
    /// folding), or a pattern with parameters that each take a whole
    /// segment: `{name}` matches one non-empty segment, and a last
    /// `{*name}` matches the rest of the path (one segment or more). The
    /// component reads their percent-decoded values with
    /// [`Connection::param`](switchboard_core::Connection::param), the
    /// handshake hook with [`Request::param`]; a request whose parameter
    /// is not UTF-8 once decoded gets 400. The values are the client's:
    /// they may hold `/` (from `%2F`, or the wildcard's several segments,
    /// empty ones included), `..` or any other character, so check them
    /// before using one as a file name or a key.
    ///
    /// An exact route wins over a pattern; between two patterns, the
    /// first segment where they differ decides: a literal wins over a
    /// parameter, a parameter over the wildcard. This holds whatever the
    /// order of the calls; two patterns that match the same paths
    /// (`/rooms/{a}`, `/rooms/{b}`) make [`build`](Self::build) fail.
    /// Paths are compared after escapes of unreserved characters are
    /// decoded (`/rooms/%6Cobby` is `/rooms/lobby`).
    ///
    /// ```
    /// use switchboard::ws::WsTransport;
    /// use switchboard::{BoxError, Connection, Message, MessageComponent};
    ///
    /// struct Room;
    ///
    /// impl MessageComponent for Room {
    ///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
    ///         // `ws://host/rooms/news%20desk` gives "news desk".
    ///         let room = conn.param("room").unwrap_or_default().to_owned();
    ///         conn.send(format!("welcome to {room}"))?;
    ///         Ok(())
    ///     }
    ///
    ///     async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let transport = WsTransport::builder()
    ///     .route("/rooms/{room}", Room)
    ///     .route("/rooms/lobby", Room) // exact: wins for this one path
    ///     .route("/files/{*path}", Room)
    ///     .build()?;
    /// # drop(transport);
    /// # Ok::<(), switchboard::ws::Error>(())
    /// ```
    pub fn route<K: ?Sized>(
        mut self,
        path: impl Into<String>,
        component: impl IntoComponent<K>,
    ) -> Self {
        self.routes.push((path.into(), component.into_dyn()));
        self
    }

    /// Serves `component` on every path that has no route of its own; it
    /// is taken as in [`route`](Self::route).
    pub fn fallback<K: ?Sized>(mut self, component: impl IntoComponent<K>) -> Self {
        self.shared.fallback = Some(component.into_dyn());
        self
    }

    /// Answers plain HTTP `GET`/`HEAD` requests for `path` with `page`. A
    /// plain request for a WebSocket route without a page gets
    /// 426 Upgrade Required. `path` is matched as a
    /// [`route`](Self::route) is, so a page can serve a pattern
    /// (`/rooms/{room}`) too.
    pub fn page(mut self, path: impl Into<String>, page: Page) -> Self {
        self.pages.push((path.into(), page));
        self
    }

    /// Which origins may connect. Default [`OriginPolicy::SameHost`].
    pub fn origins(mut self, policy: OriginPolicy) -> Self {
        self.shared.origins = policy;
        self
    }

    /// The subprotocols this server speaks, most preferred first. The first
    /// one the client also offers is selected; if the client offers none of
    /// them, the upgrade goes ahead without a subprotocol (the handshake hook
    /// can refuse that). Default: none.
    pub fn subprotocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let protocols = protocols.into_iter().map(|p| p.into().into_boxed_str());
        self.shared.subprotocols = protocols.collect();
        self
    }

    /// An async check run for every upgrade request that passed routing and
    /// the origin policy, before the `101` is sent and before `on_open`.
    /// Return [`Accept`] (optionally carrying typed state for the
    /// connection's extensions) or [`Reject`] with an HTTP status.
    ///
    /// It runs within [`Config::handshake_timeout`](switchboard_core::Config::handshake_timeout).
    /// Default: accept everything.
    ///
    /// ```
    /// use switchboard::ws::{Accept, Reject, WsTransport};
    /// # use switchboard::{BoxError, Connection, Message, MessageComponent};
    /// # struct Chat;
    /// # impl MessageComponent for Chat {
    /// #     async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> { Ok(()) }
    /// # }
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// let transport = WsTransport::builder()
    ///     .route("/chat", Chat)
    ///     .on_handshake(|req| async move {
    ///         match req.cookie("session") {
    ///             Some("secret") => Ok(Accept::new().with(User("ann".into()))),
    ///             _ => Err(Reject::unauthorized()),
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = transport;
    /// # Ok::<(), switchboard::ws::Error>(())
    /// ```
    pub fn on_handshake<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Accept, Reject>> + Send + 'static,
    {
        self.shared.hook = Some(Arc::new(move |req| -> HookFuture { Box::pin(hook(req)) }));
        self
    }

    /// Room for the first read when data arrives on a connection, in
    /// bytes. The read buffer exists only while data flows (an idle
    /// connection holds none) and is never zero-filled; the room doubles,
    /// up to 64 KiB, while reads fill it, and a frame's whole
    /// length is reserved once its header is read, so large messages
    /// arrive in as few reads as the socket allows. It is not a limit:
    /// message and frame sizes are limited by the server's `Config`.
    /// Default 4 KiB.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.shared.read_buffer_size = bytes;
        self
    }

    /// Small outbound frames are copied into a write buffer until this many
    /// bytes are pending before a socket write; payloads over 4 KiB are
    /// written from their own memory (vectored writes), up to 256 KiB per
    /// write. Every batch is flushed at its end anyway, and the buffer is
    /// let go once it is written. Default 16 KiB.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.shared.write_buffer_size = bytes;
        self
    }

    /// Largest HTTP request head (request line and headers) accepted;
    /// larger requests get 431. Default 8 KiB.
    pub fn max_request_head(mut self, bytes: usize) -> Self {
        self.shared.max_request_head = bytes;
        self
    }

    /// Accepts permessage-deflate (RFC 7692) from clients that offer it
    /// (browsers do), with `settings`; off by default. Inflated messages
    /// count against [`Config::max_message_size`](switchboard_core::Config)
    /// as they inflate (1009 past it). See [`Deflate`] for what idle
    /// connections and broadcasts cost.
    ///
    /// ```
    /// use switchboard::ws::{Deflate, WsTransport};
    /// # use switchboard::{BoxError, Connection, Message, MessageComponent};
    /// # struct Chat;
    /// # impl MessageComponent for Chat {
    /// #     async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> { Ok(()) }
    /// # }
    ///
    /// let ws = WsTransport::builder()
    ///     .route("/chat", Chat)
    ///     .deflate(Deflate::new())
    ///     .build()?;
    /// # let _ = ws;
    /// # Ok::<(), switchboard::ws::Error>(())
    /// ```
    pub fn deflate(mut self, settings: Deflate) -> Self {
        self.shared.deflate = Some(deflate::Shared::new(settings));
        self
    }

    /// Checks the configuration and builds the transport.
    pub fn build(self) -> Result<WsTransport> {
        let mut shared = self.shared;
        if self.routes.is_empty() && shared.fallback.is_none() {
            return Err(Error::NoRoutes);
        }
        shared.routes = Router::new(self.routes)?;
        shared.pages = Router::new(self.pages)?;
        if let Some(protocol) = shared.subprotocols.iter().find(|p| !is_token(p)) {
            return Err(Error::InvalidSubprotocol(protocol.to_string()));
        }
        if shared.read_buffer_size == 0 {
            return Err(Error::Config("read_buffer_size must be at least 1"));
        }
        if shared.write_buffer_size >= usize::MAX / 2 {
            return Err(Error::Config("write_buffer_size is too large"));
        }
        if shared.max_request_head < 256 {
            return Err(Error::Config("max_request_head must be at least 256 bytes"));
        }
        Ok(WsTransport {
            shared: Arc::new(shared),
        })
    }
}

impl fmt::Debug for WsTransportBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        let routes: Vec<_> = self.routes.iter().map(|r| &r.0).collect();
        let pages: Vec<_> = self.pages.iter().map(|p| &p.0).collect();
        f.debug_struct("WsTransportBuilder")
            .field("routes", &routes)
            .field("fallback", &s.fallback.is_some())
            .field("pages", &pages)
            .field("origins", &s.origins)
            .field("subprotocols", &s.subprotocols)
            .field("hook", &s.hook.is_some())
            .field("read_buffer_size", &s.read_buffer_size)
            .field("write_buffer_size", &s.write_buffer_size)
            .field("max_request_head", &s.max_request_head)
            .field("deflate", &s.deflate.as_ref().map(|d| d.settings()))
            .finish()
    }
}

/// An RFC 7230 token: what RFC 6455 allows as a subprotocol name.
fn is_token(s: &str) -> bool {
    let separator = |b| b"()<>@,;:\\\"/[]?={}".contains(&b);
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !separator(b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchboard_core::{BoxError, Connection, Message, MessageComponent};

    /// A component that does nothing.
    pub(crate) struct Quiet;

    impl MessageComponent for Quiet {
        async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn addr(component: &Arc<dyn DynComponent>) -> *const () {
        Arc::as_ptr(component).cast()
    }

    #[test]
    fn routes_take_a_value_an_arc_or_a_trait_object() {
        let shared = Arc::new(Quiet);
        let object: Arc<dyn DynComponent> = Arc::new(Quiet);
        let transport = WsTransport::builder()
            .route("/value", Quiet)
            .route("/arc", shared.clone())
            .route("/object", object.clone())
            .fallback(shared.clone())
            .build()
            .unwrap();
        let config = &transport.shared;
        assert_eq!(config.routes.routes().count(), 3);
        // Shared handles are kept as given: the same component, not a copy
        // or a wrapper.
        let shared_addr = Arc::as_ptr(&shared).cast::<()>();
        let route = |path| config.routes.find(path).unwrap().unwrap().value;
        assert_eq!(addr(route("/arc")), shared_addr);
        assert_eq!(addr(config.fallback.as_ref().unwrap()), shared_addr);
        assert_eq!(addr(route("/object")), addr(&object));
        assert_eq!(Arc::strong_count(&shared), 3);
    }

    #[test]
    fn origins() {
        let (same, host) = (OriginPolicy::SameHost, Some("127.0.0.1:8080"));
        assert!(same.allows(None, host));
        assert!(same.allows(Some("http://127.0.0.1:8080"), host));
        assert!(same.allows(Some("https://Example.com"), Some("example.com")));
        for origin in ["http://evil.example", "http://127.0.0.1:9999", "null"] {
            assert!(!same.allows(Some(origin), host), "{origin}");
        }
        assert!(!same.allows(Some("http://127.0.0.1:8080"), None));
        let listed = OriginPolicy::List(vec!["https://app.example/".into()]);
        assert!(listed.allows(Some("https://APP.example"), Some("ws.example")));
        assert!(!listed.allows(Some("https://other.example"), Some("ws.example")));
        assert!(OriginPolicy::Any.allows(Some("null"), None));
    }

    #[test]
    fn tokens() {
        assert!(is_token("chat.v1"));
        assert!(!is_token(""));
        for separator in "()<>@,;:\\\"/[]?={} \t".chars() {
            assert!(!is_token(&format!("a{separator}b")), "{separator:?}");
        }
    }
}
