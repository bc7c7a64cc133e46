//! BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while alive, a
//! customer buys at a Poisson rate λ ~ Gamma(r, α); after each purchase they drop out with
//! probability p ~ Beta(a, b). Fitted by maximum likelihood on (x, t_x, T) summaries; the
//! closed forms give P(alive) and the expected purchases in the next `t` time units.

use super::nelder_mead::{minimize, polish, Options};
use super::special::{ln_gamma, ln_hyp2f1_euler};
use super::{BtydError, Customer};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Fitted BG/NBD parameters (time in the unit of the customers' `recency` and `age`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// Distinct (x, t_x, T) summaries with their counts: what one likelihood evaluation runs over.
/// The log-gamma terms depend on x only and the `ln(α + t)` terms on one time value only, so
/// both are computed once per distinct x and distinct time, not per row.
struct Compressed {
    /// Distinct frequencies, ascending.
    xs: Vec<f64>,
    /// Distinct times (recencies and ages, scaled), ascending.
    times: Vec<f64>,
    /// Per row: index into `xs`, index of t_x and of T into `times`, weight.
    rows: Vec<(u32, u32, u32, f64)>,
    total_weight: f64,
}

fn compress(customers: &[Customer], scale: f64) -> Compressed {
    let mut counts: HashMap<(u64, u64, u64), f64> = HashMap::new();
    for c in customers {
        let key = (c.frequency.to_bits(), c.recency.to_bits(), c.age.to_bits());
        *counts.entry(key).or_insert(0.0) += 1.0;
    }
    let mut keyed: Vec<_> = counts.into_iter().collect();
    keyed.sort_by_key(|a| a.0);
    let distinct = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let xs = distinct(keyed.iter().map(|(k, _)| f64::from_bits(k.0)).collect());
    let times = distinct(
        keyed
            .iter()
            .flat_map(|(k, _)| [f64::from_bits(k.1) * scale, f64::from_bits(k.2) * scale])
            .collect(),
    );
    let at = |v: &[f64], x: f64| v.partition_point(|&y| y < x) as u32;
    let rows = keyed
        .iter()
        .map(|((x, tx, t), w)| {
            (
                at(&xs, f64::from_bits(*x)),
                at(&times, f64::from_bits(*tx) * scale),
                at(&times, f64::from_bits(*t) * scale),
                *w,
            )
        })
        .collect();
    Compressed {
        xs,
        times,
        rows,
        total_weight: customers.len() as f64,
    }
}

const CHUNK: usize = 8192;

/// Mean log-likelihood of the compressed data at (r, α, a, b); α in the scaled time unit.
fn mean_log_likelihood(d: &Compressed, r: f64, alpha: f64, a: f64, b: f64) -> f64 {
    let lg_ab = ln_gamma(a + b) - ln_gamma(b);
    let (lg_r, ln_alpha) = (ln_gamma(r), alpha.ln());
    // Per distinct x: A1 + A2 of lifetimes' likelihood, and ln(a / (b + max(x,1) - 1)).
    let per_x: Vec<(f64, f64)> =
        d.xs.iter()
            .map(|&x| {
                let a1 = ln_gamma(r + x) - lg_r + r * ln_alpha;
                let a2 = lg_ab + ln_gamma(b + x) - ln_gamma(a + b + x);
                (a1 + a2, a.ln() - (b + x.max(1.0) - 1.0).ln())
            })
            .collect();
    let ln_at: Vec<f64> = d.times.iter().map(|&t| (alpha + t).ln()).collect();
    let partial: Vec<f64> = d
        .rows
        .par_chunks(CHUNK)
        .map(|rows| {
            rows.iter()
                .map(|&(i, itx, it, w)| {
                    let x = d.xs[i as usize];
                    let (a12, ln_ab) = per_x[i as usize];
                    let a3 = -(r + x) * ln_at[it as usize];
                    if x <= 0.0 {
                        return w * (a12 + a3);
                    }
                    let a4 = ln_ab - (r + x) * ln_at[itx as usize];
                    // ln(e^a3 + e^a4) with one exp.
                    let (hi, lo) = if a3 >= a4 { (a3, a4) } else { (a4, a3) };
                    w * (a12 + hi + (lo - hi).exp().ln_1p())
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum::<f64>() / d.total_weight
}

impl BgNbd {
    /// Maximum-likelihood fit. Time is rescaled so the longest age is 10 while fitting (as
    /// `lifetimes` does, for conditioning), and α scaled back.
    pub fn fit(customers: &[Customer]) -> Result<BgNbd, BtydError> {
        Self::fit_from(customers, None)
    }

    /// [`BgNbd::fit`] from `start` (a fit on similar data, e.g. an earlier snapshot): the
    /// Newton polish alone from there, with the simplex only if the polish cannot move;
    /// without `start` the simplex from 0.1 first.
    pub fn fit_from(customers: &[Customer], start: Option<&BgNbd>) -> Result<BgNbd, BtydError> {
        super::check_customers(customers)?;
        let max_age = customers.iter().map(|c| c.age).fold(0.0f64, f64::max);
        if max_age <= 0.0 {
            return Err(BtydError::NoSpan);
        }
        let scale = 10.0 / max_age;
        let data = compress(customers, scale);
        let mut objective = |p: &[f64]| {
            let [r, alpha, a, b] = [p[0].exp(), p[1].exp(), p[2].exp(), p[3].exp()];
            -mean_log_likelihood(&data, r, alpha, a, b)
        };
        let warm = start
            .filter(|s| s.check().is_ok())
            .map(|s| [s.r.ln(), (s.alpha * scale).ln(), s.a.ln(), s.b.ln()])
            .and_then(|x0| polish(&mut objective, &x0))
            .filter(|m| m.value.is_finite());
        let m = match warm {
            Some(m) => m,
            None => minimize(&mut objective, &[0.1; 4], Options::default()),
        };
        let fitted = BgNbd {
            r: m.x[0].exp(),
            alpha: m.x[1].exp() / scale,
            a: m.x[2].exp(),
            b: m.x[3].exp(),
        };
        fitted.check().map(|()| fitted)
    }

    /// Every parameter finite and positive (a fitted or deserialised model).
    pub fn check(&self) -> Result<(), BtydError> {
        let ok = [self.r, self.alpha, self.a, self.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0);
        if ok {
            Ok(())
        } else {
            Err(BtydError::Diverged("BG/NBD"))
        }
    }

    /// Mean log-likelihood of `customers` (the fit maximises it).
    pub fn log_likelihood(&self, customers: &[Customer]) -> f64 {
        let d = compress(customers, 1.0);
        mean_log_likelihood(&d, self.r, self.alpha, self.a, self.b)
    }

    /// P(alive | x, t_x, T): 1 for a customer without repeat purchases.
    pub fn p_alive(&self, c: &Customer) -> f64 {
        if c.frequency <= 0.0 {
            return 1.0;
        }
        let (x, BgNbd { r, alpha, a, b }) = (c.frequency, *self);
        let log_div =
            (r + x) * ((alpha + c.age) / (alpha + c.recency)).ln() + (a / (b + x - 1.0)).ln();
        1.0 / (1.0 + log_div.exp())
    }

    /// E[Y(t) | x, t_x, T]: expected purchases in the next `t` time units (FHL 2005, eq. 10).
    /// The hypergeometric term goes through Euler's transformation, where it needs no large
    /// exponents whatever x is; when `a + b + x - 1 <= 0` (a zero-frequency customer under
    /// `a + b <= 1`, outside the series' domain) it falls back to the rate of an alive customer
    /// times `t`, weighted by P(alive).
    pub fn expected_purchases(&self, t: f64, c: &Customer) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        let (x, BgNbd { r, alpha, a, b }) = (c.frequency, *self);
        let big_t = c.age;
        let cc = a + b + x - 1.0;
        let z = t / (alpha + big_t + t);
        let ln_h = if cc > 1e-9 && (a - 1.0).abs() > 1e-9 {
            ln_hyp2f1_euler(r + x, b + x, cc, z)
        } else {
            None
        };
        let Some(ln_h) = ln_h else {
            return (r + x) / (alpha + big_t) * t * self.p_alive(c);
        };
        let first = cc / (a - 1.0);
        // (r+x) ln((α+T)/(α+T+t)) = (r+x) ln(1-z).
        let second = -(ln_h + (r + x) * (-z).ln_1p()).exp_m1();
        let numerator = first * second;
        let denominator = if x > 0.0 {
            1.0 + (a / (b + x - 1.0)) * ((alpha + big_t) / (alpha + c.recency)).powf(r + x)
        } else {
            1.0
        };
        (numerator / denominator).max(0.0)
    }
}
