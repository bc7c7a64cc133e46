//! [`StateBackend`]: the one place that names every implementation of [`UserState`], so the rest
//! of the server holds one concrete type and calls it without dynamic dispatch.

use super::embedded::EmbeddedState;
use super::{Applied, LogPosition, StateError, UserEvent, UserState};
use crate::bundle::Snapshot;
use crate::features::UserAggregate;
use std::future::Future;

/// The backend chosen at start; static dispatch to its implementation.
pub enum StateBackend {
    Embedded(EmbeddedState),
}

impl UserState for StateBackend {
    #[inline]
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<UserAggregate>, StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.get(id),
        }
    }

    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<UserAggregate>>, StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.get_many(ids),
        }
    }

    fn apply(
        &self,
        events: Vec<UserEvent>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.apply(events),
        }
    }

    fn apply_logged(
        &self,
        events: Vec<(UserEvent, LogPosition)>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.apply_logged(events),
        }
    }

    fn applied_position(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.applied_position(id),
        }
    }

    fn scan<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        T: Send,
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T + Sync,
    {
        match self {
            StateBackend::Embedded(s) => s.scan(visit),
        }
    }

    fn users(&self) -> usize {
        match self {
            StateBackend::Embedded(s) => s.users(),
        }
    }

    fn refusing_writes(&self) -> bool {
        match self {
            StateBackend::Embedded(s) => s.refusing_writes(),
        }
    }

    fn is_seeded(&self) -> bool {
        match self {
            StateBackend::Embedded(s) => s.is_seeded(),
        }
    }

    fn seed(
        &self,
        version: String,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.seed(version, snapshot),
        }
    }

    fn checkpoint(&self) -> impl Future<Output = Result<bool, StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.checkpoint(),
        }
    }

    fn shutdown(&self) -> impl Future<Output = Result<(), StateError>> + Send {
        match self {
            StateBackend::Embedded(s) => s.shutdown(),
        }
    }
}
