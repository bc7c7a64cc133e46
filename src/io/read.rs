//! Reading the data contract: an events table (and an optional users table), CSV or Parquet,
//! into an [`EventTable`], with errors that name file, line (or row) and column.
//!
//! - [`read_dataset`] is the entry point: a directory holding `events.csv` or `events.parquet`
//!   (and optionally `users.csv` or `users.parquet`), or one events file.
//! - [`error`]: [`ReadError`] and the places it names ([`Location`], [`Cell`]).
//! - private: `fields`, the known columns, header resolution, the per-field parsers and the
//!   assembly of an event both formats share; `time`, the timestamp fast path; `users`, the
//!   user index in front of the table and the users table's sink; `csv_file` and
//!   `parquet_file`, the formats.
//! - [`pseudonym`]: user ids replaced by a keyed hash as they are read (`--pseudonymize-key-file`).
//! - this module: which files a path stands for, the bad-row budget, and the report.
//!
//! Speed: a row costs one pass of the CSV parser over a reused `ByteRecord`, hand-parsed
//! timestamps, and no allocation unless it introduces a new user. Consecutive rows of the same
//! user skip even the hash-map lookup; other ids up to 31 bytes are found in an inline-key table
//! (time-ordered exports interleave users). The fingerprint is computed from the bytes as they
//! are read (CSV) or by a second thread streaming the file (Parquet).
//!
//! Measured (release, 2 shared cores, 1M rows / 56 MB): ~4M rows/s grouped by user, ~3M rows/s
//! with users shuffled, so 50M rows load in roughly 12-17 s of one core.

mod csv_file;
pub mod error;
mod fields;
mod parquet_file;
pub mod pseudonym;
mod time;
mod users;

pub use error::{Cell, Delimiter, Location, ReadError, RowRef};

use crate::features::vocabulary::{KindResolver, KindSeen, UnknownKinds};
use crate::features::{EventTable, Timestamp, DEFAULT_EARLIEST_EVENT};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use users::{UserIndex, UsersSink};

/// How strict to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// Bad rows to skip (and count) before giving up; 0 = the first bad row is an error.
    pub max_bad_rows: usize,
    /// Events before this time are bad rows (training's `earliest_event_time`; the rules are
    /// documented at [`DEFAULT_EARLIEST_EVENT`], the default).
    pub earliest: Timestamp,
    /// How kind names become canonical kinds (training's `[events]`; canonical names only by
    /// default). An unmapped kind under `unknown_kinds = "error"` ends the read whatever
    /// `max_bad_rows` says: it is a vocabulary to configure, not a malformed row.
    pub kinds: Arc<KindResolver>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_bad_rows: 0,
            earliest: DEFAULT_EARLIEST_EVENT,
            kinds: Arc::new(KindResolver::CANONICAL),
        }
    }
}

/// What was read.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub events: EventTable,
    pub report: ReadReport,
}

/// How the read went, for logs, the bundle manifest and the training report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// The files read, events first.
    pub files: Vec<PathBuf>,
    /// Event rows loaded into the table (bad rows not included).
    pub rows: u64,
    /// Rows skipped as bad (events and users tables), at most `max_bad_rows`.
    pub bad_rows: u64,
    /// The messages of the first [`MAX_BAD_ROW_SAMPLES`] skipped rows.
    pub bad_row_samples: Vec<String>,
    /// Hex SHA-256 over the raw bytes of the files, in the order of `files`: identifies the
    /// training data in the bundle manifest.
    pub fingerprint: String,
    /// Per user index, the `persona` column of the users table, when it has one (ground truth
    /// of generated data, used only to score how well tiers recover it).
    pub personas: Option<Vec<Option<String>>>,
    /// Every source kind name seen in the events, with its rows and what it became.
    pub kinds_seen: Vec<KindSeen>,
    /// Rows dropped on purpose: ignored kinds, and unmapped ones under `unknown_kinds = "skip"`
    /// (not bad rows).
    pub kind_rows_dropped: u64,
}

/// How many skipped-row messages [`ReadReport::bad_row_samples`] keeps.
pub(crate) const MAX_BAD_ROW_SAMPLES: usize = 10;

/// Counts bad rows against `max_bad_rows`, keeping the first messages.
#[derive(Debug)]
struct Budget {
    max: usize,
    bad: u64,
    samples: Vec<String>,
}

impl Budget {
    fn new(max: usize) -> Self {
        Budget {
            max,
            bad: 0,
            samples: Vec::new(),
        }
    }

    /// Skips a bad row if the budget allows, or turns it into the error that ends the read.
    #[cold]
    fn absorb(&mut self, e: ReadError) -> Result<(), ReadError> {
        if matches!(e, ReadError::UnknownKind { .. }) {
            // A vocabulary to configure, never a skipped bad row (see `ReadOptions::kinds`).
            return Err(e);
        }
        if self.bad < self.max as u64 {
            self.bad += 1;
            if self.samples.len() < MAX_BAD_ROW_SAMPLES {
                self.samples.push(e.to_string());
            }
            Ok(())
        } else if self.max == 0 {
            Err(e)
        } else {
            Err(ReadError::TooManyBadRows {
                limit: self.max,
                first_over: Box::new(e),
            })
        }
    }
}

/// A file format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Parquet,
}

/// The files a path stands for.
#[derive(Debug)]
struct Inputs {
    events: (PathBuf, Format),
    users: Option<(PathBuf, Format)>,
}

fn io_error(path: &Path, source: io::Error) -> ReadError {
    if source.kind() == io::ErrorKind::NotFound {
        ReadError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `dir/<stem>.csv` or `dir/<stem>.parquet`: at most one of them.
fn table_in(dir: &Path, stem: &'static str) -> Result<Option<(PathBuf, Format)>, ReadError> {
    let csv = dir.join(format!("{stem}.csv"));
    let parquet = dir.join(format!("{stem}.parquet"));
    match (csv.is_file(), parquet.is_file()) {
        (true, true) => Err(ReadError::BothFormats {
            dir: dir.to_path_buf(),
            table: stem,
        }),
        (true, false) => Ok(Some((csv, Format::Csv))),
        (false, true) => Ok(Some((parquet, Format::Parquet))),
        (false, false) => Ok(None),
    }
}

fn resolve_inputs(path: &Path) -> Result<Inputs, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        let Some(events) = table_in(path, "events")? else {
            let mut found: Vec<String> = std::fs::read_dir(path)
                .map_err(|e| io_error(path, e))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            found.sort();
            found.truncate(20);
            return Err(ReadError::NoEventsFile {
                dir: path.to_path_buf(),
                found,
            });
        };
        let users = table_in(path, "users")?;
        return Ok(Inputs { events, users });
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let format = match ext.as_str() {
        "csv" => Format::Csv,
        "parquet" => Format::Parquet,
        _ => {
            return Err(ReadError::UnsupportedExtension {
                path: path.to_path_buf(),
                ext,
            })
        }
    };
    Ok(Inputs {
        events: (path.to_path_buf(), format),
        users: None,
    })
}

/// Reads a data set: `path` is a directory holding `events.csv` or `events.parquet` (exactly
/// one) and optionally `users.csv` or `users.parquet`, or a single events file (`.csv` or
/// `.parquet`).
///
/// Columns are matched by header name, in any order, case-insensitively; unknown columns are
/// ignored. Up to `opts.max_bad_rows` bad rows are skipped and counted in the report.
///
/// An unmapped kind (with `unknown_kinds = "error"`) fails the read with
/// [`ReadError::UnknownKind`] at its first row; the file is then read once more, skipping
/// unmapped kinds, so that the error can say how many rows have each unmapped kind.
pub fn read_dataset(path: &Path, opts: &ReadOptions) -> Result<Dataset, ReadError> {
    let d = read_dataset_with(path, opts, csv_file::Split::auto())
        .map_err(|e| count_unknown(path, opts, e))?;
    // The category names join the process's dictionary, so that scores written from this data
    // (`tiering score`, the bundle's scores.parquet) name the interests.
    crate::features::interests::learn_names(d.events.kind_tally.categories());
    crate::features::interests::learn_room_names(d.events.kind_tally.rooms());
    Ok(d)
}

/// [`ReadError::UnknownKind`] with the rows of every unmapped kind, counted by a second read
/// that skips them (other errors pass through).
#[cold]
fn count_unknown(path: &Path, opts: &ReadOptions, e: ReadError) -> ReadError {
    let ReadError::UnknownKind { at, value, .. } = e else {
        return e;
    };
    let mut kinds = (*opts.kinds).clone();
    kinds.unknown = UnknownKinds::Skip;
    let counting = ReadOptions {
        max_bad_rows: usize::MAX,
        earliest: opts.earliest,
        kinds: Arc::new(kinds),
    };
    let counts = read_dataset_with(path, &counting, csv_file::Split::auto())
        .map(|d| d.events.kind_tally.unknown())
        .unwrap_or_default();
    let t = value.trim();
    let rows = counts
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(t))
        .map_or(1, |c| c.1);
    let others = counts
        .into_iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(t))
        .collect();
    ReadError::UnknownKind {
        at,
        value,
        counts: Box::new(error::UnmappedCounts { rows, others }),
    }
}

/// [`read_dataset`], with CSV events files split for parsing as `split` says.
fn read_dataset_with(
    path: &Path,
    opts: &ReadOptions,
    split: csv_file::Split,
) -> Result<Dataset, ReadError> {
    let started = std::time::Instant::now();
    let inputs = resolve_inputs(path)?;
    let mut table = EventTable::default();
    let mut budget = Budget::new(opts.max_bad_rows);
    let mut hasher = Sha256::new();

    let (events_path, format) = &inputs.events;
    match format {
        Format::Csv => {
            csv_file::read_events(
                events_path,
                &mut table,
                &mut budget,
                &mut hasher,
                split,
                opts.earliest,
                &opts.kinds,
            )?;
        }
        Format::Parquet => parquet_file::read_events(
            events_path,
            &mut table,
            &mut budget,
            &mut hasher,
            opts.earliest,
            &opts.kinds,
        )?,
    }
    let rows = table.len() as u64;
    let mut files = vec![events_path.clone()];

    let mut personas = None;
    if let Some((users_path, format)) = &inputs.users {
        table.columns.users_table = true;
        personas = match format {
            Format::Csv => csv_file::read_users(users_path, &mut table, &mut budget, &mut hasher)?,
            Format::Parquet => {
                parquet_file::read_users(users_path, &mut table, &mut budget, &mut hasher)?
            }
        };
        files.push(users_path.clone());
    }

    let kinds_seen = table.kind_tally.seen(&opts.kinds);
    let kind_rows_dropped = table.kind_tally.dropped();
    let report = ReadReport {
        kinds_seen,
        kind_rows_dropped,
        files,
        rows,
        bad_rows: budget.bad,
        bad_row_samples: budget.samples,
        fingerprint: hex::encode(hasher.finalize()),
        personas,
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        path = %path.display(),
        rows,
        users = table.n_users(),
        bad_rows = report.bad_rows,
        kind_rows_dropped,
        seconds,
        rows_per_second = rows as f64 / seconds.max(1e-9),
        "read events"
    );
    Ok(Dataset {
        events: table,
        report,
    })
}

#[cfg(test)]
mod tests;
