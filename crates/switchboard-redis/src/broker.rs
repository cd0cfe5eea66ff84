//! [`RedisBroker`]: the core's [`Broker`] on Redis pub/sub.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::rooms::RoomStore;
use switchboard_core::{Broker, ConnectionId, LocalBroker, LocalDelivery, Message, Topic};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::envelope;
use crate::error::{Result, bounded};
use crate::options::RedisOptions;
use crate::presence::Presence;
use crate::publisher::Publisher;
use crate::store::RedisStore;
use crate::subscriber::Subscriber;

/// A snapshot of a broker's (or an emitter's) links and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// Both links to Redis are up: publishes go out and every room with
    /// local members is subscribed. `false` during an outage (local
    /// delivery goes on regardless).
    pub connected: bool,
    /// Rooms this node is subscribed to (or will resubscribe to once the
    /// link is back): the rooms with local members.
    pub rooms: usize,
    /// Messages handed to Redis.
    pub published: u64,
    /// Publishes that failed (Redis down or slow); each returned an error.
    pub publish_errors: u64,
    /// Messages from Redis delivered to local members: other nodes' (and
    /// emitters') publishes, and every room message with history and
    /// presence change, this node's own included (those all come back
    /// through Redis, in the order it recorded them).
    pub received: u64,
    /// Envelopes refused as malformed, of an unknown version, or on the
    /// wrong channel.
    pub invalid: u64,
    /// Links re-established after a loss (subscription and publish links).
    pub reconnects: u64,
}

/// The core's [`Broker`] on Redis: rooms and broadcasts reach the members
/// of every node of the cluster. A node subscribes to a room's channel
/// (named after the [`prefix`](RedisOptions::prefix)) only while the room
/// has local members, so Redis sends it only what its members need.
///
/// # Delivery
///
/// [`publish`](Broker::publish) wraps the message in an envelope (version,
/// origin node id, room, except-connection id, payload kind and bytes) and
/// publishes it. Every node subscribed to the channel delivers it to its
/// local members through the hub's [`LocalDelivery`]; the origin node,
/// whose members the hub served already, recognises its own id and drops
/// the echo. Each client therefore receives each message exactly once while
/// Redis is up; across nodes the guarantee is Redis pub/sub's: at most once
/// (a node that is disconnected when a message is published never sees
/// it). Text stays text and binary stays binary.
///
/// # Failures
///
/// - Local delivery never depends on Redis.
/// - While Redis is down, [`publish`](Broker::publish) fails at once (or,
///   on a link that stopped answering, within
///   [`timeout`](RedisOptions::timeout)) with the core's
///   [`Error::Broker`](switchboard_core::Error::Broker) wrapping this
///   crate's [`Error`](crate::Error). It never hangs.
/// - [`subscribe`](Broker::subscribe) and [`unsubscribe`](Broker::unsubscribe)
///   never fail because Redis is down: the change is recorded and applied
///   when the link is back. While the link is up they return once Redis
///   confirmed the change (at most the timeout), so a member that just
///   joined gets every message published after `join_room` returned.
/// - Both links reconnect by themselves, forever, with the backoff and the
///   watchdog pings of [`RedisOptions`], and the subscription link
///   resubscribes to every wanted room; [`status`](Self::status) tells
///   whether they are up.
///
/// A cheap `Clone` handle (an `Arc` inside): keep a clone to read the
/// status after giving one to the hub. The background task stops when the
/// last clone is dropped. One broker serves one hub. The
/// [crate docs](crate) run a node with it.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: Arc<Publisher>,
    subscriber: Arc<Subscriber>,
    store: Arc<RedisStore>,
    /// Stops the background task when the last handle goes.
    _stop: DropGuard,
}

impl RedisBroker {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host[:port][/db]`)
    /// and starts the background task that keeps both links alive.
    ///
    /// Fails if the URL or the options are invalid, or if Redis cannot be
    /// reached within [`timeout`](RedisOptions::timeout): a node should not
    /// start silently alone. Once connected, outages are survived.
    ///
    /// Needs a tokio runtime.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        let publisher = Publisher::connect(url, &options).await?;
        let subscriber = Arc::new(Subscriber::new(&publisher, options.clone()));
        let presence = Arc::new(Presence::new(
            publisher.clone(),
            subscriber.clone(),
            &options,
        ));
        let store = Arc::new(RedisStore::new(
            publisher.clone(),
            subscriber.clone(),
            presence.clone(),
            &options,
        ));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (publisher, subscriber, stop) =
                (publisher.clone(), subscriber.clone(), stop.clone());
            async move {
                tokio::join!(subscriber.run(&publisher, &stop), publisher.watchdog(&stop));
            }
        });
        // Its own task: a long re-add of members never delays the links.
        tokio::spawn({
            let stop = stop.clone();
            async move { presence.run(&stop).await }
        });
        let guard = stop.drop_guard();

        let mut applied = subscriber.applied.subscribe();
        let up = applied.wait_for(|a| a.up);
        bounded("SUBSCRIBE", options.timeout * 2, up)
            .await
            .map_err(|err| err.connecting_to(url))?;
        tracing::info!(node = %subscriber.node_id, "redis broker connected");
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                publisher,
                subscriber,
                store,
                _stop: guard,
            }),
        })
    }

    /// This node's id in the cluster (see [`RedisOptions::node_id`]).
    pub fn node_id(&self) -> &str {
        &self.inner.subscriber.node_id
    }

    /// Whether both links are up and the counters so far.
    pub fn status(&self) -> Status {
        let (publisher, subscriber) = (&self.inner.publisher, &self.inner.subscriber);
        let connected = subscriber.is_up() && publisher.is_up();
        publisher.stats.status(connected, subscriber.rooms())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn attach(&self, local: LocalDelivery) {
        if self.inner.subscriber.local.set(local).is_err() {
            tracing::warn!(
                node = %self.inner.subscriber.node_id,
                "a RedisBroker serves one hub; this second hub receives nothing from other nodes"
            );
        }
    }

    async fn subscribe(&self, room: &str) -> switchboard_core::Result<()> {
        self.inner.subscriber.want(room, true).await;
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> switchboard_core::Result<()> {
        self.inner.subscriber.want(room, false).await;
        Ok(())
    }

    async fn publish(
        &self,
        topic: Topic<'_>,
        msg: Message,
        except: Option<ConnectionId>,
    ) -> switchboard_core::Result<()> {
        let channel = match topic {
            Topic::All => self.inner.subscriber.channels.all().to_owned(),
            Topic::Room(room) => self.inner.subscriber.channels.room(room),
        };
        let except = except.map(ConnectionId::as_u64);
        let payload = envelope::encode(&self.inner.subscriber.node_id, topic, except, &msg)?;
        self.inner.publisher.publish(&channel, &payload).await?;
        Ok(())
    }

    /// Presence and history in Redis, shared by every node on it (keys
    /// and scripts in `docs/scaling.md`).
    fn room_store(&self) -> Option<Arc<dyn RoomStore>> {
        // Recorded traffic reaches only the hub attached first.
        if self.inner.subscriber.local.get().is_some() {
            tracing::warn!(
                node = %self.inner.subscriber.node_id,
                "a RedisBroker serves one hub; this second hub keeps presence and history in its own memory"
            );
            return None;
        }
        Some(self.inner.store.clone())
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node_id", &self.inner.subscriber.node_id)
            .field("status", &self.status())
            .finish()
    }
}

/// The broker for a node started with an optional Redis URL: a
/// [`RedisBroker`] when there is one, the in-process [`LocalBroker`]
/// (one node, no set-up) when there is none.
///
/// ```no_run
/// use switchboard::redis::{broker_from_url, RedisOptions};
/// use switchboard::Hub;
///
/// # async fn run() -> Result<(), switchboard::BoxError> {
/// // e.g. from a `--redis URL` flag or the REDIS_URL environment variable
/// let url = std::env::var("REDIS_URL").ok();
/// let hub = Hub::with_broker(broker_from_url(url.as_deref(), RedisOptions::default()).await?);
/// # drop(hub);
/// # Ok(())
/// # }
/// ```
pub async fn broker_from_url(url: Option<&str>, options: RedisOptions) -> Result<Arc<dyn Broker>> {
    Ok(match url {
        None => Arc::new(LocalBroker),
        Some(url) => Arc::new(RedisBroker::connect(url, options).await?),
    })
}
