//! Event vocabularies and refunds end to end: the same events written with the canonical kind
//! names and with a platform's names (plus the `[events]` mapping) train to identical models and
//! per-user scores; refunds change the model's inputs without costing churn AUC; and the
//! server, given the same events through `RecordEvents`, builds the aggregate training builds.

use std::path::Path;
use tiering::bundle::BundleStore;
use tiering::features::{format_rfc3339, DAY};

use crate::helpers::{bin, run};

/// `tiering generate` (2,000 users, 150 days, seed 11) into `dir` with `extra` flags.
fn generate(dir: &Path, extra: &[&str]) {
    run(bin()
        .args([
            "generate",
            "--users",
            "2000",
            "--days",
            "150",
            "--seed",
            "11",
            "--end",
            "2026-06-30",
        ])
        .args(extra)
        .arg("--out")
        .arg(dir));
}

fn train_and_score(data: &Path, models: &Path, config: Option<&Path>) -> (String, String) {
    let mut cmd = bin();
    cmd.args(["train", "--k", "5", "--data"])
        .arg(data)
        .arg("--models")
        .arg(models);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = run(&mut cmd);
    let scores = models.join("scores.csv");
    run(bin()
        .args(["score", "--models"])
        .arg(models)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&scores));
    (out, std::fs::read_to_string(scores).expect("scores"))
}

#[test]
fn a_platform_vocabulary_with_its_mapping_trains_the_model_the_canonical_names_train() {
    let dir = tempfile::tempdir().expect("tmp");
    // The same seed three ways: without refunds, with refunds (the default) in the canonical
    // names, and with refunds in the platform's names plus the train.toml the generator writes.
    let generated = dir.path().join("generated");
    let canonical = dir.path().join("canonical");
    let platform = dir.path().join("platform");
    generate(&generated, &["--no-refunds"]);
    generate(&canonical, &[]);
    generate(&platform, &["--vocabulary", "platform"]);
    let config = platform.join("train.toml");
    let events = std::fs::read_to_string(platform.join("events.csv")).expect("events");
    assert!(events.contains(",pay_success,") && events.contains(",enter_room,"));
    assert!(!events.contains(",order,") && !events.contains(",view,"));

    // Without the mapping the platform file stops at its first unmapped kind, with a count.
    let failed = bin()
        .args(["train", "--data"])
        .arg(&platform)
        .arg("--models")
        .arg(dir.path().join("m-none"))
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        err.contains("unknown event kind") && err.contains("[events.kinds]"),
        "{err}"
    );

    let (m_gen, m_can, m_pla) = (
        dir.path().join("m-gen"),
        dir.path().join("m-can"),
        dir.path().join("m-pla"),
    );
    let (_, _) = train_and_score(&generated, &m_gen, None);
    let (_, s_can) = train_and_score(&canonical, &m_can, None);
    let (_, s_pla) = train_and_score(&platform, &m_pla, Some(&config));
    assert_eq!(s_can, s_pla, "per-user scores differ");

    let load = |m: &Path| BundleStore::new(m).load_current().expect("bundle").manifest;
    let (gen, can, pla) = (load(&m_gen), load(&m_can), load(&m_pla));
    assert_eq!(can.features, pla.features);
    assert_eq!(
        serde_json::to_value(&can.metrics.models)
            .expect("json")
            .as_array()
            .map(|a| a.iter().map(|m| m["metrics"].clone()).collect::<Vec<_>>()),
        serde_json::to_value(&pla.metrics.models)
            .expect("json")
            .as_array()
            .map(|a| a.iter().map(|m| m["metrics"].clone()).collect::<Vec<_>>()),
    );
    // The bundle records the mapping and what each source kind became.
    assert_eq!(pla.kinds.kinds.len(), 8);
    let seen = |s: &str| {
        pla.data
            .kinds_seen
            .iter()
            .find(|k| k.source == s)
            .map(|k| k.rows)
    };
    assert!(seen("pay_success").is_some_and(|n| n > 1000));
    assert!(seen("refund").is_some_and(|n| n > 100));
    assert_eq!(pla.data.kind_rows_dropped, 0);
    // The generator's late refunds (past the 90-day link window) reach the bundle as orphans.
    assert!(pla.data.orphan_refunds > 0, "{}", pla.data.orphan_refunds);
    assert_eq!(pla.data.orphan_refunds, can.data.orphan_refunds);
    assert_eq!(gen.data.orphan_refunds, 0);

    // The refund features are candidates; churn AUC does not drop against the refund-free
    // data (same users, same behaviour otherwise).
    let names: Vec<&str> = can.features.iter().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&"refund_share") && names.contains(&"orders_refunded"),
        "{names:?}"
    );
    let auc = |m: &tiering::bundle::Manifest| {
        m.metrics
            .models
            .iter()
            .find(|x| x.name == m.metrics.chosen_model)
            .map(|x| x.metrics.roc_auc)
            .expect("chosen model")
    };
    eprintln!(
        "churn AUC: without refunds {:.4}, with refunds {:.4}",
        auc(&gen),
        auc(&can)
    );
    assert!(
        auc(&can) >= auc(&gen) - 0.01,
        "{} vs {}",
        auc(&can),
        auc(&gen)
    );
    let report = std::fs::read_to_string(
        BundleStore::new(&m_can)
            .load_current()
            .expect("bundle")
            .dir
            .join("report.html"),
    )
    .expect("report");
    assert!(
        report.contains("refund_share"),
        "the report shows the refund features"
    );
}

/// Training and serving agree on refunds and a platform vocabulary: the same events through a
/// file (read with the bundle's mapping, swept as training does) and through `RecordEvents`
/// (and `ScoreUser`) give the same answer for the same user, and the refund moves the user's
/// RFM segment the way net spend says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_refunds_through_a_file_and_through_record_events_give_the_same_answer() {
    use super::helpers::{manifest, scorer, snapshot, Dirs, TestServer, NOW};
    use std::sync::Arc;
    use tiering::features::{build_aggregates, EventKind, KindMapping};
    use tiering::io::read::{read_dataset, ReadOptions};
    use tiering::pb as proto;

    let mapping = KindMapping {
        kinds: [
            ("pay_success".to_string(), EventKind::Order),
            ("return".to_string(), EventKind::Refund),
        ]
        .into(),
        ignore: vec!["add_to_cart".into()],
        ..KindMapping::default()
    };
    // (seconds before NOW, kind, amount, order id)
    let events: [(i64, &str, f64, &str); 5] = [
        (5 * DAY, "PAY_SUCCESS", 40.0, "A"),
        (2 * DAY, "pay_success", 40.0, "B"),
        (2 * DAY - 60, "add_to_cart", 0.0, ""),
        (DAY, "return", 40.0, "A"),
        (DAY - 60, " Return", 5.0, "Z"),
    ];

    // Training's path: a file read with the mapping, aggregated strictly before NOW.
    let dir = tempfile::tempdir().expect("tmp");
    let mut text = String::from("user_id,ts,kind,amount,order_id\n");
    for (ago, kind, amount, id) in events {
        text.push_str(&format!(
            "shopper,{},{kind},{amount},{id}\n",
            format_rfc3339(NOW - ago)
        ));
    }
    let file = dir.path().join("events.csv");
    std::fs::write(&file, text).expect("write");
    let opts = ReadOptions {
        kinds: Arc::new(mapping.resolver().expect("mapping")),
        ..ReadOptions::default()
    };
    let data = read_dataset(&file, &opts).expect("read");
    let aggs = build_aggregates(&data.events, &[NOW]);
    let agg = aggs[0][0];
    assert_eq!(
        (
            agg.orders,
            agg.refunds,
            agg.orders_refunded,
            agg.orphan_refunds
        ),
        (2, 2, 1, 1)
    );
    assert!((agg.net_spend() - 35.0).abs() < 1e-9);
    let s = scorer(1.0);
    let trained = s.score(&agg, NOW);

    // Serving's path: a bundle carrying the mapping, the events through RecordEvents.
    let dirs = Dirs::new();
    let store = BundleStore::new(dirs.models());
    let mut m = manifest("v1", &s);
    m.kinds = mapping.clone();
    store
        .begin("v1")
        .expect("begin")
        .commit(m, &s, &snapshot())
        .expect("commit");
    store.promote("v1").expect("promote");
    let server = TestServer::start(dirs.config()).await;
    server.ready().await;
    let mut client = server.client().await;
    let proto_events: Vec<proto::Event> = events
        .iter()
        .map(|&(ago, kind, amount, id)| proto::Event {
            user_id: "shopper".into(),
            ts: Some(prost_types::Timestamp {
                seconds: NOW - ago,
                nanos: 0,
            }),
            kind: kind.into(),
            amount,
            order_id: id.into(),
            ..Default::default()
        })
        .collect();
    let r = client
        .record_events(proto::RecordEventsRequest {
            events: proto_events.clone(),
        })
        .await
        .expect("record")
        .into_inner();
    assert_eq!(r.accepted, 4, "the ignored add_to_cart is not applied");
    let served = client
        .get_user_tier(proto::GetUserTierRequest {
            user_id: "shopper".into(),
        })
        .await
        .expect("tier")
        .into_inner();
    let scored = client
        .score_user(proto::ScoreUserRequest {
            user_id: "shopper".into(),
            events: proto_events,
            registered_at: None,
        })
        .await
        .expect("score")
        .into_inner();
    server.stop().await.expect("stop");

    for answer in [&served, &scored] {
        assert_eq!(answer.churn_probability, trained.churn_probability);
        assert_eq!(answer.rfm_segment, trained.rfm_segment.id());
        assert_eq!(answer.lifecycle_stage, trained.lifecycle_stage.id());
        assert_eq!(answer.tier_id, s.tiers.tiers[usize::from(trained.tier)].id);
    }
    // Net spend 35 is under the fixture's monetary threshold (50); gross 80 was over it.
    assert_eq!(served.rfm_segment, "general_value");
}

/// A bundle an earlier binary wrote (format 1: aggregates in the layout before refunds) still
/// loads, with the same aggregates: a rolling deploy can start new servers on old bundles.
#[test]
fn a_format_1_bundle_of_an_earlier_binary_still_loads_its_state() {
    use super::helpers::{publish, snapshot};
    use tiering::features::UserAggregateV1;

    let dir = tempfile::tempdir().expect("tmp");
    publish(dir.path(), "v1", 1.0);
    let snap = snapshot();
    let old = super::helpers::earlier_state_bin(
        &snap,
        snap.aggregates.iter().map(UserAggregateV1::of).collect(),
    );
    let was = super::helpers::rewrite_as_format(&dir.path().join("v1"), 1, &old, |m| {
        if let Some(m) = m.as_object_mut() {
            m.remove("kinds");
        }
    });
    assert_eq!(was, 5);
    let bundle = BundleStore::new(dir.path())
        .load("v1")
        .expect("format 1 loads");
    assert_eq!(bundle.manifest.format_version, 1);
    assert!(bundle.manifest.kinds.is_canonical_only());
    let back = bundle.load_snapshot().expect("state loads");
    // Format 1 holds no interests and no channel mix (issue 14): they start empty.
    let mut want = snap.clone();
    for a in &mut want.aggregates {
        a.interests = Default::default();
        a.channels = Default::default();
        a.rooms = Default::default();
        // Nor the first order day (format 5): unknown for a buyer.
        if a.orders > 0 {
            a.first_order_day = tiering::features::UserAggregate::UNKNOWN_DAY;
            a.first_day_cents = 0;
        }
    }
    assert_eq!(back, want);
}
