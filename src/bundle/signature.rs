//! Signed bundles: an ed25519 signature over `manifest.json`, in `manifest.sig`.
//!
//! The manifest carries the sha256 of every other file of the bundle, so a signature over its
//! exact bytes covers the whole bundle: a changed model file fails its checksum, and a manifest
//! rewritten with fresh checksums (the attack unkeyed sums cannot stop) fails the signature.
//!
//! - [`BundleSigner`]: the private key, read from a PKCS#8 PEM file that only its owner may
//!   read (like ssh, a key file readable by group or others is refused). Training signs with it.
//! - [`VerifyKeys`]: the public keys (SubjectPublicKeyInfo PEM) a server or `tiering models`
//!   accepts; several for rotation, given as files or directories of `*.pub` files.
//! - [`generate_key_pair`]: `tiering keys generate`.
//!
//! `manifest.sig` is JSON: `{"algorithm":"ed25519","key_id":"…","signature":"<hex>"}`. The key
//! id is the first 16 hex digits of the sha256 of the raw 32-byte public key; it only picks the
//! key to verify with (a wrong id fails like a wrong signature).

use crate::io::atomic::{write_atomic, AtomicError};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The signature file beside `manifest.json`.
pub const MANIFEST_SIG: &str = "manifest.sig";
const ALGORITHM: &str = "ed25519";
/// The extension of public key files read from a verify-key directory.
pub const PUBLIC_KEY_EXT: &str = "pub";

/// Why a key could not be read or written, or a bundle's signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the private key is readable by group or others (mode {mode:03o}); a signing key must be readable by its owner only: `chmod 600 {}`", .path.display(), .path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{}: not an ed25519 private key in PKCS#8 PEM (`tiering keys generate` writes one): {message}", .path.display())]
    BadPrivateKey { path: PathBuf, message: String },
    #[error("{}: not an ed25519 public key in PEM (SubjectPublicKeyInfo, as `tiering keys generate` writes): {message}", .path.display())]
    BadPublicKey { path: PathBuf, message: String },
    #[error("{}: no public key file (*.{PUBLIC_KEY_EXT}) in the directory", .0.display())]
    NoKeysInDir(PathBuf),
    #[error("no verify key given")]
    NoKeys,
    #[error("{} already exists: not overwriting a key", .0.display())]
    KeyExists(PathBuf),
    #[error("encoding the key pair: {0}")]
    Encode(String),
    #[error(transparent)]
    Atomic(#[from] AtomicError),
    #[error("{}: the bundle is not signed (no {MANIFEST_SIG}), and only bundles signed by a verify key ({keys}) are accepted", .dir.display())]
    Unsigned { dir: PathBuf, keys: String },
    #[error("{}: not a valid signature file: {message}", .path.display())]
    BadSignatureFile { path: PathBuf, message: String },
    #[error("{}: signed by key {key_id}, which is not a verify key ({keys})", .dir.display())]
    UnknownKey {
        dir: PathBuf,
        key_id: String,
        keys: String,
    },
    #[error("{}: the signature by key {key_id} does not match manifest.json: the bundle was changed after it was signed", .dir.display())]
    Invalid { dir: PathBuf, key_id: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SignatureError + '_ {
    move |source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The key id of a public key: the first 16 hex digits of the sha256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// The content of `manifest.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub algorithm: String,
    pub key_id: String,
    /// The 64-byte ed25519 signature, hex.
    pub signature: String,
}

impl SignatureFile {
    /// Reads `dir/manifest.sig`; `None` when the bundle is not signed.
    pub fn read(dir: &Path) -> Result<Option<SignatureFile>, SignatureError> {
        let path = dir.join(MANIFEST_SIG);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SignatureError::Io { path, source: e }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SignatureError::BadSignatureFile {
                path,
                message: e.to_string(),
            })
    }

    /// The signature bytes, checked for algorithm and length.
    fn signature(&self, path: &Path) -> Result<Signature, SignatureError> {
        let bad = |message: String| SignatureError::BadSignatureFile {
            path: path.to_path_buf(),
            message,
        };
        if self.algorithm != ALGORITHM {
            return Err(bad(format!(
                "algorithm {:?} (this build verifies {ALGORITHM})",
                self.algorithm
            )));
        }
        let bytes = hex::decode(&self.signature).map_err(|e| bad(e.to_string()))?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| bad(format!("{} signature bytes, not 64", b.len())))?;
        Ok(Signature::from_bytes(&bytes))
    }
}

/// The private key training signs bundles with.
#[derive(Clone)]
pub struct BundleSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for BundleSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl BundleSigner {
    pub fn new(key: SigningKey) -> BundleSigner {
        let key_id = key_id(&key.verifying_key());
        BundleSigner { key, key_id }
    }

    /// Reads a PKCS#8 PEM private key file, refusing one that group or others may read.
    pub fn from_file(path: &Path) -> Result<BundleSigner, SignatureError> {
        let file = fs::File::open(path).map_err(io_err(path))?;
        check_private(path, &file)?;
        let text = std::io::read_to_string(file).map_err(io_err(path))?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| SignatureError::BadPrivateKey {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(BundleSigner::new(key))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signature file for these manifest bytes.
    pub fn sign(&self, manifest: &[u8]) -> SignatureFile {
        SignatureFile {
            algorithm: ALGORITHM.into(),
            key_id: self.key_id.clone(),
            signature: hex::encode(self.key.sign(manifest).to_bytes()),
        }
    }

    /// Signs `dir/manifest.json` into `dir/manifest.sig` (written atomically).
    pub fn sign_dir(&self, dir: &Path) -> Result<(), SignatureError> {
        let mpath = dir.join(super::MANIFEST);
        let manifest = fs::read(&mpath).map_err(io_err(&mpath))?;
        let sig = serde_json::to_vec_pretty(&self.sign(&manifest))
            .map_err(|e| SignatureError::Encode(e.to_string()))?;
        write_atomic(&dir.join(MANIFEST_SIG), &sig)?;
        Ok(())
    }
}

#[cfg(unix)]
fn check_private(path: &Path, file: &fs::File) -> Result<(), SignatureError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata().map_err(io_err(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SignatureError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _file: &fs::File) -> Result<(), SignatureError> {
    Ok(())
}

/// The public keys bundles must be signed by (any one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl VerifyKeys {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Result<VerifyKeys, SignatureError> {
        let mut out: Vec<(String, VerifyingKey)> = Vec::new();
        for k in keys {
            let id = key_id(&k);
            if !out.iter().any(|(i, _)| *i == id) {
                out.push((id, k));
            }
        }
        if out.is_empty() {
            return Err(SignatureError::NoKeys);
        }
        Ok(VerifyKeys { keys: out })
    }

    /// Reads public key files, and every `*.pub` file of the directories among `paths`.
    pub fn load(paths: &[PathBuf]) -> Result<VerifyKeys, SignatureError> {
        let mut keys = Vec::new();
        for path in paths {
            if path.is_dir() {
                let mut files = Vec::new();
                for entry in fs::read_dir(path).map_err(io_err(path))? {
                    let p = entry.map_err(io_err(path))?.path();
                    if p.extension().is_some_and(|e| e == PUBLIC_KEY_EXT) && p.is_file() {
                        files.push(p);
                    }
                }
                if files.is_empty() {
                    return Err(SignatureError::NoKeysInDir(path.clone()));
                }
                files.sort();
                for f in files {
                    keys.push(read_public(&f)?);
                }
            } else {
                keys.push(read_public(path)?);
            }
        }
        VerifyKeys::new(keys)
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Checks that `manifest` (the bytes of `dir/manifest.json`) is signed by one of the keys
    /// in `dir/manifest.sig`; returns the signing key's id.
    pub fn verify(&self, dir: &Path, manifest: &[u8]) -> Result<String, SignatureError> {
        let keys = self.key_ids().join(", ");
        let sig = SignatureFile::read(dir)?.ok_or_else(|| SignatureError::Unsigned {
            dir: dir.to_path_buf(),
            keys: keys.clone(),
        })?;
        let signature = sig.signature(&dir.join(MANIFEST_SIG))?;
        let Some((id, key)) = self.keys.iter().find(|(id, _)| *id == sig.key_id) else {
            return Err(SignatureError::UnknownKey {
                dir: dir.to_path_buf(),
                key_id: sig.key_id,
                keys,
            });
        };
        key.verify(manifest, &signature)
            .map_err(|_| SignatureError::Invalid {
                dir: dir.to_path_buf(),
                key_id: id.clone(),
            })?;
        Ok(id.clone())
    }
}

fn read_public(path: &Path) -> Result<VerifyingKey, SignatureError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| SignatureError::BadPublicKey {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A new key pair written by `tiering keys generate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// PKCS#8 PEM, mode 0600.
    pub private: PathBuf,
    /// SubjectPublicKeyInfo PEM, mode 0644.
    pub public: PathBuf,
    pub key_id: String,
}

/// Writes `dir/NAME.key` (private, 0600) and `dir/NAME.pub` (public) for a fresh key from the
/// operating system's random source. Existing files are never overwritten.
pub fn generate_key_pair(dir: &Path, name: &str) -> Result<KeyPairFiles, SignatureError> {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = SigningKey::from_bytes(&secret);
    secret.fill(0);
    write_key_pair(dir, name, &key)
}

/// [`generate_key_pair`] with a given key.
pub fn write_key_pair(
    dir: &Path,
    name: &str,
    key: &SigningKey,
) -> Result<KeyPairFiles, SignatureError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.{PUBLIC_KEY_EXT}"));
    for p in [&private, &public] {
        if p.exists() {
            return Err(SignatureError::KeyExists(p.clone()));
        }
    }
    let encode = |e: String| SignatureError::Encode(e);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| encode(e.to_string()))?;
    let pub_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| encode(e.to_string()))?;
    write_private(&private, pem.as_bytes())?;
    write_atomic(&public, pub_pem.as_bytes())?;
    Ok(KeyPairFiles {
        private,
        public,
        key_id: key_id(&key.verifying_key()),
    })
}

/// Creates `path` (which must not exist) readable by its owner only, and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SignatureError> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(SignatureError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> BundleSigner {
        BundleSigner::new(SigningKey::from_bytes(&[seed; 32]))
    }

    fn signed_dir(s: &BundleSigner, manifest: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(super::super::MANIFEST), manifest).unwrap();
        s.sign_dir(dir.path()).unwrap();
        dir
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_names_it() {
        let s = signer(1);
        let dir = signed_dir(&s, b"{\"files\":{}}");
        let keys = VerifyKeys::new([s.verifying_key()]).unwrap();
        let id = keys.verify(dir.path(), b"{\"files\":{}}").unwrap();
        assert_eq!(id, s.key_id());
        assert_eq!(id.len(), 16);
    }

    #[test]
    fn a_changed_manifest_another_key_or_no_signature_is_refused() {
        let s = signer(1);
        let dir = signed_dir(&s, b"{\"files\":{\"model.json\":\"aa\"}}");
        let keys = VerifyKeys::new([s.verifying_key()]).unwrap();
        let e = keys
            .verify(dir.path(), b"{\"files\":{\"model.json\":\"bb\"}}")
            .unwrap_err();
        assert!(matches!(e, SignatureError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("changed after it was signed"), "{e}");

        let other = VerifyKeys::new([signer(2).verifying_key()]).unwrap();
        let e = other
            .verify(dir.path(), b"{\"files\":{\"model.json\":\"aa\"}}")
            .unwrap_err();
        assert!(matches!(e, SignatureError::UnknownKey { .. }), "{e}");

        fs::remove_file(dir.path().join(MANIFEST_SIG)).unwrap();
        let e = keys.verify(dir.path(), b"x").unwrap_err();
        assert!(matches!(e, SignatureError::Unsigned { .. }), "{e}");
    }

    #[test]
    fn a_signature_file_naming_a_trusted_key_but_made_by_another_is_invalid() {
        let (trusted, attacker) = (signer(1), signer(2));
        let dir = signed_dir(&attacker, b"m");
        let mut sig = SignatureFile::read(dir.path()).unwrap().unwrap();
        sig.key_id = trusted.key_id().to_string();
        fs::write(
            dir.path().join(MANIFEST_SIG),
            serde_json::to_vec(&sig).unwrap(),
        )
        .unwrap();
        let keys = VerifyKeys::new([trusted.verifying_key()]).unwrap();
        let e = keys.verify(dir.path(), b"m").unwrap_err();
        assert!(matches!(e, SignatureError::Invalid { .. }), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn generated_keys_round_trip_and_a_private_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pair = generate_key_pair(dir.path(), "k").unwrap();
        let mode = fs::metadata(&pair.private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = BundleSigner::from_file(&pair.private).unwrap();
        assert_eq!(s.key_id(), pair.key_id);
        let keys = VerifyKeys::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(keys.key_ids(), vec![pair.key_id.as_str()]);
        assert!(matches!(
            generate_key_pair(dir.path(), "k"),
            Err(SignatureError::KeyExists(_))
        ));

        fs::set_permissions(&pair.private, fs::Permissions::from_mode(0o644)).unwrap();
        let e = BundleSigner::from_file(&pair.private).unwrap_err();
        assert!(
            matches!(e, SignatureError::KeyPermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn a_directory_without_public_keys_and_a_malformed_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            VerifyKeys::load(&[dir.path().to_path_buf()]),
            Err(SignatureError::NoKeysInDir(_))
        ));
        let bad = dir.path().join("x.pub");
        fs::write(&bad, "not a key").unwrap();
        assert!(matches!(
            VerifyKeys::load(&[bad]),
            Err(SignatureError::BadPublicKey { .. })
        ));
        assert!(matches!(VerifyKeys::load(&[]), Err(SignatureError::NoKeys)));
    }
}
