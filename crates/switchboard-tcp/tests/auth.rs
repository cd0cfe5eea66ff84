//! Authentication by the first line on raw TCP: the component hears only
//! of peers that identified themselves; the others are closed.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use switchboard::tcp::TcpTransport;
use switchboard::{Authenticated, CloseCode, CloseFrame, Config, Connection, Message};
use tokio::io::AsyncWriteExt;

use support::{Event, Recorder, dial, read_n, read_to_end, recorder, serve};

#[derive(Clone, Debug, PartialEq)]
struct User(String);

const TIMEOUT: Duration = Duration::from_millis(300);

/// The first line is `LOGIN name secret`; a refused peer is told why in a
/// line before its connection ends.
fn login(inner: Recorder) -> Authenticated<Recorder, impl switchboard::Authenticator> {
    Authenticated::new(inner, |conn: Connection, first: Message| async move {
        match first.as_text().unwrap_or("").split(' ').collect::<Vec<_>>()[..] {
            ["LOGIN", name, "secret"] => Ok(User(name.to_owned())),
            _ => {
                let _ = conn.send("ERR send LOGIN name secret first");
                Err(CloseFrame::new(CloseCode::POLICY, "not logged in"))
            }
        }
    })
    .timeout(TIMEOUT)
}

#[tokio::test]
async fn only_peers_that_log_in_reach_the_component() {
    let (inner, mut events) = recorder(true);
    let server = serve(TcpTransport::lines(login(inner)), Config::default()).await;
    let addr = server.local_addr();

    // Refused: told why, then the end of the stream; what it sent after
    // its first line reaches no one.
    let mut eve = dial(addr).await;
    eve.write_all(b"hello\nLOGIN eve secret\nmore\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_end(&mut eve).await,
        b"ERR send LOGIN name secret first\n"
    );
    drop(eve);

    // Accepted, with a line sent right behind the login: on_open first
    // (with the identity), then that line.
    let mut ann = dial(addr).await;
    ann.write_all(b"LOGIN ann secret\nhi\n").await.unwrap();
    let conn = events.opened().await;
    assert_eq!(conn.extension::<User>(), Some(User("ann".into())));
    assert_eq!(events.message(conn.id()).await, Message::text("hi"));
    assert_eq!(read_n(&mut ann, 3).await, b"hi\n");

    // The refused peer never counted: the first event was ann's open, and
    // ann's close is the only close.
    drop(ann);
    let (messages, _) = events.close_of(conn.id()).await;
    assert!(messages.is_empty());
    assert_eq!(server.stats().connections_total, 2);
    server.shutdown().await;
    match events.try_next() {
        None => {}
        Some(Event::Open(c)) => panic!("a second on_open, for {}", c.id()),
        Some(other) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_sends_nothing_is_closed_at_the_timeout() {
    let (inner, mut events) = recorder(true);
    let server = serve(TcpTransport::lines(login(inner)), Config::default()).await;
    let dialing = Instant::now();
    let mut silent = dial(server.local_addr()).await;
    assert_eq!(read_to_end(&mut silent).await, b"");
    let waited = dialing.elapsed();
    assert!(waited >= TIMEOUT, "closed after {waited:?}");
    drop(silent);
    server.shutdown().await;
    assert!(events.try_next().is_none(), "the component heard of it");
}
