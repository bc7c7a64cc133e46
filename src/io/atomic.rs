//! One atomic file write: a reader sees the old file or the whole new one, never a part.
//!
//! The bytes go to a temporary file in the target's directory (same file system, so the rename
//! is atomic), which is synced, renamed over the target, and then the directory is synced so the
//! rename itself survives a crash. A temporary file that is never committed (an error, a dropped
//! writer, a failed step) is removed.
//!
//! - [`write_atomic`]: a whole file from bytes in memory.
//! - [`AtomicFile`]: a [`Write`] for streaming writers; [`AtomicFile::commit`] puts it in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A step of an atomic write that failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("cannot create a temporary file {} for {}", .temp.display(), .path.display())]
    Create {
        path: PathBuf,
        temp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot flush {} to disk", .path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move {} into place as {}", .temp.display(), .path.display())]
    Rename {
        path: PathBuf,
        temp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is in place, but its directory cannot be flushed to disk", .path.display())]
    SyncDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|source| AtomicError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    file.commit()
}

/// Temporary files made by this process so far: two writers of one target get distinct names.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name next to its target: write to it, then
/// [`AtomicFile::commit`]. Dropped uncommitted, it removes its temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    temp: PathBuf,
    /// `None` once committed.
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file `.<name>.tmp-<pid>-<n>` in `path`'s directory (which must
    /// exist). Nothing is under `path` until [`AtomicFile::commit`].
    pub fn create(path: &Path) -> Result<AtomicFile, AtomicError> {
        let name = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|source| AtomicError::Create {
                path: path.to_path_buf(),
                temp: temp.clone(),
                source,
            })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// The target: where the file will be once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file the bytes go to until the commit.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Syncs the data, renames the temporary file over the target, syncs the directory.
    pub fn commit(mut self) -> Result<(), AtomicError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let path = &self.path;
        // `Drop` no longer removes the temporary file (`file` is taken): each failure below does.
        let synced = file.sync_all();
        drop(file);
        if let Err(source) = synced {
            let _ = fs::remove_file(&self.temp);
            return Err(AtomicError::Sync {
                path: path.clone(),
                source,
            });
        }
        if let Err(source) = fs::rename(&self.temp, path) {
            let _ = fs::remove_file(&self.temp);
            return Err(AtomicError::Rename {
                path: path.clone(),
                temp: self.temp.clone(),
                source,
            });
        }
        sync_parent(path).map_err(|source| AtomicError::SyncDir {
            path: path.clone(),
            source,
        })
    }

    fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the file was already committed"))
    }
}

impl Write for AtomicFile {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all(buf)
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Makes a rename in `path`'s directory durable (a no-op where directories cannot be opened).
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

/// Makes the entries of directory `dir` durable (files created, renamed or removed in it); a
/// no-op where directories cannot be opened.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("CURRENT");
        write_atomic(&path, b"v1\n").unwrap();
        write_atomic(&path, b"v2\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"v2\n");
        assert_eq!(names(dir.path()), ["CURRENT"]);
    }

    #[test]
    fn nothing_is_under_the_target_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.csv");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"a,b\n").unwrap();
        assert!(!path.exists());
        assert!(f.temp_path().exists());
        assert_eq!(f.temp_path().parent(), path.parent());
        f.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"a,b\n");
        assert_eq!(names(dir.path()), ["scores.csv"]);
    }

    #[test]
    fn a_dropped_file_removes_its_temporary_and_keeps_the_old_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.csv");
        write_atomic(&path, b"old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new, half written").unwrap();
        drop(f);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["events.csv"]);
    }

    #[test]
    fn two_writers_of_one_target_do_not_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let a = AtomicFile::create(&path).unwrap();
        let b = AtomicFile::create(&path).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
    }

    #[test]
    fn errors_name_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/dir/file.csv");
        let e = write_atomic(&path, b"x").unwrap_err();
        assert!(matches!(e, AtomicError::Create { .. }));
        assert!(e.to_string().contains("file.csv"), "{e}");
        // A directory in the way of the rename.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        let e = write_atomic(&blocked, b"x").unwrap_err();
        assert!(matches!(e, AtomicError::Rename { .. }), "{e:?}");
        assert_eq!(names(dir.path()), ["blocked"]);
    }
}
