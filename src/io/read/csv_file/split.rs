//! The parallel path for quote-free text: a splitter thread cuts the file into blocks, workers
//! parse them ([`super::plain`], or the csv crate for the header block, lone `\r`s and wide
//! tables), and the calling thread takes their rows in file order into the table.
//!
//! Buffers go round: the splitter reuses the workers' spent block buffers, and each worker
//! refills the [`Parsed`] the consumer hands back, so a run allocates per worker, not per block.

use super::super::{Budget, ReadError, UserIndex};
use super::parsed::Parsed;
use super::plain::{only_crlf, parse_plain, PLAIN_FIELDS};
use super::rows::{builder, csv_error, events_sequential, Hashing, Opened, Origin};
use super::{fill, Shape, Split, BUFFER, SAMPLE_ROWS};
use crate::features::EventTable;
use csv::ByteRecord;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::ScopedJoinHandle;

/// `\n` bytes in `b`.
pub(super) fn count_newlines(b: &[u8]) -> u64 {
    // Per chunk in a u8 so the compiler can vectorize; 255 matches cannot overflow it.
    b.chunks(255)
        .map(|c| u64::from(c.iter().fold(0u8, |n, &x| n + u8::from(x == b'\n'))))
        .sum()
}

/// The state the splitter starts from: the first block read (and hashed), where it is cut.
pub(super) struct Start {
    pub(super) file: File,
    pub(super) first: Vec<u8>,
    pub(super) cut: usize,
    pub(super) eof: bool,
    pub(super) hasher: Sha256,
}

/// Bytes of the file to parse on a worker. `buf[start..end]` is the block; for every block but
/// the first `buf[0]` is the `\n` that ended the previous one, so that a reader starting there
/// is in the state the file's reader is in after that `\n` (e.g. it strips no byte-order mark).
pub(super) struct Block {
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
pub(super) struct Rest {
    buf: Vec<u8>,
    end: usize,
    file: File,
    origin: Origin,
}

/// What the splitter sends, in file order.
pub(super) enum Piece {
    Block(Block),
    Rest(Rest),
    Failed(ReadError),
}

/// What a worker sends on, in file order.
pub(super) enum Out {
    Parsed(Box<Parsed>),
    Rest(Rest),
    Failed(ReadError),
}

/// The splitter, workers and consumer (this thread) over one events file.
pub(super) fn split_and_parse(
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
pub(super) fn split_file(
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
                let _ = tx.send(Piece::Failed(super::super::io_error(path, e)));
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
pub(super) fn work(
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
pub(super) struct Lines {
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
pub(super) fn parse_block(shape: &Shape<'_>, b: &Block, out: &mut Parsed) {
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

/// Parses a block with the csv crate (the header block, lone `\r`s, very wide tables).
pub(super) fn parse_with_reader(shape: &Shape<'_>, b: &Block, out: &mut Parsed) {
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
pub(super) fn join(splitter: ScopedJoinHandle<'_, Sha256>) -> Sha256 {
    match splitter.join() {
        Ok(h) => h,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Takes the workers' output in file order into the table.
pub(super) fn consume(
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
