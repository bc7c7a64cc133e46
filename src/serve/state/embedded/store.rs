//! The embedded backend's in-memory user table: per-user raw aggregates, sharded behind
//! reader-writer locks.
//!
//! Reads (every GetUserTier) take one shard's read lock for the time of a hash lookup and a
//! copy of the aggregate, so they never wait for each other; the only writer is the event
//! log's thread, which takes one shard's write lock per event. Aggregates are model-independent, so the table
//! survives model swaps untouched.

use crate::features::{hash_str, Event, UserAggregate};
use crate::serve::state::UserEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One shard: user id → aggregate.
///
/// The aggregate is boxed: a hash map keeps about twice as many buckets as entries at 1M users
/// (it doubles when it fills), and an inline value would pay its full size in every spare
/// bucket. Boxed, a spare bucket costs 24 bytes (the id and the pointer) and the aggregate its
/// malloc chunk, 320 bytes for today's 304 (`an_aggregate_keeps_its_malloc_size_class`;
/// issue 14's budget, `BENCHMARKS.md`, "Server memory per user"). Reads copy it out either
/// way, so a lookup pays one more pointer hop.
pub(crate) type Shard = HashMap<Box<str>, Box<UserAggregate>>;

pub struct UserStore {
    shards: Box<[RwLock<Shard>]>,
    mask: usize,
    len: AtomicUsize,
}

impl UserStore {
    /// `shards` must be a power of two (the config validates it; other values are rounded up).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        UserStore {
            shards: (0..n).map(|_| RwLock::new(Shard::new())).collect(),
            mask: n - 1,
            len: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn shard_index(&self, id: &str) -> usize {
        // FNV's low bits are weak: mix before masking.
        ((u64::from(hash_str(id)).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) as usize & self.mask
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        // A writer that panicked left a consistent map (aggregate updates are plain stores).
        self.shards[i]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[i]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Users held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of one user's aggregate.
    #[inline]
    pub fn get(&self, id: &str) -> Option<UserAggregate> {
        self.read(self.shard_index(id)).get(id).map(|a| **a)
    }

    /// Inserts or replaces a user (seeding and recovery).
    pub fn insert(&self, id: &str, agg: UserAggregate) {
        if self
            .write(self.shard_index(id))
            .insert(id.into(), Box::new(agg))
            .is_none()
        {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Folds one event into a user's aggregate, creating the user; true when it was created.
    pub fn apply(&self, id: &str, event: &Event) -> bool {
        let mut shard = self.write(self.shard_index(id));
        if let Some(agg) = shard.get_mut(id) {
            agg.apply(event);
            return false;
        }
        let mut agg = Box::<UserAggregate>::default();
        agg.apply(event);
        shard.insert(id.into(), agg);
        drop(shard);
        self.len.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Removes a user; true when it was held.
    pub fn remove(&self, id: &str) -> bool {
        let removed = self.write(self.shard_index(id)).remove(id).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Applies one entry of the log: an event (true when it created the user), or an erasure
    /// ([`UserEvent::erasure`]: the user is removed; false).
    pub(crate) fn apply_entry(&self, e: &UserEvent) -> bool {
        if e.is_erasure() {
            self.remove(&e.user_id);
            return false;
        }
        self.apply(&e.user_id, &e.event())
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Read access to shard `i` (for scans: each scan thread holds one shard at a time).
    pub(crate) fn shard(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        self.read(i)
    }

    /// Read guards on every shard at once: a consistent view for snapshots. Only the event log's
    /// thread (the single writer) calls this, so it cannot deadlock against a writer.
    pub(crate) fn all_shards(&self) -> Vec<RwLockReadGuard<'_, Shard>> {
        (0..self.shards.len()).map(|i| self.read(i)).collect()
    }
}

/// Serialises every user of a set of shard guards as one sequence of `(id, aggregate)`.
pub(crate) struct UsersSeq<'a>(pub &'a [RwLockReadGuard<'a, Shard>]);

impl serde::Serialize for UsersSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let n = self.0.iter().map(|g| g.len()).sum();
        let mut seq = s.serialize_seq(Some(n))?;
        for shard in self.0 {
            for (id, agg) in shard.iter() {
                seq.serialize_element(&(&**id, &**agg))?;
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::EventKind;

    #[test]
    fn apply_creates_users_once_and_updates_them() {
        let store = UserStore::new(4);
        let e = Event {
            ts: 100,
            kind: EventKind::Order,
            amount: 5.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        };
        assert!(store.apply("u1", &e));
        assert!(!store.apply("u1", &e));
        assert!(store.apply("u2", &e));
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("u1").map(|a| a.orders), Some(2));
        assert_eq!(store.get("nobody"), None);
        let guards = store.all_shards();
        let bytes = postcard::to_stdvec(&UsersSeq(&guards)).unwrap();
        let back: Vec<(String, UserAggregate)> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), 2);
    }

    /// The boxed aggregate costs its malloc chunk: glibc serves a request of `n` bytes from a
    /// chunk of `n + 8` rounded up to 16, so today's 304 bytes take 320, the per-user figure
    /// `BENCHMARKS.md` accounts with. Growing the aggregate past 312 bytes moves every user to
    /// the next chunk; this fails then and says what a user would cost.
    #[test]
    fn an_aggregate_keeps_its_malloc_size_class() {
        let size = std::mem::size_of::<UserAggregate>();
        let chunk = (size + 8).next_multiple_of(16);
        assert!(
            chunk <= 320,
            "a {size}-byte aggregate takes a {chunk}-byte chunk, {} bytes more per user than \
             the 320 issue 14 budgets",
            chunk - 320
        );
    }
}
