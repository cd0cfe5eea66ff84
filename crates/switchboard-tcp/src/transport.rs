//! The server side: a [`Transport`] that frames accepted streams.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use switchboard_core::transport::{Accepted, Transport};
use switchboard_core::{Config, IntoComponent, Message, MessageComponent, Result, TransportInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Codec;
use crate::tcp_connection::TcpConn;

/// Makes a connection's codec from the [`Config`] it runs under.
pub(crate) type MakeCodec<C> = dyn Fn(&Config) -> C + Send + Sync;

/// A codec factory that hands each connection a clone of `codec`.
pub(crate) fn cloned<C: Clone + Send + 'static>(codec: C) -> impl Fn(&Config) -> C + Send + Sync {
    // The prototype only needs to be `Send`; the lock (taken once per
    // connection) makes the factory `Sync` anyway.
    let prototype = Mutex::new(codec);
    move |_: &Config| {
        prototype
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The framed TCP transport: serves a component to peers that speak lines,
/// length-delimited frames, raw bytes or a codec of your own.
///
/// There is no handshake; each accepted stream is open at once, and the
/// component sees [`TransportInfo::kind`] `"tcp"`. Cloning is cheap (two
/// `Arc`s), so one transport value can serve several listeners.
///
/// `K` is the component's type, so its handlers are called directly; an
/// `Arc<dyn DynComponent>` (see [`DynComponent`](switchboard_core::DynComponent))
/// works too, at the cost of a boxed future per call. `C` is the codec.
/// Every constructor takes the component as a value or as an `Arc` shared
/// with other listeners ([`IntoComponent`]). The [crate docs](crate) start a
/// server with it.
pub struct TcpTransport<K: ?Sized, C = Codec> {
    component: Arc<K>,
    /// Makes each connection's codec; one call per accepted stream.
    make_codec: Arc<MakeCodec<C>>,
}

impl<K: MessageComponent + ?Sized> TcpTransport<K> {
    /// Newline-delimited UTF-8 text ([`Codec::lines`]): what `nc` and
    /// telnet speak.
    pub fn lines(component: impl IntoComponent<K>) -> Self {
        Self::new(component, Codec::lines())
    }

    /// Frames with a u32 big-endian length prefix ([`Codec::length_delimited`]).
    pub fn length_delimited(component: impl IntoComponent<K>) -> Self {
        Self::new(component, Codec::length_delimited())
    }

    /// Raw bytes, each chunk one message ([`Codec::raw`]).
    pub fn raw(component: impl IntoComponent<K>) -> Self {
        Self::new(component, Codec::raw())
    }

    /// A built-in codec with your settings, for example
    /// `Codec::lines().max_length(512)`. Limits not set on the codec come
    /// from the server's [`Config`].
    pub fn new(component: impl IntoComponent<K>, codec: Codec) -> Self {
        Self::with_codec_factory(component, move |config: &Config| codec.for_config(config))
    }
}

impl<K, C> TcpTransport<K, C>
where
    K: MessageComponent + ?Sized,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    /// Your own codec, cloned for each connection: any tokio-util
    /// [`Decoder`] + [`Encoder`] of [`Message`]s. The
    /// [crate docs](crate#your-own-codec) have a worked example and say
    /// what the codec's errors do; [`TcpConn`](crate::TcpConn#limits), how
    /// a codec that does not bound its buffering is stopped.
    pub fn with_codec(component: impl IntoComponent<K>, codec: C) -> Self
    where
        C: Clone,
    {
        Self::with_codec_factory(component, cloned(codec))
    }

    /// Your own codec, made for each connection by `make` from the server's
    /// [`Config`] (to apply its limits, say).
    ///
    /// ```
    /// use switchboard::tcp::{Codec, TcpTransport};
    /// use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server};
    ///
    /// struct Log;
    ///
    /// impl MessageComponent for Log {
    ///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
    ///         println!("{}: {} bytes", conn.peer_addr(), msg.len());
    ///         Ok(())
    ///     }
    /// }
    ///
    /// // Lines of at most a quarter of the configured frame size.
    /// let transport = TcpTransport::with_codec_factory(Log, |config: &Config| {
    ///     Codec::lines().max_length(config.max_frame_size / 4)
    /// });
    /// let _builder = Server::builder().bind("127.0.0.1:0", transport);
    /// ```
    pub fn with_codec_factory<F>(component: impl IntoComponent<K>, make: F) -> Self
    where
        F: Fn(&Config) -> C + Send + Sync + 'static,
    {
        TcpTransport {
            component: component.into_arc(),
            make_codec: Arc::new(make),
        }
    }
}

impl<K: ?Sized, C> Clone for TcpTransport<K, C> {
    fn clone(&self) -> Self {
        TcpTransport {
            component: self.component.clone(),
            make_codec: self.make_codec.clone(),
        }
    }
}

impl<K: ?Sized, C> fmt::Debug for TcpTransport<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport").finish_non_exhaustive()
    }
}

impl<IO, K, C> Transport<IO> for TcpTransport<K, C>
where
    K: MessageComponent + ?Sized,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    type Conn = TcpConn<IO, C>;
    type Component = K;

    fn accept(
        &self,
        io: IO,
        _peer: SocketAddr,
        config: &Config,
    ) -> impl Future<Output = Result<Accepted<Self::Conn, K>>> + Send {
        let conn = TcpConn::new(io, (self.make_codec)(config), config);
        std::future::ready(Ok(Accepted::new(
            conn,
            TransportInfo::new("tcp"),
            self.component.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use switchboard_core::{BoxError, Connection, DynComponent};

    use super::*;

    struct Quiet;

    impl MessageComponent for Quiet {
        async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
    }

    #[test]
    fn constructors_take_an_arc_or_a_trait_object_as_is() {
        let shared = Arc::new(Quiet);
        let typed = TcpTransport::raw(shared.clone());
        let object: Arc<dyn DynComponent> = shared.clone();
        let dynamic = TcpTransport::with_codec_factory(object, |_: &Config| Codec::lines());
        // Both hold the component given, not a copy or a wrapper.
        assert!(Arc::ptr_eq(&typed.component, &shared));
        assert_eq!(
            Arc::as_ptr(&dynamic.component).cast::<()>(),
            Arc::as_ptr(&shared).cast::<()>()
        );
    }
}
