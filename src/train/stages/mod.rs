//! The pipeline's named stages, in the order [`super::pipeline::fit`] runs them. Each is a
//! function with typed inputs and outputs:
//!
//! - [`windows`] — snapshot times (out of time or not), point-in-time aggregates, labels.
//! - [`purchases`] — the purchase candidates (rhythm, BG/NBD per snapshot) where the data
//!   supports them.
//! - [`evaluate`] — fit the candidate churn models and measure them (both evaluation branches
//!   share one evaluation set builder); [`candidates`] holds the split, fits and calibration.
//! - final fit — [`candidates::final_fit`]: the chosen kind again, on the latest labelled
//!   snapshot.
//! - [`tiers`] — k-means tiers with identities matched to the previous bundle.
//! - [`scoring`] — the served scorer, every user scored, tier profiles and descriptions.
//! - [`stability`] — model vs behaviour tier changes against the previous bundle, drift against
//!   its training distributions, and this bundle's own drift reference.
//! - [`summary`] — observed churn, ARI, transitions, importance; the manifest and report data.
//!
//! [`rows`] holds the feature-matrix helpers they share.

pub(crate) mod candidates;
pub(crate) mod evaluate;
pub(crate) mod purchases;
pub(crate) mod rows;
pub(crate) mod scoring;
pub(crate) mod stability;
pub(crate) mod summary;
pub(crate) mod tiers;
pub(crate) mod windows;
