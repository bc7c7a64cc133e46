//! The input contract, from the outside: every kind of bad input is refused with an error that
//! names the file, the line and the column; good inputs in either format read the same.

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampSecondArray,
};
use parquet::arrow::ArrowWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tiering::features::{hash_str, ColumnsPresent, EventKind, EventTable};
use tiering::io::read::{read_dataset, Dataset, ReadError, ReadOptions};

const HEADER: &str = "user_id,ts,kind,amount,watch_seconds,room_id,category";

/// A temporary directory with `events.csv` holding `text`.
fn events_csv(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.csv");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn read(path: &Path) -> Result<Dataset, ReadError> {
    read_dataset(path, &ReadOptions::default())
}

/// Reads `text` as an events file and returns the error message, checking that it names the
/// file, the line, and the column (by position and name).
fn error_at(text: &str, line: u64, col: usize, column: &str) -> (ReadError, String) {
    let (_dir, path) = events_csv(text);
    let err = read(&path)
        .err()
        .unwrap_or_else(|| panic!("{text:?} should not read"));
    let msg = err.to_string();
    let place = format!("events.csv:{line}:{col} (column {column})");
    assert!(msg.contains(&place), "{msg:?} should contain {place:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "{msg:?} names the full path"
    );
    (err, msg)
}

fn rows(rows: &[&str]) -> String {
    let mut s = format!("{HEADER}\n");
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    s
}

#[test]
fn unparseable_time_names_file_line_and_column() {
    let text = rows(&[
        "u1,2026-05-01T10:00:00Z,view,,30,r1,c1",
        "u1,2026-13-01,view,,30,r1,c1",
    ]);
    let (err, msg) = error_at(&text, 3, 2, "ts");
    assert!(matches!(err, ReadError::BadTimestamp { .. }));
    assert!(
        msg.contains("\"2026-13-01\"") && msg.contains("RFC 3339 or YYYY-MM-DD"),
        "{msg}"
    );
}

#[test]
fn negative_amount_names_file_line_and_column() {
    let (err, msg) = error_at(&rows(&["u1,2026-05-01,order,-5.00,,,"]), 2, 4, "amount");
    assert!(matches!(err, ReadError::NegativeAmount { .. }));
    assert!(msg.contains("\"-5.00\""), "{msg}");
}

#[test]
fn missing_amount_on_an_order_names_file_line_and_column() {
    let (err, _) = error_at(
        &rows(&["u1,2026-05-01,view,,,,", "u1,2026-05-01,order,,,,"]),
        3,
        4,
        "amount",
    );
    assert!(matches!(err, ReadError::MissingAmount { .. }));
}

#[test]
fn missing_amount_column_with_an_order_names_file_line_and_column() {
    let (_dir, path) = events_csv("user_id,ts,kind\nu1,2026-05-01,view\nu1,2026-05-01,order\n");
    let err = read(&path).unwrap_err();
    assert!(matches!(err, ReadError::MissingAmount { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("events.csv:3") && msg.contains("column amount"),
        "{msg}"
    );
}

#[test]
fn nan_or_infinite_amount_names_file_line_and_column() {
    for bad in ["NaN", "inf", "-Infinity", "1e999"] {
        let (err, msg) = error_at(
            &rows(&[&format!("u1,2026-05-01,order,{bad},,,")]),
            2,
            4,
            "amount",
        );
        assert!(matches!(err, ReadError::NonFiniteAmount { .. }), "{msg}");
        assert!(msg.contains(bad), "{msg}");
    }
    // Finite as written, but beyond what an amount holds (a 32-bit float): the message says
    // so instead of calling 1e300 "not a finite number".
    let (err, msg) = error_at(&rows(&["u1,2026-05-01,order,1e300,,,"]), 2, 4, "amount");
    assert!(matches!(err, ReadError::AmountTooLarge { .. }), "{msg}");
    assert!(
        msg.contains("\"1e300\" is too large (amounts hold at most 3.4e38)"),
        "{msg}"
    );
}

#[test]
fn non_numeric_amount_names_file_line_and_column() {
    let (err, _) = error_at(&rows(&["u1,2026-05-01,order,12;50,,,"]), 2, 4, "amount");
    assert!(matches!(err, ReadError::BadAmount { .. }));
}

#[test]
fn bad_watch_seconds_names_file_line_and_column() {
    let (err, msg) = error_at(&rows(&["u1,2026-05-01,view,,-3,,"]), 2, 5, "watch_seconds");
    assert!(matches!(err, ReadError::BadWatchSeconds { .. }));
    assert!(msg.contains("\"-3\""), "{msg}");
}

#[test]
fn unknown_kind_names_file_line_and_column() {
    let (err, msg) = error_at(
        &rows(&[
            "u1,2026-05-01,view,,,,",
            "u1,2026-05-01,view,,,,",
            "u1,2026-05-01,purchase,3,,,",
        ]),
        4,
        3,
        "kind",
    );
    assert!(matches!(err, ReadError::UnknownKind { .. }));
    assert!(
        msg.contains("\"purchase\"") && msg.contains("order, view"),
        "{msg}"
    );
}

#[test]
fn missing_required_column_names_the_column_and_lists_the_header() {
    let (_dir, path) = events_csv("user_id,Time,kind,amount\nu1,2026-05-01,order,1\n");
    let err = read(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ReadError::MissingColumn { column: "ts", .. }),
        "{msg}"
    );
    assert!(msg.contains("events.csv:1"), "{msg}");
    assert!(msg.contains("missing required column ts"), "{msg}");
    assert!(msg.contains("user_id, Time, kind, amount"), "{msg}");
}

#[test]
fn wrong_delimiter_names_file_line_and_the_delimiter() {
    for (sep, name) in [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")] {
        let text = format!("user_id{sep}ts{sep}kind\nu1{sep}2026-05-01{sep}view\n");
        let (_dir, path) = events_csv(&text);
        let err = read(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReadError::WrongDelimiter { .. }), "{msg}");
        assert!(
            msg.contains("events.csv:1") && msg.contains("user_id"),
            "{msg}"
        );
        assert!(
            msg.contains(name) && msg.contains("comma-separated"),
            "{msg}"
        );
    }
}

#[test]
fn wrong_number_of_fields_names_file_line_and_column() {
    let (_dir, path) = events_csv(&rows(&["u1,2026-05-01,view,,,,", "u1,2026-05-01,view,,"]));
    let err = read(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ReadError::FieldCount {
                expected: 7,
                found: 5,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("events.csv:3") && msg.contains("column 6, room_id"),
        "{msg}"
    );

    let (_dir, path) = events_csv(&rows(&["u1,2026-05-01,view,,,,,extra"]));
    let msg = read(&path).unwrap_err().to_string();
    assert!(
        msg.contains("events.csv:2") && msg.contains("found 8") && msg.contains("category"),
        "{msg}"
    );
}

#[test]
fn empty_user_id_names_file_line_and_column() {
    let (err, _) = error_at(
        &rows(&["u1,2026-05-01,view,,,,", ",2026-05-01,view,,,,"]),
        3,
        1,
        "user_id",
    );
    assert!(matches!(err, ReadError::EmptyUserId { .. }));
}

#[test]
fn invalid_utf8_names_file_line_and_column() {
    let mut bytes = rows(&["u1,2026-05-01,view,,,,"]).into_bytes();
    bytes.extend_from_slice(b"u2,2026-05-01,view,,,room-\xff\xfe,c\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.csv");
    std::fs::write(&path, bytes).unwrap();
    let err = read(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ReadError::InvalidUtf8 { .. }), "{msg}");
    assert!(msg.contains("events.csv:3:6 (column room_id)"), "{msg}");
}

#[test]
fn line_numbers_are_physical_lines_of_the_file() {
    // A quoted newline and a blank line before the bad row: it is on line 6.
    let text = format!("{HEADER}\nu1,2026-05-01,view,,,\"room\none\",c\n\nu1,2026-05-01,view,,,,\nu1,2026-05-01,order,,,,\n");
    let (err, _) = error_at(&text, 6, 4, "amount");
    assert!(matches!(err, ReadError::MissingAmount { .. }));
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope").join("events.csv");
    let err = read(&path).unwrap_err();
    assert!(matches!(err, ReadError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn empty_directory_names_the_directory_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let err = read(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ReadError::NoEventsFile { .. }), "{msg}");
    assert!(
        msg.contains(&dir.path().display().to_string())
            && msg.contains("events.csv or events.parquet"),
        "{msg}"
    );
    assert!(msg.contains("empty"), "{msg}");

    std::fs::write(dir.path().join("orders.csv"), "x\n").unwrap();
    let msg = read(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("found: orders.csv"), "{msg}");
}

#[test]
fn empty_file_names_the_file_and_the_expected_header() {
    let (_dir, path) = events_csv("");
    let err = read(&path).unwrap_err();
    assert!(matches!(err, ReadError::EmptyFile { .. }), "{err}");
    assert!(
        err.to_string().contains("events.csv") && err.to_string().contains("user_id, ts, kind"),
        "{err}"
    );
}

#[test]
fn both_csv_and_parquet_present_is_refused_naming_both() {
    let (dir, _) = events_csv(&rows(&["u1,2026-05-01,view,,,,"]));
    std::fs::write(dir.path().join("events.parquet"), b"").unwrap();
    let err = read(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ReadError::BothFormats {
                table: "events",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("events.csv") && msg.contains("events.parquet"),
        "{msg}"
    );
}

#[test]
fn unsupported_extension_names_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.json");
    std::fs::write(&path, "{}").unwrap();
    let msg = read(&path).unwrap_err().to_string();
    assert!(
        msg.contains("events.json") && msg.contains("\"json\""),
        "{msg}"
    );
}

#[test]
fn plain_transaction_log_reads_with_no_optional_columns() {
    let (_dir, path) = events_csv("User_ID,Amount,TS,Kind\nu1,12.50,2026-05-01T10:00:00Z,order\nu2,3,2026-05-02,ORDER\nu1,0.5,2026-05-03T08:00:00+08:00,order\n");
    let d = read(&path).unwrap();
    let t = &d.events;
    assert_eq!(t.columns, ColumnsPresent::default());
    assert_eq!(t.user_ids, vec!["u1", "u2"]);
    assert_eq!(t.user, vec![0, 1, 0]);
    assert_eq!(t.kind, vec![EventKind::Order; 3]);
    assert_eq!(t.amount, vec![12.5, 3.0, 0.5]);
    assert_eq!(t.ts, vec![1_777_629_600, 1_777_680_000, 1_777_766_400]);
    assert_eq!(t.registered_at, vec![None, None]);
    assert_eq!(d.report.rows, 3);
    assert_eq!(d.report.bad_rows, 0);
    assert_eq!(d.report.personas, None);
    assert_eq!(d.report.fingerprint.len(), 64);
}

#[test]
fn max_bad_rows_skips_and_counts_then_names_the_row_over_the_limit() {
    let text = rows(&[
        "u1,2026-05-01,view,,,,",
        "u1,never,view,,,,",
        "u2,2026-05-01,order,-1,,,",
        "u3,2026-05-01,view,,,,",
        // An unmapped kind would end the read whatever the budget: a bad amount instead.
        "u4,2026-05-01,order,x,,,",
    ]);
    let (_dir, path) = events_csv(&text);
    let d = read_dataset(
        &path,
        &ReadOptions {
            max_bad_rows: 3,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(d.report.rows, 2);
    assert_eq!(d.report.bad_rows, 3);
    assert_eq!(d.report.bad_row_samples.len(), 3);
    assert!(
        d.report.bad_row_samples[0].contains("events.csv:3:2 (column ts)"),
        "{:?}",
        d.report.bad_row_samples
    );
    assert!(
        d.report.bad_row_samples[2].contains("events.csv:6:4 (column amount)"),
        "{:?}",
        d.report.bad_row_samples
    );
    assert_eq!(d.events.user_ids, vec!["u1", "u3"]);

    let err = read_dataset(
        &path,
        &ReadOptions {
            max_bad_rows: 2,
            ..ReadOptions::default()
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ReadError::TooManyBadRows { limit: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("more than 2 bad rows") && msg.contains("events.csv:6:4 (column amount)"),
        "{msg}"
    );
}

fn assert_same_table(a: &EventTable, b: &EventTable) {
    assert_eq!(a.user_ids, b.user_ids);
    assert_eq!(a.registered_at, b.registered_at);
    assert_eq!(a.user, b.user);
    assert_eq!(a.ts, b.ts);
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.amount, b.amount);
    assert_eq!(a.watch_seconds, b.watch_seconds);
    assert_eq!(a.room, b.room);
    assert_eq!(a.category, b.category);
    assert_eq!(a.columns, b.columns);
}

#[test]
fn parquet_with_the_same_rows_as_a_csv_gives_an_identical_table() {
    let csv = rows(&[
        "u1,2026-05-01T10:00:00Z,view,,120,room_1,beauty",
        "u2,2026-05-01T11:00:00Z,order,19.90,,room_2,food",
        "u1,2026-05-02T00:00:00Z,like,,,room_1,",
        "u3,2026-05-03T00:00:00Z,gift,5,,,",
    ]);
    let (dir, csv_path) = events_csv(&csv);
    let from_csv = read(&csv_path).unwrap();

    let pq_path = dir.path().join("copy.parquet");
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec!["u1", "u2", "u1", "u3"])),
        ),
        (
            "ts",
            Arc::new(TimestampSecondArray::from(vec![
                1_777_629_600,
                1_777_633_200,
                1_777_680_000,
                1_777_766_400,
            ])),
        ),
        (
            "kind",
            Arc::new(StringArray::from(vec!["view", "order", "like", "gift"])),
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![None, Some(19.90), None, Some(5.0)])),
        ),
        (
            "watch_seconds",
            Arc::new(Int64Array::from(vec![Some(120), None, None, None])),
        ),
        (
            "room_id",
            Arc::new(StringArray::from(vec![
                Some("room_1"),
                Some("room_2"),
                Some("room_1"),
                None,
            ])),
        ),
        (
            "category",
            Arc::new(StringArray::from(vec![
                Some("beauty"),
                Some("food"),
                Some(""),
                None,
            ])),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(&pq_path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let from_parquet = read(&pq_path).unwrap();

    assert_same_table(&from_csv.events, &from_parquet.events);
    assert_eq!(from_csv.report.rows, from_parquet.report.rows);
    assert_eq!(from_parquet.events.room[0], hash_str("room_1"));
    assert_ne!(from_csv.report.fingerprint, from_parquet.report.fingerprint);
}

#[test]
fn directory_with_events_and_users_gives_registration_times_and_personas() {
    let (dir, _) = events_csv(&rows(&[
        "u1,2026-05-01,view,,,,",
        "u2,2026-05-02,order,3,,,",
    ]));
    std::fs::write(
        dir.path().join("users.csv"),
        "persona,USER_ID,registered_at\ncore_fan,u2,2026-01-01T00:00:00Z\n,u1,\nsilent,u9,2025-12-31\n",
    )
    .unwrap();
    let d = read(dir.path()).unwrap();
    let t = &d.events;
    assert_eq!(t.user_ids, vec!["u1", "u2", "u9"]);
    assert_eq!(
        t.registered_at,
        vec![None, Some(1_767_225_600), Some(1_767_139_200)]
    );
    assert!(t.columns.users_table);
    assert_eq!(
        d.report.personas,
        Some(vec![
            None,
            Some("core_fan".to_string()),
            Some("silent".to_string())
        ])
    );
    assert_eq!(
        d.report.files,
        vec![dir.path().join("events.csv"), dir.path().join("users.csv")]
    );
    assert_eq!(t.len(), 2);
}

#[test]
fn bad_users_rows_name_the_users_file_line_and_column() {
    let (dir, _) = events_csv(&rows(&["u1,2026-05-01,view,,,,"]));
    std::fs::write(
        dir.path().join("users.csv"),
        "user_id,registered_at\nu1,2026-01-01\nu2,last tuesday\n",
    )
    .unwrap();
    let msg = read(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("users.csv:3:2 (column registered_at)"),
        "{msg}"
    );

    std::fs::write(
        dir.path().join("users.csv"),
        "user_id,registered_at\nu1,2026-01-01\nu1,2026-01-02\n",
    )
    .unwrap();
    let msg = read(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("users.csv:3:1 (column user_id)") && msg.contains("twice"),
        "{msg}"
    );

    std::fs::write(
        dir.path().join("users.csv"),
        "user_id,signup\nu1,2026-01-01\n",
    )
    .unwrap();
    let msg = read(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("users.csv:1") && msg.contains("registered_at"),
        "{msg}"
    );
}

#[test]
fn duplicate_column_names_file_line_and_both_positions() {
    let (_dir, path) = events_csv("user_id,ts,kind,TS\nu1,2026-05-01,view,2026-05-02\n");
    let err = read(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ReadError::DuplicateColumn {
                column: "ts",
                first: 2,
                second: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("events.csv:1") && msg.contains("column ts appears twice"),
        "{msg}"
    );
}

/// An events Parquet file at `path`: one row per `(user, ts, kind, amount)`.
fn events_parquet(path: &Path, rows: &[(&str, i64, &str, Option<f64>)]) {
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "user_id",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
        ),
        (
            "ts",
            Arc::new(TimestampSecondArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ),
        (
            "kind",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ),
        (
            "amount",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// 0001-01-01T00:00:00Z in Unix seconds.
const YEAR_1: i64 = -62_135_596_800;

/// The placeholder times of a missing value, as a CSV file written quote-free (the block
/// parser) and with a quoted field (the csv-crate reader).
fn placeholder_csvs() -> [String; 2] {
    let plain = rows(&[
        "u1,2026-05-01T10:00:00Z,view,,30,r1,c1",
        "u1,1970-01-01T00:00:00Z,view,,30,r1,c1",
        "u2,0001-01-01,order,5,,,",
    ]);
    let quoted = rows(&[
        "u1,2026-05-01T10:00:00Z,view,,30,\"r,1\",c1",
        "u1,1970-01-01T00:00:00Z,view,,30,r1,c1",
        "u2,0001-01-01,order,5,,,",
    ]);
    [plain, quoted]
}

#[test]
fn events_at_unix_zero_or_in_year_0001_name_file_line_and_column_in_csv() {
    for text in placeholder_csvs() {
        let (_, msg) = error_at(&text, 3, 2, "ts");
        assert!(
            msg.contains("\"1970-01-01T00:00:00Z\" is before the earliest accepted event time 2000-01-01T00:00:00Z (earliest_event_time)"),
            "{msg}"
        );
        let (dir, path) = events_csv(&text);
        let opts = ReadOptions {
            max_bad_rows: 1,
            ..ReadOptions::default()
        };
        let msg = read_dataset(&path, &opts).unwrap_err().to_string();
        assert!(
            msg.contains("events.csv:4:2 (column ts)")
                && msg.contains("\"0001-01-01\" is before the earliest accepted event time"),
            "{msg}"
        );
        let opts = ReadOptions {
            max_bad_rows: 2,
            ..ReadOptions::default()
        };
        let d = read_dataset(&path, &opts).unwrap();
        assert_eq!((d.report.rows, d.report.bad_rows), (1, 2), "{dir:?}");
    }
}

#[test]
fn events_at_unix_zero_or_in_year_0001_name_file_row_and_column_in_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.parquet");
    events_parquet(
        &path,
        &[
            ("u1", 1_777_629_600, "view", None),
            ("u1", 0, "view", None),
            ("u2", YEAR_1, "order", Some(5.0)),
        ],
    );
    let msg = read(&path).unwrap_err().to_string();
    assert!(
        msg.contains("events.parquet:row 2:2 (column ts)")
            && msg.contains("is before the earliest accepted event time 2000-01-01T00:00:00Z (earliest_event_time)"),
        "{msg}"
    );
    let opts = ReadOptions {
        max_bad_rows: 1,
        ..ReadOptions::default()
    };
    let msg = read_dataset(&path, &opts).unwrap_err().to_string();
    assert!(msg.contains("events.parquet:row 3:2 (column ts)"), "{msg}");
}

#[test]
fn a_configured_earlier_earliest_event_time_accepts_unix_zero_and_year_0001() {
    let opts = ReadOptions {
        earliest: YEAR_1,
        ..ReadOptions::default()
    };
    for text in placeholder_csvs() {
        let (_dir, path) = events_csv(&text);
        let d = read_dataset(&path, &opts).unwrap();
        assert_eq!(d.events.ts, vec![1_777_629_600, 0, YEAR_1]);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.parquet");
    events_parquet(
        &path,
        &[("u1", 0, "view", None), ("u2", YEAR_1, "order", Some(5.0))],
    );
    let d = read_dataset(&path, &opts).unwrap();
    assert_eq!(d.events.ts, vec![0, YEAR_1]);
    // One second before the bound is still refused.
    let opts = ReadOptions {
        earliest: YEAR_1 + 1,
        ..ReadOptions::default()
    };
    assert!(read_dataset(&path, &opts).is_err());
}

#[test]
fn a_zero_amount_order_and_a_padded_mixed_case_kind_are_an_order_with_no_spend() {
    let text = rows(&["u1,2026-05-01T10:00:00Z, Order ,0,,,"]);
    let (dir, csv_path) = events_csv(&text);
    let pq_path = dir.path().join("copy.parquet");
    events_parquet(&pq_path, &[("u1", 1_777_629_600, " Order ", Some(0.0))]);
    for path in [csv_path, pq_path] {
        let d = read(&path).unwrap();
        assert_eq!(d.events.kind, vec![EventKind::Order], "{path:?}");
        assert_eq!(d.events.amount, vec![0.0], "{path:?}");
        let t = 1_777_629_600 + 1;
        let agg = &tiering::features::build_aggregates(&d.events, &[t])[0][0];
        assert_eq!((agg.orders, agg.spend), (1, 0.0), "{path:?}");
    }
}
