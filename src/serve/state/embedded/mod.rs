//! The embedded state backend (the default): every user's aggregate in memory, made durable by a
//! local write-ahead log and snapshots in one state directory.
//!
//! - [`store`] — the sharded in-memory user table.
//! - `wal` — the write-ahead log: record format, recovery at start, the log thread, the handle.
//! - `snapshot` — the `state.bin` format.
//! - `cipher` — optional encryption of both at rest ([`StateKey`], `--state-key-file`).
//! - `dir` — the state directory: layout, lock, segments, writing a snapshot.
//! - [`tools`] — check, repair, backup and restore (`tiering state`).
//!
//! Reads go straight to the table (a shard's read lock for the time of a hash lookup and a
//! copy), so [`EmbeddedState`]'s read futures are complete when returned; writes go through the
//! log thread, which is the table's only writer.

mod cipher;
mod dir;
mod snapshot;
pub mod store;
mod tail;
pub mod tools;
mod wal;

pub use cipher::{StateKey, StateKeyError};
pub use dir::SNAPSHOT;
pub use wal::replay::{Recovery, SegmentReport};
pub use wal::{EventLog, LogOptions};

use super::{Applied, LogPosition, StateError, UserEvent, UserState};
use crate::bundle::Snapshot;
use crate::features::UserAggregate;
use crate::serve::metrics::Metrics;
use rayon::prelude::*;
use std::future::{ready, Future};
use std::path::Path;
use std::sync::Arc;
use store::UserStore;

/// The in-memory table and the log that is its only writer.
pub struct EmbeddedState {
    store: Arc<UserStore>,
    log: EventLog,
    /// Users a seed must leave out (erased ids: [`crate::serve::privacy`] installs it).
    seed_filter: std::sync::OnceLock<SeedFilter>,
}

/// True for a user id a seed must leave out.
pub type SeedFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

impl EmbeddedState {
    /// Locks `dir`, loads its snapshot, replays its log into a table of `shards` lock shards,
    /// and starts the log thread. Blocking.
    pub fn open(
        dir: &Path,
        shards: usize,
        opts: LogOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(EmbeddedState, Recovery), StateError> {
        EmbeddedState::open_with_key(dir, shards, opts, None, metrics)
    }

    /// [`EmbeddedState::open_with_key`] with the key read from `key_file` (`state_key_file`;
    /// [`StateError::StateKey`] if it cannot be used).
    pub fn open_with_key_file(
        dir: &Path,
        shards: usize,
        opts: LogOptions,
        key_file: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> Result<(EmbeddedState, Recovery), StateError> {
        let key = key_file
            .map(StateKey::from_file)
            .transpose()
            .map_err(StateError::StateKey)?;
        EmbeddedState::open_with_key(dir, shards, opts, key.map(Arc::new), metrics)
    }

    /// [`EmbeddedState::open`], the snapshot and log encrypted with `key` (`None`: plaintext).
    /// A state written in the other mode, or with another key, is refused.
    pub fn open_with_key(
        dir: &Path,
        shards: usize,
        opts: LogOptions,
        key: Option<Arc<StateKey>>,
        metrics: Arc<Metrics>,
    ) -> Result<(EmbeddedState, Recovery), StateError> {
        let store = Arc::new(UserStore::new(shards));
        let (log, recovery) = EventLog::open_with_key(dir, store.clone(), opts, key, metrics)?;
        let seed_filter = std::sync::OnceLock::new();
        Ok((
            EmbeddedState {
                store,
                log,
                seed_filter,
            },
            recovery,
        ))
    }

    /// Makes every later [`UserState::seed`] leave out the users `skip` names (set once).
    pub fn set_seed_filter(&self, skip: SeedFilter) {
        let _ = self.seed_filter.set(skip);
    }
}

impl UserState for EmbeddedState {
    #[inline]
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<UserAggregate>, StateError>> + Send {
        ready(Ok(self.store.get(id)))
    }

    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<UserAggregate>>, StateError>> + Send {
        ready(Ok(ids.iter().map(|id| self.store.get(id)).collect()))
    }

    fn apply(
        &self,
        events: Vec<UserEvent>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        self.log.append(events)
    }

    /// The embedded state is fed by `RecordEvents` through its own log, never by a topic.
    fn apply_logged(
        &self,
        _events: Vec<(UserEvent, LogPosition)>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        ready(Err(StateError::Unsupported {
            what: "the embedded state does not consume an event topic: run the aggregator with --state redis://",
        }))
    }

    /// Always `None`: the embedded state applies RecordEvents directly, never a topic.
    fn applied_position(
        &self,
        _id: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StateError>> + Send {
        ready(Ok(None))
    }

    /// An erasure record through the log (written and synced like events, in their order), then
    /// the user removed from the table by the log thread.
    fn erase(&self, id: &str) -> impl Future<Output = Result<bool, StateError>> + Send {
        let existed = self.store.get(id).is_some();
        let append = self.log.append(vec![UserEvent::erasure(id)]);
        async move {
            append.await?;
            Ok(existed)
        }
    }

    /// One part per shard, visited in parallel on the rayon pool under the shard's read lock.
    fn scan<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        T: Send,
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T + Sync,
    {
        Ok((0..self.store.shard_count())
            .into_par_iter()
            .map(|i| {
                let shard = self.store.shard(i);
                let mut users = shard.iter().map(|(id, agg)| (&**id, &**agg));
                visit(&mut users)
            })
            .collect())
    }

    fn users(&self) -> usize {
        self.store.len()
    }

    fn refusing_writes(&self) -> bool {
        self.log.refusing_writes()
    }

    fn is_seeded(&self) -> bool {
        self.log.is_seeded()
    }

    fn seed(
        &self,
        version: String,
        mut snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        if let Some(skip) = self.seed_filter.get() {
            let (ids, aggs): (Vec<String>, Vec<UserAggregate>) = snapshot
                .user_ids
                .into_iter()
                .zip(snapshot.aggregates)
                .filter(|(id, _)| !skip(id))
                .unzip();
            snapshot.user_ids = ids;
            snapshot.aggregates = aggs;
        }
        self.log.seed(version, snapshot)
    }

    fn checkpoint(&self) -> impl Future<Output = Result<bool, StateError>> + Send {
        self.log.checkpoint()
    }

    fn shutdown(&self) -> impl Future<Output = Result<(), StateError>> + Send {
        self.log.shutdown()
    }
}
