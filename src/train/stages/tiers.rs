//! Stage 4: tiers over the population as of `as_of`, scaled like the churn model's inputs, with
//! identities matched to the previous bundle's tiers.
//!
//! The purchase candidates ([`crate::features::Feature::PURCHASE`]) are churn inputs, not tier
//! dimensions: k-means sees them as 0 (the scaled mean) for every user, so every centroid holds
//! 0 there and a user's distance to each centroid differs by the same amount whatever their
//! value: the served assignment (`TierModel::assign` on the full row) is the one fitted, and the
//! tiers are those the other features give.

use super::super::pipeline::TrainError;
use super::rows::{feature_rows, scale_in_place};
use super::windows::{Snapshots, Windows};
use crate::bundle::Bundle;
use crate::features::{known_at, FeatureSet, StandardScaler};
use crate::model::tiers::{self, PreviousTiers, TierFitReport, TierModel};
use crate::train::config::ValidTrainParams;

/// The fitted tiers and the rows they were fitted on.
pub(crate) struct Tiering {
    /// The users known at `as_of` (user indices).
    pub users_now: Vec<usize>,
    /// Their features, standardised, row-major (as k-means saw them).
    pub x_now: Vec<f64>,
    pub model: TierModel,
    pub report: TierFitReport,
}

pub(crate) fn fit_tiers(
    w: &Windows,
    snap: &Snapshots,
    scaler: &StandardScaler,
    params: &ValidTrainParams,
    previous: Option<&Bundle>,
) -> Result<Tiering, TrainError> {
    let fs = &snap.features;
    let d = fs.len();
    let users_now: Vec<usize> = (0..snap.aggs_now.len())
        .filter(|&u| known_at(&snap.aggs_now[u], w.as_of))
        .collect();
    let purchases = snap.purchases.now.as_ref();
    let mut x_now = feature_rows(&snap.aggs_now, &users_now, fs, purchases, w.as_of);
    scale_in_place(&mut x_now, d, scaler);
    let keys_now: Vec<u64> = users_now.iter().map(|&u| snap.keys[u]).collect();
    let mut prev_tiers = previous.map(|b| previous_in_new_space(b, fs, scaler));
    let masked: Vec<usize> = (0..d).filter(|&j| fs.features[j].is_purchase()).collect();
    if let Some(p) = prev_tiers.as_mut() {
        let _ = take_columns(&mut p.centroids, d, &masked);
    }
    let saved = take_columns(&mut x_now, d, &masked);
    let fitted = tiers::fit(
        &x_now,
        d,
        &keys_now,
        &fs.features,
        params.tiers(),
        params.config().seed,
        prev_tiers.as_ref(),
    );
    put_columns(&mut x_now, d, &masked, &saved);
    let (model, report) = fitted?;
    Ok(Tiering {
        users_now,
        x_now,
        model,
        report,
    })
}

/// The features k-means clusters on, in order.
fn clustered(fs: &FeatureSet) -> Vec<crate::features::Feature> {
    fs.features
        .iter()
        .copied()
        .filter(|f| !f.is_purchase())
        .collect()
}

/// Zeroes the columns `cols` of row-major `x` (`d` columns), returning their values.
fn take_columns(x: &mut [f64], d: usize, cols: &[usize]) -> Vec<f64> {
    if cols.is_empty() {
        return Vec::new();
    }
    let mut saved = Vec::with_capacity(x.len() / d * cols.len());
    for row in x.chunks_exact_mut(d) {
        for &j in cols {
            saved.push(std::mem::take(&mut row[j]));
        }
    }
    saved
}

/// Puts back what [`take_columns`] took.
fn put_columns(x: &mut [f64], d: usize, cols: &[usize], saved: &[f64]) {
    if cols.is_empty() {
        return;
    }
    for (row, vals) in x.chunks_exact_mut(d).zip(saved.chunks_exact(cols.len())) {
        for (&j, &v) in cols.iter().zip(vals) {
            row[j] = v;
        }
    }
}

/// The previous bundle's centroids, mapped into the new scaled space: previous scaled ->
/// previous transformed (inverse scaler) -> new feature order (a feature the previous model
/// lacked sits at the new mean) -> new scaled.
fn previous_in_new_space<'a>(
    prev: &'a Bundle,
    fs: &FeatureSet,
    scaler: &StandardScaler,
) -> PreviousTiers<'a> {
    let ps = &prev.scorer;
    let pd = ps.features.len();
    let d = fs.len();
    let mut centroids = Vec::with_capacity(ps.tiers.k() * d);
    for c in 0..ps.tiers.k() {
        let mut pc = ps.tiers.centroid(c).to_vec();
        ps.scaler.inverse_in_place(&mut pc);
        let mut row: Vec<f64> = fs
            .features
            .iter()
            .enumerate()
            .map(|(j, f)| {
                ps.features
                    .position(*f)
                    .filter(|&pj| pj < pd)
                    .map_or(scaler.mean[j], |pj| pc[pj])
            })
            .collect();
        scaler.transform_in_place(&mut row);
        centroids.extend(row);
    }
    PreviousTiers {
        identities: &ps.tiers.tiers,
        centroids,
        // The purchase candidates are not tier dimensions (see the module docs).
        same_features: clustered(&ps.features) == clustered(fs),
    }
}
