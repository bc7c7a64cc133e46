//! Pseudonymous user ids at ingest (`--pseudonymize-key-file` on `train`, `score` and `serve`),
//! for platforms that cannot send pseudonyms themselves.
//!
//! Every user id is replaced by `hex(HMAC-SHA256(key, id))[..32]`: 128 bits, 32 lowercase hex
//! digits. The same key gives the same pseudonym in training, offline scoring and the server, so
//! a bundle trained with the key serves users looked up by their raw ids; without the key the
//! pseudonyms cannot be computed from ids (nor reversed). A retention team maps an at-risk
//! export back by hashing its own ids with the same key (README "Data at rest and pseudonyms").

use crate::features::EventTable;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Hex digits of a pseudonym (the first 16 bytes of the HMAC).
pub const PSEUDONYM_LEN: usize = 32;
/// Shortest accepted key.
const MIN_KEY_BYTES: usize = 16;

/// The keyed hash that turns user ids into pseudonyms. `Debug` never shows the key.
#[derive(Clone)]
pub struct PseudonymKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PartialEq for PseudonymKey {
    /// Keys are compared by the pseudonym they give one fixed id.
    fn eq(&self, other: &Self) -> bool {
        self.pseudonym("\0key check") == other.pseudonym("\0key check")
    }
}

/// Why a pseudonymisation key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PseudonymKeyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: a pseudonymisation key file holds at least {MIN_KEY_BYTES} bytes as hex digits (e.g. `openssl rand -hex 32`)", path.display())]
    Format { path: PathBuf },
    #[error("{}: readable by group or others (mode {mode:o}): `chmod 600` it", path.display())]
    Exposed { path: PathBuf, mode: u32 },
}

impl PseudonymKey {
    /// A key from its bytes (at least 16).
    pub fn from_bytes(key: &[u8]) -> Option<PseudonymKey> {
        if key.len() < MIN_KEY_BYTES {
            return None;
        }
        Hmac::<Sha256>::new_from_slice(key)
            .ok()
            .map(|mac| PseudonymKey { mac })
    }

    /// Reads a key file: hex digits (surrounding whitespace ignored), at least 16 bytes.
    /// Refuses a file group or others may read.
    pub fn from_file(path: &Path) -> Result<PseudonymKey, PseudonymKeyError> {
        let read = |source| PseudonymKeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(PseudonymKeyError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        hex::decode(text.trim())
            .ok()
            .and_then(|k| PseudonymKey::from_bytes(&k))
            .ok_or_else(|| PseudonymKeyError::Format {
                path: path.to_path_buf(),
            })
    }

    /// The pseudonym of `id`.
    pub fn pseudonym(&self, id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        let digest = mac.finalize().into_bytes();
        hex::encode(&digest[..PSEUDONYM_LEN / 2])
    }
}

/// Replaces every user id of a table just read by its pseudonym (and rebuilds the id index).
/// Two ids that map to one pseudonym (a 2^-128 chance per pair) would then share one index.
pub fn pseudonymize_table(table: &mut EventTable, key: &PseudonymKey) {
    for id in &mut table.user_ids {
        *id = key.pseudonym(id);
    }
    table.index = table
        .user_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i as u32))
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_the_documented_hmac_prefix_and_depend_on_the_key() {
        let k = PseudonymKey::from_bytes(&[7u8; 32]).unwrap();
        let p = k.pseudonym("u0000001");
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"u0000001");
        let full = hex::encode(mac.finalize().into_bytes());
        assert_eq!(p, full[..PSEUDONYM_LEN]);
        assert_eq!(p.len(), PSEUDONYM_LEN);
        let other = PseudonymKey::from_bytes(&[8u8; 32]).unwrap();
        assert_ne!(other.pseudonym("u0000001"), p);
        assert!(PseudonymKey::from_bytes(&[1u8; 15]).is_none());
    }
}
