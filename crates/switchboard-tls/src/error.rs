//! The error type of switchboard-tls.

use std::io;
use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong setting up or running TLS.
///
/// Loading certificates and keys fails early with the file's path in the
/// message. A failed server-side handshake never reaches a component (see
/// [`TlsTransport`](crate::TlsTransport)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A PEM file (or buffer) is not valid PEM, or holds none of what was
    /// looked for (`what`: "certificate", "private key").
    #[error("{origin}: no valid PEM {what}: {detail}")]
    Pem {
        /// The file, or `"PEM data"` for a buffer.
        origin: String,
        /// What was looked for.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },

    /// The certificate chain and the private key do not make a usable pair:
    /// the key does not belong to the certificate, or rustls cannot use
    /// one of them (an unsupported key type, a malformed certificate).
    /// Names both origins: the files, or `"PEM data"` for buffers.
    #[error("cannot use the private key from {key} with the certificate from {cert}: {source}")]
    KeyPair {
        /// Where the certificate chain came from.
        cert: String,
        /// Where the private key came from.
        key: String,
        /// What rustls said.
        #[source]
        source: tokio_rustls::rustls::Error,
    },

    /// rustls refused the rest of the configuration: an unusable root
    /// certificate, no usable protocol version.
    #[error("invalid TLS configuration: {0}")]
    Config(#[source] tokio_rustls::rustls::Error),

    /// The platform's root store held no usable certificate.
    #[error("no usable root certificates in the platform's store{0}")]
    NoRootCertificates(String),

    /// (client) The name to check the server's certificate against is not
    /// a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),

    /// The TLS handshake failed: the peer does not speak TLS, a certificate
    /// was rejected (unknown issuer, wrong name, expired), no common
    /// protocol version or cipher suite, or the connection broke.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

impl From<Error> for switchboard_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Handshake(_) => switchboard_core::Error::Handshake(Box::new(err)),
            other => switchboard_core::Error::Config(other.to_string()),
        }
    }
}
