//! Parquet: columns by name, the types the data contract allows in each (checked up front, so a
//! wrong type is one clear error naming the column rather than a bad value per row).
//!
//! Accepted types: text columns as Utf8, LargeUtf8, Utf8View, the Binary variants (checked as
//! UTF-8) or a dictionary of those; `ts` / `registered_at` also as Timestamp (any unit, any time
//! zone: the values are UTC), Date32 or Date64; `amount` also as any float, integer or decimal
//! (32/64/128); `watch_seconds` also as any integer. An all-null column (type Null) is accepted
//! anywhere and reads as empty.

mod columns;

use super::fields::{self, Cause, Col, Fault, Layout, TableKind};
use super::{Budget, Cell, Location, ReadError, RowRef, UserIndex, UsersSink};
use crate::features::vocabulary::KindResolver;
use crate::features::{EventKind, EventTable, Timestamp};
use arrow_array::{Array, RecordBatch};
use columns::{accepts, expected, Nums, Text, Times};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use sha2::Sha256;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Fingerprint: a second thread streams the file through the hasher while this one decodes.

fn hash_file(path: &Path, mut hasher: Sha256, stop: &AtomicBool) -> io::Result<Sha256> {
    use sha2::Digest;
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

/// Runs `read` while another thread feeds the file's bytes to `hasher`.
fn with_fingerprint<T>(
    path: &Path,
    hasher: &mut Sha256,
    read: impl FnOnce() -> Result<T, ReadError>,
) -> Result<T, ReadError> {
    let state = std::mem::take(hasher);
    let stop = AtomicBool::new(false);
    let stop_ref = &stop;
    std::thread::scope(|s| {
        let job = s.spawn(move || hash_file(path, state, stop_ref));
        let out = read();
        if out.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let hashed = job
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the fingerprint thread panicked")));
        let value = out?;
        *hasher = hashed.map_err(|e| super::io_error(path, e))?;
        Ok(value)
    })
}

// ---------------------------------------------------------------------------------------------
// Files

/// An open file: the batch reader, where the known columns are in the file, and where they are
/// in each (projected) batch.
struct Opened {
    reader: ParquetRecordBatchReader,
    layout: Layout,
    /// Known columns present, in file order: (position in the file, column); a batch holds them
    /// in this order.
    present: Vec<(usize, Col)>,
    rows: u64,
}

impl Opened {
    /// The position of `col` in a batch.
    fn batch_pos(&self, col: Col) -> Option<usize> {
        self.present.iter().position(|&(_, c)| c == col)
    }

    fn wrong_type(&self, path: &Path, batch: &RecordBatch, col: Col) -> ReadError {
        let found = self.batch_pos(col).map_or_else(
            || "nothing".to_string(),
            |p| batch.column(p).data_type().to_string(),
        );
        ReadError::WrongType {
            path: path.to_path_buf(),
            column: col.name(),
            index: self.layout.get(col).map_or(0, |i| i + 1),
            found,
            expected: expected(col),
        }
    }

    fn column<'b, T>(
        &self,
        path: &Path,
        batch: &'b RecordBatch,
        col: Col,
        new: impl Fn(&'b dyn Array) -> Option<T>,
    ) -> Result<Option<T>, ReadError> {
        match self.batch_pos(col) {
            None => Ok(None),
            Some(p) => new(batch.column(p).as_ref())
                .map(Some)
                .ok_or_else(|| self.wrong_type(path, batch, col)),
        }
    }

    fn required<'b, T>(
        &self,
        path: &Path,
        batch: &'b RecordBatch,
        col: Col,
        new: impl Fn(&'b dyn Array) -> Option<T>,
    ) -> Result<T, ReadError> {
        self.column(path, batch, col, new)?
            .ok_or_else(|| self.wrong_type(path, batch, col))
    }

    fn cell(&self, path: &Path, row: u64, col: Col) -> Cell {
        Cell {
            file: path.to_path_buf(),
            row: RowRef::Row(row),
            column: self.layout.get(col).map(|i| i + 1),
            name: col.name(),
        }
    }
}

fn open(path: &Path, table: TableKind) -> Result<Opened, ReadError> {
    let parquet_error = |source| ReadError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| super::io_error(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    let schema = builder.schema().clone();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let layout =
        Layout::resolve(&header, table).map_err(|e| ReadError::header(e, path, None, &header))?;
    let present = layout.present();
    for &(i, col) in &present {
        let dt = schema.field(i).data_type();
        if !accepts(col, dt) {
            return Err(ReadError::WrongType {
                path: path.to_path_buf(),
                column: col.name(),
                index: i + 1,
                found: dt.to_string(),
                expected: expected(col),
            });
        }
    }
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let mask = ProjectionMask::roots(builder.parquet_schema(), present.iter().map(|&(i, _)| i));
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(parquet_error)?;
    Ok(Opened {
        reader,
        layout,
        present,
        rows,
    })
}

/// The events columns of one batch.
struct EventBatch<'a> {
    /// The earliest accepted event time ([`Layout::earliest`]).
    earliest: Timestamp,
    /// The kind mapping ([`Layout::kinds`]).
    kinds: &'a KindResolver,
    user: Text<'a>,
    ts: Times<'a>,
    kind: Text<'a>,
    amount: Option<Nums<'a>>,
    watch: Option<Nums<'a>>,
    room: Option<Text<'a>>,
    category: Option<Text<'a>>,
    order: Option<Text<'a>>,
    channel: Option<Text<'a>>,
}

impl<'a> EventBatch<'a> {
    fn new(o: &'a Opened, path: &Path, b: &'a RecordBatch) -> Result<EventBatch<'a>, ReadError> {
        Ok(EventBatch {
            earliest: o.layout.earliest,
            kinds: &o.layout.kinds,
            user: o.required(path, b, Col::UserId, Text::new)?,
            ts: o.required(path, b, Col::Ts, Times::new)?,
            kind: o.required(path, b, Col::Kind, Text::new)?,
            amount: o.column(path, b, Col::Amount, Nums::new)?,
            watch: o.column(path, b, Col::WatchSeconds, Nums::new)?,
            room: o.column(path, b, Col::RoomId, Text::new)?,
            category: o.column(path, b, Col::Category, Text::new)?,
            order: o.column(path, b, Col::OrderId, Text::new)?,
            channel: o.column(path, b, Col::Channel, Text::new)?,
        })
    }

    /// The value of `col` at row `i`, for a message.
    #[cold]
    fn show(&self, col: Col, i: usize) -> String {
        let text = |t: &Option<Text<'_>>| {
            t.as_ref()
                .map_or_else(String::new, |t| fields::shown(t.bytes(i)))
        };
        let nums = |n: &Option<Nums<'_>>| n.as_ref().map_or_else(String::new, |n| n.show(i));
        match col {
            Col::UserId => fields::shown(self.user.bytes(i)),
            Col::Ts => self.ts.show(i),
            Col::Kind => fields::shown(self.kind.bytes(i)),
            Col::Amount => nums(&self.amount),
            Col::WatchSeconds => nums(&self.watch),
            Col::RoomId => text(&self.room),
            Col::Category => text(&self.category),
            Col::OrderId => text(&self.order),
            Col::Channel => text(&self.channel),
            Col::RegisteredAt | Col::Persona => String::new(),
        }
    }

    /// Row `i` into the table; nothing is added (not even the user) if the row is bad.
    #[inline]
    fn push(&self, i: usize, table: &mut EventTable, users: &mut UserIndex) -> Result<(), Fault> {
        users.push_event(table, self.user.bytes(i), &ParquetEvent { batch: self, i })
    }
}

/// Row `i` of a batch after the user id, for [`fields::event`].
struct ParquetEvent<'b, 'a> {
    batch: &'b EventBatch<'a>,
    i: usize,
}

impl fields::EventFields for ParquetEvent<'_, '_> {
    #[inline]
    fn earliest(&self) -> Timestamp {
        self.batch.earliest
    }
    #[inline]
    fn ts(&self) -> Result<Timestamp, Cause> {
        self.batch.ts.get(self.i)?.ok_or(Cause::Timestamp)
    }
    #[inline]
    fn kind_field(&self) -> &[u8] {
        self.batch.kind.bytes(self.i)
    }
    #[inline]
    fn kinds(&self) -> &KindResolver {
        self.batch.kinds
    }
    #[inline]
    fn amount(&self, kind: EventKind) -> Result<f64, Cause> {
        match &self.batch.amount {
            Some(a) => a.amount(self.i, kind),
            None => fields::check_amount(kind, None),
        }
    }
    #[inline]
    fn watch_seconds(&self) -> Result<u32, Cause> {
        self.batch.watch.as_ref().map_or(Ok(0), |w| w.watch(self.i))
    }
    #[inline]
    fn room(&self) -> Result<u32, Cause> {
        hashed_or_zero(self.batch.room.as_ref(), self.i)
    }
    #[inline]
    fn category(&self) -> Result<u32, Cause> {
        hashed_or_zero(self.batch.category.as_ref(), self.i)
    }
    #[inline]
    fn order(&self) -> Result<u32, Cause> {
        self.batch
            .order
            .as_ref()
            .map_or(Ok(0), |t| fields::hashed(t.bytes(self.i).trim_ascii()))
    }
    #[inline]
    fn category_raw(&self) -> &[u8] {
        self.batch
            .category
            .as_ref()
            .map_or(&[], |t| t.bytes(self.i))
    }
    #[inline]
    fn channel_raw(&self) -> &[u8] {
        self.batch.channel.as_ref().map_or(&[], |t| t.bytes(self.i))
    }
    #[inline]
    fn room_raw(&self) -> &[u8] {
        self.batch.room.as_ref().map_or(&[], |t| t.bytes(self.i))
    }
}

/// A room or category column's hash at row `i`; 0 when the file has no such column.
#[inline]
fn hashed_or_zero(column: Option<&Text<'_>>, i: usize) -> Result<u32, Cause> {
    column.map_or(Ok(0), |t| fields::hashed(t.bytes(i)))
}

pub(super) fn read_events(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
    earliest: Timestamp,
    kinds: &std::sync::Arc<KindResolver>,
) -> Result<(), ReadError> {
    with_fingerprint(path, hasher, || {
        let mut o = open(path, TableKind::Events)?;
        o.layout.earliest = earliest;
        o.layout.kinds = kinds.clone();
        table.columns.order_id = o.layout.get(Col::OrderId).is_some();
        table.columns.watch_seconds = o.layout.get(Col::WatchSeconds).is_some();
        table.columns.room_id = o.layout.get(Col::RoomId).is_some();
        table.columns.category = o.layout.get(Col::Category).is_some();
        table.columns.channel = o.layout.get(Col::Channel).is_some();
        table.reserve(usize::try_from(o.rows).unwrap_or(0));
        let mut users = UserIndex::default();
        let mut done: u64 = 0;
        while let Some(batch) = o.reader.next() {
            let batch = batch.map_err(|source| ReadError::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
            let cols = EventBatch::new(&o, path, &batch)?;
            for i in 0..batch.num_rows() {
                if let Err(fault) = cols.push(i, table, &mut users) {
                    let row = done + i as u64 + 1;
                    let e = match fault {
                        Fault::Field { col, cause } => ReadError::field(
                            cause,
                            o.cell(path, row, col),
                            cols.show(col, i).as_bytes(),
                            o.layout.earliest,
                        ),
                        // Parquet rows always have every column; kept for completeness.
                        Fault::FieldCount { found } => ReadError::FieldCount {
                            at: Location {
                                file: path.to_path_buf(),
                                row: Some(RowRef::Row(row)),
                            },
                            expected: o.layout.width,
                            found,
                            column: String::new(),
                        },
                    };
                    budget.absorb(e)?;
                }
            }
            done += batch.num_rows() as u64;
        }
        Ok(())
    })
}

pub(super) fn read_users(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
) -> Result<Option<Vec<Option<String>>>, ReadError> {
    with_fingerprint(path, hasher, || {
        let mut o = open(path, TableKind::Users)?;
        let mut sink = UsersSink::new(table, o.layout.get(Col::Persona).is_some());
        let mut done: u64 = 0;
        while let Some(batch) = o.reader.next() {
            let batch = batch.map_err(|source| ReadError::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
            let user = o.required(path, &batch, Col::UserId, Text::new)?;
            let registered = o.required(path, &batch, Col::RegisteredAt, Times::new)?;
            let persona = o.column(path, &batch, Col::Persona, Text::new)?;
            for i in 0..batch.num_rows() {
                let row = (|| {
                    let id = fields::user_id(user.bytes(i)).map_err(Fault::at(Col::UserId))?;
                    let at = registered.get(i).map_err(Fault::at(Col::RegisteredAt))?;
                    let p = match &persona {
                        Some(t) => fields::persona(t.bytes(i)).map_err(Fault::at(Col::Persona))?,
                        None => None,
                    };
                    sink.add(id, at, p).map_err(Fault::at(Col::UserId))
                })();
                if let Err(Fault::Field { col, cause }) = row {
                    let raw = match col {
                        Col::RegisteredAt => registered.show(i),
                        Col::Persona => persona
                            .as_ref()
                            .map_or_else(String::new, |t| fields::shown(t.bytes(i))),
                        _ => fields::shown(user.bytes(i)),
                    };
                    budget.absorb(ReadError::field(
                        cause,
                        o.cell(path, done + i as u64 + 1, col),
                        raw.as_bytes(),
                        o.layout.earliest,
                    ))?;
                }
            }
            done += batch.num_rows() as u64;
        }
        Ok(sink.finish())
    })
}
