//! The Kafka side of [`super::EventSink`]: an idempotent producer (`enable.idempotence=true`,
//! `acks=all`) with Java's partitioner (`partitioner=murmur2_random`: a keyed record lands in
//! the partition a Java producer would pick, `murmur2(key) & 0x7fffffff % partitions`).
//!
//! A batch is acknowledged when the broker has acknowledged every one of its records; if any
//! record fails (the broker is down past `message.timeout.ms`, or refuses the write), the whole
//! request fails as UNAVAILABLE. Records of the batch that did get written stay in the topic and
//! a retry writes them again: the per-user watermark dedupes redeliveries of one record, not a
//! client's retry of a batch (the retried records are new records at new offsets).
//!
//! An idempotent producer can hit a fatal error (the broker fenced it); then it is replaced by a
//! new one for the next request.

use super::codec::{encode, FORMAT_HEADER, FORMAT_V1};
use super::{EventsError, SinkOptions};
use crate::serve::config::EventsTarget;
use crate::serve::state::{LogPosition, UserEvent};
use arc_swap::ArcSwap;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::Arc;

/// The producer and its topic.
pub struct KafkaSink {
    producer: ArcSwap<FutureProducer>,
    config: ClientConfig,
    topic: String,
}

/// The producer's librdkafka settings.
pub fn producer_config(target: &EventsTarget, opts: SinkOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &target.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set(
            "message.timeout.ms",
            opts.timeout
                .as_millis()
                .clamp(1, i32::MAX as u128)
                .to_string(),
        )
        .set(
            "linger.ms",
            opts.linger.as_millis().min(900_000).to_string(),
        );
    c
}

impl KafkaSink {
    pub fn new(target: &EventsTarget, opts: SinkOptions) -> Result<KafkaSink, EventsError> {
        let config = producer_config(target, opts);
        let producer: FutureProducer = config.create().map_err(EventsError::Producer)?;
        Ok(KafkaSink {
            producer: ArcSwap::from_pointee(producer),
            config,
            topic: target.topic.clone(),
        })
    }

    /// Produces `events` (keyed by user id) and waits for the broker's acknowledgement of
    /// every record; their positions, in order.
    pub async fn produce(&self, events: &[UserEvent]) -> Result<Vec<LogPosition>, EventsError> {
        let producer = self.producer.load_full();
        let headers = OwnedHeaders::new().insert(Header {
            key: FORMAT_HEADER,
            value: Some(FORMAT_V1.to_string().as_bytes()),
        });
        let mut pending = Vec::with_capacity(events.len());
        let mut failure: Option<KafkaError> = None;
        for e in events {
            let value = encode(e).map_err(EventsError::Encode)?;
            let record = FutureRecord::to(&self.topic)
                .key(e.user_id.as_bytes())
                .payload(&value)
                .headers(headers.clone());
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                // The local queue is full: stop here; what was queued still goes out.
                Err((err, _)) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let mut positions = Vec::with_capacity(events.len());
        let mut failed = events.len() - pending.len();
        for delivery in pending {
            match delivery.await {
                Ok(Ok(d)) => positions.push(LogPosition {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((err, _))) => {
                    failed += 1;
                    failure.get_or_insert(err);
                }
                Err(_cancelled) => {
                    failed += 1;
                    failure.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        match failure {
            None => Ok(positions),
            Some(source) => {
                self.replace_if_fatal(&producer);
                Err(EventsError::NotAcknowledged {
                    failed,
                    total: events.len(),
                    source,
                })
            }
        }
    }

    /// After a fatal producer error (idempotence state lost), a new producer for the next batch.
    fn replace_if_fatal(&self, producer: &Arc<FutureProducer>) {
        let Some((code, reason)) = producer.client().fatal_error() else {
            return;
        };
        tracing::error!(?code, %reason, "event topic: fatal producer error; starting a new producer");
        match self.config.create::<FutureProducer>() {
            Ok(p) => self.producer.store(Arc::new(p)),
            Err(e) => {
                tracing::error!(error = %e, "event topic: a new producer could not be created")
            }
        }
    }

    /// Waits up to `timeout` for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Err(e) = self.producer.load().flush(timeout) {
            tracing::warn!(error = %e, "event topic: records still queued at shutdown");
        }
    }
}
