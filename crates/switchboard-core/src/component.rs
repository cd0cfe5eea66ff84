//! The trait a user implements: one value serves every connection.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::close::{CloseCode, CloseReason};
use crate::connection::Connection;
use crate::error::{BoxError, Error};
use crate::message::Message;

/// The application: one value serves every connection of a server, the way a
/// Ratchet component object does. Shared state (a [`Hub`](crate::Hub), a map
/// behind a lock) lives inside it; methods take `&self`.
///
/// Only [`on_message`](Self::on_message) is required. The handlers are
/// written as plain `async fn`s; each returns a future that borrows the
/// component and the connection, and must be `Send` (connection tasks are
/// spawned with `tokio::spawn`). Servers call them directly, with no box
/// and no dynamic call per message: the running `on_message` future is
/// held inside the connection's task, so what it keeps across an `.await`
/// counts towards every connection's memory (box a large one yourself:
/// `Box::pin(work).await`). Components of different types are held
/// together as [`DynComponent`]s.
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
/// use switchboard::{BoxError, Connection, DynComponent, Message, MessageComponent};
///
/// struct Echo;
///
/// impl MessageComponent for Echo {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         conn.send(msg)?;
///         Ok(())
///     }
/// }
///
/// let _object: std::sync::Arc<dyn DynComponent> = std::sync::Arc::new(Echo);
/// ```
///
/// A handler whose future is not `Send`, because it holds a
/// `std::sync::MutexGuard` (or an `Rc`) across an `.await`, is refused at
/// the `impl`; take what you need out of the guard first, or use
/// `tokio::sync::Mutex`:
///
/// ```compile_fail
/// use std::sync::Mutex;
/// use switchboard::{BoxError, Connection, Hub, Message, MessageComponent};
///
/// struct Log {
///     lines: Mutex<Vec<String>>,
///     hub: Hub,
/// }
///
/// impl MessageComponent for Log {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         let mut lines = self.lines.lock().unwrap();
///         lines.push(format!("{msg:?}"));
///         self.hub.broadcast_except(msg, conn.id()).await?; // the guard is still held
///         Ok(())
///     }
/// }
/// ```
pub trait MessageComponent: Send + Sync + 'static {
    /// A connection opened. Return an error to reject it: it is closed (1008)
    /// and `on_close` still runs with [`CloseReason::Rejected`].
    fn on_open<'a>(
        &'a self,
        conn: &'a Connection,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a {
        let _ = conn;
        std::future::ready(Ok(()))
    }

    /// A message arrived.
    fn on_message<'a>(
        &'a self,
        conn: &'a Connection,
        msg: Message,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a;

    /// The connection ended; runs exactly once per opened connection. Sending
    /// on `conn` fails from here on, but other connections can be told.
    fn on_close<'a>(
        &'a self,
        conn: &'a Connection,
        reason: CloseReason,
    ) -> impl Future<Output = ()> + Send + 'a {
        let _ = (conn, reason);
        std::future::ready(())
    }

    /// A transport or protocol error, an error returned by a handler, or a
    /// caught panic. The default logs it with `tracing` and closes the
    /// connection with 1011 (a no-op when it is already closing).
    fn on_error<'a>(
        &'a self,
        conn: &'a Connection,
        err: Error,
    ) -> impl Future<Output = ()> + Send + 'a {
        tracing::warn!(conn = %conn.id(), peer = %conn.peer_addr(), error = %err, "connection error");
        conn.close_with(CloseCode::ERROR, "internal error");
        std::future::ready(())
    }
}

/// A [`MessageComponent`] as a trait object: each handler's future boxed.
///
/// Implemented for every component, and `dyn DynComponent` is itself a
/// `MessageComponent`, so `Arc<dyn DynComponent>` goes wherever a
/// component does (the [`IntoComponent`] example routes one). It is what
/// holds components of different types together, as WebSocket routes do;
/// each message then costs one allocation and one dynamic call more than a
/// component served directly.
pub trait DynComponent: Send + Sync + 'static {
    /// [`MessageComponent::on_open`], boxed.
    fn on_open_boxed<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, Result<(), BoxError>>;

    /// [`MessageComponent::on_message`], boxed.
    fn on_message_boxed<'a>(
        &'a self,
        conn: &'a Connection,
        msg: Message,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// [`MessageComponent::on_close`], boxed.
    fn on_close_boxed<'a>(&'a self, conn: &'a Connection, reason: CloseReason)
    -> BoxFuture<'a, ()>;

    /// [`MessageComponent::on_error`], boxed.
    fn on_error_boxed<'a>(&'a self, conn: &'a Connection, err: Error) -> BoxFuture<'a, ()>;
}

impl<T: MessageComponent> DynComponent for T {
    fn on_open_boxed<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.on_open(conn))
    }

    fn on_message_boxed<'a>(
        &'a self,
        conn: &'a Connection,
        msg: Message,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.on_message(conn, msg))
    }

    fn on_close_boxed<'a>(
        &'a self,
        conn: &'a Connection,
        reason: CloseReason,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.on_close(conn, reason))
    }

    fn on_error_boxed<'a>(&'a self, conn: &'a Connection, err: Error) -> BoxFuture<'a, ()> {
        Box::pin(self.on_error(conn, err))
    }
}

impl MessageComponent for dyn DynComponent {
    fn on_open<'a>(
        &'a self,
        conn: &'a Connection,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a {
        self.on_open_boxed(conn)
    }

    fn on_message<'a>(
        &'a self,
        conn: &'a Connection,
        msg: Message,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a {
        self.on_message_boxed(conn, msg)
    }

    fn on_close<'a>(
        &'a self,
        conn: &'a Connection,
        reason: CloseReason,
    ) -> impl Future<Output = ()> + Send + 'a {
        self.on_close_boxed(conn, reason)
    }

    fn on_error<'a>(
        &'a self,
        conn: &'a Connection,
        err: Error,
    ) -> impl Future<Output = ()> + Send + 'a {
        self.on_error_boxed(conn, err)
    }
}

/// A component, or a shared handle to one: what every function that serves
/// a component takes (`WsTransport::new` and its routes, the `TcpTransport`
/// constructors, the clients' `connect` and `reconnecting`,
/// `TestServer::new`).
///
/// Three kinds of value qualify:
///
/// - the component itself, a `K`;
/// - an `Arc<K>`, when one component value serves several listeners or
///   clients (WebSocket and TCP peers meeting in one chat) or stays
///   reachable from other code;
/// - an `Arc<dyn DynComponent>`, a component chosen at run time.
///
/// `K` is inferred from the argument, so callers never name this trait. It
/// is sealed: these three implementations are all there is. A plain
/// `impl Into<Arc<K>>` would not do, because an `Arc<Chat>` converts into
/// both `Arc<Chat>` and `Arc<Arc<Chat>>` (so `K` could not be inferred),
/// and a component value does not convert into `Arc<dyn DynComponent>`.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use switchboard::tcp::TcpTransport;
/// use switchboard::ws::WsTransport;
/// use switchboard::{BoxError, Connection, DynComponent, Hub, Message, MessageComponent, Server};
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
///
/// struct Echo;
///
/// impl MessageComponent for Echo {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         conn.send(msg)?;
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), BoxError> {
/// // One chat for WebSocket and TCP peers: share it through an `Arc`.
/// let chat = Arc::new(Chat::default());
/// // A component picked at run time.
/// let echo: Arc<dyn DynComponent> = Arc::new(Echo);
/// let ws = WsTransport::builder()
///     .route("/chat", chat.clone())
///     .route("/echo", echo)
///     .build()?;
/// let server = Server::builder()
///     .bind("127.0.0.1:8080", ws)
///     .bind("127.0.0.1:7000", TcpTransport::lines(chat))
///     .bind("127.0.0.1:7001", TcpTransport::lines(Echo))
///     .start()
///     .await?;
/// # let _ = server;
/// # Ok(())
/// # }
/// ```
pub trait IntoComponent<K: ?Sized>: Send + sealed::Sealed<K> {
    /// The component behind an `Arc`; a plain value is moved into a new one.
    fn into_arc(self) -> Arc<K>;

    /// The component as a trait object, for holders of components of
    /// several types (WebSocket routes).
    fn into_dyn(self) -> Arc<dyn DynComponent>;
}

mod sealed {
    /// Keeps [`IntoComponent`](super::IntoComponent) to the implementations
    /// in this module.
    pub trait Sealed<K: ?Sized> {}
}

impl<K: MessageComponent> sealed::Sealed<K> for K {}

impl<K: MessageComponent> IntoComponent<K> for K {
    fn into_arc(self) -> Arc<K> {
        Arc::new(self)
    }

    fn into_dyn(self) -> Arc<dyn DynComponent> {
        Arc::new(self)
    }
}

impl<K: MessageComponent> sealed::Sealed<K> for Arc<K> {}

impl<K: MessageComponent> IntoComponent<K> for Arc<K> {
    fn into_arc(self) -> Arc<K> {
        self
    }

    fn into_dyn(self) -> Arc<dyn DynComponent> {
        self
    }
}

impl sealed::Sealed<dyn DynComponent> for Arc<dyn DynComponent> {}

impl IntoComponent<dyn DynComponent> for Arc<dyn DynComponent> {
    fn into_arc(self) -> Arc<dyn DynComponent> {
        self
    }

    fn into_dyn(self) -> Arc<dyn DynComponent> {
        self
    }
}
