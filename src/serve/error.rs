//! The serving error type, and the one table that maps it to gRPC status codes.

use crate::bundle::BundleError;
use std::path::PathBuf;

/// Everything that can go wrong while serving: request errors (mapped to gRPC codes by the
/// `From<ServeError> for tonic::Status` table below) and start-up / storage errors.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    /// The write-ahead log cannot accept writes (a failed write or fsync leaves its state unknown).
    #[error("event log unavailable: {0}")]
    LogUnavailable(String),

    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The state directory holds something we cannot trust (a CRC failure mid-log, a bad
    /// snapshot, a log without a snapshot).
    #[error("{path}: corrupt server state: {message}")]
    CorruptState { path: PathBuf, message: String },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServeError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ServeError {
        let path = path.into();
        move |source| ServeError::Io { path, source }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ServeError::InvalidArgument { .. } => Code::InvalidArgument,
            ServeError::UserNotFound(_) => Code::NotFound,
            ServeError::NoModel => Code::Unavailable,
            ServeError::TooMany { .. } => Code::ResourceExhausted,
            ServeError::DeadlineExceeded => Code::DeadlineExceeded,
            ServeError::ModelChanged(_) => Code::Aborted,
            ServeError::LogUnavailable(_)
            | ServeError::Config(_)
            | ServeError::Io { .. }
            | ServeError::Bundle(_)
            | ServeError::CorruptState { .. }
            | ServeError::Transport(_)
            | ServeError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServeError> for tonic::Status {
    fn from(e: ServeError) -> Self {
        let code = e.code();
        if code == tonic::Code::Internal {
            tracing::error!(error = %e, "internal error answering a request");
        }
        tonic::Status::new(code, e.to_string())
    }
}
