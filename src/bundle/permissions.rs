//! Owner-only files for what holds users' data: model bundles (every user's aggregates and
//! scores) and the server's state directory.
//!
//! `tiering train` writes each bundle's files `0600` and its directory `0700` (and the binary
//! runs with umask `077`, so everything else it writes is owner-only too); the server creates
//! its state files the same way. At start the server looks for files of the models and state
//! directories that group or others may read or write, and warns about each loudly (it does not
//! refuse: a deployment may knowingly share a models directory with a group, e.g. a trainer
//! account that is not the server's), naming the file, its mode and the fix.

use std::fs;
use std::path::{Path, PathBuf};

/// How deep [`open_to_others`] looks below its root (a bundle's files are two levels down).
const DEPTH: usize = 2;
/// Most files named one by one in the warning.
const NAMED: usize = 10;

/// Files and directories up to two levels below `root` (and `root` itself) whose permission
/// bits grant anything to group or others, with their mode. Symbolic links are not followed;
/// unreadable entries are skipped (nothing to warn about that the caller can read).
pub fn open_to_others(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    visit(root, 0, &mut out);
    out
}

#[cfg(unix)]
fn visit(path: &Path, depth: usize, out: &mut Vec<(PathBuf, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        out.push((path.to_path_buf(), mode));
    }
    if meta.is_dir() && depth < DEPTH {
        if let Ok(entries) = fs::read_dir(path) {
            let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            children.sort();
            for child in children {
                visit(&child, depth + 1, out);
            }
        }
    }
}

#[cfg(not(unix))]
fn visit(_path: &Path, _depth: usize, _out: &mut Vec<(PathBuf, u32)>) {}

/// Logs a warning for each file under `root` open to group or others (see the module docs);
/// `what` names the directory's role ("state directory", "models directory"). Returns how many
/// were found.
pub fn warn_open(root: &Path, what: &str) -> usize {
    let open = open_to_others(root);
    for (path, mode) in open.iter().take(NAMED) {
        tracing::warn!(
            "{what}: {} is accessible to group or others (mode {mode:o}); it holds users' data: `chmod go= {}` (see README \"Data at rest and pseudonyms\")",
            path.display(),
            path.display()
        );
    }
    if open.len() > NAMED {
        tracing::warn!(
            "{what}: {} more files under {} are accessible to group or others: `chmod -R go= {}`",
            open.len() - NAMED,
            root.display(),
            root.display()
        );
    }
    open.len()
}

/// Makes `dir` `0700` and every file and directory below it owner-only (`0600` / `0700`).
pub(crate) fn restrict_tree(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                restrict_tree(&entry.path())?;
            } else if kind.is_file() {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn restricted_trees_have_nothing_open_and_an_opened_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("v1");
        fs::create_dir_all(b.join("sub")).unwrap();
        fs::write(b.join("state.bin"), b"x").unwrap();
        fs::write(b.join("sub/f"), b"x").unwrap();
        restrict_tree(dir.path()).unwrap();
        assert_eq!(open_to_others(dir.path()), vec![]);
        fs::set_permissions(b.join("state.bin"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            open_to_others(dir.path()),
            vec![(b.join("state.bin"), 0o644)]
        );
    }
}
