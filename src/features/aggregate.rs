//! Per-user aggregates: everything the features need, in 304 bytes a user in memory (296
//! before the first order day, 232 before interests, channels and rooms; ~120 before refunds;
//! the refund part is ~13 bytes serialised for a user with no order ids).
//!
//! Applying events is order-independent in every field but two, so the training sweep (events
//! in file order) and the server (events as they arrive, possibly late) build nearly the same
//! state:
//! - independent of order: the times (`first_seen`, `last_order`, `last_activity`), the counts
//!   (`orders`, `views`, `comments`, `likes`, `shares`, `follows`, `gifts`), `watch_seconds`
//!   (saturating sums of non-negative values), the room and category sketches (bitwise or), and
//!   the weekly trend counts (`week_anchor`, `weekly`: the latest week and the counts of the
//!   weeks before it), the first order day and its spend (`first_order_day`,
//!   `first_day_cents`: the earliest day wins, orders on it are summed in integer cents);
//! - `spend` is a floating-point sum, equal up to rounding in the last bits;
//! - `order_days` counts distinct order days exactly only when orders arrive in day order. An
//!   order counts a new day unless its day is the latest order day seen so far, so an order that
//!   arrives after a later day's order counts its day again even if that day was counted before:
//!   out of order, `order_days` can over-count (never under-count), and is at most `orders`.
//!
//! - refund linking depends on arrival order: a refund links to its order only if the order was
//!   applied before it (see "Refunds" below).
//!
//! # Refunds
//!
//! A refund (`EventKind::Refund`) is money returned. Its rules, the same in training and in the
//! server (both call [`UserAggregate::apply`]):
//! - it counts against spend in full: net spend ([`UserAggregate::net_spend`]) is gross order
//!   spend minus refunds, floored at 0. A refund larger than its order still counts in full (the
//!   money did go back); the floor keeps net spend from going negative;
//! - it is not an order: `orders`, `order_days` and `last_order` do not move, and the churn label
//!   ("no order in the horizon") ignores it. It is activity (first/last seen, the weekly trend);
//! - it belongs to the time it happens: a refund after a snapshot's time is not in that
//!   snapshot's aggregate (no look-ahead), even if its order is;
//! - linking: a refund with an `order_id` links to the order with that id if the order is one
//!   of the user's last [`LINKED_ORDERS`] orders with an id, at most [`REFUND_LINK_DAYS`] days
//!   before the refund, and was applied before it. An order is *fully refunded* once its linked
//!   refunds reach its amount (any linked refund fully refunds a zero-amount order). A refund
//!   with an id that links to nothing is an *orphan* (`orphan_refunds`, reported); a refund
//!   without an id is unlinked. Orphan and unlinked refunds still count against spend.
//!
//! The per-order memory is the fixed array `recent_orders` (so the aggregate stays `Copy` and
//! bounded): an order with an id takes an empty slot, else one older than the window, else the
//! one remembered longest (the occupied slots are kept in the order they were taken, so in a
//! time-ordered sweep the memory is the last [`LINKED_ORDERS`] order ids; before this rule the
//! oldest by day was given up, ties broken by slot position, which SQL cannot reproduce).
//! Serialised, only the occupied slots are written, in that order.
//!
//! # Interests, rooms and channels
//!
//! `interests` holds the user's top categories by a time-decayed score and `rooms` the top
//! live rooms by the same score (see [`super::interests`]: exact and order-independent up to
//! [`super::interests::INTEREST_SLOTS`] categories and [`super::interests::ROOM_SLOTS`] rooms,
//! a stated bound beyond); `channels` the events and order spend per channel (see
//! [`super::channel`]: exact and order-independent). Issue 14's memory budget is 64 bytes a
//! user; the layout uses exactly that, inline (no heap), `Copy`:
//!
//! | part | layout | bytes |
//! | --- | --- | --- |
//! | `interests` | 3 × (`u32` category hash, `f32` level) | 24 |
//! | `rooms` | 2 × (`u32` room hash, `f32` level) | 16 |
//! | `channels` | 3 × `u32` cents, 3 × `u16` events, `u8` used, 2 × `u8` slot codes, 3 padding | 24 |
//!
//! (format 3 held 4 category slots, 32 bytes, and `u32` channel events, 28: 60 bytes before
//! rooms, which did not fit another 16.) No model feature reads them unless the data carries
//! channels.
//!
//! # First order day
//!
//! `first_order_day` and `first_day_cents` (layout format 5) hold the earliest order day and
//! the gross spend of every order on it: what `lifetimes`' Gamma-Gamma leaves out of a
//! customer's mean (its mean covers the repeat order days only, same-day orders merged). An
//! order on an earlier day than the one held replaces it, one on the same day adds to it, so
//! the result does not depend on arrival order. Refunds do not move them: a customer's refunds
//! are spread over the order days in proportion to their gross spend
//! ([`UserAggregate::first_and_repeat_spend`]; a refund links to an order id, not to a day, and
//! the per-order memory is too short to place every refund). An aggregate read from an earlier
//! layout (formats 1 to 4) has no first order day: a buyer's is [`UserAggregate::UNKNOWN_DAY`]
//! and stays so (a later order cannot be known to be the first), and the value model then
//! uses the mean over all their order days (`crate::model::btyd`). The first order day is also
//! where BG/NBD's recency and age start ([`super::purchase_summary`]; the first event stands in
//! where it is unknown). 8 bytes a user.
//!
//! Features are then read off the aggregate *as of* any time at or after the last applied event,
//! which is what lets a quiet user's recency grow without new data.

use super::channel::{Channel, ChannelMix};
use super::event::{Event, EventKind, Timestamp, DAY};
use super::interests::{event_level, Interests, Rooms, TopK, INTEREST_SLOTS_V3};

/// Weeks of activity history kept for the trend (recent window vs the one before).
pub(crate) const TREND_WEEKS: usize = 8;
/// Weeks in one trend window: the trend compares the last 4 weeks with the 4 before.
pub(crate) const TREND_WINDOW_WEEKS: usize = TREND_WEEKS / 2;
const WEEK: i64 = 7 * DAY;
/// Refunds link to orders at most this many days old (the bounded per-order memory).
pub const REFUND_LINK_DAYS: i64 = 90;
/// Orders with an `order_id` remembered per user for linking refunds.
pub const LINKED_ORDERS: usize = 4;

/// One remembered order, for linking refunds to it. `id == 0` is an empty slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderSlot {
    /// `hash_str(order_id)`.
    pub id: u32,
    /// Day index (ts / DAY) of the order, saturated into `u32`.
    pub day: u32,
    /// Order amount in cents (saturating).
    pub cents: u32,
    /// Refunded so far, in cents (saturating).
    pub refunded_cents: u32,
    /// The linked refunds reached the order's amount (counted in `orders_refunded` once).
    pub full: bool,
}

fn cents(amount: f64) -> u32 {
    // `as` saturates: negative and NaN become 0, huge values u32::MAX.
    (amount * 100.0).round() as u32
}

fn day_u32(ts: Timestamp) -> u32 {
    ts.div_euclid(DAY).clamp(0, i64::from(u32::MAX)) as u32
}

/// Serialises the remembered orders as a sequence of the occupied slots only (an empty memory
/// is one byte).
mod slots {
    use super::{OrderSlot, LINKED_ORDERS};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        v: &[OrderSlot; LINKED_ORDERS],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let used: Vec<OrderSlot> = v.iter().copied().filter(|o| o.id != 0).collect();
        used.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<[OrderSlot; LINKED_ORDERS], D::Error> {
        let used = Vec::<OrderSlot>::deserialize(d)?;
        if used.len() > LINKED_ORDERS {
            return Err(serde::de::Error::invalid_length(
                used.len(),
                &"at most LINKED_ORDERS remembered orders",
            ));
        }
        let mut out = [OrderSlot::default(); LINKED_ORDERS];
        out[..used.len()].copy_from_slice(&used);
        Ok(out)
    }
}

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
    /// Refund events (linked, orphan or without an order id).
    pub refunds: u32,
    /// Money returned by refunds (sum of their amounts); net spend is `spend - refunded`.
    pub refunded: f64,
    /// Orders whose linked refunds reached their amount.
    pub orders_refunded: u32,
    /// Refunds linked to a remembered order.
    pub linked_refunds: u32,
    /// Refunds with an order id that matched no remembered order (reported).
    pub orphan_refunds: u32,
    /// The per-order memory for linking refunds (module docs).
    #[serde(with = "slots")]
    pub recent_orders: [OrderSlot; LINKED_ORDERS],
    /// The top categories by time-decayed score ([`super::interests`]).
    pub interests: Interests,
    /// Events and spend per channel ([`super::channel`]).
    pub channels: ChannelMix,
    /// The top live rooms by the same score ([`super::interests`]; after the channels, so that
    /// the layout of format 3 is this one's prefix but for the category slots).
    pub rooms: Rooms,
    /// Day index (ts / DAY, saturated into `u32`) of the earliest order day: [`Self::NO_DAY`]
    /// before any order, [`Self::UNKNOWN_DAY`] for a buyer read from a layout before format 5
    /// (module docs, "First order day"). Last, with `first_day_cents`, so that format 4's
    /// layout is this one's prefix.
    pub first_order_day: u32,
    /// Gross order spend of the earliest order day, in cents (every order on that day, summed
    /// saturating; refunds do not move it). 0 when the day is unknown.
    pub first_day_cents: u32,
}

/// [`UserAggregate`]'s serialised layout before the first order day (bundle format 4, Redis
/// value format 4, embedded snapshots `TIERST04`): read so that a new binary loads what an
/// earlier one wrote. A buyer read from it has an unknown first order day
/// ([`UserAggregate::UNKNOWN_DAY`]): the value model then takes the mean over all their order
/// days as their repeat mean (module docs of `crate::model::btyd`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserAggregateV4 {
    /// The format-2 fields (postcard writes a nested struct's fields in line).
    pub v2: UserAggregateV2,
    pub interests: Interests,
    pub channels: ChannelMix,
    pub rooms: Rooms,
}

impl From<UserAggregateV4> for UserAggregate {
    fn from(v: UserAggregateV4) -> Self {
        UserAggregate {
            interests: v.interests,
            channels: v.channels,
            rooms: v.rooms,
            ..UserAggregate::from(v.v2)
        }
    }
}

impl UserAggregateV4 {
    /// The format-4 layout of `a` (the first order day dropped): what an earlier binary wrote.
    pub fn of(a: &UserAggregate) -> Self {
        UserAggregateV4 {
            v2: UserAggregateV2::of(a),
            interests: a.interests,
            channels: a.channels,
            rooms: a.rooms,
        }
    }
}

/// [`UserAggregate`]'s serialised layout before rooms (bundle format 3, Redis value format 3,
/// embedded snapshots `TIERST03`): four category slots, no rooms. Read so that a new binary
/// loads what an earlier one wrote: the three highest categories are kept (the fourth, the
/// lowest, is dropped as a fourth arrival would have evicted it), rooms start from the events
/// that follow.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserAggregateV3 {
    /// The format-2 fields (postcard writes a nested struct's fields in line, so this is the
    /// format-3 byte layout).
    pub v2: UserAggregateV2,
    pub interests: TopK<INTEREST_SLOTS_V3>,
    pub channels: ChannelMix,
}

/// [`UserAggregate`]'s serialised layout before interests and channels (bundle format 2, Redis
/// value format 2, embedded snapshots `TIERST02`): read so that a new binary loads what an
/// earlier one wrote.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserAggregateV2 {
    pub registered_at: Timestamp,
    pub first_seen: Timestamp,
    pub last_order: Timestamp,
    pub last_activity: Timestamp,
    pub orders: u32,
    pub order_days: u32,
    last_order_day: i64,
    pub spend: f64,
    pub views: u32,
    pub watch_seconds: u64,
    pub comments: u32,
    pub likes: u32,
    pub shares: u32,
    pub follows: u32,
    pub gifts: u32,
    pub room_sketch: u64,
    pub category_sketch: u64,
    pub week_anchor: i64,
    pub weekly: [u16; TREND_WEEKS],
    pub refunds: u32,
    pub refunded: f64,
    pub orders_refunded: u32,
    pub linked_refunds: u32,
    pub orphan_refunds: u32,
    #[serde(with = "slots")]
    pub recent_orders: [OrderSlot; LINKED_ORDERS],
}

impl From<UserAggregateV3> for UserAggregate {
    fn from(v: UserAggregateV3) -> Self {
        UserAggregate {
            interests: v.interests.resized(),
            channels: v.channels,
            ..UserAggregate::from(v.v2)
        }
    }
}

impl UserAggregateV3 {
    /// The format-3 layout of `a` (rooms dropped): what an earlier binary wrote.
    pub fn of(a: &UserAggregate) -> Self {
        UserAggregateV3 {
            v2: UserAggregateV2::of(a),
            interests: a.interests.resized(),
            channels: a.channels,
        }
    }
}

impl From<UserAggregateV2> for UserAggregate {
    /// No interests and no channel mix: they start from the events that follow.
    fn from(v: UserAggregateV2) -> Self {
        UserAggregate {
            registered_at: v.registered_at,
            first_seen: v.first_seen,
            last_order: v.last_order,
            last_activity: v.last_activity,
            orders: v.orders,
            order_days: v.order_days,
            last_order_day: v.last_order_day,
            spend: v.spend,
            views: v.views,
            watch_seconds: v.watch_seconds,
            comments: v.comments,
            likes: v.likes,
            shares: v.shares,
            follows: v.follows,
            gifts: v.gifts,
            room_sketch: v.room_sketch,
            category_sketch: v.category_sketch,
            week_anchor: v.week_anchor,
            weekly: v.weekly,
            refunds: v.refunds,
            refunded: v.refunded,
            orders_refunded: v.orders_refunded,
            linked_refunds: v.linked_refunds,
            orphan_refunds: v.orphan_refunds,
            recent_orders: v.recent_orders,
            first_order_day: UserAggregate::first_day_of_old_layout(v.orders),
            ..UserAggregate::default()
        }
    }
}

impl UserAggregateV2 {
    /// The format-2 layout of `a` (interests and channels dropped): what an earlier binary
    /// wrote.
    pub fn of(a: &UserAggregate) -> Self {
        UserAggregateV2 {
            registered_at: a.registered_at,
            first_seen: a.first_seen,
            last_order: a.last_order,
            last_activity: a.last_activity,
            orders: a.orders,
            order_days: a.order_days,
            last_order_day: a.last_order_day,
            spend: a.spend,
            views: a.views,
            watch_seconds: a.watch_seconds,
            comments: a.comments,
            likes: a.likes,
            shares: a.shares,
            follows: a.follows,
            gifts: a.gifts,
            room_sketch: a.room_sketch,
            category_sketch: a.category_sketch,
            week_anchor: a.week_anchor,
            weekly: a.weekly,
            refunds: a.refunds,
            refunded: a.refunded,
            orders_refunded: a.orders_refunded,
            linked_refunds: a.linked_refunds,
            orphan_refunds: a.orphan_refunds,
            recent_orders: a.recent_orders,
        }
    }
}

/// [`UserAggregate`]'s serialised layout before refunds (bundle format 1, Redis value format 1,
/// embedded snapshots `TIERST01`): read so that a new binary loads what an earlier one wrote.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserAggregateV1 {
    pub registered_at: Timestamp,
    pub first_seen: Timestamp,
    pub last_order: Timestamp,
    pub last_activity: Timestamp,
    pub orders: u32,
    pub order_days: u32,
    last_order_day: i64,
    pub spend: f64,
    pub views: u32,
    pub watch_seconds: u64,
    pub comments: u32,
    pub likes: u32,
    pub shares: u32,
    pub follows: u32,
    pub gifts: u32,
    pub room_sketch: u64,
    pub category_sketch: u64,
    pub week_anchor: i64,
    pub weekly: [u16; TREND_WEEKS],
}

impl From<UserAggregateV1> for UserAggregate {
    fn from(v: UserAggregateV1) -> Self {
        UserAggregate {
            registered_at: v.registered_at,
            first_seen: v.first_seen,
            last_order: v.last_order,
            last_activity: v.last_activity,
            orders: v.orders,
            order_days: v.order_days,
            last_order_day: v.last_order_day,
            spend: v.spend,
            views: v.views,
            watch_seconds: v.watch_seconds,
            comments: v.comments,
            likes: v.likes,
            shares: v.shares,
            follows: v.follows,
            gifts: v.gifts,
            room_sketch: v.room_sketch,
            category_sketch: v.category_sketch,
            week_anchor: v.week_anchor,
            weekly: v.weekly,
            first_order_day: UserAggregate::first_day_of_old_layout(v.orders),
            ..UserAggregate::default()
        }
    }
}

impl UserAggregateV1 {
    /// The old layout of `a` (its refund part dropped): what an earlier binary wrote.
    pub fn of(a: &UserAggregate) -> Self {
        UserAggregateV1 {
            registered_at: a.registered_at,
            first_seen: a.first_seen,
            last_order: a.last_order,
            last_activity: a.last_activity,
            orders: a.orders,
            order_days: a.order_days,
            last_order_day: a.last_order_day,
            spend: a.spend,
            views: a.views,
            watch_seconds: a.watch_seconds,
            comments: a.comments,
            likes: a.likes,
            shares: a.shares,
            follows: a.follows,
            gifts: a.gifts,
            room_sketch: a.room_sketch,
            category_sketch: a.category_sketch,
            week_anchor: a.week_anchor,
            weekly: a.weekly,
        }
    }
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
            refunds: 0,
            refunded: 0.0,
            orders_refunded: 0,
            linked_refunds: 0,
            orphan_refunds: 0,
            recent_orders: [OrderSlot::default(); LINKED_ORDERS],
            interests: Interests::default(),
            channels: ChannelMix::default(),
            rooms: Rooms::default(),
            first_order_day: Self::NO_DAY,
            first_day_cents: 0,
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
    pub const NONE: Timestamp = i64::MIN;
    /// `first_order_day` before any order.
    pub const NO_DAY: u32 = u32::MAX;
    /// `first_order_day` of a buyer read from a layout that did not hold it: it stays unknown
    /// (later orders do not set it, as they may not be the first).
    pub const UNKNOWN_DAY: u32 = u32::MAX - 1;

    /// The first order day of a user read from a layout before format 5.
    fn first_day_of_old_layout(orders: u32) -> u32 {
        if orders == 0 {
            Self::NO_DAY
        } else {
            Self::UNKNOWN_DAY
        }
    }

    /// Spend of the first order day and the net spend of the later (repeat) order days, the
    /// Gamma-Gamma inputs of `lifetimes`' standard model; `None` when the first order day is
    /// unknown (an aggregate from an older layout) or the user never ordered. Refunds are
    /// spread over the order days in proportion to their gross spend (module docs).
    pub fn first_and_repeat_spend(&self) -> Option<(f64, f64)> {
        if self.orders == 0 || self.first_order_day >= Self::UNKNOWN_DAY {
            return None;
        }
        let first = f64::from(self.first_day_cents) / 100.0;
        // In whole cents, as the first day is counted: `spend` sums amounts read as `f32`, so
        // a repeat spend of 0 would otherwise come out as a few millionths (a tiny positive
        // mean that Gamma-Gamma's likelihood takes as a real, extreme value).
        let repeat_gross = ((self.spend - first) * 100.0).round().max(0.0) / 100.0;
        let kept = if self.spend > 0.0 {
            self.net_spend() / self.spend
        } else {
            0.0
        };
        Some((first * kept, repeat_gross * kept))
    }

    /// Folds an order into the first order day: an earlier day replaces it, the same day adds
    /// to it, a later day leaves it (order-independent; an unknown day stays unknown).
    fn record_first_day(&mut self, e: &Event) {
        if self.first_order_day == Self::UNKNOWN_DAY {
            return;
        }
        let day = day_u32(e.ts).min(Self::UNKNOWN_DAY - 1);
        let c = cents(e.amount);
        match day.cmp(&self.first_order_day) {
            std::cmp::Ordering::Less => {
                self.first_order_day = day;
                self.first_day_cents = c;
            }
            std::cmp::Ordering::Equal => {
                self.first_day_cents = self.first_day_cents.saturating_add(c);
            }
            std::cmp::Ordering::Greater => {}
        }
    }

    pub fn with_registration(registered_at: Option<Timestamp>) -> Self {
        UserAggregate {
            registered_at: registered_at.unwrap_or(Self::NONE),
            ..Default::default()
        }
    }

    /// Sets the latest order day from `last_order`: what a sweep in time order leaves, for an
    /// aggregate rebuilt from its columns (the aggregates table, `crate::io::aggregates`).
    pub fn restore_last_order_day(&mut self) {
        self.last_order_day = if self.last_order == Self::NONE {
            i64::MIN
        } else {
            self.last_order.div_euclid(DAY)
        };
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
                self.remember_order(e);
                self.record_first_day(e);
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
            EventKind::Refund => self.apply_refund(e),
        }
        if e.room != 0 {
            self.room_sketch |= sketch_bit(e.room);
        }
        if e.category != 0 {
            self.category_sketch |= sketch_bit(e.category);
        }
        // One level for both structures (the same weight and time).
        if let Some(level) = event_level(e) {
            self.interests.record_level(e.category, level);
            self.rooms.record_level(e.room, level);
        }
        let order_cents = if e.kind == EventKind::Order {
            cents(e.amount)
        } else {
            0
        };
        self.channels
            .apply(Channel::from_code(e.channel), order_cents);
        self.count_week(e.ts.div_euclid(WEEK));
    }

    /// Net spend: order spend minus refunds, floored at 0 (the monetary features and RFM).
    pub fn net_spend(&self) -> f64 {
        (self.spend - self.refunded).max(0.0)
    }

    /// Share of spend returned, in [0, 1]: refunds over order spend (1 when money was returned
    /// with no spend on record, e.g. refunds of orders before the data starts).
    pub fn refund_share(&self) -> f64 {
        if self.refunded <= 0.0 {
            0.0
        } else if self.spend <= 0.0 {
            1.0
        } else {
            (self.refunded / self.spend).min(1.0)
        }
    }

    /// A buyer for the rule-based views (`non_buyer`, `new`): at least one order, and not every
    /// order refunded: not all of them fully refunded through links, and net spend above 0 when
    /// there was spend.
    pub fn is_buyer(&self) -> bool {
        self.orders > self.orders_refunded && !(self.spend > 0.0 && self.net_spend() <= 0.0)
    }

    fn remember_order(&mut self, e: &Event) {
        if e.order == 0 {
            return;
        }
        let day = day_u32(e.ts);
        if let Some(slot) = self.recent_orders.iter_mut().find(|o| o.id == e.order) {
            // The same order id again (an order written in lines): one order to link to.
            slot.cents = slot.cents.saturating_add(cents(e.amount));
            slot.day = slot.day.max(day);
            return;
        }
        // The occupied slots are a prefix, in the order they were taken (the serialised form
        // keeps it): a full memory gives up a slot older than the window if there is one, else
        // the order remembered longest. Applied in time order, the memory is therefore exactly
        // the user's last LINKED_ORDERS order ids, the rule the warehouse SQL reproduces
        // (sql/10_refund_links.sql).
        let mut used = self.recent_orders.iter().take_while(|o| o.id != 0).count();
        if used == LINKED_ORDERS {
            let stale = |o: &OrderSlot| i64::from(day) - i64::from(o.day) > REFUND_LINK_DAYS;
            let at = self.recent_orders.iter().position(stale).unwrap_or(0);
            self.recent_orders.copy_within(at + 1.., at);
            used = LINKED_ORDERS - 1;
        }
        self.recent_orders[used] = OrderSlot {
            id: e.order,
            day,
            cents: cents(e.amount),
            refunded_cents: 0,
            full: false,
        };
    }

    fn apply_refund(&mut self, e: &Event) {
        self.refunds = self.refunds.saturating_add(1);
        self.refunded += e.amount;
        if e.order == 0 {
            return;
        }
        let day = i64::from(day_u32(e.ts));
        let slot = self.recent_orders.iter_mut().find(|o| {
            o.id == e.order && (0..=REFUND_LINK_DAYS).contains(&(day - i64::from(o.day)))
        });
        let Some(slot) = slot else {
            self.orphan_refunds = self.orphan_refunds.saturating_add(1);
            return;
        };
        self.linked_refunds = self.linked_refunds.saturating_add(1);
        slot.refunded_cents = slot.refunded_cents.saturating_add(cents(e.amount));
        if !slot.full && slot.refunded_cents >= slot.cents {
            slot.full = true;
            self.orders_refunded = self.orders_refunded.saturating_add(1);
        }
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

    /// Events of every kind applied (the whole of the activity shares).
    pub fn events_total(&self) -> u64 {
        [
            self.orders,
            self.views,
            self.comments,
            self.likes,
            self.shares,
            self.follows,
            self.gifts,
            self.refunds,
        ]
        .iter()
        .map(|&c| u64::from(c))
        .sum()
    }

    /// Shares of gross order spend and of activity per channel used, live first (empty when
    /// the user's events carried no channel but live; see [`super::channel`]).
    pub fn channel_shares(&self) -> Vec<(Channel, f64, f64)> {
        let total_cents = (self.spend.max(0.0) * 100.0).round() as u64;
        self.channels.shares(self.events_total(), total_cents)
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
            order: 0,
            channel: 0,
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
        assert_eq!(
            (forward.first_order_day, forward.first_day_cents),
            (backward.first_order_day, backward.first_day_cents)
        );
        assert!(forward.first_order_day < UserAggregate::UNKNOWN_DAY);
    }

    mod first_order_day {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, rng_algorithm: prop::test_runner::RngAlgorithm::ChaCha, ..ProptestConfig::default() })]

            /// The first order day and its spend are exact whatever order the events arrive in:
            /// orders (day, cents, order id) and other events (refunds among them), shuffled,
            /// give the earliest order day and the sum of every order on it, as in time order.
            #[test]
            fn the_first_order_day_and_its_spend_are_exact_in_any_arrival_order(
                orders in proptest::collection::vec((0i64..12, 0u32..50_000, 0u32..4), 1..24),
                others in proptest::collection::vec((0i64..12, 0usize..EventKind::ALL.len()), 0..12),
                seed in any::<u64>(),
            ) {
                use rand::seq::SliceRandom;
                use rand::SeedableRng;
                let t0 = 1_700_006_400; // a midnight
                let mut events: Vec<Event> = orders
                    .iter()
                    .enumerate()
                    .map(|(i, &(d, c, id))| Event {
                        order: id,
                        ..ev(t0 + d * DAY + i as i64 * 60, EventKind::Order, f64::from(c) / 100.0)
                    })
                    .collect();
                events.extend(others.iter().map(|&(d, k)| {
                    let kind = match EventKind::ALL[k] {
                        EventKind::Order => EventKind::View,
                        kind => kind,
                    };
                    let amount = if kind == EventKind::Refund { 1.25 } else { 0.0 };
                    ev(t0 + d * DAY + 7, kind, amount)
                }));
                let first = orders.iter().map(|o| o.0).min().unwrap_or(0);
                let cents: u32 = orders.iter().filter(|o| o.0 == first).map(|o| o.1).sum();
                let mut in_time = events.clone();
                in_time.sort_by_key(|e| e.ts);
                let mut shuffled = events;
                shuffled.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed));
                let fold = |evs: &[Event]| {
                    let mut a = UserAggregate::default();
                    evs.iter().for_each(|e| a.apply(e));
                    a
                };
                let (a, b) = (fold(&in_time), fold(&shuffled));
                let day = u32::try_from((t0 + first * DAY) / DAY).unwrap_or(0);
                prop_assert_eq!((a.first_order_day, a.first_day_cents), (day, cents));
                prop_assert_eq!((b.first_order_day, b.first_day_cents), (day, cents));
                let (fa, fb) = (a.first_and_repeat_spend(), b.first_and_repeat_spend());
                let (fa, fb) = (fa.unwrap_or_default(), fb.unwrap_or_default());
                prop_assert!((fa.0 - fb.0).abs() < 1e-6 && (fa.1 - fb.1).abs() < 1e-6);
                prop_assert_eq!((a.orders, a.last_order), (b.orders, b.last_order));
            }
        }

        /// An aggregate read from an older layout keeps an unknown first order day whatever
        /// orders follow (a later order cannot be known to be the first); a non-buyer from an
        /// older layout starts its first order day with its first order.
        #[test]
        fn a_buyer_read_from_an_older_layout_keeps_an_unknown_first_order_day() {
            let t0 = 1_700_006_400;
            let mut a = UserAggregate::default();
            a.apply(&ev(t0 + 5 * DAY, EventKind::Order, 12.0));
            let mut old = UserAggregate::from(UserAggregateV4::of(&a));
            assert_eq!(old.first_order_day, UserAggregate::UNKNOWN_DAY);
            old.apply(&ev(t0, EventKind::Order, 3.0));
            old.apply(&ev(t0 + 9 * DAY, EventKind::Order, 3.0));
            assert_eq!(
                (old.first_order_day, old.first_day_cents),
                (UserAggregate::UNKNOWN_DAY, 0)
            );
            assert_eq!(old.first_and_repeat_spend(), None);
            for back in [
                UserAggregate::from(UserAggregateV1::of(&a)),
                UserAggregate::from(UserAggregateV2::of(&a)),
                UserAggregate::from(UserAggregateV3::of(&a)),
            ] {
                assert_eq!(back.first_order_day, UserAggregate::UNKNOWN_DAY);
            }
            let mut viewer = UserAggregate::default();
            viewer.apply(&ev(t0, EventKind::View, 0.0));
            let mut old = UserAggregate::from(UserAggregateV4::of(&viewer));
            assert_eq!(old.first_order_day, UserAggregate::NO_DAY);
            old.apply(&ev(t0 + DAY, EventKind::Order, 4.5));
            assert_eq!(old.first_and_repeat_spend(), Some((4.5, 0.0)));
        }
    }

    /// The memory target of issue 14: interests, rooms and the channel mix add at most 64 bytes
    /// to a user in memory (24 + 16 + 24, inline, no heap), and the aggregate stays `Copy`.
    #[test]
    fn interests_rooms_and_channels_add_at_most_64_bytes_per_user() {
        use std::mem::size_of;
        fn copy<T: Copy>() {}
        copy::<UserAggregate>();
        assert_eq!(
            (
                size_of::<Interests>(),
                size_of::<Rooms>(),
                size_of::<ChannelMix>()
            ),
            (24, 16, 24)
        );
        assert_eq!(size_of::<UserAggregateV2>(), 232);
        assert_eq!(size_of::<UserAggregateV4>(), 296);
        assert!(size_of::<UserAggregateV4>() - size_of::<UserAggregateV2>() <= 64);
        // The first order day and its spend (format 5): 8 bytes more.
        assert_eq!(size_of::<UserAggregate>(), 304);
        // Serialised, a user without categories, rooms or channels pays a few bytes.
        let a = UserAggregate::default();
        let v2 = postcard::to_stdvec(&UserAggregateV2::of(&a)).unwrap().len();
        let v4 = postcard::to_stdvec(&UserAggregateV4::of(&a)).unwrap().len();
        assert!(v4 - v2 <= 11, "{v2} -> {v4}");
        // The first order day of a non-buyer: 5 bytes (varint u32::MAX) and 1 for 0 cents.
        let v5 = postcard::to_stdvec(&a).unwrap().len();
        assert_eq!(v5 - v4, 6);
    }

    /// A format-3 aggregate (four category slots, no rooms) reads back with its three highest
    /// categories, its channel mix and no rooms; the layout is the format-3 one byte for byte.
    #[test]
    fn a_format_3_aggregate_reads_with_three_categories_and_no_rooms() {
        use super::super::interests::{TopK, INTEREST_SLOTS_V3};
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        let mut four = TopK::<INTEREST_SLOTS_V3>::default();
        for (i, kind) in [
            EventKind::Order,
            EventKind::Gift,
            EventKind::Like,
            EventKind::Comment,
        ]
        .into_iter()
        .enumerate()
        {
            let e = Event {
                category: 100 + i as u32,
                room: 200 + i as u32,
                channel: 2,
                ..ev(t0, kind, 5.0)
            };
            a.apply(&e);
            four.record(e.category, &e);
        }
        let old = UserAggregateV3 {
            v2: UserAggregateV2::of(&a),
            interests: four,
            channels: a.channels,
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        let back = UserAggregate::from(postcard::from_bytes::<UserAggregateV3>(&bytes).unwrap());
        assert_eq!(back.interests.ranked(), four.ranked()[..3].to_vec());
        assert_eq!(back.channels, a.channels);
        assert!(back.rooms.is_empty() && !a.rooms.is_empty());
        assert_eq!(UserAggregateV2::of(&back), UserAggregateV2::of(&a));
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

    fn money(ts: Timestamp, kind: EventKind, amount: f64, order: u32) -> Event {
        Event {
            order,
            ..ev(ts, kind, amount)
        }
    }

    #[test]
    fn a_refund_lowers_monetary_value_by_its_amount_and_is_not_an_order() {
        use crate::features::Feature;
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        a.apply(&money(t0, EventKind::Order, 100.0, 1));
        a.apply(&money(t0 + DAY, EventKind::Order, 60.0, 2));
        let before = Feature::MonetaryTotal.value(&a, t0 + 10 * DAY);
        a.apply(&money(t0 + 2 * DAY, EventKind::Refund, 25.0, 1));
        let t = t0 + 10 * DAY;
        assert!((before - Feature::MonetaryTotal.value(&a, t) - 25.0).abs() < 1e-9);
        assert_eq!(Feature::Frequency.value(&a, t), 2.0);
        assert_eq!(a.last_order, t0 + DAY, "a refund is not an order");
        assert!((Feature::MonetaryAvg.value(&a, t) - 135.0 / 2.0).abs() < 1e-9);
        assert!((Feature::RefundShare.value(&a, t) - 25.0 / 160.0).abs() < 1e-9);
        assert_eq!(Feature::OrdersRefunded.value(&a, t), 0.0);
        a.apply(&money(t0 + 3 * DAY, EventKind::Refund, 75.0, 1));
        assert_eq!(Feature::OrdersRefunded.value(&a, t), 1.0);
        assert_eq!((a.linked_refunds, a.orphan_refunds), (2, 0));
    }

    #[test]
    fn a_refund_larger_than_its_order_counts_in_full_and_net_spend_stops_at_zero() {
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        a.apply(&money(t0, EventKind::Order, 40.0, 9));
        a.apply(&money(t0 + DAY, EventKind::Refund, 55.0, 9));
        assert_eq!(a.refunded, 55.0);
        assert_eq!(a.net_spend(), 0.0);
        assert_eq!(a.refund_share(), 1.0);
        assert_eq!(a.orders_refunded, 1);
    }

    #[test]
    fn a_refund_after_the_snapshot_does_not_change_the_snapshots_features() {
        use crate::features::{build_aggregates, EventTable, FeatureSet};
        let t0 = 1_700_006_400;
        let mut table = EventTable::default();
        let u = table.intern("u");
        table.push(u, money(t0, EventKind::Order, 80.0, 3));
        table.push(u, money(t0 + DAY, EventKind::View, 0.0, 0));
        let snap = t0 + 5 * DAY;
        let fs = FeatureSet::all();
        let features = |table: &EventTable| {
            let aggs = build_aggregates(table, &[snap]);
            let mut out = vec![0.0; fs.len()];
            fs.raw_into(&aggs[0][0], snap, &mut out);
            out
        };
        let without = features(&table);
        table.push(u, money(snap, EventKind::Refund, 80.0, 3));
        table.push(u, money(snap + DAY, EventKind::Refund, 10.0, 0));
        assert_eq!(features(&table), without);
        let later = build_aggregates(&table, &[snap + 2 * DAY]);
        assert_eq!(
            later[0][0].net_spend(),
            0.0,
            "they count in the window they happen in"
        );
    }

    #[test]
    fn an_orphan_refund_is_counted_and_still_lowers_spend() {
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        a.apply(&money(t0, EventKind::Order, 50.0, 1));
        // An id no order had, a refund before its order arrived, one past the window.
        a.apply(&money(t0 + DAY, EventKind::Refund, 5.0, 99));
        a.apply(&money(t0 + DAY, EventKind::Refund, 5.0, 7));
        a.apply(&money(t0 + 2 * DAY, EventKind::Order, 30.0, 7));
        a.apply(&money(
            t0 + (REFUND_LINK_DAYS + 1) * DAY,
            EventKind::Refund,
            5.0,
            1,
        ));
        // No id: unlinked, not an orphan.
        a.apply(&money(t0 + 3 * DAY, EventKind::Refund, 5.0, 0));
        assert_eq!((a.refunds, a.orphan_refunds, a.linked_refunds), (4, 3, 0));
        assert!((a.net_spend() - 60.0).abs() < 1e-9);
    }

    #[test]
    fn a_user_whose_every_order_was_refunded_is_not_a_buyer() {
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        a.apply(&money(t0, EventKind::Order, 20.0, 1));
        a.apply(&money(t0 + DAY, EventKind::Order, 30.0, 2));
        assert!(a.is_buyer());
        a.apply(&money(t0 + 2 * DAY, EventKind::Refund, 20.0, 1));
        assert!(a.is_buyer());
        a.apply(&money(t0 + 2 * DAY, EventKind::Refund, 30.0, 2));
        assert!(!a.is_buyer());
        // Without order ids: everything refunded shows as net spend 0.
        let mut b = UserAggregate::default();
        b.apply(&money(t0, EventKind::Order, 20.0, 0));
        b.apply(&money(t0 + DAY, EventKind::Refund, 20.0, 0));
        assert!(!b.is_buyer());
        // A zero-amount order is still a buyer's.
        let mut c = UserAggregate::default();
        c.apply(&money(t0, EventKind::Order, 0.0, 0));
        assert!(c.is_buyer());
    }

    /// Two orders on one day, then more: the memory gives up the order remembered longest
    /// (insertion order), whatever the days, so it holds the last four order ids.
    #[test]
    fn a_full_order_memory_gives_up_the_order_remembered_longest_even_on_a_tied_day() {
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        // Order 1 and 2 on day 0 (2 placed after 1), then 3, 4, 5 on later days.
        for (i, day) in [(1u32, 0i64), (2, 0), (3, 1), (4, 2), (5, 3)] {
            a.apply(&money(
                t0 + day * DAY + i64::from(i),
                EventKind::Order,
                10.0,
                i,
            ));
        }
        let ids: Vec<u32> = a.recent_orders.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![2, 3, 4, 5], "order 1 was remembered longest");
        a.apply(&money(t0 + 5 * DAY, EventKind::Refund, 10.0, 1));
        a.apply(&money(t0 + 5 * DAY, EventKind::Refund, 10.0, 2));
        assert_eq!((a.orphan_refunds, a.linked_refunds), (1, 1));
        // Serialised and read back, the memory keeps its order.
        let back: UserAggregate = postcard::from_bytes(&postcard::to_stdvec(&a).unwrap()).unwrap();
        assert_eq!(back.recent_orders, a.recent_orders);
    }

    /// The per-order memory is bounded: the oldest order gives way, and refunds of forgotten
    /// orders are orphans. Also measures the serialised cost (README figure).
    #[test]
    fn the_order_memory_keeps_the_latest_orders_and_serialises_only_occupied_slots() {
        let t0 = 1_700_006_400;
        let mut a = UserAggregate::default();
        // The refund part: the format-2 layout over the format-1 one (interests and channels,
        // format 3, are measured by `interests_and_channels_add_at_most_64_bytes_per_user`).
        let empty = postcard::to_stdvec(&UserAggregateV2::of(&a)).unwrap().len();
        let v1 = postcard::to_stdvec(&UserAggregateV1::of(&a)).unwrap().len();
        assert_eq!(empty - v1, 13, "refund counters of a user without refunds");
        for i in 0..(LINKED_ORDERS as u32 + 2) {
            a.apply(&money(
                t0 + i64::from(i) * DAY,
                EventKind::Order,
                10.0,
                100 + i,
            ));
        }
        assert!(a.recent_orders.iter().all(|o| o.id >= 102));
        a.apply(&money(t0 + 10 * DAY, EventKind::Refund, 10.0, 100));
        a.apply(&money(t0 + 10 * DAY, EventKind::Refund, 10.0, 105));
        assert_eq!((a.orphan_refunds, a.orders_refunded), (1, 1));
        let full = postcard::to_stdvec(&a).unwrap();
        let back: UserAggregate = postcard::from_bytes(&full).unwrap();
        assert_eq!(back, a);
        let v2 = postcard::to_stdvec(&UserAggregateV2::of(&a)).unwrap();
        assert!(v2.len() - v1 <= 13 + 1 + LINKED_ORDERS * 16, "{}", v2.len());
    }
}
