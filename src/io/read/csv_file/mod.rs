//! CSV: comma-separated, a header line, `"` quoting (the csv crate's defaults).
//!
//! Two parsers read an events file, and give the same table, users, fingerprint and bad-row
//! messages for the same bytes (tested against each other in `tests`):
//! - `rows`: one csv-crate reader over the file (or what is left of it), on the calling thread.
//!   It reads every file it is given, quoted fields with commas or newlines included, and the
//!   users table.
//! - `split`: the parallel path for quote-free text. A splitter thread reads the file in blocks
//!   cut after their last `\n`, counts their lines and feeds the fingerprint; workers parse
//!   blocks into compact rows (or the finished errors of bad rows); the calling thread takes the
//!   blocks strictly in file order, interns users, fills the table and counts bad rows. Without
//!   quotes every `\n` ends a record, so a block parses exactly as the same bytes do in the
//!   middle of one reader. From the first block holding a `"` (or a line longer than a block)
//!   on, the rest of the file goes to `rows`.
//! - `plain`: how `split` parses a quote-free block: split at its commas and newlines directly
//!   (eight bytes at a time), which is what the csv crate does with such bytes; the header
//!   block, lone `\r`s and very wide tables go through the csv crate instead.
//!
//! This module: [`read_events`] (which parser reads which part of a file), and what both
//! parsers share: the columns of an events row, the checks of one row, and its error.

mod parsed;
mod plain;
mod rows;
mod split;

use super::fields::{self, Cause, Col, Fault, Layout, TableKind};
use super::{Budget, Cell, Location, ReadError, RowRef, UserIndex};
use crate::features::vocabulary::{KindResolver, KindTally};
use crate::features::{Event, EventKind, EventTable, Timestamp};
use csv::ByteRecord;
use rows::{events_sequential, open, Hashing, Origin};
use sha2::{Digest, Sha256};
use split::{split_and_parse, Start};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

pub(super) use rows::read_users;

/// Bytes buffered in front of the parser.
const BUFFER: usize = 1 << 18;

/// Rows read before the table's capacity is estimated from the bytes they took.
const SAMPLE_ROWS: u64 = 4096;

/// How an events file is split for parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Split {
    /// Bytes read per block (a block is cut after its last `\n`; the rest starts the next).
    pub(super) block: usize,
    /// Parsing threads; 0 reads the whole file with one reader on the calling thread.
    pub(super) workers: usize,
}

impl Split {
    /// 4 MiB blocks, one worker per core (at most 8).
    pub(super) fn auto() -> Split {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Split {
            block: 4 << 20,
            workers: cores.clamp(1, 8),
        }
    }

    /// One reader over the whole file on the calling thread.
    #[cfg(test)]
    pub(super) const SEQUENTIAL: Split = Split {
        block: 1 << 20,
        workers: 0,
    };
}

/// A record's fields: from the csv crate, or from [`Plain`] splitting a quote-free line.
trait Record {
    fn width(&self) -> usize;
    fn field(&self, i: usize) -> Option<&[u8]>;
}

impl Record for ByteRecord {
    #[inline]
    fn width(&self) -> usize {
        self.len()
    }
    #[inline]
    fn field(&self, i: usize) -> Option<&[u8]> {
        self.get(i)
    }
}

/// The error for a bad row on physical line `line`: where, and the offending value.
#[cold]
fn row_error(
    path: &Path,
    layout: &Layout,
    header: &[String],
    rec: &impl Record,
    fault: Fault,
    line: u64,
) -> ReadError {
    match fault {
        Fault::FieldCount { found } => {
            let expected = layout.width;
            let column = header
                .get(found.min(expected.saturating_sub(1)))
                .cloned()
                .unwrap_or_default();
            let at = Location {
                file: path.to_path_buf(),
                row: Some(RowRef::Line(line)),
            };
            ReadError::FieldCount {
                at,
                expected,
                found,
                column,
            }
        }
        Fault::Field { col, cause } => {
            let index = layout.get(col);
            let raw = index.and_then(|i| rec.field(i)).unwrap_or_default();
            let at = Cell {
                file: path.to_path_buf(),
                row: RowRef::Line(line),
                column: index.map(|i| i + 1),
                name: col.name(),
            };
            ReadError::field(cause, at, raw, layout.earliest)
        }
    }
}

/// Column positions of the events table, resolved once.
#[derive(Debug, Clone)]
struct EventCols {
    width: usize,
    /// The earliest accepted event time ([`Layout::earliest`]).
    earliest: Timestamp,
    /// The kind mapping ([`Layout::kinds`]).
    kinds: std::sync::Arc<KindResolver>,
    user: usize,
    ts: usize,
    kind: usize,
    amount: Option<usize>,
    watch: Option<usize>,
    room: Option<usize>,
    category: Option<usize>,
    order: Option<usize>,
    channel: Option<usize>,
}

impl EventCols {
    fn new(path: &Path, l: &Layout, header: &[String]) -> Result<EventCols, ReadError> {
        let required = |col| {
            l.required(col)
                .map_err(|e| ReadError::header(e, path, Some(RowRef::Line(1)), header))
        };
        Ok(EventCols {
            width: l.width,
            earliest: l.earliest,
            kinds: l.kinds.clone(),
            user: required(Col::UserId)?,
            ts: required(Col::Ts)?,
            kind: required(Col::Kind)?,
            amount: l.get(Col::Amount),
            watch: l.get(Col::WatchSeconds),
            room: l.get(Col::RoomId),
            category: l.get(Col::Category),
            order: l.get(Col::OrderId),
            channel: l.get(Col::Channel),
        })
    }
}

/// The fields of an events row after the user id (the width was checked), for
/// [`fields::event`].
struct CsvEvent<'r, R> {
    rec: &'r R,
    cols: &'r EventCols,
}

impl<R: Record> CsvEvent<'_, R> {
    #[inline]
    fn field(&self, i: usize) -> &[u8] {
        self.rec.field(i).unwrap_or_default()
    }

    #[inline]
    fn optional(
        &self,
        i: Option<usize>,
        parse: impl Fn(&[u8]) -> Result<u32, Cause>,
    ) -> Result<u32, Cause> {
        match i {
            Some(i) => parse(self.field(i)),
            None => Ok(0),
        }
    }
}

impl<R: Record> fields::EventFields for CsvEvent<'_, R> {
    #[inline]
    fn earliest(&self) -> Timestamp {
        self.cols.earliest
    }
    #[inline]
    fn ts(&self) -> Result<Timestamp, Cause> {
        fields::timestamp(self.field(self.cols.ts))
    }
    #[inline]
    fn kind_field(&self) -> &[u8] {
        self.field(self.cols.kind)
    }
    #[inline]
    fn kinds(&self) -> &KindResolver {
        &self.cols.kinds
    }
    #[inline]
    fn amount(&self, kind: EventKind) -> Result<f64, Cause> {
        let v = match self.cols.amount {
            Some(i) => fields::amount_text(self.field(i))?,
            None => None,
        };
        fields::check_amount(kind, v)
    }
    #[inline]
    fn watch_seconds(&self) -> Result<u32, Cause> {
        self.optional(self.cols.watch, fields::watch_text)
    }
    #[inline]
    fn room(&self) -> Result<u32, Cause> {
        self.optional(self.cols.room, fields::hashed)
    }
    #[inline]
    fn category(&self) -> Result<u32, Cause> {
        self.optional(self.cols.category, fields::hashed)
    }
    #[inline]
    fn order(&self) -> Result<u32, Cause> {
        self.optional(self.cols.order, |b| fields::hashed(b.trim_ascii()))
    }
    #[inline]
    fn category_raw(&self) -> &[u8] {
        self.cols.category.map_or(&[], |i| self.field(i))
    }
    #[inline]
    fn channel_raw(&self) -> &[u8] {
        self.cols.channel.map_or(&[], |i| self.field(i))
    }
    #[inline]
    fn room_raw(&self) -> &[u8] {
        self.cols.room.map_or(&[], |i| self.field(i))
    }
}

/// The event of an events row whose width was checked.
#[inline]
fn event_fields(
    rec: &impl Record,
    cols: &EventCols,
    tally: &mut KindTally,
) -> Result<Option<Event>, Fault> {
    fields::event(&CsvEvent { rec, cols }, tally)
}

/// What an events file's header says, shared by the threads reading it.
struct Shape<'p> {
    path: &'p Path,
    layout: Layout,
    header: Vec<String>,
    cols: EventCols,
}

impl Shape<'_> {
    fn mark_columns(&self, table: &mut EventTable) {
        table.columns.watch_seconds = self.cols.watch.is_some();
        table.columns.room_id = self.cols.room.is_some();
        table.columns.category = self.cols.category.is_some();
        table.columns.order_id = self.cols.order.is_some();
        table.columns.channel = self.cols.channel.is_some();
    }
}

/// Reads all of `file` that fits in `buf` (short only at the end of the file).
fn fill(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads an events file into `table`, feeding its bytes to `hasher`. Answers how many bytes of
/// the file were parsed in blocks on the workers (the rest went through one reader).
pub(super) fn read_events(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
    split: Split,
    earliest: Timestamp,
    kinds: &std::sync::Arc<KindResolver>,
) -> Result<u64, ReadError> {
    let io_err = |e| super::io_error(path, e);
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let block = split.block.max(1);
    let mut first = vec![0u8; if split.workers == 0 { 0 } else { block }];
    let n = fill(&mut file, &mut first).map_err(io_err)?;
    first.truncate(n);
    hasher.update(&first);
    let eof = n < block || split.workers == 0;
    // The first block, if it can be split off: it ends after a `\n` (or the file), holds no `"`,
    // and starts with a usable header. Otherwise one reader reads the file, as it always did.
    let cut = if eof {
        Some(n)
    } else {
        memchr::memrchr(b'\n', &first).map(|i| i + 1)
    };
    let shape = cut
        .filter(|&c| split.workers > 0 && memchr::memchr(b'"', &first[..c]).is_none())
        .and_then(|c| {
            let mut o = open(path, TableKind::Events, &first[..c], Origin::START).ok()?;
            o.layout.earliest = earliest;
            o.layout.kinds = kinds.clone();
            let cols = EventCols::new(path, &o.layout, &o.header).ok()?;
            Some(Shape {
                path,
                layout: o.layout,
                header: o.header,
                cols,
            })
        });
    let Some(shape) = shape else {
        let input = io::Cursor::new(first).chain(Hashing {
            inner: file,
            hasher,
        });
        let mut o = open(path, TableKind::Events, input, Origin::START)?;
        o.layout.earliest = earliest;
        o.layout.kinds = kinds.clone();
        let shape = Shape {
            path,
            cols: EventCols::new(path, &o.layout, &o.header)?,
            layout: o.layout.clone(),
            header: o.header.clone(),
        };
        shape.mark_columns(table);
        let mut users = UserIndex::default();
        events_sequential(&shape, &mut o, table, &mut users, budget, size)?;
        return Ok(0);
    };
    shape.mark_columns(table);
    let cut = cut.unwrap_or(n);
    let start = Start {
        file,
        first,
        cut,
        eof,
        hasher: std::mem::take(hasher),
    };
    let (h, split_bytes) = split_and_parse(&shape, start, split, table, budget, size)?;
    *hasher = h;
    tracing::debug!(path = %path.display(), size, split_bytes, "events file parsed in blocks");
    Ok(split_bytes)
}

#[cfg(test)]
mod tests;
