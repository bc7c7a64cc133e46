//! The models side of the HTTP API: a bundle's report (`GET /v1/models/{version}/report`: role,
//! version validation, checksum, Content-Security-Policy) and the per-tier churn and value
//! figures GetModelInfo gives the console's overview.

use super::http_api::{canonical, get, keys_file, start};
use crate::helpers::{bin, manifest, publish, run, scorer, snapshot, Dirs};
use arrow_array::{Array, Float64Array, StringArray};
use std::collections::BTreeMap;
use std::path::Path;
use tiering::bundle::{BundleStore, REPORT};
use tiering::pb as proto;
use tiering::serve::auth::Role;
use tiering::serve::ServeConfig;

const REPORT_HTML: &str =
    "<!doctype html><html><head><style>h1{color:teal}</style></head><body><h1>report of v1</h1></body></html>";

/// Bundle `version` with a report, made current.
fn publish_with_report(models: &Path, version: &str, html: &str) {
    let store = BundleStore::new(models);
    let s = scorer(1.0);
    let pending = store.begin(version).unwrap();
    std::fs::write(pending.path(REPORT), html).unwrap();
    pending
        .commit(manifest(version, &s), &s, &snapshot())
        .unwrap();
    store.promote(version).unwrap();
}

#[tokio::test]
async fn a_bundle_report_is_served_to_an_admin_under_a_strict_csp_and_no_version_escapes_the_models_directory(
) {
    let dirs = Dirs::new();
    publish_with_report(&dirs.models(), "v1", REPORT_HTML);
    // What a path traversal would reach: a bundle-looking directory beside the models one.
    publish_with_report(&dirs.root.path().join("elsewhere"), "secret", "TOPSECRET");
    let keys = dirs.root.path().join("keys.toml");
    let t = keys_file(
        &keys,
        &[("reader", &[Role::Reader]), ("admin", &[Role::Admin])],
    );
    let (server, http) = start(ServeConfig {
        keys_file: Some(keys),
        ..dirs.config()
    })
    .await;
    let (reader, admin) = (t[0].as_str(), t[1].as_str());

    assert_eq!(get(http, "/v1/models/v1/report", None).await.status, 401);
    let r = get(http, "/v1/models/v1/report", Some(reader)).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "the role of ListModels"
    );
    let r = get(http, "/v1/models/v1/report", Some(admin)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), REPORT_HTML);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "sandbox",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        !csp.contains("script-src"),
        "no script source at all: {csp}"
    );
    assert_eq!(r.headers["x-content-type-options"], "nosniff");

    for bad in [
        "..",
        "%2E%2E",
        "..%2Felsewhere%2Fsecret",
        "..%2F..%2Felsewhere%2Fsecret",
        "%2Fetc%2Fpasswd",
        ".hidden",
        "v1%00",
        "v1%2F..%2F..%2Felsewhere%2Fsecret",
    ] {
        let r = get(http, &format!("/v1/models/{bad}/report"), Some(admin)).await;
        assert_eq!(
            (r.status, r.json()["status"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{bad}: {}",
            r.text()
        );
        assert!(!r.text().contains("TOPSECRET"));
    }
    // Paths the router does not take as one version: never a report.
    for path in [
        "/v1/models//etc/passwd/report",
        "/v1/models/../../elsewhere/secret/report",
        "/v1/models/v1/../../../elsewhere/secret/report",
    ] {
        let r = get(http, path, Some(admin)).await;
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(!r.text().contains("TOPSECRET"), "{path}");
    }
    let r = get(http, "/v1/models/v9/report", Some(admin)).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    // A report changed after the bundle was sealed is refused, not served.
    std::fs::write(dirs.models().join("v1").join(REPORT), "<h1>forged</h1>").unwrap();
    let r = get(http, "/v1/models/v1/report", Some(admin)).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (400, Some("FAILED_PRECONDITION")),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("forged"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_bundle_without_value_figures_gives_tiers_their_churn_and_no_value() {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let (server, http) = start(dirs.config()).await;
    let r = get(http, "/v1/model", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let tiers = doc["tiers"].as_array().unwrap();
    assert!(!tiers.is_empty());
    for t in tiers {
        assert_eq!(t["meanChurnProbability"], 0.5, "{t}");
        assert!(t.get("meanClv").is_none(), "unknown value is left out: {t}");
        assert!(t.get("valueAtRisk").is_none(), "{t}");
    }
    server.stop().await.unwrap();
}

/// Tier id → (users, mean CLV, value at risk) of a bundle's scores.parquet, read here.
fn tier_sums(scores: &Path) -> BTreeMap<String, (u64, f64, f64)> {
    let file = std::fs::File::open(scores).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut sums: BTreeMap<String, (u64, f64, f64)> = BTreeMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |n: &str| batch.column_by_name(n).unwrap().clone();
        let (tier, clv, var) = (col("tier_id"), col("clv"), col("value_at_risk"));
        let tier = tier.as_any().downcast_ref::<StringArray>().unwrap();
        let clv = clv.as_any().downcast_ref::<Float64Array>().unwrap();
        let var = var.as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..batch.num_rows() {
            let e = sums.entry(tier.value(i).to_string()).or_default();
            e.0 += 1;
            e.1 += clv.value(i);
            e.2 += var.value(i);
        }
    }
    for e in sums.values_mut() {
        e.1 /= e.0 as f64;
    }
    sums
}

#[tokio::test]
async fn model_info_gives_each_tier_its_churn_and_the_value_of_the_scored_snapshot() {
    let dirs = Dirs::new();
    let data = dirs.root.path().join("data");
    let models = dirs.models();
    run(bin()
        .args([
            "generate", "--users", "1500", "--days", "150", "--seed", "3",
        ])
        .args(["--end", "2026-06-30", "--out"])
        .arg(&data));
    run(bin()
        .args(["train", "--data"])
        .arg(&data)
        .arg("--models")
        .arg(&models));
    let store = BundleStore::new(&models);
    let version = store.current().unwrap().unwrap();
    let want = tier_sums(&store.dir(&version).join("scores.parquet"));
    let (server, http) = start(ServeConfig {
        models: models.clone(),
        ..dirs.config()
    })
    .await;
    let doc = get(http, "/v1/model", None).await.json();
    let grpc = server
        .client()
        .await
        .get_model_info(proto::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(doc, canonical("ModelInfo", &grpc), "HTTP equals gRPC");
    let manifest = store.load(&version).unwrap().manifest;
    let mut value_seen = false;
    for (t, m) in grpc.tiers.iter().zip(&manifest.tiers) {
        assert_eq!(t.id, m.id);
        assert_eq!(t.mean_churn_probability, m.mean_churn_probability);
        let (users, clv, var) = want[&t.id];
        assert_eq!(users, t.users, "{}", t.id);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(t.mean_clv.unwrap(), clv),
            "{}: {:?} vs {clv}",
            t.id,
            t.mean_clv
        );
        assert!(
            close(t.value_at_risk.unwrap(), var),
            "{}: {:?} vs {var}",
            t.id,
            t.value_at_risk
        );
        value_seen |= var > 0.0;
    }
    assert!(value_seen, "some tier has value at risk");
    server.stop().await.unwrap();
}
