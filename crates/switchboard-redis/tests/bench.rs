//! Figures for `docs/performance.md` (section "Redis scale-out"): delivery
//! latency and throughput from a hub to a TCP client on another node
//! through Redis, next to the same on one node with the in-process broker.
//!
//! Ignored by default (it measures, it does not check); bounded in count
//! and time, loopback only:
//!
//! ```sh
//! cargo test -p switchboard-redis --release --test bench -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Client, RedisServer, RoomChat, within};
use switchboard::redis::{RedisBroker, RedisOptions};
use switchboard::tcp::{Codec, TcpTransport};
use switchboard::{Config, Hub, Message, Server, ServerHandle};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const WARMUP: usize = 200;
const LATENCY_MESSAGES: usize = 2_000;
const THROUGHPUT_MESSAGES: usize = 20_000;
const PUBLISHERS: usize = 8;
/// Payload bytes per message (text).
const PAYLOAD: usize = 32;
/// No run may take longer than this.
const BOUND: Duration = Duration::from_secs(60);

/// A TCP-lines node running the test component on `hub`, with queues large
/// enough that a burst does not trip the slow-consumer policy.
async fn serve(hub: Hub) -> (ServerHandle, SocketAddr) {
    let config = Config::default()
        .queue_max_messages(1 << 16)
        .queue_max_bytes(64 << 20);
    let server = Server::builder()
        .config(config)
        .bind(
            "127.0.0.1:0",
            TcpTransport::new(RoomChat { hub }, Codec::lines()),
        )
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    (server, addr)
}

fn payload(seq: usize) -> Message {
    let mut text = format!("{seq}:");
    text.extend(std::iter::repeat_n('x', PAYLOAD.saturating_sub(text.len())));
    Message::text(text)
}

/// Reads the client's lines in a task and reports (sequence, arrival).
fn timestamps(mut client: Client) -> mpsc::UnboundedReceiver<(usize, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let text = client.recv_text().await;
            let at = Instant::now();
            let seq = text.split(':').next().unwrap().parse().unwrap();
            if tx.send((seq, at)).is_err() {
                return;
            }
        }
    });
    rx
}

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
    per_sec: f64,
}

/// One message in flight at a time for latency, then `PUBLISHERS` tasks
/// publishing as fast as their awaits allow for throughput.
async fn measure(publisher: Hub, client: Client) -> Figures {
    let mut arrivals = timestamps(client);
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for seq in 0..WARMUP + LATENCY_MESSAGES {
        let sent = Instant::now();
        publisher.publish("lobby", payload(seq)).await.unwrap();
        let (got, at) = within("a latency sample", arrivals.recv()).await.unwrap();
        assert_eq!(got, seq);
        if seq >= WARMUP {
            latencies.push(at - sent);
        }
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];

    let start = Instant::now();
    let per_task = THROUGHPUT_MESSAGES / PUBLISHERS;
    for task in 0..PUBLISHERS {
        let hub = publisher.clone();
        tokio::spawn(async move {
            for i in 0..per_task {
                let seq = task * per_task + i;
                hub.publish("lobby", payload(seq)).await.unwrap();
            }
        });
    }
    let mut last = start;
    let counted = timeout(BOUND, async {
        for _ in 0..per_task * PUBLISHERS {
            last = arrivals.recv().await.unwrap().1;
        }
    })
    .await;
    assert!(counted.is_ok(), "throughput run exceeded {BOUND:?}");
    Figures {
        p50: pct(50),
        p99: pct(99),
        max: latencies[latencies.len() - 1],
        per_sec: (per_task * PUBLISHERS) as f64 / (last - start).as_secs_f64(),
    }
}

fn row(what: &str, f: &Figures) -> String {
    format!(
        "| {what} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} msg/s |",
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6,
        f.max.as_secs_f64() * 1e6,
        f.per_sec
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures; run with --ignored --nocapture for docs/performance.md"]
async fn redis_scale_out_figures() {
    // In-process: publisher hub and client on one node.
    let local = Hub::new();
    let (local_server, local_addr) = serve(local.clone()).await;
    let client = support::ready(Client::tcp(local_addr).await).await;
    let in_process = measure(local, client).await;
    drop(local_server);

    // Across nodes: publish on node a's hub, the client is on node b.
    let redis = RedisServer::start().await;
    let broker_a = RedisBroker::connect(&redis.url(), RedisOptions::default().node_id("a"))
        .await
        .unwrap();
    let broker_b = RedisBroker::connect(&redis.url(), RedisOptions::default().node_id("b"))
        .await
        .unwrap();
    let hub_a = Hub::with_broker(broker_a.clone());
    let hub_b = Hub::with_broker(broker_b.clone());
    let (_server_a, _) = serve(hub_a.clone()).await;
    let (_server_b, addr_b) = serve(hub_b).await;
    let client = support::ready(Client::tcp(addr_b).await).await;
    let cross = measure(hub_a, client).await;
    assert_eq!(broker_a.status().publish_errors, 0);
    assert_eq!(
        broker_b.status().received as usize,
        WARMUP + LATENCY_MESSAGES + THROUGHPUT_MESSAGES / PUBLISHERS * PUBLISHERS
    );

    let version = redis.command(&["INFO", "server"]).await;
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .to_owned();
    println!(
        "\n{LATENCY_MESSAGES} latency samples (one in flight, after {WARMUP} warm-up), \
         {THROUGHPUT_MESSAGES} messages from {PUBLISHERS} publishing tasks, \
         {PAYLOAD}-byte text payloads, TCP-lines client, redis-server {version}\n"
    );
    println!("| path | p50 | p99 | max | throughput |");
    println!("|---|---|---|---|---|");
    println!("{}", row("in-process (one node, LocalBroker)", &in_process));
    println!("{}", row("across nodes through Redis", &cross));
}
