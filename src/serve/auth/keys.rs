//! The keys file: API keys stored as SHA-256 hashes, and mTLS identities, each with roles and an
//! optional quota.
//!
//! ```toml
//! # keys.toml (mode 0600: refused if group or others can read it)
//! [[key]]
//! name = "recsys"                 # logged on denials; never the token
//! sha256 = "9f86d0…"              # hex SHA-256 of the token (`tiering keys add-token`)
//! roles = ["reader"]
//! rate = 200.0                    # optional: requests per second (default `quota_rate`)
//! burst = 400                     # optional (default `quota_burst`)
//!
//! [[identity]]
//! name = "retention-job.internal" # a client certificate's DNS SAN or subject CN
//! roles = ["retention"]
//! ```
//!
//! A token is 32 random bytes, written as `tk_` and 64 hex digits; the file stores only its
//! hash, so reading the file does not give a usable credential. Tokens are checked by hashing
//! the presented one and comparing it with every stored hash in constant time.

use super::{AuthError, Role};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The prefix of every token (recognisable in a leaked file or paste).
pub const TOKEN_PREFIX: &str = "tk_";

/// One API key as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    pub sha256: String,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// One mTLS identity (a certificate's DNS SAN or subject CN) and its roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityEntry {
    pub name: String,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// The file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default, rename = "key", skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEntry>,
    #[serde(default, rename = "identity", skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityEntry>,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The key's or identity's name (for logs and quotas).
    pub name: String,
    pub roles: Vec<Role>,
    pub rate: Option<f64>,
    pub burst: Option<u32>,
}

/// The keys file, ready for lookups.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<([u8; 32], Principal)>,
    identities: HashMap<String, Principal>,
}

/// SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh token: `tk_` and 64 hex digits (32 bytes from the OS generator).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Refuses a file group or others can read (or write).
pub fn check_mode(path: &Path) -> Result<(), AuthError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o066 != 0 {
            return Err(AuthError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

impl KeysFile {
    /// Reads and parses `path` (refused when group or others can read it).
    pub fn read(path: &Path) -> Result<KeysFile, AuthError> {
        check_mode(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| AuthError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the file with mode 0600 (through a temporary file and a rename).
    pub fn write(&self, path: &Path) -> Result<(), AuthError> {
        let text = toml::to_string(self).map_err(AuthError::Serialize)?;
        let tmp = path.with_extension("tmp");
        let io = |source| AuthError::Write {
            path: path.to_path_buf(),
            source,
        };
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Checks names, hashes and rates, and builds the lookup tables.
    pub fn into_keys(self) -> Result<Keys, AuthError> {
        let mut keys = Vec::with_capacity(self.keys.len());
        let bad = |name: &str, why: &str| AuthError::Entry {
            name: name.to_string(),
            why: why.to_string(),
        };
        for k in self.keys {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(k.sha256.trim(), &mut hash)
                .map_err(|_| bad(&k.name, "sha256 must be 64 hex digits"))?;
            check_entry(&k.name, &k.roles, k.rate)?;
            let principal = Principal {
                name: k.name,
                roles: k.roles,
                rate: k.rate,
                burst: k.burst,
            };
            keys.push((hash, principal));
        }
        let mut identities = HashMap::new();
        for i in self.identities {
            check_entry(&i.name, &i.roles, i.rate)?;
            let principal = Principal {
                name: i.name.clone(),
                roles: i.roles,
                rate: i.rate,
                burst: i.burst,
            };
            if identities.insert(i.name.clone(), principal).is_some() {
                return Err(bad(&i.name, "identity listed twice"));
            }
        }
        Ok(Keys { keys, identities })
    }
}

fn check_entry(name: &str, roles: &[Role], rate: Option<f64>) -> Result<(), AuthError> {
    let bad = |why: &str| AuthError::Entry {
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if roles.is_empty() {
        return Err(bad("no roles"));
    }
    if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(bad("rate must be a positive number"));
    }
    Ok(())
}

impl Keys {
    /// Reads the keys file at `path`.
    pub fn load(path: &Path) -> Result<Keys, AuthError> {
        KeysFile::read(path)?.into_keys()
    }

    /// The key whose hash matches `token`. Every stored hash is compared, in constant time.
    pub fn by_token(&self, token: &str) -> Option<&Principal> {
        let presented = token_hash(token);
        let mut found = None;
        for (hash, principal) in &self.keys {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found
    }

    /// The first of `names` (a certificate's SANs, then its CN) with an `[[identity]]` entry.
    pub fn by_identity<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<&Principal> {
        names.into_iter().find_map(|n| self.identities.get(n))
    }

    /// Number of keys and identities (for the start-up log).
    pub fn counts(&self) -> (usize, usize) {
        (self.keys.len(), self.identities.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_its_own_hash() {
        let token = new_token();
        let file = KeysFile {
            keys: vec![KeyEntry {
                name: "a".into(),
                sha256: hex::encode(token_hash(&token)),
                roles: vec![Role::Reader],
                rate: None,
                burst: None,
            }],
            identities: vec![],
        };
        let keys = file.into_keys().unwrap();
        assert_eq!(keys.by_token(&token).map(|p| p.name.as_str()), Some("a"));
        assert!(keys.by_token(&new_token()).is_none());
        assert!(keys.by_token("").is_none());
    }
}
