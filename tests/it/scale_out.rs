//! The scale-out path end to end with the real engines (feature `kafka`): a `tiering serve`
//! replica with `--state redis://... --events kafka://...` (it seeds the Redis state), the
//! real `tiering aggregate` binary as a child process consuming the topic into that Redis,
//! librdkafka's in-process mock cluster (reached by the children over loopback) and a real
//! `redis-server`. The state built from the topic must equal what an embedded server builds
//! from the same events, across a `kill -9` of the aggregator mid-stream; and the aggregator's
//! `/metrics` shows its consumer lag rising behind a backlog and falling to 0.

use crate::helpers::{publish, user, Dirs, ServerProcess, SpawnOptions, TestServer, NOW, USERS};
use crate::redis_fixture::{password_file, tls_files, RedisServer};
use rdkafka::mocking::MockCluster;
use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tiering::features::EventKind;
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::{self as proto, GetUserTierRequest, RecordEventsRequest};
use tiering::serve::config::EventsTarget;
use tiering::serve::events::kafka::KafkaSink;
use tiering::serve::events::SinkOptions;
use tiering::serve::state::UserEvent;
use tonic::transport::Channel;

const PARTITIONS: i32 = 6;

/// Every test is bounded in time.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(150), f)
        .await
        .expect("test finished within 150 s");
}

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock cluster of 3 brokers with `topic` (6 partitions, replication 3).
fn cluster(topic: &str) -> Cluster {
    let c = MockCluster::new(3).unwrap();
    c.create_topic(topic, PARTITIONS, 3).unwrap();
    c
}

/// One replica on Redis with an event topic, and the models directory it seeded Redis from.
struct Replica {
    dirs: Dirs,
    events: String,
    redis: RedisServer,
    server: ServerProcess,
}

impl Replica {
    async fn start(c: &Cluster, topic: &str) -> Replica {
        let events = format!("kafka://{}/{topic}", c.bootstrap_servers());
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let server = ServerProcess::spawn_with(
            &dirs,
            &[
                ("TIERING__EVENTS", events.as_str()),
                ("TIERING__EVENTS_LINGER_MS", "0"),
            ],
            SpawnOptions {
                state: Some(redis.url()),
                ..SpawnOptions::default()
            },
        );
        Replica {
            dirs,
            events,
            redis,
            server,
        }
    }

    /// `tiering aggregate` on this replica's topic and Redis.
    fn aggregator(&self, group: &str, extra: &[&str]) -> AggregatorProcess {
        AggregatorProcess::spawn(
            &self.events,
            &self.redis.url(),
            &self.dirs.models().to_string_lossy(),
            group,
            extra,
        )
    }
}

/// A `tiering aggregate` child process, killed (SIGKILL) on drop.
struct AggregatorProcess {
    child: Child,
    metrics: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl AggregatorProcess {
    fn spawn(events: &str, state: &str, models: &str, group: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tiering"))
            .args(["aggregate", "--events", events, "--state", state])
            .args(["--models", models, "--group", group])
            // A killed member's partitions move to the next one after this (the broker's minimum).
            .args(["--session-timeout-ms", "6000", "--max-wait-ms", "10"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut metrics = None;
        let mut line = String::new();
        let mut seen = Vec::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the aggregator exited at start: {seen:?}"
            );
            seen.push(line.clone());
            if let Some(rest) = line.strip_prefix("tiering: aggregator metrics on http://") {
                metrics = rest
                    .trim()
                    .strip_suffix("/metrics")
                    .map(|a| a.parse().unwrap());
            }
            if line.starts_with("tiering: aggregating ") {
                break;
            }
        }
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        AggregatorProcess {
            child,
            metrics,
            log,
        }
    }

    /// `kill -9`, and wait for it to be gone.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// GET /metrics as text.
    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics.expect("started with --metrics-listen");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `tiering_aggregator_lag` per partition, as reported.
fn lags(text: &str) -> Vec<(i32, i64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("tiering_aggregator_lag{partition=\"")?;
            let (p, v) = rest.split_once("\"} ")?;
            Some((p.parse().ok()?, v.trim().parse().ok()?))
        })
        .collect()
}

fn order(user_id: &str, ts: i64, amount: f64) -> proto::Event {
    proto::Event {
        user_id: user_id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: ts,
            nanos: 0,
        }),
        kind: "order".into(),
        amount,
        ..Default::default()
    }
}

/// Batch `b` of 20 orders over 40 known users and 10 new ones, one user's events in order.
fn batch(b: usize) -> Vec<proto::Event> {
    (0..20)
        .map(|i| {
            let k = b * 20 + i;
            let id = if k.is_multiple_of(5) {
                format!("new-{}", k % 10)
            } else {
                user(k % 40)
            };
            order(
                &id,
                NOW - 20 * 86_400 + k as i64 * 600,
                5.0 + (k % 13) as f64,
            )
        })
        .collect()
}

/// The event as the topic carries it.
fn user_event(e: &proto::Event) -> UserEvent {
    UserEvent {
        user_id: e.user_id.clone(),
        ts: e.ts.map_or(0, |t| t.seconds),
        kind: EventKind::Order,
        amount: e.amount,
        watch_seconds: 0,
        room: 0,
        category: 0,
        order: 0,
        channel: 0,
    }
}

fn waiting(events: Vec<proto::Event>, ms: u64) -> tonic::Request<RecordEventsRequest> {
    let mut req = tonic::Request::new(RecordEventsRequest { events });
    req.metadata_mut()
        .insert("tiering-wait-applied-ms", ms.to_string().parse().unwrap());
    req
}

async fn tier(client: &mut TieringClient<Channel>, id: &str) -> proto::UserTier {
    client
        .get_user_tier(GetUserTierRequest { user_id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("GetUserTier: {e:?}"))
        .into_inner()
}

/// Records `events` on the embedded server (applied before the answer).
async fn record_embedded(client: &mut TieringClient<Channel>, events: Vec<proto::Event>) {
    let n = events.len() as u64;
    let r = client
        .record_events(RecordEventsRequest { events })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, n);
}

/// Records `events` on the replica (acknowledged by the broker, not yet applied).
async fn record_topic(client: &mut TieringClient<Channel>, events: Vec<proto::Event>) {
    let n = events.len() as u64;
    let r = client
        .record_events(RecordEventsRequest { events })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.positions.len() as u64), (n, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_on_a_replica_reach_redis_through_the_aggregator_and_build_the_embedded_state_across_a_kill_9(
) {
    bounded(async {
        let c = cluster("e2e");
        let replica = Replica::start(&c, "e2e").await;
        let mut topic = replica.server.client().await;
        let edirs = Dirs::new();
        publish(&edirs.models(), "v1", 1.0);
        // The same clock as the replica's `--now 2024-06-01`.
        let mut config = edirs.config();
        config.now = Some("2024-06-01".into());
        let embedded = TestServer::start(config).await;
        embedded.ready().await;
        let mut local = embedded.client().await;

        let first = replica.aggregator("e2e-g", &[]);
        // Read-after-write: the first batch, waited for, is visible on the replica.
        let r = topic
            .record_events(waiting(batch(0), 30_000))
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.applied,
            "the aggregator applied the batch within the wait"
        );
        record_embedded(&mut local, batch(0)).await;
        let id = batch(0)[1].user_id.clone();
        assert_eq!(tier(&mut topic, &id).await, tier(&mut local, &id).await);

        // Mid-stream: the aggregator is killed while batches keep coming, and another member
        // of the group takes over from the committed offsets.
        for b in 1..13 {
            record_topic(&mut topic, batch(b)).await;
            record_embedded(&mut local, batch(b)).await;
        }
        first.kill();
        for b in 13..20 {
            record_topic(&mut topic, batch(b)).await;
            record_embedded(&mut local, batch(b)).await;
        }
        let second = replica.aggregator("e2e-g", &[]);
        for b in 20..30 {
            record_topic(&mut topic, batch(b)).await;
            record_embedded(&mut local, batch(b)).await;
        }
        // One event for every user, waited for: each user's earlier events sit before it in
        // the user's partition, so once it is applied, all of them are.
        let mut ids: BTreeSet<String> = (0..USERS).map(user).collect();
        ids.extend((0..10).map(|k| format!("new-{k}")));
        let last: Vec<proto::Event> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| order(id, NOW - 3600 + i as i64, 1.0))
            .collect();
        let r = topic
            .record_events(waiting(last.clone(), 30_000))
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.applied,
            "the second aggregator applied everything: {:?}",
            second.log.lock().unwrap()
        );
        record_embedded(&mut local, last).await;

        // Exact: no event counted twice, none lost (a probability, segment or factor would
        // differ with one order more or less).
        for id in &ids {
            assert_eq!(
                tier(&mut topic, id).await,
                tier(&mut local, id).await,
                "{id}"
            );
        }
        embedded.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregators_lag_gauge_rises_behind_a_backlog_and_falls_to_zero_once_it_catches_up() {
    bounded(async {
        let c = cluster("lag");
        let replica = Replica::start(&c, "lag").await;
        let mut topic = replica.server.client().await;
        let agg = replica.aggregator(
            "lag-g",
            &[
                "--metrics-listen",
                "127.0.0.1:0",
                "--stats-interval-ms",
                "100",
                "--max-batch",
                "10",
            ],
        );
        let r = topic
            .record_events(waiting(batch(0), 30_000))
            .await
            .unwrap()
            .into_inner();
        assert!(r.applied);

        // Redis holds every command for 10 s: the aggregator stalls on its batch in hand,
        // behind a backlog produced straight to the topic.
        let mut redis = replica
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(10_000)
            .arg("ALL")
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
        // Two backlogs, the second produced while the aggregator is still stalled: the gauge
        // must follow both. It is refreshed on its own timer, not only when the consumer is
        // polled (librdkafka's statistics, which the gauge used to come from, are delivered by
        // the poll, so a stalled aggregator showed the lag of its last poll).
        let target = EventsTarget::parse(&replica.events).unwrap();
        let opts = SinkOptions {
            timeout: Duration::from_secs(10),
            linger: Duration::ZERO,
        };
        let sink = KafkaSink::new(&target, opts).unwrap();
        // The first backlog shows (less what the aggregator took before it stalled); the
        // second, produced while it is stalled, adds to the gauge nearly record for record.
        let mut shown = 0;
        for (batches, rise) in [(1..13, 120), (13..26, 200)] {
            let events: Vec<UserEvent> = batches
                .clone()
                .flat_map(batch)
                .map(|e| user_event(&e))
                .collect();
            let positions = sink.produce(&events).await.unwrap();
            assert_eq!(positions.len(), batches.len() * 20);
            let mut peak = 0;
            for _ in 0..100 {
                peak = lags(&agg.metrics().await).iter().map(|(_, l)| l).sum();
                if peak >= shown + rise {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                peak >= shown + rise,
                "lag after producing batches {batches:?} behind a stalled aggregator: {peak}, expected >= {shown} + {rise}: {}\n{:?}",
                agg.metrics().await,
                agg.log.lock().unwrap()
            );
            shown = peak;
        }
        // The pause ends by itself.
        let mut text = String::new();
        for _ in 0..600 {
            text = agg.metrics().await;
            let applied = metric(&text, "tiering_aggregator_events_applied_total").unwrap_or(0.0);
            let l = lags(&text);
            if applied >= 520.0 && !l.is_empty() && l.iter().all(|(_, v)| *v == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let l = lags(&text);
        assert!(!l.is_empty() && l.iter().all(|(_, v)| *v == 0), "{text}");
        assert_eq!(
            metric(&text, "tiering_aggregator_events_applied_total"),
            Some(520.0),
            "{text}"
        );
        assert!(text.contains("tiering_aggregator_batch_seconds_count"));
        assert_eq!(
            metric(&text, "tiering_aggregator_undecodable_total"),
            Some(0.0)
        );
    })
    .await;
}

/// `tiering aggregate` opens a Redis state over TLS as an ACL user with the same flags as
/// `tiering serve` (`--redis-ca-file`, `--redis-user`, `--redis-password-file`): with a wrong
/// password it stops at start naming the user (and never the password); with the right one it
/// applies what a replica on the same TLS Redis publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_reaches_a_tls_redis_as_an_acl_user_and_a_wrong_password_stops_it_at_start()
{
    bounded(async {
        let c = cluster("tls");
        let events = format!("kafka://{}/tls", c.bootstrap_servers());
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = tls_files(dir.path());
        let redis = tokio::task::spawn_blocking(move || {
            let acl = [
                "--user", "default", "off", "--user", "tiering", "on", ">s3cret", "~*", "&*",
                "+@all",
            ];
            RedisServer::start_tls(&cert, &key, &acl)
        })
        .await
        .unwrap();
        let right = password_file(dir.path(), "right.pw", "s3cret");
        let wrong = password_file(dir.path(), "wrong.pw", "not-the-password");
        let (ca, right, wrong) = (
            ca.to_string_lossy().into_owned(),
            right.to_string_lossy().into_owned(),
            wrong.to_string_lossy().into_owned(),
        );
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let models = dirs.models().to_string_lossy().into_owned();
        // The replica seeds the TLS Redis (the aggregator refuses an unseeded state).
        let server = ServerProcess::spawn_with(
            &dirs,
            &[
                ("TIERING__EVENTS", events.as_str()),
                ("TIERING__EVENTS_LINGER_MS", "0"),
                ("TIERING__REDIS_CA_FILE", ca.as_str()),
                ("TIERING__REDIS_USER", "tiering"),
                ("TIERING__REDIS_PASSWORD_FILE", right.as_str()),
            ],
            SpawnOptions {
                state: Some(redis.tls_url()),
                ..SpawnOptions::default()
            },
        );
        let mut topic = server.client().await;

        let refused = {
            let args: Vec<String> = [
                "aggregate",
                "--events",
                &events,
                "--state",
                &redis.tls_url(),
                "--models",
                &models,
                "--redis-ca-file",
                &ca,
                "--redis-user",
                "tiering",
                "--redis-password-file",
                &wrong,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_tiering"))
                    .args(&args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        };
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "a wrong password was accepted: {err}"
        );
        assert!(
            err.contains("refused the credentials") && err.contains("\"tiering\""),
            "{err}"
        );
        assert!(
            !err.contains("not-the-password") && !err.contains("s3cret"),
            "{err}"
        );

        let _agg = AggregatorProcess::spawn(
            &events,
            &redis.tls_url(),
            &models,
            "tls-g",
            &[
                "--redis-ca-file",
                &ca,
                "--redis-user",
                "tiering",
                "--redis-password-file",
                &right,
            ],
        );
        let r = topic
            .record_events(waiting(batch(0), 30_000))
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.applied,
            "the aggregator applied the batch within the wait"
        );
    })
    .await;
}
