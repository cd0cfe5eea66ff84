//! Scale-out for switchboard on Redis pub/sub: several nodes behind a load
//! balancer form one set of rooms, and any process can push to connected
//! clients.
//!
//! Most users reach this crate as `switchboard::redis` (feature `redis` of
//! the `switchboard` crate).
//!
//! - [`RedisBroker`] is the core's [`Broker`]: give it to a [`Hub`] and
//!   [`Hub::publish`], [`Hub::broadcast`] and their `_except` forms reach
//!   the members of every node. Component code does not change. Room
//!   presence and history ([`Hub::join_room_with`], [`Hub::append`]) are
//!   shared by every node too, in Redis (`docs/scaling.md` lists the keys).
//! - [`Emitter`] publishes into the cluster from a process without sockets
//!   (a web application, a job), to a room, to everyone, or to one user's
//!   connections ([`user_room`]).
//! - [`broker_from_url`] picks the broker at start-up: Redis when a URL is
//!   given, the in-process [`LocalBroker`](switchboard_core::LocalBroker)
//!   (zero set-up, one node) when not.
//! - [`Topics`] is a ready-made pub/sub component with a line protocol
//!   (`SUB`, `UNSUB`, `PUB`), the one the `pubsub` example serves.
//!
//! # A node
//!
//! ```no_run
//! use switchboard::redis::{RedisBroker, RedisOptions};
//! use switchboard::ws::WsTransport;
//! use switchboard::{BoxError, Connection, Hub, Message, MessageComponent, Server};
//!
//! struct Chat {
//!     hub: Hub,
//! }
//!
//! impl MessageComponent for Chat {
//!     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
//!         self.hub.join_room("lobby", conn).await?;
//!         Ok(())
//!     }
//!
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         // Reaches the lobby on every node. If Redis is down, the local
//!         // members still got it: log and carry on rather than closing.
//!         if let Err(err) = self.hub.publish_except("lobby", msg, conn.id()).await {
//!             tracing::warn!(%err, "not delivered to other nodes");
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), BoxError> {
//! let broker = RedisBroker::connect("redis://127.0.0.1:6379", RedisOptions::default()).await?;
//! let hub = Hub::with_broker(broker.clone());
//! let ws = WsTransport::builder().route("/chat", Chat { hub }).build()?;
//! let server = Server::builder().bind("0.0.0.0:8080", ws).start().await?;
//! // broker.status() tells whether Redis is reachable, with counters.
//! # server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Pushing from elsewhere
//!
//! Inside a node, the [`Hub`] is a cheap `Clone` handle usable from any
//! tokio task, not only from handlers: an HTTP handler, a timer, a queue
//! consumer. With a `RedisBroker` behind it, what it publishes reaches
//! every node.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard::Hub;
//!
//! # fn run(hub: Hub) {
//! let clock = hub.clone();
//! tokio::spawn(async move {
//!     let mut tick = tokio::time::interval(Duration::from_secs(60));
//!     loop {
//!         tick.tick().await;
//!         // Err only means other nodes missed it (Redis down).
//!         let _ = clock.publish("lobby", "a minute passed").await;
//!     }
//! });
//! // In an axum handler: `State(hub): State<Hub>` then
//! // `hub.publish(&switchboard::redis::user_room(&id), body).await`.
//! # }
//! ```
//!
//! A process that has no hub (a web application behind another server, a
//! cron job) uses an [`Emitter`].
//!
//! # How it talks to Redis
//!
//! Each broker keeps two connections: one multiplexed connection (redis-rs
//! `MultiplexedConnection`) shared by every publishing task, and one
//! dedicated pub/sub connection (redis-rs `PubSub`, RESP2 or RESP3 as the
//! URL says) owned by a background task that delivers what arrives to the
//! hub. A dedicated pub/sub connection rather than RESP3 pushes on the
//! shared one works with every Redis version and fork, and a flood of
//! incoming messages never delays outgoing publishes behind it.
//!
//! The broker supervises both links itself, with no attempt limit, rather
//! than through redis-rs's `ConnectionManager` (`docs/scaling.md` says why,
//! and describes the topology, the delivery guarantees and the envelope
//! format); [`RedisBroker`] says what this means during an outage.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod broker;
mod emitter;
mod envelope;
mod error;
mod options;
mod presence;
mod publisher;
mod store;
mod subscriber;
mod topics;

pub use broker::{RedisBroker, Status, broker_from_url};
pub use emitter::{Emitter, user_room};
pub use error::{Error, Result};
pub use options::{MAX_NODE_ID_LEN, RedisOptions};
pub use topics::{DEFAULT_MAX_SUBSCRIPTIONS, MAX_TOPIC_LEN, Topics};

#[cfg(doc)]
use switchboard_core::{Broker, Hub};
