//! Stage 6b: how the new bundle compares with the previous one, and what drift is measured
//! against.
//!
//! - [`compare`]: every user known now is placed by the previous bundle and by the new one on
//!   this snapshot (a different tier id = *model changed*); the users of the previous bundle's
//!   snapshot that were known at its `as_of` are placed by the previous bundle then and now
//!   (*behaviour changed*). The same
//!   pass measures the drift of this snapshot against the previous bundle's training
//!   distributions, as the server's gauges do.
//! - [`reference`]: this bundle's own training distributions, kept for the next comparison.

use super::super::source::TrainData;
use super::windows::{Snapshots, Windows};
use crate::bundle::manifest::{Stability, TransitionCounts};
use crate::bundle::{Bundle, Snapshot};
use crate::features::known_at;
use crate::model::drift::{Binned, DriftCounter, DriftFigures, DriftReference};
use crate::model::scorer::{Score, Scorer};
use rayon::prelude::*;

/// Stability figures, and the drift when the previous bundle kept a reference.
pub(crate) struct Compared {
    pub stability: Stability,
    pub drift: Option<DriftFigures>,
}

/// Tier ids of a scorer, in its order.
fn ids(s: &Scorer) -> Vec<String> {
    s.tiers.tiers.iter().map(|t| t.id.clone()).collect()
}

fn share(n: u64, of: u64) -> f64 {
    n as f64 / of.max(1) as f64
}

/// Users per parallel part of the previous bundle's pass.
const PART: usize = 4096;

/// Previous bundle's tier of every user known now (by user index; `None` for the others),
/// with the drift of those users against the previous bundle's reference. Parts are counted
/// in parallel and merged in order (integer counts: the result does not depend on threads).
fn previous_now(
    prev: &Bundle,
    snap: &Snapshots,
    users_now: &[usize],
    as_of: i64,
) -> (Vec<Option<u16>>, Option<DriftFigures>) {
    let ps = &prev.scorer;
    let d = ps.features.len();
    let reference = prev.manifest.drift_reference.as_ref();
    let parts: Vec<(Vec<u16>, Option<DriftCounter>)> = users_now
        .par_chunks(PART)
        .map(|part| {
            let (mut raw, mut x) = (vec![0.0; d], vec![0.0; d]);
            let mut counter = reference.map(|r| r.counter());
            let tiers = (part.iter())
                .map(|&u| {
                    ps.row(&snap.aggs_now[u], as_of, &mut raw, &mut x);
                    let tier = ps.tiers.assign(&x);
                    if let Some(c) = counter.as_mut() {
                        c.add(&x, ps.probability(&x), tier);
                    }
                    tier as u16
                })
                .collect();
            (tiers, counter)
        })
        .collect();
    let mut tiers = vec![None; snap.aggs_now.len()];
    let mut total: Option<DriftCounter> = None;
    let mut users = users_now.iter();
    for (part, counter) in parts {
        for (t, &u) in part.into_iter().zip(&mut users) {
            tiers[u] = Some(t);
        }
        total = match (total, counter) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        };
    }
    (tiers, total.map(|c| c.figures()))
}

/// Model and behaviour changes against the previous bundle `(pb, ps)`, and the drift.
pub(crate) fn compare(
    table: &dyn TrainData,
    w: &Windows,
    snap: &Snapshots,
    users_now: &[usize],
    (pb, ps): (&Bundle, &Snapshot),
    scorer: &Scorer,
    scores: &[Score],
) -> Compared {
    let (prev_ids, new_ids) = (ids(&pb.scorer), ids(scorer));
    let (prev_now, drift) = previous_now(pb, snap, users_now, w.as_of);
    let mut model = TransitionCounts {
        from: prev_ids.clone(),
        to: new_ids.clone(),
        counts: vec![vec![0; new_ids.len()]; prev_ids.len()],
    };
    let (mut compared, mut model_changed) = (0u64, 0u64);
    for &u in users_now {
        if let Some(before) = prev_now[u] {
            let (b, a) = (usize::from(before), usize::from(scores[u].tier));
            model.counts[b][a] += 1;
            compared += 1;
            model_changed += u64::from(prev_ids[b] != new_ids[a]);
        }
    }
    let mut behaviour = TransitionCounts {
        from: prev_ids.clone(),
        to: prev_ids.clone(),
        counts: vec![vec![0; prev_ids.len()]; prev_ids.len()],
    };
    let then: Vec<(u32, u16)> = (ps.user_ids.par_iter().zip(&ps.aggregates))
        .filter(|(_, agg)| known_at(agg, ps.as_of))
        .filter_map(|(id, agg)| {
            let u = table.user_index(id)? as u32;
            Some((u, pb.scorer.placement(agg, ps.as_of).0))
        })
        .collect();
    let (mut behaviour_compared, mut behaviour_changed) = (0u64, 0u64);
    for (u, t_then) in then {
        if let Some(t_now) = prev_now[u as usize] {
            behaviour.counts[usize::from(t_then)][usize::from(t_now)] += 1;
            behaviour_compared += 1;
            behaviour_changed += u64::from(t_then != t_now);
        }
    }
    Compared {
        stability: Stability {
            previous_version: pb.manifest.version.clone(),
            compared,
            model_changed,
            model_changed_share: share(model_changed, compared),
            behaviour_compared,
            behaviour_changed,
            behaviour_changed_share: share(behaviour_changed, behaviour_compared),
            model,
            behaviour,
        },
        drift,
    }
}

/// This bundle's training distributions: each feature over the scaled rows the tiers were
/// fitted on (`x_now`, `d` columns, one row per user of `users_now`), the churn probability
/// and the tier shares of the same users.
pub(crate) fn reference(
    scorer: &Scorer,
    x_now: &[f64],
    users_now: &[usize],
    scores: &[Score],
) -> DriftReference {
    let names = scorer.feature_names();
    let d = names.len();
    let features: Vec<Binned> = names
        .par_iter()
        .enumerate()
        .map(|(j, name)| Binned::fit(*name, x_now.iter().skip(j).step_by(d.max(1)).copied()))
        .collect();
    let churn_probability = Binned::fit(
        "churn_probability",
        users_now.iter().map(|&u| scores[u].churn_probability),
    );
    let mut counts = vec![0u64; scorer.tiers.k()];
    for &u in users_now {
        if let Some(c) = counts.get_mut(usize::from(scores[u].tier)) {
            *c += 1;
        }
    }
    let n: u64 = counts.iter().sum();
    DriftReference {
        features,
        churn_probability,
        tier_shares: counts.iter().map(|&c| share(c, n)).collect(),
    }
}
