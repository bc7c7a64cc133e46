//! The candidate churn models: a keyed split into fit / validation / test rows, fitting each
//! candidate on a keyed sample, Platt calibration and model choice on the validation rows.

use super::super::config::ValidTrainParams;
use super::super::pipeline::TrainError;
use super::rows::{gather, scale_in_place, Labelled};
use super::windows::Snapshots;
use crate::bundle::manifest::ModelMetrics;
use crate::features::StandardScaler;
use crate::model::calibration::Platt;
use crate::model::churn::{ChurnModel, Forest, LinearModel};
use crate::model::metrics;
use crate::model::tiers::{keyed_sample, mix64};
use rayon::prelude::*;
use std::time::Instant;

/// Salt of the keyed hash that splits rows into fit / validation / test.
const SPLIT_SALT: u64 = 0x7E57;
/// Salts of the keyed samples the logistic baseline and the boosted trees are fitted on.
const LOGISTIC_SAMPLE_SALT: u64 = 1;
const BOOSTING_SAMPLE_SALT: u64 = 2;
/// Points on each ROC curve kept for the report.
pub(crate) const ROC_POINTS: usize = 200;

/// The candidate churn models, in [`Fitted::candidates`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Logistic,
    Boosted,
}

/// Every candidate, in the order the evaluation compares them.
pub(crate) const BOTH: [Kind; 2] = [Kind::Logistic, Kind::Boosted];

/// A fitted candidate model with its calibration and held-out validation AUC.
pub(crate) struct Candidate {
    pub model: ChurnModel,
    pub platt: Platt,
    pub val_auc: f64,
    pub fit_seconds: f64,
}

impl Candidate {
    pub fn probabilities(&self, xs: &[f64], d: usize) -> Vec<f64> {
        xs.par_chunks(d)
            .map(|r| self.platt.probability(self.model.score(r)))
            .collect()
    }
}

pub(crate) struct Fitted {
    pub scaler: StandardScaler,
    /// One per fitted [`Kind`], in the order asked for.
    pub candidates: Vec<Candidate>,
    /// Index of the candidate with the best validation AUC.
    pub chosen: usize,
    /// Held-out rows for in-time evaluation (empty unless asked for).
    pub test_rows: Vec<usize>,
    /// Scaled rows (all), for evaluation on the test rows.
    pub scaled: Vec<f64>,
    pub val_rows: Vec<usize>,
}

impl Fitted {
    pub fn chosen(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }
}

/// Row indices split by a keyed hash: `test_fraction` to test, then
/// `validation_fraction` to validation, the rest to fitting.
struct Split {
    fit: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
}

fn split(keys: &[u64], seed: u64, test_fraction: f64, val_fraction: f64) -> Split {
    let (mut fit, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (i, &k) in keys.iter().enumerate() {
        let u = (mix64(k ^ mix64(seed ^ SPLIT_SALT)) >> 11) as f64 / (1u64 << 53) as f64;
        if u < test_fraction {
            test.push(i);
        } else if u < test_fraction + val_fraction {
            val.push(i);
        } else {
            fit.push(i);
        }
    }
    Split { fit, val, test }
}

/// Splits rows by a keyed hash into (fit, validation, test) and fits the candidates of `kinds`
/// (in that order) on row-major `x` (`d` columns).
pub(crate) fn fit_candidates(
    x: &[f64],
    d: usize,
    y: &[bool],
    keys: &[u64],
    params: &ValidTrainParams,
    test_fraction: f64,
    kinds: &[Kind],
) -> Result<Fitted, TrainError> {
    let seed = params.seed;
    let churn = &params.churn;
    let scaler = StandardScaler::fit(x, d);
    let mut scaled = x.to_vec();
    scale_in_place(&mut scaled, d, &scaler);
    let rows = split(keys, seed, test_fraction, churn.validation_fraction);
    let fit_keys: Vec<u64> = rows.fit.iter().map(|&i| keys[i]).collect();
    let y_val: Vec<bool> = rows.val.iter().map(|&i| y[i]).collect();
    let x_val = gather(&scaled, d, &rows.val);

    // A keyed sample of the fit rows (scaled) and their labels.
    let sample = |n: usize, salt: u64| -> (Vec<f64>, Vec<bool>) {
        let sampled: Vec<usize> = keyed_sample(&fit_keys, n, seed ^ salt)
            .into_iter()
            .map(|j| rows.fit[j])
            .collect();
        (
            gather(&scaled, d, &sampled),
            sampled.iter().map(|&i| y[i]).collect(),
        )
    };
    let mut fitted = Vec::new();
    for &kind in kinds {
        let started = Instant::now();
        let model = match kind {
            // Logistic baseline on a sample.
            Kind::Logistic => {
                let (xs, ys) = sample(churn.logistic_sample, LOGISTIC_SAMPLE_SALT);
                ChurnModel::Logistic(LinearModel::fit(&xs, d, &ys, churn.logistic_l2)?)
            }
            Kind::Boosted => {
                let (xs, ys) = sample(churn.boosting_sample, BOOSTING_SAMPLE_SALT);
                ChurnModel::Boosted(Forest::fit(&xs, d, &ys, params.boosting(), seed)?)
            }
        };
        fitted.push((model, started.elapsed().as_secs_f64()));
    }

    let candidates: Vec<Candidate> = fitted
        .into_iter()
        .map(|(model, fit_seconds)| {
            let raw: Vec<f64> = x_val.par_chunks(d).map(|r| model.score(r)).collect();
            let platt = Platt::fit(&raw, &y_val);
            let val_auc = metrics::roc_auc(&raw, &y_val);
            Candidate {
                model,
                platt,
                val_auc,
                fit_seconds,
            }
        })
        .collect();
    // Best validation AUC; NaN (one class in validation) never wins, ties go to the simpler
    // model (the earlier one).
    let mut chosen = 0;
    for (i, c) in candidates.iter().enumerate().skip(1) {
        if c.val_auc > candidates[chosen].val_auc {
            chosen = i;
        }
    }
    Ok(Fitted {
        scaler,
        candidates,
        chosen,
        test_rows: rows.test,
        scaled,
        val_rows: rows.val,
    })
}

/// Stage 3, the served model: refitted on snapshot B's labelled users, the chosen kind only
/// (`chosen` indexes [`BOTH`]), with no test rows held out.
pub(crate) fn final_fit(
    labelled_b: &Labelled,
    snap: &Snapshots,
    params: &ValidTrainParams,
    chosen: usize,
) -> Result<Fitted, TrainError> {
    let b = labelled_b;
    let d = snap.features.len();
    fit_candidates(&b.x, d, &b.y, &b.keys, params, 0.0, &[BOTH[chosen]])
}

/// Metrics and ROC curve of every candidate on scaled rows `xs`, and the chosen one's
/// probabilities.
pub(crate) struct Evaluated {
    pub models: Vec<ModelMetrics>,
    /// One ROC curve per candidate, in `models` order.
    pub rocs: Vec<Vec<(f64, f64)>>,
    pub chosen_probabilities: Vec<f64>,
}

pub(crate) fn evaluate_candidates(fitted: &Fitted, xs: &[f64], d: usize, y: &[bool]) -> Evaluated {
    let mut out = Evaluated {
        models: Vec::new(),
        rocs: Vec::new(),
        chosen_probabilities: Vec::new(),
    };
    for (i, c) in fitted.candidates.iter().enumerate() {
        let p = c.probabilities(xs, d);
        let (m, roc) = metrics::evaluate_with_curve(&p, y, ROC_POINTS);
        out.models.push(ModelMetrics {
            name: c.model.name().into(),
            metrics: m,
            fit_seconds: c.fit_seconds,
        });
        out.rocs.push(roc);
        if i == fitted.chosen {
            out.chosen_probabilities = p;
        }
    }
    out
}
