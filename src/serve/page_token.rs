//! ListAtRiskUsers page tokens, authenticated with HMAC-SHA-256.
//!
//! A token is the hex of `version (2) | key id length | key id | postcard body | HMAC`, the HMAC
//! (32 bytes) taken over everything before it with the key the id names. Tokens are opaque to
//! callers; the server refuses any it did not sign, or whose fields are out of range.
//!
//! # Keys
//!
//! Keys come from a file (`page_token_key_file`) or, when that is unset, from the environment
//! variable [`KEYS_ENV`]; never from a flag (flags show in `ps`). Either holds one key per line,
//! `ID HEX` (the environment variable may also separate entries with `,` or `;`); `#` starts a
//! comment. The **first** key signs new tokens; every key listed is accepted, so replicas that
//! share the list accept each other's tokens, and a key is rotated by putting the new one first
//! and keeping the old one listed until its tokens have expired from use. Ids are 1 to 32 of
//! `A-Z a-z 0-9 _ . -`; keys at least 16 bytes (32 hex digits). With neither configured, each
//! process makes a random key: tokens then work only against the process that issued them.
//!
//! # What a token pins
//!
//! The ranking version the walk started from ([`VersionId`]), its ordering, the filters' hash,
//! and the cursor (the last probability and user returned); `as_of` is the version's. A token
//! is good while its version is held (`page_token_max_age_secs` after the version's
//! publication, at most `ranking_max_versions` versions): see [`super::ranking`]. Version 3
//! (this one) replaced version 2's model hash with the ranking version; a version-2 token is
//! refused as an unsupported version.
//!
//! # Errors
//!
//! [`PageToken::decode`] answers one [`TokenError`] per cause; the request layer reports each as
//! INVALID_ARGUMENT on `page_token`. A well-formed token whose version is gone is ABORTED (start
//! again).

use crate::features::Timestamp;
use crate::pb::{MAX_SECONDS, MIN_SECONDS};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The environment variable holding the keys when no key file is configured.
pub(crate) const KEYS_ENV: &str = "TIERING_PAGE_TOKEN_KEYS";
/// Longest token accepted, in characters (a real one is about 200).
pub(crate) const MAX_TOKEN_CHARS: usize = 1024;
/// Shortest key accepted, in bytes.
pub(crate) const MIN_KEY_BYTES: usize = 16;
/// Longest key id.
pub(crate) const MAX_KEY_ID: usize = 32;
/// Longest user id a token may carry (the request layer's limit).
pub(crate) const MAX_USER_BYTES: usize = 256;

const VERSION: u8 = 3;
const MAC_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// An ordering of the at-risk ranking ([`super::ranking`]). Carried in page tokens (its serde form is part of the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Order {
    /// Churn probability, highest first; ties by user id, ascending.
    #[default]
    ChurnDescending,
    /// Value at risk (churn probability × CLV), highest first; ties by user id, ascending.
    ValueAtRiskDescending,
}

impl Order {
    /// Every ordering, each at its [`Order::index`].
    pub const ALL: [Order; 2] = [Order::ChurnDescending, Order::ValueAtRiskDescending];

    /// Position in [`Order::ALL`] (a ranking's index per ordering).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The value this ordering sorts a score by (highest first).
    pub fn value(self, s: &crate::model::Score) -> f64 {
        match self {
            Order::ChurnDescending => s.churn_probability,
            Order::ValueAtRiskDescending => s.value_at_risk,
        }
    }
}

/// Names one published version of a ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionId {
    /// Random per ranking instance (per process for the in-memory ranking).
    pub epoch: u64,
    /// Increases with each version published.
    pub seq: u64,
}

/// What a page token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PageToken {
    pub as_of: Timestamp,
    /// The ordering's value ([`Order::value`]) of the last user returned (the churn probability
    /// under the default ordering, hence the name).
    pub last_probability: f64,
    pub last_user: String,
    pub filter_hash: u64,
    pub order: Order,
    pub version: VersionId,
}

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("longer than {MAX_TOKEN_CHARS} characters ({0})")]
    TooLong(usize),
    #[error("not a page token (not hex)")]
    NotHex,
    #[error("not a page token (too short)")]
    TooShort,
    #[error("unsupported token version {0} (pass next_page_token back unchanged)")]
    Version(u8),
    #[error("signed with a key this server does not hold (key id {0:?})")]
    UnknownKey(String),
    #[error("signature does not match (pass next_page_token back unchanged)")]
    BadSignature,
    #[error("signed but undecodable (from an incompatible server version?)")]
    Malformed,
    #[error("{field} out of range: {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
}

/// Why the page-token keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("page-token key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("page-token keys ({origin}), entry {entry}: {reason}")]
    Entry {
        origin: String,
        entry: usize,
        reason: String,
    },
    #[error("page-token keys ({origin}): no key listed")]
    Empty { origin: String },
}

/// The signing key and every accepted one.
#[derive(Clone)]
pub struct TokenKeys {
    signing: String,
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys themselves.
        f.debug_struct("TokenKeys")
            .field("signing", &self.signing)
            .field("accepted", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where the keys came from (for the start-up log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env,
    Random,
}

impl TokenKeys {
    /// Parses a key list (see the module docs); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<TokenKeys, KeyError> {
        let entries = text
            .split(['\n', ',', ';'])
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty());
        let mut signing = None;
        let mut keys = HashMap::new();
        for (i, entry) in entries.enumerate() {
            let bad = |reason: &str| KeyError::Entry {
                origin: origin.to_string(),
                entry: i + 1,
                reason: reason.to_string(),
            };
            let mut parts = entry.split_whitespace();
            let (Some(id), Some(hex_key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `ID HEX`"));
            };
            if !valid_key_id(id) {
                return Err(bad("the id must be 1 to 32 of A-Z a-z 0-9 _ . -"));
            }
            let key = hex::decode(hex_key).map_err(|_| bad("the key is not hex"))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(bad("the key is shorter than 16 bytes (32 hex digits)"));
            }
            if keys.insert(id.to_string(), key).is_some() {
                return Err(bad("the id is listed twice"));
            }
            signing.get_or_insert_with(|| id.to_string());
        }
        let signing = signing.ok_or_else(|| KeyError::Empty {
            origin: origin.to_string(),
        })?;
        Ok(TokenKeys { signing, keys })
    }

    /// A random key for this process only.
    pub fn random() -> TokenKeys {
        let key: [u8; 32] = rand::random();
        TokenKeys {
            signing: "local".into(),
            keys: HashMap::from([("local".to_string(), key.to_vec())]),
        }
    }

    /// The key file if given, else `env` (the value of [`KEYS_ENV`]), else a random key.
    pub fn load(
        file: Option<&Path>,
        env: Option<String>,
    ) -> Result<(TokenKeys, KeySource), KeyError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let keys = TokenKeys::parse(&text, &path.display().to_string())?;
            return Ok((keys, KeySource::File(path.to_path_buf())));
        }
        if let Some(text) = env {
            return Ok((TokenKeys::parse(&text, KEYS_ENV)?, KeySource::Env));
        }
        Ok((TokenKeys::random(), KeySource::Random))
    }

    /// The id of the key that signs new tokens.
    pub(crate) fn signing_id(&self) -> &str {
        &self.signing
    }

    fn mac(&self, id: &str) -> Option<HmacSha256> {
        let key = self.keys.get(id)?;
        HmacSha256::new_from_slice(key).ok()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl PageToken {
    /// Signs with the signing key; hex.
    pub fn encode(&self, keys: &TokenKeys) -> String {
        let id = keys.signing.as_bytes();
        let mut bytes = vec![VERSION, id.len() as u8];
        bytes.extend_from_slice(id);
        // Serialising plain numbers and a string cannot fail; an empty token would end paging.
        bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        if let Some(mut mac) = keys.mac(&keys.signing) {
            mac.update(&bytes);
            bytes.extend_from_slice(&mac.finalize().into_bytes());
        }
        hex::encode(bytes)
    }

    /// Checks the signature, then every field.
    pub fn decode(token: &str, keys: &TokenKeys) -> Result<PageToken, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::TooLong(token.len()));
        }
        let bytes = hex::decode(token).map_err(|_| TokenError::NotHex)?;
        let (&version, rest) = bytes.split_first().ok_or(TokenError::TooShort)?;
        if version != VERSION {
            return Err(TokenError::Version(version));
        }
        let (&id_len, rest) = rest.split_first().ok_or(TokenError::TooShort)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + MAC_BYTES {
            return Err(TokenError::TooShort);
        }
        let id = String::from_utf8_lossy(&rest[..id_len]).into_owned();
        let mut mac = keys
            .mac(&id)
            .ok_or_else(|| TokenError::UnknownKey(id.chars().take(MAX_KEY_ID).collect()))?;
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        mac.update(signed);
        mac.verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;
        let body = &signed[2 + id_len..];
        let (t, trailing): (PageToken, _) =
            postcard::take_from_bytes(body).map_err(|_| TokenError::Malformed)?;
        if !trailing.is_empty() {
            return Err(TokenError::Malformed);
        }
        t.check()?;
        Ok(t)
    }

    /// Every field in range (a signed token is ours, but a bug or a replica with other limits
    /// must not make us serve nonsense).
    fn check(&self) -> Result<(), TokenError> {
        let field = |field, reason| Err(TokenError::Field { field, reason });
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.as_of) {
            return field("as_of", "outside years 0001..=9999");
        }
        let v = self.last_probability;
        match self.order {
            Order::ChurnDescending if !(v.is_finite() && (0.0..=1.0).contains(&v)) => {
                return field("last_probability", "not in [0, 1]");
            }
            Order::ValueAtRiskDescending if !(v.is_finite() && v >= 0.0) => {
                return field("last_probability", "not a finite value at risk >= 0");
            }
            _ => {}
        }
        if self.last_user.is_empty() || self.last_user.len() > MAX_USER_BYTES {
            return field("last_user", "empty or longer than 256 bytes");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(text: &str) -> TokenKeys {
        TokenKeys::parse(text, "test").unwrap()
    }

    fn token() -> PageToken {
        PageToken {
            as_of: 1_700_000_000,
            last_probability: 0.75,
            last_user: "u-9".into(),
            filter_hash: 7,
            order: Order::ChurnDescending,
            version: VersionId { epoch: 9, seq: 3 },
        }
    }

    const K1: &str = "k1 000102030405060708090a0b0c0d0e0f";
    const K2: &str = "k2 f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let k = keys(K1);
        let s = token().encode(&k);
        assert_eq!(PageToken::decode(&s, &k), Ok(token()));
        for i in 0..s.len() {
            let mut bad = s.clone().into_bytes();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(PageToken::decode(&bad, &k).is_err(), "flip at {i} accepted");
        }
        assert_eq!(PageToken::decode("not hex", &k), Err(TokenError::NotHex));
        assert_eq!(PageToken::decode("", &k), Err(TokenError::TooShort));
        assert_eq!(PageToken::decode("01", &k), Err(TokenError::Version(1)));
        assert_eq!(PageToken::decode("02", &k), Err(TokenError::Version(2)));
        let long = "0".repeat(MAX_TOKEN_CHARS + 2);
        assert_eq!(
            PageToken::decode(&long, &k),
            Err(TokenError::TooLong(MAX_TOKEN_CHARS + 2))
        );
    }

    #[test]
    fn replicas_sharing_keys_accept_each_other_and_old_keys_rotate_out() {
        let old = keys(K1);
        let rotated = keys(&format!("{K2}\n{K1}"));
        let new_only = keys(K2);
        let t = token().encode(&old);
        assert_eq!(PageToken::decode(&t, &rotated), Ok(token()));
        assert_eq!(
            PageToken::decode(&t, &new_only),
            Err(TokenError::UnknownKey("k1".into()))
        );
        assert_eq!(rotated.signing_id(), "k2");
        assert_eq!(
            PageToken::decode(&token().encode(&rotated), &new_only),
            Ok(token())
        );
        let other = keys("k1 ffffffffffffffffffffffffffffffff");
        assert_eq!(PageToken::decode(&t, &other), Err(TokenError::BadSignature));
    }

    #[test]
    fn signed_tokens_with_fields_out_of_range_are_refused() {
        let k = keys(K1);
        let cases = [
            (
                PageToken {
                    as_of: MIN_SECONDS - 1,
                    ..token()
                },
                "as_of",
            ),
            (
                PageToken {
                    last_probability: f64::NAN,
                    ..token()
                },
                "last_probability",
            ),
            (
                PageToken {
                    last_probability: 1.5,
                    ..token()
                },
                "last_probability",
            ),
            (
                PageToken {
                    last_user: String::new(),
                    ..token()
                },
                "last_user",
            ),
            (
                PageToken {
                    last_user: "u".repeat(300),
                    ..token()
                },
                "last_user",
            ),
        ];
        for (t, name) in cases {
            match PageToken::decode(&t.encode(&k), &k) {
                Err(TokenError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn key_lists_are_checked_entry_by_entry() {
        let k = TokenKeys::parse(
            "# comment\nk2 f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff, k1 000102030405060708090a0b0c0d0e0f",
            "env",
        )
        .unwrap();
        assert_eq!(k.signing_id(), "k2");
        for (text, entry) in [
            ("k1", 1),
            ("k1 zz", 1),
            ("k1 0011", 1),
            (
                &format!("{K1}\nbad/id 000102030405060708090a0b0c0d0e0f") as &str,
                2,
            ),
            (&format!("{K1}\n{K1}"), 2),
        ] {
            match TokenKeys::parse(text, "t") {
                Err(KeyError::Entry { entry: e, .. }) => assert_eq!(e, entry, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            TokenKeys::parse("# none\n", "t"),
            Err(KeyError::Empty { .. })
        ));
        assert!(
            !format!("{k:?}").contains("f0f1"),
            "Debug never prints keys"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_is_refused_without_panicking(s in ".{0,300}") {
            let k = keys(K1);
            prop_assert!(PageToken::decode(&s, &k).is_err());
        }

        #[test]
        fn arbitrary_bytes_as_hex_are_refused_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = keys(K1);
            let r = PageToken::decode(&hex::encode(&b), &k);
            prop_assert!(r.is_err(), "{r:?}");
        }

        #[test]
        fn any_valid_token_round_trips_and_any_flipped_byte_is_refused(
            as_of in MIN_SECONDS..=MAX_SECONDS,
            p in 0.0f64..=1.0,
            user in "[a-z0-9-]{1,256}",
            filter_hash: u64,
            epoch: u64,
            seq: u64,
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let k = keys(K1);
            let t = PageToken { as_of, last_probability: p, last_user: user, filter_hash, order: Order::ChurnDescending, version: VersionId { epoch, seq } };
            let s = t.encode(&k);
            prop_assert_eq!(PageToken::decode(&s, &k), Ok(t));
            let mut bytes = hex::decode(&s).unwrap();
            let i = flip.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(PageToken::decode(&hex::encode(&bytes), &k).is_err());
        }
    }
}
