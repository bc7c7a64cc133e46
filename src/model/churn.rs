//! Churn classifiers over scaled feature rows: a logistic-regression baseline (Newton's method,
//! [`super::logistic`]) and
//! gradient-boosted trees (forust-ml), both exported to small serialisable forms that score one
//! row with no allocation and explain it (per-feature contributions in log-odds).

use forust_ml::data::Matrix;
use forust_ml::GradientBooster;
use serde::{Deserialize, Serialize};

/// Why a churn model cannot be fitted, or its parameters are refused: one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    #[error("training set is empty")]
    Empty,
    #[error("training labels have a single class ({0} rows): no classifier can be fitted")]
    SingleClass(usize),
    #[error("{values} feature values for {rows} rows of {cols} columns")]
    Shape {
        values: usize,
        rows: usize,
        cols: usize,
    },
    #[error("logistic regression failed: {0}")]
    Logistic(#[from] super::logistic::LogisticError),
    #[error("gradient boosting failed: {0}")]
    Boosting(String),
    #[error("invalid boosting parameter: trees must be in 1..=5000, got {0}")]
    Trees(usize),
    #[error("invalid boosting parameter: learning_rate must be in (0, 1], got {0}")]
    LearningRate(f32),
    #[error("invalid boosting parameter: max_depth must be in 1..=16, got {0}")]
    MaxDepth(usize),
    #[error("invalid boosting parameter: subsample must be in (0, 1], got {0}")]
    Subsample(f32),
}

impl ChurnError {
    /// True when the error is about the labels (one class), not the parameters or the solver.
    pub fn is_single_class(&self) -> bool {
        matches!(self, ChurnError::SingleClass(_))
    }
}

/// Hyperparameters of the boosted trees; `check()` turns them into [`ValidBoostingParams`]
/// (linfa style), the only form [`Forest::fit`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
// `default`: a configuration section may set some keys only (training/train.toml).
#[serde(deny_unknown_fields, default)]
pub struct BoostingParams {
    pub trees: usize,
    pub learning_rate: f32,
    pub max_depth: usize,
    pub min_leaf_weight: f32,
    pub subsample: f32,
}

impl Default for BoostingParams {
    fn default() -> Self {
        BoostingParams {
            trees: 100,
            learning_rate: 0.1,
            max_depth: 5,
            min_leaf_weight: 1.0,
            subsample: 1.0,
        }
    }
}

/// [`BoostingParams`] that passed [`BoostingParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidBoostingParams(BoostingParams);

impl std::ops::Deref for ValidBoostingParams {
    type Target = BoostingParams;
    fn deref(&self) -> &BoostingParams {
        &self.0
    }
}

impl BoostingParams {
    pub fn check(self) -> Result<ValidBoostingParams, ChurnError> {
        if self.trees == 0 || self.trees > 5000 {
            return Err(ChurnError::Trees(self.trees));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(ChurnError::LearningRate(self.learning_rate));
        }
        if self.max_depth == 0 || self.max_depth > 16 {
            return Err(ChurnError::MaxDepth(self.max_depth));
        }
        if !(self.subsample > 0.0 && self.subsample <= 1.0) {
            return Err(ChurnError::Subsample(self.subsample));
        }
        Ok(ValidBoostingParams(self))
    }
}

/// Logistic regression: log-odds = bias + w·x. Contributions are w_i·x_i (x is standardised,
/// so 0 is the training mean and a contribution says how far this user's value moves the odds
/// from an average user's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl LinearModel {
    /// A model from its weights (one per scaled feature) and bias, in log-odds.
    pub fn new(weights: Vec<f64>, bias: f64) -> LinearModel {
        LinearModel { weights, bias }
    }

    /// Fits on row-major `x` (`cols` columns) and labels by Newton's method; the objective is
    /// smartcore's (log loss summed over rows + ½·l2·‖w‖², bias unpenalised).
    pub fn fit(x: &[f64], cols: usize, y: &[bool], l2: f64) -> Result<Self, ChurnError> {
        let rows = y.len();
        if rows == 0 {
            return Err(ChurnError::Empty);
        }
        if x.len() != rows * cols {
            return Err(ChurnError::Shape {
                values: x.len(),
                rows,
                cols,
            });
        }
        let pos = y.iter().filter(|&&l| l).count();
        if pos == 0 || pos == rows {
            return Err(ChurnError::SingleClass(rows));
        }
        let fit = super::logistic::fit(x, cols, y, l2)?;
        Ok(LinearModel {
            weights: fit.weights,
            bias: fit.bias,
        })
    }

    #[inline]
    pub fn score(&self, x: &[f64]) -> f64 {
        self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }

    #[inline]
    pub(crate) fn score_explained(&self, x: &[f64], contrib: &mut [f64]) -> f64 {
        for ((c, w), v) in contrib.iter_mut().zip(&self.weights).zip(x) {
            *c = w * v;
        }
        self.bias + contrib.iter().sum::<f64>()
    }
}

/// Gradient-boosted trees, re-laid out for fast scoring: every tree is a *perfect* binary tree of
/// the same depth `depth`, stored in heap order (children of node i are 2i+1 and 2i+2) as
/// structure-of-arrays. A leaf that forust left shallower is padded: it becomes a split that
/// always goes left (threshold f64::MAX) over copies of itself, so the walk is exactly `depth` steps
/// of branch-free index arithmetic and padded steps contribute 0.
///
/// Inputs are never NaN (features are computed from aggregates); NaN would go left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub base_score: f64,
    pub depth: u32,
    pub trees: u32,
    /// Per tree, `2^depth - 1` internal nodes: the split feature (go right when x >= threshold).
    pub features: Vec<u16>,
    pub thresholds: Vec<f64>,
    /// Per tree, `2^(depth+1) - 1` node weights in log-odds (internal nodes, then leaves). Leaves
    /// are the prediction; internal weights let the walk attribute each step's change to its
    /// split feature (Saabas contributions).
    pub values: Vec<f64>,
}

impl Forest {
    /// Fits with forust-ml on row-major `x`; seeded.
    pub fn fit(
        x: &[f64],
        cols: usize,
        y: &[bool],
        p: ValidBoostingParams,
        seed: u64,
    ) -> Result<Self, ChurnError> {
        let rows = y.len();
        if rows == 0 {
            return Err(ChurnError::Empty);
        }
        let pos = y.iter().filter(|&&l| l).count();
        if pos == 0 || pos == rows {
            return Err(ChurnError::SingleClass(rows));
        }
        // forust wants column-major.
        let colmajor = column_major(x, cols);
        let matrix = Matrix::new(&colmajor, rows, cols);
        let labels: Vec<f64> = y.iter().map(|&l| f64::from(u8::from(l))).collect();
        let weights = vec![1.0; rows];
        let mut booster = GradientBooster::default()
            .set_iterations(p.trees)
            .set_learning_rate(p.learning_rate)
            .set_max_depth(p.max_depth)
            .set_min_leaf_weight(p.min_leaf_weight)
            .set_subsample(p.subsample)
            .set_seed(seed)
            .set_parallel(true);
        booster
            .fit(&matrix, &labels, &weights, None)
            .map_err(|e| ChurnError::Boosting(e.to_string()))?;
        Self::from_booster(&booster)
    }

    fn from_booster(b: &GradientBooster) -> Result<Self, ChurnError> {
        // Depth of the deepest leaf over all trees (walks stop past 13 levels, refused below).
        let depth = b
            .trees
            .iter()
            .map(|t| {
                let mut deepest = 0u32;
                let mut stack = vec![(0usize, 0u32)];
                while let Some((i, d)) = stack.pop() {
                    match t.nodes.get(i) {
                        Some(n) if !n.is_leaf && d <= 12 => {
                            stack.push((n.left_child, d + 1));
                            stack.push((n.right_child, d + 1));
                        }
                        _ => deepest = deepest.max(d),
                    }
                }
                deepest
            })
            .max()
            .unwrap_or(0);
        if depth > 12 {
            return Err(ChurnError::Boosting(format!(
                "trees of depth {depth} are too deep to lay out"
            )));
        }
        let internal = (1usize << depth) - 1;
        let all = (1usize << (depth + 1)) - 1;
        let trees = b.trees.len();
        let mut f = Forest {
            base_score: b.base_score,
            depth,
            trees: trees as u32,
            features: vec![0; trees * internal],
            // f64::MAX, not +inf: JSON has no infinity, and no finite feature reaches it.
            thresholds: vec![f64::MAX; trees * internal],
            values: vec![0.0; trees * all],
        };
        for (t, tree) in b.trees.iter().enumerate() {
            // (forust node, heap index) pairs to place; a leaf fills its whole heap subtree.
            let mut stack = vec![(0usize, 0usize)];
            while let Some((src, dst)) = stack.pop() {
                let Some(n) = tree.nodes.get(src) else {
                    return Err(ChurnError::Boosting(format!(
                        "tree {t} refers to a missing node {src}"
                    )));
                };
                let value = f64::from(n.weight_value);
                if n.is_leaf {
                    let mut level = vec![dst];
                    while let Some(&first) = level.first() {
                        if first >= all {
                            break;
                        }
                        let mut next = Vec::with_capacity(level.len() * 2);
                        for &i in &level {
                            f.values[t * all + i] = value;
                            if i < internal {
                                next.extend([2 * i + 1, 2 * i + 2]);
                            }
                        }
                        level = next;
                    }
                } else {
                    if dst >= internal {
                        return Err(ChurnError::Boosting(format!(
                            "tree {t} is deeper than {depth}"
                        )));
                    }
                    let feature = u16::try_from(n.split_feature).map_err(|_| {
                        ChurnError::Boosting(format!(
                            "split feature {} out of range",
                            n.split_feature
                        ))
                    })?;
                    f.features[t * internal + dst] = feature;
                    f.thresholds[t * internal + dst] = n.split_value;
                    f.values[t * all + dst] = value;
                    stack.push((n.left_child, 2 * dst + 1));
                    stack.push((n.right_child, 2 * dst + 2));
                }
            }
        }
        Ok(f)
    }

    fn internal(&self) -> usize {
        (1usize << self.depth) - 1
    }

    fn all(&self) -> usize {
        (1usize << (self.depth + 1)) - 1
    }

    #[inline]
    pub fn score(&self, x: &[f64]) -> f64 {
        let (ni, na) = (self.internal(), self.all());
        let mut s = self.base_score;
        for ((feats, thr), vals) in self
            .features
            .chunks_exact(ni.max(1))
            .zip(self.thresholds.chunks_exact(ni.max(1)))
            .zip(self.values.chunks_exact(na))
        {
            let mut i = 0usize;
            for _ in 0..self.depth {
                let go_right = x[usize::from(feats[i])] >= thr[i];
                i = 2 * i + 1 + usize::from(go_right);
            }
            s += vals[i];
        }
        s
    }

    #[inline]
    pub(crate) fn score_explained(&self, x: &[f64], contrib: &mut [f64]) -> f64 {
        contrib.fill(0.0);
        let (ni, na) = (self.internal(), self.all());
        let mut s = self.base_score;
        for ((feats, thr), vals) in self
            .features
            .chunks_exact(ni.max(1))
            .zip(self.thresholds.chunks_exact(ni.max(1)))
            .zip(self.values.chunks_exact(na))
        {
            let mut i = 0usize;
            s += vals[0];
            for _ in 0..self.depth {
                let f = usize::from(feats[i]);
                let go_right = x[f] >= thr[i];
                let child = 2 * i + 1 + usize::from(go_right);
                let delta = vals[child] - vals[i];
                contrib[f] += delta;
                s += delta;
                i = child;
            }
        }
        s
    }

    /// Scores up to [`BLOCK`] rows at once (row-major `xs`, `d` columns), with contributions
    /// (`contrib`, same shape as `xs`) into `out`. Walking several independent rows through each
    /// tree together lets the CPU overlap their dependent loads; results equal
    /// [`Forest::score_explained`] row by row.
    #[inline]
    pub(crate) fn score_explained_block(
        &self,
        xs: &[f64],
        d: usize,
        contrib: &mut [f64],
        out: &mut [f64],
    ) {
        let n = out.len().min(BLOCK);
        contrib.fill(0.0);
        out.fill(self.base_score);
        let (ni, na) = (self.internal(), self.all());
        let mut idx = [0usize; BLOCK];
        for ((feats, thr), vals) in self
            .features
            .chunks_exact(ni.max(1))
            .zip(self.thresholds.chunks_exact(ni.max(1)))
            .zip(self.values.chunks_exact(na))
        {
            idx[..n].fill(0);
            for _ in 0..self.depth {
                for r in 0..n {
                    let i = idx[r];
                    let f = usize::from(feats[i]);
                    let go_right = xs[r * d + f] >= thr[i];
                    let child = 2 * i + 1 + usize::from(go_right);
                    contrib[r * d + f] += vals[child] - vals[i];
                    idx[r] = child;
                }
            }
            for r in 0..n {
                out[r] += vals[idx[r]];
            }
        }
    }

    /// Checks shapes so a tampered bundle cannot make scoring index out of bounds.
    pub fn validate(&self, cols: usize) -> Result<(), String> {
        if self.depth > 12 {
            return Err(format!("depth {} is too deep", self.depth));
        }
        let t = self.trees as usize;
        if self.features.len() != t * self.internal()
            || self.thresholds.len() != t * self.internal()
            || self.values.len() != t * self.all()
        {
            return Err(format!(
                "forest arrays do not match {t} trees of depth {}",
                self.depth
            ));
        }
        if let Some(f) = self.features.iter().find(|&&f| usize::from(f) >= cols) {
            return Err(format!("a split uses feature {f} of {cols}"));
        }
        if self.values.iter().any(|v| !v.is_finite())
            || !self.base_score.is_finite()
            || self.thresholds.iter().any(|v| v.is_nan())
        {
            return Err("non-finite weights or thresholds".into());
        }
        Ok(())
    }
}

/// Row-major `x` with `cols` columns, transposed to the column-major layout forust reads.
fn column_major(x: &[f64], cols: usize) -> Vec<f64> {
    let rows = x.len() / cols.max(1);
    let mut out = vec![0.0; rows * cols];
    for (i, row) in x.chunks_exact(cols.max(1)).enumerate() {
        for (j, v) in row.iter().enumerate() {
            out[j * rows + i] = *v;
        }
    }
    out
}

/// Rows scored together by the block paths.
pub(crate) const BLOCK: usize = 8;

/// The fitted churn model, whichever kind won validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChurnModel {
    Logistic(LinearModel),
    Boosted(Forest),
}

impl ChurnModel {
    pub fn name(&self) -> &'static str {
        match self {
            ChurnModel::Logistic(_) => "logistic_regression",
            ChurnModel::Boosted(_) => "gradient_boosting",
        }
    }

    /// Raw log-odds (before calibration).
    #[inline]
    pub fn score(&self, x: &[f64]) -> f64 {
        match self {
            ChurnModel::Logistic(m) => m.score(x),
            ChurnModel::Boosted(m) => m.score(x),
        }
    }

    /// Raw log-odds, and each feature's contribution to it in `contrib`.
    #[inline]
    pub(crate) fn score_explained(&self, x: &[f64], contrib: &mut [f64]) -> f64 {
        match self {
            ChurnModel::Logistic(m) => m.score_explained(x, contrib),
            ChurnModel::Boosted(m) => m.score_explained(x, contrib),
        }
    }

    /// Raw log-odds and contributions of up to [`BLOCK`] rows (see
    /// [`Forest::score_explained_block`]).
    #[inline]
    pub(crate) fn score_explained_block(
        &self,
        xs: &[f64],
        d: usize,
        contrib: &mut [f64],
        out: &mut [f64],
    ) {
        match self {
            ChurnModel::Logistic(m) => {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = m
                        .score_explained(&xs[r * d..(r + 1) * d], &mut contrib[r * d..(r + 1) * d]);
                }
            }
            ChurnModel::Boosted(f) => f.score_explained_block(xs, d, contrib, out),
        }
    }

    pub fn validate(&self, cols: usize) -> Result<(), String> {
        match self {
            ChurnModel::Logistic(m) if m.weights.len() != cols => Err(format!(
                "logistic model has {} weights for {cols} features",
                m.weights.len()
            )),
            ChurnModel::Logistic(_) => Ok(()),
            ChurnModel::Boosted(f) => f.validate(cols),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::metrics::roc_auc;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// y = 1 when x0 + x1^2 + noise is large: linear in x0, nonlinear in x1.
    fn data(n: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut x = Vec::with_capacity(n * 3);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let a: f64 = rng.gen_range(-2.0..2.0);
            let b: f64 = rng.gen_range(-2.0..2.0);
            let c: f64 = rng.gen_range(-2.0..2.0);
            x.extend([a, b, c]);
            y.push(a + b * b - 1.3 + rng.gen_range(-0.5..0.5) > 0.0);
        }
        (x, y)
    }

    #[test]
    fn logistic_weights_point_the_right_way() {
        let (x, y) = data(4000, 1);
        let m = LinearModel::fit(&x, 3, &y, 0.0).unwrap();
        assert!(m.weights[0] > 0.5, "w0 = {}", m.weights[0]);
        assert!(
            m.weights[2].abs() < 0.3,
            "irrelevant feature weight {}",
            m.weights[2]
        );
    }

    #[test]
    fn boosting_beats_logistic_on_a_nonlinear_label_and_contributions_add_up() {
        let (x, y) = data(6000, 2);
        let (xt, yt) = data(3000, 3);
        let lin = LinearModel::fit(&x, 3, &y, 0.0).unwrap();
        let forest = Forest::fit(
            &x,
            3,
            &y,
            BoostingParams {
                trees: 60,
                ..Default::default()
            }
            .check()
            .unwrap(),
            7,
        )
        .unwrap();
        forest.validate(3).unwrap();
        let s_lin: Vec<f64> = xt.chunks(3).map(|r| lin.score(r)).collect();
        let s_gbm: Vec<f64> = xt.chunks(3).map(|r| forest.score(r)).collect();
        let (auc_lin, auc_gbm) = (roc_auc(&s_lin, &yt), roc_auc(&s_gbm, &yt));
        assert!(auc_gbm > auc_lin + 0.05, "gbm {auc_gbm} vs lr {auc_lin}");
        let mut contrib = [0.0; 3];
        for row in xt.chunks(3).take(50) {
            let s = forest.score_explained(row, &mut contrib);
            assert!((s - forest.score(row)).abs() < 1e-9);
        }
        // The feature the label ignores explains little.
        let mut mean_abs = [0.0; 3];
        for row in xt.chunks(3) {
            forest.score_explained(row, &mut contrib);
            for j in 0..3 {
                mean_abs[j] += contrib[j].abs();
            }
        }
        assert!(
            mean_abs[2] < mean_abs[0] / 4.0 && mean_abs[2] < mean_abs[1] / 4.0,
            "{mean_abs:?}"
        );
    }

    #[test]
    fn single_class_labels_are_refused() {
        let x = vec![0.0; 6];
        assert!(matches!(
            LinearModel::fit(&x, 3, &[true, true], 0.0),
            Err(ChurnError::SingleClass(2))
        ));
        assert!(Forest::fit(
            &x,
            3,
            &[false, false],
            BoostingParams::default().check().unwrap(),
            1
        )
        .is_err());
    }

    #[test]
    fn tampered_forest_is_refused() {
        let (x, y) = data(500, 4);
        let f = Forest::fit(
            &x,
            3,
            &y,
            BoostingParams {
                trees: 3,
                ..Default::default()
            }
            .check()
            .unwrap(),
            1,
        )
        .unwrap();
        f.validate(3).unwrap();
        let mut bad = f.clone();
        bad.features[0] = 7;
        assert!(bad.validate(3).is_err());
        let mut bad = f.clone();
        bad.values.pop();
        assert!(bad.validate(3).is_err());
        let mut bad = f;
        bad.values[0] = f64::NAN;
        assert!(bad.validate(3).is_err());
    }

    #[test]
    fn the_perfect_tree_layout_predicts_exactly_like_forust() {
        let (x, y) = data(3000, 5);
        let rows = y.len();
        let colmajor = column_major(&x, 3);
        let labels: Vec<f64> = y.iter().map(|&l| f64::from(u8::from(l))).collect();
        let mut booster = GradientBooster::default()
            .set_iterations(30)
            .set_learning_rate(0.1)
            .set_max_depth(4)
            .set_seed(3)
            .set_parallel(false);
        booster
            .fit(
                &Matrix::new(&colmajor, rows, 3),
                &labels,
                &vec![1.0; rows],
                None,
            )
            .unwrap();
        let forest = Forest::from_booster(&booster).unwrap();
        let theirs = booster.predict(&Matrix::new(&colmajor, rows, 3), false);
        let mut contrib = [0.0; 3];
        for (row, t) in x.chunks_exact(3).zip(&theirs) {
            assert!(
                (forest.score(row) - t).abs() < 1e-9,
                "{} vs {t}",
                forest.score(row)
            );
            assert!((forest.score_explained(row, &mut contrib) - t).abs() < 1e-9);
        }
        // The block path agrees with the row path, contributions included.
        let mut block_c = [0.0; 3 * BLOCK];
        let mut block_out = [0.0; BLOCK];
        for chunk in x.chunks(3 * BLOCK).take(20) {
            let n = chunk.len() / 3;
            forest.score_explained_block(chunk, 3, &mut block_c[..3 * n], &mut block_out[..n]);
            for r in 0..n {
                let s = forest.score_explained(&chunk[r * 3..r * 3 + 3], &mut contrib);
                assert!((block_out[r] - s).abs() < 1e-9);
                for j in 0..3 {
                    assert!((block_c[r * 3 + j] - contrib[j]).abs() < 1e-9);
                }
            }
        }
    }
}
