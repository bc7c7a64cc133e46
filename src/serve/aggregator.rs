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
//! from its start). Lag per partition is the partition's high watermark − the consumer's
//! position, refreshed every `stats_interval` by a thread of its own ([`LagWatch`]): librdkafka's
//! statistics, which it used to come from, are delivered only when the consumer is polled, so an
//! aggregator stalled on the state (the moment the lag matters most) showed the lag of its last
//! poll.
//!
//! The aggregator is generic over [`UserState`]: the lead's `tiering aggregate` runs it over
//! the Redis backend; tests run it over an in-memory state with watermarks.

use super::config::EventsTarget;
use super::events::codec;
use super::state::{Applied, LogPosition, StateError, UserEvent, UserState};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
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
    /// How often the lag gauge is refreshed (one watermark query per assigned partition).
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

/// Keeps `tiering_aggregator_lag{partition}` current from a thread of its own: every
/// `interval`, for each partition assigned to this member, the partition's high watermark minus
/// the consumer's position (records not yet consumed). Partitions no longer assigned lose their
/// series. Stops when dropped.
pub struct LagWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagWatch {
    fn start(
        consumer: Arc<StreamConsumer>,
        topic: String,
        metrics: Arc<AggregatorMetrics>,
        interval: Duration,
    ) -> LagWatch {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("aggregator-lag".into())
            .spawn(move || {
                let mut shown = BTreeSet::new();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    shown = refresh_lag(&consumer, &topic, &metrics, interval, shown);
                }
            });
        match thread {
            Ok(t) => LagWatch {
                stop: Some(stop),
                thread: Some(t),
            },
            Err(e) => {
                tracing::error!(error = %e, "aggregator: cannot start the lag thread; tiering_aggregator_lag stays empty");
                LagWatch {
                    stop: None,
                    thread: None,
                }
            }
        }
    }
}

impl Drop for LagWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // At most one refresh (its broker queries bounded by 1-5 s each) is in flight.
            let _ = t.join();
        }
    }
}

/// One refresh of the lag gauge; returns the partitions it now shows.
///
/// A partition's next record is the consumer's position, or, before anything was consumed from
/// it since the assignment, the group's committed offset, or else the partition's start (the
/// group reads from the earliest record). Its end is the high watermark, asked of the
/// partition's leader. A partition whose end cannot be read loses its series rather than show
/// a stale figure.
fn refresh_lag(
    consumer: &StreamConsumer,
    topic: &str,
    metrics: &AggregatorMetrics,
    interval: Duration,
    shown: BTreeSet<i32>,
) -> BTreeSet<i32> {
    let Ok(positions) = consumer.position() else {
        return shown;
    };
    let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
    let positions = positions.elements_for_topic(topic);
    let unpositioned = positions
        .iter()
        .any(|p| !matches!(p.offset(), Offset::Offset(_)));
    let committed = if unpositioned {
        consumer.committed(timeout).ok()
    } else {
        None
    };
    let mut now = BTreeSet::new();
    for p in &positions {
        let partition = p.partition();
        let (low, high) = match consumer.fetch_watermarks(topic, partition, timeout) {
            Ok((low, high)) if low >= 0 && high >= 0 => (low, high),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(partition, error = %e, "aggregator: reading a partition's high watermark for the lag gauge");
                continue;
            }
        };
        let committed_offset = committed
            .as_ref()
            .and_then(|c| c.find_partition(topic, partition))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let next = match p.offset() {
            Offset::Offset(o) => o,
            _ => committed_offset.unwrap_or(low),
        };
        metrics
            .lag
            .with_label_values(&[&partition.to_string()])
            .set((high - next).max(0));
        now.insert(partition);
    }
    for gone in shown.difference(&now) {
        let _ = metrics.lag.remove_label_values(&[&gone.to_string()]);
    }
    now
}

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
    consumer: Arc<StreamConsumer>,
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
        let consumer: StreamConsumer = config
            .consumer_config()
            .create()
            .map_err(AggregatorError::Consumer)?;
        consumer
            .subscribe(&[&config.target.topic])
            .map_err(|source| AggregatorError::Subscribe {
                topic: config.target.topic.clone(),
                source,
            })?;
        Ok(Aggregator {
            consumer: Arc::new(consumer),
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
        let _lag = LagWatch::start(
            self.consumer.clone(),
            self.config.target.topic.clone(),
            self.metrics.clone(),
            self.config.stats_interval,
        );
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
