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
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Order,
        EventKind::View,
        EventKind::Comment,
        EventKind::Like,
        EventKind::Share,
        EventKind::Follow,
        EventKind::Gift,
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
    "unknown event kind {0:?} (expected one of order, view, comment, like, share, follow, gift)"
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
    /// Order value; 0 for other kinds.
    pub amount: f64,
    /// Time spent in a live room (views); 0 when unknown.
    pub watch_seconds: u32,
    /// `hash_str(room_id)`, 0 when absent.
    pub room: u32,
    /// `hash_str(category)`, 0 when absent.
    pub category: u32,
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
