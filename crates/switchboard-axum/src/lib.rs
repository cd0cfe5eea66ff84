//! Mount switchboard components on axum routes: one port for the REST API,
//! the pages and the sockets.
//!
//! The upgrade is axum's (hyper's): the request reaches a route of your
//! router, with its middleware and extractors. The frames are switchboard's
//! own, over the upgraded stream, and each connection belongs to a running
//! switchboard server ([`ServerHandle`]), as one of its listeners' would:
//! the same [`Config`](switchboard_core::Config) limits, counters, hubs,
//! slow-consumer policy and graceful shutdown (1001). The request is judged
//! as the standalone WebSocket transport judges its own (upgrade headers,
//! version, key, origin policy, subprotocols, handshake hook), by a
//! [`WsTransport`] that holds those settings.
//!
//! One line per socket route, with [`ws`]:
//!
//! ```no_run
//! use axum::Router;
//! use axum::routing::get;
//! use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
//!
//! struct Echo;
//!
//! impl MessageComponent for Echo {
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         conn.send(msg)?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! // A switchboard server with no listener of its own: axum accepts.
//! let sockets = Server::builder().start().await?;
//! let app = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .route("/echo", switchboard::axum::ws(&sockets, Echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // No Nagle delay for real-time traffic, as switchboard's own listeners.
//! let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
//!     let _ = tcp.set_nodelay(true);
//! });
//! // With the peers' addresses, for the IP filter and the per-IP limits.
//! let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! With axum's extractors in front (state, headers, path parameters, what
//! a middleware put in the request's extensions), a handler takes a
//! [`WsUpgrade`] and attaches typed state to the connection before its
//! `on_open`:
//!
//! ```no_run
//! use axum::Extension;
//! use axum::response::Response;
//! use switchboard::axum::WsUpgrade;
//! use switchboard::ws::WsTransport;
//! use switchboard::ServerHandle;
//!
//! #[derive(Clone)]
//! struct User(String);
//!
//! async fn private(
//!     upgrade: WsUpgrade,
//!     Extension(user): Extension<User>, // put there by an auth middleware
//!     Extension((server, transport)): Extension<(ServerHandle, WsTransport)>,
//! ) -> Response {
//!     upgrade.with(user).serve(&server, &transport).await
//! }
//! ```
//!
//! Route parameters of the axum route (`/rooms/{room}`) reach the
//! handshake hook and the component through
//! [`Connection::param`](switchboard_core::Connection::param), unless the
//! transport's own routes find some. Under `Router::nest`, axum strips the
//! prefix: the transport's routes and `TransportInfo::path` see the path
//! within the nested router. Upgrades are HTTP/1.1 ones; a WebSocket over
//! HTTP/2 (RFC 8441) is refused. The peer's address comes
//! from axum's `ConnectInfo` (serve the router with
//! `into_make_service_with_connect_info::<SocketAddr>()`); without it the
//! server sees `0.0.0.0:0`, and its per-IP limits and IP filter see every
//! peer as that one address (a warning says so, once). Each upgrade takes
//! its place under the server's limits before it is answered: a peer over
//! a limit gets 503, one the IP filter denies 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Once;

use axum::body::Body;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use switchboard_core::{Extensions, IntoComponent, Refusal, ServerHandle};
use switchboard_ws::{HttpAnswer, UpgradeRequest, WsTransport};

/// A route that serves `component` over WebSocket on `server`, with the
/// standalone transport's default settings (same-host origin policy, no
/// subprotocols, no handshake hook): `.route("/chat", ws(&server, chat))`.
/// Any method reaches it, so that a request that is not an upgrade gets
/// the same answers as from the standalone transport (405 for a `POST`,
/// 426 for a plain `GET`).
pub fn ws<S, K>(server: &ServerHandle, component: impl IntoComponent<K>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
    K: ?Sized,
{
    mount(server, WsTransport::new(component))
}

/// A route that serves what `transport` routes to over WebSocket on
/// `server`, with its settings (origin policy, subprotocols, handshake
/// hook, buffer sizes). The transport's routes see the request's path: a
/// transport built with [`WsTransport::new`] or a fallback serves any path
/// it is mounted on.
pub fn mount<S>(server: &ServerHandle, transport: WsTransport) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let server = server.clone();
    any(move |upgrade: WsUpgrade| async move { upgrade.serve(&server, &transport).await })
}

/// An extractor for a WebSocket upgrade request that a switchboard server
/// will serve: take it in a handler beside other extractors, attach state
/// with [`with`](Self::with), and answer with [`serve`](Self::serve). It
/// never rejects: a request that is not a valid upgrade gets its answer
/// (400, 405, 426, ...) from `serve`.
pub struct WsUpgrade {
    request: UpgradeRequest,
    on_upgrade: Option<OnUpgrade>,
    peer: SocketAddr,
    /// axum's path parameters did not decode as UTF-8.
    bad_params: bool,
    state: Extensions,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |p| p.as_str());
        let mut request = UpgradeRequest::new(
            parts.method.as_str(),
            target,
            parts.version == Version::HTTP_11,
        );
        for (name, value) in &parts.headers {
            request = request.header(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        }
        let peer = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(info) => info.0,
            None => {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "no ConnectInfo<SocketAddr>: switchboard sees every peer as 0.0.0.0:0 \
                         (serve the router with into_make_service_with_connect_info)"
                    );
                });
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        // axum's own parameters (`/rooms/{room}`), percent-decoded; none on
        // a route without any. A value that is not UTF-8 once decoded is
        // refused, as the standalone transport refuses it.
        let mut bad_params = false;
        match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => {
                let params = params.iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
                request = request.params(params.collect::<Vec<_>>());
            }
            Err(RawPathParamsRejection::InvalidUtf8InPathParam(_)) => bad_params = true,
            Err(_) => {}
        }
        Ok(WsUpgrade {
            request,
            on_upgrade: parts.extensions.remove::<OnUpgrade>(),
            peer,
            bad_params,
            state: Extensions::default(),
        })
    }
}

impl WsUpgrade {
    /// Attaches `value` to the connection's state (one value per type),
    /// visible from `on_open` on.
    #[must_use]
    pub fn with<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// The peer's address (`0.0.0.0:0` without axum's `ConnectInfo`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Takes a place for the connection under `server`'s limits, judges
    /// the request with `transport` (as [`WsTransport::upgrade`] does)
    /// and, if it is a valid upgrade, answers `101` and serves the
    /// upgraded stream on `server`. Otherwise it answers what the
    /// standalone transport would, or, for a peer the server refuses
    /// before any handshake, 403 (the IP filter) or 503 (a connection
    /// limit, shutdown), before the handshake hook runs.
    pub async fn serve(self, server: &ServerHandle, transport: &WsTransport) -> Response {
        let reservation = match server.reserve(self.peer) {
            Ok(reservation) => reservation,
            Err(refusal) => {
                let status = match refusal {
                    Refusal::Denied => StatusCode::FORBIDDEN,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                return (status, format!("{refusal}\n")).into_response();
            }
        };
        if self.bad_params {
            let reason = "a path parameter is not UTF-8 once decoded\n";
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
        let pending = match transport.upgrade(self.peer, self.request).await {
            Ok(pending) => pending,
            Err(answer) => {
                tracing::debug!(peer = %self.peer, status = answer.status, reason = %answer.reason, "upgrade refused");
                return answer_response(answer);
            }
        };
        let Some(on_upgrade) = self.on_upgrade else {
            // A valid upgrade request on a connection hyper cannot upgrade
            // (a test harness that calls the router without a server).
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this connection cannot be upgraded\n",
            )
                .into_response();
        };
        let pending = pending.with_extensions(self.state);
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (name, value) in pending.response_headers() {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        let peer = self.peer;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => pending.serve(reservation, TokioIo::new(upgraded)),
                Err(err) => tracing::debug!(%peer, error = %err, "upgrade failed"),
            }
        });
        response
    }
}

fn answer_response(answer: HttpAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(name, value);
        }
    }
    response
}
