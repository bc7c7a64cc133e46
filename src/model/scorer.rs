//! The scorer: one user's aggregate and a time in, tier + calibrated churn probability + reasons
//! out. `tiering score` and the gRPC server both call this, so offline and online agree exactly.
//!
//! The hot path is allocation-free: feature rows and contributions live in fixed-size arrays on
//! the stack (there are at most `Feature::ALL.len()` features).

use super::btyd::{Customer, PurchaseFeatures, ValueModel};
use super::calibration::Platt;
use super::churn::{ChurnModel, BLOCK};
use super::tiers::TierModel;
use crate::features::{
    ChannelShares, Feature, FeatureSet, Interests, LifecycleStage, LifecycleThresholds, RfmSegment,
    RfmThresholds, Rooms, StandardScaler, Timestamp, UserAggregate,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

const MAX_FEATURES: usize = Feature::ALL.len();
/// Reasons reported per user.
pub(crate) const TOP_FACTORS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 3] = [RiskLevel::Low, RiskLevel::Medium, RiskLevel::High];

    pub fn id(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
        }
    }
}

/// Probability cut-offs for the risk levels (configured in `training/train.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
// `default`: a configuration section may set some keys only (training/train.toml).
#[serde(deny_unknown_fields, default)]
pub struct RiskThresholds {
    /// At or above: medium.
    pub medium: f64,
    /// At or above: high.
    pub high: f64,
}

impl Default for RiskThresholds {
    fn default() -> Self {
        RiskThresholds {
            medium: 0.4,
            high: 0.7,
        }
    }
}

impl RiskThresholds {
    pub(crate) fn is_valid(&self) -> bool {
        0.0 < self.medium && self.medium < self.high && self.high < 1.0
    }

    pub fn level(&self, p: f64) -> RiskLevel {
        if p >= self.high {
            RiskLevel::High
        } else if p >= self.medium {
            RiskLevel::Medium
        } else {
            RiskLevel::Low
        }
    }
}

/// One reason: a feature, how much it moved the churn log-odds, and the user's value.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Factor {
    /// Index into the scorer's `FeatureSet`.
    pub feature: u8,
    /// Contribution to the churn log-odds (positive raises risk).
    pub contribution: f32,
    /// The user's value in original units.
    pub value: f32,
}

/// Everything the product says about one user at one time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Index into the scorer's tier table.
    pub tier: u16,
    pub churn_probability: f64,
    pub risk_level: RiskLevel,
    /// Share of the scored population (at training's as-of) with a lower or equal probability, 0-100.
    pub risk_percentile: f64,
    pub rfm_segment: RfmSegment,
    pub lifecycle_stage: LifecycleStage,
    /// Largest contributions first; `n_factors` are valid.
    pub factors: [Factor; TOP_FACTORS],
    pub n_factors: u8,
    /// Discounted expected spend over the value horizon ([`crate::model::btyd`]); 0 for a
    /// non-buyer or without a value model.
    #[serde(default)]
    pub clv: f64,
    /// Expected orders over the value horizon.
    #[serde(default)]
    pub expected_orders: f64,
    /// BG/NBD's P(alive).
    #[serde(default)]
    pub p_alive: f64,
    /// `churn_probability × clv`: the expected value lost if the user churns.
    #[serde(default)]
    pub value_at_risk: f64,
    /// The user's top categories (issue 14): not a model output, carried so that answers and
    /// the at-risk filter read them with the score.
    pub interests: Interests,
    /// The user's channel mix (issue 14), likewise.
    pub channels: ChannelShares,
    /// The user's top live rooms (issue 14), likewise.
    #[serde(default)]
    pub rooms: Rooms,
}

impl Default for Score {
    fn default() -> Self {
        Score {
            tier: 0,
            churn_probability: 0.0,
            risk_level: RiskLevel::Low,
            risk_percentile: 0.0,
            rfm_segment: RfmSegment::NonBuyer,
            lifecycle_stage: LifecycleStage::New,
            factors: [Factor::default(); TOP_FACTORS],
            n_factors: 0,
            clv: 0.0,
            expected_orders: 0.0,
            p_alive: 0.0,
            value_at_risk: 0.0,
            interests: Interests::default(),
            channels: ChannelShares::default(),
            rooms: Rooms::default(),
        }
    }
}

impl Score {
    pub fn factors(&self) -> &[Factor] {
        &self.factors[..self.n_factors as usize]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error("inconsistent model: {0}")]
    Inconsistent(String),
}

/// The fitted scoring pipeline. Serialised into the bundle as `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scorer {
    pub features: FeatureSet,
    pub scaler: StandardScaler,
    pub tiers: TierModel,
    pub churn: ChurnModel,
    pub calibration: Platt,
    pub risk: RiskThresholds,
    /// Sorted churn probabilities at 1001 quantiles of the population scored at training's
    /// as-of: the reference for `risk_percentile`.
    pub risk_quantiles: Vec<f64>,
    /// `None` when the training data had no orders at all.
    pub rfm: Option<RfmThresholds>,
    pub lifecycle: LifecycleThresholds,
    /// BG/NBD + Gamma-Gamma for the value figures; `None` in bundles made before them or when
    /// the fit failed (the figures are then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueModel>,
    /// The BG/NBD behind the model-derived churn features; present exactly when the feature
    /// set holds one (bundles made before them have neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchases: Option<PurchaseFeatures>,
}

impl Scorer {
    /// A scorer from its fitted parts, with an empty quantile table: fill
    /// [`Scorer::risk_quantiles`] with [`quantiles`] of a scored population, as training does.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        features: FeatureSet,
        scaler: StandardScaler,
        tiers: TierModel,
        churn: ChurnModel,
        calibration: Platt,
        risk: RiskThresholds,
        rfm: Option<RfmThresholds>,
        lifecycle: LifecycleThresholds,
    ) -> Scorer {
        Scorer {
            features,
            scaler,
            tiers,
            churn,
            calibration,
            risk,
            risk_quantiles: Vec::new(),
            rfm,
            lifecycle,
            value: None,
            purchases: None,
        }
    }

    /// Checks every shape a tampered or mismatched bundle could get wrong, so that scoring
    /// cannot index out of bounds.
    pub fn validate(&self) -> Result<(), ScorerError> {
        let d = self.features.len();
        let bad = |m: String| Err(ScorerError::Inconsistent(m));
        if d == 0 || d > MAX_FEATURES {
            return bad(format!("{d} features"));
        }
        if self.scaler.mean.len() != d || self.scaler.std.len() != d {
            return bad("scaler does not match the feature set".into());
        }
        if self.scaler.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.scaler.mean.iter().any(|m| !m.is_finite())
        {
            return bad("scaler has non-finite or non-positive values".into());
        }
        self.tiers.validate(d).map_err(ScorerError::Inconsistent)?;
        if self.tiers.k() > usize::from(u16::MAX) {
            return bad("too many tiers".into());
        }
        self.churn.validate(d).map_err(ScorerError::Inconsistent)?;
        if !self.risk.is_valid() || !self.lifecycle.is_valid() {
            return bad("risk or lifecycle thresholds out of order".into());
        }
        if self.risk_quantiles.windows(2).any(|w| w[0] > w[1]) {
            return bad("risk quantiles are not sorted".into());
        }
        if let Some(v) = &self.value {
            v.check()
                .map_err(|e| ScorerError::Inconsistent(format!("value model: {e}")))?;
        }
        match (&self.purchases, self.features.has_model_derived()) {
            (Some(p), _) => p
                .check()
                .map_err(|e| ScorerError::Inconsistent(format!("purchase features: {e}")))?,
            (None, true) => return bad("BG/NBD features without their fitted BG/NBD".into()),
            (None, false) => {}
        }
        Ok(())
    }

    pub fn feature_names(&self) -> Vec<&'static str> {
        self.features.features.iter().map(|f| f.name()).collect()
    }

    /// Scaled feature row of a user as of `t` into `x` (and original units into `raw`).
    #[inline]
    pub fn row(&self, a: &UserAggregate, t: Timestamp, raw: &mut [f64], x: &mut [f64]) {
        self.features.raw_into(a, t, raw);
        if let Some(p) = &self.purchases {
            p.fill(&self.features, a, t, raw);
        }
        for ((xi, ri), f) in x.iter_mut().zip(raw.iter()).zip(&self.features.features) {
            *xi = f.transform().apply(*ri);
        }
        self.scaler.transform_in_place(x);
    }

    /// Calibrated probability from a scaled row.
    #[inline]
    pub fn probability(&self, x: &[f64]) -> f64 {
        self.calibration.probability(self.churn.score(x))
    }

    pub fn percentile(&self, p: f64) -> f64 {
        let q = &self.risk_quantiles;
        if q.is_empty() {
            return f64::NAN;
        }
        let below = q.partition_point(|&v| v <= p);
        100.0 * below as f64 / q.len() as f64
    }

    /// `buyer`: [`UserAggregate::is_buyer`] (a user whose every order was refunded is not one).
    fn segment_and_stage(&self, raw: &[f64], buyer: bool) -> (RfmSegment, LifecycleStage) {
        let get = |f: Feature| self.features.position(f).map_or(0.0, |j| raw[j]);
        let rfm = match &self.rfm {
            Some(th) => RfmSegment::classify(
                get(Feature::RecencyDays),
                get(Feature::Frequency),
                get(Feature::MonetaryTotal),
                buyer,
                th,
            ),
            None => RfmSegment::NonBuyer,
        };
        let stage = LifecycleStage::classify(
            get(Feature::TenureDays),
            get(Feature::DaysSinceActivity),
            &self.lifecycle,
        );
        (rfm, stage)
    }

    /// Tier, RFM segment and lifecycle stage of one user as of `t`: what [`Scorer::score`]
    /// gives without running the churn model.
    #[inline]
    pub(crate) fn placement(
        &self,
        a: &UserAggregate,
        t: Timestamp,
    ) -> (u16, RfmSegment, LifecycleStage) {
        let d = self.features.len();
        let mut raw = [0.0; MAX_FEATURES];
        let mut x = [0.0; MAX_FEATURES];
        self.row(a, t, &mut raw[..d], &mut x[..d]);
        let (rfm, stage) = self.segment_and_stage(&raw[..d], a.is_buyer());
        (self.tiers.assign(&x[..d]) as u16, rfm, stage)
    }

    /// Recomputes `risk_percentile` of scores made before the quantile table was set.
    pub(crate) fn refresh_percentiles(&self, scores: &mut [Score]) {
        scores
            .par_iter_mut()
            .for_each(|s| s.risk_percentile = self.percentile(s.churn_probability));
    }

    /// Scores one user as of `t`. Allocation-free.
    #[inline]
    pub fn score(&self, a: &UserAggregate, t: Timestamp) -> Score {
        let d = self.features.len();
        let mut raw = [0.0; MAX_FEATURES];
        let mut x = [0.0; MAX_FEATURES];
        let mut contrib = [0.0; MAX_FEATURES];
        self.row(a, t, &mut raw[..d], &mut x[..d]);
        let raw_score = self.churn.score_explained(&x[..d], &mut contrib[..d]);
        let mut s = self.finish(&raw[..d], &x[..d], &contrib[..d], raw_score, a);
        self.add_value(&mut s, a, t);
        s
    }

    /// Fills the value figures of a score (see [`crate::model::btyd`] for the formulas).
    #[inline]
    fn add_value(&self, s: &mut Score, a: &UserAggregate, t: Timestamp) {
        let Some(model) = &self.value else {
            return;
        };
        let v = model.value(Customer::of(a, t).as_ref());
        s.clv = v.clv;
        s.expected_orders = v.expected_orders;
        s.p_alive = v.p_alive;
        s.value_at_risk = s.churn_probability * v.clv;
    }

    /// Everything after the churn model's raw score: tier, calibration, rules, top factors.
    #[inline]
    fn finish(
        &self,
        raw: &[f64],
        x: &[f64],
        contrib: &[f64],
        raw_score: f64,
        a: &UserAggregate,
    ) -> Score {
        let tier = self.tiers.assign(x) as u16;
        let p = self.calibration.probability(raw_score);
        let (rfm_segment, lifecycle_stage) = self.segment_and_stage(raw, a.is_buyer());

        // Top factors: largest contributions toward churn, by insertion into a 3-slot list.
        let mut factors = [Factor::default(); TOP_FACTORS];
        let mut n = 0usize;
        for (j, &c) in contrib.iter().enumerate() {
            let mut pos = n;
            while pos > 0 && f64::from(factors[pos - 1].contribution) < c {
                pos -= 1;
            }
            if pos < TOP_FACTORS {
                let end = n.min(TOP_FACTORS - 1);
                factors.copy_within(pos..end, pos + 1);
                factors[pos] = Factor {
                    feature: j as u8,
                    contribution: c as f32,
                    value: raw[j] as f32,
                };
                n = (n + 1).min(TOP_FACTORS);
            }
        }
        Score {
            tier,
            churn_probability: p,
            risk_level: self.risk.level(p),
            risk_percentile: self.percentile(p),
            rfm_segment,
            lifecycle_stage,
            factors,
            n_factors: n as u8,
            interests: a.interests,
            channels: ChannelShares::from_list(&a.channel_shares()),
            rooms: a.rooms,
            ..Score::default()
        }
    }

    /// Scores many users as of `t` on all cores, [`BLOCK`] users at a time through the churn
    /// model (same results as [`Scorer::score`] user by user).
    pub fn score_batch(&self, users: &[UserAggregate], t: Timestamp, out: &mut [Score]) {
        users
            .par_chunks(4096)
            .zip(out.par_chunks_mut(4096))
            .for_each(|(us, os)| self.score_many(us, t, os));
    }

    /// Scores `users` into `out` on the calling thread, [`BLOCK`] users at a time through the
    /// forest (the server's batch lookups: they run on a request's own task, not the rayon
    /// pool). Results equal [`Scorer::score`] user by user.
    pub fn score_many(&self, users: &[UserAggregate], t: Timestamp, out: &mut [Score]) {
        let d = self.features.len();
        let mut raw = [0.0; BLOCK * MAX_FEATURES];
        let mut x = [0.0; BLOCK * MAX_FEATURES];
        let mut contrib = [0.0; BLOCK * MAX_FEATURES];
        let mut raw_scores = [0.0; BLOCK];
        for (ub, ob) in users.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let n = ub.len();
            for (r, a) in ub.iter().enumerate() {
                self.row(
                    a,
                    t,
                    &mut raw[r * d..(r + 1) * d],
                    &mut x[r * d..(r + 1) * d],
                );
            }
            self.churn.score_explained_block(
                &x[..n * d],
                d,
                &mut contrib[..n * d],
                &mut raw_scores[..n],
            );
            for (r, (o, a)) in ob.iter_mut().zip(ub).enumerate() {
                let (lo, hi) = (r * d, (r + 1) * d);
                *o = self.finish(&raw[lo..hi], &x[lo..hi], &contrib[lo..hi], raw_scores[r], a);
                self.add_value(o, a, t);
            }
        }
    }

    /// "feature=+0.42 (value)" joined by "; " — the reasons as one text column.
    pub(crate) fn format_factors(&self, s: &Score) -> String {
        let mut out = String::new();
        for (i, f) in s.factors().iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let name = self
                .features
                .features
                .get(usize::from(f.feature))
                .map_or("?", |f| f.name());
            out.push_str(name);
            out.push('=');
            push_fixed(&mut out, f.contribution, 3, true);
            out.push_str(" (");
            push_fixed(&mut out, f.value, 4, false);
            out.push(')');
        }
        out
    }
}

/// Appends `v` with `decimals` digits after the point (with a `+` on non-negative values when
/// `plus`), exactly as `{:.N}` / `{:+.N}` writes it, without the general float formatter (whose
/// exact mode falls back to bignum arithmetic): an f32 times 10^decimals (decimals ≤ 4) is exact
/// in an f64, and ties go to even as std's do.
pub(crate) fn push_fixed(out: &mut String, v: f32, decimals: u32, plus: bool) {
    use std::fmt::Write;
    let scale = 10u64.pow(decimals.min(4));
    let m = (f64::from(v).abs() * scale as f64).round_ties_even();
    // NaN, infinities and values past 2^53 (none fit an f32 times 10^4 exactly there): std.
    if decimals > 4 || m.is_nan() || m >= 9.0e15 {
        let p = decimals as usize;
        let _ = if plus {
            write!(out, "{v:+.p$}")
        } else {
            write!(out, "{v:.p$}")
        };
        return;
    }
    let m = m as u64;
    if v.is_sign_negative() {
        out.push('-');
    } else if plus {
        out.push('+');
    }
    let _ = write!(out, "{}", m / scale);
    if decimals > 0 {
        let _ = write!(out, ".{:0w$}", m % scale, w = decimals as usize);
    }
}

/// The 1001-point quantile table of a set of probabilities.
pub fn quantiles(probs: &[f64]) -> Vec<f64> {
    if probs.is_empty() {
        return Vec::new();
    }
    let mut v = probs.to_vec();
    v.sort_by(f64::total_cmp);
    (0..=1000).map(|i| v[(i * (v.len() - 1)) / 1000]).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn fixed_point_text_is_what_std_writes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            -2.5,
            0.125,
            0.0625,
            0.03125,
            -0.00015,
            0.00005,
            1e-9,
            -1e-9,
            9.99995,
            123456.78,
            -98765.43,
            3.0e7,
            1.0e12,
            3.4e38,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::EPSILON,
        ];
        for _ in 0..200_000 {
            let v = match rng.gen_range(0..3) {
                0 => f32::from_bits(rng.gen()),
                1 => rng.gen_range(-50.0f32..50.0),
                // Exact ties at 3 and 4 decimals: k / 2^n.
                _ => {
                    rng.gen_range(-100_000i32..100_000) as f32 / (1 << rng.gen_range(0..12)) as f32
                }
            };
            values.push(v);
        }
        for v in values {
            for d in 0..=5u32 {
                let p = d as usize;
                let mut s = String::new();
                push_fixed(&mut s, v, d, false);
                assert_eq!(s, format!("{v:.p$}"), "{v:e} .{d}");
                s.clear();
                push_fixed(&mut s, v, d, true);
                assert_eq!(s, format!("{v:+.p$}"), "{v:e} +.{d}");
            }
        }
    }
    use crate::features::{Event, EventKind, DAY};
    use crate::model::churn::LinearModel;
    use crate::model::identity::TierIdentity;

    pub(crate) fn toy_scorer() -> Scorer {
        let features = FeatureSet::all();
        let d = features.len();
        let ident = |id: &str| TierIdentity {
            id: id.into(),
            name_en: id.into(),
            name_zh: id.into(),
            description: String::new(),
            playbook: vec![],
        };
        let mut centroids = vec![0.0; 2 * d];
        centroids[0] = -1.0; // tier 0: recent
        centroids[d] = 1.0; // tier 1: not recent
        let mut weights = vec![0.0; d];
        weights[0] = 2.0; // recency raises risk
        Scorer {
            features,
            scaler: StandardScaler {
                mean: vec![1.0; d],
                std: vec![1.0; d],
            },
            tiers: TierModel {
                centroids,
                dims: d,
                tiers: vec![ident("recent"), ident("lapsed")],
                inertia: 0.0,
            },
            churn: ChurnModel::Logistic(LinearModel { weights, bias: 0.0 }),
            calibration: Platt::default(),
            risk: RiskThresholds::default(),
            risk_quantiles: quantiles(&[0.1, 0.2, 0.5, 0.9]),
            rfm: Some(RfmThresholds {
                recency_days: 10.0,
                frequency: 1.0,
                monetary: 50.0,
            }),
            lifecycle: LifecycleThresholds::default(),
            value: None,
            purchases: None,
        }
    }

    #[test]
    fn a_quiet_user_drifts_toward_risk_as_time_passes() {
        let s = toy_scorer();
        s.validate().unwrap();
        let mut a = UserAggregate::default();
        let t0 = 1_700_000_000;
        a.apply(&Event {
            ts: t0,
            kind: EventKind::Order,
            amount: 30.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        });
        let soon = s.score(&a, t0 + DAY);
        let later = s.score(&a, t0 + 60 * DAY);
        assert!(later.churn_probability > soon.churn_probability);
        assert_eq!(s.tiers.tiers[usize::from(later.tier)].id, "lapsed");
        assert_eq!(later.factors()[0].feature, 0, "recency is the top reason");
        assert!(later.factors()[0].contribution > 0.0);
        assert_eq!(later.lifecycle_stage, LifecycleStage::AboutToChurn);
    }

    #[test]
    fn factors_are_sorted_and_batch_matches_single() {
        let s = toy_scorer();
        let users: Vec<UserAggregate> = (0..100)
            .map(|i| {
                let mut a = UserAggregate::default();
                a.apply(&Event {
                    ts: i * DAY,
                    kind: EventKind::Order,
                    amount: 10.0,
                    watch_seconds: 0,
                    room: 0,
                    category: 0,
                    order: 0,
                    channel: 0,
                });
                a
            })
            .collect();
        let mut out = vec![Score::default(); users.len()];
        s.score_batch(&users, 120 * DAY, &mut out);
        // An odd count: the last block is partial.
        let mut many = vec![Score::default(); 37];
        s.score_many(&users[..37], 120 * DAY, &mut many);
        assert_eq!(many[..], out[..37]);
        for (u, o) in users.iter().zip(&out) {
            assert_eq!(*o, s.score(u, 120 * DAY));
            assert!(o
                .factors()
                .windows(2)
                .all(|w| w[0].contribution >= w[1].contribution));
        }
    }

    #[test]
    fn percentile_is_monotone() {
        let s = toy_scorer();
        assert!(s.percentile(0.05) < s.percentile(0.3));
        assert!(s.percentile(0.3) <= s.percentile(0.95));
        assert_eq!(s.percentile(1.0), 100.0);
    }

    #[test]
    fn inconsistent_scorers_are_refused() {
        let mut s = toy_scorer();
        s.scaler.mean.pop();
        assert!(s.validate().is_err());
        let mut s = toy_scorer();
        s.tiers.centroids.pop();
        assert!(s.validate().is_err());
    }
}
