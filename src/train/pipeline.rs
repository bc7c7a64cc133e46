//! The training pipeline, pure: an events table in, a fitted [`Scorer`], manifest, report
//! extras and scored snapshot out. Writing the bundle is the caller's job (see
//! [`super::write_bundle`]; [`super::run`] does the whole job).
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
//!
//! [`fit`] runs the named stages of `super::stages` in order: windows and snapshots, labels,
//! evaluation, final fit, tiers, scoring, profiles, summary (manifest and report data).

use super::config::ValidTrainParams;
use super::report::ReportExtras;
use super::source::TrainData;
use super::stages::{candidates, evaluate, purchases, scoring, stability, summary, tiers, windows};
use crate::bundle::manifest::DataInfo;
use crate::bundle::manifest::Manifest;
use crate::bundle::{Bundle, Snapshot};
use crate::features::hash::fnv1a64;
use crate::features::Timestamp;
use crate::io::aggregates::AggregatesError;
use crate::model::churn::ChurnError;
use crate::model::scorer::{Score, Scorer};
use crate::model::tiers::TierError;
use std::time::Instant;

/// Why training fails: one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the data has no events")]
    NoEvents,
    #[error(
        "history too short for a {horizon}-day horizon: the data spans {span_days:.1} days, training needs more than {horizon} (a snapshot plus its label window)"
    )]
    HistoryTooShort { horizon: u32, span_days: f64 },
    #[error(
        "--as-of {as_of} is before the first event ({first}): there is no history to train on"
    )]
    AsOfBeforeData { as_of: String, first: String },
    #[error("no user is known at the training snapshot {0}")]
    NoUsers(String),
    #[error("cannot fit a churn model: the label window holds only one class ({rows} users); try a longer history, a different --horizon-days or --as-of")]
    OneClass { rows: usize },
    #[error("cannot fit a churn model")]
    Churn(#[source] ChurnError),
    #[error(transparent)]
    Tiers(#[from] TierError),
    #[error("the aggregates table")]
    Aggregates(#[source] Box<AggregatesError>),
}

impl From<AggregatesError> for TrainError {
    fn from(e: AggregatesError) -> Self {
        TrainError::Aggregates(Box::new(e))
    }
}

impl From<ChurnError> for TrainError {
    fn from(e: ChurnError) -> Self {
        match e {
            ChurnError::SingleClass(rows) => TrainError::OneClass { rows },
            e => TrainError::Churn(e),
        }
    }
}

/// What the pipeline needs besides the events.
pub struct TrainInput<'a> {
    /// Raw events ([`crate::features::EventTable`]) or an aggregates table
    /// ([`super::source::AggregatesSource`]).
    pub table: &'a dyn TrainData,
    /// Ground-truth personas per user index, when the data has them (for the ARI only).
    pub personas: Option<&'a [Option<String>]>,
    pub data: DataInfo,
    /// Score time; `None` = just after the last event.
    pub as_of: Option<Timestamp>,
    pub config: &'a ValidTrainParams,
    /// The bundle that is current, with its state, for stable tier ids and the transition matrix.
    pub previous: Option<(&'a Bundle, &'a Snapshot)>,
    /// Keep the evaluation sets (features, labels, probabilities) in the result, for comparing
    /// other tools on identical rows (`tiering train --export-eval`).
    pub keep_eval_sets: bool,
    /// Version id and creation time (Unix seconds) to stamp on the result.
    pub version: String,
    pub created_at: Timestamp,
}

pub struct Trained {
    pub scorer: Scorer,
    pub manifest: Manifest,
    /// What the report shows beyond the manifest.
    pub report: ReportExtras,
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

/// The key for order-independent sampling and splits: 64-bit FNV-1a of the user id.
pub fn user_key(id: &str) -> u64 {
    fnv1a64(id.as_bytes())
}

/// Lap times of the named stages, in order.
struct Laps {
    clock: Instant,
    timings: Vec<(String, f64)>,
}

impl Laps {
    fn lap(&mut self, name: &str) {
        self.timings
            .push((name.to_string(), self.clock.elapsed().as_secs_f64()));
        self.clock = Instant::now();
    }
}

/// The previous bundle's backtest up to `as_of`; `None` (logged) when nothing has happened
/// since its as-of or the data cannot give it (an aggregates table holds training's snapshots
/// only).
fn backtest_previous(
    previous: &Bundle,
    table: &dyn TrainData,
    as_of: Timestamp,
) -> Option<super::backtest::Backtest> {
    match super::backtest::backtest(previous, table, Some(as_of)) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::info!(error = %e, "no backtest of the previous bundle");
            None
        }
    }
}

/// Runs the pipeline. `progress` is told the name of each stage as it starts.
pub fn fit(input: TrainInput, progress: &mut dyn FnMut(&str)) -> Result<Trained, TrainError> {
    let params = input.config;
    let table = input.table;
    let mut laps = Laps {
        clock: Instant::now(),
        timings: Vec::new(),
    };
    let mut warnings = Vec::new();

    let w = windows::windows(table, input.as_of, params.horizon_days, &mut warnings)?;
    progress("building point-in-time features");
    let mut snap = windows::snapshots(table, &w)?;
    laps.lap("features");
    progress("fitting the purchase models (BG/NBD per snapshot)");
    snap.purchases = purchases::fit_purchases(&w, &mut snap, params);
    laps.lap("purchase models");

    progress("labelling snapshots");
    let labelled_b = windows::label_snapshot(
        table,
        &snap.aggs_b,
        &snap,
        snap.purchases.b.as_ref(),
        w.snap_b,
        w.horizon,
        params.churn_definition,
    )?;
    laps.lap("labels");

    progress("fitting and evaluating churn models");
    let mut evaluation = evaluate::evaluate(
        table,
        &w,
        &snap,
        &labelled_b,
        params,
        input.keep_eval_sets,
        &mut warnings,
    )?;
    laps.lap("evaluation");

    progress("refitting the served model on the latest labelled snapshot");
    let final_fit = candidates::final_fit(&labelled_b, &snap, params, evaluation.chosen)?;
    laps.lap("final churn fit");

    progress("clustering tiers");
    let previous = input.previous.map(|(b, _)| b);
    let mut tiering = tiers::fit_tiers(&w, &snap, &final_fit.scaler, params, previous)?;
    laps.lap("tiers");

    progress("scoring all users");
    let (mut scorer, scores) = scoring::score_all(
        &w,
        &snap,
        &labelled_b,
        &final_fit,
        &tiering.model,
        params.config(),
        &tiering.users_now,
    );
    laps.lap("scoring");

    let profiles = scoring::profiles(&w, &snap, &tiering, &scores, &mut scorer);
    let observed = summary::observed_churn(&w, &snap, &labelled_b, &scorer);
    let ari = summary::tier_ari(input.personas, &tiering.users_now, &scores);
    let transitions = input
        .previous
        .map(|prev| summary::transitions(table, prev, &scorer, &scores));
    let compared = input.previous.map(|prev| {
        stability::compare(table, &w, &snap, &tiering.users_now, prev, &scorer, &scores)
    });
    let drift_reference =
        stability::reference(&scorer, &tiering.x_now, &tiering.users_now, &scores);
    summary::tier_warnings(&tiering.report, compared.as_ref(), &mut warnings);
    let feature_importance = summary::feature_importance(&final_fit, &snap);
    summary::quality_warnings(&evaluation.models[evaluation.chosen].metrics, &mut warnings);
    let facts = summary::Facts {
        input: &input,
        params,
        windows: &w,
        snap: &snap,
        evaluation: &evaluation,
        tiering: &tiering,
        scorer: &scorer,
        scores: &scores,
        profiles: &profiles,
        observed: &observed,
        ari,
        transitions,
        compared,
        drift_reference,
        feature_importance,
        warnings,
    };
    let manifest = summary::manifest(&facts);
    let mut report = summary::report_extras(facts);
    report.backtest = previous.and_then(|b| backtest_previous(b, table, w.as_of));
    laps.lap("report");

    let mut eval_sets = evaluation.eval_sets.take();
    if let Some(sets) = eval_sets.as_mut() {
        sets.tier = tiering.users_now.iter().map(|&u| scores[u].tier).collect();
        sets.tier_users = tiering.users_now.clone();
        sets.tier_x = std::mem::take(&mut tiering.x_now);
    }
    let snapshot = Snapshot {
        as_of: w.as_of,
        user_ids: table.user_ids().to_vec(),
        aggregates: snap.aggs_now,
    };
    Ok(Trained {
        scorer,
        manifest,
        report,
        snapshot,
        scores,
        timings: laps.timings,
        eval_sets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{EventTable, DAY};
    use crate::generate::{generate_table, GenerateParams};
    use crate::train::TrainConfig;

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
        // The purchase candidates on generated (engagement-rich) data too, for their tests.
        let mut cfg = TrainConfig::default();
        cfg.churn.purchase_candidates = crate::train::config::PurchaseCandidates::Always;
        let cfg = cfg.check().unwrap();
        let input = TrainInput {
            table: &table,
            personas: Some(&personas),
            data: DataInfo::default(),
            as_of: None,
            config: &cfg,
            previous: None,
            keep_eval_sets: true,
            version: "v1".into(),
            created_at: 1_767_225_600, // 2026-01-01T00:00:00Z
        };
        let t = fit(input, &mut |_| {}).unwrap();
        (table, t)
    }

    /// Issue 14: channels and interests are not model inputs. The same generated events with
    /// a `channel` column (every event on another channel) train the same model (model.json
    /// byte for byte) and score every user the same; only the scores' channel mix differs.
    #[test]
    fn a_channel_column_leaves_the_model_and_the_scores_unchanged() {
        let end = 1_780_000_000 - 1_780_000_000 % DAY;
        let params = GenerateParams::new(end)
            .users(2500)
            .days(120)
            .seed(9)
            .check()
            .unwrap();
        let (plain, _) = generate_table(&params);
        let mut with = plain.clone();
        with.columns.channel = true;
        with.channel = (0..with.len()).map(|i| [1u8, 2, 3, 6][i % 4]).collect();
        let cfg = TrainConfig::default().check().unwrap();
        let fit_on = |table: &EventTable| {
            let input = TrainInput {
                table,
                personas: None,
                data: DataInfo::default(),
                as_of: None,
                config: &cfg,
                previous: None,
                keep_eval_sets: false,
                version: "v1".into(),
                created_at: 1_767_225_600,
            };
            fit(input, &mut |_| {}).unwrap()
        };
        let (a, b) = (fit_on(&plain), fit_on(&with));
        assert_eq!(
            serde_json::to_string(&a.scorer).unwrap(),
            serde_json::to_string(&b.scorer).unwrap()
        );
        assert_eq!(a.scores.len(), b.scores.len());
        for (x, y) in a.scores.iter().zip(&b.scores) {
            assert_eq!(
                (x.tier, x.churn_probability, x.interests),
                (y.tier, y.churn_probability, y.interests)
            );
        }
        assert!(a.scores.iter().all(|s| s.channels.list().is_empty()));
        assert!(b.scores.iter().any(|s| !s.channels.list().is_empty()));
    }

    /// Issue 12: the purchase features (rhythm and BG/NBD) of a user, as the served scorer
    /// computes them from the bundle (its JSON read back), are those training used: the rows
    /// k-means saw, bit for bit, and the scores training wrote.
    #[test]
    fn the_purchase_features_agree_between_training_and_the_served_scorer() {
        use crate::features::Feature;
        use crate::model::btyd::Customer;
        let (_, t) = trained(3000, 4);
        let json = serde_json::to_string(&t.scorer).unwrap();
        let scorer: Scorer = serde_json::from_str(&json).unwrap();
        scorer.validate().unwrap();
        let p = scorer.purchases.expect("the bundle carries its BG/NBD");
        for f in Feature::PURCHASE {
            assert!(scorer.features.position(f).is_some(), "{f:?}");
        }
        let ev = t.eval_sets.as_ref().unwrap();
        let (d, as_of, aggs) = (
            scorer.features.len(),
            t.snapshot.as_of,
            &t.snapshot.aggregates,
        );
        let j = scorer.features.position(Feature::BgnbdPAlive).unwrap();
        let (mut raw, mut x) = (vec![0.0; d], vec![0.0; d]);
        let mut buyers = 0;
        for (i, &u) in ev.tier_users.iter().enumerate() {
            scorer.row(&aggs[u], as_of, &mut raw, &mut x);
            assert_eq!(&x[..], &ev.tier_x[i * d..(i + 1) * d], "user index {u}");
            if let Some(c) = Customer::of(&aggs[u], as_of) {
                assert_eq!(raw[j], p.bgnbd.p_alive(&c));
                buyers += 1;
            }
        }
        assert!(buyers > 100, "{buyers} buyers");
        for (u, a) in aggs.iter().enumerate() {
            let served = scorer.score(a, as_of).churn_probability;
            assert!((served - t.scores[u].churn_probability).abs() < 1e-12);
        }
    }

    #[test]
    fn churn_errors_say_which_cause_it_was() {
        let one = TrainError::from(ChurnError::SingleClass(12));
        assert!(matches!(one, TrainError::OneClass { rows: 12 }));
        assert!(one.to_string().contains("only one class"), "{one}");
        let param = TrainError::from(ChurnError::Trees(0));
        assert!(matches!(param, TrainError::Churn(ChurnError::Trees(0))));
        assert!(!param.to_string().contains("one class"), "{param}");
        let source = std::error::Error::source(&param).map(|e| e.to_string());
        assert!(source.is_some_and(|s| s.contains("trees must be in 1..=5000")));
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
