//! I/O at the edges: files in, files out. Nothing here decides anything about the models.
//!
//! - [`read`] — the events (and optional users) table from CSV or Parquet into an
//!   [`crate::features::EventTable`], with errors naming file, line and column.
//! - [`write`] — scored users to CSV or Parquet (chosen by the output's extension).
//! - [`generated`] — streaming writers for `tiering generate` (events and users tables).

pub mod generated;
pub mod read;
pub mod write;
