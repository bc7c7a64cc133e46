//! Offline operations on a state directory, behind `tiering state`: check it, repair a damaged
//! log, take a consistent backup (also while a server is running), and restore one.
//!
//! - [`check`] replays the snapshot and the log without changing anything and says what it
//!   found, segment by segment; it takes the directory's lock, so it refuses while a server runs.
//! - [`repair`] is the operator's explicit choice to lose what a damaged record hides: each file
//!   it changes is first copied to `<file>.broken` (`.broken.1`, … if that exists). By default
//!   it cuts the damaged segment at the first bad byte (etcd- and `redis-check-aof`-style);
//!   with `salvage` it keeps every valid record after the damage too.
//! - [`backup`] copies `state.bin` and the segments after it without the lock: it opens every
//!   file before reading, and starts again if a snapshot replaced `state.bin` meanwhile, so the
//!   copy is a cut of the log at the moment it was read. A torn tail (a write in flight, not yet
//!   acknowledged) is cut off the copy.
//! - [`restore`] checks a backup and copies it into a state directory (locked), moving any state
//!   already there aside to `replaced-<unix time>/` when `force` is given.

use super::cipher::{open_snapshot, valid_frames, StateKey};
use super::dir::{create_state_dir, lock_dir, segment_name, segments, SNAPSHOT};
use super::snapshot::decode_snapshot;
use super::store::UserStore;
use super::wal::record::valid_records;
use super::wal::replay::{read_state, Recovery};
use crate::io::atomic::write_atomic;
use crate::serve::state::StateError;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Attempts at a backup before giving up on snapshots that keep replacing `state.bin`.
const BACKUP_ATTEMPTS: usize = 20;
/// Most repairs in one run (each fixes one damaged segment).
const MAX_REPAIRS: usize = 1000;

/// One change made by [`repair`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub path: PathBuf,
    /// The untouched copy of the file.
    pub broken_copy: PathBuf,
    /// Bytes before and after.
    pub before: u64,
    pub after: u64,
}

fn scratch_store() -> UserStore {
    UserStore::new(16)
}

/// Replays the state directory without changing it (the lock is taken for the time of it).
/// `key`: the state is encrypted with it (every function here takes it the same way).
pub fn check(dir: &Path, key: Option<&StateKey>) -> Result<Recovery, StateError> {
    if !dir.is_dir() {
        return Err(StateError::io(dir)(std::io::ErrorKind::NotFound.into()));
    }
    let _lock = lock_dir(dir)?;
    read_state(dir, &scratch_store(), false, key).map(|(r, _)| r)
}

/// Repairs damaged log records (see the module docs), then cuts a torn tail; returns each file
/// changed and what the state then holds. Errors that are not a damaged record (a missing
/// snapshot or segment, a wrong key) are returned as they are: they need a backup or the right
/// key, not a cut. In an encrypted log a frame that fails authentication is cut like a damaged
/// record, and `salvage` keeps the frames that open.
pub fn repair(
    dir: &Path,
    salvage: bool,
    key: Option<&StateKey>,
) -> Result<(Vec<Repaired>, Recovery), StateError> {
    let _lock = lock_dir(dir)?;
    let mut done = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let (path, offset) = match read_state(dir, &scratch_store(), false, key) {
            Ok(_) => {
                let (recovery, _) = read_state(dir, &scratch_store(), true, key)?;
                return Ok((done, recovery));
            }
            Err(StateError::TamperedState { path, offset }) if path != dir.join(SNAPSHOT) => {
                (path, offset)
            }
            Err(StateError::DamagedRecord { path, offset, .. })
            | Err(StateError::TornMidLog { path, offset, .. })
            | Err(StateError::UndecodableRecord { path, offset, .. }) => (path, offset),
            Err(e) => return Err(e),
        };
        let bytes = fs::read(&path).map_err(StateError::io(&path))?;
        let kept: Vec<u8> = if salvage {
            let ranges = match key {
                Some(k) => valid_frames(k, &bytes),
                None => valid_records(&bytes),
            };
            ranges
                .into_iter()
                .flat_map(|r| bytes[r].iter().copied())
                .collect()
        } else {
            bytes[..offset.min(bytes.len())].to_vec()
        };
        let broken_copy = free_name(&path);
        fs::copy(&path, &broken_copy).map_err(StateError::io(&broken_copy))?;
        write_atomic(&path, &kept)?;
        done.push(Repaired {
            path,
            broken_copy,
            before: bytes.len() as u64,
            after: kept.len() as u64,
        });
    }
    Err(StateError::RepairLoop {
        path: dir.to_path_buf(),
    })
}

/// `<path>.broken`, or `.broken.N` for the first N that does not exist.
fn free_name(path: &Path) -> PathBuf {
    let base = format!("{}.broken", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

/// Fails unless `dest` is absent or an empty directory, then creates it.
fn empty_target(dest: &Path) -> Result<(), StateError> {
    if dest.exists() {
        let mut entries = fs::read_dir(dest).map_err(StateError::io(dest))?;
        if entries.next().is_some() {
            return Err(StateError::TargetNotEmpty {
                path: dest.to_path_buf(),
            });
        }
    }
    create_state_dir(dest)
}

/// File names and contents.
type Files = Vec<(String, Vec<u8>)>;

/// The state files read at one moment: `state.bin` and the segments after it, in order.
fn read_consistent(dir: &Path, key: Option<&StateKey>) -> Result<Option<Files>, StateError> {
    let snap_path = dir.join(SNAPSHOT);
    let snap = fs::read(&snap_path).map_err(StateError::io(&snap_path))?;
    let wal_gen = decode_snapshot(&snap_path, &open_snapshot(key, &snap_path, &snap)?)?.wal_gen;
    let mut opened = Vec::new();
    for (gen, path) in segments(dir)? {
        if gen < wal_gen {
            continue;
        }
        if gen != wal_gen + opened.len() as u64 {
            return Ok(None); // a snapshot or a rotation raced the listing
        }
        match File::open(&path) {
            Ok(f) => opened.push((gen, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path)(e)),
        }
    }
    // state.bin still the one read: the segments opened are the ones it needs.
    if opened.is_empty() || fs::read(&snap_path).map_err(StateError::io(&snap_path))? != snap {
        return Ok(None);
    }
    let mut files = vec![(SNAPSHOT.to_string(), snap)];
    for (gen, mut f) in opened {
        let name = segment_name(gen);
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(StateError::io(dir.join(&name)))?;
        files.push((name, bytes));
    }
    Ok(Some(files))
}

/// Copies a state directory, live or not, into `dest` (absent or empty), then replays the copy
/// (cutting a torn tail off it) and returns what it holds.
pub fn backup(dir: &Path, dest: &Path, key: Option<&StateKey>) -> Result<Recovery, StateError> {
    for _ in 0..BACKUP_ATTEMPTS {
        let Some(files) = read_consistent(dir, key)? else {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        };
        empty_target(dest)?;
        for (name, bytes) in &files {
            write_atomic(&dest.join(name), bytes)?;
        }
        let (recovery, _) = read_state(dest, &scratch_store(), true, key)?;
        return Ok(recovery);
    }
    Err(StateError::BackupRaced {
        path: dir.to_path_buf(),
    })
}

/// Checks the backup in `from`, then copies its state files into `dir` (locked). State already
/// in `dir` is refused unless `force`, which moves it to `dir/replaced-<unix time>/`.
pub fn restore(
    from: &Path,
    dir: &Path,
    force: bool,
    key: Option<&StateKey>,
) -> Result<Recovery, StateError> {
    let (_, _) = read_state(from, &scratch_store(), false, key)?;
    create_state_dir(dir)?;
    let _lock = lock_dir(dir)?;
    let mut existing: Vec<PathBuf> = segments(dir)?.into_iter().map(|(_, p)| p).collect();
    if dir.join(SNAPSHOT).exists() {
        existing.push(dir.join(SNAPSHOT));
    }
    if !existing.is_empty() {
        if !force {
            return Err(StateError::TargetNotEmpty {
                path: dir.to_path_buf(),
            });
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = dir.join(format!("replaced-{secs}"));
        fs::create_dir_all(&aside).map_err(StateError::io(&aside))?;
        for p in existing {
            if let Some(name) = p.file_name() {
                fs::rename(&p, aside.join(name)).map_err(StateError::io(&p))?;
            }
        }
    }
    // Segments first, state.bin last: an interrupted restore leaves no state.bin, which start-up
    // refuses (segments past the first), instead of a state.bin without its log.
    for (gen, path) in segments(from)? {
        let bytes = fs::read(&path).map_err(StateError::io(&path))?;
        write_atomic(&dir.join(segment_name(gen)), &bytes)?;
    }
    let snap = fs::read(from.join(SNAPSHOT)).map_err(StateError::io(from.join(SNAPSHOT)))?;
    write_atomic(&dir.join(SNAPSHOT), &snap)?;
    read_state(dir, &scratch_store(), true, key).map(|(r, _)| r)
}
