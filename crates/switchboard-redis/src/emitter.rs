//! [`Emitter`]: publish to the clients of a cluster from a process that
//! holds no sockets.

use std::fmt;
use std::sync::Arc;

use switchboard_core::{Message, Topic};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::broker::Status;
use crate::envelope;
use crate::error::Result;
use crate::options::{Channels, RedisOptions};
use crate::publisher::Publisher;

/// The room that holds every connection of one user, on every node:
/// `user:{id}`.
///
/// A component joins it once it knows who the connection belongs to (after
/// authenticating); [`Emitter::to_user`] and
/// [`Hub::publish`](switchboard_core::Hub::publish) then reach all of that
/// user's tabs and devices, wherever they are connected.
///
/// ```
/// assert_eq!(switchboard::redis::user_room("42"), "user:42");
/// ```
pub fn user_room(user: &str) -> String {
    format!("user:{user}")
}

/// Publishes to the rooms and broadcasts of a cluster of nodes from any
/// process: a web application, a job, a script. It needs no socket and no
/// hub, only Redis, and it receives nothing.
///
/// Messages go out in the same envelope nodes use (origin: the emitter's
/// own id, so no node mistakes them for its echo) and reach every member of
/// the room on every node, once. Each method returns how many nodes
/// received the message (the receiver count of Redis `PUBLISH`). For a room
/// that is the number of nodes where it has members, so `Ok(0)` from
/// [`to_user`](Self::to_user) means the user is not connected anywhere.
///
/// Failures are the broker's: while Redis is down every call fails at once
/// or within [`timeout`](RedisOptions::timeout), and the link comes back by
/// itself. A cheap `Clone` handle (an `Arc` inside); its background
/// watchdog stops when the last clone is dropped.
///
/// ```no_run
/// use switchboard::redis::{Emitter, RedisOptions};
/// use switchboard::Message;
///
/// # async fn run() -> Result<(), switchboard::BoxError> {
/// let emitter = Emitter::connect("redis://127.0.0.1:6379", RedisOptions::default()).await?;
/// emitter.publish("lobby", "the build is green").await?;
/// emitter.broadcast(Message::binary(vec![1u8, 2, 3])).await?;
/// if emitter.to_user("42", "you have mail").await? == 0 {
///     println!("user 42 is offline");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Emitter {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    channels: Channels,
    publisher: Arc<Publisher>,
    _stop: DropGuard,
}

impl Emitter {
    /// Connects to Redis at `url`; fails if it cannot be reached within
    /// [`timeout`](RedisOptions::timeout). Use the cluster's
    /// [`prefix`](RedisOptions::prefix). Needs a tokio runtime.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        let publisher = Publisher::connect(url, &options).await?;
        let stop = CancellationToken::new();
        tokio::spawn({
            let (publisher, stop) = (publisher.clone(), stop.clone());
            async move { publisher.watchdog(&stop).await }
        });
        Ok(Emitter {
            inner: Arc::new(Inner {
                id: options.node_id_or_random("emitter"),
                channels: Channels::new(&options.prefix),
                publisher,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The origin id this emitter puts in its envelopes.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Sends `msg` to every member of `room` on every node.
    pub async fn publish(&self, room: &str, msg: impl Into<Message>) -> Result<usize> {
        let channel = self.inner.channels.room(room);
        self.send(&channel, Topic::Room(room), msg.into()).await
    }

    /// Sends `msg` to every member of every node's hub
    /// ([`Hub::broadcast`](switchboard_core::Hub::broadcast) on all nodes).
    pub async fn broadcast(&self, msg: impl Into<Message>) -> Result<usize> {
        let channel = self.inner.channels.all().to_owned();
        self.send(&channel, Topic::All, msg.into()).await
    }

    /// Sends `msg` to every connection of `user`, on any node: the members
    /// of [`user_room(user)`](user_room).
    pub async fn to_user(&self, user: &str, msg: impl Into<Message>) -> Result<usize> {
        self.publish(&user_room(user), msg).await
    }

    /// Sends `msg` to `topic` on one node only (the node whose
    /// [`node_id`](crate::RedisBroker::node_id) is `node`), through its
    /// node channel. Returns 1 if that node is up, 0 if not.
    pub async fn to_node(
        &self,
        node: &str,
        topic: Topic<'_>,
        msg: impl Into<Message>,
    ) -> Result<usize> {
        let channel = self.inner.channels.node(node);
        self.send(&channel, topic, msg.into()).await
    }

    /// Whether the link to Redis is up, and the publish counters.
    pub fn status(&self) -> Status {
        let publisher = &self.inner.publisher;
        publisher.stats.status(publisher.is_up(), 0)
    }

    async fn send(&self, channel: &str, topic: Topic<'_>, msg: Message) -> Result<usize> {
        let payload = envelope::encode(&self.inner.id, topic, None, &msg)?;
        self.inner.publisher.publish(channel, &payload).await
    }
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("id", &self.inner.id)
            .field("status", &self.status())
            .finish()
    }
}
