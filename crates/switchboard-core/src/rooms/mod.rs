//! Presence and history for [`Hub`](crate::Hub) rooms: who is in a room,
//! join and leave events, positions, bounded history and recovery from a
//! position.
//!
//! A room joined with [`Hub::join_room_with`](crate::Hub::join_room_with)
//! can carry a member name (presence) and a position to resume from
//! (recovery). Messages published with [`Hub::append`](crate::Hub::append)
//! get a [`Position`], are kept in the room's bounded history and reach
//! every member in position order, on every node. What members receive
//! for these events (a welcome, each message, join and leave notices) is
//! decided by the hub's [`RoomEvents`].
//!
//! Where the state lives is a [`RoomStore`]: in the hub's memory on one
//! node, or shared by every node when the hub's broker offers a store
//! ([`Broker::room_store`](crate::Broker::room_store); the Redis broker does).
//!
//! # The seam guarantee
//!
//! This is the one statement of it; the rest of the docs point here.
//!
//! A connection that joins *from* a position receives the messages
//! appended after it, in order, then live ones: none missing and none
//! twice, even while others append. It gets there in these steps (all in
//! `hub.rs`):
//!
//! 1. the connection is registered as joining: what the room delivers to
//!    it from now on is held;
//! 2. the room is subscribed at the broker, and the store is asked for the
//!    member list (with its version) and what follows the position (with
//!    the newest position);
//! 3. the welcome and the replay are queued, then what was held that is
//!    newer than the replay (a later position, a higher version);
//! 4. the connection becomes a member with a *seam*: live traffic up to
//!    what it already got may still arrive (a shared store reads the
//!    history on another link than the one live traffic comes on), and is
//!    skipped once.
//!
//! A store must therefore deliver a room's messages in position order and
//! its presence changes in version order (versions never go back, even
//! when the store loses its data), and a shared store must say when the
//! room's live traffic reaches this node ([`RoomStore::ready`]; the Redis
//! store refuses while the room's subscription is not in effect).
//!
//! Positions of one epoch are consecutive: a live message that skips one
//! means messages were lost on the way (a broker link dropped). The
//! members that missed it are closed with 1012 (service restart), so that
//! their clients come back with their last position and get a replay.
//! Losses just before a history loss (a new epoch) cannot be told.
//!
//! Presence changes get the same seam but no loss detection: a change
//! lost on the way (a dropped link, a store that lost its data) leaves a
//! member list stale until the client joins again. The guarantee covers
//! appended messages; a plain
//! [`Hub::publish`](crate::Hub::publish) to the room during a join may
//! miss the joining connection.

mod memory;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::connection::{Connection, ConnectionId};
use crate::error::Result;
use crate::message::Message;

pub(crate) use memory::MemoryStore;

/// Where a message stands in its room's history: the room's epoch and the
/// message's sequence number in it.
///
/// Written as `{epoch}-{seq}` (16 hex digits, a dash, decimal), which
/// [`FromStr`] reads back. Positions of one room and one epoch are ordered
/// by `seq`. A room's epoch changes when its history is lost (a process
/// restart for the in-memory store; a Redis restart, flush or expiry for a
/// shared one), so a position from before the loss is refused
/// ([`Unrecoverable::Epoch`]) rather than resumed against different
/// messages.
///
/// ```
/// use switchboard::rooms::Position;
///
/// let p: Position = "00000000000000ff-42".parse().unwrap();
/// assert_eq!((p.epoch(), p.seq()), (255, 42));
/// assert_eq!(p.to_string(), "00000000000000ff-42");
/// assert!("42".parse::<Position>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    epoch: u64,
    seq: u64,
}

impl Position {
    /// A position from its parts.
    pub fn new(epoch: u64, seq: u64) -> Self {
        Position { epoch, seq }
    }

    /// The history's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The message's sequence number: 1 for a room's first message of an
    /// epoch, then one more for each.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether `self` comes after `other`: a later message of the same
    /// epoch, or any message of another epoch (a history that started
    /// again). Not an order: across epochs it holds both ways.
    pub fn is_after(&self, other: &Position) -> bool {
        self.epoch != other.epoch || self.seq > other.seq
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

/// A string that is not a [`Position`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a position: expected 16 hex digits, '-', and a decimal sequence number")]
pub struct PositionParseError;

impl FromStr for Position {
    type Err = PositionParseError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (epoch, seq) = s.split_once('-').ok_or(PositionParseError)?;
        let hex = epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit());
        let digits = !seq.is_empty() && seq.len() <= 20 && seq.bytes().all(|b| b.is_ascii_digit());
        if !hex || !digits {
            return Err(PositionParseError);
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| PositionParseError)?;
        let seq = seq.parse().map_err(|_| PositionParseError)?;
        Ok(Position { epoch, seq })
    }
}

/// How long a room's epoch outlives its newest message, beyond
/// [`History::max_age`]: a client that holds the newest position of a quiet
/// room resumes with nothing missed rather than being told its position
/// is from a lost history.
pub const EPOCH_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How much history each room keeps: at most `max_len` messages, none
/// older than `max_age`. The default keeps none (positions are still
/// given, and recovery works only from the newest one).
///
/// Memory, in the hub's own store: at most `max_len` messages per room,
/// for at most [`max_rooms`](Self::max_rooms) rooms without members (the
/// ones quiet longest go first) plus the rooms that have members; a small
/// record (epoch, sequence) outlives a room's messages by [`EPOCH_GRACE`];
/// a room with no member and no message is not kept at all. On Redis the
/// same bounds hold per room, and keys expire (docs/scaling.md).
///
/// A replay goes into the joining connection's outbound queue at once:
/// keep `max_len` messages (and their bytes) within the connection's
/// [`Config::queue_max_messages`](crate::Config::queue_max_messages) and
/// [`queue_max_bytes`](crate::Config::queue_max_bytes), or a long replay
/// meets the slow-consumer policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// Most messages kept per room.
    pub max_len: usize,
    /// Oldest message kept. A room's position (its epoch) lasts this plus
    /// [`EPOCH_GRACE`] after its newest message.
    pub max_age: Duration,
    /// Most rooms without named members (no one joined with
    /// [`Join::name`]) whose history the hub's own store keeps; past it,
    /// the one quiet longest is dropped, positions and all. Default 10,000.
    pub max_rooms: usize,
}

impl History {
    /// Keeps the last `max_len` messages of each room, none older than
    /// `max_age`.
    pub fn new(max_len: usize, max_age: Duration) -> Self {
        History {
            max_len,
            max_age,
            max_rooms: 10_000,
        }
    }

    /// Sets [`max_rooms`](Self::max_rooms).
    #[must_use]
    pub fn max_rooms(mut self, rooms: usize) -> Self {
        self.max_rooms = rooms;
        self
    }
}

impl Default for History {
    /// No messages kept; a room's position lasts five minutes (plus
    /// [`EPOCH_GRACE`]) after its newest message.
    fn default() -> Self {
        History::new(0, Duration::from_secs(300))
    }
}

/// What [`Hub::join_room_with`](crate::Hub::join_room_with) does besides
/// joining: announce a member name, resume from a position.
///
/// ```
/// use switchboard::rooms::{Join, Position};
///
/// let plain = Join::new();
/// let named = Join::new().name("ada");
/// let resumed = Join::new().name("ada").since(Position::new(7, 41));
/// # let _ = (plain, named, resumed);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Join {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) since: Option<Position>,
}

impl Join {
    /// A join with neither a name nor a position: like
    /// [`Hub::join_room`](crate::Hub::join_room), plus the welcome.
    pub fn new() -> Self {
        Join::default()
    }

    /// The member's name in the room's presence, on every node.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replays the history after `position` before live messages.
    pub fn since(mut self, position: Position) -> Self {
        self.since = Some(position);
        self
    }
}

/// What a connection found when it joined: given to
/// [`RoomEvents::welcome`] and returned by
/// [`Hub::join_room_with`](crate::Hub::join_room_with).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Joined {
    /// The room.
    pub room: Arc<str>,
    /// The name it joined with, if any.
    pub name: Option<Arc<str>>,
    /// The names of the room's members on every node, this one included
    /// (empty when it joined without a name and nobody else has one), in
    /// no particular order. A name appears once per connection.
    pub members: Vec<Arc<str>>,
    /// The room's newest position when it joined; `None` if no message
    /// was ever appended (in this epoch).
    pub position: Option<Position>,
    /// What became of the position it asked to resume from.
    pub recovery: Recovery,
}

/// The outcome of resuming from a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No position was given.
    NotAsked,
    /// This many messages were replayed, right after the welcome.
    Replayed(usize),
    /// Nothing was replayed, for this reason.
    Impossible(Unrecoverable),
}

/// Why a connection could not resume from its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unrecoverable {
    /// The position is from another epoch: the history it belonged to was
    /// lost (restart, flush, expiry).
    #[error("the position is from a history that no longer exists")]
    Epoch,
    /// Messages after the position were trimmed from the history.
    #[error("messages after the position are no longer kept")]
    Trimmed,
    /// The position is ahead of the room's newest.
    #[error("the room has no such position")]
    Unknown,
}

/// A member joined or left a room: given to [`RoomEvents::presence`] on
/// every node whose hub has local members in the room.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceEvent {
    /// The room.
    pub room: Arc<str>,
    /// Joined (`true`) or left.
    pub joined: bool,
    /// The member's name.
    pub name: Arc<str>,
    /// The member's connection when it is one of this node's: the hub does
    /// not send a member its own join.
    pub local: Option<ConnectionId>,
    /// The room's member-list version after the change (the seam between
    /// a member list and the events that follow it).
    pub version: u64,
}

/// What the members of a room receive: the hub calls these to turn room
/// events into messages, once per event and node (never per member).
///
/// Every method has a default: no welcome, each message as it was
/// appended, no presence notices.
///
/// They run outside the hub's locks, but the in-memory store calls
/// `message` and `presence` while it holds its own: do not call the hub
/// from them (hand work to a task instead). A panic in one is logged and
/// costs that one event.
///
/// ```
/// use switchboard::rooms::{Joined, PresenceEvent, RoomEvents, Position};
/// use switchboard::Message;
///
/// struct Lines;
///
/// impl RoomEvents for Lines {
///     fn welcome(&self, joined: &Joined) -> Option<Message> {
///         Some(format!("welcome to {}: {} here", joined.room, joined.members.len()).into())
///     }
///
///     fn message(&self, _room: &str, position: Position, msg: &Message) -> Message {
///         format!("{position} {}", msg.as_text().unwrap_or("(binary)")).into()
///     }
///
///     fn presence(&self, event: &PresenceEvent) -> Option<Message> {
///         let verb = if event.joined { "joined" } else { "left" };
///         Some(format!("{} {verb}", event.name).into())
///     }
/// }
/// ```
pub trait RoomEvents: Send + Sync + 'static {
    /// The first message a connection gets from
    /// [`Hub::join_room_with`](crate::Hub::join_room_with), before any
    /// replayed message; `None` sends nothing.
    fn welcome(&self, joined: &Joined) -> Option<Message> {
        let _ = joined;
        None
    }

    /// A message appended to `room` at `position`, as members receive it
    /// (live and replayed alike).
    fn message(&self, room: &str, position: Position, msg: &Message) -> Message {
        let _ = (room, position);
        msg.clone()
    }

    /// A join or leave, as the room's other members receive it; `None`
    /// sends nothing. Called on every node with local members in the room,
    /// for members of every node.
    fn presence(&self, event: &PresenceEvent) -> Option<Message> {
        let _ = event;
        None
    }
}

/// The default [`RoomEvents`]: no welcome, messages as appended, no
/// presence notices.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainEvents;

impl RoomEvents for PlainEvents {}

/// One member of a room's presence, as a [`RoomStore`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's connection, on the node that records it.
    pub conn: ConnectionId,
    /// The name it joined with.
    pub name: Arc<str>,
}

/// A room's member names and the version they are at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// One name per member connection, on every node.
    pub names: Vec<Arc<str>>,
    /// Bumped by every join and leave; events with a higher version
    /// happened after this list.
    pub version: u64,
}

/// What a [`RoomStore`] has after a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The room's newest position, `None` if it has none.
    pub newest: Option<Position>,
    /// The messages after the position asked for, oldest first, or why
    /// there are none. `Ok(empty)` when no position was asked for.
    pub entries: std::result::Result<Vec<(Position, Message)>, Unrecoverable>,
}

/// Where rooms keep presence and history: the hub's memory on one node
/// ([`Hub::builder`](crate::Hub::builder) without a store), or a store all
/// nodes share, which a [`Broker`](crate::Broker) offers through
/// [`Broker::room_store`](crate::Broker::room_store).
///
/// A store delivers what happens in a room to the hub of *every* node
/// with local members there (this one included) through
/// [`LocalDelivery::deliver_entry`](crate::LocalDelivery::deliver_entry) and
/// [`LocalDelivery::deliver_presence`](crate::LocalDelivery::deliver_presence),
/// each room's messages in position order and its presence events in
/// version order, and only for rooms the hub subscribed to
/// ([`Broker::subscribe`](crate::Broker::subscribe)). The
/// [module docs](self) say what else the seam needs of a store.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Succeeds once this node receives `room`'s live traffic (the hub has
    /// subscribed it at the broker). A join calls it before it announces
    /// the member and reads the member list and the history; an `Err`
    /// fails the join. The default, for stores that deliver in-process,
    /// is always ready.
    async fn ready(&self, room: &str) -> Result<()> {
        let _ = room;
        Ok(())
    }

    /// Gives `msg` the room's next position, keeps it in the history as
    /// `history` bounds it, and delivers it.
    async fn append(&self, room: &str, msg: Message, history: &History) -> Result<Position>;

    /// The room's newest position and, when `since` is given, the messages
    /// after it (or why they cannot be had), none older than `history`
    /// allows.
    async fn replay(
        &self,
        room: &str,
        since: Option<Position>,
        history: &History,
    ) -> Result<Replay>;

    /// Adds a member to the room's presence and delivers the join.
    async fn add_member(&self, room: &str, member: &Member) -> Result<()>;

    /// Removes a member and delivers the leave; nothing if it was not there.
    async fn remove_member(&self, room: &str, member: &Member) -> Result<()>;

    /// The room's members on every node.
    async fn members(&self, room: &str) -> Result<Members>;
}

/// What one joining connection was sent while the store was asked: held
/// until the seam is found.
pub(crate) enum Held {
    /// `None` when [`RoomEvents::message`] failed on it: nothing to send,
    /// but the position counts as seen.
    Entry(Position, Option<Message>),
    Presence(u64, Message),
}

/// A connection between the start and the end of
/// [`Hub::join_room_with`](crate::Hub::join_room_with).
pub(crate) struct Joining {
    pub(crate) conn: Connection,
    pub(crate) held: Vec<Held>,
}

/// Most events held for one joining connection; past it the connection is
/// closed (1013, try again) rather than holding memory without bound.
pub(crate) const MAX_HELD: usize = 65_536;
