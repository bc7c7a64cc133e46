//! Recovery at start: lock the state directory, load its snapshot, replay the log segments
//! after it into the table, and cut a torn tail off the last one.
//!
//! A record cut short at the very end of the last segment (a crash mid-write) is dropped with a
//! warning and the segment truncated there; a damaged record anywhere else is an error, because
//! acknowledged events after it would be lost.

use super::super::dir::{lock_dir, open_segment, segments, SNAPSHOT};
use super::super::snapshot::decode_snapshot;
use super::super::store::UserStore;
use super::record::replay_segment;
use crate::serve::state::StateError;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

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

/// Where appends continue after recovery.
pub(crate) struct Tail {
    /// The lock on the directory, held for as long as the server runs.
    pub lock: File,
    /// The newest segment, opened for appending.
    pub file: File,
    pub gen: u64,
    pub seg_bytes: u64,
}

/// Locks the directory, loads the snapshot into `store`, and replays the log after it.
pub(crate) fn recover(dir: &Path, store: &UserStore) -> Result<(Recovery, Tail), StateError> {
    fs::create_dir_all(dir).map_err(StateError::io(dir))?;
    let lock = lock_dir(dir)?;
    let _ = fs::remove_file(dir.join(format!("{SNAPSHOT}.tmp")));
    let (seeded_from, wal_gen) = load_snapshot(dir, store)?;
    let mut recovery = Recovery {
        seeded_from,
        users: 0,
        replayed_records: 0,
        replayed_events: 0,
        torn_tail: false,
    };
    let live = live_segments(dir, wal_gen, recovery.seeded_from.is_some())?;
    let n = live.len();
    for (i, (gen, path)) in live.iter().enumerate() {
        let expected = wal_gen + i as u64;
        if *gen != expected {
            return Err(StateError::MissingSegment {
                path: path.clone(),
                expected,
            });
        }
        let bytes = fs::read(path).map_err(StateError::io(path))?;
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
                .map_err(StateError::io(path))?;
            f.set_len(r.valid_len).map_err(StateError::io(path))?;
            f.sync_all().map_err(StateError::io(path))?;
        }
    }
    let (gen, seg_bytes) = match live.last() {
        Some((gen, path)) => (
            *gen,
            fs::metadata(path).map_err(StateError::io(path))?.len(),
        ),
        None => (wal_gen, 0),
    };
    let file = open_segment(dir, gen)?;
    recovery.users = store.len();
    Ok((
        recovery,
        Tail {
            lock,
            file,
            gen,
            seg_bytes,
        },
    ))
}

/// Loads `state.bin` (if any) into `store`: the seed's version and the first segment to replay.
fn load_snapshot(dir: &Path, store: &UserStore) -> Result<(Option<String>, u64), StateError> {
    let snap_path = dir.join(SNAPSHOT);
    match fs::read(&snap_path) {
        Ok(bytes) => {
            let snap = decode_snapshot(&snap_path, &bytes)?;
            for (id, agg) in &snap.users {
                store.insert(id, *agg);
            }
            Ok((Some(snap.seeded_from), snap.wal_gen))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, 0)),
        Err(e) => Err(StateError::Io {
            path: snap_path,
            source: e,
        }),
    }
}

/// The segments to replay, oldest first. Deletes those the snapshot covers (a crash came
/// between its rename and their cleanup), and, when there is no snapshot, empty ones (a log
/// with events but no snapshot is an error).
fn live_segments(
    dir: &Path,
    wal_gen: u64,
    seeded: bool,
) -> Result<Vec<(u64, PathBuf)>, StateError> {
    let mut live: Vec<(u64, PathBuf)> = Vec::new();
    for (gen, path) in segments(dir)? {
        if gen < wal_gen {
            fs::remove_file(&path).map_err(StateError::io(&path))?;
        } else {
            live.push((gen, path));
        }
    }
    if !seeded {
        for (_, path) in &live {
            let len = fs::metadata(path).map_err(StateError::io(path))?.len();
            if len > 0 {
                return Err(StateError::LogWithoutSnapshot { path: path.clone() });
            }
            fs::remove_file(path).map_err(StateError::io(path))?;
        }
        live.clear();
    }
    Ok(live)
}
