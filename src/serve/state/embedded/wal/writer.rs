//! The log thread: the only writer of the user table. It takes every append waiting in its
//! queue, writes them with one `write`, calls `fdatasync` once for the whole group, applies the
//! events to the table, and only then acknowledges each request. It also takes the snapshots,
//! so a snapshot is an exact cut of the log.

use super::super::cipher::{seal_snapshot, StateKey};
use super::super::dir::{open_segment, segment_name, write_snapshot};
use super::super::snapshot::encode_snapshot;
use super::super::store::UserStore;
use super::LogOptions;
use crate::bundle::Snapshot;
use crate::serve::metrics::Metrics;
use crate::serve::state::{Applied, StateError, UserEvent};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Bytes the space probe writes: a typical group commit.
const PROBE_BYTES: usize = 64 * 1024;
/// How often the space probe runs while writes are refused.
pub(super) const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Most queued appends folded into one fsync.
const MAX_GROUP: usize = 4096;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StateError>>;

/// A request to the log thread.
pub(super) enum Command {
    Append {
        record: Vec<u8>,
        events: Vec<UserEvent>,
        reply: Reply<Applied>,
    },
    Seed {
        version: String,
        snapshot: Box<Snapshot>,
        reply: Reply<()>,
    },
    Checkpoint {
        reply: Reply<bool>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

type Append = (Vec<u8>, Vec<UserEvent>, Reply<Applied>);

/// A failed write or fsync: which segment, and the error.
pub(super) struct Poison {
    path: PathBuf,
    source: Arc<std::io::Error>,
}

impl Poison {
    /// The error every append (and snapshot) gets from now on.
    fn error(&self) -> StateError {
        StateError::Poisoned {
            path: self.path.clone(),
            source: self.source.clone(),
        }
    }
}

pub(super) struct Writer {
    pub dir: PathBuf,
    pub store: Arc<UserStore>,
    pub file: File,
    pub gen: u64,
    pub seg_bytes: u64,
    /// Events applied since the last snapshot.
    pub dirty: bool,
    /// Set when a write or fsync failed: the segment's state is unknown, so nothing more is
    /// acknowledged until a restart replays it.
    pub poisoned: Option<Poison>,
    /// Set while a write failed and was rolled back (disk full): appends are refused until a
    /// write or the space probe succeeds. Shared with [`super::EventLog::refusing_writes`].
    pub refusing: Arc<AtomicBool>,
    pub seeded_from: Option<String>,
    pub seeded: Arc<AtomicBool>,
    pub opts: LogOptions,
    pub metrics: Arc<Metrics>,
    /// The newest segment and how much of it the last `fdatasync` made durable (what a power
    /// cut leaves of the log); read by the power-cut test harness.
    pub durable: Arc<std::sync::Mutex<(u64, u64)>>,
    /// The snapshot being written in the background.
    pub pending: Option<JoinHandle<Result<(), StateError>>>,
    /// Seals snapshots (`None`: plaintext state).
    pub key: Option<Arc<StateKey>>,
    pub _lock: File,
}

impl Writer {
    pub fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut deferred: Option<Command> = None;
        loop {
            let cmd = match deferred.take() {
                Some(c) => c,
                None => match rx.recv_timeout(PROBE_EVERY) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.probe_space();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break, // as a crash would
                },
            };
            match cmd {
                Command::Append {
                    record,
                    events,
                    reply,
                } => {
                    let mut group = vec![(record, events, reply)];
                    deferred = gather(&rx, &mut group);
                    self.commit(group);
                    if self.seg_bytes >= self.opts.snapshot_bytes {
                        if let Err(e) = self.checkpoint(false) {
                            tracing::error!(error = %e, "state snapshot failed (the event log still holds every event)");
                        }
                    }
                }
                Command::Seed {
                    version,
                    snapshot,
                    reply,
                } => {
                    let _ = reply.send(self.seed(version, *snapshot));
                }
                Command::Checkpoint { reply } => {
                    let r = if self.dirty {
                        self.checkpoint(false).map(|()| true)
                    } else {
                        Ok(false)
                    };
                    let _ = reply.send(r);
                }
                Command::Shutdown { reply } => {
                    let r = if self.dirty && self.seeded_from.is_some() {
                        self.checkpoint(true)
                    } else {
                        self.join_pending()
                    };
                    let _ = reply.send(r);
                    return;
                }
            }
        }
        if let Err(e) = self.join_pending() {
            tracing::error!(error = %e, "state snapshot failed");
        }
    }

    fn commit(&mut self, group: Vec<Append>) {
        let fail = |group: Vec<Append>, e: &dyn Fn() -> StateError| {
            for (_, _, reply) in group {
                let _ = reply.send(Err(e()));
            }
        };
        if self.seeded_from.is_none() {
            return fail(group, &|| StateError::NotSeeded);
        }
        if let Some(p) = &self.poisoned {
            return fail(group, &|| p.error());
        }
        let total: usize = group.iter().map(|(r, _, _)| r.len()).sum();
        let mut buf = Vec::with_capacity(total);
        for (r, _, _) in &group {
            buf.extend_from_slice(r);
        }
        let started = std::time::Instant::now();
        let written = self.file.write_all(&buf).and_then(|()| {
            if self.opts.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let e = self.roll_back(e);
            fail(group, &|| e());
            return;
        }
        self.set_refusing(false);
        self.metrics.wal_commit(group.len(), started.elapsed());
        self.seg_bytes += total as u64;
        if self.opts.fsync {
            self.mark_durable();
        }
        self.dirty = true;
        self.apply_and_acknowledge(group);
    }

    /// Applies each append's events to the table, then acknowledges them.
    fn apply_and_acknowledge(&self, group: Vec<Append>) {
        let mut ingested = 0u64;
        let mut replies = Vec::with_capacity(group.len());
        for (_, events, reply) in group {
            let mut new_users = 0u64;
            for e in &events {
                new_users += u64::from(self.store.apply_entry(e));
            }
            ingested += events.len() as u64;
            replies.push((
                reply,
                Applied {
                    accepted: events.len() as u64,
                    new_users,
                },
            ));
        }
        // Metrics first, so that anyone who saw the acknowledgement also sees them counted.
        self.metrics.events_ingested(ingested, self.store.len());
        for (reply, applied) in replies {
            let _ = reply.send(Ok(applied));
        }
    }

    fn seed(&mut self, version: String, snapshot: Snapshot) -> Result<(), StateError> {
        if self.seeded_from.is_some() {
            return Ok(());
        }
        for (id, agg) in snapshot.user_ids.iter().zip(&snapshot.aggregates) {
            self.store.insert(id, *agg);
        }
        self.seeded_from = Some(version);
        self.checkpoint(true)?;
        self.seeded.store(true, Ordering::Release);
        self.metrics.events_ingested(0, self.store.len());
        Ok(())
    }

    /// After a failed write or fsync: cuts the segment back to its last synced length and syncs
    /// it. If that works the log is whole again and later appends are tried as usual (writes are
    /// refused, not lost: `ENOSPC`/`EDQUOT` answer [`StateError::LogFull`], other errors
    /// [`StateError::LogWriteFailed`], until a write or the space probe succeeds); if not, the
    /// segment's state is unknown and the log is poisoned until a restart replays it. Returns
    /// the error each append of the failed group gets.
    fn roll_back(&mut self, e: std::io::Error) -> Box<dyn Fn() -> StateError> {
        let path = self.dir.join(segment_name(self.gen));
        let source = Arc::new(e);
        let rolled = self
            .file
            .set_len(self.seg_bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(again) = rolled {
            let p = Poison {
                path: path.clone(),
                source: source.clone(),
            };
            tracing::error!(undo_error = %again, "{}", p.error());
            self.poisoned = Some(p);
            return Box::new(move || StateError::Poisoned {
                path: path.clone(),
                source: source.clone(),
            });
        }
        if !self.refusing.load(Ordering::Relaxed) {
            tracing::error!(path = %path.display(), error = %source, "event log write failed: refusing writes (reads go on) until the log can be written again; nothing acknowledged is lost");
        }
        self.set_refusing(true);
        let full = matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        );
        Box::new(move || {
            if full {
                StateError::LogFull {
                    path: path.clone(),
                    source: source.clone(),
                }
            } else {
                StateError::LogWriteFailed {
                    path: path.clone(),
                    source: source.clone(),
                }
            }
        })
    }

    fn set_refusing(&self, refusing: bool) {
        if self.refusing.swap(refusing, Ordering::AcqRel) && !refusing {
            tracing::warn!("event log writable again: accepting writes");
        }
    }

    /// While writes are refused: writes and syncs a small probe file in the state directory; if
    /// that works, writes are accepted again (so readiness recovers without waiting for a
    /// client to retry).
    pub(crate) fn probe_space(&self) {
        if !self.refusing.load(Ordering::Relaxed) || self.poisoned.is_some() {
            return;
        }
        let path = self.dir.join("space-probe.tmp");
        let ok = File::create(&path)
            .and_then(|mut f| {
                f.write_all(&[0u8; PROBE_BYTES])?;
                f.sync_data()
            })
            .is_ok();
        let _ = std::fs::remove_file(&path);
        if ok {
            self.set_refusing(false);
        }
    }

    /// Records that segment `gen` is durable up to `seg_bytes` (before any acknowledgement).
    fn mark_durable(&self) {
        *self
            .durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (self.gen, self.seg_bytes);
    }

    fn join_pending(&mut self) -> Result<(), StateError> {
        match self.pending.take() {
            None => Ok(()),
            Some(h) => h.join().map_err(|_| StateError::SnapshotPanicked)?,
        }
    }

    /// Starts a new segment, serialises the table as of this exact point, and writes it (now
    /// when `wait`, else on a helper thread).
    fn checkpoint(&mut self, wait: bool) -> Result<(), StateError> {
        // After a failed write the segment may end in a partial record; it must stay the last
        // segment, where replay drops such a tail, so no new segment is started.
        if let Some(p) = &self.poisoned {
            return Err(p.error());
        }
        if let Err(e) = self.join_pending() {
            tracing::error!(error = %e, "the previous state snapshot failed (its log segments were kept)");
        }
        let next = self.gen + 1;
        let file = open_segment(&self.dir, next)?;
        let bytes = encode_snapshot(self.seeded_from.as_deref().unwrap_or(""), next, &self.store)?;
        self.file = file;
        self.gen = next;
        self.seg_bytes = 0;
        self.mark_durable();
        self.dirty = false;
        let dir = self.dir.clone();
        // Sealing (like writing) happens off the log thread unless `wait`.
        let key = self.key.clone();
        let write = move || match &key {
            Some(k) => write_snapshot(&dir, &seal_snapshot(k, &bytes)?, next),
            None => write_snapshot(&dir, &bytes, next),
        };
        if wait {
            write()
        } else {
            let h = std::thread::Builder::new()
                .name("tiering-snapshot".into())
                .spawn(write)
                .map_err(|source| StateError::Spawn {
                    thread: "snapshot",
                    source,
                })?;
            self.pending = Some(h);
            Ok(())
        }
    }
}

/// Adds the appends already queued behind the first to `group` (up to [`MAX_GROUP`]); returns
/// the first other command met, to be handled next.
fn gather(rx: &mpsc::Receiver<Command>, group: &mut Vec<Append>) -> Option<Command> {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(Command::Append {
                record,
                events,
                reply,
            }) => group.push((record, events, reply)),
            Ok(other) => return Some(other),
            Err(_) => return None,
        }
    }
    None
}
