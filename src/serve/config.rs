//! Server configuration, layered: defaults → `--config FILE` (TOML) → `TIERING__*` environment
//! variables → command-line flags (applied by the CLI on the resulting struct), then validated.
//!
//! ```toml
//! # serve.toml: every field is optional
//! models = "models"
//! listen = "127.0.0.1:50051"
//! metrics_listen = "127.0.0.1:9090"
//! http_listen = "127.0.0.1:8080"   # HTTP/JSON API and web console
//! state_dir = "state"
//! now = "2024-06-01"            # quote it: a bare TOML date is not a string
//! max_batch_size = 1000
//! verify_key = ["keys/2026.pub", "keys/next/"]   # or one path; see `verify_key`
//! ```
//!
//! Environment: `TIERING__MAX_BATCH_SIZE=500` sets `max_batch_size`; a double underscore nests
//! (`TIERING__A__B` is `a.b`). A value is read as the type of the field's default (integer,
//! boolean), else as a string; unknown names are refused like unknown keys in the file.
//!
//! [`ServeConfig::check`] validates every field once and returns a [`ValidServeConfig`] (with the
//! clock already parsed); [`super::run`] accepts only that. Errors are [`ConfigError`], one
//! variant per cause, naming the field or variable.

use crate::bundle::{SignatureError, VerifyKeys};
use crate::features::time::{format_rfc3339, parse_earliest, parse_instant, TimeParseError};
use crate::features::{Timestamp, DEFAULT_EARLIEST_EVENT};
use crate::io::read::pseudonym::PseudonymKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// The defaults could not be turned into a table (a bug, not a user error).
    #[error("invalid configuration: defaults: {0}")]
    Defaults(#[source] toml::ser::Error),
    #[error("invalid configuration: {key}: empty key segment")]
    EmptyKeySegment { key: String },
    /// An environment value does not parse as the type of the field it sets.
    #[error("invalid configuration: {key}: expected {expected}, got {raw:?}")]
    EnvType {
        key: String,
        expected: &'static str,
        raw: String,
    },
    /// An environment variable nests below a field that is not a table.
    #[error("invalid configuration: {key}: {segment} is not a table")]
    NotATable { key: String, segment: String },
    /// Unknown keys, or values of the wrong type, after layering.
    #[error("invalid configuration: {0}")]
    Invalid(#[source] toml::de::Error),
    /// A field outside its accepted range; `rule` says what is accepted.
    #[error("invalid configuration: {field} must be {rule}, got {got}")]
    OutOfRange {
        field: &'static str,
        rule: String,
        got: String,
    },
    #[error("invalid configuration: now: {0}")]
    BadNow(#[source] TimeParseError),
    #[error("invalid configuration: earliest_event_time: {0}")]
    BadEarliestEventTime(#[source] TimeParseError),
    #[error("invalid configuration: tls_cert and tls_key go together")]
    TlsPair,
    #[error("invalid configuration: tls_client_ca needs tls_cert and tls_key")]
    ClientCaWithoutTls,
    /// A verify key file or directory is unreadable or holds no valid public key.
    #[error("invalid configuration: verify_key: {0}")]
    VerifyKey(#[source] SignatureError),
    /// `state_key_file` with a Redis state (it encrypts the embedded state only).
    #[error("invalid configuration: state_key_file applies to the embedded state (a directory), not to {0}")]
    StateKeyNeedsDir(String),
    /// `pseudonymize_key_file` is unreadable, malformed or open to others.
    #[error("invalid configuration: pseudonymize_key_file: {0}")]
    PseudonymKey(#[source] crate::io::read::pseudonym::PseudonymKeyError),
    /// `events` is not `kafka://BROKER[,BROKER...]/TOPIC`; `why` says which part is wrong.
    #[error("invalid configuration: events: {why}, got {got:?} (expected kafka://BROKER[,BROKER...]/TOPIC)")]
    BadEvents { got: String, why: &'static str },
    /// `events` names Kafka, but this binary was built without the `kafka` feature.
    #[error("invalid configuration: events: {got:?} needs the `kafka` feature, and this binary was built without it (cargo build --features kafka)")]
    KafkaNotBuilt { got: String },
    /// `events` with the embedded state: the aggregator writes only to a shared state, so this
    /// server would acknowledge events that its own reads never see.
    #[error("invalid configuration: events: an event topic needs a shared state (--state redis://...): the aggregator applies the topic to Redis, never to this server's state directory")]
    EventsNeedSharedState,
    /// `state_dir` (`--state`) looks like a URL but is not one this server accepts.
    #[error("invalid configuration: state {value:?}: {reason}; accepted: a directory, redis://HOST:PORT[/DB], or redis+cluster://HOST:PORT,HOST:PORT,...")]
    BadStateUrl { value: String, reason: &'static str },
}

/// Prefix of the environment variables that override the configuration file.
pub(crate) const ENV_PREFIX: &str = "TIERING__";

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
    /// The HTTP/JSON API (`/v1/...`) and the web console (`/`) on this address, behind the same
    /// TLS, tokens and roles as gRPC (see [`super::http`]); none when unset.
    pub http_listen: Option<SocketAddr>,
    /// Per-user state, the source of truth once seeded: a directory (snapshot + write-ahead
    /// log; the default: a `state` directory next to the models directory, `MODELS/../state`,
    /// see [`ServeConfig::state_dir`]), or a shared Redis: `redis://HOST:PORT[/DB]` or
    /// `redis+cluster://HOST:PORT,HOST:PORT,...` (see [`StateLocation`]). Also accepted as `state`.
    #[serde(alias = "state")]
    pub state_dir: Option<PathBuf>,
    /// Redis state only: start even though Redis holds no state marker, or an older one than
    /// `MODELS/redis-state.json` records (Redis was wiped or restored from an old backup), and
    /// seed what is missing from the bundle's snapshot. Without it such a start is refused.
    pub reseed_state: bool,
    /// Redis state only: a backend call that takes longer than this (milliseconds) fails with
    /// UNAVAILABLE.
    pub backend_timeout_ms: u64,
    /// Redis state over TLS (`rediss://`) only: PEM CA certificates the Redis server's
    /// certificate must chain to (default: the system's roots).
    pub redis_ca_file: Option<PathBuf>,
    /// Redis state only: the ACL user to authenticate as (`AUTH user password`; unset: the
    /// `default` user, which a password alone authenticates).
    pub redis_user: Option<String>,
    /// Redis state only: a file whose first line is the ACL password (refused if group or others
    /// can read it). Unset: the environment variable `TIERING_REDIS_PASSWORD`, else no password.
    /// The password itself is never a setting, a flag or part of the URL.
    pub redis_password_file: Option<PathBuf>,
    /// Pins the clock (RFC 3339 or YYYY-MM-DD, UTC) for historic data and deterministic tests;
    /// the wall clock when unset.
    pub now: Option<String>,
    /// Events stamped more than this many seconds after "now" are rejected (clock skew allowance).
    pub future_tolerance_secs: u64,
    /// Events stamped before this are rejected (INVALID_ARGUMENT naming `events[i].ts`): RFC 3339,
    /// or `YYYY-MM-DD` meaning the start of that day (UTC). Default 2000-01-01T00:00:00Z, so that
    /// the placeholders of a missing time (Unix 0, year 0001) are refused; the same rule as
    /// training's `earliest_event_time` ([`DEFAULT_EARLIEST_EVENT`]).
    pub earliest_event_time: String,
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
    /// ListAtRiskUsers answers being computed or streamed at once, server-wide; more are
    /// RESOURCE_EXHAUSTED. Each holds at most `max_page_size` scores until its client reads
    /// them or leaves.
    pub max_open_at_risk_streams: usize,
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams_per_connection: u32,
    /// Milliseconds a request's body may take to arrive after its headers (DEADLINE_EXCEEDED
    /// after it). Requests waiting for their body do not count against
    /// `max_concurrent_requests`.
    pub request_body_timeout_ms: u64,
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
    /// Seconds between HTTP/2 PINGs the server sends to check a connection is alive (0: off).
    pub http2_keepalive_interval_secs: u64,
    /// Seconds to wait for a PING's answer before closing the connection.
    pub http2_keepalive_timeout_secs: u64,
    /// TCP keepalive probes after this many seconds of silence (0: off).
    pub tcp_keepalive_secs: u64,
    /// A connection with no request in flight for this many seconds is closed (0: never).
    pub connection_idle_timeout_secs: u64,
    /// A connection older than this many seconds is asked to go away (HTTP/2 GOAWAY; clients
    /// reconnect, which rebalances them across replicas). 0: never.
    pub max_connection_age_secs: u64,
    /// ... and closed this many seconds after that if its requests have not finished.
    pub max_connection_age_grace_secs: u64,
    /// Connections open at once; further clients wait in the listen backlog. 0: the
    /// descriptor limit (`ulimit -n`) minus `fd_reserve`; a larger value is lowered to that.
    pub max_connections: usize,
    /// File descriptors kept out of the connection cap for the state directory, model bundles,
    /// the metrics endpoint and logging.
    pub fd_reserve: u64,
    /// The page-token keys, one `ID HEX` per line, the first signing (see
    /// [`super::page_token`]). Unset: the `TIERING_PAGE_TOKEN_KEYS` environment variable, else a
    /// random key per process. The keys themselves are never a setting or a flag.
    pub page_token_key_file: Option<PathBuf>,
    /// The key of the keyed hash (HMAC-SHA256) that the suppression and objection lists and the
    /// audit log carry instead of user ids (see [`super::privacy::lists`]). Unset: the
    /// `TIERING_PRIVACY_KEY` environment variable, else (embedded state) a key generated into
    /// `STATE/privacy/key`; a Redis state's replicas must share a configured key.
    pub privacy_key_file: Option<PathBuf>,
    /// The audit log file (JSON lines, appended and fsynced); log lines with target `audit`
    /// only when unset (see [`super::audit`]).
    pub audit_log: Option<PathBuf>,
    /// Public keys (PEM files, or directories of `*.pub` files) model bundles must be signed
    /// by: a bundle that is unsigned, signed by another key, or changed after signing is
    /// refused at start and at reload (the old model keeps serving). Several keys allow
    /// rotation. A list or one path (`TIERING__VERIFY_KEY=keys/`). Empty: bundles are not
    /// verified (logged as a warning at start).
    #[serde(deserialize_with = "one_or_many")]
    pub verify_key: Vec<PathBuf>,
    /// TLS on the gRPC and metrics listeners: the server's certificate chain (PEM). With
    /// `tls_key`; reloaded on change or SIGHUP (see [`super::tls`]).
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate from this CA (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// How often (seconds) the TLS files and the keys file are checked for a change.
    pub tls_reload_secs: u64,
    /// Longest TLS handshake, in milliseconds (each runs in its connection's task).
    pub tls_handshake_timeout_ms: u64,
    /// API keys (hashed) and mTLS identities with their roles (see [`super::auth::keys`]).
    /// Unset: authentication is off. Refused if group or others can read it.
    pub keys_file: Option<PathBuf>,
    /// Encrypt the embedded state's snapshot and event log with the key in this file (64 hex
    /// digits; refused if group or others can read it). A state is encrypted from its first
    /// seed on: one written without the key is refused with it, and the reverse. See
    /// [`super::state::embedded::StateKey`]. Not for the Redis state.
    pub state_key_file: Option<PathBuf>,
    /// Replace user ids by `hex(HMAC-SHA256(key, id))[..32]` as requests arrive (hex key of at
    /// least 16 bytes in this file); bundles must have been trained with the same key. See
    /// [`super::pseudonym`].
    pub pseudonymize_key_file: Option<PathBuf>,
    /// Requests per second per key or identity without its own `rate` (0: unlimited);
    /// RESOURCE_EXHAUSTED beyond it.
    pub quota_rate: f64,
    /// The bucket size of those quotas (requests that may come at once).
    pub quota_burst: u32,
    /// Server reflection (`grpcurl list`) on or off; when on, it needs no credentials.
    pub reflection: bool,
    /// Allow listening beyond loopback without TLS or without a keys file (logged loudly).
    pub insecure: bool,
    /// Lock shards of the user table (a power of two); more shards, less write contention.
    pub shards: usize,
    /// On SIGTERM / SIGINT, in-flight requests get this long (milliseconds) to finish; then the
    /// remaining connections are dropped (a client that never sends its request body cannot
    /// hold the shutdown), the final snapshot is written, and the server exits 0.
    pub shutdown_grace_ms: u64,
    /// Where RecordEvents' accepted events go: unset, they are applied to the local state (the
    /// default); `kafka://BROKER1:9092,BROKER2:9092/TOPIC` produces them to a Kafka topic keyed
    /// by user id, and an aggregator (`tiering aggregate`) applies them to the shared state.
    /// Needs a binary built with `--features kafka`.
    pub events: Option<String>,
    /// With `events`: milliseconds the broker has to acknowledge a RecordEvents batch
    /// (librdkafka's `message.timeout.ms`, retries included); UNAVAILABLE after it.
    pub events_timeout_ms: u64,
    /// With `events`: milliseconds the producer waits to fill a batch (`linger.ms`).
    pub events_linger_ms: u64,
    /// The at-risk ranking is rebuilt from every user this often (seconds; scores drift with
    /// time), and after each model swap. See [`super::ranking`].
    pub ranking_rebuild_secs: u64,
    /// A ListAtRiskUsers first page reuses the newest ranking version when it is younger than
    /// this (milliseconds), so a first page's figures may lag events by up to this much.
    pub ranking_publish_ms: u64,
    /// Most ranking versions kept (memory: at worst one copy of the ranking each); a walk whose
    /// version is evicted gets ABORTED (start again).
    pub ranking_max_versions: usize,
    /// A page token is honoured for this long (seconds) after its ranking version was
    /// published; then ABORTED (start again). A walk starts from a version at most half this old.
    pub page_token_max_age_secs: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            models: PathBuf::from("models"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            http_listen: None,
            state_dir: None,
            reseed_state: false,
            backend_timeout_ms: 2000,
            now: None,
            future_tolerance_secs: 300,
            earliest_event_time: format_rfc3339(DEFAULT_EARLIEST_EVENT),
            max_batch_size: 1000,
            max_events_per_request: 10_000,
            default_page_size: 100,
            max_page_size: 10_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 1024,
            max_concurrent_streams_per_connection: 100,
            max_open_at_risk_streams: 32,
            request_body_timeout_ms: 10_000,
            model_poll_ms: 1000,
            snapshot_interval_secs: 300,
            snapshot_wal_bytes: 256 * 1024 * 1024,
            wal_fsync: true,
            shards: 64,
            shutdown_grace_ms: 10_000,
            ranking_rebuild_secs: 300,
            ranking_publish_ms: 30_000,
            ranking_max_versions: 32,
            page_token_max_age_secs: 900,
            page_token_key_file: None,
            privacy_key_file: None,
            audit_log: None,
            verify_key: Vec::new(),
            http2_keepalive_interval_secs: 60,
            http2_keepalive_timeout_secs: 20,
            tcp_keepalive_secs: 60,
            connection_idle_timeout_secs: 300,
            max_connection_age_secs: 3600,
            max_connection_age_grace_secs: 60,
            max_connections: 0,
            fd_reserve: 64,
            redis_ca_file: None,
            redis_user: None,
            redis_password_file: None,
            events: None,
            events_timeout_ms: 10_000,
            events_linger_ms: 5,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_secs: 5,
            tls_handshake_timeout_ms: 10_000,
            keys_file: None,
            state_key_file: None,
            pseudonymize_key_file: None,
            quota_rate: 0.0,
            quota_burst: 100,
            reflection: true,
            insecure: false,
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

impl ServeConfig {
    /// Defaults, then the TOML file (if any), then `TIERING__*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let parsed: toml::Table =
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?;
            merge(&mut table, parsed);
        }
        // The defaults tell each variable's type: `TIERING__MODELS=2024` stays a path.
        let defaults =
            toml::Table::try_from(ServeConfig::default()).map_err(ConfigError::Defaults)?;
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::EmptyKeySegment { key });
            }
            let typed = env_value(lookup(&defaults, &path), &value).map_err(|expected| {
                ConfigError::EnvType {
                    key: key.clone(),
                    expected,
                    raw: value.clone(),
                }
            })?;
            set_path(&mut table, &path, typed).map_err(|segment| ConfigError::NotATable {
                key: key.clone(),
                segment,
            })?;
        }
        ServeConfig::deserialize(toml::Value::Table(table)).map_err(ConfigError::Invalid)
    }

    /// Checks every field once; the error names the field and the accepted range.
    pub fn check(self) -> Result<ValidServeConfig, ConfigError> {
        fn out_of_range(
            field: &'static str,
            rule: impl Into<String>,
            got: impl ToString,
        ) -> Result<(), ConfigError> {
            Err(ConfigError::OutOfRange {
                field,
                rule: rule.into(),
                got: got.to_string(),
            })
        }
        if self.max_batch_size == 0 {
            out_of_range("max_batch_size", "at least 1", self.max_batch_size)?;
        }
        if self.max_events_per_request == 0 {
            out_of_range(
                "max_events_per_request",
                "at least 1",
                self.max_events_per_request,
            )?;
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            out_of_range(
                "default_page_size",
                format!("in 1..=max_page_size ({})", self.max_page_size),
                self.default_page_size,
            )?;
        }
        if self.max_message_bytes < 4096 || self.max_message_bytes > (1 << 30) {
            out_of_range(
                "max_message_bytes",
                "in 4096..=1073741824",
                self.max_message_bytes,
            )?;
        }
        if self.max_concurrent_requests == 0 {
            out_of_range(
                "max_concurrent_requests",
                "at least 1",
                self.max_concurrent_requests,
            )?;
        }
        self.check_transport()?;
        self.check_ranking()?;
        if self.max_open_at_risk_streams == 0 {
            out_of_range(
                "max_open_at_risk_streams",
                "at least 1",
                self.max_open_at_risk_streams,
            )?;
        }
        if self.model_poll_ms < 10 {
            out_of_range("model_poll_ms", "at least 10", self.model_poll_ms)?;
        }
        if self.snapshot_interval_secs == 0 {
            out_of_range(
                "snapshot_interval_secs",
                "at least 1",
                self.snapshot_interval_secs,
            )?;
        }
        if !self.shards.is_power_of_two() || self.shards > 4096 {
            out_of_range("shards", "a power of two in 1..=4096", self.shards)?;
        }
        let clock = match &self.now {
            None => Clock::Wall,
            Some(s) => Clock::Fixed(parse_instant(s).map_err(ConfigError::BadNow)?),
        };
        let earliest_event =
            parse_earliest(&self.earliest_event_time).map_err(ConfigError::BadEarliestEventTime)?;
        let verify_keys = if self.verify_key.is_empty() {
            None
        } else {
            let keys = VerifyKeys::load(&self.verify_key).map_err(ConfigError::VerifyKey)?;
            Some(Arc::new(keys))
        };
        let events = match &self.events {
            None => None,
            Some(url) => Some(EventsTarget::parse(url)?),
        };
        if events.is_some() && self.events_timeout_ms == 0 {
            out_of_range("events_timeout_ms", "at least 1", 0)?;
        }
        if self.backend_timeout_ms == 0 {
            out_of_range("backend_timeout_ms", "at least 1", self.backend_timeout_ms)?;
        }
        let state = StateLocation::parse(self.state_dir())?;
        if events.is_some() && matches!(state, StateLocation::Dir(_)) {
            return Err(ConfigError::EventsNeedSharedState);
        }
        let pseudonym_key = self.read_data_keys(&state)?;
        Ok(ValidServeConfig {
            config: self,
            clock,
            earliest_event,
            verify_keys,
            events,
            state,
            pseudonym_key,
        })
    }

    /// Checks `state_key_file` (read when the state is opened) and reads
    /// `pseudonymize_key_file` (part of [`ServeConfig::check`]).
    fn read_data_keys(
        &self,
        state: &StateLocation,
    ) -> Result<Option<Arc<PseudonymKey>>, ConfigError> {
        if self.state_key_file.is_some() && !matches!(state, StateLocation::Dir(_)) {
            return Err(ConfigError::StateKeyNeedsDir(
                self.state_dir().display().to_string(),
            ));
        }
        let pseudonym_key = match &self.pseudonymize_key_file {
            None => None,
            Some(p) => Some(Arc::new(
                PseudonymKey::from_file(p).map_err(ConfigError::PseudonymKey)?,
            )),
        };
        Ok(pseudonym_key)
    }

    /// The at-risk ranking's settings (part of [`ServeConfig::check`]).
    fn check_ranking(&self) -> Result<(), ConfigError> {
        let out_of_range = |field: &'static str, rule: &str, got: u64| -> Result<(), ConfigError> {
            Err(ConfigError::OutOfRange {
                field,
                rule: rule.to_string(),
                got: got.to_string(),
            })
        };
        if self.ranking_rebuild_secs == 0 {
            out_of_range(
                "ranking_rebuild_secs",
                "at least 1",
                self.ranking_rebuild_secs,
            )?;
        }
        if self.ranking_max_versions == 0 || self.ranking_max_versions > 4096 {
            out_of_range(
                "ranking_max_versions",
                "in 1..=4096",
                self.ranking_max_versions as u64,
            )?;
        }
        if self.page_token_max_age_secs == 0 {
            out_of_range(
                "page_token_max_age_secs",
                "at least 1",
                self.page_token_max_age_secs,
            )?;
        }
        Ok(())
    }

    /// The transport's settings (part of [`ServeConfig::check`]).
    fn check_transport(&self) -> Result<(), ConfigError> {
        let out_of_range = |field: &'static str, rule: &str, got: u64| -> Result<(), ConfigError> {
            Err(ConfigError::OutOfRange {
                field,
                rule: rule.to_string(),
                got: got.to_string(),
            })
        };
        if self.max_concurrent_streams_per_connection == 0 {
            out_of_range(
                "max_concurrent_streams_per_connection",
                "at least 1",
                u64::from(self.max_concurrent_streams_per_connection),
            )?;
        }
        if self.request_body_timeout_ms == 0 {
            out_of_range(
                "request_body_timeout_ms",
                "at least 1",
                self.request_body_timeout_ms,
            )?;
        }
        if self.http2_keepalive_interval_secs > 0 && self.http2_keepalive_timeout_secs == 0 {
            return out_of_range(
                "http2_keepalive_timeout_secs",
                "at least 1 when http2_keepalive_interval_secs is set",
                0,
            );
        }
        if self.fd_reserve < 16 {
            return out_of_range("fd_reserve", "at least 16", self.fd_reserve);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::ClientCaWithoutTls);
        }
        if self.tls_reload_secs == 0 {
            return out_of_range("tls_reload_secs", "at least 1", 0);
        }
        if self.tls_handshake_timeout_ms == 0 {
            return out_of_range("tls_handshake_timeout_ms", "at least 1", 0);
        }
        if !(self.quota_rate.is_finite() && self.quota_rate >= 0.0) {
            return Err(ConfigError::OutOfRange {
                field: "quota_rate",
                rule: "a number of requests per second, 0 or more".into(),
                got: self.quota_rate.to_string(),
            });
        }
        Ok(())
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
}

/// A [`ServeConfig`] that passed [`ServeConfig::check`]: every field in range, the clock and
/// the earliest event time parsed. Read its fields through `Deref`; it cannot be changed or built any other way.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidServeConfig {
    config: ServeConfig,
    clock: Clock,
    earliest_event: Timestamp,
    verify_keys: Option<Arc<VerifyKeys>>,
    events: Option<EventsTarget>,
    state: StateLocation,
    pseudonym_key: Option<Arc<PseudonymKey>>,
}

/// A parsed `kafka://BROKER[,BROKER...]/TOPIC`: the event topic and its brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsTarget {
    /// `host:port,host:port` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    pub topic: String,
}

impl EventsTarget {
    /// Parses `kafka://BROKER[,BROKER...]/TOPIC`. A Kafka topic name is 1 to 249 characters of
    /// `[a-zA-Z0-9._-]`. Refused with [`ConfigError::KafkaNotBuilt`] when the binary has no
    /// Kafka client.
    pub fn parse(url: &str) -> Result<EventsTarget, ConfigError> {
        let bad = |why| ConfigError::BadEvents {
            got: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("the scheme must be kafka://"))?;
        let (brokers, topic) = rest
            .split_once('/')
            .ok_or_else(|| bad("no /TOPIC after the brokers"))?;
        if brokers.is_empty() || brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(bad("an empty broker address"));
        }
        let topic_ok = (1..=249).contains(&topic.len())
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && topic != "."
            && topic != "..";
        if !topic_ok {
            return Err(bad(
                "the topic must be 1 to 249 characters of [a-zA-Z0-9._-]",
            ));
        }
        if !cfg!(feature = "kafka") {
            return Err(ConfigError::KafkaNotBuilt {
                got: url.to_string(),
            });
        }
        Ok(EventsTarget {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
        })
    }
}

impl ValidServeConfig {
    /// The keys read from `verify_key` (`None`: bundles are not verified).
    pub fn verify_keys(&self) -> Option<Arc<VerifyKeys>> {
        self.verify_keys.clone()
    }

    /// Where the user state lives: `state_dir`, parsed.
    pub fn state(&self) -> &StateLocation {
        &self.state
    }

    /// The key read from `pseudonymize_key_file` (`None`: ids are used as sent).
    pub fn pseudonym_key(&self) -> Option<Arc<PseudonymKey>> {
        self.pseudonym_key.clone()
    }

    /// `earliest_event_time`, parsed: events before it are refused.
    pub fn earliest_event(&self) -> Timestamp {
        self.earliest_event
    }

    /// The clock: pinned by `now`, else the wall clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// `events`, parsed: `None` applies RecordEvents to the local state.
    pub fn events(&self) -> Option<&EventsTarget> {
        self.events.as_ref()
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<super::tls::TlsFiles> {
        Some(super::tls::TlsFiles {
            cert: self.config.tls_cert.clone()?,
            key: self.config.tls_key.clone()?,
            client_ca: self.config.tls_client_ca.clone(),
        })
    }

    pub(crate) fn model_poll(&self) -> Duration {
        Duration::from_millis(self.config.model_poll_ms)
    }
}

impl Deref for ValidServeConfig {
    type Target = ServeConfig;

    fn deref(&self) -> &ServeConfig {
        &self.config
    }
}

/// `verify_key`: one path (a string, as an environment variable gives) or a list of paths.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// Where the user state lives, from `state_dir` / `--state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// The embedded state: a directory of snapshot + write-ahead log.
    Dir(PathBuf),
    /// A shared Redis (standalone or Cluster).
    Redis(RedisTarget),
}

/// A Redis deployment to hold the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://HOST:PORT[/DB]` (port 6379 when left out, database 0 when left out);
    /// `rediss://…`: over TLS (`tls`).
    Standalone {
        host: String,
        port: u16,
        db: i64,
        tls: bool,
    },
    /// `redis+cluster://HOST:PORT,HOST:PORT,...`: seed nodes of a Redis Cluster (database 0);
    /// `rediss+cluster://…`: over TLS (`tls`).
    Cluster {
        nodes: Vec<(String, u16)>,
        tls: bool,
    },
}

impl RedisTarget {
    /// The node URLs the `redis` crate takes (`redis://HOST:PORT/DB`, `rediss://` over TLS).
    pub fn node_urls(&self) -> Vec<String> {
        let scheme = if self.tls() { "rediss" } else { "redis" };
        match self {
            RedisTarget::Standalone { host, port, db, .. } => {
                vec![format!("{scheme}://{host}:{port}/{db}")]
            }
            RedisTarget::Cluster { nodes, .. } => nodes
                .iter()
                .map(|(h, p)| format!("{scheme}://{h}:{p}"))
                .collect(),
        }
    }

    /// True for `rediss://` and `rediss+cluster://`.
    pub fn tls(&self) -> bool {
        match self {
            RedisTarget::Standalone { tls, .. } | RedisTarget::Cluster { tls, .. } => *tls,
        }
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Standalone {
                host,
                port,
                db,
                tls,
                ..
            } => {
                let s = if *tls { "s" } else { "" };
                write!(f, "redis{s}://{host}:{port}/{db}")
            }
            RedisTarget::Cluster { nodes, tls } => {
                let s = if *tls { "s" } else { "" };
                let list: Vec<String> = nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                write!(f, "redis{s}+cluster://{}", list.join(","))
            }
        }
    }
}

impl StateLocation {
    /// A directory, unless the value starts with a URL scheme (`redis://`, `redis+cluster://`,
    /// and over TLS `rediss://`, `rediss+cluster://`; any other `SCHEME://` is refused, and so
    /// are credentials in the URL).
    pub fn parse(value: PathBuf) -> Result<StateLocation, ConfigError> {
        let Some(text) = value.to_str() else {
            return Ok(StateLocation::Dir(value));
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(StateLocation::Dir(value));
        };
        let bad = |reason: &'static str| ConfigError::BadStateUrl {
            value: text.to_string(),
            reason,
        };
        let tls = scheme.starts_with("rediss");
        match scheme {
            "redis" | "rediss" => {
                let (hostport, db) = match rest.split_once('/') {
                    Some((hp, "")) => (hp, 0),
                    Some((hp, db)) => (
                        hp,
                        db.parse::<i64>()
                            .ok()
                            .filter(|d| (0..=15).contains(d))
                            .ok_or_else(|| bad("the database must be a number in 0..=15"))?,
                    ),
                    None => (rest, 0),
                };
                let (host, port) = host_port(hostport).map_err(bad)?;
                Ok(StateLocation::Redis(RedisTarget::Standalone {
                    host,
                    port,
                    db,
                    tls,
                }))
            }
            "redis+cluster" | "rediss+cluster" => {
                let list = rest.strip_suffix('/').unwrap_or(rest);
                if list.contains('/') {
                    return Err(bad("a cluster has only database 0: no /DB"));
                }
                let nodes = list
                    .split(',')
                    .map(host_port)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                Ok(StateLocation::Redis(RedisTarget::Cluster { nodes, tls }))
            }
            _ => Err(bad("unknown scheme")),
        }
    }
}

/// `HOST[:PORT]` (port 6379 when left out); no credentials in the URL (they would show in
/// process listings and logs).
fn host_port(s: &str) -> Result<(String, u16), &'static str> {
    if s.contains('@') {
        return Err("credentials in the URL are not accepted (they would show in process listings and logs): use redis_user and redis_password_file or TIERING_REDIS_PASSWORD");
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| "the port must be a number in 1..=65535")?,
        ),
        None => (s, 6379),
    };
    if host.is_empty() || port == 0 {
        return Err("a host and a port in 1..=65535 are needed");
    }
    Ok((host.to_string(), port))
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
/// The error is what was expected.
fn env_value(default: Option<&toml::Value>, raw: &str) -> Result<toml::Value, &'static str> {
    let t = raw.trim();
    match default {
        Some(toml::Value::Integer(_)) => t
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| "an integer"),
        Some(toml::Value::Float(_)) => t.parse().map(toml::Value::Float).map_err(|_| "a number"),
        Some(toml::Value::Boolean(_)) => t
            .parse()
            .map(toml::Value::Boolean)
            .map_err(|_| "true or false"),
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

/// The error names the segment that is not a table.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        // `load` refuses empty segments before it gets here; there is nothing to set.
        [] => Ok(()),
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
                _ => Err(first.clone()),
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
        ServeConfig::default().check().unwrap();
        assert_eq!(
            ServeConfig::load(None, env(&[])).unwrap(),
            ServeConfig::default()
        );
    }

    #[test]
    fn earliest_event_time_defaults_to_2000_and_a_bare_date_means_its_start() {
        let c = ServeConfig::default().check().unwrap();
        assert_eq!(c.earliest_event(), DEFAULT_EARLIEST_EVENT);
        let c = ServeConfig::load(None, env(&[("TIERING__EARLIEST_EVENT_TIME", "1970-01-01")]))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(c.earliest_event(), 0);
        let bad = ServeConfig {
            earliest_event_time: "yesterday".into(),
            ..ServeConfig::default()
        };
        let e = bad.check().unwrap_err();
        assert!(matches!(e, ConfigError::BadEarliestEventTime(_)), "{e}");
        assert!(e.to_string().contains("earliest_event_time"), "{e}");
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
        assert_eq!(cfg.state_dir(), PathBuf::from("/state"));
        assert_eq!(cfg.check().unwrap().clock(), Clock::Fixed(1_717_286_400));
    }

    #[test]
    fn verify_key_is_one_path_or_a_list_and_a_missing_key_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, "verify_key = [\"a.pub\", \"keys\"]\n").unwrap();
        let cfg = ServeConfig::load(Some(&file), env(&[])).unwrap();
        assert_eq!(
            cfg.verify_key,
            vec![PathBuf::from("a.pub"), PathBuf::from("keys")]
        );
        let cfg = ServeConfig::load(None, env(&[("TIERING__VERIFY_KEY", "/k/one.pub")])).unwrap();
        assert_eq!(cfg.verify_key, vec![PathBuf::from("/k/one.pub")]);
        assert!(ServeConfig::default()
            .check()
            .unwrap()
            .verify_keys()
            .is_none());
        let e = cfg.check().unwrap_err();
        assert!(matches!(e, ConfigError::VerifyKey(_)), "{e}");
        assert!(e.to_string().contains("verify_key: /k/one.pub"), "{e}");
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
            .check()
            .unwrap_err()
            .to_string()
            .contains("default_page_size"));
        let cfg = ServeConfig {
            now: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(matches!(cfg.check(), Err(ConfigError::BadNow(_))));
    }

    #[test]
    fn an_events_url_is_parsed_once_and_a_malformed_one_names_the_setting() {
        for (url, why) in [
            ("redis://h:1/t", "scheme"),
            ("kafka://h:1", "/TOPIC"),
            ("kafka://h:1,/t", "empty broker"),
            ("kafka:///t", "empty broker"),
            ("kafka://h:1/a b", "topic"),
            ("kafka://h:1/", "topic"),
        ] {
            let e = EventsTarget::parse(url).unwrap_err();
            assert!(matches!(e, ConfigError::BadEvents { .. }), "{url}: {e}");
            assert!(
                e.to_string().contains("events:") && e.to_string().contains(why),
                "{e}"
            );
        }
        let cfg = ServeConfig {
            events: Some("kafka://a:9092,b:9092/tiering.events".into()),
            ..Default::default()
        };
        let embedded = cfg.clone().check();
        if cfg!(feature = "kafka") {
            assert!(
                matches!(embedded, Err(ConfigError::EventsNeedSharedState)),
                "{embedded:?}"
            );
        }
        let cfg = ServeConfig {
            state_dir: Some(PathBuf::from("redis://127.0.0.1:6379")),
            ..cfg
        };
        let checked = cfg.check();
        if cfg!(feature = "kafka") {
            let target = checked.unwrap().events().cloned().unwrap();
            assert_eq!(target.brokers, "a:9092,b:9092");
            assert_eq!(target.topic, "tiering.events");
        } else {
            let e = checked.unwrap_err();
            assert!(e.to_string().contains("`kafka` feature"), "{e}");
        }
        assert_eq!(ServeConfig::default().check().unwrap().events(), None);
    }

    #[test]
    fn state_is_a_directory_or_a_redis_url_parsed_once() {
        let parse = |s: &str| StateLocation::parse(PathBuf::from(s));
        assert_eq!(
            parse("/var/state").unwrap(),
            StateLocation::Dir(PathBuf::from("/var/state"))
        );
        let standalone = |host: &str, port, db| {
            StateLocation::Redis(RedisTarget::Standalone {
                host: host.into(),
                port,
                db,
                tls: false,
            })
        };
        assert_eq!(
            parse("redis://10.0.0.1:7000").unwrap(),
            standalone("10.0.0.1", 7000, 0)
        );
        assert_eq!(
            parse("redis://cache/3").unwrap(),
            standalone("cache", 6379, 3)
        );
        let cluster = parse("redis+cluster://a:1,b:2,c:3").unwrap();
        assert_eq!(
            cluster,
            StateLocation::Redis(RedisTarget::Cluster {
                nodes: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
                tls: false,
            })
        );
        let Ok(StateLocation::Redis(t)) = parse("rediss://cache:6380/2") else {
            panic!("rediss:// is a Redis URL");
        };
        assert!(t.tls());
        assert_eq!(t.node_urls(), vec!["rediss://cache:6380/2".to_string()]);
        let Ok(StateLocation::Redis(t)) = parse("rediss+cluster://a:1,b:2") else {
            panic!("rediss+cluster:// is a Redis URL");
        };
        assert!(t.tls());
        assert_eq!(t.to_string(), "rediss+cluster://a:1,b:2");
        for bad in [
            "rediss://user:pw@h:1",
            "rediss://:pw@h:1",
            "redis://h:0",
            "redis://h:x",
            "redis://user:pw@h:1",
            "redis://h:1/99",
            "redis+cluster://a:1,b:2/1",
            "http://h:1",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, ConfigError::BadStateUrl { .. }), "{bad}: {e}");
        }
        let cfg = ServeConfig {
            state_dir: Some(PathBuf::from("redis://127.0.0.1:6390")),
            ..ServeConfig::default()
        }
        .check()
        .unwrap();
        assert_eq!(*cfg.state(), standalone("127.0.0.1", 6390, 0));
    }
}
