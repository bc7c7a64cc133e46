//! Drift: the population stability index (PSI) of what a model sees now against what it was
//! trained on. Training keeps a [`DriftReference`] in the bundle (the distribution of each
//! model feature, of the churn probability and of the tier shares); the server and the next
//! training compare the users they hold with it ([`DriftReference::compare`]).
//!
//! PSI = Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ) over bins, with e the reference shares and a the current
//! ones, each share floored at [`SHARE_FLOOR`] so an empty bin does not make it infinite. The
//! usual reading: below 0.1 stable, 0.1–0.25 a moderate shift, above 0.25 a retrain is due.
//! Numeric quantities are binned at the reference's deciles (ties merged), so the reference
//! shares are about equal and the index does not depend on the units.

use serde::{Deserialize, Serialize};

/// Bins of a numeric distribution (deciles of the training values).
pub const BINS: usize = 10;
/// Shares are floored at this before the logarithm.
pub const SHARE_FLOOR: f64 = 1e-4;
/// PSI above this is commonly read as "the population moved: retrain".
pub const PSI_RETRAIN: f64 = 0.25;

/// A numeric quantity's training distribution: inner bin edges and the share of rows per bin
/// (`edges.len() + 1` bins; a value `v` falls in the first bin whose edge is `>= v`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Binned {
    pub name: String,
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
}

impl Binned {
    /// The distribution of `values` (non-finite values are skipped), cut at its deciles.
    pub fn fit(name: impl Into<String>, values: impl Iterator<Item = f64>) -> Binned {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (1..BINS)
            .filter_map(|q| v.get(q * v.len() / BINS).copied())
            .collect();
        edges.dedup();
        let mut b = Binned {
            name: name.into(),
            edges,
            shares: Vec::new(),
        };
        b.shares = b.shares_of(v.into_iter());
        b
    }

    pub fn bin(&self, v: f64) -> usize {
        self.edges.partition_point(|&e| e < v)
    }

    /// Share of `values` per bin (non-finite values are skipped).
    pub fn shares_of(&self, values: impl Iterator<Item = f64>) -> Vec<f64> {
        let mut counts = vec![0u64; self.edges.len() + 1];
        for v in values.filter(|x| x.is_finite()) {
            counts[self.bin(v)] += 1;
        }
        shares(&counts)
    }
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect()
}

/// PSI of `actual` shares against `expected` (same bins).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(SHARE_FLOOR), a.max(SHARE_FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// What a bundle keeps of its training population, for drift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    /// One per model feature, in the model's order, over the *scaled* model inputs (PSI is
    /// the same over any increasing transform of a feature).
    pub features: Vec<Binned>,
    pub churn_probability: Binned,
    /// Share of users per tier, in the tier table's order.
    pub tier_shares: Vec<f64>,
}

/// PSI per quantity: one per feature (by name), the churn probability and the tier shares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftFigures {
    /// Users compared with the reference.
    pub users: u64,
    pub features: Vec<(String, f64)>,
    pub churn_probability: f64,
    pub tier_shares: f64,
}

impl DriftFigures {
    /// The largest PSI, and what it is of.
    pub fn largest(&self) -> (String, f64) {
        let mut all = self.features.clone();
        all.push(("churn_probability".into(), self.churn_probability));
        all.push(("tier_shares".into(), self.tier_shares));
        all.into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or_default()
    }
}

/// Accumulates the current population, one user at a time, against a reference.
#[derive(Debug, Clone)]
pub struct DriftCounter<'a> {
    reference: &'a DriftReference,
    features: Vec<Vec<u64>>,
    churn: Vec<u64>,
    tiers: Vec<u64>,
    users: u64,
}

impl DriftReference {
    /// A counter of the current population against this reference.
    pub fn counter(&self) -> DriftCounter<'_> {
        DriftCounter {
            reference: self,
            features: (self.features.iter())
                .map(|b| vec![0; b.edges.len() + 1])
                .collect(),
            churn: vec![0; self.churn_probability.edges.len() + 1],
            tiers: vec![0; self.tier_shares.len()],
            users: 0,
        }
    }
}

impl DriftCounter<'_> {
    /// Adds a user: scaled model inputs `x` (the reference's feature order), churn
    /// probability and tier index.
    pub fn add(&mut self, x: &[f64], churn_probability: f64, tier: usize) {
        for ((b, c), &v) in self
            .reference
            .features
            .iter()
            .zip(&mut self.features)
            .zip(x)
        {
            if v.is_finite() {
                c[b.bin(v)] += 1;
            }
        }
        if churn_probability.is_finite() {
            self.churn[self.reference.churn_probability.bin(churn_probability)] += 1;
        }
        if let Some(t) = self.tiers.get_mut(tier) {
            *t += 1;
        }
        self.users += 1;
    }

    /// Adds another counter's users (for counting in parallel).
    pub fn merge(mut self, other: DriftCounter<'_>) -> Self {
        let add = |a: &mut Vec<u64>, b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            add(a, b);
        }
        add(&mut self.churn, &other.churn);
        add(&mut self.tiers, &other.tiers);
        self.users += other.users;
        self
    }

    pub fn figures(&self) -> DriftFigures {
        let r = self.reference;
        DriftFigures {
            users: self.users,
            features: (r.features.iter().zip(&self.features))
                .map(|(b, c)| (b.name.clone(), psi(&b.shares, &shares(c))))
                .collect(),
            churn_probability: psi(&r.churn_probability.shares, &shares(&self.churn)),
            tier_shares: psi(&r.tier_shares, &shares(&self.tiers)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_population_has_a_psi_of_zero_and_a_shifted_one_a_large_psi() {
        let values: Vec<f64> = (0..10_000).map(|i| f64::from(i % 1000)).collect();
        let b = Binned::fit("x", values.iter().copied());
        assert_eq!(b.shares.len(), BINS);
        assert!(psi(&b.shares, &b.shares_of(values.iter().copied())).abs() < 1e-12);
        let shifted = b.shares_of(values.iter().map(|v| v + 300.0));
        assert!(psi(&b.shares, &shifted) > PSI_RETRAIN, "{shifted:?}");
    }

    #[test]
    fn a_counter_gives_psi_per_feature_churn_and_tiers() {
        let reference = DriftReference {
            features: vec![Binned::fit("a", (0..100).map(f64::from))],
            churn_probability: Binned::fit("p", (0..100).map(|i| f64::from(i) / 100.0)),
            tier_shares: vec![0.5, 0.5],
        };
        let mut same = reference.counter();
        let mut moved = reference.counter();
        for i in 0..100 {
            same.add(&[f64::from(i)], f64::from(i) / 100.0, i as usize % 2);
            moved.add(&[f64::from(i) + 50.0], 0.99, 0);
        }
        let f = same.figures();
        assert_eq!(f.users, 100);
        assert!(f.features[0].1.abs() < 1e-12 && f.churn_probability.abs() < 1e-12);
        assert!(f.tier_shares.abs() < 1e-12);
        let m = moved.figures();
        assert!(m.features[0].1 > PSI_RETRAIN && m.churn_probability > PSI_RETRAIN);
        assert!(m.tier_shares > PSI_RETRAIN);
        assert_eq!(
            m.largest().1,
            m.churn_probability.max(m.features[0].1).max(m.tier_shares)
        );
    }
}
