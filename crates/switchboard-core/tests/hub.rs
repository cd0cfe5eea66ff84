//! Hub, rooms and the broker seam.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::testing::{TestClient, TestServer};
use switchboard::{
    BoxError, Broker, Connection, ConnectionId, Hub, LocalDelivery, Message, MessageComponent,
    Result, Topic, async_trait,
};
use tokio::sync::Notify;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// Records what the hub asks of its broker (an unsubscribe once it has
/// been let through, when it waits for that), and can inject messages from
/// "another node" through the delivery handle it was given.
#[derive(Default)]
struct Recording {
    calls: Mutex<Vec<String>>,
    local: Mutex<Option<LocalDelivery>>,
    /// Unsubscribes wait for `proceed` before they complete.
    hold_unsubscribe: bool,
    unsubscribing: Notify,
    proceed: Notify,
}

#[derive(Clone, Default)]
struct RecordingBroker(Arc<Recording>);

impl RecordingBroker {
    /// A broker whose unsubscribes signal `unsubscribing` and then wait
    /// for `proceed`.
    fn held_unsubscribe() -> Self {
        RecordingBroker(Arc::new(Recording {
            hold_unsubscribe: true,
            ..Recording::default()
        }))
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl std::ops::Deref for RecordingBroker {
    type Target = Recording;
    fn deref(&self) -> &Recording {
        &self.0
    }
}

#[async_trait]
impl Broker for RecordingBroker {
    fn attach(&self, local: LocalDelivery) {
        *self.local.lock().unwrap() = Some(local);
    }
    async fn subscribe(&self, room: &str) -> Result<()> {
        self.calls.lock().unwrap().push(format!("sub {room}"));
        Ok(())
    }
    async fn unsubscribe(&self, room: &str) -> Result<()> {
        self.unsubscribing.notify_one();
        if self.hold_unsubscribe {
            self.proceed.notified().await;
        }
        self.calls.lock().unwrap().push(format!("unsub {room}"));
        Ok(())
    }
    async fn publish(&self, topic: Topic<'_>, msg: Message, _: Option<ConnectionId>) -> Result<()> {
        let text = msg.as_text().unwrap_or("?");
        self.calls
            .lock()
            .unwrap()
            .push(format!("pub {topic:?} {text}"));
        Ok(())
    }
}

/// "join R", "leave R", "say R TEXT", "all TEXT", "others TEXT".
struct Rooms {
    hub: Hub,
}

impl MessageComponent for Rooms {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let text = msg.as_text().ok_or("text only")?;
        let (cmd, rest) = text.split_once(' ').unwrap_or((text, ""));
        match cmd {
            "join" => self.hub.join_room(rest, conn).await?,
            "leave" => self.hub.leave_room(rest, conn.id()).await?,
            "say" => {
                let (room, words) = rest.split_once(' ').ok_or("say ROOM TEXT")?;
                self.hub.publish(room, words.to_owned()).await?;
            }
            "others" => {
                self.hub
                    .broadcast_except(rest.to_owned(), conn.id())
                    .await?;
            }
            "all" => {
                self.hub.broadcast(rest.to_owned()).await?;
            }
            _ => return Err("unknown command".into()),
        }
        conn.send("ok")?;
        Ok(())
    }
}

async fn cmd(client: &mut TestClient, text: &str) {
    assert!(client.send(text.to_owned()).await);
    expect(client, "ok").await;
}

async fn expect(client: &mut TestClient, text: &str) {
    let got = timeout(LIMIT, client.recv()).await.expect("in time");
    assert_eq!(got, Some(Message::text(text.to_owned())));
}

/// A hub on `broker`, served by [`Rooms`], and two clients of it.
async fn serve(broker: RecordingBroker) -> (Hub, TestServer, TestClient, TestClient) {
    let hub = Hub::with_broker(broker);
    let server = TestServer::new(Rooms { hub: hub.clone() });
    let (a, b) = (server.connect().await, server.connect().await);
    (hub, server, a, b)
}

#[tokio::test]
async fn rooms_broadcast_and_automatic_leave() {
    let broker = RecordingBroker::default();
    let (hub, server, mut a, mut b) = serve(broker.clone()).await;
    let mut c = server.connect().await;

    cmd(&mut a, "join red").await;
    cmd(&mut b, "join red").await;
    cmd(&mut c, "join blue").await;
    assert_eq!(hub.room_len("red"), 2);
    assert_eq!(hub.len(), 3);
    let mut red: Vec<_> = hub
        .room_members("red")
        .iter()
        .map(|m| m.peer_addr())
        .collect();
    red.sort();
    let mut expected = vec![a.local_addr(), b.local_addr()];
    expected.sort();
    assert_eq!(red, expected);
    assert!(hub.room_members("nowhere").is_empty());

    // A room message reaches its members only.
    assert!(c.send("say red hello").await);
    expect(&mut a, "hello").await;
    expect(&mut b, "hello").await;
    expect(&mut c, "ok").await;

    // broadcast_except skips the sender; broadcast does not.
    assert!(a.send("others psst").await);
    expect(&mut b, "psst").await;
    expect(&mut c, "psst").await;
    expect(&mut a, "ok").await;
    assert!(b.send("all hey").await);
    expect(&mut a, "hey").await;
    expect(&mut b, "hey").await;
    expect(&mut b, "ok").await;
    expect(&mut c, "hey").await;

    // Explicit leave; then a closed connection leaves everything by itself.
    cmd(&mut a, "leave red").await;
    assert_eq!(hub.room_len("red"), 1);
    c.close().await;
    timeout(LIMIT, c.closed()).await.expect("closed");
    timeout(LIMIT, async {
        while hub.len() != 2 || hub.room_len("blue") != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("closed connection left the hub");

    // Messages from other nodes arrive through the delivery handle.
    let local = broker.local.lock().unwrap().clone().expect("attached");
    assert_eq!(
        local.deliver(Topic::Room("red"), &Message::text("remote"), None),
        1
    );
    expect(&mut b, "remote").await;

    // The broker was told about first joins, last leaves and every publish.
    timeout(LIMIT, async {
        while !broker.calls().iter().any(|c| c == "unsub blue") {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("blue unsubscribed after its last member closed");
    assert_eq!(
        broker.calls(),
        [
            "sub red",
            "sub blue",
            "pub Room(\"red\") hello",
            "pub All psst",
            "pub All hey",
            "unsub blue",
        ]
    );
}

#[tokio::test]
async fn broadcast_shares_one_payload() {
    let hub = Hub::new();
    let server = TestServer::new(Rooms { hub: hub.clone() });
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(server.connect().await);
    }
    timeout(LIMIT, async {
        while hub.len() < 10 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all joined");
    let payload = Message::binary(vec![42u8; 4096]);
    let ptr = payload.as_bytes().as_ptr();
    assert_eq!(hub.broadcast(payload).await.expect("local"), 10);
    for client in &mut clients {
        let got = timeout(LIMIT, client.recv())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(got.as_bytes().as_ptr(), ptr, "payload was copied");
    }
}

#[tokio::test]
async fn a_broker_shared_through_an_arc_carries_every_hubs_traffic() {
    let broker = Arc::new(RecordingBroker::default());
    let first = Hub::with_broker(broker.clone());
    let picked: Arc<dyn Broker> = broker.clone();
    let second = Hub::with_broker(picked);
    assert_eq!(first.broadcast("one").await.unwrap(), 0);
    assert_eq!(second.broadcast("two").await.unwrap(), 0);
    assert_eq!(broker.calls(), ["pub All one", "pub All two"]);
    // The broker was attached to each hub in turn: it now delivers to the second.
    let server = TestServer::new(Rooms {
        hub: second.clone(),
    });
    let mut client = server.connect().await;
    timeout(LIMIT, async {
        while second.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("joined");
    let local = broker.local.lock().unwrap().clone().unwrap();
    assert_eq!(local.deliver(Topic::All, &Message::text("remote"), None), 1);
    expect(&mut client, "remote").await;
    assert!(first.is_empty());
}

#[tokio::test]
async fn a_join_racing_the_last_leave_stays_subscribed() {
    let broker = RecordingBroker::held_unsubscribe();
    let (hub, _server, mut a, mut b) = serve(broker.clone()).await;
    cmd(&mut a, "join red").await;
    // The last member leaves; while the broker is still unsubscribing (it
    // waits for `proceed`), a new member joins the (locally empty) room.
    assert!(a.send("leave red").await);
    timeout(LIMIT, broker.unsubscribing.notified())
        .await
        .expect("unsubscribe started");
    assert!(b.send("join red").await);
    // The join is in the room, waiting to reconcile the subscription
    // behind the unsubscribe: only now does the unsubscribe finish.
    timeout(LIMIT, async {
        while hub.room_len("red") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the join reached the room");
    broker.proceed.notify_one();
    expect(&mut a, "ok").await;
    expect(&mut b, "ok").await;
    assert_eq!(hub.room_len("red"), 1);
    let calls = broker.calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("sub red"),
        "room has a member but the broker unsubscribed last: {calls:?}"
    );
}
