//! Redis goes away and comes back: local delivery goes on, publishing fails
//! fast with a clear error, and delivery across nodes resumes by itself.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Client, Node, RedisServer, eventually, ready, within};
use switchboard::redis::{Emitter, RedisOptions};
use tokio::time::Instant;

/// How long Redis stays down in the long-outage test: longer than
/// redis-rs's own reconnect budget (a `ConnectionManager` gives up after
/// about six attempts, a few seconds), so a library-only reconnect would
/// not come back.
const LONG_OUTAGE: Duration = Duration::from_secs(10);

/// How soon after Redis is back delivery must resume, with no action.
const RESUME: Duration = Duration::from_secs(5);

fn options(node: &str) -> RedisOptions {
    RedisOptions::default().node_id(node)
}

/// The broker's error, found inside the core error a hub returns.
fn redis_error(err: &switchboard::Error) -> &switchboard::redis::Error {
    assert!(matches!(err, switchboard::Error::Broker(_)), "{err}");
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<switchboard::redis::Error>())
        .unwrap_or_else(|| panic!("not a redis error: {err}"))
}

/// Publishes probes from node `from` (named `label`) every 100 ms until
/// `to` receives one of them, within [`RESUME`] of `since`. Returns how
/// long it took. Probes of other nodes that `to` sees are skipped.
async fn resumes(from: &Node, label: &str, to: &mut Client, since: Instant) -> Duration {
    let prefix = format!("probe {label} ");
    let mut n = 0;
    loop {
        n += 1;
        let _ = from.hub.publish("lobby", format!("{prefix}{n}")).await;
        let round = Instant::now() + Duration::from_millis(100);
        while let Some(msg) = to
            .try_recv(round.saturating_duration_since(Instant::now()))
            .await
        {
            let text = msg.as_text().unwrap().to_owned();
            assert!(text.starts_with("probe "), "unexpected {text:?}");
            if text.starts_with(&prefix) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < RESUME,
            "delivery from {label} did not resume within {RESUME:?}"
        );
    }
}

/// The messages before `marker`, without the probes still in flight.
async fn until_without_probes(client: &mut Client, marker: &str) -> Vec<String> {
    let mut seen = client.until(marker).await;
    seen.retain(|t| !t.starts_with("probe "));
    seen
}

async fn outage(down_for: Duration) {
    let mut redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), options("a")).await;
    let b = Node::start(&redis.url(), options("b")).await;
    let emitter = within(
        "emitter",
        Emitter::connect(&redis.url(), RedisOptions::default()),
    )
    .await
    .unwrap();
    let mut a1 = ready(a.ws_client().await).await;
    let mut a2 = ready(a.tcp_client().await).await;
    let mut b1 = ready(b.ws_client().await).await;
    a1.send("room before").await;
    for c in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(c.recv_text().await, "before");
    }

    redis.kill().await;
    let went_down = Instant::now();
    eventually("a notices the outage", Duration::from_secs(5), || {
        !a.broker.status().connected
    })
    .await;
    eventually("b notices the outage", Duration::from_secs(5), || {
        !b.broker.status().connected
    })
    .await;

    // Local delivery goes on; the publish fails fast with a clear error.
    let started = Instant::now();
    let err = a.hub.publish("lobby", "during").await.unwrap_err();
    assert!(
        started.elapsed() <= RedisOptions::default().timeout * 2,
        "publish took {:?}",
        started.elapsed()
    );
    assert!(redis_error(&err).is_transient(), "{err}");
    assert_eq!(a1.recv_text().await, "during");
    assert_eq!(a2.recv_text().await, "during");
    // Through a handler too, and the connection stays up.
    a2.send("room during again").await;
    assert_eq!(a1.recv_text().await, "during again");
    assert_eq!(a2.recv_text().await, "during again");
    assert!(a2.recv_text().await.starts_with("broker-error "));
    assert!(
        emitter
            .publish("lobby", "lost")
            .await
            .unwrap_err()
            .is_transient()
    );
    // Joining a room works while Redis is down; the room is subscribed
    // when it is back.
    b1.send("join later").await;
    assert_eq!(b1.recv_text().await, "joined later");

    // Stay down, then come back on the same port.
    let remaining = down_for.saturating_sub(went_down.elapsed());
    tokio::time::sleep(remaining).await;
    assert!(!a.broker.status().connected && !b.broker.status().connected);
    redis.restart().await;
    let restarted = Instant::now();

    // Both directions, no manual action.
    let a_to_b = resumes(&a, "a", &mut b1, restarted).await;
    let b_to_a = resumes(&b, "b", &mut a1, restarted).await;
    eventually("both brokers report connected", RESUME, || {
        a.broker.status().connected && b.broker.status().connected
    })
    .await;
    eprintln!("down {down_for:?}: a->b resumed after {a_to_b:?}, b->a after {b_to_a:?}");

    // The emitter came back too; the room joined during the outage works.
    let deadline = restarted + RESUME;
    let reached = loop {
        match emitter.publish("later", "joined while down").await {
            Ok(nodes) => break nodes,
            Err(err) => assert!(
                Instant::now() < deadline,
                "emitter did not reconnect: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reached, 1);
    // Exactly once again: the marker follows everything published so far.
    // Through the hub handle, so that the publish has reached Redis when
    // it returns (a client sees its local copy before that).
    a.hub.publish("lobby", "after").await.unwrap();
    emitter.publish("lobby", "marker").await.unwrap();
    let states = || {
        format!(
            "a: {:?}, b: {:?}, emitter: {:?}",
            a.broker.status(),
            b.broker.status(),
            emitter.status()
        )
    };
    let seen = until_without_probes(&mut a1, "marker").await;
    assert_eq!(seen, ["after"], "{}", states());
    let seen = until_without_probes(&mut a2, "marker").await;
    assert_eq!(seen, ["after"], "{}", states());
    let seen = until_without_probes(&mut b1, "marker").await;
    assert_eq!(seen, ["joined while down", "after"], "{}", states());

    for s in [a.broker.status(), b.broker.status()] {
        assert!(s.connected, "{s:?}");
        assert!(s.reconnects >= 2, "{s:?}"); // both links of each node
        assert_eq!(s.invalid, 0, "{s:?}");
    }
    assert!(a.broker.status().publish_errors >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_resumes_by_itself() {
    outage(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_client_retry_budget_resumes_by_itself() {
    outage(LONG_OUTAGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_within_the_timeout_and_recovers() {
    let redis = RedisServer::start().await;
    let timeout = Duration::from_millis(500);
    let opts = |node: &str| RedisOptions::default().node_id(node).timeout(timeout);
    let a = Node::start(&redis.url(), opts("a")).await;
    let b = Node::start(&redis.url(), opts("b")).await;
    let mut a1 = ready(a.ws_client().await).await;
    let mut b1 = ready(b.tcp_client().await).await;

    // SIGSTOP: the connections stay open, nothing answers (a half-open
    // link, as after a network partition).
    redis.pause();
    let started = Instant::now();
    let err = a.hub.publish("lobby", "frozen").await.unwrap_err();
    let took = started.elapsed();
    // The timeout, and room for a loaded machine to wake up to it.
    assert!(took <= timeout * 2, "took {took:?}");
    assert!(
        matches!(redis_error(&err), switchboard::redis::Error::Timeout { .. }),
        "{err}"
    );
    assert_eq!(a1.recv_text().await, "frozen");
    // The watchdog notices the silent subscription links as well.
    eventually(
        "the watchdog drops frozen links",
        Duration::from_secs(5),
        || !a.broker.status().connected && !b.broker.status().connected,
    )
    .await;

    redis.resume();
    let resumed = Instant::now();
    let took = resumes(&a, "a", &mut b1, resumed).await;
    eprintln!("frozen: resumed after {took:?}");
    resumes(&b, "b", &mut a1, resumed).await;
}
