//! CSV: comma-separated, a header line, `"` quoting (the csv crate's defaults).
//!
//! Events files are read on all cores while they contain no `"`: a splitter thread reads the
//! file in blocks cut after their last `\n`, counts their lines and feeds the fingerprint;
//! workers parse blocks into compact rows (or the finished errors of bad rows); the calling
//! thread takes the blocks strictly in file order, interns users, fills the table and counts bad
//! rows. A quote-free block is split at its commas and newlines directly (one SIMD pass), which
//! is what the csv crate does with such bytes; the header block, lone `\r`s and very wide
//! tables go through the csv crate. Without quotes every `\n` ends a record, so a block parses exactly as the same bytes do
//! in the middle of one reader. From the first block holding a `"` (or a line longer than a
//! block) on, the rest of the file is read by one reader, as it always was, so quoted fields
//! with commas or newlines stay exact. The users table is read by one reader.

use super::fields::{self, Cause, Col, Fault, Layout, TableKind};
use super::{Budget, Cell, Delimiter, Location, ReadError, RowRef, UserIndex, UsersSink};
use crate::features::{Event, EventKind, EventTable};
use csv::ByteRecord;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::ScopedJoinHandle;

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

/// Where byte 0 of a reader's input is in the file, and the physical line of that byte: the
/// csv crate counts positions from the start of its own input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    byte: u64,
    line: u64,
}

impl Origin {
    const START: Origin = Origin { byte: 0, line: 1 };

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
fn builder() -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.has_headers(false).flexible(true);
    b
}

/// A reader, the header it started with and where the known columns are.
struct Opened<R> {
    rdr: csv::Reader<R>,
    layout: Layout,
    header: Vec<String>,
    origin: Origin,
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

/// Reads the header from `input` (the file from `origin` on) and resolves the layout.
fn open<R: Read>(
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

/// Fields a quote-free line is split into directly (wider tables go through the csv crate).
const PLAIN_FIELDS: usize = 32;

/// A quote-free line without its terminator, split at its commas: field `i` ends at `ends[i]`
/// and (but the first) starts after `ends[i - 1]`. `width` counts every field, also those past
/// [`PLAIN_FIELDS`] (which [`Record::field`] does not give).
struct Plain<'a> {
    text: &'a [u8],
    ends: &'a [u32; PLAIN_FIELDS],
    width: usize,
}

impl Record for Plain<'_> {
    #[inline]
    fn width(&self) -> usize {
        self.width
    }
    #[inline]
    fn field(&self, i: usize) -> Option<&[u8]> {
        if i >= self.width || i >= PLAIN_FIELDS {
            return None;
        }
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize + 1,
        };
        self.text.get(start..self.ends[i] as usize)
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
            ReadError::field(cause, at, raw)
        }
    }
}

/// The error for a bad row of a reader over the file (the line is found by looking again).
#[cold]
fn reader_row_error<R>(path: &Path, o: &Opened<R>, rec: &ByteRecord, fault: Fault) -> ReadError {
    let line = physical_line(path, o.origin.place(rec.position()).as_ref());
    row_error(path, &o.layout, &o.header, rec, fault, line)
}

/// Column positions of the events table, resolved once.
#[derive(Debug, Clone, Copy)]
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

impl EventCols {
    fn new(path: &Path, l: &Layout, header: &[String]) -> Result<EventCols, ReadError> {
        let required = |col| {
            l.required(col)
                .map_err(|e| ReadError::header(e, path, Some(RowRef::Line(1)), header))
        };
        Ok(EventCols {
            width: l.width,
            user: required(Col::UserId)?,
            ts: required(Col::Ts)?,
            kind: required(Col::Kind)?,
            amount: l.get(Col::Amount),
            watch: l.get(Col::WatchSeconds),
            room: l.get(Col::RoomId),
            category: l.get(Col::Category),
        })
    }
}

/// The fields of an events row after the user id (the width was checked), in the order they are
/// checked.
#[inline]
fn event_fields(rec: &impl Record, c: &EventCols) -> Result<Event, Fault> {
    let field = |i: usize| rec.field(i).unwrap_or_default();
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
    Ok(Event {
        ts,
        kind,
        amount,
        watch_seconds,
        room,
        category,
    })
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
    let user_bytes = rec.get(c.user).unwrap_or_default();
    let known = users.get(user_bytes);
    let user = match known {
        Some(_) => None,
        None => Some(fields::user_id(user_bytes).map_err(Fault::at(Col::UserId))?),
    };
    let event = event_fields(rec, c)?;
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
    table.push(u, event);
    Ok(())
}

/// One events row, parsed off the table's thread: the user id (validated, or `None` when it is
/// `last`, the previous good row's) and the event. The checks run in the order of [`event_row`],
/// so a bad row fails on the same field (an id the index knows is valid, so validating ids the
/// index may know changes no outcome).
#[inline]
fn parse_row<'r, R: Record>(
    rec: &'r R,
    c: &EventCols,
    last: &[u8],
) -> Result<(Option<&'r str>, Event), Fault> {
    if rec.width() != c.width {
        return Err(Fault::FieldCount { found: rec.width() });
    }
    let raw = rec.field(c.user).unwrap_or_default();
    let id = if !last.is_empty() && raw == last {
        None
    } else {
        Some(fields::user_id(raw).map_err(Fault::at(Col::UserId))?)
    };
    Ok((id, event_fields(rec, c)?))
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
    }
}

/// Reads events rows with one reader until its input ends.
fn events_sequential<R: Read>(
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

/// `\n` bytes in `b`.
fn count_newlines(b: &[u8]) -> u64 {
    // Per chunk in a u8 so the compiler can vectorize; 255 matches cannot overflow it.
    b.chunks(255)
        .map(|c| u64::from(c.iter().fold(0u8, |n, &x| n + u8::from(x == b'\n'))))
        .sum()
}

/// Reads an events file into `table`, feeding its bytes to `hasher`. Answers how many bytes of
/// the file were parsed in blocks on the workers (the rest went through one reader).
pub(super) fn read_events(
    path: &Path,
    table: &mut EventTable,
    budget: &mut Budget,
    hasher: &mut Sha256,
    split: Split,
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
            let o = open(path, TableKind::Events, &first[..c], Origin::START).ok()?;
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

/// The state the splitter starts from: the first block read (and hashed), where it is cut.
struct Start {
    file: File,
    first: Vec<u8>,
    cut: usize,
    eof: bool,
    hasher: Sha256,
}

/// Bytes of the file to parse on a worker. `buf[start..end]` is the block; for every block but
/// the first `buf[0]` is the `\n` that ended the previous one, so that a reader starting there
/// is in the state the file's reader is in after that `\n` (e.g. it strips no byte-order mark).
struct Block {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The physical line of `buf[start]`.
    line: u64,
    /// The file offset of `buf[start]`.
    byte: u64,
    /// The first block: its first record is the header.
    header: bool,
}

/// The rest of the file, for one reader: `buf[..end]` (already hashed) then `file`. `origin`
/// places `buf[0]`.
struct Rest {
    buf: Vec<u8>,
    end: usize,
    file: File,
    origin: Origin,
}

/// What the splitter sends, in file order.
enum Piece {
    Block(Block),
    Rest(Rest),
    Failed(ReadError),
}

/// A parsed block: good rows (their events in the columns of `part`, with no users; user ids
/// concatenated in `ids`, row `i`'s ending at `id_ends[i]`, a run of one user's rows sharing
/// one copy) and the errors of bad rows, both in file order. The consumer hands it back to the
/// worker that filled it, which refills it: its columns are allocated once per worker.
#[derive(Default)]
struct Parsed {
    ids: String,
    id_ends: Vec<usize>,
    /// Where the last good row's id starts in `ids`.
    last: usize,
    part: EventTable,
    bad: Vec<ReadError>,
    /// Rows read (good and bad).
    rows: u64,
    /// The file offset where the block ends.
    end_byte: u64,
    /// An error that ended the block (after `bad`).
    fatal: Option<ReadError>,
}

impl Parsed {
    /// Empty, keeping the allocations.
    fn clear(&mut self) {
        self.part.clear();
        self.ids.clear();
        self.id_ends.clear();
        self.last = 0;
        self.bad.clear();
        self.rows = 0;
        self.end_byte = 0;
        self.fatal = None;
    }

    /// One row: its event and user id, or the error naming physical line `line()`.
    #[inline]
    fn take(&mut self, shape: &Shape<'_>, rec: &impl Record, line: impl FnOnce() -> u64) {
        self.rows += 1;
        let last = self.ids.as_bytes().get(self.last..).unwrap_or_default();
        match parse_row(rec, &shape.cols, last) {
            Ok((id, event)) => {
                if let Some(id) = id {
                    self.last = self.ids.len();
                    self.ids.push_str(id);
                }
                self.id_ends.push(self.ids.len());
                self.part.push(0, event);
            }
            Err(fault) => {
                let line = line();
                self.bad.push(row_error(
                    shape.path,
                    &shape.layout,
                    &shape.header,
                    rec,
                    fault,
                    line,
                ));
            }
        }
    }
}

/// What a worker sends on, in file order.
enum Out {
    Parsed(Box<Parsed>),
    Rest(Rest),
    Failed(ReadError),
}

/// The splitter, workers and consumer (this thread) over one events file.
fn split_and_parse(
    shape: &Shape<'_>,
    start: Start,
    split: Split,
    table: &mut EventTable,
    budget: &mut Budget,
    size: u64,
) -> Result<(Sha256, u64), ReadError> {
    let workers = split.workers.max(1);
    let block = split.block.max(1);
    std::thread::scope(|s| {
        let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
        let mut to = Vec::with_capacity(workers);
        let mut from = Vec::with_capacity(workers);
        let mut back = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Piece>(1);
            let (out_tx, out_rx) = mpsc::sync_channel::<Out>(1);
            let (back_tx, back_rx) = mpsc::channel::<Box<Parsed>>();
            let spare = spare_tx.clone();
            s.spawn(move || work(shape, &rx, &out_tx, &spare, &back_rx));
            to.push(tx);
            from.push(out_rx);
            back.push(back_tx);
        }
        drop(spare_tx);
        let path = shape.path;
        let splitter = s.spawn(move || split_file(path, start, block, &to, &spare_rx));
        consume(shape, from, &back, splitter, table, budget, size)
    })
}

/// The splitter: reads blocks, hashes every byte read, counts lines, and hands blocks round
/// robin to the workers (the consumer takes them back in the same order). Returns the
/// fingerprint's hasher once the file is read or handed on.
fn split_file(
    path: &Path,
    start: Start,
    block: usize,
    to: &[SyncSender<Piece>],
    spare: &Receiver<Vec<u8>>,
) -> Sha256 {
    let Start {
        mut file,
        first,
        cut,
        mut eof,
        mut hasher,
    } = start;
    let mut filled = first.len();
    let mut cur = Block {
        buf: first,
        start: 0,
        end: cut,
        line: 1,
        byte: 0,
        header: true,
    };
    for seq in 0.. {
        // `cur.buf[cur.start..cur.end]` holds no quote and ends after a `\n` (or the file);
        // `cur.buf[cur.end..filled]` starts the next block.
        let data = &cur.buf[cur.start..cur.end];
        let line = cur.line + count_newlines(data);
        let byte = cur.byte + data.len() as u64;
        // The next buffer: the `\n` ending this block, the carry (shorter than a block: the
        // block's new bytes held its last `\n`), then a block of new bytes.
        let carry = filled - cur.end;
        let mut buf = spare.try_recv().unwrap_or_default();
        buf.resize(1 + carry + block, 0);
        buf[0] = b'\n';
        buf[1..1 + carry].copy_from_slice(&cur.buf[cur.end..filled]);
        if cur.end > cur.start && to[seq % to.len()].send(Piece::Block(cur)).is_err() {
            return hasher;
        }
        if eof {
            return hasher;
        }
        let tx = &to[(seq + 1) % to.len()];
        filled = 1 + carry;
        let n = match fill(&mut file, &mut buf[filled..]) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Piece::Failed(super::io_error(path, e)));
                return hasher;
            }
        };
        hasher.update(&buf[filled..filled + n]);
        filled += n;
        eof = n < block;
        let end = if eof {
            Some(filled)
        } else {
            memchr::memrchr(b'\n', &buf[1..filled]).map(|i| i + 2)
        };
        match end.filter(|&e| memchr::memchr(b'"', &buf[1..e]).is_none()) {
            Some(end) => {
                cur = Block {
                    buf,
                    start: 1,
                    end,
                    line,
                    byte,
                    header: false,
                };
            }
            None => {
                // A quote, or a line longer than a block: one reader from here on, starting
                // at the `\n` in `buf[0]`.
                let rest = Rest {
                    buf,
                    end: filled,
                    file,
                    origin: Origin {
                        byte: byte.saturating_sub(1),
                        line: line.saturating_sub(1),
                    },
                };
                let _ = tx.send(Piece::Rest(rest));
                return hasher;
            }
        }
    }
    hasher
}

/// A worker: parses blocks (into the consumer's spent [`Parsed`] when there is one), passes
/// anything else on, returns spent buffers to the splitter.
fn work(
    shape: &Shape<'_>,
    rx: &Receiver<Piece>,
    tx: &SyncSender<Out>,
    spare: &Sender<Vec<u8>>,
    back: &Receiver<Box<Parsed>>,
) {
    while let Ok(piece) = rx.recv() {
        let out = match piece {
            Piece::Block(b) => {
                let mut parsed = back.try_recv().unwrap_or_default();
                parse_block(shape, &b, &mut parsed);
                // The splitter may be gone; the buffer is then simply dropped.
                let _ = spare.send(b.buf);
                Out::Parsed(parsed)
            }
            Piece::Rest(r) => Out::Rest(r),
            Piece::Failed(e) => Out::Failed(e),
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Counts physical lines forward through a block, for the rows that need one (bad rows).
struct Lines {
    at: usize,
    line: u64,
}

impl Lines {
    /// The physical line of the record a reader over `data` placed at `pos`: past the blank
    /// lines the reader skipped, as [`physical_line`] finds it in the file.
    #[cold]
    fn of(&mut self, data: &[u8], pos: Option<&csv::Position>) -> u64 {
        let from = pos.map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX));
        let skip = data
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
        let first = (from + skip).min(data.len());
        if first > self.at {
            self.line += count_newlines(&data[self.at..first]);
            self.at = first;
        }
        self.line
    }
}

/// Parses one block into `out` (emptied first): its good rows and the errors of its bad rows.
fn parse_block(shape: &Shape<'_>, b: &Block, out: &mut Parsed) {
    out.clear();
    let expected_rows = (b.end - b.start) / 48 + 16;
    out.part.reserve(expected_rows);
    out.ids.reserve(expected_rows * 4);
    out.id_ends.reserve(expected_rows);
    out.end_byte = b.byte + (b.end - b.start) as u64;
    let body = &b.buf[b.start..b.end];
    let plain = !b.header
        && shape.cols.width <= PLAIN_FIELDS
        && u32::try_from(body.len()).is_ok()
        && only_crlf(body);
    if plain {
        parse_plain(shape, body, b.line, out);
    } else {
        parse_with_reader(shape, b, out);
    }
}

/// Every `\r` in `body` is followed by `\n`: then, without quotes, records are exactly the
/// lines between `\n`s less a trailing `\r` (the csv crate also ends a record at a lone `\r`).
fn only_crlf(body: &[u8]) -> bool {
    memchr::memchr_iter(b'\r', body).all(|i| body.get(i + 1) == Some(&b'\n'))
}

/// The bytes of `w` equal to `c`, as the high bit of each byte (exact, unlike the usual
/// zero-byte test: no borrow runs between bytes).
#[inline]
fn bytes_equal(w: u64, c: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (u64::from(c) * 0x0101_0101_0101_0101);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The state of [`parse_plain`] between delimiters.
struct PlainLines {
    /// Where the current line starts in the body.
    start: usize,
    /// Its commas so far (the first [`PLAIN_FIELDS`] at `ends`, relative to `start`).
    commas: usize,
    ends: [u32; PLAIN_FIELDS],
    /// The physical line of the current line.
    line: u64,
}

impl PlainLines {
    /// A `,` or `\n` at `i`.
    #[inline]
    fn delimiter(&mut self, shape: &Shape<'_>, body: &[u8], i: usize, out: &mut Parsed) {
        if body[i] == b',' {
            if self.commas < PLAIN_FIELDS {
                // Offsets fit in u32: the caller checked the block's length.
                self.ends[self.commas] = (i - self.start) as u32;
            }
            self.commas += 1;
        } else {
            let text = &body[self.start..i];
            plain_record(shape, text, &mut self.ends, self.commas, self.line, out);
            self.line += 1;
            self.start = i + 1;
            self.commas = 0;
        }
    }
}

/// Parses a quote-free block with no lone `\r` (see [`only_crlf`]) as the csv crate would:
/// blank lines are skipped, a line is a record. Commas and newlines are found eight bytes at a
/// time. `line` is the physical line of `body[0]`.
fn parse_plain(shape: &Shape<'_>, body: &[u8], line: u64, out: &mut Parsed) {
    let mut p = PlainLines {
        start: 0,
        commas: 0,
        ends: [0; PLAIN_FIELDS],
        line,
    };
    let mut chunks = body.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let w = u64::from_le_bytes(bytes);
        let mut hits = bytes_equal(w, b',') | bytes_equal(w, b'\n');
        while hits != 0 {
            let i = at + (hits.trailing_zeros() / 8) as usize;
            hits &= hits - 1;
            p.delimiter(shape, body, i, out);
        }
        at += 8;
    }
    for i in at..body.len() {
        if body[i] == b',' || body[i] == b'\n' {
            p.delimiter(shape, body, i, out);
        }
    }
    if p.start < body.len() {
        let text = &body[p.start..];
        plain_record(shape, text, &mut p.ends, p.commas, p.line, out);
    }
}

/// One line of [`parse_plain`] (its terminator excluded), its first `commas` commas at `ends`.
#[inline]
fn plain_record(
    shape: &Shape<'_>,
    text: &[u8],
    ends: &mut [u32; PLAIN_FIELDS],
    commas: usize,
    line: u64,
    out: &mut Parsed,
) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.is_empty() {
        return;
    }
    if commas < PLAIN_FIELDS {
        ends[commas] = text.len() as u32;
    }
    let rec = Plain {
        text,
        ends,
        width: commas + 1,
    };
    out.take(shape, &rec, || line);
}

/// Parses a block with the csv crate (the header block, lone `\r`s, very wide tables).
fn parse_with_reader(shape: &Shape<'_>, b: &Block, out: &mut Parsed) {
    let data = &b.buf[..b.end];
    let mut lines = Lines {
        at: b.start,
        line: b.line,
    };
    let mut rdr = builder().buffer_capacity(1 << 16).from_reader(data);
    let mut rec = ByteRecord::new();
    let mut header = b.header;
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                out.fatal = Some(csv_error(shape.path, e));
                break;
            }
        }
        if header {
            header = false;
            continue;
        }
        out.take(shape, &rec, || lines.of(data, rec.position()));
    }
}

/// The hasher back from the splitter (which has finished or is finishing).
fn join(splitter: ScopedJoinHandle<'_, Sha256>) -> Sha256 {
    match splitter.join() {
        Ok(h) => h,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Takes the workers' output in file order into the table.
fn consume(
    shape: &Shape<'_>,
    from: Vec<Receiver<Out>>,
    back: &[Sender<Box<Parsed>>],
    splitter: ScopedJoinHandle<'_, Sha256>,
    table: &mut EventTable,
    budget: &mut Budget,
    size: u64,
) -> Result<(Sha256, u64), ReadError> {
    let mut users = UserIndex::default();
    let mut rows: u64 = 0;
    let mut reserved = false;
    // Bytes of the blocks taken so far.
    let mut split_bytes = 0;
    for seq in 0.. {
        // Closed: the splitter reached the end of the file and the workers are done. (A
        // panicking worker also closes its channel; the scope then re-raises the panic.)
        let Ok(out) = from[seq % from.len()].recv() else {
            break;
        };
        let mut p = match out {
            Out::Parsed(p) => p,
            Out::Failed(e) => return Err(e),
            Out::Rest(rest) => {
                let mut hasher = join(splitter);
                let Rest {
                    buf,
                    end,
                    file,
                    origin,
                } = rest;
                let input = io::Cursor::new(&buf[..end]).chain(Hashing {
                    inner: file,
                    hasher: &mut hasher,
                });
                let mut o = Opened {
                    rdr: builder().buffer_capacity(BUFFER).from_reader(input),
                    layout: shape.layout.clone(),
                    header: shape.header.clone(),
                    origin,
                };
                events_sequential(shape, &mut o, table, &mut users, budget, size)?;
                drop(o);
                return Ok((hasher, split_bytes));
            }
        };
        for e in p.bad.drain(..) {
            budget.absorb(e)?;
        }
        if let Some(e) = p.fatal.take() {
            return Err(e);
        }
        rows += p.rows;
        split_bytes = p.end_byte;
        if !reserved && rows >= SAMPLE_ROWS {
            // Estimate the rows still to come from the bytes the rows so far took.
            reserved = true;
            let per_row = (p.end_byte / rows).max(1);
            let left = size.saturating_sub(p.end_byte) / per_row;
            table.reserve(usize::try_from(left + left / 16).unwrap_or(0));
        }
        // The block's events, then their users.
        table.extend_events(&p.part);
        let mut from_id = 0;
        let mut u = 0;
        for &end in &p.id_ends {
            if end != from_id {
                // The worker wrote whole validated ids, so these are char boundaries.
                let id = &p.ids[from_id..end];
                u = match users.get(id.as_bytes()) {
                    Some(u) => u,
                    None => users.intern(id, table),
                };
                from_id = end;
            }
            table.user.push(u);
        }
        // Back to the worker that filled it; gone only if that worker stopped.
        let _ = back[seq % back.len()].send(p);
    }
    Ok((join(splitter), split_bytes))
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
    let file = File::open(path).map_err(|e| super::io_error(path, e))?;
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

#[cfg(test)]
mod tests;
