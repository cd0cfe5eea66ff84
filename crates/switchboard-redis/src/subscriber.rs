//! The subscribing link: a dedicated pub/sub connection owned by one task
//! that reconnects and resubscribes by itself, for as long as the broker
//! lives.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::{Client, Msg};
use switchboard_core::LocalDelivery;
use tokio::sync::{Notify, watch};
use tokio::time::{MissedTickBehavior, interval_at, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::envelope;
use crate::error::{Error, Result, bounded};
use crate::options::{Channels, RedisOptions};
use crate::presence;
use crate::publisher::{Publisher, Stats};

/// Most channels named in one `SUBSCRIBE`/`UNSUBSCRIBE` command.
const CHUNK: usize = 512;

/// What the subscriber task has put in place at Redis.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Applied {
    /// The link is up and every room wanted at `generation` is subscribed.
    pub(crate) up: bool,
    pub(crate) generation: u64,
}

/// The rooms this node wants, as the hub reported them.
#[derive(Default)]
struct Wanted {
    /// Each room with the generation that added it.
    rooms: HashMap<String, u64>,
    /// Rooms whose wanted state changed since the task last looked, so that
    /// a change costs O(1), not a diff of every room.
    dirty: HashSet<String>,
    /// Bumped at every change; the task reports the generation it applied.
    generation: u64,
}

pub(crate) struct Subscriber {
    client: Client,
    options: RedisOptions,
    pub(crate) channels: Channels,
    /// This node's id: the origin of its envelopes, the name of its channel.
    pub(crate) node_id: Arc<str>,
    /// This process's name in room presence (the node id and a random
    /// part: see `presence.rs`).
    pub(crate) instance: Arc<str>,
    node_channel: String,
    /// Where remote messages go; set once by `Broker::attach`.
    pub(crate) local: OnceLock<LocalDelivery>,
    /// A std mutex: held for set operations only, never across an `.await`.
    wanted: Mutex<Wanted>,
    /// Wakes the task when `wanted` changed.
    changed: Notify,
    pub(crate) applied: watch::Sender<Applied>,
    stats: Arc<Stats>,
}

impl Subscriber {
    /// The subscribing side of `publisher`'s broker: the same Redis, the
    /// same counters.
    pub(crate) fn new(publisher: &Publisher, options: RedisOptions) -> Self {
        let node_id: Arc<str> = options.node_id_or_random("node").into();
        let channels = Channels::new(&options.prefix);
        Subscriber {
            client: publisher.client.clone(),
            node_channel: channels.node(&node_id),
            instance: presence::instance_id(&node_id).into(),
            options,
            channels,
            node_id,
            local: OnceLock::new(),
            wanted: Mutex::default(),
            changed: Notify::new(),
            applied: watch::Sender::new(Applied::default()),
            stats: publisher.stats.clone(),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.applied.borrow().up
    }

    pub(crate) fn rooms(&self) -> usize {
        self.lock().rooms.len()
    }

    /// Whether the link is up and `room`'s subscription is in place at
    /// Redis: live traffic of the room reaches this node.
    pub(crate) fn in_effect(&self, room: &str) -> bool {
        let Some(added) = self.lock().rooms.get(room).copied() else {
            return false;
        };
        let applied = *self.applied.borrow();
        applied.up && applied.generation >= added
    }

    /// Records that this node wants (or no longer wants) `room`, then waits
    /// (at most the timeout) until the task has applied it at Redis. While
    /// the link is down it returns at once: the change is applied by the
    /// resubscription when the link is back.
    pub(crate) async fn want(&self, room: &str, on: bool) {
        let generation = {
            let mut wanted = self.lock();
            let changed = if on {
                !wanted.rooms.contains_key(room)
            } else {
                wanted.rooms.remove(room).is_some()
            };
            if changed {
                wanted.generation += 1;
                let generation = wanted.generation;
                if on {
                    wanted.rooms.insert(room.to_owned(), generation);
                }
                wanted.dirty.insert(room.to_owned());
            }
            wanted.generation
        };
        self.changed.notify_one();
        let mut applied = self.applied.subscribe();
        let done = applied.wait_for(|a| !a.up || a.generation >= generation);
        if timeout(self.options.timeout, done).await.is_err() {
            tracing::warn!(
                room,
                subscribe = on,
                "redis did not confirm the subscription change in time; it is applied when the link answers"
            );
        }
    }

    /// The task: one session per connection, forever, with capped
    /// exponential backoff between failed attempts.
    pub(crate) async fn run(&self, publisher: &Publisher, stop: &CancellationToken) {
        let mut backoff = self.options.reconnect_min;
        let mut sessions = 0u64;
        loop {
            let Err(ended) = tokio::select! {
                _ = stop.cancelled() => return,
                ended = self.session(sessions, publisher) => ended,
            };
            let was_up = self
                .applied
                .send_if_modified(|a| std::mem::replace(&mut a.up, false));
            if was_up {
                sessions += 1;
                backoff = self.options.reconnect_min;
                tracing::warn!(error = %ended, "redis subscription link lost; reconnecting");
            } else {
                tracing::debug!(error = %ended, ?backoff, "redis subscription link: reconnect failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(backoff) => {}
            }
            if !was_up {
                backoff = (backoff * 2).min(self.options.reconnect_max);
            }
        }
    }

    /// One connection: subscribe to everything wanted, then deliver,
    /// reconcile and ping until the link fails, which is how it ends.
    async fn session(&self, previous: u64, publisher: &Publisher) -> Result<Infallible> {
        let t = self.options.timeout;
        let pubsub = bounded("CONNECT", t, self.client.get_async_pubsub()).await?;
        let (mut sink, mut stream) = pubsub.split();

        let (mut subscribed, generation) = {
            let mut wanted = self.lock();
            wanted.dirty.clear();
            (
                wanted.rooms.keys().cloned().collect::<HashSet<_>>(),
                wanted.generation,
            )
        };
        let mut channels = vec![self.channels.all().to_owned(), self.node_channel.clone()];
        channels.extend(subscribed.iter().map(|room| self.channels.room(room)));
        self.command(&mut sink, true, channels).await?;
        self.applied.send_replace(Applied {
            up: true,
            generation,
        });
        if previous > 0 {
            self.stats.reconnects.fetch_add(1, Relaxed);
            // Redis is back: let the publish link reconnect now rather
            // than at the end of its backoff.
            publisher.broken.notify_one();
            tracing::info!(
                rooms = subscribed.len(),
                "redis subscription link re-established; resubscribed"
            );
        }

        let control = async {
            let period = self.options.ping_interval;
            let mut ping = interval_at(tokio::time::Instant::now() + period, period);
            ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = self.changed.notified() => self.reconcile(&mut sink, &mut subscribed).await?,
                    _ = ping.tick() => {
                        bounded("PING", t, sink.ping::<redis::Value>()).await?;
                    }
                }
            }
        };
        let pump = async {
            while let Some(msg) = stream.next().await {
                self.on_message(&msg);
            }
            Error::unavailable("redis closed the subscription connection")
        };
        tokio::select! {
            res = control => res,
            err = pump => Err(err),
        }
    }

    /// Applies the rooms whose wanted state changed.
    async fn reconcile(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
    ) -> Result<()> {
        let (add, remove, generation): (Vec<_>, Vec<_>, _) = {
            let mut wanted = self.lock();
            let dirty = std::mem::take(&mut wanted.dirty);
            let (add, remove) = dirty
                .into_iter()
                .filter(|room| wanted.rooms.contains_key(room) != subscribed.contains(room))
                .partition(|room| wanted.rooms.contains_key(room));
            (add, remove, wanted.generation)
        };
        let names = add.iter().map(|r| self.channels.room(r)).collect();
        self.command(sink, true, names).await?;
        subscribed.extend(add);
        let names = remove.iter().map(|r| self.channels.room(r)).collect();
        self.command(sink, false, names).await?;
        for room in &remove {
            subscribed.remove(room);
        }
        self.applied.send_replace(Applied {
            up: true,
            generation,
        });
        Ok(())
    }

    /// `SUBSCRIBE`/`UNSUBSCRIBE` in chunks, each confirmed within the
    /// timeout; nothing for no channels.
    async fn command(
        &self,
        sink: &mut PubSubSink,
        subscribe: bool,
        channels: Vec<String>,
    ) -> Result<()> {
        let t = self.options.timeout;
        for chunk in channels.chunks(CHUNK) {
            if subscribe {
                bounded("SUBSCRIBE", t, sink.subscribe(chunk)).await?;
            } else {
                bounded("UNSUBSCRIBE", t, sink.unsubscribe(chunk)).await?;
            }
        }
        Ok(())
    }

    /// One message from Redis: check it, drop our own echo, deliver.
    fn on_message(&self, msg: &Msg) {
        let channel = msg.get_channel_name();
        // The one copy of a received payload: redis-rs owns its buffer.
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        let env = match envelope::decode(payload) {
            Ok(env) => env,
            Err(err) => {
                self.stats.invalid.fetch_add(1, Relaxed);
                tracing::debug!(channel, error = %err, "dropped an invalid envelope");
                return;
            }
        };
        // Recorded room traffic comes back to every node, its origin too:
        // each node delivers it in the order Redis recorded it.
        let recorded = env.position.is_some() || env.presence;
        if !recorded && &env.origin[..] == self.node_id.as_bytes() {
            // Our own publish: local members had it before it left.
            return;
        }
        // A room or broadcast envelope must match its channel; the node
        // channel carries either; recorded traffic only comes on rooms.
        let matches = match self.channels.room_of(channel) {
            Some(room) => env.room.as_deref() == Some(room),
            None if recorded => false,
            None => {
                channel == self.node_channel
                    || (channel == self.channels.all() && env.room.is_none())
            }
        };
        if !matches {
            self.stats.invalid.fetch_add(1, Relaxed);
            tracing::debug!(
                channel,
                "dropped an envelope whose topic does not match its channel"
            );
            return;
        }
        let Some(local) = self.local.get() else {
            return;
        };
        match (&env.room, env.position) {
            (Some(room), Some(position)) => {
                local.deliver_entry(room, position, &env.message);
            }
            (Some(room), None) if env.presence => {
                if !presence::deliver_presence(local, &self.instance, room, env.message.as_bytes())
                {
                    self.stats.invalid.fetch_add(1, Relaxed);
                    tracing::debug!(channel, "dropped a malformed presence change");
                    return;
                }
            }
            // `except` names a connection of the origin node, which delivered
            // locally already; connection ids mean nothing on other nodes.
            _ => {
                local.deliver(env.topic(), &env.message, None);
            }
        }
        self.stats.received.fetch_add(1, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }
}
