//! The in-memory [`RoomStore`]: one node's presence and history, kept by
//! the hub itself when its broker offers no shared store.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{EPOCH_GRACE, History, Member, Members, Position, Replay, RoomStore, Unrecoverable};
use crate::connection::ConnectionId;
use crate::error::Result;
use crate::hub::LocalDelivery;
use crate::message::Message;

/// Rooms are swept for forgotten ones at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct MemoryStore {
    local: LocalDelivery,
    history: History,
    state: Mutex<State>,
}

struct State {
    rooms: HashMap<Arc<str>, Room>,
    last_sweep: Instant,
    /// The last member-list version given, in any room: a room dropped and
    /// made again goes on from here, so its versions never go back.
    versions: u64,
}

struct Room {
    epoch: u64,
    /// The newest position's sequence number; 0 before the first message.
    seq: u64,
    entries: VecDeque<Entry>,
    last_append: Instant,
    members: HashMap<ConnectionId, Arc<str>>,
    version: u64,
}

struct Entry {
    seq: u64,
    at: Instant,
    msg: Message,
}

impl Room {
    fn new(now: Instant) -> Self {
        Room {
            epoch: random_u64(),
            seq: 0,
            entries: VecDeque::new(),
            last_append: now,
            members: HashMap::new(),
            version: 0,
        }
    }

    fn trim(&mut self, history: &History, now: Instant) {
        while self.entries.len() > history.max_len
            || self
                .entries
                .front()
                .is_some_and(|e| now.duration_since(e.at) > history.max_age)
        {
            self.entries.pop_front();
        }
    }

    fn newest(&self) -> Option<Position> {
        (self.seq > 0).then(|| Position::new(self.epoch, self.seq))
    }

    /// A room with no members and no position worth keeping: none given
    /// yet, or the newest older than the history's age and the grace.
    fn forgotten(&self, history: &History, now: Instant) -> bool {
        self.members.is_empty()
            && (self.seq == 0
                || now.duration_since(self.last_append)
                    > history.max_age.saturating_add(EPOCH_GRACE))
    }
}

impl MemoryStore {
    pub(crate) fn new(local: LocalDelivery, history: History) -> Self {
        MemoryStore {
            local,
            history,
            state: Mutex::new(State {
                rooms: HashMap::new(),
                last_sweep: Instant::now(),
                versions: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; a poisoned one still guards whole data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// The room's record, a fresh one (new epoch) if it had none or was
    /// forgotten.
    fn room(&mut self, name: &str, history: &History, now: Instant) -> &mut Room {
        self.sweep(name, history, now);
        if !self.rooms.contains_key(name) {
            self.make_room(history);
        }
        self.rooms
            .entry(Arc::from(name))
            .or_insert_with(|| Room::new(now))
    }

    /// Before a room is added: at `max_rooms` rooms without members, the
    /// one whose newest message is oldest goes (its positions with it).
    fn make_room(&mut self, history: &History) {
        let idle = self.rooms.values().filter(|r| r.members.is_empty());
        if idle.count() < history.max_rooms.max(1) {
            return;
        }
        let oldest = self
            .rooms
            .iter()
            .filter(|(_, r)| r.members.is_empty())
            .min_by_key(|(_, r)| r.last_append)
            .map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            tracing::debug!(room = %name, "room history dropped: too many rooms without members");
            self.rooms.remove(&name);
        }
    }

    /// The room's record if it has one that is not forgotten.
    fn existing(&mut self, name: &str, history: &History, now: Instant) -> Option<&mut Room> {
        self.sweep(name, history, now);
        self.rooms.get_mut(name)
    }

    /// Drops `name` if it is forgotten, and every forgotten room once a
    /// minute (or once per `max_age`, if shorter).
    fn sweep(&mut self, name: &str, history: &History, now: Instant) {
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY.min(history.max_age) {
            self.last_sweep = now;
            self.rooms.retain(|_, room| !room.forgotten(history, now));
        }
        if self
            .rooms
            .get(name)
            .is_some_and(|room| room.forgotten(history, now))
        {
            self.rooms.remove(name);
        }
    }
}

#[async_trait]
impl RoomStore for MemoryStore {
    async fn append(&self, name: &str, msg: Message, _: &History) -> Result<Position> {
        let now = Instant::now();
        let mut state = self.lock();
        let room = state.room(name, &self.history, now);
        room.seq += 1;
        room.last_append = now;
        let position = Position::new(room.epoch, room.seq);
        if self.history.max_len > 0 {
            room.entries.push_back(Entry {
                seq: room.seq,
                at: now,
                msg: msg.clone(),
            });
        }
        room.trim(&self.history, now);
        // Delivered under the lock, so members see the room's messages in
        // position order.
        self.local.deliver_entry(name, position, &msg);
        Ok(position)
    }

    async fn replay(&self, name: &str, since: Option<Position>, _: &History) -> Result<Replay> {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(room) = state.existing(name, &self.history, now) else {
            // No record: no position was ever given here (or it expired).
            let entries = match since {
                None => Ok(Vec::new()),
                Some(_) => Err(Unrecoverable::Epoch),
            };
            return Ok(Replay {
                newest: None,
                entries,
            });
        };
        room.trim(&self.history, now);
        let newest = room.newest();
        let Some(since) = since else {
            return Ok(Replay {
                newest,
                entries: Ok(Vec::new()),
            });
        };
        let entries = if since.epoch() != room.epoch {
            Err(Unrecoverable::Epoch)
        } else if since.seq() > room.seq {
            Err(Unrecoverable::Unknown)
        } else {
            let first_kept = room.entries.front().map_or(room.seq + 1, |e| e.seq);
            if since.seq() + 1 < first_kept {
                Err(Unrecoverable::Trimmed)
            } else {
                Ok(room
                    .entries
                    .iter()
                    .filter(|e| e.seq > since.seq())
                    .map(|e| (Position::new(room.epoch, e.seq), e.msg.clone()))
                    .collect())
            }
        };
        Ok(Replay { newest, entries })
    }

    async fn add_member(&self, name: &str, member: &Member) -> Result<()> {
        let now = Instant::now();
        let mut state = self.lock();
        let version = state.versions + 1;
        let room = state.room(name, &self.history, now);
        if room
            .members
            .insert(member.conn, member.name.clone())
            .is_none()
        {
            room.version = version;
            state.versions = version;
            self.local
                .deliver_presence(name, true, &member.name, Some(member.conn), version);
        }
        Ok(())
    }

    async fn remove_member(&self, name: &str, member: &Member) -> Result<()> {
        let mut state = self.lock();
        let version = state.versions + 1;
        let Some(room) = state.rooms.get_mut(name) else {
            return Ok(());
        };
        if let Some(left) = room.members.remove(&member.conn) {
            room.version = version;
            self.local
                .deliver_presence(name, false, &left, Some(member.conn), version);
        }
        let forgotten = room.forgotten(&self.history, Instant::now());
        if room.version == version {
            state.versions = version;
        }
        if forgotten {
            state.rooms.remove(name);
        }
        Ok(())
    }

    async fn members(&self, name: &str) -> Result<Members> {
        let state = self.lock();
        Ok(state
            .rooms
            .get(name)
            .map_or_else(Members::default, |room| Members {
                names: room.members.values().cloned().collect(),
                version: room.version,
            }))
    }
}

/// A random epoch: std's `RandomState` is seeded from the OS, mixed with
/// the time so two rooms created in one process differ too.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::Unrecoverable;

    fn store(max_len: usize) -> MemoryStore {
        let history = History::new(max_len, Duration::from_secs(60));
        MemoryStore::new(LocalDelivery::detached(), history)
    }

    fn rooms(store: &MemoryStore) -> usize {
        store.lock().rooms.len()
    }

    #[tokio::test]
    async fn rooms_without_members_or_positions_are_not_kept() {
        let store = store(2);
        let member = Member {
            conn: ConnectionId::from_u64(1),
            name: "ada".into(),
        };
        store.add_member("a", &member).await.unwrap();
        assert_eq!(rooms(&store), 1);
        store.remove_member("a", &member).await.unwrap();
        assert_eq!(rooms(&store), 0, "no member, no position: forgotten");

        // At most `max_rooms` rooms without members: the quietest goes.
        let few = MemoryStore::new(
            LocalDelivery::detached(),
            History::new(2, Duration::from_secs(60)).max_rooms(2),
        );
        for room in ["x", "y", "z"] {
            few.append(room, Message::text("m"), &few.history)
                .await
                .unwrap();
        }
        let kept: Vec<Arc<str>> = few.lock().rooms.keys().cloned().collect();
        assert_eq!(kept.len(), 2);
        assert!(!kept.contains(&Arc::from("x")), "{kept:?}");

        // Asking about a room creates nothing.
        let replay = store
            .replay("b", Some(Position::new(1, 1)), &store.history)
            .await
            .unwrap();
        assert_eq!(replay.entries, Err(Unrecoverable::Epoch));
        assert_eq!(rooms(&store), 0);

        // A room that gave positions keeps its record (and at most
        // `max_len` messages) once its members leave.
        store.add_member("c", &member).await.unwrap();
        for i in 0..5 {
            store
                .append("c", Message::text(i.to_string()), &store.history)
                .await
                .unwrap();
        }
        store.remove_member("c", &member).await.unwrap();
        assert_eq!(rooms(&store), 1);
        assert_eq!(store.lock().rooms["c"].entries.len(), 2);
    }
}
