//! Features: pure code over arrays, importing nothing else of ours.
//!
//! - [`event`] — the data contract's vocabulary (`EventKind`, `Event`).
//! - [`time`] — times from flags and config ([`parse_instant`]) and the one written form
//!   ([`format_rfc3339`]).
//! - [`hash`] — stable FNV-1a hashes ([`fnv1a64`], [`hash_str`]) for keys that outlive a process.
//! - [`table`] — the columnar events table the readers fill.
//! - [`aggregate`] — per-user aggregates, the state the server keeps current.
//! - [`interests`] — per-user top categories by a time-decayed score (bounded, in the aggregate).
//! - [`channel`] — the channels events come from, and each user's channel mix.
//! - [`vector`] — point-in-time feature vectors read off an aggregate as of a time.
//! - [`snapshot`] — sweeps that build aggregates from events strictly before a time, and labels.
//! - [`scaler`] — standard scaling fitted on training rows.
//! - [`segments`] — RFM segments and lifecycle stages (rule-based views).
//! - [`vocabulary`] — kind mappings from a platform's event names to the contract's kinds.

pub mod aggregate;
pub mod channel;
pub mod event;
pub mod hash;
pub mod interests;
pub mod scaler;
pub mod segments;
pub mod snapshot;
pub mod table;
pub mod time;
pub mod vector;
pub mod vocabulary;

pub use aggregate::{
    UserAggregate, UserAggregateV1, UserAggregateV2, UserAggregateV3, UserAggregateV4,
};
pub use channel::{Channel, ChannelMix, ChannelShares};
pub use event::{Event, EventKind, Timestamp, DAY, DEFAULT_EARLIEST_EVENT};
pub use hash::{fnv1a64, hash_str};
pub use interests::{CategoryNames, Interests, Rooms, TopK};
pub use scaler::StandardScaler;
pub use segments::{LifecycleStage, LifecycleThresholds, RfmSegment, RfmThresholds};
pub use snapshot::{active_in_window, build_aggregates, known_at, ChurnDefinition};
pub use table::{ColumnsPresent, EventTable};
pub use time::{format_rfc3339, parse_earliest, parse_instant, TimeParseError};
pub use vector::{purchase_summary, Feature, FeatureSet, Transform};
pub use vocabulary::{KindFate, KindMapping, KindSeen, KindTally, UnknownKinds};
