//! Stages 5 and 6: the served [`Scorer`] (RFM thresholds from snapshot B's buyers), everyone
//! scored as of `as_of`, and the tier profiles (means in original units, descriptions).

use super::candidates::Fitted;
use super::rows::Labelled;
use super::tiers::Tiering;
use super::windows::{Snapshots, Windows};
use crate::features::{Feature, RfmThresholds, Timestamp, UserAggregate};
use crate::model::btyd::{BgNbd, ValueModel};
use crate::model::identity;
use crate::model::scorer::{quantiles, Score, Scorer};
use crate::model::tiers::TierModel;
use crate::train::config::ValueConfig;

/// Builds the served scorer from the final fit and the tiers, and scores every user as of
/// `as_of`; the quantile table comes from the known users' probabilities.
pub(crate) fn score_all(
    w: &Windows,
    snap: &Snapshots,
    labelled_b: &Labelled,
    final_fit: &Fitted,
    tiers: &TierModel,
    config: &super::super::config::TrainConfig,
    users_now: &[usize],
) -> (Scorer, Vec<Score>) {
    // RFM thresholds from buyers at snapshot B (the population the model learned from).
    let aggs_b = &snap.aggs_b;
    let rfm = RfmThresholds::fit(
        labelled_b
            .users
            .iter()
            .filter(|&&u| aggs_b[u].is_buyer())
            .map(|&u| {
                let a = &aggs_b[u];
                (
                    Feature::RecencyDays.value(a, w.snap_b),
                    f64::from(a.orders),
                    a.net_spend(),
                )
            }),
    );
    let chosen = final_fit.chosen();
    let mut scorer = Scorer::from_parts(
        snap.features.clone(),
        final_fit.scaler.clone(),
        tiers.clone(),
        chosen.model.clone(),
        chosen.platt,
        config.risk,
        rfm,
        config.lifecycle,
    );
    scorer.purchases = snap.purchases.now;
    let bgnbd = snap.purchases.now.map(|p| p.bgnbd);
    scorer.value = fit_value(&snap.aggs_now, &snap.keys, w.as_of, bgnbd, &config.value);
    let mut scores = vec![Score::default(); snap.aggs_now.len()];
    scorer.score_batch(&snap.aggs_now, w.as_of, &mut scores);
    let known_probs: Vec<f64> = users_now
        .iter()
        .map(|&u| scores[u].churn_probability)
        .collect();
    scorer.risk_quantiles = quantiles(&known_probs);
    scorer.refresh_percentiles(&mut scores);
    (scorer, scores)
}

/// BG/NBD + Gamma-Gamma on the buyers known at `as_of` (the served scorer's value figures);
/// `None` when switched off, or when there is nothing to fit on or the fit fails (logged: the
/// figures are then 0, the churn model is unaffected). `bgnbd`: the purchase candidates' fit on
/// the same buyers, reused instead of a second fit.
pub(crate) fn fit_value(
    aggs: &[UserAggregate],
    keys: &[u64],
    as_of: Timestamp,
    bgnbd: Option<BgNbd>,
    config: &ValueConfig,
) -> Option<ValueModel> {
    if !config.enabled {
        return None;
    }
    let customers = super::purchases::customers_at(aggs, keys, as_of);
    match ValueModel::fit_with(
        &customers,
        bgnbd,
        config.gamma_gamma_basis,
        config.horizon_days,
        config.monthly_discount,
    ) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "no value model: CLV and value at risk are 0");
            None
        }
    }
}

/// Per tier: users, summed churn probability, and feature means in original units.
pub(crate) struct Profiles {
    pub counts: Vec<u64>,
    pub prob_sums: Vec<f64>,
    /// Row-major k × d.
    pub means: Vec<f64>,
    /// Per tier: users whose interests hold each category (by hash).
    pub categories: Vec<std::collections::HashMap<u32, u64>>,
}

/// Profiles every tier over the users known at `as_of` and writes each tier's description
/// into `scorer.tiers`.
pub(crate) fn profiles(
    w: &Windows,
    snap: &Snapshots,
    tiering: &Tiering,
    scores: &[Score],
    scorer: &mut Scorer,
) -> Profiles {
    let fs = &snap.features;
    let d = fs.len();
    let k = scorer.tiers.k();
    let mut sums = vec![0.0; k * d];
    let mut counts = vec![0u64; k];
    let mut prob_sums = vec![0.0; k];
    let mut raw = vec![0.0; d];
    let mut categories = vec![std::collections::HashMap::new(); k];
    for &u in &tiering.users_now {
        let t = usize::from(scores[u].tier);
        for (c, _) in snap.aggs_now[u].interests.ranked() {
            *categories[t].entry(c).or_insert(0u64) += 1;
        }
        fs.raw_into(&snap.aggs_now[u], w.as_of, &mut raw);
        if let Some(p) = &scorer.purchases {
            p.fill(fs, &snap.aggs_now[u], w.as_of, &mut raw);
        }
        for j in 0..d {
            sums[t * d + j] += raw[j];
        }
        counts[t] += 1;
        prob_sums[t] += scores[u].churn_probability;
    }
    let means: Vec<f64> = (0..k * d)
        .map(|i| sums[i] / counts[i / d].max(1) as f64)
        .collect();
    for c in 0..k {
        let centroid = tiering.model.centroid(c);
        let mut description =
            identity::describe(&fs.features, centroid, &means[c * d..(c + 1) * d]);
        // The evidence for the name: the defining features as the centroid shows them.
        if let Some(a) = identity::archetype_of(&scorer.tiers.tiers[c].id) {
            description.push_str(&format!(
                ". Named for: {}",
                a.evidence(centroid, &fs.features)
            ));
        }
        scorer.tiers.tiers[c].description = description;
    }
    Profiles {
        counts,
        prob_sums,
        means,
        categories,
    }
}

/// The categories that characterise each tier (see `TierEntry::categories`): `names` names the
/// hashes; categories without a name are left out.
pub(crate) fn tier_categories(
    p: &Profiles,
    names: &crate::features::CategoryNames,
) -> Vec<Vec<(String, f64, f64)>> {
    let total: u64 = p.counts.iter().sum();
    let mut overall: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for per in &p.categories {
        for (&c, &n) in per {
            *overall.entry(c).or_insert(0) += n;
        }
    }
    p.categories
        .iter()
        .zip(&p.counts)
        .map(|(per, &users)| {
            let mut v: Vec<(String, f64, f64)> = per
                .iter()
                .filter_map(|(&c, &n)| {
                    let share = n as f64 / users.max(1) as f64;
                    let all = overall.get(&c).copied().unwrap_or(0) as f64 / total.max(1) as f64;
                    let name = names.get(c)?;
                    (share >= 0.05 && all > 0.0).then(|| (name.to_string(), share, share / all))
                })
                .collect();
            v.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            v.truncate(3);
            v
        })
        .collect()
}
