//! A framed TCP connection on the real connection driver, fed arbitrary
//! bytes over an in-memory pipe by an echoing component.
//!
//! Input: a selector byte (codec and write size), a limit byte, then what
//! the peer sends before ending its stream. The connection must end (no
//! hang), run `on_open` and `on_close` once each, and write back exactly
//! the encoding of every message the component echoed (all it received,
//! but a line with a `\r` inside, which `send` refuses): nothing lost,
//! nothing invented, even when the input ends in an error.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::BytesMut;
use common::{Echo, HANG, peer, read_all, runtime, write_chunked};
use libfuzzer_sys::fuzz_target;
use switchboard_core::Config;
use switchboard_core::transport::{Transport, spawn_client};
use switchboard_tcp::{Codec, TcpTransport};
use tokio::io::DuplexStream;
use tokio::time::timeout;
use tokio_util::codec::Encoder;

fuzz_target!(|data: &[u8]| {
    let [selector, limit, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4 + 1;
    let codec = match selector % 3 {
        0 => Codec::lines(),
        1 => Codec::length_delimited(),
        _ => Codec::raw(),
    }
    .max_length(max);
    let chunk = usize::from(selector / 3) + 1;

    runtime().block_on(async {
        let config = Config::default().max_frame_size(max).max_message_size(max);
        let echo = Echo::default();
        let transport = TcpTransport::new(echo.clone(), codec.clone());
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let accepted = Transport::<DuplexStream>::accept(&transport, server_io, peer(), &config)
            .await
            .expect("a TCP accept has no handshake to fail");
        let handle = spawn_client(
            accepted.conn,
            peer(),
            accepted.info,
            accepted.component,
            config,
        )
        .expect("valid config");
        let (r, w) = tokio::io::split(client_io);
        let reader = tokio::spawn(read_all(r));
        let writer = tokio::spawn({
            let stream = stream.to_vec();
            async move { write_chunked(w, &stream, chunk).await }
        });
        timeout(HANG, handle.closed())
            .await
            .expect("the connection ends");
        timeout(HANG, writer)
            .await
            .expect("writer ends")
            .expect("writer");
        let out = timeout(HANG, reader)
            .await
            .expect("reader ends")
            .expect("reader");

        let seen = echo.seen();
        assert_eq!(seen.opens, 1);
        // Only a line can hold what the codec cannot write back (a `\r`).
        if selector % 3 != 0 {
            assert_eq!(seen.refused, 0);
        }
        assert_eq!(seen.closes.len(), 1, "{:?}", seen.closes);
        let mut expected = BytesMut::new();
        let mut encoder = codec;
        for msg in &seen.messages {
            encoder.encode(msg.clone(), &mut expected).expect("encode");
        }
        assert_eq!(
            out,
            &expected[..],
            "the echo differs from what was received"
        );
    });
});
