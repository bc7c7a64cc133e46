//! The user state behind one small trait, [`UserState`]: get one user, get many, apply a batch
//! of events, scan every user for rankings, plus the lifecycle the server drives (seed from a
//! bundle, checkpoint, shut down). Handlers, the at-risk scan and the model loader talk to the
//! trait only, never to a backend's internals.
//!
//! # Layout
//!
//! - this module: the trait, the event and outcome types, and [`StateError`].
//! - `backend` — [`StateBackend`], the backend chosen once at start (an enum over the
//!   implementations).
//! - [`embedded`] — the default: a sharded in-memory map, a local write-ahead log with group
//!   commit, and snapshots, all in one state directory.
//!
//! - [`redis`] — the shared backend for scale-out replicas: one Redis key per user (standalone
//!   or Cluster), compare-and-set writes, a generation marker that refuses a wiped Redis.
//!
//! # Why an enum over backends, and futures without boxes
//!
//! The GetUserTier path is sub-microsecond, so a read must not box a future. The trait's methods
//! return `impl Future` (no `async_trait`, so no boxed future per call), and the server holds
//! the backend as the enum [`StateBackend`] rather than `dyn UserState`, so every call is
//! statically dispatched. The embedded backend answers reads synchronously and returns an
//! already-completed future (`std::future::ready`): awaiting it costs a branch. A network
//! backend returns a real future from the same methods, and every method is fallible
//! (`Result<_, StateError>`) because a network call can fail.
//!
//! [`UserState::scan`] is blocking (call it from a blocking thread, as the at-risk handler does)
//! and visits the users in parts (the embedded backend's shards, in parallel on the rayon pool);
//! each part's users are borrowed for the time of the visit, so a ranking keeps only what it
//! selects. A network backend would fetch its parts from the blocking thread.

mod backend;
pub mod embedded;
pub mod redis;

pub use backend::StateBackend;

use crate::bundle::Snapshot;
use crate::features::{Event, EventKind, Timestamp, UserAggregate};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

/// One event for one user, validated, with room and category already hashed.
///
/// The embedded backend writes it to its log as is (postcard), and the Kafka sink as a record
/// value, so its serde layout is part of the on-disk format: an event without an order id is
/// written byte for byte as before refunds existed; `order` travels inside the kind's wire form
/// ([`WireKind`]), so logs and topics of earlier versions still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireUserEvent", into = "WireUserEvent")]
pub struct UserEvent {
    pub user_id: String,
    pub ts: Timestamp,
    pub kind: EventKind,
    pub amount: f64,
    pub watch_seconds: u32,
    pub room: u32,
    pub category: u32,
    /// `hash_str(order_id)`, 0 when absent (orders and refunds only).
    pub order: u32,
    /// A [`crate::features::Channel`] code, 0 when unspecified.
    pub channel: u8,
}

/// The kind as written: the eight kinds at their indices (so a record of an earlier version,
/// which knew the first seven, reads unchanged), then the kinds that carry an order id.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum WireKind {
    Order,
    View,
    Comment,
    Like,
    Share,
    Follow,
    Gift,
    Refund,
    OrderWithId(u32),
    RefundWithId(u32),
    /// An event with a channel: its kind's index in [`EventKind::ALL`], its order id hash (0
    /// when none) and its channel code. Events without a channel are written as before
    /// channels existed.
    WithChannel {
        kind: u8,
        order: u32,
        channel: u8,
    },
}

/// [`UserEvent`]'s serde layout: the layout of earlier versions with the kind as [`WireKind`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireUserEvent {
    user_id: String,
    ts: Timestamp,
    kind: WireKind,
    amount: f64,
    watch_seconds: u32,
    room: u32,
    category: u32,
}

impl From<UserEvent> for WireUserEvent {
    fn from(e: UserEvent) -> Self {
        let kind = match (e.kind, e.order) {
            (kind, order) if e.channel != 0 => WireKind::WithChannel {
                kind: kind as u8,
                order,
                channel: e.channel,
            },
            (EventKind::Order, 0) => WireKind::Order,
            (EventKind::Order, id) => WireKind::OrderWithId(id),
            (EventKind::Refund, 0) => WireKind::Refund,
            (EventKind::Refund, id) => WireKind::RefundWithId(id),
            (EventKind::View, _) => WireKind::View,
            (EventKind::Comment, _) => WireKind::Comment,
            (EventKind::Like, _) => WireKind::Like,
            (EventKind::Share, _) => WireKind::Share,
            (EventKind::Follow, _) => WireKind::Follow,
            (EventKind::Gift, _) => WireKind::Gift,
        };
        WireUserEvent {
            user_id: e.user_id,
            ts: e.ts,
            kind,
            amount: e.amount,
            watch_seconds: e.watch_seconds,
            room: e.room,
            category: e.category,
        }
    }
}

/// A logged event whose channel form names no kind.
#[derive(Debug, thiserror::Error)]
#[error("event kind index {0} out of range")]
pub struct BadWireKind(u8);

impl TryFrom<WireUserEvent> for UserEvent {
    type Error = BadWireKind;
    fn try_from(w: WireUserEvent) -> Result<Self, BadWireKind> {
        let mut channel = 0;
        let (kind, order) = match w.kind {
            WireKind::WithChannel {
                kind,
                order,
                channel: c,
            } => {
                channel = c;
                let k = *EventKind::ALL
                    .get(usize::from(kind))
                    .ok_or(BadWireKind(kind))?;
                (k, order)
            }
            WireKind::Order => (EventKind::Order, 0),
            WireKind::OrderWithId(id) => (EventKind::Order, id),
            WireKind::Refund => (EventKind::Refund, 0),
            WireKind::RefundWithId(id) => (EventKind::Refund, id),
            WireKind::View => (EventKind::View, 0),
            WireKind::Comment => (EventKind::Comment, 0),
            WireKind::Like => (EventKind::Like, 0),
            WireKind::Share => (EventKind::Share, 0),
            WireKind::Follow => (EventKind::Follow, 0),
            WireKind::Gift => (EventKind::Gift, 0),
        };
        Ok(UserEvent {
            user_id: w.user_id,
            ts: w.ts,
            kind,
            amount: w.amount,
            watch_seconds: w.watch_seconds,
            room: w.room,
            category: w.category,
            order,
            channel,
        })
    }
}

impl UserEvent {
    /// An erasure of `user_id`, as it travels through the embedded log's queue and apply path
    /// (never as an event: the log writes it as its own record kind, see
    /// `embedded::wal::record`). Marked by a timestamp and an amount no validated event can
    /// carry (`i64::MIN`, NaN).
    pub fn erasure(user_id: &str) -> UserEvent {
        UserEvent {
            user_id: user_id.to_string(),
            ts: i64::MIN,
            kind: EventKind::Order,
            amount: f64::NAN,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        }
    }

    /// True for [`UserEvent::erasure`].
    pub fn is_erasure(&self) -> bool {
        self.ts == i64::MIN && self.amount.is_nan()
    }

    /// The event without its user, as the aggregates take it.
    pub fn event(&self) -> Event {
        Event {
            ts: self.ts,
            kind: self.kind,
            amount: self.amount,
            watch_seconds: self.watch_seconds,
            room: self.room,
            category: self.category,
            order: self.order,
            channel: self.channel,
        }
    }
}

/// Where an event sits in the event topic (scale-out mode): its partition and offset. Events
/// are keyed by user id, so one user's events all sit in one partition, in order; a backend that
/// applies events from the topic keeps, per user, the position of the last event it applied and
/// skips any event at or before it (at-least-once delivery, exactly-once effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    pub partition: i32,
    pub offset: i64,
}

/// The outcome of one acknowledged batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub accepted: u64,
    pub new_users: u64,
}

/// The user state: what the server reads and writes per user. See the module docs for why the
/// methods return `impl Future` and why the server holds a [`StateBackend`].
pub trait UserState: Send + Sync {
    /// One user's aggregate; `None` for a user the state does not hold.
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<UserAggregate>, StateError>> + Send;

    /// Many users at once: one entry per id, in the order of `ids`.
    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<UserAggregate>>, StateError>> + Send;

    /// Makes `events` durable and folds them into the users' aggregates (creating users), in
    /// order; returns once both are done.
    fn apply(
        &self,
        events: Vec<UserEvent>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send;

    /// Applies events read from the event topic, each with its position: per user, an event at
    /// or before the last position applied to that user is skipped (counted in neither field of
    /// [`Applied`]), so a redelivered batch changes nothing. Only a shared backend (Redis)
    /// consumes a topic; the embedded backend refuses with [`StateError::Unsupported`].
    fn apply_logged(
        &self,
        events: Vec<(UserEvent, LogPosition)>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send;

    /// The position of the last topic event applied to user `id` (its watermark), for a caller
    /// waiting to read its own events (`RecordEvents.wait_applied_ms`); `None` for a user with
    /// none, and always `None` from a backend that does not consume a topic (embedded).
    fn applied_position(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StateError>> + Send;

    /// Erases user `id`: removes their aggregate and makes the removal durable, so that no
    /// restart, log replay or topic replay brings it back (embedded: a log record; Redis: the
    /// key deleted and a tombstone left carrying the applied-offset watermark). Redis drops
    /// every later write for the id in its compare-and-set (the aggregator writes without the
    /// server); the embedded state's only writer is RecordEvents, which the server's
    /// suppression list guards ([`crate::serve::privacy`]). True when the user was held.
    fn erase(&self, id: &str) -> impl Future<Output = Result<bool, StateError>> + Send;

    /// Visits every user, part by part (possibly in parallel): `visit` gets one part's users and
    /// returns what it keeps of them; the results come back one per part. Blocking: call it
    /// from a blocking thread.
    fn scan<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        T: Send,
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T + Sync;

    /// Users held.
    fn users(&self) -> usize;

    /// True while the state refuses writes it could accept later (the embedded log's disk is
    /// full); readiness reports it.
    fn refusing_writes(&self) -> bool;

    /// True once the state holds a seed (a bundle's snapshot, or a previous run's state).
    fn is_seeded(&self) -> bool;

    /// Seeds an empty state from a bundle's snapshot (`version` names the bundle); a state
    /// that is already seeded is left as it is.
    fn seed(
        &self,
        version: String,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Makes the state's changes since the last checkpoint durable in compact form (the
    /// embedded backend: a snapshot, which truncates the log); true if there was anything to do.
    fn checkpoint(&self) -> impl Future<Output = Result<bool, StateError>> + Send;

    /// A final checkpoint, then no more writes.
    fn shutdown(&self) -> impl Future<Output = Result<(), StateError>> + Send;
}

/// Why the user state could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A snapshot, or a file `tiering state` rewrites, could not be replaced atomically.
    #[error(transparent)]
    Atomic(#[from] crate::io::atomic::AtomicError),
    /// Another running server holds the state directory's lock.
    #[error("{path}: the state directory is in use by another running server")]
    Locked { path: PathBuf },
    /// A log record that cannot be trusted, with valid (acknowledged) records after it, so it
    /// is not a crash's torn tail (`what`: empty record, checksum mismatch, a length past the
    /// end of the file). The file is left as it is; `tiering state repair` can cut it.
    #[error("{path}: corrupt server state: at byte {offset}: {what}, yet a valid record follows at byte {next_valid} (acknowledged events would be lost); the file is left untouched: inspect it with `tiering state check`, restore a backup, or cut it with `tiering state repair`")]
    DamagedRecord {
        path: PathBuf,
        offset: usize,
        what: &'static str,
        next_valid: usize,
    },
    /// A record cut short (or zero-filled) in a segment that is not the last: not a crash's torn
    /// tail, because later segments follow it.
    #[error(
        "{path}: corrupt server state: at byte {offset}: {what} in a segment that is not the last"
    )]
    TornMidLog {
        path: PathBuf,
        offset: usize,
        what: &'static str,
    },
    #[error("{path}: corrupt server state: at byte {offset}: undecodable record: {source}")]
    UndecodableRecord {
        path: PathBuf,
        offset: usize,
        source: postcard::Error,
    },
    /// The log segments after the snapshot are not consecutive, or the snapshot's first segment
    /// is gone.
    #[error("{path}: corrupt server state: log segment {expected} is missing (state.bin and the log disagree: restore both from one backup)")]
    MissingSegment { path: PathBuf, expected: u64 },
    /// No `state.bin`, yet a log segment of a later generation proves a snapshot was written:
    /// starting empty would silently drop every acknowledged event it held.
    #[error("{path} is missing, but {segment} shows a snapshot was written (a previous run seeded and snapshotted this state): refusing to start from the bundle's snapshot, which would silently lose every event recorded since. Restore state.bin (`tiering state restore`), or move the state directory away to knowingly start over")]
    SnapshotMissing { path: PathBuf, segment: PathBuf },
    /// Log segments with events but no snapshot to apply them to.
    #[error("{path}: corrupt server state: an event log without state.bin: restore the snapshot or remove the state directory")]
    LogWithoutSnapshot { path: PathBuf },
    /// `state.bin` fails a check (`what`: bad header, checksum mismatch).
    #[error("{path}: corrupt server state: {what}")]
    BadSnapshot { path: PathBuf, what: &'static str },
    #[error("{path}: corrupt server state: {payload} payload bytes, header says {header}")]
    SnapshotLength {
        path: PathBuf,
        payload: usize,
        header: u64,
    },
    #[error("{path}: corrupt server state: undecodable: {source}")]
    UndecodableSnapshot {
        path: PathBuf,
        source: postcard::Error,
    },
    /// `state_key_file` is unreadable, malformed or open to others.
    #[error("state_key_file: {0}")]
    StateKey(#[source] embedded::StateKeyError),
    /// An encrypted state file (`--state-key-file` wrote it) opened without a key.
    #[error(
        "{path}: the state is encrypted: start with --state-key-file (the key it was written with)"
    )]
    EncryptedState { path: PathBuf },
    /// A plaintext state file opened with `--state-key-file`: a state is encrypted from its
    /// first seed on, never half.
    #[error("{path}: at byte {offset}: the state is not encrypted, but --state-key-file was given: start without the key, or move the state directory away to start an encrypted one")]
    PlaintextState { path: PathBuf, offset: usize },
    /// An encrypted state file written with another key.
    #[error("{path}: at byte {offset}: encrypted with another key (key id {found}; --state-key-file has key id {given})")]
    WrongStateKey {
        path: PathBuf,
        offset: usize,
        found: String,
        given: String,
    },
    /// An encrypted object whose checksum matches but whose authentication tag does not: its
    /// bytes were rewritten. `tiering state repair` can cut a log there.
    #[error("{path}: corrupt server state: at byte {offset}: encrypted data fails authentication (altered on disk); the file is left untouched: restore a backup, or cut the log with `tiering state repair`")]
    TamperedState { path: PathBuf, offset: usize },
    /// Events arrived before any model seeded the state.
    #[error(
        "event log unavailable: no model is loaded yet (the server is starting, or MODELS/CURRENT names no valid bundle)"
    )]
    NotSeeded,
    /// A log write or fsync failed: the segment's state is unknown, so nothing more is accepted
    /// (and no snapshot taken) until a restart replays the log.
    #[error(
        "event log unavailable: {}: write failed: {source}; restart the server to replay the log",
        path.display()
    )]
    Poisoned {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// `tiering state repair` kept finding damage (it fixes one segment per pass).
    #[error("{path}: repair did not converge; inspect the state directory by hand")]
    RepairLoop { path: PathBuf },
    /// A backup or restore target that already holds files.
    #[error("{path}: already holds state files (restore: pass --force to move them aside)")]
    TargetNotEmpty { path: PathBuf },
    /// Snapshots kept replacing `state.bin` while a backup read the directory.
    #[error("{path}: the state kept changing under the backup (snapshots in a row); try again")]
    BackupRaced { path: PathBuf },
    /// A log write failed for lack of space (ENOSPC, EDQUOT) and was rolled back: writes are
    /// refused until space is free again; reads go on; nothing acknowledged is lost.
    #[error("event log full: {}: {source}; writes are refused until space is freed (they resume by themselves), reads go on", path.display())]
    LogFull {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// A log write or fsync failed for another reason and was rolled back: writes are refused
    /// until one succeeds again.
    #[error("event log unavailable: {}: write failed: {source}; writes are refused until the log can be written again", path.display())]
    LogWriteFailed {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// The thread that owns the log has stopped.
    #[error("event log unavailable: the event log thread has stopped")]
    Stopped,
    #[error("internal error: encoding events: {0}")]
    EncodeRecord(#[source] postcard::Error),
    #[error("internal error: log record too large")]
    RecordTooLarge,
    #[error("internal error: encoding the state snapshot: {0}")]
    EncodeSnapshot(#[source] postcard::Error),
    #[error("internal error: starting the {thread} thread: {source}")]
    Spawn {
        thread: &'static str,
        source: std::io::Error,
    },
    /// An operation this backend does not offer (`what` says which, and which backend does).
    #[error("{what}")]
    Unsupported { what: &'static str },
    #[error("internal error: the snapshot thread panicked")]
    SnapshotPanicked,
    /// Redis could not be reached or did not answer (connection refused or dropped, a failover,
    /// the cluster reconfiguring, a loading replica): nothing is known about the call's effect
    /// beyond "not acknowledged"; retrying is safe for reads. Answered UNAVAILABLE.
    #[error("state backend unavailable: Redis {op}: {source}")]
    RedisUnavailable {
        op: &'static str,
        source: ::redis::RedisError,
    },
    /// Redis refused this replica's credentials at connection (a wrong password, an unknown or
    /// disabled ACL user, or no password where one is required). A start-up error.
    #[error("Redis at {target} refused the credentials of user {user:?}: {source} (set redis_user, and redis_password_file or TIERING_REDIS_PASSWORD)")]
    RedisAuth {
        target: String,
        user: String,
        source: ::redis::RedisError,
    },
    /// A Redis access file (the CA certificates, the password file) cannot be used.
    #[error("{path}: {message}")]
    RedisAccess { path: PathBuf, message: String },
    /// A Redis call took longer than `backend_timeout_ms`. Answered UNAVAILABLE.
    #[error("state backend unavailable: Redis {op}: no answer within {ms} ms")]
    RedisTimeout { op: &'static str, ms: u64 },
    /// Redis answered with an error that is not about availability (a bug, a misconfigured
    /// server: out of memory with `maxmemory`, a key of the wrong type).
    #[error("Redis {op}: {source}")]
    RedisReply {
        op: &'static str,
        source: ::redis::RedisError,
    },
    /// Redis answered something this server never asks for (`what` says what).
    #[error("Redis {op}: unexpected reply: {what}")]
    RedisProtocol { op: &'static str, what: String },
    /// A stored user value has a format version this binary does not read (a newer binary
    /// wrote it): it is never guessed at.
    #[error("a stored user value has format version {found}, this binary reads version {known} only: a newer tiering binary wrote it; run that version (see README, \"Redis state\": rolling back)")]
    RedisFormat { found: u8, known: u8 },
    /// A stored user value of a known format that does not decode.
    #[error("corrupt user value in Redis: {what}")]
    RedisValue { what: String },
    /// Compare-and-set writes kept losing to other replicas' writes to the same users.
    #[error("state backend busy: {users} users' writes lost the compare-and-set {attempts} times in a row to concurrent writers; events for other users of the request may have been applied")]
    RedisContention { attempts: u32, users: usize },
    #[error("internal error: encoding a user value: {0}")]
    EncodeValue(#[source] postcard::Error),
    /// Redis holds less than the models directory's record says it did: it was wiped (no
    /// marker), replaced (another state's marker), or restored from an older backup (an older
    /// generation). Starting would silently lose acknowledged events.
    #[error("{}: {what}: the Redis state was wiped, replaced, or restored from an older backup, and starting on it would silently lose acknowledged events. Restore Redis from its newest AOF/RDB backup and start again, or start once with --reseed-state (TIERING__RESEED_STATE=true) to knowingly start over: users missing from Redis are then seeded from the bundle's snapshot, users present are kept", record.display())]
    RedisStateLost { record: PathBuf, what: String },
    /// The Redis state marker (`tiering:{meta}`) or the models directory's record of it
    /// (`redis-state.json`) does not parse.
    #[error("{what}: unreadable Redis state marker: {message}")]
    RedisMarker { what: String, message: String },
}

impl StateError {
    /// True when the error means "the backend cannot be reached now" (answered UNAVAILABLE).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StateError::RedisUnavailable { .. } | StateError::RedisTimeout { .. }
        )
    }
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.into();
        move |source| StateError::Io { path, source }
    }
}
