#![allow(missing_docs, clippy::unwrap_used)]
//! Micro-benchmarks of the core's hot paths, over the in-memory test kit (no
//! sockets: this measures the code, not the kernel).
//!
//! Run: `cargo bench --bench core --features test-util`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::testing::TestServer;
use switchboard::{BoxError, Config, Connection, Hub, Message, MessageComponent};

struct Members(Hub);

impl MessageComponent for Members {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.0.join(conn);
        Ok(())
    }
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

/// `Hub::broadcast` of one 64-byte message to N connections whose clients
/// drain continuously: the per-recipient cost of fan-out.
fn hub_broadcast(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("hub_broadcast");
    group.measurement_time(Duration::from_secs(5));
    for n in [1_000usize, 10_000] {
        let hub = Hub::new();
        let config = Config::default()
            .queue_max_messages(1 << 16)
            .queue_max_bytes(1 << 30);
        let server = TestServer::with_config(Arc::new(Members(hub.clone())), config);
        rt.block_on(async {
            for _ in 0..n {
                let mut client = server.connect().await;
                tokio::spawn(async move { while client.recv().await.is_some() {} });
            }
            while hub.len() < n {
                tokio::task::yield_now().await;
            }
        });
        let msg = Message::binary(vec![7u8; 64]);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&rt).iter(|| {
                let hub = hub.clone();
                let msg = msg.clone();
                async move { hub.broadcast(msg).await.unwrap() }
            });
        });
        rt.block_on(server.shutdown());
    }
    group.finish();
}

/// Echo round trips through the connection driver: receive, handler, queue,
/// write, for one connection with 64 messages in flight.
fn echo_roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = TestServer::new(Members(Hub::new()));
    let mut client = rt.block_on(server.connect());
    let mut group = c.benchmark_group("driver");
    group.throughput(Throughput::Elements(64));
    group.bench_function("echo_64_in_flight", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..64u8 {
                    client.send(vec![i]).await;
                }
                for _ in 0..64 {
                    client.recv().await.unwrap();
                }
            })
        });
    });
    group.finish();
}

criterion_group!(benches, hub_broadcast, echo_roundtrip);
criterion_main!(benches);
