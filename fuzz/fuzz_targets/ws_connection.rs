//! The WebSocket message path: bytes after a valid upgrade, through
//! tungstenite's frame decoding and the real connection driver, to an
//! echoing component, over an in-memory pipe.
//!
//! Input: a write-size byte, then what the peer sends after its upgrade
//! request, before ending its stream. The connection must end (no hang),
//! run `on_open` and `on_close` once each, echo every message the
//! component received as one unmasked frame each, in order, and close with
//! a code a server may send.
#![no_main]

#[path = "common.rs"]
mod common;

use common::{
    Echo, HANG, check_http_response, parse_server_frames, peer, read_all, runtime, write_chunked,
};
use libfuzzer_sys::fuzz_target;
use switchboard_core::transport::{Transport, spawn_client};
use switchboard_core::{Config, Message};
use switchboard_ws::WsTransport;
use tokio::io::DuplexStream;
use tokio::time::timeout;

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let [size, frames @ ..] = data else {
        return;
    };
    let chunk = usize::from(*size) + 1;
    runtime().block_on(async {
        let echo = Echo::default();
        let transport = WsTransport::new(echo.clone());
        let config = Config::default().max_frame_size(512).max_message_size(2048);
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let (r, w) = tokio::io::split(client_io);
        let reader = tokio::spawn(read_all(r));
        let writer = tokio::spawn({
            let mut input = UPGRADE.to_vec();
            input.extend_from_slice(frames);
            async move { write_chunked(w, &input, chunk).await }
        });
        let accepted = Transport::<DuplexStream>::accept(&transport, server_io, peer(), &config)
            .await
            .expect("a valid upgrade is accepted");
        let handle = spawn_client(
            accepted.conn,
            peer(),
            accepted.info,
            accepted.component,
            config,
        )
        .expect("valid config");
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

        let (status, head) = check_http_response(&out, false);
        assert_eq!(status, 101);
        let frames = parse_server_frames(&out[head..]);
        let seen = echo.seen();
        assert_eq!(seen.opens, 1);
        assert_eq!(seen.closes.len(), 1, "{:?}", seen.closes);
        let echoed: Vec<Message> = frames
            .iter()
            .filter_map(|f| match f.opcode {
                0x1 => Some(Message::text(
                    String::from_utf8(f.payload.clone()).expect("text frames are UTF-8"),
                )),
                0x2 => Some(Message::binary(f.payload.clone())),
                _ => None,
            })
            .collect();
        assert!(
            frames.iter().all(|f| f.fin),
            "the server sends whole messages"
        );
        assert_eq!(echoed, seen.messages, "echo differs from what was received");
        for f in &frames {
            assert!(
                matches!(f.opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xA),
                "opcode {}",
                f.opcode
            );
            if f.opcode == 0x8 && f.payload.len() >= 2 {
                let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                assert!(
                    (1000..5000).contains(&code) && !matches!(code, 1004..=1006 | 1015),
                    "close code {code} on the wire"
                );
            }
        }
        assert!(
            frames.iter().filter(|f| f.opcode == 0x8).count() <= 1,
            "one close frame"
        );
    });
});
