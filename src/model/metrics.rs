//! Evaluation metrics for probabilistic binary classifiers, and clustering agreement (ARI).
//!
//! Labels are `true` for the positive class (churned).

use serde::{Deserialize, Serialize};

/// The metric set every churn model is reported with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub n: u64,
    pub positives: u64,
    pub roc_auc: f64,
    pub pr_auc: f64,
    pub brier: f64,
    pub log_loss: f64,
    /// Positive rate in the top 10% of scores over the overall positive rate.
    pub lift_top_decile: f64,
}

/// Indices sorted by score, highest first (ties broken by index for determinism).
fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// ROC-AUC by the rank statistic, with ties counted half. NaN when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0f64, 0u64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = idx.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    let p = pos as f64;
    (rank_sum - p * (p + 1.0) / 2.0) / (p * neg as f64)
}

/// Average precision (area under the precision-recall curve, step-wise).
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let total_pos = labels.iter().filter(|&&l| l).count();
    if total_pos == 0 {
        return f64::NAN;
    }
    let idx = order_desc(scores);
    let (mut tp, mut ap) = (0usize, 0.0);
    let mut i = 0;
    while i < idx.len() {
        // Treat tied scores as one threshold.
        let mut j = i;
        let mut tp_group = 0;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] {
                tp_group += 1;
            }
            j += 1;
        }
        tp += tp_group;
        let precision = tp as f64 / j as f64;
        ap += precision * tp_group as f64 / total_pos as f64;
        i = j;
    }
    ap
}

/// ROC curve points (fpr, tpr), thinned to at most `max_points`.
pub fn roc_curve(scores: &[f64], labels: &[bool], max_points: usize) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return vec![(0.0, 0.0), (1.0, 1.0)];
    }
    let idx = order_desc(scores);
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let step = (idx.len() / max_points.max(2)).max(1);
    for (n, &k) in idx.iter().enumerate() {
        if labels[k] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = n + 1 == idx.len() || scores[idx[n + 1]] != scores[k];
        if last_of_tie && (n % step == 0 || n + 1 == idx.len()) {
            pts.push((fp / neg, tp / pos));
        }
    }
    if pts.last() != Some(&(1.0, 1.0)) {
        pts.push((1.0, 1.0));
    }
    pts
}

pub fn brier(probs: &[f64], labels: &[bool]) -> f64 {
    let n = probs.len().max(1) as f64;
    probs
        .iter()
        .zip(labels)
        .map(|(p, &l)| (p - f64::from(u8::from(l))).powi(2))
        .sum::<f64>()
        / n
}

pub fn log_loss(probs: &[f64], labels: &[bool]) -> f64 {
    let n = probs.len().max(1) as f64;
    probs
        .iter()
        .zip(labels)
        .map(|(&p, &l)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            if l {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / n
}

pub fn lift_top_decile(scores: &[f64], labels: &[bool]) -> f64 {
    let n = labels.len();
    let pos = labels.iter().filter(|&&l| l).count();
    if n == 0 || pos == 0 {
        return f64::NAN;
    }
    let idx = order_desc(scores);
    let top = (n / 10).max(1);
    let top_pos = idx[..top].iter().filter(|&&k| labels[k]).count();
    (top_pos as f64 / top as f64) / (pos as f64 / n as f64)
}

pub fn evaluate(probs: &[f64], labels: &[bool]) -> BinaryMetrics {
    BinaryMetrics {
        n: labels.len() as u64,
        positives: labels.iter().filter(|&&l| l).count() as u64,
        roc_auc: roc_auc(probs, labels),
        pr_auc: pr_auc(probs, labels),
        brier: brier(probs, labels),
        log_loss: log_loss(probs, labels),
        lift_top_decile: lift_top_decile(probs, labels),
    }
}

/// One bin of a reliability table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRow {
    pub lo: f64,
    pub hi: f64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
    pub count: u64,
}

/// Reliability table over `bins` equal-width probability bins (empty bins omitted).
pub fn calibration_table(probs: &[f64], labels: &[bool], bins: usize) -> Vec<CalibrationRow> {
    let bins = bins.max(1);
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut count = vec![0u64; bins];
    for (&p, &l) in probs.iter().zip(labels) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sum_p[b] += p;
        sum_y[b] += f64::from(u8::from(l));
        count[b] += 1;
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| CalibrationRow {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            mean_predicted: sum_p[b] / count[b] as f64,
            observed_rate: sum_y[b] / count[b] as f64,
            count: count[b],
        })
        .collect()
}

/// Adjusted Rand index between two labelings of the same items.
pub fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len();
    if n < 2 {
        return f64::NAN;
    }
    let ka = a.iter().max().map_or(0, |m| m + 1);
    let kb = b.iter().max().map_or(0, |m| m + 1);
    let mut table = vec![0u64; ka * kb];
    for (&x, &y) in a.iter().zip(b) {
        table[x * kb + y] += 1;
    }
    let c2 = |x: u64| (x as f64) * (x as f64 - 1.0) / 2.0;
    let sum_ij: f64 = table.iter().map(|&x| c2(x)).sum();
    let sum_a: f64 = (0..ka)
        .map(|i| c2(table[i * kb..(i + 1) * kb].iter().sum()))
        .sum();
    let sum_b: f64 = (0..kb)
        .map(|j| c2((0..ka).map(|i| table[i * kb + j]).sum()))
        .sum();
    let expected = sum_a * sum_b / c2(n as u64);
    let max = (sum_a + sum_b) / 2.0;
    if (max - expected).abs() < f64::EPSILON {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_a_perfect_ranking_is_one_and_of_a_reversed_one_zero() {
        let s = [0.1, 0.2, 0.8, 0.9];
        let l = [false, false, true, true];
        assert_eq!(roc_auc(&s, &l), 1.0);
        let r = [0.9, 0.8, 0.2, 0.1];
        assert_eq!(roc_auc(&r, &l), 0.0);
        assert_eq!(pr_auc(&s, &l), 1.0);
    }

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert!(roc_auc(&[0.5, 0.5], &[true, true]).is_nan());
    }

    #[test]
    fn auc_matches_a_brute_force_pair_count() {
        let s = [0.3, 0.1, 0.7, 0.7, 0.2, 0.9, 0.4, 0.4];
        let l = [true, false, false, true, false, true, true, false];
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] && !l[j] {
                    den += 1.0;
                    num += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((roc_auc(&s, &l) - num / den).abs() < 1e-12);
    }

    #[test]
    fn brier_and_log_loss_of_confident_right_answers_are_small() {
        let l = [true, false];
        assert!(brier(&[0.99, 0.01], &l) < 1e-3);
        assert!(log_loss(&[0.99, 0.01], &l) < 0.02);
        assert!(log_loss(&[0.01, 0.99], &l) > 4.0);
    }

    #[test]
    fn lift_of_a_perfect_model_is_inverse_base_rate() {
        let s: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let l: Vec<bool> = (0..100).map(|i| i >= 80).collect();
        assert!((lift_top_decile(&s, &l) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn calibration_bins_count_every_row() {
        let p = [0.05, 0.15, 0.15, 0.95];
        let l = [false, true, false, true];
        let t = calibration_table(&p, &l, 10);
        assert_eq!(t.iter().map(|r| r.count).sum::<u64>(), 4);
        assert_eq!(t[1].observed_rate, 0.5);
    }

    #[test]
    fn ari_is_one_for_permuted_labels_and_near_zero_for_unrelated() {
        let a = [0, 0, 1, 1, 2, 2];
        let b = [2, 2, 0, 0, 1, 1];
        assert!((adjusted_rand_index(&a, &b) - 1.0).abs() < 1e-12);
        let c: Vec<usize> = (0..600).map(|i| i % 3).collect();
        let d: Vec<usize> = (0..600).map(|i| (i / 3) % 2).collect();
        assert!(adjusted_rand_index(&c, &d).abs() < 0.05);
    }
}
