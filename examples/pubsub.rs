//! Publish/subscribe on named topics, for WebSocket clients and raw TCP
//! (`nc`) alike, alone or as one node of a cluster on Redis.
//!
//! ```sh
//! cargo run --example pubsub                  # one node
//! nc 127.0.0.1 9090                                            # then type the commands below
//!
//! # a cluster: run two nodes on one Redis; a topic spans both
//! cargo run --example pubsub -- --redis redis://127.0.0.1:6379
//! cargo run --example pubsub -- --redis redis://127.0.0.1:6379 \
//!     --ws 127.0.0.1:8091 --tcp 127.0.0.1:9091
//! ```
//!
//! Flags: `--ws ADDR` (default 127.0.0.1:8090; one command per text message,
//! any path), `--tcp ADDR` (newline-delimited lines, default 127.0.0.1:9090)
//! and `--redis URL` (scale out; without it the node runs alone on the
//! in-process broker).
//!
//! The protocol ([`switchboard::redis::Topics`]):
//!
//! ```text
//! SUB topic            -> OK SUB topic
//! UNSUB topic          -> OK UNSUB topic
//! PUB topic some text  -> every subscriber, on every node: MSG topic some text
//!                         the publisher: OK PUB topic
//! anything else        -> ERR reason (the connection stays open)
//! ```
//!
//! A topic is 1 to 128 bytes without spaces; the text is one line. Another
//! program can publish into topic `t` with
//! `Emitter::publish(&Topics::room("t"), Topics::message("t", text))`.
//! Ctrl-C stops the node cleanly.

use std::process::ExitCode;
use std::sync::Arc;

use switchboard::redis::{RedisOptions, Topics, broker_from_url};
use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{BoxError, Hub, Server};

/// mimalloc hands freed memory back to the system (a second or so after
/// the free, as the server goes on working), where glibc's malloc keeps
/// what a burst of large buffers freed: see "Memory after an attack" in
/// docs/reliability.md. The library sets no allocator; a binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    ws: String,
    tcp: String,
    redis: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ws: "127.0.0.1:8090".into(),
        tcp: "127.0.0.1:9090".into(),
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => args.ws = value()?,
            "--tcp" => args.tcp = value()?,
            "--redis" => args.redis = Some(value()?),
            "-h" | "--help" => {
                return Err("usage: pubsub [--ws ADDR] [--tcp ADDR] [--redis URL]".into());
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
            eprintln!("pubsub: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let broker = broker_from_url(args.redis.as_deref(), RedisOptions::default()).await?;
    let topics = Arc::new(Topics::new(Hub::with_broker(broker)));
    let ws = WsTransport::builder().fallback(topics.clone()).build()?;
    let server = Server::builder()
        .bind(args.ws, ws)
        .bind(args.tcp, TcpTransport::lines(topics))
        .start()
        .await?;
    let (ws, tcp) = (server.local_addrs()[0], server.local_addrs()[1]);
    match &args.redis {
        Some(url) => println!("pubsub: one node of the cluster on {url}"),
        None => println!("pubsub: running alone (no --redis)"),
    }
    println!("pubsub: ws://{ws}/ and nc {} {}", tcp.ip(), tcp.port());
    println!("pubsub: try SUB news, then PUB news hello; press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("pubsub: shutting down");
    server.shutdown().await;
    Ok(())
}
