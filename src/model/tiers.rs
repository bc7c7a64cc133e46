//! Tiers: k-means over scaled features, with stable business identities.
//!
//! K-means itself is linfa's. Around it: order-independent sampling (rows are chosen and ordered
//! by a hash of the user, so reshuffling the input gives the same clusters), k chosen by
//! silhouette on a sample, and identities given by minimum-cost assignment, first against the
//! previous bundle's tiers (ids stay stable across retrains) and then against a catalogue of
//! archetypes judged from the centroid (core fans, active regulars, ...).

use super::identity::TierIdentity;
use super::identity::{self, Archetype};
use crate::features::Feature;
use linfa::prelude::*;
use linfa_clustering::KMeans;
use ndarray::Array2;
use pathfinding::prelude::{kuhn_munkres_min, Matrix};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Why tier parameters are refused or a tiering cannot be fitted: one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("invalid tier parameter: k must be in 2..={max}, got {k}")]
    K { k: usize, max: usize },
    #[error("invalid tier parameter: need 2 <= k_min <= k_max <= {max}, got {k_min}..={k_max}")]
    KRange {
        k_min: usize,
        k_max: usize,
        max: usize,
    },
    #[error("invalid tier parameter: fit_sample must be >= 100, got {0}")]
    FitSample(usize),
    #[error("invalid tier parameter: silhouette_sample must be >= 50, got {0}")]
    SilhouetteSample(usize),
    #[error("invalid tier parameter: n_runs must be >= 1")]
    NoRuns,
    #[error("invalid tier parameter: max_iterations must be >= 1")]
    NoIterations,
    #[error("not enough users to cluster: {rows} rows for k = {k}")]
    TooFewRows { rows: usize, k: usize },
    #[error("k-means failed: {0}")]
    KMeans(#[from] linfa_clustering::KMeansError),
}

/// K-means hyperparameters; `check()` turns them into [`ValidTierParams`] (linfa style), the
/// only form [`fit`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierParams {
    /// Fixed k; `None` chooses k in `k_min..=k_max` by silhouette.
    pub k: Option<usize>,
    pub k_min: usize,
    pub k_max: usize,
    /// Rows k-means is fitted on (a hash-chosen sample of the population; all users are then
    /// assigned to the nearest centroid).
    pub fit_sample: usize,
    /// Rows the silhouette is computed on for each candidate k (O(n²)).
    pub silhouette_sample: usize,
    /// Independent k-means runs (different seeds); the lowest inertia wins.
    pub n_runs: usize,
    pub max_iterations: u64,
}

impl Default for TierParams {
    fn default() -> Self {
        TierParams {
            k: None,
            k_min: 4,
            k_max: 8,
            fit_sample: 200_000,
            silhouette_sample: 3_000,
            n_runs: 3,
            max_iterations: 200,
        }
    }
}

/// [`TierParams`] that passed [`TierParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidTierParams(TierParams);

impl std::ops::Deref for ValidTierParams {
    type Target = TierParams;
    fn deref(&self) -> &TierParams {
        &self.0
    }
}

/// The largest k: one per archetype, plus a few generic segments.
pub(crate) fn max_k() -> usize {
    identity::CATALOGUE.len() + 4
}

/// Candidate k are fitted on a sample of at most this many rows: the ranking by silhouette is
/// stable well below the full fit sample.
const CANDIDATE_SAMPLE: usize = 30_000;
/// Salts of the silhouette and candidate samples (against the fit sample's plain seed).
const SILHOUETTE_SALT: u64 = 0xA5A5;
const CANDIDATE_SALT: u64 = 0x5A5A;
/// linfa stops when the centroids move less than this (Euclidean, all of them together); 1e-2
/// is scikit-learn's default stop (squared shift <= 1e-4 times the mean feature variance, 1 on
/// these standardised rows).
const KMEANS_TOLERANCE: f64 = 1e-2;
/// Odd multiplier spreading the k-means runs' seeds (run `r` is seeded from `(r + 1) * STEP`).
const RUN_SEED_STEP: u64 = 0x51_7CC1_B727_220A;
/// Centroid distances are matched as integers (the assignment solver wants them): in
/// millionths.
const COST_SCALE: f64 = 1e6;

impl TierParams {
    pub fn check(self) -> Result<ValidTierParams, TierError> {
        let max = max_k();
        if let Some(k) = self.k {
            if !(2..=max).contains(&k) {
                return Err(TierError::K { k, max });
            }
        }
        if self.k_min < 2 || self.k_min > self.k_max || self.k_max > max {
            return Err(TierError::KRange {
                k_min: self.k_min,
                k_max: self.k_max,
                max,
            });
        }
        if self.fit_sample < 100 {
            return Err(TierError::FitSample(self.fit_sample));
        }
        if self.silhouette_sample < 50 {
            return Err(TierError::SilhouetteSample(self.silhouette_sample));
        }
        if self.n_runs == 0 {
            return Err(TierError::NoRuns);
        }
        if self.max_iterations == 0 {
            return Err(TierError::NoIterations);
        }
        Ok(ValidTierParams(self))
    }
}

/// The fitted tiering: centroids in scaled space, and one identity per centroid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierModel {
    /// Row-major k × dims, in the scaled feature space.
    pub centroids: Vec<f64>,
    pub dims: usize,
    pub tiers: Vec<TierIdentity>,
    /// Sum of squared distances to the nearest centroid over the fit sample.
    pub inertia: f64,
}

impl TierModel {
    /// Tiers from row-major centroids (`identities.len()` × `dims`, in the scaled feature space)
    /// and one identity per centroid; the inertia is 0 (not measured).
    pub fn new(centroids: Vec<f64>, dims: usize, identities: Vec<TierIdentity>) -> TierModel {
        TierModel {
            centroids,
            dims,
            tiers: identities,
            inertia: 0.0,
        }
    }

    pub fn k(&self) -> usize {
        self.tiers.len()
    }

    pub fn centroid(&self, c: usize) -> &[f64] {
        &self.centroids[c * self.dims..(c + 1) * self.dims]
    }

    /// Nearest centroid of a scaled row. No allocation.
    #[inline]
    pub fn assign(&self, x: &[f64]) -> usize {
        nearest(&self.centroids, self.dims, x).0
    }

    pub fn validate(&self, dims: usize) -> Result<(), String> {
        if self.dims != dims {
            return Err(format!(
                "tier centroids have {} dims, features {dims}",
                self.dims
            ));
        }
        if self.tiers.is_empty() || self.centroids.len() != self.tiers.len() * dims {
            return Err(format!(
                "{} centroid values for {} tiers",
                self.centroids.len(),
                self.tiers.len()
            ));
        }
        if self.centroids.iter().any(|v| !v.is_finite()) {
            return Err("non-finite centroid".into());
        }
        Ok(())
    }
}

#[inline]
fn nearest(centroids: &[f64], dims: usize, x: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (c, cen) in centroids.chunks_exact(dims).enumerate() {
        let d: f64 = cen.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// SplitMix64: a fixed, well-mixed hash for choosing sample rows by key.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Up to `n` row indices chosen and ordered by the hash of their key: independent of row order.
pub(crate) fn keyed_sample(keys: &[u64], n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<(u64, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (mix64(k ^ mix64(seed)), i))
        .collect();
    if idx.len() > n {
        idx.select_nth_unstable(n);
        idx.truncate(n);
    }
    idx.sort_unstable();
    idx.into_iter().map(|(_, i)| i).collect()
}

fn gather(x: &[f64], dims: usize, rows: &[usize]) -> Array2<f64> {
    let mut a = Array2::zeros((rows.len(), dims));
    for (r, &i) in rows.iter().enumerate() {
        for j in 0..dims {
            a[[r, j]] = x[i * dims + j];
        }
    }
    a
}

/// Best-of-`n_runs` k-means on `data` (`n_runs` >= 1); returns row-major centroids and the
/// inertia.
fn kmeans(
    data: &Array2<f64>,
    k: usize,
    n_runs: usize,
    max_iterations: u64,
    seed: u64,
) -> Result<(Vec<f64>, f64), TierError> {
    if data.nrows() < k {
        return Err(TierError::TooFewRows {
            rows: data.nrows(),
            k,
        });
    }
    let ds = DatasetBase::from(data.clone());
    let dims = data.ncols();
    // The runs are independent (each seeded by its index): fit them on all cores, then keep
    // the lowest inertia, the earliest run on a tie, as a sequential loop would.
    let runs: Vec<(Vec<f64>, f64)> = (0..n_runs)
        .into_par_iter()
        .map(|run| {
            let rng = Xoshiro256Plus::seed_from_u64(mix64(
                seed ^ (run as u64 + 1).wrapping_mul(RUN_SEED_STEP),
            ));
            let model = KMeans::params_with_rng(k, rng)
                .n_runs(1)
                .max_n_iterations(max_iterations)
                .tolerance(KMEANS_TOLERANCE)
                .fit(&ds)?;
            let cents: Vec<f64> = model.centroids().iter().copied().collect();
            let inertia: f64 = data
                .rows()
                .into_iter()
                .map(|r| nearest(&cents, dims, r.as_slice().unwrap_or(&[])).1)
                .sum();
            Ok((cents, inertia))
        })
        .collect::<Result<_, TierError>>()?;
    let mut best: Option<(Vec<f64>, f64)> = None;
    for (cents, inertia) in runs {
        if best.as_ref().is_none_or(|(_, b)| inertia < *b) {
            best = Some((cents, inertia));
        }
    }
    best.ok_or(TierError::NoRuns)
}

/// Mean silhouette of `rows` (row-major, `dims`) under `centroids`' assignment.
pub fn silhouette(rows: &[f64], dims: usize, centroids: &[f64]) -> f64 {
    let n = rows.len() / dims.max(1);
    let k = centroids.len() / dims.max(1);
    let labels: Vec<usize> = rows
        .chunks_exact(dims)
        .map(|r| nearest(centroids, dims, r).0)
        .collect();
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l] += 1);
    let mut total = 0.0;
    let mut sums = vec![0.0; k];
    for i in 0..n {
        sums.fill(0.0);
        let xi = &rows[i * dims..(i + 1) * dims];
        for j in 0..n {
            if i != j {
                let xj = &rows[j * dims..(j + 1) * dims];
                sums[labels[j]] += xi
                    .iter()
                    .zip(xj)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    .sqrt();
            }
        }
        let own = labels[i];
        if sizes[own] <= 1 {
            continue; // silhouette of a singleton is 0
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b).max(1e-12);
        }
    }
    total / n.max(1) as f64
}

/// What a fit produced besides the model: the silhouette per candidate k.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierFitReport {
    pub k_scores: Vec<(usize, f64)>,
    pub k: usize,
    /// New cluster -> index of the previous tier it inherited the identity of, if any.
    pub inherited_from: Vec<Option<usize>>,
}

/// The previous bundle's tiers, expressed so they can be compared with new clusters: centroids
/// mapped into the *new* scaled space over the new feature order.
pub struct PreviousTiers<'a> {
    pub identities: &'a [TierIdentity],
    /// Row-major, one per identity, in the new scaled space (`dims` columns).
    pub centroids: Vec<f64>,
}

/// Fits the tiering on scaled rows `x` (`dims` columns); `keys` identify users for sampling;
/// `features` are the columns, which the archetypes are judged by. Descriptions are left
/// empty: they need original units, which the caller has (see `identity::describe`).
pub fn fit(
    x: &[f64],
    dims: usize,
    keys: &[u64],
    features: &[Feature],
    p: ValidTierParams,
    seed: u64,
    previous: Option<&PreviousTiers>,
) -> Result<(TierModel, TierFitReport), TierError> {
    let rows = keys.len();
    let sample_rows = keyed_sample(keys, p.fit_sample, seed);
    let sample = gather(x, dims, &sample_rows);
    let mut report = TierFitReport::default();
    let k = match p.k {
        Some(k) => k,
        None => {
            let sil_rows = keyed_sample(keys, p.silhouette_sample, seed ^ SILHOUETTE_SALT);
            let sil_data: Vec<f64> = sil_rows
                .iter()
                .flat_map(|&i| x[i * dims..(i + 1) * dims].iter().copied())
                .collect();
            let cand_rows = keyed_sample(
                keys,
                p.fit_sample.min(CANDIDATE_SAMPLE),
                seed ^ CANDIDATE_SALT,
            );
            let cand = gather(x, dims, &cand_rows);
            let mut best = (p.k_min, f64::NEG_INFINITY);
            for k in p.k_min..=p.k_max.min(cand.nrows()) {
                let (cents, _) = kmeans(&cand, k, 1, p.max_iterations, seed)?;
                let s = silhouette(&sil_data, dims, &cents);
                report.k_scores.push((k, s));
                if s > best.1 {
                    best = (k, s);
                }
            }
            best.0
        }
    };
    if rows < k {
        return Err(TierError::TooFewRows { rows, k });
    }
    let (centroids, inertia) = kmeans(&sample, k, p.n_runs, p.max_iterations, seed)?;
    report.k = k;

    // Identities: first inherit from the previous bundle by minimum total centroid distance,
    // then name the rest from the archetype catalogue.
    let (mut identities, inherited_from) = inherit(&centroids, dims, k, previous);
    report.inherited_from = inherited_from;
    name_from_catalogue(&mut identities, &centroids, dims, features);
    let tiers: Vec<TierIdentity> = identities
        .into_iter()
        .map(|t| t.unwrap_or_else(|| identity::generic(0)))
        .collect();
    Ok((
        TierModel {
            centroids,
            dims,
            tiers,
            inertia,
        },
        report,
    ))
}

/// The previous tiers' identities given to the new clusters by minimum total centroid
/// distance, and for each new cluster the index of the previous tier it inherited from.
fn inherit(
    centroids: &[f64],
    dims: usize,
    k: usize,
    previous: Option<&PreviousTiers>,
) -> (Vec<Option<TierIdentity>>, Vec<Option<usize>>) {
    let mut identities: Vec<Option<TierIdentity>> = vec![None; k];
    let mut inherited_from = vec![None; k];
    let Some(prev) = previous else {
        return (identities, inherited_from);
    };
    let pk = prev.identities.len();
    if pk == 0 || prev.centroids.len() != pk * dims {
        return (identities, inherited_from);
    }
    let (small, large, new_is_rows) = if k <= pk {
        (k, pk, true)
    } else {
        (pk, k, false)
    };
    let mut cost = Matrix::new(small, large, 0i64);
    for r in 0..small {
        for c in 0..large {
            let (ni, pi) = if new_is_rows { (r, c) } else { (c, r) };
            let d: f64 = centroids[ni * dims..(ni + 1) * dims]
                .iter()
                .zip(&prev.centroids[pi * dims..(pi + 1) * dims])
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            cost[(r, c)] = (d.sqrt() * COST_SCALE) as i64;
        }
    }
    let (_, assignment) = kuhn_munkres_min(&cost);
    for (r, &c) in assignment.iter().enumerate() {
        let (ni, pi) = if new_is_rows { (r, c) } else { (c, r) };
        identities[ni] = Some(prev.identities[pi].clone());
        inherited_from[ni] = Some(pi);
    }
    (identities, inherited_from)
}

/// Names the clusters without an identity from the archetype catalogue, skipping ids already
/// taken; clusters beyond the catalogue become generic segments.
fn name_from_catalogue(
    identities: &mut [Option<TierIdentity>],
    centroids: &[f64],
    dims: usize,
    features: &[Feature],
) {
    let taken: Vec<String> = identities.iter().flatten().map(|t| t.id.clone()).collect();
    let free: Vec<&Archetype> = identity::CATALOGUE
        .iter()
        .filter(|a| !taken.iter().any(|t| t == a.id))
        .collect();
    let unnamed: Vec<usize> = (0..identities.len())
        .filter(|&c| identities[c].is_none())
        .collect();
    if unnamed.is_empty() {
        return;
    }
    let names: Vec<Option<usize>> = identity::assign_archetypes(
        &unnamed
            .iter()
            .map(|&c| &centroids[c * dims..(c + 1) * dims])
            .collect::<Vec<_>>(),
        features,
        &free,
    );
    let mut generic = 1;
    for (slot, &c) in unnamed.iter().enumerate() {
        let id = match names[slot].and_then(|a| free.get(a)) {
            Some(a) => a.identity(),
            None => {
                while taken.iter().any(|t| *t == format!("segment_{generic}")) {
                    generic += 1;
                }
                let t = identity::generic(generic);
                generic += 1;
                t
            }
        };
        identities[c] = Some(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn blobs(n: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
        let centers = [
            [0.0, 0.0, 0.0],
            [5.0, 5.0, 0.0],
            [0.0, 5.0, 5.0],
            [5.0, 0.0, 5.0],
        ];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut truth = Vec::new();
        for i in 0..n {
            let c = i % 4;
            for v in centers[c] {
                x.push(v + rng.gen_range(-1.0..1.0));
            }
            truth.push(c);
        }
        (x, truth)
    }

    #[test]
    fn silhouette_picks_the_true_number_of_blobs() {
        let (x, truth) = blobs(2000, 1);
        let keys: Vec<u64> = (0..2000).collect();
        let names = [Feature::Rooms, Feature::Categories, Feature::Trend];
        let (model, report) = fit(
            &x,
            3,
            &keys,
            &names,
            TierParams {
                k_min: 2,
                k_max: 7,
                ..Default::default()
            }
            .check()
            .unwrap(),
            5,
            None,
        )
        .unwrap();
        assert_eq!(report.k, 4, "scores {:?}", report.k_scores);
        let labels: Vec<usize> = x.chunks(3).map(|r| model.assign(r)).collect();
        assert!(crate::model::metrics::adjusted_rand_index(&labels, &truth) > 0.95);
        let mut ids: Vec<&str> = model.tiers.iter().map(|t| t.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "tier ids are distinct");
    }

    #[test]
    fn reshuffled_rows_give_the_same_tiers() {
        let (x, _) = blobs(1200, 2);
        let keys: Vec<u64> = (0..1200).map(|i| mix64(i as u64)).collect();
        let p = TierParams {
            k: Some(4),
            ..Default::default()
        }
        .check()
        .unwrap();
        let names = [Feature::Rooms, Feature::Categories, Feature::Trend];
        let (m1, _) = fit(&x, 3, &keys, &names, p, 9, None).unwrap();
        // Reverse the rows (and their keys).
        let xr: Vec<f64> = x.chunks(3).rev().flatten().copied().collect();
        let kr: Vec<u64> = keys.iter().rev().copied().collect();
        let (m2, _) = fit(&xr, 3, &kr, &names, p, 9, None).unwrap();
        for (i, row) in x.chunks(3).enumerate() {
            let j = 1199 - i;
            assert_eq!(
                m1.tiers[m1.assign(row)].id,
                m2.tiers[m2.assign(&xr[j * 3..j * 3 + 3])].id
            );
        }
    }

    #[test]
    fn a_retrain_inherits_previous_ids_by_centroid() {
        let (x, _) = blobs(1200, 3);
        let keys: Vec<u64> = (0..1200).collect();
        let names = [Feature::Rooms, Feature::Categories, Feature::Trend];
        let p = TierParams {
            k: Some(4),
            ..Default::default()
        }
        .check()
        .unwrap();
        let (m1, _) = fit(&x, 3, &keys, &names, p, 1, None).unwrap();
        // A different seed permutes clusters; matching must map them back onto m1's ids.
        let prev = PreviousTiers {
            identities: &m1.tiers,
            centroids: m1.centroids.clone(),
        };
        let (m2, report) = fit(&x, 3, &keys, &names, p, 77, Some(&prev)).unwrap();
        assert!(report.inherited_from.iter().all(|i| i.is_some()));
        for row in x.chunks(3) {
            assert_eq!(m1.tiers[m1.assign(row)].id, m2.tiers[m2.assign(row)].id);
        }
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(TierParams {
            k: Some(1),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(TierParams {
            k_min: 6,
            k_max: 4,
            ..Default::default()
        }
        .check()
        .is_err());
    }
}
