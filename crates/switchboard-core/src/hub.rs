//! Fan-out: a set of connections with rooms, and the [`Broker`] seam that
//! lets rooms span several processes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use async_trait::async_trait;

use crate::connection::{Connection, ConnectionId};
use crate::error::Result;
use crate::message::Message;

/// Where a published message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic<'a> {
    /// Every member of the hub.
    All,
    /// The members of one room.
    Room(&'a str),
}

/// Carries hub traffic to other processes, so the same component code spans
/// several nodes.
///
/// The hub always delivers to its own local members first, then hands the
/// message to the broker, whose job is to reach the *other* nodes and, for
/// messages arriving from them, call [`LocalDelivery::deliver`]. The default,
/// [`LocalBroker`], has no other nodes. A remote broker subscribes only to
/// rooms with local members: the hub calls [`subscribe`](Broker::subscribe)
/// when a room gets its first local member and
/// [`unsubscribe`](Broker::unsubscribe) when it loses its last.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Called once when a hub is built with this broker: the handle through
    /// which messages from other nodes reach local members.
    fn attach(&self, local: LocalDelivery) {
        let _ = local;
    }

    /// A room got its first local member.
    async fn subscribe(&self, room: &str) -> Result<()> {
        let _ = room;
        Ok(())
    }

    /// A room lost its last local member.
    async fn unsubscribe(&self, room: &str) -> Result<()> {
        let _ = room;
        Ok(())
    }

    /// Sends a message to the other nodes. `except` is a connection of this
    /// node that must not receive it.
    async fn publish(
        &self,
        topic: Topic<'_>,
        msg: Message,
        except: Option<ConnectionId>,
    ) -> Result<()>;
}

/// A broker, or a shared handle to one: what [`Hub::with_broker`] takes.
///
/// A broker value `B`, an `Arc<B>` shared with other hubs, or an
/// `Arc<dyn Broker>` (a broker chosen at start-up, as
/// `switchboard::redis::broker_from_url` returns). Sealed, like
/// [`IntoComponent`](crate::IntoComponent) and for the same reason.
///
/// ```
/// use std::sync::Arc;
/// use switchboard::{Broker, Hub, LocalBroker};
///
/// let one = Hub::with_broker(LocalBroker);
/// let shared = Arc::new(LocalBroker);
/// let two = Hub::with_broker(shared.clone());
/// let picked: Arc<dyn Broker> = shared;
/// let three = Hub::with_broker(picked);
/// # let _ = (one, two, three);
/// ```
pub trait IntoBroker: Send + sealed::Sealed {
    /// The broker as the hub holds it.
    fn into_broker(self) -> Arc<dyn Broker>;
}

mod sealed {
    /// Keeps [`IntoBroker`](super::IntoBroker) to the implementations in
    /// this module.
    pub trait Sealed {}
}

impl<B: Broker> sealed::Sealed for B {}

impl<B: Broker> IntoBroker for B {
    fn into_broker(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }
}

impl<B: Broker> sealed::Sealed for Arc<B> {}

impl<B: Broker> IntoBroker for Arc<B> {
    fn into_broker(self) -> Arc<dyn Broker> {
        self
    }
}

impl sealed::Sealed for Arc<dyn Broker> {}

impl IntoBroker for Arc<dyn Broker> {
    fn into_broker(self) -> Arc<dyn Broker> {
        self
    }
}

/// The in-process broker: one node, nothing to forward. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalBroker;

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, _: Topic<'_>, _: Message, _: Option<ConnectionId>) -> Result<()> {
        Ok(())
    }
}

/// Delivers messages that arrived from other nodes to this hub's members.
/// Holds the hub weakly: once the hub is dropped, deliveries go nowhere.
#[derive(Clone)]
pub struct LocalDelivery(Weak<HubShared>);

impl LocalDelivery {
    /// Delivers `msg` to the local members of `topic`, skipping `except`;
    /// returns how many connections took it.
    pub fn deliver(&self, topic: Topic<'_>, msg: &Message, except: Option<ConnectionId>) -> usize {
        self.0
            .upgrade()
            .map_or(0, |hub| hub.deliver(topic, msg, except))
    }
}

impl fmt::Debug for LocalDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalDelivery")
            .field("live", &(self.0.strong_count() > 0))
            .finish()
    }
}

/// A set of connections with rooms: join/leave, broadcast, publish.
///
/// A cheap `Clone` handle (an `Arc` inside), usable from handlers and from
/// any other task (a timer, an HTTP handler). Connections leave every hub and
/// room by themselves when they close, after their `on_close`.
///
/// Sending copies no payload: each member gets a clone of the same
/// [`Message`]. A member whose queue is full is handled by its slow-consumer
/// policy and does not hold up the others; a member whose transport refuses
/// the message is skipped (see [`broadcast`](Hub::broadcast)).
///
/// ```
/// use switchboard::{BoxError, Connection, Hub, Message, MessageComponent};
///
/// #[derive(Default)]
/// struct Chat {
///     hub: Hub,
/// }
///
/// impl MessageComponent for Chat {
///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
///         self.hub.join(conn);
///         Ok(())
///     }
///
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         self.hub.broadcast_except(msg, conn.id()).await?;
///         Ok(())
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Hub {
    shared: Arc<HubShared>,
}

pub(crate) struct HubShared {
    members: RwLock<HashMap<ConnectionId, Connection>>,
    rooms: RwLock<Rooms>,
    broker: Arc<dyn Broker>,
    /// Rooms the broker is subscribed to. Subscriptions are reconciled with
    /// the rooms that have local members one room change at a time under
    /// this lock, so a join racing the last leave cannot end unsubscribed.
    subscribed: tokio::sync::Mutex<HashSet<Arc<str>>>,
}

#[derive(Default)]
struct Rooms {
    by_name: HashMap<Arc<str>, HashMap<ConnectionId, Connection>>,
    /// The rooms of each connection, so leaving on close costs
    /// O(rooms of that connection), not O(all rooms).
    by_conn: HashMap<ConnectionId, Vec<Arc<str>>>,
}

impl Rooms {
    /// Removes `id` from the members of `room`; true when that emptied it.
    fn remove_member(&mut self, room: &str, id: ConnectionId) -> bool {
        let Some(members) = self.by_name.get_mut(room) else {
            return false;
        };
        if members.remove(&id).is_none() || !members.is_empty() {
            return false;
        }
        self.by_name.remove(room);
        true
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// A hub on the in-process [`LocalBroker`].
    pub fn new() -> Self {
        Hub::with_broker(LocalBroker)
    }

    /// A hub whose rooms and broadcasts also travel through `broker` (see
    /// [`IntoBroker`] for the forms it takes).
    pub fn with_broker(broker: impl IntoBroker) -> Self {
        let shared = Arc::new(HubShared {
            members: RwLock::default(),
            rooms: RwLock::default(),
            broker: broker.into_broker(),
            subscribed: tokio::sync::Mutex::default(),
        });
        shared.broker.attach(LocalDelivery(Arc::downgrade(&shared)));
        Hub { shared }
    }

    /// Adds `conn` to the hub's members (broadcast targets). Returns false
    /// if the connection already ended.
    pub fn join(&self, conn: &Connection) -> bool {
        let mut members = write(&self.shared.members);
        if !conn.add_hub(&self.shared) {
            return false;
        }
        members.insert(conn.id(), conn.clone());
        true
    }

    /// Removes a connection from the members (not from its rooms).
    pub fn leave(&self, id: ConnectionId) -> bool {
        write(&self.shared.members).remove(&id).is_some()
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: ConnectionId) -> bool {
        read(&self.shared.members).contains_key(&id)
    }

    /// A member by id.
    pub fn get(&self, id: ConnectionId) -> Option<Connection> {
        read(&self.shared.members).get(&id).cloned()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        read(&self.shared.members).len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handles to every member.
    pub fn connections(&self) -> Vec<Connection> {
        read(&self.shared.members).values().cloned().collect()
    }

    /// Sends `msg` to every member, here and (through the broker) on other
    /// nodes. Returns how many local members took it.
    ///
    /// Each member gets it through [`Connection::send`]: a member whose
    /// queue is full is handled by its slow-consumer policy, and a member
    /// whose transport cannot carry the message (a TCP lines peer and a
    /// message with a line break, see
    /// [`SendError::Invalid`](crate::SendError::Invalid)) is skipped,
    /// counted in [`Counters::invalid_sends`](crate::Counters::invalid_sends)
    /// and left open. Neither holds up the other members, and neither is an
    /// error of the broadcast: compare the count returned with
    /// [`len`](Self::len) to see how many did not take it. The same holds
    /// for [`broadcast_except`](Self::broadcast_except),
    /// [`publish`](Self::publish) and [`publish_except`](Self::publish_except).
    pub async fn broadcast(&self, msg: impl Into<Message>) -> Result<usize> {
        self.fan_out(Topic::All, msg.into(), None).await
    }

    /// Sends `msg` to every member except `except` (usually the sender).
    pub async fn broadcast_except(
        &self,
        msg: impl Into<Message>,
        except: ConnectionId,
    ) -> Result<usize> {
        self.fan_out(Topic::All, msg.into(), Some(except)).await
    }

    /// Adds `conn` to `room`. The first local member of a room subscribes
    /// the broker to it.
    pub async fn join_room(&self, room: &str, conn: &Connection) -> Result<()> {
        let first = {
            let mut rooms = write(&self.shared.rooms);
            if !conn.add_hub(&self.shared) {
                return Ok(());
            }
            let rooms = &mut *rooms;
            let name: Arc<str> = match rooms.by_name.get_key_value(room) {
                Some((name, _)) => name.clone(),
                None => Arc::from(room),
            };
            let members = rooms.by_name.entry(name.clone()).or_default();
            let first = members.is_empty();
            if members.insert(conn.id(), conn.clone()).is_none() {
                rooms.by_conn.entry(conn.id()).or_default().push(name);
            }
            first
        };
        if first {
            self.shared.sync_subscription(room).await?;
        }
        Ok(())
    }

    /// Removes connection `id` from `room`. The last local member leaving
    /// unsubscribes the broker.
    pub async fn leave_room(&self, room: &str, id: ConnectionId) -> Result<()> {
        let emptied = {
            let mut rooms = write(&self.shared.rooms);
            let emptied = rooms.remove_member(room, id);
            if let Some(list) = rooms.by_conn.get_mut(&id) {
                list.retain(|r| &**r != room);
                if list.is_empty() {
                    rooms.by_conn.remove(&id);
                }
            }
            emptied
        };
        if emptied {
            self.shared.sync_subscription(room).await?;
        }
        Ok(())
    }

    /// Sends `msg` to every member of `room`, here and on other nodes.
    pub async fn publish(&self, room: &str, msg: impl Into<Message>) -> Result<usize> {
        self.fan_out(Topic::Room(room), msg.into(), None).await
    }

    /// Sends `msg` to every member of `room` except `except`.
    pub async fn publish_except(
        &self,
        room: &str,
        msg: impl Into<Message>,
        except: ConnectionId,
    ) -> Result<usize> {
        self.fan_out(Topic::Room(room), msg.into(), Some(except))
            .await
    }

    /// Number of local members of `room`.
    pub fn room_len(&self, room: &str) -> usize {
        read(&self.shared.rooms)
            .by_name
            .get(room)
            .map_or(0, HashMap::len)
    }

    /// Handles to the local members of `room` (this node's connections in
    /// it), in no particular order: to list who is there, or to read each
    /// one's state ([`Connection::extension`]).
    pub fn room_members(&self, room: &str) -> Vec<Connection> {
        read(&self.shared.rooms)
            .by_name
            .get(room)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The rooms connection `id` is in.
    pub fn rooms_of(&self, id: ConnectionId) -> Vec<String> {
        read(&self.shared.rooms)
            .by_conn
            .get(&id)
            .map(|rooms| rooms.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default()
    }

    async fn fan_out(
        &self,
        topic: Topic<'_>,
        msg: Message,
        except: Option<ConnectionId>,
    ) -> Result<usize> {
        let delivered = self.shared.deliver(topic, &msg, except);
        self.shared.broker.publish(topic, msg, except).await?;
        Ok(delivered)
    }
}

impl HubShared {
    fn deliver(&self, topic: Topic<'_>, msg: &Message, except: Option<ConnectionId>) -> usize {
        // `send` never blocks and never touches hub locks, so sending under
        // the read lock is safe and avoids cloning the member list.
        let send_all = |members: &HashMap<ConnectionId, Connection>| {
            members
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .filter(|(_, conn)| conn.send(msg.clone()).is_ok())
                .count()
        };
        match topic {
            Topic::All => send_all(&read(&self.members)),
            Topic::Room(room) => read(&self.rooms).by_name.get(room).map_or(0, send_all),
        }
    }

    /// Subscribes or unsubscribes the broker so that it follows whether
    /// `room` has local members now. A failed call leaves the recorded state
    /// unchanged, so the next change of the room tries again.
    async fn sync_subscription(&self, room: &str) -> Result<()> {
        let mut subscribed = self.subscribed.lock().await;
        let wanted = read(&self.rooms).by_name.contains_key(room);
        match (wanted, subscribed.contains(room)) {
            (true, false) => {
                self.broker.subscribe(room).await?;
                subscribed.insert(Arc::from(room));
            }
            (false, true) => {
                self.broker.unsubscribe(room).await?;
                subscribed.remove(room);
            }
            _ => {}
        }
        Ok(())
    }

    /// A connection finished: it leaves the members and all its rooms.
    pub(crate) fn remove_everywhere(self: &Arc<Self>, id: ConnectionId) {
        write(&self.members).remove(&id);
        let emptied: Vec<Arc<str>> = {
            let mut rooms = write(&self.rooms);
            let names = rooms.by_conn.remove(&id).unwrap_or_default();
            names
                .into_iter()
                .filter(|name| rooms.remove_member(name, id))
                .collect()
        };
        if emptied.is_empty() {
            return;
        }
        // Unsubscribing is async and this runs in a synchronous close path.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let hub = self.clone();
                rt.spawn(async move {
                    for room in emptied {
                        if let Err(err) = hub.sync_subscription(&room).await {
                            tracing::warn!(room = %room, error = %err, "broker unsubscribe failed");
                        }
                    }
                });
            }
            Err(_) => {
                tracing::warn!("no tokio runtime: emptied rooms stay subscribed at the broker")
            }
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Hub critical sections do not panic; a poisoned lock guards whole data.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("members", &self.len())
            .field("rooms", &read(&self.shared.rooms).by_name.len())
            .finish()
    }
}
