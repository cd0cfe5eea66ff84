//! The client side: run a component over an outgoing framed TCP connection.

use std::sync::Arc;

use switchboard_core::{
    ClientHandle, Config, Message, MessageComponent, Result, TransportInfo, spawn_client,
};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Codec;
use crate::conn::TcpConn;

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
/// made.
///
/// ```no_run
/// use switchboard::tcp::{connect, Codec};
/// use switchboard::{async_trait, BoxError, Connection, Message, MessageComponent};
///
/// struct Print;
///
/// #[async_trait]
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
pub async fn connect<A: ToSocketAddrs>(
    addr: A,
    codec: Codec,
    component: impl MessageComponent,
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
/// use switchboard::{async_trait, BoxError, Config, Connection, Message, MessageComponent};
///
/// struct Feed;
///
/// #[async_trait]
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
pub async fn connect_with_config<A: ToSocketAddrs>(
    addr: A,
    codec: Codec,
    component: impl MessageComponent,
    config: Config,
) -> Result<ClientHandle> {
    let codec = codec.for_config(&config);
    connect_with_codec(addr, codec, component, config).await
}

/// [`connect_with_config`] with your own codec, used as given (see
/// [`TcpTransport::with_codec`](crate::TcpTransport::with_codec)).
pub async fn connect_with_codec<A, C>(
    addr: A,
    codec: C,
    component: impl MessageComponent,
    config: Config,
) -> Result<ClientHandle>
where
    A: ToSocketAddrs,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    config.validate()?;
    let stream = TcpStream::connect(addr).await?;
    // Real-time traffic: never wait for Nagle's algorithm.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "set_nodelay failed");
    }
    let peer = stream.peer_addr()?;
    let conn = TcpConn::new(stream, codec, &config);
    spawn_client(
        conn,
        peer,
        TransportInfo::new("tcp"),
        Arc::new(component),
        config,
    )
}
