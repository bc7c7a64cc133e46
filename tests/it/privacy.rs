//! A person's rights end to end (issue 11, item 3) and the audit log (item 5): erasure survives
//! a crash, log replay, snapshots and retraining with the suppression list; on Redis it
//! survives a replay of the event topic by a fresh consumer group and a reseed; erasure racing
//! with RecordEvents ends erased; export returns what is held; an objection hides the user and
//! withdrawing it restores them; the audit log names who acted and carries only the keyed hash.

use crate::helpers::{publish, tiering_cli, user, Dirs, ServerProcess, SpawnOptions, TestServer};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tiering::bundle::BundleStore;
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::{self as proto};
use tonic::transport::Channel;
use tonic::Code;

type Client = TieringClient<Channel>;

/// Every test is bounded in time.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("test finished within 240 s");
}

/// Runs the CLI on a blocking thread; panics with its output on failure.
async fn cli(args: Vec<String>) -> String {
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        tiering_cli(&a)
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    out
}

async fn tier_code(c: &mut Client, id: &str) -> Code {
    match c
        .get_user_tier(proto::GetUserTierRequest { user_id: id.into() })
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Every user ListAtRiskUsers returns (first page, up to 10,000).
async fn at_risk_ids(c: &mut Client) -> Vec<String> {
    let mut s = c
        .list_at_risk_users(proto::ListAtRiskUsersRequest {
            min_churn_probability: 0.0,
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(u) = s.message().await.unwrap() {
        out.push(u.user_id);
    }
    out
}

fn order(id: &str, ts: i64) -> proto::Event {
    proto::Event {
        user_id: id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: ts,
            nanos: 0,
        }),
        kind: "order".into(),
        amount: 9.5,
        ..Default::default()
    }
}

/// ExportUser's document, as sent and parsed.
async fn export(c: &mut Client, id: &str) -> (String, serde_json::Value) {
    let doc = c
        .export_user(proto::ExportUserRequest { user_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .json;
    let v = serde_json::from_str(&doc).unwrap();
    (doc, v)
}

async fn record(c: &mut Client, events: Vec<proto::Event>) -> u64 {
    c.record_events(proto::RecordEventsRequest { events })
        .await
        .unwrap()
        .into_inner()
        .accepted
}

async fn erase(c: &mut Client, id: &str) -> proto::EraseUserResponse {
    c.erase_user(proto::EraseUserRequest { user_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// The postcard form of an id (length byte, bytes) is nowhere in `bytes`.
fn holds_id(bytes: &[u8], id: &str) -> bool {
    let mut needle = vec![id.len() as u8];
    needle.extend_from_slice(id.as_bytes());
    bytes.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// The user ids of a scores file written by `tiering score` (CSV).
fn score_ids(path: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records().map(|rec| rec.unwrap()[0].to_string()).collect()
}

/// The user ids of a bundle's scored snapshot (`scores.parquet`).
fn bundle_score_ids(dir: &Path) -> Vec<String> {
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let f = std::fs::File::open(dir.join("scores.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let col = b.column_by_name("user_id").unwrap();
        let ids = col.as_string::<i32>();
        out.extend(ids.iter().flatten().map(str::to_string));
    }
    out
}

fn os(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Generated data (300 users) trained into `models`; returns the data directory.
async fn trained(root: &Path, models: &Path) -> PathBuf {
    let data = root.join("data");
    cli(vec![
        "generate".into(),
        "--users".into(),
        "300".into(),
        "--days".into(),
        "150".into(),
        "--seed".into(),
        "3".into(),
        "--end".into(),
        "2026-06-30".into(),
        "--out".into(),
        os(&data),
    ])
    .await;
    train(&data, models, &[]).await;
    data
}

async fn train(data: &Path, models: &Path, extra: &[String]) -> String {
    let mut args = vec![
        "train".into(),
        "--data".into(),
        os(data),
        "--models".into(),
        os(models),
        "--k".into(),
        "3".into(),
    ];
    args.extend(extra.iter().cloned());
    cli(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_user_is_nowhere_after_a_crash_log_replay_snapshots_and_retraining_with_the_suppression_list(
) {
    bounded(async {
        let dirs = Dirs::new();
        let models = dirs.models();
        let data = trained(dirs.root.path(), &models).await;
        let first = BundleStore::new(&models).load_current().unwrap();
        let seeded = first.load_snapshot().unwrap().user_ids;
        let victim = seeded[7].clone();
        let other = seeded[8].clone();
        assert!(bundle_score_ids(&first.dir).contains(&victim));

        let mut config = dirs.config();
        config.now = Some("2026-07-01T00:00:00Z".into());
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let mut c = server.client().await;
        assert_eq!(tier_code(&mut c, &victim).await, Code::Ok);
        let ts = 1_782_000_000; // 2026-06-21
        assert_eq!(
            record(&mut c, vec![order(&victim, ts), order(&other, ts)]).await,
            2
        );

        // Erased through the CLI, as an operator would.
        let out = cli(vec![
            "erase".into(),
            victim.clone(),
            "--server".into(),
            server.addr.to_string(),
        ])
        .await;
        assert!(out.contains("the user's data was removed"), "{out}");
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        let listed = at_risk_ids(&mut c).await;
        assert!(listed.contains(&other) && !listed.contains(&victim));
        // Later events for the erased id are dropped, not a new history.
        assert_eq!(record(&mut c, vec![order(&victim, ts + 60)]).await, 0);
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        let erased_list = std::fs::read_to_string(dirs.state().join("privacy/erased")).unwrap();
        assert!(!erased_list.contains(&victim), "{erased_list}");

        // A crash: the log (with its erasure record) is replayed.
        server.kill().await;
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let mut c = server.client().await;
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        assert_eq!(tier_code(&mut c, &other).await, Code::Ok);
        assert!(!at_risk_ids(&mut c).await.contains(&victim));
        // A clean stop writes a snapshot without the user; it stays erased after it.
        server.stop().await.unwrap();
        let snapshot = std::fs::read(dirs.state().join("state.bin")).unwrap();
        assert!(!holds_id(&snapshot, &victim));
        assert!(holds_id(&snapshot, &other));
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let mut c = server.client().await;
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        server.stop().await.unwrap();

        // Retraining with the state directory's suppression list forgets the user.
        let state = os(&dirs.state());
        train(&data, &models, &["--suppress".into(), state.clone()]).await;
        let second = BundleStore::new(&models).load_current().unwrap();
        assert_ne!(second.version(), first.version());
        let reseed = second.load_snapshot().unwrap().user_ids;
        assert!(reseed.contains(&other) && !reseed.contains(&victim));
        assert!(!bundle_score_ids(&second.dir).contains(&victim));
        // Offline scoring honours the list too.
        let scores = dirs.root.path().join("scores.csv");
        let score = |extra: Vec<String>| {
            let mut a = vec![
                "score".into(),
                "--data".into(),
                os(&data),
                "--models".into(),
                os(&models),
                "--out".into(),
                os(&scores),
            ];
            a.extend(extra);
            a
        };
        cli(score(vec![])).await;
        assert!(score_ids(&scores).contains(&victim));
        cli(score(vec!["--suppress".into(), state])).await;
        let ids = score_ids(&scores);
        assert!(ids.contains(&other) && !ids.contains(&victim));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_racing_with_record_events_for_the_same_user_always_ends_erased_also_after_a_replay(
) {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let config = dirs.config();
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let c = server.client().await;
        let ts = crate::helpers::NOW - 3600;
        let rounds = 12;
        for r in 0..rounds {
            let id = user(r);
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let mut c = c.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        for k in 0..10 {
                            let e = order(&id, ts + (w * 10 + k) as i64);
                            let _ = c
                                .record_events(proto::RecordEventsRequest { events: vec![e] })
                                .await;
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(2 * (r as u64 % 4))).await;
            let mut admin = c.clone();
            erase(&mut admin, &id).await;
            for w in writers {
                w.await.unwrap();
            }
        }
        let mut c2 = c.clone();
        for r in 0..rounds {
            assert_eq!(
                tier_code(&mut c2, &user(r)).await,
                Code::NotFound,
                "round {r}"
            );
        }
        assert_eq!(tier_code(&mut c2, &user(rounds)).await, Code::Ok);
        server.kill().await;
        let server = TestServer::start(config).await;
        server.ready().await;
        let mut c = server.client().await;
        for r in 0..rounds {
            assert_eq!(
                tier_code(&mut c, &user(r)).await,
                Code::NotFound,
                "replayed {r}"
            );
        }
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_returns_the_held_data_and_an_objection_hides_the_user_until_it_is_withdrawn() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let config = dirs.config();
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let mut c = server.client().await;
        let id = user(3);

        let (doc, v) = export(&mut c, &id).await;
        assert_eq!(v["user_id"], id.as_str());
        assert_eq!(v["held"], true);
        assert_eq!(v["profiling_objected"], false);
        assert_eq!(v["aggregates"]["orders"], 1, "{doc}");
        assert!(v["score"]["churn_probability"].is_number(), "{doc}");
        assert!(v["score"]["tier_id"].is_string(), "{doc}");

        let before = c
            .set_profiling_objection(proto::SetProfilingObjectionRequest {
                user_id: id.clone(),
                objected: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!before.previously_objected);
        let s = c
            .get_user_tier(proto::GetUserTierRequest {
                user_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().starts_with("profiling_objected"), "{s:?}");
        let batch = c
            .batch_get_user_tiers(proto::BatchGetUserTiersRequest {
                user_ids: vec![id.clone(), user(4)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.objected, vec![id.clone()]);
        assert_eq!(batch.users.len(), 1);
        let scored = c
            .score_user(proto::ScoreUserRequest {
                user_id: id.clone(),
                events: vec![order(&id, crate::helpers::NOW - 60)],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(scored.code(), Code::FailedPrecondition);
        assert!(!at_risk_ids(&mut c).await.contains(&id));
        // The data is kept: the export still has it, without a score.
        let (doc, v) = export(&mut c, &id).await;
        assert_eq!(v["profiling_objected"], true);
        assert!(v["score"].is_null() && v["aggregates"].is_object(), "{doc}");

        // Durable: still objected after a restart; withdrawn through the CLI, the user is back.
        server.stop().await.unwrap();
        let server = TestServer::start(config).await;
        server.ready().await;
        let mut c = server.client().await;
        assert_eq!(tier_code(&mut c, &id).await, Code::FailedPrecondition);
        let out = cli(vec![
            "object".into(),
            id.clone(),
            "--withdraw".into(),
            "--server".into(),
            server.addr.to_string(),
        ])
        .await;
        assert!(out.contains("withdrawn (before: objected)"), "{out}");
        assert_eq!(tier_code(&mut c, &id).await, Code::Ok);
        assert!(at_risk_ids(&mut c).await.contains(&id));
        let out = cli(vec![
            "export-user".into(),
            id.clone(),
            "--server".into(),
            server.addr.to_string(),
        ])
        .await;
        assert!(out.contains("\"aggregates\""), "{out}");
        server.stop().await.unwrap();
    })
    .await;
}

/// A keys file (mode 0600) with one admin token named `ops-admin`; returns the token.
fn admin_keys(path: &Path) -> String {
    use tiering::serve::auth::keys::{new_token, token_hash, KeyEntry, KeysFile};
    use tiering::serve::auth::Role;
    let token = new_token();
    let mut file = KeysFile::default();
    file.keys.push(KeyEntry {
        name: "ops-admin".into(),
        sha256: hex::encode(token_hash(&token)),
        roles: vec![Role::Admin, Role::Reader],
        rate: None,
        burst: None,
    });
    file.write(path).unwrap();
    token
}

const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn id_hash(id: &str) -> String {
    use tiering::io::privacy::PrivacyKey;
    PrivacyKey::parse(KEY_HEX, "test")
        .unwrap()
        .hash(id)
        .to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_the_identity_and_the_hashed_id_and_never_the_raw_id() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let keys = dirs.root.path().join("keys.toml");
        let token = admin_keys(&keys);
        let audit = dirs.root.path().join("audit.jsonl");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (k, a) = (os(&keys), os(&audit));
        let server = ServerProcess::spawn_with(
            &dirs,
            &[
                ("RUST_LOG", "info"),
                ("TIERING__KEYS_FILE", k.as_str()),
                ("TIERING__AUDIT_LOG", a.as_str()),
                ("TIERING_PRIVACY_KEY", KEY_HEX),
            ],
            SpawnOptions {
                log: Some(log.clone()),
                ..SpawnOptions::default()
            },
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer: tonic::metadata::AsciiMetadataValue =
            format!("Bearer {token}").parse().unwrap();
        let mut c = TieringClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
        let mut ready = false;
        for _ in 0..400 {
            if c.get_model_info(proto::GetModelInfoRequest {})
                .await
                .is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ready, "no model became live");
        let (erased, objected) = (user(5), user(6));
        c.export_user(proto::ExportUserRequest {
            user_id: erased.clone(),
        })
        .await
        .unwrap();
        c.erase_user(proto::EraseUserRequest {
            user_id: erased.clone(),
        })
        .await
        .unwrap();
        c.set_profiling_objection(proto::SetProfilingObjectionRequest {
            user_id: objected.clone(),
            objected: true,
        })
        .await
        .unwrap();
        c.promote_model(proto::PromoteModelRequest {
            version: "v1".into(),
        })
        .await
        .unwrap();
        let refused = c.rollback_model(proto::RollbackModelRequest {}).await;
        assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
        // A state repair from the command line lands in the same file.
        let spare = dirs.root.path().join("spare-state");
        std::fs::create_dir_all(&spare).unwrap();
        let out = cli(vec![
            "state".into(),
            "repair".into(),
            "--state".into(),
            os(&spare),
            "--audit-log".into(),
            a.clone(),
        ])
        .await;
        assert!(out.contains("no damaged record"), "{out}");

        let text = std::fs::read_to_string(&audit).unwrap();
        let entries: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let find = |action: &str| {
            entries
                .iter()
                .find(|e| e["action"] == action)
                .unwrap_or_else(|| panic!("no {action} entry in {text}"))
                .clone()
        };
        for (action, subject) in [
            ("ExportUser", Some(&erased)),
            ("EraseUser", Some(&erased)),
            ("SetProfilingObjection", Some(&objected)),
            ("PromoteModel", None),
            ("RollbackModel", None),
        ] {
            let e = find(action);
            assert_eq!(e["who"], "ops-admin", "{e}");
            assert!(e["ts"].is_string(), "{e}");
            match subject {
                Some(id) => assert_eq!(e["subject"], id_hash(id).as_str(), "{e}"),
                None => assert!(e["subject"].is_null(), "{e}"),
            }
        }
        assert_eq!(find("RollbackModel")["outcome"], "refused");
        assert!(find("state repair")["who"]
            .as_str()
            .unwrap()
            .starts_with("cli:"));
        server.kill();
        let lines = log.lock().unwrap().join("\n");
        assert!(
            lines.contains("ops-admin") && lines.contains(&id_hash(&erased)),
            "the audit log lines: {lines}"
        );
        for id in [&erased, &objected] {
            assert!(!text.contains(id.as_str()), "{id} in the audit file");
            assert!(!lines.contains(id.as_str()), "{id} in the server's log");
        }
    })
    .await;
}

/// A `tiering aggregate` child process on a topic and a Redis, killed on drop.
#[cfg(feature = "kafka")]
struct Aggregator(std::process::Child);

#[cfg(feature = "kafka")]
impl Aggregator {
    fn spawn(events: &str, state: &str, models: &Path, group: &str) -> Aggregator {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tiering"))
            .args(["aggregate", "--events", events, "--state", state])
            .arg("--models")
            .arg(models)
            .args(["--group", group, "--session-timeout-ms", "6000"])
            .args(["--max-wait-ms", "10"])
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the aggregator exited at start"
            );
            if line.starts_with("tiering: aggregating ") {
                break;
            }
        }
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(drop));
        Aggregator(child)
    }
}

#[cfg(feature = "kafka")]
impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(feature = "kafka")]
fn waiting(events: Vec<proto::Event>) -> tonic::Request<proto::RecordEventsRequest> {
    let mut req = tonic::Request::new(proto::RecordEventsRequest { events });
    req.metadata_mut()
        .insert("tiering-wait-applied-ms", "30000".parse().unwrap());
    req
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_an_erased_user_stays_erased_through_a_replay_of_the_event_topic_and_a_reseed() {
    use crate::redis_fixture::RedisServer;
    use redis::Commands;
    bounded(async {
        let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
        cluster.create_topic("privacy", 6, 3).unwrap();
        let events = format!("kafka://{}/privacy", cluster.bootstrap_servers());
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let env = [
            ("TIERING__EVENTS", events.as_str()),
            ("TIERING__EVENTS_LINGER_MS", "0"),
            ("TIERING_PRIVACY_KEY", KEY_HEX),
        ];
        let opts = || SpawnOptions {
            state: Some(redis.url()),
            ..SpawnOptions::default()
        };
        let server = ServerProcess::spawn_with(&dirs, &env, opts());
        let mut c = server.client().await;
        let first = Aggregator::spawn(&events, &redis.url(), &dirs.models(), "g1");
        let victim = user(5);
        let ts = crate::helpers::NOW - 3600;
        let mut batch: Vec<proto::Event> =
            (0..40).map(|i| order(&user(i), ts + i as i64)).collect();
        batch.push(order(&victim, ts + 100));
        let r = c.record_events(waiting(batch)).await.unwrap().into_inner();
        assert!(r.applied, "the aggregator applied the batch");
        let last = *r.positions.last().unwrap();
        assert_eq!(tier_code(&mut c, &victim).await, Code::Ok);

        assert!(erase(&mut c, &victim).await.existed);
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        let mut conn = redis.client().get_connection().unwrap();
        let value: Option<Vec<u8>> = conn.get(format!("u:{{{victim}}}")).unwrap();
        assert!(value.is_none());
        let tomb: Vec<u8> = conn.get(format!("e:{{{victim}}}")).unwrap();
        assert_eq!(tomb[0], 1, "the tombstone carries a watermark");
        let partition = i32::from_le_bytes(tomb[1..5].try_into().unwrap());
        let offset = i64::from_le_bytes(tomb[5..13].try_into().unwrap());
        assert_eq!((partition, offset), (last.partition, last.offset));
        let listed: bool = conn
            .sismember("{privacy}:erased", id_hash(&victim))
            .unwrap();
        assert!(listed);
        let members: Vec<String> = conn.smembers("{privacy}:erased").unwrap();
        assert!(!members.contains(&victim));

        // RecordEvents drops new events for the erased id (the replica reads the shared list)...
        let r = c
            .record_events(proto::RecordEventsRequest {
                events: vec![order(&victim, ts + 200)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 0, "RecordEvents dropped the erased id's event");
        // ...and one produced to the topic behind the server's back meets the tombstone. Then a
        // fresh consumer group replays the whole topic (every old event of the user, and that
        // one): none of them brings the user back.
        let target = tiering::serve::config::EventsTarget {
            brokers: cluster.bootstrap_servers(),
            topic: "privacy".into(),
        };
        let sink_opts = tiering::serve::events::SinkOptions {
            timeout: Duration::from_secs(10),
            linger: Duration::ZERO,
        };
        let raw = tiering::serve::state::UserEvent {
            user_id: victim.clone(),
            ts: ts + 250,
            kind: tiering::features::EventKind::Order,
            amount: 3.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        };
        let produced = tiering::serve::events::kafka::KafkaSink::new(&target, sink_opts)
            .unwrap()
            .produce(&[raw])
            .await
            .unwrap();
        assert_eq!(produced.len(), 1);
        drop(first);
        let _second = Aggregator::spawn(&events, &redis.url(), &dirs.models(), "g2");
        let marker: Vec<proto::Event> = (0..40)
            .filter(|i| *i != 5)
            .map(|i| order(&user(i), ts + 300 + i as i64))
            .collect();
        let r = c.record_events(waiting(marker)).await.unwrap().into_inner();
        assert!(r.applied, "the second group caught up");
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        let value: Option<Vec<u8>> = conn.get(format!("u:{{{victim}}}")).unwrap();
        assert!(value.is_none(), "the topic's replay resurrected the user");

        // Redis loses its marker; a reseed from the bundle (which holds the user) skips them.
        server.kill();
        let _: () = conn.del("tiering:{meta}").unwrap();
        let mut reseed = env.to_vec();
        reseed.push(("TIERING__RESEED_STATE", "true"));
        let server = ServerProcess::spawn_with(&dirs, &reseed, opts());
        let mut c = server.client().await;
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        assert_eq!(tier_code(&mut c, &user(150)).await, Code::Ok);
        assert!(!at_risk_ids(&mut c).await.contains(&victim));
        server.kill();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_started_over_from_the_bundle_does_not_reseed_an_erased_user() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let config = dirs.config();
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let mut c = server.client().await;
        let victim = user(9);
        assert!(erase(&mut c, &victim).await.existed);
        server.stop().await.unwrap();
        // Start over: the snapshot and the log go, the privacy directory stays (README).
        let state = dirs.state();
        for entry in std::fs::read_dir(&state).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::remove_file(p).unwrap();
            }
        }
        let server = TestServer::start(config).await;
        server.ready().await;
        let mut c = server.client().await;
        assert_eq!(tier_code(&mut c, &user(10)).await, Code::Ok);
        assert_eq!(tier_code(&mut c, &victim).await, Code::NotFound);
        server.stop().await.unwrap();
    })
    .await;
}

/// One ListAtRiskUsers page of `limit` after `token`: the ids and the next token.
async fn at_risk_page(c: &mut Client, limit: u32, token: &str) -> (Vec<String>, String) {
    let mut s = c
        .list_at_risk_users(proto::ListAtRiskUsersRequest {
            min_churn_probability: 0.0,
            limit,
            page_token: token.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut ids, mut next) = (Vec::new(), String::new());
    while let Some(u) = s.message().await.unwrap() {
        ids.push(u.user_id);
        next = u.next_page_token;
    }
    (ids, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_through_at_risk_pages_goes_past_a_page_whose_users_all_objected_meanwhile() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut c = server.client().await;
        let all = at_risk_ids(&mut c).await;
        assert!(all.len() >= 6, "{all:?}");
        // The first page pins the ranking version; then the whole second page objects.
        let (first, token) = at_risk_page(&mut c, 2, "").await;
        assert_eq!(first, all[..2].to_vec());
        assert!(!token.is_empty());
        for id in &all[2..4] {
            c.set_profiling_objection(proto::SetProfilingObjectionRequest {
                user_id: id.clone(),
                objected: true,
            })
            .await
            .unwrap();
        }
        let mut walked = first;
        let mut token = token;
        for _ in 0..all.len() {
            if token.is_empty() {
                break;
            }
            let (ids, next) = at_risk_page(&mut c, 2, &token).await;
            walked.extend(ids);
            token = next;
        }
        let expected: Vec<String> = all
            .iter()
            .filter(|id| !all[2..4].contains(id))
            .cloned()
            .collect();
        assert_eq!(walked, expected);
    })
    .await;
}

/// An access request shows the person what the service says about them, named as GetUserTier
/// names it: interests by category, rooms by id, channel shares, value figures and the
/// playbook, not only the raw aggregates (whose interests are category hashes).
#[tokio::test]
async fn export_carries_the_profile_as_get_user_tier_names_it() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut c = server.client().await;
        let id = user(5);
        let mut e = order(&id, crate::helpers::NOW - 3600);
        e.category = "beauty".into();
        e.room_id = "room_9".into();
        e.channel = "live".into();
        assert_eq!(record(&mut c, vec![e]).await, 1);
        let t = c
            .get_user_tier(proto::GetUserTierRequest {
                user_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!t.interests.is_empty() && !t.rooms.is_empty(), "{t:?}");
        let (doc, v) = export(&mut c, &id).await;
        let s = &v["score"];
        let interests: Vec<(String, f64)> = t
            .interests
            .iter()
            .map(|i| (i.category.clone(), i.score))
            .collect();
        let got: Vec<(String, f64)> = s["interests"]
            .as_array()
            .unwrap_or_else(|| panic!("no interests in {doc}"))
            .iter()
            .map(|i| {
                let cat = i["category"].as_str().unwrap_or_default().to_string();
                (cat, i["score"].as_f64().unwrap_or(f64::NAN))
            })
            .collect();
        assert_eq!(got, interests, "{doc}");
        assert!(got.iter().any(|(c, _)| c == "beauty"), "{doc}");
        assert_eq!(
            s["rooms"][0]["room_id"],
            t.rooms[0].room_id.as_str(),
            "{doc}"
        );
        let channels: Vec<&str> = t.channels.iter().map(|c| c.channel.as_str()).collect();
        let got: Vec<&str> = s["channels"]
            .as_array()
            .unwrap_or_else(|| panic!("no channels in {doc}"))
            .iter()
            .filter_map(|c| c["channel"].as_str())
            .collect();
        assert_eq!(got, channels, "{doc}");
        for (key, want) in [
            ("clv", t.clv),
            ("expected_orders", t.expected_orders),
            ("p_alive", t.p_alive),
            ("value_at_risk", t.value_at_risk),
        ] {
            assert_eq!(s[key].as_f64(), Some(want), "{key}: {doc}");
        }
        assert_eq!(
            s["recommended_actions"],
            serde_json::json!(t.recommended_actions),
            "{doc}"
        );
        server.stop().await.unwrap();
    })
    .await;
}
