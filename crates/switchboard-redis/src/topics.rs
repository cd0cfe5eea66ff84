//! [`Topics`]: a ready-made component for named-topic pub/sub over a small
//! line protocol, on any transport and across nodes.
use switchboard_core::{BoxError, Connection, Hub, Message, MessageComponent};

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Topics a connection may be subscribed to at once, by default.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 100;

/// Publish/subscribe on named topics with a line protocol, for `nc` on TCP
/// (lines codec) and browsers on WebSocket (one command per text message)
/// alike. Give it a hub on a [`RedisBroker`](crate::RedisBroker) and the
/// topics span every node.
///
/// # Protocol
///
/// | client sends | effect | server answers |
/// |---|---|---|
/// | `SUB topic` | subscribe | `OK SUB topic` once the subscription is in place |
/// | `UNSUB topic` | unsubscribe | `OK UNSUB topic` |
/// | `PUB topic text` | every subscriber of `topic`, on every node, gets `MSG topic text` (the sender too, if subscribed) | `OK PUB topic` |
/// | anything else | nothing | `ERR reason`; the connection stays open |
///
/// Commands are case-insensitive; a topic is 1 to 128 bytes without
/// whitespace; the text is everything after the space that follows the
/// topic (it may be empty or contain spaces, but not line breaks, so that
/// it stays one line on TCP). A connection holds at most 100 subscriptions
/// by default ([`max_subscriptions`](Self::max_subscriptions)). Binary
/// messages get `ERR`. If the hub's broker fails, `PUB` still reaches the
/// local subscribers and answers `ERR not delivered to other nodes: ...`.
///
/// Topic `t` is the hub room [`Topics::room("t")`](Self::room), so topics
/// never collide with other rooms of the same hub (such as
/// [`user_room`](crate::user_room)s). To push into a topic from another
/// process, publish [`Topics::message`] to that room with an
/// [`Emitter`](crate::Emitter).
///
/// ```no_run
/// use std::sync::Arc;
/// use switchboard::redis::Topics;
/// use switchboard::tcp::TcpTransport;
/// use switchboard::ws::WsTransport;
/// use switchboard::{Hub, MessageComponent, Server};
///
/// # async fn run() -> Result<(), switchboard::BoxError> {
/// let topics = Arc::new(Topics::new(Hub::new()));
/// let ws = WsTransport::builder().fallback(topics.clone()).build()?;
/// let tcp = TcpTransport::lines(topics);
/// let server = Server::builder()
///     .bind("127.0.0.1:8090", ws)
///     .bind("127.0.0.1:9090", tcp)
///     .start()
///     .await?;
/// // $ nc 127.0.0.1 9090
/// // SUB news
/// // OK SUB news
/// // PUB news hello
/// // MSG news hello
/// // OK PUB news
/// # server.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Topics {
    hub: Hub,
    max_subscriptions: usize,
}

impl Topics {
    /// Topics over `hub` (its broker decides whether they span nodes).
    pub fn new(hub: Hub) -> Self {
        Topics {
            hub,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
        }
    }

    /// Most topics one connection may be subscribed to at once. Default 100.
    pub fn max_subscriptions(mut self, max: usize) -> Self {
        self.max_subscriptions = max;
        self
    }

    /// The hub the topics live in.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The hub room of `topic`: `topic:{topic}`.
    ///
    /// ```
    /// assert_eq!(switchboard::redis::Topics::room("news"), "topic:news");
    /// ```
    pub fn room(topic: &str) -> String {
        format!("topic:{topic}")
    }

    /// What subscribers of `topic` receive for `text`: `MSG topic text`.
    ///
    /// ```
    /// use switchboard::redis::Topics;
    /// use switchboard::Message;
    ///
    /// assert_eq!(Topics::message("news", "hi there"), Message::text("MSG news hi there"));
    /// ```
    pub fn message(topic: &str, text: &str) -> Message {
        Message::text(format!("MSG {topic} {text}"))
    }
}

impl MessageComponent for Topics {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let Some(line) = msg.as_text() else {
            conn.send("ERR binary messages are not supported; send text commands")?;
            return Ok(());
        };
        let reply = match Command::parse(line) {
            Err(reason) => format!("ERR {reason}"),
            Ok(Command::Sub(topic)) => {
                let room = Topics::room(topic);
                let rooms = self.hub.rooms_of(conn.id());
                let subscriptions = rooms.iter().filter(|r| r.starts_with("topic:")).count();
                if subscriptions >= self.max_subscriptions && !rooms.contains(&room) {
                    format!(
                        "ERR too many subscriptions (at most {})",
                        self.max_subscriptions
                    )
                } else {
                    // Joining a room again changes nothing.
                    match self.hub.join_room(&room, conn).await {
                        Ok(()) => format!("OK SUB {topic}"),
                        Err(err) => format!("ERR {err}"),
                    }
                }
            }
            Ok(Command::Unsub(topic)) => {
                match self.hub.leave_room(&Topics::room(topic), conn.id()).await {
                    Ok(()) => format!("OK UNSUB {topic}"),
                    Err(err) => format!("ERR {err}"),
                }
            }
            Ok(Command::Pub(topic, text)) => {
                match self
                    .hub
                    .publish(&Topics::room(topic), Topics::message(topic, text))
                    .await
                {
                    Ok(_) => format!("OK PUB {topic}"),
                    Err(err) => format!("ERR not delivered to other nodes: {err}"),
                }
            }
        };
        conn.send(reply)?;
        Ok(())
    }
}

/// One parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Sub(&'a str),
    Unsub(&'a str),
    Pub(&'a str, &'a str),
}

impl<'a> Command<'a> {
    /// Parses one command; the error is the reason sent back after `ERR`.
    fn parse(line: &'a str) -> Result<Self, String> {
        // WebSocket clients may end their message with a newline.
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "SUB" => Ok(Command::Sub(topic(rest)?)),
            "UNSUB" => Ok(Command::Unsub(topic(rest)?)),
            "PUB" => {
                let Some((name, text)) = rest.split_once(' ') else {
                    return Err("usage: PUB <topic> <text>".into());
                };
                if text.contains(['\n', '\r']) {
                    return Err("the text must be one line".into());
                }
                Ok(Command::Pub(topic(name)?, text))
            }
            "" => Err("empty command; try SUB, UNSUB or PUB".into()),
            _ => Err(format!(
                "unknown command {}; try SUB, UNSUB or PUB",
                verb.chars().take(32).collect::<String>()
            )),
        }
    }
}

fn topic(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("missing topic".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!("topic longer than {MAX_TOPIC_LEN} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a topic has no spaces or control characters".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("SUB news"), Ok(Command::Sub("news")));
        assert_eq!(Command::parse("sub news\r\n"), Ok(Command::Sub("news")));
        assert_eq!(Command::parse("UNSUB news"), Ok(Command::Unsub("news")));
        assert_eq!(
            Command::parse("PUB news hello  world"),
            Ok(Command::Pub("news", "hello  world"))
        );
        assert_eq!(Command::parse("PUB news "), Ok(Command::Pub("news", "")));
    }

    #[test]
    fn refuses_bad_commands() {
        // tests/topics.rs checks the answers to the other bad commands.
        for bad in ["SUB ", "PUB  text", "SUB \u{7}"] {
            assert!(Command::parse(bad).is_err(), "{bad:?} parsed");
        }
        let max = format!("SUB {}", "t".repeat(MAX_TOPIC_LEN));
        assert!(Command::parse(&max).is_ok());
    }
}
