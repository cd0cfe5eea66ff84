#![allow(clippy::unwrap_used)]
//! The `client` example against the `chat` example: the built example
//! binaries, on 127.0.0.1 ports the chat picks, over WebSocket and TCP
//! lines, in plain text and over TLS. Then the chat's rules for what it
//! relays (lines, no control characters, no binary), the client against a
//! server that sends anything, and a flooder against the chat's limits.

#[path = "support/examples.rs"]
mod examples;

use examples::example;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LIMIT: Duration = Duration::from_secs(30);

/// `target/<profile>/examples/<name>`, built by a plain `cargo test` with
/// the tests.
struct Chat {
    child: Child,
    ws: String,
    tcp: String,
    /// The limits the chat printed: `rate`, `burst`, `max_message`,
    /// `queue_messages`, `queue_bytes`.
    limits: HashMap<String, f64>,
}

/// Starts the chat on port 0 and reads the addresses it prints.
async fn start_chat(extra: &[&str]) -> Chat {
    let mut child = Command::new(example("chat"))
        .args(["--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ws, mut tcp) = (None, None);
    let mut limits = HashMap::new();
    timeout(LIMIT, async {
        while ws.is_none() || tcp.is_none() || limits.is_empty() {
            let line = out.next_line().await.unwrap().expect(
                "the chat example exited early (`cargo test --test client_example` \
                     alone does not rebuild the examples; a plain `cargo test` does)",
            );
            // "(socket: ws://127.0.0.1:PORT/chat)" or wss://
            if let Some(rest) = line.split("socket: ").nth(1) {
                let url = rest.trim_end_matches(')');
                let addr = url.split("://").nth(1).unwrap().trim_end_matches("/chat");
                ws = Some(addr.to_owned());
            }
            // "nc 127.0.0.1 PORT" or "client -- tls://127.0.0.1:PORT --ca CERT"
            if let Some(rest) = line.split("nc ").nth(1) {
                tcp = Some(rest.trim().replace(' ', ":"));
            } else if let Some(rest) = line.split("tls://").nth(1) {
                tcp = Some(rest.split_whitespace().next().unwrap().to_owned());
            }
            // "chat: limits: rate=10/s burst=50 ..."
            if let Some(rest) = line.strip_prefix("chat: limits: ") {
                for pair in rest.split_whitespace() {
                    let (key, value) = pair.split_once('=').unwrap();
                    let value = value.trim_end_matches("/s").parse().unwrap();
                    limits.insert(key.to_owned(), value);
                }
            }
        }
    })
    .await
    .expect("chat starts");
    // Read on, so that the chat can go on printing (its log goes to stdout
    // too): a full pipe would block the chat's runtime on its next line.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Chat {
        child,
        ws: ws.unwrap(),
        tcp: tcp.unwrap(),
        limits,
    }
}

struct Client {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

fn start_client(args: &[&str]) -> Client {
    let mut child = Command::new(example("client"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap()).lines();
    Client { child, out }
}

impl Client {
    async fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Ends stdin; the client closes and exits by itself.
    async fn leave(mut self) {
        drop(self.child.stdin.take());
        let status = timeout(LIMIT, self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status}");
    }
}

/// `from` says numbered lines (bounded) until `to` prints one: both have
/// joined the room once a line gets through. Returns what `to` printed.
async fn talk(from: &mut Client, to: &mut Client, text: &str) {
    timeout(LIMIT, async {
        for n in 0.. {
            from.say(&format!("{text} {n}")).await;
            if let Ok(line) = timeout(Duration::from_millis(200), to.out.next_line()).await {
                let line = line.unwrap().expect("client still running");
                assert!(line.starts_with(text), "{line}");
                return;
            }
        }
    })
    .await
    .expect("a line gets through");
}

async fn chat_between(chat: &Chat, ws_url: String, tcp_url: String, extra: &[&str]) {
    let mut browser = start_client(&[&[ws_url.as_str()], extra].concat());
    let mut terminal = start_client(&[&[tcp_url.as_str()], extra].concat());
    talk(&mut browser, &mut terminal, "hello from ws").await;
    talk(&mut terminal, &mut browser, "hello from tcp").await;
    browser.leave().await;
    terminal.leave().await;
    let _ = chat;
}

#[tokio::test]
async fn client_example_chats_over_ws_and_tcp() {
    let mut chat = start_chat(&[]).await;
    let ws_url = format!("ws://{}/chat", chat.ws);
    let tcp_url = format!("tcp://{}", chat.tcp);
    chat_between(&chat, ws_url, tcp_url, &[]).await;
    chat.child.kill().await.unwrap();
}

#[tokio::test]
async fn client_example_chats_over_wss_and_tls() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir =
        std::env::temp_dir().join(format!("switchboard-client-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    let (cert_path, key_path) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());

    let mut chat = start_chat(&["--tls-cert", cert_path, "--tls-key", key_path]).await;
    let ws_url = format!("wss://{}/chat", chat.ws);
    let tcp_url = format!("tls://{}", chat.tcp);
    chat_between(&chat, ws_url, tcp_url, &["--ca", cert_path]).await;
    chat.child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---- The chat's rules for what it relays, and the client's for what it prints

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: &str) -> Ws {
    let url = format!("ws://{addr}/chat");
    let (ws, _) = timeout(LIMIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::text(text)).await.expect("send");
}

/// The next text message, skipping control frames.
async fn ws_text(ws: &mut Ws) -> String {
    loop {
        match timeout(LIMIT, ws.next()).await.expect("message in time") {
            Some(Ok(WsMessage::Text(text))) => return text.to_string(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The close code the server sent, skipping messages.
async fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match timeout(LIMIT, ws.next()).await.expect("close in time") {
            Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
}

/// A terminal user (`nc`): lines as the bytes that arrive.
struct Nc {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Nc {
    async fn connect(addr: &str) -> Nc {
        let stream = timeout(LIMIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (r, w) = stream.into_split();
        Nc {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// The next line with its `\n`, as bytes; `None` at the end of stream.
    async fn raw_line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line).await.ok()?;
        (n > 0).then_some(line)
    }

    /// Lines until (and without) the one that reads `last`, checking that
    /// no byte a terminal would act on arrives: C0 other than tab and the
    /// line end, DEL, C1.
    async fn lines_until(&mut self, last: &str) -> Vec<String> {
        let mut lines = Vec::new();
        timeout(LIMIT, async {
            loop {
                let raw = self.raw_line().await.expect("terminal still open");
                let line = String::from_utf8(raw).expect("UTF-8");
                let text = line.strip_suffix('\n').expect("a whole line");
                assert!(
                    !text.chars().any(|c| c != '\t' && c.is_control()),
                    "a control character reached the terminal: {text:?}"
                );
                if text == last {
                    return;
                }
                lines.push(text.to_owned());
            }
        })
        .await
        .expect("lines in time");
        lines
    }
}

/// `say` sends numbered messages (paced under the chat's rate limit) until
/// `hear` gets one: both have joined. Then a marker drains what is in
/// flight.
async fn joined(say: &mut Ws, hear: &mut Nc) {
    timeout(LIMIT, async {
        for n in 0.. {
            ws_send(say, &format!("hello {n}")).await;
            if timeout(Duration::from_millis(200), hear.raw_line())
                .await
                .is_ok()
            {
                break;
            }
        }
    })
    .await
    .expect("joined in time");
    ws_send(say, "joined").await;
    hear.lines_until("joined").await;
}

#[tokio::test]
async fn chat_example_relays_one_line_per_line_without_control_characters() {
    let mut chat = start_chat(&[]).await;
    let mut browser = ws_connect(&chat.ws).await;
    let mut terminal = Nc::connect(&chat.tcp).await;
    joined(&mut browser, &mut terminal).await;

    // A forged line, terminal sequences (OSC title, clear screen, C1 CSI,
    // DEL) and a CRLF: each line of it arrives as its own line, cleaned.
    ws_send(
        &mut browser,
        "hello\nFAKE <admin>: give me your password\r\n\x1b]0;pwned\x07title\x1b[2J\u{9b}31mred\u{7f}\tend",
    )
    .await;
    // More lines than one message relays: the first 16, and the sender is
    // told.
    let many: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
    ws_send(&mut browser, &many.join("\n")).await;
    ws_send(&mut browser, "after").await;
    let mut expected = vec![
        "hello".to_owned(),
        "FAKE <admin>: give me your password".to_owned(),
        "]0;pwnedtitle[2J31mred\tend".to_owned(),
    ];
    expected.extend(many[..16].iter().cloned());
    assert_eq!(terminal.lines_until("after").await, expected);
    assert!(
        ws_text(&mut browser)
            .await
            .starts_with("* only the first 16 lines"),
    );

    // What a terminal user types reaches the browser the same way.
    terminal
        .writer
        .write_all(b"from nc \x1b[31m\r\n")
        .await
        .unwrap();
    assert_eq!(ws_text(&mut browser).await, "from nc [31m");

    // Binary from a browser closes that browser with 1003; the others stay.
    browser
        .send(WsMessage::binary(&b"\xff\xfe"[..]))
        .await
        .expect("send");
    assert_eq!(ws_close_code(&mut browser).await, Some(1003));
    let mut other = ws_connect(&chat.ws).await;
    joined(&mut other, &mut terminal).await;
    chat.child.kill().await.unwrap();
}

#[tokio::test]
async fn client_example_survives_any_message() {
    // A server that writes what no lines codec would: the client must print
    // every line, escaped, and go on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = start_client(&[&format!("tcp://{addr}")]);
    let (sock, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let (read, mut sock) = sock.into_split();
    let mut read = BufReader::new(read);
    let long = 1 << 20; // the client's max_message_size
    let mut stream = Vec::new();
    stream.extend_from_slice(b"plain\n");
    stream.extend_from_slice(b"bin \xff\xfe\r\n");
    stream.extend_from_slice(b"\x1b]0;title\x07evil \x1b[2J\xc2\x9b!\n");
    stream.extend_from_slice(b"\n");
    stream.extend(std::iter::repeat_n(b'y', long + 1000));
    stream.extend_from_slice(b"\nnext\n");
    sock.write_all(&stream).await.unwrap();

    let mut printed = Vec::new();
    timeout(LIMIT, async {
        while printed.last().map(String::as_str) != Some("next") {
            let line = client.out.next_line().await.unwrap();
            printed.push(line.expect("the client is still running"));
        }
    })
    .await
    .expect("printed in time");
    let ys = "y".repeat(long);
    let expected = [
        "plain",
        "<binary, 6 bytes> bin \\xff\\xfe",
        "\\x1b]0;title\\x07evil \\x1b[2J\\u{9b}!",
        "",
        ys.as_str(),
        "next",
    ];
    assert_eq!(printed.len(), expected.len());
    for (got, want) in printed.iter().zip(expected) {
        assert_eq!(got, want, "{:.80}", got);
    }
    // Still connected: what is typed reaches the server.
    client.say("still here").await;
    let mut line = String::new();
    timeout(LIMIT, read.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "still here\n");
    drop(sock);
    client.leave().await;
}

// ---- A flooder against the chat's limits -----------------------------------

/// Peak or current resident memory of process `pid` in KiB.
fn proc_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads the room until "done": how many flood messages (`size` bytes)
/// arrived, or how the connection ended before.
async fn read_room_ws(mut ws: Ws, size: usize, joined: Arc<AtomicUsize>) -> Result<u64, String> {
    let (mut n, mut first) = (0, true);
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                if std::mem::take(&mut first) {
                    joined.fetch_add(1, Ordering::Relaxed);
                }
                match text.as_str() {
                    "done" => return Ok(n),
                    t if t.len() == size => n += 1,
                    _ => {}
                }
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            other => return Err(format!("websocket reader ended: {other:?}")),
        }
    }
}

async fn read_room_nc(mut nc: Nc, size: usize, joined: Arc<AtomicUsize>) -> Result<u64, String> {
    let (mut n, mut first) = (0, true);
    loop {
        let Some(line) = nc.raw_line().await else {
            return Err("terminal reader ended".into());
        };
        if std::mem::take(&mut first) {
            joined.fetch_add(1, Ordering::Relaxed);
        }
        match &line[..] {
            b"done\n" => return Ok(n),
            l if l.len() == size + 1 => n += 1,
            _ => {}
        }
    }
}

/// `count` masked WebSocket text frames of `size` bytes of 'x', back to back
/// (a zero mask key leaves the payload as it is), so that one write carries
/// many messages: a flood as fast as the socket takes it.
fn flood_frames(size: usize, count: usize) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&u16::try_from(size).unwrap().to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend(std::iter::repeat_n(b'x', size));
    frame.repeat(count)
}

/// One flooding connection to the chat's WebSocket: writes `frames`
/// (`per_write` messages) over and over until the server's close frame
/// arrives or `deadline`. Returns the messages written and the close code.
async fn flood_once(
    addr: &str,
    frames: &[u8],
    per_write: u64,
    deadline: Instant,
) -> (u64, Option<u16>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut head = String::new();
    while head != "\r\n" {
        head.clear();
        timeout(LIMIT, read.read_line(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert!(!head.is_empty(), "no upgrade");
    }
    // The server's frames: the room's messages, then a close.
    let close = tokio::spawn(async move {
        loop {
            let mut h = [0u8; 2];
            read.read_exact(&mut h).await.ok()?;
            let len = match h[1] & 0x7f {
                126 => u64::from(read.read_u16().await.ok()?),
                127 => read.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            read.read_exact(&mut payload).await.ok()?;
            if h[0] & 0x0f == 0x8 {
                return payload.first_chunk().map(|c| u16::from_be_bytes(*c));
            }
        }
    });
    let mut sent = 0;
    while !close.is_finished() && Instant::now() < deadline {
        if write.write_all(frames).await.is_err() {
            break;
        }
        sent += per_write;
    }
    drop(write);
    if !close.is_finished() && Instant::now() >= deadline {
        close.abort();
        return (sent, None);
    }
    let code = timeout(LIMIT, close).await.expect("close in time").unwrap();
    (sent, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_example_limits_a_flooder_and_its_readers_keep_up() {
    const READERS: usize = 20;
    const SIZE: usize = 8 * 1024;
    const FLOOD: Duration = Duration::from_secs(5);
    let mut chat = start_chat(&[]).await;
    let pid = chat.child.id().unwrap();
    let (rate, burst) = (chat.limits["rate"], chat.limits["burst"]);
    let queue_bytes = chat.limits["queue_bytes"] as u64;

    // 20 ordinary readers, half in browsers, half in terminals.
    let joined = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for i in 0..READERS {
        let joined = joined.clone();
        readers.push(if i % 2 == 0 {
            tokio::spawn(read_room_ws(ws_connect(&chat.ws).await, SIZE, joined))
        } else {
            tokio::spawn(read_room_nc(Nc::connect(&chat.tcp).await, SIZE, joined))
        });
    }
    // One more user says hello (under the rate limit) until all have joined.
    // It reads the room too (or it would be the slow consumer).
    let (mut herald, mut herald_in) = ws_connect(&chat.ws).await.split();
    tokio::spawn(async move { while let Some(Ok(_)) = herald_in.next().await {} });
    timeout(LIMIT, async {
        while joined.load(Ordering::Relaxed) < READERS {
            herald.send(WsMessage::text("hello")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
    .await
    .expect("readers joined");
    let baseline = proc_kib(pid, "VmRSS");

    // The flooder: 8 KiB messages as fast as the socket takes them, for 5 s.
    let started = Instant::now();
    let frames = flood_frames(SIZE, 64);
    let (sent, end) = flood_once(&chat.ws, &frames, 64, started + FLOOD).await;
    let flood_secs = started.elapsed().as_secs_f64();
    let peak = proc_kib(pid, "VmHWM");

    // Every reader is still there and gets the last word after the flood,
    // from someone new (the herald could have been closed too).
    let (mut last, mut last_in) = ws_connect(&chat.ws).await.split();
    tokio::spawn(async move { while let Some(Ok(_)) = last_in.next().await {} });
    last.send(WsMessage::text("done")).await.unwrap();
    let (mut delivered, mut closed) = (Vec::new(), Vec::new());
    for reader in readers {
        match timeout(LIMIT, reader)
            .await
            .expect("reader in time")
            .unwrap()
        {
            Ok(n) => delivered.push(n),
            Err(end) => closed.push(end),
        }
    }
    let most = delivered.iter().max().copied().unwrap_or(0);
    let least = delivered.iter().min().copied().unwrap_or(0);
    // What the limit lets through: the burst, plus the refill from the
    // flooder's connect (after `started`) until "done" was relayed (before
    // now: every reader has it).
    let allowed = burst + rate * started.elapsed().as_secs_f64();
    // The bound: each reader's queue full, plus a margin for the
    // flooder's buffers (a read buffer grows to 64 KiB), the runtime and
    // the allocator's slack.
    const MARGIN_KIB: u64 = 16 * 1024;
    let bound = baseline + READERS as u64 * queue_bytes / 1024 + MARGIN_KIB;
    println!(
        "FIGURE chat_flood: {sent} messages of 8 KiB sent in {flood_secs:.1} s, flooder {}; \
         {} of {READERS} readers closed, the others got {least}..={most} (allowed {allowed:.0}); \
         RSS baseline {:.1} MiB, peak {:.1} MiB, bound {:.1} MiB",
        match end {
            Some(code) => format!("closed with {code}"),
            None => "still open".into(),
        },
        closed.len(),
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        bound as f64 / 1024.0
    );
    assert!(closed.is_empty(), "readers closed: {closed:?}");
    // The chat drops what is over the limit and keeps the flooder.
    assert_eq!(end, None, "the flooder was closed");
    assert!((most as f64) <= allowed, "{most} > {allowed}");
    assert!(
        sent as f64 > 10.0 * allowed,
        "the flood never went far past the limit"
    );
    assert!(peak <= bound, "peak {peak} KiB over {bound} KiB");
    chat.child.kill().await.unwrap();
}
