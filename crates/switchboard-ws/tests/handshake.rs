//! The HTTP side over real sockets: origins, the handshake hook,
//! subprotocols, routing, pages, refusals and the handshake timeout.

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use support::{
    Event, RawWs, Recorder, User, connect, fast_config, next, raw_http, serve, start, status_of,
    upgrade_request, upgrade_status,
};
use switchboard::ws::{Accept, OriginPolicy, Page, Reject, WsTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn foreign_origin_gets_403_and_same_origin_connects() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let addr = server.local_addr();
    let url = format!("ws://{addr}/");

    let localhost = format!("http://localhost:{}", addr.port());
    for foreign in ["http://evil.example", &localhost] {
        assert_eq!(upgrade_status(&url, &[("Origin", foreign)]).await, 403);
    }
    let same = format!("http://{addr}");
    let (mut ws, _) = connect(&url, &[("Origin", &same)])
        .await
        .expect("same origin connects");
    assert!(matches!(events.next().await, Event::Open { .. }));
    ws.close(None).await.expect("close");
    // The refused handshakes never reached the component.
    assert!(matches!(
        events.closed().await,
        switchboard::CloseReason::Peer(_)
    ));
    assert_eq!(server.stats().connections_total, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn origin_allow_list() {
    let listed = |recorder| {
        let origins = OriginPolicy::List(vec!["https://app.example".into()]);
        let builder = WsTransport::builder().fallback(recorder).origins(origins);
        builder.build().expect("valid")
    };
    let (server, _events) = serve(listed, fast_config()).await;
    let url = format!("ws://{}/", server.local_addr());
    let same_host = format!("http://{}", server.local_addr());
    assert_eq!(
        upgrade_status(&url, &[("Origin", "https://app.example")]).await,
        101
    );
    assert_eq!(upgrade_status(&url, &[("Origin", &same_host)]).await, 403);
    // Non-browser clients send no Origin and are not subject to the policy.
    assert_eq!(upgrade_status(&url, &[]).await, 101);
    server.shutdown().await;
}

fn authenticated(recorder: Recorder) -> WsTransport {
    WsTransport::builder()
        .route("/chat", recorder)
        .on_handshake(|req| async move {
            // Something async, as a real token check would be.
            tokio::task::yield_now().await;
            let token = req.query_param("token");
            match token.as_deref().or(req.cookie("session")) {
                Some("ann-secret") => Ok(Accept::new().with(User("ann".into()))),
                Some(_) => Err(Reject::forbidden().reason("bad token")),
                None => Err(Reject::unauthorized().reason("missing token")),
            }
        })
        .build()
        .expect("valid")
}

#[tokio::test]
async fn hook_rejects_with_its_status() {
    let (server, mut events) = serve(authenticated, fast_config()).await;
    let addr = server.local_addr();
    assert_eq!(upgrade_status(&format!("ws://{addr}/chat"), &[]).await, 401);
    let wrong = format!("ws://{addr}/chat?token=wrong");
    assert_eq!(upgrade_status(&wrong, &[]).await, 403);
    let raw = raw_http(addr, upgrade_request(addr, "/chat", "").as_bytes()).await;
    assert_eq!(status_of(&raw), 401);
    assert!(raw.ends_with("missing token\n"), "{raw}");
    assert!(
        events.try_next().is_none(),
        "a rejected handshake must not open a connection"
    );
    assert_eq!(server.stats().connections_total, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn hook_state_is_seen_in_on_open() {
    let (server, mut events) = serve(authenticated, fast_config()).await;
    let addr = server.local_addr();

    let (_ws, _) = connect(&format!("ws://{addr}/chat?token=ann-secret"), &[])
        .await
        .expect("token accepted");
    match events.next().await {
        Event::Open { user, path, .. } => {
            assert_eq!(user, Some(User("ann".into())));
            assert_eq!(path, "/chat");
        }
        other => panic!("expected open, got {other:?}"),
    }
    let (_ws2, _) = connect(
        &format!("ws://{addr}/chat"),
        &[("Cookie", "theme=dark; session=ann-secret")],
    )
    .await
    .expect("cookie");
    assert!(
        matches!(events.next().await, Event::Open { user: Some(User(name)), .. } if name == "ann")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn subprotocol_is_negotiated() {
    let speaking = |recorder| {
        let builder = WsTransport::builder().fallback(recorder);
        builder
            .subprotocols(["chat.v2", "chat.v1"])
            .build()
            .expect("valid")
    };
    let (server, mut events) = serve(speaking, fast_config()).await;
    let url = format!("ws://{}/", server.local_addr());

    // The server's preference wins among those the client offers.
    let mut open = Vec::new();
    for (offered, chosen) in [
        (Some("chat.v1, chat.v2"), Some("chat.v2")),
        (Some("other, chat.v1"), Some("chat.v1")),
        (None, None),
    ] {
        let headers: &[_] = match offered {
            Some(offered) => &[("Sec-WebSocket-Protocol", offered)],
            None => &[],
        };
        let (ws, got) = connect(&url, headers).await.expect("connects");
        open.push(ws);
        assert_eq!(got.as_deref(), chosen);
        match events.next().await {
            Event::Open { subprotocol, .. } => assert_eq!(subprotocol.as_deref(), chosen),
            other => panic!("expected open, got {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn routes_by_path_and_404s_the_rest() {
    let (chat, mut chat_events) = Recorder::named("chat");
    let (echo, mut echo_events) = Recorder::named("echo");
    let transport = WsTransport::builder()
        .route("/chat", chat)
        .route("/echo", echo)
        .build()
        .expect("valid");
    let server = start(transport, fast_config()).await;
    let addr = server.local_addr();

    for (path, events) in [("chat", &mut chat_events), ("echo", &mut echo_events)] {
        let (mut ws, _) = connect(&format!("ws://{addr}/{path}"), &[])
            .await
            .expect("routed");
        assert!(
            matches!(events.next().await, Event::Open { path: p, .. } if p == format!("/{path}"))
        );
        ws.send(WsMessage::text("hi")).await.expect("send");
        assert_eq!(
            next(&mut ws).await,
            Some(WsMessage::text(format!("{path}:hi")))
        );
    }
    for path in ["/nope", "/chat/"] {
        assert_eq!(
            upgrade_status(&format!("ws://{addr}{path}"), &[]).await,
            404
        );
    }
    let plain = raw_http(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&plain), 404);
    server.shutdown().await;
}

/// Says what the route and the query gave it: the `room` and `rest`
/// parameters, the decoded and raw `name`, and what the hook saw.
struct Params;

#[derive(Clone)]
struct HookSaw(String);

impl switchboard::MessageComponent for Params {
    async fn on_open(&self, conn: &switchboard::Connection) -> Result<(), switchboard::BoxError> {
        let info = conn.transport();
        let hook = conn.extension::<HookSaw>().map(|h| h.0);
        conn.send(format!(
            "room={:?} rest={:?} name={:?} raw={:?} hook={hook:?} path={}",
            conn.param("room"),
            conn.param("rest"),
            info.query_param("name").as_deref(),
            info.raw_query_param("name"),
            info.path(),
        ))?;
        Ok(())
    }

    async fn on_message(
        &self,
        _: &switchboard::Connection,
        _: switchboard::Message,
    ) -> Result<(), switchboard::BoxError> {
        Ok(())
    }
}

#[tokio::test]
async fn parameter_routes_hand_their_decoded_values_to_the_hook_and_the_component() {
    let transport = WsTransport::builder()
        .route("/rooms/{room}", Params)
        .route("/rooms/lobby", Params)
        .route("/files/{*rest}", Params)
        .on_handshake(|req| async move {
            let saw = format!("{:?}", req.param("room"));
            Ok(Accept::new().with(HookSaw(saw)))
        })
        .build()
        .expect("valid");
    let server = start(transport, fast_config()).await;
    let addr = server.local_addr();
    let cases = [
        (
            "/rooms/news%20desk?name=J%C3%BCrgen+K",
            r#"room=Some("news desk") rest=None name=Some("Jürgen K") raw=Some("J%C3%BCrgen+K") hook=Some("Some(\"news desk\")") path=/rooms/news%20desk"#,
        ),
        (
            "/rooms/lobby",
            r#"room=None rest=None name=None raw=None hook=Some("None") path=/rooms/lobby"#,
        ),
        (
            "/files/a/b%2Fc",
            r#"room=None rest=Some("a/b/c") name=None raw=None hook=Some("None") path=/files/a/b%2Fc"#,
        ),
    ];
    for (path, expected) in cases {
        let (mut ws, _) = connect(&format!("ws://{addr}{path}"), &[])
            .await
            .expect("routed");
        assert_eq!(
            next(&mut ws).await,
            Some(WsMessage::text(expected)),
            "{path}"
        );
    }
    for (path, status) in [("/rooms/%FF", 400), ("/rooms/", 404), ("/files/", 404)] {
        let status_seen = upgrade_status(&format!("ws://{addr}{path}"), &[]).await;
        assert_eq!(status_seen, status, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn static_page_is_served_beside_the_socket_and_426_without_one() {
    let html = "<!doctype html><title>chat</title>";
    let page = |recorder| {
        let builder = WsTransport::builder().route("/chat", recorder);
        builder.page("/", Page::html(html)).build().expect("valid")
    };
    let (server, mut events) = serve(page, fast_config()).await;
    let addr = server.local_addr();

    let response = raw_http(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        response.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{response}"
    );
    assert!(
        response.contains(&format!("Content-Length: {}\r\n", html.len())),
        "{response}"
    );
    assert!(response.ends_with(html), "{response}");

    let head = raw_http(addr, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status_of(&head), 200);
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(status_of(&raw_http(addr, post).await), 405);

    // A plain GET of the socket's own path, which has no page.
    let response = raw_http(addr, b"GET /chat HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status_of(&response), 426, "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("upgrade: websocket\r\n"),
        "{response}"
    );

    // The page and the socket share one origin.
    let (_ws, _) = connect(
        &format!("ws://{addr}/chat"),
        &[("Origin", &format!("http://{addr}"))],
    )
    .await
    .expect("ok");
    assert!(matches!(events.next().await, Event::Open { .. }));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_400_431_and_426() {
    let small = |recorder| {
        let builder = WsTransport::builder().fallback(recorder);
        builder.max_request_head(1024).build().expect("valid")
    };
    let (server, _events) = serve(small, fast_config()).await;
    let addr = server.local_addr();

    let garbage = raw_http(addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert_eq!(status_of(&garbage), 400);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(status_of(&raw_http(addr, huge.as_bytes()).await), 431);
    let bad_key = upgrade_request(addr, "/", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "nope");
    assert_eq!(status_of(&raw_http(addr, bad_key.as_bytes()).await), 400);
    let old = upgrade_request(addr, "/", "").replace("Version: 13", "Version: 8");
    let response = raw_http(addr, old.as_bytes()).await;
    assert_eq!(status_of(&response), 426);
    assert!(
        response.contains("Sec-WebSocket-Version: 13\r\n"),
        "{response}"
    );
    assert_eq!(server.stats().connections_total, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_timeout_drops_a_half_open_connection() {
    let handshake_timeout = Duration::from_millis(300);
    let config = fast_config().handshake_timeout(handshake_timeout);
    let (server, mut events) = serve(WsTransport::new, config).await;

    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = timeout(support::LIMIT, stream.read_to_end(&mut rest))
        .await
        .expect("the server hung up in time");
    // EOF (or a reset): the server dropped the connection without answering.
    assert!(
        read.map_or(true, |n| n == 0),
        "unexpected answer: {}",
        String::from_utf8_lossy(&rest)
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= handshake_timeout - Duration::from_millis(50),
        "dropped too early: {elapsed:?}"
    );
    assert_eq!(server.stats().handshake_failures, 1);
    assert!(events.try_next().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn data_right_after_the_request_is_not_lost() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let addr = server.local_addr();

    // The request and a first frame in one write: the frame arrives in the
    // same read as the head and must be handed on to the WebSocket layer.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut bytes = upgrade_request(addr, "/", "").into_bytes();
    bytes.extend_from_slice(&support::masked_frame(0x1, true, b"early"));
    stream.write_all(&bytes).await.expect("write");
    assert!(matches!(events.next().await, Event::Open { .. }));
    assert!(matches!(events.next().await, Event::Message(m) if m.as_text() == Some("early")));
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn raw_client_sees_101_and_the_component_sees_its_address() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let mut ws = RawWs::connect(server.local_addr(), "/x?y=1").await;
    let ours = ws.stream.local_addr().expect("local addr");
    // The component sees the path (query apart) and the peer's real address.
    assert!(
        matches!(events.next().await, Event::Open { path: p, peer, .. } if p == "/x" && peer == ours)
    );
    ws.send_frame(0x2, true, &[1, 2, 3]).await;
    let echoed = ws.frame().await;
    assert_eq!((echoed.opcode, echoed.payload), (0x2, vec![1, 2, 3]));
    server.shutdown().await;
}

/// Writes `request` and reads until the server closes (a reset after the
/// answer counts as a close: the server may not read a refused request to
/// its end). Bounded by [`support::LIMIT`].
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut response = Vec::new();
    let read = timeout(support::LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("the server closes in time");
    if let Err(err) = read {
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    response
}

/// Splits a response into its head (with the blank line) and its body, and
/// reads its status and `Content-Length`.
fn split_response(response: &[u8]) -> (u16, usize, &[u8], &[u8]) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head")
        + 4;
    let head = std::str::from_utf8(&response[..end]).expect("UTF-8 head");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    (status_of(head), length, &response[..end], &response[end..])
}

#[tokio::test]
async fn head_gets_what_get_gets_without_the_body() {
    let page = |recorder| {
        let builder = WsTransport::builder().route("/chat", recorder);
        let builder = builder.page("/", Page::html("<!doctype html><p>hi</p>"));
        builder.max_request_head(1024).build().expect("valid")
    };
    let (server, _events) = serve(page, fast_config()).await;
    let addr = server.local_addr();
    let upgrade = upgrade_request(addr, "/chat", "");
    let big = format!("X-Big: {}\r\n", "a".repeat(2000));
    let chat = " /chat HTTP/1.1\r\nHost: x\r\n\r\n";
    // (the request after its method, the GET to compare with if another,
    // expected status)
    let cases = [
        (" / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), None, 200),
        (" /nope HTTP/1.1\r\nHost: x\r\n\r\n".into(), None, 404),
        (chat.into(), None, 426),
        // An upgrade asked for with HEAD is no upgrade: the plain GET's 426.
        (upgrade.trim_start_matches("GET").into(), Some(chat), 426),
        (
            " / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".into(),
            None,
            400,
        ),
        (format!(" / HTTP/1.1\r\nHost: x\r\n{big}\r\n"), None, 431),
    ];
    for (rest, get_rest, expected) in cases {
        let get_rest = get_rest.unwrap_or(&rest);
        let get = exchange(addr, format!("GET{get_rest}").as_bytes()).await;
        let head = exchange(addr, format!("HEAD{rest}").as_bytes()).await;
        let (get_status, get_length, get_head, get_body) = split_response(&get);
        let (status, length, head_head, after) = split_response(&head);
        let shown = String::from_utf8_lossy(&head);
        assert_eq!((get_status, status), (expected, expected), "{shown}");
        assert_eq!(get_body.len(), get_length, "GET's body matches its length");
        // The same head to the byte, Content-Length included, and nothing
        // after it until the server closed.
        assert_eq!(head_head, get_head, "{shown}");
        assert_eq!(length, get_length);
        assert!(length > 0);
        assert_eq!(after, b"", "HEAD got a body: {shown}");
    }
    assert_eq!(server.stats().connections_total, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn upgrade_required_has_one_connection_header() {
    let (server, _events) = serve(WsTransport::new, fast_config()).await;
    let addr = server.local_addr();
    let plain = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let old = upgrade_request(addr, "/", "").replace("Version: 13", "Version: 8");
    let old = exchange(addr, old.as_bytes()).await;
    for response in [plain, old] {
        let (status, _, head, _) = split_response(&response);
        let head = std::str::from_utf8(head).expect("UTF-8");
        assert_eq!(status, 426, "{head}");
        let connection: Vec<_> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("connection:"))
            .collect();
        // Upgrade is offered (RFC 7230 6.7: named in Connection too) and
        // the server closes after the answer: one header says both.
        assert_eq!(connection, ["Connection: Upgrade, close"], "{head}");
        assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
    }
    server.shutdown().await;
}

/// Writes `request` and reads the response head only (an upgraded
/// connection stays open).
async fn status_of_request(addr: std::net::SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut response = Vec::new();
    let mut buf = [0; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(support::LIMIT, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before a whole head");
        response.extend_from_slice(&buf[..n]);
    }
    status_of(&String::from_utf8_lossy(&response))
}

#[tokio::test]
async fn repeated_upgrade_key_and_version_are_refused() {
    let (server, mut events) = serve(WsTransport::new, fast_config()).await;
    let addr = server.local_addr();
    let base = upgrade_request(addr, "/", "");
    let with = |extra: &str| upgrade_request(addr, "/", extra);
    let cases = [
        (with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 400),
        (with("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"), 400),
        (with("Sec-WebSocket-Version: 13\r\n"), 400),
        (with("Sec-WebSocket-Version: 8\r\n"), 400),
        (
            base.replace("Upgrade: websocket", "Upgrade: foo\r\nUpgrade: websocket"),
            400,
        ),
        (with("Upgrade: websocket\r\n"), 400),
        (with("Host: elsewhere.example\r\n"), 400),
        // Lists may come in several lines.
        (
            base.replace(
                "Connection: Upgrade",
                "Connection: keep-alive\r\nConnection: Upgrade",
            ),
            101,
        ),
        (
            with("Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b\r\n"),
            101,
        ),
        (
            with("Sec-WebSocket-Extensions: x-a\r\nSec-WebSocket-Extensions: x-b\r\n"),
            101,
        ),
    ];
    let mut upgraded = 0;
    for (request, expected) in cases {
        assert_eq!(
            status_of_request(addr, &request).await,
            expected,
            "{request}"
        );
        if expected == 101 {
            upgraded += 1;
            assert!(matches!(events.next().await, Event::Open { .. }));
            events.closed().await;
        }
    }
    // Only the three valid ones reached the component.
    assert_eq!(server.stats().connections_total, upgraded);
    assert_eq!(upgraded, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn admit_routes_and_runs_the_hook_without_a_socket() {
    let (recorder, _events) = Recorder::named("room");
    let transport = WsTransport::builder()
        .route("/rooms/{room}", recorder)
        .on_handshake(|req| async move {
            match (req.param("room"), req.query_param("token").as_deref()) {
                (Some(room), Some("ann-secret")) => {
                    Ok(Accept::new().with(User(format!("ann in {room}"))))
                }
                _ => Err(Reject::unauthorized()),
            }
        })
        .build()
        .expect("valid");
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    let request = |target: &str| {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        switchboard::TransportInfo::new("ws")
            .with_path(path.to_owned())
            .with_query(query.to_owned())
    };
    for (target, status) in [
        ("/nowhere?token=ann-secret", 404),
        ("/rooms/%FF?token=ann-secret", 400),
        ("/rooms/news?token=guess", 401),
    ] {
        let refused = transport.admit(peer, request(target)).await.err();
        assert_eq!(refused.map(|r| r.status()), Some(status), "{target}");
    }
    let (info, state) = transport
        .admit(peer, request("/rooms/news%20desk?token=ann-secret"))
        .await
        .expect("admitted");
    assert_eq!(info.param("room"), Some("news desk"));
    assert_eq!(state.get::<User>(), Some(&User("ann in news desk".into())));
}
