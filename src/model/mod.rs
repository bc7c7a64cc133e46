//! Models: pure code over feature matrices. No I/O, no proto types.
//!
//! - [`metrics`] — ROC-AUC, PR-AUC, Brier, log loss, lift, calibration tables, ARI.
//! - [`btyd`] — BG/NBD + Gamma-Gamma: P(alive), expected orders, CLV, value at risk.
//! - [`calibration`] — Platt scaling.
//! - [`drift`] — population stability index against a bundle's training distributions.
//! - [`churn`] — the churn classifiers (logistic baseline, boosted trees) in scoring form.
//! - [`logistic`] — the logistic baseline's solver (Newton's method).
//! - [`tiers`] — k-means tiers, k selection, identity matching across retrains. Uses
//!   `identity`.
//! - [`identity`] — [`identity::TierIdentity`], the catalogue of business identities and how
//!   centroids are judged (weights on [`crate::features::Feature`]s). Imports nothing of
//!   `tiers`.
//! - [`scorer`] — the [`Scorer`] used offline and by the server: tier, probability, reasons.

pub mod btyd;
pub mod calibration;
pub mod churn;
pub mod drift;
pub mod identity;
pub(crate) mod logistic;
pub mod metrics;
pub mod scorer;
pub mod tiers;

pub use scorer::{RiskLevel, RiskThresholds, Score, Scorer};
