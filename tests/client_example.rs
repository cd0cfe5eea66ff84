#![allow(clippy::unwrap_used)]
//! The `client` example against the `chat` example: the built example
//! binaries, on 127.0.0.1 ports the chat picks, over WebSocket and TCP
//! lines, in plain text and over TLS.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// `target/<profile>/examples/<name>`, built by a plain `cargo test` with
/// the tests.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

struct Chat {
    child: Child,
    /// Kept open, so that the chat can go on printing.
    _out: Lines<BufReader<ChildStdout>>,
    ws: String,
    tcp: String,
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
    timeout(LIMIT, async {
        while ws.is_none() || tcp.is_none() {
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
        }
    })
    .await
    .expect("chat starts");
    Chat {
        child,
        _out: out,
        ws: ws.unwrap(),
        tcp: tcp.unwrap(),
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
