//! The accept loop survives running out of file descriptors.
//!
//! The server runs in a child process whose RLIMIT_NOFILE is lowered with
//! `ulimit -n`, so accepting fails with EMFILE while the test holds more
//! connections than the child has descriptors. Once some of them close, the
//! connections waiting in the backlog must be served.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use switchboard::tcp::TcpTransport;
use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::timeout;

const CHILD_ENV: &str = "SWITCHBOARD_ACCEPT_ERRORS_CHILD";
const FD_LIMIT: u32 = 64;
const CONNECTIONS: usize = 120;
const LIMIT: Duration = Duration::from_secs(30);

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

/// The server half, run by the test below in a child process.
#[tokio::test]
#[ignore = "child process of accept_errors_are_survived"]
async fn accept_errors_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let server = Server::builder()
        .bind("127.0.0.1:0", TcpTransport::lines(Echo))
        .start()
        .await
        .unwrap();
    println!("PORT {}", server.local_addr().port());
    // Report the first accept error, then run until the parent closes stdin.
    let reporter = tokio::spawn({
        let server = server.clone();
        async move {
            loop {
                let errors = server.stats().accept_errors;
                if errors > 0 {
                    println!("ACCEPT_ERRORS {errors}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1];
    let _ = tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await;
    reporter.abort();
    println!(
        "STATS accepted={} errors={}",
        server.stats().connections_total,
        server.stats().accept_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_are_survived() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" --exact accept_errors_child --ignored --nocapture --test-threads=1"))
        .arg(&exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = timeout(LIMIT, async {
        loop {
            let line = out
                .next_line()
                .await
                .unwrap()
                .expect("child printed its port");
            // libtest prints "test NAME ... " without a newline first.
            if let Some((_, p)) = line.split_once("PORT ") {
                return p.trim().parse().unwrap();
            }
        }
    })
    .await
    .expect("child started");

    // Each connection sends a line, waits for the echo, then holds on until
    // released. More connections than the child has descriptors.
    let (release_tx, release_rx) = watch::channel(false);
    let (served_tx, mut served_rx) = tokio::sync::mpsc::channel(CONNECTIONS);
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let mut release = release_rx.clone();
        let served = served_tx.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (r, mut w) = stream.into_split();
            w.write_all(format!("hello {i}\n").as_bytes())
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            assert_eq!(lines.next_line().await.unwrap(), Some(format!("hello {i}")));
            served.send(i).await.unwrap();
            while !*release.borrow_and_update() {
                release.changed().await.unwrap();
            }
        }));
    }
    drop(served_tx);

    // The child runs out of descriptors and says so...
    timeout(LIMIT, async {
        loop {
            let line = out
                .next_line()
                .await
                .unwrap()
                .expect("child reports accept errors");
            if line.contains("ACCEPT_ERRORS") {
                return;
            }
        }
    })
    .await
    .expect("accept failed in the child");
    // ...while some connections were served and the rest wait in the backlog.
    let first = served_rx
        .recv()
        .await
        .expect("some connections were served");
    let mut served = 1 + std::iter::from_fn(|| served_rx.try_recv().ok()).count();
    assert!(
        served < CONNECTIONS,
        "every connection was served despite the limit ({served})"
    );
    let _ = first;

    // Free the served connections: the backlog must now be served too.
    release_tx.send(true).unwrap();
    timeout(LIMIT, async {
        while served < CONNECTIONS {
            served_rx.recv().await.expect("all connections served");
            served += 1;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("only {served} of {CONNECTIONS} served after descriptors were freed")
    });
    for task in tasks {
        timeout(LIMIT, task).await.expect("client done").unwrap();
    }

    drop(child.stdin.take());
    let stats = timeout(LIMIT, async {
        loop {
            let line = out.next_line().await.unwrap().expect("child stats");
            if let Some((_, s)) = line.split_once("STATS ") {
                return s.to_owned();
            }
        }
    })
    .await
    .expect("child finished");
    assert!(
        stats.contains(&format!("accepted={CONNECTIONS}")),
        "{stats}"
    );
    assert!(child.wait().await.unwrap().success());
}
