//! Recovery at start: lock the state directory, load its snapshot, replay the log segments
//! after it into the table, and cut a torn tail off the last one.
//!
//! Bad bytes at the end of the last segment with nothing valid after them (a crash mid-write)
//! are dropped with a warning and the segment truncated there; a damaged record anywhere else,
//! or one followed by valid records, is an error and the file is left untouched, because
//! acknowledged events after it would be lost. The state files must also agree with each other:
//! a log segment past the first (`wal-…1.log` or later) proves a snapshot was written, so a
//! missing `state.bin` is an error, not an empty state; a `state.bin` whose first segment is
//! missing is an error too.
//!
//! What was found is reported per segment ([`SegmentReport`]), including a log that ends at a
//! record boundary: a cut exactly there cannot be told from the log's true end, so the report
//! says how many records the last segment held and that the previous run did not stop cleanly
//! (a clean stop leaves the last segment empty).

use super::super::cipher::{self, StateKey};
use super::super::dir::{
    create_state_dir, lock_dir, open_segment, segments, warn_open_permissions, SNAPSHOT,
};
use super::super::snapshot::decode_snapshot;
use super::super::store::UserStore;
use super::record::{replay_segment, SegmentReplay};
use crate::serve::state::StateError;
use std::fmt;
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
    /// Each segment replayed, oldest first.
    pub segments: Vec<SegmentReport>,
}

impl Recovery {
    /// Bytes were dropped from the end of the log as a torn write.
    pub(crate) fn torn_tail(&self) -> bool {
        self.segments.iter().any(|s| s.torn.is_some())
    }

    /// The previous run stopped without its final snapshot (a crash, `kill -9`, a power cut):
    /// the log after the snapshot is not empty.
    pub fn unclean_stop(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.records > 0 || s.torn.is_some())
    }
}

/// What one log segment held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub records: u64,
    pub events: u64,
    /// Bytes of whole records.
    pub valid_len: u64,
    /// Bytes dropped from its end as a torn write, and what they looked like.
    pub torn: Option<(u64, &'static str)>,
}

impl fmt::Display for SegmentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} records ({} events) in {} bytes, ",
            self.path.display(),
            self.records,
            self.events,
            self.valid_len
        )?;
        match self.torn {
            Some((bytes, what)) => write!(
                f,
                "then {bytes} bytes dropped as a torn write ({what}, nothing valid after it)"
            ),
            None => f.write_str("ending at a record boundary"),
        }
    }
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

/// Locks the directory, loads the snapshot into `store`, and replays the log after it (cutting
/// a torn tail off).
pub(crate) fn recover(
    dir: &Path,
    store: &UserStore,
    key: Option<&StateKey>,
) -> Result<(Recovery, Tail), StateError> {
    create_state_dir(dir)?;
    let lock = lock_dir(dir)?;
    warn_open_permissions(dir);
    remove_unfinished_snapshots(dir);
    let (recovery, wal_gen) = read_state(dir, store, true, key)?;
    let (gen, seg_bytes) = match recovery.segments.last() {
        Some(s) => (wal_gen + recovery.segments.len() as u64 - 1, s.valid_len),
        None => (wal_gen, 0),
    };
    let file = open_segment(dir, gen)?;
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

/// Loads the snapshot and replays the log into `store`; returns what was found and the
/// snapshot's first segment. `writable`: delete the segments the snapshot covers and cut a torn
/// tail off (start-up); otherwise change nothing (`tiering state check`). `key`: the state is
/// encrypted with it (see `cipher`).
pub(crate) fn read_state(
    dir: &Path,
    store: &UserStore,
    writable: bool,
    key: Option<&StateKey>,
) -> Result<(Recovery, u64), StateError> {
    let (seeded_from, wal_gen) = load_snapshot(dir, store, key)?;
    let mut recovery = Recovery {
        seeded_from,
        users: 0,
        replayed_records: 0,
        replayed_events: 0,
        segments: Vec::new(),
    };
    let live = live_segments(dir, wal_gen, recovery.seeded_from.is_some(), writable)?;
    let n = live.len();
    for (i, (gen, path)) in live.iter().enumerate() {
        let expected = wal_gen + i as u64;
        if *gen != expected {
            return Err(StateError::MissingSegment {
                path: dir.join(super::super::dir::segment_name(expected)),
                expected,
            });
        }
        let bytes = fs::read(path).map_err(StateError::io(path))?;
        let r = replay_bytes(key, path, &bytes, i + 1 == n, store)?;
        recovery.replayed_records += r.records;
        recovery.replayed_events += r.events;
        let torn = r.torn.map(|what| (bytes.len() as u64 - r.valid_len, what));
        if torn.is_some() && writable {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(StateError::io(path))?;
            f.set_len(r.valid_len).map_err(StateError::io(path))?;
            f.sync_all().map_err(StateError::io(path))?;
        }
        recovery.segments.push(SegmentReport {
            path: path.clone(),
            records: r.records,
            events: r.events,
            valid_len: r.valid_len,
            torn,
        });
    }
    recovery.users = store.len();
    Ok((recovery, wal_gen))
}

/// Replays one segment's bytes into `store`, opening its frames first when the state is
/// encrypted (offsets in errors and the valid length are then the file's, not the plaintext's).
fn replay_bytes(
    key: Option<&StateKey>,
    path: &Path,
    bytes: &[u8],
    last: bool,
    store: &UserStore,
) -> Result<SegmentReplay, StateError> {
    // Entries, not bare events: an erasure record removes the user at its point of the log.
    let apply = |e: crate::serve::state::UserEvent| {
        store.apply_entry(&e);
    };
    let Some(key) = key else {
        cipher::refuse_sealed_segment(path, bytes)?;
        return replay_segment(path, bytes, last, apply);
    };
    let opened = cipher::open_segment(key, path, bytes, last)?;
    let r = replay_segment(path, &opened.plain, true, apply).map_err(|e| match e {
        StateError::UndecodableRecord {
            path,
            offset,
            source,
        } => StateError::UndecodableRecord {
            path,
            offset: opened.file_offset(offset),
            source,
        },
        other => other,
    })?;
    Ok(SegmentReplay {
        valid_len: opened.valid_len,
        torn: opened.torn,
        ..r
    })
}

/// Loads `state.bin` (if any) into `store`: the seed's version and the first segment to replay.
fn load_snapshot(
    dir: &Path,
    store: &UserStore,
    key: Option<&StateKey>,
) -> Result<(Option<String>, u64), StateError> {
    let snap_path = dir.join(SNAPSHOT);
    match fs::read(&snap_path) {
        Ok(bytes) => {
            let plain = cipher::open_snapshot(key, &snap_path, &bytes)?;
            let snap = decode_snapshot(&snap_path, &plain)?;
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

/// The segments to replay, oldest first. Skips (and when `writable` deletes) those the snapshot
/// covers (a crash came between its rename and their cleanup), and, when there is no snapshot,
/// empty ones left by a first seed that never completed. Refuses state files that disagree.
fn live_segments(
    dir: &Path,
    wal_gen: u64,
    seeded: bool,
    writable: bool,
) -> Result<Vec<(u64, PathBuf)>, StateError> {
    let mut live: Vec<(u64, PathBuf)> = Vec::new();
    for (gen, path) in segments(dir)? {
        if gen < wal_gen {
            if writable {
                fs::remove_file(&path).map_err(StateError::io(&path))?;
            }
        } else {
            live.push((gen, path));
        }
    }
    if seeded {
        if live.first().map(|(gen, _)| *gen) != Some(wal_gen) {
            return Err(StateError::MissingSegment {
                path: dir.join(super::super::dir::segment_name(wal_gen)),
                expected: wal_gen,
            });
        }
        return Ok(live);
    }
    // No state.bin. A first seed writes segment 1 before its snapshot and deletes segment 0
    // after it, so segment 0 absent with a later one present means a snapshot existed.
    if let Some((gen, path)) = live.first() {
        if *gen > 0 {
            return Err(StateError::SnapshotMissing {
                path: dir.join(SNAPSHOT),
                segment: path.clone(),
            });
        }
    }
    for (_, path) in &live {
        let len = fs::metadata(path).map_err(StateError::io(path))?.len();
        if len > 0 {
            return Err(StateError::LogWithoutSnapshot { path: path.clone() });
        }
    }
    if writable {
        for (_, path) in &live {
            fs::remove_file(path).map_err(StateError::io(path))?;
        }
    }
    Ok(Vec::new())
}

/// Removes the temporary files of snapshots a crash interrupted: `state.bin.tmp` (older builds)
/// and `.state.bin.tmp-<pid>-<n>` (`io::atomic`). Best effort: a leftover is only wasted space.
fn remove_unfinished_snapshots(dir: &Path) {
    let _ = fs::remove_file(dir.join(format!("{SNAPSHOT}.tmp")));
    let prefix = format!(".{SNAPSHOT}.tmp-");
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_removes_the_temporary_files_of_interrupted_snapshots_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let old_form = dir.path().join(format!("{SNAPSHOT}.tmp"));
        let atomic_form = dir.path().join(format!(".{SNAPSHOT}.tmp-4242-7"));
        let other = dir.path().join("notes.txt");
        for p in [&old_form, &atomic_form, &other] {
            fs::write(p, b"left by a crash").unwrap();
        }
        let store = UserStore::new(4);
        recover(dir.path(), &store, None).unwrap();
        assert!(
            !old_form.exists(),
            "state.bin.tmp of older builds is removed"
        );
        assert!(!atomic_form.exists(), "io::atomic's temporary is removed");
        assert!(
            other.exists(),
            "files that are not snapshot temporaries stay"
        );
    }
}
