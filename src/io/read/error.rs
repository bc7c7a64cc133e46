//! What can go wrong reading a data set, and where: [`ReadError`] (one variant per cause, each
//! naming the file, and for a bad row its line or Parquet row, column and value), and the
//! places it names ([`Location`], [`Cell`]).

use super::fields::{self, Cause, HeaderError};
use crate::features::{format_rfc3339, Timestamp};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Where a row is in a file: a physical line of a CSV file (the header is line 1) or a row of a
/// Parquet file (1-based, data rows only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRef {
    Line(u64),
    Row(u64),
}

/// A file, and optionally a row in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub row: Option<RowRef>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.row {
            None => write!(f, "{}", self.file.display()),
            Some(RowRef::Line(l)) => write!(f, "{}:{l}", self.file.display()),
            Some(RowRef::Row(r)) => write!(f, "{}:row {r}", self.file.display()),
        }
    }
}

/// One field of one row of one file: `events.csv:17:2 (column ts)`, or for Parquet
/// `events.parquet:row 16:2 (column ts)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub file: PathBuf,
    pub row: RowRef,
    /// 1-based position in the header; `None` when the file has no such column (an order row in
    /// a file without `amount`).
    pub column: Option<usize>,
    /// The contract's name of the column.
    pub name: &'static str,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = Location {
            file: self.file.clone(),
            row: Some(self.row),
        };
        match self.column {
            Some(c) => write!(f, "{at}:{c} (column {})", self.name),
            None => write!(
                f,
                "{at} (column {}, which the file does not have)",
                self.name
            ),
        }
    }
}

/// A delimiter a comma-separated file must not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    Semicolon,
    Tab,
    Pipe,
}

impl Delimiter {
    pub(super) const ALL: [Delimiter; 3] = [Delimiter::Semicolon, Delimiter::Tab, Delimiter::Pipe];

    pub fn byte(self) -> u8 {
        match self {
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
            Delimiter::Pipe => b'|',
        }
    }
}

impl fmt::Display for Delimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delimiter::Semicolon => "semicolon-separated (';')",
            Delimiter::Tab => "tab-separated ('\\t')",
            Delimiter::Pipe => "pipe-separated ('|')",
        })
    }
}

/// Why a data set could not be read. Every variant names the file; row problems also name the
/// line (or Parquet row), the column, and the offending value (at most 64 characters).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: no such file or directory", .path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no events table (expected events.csv or events.parquet); {}", .dir.display(), listing(.found))]
    NoEventsFile { dir: PathBuf, found: Vec<String> },
    #[error("{}: both {table}.csv and {table}.parquet are present; keep only one", .dir.display())]
    BothFormats { dir: PathBuf, table: &'static str },
    #[error("{}: unsupported file type {ext:?} (expected .csv or .parquet, or a directory holding events.csv or events.parquet)", .path.display())]
    UnsupportedExtension { path: PathBuf, ext: String },
    #[error("{}: the file is empty (expected a header line naming {expected})", .path.display())]
    EmptyFile {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{at}: the header is one column, {header:?}, which looks {delimiter}; CSV input must be comma-separated")]
    WrongDelimiter {
        at: Location,
        delimiter: Delimiter,
        header: String,
    },
    #[error("{at}: missing required column {column} (found header: {})", .found.join(", "))]
    MissingColumn {
        at: Location,
        column: &'static str,
        found: Vec<String>,
    },
    #[error("{at}: column {column} appears twice (columns {first} and {second})")]
    DuplicateColumn {
        at: Location,
        column: &'static str,
        first: usize,
        second: usize,
    },
    #[error("{}: column {index} ({column}) has type {found}; expected {expected}", .path.display())]
    WrongType {
        path: PathBuf,
        column: &'static str,
        index: usize,
        found: String,
        expected: &'static str,
    },
    #[error("{at}: expected {expected} fields as in the header, found {found} ({})", field_count_hint(*.expected, *.found, .column))]
    FieldCount {
        at: Location,
        expected: usize,
        found: usize,
        column: String,
    },
    #[error("{at}: cannot parse {value:?} as a timestamp (expected RFC 3339 or YYYY-MM-DD)")]
    BadTimestamp { at: Cell, value: String },
    #[error("{at}: {value:?} is before the earliest accepted event time {} (earliest_event_time)", format_rfc3339(*.earliest))]
    BeforeEarliest {
        at: Cell,
        value: String,
        earliest: Timestamp,
    },
    #[error("{at}: negative amount {value:?} (amounts must be ≥ 0)")]
    NegativeAmount { at: Cell, value: String },
    #[error("{at}: an order needs an amount, found none")]
    MissingAmount { at: Cell },
    #[error("{at}: amount {value:?} is not a finite number")]
    NonFiniteAmount { at: Cell, value: String },
    #[error("{at}: amount {value:?} is too large (amounts hold at most 3.4e38)")]
    AmountTooLarge { at: Cell, value: String },
    #[error(
        "{at}: cannot parse {value:?} as an amount (expected a decimal number ≥ 0, e.g. 12.50)"
    )]
    BadAmount { at: Cell, value: String },
    #[error("{at}: cannot parse {value:?} as watch_seconds (expected a whole number ≥ 0 that fits in 32 bits)")]
    BadWatchSeconds { at: Cell, value: String },
    #[error("{at}: unknown event kind {value:?} in {counts} (expected one of order, view, comment, like, share, follow, gift, refund): map it under [events.kinds] in the training configuration (e.g. {example} = \"order\"), list it in events.ignore, or set events.unknown_kinds = \"skip\" to skip and count such rows", example = toml_key(value))]
    UnknownKind {
        at: Cell,
        value: String,
        /// Its rows and the other unmapped kinds' (boxed: the error stays small).
        counts: Box<UnmappedCounts>,
    },
    #[error("{at}: empty user_id")]
    EmptyUserId { at: Cell },
    #[error("{at}: malformed channel {value:?} (expected a short name such as live, short_video, social, offline_store or app: at most 64 bytes, no control characters)")]
    BadChannel { at: Cell, value: String },
    #[error("{at}: not valid UTF-8: {value:?}")]
    InvalidUtf8 { at: Cell, value: String },
    #[error("{at}: user {value:?} is listed twice in the users table")]
    DuplicateUser { at: Cell, value: String },
    #[error("more than {limit} bad rows (max_bad_rows = {limit}); the first row over the limit: {first_over}")]
    TooManyBadRows {
        limit: usize,
        first_over: Box<ReadError>,
    },
    #[error("{}: cannot read as CSV", .path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{}: cannot read as Parquet", .path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{}: cannot decode Parquet data", .path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },
}

/// How many rows have the kind an [`ReadError::UnknownKind`] names, and the other unmapped
/// kinds with their rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmappedCounts {
    /// Rows with the kind (1 until counted).
    pub rows: u64,
    pub others: Vec<(String, u64)>,
}

impl std::fmt::Display for UnmappedCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row(s)", self.rows)?;
        if self.others.is_empty() {
            return Ok(());
        }
        f.write_str("; other unmapped kinds: ")?;
        for (i, (n, c)) in self.others.iter().take(10).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n:?} in {c} row(s)")?;
        }
        if self.others.len() > 10 {
            write!(f, " and {} more", self.others.len() - 10)?;
        }
        Ok(())
    }
}

/// A kind name as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let t = name.trim();
    if !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        t.to_string()
    } else {
        format!("{t:?}")
    }
}

fn listing(found: &[String]) -> String {
    if found.is_empty() {
        "the directory is empty".to_string()
    } else {
        format!("found: {}", found.join(", "))
    }
}

fn field_count_hint(expected: usize, found: usize, column: &str) -> String {
    if found < expected {
        format!("no value for column {}, {column}", found + 1)
    } else {
        format!(
            "{} more than the header's last column, {column}",
            found - expected
        )
    }
}

impl ReadError {
    /// The error for a bad field, from the reader's location, the field's raw bytes and the
    /// earliest accepted event time the row was held to.
    pub(super) fn field(cause: Cause, at: Cell, raw: &[u8], earliest: Timestamp) -> ReadError {
        let value = fields::shown(raw);
        match cause {
            Cause::Timestamp => ReadError::BadTimestamp { at, value },
            Cause::BeforeEarliest => ReadError::BeforeEarliest {
                at,
                value,
                earliest,
            },
            Cause::NegativeAmount => ReadError::NegativeAmount { at, value },
            Cause::MissingAmount => ReadError::MissingAmount { at },
            Cause::NonFiniteAmount => ReadError::NonFiniteAmount { at, value },
            Cause::AmountTooLarge => ReadError::AmountTooLarge { at, value },
            Cause::BadAmount => ReadError::BadAmount { at, value },
            Cause::BadWatchSeconds => ReadError::BadWatchSeconds { at, value },
            Cause::UnknownKind => ReadError::UnknownKind {
                at,
                value,
                counts: Box::new(UnmappedCounts {
                    rows: 1,
                    others: Vec::new(),
                }),
            },
            Cause::EmptyUserId => ReadError::EmptyUserId { at },
            Cause::BadChannel => ReadError::BadChannel { at, value },
            Cause::InvalidUtf8 => ReadError::InvalidUtf8 { at, value },
            Cause::DuplicateUser => ReadError::DuplicateUser { at, value },
        }
    }

    /// The error for an unusable header. `line` is `Some(1)` for CSV, `None` for a Parquet
    /// schema.
    pub(super) fn header(
        e: HeaderError,
        path: &Path,
        row: Option<RowRef>,
        found: &[String],
    ) -> ReadError {
        let at = Location {
            file: path.to_path_buf(),
            row,
        };
        match e {
            HeaderError::Missing(col) => ReadError::MissingColumn {
                at,
                column: col.name(),
                found: found.to_vec(),
            },
            HeaderError::Duplicate { col, first, second } => ReadError::DuplicateColumn {
                at,
                column: col.name(),
                first: first + 1,
                second: second + 1,
            },
        }
    }
}
