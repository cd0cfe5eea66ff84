//! Presence, history and recovery on one node (the hub's in-memory store).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::rooms::{LIMIT, Lines, Room, join, next};
use switchboard::rooms::{History, Join, Position, Unrecoverable};
use switchboard::testing::TestServer;
use switchboard::{BoxError, Config, Connection, Hub, Message, MessageComponent};
use tokio::time::timeout;

fn server(history: History) -> (TestServer, Hub) {
    let hub = Hub::builder().history(history).events(Lines).build();
    // Room for a whole replay in each client's queue.
    let config = Config::default()
        .queue_max_messages(20_000)
        .queue_max_bytes(16 << 20);
    let server = TestServer::with_config(Room { hub: hub.clone() }, config);
    (server, hub)
}

fn history(max_len: usize) -> History {
    History::new(max_len, Duration::from_secs(600))
}

#[tokio::test]
async fn members_see_each_other_join_and_leave() {
    let (server, hub) = server(history(10));
    let mut ada = join(&server, "name=ada").await;
    assert_eq!(next(&mut ada).await, "welcome ada - none");
    let mut bob = join(&server, "name=bob").await;
    assert_eq!(next(&mut bob).await, "welcome ada,bob - none");
    assert_eq!(next(&mut ada).await, "join bob");

    bob.close().await;
    assert_eq!(next(&mut ada).await, "leave bob");
    let members = hub.presence("r").await.unwrap();
    assert_eq!(members.names, [std::sync::Arc::<str>::from("ada")]);
    // ada never saw her own join; nothing else is queued for her.
    assert!(ada.try_recv().is_none());
}

#[tokio::test]
async fn a_position_resumes_exactly_after_it() {
    let (server, hub) = server(history(10));
    let positions: Vec<Position> = {
        let mut out = Vec::new();
        for i in 1..=5 {
            out.push(hub.append("r", format!("m{i}")).await.unwrap());
        }
        out
    };
    assert!(positions.windows(2).all(|w| w[1].is_after(&w[0])));

    let mut late = join(&server, &format!("since={}", positions[1])).await;
    assert_eq!(
        next(&mut late).await,
        format!("welcome  {} 3", positions[4])
    );
    for (i, position) in positions.iter().enumerate().skip(2) {
        assert_eq!(next(&mut late).await, format!("{position} m{}", i + 1));
    }
    // Then live: its own message comes back with the next position.
    late.send("m6").await;
    let sixth = next(&mut late).await;
    assert!(sixth.ends_with(" m6"), "{sixth}");
    let p6: Position = sixth.split(' ').next().unwrap().parse().unwrap();
    assert_eq!((p6.epoch(), p6.seq()), (positions[0].epoch(), 6));

    // From the newest position: nothing to replay.
    let mut current = join(&server, &format!("since={p6}")).await;
    assert_eq!(next(&mut current).await, format!("welcome  {p6} 0"));
}

#[tokio::test]
async fn positions_that_cannot_be_resumed_are_refused() {
    let (server, hub) = server(history(3));
    let mut positions = Vec::new();
    for i in 1..=6 {
        positions.push(hub.append("r", format!("m{i}")).await.unwrap());
    }
    let mut newest = positions[5];
    for why in ["Trimmed", "Unknown", "Epoch"] {
        let since = match why {
            "Trimmed" => positions[1],
            "Unknown" => Position::new(newest.epoch(), newest.seq() + 1),
            _ => Position::new(newest.epoch().wrapping_add(1), 2),
        };
        let mut client = join(&server, &format!("since={since}")).await;
        assert_eq!(next(&mut client).await, format!("welcome  {newest} {why}"));
        // Nothing replayed: the next thing it gets is live.
        newest = hub.append("r", "live").await.unwrap();
        assert_eq!(next(&mut client).await, format!("{newest} live"));
    }
    // Three messages are kept (seq 7 to 9): resuming from seq 6 replays
    // them all, from seq 5 would miss seq 6.
    let kept = Position::new(newest.epoch(), 6);
    let mut client = join(&server, &format!("since={kept}")).await;
    assert_eq!(next(&mut client).await, format!("welcome  {newest} 3"));
    let gone = Position::new(newest.epoch(), 5);
    let mut client = join(&server, &format!("since={gone}")).await;
    assert_eq!(
        next(&mut client).await,
        format!("welcome  {newest} Trimmed")
    );
    assert_eq!(
        Unrecoverable::Trimmed.to_string(),
        "messages after the position are no longer kept"
    );
}

/// Joins from a position while another task appends: every client sees
/// each message after its position exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam() {
    const TOTAL: u64 = 10_000;
    let (server, hub) = server(history(TOTAL as usize));
    let first = hub.append("r", "0").await.unwrap();
    let publisher = tokio::spawn({
        let hub = hub.clone();
        async move {
            for i in 1..TOTAL {
                hub.append("r", i.to_string()).await.unwrap();
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(join(&server, &format!("since={first}")).await);
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    for mut client in clients {
        assert!(next(&mut client).await.starts_with("welcome"));
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
}

#[tokio::test]
async fn joining_twice_or_after_close_is_an_error() {
    let hub = Hub::new();
    let server = TestServer::new(Twice { hub: hub.clone() });
    let mut client = server.connect().await;
    assert_eq!(
        next(&mut client).await,
        "room r: the connection is already in this room"
    );
}

struct Twice {
    hub: Hub,
}

impl MessageComponent for Twice {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join_room_with("r", conn, Join::new()).await?;
        let err = self
            .hub
            .join_room_with("r", conn, Join::new())
            .await
            .unwrap_err();
        conn.send(err.to_string())?;
        Ok(())
    }

    async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Messages older than `max_age` go: the newest position before them
/// still resumes, an older one is refused.
#[tokio::test]
async fn history_is_trimmed_by_age() {
    let max_age = Duration::from_millis(200);
    // What follows the fresh append holds while it is younger than
    // max_age: a round that took longer (a stalled machine) is repeated,
    // on a hub of its own.
    for round in 0.. {
        assert!(round < 5, "five rounds each took longer than {max_age:?}");
        let (server, hub) = server(History::new(10, max_age));
        let mut old = Vec::new();
        for i in 0..3 {
            old.push(hub.append("r", format!("old{i}")).await.unwrap());
        }
        let waited = tokio::time::Instant::now();
        while waited.elapsed() < max_age * 2 {
            tokio::time::sleep(max_age).await;
        }
        let appended = tokio::time::Instant::now();
        let fresh = hub.append("r", "fresh").await.unwrap();
        let mut resumed = join(&server, &format!("since={}", old[2])).await;
        let welcome = next(&mut resumed).await;
        let mut refused = join(&server, &format!("since={}", old[1])).await;
        let refusal = next(&mut refused).await;
        if appended.elapsed() >= max_age {
            continue;
        }
        assert_eq!(welcome, format!("welcome  {fresh} 1"));
        assert_eq!(next(&mut resumed).await, format!("{fresh} fresh"));
        assert_eq!(refusal, format!("welcome  {fresh} Trimmed"));
        break;
    }
}

/// A shared store whose live traffic the test plays by hand: it can lag
/// behind the history (as a pub/sub link can) or skip a message (as a
/// dropped link does).
#[derive(Default)]
struct Scripted {
    local: std::sync::OnceLock<switchboard::LocalDelivery>,
}

struct ScriptedBroker(std::sync::Arc<Scripted>);

#[switchboard::async_trait]
impl switchboard::Broker for ScriptedBroker {
    fn attach(&self, local: switchboard::LocalDelivery) {
        self.0.local.set(local).unwrap();
    }
    async fn publish(
        &self,
        _: switchboard::Topic<'_>,
        _: Message,
        _: Option<switchboard::ConnectionId>,
    ) -> switchboard::Result<()> {
        Ok(())
    }
    fn room_store(&self) -> Option<std::sync::Arc<dyn switchboard::rooms::RoomStore>> {
        Some(self.0.clone())
    }
}

const EPOCH: u64 = 7;

fn at(seq: u64) -> Position {
    Position::new(EPOCH, seq)
}

#[switchboard::async_trait]
impl switchboard::rooms::RoomStore for Scripted {
    async fn append(&self, _: &str, _: Message, _: &History) -> switchboard::Result<Position> {
        Err(switchboard::Error::Config(
            "the test appends by hand".into(),
        ))
    }
    async fn replay(
        &self,
        _: &str,
        since: Option<Position>,
        _: &History,
    ) -> switchboard::Result<switchboard::rooms::Replay> {
        // The history holds 1..=5; live traffic has delivered up to 2.
        let after = since.map_or(5, |p| p.seq());
        Ok(switchboard::rooms::Replay {
            newest: Some(at(5)),
            entries: Ok((after + 1..=5)
                .map(|s| (at(s), Message::text(format!("m{s}"))))
                .collect()),
        })
    }
    async fn add_member(&self, _: &str, _: &switchboard::rooms::Member) -> switchboard::Result<()> {
        Ok(())
    }
    async fn remove_member(
        &self,
        _: &str,
        _: &switchboard::rooms::Member,
    ) -> switchboard::Result<()> {
        Ok(())
    }
    async fn members(&self, _: &str) -> switchboard::Result<switchboard::rooms::Members> {
        Ok(switchboard::rooms::Members {
            names: vec!["ada".into()],
            version: 3,
        })
    }
}

/// Live traffic that lags behind the history read at the join is skipped
/// up to what the replay covered, once; a message that skips a position
/// closes the members who missed one (1012) so that they resume.
#[tokio::test]
async fn late_live_traffic_is_not_doubled_and_lost_traffic_closes() {
    let scripted = std::sync::Arc::new(Scripted::default());
    let hub = Hub::builder()
        .broker(ScriptedBroker(scripted.clone()))
        .events(Lines)
        .build();
    let server = TestServer::new(Room { hub: hub.clone() });
    let mut ada = join(&server, &format!("name=ada&since={}", at(1))).await;
    assert_eq!(next(&mut ada).await, format!("welcome ada {} 4", at(5)));
    for seq in 2..=5 {
        assert_eq!(next(&mut ada).await, format!("{} m{seq}", at(seq)));
    }
    let local = scripted.local.get().unwrap();
    // The live link catches up: 3..=5 again, then 6; a presence change the
    // member list had (version 3), then a new one.
    for seq in 3..=6 {
        local.deliver_entry("r", at(seq), &Message::text(format!("m{seq}")));
    }
    local.deliver_presence("r", true, "old", None, 3);
    local.deliver_presence("r", true, "bob", None, 4);
    assert_eq!(next(&mut ada).await, format!("{} m6", at(6)));
    assert_eq!(next(&mut ada).await, "join bob");
    assert!(ada.try_recv().is_none());

    // 7 is lost on the way: 8 cannot be delivered as if nothing happened.
    local.deliver_entry("r", at(8), &Message::text("m8"));
    let frame = timeout(LIMIT, ada.closed()).await.unwrap().unwrap();
    assert_eq!(frame.code.0, 1012);
}

/// A new epoch (the store lost its history) starts at seq 1: its first
/// message is delivered to a member that just joined, not taken for a
/// loss; a later skip in it is.
#[tokio::test]
async fn a_new_epoch_is_not_a_loss() {
    let scripted = std::sync::Arc::new(Scripted::default());
    let hub = Hub::builder()
        .broker(ScriptedBroker(scripted.clone()))
        .events(Lines)
        .build();
    let server = TestServer::new(Room { hub: hub.clone() });
    let mut ada = join(&server, "name=ada").await;
    assert_eq!(next(&mut ada).await, format!("welcome ada {} none", at(5)));
    let local = scripted.local.get().unwrap();
    let next_epoch = |seq| Position::new(EPOCH + 1, seq);
    local.deliver_entry("r", next_epoch(1), &Message::text("n1"));
    assert_eq!(next(&mut ada).await, format!("{} n1", next_epoch(1)));
    local.deliver_entry("r", next_epoch(2), &Message::text("n2"));
    assert_eq!(next(&mut ada).await, format!("{} n2", next_epoch(2)));
    local.deliver_entry("r", next_epoch(4), &Message::text("n4"));
    let frame = timeout(LIMIT, ada.closed()).await.unwrap().unwrap();
    assert_eq!(frame.code.0, 1012);
}
