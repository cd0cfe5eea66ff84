//! One axum app, one port: a REST route, a page and three WebSocket
//! endpoints served by switchboard.
//!
//! ```sh
//! cargo run --release --example axum_app                 # http://127.0.0.1:3000/
//! cargo run --release --example axum_app -- --addr 127.0.0.1:3001 --deflate
//! ```
//!
//! `--deflate` accepts permessage-deflate on the three WebSocket endpoints.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | 200, JSON: `{"connections":N}`, the open switchboard connections |
//! | `GET /` | the chat page |
//! | WebSocket `/chat` | the chat room: every message to every other client |
//! | WebSocket `/echo` | echo, messages up to 16 MiB (for the conformance suite) |
//! | WebSocket `/private/echo` | echo behind a middleware that requires `Authorization: Bearer secret` (401 otherwise) |
//! | anything else | 404 from the router |
//!
//! The sockets belong to two switchboard servers with no listener of their
//! own (the chat's limits, and the echo's 16 MiB one); axum accepts every
//! connection and upgrades it, switchboard frames and runs it. The identity
//! the middleware found reaches the private echo as connection state (its
//! `on_open` logs it). Ctrl-C closes every open socket with 1001, then the
//! process exits. `switchboard_axum` is the crate behind the facade's
//! `axum` feature (`switchboard::axum`), a dependency of this example.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use switchboard::ws::{Deflate, Page, WsTransport};
use switchboard::{
    BoxError, CloseCode, Config, Connection, Hub, Message, MessageComponent, RateLimit,
    RateLimitAction, Server, ServerHandle,
};
use switchboard_axum::WsUpgrade;

/// See "Memory after an attack" in docs/reliability.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAGE: &str = include_str!("chat.html");

/// How long plain HTTP requests in flight may take once Ctrl-C came.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Every message to every other member; text only.
#[derive(Default)]
struct Chat {
    hub: Hub,
}

impl MessageComponent for Chat {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        if !msg.is_text() {
            conn.close_with(CloseCode::UNSUPPORTED, "text only");
            return Ok(());
        }
        self.hub.broadcast_except(msg, conn.id()).await?;
        Ok(())
    }
}

struct Echo;

impl MessageComponent for Echo {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        if let Some(User(name)) = conn.extension::<User>() {
            tracing::info!(conn = %conn.id(), user = %name, "private echo opened");
        }
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

/// Who the middleware let in.
#[derive(Clone, Debug)]
struct User(String);

/// Lets a request through only with `Authorization: Bearer secret`, and
/// tells the handler who it is.
async fn bearer(mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION);
    if authorization.and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Authorization: Bearer secret, please\n",
        )
            .into_response();
    }
    request.extensions_mut().insert(User("bearer".into()));
    next.run(request).await
}

/// The address to listen on, and whether to accept permessage-deflate.
fn parse_args() -> Result<(SocketAddr, bool), String> {
    let mut addr = "127.0.0.1:3000".to_owned();
    let mut deflate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            "--deflate" => deflate = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: axum_app [--addr ADDR] [--deflate])"
                ));
            }
        }
    }
    let addr = addr
        .parse()
        .map_err(|err| format!("--addr {addr}: {err}"))?;
    Ok((addr, deflate))
}

/// A transport serving `component` on whatever path it is mounted at.
fn transport(
    component: impl MessageComponent,
    deflate: bool,
) -> Result<WsTransport, switchboard::ws::Error> {
    let builder = WsTransport::builder().fallback(component);
    if deflate {
        builder.deflate(Deflate::new()).build()
    } else {
        builder.build()
    }
}

fn app(chat: &ServerHandle, echo: &ServerHandle, deflate: bool) -> Result<Router, BoxError> {
    let private_echo = {
        let (server, transport) = (echo.clone(), transport(Echo, deflate)?);
        move |upgrade: WsUpgrade, axum::Extension(user): axum::Extension<User>| async move {
            upgrade.with(user).serve(&server, &transport).await
        }
    };
    let health = {
        let (chat, echo) = (chat.clone(), echo.clone());
        move || async move {
            let open = chat.stats().open_connections + echo.stats().open_connections;
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"connections\":{open}}}"),
            )
        }
    };
    let page = Page::html(PAGE);
    let router = Router::new()
        .route("/health", get(health))
        .route(
            "/",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, page.content_type().to_owned())],
                    page.body().clone(),
                )
            }),
        )
        .route(
            "/chat",
            switchboard_axum::mount(chat, transport(Chat::default(), deflate)?),
        )
        .route(
            "/echo",
            switchboard_axum::mount(echo, transport(Echo, deflate)?),
        )
        .route(
            "/private/echo",
            axum::routing::any(private_echo).layer(middleware::from_fn(bearer)),
        );
    Ok(router)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (addr, deflate) = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("axum_app: {err}");
            return ExitCode::from(2);
        }
    };
    match run(addr, deflate).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("axum_app: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(addr: SocketAddr, deflate: bool) -> Result<(), BoxError> {
    let chat_limits = Config::default()
        .max_message_size(16 * 1024)
        .max_frame_size(16 * 1024)
        .rate_limit(Some(RateLimit::new(10.0, 50).action(RateLimitAction::Drop)));
    let echo_limits = Config::default()
        .max_message_size(16 << 20)
        .max_frame_size(16 << 20);
    let chat = Server::builder().config(chat_limits).start().await?;
    let echo = Server::builder().config(echo_limits).start().await?;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| format!("bind {addr}: {err}"))?;
    println!("listening on http://{}/", listener.local_addr()?);
    // Real-time traffic: no Nagle delay (switchboard's own listeners set it).
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        });
    let service = app(&chat, &echo, deflate)?.into_make_service_with_connect_info::<SocketAddr>();

    // On Ctrl-C, axum stops accepting first (an upgraded socket is no
    // longer axum's, so it does not hold axum up); a plain HTTP request
    // still in flight gets a few seconds. Then every socket gets 1001.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = axum::serve(listener, service).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let mut serving = std::pin::pin!(serving.into_future());
    tokio::select! {
        result = &mut serving => result?,
        _ = tokio::signal::ctrl_c() => {
            println!("shutting down");
            let _ = stop.send(());
            if tokio::time::timeout(HTTP_GRACE, &mut serving).await.is_err() {
                eprintln!("axum_app: HTTP requests still open after {HTTP_GRACE:?}; closing anyway");
            }
        }
    }
    tokio::join!(chat.shutdown(), echo.shutdown());
    Ok(())
}
