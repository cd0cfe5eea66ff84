//! Two nodes on one real redis-server: rooms, broadcasts and emitter pushes
//! reach the clients of both nodes, each exactly once.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Client, LIMIT, Node, RedisServer, eventually, ready, within};
use switchboard::redis::{Emitter, RedisOptions};
use switchboard::{Message, Topic};

async fn two_nodes(redis: &RedisServer) -> (Node, Node) {
    let a = Node::start(&redis.url(), RedisOptions::default().node_id("a")).await;
    let b = Node::start(&redis.url(), RedisOptions::default().node_id("b")).await;
    (a, b)
}

async fn emitter(redis: &RedisServer) -> Emitter {
    within(
        "emitter connect",
        Emitter::connect(&redis.url(), RedisOptions::default()),
    )
    .await
    .unwrap()
}

/// A WebSocket and a TCP client of node `a`, then of node `b`, each past
/// its `ready`.
async fn four_clients(a: &Node, b: &Node) -> [Client; 4] {
    [
        ready(a.ws_client().await).await,
        ready(a.tcp_client().await).await,
        ready(b.ws_client().await).await,
        ready(b.tcp_client().await).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_publish_reaches_every_node_exactly_once() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let emitter = emitter(&redis).await;
    let mut clients = four_clients(&a, &b).await;

    // From a WebSocket client on node a, then from a TCP client on node b.
    clients[0].send("room hello from a").await;
    for c in &mut clients {
        assert_eq!(c.recv_text().await, "hello from a");
    }
    clients[3].send("room hello from b").await;
    for c in &mut clients {
        assert_eq!(c.recv_text().await, "hello from b");
    }
    // And from a hub handle, outside any handler.
    b.hub.publish("lobby", "from b's hub").await.unwrap();
    for c in &mut clients {
        assert_eq!(c.recv_text().await, "from b's hub");
    }

    // The marker is published after everything above went through Redis,
    // so any duplicate (an echo not dropped, a double subscription) would
    // arrive before it.
    emitter.publish("lobby", "marker").await.unwrap();
    for c in &mut clients {
        assert_eq!(c.until("marker").await, Vec::<String>::new());
    }

    // A publish is counted when Redis answers it, which the publishing
    // handler may see after the clients above saw the message.
    eventually("both publishing handlers see Redis's answer", LIMIT, || {
        a.broker.status().published + b.broker.status().published >= 3
    })
    .await;
    let (sa, sb) = (a.broker.status(), b.broker.status());
    assert!(sa.connected && sb.connected);
    assert_eq!(sa.published, 1);
    assert_eq!(sb.published, 2);
    // Each node received the other's messages and the marker, not its own.
    assert_eq!(sa.received, 3);
    assert_eq!(sb.received, 2);
    assert_eq!(sa.invalid + sb.invalid, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_except_skips_only_the_sender() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let emitter = emitter(&redis).await;
    let [mut sender, mut others @ ..] = four_clients(&a, &b).await;

    sender.send("except not for the sender").await;
    for c in &mut others {
        assert_eq!(c.recv_text().await, "not for the sender");
    }
    emitter.broadcast("marker").await.unwrap();
    assert_eq!(sender.until("marker").await, Vec::<String>::new());
    for c in &mut others {
        assert_eq!(c.until("marker").await, Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_keep_their_kind_across_nodes() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let mut on_b = ready(b.ws_client().await).await;

    let payload = vec![0u8, 0xff, b'\n', 0x80, 7];
    a.hub
        .publish("lobby", Message::binary(payload.clone()))
        .await
        .unwrap();
    assert_eq!(on_b.recv().await, Message::binary(payload));
    a.hub.broadcast("plain text").await.unwrap();
    assert_eq!(on_b.recv().await, Message::text("plain text"));
    a.hub.broadcast(Message::binary(Vec::new())).await.unwrap();
    assert_eq!(on_b.recv().await, Message::binary(Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitter_reaches_rooms_users_nodes_and_everyone() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    let emitter = emitter(&redis).await;
    let [mut alice_on_a, mut bob_on_a, mut carol_on_b, mut alice_on_b] = four_clients(&a, &b).await;
    for alice in [&mut alice_on_a, &mut alice_on_b] {
        alice.send("user alice").await;
        assert_eq!(alice.recv_text().await, "joined user:alice");
    }

    // One user's connections on both nodes; Redis counts the nodes.
    assert_eq!(emitter.to_user("alice", "ding").await.unwrap(), 2);
    assert_eq!(emitter.to_user("nobody", "lost").await.unwrap(), 0);
    // The lobby everywhere, then every hub member everywhere.
    assert_eq!(emitter.publish("lobby", "to the lobby").await.unwrap(), 2);
    assert_eq!(emitter.broadcast("to everyone").await.unwrap(), 2);
    // One node only, through its node channel.
    let only_b = emitter
        .to_node(b.broker.node_id(), Topic::Room("lobby"), "only on b")
        .await
        .unwrap();
    assert_eq!(only_b, 1);
    emitter.broadcast("marker").await.unwrap();

    for alice in [&mut alice_on_a, &mut alice_on_b] {
        assert_eq!(alice.recv_text().await, "ding");
    }
    let common = ["to the lobby", "to everyone"];
    assert_eq!(alice_on_a.until("marker").await, common);
    assert_eq!(bob_on_a.until("marker").await, common);
    assert_eq!(
        alice_on_b.until("marker").await,
        ["to the lobby", "to everyone", "only on b"]
    );
    assert_eq!(
        carol_on_b.until("marker").await,
        ["to the lobby", "to everyone", "only on b"]
    );
    assert_eq!(emitter.status().publish_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_subscribe_only_to_rooms_with_local_members() {
    let redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis).await;
    assert_eq!(redis.numsub("switchboard:room:lobby").await, 0);
    assert_eq!(redis.numsub("switchboard:all").await, 2);
    assert_eq!(redis.numsub("switchboard:node:a").await, 1);

    let on_a = ready(a.ws_client().await).await;
    // join_room returned (and `ready` was sent) only after Redis confirmed.
    assert_eq!(redis.numsub("switchboard:room:lobby").await, 1);
    let on_b = ready(b.tcp_client().await).await;
    assert_eq!(redis.numsub("switchboard:room:lobby").await, 2);
    assert_eq!(a.broker.status().rooms, 1);

    // The last member leaving unsubscribes that node (after its on_close).
    on_b.close().await;
    let mut left = 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while left != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b did not unsubscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = redis.numsub("switchboard:room:lobby").await;
    }
    eventually("b forgets the room", Duration::from_secs(5), || {
        b.broker.status().rooms == 0
    })
    .await;
    on_a.close().await;
    eventually("a forgets the room", Duration::from_secs(5), || {
        a.broker.status().rooms == 0
    })
    .await;
}

#[tokio::test]
async fn connect_fails_clearly_without_redis() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let err = switchboard::redis::RedisBroker::connect(&url, RedisOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(err, switchboard::redis::Error::Connect { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to redis at {url}: ")),
        "{err}"
    );
    // The password stays out of the message.
    let with_password = format!("redis://app:s3cret@127.0.0.1:{port}/");
    let err = Emitter::connect(&with_password, RedisOptions::default())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot connect to redis at redis://app:***@127.0.0.1:{port}/: "
        )),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    let err = Emitter::connect("http://nope", RedisOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, switchboard::redis::Error::InvalidUrl { .. }),
        "{err}"
    );
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .starts_with("invalid redis url http://nope: "),
        "{err}"
    );
}

#[tokio::test]
async fn no_url_means_the_local_broker() {
    let broker = switchboard::redis::broker_from_url(None, RedisOptions::default())
        .await
        .unwrap();
    let hub = switchboard::Hub::with_broker(broker);
    assert_eq!(hub.broadcast("nobody here").await.unwrap(), 0);
}
