//! The client side: connect to a WebSocket server and run a component on
//! the connection, with the same lifecycle as on a server.

use std::sync::Arc;

use switchboard_core::{ClientHandle, Config, MessageComponent, TransportInfo, spawn_client};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{
    self,
    http::{HeaderName, HeaderValue},
};

use crate::config::{DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE};
use crate::conn::WsConnection;
use crate::error::{Error, Result};
use crate::keepalive::Keepalive;
use crate::read_ahead::ReadAhead;

/// Connects to `url` (`ws://host[:port]/path?query`) and runs `component`
/// on the connection: `on_open`, then `on_message` for each message from the
/// server, `on_close` once. Limits, pings and the idle timeout come from
/// `config`; [`Config::handshake_timeout`] bounds the TCP connect and the
/// upgrade together.
///
/// Returns once the connection is established; `on_open` may still be
/// running. TLS (`wss://`) is not supported yet.
///
/// ```no_run
/// use switchboard::ws;
/// use switchboard::{async_trait, BoxError, Config, Connection, Message, MessageComponent};
///
/// struct Printer;
///
/// #[async_trait]
/// impl MessageComponent for Printer {
///     async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         println!("{msg:?}");
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), BoxError> {
/// let client = ws::connect("ws://127.0.0.1:8080/chat", Printer, Config::default()).await?;
/// client.send("hello")?;
/// client.close();
/// let reason = client.closed().await;
/// # let _ = reason;
/// # Ok(())
/// # }
/// ```
pub async fn connect(
    url: &str,
    component: impl MessageComponent,
    config: Config,
) -> Result<ClientHandle> {
    connect_with(url, &[], Arc::new(component), config).await
}

/// Like [`connect`], with extra request headers (for example
/// `Sec-WebSocket-Protocol`, `Cookie` or `Authorization`) and a shared
/// component.
pub async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
    component: Arc<dyn MessageComponent>,
    config: Config,
) -> Result<ClientHandle> {
    config.validate()?;
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("ws") {
        return Err(Error::InvalidUrl(format!(
            "{url}: only ws:// URLs are supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::InvalidUrl(format!("{url}: no host")))?;
    // `[::1]` in a URL is `::1` to the resolver.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidHeader((*name).to_owned()))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| Error::InvalidHeader(name.to_string()))?;
        request.headers_mut().append(name, value);
    }
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(DEFAULT_READ_BUFFER_SIZE)
        .write_buffer_size(DEFAULT_WRITE_BUFFER_SIZE)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_frame_size));

    let handshake = async {
        let stream = TcpStream::connect((host.as_str(), port)).await?;
        // Real-time traffic: never wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (ws, response) = tokio_tungstenite::client_async_with_config(
            request,
            ReadAhead::new(stream),
            Some(ws_config),
        )
        .await
        .map_err(|err| match err {
            tungstenite::Error::Http(response) => Error::Refused {
                status: response.status().as_u16(),
            },
            tungstenite::Error::Io(io) => Error::Io(io),
            other => Error::Handshake(Box::new(other)),
        })?;
        Ok::<_, Error>((ws, response, peer))
    };
    let (ws, response, peer) = tokio::time::timeout(config.handshake_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout(config.handshake_timeout))??;

    let mut info = TransportInfo::new("ws").with_path(uri.path());
    if let Some(query) = uri.query() {
        info = info.with_query(query);
    }
    if let Some(protocol) = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
    {
        info = info.with_subprotocol(protocol);
    }
    let conn = WsConnection::new(
        ws,
        Keepalive::new(config.ping_interval, config.idle_timeout),
    );
    Ok(spawn_client(conn, peer, info, component, config)?)
}
