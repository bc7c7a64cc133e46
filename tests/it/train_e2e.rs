//! Training end to end: the real binary on generated data, and the library's guarantees
//! (no leakage, stable tier ids, bundle round trip, corrupt bundles refused).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tiering::bundle::{BundleError, BundleStore, MODEL, STATE};
use tiering::features::{build_aggregates, Event, EventKind, EventTable, FeatureSet, DAY};

use crate::helpers::{bin, run};

fn generate(dir: &Path, users: u32, seed: u64) {
    run(bin()
        .args([
            "generate",
            "--users",
            &users.to_string(),
            "--days",
            "150",
            "--seed",
            &seed.to_string(),
            "--end",
            "2026-06-30",
            "--out",
        ])
        .arg(dir));
}

fn train(data: &Path, models: &Path, extra: &[&str]) -> String {
    run(bin()
        .args(["train", "--data"])
        .arg(data)
        .arg("--models")
        .arg(models)
        .args(extra))
}

/// user_id -> column values, from a CSV written by `tiering score`.
fn read_scores(path: &Path) -> HashMap<String, csv::StringRecord> {
    let mut r = csv::Reader::from_path(path).expect("open scores");
    let headers = r.headers().expect("headers").clone();
    assert_eq!(&headers[0], "user_id");
    r.records()
        .map(|rec| rec.expect("row"))
        .map(|rec| (rec[0].to_string(), rec))
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn generate_train_score_end_to_end_on_generated_data() {
    let dir = tmp();
    let data = dir.path().join("data");
    let models = dir.path().join("models");
    generate(&data, 3000, 7);
    let export = dir.path().join("eval");
    let out = train(
        &data,
        &models,
        &[
            "--k",
            "6",
            "--export-eval",
            export.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.contains("made current"), "{out}");
    assert!(
        out.contains("out of time"),
        "evaluation is out of time: {out}"
    );

    let store = BundleStore::new(&models);
    let bundle = store.load_current().expect("current bundle loads");
    let m = &bundle.manifest;
    assert_eq!(m.tiers.len(), 6);
    assert_eq!(m.metrics.models.len(), 2);
    for model in &m.metrics.models {
        assert!(
            model.metrics.roc_auc > 0.7,
            "{} AUC {}",
            model.name,
            model.metrics.roc_auc
        );
    }
    assert!(
        m.metrics.tier_ari.is_some_and(|a| a > 0.1),
        "ARI {:?}",
        m.metrics.tier_ari
    );
    assert!(bundle.dir.join("report.html").exists());
    assert!(bundle.dir.join("scores.parquet").exists());
    // The value model (BG/NBD + Gamma-Gamma) is fitted and carried in the served scorer.
    let value = bundle.scorer.value.as_ref().expect("a value model");
    assert!(
        value.gamma_gamma.is_some() && value.bgnbd.r > 0.0,
        "{value:?}"
    );
    assert_eq!(value.horizon_days, 90.0);
    let report = std::fs::read_to_string(bundle.dir.join("report.html")).expect("report");
    assert!(report.contains("<svg") && report.contains(&m.tiers[0].name_zh));

    // The exported evaluation rows are exactly the ones the metrics were computed on.
    let mut test = csv::Reader::from_path(export.join("test.csv")).expect("test.csv");
    let header = test.headers().expect("header").clone();
    assert_eq!(&header[1], "churned");
    assert_eq!(header.len(), 2 + m.features.len() + 1);
    let rows: Vec<csv::StringRecord> = test.records().map(|r| r.expect("row")).collect();
    let chosen = m
        .metrics
        .models
        .iter()
        .find(|x| x.name == m.metrics.chosen_model)
        .expect("chosen");
    assert_eq!(rows.len() as u64, chosen.metrics.n);
    let probs: Vec<f64> = rows
        .iter()
        .map(|r| r[header.len() - 1].parse().expect("p"))
        .collect();
    let labels: Vec<bool> = rows.iter().map(|r| &r[1] == "1").collect();
    let auc = tiering::model::metrics::roc_auc(&probs, &labels);
    assert!(
        (auc - chosen.metrics.roc_auc).abs() < 1e-6,
        "{auc} vs {}",
        chosen.metrics.roc_auc
    );
    assert!(export.join("train.csv").exists() && export.join("meta.json").exists());

    // tiers.csv: the standardised rows k-means clustered, each with the tier the bundle gives
    // it (its nearest centroid), and as many rows per tier as the manifest reports.
    let mut tiers_csv = csv::Reader::from_path(export.join("tiers.csv")).expect("tiers.csv");
    let d = m.features.len();
    assert_eq!(tiers_csv.headers().expect("header").len(), 2 + d);
    let mut per_tier = vec![0u64; m.tiers.len()];
    for r in tiers_csv.records() {
        let r = r.expect("row");
        let tier: usize = r[1].parse().expect("tier");
        let x: Vec<f64> = (0..d).map(|j| r[2 + j].parse().expect("x")).collect();
        assert_eq!(bundle.scorer.tiers.assign(&x), tier, "user {}", &r[0]);
        per_tier[tier] += 1;
    }
    let reported: Vec<u64> = m.tiers.iter().map(|t| t.users).collect();
    assert_eq!(per_tier, reported);

    let scores = dir.path().join("scores.csv");
    let out = run(bin()
        .args(["score", "--models"])
        .arg(&models)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&scores));
    assert!(out.contains("scored 3000 users"), "{out}");
    let rows = read_scores(&scores);
    assert_eq!(rows.len(), 3000);
    let tier_ids: Vec<&str> = m.tiers.iter().map(|t| t.id.as_str()).collect();
    for rec in rows.values() {
        assert!(
            tier_ids.contains(&&rec[1]),
            "tier {} is in the bundle",
            &rec[1]
        );
        let p: f64 = rec[3].parse().expect("probability");
        assert!((0.0..=1.0).contains(&p));
        assert!(["low", "medium", "high"].contains(&&rec[4]));
    }
}

#[test]
fn a_plain_transaction_log_trains_with_the_features_it_supports() {
    let dir = tmp();
    let data = dir.path().join("data");
    generate(&data, 2000, 11);
    // Keep only order rows and the contract's required columns + amount.
    let mut r = csv::Reader::from_path(data.join("events.csv")).expect("events");
    let log = dir.path().join("orders.csv");
    let mut w = csv::Writer::from_path(&log).expect("orders");
    w.write_record(["user_id", "ts", "kind", "amount"])
        .expect("header");
    for rec in r.records() {
        let rec = rec.expect("row");
        if &rec[2] == "order" {
            w.write_record([&rec[0], &rec[1], &rec[2], &rec[3]])
                .expect("row");
        }
    }
    w.flush().expect("flush");
    drop(w);
    let models = dir.path().join("models");
    let out = train(&log, &models, &["--k", "4"]);
    assert!(out.contains("features left out"), "{out}");
    let b = BundleStore::new(&models).load_current().expect("bundle");
    let names: Vec<&str> = b
        .manifest
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert!(names.contains(&"recency_days") && names.contains(&"monetary_total"));
    assert!(!names.contains(&"sessions") && !names.contains(&"watch_minutes"));
    assert!(b
        .manifest
        .features_left_out
        .iter()
        .any(|l| l.name == "sessions"));
}

#[test]
fn an_event_after_the_snapshot_cannot_change_that_snapshots_features() {
    let mut table = EventTable::default();
    let u = table.intern("alice");
    let e = |ts, kind, amount| Event {
        ts,
        kind,
        amount,
        watch_seconds: 30,
        room: 1,
        category: 2,
        order: 0,
        channel: 0,
    };
    for d in 0..20 {
        table.push(
            u,
            e(
                d * DAY,
                if d % 3 == 0 {
                    EventKind::Order
                } else {
                    EventKind::View
                },
                25.0,
            ),
        );
    }
    table.columns.watch_seconds = true;
    let t = 15 * DAY;
    let fs = FeatureSet::all();
    let before = build_aggregates(&table, &[t]).remove(0);
    let mut row_before = vec![0.0; fs.len()];
    fs.raw_into(&before[0], t, &mut row_before);
    // Events at the snapshot instant and after it, of every kind, with large values.
    for (i, kind) in EventKind::ALL.into_iter().enumerate() {
        table.push(u, e(t + i as i64 * 3600, kind, 9999.0));
    }
    let after = build_aggregates(&table, &[t]).remove(0);
    let mut row_after = vec![0.0; fs.len()];
    fs.raw_into(&after[0], t, &mut row_after);
    assert_eq!(row_before, row_after);
    assert_eq!(before[0], after[0]);
}

fn shuffled_copy(src: &Path, dst: &Path, seed: u64) {
    std::fs::create_dir_all(dst).expect("mkdir");
    let text = std::fs::read_to_string(src.join("events.csv")).expect("events");
    let mut lines: Vec<&str> = text.lines().collect();
    let header = lines.remove(0);
    // Deterministic Fisher-Yates with a small LCG: the test needs a seeded reshuffle only.
    let mut state = seed;
    for i in (1..lines.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lines.swap(i, (state >> 33) as usize % (i + 1));
    }
    std::fs::write(
        dst.join("events.csv"),
        format!("{header}\n{}\n", lines.join("\n")),
    )
    .expect("write");
    std::fs::copy(src.join("users.csv"), dst.join("users.csv")).expect("users");
}

#[test]
fn retraining_on_a_reshuffled_copy_keeps_tier_ids_for_the_same_users() {
    let dir = tmp();
    let data = dir.path().join("data");
    let shuffled = dir.path().join("shuffled");
    generate(&data, 2500, 5);
    shuffled_copy(&data, &shuffled, 99);
    let models = dir.path().join("models");
    train(&data, &models, &[]);
    let first = BundleStore::new(&models).load_current().expect("first");
    // Retrain into the same models directory: the new bundle is matched to the previous one.
    let out = train(&shuffled, &models, &[]);
    assert!(out.contains("tier changes vs"), "{out}");
    let second = BundleStore::new(&models).load_current().expect("second");
    assert_ne!(first.version(), second.version());
    assert_eq!(
        second.manifest.previous_version.as_deref(),
        Some(first.version())
    );
    let changes = second
        .manifest
        .metrics
        .tier_changes
        .expect("tier changes recorded");
    assert_eq!(changes.compared, 2500);
    assert!(
        changes.changed * 100 <= changes.compared,
        "{} of {} users changed tier",
        changes.changed,
        changes.compared
    );
    // And user by user, from the two scored snapshots.
    let (s1, s2) = (dir.path().join("s1.csv"), dir.path().join("s2.csv"));
    run(bin()
        .args(["score", "--models"])
        .arg(&models)
        .args(["--version", first.version()])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&s1));
    run(bin()
        .args(["score", "--models"])
        .arg(&models)
        .arg("--data")
        .arg(&shuffled)
        .arg("--out")
        .arg(&s2));
    let (a, b) = (read_scores(&s1), read_scores(&s2));
    let same = a
        .iter()
        .filter(|(id, rec)| b.get(*id).is_some_and(|r| r[1] == rec[1]))
        .count();
    assert!(
        same * 100 >= a.len() * 99,
        "{same} of {} users kept their tier id",
        a.len()
    );
}

fn trained_bundle(dir: &Path) -> (PathBuf, BundleStore) {
    let data = dir.join("data");
    let models = dir.join("models");
    generate(&data, 1500, 3);
    train(&data, &models, &["--k", "5"]);
    let store = BundleStore::new(&models);
    let v = store.current().expect("current").expect("some");
    (store.dir(&v), store)
}

#[test]
fn a_bundle_round_trips_with_identical_scores() {
    let dir = tmp();
    let (bdir, store) = trained_bundle(dir.path());
    let v = bdir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let a = store.load(&v).expect("load");
    let b = store.load(&v).expect("load again");
    assert_eq!(a.scorer, b.scorer);
    let snap = a.load_snapshot().expect("snapshot");
    assert_eq!(snap.as_of, a.manifest.as_of_ts);
    // The serialised scorer scores exactly like the one that was trained: compare with the
    // scored snapshot written at training time (scores.parquet) via `tiering score` on the data.
    let out = dir.path().join("again.csv");
    run(bin()
        .args(["score", "--models"])
        .arg(&store.root)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--out")
        .arg(&out));
    let rescored = read_scores(&out);
    for (id, agg) in snap.user_ids.iter().zip(&snap.aggregates).take(200) {
        let s = a.scorer.score(agg, snap.as_of);
        let rec = &rescored[id];
        assert_eq!(
            &rec[1],
            a.scorer.tiers.tiers[usize::from(s.tier)].id.as_str()
        );
        let p: f64 = rec[3].parse().expect("p");
        assert!(
            (p - s.churn_probability).abs() < 1e-6,
            "{id}: {p} vs {}",
            s.churn_probability
        );
    }
}

#[test]
fn a_corrupt_bundle_is_refused_with_a_clear_message() {
    let dir = tmp();
    let (bdir, store) = trained_bundle(dir.path());
    let v = bdir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();

    // A flipped byte in the model.
    let model = bdir.join(MODEL);
    let mut bytes = std::fs::read(&model).expect("model");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&model, &bytes).expect("write");
    let err = store.load(&v).expect_err("tampered model refused");
    assert!(matches!(err, BundleError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("model.json"), "{err}");
    bytes[mid] ^= 0x20;
    std::fs::write(&model, &bytes).expect("restore");
    store.load(&v).expect("restored bundle loads");

    // A truncated state file is refused when read, and promote refuses the bundle.
    let state = bdir.join(STATE);
    let full = std::fs::read(&state).expect("state");
    std::fs::write(&state, &full[..full.len() / 2]).expect("truncate");
    let b = store.load(&v).expect("manifest and model still load");
    assert!(matches!(
        b.load_snapshot(),
        Err(BundleError::Checksum { .. })
    ));
    assert!(store.promote(&v).is_err());
    std::fs::write(&state, &full).expect("restore");

    // A manifest from a future format version.
    let mpath = bdir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).expect("manifest");
    let bumped = text.replacen("\"format_version\": 5", "\"format_version\": 99", 1);
    std::fs::write(&mpath, &bumped).expect("write");
    use sha2::Digest;
    std::fs::write(
        bdir.join("manifest.sha256"),
        hex::encode(sha2::Sha256::digest(bumped.as_bytes())),
    )
    .expect("sum");
    let err = store.load(&v).expect_err("future format refused");
    assert!(
        matches!(err, BundleError::FormatVersion { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn models_promote_and_rollback_move_current() {
    let dir = tmp();
    let data = dir.path().join("data");
    let models = dir.path().join("models");
    generate(&data, 1200, 1);
    train(&data, &models, &["--k", "4"]);
    let store = BundleStore::new(&models);
    let v1 = store.current().expect("c").expect("v1");
    train(&data, &models, &["--k", "4", "--seed", "9"]);
    let v2 = store.current().expect("c").expect("v2");
    assert_ne!(v1, v2);
    store.rollback().expect("rollback");
    assert_eq!(store.current().expect("c").as_deref(), Some(v1.as_str()));
    store.promote(&v2).expect("promote");
    assert_eq!(store.current().expect("c").as_deref(), Some(v2.as_str()));
    assert_eq!(store.list().expect("list").len(), 2);
}

#[test]
fn too_short_a_history_is_refused_plainly() {
    let dir = tmp();
    let data = dir.path().join("data");
    run(bin()
        .args([
            "generate",
            "--users",
            "300",
            "--days",
            "20",
            "--seed",
            "1",
            "--end",
            "2026-06-30",
            "--out",
        ])
        .arg(&data));
    // Trains with `extra` arguments, expecting a failure; its stderr.
    let refused = |extra: &[&str]| {
        let out = bin()
            .arg("train")
            .args(extra)
            .arg("--data")
            .arg(&data)
            .arg("--models")
            .arg(dir.path().join("m"))
            .output()
            .expect("spawn");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&[]);
    assert!(
        err.contains("history too short for a 30-day horizon"),
        "{err}"
    );
    // An --as-of before the first event: said as such, not as a negative span of days (a bare
    // date means the end of that day).
    let err = refused(&["--as-of", "2020-01-01"]);
    assert!(
        err.contains("--as-of 2020-01-02T00:00:00Z is before the first event (2026-06-1"),
        "{err}"
    );
    assert!(!err.contains("spans -"), "{err}");
}

#[test]
fn small_data_trains_but_says_plainly_that_the_numbers_cannot_be_trusted() {
    let dir = tmp();
    let data = dir.path().join("data");
    generate(&data, 120, 2);
    let models = dir.path().join("models");
    let out = train(&data, &models, &["--k", "3"]);
    assert!(out.contains("WARNING"), "{out}");
    let b = BundleStore::new(&models).load_current().expect("bundle");
    assert!(!b.manifest.warnings.is_empty());
    let report = std::fs::read_to_string(b.dir.join("report.html")).expect("report");
    assert!(
        report.contains(&b.manifest.warnings[0].replace('<', "&lt;")),
        "warning shown in the report"
    );
}

#[test]
fn quickstart_generates_trains_and_is_idempotent() {
    let dir = tmp();
    let demo = dir.path().join("demo");
    let args = [
        "quickstart",
        "--users",
        "1500",
        "--days",
        "120",
        "--no-serve",
        "--dir",
    ];
    let out = run(bin().args(args).arg(&demo));
    assert!(out.contains("== training"), "{out}");
    let v1 = BundleStore::new(demo.join("models"))
        .current()
        .expect("current")
        .expect("trained");
    let out = run(bin().args(args).arg(&demo));
    assert!(out.contains("== reusing the current bundle"), "{out}");
    let v2 = BundleStore::new(demo.join("models"))
        .current()
        .expect("current")
        .expect("trained");
    assert_eq!(v1, v2, "a second run reuses the bundle");
}

/// A `--models` path that is a file is refused before the data is read (training at scale
/// takes minutes and would only fail when writing the bundle), naming the path.
#[test]
fn train_refuses_a_models_path_that_is_not_a_directory_before_reading() {
    let dir = tmp();
    let models = dir.path().join("models");
    std::fs::write(&models, "x").unwrap();
    let out = bin()
        .args(["train", "--data"])
        .arg(dir.path().join("no-such-events.csv"))
        .arg("--models")
        .arg(&models)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: not a directory", models.display())),
        "{err}"
    );
    assert!(
        !err.contains("no-such-events"),
        "refused before reading: {err}"
    );
    assert_eq!(std::fs::read_to_string(&models).unwrap(), "x");
}
