//! Storage faults (issue 9): damaged or disagreeing state files stop the start instead of
//! silently dropping acknowledged events; `tiering state` checks, repairs, backs up and
//! restores; nothing acknowledged is lost.

use crate::helpers::{publish, state_cli, wal_segments, Dirs, TestServer, NOW};
use std::future::Future;
use std::time::Duration;
use tiering::pb::{self as proto, BatchGetUserTiersRequest, RecordEventsRequest};
use tiering::serve::ServeConfig;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test finished within 90 s");
}

fn order(user_id: &str) -> proto::Event {
    proto::Event {
        user_id: user_id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: NOW - 60,
            nanos: 0,
        }),
        kind: "order".into(),
        amount: 5.0,
        ..Default::default()
    }
}

pub(crate) fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Starts a server, records `n` events one request each (users `prefix-i`), and returns it.
async fn server_with_events(config: ServeConfig, prefix: &str, n: usize) -> TestServer {
    let server = TestServer::start(config).await;
    server.ready().await;
    let mut client = server.client().await;
    for id in ids(prefix, n) {
        client
            .record_events(RecordEventsRequest {
                events: vec![order(&id)],
            })
            .await
            .unwrap();
    }
    server
}

/// How many of `ids` the state holds, through a fresh server (stopped after).
pub(crate) async fn held(config: ServeConfig, ids: Vec<String>) -> usize {
    let server = TestServer::start(config).await;
    server.ready().await;
    let n = ids.len();
    let r = server
        .client()
        .await
        .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: ids })
        .await
        .unwrap()
        .into_inner();
    server.stop().await.unwrap();
    n - r.not_found.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_length_byte_stops_the_start_and_repair_is_the_operators_choice() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = server_with_events(dirs.config(), "acked", 20).await;
        server.kill().await;
        let segs = wal_segments(&dirs.state());
        assert_eq!(segs.len(), 1);
        let mut log = std::fs::read(&segs[0]).unwrap();
        log[3] ^= 0x40; // the high byte of the first record's length
        std::fs::write(&segs[0], &log).unwrap();

        let e = crate::helpers::start_error(dirs.config()).await.to_string();
        let name = segs[0].file_name().unwrap().to_string_lossy().to_string();
        assert!(e.contains(&name) && e.contains("at byte 0"), "{e}");
        assert_eq!(
            std::fs::read(&segs[0]).unwrap(),
            log,
            "the file is left as it was"
        );
        let (ok, out) = state_cli("check", &dirs.state(), &[]);
        assert!(!ok && out.contains("at byte 0"), "{out}");

        // The operator salvages: only the damaged record is dropped, the original is kept.
        let (ok, out) = state_cli("repair", &dirs.state(), &["--salvage"]);
        assert!(ok, "{out}");
        let broken = format!("{}.broken", segs[0].display());
        assert_eq!(std::fs::read(&broken).unwrap(), log);
        assert_eq!(held(dirs.config(), ids("acked", 20)).await, 19);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_without_salvage_cuts_the_log_at_the_damage() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = server_with_events(dirs.config(), "acked", 10).await;
        server.kill().await;
        let segs = wal_segments(&dirs.state());
        let mut log = std::fs::read(&segs[0]).unwrap();
        let first = 8 + u32::from_le_bytes([log[0], log[1], log[2], log[3]]) as usize;
        let second =
            8 + u32::from_le_bytes([log[first], log[first + 1], log[first + 2], log[first + 3]])
                as usize;
        log[first + second + 9] ^= 0xff; // the third record's payload
        std::fs::write(&segs[0], &log).unwrap();
        let (ok, out) = state_cli("repair", &dirs.state(), &[]);
        assert!(ok && out.contains(".broken"), "{out}");
        assert_eq!(held(dirs.config(), ids("acked", 10)).await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_at_a_record_boundary_is_reported_by_check() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = server_with_events(dirs.config(), "acked", 3).await;
        server.kill().await;
        let segs = wal_segments(&dirs.state());
        let log = std::fs::read(&segs[0]).unwrap();
        let first = 8 + u32::from_le_bytes([log[0], log[1], log[2], log[3]]) as usize;
        std::fs::write(&segs[0], &log[..first]).unwrap();
        let (ok, out) = state_cli("check", &dirs.state(), &[]);
        assert!(ok, "{out}");
        assert!(
            out.contains("1 records (1 events)")
                && out.contains("ending at a record boundary")
                && out.contains("stopped without its final snapshot"),
            "{out}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_snapshot_after_a_clean_stop_refuses_to_start() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = server_with_events(dirs.config(), "acked", 5).await;
        server.stop().await.unwrap();
        std::fs::remove_file(dirs.state().join("state.bin")).unwrap();
        let e = crate::helpers::start_error(dirs.config()).await.to_string();
        assert!(e.contains("state.bin is missing"), "{e}");
        let (ok, out) = state_cli("check", &dirs.state(), &[]);
        assert!(!ok && out.contains("state.bin is missing"), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_every_event_acknowledged_before_it() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = server_with_events(dirs.config(), "before", 10).await;
        let backup = dirs.root.path().join("backup");
        let (ok, out) = state_cli("backup", &dirs.state(), &["--to", backup.to_str().unwrap()]);
        assert!(ok, "{out}");
        let mut client = server.client().await;
        client
            .record_events(RecordEventsRequest {
                events: vec![order("after")],
            })
            .await
            .unwrap();
        server.stop().await.unwrap();

        let (ok, out) = state_cli(
            "restore",
            &dirs.state(),
            &["--from", backup.to_str().unwrap()],
        );
        assert!(!ok && out.contains("--force"), "{out}");
        let (ok, out) = state_cli(
            "restore",
            &dirs.state(),
            &["--from", backup.to_str().unwrap(), "--force"],
        );
        assert!(ok, "{out}");
        assert_eq!(held(dirs.config(), ids("before", 10)).await, 10);
        assert_eq!(held(dirs.config(), vec!["after".into()]).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_cannot_hold_the_shutdown_past_the_grace_period() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let config = ServeConfig {
            shutdown_grace_ms: 300,
            ..dirs.config()
        };
        let server = server_with_events(config.clone(), "acked", 5).await;
        // A client that sends its request headers and never its body.
        let mut grpc = tonic::client::Grpc::new(server.channel().await);
        grpc.ready().await.unwrap();
        let frozen = tokio::spawn(async move {
            let body = tokio_stream::pending::<RecordEventsRequest>();
            grpc.client_streaming::<_, RecordEventsRequest, proto::RecordEventsResponse, _>(
                tonic::Request::new(body),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/tiering.v1.Tiering/RecordEvents",
                ),
                tonic_prost::ProstCodec::default(),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let stopped = tokio::time::timeout(Duration::from_secs(5), server.stop_task()).await;
        let stopped = stopped.expect("the shutdown finished within 5 s of a 300 ms grace period");
        assert!(stopped.is_ok(), "{stopped:?}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        frozen.abort();
        assert!(dirs.state().join("state.bin").exists());
        assert_eq!(
            wal_segments(&dirs.state()).len(),
            0,
            "the final snapshot covers the log"
        );
        assert_eq!(held(config, ids("acked", 5)).await, 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_live_bundle_falls_back_to_the_newest_valid_version_on_restart() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        publish(&dirs.models(), "v2", 2.0);
        let server = server_with_events(dirs.config(), "acked", 3).await;
        server.stop().await.unwrap();
        let model = dirs.models().join("v2").join("model.json");
        let mut bytes = std::fs::read(&model).unwrap();
        bytes[30] ^= 0x5a;
        std::fs::write(&model, bytes).unwrap();

        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        let info = client
            .get_model_info(proto::GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.version, "v1");
        assert!(
            info.warnings
                .iter()
                .any(|w| w.starts_with("fallback: v2 (named by MODELS/CURRENT) does not load")),
            "{:?}",
            info.warnings
        );
        let metrics = server.metrics().await;
        assert!(
            metrics.contains(r#"tiering_model_fallback{serving="v1",wanted="v2"} 1"#),
            "{metrics}"
        );
        let r = client
            .batch_get_user_tiers(BatchGetUserTiersRequest {
                user_ids: ids("acked", 3),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.not_found.is_empty());
        // A good CURRENT again: the fallback ends.
        publish(&dirs.models(), "v3", 3.0);
        let mut version = String::new();
        for _ in 0..200 {
            version = client
                .get_model_info(proto::GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version;
            if version == "v3" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(version, "v3");
        assert!(!server.metrics().await.contains("tiering_model_fallback{"));
        server.stop().await.unwrap();
    })
    .await;
}

/// A private mount namespace holding a small tmpfs on `dir`, kept alive by a `sleep` process;
/// files in it are reached through `/proc/PID/root`. `None` where the test cannot get one
/// (not root, no `unshare`), which fails the test in CI (`CI=true`).
struct PrivateTmpfs {
    holder: std::process::Child,
}

impl PrivateTmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<PrivateTmpfs> {
        use std::io::{BufRead, BufReader};
        std::fs::create_dir_all(dir).unwrap();
        let script = format!(
            "mount -t tmpfs -o size={size} tmpfs '{}' && echo mounted && exec sleep 600",
            dir.display()
        );
        let mut holder = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let mut out = BufReader::new(holder.stdout.take()?);
        if out.read_line(&mut line).ok()? == 0 || line.trim() != "mounted" {
            let _ = holder.kill();
            let _ = holder.wait();
            return None;
        }
        Some(PrivateTmpfs { holder })
    }

    fn pid(&self) -> String {
        self.holder.id().to_string()
    }

    /// `path` as seen inside the namespace.
    fn inside(&self, path: &std::path::Path) -> std::path::PathBuf {
        std::path::Path::new("/proc")
            .join(self.pid())
            .join("root")
            .join(path.strip_prefix("/").unwrap())
    }
}

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

async fn writes_health(channel: tonic::transport::Channel) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tiering.v1.Tiering.RecordEvents".into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_writes_resume_once_space_is_freed() {
    use crate::helpers::ServerProcess;
    use tonic_health::pb::health_check_response::ServingStatus;
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let Some(tmpfs) = PrivateTmpfs::mount(&dirs.state(), "1m") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: this test needs root and unshare -m (a private mount namespace)"
            );
            eprintln!("skipped: no private mount namespace (needs root and unshare)");
            return;
        };
        let pid = tmpfs.pid();
        let via = ["nsenter", "-t", pid.as_str(), "-m", "--"];
        let server = ServerProcess::spawn_via(&via, &dirs, &[]);
        let mut client = server.client().await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut acked = Vec::new();
        for id in ids("before", 5) {
            client
                .record_events(RecordEventsRequest {
                    events: vec![order(&id)],
                })
                .await
                .unwrap();
            acked.push(id);
        }
        // Fill the tmpfs.
        let filler = tmpfs.inside(&dirs.state().join("filler"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![7u8; 4096];
            for _ in 0..10_000 {
                if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
                    break;
                }
            }
        }
        let big: Vec<proto::Event> = (0..200).map(|i| order(&format!("full-{i}"))).collect();
        let e = client
            .record_events(RecordEventsRequest {
                events: big.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        // Reads go on; readiness for writes says NOT_SERVING.
        let r = client
            .batch_get_user_tiers(BatchGetUserTiersRequest {
                user_ids: acked.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.not_found.is_empty());
        let mut status = -1;
        for _ in 0..50 {
            status = writes_health(channel.clone()).await;
            if status == ServingStatus::NotServing as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, ServingStatus::NotServing as i32);

        // Space freed: readiness recovers by itself (no write needed), then writes succeed.
        std::fs::remove_file(&filler).unwrap();
        for _ in 0..100 {
            status = writes_health(channel.clone()).await;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, ServingStatus::Serving as i32);
        client
            .record_events(RecordEventsRequest {
                events: vec![order("after")],
            })
            .await
            .unwrap();
        acked.push("after".into());

        // SIGTERM: a clean exit, and nothing acknowledged lost across the restart.
        let mut server = server;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
        let status = server.child.wait().unwrap();
        assert!(status.success(), "exit after SIGTERM: {status}");
        drop(server);
        let server = ServerProcess::spawn_via(&via, &dirs, &[]);
        let mut client = server.client().await;
        let r = client
            .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: acked })
            .await
            .unwrap()
            .into_inner();
        assert!(r.not_found.is_empty(), "lost: {:?}", r.not_found);
    })
    .await;
}

/// `state check` on a directory that does not exist says so (a typo, or a server that never
/// ran there), not that the server would refuse to start: a server creates its directory.
#[test]
fn state_check_on_a_missing_directory_says_there_is_nothing_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-state");
    let (ok, out) = state_cli("check", &missing, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{}: no such state directory", missing.display())),
        "{out}"
    );
    assert!(!out.contains("refuse to start"), "{out}");
    assert!(!missing.exists(), "check created nothing");
    // Under a file the directory cannot be looked at: the OS error, not "no such".
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (ok, out) = state_cli("check", &file.join("state"), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("reading the state directory") && out.contains("Not a directory"),
        "{out}"
    );
}
