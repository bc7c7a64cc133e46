//! `tiering`: learned user tiers and calibrated churn probabilities for live-commerce platforms.
//!
//! # Layout
//!
//! Lowest layer first; a module imports only modules of a lower layer, never one beside or above
//! it (`tests/it/architecture.rs` checks this, and that no two sibling modules import each other).
//!
//! 1. Pure code, importing nothing of ours:
//!    - [`features`] — pure code over arrays. The event vocabulary, the columnar events table,
//!      the per-user aggregates the server keeps current, point-in-time feature vectors, the
//!      scaler, the rule-based views (RFM segments, lifecycle stages), and the small shared
//!      facts: [`features::hash`] (FNV-1a keys) and [`features::time`] (the times people write
//!      and the one form the project writes).
//!    - [`pb`] — the code generated from `proto/tiering/v1/tiering.proto`, shared by the server
//!      and the CLI clients.
//! 2. On top of `features`:
//!    - [`model`] — pure code over feature matrices. K-means tiers with stable business
//!      identities, the churn classifiers (logistic baseline, gradient boosting), calibration,
//!      metrics, drift (PSI against a bundle's training distributions), and the
//!      [`model::Scorer`] that both `tiering score` and the server call per user.
//!    - [`io`] — files in and out at the edge: CSV/Parquet readers that turn files into an
//!      [`features::EventTable`] with errors naming file, line and column, the scored-user
//!      writers, and [`io::atomic`] (the one atomic file write).
//! 3. On top of those:
//!    - [`bundle`] — the versioned model bundle on disk: manifest, checksums, `CURRENT`/`HISTORY`.
//!    - [`generate`] — a seeded synthetic live-commerce platform, and its writer.
//! 4. [`score`] — offline scoring: one row per user, written through `io`.
//! 5. The two applications:
//!    - [`train`] — [`train::run`] (a [`train::TrainJob`] in, a bundle out): the pipeline as
//!      named stages (windows, evaluate, candidates, tiers, scoring, stability, summary) and
//!      the HTML report, drawn from the manifest.
//!    - [`serve`] — the gRPC service: thin handlers over the user state (a
//!      [`serve::state::UserState`] backend: `embedded` today) and the live model slot. Proto
//!      types stop at its edge (`serve::convert`).
//!
//! The `tiering` binary (`src/main.rs`, `src/cli/`) sits on top; it is the only place `anyhow`
//! is used.

pub mod bundle;
pub mod features;
pub mod generate;
pub mod io;
pub mod model;
pub mod pb;
pub mod score;
pub mod serve;
pub mod train;
