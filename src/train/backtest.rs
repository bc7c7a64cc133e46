//! Backtest: a bundle's predictions scored against what happened since its as-of time.
//!
//! The bundle's scorer scores every user known at its as-of time `T` from the events before `T`
//! (what the bundle predicted; the same figures as its `scores.parquet` for the users it saw),
//! and the events of `[T, T + H)` (H = its churn horizon; cut at `until` and at the end of the
//! data) say who churned by its own churn definition. Figures:
//!
//! - ROC-AUC and Brier score of its churn probability;
//! - calibration by decile: users ordered by predicted probability, highest first, in ten groups
//!   of equal size (the first `n mod 10` one user larger); per group the mean prediction and
//!   the observed churn rate;
//! - the top decile by churn probability (`round(n / 10)` users, at least 1): how many churned;
//! - value: per user, spend before = net spend in `[T − H, T)`, realised = net spend in the
//!   window. Value lost = the spend before of the users who churned; value retained = the spend
//!   before of those who stayed (and its share of all spend before); the share of the value lost
//!   held by the top decile by value at risk (the value-ranking measure).
//!
//! When the window is not fully covered (`days_covered < horizon_days`) a user is counted as
//! churned on the days seen so far: the labels, hence every figure, are provisional.
//! The figures are JSON (serde) and HTML (`report::backtest_html`); the training report shows
//! them when a previous bundle exists, `tiering backtest` on demand.

use super::source::TrainData;
use crate::bundle::Bundle;
use crate::features::time::format_rfc3339;
use crate::features::{known_at, Timestamp, DAY};
use crate::io::aggregates::AggregatesError;
use crate::model::metrics;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("the data has no events")]
    NoEvents,
    #[error("nothing has happened since the bundle's as-of {as_of}: the data ends at {data_end}")]
    NothingSince { as_of: String, data_end: String },
    #[error("no user of the data was known at the bundle's as-of {0}")]
    NoUsers(String),
    #[error("the data's aggregates around the bundle's as-of")]
    Aggregates(#[source] Box<AggregatesError>),
}

impl From<AggregatesError> for BacktestError {
    fn from(e: AggregatesError) -> Self {
        BacktestError::Aggregates(Box::new(e))
    }
}

/// One calibration group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decile {
    /// 1 = the highest predicted churn probabilities.
    pub decile: u32,
    pub users: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// The backtest of one bundle (see the module docs for each figure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backtest {
    pub version: String,
    pub as_of: String,
    pub horizon_days: u32,
    /// Days of the label window the data covers (= `horizon_days` when complete).
    pub days_covered: f64,
    pub users: u64,
    pub churned: u64,
    pub roc_auc: f64,
    pub brier: f64,
    pub deciles: Vec<Decile>,
    pub top_decile_users: u64,
    pub top_decile_churned: u64,
    pub spend_before: f64,
    pub value_lost: f64,
    pub value_retained: f64,
    pub value_retained_share: f64,
    pub top_decile_value_at_risk_lost_share: f64,
    pub realised_spend: f64,
}

/// Scores `bundle`'s predictions against `data`, using events before `until` only (the new
/// as-of time in training; `None` = all of them).
pub fn backtest(
    bundle: &Bundle,
    data: &dyn TrainData,
    until: Option<Timestamp>,
) -> Result<Backtest, BacktestError> {
    let m = &bundle.manifest;
    let t0 = m.as_of_ts;
    let h = i64::from(m.horizon_days) * DAY;
    let (_, last) = data.span().ok_or(BacktestError::NoEvents)?;
    let end = (t0 + h).min(last + 1).min(until.unwrap_or(i64::MAX));
    if end <= t0 {
        return Err(BacktestError::NothingSince {
            as_of: format_rfc3339(t0),
            data_end: format_rfc3339(last),
        });
    }
    let mut snaps = data.aggregates(&[t0 - h, t0, end])?;
    let (after, at, before) = (
        snaps.pop().unwrap_or_default(),
        snaps.pop().unwrap_or_default(),
        snaps.pop().unwrap_or_default(),
    );
    let active = data.active_in_window(t0, end, m.churn_definition)?;
    let users: Vec<usize> = (0..at.len()).filter(|&u| known_at(&at[u], t0)).collect();
    if users.is_empty() {
        return Err(BacktestError::NoUsers(format_rfc3339(t0)));
    }
    let scores: Vec<_> = users
        .par_iter()
        .map(|&u| bundle.scorer.score(&at[u], t0))
        .collect();
    let rows: Vec<Row> = users
        .iter()
        .zip(&scores)
        .map(|(&u, s)| {
            let spend =
                |v: &[crate::features::UserAggregate]| v.get(u).map_or(0.0, |a| a.net_spend());
            Row {
                p: s.churn_probability,
                value_at_risk: s.value_at_risk,
                churned: !active.get(u).copied().unwrap_or(false),
                spend_before: spend(&at) - spend(&before),
                realised: spend(&after) - spend(&at),
            }
        })
        .collect();
    let mut b = figures(&rows);
    b.version = m.version.clone();
    b.as_of = format_rfc3339(t0);
    b.horizon_days = m.horizon_days;
    b.days_covered = (end - t0) as f64 / DAY as f64;
    Ok(b)
}

/// One scored user and what happened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub p: f64,
    pub value_at_risk: f64,
    pub churned: bool,
    pub spend_before: f64,
    pub realised: f64,
}

/// Indices of `rows` by `key` descending, ties by index.
fn ranked(rows: &[Row], key: impl Fn(&Row) -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.sort_by(|&i, &j| key(&rows[j]).total_cmp(&key(&rows[i])).then(i.cmp(&j)));
    idx
}

/// The figures of scored rows (the identity fields left empty).
pub(crate) fn figures(rows: &[Row]) -> Backtest {
    let n = rows.len();
    let p: Vec<f64> = rows.iter().map(|r| r.p).collect();
    let y: Vec<bool> = rows.iter().map(|r| r.churned).collect();
    let by_p = ranked(rows, |r| r.p);
    let mut deciles = Vec::with_capacity(10);
    let mut start = 0;
    for d in 0..10 {
        let size = n / 10 + usize::from(d < n % 10);
        let group = &by_p[start..start + size];
        start += size;
        if group.is_empty() {
            continue;
        }
        let k = group.len() as f64;
        deciles.push(Decile {
            decile: d as u32 + 1,
            users: group.len() as u64,
            mean_predicted: group.iter().map(|&i| rows[i].p).sum::<f64>() / k,
            observed_rate: group.iter().filter(|&&i| rows[i].churned).count() as f64 / k,
        });
    }
    let top = ((n as f64 * 0.1).round() as usize).clamp(1, n.max(1));
    let top_churned = by_p.iter().take(top).filter(|&&i| rows[i].churned).count();
    let spend_before: f64 = rows.iter().map(|r| r.spend_before).sum();
    let lost = |r: &Row| if r.churned { r.spend_before } else { 0.0 };
    let value_lost: f64 = rows.iter().map(lost).sum();
    let top_lost: f64 = ranked(rows, |r| r.value_at_risk)
        .iter()
        .take(top)
        .map(|&i| lost(&rows[i]))
        .sum();
    let share = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Backtest {
        version: String::new(),
        as_of: String::new(),
        horizon_days: 0,
        days_covered: 0.0,
        users: n as u64,
        churned: y.iter().filter(|&&c| c).count() as u64,
        roc_auc: metrics::roc_auc(&p, &y),
        brier: metrics::brier(&p, &y),
        deciles,
        top_decile_users: top.min(n) as u64,
        top_decile_churned: top_churned as u64,
        spend_before,
        value_lost,
        value_retained: spend_before - value_lost,
        value_retained_share: share(spend_before - value_lost, spend_before),
        top_decile_value_at_risk_lost_share: share(top_lost, value_lost),
        realised_spend: rows.iter().map(|r| r.realised).sum(),
    }
}

impl Backtest {
    /// Whether the whole label window was seen.
    pub fn complete(&self) -> bool {
        self.days_covered >= f64::from(self.horizon_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: f64, var: f64, churned: bool, before: f64, realised: f64) -> Row {
        Row {
            p,
            value_at_risk: var,
            churned,
            spend_before: before,
            realised,
        }
    }

    /// Twelve users by hand: deciles of sizes 2, 2, 1 × 8 (highest first), the top decile (1
    /// user: round(1.2)) churned, value lost 10 + 40 + 5 = 55 of spend before 100.
    #[test]
    fn the_backtest_figures_of_a_small_set_are_the_hand_computed_ones() {
        let rows = vec![
            row(0.95, 1.0, true, 10.0, 0.0),
            row(0.90, 50.0, false, 20.0, 30.0),
            row(0.80, 2.0, true, 40.0, 0.0),
            row(0.70, 3.0, false, 5.0, 7.0),
            row(0.60, 60.0, true, 5.0, 0.0),
            row(0.50, 0.0, false, 0.0, 1.0),
            row(0.40, 0.0, false, 0.0, 0.0),
            row(0.30, 0.0, false, 10.0, 2.0),
            row(0.20, 0.0, false, 0.0, 0.0),
            row(0.10, 0.0, false, 10.0, 0.0),
            row(0.05, 0.0, false, 0.0, 0.0),
            row(0.01, 0.0, false, 0.0, 0.0),
        ];
        let b = figures(&rows);
        assert_eq!((b.users, b.churned), (12, 3));
        let sizes: Vec<u64> = b.deciles.iter().map(|d| d.users).collect();
        assert_eq!(sizes, vec![2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!((b.deciles[0].mean_predicted - 0.925).abs() < 1e-12);
        assert_eq!(b.deciles[0].observed_rate, 0.5);
        assert_eq!(b.deciles[1].observed_rate, 0.5);
        assert_eq!(b.deciles[2].observed_rate, 1.0);
        assert_eq!((b.top_decile_users, b.top_decile_churned), (1, 1));
        assert!((b.spend_before - 100.0).abs() < 1e-12);
        assert!((b.value_lost - 55.0).abs() < 1e-12);
        assert!((b.value_retained - 45.0).abs() < 1e-12);
        assert!((b.value_retained_share - 0.45).abs() < 1e-12);
        // Top decile by value at risk: the 0.60 user (60.0), who churned with 5.0 of 55 lost.
        assert!((b.top_decile_value_at_risk_lost_share - 5.0 / 55.0).abs() < 1e-12);
        assert!((b.realised_spend - 40.0).abs() < 1e-12);
        // AUC by hand: churners at 0.95, 0.80, 0.60; 9 stayers. Pairs where a stayer scores
        // higher: 0.90 > 0.80, 0.90 > 0.60, 0.70 > 0.60 → 3 of 27 misordered.
        assert!((b.roc_auc - 24.0 / 27.0).abs() < 1e-12, "{}", b.roc_auc);
        let brier: f64 = rows
            .iter()
            .map(|r| (r.p - f64::from(u8::from(r.churned))).powi(2))
            .sum::<f64>()
            / 12.0;
        assert!((b.brier - brier).abs() < 1e-12);
        let html = super::super::report::backtest_html(&b);
        assert!(html.contains("Calibration by decile") && html.contains("1 of 1"));
    }

    /// A bundle trained at an earlier as-of on generated data, backtested on the data after
    /// it: the users, labels and AUC are those computed by hand from the raw events and the
    /// bundle's own scores of that as-of.
    #[test]
    fn a_bundle_trained_earlier_is_backtested_on_what_happened_after_it() {
        use crate::bundle::manifest::DataInfo;
        use crate::features::EventKind;
        use crate::generate::{generate_table, GenerateParams};
        use crate::train::{fit, TrainConfig, TrainInput};
        let end = 1_780_000_000 - 1_780_000_000 % DAY;
        let params = GenerateParams::new(end)
            .users(2500)
            .days(200)
            .seed(11)
            .check()
            .unwrap();
        let (table, _) = generate_table(&params);
        let t0 = end - 60 * DAY;
        let cfg = TrainConfig::default().check().unwrap();
        let trained = fit(
            TrainInput {
                table: &table,
                personas: None,
                data: DataInfo::default(),
                as_of: Some(t0),
                config: &cfg,
                previous: None,
                keep_eval_sets: false,
                version: "early".into(),
                created_at: 1_767_225_600,
            },
            &mut |_| {},
        )
        .unwrap();
        let h = i64::from(trained.manifest.horizon_days) * DAY;
        assert!(t0 + h < end, "the whole window is in the data");
        let bundle = Bundle {
            dir: std::path::PathBuf::new(),
            manifest: trained.manifest.clone(),
            scorer: trained.scorer.clone(),
        };
        let b = backtest(&bundle, &table, None).unwrap();
        assert!(b.complete() && b.version == "early");

        // By hand: users with an event (or registered) before t0; churned = no order in
        // [t0, t0 + h).
        let n = table.user_ids.len();
        let mut known: Vec<bool> = (0..n)
            .map(|u| table.registered_at[u].is_some_and(|r| r < t0))
            .collect();
        let mut ordered = vec![false; n];
        for i in 0..table.len() {
            let (u, ts) = (table.user[i] as usize, table.ts[i]);
            known[u] |= ts < t0;
            ordered[u] |= table.kind[i] == EventKind::Order && ts >= t0 && ts < t0 + h;
        }
        let users: Vec<usize> = (0..n).filter(|&u| known[u]).collect();
        let p: Vec<f64> = users
            .iter()
            .map(|&u| trained.scores[u].churn_probability)
            .collect();
        let y: Vec<bool> = users.iter().map(|&u| !ordered[u]).collect();
        assert_eq!(b.users, users.len() as u64);
        assert_eq!(b.churned, y.iter().filter(|&&c| c).count() as u64);
        assert!((b.roc_auc - metrics::roc_auc(&p, &y)).abs() < 1e-12);
        assert!(b.roc_auc > 0.7, "{}", b.roc_auc);
        assert_eq!(b.deciles.len(), 10);
        assert!(b.deciles[0].observed_rate > b.deciles[9].observed_rate);
        // Cut at t0 + 10 days: provisional, more users counted as churned.
        let cut = backtest(&bundle, &table, Some(t0 + 10 * DAY)).unwrap();
        assert!(!cut.complete() && (cut.days_covered - 10.0).abs() < 1e-9);
        assert!(cut.churned >= b.churned);
    }
}
