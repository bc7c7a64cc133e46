//! Stage 1b: the purchase candidates of the churn model ([`Feature::PURCHASE`]): the purchase
//! rhythm (mean gap between order days, days late relative to it) and BG/NBD's P(alive) and
//! expected orders in the horizon.
//!
//! They are candidates where the data supports them: at least [`MIN_REPEAT_BUYERS`] users with
//! a repeat order day at every snapshot training fits a BG/NBD on, and every fit converging;
//! otherwise they are left out with the reason (the report lists it). Point in time: the rows
//! of a snapshot use a BG/NBD fitted on the buyers known at that snapshot (events before it)
//! and nothing later. The served scorer carries the fit at the as-of time, which the value
//! model reuses (one fit, not two). The candidate models are then chosen on held-out users as
//! before: the features enter both candidates, and the better validation AUC wins.

use super::super::config::{PurchaseCandidates, ValidTrainParams};
use super::windows::{PurchaseFits, Snapshots, Windows};
use crate::features::Feature;
use crate::features::{known_at, Timestamp, UserAggregate};
use crate::model::btyd::{Customer, PurchaseFeatures};
use crate::model::tiers::mix64;

/// The engagement features: with any of them in the data, `auto` leaves the purchase
/// candidates out (see [`PurchaseCandidates::Auto`]).
const ENGAGEMENT: [Feature; 5] = [
    Feature::WatchMinutes,
    Feature::Sessions,
    Feature::Comments,
    Feature::Likes,
    Feature::Shares,
];

/// Users with at least one repeat order day needed at each fitted snapshot.
pub(crate) const MIN_REPEAT_BUYERS: usize = 200;
/// Buyers the BTYD models are fitted on at most: beyond it, a sample keyed by the user id's
/// hash (independent of input order). Four (BG/NBD) or three (Gamma-Gamma) parameters are
/// pinned down long before 100,000 buyers; the cap keeps the fits' cost flat at 1M users.
pub(crate) const MAX_FIT_BUYERS: usize = 100_000;
/// Salt of the keyed buyer sample.
const FIT_SAMPLE_SALT: u64 = 0xB7D;

/// The BTYD summaries of the buyers known at `t` (aggregates built from events before `t`),
/// in user order; more than [`MAX_FIT_BUYERS`] are thinned to about that many by the hash of
/// their key (`keys[u]`, the users' sampling keys).
pub(crate) fn customers_at(aggs: &[UserAggregate], keys: &[u64], t: Timestamp) -> Vec<Customer> {
    let all: Vec<(usize, Customer)> = aggs
        .iter()
        .enumerate()
        .filter(|(_, a)| known_at(a, t))
        .filter_map(|(u, a)| Customer::of(a, t).map(|c| (u, c)))
        .collect();
    if all.len() <= MAX_FIT_BUYERS {
        return all.into_iter().map(|(_, c)| c).collect();
    }
    let keep = MAX_FIT_BUYERS as f64 / all.len() as f64;
    all.into_iter()
        .filter(|&(u, _)| {
            let h = mix64(keys.get(u).copied().unwrap_or(u as u64) ^ FIT_SAMPLE_SALT);
            ((h >> 11) as f64 / (1u64 << 53) as f64) < keep
        })
        .map(|(_, c)| c)
        .collect()
}

/// Fits the BG/NBD at every snapshot when the data supports the purchase candidates, and
/// removes them from `snap.features` (into `snap.left_out`) when it does not.
pub(crate) fn fit_purchases(
    w: &Windows,
    snap: &mut Snapshots,
    params: &ValidTrainParams,
) -> PurchaseFits {
    fit_purchases_with(
        w,
        snap,
        params.horizon_days,
        params.churn.purchase_candidates,
    )
}

/// [`fit_purchases`] with the horizon and the [`PurchaseCandidates`] setting given.
pub(crate) fn fit_purchases_with(
    w: &Windows,
    snap: &mut Snapshots,
    horizon_days: u32,
    mode: PurchaseCandidates,
) -> PurchaseFits {
    if !snap.features.features.iter().any(|f| f.is_purchase()) {
        return PurchaseFits::default();
    }
    let off = match mode {
        PurchaseCandidates::Never => Some("switched off ([churn] purchase_candidates = \"never\")"),
        PurchaseCandidates::Auto if snap.features.features.iter().any(|f| ENGAGEMENT.contains(f)) => {
            Some("the data holds engagement events, where they lowered the out-of-time AUC ([churn] purchase_candidates = \"always\" keeps them)")
        }
        _ => None,
    };
    if let Some(why) = off {
        for f in snap.features.without_purchase() {
            snap.left_out.push((f, why));
        }
        return PurchaseFits::default();
    }
    let mut at: Vec<(&[UserAggregate], Timestamp)> = Vec::new();
    if let (Some(t), Some(aggs)) = (w.snap_a, snap.aggs_a.as_deref()) {
        at.push((aggs, t));
    }
    at.push((&snap.aggs_b, w.snap_b));
    at.push((&snap.aggs_now, w.as_of));
    let customers: Vec<Vec<Customer>> = at
        .iter()
        .map(|&(a, t)| customers_at(a, &snap.keys, t))
        .collect();
    let repeat = |cs: &Vec<Customer>| cs.iter().filter(|c| c.frequency >= 1.0).count();
    let fewest = customers.iter().map(repeat).min().unwrap_or(0);
    let reason = if fewest < MIN_REPEAT_BUYERS {
        Some("fewer than 200 repeat buyers at a training snapshot")
    } else {
        None
    };
    // Each snapshot's fit starts from the previous one's (the data differ by one horizon).
    let fits: Option<Vec<PurchaseFeatures>> = match reason {
        Some(_) => None,
        None => {
            let mut fits: Vec<PurchaseFeatures> = Vec::with_capacity(customers.len());
            for cs in &customers {
                let start = fits.last().map(|p| &p.bgnbd);
                match PurchaseFeatures::fit_from(cs, start, f64::from(horizon_days)) {
                    Ok(p) => fits.push(p),
                    Err(_) => break,
                }
            }
            (fits.len() == customers.len()).then_some(fits)
        }
    };
    let Some(mut fits) = fits else {
        let why = reason.unwrap_or("the BG/NBD fit did not converge at a training snapshot");
        for f in snap.features.without_purchase() {
            snap.left_out.push((f, why));
        }
        return PurchaseFits::default();
    };
    let now = fits.pop();
    let b = fits.pop();
    let a = fits.pop();
    PurchaseFits { a, b, now }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{EventTable, Feature, DAY};
    use crate::generate::{generate_table, GenerateParams};
    use crate::train::source::TrainData;
    use crate::train::stages::windows::{snapshots, windows};

    fn retain<T>(v: &mut Vec<T>, keep: &[bool]) {
        let mut i = 0;
        v.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// Keeps the rows of `t` whose `keep` is true, in every per-row column.
    fn retain_rows(t: &mut EventTable, keep: &[bool]) {
        retain(&mut t.user, keep);
        retain(&mut t.ts, keep);
        retain(&mut t.kind, keep);
        retain(&mut t.amount, keep);
        retain(&mut t.watch_seconds, keep);
        retain(&mut t.room, keep);
        retain(&mut t.category, keep);
        retain(&mut t.order, keep);
        retain(&mut t.channel, keep);
    }

    fn generated() -> EventTable {
        let end = 1_780_000_000 - 1_780_000_000 % DAY;
        let params = GenerateParams::new(end)
            .users(3000)
            .days(180)
            .seed(5)
            .check()
            .unwrap();
        generate_table(&params).0
    }

    /// Point in time: snapshot B's BG/NBD is the fit on the buyers known at B, and the same
    /// whether or not the table holds the events after B.
    #[test]
    fn each_snapshots_bgnbd_is_fitted_on_events_before_that_snapshot_only() {
        let table = generated();
        let w = windows(&table, None, 30, &mut Vec::new()).unwrap();
        let mut snap = snapshots(&table, &w).unwrap();
        let fits = fit_purchases_with(&w, &mut snap, 30, PurchaseCandidates::Always);
        for f in Feature::PURCHASE {
            assert!(snap.features.position(f).is_some(), "{f:?} left out");
        }
        let (a, b, now) = (fits.a.unwrap(), fits.b.unwrap(), fits.now.unwrap());
        assert!(a != b && b != now, "{a:?} {b:?} {now:?}");
        assert_eq!(b.horizon_days, 30.0);

        let mut early = table.clone();
        let keep: Vec<bool> = table.ts.iter().map(|&t| t < w.snap_b).collect();
        assert!(keep.iter().any(|k| !k), "the table has events after B");
        retain_rows(&mut early, &keep);
        let aggs_b = early.aggregates(&[w.snap_b]).unwrap().pop().unwrap();
        let start = Some(&a.bgnbd);
        let cs = customers_at(&aggs_b, &snap.keys, w.snap_b);
        let refit = PurchaseFeatures::fit_from(&cs, start, 30.0).unwrap();
        assert_eq!(refit, b);
        // And a cold fit on the same buyers agrees with the warm one.
        let cold = PurchaseFeatures::fit(&cs, 30.0).unwrap().bgnbd;
        let pairs = [
            (cold.r, b.bgnbd.r),
            (cold.alpha, b.bgnbd.alpha),
            (cold.a, b.bgnbd.a),
        ];
        for (c, want) in pairs {
            assert!((c - want).abs() <= 1e-3 * want, "{cold:?} vs {:?}", b.bgnbd);
        }
    }

    /// `[churn] purchase_candidates`: `never` leaves them out everywhere, `auto` only on data
    /// with engagement events, each with its reason in `left_out`.
    #[test]
    fn the_setting_decides_where_the_purchase_candidates_are_offered() {
        let full = generated();
        let mut orders_only = full.clone();
        let keep: Vec<bool> = full
            .kind
            .iter()
            .map(|&k| k == crate::features::EventKind::Order)
            .collect();
        retain_rows(&mut orders_only, &keep);
        let cases = [
            (&full, PurchaseCandidates::Never, Some("switched off")),
            (
                &orders_only,
                PurchaseCandidates::Never,
                Some("switched off"),
            ),
            (&full, PurchaseCandidates::Auto, Some("engagement events")),
            (&orders_only, PurchaseCandidates::Auto, None),
        ];
        for (table, mode, reason) in cases {
            let w = windows(table, None, 30, &mut Vec::new()).unwrap();
            let mut snap = snapshots(table, &w).unwrap();
            let fits = fit_purchases_with(&w, &mut snap, 30, mode);
            let offered = snap
                .features
                .features
                .iter()
                .filter(|f| f.is_purchase())
                .count();
            let why: Vec<&str> = snap
                .left_out
                .iter()
                .filter(|(f, _)| f.is_purchase())
                .map(|(_, r)| *r)
                .collect();
            let case = format!("{mode:?}, {} events", table.len());
            match reason {
                Some(r) => {
                    assert_eq!((offered, why.len()), (0, 4), "{case}");
                    assert!(why.iter().all(|w| w.contains(r)), "{case}: {why:?}");
                    assert!(fits.now.is_none(), "{case}");
                }
                None => {
                    assert_eq!((offered, why.len()), (4, 0), "{case}: {why:?}");
                    assert!(fits.now.is_some(), "{case}");
                }
            }
        }
    }

    /// Too few repeat buyers: the candidates are left out with the reason, nothing is fitted.
    #[test]
    fn the_purchase_candidates_are_left_out_without_enough_repeat_buyers() {
        let mut table = generated();
        // Keep each user's first order only: no repeat buyer anywhere.
        let mut seen = vec![false; table.user_ids.len()];
        let keep: Vec<bool> = (0..table.len())
            .map(|i| {
                let u = table.user[i] as usize;
                if table.kind[i] != crate::features::EventKind::Order {
                    return true;
                }
                !std::mem::replace(&mut seen[u], true)
            })
            .collect();
        retain_rows(&mut table, &keep);
        let w = windows(&table, None, 30, &mut Vec::new()).unwrap();
        let mut snap = snapshots(&table, &w).unwrap();
        let fits = fit_purchases_with(&w, &mut snap, 30, PurchaseCandidates::Always);
        assert!(fits.a.is_none() && fits.b.is_none() && fits.now.is_none());
        assert!(snap.features.features.iter().all(|f| !f.is_purchase()));
        let why: Vec<_> = snap
            .left_out
            .iter()
            .filter(|(f, _)| f.is_purchase())
            .collect();
        assert_eq!(why.len(), 4);
        assert!(
            why.iter().all(|(_, r)| r.contains("repeat buyers")),
            "{why:?}"
        );
    }
}
