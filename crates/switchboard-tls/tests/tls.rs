#![allow(clippy::unwrap_used)]
//! TLS over real sockets on 127.0.0.1: wss:// and TLS over TCP with a
//! self-signed certificate made here, bad files, failed handshakes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchboard::tcp::{self, Codec, TcpTransport};
use switchboard::tls::{Error, ServerTls, TlsConnector, TlsTransport};
use switchboard::transport::Transport;
use switchboard::ws::{self, WsTransport};
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

/// A server's component echoes; a client's forwards what it receives.
enum Peer {
    Echo,
    Collect(mpsc::UnboundedSender<Message>),
}

impl MessageComponent for Peer {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        match self {
            Peer::Echo => conn.send(msg)?,
            Peer::Collect(tx) => {
                let _ = tx.send(msg);
            }
        }
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

async fn serve<T: Transport<TcpStream>>(transport: T) -> ServerHandle {
    Server::builder()
        .config(config())
        .bind("127.0.0.1:0", transport)
        .start()
        .await
        .unwrap()
}

fn server_tls(cert: &Cert) -> ServerTls {
    ServerTls::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
}

async fn wss_server(cert: &Cert) -> ServerHandle {
    serve(TlsTransport::new(
        server_tls(cert),
        WsTransport::new(Peer::Echo),
    ))
    .await
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
        .connect(Peer::Collect(tx))
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
    let server = serve(TlsTransport::new(tls, TcpTransport::lines(Peer::Echo))).await;

    let ca_file = temp_file("ca.pem", &cert.cert_pem);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = tcp::Client::new(server.local_addr().to_string(), Codec::lines())
        .config(config())
        .tls(TlsConnector::with_ca_file(&ca_file).unwrap())
        .connect(Peer::Collect(tx))
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

    let other_key = temp_file("other-key.pem", &other.key_pem);
    for (cert, key, expected) in [
        (&missing, &key_file, "cannot read {cert}: "),
        (&garbage, &key_file, "{cert}: no valid PEM certificate: "),
        (&cert_file, &garbage, "{key}: no valid PEM private key: "),
        // A certificate as the key file: no key in it.
        (&cert_file, &cert_file, "{key}: no valid PEM private key: "),
        // A key that does not belong to the certificate.
        (
            &cert_file,
            &other_key,
            "cannot use the private key from {key} with the certificate from {cert}: ",
        ),
    ] {
        let expected = expected
            .replace("{cert}", &cert.display().to_string())
            .replace("{key}", &key.display().to_string());
        let err = ServerTls::from_pem_files(cert, key).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with(&expected), "{message}");
        // The cause, if any, ends the message.
        if let Some(source) = std::error::Error::source(&err) {
            assert!(message.ends_with(&source.to_string()), "{message}");
        }
    }
    // The same pair from memory.
    let err = ServerTls::from_pem(cert.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot use the private key from PEM data with the certificate from PEM data: "
        ),
        "{err}"
    );

    let err = TlsConnector::with_ca_file(&garbage).unwrap_err();
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
        .connect(Peer::Collect(tx))
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
    let server = serve(TlsTransport::new(
        server_tls(&cert),
        TcpTransport::lines(Peer::Echo),
    ))
    .await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = tcp::Client::new(server.local_addr().to_string(), Codec::lines())
        .config(config())
        .tls(TlsConnector::with_ca_pem(cert.cert_pem.as_bytes()).unwrap())
        .server_name("example.org")
        .connect(Peer::Collect(tx))
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::Handshake(_)), "{err}");
    server.shutdown().await;
}
