//! Tier stability (issue 13): seeds agree, retrains keep the partition, k changes are held
//! back. The data sets are pinned here through the library's generator, so a later change of
//! the generator's defaults cannot hide a regression.

use crate::helpers::{Dirs, TestServer};
use std::path::Path;
use std::time::Instant;
use tiering::bundle::manifest::DataInfo;
use tiering::bundle::{Bundle, BundleStore, Manifest, Snapshot};
use tiering::features::{parse_instant, EventTable};
use tiering::generate::{generate_table, GenerateParams};
use tiering::pb::GetModelInfoRequest;
use tiering::serve::ServeConfig;
use tiering::train::{self, TrainConfig, TrainInput, Trained};

/// A generated data set and the time it is scored at.
struct DataSet {
    table: EventTable,
    personas: Vec<Option<String>>,
    as_of: i64,
}

fn data_set(users: u64, days: u32, seed: u64, end: &str) -> DataSet {
    let end = parse_instant(end).expect("end date");
    let params = GenerateParams::new(end)
        .users(users)
        .days(days)
        .seed(seed)
        .check()
        .expect("generator parameters");
    let (table, people) = generate_table(&params);
    let personas = people
        .iter()
        .map(|p| Some(format!("{:?}", p.persona)))
        .collect();
    DataSet {
        table,
        personas,
        as_of: end,
    }
}

/// The issue's data set: `generate --users 20000 --days 120 --seed 7 --end 2026-11-01`.
fn issue_data_set() -> DataSet {
    data_set(20_000, 120, 7, "2026-11-01")
}

fn train_on(
    ds: &DataSet,
    seed: u64,
    k: Option<usize>,
    previous: Option<(&Bundle, &Snapshot)>,
) -> Trained {
    let mut cfg = TrainConfig {
        seed,
        ..TrainConfig::default()
    };
    cfg.tiers.k = k;
    let params = cfg.check().expect("valid config");
    let input = TrainInput {
        table: &ds.table,
        personas: Some(&ds.personas),
        data: DataInfo::default(),
        as_of: Some(ds.as_of),
        config: &params,
        previous,
        keep_eval_sets: false,
        version: format!("v-seed-{seed}"),
        created_at: 1_790_000_000,
    };
    train::fit(input, &mut |_| {}).expect("training succeeds")
}

/// Tier id of every user known at `as_of` (the users the tiers were fitted on).
fn tier_ids(t: &Trained) -> Vec<Option<String>> {
    let ids: Vec<&str> = t.scorer.tiers.tiers.iter().map(|x| x.id.as_str()).collect();
    t.scores
        .iter()
        .map(|s| ids.get(usize::from(s.tier)).map(|x| x.to_string()))
        .collect()
}

fn agreement(a: &[Option<String>], b: &[Option<String>]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

fn as_previous(t: &Trained) -> (Bundle, Snapshot) {
    let bundle = Bundle {
        dir: std::path::PathBuf::new(),
        manifest: t.manifest.clone(),
        scorer: t.scorer.clone(),
    };
    (bundle, t.snapshot.clone())
}

/// What the tiering achieved on a data set before issue 13 with seed 42 (same k): it must not
/// get worse.
struct Before {
    /// Adjusted Rand index of the tiers against the generator's personas.
    ari: f64,
    /// Out-of-time ROC-AUC of the served (boosted) churn model.
    auc: f64,
    tiers: [&'static str; 4],
}

/// Ten seeds without a previous bundle agree pairwise with the first on >= 97% of users;
/// ten seeds retrained over the first agree with it on >= 99.5%; quality as `before`.
fn seeds_agree(ds: &DataSet, name: &str, before: Before) {
    let started = Instant::now();
    let runs: Vec<Trained> = (42..52)
        .map(|seed| train_on(ds, seed, None, None))
        .collect();
    let cold_secs = started.elapsed().as_secs_f64();
    for (seed, t) in (42..).zip(&runs) {
        let m = &t.manifest.metrics;
        eprintln!(
            "{name}: seed {seed}: k {} silhouette {:.3?} stability {:.3?}",
            m.k, m.k_scores, m.k_stability
        );
    }
    let ids: Vec<Vec<Option<String>>> = runs.iter().map(tier_ids).collect();
    let ks: Vec<usize> = runs.iter().map(|t| t.manifest.metrics.k).collect();
    let cold: Vec<f64> = ids[1..].iter().map(|x| agreement(&ids[0], x)).collect();
    let m = &runs[0].manifest;
    let tiers: Vec<String> = (m.tiers.iter())
        .map(|t| format!("{} {:.3}", t.id, t.share))
        .collect();
    eprintln!(
        "{name}: seed 42: ARI vs personas {:?}, out-of-time ROC-AUC {:?}, tiers {tiers:?}",
        m.metrics.tier_ari,
        m.metrics
            .models
            .iter()
            .map(|x| (x.name.as_str(), x.metrics.roc_auc))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "{name}: k per seed {ks:?}; agreement with seed 42 without a previous bundle {cold:.4?} ({cold_secs:.1} s for 10 trainings)"
    );
    let (pb, ps) = as_previous(&runs[0]);
    let started = Instant::now();
    let warm: Vec<f64> = (42..52)
        .map(|seed| {
            agreement(
                &ids[0],
                &tier_ids(&train_on(ds, seed + 100, None, Some((&pb, &ps)))),
            )
        })
        .collect();
    eprintln!(
        "{name}: agreement with the previous bundle {warm:.4?} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let mut ids_now: Vec<&str> = m.tiers.iter().map(|t| t.id.as_str()).collect();
    ids_now.sort_unstable();
    let mut ids_before = before.tiers.to_vec();
    ids_before.sort_unstable();
    assert_eq!(ids_now, ids_before, "{name}: the same tiers");
    for t in &runs {
        let ari = t.manifest.metrics.tier_ari.unwrap_or(0.0);
        assert!(
            ari >= before.ari - 1e-3,
            "{name}: ARI {ari} < {}",
            before.ari
        );
    }
    // The churn models still depend on the seed: compare seed 42 with seed 42.
    let auc = (m.metrics.models.iter())
        .find(|x| x.name == "gradient_boosting")
        .map_or(0.0, |x| x.metrics.roc_auc);
    assert!(
        auc >= before.auc - 1e-4,
        "{name}: AUC {auc} < {}",
        before.auc
    );
    for (seed, a) in (43..).zip(&cold) {
        assert!(
            *a >= 0.97,
            "{name}: seed {seed} agrees with seed 42 on only {a:.4}"
        );
    }
    for (seed, a) in (142..).zip(&warm) {
        assert!(
            *a >= 0.995,
            "{name}: seed {seed} over the previous bundle agrees on only {a:.4}"
        );
    }
}

#[test]
fn ten_seeds_agree_on_the_tiers_of_the_issue_data_set() {
    // Before: seed 42 chose k = 4 (ARI 0.2702, AUC 0.8572); seed 44 chose k = 5 and moved 28%
    // of the users. With k fixed but k-means still seeded by the run's seed (a step of this
    // change), seed 45 found another optimum at k = 4 and agreed with seed 42 on 69.9%. With
    // the runs seeded from the training seed, 3 restarts per k gave k = [4, 4, 6, 7, 4, 4, 4,
    // 4, 5, 4] over seeds 42..52 (stability as the mean pairwise ARI of the runs), 10 restarts
    // k = 5 for 2 seeds in 10; the best-of-halves stability with 10 restarts gives k = 4 and
    // >= 99.9% agreement for every seed.
    // Issue 16 orders the training rows by the users' sampling keys (so that a warehouse
    // table sorted by id trains the same model as the events file): the boosted trees see
    // another row order and seed 42's AUC moved from 0.8572 to 0.85710 (measured).
    let before = Before {
        ari: 0.2702,
        auc: 0.8571,
        tiers: ["content_browsers", "core_fans", "dormant", "potential_new"],
    };
    seeds_agree(&issue_data_set(), "20k users, 120 days, seed 7", before);
}

#[test]
fn ten_seeds_agree_on_the_tiers_of_a_second_data_set() {
    // Before: seed 42 chose k = 4 (ARI 0.2984, AUC 0.8693).
    let before = Before {
        ari: 0.2984,
        auc: 0.8693,
        tiers: ["content_browsers", "core_fans", "dormant", "potential_new"],
    };
    let ds = data_set(8_000, 150, 3, "2026-06-30");
    seeds_agree(&ds, "8k users, 150 days, seed 3", before);
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tiering"))
}

/// Runs `tiering` with `args`: (success, stdout, stderr).
fn tiering(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).output().expect("spawn tiering");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn train_cli(data: &Path, models: &Path, extra: &[&str]) -> (bool, String, String) {
    let (data, models) = (data.to_string_lossy(), models.to_string_lossy());
    let mut args = vec!["train", "--data", &data, "--models", &models];
    args.extend_from_slice(extra);
    tiering(&args)
}

fn current(models: &Path) -> String {
    BundleStore::new(models)
        .current()
        .expect("read CURRENT")
        .expect("a current bundle")
}

fn versions(models: &Path) -> Vec<String> {
    let store = BundleStore::new(models);
    match store.list() {
        Ok(list) => list.into_iter().map(|v| v.version).collect(),
        Err(_) => Vec::new(),
    }
}

/// `train_cli`, and the manifest of the bundle it wrote (version ids sort by the second they
/// were made in, so the new one is found as the one that was not there before).
fn train_new(data: &Path, models: &Path, extra: &[&str]) -> (bool, String, String, Manifest) {
    let before = versions(models);
    let (ok, out, err) = train_cli(data, models, extra);
    assert!(ok || err.contains("held back"), "{out}\n{err}");
    let new = (versions(models).into_iter())
        .find(|v| !before.contains(v))
        .expect("a new bundle");
    let m = BundleStore::new(models)
        .load(&new)
        .expect("load the new bundle")
        .manifest;
    (ok, out, err, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrains_keep_the_partition_and_a_forced_k_change_is_held_back_until_accepted() {
    let dirs = Dirs::new();
    let data = dirs.root.path().join("data");
    let models = dirs.models();
    let (ok, _, err) = tiering(&[
        "generate",
        "--users",
        "2500",
        "--days",
        "150",
        "--seed",
        "5",
        "--end",
        "2026-06-30",
        "--out",
        &data.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err, m) = train_new(&data, &models, &["--seed", "42"]);
    assert!(ok, "{out}\n{err}");
    let first = current(&models);
    assert_eq!(first, m.version);
    let k = m.metrics.k;

    // Identical data, another seed: a warm start, the same partition, no drift.
    let (ok, out, err, m) = train_new(&data, &models, &["--seed", "44"]);
    assert!(ok, "{out}\n{err}");
    assert_ne!(m.version, first);
    assert_eq!(current(&models), m.version);
    assert!(
        m.metrics.tier_init.contains("warm start"),
        "{}",
        m.metrics.tier_init
    );
    assert!(
        m.metrics.k_reason.contains("kept from the previous bundle"),
        "{}",
        m.metrics.k_reason
    );
    let s = m.metrics.stability.clone().expect("stability figures");
    eprintln!("retrain on identical data: {s:?}");
    assert_eq!((s.model_changed, s.behaviour_changed), (0, 0));
    assert!(s.compared > 2000, "{}", s.compared);
    let drift = m.metrics.drift.clone().expect("drift figures");
    assert!(
        drift.churn_probability.abs() < 1e-9 && drift.tier_shares.abs() < 1e-9,
        "{drift:?}"
    );
    assert!(
        drift.features.iter().all(|(_, p)| p.abs() < 1e-9),
        "{drift:?}"
    );
    assert!(out.contains("tier stability vs"), "{out}");
    assert!(out.contains("model changed 0 of"), "{out}");
    let report = std::fs::read_to_string(models.join(&m.version).join(tiering::bundle::REPORT))
        .expect("report");
    assert!(report.contains("id=\"stability\"") && report.contains("Drift since"));
    let kept = m.version.clone();

    // A forced k change moves users although nobody's behaviour changed: held back.
    let other_k = (k + 1).to_string();
    let (ok, out, err, held) = train_new(&data, &models, &["--k", &other_k]);
    eprintln!("gate: {}", err.lines().last().unwrap_or_default());
    assert!(!ok, "a forced k change must be held back\n{out}");
    assert!(err.contains("tier changes held back"), "{err}");
    assert!(
        err.contains("would change tier with unchanged behaviour (limit 5.0%)"),
        "{err}"
    );
    assert!(err.contains(" -> "), "the message names the moves: {err}");
    assert!(err.contains("--accept-tier-changes"), "{err}");
    assert!(out.contains("NOT made current"), "{out}");
    assert_eq!(current(&models), kept, "CURRENT is unchanged");
    assert_eq!(held.metrics.k, k + 1);
    assert!(err.contains(&held.version), "{err}");

    // Accepted with the flag.
    let (ok, out, err, accepted) =
        train_new(&data, &models, &["--k", &other_k, "--accept-tier-changes"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(current(&models), accepted.version);
    assert!(accepted
        .metrics
        .stability
        .as_ref()
        .is_some_and(|s| s.model_changed_share > 0.05));

    // The server: GetModelInfo carries the figures; the drift gauges appear without a request.
    let server = TestServer::start(ServeConfig {
        now: Some("2026-06-30".into()),
        ..dirs.config()
    })
    .await;
    server.ready().await;
    let info = server
        .client()
        .await
        .get_model_info(GetModelInfoRequest {})
        .await
        .expect("GetModelInfo")
        .into_inner();
    let st = info.stability.expect("stability in GetModelInfo");
    assert_eq!(st.previous_version, kept);
    assert!(st.model_changed > 0 && !st.model_transitions.is_empty());
    assert!(info.k_reason.contains("fixed"), "{}", info.k_reason);
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = server.metrics().await;
        if metrics.contains("tiering_drift_psi{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let psi: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tiering_drift_psi{"))
        .collect();
    eprintln!("drift gauges: {psi:?}");
    assert!(
        psi.iter()
            .any(|l| l.contains("kind=\"feature\"") && l.contains("recency_days")),
        "{metrics}"
    );
    assert!(
        psi.iter().any(|l| l.contains("churn_probability")),
        "{metrics}"
    );
    server.stop().await.expect("clean stop");
}

#[test]
fn a_retrain_two_months_later_splits_tier_changes_by_cause_and_reports_drift() {
    let mut ds = data_set(8_000, 150, 3, "2026-06-30");
    let end = ds.as_of;
    ds.as_of = end - 60 * tiering::features::DAY;
    let earlier = train_on(&ds, 42, None, None);
    let (pb, ps) = as_previous(&earlier);
    ds.as_of = end;
    let later = train_on(&ds, 42, None, Some((&pb, &ps)));
    let m = &later.manifest.metrics;
    let s = m.stability.as_ref().expect("stability figures");
    let d = m.drift.as_ref().expect("drift figures");
    let (what, largest) = d.largest();
    eprintln!(
        "60 days later: {}; model changed {} of {} ({:.2}%), behaviour changed {} of {} ({:.2}%): {}; drift: churn {:.3}, tiers {:.3}, largest {what} {largest:.3}, features {:?}",
        m.k_reason,
        s.model_changed,
        s.compared,
        100.0 * s.model_changed_share,
        s.behaviour_changed,
        s.behaviour_compared,
        100.0 * s.behaviour_changed_share,
        s.behaviour.describe_moves(4),
        d.churn_probability,
        d.tier_shares,
        d.features
            .iter()
            .map(|(n, p)| format!("{n} {p:.3}"))
            .collect::<Vec<_>>()
    );
    assert!(s.behaviour_changed > 0, "two months move some users");
    assert!(
        s.compared > s.behaviour_compared,
        "new users are compared too"
    );
    assert_eq!(d.features.len(), later.scorer.features.len());
    assert!(largest > 0.0 && largest.is_finite());
    assert!(d.users as usize >= s.compared as usize);
}
