//! [`StateBackend`]: the one place that names every implementation of [`UserState`], so the rest
//! of the server holds one concrete type and calls it without dynamic dispatch.
//!
//! The async methods dispatch inside one `async` block per call: no box, and for the embedded
//! backend the inner future is already complete, so awaiting it costs a branch.

use super::embedded::EmbeddedState;
use super::redis::RedisState;
use super::{Applied, LogPosition, StateError, UserEvent, UserState};
use crate::bundle::Snapshot;
use crate::features::UserAggregate;
use std::future::Future;

/// The backend chosen at start; static dispatch to its implementation.
pub enum StateBackend {
    Embedded(EmbeddedState),
    Redis(RedisState),
}

impl StateBackend {
    /// False while a shared backend cannot be reached (readiness reports NOT_SERVING); the
    /// embedded state is always reachable.
    pub fn is_reachable(&self) -> bool {
        match self {
            StateBackend::Embedded(_) => true,
            StateBackend::Redis(s) => s.is_reachable(),
        }
    }
}

// The trait's signatures spelled out (rather than `async fn`) keep the `Send` bound visible.
#[allow(clippy::manual_async_fn)]
impl UserState for StateBackend {
    #[inline]
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<UserAggregate>, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.get(id).await,
                StateBackend::Redis(s) => s.get(id).await,
            }
        }
    }

    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<UserAggregate>>, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.get_many(ids).await,
                StateBackend::Redis(s) => s.get_many(ids).await,
            }
        }
    }

    fn erase(&self, id: &str) -> impl Future<Output = Result<bool, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.erase(id).await,
                StateBackend::Redis(s) => s.erase(id).await,
            }
        }
    }

    fn apply(
        &self,
        events: Vec<UserEvent>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.apply(events).await,
                StateBackend::Redis(s) => s.apply(events).await,
            }
        }
    }

    fn apply_logged(
        &self,
        events: Vec<(UserEvent, LogPosition)>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.apply_logged(events).await,
                StateBackend::Redis(s) => s.apply_logged(events).await,
            }
        }
    }

    fn applied_position(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.applied_position(id).await,
                StateBackend::Redis(s) => s.applied_position(id).await,
            }
        }
    }

    fn scan<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        T: Send,
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T + Sync,
    {
        match self {
            StateBackend::Embedded(s) => s.scan(visit),
            StateBackend::Redis(s) => s.scan(visit),
        }
    }

    fn users(&self) -> usize {
        match self {
            StateBackend::Embedded(s) => s.users(),
            StateBackend::Redis(s) => s.users(),
        }
    }

    fn refusing_writes(&self) -> bool {
        match self {
            StateBackend::Embedded(s) => s.refusing_writes(),
            StateBackend::Redis(s) => s.refusing_writes(),
        }
    }

    fn is_seeded(&self) -> bool {
        match self {
            StateBackend::Embedded(s) => s.is_seeded(),
            StateBackend::Redis(s) => s.is_seeded(),
        }
    }

    fn seed(
        &self,
        version: String,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.seed(version, snapshot).await,
                StateBackend::Redis(s) => s.seed(version, snapshot).await,
            }
        }
    }

    fn checkpoint(&self) -> impl Future<Output = Result<bool, StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.checkpoint().await,
                StateBackend::Redis(s) => s.checkpoint().await,
            }
        }
    }

    fn shutdown(&self) -> impl Future<Output = Result<(), StateError>> + Send {
        async move {
            match self {
                StateBackend::Embedded(s) => s.shutdown().await,
                StateBackend::Redis(s) => s.shutdown().await,
            }
        }
    }
}
