//! Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"): a customer's order values are
//! Gamma(p, ν) with ν ~ Gamma(q, v), independent of the purchase process. Fitted on customers
//! with repeat purchases (x ≥ 1, their mean order value m); gives the expected order value of
//! any customer, shrunk from their own mean towards the population's by how much they bought.

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

impl GammaGamma {
    /// Maximum-likelihood fit over the customers with `frequency >= 1` and `monetary > 0`
    /// (order values rescaled to mean 1 while fitting; `v` scaled back).
    pub fn fit(customers: &[Customer]) -> Result<GammaGamma, BtydError> {
        let rows: Vec<(f64, f64)> = customers
            .iter()
            .filter(|c| c.frequency >= 1.0 && c.monetary > 0.0 && c.monetary.is_finite())
            .map(|c| (c.frequency, c.monetary))
            .collect();
        if rows.len() < 2 {
            return Err(BtydError::TooFewRepeatBuyers(rows.len()));
        }
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

    /// E[order value | x, m]: the customer's own mean `m` weighted by `p·x / (p·x + q - 1)`,
    /// the population mean by the rest. When `q <= 1` the customer's own mean (or
    /// `fallback` without repeat purchases).
    pub fn expected_order_value(&self, c: &Customer, fallback: f64) -> f64 {
        let Some(population) = self.population_mean() else {
            return if c.frequency >= 1.0 {
                c.monetary
            } else {
                fallback
            };
        };
        let x = c.frequency.max(0.0);
        let w = self.p * x / (self.p * x + self.q - 1.0);
        (1.0 - w) * population + w * c.monetary
    }
}
