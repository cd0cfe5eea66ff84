use switchboard_core::testing::TestServer;
use switchboard_core::{async_trait, BoxError, Connection, Message, MessageComponent};

struct Echo;

#[async_trait]
impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

#[tokio::test]
async fn echo_roundtrip() {
    let server = TestServer::new(Echo);
    let mut c = server.connect().await;
    for i in 0..100 {
        assert!(c.send(format!("m{i}")).await);
    }
    for i in 0..100 {
        assert_eq!(c.recv().await, Some(Message::text(format!("m{i}"))));
    }
    c.close().await;
    assert_eq!(c.closed().await.map(|f| f.code.0), Some(1000));
}
