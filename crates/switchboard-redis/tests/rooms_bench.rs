//! Figures for `docs/performance.md` (section "Rooms with history"): the
//! cost of a published message with history (in memory, on Redis) against
//! a plain publish, and the time to recover 1,000 messages.
//!
//! Ignored by default (it measures, it does not check); bounded in count
//! and time, loopback only:
//!
//! ```sh
//! cargo test -p switchboard-redis --release --test rooms_bench -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{RedisServer, within};
use switchboard::redis::{RedisBroker, RedisOptions};
use switchboard::rooms::{History, Join};
use switchboard::testing::{TestClient, TestServer};
use switchboard::{BoxError, Config, Connection, Hub, Message, MessageComponent, TransportInfo};
use tokio::time::Instant;

const SUBSCRIBERS: usize = 100;
const MESSAGES: usize = 10_000;
const PUBLISHERS: usize = 8;
const RECOVER: usize = 1_000;
const RECOVERIES: usize = 20;

/// Joins room `bench` (from the query's `since`, if any).
struct Member {
    hub: Hub,
}

impl MessageComponent for Member {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let mut join = Join::new();
        if let Some(since) = conn.transport().query_param("since") {
            join = join.since(since.parse()?);
        }
        self.hub.join_room_with("bench", conn, join).await?;
        conn.send("joined")?;
        Ok(())
    }

    async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
        Ok(())
    }
}

fn server(hub: &Hub) -> TestServer {
    let config = Config::default()
        .queue_max_messages(1 << 16)
        .queue_max_bytes(64 << 20);
    TestServer::with_config(Member { hub: hub.clone() }, config)
}

/// A process's CPU time (user + system), from /proc/{pid}/stat.
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // CLK_TCK is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

async fn joined(mut client: TestClient) -> TestClient {
    loop {
        let msg = within("join", client.recv()).await.unwrap();
        if msg.as_text() == Some("joined") {
            return client;
        }
    }
}

/// `MESSAGES` messages from `PUBLISHERS` tasks to `SUBSCRIBERS` members;
/// returns (this process's CPU µs per message, redis-server's, msg/s).
async fn publish_cost(hub: &Hub, recorded: bool, redis_pid: Option<&str>) -> (f64, f64, f64) {
    let server = server(hub);
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        clients.push(joined(server.connect().await).await);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..MESSAGES {
                    within("a delivery", client.recv()).await.unwrap();
                }
            })
        })
        .collect();
    let (cpu0, redis0) = (cpu("self"), redis_pid.map(cpu).unwrap_or_default());
    let start = Instant::now();
    let per_task = MESSAGES / PUBLISHERS;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|task| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let text = format!("{:>32}", task * per_task + i);
                    if recorded {
                        hub.append("bench", text).await.unwrap();
                    } else {
                        hub.publish("bench", text).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in publishers.into_iter().chain(readers) {
        within("the run", task).await.unwrap();
    }
    let wall = start.elapsed();
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / MESSAGES as f64;
    let redis = redis_pid.map_or(0.0, |pid| per_msg(cpu(pid) - redis0));
    server.shutdown().await;
    (
        per_msg(cpu("self") - cpu0),
        redis,
        MESSAGES as f64 / wall.as_secs_f64(),
    )
}

/// Median time for a connection joined from a position to receive the
/// `RECOVER` messages after it.
async fn recovery_time(hub: &Hub) -> Duration {
    let first = hub.append("bench", "first").await.unwrap();
    let mut last = first;
    for i in 0..RECOVER {
        last = hub.append("bench", format!("{i:>32}")).await.unwrap();
    }
    assert_eq!(last.seq() - first.seq(), RECOVER as u64);
    let server = server(hub);
    let mut times = Vec::new();
    for _ in 0..RECOVERIES {
        let info = TransportInfo::new("memory").with_query(format!("since={first}"));
        let start = Instant::now();
        let mut client = server.connect_with(info).await;
        for _ in 0..RECOVER {
            within("a replayed message", client.recv()).await.unwrap();
        }
        times.push(start.elapsed());
        assert_eq!(client.recv().await.unwrap().as_text(), Some("joined"));
    }
    server.shutdown().await;
    times.sort();
    times[times.len() / 2]
}

fn history() -> History {
    History::new(2 * RECOVER, Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures; run with --ignored --nocapture for docs/performance.md"]
async fn rooms_history_figures() {
    let redis = RedisServer::start().await;
    let redis_pid = redis.pid().to_string();
    let connect = || async {
        let options = RedisOptions::default().timeout(Duration::from_secs(5));
        RedisBroker::connect(&redis.url(), options).await.unwrap()
    };

    let mut rows = Vec::new();
    let memory = || Hub::builder().history(history()).build();
    rows.push((
        "publish, one node",
        publish_cost(&memory(), false, None).await,
    ));
    rows.push((
        "append, history in memory",
        publish_cost(&memory(), true, None).await,
    ));
    let on_redis = Hub::builder()
        .broker(connect().await)
        .history(history())
        .build();
    rows.push((
        "publish, Redis broker",
        publish_cost(&on_redis, false, Some(&redis_pid)).await,
    ));
    let on_redis = Hub::builder()
        .broker(connect().await)
        .history(history())
        .build();
    rows.push((
        "append, history on Redis",
        publish_cost(&on_redis, true, Some(&redis_pid)).await,
    ));

    let version = redis.command(&["INFO", "server"]).await;
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .to_owned();
    println!(
        "\n{MESSAGES} messages of 32 bytes from {PUBLISHERS} tasks to {SUBSCRIBERS} members \
         (test-kit connections) of one room, history {} messages, redis-server {version}\n",
        2 * RECOVER
    );
    println!("| path | process CPU per message | redis-server CPU per message | messages/s |");
    println!("|---|---|---|---|");
    for (what, (cpu, redis, rate)) in rows {
        println!("| {what} | {cpu:.1} µs | {redis:.1} µs | {rate:.0} |");
    }

    let in_memory = recovery_time(&memory()).await;
    let bench_redis = Hub::builder()
        .broker(connect().await)
        .history(history())
        .build();
    // A fresh room on Redis: the runs above used `bench` too.
    redis.command(&["FLUSHALL"]).await;
    let on_redis = recovery_time(&bench_redis).await;
    println!(
        "\nRecovering {RECOVER} messages (join from a position to the last replayed message, median of {RECOVERIES}):\n"
    );
    println!("| store | time |");
    println!("|---|---|");
    println!("| in memory | {:.2} ms |", in_memory.as_secs_f64() * 1e3);
    println!("| Redis | {:.2} ms |", on_redis.as_secs_f64() * 1e3);
}
