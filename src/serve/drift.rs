//! Tier stability and drift at the server's edge (issue 13).
//!
//! - [`stability_info`]: the manifest's tier-stability figures as the proto message that
//!   `GetModelInfo` carries.
//! - [`spawn`]: the drift gauges. The population stability index of each model feature, of
//!   the churn probability and of the tier shares of the users the server holds, against the
//!   live bundle's training distributions (`manifest.drift_reference`). Recomputed by a
//!   background task — when a model is loaded and then every [`DRIFT_INTERVAL`] — never per
//!   request: a scan scores every held user.

use super::config::Clock;
use super::metrics::Metrics;
use super::slot::ModelSlot;
use super::state::{StateBackend, StateError, UserState};
use crate::bundle::manifest::{Manifest, TransitionCounts};
use crate::model::drift::DriftFigures;
use crate::pb as proto;
use prometheus::{GaugeVec, IntGauge, Opts};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the drift gauges are recomputed (and at once after a model loads).
pub const DRIFT_INTERVAL: Duration = Duration::from_secs(300);
/// How often the task checks whether a new model was loaded.
const TICK: Duration = Duration::from_secs(1);

fn transitions(t: &TransitionCounts) -> Vec<proto::TierTransition> {
    (t.moves().into_iter())
        .map(|(from, to, users)| proto::TierTransition {
            from_tier_id: from.to_string(),
            to_tier_id: to.to_string(),
            users,
        })
        .collect()
}

/// The manifest's stability figures for `GetModelInfo`; `None` for a first bundle.
pub(crate) fn stability_info(m: &Manifest) -> Option<proto::TierStability> {
    let s = m.metrics.stability.as_ref()?;
    Some(proto::TierStability {
        previous_version: s.previous_version.clone(),
        compared: s.compared,
        model_changed: s.model_changed,
        model_changed_share: s.model_changed_share,
        behaviour_compared: s.behaviour_compared,
        behaviour_changed: s.behaviour_changed,
        behaviour_changed_share: s.behaviour_changed_share,
        model_transitions: transitions(&s.model),
        behaviour_transitions: transitions(&s.behaviour),
    })
}

/// The gauges: `tiering_drift_psi{kind, name}` (kind = feature | churn_probability |
/// tier_shares) and `tiering_drift_users`.
struct Gauges {
    psi: GaugeVec,
    users: IntGauge,
}

impl Gauges {
    fn register(metrics: &Metrics) -> Result<Gauges, prometheus::Error> {
        let psi = GaugeVec::new(
            Opts::new(
                "tiering_drift_psi",
                "Population stability index of the held users against the live model's training population (> 0.25: retrain)",
            ),
            &["kind", "name"],
        )?;
        let users = IntGauge::new(
            "tiering_drift_users",
            "Users the drift gauges were computed over",
        )?;
        metrics.registry().register(Box::new(psi.clone()))?;
        metrics.registry().register(Box::new(users.clone()))?;
        Ok(Gauges { psi, users })
    }

    fn set(&self, f: &DriftFigures) {
        self.psi.reset();
        for (name, v) in &f.features {
            self.psi.with_label_values(&["feature", name]).set(*v);
        }
        let churn = ["churn_probability", "churn_probability"];
        self.psi.with_label_values(&churn).set(f.churn_probability);
        let tiers = ["tier_shares", "tier_shares"];
        self.psi.with_label_values(&tiers).set(f.tier_shares);
        self.users.set(f.users as i64);
    }
}

/// The drift of the held users as of `now` against the live model's reference; `None` when no
/// model is live or its bundle kept no reference. Blocking (a scan of the state).
pub(crate) fn measure(
    slot: &ModelSlot,
    state: &StateBackend,
    now: i64,
) -> Result<Option<DriftFigures>, StateError> {
    let Ok(model) = slot.get() else {
        return Ok(None);
    };
    let Some(reference) = model.manifest.drift_reference.as_ref() else {
        return Ok(None);
    };
    let scorer = &model.scorer;
    let d = scorer.features.len();
    let parts = state.scan(|users| {
        let mut counter = reference.counter();
        let (mut raw, mut x) = (vec![0.0; d], vec![0.0; d]);
        for (_, agg) in users {
            scorer.row(agg, now, &mut raw, &mut x);
            counter.add(&x, scorer.probability(&x), scorer.tiers.assign(&x));
        }
        counter
    })?;
    let total = parts.into_iter().reduce(|a, b| a.merge(b));
    Ok(total.map(|c| c.figures()))
}

/// Starts the drift task (features as of the server's `clock`, as requests see them); it stops
/// when `stop` changes. Without its gauges (a registration error) it logs why and does nothing.
pub(crate) fn spawn(
    slot: Arc<ModelSlot>,
    state: Arc<StateBackend>,
    metrics: &Metrics,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let gauges = match Gauges::register(metrics) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            tracing::error!(error = %e, "cannot register the drift gauges");
            return tokio::spawn(async {});
        }
    };
    tokio::spawn(async move {
        let mut last: Option<(String, Instant)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
            let Some(version) = slot.version() else {
                continue;
            };
            let due = last
                .as_ref()
                .is_none_or(|(v, at)| *v != version || at.elapsed() >= DRIFT_INTERVAL);
            if !due {
                continue;
            }
            last = Some((version, Instant::now()));
            let (slot, state, gauges) = (slot.clone(), state.clone(), gauges.clone());
            let measured = tokio::task::spawn_blocking(move || {
                measure(&slot, &state, clock.now()).map(|f| f.inspect(|f| gauges.set(f)))
            })
            .await;
            match measured {
                Ok(Ok(Some(f))) => {
                    let (what, psi) = f.largest();
                    tracing::info!(users = f.users, largest = %what, psi, "drift gauges recomputed");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "drift: cannot scan the state"),
                Err(e) => tracing::warn!(error = %e, "drift: the scan task failed"),
            }
        }
    })
}
