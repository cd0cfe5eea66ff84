//! Hostile input against live WebSocket and TCP ports, and the protections
//! of `Config` on every transport. Each bad input gets the protocol's answer
//! (HTTP 400/431, close 1002/1007/1009, a TCP close with a logged reason);
//! well-behaved clients are served throughout.
#![allow(clippy::unwrap_used)]

mod reliability;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reliability::{
    Addrs, LineClient, Rng, Service, WsClient, WsEvent, config_from, dial_from, eventually,
    eventually_eq, figure, frame, frame_with_len, http_status, read_to_end, soak, start_server,
    upgrade_request, within,
};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

/// Well-behaved clients on every transport that echo in a loop until
/// stopped; each round trip is counted.
struct GoodClients {
    stop: Arc<AtomicBool>,
    roundtrips: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl GoodClients {
    async fn start(addrs: Addrs) -> GoodClients {
        let stop = Arc::new(AtomicBool::new(false));
        let roundtrips = Arc::new(AtomicU64::new(0));
        let mut ws = WsClient::connect(addrs.ws).await;
        let mut tcp = LineClient::connect(addrs.tcp).await;
        let tasks = vec![
            tokio::spawn({
                let (stop, n) = (stop.clone(), roundtrips.clone());
                async move {
                    while !stop.load(Ordering::Acquire) {
                        ws.roundtrip(&format!("ws {}", n.load(Ordering::Relaxed)))
                            .await;
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    ws.roundtrip("ws after").await;
                }
            }),
            tokio::spawn({
                let (stop, n) = (stop.clone(), roundtrips.clone());
                async move {
                    while !stop.load(Ordering::Acquire) {
                        tcp.roundtrip(&format!("tcp {}", n.load(Ordering::Relaxed)))
                            .await;
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    tcp.roundtrip("tcp after").await;
                }
            }),
        ];
        GoodClients {
            stop,
            roundtrips,
            tasks,
        }
    }

    /// Stops the loops after one more round trip each; the number of round
    /// trips made while the attacks ran.
    async fn finish(self) -> u64 {
        let during = self.roundtrips.load(Ordering::Relaxed);
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            within("good client", t).await.unwrap();
        }
        during
    }
}

/// Sends `request` and returns the server's whole answer (it closes after
/// a plain HTTP response). With `eof`, ends the stream after the request.
async fn http_with(addr: SocketAddr, request: &[u8], eof: bool) -> Vec<u8> {
    let mut stream = dial_from(addr, None).await.unwrap();
    // The server may answer and close before reading everything.
    let _ = stream.write_all(request).await;
    if eof {
        let _ = stream.shutdown().await;
    }
    read_to_end(&mut stream).await
}

async fn http(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    http_with(addr, request, false).await
}

/// Upgrades, sends `bytes`, and returns what ended the connection: the
/// close code the server sent, or `None` for a plain end of stream. Data
/// echoed on the way is skipped.
async fn ws_answer(addr: SocketAddr, bytes: &[u8], end_stream: bool) -> Option<u16> {
    let mut ws = WsClient::connect(addr).await;
    let _ = ws.send_raw(bytes).await;
    if end_stream {
        let _ = ws.stream.shutdown().await;
    }
    match ws.until_close().await {
        WsEvent::Close(code) => code,
        _ => None,
    }
}

fn tally(map: &mut HashMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_the_protocols_answer_and_good_clients_are_served() {
    const MAX: usize = 16 * 1024;
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(
        service.clone(),
        config_from(&format!("handshake_ms=1000 max_msg={MAX}")),
    )
    .await;
    let good = GoodClients::start(addrs).await;
    let started = Instant::now();
    let mut rng = Rng::new(0x5eed);
    // What each class of bad input got, and how many were tried.
    let mut answers: HashMap<String, u64> = HashMap::new();
    let mut tried = 0u64;
    // Close codes the WebSocket clients saw, to compare with what the
    // component's on_error saw.
    let mut ws_codes: HashMap<u16, u64> = HashMap::new();

    // -- The HTTP request head --------------------------------------------
    for _ in 0..200 * soak() {
        let mut junk = rng.some_bytes(512);
        junk.extend_from_slice(b"\r\n\r\n");
        let status = http_status(&http(addrs.ws, &junk).await);
        assert_eq!(status, Some(400), "random bytes as a request: {junk:?}");
        tally(&mut answers, "random request: 400");
        tried += 1;
    }
    let upgrade = upgrade_request(addrs.ws, "/");
    for cut in (0..upgrade.len() - 2).step_by(7) {
        // Truncated, then the end of the stream: no answer, just closed.
        let answer = http_with(addrs.ws, &upgrade.as_bytes()[..cut], true).await;
        assert!(answer.is_empty(), "cut at {cut}: {answer:?}");
        tally(&mut answers, "truncated head + EOF: closed, no answer");
        tried += 1;
    }
    let left_open: Vec<_> = [0, 1, 17, upgrade.len() / 2, upgrade.len() - 2]
        .into_iter()
        .map(|cut| {
            // Truncated and left open: the handshake timeout closes it.
            let head = upgrade.as_bytes()[..cut].to_vec();
            tokio::spawn(async move {
                let mut stream = dial_from(addrs.ws, None).await.unwrap();
                stream.write_all(&head).await.unwrap();
                let started = Instant::now();
                assert!(read_to_end(&mut stream).await.is_empty());
                started.elapsed()
            })
        })
        .collect();
    for t in left_open {
        let took = within("handshake timeout", t).await.unwrap();
        assert!(took >= Duration::from_millis(700), "closed after {took:?}");
        tally(
            &mut answers,
            "truncated head left open: closed at the handshake timeout",
        );
        tried += 1;
    }
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect::<String>()
    );
    let endless = "GET / HTTP/1.1\r\nHost: x\r\nX: ".to_owned() + &"a".repeat(100_000);
    let refusals: [(&str, &[u8], u16); 8] = [
        ("header over the head limit", big_header.as_bytes(), 431),
        ("100 headers", many_headers.as_bytes(), 431),
        ("head that never ends", endless.as_bytes(), 431),
        ("no colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
        ("bad method", b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            "NUL in header",
            b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
            400,
        ),
        (
            "HTTP/1.0 upgrade",
            b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            400,
        ),
        (
            "bad key",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x\r\n\r\n",
            400,
        ),
    ];
    for (what, request, want) in refusals {
        assert_eq!(
            http_status(&http(addrs.ws, request).await),
            Some(want),
            "{what}"
        );
        tally(&mut answers, format!("{what}: {want}"));
        tried += 1;
    }

    // -- WebSocket frames after the upgrade -------------------------------
    let mut invalid_utf8_fragments = frame_with_len(0x01, 3, b"ok\xe2");
    invalid_utf8_fragments.extend(frame_with_len(0x80, 2, b"\x28\xa1"));
    let mut data_inside_fragments = frame_with_len(0x01, 3, b"abc");
    data_inside_fragments.extend(frame(0x1, b"new"));
    let frames: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "frame length 2^63-1",
            frame_with_len(0x82, (1 << 63) - 1, b""),
            1009,
        ),
        (
            // RFC 6455 5.2: the most significant bit of a 64-bit length
            // must be 0.
            "frame length 2^64-1",
            frame_with_len(0x82, u64::MAX, b""),
            1002,
        ),
        (
            "frame length 65535 over a 16 KiB limit",
            frame_with_len(0x82, 65535, b""),
            1009,
        ),
        (
            "message over the limit in fragments",
            {
                let mut f = frame_with_len(0x02, 10_000, &[1; 10_000]);
                f.extend(frame_with_len(0x80, 10_000, &[1; 10_000]));
                f
            },
            1009,
        ),
        ("invalid UTF-8 text", frame(0x1, b"caf\xc3"), 1007),
        (
            "invalid UTF-8 split over fragments",
            invalid_utf8_fragments,
            1007,
        ),
        (
            "invalid UTF-8 close reason",
            frame(0x8, b"\x03\xe8\xff\xfe"),
            1007,
        ),
        ("reserved bit set", frame_with_len(0xC1, 2, b"hi"), 1002),
        ("unknown opcode", frame(0x3, b"?"), 1002),
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("control frame of 126 bytes", frame(0x9, &[0; 126]), 1002),
        ("fragmented ping", frame_with_len(0x09, 1, b"x"), 1002),
        ("continuation without a start", frame(0x0, b"orphan"), 1002),
        (
            "new message inside a fragmented one",
            data_inside_fragments,
            1002,
        ),
        (
            "close code 1005 on the wire",
            frame(0x8, &1005u16.to_be_bytes()),
            1002,
        ),
        ("one-byte close payload", frame(0x8, b"\x03"), 1002),
    ];
    for (what, bytes, want) in frames {
        let code = ws_answer(addrs.ws, &bytes, false).await;
        assert_eq!(code, Some(want), "{what}");
        tally(&mut answers, format!("{what}: close {want}"));
        tally_code(&mut ws_codes, want);
        tried += 1;
    }
    for _ in 0..200 * soak() {
        // Random bytes after the upgrade, then the end of our stream: a
        // close with 1002/1007/1009, or (for bytes that only start a frame)
        // a plain close once the stream ends.
        let bytes = rng.some_bytes(256);
        let code = ws_answer(addrs.ws, &bytes, true).await;
        match code {
            Some(c @ (1002 | 1007 | 1009)) => {
                tally_code(&mut ws_codes, c);
                tally(&mut answers, format!("random frames: close {c}"));
            }
            None => tally(&mut answers, "random frames: incomplete, closed at EOF"),
            Some(other) => panic!("random frames {bytes:?}: close {other}"),
        }
        tried += 1;
    }

    // -- TCP lines and length-delimited frames -----------------------------
    let mut tcp_codes: HashMap<u16, u64> = HashMap::new();
    let tcp_cases: Vec<(&str, SocketAddr, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 line",
            addrs.tcp,
            b"fine\n\xc3\x28 bad\n".to_vec(),
            1007,
        ),
        (
            "line over the limit",
            addrs.tcp,
            [vec![b'x'; MAX + 1], b"\n".to_vec()].concat(),
            1009,
        ),
        (
            "line that never ends",
            addrs.tcp,
            vec![b'y'; 10 * MAX],
            1009,
        ),
        (
            "frame length 2^32-1",
            addrs.frames,
            u32::MAX.to_be_bytes().to_vec(),
            1009,
        ),
        (
            "frame over the limit",
            addrs.frames,
            ((MAX + 1) as u32).to_be_bytes().to_vec(),
            1009,
        ),
    ];
    for (what, addr, bytes, want) in tcp_cases {
        let mut stream = dial_from(addr, None).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        // The server ends the connection (after echoing any good line).
        let echoed = read_to_end(&mut stream).await;
        assert!(echoed.len() <= 8, "{what}: {echoed:?}");
        tally(&mut answers, format!("tcp {what}: closed, logged {want}"));
        tally_code(&mut tcp_codes, want);
        tried += 1;
    }
    for _ in 0..200 * soak() {
        // Random bytes as lines: each line is echoed or ends the connection
        // (invalid UTF-8: 1007); the stream then ends.
        let mut bytes = rng.some_bytes(512);
        bytes.push(b'\n');
        let mut stream = dial_from(addrs.tcp, None).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        let echoed = read_to_end(&mut stream).await;
        let valid_prefix = bytes
            .split_inclusive(|b| *b == b'\n')
            .take_while(|l| std::str::from_utf8(l).is_ok())
            .map(<[u8]>::len)
            .sum::<usize>();
        if valid_prefix == bytes.len() {
            tally(&mut answers, "tcp random lines: all valid, echoed");
        } else {
            tally_code(&mut tcp_codes, 1007);
            tally(&mut answers, "tcp random lines: closed, logged 1007");
        }
        // What came back is the valid lines before the bad one, unchanged
        // ("\r\n" comes back as "\n").
        let expected: Vec<u8> = bytes[..valid_prefix]
            .split_inclusive(|b| *b == b'\n')
            .flat_map(|l| {
                let l = l.strip_suffix(b"\n").unwrap_or(l);
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                [l, b"\n"].concat()
            })
            .collect();
        assert_eq!(echoed, expected, "random lines {bytes:?}");
        tried += 1;
    }
    let during = good.finish().await;
    let elapsed = started.elapsed();

    // on_error saw exactly the codes the peers were sent.
    let mut all_codes = ws_codes.clone();
    for (code, n) in &tcp_codes {
        *all_codes.entry(*code).or_default() += n;
    }
    eventually_eq(
        "on_error for every bad peer",
        || service.error_codes(),
        all_codes,
    )
    .await;
    let seen = service.error_codes();
    assert!(
        during > 0,
        "good clients were not served during the attacks"
    );
    eventually("every connection closed", || {
        server.stats().open_connections == 0
    })
    .await;
    let stats = server.stats();
    assert_eq!(stats.panics, 0);
    assert_eq!(
        service.closes().total,
        stats.connections_total,
        "on_close once for each"
    );
    let mut lines: Vec<_> = answers.iter().map(|(k, v)| format!("{v} x {k}")).collect();
    lines.sort();
    figure(
        "hostile_input",
        format_args!(
            "{tried} bad inputs in {elapsed:.1?}, every one answered as the protocol says ({}); \
             close codes seen by on_error {seen:?}; {during} good round trips meanwhile, none failed",
            lines.join("; ")
        ),
    );
    server.shutdown().await;
}

fn tally_code(map: &mut HashMap<u16, u64>, code: u16) {
    *map.entry(code).or_default() += 1;
}

// ---- Protections on every transport -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_deny_and_allow_lists_on_every_transport() {
    let denied = Ipv4Addr::new(127, 0, 0, 2);
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(service.clone(), config_from("deny=127.0.0.2/32")).await;
    // WebSocket: closed before any HTTP answer.
    let refused = WsClient::try_connect(addrs.ws, Some(denied), "/").await;
    assert!(
        matches!(&refused, Err(e) if e.contains("closed before a response")),
        "{:?}",
        refused.err()
    );
    // TCP: closed at once.
    let mut tcp = dial_from(addrs.tcp, Some(denied)).await.unwrap();
    assert!(read_to_end(&mut tcp).await.is_empty());
    // Everyone else is served.
    WsClient::try_connect(addrs.ws, Some(Ipv4Addr::new(127, 0, 0, 3)), "/")
        .await
        .unwrap()
        .roundtrip("allowed")
        .await;
    LineClient::connect(addrs.tcp)
        .await
        .roundtrip("allowed")
        .await;
    assert_eq!(server.stats().connections_denied, 2);
    server.shutdown().await;

    // An allow list: only 127.0.0.4 may connect.
    let (server, addrs) = start_server(
        Arc::new(Service::default()),
        config_from("allow=127.0.0.4/32"),
    )
    .await;
    assert!(WsClient::try_connect(addrs.ws, None, "/").await.is_err());
    let mut tcp = dial_from(addrs.tcp, None).await.unwrap();
    assert!(read_to_end(&mut tcp).await.is_empty());
    let only = Some(Ipv4Addr::new(127, 0, 0, 4));
    WsClient::try_connect(addrs.ws, only, "/")
        .await
        .unwrap()
        .roundtrip("in")
        .await;
    LineClient::from_stream(dial_from(addrs.tcp, only).await.unwrap())
        .roundtrip("in")
        .await;
    assert_eq!(server.stats().connections_denied, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_closes_with_1008_on_every_transport() {
    let service = Arc::new(Service::default());
    // A burst of 5, refilled far too slowly to matter during the test.
    let (server, addrs) = start_server(service.clone(), config_from("rate=0.001 burst=5")).await;
    let mut ws = WsClient::connect(addrs.ws).await;
    let mut tcp = LineClient::connect(addrs.tcp).await;
    for i in 0..10 {
        ws.send_text(&format!("m{i}")).await;
        tcp.send(&format!("m{i}")).await;
    }
    for i in 0..5 {
        assert_eq!(ws.recv().await, WsEvent::Text(format!("m{i}")));
        assert_eq!(tcp.recv().await, Some(format!("m{i}")));
    }
    assert_eq!(ws.until_close().await, WsEvent::Close(Some(1008)));
    assert_eq!(tcp.recv().await, None);
    eventually("both reported", || {
        service.error_codes().get(&1008) == Some(&2)
    })
    .await;
    assert_eq!(server.stats().rate_limited, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_over_the_limit_on_every_transport() {
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(
        service.clone(),
        config_from("rate=0.001 burst=5 rate_action=drop"),
    )
    .await;
    let mut ws = WsClient::connect(addrs.ws).await;
    let mut tcp = LineClient::connect(addrs.tcp).await;
    for i in 0..10 {
        ws.send_text(&format!("m{i}")).await;
        tcp.send(&format!("m{i}")).await;
    }
    for i in 0..5 {
        assert_eq!(ws.recv().await, WsEvent::Text(format!("m{i}")));
        assert_eq!(tcp.recv().await, Some(format!("m{i}")));
    }
    // The other 5 of each were dropped, and both connections stay open.
    // A drop is counted at once, the batch it came in once read to the end.
    eventually_eq(
        "drops and messages counted",
        || {
            let stats = server.stats();
            (stats.rate_limited, stats.messages_in)
        },
        (10, 20),
    )
    .await;
    let stats = server.stats();
    assert_eq!(stats.open_connections, 2);
    assert_eq!(service.closes().total, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_counts_every_transport() {
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(service.clone(), config_from("max_per_ip=3")).await;
    let two = Some(Ipv4Addr::new(127, 0, 0, 2));
    let mut held_ws = Vec::new();
    for i in 0..2 {
        let mut c = WsClient::try_connect(addrs.ws, two, "/").await.unwrap();
        c.roundtrip(&format!("ws {i}")).await;
        held_ws.push(c);
    }
    let mut held_tcp = LineClient::from_stream(dial_from(addrs.tcp, two).await.unwrap());
    held_tcp.roundtrip("tcp").await;
    // The fourth from 127.0.0.2, on either transport, is refused.
    assert!(WsClient::try_connect(addrs.ws, two, "/").await.is_err());
    let mut refused = dial_from(addrs.tcp, two).await.unwrap();
    assert!(read_to_end(&mut refused).await.is_empty());
    assert_eq!(server.stats().connections_rejected, 2);
    // Another address is not affected.
    WsClient::try_connect(addrs.ws, Some(Ipv4Addr::new(127, 0, 0, 3)), "/")
        .await
        .unwrap()
        .roundtrip("other")
        .await;
    // A slot freed is a slot for the next connection. It is released
    // right after on_close returns; a connection refused in that instant
    // simply tries again.
    drop(held_ws.pop());
    eventually("on_close ran", || service.closes().total == 2).await;
    let mut again = within("slot freed", async {
        loop {
            if let Ok(c) = WsClient::try_connect(addrs.ws, two, "/").await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    again.roundtrip("again").await;
    drop((held_ws, held_tcp));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_on_every_transport() {
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(service.clone(), config_from("max_msg=1024")).await;
    let mut ws = WsClient::connect(addrs.ws).await;
    let at_limit = "a".repeat(1024);
    ws.roundtrip(&at_limit).await;
    ws.send_text(&"b".repeat(1025)).await;
    assert_eq!(ws.until_close().await, WsEvent::Close(Some(1009)));
    let mut tcp = LineClient::connect(addrs.tcp).await;
    tcp.roundtrip(&at_limit).await;
    tcp.send(&"b".repeat(1025)).await;
    assert_eq!(tcp.recv().await, None);
    let mut frames = dial_from(addrs.frames, None).await.unwrap();
    frames.write_all(&1025u32.to_be_bytes()).await.unwrap();
    assert!(read_to_end(&mut frames).await.is_empty());
    eventually("all three reported 1009", || {
        service.error_codes().get(&1009) == Some(&3)
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn one_frame_over_max_message_size_gets_1009_with_the_default_frame_limit() {
    // The frame limit stays at its default (1 MiB): the message limit
    // alone has to refuse a single unfragmented frame one byte over it.
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(service.clone(), config_from("max_message=1024")).await;
    let mut ws = WsClient::connect(addrs.ws).await;
    ws.roundtrip(&"a".repeat(1024)).await;
    ws.send_text(&"b".repeat(1025)).await;
    // The next thing the client reads is the close: not an echo.
    assert_eq!(ws.recv().await, WsEvent::Close(Some(1009)));
    eventually("1009 reported", || {
        service.error_codes().get(&1009) == Some(&1)
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_one_line_never_reaches_lines_peers_as_several() {
    let test = "a_message_that_is_not_one_line_never_reaches_lines_peers_as_several";
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(service.clone(), config_from("")).await;
    let mut sender = WsClient::connect(addrs.ws).await;
    let mut browser = WsClient::connect(addrs.ws).await;
    let mut terminal = LineClient::connect(addrs.tcp).await;
    // Each has joined once its echo came back.
    sender.roundtrip("sender").await;
    browser.roundtrip("browser").await;
    terminal.roundtrip("terminal").await;

    // A forged second line, a trailing '\r', binary that is not UTF-8,
    // binary that is, then a plain line.
    sender
        .send_text("all hello\nFAKE <admin>: give me your password")
        .await;
    sender.send_text("all trailing\r").await;
    sender
        .send_raw(&frame(0x2, b"all \xff\xfe bin"))
        .await
        .unwrap();
    sender
        .send_raw(&frame(0x2, "all café".as_bytes()))
        .await
        .unwrap();
    sender.send_text("all after").await;

    // The browser gets everything as it was sent.
    assert_eq!(
        browser.recv().await,
        WsEvent::Text("hello\nFAKE <admin>: give me your password".into())
    );
    assert_eq!(browser.recv().await, WsEvent::Text("trailing\r".into()));
    assert_eq!(
        browser.recv().await,
        WsEvent::Binary(b"\xff\xfe bin".to_vec())
    );
    assert_eq!(
        browser.recv().await,
        WsEvent::Binary("café".as_bytes().to_vec())
    );
    assert_eq!(browser.recv().await, WsEvent::Text("after".into()));
    // The terminal gets the two messages that are one line each, in order,
    // and no line of the others (nothing starting with FAKE, no "trailing").
    let mut lines = Vec::new();
    while lines.last().map(String::as_str) != Some("after") {
        lines.push(terminal.recv().await.expect("terminal still open"));
    }
    assert_eq!(lines, ["café", "after"]);
    assert!(!lines.iter().any(|l| l.starts_with("FAKE")));
    // Refused for the terminal only, counted, and it stays open.
    let stats = server.stats();
    assert_eq!(stats.invalid_sends, 3, "{stats:?}");
    assert_eq!(stats.open_connections, 3);
    terminal.roundtrip("still here").await;
    browser.roundtrip("still here").await;
    assert_eq!(service.closes().total, 0);
    figure(
        test,
        format_args!(
            "5 broadcasts: browser got 5 of 5, terminal got {lines:?}, invalid_sends = {}, 0 closed",
            stats.invalid_sends
        ),
    );
    server.shutdown().await;
}
