//! gRPC load benchmark: `tiering serve`'s server holding 1,000,000 users, against a trivial tonic
//! "echo" server (the ceiling of tonic plus this load generator on this machine), in one run.
//!
//! Run: `cargo bench --bench grpc_load` (about three minutes). The table goes to stdout and to
//! `target/grpc_load.md`. `GRPC_LOAD_USERS` and `GRPC_LOAD_SECS` shrink the run while developing
//! (`GRPC_LOAD_USERS=100000 GRPC_LOAD_SECS=1 cargo bench --profile dev --bench grpc_load`).
//!
//! # Setup (honest state)
//! 1. The real binary generates 20,000 users × 180 days and trains a bundle (`tiering generate`,
//!    `tiering train`): the scorer, tiers and calibration the server uses.
//! 2. The same seeded generator simulates 1,000,000 *distinct* users in process and folds each
//!    user's own events into a `UserAggregate` (as `tiering serve` does with recorded events).
//!    They are written with the trained scorer as a new bundle whose `state.bin` holds all of
//!    them, and promoted. The server seeds its user table from that bundle exactly as in
//!    production; the benchmark checks `GetModelInfo.users_held` is 1,000,000 before measuring.
//! 3. Our server runs in process (`tiering::serve::run`, 127.0.0.1:0, clock pinned to the end of
//!    the history) on its own tokio runtime; the echo server (a `Tiering` implementation whose
//!    `GetUserTier` returns a constant, real `UserTier` captured from our server, and whose
//!    `BatchGetUserTiers` returns that user once per id: the same response bytes, no work) runs
//!    on the same runtime. Tonic's defaults apply to the echo (TCP_NODELAY on).
//!
//! # Load
//! Closed loop: `c` tasks on a separate client runtime, spread over up to 4 HTTP/2 connections,
//! each sending its next request as soon as the previous answer arrives; random known user ids
//! (uniform over the million). A warm-up, then a fixed window; every latency goes into an
//! HdrHistogram (3 significant digits). Scenarios: GetUserTier at c = 1, 16, 64;
//! BatchGetUserTiers of 100 and 1,000 ids at c = 4; and, ours only, ListAtRiskUsers (a page of
//! 100 and of 1,000 over the full million, min probability 0.5) at c = 1.
//!
//! Then, ours only, at-risk paging through the ranking (see [`at_risk_walk`]): the first page
//! right after SERVING (the first build), later first pages, and 20 later pages of 1,000.
//!
//! # Durability
//! RecordEvents (a `like` by a random known user a minute before the clock), 1 event per request
//! at c = 1, 16, 64 and 100 per request at c = 16, first against our server with the write-ahead
//! log's fsync off (`wal_fsync = false`, as for every read scenario). Then the server stops
//! gracefully (drain, final state snapshot; timed), restarts from that state directory with
//! fsync on (the production default; timed to SERVING) and the same writes run again: the
//! difference is the cost of durability. For each write scenario the server's
//! `tiering_wal_group_requests` histogram (read from its `/metrics` before and after) gives the
//! requests per group commit (one fsync each when fsync is on). There is no echo ceiling for
//! writes.
//!
//! # TLS and token auth
//! GetUserTier at c = 16 against our plain server, a second in-process server holding the same
//! users with TLS (a CA and a `localhost` certificate made with rcgen), and a third with TLS and
//! bearer-token auth (a keys file as `tiering keys` writes it: one reader and retention key, no
//! quota; the rounds start once both have built their at-risk ranking; every
//! request carries `authorization: Bearer …`), in 3 interleaved rounds; medians and the ratio to
//! the plain median (issue 11's target: under 15% loss, p99 under 1 ms).
//!
//! # User table
//! The table alone, in this process: `UserStore::get` (as the server holds users) over the
//! simulated users from 1 and 2 threads for 1 s each, against a plain `HashMap` read without a
//! lock (the ceiling on this machine): do readers slow each other down?
//!
//! # Memory
//! Measured on `tiering serve` subprocesses (the release binary), so the figure is the server's
//! alone: VmRSS once health says SERVING, and VmHWM (the peak, which includes the deserialised
//! bundle snapshot while the table is seeded), for the 20,000-user bundle and the 1,000,000-user
//! one; the difference over the extra users gives bytes per user.

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiering::bundle::{BundleStore, Snapshot};
use tiering::features::{hash_str, UserAggregate};
use tiering::generate::{generate, room_id, user_id, GenerateParams, CATEGORIES};
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::tiering_server::{Tiering, TieringServer};
use tiering::pb::{self as proto, UserTier};
use tiering::serve::auth::keys::{new_token, token_hash, KeyEntry, KeysFile};
use tiering::serve::auth::Role;
use tiering::serve::state::embedded::store::UserStore;
use tiering::serve::ServeConfig;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_tiering");
/// The generated history ends with this day; the servers' clock is pinned to its end.
const END_DATE: &str = "2026-06-30";
const NOW: &str = "2026-07-01T00:00:00Z";
const NOW_TS: i64 = 1_782_864_000;
const TRAIN_USERS: u64 = 20_000;
const DAYS: u32 = 180;
const MAX_CONNECTIONS: usize = 4;
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const BUNDLE: &str = "bench-1m";
/// Interleaved rounds of the TLS-cost runs (plain, TLS, TLS + token), medians reported.
const TLS_ROUNDS: usize = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs this without `--bench`: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        println!("grpc_load: run with `cargo bench --bench grpc_load`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("grpc_load failed: {e}");
        std::process::exit(1);
    }
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[grpc_load] {}", msg.as_ref());
}

fn run() -> Result<()> {
    let users = env_u64("GRPC_LOAD_USERS", 1_000_000)?;
    let secs = env_u64("GRPC_LOAD_SECS", 3)?;
    if users < TRAIN_USERS {
        return Err(format!("GRPC_LOAD_USERS must be at least {TRAIN_USERS}").into());
    }
    let started = Instant::now();
    let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp_root)?;
    let work = tempfile::Builder::new()
        .prefix("grpc_load-")
        .tempdir_in(&tmp_root)?;
    let dir = work.path();

    // 1. Train on a small generated set with the real binary.
    let small_models = train_small(dir)?;

    // 2. A bundle with `users` distinct simulated users and the trained scorer.
    let t = Instant::now();
    let big_models = dir.join("models-big");
    let (snapshot, events, bundle_bytes) = write_big_bundle(&small_models, &big_models, users)?;
    log(format!(
        "simulated {users} users ({events} events) and wrote their bundle ({:.0} MB state) in {:.1} s",
        bundle_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));

    // 3. The user table alone, on those users.
    let table = measure_table(&snapshot)?;
    drop(snapshot);
    for r in &table {
        log(r.describe());
    }

    // 4. Memory of the real server process, small and big.
    let (mem_small, mem_big) = measure_memory(dir, &small_models, &big_models)?;

    // 5. Our server (fsync off) and the echo server, in process.
    let (server_rt, client_rt) = runtimes()?;
    let config = ServeConfig {
        models: big_models.clone(),
        state_dir: Some(dir.join("state")),
        now: Some(NOW.into()),
        wal_fsync: false,
        ..ServeConfig::default()
    };
    let t = Instant::now();
    let ours = server_rt.block_on(Ours::start(config.clone()))?;
    client_rt.block_on(wait_serving(ours.addr, Duration::from_secs(300)))?;
    let (held, sample, model) = client_rt.block_on(describe_live(ours.addr))?;
    if held != users {
        return Err(format!("the server holds {held} users, expected {users}").into());
    }
    let ready_secs = t.elapsed().as_secs_f64();
    log(format!(
        "in-process server ready with {held} users in {ready_secs:.1} s"
    ));
    let at_risk = client_rt.block_on(at_risk_walk(ours.addr, 20))?;
    log(at_risk.clone());
    let echo = server_rt.block_on(Echo::start(sample))?;

    // 6. Load: reads and writes, the log not fsynced.
    let warmup = Duration::from_millis(750);
    let bench = Bench {
        rt: &client_rt,
        users,
        warmup,
        window: Duration::from_secs(secs),
    };
    let scenarios = [
        Scenario::new("GetUserTier", Call::Get, 1),
        Scenario::new("GetUserTier", Call::Get, 16),
        Scenario::new("GetUserTier", Call::Get, 64),
        Scenario::new("BatchGetUserTiers ×100", Call::Batch(100), 4),
        Scenario::new("BatchGetUserTiers ×1000", Call::Batch(1000), 4),
        Scenario::new("ListAtRiskUsers (limit 100)", Call::AtRisk(100), 1),
        Scenario::new("ListAtRiskUsers (limit 1000)", Call::AtRisk(1000), 1),
        Scenario::new("RecordEvents ×1", Call::Record(1), 1),
        Scenario::new("RecordEvents ×1", Call::Record(1), 16),
        Scenario::new("RecordEvents ×1", Call::Record(1), 64),
        Scenario::new("RecordEvents ×100", Call::Record(100), 16),
    ];
    let mut results = bench.run(&scenarios, &ours, echo.addr)?;

    // 7. Durability: a graceful stop, a restart from the state directory with fsync on, and the
    // same writes again.
    let (ours, stop_secs, restart_secs) =
        restart_with_fsync(&server_rt, &client_rt, ours, config.clone())?;
    let durable: Vec<Scenario> = scenarios
        .iter()
        .filter(|s| matches!(s.call, Call::Record(_)))
        .map(|s| Scenario { fsync: true, ..*s })
        .collect();
    results.extend(bench.run(&durable, &ours, echo.addr)?);

    // 8. The cost of TLS and of token auth (GetUserTier at 16 in flight, interleaved rounds).
    let tls = tls_cost(&bench, &server_rt, &config, dir, ours.addr)?;

    // 9. Stop everything.
    server_rt.block_on(async {
        let _ = ours.stop().await;
        echo.stop().await;
    });
    drop(client_rt);
    drop(server_rt);

    let run = RunInfo {
        model,
        users,
        secs,
        warmup,
        elapsed: started.elapsed(),
        ready_secs,
        stop_secs,
        restart_secs,
    };
    let mut report = report(&results, &run, &mem_small, &mem_big, &table);
    report.push_str(&at_risk);
    report.push_str(&tls_report(&tls));
    publish(&report, &tmp_root)
}

/// The server runtime (a thread per core) and the load generator's (2 threads).
fn runtimes() -> Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    Ok((server_rt, client_rt))
}

/// Prints the report and writes it to `target/grpc_load.md`.
fn publish(report: &str, tmp_root: &Path) -> Result<()> {
    println!("{report}");
    let out = tmp_root
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| tmp_root.to_path_buf())
        .join("grpc_load.md");
    std::fs::write(&out, report)?;
    log(format!("written to {}", out.display()));
    Ok(())
}

/// One ListAtRiskUsers page: (users, next token).
async fn at_risk_page(
    c: &mut TieringClient<Channel>,
    req: impl tonic::IntoRequest<proto::ListAtRiskUsersRequest>,
) -> Result<(u64, String)> {
    let mut stream = c.list_at_risk_users(req).await?.into_inner();
    let (mut n, mut token) = (0u64, String::new());
    while let Some(u) = stream.message().await? {
        n += 1;
        if !u.next_page_token.is_empty() {
            token = u.next_page_token;
        }
    }
    Ok((n, token))
}

/// ListAtRiskUsers through the incrementally maintained ranking, pages of 1,000 over every user:
/// the first page right after SERVING (it waits for the first build, so it measures the build:
/// one scan scoring every user, a sort, the tree), then 5 more first pages, then a walk of
/// `pages` later pages following the tokens. Returns a report section.
async fn at_risk_walk(addr: SocketAddr, pages: usize) -> Result<String> {
    let mut c = client(addr).await?;
    let req = proto::ListAtRiskUsersRequest {
        limit: 1000,
        ..Default::default()
    };
    let t = Instant::now();
    let (_, mut token) = at_risk_page(&mut c, req.clone()).await?;
    let build = t.elapsed();
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        at_risk_page(&mut c, req.clone()).await?;
        firsts.push(t.elapsed());
    }
    let mut later = Vec::new();
    while later.len() < pages && !token.is_empty() {
        let t = Instant::now();
        let (_, next) = at_risk_page(
            &mut c,
            proto::ListAtRiskUsersRequest {
                page_token: token,
                ..req.clone()
            },
        )
        .await?;
        later.push(t.elapsed());
        token = next;
    }
    let ms = |v: &mut Vec<Duration>| {
        v.sort();
        let f = |d: Duration| d.as_secs_f64() * 1e3;
        match (v.first(), v.get(v.len() / 2), v.last()) {
            (Some(a), Some(m), Some(b)) => format!("{:.1} / {:.1} / {:.1}", f(*a), f(*m), f(*b)),
            _ => "-".into(),
        }
    };
    Ok(format!(
        "\n### At-risk paging (ranking), pages of 1,000, every user\n\n\
         | what | ms (min / median / max) |\n|---|---|\n\
         | first page right after SERVING (waits for the first build) | {:.1} |\n\
         | first page (ranking built) ×{} | {} |\n\
         | later pages (following tokens) ×{} | {} |\n",
        build.as_secs_f64() * 1e3,
        firsts.len(),
        ms(&mut firsts),
        later.len(),
        ms(&mut later)
    ))
}

/// Generates [`TRAIN_USERS`] users and trains a bundle on them with the real binary; returns
/// the models directory.
fn train_small(dir: &Path) -> Result<PathBuf> {
    let t = Instant::now();
    let data = dir.join("data");
    let small_models = dir.join("models-20k");
    tiering_cmd(&[
        "generate",
        "--users",
        &TRAIN_USERS.to_string(),
        "--days",
        &DAYS.to_string(),
        "--seed",
        "42",
        "--end",
        END_DATE,
        "--out",
        path_str(&data)?,
    ])?;
    tiering_cmd(&[
        "train",
        "--data",
        path_str(&data)?,
        "--models",
        path_str(&small_models)?,
        "--seed",
        "42",
    ])?;
    log(format!(
        "trained on {TRAIN_USERS} users in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(small_models)
}

/// The resident memory of `tiering serve` subprocesses on the small and the big bundle.
fn measure_memory(dir: &Path, small_models: &Path, big_models: &Path) -> Result<(Memory, Memory)> {
    let t = Instant::now();
    let mem_small = measure_subprocess(small_models, &dir.join("state-mem-small"))?;
    let mem_big = measure_subprocess(big_models, &dir.join("state-mem-big"))?;
    log(format!(
        "server RSS: {:.0} MB with {} users, {:.0} MB with {} users ({:.1} s)",
        mem_small.rss_kb as f64 / 1024.0,
        mem_small.users,
        mem_big.rss_kb as f64 / 1024.0,
        mem_big.users,
        t.elapsed().as_secs_f64()
    ));
    Ok((mem_small, mem_big))
}

/// The live model as our server describes it: (users held, `user_id(0)`'s answer, a line
/// naming the model).
async fn describe_live(addr: SocketAddr) -> Result<(u64, UserTier, String)> {
    let mut c = client(addr).await?;
    let info = c
        .get_model_info(proto::GetModelInfoRequest {})
        .await?
        .into_inner();
    let sample = c
        .get_user_tier(proto::GetUserTierRequest {
            user_id: user_id(0),
        })
        .await?
        .into_inner();
    let model = format!(
        "{} ({} tiers, horizon {} days)",
        info.chosen_model,
        info.tiers.len(),
        info.horizon_days
    );
    Ok((info.users_held, sample, model))
}

/// Stops our server gracefully and restarts it from its state directory with the log fsynced;
/// returns the new server, the seconds the stop took and the seconds to SERVING again.
fn restart_with_fsync(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    ours: Ours,
    config: ServeConfig,
) -> Result<(Ours, f64, f64)> {
    let stop_secs = server_rt.block_on(ours.stop())?;
    log(format!(
        "graceful stop with final snapshot: {stop_secs:.2} s"
    ));
    let t = Instant::now();
    let ours = server_rt.block_on(Ours::start(ServeConfig {
        wal_fsync: true,
        ..config
    }))?;
    client_rt.block_on(wait_serving(ours.addr, Duration::from_secs(300)))?;
    let restart_secs = t.elapsed().as_secs_f64();
    log(format!(
        "restart from the state snapshot, fsync on: {restart_secs:.2} s"
    ));
    Ok((ours, stop_secs, restart_secs))
}

/// Our server, running in process on the runtime that started it, with its metrics endpoint.
struct Ours {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tiering::serve::ServeError>>,
}

impl Ours {
    /// Binds 127.0.0.1:0 for gRPC and for metrics and spawns the server.
    async fn start(config: ServeConfig) -> Result<Ours> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (addr, metrics_addr) = (listener.local_addr()?, metrics.local_addr()?);
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tiering::serve::run_with_metrics(
            config.check()?,
            listener,
            Some(metrics),
            async {
                let _ = rx.await;
            },
        ));
        Ok(Ours {
            addr,
            metrics_addr,
            stop,
            task,
        })
    }

    /// A graceful stop (drain, final state snapshot); returns the seconds it took.
    async fn stop(self) -> Result<f64> {
        let t = Instant::now();
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(120), self.task)
            .await
            .map_err(|_| "our server did not stop within 120 s")???;
        Ok(t.elapsed().as_secs_f64())
    }

    /// The `tiering_wal_group_requests` histogram's sum and count from GET /metrics: requests
    /// committed to the log, and group commits.
    async fn group_commits(&self) -> Result<(f64, f64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        let value = |name: &str| -> Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no {name} in /metrics").into())
        };
        Ok((
            value("tiering_wal_group_requests_sum")?,
            value("tiering_wal_group_requests_count")?,
        ))
    }
}

/// How every scenario is run: on the client runtime, over `users` known users.
struct Bench<'a> {
    rt: &'a tokio::runtime::Runtime,
    users: u64,
    warmup: Duration,
    window: Duration,
}

impl Bench<'_> {
    /// Runs each scenario against our server, and against the echo server where it is a
    /// ceiling; for writes, also reads the requests per group commit from our metrics.
    fn run<'s>(
        &self,
        scenarios: &'s [Scenario],
        ours: &Ours,
        echo: SocketAddr,
    ) -> Result<Vec<(&'s Scenario, Outcome, Option<Outcome>)>> {
        let mut results = Vec::new();
        for s in scenarios {
            let writes = matches!(s.call, Call::Record(_));
            let before = if writes {
                Some(self.rt.block_on(ours.group_commits())?)
            } else {
                None
            };
            let mut o = self.rt.block_on(load(
                ours.addr,
                &Secure::default(),
                s,
                self.users,
                self.warmup,
                self.window,
            ))?;
            if let Some(before) = before {
                let after = self.rt.block_on(ours.group_commits())?;
                o.per_commit = Some((after.0 - before.0) / (after.1 - before.1).max(1.0));
            }
            log(format!(
                "{} c={} {}: {}",
                s.name,
                s.concurrency,
                s.server(),
                o.brief()
            ));
            let e = if s.has_ceiling() {
                let e = self.rt.block_on(load(
                    echo,
                    &Secure::default(),
                    s,
                    self.users,
                    self.warmup,
                    self.window,
                ))?;
                log(format!(
                    "{} c={} echo: {}",
                    s.name,
                    s.concurrency,
                    e.brief()
                ));
                Some(e)
            } else {
                None
            };
            results.push((s, o, e));
        }
        Ok(results)
    }
}

/// The TLS-cost runs: per target (plain, TLS, TLS + token), one outcome per round.
type TlsRuns = Vec<(&'static str, Vec<Outcome>)>;

/// A CA and a `localhost` certificate signed by it, written into `dir`: (CA PEM, cert, key).
fn bench_certificates(dir: &Path) -> Result<(String, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "grpc_load CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((ca.pem(), cert_path, key_path))
}

/// GetUserTier at 16 in flight against our plain server and two more in-process servers holding
/// the same users: one with TLS, one with TLS and bearer-token auth (a keys file as
/// `tiering keys` writes it, one reader and retention key, no quota), in [`TLS_ROUNDS`] interleaved rounds.
fn tls_cost(
    bench: &Bench,
    server_rt: &tokio::runtime::Runtime,
    config: &ServeConfig,
    dir: &Path,
    plain: SocketAddr,
) -> Result<TlsRuns> {
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let (ca_pem, cert, key) = bench_certificates(&tls_dir)?;
    let token = new_token();
    let keys = tls_dir.join("keys.toml");
    let mut file = KeysFile::default();
    file.keys.push(KeyEntry {
        name: "bench".into(),
        sha256: hex::encode(token_hash(&token)),
        // Retention too: the at-risk page that waits for the server's first ranking build.
        roles: vec![Role::Reader, Role::Retention],
        rate: None,
        burst: None,
    });
    file.write(&keys)?;
    let tls_config = ServeConfig {
        state_dir: Some(dir.join("state-tls")),
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..config.clone()
    };
    let auth_config = ServeConfig {
        state_dir: Some(dir.join("state-auth")),
        keys_file: Some(keys),
        ..tls_config.clone()
    };
    let tls = Secure {
        ca_pem: Some(ca_pem),
        token: None,
    };
    let authed = Secure {
        token: Some(format!("Bearer {token}").parse()?),
        ..tls.clone()
    };
    let mut servers = Vec::new();
    for (cfg, secure) in [(tls_config, &tls), (auth_config, &authed)] {
        let s = server_rt.block_on(Ours::start(cfg))?;
        bench
            .rt
            .block_on(wait_serving_with(s.addr, secure, Duration::from_secs(300)))?;
        // The server builds its at-risk ranking after SERVING (seconds of CPU at 1M users):
        // the rounds start once that is done, or the first round measures the build.
        bench
            .rt
            .block_on(wait_ranked(s.addr, secure, Duration::from_secs(300)))?;
        servers.push(s);
    }
    let scenario = Scenario::new("GetUserTier", Call::Get, 16);
    let targets = [
        ("plain", plain, Secure::default()),
        ("TLS", servers[0].addr, tls),
        ("TLS + token auth", servers[1].addr, authed),
    ];
    let mut out: TlsRuns = targets.iter().map(|t| (t.0, Vec::new())).collect();
    for round in 1..=TLS_ROUNDS {
        for (i, (name, addr, secure)) in targets.iter().enumerate() {
            let o = bench.rt.block_on(load(
                *addr,
                secure,
                &scenario,
                bench.users,
                bench.warmup,
                bench.window,
            ))?;
            log(format!("TLS cost, round {round}, {name}: {}", o.brief()));
            out[i].1.push(o);
        }
    }
    for s in servers {
        server_rt.block_on(s.stop())?;
    }
    Ok(out)
}

/// The TLS-cost table: medians over the rounds, and the ratio to the plain median.
fn tls_report(runs: &TlsRuns) -> String {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let rps = |o: &[Outcome]| median(o.iter().map(Outcome::rps).collect());
    let plain = runs.first().map_or(f64::NAN, |r| rps(&r.1));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### The cost of TLS and token auth: GetUserTier at 16 in flight, {TLS_ROUNDS} interleaved rounds\n\n\
         | transport | req/s (median) | p50 (median) | p99 (median) | req/s / plain | req/s per round | errors |\n\
         |---|---|---|---|---|---|---|"
    );
    for (name, o) in runs {
        let r = rps(o);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {:.2} | {} | {} |",
            fmt_rate(r),
            fmt_us(median(o.iter().map(|o| o.p50_us).collect())),
            fmt_us(median(o.iter().map(|o| o.p99_us).collect())),
            r / plain,
            o.iter()
                .map(|o| fmt_rate(o.rps()))
                .collect::<Vec<_>>()
                .join(", "),
            o.iter().map(|o| o.errors).sum::<u64>()
        );
    }
    s
}

/// Lookups per second on the user table alone.
struct TableRate {
    /// `UserStore::get`, or a plain `HashMap::get` without a lock.
    locked: bool,
    shards: usize,
    threads: usize,
    per_sec: f64,
}

impl TableRate {
    fn describe(&self) -> String {
        let what = if self.locked {
            format!("UserStore::get ({} RwLock shards)", self.shards)
        } else {
            "HashMap::get, no lock (ceiling)".to_string()
        };
        format!(
            "{what}, {} thread(s): {:.2} M lookups/s",
            self.threads,
            self.per_sec / 1e6
        )
    }
}

/// The user table as the server holds it against a plain `HashMap` read without any lock: do
/// readers slow each other down? Each lookup copies the aggregate out, as GetUserTier does.
fn measure_table(snapshot: &Snapshot) -> Result<Vec<TableRate>> {
    let shards = ServeConfig::default().shards;
    let store = UserStore::new(shards);
    let mut plain = std::collections::HashMap::with_capacity(snapshot.user_ids.len());
    for (id, a) in snapshot.user_ids.iter().zip(&snapshot.aggregates) {
        store.insert(id, *a);
        plain.insert(id.as_str(), *a);
    }
    let ids = &snapshot.user_ids;
    let mut out = Vec::new();
    for locked in [true, false] {
        for threads in [1, 2] {
            let t = Instant::now();
            let total = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|k| {
                        let (store, plain) = (&store, &plain);
                        scope.spawn(move || {
                            let (mut hits, mut i) = (0u64, k * 7919);
                            while t.elapsed() < Duration::from_secs(1) {
                                for _ in 0..1000 {
                                    let id = &ids[i % ids.len()];
                                    let hit = if locked {
                                        std::hint::black_box(store.get(id)).is_some()
                                    } else {
                                        std::hint::black_box(plain.get(id.as_str()).copied())
                                            .is_some()
                                    };
                                    hits += u64::from(hit);
                                    i += 104_729;
                                }
                            }
                            hits
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| "a lookup thread panicked"))
                    .sum::<Result<u64, _>>()
            })?;
            out.push(TableRate {
                locked,
                shards,
                threads,
                per_sec: total as f64 / t.elapsed().as_secs_f64(),
            });
        }
    }
    Ok(out)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
}

/// Runs the real binary to completion.
fn tiering_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "`tiering {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Simulates `users` users and writes them with the small bundle's scorer as bundle
/// [`BUNDLE`], made current. Returns (the users' snapshot, events folded, state.bin bytes).
fn write_big_bundle(small: &Path, big: &Path, users: u64) -> Result<(Snapshot, u64, u64)> {
    let trained = BundleStore::new(small).load_current()?;
    let end = NOW_TS;
    let params = GenerateParams::new(end)
        .users(users)
        .days(DAYS)
        .seed(7)
        .check()?;
    let mut user_ids = Vec::with_capacity(users as usize);
    let mut aggregates = Vec::with_capacity(users as usize);
    let category_hash: Vec<u32> = CATEGORIES.iter().map(|c| hash_str(c)).collect();
    let mut room_hash: Vec<u32> = Vec::new();
    let summary = generate(&params, |user, events| {
        let mut agg = UserAggregate::with_registration(Some(user.registered_at));
        for e in events {
            let r = e.room as usize;
            if r >= room_hash.len() {
                room_hash.extend((room_hash.len()..=r).map(|i| hash_str(&room_id(i as u32))));
            }
            let mut ev = e.to_event_unhashed();
            ev.room = room_hash[r];
            ev.category = category_hash[usize::from(e.category)];
            agg.apply(&ev);
        }
        user_ids.push(user.user_id());
        aggregates.push(agg);
        Ok::<(), std::convert::Infallible>(())
    });
    let summary = match summary {
        Ok(s) => s,
        Err(never) => match never {},
    };
    let snapshot = Snapshot {
        as_of: end,
        user_ids,
        aggregates,
    };
    let mut manifest = trained.manifest.clone();
    manifest.version = BUNDLE.to_string();
    manifest.previous_version = Some(trained.manifest.version.clone());
    manifest.data.users = users;
    manifest.data.events = summary.events;
    let store = BundleStore::new(big);
    let dir = store
        .begin(BUNDLE)?
        .commit(manifest, &trained.scorer, &snapshot)?;
    store.promote(BUNDLE)?;
    let bytes = std::fs::metadata(dir.join(tiering::bundle::STATE))?.len();
    Ok((snapshot, summary.events, bytes))
}

/// The generator's event with room and category left for the caller to hash (cached above;
/// `GeneratedEvent::to_event` formats and hashes the room name for every event).
trait Unhashed {
    fn to_event_unhashed(&self) -> tiering::features::Event;
}

impl Unhashed for tiering::generate::GeneratedEvent {
    fn to_event_unhashed(&self) -> tiering::features::Event {
        tiering::features::Event {
            ts: self.ts,
            kind: self.kind,
            amount: self.amount().unwrap_or(0.0),
            watch_seconds: self.watch().unwrap_or(0),
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        }
    }
}

/// What `/proc/PID/status` said about a serving `tiering serve`.
struct Memory {
    users: u64,
    rss_kb: u64,
    hwm_kb: u64,
    ready_secs: f64,
}

/// Kills the child when dropped (every error path included).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tiering serve` on `models`, waits for SERVING, reads its memory, stops it.
fn measure_subprocess(models: &Path, state: &Path) -> Result<Memory> {
    let log_path = state.with_extension("log");
    let started = Instant::now();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--models",
            path_str(models)?,
            "--state",
            path_str(state)?,
            "--listen",
            "127.0.0.1:0",
            "--now",
            NOW,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let mut child = Reaper(child);
    let pid = child.0.id();
    let addr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|l| {
            l.strip_prefix("tiering: gRPC on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        }) {
            break addr;
        }
        if let Some(status) = child.0.try_wait()? {
            return Err(format!("tiering serve exited with {status}: {text}").into());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("tiering serve did not report its address".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let users = rt.block_on(async {
        wait_serving(addr, Duration::from_secs(300)).await?;
        let info = client(addr)
            .await?
            .get_model_info(proto::GetModelInfoRequest {})
            .await?
            .into_inner();
        Ok::<_, BoxError>(info.users_held)
    })?;
    // Close our connection before the stop: a graceful shutdown waits for connections to go,
    // and nobody would poll this runtime to answer the server's GOAWAY ping.
    drop(rt);
    let ready_secs = started.elapsed().as_secs_f64();
    // Let the post-seed snapshot write settle before reading the resident size.
    std::thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status").into())
    };
    let memory = Memory {
        users,
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
        ready_secs,
    };
    // SIGTERM: a graceful stop (the Reaper kills it if that hangs).
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && child.0.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(memory)
}

async fn client(addr: SocketAddr) -> Result<TieringClient<Channel>> {
    Ok(TieringClient::new(channel(addr).await?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// How a load reaches a server: TLS trusting `ca_pem` (else plain HTTP/2), with a bearer token.
#[derive(Clone, Default)]
struct Secure {
    ca_pem: Option<String>,
    token: Option<AsciiMetadataValue>,
}

async fn secure_channel(addr: SocketAddr, secure: &Secure) -> Result<Channel> {
    let Some(ca) = &secure.ca_pem else {
        return channel(addr).await;
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tcp_nodelay(true)
        .tls_config(tls)?
        .connect()
        .await?)
}

/// `msg` as a request, with `authorization: Bearer …` when a token is given.
fn with_token<T>(msg: T, token: Option<&AsciiMetadataValue>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", t.clone());
    }
    req
}

/// Returns once the server's first at-risk ranking is built (its first page waits for it),
/// or fails after `limit`.
async fn wait_ranked(addr: SocketAddr, secure: &Secure, limit: Duration) -> Result<()> {
    let mut c = TieringClient::new(secure_channel(addr, secure).await?);
    let req = proto::ListAtRiskUsersRequest {
        limit: 1,
        ..Default::default()
    };
    let page = at_risk_page(&mut c, with_token(req, secure.token.as_ref()));
    match tokio::time::timeout(limit, page).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(format!("{addr} had no at-risk ranking within {limit:?}").into()),
    }
}

async fn wait_serving(addr: SocketAddr, limit: Duration) -> Result<()> {
    wait_serving_with(addr, &Secure::default(), limit).await
}

async fn wait_serving_with(addr: SocketAddr, secure: &Secure, limit: Duration) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(ch) = secure_channel(addr, secure).await {
            let req = HealthCheckRequest {
                service: "tiering.v1.Tiering".into(),
            };
            if let Ok(r) = HealthClient::new(ch).check(req).await {
                if r.into_inner().status == ServingStatus::Serving as i32 {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{addr} was not SERVING within {limit:?}").into())
}

/// The ceiling: the same service shape, no work.
struct Echo {
    user: UserTier,
}

/// The echo server, running in process on the runtime that started it.
struct EchoServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Echo {
    /// Serves `user` as every answer on 127.0.0.1:0, with tonic's defaults (TCP_NODELAY on).
    async fn start(user: UserTier) -> Result<EchoServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let svc = TieringServer::new(Echo { user })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                }),
        );
        Ok(EchoServer { addr, stop, task })
    }
}

impl EchoServer {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[tonic::async_trait]
impl Tiering for Echo {
    async fn get_user_tier(
        &self,
        _req: Request<proto::GetUserTierRequest>,
    ) -> Result<Response<UserTier>, Status> {
        Ok(Response::new(self.user.clone()))
    }

    async fn batch_get_user_tiers(
        &self,
        req: Request<proto::BatchGetUserTiersRequest>,
    ) -> Result<Response<proto::BatchGetUserTiersResponse>, Status> {
        let n = req.get_ref().user_ids.len();
        Ok(Response::new(proto::BatchGetUserTiersResponse {
            users: vec![self.user.clone(); n],
            ..Default::default()
        }))
    }

    async fn score_user(
        &self,
        _req: Request<proto::ScoreUserRequest>,
    ) -> Result<Response<UserTier>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn record_events(
        &self,
        _req: Request<proto::RecordEventsRequest>,
    ) -> Result<Response<proto::RecordEventsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    type ListAtRiskUsersStream = tokio_stream::Empty<Result<UserTier, Status>>;

    async fn list_at_risk_users(
        &self,
        _req: Request<proto::ListAtRiskUsersRequest>,
    ) -> Result<Response<Self::ListAtRiskUsersStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn get_model_info(
        &self,
        _req: Request<proto::GetModelInfoRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn list_models(
        &self,
        _req: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn promote_model(
        &self,
        _req: Request<proto::PromoteModelRequest>,
    ) -> Result<Response<proto::ModelChange>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn rollback_model(
        &self,
        _req: Request<proto::RollbackModelRequest>,
    ) -> Result<Response<proto::ModelChange>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn erase_user(
        &self,
        _req: Request<proto::EraseUserRequest>,
    ) -> Result<Response<proto::EraseUserResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn export_user(
        &self,
        _req: Request<proto::ExportUserRequest>,
    ) -> Result<Response<proto::ExportUserResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn set_profiling_objection(
        &self,
        _req: Request<proto::SetProfilingObjectionRequest>,
    ) -> Result<Response<proto::SetProfilingObjectionResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    Get,
    /// BatchGetUserTiers of this many ids.
    Batch(usize),
    /// ListAtRiskUsers, one page of this size.
    AtRisk(u32),
    /// RecordEvents of this many events.
    Record(usize),
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    call: Call,
    concurrency: usize,
    /// Run against our server with the write-ahead log fsynced (a label: the server decides).
    fsync: bool,
}

impl Scenario {
    fn new(name: &'static str, call: Call, concurrency: usize) -> Self {
        Scenario {
            name,
            call,
            concurrency,
            fsync: false,
        }
    }

    /// Whether the echo server is a ceiling for this call (it does no work for reads only).
    fn has_ceiling(&self) -> bool {
        matches!(self.call, Call::Get | Call::Batch(_))
    }

    /// Our server, as the report's "server" column names it.
    fn server(&self) -> &'static str {
        if self.fsync {
            "tiering, fsync"
        } else {
            "tiering"
        }
    }

    fn connections(&self) -> usize {
        self.concurrency.min(MAX_CONNECTIONS)
    }
}

/// One scenario against one server.
struct Outcome {
    requests: u64,
    /// Users answered (1 per GetUserTier, the batch size, the page size), or events accepted.
    items: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// RecordEvents requests per group commit of the log, over the scenario.
    per_commit: Option<f64>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.secs
    }

    fn brief(&self) -> String {
        format!(
            "{:.0} req/s, {:.0} items/s, p50 {:.0} µs, p99 {:.0} µs, {} errors{}{}",
            self.rps(),
            self.items_per_sec(),
            self.p50_us,
            self.p99_us,
            self.errors,
            self.per_commit
                .map(|g| format!(", {g:.1} requests per group commit"))
                .unwrap_or_default(),
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        )
    }
}

/// Closed-loop load: `concurrency` tasks, each sending its next request when the previous one
/// is answered; only requests started after the warm-up are counted.
async fn load(
    addr: SocketAddr,
    secure: &Secure,
    s: &Scenario,
    users: u64,
    warmup: Duration,
    window: Duration,
) -> Result<Outcome> {
    let mut channels = Vec::new();
    for _ in 0..s.connections() {
        channels.push(secure_channel(addr, secure).await?);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let mut tasks = Vec::new();
    for w in 0..s.concurrency {
        let mut c = TieringClient::new(channels[w % channels.len()].clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let call = s.call;
        let token = secure.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5eed + w as u64);
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let (mut requests, mut items, mut errors) = (0u64, 0u64, 0u64);
            let mut first_error = None;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r: Result<u64, Status> = match call {
                    // The token goes with GetUserTier only: the one call the TLS runs make.
                    Call::Get => c
                        .get_user_tier(with_token(
                            proto::GetUserTierRequest {
                                user_id: user_id(rng.gen_range(0..users)),
                            },
                            token.as_ref(),
                        ))
                        .await
                        .map(|_| 1),
                    Call::Batch(n) => c
                        .batch_get_user_tiers(proto::BatchGetUserTiersRequest {
                            user_ids: (0..n).map(|_| user_id(rng.gen_range(0..users))).collect(),
                        })
                        .await
                        .map(|r| r.into_inner().users.len() as u64),
                    Call::AtRisk(limit) => match c
                        .list_at_risk_users(proto::ListAtRiskUsersRequest {
                            min_churn_probability: 0.5,
                            limit,
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => {
                            let mut stream = r.into_inner();
                            let mut n = 0u64;
                            loop {
                                match stream.message().await {
                                    Ok(Some(_)) => n += 1,
                                    Ok(None) => break Ok(n),
                                    Err(e) => break Err(e),
                                }
                            }
                        }
                        Err(e) => Err(e),
                    },
                    Call::Record(n) => c
                        .record_events(proto::RecordEventsRequest {
                            events: (0..n)
                                .map(|_| {
                                    like(
                                        user_id(rng.gen_range(0..users)),
                                        NOW_TS - 60 - rng.gen_range(0..1000),
                                    )
                                })
                                .collect(),
                        })
                        .await
                        .map(|r| r.into_inner().accepted),
                };
                if t0 < measure_from {
                    continue;
                }
                let us = t0.elapsed().as_micros() as u64;
                match r {
                    Ok(n) => {
                        requests += 1;
                        items += n;
                        hist.saturating_record(us.max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                    }
                }
            }
            Ok::<_, String>((hist, requests, items, errors, first_error))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut out = Outcome {
        requests: 0,
        items: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        max_us: 0.0,
        per_commit: None,
    };
    for t in tasks {
        let (h, requests, items, errors, first_error) = t.await??;
        hist.add(&h)?;
        out.requests += requests;
        out.items += items;
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first_error;
        }
    }
    // The window closes when the last task finishes its last request.
    out.secs = measure_from.elapsed().as_secs_f64();
    out.p50_us = hist.value_at_quantile(0.50) as f64;
    out.p99_us = hist.value_at_quantile(0.99) as f64;
    out.max_us = hist.max() as f64;
    Ok(out)
}

/// A `like` by `user` at `ts`: the lightest event RecordEvents takes.
fn like(user: String, ts: i64) -> proto::Event {
    proto::Event {
        user_id: user,
        ts: Some(prost_types::Timestamp {
            seconds: ts,
            nanos: 0,
        }),
        kind: "like".into(),
        ..Default::default()
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1} k", x / 1e3)
    } else if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn machine() -> String {
    let cmd = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), {mem_gb:.0} GiB RAM, {}",
        cmd("nproc", &[]),
        cmd("rustc", &["--version"])
    )
}

/// How the run was made, for the report's header.
struct RunInfo {
    model: String,
    users: u64,
    secs: u64,
    warmup: Duration,
    elapsed: Duration,
    /// Our server's first start, from the bundle, to SERVING.
    ready_secs: f64,
    /// The graceful stop (drain, final state snapshot) before the durability runs.
    stop_secs: f64,
    /// The restart from that state snapshot, fsync on, to SERVING.
    restart_secs: f64,
}

fn report(
    results: &[(&Scenario, Outcome, Option<Outcome>)],
    run: &RunInfo,
    small: &Memory,
    big: &Memory,
    table: &[TableRate],
) -> String {
    let RunInfo {
        model,
        users,
        secs,
        warmup,
        elapsed,
        ..
    } = run;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## gRPC load: {users} users held, in-process server vs tonic echo ceiling\n"
    );
    let _ = writeln!(
        s,
        "`cargo bench --bench grpc_load`; {secs} s per scenario after a {} ms warm-up, closed loop, \
         up to {MAX_CONNECTIONS} HTTP/2 connections, random known users; served model: {model}; \
         {}; whole run {:.0} s.\n",
        warmup.as_millis(),
        machine(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| scenario | c | server | req/s | users or events/s | p50 | p99 | max | errors | ours / ceiling (req/s) |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (sc, ours, echo) in results {
        let ratio = echo
            .as_ref()
            .map(|e| format!("{:.2}", ours.rps() / e.rps().max(1e-9)))
            .unwrap_or_else(|| "n/a".into());
        let row = |who: &str, o: &Outcome, ratio: &str| {
            format!(
                "| {} | {} | {who} | {} | {} | {} | {} | {} | {} | {ratio} |",
                sc.name,
                sc.concurrency,
                fmt_rate(o.rps()),
                fmt_rate(o.items_per_sec()),
                fmt_us(o.p50_us),
                fmt_us(o.p99_us),
                fmt_us(o.max_us),
                o.errors
            )
        };
        let _ = writeln!(s, "{}", row(sc.server(), ours, &ratio));
        if let Some(e) = echo {
            let _ = writeln!(s, "{}", row("echo", e, ""));
        }
    }
    let _ = writeln!(s);
    // Targets.
    let get16 = results
        .iter()
        .find(|(sc, _, _)| matches!(sc.call, Call::Get) && sc.concurrency == 16);
    if let Some((_, ours, _)) = get16 {
        let _ = writeln!(
            s,
            "- Target p99 < 1 ms for GetUserTier at c = 16: p99 {} → **{}**.",
            fmt_us(ours.p99_us),
            if ours.p99_us < 1000.0 {
                "met"
            } else {
                "not met"
            }
        );
    }
    for (sc, ours, echo) in results {
        if let Some(e) = echo {
            let r = ours.rps() / e.rps().max(1e-9);
            let _ = writeln!(
                s,
                "- Target throughput ≥ 0.7 × ceiling, {} c = {}: {:.2} → **{}**.",
                sc.name,
                sc.concurrency,
                r,
                if r >= 0.7 { "met" } else { "not met" }
            );
        }
    }
    let _ = writeln!(s);
    durability(&mut s, results, run);
    let _ = writeln!(s);
    let rates: Vec<String> = table.iter().map(TableRate::describe).collect();
    let _ = writeln!(
        s,
        "User table alone (this process, {users} users, 1 s each): {}.\n",
        rates.join("; ")
    );
    let per_user = (big.rss_kb as f64 - small.rss_kb as f64) * 1024.0
        / (big.users as f64 - small.users as f64).max(1.0);
    let _ = writeln!(
        s,
        "Server memory (`tiering serve` subprocess, /proc/PID/status once SERVING): \
         {} users: RSS {:.0} MiB (peak {:.0} MiB), ready in {:.1} s; {} users: RSS {:.0} MiB \
         (peak {:.0} MiB, while the bundle snapshot is deserialised next to the table), ready in \
         {:.1} s; ≈ {:.0} bytes per additional user.",
        small.users,
        small.rss_kb as f64 / 1024.0,
        small.hwm_kb as f64 / 1024.0,
        small.ready_secs,
        big.users,
        big.rss_kb as f64 / 1024.0,
        big.hwm_kb as f64 / 1024.0,
        big.ready_secs,
        per_user
    );
    s
}

/// The report's durability paragraph: each RecordEvents scenario with fsync against the same
/// scenario without, and the stop/restart times.
fn durability(s: &mut String, results: &[(&Scenario, Outcome, Option<Outcome>)], run: &RunInfo) {
    let _ = writeln!(
        s,
        "Durability: first start from the bundle to SERVING {:.1} s; graceful stop with the final \
         state snapshot {:.2} s; restart from that snapshot (fsync on) to SERVING {:.1} s.\n",
        run.ready_secs, run.stop_secs, run.restart_secs
    );
    for (sc, synced, _) in results.iter().filter(|(sc, _, _)| sc.fsync) {
        let unsynced = results
            .iter()
            .find(|(o, _, _)| !o.fsync && o.call == sc.call && o.concurrency == sc.concurrency);
        let Some((_, unsynced, _)) = unsynced else {
            continue;
        };
        let per_commit = |o: &Outcome| o.per_commit.map_or("n/a".into(), |g| format!("{g:.1}"));
        let _ = writeln!(
            s,
            "- {} c = {}: {} events/s with fsync, {} without ({:.2}×); p99 {} vs {}; requests \
             per group commit {} vs {}.",
            sc.name,
            sc.concurrency,
            fmt_rate(synced.items_per_sec()),
            fmt_rate(unsynced.items_per_sec()),
            synced.items_per_sec() / unsynced.items_per_sec().max(1e-9),
            fmt_us(synced.p99_us),
            fmt_us(unsynced.p99_us),
            per_commit(synced),
            per_commit(unsynced)
        );
    }
}
