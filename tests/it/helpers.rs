//! Fixtures for the gRPC tests: small model bundles built with the public API only, and a real
//! server on 127.0.0.1:0 that a test starts, stops gracefully, or kills.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tiering::bundle::manifest::ModelMetrics;
use tiering::bundle::{BundleStore, Manifest, Snapshot};
use tiering::features::{
    Event, EventKind, FeatureSet, LifecycleThresholds, RfmThresholds, StandardScaler, Timestamp,
    UserAggregate, DAY,
};
use tiering::model::calibration::Platt;
use tiering::model::churn::{ChurnModel, LinearModel};
use tiering::model::identity::TierIdentity;
use tiering::model::metrics::BinaryMetrics;
use tiering::model::scorer::quantiles;
use tiering::model::tiers::TierModel;
use tiering::model::{RiskThresholds, Scorer};
use tiering::pb::tiering_client::TieringClient;
use tiering::serve::{ServeConfig, ServeError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The pinned server clock: 2024-06-01T00:00:00Z.
pub const NOW: Timestamp = 1_717_200_000;
/// The bundles' snapshot time.
pub const AS_OF: Timestamp = NOW - DAY;
/// Users in the fixture snapshot: `user-000` ... `user-199`.
pub const USERS: usize = 200;

pub fn user(i: usize) -> String {
    format!("user-{i:03}")
}

/// A two-tier scorer over every feature: churn risk rises with recency (`recency_weight`),
/// tier "recent" vs "lapsed" by recency.
pub fn scorer(recency_weight: f64) -> Scorer {
    let features = FeatureSet::all();
    let d = features.len();
    let ident = |id: &str, en: &str, zh: &str, play: &[&str]| {
        let mut t = TierIdentity::new(id, en, zh, play.iter().map(|s| s.to_string()).collect());
        t.description = format!("{en} users");
        t
    };
    let mut centroids = vec![0.0; 2 * d];
    centroids[0] = 0.0; // recent: log1p(recency) near 1
    centroids[d] = 3.0; // lapsed: log1p(recency) near 4 (about 50 days)
    let mut weights = vec![0.0; d];
    weights[0] = recency_weight;
    let tiers = TierModel::new(
        centroids,
        d,
        vec![
            ident(
                "active_regulars",
                "Active regulars",
                "活跃常客",
                &["membership points", "flash sales"],
            ),
            ident("dormant", "Dormant", "沉睡用户", &["win-back coupon"]),
        ],
    );
    let mut scorer = Scorer::from_parts(
        features,
        StandardScaler {
            mean: vec![1.0; d],
            std: vec![1.0; d],
        },
        tiers,
        ChurnModel::Logistic(LinearModel::new(weights, -1.0)),
        Platt::default(),
        RiskThresholds::default(),
        Some(RfmThresholds {
            recency_days: 10.0,
            frequency: 1.0,
            monetary: 50.0,
        }),
        LifecycleThresholds::default(),
    );
    scorer.risk_quantiles = quantiles(&[0.1, 0.2, 0.5, 0.9]);
    scorer.validate().expect("fixture scorer is valid");
    scorer
}

pub fn order(ts: Timestamp, amount: f64) -> Event {
    Event {
        ts,
        kind: EventKind::Order,
        amount,
        watch_seconds: 0,
        room: 0,
        category: 0,
        order: 0,
        channel: 0,
    }
}

/// `user-i` ordered `i % 100` days before AS_OF (so pairs of users tie on probability).
pub fn snapshot() -> Snapshot {
    snapshot_of(USERS)
}

/// [`snapshot`] with `n` users.
pub fn snapshot_of(n: usize) -> Snapshot {
    let mut user_ids = Vec::with_capacity(n);
    let mut aggregates = Vec::with_capacity(n);
    for i in 0..n {
        let mut a = UserAggregate::with_registration(Some(AS_OF - 400 * DAY));
        a.apply(&order(
            AS_OF - (i % 100) as i64 * DAY - 3600,
            20.0 + i as f64,
        ));
        user_ids.push(user(i));
        aggregates.push(a);
    }
    Snapshot {
        as_of: AS_OF,
        user_ids,
        aggregates,
    }
}

pub fn manifest(version: &str, scorer: &Scorer) -> Manifest {
    let mut m = Manifest::for_scorer(version, AS_OF + 12 * 3600, scorer);
    m.as_of = "2024-05-31T00:00:00Z".into();
    m.as_of_ts = AS_OF;
    m.horizon_days = 30;
    for t in &mut m.tiers {
        t.users = 100;
        t.share = 0.5;
        t.mean_churn_probability = 0.5;
    }
    m.metrics.evaluation = "out of time".into();
    m.metrics.models = vec![ModelMetrics {
        name: "logistic_regression".into(),
        metrics: BinaryMetrics {
            n: 200,
            positives: 80,
            roc_auc: 0.8,
            pr_auc: 0.7,
            brier: 0.15,
            log_loss: 0.45,
            lift_top_decile: 2.0,
        },
        fit_seconds: 0.1,
    }];
    m
}

/// Writes bundle `version` (recency weight `w`) and makes it current.
pub fn publish(models: &Path, version: &str, w: f64) {
    publish_snapshot(models, version, w, &snapshot());
}

/// [`publish`] with a given snapshot.
pub fn publish_snapshot(models: &Path, version: &str, w: f64, snap: &Snapshot) {
    let store = BundleStore::new(models);
    let s = scorer(w);
    store
        .begin(version)
        .unwrap()
        .commit(manifest(version, &s), &s, snap)
        .unwrap();
    store.promote(version).unwrap();
}

/// Writes bundle `version`, damages its model.json, and points CURRENT at it by hand (as a
/// botched deploy would; `promote` itself refuses damaged bundles).
pub fn publish_corrupt(models: &Path, version: &str) {
    let store = BundleStore::new(models);
    let s = scorer(1.0);
    let dir = store
        .begin(version)
        .unwrap()
        .commit(manifest(version, &s), &s, &snapshot())
        .unwrap();
    let model = dir.join("model.json");
    let mut bytes = std::fs::read(&model).unwrap();
    for b in bytes.iter_mut().take(40).skip(20) {
        *b ^= 0x5a;
    }
    std::fs::write(&model, bytes).unwrap();
    std::fs::write(models.join("CURRENT.tmp"), format!("{version}\n")).unwrap();
    std::fs::rename(models.join("CURRENT.tmp"), models.join("CURRENT")).unwrap();
}

/// A temporary models + state layout.
pub struct Dirs {
    pub root: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Self {
        Dirs {
            root: tempfile::tempdir().unwrap(),
        }
    }
    pub fn models(&self) -> PathBuf {
        self.root.path().join("models")
    }
    pub fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }
    pub fn config(&self) -> ServeConfig {
        std::fs::create_dir_all(self.models()).unwrap();
        ServeConfig {
            models: self.models(),
            state_dir: Some(self.state()),
            now: Some("2024-06-01T00:00:00Z".into()),
            model_poll_ms: 50,
            ..ServeConfig::default()
        }
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Starts on 127.0.0.1:0. Retries while the state directory is still locked by a server
    /// that was just killed (its last connections may take a moment to close).
    pub async fn start(config: ServeConfig) -> TestServer {
        for _ in 0..100 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (addr, metrics_addr) = (
                listener.local_addr().unwrap(),
                metrics.local_addr().unwrap(),
            );
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let cfg = config.clone().check().unwrap();
            let task = tokio::spawn(async move {
                tiering::serve::run_with_metrics(cfg, listener, Some(metrics), async {
                    let _ = rx.await;
                })
                .await
            });
            // Either it fails fast (locked state) or it is up.
            tokio::time::sleep(Duration::from_millis(30)).await;
            if task.is_finished() {
                match task.await.unwrap() {
                    Err(e) if e.to_string().contains("in use by another") => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    other => panic!("server exited at start: {other:?}"),
                }
            }
            return TestServer {
                addr,
                metrics_addr,
                stop: Some(tx),
                task,
            };
        }
        panic!("the state directory stayed locked");
    }

    pub async fn client(&self) -> TieringClient<Channel> {
        TieringClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Waits until a model is live (health SERVING).
    pub async fn ready(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().await);
        for _ in 0..200 {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "tiering.v1.Tiering".into(),
                })
                .await
                .unwrap()
                .into_inner();
            if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server never became ready");
    }

    /// Graceful shutdown: drain, final snapshot.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("shutdown within 20 s")
            .unwrap()
    }

    /// Graceful shutdown without a time limit of its own: the caller bounds it.
    pub async fn stop_task(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap()
    }

    /// As close to `kill -9` as one process gets: the server future is dropped mid-flight, no
    /// drain, no snapshot.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// GET /metrics as text.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// Runs a server that is expected to refuse to start, and returns its error. Retries while the
/// state directory is still locked by a server that was just killed.
pub async fn start_error(config: ServeConfig) -> ServeError {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = tiering::serve::run_with_metrics(
            config.clone().check().unwrap(),
            listener,
            None,
            std::future::pending(),
        );
        match tokio::time::timeout(Duration::from_secs(10), run).await {
            Ok(Err(e)) if e.to_string().contains("in use by another") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => return e,
            Ok(Ok(())) => panic!("the server stopped without an error"),
            Err(_) => panic!("the server started"),
        }
    }
    panic!("the state directory stayed locked");
}

/// The non-empty log segments of a state directory.
pub fn wal_segments(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("wal-"))
        })
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    v.sort();
    v
}

/// A `tiering serve` child process on 127.0.0.1:0.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: String,
}

/// Extra ways to start a [`ServerProcess`].
#[derive(Default)]
pub struct SpawnOptions {
    /// Run under `ulimit -n N` (a shell wrapper lowers RLIMIT_NOFILE before exec).
    pub nofile: Option<u64>,
    /// Collect the server's stderr lines here.
    pub log: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
    /// Run the binary through this command (e.g. `nsenter -t PID -m --`).
    pub wrapper: Vec<String>,
    /// `--state` (e.g. a `redis://` URL) instead of the test's state directory.
    pub state: Option<String>,
}

impl ServerProcess {
    pub fn spawn(dirs: &Dirs, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::spawn_with(dirs, env, SpawnOptions::default())
    }

    /// [`ServerProcess::spawn`], the binary run through `wrapper` (e.g. `nsenter -t PID -m --`).
    pub fn spawn_via(wrapper: &[&str], dirs: &Dirs, env: &[(&str, &str)]) -> ServerProcess {
        let opts = SpawnOptions {
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            ..SpawnOptions::default()
        };
        ServerProcess::spawn_with(dirs, env, opts)
    }

    pub fn spawn_with(dirs: &Dirs, env: &[(&str, &str)], opts: SpawnOptions) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        let bin = env!("CARGO_BIN_EXE_tiering");
        // wrapper..., then (for a lower descriptor limit) sh -c 'ulimit -n N && exec ...', then bin.
        let mut argv: Vec<String> = opts.wrapper.clone();
        if let Some(n) = opts.nofile {
            argv.extend([
                "sh".to_string(),
                "-c".to_string(),
                format!("ulimit -n {n} && exec \"$0\" \"$@\""),
            ]);
        }
        let mut cmd = match argv.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--now", "2024-06-01"])
            .arg("--models")
            .arg(dirs.models())
            .arg("--state")
            .arg(
                opts.state
                    .clone()
                    .map_or_else(|| dirs.state(), std::path::PathBuf::from),
            )
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the server exited before listening"
            );
            if let Some(rest) = line.strip_prefix("tiering: gRPC on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        let log = opts.log;
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(log) = &log {
                    log.lock().unwrap().push(line);
                }
            }
        });
        ServerProcess { child, addr }
    }

    /// A client, once the server reports SERVING.
    pub async fn client(&self) -> TieringClient<Channel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        for _ in 0..400 {
            let s = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            if s.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return TieringClient::new(ch);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server process never became ready");
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tiering ARGS…` to completion: (success, stdout + stderr).
pub fn tiering_cli(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiering"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `tiering state ACTION --state DIR EXTRA…`.
///
/// A server killed in process (its task aborted) lets go of the state directory's lock only once
/// its log thread has wound down: while the command says the directory is in use, it is run
/// again (up to 5 s), as [`start_error`] does for servers.
pub fn state_cli(action: &str, state: &Path, extra: &[&str]) -> (bool, String) {
    use std::ffi::OsStr;
    let mut args: Vec<&OsStr> = vec![OsStr::new("state"), OsStr::new(action)];
    args.push(OsStr::new("--state"));
    args.push(state.as_os_str());
    args.extend(extra.iter().map(OsStr::new));
    let mut result = tiering_cli(&args);
    for _ in 0..100 {
        if !result.1.contains("in use by another running server") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        result = tiering_cli(&args);
    }
    result
}

/// The `tiering` binary, as a command to add arguments to.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tiering"))
}

/// Runs `cmd`, expecting success; its stdout (the failure names the command and both streams).
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn tiering");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "command failed: {cmd:?}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `state.bin` an earlier binary wrote for `snap`: its `as_of` and ids, with `aggregates`
/// in that binary's layout (postcard, as the bundle stores it).
pub fn earlier_state_bin<A: serde::Serialize>(snap: &Snapshot, aggregates: Vec<A>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct SnapshotOf<'a, A> {
        as_of: i64,
        user_ids: &'a [String],
        aggregates: Vec<A>,
    }
    postcard::to_stdvec(&SnapshotOf {
        as_of: snap.as_of,
        user_ids: &snap.user_ids,
        aggregates,
    })
    .expect("encode")
}

/// Makes the published bundle `dir` look as an earlier binary wrote it: `state` (a snapshot in
/// that binary's layout) as its `state.bin`, `format` as the manifest's `format_version`, `edit`
/// applied to the manifest, the file hash and the manifest's checksum redone. Returns the
/// format version the bundle had.
pub fn rewrite_as_format(
    dir: &Path,
    format: u32,
    state: &[u8],
    edit: impl FnOnce(&mut serde_json::Value),
) -> serde_json::Value {
    use sha2::Digest;
    std::fs::write(dir.join("state.bin"), state).expect("state");
    let mpath = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).expect("manifest")).expect("json");
    let was = manifest["format_version"].clone();
    manifest["format_version"] = format.into();
    manifest["files"]["state.bin"] = hex::encode(sha2::Sha256::digest(state)).into();
    edit(&mut manifest);
    let text = serde_json::to_string_pretty(&manifest).expect("json");
    std::fs::write(&mpath, &text).expect("write");
    std::fs::write(
        dir.join("manifest.sha256"),
        hex::encode(sha2::Sha256::digest(text.as_bytes())),
    )
    .expect("sum");
    was
}
