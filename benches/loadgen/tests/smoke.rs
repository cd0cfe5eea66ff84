//! The load generator against every server for about a second each, over
//! both transports: the harness works end to end (CI runs this; the real
//! comparison is `scripts/bench.sh`).

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use switchboard_bench::report::Record;

/// A running `bench-server`, killed on drop.
struct ServerProcess {
    child: Child,
    addr: String,
    pid: u32,
}

impl ServerProcess {
    fn start(kind: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench-server"))
            .args([kind, "127.0.0.1:0", "--max-seconds", "60"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "listening on ADDR pid PID"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(..2), Some(&["listening", "on"][..]), "{line}");
        ServerProcess {
            addr: words[2].to_owned(),
            pid: words[4].parse().unwrap(),
            child,
        }
    }

    fn target(&self, kind: &str) -> String {
        if kind.contains("tcp") {
            format!("tcp://{}", self.addr)
        } else {
            format!("ws://{}/", self.addr)
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> Record {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(Record::parse)
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"))
}

#[test]
fn echo_over_every_echo_server() {
    for (kind, client) in [
        ("switchboard-ws-echo", "tungstenite"),
        ("switchboard-ws-echo", "raw"),
        ("switchboard-tcp-echo", "tungstenite"),
        ("naive-ws-echo", "raw"),
        ("plain-tcp-echo", "tungstenite"),
    ] {
        let server = ServerProcess::start(kind);
        let pid = server.pid.to_string();
        let rec = loadgen(&[
            "echo",
            "--client",
            client,
            "--target",
            &server.target(kind),
            "--server-pid",
            &pid,
            "--conns",
            "4",
            "--inflight",
            "4",
            "--warmup",
            "0.2",
            "--seconds",
            "0.8",
        ]);
        assert!(rec.number("msgs").unwrap() > 0.0, "{kind}: {}", rec.line());
        assert!(rec.number("p99_ms").is_some());
        // The server's CPU time from /proc, with its user-space part.
        let cpu = rec.number("cpu_us_per_msg").unwrap();
        let user = rec.number("user_us_per_msg").unwrap();
        assert!((0.0..=cpu).contains(&user), "{kind}: {}", rec.line());
    }
}

#[test]
fn broadcast_over_every_chat_server() {
    for (kind, client) in [
        ("switchboard-ws-chat", "tungstenite"),
        ("switchboard-ws-chat", "raw"),
        ("switchboard-tcp-chat", "tungstenite"),
        ("naive-ws-chat", "raw"),
        ("plain-tcp-chat", "tungstenite"),
    ] {
        let server = ServerProcess::start(kind);
        let pid = server.pid.to_string();
        let rec = loadgen(&[
            "broadcast",
            "--client",
            client,
            "--target",
            &server.target(kind),
            "--server-pid",
            &pid,
            "--subs",
            "20",
            "--pubs",
            "2",
            "--rate",
            "50",
            "--settle",
            "0.3",
            "--seconds",
            "0.6",
        ]);
        assert!(rec.number("published").unwrap() > 0.0, "{}", rec.line());
        // Publishers see each other's messages, subscribers see all of them.
        assert_eq!(rec.number("missing"), Some(0.0), "{kind}: {}", rec.line());
        assert_eq!(rec.number("extra"), Some(0.0), "{kind}: {}", rec.line());
    }
}

/// permessage-deflate end to end: echo clients send compressed JSON and
/// check the first echo once inflated, subscribers inflate what arrives
/// compressed; the server without compression declines the same offer.
#[test]
fn deflate_echo_and_broadcast() {
    for (kind, size, agreed, compressed) in [
        ("switchboard-ws-echo-deflate", "2000", 4.0, 1.0),
        // Under the server's threshold: sent back uncompressed.
        ("switchboard-ws-echo-deflate", "32", 4.0, 0.0),
        ("switchboard-ws-echo", "2000", 0.0, 0.0),
    ] {
        let server = ServerProcess::start(kind);
        let pid = server.pid.to_string();
        let rec = loadgen(&[
            "echo",
            "--client",
            "raw",
            "--deflate",
            "--payload",
            "json",
            "--size",
            size,
            "--target",
            &server.target(kind),
            "--server-pid",
            &pid,
            "--conns",
            "4",
            "--inflight",
            "4",
            "--warmup",
            "0.2",
            "--seconds",
            "0.5",
        ]);
        assert!(rec.number("msgs").unwrap() > 0.0, "{kind}: {}", rec.line());
        assert_eq!(rec.number("failed"), Some(0.0), "{kind}: {}", rec.line());
        assert_eq!(rec.number("deflate_conns"), Some(agreed), "{}", rec.line());
        assert_eq!(
            rec.number("compressed_share"),
            Some(compressed),
            "{}",
            rec.line()
        );
        let wire = rec.number("wire_bytes_per_msg").unwrap();
        // Compressed replies are shorter than the message; plain ones carry
        // it and a frame header.
        let size: f64 = size.parse().unwrap();
        assert!(
            (wire < size) == (compressed > 0.0),
            "{kind}: {}",
            rec.line()
        );
    }
    for (kind, agreed) in [
        ("switchboard-ws-chat-deflate", 20.0),
        ("switchboard-ws-chat", 0.0),
    ] {
        let server = ServerProcess::start(kind);
        let pid = server.pid.to_string();
        let rec = loadgen(&[
            "broadcast",
            "--client",
            "raw",
            "--deflate",
            "--payload",
            "json",
            "--size",
            "1024",
            "--target",
            &server.target(kind),
            "--server-pid",
            &pid,
            "--subs",
            "20",
            "--rate",
            "50",
            "--settle",
            "0.3",
            "--seconds",
            "0.6",
        ]);
        assert!(rec.number("published").unwrap() > 0.0, "{}", rec.line());
        assert_eq!(rec.number("missing"), Some(0.0), "{kind}: {}", rec.line());
        assert_eq!(rec.number("deflate_conns"), Some(agreed), "{}", rec.line());
        let share = if agreed > 0.0 { 1.0 } else { 0.0 };
        assert_eq!(
            rec.number("compressed_share"),
            Some(share),
            "{}",
            rec.line()
        );
        // One inflation per message, not per delivery.
        let inflations = rec.number("inflations").unwrap();
        assert!(
            inflations <= rec.number("published").unwrap(),
            "{}",
            rec.line()
        );
    }
}

#[test]
fn idle_connections_are_counted() {
    for kind in ["switchboard-ws-echo", "switchboard-tcp-echo"] {
        let server = ServerProcess::start(kind);
        let pid = server.pid.to_string();
        let rec = loadgen(&[
            "idle",
            "--target",
            &server.target(kind),
            "--server-pid",
            &pid,
            "--conns",
            "50",
            "--settle",
            "0.3",
        ]);
        assert_eq!(rec.number("held"), Some(50.0), "{kind}: {}", rec.line());
        assert!(rec.number("rss_kib_per_conn").is_some());
    }
}

#[test]
fn summary_of_result_lines() {
    let table = switchboard_bench::report::summarize(
        "RESULT scenario=s server=a baseline=b msgs_per_s=200\n\
         RESULT scenario=s server=b baseline=b msgs_per_s=100\n",
    );
    assert!(table.contains("2.00x msgs/s"), "{table}");
}
