//! The event vocabulary of the data contract, in the form the pure code works with.
//!
//! Strings (user ids, rooms, categories) are resolved at the I/O edge: the feature code sees a
//! dense user index and stable 32-bit hashes ([`hash_str`]), which keeps the hot loops allocation-free.

use std::fmt;
use std::str::FromStr;

pub use super::hash::hash_str;

/// Seconds since the Unix epoch, UTC. Every time in the pure code is one of these.
pub type Timestamp = i64;

/// Seconds in a day, the unit most features are expressed in.
pub const DAY: i64 = 86_400;

/// The default earliest accepted event time: 2000-01-01T00:00:00Z.
///
/// The input rules, the same for training's readers (CSV and Parquet) and for the server
/// (RecordEvents, ScoreUser):
/// - An event's time must be at or after the configured earliest accepted time
///   (`earliest_event_time`, this by default). Unix 0 (1970-01-01T00:00:00Z) and year 0001 are
///   refused: they are the typical placeholders of a missing time, and an event dated there
///   would silently become a years-old event. A reader reports such a row as a bad row on its
///   `ts` column; the server answers INVALID_ARGUMENT naming `events[i].ts`.
/// - Kinds are trimmed and matched case-insensitively (`" Order "` is an order); unknown kinds
///   are refused ([`EventKind`]'s `FromStr`).
/// - A zero-amount order is valid: a free gift or a fully discounted order. It counts as an
///   order (recency, frequency), with no spend. In the API a missing amount reads as 0 (proto3
///   cannot tell them apart) and means the same; in a file an order still needs an amount
///   written, `0` included.
/// - A refund (`refund`) needs an amount too (money returned, ≥ 0) and may carry the `order_id`
///   of the order it returns; how refunds count is documented in [`super::aggregate`].
pub const DEFAULT_EARLIEST_EVENT: Timestamp = 946_684_800;

/// What happened. Unknown kinds are rejected at the edge (a typo must not silently become a
/// feature-less event).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Order,
    View,
    Comment,
    Like,
    Share,
    Follow,
    Gift,
    /// Money returned: a refund or a return, with its amount and optionally the `order_id` of
    /// the order it returns (see [`super::aggregate`] for how refunds count). Last, so that the
    /// serialised indices of the other kinds stay what they were.
    Refund,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Order,
        EventKind::View,
        EventKind::Comment,
        EventKind::Like,
        EventKind::Share,
        EventKind::Follow,
        EventKind::Gift,
        EventKind::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Order => "order",
            EventKind::View => "view",
            EventKind::Comment => "comment",
            EventKind::Like => "like",
            EventKind::Share => "share",
            EventKind::Follow => "follow",
            EventKind::Gift => "gift",
            EventKind::Refund => "refund",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the contract's kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event kind {0:?} (expected one of order, view, comment, like, share, follow, gift, refund)"
)]
pub struct UnknownKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// One event after validation, minus the user (the caller knows whose it is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub ts: Timestamp,
    pub kind: EventKind,
    /// Order value, or money returned for a refund; 0 for other kinds.
    pub amount: f64,
    /// Time spent in a live room (views); 0 when unknown.
    pub watch_seconds: u32,
    /// `hash_str(room_id)`, 0 when absent.
    pub room: u32,
    /// `hash_str(category)`, 0 when absent.
    pub category: u32,
    /// `hash_str(order_id)` of an order or refund, 0 when absent: links a refund to its order.
    pub order: u32,
    /// Where it happened: a [`super::channel::Channel`] code, 0 (unspecified, counted as live)
    /// when the data has no channel.
    pub channel: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_case_insensitively_and_reject_unknown() {
        assert_eq!("Order".parse::<EventKind>(), Ok(EventKind::Order));
        assert_eq!(" view ".parse::<EventKind>(), Ok(EventKind::View));
        assert!("purchase".parse::<EventKind>().is_err());
    }
}
