//! Durability of recorded events: a write-ahead log with group commit, and state snapshots.
//!
//! ```text
//! STATE_DIR/
//!   LOCK                 flock(2)ed by the running server: two servers never share a state dir
//!   state.bin            the latest snapshot: every user's aggregate, and the first log segment
//!                        it does not cover (`wal_gen`)
//!   wal-<gen>.log        log segments, replayed in order from `wal_gen` on start
//! ```
//!
//! A log record is `u32 LE length | u32 LE crc32(payload) | payload`, the payload being one
//! request's events (postcard). One thread owns the log and is the only writer of the user table:
//! it takes every append waiting in its queue, writes them with one `write`, calls `fdatasync`
//! once for the whole group, applies the events to the table, and only then acknowledges each
//! request. An acknowledged event is therefore on disk, and readers never see an event that a
//! crash could take back.
//!
//! A snapshot is taken by the same thread, so it is an exact cut: it starts a new segment, then
//! serialises the table (readers keep reading), and a helper thread writes `state.bin.tmp`,
//! fsyncs, renames it over `state.bin`, and deletes the segments the snapshot covers. A crash at
//! any point leaves either the old snapshot with all its segments or the new one.
//!
//! Cost: appends wait while the thread serialises a snapshot (about a second per million users
//! in a debug build, every `snapshot_interval_secs` or `snapshot_wal_bytes`); reads never wait.
//! A failed write or fsync poisons the log: nothing more is acknowledged (and no snapshot taken)
//! until a restart replays it, because the kernel may have dropped the unsynced pages.
//!
//! On replay, a record cut short at the very end of the last segment (a crash mid-write) is
//! dropped with a warning and the segment truncated there; a damaged record anywhere else is an
//! error, because acknowledged events after it would be lost.

use super::error::ServeError;
use super::metrics::Metrics;
use super::store::{UserStore, UsersSeq};
use crate::bundle::Snapshot;
use crate::features::{Event, EventKind, Timestamp, UserAggregate};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub const SNAPSHOT: &str = "state.bin";
const LOCK: &str = "LOCK";
const MAGIC: &[u8; 8] = b"TIERST01";
const HEADER: usize = 8;
/// Larger lengths are corruption (messages are far smaller).
const MAX_RECORD: usize = 1 << 30;
/// Most queued appends folded into one fsync.
const MAX_GROUP: usize = 4096;

/// One event as logged: the user, and the event with room and category already hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub user_id: String,
    pub ts: Timestamp,
    pub kind: EventKind,
    pub amount: f64,
    pub watch_seconds: u32,
    pub room: u32,
    pub category: u32,
}

impl LoggedEvent {
    pub fn event(&self) -> Event {
        Event {
            ts: self.ts,
            kind: self.kind,
            amount: self.amount,
            watch_seconds: self.watch_seconds,
            room: self.room,
            category: self.category,
        }
    }
}

/// The outcome of one acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub accepted: u64,
    pub new_users: u64,
}

/// Tuning of the log, from the server configuration.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub fsync: bool,
    /// Snapshot as soon as the current segment grows past this.
    pub snapshot_bytes: u64,
}

/// What start-up found in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The bundle version the state was first seeded from; `None`: never seeded (empty state).
    pub seeded_from: Option<String>,
    pub users: usize,
    pub replayed_records: u64,
    pub replayed_events: u64,
    /// A record cut short by a crash was dropped from the end of the log.
    pub torn_tail: bool,
}

pub fn encode_record(events: &[LoggedEvent]) -> Result<Vec<u8>, ServeError> {
    let payload = postcard::to_stdvec(events)
        .map_err(|e| ServeError::Internal(format!("encoding events: {e}")))?;
    if payload.len() > MAX_RECORD {
        return Err(ServeError::Internal("log record too large".into()));
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The result of reading one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentReplay {
    pub records: u64,
    pub events: u64,
    /// Bytes of whole, valid records from the start.
    pub valid_len: u64,
    pub torn: bool,
}

/// Decodes a segment's records in order, calling `apply` on each event. `last`: this is the
/// newest segment, whose final record may be torn.
pub fn replay_segment(
    path: &Path,
    bytes: &[u8],
    last: bool,
    mut apply: impl FnMut(LoggedEvent),
) -> Result<SegmentReplay, ServeError> {
    let corrupt = |offset: usize, m: &str| ServeError::CorruptState {
        path: path.to_path_buf(),
        message: format!("at byte {offset}: {m}"),
    };
    let mut out = SegmentReplay {
        records: 0,
        events: 0,
        valid_len: 0,
        torn: false,
    };
    let mut off = 0usize;
    while off < bytes.len() {
        let rest = &bytes[off..];
        let torn = |m: &str| -> Result<SegmentReplay, ServeError> {
            if last {
                tracing::warn!(path = %path.display(), offset = off, "dropping a torn record at the end of the event log ({m}): a crash interrupted its write, so it was never acknowledged");
                Ok(SegmentReplay { torn: true, ..out })
            } else {
                Err(corrupt(
                    off,
                    &format!("{m} in a segment that is not the last"),
                ))
            }
        };
        if rest.len() < HEADER {
            return torn("incomplete record header");
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            // Never written by us: a zero-filled tail left by a crash, or damage.
            if rest.iter().all(|&b| b == 0) {
                return torn("zero-filled tail");
            }
            return Err(corrupt(off, "empty record"));
        }
        if len > MAX_RECORD || len > rest.len() - HEADER {
            return torn("record extends past the end of the file");
        }
        let payload = &rest[HEADER..HEADER + len];
        let end = off + HEADER + len;
        if crc32fast::hash(payload) != crc {
            if end == bytes.len() {
                return torn("checksum mismatch in the final record");
            }
            return Err(corrupt(
                off,
                "checksum mismatch in the middle of the log (acknowledged events follow it)",
            ));
        }
        let events: Vec<LoggedEvent> = postcard::from_bytes(payload)
            .map_err(|e| corrupt(off, &format!("undecodable record: {e}")))?;
        out.records += 1;
        out.events += events.len() as u64;
        events.into_iter().for_each(&mut apply);
        off = end;
        out.valid_len = off as u64;
    }
    Ok(out)
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    seeded_from: &'a str,
    wal_gen: u64,
    users: UsersSeq<'a>,
}

#[derive(Deserialize)]
struct SnapshotIn {
    seeded_from: String,
    wal_gen: u64,
    users: Vec<(String, UserAggregate)>,
}

fn encode_snapshot(
    seeded_from: &str,
    wal_gen: u64,
    store: &UserStore,
) -> Result<Vec<u8>, ServeError> {
    let guards = store.all_shards();
    let payload = postcard::to_stdvec(&SnapshotOut {
        seeded_from,
        wal_gen,
        users: UsersSeq(&guards),
    })
    .map_err(|e| ServeError::Internal(format!("encoding the state snapshot: {e}")))?;
    drop(guards);
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<SnapshotIn, ServeError> {
    let corrupt = |m: String| ServeError::CorruptState {
        path: path.to_path_buf(),
        message: m,
    };
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a tiering state snapshot (bad header)".into()));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len8);
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let payload = &bytes[20..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "{} payload bytes, header says {len}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(format!("undecodable: {e}")))
}

fn segment_name(gen: u64) -> String {
    format!("wal-{gen:016}.log")
}

fn parse_segment(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Log segments in the directory, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ServeError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(ServeError::io(dir))? {
        let entry = entry.map_err(ServeError::io(dir))?;
        if let Some(gen) = entry.file_name().to_str().and_then(parse_segment) {
            out.push((gen, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), ServeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ServeError::io(dir))
}

fn lock_dir(dir: &Path) -> Result<File, ServeError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ServeError::io(&path))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(ServeError::CorruptState {
                path,
                message: "the state directory is in use by another running server".into(),
            });
        }
    }
    Ok(file)
}

fn open_segment(dir: &Path, gen: u64) -> Result<File, ServeError> {
    let path = dir.join(segment_name(gen));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(ServeError::io(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `state.bin` atomically and deletes the segments it covers.
fn write_snapshot(dir: &Path, bytes: &[u8], covers_below: u64) -> Result<(), ServeError> {
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    {
        let mut f = File::create(&tmp).map_err(ServeError::io(&tmp))?;
        f.write_all(bytes).map_err(ServeError::io(&tmp))?;
        f.sync_all().map_err(ServeError::io(&tmp))?;
    }
    let path = dir.join(SNAPSHOT);
    fs::rename(&tmp, &path).map_err(ServeError::io(&path))?;
    sync_dir(dir)?;
    for (gen, seg) in segments(dir)? {
        if gen < covers_below {
            fs::remove_file(&seg).map_err(ServeError::io(&seg))?;
        }
    }
    Ok(())
}

enum Command {
    Append {
        record: Vec<u8>,
        events: Vec<LoggedEvent>,
        reply: oneshot::Sender<Result<Applied, ServeError>>,
    },
    Seed {
        version: String,
        snapshot: Box<Snapshot>,
        reply: oneshot::Sender<Result<(), ServeError>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<bool, ServeError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), ServeError>>,
    },
}

/// Handle on the log thread. Dropping every handle without [`EventLog::shutdown`] stops the
/// thread without a snapshot, as a crash would (the log still holds every acknowledged event).
pub struct EventLog {
    tx: mpsc::Sender<Command>,
    seeded: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EventLog {
    /// Locks the state directory, loads the snapshot, replays the log into `store`, and starts
    /// the log thread.
    pub fn open(
        dir: &Path,
        store: Arc<UserStore>,
        opts: LogOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(EventLog, Recovery), ServeError> {
        fs::create_dir_all(dir).map_err(ServeError::io(dir))?;
        let lock = lock_dir(dir)?;
        let _ = fs::remove_file(dir.join(format!("{SNAPSHOT}.tmp")));
        let snap_path = dir.join(SNAPSHOT);
        let (seeded_from, wal_gen) = match fs::read(&snap_path) {
            Ok(bytes) => {
                let snap = decode_snapshot(&snap_path, &bytes)?;
                for (id, agg) in &snap.users {
                    store.insert(id, *agg);
                }
                (Some(snap.seeded_from), snap.wal_gen)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
            Err(e) => {
                return Err(ServeError::Io {
                    path: snap_path,
                    source: e,
                })
            }
        };
        let mut recovery = Recovery {
            seeded_from: seeded_from.clone(),
            users: 0,
            replayed_records: 0,
            replayed_events: 0,
            torn_tail: false,
        };
        let all = segments(dir)?;
        let mut live: Vec<(u64, PathBuf)> = Vec::new();
        for (gen, path) in all {
            if gen < wal_gen {
                // Covered by the snapshot; a crash came between its rename and this cleanup.
                fs::remove_file(&path).map_err(ServeError::io(&path))?;
            } else {
                live.push((gen, path));
            }
        }
        if seeded_from.is_none() {
            for (_, path) in &live {
                let len = fs::metadata(path).map_err(ServeError::io(path))?.len();
                if len > 0 {
                    return Err(ServeError::CorruptState {
                        path: path.clone(),
                        message: format!("an event log without {SNAPSHOT}: restore the snapshot or remove the state directory"),
                    });
                }
                fs::remove_file(path).map_err(ServeError::io(path))?;
            }
            live.clear();
        }
        let n = live.len();
        for (i, (gen, path)) in live.iter().enumerate() {
            let expected = wal_gen + i as u64;
            if *gen != expected {
                return Err(ServeError::CorruptState {
                    path: path.clone(),
                    message: format!("log segment {expected} is missing"),
                });
            }
            let bytes = fs::read(path).map_err(ServeError::io(path))?;
            let r = replay_segment(path, &bytes, i + 1 == n, |e| {
                store.apply(&e.user_id, &e.event());
            })?;
            recovery.replayed_records += r.records;
            recovery.replayed_events += r.events;
            if r.torn {
                recovery.torn_tail = true;
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(ServeError::io(path))?;
                f.set_len(r.valid_len).map_err(ServeError::io(path))?;
                f.sync_all().map_err(ServeError::io(path))?;
            }
        }
        let (gen, seg_bytes) = match live.last() {
            Some((gen, path)) => (
                *gen,
                fs::metadata(path).map_err(ServeError::io(path))?.len(),
            ),
            None => (wal_gen, 0),
        };
        let file = open_segment(dir, gen)?;
        recovery.users = store.len();

        let seeded = Arc::new(AtomicBool::new(seeded_from.is_some()));
        let writer = Writer {
            dir: dir.to_path_buf(),
            store,
            file,
            gen,
            seg_bytes,
            dirty: recovery.replayed_records > 0,
            poisoned: None,
            seeded_from,
            seeded: seeded.clone(),
            opts,
            metrics,
            pending: None,
            _lock: lock,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tiering-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| ServeError::Internal(format!("starting the event log thread: {e}")))?;
        Ok((
            EventLog {
                tx,
                seeded,
                thread: Mutex::new(Some(thread)),
            },
            recovery,
        ))
    }

    /// True once the state holds a seed (a bundle's snapshot, or a previous run's state).
    pub fn is_seeded(&self) -> bool {
        self.seeded.load(Ordering::Acquire)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ServeError>>) -> Command,
    ) -> Result<T, ServeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| ServeError::LogUnavailable("the event log thread has stopped".into()))?;
        rx.await
            .map_err(|_| ServeError::LogUnavailable("the event log thread has stopped".into()))?
    }

    /// Makes `events` durable, applies them to the user table, and returns once both are done.
    pub async fn append(&self, events: Vec<LoggedEvent>) -> Result<Applied, ServeError> {
        if events.is_empty() {
            return Ok(Applied {
                accepted: 0,
                new_users: 0,
            });
        }
        let record = encode_record(&events)?;
        self.call(|reply| Command::Append {
            record,
            events,
            reply,
        })
        .await
    }

    /// Seeds an empty state from a bundle's snapshot and writes the first state snapshot.
    pub async fn seed(&self, version: String, snapshot: Snapshot) -> Result<(), ServeError> {
        self.call(|reply| Command::Seed {
            version,
            snapshot: Box::new(snapshot),
            reply,
        })
        .await
    }

    /// Snapshots the state if events arrived since the last snapshot; true if it did.
    pub async fn checkpoint(&self) -> Result<bool, ServeError> {
        self.call(|reply| Command::Checkpoint { reply }).await
    }

    /// Final snapshot (waited for), then the thread stops.
    pub async fn shutdown(&self) -> Result<(), ServeError> {
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

struct Writer {
    dir: PathBuf,
    store: Arc<UserStore>,
    file: File,
    gen: u64,
    seg_bytes: u64,
    /// Events applied since the last snapshot.
    dirty: bool,
    /// Set when a write or fsync failed: the segment's state is unknown, so nothing more is
    /// acknowledged until a restart replays it.
    poisoned: Option<String>,
    seeded_from: Option<String>,
    seeded: Arc<AtomicBool>,
    opts: LogOptions,
    metrics: Arc<Metrics>,
    /// The snapshot being written in the background.
    pending: Option<JoinHandle<Result<(), ServeError>>>,
    _lock: File,
}

type AppendReply = oneshot::Sender<Result<Applied, ServeError>>;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut deferred: Option<Command> = None;
        loop {
            let cmd = match deferred.take() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break, // every handle dropped: stop as a crash would
                },
            };
            match cmd {
                Command::Append {
                    record,
                    events,
                    reply,
                } => {
                    let mut group = vec![(record, events, reply)];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(Command::Append {
                                record,
                                events,
                                reply,
                            }) => group.push((record, events, reply)),
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
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

    fn commit(&mut self, group: Vec<(Vec<u8>, Vec<LoggedEvent>, AppendReply)>) {
        let fail = |group: Vec<(Vec<u8>, Vec<LoggedEvent>, AppendReply)>, e: ServeError| {
            let msg = e.to_string();
            for (_, _, reply) in group {
                let _ = reply.send(Err(ServeError::LogUnavailable(msg.clone())));
            }
        };
        if self.seeded_from.is_none() {
            return fail(group, ServeError::NoModel);
        }
        if let Some(p) = &self.poisoned {
            let p = p.clone();
            return fail(group, ServeError::LogUnavailable(p));
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
            let path = self.dir.join(segment_name(self.gen));
            let msg = format!(
                "{}: write failed: {e}; restart the server to replay the log",
                path.display()
            );
            tracing::error!("{msg}");
            self.poisoned = Some(msg.clone());
            return fail(group, ServeError::LogUnavailable(msg));
        }
        self.metrics.wal_commit(group.len(), started.elapsed());
        self.seg_bytes += total as u64;
        self.dirty = true;
        let mut ingested = 0u64;
        let mut replies = Vec::with_capacity(group.len());
        for (_, events, reply) in group {
            let mut new_users = 0u64;
            for e in &events {
                new_users += u64::from(self.store.apply(&e.user_id, &e.event()));
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

    fn seed(&mut self, version: String, snapshot: Snapshot) -> Result<(), ServeError> {
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

    fn join_pending(&mut self) -> Result<(), ServeError> {
        match self.pending.take() {
            None => Ok(()),
            Some(h) => h
                .join()
                .map_err(|_| ServeError::Internal("the snapshot thread panicked".into()))?,
        }
    }

    /// Starts a new segment, serialises the table as of this exact point, and writes it (now
    /// when `wait`, else on a helper thread).
    fn checkpoint(&mut self, wait: bool) -> Result<(), ServeError> {
        // After a failed write the segment may end in a partial record; it must stay the last
        // segment, where replay drops such a tail, so no new segment is started.
        if let Some(p) = &self.poisoned {
            return Err(ServeError::LogUnavailable(format!(
                "no snapshot after a failed log write: {p}"
            )));
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
        self.dirty = false;
        let dir = self.dir.clone();
        if wait {
            write_snapshot(&dir, &bytes, next)
        } else {
            let h = std::thread::Builder::new()
                .name("tiering-snapshot".into())
                .spawn(move || write_snapshot(&dir, &bytes, next))
                .map_err(|e| ServeError::Internal(format!("starting the snapshot thread: {e}")))?;
            self.pending = Some(h);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: &str, ts: i64) -> LoggedEvent {
        LoggedEvent {
            user_id: user.into(),
            ts,
            kind: EventKind::Order,
            amount: 3.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
        }
    }

    fn log_of(records: &[Vec<LoggedEvent>]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| encode_record(r).unwrap())
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let bytes = log_of(&[vec![ev("a", 1), ev("b", 2)], vec![ev("c", 3)]]);
        let mut seen = Vec::new();
        let r = replay_segment(Path::new("x"), &bytes, true, |e| seen.push(e.user_id)).unwrap();
        assert_eq!(seen, vec!["a", "b", "c"]);
        assert_eq!(
            (r.records, r.events, r.valid_len, r.torn),
            (2, 3, bytes.len() as u64, false)
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_but_only_in_the_last_segment() {
        let bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        let first_len = encode_record(&[ev("a", 1)]).unwrap().len();
        for cut in [first_len + 3, first_len + 9, bytes.len() - 1] {
            let mut seen = 0;
            let r = replay_segment(Path::new("x"), &bytes[..cut], true, |_| seen += 1).unwrap();
            assert!(r.torn);
            assert_eq!((seen, r.valid_len), (1, first_len as u64));
            assert!(replay_segment(Path::new("x"), &bytes[..cut], false, |_| ()).is_err());
        }
        // A zero-filled tail (the file grew but the data never landed) is torn too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0u8; 64]);
        assert!(
            replay_segment(Path::new("x"), &zeros, true, |_| ())
                .unwrap()
                .torn
        );
    }

    #[test]
    fn a_checksum_failure_in_the_middle_is_an_error() {
        let mut bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        bytes[HEADER + 1] ^= 0xff;
        let e = replay_segment(Path::new("x"), &bytes, true, |_| ()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // The same damage in the final record is a torn write.
        let mut bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        assert!(
            replay_segment(Path::new("x"), &bytes, true, |_| ())
                .unwrap()
                .torn
        );
    }

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
}
