//! Features: pure code over arrays, importing nothing else of ours.
//!
//! - [`event`] — the data contract's vocabulary (`EventKind`, `Event`, stable string hashes).
//! - [`table`] — the columnar events table the readers fill.
//! - [`aggregate`] — per-user aggregates, the state the server keeps current.
//! - [`vector`] — point-in-time feature vectors read off an aggregate as of a time.
//! - [`snapshot`] — sweeps that build aggregates from events strictly before a time, and labels.
//! - [`scaler`] — standard scaling fitted on training rows.
//! - [`segments`] — RFM segments and lifecycle stages (rule-based views).

pub mod aggregate;
pub mod event;
pub mod scaler;
pub mod segments;
pub mod snapshot;
pub mod table;
pub mod vector;

pub use aggregate::UserAggregate;
pub use event::{hash_str, Event, EventKind, Timestamp, DAY};
pub use scaler::StandardScaler;
pub use segments::{LifecycleStage, LifecycleThresholds, RfmSegment, RfmThresholds};
pub use snapshot::{active_in_window, build_aggregates, known_at, ChurnDefinition};
pub use table::{ColumnsPresent, EventTable};
pub use vector::{Feature, FeatureSet, Transform};
