//! Events through Kafka (feature `kafka`), against librdkafka's in-process mock cluster
//! (3 brokers): the producer's keying and partitioning, RecordEvents through a real `tiering
//! serve --events kafka://...`, and the aggregator's at-least-once delivery with exactly-once
//! effect over an in-test state with per-user watermarks.

use crate::helpers::{publish, Dirs, ServerProcess, SpawnOptions, NOW};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::future::{ready, Future};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tiering::bundle::Snapshot;
use tiering::features::{EventKind, UserAggregate};
use tiering::pb::{self as proto, RecordEventsRequest};
use tiering::serve::aggregator::{Aggregator, AggregatorConfig, AggregatorMetrics};
use tiering::serve::config::EventsTarget;
use tiering::serve::events::kafka::KafkaSink;
use tiering::serve::events::{wait_applied, SinkOptions};
use tiering::serve::state::{Applied, LogPosition, StateError, UserEvent, UserState};

const PARTITIONS: i32 = 6;

/// Every test is bounded in time.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test finished within 90 s");
}

/// Kafka's Java `Utils.murmur2` (seed 0x9747b28c), as the Java default partitioner uses it.
fn java_murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner picks for a keyed record.
fn java_partition(key: &str, partitions: i32) -> i32 {
    (java_murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// A state with per-user watermarks, as the Redis backend keeps them.
#[derive(Default)]
struct MemState {
    users: Mutex<HashMap<String, (UserAggregate, Option<LogPosition>)>>,
}

impl MemState {
    fn aggregates(&self) -> HashMap<String, UserAggregate> {
        let users = self.users.lock().unwrap();
        users.iter().map(|(k, (a, _))| (k.clone(), *a)).collect()
    }
}

impl UserState for MemState {
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<UserAggregate>, StateError>> + Send {
        ready(Ok(self.users.lock().unwrap().get(id).map(|(a, _)| *a)))
    }

    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<UserAggregate>>, StateError>> + Send {
        let users = self.users.lock().unwrap();
        ready(Ok(ids
            .iter()
            .map(|id| users.get(id).map(|(a, _)| *a))
            .collect()))
    }

    fn apply(
        &self,
        _events: Vec<UserEvent>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        ready(Err(StateError::Unsupported {
            what: "test state: topic only",
        }))
    }

    fn apply_logged(
        &self,
        events: Vec<(UserEvent, LogPosition)>,
    ) -> impl Future<Output = Result<Applied, StateError>> + Send {
        let mut users = self.users.lock().unwrap();
        let mut applied = Applied {
            accepted: 0,
            new_users: 0,
        };
        for (e, pos) in events {
            let entry = users.entry(e.user_id.clone()).or_insert_with(|| {
                applied.new_users += 1;
                (UserAggregate::default(), None)
            });
            if entry.1.is_some_and(|w| w >= pos) {
                continue;
            }
            entry.0.apply(&e.event());
            entry.1 = Some(pos);
            applied.accepted += 1;
        }
        ready(Ok(applied))
    }

    fn applied_position(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StateError>> + Send {
        ready(Ok(self.users.lock().unwrap().get(id).and_then(|(_, w)| *w)))
    }

    fn erase(&self, id: &str) -> impl Future<Output = Result<bool, StateError>> + Send {
        ready(Ok(self.users.lock().unwrap().remove(id).is_some()))
    }

    fn scan<T, F>(&self, visit: F) -> Result<Vec<T>, StateError>
    where
        T: Send,
        F: Fn(&mut dyn Iterator<Item = (&str, &UserAggregate)>) -> T + Sync,
    {
        let users = self.users.lock().unwrap();
        let mut it = users.iter().map(|(k, (a, _))| (k.as_str(), a));
        Ok(vec![visit(&mut it)])
    }

    fn users(&self) -> usize {
        self.users.lock().unwrap().len()
    }

    fn refusing_writes(&self) -> bool {
        false
    }

    fn is_seeded(&self) -> bool {
        true
    }

    fn seed(
        &self,
        _v: String,
        _s: Snapshot,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        ready(Ok(()))
    }

    fn checkpoint(&self) -> impl Future<Output = Result<bool, StateError>> + Send {
        ready(Ok(false))
    }

    fn shutdown(&self) -> impl Future<Output = Result<(), StateError>> + Send {
        ready(Ok(()))
    }
}

fn cluster(topic: &str) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(3).unwrap();
    c.create_topic(topic, PARTITIONS, 3).unwrap();
    c
}

fn target(
    c: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topic: &str,
) -> EventsTarget {
    EventsTarget {
        brokers: c.bootstrap_servers(),
        topic: topic.into(),
    }
}

fn sink(t: &EventsTarget) -> KafkaSink {
    let opts = SinkOptions {
        timeout: Duration::from_secs(10),
        linger: Duration::ZERO,
    };
    KafkaSink::new(t, opts).unwrap()
}

/// `n` events over `users` users, orders and views interleaved.
fn events(n: usize, users: usize) -> Vec<UserEvent> {
    (0..n)
        .map(|i| UserEvent {
            user_id: format!("k-user-{}", i % users),
            ts: NOW - 86_400 + i as i64 * 60,
            kind: if i % 3 == 0 {
                EventKind::View
            } else {
                EventKind::Order
            },
            amount: if i % 3 == 0 { 0.0 } else { 1.0 + i as f64 },
            watch_seconds: if i % 3 == 0 { 30 + i as u32 } else { 0 },
            room: (i % 5) as u32,
            category: (i % 7) as u32,
            order: 0,
            channel: 0,
        })
        .collect()
}

/// The events folded directly, per user in order: what the topic must build.
fn fold(events: &[UserEvent]) -> HashMap<String, UserAggregate> {
    let mut out: HashMap<String, UserAggregate> = HashMap::new();
    for e in events {
        out.entry(e.user_id.clone()).or_default().apply(&e.event());
    }
    out
}

fn agg_config(t: &EventsTarget, group: &str) -> AggregatorConfig {
    let mut c = AggregatorConfig::new(t.clone(), group);
    c.max_batch = 25;
    c.max_wait = Duration::from_millis(20);
    c.stats_interval = Duration::from_millis(200);
    // A "crashed" member's partitions move after this (the broker's minimum).
    c.session_timeout = Duration::from_secs(6);
    c
}

/// Runs an aggregator until its metrics have seen `records` records (applied, skipped or
/// undecodable), then stops it gracefully.
async fn aggregate_until(
    state: Arc<MemState>,
    config: AggregatorConfig,
    records: u64,
) -> Arc<AggregatorMetrics> {
    let metrics = Arc::new(AggregatorMetrics::new().unwrap());
    let agg = Aggregator::connect(config, metrics.clone()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        agg.run(&*state, async {
            let _ = stop_rx.await;
        })
        .await
    });
    for _ in 0..6000 {
        let seen = metrics.applied.get() + metrics.skipped.get() + metrics.undecodable.get();
        if seen >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
    metrics
}

#[test]
fn the_java_murmur2_of_the_test_matches_kafkas_own_known_values() {
    // From Kafka's UtilsTest.testMurmur2.
    for (key, want) in [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ] {
        assert_eq!(java_murmur2(key.as_bytes()), want, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_are_keyed_by_user_and_land_where_a_java_producer_puts_them() {
    bounded(async {
        let c = cluster("placement");
        let t = target(&c, "placement");
        let evs = events(40, 13);
        let positions = sink(&t).produce(&evs).await.unwrap();
        assert_eq!(positions.len(), evs.len());
        let mut partitions_used = std::collections::HashSet::new();
        for (e, p) in evs.iter().zip(&positions) {
            assert_eq!(
                p.partition,
                java_partition(&e.user_id, PARTITIONS),
                "{}",
                e.user_id
            );
            partitions_used.insert(p.partition);
        }
        assert!(partitions_used.len() > 1, "keys spread over partitions");
        // Offsets grow within each partition, in request order.
        let mut last: HashMap<i32, i64> = HashMap::new();
        for p in &positions {
            if let Some(prev) = last.insert(p.partition, p.offset) {
                assert!(p.offset > prev);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_builds_from_the_topic_what_folding_the_events_builds() {
    bounded(async {
        let c = cluster("fold");
        let t = target(&c, "fold");
        let evs = events(300, 17);
        sink(&t).produce(&evs).await.unwrap();
        let state = Arc::new(MemState::default());
        let metrics = aggregate_until(state.clone(), agg_config(&t, "fold-g"), 300).await;
        assert_eq!(metrics.applied.get(), 300);
        assert_eq!(metrics.skipped.get(), 0);
        assert_eq!(state.aggregates(), fold(&evs));
        assert!(metrics
            .render()
            .contains("tiering_aggregator_events_applied_total 300"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_redelivered_after_a_crash_before_the_commit_changes_no_aggregate() {
    bounded(async {
        let c = cluster("redeliver");
        let t = target(&c, "redeliver");
        let evs = events(200, 11);
        sink(&t).produce(&evs).await.unwrap();
        let state = Arc::new(MemState::default());
        {
            // A member that applies one batch and "crashes" before committing it.
            let metrics = Arc::new(AggregatorMetrics::new().unwrap());
            let agg = Aggregator::connect(agg_config(&t, "redeliver-g"), metrics).unwrap();
            let never = std::future::pending::<()>();
            tokio::pin!(never);
            let batch = agg.next_batch(never.as_mut()).await.unwrap().unwrap();
            assert!(!batch.events.is_empty());
            let applied = agg.apply(&*state, &batch).await.unwrap();
            assert_eq!(applied.accepted as usize, batch.events.len());
        } // dropped: no commit
        let partial = state.aggregates();
        assert!(!partial.is_empty());
        let metrics = aggregate_until(state.clone(), agg_config(&t, "redeliver-g"), 200).await;
        assert!(
            metrics.skipped.get() > 0,
            "the redelivered batch was skipped"
        );
        assert_eq!(metrics.applied.get() + metrics.skipped.get(), 200);
        assert_eq!(state.aggregates(), fold(&evs));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_counted_and_the_aggregator_goes_on() {
    bounded(async {
        let c = cluster("dead");
        let t = target(&c, "dead");
        let evs = events(30, 5);
        let s = sink(&t);
        s.produce(&evs[..15]).await.unwrap();
        let raw: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &t.brokers)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        for value in [&b"\x01garbage"[..], &b"\x09future-format"[..]] {
            raw.send(
                FutureRecord::to("dead").key("k-user-1").payload(value),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
        s.produce(&evs[15..]).await.unwrap();
        let state = Arc::new(MemState::default());
        let metrics = aggregate_until(state.clone(), agg_config(&t, "dead-g"), 32).await;
        assert_eq!(metrics.undecodable.get(), 2);
        assert_eq!(metrics.applied.get(), 30);
        assert_eq!(state.aggregates(), fold(&evs));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_can_wait_until_the_aggregator_applied_its_events() {
    bounded(async {
        let c = cluster("wait");
        let t = target(&c, "wait");
        let evs = events(20, 4);
        let positions = sink(&t).produce(&evs).await.unwrap();
        let produced: Vec<(&str, LogPosition)> = evs
            .iter()
            .map(|e| e.user_id.as_str())
            .zip(positions.iter().copied())
            .collect();
        let state = Arc::new(MemState::default());
        assert!(!wait_applied(&*state, &produced, Duration::from_millis(50))
            .await
            .unwrap());
        let metrics = Arc::new(AggregatorMetrics::new().unwrap());
        let agg = Aggregator::connect(agg_config(&t, "wait-g"), metrics).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = state.clone();
        let run = tokio::spawn(async move {
            agg.run(&*s2, async {
                let _ = stop_rx.await;
            })
            .await
        });
        assert!(wait_applied(&*state, &produced, Duration::from_secs(30))
            .await
            .unwrap());
        assert_eq!(state.aggregates(), fold(&evs));
        let _ = stop_tx.send(());
        run.await.unwrap().unwrap();
    })
    .await;
}

fn proto_event(user: &str, t: i64, amount: f64) -> proto::Event {
    proto::Event {
        user_id: user.into(),
        ts: Some(prost_types::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        kind: "order".into(),
        amount,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_events_through_a_server_acknowledges_after_the_broker_and_unavailable_without_it() {
    bounded(async {
        let c = cluster("serve");
        let url = format!("kafka://{}/serve", c.bootstrap_servers());
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        // An event topic needs a shared state (the aggregator writes to Redis).
        let redis = tokio::task::spawn_blocking(crate::redis_fixture::RedisServer::start)
            .await
            .unwrap();
        let server = ServerProcess::spawn_with(
            &dirs,
            &[
                ("TIERING__EVENTS", url.as_str()),
                ("TIERING__EVENTS_LINGER_MS", "0"),
                ("TIERING__EVENTS_TIMEOUT_MS", "1500"),
            ],
            SpawnOptions {
                state: Some(redis.url()),
                ..SpawnOptions::default()
            },
        );
        let mut client = server.client().await;
        let batch: Vec<proto::Event> = (0..12)
            .map(|i| proto_event(&format!("srv-{}", i % 5), NOW - 3600 + i, 2.0 + i as f64))
            .collect();
        let r = client
            .record_events(RecordEventsRequest {
                events: batch.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 12);
        assert_eq!(r.positions.len(), 12);
        assert!(!r.applied, "the aggregator has not applied them yet");
        for (e, p) in batch.iter().zip(&r.positions) {
            assert_eq!(p.partition, java_partition(&e.user_id, PARTITIONS));
        }
        // The topic holds them: the aggregator reads every one, and each user's watermark is
        // the position of its last event.
        let state = Arc::new(MemState::default());
        let t = EventsTarget {
            brokers: c.bootstrap_servers(),
            topic: "serve".into(),
        };
        aggregate_until(state.clone(), agg_config(&t, "serve-g"), 12).await;
        for (e, p) in batch.iter().zip(&r.positions).rev().take(5) {
            let w = state.applied_position(&e.user_id).await.unwrap().unwrap();
            assert_eq!((w.partition, w.offset), (p.partition, p.offset));
        }
        // The embedded state under the server has no watermark: a wait reports not applied.
        let mut req = tonic::Request::new(RecordEventsRequest {
            events: batch[..1].to_vec(),
        });
        req.metadata_mut()
            .insert("tiering-wait-applied-ms", "30".parse().unwrap());
        let r = client.record_events(req).await.unwrap().into_inner();
        assert_eq!((r.accepted, r.applied), (1, false));

        // Every broker down: no acknowledgement, so UNAVAILABLE (within the producer timeout).
        for b in 1..=3 {
            c.broker_down(b).unwrap();
        }
        let e = client
            .record_events(RecordEventsRequest {
                events: batch[..3].to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("retry the whole request"),
            "{}",
            e.message()
        );
        // Brokers back: acknowledged again.
        for b in 1..=3 {
            c.broker_up(b).unwrap();
        }
        let mut ok = false;
        for _ in 0..20 {
            match client
                .record_events(RecordEventsRequest {
                    events: batch[..3].to_vec(),
                })
                .await
            {
                Ok(r) => {
                    assert_eq!(r.into_inner().positions.len(), 3);
                    ok = true;
                    break;
                }
                Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
            }
        }
        assert!(ok, "the producer recovered once the brokers came back");
    })
    .await;
}

#[test]
fn tiering_aggregate_refuses_a_bad_events_url_a_state_that_consumes_no_topic_and_an_unseeded_redis()
{
    let models = tempfile::tempdir().unwrap();
    let models = models.path().as_os_str();
    let (ok, out) = crate::helpers::tiering_cli(&[
        "aggregate".as_ref(),
        "--events".as_ref(),
        "kafka://h:1".as_ref(),
        "--state".as_ref(),
        "redis://127.0.0.1:1".as_ref(),
        "--models".as_ref(),
        models,
    ]);
    assert!(!ok);
    assert!(out.contains("--events") && out.contains("/TOPIC"), "{out}");
    let (ok, out) = crate::helpers::tiering_cli(&[
        "aggregate".as_ref(),
        "--events".as_ref(),
        "kafka://127.0.0.1:1/t".as_ref(),
        "--state".as_ref(),
        "/var/lib/state".as_ref(),
        "--models".as_ref(),
        models,
    ]);
    assert!(!ok);
    assert!(
        out.contains("--state /var/lib/state") && out.contains("shared state"),
        "{out}"
    );
    // A Redis no replica has seeded: applying events first would make the seed skip those users.
    let redis = crate::redis_fixture::RedisServer::start();
    let url = redis.url();
    let (ok, out) = crate::helpers::tiering_cli(&[
        "aggregate".as_ref(),
        "--events".as_ref(),
        "kafka://127.0.0.1:1/t".as_ref(),
        "--state".as_ref(),
        url.as_ref(),
        "--models".as_ref(),
        models,
    ]);
    assert!(!ok);
    assert!(out.contains("not seeded"), "{out}");
}
