//! Fan-out: a set of connections with rooms, and the [`Broker`] seam that
//! lets rooms span several processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use async_trait::async_trait;

use crate::close::CloseCode;
use crate::connection::{Connection, ConnectionId};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::rooms::{
    Held, History, Join, Joined, Joining, MAX_HELD, Member, Members, MemoryStore, PlainEvents,
    Position, PresenceEvent, Recovery, Replay, RoomEvents, RoomStore,
};

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
/// For [`Hub::publish`] and [`Hub::broadcast`], the hub delivers to its
/// own local members first, then hands the
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

    /// The presence and history store every node of this broker shares,
    /// if it offers one. `None` (the default) makes the hub keep presence
    /// and history in its own memory: right for one node.
    fn room_store(&self) -> Option<Arc<dyn RoomStore>> {
        None
    }
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

    /// Delivers a message appended to `room` at `position` (see
    /// [`RoomStore`]): each local member gets it as the hub's
    /// [`RoomEvents::message`] makes it. Returns how many connections took
    /// it; connections still joining hold it until their replay is queued.
    pub fn deliver_entry(&self, room: &str, position: Position, msg: &Message) -> usize {
        self.0
            .upgrade()
            .map_or(0, |hub| hub.deliver_entry(room, position, msg))
    }

    /// Delivers a presence change of `room` (see [`RoomStore`]): the hub's
    /// [`RoomEvents::presence`] sees it, and what it makes goes to every
    /// local member but `local`, the member itself when it is one of this
    /// node's connections. `version` is the member list's version after
    /// the change.
    pub fn deliver_presence(
        &self,
        room: &str,
        joined: bool,
        name: &str,
        local: Option<ConnectionId>,
        version: u64,
    ) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver_presence(room, joined, name, local, version);
        }
    }
}

#[cfg(test)]
impl LocalDelivery {
    /// A handle to no hub: deliveries go nowhere.
    pub(crate) fn detached() -> Self {
        LocalDelivery(Weak::new())
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
    /// Ordered by id, as are each room's members: a broadcast visits
    /// connections in the order they were made, which is about the order
    /// their state was allocated in. Against hash order that took 12.9 %
    /// off the CPU per delivery of a broadcast to 10,000 members, with
    /// no fewer instructions: most likely the memory system fetches the
    /// next member's state ahead (docs/performance.md, "Members in the
    /// order they came").
    members: RwLock<BTreeMap<ConnectionId, Connection>>,
    rooms: RwLock<Rooms>,
    broker: Arc<dyn Broker>,
    /// Presence and history: the broker's shared store, or one in memory.
    store: Arc<dyn RoomStore>,
    history: History,
    events: Arc<dyn RoomEvents>,
    /// Rooms the broker is subscribed to. Subscriptions are reconciled with
    /// the rooms that have local members one room change at a time under
    /// this lock, so a join racing the last leave cannot end unsubscribed.
    subscribed: tokio::sync::Mutex<HashSet<Arc<str>>>,
}

#[derive(Default)]
struct Rooms {
    by_name: HashMap<Arc<str>, BTreeMap<ConnectionId, Connection>>,
    /// Per room, what recorded traffic ([`Hub::append`], presence) needs
    /// beyond the member list. A mutex so that delivery, which holds the
    /// `rooms` read lock, can change it.
    recorded: Mutex<HashMap<Arc<str>, Recorded>>,
    /// The rooms of each connection (joining or joined) and the name it
    /// has there, so leaving on close costs O(rooms of that connection),
    /// not O(all rooms).
    by_conn: HashMap<ConnectionId, Vec<Membership>>,
}

struct Membership {
    room: Arc<str>,
    /// Its name in the room's presence, if it joined with one.
    name: Option<Arc<str>>,
}

/// The seam between history and live traffic for one room (see
/// [`rooms`](crate::rooms)).
#[derive(Default)]
struct Recorded {
    /// Connections inside [`Hub::join_room_with`]: what the room sends
    /// them is held until their replay is queued.
    joining: HashMap<ConnectionId, Joining>,
    /// New members and what their welcome and replay covered: live
    /// traffic up to there may still arrive (a shared store reads the
    /// history on another link than the one live traffic comes on) and is
    /// skipped, once.
    seams: HashMap<ConnectionId, Seam>,
    /// The newest position delivered here: the next one must follow it,
    /// or messages were lost (a broker link that dropped).
    last: Option<Position>,
}

/// What one new member already has.
#[derive(Clone, Copy)]
struct Seam {
    /// The messages it has: up to `Some(position)` (the replay, or what
    /// was before the welcome), or none at all when the room had none
    /// (`Some(None)`). `None` once a later message arrived.
    covered: Option<Option<Position>>,
    /// Presence changes up to this version are in the welcome's list.
    version: Option<u64>,
}

/// Whether message `next` goes to a member that has messages up to
/// `covered` (`None`: none), and whether it missed one before it.
fn after_seam(covered: Option<Position>, next: Position) -> (bool, bool) {
    match covered {
        Some(covered) if !next.is_after(&covered) => (false, false),
        Some(covered) => (true, follows(covered, next) == Some(false)),
        None => (true, next.seq() != 1),
    }
}

impl Recorded {
    /// Whether entry `position` goes to member `id`, and whether that member
    /// missed messages before it; clears the member's seam once passed.
    fn entry_for(&mut self, id: ConnectionId, position: Position, room_gap: bool) -> (bool, bool) {
        let Some(seam) = self.seams.get_mut(&id) else {
            return (true, room_gap);
        };
        let Some(covered) = seam.covered else {
            return (true, room_gap);
        };
        let (deliver, gap) = after_seam(covered, position);
        if deliver {
            seam.covered = None;
            if seam.version.is_none() {
                self.seams.remove(&id);
            }
        }
        (deliver, gap)
    }

    /// Whether presence change `version` goes to member `id`.
    fn presence_for(&mut self, id: ConnectionId, version: u64) -> bool {
        let Some(seam) = self.seams.get_mut(&id) else {
            return true;
        };
        let Some(covered) = seam.version else {
            return true;
        };
        if version <= covered {
            return false;
        }
        seam.version = None;
        if seam.covered.is_none() {
            self.seams.remove(&id);
        }
        true
    }
}

/// Whether `next` is the message right after `last`: `Some(true)` if so,
/// `Some(false)` if messages in between are missing, `None` when it cannot
/// be told (another epoch started: its first message is seq 1).
fn follows(last: Position, next: Position) -> Option<bool> {
    if last.epoch() == next.epoch() {
        Some(next.seq() == last.seq() + 1)
    } else if next.seq() == 1 {
        None
    } else {
        Some(false)
    }
}

impl Rooms {
    /// The shared name of `room`, to key several maps with one allocation.
    fn intern(&self, room: &str) -> Arc<str> {
        match self.by_name.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        }
    }

    fn recorded(&mut self) -> &mut HashMap<Arc<str>, Recorded> {
        self.recorded.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The recorded-traffic state, through the read lock.
    fn lock_recorded(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Recorded>> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `room` has local members, joined or joining.
    fn occupied(&self, room: &str) -> bool {
        self.by_name.contains_key(room)
            || self
                .lock_recorded()
                .get(room)
                .is_some_and(|r| !r.joining.is_empty())
    }

    /// Takes `id` out of `room` (joined or joining), not out of `by_conn`;
    /// true if the room now has no local member.
    fn remove_from(&mut self, room: &str, id: ConnectionId) -> bool {
        if let Some(members) = self.by_name.get_mut(room)
            && members.remove(&id).is_some()
            && members.is_empty()
        {
            self.by_name.remove(room);
        }
        let live = self.by_name.contains_key(room);
        let recorded = self.recorded();
        if let Some(state) = recorded.get_mut(room) {
            state.joining.remove(&id);
            state.seams.remove(&id);
            if state.joining.is_empty() && !live {
                recorded.remove(room);
            }
        }
        !self.occupied(room)
    }

    /// Takes `id` out of `room` and its memberships: its membership, if it
    /// had one, and whether the room now has no local member.
    fn remove(&mut self, room: &str, id: ConnectionId) -> (Option<Membership>, bool) {
        let mut membership = None;
        if let Some(list) = self.by_conn.get_mut(&id) {
            if let Some(at) = list.iter().position(|m| &*m.room == room) {
                membership = Some(list.swap_remove(at));
            }
            if list.is_empty() {
                self.by_conn.remove(&id);
            }
        }
        if membership.is_none() {
            return (None, false);
        }
        let emptied = self.remove_from(room, id);
        (membership, emptied)
    }
}

/// Builds a [`Hub`] with a broker, room history and [`RoomEvents`].
///
/// ```
/// use std::time::Duration;
/// use switchboard::rooms::History;
/// use switchboard::{Hub, LocalBroker};
///
/// let hub = Hub::builder()
///     .broker(LocalBroker)
///     .history(History::new(100, Duration::from_secs(600)))
///     .build();
/// # drop(hub);
/// ```
#[must_use]
pub struct HubBuilder {
    broker: Arc<dyn Broker>,
    history: History,
    events: Arc<dyn RoomEvents>,
}

impl HubBuilder {
    /// Rooms and broadcasts also travel through `broker`; presence and
    /// history live in its [`room_store`](Broker::room_store) if it has
    /// one. Default: [`LocalBroker`].
    pub fn broker(mut self, broker: impl IntoBroker) -> Self {
        self.broker = broker.into_broker();
        self
    }

    /// How much each room keeps for recovery. Default: nothing
    /// ([`History::default`]).
    pub fn history(mut self, history: History) -> Self {
        self.history = history;
        self
    }

    /// What members receive for room events. Default: [`PlainEvents`].
    pub fn events(mut self, events: impl RoomEvents) -> Self {
        self.events = Arc::new(events);
        self
    }

    /// The hub.
    pub fn build(self) -> Hub {
        let HubBuilder {
            broker,
            history,
            events,
        } = self;
        let shared = Arc::new_cyclic(|hub: &Weak<HubShared>| {
            let store = broker
                .room_store()
                .unwrap_or_else(|| Arc::new(MemoryStore::new(LocalDelivery(hub.clone()), history)));
            HubShared {
                members: RwLock::default(),
                rooms: RwLock::default(),
                broker,
                store,
                history,
                events,
                subscribed: tokio::sync::Mutex::default(),
            }
        });
        shared.broker.attach(LocalDelivery(Arc::downgrade(&shared)));
        Hub { shared }
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("history", &self.history)
            .finish_non_exhaustive()
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
        Hub::builder().build()
    }

    /// A hub whose rooms and broadcasts also travel through `broker` (see
    /// [`IntoBroker`] for the forms it takes).
    pub fn with_broker(broker: impl IntoBroker) -> Self {
        Hub::builder().broker(broker).build()
    }

    /// A hub with room history or [`RoomEvents`] (see
    /// [`rooms`](crate::rooms)).
    pub fn builder() -> HubBuilder {
        HubBuilder {
            broker: Arc::new(LocalBroker),
            history: History::default(),
            events: Arc::new(PlainEvents),
        }
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
            let name = rooms.intern(room);
            let first = !rooms.occupied(room);
            if rooms
                .recorded()
                .get(room)
                .is_some_and(|r| r.joining.contains_key(&conn.id()))
            {
                // Inside `join_room_with`, which makes it a member at its end.
                return Ok(());
            }
            let members = rooms.by_name.entry(name.clone()).or_default();
            if members.insert(conn.id(), conn.clone()).is_none() {
                rooms
                    .by_conn
                    .entry(conn.id())
                    .or_default()
                    .push(Membership {
                        room: name,
                        name: None,
                    });
            }
            first
        };
        if first {
            self.shared.sync_subscription(room).await?;
        }
        Ok(())
    }

    /// Adds `conn` to `room` with a name in the room's presence and, from
    /// a position, the messages it missed (see [`rooms`](crate::rooms)).
    ///
    /// In order, the connection is sent: the hub's
    /// [`RoomEvents::welcome`] for what it found, then the messages after
    /// [`Join::since`] (each through [`RoomEvents::message`]), then
    /// everything live; none missing and none twice at the seam, whatever
    /// is appended meanwhile. With [`Join::name`] the other members, on
    /// every node, get its join ([`RoomEvents::presence`]), and its leave
    /// when it leaves the room or closes.
    ///
    /// Fails if the connection has closed or is already in the room, or if
    /// the store cannot be reached (a shared store's outage); then the
    /// connection is not in the room. The [`rooms`](crate::rooms) module
    /// docs state the seam guarantee and what it covers.
    ///
    /// ```
    /// use switchboard::rooms::{Join, Position};
    /// use switchboard::{BoxError, Connection, Hub};
    ///
    /// async fn enter(hub: &Hub, conn: &Connection, since: Option<Position>) -> Result<(), BoxError> {
    ///     let mut join = Join::new().name("ada");
    ///     if let Some(position) = since {
    ///         join = join.since(position);
    ///     }
    ///     let joined = hub.join_room_with("lobby", conn, join).await?;
    ///     tracing::info!(members = joined.members.len(), recovery = ?joined.recovery, "joined");
    ///     Ok(())
    /// }
    /// ```
    pub async fn join_room_with(
        &self,
        room: &str,
        conn: &Connection,
        join: Join,
    ) -> Result<Joined> {
        let id = conn.id();
        let room_name = {
            let mut rooms = write(&self.shared.rooms);
            if !conn.add_hub(&self.shared) {
                return Err(room_error(room, "the connection has closed"));
            }
            if rooms
                .by_conn
                .get(&id)
                .is_some_and(|list| list.iter().any(|m| &*m.room == room))
            {
                return Err(room_error(room, "the connection is already in this room"));
            }
            let name = rooms.intern(room);
            let joining = Joining {
                conn: conn.clone(),
                held: Vec::new(),
            };
            let recorded = rooms.recorded().entry(name.clone()).or_default();
            recorded.joining.insert(id, joining);
            rooms.by_conn.entry(id).or_default().push(Membership {
                room: name.clone(),
                name: join.name.clone(),
            });
            name
        };
        // From here on, what the room sends this connection is held.
        match self.shared.look_up(&room_name, id, &join).await {
            Ok((members, replay)) => {
                let joined = self
                    .shared
                    .finish_join(&room_name, conn, &join, members, replay);
                if joined.is_none()
                    && let Some(name) = &join.name
                {
                    // It closed meanwhile, maybe before its presence was
                    // added: make sure it is gone.
                    let member = Member {
                        conn: id,
                        name: name.clone(),
                    };
                    self.shared.store.remove_member(room, &member).await?;
                }
                joined
                    .ok_or_else(|| room_error(room, "the connection closed or left while joining"))
            }
            Err(err) => {
                let _ = self.leave_room(room, id).await;
                Err(err)
            }
        }
    }

    /// Publishes `msg` to `room` on every node and records it in the room's
    /// history; returns its position.
    ///
    /// Members get it through the hub's [`RoomEvents::message`], in
    /// position order on every node. Unlike [`publish`](Self::publish),
    /// local members get it through the store, after the store has placed
    /// it: with a shared store, an outage is an error and nobody gets the
    /// message. A store that did not answer within its timeout may still
    /// have recorded it, though: an error means "maybe not delivered", so
    /// a retry can deliver it twice (each time with its own position).
    pub async fn append(&self, room: &str, msg: impl Into<Message>) -> Result<Position> {
        let shared = &self.shared;
        shared.store.append(room, msg.into(), &shared.history).await
    }

    /// The names of `room`'s members on every node (one per connection
    /// that joined with a name), with the list's version.
    pub async fn presence(&self, room: &str) -> Result<Members> {
        self.shared.store.members(room).await
    }

    /// Removes connection `id` from `room`, announcing its leave if it
    /// joined with a name. The last local member leaving unsubscribes the
    /// broker.
    pub async fn leave_room(&self, room: &str, id: ConnectionId) -> Result<()> {
        let (membership, emptied) = write(&self.shared.rooms).remove(room, id);
        if let Some(name) = membership.and_then(|m| m.name) {
            let member = Member { conn: id, name };
            self.shared.store.remove_member(room, &member).await?;
        }
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
            .map_or(0, BTreeMap::len)
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
            .map(|rooms| rooms.iter().map(|r| r.room.to_string()).collect())
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
        let send_all = |members: &BTreeMap<ConnectionId, Connection>| {
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

    fn deliver_entry(&self, room: &str, position: Position, msg: &Message) -> usize {
        // A room with no local member has nothing to do here: a connection
        // that starts joining after this check gets the message in its
        // replay (the store recorded it before delivering it).
        if !read(&self.rooms).occupied(room) {
            return 0;
        }
        // App code runs outside the hub's locks. A message it failed to
        // format still counts as seen, or the next one would look like a
        // loss to every member.
        let msg = guarded("message", || self.events.message(room, position, msg));
        let rooms = read(&self.rooms);
        let mut recorded = rooms.lock_recorded();
        let live = rooms.by_name.get_key_value(room);
        let state = match (recorded.get_mut(room), live) {
            (Some(state), _) => state,
            (None, Some((name, _))) => recorded.entry(name.clone()).or_default(),
            (None, None) => return 0,
        };
        let room_gap = state
            .last
            .is_some_and(|last| follows(last, position) == Some(false));
        if state.last.is_none_or(|last| position.is_after(&last)) {
            state.last = Some(position);
        }
        for joining in state.joining.values_mut() {
            hold(joining, Held::Entry(position, msg.clone()));
        }
        let Some((_, members)) = live else {
            return 0;
        };
        let mut sent = 0;
        for (id, conn) in members {
            match (state.entry_for(*id, position, room_gap), &msg) {
                ((false, _), _) => {}
                ((true, true), _) => missed(conn, room),
                ((true, false), Some(msg)) => sent += usize::from(conn.send(msg.clone()).is_ok()),
                ((true, false), None) => {}
            }
        }
        sent
    }

    fn deliver_presence(
        &self,
        room: &str,
        joined: bool,
        name: &str,
        local: Option<ConnectionId>,
        version: u64,
    ) {
        let event = PresenceEvent {
            room: Arc::from(room),
            joined,
            name: Arc::from(name),
            local,
            version,
        };
        let Some(Some(msg)) = guarded("presence", || self.events.presence(&event)) else {
            return;
        };
        let rooms = read(&self.rooms);
        let mut recorded = rooms.lock_recorded();
        let others = |id: &ConnectionId| Some(*id) != local;
        let state = recorded.get_mut(room);
        let live = rooms.by_name.get(room);
        let Some(state) = state else {
            for (_, conn) in live.into_iter().flatten().filter(|(id, _)| others(id)) {
                let _ = conn.send(msg.clone());
            }
            return;
        };
        for (_, joining) in state.joining.iter_mut().filter(|(id, _)| others(id)) {
            hold(joining, Held::Presence(version, msg.clone()));
        }
        for (id, conn) in live.into_iter().flatten().filter(|(id, _)| others(id)) {
            if state.presence_for(*id, version) {
                let _ = conn.send(msg.clone());
            }
        }
    }

    /// The middle of [`Hub::join_room_with`], while the room's traffic is
    /// held: subscribe, add the presence, then ask the store.
    async fn look_up(
        &self,
        room: &str,
        id: ConnectionId,
        join: &Join,
    ) -> Result<(Members, Replay)> {
        self.sync_subscription(room).await?;
        self.store.ready(room).await?;
        if let Some(name) = &join.name {
            let member = Member {
                conn: id,
                name: name.clone(),
            };
            self.store.add_member(room, &member).await?;
        }
        let members = self.store.members(room).await?;
        let replay = self.store.replay(room, join.since, &self.history).await?;
        Ok((members, replay))
    }

    /// The end of [`Hub::join_room_with`]: queue the welcome, the replay and
    /// what was held after the seam, then make the connection a member.
    /// `None` if it closed or left meanwhile.
    fn finish_join(
        &self,
        room: &Arc<str>,
        conn: &Connection,
        join: &Join,
        members: Members,
        replay: Replay,
    ) -> Option<Joined> {
        let (recovery, entries) = match (join.since, replay.entries) {
            (None, _) => (Recovery::NotAsked, Vec::new()),
            (Some(_), Ok(entries)) => (Recovery::Replayed(entries.len()), entries),
            (Some(_), Err(why)) => (Recovery::Impossible(why), Vec::new()),
        };
        let joined = Joined {
            room: room.clone(),
            name: join.name.clone(),
            members: members.names,
            position: replay.newest,
            recovery,
        };
        // App code runs outside the hub's locks.
        let welcome = guarded("welcome", || self.events.welcome(&joined)).flatten();
        let seam = entries.last().map(|(p, _)| *p).or(replay.newest);
        let replayed: Vec<Message> = entries
            .iter()
            .filter_map(|(p, m)| guarded("message", || self.events.message(room, *p, m)))
            .collect();

        let mut rooms = write(&self.rooms);
        let state = rooms.recorded().get_mut(&**room)?;
        let held = state.joining.remove(&conn.id())?.held;
        // Sends never block; a full queue is the slow-consumer policy's.
        for msg in welcome.into_iter().chain(replayed) {
            let _ = conn.send(msg);
        }
        let (mut seam, mut version) = (seam, members.version);
        for held in held {
            match held {
                Held::Entry(position, msg) => {
                    let (after, gap) = after_seam(seam, position);
                    if gap {
                        missed(conn, room);
                    }
                    if after {
                        seam = Some(position);
                        if let Some(msg) = msg {
                            let _ = conn.send(msg);
                        }
                    }
                }
                Held::Presence(v, msg) => {
                    if v > version {
                        version = v;
                        let _ = conn.send(msg);
                    }
                }
            }
        }
        // Live traffic up to what it got may still be on its way.
        state.seams.insert(
            conn.id(),
            Seam {
                covered: Some(seam),
                version: Some(version),
            },
        );
        rooms
            .by_name
            .entry(room.clone())
            .or_default()
            .insert(conn.id(), conn.clone());
        Some(joined)
    }

    /// Subscribes or unsubscribes the broker so that it follows whether
    /// `room` has local members now. A failed call leaves the recorded state
    /// unchanged, so the next change of the room tries again.
    async fn sync_subscription(&self, room: &str) -> Result<()> {
        let mut subscribed = self.subscribed.lock().await;
        let wanted = read(&self.rooms).occupied(room);
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

    /// A connection finished: it leaves the members and all its rooms,
    /// and its presence goes.
    pub(crate) fn remove_everywhere(self: &Arc<Self>, id: ConnectionId) {
        write(&self.members).remove(&id);
        let mut emptied = Vec::new();
        let mut named = Vec::new();
        {
            let mut rooms = write(&self.rooms);
            for membership in rooms.by_conn.remove(&id).unwrap_or_default() {
                if rooms.remove_from(&membership.room, id) {
                    emptied.push(membership.room.clone());
                }
                if let Some(name) = membership.name {
                    named.push((membership.room, name));
                }
            }
        }
        if emptied.is_empty() && named.is_empty() {
            return;
        }
        // Leaving the store and unsubscribing are async, and this runs in a
        // synchronous close path.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let hub = self.clone();
                rt.spawn(async move {
                    for (room, name) in named {
                        let member = Member { conn: id, name };
                        if let Err(err) = hub.store.remove_member(&room, &member).await {
                            tracing::warn!(room = %room, error = %err, "presence leave failed");
                        }
                    }
                    for room in emptied {
                        if let Err(err) = hub.sync_subscription(&room).await {
                            tracing::warn!(room = %room, error = %err, "broker unsubscribe failed");
                        }
                    }
                });
            }
            Err(_) => {
                tracing::warn!("no tokio runtime: presence and broker subscriptions not updated")
            }
        }
    }
}

/// A member missed messages of `room` (positions that skip): closed with
/// 1012, so that its client comes back from its last position.
fn missed(conn: &Connection, room: &str) {
    tracing::warn!(conn = %conn.id(), room, "messages of the room were lost on the way: closing so the client resumes");
    conn.close_with(
        CloseCode::RESTART,
        "messages were lost: reconnect to resume",
    );
}

/// Runs app code ([`RoomEvents`]) so that a panic in it costs the one event,
/// not the task delivering every room's traffic.
fn guarded<T>(callback: &'static str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::error!(callback, "RoomEvents panicked; the event was skipped");
            None
        }
    }
}

/// Holds `msg` for a joining connection, or closes the connection (1013,
/// try again later) when too much is held.
fn hold(joining: &mut Joining, held: Held) {
    if joining.held.len() < MAX_HELD {
        joining.held.push(held);
    } else if !joining.conn.is_closed() {
        tracing::info!(conn = %joining.conn.id(), "closing a joining connection: too much held while it joined");
        joining
            .conn
            .close_with(CloseCode::TRY_AGAIN, "too busy to join");
    }
}

fn room_error(room: &str, reason: &'static str) -> Error {
    Error::Room {
        room: room.to_owned(),
        reason,
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
