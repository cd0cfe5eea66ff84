//! `Authenticated` on the test kit's transport, on tokio's paused clock:
//! the timeout bounds the wait for the first message and its judgement,
//! and a component that refuses in `on_open` is told why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::testing::TestServer;
use switchboard::{
    Authenticated, BoxError, CloseCode, CloseReason, Connection, Error, Message, MessageComponent,
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Records what the wrapped component heard, in order.
#[derive(Default)]
struct Inner {
    heard: Mutex<Vec<String>>,
    refuse: bool,
}

impl Inner {
    fn heard(&self) -> Vec<String> {
        self.heard.lock().expect("not poisoned").clone()
    }
}

impl MessageComponent for Inner {
    async fn on_open(&self, _: &Connection) -> Result<(), BoxError> {
        self.heard.lock().expect("not poisoned").push("open".into());
        if self.refuse {
            return Err("full".into());
        }
        Ok(())
    }

    async fn on_message(&self, _: &Connection, msg: Message) -> Result<(), BoxError> {
        let text = msg.as_text().unwrap_or("?").to_owned();
        self.heard
            .lock()
            .expect("not poisoned")
            .push(format!("message {text}"));
        Ok(())
    }

    async fn on_error(&self, _: &Connection, err: Error) {
        self.heard
            .lock()
            .expect("not poisoned")
            .push(format!("error {err}"));
    }

    async fn on_close(&self, _: &Connection, reason: CloseReason) {
        self.heard
            .lock()
            .expect("not poisoned")
            .push(format!("close {reason}"));
    }
}

/// Accepts "ok" at once; never answers for "hang".
fn server(inner: Arc<Inner>) -> TestServer {
    TestServer::new(
        Authenticated::new(inner, |_: Connection, first: Message| async move {
            if first.as_text() == Some("hang") {
                std::future::pending::<()>().await;
            }
            match first.as_text() {
                Some("ok") => Ok(()),
                _ => Err(switchboard::CloseFrame::new(CloseCode::POLICY, "no")),
            }
        })
        .timeout(TIMEOUT),
    )
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_and_a_hanging_judgement_both_end_at_the_timeout() {
    let inner = Arc::new(Inner::default());
    let server = server(inner.clone());
    for first in [None, Some("hang")] {
        let start = tokio::time::Instant::now();
        let mut client = server.connect().await;
        if let Some(first) = first {
            client.send(first).await;
        }
        let closed = tokio::time::timeout(10 * TIMEOUT, client.closed()).await;
        let frame = closed.expect("closed in time").expect("a close frame");
        assert_eq!(
            (frame.code, &*frame.reason),
            (CloseCode::POLICY, "authentication timed out"),
            "{first:?}"
        );
        assert_eq!(start.elapsed(), TIMEOUT, "{first:?}");
    }
    server.shutdown().await;
    assert!(inner.heard().is_empty(), "{:?}", inner.heard());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_in_on_open_closes_with_1008_and_reaches_on_error() {
    let inner = Arc::new(Inner {
        refuse: true,
        ..Inner::default()
    });
    let server = server(inner.clone());
    let mut client = server.connect().await;
    client.send("ok").await;
    client.send("after").await;
    let frame = client.closed().await.expect("a close frame");
    assert_eq!(
        (frame.code, &*frame.reason),
        (CloseCode::POLICY, "rejected")
    );
    server.shutdown().await;
    assert_eq!(
        inner.heard(),
        [
            "open",
            "error handler error: full",
            "close closed locally: 1008 (rejected)"
        ]
    );
}
