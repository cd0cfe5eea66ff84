//! Rooms with member lists, join and leave notices, and recovery of what a
//! client missed while it was away: over WebSocket and TCP lines, on one
//! node or several through Redis.
//!
//! ```sh
//! cargo run --release --example rooms                # open http://127.0.0.1:8080/
//! nc 127.0.0.1 9000                                  # then: JOIN lobby ada
//!
//! # two nodes sharing rooms, members and history:
//! cargo run --release --example rooms -- --redis redis://127.0.0.1:6379
//! cargo run --release --example rooms -- --redis redis://127.0.0.1:6379 \
//!     --ws 127.0.0.1:8081 --tcp 127.0.0.1:9001
//! ```
//!
//! Flags: `--ws ADDR` (default 127.0.0.1:8080), `--tcp ADDR|off` (default
//! 127.0.0.1:9000), `--redis URL` (members, notices, messages and history
//! span every node on that Redis), `--history N` (messages kept per room,
//! default 100, for [`HISTORY_AGE`]), `--token T` (clients must present
//! it).
//!
//! # WebSocket
//!
//! `/rooms/{room}?name={name}[&since={position}][&token={T}]`. `room` is 1
//! to 64 of `A-Z a-z 0-9 _ -` and `name` 1 to 32 characters after
//! percent-decoding, or the upgrade is refused with HTTP 400; with
//! `--token T`, a missing or wrong token is HTTP 401. The page at `/`
//! speaks this.
//!
//! Every frame the server sends is a JSON text frame:
//!
//! - first `{"type":"welcome","room":R,"name":N,"members":[names, self included],"position":P|null,"recovered":K}`:
//!   `position` is the room's newest; `recovered` is `null` without
//!   `since`, the number of messages replayed right after the welcome, or
//!   `false` when the position is unknown, trimmed or from another epoch
//!   (nothing replayed);
//! - `{"type":"message","room":R,"from":N,"text":T,"position":P}` for every
//!   message of the room, to every member, the sender included;
//! - `{"type":"join"|"leave","room":R,"name":N}` to every other member, on
//!   every node;
//! - `{"type":"error","error":...}` for a client frame that is not
//!   `{"type":"message","text":T}` with `T` a string of at most 4 KiB, or a
//!   message that could not be delivered; the connection stays open.
//!
//! Positions are opaque non-empty strings (`{epoch}-{seq}`), the same on
//! every node for the same message.
//!
//! While the room's store is unavailable (Redis down), a join is closed
//! with 1013 (try again later) and a message gets an error frame; a member
//! whose live traffic lost a message is closed with 1012, and resumes.
//!
//! # TCP lines
//!
//! The first line is `JOIN {room} {name} [{position}]` (the same rules;
//! a name without spaces), then each line is a message. The server sends
//! the same JSON objects, one per line. A bad first line gets an error
//! object and the connection closes. TCP lines carry no token: with
//! `--token`, every TCP join is refused (join over WebSocket).
//!
//! # Limits
//!
//! A message of more than 4 KiB of text is refused with an error; a frame
//! or line over [`MAX_FRAME`] closes the connection (1009); each connection
//! may send [`RATE`] messages a second in bursts of [`BURST`], the rest is
//! dropped. Names and texts reach other users only inside JSON strings, so
//! no one can forge a frame or a line.
//!
//! History is kept for [`HISTORY_AGE`], `--history` messages per room (at
//! most [`MAX_HISTORY`]); in memory, for at most [`HISTORY_ROOMS`] rooms
//! without members (the quietest go first), plus the rooms with members.
//! A stored message is at most [`MAX_STORED`] bytes (texts of control
//! characters grow sixfold as JSON), so the rooms without members hold at
//! most about 250 MiB at the default `--history 100`, and typical chat
//! far less. Each connection's outbound queue has room for a whole
//! replay of such messages.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::rooms::{History, Join, Joined, Position, PresenceEvent, Recovery, RoomEvents};
use switchboard::tcp::TcpTransport;
use switchboard::ws::{Accept, Page, Reject, Request, WsTransport};
use switchboard::{
    Authenticated, BoxError, Broker, CloseCode, CloseFrame, Config, Connection, Hub, Message,
    MessageComponent, RateLimit, RateLimitAction, Server,
};

/// See "Memory after an attack" in docs/reliability.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The longest message text, in bytes.
const MAX_TEXT: usize = 4 * 1024;
/// The longest frame or line a client may send; longer closes it (1009).
const MAX_FRAME: usize = 64 * 1024;
/// Messages a connection may send per second, and in a burst.
const RATE: f64 = 20.0;
const BURST: u32 = 40;
/// The most `--history` takes.
const MAX_HISTORY: usize = 10_000;
/// How long history is kept.
const HISTORY_AGE: Duration = Duration::from_secs(3600);
/// Rooms without members whose history is kept (in memory; on Redis, keys
/// expire after `HISTORY_AGE`).
const HISTORY_ROOMS: usize = 100;
/// The longest stored message frame: a text of `MAX_TEXT` bytes of
/// control characters is six times as long as JSON (`\u0001`), plus the
/// room, the name (escaped too) and the keys.
const MAX_STORED: usize = 6 * MAX_TEXT + 6 * 4 * 32 + 64 + 128;

/// Where a connection sits: from the WebSocket handshake or the TCP
/// `JOIN` line.
#[derive(Clone, Debug)]
struct Seat {
    room: String,
    name: String,
    /// `Some(None)` for a `since` that is not a position: it cannot be
    /// resumed, which the welcome says.
    since: Option<Option<Position>>,
}

fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
}

impl Seat {
    fn new(room: &str, name: &str, since: Option<&str>) -> Result<Seat, &'static str> {
        if !valid_room(room) {
            return Err("room: 1 to 64 of A-Z a-z 0-9 _ -");
        }
        if !valid_name(name) {
            return Err("name: 1 to 32 characters");
        }
        Ok(Seat {
            room: room.to_owned(),
            name: name.to_owned(),
            since: since.map(|s| s.parse().ok()),
        })
    }
}

/// The WebSocket handshake: a valid room, name and token, or an HTTP error.
async fn admit(req: Request, token: Option<Arc<str>>) -> Result<Accept, Reject> {
    if let Some(token) = token
        && req.query_param("token").as_deref() != Some(&*token)
    {
        return Err(Reject::unauthorized().reason("missing or wrong token"));
    }
    let room = req.param("room").unwrap_or("");
    let name = req.query_param("name").unwrap_or_default();
    let since = req.query_param("since");
    match Seat::new(room, &name, since.as_deref()) {
        Ok(seat) => Ok(Accept::new().with(seat)),
        Err(why) => Err(Reject::new(400).reason(why)),
    }
}

/// The TCP `JOIN` line: its error object reaches the peer before the close.
async fn admit_line(
    conn: Connection,
    first: Message,
    token_required: bool,
) -> Result<Seat, CloseFrame> {
    let refuse = |why: &str| {
        let _ = conn.send(error(why));
        Err(CloseFrame::new(CloseCode::POLICY, "bad JOIN"))
    };
    if token_required {
        return refuse(
            "this server requires a token, which TCP lines cannot carry: join over WebSocket",
        );
    }
    let words: Vec<&str> = first.as_text().unwrap_or("").split(' ').collect();
    let seat = match words[..] {
        ["JOIN", room, name] => Seat::new(room, name, None),
        ["JOIN", room, name, since] => Seat::new(room, name, Some(since)),
        _ => Err("the first line must be: JOIN {room} {name} [{position}]"),
    };
    seat.or_else(refuse)
}

fn error(why: &str) -> Message {
    json!({"type": "error", "error": why}).to_string().into()
}

/// One component for both transports; `lines` says which one a
/// connection's messages come from.
struct Rooms {
    hub: Hub,
    lines: bool,
}

impl Rooms {
    /// The text of a client message, or why it is refused.
    fn text_of(&self, msg: &Message) -> Result<String, &'static str> {
        let text = if self.lines {
            msg.as_text().ok_or("not text")?.to_owned()
        } else {
            let frame: Value = serde_json::from_str(msg.as_text().ok_or("not a JSON text frame")?)
                .map_err(|_| "not JSON")?;
            match (&frame["type"], &frame["text"]) {
                (Value::String(t), Value::String(text)) if t == "message" => text.clone(),
                _ => return Err(r#"expected {"type":"message","text":T}"#),
            }
        };
        if text.len() > MAX_TEXT {
            return Err("text over 4 KiB");
        }
        Ok(text)
    }
}

impl MessageComponent for Rooms {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        let seat = conn
            .extension::<Seat>()
            .ok_or("no seat: the handshake or JOIN line sets one")?;
        let mut join = Join::new().name(seat.name.as_str());
        match seat.since {
            None => {}
            Some(Some(position)) => join = join.since(position),
            // A position no room has: "cannot be resumed".
            Some(None) => join = join.since(Position::new(0, u64::MAX)),
        }
        if let Err(err) = self.hub.join_room_with(&seat.room, conn, join).await {
            // The store is unreachable (Redis down): the client may retry.
            tracing::warn!(%err, room = %seat.room, "join failed");
            conn.close_with(CloseCode::TRY_AGAIN, "the room is unavailable: try again");
            return Ok(());
        }
        tracing::info!(conn = %conn.id(), room = %seat.room, name = %seat.name, "joined");
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let Some(seat) = conn.extension::<Seat>().filter(|_| !conn.is_closed()) else {
            return Ok(());
        };
        let text = match self.text_of(&msg) {
            Ok(text) => text,
            Err(why) => {
                let _ = conn.send(error(why));
                return Ok(());
            }
        };
        // What the history keeps: the message frame without its position,
        // which `Frames::message` adds (only the store knows it).
        let stored = json!({"type": "message", "room": seat.room, "from": seat.name, "text": text});
        if let Err(err) = self.hub.append(&seat.room, stored.to_string()).await {
            // A store that did not answer in time may still have taken it.
            tracing::warn!(%err, "message maybe not delivered");
            let _ = conn.send(error(
                "the room's store is unavailable: the message may not have been delivered",
            ));
        }
        Ok(())
    }
}

/// What members receive (see the module docs).
struct Frames;

impl RoomEvents for Frames {
    fn welcome(&self, joined: &Joined) -> Option<Message> {
        let recovered = match joined.recovery {
            Recovery::NotAsked => Value::Null,
            Recovery::Replayed(n) => json!(n),
            Recovery::Impossible(_) => json!(false),
        };
        let frame = json!({
            "type": "welcome",
            "room": &*joined.room,
            "name": joined.name.as_deref(),
            "members": joined.members.iter().map(|m| &**m).collect::<Vec<_>>(),
            "position": joined.position.map(|p| p.to_string()),
            "recovered": recovered,
        });
        Some(frame.to_string().into())
    }

    fn message(&self, _room: &str, position: Position, msg: &Message) -> Message {
        // `msg` is the JSON object `on_message` made: the position goes in
        // before its closing brace (a position is hex digits, '-' and digits).
        let object = msg
            .as_text()
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or("{\"type\":\"message\"");
        format!(r#"{object},"position":"{position}"}}"#).into()
    }

    fn presence(&self, event: &PresenceEvent) -> Option<Message> {
        let kind = if event.joined { "join" } else { "leave" };
        let frame = json!({"type": kind, "room": &*event.room, "name": &*event.name});
        Some(frame.to_string().into())
    }
}

struct Args {
    ws: String,
    tcp: Option<String>,
    redis: Option<String>,
    history: usize,
    token: Option<String>,
}

const USAGE: &str =
    "usage: rooms [--ws ADDR] [--tcp ADDR|off] [--redis URL] [--history N] [--token T]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ws: "127.0.0.1:8080".into(),
        tcp: Some("127.0.0.1:9000".into()),
        redis: None,
        history: 100,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => args.ws = value()?,
            "--tcp" => args.tcp = Some(value()?).filter(|v| v != "off"),
            "--redis" => args.redis = Some(value()?),
            "--history" => {
                let n = value()?;
                args.history = n
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_HISTORY)
                    .ok_or_else(|| format!("--history: {n} is not a count up to {MAX_HISTORY}"))?;
            }
            "--token" => args.token = Some(value()?).filter(|t| !t.is_empty()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown flag {other}; {USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rooms: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let hub = Hub::builder()
        .broker(broker(args.redis.as_deref()).await?)
        .history(History::new(args.history, HISTORY_AGE).max_rooms(HISTORY_ROOMS))
        .events(Frames)
        .build();
    let token: Option<Arc<str>> = args.token.as_deref().map(Arc::from);
    let ws = WsTransport::builder()
        .route(
            "/rooms/{room}",
            Rooms {
                hub: hub.clone(),
                lines: false,
            },
        )
        .page("/", Page::html(include_str!("rooms.html")))
        .on_handshake(move |req| admit(req, token.clone()))
        .build()?;
    // A recovery queues up to `--history` messages at once: room for them.
    let defaults = Config::default();
    let queue_messages = defaults
        .queue_max_messages
        .max(args.history.saturating_add(1024));
    let queue_bytes = (defaults.queue_max_bytes).max(
        args.history
            .saturating_add(64)
            .saturating_mul(MAX_STORED + 128),
    );
    let config = defaults
        .queue_max_messages(queue_messages)
        .queue_max_bytes(queue_bytes)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .rate_limit(Some(
            RateLimit::new(RATE, BURST).action(RateLimitAction::Drop),
        ));
    let mut builder = Server::builder().config(config).bind(args.ws, ws);
    if let Some(tcp) = args.tcp {
        let token_required = args.token.is_some();
        let rooms = Rooms { hub, lines: true };
        let component = Authenticated::new(rooms, move |conn, first| {
            admit_line(conn, first, token_required)
        });
        builder = builder.bind(tcp, TcpTransport::lines(component));
    }
    let server = builder.start().await?;
    let addrs = server.local_addrs();
    println!(
        "rooms: open http://{}/ (sockets: ws://{}/rooms/{{room}}?name={{name}})",
        addrs[0], addrs[0]
    );
    if let Some(tcp) = addrs.get(1) {
        println!(
            "rooms: or from a terminal: nc {} {} (then: JOIN lobby yourname)",
            tcp.ip(),
            tcp.port()
        );
    }
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("rooms: shutting down");
    server.shutdown().await;
    Ok(())
}

/// Redis when a URL is given, the in-process broker (and the hub's
/// in-memory store) otherwise.
async fn broker(url: Option<&str>) -> Result<Arc<dyn Broker>, BoxError> {
    use switchboard::redis::{RedisOptions, broker_from_url};
    Ok(broker_from_url(url, RedisOptions::default()).await?)
}
