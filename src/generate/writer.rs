//! Streaming writers for `tiering generate`: the events and users tables, CSV or Parquet.
//!
//! Rows arrive one user at a time ([`super::generate`]'s sink) and leave through a buffer, so
//! memory stays flat however many users are written. Fields are formatted by hand into stack
//! buffers (timestamps, amounts, ids): no allocation per row.
//!
//! [`GeneratedWriter`] writes both tables into a directory through
//! [`AtomicFile`]s and puts them in place in [`GeneratedWriter::finish`]; a run that is killed or
//! fails leaves no half-written file under a final name (a failed or dropped writer also removes
//! its temporaries). Failures are the table writers' [`WriteError`], naming the file.

use super::{civil_from_days, order_id, GeneratedEvent, GeneratedUser, CATEGORIES};
use crate::features::{EventKind, Timestamp, DAY};
use crate::io::atomic::AtomicFile;
use crate::io::write::{WriteCause, WriteError};
use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Column names of the events table (the data contract's order).
pub(crate) const EVENT_COLUMNS: [&str; 8] = [
    "user_id",
    "ts",
    "kind",
    "amount",
    "watch_seconds",
    "room_id",
    "category",
    "order_id",
];

/// The kind names written to the events table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vocabulary {
    /// The canonical names (`order`, `view`, `like`, ..., `refund`).
    #[default]
    Canonical,
    /// Platform-style names ([`Vocabulary::PLATFORM`]) that training maps back with the
    /// `[events]` table of [`Vocabulary::train_toml`].
    Platform,
}

impl Vocabulary {
    /// Canonical kind and the platform-style name written for it.
    pub const PLATFORM: [(EventKind, &'static str); 8] = [
        (EventKind::Order, "pay_success"),
        (EventKind::View, "enter_room"),
        (EventKind::Comment, "comment"),
        (EventKind::Like, "thumbs_up"),
        (EventKind::Share, "share"),
        (EventKind::Follow, "follow"),
        (EventKind::Gift, "send_gift"),
        (EventKind::Refund, "refund"),
    ];

    /// The name written for `kind`.
    pub fn name(self, kind: EventKind) -> &'static str {
        match self {
            Vocabulary::Canonical => kind.as_str(),
            Vocabulary::Platform => Self::PLATFORM
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(kind.as_str(), |(_, n)| n),
        }
    }

    /// A training configuration whose `[events]` table maps this vocabulary to the canonical
    /// kinds (`tiering generate` writes it as `train.toml` next to the data); `None` for the
    /// canonical vocabulary, which needs no mapping.
    pub fn train_toml(self) -> Option<String> {
        if self == Vocabulary::Canonical {
            return None;
        }
        let mut s = String::from(
            "# Written by `tiering generate --vocabulary platform`: maps the platform-style kind\n\
             # names of events.* to the canonical kinds. Use it with `tiering train --config`.\n\
             [events]\nunknown_kinds = \"error\"\n\n[events.kinds]\n",
        );
        for (kind, name) in Self::PLATFORM {
            s.push_str(&format!("{name} = \"{}\"\n", kind.as_str()));
        }
        Some(s)
    }
}

/// Column names of the users table. `persona` is ground truth, ignored by the readers.
pub(crate) const USER_COLUMNS: [&str; 3] = ["user_id", "registered_at", "persona"];

/// Rows per Parquet row group.
pub(crate) const ROW_GROUP_ROWS: usize = 1 << 20;

/// Rows per Arrow batch handed to the Parquet writer (it assembles row groups from them).
const BATCH_ROWS: usize = 1 << 16;

/// Bytes buffered in front of each CSV file.
const CSV_BUFFER: usize = 1 << 18;

/// Output file format of the generated tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratedFormat {
    Csv,
    Parquet,
}

impl GeneratedFormat {
    pub fn extension(self) -> &'static str {
        match self {
            GeneratedFormat::Csv => "csv",
            GeneratedFormat::Parquet => "parquet",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field formatting

/// Writes `n` in decimal, zero-padded to at least `width` digits, at the start of `buf`; returns
/// the length. `buf` must hold 20 bytes (the longest u64).
fn put_u64(buf: &mut [u8], mut n: u64, width: usize) -> usize {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    while n > 0 || i == tmp.len() {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let digits = tmp.len() - i;
    let len = digits.max(width.min(tmp.len()));
    let pad = len - digits;
    buf[..pad].fill(b'0');
    buf[pad..len].copy_from_slice(&tmp[i..]);
    len
}

fn put_2(buf: &mut [u8], n: u32) {
    buf[0] = b'0' + (n / 10) as u8;
    buf[1] = b'0' + (n % 10) as u8;
}

/// RFC 3339 UTC seconds (`2026-05-01T12:34:56Z`) without a date library or an allocation: the
/// date part is recomputed only when the day changes (a user's events are sorted by time).
#[derive(Debug, Clone)]
pub(crate) struct TsFormatter {
    day: i64,
    buf: [u8; 20],
}

impl Default for TsFormatter {
    fn default() -> Self {
        TsFormatter {
            day: i64::MIN,
            buf: *b"0000-00-00T00:00:00Z",
        }
    }
}

impl TsFormatter {
    /// The text of `ts`; years outside 0..=9999 are clamped (the generator never makes them).
    pub fn format(&mut self, ts: Timestamp) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(self.format_bytes(ts)).unwrap_or_default()
    }

    /// [`TsFormatter::format`] as bytes, for the CSV writer.
    pub(crate) fn format_bytes(&mut self, ts: Timestamp) -> &[u8] {
        let day = ts.div_euclid(DAY);
        let sod = ts.rem_euclid(DAY) as u32;
        if day != self.day {
            self.day = day;
            let (y, m, d) = civil_from_days(day);
            let y = y.clamp(0, 9999) as u32;
            put_2(&mut self.buf[0..2], y / 100);
            put_2(&mut self.buf[2..4], y % 100);
            put_2(&mut self.buf[5..7], m);
            put_2(&mut self.buf[8..10], d);
        }
        put_2(&mut self.buf[11..13], sod / 3600);
        put_2(&mut self.buf[14..16], sod / 60 % 60);
        put_2(&mut self.buf[17..19], sod % 60);
        &self.buf
    }
}

/// A short ASCII field built in place.
struct Field20 {
    buf: [u8; 24],
    len: usize,
}

impl Field20 {
    fn new() -> Self {
        Field20 {
            buf: [0; 24],
            len: 0,
        }
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
    /// `prefix` then `n` zero-padded to `width`.
    fn set_id(&mut self, prefix: &[u8], n: u64, width: usize) -> &mut Self {
        self.buf[..prefix.len()].copy_from_slice(prefix);
        self.len = prefix.len() + put_u64(&mut self.buf[prefix.len()..], n, width);
        self
    }
    /// Cents as a decimal with two places: `12345` -> `123.45`.
    fn set_cents(&mut self, cents: u32) -> &mut Self {
        let whole = put_u64(&mut self.buf, u64::from(cents / 100), 1);
        self.buf[whole] = b'.';
        put_2(&mut self.buf[whole + 1..], cents % 100);
        self.len = whole + 3;
        self
    }
    fn set_u64(&mut self, n: u64) -> &mut Self {
        self.len = put_u64(&mut self.buf, n, 1);
        self
    }
}

/// The formatted fields of one user, reused across rows.
struct RowFields {
    user: Field20,
    amount: Field20,
    watch: Field20,
    room: Field20,
    ts: TsFormatter,
}

impl RowFields {
    fn new() -> Self {
        RowFields {
            user: Field20::new(),
            amount: Field20::new(),
            watch: Field20::new(),
            room: Field20::new(),
            ts: TsFormatter::default(),
        }
    }
    fn set_user(&mut self, user: &GeneratedUser) {
        self.user.set_id(b"u", user.index + 1, 7);
    }
}

// ---------------------------------------------------------------------------------------------
// CSV

/// A buffered CSV writer that never quotes: every field this module writes is ids, digits,
/// timestamps and fixed vocabulary (`[A-Za-z0-9_.:-]`), so the per-byte scan for characters that
/// would need quoting is skipped (it was a sixth of the run time).
fn csv_writer<W: Write>(inner: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .buffer_capacity(CSV_BUFFER)
        .quote_style(csv::QuoteStyle::Never)
        .from_writer(inner)
}

/// The events table as CSV, header first.
pub(crate) struct EventsCsvWriter<W: Write> {
    wtr: csv::Writer<W>,
    f: RowFields,
    vocabulary: Vocabulary,
    /// A `channel` column after the contract's columns.
    channels: bool,
}

/// The name written for a generated channel code (blank for none).
fn channel_name(code: u8) -> &'static str {
    if code == 0 {
        ""
    } else {
        crate::features::Channel::from_code(code).as_str()
    }
}

impl<W: Write> EventsCsvWriter<W> {
    /// The events table as CSV, with a `channel` column when `channels`.
    pub fn with_channels(
        inner: W,
        vocabulary: Vocabulary,
        channels: bool,
    ) -> Result<Self, WriteCause> {
        let mut wtr = csv_writer(inner);
        if channels {
            let mut header = EVENT_COLUMNS.to_vec();
            header.push("channel");
            wtr.write_record(header)?;
        } else {
            wtr.write_record(EVENT_COLUMNS)?;
        }
        Ok(EventsCsvWriter {
            wtr,
            f: RowFields::new(),
            vocabulary,
            channels,
        })
    }

    /// One user's events, in the order given.
    pub fn write_user(
        &mut self,
        user: &GeneratedUser,
        events: &[GeneratedEvent],
    ) -> Result<(), WriteCause> {
        let f = &mut self.f;
        f.set_user(user);
        for e in events {
            let amount: &[u8] = if matches!(e.kind, EventKind::Order | EventKind::Refund) {
                f.amount.set_cents(e.amount_cents).as_bytes()
            } else {
                b""
            };
            let watch: &[u8] = if e.kind == EventKind::View {
                f.watch.set_u64(u64::from(e.watch_seconds)).as_bytes()
            } else {
                b""
            };
            f.room.set_id(b"room_", u64::from(e.room), 4);
            let order = if e.order == 0 {
                String::new()
            } else {
                order_id(f.user.as_str(), e.order)
            };
            let row = [
                f.user.as_bytes(),
                f.ts.format_bytes(e.ts),
                self.vocabulary.name(e.kind).as_bytes(),
                amount,
                watch,
                f.room.as_bytes(),
                CATEGORIES[usize::from(e.category)].as_bytes(),
                order.as_bytes(),
            ];
            if self.channels {
                self.wtr
                    .write_record(row.into_iter().chain([channel_name(e.channel).as_bytes()]))?;
            } else {
                self.wtr.write_record(row)?;
            }
        }
        Ok(())
    }

    /// Flush and hand back the underlying writer.
    pub fn finish(self) -> Result<W, WriteCause> {
        self.wtr
            .into_inner()
            .map_err(|e| WriteCause::Io(e.into_error()))
    }
}

/// The users table as CSV, header first.
pub(crate) struct UsersCsvWriter<W: Write> {
    wtr: csv::Writer<W>,
    f: RowFields,
}

impl<W: Write> UsersCsvWriter<W> {
    pub fn new(inner: W) -> Result<Self, WriteCause> {
        let mut wtr = csv_writer(inner);
        wtr.write_record(USER_COLUMNS)?;
        Ok(UsersCsvWriter {
            wtr,
            f: RowFields::new(),
        })
    }

    pub fn write_user(&mut self, user: &GeneratedUser) -> Result<(), WriteCause> {
        self.f.set_user(user);
        self.wtr.write_record([
            self.f.user.as_bytes(),
            self.f.ts.format_bytes(user.registered_at),
            user.persona.as_str().as_bytes(),
        ])?;
        Ok(())
    }

    pub fn finish(self) -> Result<W, WriteCause> {
        self.wtr
            .into_inner()
            .map_err(|e| WriteCause::Io(e.into_error()))
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet

fn parquet_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Arrow schema of the events table: text columns as Utf8 (`ts` is the same RFC 3339 text as the
/// CSV), `amount` Float64 and `watch_seconds` Int64, both null where they do not apply.
pub(crate) fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("ts", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("watch_seconds", DataType::Int64, true),
        Field::new("room_id", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("order_id", DataType::Utf8, true),
    ]))
}

/// [`events_schema`] with a `channel` column (Utf8) at the end.
pub(crate) fn events_schema_with_channel() -> SchemaRef {
    let mut fields: Vec<Field> = events_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("channel", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Arrow schema of the users table.
pub(crate) fn users_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("registered_at", DataType::Utf8, false),
        Field::new("persona", DataType::Utf8, false),
    ]))
}

/// The Arrow writer of one Parquet table and the rows its column builders hold: both table
/// writers append to their builders, then hand the finished columns over here.
struct Batches<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    /// Rows in the builders, not yet written.
    rows: usize,
}

impl<W: Write + Send> Batches<W> {
    fn new(inner: W, schema: SchemaRef) -> Result<Self, WriteCause> {
        let writer = ArrowWriter::try_new(inner, schema.clone(), Some(parquet_props()))?;
        Ok(Batches {
            writer,
            schema,
            rows: 0,
        })
    }

    /// Counts a row appended to the builders; true when they hold a full batch.
    #[inline]
    fn added(&mut self) -> bool {
        self.rows += 1;
        self.rows == BATCH_ROWS
    }

    /// Writes the builders' finished columns as one batch.
    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), WriteCause> {
        self.rows = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)?;
        Ok(())
    }

    /// Writes the footer; hands back the underlying writer.
    fn finish(self) -> Result<W, WriteCause> {
        Ok(self.writer.into_inner()?)
    }
}

/// The events table as Parquet (snappy, row groups of [`ROW_GROUP_ROWS`]).
pub(crate) struct EventsParquetWriter<W: Write + Send> {
    batches: Batches<W>,
    user_id: StringBuilder,
    ts: StringBuilder,
    kind: StringBuilder,
    amount: Float64Builder,
    watch: Int64Builder,
    room: StringBuilder,
    category: StringBuilder,
    order: StringBuilder,
    /// `Some` when the file has a `channel` column.
    channel: Option<StringBuilder>,
    f: RowFields,
    vocabulary: Vocabulary,
}

impl<W: Write + Send> EventsParquetWriter<W> {
    /// The events table as Parquet, with a `channel` column when `channels`.
    pub fn with_channels(
        inner: W,
        vocabulary: Vocabulary,
        channels: bool,
    ) -> Result<Self, WriteCause> {
        let schema = if channels {
            events_schema_with_channel()
        } else {
            events_schema()
        };
        Ok(EventsParquetWriter {
            batches: Batches::new(inner, schema)?,
            channel: channels.then(|| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 5)),
            user_id: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8),
            ts: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 20),
            kind: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 5),
            amount: Float64Builder::with_capacity(BATCH_ROWS),
            watch: Int64Builder::with_capacity(BATCH_ROWS),
            room: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 9),
            category: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 6),
            order: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS),
            f: RowFields::new(),
            vocabulary,
        })
    }

    pub fn write_user(
        &mut self,
        user: &GeneratedUser,
        events: &[GeneratedEvent],
    ) -> Result<(), WriteCause> {
        self.f.set_user(user);
        for e in events {
            let f = &mut self.f;
            self.user_id.append_value(f.user.as_str());
            self.ts.append_value(f.ts.format(e.ts));
            self.kind.append_value(self.vocabulary.name(e.kind));
            self.amount.append_option(e.amount());
            self.watch.append_option(e.watch().map(i64::from));
            self.room
                .append_value(f.room.set_id(b"room_", u64::from(e.room), 4).as_str());
            self.category.append_value(e.category_name());
            if e.order == 0 {
                self.order.append_null();
            } else {
                self.order.append_value(order_id(f.user.as_str(), e.order));
            }
            if let Some(c) = &mut self.channel {
                match e.channel {
                    0 => c.append_null(),
                    code => c.append_value(channel_name(code)),
                }
            }
            if self.batches.added() {
                self.flush_batch()?;
            }
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), WriteCause> {
        if self.batches.rows == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.user_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.watch.finish()),
            Arc::new(self.room.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.order.finish()),
        ];
        if let Some(c) = &mut self.channel {
            columns.push(Arc::new(c.finish()));
        }
        self.batches.write(columns)
    }

    /// Write the last batch and the footer; hand back the underlying writer.
    pub fn finish(mut self) -> Result<W, WriteCause> {
        self.flush_batch()?;
        self.batches.finish()
    }
}

/// The users table as Parquet.
pub(crate) struct UsersParquetWriter<W: Write + Send> {
    batches: Batches<W>,
    user_id: StringBuilder,
    registered_at: StringBuilder,
    persona: StringBuilder,
    f: RowFields,
}

impl<W: Write + Send> UsersParquetWriter<W> {
    pub fn new(inner: W) -> Result<Self, WriteCause> {
        Ok(UsersParquetWriter {
            batches: Batches::new(inner, users_schema())?,
            user_id: StringBuilder::new(),
            registered_at: StringBuilder::new(),
            persona: StringBuilder::new(),
            f: RowFields::new(),
        })
    }

    pub fn write_user(&mut self, user: &GeneratedUser) -> Result<(), WriteCause> {
        self.f.set_user(user);
        self.user_id.append_value(self.f.user.as_str());
        self.registered_at
            .append_value(self.f.ts.format(user.registered_at));
        self.persona.append_value(user.persona.as_str());
        if self.batches.added() {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), WriteCause> {
        if self.batches.rows == 0 {
            return Ok(());
        }
        self.batches.write(vec![
            Arc::new(self.user_id.finish()),
            Arc::new(self.registered_at.finish()),
            Arc::new(self.persona.finish()),
        ])
    }

    /// Write the last batch and the footer; hand back the underlying writer.
    pub fn finish(mut self) -> Result<W, WriteCause> {
        self.flush_batch()?;
        self.batches.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Both tables into a directory, atomically

enum Tables {
    // Boxed: both variants are a kilobyte or more of buffers and builders.
    Csv {
        events: Box<EventsCsvWriter<AtomicFile>>,
        users: Box<UsersCsvWriter<AtomicFile>>,
    },
    Parquet {
        events: Box<EventsParquetWriter<io::BufWriter<AtomicFile>>>,
        users: Box<UsersParquetWriter<io::BufWriter<AtomicFile>>>,
    },
}

/// Where [`GeneratedWriter::finish`] put the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedPaths {
    pub events: PathBuf,
    pub users: PathBuf,
}

/// Writes `events.<ext>` and `users.<ext>` into a directory (created if missing), user by user.
pub struct GeneratedWriter {
    tables: Tables,
    paths: GeneratedPaths,
}

/// The file a buffered Parquet writer wrote to.
fn unbuffer(w: io::BufWriter<AtomicFile>) -> Result<AtomicFile, WriteCause> {
    w.into_inner().map_err(|e| WriteCause::Io(e.into_error()))
}

impl GeneratedWriter {
    pub fn create(dir: &Path, format: GeneratedFormat) -> Result<Self, WriteError> {
        Self::create_with(dir, format, Vocabulary::Canonical)
    }

    /// [`GeneratedWriter::create`] writing the kinds in `vocabulary`.
    pub fn create_with(
        dir: &Path,
        format: GeneratedFormat,
        vocabulary: Vocabulary,
    ) -> Result<Self, WriteError> {
        Self::create_full(dir, format, vocabulary, false)
    }

    /// [`GeneratedWriter::create_with`], with a `channel` column in the events table when
    /// `channels` (generate with [`super::GenerateParams::channels`]).
    pub fn create_full(
        dir: &Path,
        format: GeneratedFormat,
        vocabulary: Vocabulary,
        channels: bool,
    ) -> Result<Self, WriteError> {
        std::fs::create_dir_all(dir).map_err(|source| WriteError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let ext = format.extension();
        let paths = GeneratedPaths {
            events: dir.join(format!("events.{ext}")),
            users: dir.join(format!("users.{ext}")),
        };
        let (ef, uf) = (
            AtomicFile::create(&paths.events)?,
            AtomicFile::create(&paths.users)?,
        );
        let (on_events, on_users) = (
            WriteError::write(&paths.events),
            WriteError::write(&paths.users),
        );
        let tables = match format {
            GeneratedFormat::Csv => Tables::Csv {
                events: Box::new(
                    EventsCsvWriter::with_channels(ef, vocabulary, channels).map_err(on_events)?,
                ),
                users: Box::new(UsersCsvWriter::new(uf).map_err(on_users)?),
            },
            GeneratedFormat::Parquet => Tables::Parquet {
                events: Box::new(
                    EventsParquetWriter::with_channels(
                        io::BufWriter::with_capacity(CSV_BUFFER, ef),
                        vocabulary,
                        channels,
                    )
                    .map_err(on_events)?,
                ),
                users: Box::new(
                    UsersParquetWriter::new(io::BufWriter::with_capacity(CSV_BUFFER, uf))
                        .map_err(on_users)?,
                ),
            },
        };
        Ok(GeneratedWriter { tables, paths })
    }

    /// One user's row and event rows.
    pub fn write_user(
        &mut self,
        user: &GeneratedUser,
        events: &[GeneratedEvent],
    ) -> Result<(), WriteError> {
        let on_events = WriteError::write(&self.paths.events);
        let on_users = WriteError::write(&self.paths.users);
        match &mut self.tables {
            Tables::Csv {
                events: ew,
                users: uw,
            } => {
                ew.write_user(user, events).map_err(on_events)?;
                uw.write_user(user).map_err(on_users)?;
            }
            Tables::Parquet {
                events: ew,
                users: uw,
            } => {
                ew.write_user(user, events).map_err(on_events)?;
                uw.write_user(user).map_err(on_users)?;
            }
        }
        Ok(())
    }

    /// Flush both tables and put them in place.
    pub fn finish(self) -> Result<GeneratedPaths, WriteError> {
        let on_events = WriteError::write(&self.paths.events);
        let on_users = WriteError::write(&self.paths.users);
        let (ef, uf) = match self.tables {
            Tables::Csv { events, users } => (
                events.finish().map_err(on_events)?,
                users.finish().map_err(on_users)?,
            ),
            Tables::Parquet { events, users } => (
                events.finish().and_then(unbuffer).map_err(on_events)?,
                users.finish().and_then(unbuffer).map_err(on_users)?,
            ),
        };
        ef.commit()?;
        uf.commit()?;
        Ok(self.paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::format_rfc3339;
    use crate::generate::{generate, GenerateParams, Persona, ValidParams};
    use arrow_array::{Array, Float64Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::fs::File;

    /// 2026-05-01T00:00:00Z.
    const END: Timestamp = 1_777_593_600;

    fn params(users: u64, seed: u64) -> ValidParams {
        match GenerateParams::new(END).users(users).seed(seed).check() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Both tables as CSV text, generated into memory.
    fn csv_text(p: &ValidParams) -> (String, String, u64) {
        let (mut ev, mut us) = match (
            EventsCsvWriter::with_channels(Vec::new(), Vocabulary::Canonical, false),
            UsersCsvWriter::new(Vec::new()),
        ) {
            (Ok(e), Ok(u)) => (e, u),
            _ => panic!("writers over a Vec cannot fail"),
        };
        let summary = generate(p, |u, e| {
            ev.write_user(u, e)?;
            us.write_user(u)
        });
        let events = match summary {
            Ok(s) => s.events,
            Err(e) => panic!("{e}"),
        };
        let (ev, us) = match (ev.finish(), us.finish()) {
            (Ok(e), Ok(u)) => (e, u),
            _ => panic!("finish"),
        };
        (
            String::from_utf8_lossy(&ev).into_owned(),
            String::from_utf8_lossy(&us).into_owned(),
            events,
        )
    }

    #[test]
    fn timestamps_format_as_the_project_writes_them() {
        let mut f = TsFormatter::default();
        for ts in [
            0,
            59,
            86_399,
            86_400,
            951_782_400,
            1_777_593_600 - 1,
            1_777_649_696,
            253_402_300_799,
        ] {
            assert_eq!(f.format(ts), format_rfc3339(ts));
        }
    }

    #[test]
    fn fields_format_without_allocating() {
        let mut f = Field20::new();
        assert_eq!(f.set_cents(12_345).as_str(), "123.45");
        assert_eq!(f.set_cents(7).as_str(), "0.07");
        assert_eq!(f.set_cents(100).as_str(), "1.00");
        assert_eq!(f.set_id(b"room_", 42, 4).as_str(), "room_0042");
        assert_eq!(f.set_id(b"room_", 12_345, 4).as_str(), "room_12345");
        assert_eq!(f.set_id(b"u", 1, 7).as_str(), "u0000001");
        assert_eq!(f.set_u64(0).as_str(), "0");
        assert_eq!(f.set_u64(u64::MAX).as_str(), "18446744073709551615");
    }

    #[test]
    fn same_seed_writes_byte_identical_csv() {
        let a = csv_text(&params(300, 42));
        let b = csv_text(&params(300, 42));
        assert_eq!(a, b);
        let c = csv_text(&params(300, 43));
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn csv_round_trips_through_the_csv_crate() {
        let p = params(400, 5);
        let (events, users, n_events) = csv_text(&p);
        let mut rdr = csv::Reader::from_reader(events.as_bytes());
        let header: Vec<String> = match rdr.headers() {
            Ok(h) => h.iter().map(str::to_string).collect(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(header, EVENT_COLUMNS);
        let mut rows = 0u64;
        for rec in rdr.records() {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => panic!("{e}"),
            };
            rows += 1;
            assert!(rec[0].starts_with('u') && rec[0].len() == 8);
            let ts = chrono::DateTime::parse_from_rfc3339(&rec[1]).map(|d| d.timestamp());
            assert!(
                ts.is_ok_and(|t| t >= p.start() && t < p.end()),
                "{}",
                &rec[1]
            );
            let kind: EventKind = match rec[2].parse() {
                Ok(k) => k,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(kind == EventKind::Order, !rec[3].is_empty());
            if kind == EventKind::Order {
                assert!(rec[3].parse::<f64>().is_ok_and(|a| a > 0.0));
                assert_eq!(rec[3].split('.').nth(1).map(str::len), Some(2));
            }
            assert_eq!(kind == EventKind::View, !rec[4].is_empty());
            if kind == EventKind::View {
                assert!(rec[4].parse::<u32>().is_ok());
            }
            assert!(rec[5].starts_with("room_"));
            assert!(CATEGORIES.contains(&&rec[6]));
        }
        assert_eq!(rows, n_events);

        let mut rdr = csv::Reader::from_reader(users.as_bytes());
        let mut n = 0;
        for rec in rdr.records() {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => panic!("{e}"),
            };
            n += 1;
            assert_eq!(&rec[0], format!("u{n:07}"));
            assert!(chrono::DateTime::parse_from_rfc3339(&rec[1]).is_ok());
            assert!(rec[2].parse::<Persona>().is_ok());
        }
        assert_eq!(n, 400);
    }

    fn read_parquet(path: &Path) -> Vec<RecordBatch> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build());
        match reader {
            Ok(r) => r
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{e}")),
            Err(e) => panic!("{e}"),
        }
    }

    fn write_dir(dir: &Path, format: GeneratedFormat, p: &ValidParams) -> (GeneratedPaths, u64) {
        let mut w = match GeneratedWriter::create(dir, format) {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        };
        let summary = match generate(p, |u, e| w.write_user(u, e)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        match w.finish() {
            Ok(paths) => (paths, summary.events),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn parquet_reads_back_with_the_same_rows_as_the_csv() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let p = params(500, 8);
        let (paths, n_events) = write_dir(dir.path(), GeneratedFormat::Parquet, &p);
        assert_eq!(paths.events, dir.path().join("events.parquet"));
        let batches = read_parquet(&paths.events);
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows as u64, n_events);
        assert_eq!(batches[0].schema(), events_schema());
        let users: usize = read_parquet(&paths.users)
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(users, 500);

        // Same text as the CSV writer, row for row.
        let (csv_events, _, _) = csv_text(&p);
        let mut rdr = csv::Reader::from_reader(csv_events.as_bytes());
        let mut records = rdr.records();
        for b in &batches {
            let col = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().cloned();
            let (uid, ts, kind) = (col(0), col(1), col(2));
            let amount = b.column(3).as_any().downcast_ref::<Float64Array>().cloned();
            let watch = b.column(4).as_any().downcast_ref::<Int64Array>().cloned();
            let (Some(uid), Some(ts), Some(kind), Some(amount), Some(watch)) =
                (uid, ts, kind, amount, watch)
            else {
                panic!("unexpected column types")
            };
            for i in 0..b.num_rows() {
                let rec = match records.next() {
                    Some(Ok(r)) => r,
                    _ => panic!("csv has fewer rows"),
                };
                assert_eq!(uid.value(i), &rec[0]);
                assert_eq!(ts.value(i), &rec[1]);
                assert_eq!(kind.value(i), &rec[2]);
                assert_eq!(amount.is_null(i), rec[3].is_empty());
                if !amount.is_null(i) {
                    assert_eq!(format!("{:.2}", amount.value(i)), &rec[3]);
                }
                assert_eq!(watch.is_null(i), rec[4].is_empty());
            }
        }
        assert!(records.next().is_none());
    }

    #[test]
    fn csv_files_land_under_their_final_names_and_no_temporaries_remain() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let out = dir.path().join("nested/out");
        let (paths, _) = write_dir(&out, GeneratedFormat::Csv, &params(50, 1));
        assert!(paths.events.is_file() && paths.users.is_file());
        let names: Vec<String> = match std::fs::read_dir(&out) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_writer_dropped_before_finish_leaves_nothing_behind() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        for format in [GeneratedFormat::Csv, GeneratedFormat::Parquet] {
            let mut w = match GeneratedWriter::create(dir.path(), format) {
                Ok(w) => w,
                Err(e) => panic!("{e}"),
            };
            let _ = generate(&params(20, 1), |u, e| w.write_user(u, e));
            drop(w);
            let entries = std::fs::read_dir(dir.path())
                .map(|rd| rd.count())
                .unwrap_or(usize::MAX);
            assert_eq!(entries, 0);
        }
    }
}
