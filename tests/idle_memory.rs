//! What an idle connection costs in heap, counted by the allocator: the
//! server and its peers in this process, the peers on blocking sockets in a
//! thread of their own, which allocate nothing per connection. The runtime
//! has one thread, so once the peers are done (awaited from the runtime)
//! every server task has finished the poll that answered them, and the
//! heap is read between polls.
//!
//! The budgets are the figures of docs/performance.md ("Idle memory per
//! connection") with a little room: the heap a connection's task, state and
//! registrations take, counted as the blocks mimalloc hands out (its usable
//! size: a request of 232 bytes takes a 256-byte block, a 384-byte task
//! aligned to 128 a 512-byte one, a 256-byte task 256), since that, not
//! the request, is what the process holds. Figures print as `FIGURE`
//! lines (`--nocapture`), with the blocks each connection holds, by size.
#![cfg(all(feature = "ws", feature = "tcp"))]
#![allow(clippy::unwrap_used)]
// The counting allocator below: `GlobalAlloc` is an unsafe trait.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server};

/// mimalloc, counting the live bytes and live blocks it hands out, by
/// block size.
struct Counting;

/// Sizes counted one by one; larger ones count under the last.
const SIZES: usize = 4097;
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

fn count(block: usize, sign: isize) {
    LIVE_BYTES.fetch_add(sign * block as isize, Ordering::Relaxed);
    LIVE_BY_SIZE[block.min(SIZES - 1)].fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call goes to mimalloc with the caller's arguments; the
// counting touches only atomics and asks mimalloc for the block's size.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !ptr.is_null() {
            // SAFETY: a block mimalloc just handed out.
            count(unsafe { mimalloc::MiMalloc.usable_size(ptr) }, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: a live block of mimalloc's (the caller's contract).
        count(unsafe { mimalloc::MiMalloc.usable_size(ptr) }, -1);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

/// Live heap bytes.
fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Live allocations by size (the vector itself counts once taken).
fn live_by_size() -> Vec<isize> {
    LIVE_BY_SIZE
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect()
}

/// Connections measured (after as many again to warm up).
const N: usize = 400;

/// Echoes every message but `quiet`.
struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        if msg.as_text() != Some("quiet") {
            conn.send(msg)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Peer {
    /// A WebSocket upgrade with `Host` only, then silence.
    Ws,
    /// The same with the headers a browser sends.
    WsBrowser,
    /// A WebSocket upgrade, one echoed message, a ping (the wake after
    /// which a connection with nothing to send lets go of its storage for
    /// messages, as a keepalive tick does), then silence.
    WsAfterEcho,
    /// A TCP lines connection that sends nothing.
    Tcp,
    /// A TCP lines connection, one echoed line, then a line that gets no
    /// answer (the wake after which it lets go of its queue storage, as
    /// the ping above), then silence.
    TcpAfterEcho,
}

impl Peer {
    /// Messages each connection sends (a ping is none).
    fn messages(self) -> u64 {
        match self {
            Peer::Ws | Peer::WsBrowser | Peer::Tcp => 0,
            Peer::WsAfterEcho => 1,
            Peer::TcpAfterEcho => 2,
        }
    }
}

/// Opens connections as `peer` until `held` is full (its capacity,
/// allocated before the measurement) and keeps them open.
fn open(addr: SocketAddr, peer: Peer, mut held: Vec<TcpStream>) -> Vec<TcpStream> {
    let streams = (0..held.capacity() - held.len()).map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut buf = [0u8; 512];
            match peer {
                Peer::Tcp => return s,
                Peer::TcpAfterEcho => {
                    s.write_all(b"hello\n").unwrap();
                    s.read_exact(&mut buf[..6]).unwrap();
                    assert_eq!(&buf[..6], b"hello\n");
                    s.write_all(b"quiet\n").unwrap();
                    return s;
                }
                _ => {}
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
                s.write_all(&[0x89, 0x80, 0, 0, 0, 0]).unwrap();
                s.read_exact(&mut buf[..2]).unwrap();
                assert_eq!(&buf[..2], b"\x8a\x00");
            }
            s
        });
    held.extend(streams);
    held
}

/// Heap bytes per idle connection of `peer`'s kind, and the allocations
/// each holds as (size, how many).
async fn heap_per_connection(peer: Peer) -> (usize, Vec<(usize, usize)>) {
    let echo = Arc::new(Echo);
    let builder = Server::builder().config(Config::default());
    let builder = match peer {
        Peer::Tcp | Peer::TcpAfterEcho => builder.bind("127.0.0.1:0", TcpTransport::lines(echo)),
        _ => builder.bind(
            "127.0.0.1:0",
            WsTransport::builder().fallback(echo).build().unwrap(),
        ),
    };
    let server = builder.start().await.unwrap();
    let addr = server.local_addrs()[0];
    // A TCP peer is connected once the kernel accepted it, before the
    // server's task exists, and its last line may not have been read yet:
    // wait for the server to count every connection and message. A task
    // counts them in a poll that has ended by the time this task runs
    // again (one thread), and the same poll that counts a batch of input
    // lets go of what an idle connection does not need.
    let settled = async |open: u64| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let counted = |s: switchboard::Counters| {
            s.open_connections >= open && s.messages_in >= open * peer.messages()
        };
        while !counted(server.stats()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not count every connection and message"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let warm = Vec::with_capacity(N);
    let warm = tokio::task::spawn_blocking(move || open(addr, peer, warm))
        .await
        .unwrap();
    settled(N as u64).await;
    let idle = Vec::with_capacity(N);
    // The vectors of counts are taken outside the bytes compared.
    let before_by_size = live_by_size();
    let before = live_bytes();
    let idle = tokio::task::spawn_blocking(move || open(addr, peer, idle))
        .await
        .unwrap();
    settled(2 * N as u64).await;
    let after = live_bytes();
    let after_by_size = live_by_size();
    assert_eq!(server.stats().open_connections, 2 * N as u64);
    drop((warm, idle));
    server.shutdown().await;
    let per_connection = usize::try_from((after - before) / N as isize).unwrap_or(0);
    // Sizes that every connection holds (a few allocations of the runtime
    // and the server's registry grow now and then and are left out).
    let held = (0..SIZES)
        .filter_map(|size| {
            let n = (after_by_size[size] - before_by_size[size]) as f64 / N as f64;
            (n >= 0.9).then(|| (size, n.round() as usize))
        })
        .collect();
    (per_connection, held)
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_its_task_state_and_registration_only() {
    // (peer, its name, budget in bytes)
    for (peer, name, budget) in [
        // A task past tokio's 256-byte cell would add 256.
        (Peer::Ws, "ws", 1_300),
        (Peer::WsAfterEcho, "ws after one echo", 1_300),
        (Peer::WsBrowser, "ws with browser headers", 1_650),
        // The framing codec is in the task, a 512-byte cell.
        (Peer::Tcp, "tcp lines", 1_260),
        // A write buffer kept after the echo would add 1,024.
        (Peer::TcpAfterEcho, "tcp lines after one echo", 1_260),
    ] {
        let (bytes, held) = heap_per_connection(peer).await;
        println!("FIGURE idle heap per connection, {name}: {bytes} bytes");
        for (size, n) in held {
            println!("FIGURE   {n} allocation(s) of {size} bytes");
        }
        assert!(
            bytes <= budget,
            "an idle {name} connection holds {bytes} bytes of heap (budget {budget})"
        );
    }
}
