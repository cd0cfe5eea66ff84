//! The trait a user implements: one value serves every connection.

use async_trait::async_trait;

use crate::close::{CloseCode, CloseReason};
use crate::connection::Connection;
use crate::error::{BoxError, Error};
use crate::message::Message;

/// The application: one value serves every connection of a server, the way a
/// Ratchet component object does. Shared state (a [`Hub`](crate::Hub), a map
/// behind a lock) lives inside it; methods take `&self`.
///
/// Only [`on_message`](Self::on_message) is required. The trait is
/// object-safe; servers hold components as `Arc<dyn MessageComponent>`.
///
/// # Ordering
///
/// - `on_open` runs exactly once, before any `on_message` of that connection.
/// - `on_message` runs once per inbound message, in arrival order, one at a
///   time per connection. Different connections run in parallel.
/// - `on_close` runs exactly once for every connection that reached
///   `on_open`, whatever ended it, after its last `on_message`.
///
/// # Back-pressure
///
/// The next message of a connection is not read from the socket until
/// `on_message` returns, so a slow handler slows that peer down (through
/// TCP flow control) rather than buffering its messages. Outbound,
/// [`Connection::send`] never blocks: it queues into a bounded queue drained
/// by the connection's own task, and a peer that does not read is dealt with
/// by [`Config::slow_consumer`](crate::Config::slow_consumer).
///
/// # Errors and panics
///
/// `on_open` returning an error rejects the connection. An error returned by
/// `on_message` goes to `on_error`, whose default logs it and closes the
/// connection with 1011; override `on_error` to keep such connections open.
/// A panic in any handler is caught: `on_error` receives [`Error::Panic`], the
/// connection closes with 1011 and every other connection carries on.
///
/// ```
/// use switchboard::{async_trait, BoxError, Connection, Message, MessageComponent};
///
/// struct Echo;
///
/// #[async_trait]
/// impl MessageComponent for Echo {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         conn.send(msg)?;
///         Ok(())
///     }
/// }
///
/// let _object: std::sync::Arc<dyn MessageComponent> = std::sync::Arc::new(Echo);
/// ```
#[async_trait]
pub trait MessageComponent: Send + Sync + 'static {
    /// A connection opened. Return an error to reject it: it is closed (1008)
    /// and `on_close` still runs with [`CloseReason::Rejected`].
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let _ = conn;
        Ok(())
    }

    /// A message arrived.
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError>;

    /// The connection ended; runs exactly once per opened connection. Sending
    /// on `conn` fails from here on, but other connections can be told.
    async fn on_close(&self, conn: &Connection, reason: CloseReason) {
        let _ = (conn, reason);
    }

    /// A transport or protocol error, an error returned by a handler, or a
    /// caught panic. The default logs it with `tracing` and closes the
    /// connection with 1011 (a no-op when it is already closing).
    async fn on_error(&self, conn: &Connection, err: Error) {
        tracing::warn!(conn = %conn.id(), peer = %conn.peer_addr(), error = %err, "connection error");
        conn.close_with(CloseCode::ERROR, "internal error");
    }
}
