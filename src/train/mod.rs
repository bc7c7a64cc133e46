//! Training: snapshots, labels, model selection, out-of-time evaluation, and the report.
//!
//! - [`run`] ([`job`]) — the library entry point: a [`TrainJob`] in (data, models directory,
//!   validated parameters), a written, current bundle out. The CLI and the tests call it.
//! - [`config`] — `training/train.toml`; [`TrainConfig::check`] gives [`ValidTrainParams`].
//! - [`pipeline`] — the pure pipeline, events table in, fitted scorer + manifest + report out,
//!   run as the named stages of `stages` (windows, evaluate, final fit, tiers, scoring,
//!   profiles, summary).
//! - [`source`] — what the pipeline reads: raw events or a warehouse's aggregates table
//!   ([`TrainData`]); `tiering features` writes the table from events.
//! - [`report`] — the HTML report renderer.
//! - [`export`] — `--export-eval`: the evaluation rows as CSV.
//! - [`backtest`] — a bundle's predictions against what happened since (the report's section
//!   when a previous bundle exists; `tiering backtest`).
//! - [`write_bundle`] (here): the edge that writes a trained result as a bundle and makes it
//!   current. Its scores table is written by [`crate::score`].

pub mod backtest;
pub mod config;
pub mod export;
pub mod job;
pub mod pipeline;
pub mod report;
pub mod source;
mod stages;

pub use backtest::{backtest, Backtest, BacktestError};
pub use config::{ConfigError, PromotionConfig, TrainConfig, ValidTrainParams};
pub use job::{
    promotion_gate, run, Progress, RunError, RunTimings, TrainJob, TrainOutcome, TrainSource,
};
pub use pipeline::{fit, user_key, TrainError, TrainInput, Trained};
pub use source::{export_aggregates, training_snapshots, AggregatesSource, TrainData};

use crate::bundle::{BundleError, BundleSigner, BundleStore, VerifyKeys, REPORT, SCORES};
use crate::io::write::{ScoreWriter, WriteError};
use crate::score::write_scores;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum WriteBundleError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("writing the scored snapshot: {0}")]
    Scores(#[from] WriteError),
    #[error("scoring the aggregates table into the bundle's scores")]
    TableScores(#[source] Box<crate::score::ScoreAggregatesError>),
    #[error("writing the report {path}: {source}")]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes a bundle's scores table through the writer with the fitted scorer.
pub(crate) type StreamScores<'a> =
    dyn Fn(&mut ScoreWriter, &crate::model::Scorer) -> Result<(), WriteBundleError> + Sync + 'a;

/// A new version id: creation time (sortable) and a hash of what went in.
pub(crate) fn version_id(
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

/// Writes the trained result as a bundle (scores, report, model, state, manifest), renames it
/// into place, validates it by loading it back (the state file is read back before the
/// rename, while the scores are written), and only then makes it current (when
/// `promote`; the promotion gate may hold it back).
/// With a `signer`, the bundle is signed, and loaded back with its public key as the verify
/// key (a signature that does not verify is found here, not at the server).
/// `stream_scores`, when given, writes the scores table instead of the trained result's
/// scores (`train --aggregates` on a table larger than its fit sample scores every user of
/// the table in a streaming pass).
pub(crate) fn write_bundle(
    store: &BundleStore,
    trained: &Trained,
    promote: bool,
    signer: Option<&BundleSigner>,
    stream_scores: Option<&StreamScores<'_>>,
) -> Result<PathBuf, WriteBundleError> {
    let version = trained.manifest.version.clone();
    let pending = store.begin(&version)?;
    let scorer = &trained.scorer;
    let report_path = pending.path(REPORT);
    // The scores table, the report and the model + state are independent files: write them
    // side by side, then checksum them all into the manifest.
    let (scores, (report, payload)) = rayon::join(
        || -> Result<(), WriteBundleError> {
            let mut writer = ScoreWriter::create(&pending.path(SCORES))?;
            match stream_scores {
                Some(stream) => stream(&mut writer, scorer)?,
                None => write_scores(
                    &mut writer,
                    scorer,
                    &trained.snapshot.user_ids,
                    &trained.scores,
                )?,
            }
            writer.finish()?;
            Ok(())
        },
        || {
            rayon::join(
                || {
                    std::fs::write(
                        &report_path,
                        report::render(&trained.manifest, &trained.report),
                    )
                },
                // The state file is read back and checked here, while the scores are still
                // being written on the other core, instead of after them.
                || {
                    pending.write_payload(scorer, &trained.snapshot)?;
                    pending.check_state(&trained.manifest, scorer)
                },
            )
        },
    );
    scores?;
    report.map_err(|source| WriteBundleError::Report {
        path: report_path.clone(),
        source,
    })?;
    payload?;
    let dir = pending.seal_signed(trained.manifest.clone(), signer)?;
    let own_key = signer
        .map(|s| VerifyKeys::new([s.verifying_key()]).map(Arc::new))
        .transpose()
        .map_err(BundleError::from)?;
    let store = &store.clone().with_verify_keys(own_key);
    if promote {
        store.promote_state_checked(&version)?;
    } else {
        store.load(&version)?;
    }
    Ok(dir)
}
