//! A command-line chat client: reads lines from stdin, sends each one, and
//! prints every message that arrives. Talks to the chat example over
//! WebSocket or TCP lines, in plain text or over TLS.
//!
//! ```sh
//! cargo run --example chat                                  # in one terminal
//! cargo run --example client -- ws://127.0.0.1:8080/chat     # in two others
//! cargo run --example client -- tcp://127.0.0.1:9000
//!
//! # against `chat --tls-cert cert.pem --tls-key key.pem`:
//! cargo run --example client -- wss://127.0.0.1:8080/chat --ca cert.pem
//! cargo run --example client -- tls://127.0.0.1:9000 --ca cert.pem
//! ```
//!
//! `--ca FILE` trusts that PEM certificate (a self-signed server's);
//! without it `wss://` and `tls://` check the platform's root certificates.
//! `--reconnect` keeps the connection up across server restarts.
//! End stdin (Ctrl-D) to leave.

use std::process::ExitCode;
use std::time::Duration;

use switchboard::tcp::{self, Codec};
use switchboard::tls::TlsConnector;
use switchboard::ws;
use switchboard::{
    BoxError, ClientHandle, CloseReason, Connection, Message, MessageComponent, Reconnect,
    ReconnectPolicy, Reconnecting,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// mimalloc hands freed memory back to the system (a second or so after
/// the free, as the server goes on working), where glibc's malloc keeps
/// what a burst of large buffers freed: see "Memory after an attack" in
/// docs/reliability.md. The library sets no allocator; a binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints what arrives, and when the connection opens and closes.
struct Print;

impl MessageComponent for Print {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let again = conn
            .extension::<Reconnect>()
            .is_some_and(|r| r.is_reconnect());
        let what = if again {
            "reconnected to"
        } else {
            "connected to"
        };
        eprintln!("* {what} {}", conn.peer_addr());
        Ok(())
    }

    async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
        match msg.as_text() {
            Some(text) => println!("{text}"),
            None => println!("<{} bytes of binary>", msg.len()),
        }
        Ok(())
    }

    async fn on_close(&self, _conn: &Connection, reason: CloseReason) {
        eprintln!("* {reason}");
    }
}

struct Args {
    url: String,
    ca: Option<String>,
    reconnect: bool,
}

const USAGE: &str = "usage: client URL [--ca FILE] [--reconnect]
  URL: ws://HOST:PORT/PATH, wss://HOST:PORT/PATH, tcp://HOST:PORT or tls://HOST:PORT";

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut ca = None;
    let mut reconnect = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--ca" => ca = Some(it.next().ok_or("--ca needs a file")?),
            "--reconnect" => reconnect = true,
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}\n{USAGE}")),
            _ if url.is_none() => url = Some(arg),
            _ => return Err(USAGE.into()),
        }
    }
    Ok(Args {
        url: url.ok_or(USAGE)?,
        ca,
        reconnect,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
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
            eprintln!("client: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One connection, or one that comes back.
enum Session {
    Once(ClientHandle),
    Reconnecting(Reconnecting),
}

async fn run(args: Args) -> Result<(), BoxError> {
    let tls = match &args.ca {
        Some(ca) => Some(TlsConnector::with_ca_file(ca)?),
        None => None,
    };
    let policy = ReconnectPolicy::default().max(Duration::from_secs(5));
    let session = if args.url.starts_with("ws://") || args.url.starts_with("wss://") {
        let mut client = ws::Client::new(args.url.as_str());
        if let Some(tls) = tls {
            client = client.tls(tls);
        }
        if args.reconnect {
            Session::Reconnecting(client.reconnecting(Print, policy)?)
        } else {
            Session::Once(client.connect(Print).await?)
        }
    } else if let Some(addr) = args.url.strip_prefix("tcp://") {
        let client = tcp::Client::new(addr, Codec::lines());
        if args.reconnect {
            Session::Reconnecting(client.reconnecting(Print, policy)?)
        } else {
            Session::Once(client.connect(Print).await?)
        }
    } else if let Some(addr) = args.url.strip_prefix("tls://") {
        let tls = match tls {
            Some(tls) => tls,
            None => TlsConnector::platform()?,
        };
        let client = tcp::Client::new(addr, Codec::lines()).tls(tls);
        if args.reconnect {
            Session::Reconnecting(client.reconnecting(Print, policy)?)
        } else {
            Session::Once(client.connect(Print).await?)
        }
    } else {
        return Err(format!("{}: not a ws://, wss://, tcp:// or tls:// URL", args.url).into());
    };

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    match &session {
        Session::Once(client) => loop {
            tokio::select! {
                line = lines.next_line() => match line? {
                    Some(line) => client.send(line)?,
                    None => break,
                },
                _ = client.closed() => return Ok(()),
            }
        },
        Session::Reconnecting(client) => {
            while let Some(line) = lines.next_line().await? {
                if client.send(line).is_err() {
                    eprintln!("* not connected; line dropped");
                }
            }
        }
    }
    // End of input: leave cleanly.
    match session {
        Session::Once(client) => {
            client.close();
            client.closed().await;
        }
        Session::Reconnecting(client) => {
            client.stop();
            client.finished().await;
        }
    }
    Ok(())
}
