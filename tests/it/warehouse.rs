//! The warehouse path (issue 16): `tiering features` writes the aggregates table from events,
//! and `train --aggregates` on that table trains the same model as `train --data` on the
//! events; bad tables are refused naming the column and the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tiering::bundle::{BundleStore, Manifest};

use crate::helpers::{bin, run};

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn tiering");
    assert!(!out.status.success(), "command succeeded: {cmd:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

const AS_OF: &str = "2026-07-01T00:00:00Z";

fn generate(dir: &Path, users: u32, seed: u64) {
    run(bin()
        .args(["generate", "--users", &users.to_string(), "--days", "150"])
        .args(["--seed", &seed.to_string(), "--end", "2026-06-30"])
        .args(["--format", "parquet", "--out"])
        .arg(dir));
}

/// Generated events of `users` users in `dir/data`, their aggregates table
/// `dir/aggregates.parquet`, and a bundle trained from the table (`train ARGS --aggregates`) in
/// `dir/models`: the three paths.
fn trained_on_a_table(
    dir: &Path,
    users: u32,
    seed: u64,
    train_args: &[&str],
) -> (PathBuf, PathBuf, PathBuf) {
    let data = dir.join("data");
    generate(&data, users, seed);
    let table = dir.join("aggregates.parquet");
    features(&data, &table);
    let models = dir.join("models");
    run(bin()
        .arg("train")
        .args(train_args)
        .arg("--aggregates")
        .arg(&table)
        .arg("--models")
        .arg(&models));
    (data, table, models)
}

fn features(data: &Path, out: &Path) -> String {
    run(bin()
        .args(["features", "--as-of", AS_OF, "--data"])
        .arg(data)
        .arg("--out")
        .arg(out))
}

/// Each user's tier id in the current bundle's scored snapshot, and its manifest.
fn tiers_and_manifest(models: &Path) -> (HashMap<String, String>, Manifest) {
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let store = BundleStore::new(models);
    let bundle = store.load_current().expect("current bundle");
    let scores = store.dir(&bundle.manifest.version).join("scores.parquet");
    let file = std::fs::File::open(scores).expect("scores");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut tiers = HashMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column_by_name("user_id").unwrap().as_string::<i32>();
        let tier = batch.column_by_name("tier_id").unwrap().as_string::<i32>();
        for i in 0..batch.num_rows() {
            tiers.insert(ids.value(i).to_string(), tier.value(i).to_string());
        }
    }
    (tiers, bundle.manifest.clone())
}

#[test]
fn training_on_the_exported_aggregates_gives_the_same_tiers_and_evaluation_as_on_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 2500, 11);
    let table = dir.path().join("aggregates.parquet");
    let said = features(&data, &table);
    assert!(said.contains("x 3 snapshots"), "{said}");

    let (from_events, from_table) = (dir.path().join("a"), dir.path().join("b"));
    run(bin()
        .args(["train", "--as-of", AS_OF, "--seed", "5", "--data"])
        .arg(&data)
        .arg("--models")
        .arg(&from_events));
    run(bin()
        .args(["train", "--seed", "5", "--aggregates"])
        .arg(&table)
        .arg("--models")
        .arg(&from_table));
    let (tiers_a, ma) = tiers_and_manifest(&from_events);
    let (tiers_b, mb) = tiers_and_manifest(&from_table);
    assert_eq!(
        ma.as_of_ts, mb.as_of_ts,
        "the table's latest snapshot is --as-of"
    );
    assert_eq!(tiers_a.len(), 2500);
    assert_eq!(tiers_a, tiers_b, "same tier for every user");
    assert_eq!(ma.metrics.evaluation, mb.metrics.evaluation);
    assert_eq!(ma.metrics.models.len(), mb.metrics.models.len());
    for (a, b) in ma.metrics.models.iter().zip(&mb.metrics.models) {
        assert_eq!(a.name, b.name);
        let (x, y) = (a.metrics.roc_auc, b.metrics.roc_auc);
        assert!((x - y).abs() <= 1e-6, "{}: AUC {x} vs {y}", a.name);
    }
    assert_eq!(ma.metrics.chosen_model, mb.metrics.chosen_model);
}

#[test]
fn score_on_the_aggregates_table_writes_part_files_with_every_user() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let (_, table, models) = trained_on_a_table(dir.path(), 1500, 3, &[]);
    let out = dir.path().join("scored");
    let said = run(bin()
        .args(["score", "--rows-per-part", "400", "--aggregates"])
        .arg(&table)
        .arg("--models")
        .arg(&models)
        .arg("--out")
        .arg(&out));
    assert!(said.contains("scored 1500 users"), "{said}");
    let mut parts: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    assert_eq!(parts.len(), 4, "{parts:?}");
    let rows: i64 = parts
        .iter()
        .map(|p| {
            let r = SerializedFileReader::new(std::fs::File::open(p).unwrap()).unwrap();
            r.metadata().file_metadata().num_rows()
        })
        .collect::<Vec<_>>()
        .iter()
        .sum();
    assert_eq!(rows, 1500);
}

/// A table larger than `--fit-users`: the models are fitted on a keyed sample (the state seed
/// holds just it, the manifest says so), and the streaming pass scores every user of the table
/// into the bundle's scores exactly as `score --aggregates` does with that bundle.
#[test]
fn a_table_larger_than_the_fit_sample_is_fitted_on_the_sample_and_every_user_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 2500, 11);
    let table = dir.path().join("aggregates.parquet");
    features(&data, &table);
    let models = dir.path().join("models");
    run(bin()
        .args([
            "train",
            "--seed",
            "5",
            "--fit-users",
            "1200",
            "--aggregates",
        ])
        .arg(&table)
        .arg("--models")
        .arg(&models));
    let (tiers, manifest) = tiers_and_manifest(&models);
    assert_eq!(tiers.len(), 2500, "every user of the table is scored");
    assert!(
        manifest
            .warnings
            .iter()
            .any(|w| w.contains("keyed sample of 1200 of the table's 2500 users")),
        "{:?}",
        manifest.warnings
    );
    assert_eq!(manifest.data.users, 2500);
    let store = BundleStore::new(&models);
    let seed = store.load_current().unwrap().load_snapshot().unwrap();
    assert_eq!(
        seed.user_ids.len(),
        1200,
        "the state seed is the fit sample"
    );

    let out = dir.path().join("scored");
    run(bin()
        .args(["score", "--aggregates"])
        .arg(&table)
        .arg("--models")
        .arg(&models)
        .arg("--out")
        .arg(&out));
    let mut scored = HashMap::new();
    for part in std::fs::read_dir(&out).unwrap() {
        use arrow_array::cast::AsArray;
        let file = std::fs::File::open(part.unwrap().path()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("user_id").unwrap().as_string::<i32>();
            let tier = batch.column_by_name("tier_id").unwrap().as_string::<i32>();
            for i in 0..batch.num_rows() {
                scored.insert(ids.value(i).to_string(), tier.value(i).to_string());
            }
        }
    }
    assert_eq!(scored, tiers);

    let small = fails(
        bin()
            .args(["train", "--fit-users", "999", "--aggregates"])
            .arg(&table)
            .arg("--models")
            .arg(dir.path().join("m2")),
    );
    assert!(small.contains("--fit-users"), "{small}");
}

/// Rewrites the table at `from` to `to` with DuckDB-free means: the Arrow batches with one
/// column dropped or retyped.
fn rewrite(
    from: &Path,
    to: &Path,
    edit: impl Fn(
        arrow_schema::Schema,
        Vec<arrow_array::ArrayRef>,
    ) -> (arrow_schema::Schema, Vec<arrow_array::ArrayRef>),
) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use std::sync::Arc;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(from).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut writer = None;
    for batch in reader {
        let batch = batch.unwrap();
        let (schema, cols) = edit(batch.schema().as_ref().clone(), batch.columns().to_vec());
        let schema = Arc::new(schema);
        let w = writer.get_or_insert_with(|| {
            ArrowWriter::try_new(std::fs::File::create(to).unwrap(), schema.clone(), None).unwrap()
        });
        w.write(&arrow_array::RecordBatch::try_new(schema, cols).unwrap())
            .unwrap();
    }
    writer.unwrap().close().unwrap();
}

#[test]
fn a_missing_column_a_wrong_type_and_an_absent_snapshot_are_named_with_the_column_and_the_file() {
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 600, 9);
    let table = dir.path().join("aggregates.parquet");
    features(&data, &table);
    let models = dir.path().join("models");
    let train = |t: &Path| {
        fails(
            bin()
                .args(["train", "--aggregates"])
                .arg(t)
                .arg("--models")
                .arg(&models),
        )
    };

    let missing = dir.path().join("missing.parquet");
    rewrite(&table, &missing, |s, mut cols| {
        let i = s.index_of("orders").unwrap();
        cols.remove(i);
        let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.remove(i);
        (Schema::new(fields), cols)
    });
    let e = train(&missing);
    assert!(e.contains("missing column \"orders\""), "{e}");
    assert!(e.contains("missing.parquet"), "{e}");

    let retyped = dir.path().join("retyped.parquet");
    rewrite(&table, &retyped, |s, mut cols| {
        let i = s.index_of("spend").unwrap();
        let text: arrow_array::StringArray = (0..cols[i].len()).map(|_| Some("1.0")).collect();
        cols[i] = Arc::new(text);
        let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[i] = Field::new("spend", DataType::Utf8, false);
        (Schema::new(fields), cols)
    });
    let e = train(&retyped);
    assert!(
        e.contains("column \"spend\" has type Utf8, expected Float64"),
        "{e}"
    );
    assert!(e.contains("retyped.parquet"), "{e}");

    // --as-of one day later: its snapshots are not in the table.
    let e = fails(
        bin()
            .args(["train", "--as-of", "2026-07-02T00:00:00Z", "--aggregates"])
            .arg(&table)
            .arg("--models")
            .arg(&models),
    );
    assert!(
        e.contains("snapshot 2026-05-03T00:00:00Z (column \"snapshot\") is not in the table"),
        "{e}"
    );
    assert!(e.contains("aggregates.parquet"), "{e}");
}

/// Every row of the Parquet score files at `path` (a file or a directory of part files), keyed
/// by user id: each column's value as text (floats by their exact representation).
fn score_rows(path: &Path) -> HashMap<String, Vec<String>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    use arrow_schema::DataType;
    let files: Vec<_> = if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut rows = HashMap::new();
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("user_id").unwrap().as_string::<i32>();
            for i in 0..batch.num_rows() {
                let row = batch
                    .columns()
                    .iter()
                    .map(|c| match c.data_type() {
                        DataType::Float64 => {
                            format!("{:?}", c.as_primitive::<Float64Type>().value(i))
                        }
                        _ => c.as_string::<i32>().value(i).to_string(),
                    })
                    .collect();
                assert!(rows.insert(ids.value(i).to_string(), row).is_none());
            }
        }
    }
    rows
}

/// The `interests` column of the score files (`io::write::ScoreWriter`'s schema).
const INTERESTS: usize = 13;
/// The `rooms` column (the last): from a table (schema version 3), the rooms' hashes.
const ROOMS: usize = 15;

/// The streaming scorer of `score --aggregates` (a reader thread decoding only the score
/// time's rows, the scoring overlapped with it) writes, column for column, the rows the
/// in-memory scorer of `score --data` writes for the same events, also when the table's rows
/// are shuffled over several part files.
#[test]
fn streamed_scores_of_a_table_equal_the_scores_of_its_events_whatever_the_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let (data, table, models) = trained_on_a_table(dir.path(), 2000, 21, &["--seed", "5"]);
    // The table's rows reversed and dealt over three part files.
    let shuffled = dir.path().join("shuffled");
    std::fs::create_dir(&shuffled).unwrap();
    let mut rows = Vec::new();
    tiering::io::aggregates::for_each_batch::<tiering::io::aggregates::AggregatesError>(
        &table,
        |batch| {
            rows.extend(batch);
            Ok(())
        },
    )
    .unwrap();
    rows.reverse();
    let mut parts: Vec<_> = (0..3)
        .map(|p| {
            tiering::io::aggregates::AggregatesWriter::create(
                &shuffled.join(format!("part-{p}.parquet")),
            )
            .unwrap()
        })
        .collect();
    for (i, r) in rows.iter().enumerate() {
        parts[i % 3].write(r).unwrap();
    }
    for p in parts {
        p.finish().unwrap();
    }
    let in_memory = dir.path().join("events.parquet");
    run(bin()
        .args(["score", "--as-of", AS_OF, "--data"])
        .arg(&data)
        .arg("--models")
        .arg(&models)
        .arg("--out")
        .arg(&in_memory));
    let want = score_rows(&in_memory);
    assert_eq!(want.len(), 2000);
    for (name, input) in [("table", &table), ("shuffled", &shuffled)] {
        let out = dir.path().join(format!("scored-{name}"));
        run(bin()
            .args([
                "score",
                "--rows-per-part",
                "700",
                "--as-of",
                AS_OF,
                "--aggregates",
            ])
            .arg(input)
            .arg("--models")
            .arg(&models)
            .arg("--out")
            .arg(&out));
        let got = score_rows(&out);
        assert_eq!(got.len(), want.len(), "{name}");
        let mut rooms_seen = 0;
        for (id, row) in &want {
            let mut got = got
                .get(id)
                .unwrap_or_else(|| panic!("{name}: user {id} missing"))
                .clone();
            // The table holds category hashes, not names (sql/README.md, "The table"): the
            // interests column lists the same categories, as hashes.
            assert_eq!(
                got[INTERESTS].split("; ").count(),
                row[INTERESTS].split("; ").count(),
                "{name}: user {id}"
            );
            got[INTERESTS].clone_from(&row[INTERESTS]);
            // The table holds room hashes, not ids (schema version 3, sql/README.md): the
            // rooms column lists as many rooms, as hashes; everything else is equal (the CLV
            // too: the table holds the first order day's spend).
            assert_eq!(
                got[ROOMS].split("; ").count(),
                row[ROOMS].split("; ").count(),
                "{name}: user {id}"
            );
            if !row[ROOMS].is_empty() {
                rooms_seen += 1;
                assert!(!got[ROOMS].is_empty(), "{name}: user {id}");
            }
            got[ROOMS].clone_from(&row[ROOMS]);
            assert_eq!(&got, row, "{name}: user {id}");
        }
        assert!(rooms_seen > 100, "{name}: {rooms_seen} users with rooms");
    }
}
