//! Probability calibration: Platt scaling on held-out raw scores.
//!
//! Platt keeps the ranking (so ROC-AUC is unchanged) and needs two parameters, which makes it
//! robust on small validation sets; fitted by Newton's method on the log loss.

use serde::{Deserialize, Serialize};

/// p = sigmoid(a * score + b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

impl Default for Platt {
    fn default() -> Self {
        Platt { a: 1.0, b: 0.0 }
    }
}

#[inline]
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Platt {
    /// Fits on raw scores (log-odds) and labels. Uses Platt's smoothed targets so that a
    /// separable validation set does not drive the slope to infinity.
    pub fn fit(scores: &[f64], labels: &[bool]) -> Platt {
        let pos = labels.iter().filter(|&&l| l).count() as f64;
        let neg = labels.len() as f64 - pos;
        if pos == 0.0 || neg == 0.0 {
            return Platt::default();
        }
        let t_pos = (pos + 1.0) / (pos + 2.0);
        let t_neg = 1.0 / (neg + 2.0);
        let loss = |a: f64, b: f64| -> f64 {
            scores
                .iter()
                .zip(labels)
                .map(|(&s, &l)| {
                    let t = if l { t_pos } else { t_neg };
                    let z = a * s + b;
                    // log(1 + e^z) - t z, computed stably.
                    let softplus = if z > 0.0 {
                        z + (-z).exp().ln_1p()
                    } else {
                        z.exp().ln_1p()
                    };
                    softplus - t * z
                })
                .sum()
        };
        // Platt's start: flat slope, prior log-odds; then damped Newton with backtracking.
        let (mut a, mut b) = (0.0f64, ((pos + 1.0) / (neg + 1.0)).ln());
        let mut current = loss(a, b);
        for _ in 0..100 {
            let (mut g_a, mut g_b, mut h_aa, mut h_ab, mut h_bb) = (0.0, 0.0, 1e-12, 0.0, 1e-12);
            for (&s, &l) in scores.iter().zip(labels) {
                let p = sigmoid(a * s + b);
                let t = if l { t_pos } else { t_neg };
                let d = p - t;
                let w = p * (1.0 - p);
                g_a += d * s;
                g_b += d;
                h_aa += w * s * s;
                h_ab += w * s;
                h_bb += w;
            }
            let det = h_aa * h_bb - h_ab * h_ab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = (h_bb * g_a - h_ab * g_b) / det;
            let db = (h_aa * g_b - h_ab * g_a) / det;
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-8 {
                let (na, nb) = (a - step * da, b - step * db);
                let l = loss(na, nb);
                if l.is_finite() && l <= current {
                    a = na;
                    b = nb;
                    improved = current - l > 1e-12 * current.abs().max(1.0);
                    current = l;
                    break;
                }
                step /= 2.0;
            }
            if !improved {
                break;
            }
        }
        if a.is_finite() && b.is_finite() {
            Platt { a, b }
        } else {
            Platt::default()
        }
    }

    #[inline]
    pub fn probability(&self, score: f64) -> f64 {
        sigmoid(self.a * score + self.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_recovers_a_known_miscalibration() {
        // True p = sigmoid(0.5 s - 1); feed scores s with outcomes drawn deterministically.
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for i in 0..4000 {
            let s = (i as f64 / 4000.0) * 12.0 - 6.0;
            let p = sigmoid(0.5 * s - 1.0);
            // Stratified outcomes: within each block of 20 equal scores, round(20p) positives.
            for j in 0..20 {
                scores.push(s);
                labels.push((j as f64) < (p * 20.0).round());
            }
        }
        let c = Platt::fit(&scores, &labels);
        assert!((c.a - 0.5).abs() < 0.05, "a = {}", c.a);
        assert!((c.b + 1.0).abs() < 0.1, "b = {}", c.b);
    }

    #[test]
    fn one_class_keeps_identity() {
        assert_eq!(Platt::fit(&[1.0, 2.0], &[true, true]), Platt::default());
    }
}
