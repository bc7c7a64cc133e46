//! The generation marker: how a server tells "this Redis holds the state it should" from "this
//! Redis was wiped, replaced, or restored from an older backup".
//!
//! Redis holds a hash `tiering:{meta}`: `state_id` (random, made when the state is first
//! seeded), `generation` (1 at the seed, +1 at each checkpoint that follows writes),
//! `seeded_from` (the bundle version), `seeded_at`, `value_format`. Seeding writes it last, so a
//! seed cut short is simply seeded again. The models directory, shared by every replica, holds
//! the last marker a replica saw, `MODELS/redis-state.json`, written at the seed and at each
//! checkpoint (never lowered). At start:
//!
//! - no record: a new deployment; Redis is used as it is (seeded by the first model if it has no
//!   marker);
//! - a record, and Redis's marker has its `state_id` and a generation at least the record's:
//!   fine;
//! - a record, and Redis has no marker (wiped: `FLUSHALL`, a new empty server), another
//!   `state_id` (another deployment's Redis), or an older generation (restored from an older
//!   backup): refused ([`StateError::RedisStateLost`]) unless `reseed_state` is set.

use super::super::StateError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The Redis key of the marker (its own hash tag: one slot).
pub const META_KEY: &str = "tiering:{meta}";
/// The record's file name in the models directory.
pub const RECORD_FILE: &str = "redis-state.json";

/// The marker as stored in Redis, and as recorded in the models directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub state_id: String,
    pub generation: u64,
    pub seeded_from: String,
    pub seeded_at: String,
}

impl Marker {
    /// From `HGETALL tiering:{meta}` (empty: no marker).
    pub fn from_fields(fields: &[(String, String)]) -> Result<Option<Marker>, StateError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| StateError::RedisMarker {
                    what: META_KEY.into(),
                    message: format!("no field {name}"),
                })
        };
        let generation = get("generation")?;
        Ok(Some(Marker {
            state_id: get("state_id")?,
            generation: generation.parse().map_err(|_| StateError::RedisMarker {
                what: META_KEY.into(),
                message: format!("generation {generation:?} is not a number"),
            })?,
            seeded_from: get("seeded_from").unwrap_or_default(),
            seeded_at: get("seeded_at").unwrap_or_default(),
        }))
    }
}

pub fn record_path(models: &Path) -> PathBuf {
    models.join(RECORD_FILE)
}

/// The models directory's record; `None` when there is none yet.
pub fn read_record(models: &Path) -> Result<Option<Marker>, StateError> {
    let path = record_path(models);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::RedisMarker {
                    what: path.display().to_string(),
                    message: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

/// Records `marker` unless the record already holds this state at a later generation
/// (replicas checkpoint concurrently: the record never goes back).
pub fn write_record(models: &Path, marker: &Marker) -> Result<(), StateError> {
    if let Ok(Some(old)) = read_record(models) {
        if old.state_id == marker.state_id && old.generation > marker.generation {
            return Ok(());
        }
    }
    let path = record_path(models);
    let mut bytes = serde_json::to_vec_pretty(marker).map_err(|e| StateError::RedisMarker {
        what: path.display().to_string(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    crate::io::atomic::write_atomic(&path, &bytes)?;
    Ok(())
}

/// What start-up makes of Redis's marker and the models directory's record: `Ok(seeded)`, or
/// why the start is refused (the text of [`StateError::RedisStateLost`]).
pub fn verdict(found: Option<&Marker>, record: Option<&Marker>) -> Result<bool, String> {
    match (found, record) {
        (found, None) => Ok(found.is_some()),
        (None, Some(r)) => Err(format!(
            "Redis holds no state marker ({META_KEY}), but the models directory records state {} at generation {} (seeded from {} at {})",
            r.state_id, r.generation, r.seeded_from, r.seeded_at
        )),
        (Some(m), Some(r)) if m.state_id != r.state_id => Err(format!(
            "Redis holds state {} (seeded from {} at {}), but the models directory records state {} (seeded from {} at {})",
            m.state_id, m.seeded_from, m.seeded_at, r.state_id, r.seeded_from, r.seeded_at
        )),
        (Some(m), Some(r)) if m.generation < r.generation => Err(format!(
            "Redis holds state {} at generation {}, older than generation {} recorded in the models directory",
            m.state_id, m.generation, r.generation
        )),
        (Some(_), Some(_)) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, g: u64) -> Marker {
        Marker {
            state_id: id.into(),
            generation: g,
            seeded_from: "v1".into(),
            seeded_at: "2024-06-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_missing_replaced_or_older_marker_is_refused_and_a_newer_one_is_not() {
        assert_eq!(verdict(None, None), Ok(false));
        assert_eq!(verdict(Some(&m("a", 1)), None), Ok(true));
        assert_eq!(verdict(Some(&m("a", 3)), Some(&m("a", 3))), Ok(true));
        assert_eq!(verdict(Some(&m("a", 4)), Some(&m("a", 3))), Ok(true));
        assert!(verdict(None, Some(&m("a", 3)))
            .unwrap_err()
            .contains("no state marker"));
        assert!(verdict(Some(&m("b", 9)), Some(&m("a", 3)))
            .unwrap_err()
            .contains("records state a"));
        assert!(verdict(Some(&m("a", 2)), Some(&m("a", 3)))
            .unwrap_err()
            .contains("older than generation 3"));
    }

    #[test]
    fn the_record_never_goes_back_a_generation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), None);
        write_record(dir.path(), &m("a", 5)).unwrap();
        write_record(dir.path(), &m("a", 4)).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), Some(m("a", 5)));
        write_record(dir.path(), &m("b", 1)).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), Some(m("b", 1)));
    }
}
