//! Durability of recorded events: a write-ahead log with group commit, in segments of the state
//! directory ([`super::dir`]), and snapshots ([`super::snapshot`]) that truncate it.
//!
//! - [`record`] — the record format, and reading a segment back.
//! - [`replay`] — recovery at start: snapshot, then the log after it.
//! - `writer` — the log thread, the only writer of the user table.
//! - this module — [`EventLog`], the handle the rest of the server holds.
//!
//! One thread owns the log and is the only writer of the user table: it takes every append
//! waiting in its queue, writes them with one `write`, calls `fdatasync` once for the whole
//! group, applies the events to the table, and only then acknowledges each request. An
//! acknowledged event is therefore on disk, and readers never see an event that a crash could
//! take back.
//!
//! A snapshot is taken by the same thread, so it is an exact cut: it starts a new segment, then
//! serialises the table (readers keep reading), and a helper thread writes `state.bin.tmp`,
//! fsyncs, renames it over `state.bin`, and deletes the segments the snapshot covers. A crash at
//! any point leaves either the old snapshot with all its segments or the new one.
//!
//! Cost: appends wait while the thread serialises a snapshot (about a second per million users
//! in a debug build, every `snapshot_interval_secs` or `snapshot_wal_bytes`); reads never wait.
//! A failed write or fsync (a full disk) is rolled back: the segment is cut back to its last
//! synced length and synced, the failed group is refused (RESOURCE_EXHAUSTED for ENOSPC), and
//! appends are refused until a write or a small space probe (every 500 ms) succeeds; then writes
//! resume by themselves. Only if the roll-back itself fails is the log poisoned: nothing more is
//! acknowledged until a restart replays it.

pub mod record;
pub mod replay;
mod writer;

use super::cipher::{seal_record, StateKey};
use super::store::UserStore;
use crate::bundle::Snapshot;
use crate::serve::metrics::Metrics;
use crate::serve::state::{Applied, StateError, UserEvent};
use record::encode_record;
use replay::{recover, Recovery};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::oneshot;
use writer::{Command, Reply, Writer};

/// Tuning of the log, from the server configuration.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub fsync: bool,
    /// Snapshot as soon as the current segment grows past this.
    pub snapshot_bytes: u64,
}

/// Handle on the log thread. Dropping every handle without [`EventLog::shutdown`] stops the
/// thread without a snapshot, as a crash would (the log still holds every acknowledged event).
pub struct EventLog {
    tx: mpsc::Sender<Command>,
    seeded: Arc<AtomicBool>,
    /// See `Writer::refusing`.
    refusing: Arc<AtomicBool>,
    /// See `Writer::durable`.
    #[cfg_attr(not(test), allow(dead_code))]
    durable: Arc<Mutex<(u64, u64)>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Seals each record before it is queued (`None`: plaintext log).
    key: Option<Arc<StateKey>>,
}

impl EventLog {
    /// Locks the state directory, loads the snapshot, replays the log into `store`, and starts
    /// the log thread.
    pub fn open(
        dir: &Path,
        store: Arc<UserStore>,
        opts: LogOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(EventLog, Recovery), StateError> {
        EventLog::open_with_key(dir, store, opts, None, metrics)
    }

    /// [`EventLog::open`] for a state encrypted with `key` (see `cipher`).
    pub fn open_with_key(
        dir: &Path,
        store: Arc<UserStore>,
        opts: LogOptions,
        key: Option<Arc<StateKey>>,
        metrics: Arc<Metrics>,
    ) -> Result<(EventLog, Recovery), StateError> {
        let (recovery, tail) = recover(dir, &store, key.as_deref())?;
        let seeded = Arc::new(AtomicBool::new(recovery.seeded_from.is_some()));
        let durable = Arc::new(Mutex::new((tail.gen, tail.seg_bytes)));
        let refusing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            dir: dir.to_path_buf(),
            store,
            file: tail.file,
            gen: tail.gen,
            seg_bytes: tail.seg_bytes,
            dirty: recovery.replayed_records > 0,
            poisoned: None,
            refusing: refusing.clone(),
            seeded_from: recovery.seeded_from.clone(),
            seeded: seeded.clone(),
            opts,
            metrics,
            durable: durable.clone(),
            pending: None,
            key: key.clone(),
            _lock: tail.lock,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tiering-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StateError::Spawn {
                thread: "event log",
                source,
            })?;
        Ok((
            EventLog {
                tx,
                seeded,
                refusing,
                durable,
                thread: Mutex::new(Some(thread)),
                key,
            },
            recovery,
        ))
    }

    /// The newest segment and its length as of the last `fdatasync`: what a power cut right now
    /// would leave of the log (the power-cut test cuts the files there).
    #[cfg(test)]
    fn durable_mark(&self) -> (u64, u64) {
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while a failed log write (disk full) makes the log refuse appends.
    pub(crate) fn refusing_writes(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// True once the state holds a seed (a bundle's snapshot, or a previous run's state).
    pub(crate) fn is_seeded(&self) -> bool {
        self.seeded.load(Ordering::Acquire)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StateError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| StateError::Stopped)?;
        rx.await.map_err(|_| StateError::Stopped)?
    }

    /// Makes `events` durable, applies them to the user table, and returns once both are done.
    pub async fn append(&self, events: Vec<UserEvent>) -> Result<Applied, StateError> {
        if events.is_empty() {
            return Ok(Applied {
                accepted: 0,
                new_users: 0,
            });
        }
        let record = self.frame(encode_record(&events)?)?;
        self.call(|reply| Command::Append {
            record,
            events,
            reply,
        })
        .await
    }

    /// A record as it goes into the log: sealed into a frame when the state is encrypted
    /// (done here, on the caller's task, so encryption runs in parallel off the log thread).
    pub(crate) fn frame(&self, record: Vec<u8>) -> Result<Vec<u8>, StateError> {
        match &self.key {
            Some(k) => seal_record(k, &record),
            None => Ok(record),
        }
    }

    /// Seeds an empty state from a bundle's snapshot and writes the first state snapshot.
    pub async fn seed(&self, version: String, snapshot: Snapshot) -> Result<(), StateError> {
        self.call(|reply| Command::Seed {
            version,
            snapshot: Box::new(snapshot),
            reply,
        })
        .await
    }

    /// Snapshots the state if events arrived since the last snapshot; true if it did.
    pub(crate) async fn checkpoint(&self) -> Result<bool, StateError> {
        self.call(|reply| Command::Checkpoint { reply }).await
    }

    /// Final snapshot (waited for), then the thread stops.
    pub async fn shutdown(&self) -> Result<(), StateError> {
        let r = self.call(|reply| Command::Shutdown { reply }).await;
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::record::tests::ev;
    use super::*;
    use crate::features::UserAggregate;
    use crate::serve::state::embedded::dir::segments;
    use std::fs;

    #[tokio::test]
    async fn acknowledged_events_survive_a_crash_and_snapshots_truncate_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            fsync: true,
            snapshot_bytes: u64::MAX,
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        {
            let store = Arc::new(UserStore::new(4));
            let (log, rec) =
                EventLog::open(dir.path(), store.clone(), opts, metrics.clone()).unwrap();
            assert_eq!(rec.seeded_from, None);
            let seed = Snapshot {
                as_of: 0,
                user_ids: vec!["s".into()],
                aggregates: vec![UserAggregate::default()],
            };
            log.seed("v1".into(), seed).await.unwrap();
            let a = log.append(vec![ev("a", 10), ev("s", 11)]).await.unwrap();
            assert_eq!(
                a,
                Applied {
                    accepted: 2,
                    new_users: 1
                }
            );
            assert!(log.checkpoint().await.unwrap());
            log.append(vec![ev("a", 12)]).await.unwrap();
            // Crash: drop the handle without a shutdown snapshot.
            let thread = log.thread.lock().unwrap().take().unwrap();
            drop(log);
            thread.join().unwrap();
        }
        let store = Arc::new(UserStore::new(4));
        let (log, rec) = EventLog::open(dir.path(), store.clone(), opts, metrics.clone()).unwrap();
        assert_eq!(rec.seeded_from.as_deref(), Some("v1"));
        assert_eq!(rec.replayed_events, 1);
        assert_eq!(store.get("a").map(|a| a.orders), Some(2));
        assert_eq!(store.get("s").map(|a| a.orders), Some(1));
        log.shutdown().await.unwrap();
        // After a clean shutdown only the newest (empty) segment is left.
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(fs::metadata(&segs[0].1).unwrap().len(), 0);
    }

    /// Power cut: concurrent writers run; at the cut, the set of events acknowledged so far and
    /// the log's durable mark (the last `fdatasync`) are taken; the writers go on for a while
    /// (their writes reach the page cache, not the disk); then the thread stops as a crash
    /// would and every file is cut back to what the disk held: later segments deleted, the
    /// newest cut at the mark (in odd rounds plus a part of the unsynced bytes, as a partial
    /// write-back would leave). Every event acknowledged before the cut must come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_events_survive_a_power_cut_that_drops_every_unsynced_write() {
        power_cut_rounds(None).await;
    }

    /// The same power cuts with the log encrypted: a frame cut anywhere is a torn tail, and
    /// every acknowledged frame opens again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_encrypted_events_survive_a_power_cut_that_drops_every_unsynced_write() {
        power_cut_rounds(Some(Arc::new(StateKey::from_bytes([5; 32])))).await;
    }

    async fn power_cut_rounds(key: Option<Arc<StateKey>>) {
        use std::sync::atomic::AtomicU64;
        let opts = LogOptions {
            fsync: true,
            snapshot_bytes: u64::MAX,
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        for round in 0..6u64 {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(UserStore::new(4));
            let (log, _) = EventLog::open_with_key(
                dir.path(),
                store.clone(),
                opts,
                key.clone(),
                metrics.clone(),
            )
            .unwrap();
            let log = Arc::new(log);
            let seed = Snapshot {
                as_of: 0,
                user_ids: vec![],
                aggregates: vec![],
            };
            log.seed("v1".into(), seed).await.unwrap();
            let acked = Arc::new(Mutex::new(Vec::<String>::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for t in 0..4 {
                let (log, acked, stop, sent) =
                    (log.clone(), acked.clone(), stop.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = format!("w{t}-{i}");
                        sent.fetch_add(1, Ordering::Relaxed);
                        if log.append(vec![ev(&id, i as i64)]).await.is_ok() {
                            acked.lock().unwrap().push(id);
                        }
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 + round * 15)).await;
            // The cut: acknowledged first, then the mark (acknowledged ⇒ synced before it).
            let before: Vec<String> = acked.lock().unwrap().clone();
            let (gen, len) = log.durable_mark();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await.unwrap();
            }
            let log = Arc::into_inner(log).unwrap();
            let thread = log.thread.lock().unwrap().take().unwrap();
            drop(log);
            thread.join().unwrap();
            for (g, path) in segments(dir.path()).unwrap() {
                if g > gen {
                    fs::remove_file(&path).unwrap();
                } else if g == gen {
                    let on_disk = fs::metadata(&path).unwrap().len();
                    assert!(on_disk >= len, "the mark is past the file's end");
                    let partial = if round % 2 == 1 {
                        (round * 37) % (on_disk - len + 1)
                    } else {
                        0
                    };
                    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(len + partial).unwrap();
                }
            }
            assert!(
                !before.is_empty(),
                "round {round}: nothing acknowledged before the cut"
            );
            let store = Arc::new(UserStore::new(4));
            let (log, rec) = EventLog::open_with_key(
                dir.path(),
                store.clone(),
                opts,
                key.clone(),
                metrics.clone(),
            )
            .unwrap();
            let lost: Vec<&String> = before.iter().filter(|id| store.get(id).is_none()).collect();
            assert!(
                lost.is_empty(),
                "round {round}: {} of {} acknowledged events lost by the power cut ({rec:?})",
                lost.len(),
                before.len()
            );
            log.shutdown().await.unwrap();
        }
    }
}
