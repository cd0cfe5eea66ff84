//! The HTTP side of a connection: read the request head, decide (route,
//! page, refusal or upgrade), write the response. Everything but
//! [`read_head`] and [`judge`] works on byte slices and is tested without
//! sockets.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::{DynComponent, Extensions, TransportInfo};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::deflate::PerMessage;
use crate::error::Error;
use crate::hook::{Reject, Request};
use crate::router::{BadParam, Found};
use crate::transport::Shared;
use crate::upgrade::HttpAnswer;

/// Most headers a request may carry (more: 431).
const MAX_HEADERS: usize = 48;
/// How much is read from the socket at a time during the handshake.
const READ_CHUNK: usize = 1024;

/// Headers that only served the upgrade itself; they are not kept on the
/// connection, so an idle connection does not carry them around.
const HANDSHAKE_ONLY: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// A parsed request head.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// HTTP/1.1 (an upgrade needs it).
    pub(crate) http11: bool,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Every line of header `name`, as sent.
    fn header_lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.header_lines(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// How many times header `name` appears.
    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether header `name` lists `token` (comma-separated, case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .any(|v| v.eq_ignore_ascii_case(token))
    }
}

/// Parses a complete head from `buf`: `Ok(None)` means more bytes are needed;
/// on success also returns the head's length (what follows is WebSocket data).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => {
            // httparse has read the method by the time it fails on a
            // header: a HEAD request gets its answer without a body.
            let head_only = req.method == Some("HEAD");
            let response = match err {
                httparse::Error::TooManyHeaders => Response::error(431, "too many request headers"),
                _ => Response::error(400, "malformed HTTP request"),
            };
            return Err(response.head_only(head_only));
        }
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        let head_only = req.method == Some("HEAD");
        return Err(Response::error(400, "malformed HTTP request").head_only(head_only));
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let head = Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        http11: version >= 1,
        headers,
    };
    Ok(Some((head, len)))
}

/// Whether the request in `buf` is a `HEAD`, for a head too large to parse:
/// its method, after the empty lines a server ignores before the request
/// line (RFC 9112 2.2), as `httparse` skips them.
fn is_head(mut buf: &[u8]) -> bool {
    loop {
        match buf {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => buf = rest,
            _ => return buf.starts_with(b"HEAD "),
        }
    }
}

/// Reads from `io` until `parse` finds a whole HTTP head (a request or a
/// response) in at most `max` bytes; returns what `parse` made of it and
/// the bytes that came after it.
pub(crate) async fn read_head<IO, T, E>(
    io: &mut IO,
    max: usize,
    too_large: impl FnOnce(&[u8]) -> E,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<(T, Vec<u8>), E>
where
    IO: AsyncRead + Unpin,
    E: From<Error>,
{
    let mut buf = Vec::new();
    loop {
        let len = buf.len();
        if len >= max {
            return Err(too_large(&buf));
        }
        buf.resize(len + READ_CHUNK.min(max - len), 0);
        let n = io.read(&mut buf[len..]).await.map_err(Error::Io)?;
        buf.truncate(len + n);
        if n == 0 {
            return Err(Error::Eof.into());
        }
        if let Some((head, used)) = parse(&buf)? {
            buf.drain(..used);
            return Ok((head, buf));
        }
    }
}

/// Why a connection is not upgraded.
pub(crate) enum NoUpgrade {
    /// Answer with this and close.
    Answer(Response),
    /// Nothing to answer: the peer left or the socket failed.
    Failed(Error),
}

impl From<Error> for NoUpgrade {
    fn from(err: Error) -> Self {
        NoUpgrade::Failed(err)
    }
}

/// An upgrade the server agreed to.
pub(crate) struct Upgrade {
    pub(crate) component: Arc<dyn DynComponent>,
    pub(crate) accept_key: String,
    pub(crate) info: TransportInfo,
    /// What the handshake hook attached.
    pub(crate) extensions: Extensions,
    /// Bytes read after the request head: the first frames.
    pub(crate) leftover: Vec<u8>,
    /// The request's `Sec-WebSocket-Extensions` lines, kept for
    /// [`admit_head`] to answer once the handshake hook has admitted the
    /// request (empty without permessage-deflate on the server).
    pub(crate) extension_offers: Vec<String>,
    /// permessage-deflate as agreed, held from then on: a place for a
    /// connection with context is given back if the upgrade goes no
    /// further.
    pub(crate) deflate: Option<PerMessage>,
    /// The `Sec-WebSocket-Extensions` response header's value, if agreed.
    pub(crate) extension: Option<String>,
}

impl Upgrade {
    /// The connection's permessage-deflate, if agreed, taken out for it.
    pub(crate) fn per_message(&mut self) -> Option<PerMessage> {
        self.deflate.take()
    }

    /// The headers a `101` adds to `Upgrade` and `Connection`.
    pub(crate) fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("Sec-WebSocket-Accept", self.accept_key.clone())];
        if let Some(protocol) = self.info.subprotocol() {
            headers.push(("Sec-WebSocket-Protocol", protocol.to_owned()));
        }
        if let Some(extension) = &self.extension {
            headers.push(("Sec-WebSocket-Extensions", extension.clone()));
        }
        headers
    }
}

/// Reads the request and judges it: [`decide`], then the handshake hook.
pub(crate) async fn judge<IO: AsyncRead + Unpin>(
    shared: &Shared,
    io: &mut IO,
    peer: SocketAddr,
) -> Result<Upgrade, NoUpgrade> {
    let too_large = |buf: &[u8]| {
        let response = Response::error(431, "request head too large");
        NoUpgrade::Answer(response.head_only(is_head(buf)))
    };
    let parse = |buf: &[u8]| parse_head(buf).map_err(NoUpgrade::Answer);
    let (head, leftover) = read_head(io, shared.max_request_head, too_large, parse).await?;
    let mut upgrade = admit_head(shared, head, Vec::new(), peer)
        .await
        .map_err(NoUpgrade::Answer)?;
    upgrade.leftover = leftover;
    Ok(upgrade)
}

/// Judges a whole request head: [`decide`], then the handshake hook.
/// `params` are route parameters found by another server's router, used
/// when the transport's own routes find none. Whatever the answer, a
/// `HEAD` request gets it without its body.
pub(crate) async fn admit_head(
    shared: &Shared,
    head: Head,
    params: Vec<(String, String)>,
    peer: SocketAddr,
) -> Result<Upgrade, Response> {
    let head_only = head.method == "HEAD";
    let mut upgrade = decide(shared, head).map_err(|response| response.head_only(head_only))?;
    if upgrade.info.params().next().is_none() && !params.is_empty() {
        let info = std::mem::replace(&mut upgrade.info, TransportInfo::new("ws"));
        upgrade.info = info.with_params(params);
    }
    match run_hook(shared, peer, &upgrade.info).await {
        Ok(extensions) => upgrade.extensions = extensions,
        Err(reject) => {
            let mut response = Response::error(reject.status(), reject.reason_text());
            response.reason = format!("rejected by the handshake hook: {reject}");
            return Err(response.head_only(head_only));
        }
    }
    // Only now, so that requests the hook refuses (or is still judging)
    // hold none of the places for connections with compression context.
    if let Some(deflate) = &shared.deflate {
        let offers = std::mem::take(&mut upgrade.extension_offers);
        (upgrade.deflate, upgrade.extension) =
            deflate.accept(offers.iter().map(String::as_str)).unzip();
    }
    Ok(upgrade)
}

/// The handshake hook's verdict on a routed request: the state it
/// attached (none without a hook).
pub(crate) async fn run_hook(
    shared: &Shared,
    peer: SocketAddr,
    info: &TransportInfo,
) -> Result<Extensions, Reject> {
    let Some(hook) = &shared.hook else {
        return Ok(Extensions::default());
    };
    let accept = hook(Request {
        peer,
        info: info.clone(),
    })
    .await?;
    Ok(accept.extensions)
}

/// What a component sees of a WebSocket connection's request, on either
/// side.
pub(crate) fn info(path: &str, query: Option<&str>, subprotocol: Option<&str>) -> TransportInfo {
    let mut info = TransportInfo::new("ws").with_path(path);
    if let Some(query) = query {
        info = info.with_query(query);
    }
    if let Some(protocol) = subprotocol {
        info = info.with_subprotocol(protocol);
    }
    info
}

/// Why a request whose route parameter does not decode is refused (400).
pub(crate) const BAD_PARAM: &str = "a path parameter is not UTF-8 once decoded";

/// The component for `path` (its route's, or else the fallback, with no
/// parameters), if any.
pub(crate) fn route<'a>(
    shared: &'a Shared,
    path: &str,
) -> Result<Option<Found<'a, Arc<dyn DynComponent>>>, BadParam> {
    let fallback = || {
        let value = shared.fallback.as_ref()?;
        Some(Found {
            value,
            params: Vec::new(),
        })
    };
    Ok(shared.routes.find(path)?.or_else(fallback))
}

/// Routing, validation and the origin policy, in the order a client would
/// want to learn about problems: the upgrade, or the answer instead.
pub(crate) fn decide(shared: &Shared, head: Head) -> Result<Upgrade, Response> {
    let route = route(shared, &head.path).map_err(|_| Response::error(400, BAD_PARAM))?;
    // A page reads no parameters: a path whose parameter does not decode
    // finds no page, and the route alone decides the answer.
    let page = shared.pages.find(&head.path).unwrap_or_default();
    if route.is_none() && page.is_none() {
        return Err(Response::error(404, "not found"));
    }
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return Err(Response::error(405, "method not allowed").header("Allow", "GET, HEAD"));
    }
    // Another protocol's upgrade (h2c, say) is a plain request to us.
    let wants_upgrade =
        head.has_token("upgrade", "websocket") || head.header("sec-websocket-key").is_some();
    if !wants_upgrade || head_only {
        return Err(match page {
            Some(page) => Response::page(page.value.content_type(), page.value.body().clone()),
            None => Response::upgrade_required("this is a WebSocket endpoint"),
        });
    }
    let Some(Found {
        value: component,
        params,
    }) = route
    else {
        return Err(Response::error(404, "no WebSocket here"));
    };
    // A request must not leave it to us which of two values counts
    // (RFC 6455 4.1 and 11.3: the key and the version appear once; RFC 7230
    // 5.4: one Host). Two Upgrade lines are refused too, even if one says
    // websocket: a client offering several protocols lists them in one.
    // Connection, Sec-WebSocket-Protocol and Sec-WebSocket-Extensions are
    // lists and may repeat.
    for once in [
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "host",
    ] {
        if head.count(once) > 1 {
            return Err(Response::error(400, format!("more than one {once} header")));
        }
    }
    if !head.has_token("upgrade", "websocket") {
        return Err(Response::error(400, "Upgrade must be websocket"));
    }
    if !head.http11 {
        return Err(Response::error(400, "WebSocket needs HTTP/1.1"));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(Response::error(400, "Connection must include Upgrade"));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(Response::upgrade_required("unsupported WebSocket version")
            .header("Sec-WebSocket-Version", "13"));
    }
    let key = match head.header("sec-websocket-key") {
        Some(key) if is_valid_key(key) => key,
        _ => return Err(Response::error(400, "bad Sec-WebSocket-Key")),
    };
    let Some(host) = head.header("host") else {
        return Err(Response::error(400, "missing Host"));
    };
    if !shared.origins.allows(head.header("origin"), Some(host)) {
        return Err(Response::error(403, "origin not allowed"));
    }
    let accept_key = derive_accept_key(key.as_bytes());
    let subprotocol = shared.subprotocols.iter().find(|ours| {
        head.header_values("sec-websocket-protocol")
            .any(|theirs| theirs == &***ours)
    });
    let info = info(&head.path, head.query.as_deref(), subprotocol.map(|p| &**p));
    let extension_offers = match &shared.deflate {
        Some(_) => head
            .header_lines("sec-websocket-extensions")
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let headers = head
        .headers
        .into_iter()
        .filter(|(name, _)| !HANDSHAKE_ONLY.iter().any(|h| name.eq_ignore_ascii_case(h)))
        .collect::<Vec<_>>();
    Ok(Upgrade {
        component: component.clone(),
        accept_key,
        info: info.with_params(params).with_headers(headers),
        extensions: Extensions::default(),
        leftover: Vec::new(),
        extension_offers,
        deflate: None,
        extension: None,
    })
}

/// 16 random bytes in base64: 22 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// A plain HTTP response (the `101` is written by [`switching_protocols`]).
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(&'static str, String)>,
    content_type: String,
    body: Bytes,
    head_only: bool,
    /// For the logs: why this answer.
    pub(crate) reason: String,
}

impl Response {
    /// A refusal with a short plain-text body.
    pub(crate) fn error(status: u16, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8".into(),
            body: Bytes::from(format!("{status} {}: {reason}\n", reason_phrase(status))),
            head_only: false,
            reason,
        }
    }

    /// `426`: this path speaks WebSocket only (or not this version of it).
    /// RFC 7230 6.7 (and RFC 9110 7.8): a 426 carries `Upgrade`, and whoever
    /// sends `Upgrade` lists `upgrade` in `Connection`. The handshake closes
    /// the connection after any answer but a `101`, so [`Self::to_bytes`]
    /// writes one `Connection: Upgrade, close`, not two `Connection`
    /// headers that disagree.
    pub(crate) fn upgrade_required(reason: impl Into<String>) -> Self {
        Response::error(426, reason).header("Upgrade", "websocket")
    }

    pub(crate) fn page(content_type: &str, body: Bytes) -> Self {
        Response {
            status: 200,
            headers: vec![
                ("Cache-Control", "no-cache".into()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
            content_type: content_type.into(),
            body,
            head_only: false,
            reason: "page served".into(),
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The answer to a `HEAD` request: the same status and headers, with
    /// the `Content-Length` of the body it leaves out (RFC 9110 9.3.2).
    pub(crate) fn head_only(mut self, head_only: bool) -> Self {
        self.head_only = head_only;
        self
    }

    /// The answer for a server that writes it itself (and leaves the
    /// body out of its answer to a `HEAD` request).
    pub(crate) fn into_answer(self) -> HttpAnswer {
        HttpAnswer {
            status: self.status,
            headers: self.headers,
            content_type: self.content_type,
            body: self.body,
            reason: self.reason,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let (status, phrase) = (self.status, reason_phrase(self.status));
        let mut out = format!("HTTP/1.1 {status} {phrase}\r\n");
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let (content_type, length) = (&self.content_type, self.body.len());
        // Every answer but the 101 ends the connection; one that offers an
        // upgrade names it in the same (single) Connection header.
        let upgrade = self.headers.iter().any(|(name, _)| *name == "Upgrade");
        let connection = if upgrade { "Upgrade, close" } else { "close" };
        out.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: {connection}\r\n\r\n"
        ));
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The `101` that completes an upgrade.
pub(crate) fn switching_protocols(upgrade: &Upgrade) -> Vec<u8> {
    let mut out = String::from(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    for (name, value) in upgrade.response_headers() {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WsTransport;
    use crate::config::tests::Quiet;

    const UPGRADE: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: x, chat.v1\r\n\
        Cookie: sid=abc\r\n\r\n";

    fn transport() -> WsTransport {
        WsTransport::builder()
            .route("/chat", Quiet)
            .page("/", crate::Page::html("<p>hi</p>"))
            .subprotocols(["chat.v2", "chat.v1"])
            .build()
            .expect("valid")
    }

    fn decide_raw(raw: &str) -> Result<Upgrade, Response> {
        let (head, len) = parse_head(raw.as_bytes())
            .expect("parses")
            .expect("complete");
        assert_eq!(len, raw.len());
        decide(&transport().shared, head)
    }

    #[test]
    fn upgrade_accepted_with_rfc_key_and_subprotocol() {
        let up = decide_raw(UPGRADE).expect("an upgrade");
        // The example from RFC 6455 section 1.3.
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.info.path(), "/chat");
        assert_eq!(up.info.query_param("room").as_deref(), Some("1"));
        assert_eq!(up.info.subprotocol(), Some("chat.v1"));
        assert_eq!(up.info.cookie("sid"), Some("abc"));
        assert_eq!(up.info.headers().get("sec-websocket-key"), None);
    }

    #[test]
    fn refusals() {
        let origin = |origin| UPGRADE.replace("Cookie", &format!("Origin: {origin}\r\nCookie"));
        let cases = [
            (UPGRADE.replace("/chat?room=1", "/nope"), 404),
            ("GET /chat HTTP/1.1\r\nHost: x\r\n\r\n".into(), 426),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(), 200),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".into(),
                200,
            ),
            ("POST /chat HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405),
            (UPGRADE.replace("Version: 13", "Version: 8"), 426),
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
            (UPGRADE.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (origin("http://evil.example"), 403),
            (origin("http://127.0.0.1:8080"), 101),
            // Values that must appear once, twice (even when equal).
            (
                UPGRADE.replace("Cookie", "Upgrade: websocket\r\nCookie"),
                400,
            ),
            (
                UPGRADE.replace("Upgrade: websocket", "Upgrade: foo\r\nUpgrade: websocket"),
                400,
            ),
            (
                UPGRADE.replace("Cookie", "Sec-WebSocket-Version: 13\r\nCookie"),
                400,
            ),
            (
                UPGRADE.replace("Cookie", "Sec-WebSocket-Version: 8\r\nCookie"),
                400,
            ),
            (
                UPGRADE.replace(
                    "Cookie",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie",
                ),
                400,
            ),
            (UPGRADE.replace("Cookie", "Host: other\r\nCookie"), 400),
            // Lists may repeat.
            (
                UPGRADE.replace("keep-alive, Upgrade", "keep-alive\r\nConnection: Upgrade"),
                101,
            ),
            (
                UPGRADE.replace("Cookie", "Sec-WebSocket-Protocol: y\r\nCookie"),
                101,
            ),
            (
                UPGRADE.replace(
                    "Cookie",
                    "Sec-WebSocket-Extensions: a\r\nSec-WebSocket-Extensions: b\r\nCookie",
                ),
                101,
            ),
            // Several protocols offered in one Upgrade header.
            (
                UPGRADE.replace("Upgrade: websocket", "Upgrade: foo, websocket"),
                101,
            ),
        ];
        for (raw, expected) in cases {
            let status = decide_raw(&raw).map_or_else(|r| r.status, |_| 101);
            assert_eq!(status, expected, "{raw}");
        }
    }

    #[test]
    fn responses_render() {
        let r = Response::upgrade_required("ws only");
        let text = String::from_utf8(r.to_bytes()).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n"));
        assert!(text.contains("Connection: Upgrade, close\r\n\r\n426 Upgrade Required: ws only\n"));
        assert_eq!(text.matches("Connection:").count(), 1, "{text}");
        let page = Response::page("text/html", Bytes::from_static(b"<p>")).head_only(true);
        assert!(
            String::from_utf8(page.to_bytes())
                .expect("utf-8")
                .ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n")
        );
        // HEAD: the head GET would get, to the byte, and no body.
        let get = Response::error(404, "not found").to_bytes();
        let head = Response::error(404, "not found").head_only(true).to_bytes();
        assert!(
            get.starts_with(&head) && get.len() == head.len() + "404 Not Found: not found\n".len()
        );
    }

    #[test]
    fn head_requests_get_no_body_even_when_malformed() {
        for raw in [
            "HEAD / HTTP/1.1\r\nBad Header\r\n\r\n",
            "HEAD /\x01 HTTP/1.1\r\n\r\n",
        ] {
            let response = parse_head(raw.as_bytes()).expect_err("malformed");
            assert_eq!(response.status, 400);
            assert!(response.to_bytes().ends_with(b"\r\n\r\n"), "{raw:?}");
        }
        // Empty lines before the request line are skipped, by httparse and
        // for a head too large to parse alike.
        let late = parse_head(b"\r\n\nHEAD / HTTP/1.1\r\nBad Header\r\n\r\n").expect_err("bad");
        assert!(late.to_bytes().ends_with(b"\r\n\r\n"));
        assert!(is_head(b"\r\n\nHEAD / HTTP/1.1\r\nX: "));
        assert!(!is_head(b"\r\rHEAD / HTTP/1.1\r\nX: "));
        assert!(!is_head(b"GET / HTTP/1.1\r\nX: "));
    }
}
