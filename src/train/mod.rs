//! Training: snapshots, labels, model selection, out-of-time evaluation, and the report.
//!
//! - [`config`] — `training/train.toml`.
//! - [`pipeline`] — the pure pipeline, events table in, fitted scorer + manifest + report out.
//! - [`report`] — the HTML report renderer.
//! - [`write_bundle`] (here): the edge that writes a trained result as a bundle and makes it
//!   current.

pub mod config;
pub mod pipeline;
pub mod report;

pub use config::TrainConfig;
pub use pipeline::{fit, rfc3339, user_key, TrainError, TrainInput, Trained};

use crate::bundle::{BundleError, BundleStore, REPORT, SCORES};
use crate::io::write::{ScoreRow, ScoreWriter, WriteError};
use crate::model::{Score, Scorer};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WriteBundleError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("writing the scored snapshot: {0}")]
    Scores(#[from] WriteError),
    #[error("writing the report {path}: {source}")]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A new version id: creation time (sortable) and a hash of what went in.
pub fn version_id(
    created: chrono::DateTime<chrono::Utc>,
    fingerprint: &str,
    cfg: &TrainConfig,
    as_of: Option<i64>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(fingerprint.as_bytes());
    h.update(serde_json::to_vec(cfg).unwrap_or_default());
    h.update(
        format!(
            "{as_of:?}{}",
            created.timestamp_nanos_opt().unwrap_or_default()
        )
        .as_bytes(),
    );
    format!(
        "{}-{}",
        created.format("%Y%m%dT%H%M%SZ"),
        &hex::encode(h.finalize())[..8]
    )
}

/// The output row of one scored user (`tiering score`, the bundle's `scores.parquet`).
/// `factors` is `scorer.format_factors(score)`, passed in so callers can reuse its buffer.
pub fn score_row<'a>(
    scorer: &'a Scorer,
    user_id: &'a str,
    s: &Score,
    factors: &'a str,
) -> ScoreRow<'a> {
    let tier = &scorer.tiers.tiers[usize::from(s.tier)];
    ScoreRow {
        user_id,
        tier_id: &tier.id,
        tier_name: &tier.name_en,
        churn_probability: s.churn_probability,
        risk_level: s.risk_level.id(),
        risk_percentile: s.risk_percentile,
        rfm_segment: s.rfm_segment.id(),
        lifecycle_stage: s.lifecycle_stage.id(),
        top_factors: factors,
    }
}

/// Writes every user's score through `writer`, row `u` named `user_ids[u]`. The reasons text
/// is formatted on all cores, a block of rows at a time, ahead of the (sequential) writer.
pub fn write_scores(
    writer: &mut ScoreWriter,
    scorer: &Scorer,
    user_ids: &[String],
    scores: &[Score],
) -> Result<(), WriteError> {
    use rayon::prelude::*;
    const ROWS: usize = 1 << 15;
    for (block, (ids, ss)) in user_ids.chunks(ROWS).zip(scores.chunks(ROWS)).enumerate() {
        let factors: Vec<String> = ss.par_iter().map(|s| scorer.format_factors(s)).collect();
        for ((id, s), f) in ids.iter().zip(ss).zip(&factors) {
            writer.write(&score_row(scorer, id, s, f))?;
        }
        tracing::trace!(block, "scores written");
    }
    Ok(())
}

/// Writes the trained result as a bundle (scores, report, model, state, manifest), renames it
/// into place, validates it by loading it back, and only then makes it current.
pub fn write_bundle(store: &BundleStore, trained: &Trained) -> Result<PathBuf, WriteBundleError> {
    let version = trained.manifest.version.clone();
    let pending = store.begin(&version)?;
    let scorer = &trained.scorer;
    let report_path = pending.path(REPORT);
    // The scores table, the report and the model + state are independent files: write them
    // side by side, then checksum them all into the manifest.
    let (scores, (report, payload)) = rayon::join(
        || -> Result<(), WriteError> {
            let mut writer = ScoreWriter::create(&pending.path(SCORES))?;
            write_scores(
                &mut writer,
                scorer,
                &trained.snapshot.user_ids,
                &trained.scores,
            )?;
            writer.finish().map(|_| ())
        },
        || {
            rayon::join(
                || std::fs::write(&report_path, report::render(&trained.report)),
                || pending.write_payload(scorer, &trained.snapshot),
            )
        },
    );
    scores?;
    report.map_err(|source| WriteBundleError::Report {
        path: report_path.clone(),
        source,
    })?;
    payload?;
    let dir = pending.seal(trained.manifest.clone())?;
    store.promote(&version)?;
    Ok(dir)
}
