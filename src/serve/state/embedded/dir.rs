//! The state directory: its names, its lock, its log segments, and writing a snapshot into it.
//! Reading it back at start is [`super::wal::replay`].
//!
//! ```text
//! STATE_DIR/
//!   LOCK                 flock(2)ed by the running server: two servers never share a state dir
//!   state.bin            the latest snapshot: every user's aggregate, and the first log segment
//!                        it does not cover (`wal_gen`)
//!   wal-<gen>.log        log segments, replayed in order from `wal_gen` on start
//! ```
//!
//! Every user's aggregates are in these files, so the directory is created `0700` and every file
//! `0600` whatever the umask; at start the server warns about any of them that group or others
//! may access ([`crate::bundle::permissions`]).

use crate::io::atomic::write_atomic;
use crate::serve::state::StateError;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// The snapshot's file name.
pub const SNAPSHOT: &str = "state.bin";
const LOCK: &str = "LOCK";

pub(crate) fn segment_name(gen: u64) -> String {
    format!("wal-{gen:016}.log")
}

fn parse_segment(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Log segments in the directory, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StateError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(StateError::io(dir))? {
        let entry = entry.map_err(StateError::io(dir))?;
        if let Some(gen) = entry.file_name().to_str().and_then(parse_segment) {
            out.push((gen, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Owner-only permission bits for a new state file.
#[cfg(unix)]
fn owner_only(opts: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    opts.mode(0o600)
}

#[cfg(not(unix))]
fn owner_only(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts
}

/// Creates the state directory (and missing parents) `0700`; an existing one is left as it is
/// (the start-up check warns if it is open to others).
pub(crate) fn create_state_dir(dir: &Path) -> Result<(), StateError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(StateError::io(dir))
}

/// Warns about state files that group or others may access (see the module docs).
pub(crate) fn warn_open_permissions(dir: &Path) {
    crate::bundle::permissions::warn_open(dir, "state directory");
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    crate::io::atomic::sync_dir(dir).map_err(StateError::io(dir))
}

/// Takes the directory's lock (`LOCK`, flock(2)): [`StateError::Locked`] while another
/// running server holds it.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let path = dir.join(LOCK);
    let file = owner_only(OpenOptions::new().create(true).truncate(false).write(true))
        .open(&path)
        .map_err(StateError::io(&path))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(StateError::Locked { path });
        }
    }
    Ok(file)
}

/// Opens (creating) segment `gen` for appending, and makes its directory entry durable.
pub(crate) fn open_segment(dir: &Path, gen: u64) -> Result<File, StateError> {
    let path = dir.join(segment_name(gen));
    let file = owner_only(OpenOptions::new().create(true).append(true))
        .open(&path)
        .map_err(StateError::io(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `state.bin` atomically and deletes the segments it covers.
pub(crate) fn write_snapshot(
    dir: &Path,
    bytes: &[u8],
    covers_below: u64,
) -> Result<(), StateError> {
    // A failed write (a full disk) removes its temporary file and gives the space back: the old
    // snapshot and its segments stay valid.
    let path = dir.join(SNAPSHOT);
    write_atomic(&path, bytes)?;
    #[cfg(unix)]
    {
        // write_atomic creates with the process umask (the binary's is 077); a library user's
        // may be wider.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(StateError::io(&path))?;
    }
    for (gen, seg) in segments(dir)? {
        if gen < covers_below {
            fs::remove_file(&seg).map_err(StateError::io(&seg))?;
        }
    }
    Ok(())
}
