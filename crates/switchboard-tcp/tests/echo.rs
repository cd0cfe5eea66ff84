//! Echo over each codec on real sockets, however the bytes are split.
#![allow(clippy::unwrap_used)]

mod support;

use switchboard::tcp::{BytesMut, Codec, Decoder, Encoder, TcpTransport};
use switchboard::{
    BoxError, CloseCode, CloseReason, Config, Connection, Counters, Error, Message,
    MessageComponent, ServerHandle,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use support::{
    dial, echo_server, peer, read_n, read_to_end, recorder, serve, within,
    write_all_then_read_to_end,
};

#[tokio::test]
async fn lines_echo_text_and_strip_line_ends() {
    let (server, mut events) = echo_server(TcpTransport::lines, Config::default()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;
    assert_eq!(conn.transport().kind(), "tcp");

    stream
        .write_all("hello\r\nwörld\n\n".as_bytes())
        .await
        .unwrap();
    assert_eq!(events.message(conn.id()).await, Message::text("hello"));
    assert_eq!(events.message(conn.id()).await, Message::text("wörld"));
    assert_eq!(events.message(conn.id()).await, Message::text(""));
    let expected = "hello\nwörld\n\n".as_bytes();
    assert_eq!(read_n(&mut stream, expected.len()).await, expected);

    // Binary messages go out on a lines connection as they are, plus "\n".
    conn.send(Message::binary(vec![0u8, 1, 2])).unwrap();
    assert_eq!(read_n(&mut stream, 4).await, [0, 1, 2, b'\n']);

    drop(stream);
    let (_, reason) = events.close_of(conn.id()).await;
    assert_eq!(reason, CloseReason::Peer(None));
    server.shutdown().await;
}

#[tokio::test]
async fn length_delimited_echo() {
    let (server, mut events) = echo_server(TcpTransport::length_delimited, Config::default()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;

    let mut wire = Vec::new();
    for payload in [&b"abc"[..], b"", &[0xff; 300][..]] {
        wire.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(payload);
    }
    stream.write_all(&wire).await.unwrap();
    assert_eq!(
        events.message(conn.id()).await,
        Message::binary(&b"abc"[..])
    );
    assert_eq!(events.message(conn.id()).await, Message::binary(Vec::new()));
    assert_eq!(
        events.message(conn.id()).await,
        Message::binary(vec![0xffu8; 300])
    );
    assert_eq!(read_n(&mut stream, wire.len()).await, wire);

    // Text goes out framed the same way.
    conn.send("hi").unwrap();
    assert_eq!(read_n(&mut stream, 6).await, [0, 0, 0, 2, b'h', b'i']);
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn raw_echo_passes_bytes_through() {
    let (server, mut events) = echo_server(TcpTransport::raw, Config::default()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;

    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert_eq!(write_all_then_read_to_end(&mut stream, &data).await, data);

    // Chunks arrive as binary messages, in order and complete.
    let (msgs, reason) = events.close_of(conn.id()).await;
    assert_eq!(reason, CloseReason::Peer(None));
    assert!(msgs.iter().all(Message::is_binary));
    let received: Vec<u8> = msgs.iter().flat_map(|m| m.as_bytes().to_vec()).collect();
    assert_eq!(received, data);
    server.shutdown().await;
}

#[tokio::test]
async fn frames_written_byte_by_byte() {
    let text = Message::text;
    let binary = |b: &[u8]| Message::binary(b.to_vec());
    let frames = [0u8, 0, 0, 2, 7, 8, 0, 0, 0, 1, 9];
    // (codec, what the peer writes, the messages, what comes back)
    let cases = [
        (
            Codec::lines(),
            &b"one\r\ntwo\nthree\n"[..],
            vec![text("one"), text("two"), text("three")],
            &b"one\ntwo\nthree\n"[..],
        ),
        (
            Codec::length_delimited(),
            &frames[..],
            vec![binary(&[7, 8]), binary(&[9])],
            &frames[..],
        ),
    ];
    for (codec, wire, msgs, echo) in cases {
        let (server, mut events) =
            echo_server(|c| TcpTransport::new(c, codec), Config::default()).await;
        let (mut stream, conn) = peer(&server, &mut events).await;
        for &b in wire {
            stream.write_all(&[b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        for msg in msgs {
            assert_eq!(events.message(conn.id()).await, msg);
        }
        assert_eq!(read_n(&mut stream, echo.len()).await, echo);
        drop(stream);
        server.shutdown().await;
    }
}

/// A fixed-header protocol: one byte of kind (0 text, 1 binary), a u16
/// big-endian length, the payload.
#[derive(Clone)]
struct Typed;

impl Decoder for Typed {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let &[kind, hi, lo, ..] = &src[..] else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if src.len() < 3 + len {
            return Ok(None);
        }
        let payload = src.split_to(3 + len).split_off(3).freeze();
        match kind {
            0 => Ok(Some(Message::Text(
                payload
                    .try_into()
                    .map_err(|e| Error::protocol(CloseCode::INVALID, e))?,
            ))),
            1 => Ok(Some(Message::Binary(payload))),
            k => Err(Error::protocol(
                CloseCode::PROTOCOL,
                format!("unknown kind {k}"),
            )),
        }
    }
}

impl Encoder<Message> for Typed {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        let len =
            u16::try_from(msg.len()).map_err(|_| Error::protocol(CloseCode::SIZE, "too long"))?;
        dst.extend_from_slice(&[u8::from(msg.is_binary())]);
        dst.extend_from_slice(&len.to_be_bytes());
        dst.extend_from_slice(msg.as_bytes());
        Ok(())
    }
}

#[tokio::test]
async fn custom_codec_echo_and_its_errors() {
    let (server, mut events) =
        echo_server(|c| TcpTransport::with_codec(c, Typed), Config::default()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;

    let wire = b"\x00\x00\x02hi\x01\x00\x03\x01\x02\x03";
    stream.write_all(wire).await.unwrap();
    assert_eq!(events.message(conn.id()).await, Message::text("hi"));
    assert_eq!(
        events.message(conn.id()).await,
        Message::binary(vec![1u8, 2, 3])
    );
    assert_eq!(read_n(&mut stream, wire.len()).await, wire);

    // An error of the codec's own closes with the code it chose.
    stream.write_all(b"\x09\x00\x00").await.unwrap();
    assert!(read_to_end(&mut stream).await.is_empty());
    // The server waits for the peer's end of stream before it finishes.
    drop(stream);
    let (seen, reason) = events.error_then_close(conn.id()).await;
    assert_eq!(seen.code, Some(1002));
    assert!(seen.text.contains("unknown kind 9"), "{}", seen.text);
    assert_eq!(reason.code(), Some(CloseCode::PROTOCOL));
    server.shutdown().await;
}

/// A client-side component that reports what it receives.
struct Collect(mpsc::UnboundedSender<Message>);

impl MessageComponent for Collect {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        conn.send("hello from on_open")?;
        Ok(())
    }

    async fn on_message(&self, _conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let _ = self.0.send(msg);
        Ok(())
    }
}

#[tokio::test]
async fn client_connect_over_each_codec() {
    for codec in [Codec::lines(), Codec::length_delimited()] {
        let (server, mut events) =
            echo_server(|c| TcpTransport::new(c, codec.clone()), Config::default()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = within(
            "connect",
            switchboard::tcp::connect(server.local_addr(), codec.clone(), Collect(tx)),
        )
        .await
        .unwrap();
        let conn = events.opened().await;
        assert_eq!(client.connection().transport().kind(), "tcp");
        assert_eq!(client.connection().peer_addr(), server.local_addr());

        let first = within("first echo", rx.recv()).await.unwrap();
        assert_eq!(first.as_bytes(), b"hello from on_open", "{}", codec.name());
        client.send("second").unwrap();
        let second = within("second echo", rx.recv()).await.unwrap();
        assert_eq!(second.as_bytes(), b"second");

        // Closing from the client: the server sees end of stream.
        client.close();
        assert!(matches!(
            within("client closed", client.closed()).await,
            CloseReason::Local(_)
        ));
        let (msgs, reason) = events.close_of(conn.id()).await;
        assert_eq!(msgs.len(), 2);
        assert_eq!(reason, CloseReason::Peer(None));
        server.shutdown().await;
    }
}

#[tokio::test]
async fn client_sees_server_close() {
    let (component, mut events) = recorder(false);
    let server = serve(TcpTransport::lines(component), Config::default()).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let client = switchboard::tcp::connect_with_config(
        server.local_addr(),
        Codec::lines(),
        Collect(tx),
        Config::default().idle_timeout(None),
    )
    .await
    .unwrap();
    let conn = events.opened().await;
    conn.close();
    assert_eq!(
        within("client closed", client.closed()).await,
        CloseReason::Peer(None)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn connect_refused_is_an_io_error() {
    // Bind then drop: nothing listens on that port any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = switchboard::tcp::connect(addr, Codec::lines(), Collect(tx))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
}

/// Sends each line back twice.
#[tokio::test]
async fn pipelined_lines_with_a_small_queue_bound_get_every_reply_in_order() {
    // The driver reads on while replies wait in the queue, but takes the
    // queue once it holds a quarter of its bound: 200 lines in one write,
    // two replies each, never refused by a queue of 8.
    let config = Config::default().queue_max_messages(8);
    let twice = |i| format!("twice m{i}\n");
    let stats = exchange(config, 200, twice, |i| format!("m{i}\nm{i}\n")).await;
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert_eq!((stats.messages_in, stats.messages_out), (200, 400));
}

/// Hands each line's connection to a helper thread that sends on it while
/// the handler still runs (spinning inside its poll until the send is done).
struct Relay {
    to_helper: std::sync::Mutex<std::sync::mpsc::Sender<(Connection, String)>>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl MessageComponent for Relay {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        use std::sync::atomic::Ordering;
        let before = self.sent.load(Ordering::SeqCst);
        let text = msg.as_text().ok_or("text only")?.to_owned();
        self.to_helper.lock().unwrap().send((conn.clone(), text))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.sent.load(Ordering::SeqCst) == before && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_another_thread_during_a_handler_leaves_without_more_input() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (tx, rx) = std::sync::mpsc::channel::<(Connection, String)>();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for (conn, text) in rx {
            conn.send(format!("helper {text}")).unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let relay = Relay {
        to_helper: std::sync::Mutex::new(tx),
        sent: sent.clone(),
    };
    let server = serve(TcpTransport::lines(relay), Config::default()).await;
    let mut stream = dial(server.local_addr()).await;
    for i in 0..200 {
        stream.write_all(format!("{i}\n").as_bytes()).await.unwrap();
        // Nothing else arrives: the reply leaves because the driver looked
        // at the queue before it slept, although the send did not wake it.
        let expected = format!("helper {i}\n");
        let got = read_n(&mut stream, expected.len()).await;
        assert_eq!(String::from_utf8(got).unwrap(), expected);
    }
    assert_eq!(sent.load(Ordering::SeqCst), 200);
    drop(stream);
    server.shutdown().await;
}

/// Echoes, except `fail` and `wait-fail`, which return an error (the
/// second after waiting once); `on_error` records errors without closing.
struct FailsSome {
    errors: mpsc::UnboundedSender<String>,
}

impl MessageComponent for FailsSome {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        match msg.as_text() {
            Some("fail") => Err("failed at once".into()),
            Some("wait-fail") => {
                tokio::task::yield_now().await;
                Err("failed after waiting".into())
            }
            _ => Ok(conn.send(msg)?),
        }
    }

    async fn on_error(&self, _conn: &Connection, err: Error) {
        let _ = self.errors.send(err.to_string());
    }
}

#[tokio::test]
async fn a_handler_error_is_reported_and_the_connection_goes_on() {
    let (errors, mut seen) = mpsc::unbounded_channel();
    let server = serve(TcpTransport::lines(FailsSome { errors }), Config::default()).await;
    let mut stream = dial(server.local_addr()).await;
    // In one write: the errors come between messages read together.
    stream
        .write_all(b"a\nfail\nb\nwait-fail\nc\nfail\n")
        .await
        .unwrap();
    let got = read_n(&mut stream, 6).await;
    assert_eq!(got, b"a\nb\nc\n");
    // And after them, on the same connection.
    stream.write_all(b"d\n").await.unwrap();
    assert_eq!(read_n(&mut stream, 2).await, b"d\n");
    let mut reported = Vec::new();
    while reported.len() < 3 {
        reported.push(within("on_error", seen.recv()).await.unwrap());
    }
    assert!(reported[0].contains("failed at once"), "{reported:?}");
    assert!(reported[1].contains("failed after waiting"), "{reported:?}");
    assert!(reported[2].contains("failed at once"), "{reported:?}");
    let stats = server.stats();
    assert_eq!((stats.messages_in, stats.messages_out), (7, 4), "{stats:?}");
    drop(stream);
    server.shutdown().await;
}

/// Replies in ways that test the order and count of a handler's own sends
/// (which do not wake the driver running it) against everything else:
/// - `spawned X`: a spawned task sends `early X` and is awaited, then the
///   handler replies `late X`;
/// - `twice X`: replies `X` twice;
/// - `count`: replies `x`, then how many messages its queue holds (its
///   own reply counts);
/// - `panic`: replies `last words`, then panics;
/// - anything else is echoed.
struct Ordered;

impl MessageComponent for Ordered {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let text = msg.as_text().ok_or("text only")?;
        if let Some(n) = text.strip_prefix("spawned ") {
            let (other, early) = (conn.clone(), format!("early {n}"));
            tokio::spawn(async move { other.send(early) }).await??;
            conn.send(format!("late {n}"))?;
        } else if let Some(x) = text.strip_prefix("twice ") {
            conn.send(x)?;
            conn.send(x)?;
        } else if text == "count" {
            conn.send("x")?;
            conn.send(format!("queued {}", conn.queued_messages()))?;
        } else if text == "panic" {
            conn.send("last words")?;
            panic!("after replying");
        } else {
            conn.send(msg)?;
        }
        Ok(())
    }
}

/// A lines server of [`Ordered`], and a peer dialled in.
async fn ordered(config: Config) -> (ServerHandle, TcpStream) {
    let server = serve(TcpTransport::lines(Ordered), config).await;
    let stream = dial(server.local_addr()).await;
    (server, stream)
}

/// Writes the lines `request` makes of 0..n to a server of [`Ordered`] in
/// one write; what comes back must be what `reply` makes of each, in
/// order. Returns the server's counters.
async fn exchange(
    config: Config,
    n: usize,
    request: impl Fn(usize) -> String,
    reply: impl Fn(usize) -> String,
) -> Counters {
    let (server, mut stream) = ordered(config).await;
    let input: String = (0..n).map(request).collect();
    stream.write_all(input.as_bytes()).await.unwrap();
    let expected: String = (0..n).map(reply).collect();
    let got = read_n(&mut stream, expected.len()).await;
    assert_eq!(String::from_utf8(got).unwrap(), expected);
    let stats = server.stats();
    drop(stream);
    server.shutdown().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_another_task_before_a_handlers_reply_leaves_first() {
    let spawned = |i| format!("spawned {i}\n");
    let stats = exchange(Config::default(), 100, spawned, |i| {
        format!("early {i}\nlate {i}\n")
    })
    .await;
    assert_eq!((stats.messages_in, stats.messages_out), (100, 200));
}

#[tokio::test]
async fn a_reply_sent_before_a_panic_is_written_before_the_close() {
    // One thread: the connection after the panic is served by the same
    // thread, and gets only its own replies and counts.
    let (server, mut stream) = ordered(Config::default()).await;
    stream.write_all(b"a\npanic\nb\n").await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, b"a\nlast words\n");
    drop(stream);
    let mut next = dial(server.local_addr()).await;
    next.write_all(b"c\n").await.unwrap();
    assert_eq!(read_n(&mut next, 2).await, b"c\n");
    next.write_all(b"count\n").await.unwrap();
    assert_eq!(read_n(&mut next, 11).await, b"x\nqueued 1\n");
    assert_eq!(server.stats().panics, 1);
    drop(next);
    server.shutdown().await;
}
