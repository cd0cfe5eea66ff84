//! Upgrades made by another HTTP server: the request it received is judged
//! as this transport judges its own, and the upgraded stream is served by a
//! running [`ServerHandle`].

use std::net::SocketAddr;

use bytes::Bytes;
use switchboard_core::transport::Accepted;
use switchboard_core::{Extensions, Reservation, TransportInfo};
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
    params: Vec<(String, String)>,
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
            params: Vec::new(),
        }
    }

    /// Route parameters the other server found (name, percent-decoded
    /// value): the component and the handshake hook read them with
    /// `param`, unless the transport's own routes find some.
    #[must_use]
    pub fn params(mut self, params: impl IntoIterator<Item = (String, String)>) -> Self {
        self.params = params.into_iter().collect();
        self
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
/// upgraded stream to [`serve`](Self::serve). Dropping it instead serves
/// nothing.
pub struct PendingUpgrade {
    /// With permessage-deflate, if agreed: dropping it gives back a place
    /// for a connection with context.
    upgrade: handshake::Upgrade,
    buffers: (usize, usize),
}

impl PendingUpgrade {
    /// The headers of the `101` answer: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept`, the chosen `Sec-WebSocket-Protocol` and the
    /// agreed `Sec-WebSocket-Extensions`.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "Upgrade".to_owned()),
        ];
        headers.extend(self.upgrade.response_headers());
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

    /// Serves the upgraded stream in the place `reservation` holds on a
    /// server ([`ServerHandle::reserve`](switchboard_core::ServerHandle::reserve), taken before answering), as one
    /// of that server's own connections: its
    /// [`Config`](switchboard_core::Config) limits, counters, hubs and
    /// graceful shutdown.
    pub fn serve<IO>(self, reservation: Reservation, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake::Upgrade {
            component,
            info,
            extensions,
            deflate,
            ..
        } = self.upgrade;
        let config = reservation.config();
        let conn = WsConnection::new(io, Role::Server, config, self.buffers, &[], deflate);
        let mut accepted = Accepted::new(conn, info, component);
        accepted.extensions = extensions;
        reservation.serve(accepted);
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
    /// policy, the subprotocols, permessage-deflate and the handshake hook. On `Ok`, answer
    /// `101` and serve the upgraded stream with [`PendingUpgrade::serve`];
    /// on `Err`, send the [`HttpAnswer`].
    pub async fn upgrade(
        &self,
        peer: SocketAddr,
        request: UpgradeRequest,
    ) -> Result<PendingUpgrade, HttpAnswer> {
        let upgrade = handshake::admit_head(&self.shared, request.head, request.params, peer)
            .await
            .map_err(handshake::Response::into_answer)?;
        Ok(PendingUpgrade {
            upgrade,
            buffers: (self.shared.read_buffer_size, self.shared.write_buffer_size),
        })
    }
}
