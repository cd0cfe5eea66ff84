//! The [`Transport`] implementation: handshake, then a [`WsConnection`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_core::transport::{Accepted, Transport};
use switchboard_core::{Config, DynComponent, Extensions, IntoComponent, TransportInfo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{
    DEFAULT_MAX_REQUEST_HEAD, DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE, OriginPolicy,
    Page, WsTransportBuilder,
};
use crate::deflate;
use crate::error::Error;
use crate::frame::Role;
use crate::handshake::{self, NoUpgrade};
use crate::hook::{Hook, Reject};
use crate::router::Router;
use crate::ws_connection::WsConnection;

/// The WebSocket transport: give it to
/// [`ServerBuilder::bind`](switchboard_core::ServerBuilder::bind).
///
/// It answers the HTTP side of each connection itself: routes by path
/// (404 for unknown paths), serves static pages to plain `GET`s (426 for a
/// plain `GET` of a socket route), checks the `Origin` (403), validates the
/// upgrade (400, 426), selects a subprotocol and runs the handshake hook.
/// Limits come from the server's [`Config`]: message and frame size (close
/// 1009), a ping whenever the peer has been silent for `ping_interval`
/// (any message, ping or pong counts as traffic), a close (1001) after
/// `idle_timeout` of silence; invalid UTF-8 closes with 1007 and protocol
/// errors with 1002.
///
/// Cheap to clone (an `Arc` inside). Generic over the byte stream, so a TLS
/// layer can hand it a `TlsStream`. Routes may serve components of
/// different types, so it holds each as an `Arc<dyn DynComponent>`
/// ([`DynComponent`]): every handler call is one boxed future, next to
/// which the WebSocket framing costs far more. The [crate docs](crate)
/// start a server with it.
#[derive(Clone)]
pub struct WsTransport {
    pub(crate) shared: Arc<Shared>,
}

/// The built configuration, shared by every handshake.
pub(crate) struct Shared {
    pub(crate) routes: Router<Arc<dyn DynComponent>>,
    pub(crate) fallback: Option<Arc<dyn DynComponent>>,
    pub(crate) pages: Router<Page>,
    pub(crate) origins: OriginPolicy,
    pub(crate) subprotocols: Box<[Box<str>]>,
    pub(crate) hook: Option<Hook>,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) max_request_head: usize,
    /// permessage-deflate's settings, streams and recent messages.
    pub(crate) deflate: Option<Arc<deflate::Shared>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            routes: Router::default(),
            fallback: None,
            pages: Router::default(),
            origins: OriginPolicy::default(),
            subprotocols: Box::default(),
            hook: None,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            deflate: None,
        }
    }
}

impl WsTransport {
    /// Serves `component` (any form [`IntoComponent`] takes) on every
    /// path, with the default settings.
    pub fn new<K: ?Sized>(component: impl IntoComponent<K>) -> Self {
        // A fallback and the defaults always make a valid configuration.
        let built = WsTransportBuilder::default().fallback(component).build();
        built
            .unwrap_or_else(|err| unreachable!("default WsTransport configuration rejected: {err}"))
    }

    /// Starts a configuration with routes, pages, an origin policy, ...
    pub fn builder() -> WsTransportBuilder {
        WsTransportBuilder::default()
    }

    /// Routes a request and runs the handshake hook on it as an upgrade of
    /// that request would, without a socket: for unit tests of the hook's
    /// logic. `info` is what the client presents (path, query, headers,
    /// subprotocol), given to the hook as it is: the HTTP-level work of a
    /// real upgrade (checks of the method, origin and key, the choice of
    /// a subprotocol, dropping the handshake-only headers) is not done.
    /// Returns the request as the component will see it (with
    /// its route parameters) and the state the hook attached, which
    /// `TestServer::connect_with_state` (the test kit, feature `test-util`)
    /// takes; a path with no route is refused with 404, a route parameter
    /// that is not UTF-8 with 400.
    ///
    /// ```
    /// use std::net::SocketAddr;
    ///
    /// use switchboard::testing::TestServer;
    /// use switchboard::ws::{Accept, Reject, WsTransport};
    /// use switchboard::{BoxError, Connection, Message, MessageComponent, TransportInfo};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// struct Room;
    ///
    /// impl MessageComponent for Room {
    ///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
    ///         let User(name) = conn.extension::<User>().ok_or("no user")?;
    ///         let room = conn.param("room").unwrap_or("?");
    ///         conn.send(format!("{name} in {room}"))?;
    ///         Ok(())
    ///     }
    ///
    ///     async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let transport = WsTransport::builder()
    ///     .route("/rooms/{room}", Room)
    ///     .on_handshake(|req| async move {
    ///         match req.query_param("token").as_deref() {
    ///             Some("s3cret") => Ok(Accept::new().with(User("ann".into()))),
    ///             _ => Err(Reject::unauthorized()),
    ///         }
    ///     })
    ///     .build()?;
    /// let peer = SocketAddr::from(([127, 0, 0, 1], 50000));
    /// let request = |query: &str| {
    ///     TransportInfo::new("ws").with_path("/rooms/news").with_query(query.to_owned())
    /// };
    ///
    /// let refused = transport.admit(peer, request("token=guess")).await;
    /// assert_eq!(refused.err().map(|r| r.status()), Some(401));
    ///
    /// let (info, state) = transport.admit(peer, request("token=s3cret")).await.expect("admitted");
    /// let server = TestServer::new(Room);
    /// let mut client = server.connect_with_state(info, state).await;
    /// assert_eq!(client.recv().await, Some(Message::text("ann in news")));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn admit(
        &self,
        peer: SocketAddr,
        info: TransportInfo,
    ) -> Result<(TransportInfo, Extensions), Reject> {
        let route = handshake::route(&self.shared, info.path())
            .map_err(|_| Reject::new(400).reason(handshake::BAD_PARAM))?;
        let Some(route) = route else {
            return Err(Reject::new(404).reason("not found"));
        };
        let info = info.with_params(route.params);
        let extensions = handshake::run_hook(&self.shared, peer, &info).await?;
        Ok((info, extensions))
    }
}

impl<IO> Transport<IO> for WsTransport
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Conn = WsConnection<IO>;
    type Component = dyn DynComponent;

    async fn accept(
        &self,
        mut io: IO,
        peer: SocketAddr,
        config: &Config,
    ) -> switchboard_core::Result<Accepted<Self::Conn>> {
        // This crate's errors, which the core takes as handshake failures.
        let upgraded = async {
            let mut upgrade = match handshake::judge(&self.shared, &mut io, peer).await {
                Ok(upgrade) => upgrade,
                Err(NoUpgrade::Failed(err)) => return Err(err),
                Err(NoUpgrade::Answer(response)) => {
                    io.write_all(&response.to_bytes()).await?;
                    io.flush().await?;
                    io.shutdown().await?;
                    return Err(Error::Answered {
                        status: response.status,
                        reason: response.reason,
                    });
                }
            };
            let response = handshake::switching_protocols(&upgrade);
            io.write_all(&response).await?;
            io.flush().await?;
            let buffers = (self.shared.read_buffer_size, self.shared.write_buffer_size);
            let deflate = upgrade.per_message();
            let conn = WsConnection::new(
                io,
                Role::Server,
                config,
                buffers,
                &upgrade.leftover,
                deflate,
            );
            let mut accepted = Accepted::new(conn, upgrade.info, upgrade.component);
            accepted.extensions = upgrade.extensions;
            Ok::<_, Error>(accepted)
        };
        upgraded.await.map_err(Into::into)
    }
}

impl fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("WsTransport")
            .field("routes", &s.routes.routes().collect::<Vec<_>>())
            .field("fallback", &s.fallback.is_some())
            .field("pages", &s.pages.routes().collect::<Vec<_>>())
            .field("origins", &s.origins)
            .field("subprotocols", &s.subprotocols)
            .field("hook", &s.hook.is_some())
            .finish_non_exhaustive()
    }
}
