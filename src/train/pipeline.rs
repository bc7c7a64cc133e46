//! The training pipeline, pure: an events table in, a fitted [`Scorer`] + manifest + report data
//! + scored snapshot out. Writing the bundle is the caller's job (see [`super::write_bundle`]).
//!
//! Time line (H = horizon):
//! ```text
//!   first event ..... A = as_of-2H ....... B = as_of-H ........ as_of
//!                     |-- labels of A -----|-- labels of B -----|
//! ```
//! Models are fitted on snapshot A (features from events before A, label = nothing that counts
//! in [A, B)), chosen and calibrated on held-out users of A, and evaluated **out of time** on
//! snapshot B. The served model is then refitted the same way on snapshot B and scores everyone
//! as of `as_of`. With less history than that needs, evaluation falls back to held-out users of
//! B, and the output says so.

use super::config::TrainConfig;
use super::report::{self, ReportData};
use crate::bundle::manifest::{
    DataInfo, FeatureSpec, LeftOut, Manifest, Metrics, ModelMetrics, TierChanges, TierEntry,
};
use crate::bundle::{Bundle, Snapshot};
use crate::features::{
    active_in_window, build_aggregates, known_at, EventTable, Feature, FeatureSet, LifecycleStage,
    RfmSegment, RfmThresholds, StandardScaler, Timestamp, UserAggregate, DAY,
};
use crate::model::calibration::Platt;
use crate::model::churn::{ChurnError, ChurnModel, Forest, LinearModel};
use crate::model::identity;
use crate::model::metrics::{self, BinaryMetrics};
use crate::model::scorer::{quantiles, RiskLevel, Score, Scorer};
use crate::model::tiers::{self, keyed_sample, mix64, PreviousTiers, TierError};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the data has no events")]
    NoEvents,
    #[error(
        "history too short for a {horizon}-day horizon: the data spans {span_days:.1} days, training needs more than {horizon} (a snapshot plus its label window)"
    )]
    HistoryTooShort { horizon: u32, span_days: f64 },
    #[error("no user is known at the training snapshot {0}")]
    NoUsers(String),
    #[error("cannot fit a churn model: {0} (the label window holds only one class; try a longer history, a different --horizon-days or --as-of)")]
    Churn(#[from] ChurnError),
    #[error(transparent)]
    Tiers(#[from] TierError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// What the pipeline needs besides the events.
pub struct TrainInput<'a> {
    pub table: &'a EventTable,
    /// Ground-truth personas per user index, when the data has them (for the ARI only).
    pub personas: Option<&'a [Option<String>]>,
    pub data: DataInfo,
    /// Score time; `None` = just after the last event.
    pub as_of: Option<Timestamp>,
    pub config: &'a TrainConfig,
    /// The bundle that is current, with its state, for stable tier ids and the transition matrix.
    pub previous: Option<(&'a Bundle, &'a Snapshot)>,
    /// Keep the evaluation sets (features, labels, probabilities) in the result, for comparing
    /// other tools on identical rows (`tiering train --export-eval`).
    pub keep_eval_sets: bool,
    /// Version id and creation time to stamp on the result.
    pub version: String,
    pub created_at: String,
}

pub struct Trained {
    pub scorer: Scorer,
    pub manifest: Manifest,
    pub report: ReportData,
    pub snapshot: Snapshot,
    /// Per user index, as of `as_of`.
    pub scores: Vec<Score>,
    pub timings: Vec<(String, f64)>,
    /// Present when `keep_eval_sets` was asked for.
    pub eval_sets: Option<EvalSets>,
}

/// The exact rows the churn models were fitted and evaluated on: transformed (pre-scaling)
/// features, labels, and the chosen model's calibrated probabilities on the test rows.
#[derive(Debug, Clone, Default)]
pub struct EvalSets {
    pub feature_names: Vec<String>,
    pub train_snapshot: Timestamp,
    pub test_snapshot: Timestamp,
    /// User indices, row-major features (`feature_names.len()` columns), labels (true = churned).
    pub train_users: Vec<usize>,
    pub train_x: Vec<f64>,
    pub train_y: Vec<bool>,
    pub test_users: Vec<usize>,
    pub test_x: Vec<f64>,
    pub test_y: Vec<bool>,
    pub test_probability: Vec<f64>,
    /// The rows the tiers were clustered on (users known at as_of), *standardised* as k-means
    /// saw them, and each row's tier (index into the bundle's tiers).
    pub tier_users: Vec<usize>,
    pub tier_x: Vec<f64>,
    pub tier: Vec<u16>,
}

/// 64-bit FNV-1a of a user id: the key for order-independent sampling and splits.
pub fn user_key(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn rfc3339(ts: Timestamp) -> String {
    chrono::DateTime::from_timestamp(ts, 0).map_or_else(
        || ts.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// Transformed (pre-scaling) feature rows of `rows` users as of `t`, row-major.
fn feature_rows(aggs: &[UserAggregate], rows: &[usize], fs: &FeatureSet, t: Timestamp) -> Vec<f64> {
    let d = fs.len();
    let mut x = vec![0.0; rows.len() * d];
    x.par_chunks_mut(d * 1024)
        .zip(rows.par_chunks(1024))
        .for_each(|(xc, rc)| {
            for (row, &u) in xc.chunks_exact_mut(d).zip(rc) {
                fs.transformed_into(&aggs[u], t, row);
            }
        });
    x
}

fn gather(x: &[f64], d: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Every candidate, in the order the evaluation compares them.
const BOTH: [Kind; 2] = [Kind::Logistic, Kind::Boosted];

/// A fitted candidate model with its calibration and held-out validation AUC.
struct Candidate {
    model: ChurnModel,
    platt: Platt,
    val_auc: f64,
    fit_seconds: f64,
}

impl Candidate {
    fn probabilities(&self, xs: &[f64], d: usize) -> Vec<f64> {
        xs.par_chunks(d)
            .map(|r| self.platt.probability(self.model.score(r)))
            .collect()
    }
}

struct Fitted {
    scaler: StandardScaler,
    /// One per fitted [`Kind`], in the order asked for.
    candidates: Vec<Candidate>,
    /// Index of the candidate with the best validation AUC.
    chosen: usize,
    /// Held-out rows for in-time evaluation (empty unless asked for).
    test_rows: Vec<usize>,
    /// Scaled rows (all), for evaluation on the test rows.
    scaled: Vec<f64>,
    val_rows: Vec<usize>,
}

/// The candidate churn models, in [`Fitted::candidates`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Logistic,
    Boosted,
}

/// Splits rows by a keyed hash into (fit, validation, test) and fits the candidates of `kinds`
/// (in that order).
#[allow(clippy::too_many_arguments)]
fn fit_candidates(
    x: &[f64],
    d: usize,
    y: &[bool],
    keys: &[u64],
    cfg: &TrainConfig,
    seed: u64,
    test_fraction: f64,
    kinds: &[Kind],
) -> Result<Fitted, TrainError> {
    let scaler = StandardScaler::fit(x, d);
    let mut scaled = x.to_vec();
    scaled
        .par_chunks_mut(d)
        .for_each(|r| scaler.transform_in_place(r));
    let (mut fit_rows, mut val_rows, mut test_rows) = (Vec::new(), Vec::new(), Vec::new());
    let val_fraction = cfg.churn.validation_fraction;
    for (i, &k) in keys.iter().enumerate() {
        let u = (mix64(k ^ mix64(seed ^ 0x7E57)) >> 11) as f64 / (1u64 << 53) as f64;
        if u < test_fraction {
            test_rows.push(i);
        } else if u < test_fraction + val_fraction {
            val_rows.push(i);
        } else {
            fit_rows.push(i);
        }
    }
    let fit_keys: Vec<u64> = fit_rows.iter().map(|&i| keys[i]).collect();
    let y_val: Vec<bool> = val_rows.iter().map(|&i| y[i]).collect();
    let x_val = gather(&scaled, d, &val_rows);

    // A keyed sample of the fit rows (scaled) and their labels.
    let sample = |n: usize, salt: u64| -> (Vec<f64>, Vec<bool>) {
        let rows: Vec<usize> = keyed_sample(&fit_keys, n, seed ^ salt)
            .into_iter()
            .map(|j| fit_rows[j])
            .collect();
        (
            gather(&scaled, d, &rows),
            rows.iter().map(|&i| y[i]).collect(),
        )
    };
    let mut candidates = Vec::new();
    for &kind in kinds {
        let started = Instant::now();
        let model = match kind {
            // Logistic baseline on a sample.
            Kind::Logistic => {
                let (xs, ys) = sample(cfg.churn.logistic_sample, 1);
                ChurnModel::Logistic(LinearModel::fit(&xs, d, &ys, cfg.churn.logistic_l2)?)
            }
            Kind::Boosted => {
                let (xs, ys) = sample(cfg.churn.boosting_sample, 2);
                ChurnModel::Boosted(Forest::fit(&xs, d, &ys, cfg.churn.boosting, seed)?)
            }
        };
        candidates.push((model, started.elapsed().as_secs_f64()));
    }

    let candidates: Vec<Candidate> = candidates
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
        test_rows,
        scaled,
        val_rows,
    })
}

/// Metrics and ROC curve of every candidate on scaled rows `xs`; returns the chosen one's
/// probabilities.
fn evaluate_candidates(
    fitted: &Fitted,
    xs: &[f64],
    d: usize,
    y: &[bool],
    model_metrics: &mut Vec<ModelMetrics>,
    rocs: &mut Vec<Vec<(f64, f64)>>,
) -> Vec<f64> {
    let mut chosen = Vec::new();
    for (i, c) in fitted.candidates.iter().enumerate() {
        let p = c.probabilities(xs, d);
        let (m, roc) = metrics::evaluate_with_curve(&p, y, 200);
        model_metrics.push(ModelMetrics {
            name: c.model.name().into(),
            metrics: m,
            fit_seconds: c.fit_seconds,
        });
        rocs.push(roc);
        if i == fitted.chosen {
            chosen = p;
        }
    }
    chosen
}

fn label_snapshot(
    table: &EventTable,
    aggs: &[UserAggregate],
    t: Timestamp,
    h: Timestamp,
    cfg: &TrainConfig,
) -> (Vec<usize>, Vec<bool>) {
    let active = active_in_window(table, t, t + h, cfg.churn_definition);
    let rows: Vec<usize> = (0..aggs.len()).filter(|&u| known_at(&aggs[u], t)).collect();
    let y: Vec<bool> = rows.iter().map(|&u| !active[u]).collect();
    (rows, y)
}

fn class_warnings(what: &str, y: &[bool], cfg: &TrainConfig, warnings: &mut Vec<String>) {
    let pos = y.iter().filter(|&&l| l).count();
    let neg = y.len() - pos;
    if y.len() < cfg.quality.min_users {
        warnings.push(format!(
            "{what}: only {} users (fewer than {}); metrics are noisy and the model may not generalise",
            y.len(),
            cfg.quality.min_users
        ));
    }
    if pos < cfg.quality.min_churners {
        warnings.push(format!(
            "{what}: only {pos} churners (fewer than {}); churn metrics cannot be trusted",
            cfg.quality.min_churners
        ));
    }
    if neg < cfg.quality.min_non_churners {
        warnings.push(format!(
            "{what}: only {neg} non-churners (fewer than {}); churn metrics cannot be trusted",
            cfg.quality.min_non_churners
        ));
    }
}

/// Runs the pipeline. `progress` is told the name of each stage as it starts.
pub fn fit(input: TrainInput, progress: &mut dyn FnMut(&str)) -> Result<Trained, TrainError> {
    let cfg = input.config;
    cfg.validate()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let table = input.table;
    let seed = cfg.seed;
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let mut warnings = Vec::new();

    let first = table.min_ts().ok_or(TrainError::NoEvents)?;
    let last = table.max_ts().ok_or(TrainError::NoEvents)?;
    let as_of = input.as_of.unwrap_or(last + 1);
    let h = i64::from(cfg.horizon_days) * DAY;
    let snap_b = as_of - h;
    let snap_a = snap_b - h;
    let span_days = (as_of - first) as f64 / DAY as f64;
    if snap_b <= first {
        return Err(TrainError::HistoryTooShort {
            horizon: cfg.horizon_days,
            span_days,
        });
    }
    if as_of <= last {
        let later = table.ts.iter().filter(|&&t| t >= as_of).count();
        warnings.push(format!(
            "{later} events at or after --as-of {} were ignored",
            rfc3339(as_of)
        ));
    }
    // Out of time needs snapshot A to carry at least one horizon of history.
    let out_of_time = snap_a - first >= h;
    if !out_of_time {
        warnings.push(format!(
            "history of {span_days:.0} days is shorter than 3 x {} days: evaluated on held-out users at one snapshot (in time), not out of time",
            cfg.horizon_days
        ));
    }

    progress("building point-in-time features");
    let (feature_set, left_out) = FeatureSet::supported_by(table.columns, &table.kinds_present());
    let d = feature_set.len();
    let keys: Vec<u64> = table.user_ids.iter().map(|id| user_key(id)).collect();
    let times = if out_of_time {
        vec![snap_a, snap_b, as_of]
    } else {
        vec![snap_b, as_of]
    };
    let mut snaps = build_aggregates(table, &times);
    let aggs_now = snaps.pop().unwrap_or_default();
    let aggs_b = snaps.pop().unwrap_or_default();
    let aggs_a = snaps.pop();
    lap("features", &mut timings);

    // Labels.
    progress("labelling snapshots");
    let (rows_b, y_b) = label_snapshot(table, &aggs_b, snap_b, h, cfg);
    if rows_b.is_empty() {
        return Err(TrainError::NoUsers(rfc3339(snap_b)));
    }
    let x_b = feature_rows(&aggs_b, &rows_b, &feature_set, snap_b);
    let keys_b: Vec<u64> = rows_b.iter().map(|&u| keys[u]).collect();
    lap("labels", &mut timings);

    // Evaluation.
    progress("fitting and evaluating churn models");
    let mut model_metrics: Vec<ModelMetrics> = Vec::new();
    let mut rocs: Vec<Vec<(f64, f64)>> = Vec::new();
    let (eval_probs, eval_labels, evaluation, chosen_kind);
    let mut eval_sets = None;
    if let Some(aggs_a) = &aggs_a {
        let (rows_a, y_a) = label_snapshot(table, aggs_a, snap_a, h, cfg);
        if rows_a.is_empty() {
            return Err(TrainError::NoUsers(rfc3339(snap_a)));
        }
        class_warnings(
            &format!("training snapshot {}", rfc3339(snap_a)),
            &y_a,
            cfg,
            &mut warnings,
        );
        class_warnings(
            &format!("evaluation snapshot {}", rfc3339(snap_b)),
            &y_b,
            cfg,
            &mut warnings,
        );
        let x_a = feature_rows(aggs_a, &rows_a, &feature_set, snap_a);
        let keys_a: Vec<u64> = rows_a.iter().map(|&u| keys[u]).collect();
        let fitted = fit_candidates(&x_a, d, &y_a, &keys_a, cfg, seed, 0.0, &BOTH)?;
        let mut xs_b = x_b.clone();
        xs_b.par_chunks_mut(d)
            .for_each(|r| fitted.scaler.transform_in_place(r));
        let probs_chosen =
            evaluate_candidates(&fitted, &xs_b, d, &y_b, &mut model_metrics, &mut rocs);
        chosen_kind = fitted.chosen;
        if input.keep_eval_sets {
            eval_sets = Some(EvalSets {
                feature_names: feature_set.names(),
                train_snapshot: snap_a,
                test_snapshot: snap_b,
                train_users: rows_a.clone(),
                train_x: x_a.clone(),
                train_y: y_a.clone(),
                test_users: rows_b.clone(),
                test_x: x_b.clone(),
                test_y: y_b.clone(),
                test_probability: probs_chosen.clone(),
                tier_users: Vec::new(),
                tier_x: Vec::new(),
                tier: Vec::new(),
            });
        }
        eval_probs = probs_chosen;
        eval_labels = y_b.clone();
        evaluation = format!(
            "out of time: fitted on users known at {} (labels {} to {}), model chosen and calibrated on {:.0}% held-out users of that snapshot, evaluated on all {} users known at {} (labels to {})",
            rfc3339(snap_a),
            rfc3339(snap_a),
            rfc3339(snap_b),
            cfg.churn.validation_fraction * 100.0,
            y_b.len(),
            rfc3339(snap_b),
            rfc3339(as_of)
        );
    } else {
        class_warnings(
            &format!("training snapshot {}", rfc3339(snap_b)),
            &y_b,
            cfg,
            &mut warnings,
        );
        let fitted = fit_candidates(&x_b, d, &y_b, &keys_b, cfg, seed, 0.2, &BOTH)?;
        let xs_test = gather(&fitted.scaled, d, &fitted.test_rows);
        let y_test: Vec<bool> = fitted.test_rows.iter().map(|&i| y_b[i]).collect();
        let probs_chosen =
            evaluate_candidates(&fitted, &xs_test, d, &y_test, &mut model_metrics, &mut rocs);
        chosen_kind = fitted.chosen;
        if input.keep_eval_sets {
            let in_test: std::collections::HashSet<usize> =
                fitted.test_rows.iter().copied().collect();
            let train_rows: Vec<usize> =
                (0..rows_b.len()).filter(|i| !in_test.contains(i)).collect();
            eval_sets = Some(EvalSets {
                feature_names: feature_set.names(),
                train_snapshot: snap_b,
                test_snapshot: snap_b,
                train_users: train_rows.iter().map(|&i| rows_b[i]).collect(),
                train_x: gather(&x_b, d, &train_rows),
                train_y: train_rows.iter().map(|&i| y_b[i]).collect(),
                test_users: fitted.test_rows.iter().map(|&i| rows_b[i]).collect(),
                test_x: gather(&x_b, d, &fitted.test_rows),
                test_y: y_test.clone(),
                test_probability: probs_chosen.clone(),
                tier_users: Vec::new(),
                tier_x: Vec::new(),
                tier: Vec::new(),
            });
        }
        eval_probs = probs_chosen;
        eval_labels = y_test;
        evaluation = format!(
            "in time (history too short for out of time): fitted at {}, evaluated on 20% held-out users of the same snapshot ({} users)",
            rfc3339(snap_b),
            eval_labels.len()
        );
    }
    lap("evaluation", &mut timings);

    // The served model: refit on snapshot B, the chosen kind only.
    progress("refitting the served model on the latest labelled snapshot");
    let final_fit = fit_candidates(&x_b, d, &y_b, &keys_b, cfg, seed, 0.0, &[BOTH[chosen_kind]])?;
    let final_candidate = &final_fit.candidates[final_fit.chosen];
    let scaler = final_fit.scaler.clone();
    lap("final churn fit", &mut timings);

    // Tiers over the population as of `as_of`, scaled like the churn model's inputs.
    progress("clustering tiers");
    let users_now: Vec<usize> = (0..aggs_now.len())
        .filter(|&u| known_at(&aggs_now[u], as_of))
        .collect();
    let mut x_now = feature_rows(&aggs_now, &users_now, &feature_set, as_of);
    x_now
        .par_chunks_mut(d)
        .for_each(|r| scaler.transform_in_place(r));
    let keys_now: Vec<u64> = users_now.iter().map(|&u| keys[u]).collect();
    let names = feature_set
        .features
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>();
    let prev_tiers = input
        .previous
        .map(|(b, _)| previous_in_new_space(b, &feature_set, &scaler));
    let (mut tier_model, tier_report) = tiers::fit(
        &x_now,
        d,
        &keys_now,
        &names,
        cfg.tiers,
        seed,
        prev_tiers.as_ref(),
    )?;
    lap("tiers", &mut timings);

    // RFM thresholds from buyers at snapshot B (the population the model learned from).
    let rfm = RfmThresholds::fit(rows_b.iter().filter(|&&u| aggs_b[u].orders > 0).map(|&u| {
        let a = &aggs_b[u];
        (
            Feature::RecencyDays.value(a, snap_b),
            f64::from(a.orders),
            a.spend,
        )
    }));
    let mut scorer = Scorer {
        features: feature_set.clone(),
        scaler: scaler.clone(),
        tiers: tier_model.clone(),
        churn: final_candidate.model.clone(),
        calibration: final_candidate.platt,
        risk: cfg.risk,
        risk_quantiles: Vec::new(),
        rfm,
        lifecycle: cfg.lifecycle,
    };

    // Score everyone as of `as_of`; the quantile table comes from the known users' probabilities.
    progress("scoring all users");
    let mut scores = vec![Score::default(); aggs_now.len()];
    scorer.score_batch(&aggs_now, as_of, &mut scores);
    let known_probs: Vec<f64> = users_now
        .iter()
        .map(|&u| scores[u].churn_probability)
        .collect();
    scorer.risk_quantiles = quantiles(&known_probs);
    scorer.refresh_percentiles(&mut scores);
    if let Some(sets) = eval_sets.as_mut() {
        sets.tier = users_now.iter().map(|&u| scores[u].tier).collect();
        sets.tier_users = users_now.clone();
        sets.tier_x = std::mem::take(&mut x_now);
    }
    lap("scoring", &mut timings);

    // Tier profiles (original units) and descriptions.
    let k = tier_model.k();
    let mut sums = vec![0.0; k * d];
    let mut counts = vec![0u64; k];
    let mut prob_sums = vec![0.0; k];
    let mut raw = vec![0.0; d];
    for &u in &users_now {
        let t = usize::from(scores[u].tier);
        feature_set.raw_into(&aggs_now[u], as_of, &mut raw);
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
        tier_model.tiers[c].description =
            identity::describe(&names, tier_model.centroid(c), &means[c * d..(c + 1) * d]);
    }
    scorer.tiers = tier_model.clone();

    // Observed churn on snapshot B per tier, segment, lifecycle stage.
    let mut by_tier = vec![(0u64, 0u64); k];
    let mut by_seg: BTreeMap<RfmSegment, (u64, u64)> = BTreeMap::new();
    let mut by_stage: BTreeMap<LifecycleStage, (u64, u64)> = BTreeMap::new();
    let placed: Vec<(u16, RfmSegment, LifecycleStage)> = rows_b
        .par_iter()
        .map(|&u| scorer.placement(&aggs_b[u], snap_b))
        .collect();
    for (&(tier, segment, stage), &churned) in placed.iter().zip(&y_b) {
        let c = u64::from(churned);
        let t = &mut by_tier[usize::from(tier)];
        t.0 += 1;
        t.1 += c;
        let e = by_seg.entry(segment).or_default();
        e.0 += 1;
        e.1 += c;
        let e = by_stage.entry(stage).or_default();
        e.0 += 1;
        e.1 += c;
    }
    let rate = |(n, c): (u64, u64)| {
        if n == 0 {
            f64::NAN
        } else {
            c as f64 / n as f64
        }
    };

    // ARI against ground-truth personas.
    let ari = input.personas.and_then(|personas| {
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &u in &users_now {
            if let Some(Some(p)) = personas.get(u) {
                let n = ids.len();
                a.push(*ids.entry(p.as_str()).or_insert(n));
                b.push(usize::from(scores[u].tier));
            }
        }
        (a.len() >= 2).then(|| metrics::adjusted_rand_index(&a, &b))
    });

    // Transitions from the previous bundle: each user's tier there vs here.
    let transitions = input.previous.map(|(pb, ps)| {
        let prev_ids: Vec<String> = pb.scorer.tiers.tiers.iter().map(|t| t.id.clone()).collect();
        let new_ids: Vec<String> = tier_model.tiers.iter().map(|t| t.id.clone()).collect();
        let mut counts = vec![vec![0u64; new_ids.len()]; prev_ids.len()];
        let (mut compared, mut changed) = (0u64, 0u64);
        for (id, agg) in ps.user_ids.iter().zip(&ps.aggregates) {
            let Some(&u) = table.index.get(id) else {
                continue;
            };
            let before = usize::from(pb.scorer.placement(agg, ps.as_of).0);
            let after = usize::from(scores[u as usize].tier);
            counts[before][after] += 1;
            compared += 1;
            if prev_ids[before] != new_ids[after] {
                changed += 1;
            }
        }
        report::Transitions {
            previous_version: pb.manifest.version.clone(),
            from: prev_ids,
            to: new_ids,
            counts,
            compared,
            changed,
        }
    });

    // Feature importance: mean |contribution| of the served model on its validation users.
    let mut importance = vec![0.0; d];
    let mut contrib = vec![0.0; d];
    let imp_rows = &final_fit.val_rows;
    for &i in imp_rows.iter().take(50_000) {
        final_candidate
            .model
            .score_explained(&final_fit.scaled[i * d..(i + 1) * d], &mut contrib);
        for j in 0..d {
            importance[j] += contrib[j].abs();
        }
    }
    let total: f64 = importance.iter().sum();
    let mut feature_importance: Vec<(String, f64)> = names
        .iter()
        .zip(&importance)
        .map(|(n, v)| (n.to_string(), if total > 0.0 { v / total } else { 0.0 }))
        .collect();
    feature_importance.sort_by(|a, b| b.1.total_cmp(&a.1));

    let chosen_metrics = model_metrics[chosen_kind].metrics;
    quality_warnings(&chosen_metrics, &mut warnings);
    let calibration = metrics::calibration_table(&eval_probs, &eval_labels, 10);

    // Manifest.
    let n_known = users_now.len().max(1) as f64;
    let tiers_entries: Vec<TierEntry> = tier_model
        .tiers
        .iter()
        .enumerate()
        .map(|(c, t)| TierEntry {
            id: t.id.clone(),
            name_en: t.name_en.clone(),
            name_zh: t.name_zh.clone(),
            description: t.description.clone(),
            playbook: t.playbook.clone(),
            users: counts[c],
            share: counts[c] as f64 / n_known,
            churn_rate: Some(rate(by_tier[c])).filter(|r| r.is_finite()),
            mean_churn_probability: prob_sums[c] / counts[c].max(1) as f64,
            profile: names
                .iter()
                .enumerate()
                .map(|(j, n)| (n.to_string(), means[c * d + j]))
                .collect(),
        })
        .collect();
    let tier_changes = transitions.as_ref().map(|t| TierChanges {
        compared: t.compared,
        changed: t.changed,
    });
    let manifest = Manifest {
        format_version: crate::bundle::FORMAT_VERSION,
        version: input.version.clone(),
        created_at: input.created_at.clone(),
        previous_version: input.previous.map(|(b, _)| b.manifest.version.clone()),
        data: input.data.clone(),
        params: serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null),
        as_of: rfc3339(as_of),
        as_of_ts: as_of,
        horizon_days: cfg.horizon_days,
        churn_definition: cfg.churn_definition,
        features: feature_set
            .features
            .iter()
            .enumerate()
            .map(|(j, f)| FeatureSpec {
                name: f.name().into(),
                transform: f.transform(),
                mean: scaler.mean[j],
                std: scaler.std[j],
            })
            .collect(),
        features_left_out: left_out
            .iter()
            .map(|(f, why)| LeftOut {
                name: f.name().into(),
                reason: (*why).into(),
            })
            .collect(),
        tiers: tiers_entries.clone(),
        metrics: Metrics {
            chosen_model: final_candidate.model.name().into(),
            evaluation: evaluation.clone(),
            models: model_metrics.clone(),
            calibration: calibration.clone(),
            k: tier_report.k,
            k_scores: tier_report.k_scores.clone(),
            inertia: tier_model.inertia,
            tier_ari: ari,
            tier_changes,
        },
        warnings: warnings.clone(),
        files: BTreeMap::new(),
    };

    // Report data.
    let risk_levels: Vec<(String, u64)> = RiskLevel::ALL
        .iter()
        .map(|l| {
            (
                l.id().to_string(),
                users_now
                    .iter()
                    .filter(|&&u| scores[u].risk_level == *l)
                    .count() as u64,
            )
        })
        .collect();
    let report = ReportData {
        version: input.version.clone(),
        created_at: input.created_at.clone(),
        as_of: rfc3339(as_of),
        horizon_days: cfg.horizon_days,
        data: report::DataSummary {
            events: input.data.events,
            users: input.data.users,
            first_event: input.data.first_event.clone(),
            last_event: input.data.last_event.clone(),
            fingerprint: input.data.fingerprint.clone(),
            bad_rows_skipped: input.data.bad_rows_skipped,
        },
        warnings: warnings.clone(),
        evaluation,
        features: feature_set.names(),
        features_left_out: left_out
            .iter()
            .map(|(f, why)| format!("{} ({why})", f.name()))
            .collect(),
        tiers: tiers_entries
            .iter()
            .map(|t| report::TierReport {
                id: t.id.clone(),
                name_en: t.name_en.clone(),
                name_zh: t.name_zh.clone(),
                description: t.description.clone(),
                playbook: t.playbook.clone(),
                users: t.users,
                share: t.share,
                churn_rate: t.churn_rate,
                mean_churn_probability: t.mean_churn_probability,
                profile: names
                    .iter()
                    .map(|n| {
                        (
                            n.to_string(),
                            t.profile.get(*n).copied().unwrap_or(f64::NAN),
                        )
                    })
                    .collect(),
            })
            .collect(),
        k_scores: tier_report.k_scores.clone(),
        k: tier_report.k,
        ari,
        models: model_metrics
            .iter()
            .zip(&rocs)
            .enumerate()
            .map(|(i, (m, roc))| report::ModelReport {
                name: m.name.clone(),
                chosen: i == chosen_kind,
                roc_auc: m.metrics.roc_auc,
                pr_auc: m.metrics.pr_auc,
                brier: m.metrics.brier,
                log_loss: m.metrics.log_loss,
                lift_top_decile: m.metrics.lift_top_decile,
                roc: roc.clone(),
                fit_seconds: m.fit_seconds,
            })
            .collect(),
        calibration: calibration
            .iter()
            .map(|c| report::CalibrationBin {
                lo: c.lo,
                hi: c.hi,
                mean_predicted: c.mean_predicted,
                observed_rate: c.observed_rate,
                count: c.count,
            })
            .collect(),
        churn_by_segment: by_seg
            .iter()
            .map(|(s, &v)| report::GroupRate {
                group: format!("{} {}", s.id(), s.name_zh()),
                users: v.0,
                churn_rate: rate(v),
            })
            .collect(),
        churn_by_lifecycle: by_stage
            .iter()
            .map(|(s, &v)| report::GroupRate {
                group: format!("{} {}", s.id(), s.name_zh()),
                users: v.0,
                churn_rate: rate(v),
            })
            .collect(),
        feature_importance,
        risk_levels,
        transitions,
    };
    lap("report", &mut timings);

    let snapshot = Snapshot {
        as_of,
        user_ids: table.user_ids.clone(),
        aggregates: aggs_now,
    };
    Ok(Trained {
        scorer,
        manifest,
        report,
        snapshot,
        scores,
        timings,
        eval_sets,
    })
}

fn quality_warnings(m: &BinaryMetrics, warnings: &mut Vec<String>) {
    if m.roc_auc.is_nan() {
        warnings.push("the evaluation set holds a single class: ROC-AUC is undefined".into());
    } else if m.roc_auc < 0.6 {
        warnings.push(format!(
            "churn ROC-AUC is only {:.3} on the evaluation set: the model barely ranks users",
            m.roc_auc
        ));
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate_table, GenerateParams};

    pub(crate) fn trained(users: u64, seed: u64) -> (EventTable, Trained) {
        let end = 1_780_000_000 - 1_780_000_000 % DAY;
        let params = GenerateParams::new(end)
            .users(users)
            .days(180)
            .seed(seed)
            .check()
            .unwrap();
        let (table, people) = generate_table(&params);
        let personas: Vec<Option<String>> = people
            .iter()
            .map(|p| Some(format!("{:?}", p.persona)))
            .collect();
        let cfg = TrainConfig::default();
        let input = TrainInput {
            table: &table,
            personas: Some(&personas),
            data: DataInfo::default(),
            as_of: None,
            config: &cfg,
            previous: None,
            keep_eval_sets: true,
            version: "v1".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        let t = fit(input, &mut |_| {}).unwrap();
        (table, t)
    }

    #[test]
    fn generated_personas_are_recovered_and_churn_is_predictable() {
        let (_, t) = trained(6000, 3);
        let m = &t.manifest.metrics;
        eprintln!("{}", serde_json::to_string_pretty(&m.models).unwrap());
        eprintln!(
            "k={} ari={:?} warnings={:?} timings={:?}",
            m.k, m.tier_ari, t.manifest.warnings, t.timings
        );
        for tier in &t.manifest.tiers {
            eprintln!(
                "{} {} {:.3} {:?} | {}",
                tier.id, tier.users, tier.mean_churn_probability, tier.churn_rate, tier.description
            );
        }
        assert!(m.evaluation.starts_with("out of time"));
        let ev = t.eval_sets.as_ref().expect("eval sets kept");
        assert_eq!(ev.test_y.len(), m.models[0].metrics.n as usize);
        assert_eq!(ev.test_x.len(), ev.test_y.len() * ev.feature_names.len());
        assert!(ev.train_snapshot < ev.test_snapshot);
        assert!(
            m.models.iter().all(|x| x.metrics.roc_auc > 0.7),
            "{:?}",
            m.models
        );
        assert!(m.tier_ari.unwrap_or(0.0) > 0.2, "ari {:?}", m.tier_ari);
        t.scorer.validate().unwrap();
    }
}
