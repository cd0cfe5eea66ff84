//! Limits and endings on real sockets: over-long input, invalid UTF-8,
//! half-close, idle peers and peers that never read.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use switchboard::tcp::{BytesMut, Decoder, Encoder, TcpTransport};
use switchboard::{CloseCode, CloseReason, Config, Message, SendError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};

use support::{
    dial, echo_server, peer, read_n, read_to_end, recorder, roundtrip, serve, within,
    write_all_then_read_to_end,
};

fn small_frames() -> Config {
    Config::default().max_frame_size(64).max_message_size(64)
}

#[tokio::test]
async fn over_long_line_closes_only_that_connection() {
    let (server, mut events) = echo_server(TcpTransport::lines, small_frames()).await;
    let (mut good, good_conn) = peer(&server, &mut events).await;
    let (mut bad, bad_conn) = peer(&server, &mut events).await;

    roundtrip(&mut good, "before").await;
    assert_eq!(
        events.message(good_conn.id()).await,
        Message::text("before")
    );

    // A line of exactly the limit is fine; one byte more is not. The
    // second line never ends: the server must not wait for its end.
    let exact = "x".repeat(64);
    bad.write_all(format!("{exact}\n{exact}y").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        events.message(bad_conn.id()).await,
        Message::text(exact.as_str())
    );
    // The echo of the good line was flushed before the end of stream.
    assert_eq!(read_to_end(&mut bad).await, format!("{exact}\n").as_bytes());
    drop(bad);
    let (seen, reason) = events.error_then_close(bad_conn.id()).await;
    assert_eq!(seen.code, Some(1009), "{seen:?}");
    assert!(
        seen.text.contains("longer than the limit of 64 bytes"),
        "{}",
        seen.text
    );
    assert_eq!(reason.code(), Some(CloseCode::SIZE));

    roundtrip(&mut good, "after").await;
    assert_eq!(events.message(good_conn.id()).await, Message::text("after"));
    drop(good);
    events.close_of(good_conn.id()).await;
    server.shutdown().await;
    assert_eq!(events.closes_left(bad_conn.id()), 0, "on_close ran again");
    assert_eq!(server.stats().connections_total, 2);
}

#[tokio::test]
async fn over_long_frame_is_refused_from_its_prefix() {
    let (server, mut events) = echo_server(TcpTransport::length_delimited, small_frames()).await;
    let (mut good, good_conn) = peer(&server, &mut events).await;
    let (mut bad, bad_conn) = peer(&server, &mut events).await;

    // Only the prefix is sent: the error cannot depend on buffering the body.
    bad.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
    assert!(read_to_end(&mut bad).await.is_empty());
    drop(bad);
    let (seen, reason) = events.error_then_close(bad_conn.id()).await;
    assert_eq!(seen.code, Some(1009), "{seen:?}");
    assert!(seen.text.contains("1000000 bytes"), "{}", seen.text);
    assert!(
        matches!(&reason, CloseReason::Error(f) if f.code == CloseCode::SIZE && f.reason.contains("1000000")),
        "{reason}"
    );

    good.write_all(&[0, 0, 0, 2, 1, 2]).await.unwrap();
    assert_eq!(
        events.message(good_conn.id()).await,
        Message::binary(vec![1u8, 2])
    );
    assert_eq!(read_n(&mut good, 6).await, [0, 0, 0, 2, 1, 2]);
    drop(good);
    events.close_of(good_conn.id()).await;
    server.shutdown().await;
    assert_eq!(events.closes_left(bad_conn.id()), 0, "on_close ran again");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let (server, mut events) = echo_server(TcpTransport::lines, Config::default()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;

    stream
        .write_all(b"fine\n\xff\xfe bad\nnever\n")
        .await
        .unwrap();
    assert_eq!(events.message(conn.id()).await, Message::text("fine"));
    assert_eq!(read_to_end(&mut stream).await, b"fine\n");
    drop(stream);
    let (seen, reason) = events.error_then_close(conn.id()).await;
    assert_eq!(seen.code, Some(1007), "{seen:?}");
    assert_eq!(reason.code(), Some(CloseCode::INVALID));
    server.shutdown().await;
}

/// A codec that never finds a frame and never limits itself.
#[derive(Clone)]
struct Hoarder;

impl Decoder for Hoarder {
    type Item = Message;
    type Error = std::io::Error;
    fn decode(&mut self, _src: &mut BytesMut) -> Result<Option<Message>, std::io::Error> {
        Ok(None)
    }
}

impl Encoder<Message> for Hoarder {
    type Error = std::io::Error;
    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.extend_from_slice(msg.as_bytes());
        Ok(())
    }
}

#[tokio::test]
async fn undecoded_input_is_bounded_for_any_codec() {
    let (server, mut events) =
        echo_server(|c| TcpTransport::with_codec(c, Hoarder), small_frames()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;
    let (mut rd, mut wr) = stream.split();
    // Far more than the limit plus slack; the server stops reading early,
    // so the write may fail once the connection is gone.
    let writer = async {
        let chunk = [b'z'; 1024];
        for _ in 0..64 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let mut sink = Vec::new();
    let reader = rd.read_to_end(&mut sink);
    let ((), _) = within("hoarder", async { tokio::join!(writer, reader) }).await;
    drop(stream);
    let (seen, _) = events.error_then_close(conn.id()).await;
    assert_eq!(seen.code, Some(1009), "{seen:?}");
    server.shutdown().await;
}

/// The lines codec, except that a line "boom" makes decoding panic.
#[derive(Clone)]
struct Fragile(switchboard::tcp::Codec);

impl Decoder for Fragile {
    type Item = Message;
    type Error = switchboard::tcp::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Self::Error> {
        let msg = self.0.decode(src)?;
        assert!(msg != Some(Message::text("boom")), "codec panic");
        Ok(msg)
    }
}

impl Encoder<Message> for Fragile {
    type Error = switchboard::tcp::Error;
    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(msg, dst)
    }
}

#[tokio::test]
async fn a_panicking_codec_closes_only_its_connection_after_its_replies() {
    let fragile = |c| TcpTransport::with_codec(c, Fragile(switchboard::tcp::Codec::lines()));
    let (server, mut events) = echo_server(fragile, Config::default()).await;
    let (mut good, good_conn) = peer(&server, &mut events).await;
    let (mut bad, bad_conn) = peer(&server, &mut events).await;

    bad.write_all(b"one\ntwo\nboom\nnever\n").await.unwrap();
    assert_eq!(events.message(bad_conn.id()).await, Message::text("one"));
    assert_eq!(events.message(bad_conn.id()).await, Message::text("two"));
    // The replies to what came before the panic are written, then the
    // server ends the stream.
    assert_eq!(read_to_end(&mut bad).await, b"one\ntwo\n");
    drop(bad);
    let (seen, reason) = events.error_then_close(bad_conn.id()).await;
    assert!(seen.text.contains("codec panic"), "{seen:?}");
    assert_eq!(reason, CloseReason::Panic);
    assert_eq!(server.stats().panics, 1);

    roundtrip(&mut good, "still here").await;
    assert!(!good_conn.is_closed());
    drop(good);
    server.shutdown().await;
}

#[tokio::test]
async fn many_lines_in_one_write_then_a_half_close_are_all_delivered() {
    let (server, mut events) = echo_server(TcpTransport::lines, Config::default()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;

    // Many lines, the last one unterminated, then the write side shut down.
    let n = 5_000;
    let mut wire: String = (0..n).map(|i| format!("line {i}\n")).collect();
    wire.push_str("last");
    let echoed = write_all_then_read_to_end(&mut stream, wire.as_bytes()).await;
    assert_eq!(String::from_utf8(echoed).unwrap(), format!("{wire}\n"));

    let (msgs, reason) = events.close_of(conn.id()).await;
    assert_eq!(msgs.len(), n + 1);
    for (i, m) in msgs[..n].iter().enumerate() {
        assert_eq!(m.as_text(), Some(format!("line {i}").as_str()));
    }
    assert_eq!(msgs[n], Message::text("last"));
    assert_eq!(reason, CloseReason::Peer(None));
    assert_eq!(server.stats().messages_in, n as u64 + 1);
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn replies_queued_at_half_close_are_flushed() {
    // Each line's replies are queued in one burst once the test has shut
    // its side down, so the end of stream is already waiting in the socket
    // when they are queued.
    struct Later(mpsc::UnboundedSender<CloseReason>, watch::Receiver<bool>);

    impl switchboard::MessageComponent for Later {
        async fn on_message(
            &self,
            conn: &switchboard::Connection,
            msg: Message,
        ) -> Result<(), switchboard::BoxError> {
            self.1.clone().wait_for(|shut| *shut).await?;
            for i in 0..100 {
                conn.send(format!("{}-{i}", msg.as_text().unwrap_or("?")))?;
            }
            Ok(())
        }

        async fn on_close(&self, _conn: &switchboard::Connection, reason: CloseReason) {
            let _ = self.0.send(reason);
        }
    }

    let (tx, mut closed) = mpsc::unbounded_channel();
    let (shut, shut_rx) = watch::channel(false);
    let server = serve(TcpTransport::lines(Later(tx, shut_rx)), Config::default()).await;
    let mut stream = dial(server.local_addr()).await;
    stream.write_all(b"a\nb\n").await.unwrap();
    stream.shutdown().await.unwrap();
    shut.send(true).unwrap();
    let echoed = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    let expected: String = ["a", "b"]
        .iter()
        .flat_map(|l| (0..100).map(move |i| format!("{l}-{i}\n")))
        .collect();
    assert_eq!(echoed, expected);
    assert_eq!(
        within("on_close", closed.recv()).await,
        Some(CloseReason::Peer(None))
    );
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn idle_peer_is_closed_and_active_peer_is_not() {
    let idle = Duration::from_millis(500);
    let config = Config::default()
        .ping_interval(None)
        .idle_timeout(Some(idle));
    let (server, mut events) = echo_server(TcpTransport::lines, config).await;
    let (mut quiet, quiet_conn) = peer(&server, &mut events).await;
    let started = tokio::time::Instant::now();
    let (mut busy, busy_conn) = peer(&server, &mut events).await;

    // The busy peer sends well within the timeout, for longer than it.
    let keep_busy = async {
        for i in 0..20 {
            roundtrip(&mut busy, &format!("tick {i}")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let quiet_end = read_to_end(&mut quiet);
    let (quiet_bytes, ()) =
        within("idle close", async { tokio::join!(quiet_end, keep_busy) }).await;
    assert!(quiet_bytes.is_empty());
    assert!(
        started.elapsed() >= idle,
        "closed after {:?}",
        started.elapsed()
    );
    assert!(!busy_conn.is_closed(), "the busy peer was closed");

    drop(quiet);
    let (seen, reason) = events.error_then_close(quiet_conn.id()).await;
    assert!(seen.idle, "{seen:?}");
    assert_eq!(reason, CloseReason::IdleTimeout);
    drop(busy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_reads_is_closed_as_slow_consumer() {
    let config = Config::default()
        .queue_max_messages(16)
        .queue_max_bytes(256 * 1024)
        .close_timeout(Duration::from_millis(500));
    let (component, mut events) = recorder(false);
    let server = serve(TcpTransport::lines(component), config).await;

    // The slow peer takes a tiny receive window and never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let slow = within("connect", socket.connect(server.local_addr()))
        .await
        .unwrap();
    let slow_conn = events.opened().await;
    let fast = dial(server.local_addr()).await;
    let fast_conn = events.opened().await;

    // The fast peer reads every line and reports its sequence number.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(fast).lines();
        let mut expected = 0u64;
        while let Some(line) = lines.next_line().await.unwrap() {
            let seq: u64 = line.split_once(' ').unwrap().0.parse().unwrap();
            assert_eq!(seq, expected, "fast peer got messages out of order");
            expected += 1;
            let _ = seen_tx.send(seq);
        }
        expected
    });

    let payload = "x".repeat(16 * 1024);
    let mut seq = 0u64;
    let mut slow_refused = false;
    // Bounded: the slow peer's socket buffers hold a few MiB at most.
    // Four a round: a round's messages may still count against the fast
    // peer's bounds (16 messages, 256 KiB) while the next round is queued,
    // until its driver has seen the writes complete.
    'rounds: for _ in 0..4_000 {
        for _ in 0..4 {
            let msg = Message::text(format!("{seq} {payload}"));
            match slow_conn.send(msg.clone()) {
                Ok(()) => {}
                Err(SendError::Full(_) | SendError::Closed(_)) => slow_refused = true,
                Err(err) => panic!("{err}"),
            }
            fast_conn.send(msg).expect("the fast peer keeps up");
            seq += 1;
        }
        // Pace on the fast peer, so that only the slow one falls behind.
        loop {
            let got = within("fast peer reads", seen_rx.recv()).await.unwrap();
            if got == seq - 1 {
                break;
            }
        }
        if slow_refused {
            break 'rounds;
        }
    }
    assert!(slow_refused, "the slow peer's queue never filled");
    assert_eq!(server.stats().slow_consumer_closes, 1);
    let (_, reason) = events.close_of(slow_conn.id()).await;
    assert_eq!(reason, CloseReason::SlowConsumer);

    // The fast peer carries on.
    for _ in 0..10 {
        fast_conn
            .send(Message::text(format!("{seq} after")))
            .unwrap();
        seq += 1;
    }
    loop {
        if within("fast peer after", seen_rx.recv()).await.unwrap() == seq - 1 {
            break;
        }
    }
    assert!(!fast_conn.is_closed());
    fast_conn.close();
    let received = within("fast reader ends", reader).await.unwrap();
    assert_eq!(received, seq);
    assert_eq!(server.stats().slow_consumer_closes, 1);
    drop(slow);
    server.shutdown().await;
}
