//! `tiering score`: score every user of a data set with a bundle, offline.

use super::{parse_time, spinner};
use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::BundleStore;
use tiering::features::build_aggregates;
use tiering::io::read::{read_dataset, ReadOptions};
use tiering::io::write::ScoreWriter;
use tiering::model::Score;

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// The models directory (MODELS/CURRENT is used unless --version says otherwise).
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// A bundle version instead of CURRENT.
    #[arg(long)]
    pub version: Option<String>,
    /// A directory with events.* (and optional users.*), or one events file.
    #[arg(long)]
    pub data: PathBuf,
    /// Score time (RFC 3339, or YYYY-MM-DD = the end of that day, UTC). Default: the last event.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Output file, .csv or .parquet.
    #[arg(long)]
    pub out: PathBuf,
    /// Tolerate up to N malformed rows.
    #[arg(long, default_value_t = 0)]
    pub max_bad_rows: usize,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let store = BundleStore::new(&args.models);
    let bundle = match &args.version {
        Some(v) => store.load(v),
        None => store.load_current(),
    }
    .with_context(|| format!("loading a bundle from {}", args.models.display()))?;
    let as_of = args
        .as_of
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("parsing --as-of")?;
    let kinds = bundle
        .manifest
        .kinds
        .resolver()
        .context("the bundle's kind mapping")?;
    let bar = spinner("reading events");
    let dataset = read_dataset(
        &args.data,
        &ReadOptions {
            max_bad_rows: args.max_bad_rows,
            // The bundle's vocabulary, as in training.
            kinds: std::sync::Arc::new(kinds),
            ..ReadOptions::default()
        },
    )
    .with_context(|| format!("reading {}", args.data.display()))?;
    let table = &dataset.events;
    let t = match as_of.or_else(|| table.max_ts().map(|m| m + 1)) {
        Some(t) => t,
        None => anyhow::bail!(
            "{} has no events and no --as-of was given",
            args.data.display()
        ),
    };
    bar.set_message("building features");
    let aggs = build_aggregates(table, &[t]).pop().unwrap_or_default();
    bar.set_message("scoring");
    let started = std::time::Instant::now();
    let scorer = &bundle.scorer;
    let mut scores = vec![Score::default(); aggs.len()];
    scorer.score_batch(&aggs, t, &mut scores);
    let secs = started.elapsed().as_secs_f64();
    bar.set_message("writing");
    let mut writer = ScoreWriter::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    tiering::score::write_scores(&mut writer, scorer, &table.user_ids, &scores)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let rows = writer
        .finish()
        .with_context(|| format!("finishing {}", args.out.display()))?;
    bar.finish_and_clear();
    println!(
        "scored {rows} users with bundle {} as of {} in {:.3} s ({:.2} M users/s) -> {}",
        bundle.version(),
        tiering::features::time::format_rfc3339(t),
        secs,
        rows as f64 / secs.max(1e-9) / 1e6,
        args.out.display()
    );
    Ok(())
}
