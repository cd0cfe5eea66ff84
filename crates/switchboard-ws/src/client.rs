//! The client side: connect to a WebSocket server and run a component on
//! the connection, with the same lifecycle as on a server; optionally
//! reconnecting, optionally over TLS (`wss://`, feature `tls`).

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_core::transport::io::{ClientOptions, HostPort};
use switchboard_core::transport::{Dialed, TransportConn, spawn_client, spawn_reconnecting};
use switchboard_core::{
    BoxError, ClientHandle, Config, IntoComponent, MessageComponent, ReconnectPolicy, Reconnecting,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::config::{
    DEFAULT_MAX_REQUEST_HEAD, DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE,
};
use crate::deflate::{self, Deflate, PerMessage};
use crate::error::{Error, Result};
use crate::frame::Role;
use crate::handshake;
use crate::ws_connection::WsConnection;

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
/// use switchboard::{BoxError, Config, Connection, Message, MessageComponent};
///
/// struct Printer;
///
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
pub async fn connect<K: MessageComponent + ?Sized>(
    url: &str,
    component: impl IntoComponent<K>,
) -> Result<ClientHandle> {
    connect_with_config(url, component, Config::default()).await
}

/// Like [`connect`], with client-side limits and keepalive from `config`.
pub async fn connect_with_config<K: MessageComponent + ?Sized>(
    url: &str,
    component: impl IntoComponent<K>,
    config: Config,
) -> Result<ClientHandle> {
    connect_with(url, &[], component, config).await
}

/// Like [`connect`], with extra request headers (for example
/// `Sec-WebSocket-Protocol`, `Cookie` or `Authorization`).
pub async fn connect_with<K: MessageComponent + ?Sized>(
    url: &str,
    headers: &[(&str, &str)],
    component: impl IntoComponent<K>,
    config: Config,
) -> Result<ClientHandle> {
    let mut client = Client::new(url).config(config);
    for (name, value) in headers {
        client = client.header(*name, *value);
    }
    client.connect(component).await
}

/// A WebSocket client's settings: URL, headers, limits, TLS. Connect once
/// ([`connect`](Self::connect)) or keep a connection up
/// ([`reconnecting`](Self::reconnecting)).
///
/// ```no_run
/// use std::time::Duration;
///
/// use switchboard::ws::Client;
/// use switchboard::{BoxError, Connection, Message, MessageComponent, ReconnectPolicy};
///
/// struct Ticker;
///
/// impl MessageComponent for Ticker {
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
    /// permessage-deflate's settings and streams, if offered.
    deflate: Option<Arc<deflate::Shared>>,
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
            deflate: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Offers permessage-deflate (RFC 7692) with `settings`; used if the
    /// server accepts it. Without context takeover (the default) the
    /// client asks the server for none either, and, failing that, keeps
    /// an inflate stream for what the server compresses with context.
    #[must_use]
    pub fn deflate(mut self, settings: Deflate) -> Self {
        self.deflate = Some(deflate::Shared::new(settings));
        self
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

    /// Connects once and runs `component` (a value, or an `Arc` shared with
    /// other connections: [`IntoComponent`]) on the connection; see
    /// [`connect`].
    pub async fn connect<K: MessageComponent + ?Sized>(
        &self,
        component: impl IntoComponent<K>,
    ) -> Result<ClientHandle> {
        let component = component.into_arc();
        let target = self.target()?;
        let options = ClientOptions::new(&self.config);
        let Dialed { conn, peer, info } = options.timeout(target.dial()).await?;
        let config = self.config.clone();
        Ok(spawn_client(conn, peer, info, component, config)?)
    }

    /// Keeps a connection up from the background, connecting again under
    /// `policy` whenever one ends. Each connection runs `component` from
    /// `on_open` to `on_close` and carries a
    /// [`Reconnect`](switchboard_core::Reconnect). Stop with [`Reconnecting::stop`].
    ///
    /// Fails at once only for what no retry can fix: an invalid URL,
    /// header or config, or no root certificates for `wss://`.
    pub fn reconnecting<K: MessageComponent + ?Sized>(
        &self,
        component: impl IntoComponent<K>,
        policy: ReconnectPolicy,
    ) -> Result<Reconnecting> {
        let component = component.into_arc();
        let target = Arc::new(self.target()?);
        let connect = move || {
            let target = target.clone();
            async move { target.dial().await.map_err(BoxError::from) }
        };
        let config = self.config.clone();
        Ok(spawn_reconnecting(connect, component, config, policy)?)
    }

    /// Checks the config, URL and headers and picks the TLS connector, once.
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
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        #[cfg(not(feature = "tls"))]
        if secure {
            return Err(Error::InvalidUrl(format!(
                "{url}: wss:// needs the `tls` feature"
            )));
        }
        Ok(Target {
            client: self.clone(),
            addr: HostPort::new(host, port),
            #[cfg(feature = "tls")]
            tls: match (secure, &self.tls) {
                (false, _) => None,
                (true, Some(tls)) => Some(tls.clone()),
                (true, None) => Some(switchboard_tls::TlsConnector::platform()?),
            },
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
        if let Some(deflate) = &self.deflate {
            let offer = deflate::offer(deflate.settings());
            let value = HeaderValue::from_str(&offer)
                .map_err(|_| Error::InvalidHeader("Sec-WebSocket-Extensions".into()))?;
            request
                .headers_mut()
                .append("sec-websocket-extensions", value);
        }
        Ok(request)
    }
}

/// A checked client, ready to dial as often as needed.
struct Target {
    client: Client,
    addr: HostPort,
    /// The connector of a `wss://` URL.
    #[cfg(feature = "tls")]
    tls: Option<switchboard_tls::TlsConnector>,
}

impl Target {
    /// Connects, runs the TLS handshake if `wss://`, and upgrades.
    async fn dial(&self) -> Result<Dialed<Box<dyn TransportConn>>> {
        let config = &self.client.config;
        let addr = (self.addr.host(), self.addr.port());
        let (stream, peer) = ClientOptions::new(config).connect(addr).await?;
        let request = self.client.request()?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = tls.connect(self.addr.host(), stream).await?;
            return upgrade(request, stream, peer, config, self.client.deflate.as_ref()).await;
        }
        upgrade(request, stream, peer, config, self.client.deflate.as_ref()).await
    }
}

/// The WebSocket upgrade over an established stream to `peer`.
async fn upgrade<IO>(
    request: Request,
    mut stream: IO,
    peer: SocketAddr,
    config: &Config,
    deflate: Option<&Arc<deflate::Shared>>,
) -> Result<Dialed<Box<dyn TransportConn>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    stream.write_all(&request_head(&request)).await?;
    stream.flush().await?;
    let too_large = |_: &[u8]| Error::Handshake("response head too large".into());
    let settings = deflate.map(|d| d.settings());
    let check = |buf: &[u8]| check_response(&request, settings, buf);
    let ((protocol, agreed), leftover) =
        handshake::read_head(&mut stream, DEFAULT_MAX_REQUEST_HEAD, too_large, check).await?;
    let buffers = (DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE);
    let per_message = deflate
        .zip(agreed)
        .map(|(d, p)| PerMessage::new(d.clone(), p));
    let conn = WsConnection::new(
        stream,
        Role::Client,
        config,
        buffers,
        &leftover,
        per_message,
    );
    let uri = request.uri();
    let info = handshake::info(uri.path(), uri.query(), protocol.as_deref());
    Ok(Dialed::new(Box::new(conn), peer, info))
}

/// The request line and headers of the upgrade request.
fn request_head(request: &Request) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("GET {target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in request.headers() {
        head.extend([name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"].concat());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// What the server agreed to: the subprotocol and permessage-deflate.
type Agreed = (Option<String>, Option<deflate::Params>);

/// Judges the server's answer once its head is complete: `Ok(None)` while
/// it is not, else what it agreed to and the length of the head.
/// `deflate`: the settings of the permessage-deflate offer, if one was made.
fn check_response(
    request: &Request,
    deflate: Option<&Deflate>,
    buf: &[u8],
) -> Result<Option<(Agreed, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(Error::Handshake(Box::new(err))),
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(Error::Refused { status });
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    let key = request.headers().get("sec-websocket-key");
    let accept = key.map(|k| derive_accept_key(k.as_bytes()));
    let protocol = header("sec-websocket-protocol");
    let offered = |chosen: &str| {
        let offers = request.headers().get_all("sec-websocket-protocol");
        offers
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == chosen)
    };
    let extensions = response
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("\u{fffd}"));
    let agreed = deflate::agreed(deflate, extensions);
    let problem = if !upgrade {
        "the 101 response has no 'Upgrade: websocket'"
    } else if !connection {
        "the 101 response has no 'Connection: upgrade'"
    } else if accept.as_deref() != header("sec-websocket-accept") {
        "wrong Sec-WebSocket-Accept in the 101 response"
    } else if protocol.is_some_and(|chosen| !offered(chosen)) {
        "the server chose a subprotocol that was not offered"
    } else {
        match agreed {
            Ok(agreed) => return Ok(Some(((protocol.map(str::to_owned), agreed), used))),
            Err(problem) => problem,
        }
    };
    Err(Error::Handshake(problem.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: Option<&str>) -> Request {
        let mut request = "ws://127.0.0.1:9/chat?room=1"
            .into_client_request()
            .unwrap();
        if let Some(p) = protocols {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        request
    }

    fn response(request: &Request, extra: &str) -> String {
        let key = request.headers()["sec-websocket-key"].as_bytes();
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            derive_accept_key(key)
        )
    }

    #[test]
    fn the_request_head_carries_the_target_and_headers() {
        let request = request(None);
        let head = String::from_utf8(request_head(&request)).unwrap();
        assert!(head.starts_with("GET /chat?room=1 HTTP/1.1\r\n"));
        assert!(head.contains("host: 127.0.0.1:9\r\n"));
        assert!(head.contains("upgrade: websocket\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_valid_101_is_accepted_and_what_follows_is_left_over() {
        let request = request(Some("chat, superchat"));
        let head = response(&request, "Sec-WebSocket-Protocol: superchat\r\n");
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        for cut in 0..head.len() {
            assert!(
                check_response(&request, None, &bytes[..cut])
                    .unwrap()
                    .is_none()
            );
        }
        let ((protocol, _), used) = check_response(&request, None, &bytes).unwrap().unwrap();
        assert_eq!(protocol.as_deref(), Some("superchat"));
        assert_eq!(&bytes[used..], &[0x81, 0x02, b'h', b'i']);
    }

    #[test]
    fn bad_answers_are_refused() {
        let request = request(Some("chat"));
        let refused = check_response(&request, None, b"HTTP/1.1 403 Forbidden\r\n\r\n");
        assert!(matches!(refused, Err(Error::Refused { status: 403 })));
        let good = response(&request, "");
        let without = |line| good.replace(line, "");
        let cases = [
            (without("Upgrade: websocket\r\n"), "Upgrade:"),
            (without("Connection: Upgrade\r\n"), "Connection:"),
            (good.replace("Accept: ", "Accept: A"), "Accept"),
            (
                response(&request, "Sec-WebSocket-Protocol: x\r\n"),
                "offered",
            ),
            ("garbage\r\n\r\n".into(), ""),
        ];
        for (answer, says) in cases {
            let err = check_response(&request, None, answer.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(says), "{answer}: {err}");
        }
    }
}
