//! The aggregator (feature `kafka`): a consumer group member that reads the event topic in
//! batches, applies each batch to the shared state with its positions
//! ([`UserState::apply_logged`]), and only then commits the batch's offsets.
//!
//! Delivery is at least once: a crash (or a rebalance) between the write and the commit
//! redelivers the batch, to this or another member. The effect is exactly once because the
//! state keeps, per user, the position of the last event it applied and skips any event at or
//! before it; a user's events all sit in one partition (the key is the user id), in order.
//!
//! A record that does not decode ([`super::events::codec`]) is counted
//! (`tiering_aggregator_undecodable_total`), logged as a dead letter with its partition and
//! offset (never its key: user ids are not logged), and committed past: it never stops the
//! group. A state write that fails is retried (with backoff) until it succeeds or the
//! aggregator is stopped; nothing is committed past an unapplied batch.
//!
//! Consumer settings: `enable.auto.commit=false` (commits are explicit, after the write),
//! `isolation.level=read_committed`, `auto.offset.reset=earliest` (a new group reads the topic
//! from its start). Lag per partition comes from librdkafka's statistics (last stable offset −
//! the consumer's position), every `stats_interval`.
//!
//! The aggregator is generic over [`UserState`]: the lead's `tiering aggregate` runs it over
//! the Redis backend; tests run it over an in-memory state with watermarks.

use super::config::EventsTarget;
use super::events::codec;
use super::state::{Applied, LogPosition, StateError, UserEvent, UserState};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the aggregator stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("aggregator: creating the Kafka consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("aggregator: subscribing to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    /// The consumer met an error it cannot go on from (librdkafka's fatal errors).
    #[error("aggregator: reading the event topic: {0}")]
    Read(#[source] KafkaError),
    #[error("aggregator: committing offsets: {0}")]
    Commit(#[source] KafkaError),
    #[error("aggregator: metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("aggregator: group must not be empty")]
    NoGroup,
}

/// What the aggregator reads and how it batches.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub target: EventsTarget,
    /// The consumer group (`group.id`): every aggregator of one state shares it.
    pub group: String,
    /// Most records in one batch (one state write, one commit).
    pub max_batch: usize,
    /// Longest a batch waits to fill once its first record arrived.
    pub max_wait: Duration,
    /// How often librdkafka reports statistics (consumer lag).
    pub stats_interval: Duration,
    /// A member silent for this long (a crash) loses its partitions to the others
    /// (`session.timeout.ms`; the broker bounds it, 6 s to 30 min by default).
    pub session_timeout: Duration,
}

impl AggregatorConfig {
    pub fn new(target: EventsTarget, group: impl Into<String>) -> Self {
        AggregatorConfig {
            target,
            group: group.into(),
            max_batch: 1000,
            max_wait: Duration::from_millis(50),
            stats_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(45),
        }
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.target.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.session_timeout
                    .as_millis()
                    .clamp(1, 3_600_000)
                    .to_string(),
            )
            .set(
                "statistics.interval.ms",
                self.stats_interval
                    .as_millis()
                    .clamp(1, 86_400_000)
                    .to_string(),
            );
        c
    }
}

/// The aggregator's Prometheus metrics (a registry of their own).
pub struct AggregatorMetrics {
    registry: Registry,
    /// `tiering_aggregator_lag{partition}`: records not yet consumed.
    pub lag: IntGaugeVec,
    pub applied: IntCounter,
    pub skipped: IntCounter,
    pub undecodable: IntCounter,
    pub batch_seconds: Histogram,
}

impl AggregatorMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let lag = IntGaugeVec::new(
            Opts::new(
                "tiering_aggregator_lag",
                "Records behind the partition's last stable offset",
            ),
            &["partition"],
        )?;
        let applied = IntCounter::new(
            "tiering_aggregator_events_applied_total",
            "Events applied to the state",
        )?;
        let skipped = IntCounter::new(
            "tiering_aggregator_events_skipped_total",
            "Redelivered events the watermark skipped",
        )?;
        let undecodable = IntCounter::new(
            "tiering_aggregator_undecodable_total",
            "Records that did not decode (dead letters, logged with partition and offset)",
        )?;
        let batch_seconds = Histogram::with_opts(HistogramOpts::new(
            "tiering_aggregator_batch_seconds",
            "Time to apply and commit one batch",
        ))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(undecodable.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        Ok(AggregatorMetrics {
            registry,
            lag,
            applied,
            skipped,
            undecodable,
            batch_seconds,
        })
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// Takes the consumer lag from librdkafka's statistics.
pub struct LagContext {
    topic: String,
    metrics: Arc<AggregatorMetrics>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (id, p) in &topic.partitions {
            // -1: not assigned to this member, or no position yet.
            if *id >= 0 && p.app_offset >= 0 && p.ls_offset >= 0 {
                self.metrics
                    .lag
                    .with_label_values(&[&id.to_string()])
                    .set((p.ls_offset - p.app_offset).max(0));
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// One batch read from the topic: the decoded events with their positions, and the offsets to
/// commit once they are applied (each partition's last record + 1, undecodable ones included).
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<(UserEvent, LogPosition)>,
    pub commit_to: BTreeMap<i32, i64>,
    pub undecodable: usize,
}

/// What a run did, in total.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub batches: u64,
    pub applied: u64,
    pub skipped: u64,
    pub undecodable: u64,
}

/// A consumer group member; see the module docs.
pub struct Aggregator {
    consumer: StreamConsumer<LagContext>,
    config: AggregatorConfig,
    metrics: Arc<AggregatorMetrics>,
}

impl Aggregator {
    /// Joins the group and subscribes to the topic.
    pub fn connect(
        config: AggregatorConfig,
        metrics: Arc<AggregatorMetrics>,
    ) -> Result<Aggregator, AggregatorError> {
        if config.group.is_empty() {
            return Err(AggregatorError::NoGroup);
        }
        let context = LagContext {
            topic: config.target.topic.clone(),
            metrics: metrics.clone(),
        };
        let consumer: StreamConsumer<LagContext> = config
            .consumer_config()
            .create_with_context(context)
            .map_err(AggregatorError::Consumer)?;
        consumer
            .subscribe(&[&config.target.topic])
            .map_err(|source| AggregatorError::Subscribe {
                topic: config.target.topic.clone(),
                source,
            })?;
        Ok(Aggregator {
            consumer,
            config,
            metrics,
        })
    }

    /// Applies batches and commits them until `shutdown` resolves (the batch in hand is
    /// finished first).
    pub async fn run<S: UserState>(
        &self,
        state: &S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Totals, AggregatorError> {
        tokio::pin!(shutdown);
        let mut totals = Totals::default();
        while let Some(batch) = self.next_batch(shutdown.as_mut()).await? {
            let started = Instant::now();
            let Some(applied) = self.apply_retrying(state, &batch, shutdown.as_mut()).await else {
                tracing::info!(
                    "aggregator: stopped before a batch was applied; it will be redelivered"
                );
                break;
            };
            self.commit(&batch)?;
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            totals.batches += 1;
            totals.applied += applied.accepted;
            totals.skipped += batch.events.len() as u64 - applied.accepted;
            totals.undecodable += batch.undecodable as u64;
        }
        Ok(totals)
    }

    /// The next batch: waits for a first record (or `shutdown`: `None`), then takes more for
    /// at most `max_wait`, up to `max_batch` records.
    pub async fn next_batch<F: Future<Output = ()>>(
        &self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<Option<Batch>, AggregatorError> {
        let mut batch = Batch::default();
        let mut records = 0;
        let mut deadline = None;
        while records < self.config.max_batch.max(1) {
            let message = match deadline {
                None => tokio::select! {
                    m = self.consumer.recv() => m,
                    () = shutdown.as_mut() => return Ok(None),
                },
                Some(d) => match tokio::time::timeout_at(d, self.consumer.recv()).await {
                    Ok(m) => m,
                    Err(_elapsed) => break,
                },
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    self.read_error(e)?;
                    continue;
                }
            };
            records += 1;
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.config.max_wait);
            let pos = LogPosition {
                partition: message.partition(),
                offset: message.offset(),
            };
            batch.commit_to.insert(pos.partition, pos.offset + 1);
            match codec::decode(message.key(), message.payload()) {
                Ok(event) => batch.events.push((event, pos)),
                Err(e) => {
                    batch.undecodable += 1;
                    self.metrics.undecodable.inc();
                    tracing::error!(
                        topic = %self.config.target.topic,
                        partition = pos.partition,
                        offset = pos.offset,
                        error = %e,
                        "aggregator: dead letter: undecodable record skipped"
                    );
                }
            }
        }
        Ok(Some(batch))
    }

    /// A read error: fatal ones stop the aggregator; others (a broker gone for a while) are
    /// logged, and librdkafka reconnects by itself.
    fn read_error(&self, e: KafkaError) -> Result<(), AggregatorError> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            tracing::error!(?code, %reason, "aggregator: fatal consumer error");
            return Err(AggregatorError::Read(e));
        }
        tracing::warn!(error = %e, "aggregator: reading the event topic");
        Ok(())
    }

    /// Applies the batch's events to `state` with their positions (once).
    pub async fn apply<S: UserState>(
        &self,
        state: &S,
        batch: &Batch,
    ) -> Result<Applied, StateError> {
        if batch.events.is_empty() {
            return Ok(Applied {
                accepted: 0,
                new_users: 0,
            });
        }
        let applied = state.apply_logged(batch.events.clone()).await?;
        self.metrics.applied.inc_by(applied.accepted);
        self.metrics
            .skipped
            .inc_by(batch.events.len() as u64 - applied.accepted.min(batch.events.len() as u64));
        Ok(applied)
    }

    /// [`Aggregator::apply`] until it succeeds (backing off from 100 ms to 5 s); `None` if
    /// `shutdown` came first.
    async fn apply_retrying<S: UserState, F: Future<Output = ()>>(
        &self,
        state: &S,
        batch: &Batch,
        mut shutdown: Pin<&mut F>,
    ) -> Option<Applied> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.apply(state, batch).await {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = pause.as_millis() as u64, "aggregator: applying a batch failed; retrying (nothing is committed meanwhile)")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.as_mut() => return None,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Commits the batch's offsets (synchronously: after the write, before the next batch).
    /// A failed commit (a rebalance took the partition) is not lost data: the new owner gets
    /// the batch again and the watermark skips it.
    pub fn commit(&self, batch: &Batch) -> Result<(), AggregatorError> {
        if batch.commit_to.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (&partition, &next) in &batch.commit_to {
            tpl.add_partition_offset(&self.config.target.topic, partition, Offset::Offset(next))
                .map_err(AggregatorError::Commit)?;
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(e) if self.consumer.client().fatal_error().is_some() => {
                Err(AggregatorError::Commit(e))
            }
            Err(e) => {
                tracing::warn!(error = %e, "aggregator: offset commit failed (the batch may be redelivered; the watermark skips it)");
                Ok(())
            }
        }
    }
}
