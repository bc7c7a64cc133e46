//! The aggregates table: per user and snapshot time, the point-in-time aggregates the pipeline
//! uses and the label counts of the window after the snapshot, as Parquet. The same schema is
//! written by `tiering features` (the Rust pipeline's own aggregates) and by the shipped SQL
//! (`sql/`, run by DuckDB or Spark), so the two can be compared column by column and
//! `tiering train --aggregates` / `tiering score --aggregates` can read either.
//!
//! Schema version [`SCHEMA_VERSION`] (documented in `sql/README.md`): `user_id` (text), the
//! integer columns [`INT_COLUMNS`] (all Int64; the time columns are Unix seconds and null where
//! the aggregate has no such time) and the float columns [`FLOAT_COLUMNS`] (Float64), then the
//! columns schema version 2 added (the interests and the channel mix: [`V2_INT_COLUMNS`],
//! [`V2_FLOAT_COLUMNS`]) and those version 3 added (the first order day and its spend, the top
//! rooms: [`V3_INT_COLUMNS`], [`V3_FLOAT_COLUMNS`]).
//! A table is one Parquet file or a directory of part files (`*.parquet`, as Spark writes them;
//! files starting with `_` or `.` are skipped). Errors name the column and the file.

use super::atomic::{AtomicError, AtomicFile};
use crate::features::aggregate::TREND_WEEKS;
use crate::features::{Timestamp, TopK, UserAggregate};
use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The version written in every row's `schema_version`. Readers take it, version 2 (without
/// the first order day and the rooms: a buyer's first order day reads as unknown, so a model
/// trained from it fits Gamma-Gamma on the all-orders basis, and the rooms read as empty) and
/// version 1 (also without the interest and channel columns: those read as empty); any other
/// is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// The integer columns, in file order (after `user_id`). `weekly_i` counts the events of week
/// `week_anchor - i`.
pub const INT_COLUMNS: [&str; 33] = [
    "schema_version",
    "snapshot",
    "horizon_days",
    "registered_at",
    "first_seen",
    "last_order",
    "last_activity",
    "orders",
    "order_days",
    "views",
    "watch_seconds",
    "comments",
    "likes",
    "shares",
    "follows",
    "gifts",
    "room_sketch",
    "category_sketch",
    "week_anchor",
    "weekly_0",
    "weekly_1",
    "weekly_2",
    "weekly_3",
    "weekly_4",
    "weekly_5",
    "weekly_6",
    "weekly_7",
    "refunds",
    "orders_refunded",
    "linked_refunds",
    "orphan_refunds",
    "label_orders",
    "label_events",
];

/// The integer columns that may be null (a time the aggregate does not have).
const NULLABLE: [&str; 5] = [
    "registered_at",
    "first_seen",
    "last_order",
    "last_activity",
    "week_anchor",
];

/// The float columns, in file order (after the integers).
pub const FLOAT_COLUMNS: [&str; 2] = ["spend", "refunded"];

/// Schema version 2's integer columns (after the float columns): the interests, highest level
/// first (`interest_category_i` = the category's `hash_str`, null for an empty slot), and the
/// channel mix's state (`features::channel::ChannelMix::parts`).
pub const V2_INT_COLUMNS: [&str; 13] = [
    "interest_category_0",
    "interest_category_1",
    "interest_category_2",
    "interest_category_3",
    "channels_used",
    "channel_slot_0",
    "channel_slot_1",
    "channel_events_0",
    "channel_events_1",
    "channel_events_rest",
    "channel_cents_0",
    "channel_cents_1",
    "channel_cents_rest",
];

/// Schema version 2's float columns (last): `interest_level_i` = log2 of the forward-decayed
/// score of `interest_category_i` (`features::interests`), null for an empty slot.
pub const V2_FLOAT_COLUMNS: [&str; 4] = [
    "interest_level_0",
    "interest_level_1",
    "interest_level_2",
    "interest_level_3",
];

/// Schema version 3's integer columns (after version 2's): `first_order_day` = the day index
/// (Unix seconds div 86400) of the user's earliest order, null without an order;
/// `first_day_cents` = the gross spend of every order on that day in cents (the sum of
/// `round(amount * 100)` floored at 0 per order; 0 without an order); the top rooms, highest
/// level first (`room_i` = the room id's `hash_str`, null for an empty slot).
pub const V3_INT_COLUMNS: [&str; 4] = ["first_order_day", "first_day_cents", "room_0", "room_1"];

/// Schema version 3's float columns (last): `room_level_i` = log2 of the forward-decayed score
/// of `room_i` (the interests' score, `features::interests`), null for an empty slot.
pub const V3_FLOAT_COLUMNS: [&str; 2] = ["room_level_0", "room_level_1"];

/// The room columns the schema has; the aggregate holds as many.
const ROOM_COLUMNS: usize = 2;
const _: () = assert!(crate::features::interests::ROOM_SLOTS == ROOM_COLUMNS);

/// Why reading or writing the table failed: one variant per cause, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum AggregatesError {
    #[error("{}: no aggregates table there (no such file, or a directory without *.parquet files)", .path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable Parquet aggregates table", .path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },
    #[error("{}: reading a batch", .path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: ArrowError,
    },
    #[error("{}: missing column {column:?} (aggregates schema version {SCHEMA_VERSION})", .path.display())]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("{}: column {column:?} has type {found}, expected {expected}", .path.display())]
    WrongType {
        path: PathBuf,
        column: &'static str,
        expected: DataType,
        found: DataType,
    },
    #[error("{}: column {column:?} is null in row {row}", .path.display())]
    Null {
        path: PathBuf,
        column: &'static str,
        row: usize,
    },
    #[error("{}: column {column:?} holds {value} in row {row}, outside its range", .path.display())]
    OutOfRange {
        path: PathBuf,
        column: &'static str,
        row: usize,
        value: i64,
    },
    #[error("{}: column \"schema_version\" is {found} in row {row}; this binary reads versions 1 to {SCHEMA_VERSION}", .path.display())]
    Version {
        path: PathBuf,
        row: usize,
        found: i64,
    },
    #[error("{}: snapshot {wanted} (column \"snapshot\") is not in the table; it holds {held:?}", .path.display())]
    SnapshotMissing {
        path: PathBuf,
        wanted: String,
        held: Vec<String>,
    },
    #[error("{}: column \"horizon_days\" is {found}, training asked for {wanted}", .path.display())]
    Horizon {
        path: PathBuf,
        wanted: u32,
        found: u32,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: WriteCause,
    },
}

/// What failed underneath a write.
#[derive(Debug, thiserror::Error)]
pub enum WriteCause {
    #[error(transparent)]
    File(#[from] AtomicError),
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// One row: a user's aggregate as of `snapshot` and the counts of the label window
/// `[snapshot, snapshot + horizon_days)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRow {
    pub user_id: String,
    pub snapshot: Timestamp,
    pub horizon_days: u32,
    pub agg: UserAggregate,
    /// Orders in the label window (the `no_order` churn definition).
    pub label_orders: u32,
    /// Events of any kind in the label window (`no_activity`).
    pub label_events: u32,
}

fn time(t: Timestamp) -> Option<i64> {
    (t != UserAggregate::NONE).then_some(t)
}

/// The integer columns of a row, in [`INT_COLUMNS`] order.
fn encode(r: &AggregateRow) -> [Option<i64>; 33] {
    let a = &r.agg;
    let w = |i: usize| Some(i64::from(a.weekly[i]));
    [
        Some(SCHEMA_VERSION),
        Some(r.snapshot),
        Some(i64::from(r.horizon_days)),
        time(a.registered_at),
        time(a.first_seen),
        time(a.last_order),
        time(a.last_activity),
        Some(i64::from(a.orders)),
        Some(i64::from(a.order_days)),
        Some(i64::from(a.views)),
        Some(i64::try_from(a.watch_seconds).unwrap_or(i64::MAX)),
        Some(i64::from(a.comments)),
        Some(i64::from(a.likes)),
        Some(i64::from(a.shares)),
        Some(i64::from(a.follows)),
        Some(i64::from(a.gifts)),
        // The sketches' 64 bits, as a signed integer (Spark has no unsigned type).
        Some(a.room_sketch as i64),
        Some(a.category_sketch as i64),
        time(a.week_anchor),
        w(0),
        w(1),
        w(2),
        w(3),
        w(4),
        w(5),
        w(6),
        w(7),
        Some(i64::from(a.refunds)),
        Some(i64::from(a.orders_refunded)),
        Some(i64::from(a.linked_refunds)),
        Some(i64::from(a.orphan_refunds)),
        Some(i64::from(r.label_orders)),
        Some(i64::from(r.label_events)),
    ]
}

/// The interest columns the schema has (4); the aggregate holds
/// [`INTEREST_SLOTS`](crate::features::interests::INTEREST_SLOTS) of them, the rest are null.
const INTEREST_COLUMNS: usize = 4;
const _: () = assert!(crate::features::interests::INTEREST_SLOTS <= INTEREST_COLUMNS);

/// A [`TopK`]'s keys and levels, highest first, into hash and level columns (as many as
/// there are columns).
fn top_k_columns<const N: usize>(
    top: &TopK<N>,
    ids: &mut [Option<i64>],
    levels: &mut [Option<f64>],
) {
    for ((key, level), (id, l)) in top.ranked().into_iter().zip(ids.iter_mut().zip(levels)) {
        *id = Some(i64::from(key));
        *l = Some(f64::from(level));
    }
}

/// A [`TopK`] back from hash and level columns: the first `N` filled hash columns (a table
/// written with more columns filled than this binary holds keeps its highest levels), each a
/// distinct non-zero hash into an empty slot, so the structure is the exact map again.
/// `Err(column index, value)` (`first`: the index of `ids[0]`) for a hash out of range or
/// repeated.
fn top_k_from_columns<const N: usize>(
    ids: &[Option<i64>],
    levels: &[Option<f64>],
    first: usize,
) -> Result<TopK<N>, (usize, i64)> {
    let mut top = TopK::<N>::default();
    let slots = ids.iter().zip(levels).enumerate();
    for (i, slot) in slots.filter(|(_, s)| s.0.is_some()).take(N) {
        if let (Some(id), Some(level)) = slot {
            let key = u32::try_from(*id).map_err(|_| (first + i, *id))?;
            if key == 0 || top.holds(key) {
                return Err((first + i, *id));
            }
            top.add(key, *level);
        }
    }
    Ok(top)
}

/// Schema version 2's columns of an aggregate: [`V2_INT_COLUMNS`] and [`V2_FLOAT_COLUMNS`].
fn encode_v2(a: &UserAggregate) -> ([Option<i64>; 13], [Option<f64>; 4]) {
    let mut ints = [None; 13];
    let mut floats = [None; INTEREST_COLUMNS];
    top_k_columns(&a.interests, &mut ints[..INTEREST_COLUMNS], &mut floats);
    let (used, slots, events, cents) = a.channels.parts();
    ints[4] = Some(i64::from(used));
    ints[5] = Some(i64::from(slots[0]));
    ints[6] = Some(i64::from(slots[1]));
    for (i, (e, c)) in events.into_iter().zip(cents).enumerate() {
        ints[7 + i] = Some(i64::from(e));
        ints[10 + i] = Some(i64::from(c));
    }
    (ints, floats)
}

/// The interests and the channel mix back from schema version 2's columns; `Err(column index
/// in V2_INT_COLUMNS, value)` for a value outside its field's range or a channel state the mix
/// cannot reach.
fn decode_v2(
    agg: &mut UserAggregate,
    ints: &[Option<i64>],
    floats: &[Option<f64>],
) -> Result<(), (usize, i64)> {
    agg.interests = top_k_from_columns(&ints[..INTEREST_COLUMNS], floats, 0)?;
    let small = |i: usize| -> Result<u8, (usize, i64)> {
        let v = ints[i].unwrap_or(0);
        u8::try_from(v).map_err(|_| (i, v))
    };
    let count = |i: usize| -> Result<u32, (usize, i64)> {
        let v = ints[i].unwrap_or(0);
        u32::try_from(v).map_err(|_| (i, v))
    };
    let used = small(4)?;
    let slots = [small(5)?, small(6)?];
    let events = [count(7)?, count(8)?, count(9)?];
    let cents = [count(10)?, count(11)?, count(12)?];
    agg.channels = crate::features::ChannelMix::from_parts(used, slots, events, cents)
        .ok_or((5, i64::from(slots[0])))?;
    Ok(())
}

/// Schema version 3's columns of an aggregate: [`V3_INT_COLUMNS`] and [`V3_FLOAT_COLUMNS`].
fn encode_v3(a: &UserAggregate) -> ([Option<i64>; 4], [Option<f64>; 2]) {
    let mut ints = [None; 4];
    let mut floats = [None; ROOM_COLUMNS];
    if a.first_order_day < UserAggregate::UNKNOWN_DAY {
        ints[0] = Some(i64::from(a.first_order_day));
    }
    ints[1] = Some(i64::from(a.first_day_cents));
    top_k_columns(&a.rooms, &mut ints[2..], &mut floats);
    (ints, floats)
}

/// The first order day and the rooms back from schema version 3's columns; `Err(column index
/// in V3_INT_COLUMNS, value)` for a value outside its field's range.
fn decode_v3(
    agg: &mut UserAggregate,
    ints: &[Option<i64>],
    floats: &[Option<f64>],
) -> Result<(), (usize, i64)> {
    agg.first_order_day = match ints[0] {
        None if agg.orders == 0 => UserAggregate::NO_DAY,
        // A buyer without a day: written from an aggregate that did not know it.
        None => UserAggregate::UNKNOWN_DAY,
        Some(d) => u32::try_from(d)
            .ok()
            .filter(|&d| d < UserAggregate::UNKNOWN_DAY)
            .ok_or((0, d))?,
    };
    let cents = ints[1].unwrap_or(0);
    agg.first_day_cents = u32::try_from(cents).map_err(|_| (1, cents))?;
    agg.rooms = top_k_from_columns(&ints[2..], floats, 2)?;
    Ok(())
}

/// A row back from its columns (`ints` in [`INT_COLUMNS`] order, `None` = null in a nullable
/// column); `Err(column index, value)` for a value outside its field's range.
fn decode(
    user_id: String,
    ints: &[Option<i64>; 33],
    floats: [f64; 2],
) -> Result<AggregateRow, (usize, i64)> {
    let t = |i: usize| ints[i].unwrap_or(UserAggregate::NONE);
    let n = |i: usize| -> Result<u32, (usize, i64)> {
        let v = ints[i].unwrap_or(0);
        u32::try_from(v).map_err(|_| (i, v))
    };
    let week = |i: usize| -> Result<u16, (usize, i64)> {
        let v = ints[19 + i].unwrap_or(0);
        u16::try_from(v).map_err(|_| (19 + i, v))
    };
    let mut weekly = [0u16; TREND_WEEKS];
    for (i, w) in weekly.iter_mut().enumerate() {
        *w = week(i)?;
    }
    let watch = ints[10].unwrap_or(0);
    // Field by field: the aggregate has private fields, so no struct literal here.
    let mut agg = UserAggregate::default();
    agg.registered_at = t(3);
    agg.first_seen = t(4);
    agg.last_order = t(5);
    agg.last_activity = t(6);
    agg.orders = n(7)?;
    agg.order_days = n(8)?;
    agg.views = n(9)?;
    agg.watch_seconds = u64::try_from(watch).map_err(|_| (10, watch))?;
    agg.comments = n(11)?;
    agg.likes = n(12)?;
    agg.shares = n(13)?;
    agg.follows = n(14)?;
    agg.gifts = n(15)?;
    agg.room_sketch = ints[16].unwrap_or(0) as u64;
    agg.category_sketch = ints[17].unwrap_or(0) as u64;
    agg.week_anchor = t(18);
    agg.weekly = weekly;
    agg.spend = floats[0];
    agg.refunds = n(27)?;
    agg.refunded = floats[1];
    agg.orders_refunded = n(28)?;
    agg.linked_refunds = n(29)?;
    agg.orphan_refunds = n(30)?;
    agg.restore_last_order_day();
    // Before schema version 3 the table has no first order day: unknown for a buyer (the
    // version 3 columns overwrite it).
    agg.first_order_day = if agg.orders == 0 {
        UserAggregate::NO_DAY
    } else {
        UserAggregate::UNKNOWN_DAY
    };
    Ok(AggregateRow {
        user_id,
        snapshot: ints[1].unwrap_or(0),
        horizon_days: n(2)?,
        agg,
        label_orders: n(31)?,
        label_events: n(32)?,
    })
}

/// The Arrow schema of the table.
pub fn schema() -> SchemaRef {
    let mut fields = vec![Field::new("user_id", DataType::Utf8, false)];
    fields.extend(
        INT_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Int64, NULLABLE.contains(c))),
    );
    fields.extend(
        FLOAT_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Float64, false)),
    );
    fields.extend(V2_INT_COLUMNS.iter().map(|c| {
        let nullable = c.starts_with("interest_");
        Field::new(*c, DataType::Int64, nullable)
    }));
    fields.extend(
        V2_FLOAT_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Float64, true)),
    );
    fields.extend(V3_INT_COLUMNS.iter().map(|c| {
        let nullable = *c != "first_day_cents";
        Field::new(*c, DataType::Int64, nullable)
    }));
    fields.extend(
        V3_FLOAT_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Float64, true)),
    );
    Arc::new(Schema::new(fields))
}

const BATCH_ROWS: usize = 64 * 1024;

/// Writes rows to one Parquet file, atomically (nothing appears at the path until
/// [`AggregatesWriter::finish`]), in batches of bounded size.
pub struct AggregatesWriter {
    path: PathBuf,
    writer: ArrowWriter<AtomicFile>,
    schema: SchemaRef,
    users: StringBuilder,
    ints: Vec<Int64Builder>,
    floats: [Float64Builder; 2],
    v2_ints: Vec<Int64Builder>,
    v2_floats: Vec<Float64Builder>,
    v3_ints: Vec<Int64Builder>,
    v3_floats: Vec<Float64Builder>,
    pending: usize,
    rows: u64,
}

impl AggregatesWriter {
    pub fn create(path: &Path) -> Result<AggregatesWriter, AggregatesError> {
        let fail = |source: WriteCause| AggregatesError::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = AtomicFile::create(path).map_err(|e| fail(e.into()))?;
        let schema = schema();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| fail(e.into()))?;
        Ok(AggregatesWriter {
            path: path.to_path_buf(),
            writer,
            schema,
            users: StringBuilder::new(),
            ints: (0..INT_COLUMNS.len())
                .map(|_| Int64Builder::new())
                .collect(),
            floats: [Float64Builder::new(), Float64Builder::new()],
            v2_ints: (0..V2_INT_COLUMNS.len())
                .map(|_| Int64Builder::new())
                .collect(),
            v2_floats: (0..V2_FLOAT_COLUMNS.len())
                .map(|_| Float64Builder::new())
                .collect(),
            v3_ints: (0..V3_INT_COLUMNS.len())
                .map(|_| Int64Builder::new())
                .collect(),
            v3_floats: (0..V3_FLOAT_COLUMNS.len())
                .map(|_| Float64Builder::new())
                .collect(),
            pending: 0,
            rows: 0,
        })
    }

    fn fail(&self) -> impl Fn(WriteCause) -> AggregatesError + '_ {
        move |source| AggregatesError::Write {
            path: self.path.clone(),
            source,
        }
    }

    pub fn write(&mut self, row: &AggregateRow) -> Result<(), AggregatesError> {
        self.users.append_value(&row.user_id);
        for (b, v) in self.ints.iter_mut().zip(encode(row)) {
            b.append_option(v);
        }
        self.floats[0].append_value(row.agg.spend);
        self.floats[1].append_value(row.agg.refunded);
        let (ints, floats) = encode_v2(&row.agg);
        for (b, v) in self.v2_ints.iter_mut().zip(ints) {
            b.append_option(v);
        }
        for (b, v) in self.v2_floats.iter_mut().zip(floats) {
            b.append_option(v);
        }
        let (ints, floats) = encode_v3(&row.agg);
        for (b, v) in self.v3_ints.iter_mut().zip(ints) {
            b.append_option(v);
        }
        for (b, v) in self.v3_floats.iter_mut().zip(floats) {
            b.append_option(v);
        }
        self.pending += 1;
        if self.pending >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AggregatesError> {
        if self.pending == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.users.finish())];
        columns.extend(
            self.ints
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.floats
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.v2_ints
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.v2_floats
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.v3_ints
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.v3_floats
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| (self.fail())(e.into()))?;
        self.writer
            .write(&batch)
            .map_err(|e| (self.fail())(e.into()))?;
        self.rows += self.pending as u64;
        self.pending = 0;
        Ok(())
    }

    /// Writes the last rows and the footer and puts the file in place; the rows written.
    pub fn finish(mut self) -> Result<u64, AggregatesError> {
        self.flush()?;
        let fail = |source: WriteCause| AggregatesError::Write {
            path: self.path.clone(),
            source,
        };
        let file = self.writer.into_inner().map_err(|e| fail(e.into()))?;
        file.commit().map_err(|e| fail(e.into()))?;
        Ok(self.rows)
    }
}

/// The Parquet files of a table: `path` itself, or the `*.parquet` files in the directory
/// `path` (sorted; names starting with `_` or `.` skipped).
pub fn table_files(path: &Path) -> Result<Vec<PathBuf>, AggregatesError> {
    let io = |source| AggregatesError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        if path.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        return Err(AggregatesError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file()
            && name.ends_with(".parquet")
            && !name.starts_with('_')
            && !name.starts_with('.')
        {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(AggregatesError::NotFound {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// Checks that `schema` has every column with its type; the column index of each name.
fn resolve(schema: &Schema, path: &Path) -> Result<Vec<usize>, AggregatesError> {
    let want = std::iter::once(("user_id", DataType::Utf8))
        .chain(INT_COLUMNS.iter().map(|c| (*c, DataType::Int64)))
        .chain(FLOAT_COLUMNS.iter().map(|c| (*c, DataType::Float64)));
    want.map(|(column, expected)| {
        let (i, field) =
            schema
                .column_with_name(column)
                .ok_or_else(|| AggregatesError::MissingColumn {
                    path: path.to_path_buf(),
                    column,
                })?;
        let found = field.data_type();
        let text = column == "user_id" && matches!(found, DataType::LargeUtf8 | DataType::Utf8View);
        if *found != expected && !text {
            return Err(AggregatesError::WrongType {
                path: path.to_path_buf(),
                column,
                expected,
                found: found.clone(),
            });
        }
        Ok(i)
    })
    .collect()
}

/// The columns a schema version added (`ints` then `floats`) in `schema`: `None` when the file
/// has none of them (an earlier version's table), else every one with its type, or the first
/// missing one named.
fn resolve_added(
    schema: &Schema,
    path: &Path,
    (ints, floats): (&[&'static str], &[&'static str]),
) -> Result<Option<Vec<usize>>, AggregatesError> {
    let want = ints
        .iter()
        .map(|c| (*c, DataType::Int64))
        .chain(floats.iter().map(|c| (*c, DataType::Float64)));
    if want
        .clone()
        .all(|(c, _)| schema.column_with_name(c).is_none())
    {
        return Ok(None);
    }
    want.map(|(column, expected)| {
        let (i, field) =
            schema
                .column_with_name(column)
                .ok_or_else(|| AggregatesError::MissingColumn {
                    path: path.to_path_buf(),
                    column,
                })?;
        if *field.data_type() != expected {
            return Err(AggregatesError::WrongType {
                path: path.to_path_buf(),
                column,
                expected,
                found: field.data_type().clone(),
            });
        }
        Ok(i)
    })
    .collect::<Result<Vec<usize>, _>>()
    .map(Some)
}

/// The text of `col` at `row` (Utf8, LargeUtf8 or Utf8View).
fn text_at(col: &dyn Array, row: usize) -> Option<&str> {
    if col.is_null(row) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(col.as_string_view().value(row)),
        _ => None,
    }
}

/// Decodes one record batch (columns already checked by [`resolve`]); `row_of(r)` is the file
/// row of its row `r`, for errors.
fn decode_batch(
    batch: &RecordBatch,
    (at, at2, at3): (&[usize], Option<&[usize]>, Option<&[usize]>),
    path: &Path,
    row_of: &dyn Fn(usize) -> usize,
) -> Result<Vec<AggregateRow>, AggregatesError> {
    let users = batch.column(at[0]);
    let ints: Vec<&arrow_array::Int64Array> = (0..INT_COLUMNS.len())
        .map(|i| batch.column(at[1 + i]).as_primitive::<Int64Type>())
        .collect();
    let floats: Vec<&arrow_array::Float64Array> = (0..FLOAT_COLUMNS.len())
        .map(|i| {
            batch
                .column(at[1 + INT_COLUMNS.len() + i])
                .as_primitive::<Float64Type>()
        })
        .collect();
    let null = |column: &'static str, r: usize| AggregatesError::Null {
        path: path.to_path_buf(),
        column,
        row: row_of(r),
    };
    let v2 = at2.map(|at2| Added::of(batch, at2, V2_INT_COLUMNS.len()));
    let v3 = at3.map(|at3| Added::of(batch, at3, V3_INT_COLUMNS.len()));
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let user = text_at(users.as_ref(), r).ok_or_else(|| null("user_id", r))?;
        let mut row = [None; 33];
        for (i, col) in ints.iter().enumerate() {
            if col.is_null(r) {
                if !NULLABLE.contains(&INT_COLUMNS[i]) {
                    return Err(null(INT_COLUMNS[i], r));
                }
            } else {
                row[i] = Some(col.value(r));
            }
        }
        let version = row[0].unwrap_or(0);
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(AggregatesError::Version {
                path: path.to_path_buf(),
                row: row_of(r),
                found: version,
            });
        }
        let missing = |column| AggregatesError::MissingColumn {
            path: path.to_path_buf(),
            column,
        };
        if version >= 2 && v2.is_none() {
            return Err(missing(V2_INT_COLUMNS[0]));
        }
        if version >= 3 && v3.is_none() {
            return Err(missing(V3_INT_COLUMNS[0]));
        }
        let mut fl = [0.0; 2];
        for (i, col) in floats.iter().enumerate() {
            if col.is_null(r) {
                return Err(null(FLOAT_COLUMNS[i], r));
            }
            fl[i] = col.value(r);
        }
        let mut decoded = decode(user.to_string(), &row, fl).map_err(|(i, value)| {
            AggregatesError::OutOfRange {
                path: path.to_path_buf(),
                column: INT_COLUMNS[i],
                row: row_of(r),
                value,
            }
        })?;
        let out_of_range = |column, value| AggregatesError::OutOfRange {
            path: path.to_path_buf(),
            column,
            row: row_of(r),
            value,
        };
        // A version's columns are read only in its rows (a version 2 row of a part file that
        // also holds version 3 rows keeps the version 2 reading).
        if let Some(v2) = v2.as_ref().filter(|_| version >= 2) {
            let (ints, floats) = v2.values(r);
            decode_v2(&mut decoded.agg, &ints, &floats)
                .map_err(|(i, value)| out_of_range(V2_INT_COLUMNS[i], value))?;
        }
        if let Some(v3) = v3.as_ref().filter(|_| version >= 3) {
            let (ints, floats) = v3.values(r);
            decode_v3(&mut decoded.agg, &ints, &floats)
                .map_err(|(i, value)| out_of_range(V3_INT_COLUMNS[i], value))?;
        }
        out.push(decoded);
    }
    Ok(out)
}

/// Rows a block of [`decode_in_blocks`] decodes.
const DECODE_BLOCK_ROWS: usize = 2048;

/// [`decode_batch`] on all cores: blocks of the batch (zero-copy slices) decoded in parallel,
/// their rows joined in batch order; the first failing row's error, as a sequential decode
/// reports it. `row_of(r)` is the file row of the batch's row `r`.
fn decode_in_blocks(
    batch: &RecordBatch,
    at: (&[usize], Option<&[usize]>, Option<&[usize]>),
    path: &Path,
    row_of: impl Fn(usize) -> usize + Sync,
) -> Result<Vec<AggregateRow>, AggregatesError> {
    use rayon::prelude::*;
    let n = batch.num_rows();
    if n <= DECODE_BLOCK_ROWS {
        return decode_batch(batch, at, path, &row_of);
    }
    let blocks: Vec<Result<Vec<AggregateRow>, AggregatesError>> = (0..n)
        .step_by(DECODE_BLOCK_ROWS)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let block = batch.slice(start, DECODE_BLOCK_ROWS.min(n - start));
            decode_batch(&block, at, path, &|r| row_of(start + r))
        })
        .collect();
    let mut rows = Vec::with_capacity(n);
    for block in blocks {
        rows.extend(block?);
    }
    Ok(rows)
}

/// The columns a schema version added, of one batch.
struct Added<'a> {
    ints: Vec<&'a arrow_array::Int64Array>,
    floats: Vec<&'a arrow_array::Float64Array>,
}

impl<'a> Added<'a> {
    /// `at`: the integer columns' indexes (`n` of them), then the float columns'.
    fn of(batch: &'a RecordBatch, at: &[usize], n: usize) -> Added<'a> {
        Added {
            ints: at[..n]
                .iter()
                .map(|&i| batch.column(i).as_primitive::<Int64Type>())
                .collect(),
            floats: at[n..]
                .iter()
                .map(|&i| batch.column(i).as_primitive::<Float64Type>())
                .collect(),
        }
    }

    /// Row `r`'s values (`None` = null).
    fn values(&self, r: usize) -> (Vec<Option<i64>>, Vec<Option<f64>>) {
        let ints = self.ints.iter();
        let floats = self.floats.iter();
        (
            ints.map(|c| (!c.is_null(r)).then(|| c.value(r))).collect(),
            floats
                .map(|c| (!c.is_null(r)).then(|| c.value(r)))
                .collect(),
        )
    }
}

/// Streams the rows of the table at `path` (a file or a directory of part files) a batch at a
/// time: memory is one batch, whatever the table's size. `f` gets each batch's rows and may
/// stop the scan with its own error.
pub fn for_each_batch<E: From<AggregatesError>>(
    path: &Path,
    f: impl FnMut(Vec<AggregateRow>) -> Result<(), E>,
) -> Result<(), E> {
    for_each_batch_where(path, &|_, _| true, f)
}

/// [`for_each_batch`] over the rows that `keep(user, snapshot)` accepts. The other rows are
/// not decoded: a first look at each part file's `user_id` and `snapshot` columns selects the
/// rows, and only those are read from the other columns (a sample's rows for training, one
/// snapshot's for scoring).
pub fn for_each_batch_where<E: From<AggregatesError>>(
    path: &Path,
    keep: &dyn Fn(&str, Timestamp) -> bool,
    f: impl FnMut(Vec<AggregateRow>) -> Result<(), E>,
) -> Result<(), E> {
    for_each_selected(path, keep, true, f)
}

/// [`for_each_batch`] over the rows at snapshot `t` (every user's): the first look at each part
/// file reads its `snapshot` column only, not the user ids (a scoring pass over a large table
/// reads the ids once, with the rows it decodes).
pub fn for_each_batch_at<E: From<AggregatesError>>(
    path: &Path,
    t: Timestamp,
    f: impl FnMut(Vec<AggregateRow>) -> Result<(), E>,
) -> Result<(), E> {
    for_each_selected(path, &|_, s| s == t, false, f)
}

/// [`for_each_batch_where`]; `users` false: `keep` looks at the snapshot only (and gets an
/// empty user).
fn for_each_selected<E: From<AggregatesError>>(
    path: &Path,
    keep: &dyn Fn(&str, Timestamp) -> bool,
    users: bool,
    mut f: impl FnMut(Vec<AggregateRow>) -> Result<(), E>,
) -> Result<(), E> {
    use parquet::arrow::arrow_reader::RowSelection;
    for file in table_files(path)? {
        let parquet = |source| AggregatesError::Parquet {
            path: file.clone(),
            source,
        };
        let selected = selection(&file, keep, users)?;
        if selected.as_ref().is_some_and(|s| s.true_count() == 0) {
            continue;
        }
        let handle = std::fs::File::open(&file).map_err(|source| AggregatesError::Io {
            path: file.clone(),
            source,
        })?;
        let mut builder = ParquetRecordBatchReaderBuilder::try_new(handle).map_err(parquet)?;
        let at = resolve(builder.schema(), &file)?;
        let at2 = resolve_added(
            builder.schema(),
            &file,
            (&V2_INT_COLUMNS, &V2_FLOAT_COLUMNS),
        )?;
        let at3 = resolve_added(
            builder.schema(),
            &file,
            (&V3_INT_COLUMNS, &V3_FLOAT_COLUMNS),
        )?;
        if let Some(s) = &selected {
            builder =
                builder.with_row_selection(RowSelection::from_filters(std::slice::from_ref(s)));
        }
        let reader = builder.with_batch_size(8192).build().map_err(parquet)?;
        let mut first = 0;
        for batch in reader {
            let batch = batch.map_err(|source| AggregatesError::Arrow {
                path: file.clone(),
                source,
            })?;
            let rows =
                decode_in_blocks(&batch, (&at, at2.as_deref(), at3.as_deref()), &file, |r| {
                    file_row(selected.as_ref(), first + r)
                })?;
            first += batch.num_rows();
            f(rows)?;
        }
    }
    Ok(())
}

/// The rows of part file `file` that `keep` accepts (one bit a row); `None` when it accepts
/// every row.
fn selection(
    file: &Path,
    keep: &dyn Fn(&str, Timestamp) -> bool,
    users: bool,
) -> Result<Option<arrow_array::BooleanArray>, AggregatesError> {
    let mut bits = arrow_array::builder::BooleanBuilder::new();
    let mut all = true;
    user_snapshots_in(file, users, &mut |user, t| {
        let k = keep(user, t);
        all &= k;
        bits.append_value(k);
    })?;
    Ok((!all).then(|| bits.finish()))
}

/// The file row of the `k`-th selected row (for errors only: it scans the selection).
fn file_row(selected: Option<&arrow_array::BooleanArray>, k: usize) -> usize {
    match selected {
        None => k,
        Some(s) => (0..s.len()).filter(|&i| s.value(i)).nth(k).unwrap_or(k),
    }
}

/// Streams only the `user_id` and `snapshot` columns of every row (`f(user, snapshot)`): the
/// cheap pass that finds the snapshots, counts the users and picks a sample, without decoding
/// the aggregates. The whole schema is still checked, so a bad table fails here first.
pub fn for_each_user_snapshot(
    path: &Path,
    mut f: impl FnMut(&str, Timestamp),
) -> Result<(), AggregatesError> {
    for file in table_files(path)? {
        user_snapshots_in(&file, true, &mut f)?;
    }
    Ok(())
}

/// [`for_each_user_snapshot`] over one part file.
/// `users` false: only the `snapshot` column is read and `f` gets an empty user (for callers
/// that select by snapshot alone: the user ids are the bulk of these two columns).
fn user_snapshots_in(
    file: &Path,
    users: bool,
    f: &mut dyn FnMut(&str, Timestamp),
) -> Result<(), AggregatesError> {
    use parquet::arrow::ProjectionMask;
    let parquet = |source| AggregatesError::Parquet {
        path: file.to_path_buf(),
        source,
    };
    let handle = std::fs::File::open(file).map_err(|source| AggregatesError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle).map_err(parquet)?;
    let at = resolve(builder.schema(), file)?;
    // `at[0]` is user_id, `at[2]` snapshot (INT_COLUMNS[1]); flat schema: roots = columns.
    let roots = if users {
        vec![at[0], at[2]]
    } else {
        vec![at[2]]
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(parquet)?;
    let mut first = 0;
    for batch in reader {
        let batch = batch.map_err(|source| AggregatesError::Arrow {
            path: file.to_path_buf(),
            source,
        })?;
        let null = |column: &'static str, r: usize| AggregatesError::Null {
            path: file.to_path_buf(),
            column,
            row: first + r,
        };
        // The projection keeps the file's column order: find the two by name.
        let Some(snaps) = batch.column_by_name("snapshot") else {
            return Err(AggregatesError::MissingColumn {
                path: file.to_path_buf(),
                column: "snapshot",
            });
        };
        let ids = batch.column_by_name("user_id");
        if users && ids.is_none() {
            return Err(AggregatesError::MissingColumn {
                path: file.to_path_buf(),
                column: "user_id",
            });
        }
        let snaps = snaps.as_primitive::<Int64Type>();
        for r in 0..batch.num_rows() {
            let user = match ids {
                Some(ids) => text_at(ids.as_ref(), r).ok_or_else(|| null("user_id", r))?,
                None => "",
            };
            if snaps.is_null(r) {
                return Err(null("snapshot", r));
            }
            f(user, snaps.value(r));
        }
        first += batch.num_rows();
    }
    Ok(())
}

/// The distinct snapshot times in the table (reads the `snapshot` column of every row).
pub fn snapshots_in(path: &Path) -> Result<Vec<Timestamp>, AggregatesError> {
    let mut seen = std::collections::BTreeSet::new();
    for file in table_files(path)? {
        user_snapshots_in(&file, false, &mut |_, t| {
            seen.insert(t);
        })?;
    }
    Ok(seen.into_iter().collect())
}

/// A whole table in memory, for training: per snapshot time, every user's aggregate and label
/// counts, users indexed in order of first appearance.
#[derive(Debug, Default)]
pub struct AggregatesTable {
    pub path: PathBuf,
    pub user_ids: Vec<String>,
    pub index: HashMap<String, u32>,
    /// Sorted snapshot times; `aggs[s]`, `label_orders[s]` and `label_events[s]` belong to
    /// `snapshots[s]`, indexed by user.
    pub snapshots: Vec<Timestamp>,
    pub horizon_days: u32,
    pub aggs: Vec<Vec<UserAggregate>>,
    pub label_orders: Vec<Vec<u32>>,
    pub label_events: Vec<Vec<u32>>,
}

impl AggregatesTable {
    /// Reads the table at `path`. A user without a row at some snapshot gets an empty aggregate
    /// there (with the registration time of its other rows).
    pub fn load(path: &Path) -> Result<AggregatesTable, AggregatesError> {
        AggregatesTable::load_where(path, snapshots_in(path)?, &|_| true)
    }

    /// Reads the rows of the users `keep` accepts (a sample: the rest is skipped undecoded), at
    /// the table's `snapshots` (from [`snapshots_in`] or [`for_each_user_snapshot`]).
    pub fn load_where(
        path: &Path,
        snapshots: Vec<Timestamp>,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<AggregatesTable, AggregatesError> {
        let mut t = AggregatesTable {
            path: path.to_path_buf(),
            aggs: vec![Vec::new(); snapshots.len()],
            label_orders: vec![Vec::new(); snapshots.len()],
            label_events: vec![Vec::new(); snapshots.len()],
            snapshots,
            ..AggregatesTable::default()
        };
        let mut horizon = None;
        // As many part files at a time as there are cores, placed in table order (so users
        // are indexed as a sequential read indexes them); the first failing file is reported.
        let files = table_files(path)?;
        for group in files.chunks(rayon::current_num_threads().max(1)) {
            use rayon::prelude::*;
            let read: Vec<Result<Vec<AggregateRow>, AggregatesError>> = group
                .par_iter()
                .map(|file| {
                    let mut rows = Vec::new();
                    for_each_batch_where::<AggregatesError>(file, &|id, _| keep(id), |batch| {
                        rows.extend(batch);
                        Ok(())
                    })?;
                    Ok(rows)
                })
                .collect();
            for rows in read {
                for r in rows? {
                    if *horizon.get_or_insert(r.horizon_days) != r.horizon_days {
                        return Err(AggregatesError::Horizon {
                            path: path.to_path_buf(),
                            wanted: horizon.unwrap_or(0),
                            found: r.horizon_days,
                        });
                    }
                    t.place(r);
                }
            }
        }
        t.horizon_days = horizon.unwrap_or(0);
        t.fill_registration();
        Ok(t)
    }

    fn place(&mut self, r: AggregateRow) {
        let n = self.user_ids.len() as u32;
        let u = *self.index.entry(r.user_id.clone()).or_insert(n) as usize;
        if u == self.user_ids.len() {
            self.user_ids.push(r.user_id);
        }
        let Ok(s) = self.snapshots.binary_search(&r.snapshot) else {
            return;
        };
        if self.aggs[s].len() <= u {
            self.aggs[s].resize(u + 1, UserAggregate::default());
            self.label_orders[s].resize(u + 1, 0);
            self.label_events[s].resize(u + 1, 0);
        }
        self.aggs[s][u] = r.agg;
        self.label_orders[s][u] = r.label_orders;
        self.label_events[s][u] = r.label_events;
    }

    /// Pads every snapshot to all users; a missing row takes the user's registration time.
    fn fill_registration(&mut self) {
        let n = self.user_ids.len();
        let mut registered = vec![UserAggregate::NONE; n];
        for snap in &self.aggs {
            for (u, a) in snap.iter().enumerate() {
                if a.registered_at != UserAggregate::NONE {
                    registered[u] = a.registered_at;
                }
            }
        }
        for s in 0..self.aggs.len() {
            let have = self.aggs[s].len();
            self.aggs[s].resize(n, UserAggregate::default());
            self.label_orders[s].resize(n, 0);
            self.label_events[s].resize(n, 0);
            for (u, (a, &r)) in self.aggs[s].iter_mut().zip(&registered).enumerate() {
                if u >= have || *a == UserAggregate::default() {
                    a.registered_at = r;
                }
            }
        }
    }

    /// The index of snapshot `t`, or an error naming the snapshots the table holds.
    pub fn snapshot_index(&self, t: Timestamp) -> Result<usize, AggregatesError> {
        self.snapshots
            .binary_search(&t)
            .map_err(|_| AggregatesError::SnapshotMissing {
                path: self.path.clone(),
                wanted: crate::features::format_rfc3339(t),
                held: self
                    .snapshots
                    .iter()
                    .map(|&s| crate::features::format_rfc3339(s))
                    .collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{purchase_summary, Event, EventKind, DAY};

    fn row(user: &str, snapshot: Timestamp) -> AggregateRow {
        let mut agg = UserAggregate::with_registration(Some(1_700_000_000));
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            agg.apply(&Event {
                ts: 1_700_000_000 + i as i64 * DAY,
                kind: *kind,
                amount: 12.5,
                watch_seconds: 30,
                room: 11 + i as u32,
                category: 3 + (i % 3) as u32,
                order: 5,
                channel: [0u8, 2, 6, 3][i % 4],
            });
        }
        AggregateRow {
            user_id: user.into(),
            snapshot,
            horizon_days: 30,
            agg,
            label_orders: 2,
            label_events: 9,
        }
    }

    #[test]
    fn a_written_table_reads_back_row_for_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aggs.parquet");
        let mut w = AggregatesWriter::create(&path).unwrap();
        let rows = vec![
            row("a", 1_800_000_000),
            row("b", 1_800_000_000),
            AggregateRow {
                agg: UserAggregate::default(),
                ..row("c", 1_700_000_000)
            },
        ];
        for r in &rows {
            w.write(r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 3);
        let mut back = Vec::new();
        for_each_batch::<AggregatesError>(&path, |b| {
            back.extend(b);
            Ok(())
        })
        .unwrap();
        // The order memory is not in the table: compare without it. The interests and rooms
        // come back as the same ranked ids and levels (slots in rank order), the channel mix
        // and the first order day as they are.
        assert!(rows[0].agg.interests.len() == 3 && rows[0].agg.channels.non_live().len() == 3);
        assert_eq!(rows[0].agg.rooms.len(), 2);
        assert_eq!(rows[0].agg.first_day_cents, 1250);
        let strip = |mut r: AggregateRow| {
            r.agg.recent_orders = Default::default();
            r.agg.interests = Default::default();
            r.agg.rooms = Default::default();
            r
        };
        for (b, r) in back.iter().zip(&rows) {
            assert_eq!(b.agg.interests.ranked(), r.agg.interests.ranked());
            assert_eq!(b.agg.rooms.ranked(), r.agg.rooms.ranked());
            assert_eq!(b.agg.channels, r.agg.channels);
            assert_eq!(
                (b.agg.first_order_day, b.agg.first_day_cents),
                (r.agg.first_order_day, r.agg.first_day_cents)
            );
        }
        let want: Vec<AggregateRow> = rows.into_iter().map(strip).collect();
        let back: Vec<AggregateRow> = back.into_iter().map(strip).collect();
        assert_eq!(back, want);
        let t = AggregatesTable::load(&path).unwrap();
        assert_eq!(t.snapshots, vec![1_700_000_000, 1_800_000_000]);
        assert_eq!(t.user_ids, vec!["a", "b", "c"]);
        assert_eq!(strip_row(t.aggs[1][0]), want[0].agg);
        assert_eq!(t.aggs[0][0].registered_at, 1_700_000_000, "padded");
        assert_eq!(t.label_events[1][1], 9);
    }

    fn strip_row(mut a: UserAggregate) -> UserAggregate {
        a.interests = Default::default();
        a.rooms = Default::default();
        a
    }

    /// `path`'s table with the columns of `drop` removed and `schema_version` set to
    /// `version`, written to `out`.
    fn as_version(path: &Path, out: &Path, drop: &[&str], version: i64) -> RecordBatch {
        let all = read_all(path);
        let keep: Vec<usize> = (0..all.num_columns())
            .filter(|&i| !drop.contains(&all.schema().field(i).name().as_str()))
            .collect();
        let stripped = all.project(&keep).unwrap();
        let at = stripped.schema().index_of("schema_version").unwrap();
        let mut cols = stripped.columns().to_vec();
        cols[at] = Arc::new(arrow_array::Int64Array::from(vec![version; all.num_rows()]));
        let batch = RecordBatch::try_new(stripped.schema(), cols).unwrap();
        write_batch(out, &batch);
        batch
    }

    /// A version 2 table (no first order day, no rooms) still reads: a buyer's first order day
    /// is unknown (training then fits Gamma-Gamma on the all-orders basis), the rooms are
    /// empty, the rest as written; a version 3 row without those columns is refused.
    #[test]
    fn a_version_2_table_reads_with_unknown_first_order_days_and_no_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.parquet");
        let mut w = AggregatesWriter::create(&path).unwrap();
        let buyer = row("a", 1_800_000_000);
        let viewer = AggregateRow {
            agg: UserAggregate::default(),
            ..row("b", 1_800_000_000)
        };
        // A buyer who watched 40 days before the first order (BG/NBD counts from the order).
        let mut watcher = UserAggregate::default();
        for (day, kind, amount) in [(0, EventKind::View, 0.0), (40, EventKind::Order, 9.0)] {
            watcher.apply(&Event {
                ts: 1_700_000_000 + day * DAY,
                kind,
                amount,
                watch_seconds: 30,
                room: 0,
                category: 0,
                order: 0,
                channel: 0,
            });
        }
        let watcher = AggregateRow {
            agg: watcher,
            ..row("c", 1_800_000_000)
        };
        w.write(&buyer).unwrap();
        w.write(&viewer).unwrap();
        w.write(&watcher).unwrap();
        w.finish().unwrap();
        let v3_columns: Vec<&str> = V3_INT_COLUMNS
            .iter()
            .chain(&V3_FLOAT_COLUMNS)
            .copied()
            .collect();
        let v2 = dir.path().join("v2.parquet");
        as_version(&path, &v2, &v3_columns, 3);
        let e = AggregatesTable::load(&v2).unwrap_err().to_string();
        assert!(e.contains("missing column \"first_order_day\""), "{e}");
        as_version(&path, &v2, &v3_columns, 2);
        let t = AggregatesTable::load(&v2).unwrap();
        let (a, b) = (t.aggs[0][0], t.aggs[0][1]);
        assert_eq!(a.first_order_day, UserAggregate::UNKNOWN_DAY);
        assert_eq!(a.first_and_repeat_spend(), None);
        assert!(a.rooms.is_empty() && !buyer.agg.rooms.is_empty());
        assert_eq!(a.interests.ranked(), buyer.agg.interests.ranked());
        assert_eq!((a.orders, a.spend), (buyer.agg.orders, buyer.agg.spend));
        assert_eq!(b.first_order_day, UserAggregate::NO_DAY);
        // Without the first order day, the purchase summary counts from the first event (the
        // documented fallback): 40 days longer for the user who watched first.
        let snapshot = 1_800_000_000;
        let first_seen = purchase_summary(&t.aggs[0][2], snapshot).map(|s| s.2);
        let from_order = purchase_summary(&watcher.agg, snapshot).map(|s| s.2);
        assert_eq!(first_seen, from_order.map(|age| age + 40.0));
        // The version 3 table itself holds them.
        let t = AggregatesTable::load(&path).unwrap();
        assert_eq!(
            purchase_summary(&t.aggs[0][2], snapshot),
            purchase_summary(&watcher.agg, snapshot)
        );
        assert_eq!(t.aggs[0][0].first_day_cents, 1250);
        assert_eq!(t.aggs[0][0].first_order_day, buyer.agg.first_order_day);
        assert_eq!(t.aggs[0][0].rooms.ranked(), buyer.agg.rooms.ranked());
        assert_eq!(t.aggs[0][1].first_order_day, UserAggregate::NO_DAY);
    }

    /// A version 1 table (no interest or channel columns, `schema_version` 1) still reads, with
    /// empty interests and channel mix; a version 2 row without those columns is refused.
    #[test]
    fn a_version_1_table_reads_with_empty_interests_and_channels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.parquet");
        let mut w = AggregatesWriter::create(&path).unwrap();
        w.write(&row("a", 1_800_000_000)).unwrap();
        w.finish().unwrap();
        let added: Vec<&str> = V2_INT_COLUMNS
            .iter()
            .chain(&V2_FLOAT_COLUMNS)
            .chain(&V3_INT_COLUMNS)
            .chain(&V3_FLOAT_COLUMNS)
            .copied()
            .collect();
        let v1 = dir.path().join("v1.parquet");
        as_version(&path, &v1, &added, 2);
        let e = AggregatesTable::load(&v1).unwrap_err().to_string();
        assert!(e.contains("missing column \"interest_category_0\""), "{e}");
        assert!(e.contains("v1.parquet"), "{e}");

        as_version(&path, &v1, &added, 1);
        let t = AggregatesTable::load(&v1).unwrap();
        let a = t.aggs[0][0];
        assert!(a.interests.is_empty() && a.rooms.is_empty());
        assert_eq!(a.channels, Default::default());
        assert_eq!(a.orders, row("a", 0).agg.orders);
        assert_eq!(a.first_order_day, UserAggregate::UNKNOWN_DAY);
    }

    fn read_all(path: &Path) -> RecordBatch {
        let f = std::fs::File::open(path).unwrap();
        let mut r = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        r.next().unwrap().unwrap()
    }

    fn write_batch(path: &Path, batch: &RecordBatch) {
        let f = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn a_directory_of_part_files_reads_as_one_table_skipping_markers() {
        let dir = tempfile::tempdir().unwrap();
        for (i, u) in ["a", "b"].iter().enumerate() {
            let mut w = AggregatesWriter::create(&dir.path().join(format!("part-0000{i}.parquet")))
                .unwrap();
            w.write(&row(u, 1_800_000_000)).unwrap();
            w.finish().unwrap();
        }
        std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
        std::fs::write(dir.path().join(".part-00000.parquet.crc"), "x").unwrap();
        let t = AggregatesTable::load(dir.path()).unwrap();
        assert_eq!(t.user_ids, vec!["a", "b"]);
        assert_eq!(t.horizon_days, 30);
    }

    /// Batches are decoded in blocks on all cores: the rows still come back in table order,
    /// and a bad row in a later block of a selected read is named with its row in the file.
    #[test]
    fn rows_decoded_in_blocks_keep_their_order_and_a_bad_row_its_file_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aggs.parquet");
        let n = 3 * DECODE_BLOCK_ROWS + 17;
        let mut w = AggregatesWriter::create(&path).unwrap();
        for i in 0..n {
            w.write(&row(&format!("u{i}"), 1_800_000_000 + (i % 2) as i64))
                .unwrap();
        }
        w.finish().unwrap();
        let mut ids = Vec::new();
        for_each_batch_where::<AggregatesError>(&path, &|_, t| t == 1_800_000_000, |b| {
            ids.extend(b.into_iter().map(|r| r.user_id));
            Ok(())
        })
        .unwrap();
        let want: Vec<String> = (0..n).step_by(2).map(|i| format!("u{i}")).collect();
        assert_eq!(ids, want);
        // Selected by the snapshot column alone (no user ids read): the same rows.
        let mut at = Vec::new();
        for_each_batch_at::<AggregatesError>(&path, 1_800_000_001, |b| {
            at.extend(b);
            Ok(())
        })
        .unwrap();
        let odd: Vec<String> = (1..n).step_by(2).map(|i| format!("u{i}")).collect();
        assert_eq!(
            at.iter().map(|r| &r.user_id).collect::<Vec<_>>(),
            odd.iter().collect::<Vec<_>>()
        );
        assert!(at
            .iter()
            .all(|r| r.snapshot == 1_800_000_001 && r.agg == at[0].agg));
        assert_eq!(snapshots_in(&path).unwrap(), [1_800_000_000, 1_800_000_001]);

        // File row `bad` (even: selected, the 2nd decoding block of the selection) gets -1
        // orders.
        let bad = 2 * DECODE_BLOCK_ROWS + 6;
        let f = std::fs::File::open(&path).unwrap();
        let mut batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .with_batch_size(n)
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(batches.len(), 1);
        let batch = batches.remove(0);
        let at = batch.schema().index_of("orders").unwrap();
        let mut orders: Vec<i64> = batch
            .column(at)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        orders[bad] = -1;
        let mut cols = batch.columns().to_vec();
        cols[at] = Arc::new(arrow_array::Int64Array::from(orders));
        write_batch(&path, &RecordBatch::try_new(batch.schema(), cols).unwrap());
        let e =
            for_each_batch_where::<AggregatesError>(&path, &|_, t| t == 1_800_000_000, |_| Ok(()))
                .unwrap_err();
        assert!(
            matches!(&e, AggregatesError::OutOfRange { column: "orders", row, value: -1, .. } if *row == bad),
            "{e}"
        );
    }

    /// Part files are read in parallel for training: users are still indexed in table order
    /// (file by file), as a sequential read indexes them.
    #[test]
    fn a_table_of_many_part_files_loads_its_users_in_table_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for part in 0..7 {
            let mut w =
                AggregatesWriter::create(&dir.path().join(format!("part-{part:05}.parquet")))
                    .unwrap();
            for i in 0..50 {
                let id = format!("p{part}-u{}", 49 - i);
                w.write(&row(&id, 1_800_000_000)).unwrap();
                want.push(id);
            }
            w.finish().unwrap();
        }
        let t =
            AggregatesTable::load_where(dir.path(), vec![1_800_000_000], &|id| !id.ends_with('7'))
                .unwrap();
        want.retain(|id| !id.ends_with('7'));
        assert_eq!(t.user_ids, want);
        assert_eq!(t.aggs[0].len(), want.len());
    }

    #[test]
    fn a_snapshot_not_in_the_table_is_named_with_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aggs.parquet");
        let mut w = AggregatesWriter::create(&path).unwrap();
        w.write(&row("a", 1_800_000_000)).unwrap();
        w.finish().unwrap();
        let t = AggregatesTable::load(&path).unwrap();
        let e = t.snapshot_index(1_800_000_001).unwrap_err().to_string();
        assert!(e.contains("aggs.parquet"), "{e}");
        assert!(e.contains("\"snapshot\""), "{e}");
        assert!(e.contains("2027-01-15T08:00:00Z"), "{e}");
    }
}
