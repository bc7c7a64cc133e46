//! CSV: comma-separated, a header line, `"` quoting (the csv crate's defaults).

use super::fields::{self, Cause, Col, Fault, Layout, TableKind};
use super::{
    reserve_events, Budget, Cell, Delimiter, Location, ReadError, RowRef, UserIndex, UsersSink,
};
use crate::features::{Event, EventKind, EventTable};
use csv::ByteRecord;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes buffered in front of the parser.
const BUFFER: usize = 1 << 18;

/// Rows read before the table's capacity is estimated from the bytes they took.
const SAMPLE_ROWS: u64 = 4096;

/// Feeds every byte read to the fingerprint.
struct Hashing<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// An open file, its header and where the known columns are.
struct Opened<'h> {
    rdr: csv::Reader<Hashing<'h, File>>,
    layout: Layout,
    header: Vec<String>,
    size: u64,
}

fn csv_error(path: &Path, e: csv::Error) -> ReadError {
    if !e.is_io_error() {
        return ReadError::Csv {
            path: path.to_path_buf(),
            source: e,
        };
    }
    match e.into_kind() {
        csv::ErrorKind::Io(source) => super::io_error(path, source),
        // `is_io_error` said it was one.
        other => ReadError::Csv {
            path: path.to_path_buf(),
            source: io::Error::other(format!("{other:?}")).into(),
        },
    }
}

/// The physical line a record starts on. The csv crate's position for a record is where the
/// previous one ended, before any blank lines it skips; those are counted here by looking at
/// the file again (error path only).
#[cold]
fn physical_line(path: &Path, pos: Option<&csv::Position>) -> u64 {
    let Some(pos) = pos else { return 0 };
    let scan = || -> io::Result<u64> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(pos.byte()))?;
        let mut line = pos.line();
        let mut buf = [0u8; 4096];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(line);
            }
            for &b in &buf[..n] {
                match b {
                    b'\n' => line += 1,
                    b'\r' => {}
                    _ => return Ok(line),
                }
            }
        }
    };
    scan().unwrap_or(pos.line())
}

/// The delimiter a wrongly separated header seems to use: the candidate that occurs most.
fn sniff_delimiter(header: &[String]) -> Option<Delimiter> {
    Delimiter::ALL
        .into_iter()
        .map(|d| {
            (
                d,
                header
                    .iter()
                    .map(|h| h.bytes().filter(|&b| b == d.byte()).count())
                    .sum::<usize>(),
            )
        })
        .filter(|&(_, n)| n > 0)
        .max_by_key(|&(_, n)| n)
        .map(|(d, _)| d)
}

fn open<'h>(
    path: &Path,
    table: TableKind,
    hasher: &'h mut Sha256,
) -> Result<Opened<'h>, ReadError> {
    let file = File::open(path).map_err(|e| super::io_error(path, e))?;
    let size = file.metadata().map_err(|e| super::io_error(path, e))?.len();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(BUFFER)
        .from_reader(Hashing {
            inner: file,
            hasher,
        });
    let mut rec = ByteRecord::new();
    if !rdr
        .read_byte_record(&mut rec)
        .map_err(|e| csv_error(path, e))?
    {
        let expected = match table {
            TableKind::Events => "user_id, ts, kind",
            TableKind::Users => "user_id, registered_at",
        };
        return Err(ReadError::EmptyFile {
            path: path.to_path_buf(),
            expected,
        });
    }
    let header: Vec<String> = rec
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let line = physical_line(path, rec.position());
    let layout = match Layout::resolve(&header, table) {
        Ok(l) => l,
        Err(e) => {
            let at = Location {
                file: path.to_path_buf(),
                row: Some(RowRef::Line(line)),
            };
            if header.len() == 1 {
                if let Some(delimiter) = sniff_delimiter(&header) {
                    return Err(ReadError::WrongDelimiter {
                        at,
                        delimiter,
                        header: header.join(","),
                    });
                }
            }
            return Err(ReadError::header(e, path, at.row, &header));
        }
    };
    Ok(Opened {
        rdr,
        layout,
        header,
        size,
    })
}

/// The error for a bad row: where, and the offending value.
#[cold]
fn row_error(path: &Path, o: &Opened<'_>, rec: &ByteRecord, fault: Fault) -> ReadError {
    let line = physical_line(path, rec.position());
    match fault {
        Fault::FieldCount { found } => {
            let expected = o.layout.width;
            let column = o
                .header
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
            let index = o.layout.get(col);
            let raw = index.and_then(|i| rec.get(i)).unwrap_or_default();
            let at = Cell {
                file: path.to_path_buf(),
                row: RowRef::Line(line),
                column: index.map(|i| i + 1),
                name: col.name(),
            };
            ReadError::field(cause, at, raw)
        }
    }
}

/// Column positions of the events table, resolved once.
struct EventCols {
    width: usize,
    user: usize,
    ts: usize,
    kind: usize,
    amount: Option<usize>,
    watch: Option<usize>,
    room: Option<usize>,
    category: Option<usize>,
}

/// One events row into the table; nothing is added (not even the user) if the row is bad.
#[inline]
fn event_row(
    rec: &ByteRecord,
    c: &EventCols,
    table: &mut EventTable,
    users: &mut UserIndex,
) -> Result<(), Fault> {
    if rec.len() != c.width {
        return Err(Fault::FieldCount { found: rec.len() });
    }
    let field = |i: usize| rec.get(i).unwrap_or_default();
    let user_bytes = field(c.user);
    let known = users.get(user_bytes);
    let user = match known {
        Some(_) => None,
        None => Some(fields::user_id(user_bytes).map_err(Fault::at(Col::UserId))?),
    };
    let ts = fields::timestamp(field(c.ts)).map_err(Fault::at(Col::Ts))?;
    let kind = fields::kind(field(c.kind)).map_err(Fault::at(Col::Kind))?;
    let amount = match c.amount {
        Some(i) => fields::amount_text(field(i)).and_then(|v| fields::check_amount(kind, v)),
        None if kind == EventKind::Order => Err(Cause::MissingAmount),
        None => Ok(0.0),
    }
    .map_err(Fault::at(Col::Amount))?;
    let watch_seconds = match c.watch {
        Some(i) => fields::watch_text(field(i)).map_err(Fault::at(Col::WatchSeconds))?,
        None => 0,
    };
    let room = match c.room {
        Some(i) => fields::hashed(field(i)).map_err(Fault::at(Col::RoomId))?,
        None => 0,
    };
    let category = match c.category {
        Some(i) => fields::hashed(field(i)).map_err(Fault::at(Col::Category))?,
        None => 0,
    };
    let u = match (known, user) {
        (Some(u), _) => u,
        (None, Some(id)) => users.intern(id, table),
        // `user` is Some whenever `known` is None.
        (None, None) => {
            return Err(Fault::Field {
                col: Col::UserId,
                cause: Cause::EmptyUserId,
            })
        }
    };
    table.push(
        u,
        Event {
            ts,
            kind,
            amount,
            watch_seconds,
            room,
            category,
        },
    );
    Ok(())
}

pub(super) fn read_events(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
) -> Result<(), ReadError> {
    let mut o = open(path, TableKind::Events, hasher)?;
    let l = &o.layout;
    let cols = EventCols {
        width: l.width,
        user: l
            .required(Col::UserId)
            .map_err(|e| ReadError::header(e, path, Some(RowRef::Line(1)), &o.header))?,
        ts: l
            .required(Col::Ts)
            .map_err(|e| ReadError::header(e, path, Some(RowRef::Line(1)), &o.header))?,
        kind: l
            .required(Col::Kind)
            .map_err(|e| ReadError::header(e, path, Some(RowRef::Line(1)), &o.header))?,
        amount: l.get(Col::Amount),
        watch: l.get(Col::WatchSeconds),
        room: l.get(Col::RoomId),
        category: l.get(Col::Category),
    };
    table.columns.watch_seconds = cols.watch.is_some();
    table.columns.room_id = cols.room.is_some();
    table.columns.category = cols.category.is_some();

    let mut rec = ByteRecord::new();
    let mut users = UserIndex::default();
    let mut rows: u64 = 0;
    let mut sample_start = None;
    while o
        .rdr
        .read_byte_record(&mut rec)
        .map_err(|e| csv_error(path, e))?
    {
        rows += 1;
        if rows == 1 {
            sample_start = rec.position().map(|p| p.byte());
        } else if rows == SAMPLE_ROWS {
            // Estimate the rows still to come from the bytes the sample took.
            if let (Some(start), Some(p)) = (sample_start, rec.position()) {
                let per_row = (p.byte().saturating_sub(start) / (SAMPLE_ROWS - 1)).max(1);
                let left = o.size.saturating_sub(p.byte()) / per_row;
                reserve_events(table, usize::try_from(left + left / 16).unwrap_or(0));
            }
        }
        if let Err(fault) = event_row(&rec, &cols, table, &mut users) {
            budget.absorb(row_error(path, &o, &rec, fault))?;
        }
    }
    Ok(())
}

/// One users row.
fn user_row(
    rec: &ByteRecord,
    l: &Layout,
    user: usize,
    registered: usize,
    sink: &mut UsersSink<'_>,
) -> Result<(), Fault> {
    if rec.len() != l.width {
        return Err(Fault::FieldCount { found: rec.len() });
    }
    let field = |i: usize| rec.get(i).unwrap_or_default();
    let id = fields::user_id(field(user)).map_err(Fault::at(Col::UserId))?;
    let registered_at =
        fields::optional_timestamp(field(registered)).map_err(Fault::at(Col::RegisteredAt))?;
    let persona = match l.get(Col::Persona) {
        Some(i) => fields::persona(field(i)).map_err(Fault::at(Col::Persona))?,
        None => None,
    };
    sink.add(id, registered_at, persona)
        .map_err(Fault::at(Col::UserId))
}

pub(super) fn read_users(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
) -> Result<Option<Vec<Option<String>>>, ReadError> {
    let mut o = open(path, TableKind::Users, hasher)?;
    let header_error = |e| ReadError::header(e, path, Some(RowRef::Line(1)), &o.header);
    let user = o.layout.required(Col::UserId).map_err(header_error)?;
    let registered = o.layout.required(Col::RegisteredAt).map_err(header_error)?;
    let mut sink = UsersSink::new(table, o.layout.get(Col::Persona).is_some());
    let mut rec = ByteRecord::new();
    while o
        .rdr
        .read_byte_record(&mut rec)
        .map_err(|e| csv_error(path, e))?
    {
        if let Err(fault) = user_row(&rec, &o.layout, user, registered, &mut sink) {
            budget.absorb(row_error(path, &o, &rec, fault))?;
        }
    }
    Ok(sink.finish())
}
