//! Upgrades made by another HTTP server: the request it received is judged
//! as this transport judges its own, and the upgraded stream is served by a
//! running [`ServerHandle`].

use std::net::SocketAddr;

use bytes::Bytes;
use switchboard_core::transport::Accepted;
use switchboard_core::{Extensions, ServerHandle, TransportInfo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::Role;
use crate::handshake::{self, Head};
use crate::transport::WsTransport;
use crate::ws_connection::WsConnection;

/// An upgrade request that another HTTP server received (hyper, axum, a
/// server of your own), as [`WsTransport::upgrade`] judges it.
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    head: Head,
}

impl UpgradeRequest {
    /// A request with `method` for `target` (the path and, after `?`, the
    /// query, as the request line spelled them); `http11` when it came
    /// as HTTP/1.1 (an upgrade needs it).
    pub fn new(method: &str, target: &str, http11: bool) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (target, None),
        };
        UpgradeRequest {
            head: Head {
                method: method.to_owned(),
                path: path.to_owned(),
                query,
                http11,
                headers: Vec::new(),
            },
        }
    }

    /// Adds a header, in the order the request sent them (repeated
    /// headers are checked as the standalone transport checks them).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.head.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// An upgrade this transport agreed to: answer `101 Switching Protocols`
/// with [`response_headers`](Self::response_headers), then hand the
/// upgraded stream to [`serve`](Self::serve).
pub struct PendingUpgrade {
    upgrade: handshake::Upgrade,
    subprotocol: Option<String>,
    buffers: (usize, usize),
}

impl PendingUpgrade {
    /// The headers of the `101` answer: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept` and the chosen `Sec-WebSocket-Protocol`.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "Upgrade".to_owned()),
            ("Sec-WebSocket-Accept", self.upgrade.accept_key.clone()),
        ];
        if let Some(protocol) = &self.subprotocol {
            headers.push(("Sec-WebSocket-Protocol", protocol.clone()));
        }
        headers
    }

    /// What the component will see of the request (path, query, route
    /// parameters, headers, subprotocol).
    pub fn info(&self) -> &TransportInfo {
        &self.upgrade.info
    }

    /// Attaches `value` to the connection's state, visible from `on_open`
    /// on, as the handshake hook's `Accept::with` does.
    #[must_use]
    pub fn with<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.upgrade.extensions.insert(value);
        self
    }

    /// Attaches every value of `state` (see [`with`](Self::with)).
    #[must_use]
    pub fn with_extensions(mut self, state: Extensions) -> Self {
        self.upgrade.extensions.extend(state);
        self
    }

    /// Sets the route parameters the component reads with
    /// [`Connection::param`](switchboard_core::Connection::param), for a
    /// server that routed the request itself (name, percent-decoded
    /// value); they replace any the transport's own routes found.
    #[must_use]
    pub fn with_params<N, V>(mut self, params: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<Box<str>>,
        V: Into<Box<str>>,
    {
        let info = std::mem::replace(&mut self.upgrade.info, TransportInfo::new("ws"));
        self.upgrade.info = info.with_params(params);
        self
    }

    /// Serves the upgraded stream on `server`, as one of its own
    /// connections (its [`Config`](switchboard_core::Config) limits,
    /// counters and graceful shutdown; see
    /// [`ServerHandle::serve_connection`]). Returns false, dropping `io`,
    /// if the server refuses the connection (the IP filter, a limit) or is
    /// shutting down.
    pub fn serve<IO>(self, server: &ServerHandle, io: IO, peer: SocketAddr) -> bool
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake::Upgrade {
            component,
            info,
            extensions,
            ..
        } = self.upgrade;
        let conn = WsConnection::new(io, Role::Server, server.config(), self.buffers, &[]);
        let mut accepted = Accepted::new(conn, info, component);
        accepted.extensions = extensions;
        server.serve_connection(accepted, peer)
    }
}

/// The answer to send instead of an upgrade: a refusal (400, 403, 404,
/// 426, or the handshake hook's status) or, for a plain `GET` of a page
/// route, the page.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Headers besides `Content-Type` and `Content-Length`.
    pub headers: Vec<(&'static str, String)>,
    /// The body's `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
    /// Why, for the logs.
    pub reason: String,
}

impl WsTransport {
    /// Judges an upgrade request that another HTTP server received, as
    /// this transport judges its own: routing (and route parameters), the
    /// method, the upgrade headers, the version, the key, the origin
    /// policy, the subprotocols and the handshake hook. On `Ok`, answer
    /// `101` and serve the upgraded stream with [`PendingUpgrade::serve`];
    /// on `Err`, send the [`HttpAnswer`].
    pub async fn upgrade(
        &self,
        peer: SocketAddr,
        request: UpgradeRequest,
    ) -> Result<PendingUpgrade, HttpAnswer> {
        let upgrade = handshake::admit_head(&self.shared, request.head, peer)
            .await
            .map_err(handshake::Response::into_answer)?;
        Ok(PendingUpgrade {
            subprotocol: upgrade.info.subprotocol().map(str::to_owned),
            upgrade,
            buffers: (self.shared.read_buffer_size, self.shared.write_buffer_size),
        })
    }
}
