//! Micro-benchmarks of the hot paths, without sockets: the TCP codecs, the
//! per-connection send queue, and `Hub` fan-out to 10,000 in-memory
//! connections. (`benches/core.rs` of the facade has the driver echo.)
//!
//! Run: `cargo bench -p switchboard-bench --bench hot_paths`

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::tcp::Codec;
use switchboard::testing::TestServer;
use switchboard::{BoxError, Config, Connection, Hub, Message, MessageComponent};
use tokio_util::codec::{Decoder, Encoder};

/// Decoding a read buffer holding 64 messages, and encoding 64 messages.
fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(64));
    for size in [32usize, 1024] {
        let line = format!("{}\n", "x".repeat(size));
        let lines_input = BytesMut::from(line.repeat(64).as_bytes());
        group.bench_with_input(BenchmarkId::new("lines_decode", size), &size, |b, _| {
            b.iter(|| {
                let mut codec = Codec::lines();
                let mut buf = lines_input.clone();
                while let Some(msg) = codec.decode(&mut buf).unwrap() {
                    std::hint::black_box(msg);
                }
            })
        });
        let mut framed = BytesMut::new();
        for _ in 0..64 {
            framed.extend_from_slice(&(size as u32).to_be_bytes());
            framed.extend_from_slice(&vec![7u8; size]);
        }
        group.bench_with_input(BenchmarkId::new("length_decode", size), &size, |b, _| {
            b.iter(|| {
                let mut codec = Codec::length_delimited();
                let mut buf = framed.clone();
                while let Some(msg) = codec.decode(&mut buf).unwrap() {
                    std::hint::black_box(msg);
                }
            })
        });
        let msg = Message::text("x".repeat(size));
        let mut out = BytesMut::with_capacity(64 * (size + 8));
        group.bench_with_input(BenchmarkId::new("lines_encode", size), &size, |b, _| {
            b.iter(|| {
                let mut codec = Codec::lines();
                out.clear();
                for _ in 0..64 {
                    codec.encode(msg.clone(), &mut out).unwrap();
                }
                std::hint::black_box(&out);
            })
        });
        group.bench_with_input(BenchmarkId::new("length_encode", size), &size, |b, _| {
            b.iter(|| {
                let mut codec = Codec::length_delimited();
                out.clear();
                for _ in 0..64 {
                    codec.encode(msg.clone(), &mut out).unwrap();
                }
                std::hint::black_box(&out);
            })
        });
    }
    group.finish();
}

struct Members(Hub);

impl MessageComponent for Members {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.0.join(conn);
        Ok(())
    }
    async fn on_message(&self, _conn: &Connection, _msg: Message) -> Result<(), BoxError> {
        Ok(())
    }
}

fn big_queues() -> Config {
    Config::default()
        .queue_max_messages(1 << 16)
        .queue_max_bytes(1 << 30)
}

/// `Connection::send` of 256 messages into one connection's queue, and the
/// driver handing them all to the (in-memory) transport.
fn send_queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hub = Hub::new();
    let server = TestServer::with_config(Arc::new(Members(hub.clone())), big_queues());
    let mut client = rt.block_on(server.connect());
    let conn = rt.block_on(async {
        while hub.is_empty() {
            tokio::task::yield_now().await;
        }
        hub.connections().pop().unwrap()
    });
    let msg = Message::binary(vec![7u8; 64]);
    let mut group = c.benchmark_group("send_queue");
    group.throughput(Throughput::Elements(256));
    group.bench_function("send_256_then_drain", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..256 {
                    conn.send(msg.clone()).unwrap();
                }
                for _ in 0..256 {
                    client.recv().await.unwrap();
                }
            })
        })
    });
    group.bench_function("send_only", |b| {
        // The queue alone: sends against a connection whose task does not
        // run meanwhile (current_thread, not awaited), drained after.
        b.iter(|| {
            for _ in 0..256 {
                conn.send(msg.clone()).unwrap();
            }
            rt.block_on(async {
                for _ in 0..256 {
                    client.recv().await.unwrap();
                }
            })
        })
    });
    group.finish();
    rt.block_on(server.shutdown());
}

/// `Hub::broadcast` of one 64-byte message to 10,000 members whose clients
/// drain continuously: the per-recipient cost of fan-out.
fn hub_broadcast_10k(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = 10_000usize;
    let hub = Hub::new();
    let server = TestServer::with_config(Arc::new(Members(hub.clone())), big_queues());
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
    let mut group = c.benchmark_group("hub");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("broadcast_10000", |b| {
        b.to_async(&rt).iter(|| {
            let hub = hub.clone();
            let msg = msg.clone();
            async move { hub.broadcast(msg).await.unwrap() }
        });
    });
    group.finish();
    rt.block_on(server.shutdown());
}

criterion_group!(benches, codecs, send_queue, hub_broadcast_10k);
criterion_main!(benches);
