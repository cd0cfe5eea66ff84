//! The server side: a [`Transport`] that runs the TLS handshake, then hands
//! the decrypted stream to the transport it wraps.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use switchboard_core::Config;
use switchboard_core::transport::{Accepted, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};
use crate::pem;
use crate::provider;

/// A server's certificate chain and private key, ready to accept TLS
/// connections: [`from_pem_files`](Self::from_pem_files) reads them. Cheap
/// to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1). Fails with the file's path for a missing
    /// or unreadable file or a file without a certificate or key, and with
    /// both paths for a key that does not match the certificate
    /// ([`Error::KeyPair`]).
    ///
    /// ```no_run
    /// use switchboard::tls::ServerTls;
    ///
    /// match ServerTls::from_pem_files("cert.pem", "old-key.pem") {
    ///     Ok(_) => {}
    ///     // "cannot use the private key from old-key.pem with the
    ///     // certificate from cert.pem: ..."
    ///     Err(err) => eprintln!("{err}"),
    /// }
    /// ```
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let (cert_origin, key_origin) = (cert.display().to_string(), key.display().to_string());
        let certs = pem::certificates(&pem::read_file(cert)?, &cert_origin)?;
        let private_key = pem::private_key(&pem::read_file(key)?, &key_origin)?;
        Self::from_der(certs, private_key, &cert_origin, &key_origin)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self> {
        let certs = pem::certificates(cert, "certificate PEM data")?;
        let private_key = pem::private_key(key, "private key PEM data")?;
        Self::from_der(certs, private_key, "PEM data", "PEM data")
    }

    fn from_der(
        certs: Vec<rustls_pki_types::CertificateDer<'static>>,
        private_key: rustls_pki_types::PrivateKeyDer<'static>,
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<Self> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(|source| Error::KeyPair {
                cert: cert_origin.to_owned(),
                key: key_origin.to_owned(),
                source,
            })?;
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by hand (client certificates,
    /// ALPN, session resumption settings, ...).
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        ServerTls {
            acceptor: TlsAcceptor::from(config),
        }
    }

    /// Runs the server side of the handshake on `io`.
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(io).await.map_err(Error::Handshake)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// TLS around any transport: `TlsTransport::new(tls, WsTransport::new(c))`
/// serves `wss://`, `TlsTransport::new(tls, TcpTransport::lines(c))` serves
/// lines over TLS (the crate docs have both on one server).
///
/// The handshake runs inside [`Transport::accept`], so the server's
/// [`Config::handshake_timeout`] bounds the TLS handshake and the inner
/// transport's handshake together. A failed TLS handshake (a plain-text
/// client, garbage, a client that rejects the certificate) never reaches a
/// component: it is logged (debug level) and counted in
/// `handshake_failures` like any failed handshake, and the server goes on
/// serving everyone else.
#[derive(Clone, Debug)]
pub struct TlsTransport<T> {
    tls: ServerTls,
    inner: T,
}

impl<T> TlsTransport<T> {
    /// Wraps `inner`, which then sees the decrypted stream.
    pub fn new(tls: ServerTls, inner: T) -> Self {
        TlsTransport { tls, inner }
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<IO, T> Transport<IO> for TlsTransport<T>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Transport<TlsStream<IO>>,
{
    type Conn = T::Conn;
    type Component = T::Component;

    async fn accept(
        &self,
        io: IO,
        peer: SocketAddr,
        config: &Config,
    ) -> switchboard_core::Result<Accepted<Self::Conn, Self::Component>> {
        let stream = self.tls.accept(io).await?;
        self.inner.accept(stream, peer, config).await
    }
}
