//! A chat room: every message a client sends goes, unchanged, to every other
//! connected client (not back to the sender).
//!
//! ```sh
//! cargo run --release --example chat            # open http://127.0.0.1:8080/ in two tabs
//! nc 127.0.0.1 9000                              # and chat from a terminal in the same room
//! cargo run --release --example chat -- --ws 127.0.0.1:8081 --tcp 127.0.0.1:9001
//!
//! # two nodes, one room (each message exactly once on both), through Redis:
//! cargo run --release --example chat -- --redis redis://127.0.0.1:6379
//! cargo run --release --example chat -- --redis redis://127.0.0.1:6379 \
//!     --ws 127.0.0.1:8081 --tcp 127.0.0.1:9001
//!
//! # https/wss and TLS lines (feature `tls`, on by default):
//! cargo run --release --example chat -- --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! Flags: `--ws ADDR` (default 127.0.0.1:8080) and `--tcp ADDR` (newline-
//! delimited lines, default 127.0.0.1:9000; `--tcp off` disables it). Browser
//! users and `nc` users share one room: one component serves both listeners.
//! `--redis URL` (feature `redis`) makes this process one node of a cluster:
//! the room spans every chat process on that Redis (see `docs/scaling.md`).
//! `--tls-cert FILE --tls-key FILE` (PEM) serve both listeners over TLS:
//! https/wss for browsers, TLS lines for `examples/client.rs`.
//!
//! The page (`examples/chat.html`) is served at `/` on the same port as the
//! socket (`/chat`), so both share one origin and the default origin policy
//! applies. Ctrl-C stops the server cleanly.
//!
//! An `nc` user who only reads stays in the room while messages reach it:
//! raw TCP has no pings, so the idle timeout (90 s by default) counts what
//! the server writes to a TCP peer as well as what it reads. Only a
//! connection with no traffic either way for 90 s is closed (a browser
//! answers pings, so it stays). An `nc` that vanished without closing (its
//! machine gone, the network cut) is found by TCP keepalive within about
//! 60 s of its last traffic (`Config::tcp_keepalive`).

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpStream;

use switchboard::tcp::TcpTransport;
use switchboard::transport::Transport;
use switchboard::ws::{Page, WsTransport};
use switchboard::{
    BoxError, Broker, Connection, Hub, Message, MessageComponent, Server, ServerBuilder,
};

/// mimalloc hands freed memory back to the system (a second or so after
/// the free, as the server goes on working), where glibc's malloc keeps
/// what a burst of large buffers freed: see "Memory after an attack" in
/// docs/reliability.md. The library sets no allocator; a binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The room: one component for every connection, whatever the transport.
#[derive(Default)]
struct Chat {
    hub: Hub,
}

impl MessageComponent for Chat {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        tracing::info!(conn = %conn.id(), peer = %conn.peer_addr(), "joined");
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        // An error means only that other nodes missed it (Redis down): the
        // local members got it, so log rather than close the sender.
        if let Err(err) = self.hub.broadcast_except(msg, conn.id()).await {
            tracing::warn!(%err, "not delivered to other nodes");
        }
        Ok(())
    }
}

struct Args {
    ws: String,
    /// `None` with `--tcp off`.
    tcp: Option<String>,
    /// `--redis URL`: scale out through Redis; alone without it.
    redis: Option<String>,
    /// `--tls-cert FILE` and `--tls-key FILE`: serve over TLS.
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ws: "127.0.0.1:8080".into(),
        tcp: Some("127.0.0.1:9000".into()),
        redis: None,
        tls_cert: None,
        tls_key: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => args.ws = value()?,
            "--tcp" => args.tcp = Some(value()?).filter(|v| v != "off"),
            "--redis" => args.redis = Some(value()?),
            "--tls-cert" => args.tls_cert = Some(value()?),
            "--tls-key" => args.tls_key = Some(value()?),
            "-h" | "--help" => {
                return Err("usage: chat [--ws ADDR] [--tcp ADDR|off] [--redis URL] [--tls-cert FILE --tls-key FILE]".into());
            }
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    // Shared, so further listeners (another transport) join the same room.
    let hub = Hub::with_broker(broker(args.redis.as_deref()).await?);
    let chat = Arc::new(Chat { hub });
    let ws = WsTransport::builder()
        .route("/chat", chat.clone())
        .page("/", Page::html(include_str!("chat.html")))
        .build()?;
    let tls = server_tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let mut builder = bind(Server::builder(), args.ws, ws, tls.as_ref());
    if let Some(tcp) = args.tcp {
        let lines = TcpTransport::lines(chat);
        builder = bind(builder, tcp, lines, tls.as_ref());
    }
    let server = builder.start().await?;
    let ws_addr = server.local_addrs()[0];
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("chat: open {http}://{ws_addr}/ in two browser tabs (socket: {ws}://{ws_addr}/chat)");
    if let (Some(tcp), Some(_)) = (server.local_addrs().get(1), &tls) {
        println!("chat: or from a terminal: cargo run --example client -- tls://{tcp} --ca CERT");
    } else if let Some(tcp) = server.local_addrs().get(1) {
        println!(
            "chat: or join from a terminal: nc {} {}",
            tcp.ip(),
            tcp.port()
        );
    }
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("chat: shutting down");
    server.shutdown().await;
    Ok(())
}

/// Redis when a URL is given, the in-process broker otherwise.
#[cfg(feature = "redis")]
async fn broker(url: Option<&str>) -> Result<Arc<dyn Broker>, BoxError> {
    use switchboard::redis::{RedisOptions, broker_from_url};
    Ok(broker_from_url(url, RedisOptions::default()).await?)
}

#[cfg(not(feature = "redis"))]
async fn broker(url: Option<&str>) -> Result<Arc<dyn Broker>, BoxError> {
    match url {
        None => Ok(Arc::new(switchboard::LocalBroker)),
        Some(_) => Err("--redis needs the `redis` feature, which is on by default: build without --no-default-features".into()),
    }
}

#[cfg(feature = "tls")]
type Tls = switchboard::tls::ServerTls;
#[cfg(not(feature = "tls"))]
type Tls = std::convert::Infallible;

/// The certificate and key of `--tls-cert` and `--tls-key`, if given.
#[cfg(feature = "tls")]
fn server_tls(cert: Option<&str>, key: Option<&str>) -> Result<Option<Tls>, BoxError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Tls::from_pem_files(cert, key)?)),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

#[cfg(not(feature = "tls"))]
fn server_tls(cert: Option<&str>, key: Option<&str>) -> Result<Option<Tls>, BoxError> {
    match (cert, key) {
        (None, None) => Ok(None),
        _ => Err("--tls-cert needs the `tls` feature, which is on by default".into()),
    }
}

/// Binds `transport` on `addr`, inside TLS when a certificate was given.
#[cfg(feature = "tls")]
fn bind<T>(builder: ServerBuilder, addr: String, transport: T, tls: Option<&Tls>) -> ServerBuilder
where
    T: Transport<TcpStream> + Transport<switchboard::tls::ServerTlsStream<TcpStream>>,
{
    match tls {
        Some(tls) => builder.bind(
            addr,
            switchboard::tls::TlsTransport::new(tls.clone(), transport),
        ),
        None => builder.bind(addr, transport),
    }
}

#[cfg(not(feature = "tls"))]
fn bind<T>(builder: ServerBuilder, addr: String, transport: T, tls: Option<&Tls>) -> ServerBuilder
where
    T: Transport<TcpStream>,
{
    match tls {
        Some(never) => match *never {},
        None => builder.bind(addr, transport),
    }
}
