//! Scale-out benchmark (feature `kafka`): the same bundle and users served from the embedded
//! state and from a Redis state, on one machine, in one run, with the ratios between them.
//!
//! Run: `cargo bench --features kafka --bench scale_out`. The table goes to stdout and to
//! `target/scale_out.md`. `SCALE_OUT_USERS` (default 1,000,000) and `SCALE_OUT_SECS` (the
//! measuring window per scenario, default 3) shrink the run.
//!
//! # Setup
//! 1. The real binary generates 20,000 users × 180 days and trains a bundle (as
//!    `benches/grpc_load.rs` does); the same seeded generator then simulates `SCALE_OUT_USERS`
//!    distinct users in process, folds their events and writes them with the trained scorer as
//!    a new bundle, made current.
//! 2. A `redis-server` (this machine's, persistence off: `--save "" --appendonly no`) on a free
//!    loopback port; librdkafka's **mock cluster** (3 brokers in this process, topic of 6
//!    partitions): not a real broker, so the ingest figures are the client path, not a Kafka
//!    cluster's.
//! 3. Two servers in process (`tiering::serve::run_with_metrics`, clock pinned): embedded
//!    (`wal_fsync = false`) and Redis (`state = redis://…`, `events = kafka://…/events`; it
//!    seeds Redis from the bundle). Both must report every user held before measuring.
//!
//! # Load
//! The Redis replica takes the ranking's lease and builds its first generation right after
//! SERVING (a scan of every user from Redis, scored, written back to a sorted set): GetUserTier
//! at 16 in flight is measured once while that build runs, then both modes' rankings are awaited
//! and every load below runs in the steady state between rebuilds (`ranking_rebuild_secs`).
//!
//! Closed loop from a separate client runtime (2 threads), up to 4 HTTP/2 connections, random
//! known users; a warm-up, then the window; latencies in an HdrHistogram. GetUserTier at 16 in
//! flight; BatchGetUserTiers of 1,000 ids at 4 in flight; at-risk paging (pages of 1,000: the
//! first page, more first pages, later pages following the tokens), both modes.
//!
//! # Ingest
//! RecordEvents of 100 `like` events at 16 in flight into the Redis server (→ the mock topic),
//! for the window, while the real `tiering aggregate` binary (a child process, `--max-batch
//! 1000`, started with the load) applies the topic to Redis. Its `/metrics` is sampled every
//! 250 ms from the start of the load until it has applied every acknowledged event: consumer lag
//! over time, events acknowledged/s and events applied/s. The lag reads 0 until the consumer
//! has joined its group and been assigned partitions (the mock cluster's join takes ~3 s).

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rdkafka::mocking::MockCluster;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiering::bundle::{BundleStore, Snapshot};
use tiering::features::{hash_str, UserAggregate};
use tiering::generate::{generate, room_id, user_id, GenerateParams, CATEGORIES};
use tiering::pb as proto;
use tiering::pb::tiering_client::TieringClient;
use tiering::serve::ServeConfig;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

const BIN: &str = env!("CARGO_BIN_EXE_tiering");
const END_DATE: &str = "2026-06-30";
const NOW: &str = "2026-07-01T00:00:00Z";
const NOW_TS: i64 = 1_782_864_000;
const TRAIN_USERS: u64 = 20_000;
const DAYS: u32 = 180;
const MAX_CONNECTIONS: usize = 4;
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const BUNDLE: &str = "bench-scale";
const TOPIC: &str = "events";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("scale_out: run with `cargo bench --features kafka --bench scale_out`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("scale_out failed: {e}");
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
    eprintln!("[scale_out] {}", msg.as_ref());
}

/// Kills the child when dropped (every error path included).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run() -> Result<()> {
    let users = env_u64("SCALE_OUT_USERS", 1_000_000)?;
    let secs = env_u64("SCALE_OUT_SECS", 3)?;
    let started = Instant::now();
    let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp_root)?;
    let work = tempfile::Builder::new()
        .prefix("scale_out-")
        .tempdir_in(&tmp_root)?;
    let dir = work.path();
    let small = train_small(dir)?;
    let t = Instant::now();
    let models = dir.join("models");
    write_big_bundle(&small, &models, users)?;
    log(format!(
        "simulated {users} users in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let (_redis, redis_url) = start_redis(dir)?;
    let cluster = MockCluster::new(3)?;
    cluster.create_topic(TOPIC, 6, 1)?;
    let events_url = format!("kafka://{}/{TOPIC}", cluster.bootstrap_servers());

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let base = ServeConfig {
        models: models.clone(),
        now: Some(NOW.into()),
        wal_fsync: false,
        ..ServeConfig::default()
    };
    let embedded_cfg = ServeConfig {
        state_dir: Some(dir.join("state")),
        ..base.clone()
    };
    let redis_cfg = ServeConfig {
        state_dir: Some(PathBuf::from(&redis_url)),
        events: Some(events_url.clone()),
        events_linger_ms: 1,
        ..base
    };
    let mut modes = Vec::new();
    let mut serving_at = Vec::new();
    for (name, cfg) in [("embedded", embedded_cfg), ("Redis", redis_cfg)] {
        let t = Instant::now();
        let addr = server_rt.block_on(start_server(cfg))?;
        client_rt.block_on(wait_serving(addr, Duration::from_secs(900)))?;
        let held = client_rt.block_on(users_held(addr))?;
        if held != users {
            return Err(format!("{name}: holds {held} users, expected {users}").into());
        }
        let ready = t.elapsed().as_secs_f64();
        log(format!(
            "{name} server SERVING with {held} users in {ready:.1} s"
        ));
        modes.push((name, addr, ready));
        serving_at.push(Instant::now());
    }

    let window = Duration::from_secs(secs);
    let warmup = Duration::from_millis(750);
    let (during_build, built) =
        during_build_then_rankings(&client_rt, &modes, &serving_at, users, warmup, window)?;
    let mut rows = Vec::new();
    for &(name, addr, _) in &modes {
        for (call, c) in [(Call::Get, 16), (Call::Batch(1000), 4)] {
            let o = client_rt.block_on(load(addr, call, c, users, warmup, window))?;
            log(format!("{name} {call:?} c={c}: {}", o.brief()));
            rows.push((name, call, c, o));
        }
    }
    let mut paging = Vec::new();
    for &(name, addr, _) in &modes {
        let p = client_rt.block_on(at_risk_walk(addr, 10))?;
        log(format!("{name} at-risk: {p:?}"));
        paging.push((name, p));
    }
    let ingest = ingest(
        &client_rt,
        modes[1].1,
        &events_url,
        &redis_url,
        &models,
        users,
        window,
    )?;
    drop(client_rt);
    drop(server_rt);
    let report = report(
        &modes,
        &built,
        during_build.as_ref(),
        &rows,
        &paging,
        &ingest,
        users,
        secs,
        started.elapsed(),
    );
    println!("{report}");
    let out = tmp_root
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| tmp_root.clone())
        .join("scale_out.md");
    std::fs::write(&out, &report)?;
    log(format!("written to {}", out.display()));
    Ok(())
}

/// The Redis replica holds the ranking's lease and builds the first generation right after
/// SERVING (a scan of every user from Redis, scored, written back): GetUserTier with Redis state
/// while that build runs (`None` if it was already built), then both modes' rankings awaited so
/// the loads measure the steady state; the seconds from SERVING to built, per mode.
fn during_build_then_rankings(
    client_rt: &tokio::runtime::Runtime,
    modes: &[(&str, SocketAddr, f64)],
    serving_at: &[Instant],
    users: u64,
    warmup: Duration,
    window: Duration,
) -> Result<(Option<Outcome>, Vec<f64>)> {
    let redis_addr = modes[1].1;
    let during_build = if client_rt.block_on(ranking_built(redis_addr))? {
        None
    } else {
        let o = client_rt.block_on(load(redis_addr, Call::Get, 16, users, warmup, window))?;
        log(format!(
            "Redis Get c=16 during the ranking's first build: {}",
            o.brief()
        ));
        Some(o)
    };
    let mut built = Vec::new();
    for (&(name, addr, _), at) in modes.iter().zip(serving_at) {
        client_rt.block_on(wait_ranking(addr, Duration::from_secs(900)))?;
        let b = at.elapsed().as_secs_f64();
        log(format!("{name} ranking built {b:.1} s after SERVING"));
        built.push(b);
    }
    Ok((during_build, built))
}

/// A `redis-server` on a free loopback port, persistence off; stopped on drop.
fn start_redis(dir: &Path) -> Result<(Reaper, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let rdir = dir.join("redis");
    std::fs::create_dir_all(&rdir)?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&rdir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e} (scripts/test.sh installs it)"))?;
    let reaper = Reaper(child);
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str())?;
    for _ in 0..200 {
        if let Ok(mut c) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return Ok((reaper, url));
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err("redis-server did not answer PING".into())
}

async fn start_server(config: ServeConfig) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = config.check()?;
    tokio::spawn(async move {
        if let Err(e) =
            tiering::serve::run_with_metrics(config, listener, None, std::future::pending()).await
        {
            log(format!("server stopped: {e}"));
        }
    });
    Ok(addr)
}

async fn users_held(addr: SocketAddr) -> Result<u64> {
    let info = client(addr)
        .await?
        .get_model_info(proto::GetModelInfoRequest {})
        .await?
        .into_inner();
    Ok(info.users_held)
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Get,
    Batch(usize),
}

struct Outcome {
    requests: u64,
    items: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
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
            "{:.0} req/s, {:.0} items/s, p50 {} p99 {}, {} errors {}",
            self.rps(),
            self.items_per_sec(),
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            self.errors,
            self.first_error.as_deref().unwrap_or("")
        )
    }
}

type TaskOutcome = (Histogram<u64>, u64, u64, u64, Option<String>);

/// Closed-loop load: `concurrency` tasks over up to 4 connections.
async fn load(
    addr: SocketAddr,
    call: Call,
    concurrency: usize,
    users: u64,
    warmup: Duration,
    window: Duration,
) -> Result<Outcome> {
    let mut channels = Vec::new();
    for _ in 0..concurrency.clamp(1, MAX_CONNECTIONS) {
        channels.push(channel(addr).await?);
    }
    let measure_from = Instant::now() + warmup;
    let end = measure_from + window;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut c = TieringClient::new(channels[w % channels.len()].clone())
            .max_decoding_message_size(MAX_MESSAGE);
        tasks.push(tokio::spawn(async move {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5eed + w as u64);
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let (mut requests, mut items, mut errors, mut first_error) = (0, 0, 0, None);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r: Result<u64, Status> = match call {
                    Call::Get => c
                        .get_user_tier(proto::GetUserTierRequest {
                            user_id: user_id(rng.gen_range(0..users)),
                        })
                        .await
                        .map(|_| 1),
                    Call::Batch(n) => c
                        .batch_get_user_tiers(proto::BatchGetUserTiersRequest {
                            user_ids: (0..n).map(|_| user_id(rng.gen_range(0..users))).collect(),
                        })
                        .await
                        .map(|r| r.into_inner().users.len() as u64),
                };
                if t0 < measure_from {
                    continue;
                }
                match r {
                    Ok(n) => {
                        requests += 1;
                        items += n;
                        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                    }
                }
            }
            Ok::<TaskOutcome, String>((hist, requests, items, errors, first_error))
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
    };
    for t in tasks {
        let (h, requests, items, errors, first_error) = t.await??;
        hist.add(&h)?;
        out.requests += requests;
        out.items += items;
        out.errors += errors;
        out.first_error = out.first_error.or(first_error);
    }
    out.secs = measure_from.elapsed().as_secs_f64();
    out.p50_us = hist.value_at_quantile(0.50) as f64;
    out.p99_us = hist.value_at_quantile(0.99) as f64;
    Ok(out)
}

/// At-risk paging, pages of 1,000: ms of the first paging request (it runs after the load
/// scenarios, the ranking's first build done), of 5 more first pages (median),
/// of `pages` later pages following the tokens (median, max).
#[derive(Debug)]
struct Paging {
    first_after_start_ms: f64,
    first_median_ms: f64,
    later_median_ms: f64,
    later_max_ms: f64,
    later_pages: usize,
}

async fn at_risk_page(
    c: &mut TieringClient<Channel>,
    req: proto::ListAtRiskUsersRequest,
) -> Result<String> {
    let mut stream = c.list_at_risk_users(req).await?.into_inner();
    let mut token = String::new();
    while let Some(u) = stream.message().await? {
        if !u.next_page_token.is_empty() {
            token = u.next_page_token;
        }
    }
    Ok(token)
}

/// True once a first at-risk page answers (the ranking's first build is done).
async fn ranking_built(addr: SocketAddr) -> Result<bool> {
    let mut c = client(addr).await?;
    let req = proto::ListAtRiskUsersRequest {
        limit: 1,
        ..Default::default()
    };
    match at_risk_page(&mut c, req).await {
        Ok(_) => Ok(true),
        Err(e) => match e.downcast_ref::<Status>() {
            Some(s) if s.code() == tonic::Code::Unavailable => Ok(false),
            _ => Err(e),
        },
    }
}

/// Polls [`ranking_built`] every 100 ms, for at most `limit`.
async fn wait_ranking(addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ranking_built(addr).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{addr}: the at-risk ranking was not built within {limit:?}").into())
}

async fn at_risk_walk(addr: SocketAddr, pages: usize) -> Result<Paging> {
    let mut c = client(addr).await?;
    let req = proto::ListAtRiskUsersRequest {
        limit: 1000,
        ..Default::default()
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut token = at_risk_page(&mut c, req.clone()).await?;
    let first_after_start_ms = ms(t);
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        at_risk_page(&mut c, req.clone()).await?;
        firsts.push(ms(t));
    }
    let mut later = Vec::new();
    while later.len() < pages && !token.is_empty() {
        let t = Instant::now();
        let next = proto::ListAtRiskUsersRequest {
            page_token: token,
            ..req.clone()
        };
        token = at_risk_page(&mut c, next).await?;
        later.push(ms(t));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Ok(Paging {
        first_after_start_ms,
        first_median_ms: median(&mut firsts),
        later_max_ms: later.iter().copied().fold(f64::NAN, f64::max),
        later_median_ms: median(&mut later),
        later_pages: later.len(),
    })
}

/// What the ingest run gave.
struct Ingest {
    load: Outcome,
    /// (seconds since the load started, total lag, events applied).
    samples: Vec<(f64, i64, u64)>,
    /// Seconds from the start of the load until every acknowledged event was applied.
    caught_up_secs: Option<f64>,
}

/// RecordEvents ×100 at 16 in flight into the Redis server while `tiering aggregate` applies
/// the topic; its lag sampled until it has applied every acknowledged event (at most 300 s).
fn ingest(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    events_url: &str,
    redis_url: &str,
    models: &Path,
    users: u64,
    window: Duration,
) -> Result<Ingest> {
    let mut child = Command::new(BIN)
        .args(["aggregate", "--events", events_url, "--state", redis_url])
        .arg("--models")
        .arg(models)
        .args(["--group", "bench", "--metrics-listen", "127.0.0.1:0"])
        .args(["--stats-interval-ms", "200", "--max-batch", "1000"])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let _reaper = Reaper(child);
    let mut lines = BufReader::new(stderr).lines();
    let metrics: SocketAddr = loop {
        let line = lines.next().ok_or("the aggregator exited at start")??;
        if let Some(rest) = line.strip_prefix("tiering: aggregator metrics on http://") {
            break rest.trim_end_matches("/metrics").trim().parse()?;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    rt.block_on(async move {
        let t0 = Instant::now();
        let sampler = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut caught_up = None;
            let mut acked_target: Option<u64> = None;
            while t0.elapsed() < Duration::from_secs(300) {
                if let Ok(text) = scrape(metrics).await {
                    let (lag, applied) = lag_and_applied(&text);
                    let t = t0.elapsed().as_secs_f64();
                    samples.push((t, lag, applied));
                    if acked_target.is_some_and(|n| applied >= n) {
                        caught_up = Some(t);
                        break;
                    }
                }
                if acked_target.is_none() {
                    acked_target = ACKED.get().copied();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (samples, caught_up)
        });
        let load = record_load(addr, users, window).await?;
        let _ = ACKED.set(load.items);
        let (samples, caught_up_secs) = sampler.await?;
        Ok(Ingest {
            load,
            samples,
            caught_up_secs,
        })
    })
}

/// Events acknowledged by the end of the ingest load (the sampler waits for them applied).
static ACKED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

async fn record_load(addr: SocketAddr, users: u64, window: Duration) -> Result<Outcome> {
    let ch = channel(addr).await?;
    let end = Instant::now() + window;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let mut c = TieringClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xe7e7 + w);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let (mut requests, mut items, mut errors) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                let t = Instant::now();
                let events = (0..100)
                    .map(|_| like(user_id(rng.gen_range(0..users)), NOW_TS - 60))
                    .collect();
                match c.record_events(proto::RecordEventsRequest { events }).await {
                    Ok(r) => {
                        requests += 1;
                        items += r.into_inner().accepted;
                        if let Some(h) = hist.as_mut() {
                            h.saturating_record((t.elapsed().as_micros() as u64).max(1));
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, requests, items, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut items, mut errors) = (0, 0, 0);
    for t in tasks {
        let (h, r, i, e) = t.await?;
        if let Some(h) = h {
            hist.add(&h)?;
        }
        requests += r;
        items += i;
        errors += e;
    }
    Ok(Outcome {
        requests,
        items,
        errors,
        first_error: None,
        secs: t0.elapsed().as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
    })
}

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

async fn scrape(addr: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// (the sum of `tiering_aggregator_lag` over partitions, `..._events_applied_total`).
fn lag_and_applied(text: &str) -> (i64, u64) {
    let mut lag = 0;
    let mut applied = 0;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("tiering_aggregator_lag{") {
            lag += rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("tiering_aggregator_events_applied_total ") {
            applied = v.trim().parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    (lag, applied)
}

async fn client(addr: SocketAddr) -> Result<TieringClient<Channel>> {
    Ok(TieringClient::new(channel(addr).await?).max_decoding_message_size(MAX_MESSAGE))
}

async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

async fn wait_serving(addr: SocketAddr, limit: Duration) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(ch) = channel(addr).await {
            let req = HealthCheckRequest {
                service: "tiering.v1.Tiering".into(),
            };
            if let Ok(r) = HealthClient::new(ch).check(req).await {
                if r.into_inner().status == ServingStatus::Serving as i32 {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{addr} was not SERVING within {limit:?}").into())
}

/// Generates [`TRAIN_USERS`] users and trains a bundle on them with the real binary.
fn train_small(dir: &Path) -> Result<PathBuf> {
    let t = Instant::now();
    let data = dir.join("data");
    let small = dir.join("models-20k");
    let (d, s) = (path_str(&data)?, path_str(&small)?);
    let (n, days) = (TRAIN_USERS.to_string(), DAYS.to_string());
    tiering_cmd(&[
        "generate", "--users", &n, "--days", &days, "--seed", "42", "--end", END_DATE, "--out", d,
    ])?;
    tiering_cmd(&["train", "--data", d, "--models", s, "--seed", "42"])?;
    log(format!(
        "trained on {TRAIN_USERS} users in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(small)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
}

fn tiering_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`tiering {}` failed: {err}", args.join(" ")).into());
    }
    Ok(())
}

/// Simulates `users` users and writes them with the small bundle's scorer as bundle
/// [`BUNDLE`], made current (as `benches/grpc_load.rs` does).
fn write_big_bundle(small: &Path, big: &Path, users: u64) -> Result<()> {
    let trained = BundleStore::new(small).load_current()?;
    let params = GenerateParams::new(NOW_TS)
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
            agg.apply(&tiering::features::Event {
                ts: e.ts,
                kind: e.kind,
                amount: e.amount().unwrap_or(0.0),
                watch_seconds: e.watch().unwrap_or(0),
                room: room_hash[r],
                category: category_hash[usize::from(e.category)],
                order: 0,
                channel: 0,
            });
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
        as_of: NOW_TS,
        user_ids,
        aggregates,
    };
    let mut manifest = trained.manifest.clone();
    manifest.version = BUNDLE.to_string();
    manifest.previous_version = Some(trained.manifest.version.clone());
    manifest.data.users = users;
    manifest.data.events = summary.events;
    let store = BundleStore::new(big);
    store
        .begin(BUNDLE)?
        .commit(manifest, &trained.scorer, &snapshot)?;
    store.promote(BUNDLE)?;
    Ok(())
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e4 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

type Row = (&'static str, Call, usize, Outcome);

#[allow(clippy::too_many_arguments)]
fn report(
    modes: &[(&str, SocketAddr, f64)],
    built: &[f64],
    during_build: Option<&Outcome>,
    rows: &[Row],
    paging: &[(&str, Paging)],
    ingest: &Ingest,
    users: u64,
    secs: u64,
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Scale-out benchmark: {users} users, {secs} s windows, {} CPUs, load average {} at the end, {:.0} s in all\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        elapsed.as_secs_f64()
    );
    for ((name, _, ready), b) in modes.iter().zip(built) {
        let _ = writeln!(
            s,
            "- {name} server SERVING (seeded) in {ready:.1} s; its at-risk ranking built {b:.1} s after SERVING"
        );
    }
    if let Some(o) = during_build {
        let _ = writeln!(
            s,
            "- Redis GetUserTier at 16 in flight **while the Redis ranking's first build ran** (before the table's loads): {:.0} req/s, p50 {} p99 {}, {} errors",
            o.rps(),
            fmt_us(o.p50_us),
            fmt_us(o.p99_us),
            o.errors
        );
    }
    let _ = writeln!(
        s,
        "\nThe loads below start once both rankings are built (the steady state between rebuilds)."
    );
    let _ = writeln!(
        s,
        "\n| scenario | in flight | embedded req/s | Redis req/s | Redis / embedded | embedded p50 / p99 | Redis p50 / p99 | embedded users/s | Redis users/s | errors |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let find = |mode: &str, i: usize| rows.iter().filter(|r| r.0 == mode).nth(i);
    for i in 0..2 {
        if let (Some(e), Some(r)) = (find("embedded", i), find("Redis", i)) {
            let name = match e.1 {
                Call::Get => "GetUserTier".to_string(),
                Call::Batch(n) => format!("BatchGetUserTiers ×{n}"),
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {:.2} | {} / {} | {} / {} | {} | {} | {} / {} |",
                e.2,
                fmt_rate(e.3.rps()),
                fmt_rate(r.3.rps()),
                r.3.rps() / e.3.rps(),
                fmt_us(e.3.p50_us),
                fmt_us(e.3.p99_us),
                fmt_us(r.3.p50_us),
                fmt_us(r.3.p99_us),
                fmt_rate(e.3.items_per_sec()),
                fmt_rate(r.3.items_per_sec()),
                e.3.errors,
                r.3.errors
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| at-risk paging, pages of 1,000 | first request's page ms (after the loads above, the ranking built) | first page ms (median of 5) | later pages ms (median / max) |\n|---|---|---|---|"
    );
    for (name, p) in paging {
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {:.1} | {:.1} / {:.1} (×{}) |",
            p.first_after_start_ms,
            p.first_median_ms,
            p.later_median_ms,
            p.later_max_ms,
            p.later_pages
        );
    }
    let l = &ingest.load;
    let _ = writeln!(
        s,
        "\n**Ingest** (RecordEvents ×100 at 16 in flight → librdkafka mock cluster, not a real broker → `tiering aggregate` → Redis): {} events/s acknowledged ({} requests, p50 {} p99 {}, {} errors); every acknowledged event applied {} after the load started ({} events/s end to end).\n",
        fmt_rate(l.items_per_sec()),
        l.requests,
        fmt_us(l.p50_us),
        fmt_us(l.p99_us),
        l.errors,
        ingest
            .caught_up_secs
            .map_or("not within 300 s".to_string(), |t| format!("{t:.1} s")),
        ingest
            .caught_up_secs
            .map_or("-".to_string(), |t| fmt_rate(l.items as f64 / t))
    );
    let _ = writeln!(
        s,
        "| t (s) | consumer lag (records) | applied |\n|---|---|---|"
    );
    let step = (ingest.samples.len() / 16).max(1);
    let last = ingest.samples.len().saturating_sub(1);
    for (i, (t, lag, applied)) in ingest.samples.iter().enumerate() {
        if i % step == 0 || i == last {
            let _ = writeln!(s, "| {t:.2} | {lag} | {applied} |");
        }
    }
    s
}
