//! The live model slot: bundles loaded and checked off the request path, swapped in atomically.
//!
//! A [`Loader`] polls `MODELS/CURRENT` (and checks at once on SIGHUP). A changed version is
//! loaded on a blocking thread, verified (checksums, shapes, a smoke score), and only then
//! swapped in; readers holding the old model finish with it. A bundle that fails is logged,
//! counted, and refused until CURRENT changes again (or SIGHUP asks for a retry) while the old
//! model keeps serving. The first model loaded also seeds an empty state from its snapshot.
//! With verify keys (`verify_key`) the store refuses bundles not signed by one of them; such a
//! refusal takes the same path (logged, counted as refused, the old model keeps serving).
//! Why a bundle was refused is a [`ModelError`].

use super::error::RequestError;
use super::metrics::Metrics;
use super::state::{StateBackend, StateError, UserState};
use crate::bundle::{Bundle, BundleError, BundleStore, Manifest, Snapshot};
use crate::features::{Event, EventKind, UserAggregate, DAY};
use crate::model::Scorer;
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Why a bundle was not made live (it is logged and counted; the old model keeps serving).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{dir}: the manifest names version {version:?}, not its directory")]
    VersionMismatch { dir: PathBuf, version: String },
    #[error("{dir}: tier id {id:?} is empty or repeated")]
    BadTierId { dir: PathBuf, id: String },
    #[error("{dir}: the manifest's kind mapping is unusable")]
    BadKindMapping {
        dir: PathBuf,
        #[source]
        source: crate::features::vocabulary::MappingError,
    },
    /// Scoring a plain user gave an impossible answer.
    #[error("{dir}: smoke test failed: probability {probability} / tier {tier} from a plain user")]
    SmokeTest {
        dir: PathBuf,
        probability: f64,
        tier: u16,
    },
    /// Seeding the user state from the bundle's snapshot failed.
    #[error(transparent)]
    Seed(#[from] StateError),
    /// The blocking task that loaded the bundle died (a panic).
    #[error("model loading task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Why an earlier version serves instead of the one `MODELS/CURRENT` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The version CURRENT names.
    pub wanted: String,
    /// Why it was refused.
    pub reason: String,
}

/// A bundle ready to serve.
#[derive(Debug)]
pub struct LiveModel {
    pub version: String,
    /// Set when this model serves in place of CURRENT's (which failed to load at start).
    pub fallback: Option<Fallback>,
    pub manifest: Manifest,
    pub scorer: Scorer,
    /// Tier id → index into `scorer.tiers.tiers`.
    pub tier_index: HashMap<String, u16>,
    /// The bundle's kind mapping (`manifest.kinds`), prepared: RecordEvents and ScoreUser
    /// resolve kind names with it, as training did.
    pub kinds: crate::features::vocabulary::KindResolver,
    /// Tier id → value figures of the bundle's scored snapshot, read once at load
    /// ([`Bundle::tier_values`]); `None` when the bundle has no value model or its snapshot
    /// could not be read (GetModelInfo then leaves the tiers' value unset).
    pub tier_values: Option<std::collections::BTreeMap<String, crate::bundle::TierValue>>,
}

impl LiveModel {
    /// Checks what the bundle store does not: consistent ids, and that scoring works.
    pub(crate) fn from_bundle(bundle: Bundle) -> Result<Self, ModelError> {
        let version = bundle.manifest.version.clone();
        if bundle.dir.file_name().and_then(|n| n.to_str()) != Some(version.as_str()) {
            return Err(ModelError::VersionMismatch {
                dir: bundle.dir,
                version,
            });
        }
        // The bundle's category names join the process's dictionary (interests are named
        // with it; names learned from RecordEvents stay).
        crate::features::interests::learn_list(&bundle.manifest.data.categories);
        let tier_values = bundle.scorer.value.is_some().then(|| bundle.tier_values());
        let tier_values = tier_values.and_then(|r| {
            r.map_err(
                |e| tracing::warn!(error = %e, %version, "per-tier value figures unavailable"),
            )
            .ok()
        });
        crate::features::interests::learn_room_list(&bundle.manifest.data.rooms);
        let scorer = bundle.scorer;
        let mut tier_index = HashMap::new();
        for (i, t) in scorer.tiers.tiers.iter().enumerate() {
            if t.id.is_empty() || tier_index.insert(t.id.clone(), i as u16).is_some() {
                return Err(ModelError::BadTierId {
                    dir: bundle.dir,
                    id: t.id.clone(),
                });
            }
        }
        let t = bundle.manifest.as_of_ts;
        let mut buyer = UserAggregate::default();
        buyer.apply(&Event {
            ts: t - DAY,
            kind: EventKind::Order,
            amount: 10.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        });
        for agg in [UserAggregate::default(), buyer] {
            let s = scorer.score(&agg, t);
            if !(0.0..=1.0).contains(&s.churn_probability)
                || usize::from(s.tier) >= scorer.tiers.k()
            {
                return Err(ModelError::SmokeTest {
                    dir: bundle.dir,
                    probability: s.churn_probability,
                    tier: s.tier,
                });
            }
        }
        let kinds =
            bundle
                .manifest
                .kinds
                .resolver()
                .map_err(|source| ModelError::BadKindMapping {
                    dir: bundle.dir.clone(),
                    source,
                })?;
        Ok(LiveModel {
            version,
            fallback: None,
            manifest: bundle.manifest,
            scorer,
            tier_index,
            kinds,
            tier_values,
        })
    }
}

/// The slot readers take the live model from (lock-free).
#[derive(Default)]
pub struct ModelSlot(ArcSwapOption<LiveModel>, tokio::sync::Notify);

impl ModelSlot {
    pub fn get(&self) -> Result<Arc<LiveModel>, RequestError> {
        self.0.load_full().ok_or(RequestError::NoModel)
    }

    /// Runs `f` on the live model without touching its reference count (the hot path: no
    /// shared cache line is written, so concurrent readers do not slow each other down).
    pub fn with<R>(
        &self,
        f: impl FnOnce(&LiveModel) -> Result<R, RequestError>,
    ) -> Result<R, RequestError> {
        match self.0.load().as_ref() {
            Some(m) => f(m),
            None => Err(RequestError::NoModel),
        }
    }

    pub fn version(&self) -> Option<String> {
        self.0.load().as_ref().map(|m| m.version.clone())
    }

    pub fn set(&self, model: LiveModel) {
        self.0.store(Some(Arc::new(model)));
        // The at-risk ranking is rebuilt after each swap (see `ranking::refresh`).
        self.1.notify_one();
    }

    /// Resolves after the next [`ModelSlot::set`] (or at once if one happened since the last
    /// call returned): one waiter, the ranking's refresh task.
    pub async fn swapped(&self) {
        self.1.notified().await
    }
}

/// Name the health service reports our service under.
pub(crate) const SERVICE_NAME: &str = "tiering.v1.Tiering";

/// Watches `MODELS/CURRENT` and swaps models in.
pub(crate) struct Loader {
    pub store: BundleStore,
    pub slot: Arc<ModelSlot>,
    /// The user state, seeded from the first model's snapshot.
    pub state: Arc<StateBackend>,
    pub health: HealthReporter,
    pub metrics: Arc<Metrics>,
    /// The last version refused, not retried until CURRENT changes or a forced check.
    refused: Option<String>,
    /// The last CURRENT read error, logged once.
    last_error: Option<String>,
    /// "No model to serve yet" was logged (once, until CURRENT names a version).
    said_waiting: bool,
}

impl Loader {
    pub fn new(
        store: BundleStore,
        slot: Arc<ModelSlot>,
        state: Arc<StateBackend>,
        health: HealthReporter,
        metrics: Arc<Metrics>,
    ) -> Self {
        match store.verify_keys() {
            Some(keys) => tracing::info!(
                key_ids = %keys.key_ids().join(","),
                "model bundles must be signed by one of the verify keys"
            ),
            None => tracing::warn!(
                "model bundles are NOT verified (no verify_key / --verify-key): whoever can write to the models directory decides what is served"
            ),
        }
        Loader {
            store,
            slot,
            state,
            health,
            metrics,
            refused: None,
            last_error: None,
            said_waiting: false,
        }
    }

    /// Loads CURRENT if it names a version other than the live one. `forced`: retry a refused one.
    pub async fn check(&mut self, forced: bool) {
        let store = self.store.clone();
        let current = match tokio::task::spawn_blocking(move || store.current()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.read_error(e.to_string()),
            Err(e) => return self.read_error(e.to_string()),
        };
        self.last_error = None;
        let Some(version) = current else {
            return self.waiting();
        };
        self.said_waiting = false;
        let live = self.slot.version();
        if live.as_deref() == Some(version.as_str())
            || (!forced && self.refused.as_deref() == Some(version.as_str()))
        {
            return;
        }
        match self.load(&version).await {
            Ok(model) => {
                self.refused = None;
                self.slot.set(model);
                self.metrics.model_loaded(&version);
                self.metrics.model_fallback(None);
                // With a shared backend that is down, readiness waits for it (the backend
                // health task reports SERVING once it answers again).
                if self.state.is_reachable() {
                    self.health
                        .set_service_status("", ServingStatus::Serving)
                        .await;
                    self.health
                        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                        .await;
                }
                tracing::info!(
                    version,
                    previous = live.as_deref().unwrap_or("none"),
                    "model is live"
                );
            }
            Err(e) => {
                self.refused = Some(version.clone());
                self.metrics.model_refused();
                tracing::error!(
                    version,
                    error = %e,
                    still_serving = live.as_deref().unwrap_or("nothing"),
                    "refusing model bundle"
                );
                if live.is_none() {
                    self.fall_back(&version, e.to_string()).await;
                }
            }
        }
    }

    /// Nothing serves and CURRENT's bundle (`wanted`) failed: serve the newest version in
    /// `MODELS/HISTORY` that loads, loudly (error log, `tiering_model_fallback` metric,
    /// [`LiveModel::fallback`]). CURRENT is left as it is: an operator fixes or moves it.
    async fn fall_back(&mut self, wanted: &str, reason: String) {
        let history = std::fs::read_to_string(self.store.root.join("HISTORY")).unwrap_or_default();
        let mut tried = vec![wanted.to_string()];
        for candidate in history.lines().rev().map(str::trim) {
            if candidate.is_empty() || tried.iter().any(|t| t == candidate) {
                continue;
            }
            tried.push(candidate.to_string());
            match self.load(candidate).await {
                Ok(mut model) => {
                    model.fallback = Some(Fallback {
                        wanted: wanted.to_string(),
                        reason: reason.clone(),
                    });
                    self.slot.set(model);
                    self.metrics.model_loaded(candidate);
                    self.metrics.model_fallback(Some((wanted, candidate)));
                    self.health
                        .set_service_status("", ServingStatus::Serving)
                        .await;
                    self.health
                        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                        .await;
                    tracing::error!(
                        wanted,
                        serving = candidate,
                        reason,
                        "FALLBACK: the current model bundle does not load; serving the newest valid earlier version from HISTORY until CURRENT changes (fix or promote a bundle, or send SIGHUP to retry)"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(version = candidate, error = %e, "fallback candidate does not load either");
                }
            }
        }
        tracing::error!(wanted, "no version in HISTORY loads: nothing to serve");
    }

    /// CURRENT names no version: said once, with where and why, so that a wrong `--models`
    /// shows in the log and not only as UNAVAILABLE answers.
    fn waiting(&mut self) {
        if std::mem::replace(&mut self.said_waiting, true) {
            return;
        }
        let root = &self.store.root;
        let why = if root.is_dir() {
            "CURRENT does not exist"
        } else {
            "the models directory does not exist"
        };
        match self.slot.version() {
            Some(live) => tracing::warn!(
                models = %root.display(),
                "MODELS/CURRENT names no model ({why}); {live} keeps serving until CURRENT is written again"
            ),
            None => tracing::warn!(
                models = %root.display(),
                "no model to serve yet: {why}; health stays NOT_SERVING and calls answer UNAVAILABLE until `tiering train --models {}` (or `tiering models promote`) writes CURRENT",
                root.display()
            ),
        }
    }

    fn read_error(&mut self, e: String) {
        if self.last_error.as_deref() != Some(e.as_str()) {
            tracing::error!(error = %e, "cannot read MODELS/CURRENT");
            self.last_error = Some(e);
        }
    }

    async fn load(&self, version: &str) -> Result<LiveModel, ModelError> {
        let store = self.store.clone();
        let v = version.to_string();
        let need_seed = !self.state.is_seeded();
        let (model, snapshot): (LiveModel, Option<Snapshot>) =
            tokio::task::spawn_blocking(move || {
                let bundle = store.load(&v)?;
                let snapshot = if need_seed {
                    Some(bundle.load_snapshot()?)
                } else {
                    None
                };
                Ok::<_, ModelError>((LiveModel::from_bundle(bundle)?, snapshot))
            })
            .await
            .map_err(ModelError::Task)??;
        if let Some(snapshot) = snapshot {
            let users = snapshot.user_ids.len();
            self.state.seed(version.to_string(), snapshot).await?;
            tracing::info!(
                version,
                users,
                "seeded the user state from the bundle's snapshot"
            );
        }
        Ok(model)
    }

    /// Checks now, then every `poll` and on each `reload` signal, until `stop` fires.
    pub async fn watch(
        mut self,
        poll: Duration,
        mut reload: tokio::sync::mpsc::Receiver<()>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut forced = false;
        loop {
            self.check(forced).await;
            tokio::select! {
                _ = tokio::time::sleep(poll) => forced = false,
                Some(()) = reload.recv() => {
                    tracing::info!("reload requested");
                    forced = true;
                }
                _ = stop.changed() => return,
            }
        }
    }
}
