//! The client side: TLS for outgoing connections, checked against a root store.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::error::{Error, Result};
use crate::pem;
use crate::provider;

/// Makes TLS client connections, checking the server's certificate against
/// a root store: the platform's ([`platform`](Self::platform)) or your own
/// CA ([`with_ca_file`](Self::with_ca_file)). Cheap to clone. The clients
/// take it: `switchboard::ws::Client::tls`, `switchboard::tcp::Client::tls`.
///
/// ```no_run
/// use switchboard::tls::TlsConnector;
///
/// # fn run() -> Result<(), switchboard::tls::Error> {
/// // A server whose certificate a private CA signed:
/// let tls = TlsConnector::with_ca_file("ca.pem")?;
/// // A public server:
/// let tls = TlsConnector::platform()?;
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
}

impl TlsConnector {
    /// Trusts the platform's root certificates (on Linux the system's CA
    /// bundle, as OpenSSL finds it). Fails when none can be loaded.
    pub fn platform() -> Result<Self> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let detail = found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(Error::NoRootCertificates(detail));
        }
        Self::with_roots(roots)
    }

    /// Trusts only the CA certificates of a PEM file (for example the
    /// certificate of a self-signed server).
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = pem::read_file(path)?;
        Self::ca_certificates(&pem, &path.display().to_string())
    }

    /// Trusts only the CA certificates of PEM text in memory.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self> {
        Self::ca_certificates(pem, "CA PEM data")
    }

    fn ca_certificates(pem: &[u8], origin: &str) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in pem::certificates(pem, origin)? {
            roots.add(cert).map_err(Error::Config)?;
        }
        Self::with_roots(roots)
    }

    /// Trusts the certificates of a root store you filled.
    pub fn with_roots(roots: RootCertStore) -> Result<Self> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by hand (client certificates,
    /// ALPN, a custom verifier).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        TlsConnector {
            inner: tokio_rustls::TlsConnector::from(config),
        }
    }

    /// Runs the client side of the handshake on `io`, checking that the
    /// server's certificate is valid for `server_name` (a DNS name or an IP
    /// address, as in the URL).
    pub async fn connect<IO>(&self, server_name: &str, io: IO) -> Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = server_name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| Error::InvalidServerName(server_name.to_owned()))?;
        self.inner.connect(name, io).await.map_err(Error::Handshake)
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}
