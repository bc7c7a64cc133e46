//! Churn classifiers over scaled feature rows: a logistic-regression baseline (smartcore) and
//! gradient-boosted trees (forust-ml), both exported to small serialisable forms that score one
//! row with no allocation and explain it (per-feature contributions in log-odds).

use forust_ml::data::Matrix;
use forust_ml::GradientBooster;
use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    #[error("training set is empty")]
    Empty,
    #[error("training labels have a single class ({0} rows): no classifier can be fitted")]
    SingleClass(usize),
    #[error("logistic regression failed: {0}")]
    Logistic(String),
    #[error("gradient boosting failed: {0}")]
    Boosting(String),
    #[error("invalid parameter: {0}")]
    Param(String),
}

/// Hyperparameters of the boosted trees; `check()` validates them (linfa style).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

impl BoostingParams {
    pub fn check(self) -> Result<Self, ChurnError> {
        if self.trees == 0 || self.trees > 5000 {
            return Err(ChurnError::Param(format!(
                "trees must be in 1..=5000, got {}",
                self.trees
            )));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(ChurnError::Param(format!(
                "learning_rate must be in (0, 1], got {}",
                self.learning_rate
            )));
        }
        if self.max_depth == 0 || self.max_depth > 16 {
            return Err(ChurnError::Param(format!(
                "max_depth must be in 1..=16, got {}",
                self.max_depth
            )));
        }
        if !(self.subsample > 0.0 && self.subsample <= 1.0) {
            return Err(ChurnError::Param(format!(
                "subsample must be in (0, 1], got {}",
                self.subsample
            )));
        }
        Ok(self)
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
    /// Fits with smartcore's L-BFGS on row-major `x` (`cols` columns) and labels.
    pub fn fit(x: &[f64], cols: usize, y: &[bool], l2: f64) -> Result<Self, ChurnError> {
        let rows = y.len();
        if rows == 0 {
            return Err(ChurnError::Empty);
        }
        let pos = y.iter().filter(|&&l| l).count();
        if pos == 0 || pos == rows {
            return Err(ChurnError::SingleClass(rows));
        }
        let m = DenseMatrix::new(rows, cols, x.to_vec(), false)
            .map_err(|e| ChurnError::Logistic(e.to_string()))?;
        let labels: Vec<i32> = y.iter().map(|&l| i32::from(l)).collect();
        let params = LogisticRegressionParameters::default().with_alpha(l2);
        let lr = LogisticRegression::fit(&m, &labels, params)
            .map_err(|e| ChurnError::Logistic(e.to_string()))?;
        // Binary case: classes are sorted, so the modelled class (index 1) is label 1 = churned.
        let coef = lr.coefficients();
        let weights: Vec<f64> = (0..cols).map(|j| *coef.get((0, j))).collect();
        let bias = *lr.intercept().get((0, 0));
        if weights.iter().any(|w| !w.is_finite()) || !bias.is_finite() {
            return Err(ChurnError::Logistic("non-finite coefficients".into()));
        }
        Ok(LinearModel { weights, bias })
    }

    #[inline]
    pub fn score(&self, x: &[f64]) -> f64 {
        self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }

    #[inline]
    pub fn score_explained(&self, x: &[f64], contrib: &mut [f64]) -> f64 {
        for ((c, w), v) in contrib.iter_mut().zip(&self.weights).zip(x) {
            *c = w * v;
        }
        self.bias + contrib.iter().sum::<f64>()
    }
}

/// One node of a flattened tree. Leaves have `left == u32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    pub feature: u32,
    /// Go left when x < threshold.
    pub threshold: f64,
    pub left: u32,
    pub right: u32,
    /// Where NaN goes.
    pub missing: u32,
    /// Node weight (log-odds); leaves' weights are the prediction, internal ones let the walk
    /// attribute each step's change to the split feature (Saabas contributions).
    pub value: f64,
}

/// Gradient-boosted trees, flattened: all nodes of all trees in one vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub base_score: f64,
    /// Index of each tree's root in `nodes`.
    pub roots: Vec<u32>,
    pub nodes: Vec<TreeNode>,
}

const LEAF: u32 = u32::MAX;

impl Forest {
    /// Fits with forust-ml on row-major `x`; seeded.
    pub fn fit(
        x: &[f64],
        cols: usize,
        y: &[bool],
        p: BoostingParams,
        seed: u64,
    ) -> Result<Self, ChurnError> {
        let p = p.check()?;
        let rows = y.len();
        if rows == 0 {
            return Err(ChurnError::Empty);
        }
        let pos = y.iter().filter(|&&l| l).count();
        if pos == 0 || pos == rows {
            return Err(ChurnError::SingleClass(rows));
        }
        // forust wants column-major.
        let mut colmajor = vec![0.0; rows * cols];
        for (i, row) in x.chunks_exact(cols).enumerate() {
            for (j, v) in row.iter().enumerate() {
                colmajor[j * rows + i] = *v;
            }
        }
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
        Ok(Self::from_booster(&booster))
    }

    fn from_booster(b: &GradientBooster) -> Self {
        let mut roots = Vec::with_capacity(b.trees.len());
        let mut nodes = Vec::new();
        for tree in &b.trees {
            let offset = nodes.len() as u32;
            roots.push(offset);
            for n in &tree.nodes {
                let (left, right, missing) = if n.is_leaf {
                    (LEAF, LEAF, LEAF)
                } else {
                    (
                        offset + n.left_child as u32,
                        offset + n.right_child as u32,
                        offset + n.missing_node as u32,
                    )
                };
                nodes.push(TreeNode {
                    feature: n.split_feature as u32,
                    threshold: n.split_value,
                    left,
                    right,
                    missing,
                    value: f64::from(n.weight_value),
                });
            }
        }
        Forest {
            base_score: b.base_score,
            roots,
            nodes,
        }
    }

    #[inline]
    fn next(&self, n: &TreeNode, x: &[f64]) -> u32 {
        let v = x[n.feature as usize];
        if v.is_nan() {
            n.missing
        } else if v < n.threshold {
            n.left
        } else {
            n.right
        }
    }

    #[inline]
    pub fn score(&self, x: &[f64]) -> f64 {
        let mut s = self.base_score;
        for &root in &self.roots {
            let mut n = &self.nodes[root as usize];
            while n.left != LEAF {
                n = &self.nodes[self.next(n, x) as usize];
            }
            s += n.value;
        }
        s
    }

    #[inline]
    pub fn score_explained(&self, x: &[f64], contrib: &mut [f64]) -> f64 {
        contrib.fill(0.0);
        let mut s = self.base_score;
        for &root in &self.roots {
            let mut n = &self.nodes[root as usize];
            s += n.value;
            while n.left != LEAF {
                let child = &self.nodes[self.next(n, x) as usize];
                let delta = child.value - n.value;
                contrib[n.feature as usize] += delta;
                s += delta;
                n = child;
            }
        }
        s
    }

    /// Checks indices so a tampered bundle cannot make scoring index out of bounds or loop.
    pub fn validate(&self, cols: usize) -> Result<(), String> {
        let n = self.nodes.len() as u32;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.left == LEAF {
                continue;
            }
            let i = i as u32;
            if node.feature as usize >= cols {
                return Err(format!(
                    "node {i} splits on feature {} of {cols}",
                    node.feature
                ));
            }
            for c in [node.left, node.right, node.missing] {
                // Children always come after their parent in forust's layout: no cycles.
                if c >= n || c <= i {
                    return Err(format!("node {i} has an invalid child {c}"));
                }
            }
        }
        if self.roots.iter().any(|&r| r >= n) {
            return Err("a tree root is out of range".into());
        }
        Ok(())
    }
}

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
    pub fn score_explained(&self, x: &[f64], contrib: &mut [f64]) -> f64 {
        match self {
            ChurnModel::Logistic(m) => m.score_explained(x, contrib),
            ChurnModel::Boosted(m) => m.score_explained(x, contrib),
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
            },
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
        assert!(Forest::fit(&x, 3, &[false, false], BoostingParams::default(), 1).is_err());
    }

    #[test]
    fn tampered_forest_is_refused() {
        let (x, y) = data(500, 4);
        let mut f = Forest::fit(
            &x,
            3,
            &y,
            BoostingParams {
                trees: 3,
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let idx = f.nodes.iter().position(|n| n.left != LEAF).unwrap();
        f.nodes[idx].left = idx as u32;
        assert!(f.validate(3).is_err());
    }
}
