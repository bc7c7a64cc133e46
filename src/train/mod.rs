//! Training: snapshots, labels, model selection, out-of-time evaluation, and the report.

pub mod report;
