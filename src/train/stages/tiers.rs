//! Stage 4: tiers over the population as of `as_of`, scaled like the churn model's inputs, with
//! identities matched to the previous bundle's tiers.

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
    let mut x_now = feature_rows(&snap.aggs_now, &users_now, fs, w.as_of);
    scale_in_place(&mut x_now, d, scaler);
    let keys_now: Vec<u64> = users_now.iter().map(|&u| snap.keys[u]).collect();
    let prev_tiers = previous.map(|b| previous_in_new_space(b, fs, scaler));
    let (model, report) = tiers::fit(
        &x_now,
        d,
        &keys_now,
        &fs.features,
        params.tiers(),
        params.config().seed,
        prev_tiers.as_ref(),
    )?;
    Ok(Tiering {
        users_now,
        x_now,
        model,
        report,
    })
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
        same_features: ps.features.features == fs.features,
    }
}
