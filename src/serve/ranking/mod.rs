//! The at-risk ranking: every user's entry kept in order and maintained incrementally, so a
//! ListAtRiskUsers page is a range read instead of a scan that scores every user.
//!
//! # Design
//!
//! - **Orderings** ([`Order`]): churn probability descending (the default) and value at risk
//!   descending, ties by user id ascending (the order of [`super::at_risk::scan`]). A ranking keeps one ordered index per
//!   ordering; each entry's key is (the ordering's value, user id) and its value the user's
//!   [`Score`] (probability, tier, lifecycle stage, risk, factors: what filters test and what a
//!   page shows). The value-at-risk ordering has its own index keyed by (value at risk
//!   descending, user id), where the probability floor is a filter instead of where the walk
//!   stops; an interest filter is a new field of [`super::at_risk::AtRiskQuery`]
//!   tested per entry by [`Filter`](matches) (or, if very selective, an index of its own). Page
//!   tokens carry the ordering, so walks of different orderings never mix.
//! - **Versions**: the ranking a page reads is a *version*, immutable once published and named
//!   by a [`VersionId`] (a random per-process epoch and a sequence number, so a token from
//!   another process or an earlier run is never mistaken for one of ours). A first page reads
//!   the newest version, publishing a new one from the live ranking when events changed it and
//!   the newest is older than `ranking_publish_ms`; a version older than half of
//!   `page_token_max_age_secs` is never used to start a walk. The page token pins the version
//!   (with the ordering, the filters' hash and the cursor: the last (probability, user) returned),
//!   so a walk through all pages returns every matching user exactly once, in order, whatever
//!   events arrive meanwhile. A version is kept for `page_token_max_age_secs` after it was
//!   published, and at most `ranking_max_versions` are kept (the oldest goes first): a token whose
//!   version is gone gets ABORTED ([`RankingError::VersionGone`]) saying to start again from
//!   the first page (the status a walk cut by a model swap used to get, on which `tiering
//!   at-risk` already restarts). Publishing is O(1): the live index is a persistent B-tree
//!   (`imbl::OrdMap`) whose clone shares every node; later changes copy only the paths they touch,
//!   so a version costs memory in proportion to what changed after it (at worst a full copy:
//!   the memory bound is `ranking_max_versions` copies).
//! - **Which `now`**: every score in a version is computed as of the version's `as_of`, the time
//!   (the server's clock) at which the full build it descends from started. Users re-ranked after
//!   events are scored at that same `as_of` (an event stamped after it counts as "just now":
//!   recency zero), so a version equals a full rescan at its `as_of`. A page shows the version's
//!   figures, with `as_of` and `model_version` of the version; the in-memory ranking leaves
//!   out the user's top rooms and channel mix (no ordering or filter reads them) and a page
//!   shows them as the state holds them when it is served ([`memory`]).
//! - **Maintenance**: the RecordEvents handler calls [`Ranking::users_changed`] with the users it
//!   applied events to; the live ranking re-scores them (O(log n) each). The whole ranking is
//!   rebuilt every `ranking_rebuild_secs` (scores drift with time: recency grows) and after each
//!   model swap ([`refresh`] waits for either); users changed while a rebuild scans are re-ranked
//!   into the new ranking before it goes live. A version keeps the model it was scored with, so a
//!   walk started before a swap finishes on the old model's figures (or gets the clear error once
//!   its version is gone).
//! - **A fresh server**: a first page waits (within its deadline) for the first build, which
//!   starts when the first model loads and costs one scan of the state plus a sort; no page falls
//!   back to the old per-page scan.
//!
//! # Backends
//!
//! The server calls the [`Ranking`] trait through [`RankingBackend`] (an enum, statically
//! dispatched, as the user state is). [`memory::MemoryRanking`] serves the embedded state;
//! [`redis::RedisRanking`] serves the Redis state (multi-version rows in one sorted set per
//! generation, shared by every replica, maintained by one replica at a time under a lease).

pub mod memory;
pub mod redis;

use super::at_risk::AtRiskQuery;
use super::config::ValidServeConfig;
pub use super::page_token::{Order, VersionId};
use super::slot::{LiveModel, ModelSlot};
use super::state::{StateError, UserEvent};
use crate::features::Timestamp;
use crate::model::Score;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One page read from a version.
#[derive(Debug, Clone)]
pub struct RankedPage {
    pub version: VersionId,
    /// The time every score in the version is computed for.
    pub as_of: Timestamp,
    /// The model the version was scored with.
    pub model: Arc<LiveModel>,
    /// Users with their scores, in the ordering.
    pub users: Vec<(String, Score)>,
    /// True if more users match after the page.
    pub more: bool,
}

/// The ranking's settings (from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankingSettings {
    /// Full rebuild period.
    pub rebuild_every: Duration,
    /// A first page reuses the newest version when it is younger than this.
    pub publish_every: Duration,
    /// A version (and so the page tokens pinning it) lives this long after publication.
    pub max_age: Duration,
    /// Versions kept at most (the oldest is evicted first).
    pub max_versions: usize,
}

impl RankingSettings {
    /// From the configuration (`ranking_*`, `page_token_max_age_secs`).
    pub fn from_config(c: &ValidServeConfig) -> Self {
        RankingSettings {
            rebuild_every: Duration::from_secs(c.ranking_rebuild_secs),
            publish_every: Duration::from_millis(c.ranking_publish_ms),
            max_age: Duration::from_secs(c.page_token_max_age_secs),
            max_versions: c.ranking_max_versions,
        }
    }
}

/// Why the ranking could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    /// The version a page token pins expired, was evicted, or belongs to another process.
    #[error("page_token: the ranking version this walk started from is no longer held (versions live {max_age_secs} s and at most {max_versions} are kept; or the server restarted); start again from the first page")]
    VersionGone {
        max_age_secs: u64,
        max_versions: usize,
    },
    /// The first build has not finished within the request's deadline.
    #[error("the at-risk ranking is still being built (the server started recently)")]
    NotBuilt,
    /// No model is live yet.
    #[error("no model is loaded yet")]
    NoModel,
    /// Reading the user state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The ranking in Redis was scored with another model than the one this replica serves (a
    /// rolling deploy): UNAVAILABLE until the lease holder rebuilds with the new model.
    #[error("the at-risk ranking was scored with model {ranking:?}, this replica serves {serving:?}; retry (the ranking is rebuilt when its maintainer runs the new model)")]
    OtherModel { ranking: String, serving: String },
    /// The blocking task that built the ranking died (a panic).
    #[error("ranking build task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// What the server calls. Every method may wait on I/O in a network implementation; the
/// in-memory one answers from memory.
pub trait Ranking: Send + Sync {
    /// One page for `q`: from the version `q.pinned` names (a later page), or from the newest
    /// version (a first page; publishing one if the live ranking changed). `q.as_of` is ignored:
    /// the version's `as_of` applies. Waits until `deadline` at most for the first build.
    fn page(
        &self,
        q: &AtRiskQuery,
        deadline: Option<std::time::Instant>,
    ) -> impl Future<Output = Result<RankedPage, RankingError>> + Send;

    /// These users' aggregates changed (their events are applied): re-rank them in the live
    /// ranking. Failures are logged, not returned: the events are already acknowledged, and the
    /// next rebuild repairs the ranking.
    fn users_changed(&self, users: Vec<String>) -> impl Future<Output = ()> + Send;

    /// Rebuilds the whole ranking from the state with the live model, as of the clock's now,
    /// and publishes it. Does nothing before a model is live.
    fn rebuild(&self) -> impl Future<Output = Result<(), RankingError>> + Send;
}

/// The ranking the server holds, chosen at start.
pub enum RankingBackend {
    /// Boxed: it holds its trees inline and is far larger than the Redis handle.
    Memory(Box<memory::MemoryRanking>),
    Redis(redis::RedisRanking),
}

impl Ranking for RankingBackend {
    async fn page(
        &self,
        q: &AtRiskQuery,
        deadline: Option<std::time::Instant>,
    ) -> Result<RankedPage, RankingError> {
        match self {
            RankingBackend::Memory(r) => r.page(q, deadline).await,
            RankingBackend::Redis(r) => r.page(q, deadline).await,
        }
    }

    async fn users_changed(&self, users: Vec<String>) {
        match self {
            RankingBackend::Memory(r) => r.users_changed(users).await,
            RankingBackend::Redis(r) => r.users_changed(users).await,
        }
    }

    async fn rebuild(&self) -> Result<(), RankingError> {
        match self {
            RankingBackend::Memory(r) => r.rebuild().await,
            RankingBackend::Redis(r) => r.rebuild().await,
        }
    }
}

/// The distinct users of a batch of events (the argument of [`Ranking::users_changed`]).
pub fn touched_users(events: &[UserEvent]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.user_id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub use super::at_risk::matches;

/// Makes the ranking for the state and starts its maintenance: with the Redis state, a
/// [`redis::RedisRanking`] and its [`redis::maintain`] loop (the ranking lives in Redis, shared
/// by every replica); otherwise a [`memory::MemoryRanking`] and its [`refresh`] task.
pub fn start(
    config: &ValidServeConfig,
    state: &Arc<super::state::StateBackend>,
    slot: &Arc<ModelSlot>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Arc<RankingBackend>, tokio::task::JoinHandle<()>) {
    let settings = RankingSettings::from_config(config);
    if let Some(r) = redis::RedisRanking::new(state.clone(), slot.clone(), config.clock(), settings)
    {
        let ranking = Arc::new(RankingBackend::Redis(r));
        let task = tokio::spawn(redis::maintain(ranking.clone(), slot.clone(), stop));
        return (ranking, task);
    }
    let ranking = Arc::new(RankingBackend::Memory(Box::new(
        memory::MemoryRanking::new(state.clone(), slot.clone(), config.clock(), settings),
    )));
    let task = tokio::spawn(refresh(
        ranking.clone(),
        slot.clone(),
        settings.rebuild_every,
        stop,
    ));
    (ranking, task)
}

/// Rebuilds after each model swap and every `every`, until `stop` fires. The first model's
/// load counts as a swap, so the first build starts as soon as there is a model.
pub async fn refresh(
    ranking: Arc<RankingBackend>,
    slot: Arc<ModelSlot>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut built_once = false;
    loop {
        tokio::select! {
            _ = slot.swapped() => {}
            _ = tokio::time::sleep(every), if built_once => {}
            _ = stop.changed() => return,
        }
        let started = std::time::Instant::now();
        match ranking.rebuild().await {
            Ok(()) => {
                built_once = true;
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "at-risk ranking rebuilt"
                );
            }
            Err(e) => tracing::error!(error = %e, "at-risk ranking rebuild failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{EventKind, LifecycleStage};

    fn query() -> AtRiskQuery {
        AtRiskQuery {
            min_probability: 0.5,
            tiers: Some(vec![false, true]),
            stages: None,
            categories: None,
            limit: 10,
            as_of: 0,
            after: None,
            filter_hash: 0,
            order: Order::ChurnDescending,
            exclude_churned: false,
            pinned: None,
        }
    }

    fn score(p: f64, tier: u16, stage: LifecycleStage) -> Score {
        Score {
            churn_probability: p,
            tier,
            lifecycle_stage: stage,
            ..Score::default()
        }
    }

    #[test]
    fn filters_test_the_probability_floor_tiers_and_stages() {
        let mut q = query();
        assert!(matches(&q, &score(0.5, 1, LifecycleStage::Silent)));
        assert!(!matches(&q, &score(0.49, 1, LifecycleStage::Silent)));
        assert!(!matches(&q, &score(0.9, 0, LifecycleStage::Silent)));
        assert!(
            !matches(&q, &score(0.9, 7, LifecycleStage::Silent)),
            "unknown tier"
        );
        let mut stages = [false; LifecycleStage::ALL.len()];
        stages[LifecycleStage::Churned as usize] = true;
        q.stages = Some(stages);
        assert!(!matches(&q, &score(0.9, 1, LifecycleStage::Silent)));
        assert!(matches(&q, &score(0.9, 1, LifecycleStage::Churned)));
        q.exclude_churned = true;
        assert!(!matches(&q, &score(0.9, 1, LifecycleStage::Churned)));
        q.stages = None;
        assert!(matches(&q, &score(0.9, 1, LifecycleStage::AboutToChurn)));
    }

    #[test]
    fn touched_users_are_each_named_once() {
        let ev = |u: &str| UserEvent {
            user_id: u.into(),
            ts: 0,
            kind: EventKind::Like,
            amount: 0.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        };
        let got = touched_users(&[ev("b"), ev("a"), ev("b")]);
        assert_eq!(got, ["a", "b"]);
    }
}
