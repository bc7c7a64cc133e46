//! The privacy key, the keyed hash of a user id, and the two durable lists built on it: the
//! suppression list (erased ids) and the objection list (ids whose person objected to
//! profiling).
//!
//! Neither list stores a raw id: an entry is `HMAC-SHA256(privacy key, user id)` in hex. Ids are
//! usually guessable (`u000123`), so a plain hash would be reversed by trying them all; with the
//! key, membership can be tested only by whoever holds the key (the server, training), and the
//! list can be copied next to a training job without handing out who asked to be erased. The
//! audit log carries the same hash, so an audit entry can be matched to a list entry.
//!
//! The key comes from `privacy_key_file`, else the `TIERING_PRIVACY_KEY` environment variable
//! (64 hex digits, or any text of at least 16 bytes), else — embedded state only — a random key
//! generated once into `STATE/privacy/key` (mode 0600). A Redis state's replicas must share one
//! key, so there it must be configured.
//!
//! Files (embedded state): `STATE/privacy/erased` and `STATE/privacy/objected`, one hex hash
//! per line, `#` comments; rewritten atomically (temporary file, fsync, rename, directory
//! fsync) on each change. Training reads `erased` (`tiering train --suppress STATE`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The environment variable holding the privacy key when no file is configured.
pub const KEY_ENV: &str = "TIERING_PRIVACY_KEY";
/// The directory of the privacy files inside a state directory.
pub const DIR: &str = "privacy";
/// The generated key's file name inside [`DIR`].
pub const KEY_FILE: &str = "key";
/// The suppression list's file name inside [`DIR`].
pub const ERASED_FILE: &str = "erased";
/// The objection list's file name inside [`DIR`].
pub const OBJECTED_FILE: &str = "objected";

const HEADER: &str =
    "# tiering privacy list: HMAC-SHA256(privacy key, user id) in hex, one per line\n";

/// Why the privacy key or a list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] crate::io::atomic::AtomicError),
    /// A key shorter than 16 bytes.
    #[error("{what}: the privacy key is too short (64 hex digits, or at least 16 bytes of text)")]
    ShortKey { what: String },
    /// A list line that is not 64 hex digits.
    #[error("{}: line {line}: not a 64-digit hex hash", path.display())]
    BadLine { path: PathBuf, line: usize },
    /// A Redis state without a configured key.
    #[error("no privacy key: set privacy_key_file or {KEY_ENV} (a Redis state's replicas must share one key)")]
    NoKey,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivacyError + '_ {
    move |source| PrivacyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the key came from (for the start-up log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env,
    Generated(PathBuf),
}

/// The HMAC key of the keyed hashes.
#[derive(Clone)]
pub struct PrivacyKey(Vec<u8>);

impl std::fmt::Debug for PrivacyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivacyKey(..)")
    }
}

impl PrivacyKey {
    /// A key from text: 64 hex digits, or the text's bytes (at least 16).
    pub fn parse(text: &str, what: &str) -> Result<PrivacyKey, PrivacyError> {
        let t = text.trim();
        if t.len() == 64 {
            if let Ok(b) = hex::decode(t) {
                return Ok(PrivacyKey(b));
            }
        }
        if t.len() < 16 {
            return Err(PrivacyError::ShortKey {
                what: what.to_string(),
            });
        }
        Ok(PrivacyKey(t.as_bytes().to_vec()))
    }

    /// The key from `file`, else from `env` (the value of [`KEY_ENV`]), else generated once into
    /// `generate_in/privacy/key` when a directory is given; [`PrivacyError::NoKey`] otherwise.
    pub fn load(
        file: Option<&Path>,
        env: Option<String>,
        generate_in: Option<&Path>,
    ) -> Result<(PrivacyKey, KeySource), PrivacyError> {
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).map_err(io(f))?;
            let key = PrivacyKey::parse(&text, &f.display().to_string())?;
            return Ok((key, KeySource::File(f.to_path_buf())));
        }
        if let Some(v) = env.filter(|v| !v.trim().is_empty()) {
            return Ok((PrivacyKey::parse(&v, KEY_ENV)?, KeySource::Env));
        }
        let Some(state) = generate_in else {
            return Err(PrivacyError::NoKey);
        };
        let dir = state.join(DIR);
        let path = dir.join(KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let key = PrivacyKey::parse(&text, &path.display().to_string())?;
            return Ok((key, KeySource::Generated(path)));
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let text = hex::encode(rand::random::<[u8; 32]>());
        write_private(&path, format!("{text}\n").as_bytes())?;
        Ok((
            PrivacyKey::parse(&text, "generated")?,
            KeySource::Generated(path),
        ))
    }

    /// The keyed hash of `id`.
    pub fn hash(&self, id: &str) -> IdHash {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(id.as_bytes());
        IdHash(mac.finalize().into_bytes().into())
    }
}

/// Writes a file readable by its owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PrivacyError> {
    crate::io::atomic::write_atomic(path, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

/// `HMAC-SHA256(privacy key, user id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdHash(pub [u8; 32]);

impl IdHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<IdHash> {
        let b = hex::decode(s.trim()).ok()?;
        Some(IdHash(b.try_into().ok()?))
    }
}

/// A set of keyed hashes, as a file holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashList(pub HashSet<IdHash>);

impl HashList {
    /// Reads a list file; a missing file is an empty list.
    pub fn read(path: &Path) -> Result<HashList, PrivacyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashList::default()),
            Err(e) => return Err(io(path)(e)),
        };
        let mut set = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let h = IdHash::from_hex(l).ok_or_else(|| PrivacyError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
            })?;
            set.insert(h);
        }
        Ok(HashList(set))
    }

    /// Replaces the file with this list (sorted, so equal lists are equal files).
    pub fn write(&self, path: &Path) -> Result<(), PrivacyError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut lines: Vec<String> = self.0.iter().map(IdHash::to_hex).collect();
        lines.sort();
        let mut out = String::from(HEADER);
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        write_private(path, out.as_bytes())
    }

    pub fn contains(&self, h: &IdHash) -> bool {
        self.0.contains(h)
    }
}

/// What training and offline scoring drop: the erased ids of a suppression list with its key.
#[derive(Debug, Clone)]
pub struct Suppression {
    key: PrivacyKey,
    erased: HashList,
    /// The objection list beside it (`objected`), when there is one: offline scoring leaves
    /// those users out too (training keeps them: objection is not erasure).
    objected: HashList,
}

impl Suppression {
    /// From `path`: a state directory (its `privacy/erased`), a `privacy` directory, or a list
    /// file. The key: `key_file`, else [`KEY_ENV`], else the `key` file beside the list.
    pub fn load(path: &Path, key_file: Option<&Path>) -> Result<Suppression, PrivacyError> {
        let list = if path.join(DIR).join(ERASED_FILE).exists() || path.join(DIR).is_dir() {
            path.join(DIR).join(ERASED_FILE)
        } else if path.is_dir() {
            path.join(ERASED_FILE)
        } else {
            path.to_path_buf()
        };
        let beside = list.with_file_name(KEY_FILE);
        let env = std::env::var(KEY_ENV).ok();
        let file = match key_file {
            Some(f) => Some(f.to_path_buf()),
            None if env.is_none() && beside.exists() => Some(beside),
            None => None,
        };
        let (key, _) = PrivacyKey::load(file.as_deref(), env, None)?;
        if !list.exists() {
            return Err(io(&list)(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            )));
        }
        let erased = HashList::read(&list)?;
        let objected = HashList::read(&list.with_file_name(OBJECTED_FILE))?;
        Ok(Suppression {
            key,
            erased,
            objected,
        })
    }

    pub fn new(key: PrivacyKey, erased: HashList) -> Suppression {
        Suppression {
            key,
            erased,
            objected: HashList::default(),
        }
    }

    /// True when `id` is erased or objected to profiling (what a score output leaves out).
    pub fn unscorable(&self, id: &str) -> bool {
        if self.erased.0.is_empty() && self.objected.0.is_empty() {
            return false;
        }
        let h = self.key.hash(id);
        self.erased.contains(&h) || self.objected.contains(&h)
    }

    /// True when `id` is on the list.
    pub fn suppressed(&self, id: &str) -> bool {
        !self.erased.0.is_empty() && self.erased.contains(&self.key.hash(id))
    }

    /// Ids on the list.
    pub fn len(&self) -> usize {
        self.erased.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.erased.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_round_trips_without_the_raw_ids_and_the_hash_depends_on_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, source) = PrivacyKey::load(None, None, Some(dir.path())).unwrap();
        assert!(matches!(source, KeySource::Generated(_)));
        let (again, _) = PrivacyKey::load(None, None, Some(dir.path())).unwrap();
        assert_eq!(key.hash("user-7"), again.hash("user-7"));
        let other = PrivacyKey::parse(&"ab".repeat(32), "t").unwrap();
        assert_ne!(key.hash("user-7"), other.hash("user-7"));
        let path = dir.path().join(DIR).join(ERASED_FILE);
        let list = HashList([key.hash("user-7")].into_iter().collect());
        list.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("user-7"), "{text}");
        assert_eq!(HashList::read(&path).unwrap(), list);
        let s = Suppression::load(dir.path(), None).unwrap();
        assert!(s.suppressed("user-7"));
        assert!(!s.suppressed("user-8"));
        assert!(PrivacyKey::parse("short", "t").is_err());
        assert!(PrivacyKey::load(None, None, None).is_err());
    }
}
