//! Where RecordEvents' accepted events go: the [`EventSink`], chosen once at start from the
//! `events` setting.
//!
//! - [`EventSink::Local`] (the default): the events are applied to this server's state
//!   (`state.apply`), as always.
//! - `EventSink::Kafka` (feature `kafka`, `events = "kafka://BROKERS/TOPIC"`): the events are
//!   produced to a Kafka topic keyed by user id, and RecordEvents answers once the broker has
//!   acknowledged every record of the batch. An aggregator (`super::aggregator`, `tiering
//!   aggregate`) applies the topic to the shared state; until it has, a read may not see the
//!   events ([`wait_applied`] lets the server wait for them).
//!
//! # The record format ([`codec`])
//!
//! Key: the user id (UTF-8), so one user's events sit in one partition, in order. Value: one
//! format byte ([`codec::FORMAT_V1`] = 1), then the [`UserEvent`] in postcard (its serde layout,
//! the same as the embedded log's). A header `tiering-format` carries the format byte as
//! text, so a consumer can route records without decoding them. A new format takes a new byte;
//! a consumer refuses (counts and logs) a byte it does not know.

pub mod codec;
#[cfg(feature = "kafka")]
pub mod kafka;

use super::config::EventsTarget;
use super::state::{Applied, LogPosition, StateError, UserEvent, UserState};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why events could not be handed off.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The local state refused the events (the embedded log).
    #[error(transparent)]
    State(#[from] StateError),
    #[error("internal error: encoding an event record: {0}")]
    Encode(#[source] postcard::Error),
    /// The Kafka producer could not be created (a bad setting).
    #[cfg(feature = "kafka")]
    #[error("event topic: creating the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    /// Some records of the batch were not acknowledged by the broker in time (or refused by
    /// it): the batch is not acknowledged as a whole; others of its records may have been
    /// written, so a retry of the whole batch may record those twice.
    #[cfg(feature = "kafka")]
    #[error("event topic unavailable: {failed} of {total} records not acknowledged by the broker ({source}); nothing of this request is acknowledged: retry the whole request")]
    NotAcknowledged {
        failed: usize,
        total: usize,
        source: rdkafka::error::KafkaError,
    },
}

impl EventsError {
    /// True for a failure the caller may retry (the broker or the local log was unavailable).
    pub fn is_unavailable(&self) -> bool {
        match self {
            EventsError::State(_) | EventsError::Encode(_) => false,
            #[cfg(feature = "kafka")]
            EventsError::Producer(_) => false,
            #[cfg(feature = "kafka")]
            EventsError::NotAcknowledged { .. } => true,
        }
    }
}

/// The producer's settings (from the server configuration).
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    /// How long the broker has to acknowledge a record, retries included.
    pub timeout: Duration,
    /// How long the producer waits to fill a batch.
    pub linger: Duration,
}

/// What a recorded batch gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Local: what the state applied. Kafka: `accepted` is the batch's size and `new_users` 0
    /// (the aggregator creates the users).
    pub applied: Applied,
    /// Kafka: where each event landed, in request order. Local: empty.
    pub positions: Vec<LogPosition>,
}

/// Where accepted events go; see the module docs.
pub enum EventSink {
    Local,
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaSink),
}

impl EventSink {
    /// The sink for `target` (`None`: local).
    pub fn open(
        target: Option<&EventsTarget>,
        opts: SinkOptions,
    ) -> Result<EventSink, EventsError> {
        match target {
            None => Ok(EventSink::Local),
            #[cfg(feature = "kafka")]
            Some(t) => Ok(EventSink::Kafka(kafka::KafkaSink::new(t, opts)?)),
            // `EventsTarget::parse` refuses Kafka targets in a build without the feature.
            #[cfg(not(feature = "kafka"))]
            Some(_) => {
                let _ = opts;
                Ok(EventSink::Local)
            }
        }
    }

    /// At shutdown: waits up to `timeout` for records still queued (none: every answered
    /// request already waited for its records).
    pub fn close(&self, timeout: Duration) {
        match self {
            EventSink::Local => {
                let _ = timeout;
            }
            #[cfg(feature = "kafka")]
            EventSink::Kafka(k) => k.flush(timeout),
        }
    }

    /// True when events are applied to this server's state before the answer.
    pub fn is_local(&self) -> bool {
        matches!(self, EventSink::Local)
    }

    /// Hands `events` off: applies them locally, or produces them and waits for the broker's
    /// acknowledgement of every one.
    pub async fn record<S: UserState>(
        &self,
        state: &S,
        events: Vec<UserEvent>,
    ) -> Result<Recorded, EventsError> {
        match self {
            EventSink::Local => Ok(Recorded {
                applied: state.apply(events).await?,
                positions: Vec::new(),
            }),
            #[cfg(feature = "kafka")]
            EventSink::Kafka(k) => {
                let positions = k.produce(&events).await?;
                Ok(Recorded {
                    applied: Applied {
                        accepted: events.len() as u64,
                        new_users: 0,
                    },
                    positions,
                })
            }
        }
    }
}

/// Polls each user's applied watermark until it reaches the last of that user's events in
/// `produced` (user id, position), for at most `within`. True when every user's watermark did;
/// false at the time limit (the events are recorded all the same: only not yet visible).
pub async fn wait_applied<S: UserState>(
    state: &S,
    produced: &[(&str, LogPosition)],
    within: Duration,
) -> Result<bool, StateError> {
    let mut wanted: HashMap<&str, LogPosition> = HashMap::new();
    for &(user, pos) in produced {
        let slot = wanted.entry(user).or_insert(pos);
        *slot = (*slot).max(pos);
    }
    let until = Instant::now() + within;
    let mut pause = Duration::from_millis(2);
    loop {
        let mut pending = Vec::new();
        for (user, want) in &wanted {
            let reached = matches!(
                state.applied_position(user).await?,
                Some(at) if at.partition == want.partition && at.offset >= want.offset
            );
            if !reached {
                pending.push(*user);
            }
        }
        wanted.retain(|u, _| pending.contains(u));
        if wanted.is_empty() {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= until {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
