//! Helpers for the Redis tests: a real redis-server child process on a free
//! loopback port, switchboard nodes on port 0, WebSocket and TCP-lines
//! clients, bounded waits.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard::redis::{RedisBroker, RedisOptions, user_room};
use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{
    BoxError, Connection, DynComponent, Hub, Message, MessageComponent, Server, ServerHandle,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite;

/// Upper bound for any single wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// Polls `cond` every 20 ms until it holds, failing after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- redis-server

/// The redis-server binary: `$SWITCHBOARD_REDIS_SERVER`, else `redis-server`
/// on `PATH`. Panics with instructions when there is none: these tests
/// must not pass by skipping.
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_REDIS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SWITCHBOARD_REDIS_SERVER={} is not a file",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found on PATH. These tests need a real Redis: install it \
             (`apt-get install redis-server`; scripts/test.sh does it) or set \
             SWITCHBOARD_REDIS_SERVER=/path/to/redis-server"
        )
    })
}

/// A redis-server child process on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port and waits until it
    /// answers PING.
    pub async fn start() -> Self {
        // A port that was free a moment ago may be taken by the time
        // redis binds it; try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer { port, child: None };
            if server.spawn().await {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it
    /// to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        assert!(
            self.spawn().await,
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut child = Command::new(redis_server_binary())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--loglevel",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // exited: most likely the port was taken
            }
            if ping(self.port).await {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within {LIMIT:?}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// A raw command over a fresh connection, for inspecting the server
    /// (`PUBSUB NUMSUB ...`). Returns the reply as RESP text.
    pub async fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for arg in args {
            req.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = within("redis reply", stream.read(&mut buf)).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Subscribers of `channel`, from `PUBSUB NUMSUB`.
    pub async fn numsub(&self, channel: &str) -> usize {
        let reply = self.command(&["PUBSUB", "NUMSUB", channel]).await;
        // *2\r\n$N\r\n{channel}\r\n:{count}\r\n
        reply
            .rsplit(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected NUMSUB reply {reply:?}"))
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        timeout(Duration::from_secs(1), stream.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"+PONG\r\n"
    )
}

fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- nodes

/// A test component: every connection is a hub member and in room
/// `lobby`, and says `ready` once it is. Text commands:
///
/// - `room TEXT`: publish TEXT to the lobby (the sender gets it too);
/// - `except TEXT`: broadcast TEXT to every member but the sender;
/// - `join ROOM`: join ROOM, answer `joined ROOM`;
/// - `user ID`: join the user room of ID, answer `joined user:ID`.
///
/// Broker failures are answered with `broker-error ...` (the local
/// delivery happened anyway).
pub struct RoomChat {
    pub hub: Hub,
}

impl MessageComponent for RoomChat {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        self.hub.join_room("lobby", conn).await?;
        conn.send("ready")?;
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let Some(text) = msg.as_text() else {
            return Ok(());
        };
        let (cmd, arg) = text.split_once(' ').unwrap_or((text, ""));
        let sent = match cmd {
            "room" => self.hub.publish("lobby", arg).await.map(drop),
            "except" => self.hub.broadcast_except(arg, conn.id()).await.map(drop),
            "join" | "user" => {
                let room = if cmd == "user" {
                    user_room(arg)
                } else {
                    arg.to_owned()
                };
                self.hub.join_room(&room, conn).await?;
                conn.send(format!("joined {room}"))?;
                Ok(())
            }
            other => {
                conn.send(format!("unknown {other}"))?;
                Ok(())
            }
        };
        if let Err(err) = sent {
            conn.send(format!("broker-error {err}"))?;
        }
        Ok(())
    }
}

/// One node: a hub on a RedisBroker, served on WebSocket and TCP lines.
pub struct Node {
    pub hub: Hub,
    pub broker: RedisBroker,
    pub server: ServerHandle,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
}

impl Node {
    /// A node running [`RoomChat`].
    pub async fn start(url: &str, options: RedisOptions) -> Node {
        let broker = within("broker connect", RedisBroker::connect(url, options))
            .await
            .unwrap();
        let hub = Hub::with_broker(broker.clone());
        let component = Arc::new(RoomChat { hub: hub.clone() });
        Node::serve(hub, broker, component).await
    }

    /// A node serving `component` (which should use `hub`).
    pub async fn serve(hub: Hub, broker: RedisBroker, component: Arc<dyn DynComponent>) -> Node {
        let ws = WsTransport::builder()
            .fallback(component.clone())
            .build()
            .unwrap();
        let tcp = TcpTransport::lines(component);
        let server = Server::builder()
            .bind("127.0.0.1:0", ws)
            .bind("127.0.0.1:0", tcp)
            .start()
            .await
            .unwrap();
        let addrs = server.local_addrs().to_vec();
        Node {
            hub,
            broker,
            server,
            ws: addrs[0],
            tcp: addrs[1],
        }
    }

    /// A WebSocket client of this node.
    pub async fn ws_client(&self) -> Client {
        Client::ws(self.ws).await
    }

    /// A TCP lines client of this node.
    pub async fn tcp_client(&self) -> Client {
        Client::tcp(self.tcp).await
    }
}

// ---------------------------------------------------------------- clients

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A real socket client: WebSocket or TCP lines.
pub enum Client {
    Ws(Box<Ws>),
    Tcp {
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        write: OwnedWriteHalf,
    },
}

impl Client {
    pub async fn ws(addr: SocketAddr) -> Client {
        let (ws, _) = within(
            "ws connect",
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        .unwrap();
        Client::Ws(Box::new(ws))
    }

    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream = within("tcp connect", TcpStream::connect(addr))
            .await
            .unwrap();
        let (read, write) = stream.into_split();
        Client::Tcp {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// Sends one text message (one line on TCP).
    pub async fn send(&mut self, text: &str) {
        match self {
            Client::Ws(ws) => ws
                .send(tungstenite::Message::text(text.to_owned()))
                .await
                .unwrap(),
            Client::Tcp { write, .. } => write
                .write_all(format!("{text}\n").as_bytes())
                .await
                .unwrap(),
        }
    }

    /// Sends a binary message (WebSocket only).
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        match self {
            Client::Ws(ws) => ws.send(tungstenite::Message::binary(data)).await.unwrap(),
            Client::Tcp { .. } => panic!("binary over TCP lines"),
        }
    }

    /// The next message, within [`LIMIT`].
    pub async fn recv(&mut self) -> Message {
        within("a message", self.next()).await
    }

    /// The next message if one arrives within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Message> {
        timeout(wait, self.next()).await.ok()
    }

    /// The next text message, within [`LIMIT`].
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Text messages up to (not including) `marker`.
    pub async fn until(&mut self, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let text = self.recv_text().await;
            if text == marker {
                return seen;
            }
            seen.push(text);
        }
    }

    async fn next(&mut self) -> Message {
        match self {
            Client::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(tungstenite::Message::Text(t))) => return Message::text(t.as_str()),
                    Some(Ok(tungstenite::Message::Binary(b))) => return Message::binary(b),
                    Some(Ok(tungstenite::Message::Close(frame))) => {
                        panic!("connection closed: {frame:?}")
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => panic!("websocket error: {err}"),
                    None => panic!("websocket ended"),
                }
            },
            Client::Tcp { lines, .. } => match lines.next_line().await {
                Ok(Some(line)) => Message::text(line),
                Ok(None) => panic!("tcp connection ended"),
                Err(err) => panic!("tcp error: {err}"),
            },
        }
    }

    /// Closes the client.
    pub async fn close(self) {
        match self {
            Client::Ws(mut ws) => {
                let _ = Ws::close(&mut ws, None).await;
            }
            Client::Tcp { mut write, .. } => {
                let _ = write.shutdown().await;
            }
        }
    }
}

/// Connects `client` and waits for the component's `ready`.
pub async fn ready(mut client: Client) -> Client {
    assert_eq!(client.recv_text().await, "ready");
    client
}
