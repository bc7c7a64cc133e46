//! The Redis state backend against real `redis-server` processes (standalone and a 3-master
//! Cluster, started by [`crate::redis_fixture`]): the backend on its own, then `tiering serve`
//! replicas sharing one Redis.

use crate::helpers::{
    publish, snapshot_of, start_error, user, Dirs, ServerProcess, SpawnOptions, TestServer, NOW,
};
use crate::redis_fixture::{password_file, tls_files, RedisCluster, RedisServer};
use redis::AsyncCommands;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tiering::features::{EventKind, Timestamp, UserAggregate};
use tiering::pb::{self as proto, GetUserTierRequest, RecordEventsRequest};
use tiering::serve::config::StateLocation;
use tiering::serve::metrics::Metrics;
use tiering::serve::state::redis::{codec, RedisAccess, RedisOptions, RedisState};
use tiering::serve::state::{Applied, LogPosition, StateError, UserEvent, UserState};
use tiering::serve::ServeConfig;
use tonic::Code;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test finished within 120 s");
}

async fn open(url: &str, models: &Path, reseed: bool) -> Result<RedisState, StateError> {
    open_with(url, models, reseed, RedisAccess::default()).await
}

async fn open_with(
    url: &str,
    models: &Path,
    reseed: bool,
    access: RedisAccess,
) -> Result<RedisState, StateError> {
    let StateLocation::Redis(target) = StateLocation::parse(PathBuf::from(url)).unwrap() else {
        panic!("{url} is not a Redis URL");
    };
    let opts = RedisOptions {
        target,
        models: models.to_path_buf(),
        reseed,
        timeout: Duration::from_secs(2),
        access,
    };
    RedisState::open(opts, Arc::new(Metrics::new().unwrap())).await
}

fn order(id: &str, ts: Timestamp) -> UserEvent {
    UserEvent {
        user_id: id.to_string(),
        ts,
        kind: EventKind::Order,
        amount: 1.0,
        watch_seconds: 0,
        room: 0,
        category: 0,
        order: 0,
        channel: 0,
    }
}

/// A user's stored aggregate, read straight from Redis.
async fn stored(client: &redis::Client, id: &str) -> Option<UserAggregate> {
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<Vec<u8>> = c.get(codec::key(id)).await.unwrap();
    v.map(|v| codec::decode(&v).unwrap().agg)
}

/// Seed, get, get_many across slots in the order asked, apply, and scan, on one deployment.
async fn round_trip(url: &str) {
    round_trip_with(url, RedisAccess::default()).await
}

async fn round_trip_with(url: &str, access: RedisAccess) {
    let models = tempfile::tempdir().unwrap();
    let state = Arc::new(open_with(url, models.path(), false, access).await.unwrap());
    assert!(!state.is_seeded());
    let snap = snapshot_of(300);
    state.seed("v1".into(), snap.clone()).await.unwrap();
    assert!(state.is_seeded());
    assert_eq!(state.get(&user(7)).await.unwrap(), Some(snap.aggregates[7]));
    assert_eq!(state.get("nobody").await.unwrap(), None);
    let order_asked = [299, 3, 150, 0, 77, 201, 12];
    let mut ids: Vec<String> = order_asked.iter().map(|&i| user(i)).collect();
    ids.insert(3, "nobody".into());
    let got = state.get_many(&ids).await.unwrap();
    assert_eq!(got.len(), ids.len());
    for (id, agg) in ids.iter().zip(&got) {
        let expected = snap
            .user_ids
            .iter()
            .position(|u| u == id)
            .map(|i| snap.aggregates[i]);
        assert_eq!(*agg, expected, "{id}");
    }
    let applied = state
        .apply(vec![
            order(&user(1), NOW - 60),
            order("new-1", NOW - 50),
            order(&user(1), NOW - 40),
        ])
        .await
        .unwrap();
    assert_eq!(
        applied,
        Applied {
            accepted: 3,
            new_users: 1
        }
    );
    let one = state.get(&user(1)).await.unwrap().unwrap();
    assert_eq!(one.orders, snap.aggregates[1].orders + 2);
    assert_eq!(state.get("new-1").await.unwrap().unwrap().orders, 1);
    let s = state.clone();
    let parts = tokio::task::spawn_blocking(move || {
        s.scan(|users| users.map(|(id, _)| id.to_string()).collect::<Vec<_>>())
    })
    .await
    .unwrap()
    .unwrap();
    let mut seen: Vec<String> = parts.into_iter().flatten().collect();
    seen.sort();
    let mut expected: Vec<String> = snap.user_ids.clone();
    expected.push("new-1".into());
    expected.sort();
    assert_eq!(seen, expected, "every user exactly once");
    state.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_round_trips_users_on_a_standalone_redis() {
    bounded(async {
        let redis = RedisServer::start();
        round_trip(&redis.url()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_an_acl_user_a_wrong_or_missing_password_is_refused_at_start_and_the_right_one_serves(
) {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = tls_files(dir.path());
        let acl = [
            "--user", "default", "off", "--user", "tiering", "on", ">s3cret", "~*", "&*", "+@all",
        ];
        let redis = RedisServer::start_tls(&cert, &key, &acl);
        let url = redis.tls_url();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let access = |password: Option<PathBuf>, ca_file: Option<PathBuf>| RedisAccess {
            ca_file,
            user: Some("tiering".into()),
            password_file: password,
        };
        let wrong = password_file(dir.path(), "wrong.pw", "not-the-password");
        let right = password_file(dir.path(), "right.pw", "s3cret");
        for (what, a) in [
            ("a wrong password", access(Some(wrong), Some(ca.clone()))),
            ("no password", access(None, Some(ca.clone()))),
        ] {
            let e = open_with(&url, &models, false, a)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} was accepted"));
            assert!(matches!(e, StateError::RedisAuth { .. }), "{what}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("refused the credentials") && text.contains("\"tiering\""),
                "{what}: {text}"
            );
            assert!(!text.contains("s3cret"), "{text}");
        }
        // Without the CA file the server's certificate does not chain to the system's roots.
        let e = open_with(&url, &models, false, access(Some(right.clone()), None))
            .await
            .err()
            .expect("a certificate from an unknown CA was accepted");
        assert!(
            matches!(e, StateError::RedisUnavailable { op: "connect", .. }),
            "{e}"
        );
        round_trip_with(&url, access(Some(right), Some(ca))).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_round_trips_users_across_slots_on_a_redis_cluster() {
    bounded(async {
        let cluster = tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap();
        round_trip(&cluster.url()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_an_unknown_format_version_is_refused_not_misread() {
    bounded(async {
        let redis = RedisServer::start();
        let models = tempfile::tempdir().unwrap();
        let state = open(&redis.url(), models.path(), false).await.unwrap();
        state.seed("v1".into(), snapshot_of(5)).await.unwrap();
        let mut c = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let key = codec::key(&user(1));
        let mut v: Vec<u8> = c.get(&key).await.unwrap();
        v[0] = 9;
        let _: () = c.set(&key, v).await.unwrap();
        let e = state.get(&user(1)).await.unwrap_err();
        assert!(
            matches!(e, StateError::RedisFormat { found: 9, known: 5 }),
            "{e}"
        );
        assert!(e.to_string().contains("format version 9"), "{e}");
        // Nor is it overwritten by a write.
        let e = state.apply(vec![order(&user(1), NOW)]).await.unwrap_err();
        assert!(matches!(e, StateError::RedisFormat { .. }), "{e}");
        let raw: Vec<u8> = c.get(&key).await.unwrap();
        assert_eq!(raw[0], 9);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_logged_skips_a_redelivered_batch_with_exact_counts() {
    bounded(async {
        let redis = RedisServer::start();
        let models = tempfile::tempdir().unwrap();
        let state = open(&redis.url(), models.path(), false).await.unwrap();
        state.seed("v1".into(), snapshot_of(0)).await.unwrap();
        let ids = ["a", "b", "c"];
        let batch: Vec<(UserEvent, LogPosition)> = (0..9)
            .map(|i| {
                (
                    order(ids[i % 3], NOW - 100 + i as i64),
                    LogPosition {
                        partition: 0,
                        offset: 100 + i as i64,
                    },
                )
            })
            .collect();
        let first = state.apply_logged(batch.clone()).await.unwrap();
        assert_eq!(
            first,
            Applied {
                accepted: 9,
                new_users: 3
            }
        );
        let again = state.apply_logged(batch.clone()).await.unwrap();
        assert_eq!(
            again,
            Applied {
                accepted: 0,
                new_users: 0
            }
        );
        // A redelivery that overlaps new events: only the new ones count.
        let mut overlap = batch[6..].to_vec();
        overlap.push((
            order("a", NOW - 10),
            LogPosition {
                partition: 0,
                offset: 109,
            },
        ));
        let third = state.apply_logged(overlap).await.unwrap();
        assert_eq!(
            third,
            Applied {
                accepted: 1,
                new_users: 0
            }
        );
        let client = redis.client();
        assert_eq!(stored(&client, "a").await.unwrap().orders, 4);
        assert_eq!(stored(&client, "b").await.unwrap().orders, 3);
        assert_eq!(stored(&client, "c").await.unwrap().orders, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_twice_changes_nothing_and_never_overwrites_a_user_updated_after_the_first_seed() {
    bounded(async {
        let redis = RedisServer::start();
        let models = tempfile::tempdir().unwrap();
        let client = redis.client();
        let a = open(&redis.url(), models.path(), false).await.unwrap();
        let snap = snapshot_of(50);
        a.seed("v1".into(), snap.clone()).await.unwrap();
        a.apply(vec![order(&user(5), NOW - 5)]).await.unwrap();
        let updated = stored(&client, &user(5)).await.unwrap();
        assert_eq!(updated.orders, snap.aggregates[5].orders + 1);
        // A seed cut short before its marker: the users are there, the marker is not.
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = c.del("tiering:{meta}").await.unwrap();
        std::fs::remove_file(models.path().join("redis-state.json")).unwrap();
        let b = open(&redis.url(), models.path(), false).await.unwrap();
        assert!(!b.is_seeded());
        // Seeded again from another bundle whose users all differ.
        let mut other = snapshot_of(60);
        for agg in &mut other.aggregates {
            agg.orders += 100;
        }
        b.seed("v2".into(), other).await.unwrap();
        assert!(b.is_seeded());
        assert_eq!(stored(&client, &user(5)).await.unwrap(), updated);
        for i in [0, 17, 49] {
            assert_eq!(stored(&client, &user(i)).await.unwrap(), snap.aggregates[i]);
        }
        // Only the users the first seed lacked were added.
        assert_eq!(stored(&client, &user(55)).await.unwrap().orders, 101);
        let keys: usize = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert_eq!(keys, 60 + 1);
        // The marker agreed on is in the record; a third seed is a no-op.
        let c2 = open(&redis.url(), models.path(), false).await.unwrap();
        assert!(c2.is_seeded());
        c2.seed("v3".into(), snapshot_of(70)).await.unwrap();
        let keys: usize = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert_eq!(keys, 61);
    })
    .await;
}

fn redis_config(dirs: &Dirs, url: &str) -> ServeConfig {
    ServeConfig {
        state_dir: Some(PathBuf::from(url)),
        ..dirs.config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_redis_is_refused_at_the_next_start_with_the_documented_message() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let config = redis_config(&dirs, &redis.url());
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        server.stop().await.unwrap();
        assert!(dirs.models().join("redis-state.json").exists());
        let mut c = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        let e = start_error(config.clone()).await.to_string();
        for needle in [
            "no state marker",
            "wiped",
            "AOF/RDB backup",
            "--reseed-state",
        ] {
            assert!(e.contains(needle), "{needle:?} not in: {e}");
        }
        // An older generation (a restore from an older backup) is refused too.
        let server = TestServer::start(ServeConfig {
            reseed_state: true,
            ..config.clone()
        })
        .await;
        server.ready().await;
        server.stop().await.unwrap();
        let mut c = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dirs.models().join("redis-state.json")).unwrap())
                .unwrap();
        let generation = record["generation"].as_u64().unwrap();
        let mut newer = record.clone();
        newer["generation"] = (generation + 5).into();
        std::fs::write(
            dirs.models().join("redis-state.json"),
            serde_json::to_vec(&newer).unwrap(),
        )
        .unwrap();
        let e = start_error(config.clone()).await.to_string();
        assert!(e.contains("older than generation"), "{e}");
        // Users were reseeded by the --reseed-state start.
        assert!(stored(&redis.client(), &user(3)).await.is_some());
        let _: () = c.ping().await.unwrap();
    })
    .await;
}

fn proto_order(id: &str, ts: Timestamp) -> proto::Event {
    proto::Event {
        user_id: id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: ts,
            nanos: 0,
        }),
        kind: "order".into(),
        amount: 1.0,
        ..Default::default()
    }
}

fn get(id: &str) -> GetUserTierRequest {
    GetUserTierRequest { user_id: id.into() }
}

/// Two in-process replicas on one Redis, both ready.
async fn two_replicas(dirs: &Dirs, url: &str) -> (TestServer, TestServer) {
    publish(&dirs.models(), "v1", 1.0);
    let a = TestServer::start(redis_config(dirs, url)).await;
    a.ready().await;
    let b = TestServer::start(redis_config(dirs, url)).await;
    b.ready().await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_recorded_on_one_replica_is_visible_on_the_other() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let (a, b) = two_replicas(&dirs, &redis.url()).await;
        let (mut ca, mut cb) = (a.client().await, b.client().await);
        let e = cb.get_user_tier(get("newcomer")).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let r = ca
            .record_events(RecordEventsRequest {
                events: vec![proto_order("newcomer", NOW - 60)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.accepted, r.new_users), (1, 1));
        let t = cb
            .get_user_tier(get("newcomer"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.user_id, "newcomer");
        assert_eq!(t.model_version, "v1");
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_record_events_to_the_same_users_on_two_replicas_lose_nothing() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let (a, b) = two_replicas(&dirs, &redis.url()).await;
        let client = redis.client();
        let users: Vec<String> = (0..8).map(user).collect();
        let mut before = Vec::new();
        for u in &users {
            before.push(stored(&client, u).await.unwrap().orders);
        }
        const ROUNDS: usize = 25;
        let mut tasks = Vec::new();
        for server in [&a, &b] {
            for _ in 0..2 {
                let mut c = server.client().await;
                let users = users.clone();
                tasks.push(tokio::spawn(async move {
                    for r in 0..ROUNDS {
                        let events = users
                            .iter()
                            .map(|u| proto_order(u, NOW - 1000 + r as i64))
                            .collect();
                        c.record_events(RecordEventsRequest { events })
                            .await
                            .unwrap();
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        for (u, b0) in users.iter().zip(before) {
            let now = stored(&client, u).await.unwrap().orders;
            assert_eq!(now, b0 + 4 * ROUNDS as u32, "{u}");
        }
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

async fn health(server: &TestServer) -> i32 {
    let mut h = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: "tiering.v1.Tiering".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// Polls `ok` every 50 ms for at most `secs` seconds.
async fn eventually<F: Future<Output = bool>>(secs: u64, mut ok: impl FnMut() -> F) {
    for _ in 0..secs * 20 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within {secs} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_mid_load_gives_unavailable_then_recovery_with_readiness_following() {
    bounded(async {
        let mut redis = RedisServer::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]);
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(redis_config(&dirs, &redis.url())).await;
        server.ready().await;
        let client = redis.client();
        let before = stored(&client, &user(9)).await.unwrap().orders;
        // Load: one event per request to one user, counting what was acknowledged.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut c = server.client().await;
        let load = {
            let stop2 = stop.clone();
            let failures = failures.clone();
            let mut c = server.client().await;
            async move {
                let (mut acked, mut failed) = (0u32, 0u32);
                let mut i = 0;
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let r = c
                        .record_events(RecordEventsRequest {
                            events: vec![proto_order(&user(9), NOW - 10_000 + i)],
                        })
                        .await;
                    match r {
                        Ok(_) => acked += 1,
                        Err(e) => {
                            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                            failed += 1;
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                (acked, failed)
            }
        };
        let load = tokio::spawn(load);
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.kill();
        let e = c.get_user_tier(get(&user(9))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        eventually(10, || async { health(&server).await != SERVING }).await;
        // Redis stays down until the load has been refused at least once (on a loaded machine
        // the load's one request in flight can otherwise span the whole outage).
        eventually(10, || async {
            failures.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
        redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .unwrap();
        eventually(15, || async { health(&server).await == SERVING }).await;
        let t = c.get_user_tier(get(&user(9))).await.unwrap().into_inner();
        assert_eq!(t.user_id, user(9));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (acked, failed) = load.await.unwrap();
        assert!(acked > 0 && failed > 0, "acked {acked}, failed {failed}");
        // Nothing acknowledged is lost; a failed request may or may not have landed.
        let now = stored(&redis.client(), &user(9)).await.unwrap().orders;
        assert!(
            now >= before + acked && now <= before + acked + failed,
            "before {before}, acked {acked}, failed {failed}, stored {now}"
        );
        server.stop().await.unwrap();
    })
    .await;
}

/// The stored aggregate of `id` on a Cluster (via a cluster client, which follows failovers).
async fn stored_on_cluster(cluster: &RedisCluster, id: &str) -> Option<UserAggregate> {
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port))
        .collect();
    let client = redis::cluster::ClusterClient::new(urls).unwrap();
    let mut c = client.get_async_connection().await.unwrap();
    let v: Option<Vec<u8>> = c.get(codec::key(id)).await.unwrap();
    v.map(|v| codec::decode(&v).unwrap().agg)
}

/// Failover, not only a restart: the master serving a user's slot is killed mid-load and its
/// replica is promoted by the Cluster. Calls get UNAVAILABLE meanwhile (never another code, a
/// panic or a wrong count), then the replica answers reads and writes; everything the master
/// had replicated (`WAIT`) before it died is there, and nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_mid_load_gives_unavailable_then_the_promoted_replica_serves() {
    bounded(async {
        let mut cluster = tokio::task::spawn_blocking(RedisCluster::start_replicated)
            .await
            .unwrap();
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(redis_config(&dirs, &cluster.url())).await;
        server.ready().await;
        let id = user(9);
        let before = stored_on_cluster(&cluster, &id).await.unwrap().orders;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let load = {
            let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
            let mut c = server.client().await;
            let id = id.clone();
            async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let r = c
                        .record_events(RecordEventsRequest {
                            events: vec![proto_order(&id, NOW - 10_000 + i)],
                        })
                        .await;
                    match r {
                        Ok(_) => {
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        };
        let load = tokio::spawn(load);
        eventually(10, || async {
            acked.load(std::sync::atomic::Ordering::Relaxed) >= 20
        })
        .await;
        let master = cluster.master_of(&codec::key(&id));
        // Acknowledged before the WAIT, so replicated before the kill: a lower bound.
        let replicated = acked.load(std::sync::atomic::Ordering::Relaxed);
        cluster = tokio::task::spawn_blocking(move || {
            cluster.sync_and_kill(master);
            cluster
        })
        .await
        .unwrap();
        eventually(20, || async {
            failures.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
        // The replica is promoted after the node timeout; reads and writes come back.
        let mut c = server.client().await;
        let mut served = false;
        for _ in 0..600 {
            match c.get_user_tier(get(&id)).await {
                Ok(t) => {
                    assert_eq!(t.into_inner().user_id, id);
                    served = true;
                    break;
                }
                Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "the promoted replica never served the user");
        let after_recovery = acked.load(std::sync::atomic::Ordering::Relaxed);
        eventually(20, || async {
            acked.load(std::sync::atomic::Ordering::Relaxed) > after_recovery + 10
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.await.unwrap();
        let (acked, failed) = (
            acked.load(std::sync::atomic::Ordering::Relaxed),
            failures.load(std::sync::atomic::Ordering::Relaxed),
        );
        let now = stored_on_cluster(&cluster, &id).await.unwrap().orders;
        assert!(
            now >= before + replicated && now <= before + acked + failed,
            "before {before}, replicated {replicated}, acked {acked}, failed {failed}, stored {now}"
        );
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_on_one_replica_does_not_disturb_the_other() {
    bounded(async {
        let redis = RedisServer::start();
        // Each replica its own models directory (as during a staged rollout), one Redis.
        let (da, db) = (Dirs::new(), Dirs::new());
        publish(&da.models(), "v1", 1.0);
        publish(&db.models(), "v1", 1.0);
        let a = TestServer::start(redis_config(&da, &redis.url())).await;
        a.ready().await;
        let b = TestServer::start(redis_config(&db, &redis.url())).await;
        b.ready().await;
        let before = stored(&redis.client(), &user(4)).await.unwrap();
        let mut cb = b.client().await;
        let reads = tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..200 {
                let t = cb.get_user_tier(get(&user(4))).await.unwrap().into_inner();
                assert_eq!(t.model_version, "v1");
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        publish(&da.models(), "v2", 2.0);
        let mut ca = a.client().await;
        eventually(10, || {
            let mut ca = ca.clone();
            async move {
                ca.get_user_tier(get(&user(4)))
                    .await
                    .is_ok_and(|t| t.into_inner().model_version == "v2")
            }
        })
        .await;
        assert_eq!(reads.await.unwrap(), 200);
        // The swap did not reseed or touch the shared state.
        assert_eq!(stored(&redis.client(), &user(4)).await.unwrap(), before);
        let t = ca.get_user_tier(get(&user(4))).await.unwrap().into_inner();
        assert_eq!(t.model_version, "v2");
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

/// `tiering serve --state URL` as a child process.
fn spawn_replica(dirs: &Dirs, url: &str) -> ServerProcess {
    let opts = SpawnOptions {
        state: Some(url.to_string()),
        ..SpawnOptions::default()
    };
    ServerProcess::spawn_with(dirs, &[], opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_replica_mid_load_loses_no_acknowledged_event() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let replica = spawn_replica(&dirs, &redis.url());
        let client = redis.client();
        let mut c = replica.client().await;
        let before = stored(&client, &user(11)).await.unwrap().orders;
        let counts = Arc::new(std::sync::Mutex::new((0u32, 0u32)));
        let load = {
            let counts = counts.clone();
            tokio::spawn(async move {
                for i in 0..100_000 {
                    counts.lock().unwrap().1 += 1;
                    let r = c
                        .record_events(RecordEventsRequest {
                            events: vec![proto_order(&user(11), NOW - 20_000 + i)],
                        })
                        .await;
                    if r.is_err() {
                        return;
                    }
                    counts.lock().unwrap().0 += 1;
                }
            })
        };
        wait_until_async(|| counts.lock().unwrap().0 >= 200).await;
        replica.kill();
        load.await.unwrap();
        let (acked, sent) = *counts.lock().unwrap();
        let now = stored(&client, &user(11)).await.unwrap().orders;
        assert!(
            now >= before + acked && now <= before + sent,
            "before {before}, acked {acked}, sent {sent}, stored {now}"
        );
    })
    .await;
}

async fn wait_until_async(mut ok: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met within 10 s");
}
