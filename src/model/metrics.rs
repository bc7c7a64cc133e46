//! Evaluation metrics for probabilistic binary classifiers, and clustering agreement (ARI).
//!
//! Labels are `true` for the positive class (churned).

use rayon::prelude::*;
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

/// (score, label) pairs sorted by score, highest first, ties in input order: the one sort every
/// ranking metric below is read from. Sorted on all cores; the key is total, so the order is
/// deterministic.
fn ranked(scores: &[f64], labels: &[bool]) -> Vec<(f64, bool)> {
    let mut v: Vec<(f64, u32, bool)> = scores
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (&s, &l))| (s, i as u32, l))
        .collect();
    v.par_sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    v.into_iter().map(|(s, _, l)| (s, l)).collect()
}

/// Tie groups of a ranking: (positives, negatives) per run of equal scores, highest first.
fn tie_groups(r: &[(f64, bool)]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    // Yields (end index exclusive, positives, negatives) of each group.
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= r.len() {
            return None;
        }
        let (mut pos, mut neg) = (0, 0);
        let mut j = i;
        while j < r.len() && r[j].0 == r[i].0 {
            if r[j].1 {
                pos += 1;
            } else {
                neg += 1;
            }
            j += 1;
        }
        i = j;
        Some((j, pos, neg))
    })
}

fn roc_auc_ranked(r: &[(f64, bool)]) -> f64 {
    let pos = r.iter().filter(|x| x.1).count();
    let neg = r.len() - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    // Mann-Whitney U: each positive beats the negatives ranked below it, ties count half.
    let (mut u, mut neg_seen) = (0.0f64, 0usize);
    for (_, p, n) in tie_groups(r) {
        neg_seen += n;
        u += p as f64 * ((neg - neg_seen) as f64 + 0.5 * n as f64);
    }
    u / (pos as f64 * neg as f64)
}

fn pr_auc_ranked(r: &[(f64, bool)]) -> f64 {
    let total_pos = r.iter().filter(|x| x.1).count();
    if total_pos == 0 {
        return f64::NAN;
    }
    // Tied scores are one threshold.
    let (mut tp, mut ap) = (0usize, 0.0);
    for (end, p, _) in tie_groups(r) {
        tp += p;
        ap += (tp as f64 / end as f64) * p as f64 / total_pos as f64;
    }
    ap
}

fn roc_curve_ranked(r: &[(f64, bool)], max_points: usize) -> Vec<(f64, f64)> {
    let pos = r.iter().filter(|x| x.1).count() as f64;
    let neg = r.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return vec![(0.0, 0.0), (1.0, 1.0)];
    }
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let step = (r.len() / max_points.max(2)).max(1);
    for (n, &(s, l)) in r.iter().enumerate() {
        if l {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = n + 1 == r.len() || r[n + 1].0 != s;
        if last_of_tie && (n % step == 0 || n + 1 == r.len()) {
            pts.push((fp / neg, tp / pos));
        }
    }
    if pts.last() != Some(&(1.0, 1.0)) {
        pts.push((1.0, 1.0));
    }
    pts
}

fn lift_ranked(r: &[(f64, bool)]) -> f64 {
    let n = r.len();
    let pos = r.iter().filter(|x| x.1).count();
    if n == 0 || pos == 0 {
        return f64::NAN;
    }
    let top = (n / 10).max(1);
    let top_pos = r[..top].iter().filter(|x| x.1).count();
    (top_pos as f64 / top as f64) / (pos as f64 / n as f64)
}

/// ROC-AUC (the Mann-Whitney statistic, ties counted half). NaN when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    roc_auc_ranked(&ranked(scores, labels))
}

/// Average precision (area under the precision-recall curve, step-wise).
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    pr_auc_ranked(&ranked(scores, labels))
}

/// ROC curve points (fpr, tpr), thinned to at most `max_points`.
pub fn roc_curve(scores: &[f64], labels: &[bool], max_points: usize) -> Vec<(f64, f64)> {
    roc_curve_ranked(&ranked(scores, labels), max_points)
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

/// Positive rate in the top 10% of scores (ties in input order) over the overall rate.
pub fn lift_top_decile(scores: &[f64], labels: &[bool]) -> f64 {
    lift_ranked(&ranked(scores, labels))
}

pub fn evaluate(probs: &[f64], labels: &[bool]) -> BinaryMetrics {
    evaluate_with_curve(probs, labels, 2).0
}

/// [`evaluate`] and [`roc_curve`] from a single sort.
pub(crate) fn evaluate_with_curve(
    probs: &[f64],
    labels: &[bool],
    max_points: usize,
) -> (BinaryMetrics, Vec<(f64, f64)>) {
    let r = ranked(probs, labels);
    let m = BinaryMetrics {
        n: labels.len() as u64,
        positives: labels.iter().filter(|&&l| l).count() as u64,
        roc_auc: roc_auc_ranked(&r),
        pr_auc: pr_auc_ranked(&r),
        brier: brier(probs, labels),
        log_loss: log_loss(probs, labels),
        lift_top_decile: lift_ranked(&r),
    };
    (m, roc_curve_ranked(&r, max_points))
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
pub(crate) fn calibration_table(
    probs: &[f64],
    labels: &[bool],
    bins: usize,
) -> Vec<CalibrationRow> {
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
pub(crate) fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
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

    /// Brute-force references on seeded random data with many ties.
    #[test]
    fn ranking_metrics_match_brute_force_references_with_ties() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(9);
        for _ in 0..20 {
            let n = rng.gen_range(2..300);
            let s: Vec<f64> = (0..n)
                .map(|_| f64::from(rng.gen_range(0..12u8)) / 10.0)
                .collect();
            let l: Vec<bool> = s
                .iter()
                .map(|&v| rng.gen::<f64>() < v.min(0.9) + 0.05)
                .collect();
            let pos = l.iter().filter(|&&x| x).count();
            if pos == 0 || pos == n {
                continue;
            }
            let (mut num, mut den) = (0.0, 0.0);
            for i in 0..n {
                for j in 0..n {
                    if l[i] && !l[j] {
                        den += 1.0;
                        num += match s[i].total_cmp(&s[j]) {
                            std::cmp::Ordering::Greater => 1.0,
                            std::cmp::Ordering::Equal => 0.5,
                            std::cmp::Ordering::Less => 0.0,
                        };
                    }
                }
            }
            let (m, curve) = evaluate_with_curve(&s, &l, 1000);
            assert!((m.roc_auc - num / den).abs() < 1e-12);
            // Average precision: over each distinct threshold, precision there times the
            // recall it adds.
            let mut thresholds: Vec<f64> = s.clone();
            thresholds.sort_by(|a, b| b.total_cmp(a));
            thresholds.dedup();
            let (mut ap, mut prev_tp) = (0.0, 0usize);
            for &t in &thresholds {
                let sel: Vec<usize> = (0..n).filter(|&i| s[i] >= t).collect();
                let tp = sel.iter().filter(|&&i| l[i]).count();
                ap += (tp as f64 / sel.len() as f64) * (tp - prev_tp) as f64 / pos as f64;
                prev_tp = tp;
            }
            assert!((m.pr_auc - ap).abs() < 1e-12, "{} vs {ap}", m.pr_auc);
            // The curve has one point per distinct threshold (all kept at 1000 points), and
            // the trapezoid under it is the AUC.
            assert_eq!(curve.len(), thresholds.len() + 1);
            let area: f64 = curve
                .windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
                .sum();
            assert!((area - m.roc_auc).abs() < 1e-9, "{area} vs {}", m.roc_auc);
            assert_eq!(m.roc_auc, roc_auc(&s, &l));
            assert_eq!(m.pr_auc, pr_auc(&s, &l));
        }
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
