//! The client side: connect to a WebSocket server and run a component on
//! the connection, with the same lifecycle as on a server; optionally
//! reconnecting, optionally over TLS (`wss://`, feature `tls`).

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_core::{
    ClientHandle, Config, Dialed, MessageComponent, ReconnectPolicy, Reconnecting, TransportConn,
    TransportInfo, spawn_client, spawn_reconnecting,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
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

/// Connects to `url` (`ws://host[:port]/path?query`, or `wss://` with the
/// `tls` feature, checked against the platform's root certificates) and
/// runs `component` on the connection: `on_open`, then `on_message` for
/// each message from the server, `on_close` once. Limits, pings and the
/// idle timeout come from `config`; [`Config::handshake_timeout`] bounds
/// the TCP connect, the TLS handshake and the upgrade together.
///
/// Returns once the connection is established; `on_open` may still be
/// running. See [`Client`] for headers, your own CA and reconnecting.
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
/// let client = ws::connect("ws://127.0.0.1:8080/chat", Printer).await?;
/// client.send("hello")?;
/// client.close();
/// let reason = client.closed().await;
/// # let _ = reason;
/// # Ok(())
/// # }
/// ```
pub async fn connect(url: &str, component: impl MessageComponent) -> Result<ClientHandle> {
    connect_with_config(url, component, Config::default()).await
}

/// Like [`connect`], with client-side limits and keepalive from `config`.
pub async fn connect_with_config(
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
    let mut client = Client::new(url).config(config);
    for (name, value) in headers {
        client = client.header(*name, *value);
    }
    client.connect_shared(component).await
}

/// A WebSocket client's settings: URL, headers, limits, TLS. Connect once
/// ([`connect`](Self::connect)) or keep a connection up
/// ([`reconnecting`](Self::reconnecting)).
///
/// ```no_run
/// use std::time::Duration;
///
/// use switchboard::ws::Client;
/// use switchboard::{async_trait, BoxError, Connection, Message, MessageComponent, Reconnect, ReconnectPolicy};
///
/// struct Ticker;
///
/// #[async_trait]
/// impl MessageComponent for Ticker {
///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
///         let again = conn.extension::<Reconnect>().is_some_and(|r| r.is_reconnect());
///         conn.send(if again { "subscribe again" } else { "subscribe" })?;
///         Ok(())
///     }
///
///     async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         println!("{}", msg.as_text().unwrap_or("<binary>"));
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), BoxError> {
/// let policy = ReconnectPolicy::default().max(Duration::from_secs(10));
/// let client = Client::new("ws://127.0.0.1:8080/ticks")
///     .header("Authorization", "Bearer secret")
///     .reconnecting(Ticker, policy)?;
/// // ... later:
/// client.stop();
/// client.finished().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    headers: Vec<(String, String)>,
    config: Config,
    #[cfg(feature = "tls")]
    tls: Option<switchboard_tls::TlsConnector>,
}

impl Client {
    /// A client for `url` with [`Config::default`] and no extra headers.
    /// The URL is checked when connecting.
    pub fn new(url: impl Into<String>) -> Self {
        Client {
            url: url.into(),
            headers: Vec::new(),
            config: Config::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Adds a request header (may be repeated).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the limits, keepalive and timeouts of the connections.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Checks a `wss://` server's certificate with `connector` (your own
    /// CA, say) instead of the platform's root certificates.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[must_use]
    pub fn tls(mut self, connector: switchboard_tls::TlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Connects once and runs `component` on the connection; see [`connect`].
    pub async fn connect(&self, component: impl MessageComponent) -> Result<ClientHandle> {
        self.connect_shared(Arc::new(component)).await
    }

    /// Like [`connect`](Self::connect), for a shared component.
    pub async fn connect_shared(
        &self,
        component: Arc<dyn MessageComponent>,
    ) -> Result<ClientHandle> {
        let target = self.target()?;
        let config = self.config.clone();
        let (conn, peer, info) = bounded(&config, target.dial(&config)).await?;
        Ok(match conn {
            Either::Plain(conn) => spawn_client(conn, peer, info, component, config)?,
            #[cfg(feature = "tls")]
            Either::Tls(conn) => spawn_client(conn, peer, info, component, config)?,
        })
    }

    /// Keeps a connection up: connects in the background, and after a
    /// connection ends connects again under `policy` (exponential backoff
    /// with jitter and a cap). Each connection runs `component` from
    /// `on_open` to `on_close` and carries a
    /// [`Reconnect`](switchboard_core::Reconnect) in its extensions. Stop it
    /// with [`Reconnecting::stop`].
    ///
    /// Fails at once only for what no retry can fix: an invalid URL,
    /// header or config, or no root certificates for `wss://`.
    pub fn reconnecting(
        &self,
        component: impl MessageComponent,
        policy: ReconnectPolicy,
    ) -> Result<Reconnecting> {
        self.reconnecting_shared(Arc::new(component), policy)
    }

    /// Like [`reconnecting`](Self::reconnecting), for a shared component.
    pub fn reconnecting_shared(
        &self,
        component: Arc<dyn MessageComponent>,
        policy: ReconnectPolicy,
    ) -> Result<Reconnecting> {
        self.config.validate()?;
        let target = Arc::new(self.target()?);
        let config = self.config.clone();
        let connect = move || {
            let target = target.clone();
            let config = config.clone();
            async move {
                let (conn, peer, info) = target.dial(&config).await?;
                let conn: Box<dyn TransportConn> = match conn {
                    Either::Plain(conn) => Box::new(conn),
                    #[cfg(feature = "tls")]
                    Either::Tls(conn) => Box::new(conn),
                };
                Ok(Dialed::new(conn, peer, info))
            }
        };
        Ok(spawn_reconnecting(
            connect,
            component,
            self.config.clone(),
            policy,
        )?)
    }

    /// Checks the URL and headers and picks the TLS connector, once.
    fn target(&self) -> Result<Target> {
        self.config.validate()?;
        let url = &self.url;
        let request = self.request()?;
        let uri = request.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(Error::InvalidUrl(format!(
                    "{url}: a WebSocket URL starts with ws:// or wss://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::InvalidUrl(format!("{url}: no host")))?;
        // `[::1]` in a URL is `::1` to the resolver.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let mut info = TransportInfo::new("ws").with_path(uri.path());
        if let Some(query) = uri.query() {
            info = info.with_query(query);
        }
        let tls = if secure {
            #[cfg(feature = "tls")]
            {
                Some(match &self.tls {
                    Some(tls) => tls.clone(),
                    None => switchboard_tls::TlsConnector::platform()?,
                })
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::InvalidUrl(format!(
                "{url}: wss:// needs the `tls` feature"
            )));
        } else {
            None
        };
        Ok(Target {
            client: self.clone(),
            host,
            port,
            info,
            tls,
        })
    }

    /// A fresh upgrade request (each has its own `Sec-WebSocket-Key`).
    fn request(&self) -> Result<Request> {
        let url = &self.url;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::InvalidHeader(name.clone()))?;
            let value =
                HeaderValue::from_str(value).map_err(|_| Error::InvalidHeader(name.to_string()))?;
            request.headers_mut().append(name, value);
        }
        Ok(request)
    }
}

/// A checked client, ready to dial as often as needed.
struct Target {
    client: Client,
    host: String,
    port: u16,
    info: TransportInfo,
    #[cfg(feature = "tls")]
    tls: Option<switchboard_tls::TlsConnector>,
    #[cfg(not(feature = "tls"))]
    tls: Option<std::convert::Infallible>,
}

type PlainConn = WsConnection<TcpStream>;
#[cfg(feature = "tls")]
type TlsConn = WsConnection<switchboard_tls::ClientTlsStream<TcpStream>>;

/// A connection over TCP or over TLS.
enum Either {
    Plain(PlainConn),
    #[cfg(feature = "tls")]
    Tls(TlsConn),
}

async fn bounded<T>(config: &Config, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(config.handshake_timeout, fut)
        .await
        .map_err(|_| Error::Timeout(config.handshake_timeout))?
}

impl Target {
    /// Connects, runs the TLS handshake if `wss://`, and upgrades.
    async fn dial(&self, config: &Config) -> Result<(Either, SocketAddr, TransportInfo)> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // Real-time traffic: never wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let request = self.client.request()?;
        let (conn, protocol) = match &self.tls {
            None => {
                let (conn, protocol) = upgrade(request, stream, config).await?;
                (Either::Plain(conn), protocol)
            }
            #[cfg(feature = "tls")]
            Some(tls) => {
                let stream = tls.connect(&self.host, stream).await?;
                let (conn, protocol) = upgrade(request, stream, config).await?;
                (Either::Tls(conn), protocol)
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        };
        let mut info = self.info.clone();
        if let Some(protocol) = protocol {
            info = info.with_subprotocol(protocol);
        }
        Ok((conn, peer, info))
    }
}

/// The WebSocket upgrade over an established stream; returns the
/// connection and the subprotocol the server chose.
async fn upgrade<IO>(
    request: Request,
    stream: IO,
    config: &Config,
) -> Result<(WsConnection<IO>, Option<String>)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(DEFAULT_READ_BUFFER_SIZE)
        .write_buffer_size(DEFAULT_WRITE_BUFFER_SIZE)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_frame_size));
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
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let conn = WsConnection::new(
        ws,
        Keepalive::new(config.ping_interval, config.idle_timeout),
    );
    Ok((conn, protocol))
}
