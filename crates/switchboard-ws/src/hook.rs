//! The handshake hook: user code that accepts or rejects an upgrade.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use switchboard_core::{Extensions, Headers, TransportInfo};

/// The upgrade request as the handshake hook sees it: the peer, the path,
/// query, the route's parameters, headers and cookies, and the subprotocol
/// the server picked. Each accessor reads as its namesake on
/// [`TransportInfo`] does.
///
/// The same facts reach the component later through
/// [`Connection::transport`](switchboard_core::Connection::transport).
#[derive(Clone, Debug)]
pub struct Request {
    pub(crate) peer: SocketAddr,
    pub(crate) info: TransportInfo,
}

impl Request {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The request path, without the query, as the request spelled it.
    pub fn path(&self) -> &str {
        self.info.path()
    }

    /// The query string without `?`, if there was one.
    pub fn query(&self) -> Option<&str> {
        self.info.query()
    }

    /// One query parameter, percent-decoded
    /// ([`TransportInfo::query_param`]).
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.info.query_param(name)
    }

    /// One query parameter as the request spelled it.
    pub fn raw_query_param(&self, name: &str) -> Option<&str> {
        self.info.raw_query_param(name)
    }

    /// The value of the route parameter `name` (`/rooms/{room}`),
    /// percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.info.param(name)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.info.headers().get(name)
    }

    /// All request headers.
    pub fn headers(&self) -> Headers<'_> {
        self.info.headers()
    }

    /// One cookie from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.info.cookie(name)
    }

    /// The subprotocol the server selected, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.info.subprotocol()
    }

    /// Everything above as the core's [`TransportInfo`].
    pub fn info(&self) -> &TransportInfo {
        &self.info
    }
}

/// The hook's yes: the upgrade goes ahead, with typed state for the
/// connection (see [`Connection::extension`](switchboard_core::Connection::extension)),
/// visible from `on_open` on.
/// [`on_handshake`](crate::WsTransportBuilder::on_handshake) has an example.
#[derive(Debug, Default)]
#[must_use]
pub struct Accept {
    pub(crate) extensions: Extensions,
}

impl Accept {
    /// Accepts with no state attached.
    pub fn new() -> Self {
        Accept::default()
    }

    /// Attaches `value` to the connection (one value per type).
    pub fn with<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// Attaches every value of `extensions`.
    pub fn with_extensions(mut self, extensions: Extensions) -> Self {
        self.extensions.extend(extensions);
        self
    }
}

/// The hook's no: the peer gets this HTTP status (and a short plain-text
/// body) instead of the upgrade, and no component hears of it.
///
/// ```
/// use switchboard::ws::Reject;
///
/// let no = Reject::unauthorized().reason("missing token");
/// assert_eq!(no.status(), 401);
/// assert_eq!(Reject::new(429).status(), 429);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    status: u16,
    reason: Cow<'static, str>,
}

impl Reject {
    /// Rejects with `status`. Statuses outside 400..=599 are sent as 403,
    /// since anything else would not refuse the upgrade.
    pub fn new(status: u16) -> Self {
        Reject {
            status: Some(status)
                .filter(|s| (400..=599).contains(s))
                .unwrap_or(403),
            reason: Cow::Borrowed(""),
        }
    }

    /// 401 Unauthorized: no or bad credentials.
    pub fn unauthorized() -> Self {
        Reject::new(401)
    }

    /// 403 Forbidden: known peer, not allowed.
    pub fn forbidden() -> Self {
        Reject::new(403)
    }

    /// Sets the body of the response (plain text; keep it short and free of
    /// secrets, the peer reads it).
    #[must_use]
    pub fn reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = reason.into();
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body text.
    pub fn reason_text(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

pub(crate) type HookFuture = Pin<Box<dyn Future<Output = Result<Accept, Reject>> + Send>>;

/// A type-erased hook, shared by every handshake of a transport.
pub(crate) type Hook = Arc<dyn Fn(Request) -> HookFuture + Send + Sync>;
