//! The WebSocket handshake (reading the request head, judging it, the hook,
//! answering) over an in-memory pipe, on arbitrary request bytes.
//!
//! Input: a write-size byte, then the request bytes, after which the peer
//! ends its stream. The handshake must end (no hang) with an upgrade and a
//! `101`, a well-formed HTTP answer (`200` for the page, 4xx otherwise), or
//! nothing at all when the head never completed.
#![no_main]

#[path = "common.rs"]
mod common;

use common::{Echo, HANG, check_http_response, peer, read_all, runtime, write_chunked};
use libfuzzer_sys::fuzz_target;
use switchboard_core::Config;
use switchboard_core::transport::Transport;
use switchboard_ws::{Accept, Page, Reject, Request, WsTransport};
use tokio::io::DuplexStream;
use tokio::time::timeout;

async fn hook(req: Request) -> Result<Accept, Reject> {
    match req.query_param("token").as_deref() {
        Some("deny") => Err(Reject::forbidden().reason("denied")),
        _ => Ok(Accept::new()),
    }
}

fn is_head(mut request: &[u8]) -> bool {
    loop {
        match request {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => request = rest,
            _ => return request.starts_with(b"HEAD "),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [size, request @ ..] = data else {
        return;
    };
    let chunk = usize::from(*size) + 1;
    runtime().block_on(async {
        let transport = WsTransport::builder()
            .route("/chat", Echo::default())
            .route("/rooms/{room}", Echo::default())
            .route("/rooms/{room}/log", Echo::default())
            .route("/files/{*rest}", Echo::default())
            .page("/", Page::html("<p>hi</p>"))
            .page("/p/{name}", Page::html("<p>page</p>"))
            .subprotocols(["chat.v2", "chat.v1"])
            .max_request_head(1024)
            .on_handshake(hook)
            .build()
            .expect("valid transport");
        let config = Config::default();
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let (r, w) = tokio::io::split(client_io);
        let reader = tokio::spawn(read_all(r));
        let writer = tokio::spawn({
            let request = request.to_vec();
            async move { write_chunked(w, &request, chunk).await }
        });
        let result = timeout(
            HANG,
            Transport::<DuplexStream>::accept(&transport, server_io, peer(), &config),
        )
        .await
        .expect("the handshake ends");
        let upgraded = match result {
            Ok(accepted) => {
                let info = &accepted.info;
                assert_eq!(info.kind(), "ws");
                assert!(info.path().starts_with('/'), "{:?}", info.path());
                // A route's parameter matched a non-empty segment (or, for
                // the wildcard, a non-empty rest), and decoded as UTF-8.
                let named: Vec<&str> = info.params().map(|(name, _)| name).collect();
                assert!(
                    named.is_empty() || named == ["room"] || named == ["rest"],
                    "{named:?}"
                );
                assert!(info.params().all(|(_, value)| !value.is_empty()));
                true
            }
            Err(_) => false,
        };
        timeout(HANG, writer)
            .await
            .expect("writer ends")
            .expect("writer");
        let out = timeout(HANG, reader)
            .await
            .expect("reader ends")
            .expect("reader");
        // The server answers HEAD (whatever else is wrong with the request
        // once the method is read) with the head alone. Empty lines before
        // the request line are skipped (RFC 9112 2.2), as httparse does.
        let head_request = is_head(request);
        if upgraded {
            let (status, _) = check_http_response(&out, head_request);
            assert_eq!(status, 101);
            assert!(out.windows(22).any(|w| w == b"Sec-WebSocket-Accept: "));
        } else if !out.is_empty() {
            let (status, _) = check_http_response(&out, head_request);
            assert!(
                status == 200 || (400..500).contains(&status),
                "unexpected status {status}"
            );
        }
    });
});
