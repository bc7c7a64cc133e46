//! Server configuration, layered: defaults → `--config FILE` (TOML) → `TIERING__*` environment
//! variables → command-line flags (applied by the CLI on the resulting struct), then validated.
//!
//! ```toml
//! # serve.toml: every field is optional
//! models = "models"
//! listen = "127.0.0.1:50051"
//! metrics_listen = "127.0.0.1:9090"
//! state_dir = "state"
//! now = "2024-06-01"            # quote it: a bare TOML date is not a string
//! max_batch_size = 1000
//! ```
//!
//! Environment: `TIERING__MAX_BATCH_SIZE=500` sets `max_batch_size`; a double underscore nests
//! (`TIERING__A__B` is `a.b`). A value is read as the type of the field's default (integer,
//! boolean), else as a string; unknown names are refused like unknown keys in the file.

use super::error::ServeError;
use crate::features::Timestamp;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override the configuration file.
pub const ENV_PREFIX: &str = "TIERING__";

/// Everything `tiering serve` can be told. Each field says why it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The model bundles directory; `MODELS/CURRENT` names the live bundle and is watched.
    pub models: PathBuf,
    /// gRPC address (`tiering serve` binds it; the library's [`super::run`] takes a listener).
    pub listen: SocketAddr,
    /// Prometheus text metrics at `GET /metrics` on this address; none when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Per-user state (snapshot + write-ahead log), the source of truth once seeded. Default: a
    /// `state` directory next to the models directory (`MODELS/../state`, see
    /// [`ServeConfig::state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// Pins the clock (RFC 3339 or YYYY-MM-DD, UTC) for historic data and deterministic tests;
    /// the wall clock when unset.
    pub now: Option<String>,
    /// Events stamped more than this many seconds after "now" are rejected (clock skew allowance).
    pub future_tolerance_secs: u64,
    /// Most user ids in one BatchGetUserTiers (RESOURCE_EXHAUSTED above it).
    pub max_batch_size: usize,
    /// Most events in one RecordEvents or ScoreUser request (RESOURCE_EXHAUSTED above it).
    pub max_events_per_request: usize,
    /// ListAtRiskUsers page size when the request's `limit` is 0.
    pub default_page_size: u32,
    /// Largest ListAtRiskUsers page; larger limits are lowered to it.
    pub max_page_size: u32,
    /// Largest gRPC message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
    /// Requests processed at once across all connections; further requests wait (and their
    /// deadlines keep running).
    pub max_concurrent_requests: usize,
    /// How often `MODELS/CURRENT` is read for a change, in milliseconds (SIGHUP forces a check).
    pub model_poll_ms: u64,
    /// A state snapshot is written this often (seconds) when events arrived since the last one,
    /// which truncates the write-ahead log.
    pub snapshot_interval_secs: u64,
    /// ... and also as soon as the write-ahead log grows past this many bytes (bounds replay time).
    pub snapshot_wal_bytes: u64,
    /// fsync the write-ahead log before acknowledging events. Turning it off gives up the
    /// durability guarantee: only for benchmarks on throwaway state.
    pub wal_fsync: bool,
    /// Lock shards of the user table (a power of two); more shards, less write contention.
    pub shards: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            models: PathBuf::from("models"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            state_dir: None,
            now: None,
            future_tolerance_secs: 300,
            max_batch_size: 1000,
            max_events_per_request: 10_000,
            default_page_size: 100,
            max_page_size: 10_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 1024,
            model_poll_ms: 1000,
            snapshot_interval_secs: 300,
            snapshot_wal_bytes: 256 * 1024 * 1024,
            wal_fsync: true,
            shards: 64,
        }
    }
}

/// The server's notion of "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Wall,
    Fixed(Timestamp),
}

impl Clock {
    pub fn now(self) -> Timestamp {
        match self {
            Clock::Fixed(t) => t,
            Clock::Wall => chrono::Utc::now().timestamp(),
        }
    }
}

/// Parses RFC 3339 (`2024-06-01T08:00:00Z`) or a bare date (`2024-06-01`), which means the *end*
/// of that day (the next midnight, UTC), as `train --as-of` and `generate --end` read it, so
/// `--now` set to a data set's last date sees that date's events as past.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
}

impl ServeConfig {
    /// Defaults, then the TOML file (if any), then `TIERING__*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ServeError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(ServeError::io(path))?;
            let parsed: toml::Table = toml::from_str(&text)
                .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
            merge(&mut table, parsed);
        }
        // The defaults tell each variable's type: `TIERING__MODELS=2024` stays a path.
        let defaults = toml::Table::try_from(ServeConfig::default())
            .map_err(|e| ServeError::Config(format!("defaults: {e}")))?;
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(ServeError::Config(format!("{key}: empty key segment")));
            }
            let typed = env_value(lookup(&defaults, &path), &value)
                .map_err(|m| ServeError::Config(format!("{key}: {m}")))?;
            set_path(&mut table, &path, typed)
                .map_err(|m| ServeError::Config(format!("{key}: {m}")))?;
        }
        ServeConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| ServeError::Config(e.to_string()))
    }

    /// Checks every field; the message names the field and the accepted range.
    pub fn validate(&self) -> Result<(), ServeError> {
        let bad = |m: String| Err(ServeError::Config(m));
        if self.max_batch_size == 0 {
            return bad("max_batch_size must be at least 1".into());
        }
        if self.max_events_per_request == 0 {
            return bad("max_events_per_request must be at least 1".into());
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return bad(format!(
                "default_page_size must be in 1..=max_page_size ({}), got {}",
                self.max_page_size, self.default_page_size
            ));
        }
        if self.max_message_bytes < 4096 || self.max_message_bytes > (1 << 30) {
            return bad(format!(
                "max_message_bytes must be in 4096..=1073741824, got {}",
                self.max_message_bytes
            ));
        }
        if self.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests must be at least 1".into());
        }
        if self.model_poll_ms < 10 {
            return bad(format!(
                "model_poll_ms must be at least 10, got {}",
                self.model_poll_ms
            ));
        }
        if self.snapshot_interval_secs == 0 {
            return bad("snapshot_interval_secs must be at least 1".into());
        }
        if !self.shards.is_power_of_two() || self.shards > 4096 {
            return bad(format!(
                "shards must be a power of two in 1..=4096, got {}",
                self.shards
            ));
        }
        self.clock()?;
        Ok(())
    }

    /// The clock: pinned by `now`, else the wall clock.
    pub fn clock(&self) -> Result<Clock, ServeError> {
        match &self.now {
            None => Ok(Clock::Wall),
            Some(s) => parse_time(s).map(Clock::Fixed).ok_or_else(|| {
                ServeError::Config(format!("now: {s:?} is neither RFC 3339 nor YYYY-MM-DD"))
            }),
        }
    }

    /// `state_dir`, or by default a `state` directory beside the models directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        match self.models.file_name() {
            Some(name) if name != "state" => self.models.with_file_name("state"),
            // A models directory called `state` must not double as the state directory.
            Some(_) => self.models.with_file_name("serve-state"),
            // `.`, `..`, `/`: the models directory has no name to replace.
            None => self.models.join("..").join("state"),
        }
    }

    pub(crate) fn model_poll(&self) -> Duration {
        Duration::from_millis(self.model_poll_ms)
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    match (table.get(first)?, rest) {
        (v, []) => Some(v),
        (toml::Value::Table(t), rest) => lookup(t, rest),
        _ => None,
    }
}

/// An environment value, typed like the default it replaces (strings when there is none).
fn env_value(default: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    let t = raw.trim();
    match default {
        Some(toml::Value::Integer(_)) => t
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Some(toml::Value::Float(_)) => t
            .parse()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Some(toml::Value::Boolean(_)) => t
            .parse()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("expected true or false, got {raw:?}")),
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("{first} is not a table")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        ServeConfig::default().validate().unwrap();
        assert_eq!(
            ServeConfig::load(None, env(&[])).unwrap(),
            ServeConfig::default()
        );
    }

    #[test]
    fn env_overrides_the_file_and_parses_numbers_and_strings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "max_batch_size = 10\nnow = \"2024-06-01\"\nmodels = \"/m\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::load(
            Some(&file),
            env(&[
                ("TIERING__MAX_BATCH_SIZE", "20"),
                ("TIERING__WAL_FSYNC", "false"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.max_batch_size, 20);
        assert!(!cfg.wal_fsync);
        // A bare date is the end of that day: 2024-06-02T00:00:00Z.
        assert_eq!(cfg.clock().unwrap(), Clock::Fixed(1_717_286_400));
        assert_eq!(cfg.state_dir(), PathBuf::from("/state"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_field_named() {
        let e = ServeConfig::load(None, env(&[("TIERING__MAX_BATCH", "1")])).unwrap_err();
        assert!(e.to_string().contains("max_batch"), "{e}");
        let e = ServeConfig::load(None, env(&[("TIERING__MAX_BATCH_SIZE", "lots")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("TIERING__MAX_BATCH_SIZE: expected an integer"),
            "{e}"
        );
        let cfg = ServeConfig::load(
            None,
            env(&[("TIERING__MODELS", "2024"), ("TIERING__NOW", "2024-06-01")]),
        )
        .unwrap();
        assert_eq!(
            (cfg.models, cfg.now),
            (PathBuf::from("2024"), Some("2024-06-01".to_string()))
        );
        let cfg = ServeConfig {
            default_page_size: 0,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_page_size"));
        let cfg = ServeConfig {
            now: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("now"));
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(
            parse_time("1970-01-01"),
            Some(86_400),
            "a bare date is the end of that day"
        );
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_time("1970-01-01T08:00:00+08:00"), Some(0));
        assert_eq!(parse_time("01/02/1970"), None);
    }
}
