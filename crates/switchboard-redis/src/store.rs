//! [`RedisStore`]: room history that every node on one Redis shares, and
//! the core's [`RoomStore`] behind a [`RedisBroker`](crate::RedisBroker)
//! (presence is in [`presence`](crate::presence)).
//!
//! # Keys (prefix `P`, room `R`)
//!
//! - `P:meta:R`, a hash: `epoch` (16 hex digits, chosen by the first
//!   append of a history) and `seq` (the newest position's number).
//!   Expires `max_age` + [`EPOCH_GRACE`] (a day) after the last append.
//! - `P:history:R`, a stream: one entry per kept message, with id
//!   `{seq}-0` and fields `at` (Redis time, ms), `b` (`1` for binary) and
//!   `d` (the payload). Trimmed by count and age at every append and
//!   replay; expires `max_age` after the last append.
//!
//! An append is one Lua script that records the message and publishes it
//! on the room's channel, so every node delivers a room's messages in the
//! order Redis recorded them: live order equals history order.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;
use switchboard_core::rooms::{
    EPOCH_GRACE, History, Member, Members, Position, Replay, RoomStore, Unrecoverable,
};
use switchboard_core::{Message, Utf8Bytes};

use crate::envelope::{self, POSITION};
use crate::error::Error;
use crate::options::{RedisOptions, random_u64};
use crate::presence::{Presence, millis};
use crate::publisher::Publisher;
use crate::subscriber::Subscriber;

/// How long a room's epoch outlives its last append, beyond `max_age`.
const EPOCH_GRACE_MS: u64 = EPOCH_GRACE.as_millis() as u64;

/// Most expired history entries one script call removes (the rest go at
/// the next call), so a call stays short.
const TRIM_BATCH: u32 = 256;

/// The Lua helpers every script starts with.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The `at` field of a stream entry.
local function entry_at(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'at' then return tonumber(fields[i + 1]) end
  end
  return 0
end
-- Removes entries older than max_age (ms) from the front of a stream: a
-- look at the oldest entry, and a scan of at most `batch` only when it
-- has expired.
local function trim_age(stream, max_age, batch)
  local cutoff = now_ms() - max_age
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #oldest == 0 or entry_at(oldest[1]) >= cutoff then return end
  local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', batch)
  for _, entry in ipairs(old) do
    if entry_at(entry) >= cutoff then
      redis.call('XTRIM', stream, 'MINID', entry[1])
      return
    end
  end
  local last = tonumber(string.match(old[#old][1], '^(%d+)'))
  redis.call('XTRIM', stream, 'MINID', (last + 1) .. '-0')
end
"#;

/// KEYS: meta, history. ARGV: epoch candidate, max_len, max_age ms,
/// channel, head, binary flag, payload, epoch grace ms, trim batch.
/// Returns the position as text.
const APPEND: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local max_len = tonumber(ARGV[2])
local max_age = tonumber(ARGV[3])
if max_len > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', max_len, seq .. '-0', 'at', now_ms(), 'b', ARGV[6], 'd', ARGV[7])
  trim_age(KEYS[2], max_age, tonumber(ARGV[9]))
  redis.call('PEXPIRE', KEYS[2], max_age)
end
redis.call('PEXPIRE', KEYS[1], max_age + tonumber(ARGV[8]))
local position = epoch .. '-' .. seq
redis.call('PUBLISH', ARGV[4], ARGV[5] .. string.char(#position) .. position .. ARGV[7])
return position
"#;

/// KEYS: meta, history. ARGV: since epoch ('' for none), since seq,
/// max_age ms, trim batch. Returns {epoch or '', newest seq, outcome,
/// entries}.
const REPLAY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
trim_age(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if ARGV[1] == '' then return {epoch, seq, 'none', {}} end
if ARGV[1] ~= epoch then return {epoch, seq, 'epoch', {}} end
local since = tonumber(ARGV[2])
if since > seq then return {epoch, seq, 'unknown', {}} end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first_seq = seq + 1
if #first > 0 then first_seq = tonumber(string.match(first[1][1], '^(%d+)')) end
if since + 1 < first_seq then return {epoch, seq, 'trimmed', {}} end
return {epoch, seq, 'ok', redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')}
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Presence and history in Redis, shared by every node of one prefix.
/// Reached through [`RedisBroker`](crate::RedisBroker), whose
/// [`room_store`](switchboard_core::Broker::room_store) it is; the
/// [module docs](self) list its keys.
pub(crate) struct RedisStore {
    publisher: Arc<Publisher>,
    subscriber: Arc<Subscriber>,
    presence: Arc<Presence>,
    prefix: String,
    /// Compiled once: redis-rs sends `EVALSHA`, and loads a script Redis
    /// does not know (after a restart, say).
    append: Script,
    replay: Script,
}

impl RedisStore {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        subscriber: Arc<Subscriber>,
        presence: Arc<Presence>,
        options: &RedisOptions,
    ) -> Self {
        RedisStore {
            publisher,
            subscriber,
            presence,
            prefix: options.prefix.clone(),
            append: script(APPEND),
            replay: script(REPLAY),
        }
    }

    fn key(&self, kind: &str, room: &str) -> String {
        format!("{}:{kind}:{room}", self.prefix)
    }
}

#[async_trait]
impl RoomStore for RedisStore {
    /// The seam of `Hub::join_room_with` needs the room's live traffic to
    /// flow before the member list and the history are read.
    async fn ready(&self, room: &str) -> switchboard_core::Result<()> {
        if self.subscriber.in_effect(room) {
            return Ok(());
        }
        let why = "the room's subscription is not in effect (redis link down or slow)";
        Err(Error::unavailable(why).into())
    }

    async fn append(
        &self,
        room: &str,
        msg: Message,
        history: &History,
    ) -> switchboard_core::Result<Position> {
        let head = envelope::head(&self.subscriber.node_id, room, POSITION, Some(&msg))?;
        let epoch = format!("{:016x}", random_u64());
        let position: String = self
            .publisher
            .invoke(
                "history append",
                self.append
                    .key(self.key("meta", room))
                    .key(self.key("history", room))
                    .arg(epoch)
                    .arg(history.max_len.min(i64::MAX as usize))
                    .arg(millis(history.max_age).max(1))
                    .arg(self.subscriber.channels.room(room))
                    .arg(head)
                    .arg(if msg.is_binary() { "1" } else { "0" })
                    .arg(msg.as_bytes())
                    .arg(EPOCH_GRACE_MS)
                    .arg(TRIM_BATCH),
            )
            .await?;
        self.publisher.stats.published.fetch_add(1, Relaxed);
        position
            .parse()
            .map_err(|_| Error::unavailable("the append script returned no position").into())
    }

    async fn replay(
        &self,
        room: &str,
        since: Option<Position>,
        history: &History,
    ) -> switchboard_core::Result<Replay> {
        type Entry = (String, Vec<(String, Vec<u8>)>);

        let (since_epoch, since_seq) = match since {
            Some(p) => (format!("{:016x}", p.epoch()), p.seq()),
            None => (String::new(), 0),
        };
        let max_age = millis(history.max_age).max(1);
        let (epoch, seq, outcome, entries): (String, u64, String, Vec<Entry>) = self
            .publisher
            .invoke(
                "history replay",
                self.replay
                    .key(self.key("meta", room))
                    .key(self.key("history", room))
                    .arg(since_epoch)
                    .arg(since_seq)
                    .arg(max_age)
                    .arg(TRIM_BATCH),
            )
            .await?;
        let epoch = if epoch.is_empty() {
            None
        } else {
            Some(
                u64::from_str_radix(&epoch, 16)
                    .map_err(|_| Error::unavailable("bad epoch in redis"))?,
            )
        };
        let newest = epoch.filter(|_| seq > 0).map(|e| Position::new(e, seq));
        let entries = match outcome.as_str() {
            "none" => Ok(Vec::new()),
            "epoch" => Err(Unrecoverable::Epoch),
            "unknown" => Err(Unrecoverable::Unknown),
            "trimmed" => Err(Unrecoverable::Trimmed),
            _ => {
                let epoch = epoch.unwrap_or_default();
                Ok(entries
                    .into_iter()
                    .filter_map(|(id, fields)| entry(epoch, &id, fields))
                    .collect())
            }
        };
        Ok(Replay { newest, entries })
    }

    async fn add_member(&self, room: &str, member: &Member) -> switchboard_core::Result<()> {
        Ok(self.presence.add_member(room, member).await?)
    }

    async fn remove_member(&self, room: &str, member: &Member) -> switchboard_core::Result<()> {
        Ok(self.presence.remove_member(room, member).await?)
    }

    async fn members(&self, room: &str) -> switchboard_core::Result<Members> {
        Ok(self.presence.members(room).await?)
    }
}

/// One history entry as Redis returns it: id `{seq}-0`, fields `at`, `b`, `d`.
fn entry(epoch: u64, id: &str, fields: Vec<(String, Vec<u8>)>) -> Option<(Position, Message)> {
    let seq = id.split_once('-')?.0.parse().ok()?;
    let mut binary = false;
    let mut data = None;
    for (name, value) in fields {
        match name.as_str() {
            "b" => binary = value == b"1",
            "d" => data = Some(Bytes::from(value)),
            _ => {}
        }
    }
    let data = data?;
    let msg = if binary {
        Message::Binary(data)
    } else {
        Message::Text(Utf8Bytes::try_from(data).ok()?)
    };
    Some((Position::new(epoch, seq), msg))
}
