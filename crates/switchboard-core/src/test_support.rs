//! What several of the crate's unit tests drive connections with.

use std::task::{Context as TaskContext, Poll};

use crate::close::CloseFrame;
use crate::component::MessageComponent;
use crate::connection::Connection;
use crate::error::{BoxError, Result};
use crate::message::Message;
use crate::transport::{Received, TransportConn};

/// A transport connection on which nothing ever arrives and every write
/// is taken at once; one pointer wide, like the WebSocket one.
pub(crate) struct Tiny(#[allow(dead_code)] Box<u64>);

impl Tiny {
    pub(crate) fn new() -> Self {
        Tiny(Box::new(0))
    }
}

impl TransportConn for Tiny {
    fn poll_recv(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<Received>> {
        Poll::Pending
    }
    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(&mut self, _: Message) -> Result<()> {
        Ok(())
    }
    fn poll_flush(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(&mut self, _: &mut TaskContext<'_>, _: &CloseFrame) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A component that takes every message and answers none.
pub(crate) struct Quiet;

impl MessageComponent for Quiet {
    async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
        Ok(())
    }
}
