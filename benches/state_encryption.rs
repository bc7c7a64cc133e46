//! The ingest cost of encrypting the state at rest (`--state-key-file`): RecordEvents
//! throughput of the real server with and without the key, in one run.
//!
//! A small bundle is trained with the release binary; then, for each round, two servers are
//! started on fresh state directories from it (plaintext, then encrypted), and clients keep
//! `ENC_BENCH_INFLIGHT` (16) RecordEvents requests in flight for `ENC_BENCH_SECS` (3) seconds
//! after a warm-up. Each scenario alternates the two modes for `ENC_BENCH_ROUNDS` (5) rounds; the
//! medians are printed. The log is not fsynced (`TIERING__WAL_FSYNC=false`), as in grpc_load:
//! with fsync the disk dominates and hides the cipher.
//!
//! `cargo bench --bench state_encryption`

use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiering::pb::{self as proto, tiering_client::TieringClient};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BIN: &str = env!("CARGO_BIN_EXE_tiering");
const END_DATE: &str = "2026-06-30";
const NOW: &str = "2026-07-01T00:00:00Z";
const NOW_TS: i64 = 1_782_864_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("state_encryption: run with `cargo bench --bench state_encryption`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("state_encryption failed: {e}");
        std::process::exit(1);
    }
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn run() -> Result<()> {
    let secs = env_u64("ENC_BENCH_SECS", 3)?;
    let rounds = env_u64("ENC_BENCH_ROUNDS", 5)?;
    let inflight = env_u64("ENC_BENCH_INFLIGHT", 16)? as usize;
    let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp_root)?;
    let work = tempfile::Builder::new()
        .prefix("state_encryption-")
        .tempdir_in(&tmp_root)?;
    let dir = work.path();
    let models = train(dir)?;
    let key = dir.join("state.key");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&key)?;
        let mut bytes = [0u8; 32];
        rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7).fill(&mut bytes);
        writeln!(f, "{}", hex::encode(bytes))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "RecordEvents, {inflight} in flight, {secs} s per run, {rounds} rounds, log not fsynced"
    );
    for per_request in [1usize, 100] {
        let mut plain = Vec::new();
        let mut sealed = Vec::new();
        for round in 0..rounds {
            for (encrypt, out) in [(false, &mut plain), (true, &mut sealed)] {
                let state = dir.join(format!("state-{per_request}-{round}-{encrypt}"));
                let server = Server::start(&models, &state, encrypt.then_some(key.as_path()))?;
                let eps = rt.block_on(load(&server.addr, per_request, inflight, secs))?;
                drop(server);
                std::fs::remove_dir_all(&state)?;
                out.push(eps);
            }
        }
        let (p, s) = (median(&mut plain), median(&mut sealed));
        println!(
            "RecordEvents ×{per_request}: plaintext {:.0} events/s, encrypted {:.0} events/s (median of {rounds}): {:+.1}%  [plain {plain:.0?}; encrypted {sealed:.0?}]",
            p,
            s,
            (s / p - 1.0) * 100.0
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
}

fn train(dir: &Path) -> Result<PathBuf> {
    let data = dir.join("data");
    let models = dir.join("models");
    tiering_cmd(&[
        "generate",
        "--users",
        "5000",
        "--days",
        "120",
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
        path_str(&models)?,
        "--seed",
        "42",
    ])?;
    Ok(models)
}

/// A `tiering serve` child process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(models: &Path, state: &Path, key: Option<&Path>) -> Result<Server> {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--now", NOW])
            .arg("--models")
            .arg(models)
            .arg("--state")
            .arg(state)
            .env("RUST_LOG", "warn")
            .env("TIERING__WAL_FSYNC", "false")
            .stderr(Stdio::piped());
        if let Some(k) = key {
            cmd.arg("--state-key-file").arg(k);
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().ok_or("the server exited before listening")??;
            if let Some(rest) = line.strip_prefix("tiering: gRPC on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn like(user: u64, ts: i64) -> proto::Event {
    proto::Event {
        user_id: format!("bench-{user}"),
        ts: Some(prost_types::Timestamp {
            seconds: ts,
            nanos: 0,
        }),
        kind: "like".into(),
        ..Default::default()
    }
}

/// Events per second accepted over `secs` after a warm-up, `inflight` requests at a time.
async fn load(addr: &str, per_request: usize, inflight: usize, secs: u64) -> Result<f64> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = TieringClient::new(ch.clone());
    // Ready once a model is live and RecordEvents is accepted.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = client
            .record_events(proto::RecordEventsRequest {
                events: vec![like(0, NOW_TS - 60)],
            })
            .await
            .is_ok();
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err("the server never accepted RecordEvents".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = Instant::now() + Duration::from_millis(750);
    let end = warm + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..inflight {
        let mut c = TieringClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(t as u64);
            let mut events = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let req = proto::RecordEventsRequest {
                    events: (0..per_request)
                        .map(|_| {
                            like(
                                rng.gen_range(0..100_000),
                                NOW_TS - 60 - rng.gen_range(0..1000),
                            )
                        })
                        .collect(),
                };
                let accepted = c.record_events(req).await.map(|r| r.into_inner().accepted);
                if now >= warm {
                    events += accepted.unwrap_or(0);
                }
            }
            events
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / secs as f64)
}
