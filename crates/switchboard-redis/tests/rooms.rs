//! Presence, history and recovery shared by two nodes on one real
//! redis-server (connections are the test kit's, in memory; Redis is real).
#![allow(clippy::unwrap_used)]

#[path = "../../switchboard-core/tests/common/rooms.rs"]
mod rooms_common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use rooms_common::{Lines, Room, next};
use support::{LIMIT, RedisServer, within};
use switchboard::redis::{RedisBroker, RedisOptions};
use switchboard::rooms::{History, Position};
use switchboard::testing::{TestClient, TestServer};
use switchboard::{Config, Hub};

struct Node {
    hub: Hub,
    server: TestServer,
    broker: RedisBroker,
}

impl Node {
    async fn start(redis: &RedisServer, options: RedisOptions) -> Node {
        let history = History::new(20_000, Duration::from_secs(600));
        Node::with_history(redis, options, history).await
    }

    async fn with_history(redis: &RedisServer, options: RedisOptions, history: History) -> Node {
        let broker = within("connect", RedisBroker::connect(&redis.url(), options))
            .await
            .unwrap();
        let hub = Hub::builder()
            .broker(broker.clone())
            .history(history)
            .events(Lines)
            .build();
        let config = Config::default()
            .queue_max_messages(30_000)
            .queue_max_bytes(32 << 20);
        let server = TestServer::with_config(Room { hub: hub.clone() }, config);
        Node {
            hub,
            server,
            broker,
        }
    }

    async fn join(&self, query: &str) -> TestClient {
        rooms_common::join(&self.server, query).await
    }
}

/// ada joins on node `a`, then bob on node `b`: each past its welcome,
/// ada past bob's join.
async fn ada_on_a_bob_on_b(a: &Node, b: &Node) -> (TestClient, TestClient) {
    let mut ada = a.join("name=ada").await;
    assert_eq!(next(&mut ada).await, "welcome ada - none");
    let mut bob = b.join("name=bob").await;
    assert_eq!(next(&mut bob).await, "welcome ada,bob - none");
    assert_eq!(next(&mut ada).await, "join bob");
    (ada, bob)
}

fn options(node: &str) -> RedisOptions {
    RedisOptions::default()
        .node_id(node)
        .node_ttl(Duration::from_millis(800))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, options("a")).await;
    let b = Node::start(&redis, options("b")).await;

    let (mut ada, mut bob) = ada_on_a_bob_on_b(&a, &b).await;
    let mut ada2 = b.join("name=ada").await;
    assert_eq!(next(&mut ada2).await, "welcome ada,ada,bob - none");
    assert_eq!(next(&mut ada).await, "join ada");
    assert_eq!(next(&mut bob).await, "join ada");

    bob.close().await;
    assert_eq!(next(&mut ada).await, "leave bob");
    assert_eq!(next(&mut ada2).await, "leave bob");
    let mut names = a.hub.presence("r").await.unwrap().names;
    names.sort();
    assert_eq!(names, [Arc::<str>::from("ada"), Arc::from("ada")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_shared_and_resumes_on_the_other_node() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, options("a")).await;
    let b = Node::start(&redis, options("b")).await;

    let mut writer = a.join("").await;
    assert!(next(&mut writer).await.starts_with("welcome"));
    let mut lines = Vec::new();
    for i in 1..=5 {
        writer.send(format!("m{i}")).await;
        lines.push(next(&mut writer).await);
    }
    let positions: Vec<Position> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        positions.iter().map(Position::seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );

    // The same messages, with the same positions, on the other node.
    let mut reader = b.join(&format!("since={}", positions[1])).await;
    assert_eq!(
        next(&mut reader).await,
        format!("welcome  {} 3", positions[4])
    );
    for line in &lines[2..] {
        assert_eq!(&next(&mut reader).await, line);
    }
    // Then live, from either node, in the same order everywhere.
    writer.send("m6").await;
    let live = next(&mut reader).await;
    assert!(live.ends_with(" m6"));
    assert_eq!(next(&mut writer).await, live);

    // A position that cannot be resumed.
    let other_epoch = Position::new(positions[0].epoch() ^ 1, 1);
    let mut lost = b.join(&format!("since={other_epoch}")).await;
    assert!(next(&mut lost).await.ends_with(" Epoch"));
    let ahead = Position::new(positions[0].epoch(), 99);
    let mut lost = b.join(&format!("since={ahead}")).await;
    assert!(next(&mut lost).await.ends_with(" Unknown"));
}

/// Clients join node b from the first position while node a appends
/// 10,000 messages: each sees every later message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam_across_nodes() {
    const TOTAL: u64 = 10_000;
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, options("a")).await;
    let b = Node::start(&redis, options("b")).await;

    const JOINS: [u64; 6] = [500, 2_000, 3_500, 5_000, 6_500, 8_000];
    let first = a.hub.append("r", "0").await.unwrap();
    let (progress, mut appended) = tokio::sync::watch::channel(0);
    let publisher = tokio::spawn({
        let (hub, b_hub) = (a.hub.clone(), b.hub.clone());
        async move {
            for i in 1..TOTAL {
                if i == TOTAL - 1 {
                    // Every join ends before the last message: each one's
                    // seam is inside the run.
                    support::eventually("all joined", LIMIT, || b_hub.room_len("r") == JOINS.len())
                        .await;
                }
                hub.append("r", i.to_string()).await.unwrap();
                progress.send_replace(i);
            }
        }
    });
    let mut clients = Vec::new();
    for at in JOINS {
        within("publisher progress", appended.wait_for(|n| *n >= at))
            .await
            .unwrap();
        clients.push(b.join(&format!("since={first}")).await);
    }
    within("publisher", publisher).await.unwrap();
    let mut replayed = Vec::new();
    for mut client in clients {
        let welcome = next(&mut client).await;
        replayed.push(welcome.rsplit(' ').next().unwrap().parse::<u64>().unwrap());
        for seq in 2..=TOTAL {
            let line = next(&mut client).await;
            let (position, text) = line.split_once(' ').unwrap();
            let position: Position = position.parse().unwrap();
            assert_eq!(
                (position.seq(), text),
                (seq, (seq - 1).to_string().as_str())
            );
        }
        assert!(client.try_recv().is_none());
    }
    // Each join met the publisher mid-run: replay and live traffic both
    // had a share.
    for (n, at) in replayed.iter().zip(JOINS) {
        assert!(*n >= at && *n < TOTAL - 1, "replayed {n} after {at}");
    }
}

/// A process that stopped beating (its entries planted as a crashed one
/// leaves them; it has the node id of a live one, as a restarted node
/// does) loses its members, each announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, options("a")).await;
    let b = Node::start(&redis, options("b")).await;
    let (mut ada, mut bob) = ada_on_a_bob_on_b(&a, &b).await;

    // A process of node `a` (as a restarted one would be) whose heartbeat
    // was due long ago, with one member in `r`.
    for cmd in [
        &["ZADD", "switchboard:nodes", "1", "a~dead"][..],
        &["HSET", "switchboard:presence:r", "7@a~dead", "casper"],
        &["HINCRBY", "switchboard:presence:r", "#version", "1"],
        &["SADD", "switchboard:members-of:a~dead", "1:r7@a~dead"],
    ] {
        redis.command(cmd).await;
    }
    assert_eq!(next(&mut ada).await, "leave casper");
    assert_eq!(next(&mut bob).await, "leave casper");
    let mut names = b.hub.presence("r").await.unwrap().names;
    names.sort();
    assert_eq!(names, [Arc::<str>::from("ada"), Arc::from("bob")]);
    let gone = redis
        .command(&["EXISTS", "switchboard:members-of:a~dead"])
        .await;
    assert_eq!(gone.trim(), ":0");
    // Announced once: the next thing either sees is a later event.
    let mut carl = b.join("name=carl").await;
    assert!(next(&mut carl).await.starts_with("welcome ada,bob,carl"));
    assert_eq!(next(&mut ada).await, "join carl");
    assert_eq!(next(&mut bob).await, "join carl");
}

/// Redis restarts empty: old positions are refused (another epoch), the
/// rooms carry on, and each node adds its members again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_refuses_old_positions_and_carries_on() {
    let mut redis = RedisServer::start().await;
    let a = Node::start(&redis, options("a")).await;
    let mut ada = a.join("name=ada").await;
    assert_eq!(next(&mut ada).await, "welcome ada - none");
    let before = a.hub.append("r", "before").await.unwrap();
    assert_eq!(next(&mut ada).await, format!("{before} before"));

    redis.kill().await;
    assert!(a.hub.append("r", "lost").await.is_err());
    redis.restart().await;
    support::eventually("the broker reconnects", LIMIT, || {
        a.broker.status().connected
    })
    .await;

    // The node's members come back with its next heartbeat.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while a
        .hub
        .presence("r")
        .await
        .map_or(true, |m| m.names.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ada never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut late = a.join(&format!("name=bob&since={before}")).await;
    assert_eq!(next(&mut late).await, "welcome ada,bob - Epoch");
    let after = a.hub.append("r", "after").await.unwrap();
    assert_ne!(after.epoch(), before.epoch());
    assert_eq!(next(&mut late).await, format!("{after} after"));
}

/// The stream keeps `max_len` messages and none older than `max_age`; a
/// position before what is kept is refused, the oldest kept one resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_by_count_and_by_age() {
    let redis = RedisServer::start().await;
    // By count, with an age this test never reaches.
    let history = History::new(3, Duration::from_secs(600));
    let a = Node::with_history(&redis, options("a"), history).await;
    let mut positions = Vec::new();
    for i in 1..=5 {
        positions.push(a.hub.append("r", format!("m{i}")).await.unwrap());
    }
    let len = redis.command(&["XLEN", "switchboard:history:r"]).await;
    assert_eq!(len.trim(), ":3");
    let mut client = a.join(&format!("since={}", positions[0])).await;
    assert!(next(&mut client).await.ends_with(" Trimmed"));
    let mut client = a.join(&format!("since={}", positions[1])).await;
    assert!(next(&mut client).await.ends_with(" 3"));

    // By age: once max_age has passed, the next append trims the old ones;
    // the newest position before it still resumes (nothing after it is
    // lost), an older one is refused. What follows the fresh append holds
    // while it is younger than max_age: a round that took longer (a
    // stalled machine) is repeated, on keys of its own.
    let max_age = Duration::from_millis(300);
    for round in 0.. {
        assert!(round < 5, "five rounds each took longer than {max_age:?}");
        let prefix = format!("age{round}");
        let options = options("b").prefix(prefix.as_str());
        let b = Node::with_history(&redis, options, History::new(10, max_age)).await;
        let mut old = Vec::new();
        for i in 0..2 {
            old.push(b.hub.append("r", format!("old{i}")).await.unwrap());
        }
        let waited = tokio::time::Instant::now();
        while waited.elapsed() < max_age * 2 {
            tokio::time::sleep(max_age).await;
        }
        let appended = tokio::time::Instant::now();
        let fresh = b.hub.append("r", "fresh").await.unwrap();
        let history_key = format!("{prefix}:history:r");
        let len = redis.command(&["XLEN", &history_key]).await;
        let mut resumed = b.join(&format!("since={}", old[1])).await;
        let welcome = next(&mut resumed).await;
        let mut refused = b.join(&format!("since={}", old[0])).await;
        let refusal = next(&mut refused).await;
        // The stream expires with the history's age.
        let ttl = redis.command(&["PTTL", &history_key]).await;
        if appended.elapsed() >= max_age {
            continue;
        }
        assert_eq!(len.trim(), ":1");
        assert_eq!(welcome, format!("welcome  {fresh} 1"));
        assert_eq!(next(&mut resumed).await, format!("{fresh} fresh"));
        assert!(refusal.ends_with(" Trimmed"), "{refusal}");
        let ttl: i64 = ttl.trim()[1..].parse().unwrap();
        assert!(ttl > 0 && ttl <= max_age.as_millis() as i64, "{ttl}");
        // The epoch lasts longer.
        let meta_key = format!("{prefix}:meta:r");
        let ttl: i64 = redis.command(&["PTTL", &meta_key]).await.trim()[1..]
            .parse()
            .unwrap();
        assert!(ttl > 86_000_000, "{ttl}");
        break;
    }
}

/// A node whose members Redis lost in part (as when another node started
/// reaping it during a partition) adds them back and announces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_reaped_adds_its_members_back() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, options("a")).await;
    let b = Node::start(&redis, options("b")).await;
    let (_ada, mut bob) = ada_on_a_bob_on_b(&a, &b).await;

    // What a reaper does to node a's instance: its member gone (announced),
    // `known` deleted, `reaped` set.
    let keys = redis.command(&["KEYS", "switchboard:members-of:a~*"]).await;
    let set = keys
        .lines()
        .find(|l| l.starts_with("switchboard:"))
        .unwrap()
        .to_owned();
    let instance = set.trim_start_matches("switchboard:members-of:").to_owned();
    let entry = redis.command(&["SRANDMEMBER", &set]).await;
    let entry = entry.lines().nth(1).unwrap().to_owned();
    let field = entry.trim_start_matches("1:r").to_owned();
    for cmd in [
        &["HDEL", "switchboard:presence:r", &field][..],
        &["SREM", &set, &entry],
        &["DEL", &format!("switchboard:known:{instance}")],
        &["SET", &format!("switchboard:reaped:{instance}"), "1"],
    ] {
        redis.command(cmd).await;
    }
    // Node a's next heartbeat notices and adds ada back, announced.
    assert_eq!(next(&mut bob).await, "join ada");
    let mut names = b.hub.presence("r").await.unwrap().names;
    names.sort();
    assert_eq!(names, [Arc::<str>::from("ada"), Arc::from("bob")]);
    // The instance is marked as whole again right after.
    let known = format!("switchboard:known:{instance}");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while redis.command(&["EXISTS", &known]).await.trim() != ":1" {
        assert!(tokio::time::Instant::now() < deadline, "{known} never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
