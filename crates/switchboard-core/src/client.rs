//! Running a component on the client side of a connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::close::CloseReason;
use crate::component::MessageComponent;
use crate::config::Config;
use crate::connection::Connection;
use crate::error::Result;
use crate::extensions::Extensions;
use crate::message::Message;
use crate::server::Context;
use crate::stats::Counters;
use crate::transport::{TransportConn, TransportInfo};

/// Runs `component` on an established client-side connection, with the
/// lifecycle guarantees of a server ([`MessageComponent`]). Transport crates
/// build their `connect` functions on this.
///
/// Returns once the connection task is spawned; `on_open` may still be running.
pub fn spawn_client<C: TransportConn, K: MessageComponent + ?Sized>(
    io: C,
    peer: SocketAddr,
    info: TransportInfo,
    component: Arc<K>,
    config: Config,
) -> Result<ClientHandle> {
    config.validate()?;
    let extensions = Extensions::default();
    Ok(start_client(io, peer, info, extensions, component, config))
}

/// [`spawn_client`] with a `config` already validated and extensions for
/// the connection (the reconnecting client marks each connection with its
/// [`Reconnect`](crate::Reconnect)).
pub(crate) fn start_client<C: TransportConn, K: MessageComponent + ?Sized>(
    io: C,
    peer: SocketAddr,
    info: TransportInfo,
    extensions: Extensions,
    component: Arc<K>,
    config: Config,
) -> ClientHandle {
    let ctx = Context::new(config);
    let (tx, rx) = watch::channel(None);
    let conn = ctx.open(peer, info, extensions, io.outbound_check());
    // Made before the task, so that the connection leaves the client's
    // context even if the task is dropped before its first poll (the
    // driver's `Drop`). Boxed: pinned inside the task, it would take its
    // room there twice.
    let mut drive = Box::pin(Context::drive(io, conn.clone(), component, None));
    let sweep = ctx.sweep();
    ctx.tracker.spawn(async move {
        // The keepalive sweep in the connection's own task, dropped when
        // the connection ends.
        let reason = tokio::select! {
            reason = &mut drive => reason,
            () = sweep => drive.await,
        };
        let _ = tx.send(Some(reason));
    });
    ClientHandle {
        conn,
        ctx,
        closed: rx,
    }
}

/// A running client connection: send, close, wait for the end.
#[derive(Clone)]
pub struct ClientHandle {
    conn: Connection,
    ctx: Arc<Context>,
    closed: watch::Receiver<Option<CloseReason>>,
}

impl ClientHandle {
    /// The connection handle (the one the component's handlers see).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Queues a message; see [`Connection::send`].
    pub fn send(&self, msg: impl Into<Message>) -> std::result::Result<(), crate::SendError> {
        self.conn.send(msg)
    }

    /// Closes normally after flushing; see [`Connection::close`].
    pub fn close(&self) {
        self.conn.close();
    }

    /// Waits until the connection ended (after `on_close`) and tells why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        let reason = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        // The task ended without reporting: its runtime shut down.
        reason.ok().flatten().unwrap_or(CloseReason::Shutdown)
    }

    /// This connection's counters.
    pub fn stats(&self) -> Counters {
        self.ctx.stats.snapshot()
    }
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("conn", &self.conn)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Quiet, Tiny};

    #[test]
    fn a_client_whose_task_never_ran_leaves_its_context() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // `block_on` returns as soon as the client is spawned: its task
        // has not been polled.
        let handle = runtime.block_on(async {
            let peer = SocketAddr::from(([127, 0, 0, 1], 1));
            let info = TransportInfo::new("test");
            spawn_client(Tiny::new(), peer, info, Arc::new(Quiet), Config::default())
                .expect("valid")
        });
        assert_eq!(handle.stats().open_connections, 1);
        assert!(handle.send("while the task waits").is_ok());

        drop(runtime);
        assert_eq!(handle.stats().open_connections, 0);
        assert!(handle.send("after the end").is_err());
    }
}
