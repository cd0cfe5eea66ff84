//! What an idle connection costs in heap, counted by the allocator: the
//! server and its peers in this process, the peers on blocking sockets in a
//! thread of their own, which allocate nothing per connection. The runtime
//! has one thread, so once the peers are done (awaited from the runtime)
//! every server task has finished the poll that answered them, and the
//! heap is read between polls.
//!
//! The budgets are the figures of docs/performance.md ("Idle memory per
//! connection") with a little room: the heap a connection's task, state and
//! registrations request, whatever the allocator rounds them to. Figures
//! print as `FIGURE` lines (`--nocapture`).
#![cfg(all(feature = "ws", feature = "tcp"))]
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server};

/// Counts live heap bytes.
#[global_allocator]
static HEAP: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// Connections measured (after as many again to warm up).
const N: usize = 400;

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Peer {
    /// A WebSocket upgrade with `Host` only, then silence.
    Ws,
    /// The same with the headers a browser sends.
    WsBrowser,
    /// A WebSocket upgrade, one echoed message, then silence.
    WsAfterEcho,
    /// A TCP lines connection that sends nothing. (One that has sent keeps
    /// its transport's write buffer, up to 8 KiB: see docs/performance.md.)
    Tcp,
}

/// Opens `count` connections as `peer` and keeps them open.
fn open(addr: SocketAddr, peer: Peer, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut buf = [0u8; 512];
            if let Peer::Tcp = peer {
                return s;
            }
            let browser = if let Peer::WsBrowser = peer {
                "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
                 Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
                 Cache-Control: no-cache\r\nPragma: no-cache\r\nCookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n"
            } else {
                ""
            };
            write!(
                s,
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{browser}\r\n"
            )
            .unwrap();
            let mut got = 0;
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf[got..]).unwrap();
                assert!(n > 0, "the server closed during the upgrade");
                got += n;
            }
            assert!(buf.starts_with(b"HTTP/1.1 101"));
            if let Peer::WsAfterEcho = peer {
                // "hello", masked with a zero key; the answer is unmasked.
                s.write_all(&[0x81, 0x85, 0, 0, 0, 0, b'h', b'e', b'l', b'l', b'o'])
                    .unwrap();
                s.read_exact(&mut buf[..7]).unwrap();
                assert_eq!(&buf[..7], b"\x81\x05hello");
            }
            s
        })
        .collect()
}

/// Heap bytes per idle connection of `peer`'s kind.
async fn heap_per_connection(peer: Peer) -> usize {
    let echo = Arc::new(Echo);
    let builder = Server::builder().config(Config::default());
    let builder = match peer {
        Peer::Tcp => builder.bind("127.0.0.1:0", TcpTransport::lines(echo)),
        _ => builder.bind(
            "127.0.0.1:0",
            WsTransport::builder().fallback(echo).build().unwrap(),
        ),
    };
    let server = builder.start().await.unwrap();
    let addr = server.local_addrs()[0];
    // A TCP peer is connected once the kernel accepted it, before the
    // server's task exists: wait for the server to count them all. A task
    // counts its connection in its first poll, which has ended by the time
    // this task runs again (one thread).
    let settled = async |open: u64| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while server.stats().open_connections < open {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not take every connection"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let warm = tokio::task::spawn_blocking(move || open(addr, peer, N))
        .await
        .unwrap();
    settled(N as u64).await;
    let before = HEAP.allocated();
    let idle = tokio::task::spawn_blocking(move || open(addr, peer, N))
        .await
        .unwrap();
    settled(2 * N as u64).await;
    let after = HEAP.allocated();
    assert_eq!(server.stats().open_connections, 2 * N as u64);
    drop((warm, idle));
    server.shutdown().await;
    (after - before) / N
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_its_task_state_and_registration_only() {
    // (peer, its name, budget in bytes)
    for (peer, name, budget) in [
        (Peer::Ws, "ws", 1_500),
        (Peer::WsAfterEcho, "ws after one echo", 1_500),
        (Peer::WsBrowser, "ws with browser headers", 1_850),
        (Peer::Tcp, "tcp lines", 1_450),
    ] {
        let bytes = heap_per_connection(peer).await;
        println!("FIGURE idle heap per connection, {name}: {bytes} bytes");
        assert!(
            bytes <= budget,
            "an idle {name} connection holds {bytes} bytes of heap (budget {budget})"
        );
    }
}
