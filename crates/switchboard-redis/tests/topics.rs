//! The topics line protocol (the `pubsub` example's component) over real
//! WebSocket and TCP sockets, on one node and across two.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use support::{Client, Node, RedisServer, within};
use switchboard::redis::{Emitter, RedisBroker, RedisOptions, Topics};
use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{DynComponent, Hub, Server, ServerHandle};

/// A single node on the in-process broker: (server, ws addr, tcp addr).
async fn local_node(topics: Topics) -> (ServerHandle, SocketAddr, SocketAddr) {
    let topics: Arc<dyn DynComponent> = Arc::new(topics);
    let ws = WsTransport::builder()
        .fallback(topics.clone())
        .build()
        .unwrap();
    let server = Server::builder()
        .bind("127.0.0.1:0", ws)
        .bind("127.0.0.1:0", TcpTransport::lines(topics))
        .start()
        .await
        .unwrap();
    let addrs = server.local_addrs().to_vec();
    (server, addrs[0], addrs[1])
}

async fn redis_node(redis: &RedisServer, id: &str) -> Node {
    let broker = within(
        "broker",
        RedisBroker::connect(&redis.url(), RedisOptions::default().node_id(id)),
    )
    .await
    .unwrap();
    let hub = Hub::with_broker(broker.clone());
    let topics = Arc::new(Topics::new(hub.clone()));
    Node::serve(hub, broker, topics).await
}

async fn cmd(client: &mut Client, line: &str) -> String {
    client.send(line).await;
    client.recv_text().await
}

/// Sends `{verb} {topic}` and checks that the answer is `OK {verb} {topic}`.
async fn ok(client: &mut Client, verb: &str, topic: &str) {
    let line = format!("{verb} {topic}");
    assert_eq!(cmd(client, &line).await, format!("OK {line}"));
}

/// `from`, subscribed to `topic`, publishes `text` there: it gets the
/// message itself, then the `OK`; `to` gets the message too.
async fn publish(from: &mut Client, to: &mut Client, topic: &str, text: &str) {
    from.send(&format!("PUB {topic} {text}")).await;
    let msg = format!("MSG {topic} {text}");
    assert_eq!(from.recv_text().await, msg);
    assert_eq!(from.recv_text().await, format!("OK PUB {topic}"));
    assert_eq!(to.recv_text().await, msg);
}

#[tokio::test]
async fn subscribe_publish_unsubscribe_on_one_node() {
    let (server, ws, tcp) = local_node(Topics::new(Hub::new())).await;
    let mut nc = Client::tcp(tcp).await;
    let mut browser = Client::ws(ws).await;

    ok(&mut nc, "SUB", "news").await;
    assert_eq!(cmd(&mut browser, "sub news").await, "OK SUB news");
    ok(&mut browser, "SUB", "sport").await;
    // Subscribing twice is harmless.
    ok(&mut nc, "SUB", "news").await;

    publish(&mut nc, &mut browser, "news", "rain, then sun").await;

    // Only subscribers of that topic.
    assert_eq!(cmd(&mut nc, "PUB sport 2-1").await, "OK PUB sport");
    assert_eq!(browser.recv_text().await, "MSG sport 2-1");

    ok(&mut browser, "UNSUB", "news").await;
    assert_eq!(cmd(&mut nc, "PUB news only nc").await, "MSG news only nc");
    assert_eq!(nc.recv_text().await, "OK PUB news");
    // The browser got nothing more: its next message is this reply.
    assert_eq!(cmd(&mut browser, "PUB sport end").await, "MSG sport end");
    assert_eq!(browser.recv_text().await, "OK PUB sport");

    // Gone before the shutdown, which would otherwise wait for their
    // closing handshakes.
    drop((nc, browser));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_commands_get_err_and_the_connection_stays() {
    let (server, ws, tcp) = local_node(Topics::new(Hub::new()).max_subscriptions(2)).await;
    let mut nc = Client::tcp(tcp).await;
    for (line, reason) in [
        ("HELLO", "ERR unknown command HELLO"),
        ("SUB", "ERR missing topic"),
        ("SUB two words", "ERR a topic has no spaces"),
        ("PUB news", "ERR usage: PUB <topic> <text>"),
        ("", "ERR empty command"),
    ] {
        let reply = cmd(&mut nc, line).await;
        assert!(reply.starts_with(reason), "{line:?} -> {reply:?}");
    }
    let long = format!("SUB {}", "x".repeat(129));
    assert!(cmd(&mut nc, &long).await.starts_with("ERR topic longer"));

    ok(&mut nc, "SUB", "a").await;
    ok(&mut nc, "SUB", "b").await;
    assert_eq!(
        cmd(&mut nc, "SUB c").await,
        "ERR too many subscriptions (at most 2)"
    );
    ok(&mut nc, "UNSUB", "a").await;
    ok(&mut nc, "SUB", "c").await;

    let mut browser = Client::ws(ws).await;
    browser.send_binary(vec![1, 2, 3]).await;
    assert!(browser.recv_text().await.starts_with("ERR binary"));
    // A line break inside a WebSocket message would split a TCP line.
    assert!(
        cmd(&mut browser, "PUB c one\ntwo")
            .await
            .starts_with("ERR the text must be one line")
    );
    assert_eq!(cmd(&mut browser, "PUB c fine").await, "OK PUB c");
    assert_eq!(nc.recv_text().await, "MSG c fine");

    drop((nc, browser));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_span_two_nodes_and_take_emitter_pushes() {
    let redis = RedisServer::start().await;
    let a = redis_node(&redis, "a").await;
    let b = redis_node(&redis, "b").await;
    let mut nc_on_a = a.tcp_client().await;
    let mut browser_on_b = b.ws_client().await;
    let mut other_on_b = b.tcp_client().await;

    ok(&mut nc_on_a, "SUB", "news").await;
    ok(&mut browser_on_b, "SUB", "news").await;
    ok(&mut other_on_b, "SUB", "sport").await;

    // A browser on b publishes; nc on a gets it once.
    publish(&mut browser_on_b, &mut nc_on_a, "news", "from b").await;

    // A job without sockets pushes into the topic.
    let emitter = within(
        "emitter",
        Emitter::connect(&redis.url(), RedisOptions::default()),
    )
    .await
    .unwrap();
    let nodes = emitter
        .publish(&Topics::room("news"), Topics::message("news", "from a job"))
        .await
        .unwrap();
    assert_eq!(nodes, 2);
    assert_eq!(nc_on_a.recv_text().await, "MSG news from a job");
    assert_eq!(browser_on_b.recv_text().await, "MSG news from a job");

    // Exactly once: a marker published after everything else is the next
    // thing each subscriber sees (a duplicate would come before it).
    emitter
        .publish(&Topics::room("news"), Topics::message("news", "marker"))
        .await
        .unwrap();
    assert_eq!(nc_on_a.recv_text().await, "MSG news marker");
    assert_eq!(browser_on_b.recv_text().await, "MSG news marker");

    // Not to other topics.
    assert_eq!(cmd(&mut nc_on_a, "PUB sport goal").await, "OK PUB sport");
    assert_eq!(other_on_b.recv_text().await, "MSG sport goal");
    ok(&mut browser_on_b, "UNSUB", "news").await;
    ok(&mut other_on_b, "UNSUB", "sport").await;
}
