//! Row-major feature matrices: building them from aggregates, gathering rows, scaling.

use crate::features::{FeatureSet, StandardScaler, Timestamp, UserAggregate};
use crate::model::btyd::PurchaseFeatures;
use rayon::prelude::*;

/// Rows per parallel work item when building features.
const ROWS_PER_TASK: usize = 1024;

/// Labelled users of one snapshot: user indices, transformed (pre-scaling) features row-major,
/// labels (true = churned) and sampling keys, row for row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labelled {
    pub users: Vec<usize>,
    pub x: Vec<f64>,
    pub y: Vec<bool>,
    pub keys: Vec<u64>,
}

impl Labelled {
    /// The rows `rows` (indices into this set), in that order.
    pub(crate) fn subset(&self, rows: &[usize], d: usize) -> Labelled {
        Labelled {
            users: rows.iter().map(|&i| self.users[i]).collect(),
            x: gather(&self.x, d, rows),
            y: rows.iter().map(|&i| self.y[i]).collect(),
            keys: rows.iter().map(|&i| self.keys[i]).collect(),
        }
    }
}

/// Transformed (pre-scaling) feature rows of `rows` users as of `t`, row-major; `purchases`
/// fills the BG/NBD features (as [`crate::model::Scorer::row`] does when serving).
pub(crate) fn feature_rows(
    aggs: &[UserAggregate],
    rows: &[usize],
    fs: &FeatureSet,
    purchases: Option<&PurchaseFeatures>,
    t: Timestamp,
) -> Vec<f64> {
    let d = fs.len();
    let mut x = vec![0.0; rows.len() * d];
    x.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(rows.par_chunks(ROWS_PER_TASK))
        .for_each(|(xc, rc)| {
            for (row, &u) in xc.chunks_exact_mut(d).zip(rc) {
                fs.raw_into(&aggs[u], t, row);
                if let Some(p) = purchases {
                    p.fill(fs, &aggs[u], t, row);
                }
                fs.transform_in_place(row);
            }
        });
    x
}

pub(crate) fn gather(x: &[f64], d: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Standardises every row of `x` in place.
pub(crate) fn scale_in_place(x: &mut [f64], d: usize, scaler: &StandardScaler) {
    x.par_chunks_mut(d)
        .for_each(|r| scaler.transform_in_place(r));
}
