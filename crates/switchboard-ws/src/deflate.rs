//! permessage-deflate (RFC 7692): the settings ([`Deflate`]), the
//! negotiation in the handshake's `Sec-WebSocket-Extensions` header, and
//! compressing and inflating one message at a time with flate2.
//!
//! # Memory
//!
//! A zlib stream is large (measured with zlib-rs: 371 KiB to compress with
//! a 32 KiB window, 245 KiB with the smallest, 46 KiB to inflate), so no
//! connection holds one while it needs none:
//!
//! - Without context takeover (the default, asked of the client with
//!   `client_no_context_takeover` and promised with
//!   `server_no_context_takeover`), every message is compressed and
//!   inflated on its own. The streams come from a pool shared by the
//!   transport's connections (at most `POOL` idle ones of each kind are
//!   kept), are reset after each message and go back: an idle connection
//!   holds none. Resetting a compressor costs about 3 µs (zlib clears its
//!   hash table), paid once per compressed message, and once per
//!   broadcast rather than per receiver.
//! - With context takeover ([`Deflate::context_takeover`]), a connection
//!   keeps its own stream for each direction that uses it, created with
//!   the first compressed message and dropped with the connection. At most
//!   [`Deflate::max_context_takeover`] connections of a server's transport
//!   agree to it at once; the next ones are answered without it, so that
//!   opening connections cannot make the server hold streams without
//!   bound.
//!
//! # Compressed once per broadcast
//!
//! A message compressed without context takeover depends only on its bytes
//! and the window size, so every connection of the transport may send the
//! same compressed bytes. The transport remembers the last `RECENT`
//! messages compressed that way, a copy of each payload with its
//! compressed form (`RECENT_BYTES` of both at most, oldest out first): a
//! broadcast is compressed by the first connection that sends it, and the
//! others find it by comparing bytes. A copy, rather than a clone of the
//! payload, keeps no received buffer alive and matches nothing but equal
//! bytes. Payloads too large to remember (over a quarter of
//! `RECENT_BYTES`, with their compressed form) are compressed per
//! connection.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use switchboard_core::{CloseCode, Error};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// What a sync flush ends with, which RFC 7692 (7.2.1) leaves off the wire
/// and the receiver adds back before inflating.
const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];

/// The window of everything this crate inflates: the largest, so any
/// window the peer uses fits.
const MAX_WINDOW_BITS: u8 = 15;

/// Idle streams of each kind a transport keeps for reuse.
pub(crate) const POOL: usize = 8;

/// Compressed messages a transport remembers for other connections.
pub(crate) const RECENT: usize = 8;

/// The bytes (payload copies and compressed forms) a transport remembers.
pub(crate) const RECENT_BYTES: usize = 4 << 20;

/// Default [`Deflate::max_context_takeover`]: 100 connections, about
/// 41 MiB of zlib streams if every one of them uses both.
pub const DEFAULT_MAX_CONTEXT_TAKEOVER: usize = 100;

/// Default [`Deflate::threshold`]: 256 bytes.
pub const DEFAULT_THRESHOLD: usize = 256;

/// Default [`Deflate::level`]: 2. zlib-rs's level 1 uses fixed Huffman
/// codes only: on 1 KiB of chat JSON it sends about 800 bytes where level
/// 2 sends about 580, for about 40 % more compression time (measured
/// in-process; docs/performance.md has the server figures).
pub const DEFAULT_LEVEL: u32 = 2;

/// permessage-deflate settings (RFC 7692), for a server
/// ([`WsTransportBuilder::deflate`](crate::WsTransportBuilder::deflate))
/// or a client ([`Client::deflate`](crate::Client::deflate)). Without
/// them, the extension is neither offered nor accepted.
///
/// ```
/// use switchboard::ws::Deflate;
///
/// // Compress messages of 1 KiB or more at level 6; keep no context
/// // between messages (the default: idle connections hold no stream,
/// // and a broadcast is compressed once).
/// let deflate = Deflate::new().level(6).threshold(1024);
/// # let _ = deflate;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deflate {
    level: u32,
    threshold: usize,
    context_takeover: bool,
    max_context_takeover: usize,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            level: DEFAULT_LEVEL,
            threshold: DEFAULT_THRESHOLD,
            context_takeover: false,
            max_context_takeover: DEFAULT_MAX_CONTEXT_TAKEOVER,
        }
    }
}

impl Deflate {
    /// Level [`DEFAULT_LEVEL`], threshold [`DEFAULT_THRESHOLD`], no
    /// context takeover.
    pub fn new() -> Self {
        Deflate::default()
    }

    /// The compression level, 0 (stored, no compression) to 9 (smallest);
    /// higher values are taken as 9.
    #[must_use]
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// Messages shorter than this many bytes go uncompressed (each message
    /// chooses; small ones gain little and cost a compression each).
    #[must_use]
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// Whether messages may refer to earlier ones (context takeover),
    /// which compresses a stream of similar messages better. Off by
    /// default: each message is compressed on its own, idle connections
    /// hold no compression state and a broadcast is compressed once.
    ///
    /// On, a connection that uses it holds a deflate stream (371 KiB with
    /// the default 32 KiB window) to compress and an inflate stream
    /// (46 KiB) for what the peer compresses with context, from its
    /// first compressed message until it closes; the peer may still ask for
    /// no context takeover. A server agrees to it with at most
    /// [`max_context_takeover`](Self::max_context_takeover) connections at
    /// once.
    #[must_use]
    pub fn context_takeover(mut self, on: bool) -> Self {
        self.context_takeover = on;
        self
    }

    /// With [`context_takeover`](Self::context_takeover) on, how many
    /// connections of a server's transport may keep context at once
    /// (default [`DEFAULT_MAX_CONTEXT_TAKEOVER`]; each holds up to about
    /// 420 KiB of zlib streams). Past it, a new connection is answered with
    /// `server_no_context_takeover` and `client_no_context_takeover`, which
    /// RFC 7692 lets a server add to any offer it accepts: it compresses
    /// each message on its own for as long as it is open. A connection
    /// with context gives its place back when its close is done, and the
    /// place goes to a connection that opens after that. Places are taken
    /// once the handshake hook has admitted a request. A client ignores
    /// it.
    ///
    /// ```
    /// use switchboard::ws::Deflate;
    ///
    /// // A dashboard with a few dozen long-lived viewers.
    /// let deflate = Deflate::new().context_takeover(true).max_context_takeover(50);
    /// # let _ = deflate;
    /// ```
    #[must_use]
    pub fn max_context_takeover(mut self, connections: usize) -> Self {
        self.max_context_takeover = connections;
        self
    }
}

/// The agreed parameters of one connection, from this end's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    /// What we send is compressed message by message.
    pub(crate) send_reset: bool,
    /// The window of what we send.
    pub(crate) send_bits: u8,
    /// What the peer sends is compressed message by message.
    pub(crate) recv_reset: bool,
}

/// What every connection of one transport (or client) shares: the
/// settings, the idle streams and the recently compressed messages.
pub(crate) struct Shared {
    settings: Deflate,
    /// Connections that agreed to context takeover and have not ended
    /// (see [`Shared::accept`]).
    with_context: AtomicUsize,
    /// Idle compressors with their window bits.
    compressors: Mutex<Vec<(u8, Compress)>>,
    inflaters: Mutex<Vec<Decompress>>,
    recent: Mutex<Recent>,
}

impl Shared {
    pub(crate) fn new(settings: Deflate) -> Arc<Self> {
        Arc::new(Shared {
            settings,
            with_context: AtomicUsize::new(0),
            compressors: Mutex::new(Vec::new()),
            inflaters: Mutex::new(Vec::new()),
            recent: Mutex::new(Recent::default()),
        })
    }

    pub(crate) fn settings(&self) -> &Deflate {
        &self.settings
    }

    /// The server's answer to the `Sec-WebSocket-Extensions` request
    /// header values `offers` (see [`accept`]), as the connection's
    /// permessage-deflate and the response header's value. An agreement
    /// that keeps context in either direction takes one of the
    /// `max_context_takeover` places, given back when the returned
    /// `PerMessage` is dropped (the connection drops it once its close is
    /// done); with none left, the offer is answered as if context takeover
    /// were off.
    pub(crate) fn accept<'a>(
        self: &Arc<Self>,
        offers: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Option<(PerMessage, String)> {
        let (params, response) = accept(&self.settings, offers.clone())?;
        if params.send_reset && params.recv_reset {
            return Some((PerMessage::new(self.clone(), params), response));
        }
        let max = self.settings.max_context_takeover;
        let place = self
            .with_context
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if place.is_err() {
            let without = self.settings.clone().context_takeover(false);
            let (params, response) = accept(&without, offers)?;
            return Some((PerMessage::new(self.clone(), params), response));
        }
        let mut per_message = PerMessage::new(self.clone(), params);
        per_message.holds_place = true;
        Some((per_message, response))
    }

    fn compressor(&self, bits: u8) -> Compress {
        let mut idle = lock(&self.compressors);
        match idle.iter().rposition(|(b, _)| *b == bits) {
            Some(i) => idle.remove(i).1,
            None => {
                drop(idle);
                Compress::new_with_window_bits(Compression::new(self.settings.level), false, bits)
            }
        }
    }

    fn return_compressor(&self, bits: u8, mut compress: Compress) {
        compress.reset();
        let mut idle = lock(&self.compressors);
        // The oldest goes first, so that streams for a window nobody asks
        // for any more (a client's `server_max_window_bits`) do not stay.
        if idle.len() == POOL {
            idle.remove(0);
        }
        idle.push((bits, compress));
    }

    fn inflater(&self) -> Decompress {
        let idle = lock(&self.inflaters).pop();
        idle.unwrap_or_else(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS))
    }

    fn return_inflater(&self, mut inflate: Decompress) {
        inflate.reset(false);
        let mut idle = lock(&self.inflaters);
        if idle.len() < POOL {
            idle.push(inflate);
        }
    }
}

/// A poisoned lock only means a panic elsewhere while it was held; what it
/// guards (idle streams, remembered messages) is valid at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Messages recently compressed without context, newest last.
#[derive(Default)]
struct Recent {
    entries: VecDeque<Remembered>,
    /// Payload and compressed bytes of all entries.
    bytes: usize,
}

struct Remembered {
    /// A copy of the payload.
    payload: Bytes,
    bits: u8,
    /// `None`: it does not get smaller, so it goes as it is.
    compressed: Option<Bytes>,
}

impl Remembered {
    fn size(&self) -> usize {
        self.payload.len() + self.compressed.as_ref().map_or(0, Bytes::len)
    }
}

impl Recent {
    /// What `payload` compressed to with a window of `bits`, if it is
    /// remembered.
    fn find(&self, payload: &[u8], bits: u8) -> Option<Option<Bytes>> {
        let entry = self
            .entries
            .iter()
            .rev()
            .find(|r| r.bits == bits && *r.payload == *payload)?;
        Some(entry.compressed.clone())
    }

    fn remember(&mut self, payload: &[u8], bits: u8, compressed: Option<Bytes>) {
        let entry = Remembered {
            payload: Bytes::copy_from_slice(payload),
            bits,
            compressed,
        };
        let size = entry.size();
        if size > RECENT_BYTES / 4 {
            return;
        }
        while self.entries.len() >= RECENT || self.bytes + size > RECENT_BYTES {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= oldest.size();
        }
        self.bytes += size;
        self.entries.push_back(entry);
    }
}

/// permessage-deflate on one connection: 32 bytes while it keeps no
/// context (flate2's stream handles are 144 and 152 bytes themselves,
/// hence the boxes).
pub(crate) struct PerMessage {
    shared: Arc<Shared>,
    params: Params,
    /// One of the server's places for connections with context
    /// ([`Shared::accept`]), given back on drop.
    holds_place: bool,
    /// The stream of what we send, between messages (context takeover).
    compress: Option<Box<Compress>>,
    /// The stream of what the peer sends, between messages.
    inflate: Option<Box<Decompress>>,
}

impl PerMessage {
    pub(crate) fn new(shared: Arc<Shared>, params: Params) -> Self {
        PerMessage {
            shared,
            params,
            holds_place: false,
            compress: None,
            inflate: None,
        }
    }

    /// The compressed payload of an outgoing message, or `None` to send it
    /// as it is: shorter than the threshold, or no smaller compressed
    /// (random data grows by up to an eighth under deflate's fixed codes,
    /// and could then exceed a peer's frame limit that the message itself
    /// fits).
    pub(crate) fn compress(&mut self, payload: &Bytes) -> Option<Bytes> {
        if payload.len() < self.shared.settings.threshold {
            return None;
        }
        let smaller = |compressed: Bytes| (compressed.len() < payload.len()).then_some(compressed);
        let bits = self.params.send_bits;
        if !self.params.send_reset {
            let level = Compression::new(self.shared.settings.level);
            let stream = self.compress.get_or_insert_with(|| {
                Box::new(Compress::new_with_window_bits(level, false, bits))
            });
            let Ok(compressed) = deflate_message(stream, payload) else {
                self.compress = None;
                return None;
            };
            let compressed = smaller(compressed);
            if compressed.is_none() {
                // Sent as it is, so the peer's window never holds it: ours
                // starts over, and later messages refer to nothing before.
                stream.reset();
            }
            return compressed;
        }
        let shared = &*self.shared;
        if let Some(hit) = lock(&shared.recent).find(payload, bits) {
            return hit;
        }
        let mut stream = shared.compressor(bits);
        // A stream that failed is dropped, not pooled.
        let compressed = deflate_message(&mut stream, payload).ok()?;
        shared.return_compressor(bits, stream);
        let compressed = smaller(compressed);
        lock(&shared.recent).remember(payload, bits, compressed.clone());
        compressed
    }

    /// Inflates a received message of at most `max` bytes (1009 past it,
    /// before allocating more; 1007 for data that does not inflate).
    pub(crate) fn inflate(&mut self, data: &[u8], max: usize) -> Result<Bytes, Error> {
        if self.params.recv_reset {
            let mut stream = self.shared.inflater();
            let inflated = inflate_message(&mut stream, data, max)?;
            self.shared.return_inflater(stream);
            return Ok(inflated.into());
        }
        let stream = self.inflate.get_or_insert_with(|| {
            Box::new(Decompress::new_with_window_bits(false, MAX_WINDOW_BITS))
        });
        match inflate_message(stream, data, max) {
            Ok(inflated) => Ok(inflated.into()),
            Err(err) => {
                self.inflate = None;
                Err(err)
            }
        }
    }
}

impl Drop for PerMessage {
    fn drop(&mut self) {
        if self.holds_place {
            self.shared.with_context.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl fmt::Debug for PerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerMessage")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The most bytes a compressed message or frame whose limit is `limit`
/// may take on the wire: deflate's fixed codes spend up to 9 bits on a
/// byte, an eighth more, and blocks add a few bytes each. A peer may
/// compress a message at the limit that does not shrink (browsers do);
/// inflated, it is held to `limit` itself.
pub(crate) fn wire_limit(limit: usize) -> usize {
    limit.saturating_add(limit / 8).saturating_add(64)
}

/// Compresses `input` as one message: a sync flush, without its tail.
fn deflate_message(stream: &mut Compress, input: &[u8]) -> Result<Bytes, flate2::CompressError> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = stream.total_in();
    loop {
        let used = (stream.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        stream.compress_vec(&input[used..], &mut out, FlushCompress::Sync)?;
        // Done when all input is in and the flush left room to spare
        // (zlib's rule: a full output means more may be pending).
        if (stream.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    // What is queued to be written holds the whole allocation.
    if out.capacity() - out.len() > out.len() / 8 + 64 {
        out.shrink_to_fit();
    }
    Ok(out.into())
}

/// Inflates one message's data and the tail the sender left off, into at
/// most `max` bytes: the output never grows past `max + 1`. The data must
/// end where a sync flush ends (or with a final block): the tail then adds
/// nothing. A final block starts the stream over, so a peer keeping its
/// context cannot refer back past one (1007 if it does). An empty payload is an empty message (RFC 7692 7.2.3.6 sends
/// one byte, but there is nothing else it can mean).
fn inflate_message(stream: &mut Decompress, data: &[u8], max: usize) -> Result<Vec<u8>, Error> {
    let too_large = || {
        Error::protocol(
            CloseCode::SIZE,
            format!("message exceeds the limit of {max} bytes once inflated"),
        )
    };
    let invalid = |why: &str| Error::protocol(CloseCode::INVALID, why.to_owned());
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let limit = max.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(2).max(64).min(limit));
    for (i, input) in [data, &TAIL[..]].into_iter().enumerate() {
        let (tail, inflated) = (i == 1, out.len());
        // Where in `input` inflating has got to (the stream's own count
        // starts over when it is reset after a final block).
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(too_large());
                }
                out.reserve_exact(out.capacity().min(limit - out.len()));
            }
            let (in_before, out_before) = (stream.total_in(), out.len());
            let status = stream
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                .map_err(|e| Error::protocol(CloseCode::INVALID, format!("inflating: {e}")))?;
            if out.len() > max {
                return Err(too_large());
            }
            let consumed = (stream.total_in() - in_before) as usize;
            pos += consumed;
            if status == Status::StreamEnd {
                // A final block. More blocks may follow it (RFC 7692
                // 7.2.1: its example ends "Hello" in a final block and then
                // the byte that begins the tail's empty block), each
                // starting a new stream; without them, the message ends.
                stream.reset(false);
                if tail || pos == input.len() {
                    return Ok(out);
                }
                continue;
            }
            let stalled = consumed == 0 && out.len() == out_before;
            if out.len() < out.capacity() && (pos == input.len() || stalled) {
                if tail && (pos < input.len() || out.len() > inflated) {
                    return Err(invalid("compressed data that does not end a block"));
                }
                break;
            }
        }
    }
    Ok(out)
}

/// One element of a `Sec-WebSocket-Extensions` list: its name and its
/// parameters (name, value without quotes).
struct Element<'a> {
    name: &'a str,
    params: Vec<(&'a str, Option<&'a str>)>,
}

/// Splits `s` at each `sep` outside a quoted string.
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The elements of the header's values, in order; `None` for one that is
/// not well-formed.
fn elements<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Option<Element<'a>>> {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let element = |text: &'a str| {
        let mut parts = split_unquoted(text, b';').into_iter().map(str::trim);
        let name = parts.next().filter(|n| is_token(n))?;
        let mut params = Vec::new();
        for param in parts {
            let (key, value) = match param.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim())),
                None => (param, None),
            };
            let value = match value {
                Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                    let inner = &v[1..v.len() - 1];
                    // Quoted values here are numbers: no escapes needed.
                    Some(inner).filter(|i| is_token(i))?
                }
                Some(v) => Some(v).filter(|v| is_token(v))?,
                None => "",
            };
            if !is_token(key) {
                return None;
            }
            params.push((key, (!value.is_empty()).then_some(value)));
        }
        Some(Element { name, params })
    };
    values
        .into_iter()
        .flat_map(|value| split_unquoted(value, b','))
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(element)
        .collect()
}

/// A window size parameter's value: 8 to 15, digits only.
fn window_bits(value: &str) -> Option<u8> {
    let bits: u8 = value.parse().ok()?;
    ((8..=15).contains(&bits) && value == bits.to_string()).then_some(bits)
}

/// The permessage-deflate parameters of an offer or a response.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl Offer {
    /// The parameters, unless one is unknown, repeated or has a value
    /// RFC 7692 does not allow.
    fn parse(params: &[(&str, Option<&str>)]) -> Option<Offer> {
        let mut offer = Offer::default();
        let mut seen: Vec<&str> = Vec::new();
        for &(key, value) in params {
            if seen.iter().any(|s| s.eq_ignore_ascii_case(key)) {
                return None;
            }
            seen.push(key);
            match (key.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
                ("server_max_window_bits", Some(v)) => {
                    offer.server_max_window_bits = Some(window_bits(v)?);
                }
                ("client_max_window_bits", None) => offer.client_max_window_bits = Some(None),
                ("client_max_window_bits", Some(v)) => {
                    offer.client_max_window_bits = Some(Some(window_bits(v)?));
                }
                _ => return None,
            }
        }
        Some(offer)
    }
}

/// The server's answer to the `Sec-WebSocket-Extensions` request header
/// values `offers`: the first permessage-deflate offer it can honour,
/// agreed as `Params` and the response header's value. Invalid offers and
/// other extensions are declined; `None` if nothing is accepted.
pub(crate) fn accept<'a>(
    settings: &Deflate,
    offers: impl IntoIterator<Item = &'a str>,
) -> Option<(Params, String)> {
    elements(offers).into_iter().flatten().find_map(|element| {
        if !element.name.eq_ignore_ascii_case(NAME) {
            return None;
        }
        let offer = Offer::parse(&element.params)?;
        // zlib cannot compress with a 256-byte window (flate2 refuses a
        // window of 8 bits for raw deflate): decline rather than promise
        // it. This check is what keeps such an offer from reaching flate2.
        if offer.server_max_window_bits == Some(8) {
            return None;
        }
        let params = Params {
            send_reset: offer.server_no_context_takeover || !settings.context_takeover,
            send_bits: offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
            recv_reset: offer.client_no_context_takeover || !settings.context_takeover,
        };
        let mut response = String::from(NAME);
        if params.send_reset {
            response.push_str("; server_no_context_takeover");
        }
        if params.recv_reset {
            response.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = offer.server_max_window_bits {
            response.push_str(&format!("; server_max_window_bits={bits}"));
        }
        Some((params, response))
    })
}

/// The client's `Sec-WebSocket-Extensions` offer: without context
/// takeover, first asking the server for none too and then, if it will
/// not, allowing it.
pub(crate) fn offer(settings: &Deflate) -> String {
    if settings.context_takeover {
        NAME.to_owned()
    } else {
        format!(
            "{NAME}; server_no_context_takeover; client_no_context_takeover, {NAME}; client_no_context_takeover"
        )
    }
}

/// The client's reading of the server's `Sec-WebSocket-Extensions`
/// values: the agreed parameters (`None` if the server accepted nothing),
/// or what is wrong with the answer.
pub(crate) fn agreed<'a>(
    settings: Option<&Deflate>,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Params>, &'static str> {
    let elements = elements(values);
    let element = match elements.as_slice() {
        [] => return Ok(None),
        [Some(element)] if element.name.eq_ignore_ascii_case(NAME) => element,
        [Some(_)] => return Err("the server accepted an extension that was not offered"),
        [None] => return Err("malformed Sec-WebSocket-Extensions in the 101 response"),
        _ => return Err("the server accepted more than one extension"),
    };
    let Some(settings) = settings else {
        return Err("the server accepted permessage-deflate, which was not offered");
    };
    let Some(response) = Offer::parse(&element.params) else {
        return Err("invalid permessage-deflate parameters in the 101 response");
    };
    if response.client_max_window_bits.is_some() {
        // Never offered, so never allowed in the answer (RFC 7692 7.1.2.2).
        return Err("the server set client_max_window_bits, which was not offered");
    }
    Ok(Some(Params {
        send_reset: response.client_no_context_takeover || !settings.context_takeover,
        send_bits: MAX_WINDOW_BITS,
        recv_reset: response.server_no_context_takeover,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(takeover: bool, offers: &[&str]) -> Option<(Params, String)> {
        let settings = Deflate::new().context_takeover(takeover);
        accept(&settings, offers.iter().copied())
    }

    #[test]
    fn offers_are_answered_as_rfc_7692_allows() {
        let (params, response) = server(false, &["permessage-deflate"]).unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(params.send_reset && params.recv_reset);
        assert_eq!(params.send_bits, 15);

        // With context takeover allowed, only what the client asks for.
        let (params, response) = server(true, &["permessage-deflate"]).unwrap();
        assert_eq!(response, "permessage-deflate");
        assert!(!params.send_reset && !params.recv_reset);
        let (params, response) = server(
            true,
            &["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
        )
        .unwrap();
        assert!(params.send_reset && params.recv_reset);
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );

        // A window for our side is honoured and confirmed; the client's
        // own window needs no answer (we inflate with the largest).
        let (params, response) = server(
            false,
            &["permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits"],
        )
        .unwrap();
        assert_eq!(params.send_bits, 10);
        assert!(
            response.ends_with("; server_max_window_bits=10"),
            "{response}"
        );
        assert!(!response.contains("client_max_window_bits"));
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown",
            "permessage-deflate; server_max_window_bits=\"1,0\"",
            "permessage-deflate; =9",
            "x-webkit-deflate-frame",
        ] {
            assert!(server(false, &[bad]).is_none(), "{bad}");
            let (params, _) = server(false, &[&format!("{bad}, permessage-deflate")]).unwrap();
            assert_eq!(params.send_bits, 15, "{bad}");
        }
        // Several header lines count as one list.
        let (params, _) = server(
            false,
            &["foo; bar=1", "permessage-deflate; server_max_window_bits=9"],
        )
        .unwrap();
        assert_eq!(params.send_bits, 9);
        assert!(server(false, &[]).is_none());
    }

    #[test]
    fn the_client_reads_what_the_server_agreed_to() {
        let settings = Deflate::new();
        let offer = offer(&settings);
        // Our own server accepts our offer.
        let (server_params, response) = accept(&settings, [offer.as_str()]).unwrap();
        let client = agreed(Some(&settings), [response.as_str()])
            .unwrap()
            .unwrap();
        assert_eq!(client.recv_reset, server_params.send_reset);
        assert_eq!(client.send_reset, server_params.recv_reset);

        // A server keeping its context: the client must keep one to inflate.
        let keeps = agreed(Some(&settings), ["permessage-deflate"])
            .unwrap()
            .unwrap();
        assert!(!keeps.recv_reset && keeps.send_reset);
        assert_eq!(agreed(Some(&settings), []).unwrap(), None);
        for (bad, says) in [
            (
                "permessage-deflate; client_max_window_bits=10",
                "not offered",
            ),
            ("permessage-deflate; bogus", "invalid"),
            ("permessage-deflate, permessage-deflate", "more than one"),
            ("x-other", "not offered"),
            ("permessage-deflate; server_max_window_bits=\"", "malformed"),
        ] {
            let err = agreed(Some(&settings), [bad]).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let unasked = agreed(None, ["permessage-deflate"]).unwrap_err();
        assert!(unasked.contains("not offered"));
    }

    #[test]
    fn connections_with_context_are_held_to_the_cap_and_a_dropped_one_makes_room() {
        const BOTH: &str =
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let shared = Shared::new(
            Deflate::new()
                .context_takeover(true)
                .max_context_takeover(1),
        );
        let places = || shared.with_context.load(Ordering::Acquire);
        let (first, response) = shared.accept(["permessage-deflate"]).unwrap();
        assert_eq!(response, "permessage-deflate");
        assert_eq!(places(), 1);
        // No place left: answered as if context takeover were off.
        let (second, response) = shared.accept(["permessage-deflate"]).unwrap();
        assert_eq!(response, BOTH);
        assert!(second.params.send_reset && second.params.recv_reset);
        // Context in one direction only needs a place too.
        let (one_way, response) = shared
            .accept(["permessage-deflate; server_no_context_takeover"])
            .unwrap();
        assert_eq!(response, BOTH);
        assert!(one_way.params.recv_reset);
        // An agreement without context takes none.
        let (without, _) = shared.accept([BOTH]).unwrap();
        assert_eq!(places(), 1);
        drop(first);
        assert_eq!(places(), 0);
        let (next, response) = shared
            .accept(["permessage-deflate; server_no_context_takeover"])
            .unwrap();
        assert_eq!(response, "permessage-deflate; server_no_context_takeover");
        assert!(next.params.send_reset && !next.params.recv_reset);
        drop((second, one_way, without, next));
        assert_eq!(places(), 0);
        // A cap of zero: never.
        let none = Shared::new(
            Deflate::new()
                .context_takeover(true)
                .max_context_takeover(0),
        );
        assert_eq!(none.accept(["permessage-deflate"]).unwrap().1, BOTH);
        // The place is a flag in what every connection holds anyway.
        assert_eq!(size_of::<PerMessage>(), 32);
    }

    fn connection(params: Params, settings: Deflate) -> PerMessage {
        PerMessage::new(Shared::new(settings), params)
    }

    const RESET: Params = Params {
        send_reset: true,
        send_bits: 15,
        recv_reset: true,
    };

    #[test]
    fn messages_round_trip_and_small_ones_stay_as_they_are() {
        let mut a = connection(RESET, Deflate::new().threshold(10));
        let mut b = connection(RESET, Deflate::new());
        assert_eq!(a.compress(&Bytes::from_static(b"short")), None);
        let json = Bytes::from(r#"{"user":"ann","text":"hello"}"#.repeat(40));
        let compressed = a.compress(&json).unwrap();
        assert!(compressed.len() < json.len() / 10, "{}", compressed.len());
        assert!(!compressed.ends_with(&TAIL));
        assert_eq!(b.inflate(&compressed, 1 << 20).unwrap(), json);
        // Random bytes would grow: they go as they are.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Bytes = (0..100_000)
            .map(|_| {
                // xorshift64: bytes with nothing for deflate to find.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert_eq!(a.compress(&noise), None);
        let mut keeps = connection(
            Params {
                send_reset: false,
                ..RESET
            },
            Deflate::new().context_takeover(true),
        );
        assert_eq!(keeps.compress(&noise), None);
        // ... and the context that saw them starts over: the peer can
        // inflate what follows without them.
        let compressed = keeps.compress(&json).unwrap();
        assert_eq!(b.inflate(&compressed, 1 << 20).unwrap(), json);
    }

    #[test]
    fn a_shared_payload_is_compressed_once_for_every_connection() {
        let shared = Shared::new(Deflate::new());
        let mut conns: Vec<_> = (0..3)
            .map(|_| PerMessage::new(shared.clone(), RESET))
            .collect();
        let payload = Bytes::from("x".repeat(1000));
        let first = conns[0].compress(&payload).unwrap();
        for conn in &mut conns[1..] {
            let again = conn.compress(&payload.clone()).unwrap();
            // The same bytes, not a second compression.
            assert_eq!(again.as_ptr(), first.as_ptr());
        }
        // Equal bytes elsewhere are the same message.
        let copy = Bytes::from("x".repeat(1000));
        assert_eq!(conns[0].compress(&copy).unwrap().as_ptr(), first.as_ptr());
        // What is remembered stays within its budget, oldest out first.
        for i in 0..3 * RECENT {
            let big = Bytes::from(vec![i as u8; RECENT_BYTES / 5]);
            conns[1].compress(&big).unwrap();
        }
        let recent = lock(&shared.recent);
        assert!(recent.entries.len() <= RECENT && recent.bytes <= RECENT_BYTES);
        assert_eq!(
            recent.bytes,
            recent.entries.iter().map(Remembered::size).sum::<usize>()
        );
        assert!(recent.find(&payload, 15).is_none(), "evicted");
        drop(recent);
        // Another window is another compression.
        let mut small = PerMessage::new(
            shared,
            Params {
                send_bits: 9,
                ..RESET
            },
        );
        assert_ne!(small.compress(&payload).unwrap().as_ptr(), first.as_ptr());
    }

    #[test]
    fn context_takeover_compresses_repeats_and_keeps_the_peer_in_step() {
        let keep = Params {
            send_reset: false,
            send_bits: 15,
            recv_reset: false,
        };
        let mut a = connection(keep, Deflate::new().context_takeover(true));
        let mut b = connection(keep, Deflate::new().context_takeover(true));
        let msg = Bytes::from("the same sentence, over and over. ".repeat(20));
        let first = a.compress(&msg).unwrap();
        let second = a.compress(&msg.clone()).unwrap();
        assert!(second.len() < first.len() / 2);
        assert_eq!(b.inflate(&first, 1 << 20).unwrap(), msg);
        assert_eq!(b.inflate(&second, 1 << 20).unwrap(), msg);
        // A peer that inflates each message on its own cannot read the
        // second: that is what client_no_context_takeover prevents.
        let mut fresh = connection(RESET, Deflate::new());
        assert!(fresh.inflate(&second, 1 << 20).is_err());
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit_without_growing_past_it() {
        let mut sender = connection(RESET, Deflate::new().level(9));
        let zeros = Bytes::from(vec![0u8; 8 << 20]);
        let bomb = sender.compress(&zeros).unwrap();
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        let mut stream = Decompress::new_with_window_bits(false, 15);
        match inflate_message(&mut stream, &bomb, 1 << 20) {
            Err(Error::Protocol { code, .. }) => assert_eq!(code, CloseCode::SIZE),
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is allowed.
        let mut receiver = connection(RESET, Deflate::new());
        let exact = sender.compress(&zeros.slice(..1 << 20)).unwrap();
        assert_eq!(receiver.inflate(&exact, 1 << 20).unwrap().len(), 1 << 20);
        // Garbage is 1007.
        match receiver.inflate(&[0xFF, 0xFF, 0xFF], 1 << 20) {
            Err(Error::Protocol { code, .. }) => assert_eq!(code, CloseCode::INVALID),
            other => panic!("{other:?}"),
        }
        // And the pool's next inflater is clean after an error elsewhere.
        assert_eq!(receiver.inflate(&exact, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn a_message_must_end_where_a_flush_or_a_final_block_ends() {
        let invalid = |result: Result<Bytes, Error>| matches!(result, Err(Error::Protocol { code, .. }) if code == CloseCode::INVALID);
        let mut sender = connection(RESET, Deflate::new());
        let mut receiver = connection(RESET, Deflate::new());
        let text = Bytes::from(r#"{"a":"b"}"#.repeat(100));
        let whole = sender.compress(&text).unwrap();
        // Cut short: the tail does not end a block.
        assert!(invalid(
            receiver.inflate(&whole[..whole.len() / 2], 1 << 20)
        ));
        // A final block alone ends the message; more blocks may follow it.
        let mut stream = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut last = Vec::with_capacity(4096);
        stream
            .compress_vec(&text, &mut last, FlushCompress::Finish)
            .unwrap();
        assert_eq!(receiver.inflate(&last, 1 << 20).unwrap(), text);
        let mut more = last.clone();
        more.extend_from_slice(&whole);
        let twice = [&text[..], &text[..]].concat();
        assert_eq!(receiver.inflate(&more, 1 << 20).unwrap(), twice);
        // RFC 7692's own examples of "Hello" (7.2.3.1, and 7.2.3.4 with a
        // final block), and garbage after a final block.
        let hello = [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00];
        assert_eq!(receiver.inflate(&hello, 1 << 20).unwrap(), "Hello");
        let final_hello = [0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00];
        assert_eq!(receiver.inflate(&final_hello, 1 << 20).unwrap(), "Hello");
        let mut garbage = last.clone();
        garbage.extend_from_slice(&[0xFF, 0xFF]);
        assert!(invalid(receiver.inflate(&garbage, 1 << 20)));
        // An empty payload is an empty message.
        assert!(receiver.inflate(&[], 1 << 20).unwrap().is_empty());
        assert_eq!(receiver.inflate(&whole, 1 << 20).unwrap(), text);
    }
}
