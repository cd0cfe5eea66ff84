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
//!
//! Whatever another user (or server) sends, the client keeps running and
//! prints one line per message, never raw control characters:
//!
//! - control characters (C0 except tab, DEL, C1) are printed escaped
//!   (`\x1b`, `\u{9b}`), so escape sequences cannot retitle, clear or
//!   otherwise drive the terminal; line breaks inside a WebSocket message
//!   are printed as `\x0a` too, so one message is one printed line;
//! - bytes that are not UTF-8 are printed as `\xNN`, and a binary message
//!   as `<binary, N bytes> ` followed by its bytes printed the same way;
//! - on `tcp://` and `tls://`, lines are read with [`AnyLines`]: a line
//!   that is not UTF-8 arrives as a binary message instead of ending the
//!   connection (the library's lines codec closes with 1007 on it, which is
//!   right for a server but not for a client that only displays), and a
//!   line longer than the client's `max_message_size` (1 MiB) is printed
//!   cut at that length, the rest of it skipped, with a note on stderr;
//! - empty lines are printed as empty lines.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Buf;
use switchboard::tcp::{self, BytesMut, Codec, Decoder, Encoder};
use switchboard::tls::TlsConnector;
use switchboard::ws;
use switchboard::{
    BoxError, ClientHandle, CloseReason, Config, Connection, Message, MessageComponent, Reconnect,
    ReconnectPolicy, Reconnecting, Utf8Bytes,
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
        let printed = printable(msg.as_bytes());
        match msg.is_text() {
            true => println!("{printed}"),
            false => println!("<binary, {} bytes> {printed}", msg.len()),
        }
        Ok(())
    }

    async fn on_close(&self, _conn: &Connection, reason: CloseReason) {
        eprintln!("* {reason}");
    }
}

/// `bytes` with what a terminal must not receive escaped: control
/// characters (C0 except tab, DEL, C1) as `\x1b` or `\u{9b}`, and bytes
/// that are not UTF-8 as `\xff`.
fn printable(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push(c),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Lines in, lines out, for a client that only displays what arrives:
/// like [`Codec::lines`], but a line that is not UTF-8 is a binary message
/// rather than an error that ends the connection, and a line longer than
/// `max` is cut at `max` bytes (the rest of it skipped) rather than one.
/// Writing is [`Codec::lines`]'s.
#[derive(Clone)]
struct AnyLines {
    max: usize,
    /// Inside an over-long line: discard up to its end.
    skipping: bool,
    lines: Codec,
}

impl AnyLines {
    fn new(max: usize) -> Self {
        AnyLines {
            max: max.max(1),
            skipping: false,
            lines: Codec::lines(),
        }
    }

    /// A line without its end: text if it is UTF-8, binary otherwise.
    fn message(mut line: BytesMut) -> Message {
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        let line = line.freeze();
        match Utf8Bytes::try_from(line.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(line),
        }
    }
}

impl Decoder for AnyLines {
    type Item = Message;
    type Error = tcp::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, tcp::Error> {
        loop {
            // Searching `max + 2` bytes at most ("\r\n" after a full line)
            // bounds both the scan and what is buffered.
            let window = src.len().min(self.max + 2);
            let end = src[..window].iter().position(|b| *b == b'\n');
            match end {
                Some(i) if self.skipping => {
                    src.advance(i + 1);
                    self.skipping = false;
                }
                Some(i) => {
                    let mut line = src.split_to(i + 1);
                    line.truncate(i);
                    return Ok(Some(Self::message(line)));
                }
                None if self.skipping => {
                    src.clear();
                    return Ok(None);
                }
                None if src.len() > self.max + 1 => {
                    eprintln!(
                        "* a line over {} bytes: the rest of it is skipped",
                        self.max
                    );
                    self.skipping = true;
                    return Ok(Some(Self::message(src.split_to(self.max))));
                }
                None => return Ok(None),
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, tcp::Error> {
        if let Some(msg) = self.decode(src)? {
            return Ok(Some(msg));
        }
        if src.is_empty() || self.skipping {
            src.clear();
            return Ok(None);
        }
        Ok(Some(Self::message(src.split())))
    }
}

impl Encoder<Message> for AnyLines {
    type Error = tcp::Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), tcp::Error> {
        self.lines.encode(msg, dst)
    }
}

/// A line typed on stdin, as one line: a stray `\r` (the core would
/// refuse the line) is dropped.
fn typed(line: String) -> String {
    if line.contains('\r') {
        line.replace('\r', "")
    } else {
        line
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

/// A `tcp://` or `tls://` client reading with [`AnyLines`] under the
/// client's `max_message_size`.
fn lines_client(addr: &str) -> tcp::Client<AnyLines> {
    tcp::Client::with_codec_factory(addr, |config: &Config| {
        AnyLines::new(config.max_message_size)
    })
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
        let client = lines_client(addr);
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
        let client = lines_client(addr).tls(tls);
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
                    Some(line) => client.send(typed(line))?,
                    None => break,
                },
                _ = client.closed() => return Ok(()),
            }
        },
        Session::Reconnecting(client) => {
            while let Some(line) = lines.next_line().await? {
                if client.send(typed(line)).is_err() {
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
