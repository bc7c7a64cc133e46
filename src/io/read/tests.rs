//! Reader internals: fingerprints, line numbers, capacity estimates, Parquet types. The
//! bad-input contract (one test per error) is in `tests/bad_input.rs`.

use super::*;
use crate::features::{hash_str, EventKind, Timestamp, DAY};
use arrow_array::builder::{Decimal128Builder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, StringViewArray, TimestampMillisecondArray, UInt16Array,
};
use parquet::arrow::ArrowWriter;
use std::sync::Arc;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch =
        RecordBatch::try_from_iter(columns.into_iter().map(|(n, a)| (n.to_string(), a))).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn read(path: &Path) -> Result<Dataset, ReadError> {
    read_dataset(path, &ReadOptions::default())
}

/// Reads with no earliest event time, for tests of how times around the epoch convert.
fn read_any_time(path: &Path) -> Result<Dataset, ReadError> {
    let opts = ReadOptions {
        earliest: Timestamp::MIN,
        ..ReadOptions::default()
    };
    read_dataset(path, &opts)
}

#[test]
fn fingerprint_is_the_sha256_of_the_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let events = "user_id,ts,kind,amount\nu1,2026-05-01,order,3\n";
    let users = "user_id,registered_at\nu1,2026-01-01\n";
    write(dir.path(), "events.csv", events);
    write(dir.path(), "users.csv", users);
    let d = read(dir.path()).unwrap();
    let expected = hex::encode(Sha256::digest(format!("{events}{users}").as_bytes()));
    assert_eq!(d.report.fingerprint, expected);
    assert_eq!(
        d.report.files,
        vec![dir.path().join("events.csv"), dir.path().join("users.csv")]
    );

    // The same bytes as Parquet hash the same way (the file's own bytes).
    let pq = dir.path().join("one.parquet");
    write_parquet(
        &pq,
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["u1"])) as ArrayRef,
            ),
            ("ts", Arc::new(StringArray::from(vec!["2026-05-01"]))),
            ("kind", Arc::new(StringArray::from(vec!["view"]))),
        ],
    );
    let d = read(&pq).unwrap();
    assert_eq!(
        d.report.fingerprint,
        hex::encode(Sha256::digest(std::fs::read(&pq).unwrap()))
    );
}

#[test]
fn line_numbers_count_physical_lines_across_quoted_newlines_and_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "e.csv",
        "user_id,ts,kind,category\nu1,2026-05-01,view,\"two\nlines\"\n\nu2,2026-05-01,nope,x\n",
    );
    let err = read(&p).unwrap_err().to_string();
    assert!(err.contains("e.csv:5:3 (column kind)"), "{err}");
}

#[test]
fn many_rows_of_interleaved_users_are_interned_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("user_id,ts,kind,amount,watch_seconds,room_id,category\n");
    let n = 10_000;
    for i in 0..n {
        let u = if i % 7 < 4 { i / 50 } else { i % 13 };
        text.push_str(&format!(
            "u{u},2026-05-01T00:00:{:02}Z,{},{}.5,{},room_{},cat\n",
            i % 60,
            if i % 3 == 0 { "order" } else { "view" },
            i % 100,
            i % 9,
            i % 4
        ));
    }
    let p = write(dir.path(), "e.csv", &text);
    let d = read(&p).unwrap();
    let t = &d.events;
    assert_eq!(t.len(), n);
    assert_eq!(d.report.rows, n as u64);
    assert!(t.ts.capacity() >= n);
    for i in 0..n {
        let u = if i % 7 < 4 { i / 50 } else { i % 13 };
        assert_eq!(t.user_ids[t.user[i] as usize], format!("u{u}"));
        assert_eq!(t.room[i], hash_str(&format!("room_{}", i % 4)));
        assert_eq!(t.watch_seconds[i], (i % 9) as u32);
    }
    assert_eq!(t.index.len(), t.n_users());
    assert_eq!(t.category[0], hash_str("cat"));
    assert!(
        t.columns.watch_seconds
            && t.columns.room_id
            && t.columns.category
            && !t.columns.users_table
    );
}

#[test]
fn bad_rows_add_no_user() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "e.csv",
        "user_id,ts,kind\nu1,2026-05-01,view\nghost,never,view\n",
    );
    let d = read_dataset(
        &p,
        &ReadOptions {
            max_bad_rows: 1,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(d.events.user_ids, vec!["u1".to_string()]);
    assert_eq!(d.report.bad_rows, 1);
}

#[test]
fn parquet_accepts_the_contracts_types() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("events.parquet");
    let mut kinds = StringDictionaryBuilder::<Int32Type>::new();
    for k in ["order", "view", "order"] {
        kinds.append_value(k);
    }
    let amount = Decimal128Builder::new()
        .with_precision_and_scale(10, 2)
        .unwrap();
    let mut amount = amount;
    amount.append_value(1250);
    amount.append_null();
    amount.append_value(5);
    write_parquet(
        &p,
        vec![
            (
                "USER_ID",
                Arc::new(LargeStringArray::from(vec!["a", "b", "a"])) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_500, -1, 86_400_000])
                        .with_timezone("+08:00"),
                ),
            ),
            ("kind", Arc::new(kinds.finish())),
            ("amount", Arc::new(amount.finish())),
            (
                "watch_seconds",
                Arc::new(UInt16Array::from(vec![None, Some(30), None])),
            ),
            (
                "room_id",
                Arc::new(StringViewArray::from(vec![Some("r1"), None, Some("")])),
            ),
            (
                "ignored",
                Arc::new(BooleanArray::from(vec![true, false, true])),
            ),
        ],
    );
    let d = read_any_time(&p).unwrap();
    let t = &d.events;
    assert_eq!(t.ts, vec![1, -1, DAY]);
    assert_eq!(
        t.kind,
        vec![EventKind::Order, EventKind::View, EventKind::Order]
    );
    assert_eq!(t.amount, vec![12.5, 0.0, 0.05]);
    assert_eq!(t.watch_seconds, vec![0, 30, 0]);
    assert_eq!(t.room, vec![hash_str("r1"), 0, 0]);
    assert_eq!(t.user, vec![0, 1, 0]);
    assert!(t.columns.watch_seconds && t.columns.room_id && !t.columns.category);

    let users = dir.path().join("users.parquet");
    write_parquet(
        &users,
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["b", "c"])) as ArrayRef,
            ),
            (
                "registered_at",
                Arc::new(Date32Array::from(vec![Some(2), None])),
            ),
            (
                "persona",
                Arc::new(StringArray::from(vec![Some("fan"), None])),
            ),
        ],
    );
    let d = read_any_time(dir.path()).unwrap();
    assert_eq!(d.events.user_ids, vec!["a", "b", "c"]);
    assert_eq!(d.events.registered_at, vec![None, Some(2 * DAY), None]);
    assert_eq!(
        d.report.personas,
        Some(vec![None, Some("fan".to_string()), None])
    );
    assert!(d.events.columns.users_table);
}

#[test]
fn parquet_row_errors_name_the_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("events.parquet");
    write_parquet(
        &p,
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(StringArray::from(vec!["2026-05-01", "2026-05-01"])),
            ),
            ("kind", Arc::new(StringArray::from(vec!["order", "order"]))),
            ("amount", Arc::new(Float32Array::from(vec![1.0, -2.0]))),
        ],
    );
    let err = read(&p).unwrap_err();
    assert!(matches!(err, ReadError::NegativeAmount { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("events.parquet:row 2:4 (column amount)") && msg.contains("\"-2\""),
        "{msg}"
    );
}

#[test]
fn parquet_wrong_types_name_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("events.parquet");
    write_parquet(
        &p,
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            ),
            ("ts", Arc::new(Float32Array::from(vec![1.0]))),
            ("kind", Arc::new(StringArray::from(vec!["order"]))),
        ],
    );
    let err = read(&p).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::WrongType {
                column: "ts",
                index: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("Float32"), "{err}");

    write_parquet(
        &p,
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            ),
            ("ts", Arc::new(StringArray::from(vec!["2026-05-01"]))),
            ("kind", Arc::new(StringArray::from(vec!["view"]))),
            ("watch_seconds", Arc::new(Float32Array::from(vec![1.5]))),
        ],
    );
    let err = read(&p).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::WrongType {
                column: "watch_seconds",
                ..
            }
        ),
        "{err}"
    );

    write_parquet(
        &p,
        vec![
            ("user_id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("ts", Arc::new(StringArray::from(vec!["2026-05-01"]))),
            ("kind", Arc::new(StringArray::from(vec!["view"]))),
        ],
    );
    let err = read(&p).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::WrongType {
                column: "user_id",
                ..
            }
        ),
        "{err}"
    );
}

fn platform_kinds(
    unknown: crate::features::UnknownKinds,
) -> Arc<crate::features::vocabulary::KindResolver> {
    let m = crate::features::KindMapping {
        kinds: [
            ("pay_success".to_string(), EventKind::Order),
            ("enter_room".to_string(), EventKind::View),
            ("return".to_string(), EventKind::Refund),
        ]
        .into(),
        ignore: vec!["add_to_cart".into()],
        unknown_kinds: unknown,
    };
    Arc::new(m.resolver().unwrap())
}

/// The unmapped-kind error names the kind, how many rows have it and the configuration keys
/// that would map, ignore or skip it; `--max-bad-rows` does not swallow it.
#[test]
fn an_unmapped_kind_names_kind_row_count_and_configuration_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "events.csv",
        "user_id,ts,kind,amount\nu1,2026-05-01,order,3\nu1,2026-05-02,thumbs_up,\n\
         u2,2026-05-02,Thumbs_Up ,\nu2,2026-05-03,enter_room,\nu2,2026-05-04,thumbs_up,\n",
    );
    let opts = ReadOptions {
        max_bad_rows: 100,
        ..ReadOptions::default()
    };
    let err = read_dataset(&p, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ReadError::UnknownKind { counts, .. } if counts.rows == 3),
        "{msg}"
    );
    for part in [
        "events.csv:3:3",
        "\"thumbs_up\" in 3 row(s)",
        "\"enter_room\" in 1 row(s)",
        "[events.kinds]",
        "thumbs_up = \"order\"",
        "events.ignore",
        "events.unknown_kinds = \"skip\"",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
}

/// A platform vocabulary read through a mapping gives the table the canonical names give, and
/// the report lists every source kind with its rows and fate; `skip` drops unmapped rows
/// without calling them bad.
#[test]
fn a_platform_vocabulary_through_a_mapping_reads_like_the_canonical_one() {
    use crate::features::vocabulary::KindFate;
    use crate::features::UnknownKinds;
    let dir = tempfile::tempdir().unwrap();
    let canonical = "user_id,ts,kind,amount,order_id\nu1,2026-05-01,order,30,o1\n\
                     u1,2026-05-02,view,,\nu1,2026-05-03,refund,30,o1\n";
    let platform = "user_id,ts,kind,amount,order_id\nu1,2026-05-01,PAY_SUCCESS,30,o1\n\
                    u1,2026-05-01,add_to_cart,,\nu1,2026-05-02,enter_room,,\n\
                    u1,2026-05-02,wink,,\nu1,2026-05-03,return,30,o1\n";
    let a = read(&write(dir.path(), "a.csv", canonical)).unwrap();
    let opts = ReadOptions {
        kinds: platform_kinds(UnknownKinds::Skip),
        ..ReadOptions::default()
    };
    let b = read_dataset(&write(dir.path(), "b.csv", platform), &opts).unwrap();
    let events = |d: &Dataset| {
        (0..d.events.len())
            .map(|i| d.events.event(i))
            .collect::<Vec<_>>()
    };
    assert_eq!(events(&a), events(&b));
    assert_eq!(b.events.order[0], hash_str("o1"));
    assert!(b.events.columns.order_id);
    assert_eq!((b.report.bad_rows, b.report.kind_rows_dropped), (0, 2));
    let fate = |s: &str| {
        b.report
            .kinds_seen
            .iter()
            .find(|k| k.source == s)
            .map(|k| (k.rows, k.became.clone()))
    };
    assert_eq!(
        fate("pay_success"),
        Some((1, KindFate::Kind(EventKind::Order)))
    );
    assert_eq!(fate("add_to_cart"), Some((1, KindFate::Ignored)));
    assert_eq!(fate("wink"), Some((1, KindFate::Skipped)));
    assert_eq!(fate("return"), Some((1, KindFate::Kind(EventKind::Refund))));
}

/// Parquet reads kinds with the mapping and `order_id` like CSV does.
#[test]
fn parquet_reads_a_platform_vocabulary_and_order_ids_like_csv() {
    use crate::features::UnknownKinds;
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("events.parquet");
    write_parquet(
        &pq,
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["u1", "u1", "u1"])) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(StringArray::from(vec![
                    "2026-05-01",
                    "2026-05-01",
                    "2026-05-03",
                ])),
            ),
            (
                "kind",
                Arc::new(StringArray::from(vec![
                    "Pay_Success",
                    "add_to_cart",
                    "return",
                ])),
            ),
            (
                "amount",
                Arc::new(Float32Array::from(vec![Some(30.0), None, Some(30.0)])),
            ),
            (
                "order_id",
                Arc::new(StringArray::from(vec![Some("o1"), None, Some(" o1 ")])),
            ),
        ],
    );
    let csv = write(
        dir.path(),
        "events.csv",
        "user_id,ts,kind,amount,order_id\nu1,2026-05-01,Pay_Success,30,o1\n\
         u1,2026-05-01,add_to_cart,,\nu1,2026-05-03,return,30, o1 \n",
    );
    let opts = ReadOptions {
        kinds: platform_kinds(UnknownKinds::Error),
        ..ReadOptions::default()
    };
    let a = read_dataset(&pq, &opts).unwrap();
    let b = read_dataset(&csv, &opts).unwrap();
    let events = |d: &Dataset| {
        (0..d.events.len())
            .map(|i| d.events.event(i))
            .collect::<Vec<_>>()
    };
    assert_eq!(events(&a), events(&b));
    assert_eq!(a.events.kind, vec![EventKind::Order, EventKind::Refund]);
    assert_eq!(a.events.order, vec![hash_str("o1"), hash_str("o1")]);
    assert_eq!(a.report.kinds_seen, b.report.kinds_seen);
    assert_eq!(a.report.kind_rows_dropped, 1);
}
