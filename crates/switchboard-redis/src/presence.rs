//! Room presence in Redis: who is in each room on every node, join and
//! leave notices, and the heartbeat that removes the members of a node
//! that died.
//!
//! # Keys (prefix `P`, room `R`, instance `I`)
//!
//! A node's *instance* is its node id, `~`, and 16 random hex digits made
//! at connect time: a node restarted under the same id is a new instance,
//! so the members its previous process left behind are removed like any
//! dead node's.
//!
//! - `P:presence:R`, a hash: `{connection}@{I}` → name, and `#version`
//!   (bumped by every change). Expires a day after its last member left.
//! - `P:members-of:I`, a set: `{len(R)}:{R}{field}` for each member of the
//!   instance, so that removing a dead instance's members costs what it
//!   had, not the size of its rooms.
//! - `P:nodes`, a sorted set: instance → the Redis time (ms) by which its
//!   next heartbeat is due (its own TTL after the last one).
//! - `P:known:I`: set once Redis holds all of `I`'s members (after its
//!   first heartbeat, or after adding them back); gone when Redis lost
//!   its data or `I` was reaped, which makes `I` add them back.
//! - `P:reaped:I`: set for a day when `I`'s members started being removed
//!   for silence, so that it announces them again if it was alive after
//!   all.
//!
//! Each change is one Lua script that records it and publishes it on the
//! room's channel (an envelope with the presence flag, see
//! [`envelope`](crate::envelope)), so notices carry the member-list
//! version they produced and arrive in that order everywhere.
//!
//! # Heartbeat
//!
//! Every quarter of [`RedisOptions::node_ttl`] each node records its next
//! deadline and, if its own previous beat was on time (a node or a Redis
//! that stalled sees everyone late), removes the members of up to 16
//! instances past their deadline, 512 members per instance per beat,
//! announcing each leave once (scripts run atomically). After each beat an
//! upkeep task (apart, so that it never delays a beat) retries leaves
//! Redis did not take, and adds the node's members back when Redis lacks
//! them (`known` is gone): quietly after Redis lost its data (no one saw
//! them leave), announced after it was reaped. A leave Redis never took
//! is announced under its name even if Redis lost the member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::Script;
use switchboard_core::rooms::{EPOCH_GRACE, Member, Members};
use switchboard_core::{ConnectionId, LocalDelivery};
use tokio::sync::Notify;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::options::{RedisOptions, random_u64};
use crate::publisher::Publisher;
use crate::subscriber::Subscriber;

/// How long an empty presence hash (its version) and a reaped marker last.
const GRACE_MS: u64 = EPOCH_GRACE.as_millis() as u64;
/// Dead instances, and members of each, handled per heartbeat.
const REAP_NODES: u32 = 16;
const REAP_MEMBERS: u32 = 512;

/// Helpers of every presence script. `announce` writes the envelope of
/// `envelope.rs` by hand (version 1, flags room + presence, the origin as
/// a length byte and the id, the room as a u16 length and the name), then
/// the change: `{j|l} {version} {len(field)} {field}{name}`. A room's
/// `#version` starts at the Redis time in µs when its hash is made, so
/// versions never go back, even after Redis lost its data.
const PRELUDE: &str = r#"
local function announce(channel_prefix, origin, room, kind, version, field, name)
  local head = string.char(1, 0x12) .. origin
    .. string.char(math.floor(#room / 256), #room % 256) .. room
  redis.call('PUBLISH', channel_prefix .. room,
    head .. kind .. ' ' .. string.format('%.0f', version) .. ' ' .. #field .. ' ' .. field .. name)
end
local function entry(room, field)
  return #room .. ':' .. room .. field
end
local function next_version(key)
  local t = redis.call('TIME')
  -- Seconds and zero-padded microseconds as text: a Lua number this
  -- large would be written in exponent notation.
  redis.call('HSETNX', key, '#version', t[1] .. string.format('%06d', tonumber(t[2])))
  return redis.call('HINCRBY', key, '#version', 1)
end
-- Adds one member; announces it unless `quiet`.
local function add(prefix, channel_prefix, origin, instance, room, field, name, quiet)
  local key = prefix .. ':presence:' .. room
  if redis.call('HSETNX', key, field, name) == 0 then return end
  local version = next_version(key)
  redis.call('PERSIST', key)
  redis.call('SADD', prefix .. ':members-of:' .. instance, entry(room, field))
  if not quiet then announce(channel_prefix, origin, room, 'j', version, field, name) end
end
-- Removes one member and announces its leave. If it is not there, the
-- leave is announced only under `known_name` (a leave Redis never took,
-- retried after it lost its data: no one else will announce it).
local function remove(prefix, channel_prefix, origin, instance, room, field, grace, known_name)
  local key = prefix .. ':presence:' .. room
  redis.call('SREM', prefix .. ':members-of:' .. instance, entry(room, field))
  local name = redis.call('HGET', key, field)
  if not name then
    if known_name == '' then return end
    name = known_name
  end
  redis.call('HDEL', key, field)
  local version = next_version(key)
  if redis.call('HLEN', key) == 1 then redis.call('PEXPIRE', key, grace) end
  announce(channel_prefix, origin, room, 'l', version, field, name)
end
"#;

/// ARGV: prefix, channel prefix, origin, instance, quiet (0/1), then
/// (room, field, name) triples.
const ADD: &str = r#"
local quiet = ARGV[5] == '1'
for i = 6, #ARGV, 3 do
  add(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[i], ARGV[i + 1], ARGV[i + 2], quiet)
end
return 1
"#;

/// ARGV: prefix, channel prefix, origin, instance, room, field, grace ms,
/// the name to announce if Redis does not have the member ('' for none).
const REMOVE: &str = r#"
remove(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8])
return 1
"#;

/// KEYS: this instance's `known` and `reaped` keys. Marks the instance as
/// holding all its members in Redis.
const KNOWN: &str = r#"
redis.call('SET', KEYS[1], '1')
redis.call('DEL', KEYS[2])
return 1
"#;

/// KEYS: nodes. ARGV: prefix, channel prefix, origin, instance, ttl ms,
/// grace ms, nodes per beat, members per node. Returns {fresh, reaped}:
/// whether Redis lacks this instance's members (it lost its data, or the
/// instance was reaped, maybe in part, or it never finished adding them),
/// and whether it was reaped (others saw leaves).
const HEARTBEAT: &str = r#"
local prefix, channel_prefix, origin, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, grace = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local previous = redis.call('ZSCORE', KEYS[1], me)
redis.call('ZADD', KEYS[1], now + ttl, me)
local fresh = redis.call('EXISTS', prefix .. ':known:' .. me) == 0
local reaped = redis.call('EXISTS', prefix .. ':reaped:' .. me) == 1
if previous and tonumber(previous) >= now then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, tonumber(ARGV[7]))
  for _, node in ipairs(dead) do
    redis.call('DEL', prefix .. ':known:' .. node)
    redis.call('SET', prefix .. ':reaped:' .. node, '1', 'PX', grace)
    local set = prefix .. ':members-of:' .. node
    for _, e in ipairs(redis.call('SRANDMEMBER', set, tonumber(ARGV[8]))) do
      local sep = string.find(e, ':', 1, true)
      local len = tonumber(string.sub(e, 1, sep - 1))
      local room = string.sub(e, sep + 1, sep + len)
      remove(prefix, channel_prefix, origin, node, room, string.sub(e, sep + len + 1), grace, '')
    end
    if redis.call('SCARD', set) == 0 then
      redis.call('ZREM', KEYS[1], node)
    end
  end
end
return {fresh and 1 or 0, reaped and 1 or 0}
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// The names of one room's local members, by connection.
type Names = HashMap<ConnectionId, Arc<str>>;

/// This node's side of presence.
pub(crate) struct Presence {
    publisher: Arc<Publisher>,
    subscriber: Arc<Subscriber>,
    prefix: String,
    node_ttl: Duration,
    add: Script,
    remove: Script,
    known: Script,
    heartbeat: Script,
    /// This node's named members per room: what Redis should hold about
    /// this instance, added again when Redis lacks it.
    local: Mutex<HashMap<Arc<str>, Names>>,
    /// Leaves that Redis did not take (an outage), retried by the upkeep,
    /// so that a member never stays listed after it left.
    unsent_leaves: Mutex<Vec<(Arc<str>, Member)>>,
    /// Redis lacks this instance's members: add them back, announcing them
    /// if `Some(true)` (it was reaped: others saw them leave).
    readd: Mutex<Option<bool>>,
    /// Wakes the upkeep (after each heartbeat).
    upkeep_due: Notify,
}

impl Presence {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        subscriber: Arc<Subscriber>,
        options: &RedisOptions,
    ) -> Self {
        Presence {
            publisher,
            subscriber,
            prefix: options.prefix.clone(),
            node_ttl: options.node_ttl,
            add: script(ADD),
            remove: script(REMOVE),
            known: Script::new(KNOWN),
            heartbeat: script(HEARTBEAT),
            local: Mutex::default(),
            unsent_leaves: Mutex::default(),
            readd: Mutex::default(),
            upkeep_due: Notify::new(),
        }
    }

    fn instance(&self) -> &str {
        &self.subscriber.instance
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// The envelope origin as the scripts write it: a length byte, the id.
    fn origin(&self) -> Vec<u8> {
        let node = self.subscriber.node_id.as_bytes();
        let mut origin = vec![u8::try_from(node.len()).unwrap_or(u8::MAX)];
        origin.extend_from_slice(node);
        origin
    }

    fn field(&self, conn: ConnectionId) -> String {
        format!("{}@{}", conn.as_u64(), self.instance())
    }

    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.arg(&self.prefix)
            .arg(self.subscriber.channels.room(""))
            .arg(self.origin())
            .arg(self.instance());
        call
    }

    /// Adds `members` (room, connection, name) in one script call.
    async fn add_all(&self, members: &[(&str, ConnectionId, &str)], quiet: bool) -> Result<()> {
        let mut call = self.invocation(&self.add);
        call.arg(if quiet { "1" } else { "0" });
        for (room, conn, name) in members {
            call.arg(*room).arg(self.field(*conn)).arg(*name);
        }
        self.publisher.invoke::<i64>("presence add", &call).await?;
        Ok(())
    }

    pub(crate) async fn add_member(&self, room: &str, member: &Member) -> Result<()> {
        check_room(room)?;
        lock(&self.local)
            .entry(Arc::from(room))
            .or_default()
            .insert(member.conn, member.name.clone());
        self.add_all(&[(room, member.conn, &member.name)], false)
            .await
    }

    pub(crate) async fn remove_member(&self, room: &str, member: &Member) -> Result<()> {
        check_room(room)?;
        {
            let mut local = lock(&self.local);
            if let Some(members) = local.get_mut(room) {
                members.remove(&member.conn);
                if members.is_empty() {
                    local.remove(room);
                }
            }
        }
        if let Err(err) = self.send_leave(room, member, "").await {
            lock(&self.unsent_leaves).push((Arc::from(room), member.clone()));
            return Err(err);
        }
        Ok(())
    }

    /// The leave script; `known_name` is announced even if Redis lacks the
    /// member ('' for only if it has it).
    async fn send_leave(&self, room: &str, member: &Member, known_name: &str) -> Result<()> {
        let mut call = self.invocation(&self.remove);
        call.arg(room)
            .arg(self.field(member.conn))
            .arg(GRACE_MS)
            .arg(known_name);
        self.publisher
            .invoke::<i64>("presence remove", &call)
            .await?;
        Ok(())
    }

    pub(crate) async fn members(&self, room: &str) -> Result<Members> {
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

    /// The heartbeat and the upkeep it triggers, until `stop`. Apart, so
    /// that a long re-add never delays a beat.
    pub(crate) async fn run(&self, stop: &CancellationToken) {
        tokio::join!(self.beats(stop), self.upkeep(stop));
    }

    /// Every quarter of the node TTL: the heartbeat script.
    async fn beats(&self, stop: &CancellationToken) {
        let mut tick = interval(self.node_ttl / 4);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut call = self.invocation(&self.heartbeat);
            call.key(format!("{}:nodes", self.prefix))
                .arg(millis(self.node_ttl))
                .arg(GRACE_MS)
                .arg(REAP_NODES)
                .arg(REAP_MEMBERS);
            match self
                .publisher
                .invoke::<(i64, i64)>("presence heartbeat", &call)
                .await
            {
                Ok((fresh, reaped)) => {
                    if fresh == 1 {
                        let mut readd = lock(&self.readd);
                        *readd = Some(readd.unwrap_or(false) || reaped == 1);
                    }
                    self.upkeep_due.notify_one();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "presence heartbeat failed; retrying at the next one")
                }
            }
        }
    }

    /// After each beat: retry the leaves Redis did not take, add the
    /// members back if Redis lacks them.
    async fn upkeep(&self, stop: &CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.upkeep_due.notified() => {}
            }
            let leaves = std::mem::take(&mut *lock(&self.unsent_leaves));
            for (room, member) in leaves {
                // A member that joined the room again is not leaving.
                let back = lock(&self.local)
                    .get(&room)
                    .is_some_and(|m| m.contains_key(&member.conn));
                if back {
                    continue;
                }
                if self.send_leave(&room, &member, &member.name).await.is_err() {
                    lock(&self.unsent_leaves).push((room, member));
                }
            }
            let pending = *lock(&self.readd);
            if let Some(announce) = pending {
                match self.add_back(announce).await {
                    Ok(()) => {
                        let mut readd = lock(&self.readd);
                        // A beat that found Redis lacking members again
                        // meanwhile set it anew.
                        if *readd == pending {
                            *readd = None;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "adding this node's members back failed; retrying after the next heartbeat")
                    }
                }
            }
        }
    }

    /// Adds every local member again, one script call per room, then marks
    /// the instance as known. A member that leaves meanwhile is removed
    /// again at the end; one that joins meanwhile adds itself (if the
    /// re-add got there first, its join goes unannounced: it is listed all
    /// the same).
    async fn add_back(&self, announce: bool) -> Result<()> {
        let snapshot: HashMap<Arc<str>, Names> = lock(&self.local).clone();
        let count: usize = snapshot.values().map(HashMap::len).sum();
        if count > 0 {
            tracing::info!(
                members = count,
                announced = announce,
                "redis lacked this node's members: adding them again"
            );
        }
        for (room, members) in &snapshot {
            let members: Vec<_> = members
                .iter()
                .map(|(conn, name)| (&**room, *conn, &**name))
                .collect();
            self.add_all(&members, !announce).await?;
        }
        let gone: Vec<(Arc<str>, Member)> = {
            let local = lock(&self.local);
            snapshot
                .into_iter()
                .flat_map(|(room, members)| {
                    let still = local.get(&room).cloned().unwrap_or_default();
                    members
                        .into_iter()
                        .filter(move |(conn, _)| !still.contains_key(conn))
                        .map(move |(conn, name)| (room.clone(), Member { conn, name }))
                })
                .collect()
        };
        for (room, member) in gone {
            self.send_leave(&room, &member, "").await?;
        }
        let mut call = self.known.prepare_invoke();
        call.key(self.key("known", self.instance()))
            .key(self.key("reaped", self.instance()));
        self.publisher
            .invoke::<i64>("presence known", &call)
            .await?;
        Ok(())
    }
}

/// Room names travel as a u16-length field of the envelope.
fn check_room(room: &str) -> Result<()> {
    if room.len() > usize::from(u16::MAX) {
        return Err(crate::error::Error::Encode("room name too long"));
    }
    Ok(())
}

/// Delivers one presence change that arrived on `room`'s channel; false if
/// it is malformed. `instance` is this node's: a change about one of its
/// own connections names it, so that the member is not told of itself.
pub(crate) fn deliver_presence(
    local: &LocalDelivery,
    instance: &str,
    room: &str,
    payload: &[u8],
) -> bool {
    let Some(change) = parse_change(payload) else {
        return false;
    };
    // Connection ids are digits: the field's first '@' ends it.
    let conn = change
        .field
        .split_once('@')
        .filter(|(_, of)| *of == instance)
        .and_then(|(conn, _)| conn.parse().ok())
        .map(ConnectionId::from_u64);
    local.deliver_presence(room, change.joined, change.name, conn, change.version);
    true
}

/// An instance id: the node id and 16 random hex digits.
pub(crate) fn instance_id(node_id: &str) -> String {
    format!("{node_id}~{:016x}", random_u64())
}

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

pub(crate) fn millis(d: Duration) -> u64 {
    // Redis takes expiry times up to about 2^63 ms; ten years is plenty.
    const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
    u64::try_from(d.as_millis()).map_or(TEN_YEARS_MS, |ms| ms.min(TEN_YEARS_MS))
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

    #[test]
    fn instances_of_one_node_differ() {
        let (a, b) = (instance_id("eu-1"), instance_id("eu-1"));
        assert_ne!(a, b);
        assert!(a.starts_with("eu-1~") && a.len() == "eu-1~".len() + 16);
    }

    #[test]
    fn expiry_times_are_clamped() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), 10 * 365 * 24 * 3600 * 1000);
    }
}
