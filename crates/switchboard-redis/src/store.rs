//! [`RedisStore`]: presence and history that every node on one Redis
//! shares, the core's [`RoomStore`] behind a [`RedisBroker`](crate::RedisBroker).
//!
//! # Keys (prefix `P`, room `R`, node `N`)
//!
//! - `P:meta:R`, a hash: `epoch` (16 hex digits, chosen by the first
//!   append of a history) and `seq` (the newest position's number).
//!   Expires `max_age` + [`EPOCH_GRACE`] (a day) after the last append.
//! - `P:history:R`, a stream: one entry per kept message, with id
//!   `{seq}-0` and fields `at` (Redis time, ms), `b` (`1` for binary) and
//!   `d` (the payload). Trimmed by count and age at every append and
//!   replay; expires `max_age` after the last append.
//! - `P:presence:R`, a hash: `{connection}@{node}` → name, and `#version`.
//!   Expires a day after its last member left.
//! - `P:nodes`, a sorted set: node → the Redis time of its last heartbeat.
//! - `P:rooms-of:N`, a hash: room → how many members node `N` has there.
//!
//! Every change is one Lua script, so that what it delivers (a `PUBLISH`
//! on the room's channel) is in the same order as what it records: live
//! order equals history order on every node, and presence events carry the
//! version the member list reached.
//!
//! # Dead nodes
//!
//! Each node runs the heartbeat script every quarter of
//! [`RedisOptions::node_ttl`]: it records the node's time and removes the
//! members of every node silent for longer than the TTL, announcing each
//! leave. The script runs atomically, so each leave is announced once
//! whichever node removes it. A node that finds itself unknown (Redis lost
//! its data, or it was silent too long) adds its members again.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;
use switchboard_core::rooms::{
    EPOCH_GRACE, History, Member, Members, Position, Replay, RoomStore, Unrecoverable,
};
use switchboard_core::{ConnectionId, LocalDelivery, Message, Utf8Bytes};
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use crate::envelope::{self, POSITION, PRESENCE};
use crate::error::{Error, Result};
use crate::options::{RedisOptions, random_u64};
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
-- The first field of a presence-change payload: j or l, the version, the
-- member's field with its length, the name.
local function change(kind, version, field, name)
  return kind .. ' ' .. version .. ' ' .. #field .. ' ' .. field .. name
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

/// KEYS: presence, rooms-of. ARGV: field, name, room, channel, head.
const ADD: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  local version = redis.call('HINCRBY', KEYS[1], '#version', 1)
  redis.call('PERSIST', KEYS[1])
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. change('j', version, ARGV[1], ARGV[2]))
end
return 1
"#;

/// KEYS: presence, rooms-of. ARGV: field, room, channel, head, grace ms.
const REMOVE: &str = r#"
local name = redis.call('HGET', KEYS[1], ARGV[1])
if name then
  redis.call('HDEL', KEYS[1], ARGV[1])
  local version = redis.call('HINCRBY', KEYS[1], '#version', 1)
  if redis.call('HLEN', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. change('l', version, ARGV[1], name))
end
return 1
"#;

/// KEYS: nodes. ARGV: prefix, this node, node ttl ms, this node's id as an
/// envelope origin (length byte and id), grace ms. Records this node's
/// heartbeat and removes the members of dead nodes. Returns 1 when this
/// node was unknown.
const HEARTBEAT: &str = r#"
local prefix, me, ttl, origin, grace = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = now_ms()
local fresh = redis.call('ZADD', KEYS[1], now, me)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
for _, node in ipairs(dead) do
  local rooms_of = prefix .. ':rooms-of:' .. node
  local suffix = '@' .. node
  for _, room in ipairs(redis.call('HKEYS', rooms_of)) do
    local key = prefix .. ':presence:' .. room
    local head = string.char(1, 0x12) .. origin
      .. string.char(math.floor(#room / 256), #room % 256) .. room
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if #field > #suffix and string.sub(field, -#suffix) == suffix then
        local name = redis.call('HGET', key, field)
        redis.call('HDEL', key, field)
        local version = redis.call('HINCRBY', key, '#version', 1)
        redis.call('PUBLISH', prefix .. ':room:' .. room, head .. change('l', version, field, name))
      end
    end
    if redis.call('HLEN', key) == 1 then redis.call('PEXPIRE', key, grace) end
  end
  redis.call('DEL', rooms_of)
  redis.call('ZREM', KEYS[1], node)
end
return fresh
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// The scripts, compiled once (redis-rs sends `EVALSHA` and loads a script
/// that Redis does not know, after a restart say).
struct Scripts {
    append: Script,
    replay: Script,
    add: Script,
    remove: Script,
    heartbeat: Script,
}

/// Presence and history in Redis, shared by every node of one prefix.
/// Reached through [`RedisBroker`](crate::RedisBroker), whose
/// [`room_store`](switchboard_core::Broker::room_store) it is; the
/// [module docs](self) list its keys.
pub(crate) struct RedisStore {
    publisher: Arc<Publisher>,
    subscriber: Arc<Subscriber>,
    prefix: String,
    node_ttl: Duration,
    scripts: Scripts,
    /// This node's named members per room: added again if Redis forgets
    /// them (a restart, or this node declared dead).
    local: Mutex<HashMap<Arc<str>, Names>>,
    /// Leaves that Redis did not take (an outage): retried at each
    /// heartbeat, so a member never stays listed after it left.
    unsent_leaves: Mutex<Vec<(Arc<str>, Member)>>,
}

impl RedisStore {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        subscriber: Arc<Subscriber>,
        options: &RedisOptions,
    ) -> Self {
        RedisStore {
            publisher,
            subscriber,
            prefix: options.prefix.clone(),
            node_ttl: options.node_ttl,
            scripts: Scripts {
                append: script(APPEND),
                replay: script(REPLAY),
                add: script(ADD),
                remove: script(REMOVE),
                heartbeat: script(HEARTBEAT),
            },
            local: Mutex::default(),
            unsent_leaves: Mutex::default(),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    fn field(&self, conn: ConnectionId) -> String {
        format!("{}@{}", conn.as_u64(), self.subscriber.node_id)
    }

    /// The heartbeat, every quarter of the node TTL, until `stop`.
    pub(crate) async fn heartbeat(&self, stop: &CancellationToken) {
        let mut tick = interval(self.node_ttl / 4);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.beat().await {
                tracing::debug!(error = %err, "presence heartbeat failed; retrying at the next one");
            }
        }
    }

    async fn beat(&self) -> Result<()> {
        let node = &*self.subscriber.node_id;
        let mut origin = vec![u8::try_from(node.len()).unwrap_or(u8::MAX)];
        origin.extend_from_slice(node.as_bytes());
        let fresh: i64 = self
            .publisher
            .invoke(
                "presence heartbeat",
                self.scripts
                    .heartbeat
                    .key(format!("{}:nodes", self.prefix))
                    .arg(&self.prefix)
                    .arg(node)
                    .arg(millis(self.node_ttl))
                    .arg(origin)
                    .arg(EPOCH_GRACE_MS),
            )
            .await?;
        let leaves = std::mem::take(&mut *lock(&self.unsent_leaves));
        for (room, member) in leaves {
            // A failure puts it back on the list.
            let _ = self.remove_member(&room, &member).await;
        }
        if fresh == 1 {
            let members: Vec<(Arc<str>, Member)> = lock(&self.local)
                .iter()
                .flat_map(|(room, members)| {
                    members.iter().map(|(conn, name)| {
                        let member = Member {
                            conn: *conn,
                            name: name.clone(),
                        };
                        (room.clone(), member)
                    })
                })
                .collect();
            if !members.is_empty() {
                tracing::info!(
                    members = members.len(),
                    "redis did not know this node: adding its members again"
                );
            }
            for (room, member) in members {
                self.add(&room, &member).await?;
            }
        }
        Ok(())
    }

    async fn add(&self, room: &str, member: &Member) -> Result<()> {
        let head = envelope::head(&self.subscriber.node_id, room, PRESENCE, None)?;
        self.publisher
            .invoke::<i64>(
                "presence add",
                self.scripts
                    .add
                    .key(self.key("presence", room))
                    .key(self.key("rooms-of", &self.subscriber.node_id))
                    .arg(self.field(member.conn))
                    .arg(&*member.name)
                    .arg(room)
                    .arg(self.subscriber.channels.room(room))
                    .arg(head),
            )
            .await?;
        Ok(())
    }
}

/// Delivers one presence change that arrived on `room`'s channel; false if
/// it is malformed.
pub(crate) fn deliver_presence(
    local: &LocalDelivery,
    node_id: &str,
    room: &str,
    payload: &[u8],
) -> bool {
    let Some(change) = parse_change(payload) else {
        return false;
    };
    let conn = change
        .field
        .split_once('@')
        .filter(|(_, node)| *node == node_id)
        .and_then(|(conn, _)| conn.parse().ok())
        .map(ConnectionId::from_u64);
    local.deliver_presence(room, change.joined, change.name, conn, change.version);
    true
}

/// The names of one room's local members, by connection.
type Names = HashMap<ConnectionId, Arc<str>>;

/// A presence change as the scripts publish it.
#[derive(Debug, PartialEq, Eq)]
struct Change<'a> {
    joined: bool,
    version: u64,
    field: &'a str,
    name: &'a str,
}

fn parse_change(payload: &[u8]) -> Option<Change<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let (kind, rest) = text.split_once(' ')?;
    let (version, rest) = rest.split_once(' ')?;
    let (len, rest) = rest.split_once(' ')?;
    let len: usize = len.parse().ok()?;
    let (field, name) = (rest.get(..len)?, rest.get(len..)?);
    let joined = match kind {
        "j" => true,
        "l" => false,
        _ => return None,
    };
    Some(Change {
        joined,
        version: version.parse().ok()?,
        field,
        name,
    })
}

#[async_trait]
impl RoomStore for RedisStore {
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
                self.scripts
                    .append
                    .key(self.key("meta", room))
                    .key(self.key("history", room))
                    .arg(epoch)
                    .arg(history.max_len)
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
                self.scripts
                    .replay
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
        lock(&self.local)
            .entry(Arc::from(room))
            .or_default()
            .insert(member.conn, member.name.clone());
        Ok(self.add(room, member).await?)
    }

    async fn remove_member(&self, room: &str, member: &Member) -> switchboard_core::Result<()> {
        {
            let mut local = lock(&self.local);
            if let Some(members) = local.get_mut(room) {
                members.remove(&member.conn);
                if members.is_empty() {
                    local.remove(room);
                }
            }
        }
        let head = envelope::head(&self.subscriber.node_id, room, PRESENCE, None)?;
        let removed = self
            .publisher
            .invoke::<i64>(
                "presence remove",
                self.scripts
                    .remove
                    .key(self.key("presence", room))
                    .key(self.key("rooms-of", &self.subscriber.node_id))
                    .arg(self.field(member.conn))
                    .arg(room)
                    .arg(self.subscriber.channels.room(room))
                    .arg(head)
                    .arg(EPOCH_GRACE_MS),
            )
            .await;
        if let Err(err) = removed {
            lock(&self.unsent_leaves).push((Arc::from(room), member.clone()));
            return Err(err.into());
        }
        Ok(())
    }

    async fn members(&self, room: &str) -> switchboard_core::Result<Members> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.key("presence", room));
        let all: Vec<(String, String)> = self.publisher.command("presence members", cmd).await?;
        let mut members = Members::default();
        for (field, value) in all {
            if field == "#version" {
                members.version = value.parse().unwrap_or(0);
            } else {
                members.names.push(Arc::from(value));
            }
        }
        Ok(members)
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; a poisoned one guards whole data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_changes_parse() {
        assert_eq!(
            parse_change(b"j 12 9 3@node-aaada lovelace"),
            Some(Change {
                joined: true,
                version: 12,
                field: "3@node-aa",
                name: "ada lovelace"
            })
        );
        assert_eq!(
            parse_change(b"l 3 4 1@n1bob"),
            Some(Change {
                joined: false,
                version: 3,
                field: "1@n1",
                name: "bob"
            })
        );
        for bad in [&b"x 1 1 ab"[..], b"j x 1 ab", b"j 1 9 ab", b"j 1", b"\xff"] {
            assert_eq!(parse_change(bad), None, "{bad:?}");
        }
    }
}
