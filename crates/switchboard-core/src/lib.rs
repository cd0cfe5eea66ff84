//! The core of switchboard: the [`MessageComponent`] trait, the
//! [`Connection`] handle, [`Message`], the server runtime and fan-out
//! ([`Hub`], rooms, [`Broker`]).
//!
//! Most users depend on the `switchboard` facade crate, which re-exports all
//! of this together with the transports.
//!
//! # Layout
//!
//! - `component`: the trait a user implements, with the lifecycle contract;
//! - `connection`: the cheap handle and its bounded outbound queue;
//! - `message`, `close`, `error`, `config`: the vocabulary;
//! - `transport`: the seam a transport crate implements;
//! - `server`: listeners, limits, the per-connection driver, shutdown;
//! - `limits`: IP filters and rate limits;
//! - `reconnect`: clients that reconnect with backoff ([`spawn_reconnecting`]);
//! - `hub`: fan-out to sets and rooms, through a [`Broker`];
//! - `testing` (feature `test-util`): in-memory connections for unit tests.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod close;
mod component;
mod config;
mod connection;
mod error;
mod extensions;
mod hub;
mod limits;
mod message;
mod reconnect;
mod server;
mod stats;
pub mod transport;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

/// For implementing [`Broker`], whose methods are `async-trait` methods (a hub
/// holds its broker as an `Arc<dyn Broker>`).
pub use async_trait::async_trait;
pub use bytes::Bytes;

pub use client::{ClientHandle, spawn_client};
pub use close::{CloseCode, CloseFrame, CloseReason};
pub use component::{DynComponent, MessageComponent};
pub use config::{Config, SlowConsumerPolicy};
pub use connection::{Connection, ConnectionId};
pub use error::{BoxError, Error, Result, SendError};
pub use extensions::Extensions;
pub use hub::{Broker, Hub, LocalBroker, LocalDelivery, Topic};
pub use limits::{IpFilter, IpNet, IpNetParseError, RateLimit, RateLimitAction};
pub use message::{Message, Utf8Bytes};
pub use reconnect::{
    Dialed, Reconnect, ReconnectEnd, ReconnectPolicy, Reconnecting, spawn_reconnecting,
};
pub use server::{Server, ServerBuilder, ServerHandle};
pub use stats::Counters;
pub use transport::{Accepted, Headers, Received, Transport, TransportConn, TransportInfo};
