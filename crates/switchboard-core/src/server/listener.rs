//! The accept loop: admit within limits, hand off to a task, survive errors.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{Context, Place, Refusal, Reservation};
use crate::close::CloseReason;
use crate::component::MessageComponent;
use crate::config::TcpKeepalive;
use crate::stats::Stats;
use crate::transport::{Accepted, Transport, TransportConn};

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) async fn accept_loop<T: Transport<TcpStream>>(
    listener: TcpListener,
    transport: Arc<T>,
    ctx: Arc<Context>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            biased;
            () = ctx.stopping.cancelled() => break,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_START;
                let reservation = match ctx.reserve(peer) {
                    Ok(reservation) => reservation,
                    Err(Refusal::ShuttingDown) => break,
                    Err(_) => continue,
                };
                // Real-time traffic: never wait for Nagle's algorithm.
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %err, "set_nodelay failed");
                }
                if let Some(keepalive) = &ctx.config.tcp_keepalive
                    && let Err(err) = set_keepalive(&stream, keepalive)
                {
                    tracing::debug!(%peer, error = %err, "setting TCP keepalive failed");
                }
                tokio::spawn(serve(stream, transport.clone(), reservation));
            }
            // The peer gave up between SYN and accept: not our problem.
            Err(err) if is_per_connection(&err) => {
                tracing::debug!(error = %err, "accept: connection aborted by peer");
            }
            Err(err) => {
                // EMFILE/ENFILE/ENOBUFS...: the pending connection stays in
                // the backlog; wait for resources and try again.
                Stats::add(&ctx.stats.accept_errors, 1);
                tracing::warn!(error = %err, ?backoff, "accept failed; retrying");
                tokio::select! {
                    () = ctx.stopping.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    tracing::debug!("accept loop stopped");
}

/// Runs the transport's handshake on an admitted stream, then the
/// connection.
///
/// Not an `async fn`: the handshake (the stream, its buffers, its timer,
/// the `accept` span, the place) lives in an allocation of its own, freed
/// when it ends, and the task keeps only the connection's future, which
/// holds the place from then on. An `async fn` would keep its arguments
/// for the task's whole life, and every idle connection pays for every
/// byte of its task.
pub(super) fn serve<T: Transport<IO>, IO: Send + 'static>(
    stream: IO,
    transport: Arc<T>,
    reservation: Reservation,
) -> impl Future<Output = ()> + Send + 'static {
    let (place, peer) = reservation.into_place();
    let ctx = place.context().clone();
    let span = tracing::debug_span!("accept", %peer);
    let handshake = Box::pin(
        async move {
            let handshake = tokio::time::timeout(
                ctx.config.handshake_timeout,
                transport.accept(stream, peer, &ctx.config),
            );
            let result = tokio::select! {
                () = ctx.stopping.cancelled() => return None,
                res = handshake => res,
            };
            match result {
                Ok(Ok(accepted)) => Some(run(accepted, peer, place)),
                Ok(Err(err)) => {
                    Stats::add(&ctx.stats.handshake_failures, 1);
                    tracing::debug!(error = %err, "handshake failed");
                    None
                }
                Err(_) => {
                    Stats::add(&ctx.stats.handshake_failures, 1);
                    tracing::debug!(timeout = ?ctx.config.handshake_timeout, "handshake timed out");
                    None
                }
            }
        }
        .instrument(span),
    );
    async move {
        // A `let else`, not an `if let`: the scrutinee of an `if let` lives
        // on beside the connection's future, doubling the task.
        let Some(connection) = handshake.await else {
            return;
        };
        connection.await;
    }
}

/// The connection's life, from `on_open` to `on_close`; `place` is given
/// back once it has ended.
pub(super) fn run<C: TransportConn, K: MessageComponent + ?Sized>(
    accepted: Accepted<C, K>,
    peer: SocketAddr,
    place: Place,
) -> impl Future<Output = CloseReason> + Send + use<C, K> {
    let Accepted {
        conn,
        info,
        component,
        extensions,
    } = accepted;
    let check = conn.outbound_check();
    let opened = place.context().open(peer, info, extensions, check);
    Context::drive(conn, opened, component, Some(place))
}

/// Turns on keepalive probes with the configured timing (what the platform
/// lets us set of it).
pub(crate) fn set_keepalive(stream: &TcpStream, keepalive: &TcpKeepalive) -> io::Result<()> {
    let params = socket2::TcpKeepalive::new().with_time(keepalive.idle);
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "illumos",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
    ))]
    let params = params
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries);
    #[cfg(windows)]
    let params = params.with_interval(keepalive.interval);
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
