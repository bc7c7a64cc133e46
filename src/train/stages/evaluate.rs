//! Stage 2: fit the candidates and evaluate them, out of time (fitted on snapshot A, evaluated
//! on all users of B) or, with too little history, in time (held-out users of B). Both branches
//! end the same way: one evaluation set, one set of metrics, one [`EvalSets`] builder.

use super::super::config::ValidTrainParams;
use super::super::pipeline::{EvalSets, TrainError};
use super::super::source::TrainData;
use super::candidates::{evaluate_candidates, fit_candidates, Fitted, BOTH};
use super::rows::{gather, scale_in_place, Labelled};
use super::windows::{label_snapshot, Snapshots, Windows};
use crate::bundle::manifest::ModelMetrics;
use crate::features::time::format_rfc3339;
use crate::features::{Timestamp, UserAggregate};

/// Share of snapshot B's users held out for an in-time evaluation.
pub(crate) const IN_TIME_TEST_FRACTION: f64 = 0.2;

/// What the evaluation measured.
pub(crate) struct Evaluation {
    /// One per candidate, in [`BOTH`] order.
    pub models: Vec<ModelMetrics>,
    /// ROC curve per candidate, in `models` order.
    pub rocs: Vec<Vec<(f64, f64)>>,
    /// Index of the chosen candidate (in `models` and [`BOTH`]).
    pub chosen: usize,
    /// The chosen candidate's probabilities on the evaluation rows, and those rows' labels.
    pub probabilities: Vec<f64>,
    pub labels: Vec<bool>,
    /// How the metrics were obtained, in words.
    pub description: String,
    /// The exact rows, when asked for.
    pub eval_sets: Option<EvalSets>,
}

/// The rows one evaluation was fitted and measured on (before the measurement).
struct Plan {
    fitted: Fitted,
    train_snapshot: Timestamp,
    test_snapshot: Timestamp,
    /// The rows the candidates were fitted on (including validation rows), unscaled; empty
    /// unless the evaluation sets are kept.
    train: Labelled,
    /// The evaluation rows (only their labels unless the evaluation sets are kept), and the
    /// same rows scaled as the candidates saw them.
    test: Labelled,
    test_scaled: Vec<f64>,
}

/// Fits the candidates and measures them. `labelled_b` is snapshot B's labelled users.
pub(crate) fn evaluate(
    table: &dyn TrainData,
    w: &Windows,
    snap: &Snapshots,
    labelled_b: &Labelled,
    params: &ValidTrainParams,
    keep_eval_sets: bool,
    warnings: &mut Vec<String>,
) -> Result<Evaluation, TrainError> {
    let plan = match (w.snap_a, snap.aggs_a.as_deref()) {
        (Some(snap_a), Some(aggs_a)) => {
            let a = (snap_a, aggs_a);
            out_of_time(
                table,
                w,
                snap,
                a,
                labelled_b,
                params,
                keep_eval_sets,
                warnings,
            )?
        }
        _ => in_time(w, snap, labelled_b, params, keep_eval_sets, warnings)?,
    };
    let d = snap.features.len();
    let measured = evaluate_candidates(&plan.fitted, &plan.test_scaled, d, &plan.test.y);
    let description = match w.snap_a {
        Some(snap_a) => format!(
            "out of time: fitted on users known at {} (labels {} to {}), model chosen and calibrated on {:.0}% held-out users of that snapshot, evaluated on all {} users known at {} (labels to {})",
            format_rfc3339(snap_a),
            format_rfc3339(snap_a),
            format_rfc3339(w.snap_b),
            params.churn.validation_fraction * 100.0,
            plan.test.y.len(),
            format_rfc3339(w.snap_b),
            format_rfc3339(w.as_of)
        ),
        None => format!(
            "in time (history too short for out of time): fitted at {}, evaluated on {:.0}% held-out users of the same snapshot ({} users)",
            format_rfc3339(w.snap_b),
            IN_TIME_TEST_FRACTION * 100.0,
            plan.test.y.len()
        ),
    };
    let eval_sets = keep_eval_sets.then(|| EvalSets {
        feature_names: snap.features.names(),
        train_snapshot: plan.train_snapshot,
        test_snapshot: plan.test_snapshot,
        train_users: plan.train.users,
        train_x: plan.train.x,
        train_y: plan.train.y,
        test_users: plan.test.users,
        test_x: plan.test.x,
        test_y: plan.test.y.clone(),
        test_probability: measured.chosen_probabilities.clone(),
        tier_users: Vec::new(),
        tier_x: Vec::new(),
        tier: Vec::new(),
    });
    Ok(Evaluation {
        models: measured.models,
        rocs: measured.rocs,
        chosen: plan.fitted.chosen,
        probabilities: measured.chosen_probabilities,
        labels: plan.test.y,
        description,
        eval_sets,
    })
}

/// Fitted on snapshot A's users, evaluated on all of snapshot B's.
#[allow(clippy::too_many_arguments)]
fn out_of_time(
    table: &dyn TrainData,
    w: &Windows,
    snap: &Snapshots,
    (snap_a, aggs_a): (Timestamp, &[UserAggregate]),
    labelled_b: &Labelled,
    params: &ValidTrainParams,
    keep_eval_sets: bool,
    warnings: &mut Vec<String>,
) -> Result<Plan, TrainError> {
    let d = snap.features.len();
    let labelled_a = label_snapshot(
        table,
        aggs_a,
        snap,
        snap.purchases.a.as_ref(),
        snap_a,
        w.horizon,
        params.churn_definition,
    )?;
    class_warnings(
        &format!("training snapshot {}", format_rfc3339(snap_a)),
        &labelled_a.y,
        params,
        warnings,
    );
    class_warnings(
        &format!("evaluation snapshot {}", format_rfc3339(w.snap_b)),
        &labelled_b.y,
        params,
        warnings,
    );
    let fitted = fit_candidates(
        &labelled_a.x,
        d,
        &labelled_a.y,
        &labelled_a.keys,
        params,
        0.0,
        &BOTH,
    )?;
    let mut test_scaled = labelled_b.x.clone();
    scale_in_place(&mut test_scaled, d, &fitted.scaler);
    let (train, test) = if keep_eval_sets {
        (labelled_a, labelled_b.clone())
    } else {
        let y = labelled_b.y.clone();
        (
            Labelled::default(),
            Labelled {
                y,
                ..Labelled::default()
            },
        )
    };
    Ok(Plan {
        fitted,
        train_snapshot: snap_a,
        test_snapshot: w.snap_b,
        train,
        test,
        test_scaled,
    })
}

/// Fitted on most of snapshot B's users, evaluated on the held-out rest.
fn in_time(
    w: &Windows,
    snap: &Snapshots,
    labelled_b: &Labelled,
    params: &ValidTrainParams,
    keep_eval_sets: bool,
    warnings: &mut Vec<String>,
) -> Result<Plan, TrainError> {
    let d = snap.features.len();
    class_warnings(
        &format!("training snapshot {}", format_rfc3339(w.snap_b)),
        &labelled_b.y,
        params,
        warnings,
    );
    let b = labelled_b;
    let fitted = fit_candidates(&b.x, d, &b.y, &b.keys, params, IN_TIME_TEST_FRACTION, &BOTH)?;
    let test_scaled = gather(&fitted.scaled, d, &fitted.test_rows);
    let test = if keep_eval_sets {
        b.subset(&fitted.test_rows, d)
    } else {
        Labelled {
            y: fitted.test_rows.iter().map(|&i| b.y[i]).collect(),
            ..Labelled::default()
        }
    };
    let train = if keep_eval_sets {
        let in_test: std::collections::HashSet<usize> = fitted.test_rows.iter().copied().collect();
        let rows: Vec<usize> = (0..b.users.len())
            .filter(|i| !in_test.contains(i))
            .collect();
        b.subset(&rows, d)
    } else {
        Labelled::default()
    };
    Ok(Plan {
        fitted,
        train_snapshot: w.snap_b,
        test_snapshot: w.snap_b,
        train,
        test,
        test_scaled,
    })
}

/// Warns when a labelled snapshot has too few users, churners or non-churners to trust.
pub(crate) fn class_warnings(
    what: &str,
    y: &[bool],
    params: &ValidTrainParams,
    warnings: &mut Vec<String>,
) {
    let q = &params.quality;
    let pos = y.iter().filter(|&&l| l).count();
    let neg = y.len() - pos;
    if y.len() < q.min_users {
        warnings.push(format!(
            "{what}: only {} users (fewer than {}); metrics are noisy and the model may not generalise",
            y.len(),
            q.min_users
        ));
    }
    if pos < q.min_churners {
        warnings.push(format!(
            "{what}: only {pos} churners (fewer than {}); churn metrics cannot be trusted",
            q.min_churners
        ));
    }
    if neg < q.min_non_churners {
        warnings.push(format!(
            "{what}: only {neg} non-churners (fewer than {}); churn metrics cannot be trusted",
            q.min_non_churners
        ));
    }
}
