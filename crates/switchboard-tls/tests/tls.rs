#![allow(clippy::unwrap_used)]
//! TLS over real sockets on 127.0.0.1: wss:// and TLS over TCP with a
//! self-signed certificate made here, bad files, failed handshakes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchboard::tcp::{self, Codec, TcpTransport};
use switchboard::tls::{Error, ServerTls, TlsConnector, TlsTransport};
use switchboard::ws::{self, WsTransport};
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

/// Forwards every message it receives.
struct Collect(mpsc::UnboundedSender<Message>);

impl MessageComponent for Collect {
    async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self.0.send(msg);
        Ok(())
    }
}

struct Cert {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Cert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    Cert {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
    }
}

fn config() -> Config {
    Config::default().handshake_timeout(Duration::from_secs(5))
}

/// A file under the temp dir, unique to this test run.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

async fn wss_server(cert: &Cert) -> ServerHandle {
    let tls = ServerTls::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    Server::builder()
        .config(config())
        .bind(
            "127.0.0.1:0",
            TlsTransport::new(tls, WsTransport::new(Echo)),
        )
        .start()
        .await
        .unwrap()
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    timeout(LIMIT, rx.recv()).await.unwrap().unwrap()
}

async fn wss_echo(server: &ServerHandle, cert: &Cert) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let url = format!("wss://{}/", server.local_addr());
    let connector = TlsConnector::with_ca_pem(cert.cert_pem.as_bytes()).unwrap();
    let client = ws::Client::new(url)
        .config(config())
        .tls(connector)
        .connect(Collect(tx))
        .await
        .unwrap();
    client.send("over tls").unwrap();
    assert_eq!(recv(&mut rx).await.as_text(), Some("over tls"));
    client.close();
    timeout(LIMIT, client.closed()).await.unwrap();
}

#[tokio::test]
async fn wss_echo_with_a_self_signed_certificate() {
    let cert = self_signed();
    let server = wss_server(&cert).await;
    wss_echo(&server, &cert).await;
    server.shutdown().await;
}

#[tokio::test]
async fn tls_over_tcp_lines_echo() {
    let cert = self_signed();
    let cert_file = temp_file("cert.pem", &cert.cert_pem);
    let key_file = temp_file("key.pem", &cert.key_pem);
    let tls = ServerTls::from_pem_files(&cert_file, &key_file).unwrap();
    let server = Server::builder()
        .config(config())
        .bind(
            "127.0.0.1:0",
            TlsTransport::new(tls, TcpTransport::lines(Echo)),
        )
        .start()
        .await
        .unwrap();

    let ca_file = temp_file("ca.pem", &cert.cert_pem);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = tcp::Client::new(server.local_addr().to_string(), Codec::lines())
        .config(config())
        .tls(TlsConnector::with_ca_file(&ca_file).unwrap())
        .connect(Collect(tx))
        .await
        .unwrap();
    client.send("one").unwrap();
    client.send("two").unwrap();
    assert_eq!(recv(&mut rx).await.as_text(), Some("one"));
    assert_eq!(recv(&mut rx).await.as_text(), Some("two"));
    client.close();
    timeout(LIMIT, client.closed()).await.unwrap();
    server.shutdown().await;
}

#[test]
fn bad_certificate_and_key_files_are_clear_errors() {
    let cert = self_signed();
    let other = self_signed();
    let cert_file = temp_file("cert.pem", &cert.cert_pem);
    let key_file = temp_file("key.pem", &cert.key_pem);
    let garbage = temp_file("garbage.pem", "this is not PEM\n");
    let missing = std::env::temp_dir().join("switchboard-tls-no-such-dir/cert.pem");

    let err = ServerTls::from_pem_files(&missing, &key_file).unwrap_err();
    assert!(matches!(err, Error::ReadFile { ref path, .. } if *path == missing));
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    let err = ServerTls::from_pem_files(&garbage, &key_file).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Pem {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    let err = ServerTls::from_pem_files(&cert_file, &garbage).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Pem {
                what: "private key",
                ..
            }
        ),
        "{err}"
    );

    // A certificate as the key file: no key in it.
    let err = ServerTls::from_pem_files(&cert_file, &cert_file).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Pem {
                what: "private key",
                ..
            }
        ),
        "{err}"
    );

    // A key that does not belong to the certificate.
    let other_key = temp_file("other-key.pem", &other.key_pem);
    let err = ServerTls::from_pem_files(&cert_file, &other_key).unwrap_err();
    assert!(matches!(err, Error::KeyPair { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot use the private key from {} with the certificate from {}: {}",
            other_key.display(),
            cert_file.display(),
            std::error::Error::source(&err).unwrap()
        )
    );
    // The same pair from memory.
    let err = ServerTls::from_pem(cert.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot use the private key from PEM data with the certificate from PEM data: "
        ),
        "{err}"
    );

    let err = TlsConnector::with_ca_file(&garbage).unwrap_err();
    assert!(matches!(err, Error::Pem { .. }), "{err}");

    ServerTls::from_pem_files(&cert_file, &key_file).unwrap();
}

/// Waits (bounded) until the server counted `n` failed handshakes.
async fn handshake_failures(server: &ServerHandle, n: u64) {
    timeout(LIMIT, async {
        while server.stats().handshake_failures < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "expected {n} handshake failures, have {}",
            server.stats().handshake_failures
        )
    });
}

#[tokio::test]
async fn failed_handshakes_leave_the_server_serving() {
    let cert = self_signed();
    let server = wss_server(&cert).await;
    let addr = server.local_addr();

    // Plain HTTP to the TLS port.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // The server gives up on it: an alert or end of stream, no HTTP answer.
    let n = timeout(LIMIT, plain.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(!buf[..n].starts_with(b"HTTP"), "{:?}", &buf[..n]);
    handshake_failures(&server, 1).await;

    // Garbage bytes, then the peer goes away.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0xff; 300]).await.unwrap();
    drop(garbage);
    handshake_failures(&server, 2).await;

    // A client that trusts another CA rejects the server's certificate.
    let stranger = self_signed();
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = ws::Client::new(format!("wss://{addr}/"))
        .config(config())
        .tls(TlsConnector::with_ca_pem(stranger.cert_pem.as_bytes()).unwrap())
        .connect(Collect(tx))
        .await
        .unwrap_err();
    assert!(matches!(err, ws::Error::Tls(Error::Handshake(_))), "{err}");
    handshake_failures(&server, 3).await;

    // And a proper client is served as before.
    wss_echo(&server, &cert).await;
    assert_eq!(server.stats().connections_total, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_server_name_is_rejected() {
    let cert = self_signed();
    let tls = ServerTls::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    let server = Server::builder()
        .config(config())
        .bind(
            "127.0.0.1:0",
            TlsTransport::new(tls, TcpTransport::lines(Echo)),
        )
        .start()
        .await
        .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = tcp::Client::new(server.local_addr().to_string(), Codec::lines())
        .config(config())
        .tls(TlsConnector::with_ca_pem(cert.cert_pem.as_bytes()).unwrap())
        .server_name("example.org")
        .connect(Collect(tx))
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::Handshake(_)), "{err}");
    server.shutdown().await;
}
