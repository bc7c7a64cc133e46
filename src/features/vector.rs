//! Point-in-time feature vectors: what a user looks like *as of* a time `t`.
//!
//! A vector is read off a [`UserAggregate`] built from events strictly before `t`; nothing here
//! looks at events, so nothing after `t` can leak in as long as the aggregate was built that way
//! (see [`super::build_aggregates`]).

use super::aggregate::UserAggregate;
use super::event::{EventKind, Timestamp, DAY};
use super::table::ColumnsPresent;
use serde::{Deserialize, Serialize};

/// Every feature the product knows. A model uses the subset its data supports ([`FeatureSet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Days since the last order (never ordered: days since tenure start).
    RecencyDays,
    /// Number of orders.
    Frequency,
    /// Net spend: orders minus refunds, floored at 0.
    MonetaryTotal,
    /// Average net order value: net spend over orders (0 without orders).
    MonetaryAvg,
    /// Days since registration (or first event).
    TenureDays,
    /// Days since the last event of any kind.
    DaysSinceActivity,
    /// Total live-room watch time, minutes.
    WatchMinutes,
    /// Live-room views.
    Sessions,
    Comments,
    Likes,
    Shares,
    /// Distinct live rooms visited (sketch estimate).
    Rooms,
    /// Distinct categories touched (sketch estimate).
    Categories,
    /// ln((events in the last 4 weeks + 1) / (events in the 4 weeks before + 1)).
    Trend,
    /// Money returned over order spend, in [0, 1] (needs refund events).
    RefundShare,
    /// Orders fully refunded through linked refunds (needs refund events).
    OrdersRefunded,
    /// Purchase rhythm: mean days between order days, `t_x / x` over the BTYD summary (see
    /// [`purchase_summary`]); a one-order-day buyer: the days since that order (no second order
    /// in that time: a lower bound of the gap); 0 without orders.
    MeanOrderGapDays,
    /// Days since the last order over the user's own mean gap: how many of their own gaps
    /// they are late (1 for a one-order-day buyer; 0 without orders).
    RecencyOverGap,
    /// BG/NBD P(alive) as of `t` (0 without orders). Model-derived: [`Feature::value`] gives 0;
    /// the model layer fills it from the fitted BG/NBD (`model::btyd::PurchaseFeatures`).
    BgnbdPAlive,
    /// BG/NBD expected orders in the churn horizon after `t` (0 without orders). Model-derived
    /// like [`Feature::BgnbdPAlive`].
    BgnbdExpectedOrders,
}

/// How a feature is transformed before scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// ln(1 + x): for heavy-tailed, non-negative quantities (spend, counts, durations).
    Log1p,
    Identity,
}

impl Transform {
    #[inline]
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Log1p => x.max(0.0).ln_1p(),
            Transform::Identity => x,
        }
    }

    #[inline]
    pub fn invert(self, y: f64) -> f64 {
        match self {
            Transform::Log1p => y.exp_m1(),
            Transform::Identity => y,
        }
    }
}

/// A user's BTYD purchase summary as of `t`, in whole days (UTC day numbers):
/// `(x, t_x, T)` = (order days − 1, first to last order day, first order day to the last day
/// observed). The data as of `t` holds the events before `t`, so the last day observed is the
/// day of `t − 1 s` (as of midnight: the day before), as `lifetimes` counts `T` up to its
/// `observation_period_end` day. Both count from the first *order* day
/// (`UserAggregate::first_order_day`), as `lifetimes`' `summary_data_from_transaction_data`
/// counts from the first purchase: the weeks a user watched before buying are not purchase
/// history. Where that day is unknown (a buyer read from a layout before format 5 or a
/// warehouse table before schema version 3: `UNKNOWN_DAY`) or does not lie between the first
/// event and the last order (an order before 1970, saturated to day 0), the first *seen* day
/// stands in for it (exact on an orders-only log, earlier by the browsing before the first
/// order otherwise). `None` without orders.
#[inline]
pub fn purchase_summary(a: &UserAggregate, t: Timestamp) -> Option<(f64, f64, f64)> {
    if a.orders == 0 || a.order_days == 0 {
        return None;
    }
    let last = a.last_order.div_euclid(DAY);
    let seen = a.first_seen.min(a.last_order).div_euclid(DAY);
    // `first_order_day` is `day_u32(ts)` = `ts.div_euclid(DAY)` clamped into `u32`: the same
    // day number as these `i64` days wherever it was not clamped (the range check).
    let known = i64::from(a.first_order_day);
    let first = if a.first_order_day < UserAggregate::UNKNOWN_DAY && (seen..=last).contains(&known)
    {
        known
    } else {
        seen
    };
    let now = (t - 1).div_euclid(DAY).max(last);
    Some((
        f64::from(a.order_days - 1),
        (last - first) as f64,
        (now - first) as f64,
    ))
}

impl Feature {
    /// The purchase candidates ([`Feature::MeanOrderGapDays`] to
    /// [`Feature::BgnbdExpectedOrders`]): kept only when training finds enough repeat buyers
    /// (and the BG/NBD fits) at every snapshot it fits on.
    pub const PURCHASE: [Feature; 4] = [
        Feature::MeanOrderGapDays,
        Feature::RecencyOverGap,
        Feature::BgnbdPAlive,
        Feature::BgnbdExpectedOrders,
    ];

    /// Whether the value needs a fitted model (the BG/NBD features).
    pub fn is_model_derived(self) -> bool {
        matches!(self, Feature::BgnbdPAlive | Feature::BgnbdExpectedOrders)
    }

    /// Whether the feature is one of [`Feature::PURCHASE`]: churn inputs only, never tier
    /// (clustering) dimensions.
    pub fn is_purchase(self) -> bool {
        Feature::PURCHASE.contains(&self)
    }

    pub const ALL: [Feature; 20] = [
        Feature::RecencyDays,
        Feature::Frequency,
        Feature::MonetaryTotal,
        Feature::MonetaryAvg,
        Feature::TenureDays,
        Feature::DaysSinceActivity,
        Feature::WatchMinutes,
        Feature::Sessions,
        Feature::Comments,
        Feature::Likes,
        Feature::Shares,
        Feature::Rooms,
        Feature::Categories,
        Feature::Trend,
        Feature::RefundShare,
        Feature::OrdersRefunded,
        Feature::MeanOrderGapDays,
        Feature::RecencyOverGap,
        Feature::BgnbdPAlive,
        Feature::BgnbdExpectedOrders,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::RecencyDays => "recency_days",
            Feature::Frequency => "frequency",
            Feature::MonetaryTotal => "monetary_total",
            Feature::MonetaryAvg => "monetary_avg",
            Feature::TenureDays => "tenure_days",
            Feature::DaysSinceActivity => "days_since_activity",
            Feature::WatchMinutes => "watch_minutes",
            Feature::Sessions => "sessions",
            Feature::Comments => "comments",
            Feature::Likes => "likes",
            Feature::Shares => "shares",
            Feature::Rooms => "rooms",
            Feature::Categories => "categories",
            Feature::Trend => "trend",
            Feature::RefundShare => "refund_share",
            Feature::OrdersRefunded => "orders_refunded",
            Feature::MeanOrderGapDays => "mean_order_gap_days",
            Feature::RecencyOverGap => "recency_over_gap",
            Feature::BgnbdPAlive => "bgnbd_p_alive",
            Feature::BgnbdExpectedOrders => "bgnbd_expected_orders",
        }
    }

    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn transform(self) -> Transform {
        match self {
            Feature::Trend | Feature::RefundShare | Feature::BgnbdPAlive => Transform::Identity,
            _ => Transform::Log1p,
        }
    }

    /// The value in original units as of `t`.
    #[inline]
    pub fn value(self, a: &UserAggregate, t: Timestamp) -> f64 {
        let days_since = |ts: Timestamp| -> f64 {
            if ts == UserAggregate::NONE {
                0.0
            } else {
                ((t - ts) as f64 / DAY as f64).max(0.0)
            }
        };
        let tenure = a.tenure_start().map_or(0.0, days_since);
        match self {
            Feature::RecencyDays => {
                if a.last_order == UserAggregate::NONE {
                    tenure
                } else {
                    days_since(a.last_order)
                }
            }
            Feature::Frequency => f64::from(a.orders),
            Feature::MonetaryTotal => a.net_spend(),
            Feature::MonetaryAvg => {
                if a.orders == 0 {
                    0.0
                } else {
                    a.net_spend() / f64::from(a.orders)
                }
            }
            Feature::TenureDays => tenure,
            Feature::DaysSinceActivity => {
                if a.has_activity() {
                    days_since(a.last_activity)
                } else {
                    tenure
                }
            }
            Feature::WatchMinutes => a.watch_seconds as f64 / 60.0,
            Feature::Sessions => f64::from(a.views),
            Feature::Comments => f64::from(a.comments),
            Feature::Likes => f64::from(a.likes),
            Feature::Shares => f64::from(a.shares),
            Feature::Rooms => a.distinct_rooms(),
            Feature::Categories => a.distinct_categories(),
            Feature::Trend => {
                let (recent, prior) = a.trend_windows(t);
                (f64::from(recent) + 1.0).ln() - (f64::from(prior) + 1.0).ln()
            }
            Feature::RefundShare => a.refund_share(),
            Feature::OrdersRefunded => f64::from(a.orders_refunded),
            Feature::MeanOrderGapDays => match purchase_summary(a, t) {
                None => 0.0,
                Some((x, tx, _)) if x >= 1.0 => tx / x,
                Some((_, _, big_t)) => big_t,
            },
            Feature::RecencyOverGap => match purchase_summary(a, t) {
                None => 0.0,
                Some((x, tx, big_t)) if x >= 1.0 => (big_t - tx) / (tx / x).max(1.0),
                Some(_) => 1.0,
            },
            Feature::BgnbdPAlive | Feature::BgnbdExpectedOrders => 0.0,
        }
    }
}

/// The features a model uses, in model column order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSet {
    pub features: Vec<Feature>,
}

impl FeatureSet {
    /// Every feature read off the aggregate alone, the purchase candidates excepted.
    pub fn all() -> Self {
        FeatureSet {
            features: Feature::ALL
                .into_iter()
                .filter(|f| !f.is_purchase())
                .collect(),
        }
    }

    /// Whether any feature needs the fitted BG/NBD.
    pub fn has_model_derived(&self) -> bool {
        self.features.iter().any(|f| f.is_model_derived())
    }

    /// Removes the purchase candidates, returning them (in set order).
    pub fn without_purchase(&mut self) -> Vec<Feature> {
        let (p, rest): (Vec<Feature>, Vec<Feature>) =
            self.features.iter().partition(|f| f.is_purchase());
        self.features = rest;
        p
    }

    /// The features the data can support, and the ones left out (with the reason).
    ///
    /// Behaviour counts need events of their kind; watch time needs the `watch_seconds` column;
    /// rooms and categories need their columns; the refund features need refund events. A plain
    /// transaction log keeps the RFM, tenure, activity and trend features.
    pub(crate) fn supported_by(
        columns: ColumnsPresent,
        kinds_present: &[bool; EventKind::ALL.len()],
    ) -> (FeatureSet, Vec<(Feature, &'static str)>) {
        let has = |k: EventKind| kinds_present[k as usize];
        let mut kept = Vec::new();
        let mut left_out = Vec::new();
        for f in Feature::ALL {
            let missing: Option<&'static str> = match f {
                Feature::WatchMinutes if !columns.watch_seconds => Some("no watch_seconds column"),
                Feature::WatchMinutes | Feature::Sessions if !has(EventKind::View) => {
                    Some("no view events")
                }
                Feature::Comments if !has(EventKind::Comment) => Some("no comment events"),
                Feature::Likes if !has(EventKind::Like) => Some("no like events"),
                Feature::Shares if !has(EventKind::Share) => Some("no share events"),
                Feature::Rooms if !columns.room_id => Some("no room_id column"),
                Feature::Categories if !columns.category => Some("no category column"),
                Feature::RefundShare | Feature::OrdersRefunded if !has(EventKind::Refund) => {
                    Some("no refund events")
                }
                f if f.is_purchase() && !has(EventKind::Order) => Some("no order events"),
                _ => None,
            };
            match missing {
                Some(why) => left_out.push((f, why)),
                None => kept.push(f),
            }
        }
        (FeatureSet { features: kept }, left_out)
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name().to_string()).collect()
    }

    pub fn position(&self, f: Feature) -> Option<usize> {
        self.features.iter().position(|&g| g == f)
    }

    /// Original-unit values as of `t` into `out` (length = `len()`). No allocation.
    #[inline]
    pub fn raw_into(&self, a: &UserAggregate, t: Timestamp, out: &mut [f64]) {
        for (o, f) in out.iter_mut().zip(&self.features) {
            *o = f.value(a, t);
        }
    }

    /// Applies each feature's transform to a row of original-unit values, in place.
    #[inline]
    pub fn transform_in_place(&self, row: &mut [f64]) {
        for (o, f) in row.iter_mut().zip(&self.features) {
            *o = f.transform().apply(*o);
        }
    }

    /// Transformed (log1p etc.) values as of `t` into `out`; the scaler takes it from here.
    #[inline]
    pub fn transformed_into(&self, a: &UserAggregate, t: Timestamp, out: &mut [f64]) {
        for (o, f) in out.iter_mut().zip(&self.features) {
            *o = f.transform().apply(f.value(a, t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::event::Event;

    #[test]
    fn recency_grows_while_the_user_is_quiet() {
        let mut a = UserAggregate::default();
        let t0 = 1_700_000_000;
        a.apply(&Event {
            ts: t0,
            kind: EventKind::Order,
            amount: 20.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        });
        let r1 = Feature::RecencyDays.value(&a, t0 + DAY);
        let r10 = Feature::RecencyDays.value(&a, t0 + 10 * DAY);
        assert!((r1 - 1.0).abs() < 1e-9 && (r10 - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_transaction_log_keeps_only_what_it_supports() {
        let mut kinds = [false; EventKind::ALL.len()];
        kinds[EventKind::Order as usize] = true;
        let (set, left_out) = FeatureSet::supported_by(ColumnsPresent::default(), &kinds);
        assert_eq!(
            set.features,
            vec![
                Feature::RecencyDays,
                Feature::Frequency,
                Feature::MonetaryTotal,
                Feature::MonetaryAvg,
                Feature::TenureDays,
                Feature::DaysSinceActivity,
                Feature::Trend,
                Feature::MeanOrderGapDays,
                Feature::RecencyOverGap,
                Feature::BgnbdPAlive,
                Feature::BgnbdExpectedOrders,
            ]
        );
        assert_eq!(left_out.len(), 9);
        // Without orders the purchase candidates go too.
        let (set, _) =
            FeatureSet::supported_by(ColumnsPresent::default(), &[false; EventKind::ALL.len()]);
        assert!(set.features.iter().all(|f| !f.is_purchase()));
    }

    fn order_at(a: &mut UserAggregate, ts: Timestamp) {
        a.apply(&Event {
            ts,
            kind: EventKind::Order,
            amount: 10.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        });
    }

    #[test]
    fn the_purchase_rhythm_of_a_hand_made_history_is_its_mean_gap_and_lateness() {
        // Orders on days 0, 10, 30 (noon): two gaps, mean 15 days.
        let day0 = 20_000 * DAY + DAY / 2;
        let mut a = UserAggregate::default();
        for d in [0, 10, 30] {
            order_at(&mut a, day0 + d * DAY);
        }
        let t = day0 + 60 * DAY; // 30 days after the last order: two of their own gaps late.
        assert_eq!(purchase_summary(&a, t), Some((2.0, 30.0, 60.0)));
        // As of midnight the last day observed is the day before.
        let midnight = t - DAY / 2;
        assert_eq!(purchase_summary(&a, midnight), Some((2.0, 30.0, 59.0)));
        assert!((Feature::MeanOrderGapDays.value(&a, t) - 15.0).abs() < 1e-12);
        assert!((Feature::RecencyOverGap.value(&a, t) - 2.0).abs() < 1e-12);
        // Two orders on the same day count as one order day.
        order_at(&mut a, day0 + 30 * DAY + 3600);
        assert!((Feature::MeanOrderGapDays.value(&a, t) - 15.0).abs() < 1e-12);
        // One order day: the gap is at least the days since it, lateness 1.
        let mut one = UserAggregate::default();
        order_at(&mut one, day0);
        assert_eq!(Feature::MeanOrderGapDays.value(&one, day0 + 7 * DAY), 7.0);
        assert_eq!(Feature::RecencyOverGap.value(&one, day0 + 7 * DAY), 1.0);
        // No orders: 0, and the model-derived ones are 0 here (the model layer fills them).
        let none = UserAggregate::default();
        for f in Feature::PURCHASE {
            assert_eq!(f.value(&none, t), 0.0);
        }
        assert_eq!(Feature::BgnbdPAlive.value(&a, t), 0.0);
    }

    fn event_at(a: &mut UserAggregate, ts: Timestamp, kind: EventKind) {
        a.apply(&Event {
            ts,
            kind,
            amount: if kind == EventKind::Order { 10.0 } else { 0.0 },
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        });
    }

    /// Views 40 days before, orders on days 0, 10, 30 (noon), as of day 60.
    fn watcher_then_buyer() -> (UserAggregate, Timestamp) {
        let day0 = 20_000 * DAY + DAY / 2;
        let mut a = UserAggregate::default();
        event_at(&mut a, day0 - 40 * DAY, EventKind::View);
        event_at(&mut a, day0 - 3 * DAY, EventKind::Like);
        for d in [0, 10, 30] {
            order_at(&mut a, day0 + d * DAY);
        }
        (a, day0 + 60 * DAY)
    }

    #[test]
    fn the_purchase_summary_of_a_user_who_watched_before_buying_counts_from_the_first_order() {
        let (a, t) = watcher_then_buyer();
        assert_eq!(a.first_order_day, 20_000);
        // As lifetimes' summary_data_from_transaction_data: t_x and T from the first purchase,
        // not from the view 40 days before it.
        assert_eq!(purchase_summary(&a, t), Some((2.0, 30.0, 60.0)));
        assert!((Feature::MeanOrderGapDays.value(&a, t) - 15.0).abs() < 1e-12);
        assert!((Feature::RecencyOverGap.value(&a, t) - 2.0).abs() < 1e-12);
        // A one-order-day buyer who watched first: T from the order day.
        let mut one = UserAggregate::default();
        event_at(&mut one, 20_000 * DAY - 40 * DAY, EventKind::View);
        order_at(&mut one, 20_000 * DAY + 5);
        assert_eq!(
            purchase_summary(&one, 20_007 * DAY + 5),
            Some((0.0, 0.0, 7.0))
        );
    }

    #[test]
    fn a_buyer_whose_first_order_day_is_unknown_counts_from_the_first_event_as_before() {
        // An aggregate read from a layout before format 5 (or a warehouse table before schema
        // version 3): the first seen time stands in for the first order.
        let (mut a, t) = watcher_then_buyer();
        a.first_order_day = UserAggregate::UNKNOWN_DAY;
        assert_eq!(purchase_summary(&a, t), Some((2.0, 70.0, 100.0)));
        assert!((Feature::MeanOrderGapDays.value(&a, t) - 35.0).abs() < 1e-12);
        // A first order day that does not fit between the first event and the last order
        // (orders before 1970 saturate to day 0) falls back the same way.
        let mut old = UserAggregate::default();
        event_at(&mut old, -50 * DAY, EventKind::View);
        order_at(&mut old, -20 * DAY + 5);
        order_at(&mut old, -10 * DAY + 5);
        assert_eq!(old.first_order_day, 0);
        assert_eq!(purchase_summary(&old, 0), Some((1.0, 40.0, 49.0)));
    }

    mod any_order {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, rng_algorithm: prop::test_runner::RngAlgorithm::ChaCha, ..ProptestConfig::default() })]

            /// Orders and earlier or interleaved engagement events, in any arrival order, give
            /// the recency and age of the purchase summary from the earliest order day.
            #[test]
            fn the_purchase_summary_counts_from_the_earliest_order_day_in_any_arrival_order(
                orders in proptest::collection::vec(0i64..60, 1..12),
                views in proptest::collection::vec(0i64..90, 0..12),
                seed in any::<u64>(),
            ) {
                use rand::seq::SliceRandom;
                use rand::SeedableRng;
                let t0 = 20_000 * DAY;
                let mut events: Vec<(Timestamp, EventKind)> = orders
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| (t0 + 30 * DAY + d * DAY + i as i64 * 60, EventKind::Order))
                    .collect();
                events.extend(views.iter().map(|&d| (t0 + d * DAY + 7, EventKind::View)));
                events.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed));
                let mut a = UserAggregate::default();
                for &(ts, kind) in &events {
                    event_at(&mut a, ts, kind);
                }
                let first = 30 + orders.iter().min().copied().unwrap_or(0);
                let last = 30 + orders.iter().max().copied().unwrap_or(0);
                let t = t0 + 100 * DAY;
                let got = purchase_summary(&a, t);
                prop_assert!(got.is_some());
                let (_, t_x, age) = got.unwrap_or_default();
                prop_assert_eq!(t_x, (last - first) as f64);
                prop_assert_eq!(age, (99 - first) as f64);
            }
        }
    }

    #[test]
    fn log1p_round_trips() {
        for x in [0.0, 1.0, 37.5, 1e6] {
            let t = Transform::Log1p;
            assert!((t.invert(t.apply(x)) - x).abs() < 1e-6 * (1.0 + x));
        }
    }
}
