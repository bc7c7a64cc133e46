//! `tiering`: learned user tiers and calibrated churn probabilities for live-commerce platforms.
//!
//! # Layout
//!
//! Dependencies point down this list; nothing points up.
//!
//! - [`features`] — pure code over arrays. The event vocabulary, the columnar events table, the
//!   per-user aggregates the server keeps current, point-in-time feature vectors, the scaler, and
//!   the rule-based views (RFM segments, lifecycle stages). Imports nothing of ours.
//! - [`model`] — pure code over feature matrices. K-means tiers with stable business identities,
//!   the churn classifiers (logistic baseline, gradient boosting), calibration, metrics, and the
//!   [`model::Scorer`] that both `tiering score` and the server call per user.
//! - [`train`] — the training pipeline (snapshots, labels, model selection, out-of-time evaluation)
//!   and the HTML report. Uses `features` and `model`.
//! - [`bundle`] — the versioned model bundle on disk: manifest, checksum, atomic write, `CURRENT`.
//! - [`io`] — readers (CSV, Parquet) that turn files into an [`features::EventTable`] with errors
//!   that name file, line and column, and writers for scored users.
//! - [`generate`] — a seeded synthetic live-commerce platform for demos, tests and benchmarks.
//! - [`serve`] — the gRPC service. Proto types stop at its edge.
//!
//! The `tiering` binary (`src/main.rs`, `src/cli/`) sits on top; it is the only place `anyhow`
//! is used.

pub mod bundle;
pub mod features;
pub mod generate;
pub mod io;
pub mod model;
pub mod score;
pub mod serve;
pub mod train;
