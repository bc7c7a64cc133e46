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
//! meets one reports INTERNAL, a start-up that meets one stops.

use super::config::ConfigError;
use super::state::StateError;
use std::net::SocketAddr;

/// Why a request failed; one variant per gRPC answer's cause.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A request field is wrong; `field` is its path in the request (`events[2].ts`).
    #[error("{field}: {message}")]
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
    #[error("the request's deadline passed before it was processed")]
    DeadlineExceeded,
    /// The live model changed between two pages of one pagination (the scores moved).
    #[error(
        "page_token: the model changed to {0} during pagination; start again from the first page"
    )]
    ModelChanged(String),
    /// The user state could not answer or accept the request.
    #[error(transparent)]
    State(#[from] StateError),
    /// The blocking task that ran the at-risk scan died (a panic).
    #[error("internal error: at-risk scan: {0}")]
    ScanTask(#[source] tokio::task::JoinError),
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
            RequestError::TooMany { .. } => Code::ResourceExhausted,
            RequestError::DeadlineExceeded => Code::DeadlineExceeded,
            RequestError::ModelChanged(_) => Code::Aborted,
            RequestError::State(StateError::LogFull { .. }) => Code::ResourceExhausted,
            RequestError::State(StateError::LogWriteFailed { .. }) => Code::Unavailable,
            RequestError::State(_) | RequestError::ScanTask(_) => Code::Internal,
        }
    }
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        let code = e.code();
        if code == tonic::Code::Internal {
            tracing::error!(error = %e, "internal error answering a request");
        }
        tonic::Status::new(code, e.to_string())
    }
}

/// Why the server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Opening, replaying or snapshotting the state failed (including [`StateError::Locked`]:
    /// another server holds the state directory).
    #[error(transparent)]
    State(#[from] StateError),
    #[error("metrics_listen {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gRPC listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The blocking task that opened the state died (a panic).
    #[error("opening the state: {0}")]
    OpenTask(#[source] tokio::task::JoinError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}
