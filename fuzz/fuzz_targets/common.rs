//! Shared by the fuzz targets: a paused-clock runtime, an echo component
//! that records what it saw, and helpers to feed a connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_core::{BoxError, CloseReason, Connection, Message, MessageComponent, SendError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Virtual time allowed for one input: far beyond every timeout in play,
/// so hitting it means a hang (the clock is paused and jumps ahead when
/// everything waits, so this costs no real time).
pub const HANG: Duration = Duration::from_secs(3600);

pub fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// One runtime per input, so nothing leaks from one input to the next.
/// Timers only: the pipes are in memory and need no I/O driver.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// What the component saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub opens: usize,
    /// The messages received and echoed.
    pub messages: Vec<Message>,
    /// Messages received that the connection cannot carry back.
    pub refused: usize,
    pub errors: Vec<String>,
    pub closes: Vec<CloseReason>,
}

/// Echoes every message it can and records every lifecycle event.
#[derive(Clone, Default)]
pub struct Echo(pub Arc<Mutex<Seen>>);

impl Echo {
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().expect("not poisoned")
    }
}

impl MessageComponent for Echo {
    async fn on_open(&self, _conn: &Connection) -> Result<(), BoxError> {
        self.seen().opens += 1;
        Ok(())
    }

    /// Records and echoes each message the connection can carry; one it
    /// cannot (a line with a `\r` inside, on TCP lines) is refused by
    /// `send`, left out of the record and not echoed.
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        match conn.send(msg.clone()) {
            Ok(()) => self.seen().messages.push(msg),
            Err(SendError::Invalid { .. }) => self.seen().refused += 1,
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }

    async fn on_error(&self, conn: &Connection, err: switchboard_core::Error) {
        self.seen().errors.push(err.to_string());
        conn.close_with(switchboard_core::CloseCode::ERROR, "error");
    }

    async fn on_close(&self, _conn: &Connection, reason: CloseReason) {
        self.seen().closes.push(reason);
    }
}

/// Writes `data` in chunks of `chunk` bytes (at least 1), then ends the
/// stream; a peer that hung up early is fine.
pub async fn write_chunked<W: AsyncWrite + Unpin>(mut w: W, data: &[u8], chunk: usize) {
    for part in data.chunks(chunk.max(1)) {
        if w.write_all(part).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    let _ = w.shutdown().await;
}

pub async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = r.read_to_end(&mut out).await;
    out
}

/// Checks an HTTP response head at the start of `bytes`: its status, and
/// for a plain response a `Content-Length` that matches the body. Returns
/// the status and the length of the head.
pub fn check_http_response(bytes: &[u8], head_request: bool) -> (u16, usize) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete response head")
        + 4;
    let head = std::str::from_utf8(&bytes[..end]).expect("response head is UTF-8");
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    if status != 101 {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        let body = bytes.len() - end;
        // A HEAD request gets the length of the body it did not get, and
        // nothing after the head; any other request gets the whole body.
        let expected = if head_request { 0 } else { len };
        assert_eq!(
            body, expected,
            "Content-Length {len}, body {body}, HEAD request: {head_request}"
        );
    }
    (status, end)
}

/// One frame as a server sends it.
#[derive(Debug)]
pub struct ServerFrame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses the frames a server wrote; panics on a masked or malformed frame
/// (a server never masks). A trailing partial frame is a failure too: the
/// server wrote whole frames.
pub fn parse_server_frames(buf: &[u8]) -> Vec<ServerFrame> {
    parse_server_frames_with(buf, false)
}

/// [`parse_server_frames`], allowing RSV1 when permessage-deflate was
/// agreed (`deflate`); RSV2 and RSV3 never.
pub fn parse_server_frames_with(mut buf: &[u8], deflate: bool) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        assert!(buf.len() >= 2, "truncated frame header");
        let fin = buf[0] & 0x80 != 0;
        let rsv1 = buf[0] & 0x40 != 0;
        assert_eq!(buf[0] & 0x30, 0, "RSV2 or RSV3 set by the server");
        assert!(
            deflate || !rsv1,
            "RSV1 set by the server without permessage-deflate"
        );
        let opcode = buf[0] & 0x0F;
        assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
        let (len, start) = match buf[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (
                    usize::try_from(u64::from_be_bytes(n)).expect("length fits"),
                    10,
                )
            }
            n => (usize::from(n), 2),
        };
        assert!(buf.len() >= start + len, "truncated frame payload");
        frames.push(ServerFrame {
            fin,
            rsv1,
            opcode,
            payload: buf[start..start + len].to_vec(),
        });
        buf = &buf[start + len..];
    }
    frames
}
