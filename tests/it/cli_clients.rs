//! The client commands end to end: `tiering at-risk`, `tiering user` and `tiering models`, run as
//! subprocesses of the real binary against a real server started in this process on
//! 127.0.0.1:0, with bundles trained by the real binary on a small generated data set.

use crate::helpers::publish;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tiering::serve::{ServeConfig, ServeError};

const BIN: &str = env!("CARGO_BIN_EXE_tiering");
/// The generated history ends at the end of 2026-06-30; the server's clock is pinned there.
const END: &str = "2026-06-30";
const NOW: &str = "2026-07-01T00:00:00Z";
const USERS: usize = 2000;
/// Every subprocess is bounded.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished `tiering` subprocess said.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args`, killing it after [`STEP_TIMEOUT`].
fn tiering(dir: &Path, args: &[&str]) -> Run {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Files, not pipes: nothing can block on a full pipe while we poll.
    let (out_path, err_path) = (
        dir.join(format!("run-{n}.out")),
        dir.join(format!("run-{n}.err")),
    );
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("TIERING_SERVER")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("the tiering binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > STEP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`tiering {}` did not finish within {STEP_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        ok: status.success(),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    run
}

/// Runs and expects success.
fn ok(dir: &Path, args: &[&str]) -> String {
    let r = tiering(dir, args);
    assert!(
        r.ok,
        "`tiering {}` failed:\n{}\n{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// Runs and expects failure; returns stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let r = tiering(dir, args);
    assert!(
        !r.ok,
        "`tiering {}` should have failed:\n{}",
        args.join(" "),
        r.stdout
    );
    r.stderr
}

/// A temporary directory with a generated data set.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let ws = Workspace {
            dir: tempfile::tempdir().unwrap(),
        };
        let users = USERS.to_string();
        let data = ws.data();
        ok(
            ws.path(),
            &[
                "generate",
                "--users",
                &users,
                "--days",
                "150",
                "--seed",
                "1",
                "--end",
                END,
                "--out",
                path_str(&data),
            ],
        );
        ws
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Trains a bundle into `models` with the real binary; returns its version.
    fn train(&self, models: &Path) -> String {
        let before = versions(models);
        ok(
            self.path(),
            &[
                "train",
                "--data",
                path_str(&self.data()),
                "--models",
                path_str(models),
                "--seed",
                "7",
            ],
        );
        let mut new: Vec<String> = versions(models)
            .into_iter()
            .filter(|v| !before.contains(v))
            .collect();
        assert_eq!(new.len(), 1, "one new bundle");
        new.remove(0)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn versions(models: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(models) else {
        return vec![];
    };
    let mut v: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// A trained bundle served in this process.
struct Served {
    ws: Workspace,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Served {
    fn start() -> Self {
        let ws = Workspace::new();
        let models = ws.path().join("models");
        ws.train(&models);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = ServeConfig {
            models,
            state_dir: Some(ws.path().join("state")),
            now: Some(NOW.into()),
            model_poll_ms: 50,
            ..ServeConfig::default()
        }
        .check()
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(tiering::serve::run(config, listener, async {
                let _ = rx.await;
            }));
            (addr, task)
        });
        let served = Served {
            ws,
            addr,
            runtime,
            stop: Some(tx),
            task: Some(task),
        };
        served.wait_until_serving();
        served
    }

    fn wait_until_serving(&self) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let url = self.url();
        self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "the server never became ready");
                if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .connect()
                    .await
                {
                    let req = HealthCheckRequest {
                        service: "tiering.v1.Tiering".into(),
                    };
                    if let Ok(r) = HealthClient::new(ch).check(req).await {
                        if r.into_inner().status == ServingStatus::Serving as i32 {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn dir(&self) -> &Path {
        self.ws.path()
    }

    /// `tiering at-risk --server URL ARGS...` in churn order with churned users kept (the
    /// list these tests check; the default is the saveable list by value at risk), expecting
    /// success.
    fn at_risk(&self, args: &[&str]) -> String {
        let url = self.url();
        let mut all = vec![
            "at-risk",
            "--server",
            url.as_str(),
            "--order-by",
            "churn-probability",
            "--include-churned",
        ];
        all.extend_from_slice(args);
        ok(self.dir(), &all)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
            if !std::thread::panicking() {
                let r = r.expect("the server stops within 20 s");
                r.expect("the server task ends")
                    .expect("the server shuts down cleanly");
            }
        }
    }
}

/// One parsed CSV row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    user_id: String,
    p: f64,
    percentile: f64,
    tier: String,
    lifecycle: String,
    fields: HashMap<String, String>,
}

const HEADER: &str = "user_id,churn_probability,risk_level,risk_percentile,tier_id,tier_name,\
                      tier_name_zh,lifecycle_stage,rfm_segment,reasons,playbook,clv,\
                      expected_orders,p_alive,value_at_risk,interests,channels,rooms";

fn parse_csv(text: &str) -> Vec<Row> {
    assert_eq!(text.lines().next(), Some(HEADER), "CSV header");
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            let fields: HashMap<String, String> = header
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect();
            Row {
                user_id: fields["user_id"].clone(),
                p: fields["churn_probability"].parse().unwrap(),
                percentile: fields["risk_percentile"].parse().unwrap(),
                tier: fields["tier_id"].clone(),
                lifecycle: fields["lifecycle_stage"].clone(),
                fields,
            }
        })
        .collect()
}

fn assert_sorted_by_risk(rows: &[Row]) {
    // The CSV rounds to 6 decimals, so ties there may be broken by digits it does not show.
    for w in rows.windows(2) {
        assert!(
            w[0].p >= w[1].p,
            "not sorted by risk: {:?} then {:?}",
            (&w[0].user_id, w[0].p),
            (&w[1].user_id, w[1].p)
        );
    }
}

fn ids(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.user_id.as_str()).collect()
}

/// The most common value of a column among `rows`.
fn most_common<'a>(rows: &'a [Row], f: impl Fn(&'a Row) -> &'a str) -> &'a str {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        *counts.entry(f(r)).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(k, n)| (*n, std::cmp::Reverse(*k)))
        .map(|(k, _)| k)
        .expect("rows")
}

#[test]
fn at_risk_csv_is_sorted_by_risk_and_respects_filters_pages_and_limit() {
    let s = Served::start();
    let all = parse_csv(&s.at_risk(&["--min-probability", "0.3"]));
    assert!(
        all.len() > 100 && all.len() < USERS,
        "{} of {USERS} users at >= 0.3",
        all.len()
    );
    assert_sorted_by_risk(&all);
    assert!(all.iter().all(|r| r.p >= 0.3));
    let row = &all[0].fields;
    assert!(["low", "medium", "high"].contains(&row["risk_level"].as_str()));
    assert!(all.iter().all(|r| (0.0..=100.0).contains(&r.percentile)));
    assert!(!row["tier_name"].is_empty() && !row["tier_name_zh"].is_empty());
    assert!(!row["rfm_segment"].is_empty());
    // reasons: `feature=+0.42 (value)` joined by `; `; playbook joined by ` | `.
    let first_reason = row["reasons"].split("; ").next().unwrap();
    let (feature, rest) = first_reason.split_once('=').expect("feature=contribution");
    assert!(!feature.is_empty());
    assert!(rest.starts_with('+') || rest.starts_with('-'), "{rest}");
    assert!(rest.ends_with(')') && rest.contains(" ("), "{rest}");
    assert!(!row["playbook"].is_empty());

    // Small pages give the same list: the client follows next_page_token to the end.
    let paged = parse_csv(&s.at_risk(&["--min-probability", "0.3", "--page-size", "37"]));
    assert_eq!(ids(&paged), ids(&all));

    // --limit: the riskiest N, across pages too.
    let top = parse_csv(&s.at_risk(&[
        "--min-probability",
        "0.3",
        "--limit",
        "50",
        "--page-size",
        "16",
    ]));
    assert_eq!(ids(&top), ids(&all[..50]));

    // A higher threshold is a prefix of the list.
    let high = parse_csv(&s.at_risk(&["--min-probability", "0.8"]));
    assert!(high.iter().all(|r| r.p >= 0.8));
    assert_eq!(ids(&high), ids(&all[..high.len()]));

    // --tier: only that tier, every one of its users.
    let tier = most_common(&all, |r| r.tier.as_str()).to_string();
    let in_tier = parse_csv(&s.at_risk(&["--min-probability", "0.3", "--tier", &tier]));
    let expected: Vec<&str> = all
        .iter()
        .filter(|r| r.tier == tier)
        .map(|r| r.user_id.as_str())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(ids(&in_tier), expected);

    // --lifecycle, repeated: either stage.
    let stage = most_common(&all, |r| r.lifecycle.as_str()).to_string();
    let stages = parse_csv(&s.at_risk(&[
        "--min-probability",
        "0.3",
        "--lifecycle",
        &stage,
        "--lifecycle",
        "new",
    ]));
    let expected: Vec<&str> = all
        .iter()
        .filter(|r| r.lifecycle == stage || r.lifecycle == "new")
        .map(|r| r.user_id.as_str())
        .collect();
    assert_eq!(ids(&stages), expected);
    assert_sorted_by_risk(&stages);

    // --out writes the same bytes as stdout, atomically (no temporary file left behind).
    let out_dir = s.dir().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("at-risk.csv");
    let printed = s.at_risk(&["--min-probability", "0.8"]);
    let quiet = s.at_risk(&["--min-probability", "0.8", "--out", path_str(&out)]);
    assert!(quiet.is_empty(), "nothing on stdout with --out");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), printed);
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);
}

#[test]
fn at_risk_json_and_table_formats_carry_the_same_sorted_users() {
    let s = Served::start();
    let csv_rows = parse_csv(&s.at_risk(&["--min-probability", "0.5", "--limit", "40"]));
    assert_eq!(csv_rows.len(), 40);

    let json: serde_json::Value = serde_json::from_str(&s.at_risk(&[
        "--min-probability",
        "0.5",
        "--limit",
        "40",
        "--format",
        "json",
    ]))
    .expect("--format json is one JSON array");
    let arr = json.as_array().expect("an array");
    assert_eq!(arr.len(), 40);
    // Full precision: highest probability first, ties by user id.
    for w in arr.windows(2) {
        let key = |v: &serde_json::Value| {
            (
                v["churn_probability"].as_f64().unwrap(),
                v["user_id"].as_str().unwrap().to_string(),
            )
        };
        let ((p0, u0), (p1, u1)) = (key(&w[0]), key(&w[1]));
        assert!(p0 > p1 || (p0 == p1 && u0 < u1), "{u0} {p0} then {u1} {p1}");
    }
    for (j, c) in arr.iter().zip(&csv_rows) {
        assert_eq!(j["user_id"], c.user_id.as_str());
        let p = j["churn_probability"].as_f64().unwrap();
        assert!((p - c.p).abs() < 1e-6);
        assert_eq!(j["tier_id"], c.tier.as_str());
        assert_eq!(j["lifecycle_stage"], c.lifecycle.as_str());
        assert!(j["reasons"][0]["feature"].is_string());
        assert!(j["reasons"][0]["contribution"].is_number());
        assert!(j["playbook"][0].is_string());
        assert!(j["model_version"].as_str().is_some_and(|v| !v.is_empty()));
        assert_eq!(j["as_of"], NOW);
    }

    let jsonl = s.at_risk(&[
        "--min-probability",
        "0.5",
        "--limit",
        "40",
        "--format",
        "jsonl",
    ]);
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.as_slice(), arr.as_slice());

    let table = s.at_risk(&[
        "--min-probability",
        "0.5",
        "--limit",
        "40",
        "--format",
        "table",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 41, "a header and 40 users");
    assert!(lines[0].starts_with("USER_ID") && lines[0].contains("CHURN"));
    for (line, c) in lines[1..].iter().zip(&csv_rows) {
        assert!(line.starts_with(&c.user_id), "{line}");
        // Four decimals of the same probability (the CSV carries more digits, and a value on
        // a rounding edge may print either way: compare numbers, not strings).
        let shown: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(f64::NAN);
        assert!(
            (shown - c.p).abs() <= 0.5e-4 + 1e-9,
            "{line}\nexpected {}",
            c.p
        );
        assert!(line.contains(&c.tier), "{line}\nexpected tier {}", c.tier);
    }
    // Aligned: the probability column ends at the same place on every line.
    let end_of_p = |l: &str| {
        let start = l.find(char::is_whitespace).unwrap();
        let rest = &l[start..];
        let trimmed = rest.trim_start();
        start + (rest.len() - trimmed.len()) + trimmed.find(char::is_whitespace).unwrap()
    };
    let first = end_of_p(lines[1]);
    assert!(lines[1..].iter().all(|l| end_of_p(l) == first));
}

#[test]
fn at_risk_shows_grpc_errors_with_their_code_and_unreachable_servers_by_url() {
    let s = Served::start();
    let url = s.url();
    let e = fails(
        s.dir(),
        &["at-risk", "--server", &url, "--min-probability", "1.5"],
    );
    assert!(e.contains("INVALID_ARGUMENT: min_churn_probability"), "{e}");
    let e = fails(
        s.dir(),
        &[
            "at-risk",
            "--server",
            &url,
            "--min-probability",
            "0.5",
            "--tier",
            "no_such_tier",
        ],
    );
    assert!(e.contains("INVALID_ARGUMENT: tier_ids[0]"), "{e}");
    let e = fails(
        s.dir(),
        &[
            "at-risk",
            "--server",
            &url,
            "--min-probability",
            "0.5",
            "--lifecycle",
            "zombie",
        ],
    );
    assert!(e.contains("INVALID_ARGUMENT: lifecycle_stages[0]"), "{e}");

    // Nothing listens on a port we just closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_url = format!("http://{dead}");
    let e = fails(
        s.dir(),
        &["at-risk", "--server", &dead_url, "--min-probability", "0.5"],
    );
    assert!(e.contains(&dead_url), "the URL is named: {e}");
    assert!(e.to_lowercase().contains("connect"), "{e}");
    // A failed run with --out leaves no file behind.
    let out = s.dir().join("never.csv");
    fails(
        s.dir(),
        &[
            "at-risk",
            "--server",
            &url,
            "--min-probability",
            "2",
            "--out",
            path_str(&out),
        ],
    );
    assert!(!out.exists());
}

#[test]
fn user_prints_every_field_and_an_unknown_user_fails_with_not_found() {
    let s = Served::start();
    let url = s.url();
    let top = parse_csv(&s.at_risk(&["--min-probability", "0.0", "--limit", "1"]));
    let want = &top[0];

    let json: serde_json::Value = serde_json::from_str(&ok(
        s.dir(),
        &["user", &want.user_id, "--server", &url, "--format", "json"],
    ))
    .unwrap();
    assert_eq!(json["user_id"], want.user_id.as_str());
    assert!((json["churn_probability"].as_f64().unwrap() - want.p).abs() < 1e-6);
    assert_eq!(json["tier_id"], want.tier.as_str());
    assert_eq!(json["lifecycle_stage"], want.lifecycle.as_str());
    assert_eq!(json["as_of"], NOW);

    let table = ok(s.dir(), &["user", &want.user_id, "--server", &url]);
    for field in [
        "user_id",
        "tier_id",
        "tier_name",
        "tier_name_zh",
        "churn_probability",
        "risk_level",
        "risk_percentile",
        "rfm_segment",
        "lifecycle_stage",
        "top_factors",
        "recommended_actions",
        "model_version",
        "as_of",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(field)),
            "{field} missing:\n{table}"
        );
    }
    assert!(table.contains(&want.user_id) && table.contains(&want.tier));
    assert!(table.contains(&format!("{:.4}", want.p)));

    let r = tiering(s.dir(), &["user", "no-such-user", "--server", &url]);
    assert!(!r.ok, "an unknown user exits non-zero");
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("NOT_FOUND"), "{}", r.stderr);
    assert!(r.stderr.contains("no-such-user"), "{}", r.stderr);
}

#[test]
fn models_list_promote_and_rollback_move_current_and_show_broken_bundles() {
    let ws = Workspace::new();
    let models = ws.path().join("models");
    let m = path_str(&models);
    let first = ws.train(&models);
    // Version ids start with the creation second: make the second one sort after the first.
    std::thread::sleep(Duration::from_millis(1100));
    let second = ws.train(&models);
    assert!(first < second);

    let current_line = |list: &str| -> String {
        let lines: Vec<&str> = list.lines().filter(|l| l.contains("CURRENT")).collect();
        assert_eq!(lines.len(), 1, "exactly one CURRENT:\n{list}");
        lines[0].split_whitespace().next().unwrap().to_string()
    };
    let list = ok(ws.path(), &["models", "--models", m, "list"]);
    assert!(
        list.lines().next().unwrap().starts_with("VERSION"),
        "{list}"
    );
    assert!(list.contains(&first) && list.contains(&second));
    assert!(
        list.find(&first) < list.find(&second),
        "oldest first:\n{list}"
    );
    assert_eq!(
        current_line(&list),
        second,
        "training made the new one current"
    );

    let out = ok(ws.path(), &["models", "--models", m, "promote", &first]);
    assert!(out.contains(&first), "{out}");
    // --models after the subcommand works too.
    let list = ok(ws.path(), &["models", "list", "--models", m]);
    assert_eq!(current_line(&list), first);

    let out = ok(ws.path(), &["models", "--models", m, "rollback"]);
    assert!(out.contains(&format!("from {first} to {second}")), "{out}");
    assert_eq!(
        current_line(&ok(ws.path(), &["models", "--models", m, "list"])),
        second
    );

    // Unknown versions are refused, CURRENT untouched.
    let e = fails(ws.path(), &["models", "--models", m, "promote", "v-nope"]);
    assert!(e.contains("v-nope"), "{e}");

    // A damaged bundle is listed with the reason, and cannot be promoted.
    let broken = models.join(&first).join("model.json");
    let mut bytes = std::fs::read(&broken).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&broken, bytes).unwrap();
    let list = ok(ws.path(), &["models", "--models", m, "list"]);
    let line = list.lines().find(|l| l.starts_with(&first)).unwrap();
    assert!(
        line.contains("BROKEN") && line.contains("checksum"),
        "{line}"
    );
    assert_eq!(current_line(&list), second);
    let e = fails(ws.path(), &["models", "--models", m, "promote", &first]);
    assert!(e.contains("checksum"), "{e}");
    let e = fails(ws.path(), &["models", "--models", m, "rollback"]);
    assert!(e.contains("rolling back"), "{e}");
    assert_eq!(
        std::fs::read_to_string(models.join("CURRENT"))
            .unwrap()
            .trim(),
        second
    );
}

#[test]
fn models_prune_keeps_the_current_bundle_and_the_newest_others_and_deletes_the_rest() {
    let ws = Workspace::new();
    let models = ws.path().join("models");
    let m = path_str(&models);
    for v in ["v1", "v2", "v3", "v4", "v5"] {
        publish(&models, v, 1.0);
    }
    // The current one is not the newest (a rollback, or a held-back retrain).
    ok(ws.path(), &["models", "--models", m, "promote", "v2"]);
    // A crashed prune's leftover, and a file that is not a bundle.
    std::fs::create_dir_all(models.join(".pruned-v0")).unwrap();
    let present = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('v') || n.starts_with(".pruned"))
            .collect();
        v.sort();
        v
    };

    let out = ok(
        ws.path(),
        &["models", "--models", m, "prune", "--keep", "2", "--dry-run"],
    );
    assert!(
        out.contains("would delete v1") && out.contains("would delete v3"),
        "{out}"
    );
    assert!(out.contains("kept: v2, v4, v5"), "{out}");
    assert_eq!(
        present(),
        [".pruned-v0", "v1", "v2", "v3", "v4", "v5"],
        "a dry run deletes nothing"
    );

    let out = ok(
        ws.path(),
        &["models", "--models", m, "prune", "--keep", "2"],
    );
    assert!(
        out.contains("deleted v1") && out.contains("deleted v3"),
        "{out}"
    );
    assert_eq!(present(), ["v2", "v4", "v5"]);
    // The rest still loads, and rollback walks to a kept bundle.
    let list = ok(ws.path(), &["models", "--models", m, "list"]);
    assert!(!list.contains("BROKEN"), "{list}");
    let out = ok(ws.path(), &["models", "--models", m, "rollback"]);
    assert!(out.contains("from v2 to v5"), "{out}");

    // --keep 0 leaves the current bundle alone.
    ok(
        ws.path(),
        &["models", "--models", m, "prune", "--keep", "0"],
    );
    assert_eq!(present(), ["v5"]);
    let e = fails(
        ws.path(),
        &[
            "models",
            "--server",
            "http://127.0.0.1:1",
            "prune",
            "--keep",
            "1",
        ],
    );
    assert!(e.contains("not through --server"), "{e}");
}

/// A damaged models directory: prune refuses, names what it could not read, and deletes
/// nothing (without knowing the current bundle it must not guess which one to keep).
#[test]
fn models_prune_refuses_a_damaged_models_directory_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let m = path_str(&models);
    for v in ["v1", "v2", "v3"] {
        publish(&models, v, 1.0);
    }
    // A torn CURRENT pointer.
    std::fs::write(models.join("CURRENT"), "v2\0\0\u{1}").unwrap();
    let e = fails(
        dir.path(),
        &["models", "--models", m, "prune", "--keep", "0"],
    );
    assert!(e.contains("CURRENT"), "{e}");
    assert_eq!(versions(&models), ["v1", "v2", "v3"]);

    // The models path is a file, not a directory.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "x").unwrap();
    let e = fails(
        dir.path(),
        &[
            "models",
            "--models",
            path_str(&file),
            "prune",
            "--keep",
            "0",
        ],
    );
    assert!(e.contains("not-a-directory"), "{e}");
    // Each cause once: the bundle error already ends with the OS error it carries.
    assert_eq!(e.matches("Not a directory").count(), 1, "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

/// Logs written to a file or a pipe (a service manager's journal, `2> log`) are plain text:
/// no terminal colour codes, which log shippers and `grep` would otherwise have to strip.
#[test]
fn logs_to_a_file_or_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    for to_file in [true, false] {
        let mut cmd = crate::helpers::bin();
        cmd.args(["generate", "--users", "20", "--days", "10", "--seed", "3"])
            .args(["--end", END, "--out"])
            .arg(&out)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null());
        let log = dir.path().join("log");
        let stderr = if to_file {
            cmd.stderr(std::fs::File::create(&log).unwrap());
            assert!(cmd.status().unwrap().success());
            std::fs::read_to_string(&log).unwrap()
        } else {
            let o = cmd.stderr(Stdio::piped()).output().unwrap();
            assert!(o.status.success());
            String::from_utf8(o.stderr).unwrap()
        };
        assert!(
            stderr.contains("INFO") && stderr.contains("generated"),
            "the info lines are logged: {stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "no escape codes in a log to a {}: {stderr:?}",
            if to_file { "file" } else { "pipe" }
        );
    }
}

/// A models directory that does not exist (a typo in `--models`, an unmounted volume) is an
/// error for every `models` action, with the path named: `list` and a scheduled `prune` must
/// not report "nothing there" and succeed.
#[test]
fn models_actions_refuse_a_models_directory_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-models");
    let m = path_str(&missing);
    for action in [
        &["list"][..],
        &["prune", "--keep", "1"],
        &["prune", "--keep", "1", "--dry-run"],
        &["rollback"],
        &["promote", "v1"],
    ] {
        let mut args = vec!["models", "--models", m];
        args.extend_from_slice(action);
        let e = fails(dir.path(), &args);
        assert!(e.contains(m), "{action:?} names the path: {e}");
        assert!(!missing.exists(), "{action:?} created nothing");
    }
    // A path that cannot be looked at (under a file) is the OS error, named, not "no such".
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("models");
    let e = fails(
        dir.path(),
        &["models", "--models", path_str(&under), "list"],
    );
    assert!(
        e.contains(&format!("reading the models directory {}", under.display())),
        "{e}"
    );
    assert!(
        e.contains("Not a directory") && !e.contains("no such"),
        "{e}"
    );
    // An existing, empty directory is fine to list: no bundles yet.
    std::fs::create_dir(&missing).unwrap();
    assert!(ok(dir.path(), &["models", "--models", m, "list"]).contains("no bundles"));
}

/// `tiering serve` on `models` with its state in `state`, logging at `level` to the file `log`.
fn serve_logging(models: &Path, state: &Path, log: &Path, level: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--now", NOW, "--models"])
        .arg(models)
        .arg("--state")
        .arg(state)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The text of `log` once it holds `needle`, or as it is after [`STEP_TIMEOUT`].
fn log_once_it_says(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server started on a models directory without a model (a wrong `--models`, or before the
/// first training) serves NOT_SERVING and says once, at start, what it is waiting for and
/// where: otherwise its log shows nothing wrong while every call answers UNAVAILABLE.
#[test]
fn serve_without_a_model_says_what_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    for (name, create) in [("missing", false), ("empty", true)] {
        let models = dir.path().join(format!("models-{name}"));
        if create {
            std::fs::create_dir(&models).unwrap();
        }
        let log = dir.path().join(format!("serve-{name}.log"));
        let state = dir.path().join(format!("state-{name}"));
        let mut child = serve_logging(&models, &state, &log, "warn");
        let text = log_once_it_says(&log, "no model to serve yet");
        // Two more polls of CURRENT (every second by default) must not repeat it.
        std::thread::sleep(Duration::from_millis(2500));
        let _ = child.kill();
        let _ = child.wait();
        let later = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("no model to serve yet"), "{name}: {text}");
        assert!(
            text.contains(&path_str(&models).to_string()),
            "{name}: {text}"
        );
        let why = if create {
            "CURRENT does not exist"
        } else {
            "the models directory does not exist"
        };
        assert!(text.contains(why), "{name}: {text}");
        assert_eq!(later.matches("no model to serve yet").count(), 1, "{later}");
    }
}

/// With a model live and MODELS/CURRENT then removed, the server says once that the loaded
/// model keeps serving (not that it has no model).
#[test]
fn serve_says_the_live_model_keeps_serving_when_current_goes() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    publish(&models, "v1", 1.0);
    let log = dir.path().join("serve.log");
    let mut child = serve_logging(&models, &dir.path().join("state"), &log, "info");
    let live = log_once_it_says(&log, "model is live");
    std::fs::remove_file(models.join("CURRENT")).unwrap();
    let text = log_once_it_says(&log, "names no model");
    // Two more polls of CURRENT must not repeat it.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = child.kill();
    let _ = child.wait();
    let later = std::fs::read_to_string(&log).unwrap();
    assert!(live.contains("model is live"), "{live}");
    assert!(
        text.contains("MODELS/CURRENT names no model (CURRENT does not exist); v1 keeps serving"),
        "{text}"
    );
    assert!(!text.contains("no model to serve yet"), "{text}");
    assert_eq!(later.matches("names no model").count(), 1, "{later}");
}

/// A serve configuration with a value of the wrong type is refused naming the file and the key
/// (the error comes from the merged file and TIERING__* variables, so the file must be said).
#[test]
fn serve_refuses_a_bad_configuration_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "max_batch_size = \"ten\"\n").unwrap();
    let e = fails(
        dir.path(),
        &[
            "serve",
            "--config",
            path_str(&config),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(e.contains(path_str(&config)), "{e}");
    assert!(e.contains("max_batch_size"), "{e}");
}

/// `tiering score` checks where its output goes before it reads the events (minutes at a large
/// data set): an unsupported extension or a directory that does not exist is refused first,
/// naming the output, even when the events path is wrong too; and nothing is left behind.
#[test]
fn score_refuses_an_unwritable_output_before_reading_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    publish(&models, "v1", 1.0);
    let missing_data = dir.path().join("no-such-events.csv");
    for out in [
        dir.path().join("scores.txt"),
        dir.path().join("no-such-dir").join("scores.csv"),
    ] {
        let e = fails(
            dir.path(),
            &[
                "score",
                "--models",
                path_str(&models),
                "--data",
                path_str(&missing_data),
                "--out",
                path_str(&out),
            ],
        );
        assert!(e.contains(path_str(&out)), "names the output: {e}");
        assert!(!e.contains("no-such-events"), "refused before reading: {e}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scores"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
