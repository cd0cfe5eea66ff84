//! The client side: run a component over an outgoing framed TCP connection,
//! optionally reconnecting, optionally over TLS (feature `tls`).

use std::sync::Arc;

use switchboard_core::transport::io::{ClientOptions, HostPort};
use switchboard_core::transport::{Dialed, TransportConn, spawn_client, spawn_reconnecting};
use switchboard_core::{
    BoxError, ClientHandle, Config, IntoComponent, Message, MessageComponent, ReconnectPolicy,
    Reconnecting, Result, TransportInfo,
};
use tokio::net::ToSocketAddrs;
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Codec;
use crate::tcp_connection::TcpConn;
use crate::transport::{MakeCodec, cloned};

/// Connects to `addr` and runs `component` on the connection, framed by
/// `codec`, with the same lifecycle as on a server: `on_open`, ordered
/// `on_message`, `on_close` exactly once.
///
/// Uses [`Config::default`] without its idle timeout: raw TCP has no pings,
/// so a server that is merely quiet would look dead. Set one with
/// [`connect_with_config`] to detect silent servers.
///
/// Returns once connected; `on_open` may still be running. Fails with
/// [`Error::Io`](switchboard_core::Error::Io) when the connection cannot be
/// made within [`Config::handshake_timeout`].
///
/// ```no_run
/// use switchboard::tcp::{connect, Codec};
/// use switchboard::{BoxError, Connection, Message, MessageComponent};
///
/// struct Print;
///
/// impl MessageComponent for Print {
///     async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         println!("server says: {}", msg.as_text().unwrap_or("<binary>"));
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), switchboard::Error> {
/// let client = connect("127.0.0.1:7000", Codec::lines(), Print).await?;
/// client.send("hello")?;
/// client.close();
/// client.closed().await;
/// # Ok(()) }
/// ```
pub async fn connect<A: ToSocketAddrs, K: MessageComponent + ?Sized>(
    addr: A,
    codec: Codec,
    component: impl IntoComponent<K>,
) -> Result<ClientHandle> {
    connect_with_config(addr, codec, component, Config::default().idle_timeout(None)).await
}

/// [`connect`] with explicit limits: the codec's maximum length (unless
/// set on it), queue bounds, idle and close timeouts come from `config`.
///
/// ```no_run
/// use std::time::Duration;
///
/// use switchboard::tcp::{connect_with_config, Codec};
/// use switchboard::{BoxError, Config, Connection, Message, MessageComponent};
///
/// struct Feed;
///
/// impl MessageComponent for Feed {
///     async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         println!("{} bytes", msg.len());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), switchboard::Error> {
/// // A feed that sends at least every 10 s: silence for 30 s means it is gone.
/// let config = Config::default().ping_interval(None).idle_timeout(Some(Duration::from_secs(30)));
/// let client = connect_with_config("127.0.0.1:9000", Codec::length_delimited(), Feed, config).await?;
/// println!("feed ended: {}", client.closed().await);
/// # Ok(()) }
/// ```
pub async fn connect_with_config<A: ToSocketAddrs, K: MessageComponent + ?Sized>(
    addr: A,
    codec: Codec,
    component: impl IntoComponent<K>,
    config: Config,
) -> Result<ClientHandle> {
    connect_with_codec(addr, codec.for_config(&config), component, config).await
}

/// [`connect_with_config`] with your own codec, used as given (see
/// [`TcpTransport::with_codec`](crate::TcpTransport::with_codec)).
pub async fn connect_with_codec<A, C, K>(
    addr: A,
    codec: C,
    component: impl IntoComponent<K>,
    config: Config,
) -> Result<ClientHandle>
where
    A: ToSocketAddrs,
    K: MessageComponent + ?Sized,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    config.validate()?;
    let options = ClientOptions::new(&config);
    let (stream, peer) = options.timeout(options.connect(addr)).await?;
    let conn = TcpConn::new(stream, codec, &config);
    let info = TransportInfo::new("tcp");
    spawn_client(conn, peer, info, component.into_arc(), config)
}

/// A framed TCP client's settings: address, codec, limits, TLS. Connect
/// once ([`connect`](Self::connect)) or keep a connection up
/// ([`reconnecting`](Self::reconnecting)).
///
/// The default [`Config`] has no idle timeout (raw TCP has no pings; see
/// [`connect`](crate::connect)). [`Config::handshake_timeout`] bounds the
/// TCP connect and the TLS handshake together.
///
/// ```no_run
/// use std::time::Duration;
///
/// use switchboard::tcp::{Client, Codec};
/// use switchboard::{BoxError, Connection, Message, MessageComponent, ReconnectPolicy};
///
/// struct Print;
///
/// impl MessageComponent for Print {
///     async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         println!("{}", msg.as_text().unwrap_or("<binary>"));
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), BoxError> {
/// let policy = ReconnectPolicy::default().max(Duration::from_secs(5));
/// let client = Client::new("127.0.0.1:9000", Codec::lines()).reconnecting(Print, policy)?;
/// if let Some(conn) = client.connected().await {
///     conn.send("hello")?;
/// }
/// client.stop();
/// # Ok(())
/// # }
/// ```
pub struct Client<C = Codec> {
    addr: String,
    make_codec: Arc<MakeCodec<C>>,
    config: Config,
    #[cfg(feature = "tls")]
    tls: Option<switchboard_tls::TlsConnector>,
    server_name: Option<String>,
}

impl Client<Codec> {
    /// A client for `addr` (`host:port`) with a built-in codec; limits not
    /// set on the codec come from the [`config`](Self::config).
    pub fn new(addr: impl Into<String>, codec: Codec) -> Self {
        Self::with_codec_factory(addr, move |config: &Config| codec.for_config(config))
    }
}

impl<C> Client<C>
where
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    /// A client with your own codec, cloned for each connection.
    pub fn with_codec(addr: impl Into<String>, codec: C) -> Self
    where
        C: Clone,
    {
        Self::with_codec_factory(addr, cloned(codec))
    }

    /// A client whose codec `make` builds for each connection from the
    /// [`Config`].
    pub fn with_codec_factory<F>(addr: impl Into<String>, make: F) -> Self
    where
        F: Fn(&Config) -> C + Send + Sync + 'static,
    {
        Client {
            addr: addr.into(),
            make_codec: Arc::new(make),
            config: Config::default().idle_timeout(None),
            #[cfg(feature = "tls")]
            tls: None,
            server_name: None,
        }
    }

    /// Sets the limits, idle and close timeouts of the connections.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Speaks TLS over the connection, checking the server's certificate
    /// with `connector` against the host of the address (or
    /// [`server_name`](Self::server_name)).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[must_use]
    pub fn tls(mut self, connector: switchboard_tls::TlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// The name the server's TLS certificate must hold, when it is not the
    /// host of the address (connecting by IP to a server with a DNS name).
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Connects once and runs `component` (a value, or an `Arc` shared with
    /// other connections: [`IntoComponent`]) on the connection, with the
    /// same lifecycle as on a server.
    pub async fn connect<K: MessageComponent + ?Sized>(
        &self,
        component: impl IntoComponent<K>,
    ) -> Result<ClientHandle> {
        let component = component.into_arc();
        self.config.validate()?;
        let options = ClientOptions::new(&self.config);
        let Dialed { conn, peer, info } = options.timeout(self.dial()).await?;
        spawn_client(conn, peer, info, component, self.config.clone())
    }

    /// Keeps a connection up from the background, connecting again under
    /// `policy` whenever one ends. Each connection runs `component` from
    /// `on_open` to `on_close` and carries a
    /// [`Reconnect`](switchboard_core::Reconnect). Stop with [`Reconnecting::stop`].
    pub fn reconnecting<K: MessageComponent + ?Sized>(
        &self,
        component: impl IntoComponent<K>,
        policy: ReconnectPolicy,
    ) -> Result<Reconnecting> {
        let component = component.into_arc();
        let client = Arc::new(self.clone());
        let connect = move || {
            let client = client.clone();
            async move { client.dial().await.map_err(BoxError::from) }
        };
        spawn_reconnecting(connect, component, self.config.clone(), policy)
    }

    /// Connects (and runs the TLS handshake, if set).
    async fn dial(&self) -> Result<Dialed<Box<dyn TransportConn>>> {
        let addr = HostPort::parse(&self.addr)?;
        let options = ClientOptions::new(&self.config);
        let (stream, peer) = options.connect((addr.host(), addr.port())).await?;
        let codec = (self.make_codec)(&self.config);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let name = self.server_name.as_deref().unwrap_or(addr.host());
            let stream = tls.connect(name, stream).await?;
            let conn = TcpConn::new(stream, codec, &self.config);
            return Ok(Dialed::new(Box::new(conn), peer, TransportInfo::new("tcp")));
        }
        let conn = TcpConn::new(stream, codec, &self.config);
        Ok(Dialed::new(Box::new(conn), peer, TransportInfo::new("tcp")))
    }
}

impl<C> Clone for Client<C> {
    fn clone(&self) -> Self {
        Client {
            addr: self.addr.clone(),
            make_codec: self.make_codec.clone(),
            config: self.config.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
            server_name: self.server_name.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Client<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
