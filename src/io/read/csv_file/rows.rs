//! The csv-crate path: one reader over a file (or the rest of one), on the calling thread.
//!
//! It opens every CSV file (the header, the layout, a header's errors), reads the events files
//! the splitter cannot take (quotes, lines longer than a block, `Split::workers == 0`) and the
//! rest of a file from the first quoted block on, and reads the users table. The csv crate
//! places records by byte and line from the start of its own input; [`Origin`] turns that into
//! the file's physical line for error messages.

use super::super::fields::{self, Col, Fault, Layout, TableKind};
use super::super::{Budget, Delimiter, Location, ReadError, RowRef, UserIndex, UsersSink};
use super::{row_error, CsvEvent, EventCols, Shape, BUFFER, SAMPLE_ROWS};
use crate::features::EventTable;
use csv::ByteRecord;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Feeds every byte read to the fingerprint.
pub(super) struct Hashing<'h, R> {
    pub(super) inner: R,
    pub(super) hasher: &'h mut Sha256,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Where byte 0 of a reader's input is in the file, and the physical line of that byte: the
/// csv crate counts positions from the start of its own input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) byte: u64,
    pub(super) line: u64,
}

impl Origin {
    pub(super) const START: Origin = Origin { byte: 0, line: 1 };

    /// A reader's position as a position in the file.
    fn place(self, pos: Option<&csv::Position>) -> Option<csv::Position> {
        pos.map(|p| {
            let mut q = csv::Position::new();
            q.set_byte(self.byte + p.byte())
                .set_line(self.line + p.line().saturating_sub(1));
            q
        })
    }
}

/// The reader settings of every CSV reader here (the header is read as a record).
pub(super) fn builder() -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.has_headers(false).flexible(true);
    b
}

/// A reader, the header it started with and where the known columns are.
pub(super) struct Opened<R> {
    pub(super) rdr: csv::Reader<R>,
    pub(super) layout: Layout,
    pub(super) header: Vec<String>,
    pub(super) origin: Origin,
}

pub(super) fn csv_error(path: &Path, e: csv::Error) -> ReadError {
    if !e.is_io_error() {
        return ReadError::Csv {
            path: path.to_path_buf(),
            source: e,
        };
    }
    match e.into_kind() {
        csv::ErrorKind::Io(source) => super::super::io_error(path, source),
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
pub(super) fn physical_line(path: &Path, pos: Option<&csv::Position>) -> u64 {
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
pub(super) fn sniff_delimiter(header: &[String]) -> Option<Delimiter> {
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

/// Reads the header from `input` (the file from `origin` on) and resolves the layout.
pub(super) fn open<R: Read>(
    path: &Path,
    table: TableKind,
    input: R,
    origin: Origin,
) -> Result<Opened<R>, ReadError> {
    let mut rdr = builder().buffer_capacity(BUFFER).from_reader(input);
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
    let layout = match Layout::resolve(&header, table) {
        Ok(l) => l,
        Err(e) => {
            let line = physical_line(path, origin.place(rec.position()).as_ref());
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
        origin,
    })
}

/// The error for a bad row of a reader over the file (the line is found by looking again).
#[cold]
pub(super) fn reader_row_error<R>(
    path: &Path,
    o: &Opened<R>,
    rec: &ByteRecord,
    fault: Fault,
) -> ReadError {
    let line = physical_line(path, o.origin.place(rec.position()).as_ref());
    row_error(path, &o.layout, &o.header, rec, fault, line)
}

/// One events row into the table; nothing is added (not even the user) if the row is bad.
#[inline]
pub(super) fn event_row(
    rec: &ByteRecord,
    c: &EventCols,
    table: &mut EventTable,
    users: &mut UserIndex,
) -> Result<(), Fault> {
    if rec.len() != c.width {
        return Err(Fault::FieldCount { found: rec.len() });
    }
    let user = rec.get(c.user).unwrap_or_default();
    users.push_event(table, user, &CsvEvent { rec, cols: c })
}

/// Reads events rows with one reader until its input ends.
pub(super) fn events_sequential<R: Read>(
    shape: &Shape<'_>,
    o: &mut Opened<R>,
    table: &mut EventTable,
    users: &mut UserIndex,
    budget: &mut Budget,
    size: u64,
) -> Result<(), ReadError> {
    let path = shape.path;
    let mut rec = ByteRecord::new();
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
                let left = size.saturating_sub(o.origin.byte + p.byte()) / per_row;
                table.reserve(usize::try_from(left + left / 16).unwrap_or(0));
            }
        }
        if let Err(fault) = event_row(&rec, &shape.cols, table, users) {
            budget.absorb(reader_row_error(path, o, &rec, fault))?;
        }
    }
    Ok(())
}

/// One users row.
pub(super) fn user_row(
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

pub(in crate::io::read) fn read_users(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
) -> Result<Option<Vec<Option<String>>>, ReadError> {
    let file = File::open(path).map_err(|e| super::super::io_error(path, e))?;
    let input = Hashing {
        inner: file,
        hasher,
    };
    let mut o = open(path, TableKind::Users, input, Origin::START)?;
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
            budget.absorb(reader_row_error(path, &o, &rec, fault))?;
        }
    }
    Ok(sink.finish())
}
