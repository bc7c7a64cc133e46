//! The Redis state backend: the shared system of record for scale-out replicas
//! (`tiering serve --state redis://HOST:PORT[/DB]` or `redis+cluster://H:P,H:P,...`).
//!
//! - `access` — TLS trust and ACL credentials ([`RedisAccess`]; the password from a file or
//!   [`PASSWORD_ENV`], never a flag or the URL).
//! - [`codec`] — the key layout (`u:{<user_id>}`, one key per user, no TTL) and the versioned
//!   value format.
//! - `conn` — the standalone / Cluster connection enum, slot-split batches, scans per master.
//! - `write` — events folded per user and written by a Lua compare-and-set, retried on loss.
//! - [`marker`] — the generation marker that refuses a wiped or rolled-back Redis.
//!
//! Reads are one `GET` (`get`) or one `MGET` split by slot (`get_many`). Every call is bounded by
//! `backend_timeout_ms`; a call that cannot reach Redis fails with
//! [`StateError::RedisUnavailable`] / [`StateError::RedisTimeout`] (UNAVAILABLE to clients). A
//! background probe PINGs Redis every second: [`RedisState::is_reachable`] feeds readiness, and
//! [`UserState::refusing_writes`] is true while Redis is unreachable.
//!
//! [`UserState::users`] is a cached count: the number of user keys counted by a keys-only SCAN
//! at start and at each checkpoint (`snapshot_interval_secs`), plus the users this replica
//! created since; users created by other replicas show at the next count, and a SCAN may count a
//! key twice while Redis resizes its tables, so it is an estimate for metrics and
//! `GetModelInfo`, never used for correctness.

mod access;
pub mod codec;
mod conn;
pub mod marker;
mod write;

use super::{Applied, LogPosition, StateError, UserEvent, UserState};
use crate::bundle::Snapshot;
use crate::features::UserAggregate;
use crate::serve::config::RedisTarget;
use crate::serve::metrics::Metrics;
use ::redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
pub use access::{RedisAccess, PASSWORD_ENV};
use conn::{is_auth_error, Conn, CHUNK};
use marker::{Marker, META_KEY};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use codec::FORMAT_VERSION;

/// The compare-and-set: writes `ARGV[2]` to `KEYS[1]` if the stored value's first 9 bytes
/// (format version + write token) are `ARGV[1]` (empty: if the key is absent). Answers 1 when
/// written, 0 when the key is absent although a value was expected, -1 when the user is erased
/// (`KEYS[2]`, the tombstone, exists: nothing is written), else the value now stored (so the
/// caller folds again without another read).
pub(crate) const CAS_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 9) ~= ARGV[1] then return cur end
elseif ARGV[1] ~= '' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

/// Erasure, atomic: the tombstone `KEYS[2]` takes the watermark bytes (10..22) of the user's
/// value `KEYS[1]` (zeros when absent; a tombstone already there is kept), then the value is
/// deleted. Answers 1 when a value was held, else 0.
const ERASE_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
local mark = string.rep('\0', 13)
if cur and string.len(cur) >= 22 then mark = string.sub(cur, 10, 22) end
redis.call('SET', KEYS[2], mark, 'NX')
if cur then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// Seeding one user: `SET KEYS[1] ARGV[1] NX` unless the user is erased (`KEYS[2]` exists).
const SEED_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
return 0
";

/// The set of users whose aggregates changed outside a serving replica (applied by the Kafka
/// aggregator): the Redis ranking's lease holder drains it and re-ranks them. Shares the
/// ranking's hash tag.
pub const RANKING_DIRTY_KEY: &str = "{rank}:dirty";

/// How often the health probe PINGs Redis.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What [`RedisState::open`] needs.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: RedisTarget,
    /// The shared models directory, where `redis-state.json` records the marker.
    pub models: PathBuf,
    /// Start even though the marker is missing, replaced or older than the record.
    pub reseed: bool,
    /// Bound of each call (connection attempts included).
    pub timeout: Duration,
    /// TLS trust and ACL credentials.
    pub access: RedisAccess,
}

/// What the background tasks share with the state.
struct Shared {
    reachable: AtomicBool,
    users: AtomicUsize,
    seeded: AtomicBool,
    /// Writes since the last checkpoint.
    dirty: AtomicBool,
    closed: AtomicBool,
    marker: Mutex<Option<Marker>>,
}

/// The Redis state backend (see the module docs).
pub struct RedisState {
    conn: Conn,
    script: Script,
    timeout: Duration,
    target: RedisTarget,
    models: PathBuf,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// True for errors that mean "Redis cannot be reached now" (as opposed to a bad reply).
fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

impl RedisState {
    /// Connects, reads the marker and the models directory's record, and refuses a Redis that
    /// holds less than the record says (see [`marker`]) unless `opts.reseed`; then starts the
    /// health probe and a first user count. Must run inside the Tokio runtime.
    pub async fn open(opts: RedisOptions, metrics: Arc<Metrics>) -> Result<RedisState, StateError> {
        let ms = opts.timeout.as_millis() as u64;
        let creds = opts.access.load(opts.target.tls())?;
        let refused = |source: RedisError| StateError::RedisAuth {
            target: opts.target.to_string(),
            user: creds.user.clone().unwrap_or_else(|| "default".into()),
            source,
        };
        let connect = async {
            let conn = Conn::connect(&opts.target, opts.timeout, &creds).await?;
            // A Redis that requires a password answers the first command NOAUTH when none was
            // given: found here, at start, rather than on the first request.
            conn.ping().await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = match tokio::time::timeout(opts.timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) if is_auth_error(&source) => return Err(refused(source)),
            Ok(Err(source)) => {
                return Err(StateError::RedisUnavailable {
                    op: "connect",
                    source,
                })
            }
            Err(_) => return Err(StateError::RedisTimeout { op: "connect", ms }),
        };
        let state = RedisState {
            conn,
            script: Script::new(CAS_SCRIPT),
            timeout: opts.timeout,
            target: opts.target,
            models: opts.models,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            shared: Arc::new(Shared {
                reachable: AtomicBool::new(true),
                users: AtomicUsize::new(0),
                seeded: AtomicBool::new(false),
                dirty: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                marker: Mutex::new(None),
            }),
            probe: Mutex::new(None),
        };
        let found = state.read_marker().await?;
        let models = state.models.clone();
        let record = tokio::task::spawn_blocking(move || marker::read_record(&models))
            .await
            .map_err(|_| StateError::Stopped)??;
        let seeded = match marker::verdict(found.as_ref(), record.as_ref()) {
            Ok(seeded) => seeded,
            Err(what) if opts.reseed => {
                tracing::warn!(target = %state.target, what, "--reseed-state: starting anyway; users missing from Redis are seeded from the bundle's snapshot");
                match &found {
                    // An older or other state, kept as it is: the record follows it.
                    Some(m) => {
                        state.record(m.clone()).await?;
                        true
                    }
                    None => false,
                }
            }
            Err(what) => {
                return Err(StateError::RedisStateLost {
                    record: marker::record_path(&state.models),
                    what,
                })
            }
        };
        if let (Some(m), None) = (&found, &record) {
            state.record(m.clone()).await?;
        }
        state.shared.seeded.store(seeded, Ordering::Release);
        *state.marker_lock() = found;
        state.metrics.backend_up(true);
        state.spawn_count();
        let probe = tokio::spawn(probe(
            state.conn.clone(),
            state.shared.clone(),
            state.metrics.clone(),
            state.timeout,
        ));
        *state.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(probe);
        Ok(state)
    }

    /// The deployment this state lives in (for logs).
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// True while the health probe reaches Redis (and no call found it unreachable since).
    pub fn is_reachable(&self) -> bool {
        self.shared.reachable.load(Ordering::Acquire)
    }

    /// Runs one command on the state's Redis (a Lua script through `EVAL`, a `SADD`...) with the
    /// backend's timeout, metrics and error mapping. For the Redis at-risk ranking
    /// ([`crate::serve::ranking::redis`]), whose keys share one hash tag (one slot).
    pub async fn run<T: ::redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &::redis::Cmd,
    ) -> Result<T, StateError> {
        self.check_open()?;
        self.call(op, self.conn.query(cmd)).await
    }

    /// Runs a pipeline whose commands all touch keys of one hash tag (so one node), as
    /// [`RedisState::run`] does.
    pub async fn run_pipeline<T: ::redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &::redis::Pipeline,
    ) -> Result<T, StateError> {
        self.check_open()?;
        let conn = self.conn.clone();
        self.call(op, async move {
            match conn {
                Conn::Standalone(mut c) => pipe.query_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => pipe.query_async::<T>(&mut c).await,
            }
        })
        .await
    }

    /// Marks users for re-ranking by the ranking's lease holder (a `SADD` to
    /// [`RANKING_DIRTY_KEY`]): how events applied outside a serving replica (the Kafka
    /// aggregator, through [`UserState::apply_logged`]) reach the Redis ranking. A failure is
    /// logged, not returned: the events are applied, and the next full rebuild repairs the
    /// ranking.
    pub async fn mark_ranking_dirty(&self, users: &[String]) {
        for chunk in users.chunks(CHUNK) {
            let mut cmd = ::redis::cmd("SADD");
            cmd.arg(RANKING_DIRTY_KEY);
            for u in chunk {
                cmd.arg(u);
            }
            if let Err(e) = self.run::<i64>("rank_dirty", &cmd).await {
                tracing::warn!(error = %e, users = chunk.len(), "marking users for re-ranking failed; the next ranking rebuild repairs it");
                return;
            }
        }
    }

    /// [`UserState::apply_logged`]: the write, then the users marked for re-ranking.
    async fn apply_logged_and_mark(
        &self,
        events: Vec<(UserEvent, LogPosition)>,
    ) -> Result<Applied, StateError> {
        let mut users: Vec<String> = events.iter().map(|(e, _)| e.user_id.clone()).collect();
        users.sort_unstable();
        users.dedup();
        let applied = self
            .write_events(events.into_iter().map(|(e, p)| (e, Some(p))).collect())
            .await?;
        self.mark_ranking_dirty(&users).await;
        Ok(applied)
    }

    fn marker_lock(&self) -> std::sync::MutexGuard<'_, Option<Marker>> {
        self.shared
            .marker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one backend call within the timeout, with its latency and failures counted.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let r = tokio::time::timeout(self.timeout, fut).await;
        self.metrics.backend_call(op, started.elapsed());
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(op, e)),
            Err(_) => {
                self.metrics.backend_error("timeout");
                self.unreachable();
                Err(StateError::RedisTimeout {
                    op,
                    ms: self.timeout.as_millis() as u64,
                })
            }
        }
    }

    /// The state error for a failed call, counted.
    fn failed(&self, op: &'static str, source: RedisError) -> StateError {
        if is_unavailable(&source) {
            self.metrics.backend_error("unavailable");
            self.unreachable();
            StateError::RedisUnavailable { op, source }
        } else {
            self.metrics.backend_error("reply");
            StateError::RedisReply { op, source }
        }
    }

    fn unreachable(&self) {
        if self.shared.reachable.swap(false, Ordering::AcqRel) {
            self.metrics.backend_up(false);
            tracing::warn!(target = %self.target, "Redis state unreachable: NOT_SERVING until the health probe reaches it again");
        }
    }

    fn check_open(&self) -> Result<(), StateError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StateError::Stopped);
        }
        Ok(())
    }

    /// Counts a write: the next checkpoint bumps the generation.
    fn wrote(&self, new_users: u64) {
        self.shared.dirty.store(true, Ordering::Release);
        self.shared
            .users
            .fetch_add(new_users as usize, Ordering::Relaxed);
    }

    fn decode_agg(value: Option<Vec<u8>>) -> Result<Option<UserAggregate>, StateError> {
        value.map(|v| codec::decode(&v).map(|s| s.agg)).transpose()
    }

    async fn read_marker(&self) -> Result<Option<Marker>, StateError> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(META_KEY);
        let fields: Vec<(String, String)> = self.call("marker", self.conn.query(&cmd)).await?;
        Marker::from_fields(&fields)
    }

    /// Writes `m` to the models directory's record (blocking file I/O off the runtime).
    async fn record(&self, m: Marker) -> Result<(), StateError> {
        let models = self.models.clone();
        tokio::task::spawn_blocking(move || marker::write_record(&models, &m))
            .await
            .map_err(|_| StateError::Stopped)?
    }

    /// Recounts the users in the background (see the module docs).
    fn spawn_count(&self) {
        let (conn, shared) = (self.conn.clone(), self.shared.clone());
        let timeout = self.timeout;
        tokio::spawn(async move {
            match count_users(&conn, timeout).await {
                Ok(n) => shared.users.store(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, "counting the users in Redis failed; the count stays as it was")
                }
            }
        });
    }

    async fn get_one(&self, id: &str) -> Result<Option<UserAggregate>, StateError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(codec::key(id));
        let v: Option<Vec<u8>> = self.call("get", self.conn.query(&cmd)).await?;
        Self::decode_agg(v)
    }

    async fn watermark(&self, id: &str) -> Result<Option<LogPosition>, StateError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(codec::key(id));
        let v: Option<Vec<u8>> = self.call("get", self.conn.query(&cmd)).await?;
        Ok(v.map(|v| codec::decode(&v))
            .transpose()?
            .and_then(|s| s.watermark))
    }

    async fn get_several(&self, ids: &[String]) -> Result<Vec<Option<UserAggregate>>, StateError> {
        let keys: Vec<String> = ids.iter().map(|id| codec::key(id)).collect();
        let values = self.call("get_many", self.conn.mget(&keys)).await?;
        values.into_iter().map(Self::decode_agg).collect()
    }

    /// Seeds users absent from Redis (SET NX, pipelined in chunks: never overwrites a user),
    /// then the marker (each field only if absent: two replicas seeding at once agree on one
    /// marker), then the models directory's record.
    async fn seed_users(&self, version: String, snapshot: Snapshot) -> Result<(), StateError> {
        if self.shared.seeded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut created = 0u64;
        let users = snapshot.user_ids.iter().zip(&snapshot.aggregates);
        let all: Vec<_> = users.collect();
        for chunk in all.chunks(CHUNK) {
            let mut cmds = Vec::with_capacity(chunk.len());
            for (id, agg) in chunk {
                let bytes = codec::encode(&codec::Stored {
                    cas: 1,
                    watermark: None,
                    agg: **agg,
                })?;
                let key = codec::key(id);
                let mut cmd = ::redis::cmd("EVAL");
                cmd.arg(SEED_SCRIPT)
                    .arg(2)
                    .arg(&key)
                    .arg(codec::tombstone_key(id))
                    .arg(bytes);
                cmds.push((key, cmd));
            }
            for r in self.call("seed", self.conn.pipelined(cmds)).await? {
                match r {
                    Ok(::redis::Value::Int(1)) => created += 1,
                    Ok(_) => {}
                    Err(e) => return Err(self.failed("seed", e)),
                }
            }
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let state_id = format!("{:016x}", rand::random::<u64>());
        let mut pipe = ::redis::pipe();
        for (field, value) in [
            ("state_id", state_id.as_str()),
            ("generation", "1"),
            ("seeded_from", version.as_str()),
            ("seeded_at", now.as_str()),
            ("value_format", &FORMAT_VERSION.to_string()),
        ] {
            pipe.cmd("HSETNX")
                .arg(META_KEY)
                .arg(field)
                .arg(value)
                .ignore();
        }
        let conn = self.conn.clone();
        self.call("seed", async move {
            match conn {
                Conn::Standalone(mut c) => pipe.query_async::<()>(&mut c).await,
                Conn::Cluster(mut c) => pipe.query_async::<()>(&mut c).await,
            }
        })
        .await?;
        let m = self
            .read_marker()
            .await?
            .ok_or_else(|| StateError::RedisMarker {
                what: META_KEY.into(),
                message: "missing right after it was written".into(),
            })?;
        self.record(m.clone()).await?;
        *self.marker_lock() = Some(m);
        self.shared
            .users
            .fetch_add(created as usize, Ordering::Relaxed);
        self.shared.seeded.store(true, Ordering::Release);
        tracing::info!(target = %self.target, created, kept = snapshot.user_ids.len() as u64 - created, "seeded the Redis state (users already present were kept)");
        Ok(())
    }

    /// [`UserState::erase`]: the tombstone and the deletion in one script, then the user marked
    /// for re-ranking (the lease holder drops it from the ranking).
    async fn erase_user(&self, id: &str) -> Result<bool, StateError> {
        self.check_open()?;
        let key = codec::key(id);
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(ERASE_SCRIPT)
            .arg(2)
            .arg(&key)
            .arg(codec::tombstone_key(id));
        let held: i64 = self.call("erase", self.conn.query(&cmd)).await?;
        if held == 1 {
            self.shared.users.fetch_sub(1, Ordering::Relaxed);
            self.shared.dirty.store(true, Ordering::Release);
        }
        self.mark_ranking_dirty(&[id.to_string()]).await;
        Ok(held == 1)
    }

    /// The watermark the tombstone of an erased user carries; `None` when the user is not
    /// erased (outer) or had no watermark (inner).
    pub async fn tombstone(&self, id: &str) -> Result<Option<Option<LogPosition>>, StateError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(codec::tombstone_key(id));
        let v: Option<Vec<u8>> = self.run("tombstone", &cmd).await?;
        Ok(v.map(|b| codec::tombstone_watermark(&b)))
    }

    /// Bumps the marker's generation (if this replica wrote since the last checkpoint) and
    /// records it in the models directory; recounts the users.
    async fn checkpoint_marker(&self) -> Result<bool, StateError> {
        self.spawn_count();
        if !self.shared.seeded.load(Ordering::Acquire)
            || !self.shared.dirty.swap(false, Ordering::AcqRel)
        {
            return Ok(false);
        }
        let mut cmd = ::redis::cmd("HINCRBY");
        cmd.arg(META_KEY).arg("generation").arg(1);
        let bumped = self.call("checkpoint", self.conn.query::<i64>(&cmd)).await;
        if let Err(e) = bumped {
            self.shared.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        if let Some(m) = self.read_marker().await? {
            self.record(m.clone()).await?;
            *self.marker_lock() = Some(m);
        }
        Ok(true)
    }

    /// Visits every user, a SCAN chunk at a time, master by master (blocking: runs the calls on
    /// the runtime from the caller's thread). Keys a SCAN returns twice (it may while Redis
    /// resizes a table) are visited once.
    fn scan_blocking<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T,
    {
        let rt = &self.runtime;
        let masters = rt.block_on(self.call("scan", self.conn.masters()))?;
        let mut out = Vec::new();
        for node in &masters {
            let mut seen: HashSet<String> = HashSet::new();
            let mut cursor = 0;
            loop {
                let (next, keys) =
                    rt.block_on(self.call("scan", self.conn.scan_step(node, cursor, "u:{*")))?;
                let keys: Vec<String> = keys
                    .into_iter()
                    .filter(|k| seen.insert(k.clone()))
                    .collect();
                if !keys.is_empty() {
                    let values = rt.block_on(self.call("scan", self.conn.mget(&keys)))?;
                    let mut chunk = Vec::with_capacity(keys.len());
                    for (k, v) in keys.iter().zip(values) {
                        // A key deleted since the SCAN step is simply not there.
                        if let (Some(id), Some(v)) = (codec::user_of(k), v) {
                            chunk.push((id, codec::decode(&v)?.agg));
                        }
                    }
                    out.push(visit(&mut chunk.iter().map(|(id, a)| (*id, a))));
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(out)
    }

    async fn close(&self) -> Result<(), StateError> {
        let last = self.checkpoint_marker().await;
        self.shared.closed.store(true, Ordering::Release);
        if let Some(p) = self
            .probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            p.abort();
        }
        last.map(drop)
    }
}

impl Drop for RedisState {
    fn drop(&mut self) {
        if let Some(p) = self
            .probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            p.abort();
        }
    }
}

/// PINGs every [`PROBE_EVERY`] and keeps `shared.reachable` (and the metric) current.
async fn probe(conn: Conn, shared: Arc<Shared>, metrics: Arc<Metrics>, timeout: Duration) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let up = matches!(tokio::time::timeout(timeout, conn.ping()).await, Ok(Ok(())));
        metrics.backend_up(up);
        let was = shared.reachable.swap(up, Ordering::AcqRel);
        if up && !was {
            tracing::info!("Redis state reachable again");
        } else if !up && was {
            tracing::warn!("Redis state unreachable: NOT_SERVING until it answers again");
        }
    }
}

/// User keys on every master (a keys-only SCAN).
async fn count_users(conn: &Conn, timeout: Duration) -> RedisResult<usize> {
    async fn step<T>(
        timeout: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::Io, "count timed out"))))
    }
    let mut n = 0;
    for node in step(timeout, conn.masters()).await? {
        let mut cursor = 0;
        loop {
            let (next, keys) = step(timeout, conn.scan_step(&node, cursor, "u:{*")).await?;
            n += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(n)
}

impl UserState for RedisState {
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<UserAggregate>, StateError>> + Send {
        self.get_one(id)
    }

    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<UserAggregate>>, StateError>> + Send {
        self.get_several(ids)
    }

    fn apply(
        &self,
        events: Vec<UserEvent>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        self.write_events(events.into_iter().map(|e| (e, None)).collect())
    }

    /// Per user, events at or before the stored watermark of their partition are skipped, and
    /// the new watermark is written in the same compare-and-set as the aggregate. The users are
    /// then marked for re-ranking ([`RedisState::mark_ranking_dirty`]).
    fn apply_logged(
        &self,
        events: Vec<(UserEvent, LogPosition)>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        self.apply_logged_and_mark(events)
    }

    /// The watermark stored with the user's aggregate (one GET).
    fn applied_position(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StateError>> + Send {
        self.watermark(id)
    }

    fn erase(&self, id: &str) -> impl Future<Output = Result<bool, StateError>> + Send {
        self.erase_user(id)
    }

    /// One part per SCAN chunk (about [`CHUNK`] users), visited on the calling thread.
    fn scan<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        T: Send,
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T + Sync,
    {
        self.scan_blocking(visit)
    }

    fn users(&self) -> usize {
        self.shared.users.load(Ordering::Relaxed)
    }

    /// True while Redis is unreachable.
    fn refusing_writes(&self) -> bool {
        !self.is_reachable()
    }

    fn is_seeded(&self) -> bool {
        self.shared.seeded.load(Ordering::Acquire)
    }

    fn seed(
        &self,
        version: String,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        self.seed_users(version, snapshot)
    }

    fn checkpoint(&self) -> impl Future<Output = Result<bool, StateError>> + Send {
        self.checkpoint_marker()
    }

    fn shutdown(&self) -> impl Future<Output = Result<(), StateError>> + Send {
        self.close()
    }
}
