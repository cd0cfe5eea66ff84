#![allow(clippy::unwrap_used)]
//! The `rooms` example, the built binary on 127.0.0.1 ports it picks: the
//! handshake's refusals, the JSON frames, TCP lines, recovery from a
//! position, and two nodes on a real redis-server (a node killed with
//! SIGKILL, Redis restarted mid-run).

#[path = "../crates/switchboard-redis/tests/support/mod.rs"]
mod redis_support;

#[path = "support/examples.rs"]
mod examples;

use examples::example;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redis_support::RedisServer;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LIMIT: Duration = Duration::from_secs(20);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// One running `rooms` process.
struct Node {
    child: Child,
    ws: String,
    tcp: Option<String>,
    /// Kept open: the example's later lines must not hit a closed pipe.
    _out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Node {
    async fn start(args: &[&str]) -> Node {
        let mut child = Command::new(example("rooms"))
            .args(["--ws", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = async || {
            timeout(LIMIT, out.next_line())
                .await
                .unwrap()
                .unwrap()
                .expect("the rooms example exited early (a plain `cargo test` builds it)")
        };
        let line = next().await;
        let ws = line
            .strip_prefix("rooms: open http://")
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .0
            .to_owned();
        let line = next().await;
        let tcp = line
            .strip_prefix("rooms: or from a terminal: nc ")
            .map(|rest| {
                let mut words = rest.split(' ');
                format!("{}:{}", words.next().unwrap(), words.next().unwrap())
            });
        Node {
            child,
            ws,
            tcp,
            _out: out,
        }
    }

    /// Connects to `/rooms/{path}`: the socket, or the HTTP status that
    /// refused it.
    async fn ws(&self, path: &str) -> Result<Ws, u16> {
        let url = format!("ws://{}/rooms/{path}", self.ws);
        match timeout(LIMIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
        {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(err) => panic!("connect {path}: {err}"),
        }
    }

    /// Joins `room` as `name` and returns the socket and its welcome.
    async fn join(&self, room: &str, query: &str) -> (Ws, Value) {
        let mut ws = self.ws(&format!("{room}?{query}")).await.unwrap();
        let welcome = recv(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    async fn tcp(&self) -> Lines {
        let stream = TcpStream::connect(self.tcp.as_deref().unwrap())
            .await
            .unwrap();
        let (read, write) = stream.into_split();
        Lines {
            read: BufReader::new(read).lines(),
            write,
        }
    }
}

struct Lines {
    read: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Lines {
    async fn send(&mut self, line: &str) {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// The next JSON line; `None` once the server closed.
    async fn recv(&mut self) -> Option<Value> {
        let line = timeout(LIMIT, self.read.next_line())
            .await
            .unwrap()
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap())
    }
}

/// The next JSON text frame.
async fn recv(ws: &mut Ws) -> Value {
    recv_within(ws, LIMIT).await
}

async fn recv_within(ws: &mut Ws, limit: Duration) -> Value {
    loop {
        match timeout(limit, ws.next()).await.unwrap().unwrap().unwrap() {
            WsMessage::Text(text) => return serde_json::from_str(&text).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }
}

async fn say(ws: &mut Ws, text: &str) {
    let frame = json!({"type": "message", "text": text}).to_string();
    ws.send(WsMessage::text(frame)).await.unwrap();
}

fn members(welcome: &Value) -> Vec<String> {
    let mut names: Vec<String> = welcome["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// A message frame's position, checked to be a non-empty string.
fn position(frame: &Value) -> String {
    let p = frame["position"].as_str().unwrap();
    assert!(!p.is_empty());
    p.to_owned()
}

#[tokio::test]
async fn the_handshake_refuses_bad_rooms_names_and_tokens() {
    let node = Node::start(&["--tcp", "off", "--token", "s3cret"]).await;
    let ok = "token=s3cret";
    for (path, status) in [
        (format!("lobby?name=ada&{ok}"), None),
        (format!("a-Z_9?name=ada&{ok}"), None),
        (format!("{}?name=ada&{ok}", "r".repeat(64)), None),
        (format!("{}?name=ada&{ok}", "r".repeat(65)), Some(400)),
        (format!("bad.room?name=ada&{ok}"), Some(400)),
        (format!("bad%20room?name=ada&{ok}"), Some(400)),
        (format!("lobby?{ok}"), Some(400)),
        (format!("lobby?name=&{ok}"), Some(400)),
        (format!("lobby?name={}&{ok}", "n".repeat(32)), None),
        (format!("lobby?name={}&{ok}", "n".repeat(33)), Some(400)),
        // 32 characters after decoding, 64 bytes of UTF-8, 192 encoded.
        (format!("lobby?name={}&{ok}", "%C3%A9".repeat(32)), None),
        (
            format!("lobby?name={}&{ok}", "%C3%A9".repeat(33)),
            Some(400),
        ),
        ("lobby?name=ada".to_owned(), Some(401)),
        ("lobby?name=ada&token=wrong".to_owned(), Some(401)),
        ("lobby?name=ada&token=s3cre%74".to_owned(), None),
    ] {
        let got = node.ws(&path).await.err();
        assert_eq!(got, status, "{path}");
    }
}

#[tokio::test]
async fn members_messages_notices_and_errors_are_json() {
    let node = Node::start(&["--tcp", "off"]).await;
    let (mut ada, welcome) = node.join("lobby", "name=ada").await;
    assert_eq!(
        welcome,
        json!({"type": "welcome", "room": "lobby", "name": "ada", "members": ["ada"],
               "position": null, "recovered": null})
    );
    let (mut bob, welcome) = node.join("lobby", "name=b%C3%B6b%20b").await;
    assert_eq!(welcome["name"], "böb b");
    assert_eq!(members(&welcome), ["ada", "böb b"]);
    assert_eq!(
        recv(&mut ada).await,
        json!({"type": "join", "room": "lobby", "name": "böb b"})
    );

    say(&mut ada, "hi \"there\"\n<b>").await;
    let to_ada = recv(&mut ada).await;
    let to_bob = recv(&mut bob).await;
    assert_eq!(to_ada, to_bob);
    let p1 = position(&to_ada);
    assert_eq!(
        to_ada,
        json!({"type": "message", "room": "lobby", "from": "ada", "text": "hi \"there\"\n<b>",
               "position": p1})
    );

    // Frames that are not a message: an error each, and the socket stays.
    let text_4k = "x".repeat(4096);
    let over_4k = "x".repeat(4097);
    let bad_frames = [
        WsMessage::text("not json"),
        WsMessage::text(r#"{"type":"message"}"#),
        WsMessage::text(r#"{"type":"message","text":5}"#),
        WsMessage::text(r#"{"type":"shout","text":"x"}"#),
        WsMessage::text(json!({"type": "message", "text": over_4k}).to_string()),
        WsMessage::binary(b"{}".to_vec()),
    ];
    for frame in bad_frames {
        ada.send(frame).await.unwrap();
        let reply = recv(&mut ada).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(reply["error"].is_string());
    }
    say(&mut ada, &text_4k).await;
    let frame = recv(&mut bob).await;
    assert_eq!(frame["text"], text_4k.as_str());
    let p2 = position(&frame);
    assert_ne!(p1, p2);
    assert_eq!(recv(&mut ada).await["position"], p2.as_str());

    // A third member on the same name: one entry per connection.
    let (_ada2, welcome) = node.join("lobby", "name=ada").await;
    assert_eq!(members(&welcome), ["ada", "ada", "böb b"]);
    assert_eq!(welcome["position"], p2.as_str());
    assert_eq!(recv(&mut bob).await["type"], "join");
    assert_eq!(recv(&mut ada).await["type"], "join");

    bob.close(None).await.unwrap();
    assert_eq!(
        recv(&mut ada).await,
        json!({"type": "leave", "room": "lobby", "name": "böb b"})
    );
}

#[tokio::test]
async fn a_position_resumes_what_was_missed() {
    let node = Node::start(&["--tcp", "off", "--history", "3"]).await;
    let (mut ada, _) = node.join("r1", "name=ada").await;
    let mut positions = Vec::new();
    for i in 0..5 {
        say(&mut ada, &format!("m{i}")).await;
        positions.push(position(&recv(&mut ada).await));
    }
    // The last three are kept: from the second-to-last kept one...
    let (mut bob, welcome) = node
        .join("r1", &format!("name=bob&since={}", positions[2]))
        .await;
    assert_eq!(welcome["recovered"], 2);
    assert_eq!(welcome["position"], positions[4].as_str());
    for (i, kept) in positions.iter().enumerate().skip(3) {
        let frame = recv(&mut bob).await;
        assert_eq!(frame["text"], format!("m{i}"));
        assert_eq!(&position(&frame), kept);
    }
    // ...then live, after the replay.
    say(&mut ada, "live").await;
    assert_eq!(recv(&mut bob).await["text"], "live");

    // Trimmed, unknown or not a position at all: recovered false, nothing
    // replayed, and the room goes on.
    let epoch = positions[0].split_once('-').unwrap().0;
    for since in [
        positions[0].clone(),
        format!("{epoch}-99"),
        "0000000000000000-1".into(),
        "nonsense".into(),
    ] {
        let (mut carl, welcome) = node.join("r1", &format!("name=carl&since={since}")).await;
        assert_eq!(welcome["recovered"], false, "{since}");
        say(&mut ada, "after").await;
        // (The previous carl's leave may come first.)
        let mut frame = recv(&mut carl).await;
        if frame["type"] == "leave" {
            frame = recv(&mut carl).await;
        }
        assert_eq!(frame["text"], "after");
    }
}

#[tokio::test]
async fn tcp_lines_join_with_a_line_and_get_the_same_json() {
    let node = Node::start(&["--tcp", "127.0.0.1:0"]).await;
    let (mut ada, _) = node.join("lobby", "name=ada").await;
    let mut carl = node.tcp().await;
    carl.send("JOIN lobby carl").await;
    let welcome = carl.recv().await.unwrap();
    assert_eq!(members(&welcome), ["ada", "carl"]);
    assert_eq!(welcome["recovered"], Value::Null);
    assert_eq!(
        recv(&mut ada).await,
        json!({"type": "join", "room": "lobby", "name": "carl"})
    );

    carl.send("hello from a terminal").await;
    let frame = carl.recv().await.unwrap();
    assert_eq!(frame["from"], "carl");
    assert_eq!(recv(&mut ada).await, frame);
    say(&mut ada, "two\nlines").await;
    // One JSON object per line: the line break travels escaped.
    assert_eq!(carl.recv().await.unwrap()["text"], "two\nlines");
    let since = position(&frame);

    let mut dora = node.tcp().await;
    dora.send(&format!("JOIN lobby dora {since}")).await;
    let welcome = dora.recv().await.unwrap();
    assert_eq!(welcome["recovered"], 1);
    assert_eq!(dora.recv().await.unwrap()["text"], "two\nlines");

    for bad in ["HELLO", "JOIN", "JOIN bad.room x", "JOIN lobby"] {
        let mut eve = node.tcp().await;
        eve.send(bad).await;
        assert_eq!(eve.recv().await.unwrap()["type"], "error", "{bad}");
        assert_eq!(eve.recv().await, None, "{bad}: closed after the error");
    }
    // A token is required: TCP lines cannot carry one.
    let guarded = Node::start(&["--tcp", "127.0.0.1:0", "--token", "t"]).await;
    let mut eve = guarded.tcp().await;
    eve.send("JOIN lobby eve").await;
    assert_eq!(eve.recv().await.unwrap()["type"], "error");
    assert_eq!(eve.recv().await, None);
}

/// Two nodes on one Redis: members, notices, messages and history span
/// both; a node killed with SIGKILL has its members leave elsewhere within
/// 25 s (12.5 s by design); a Redis restart refuses old positions and the rooms carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let a = Node::start(&["--tcp", "off", "--redis", &url]).await;
    let mut b = Node::start(&["--tcp", "off", "--redis", &url]).await;

    let (mut ada, _) = a.join("lobby", "name=ada").await;
    let (mut bob, welcome) = b.join("lobby", "name=bob").await;
    assert_eq!(members(&welcome), ["ada", "bob"]);
    assert_eq!(recv(&mut ada).await["name"], "bob");

    say(&mut bob, "from b").await;
    let on_a = recv(&mut ada).await;
    let on_b = recv(&mut bob).await;
    assert_eq!(
        on_a, on_b,
        "the same frame, position included, on both nodes"
    );

    // ada drops and comes back on the other node from her last position.
    let since = position(&on_a);
    ada.close(None).await.unwrap();
    assert_eq!(recv(&mut bob).await["type"], "leave");
    say(&mut bob, "while away 1").await;
    say(&mut bob, "while away 2").await;
    assert_eq!(recv(&mut bob).await["text"], "while away 1");
    assert_eq!(recv(&mut bob).await["text"], "while away 2");
    let (mut ada, welcome) = b.join("lobby", &format!("name=ada&since={since}")).await;
    assert_eq!(welcome["recovered"], 2);
    assert_eq!(recv(&mut ada).await["text"], "while away 1");
    assert_eq!(recv(&mut ada).await["text"], "while away 2");
    assert_eq!(recv(&mut bob).await["type"], "join");

    // carl on node a; node a is killed (no goodbye to anyone).
    let (_carl, _) = a.join("lobby", "name=carl").await;
    assert_eq!(recv(&mut ada).await["name"], "carl");
    assert_eq!(recv(&mut bob).await["name"], "carl");
    let mut a = a;
    a.child.kill().await.unwrap();
    let killed = Instant::now();
    // Node a's members go once its last heartbeat is a node TTL (10 s)
    // old, at the next check (every 2.5 s): at most 12.5 s after the kill.
    // The rest is room for a loaded machine.
    let leave = recv_within(&mut bob, Duration::from_secs(25)).await;
    assert_eq!(
        leave,
        json!({"type": "leave", "room": "lobby", "name": "carl"})
    );
    assert!(killed.elapsed() < Duration::from_secs(25));
    assert_eq!(recv(&mut ada).await, leave);
    let (dora, welcome) = b.join("lobby", "name=dora").await;
    assert_eq!(members(&welcome), ["ada", "bob", "dora"]);
    assert_eq!(recv(&mut ada).await["name"], "dora");
    assert_eq!(recv(&mut bob).await["name"], "dora");
    // An abrupt disconnect: the TCP connection goes without a close frame.
    drop(dora);
    let leave = json!({"type": "leave", "room": "lobby", "name": "dora"});
    assert_eq!(recv(&mut bob).await, leave);
    assert_eq!(recv(&mut ada).await, leave);

    // Redis restarts empty: positions from before are refused; the rooms
    // and their members carry on.
    let before = position(&recv_after_say(&mut bob, "before").await);
    redis.kill().await;
    redis.restart().await;
    let deadline = Instant::now() + LIMIT;
    let (_eve, welcome) = loop {
        // Until the node is back on Redis and has added its members again.
        // While Redis is away a join fails: the upgrade succeeds, then the
        // socket closes instead of a welcome.
        if let Ok(mut ws) = b.ws(&format!("lobby?name=eve&since={before}")).await
            && let Ok(Some(Ok(WsMessage::Text(text)))) = timeout(LIMIT, ws.next()).await
        {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "welcome" && members(&frame).len() == 3 {
                break (ws, frame);
            }
        }
        assert!(
            Instant::now() < deadline,
            "node b never recovered from the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(welcome["recovered"], false);
    assert_eq!(members(&welcome), ["ada", "bob", "eve"]);
    let frame = recv_after_say(&mut bob, "after the restart").await;
    assert_ne!(
        position(&frame).split_once('-').unwrap().0,
        before.split_once('-').unwrap().0
    );
    b.child.start_kill().unwrap();
}

/// Sends `text` as `ws` and returns the message frame it gets back,
/// skipping notices.
async fn recv_after_say(ws: &mut Ws, text: &str) -> Value {
    say(ws, text).await;
    loop {
        let frame = recv(ws).await;
        if frame["type"] == "message" && frame["text"] == text {
            return frame;
        }
    }
}
