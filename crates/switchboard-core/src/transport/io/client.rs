//! How a client reaches its server: the address, the connect timeout and
//! the socket options, the same for every transport over TCP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};

use crate::config::Config;

/// A server's address as a client dials it: a host (a name or an IP
/// address) and a port. The host is kept without the brackets of an IPv6
/// literal, as resolvers and TLS server names want it.
///
/// ```
/// use switchboard_core::transport::io::HostPort;
///
/// let addr = HostPort::parse("[::1]:9000").unwrap();
/// assert_eq!((addr.host(), addr.port()), ("::1", 9000));
/// assert!(HostPort::parse("example.com").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    host: Box<str>,
    port: u16,
}

impl HostPort {
    /// `host` (brackets around an IPv6 literal are removed) and `port`.
    pub fn new(host: &str, port: u16) -> Self {
        let host = host.strip_prefix('[').unwrap_or(host);
        let host = host.strip_suffix(']').unwrap_or(host);
        HostPort {
            host: host.into(),
            port,
        }
    }

    /// Parses `host:port` (`[::1]:9000` for an IPv6 literal); an
    /// [`io::ErrorKind::InvalidInput`] error otherwise.
    pub fn parse(addr: &str) -> io::Result<Self> {
        addr.rsplit_once(':')
            .and_then(|(host, port)| Some(Self::new(host, port.parse().ok()?)))
            .filter(|hp| !hp.host.is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid address {addr:?}: expected host:port"),
                )
            })
    }

    /// The host, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// How a client connects, the same for every transport's client: the
/// timeout for connecting and the handshakes after it, and the socket's
/// options.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Bounds the connect and the handshakes after it, together:
    /// [`Config::handshake_timeout`].
    pub connect_timeout: Duration,
    /// Sets `TCP_NODELAY`, on by default: real-time messages never wait
    /// for Nagle's algorithm.
    pub nodelay: bool,
}

impl ClientOptions {
    /// The options `config` calls for.
    pub fn new(config: &Config) -> Self {
        ClientOptions {
            connect_timeout: config.handshake_timeout,
            nodelay: true,
        }
    }

    /// Resolves `addr`, connects to the first address that answers and
    /// sets the socket's options. Returns the stream and the peer's
    /// address. Not bounded by itself: run it inside
    /// [`timeout`](Self::timeout) with what follows it.
    pub async fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<(TcpStream, SocketAddr)> {
        let stream = TcpStream::connect(addr).await?;
        if let Err(err) = stream.set_nodelay(self.nodelay) {
            tracing::debug!(error = %err, "set_nodelay failed");
        }
        let peer = stream.peer_addr()?;
        Ok((stream, peer))
    }

    /// Runs `dial` (a connect and the handshakes after it) within the
    /// connect timeout, failing with [`ConnectTimeout`] otherwise.
    pub async fn timeout<T, E, F>(&self, dial: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<ConnectTimeout>,
    {
        tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| ConnectTimeout(self.connect_timeout))?
    }
}

/// A client did not connect within its
/// [`connect_timeout`](ClientOptions::connect_timeout). Converts into an
/// [`io::Error`] of kind [`TimedOut`](io::ErrorKind::TimedOut), and so into
/// [`Error::Io`](crate::Error::Io).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no connection within {0:?}")]
pub struct ConnectTimeout(pub Duration);

impl From<ConnectTimeout> for io::Error {
    fn from(err: ConnectTimeout) -> Self {
        io::Error::new(io::ErrorKind::TimedOut, err)
    }
}

impl From<ConnectTimeout> for crate::Error {
    fn from(err: ConnectTimeout) -> Self {
        crate::Error::Io(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_host_and_port() {
        let parse = |s: &str| HostPort::parse(s).map(|a| (a.host().to_owned(), a.port()));
        assert_eq!(parse("127.0.0.1:9000").unwrap(), ("127.0.0.1".into(), 9000));
        assert_eq!(parse("[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert_eq!(
            parse("example.com:443").unwrap(),
            ("example.com".into(), 443)
        );
        for bad in ["example.com", ":80", "host:", "host:99999", "host:x"] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(HostPort::new("[::1]", 80).host(), "::1");
    }

    #[tokio::test]
    async fn connect_sets_nodelay_and_reports_the_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = ClientOptions::new(&Config::default());
        let (stream, peer) = options
            .timeout(options.connect(("127.0.0.1", addr.port())))
            .await
            .unwrap();
        assert_eq!(peer, addr);
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_past_the_timeout_fails_with_timed_out() {
        let options =
            ClientOptions::new(&Config::default().handshake_timeout(Duration::from_secs(2)));
        let start = tokio::time::Instant::now();
        let err: io::Error = options
            .timeout(std::future::pending::<io::Result<()>>())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let err: crate::Error = options
            .timeout(std::future::pending::<crate::Result<()>>())
            .await
            .unwrap_err();
        assert!(matches!(err, crate::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut));
    }
}
