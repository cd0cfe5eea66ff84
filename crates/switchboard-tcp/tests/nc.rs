//! A real `nc` (Debian's netcat-openbsd) as the peer. These tests fail when
//! `nc` is missing: `scripts/test.sh` installs it.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;

use switchboard::tcp::TcpTransport;
use switchboard::{CloseReason, Config, Message};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use support::{echo_server, within};

/// Runs `nc ARGS 127.0.0.1 PORT` with `input` on its standard input and
/// returns what it printed.
async fn nc(args: &[&str], port: u16, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("nc")
        .args(args)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run nc ({err}); install netcat-openbsd (scripts/test.sh does)")
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = within("nc exits", child.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "nc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn nc_lines_are_echoed() {
    let (server, mut events) = echo_server(TcpTransport::lines, Config::default()).await;

    // -N: shut down the write side at the end of input (a half-close); nc
    // then prints what comes back until the server closes.
    let out = nc(
        &["-N"],
        server.local_addr().port(),
        "hello\nwörld\nno newline".as_bytes(),
    )
    .await;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "hello\nwörld\nno newline\n"
    );

    let conn = events.opened().await;
    let (msgs, reason) = events.close_of(conn.id()).await;
    assert_eq!(
        msgs,
        vec![
            Message::text("hello"),
            Message::text("wörld"),
            Message::text("no newline")
        ]
    );
    assert_eq!(reason, CloseReason::Peer(None));
    server.shutdown().await;
}

#[tokio::test]
async fn nc_crlf_lines_are_stripped() {
    let (server, mut events) = echo_server(TcpTransport::lines, Config::default()).await;

    // -C sends "\r\n" line ends, as telnet does.
    let out = nc(&["-C", "-N"], server.local_addr().port(), b"one\ntwo\n").await;
    assert_eq!(out, b"one\ntwo\n");

    let conn = events.opened().await;
    let (msgs, _) = events.close_of(conn.id()).await;
    assert_eq!(msgs, vec![Message::text("one"), Message::text("two")]);
    server.shutdown().await;
}

#[tokio::test]
async fn nc_sees_the_server_close_on_a_bad_line() {
    let config = Config::default().max_frame_size(8);
    let (server, mut events) = echo_server(TcpTransport::lines, config).await;

    // The first line is echoed; the second is too long and ends the
    // connection, so nc exits without waiting for the rest of its input.
    let out = nc(
        &["-N"],
        server.local_addr().port(),
        b"short\nmuch too long\nunseen\n",
    )
    .await;
    assert_eq!(out, b"short\n");

    let conn = events.opened().await;
    assert_eq!(events.message(conn.id()).await, Message::text("short"));
    let (seen, _) = events.error_then_close(conn.id()).await;
    assert_eq!(seen.code, Some(1009));
    server.shutdown().await;
}
