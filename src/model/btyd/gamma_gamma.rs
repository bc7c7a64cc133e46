//! Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"): a customer's transaction values are
//! Gamma(p, ν) with ν ~ Gamma(q, v), independent of the purchase process. Fitted on pairs
//! (n, m): n transaction values and their mean m; gives the expected value of a customer's next
//! transaction, shrunk from their own mean towards the population's by how many they made.
//!
//! Which transactions a customer's (n, m) covers ([`Basis`]):
//! - [`Basis::RepeatOrders`], `lifetimes`' standard set-up and tiering's default: n = x repeat
//!   transactions (order days after the first) and m their mean
//!   ([`Customer::repeat_monetary`], the first order day left out; fitted on customers with
//!   x ≥ 1). A customer whose first order day's spend is unknown (an aggregate read from a
//!   layout before it was kept) counts with the mean over all order days instead;
//! - [`Basis::AllOrders`]: n = x + 1, every transaction including the first, and m the mean
//!   over all of them ([`Customer::monetary`]; fitted on every buyer with m > 0), the model of
//!   bundles fitted before the first order day was kept, still selectable;
//! - [`Basis::Unrecorded`]: the value models of bundles written before the basis was recorded:
//!   n = x with the mean over all order days (what they were fitted on), read, never fitted.

use super::nelder_mead::{minimize, Options};
use super::special::ln_gamma;
use super::{BtydError, Customer};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

/// Which of a customer's transactions their Gamma-Gamma mean covers (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// n = x repeat transactions, m their mean (`lifetimes`' standard model; the default).
    RepeatOrders,
    /// n = x + 1: every transaction, the first included, m their mean.
    AllOrders,
    /// n = x with the mean over every transaction: the value models of bundles written before
    /// the basis was recorded (how they were fitted). Never fitted now.
    Unrecorded,
}

impl Basis {
    /// The basis of a value model that records none.
    pub fn unrecorded() -> Basis {
        Basis::Unrecorded
    }

    /// The number of transaction values `self.mean(c)` averages under this basis.
    pub fn count(self, c: &Customer) -> f64 {
        match self {
            Basis::RepeatOrders | Basis::Unrecorded => c.frequency.max(0.0),
            Basis::AllOrders => c.frequency.max(0.0) + 1.0,
        }
    }

    /// The customer's mean transaction value under this basis (module docs).
    pub fn mean(self, c: &Customer) -> f64 {
        match self {
            Basis::RepeatOrders => c.repeat_monetary.unwrap_or(c.monetary),
            Basis::AllOrders | Basis::Unrecorded => c.monetary,
        }
    }
}

impl GammaGamma {
    /// Maximum-likelihood fit over the customers with `frequency >= 1` and `monetary > 0`, on
    /// the repeat-orders basis (`lifetimes`' convention).
    pub fn fit(customers: &[Customer]) -> Result<GammaGamma, BtydError> {
        Self::fit_on(customers, Basis::RepeatOrders)
    }

    /// Maximum-likelihood fit on `basis`: the pairs (n, m) of the customers with `monetary > 0`
    /// and n >= 1; at least two customers with a repeat transaction are needed either way
    /// (without repeats nothing separates a customer's spread from the population's). Values
    /// are rescaled to mean 1 while fitting; `v` is scaled back.
    pub fn fit_on(customers: &[Customer], basis: Basis) -> Result<GammaGamma, BtydError> {
        let repeaters = customers
            .iter()
            .filter(|c| {
                let m = basis.mean(c);
                c.frequency >= 1.0 && m > 0.0 && m.is_finite()
            })
            .count();
        if repeaters < 2 {
            return Err(BtydError::TooFewRepeatBuyers(repeaters));
        }
        let rows: Vec<(f64, f64)> = customers
            .iter()
            .map(|c| (basis.count(c), basis.mean(c)))
            .filter(|&(n, m)| n >= 1.0 && m > 0.0 && m.is_finite())
            .collect();
        let scale = rows.len() as f64 / rows.iter().map(|r| r.1).sum::<f64>();
        // Per row: x, ln x, ln m (scaled); per distinct x the log-gamma terms.
        let mut xs: Vec<f64> = rows.iter().map(|r| r.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        // Per row: index of x, x, and the constant ln terms (ln m, x ln x); per evaluation only
        // ln(x·m + v) is left per row.
        let prepared: Vec<(usize, f64, f64, f64, f64)> = rows
            .iter()
            .map(|&(x, m)| {
                let m = m * scale;
                (xs.partition_point(|&v| v < x), x, x * m, m.ln(), x * x.ln())
            })
            .collect();
        let n = prepared.len() as f64;
        let mut objective = |th: &[f64]| {
            let [p, q, v] = [th[0].exp(), th[1].exp(), th[2].exp()];
            let lg_q = ln_gamma(q);
            let per_x: Vec<f64> = xs
                .iter()
                .map(|&x| ln_gamma(p * x + q) - ln_gamma(p * x) - lg_q)
                .collect();
            let q_ln_v = q * v.ln();
            // Chunk sums collected in order, then added: the same result on any thread count.
            let partial: Vec<f64> = prepared
                .par_chunks(8192)
                .map(|chunk| {
                    chunk
                        .iter()
                        .map(|&(i, x, xm, ln_m, x_ln_x)| {
                            per_x[i] + q_ln_v + (p * x - 1.0) * ln_m + p * x_ln_x
                                - (p * x + q) * (xm + v).ln()
                        })
                        .sum::<f64>()
                })
                .collect();
            -partial.iter().sum::<f64>() / n
        };
        let m = minimize(&mut objective, &[0.1; 3], Options::default());
        let fitted = GammaGamma {
            p: m.x[0].exp(),
            q: m.x[1].exp(),
            v: m.x[2].exp() / scale,
        };
        fitted.check().map(|()| fitted)
    }

    pub fn check(&self) -> Result<(), BtydError> {
        if [self.p, self.q, self.v]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
        {
            Ok(())
        } else {
            Err(BtydError::Diverged("Gamma-Gamma"))
        }
    }

    /// Population mean order value `p·v / (q-1)`; `None` when `q <= 1` (infinite mean).
    pub fn population_mean(&self) -> Option<f64> {
        (self.q > 1.0).then(|| self.p * self.v / (self.q - 1.0))
    }

    /// E[order value | x, m] on the repeat-orders basis ([`GammaGamma::expected_value`] with
    /// n = x; `fallback` when `q <= 1` and the customer has no repeat purchase).
    pub fn expected_order_value(&self, c: &Customer, fallback: f64) -> f64 {
        self.expected_value(Basis::RepeatOrders, c, fallback)
    }

    /// E[next transaction value | n, m]: the customer's own mean `m` weighted by
    /// `p·n / (p·n + q - 1)`, the population mean by the rest, with n and m on `basis`. When
    /// `q <= 1` (no finite population mean) the customer's own mean, or `fallback` with n = 0.
    pub fn expected_value(&self, basis: Basis, c: &Customer, fallback: f64) -> f64 {
        let (n, m) = (basis.count(c), basis.mean(c));
        let Some(population) = self.population_mean() else {
            return if n >= 1.0 { m } else { fallback };
        };
        let w = self.p * n / (self.p * n + self.q - 1.0);
        (1.0 - w) * population + w * m
    }
}
