//! Criterion benchmarks of the pure hot paths, on a generated platform (20,000 users,
//! ~1M events). Full-scale figures (1M users / ~50M events, peak memory) come from
//! `bench/scale.sh`, see BENCHMARKS.md.
//!
//! Run: `cargo bench --bench core`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tiering::bundle::manifest::DataInfo;
use tiering::features::{build_aggregates, FeatureSet, DAY};
use tiering::generate::{generate_table, GenerateParams};
use tiering::model::churn::{BoostingParams, Forest, LinearModel};
use tiering::model::tiers::{self, TierParams};
use tiering::model::Score;
use tiering::train::{self, TrainConfig, TrainInput};

fn benches(c: &mut Criterion) {
    let end = 1_780_000_000 - 1_780_000_000 % DAY;
    let params = GenerateParams::new(end)
        .users(20_000)
        .days(180)
        .seed(42)
        .check()
        .expect("params");
    let (table, _) = generate_table(&params);
    let as_of = end;

    let mut g = c.benchmark_group("features");
    g.sample_size(10);
    g.throughput(Throughput::Elements(table.len() as u64));
    g.bench_function("build_aggregates_1_snapshot", |b| {
        b.iter(|| black_box(build_aggregates(&table, &[as_of])))
    });
    g.finish();

    let aggs = build_aggregates(&table, &[as_of]).remove(0);
    let fs = FeatureSet::all();
    let d = fs.len();
    let mut x = vec![0.0; aggs.len() * d];
    for (row, a) in x.chunks_exact_mut(d).zip(&aggs) {
        fs.transformed_into(a, as_of, row);
    }
    let scaler = tiering::features::StandardScaler::fit(&x, d);
    scaler.transform_rows(&mut x);
    let y: Vec<bool> = aggs
        .iter()
        .map(|a| a.last_order < as_of - 30 * DAY)
        .collect();
    let keys: Vec<u64> = (0..aggs.len() as u64).collect();

    let mut g = c.benchmark_group("fit");
    g.sample_size(10);
    g.throughput(Throughput::Elements(aggs.len() as u64));
    g.bench_function("kmeans_k6_20k", |b| {
        b.iter(|| {
            tiers::fit(
                &x,
                d,
                &keys,
                &fs.features,
                TierParams {
                    k: Some(6),
                    n_runs: 1,
                    ..Default::default()
                }
                .check()
                .expect("valid tier params"),
                42,
                None,
            )
            .expect("fit")
        })
    });
    g.bench_function("logistic_20k", |b| {
        b.iter(|| LinearModel::fit(&x, d, &y, 1e-4).expect("fit"))
    });
    let boosting = BoostingParams::default()
        .check()
        .expect("valid boosting params");
    g.bench_function("boosting_100_trees_20k", |b| {
        b.iter(|| Forest::fit(&x, d, &y, boosting, 1).expect("fit"))
    });
    g.finish();

    let cfg = TrainConfig::default().check().expect("valid config");
    let trained = train::fit(
        TrainInput {
            table: &table,
            personas: None,
            data: DataInfo::default(),
            as_of: None,
            config: &cfg,
            previous: None,
            keep_eval_sets: false,
            version: "bench".into(),
            created_at: 0,
        },
        &mut |_| {},
    )
    .expect("train");
    let scorer = &trained.scorer;
    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("one_user", scorer.churn.name()), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % aggs.len();
            black_box(scorer.score(&aggs[i], as_of))
        })
    });
    g.throughput(Throughput::Elements(aggs.len() as u64));
    g.sample_size(20);
    let mut out = vec![Score::default(); aggs.len()];
    g.bench_function(BenchmarkId::new("batch_20k", scorer.churn.name()), |b| {
        b.iter(|| scorer.score_batch(&aggs, as_of, &mut out))
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
