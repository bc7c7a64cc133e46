//! `tiering train`: events in, a versioned, explained model bundle out.

use super::{parse_time, spinner};
use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::manifest::DataInfo;
use tiering::bundle::BundleStore;
use tiering::features::ChurnDefinition;
use tiering::io::read::{read_dataset, ReadOptions};
use tiering::train::{self, rfc3339, TrainConfig, TrainInput};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A directory with events.csv|events.parquet (and optional users.*), or one events file.
    #[arg(long)]
    pub data: PathBuf,
    /// The models directory; the bundle goes to MODELS/<version>/ and MODELS/CURRENT points at it.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Score time (RFC 3339, or YYYY-MM-DD = the end of that day, UTC). Default: the last event.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Churn horizon H in days (overrides the config).
    #[arg(long)]
    pub horizon_days: Option<u32>,
    /// Training configuration (TOML). Default: built-in defaults (= training/train.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed for every random choice (overrides the config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fixed number of tiers (overrides the config; default: chosen by silhouette).
    #[arg(long)]
    pub k: Option<usize>,
    /// What counts as churn: no order (default) or no activity at all in the horizon.
    #[arg(long, value_parser = ["no_order", "no_activity"])]
    pub churn_definition: Option<String>,
    /// Tolerate up to N malformed rows (skipped and counted) instead of failing on the first.
    #[arg(long, default_value_t = 0)]
    pub max_bad_rows: usize,
    /// Also write the exact churn training and evaluation rows (train.csv, test.csv, meta.json)
    /// to this directory, so other tools can be compared on identical features and holdout.
    #[arg(long)]
    pub export_eval: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => TrainConfig::load(p)
            .with_context(|| format!("loading the training config {}", p.display()))?,
        None => TrainConfig::default(),
    };
    if let Some(h) = args.horizon_days {
        cfg.horizon_days = h;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if args.k.is_some() {
        cfg.tiers.k = args.k;
    }
    if let Some(d) = &args.churn_definition {
        cfg.churn_definition = if d == "no_activity" {
            ChurnDefinition::NoActivity
        } else {
            ChurnDefinition::NoOrder
        };
    }
    cfg.validate()
        .context("checking the training configuration")?;
    let as_of = args
        .as_of
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("parsing --as-of")?;

    let started = std::time::Instant::now();
    let bar = spinner("reading events");
    let read_started = std::time::Instant::now();
    let dataset = read_dataset(
        &args.data,
        &ReadOptions {
            max_bad_rows: args.max_bad_rows,
        },
    )
    .with_context(|| format!("reading {}", args.data.display()))?;
    let read_secs = read_started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let table = &dataset.events;
    let rep = &dataset.report;
    tracing::info!(
        rows = rep.rows,
        users = table.n_users(),
        bad_rows = rep.bad_rows,
        "read events"
    );
    if rep.bad_rows > 0 {
        eprintln!(
            "skipped {} malformed rows (--max-bad-rows {}); first: {}",
            rep.bad_rows,
            args.max_bad_rows,
            rep.bad_row_samples.first().map_or("", |s| s.as_str())
        );
    }

    let store = BundleStore::new(&args.models);
    let previous = match store.current() {
        Ok(Some(v)) => match store
            .load(&v)
            .and_then(|b| b.load_snapshot().map(|s| (b, s)))
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("the current bundle {v} does not load ({e}); tier ids will not be matched to it");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("cannot read MODELS/CURRENT ({e}); training without a previous bundle");
            None
        }
    };
    let created = chrono::Utc::now();
    let data = DataInfo {
        fingerprint: rep.fingerprint.clone(),
        files: rep.files.iter().map(|f| f.display().to_string()).collect(),
        events: table.len() as u64,
        users: table.n_users() as u64,
        first_event: table.min_ts().map(rfc3339).unwrap_or_default(),
        last_event: table.max_ts().map(rfc3339).unwrap_or_default(),
        bad_rows_skipped: rep.bad_rows,
        columns: table.columns,
    };
    let version = train::version_id(created, &rep.fingerprint, &cfg, as_of);
    let input = TrainInput {
        table,
        personas: rep.personas.as_deref(),
        data,
        as_of,
        config: &cfg,
        previous: previous.as_ref().map(|(b, s)| (b, s)),
        keep_eval_sets: args.export_eval.is_some(),
        version,
        created_at: created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    };
    let bar = spinner("training");
    let trained =
        train::fit(input, &mut |stage| bar.set_message(stage.to_string())).context("training")?;
    bar.set_message("writing the bundle");
    let write_started = std::time::Instant::now();
    let dir = train::write_bundle(&store, &trained)
        .with_context(|| format!("writing the bundle under {}", args.models.display()))?;
    let write_secs = write_started.elapsed().as_secs_f64();
    if let (Some(dir), Some(sets)) = (&args.export_eval, &trained.eval_sets) {
        bar.set_message("exporting evaluation sets");
        export_eval(dir, sets, &table.user_ids, &trained.manifest)
            .with_context(|| format!("exporting evaluation sets to {}", dir.display()))?;
    }
    bar.finish_and_clear();

    let m = &trained.manifest;
    println!(
        "bundle {} written to {} and made current",
        m.version,
        dir.display()
    );
    println!(
        "data: {} events, {} users, {} to {}; scored as of {}",
        m.data.events, m.data.users, m.data.first_event, m.data.last_event, m.as_of
    );
    println!("evaluation: {}", m.metrics.evaluation);
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>9} {:>6}",
        "model", "ROC-AUC", "PR-AUC", "Brier", "log loss", "lift"
    );
    for mm in &m.metrics.models {
        let mark = if mm.name == m.metrics.chosen_model {
            " (served)"
        } else {
            ""
        };
        println!(
            "{:<22} {:>8.4} {:>8.4} {:>8.4} {:>9.4} {:>6.2}{mark}",
            mm.name,
            mm.metrics.roc_auc,
            mm.metrics.pr_auc,
            mm.metrics.brier,
            mm.metrics.log_loss,
            mm.metrics.lift_top_decile
        );
    }
    let ari = m
        .metrics
        .tier_ari
        .map(|a| format!(", ARI vs personas {a:.3}"))
        .unwrap_or_default();
    println!("tiers (k = {}{ari}):", m.metrics.k);
    for t in &m.tiers {
        println!(
            "  {:<18} {:<10} {:>8} users {:>5.1}%  mean churn {:.3}  {}",
            t.id,
            t.name_zh,
            t.users,
            t.share * 100.0,
            t.mean_churn_probability,
            t.description
        );
    }
    if let Some(c) = m.metrics.tier_changes {
        println!(
            "tier changes vs {}: {} of {} users ({:.2}%)",
            m.previous_version.as_deref().unwrap_or("?"),
            c.changed,
            c.compared,
            100.0 * c.changed as f64 / c.compared.max(1) as f64
        );
    }
    if !m.features_left_out.is_empty() {
        let names: Vec<String> = m
            .features_left_out
            .iter()
            .map(|l| format!("{} ({})", l.name, l.reason))
            .collect();
        println!("features left out: {}", names.join(", "));
    }
    for w in &m.warnings {
        println!("WARNING: {w}");
    }
    let mut stages = vec![format!(
        "read {read_secs:.2} s ({:.2} M events/s)",
        table.len() as f64 / read_secs.max(1e-9) / 1e6
    )];
    stages.extend(
        trained
            .timings
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.2} s")),
    );
    stages.push(format!("bundle write {write_secs:.2} s"));
    println!("stages: {}", stages.join(", "));
    println!("report: {}", dir.join(tiering::bundle::REPORT).display());
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    // The tables (gigabytes at a million users) are freed off this thread: unmapping them page
    // by page takes ~0.5 s that no caller waits on (the process may exit before it ends).
    std::thread::spawn(move || drop((dataset, trained, previous)));
    Ok(())
}

/// Writes `train.csv` and `test.csv` (user_id, churned, transformed features[, tiering's
/// probability]), `tiers.csv` (user_id, tier, standardised features: the rows k-means
/// clustered) and `meta.json` (snapshots, horizon, feature names and transforms).
fn export_eval(
    dir: &std::path::Path,
    sets: &train::pipeline::EvalSets,
    user_ids: &[String],
    manifest: &tiering::bundle::Manifest,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let d = sets.feature_names.len();
    let write =
        |name: &str, users: &[usize], x: &[f64], y: &[bool], probs: Option<&[f64]>| -> Result<()> {
            let path = dir.join(name);
            let mut w = csv::Writer::from_path(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut header = vec!["user_id".to_string(), "churned".to_string()];
            header.extend(sets.feature_names.iter().cloned());
            if probs.is_some() {
                header.push("tiering_probability".into());
            }
            w.write_record(&header)?;
            let mut rec: Vec<String> = Vec::with_capacity(d + 3);
            for (i, &u) in users.iter().enumerate() {
                rec.clear();
                rec.push(user_ids[u].clone());
                rec.push(u8::from(y[i]).to_string());
                rec.extend(x[i * d..(i + 1) * d].iter().map(|v| format!("{v:.9}")));
                if let Some(p) = probs {
                    rec.push(format!("{:.9}", p[i]));
                }
                w.write_record(&rec)?;
            }
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        };
    write(
        "train.csv",
        &sets.train_users,
        &sets.train_x,
        &sets.train_y,
        None,
    )?;
    write(
        "test.csv",
        &sets.test_users,
        &sets.test_x,
        &sets.test_y,
        Some(&sets.test_probability),
    )?;
    let path = dir.join("tiers.csv");
    let mut w =
        csv::Writer::from_path(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut header = vec!["user_id".to_string(), "tier".to_string()];
    header.extend(sets.feature_names.iter().cloned());
    w.write_record(&header)?;
    let mut rec: Vec<String> = Vec::with_capacity(d + 2);
    for (i, &u) in sets.tier_users.iter().enumerate() {
        rec.clear();
        rec.push(user_ids[u].clone());
        rec.push(sets.tier[i].to_string());
        rec.extend(
            sets.tier_x[i * d..(i + 1) * d]
                .iter()
                .map(|v| format!("{v:.9}")),
        );
        w.write_record(&rec)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    let meta = serde_json::json!({
        "version": manifest.version,
        "as_of": manifest.as_of,
        "horizon_days": manifest.horizon_days,
        "churn_definition": manifest.churn_definition,
        "train_snapshot": rfc3339(sets.train_snapshot),
        "test_snapshot": rfc3339(sets.test_snapshot),
        "evaluation": manifest.metrics.evaluation,
        "chosen_model": manifest.metrics.chosen_model,
        "features": manifest.features,
        "note": "train.csv/test.csv: features transformed (log1p except trend), not standardised; churned = 1. tiers.csv: the users known at as_of, standardised with model.json's scaler as k-means saw them, and each one's tier (index into model.json's tiers)",
    });
    let path = dir.join("meta.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&meta)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
