//! The versioned model bundle on disk.
//!
//! ```text
//! MODELS/
//!   CURRENT                 the live version id (one line); replaced atomically
//!   HISTORY                 version ids in the order they were made current (for rollback)
//!   <version>/
//!     manifest.json         format version, ids, data fingerprint, params, feature schema,
//!                           tier table, metrics, warnings, and the sha256 of every other file
//!     manifest.sha256       sha256 of manifest.json
//!     manifest.sig          when signed: the ed25519 signature of manifest.json and the key id
//!                           (see [`signature`])
//!     model.json            the fitted `Scorer` (scaler, centroids, churn model, calibration)
//!     state.bin             per-user aggregates as of `as_of` (postcard), seeds the server
//!     scores.parquet        every user scored as of `as_of`
//!     report.html           the training report
//! ```
//!
//! A bundle is written to `MODELS/.tmp-<version>` and renamed into place; `CURRENT` changes only
//! after the new bundle loads and validates. Loading checks the format version and every
//! checksum, and fails with a message saying which. A store given verify keys
//! ([`BundleStore::with_verify_keys`]) also refuses a bundle that is not signed by one of them.

use crate::features::{Timestamp, UserAggregate};
use crate::io::atomic::{write_atomic, AtomicError};
use crate::model::Scorer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod manifest;
pub mod permissions;
pub mod signature;
mod tier_values;
pub use manifest::Manifest;
pub use signature::{BundleSigner, SignatureError, SignatureFile, VerifyKeys, MANIFEST_SIG};
pub use tier_values::TierValue;

/// Bumped whenever the on-disk layout or the meaning of a field changes.
///
/// 2 since the per-user aggregates hold refunds (their postcard layout grew); 3 since they hold
/// interests and channels and the snapshot names the categories; 4 since they hold rooms (and
/// three category slots instead of four) and the manifest names the rooms; 5 since they hold
/// the first order day and its spend. Bundles of formats 1 to 4 still load: their `state.bin`
/// is read in the earlier layouts ([`crate::features::UserAggregateV1`] to
/// [`crate::features::UserAggregateV4`]), with no interests or channel mix (formats 1 and 2)
/// or the three highest categories (format 3), and no rooms (formats 1 to 3): they start from
/// the events that follow; a buyer's first order day is unknown (formats 1 to 4).
pub(crate) const FORMAT_VERSION: u32 = 5;
/// The earliest format still loaded.
const FORMAT_V1: u32 = 1;
/// Refunds, before interests and channels.
const FORMAT_V2: u32 = 2;
/// Interests and channels, before rooms.
const FORMAT_V3: u32 = 3;
/// Rooms, before the first order day.
const FORMAT_V4: u32 = 4;

pub const MANIFEST: &str = "manifest.json";
pub(crate) const MANIFEST_SUM: &str = "manifest.sha256";
pub const MODEL: &str = "model.json";
pub const STATE: &str = "state.bin";
pub(crate) const SCORES: &str = "scores.parquet";
pub const REPORT: &str = "report.html";
const CURRENT: &str = "CURRENT";
const HISTORY: &str = "HISTORY";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid {what}: {message}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("{path}: bundle format version {found} is not supported (this build reads version {expected})")]
    FormatVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: checksum mismatch (expected {expected}, found {found}): the file was changed or truncated")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}: file listed in the manifest is missing")]
    Missing { path: PathBuf },
    #[error("no model bundle is current in {0} (train one, or `tiering models promote VERSION`)")]
    NoCurrent(PathBuf),
    #[error("no bundle named {version:?} in {root}")]
    UnknownVersion { root: PathBuf, version: String },
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("nothing to roll back to: {0}")]
    NoRollback(String),
    #[error("invalid version id {0:?}")]
    BadVersionId(String),
    /// `CURRENT` or `HISTORY` could not be replaced atomically.
    #[error(transparent)]
    Atomic(#[from] AtomicError),
    /// Signing failed, or verify keys are set and the bundle is not signed by one of them.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A writer that passes bytes through to `inner` and hashes them on the way, so that a file
/// written whole gets its checksum without being read back. Keeps the first write error (a
/// serializer writing through it may report only that writing failed).
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    failed: Option<std::io::Error>,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.failed.get_or_insert(e);
                Err(kind.into())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hex sha256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

/// Per-user aggregates as of the bundle's `as_of`: what the server starts from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub as_of: Timestamp,
    pub user_ids: Vec<String>,
    pub aggregates: Vec<UserAggregate>,
}

/// A loaded, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub scorer: Scorer,
}

/// A `state.bin` written in the aggregate layout `A` of an earlier format, converted to the
/// current one.
fn snapshot_in<A>(bytes: &[u8]) -> Result<Snapshot, postcard::Error>
where
    A: serde::de::DeserializeOwned + Into<UserAggregate>,
{
    #[derive(Deserialize)]
    struct SnapshotOf<A> {
        as_of: Timestamp,
        user_ids: Vec<String>,
        aggregates: Vec<A>,
    }
    let old: SnapshotOf<A> = postcard::from_bytes(bytes)?;
    Ok(Snapshot {
        as_of: old.as_of,
        user_ids: old.user_ids,
        aggregates: old.aggregates.into_iter().map(Into::into).collect(),
    })
}

impl Bundle {
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Reads the state snapshot (verified against the manifest checksum at load time).
    pub fn load_snapshot(&self) -> Result<Snapshot, BundleError> {
        let path = self.dir.join(STATE);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let found = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = self.manifest.files.get(STATE) {
            if *expected != found {
                return Err(BundleError::Checksum {
                    path,
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let corrupt = |e: postcard::Error| BundleError::Corrupt {
            path: path.clone(),
            what: "state snapshot",
            message: e.to_string(),
        };
        use crate::features::{UserAggregateV1, UserAggregateV2, UserAggregateV3, UserAggregateV4};
        let snap: Snapshot = match self.manifest.format_version {
            FORMAT_V1 => snapshot_in::<UserAggregateV1>(&bytes),
            FORMAT_V2 => snapshot_in::<UserAggregateV2>(&bytes),
            FORMAT_V3 => snapshot_in::<UserAggregateV3>(&bytes),
            FORMAT_V4 => snapshot_in::<UserAggregateV4>(&bytes),
            _ => postcard::from_bytes(&bytes),
        }
        .map_err(corrupt)?;
        if snap.user_ids.len() != snap.aggregates.len() {
            return Err(BundleError::Corrupt {
                path,
                what: "state snapshot",
                message: "ids and aggregates differ in length".into(),
            });
        }
        Ok(snap)
    }
}

/// One row of `tiering models list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: String,
    pub current: bool,
    /// `None` when the bundle does not load (the reason is in `problem`).
    pub created_at: Option<Timestamp>,
    pub problem: Option<String>,
    /// The key id `manifest.sig` names (`None`: unsigned or unreadable). Verified only when the
    /// store has verify keys (a bad signature is then a `problem`).
    pub signed_by: Option<String>,
}

/// What [`BundleStore::prune`] removed (or would remove) and kept, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// The models directory.
#[derive(Debug, Clone)]
pub struct BundleStore {
    pub root: PathBuf,
    /// When set, [`BundleStore::load`] (and so promote, rollback and the server's loader)
    /// refuses a bundle not signed by one of these keys.
    verify_keys: Option<Arc<VerifyKeys>>,
}

fn valid_version_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !v.starts_with('.')
}

/// A bundle being written: files go into a temporary directory until [`PendingBundle::commit`].
pub struct PendingBundle {
    tmp: PathBuf,
    final_dir: PathBuf,
    /// Checksums of files hashed as they were written (by name): the seal takes them instead of
    /// reading the files back.
    sums: std::sync::Mutex<BTreeMap<String, String>>,
}

impl PendingBundle {
    /// Where to write extra files (scores, report) before committing.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Writes model + state + manifest (with checksums of every file in the directory) and
    /// renames the directory into place. Returns the final directory.
    pub fn commit(
        self,
        manifest: Manifest,
        scorer: &Scorer,
        snapshot: &Snapshot,
    ) -> Result<PathBuf, BundleError> {
        self.commit_signed(manifest, scorer, snapshot, None)
    }

    /// [`PendingBundle::commit`], signing the manifest with `signer` when given.
    pub fn commit_signed(
        self,
        manifest: Manifest,
        scorer: &Scorer,
        snapshot: &Snapshot,
        signer: Option<&BundleSigner>,
    ) -> Result<PathBuf, BundleError> {
        self.write_payload(scorer, snapshot)?;
        self.seal_signed(manifest, signer)
    }

    /// Writes `model.json` and `state.bin` (the model and the users' state) into the pending
    /// directory. Takes `&self` so callers can write other files alongside at the same time.
    pub(crate) fn write_payload(
        &self,
        scorer: &Scorer,
        snapshot: &Snapshot,
    ) -> Result<(), BundleError> {
        let model_path = self.tmp.join(MODEL);
        let json = serde_json::to_vec_pretty(scorer).map_err(|e| BundleError::Corrupt {
            path: model_path.clone(),
            what: "model",
            message: e.to_string(),
        })?;
        fs::write(&model_path, json).map_err(io_err(&model_path))?;
        let state_path = self.tmp.join(STATE);
        let sum = write_state(&state_path, snapshot)?;
        self.sums
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(STATE.to_string(), sum);
        Ok(())
    }

    /// Reads `state.bin` back as [`Bundle::load_snapshot`] will (its checksum, then every
    /// aggregate), in the pending directory, so that a trainer can check it while it still
    /// writes other files and then make the bundle current with
    /// [`BundleStore::promote_state_checked`]. `manifest` and `scorer` are the ones to be sealed.
    pub(crate) fn check_state(
        &self,
        manifest: &Manifest,
        scorer: &Scorer,
    ) -> Result<(), BundleError> {
        let sum = self
            .sums
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(STATE)
            .cloned();
        let Some(sum) = sum else {
            return Err(BundleError::Missing {
                path: self.tmp.join(STATE),
            });
        };
        let pending = Bundle {
            dir: self.tmp.clone(),
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                files: BTreeMap::from([(STATE.to_string(), sum)]),
                ..manifest.clone()
            },
            scorer: scorer.clone(),
        };
        pending.load_snapshot().map(drop)
    }

    /// Checksums every file written so far into the manifest, writes it, with a `signer` signs
    /// it into `manifest.sig`, and renames the directory into place (a bundle appears whole and
    /// signed, or not at all).
    pub(crate) fn seal_signed(
        self,
        mut manifest: Manifest,
        signer: Option<&BundleSigner>,
    ) -> Result<PathBuf, BundleError> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&self.tmp).map_err(io_err(&self.tmp))? {
            let entry = entry.map_err(io_err(&self.tmp))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name != MANIFEST && name != MANIFEST_SUM && name != MANIFEST_SIG {
                entries.push((name, entry.path()));
            }
        }
        let known = std::mem::take(
            &mut *self
                .sums
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        manifest.files = entries
            .into_par_iter()
            .map(|(name, path)| match known.get(&name) {
                Some(sum) => Ok((name, sum.clone())),
                None => sha256_file(&path).map(|sum| (name, sum)),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        manifest.format_version = FORMAT_VERSION;
        let mpath = self.tmp.join(MANIFEST);
        let mjson = serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Corrupt {
            path: mpath.clone(),
            what: "manifest",
            message: e.to_string(),
        })?;
        fs::write(&mpath, &mjson).map_err(io_err(&mpath))?;
        let sum_path = self.tmp.join(MANIFEST_SUM);
        fs::write(
            &sum_path,
            format!("{}\n", hex::encode(Sha256::digest(&mjson))),
        )
        .map_err(io_err(&sum_path))?;
        if let Some(signer) = signer {
            signer.sign_dir(&self.tmp)?;
        }
        // Every user's aggregates and scores: owner-only (see `permissions`).
        permissions::restrict_tree(&self.tmp).map_err(io_err(&self.tmp))?;
        if self.final_dir.exists() {
            return Err(BundleError::Exists(self.final_dir.clone()));
        }
        fs::rename(&self.tmp, &self.final_dir).map_err(io_err(&self.final_dir))?;
        Ok(self.final_dir.clone())
    }
}

/// Writes the state snapshot to `path` streamed through a buffer (the bytes of
/// `postcard::to_stdvec`, without holding them all), hashing them on the way; the hex sha256.
fn write_state(path: &Path, snapshot: &Snapshot) -> Result<String, BundleError> {
    let file = fs::File::create(path).map_err(io_err(path))?;
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        HashingWriter {
            inner: file,
            hash: Sha256::new(),
            failed: None,
        },
    );
    let written = postcard::to_io(snapshot, &mut out).map(|_| ());
    let flushed = written.is_ok().then(|| out.flush());
    if let Some(source) = out.get_mut().failed.take() {
        return Err(io_err(path)(source));
    }
    written.map_err(|e| BundleError::Corrupt {
        path: path.to_path_buf(),
        what: "state snapshot",
        message: e.to_string(),
    })?;
    flushed.transpose().map_err(io_err(path))?;
    let hashing = out.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    Ok(hex::encode(hashing.hash.finalize()))
}

impl Drop for PendingBundle {
    fn drop(&mut self) {
        // An abandoned (failed) bundle leaves nothing behind.
        if self.tmp.exists() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

impl BundleStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BundleStore {
            root: root.into(),
            verify_keys: None,
        }
    }

    /// This store, refusing bundles not signed by one of `keys` (`None`: no check).
    pub fn with_verify_keys(mut self, keys: Option<Arc<VerifyKeys>>) -> Self {
        self.verify_keys = keys;
        self
    }

    pub fn verify_keys(&self) -> Option<&VerifyKeys> {
        self.verify_keys.as_deref()
    }

    pub fn dir(&self, version: &str) -> PathBuf {
        self.root.join(version)
    }

    /// Starts writing bundle `version`.
    pub fn begin(&self, version: &str) -> Result<PendingBundle, BundleError> {
        if !valid_version_id(version) {
            return Err(BundleError::BadVersionId(version.to_string()));
        }
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let final_dir = self.dir(version);
        if final_dir.exists() {
            return Err(BundleError::Exists(final_dir));
        }
        let tmp = self.root.join(format!(".tmp-{version}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(PendingBundle {
            tmp,
            final_dir,
            sums: Default::default(),
        })
    }

    /// The current version id, if any.
    pub fn current(&self) -> Result<Option<String>, BundleError> {
        let path = self.root.join(CURRENT);
        match fs::read_to_string(&path) {
            Ok(s) => {
                let v = s.trim().to_string();
                if v.is_empty() {
                    Ok(None)
                } else if valid_version_id(&v) {
                    Ok(Some(v))
                } else {
                    Err(BundleError::Corrupt {
                        path,
                        what: "CURRENT pointer",
                        message: format!("{v:?} is not a version id"),
                    })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BundleError::Io { path, source: e }),
        }
    }

    /// Loads and verifies a bundle: manifest checksum, signature (with verify keys), format
    /// version, file checksums (state.bin is checked when it is read), model shapes.
    pub fn load(&self, version: &str) -> Result<Bundle, BundleError> {
        let (dir, manifest) = self.verified_manifest(version)?;
        Self::load_files(dir, manifest)
    }

    /// The training report (`report.html`) of bundle `version`: the version id checked as
    /// everywhere, the manifest verified as [`BundleStore::load`] does (checksum, signature),
    /// and the bytes returned are the bytes checked against the manifest's checksum.
    pub fn report(&self, version: &str) -> Result<Vec<u8>, BundleError> {
        let (dir, manifest) = self.verified_manifest(version)?;
        let path = dir.join(REPORT);
        let Some(expected) = manifest.files.get(REPORT) else {
            return Err(BundleError::Missing { path });
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::Missing { path })
            }
            Err(source) => return Err(BundleError::Io { path, source }),
        };
        let found = hex::encode(Sha256::digest(&bytes));
        if *expected != found {
            return Err(BundleError::Checksum {
                path,
                expected: expected.clone(),
                found,
            });
        }
        Ok(bytes)
    }

    /// The directory and manifest of bundle `version`, checked: a valid version id, the
    /// manifest's checksum, its signature (with verify keys), a format this build reads.
    fn verified_manifest(&self, version: &str) -> Result<(PathBuf, Manifest), BundleError> {
        if !valid_version_id(version) {
            return Err(BundleError::BadVersionId(version.to_string()));
        }
        let dir = self.dir(version);
        if !dir.is_dir() {
            return Err(BundleError::UnknownVersion {
                root: self.root.clone(),
                version: version.to_string(),
            });
        }
        let mpath = dir.join(MANIFEST);
        let mbytes = fs::read(&mpath).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BundleError::Missing {
                path: mpath.clone(),
            },
            _ => BundleError::Io {
                path: mpath.clone(),
                source: e,
            },
        })?;
        let sum_path = dir.join(MANIFEST_SUM);
        let expected = fs::read_to_string(&sum_path)
            .map_err(io_err(&sum_path))?
            .trim()
            .to_string();
        let found = hex::encode(Sha256::digest(&mbytes));
        if expected != found {
            return Err(BundleError::Checksum {
                path: mpath,
                expected,
                found,
            });
        }
        if let Some(keys) = &self.verify_keys {
            // Over the very bytes parsed below, so what is checked is what is used.
            keys.verify(&dir, &mbytes)?;
        }
        // Read the format version before the rest, so a newer format says so instead of
        // failing on an unknown field.
        #[derive(Deserialize)]
        struct Probe {
            format_version: u32,
        }
        let probe: Probe = serde_json::from_slice(&mbytes).map_err(|e| BundleError::Corrupt {
            path: mpath.clone(),
            what: "manifest",
            message: e.to_string(),
        })?;
        if ![FORMAT_VERSION, FORMAT_V4, FORMAT_V3, FORMAT_V2, FORMAT_V1]
            .contains(&probe.format_version)
        {
            return Err(BundleError::FormatVersion {
                path: mpath,
                found: probe.format_version,
                expected: FORMAT_VERSION,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&mbytes).map_err(|e| BundleError::Corrupt {
                path: mpath.clone(),
                what: "manifest",
                message: e.to_string(),
            })?;
        Ok((dir, manifest))
    }

    /// The rest of [`BundleStore::load`] once the manifest is verified.
    fn load_files(dir: PathBuf, manifest: Manifest) -> Result<Bundle, BundleError> {
        for (name, sum) in &manifest.files {
            if name == STATE {
                continue; // large; verified when read
            }
            let p = dir.join(name);
            if !p.exists() {
                return Err(BundleError::Missing { path: p });
            }
            let found = sha256_file(&p)?;
            if found != *sum {
                return Err(BundleError::Checksum {
                    path: p,
                    expected: sum.clone(),
                    found,
                });
            }
        }
        for required in [MODEL, STATE] {
            if !manifest.files.contains_key(required) {
                return Err(BundleError::Missing {
                    path: dir.join(required),
                });
            }
        }
        let model_path = dir.join(MODEL);
        let model_bytes = fs::read(&model_path).map_err(io_err(&model_path))?;
        // The bytes parsed are the bytes checked: a file swapped after the loop above checked
        // it (a race a signature alone would not stop) is caught here.
        let found = hex::encode(Sha256::digest(&model_bytes));
        if manifest.files.get(MODEL) != Some(&found) {
            return Err(BundleError::Checksum {
                path: model_path,
                expected: manifest.files.get(MODEL).cloned().unwrap_or_default(),
                found,
            });
        }
        let scorer: Scorer =
            serde_json::from_slice(&model_bytes).map_err(|e| BundleError::Corrupt {
                path: model_path.clone(),
                what: "model",
                message: e.to_string(),
            })?;
        scorer.validate().map_err(|e| BundleError::Corrupt {
            path: model_path,
            what: "model",
            message: e.to_string(),
        })?;
        Ok(Bundle {
            dir,
            manifest,
            scorer,
        })
    }

    pub fn load_current(&self) -> Result<Bundle, BundleError> {
        let v = self
            .current()?
            .ok_or_else(|| BundleError::NoCurrent(self.root.clone()))?;
        self.load(&v)
    }

    /// Makes `version` current after loading and verifying it (including its state file).
    pub fn promote(&self, version: &str) -> Result<Bundle, BundleError> {
        let bundle = self.load(version)?;
        bundle.load_snapshot()?;
        self.make_current(version)?;
        Ok(bundle)
    }

    /// [`BundleStore::promote`] of a bundle whose state file its writer read back and checked
    /// ([`PendingBundle::check_state`]) before sealing it: everything else is verified as
    /// `promote` does (the manifest's checksum and signature, every other file's checksum, the
    /// model), the state file is not read a second time.
    pub(crate) fn promote_state_checked(&self, version: &str) -> Result<Bundle, BundleError> {
        let bundle = self.load(version)?;
        self.make_current(version)?;
        Ok(bundle)
    }

    /// Appends `version` to the history and points `CURRENT` at it.
    fn make_current(&self, version: &str) -> Result<(), BundleError> {
        let hist_path = self.root.join(HISTORY);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&hist_path)
            .map_err(io_err(&hist_path))?;
        writeln!(f, "{version}").map_err(io_err(&hist_path))?;
        f.sync_all().map_err(io_err(&hist_path))?;
        write_atomic(&self.root.join(CURRENT), format!("{version}\n").as_bytes())?;
        Ok(())
    }

    /// Makes the version that was current before the current one current again.
    pub fn rollback(&self) -> Result<Bundle, BundleError> {
        let current = self
            .current()?
            .ok_or_else(|| BundleError::NoRollback("no current version".into()))?;
        let hist_path = self.root.join(HISTORY);
        let history = fs::read_to_string(&hist_path).unwrap_or_default();
        let target = history
            .lines()
            .map(str::trim)
            .rfind(|v| !v.is_empty() && *v != current && self.dir(v).is_dir())
            .map(str::to_string)
            .ok_or_else(|| {
                BundleError::NoRollback(format!(
                    "no earlier version than {current} in {}",
                    hist_path.display()
                ))
            })?;
        // Drop the current version's trailing entries so repeated rollbacks walk further back.
        let mut lines: Vec<&str> = history
            .lines()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        while lines.last().is_some_and(|v| *v == current) {
            lines.pop();
        }
        let bundle = self.load(&target)?;
        bundle.load_snapshot()?;
        write_atomic(&hist_path, (lines.join("\n") + "\n").as_bytes())?;
        write_atomic(&self.root.join(CURRENT), format!("{target}\n").as_bytes())?;
        Ok(bundle)
    }

    /// Deletes every bundle but the current one and the `keep` newest others (version ids sort
    /// by creation time): the retention rule that bounds how long ids of erased users stay in
    /// bundles' `scores.parquet` and `state.bin` (README, "Ids inside existing bundles").
    /// With `dry_run` nothing is touched and the answer says what would go.
    ///
    /// A bundle is first renamed to a hidden `.pruned-VERSION` (listing, loading and rollback
    /// skip hidden names) and then deleted, so a crash half-way through a deletion never leaves
    /// a half-deleted bundle under its own name; hidden leftovers of a crashed prune
    /// (`.pruned-*`) or of a crashed training (`.tmp-*`) are deleted too.
    pub fn prune(&self, keep: usize, dry_run: bool) -> Result<Pruned, BundleError> {
        let current = self.current()?;
        let mut versions = Vec::new();
        let mut leftovers = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pruned::default()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !entry.path().is_dir() {
                continue;
            }
            if name.starts_with(".pruned-") || name.starts_with(".tmp-") {
                leftovers.push(entry.path());
            } else if valid_version_id(&name) {
                versions.push(name);
            }
        }
        versions.sort();
        let mut out = Pruned::default();
        let mut others = 0;
        for v in versions.into_iter().rev() {
            if current.as_deref() == Some(v.as_str()) {
                out.kept.push(v);
            } else if others < keep {
                others += 1;
                out.kept.push(v);
            } else {
                out.removed.push(v);
            }
        }
        out.kept.reverse();
        out.removed.reverse();
        if dry_run {
            return Ok(out);
        }
        for v in &out.removed {
            let hidden = self.root.join(format!(".pruned-{v}"));
            let dir = self.dir(v);
            fs::rename(&dir, &hidden).map_err(io_err(&dir))?;
            leftovers.push(hidden);
        }
        for dir in &leftovers {
            fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(out)
    }

    /// Every bundle directory, oldest first (version ids sort by creation time).
    pub fn list(&self) -> Result<Vec<VersionInfo>, BundleError> {
        let current = self.current().ok().flatten();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(BundleError::Io {
                    path: self.root.clone(),
                    source: e,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !entry.path().is_dir() || name.starts_with('.') {
                continue;
            }
            let (created_at, problem) = match self.load(&name) {
                Ok(b) => (Some(b.manifest.created_at), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let signed_by = SignatureFile::read(&entry.path())
                .ok()
                .flatten()
                .map(|s| s.key_id);
            out.push(VersionInfo {
                signed_by,
                current: current.as_deref() == Some(name.as_str()),
                version: name,
                created_at,
                problem,
            });
        }
        out.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(users: usize) -> Snapshot {
        let aggregates = (0..users)
            .map(|u| {
                let mut a = UserAggregate::with_registration(Some(1_700_000_000 + u as i64));
                a.apply(&crate::features::Event {
                    ts: 1_700_100_000 + u as i64,
                    kind: crate::features::EventKind::Order,
                    amount: 12.5 + u as f64,
                    watch_seconds: 0,
                    room: 7,
                    category: 9 + u as u32 % 3,
                    order: 0,
                    channel: 0,
                });
                a
            })
            .collect();
        Snapshot {
            as_of: 1_700_200_000,
            user_ids: (0..users).map(|u| format!("user-{u}")).collect(),
            aggregates,
        }
    }

    /// The streamed state file holds exactly the bytes `postcard::to_stdvec` gives (the
    /// format readers expect), and the checksum taken on the way is theirs.
    #[test]
    fn the_streamed_state_file_is_the_postcard_bytes_and_its_sum_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE);
        // More than the 1 MiB buffer, so that it is written in several pieces.
        let snap = snapshot(20_000);
        let sum = write_state(&path, &snap).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.len() > 1 << 20, "{}", bytes.len());
        assert_eq!(bytes, postcard::to_stdvec(&snap).unwrap());
        assert_eq!(sum, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(sum, sha256_file(&path).unwrap());
    }

    /// The state file is read back in the pending directory as `load_snapshot` reads it: the
    /// file as written passes; with one byte changed after it was written, the check fails
    /// (its checksum, naming the file) before anything is sealed; the sealed bundle is made
    /// current and serves the same snapshot.
    #[test]
    fn the_state_file_is_checked_before_sealing_and_a_changed_byte_fails_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::new(dir.path());
        let scorer = crate::model::scorer::tests::toy_scorer();
        let version = "20261202T120000Z-0123abcd";
        let manifest = Manifest::new(version, 1_700_300_000);
        let snap = snapshot(100);
        let pending = store.begin(version).unwrap();
        pending.write_payload(&scorer, &snap).unwrap();
        pending.check_state(&manifest, &scorer).unwrap();
        let path = pending.path(STATE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        match pending.check_state(&manifest, &scorer) {
            Err(BundleError::Checksum { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        pending.seal_signed(manifest, None).unwrap();
        let bundle = store.promote_state_checked(version).unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some(version));
        assert_eq!(bundle.load_snapshot().unwrap(), snap);
    }

    /// A failing write names the file and keeps the system's cause (here: no space left).
    #[test]
    fn a_state_file_that_cannot_be_written_is_an_io_error_with_its_cause() {
        let full = Path::new("/dev/full");
        match write_state(full, &snapshot(10)) {
            Err(BundleError::Io { path, source }) => {
                assert_eq!(path, full);
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{source}");
            }
            other => panic!("{other:?}"),
        }
    }
}
