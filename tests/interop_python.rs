//! The WebSocket client with permessage-deflate against Python websockets'
//! server (tests/interop/echo_server.py): what was offered and agreed, as
//! the server saw it; text and 1 MiB binary messages echoed byte for byte;
//! and, from the server's record of every frame, which messages each side
//! compressed.
//!
//! Needs a Python with the pinned websockets
//! (tests/interop/requirements.txt), named by `INTEROP_PYTHON`:
//! `scripts/interop.sh` sets up that virtualenv and runs these tests with
//! `--include-ignored`. A plain `cargo test` has no such Python, so the
//! tests are ignored there rather than failing; run without
//! `INTEROP_PYTHON`, they fail.
#![cfg(feature = "ws")]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use switchboard::ws::{Client, Deflate};
use switchboard::{BoxError, ClientHandle, Config, Connection, Message, MessageComponent};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for any single wait; never a sleep.
const LIMIT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

/// Our client's offer (`Deflate::new()`: no context takeover, else the
/// server may keep its own).
const OFFER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover, \
                     permessage-deflate; client_no_context_takeover";

/// Hands every message to the test.
struct Collect(mpsc::UnboundedSender<Message>);

impl MessageComponent for Collect {
    async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self.0.send(msg);
        Ok(())
    }
}

struct PythonServer {
    /// Killed on drop; its standard input closing stops it too.
    _child: Child,
    url: String,
}

/// Starts tests/interop/echo_server.py with `args` and reads its URL.
async fn start_server(args: &[&str]) -> PythonServer {
    let python = std::env::var("INTEROP_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    let python = python.expect(
        "INTEROP_PYTHON must name a Python with tests/interop/requirements.txt installed \
         (run scripts/interop.sh, which sets it up)",
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let mut child = Command::new(&python)
        .arg(dir.join("echo_server.py"))
        .args(args)
        .current_dir(&dir)
        // Leaves no __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run INTEROP_PYTHON={python}: {e}"));
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = timeout(LIMIT, async {
        loop {
            let line = out.next_line().await.expect("read the server's output");
            let line = line.expect("echo_server.py exited before listening");
            if let Some(url) = line.strip_prefix("echo_server: listening on ") {
                return url.to_owned();
            }
        }
    })
    .await
    .expect("echo_server.py listens in time");
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    PythonServer { _child: child, url }
}

struct Peer {
    client: ClientHandle,
    rx: mpsc::UnboundedReceiver<Message>,
}

async fn connect(url: &str) -> Peer {
    let (tx, rx) = mpsc::unbounded_channel();
    // Room for a 1 MiB message, and for its compressed form, which is a
    // little larger when the bytes do not compress.
    let config = Config::default()
        .max_message_size(16 * MIB)
        .max_frame_size(16 * MIB)
        .queue_max_bytes(32 * MIB);
    let client = timeout(
        LIMIT,
        Client::new(url)
            .config(config)
            .deflate(Deflate::new())
            .connect(Collect(tx)),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    Peer { client, rx }
}

impl Peer {
    async fn next(&mut self) -> Message {
        timeout(LIMIT, self.rx.recv())
            .await
            .expect("a message in time")
            .expect("the connection is still open")
    }

    /// Sends `msg` and checks that the echo is the same kind and bytes.
    async fn echo(&mut self, name: &str, msg: Message) {
        self.client.send(msg.clone()).expect("send");
        let echo = self.next().await;
        assert_eq!(echo.is_text(), msg.is_text(), "{name}: kind of the echo");
        assert_eq!(echo.len(), msg.len(), "{name}: length of the echo");
        assert!(echo == msg, "{name}: the echo differs");
    }

    /// The server's report on this connection.
    async fn report(&mut self) -> Report {
        self.client.send("extensions?").expect("send");
        let answer = self.next().await;
        let text = answer.as_text().expect("the report is text");
        let report: Value = serde_json::from_str(text).expect("the report is JSON");
        let frames = |key: &str| -> Vec<(bool, usize)> {
            let list = report[key].as_array();
            let list = list.unwrap_or_else(|| panic!("no {key} in {report}: deflate not agreed"));
            list.iter()
                .map(|f| {
                    let compressed = f[0].as_bool().expect("compressed flag");
                    let wire = f[1].as_u64().expect("wire bytes");
                    (compressed, usize::try_from(wire).expect("size"))
                })
                .collect()
        };
        Report {
            offered: report["offered"]
                .as_array()
                .expect("offered")
                .iter()
                .map(|v| v.as_str().expect("header value").to_owned())
                .collect(),
            agreed: report["agreed"].as_str().map(str::to_owned),
            server_keeps_context: report["server_keeps_context"].as_bool(),
            client_keeps_context: report["client_keeps_context"].as_bool(),
            received: frames("received"),
            sent: frames("sent"),
        }
    }

    async fn close(self) {
        self.client.close();
        timeout(LIMIT, self.client.closed())
            .await
            .expect("closed in time");
    }
}

/// What the Python server saw of one connection.
#[derive(Debug)]
struct Report {
    offered: Vec<String>,
    agreed: Option<String>,
    server_keeps_context: Option<bool>,
    client_keeps_context: Option<bool>,
    /// Per data message from the client, [compressed, wire bytes]; the
    /// last is the "extensions?" request itself.
    received: Vec<(bool, usize)>,
    /// Per data message to the client.
    sent: Vec<(bool, usize)>,
}

/// The parameters of a one-element `Sec-WebSocket-Extensions` value.
fn params(agreed: &str) -> Vec<String> {
    let mut parts = agreed.split(';').map(str::trim);
    assert_eq!(parts.next(), Some("permessage-deflate"), "{agreed}");
    assert!(!agreed.contains(','), "one extension: {agreed}");
    parts.map(str::to_owned).collect()
}

/// Chat-like JSON of about `size` bytes: repetitive, as real traffic is.
fn json_text(size: usize) -> String {
    let mut rows = Vec::new();
    let mut len = 0;
    for n in 0.. {
        if len >= size {
            break;
        }
        let row = format!(
            r#"{{"id":{n},"user":"user{}","text":"hello, room"}}"#,
            n % 7
        );
        len += row.len() + 1;
        rows.push(row);
    }
    format!("[{}]", rows.join(","))
}

/// Deterministic bytes that do not compress (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lowercase letters that only compress against an earlier copy of
/// themselves (about 4.7 bits of information per byte).
fn letters(len: usize, seed: u64) -> String {
    noise(len, seed)
        .into_iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect()
}

fn compressible_binary() -> Vec<u8> {
    (0..MIB).map(|i| (i % 256) as u8).collect()
}

#[tokio::test]
#[ignore = "needs Python websockets (INTEROP_PYTHON): run by scripts/interop.sh"]
async fn client_agrees_deflate_with_python_websockets_and_messages_round_trip() {
    let server = start_server(&[]).await;
    let mut peer = connect(&server.url).await;

    let json = json_text(16 * 1024);
    let compressible = compressible_binary();
    let cases = [
        // (name, message, our client compresses it, at most this many wire bytes)
        ("short text", Message::text("hello"), Some(false), None),
        (
            "255 bytes",
            Message::text("a".repeat(255)),
            Some(false),
            None,
        ),
        (
            "256 bytes",
            Message::text("a".repeat(256)),
            Some(true),
            Some(32),
        ),
        (
            "JSON text",
            Message::text(json.clone()),
            Some(true),
            Some(json.len() / 5),
        ),
        (
            "non-ASCII text",
            Message::text("żółw 🐢 ".repeat(200)),
            Some(true),
            Some(512),
        ),
        (
            "1 MiB binary, compressible",
            Message::binary(compressible),
            Some(true),
            Some(MIB / 50),
        ),
        // Compressed or not, as the client sees fit.
        (
            "1 MiB binary, random",
            Message::binary(noise(MIB, 7692)),
            None,
            None,
        ),
    ];
    for (name, msg, _, _) in &cases {
        peer.echo(name, msg.clone()).await;
    }

    let report = peer.report().await;
    println!("{report:?}");
    assert_eq!(report.offered, [OFFER], "what the server received");
    let agreed = report.agreed.as_deref().expect("deflate agreed");
    // websockets takes the first offer and says which window it uses.
    let mut got = params(agreed);
    got.sort();
    assert_eq!(
        got,
        [
            "client_no_context_takeover",
            "server_max_window_bits=12",
            "server_no_context_takeover"
        ],
        "{agreed}"
    );
    assert_eq!(report.server_keeps_context, Some(false));
    assert_eq!(report.client_keeps_context, Some(false));

    // The last message received is the "extensions?" request.
    assert_eq!(report.received.len(), cases.len() + 1, "{report:?}");
    for ((name, msg, compressed, at_most), &(was, wire)) in cases.iter().zip(&report.received) {
        if let Some(compressed) = compressed {
            assert_eq!(was, *compressed, "{name}: RSV1 of what the client sent");
        }
        if !was {
            assert_eq!(wire, msg.len(), "{name}: sent as is");
        }
        if let Some(at_most) = at_most {
            assert!(wire <= *at_most, "{name}: {wire} bytes on the wire");
        }
    }
    // websockets compresses every message: the client inflated them all.
    assert_eq!(report.sent.len(), cases.len(), "{report:?}");
    assert!(report.sent.iter().all(|&(c, _)| c), "{report:?}");
    peer.close().await;
}

#[tokio::test]
#[ignore = "needs Python websockets (INTEROP_PYTHON): run by scripts/interop.sh"]
async fn client_inflates_a_server_that_keeps_its_context() {
    let server = start_server(&["--keep-context"]).await;
    let mut peer = connect(&server.url).await;

    // 1500 letters: two of them fit in the server's 4 KiB window, so a
    // copy sent soon after the first compresses to a reference to it,
    // which only a client that kept the earlier messages can inflate.
    let a = letters(1500, 1);
    let b = letters(1500, 2);
    let sequence = [
        ("letters A", Message::text(a.clone())),
        ("letters A again", Message::text(a.clone())),
        ("letters B", Message::text(b.clone())),
        ("letters A, after B", Message::text(a.clone())),
        ("short text", Message::text("hello")),
        (
            "1 MiB binary, compressible",
            Message::binary(compressible_binary()),
        ),
        ("letters B, after 1 MiB", Message::text(b)),
        ("1 MiB binary, random", Message::binary(noise(MIB, 42))),
        ("letters A, at the end", Message::text(a)),
    ];
    for (name, msg) in &sequence {
        peer.echo(name, msg.clone()).await;
    }

    let report = peer.report().await;
    println!("{report:?}");
    assert_eq!(report.offered, [OFFER], "what the server received");
    let agreed = report.agreed.as_deref().expect("deflate agreed");
    // The second offer: the server keeps its context, the client does not.
    let mut got = params(agreed);
    got.sort();
    assert_eq!(
        got,
        ["client_no_context_takeover", "server_max_window_bits=12"],
        "{agreed}"
    );
    assert_eq!(report.server_keeps_context, Some(true));
    assert_eq!(report.client_keeps_context, Some(false));

    assert_eq!(report.sent.len(), sequence.len(), "{report:?}");
    assert!(report.sent.iter().all(|&(c, _)| c), "{report:?}");
    let sent = |i: usize| report.sent[i].1;
    // The first copy costs about 4.7 bits a letter; the next ones, sent
    // with the context, refer to it.
    assert!(sent(0) > 700, "letters A: {} bytes", sent(0));
    assert!(sent(1) < 100, "letters A again: {} bytes", sent(1));
    assert!(sent(3) < 100, "letters A after B: {} bytes", sent(3));
    // What the client sends is compressed message by message, as it asked.
    let received = &report.received;
    assert_eq!(received[0], received[1], "{report:?}");
    assert!(received[0].0 && received[0].1 > 700, "{report:?}");
    peer.close().await;
}
