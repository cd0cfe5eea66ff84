//! Authentication by the first message, on any transport.
//!
//! A WebSocket server can check a client before the upgrade (the
//! handshake hook of `switchboard::ws`). A raw TCP peer has no handshake,
//! and a WebSocket client may prefer to send its credentials once
//! connected (a browser cannot set headers): [`Authenticated`] wraps a
//! component so that the peer's first message must identify it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::close::{CloseCode, CloseFrame, CloseReason};
use crate::component::{IntoComponent, MessageComponent};
use crate::connection::Connection;
use crate::error::{BoxError, Error};
use crate::message::Message;

/// Checks the first message of a connection: the identity of the peer, or
/// the close frame that refuses it.
///
/// A closure `Fn(Connection, Message) -> impl Future<Output = Result<I,
/// CloseFrame>>` is one; implement the trait on a type of your own when the
/// check needs state of its own by reference (a user table, say).
pub trait Authenticator: Send + Sync + 'static {
    /// Who the peer is, stored as the connection's state: read it with
    /// [`Connection::extension`] (a clone) or
    /// [`Connection::with_extension`].
    type Identity: Send + Sync + 'static;

    /// Judges the first message. On `Err`, the connection closes with that
    /// frame (on raw TCP, the code and reason go to the log); anything
    /// sent on `conn` before returning reaches the peer first.
    fn authenticate(
        &self,
        conn: Connection,
        first: Message,
    ) -> impl Future<Output = Result<Self::Identity, CloseFrame>> + Send + '_;
}

impl<F, Fut, I> Authenticator for F
where
    F: Fn(Connection, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<I, CloseFrame>> + Send + 'static,
    I: Send + Sync + 'static,
{
    type Identity = I;

    fn authenticate(
        &self,
        conn: Connection,
        first: Message,
    ) -> impl Future<Output = Result<I, CloseFrame>> + Send + '_ {
        self(conn, first)
    }
}

/// A component whose connections must identify themselves with their
/// first message before the component hears of them.
///
/// Until the [`Authenticator`] accepts a connection, the wrapped
/// component sees nothing of it: no `on_open` (so it joins no room and
/// counts in no hub), no message, no `on_close`. Then the identity is
/// stored as the connection's state, the component's `on_open` runs, and
/// every later message goes to the component as usual. A refused peer is
/// closed with the authenticator's frame. [`timeout`](Self::timeout) (10 s
/// unless set) bounds both the wait for the first message and the
/// authenticator's judgement of it: past either, the peer is closed with
/// 1008 "authentication timed out". The server does not read a second
/// message while the first is being judged.
///
/// If the component's `on_open` fails, the connection is closed with 1008
/// "rejected" and the error goes to the component's `on_error`, as the
/// server does for a component served directly; `on_close` then gets
/// [`CloseReason::Local`] with that frame rather than
/// [`CloseReason::Rejected`].
///
/// Each message of an accepted connection costs one look into its state
/// (a lock and a map lookup) before the component's handler.
///
/// ```
/// use switchboard::testing::TestServer;
/// use switchboard::{
///     Authenticated, BoxError, CloseCode, CloseFrame, Connection, Message, MessageComponent,
/// };
///
/// #[derive(Clone)]
/// struct User(String);
///
/// struct Greeter;
///
/// impl MessageComponent for Greeter {
///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
///         let User(name) = conn.extension::<User>().ok_or("no user")?;
///         conn.send(format!("welcome, {name}"))?;
///         Ok(())
///     }
///
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         conn.send(msg)?;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // The first message is "LOGIN name secret".
/// let component = Authenticated::new(Greeter, |_conn: Connection, first: Message| async move {
///     let words: Vec<&str> = first.as_text().unwrap_or("").split(' ').collect();
///     match words[..] {
///         ["LOGIN", name, "secret"] => Ok(User(name.to_owned())),
///         _ => Err(CloseFrame::new(CloseCode::POLICY, "LOGIN name password, please")),
///     }
/// });
/// let server = TestServer::new(component);
/// let mut ann = server.connect().await;
/// ann.send("LOGIN ann secret").await;
/// assert_eq!(ann.recv().await, Some(Message::text("welcome, ann")));
/// ann.send("hi").await;
/// assert_eq!(ann.recv().await, Some(Message::text("hi")));
///
/// let mut eve = server.connect().await;
/// eve.send("hi").await;
/// let refused = eve.closed().await.expect("a close frame");
/// assert_eq!((refused.code, &*refused.reason), (CloseCode::POLICY, "LOGIN name password, please"));
/// # }
/// ```
pub struct Authenticated<K: ?Sized, A> {
    component: Arc<K>,
    authenticator: A,
    timeout: Duration,
}

/// The connection's state while its first message is awaited: the timer
/// that closes it if none comes.
struct Waiting(AbortHandle);

/// The connection's state once accepted.
struct Accepted;

impl<K: MessageComponent + ?Sized, A: Authenticator> Authenticated<K, A> {
    /// Wraps `component` (a value or an `Arc`, see [`IntoComponent`]):
    /// `authenticator` judges each connection's first message.
    pub fn new(component: impl IntoComponent<K>, authenticator: A) -> Self {
        Authenticated {
            component: component.into_arc(),
            authenticator,
            timeout: Duration::from_secs(10),
        }
    }

    /// How long a connection may take to send its first message.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn accepted(conn: &Connection) -> bool {
        conn.with_extension(|_: &mut Accepted| ()).is_some()
    }

    fn stop_timer(conn: &Connection) {
        if let Some(Waiting(timer)) = conn.remove_extension::<Waiting>() {
            timer.abort();
        }
    }
}

impl<K: MessageComponent + ?Sized, A: Authenticator> MessageComponent for Authenticated<K, A> {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let timeout = self.timeout;
        let waiting = conn.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            tracing::info!(conn = %waiting.id(), peer = %waiting.peer_addr(), ?timeout, "no authentication in time");
            waiting.close_with(CloseCode::POLICY, "authentication timed out");
        });
        conn.insert_extension(Waiting(timer.abort_handle()));
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        if Self::accepted(conn) {
            return self.component.on_message(conn, msg).await;
        }
        // The first message came: the judgement has a clock of its own (a
        // close requested while a handler runs waits for it to return).
        Self::stop_timer(conn);
        let judging = self.authenticator.authenticate(conn.clone(), msg);
        let Ok(verdict) = tokio::time::timeout(self.timeout, judging).await else {
            tracing::info!(conn = %conn.id(), peer = %conn.peer_addr(), timeout = ?self.timeout, "authentication took too long");
            conn.close_with(CloseCode::POLICY, "authentication timed out");
            return Ok(());
        };
        match verdict {
            Ok(identity) => {
                conn.insert_extension(identity);
                conn.insert_extension(Accepted);
                if let Err(err) = self.component.on_open(conn).await {
                    // As the server treats a failed `on_open`: the close
                    // first, so that it wins over one `on_error` asks for.
                    conn.close_with(CloseCode::POLICY, "rejected");
                    self.component.on_error(conn, Error::Handler(err)).await;
                }
            }
            Err(frame) => {
                tracing::info!(conn = %conn.id(), peer = %conn.peer_addr(), code = %frame.code, reason = %frame.reason, "authentication refused");
                conn.close_with(frame.code, frame.reason);
            }
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection, reason: CloseReason) {
        Self::stop_timer(conn);
        if Self::accepted(conn) {
            self.component.on_close(conn, reason).await;
        }
    }

    async fn on_error(&self, conn: &Connection, err: Error) {
        if Self::accepted(conn) {
            self.component.on_error(conn, err).await;
        } else {
            // What the default `on_error` does.
            tracing::warn!(conn = %conn.id(), peer = %conn.peer_addr(), error = %err, "connection error before authentication");
            conn.close_with(CloseCode::ERROR, "internal error");
        }
    }
}
