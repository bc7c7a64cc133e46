//! Stage 7: what the run measured beyond the models (observed churn per group, agreement with
//! personas, tier transitions, feature importance), summed up as the manifest and the report.

use super::super::config::ValidTrainParams;
use super::super::pipeline::TrainInput;
use super::super::report::{self, ReportExtras};
use super::super::source::TrainData;
use super::candidates::Fitted;
use super::evaluate::Evaluation;
use super::rows::Labelled;
use super::scoring::Profiles;
use super::stability::Compared;
use super::tiers::Tiering;
use super::windows::{Snapshots, Windows};
use crate::bundle::manifest::DataInfo;
use crate::bundle::manifest::{FeatureSpec, LeftOut, Manifest, Metrics, TierChanges, TierEntry};
use crate::bundle::{Bundle, Snapshot};
use crate::features::time::format_rfc3339;
use crate::features::{LifecycleStage, RfmSegment};
use crate::model::drift::{DriftReference, PSI_RETRAIN};
use crate::model::metrics::{self, BinaryMetrics};
use crate::model::scorer::{RiskLevel, Score, Scorer};
use crate::model::tiers::TierFitReport;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Validation rows the feature importance is averaged over, at most.
const IMPORTANCE_ROWS: usize = 50_000;
/// Bins of the calibration table.
const CALIBRATION_BINS: usize = 10;
/// Below this evaluation ROC-AUC the run warns that the model barely ranks users.
const WEAK_ROC_AUC: f64 = 0.6;

/// (users, churned) per group.
type Counts = (u64, u64);

/// Observed churn on snapshot B per tier, RFM segment and lifecycle stage.
pub(crate) struct ObservedChurn {
    pub by_tier: Vec<Counts>,
    pub by_segment: BTreeMap<RfmSegment, Counts>,
    pub by_stage: BTreeMap<LifecycleStage, Counts>,
}

pub(crate) fn observed_churn(
    w: &Windows,
    snap: &Snapshots,
    labelled_b: &Labelled,
    scorer: &Scorer,
) -> ObservedChurn {
    let mut out = ObservedChurn {
        by_tier: vec![(0, 0); scorer.tiers.k()],
        by_segment: BTreeMap::new(),
        by_stage: BTreeMap::new(),
    };
    let placed: Vec<(u16, RfmSegment, LifecycleStage)> = labelled_b
        .users
        .par_iter()
        .map(|&u| scorer.placement(&snap.aggs_b[u], w.snap_b))
        .collect();
    for (&(tier, segment, stage), &churned) in placed.iter().zip(&labelled_b.y) {
        let c = u64::from(churned);
        let t = &mut out.by_tier[usize::from(tier)];
        t.0 += 1;
        t.1 += c;
        let e = out.by_segment.entry(segment).or_default();
        e.0 += 1;
        e.1 += c;
        let e = out.by_stage.entry(stage).or_default();
        e.0 += 1;
        e.1 += c;
    }
    out
}

fn rate((n, c): Counts) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        c as f64 / n as f64
    }
}

/// Adjusted Rand index of the tiers against ground-truth personas, when the data has them.
pub(crate) fn tier_ari(
    personas: Option<&[Option<String>]>,
    users_now: &[usize],
    scores: &[Score],
) -> Option<f64> {
    let personas = personas?;
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &u in users_now {
        if let Some(Some(p)) = personas.get(u) {
            let n = ids.len();
            a.push(*ids.entry(p.as_str()).or_insert(n));
            b.push(usize::from(scores[u].tier));
        }
    }
    (a.len() >= 2).then(|| metrics::adjusted_rand_index(&a, &b))
}

/// Each user's tier in the previous bundle vs here.
pub(crate) fn transitions(
    table: &dyn TrainData,
    (pb, ps): (&Bundle, &Snapshot),
    scorer: &Scorer,
    scores: &[Score],
) -> report::Transitions {
    let prev_ids: Vec<String> = pb.scorer.tiers.tiers.iter().map(|t| t.id.clone()).collect();
    let new_ids: Vec<String> = scorer.tiers.tiers.iter().map(|t| t.id.clone()).collect();
    let mut counts = vec![vec![0u64; new_ids.len()]; prev_ids.len()];
    let (mut compared, mut changed) = (0u64, 0u64);
    for (id, agg) in ps.user_ids.iter().zip(&ps.aggregates) {
        let Some(u) = table.user_index(id) else {
            continue;
        };
        let before = usize::from(pb.scorer.placement(agg, ps.as_of).0);
        let after = usize::from(scores[u].tier);
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
}

/// Mean |contribution| of the served model on its validation users, normalised to sum to 1,
/// largest first.
pub(crate) fn feature_importance(final_fit: &Fitted, snap: &Snapshots) -> Vec<(String, f64)> {
    let d = snap.features.len();
    let model = &final_fit.chosen().model;
    let mut importance = vec![0.0; d];
    let mut contrib = vec![0.0; d];
    for &i in final_fit.val_rows.iter().take(IMPORTANCE_ROWS) {
        model.score_explained(&final_fit.scaled[i * d..(i + 1) * d], &mut contrib);
        for j in 0..d {
            importance[j] += contrib[j].abs();
        }
    }
    let total: f64 = importance.iter().sum();
    let mut out: Vec<(String, f64)> = snap
        .features
        .features
        .iter()
        .zip(&importance)
        .map(|(f, v)| {
            let share = if total > 0.0 { v / total } else { 0.0 };
            (f.name().to_string(), share)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

pub(crate) fn quality_warnings(m: &BinaryMetrics, warnings: &mut Vec<String>) {
    if m.roc_auc.is_nan() {
        warnings.push("the evaluation set holds a single class: ROC-AUC is undefined".into());
    } else if m.roc_auc < WEAK_ROC_AUC {
        warnings.push(format!(
            "churn ROC-AUC is only {:.3} on the evaluation set: the model barely ranks users",
            m.roc_auc
        ));
    }
}

/// Says when k-means could not start from the previous bundle because the features changed,
/// and when this snapshot drifted from the previous bundle's training population.
pub(crate) fn tier_warnings(
    report: &TierFitReport,
    compared: Option<&Compared>,
    warnings: &mut Vec<String>,
) {
    if report.init.contains("feature set changed") {
        warnings.push(format!("tiers: {}; expect tier changes", report.init));
    }
    for change in &report.identity_changes {
        warnings.push(format!("tier identity: {change}"));
    }
    if let Some(d) = compared.and_then(|c| c.drift.as_ref()) {
        let (what, psi) = d.largest();
        if psi > PSI_RETRAIN {
            warnings.push(format!(
                "drift: the population moved since the previous bundle was trained (PSI of {what} = {psi:.3} > {PSI_RETRAIN})"
            ));
        }
    }
}

/// Everything the summary is made of.
pub(crate) struct Facts<'a> {
    pub input: &'a TrainInput<'a>,
    pub params: &'a ValidTrainParams,
    pub windows: &'a Windows,
    pub snap: &'a Snapshots,
    pub evaluation: &'a Evaluation,
    pub tiering: &'a Tiering,
    pub scorer: &'a Scorer,
    pub scores: &'a [Score],
    pub profiles: &'a Profiles,
    pub observed: &'a ObservedChurn,
    pub ari: Option<f64>,
    pub transitions: Option<report::Transitions>,
    pub compared: Option<Compared>,
    pub drift_reference: DriftReference,
    pub feature_importance: Vec<(String, f64)>,
    pub warnings: Vec<String>,
}

fn tier_entries(f: &Facts) -> Vec<TierEntry> {
    let d = f.snap.features.len();
    let n_known = f.tiering.users_now.len().max(1) as f64;
    let p = f.profiles;
    let unnamed = crate::features::CategoryNames::default();
    let names = f.input.table.category_names().unwrap_or(&unnamed);
    let mut categories = super::scoring::tier_categories(p, names).into_iter();
    f.scorer
        .tiers
        .tiers
        .iter()
        .enumerate()
        .map(|(c, t)| TierEntry {
            id: t.id.clone(),
            name_en: t.name_en.clone(),
            name_zh: t.name_zh.clone(),
            description: t.description.clone(),
            playbook: t.playbook.clone(),
            users: p.counts[c],
            share: p.counts[c] as f64 / n_known,
            churn_rate: Some(rate(f.observed.by_tier[c])).filter(|r| r.is_finite()),
            mean_churn_probability: p.prob_sums[c] / p.counts[c].max(1) as f64,
            profile: f
                .snap
                .features
                .features
                .iter()
                .enumerate()
                .map(|(j, feat)| (feat.name().to_string(), p.means[c * d + j]))
                .collect(),
            categories: categories.next().unwrap_or_default(),
        })
        .collect()
}

/// The manifest (without file checksums: sealing the bundle adds them).
pub(crate) fn manifest(f: &Facts) -> Manifest {
    let input = f.input;
    let cfg = f.params.config();
    let ev = f.evaluation;
    let scaler = &f.scorer.scaler;
    Manifest {
        format_version: crate::bundle::FORMAT_VERSION,
        version: input.version.clone(),
        created_at: input.created_at,
        previous_version: input.previous.map(|(b, _)| b.manifest.version.clone()),
        data: DataInfo {
            orphan_refunds: f
                .snap
                .aggs_now
                .iter()
                .map(|a| u64::from(a.orphan_refunds))
                .sum(),
            ..input.data.clone()
        },
        params: serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null),
        as_of: format_rfc3339(f.windows.as_of),
        as_of_ts: f.windows.as_of,
        horizon_days: cfg.horizon_days,
        churn_definition: cfg.churn_definition,
        features: f
            .snap
            .features
            .features
            .iter()
            .enumerate()
            .map(|(j, feat)| FeatureSpec {
                name: feat.name().into(),
                transform: feat.transform(),
                mean: scaler.mean[j],
                std: scaler.std[j],
            })
            .collect(),
        features_left_out: f
            .snap
            .left_out
            .iter()
            .map(|(feat, why)| LeftOut {
                name: feat.name().into(),
                reason: (*why).into(),
            })
            .collect(),
        tiers: tier_entries(f),
        metrics: Metrics {
            chosen_model: f.scorer.churn.name().into(),
            evaluation: ev.description.clone(),
            models: ev.models.clone(),
            calibration: metrics::calibration_table(
                &ev.probabilities,
                &ev.labels,
                CALIBRATION_BINS,
            ),
            k: f.tiering.report.k,
            k_scores: f.tiering.report.k_scores.clone(),
            inertia: f.tiering.model.inertia,
            tier_ari: f.ari,
            tier_changes: f.transitions.as_ref().map(|t| TierChanges {
                compared: t.compared,
                changed: t.changed,
            }),
            k_stability: f.tiering.report.k_stability.clone(),
            k_reason: f.tiering.report.k_reason.clone(),
            tier_init: f.tiering.report.init.clone(),
            stability: f.compared.as_ref().map(|c| c.stability.clone()),
            drift: f.compared.as_ref().and_then(|c| c.drift.clone()),
        },
        warnings: f.warnings.clone(),
        files: BTreeMap::new(),
        drift_reference: Some(f.drift_reference.clone()),
        kinds: cfg.events.clone(),
    }
}

/// What only the report shows; the rest of the page comes from the manifest.
pub(crate) fn report_extras(f: Facts) -> ReportExtras {
    let users_now = &f.tiering.users_now;
    let risk_levels: Vec<(RiskLevel, u64)> = RiskLevel::ALL
        .iter()
        .map(|&l| {
            let n = users_now
                .iter()
                .filter(|&&u| f.scores[u].risk_level == l)
                .count();
            (l, n as u64)
        })
        .collect();
    let group = |id: &str, zh: &str, v: Counts| report::GroupRate {
        group: format!("{id} {zh}"),
        users: v.0,
        churn_rate: rate(v),
    };
    ReportExtras {
        rocs: f.evaluation.rocs.clone(),
        churn_by_segment: (f.observed.by_segment.iter())
            .map(|(s, &v)| group(s.id(), s.name_zh(), v))
            .collect(),
        churn_by_lifecycle: (f.observed.by_stage.iter())
            .map(|(s, &v)| group(s.id(), s.name_zh(), v))
            .collect(),
        feature_importance: f.feature_importance,
        risk: f.scorer.risk,
        risk_levels,
        transitions: f.transitions,
        backtest: None,
    }
}
