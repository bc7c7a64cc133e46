//! Per-user aggregates: everything the features need, in ~120 bytes a user.
//!
//! Applying events is order-independent in every field but two, so the training sweep (events
//! in file order) and the server (events as they arrive, possibly late) build nearly the same
//! state:
//! - independent of order: the times (`first_seen`, `last_order`, `last_activity`), the counts
//!   (`orders`, `views`, `comments`, `likes`, `shares`, `follows`, `gifts`), `watch_seconds`
//!   (saturating sums of non-negative values), the room and category sketches (bitwise or), and
//!   the weekly trend counts (`week_anchor`, `weekly`: the latest week and the counts of the
//!   weeks before it);
//! - `spend` is a floating-point sum, equal up to rounding in the last bits;
//! - `order_days` counts distinct order days exactly only when orders arrive in day order. An
//!   order counts a new day unless its day is the latest order day seen so far, so an order that
//!   arrives after a later day's order counts its day again even if that day was counted before:
//!   out of order, `order_days` can over-count (never under-count), and is at most `orders`.
//!
//! Features are then read off the aggregate *as of* any time at or after the last applied event,
//! which is what lets a quiet user's recency grow without new data.

use super::event::{Event, EventKind, Timestamp, DAY};

/// Weeks of activity history kept for the trend (recent window vs the one before).
pub(crate) const TREND_WEEKS: usize = 8;
/// Weeks in one trend window: the trend compares the last 4 weeks with the 4 before.
pub(crate) const TREND_WINDOW_WEEKS: usize = TREND_WEEKS / 2;
const WEEK: i64 = 7 * DAY;

/// Accumulated activity of one user. Sentinels instead of `Option` keep it `Copy` and compact.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserAggregate {
    /// Registration time from the users table; `NONE` when unknown (tenure then starts at the
    /// first event).
    pub registered_at: Timestamp,
    /// Earliest event, `NONE` before any.
    pub first_seen: Timestamp,
    /// Latest order, `NONE` if the user never ordered.
    pub last_order: Timestamp,
    /// Latest event of any kind, `NONE` before any.
    pub last_activity: Timestamp,
    pub orders: u32,
    /// Days with an order: the "order days" of the RFM frequency. Exactly the distinct days when
    /// orders were applied in day order; an order applied after a later day's order counts its
    /// day again (see the module docs).
    pub order_days: u32,
    /// Day index (ts / DAY) of the latest order day seen (the largest, whatever the order).
    last_order_day: i64,
    pub spend: f64,
    pub views: u32,
    pub watch_seconds: u64,
    pub comments: u32,
    pub likes: u32,
    pub shares: u32,
    pub follows: u32,
    pub gifts: u32,
    /// 64-bit linear-counting sketches of distinct rooms and categories: constant memory,
    /// mergeable, exact enough (a few %) for the small counts users have.
    pub room_sketch: u64,
    pub category_sketch: u64,
    /// Week index (ts / WEEK) of `weekly[0]`; `weekly[i]` counts events in week `anchor - i`.
    pub week_anchor: i64,
    pub weekly: [u16; TREND_WEEKS],
}

impl Default for UserAggregate {
    fn default() -> Self {
        UserAggregate {
            registered_at: Self::NONE,
            first_seen: Self::NONE,
            last_order: Self::NONE,
            last_activity: Self::NONE,
            orders: 0,
            order_days: 0,
            last_order_day: i64::MIN,
            spend: 0.0,
            views: 0,
            watch_seconds: 0,
            comments: 0,
            likes: 0,
            shares: 0,
            follows: 0,
            gifts: 0,
            room_sketch: 0,
            category_sketch: 0,
            week_anchor: i64::MIN,
            weekly: [0; TREND_WEEKS],
        }
    }
}

fn sketch_bit(hash: u32) -> u64 {
    // Mix before taking 6 bits so that similar hashes spread over the 64 slots.
    let mixed = (u64::from(hash)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    1u64 << (mixed >> 58)
}

/// Linear-counting estimate of the distinct items recorded in a 64-bit sketch.
pub(crate) fn sketch_estimate(sketch: u64) -> f64 {
    let zeros = f64::from(sketch.count_zeros());
    if zeros == 0.0 {
        // Saturated: the estimate's ceiling (64 ln 64).
        return 64.0 * (64.0f64).ln();
    }
    -64.0 * (zeros / 64.0).ln()
}

impl UserAggregate {
    /// "No such time" sentinel.
    pub(crate) const NONE: Timestamp = i64::MIN;

    pub fn with_registration(registered_at: Option<Timestamp>) -> Self {
        UserAggregate {
            registered_at: registered_at.unwrap_or(Self::NONE),
            ..Default::default()
        }
    }

    /// True once any event was applied.
    pub(crate) fn has_activity(&self) -> bool {
        self.last_activity != Self::NONE
    }

    /// Start of the user's tenure: registration, else first event.
    pub(crate) fn tenure_start(&self) -> Option<Timestamp> {
        match (self.registered_at, self.first_seen) {
            (Self::NONE, Self::NONE) => None,
            (Self::NONE, f) => Some(f),
            (r, Self::NONE) => Some(r),
            (r, f) => Some(r.min(f)),
        }
    }

    /// Folds one event in. Any order of the same events gives the same state except for
    /// `spend` (float rounding) and `order_days` (exact only for orders in day order; see the
    /// module docs).
    pub fn apply(&mut self, e: &Event) {
        if self.first_seen == Self::NONE || e.ts < self.first_seen {
            self.first_seen = e.ts;
        }
        if e.ts > self.last_activity {
            self.last_activity = e.ts;
        }
        match e.kind {
            EventKind::Order => {
                self.orders = self.orders.saturating_add(1);
                self.spend += e.amount;
                if e.ts > self.last_order {
                    self.last_order = e.ts;
                }
                // Distinct order days: exact when events arrive in time order (the common case
                // for both the sweep and the server); late orders on an already counted day are
                // recognised only when it is the latest order day.
                let day = e.ts.div_euclid(DAY);
                if day != self.last_order_day {
                    if day > self.last_order_day || self.last_order_day == i64::MIN {
                        self.last_order_day = day;
                    }
                    self.order_days = self.order_days.saturating_add(1);
                }
            }
            EventKind::View => {
                self.views = self.views.saturating_add(1);
                self.watch_seconds = self
                    .watch_seconds
                    .saturating_add(u64::from(e.watch_seconds));
            }
            EventKind::Comment => self.comments = self.comments.saturating_add(1),
            EventKind::Like => self.likes = self.likes.saturating_add(1),
            EventKind::Share => self.shares = self.shares.saturating_add(1),
            EventKind::Follow => self.follows = self.follows.saturating_add(1),
            EventKind::Gift => self.gifts = self.gifts.saturating_add(1),
        }
        if e.room != 0 {
            self.room_sketch |= sketch_bit(e.room);
        }
        if e.category != 0 {
            self.category_sketch |= sketch_bit(e.category);
        }
        self.count_week(e.ts.div_euclid(WEEK));
    }

    fn count_week(&mut self, week: i64) {
        if self.week_anchor == i64::MIN {
            self.week_anchor = week;
        }
        if week > self.week_anchor {
            let shift = (week - self.week_anchor) as usize;
            if shift >= TREND_WEEKS {
                self.weekly = [0; TREND_WEEKS];
            } else {
                self.weekly.copy_within(0..TREND_WEEKS - shift, shift);
                self.weekly[..shift].fill(0);
            }
            self.week_anchor = week;
        }
        let back = (self.week_anchor - week) as usize;
        if back < TREND_WEEKS {
            self.weekly[back] = self.weekly[back].saturating_add(1);
        }
    }

    /// Events in the recent trend window and in the one before it, as of `t`.
    pub(crate) fn trend_windows(&self, t: Timestamp) -> (u32, u32) {
        if self.week_anchor == i64::MIN {
            return (0, 0);
        }
        let shift = t.div_euclid(WEEK) - self.week_anchor;
        let (mut recent, mut prior) = (0u32, 0u32);
        for (i, &c) in self.weekly.iter().enumerate() {
            let age = i as i64 + shift.max(0);
            if age < TREND_WINDOW_WEEKS as i64 {
                recent += u32::from(c);
            } else if age < TREND_WEEKS as i64 {
                prior += u32::from(c);
            }
        }
        (recent, prior)
    }

    pub(crate) fn distinct_rooms(&self) -> f64 {
        sketch_estimate(self.room_sketch)
    }

    pub(crate) fn distinct_categories(&self) -> f64 {
        sketch_estimate(self.category_sketch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: Timestamp, kind: EventKind, amount: f64) -> Event {
        Event {
            ts,
            kind,
            amount,
            watch_seconds: 60,
            room: 7,
            category: 9,
        }
    }

    #[test]
    fn apply_is_order_independent() {
        let t0 = 1_700_000_000;
        let events: Vec<Event> = (0..40)
            .map(|i| {
                let kind = EventKind::ALL[i % EventKind::ALL.len()];
                ev(t0 + (i as i64 * 13 % 40) * DAY / 2, kind, (i as f64) * 1.5)
            })
            .collect();
        let mut forward = UserAggregate::default();
        events.iter().for_each(|e| forward.apply(e));
        let mut backward = UserAggregate::default();
        events.iter().rev().for_each(|e| backward.apply(e));
        let t = t0 + 30 * DAY;
        assert_eq!(forward.orders, backward.orders);
        assert_eq!(forward.last_order, backward.last_order);
        assert_eq!(forward.first_seen, backward.first_seen);
        assert!((forward.spend - backward.spend).abs() < 1e-9);
        assert_eq!(forward.trend_windows(t), backward.trend_windows(t));
    }

    #[test]
    fn trend_windows_age_with_the_clock() {
        let t0 = 1_700_000_000;
        let mut a = UserAggregate::default();
        for d in 0..7 {
            a.apply(&ev(t0 + d * DAY, EventKind::View, 0.0));
        }
        let (recent, prior) = a.trend_windows(t0 + 7 * DAY);
        assert_eq!((recent, prior), (7, 0));
        // Five weeks later those events sit in the prior window; nine weeks later, in none.
        let (recent, prior) = a.trend_windows(t0 + 7 * DAY + 5 * WEEK);
        assert_eq!(recent, 0);
        assert_eq!(prior, 7);
        assert_eq!(a.trend_windows(t0 + 7 * DAY + 9 * WEEK), (0, 0));
    }

    #[test]
    fn sketch_estimates_small_distinct_counts() {
        let mut s = 0u64;
        for i in 1..=10u32 {
            s |= sketch_bit(super::super::event::hash_str(&format!("room-{i}")));
        }
        let est = sketch_estimate(s);
        assert!((7.0..=14.0).contains(&est), "estimate {est}");
        assert_eq!(sketch_estimate(0), 0.0);
    }

    #[test]
    fn order_days_count_distinct_days() {
        let t0 = 1_700_006_400; // a midnight
        let mut a = UserAggregate::default();
        a.apply(&ev(t0 + 100, EventKind::Order, 10.0));
        a.apply(&ev(t0 + 200, EventKind::Order, 10.0));
        a.apply(&ev(t0 + DAY + 5, EventKind::Order, 10.0));
        assert_eq!(a.orders, 3);
        assert_eq!(a.order_days, 2);
    }

    /// What the docs say `order_days` does out of order: a late order on an earlier, already
    /// counted day counts that day again; on the latest order day it does not.
    #[test]
    fn order_days_over_count_late_orders_on_earlier_days() {
        let t0 = 1_700_006_400; // a midnight
        let mut a = UserAggregate::default();
        a.apply(&ev(t0 + 100, EventKind::Order, 10.0));
        a.apply(&ev(t0 + DAY + 5, EventKind::Order, 10.0));
        a.apply(&ev(t0 + DAY + 50, EventKind::Order, 10.0));
        assert_eq!(a.order_days, 2);
        a.apply(&ev(t0 + 200, EventKind::Order, 10.0));
        assert_eq!(a.orders, 4);
        assert_eq!(a.order_days, 3);
    }
}
