//! A room component and room events that tests can read, shared by the
//! core's room tests and the Redis ones (`#[path]`-included there).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use switchboard::rooms::{Join, Joined, Position, PresenceEvent, Recovery, RoomEvents};
use switchboard::testing::{TestClient, TestServer};
use switchboard::{BoxError, Connection, Hub, Message, MessageComponent, TransportInfo};
use tokio::time::timeout;

pub const LIMIT: Duration = Duration::from_secs(10);

/// Room events as lines a test can read: `welcome <members> <position>
/// <recovery>` (members sorted), `<position> <text>`, `join <name>`,
/// `leave <name>`.
pub struct Lines;

impl RoomEvents for Lines {
    fn welcome(&self, joined: &Joined) -> Option<Message> {
        let mut members: Vec<_> = joined.members.iter().map(|m| m.to_string()).collect();
        members.sort();
        let position = joined.position.map_or("-".to_owned(), |p| p.to_string());
        let recovery = match joined.recovery {
            Recovery::NotAsked => "none".to_owned(),
            Recovery::Replayed(n) => n.to_string(),
            Recovery::Impossible(why) => format!("{why:?}"),
        };
        Some(format!("welcome {} {position} {recovery}", members.join(",")).into())
    }

    fn message(&self, _: &str, position: Position, msg: &Message) -> Message {
        format!("{position} {}", msg.as_text().unwrap()).into()
    }

    fn presence(&self, event: &PresenceEvent) -> Option<Message> {
        let verb = if event.joined { "join" } else { "leave" };
        Some(format!("{verb} {}", event.name).into())
    }
}

/// Joins room `r` with the `name` and `since` of the query; appends every
/// message it receives.
pub struct Room {
    pub hub: Hub,
}

impl MessageComponent for Room {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let info = conn.transport();
        let mut join = Join::new();
        if let Some(name) = info.query_param("name") {
            join = join.name(name.as_ref());
        }
        if let Some(since) = info.query_param("since") {
            join = join.since(since.parse()?);
        }
        self.hub.join_room_with("r", conn, join).await?;
        Ok(())
    }

    async fn on_message(&self, _: &Connection, msg: Message) -> Result<(), BoxError> {
        self.hub.append("r", msg).await?;
        Ok(())
    }
}

/// A test connection presenting `query`, as a WebSocket client would.
pub async fn join(server: &TestServer, query: &str) -> TestClient {
    let info = TransportInfo::new("memory")
        .with_path("/")
        .with_query(query.to_owned());
    server.connect_with(info).await
}

/// The next message, as text (within [`LIMIT`]).
pub async fn next(client: &mut TestClient) -> String {
    let msg = timeout(LIMIT, client.recv()).await.unwrap().unwrap();
    msg.as_text().unwrap().to_owned()
}
