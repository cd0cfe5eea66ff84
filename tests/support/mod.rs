//! Helpers shared by the socket tests: servers on 127.0.0.1:0 and line clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard::tcp::TcpTransport;
use switchboard::{Config, DynComponent, Server, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Upper bound for any single wait in a test; never a sleep.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Serves `component` on TCP lines at 127.0.0.1:0.
pub async fn lines_server(component: Arc<dyn DynComponent>, config: Config) -> ServerHandle {
    Server::builder()
        .config(config)
        .bind("127.0.0.1:0", TcpTransport::lines(component))
        .start()
        .await
        .expect("server starts")
}

/// A newline-delimited client.
pub struct LineClient {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (r, w) = stream.into_split();
        LineClient {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    /// The next line, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(LIMIT, self.reader.read_line(&mut line))
            .await
            .expect("line in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        Some(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}
