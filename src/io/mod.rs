//! I/O at the edges: files in, files out. Nothing here decides anything about the models.
//!
//! - [`read`] — the events (and optional users) table from CSV or Parquet into an
//!   [`crate::features::EventTable`], with errors naming file, line and column.
//! - [`write`](mod@write) — the table writers' shared errors, and scored users to CSV or
//!   Parquet (chosen by the output's extension).
//! - [`aggregates`] — the versioned per-user aggregates table (Parquet, a file or Spark's part
//!   files) that `tiering features` and the warehouse SQL write and `--aggregates` reads.
//! - [`atomic`] — one atomic file write (temporary file, sync, rename, sync the directory), for
//!   every file the project writes whole.
//!
//! The generator's writers live with the generator (`crate::generate::writer`); `io` imports
//! nothing above `features`.

pub mod aggregates;
pub mod atomic;
pub mod privacy;
pub mod read;
pub mod write;
