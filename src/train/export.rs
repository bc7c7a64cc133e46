//! `--export-eval`: the exact rows the churn models were fitted and evaluated on, and the rows
//! the tiers were clustered on, as CSV, so other tools can be compared on identical data.

use super::pipeline::EvalSets;
use crate::bundle::Manifest;
use crate::features::time::format_rfc3339;
use std::path::{Path, PathBuf};

/// Why an export failed: the file, and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: cannot write", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write CSV", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("meta.json: cannot serialise")]
    Json(#[from] serde_json::Error),
}

/// Digits after the point of every exported value.
const DIGITS: usize = 9;

/// One CSV table: the header, then one record per row from `row`.
fn write_csv(
    path: &Path,
    header: &[String],
    rows: usize,
    mut row: impl FnMut(usize, &mut Vec<String>),
) -> Result<(), ExportError> {
    let csv_err = |source| ExportError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
    w.write_record(header).map_err(csv_err)?;
    let mut rec: Vec<String> = Vec::with_capacity(header.len());
    for i in 0..rows {
        rec.clear();
        row(i, &mut rec);
        w.write_record(&rec).map_err(csv_err)?;
    }
    w.flush().map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A labelled table (`train.csv`, `test.csv`): user_id, churned, the transformed features and,
/// for the test rows, tiering's probability.
fn write_labelled(
    dir: &Path,
    name: &str,
    sets: &EvalSets,
    user_ids: &[String],
    (users, x, y): (&[usize], &[f64], &[bool]),
    probs: Option<&[f64]>,
) -> Result<(), ExportError> {
    let d = sets.feature_names.len();
    let mut header = vec!["user_id".to_string(), "churned".to_string()];
    header.extend(sets.feature_names.iter().cloned());
    if probs.is_some() {
        header.push("tiering_probability".into());
    }
    write_csv(&dir.join(name), &header, users.len(), |i, rec| {
        rec.push(user_ids[users[i]].clone());
        rec.push(u8::from(y[i]).to_string());
        rec.extend(
            x[i * d..(i + 1) * d]
                .iter()
                .map(|v| format!("{v:.DIGITS$}")),
        );
        if let Some(p) = probs {
            rec.push(format!("{:.DIGITS$}", p[i]));
        }
    })
}

/// Writes `train.csv` and `test.csv` (user_id, churned, transformed features[, tiering's
/// probability]), `tiers.csv` (user_id, tier, standardised features: the rows k-means
/// clustered) and `meta.json` (snapshots, horizon, feature names and transforms).
pub fn export_eval(
    dir: &Path,
    sets: &EvalSets,
    user_ids: &[String],
    manifest: &Manifest,
) -> Result<(), ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let d = sets.feature_names.len();
    let train = (&sets.train_users[..], &sets.train_x[..], &sets.train_y[..]);
    write_labelled(dir, "train.csv", sets, user_ids, train, None)?;
    let test = (&sets.test_users[..], &sets.test_x[..], &sets.test_y[..]);
    let probs = Some(&sets.test_probability[..]);
    write_labelled(dir, "test.csv", sets, user_ids, test, probs)?;
    let mut header = vec!["user_id".to_string(), "tier".to_string()];
    header.extend(sets.feature_names.iter().cloned());
    let tiers = dir.join("tiers.csv");
    write_csv(&tiers, &header, sets.tier_users.len(), |i, rec| {
        rec.push(user_ids[sets.tier_users[i]].clone());
        rec.push(sets.tier[i].to_string());
        let x = &sets.tier_x[i * d..(i + 1) * d];
        rec.extend(x.iter().map(|v| format!("{v:.DIGITS$}")));
    })?;
    let meta = serde_json::json!({
        "version": manifest.version,
        "as_of": manifest.as_of,
        "horizon_days": manifest.horizon_days,
        "churn_definition": manifest.churn_definition,
        "train_snapshot": format_rfc3339(sets.train_snapshot),
        "test_snapshot": format_rfc3339(sets.test_snapshot),
        "evaluation": manifest.metrics.evaluation,
        "chosen_model": manifest.metrics.chosen_model,
        "features": manifest.features,
        "note": "train.csv/test.csv: features transformed (log1p except trend), not standardised; churned = 1. tiers.csv: the users known at as_of, standardised with model.json's scaler as k-means saw them, and each one's tier (index into model.json's tiers)",
    });
    let path = dir.join("meta.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&meta)?)
        .map_err(|source| ExportError::Io { path, source })
}
