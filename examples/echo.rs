//! Echoes every message back to its sender: text as text, binary as binary.
//!
//! ```sh
//! cargo run --example echo                      # ws://127.0.0.1:8080/ and nc 127.0.0.1 9000
//! cargo run --example echo -- --ws 127.0.0.1:9001 --max-message-size 16777216 --deflate
//! ```
//!
//! Flags: `--ws ADDR` (default 127.0.0.1:8080), `--tcp ADDR` (newline-
//! delimited lines, default 127.0.0.1:9000; `--tcp off` disables it),
//! `--max-message-size BYTES` (default 1 MiB; the Autobahn conformance suite
//! needs 16 MiB) and `--deflate` (accept permessage-deflate from clients
//! that offer it, with `Deflate::new()`). The WebSocket side serves every
//! path and accepts any Origin. Ctrl-C stops it cleanly.

use std::process::ExitCode;
use std::sync::Arc;

use switchboard::tcp::TcpTransport;
use switchboard::ws::{Deflate, OriginPolicy, WsTransport};
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server};

/// mimalloc hands freed memory back to the system (a second or so after
/// the free, as the server goes on working), where glibc's malloc keeps
/// what a burst of large buffers freed: see "Memory after an attack" in
/// docs/reliability.md. The library sets no allocator; a binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

struct Args {
    ws: String,
    /// `None` with `--tcp off`.
    tcp: Option<String>,
    max_message_size: usize,
    deflate: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ws: "127.0.0.1:8080".into(),
        tcp: Some("127.0.0.1:9000".into()),
        max_message_size: 1 << 20,
        deflate: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => args.ws = value()?,
            "--tcp" => args.tcp = Some(value()?).filter(|v| v != "off"),
            "--max-message-size" => {
                args.max_message_size = value()?
                    .parse()
                    .map_err(|e| format!("--max-message-size: {e}"))?;
            }
            "--deflate" => args.deflate = true,
            "-h" | "--help" => {
                return Err(
                    "usage: echo [--ws ADDR] [--tcp ADDR|off] [--max-message-size BYTES] [--deflate]"
                        .into(),
                );
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
            eprintln!("echo: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let size = args.max_message_size;
    // A message may be as large as the limit, and an echo queues it once.
    let config = Config::default()
        .max_message_size(size)
        .max_frame_size(size)
        .queue_max_bytes(size.max(1 << 20) * 2);
    let echo = Arc::new(Echo);
    let mut ws = WsTransport::builder()
        .fallback(echo.clone())
        .origins(OriginPolicy::Any);
    if args.deflate {
        ws = ws.deflate(Deflate::new());
    }
    let ws = ws.build()?;
    let mut builder = Server::builder().config(config).bind(args.ws, ws);
    if let Some(tcp) = args.tcp {
        builder = builder.bind(tcp, TcpTransport::lines(echo));
    }
    let server = builder.start().await?;
    let addrs = server.local_addrs();
    println!("echo: listening on ws://{}/", addrs[0]);
    if let Some(tcp) = addrs.get(1) {
        println!(
            "echo: and on TCP lines at {tcp} (try: nc {} {})",
            tcp.ip(),
            tcp.port()
        );
    }
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("echo: shutting down");
    server.shutdown().await;
    Ok(())
}
