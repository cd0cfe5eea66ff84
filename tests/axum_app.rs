#![allow(clippy::unwrap_used)]
//! The `axum_app` example, the built binary on a 127.0.0.1 port it picks:
//! its REST route, page and three sockets on one port, the middleware in
//! front of the private socket, and Ctrl-C closing every socket with 1001.

#[path = "support/examples.rs"]
mod examples;

use examples::example;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LIMIT: Duration = Duration::from_secs(30);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

type Output = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts the app on port 0; returns it, its address and the rest of its
/// output (its own log lines at info level).
async fn start() -> (Child, String, Output) {
    let mut child = Command::new(example("axum_app"))
        .args(["--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,axum_app=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(LIMIT, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the axum_app example exited early (a plain `cargo test` builds it)");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    (child, addr, out)
}

/// Waits for an output line that holds every one of `words`.
async fn line_with(out: &mut Output, words: &[&str]) -> String {
    timeout(LIMIT, async {
        loop {
            let line = out.next_line().await.unwrap().expect("the app is running");
            if words.iter().all(|w| line.contains(w)) {
                return line;
            }
        }
    })
    .await
    .unwrap()
}

/// One HTTP/1.1 request; the status and the body.
async fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{request}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(LIMIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

async fn ws(addr: &str, path: &str, authorization: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("Authorization", value.parse().unwrap());
    }
    match timeout(LIMIT, tokio_tungstenite::connect_async(request))
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

async fn next(ws: &mut Ws) -> WsMessage {
    timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn rest_page_and_sockets_share_one_port() {
    let (mut app, addr, mut out) = start().await;

    let (status, page) = http(&addr, "GET / HTTP/1.1").await;
    assert_eq!(status, 200);
    assert!(page.contains("new WebSocket"), "{page}");
    assert_eq!(http(&addr, "GET /nope HTTP/1.1").await.0, 404);
    // A plain request for a socket route: the standalone transport's answer.
    assert_eq!(http(&addr, "GET /chat HTTP/1.1").await.0, 426);
    assert_eq!(
        http(&addr, "GET /health HTTP/1.1").await,
        (200, r#"{"connections":0}"#.into())
    );

    // The chat: to every other client, not back to the sender.
    let mut ann = ws(&addr, "/chat", None).await.unwrap();
    let mut bob = ws(&addr, "/chat", None).await.unwrap();
    // Bob joins the room in his on_open, which the 101 does not wait for:
    // ann says hello (at most 500 times, 10 ms apart) until he hears one.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut said = 0;
    let heard = loop {
        tokio::select! {
            _ = tick.tick() => {
                assert!(said < 500, "bob heard none of ann's {said} messages");
                ann.send(WsMessage::text(format!("hello {said}"))).await.unwrap();
                said += 1;
            }
            msg = bob.next() => break msg.unwrap().unwrap(),
        }
    };
    let first: usize = heard.to_text().unwrap()["hello ".len()..].parse().unwrap();
    // From then on, each of ann's messages reaches bob once, in order.
    for i in first + 1..said {
        assert_eq!(next(&mut bob).await, WsMessage::text(format!("hello {i}")));
    }
    bob.send(WsMessage::text("hi ann")).await.unwrap();
    assert_eq!(next(&mut ann).await, WsMessage::text("hi ann"));

    // The echo takes a message over the default 1 MiB limit.
    let mut echo = ws(&addr, "/echo", None).await.unwrap();
    let big = vec![7u8; 3 << 20];
    echo.send(WsMessage::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut echo).await, WsMessage::binary(big));
    assert_eq!(
        http(&addr, "GET /health HTTP/1.1").await,
        (200, r#"{"connections":3}"#.into())
    );

    // The private echo: the middleware's 401, then in with the token.
    assert_eq!(ws(&addr, "/private/echo", None).await.err(), Some(401));
    assert_eq!(
        ws(&addr, "/private/echo", Some("Bearer guess")).await.err(),
        Some(401)
    );
    let mut private = ws(&addr, "/private/echo", Some("Bearer secret"))
        .await
        .unwrap();
    private.send(WsMessage::text("psst")).await.unwrap();
    assert_eq!(next(&mut private).await, WsMessage::text("psst"));
    // What the middleware found reached on_open as connection state.
    line_with(&mut out, &["private echo opened", "user=bearer"]).await;

    // A client's close is answered: a clean closing handshake.
    bob.close(None).await.unwrap();
    loop {
        match timeout(LIMIT, bob.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
            }
            Some(Ok(other)) => panic!("after the close: {other:?}"),
            None => break,
            Some(Err(err)) => panic!("the close ended with {err}"),
        }
    }

    // Ctrl-C: every open socket gets 1001, then the process exits.
    let pid = rustix::process::Pid::from_raw(app.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    for ws in [&mut ann, &mut echo, &mut private] {
        match next(ws).await {
            WsMessage::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a close, got {other:?}"),
        }
        // Reading on sends the reply to the close; then the stream ends.
        assert!(timeout(LIMIT, ws.next()).await.unwrap().is_none());
    }
    let status = timeout(LIMIT, app.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    line_with(&mut out, &["shutting down"]).await;
}
