//! Encryption at rest of the state directory (`--state-key-file`): the snapshot and every log
//! record sealed with XChaCha20-Poly1305 under one 256-bit key read from a file.
//!
//! Why this shape:
//! - **One frame per log record.** A record (as [`super::wal::record`] writes it, plaintext
//!   framing included) is sealed into a frame `u32 LE (body length | 1 << 31) | u32 LE
//!   crc32(body) | body`, body = `key id (4) | nonce (24) | ciphertext | tag (16)`: 48 bytes
//!   more per record. The outer length and CRC keep the log's crash rules unchanged (a torn
//!   tail is bytes that do not form a whole frame with nothing valid after them, damage in the
//!   middle is refused with its offset, `tiering state repair` cuts or salvages whole frames);
//!   the tag then refuses a frame whose bytes and CRC were both rewritten. The high bit of the
//!   length (plaintext records are under 2^30 bytes) tells an encrypted log from a plaintext
//!   one, so a state opened with the wrong mode gets a clear error rather than "corrupt".
//! - **Nonces are random, 192 bits, fresh for every frame and every snapshot** (from `rand`'s
//!   thread RNG: ChaCha12 seeded from the operating system, reseeded periodically and after a
//!   fork). They are never derived from a position: positions repeat (a torn tail is cut off
//!   and the same offset written again with other bytes; a backup is restored and appended
//!   to), and a repeated (key, nonce) pair with other plaintext breaks ChaCha20-Poly1305. With
//!   192-bit random nonces the chance that any two of 2^48 frames under one key share a nonce
//!   is below 2^-96.
//! - **The key id** (the first 4 bytes of SHA-256 over a label and the key) is stored in each
//!   frame and in the snapshot, so a wrong key is reported as such, naming the file, and not as
//!   tampering. It reveals nothing usable about the key.
//! - **The snapshot is sealed whole**: `b"TIERSE01" | key id | nonce | ciphertext | tag`, the
//!   plaintext being the `state.bin` bytes a server without a key writes.
//! - Associated data binds each sealed object to its kind (a log frame cannot be passed off as
//!   a snapshot or the reverse). It does not bind a frame to its place: someone able to write
//!   the state directory can still drop, repeat or reorder whole frames. Encryption at rest is
//!   for copies of the disk (backups, a lost volume), not for an attacker who runs as the
//!   server's user.

use crate::serve::state::StateError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The high bit of an encrypted frame's length field.
const SEALED: u32 = 1 << 31;
/// Length field, CRC.
const FRAME_HEADER: usize = 8;
const KEY_ID: usize = 4;
const NONCE: usize = 24;
const TAG: usize = 16;
/// Key id, nonce, tag: a body is at least this plus one byte.
const OVERHEAD: usize = KEY_ID + NONCE + TAG;
/// Larger bodies are corruption (a record is under 2^30 bytes).
const MAX_BODY: usize = (1 << 30) + OVERHEAD;
/// The magic of an encrypted `state.bin` (plaintext ones: `snapshot::is_plain`).
pub(crate) const SEALED_SNAPSHOT: &[u8; 8] = b"TIERSE01";
const WAL_AAD: &[u8] = b"tiering wal frame v1";
const SNAPSHOT_AAD: &[u8] = b"tiering state.bin v1";

/// The key the state directory is encrypted with. Its `Debug` shows the key id only.
pub struct StateKey {
    aead: XChaCha20Poly1305,
    id: [u8; KEY_ID],
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateKey(id {})", hex::encode(self.id))
    }
}

impl PartialEq for StateKey {
    /// Keys are compared by their id.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// Why a state key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateKeyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: a state key file holds 64 hex digits (32 random bytes), e.g. from `openssl rand -hex 32`", path.display())]
    Format { path: PathBuf },
    #[error("{}: readable by group or others (mode {mode:o}): `chmod 600` it", path.display())]
    Exposed { path: PathBuf, mode: u32 },
}

impl StateKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> StateKey {
        let mut h = Sha256::new();
        h.update(b"tiering state key id v1\0");
        h.update(key);
        let digest = h.finalize();
        let mut id = [0u8; KEY_ID];
        id.copy_from_slice(&digest[..KEY_ID]);
        StateKey {
            aead: XChaCha20Poly1305::new(&key.into()),
            id,
        }
    }

    /// Reads a key file: 64 hex digits (surrounding whitespace ignored). Refuses a file that
    /// group or others may read.
    pub fn from_file(path: &Path) -> Result<StateKey, StateKeyError> {
        let read = |source| StateKeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(StateKeyError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let format = || StateKeyError::Format {
            path: path.to_path_buf(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| format())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| format())?;
        Ok(StateKey::from_bytes(key))
    }

    /// The key id, as hex (what errors and logs show).
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// `key id | nonce | ciphertext | tag` of `plain`.
    fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, StateError> {
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| StateError::RecordTooLarge)?;
        let mut out = Vec::with_capacity(KEY_ID + NONCE + sealed.len());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of `key id | nonce | ciphertext | tag`: `Err(true)` for another key's
    /// object, `Err(false)` for one that fails authentication.
    fn open(&self, body: &[u8], aad: &[u8]) -> Result<Vec<u8>, bool> {
        if body.len() < OVERHEAD {
            return Err(false);
        }
        if body[..KEY_ID] != self.id {
            return Err(true);
        }
        let nonce = XNonce::from_slice(&body[KEY_ID..KEY_ID + NONCE]);
        self.aead
            .decrypt(
                nonce,
                Payload {
                    msg: &body[KEY_ID + NONCE..],
                    aad,
                },
            )
            .map_err(|_| false)
    }

    fn wrong_key(&self, path: &Path, offset: usize, body: &[u8]) -> StateError {
        StateError::WrongStateKey {
            path: path.to_path_buf(),
            offset,
            found: hex::encode(&body[..KEY_ID.min(body.len())]),
            given: self.id(),
        }
    }
}

/// Seals one plaintext log record (length, CRC, payload) into an encrypted frame.
pub(crate) fn seal_record(key: &StateKey, record: &[u8]) -> Result<Vec<u8>, StateError> {
    let body = key.seal(record, WAL_AAD)?;
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32 | SEALED).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Seals the bytes of a plaintext `state.bin`.
pub(crate) fn seal_snapshot(key: &StateKey, plain: &[u8]) -> Result<Vec<u8>, StateError> {
    let body = key.seal(plain, SNAPSHOT_AAD)?;
    let mut out = Vec::with_capacity(SEALED_SNAPSHOT.len() + body.len());
    out.extend_from_slice(SEALED_SNAPSHOT);
    out.extend_from_slice(&body);
    Ok(out)
}

/// The plaintext `state.bin` bytes of the file at `path`, given the configured key (if any):
/// refuses an encrypted snapshot without a key, a plaintext one with a key, another key's, and
/// one that fails authentication.
pub(crate) fn open_snapshot<'a>(
    key: Option<&StateKey>,
    path: &Path,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, StateError> {
    let sealed = bytes.starts_with(SEALED_SNAPSHOT);
    match key {
        None if sealed => Err(StateError::EncryptedState {
            path: path.to_path_buf(),
        }),
        None => Ok(bytes.into()),
        Some(_) if super::snapshot::is_plain(bytes) => Err(StateError::PlaintextState {
            path: path.to_path_buf(),
            offset: 0,
        }),
        // Neither magic: the plaintext reader reports the bad header.
        Some(_) if !sealed => Ok(bytes.into()),
        Some(k) => {
            let body = &bytes[SEALED_SNAPSHOT.len()..];
            match k.open(body, SNAPSHOT_AAD) {
                Ok(plain) => Ok(plain.into()),
                Err(true) => Err(k.wrong_key(path, SEALED_SNAPSHOT.len(), body)),
                Err(false) => Err(StateError::TamperedState {
                    path: path.to_path_buf(),
                    offset: 0,
                }),
            }
        }
    }
}

/// Refuses a log segment that holds encrypted frames when no key is configured.
pub(crate) fn refuse_sealed_segment(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    match bytes.get(..4) {
        Some(h) if u32::from_le_bytes([h[0], h[1], h[2], h[3]]) & SEALED != 0 => {
            Err(StateError::EncryptedState {
                path: path.to_path_buf(),
            })
        }
        _ => Ok(()),
    }
}

/// An encrypted segment opened: its records in plaintext, and where each came from.
#[derive(Debug)]
pub(crate) struct OpenedSegment {
    /// The plaintext records, back to back (what a plaintext segment would hold).
    pub plain: Vec<u8>,
    /// Bytes of whole, authenticated frames from the start of the file.
    pub valid_len: u64,
    /// Why the bytes after `valid_len` were dropped as a torn tail.
    pub torn: Option<&'static str>,
    /// (offset in `plain`, offset in the file) of each frame.
    starts: Vec<(usize, usize)>,
}

impl OpenedSegment {
    /// The file offset of the frame holding plaintext offset `plain`.
    pub(crate) fn file_offset(&self, plain: usize) -> usize {
        match self.starts.binary_search_by_key(&plain, |s| s.0) {
            Ok(i) => self.starts[i].1,
            Err(i) => self.starts[i.saturating_sub(1)].1,
        }
    }
}

/// Where the frame at `off` ends, if it is whole and its CRC matches.
fn whole_frame_at(bytes: &[u8], off: usize) -> Option<usize> {
    let header = bytes.get(off..off + FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len & SEALED == 0 {
        return None;
    }
    let len = (len & !SEALED) as usize;
    if len <= OVERHEAD || len > MAX_BODY {
        return None;
    }
    let body = bytes.get(off + FRAME_HEADER..off + FRAME_HEADER + len)?;
    (crc32fast::hash(body) == crc).then_some(off + FRAME_HEADER + len)
}

/// True if the bytes at `off` are a whole plaintext record (length, CRC, payload).
fn plaintext_record_at(bytes: &[u8], off: usize) -> bool {
    let Some(h) = bytes.get(off..off + 8) else {
        return false;
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    len > 0
        && len < 1 << 30
        && bytes
            .get(off + 8..off + 8 + len)
            .is_some_and(|p| crc32fast::hash(p) == crc)
}

/// The first offset after `from` where a whole frame that this key opens starts.
fn next_valid_frame(key: &StateKey, bytes: &[u8], from: usize) -> Option<usize> {
    (from + 1..bytes.len()).find(|&o| {
        whole_frame_at(bytes, o)
            .is_some_and(|end| key.open(&bytes[o + FRAME_HEADER..end], WAL_AAD).is_ok())
    })
}

/// The byte ranges of every whole frame this key opens, skipping bad bytes between them
/// (`tiering state repair --salvage` on an encrypted log).
pub(crate) fn valid_frames(key: &StateKey, bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let end = whole_frame_at(bytes, off)
            .filter(|&end| key.open(&bytes[off + FRAME_HEADER..end], WAL_AAD).is_ok());
        match end {
            Some(end) => {
                out.push(off..end);
                off = end;
            }
            None => match next_valid_frame(key, bytes, off) {
                Some(next) => off = next,
                None => break,
            },
        }
    }
    out
}

/// Opens every frame of an encrypted segment, with the log's crash rules: bad bytes with nothing
/// valid after them at the end of the last segment are a torn tail; anywhere else they are
/// [`StateError::DamagedRecord`] or [`StateError::TornMidLog`]. A whole frame of another key is
/// [`StateError::WrongStateKey`], one that fails authentication [`StateError::TamperedState`], a
/// plaintext record [`StateError::PlaintextState`]; each names the file and the offset.
pub(crate) fn open_segment(
    key: &StateKey,
    path: &Path,
    bytes: &[u8],
    last: bool,
) -> Result<OpenedSegment, StateError> {
    let mut out = OpenedSegment {
        plain: Vec::with_capacity(bytes.len()),
        valid_len: 0,
        torn: None,
        starts: Vec::new(),
    };
    let mut off = 0usize;
    while off < bytes.len() {
        let Some(end) = whole_frame_at(bytes, off) else {
            if plaintext_record_at(bytes, off) {
                return Err(StateError::PlaintextState {
                    path: path.to_path_buf(),
                    offset: off,
                });
            }
            out.torn = Some(bad_tail(key, path, bytes, off, last)?);
            return Ok(out);
        };
        let body = &bytes[off + FRAME_HEADER..end];
        let plain = key.open(body, WAL_AAD).map_err(|wrong| {
            if wrong {
                key.wrong_key(path, off, body)
            } else {
                StateError::TamperedState {
                    path: path.to_path_buf(),
                    offset: off,
                }
            }
        })?;
        out.starts.push((out.plain.len(), off));
        out.plain.extend_from_slice(&plain);
        off = end;
        out.valid_len = off as u64;
    }
    Ok(out)
}

/// Judges the bytes from `off` on, where no whole frame starts (as the plaintext reader does).
fn bad_tail(
    key: &StateKey,
    path: &Path,
    bytes: &[u8],
    off: usize,
    last: bool,
) -> Result<&'static str, StateError> {
    let rest = &bytes[off..];
    let what = if rest.len() < FRAME_HEADER {
        "incomplete record header"
    } else if rest.iter().all(|&b| b == 0) {
        "zero-filled tail"
    } else {
        let len = (u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) & !SEALED) as usize;
        if len <= OVERHEAD {
            "empty record"
        } else if len > MAX_BODY || len > rest.len() - FRAME_HEADER {
            "record extends past the end of the file"
        } else {
            "checksum mismatch"
        }
    };
    super::tail::tail_verdict(path, off, what, next_valid_frame(key, bytes, off), last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StateKey {
        StateKey::from_bytes([b; 32])
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = (payload.len() as u32).to_le_bytes().to_vec();
        r.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        r.extend_from_slice(payload);
        r
    }

    fn log(k: &StateKey, n: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut sealed, mut plain) = (Vec::new(), Vec::new());
        for i in 0..n {
            let r = record(format!("record {i}").as_bytes());
            sealed.extend(seal_record(k, &r).unwrap());
            plain.extend(r);
        }
        (sealed, plain)
    }

    #[test]
    fn frames_round_trip_and_never_show_the_plaintext_or_repeat_a_nonce() {
        let k = key(1);
        let (sealed, plain) = log(&k, 50);
        assert!(!sealed.windows(8).any(|w| w == b"record 1"));
        let opened = open_segment(&k, Path::new("wal"), &sealed, true).unwrap();
        assert_eq!(opened.plain, plain);
        assert_eq!((opened.valid_len, opened.torn), (sealed.len() as u64, None));
        let frames = valid_frames(&k, &sealed);
        let nonces: std::collections::HashSet<&[u8]> = frames
            .iter()
            .map(|r| &sealed[r.start + 12..r.start + 36])
            .collect();
        assert_eq!((frames.len(), nonces.len()), (50, 50));
        // The same record sealed twice differs (fresh nonce).
        let r = record(b"x");
        assert_ne!(seal_record(&k, &r).unwrap(), seal_record(&k, &r).unwrap());
    }

    #[test]
    fn a_wrong_key_a_rewritten_frame_and_a_plaintext_log_are_each_named_with_their_offset() {
        let k = key(1);
        let (sealed, plain) = log(&k, 3);
        let e = open_segment(&key(2), Path::new("wal-9"), &sealed, true).unwrap_err();
        assert!(
            matches!(e, StateError::WrongStateKey { offset: 0, .. }),
            "{e}"
        );
        // A ciphertext byte changed and the CRC recomputed: only the tag can tell.
        let second = valid_frames(&k, &sealed)[1].clone();
        let mut forged = sealed.clone();
        forged[second.start + 40] ^= 1;
        let crc = crc32fast::hash(&forged[second.start + 8..second.end]);
        forged[second.start + 4..second.start + 8].copy_from_slice(&crc.to_le_bytes());
        let e = open_segment(&k, Path::new("wal-9"), &forged, true).unwrap_err();
        assert!(
            matches!(e, StateError::TamperedState { offset, .. } if offset == second.start),
            "{e}"
        );
        assert!(e.to_string().contains("wal-9"), "{e}");
        let e = open_segment(&k, Path::new("wal-9"), &plain, true).unwrap_err();
        assert!(matches!(e, StateError::PlaintextState { .. }), "{e}");
        let e = refuse_sealed_segment(Path::new("wal-9"), &sealed).unwrap_err();
        assert!(matches!(e, StateError::EncryptedState { .. }), "{e}");
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_damage_before_valid_frames_is_refused() {
        let k = key(1);
        let (sealed, _) = log(&k, 3);
        let cut = sealed.len() - 5;
        let opened = open_segment(&k, Path::new("w"), &sealed[..cut], true).unwrap();
        assert!(opened.torn.is_some());
        assert_eq!(
            opened.valid_len as usize,
            valid_frames(&k, &sealed)[2].start
        );
        assert!(open_segment(&k, Path::new("w"), &sealed[..cut], false).is_err());
        let mut damaged = sealed.clone();
        damaged[20] ^= 0xff;
        let e = open_segment(&k, Path::new("w"), &damaged, true).unwrap_err();
        assert!(
            matches!(e, StateError::DamagedRecord { offset: 0, .. }),
            "{e}"
        );
        assert_eq!(valid_frames(&k, &damaged).len(), 2);
    }

    #[test]
    fn snapshots_are_refused_in_the_wrong_mode_or_with_another_key() {
        let k = key(1);
        let plain = b"TIERST01 rest of a snapshot".to_vec();
        let sealed = seal_snapshot(&k, &plain).unwrap();
        let p = Path::new("state.bin");
        assert_eq!(&*open_snapshot(Some(&k), p, &sealed).unwrap(), &plain[..]);
        for (key, bytes) in [(None, &sealed), (Some(&k), &plain)] {
            let e = open_snapshot(key, p, bytes).unwrap_err();
            assert!(
                matches!(
                    e,
                    StateError::EncryptedState { .. } | StateError::PlaintextState { .. }
                ),
                "{e}"
            );
        }
        let e = open_snapshot(Some(&key(3)), p, &sealed).unwrap_err();
        assert!(matches!(e, StateError::WrongStateKey { .. }), "{e}");
        let mut forged = sealed.clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        let e = open_snapshot(Some(&k), p, &forged).unwrap_err();
        assert!(matches!(e, StateError::TamperedState { .. }), "{e}");
    }
}
