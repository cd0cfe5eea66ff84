//! The core of switchboard: the [`MessageComponent`] trait, the
//! [`Connection`] handle, [`Message`], the server runtime and fan-out
//! ([`Hub`], rooms, [`Broker`]).
//!
//! Most users depend on the `switchboard` facade crate, which re-exports all
//! of this together with the transports.
//!
//! The crate root holds what an application uses: a component, a server or
//! client, limits, fan-out. What a transport crate needs (the
//! [`Transport`](transport::Transport) trait, client plumbing) is in
//! [`transport`].
//!
//! # Layout
//!
//! - `component`, `message`, `close`, `error`, `config`: the vocabulary;
//! - `connection`: the handle a component sends and closes through;
//! - `outbox`: each connection's bounded outbound queue and close signals;
//! - `server`: listeners, limits, shutdown; `server/driver.rs` runs one
//!   connection from `on_open` to `on_close`;
//! - [`transport`]: the seam a transport implements, and `transport::io`,
//!   the buffers, timer and connects the WebSocket and TCP transports share;
//! - `client`, `reconnect`: components on the client side;
//! - `hub`: fan-out to sets and rooms, through a [`Broker`];
//! - [`rooms`]: presence, history and recovery for the hub's rooms;
//! - `testing` (feature `test-util`): in-memory connections for unit tests.

#![cfg_attr(docsrs, feature(doc_cfg))]

/// Chainable setters for a settings struct: `name(value)` sets the public
/// field `name`, whose doc says what it means.
macro_rules! setters {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets [`", stringify!($name), "`](field@Self::", stringify!($name), ").")]
            #[must_use]
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

mod auth;
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
mod outbox;
mod reconnect;
pub mod rooms;
mod server;
mod stats;
#[cfg(test)]
mod test_support;
pub mod transport;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

// What an application uses. The `switchboard` facade re-exports these by
// name, so a name added here is added there too.

/// For implementing [`Broker`], whose methods are `async-trait` methods (a hub
/// holds its broker as an `Arc<dyn Broker>`).
pub use async_trait::async_trait;
pub use bytes::Bytes;

pub use auth::{Authenticated, Authenticator};
pub use client::ClientHandle;
pub use close::{CloseCode, CloseFrame, CloseReason};
pub use component::{DynComponent, IntoComponent, MessageComponent};
pub use config::{Config, SlowConsumerPolicy, TcpKeepalive};
pub use connection::{Connection, ConnectionId};
pub use error::{BoxError, Error, Result, SendError};
pub use extensions::Extensions;
pub use hub::{Broker, Hub, HubBuilder, IntoBroker, LocalBroker, LocalDelivery, Topic};
pub use limits::{IpFilter, IpNet, IpNetParseError, RateLimit, RateLimitAction};
pub use message::{Message, Utf8Bytes};
pub use reconnect::{Reconnect, ReconnectEnd, ReconnectPolicy, Reconnecting};
pub use server::{Refusal, Reservation, Server, ServerBuilder, ServerHandle};
pub use stats::Counters;
pub use transport::{Headers, TransportInfo};
