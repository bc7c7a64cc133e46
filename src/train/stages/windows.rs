//! Stage 1: the time windows (snapshot times, out of time or not), the point-in-time aggregates
//! at each snapshot, and the labels of the latest labelled snapshot.

use super::super::pipeline::{user_key, TrainError};
use super::super::source::TrainData;
use super::rows::{feature_rows, Labelled};
use crate::features::time::format_rfc3339;
use crate::features::{
    known_at, ChurnDefinition, Feature, FeatureSet, Timestamp, UserAggregate, DAY,
};
use crate::model::btyd::PurchaseFeatures;

/// The snapshot times. With H the horizon:
/// `first event ... A = as_of-2H ... B = as_of-H ... as_of`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
    pub as_of: Timestamp,
    /// The label window, in seconds.
    pub horizon: Timestamp,
    /// The training snapshot of an out-of-time evaluation; `None` when the history is too short
    /// for one (the evaluation is then in time, on held-out users of `snap_b`).
    pub snap_a: Option<Timestamp>,
    /// The latest labelled snapshot: the served model is fitted on it.
    pub snap_b: Timestamp,
}

/// Places the snapshots; warns about ignored events and a history too short for out of time.
pub(crate) fn windows(
    table: &dyn TrainData,
    as_of: Option<Timestamp>,
    horizon_days: u32,
    warnings: &mut Vec<String>,
) -> Result<Windows, TrainError> {
    let (first, last) = table.span().ok_or(TrainError::NoEvents)?;
    let as_of = as_of.or(table.default_as_of()).unwrap_or(last + 1);
    let h = i64::from(horizon_days) * DAY;
    let snap_b = as_of - h;
    let snap_a = snap_b - h;
    let span_days = (as_of - first) as f64 / DAY as f64;
    if as_of <= first {
        return Err(TrainError::AsOfBeforeData {
            as_of: format_rfc3339(as_of),
            first: format_rfc3339(first),
        });
    }
    if snap_b <= first {
        return Err(TrainError::HistoryTooShort {
            horizon: horizon_days,
            span_days,
        });
    }
    if as_of <= last {
        let later = table.events_from(as_of);
        warnings.push(format!(
            "{later} events at or after --as-of {} were ignored",
            format_rfc3339(as_of)
        ));
    }
    // Out of time needs snapshot A to carry at least one horizon of history.
    let out_of_time = snap_a - first >= h;
    if !out_of_time {
        warnings.push(format!(
            "history of {span_days:.0} days is shorter than 3 x {horizon_days} days: evaluated on held-out users at one snapshot (in time), not out of time"
        ));
    }
    Ok(Windows {
        as_of,
        horizon: h,
        snap_a: out_of_time.then_some(snap_a),
        snap_b,
    })
}

/// The per-snapshot BG/NBD fits of the purchase candidates (the purchases stage); all `None`
/// when the candidates were left out.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PurchaseFits {
    pub a: Option<PurchaseFeatures>,
    pub b: Option<PurchaseFeatures>,
    pub now: Option<PurchaseFeatures>,
}

/// The features the data supports, every user's sampling key, and the aggregates at each
/// snapshot.
pub(crate) struct Snapshots {
    pub features: FeatureSet,
    /// Features the data cannot support, with the reason.
    pub left_out: Vec<(Feature, &'static str)>,
    /// Per user index: the key of order-independent sampling and splits.
    pub keys: Vec<u64>,
    pub aggs_now: Vec<UserAggregate>,
    pub aggs_b: Vec<UserAggregate>,
    /// Present when the evaluation is out of time.
    pub aggs_a: Option<Vec<UserAggregate>>,
    /// The BG/NBD of each snapshot behind the purchase candidates (none when left out).
    pub purchases: PurchaseFits,
}

/// The snapshots, with the purchase candidates' fits left empty
/// (the purchases stage, `fit_purchases`, is next).
pub(crate) fn snapshots(table: &dyn TrainData, w: &Windows) -> Result<Snapshots, TrainError> {
    let (features, left_out) = FeatureSet::supported_by(table.columns(), &table.kinds_present());
    let keys: Vec<u64> = table.user_ids().iter().map(|id| user_key(id)).collect();
    let times = match w.snap_a {
        Some(a) => vec![a, w.snap_b, w.as_of],
        None => vec![w.snap_b, w.as_of],
    };
    let mut snaps = table.aggregates(&times)?;
    let aggs_now = snaps.pop().unwrap_or_default();
    let aggs_b = snaps.pop().unwrap_or_default();
    let aggs_a = snaps.pop();
    Ok(Snapshots {
        features,
        left_out,
        keys,
        aggs_now,
        aggs_b,
        aggs_a,
        purchases: PurchaseFits::default(),
    })
}

/// The users known at `t`, their label (churned = nothing that counts in `[t, t + horizon)`),
/// their transformed features (the BG/NBD ones from `purchases`, fitted at `t`) and keys.
/// Fails when nobody is known at `t`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn label_snapshot(
    table: &dyn TrainData,
    aggs: &[UserAggregate],
    snap: &Snapshots,
    purchases: Option<&PurchaseFeatures>,
    t: Timestamp,
    horizon: Timestamp,
    definition: ChurnDefinition,
) -> Result<Labelled, TrainError> {
    let active = table.active_in_window(t, t + horizon, definition)?;
    let mut users: Vec<usize> = (0..aggs.len()).filter(|&u| known_at(&aggs[u], t)).collect();
    // Rows in the order of the users' sampling keys, not of their index: the fits (the boosted
    // trees see rows in order) then do not depend on the order users came in, which differs
    // between an events file and an aggregates table sorted by the warehouse.
    users.sort_unstable_by_key(|&u| (snap.keys[u], u));
    if users.is_empty() {
        return Err(TrainError::NoUsers(format_rfc3339(t)));
    }
    let y: Vec<bool> = users.iter().map(|&u| !active[u]).collect();
    let x = feature_rows(aggs, &users, &snap.features, purchases, t);
    let keys: Vec<u64> = users.iter().map(|&u| snap.keys[u]).collect();
    Ok(Labelled { users, x, y, keys })
}
