//! The server's two error types, kept apart because they go to different places:
//!
//! - [`RequestError`]: why one request failed. It becomes a gRPC status through the one table
//!   below ([`RequestError::code`], `From<RequestError> for tonic::Status`); INVALID_ARGUMENT
//!   messages start with the request field's path.
//! - [`ServeError`]: why the server could not start or stopped badly (configuration, the state
//!   directory, listeners, the transport). It is returned by [`super::run`], never sent to a
//!   client.
//!
//! Storage failures have their own type, [`StateError`] (in [`super::state`]); a request that
//! meets one reports INTERNAL, except an unreachable backend (a full or failing log, Redis down
//! or too slow: UNAVAILABLE) and Redis write contention (ABORTED); a start-up that meets one
//! stops.

use super::config::ConfigError;
use super::events::EventsError;
use super::state::StateError;
use std::net::SocketAddr;

/// Why a request failed; one variant per gRPC answer's cause.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A request field is wrong; `field` is its path in the request (`events[2].ts`), empty
    /// when the request as a whole is (a body that is not JSON).
    #[error("{}", with_field(field, message))]
    InvalidArgument { field: String, message: String },
    #[error("unknown user {0:?}")]
    UserNotFound(String),
    #[error(
        "no model is loaded yet (the server is starting, or MODELS/CURRENT names no valid bundle)"
    )]
    NoModel,
    /// More items in one request than the configured limit.
    #[error("{field}: {count} items exceed the limit of {limit} per request")]
    TooMany {
        field: &'static str,
        count: usize,
        limit: usize,
    },
    /// Every one of the `max_open_at_risk_streams` ListAtRiskUsers answers is in use.
    #[error("too many ListAtRiskUsers answers are open at once on this server; read or cancel yours, or retry later")]
    TooManyStreams,
    #[error("the request's deadline passed before it was processed")]
    DeadlineExceeded,
    /// The ranking version a page token pins is no longer held (expired, evicted, or another
    /// process's): ABORTED, start the walk again (as clients did when a model swap aborted one).
    #[error("page_token: the ranking version this walk started from is no longer held (versions live {max_age_secs} s and at most {max_versions} are kept; or the server restarted); start again from the first page")]
    PageVersionGone {
        max_age_secs: u64,
        max_versions: usize,
    },
    /// The first at-risk ranking is still being built when the request's deadline passes.
    #[error("the at-risk ranking is still being built (the server started recently); retry")]
    RankingNotBuilt,
    /// The user state could not answer or accept the request.
    #[error(transparent)]
    State(#[from] StateError),
    /// A model administration call (PromoteModel, RollbackModel, ListModels) was refused by the
    /// bundle store, as `tiering models` would be.
    #[error("{0}")]
    ModelAdmin(#[source] crate::bundle::BundleError),
    /// The blocking task of a model administration call died (a panic).
    #[error("internal error: model administration: {0}")]
    AdminTask(#[source] tokio::task::JoinError),
    /// The blocking task that ran the at-risk scan or ranking build died (a panic).
    #[error("internal error: at-risk scan: {0}")]
    ScanTask(#[source] tokio::task::JoinError),
    /// The event topic did not take the events (UNAVAILABLE when the broker did not
    /// acknowledge them, INTERNAL otherwise).
    #[error(transparent)]
    Events(EventsError),
    /// The person objected to profiling ([`super::privacy`]): no tier or score is given.
    #[error("profiling_objected: the person objected to profiling; their data is kept but no tier or score is given")]
    ProfilingObjected,
    /// ExportUser for an id the server holds nothing about.
    #[error("nothing is held about this user (erased: {erased})")]
    NothingHeld { erased: bool },
    #[error("{0}")]
    Privacy(#[source] crate::io::privacy::PrivacyError),
}

impl From<EventsError> for RequestError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::State(s) => RequestError::State(s),
            e => RequestError::Events(e),
        }
    }
}

/// "field: message", or the message alone when no field is named.
fn with_field(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_string()
    } else {
        format!("{field}: {message}")
    }
}

impl RequestError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            RequestError::InvalidArgument { .. } => Code::InvalidArgument,
            RequestError::UserNotFound(_) => Code::NotFound,
            RequestError::NoModel => Code::Unavailable,
            RequestError::TooMany { .. } | RequestError::TooManyStreams => Code::ResourceExhausted,
            RequestError::DeadlineExceeded => Code::DeadlineExceeded,
            RequestError::PageVersionGone { .. } => Code::Aborted,
            RequestError::RankingNotBuilt => Code::Unavailable,
            RequestError::State(StateError::LogFull { .. }) => Code::ResourceExhausted,
            RequestError::State(StateError::LogWriteFailed { .. }) => Code::Unavailable,
            RequestError::Events(e) if e.is_unavailable() => Code::Unavailable,
            // Redis unreachable (or too slow): retry later or on another replica.
            RequestError::State(e) if e.is_unavailable() => Code::Unavailable,
            RequestError::State(StateError::RedisContention { .. }) => Code::Aborted,
            RequestError::ModelAdmin(crate::bundle::BundleError::UnknownVersion { .. }) => {
                Code::NotFound
            }
            RequestError::ModelAdmin(crate::bundle::BundleError::BadVersionId(_)) => {
                Code::InvalidArgument
            }
            RequestError::ModelAdmin(_) => Code::FailedPrecondition,
            RequestError::ProfilingObjected
            | RequestError::Privacy(crate::io::privacy::PrivacyError::NoKey) => {
                Code::FailedPrecondition
            }
            RequestError::NothingHeld { .. } => Code::NotFound,
            RequestError::Privacy(_) => Code::Internal,
            RequestError::State(_)
            | RequestError::ScanTask(_)
            | RequestError::Events(_)
            | RequestError::AdminTask(_) => Code::Internal,
        }
    }
}

/// Most bytes of request text an error message quotes (see [`quote`]).
pub(crate) const MAX_QUOTED_BYTES: usize = 64;
/// Longest error message sent to a client: gRPC sends it in a header, and default clients refuse
/// headers over 8 KiB (answering RESOURCE_EXHAUSTED instead of the real error).
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024;

/// `s` cut to at most `max` bytes (on a character boundary).
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Request text as an error message quotes it: Debug-quoted, at most [`MAX_QUOTED_BYTES`] of
/// it, with the full length said when cut (`"kkkk…" (1048576 bytes)`).
pub fn quote(s: &str) -> String {
    let p = prefix(s, MAX_QUOTED_BYTES);
    if p.len() == s.len() {
        format!("{s:?}")
    } else {
        format!("{:?} ({} bytes)", format!("{p}…"), s.len())
    }
}

/// A whole message cut to [`MAX_MESSAGE_BYTES`] (the last line of defence behind [`quote`]).
pub(crate) fn capped(s: &str) -> String {
    let p = prefix(s, MAX_MESSAGE_BYTES - 3);
    if p.len() == s.len() {
        s.to_string()
    } else {
        format!("{p}…")
    }
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        let code = e.code();
        let message = capped(&e.to_string());
        if code == tonic::Code::Internal {
            tracing::error!(error = %message, "internal error answering a request");
        } else {
            tracing::debug!(code = ?code, error = %message, "request refused");
        }
        let field = e.field().and_then(|f| f.parse().ok());
        let mut status = tonic::Status::new(code, message);
        if let Some(field) = field {
            status.metadata_mut().insert(FIELD_METADATA, field);
        }
        status
    }
}

/// Status metadata naming the request field an error is about (`user_ids`, `events[3].ts`):
/// the HTTP API puts it in its error body's `field` ([`super::http`]); gRPC clients see it in
/// the trailers.
pub const FIELD_METADATA: &str = "tiering-field";

impl RequestError {
    /// The request field this error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            RequestError::InvalidArgument { field, .. } => Some(field),
            RequestError::TooMany { field, .. } => Some(field),
            RequestError::PageVersionGone { .. } => Some("page_token"),
            _ => None,
        }
    }
}

/// The HTTP status of a gRPC code on the HTTP/JSON API: the mapping of `google.rpc.Code`'s
/// documentation (and grpc-gateway's), so HTTP clients can branch on the status alone and read
/// the gRPC code from the body. RESOURCE_EXHAUSTED (a batch over `max_batch_size`, a quota, a
/// full event log) is 429; FAILED_PRECONDITION 400; ABORTED 409.
pub fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// The name of a gRPC code as the proto spells it (`NOT_FOUND`): the HTTP error body's `status`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why the server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The privacy key or lists could not be read.
    #[error("privacy: {0}")]
    Privacy(#[source] crate::io::privacy::PrivacyError),
    /// The audit log file could not be opened.
    #[error("audit log {}: {source}", path.display())]
    AuditLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Opening, replaying or snapshotting the state failed (including [`StateError::Locked`]:
    /// another server holds the state directory).
    #[error(transparent)]
    State(#[from] StateError),
    #[error("metrics_listen {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http_listen {addr}: {source}")]
    HttpListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The HTTP API could not read the proto descriptors (a defect of the build).
    #[error("HTTP API: {0}")]
    HttpApi(String),
    #[error("the gRPC listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The page-token key file or environment variable is unreadable or malformed.
    #[error(transparent)]
    PageTokenKeys(#[from] super::page_token::KeyError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The blocking task that opened the state died (a panic).
    #[error("opening the state: {0}")]
    OpenTask(#[source] tokio::task::JoinError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The event topic's producer could not be created (`events`).
    #[error("events: {0}")]
    Events(#[source] EventsError),
    #[error("TLS: {0}")]
    Tls(#[from] super::tls::TlsError),
    #[error(transparent)]
    Keys(#[from] super::auth::AuthError),
    /// Listening beyond loopback without TLS or without authentication, and no `insecure`.
    #[error("refusing to listen on {addr} without {missing}: anyone who can reach it could read and change every user's data; configure tls_cert/tls_key and keys_file, or set insecure = true (--insecure) to accept the risk")]
    Insecure { addr: SocketAddr, missing: String },
}

#[cfg(test)]
mod tests {
    use super::RequestError;

    #[test]
    fn an_invalid_argument_names_its_field_only_when_it_has_one() {
        assert_eq!(
            RequestError::invalid("events[2].ts", "is required").to_string(),
            "events[2].ts: is required"
        );
        assert_eq!(
            RequestError::invalid("", "the request body is not JSON").to_string(),
            "the request body is not JSON"
        );
    }
}
