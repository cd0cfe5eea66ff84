//! The load generator: echo, broadcast fan-out and idle connections over
//! WebSocket (tokio-tungstenite client) or TCP lines, loopback only, every
//! run bounded in time and count.
//!
//! ```text
//! loadgen echo      --target ws://127.0.0.1:PORT/ [--conns 100] [--inflight 10] [--size 32] [--warmup 1] [--seconds 5]
//! loadgen broadcast --target tcp://127.0.0.1:PORT [--subs 1000] [--pubs 1] [--rate 100] [--size 64] [--seconds 10] [--drain 10]
//! loadgen idle      --target ws://127.0.0.1:PORT/ --server-pid PID [--conns 10000] [--hold 0] [--src-ip 1]
//! loadgen summarize RESULTS_FILE
//! ```
//!
//! Common flags: `--server-pid PID` (server CPU time and memory from
//! `/proc`), `--clk-tck 100` (`getconf CLK_TCK`), and the labels copied to
//! the `RESULT` line: `--scenario`, `--server`, `--baseline`, `--framework`,
//! `--round`.
//!
//! Compression: `--deflate` offers permessage-deflate
//! (`permessage-deflate; server_no_context_takeover;
//! client_no_context_takeover`) on every WebSocket client but the
//! publishers, which send plain frames (echo and broadcast need `--client
//! raw`). Where the server agrees, echo clients send their message
//! compressed (compressed once, at zlib's default level 6, when it has
//! `--deflate-threshold` bytes or more, default 0: every message, as
//! browsers do) and subscribers inflate what arrives compressed; the
//! `RESULT` line then counts the connections that agreed (`deflate_conns`)
//! and the share of messages that came compressed (`compressed_share`).
//! Echo and broadcast runs also count the bytes read from the sockets per
//! message (`wire_bytes_per_msg`: WebSocket frames, headers included).
//! `--payload json` makes the messages chat JSON instead of `x` padding
//! (see `switchboard_bench::payload`).
//! `summarize` reads those lines and prints markdown: the headline table,
//! a before / after table when servers labelled `NAME@before` ran, and
//! each scenario's medians (see `switchboard_bench::report`).
//! One tokio `current_thread` runtime: pin the load generator to its own
//! CPU with `taskset`.

#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use switchboard_bench::args::Args;
use switchboard_bench::deflate::{self, Inflater};
use switchboard_bench::payload;
use switchboard_bench::procfs::{self, CpuMeter, CpuTime};
use switchboard_bench::report::{self, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::LocalSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Connections opened at once while setting up a run.
const CONNECT_CONCURRENCY: usize = 128;
/// A connection attempt that takes longer counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Client connections per source address in idle runs: below the 28,232
/// ephemeral ports of one address (32768-60999).
const CONNS_PER_SOURCE_IP: usize = 20_000;
/// RSV1: the first frame of a compressed message (RFC 7692).
const RSV1: u8 = 0x40;
/// The labels copied from the arguments to the `RESULT` line.
const LABELS: [&str; 5] = ["scenario", "server", "baseline", "framework", "round"];

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let command = args.positional.first().cloned().unwrap_or_default();
    if command == "summarize" {
        let path = args
            .positional
            .get(1)
            .expect("usage: loadgen summarize FILE");
        let text = std::fs::read_to_string(path).expect("read results file");
        print!("{}", report::summarize(&text));
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = LocalSet::new();
    let record = match command.as_str() {
        "echo" => local.block_on(&rt, echo(&args)),
        "broadcast" => local.block_on(&rt, broadcast(&args)),
        "idle" => local.block_on(&rt, idle(&args)),
        _ => {
            eprintln!("usage: loadgen echo|broadcast|idle|summarize ... (see the source's docs)");
            std::process::exit(2);
        }
    };
    match record {
        Ok(mut record) => {
            for key in LABELS {
                if let Some(v) = args.str(key) {
                    record.text(key, v);
                }
            }
            println!("{}", record.line());
        }
        Err(err) => {
            eprintln!("loadgen {command}: {err}");
            std::process::exit(1);
        }
    }
    // Connections still open are dropped with the runtime, without waiting.
    drop(local);
    rt.shutdown_background();
}

// ---- targets and connections -------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Ws,
    Tcp,
}

#[derive(Clone, Debug)]
struct Target {
    proto: Proto,
    addr: SocketAddr,
    url: String,
    /// WebSocket echo only: after tokio-tungstenite's handshake, write
    /// prebuilt masked frames and scan the replies' frame headers, so the
    /// load generator costs far less per message than any server.
    raw_ws: bool,
    /// WebSocket only: offer permessage-deflate (`--deflate`).
    deflate: bool,
}

impl Target {
    fn from_args(args: &Args) -> io::Result<Self> {
        let target = args.str("target").ok_or_else(|| {
            io::Error::other("--target ws://HOST:PORT/ or tcp://HOST:PORT needed")
        })?;
        let (proto, rest) = if let Some(rest) = target.strip_prefix("ws://") {
            (Proto::Ws, rest)
        } else if let Some(rest) = target.strip_prefix("tcp://") {
            (Proto::Tcp, rest)
        } else {
            return Err(io::Error::other("--target must start with ws:// or tcp://"));
        };
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| io::Error::other(format!("--target needs an IP:PORT, got {hostport}")))?;
        if !addr.ip().is_loopback() {
            return Err(io::Error::other("loopback targets only (127.0.0.0/8, ::1)"));
        }
        let url = match proto {
            Proto::Ws if rest.contains('/') => format!("ws://{rest}"),
            Proto::Ws => format!("ws://{rest}/"),
            Proto::Tcp => String::new(),
        };
        let raw_ws = match args.str("client").unwrap_or("tungstenite") {
            "raw" => true,
            "tungstenite" => false,
            other => {
                return Err(io::Error::other(format!(
                    "--client raw|tungstenite, not {other}"
                )));
            }
        };
        let deflate = args.str("deflate").is_some_and(|v| v != "false");
        Ok(Target {
            proto,
            addr,
            url,
            raw_ws,
            deflate: deflate && proto == Proto::Ws,
        })
    }
}

/// One connection. For WebSocket, whether the server agreed to
/// permessage-deflate.
enum Client {
    Ws(Box<WebSocketStream<TcpStream>>, bool),
    /// A WebSocket past its handshake, spoken to directly (`--client raw`).
    WsRaw(TcpStream, bool),
    Tcp(TcpStream),
}

/// Whether the server's 101 agreed to permessage-deflate.
fn deflate_agreed(response: &Response) -> io::Result<bool> {
    let answer = response.headers().get("sec-websocket-extensions");
    deflate::agreed(answer.and_then(|v| v.to_str().ok()))
}

/// Opens one connection (and the WebSocket handshake), bounded by
/// [`CONNECT_TIMEOUT`]. `read_buffer` sizes tungstenite's read buffer,
/// which it zero-fills before every read: kept small, it keeps the load
/// generator's own cost per message down.
async fn connect(target: &Target, src: Option<IpAddr>, read_buffer: usize) -> io::Result<Client> {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = src {
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        if target.proto == Proto::Tcp {
            return Ok(Client::Tcp(stream));
        }
        let mut request = target
            .url
            .as_str()
            .into_client_request()
            .map_err(io::Error::other)?;
        if target.deflate {
            request.headers_mut().insert(
                "Sec-WebSocket-Extensions",
                HeaderValue::from_static(deflate::OFFER),
            );
        }
        if target.raw_ws {
            // The server says nothing after its 101 until spoken to, so
            // tungstenite holds no bytes of ours when it is dropped.
            let (_, response) = tokio_tungstenite::client_async(request, &mut stream)
                .await
                .map_err(io::Error::other)?;
            let agreed = deflate_agreed(&response)?;
            Ok(Client::WsRaw(stream, agreed))
        } else {
            let config = WebSocketConfig::default().read_buffer_size(read_buffer);
            let (ws, response) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(io::Error::other)?;
            let agreed = deflate_agreed(&response)?;
            Ok(Client::Ws(Box::new(ws), agreed))
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Opens `n` connections, [`CONNECT_CONCURRENCY`] at a time, handing each
/// to `run` as it is established. Returns how many failed.
async fn open_many<F>(
    target: &Target,
    n: usize,
    src: impl Fn(usize) -> Option<IpAddr>,
    read_buffer: usize,
    run: F,
) -> usize
where
    F: Fn(usize, Client) + Clone + 'static,
{
    let permits = std::sync::Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let failed = Rc::new(Cell::new(0usize));
    let first_error: Rc<RefCell<Option<String>>> = Rc::default();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (target, failed, first_error, run) = (
            target.clone(),
            failed.clone(),
            first_error.clone(),
            run.clone(),
        );
        let src = src(i);
        tasks.push(tokio::task::spawn_local(async move {
            match connect(&target, src, read_buffer).await {
                Ok(client) => run(i, client),
                Err(err) => {
                    failed.set(failed.get() + 1);
                    first_error.borrow_mut().get_or_insert(err.to_string());
                }
            }
            drop(permit);
        }));
        if (i + 1) % 5000 == 0 {
            eprintln!("  {} connections opened", i + 1);
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    if let Some(err) = first_error.borrow().as_ref() {
        eprintln!("  {} connections failed, first: {err}", failed.get());
    }
    failed.get()
}

/// The server's CPU time in all and per message (with the user-space part
/// apart: the kernel's share of a message is about the same for every
/// server, so the user-space figure is where frameworks differ), and the
/// load generator's own per message.
fn record_cpu(
    rec: &mut Record,
    server: Option<CpuTime<f64>>,
    own: Option<CpuTime<f64>>,
    msgs: u64,
) {
    if let Some(cpu) = server {
        rec.num("server_cpu_s", cpu.total() / 1e6);
        if msgs > 0 {
            rec.num("cpu_us_per_msg", cpu.total() / msgs as f64);
            rec.num("user_us_per_msg", cpu.user / msgs as f64);
        }
    }
    if let Some(own) = own.filter(|_| msgs > 0) {
        // The load generator's own cost: it must stay well below the server's.
        rec.num("client_cpu_us_per_msg", own.total() / msgs as f64);
    }
}

fn server_meter(args: &Args) -> Option<CpuMeter> {
    let pid = args.opt::<u32>("server-pid")?;
    CpuMeter::start(pid, args.get("clk-tck", 100u64)).ok()
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to an hour, three significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

// ---- echo ----------------------------------------------------------------------

/// Shared by the echo connections (one thread: `Rc` and `Cell`).
struct EchoState {
    measuring: Cell<bool>,
    stop: Cell<bool>,
    replies: Cell<u64>,
    rtt: RefCell<Histogram<u64>>,
    /// Bytes read while measuring (`--client raw` and TCP).
    wire_bytes: Cell<u64>,
    /// Replies that came compressed while measuring (`--client raw`).
    compressed: Cell<u64>,
    /// Connections whose server agreed to permessage-deflate.
    deflate_conns: Cell<u64>,
    /// The bytes of one request as written (its frame or line).
    request_bytes: Cell<u64>,
}

impl EchoState {
    fn replied(&self, sent: Instant, now: Instant) {
        if self.measuring.get() {
            self.replies.set(self.replies.get() + 1);
            let us = now.duration_since(sent).as_micros() as u64;
            self.rtt.borrow_mut().saturating_record(us.max(1));
        }
    }
}

/// N connections, each keeping K messages of S bytes in flight: a reply
/// sends the next message. Every reply read in one wake-up is answered in
/// one write, as a well-behaved client would.
async fn echo(args: &Args) -> io::Result<Record> {
    let target = Target::from_args(args)?;
    let conns: usize = args.get("conns", 100);
    let inflight: usize = args.get("inflight", 10);
    let size: usize = args.get("size", 32);
    let warmup = Duration::from_secs_f64(args.get("warmup", 1.0));
    let seconds: f64 = args.get("seconds", 5.0);
    let state = Rc::new(EchoState {
        measuring: Cell::new(false),
        stop: Cell::new(false),
        replies: Cell::new(0),
        rtt: RefCell::new(histogram()),
        wire_bytes: Cell::new(0),
        compressed: Cell::new(0),
        deflate_conns: Cell::new(0),
        request_bytes: Cell::new(0),
    });
    if target.deflate && !target.raw_ws {
        return Err(io::Error::other("--deflate needs --client raw for echo"));
    }
    let read_buffer = (size + 64).clamp(4096, 128 * 1024);
    let text: Rc<str> = if json_payload(args)? {
        payload::json(size, 1).into()
    } else {
        "x".repeat(size).into()
    };
    // The frames, built once: plain, and compressed for the connections
    // whose server agreed.
    let plain = Rc::new(masked_frame(0x81, text.as_bytes()));
    let threshold: usize = args.get("deflate-threshold", 0);
    let compressed = (target.deflate && size >= threshold).then(|| {
        let data = deflate::compress(text.as_bytes(), deflate::CLIENT_LEVEL);
        Rc::new(masked_frame(0x81 | RSV1, &data))
    });
    let failures = Rc::new(Cell::new(0u64));
    let run = {
        let (state, failures) = (state.clone(), failures.clone());
        move |_: usize, client: Client| {
            let (state, failures) = (state.clone(), failures.clone());
            let (text, plain, compressed) = (text.clone(), plain.clone(), compressed.clone());
            tokio::task::spawn_local(async move {
                let result = match client {
                    Client::Ws(ws, _) => echo_ws(*ws, inflight, text.to_string(), state).await,
                    Client::WsRaw(mut tcp, agreed) => {
                        if agreed {
                            state.deflate_conns.set(state.deflate_conns.get() + 1);
                        }
                        let frame = match compressed.filter(|_| agreed) {
                            Some(frame) => frame,
                            None => plain,
                        };
                        state.request_bytes.set(frame.len() as u64);
                        match echo_check(&mut tcp, &frame, text.as_bytes()).await {
                            Ok(()) => {
                                echo_raw(tcp, inflight, &frame, FrameScanner::default(), state)
                                    .await
                            }
                            Err(err) => Err(err),
                        }
                        .map_err(Into::into)
                    }
                    Client::Tcp(tcp) => {
                        let line = format!("{text}\n").into_bytes();
                        state.request_bytes.set(line.len() as u64);
                        echo_raw(tcp, inflight, &line, LineScanner, state)
                            .await
                            .map_err(Into::into)
                    }
                };
                if let Err(err) = result {
                    if failures.get() == 0 {
                        eprintln!("  echo connection failed: {err}");
                    }
                    failures.set(failures.get() + 1);
                }
            });
        }
    };
    let failed = open_many(&target, conns, |_| None, read_buffer, run).await;
    if failed > 0 {
        return Err(io::Error::other(format!(
            "{failed} of {conns} connections failed"
        )));
    }
    tokio::time::sleep(warmup).await;
    let meter = server_meter(args);
    let own = CpuMeter::start(std::process::id(), args.get("clk-tck", 100u64)).ok();
    state.measuring.set(true);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    state.measuring.set(false);
    state.stop.set(true);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_us = meter.and_then(|m| m.elapsed_us().ok());
    let own_us = own.and_then(|m| m.elapsed_us().ok());

    let replies = state.replies.get();
    if replies == 0 && failures.get() > 0 {
        return Err(io::Error::other(format!(
            "{} echo connections failed, no replies",
            failures.get()
        )));
    }
    let rtt = state.rtt.borrow();
    let mut rec = Record::new();
    rec.text("kind", "echo")
        .num("conns", conns as f64)
        .num("inflight", inflight as f64)
        .num("size", size as f64)
        .num("seconds", elapsed)
        .num("msgs", replies as f64)
        .num("msgs_per_s", replies as f64 / elapsed)
        .num(
            "mib_per_s",
            replies as f64 * size as f64 / elapsed / (1024.0 * 1024.0),
        )
        .num("p50_ms", ms(rtt.value_at_quantile(0.50)))
        .num("p99_ms", ms(rtt.value_at_quantile(0.99)))
        .num("max_ms", ms(rtt.max()))
        .num("failed", failures.get() as f64)
        .num("request_bytes", state.request_bytes.get() as f64);
    if target.proto == Proto::Tcp || target.raw_ws {
        rec.num(
            "wire_bytes_per_msg",
            state.wire_bytes.get() as f64 / replies.max(1) as f64,
        );
    }
    if target.deflate {
        rec.num("deflate_conns", state.deflate_conns.get() as f64)
            .num(
                "compressed_share",
                state.compressed.get() as f64 / replies.max(1) as f64,
            );
    }
    record_cpu(&mut rec, cpu_us, own_us, replies);
    Ok(rec)
}

/// `--payload x|json`: whether the messages are chat JSON.
fn json_payload(args: &Args) -> io::Result<bool> {
    match args.str("payload").unwrap_or("x") {
        "x" => Ok(false),
        "json" => Ok(true),
        other => Err(io::Error::other(format!("--payload x|json, not {other}"))),
    }
}

/// Sends `request` once and reads the echo: it must be `expected` once
/// inflated (if it came compressed), and come alone.
async fn echo_check(tcp: &mut TcpStream, request: &[u8], expected: &[u8]) -> io::Result<()> {
    tcp.write_all(request).await?;
    let mut buf = BytesMut::with_capacity(expected.len() + 64);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("closed before the first echo"));
        }
        if let Some((frame, header)) = next_data_frame(&mut buf) {
            let mut inflater = Inflater::new();
            let echoed = if frame[0] & RSV1 != 0 {
                inflater.inflate(&frame[header..], expected.len())?
            } else {
                &frame[header..]
            };
            if echoed != expected {
                return Err(io::Error::other("the echo differs from the message sent"));
            }
            if !buf.is_empty() {
                return Err(io::Error::other("more than one echo for one message"));
            }
            return Ok(());
        }
    }
}

async fn echo_ws(
    mut ws: WebSocketStream<TcpStream>,
    inflight: usize,
    text: String,
    state: Rc<EchoState>,
) -> Result<(), Box<dyn std::error::Error>> {
    let msg = WsMessage::text(text);
    let mut sent = VecDeque::with_capacity(inflight);
    for _ in 0..inflight {
        ws.feed(msg.clone()).await?;
        sent.push_back(Instant::now());
    }
    ws.flush().await?;
    while let Some(first) = ws.next().await {
        let mut next = Some(first?);
        let now = Instant::now();
        let mut n = 0;
        // Everything already readable, then one write for all the answers.
        while let Some(reply) = next {
            if reply.is_text() || reply.is_binary() {
                let at = sent.pop_front().ok_or("more replies than requests")?;
                state.replied(at, now);
                n += 1;
            }
            next = match ws.next().now_or_never() {
                Some(Some(reply)) => Some(reply?),
                _ => None,
            };
        }
        if state.stop.get() {
            break;
        }
        for _ in 0..n {
            ws.feed(msg.clone()).await?;
            sent.push_back(Instant::now());
        }
        ws.flush().await?;
    }
    Ok(())
}

/// Counts complete replies in a stream of bytes.
trait Scanner {
    fn scan(&mut self, data: &[u8]) -> usize;

    /// The replies that came compressed since the last call.
    fn take_compressed(&mut self) -> u64 {
        0
    }
}

/// Replies are lines.
struct LineScanner;

impl Scanner for LineScanner {
    fn scan(&mut self, data: &[u8]) -> usize {
        data.iter().filter(|&&b| b == b'\n').count()
    }
}

/// Replies are unmasked WebSocket frames from the server: headers are
/// parsed, payloads skipped; a data frame counts when its last byte is in.
#[derive(Default)]
struct FrameScanner {
    header: [u8; 10],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    skip: u64,
    /// The current frame is a data frame (text, binary or continuation).
    data: bool,
    /// Data frames marked compressed (RSV1) since the last look.
    compressed: u64,
}

impl Scanner for FrameScanner {
    fn scan(&mut self, mut bytes: &[u8]) -> usize {
        let mut complete = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (bytes.len() as u64).min(self.skip);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                if self.skip == 0 && self.data {
                    complete += 1;
                }
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len < 2 {
                continue;
            }
            let extra = match self.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            if self.header_len < 2 + extra {
                continue;
            }
            let len = match extra {
                0 => u64::from(self.header[1] & 0x7f),
                2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                _ => u64::from_be_bytes(self.header[2..10].try_into().unwrap()),
            };
            self.data = self.header[0] & 0x0f <= 2;
            if self.data && self.header[0] & RSV1 != 0 {
                self.compressed += 1;
            }
            self.header_len = 0;
            self.skip = len;
            if len == 0 && self.data {
                complete += 1;
            }
        }
        complete
    }

    fn take_compressed(&mut self) -> u64 {
        std::mem::take(&mut self.compressed)
    }
}

/// A client frame: `first` (FIN, RSV1, the opcode), the length, a fixed
/// mask key, the masked payload.
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x5a, 0x3c, 0x96, 0xe1];
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&KEY);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}

/// Echo over a plain socket: `request` is the bytes of one message (a line,
/// or a masked WebSocket frame), `scanner` counts replies. Every read is
/// answered by one write carrying as many new requests as replies arrived.
async fn echo_raw(
    mut tcp: TcpStream,
    inflight: usize,
    request: &[u8],
    mut scanner: impl Scanner,
    state: Rc<EchoState>,
) -> io::Result<()> {
    let mut out = request.repeat(inflight);
    let mut sent = VecDeque::with_capacity(inflight);
    tcp.write_all(&out).await?;
    sent.extend(std::iter::repeat_n(Instant::now(), inflight));
    // Filled once; reads reuse it without clearing.
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let replies = scanner.scan(&buf[..n]);
        let compressed = scanner.take_compressed();
        if state.measuring.get() {
            state.wire_bytes.set(state.wire_bytes.get() + n as u64);
            state.compressed.set(state.compressed.get() + compressed);
        }
        for _ in 0..replies {
            let at = sent
                .pop_front()
                .ok_or_else(|| io::Error::other("more replies than requests"))?;
            state.replied(at, now);
        }
        if state.stop.get() {
            return Ok(());
        }
        if replies > 0 {
            out.clear();
            for _ in 0..replies {
                out.extend_from_slice(request);
            }
            tcp.write_all(&out).await?;
            sent.extend(std::iter::repeat_n(Instant::now(), replies));
        }
    }
}

// ---- broadcast -----------------------------------------------------------------

/// Compressed payloads recently inflated, with what they decoded to.
const RECENT_INFLATED: usize = 8;

/// A broadcast payload's publisher, sequence and send time, if it has them.
type Decoded = Option<(u32, u64, u64)>;

struct BroadcastState {
    /// The run's clock: payloads carry microseconds since this instant.
    epoch: Instant,
    received: Cell<u64>,
    /// Subscribers whose connection ended before the run did.
    dropped: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    /// Bytes the raw subscribers read.
    wire_bytes: Cell<u64>,
    /// Subscribers whose server agreed to permessage-deflate.
    deflate_conns: Cell<u64>,
    /// Deliveries that came compressed, and the inflations they took.
    compressed: Cell<u64>,
    inflations: Cell<u64>,
    /// One inflater for all subscribers: messages carry no context.
    inflater: RefCell<Inflater>,
    /// The last compressed payloads and their decoded headers, newest
    /// first: a broadcast reaches every subscriber as the same bytes
    /// (compressed by the server once, or each time alike: a message
    /// without context inflates to the same bytes whoever compressed it),
    /// so it is inflated once, not once per subscriber.
    recent: RefCell<VecDeque<(Vec<u8>, Decoded)>>,
}

impl BroadcastState {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn delivered(&self, payload: &[u8]) {
        self.record(payload::decode(payload));
    }

    fn record(&self, decoded: Decoded) {
        if let Some((_, _, sent)) = decoded {
            let us = self.now_us().saturating_sub(sent);
            self.latency.borrow_mut().saturating_record(us.max(1));
            self.received.set(self.received.get() + 1);
        }
    }

    /// A compressed message: inflated unless the same bytes were lately.
    fn delivered_compressed(&self, data: &[u8]) {
        self.compressed.set(self.compressed.get() + 1);
        let known = self
            .recent
            .borrow()
            .iter()
            .find(|(bytes, _)| bytes == data)
            .map(|(_, decoded)| *decoded);
        let decoded = match known {
            Some(decoded) => decoded,
            None => {
                self.inflations.set(self.inflations.get() + 1);
                let decoded = match self.inflater.borrow_mut().inflate(data, 16 << 20) {
                    Ok(message) => payload::decode(message),
                    Err(_) => None,
                };
                let mut recent = self.recent.borrow_mut();
                recent.truncate(RECENT_INFLATED - 1);
                recent.push_front((data.to_vec(), decoded));
                decoded
            }
        };
        self.record(decoded);
    }
}

/// N subscribers and P publishers on a chat server (every message to every
/// other member). Each publisher sends R messages per second of S bytes for
/// the run; subscribers time each delivery from the send time in the
/// payload. Afterwards the run waits up to `--drain` seconds for the last
/// deliveries and counts what never arrived.
async fn broadcast(args: &Args) -> io::Result<Record> {
    let target = Target::from_args(args)?;
    if target.deflate && !target.raw_ws {
        return Err(io::Error::other(
            "--deflate needs --client raw for broadcast",
        ));
    }
    // Publishers always speak through tokio-tungstenite, uncompressed.
    let pub_target = Target {
        raw_ws: false,
        deflate: false,
        ..target.clone()
    };
    let json = json_payload(args)?;
    let subs: usize = args.get("subs", 1000);
    let pubs: usize = args.get("pubs", 1);
    let rate: f64 = args.get("rate", 100.0);
    let size: usize = args.get("size", 64);
    let seconds: f64 = args.get("seconds", 10.0);
    let drain = Duration::from_secs_f64(args.get("drain", 10.0));
    let settle = Duration::from_secs_f64(args.get("settle", 1.0));
    let state = Rc::new(BroadcastState {
        epoch: Instant::now(),
        received: Cell::new(0),
        dropped: Cell::new(0),
        latency: RefCell::new(histogram()),
        wire_bytes: Cell::new(0),
        deflate_conns: Cell::new(0),
        compressed: Cell::new(0),
        inflations: Cell::new(0),
        inflater: RefCell::new(Inflater::new()),
        recent: RefCell::new(VecDeque::with_capacity(RECENT_INFLATED)),
    });

    let sub = {
        let state = state.clone();
        move |_: usize, client: Client| {
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let _ = match client {
                    Client::Ws(ws, _) => subscribe_ws(*ws, &state).await,
                    Client::Tcp(tcp) => subscribe_tcp(tcp, &state).await.map_err(Into::into),
                    Client::WsRaw(tcp, agreed) => {
                        if agreed {
                            state.deflate_conns.set(state.deflate_conns.get() + 1);
                        }
                        subscribe_raw_ws(tcp, &state).await.map_err(Into::into)
                    }
                };
                state.dropped.set(state.dropped.get() + 1);
            });
        }
    };
    let failed = open_many(&target, subs, |_| None, 4096, sub).await;
    if failed > 0 {
        return Err(io::Error::other(format!(
            "{failed} of {subs} subscribers failed"
        )));
    }
    let publishers: Rc<RefCell<Vec<Client>>> = Rc::default();
    let collect = {
        let publishers = publishers.clone();
        move |_: usize, client: Client| publishers.borrow_mut().push(client)
    };
    let failed = open_many(&pub_target, pubs, |_| None, 4096, collect).await;
    if failed > 0 {
        return Err(io::Error::other(format!(
            "{failed} of {pubs} publishers failed"
        )));
    }
    // The server adds members in on_open, just after the handshake.
    tokio::time::sleep(settle).await;

    let meter = server_meter(args);
    let own = CpuMeter::start(std::process::id(), args.get("clk-tck", 100u64)).ok();
    let started = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let published = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for (p, client) in publishers.borrow_mut().drain(..).enumerate() {
        let (state, published) = (state.clone(), published.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let format = if json {
                payload::chat_json
            } else {
                payload::encode
            };
            let _ = publish(
                client, p as u32, rate, size, format, end, &state, &published,
            )
            .await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let expected = published.get() * subs as u64;
    let drain_end = Instant::now() + drain;
    while state.received.get() < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_us = meter.and_then(|m| m.elapsed_us().ok());
    let own_us = own.and_then(|m| m.elapsed_us().ok());
    let received = state.received.get();
    let latency = state.latency.borrow();
    let mut rec = Record::new();
    rec.text("kind", "broadcast")
        .num("subs", subs as f64)
        .num("pubs", pubs as f64)
        .num("rate", rate)
        .num("size", size as f64)
        .num("seconds", publish_s)
        .num("published", published.get() as f64)
        .num("expected", expected as f64)
        .num("received", received as f64)
        .num("missing", expected.saturating_sub(received) as f64)
        .num("extra", received.saturating_sub(expected) as f64)
        .num("subs_dropped", state.dropped.get() as f64)
        .num("deliveries_per_s", received as f64 / publish_s)
        .num("p50_ms", ms(latency.value_at_quantile(0.50)))
        .num("p99_ms", ms(latency.value_at_quantile(0.99)))
        .num("max_ms", ms(latency.max()));
    if target.raw_ws && received > 0 {
        rec.num(
            "wire_bytes_per_msg",
            state.wire_bytes.get() as f64 / received as f64,
        );
    }
    if target.deflate {
        rec.num("deflate_conns", state.deflate_conns.get() as f64)
            .num(
                "compressed_share",
                state.compressed.get() as f64 / received.max(1) as f64,
            )
            .num("inflations", state.inflations.get() as f64);
    }
    record_cpu(&mut rec, cpu_us, own_us, received);
    Ok(rec)
}

async fn subscribe_ws(
    mut ws: WebSocketStream<TcpStream>,
    state: &BroadcastState,
) -> Result<(), Box<dyn std::error::Error>> {
    while let Some(msg) = ws.next().await {
        match msg? {
            WsMessage::Text(text) => state.delivered(text.as_bytes()),
            WsMessage::Binary(data) => state.delivered(&data),
            _ => {}
        }
    }
    Ok(())
}

/// A subscriber reading server frames itself (`--client raw`): headers
/// parsed, data payloads timed, control frames skipped.
async fn subscribe_raw_ws(mut tcp: TcpStream, state: &BroadcastState) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let n = tcp.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        state.wire_bytes.set(state.wire_bytes.get() + n as u64);
        while let Some((frame, header)) = next_data_frame(&mut buf) {
            if frame[0] & RSV1 != 0 {
                state.delivered_compressed(&frame[header..]);
            } else {
                state.delivered(&frame[header..]);
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
    }
}

/// Cuts the next whole data frame (text, binary or continuation) off the
/// unmasked frames at the start of `buf`, skipping control frames; with
/// its header's length. `None` until one has fully arrived.
fn next_data_frame(buf: &mut BytesMut) -> Option<(BytesMut, usize)> {
    loop {
        let (header, len) = frame_header(buf)?;
        if buf.len() < header + len {
            return None;
        }
        let frame = buf.split_to(header + len);
        if frame[0] & 0x0f <= 2 {
            return Some((frame, header));
        }
    }
}

/// The header length and payload length of the unmasked frame at the start
/// of `buf`, once its header is complete.
fn frame_header(buf: &[u8]) -> Option<(usize, usize)> {
    let len7 = usize::from(*buf.get(1)? & 0x7f);
    match len7 {
        126 => Some((
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        )),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((10, usize::try_from(u64::from_be_bytes(bytes)).ok()?))
        }
        n => Some((2, n)),
    }
}

async fn subscribe_tcp(mut tcp: TcpStream, state: &BroadcastState) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            state.delivered(&line[..end]);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
    }
}

/// Sends `rate` messages per second of `size` bytes in `format` until
/// `end`. Whatever the server sends to the publisher (other publishers'
/// messages) is read and dropped.
#[allow(clippy::too_many_arguments)]
async fn publish(
    client: Client,
    publisher: u32,
    rate: f64,
    size: usize,
    format: fn(u32, u64, u64, usize) -> String,
    end: tokio::time::Instant,
    state: &BroadcastState,
    published: &Cell<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut seq = 0u64;
    match client {
        Client::WsRaw(..) => return Err("raw WebSocket clients are for echo only".into()),
        Client::Ws(ws, _) => {
            let (mut sink, mut stream) = ws.split();
            let drain =
                tokio::task::spawn_local(async move { while stream.next().await.is_some() {} });
            loop {
                if tick.tick().await >= end {
                    break;
                }
                let text = format(publisher, seq, state.now_us(), size);
                sink.send(WsMessage::text(text)).await?;
                seq += 1;
                published.set(published.get() + 1);
            }
            drain.abort();
        }
        Client::Tcp(tcp) => {
            let (mut r, mut w) = tcp.into_split();
            let drain = tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            loop {
                if tick.tick().await >= end {
                    break;
                }
                let mut line = format(publisher, seq, state.now_us(), size);
                line.push('\n');
                w.write_all(line.as_bytes()).await?;
                seq += 1;
                published.set(published.get() + 1);
            }
            drain.abort();
        }
    }
    Ok(())
}

// ---- idle ------------------------------------------------------------------------

/// Opens N connections that send nothing and measures the server's resident
/// memory per connection (from `/proc/PID/status`) and the connections it
/// holds (open descriptors). With `--src-ip N`, or past 20,000 connections,
/// source addresses go 127.0.0.N, N + 1, ... every 20,000 connections (one
/// address has 28,232 ephemeral ports); otherwise the kernel picks them. With `--hold` the
/// connections stay open that many seconds after the figures are printed,
/// so a second process can add more; `--rss-base-kib` and `--fds-base`
/// then make the figures cover both processes' connections.
async fn idle(args: &Args) -> io::Result<Record> {
    let target = Target::from_args(args)?;
    let pid: u32 = args
        .opt("server-pid")
        .ok_or_else(|| io::Error::other("--server-pid needed"))?;
    let conns: usize = args.get("conns", 10_000);
    let hold = Duration::from_secs_f64(args.get("hold", 0.0));
    let settle = Duration::from_secs_f64(args.get("settle", 2.0));
    // Explicit source addresses only when asked for or needed: binding each
    // socket to a port first is slow once thousands of ports are taken.
    let first_ip: Option<u8> = args
        .opt("src-ip")
        .or((conns > CONNS_PER_SOURCE_IP).then_some(1));
    let rss_before = match args.opt::<u64>("rss-base-kib") {
        Some(base) => base,
        None => procfs::rss_kib(pid)?,
    };
    let fds_before = match args.opt::<usize>("fds-base") {
        Some(base) => base,
        None => procfs::open_fds(pid)?,
    };
    let open = Rc::new(Cell::new(0usize));
    let agreed = Rc::new(Cell::new(0usize));
    let keep = {
        let (open, agreed) = (open.clone(), agreed.clone());
        move |_: usize, client: Client| {
            open.set(open.get() + 1);
            if let Client::Ws(_, true) | Client::WsRaw(_, true) = &client {
                agreed.set(agreed.get() + 1);
            }
            let open = open.clone();
            tokio::task::spawn_local(async move {
                // Read (and so answer pings) until the server closes.
                match client {
                    Client::Ws(mut ws, _) => while let Some(Ok(_)) = ws.next().await {},
                    Client::Tcp(mut tcp) | Client::WsRaw(mut tcp, _) => {
                        let mut buf = [0u8; 512];
                        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                }
                open.set(open.get() - 1);
            });
        }
    };
    let src = move |i: usize| {
        let octet = usize::from(first_ip?) + i / CONNS_PER_SOURCE_IP;
        let octet = u8::try_from(octet).unwrap_or(u8::MAX);
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
    };
    let started = Instant::now();
    let failed = open_many(&target, conns, src, 1024, keep).await;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after = procfs::rss_kib(pid)?;
    let fds_after = procfs::open_fds(pid)?;
    let held = fds_after.saturating_sub(fds_before);
    let mut rec = Record::new();
    rec.text("kind", "idle")
        .num("conns", conns as f64)
        .num("failed", failed as f64)
        .num("client_open", open.get() as f64)
        .num("held", held as f64)
        .num("connect_s", connect_s)
        .num("rss_before_kib", rss_before as f64)
        .num("rss_after_kib", rss_after as f64);
    if target.deflate {
        rec.num("deflate_conns", agreed.get() as f64);
    }
    if held > 0 {
        rec.num(
            "rss_kib_per_conn",
            rss_after.saturating_sub(rss_before) as f64 / held as f64,
        );
    }
    if !hold.is_zero() {
        // Print now: the script waits for this line before adding more.
        let mut early = rec.clone();
        for key in LABELS {
            if let Some(v) = args.str(key) {
                early.text(key, v);
            }
        }
        println!("{}", early.line().replacen("RESULT", "HOLDING", 1));
        tokio::time::sleep(hold).await;
    }
    Ok(rec)
}
