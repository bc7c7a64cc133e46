//! `tiering features`: the Rust pipeline's own per-user aggregates, exported in the aggregates
//! table's schema (`tiering::io::aggregates`, documented in sql/README.md), for comparing them
//! with the warehouse SQL's and for `train --aggregates`.

use super::parse_time;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::io::aggregates::AggregatesWriter;
use tiering::io::read::{read_dataset, ReadOptions};
use tiering::train::{export_aggregates, training_snapshots, TrainConfig};

#[derive(clap::Args)]
pub struct FeaturesArgs {
    /// A directory with events.csv|events.parquet (and optional users.*), or one events file.
    #[arg(long)]
    pub data: PathBuf,
    /// The score time (RFC 3339, or YYYY-MM-DD = the end of that day, UTC). The table holds the
    /// snapshots training needs: as_of - 2H, as_of - H and as_of.
    #[arg(long)]
    pub as_of: String,
    /// Extra snapshot times besides training's three (repeatable).
    #[arg(long = "snapshot", value_name = "TIME")]
    pub snapshots: Vec<String>,
    /// The output Parquet file.
    #[arg(long)]
    pub out: PathBuf,
    /// The label window H in days (overrides the config).
    #[arg(long)]
    pub horizon_days: Option<u32>,
    /// Training configuration (TOML): its horizon, event vocabulary and earliest event time.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tolerate up to N malformed rows (skipped and counted) instead of failing on the first.
    #[arg(long, default_value_t = 0)]
    pub max_bad_rows: usize,
}

pub fn run(args: FeaturesArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => TrainConfig::load(p)
            .with_context(|| format!("loading the training config {}", p.display()))?,
        None => TrainConfig::default(),
    };
    if let Some(h) = args.horizon_days {
        cfg.horizon_days = h;
    }
    let params = cfg.check().context("checking the training configuration")?;
    let as_of = parse_time(&args.as_of).context("parsing --as-of")?;
    let mut times = training_snapshots(as_of, params.horizon_days);
    for s in &args.snapshots {
        times.push(parse_time(s).with_context(|| format!("parsing --snapshot {s}"))?);
    }
    times.sort_unstable();
    times.dedup();
    let read = ReadOptions {
        earliest: params.earliest_event(),
        kinds: params.kinds().clone(),
        max_bad_rows: args.max_bad_rows,
    };
    let started = std::time::Instant::now();
    let dataset = read_dataset(&args.data, &read)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let mut writer = AggregatesWriter::create(&args.out)?;
    let rows = export_aggregates(&dataset.events, &times, params.horizon_days, &mut writer)?;
    writer.finish()?;
    println!(
        "wrote {rows} rows ({} users x {} snapshots) to {} in {:.2} s",
        dataset.events.user_ids.len(),
        times.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
