//! `tiering backtest`: a bundle's predictions against what happened since its as-of time
//! (AUC, Brier, calibration by decile, the top decile's churners, value lost and retained);
//! printed, and written as JSON and HTML. The figures are defined in
//! [`tiering::train::backtest`].

use super::{parse_time, spinner};
use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::BundleStore;
use tiering::features::time::parse_earliest;
use tiering::io::read::{read_dataset, ReadOptions};
use tiering::train::backtest;

#[derive(clap::Args)]
pub struct BacktestArgs {
    /// The models directory.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// The bundle to backtest (default: the current one).
    #[arg(long)]
    pub version: Option<String>,
    /// Events covering the bundle's as-of time and after it: a directory with
    /// events.csv|events.parquet (and optional users.*), or one events file.
    #[arg(long)]
    pub data: PathBuf,
    /// Use the events before this time only (RFC 3339, or YYYY-MM-DD = the end of that day).
    #[arg(long)]
    pub until: Option<String>,
    /// Write the figures as JSON here.
    #[arg(long, default_value = "backtest.json")]
    pub json: PathBuf,
    /// Write the figures as an HTML page here.
    #[arg(long, default_value = "backtest.html")]
    pub html: PathBuf,
    /// Tolerate up to N malformed rows (skipped and counted) instead of failing on the first.
    #[arg(long, default_value_t = 0)]
    pub max_bad_rows: usize,
}

pub fn run(args: BacktestArgs) -> Result<()> {
    let store = BundleStore::new(&args.models);
    let bundle = match &args.version {
        Some(v) => store.load(v),
        None => store.load_current(),
    }
    .with_context(|| format!("loading a bundle from {}", args.models.display()))?;
    let until = args
        .until
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("parsing --until")?;
    // Read as the bundle's training did: its vocabulary and earliest accepted event time.
    let kinds = bundle
        .manifest
        .kinds
        .resolver()
        .context("the bundle's kind mapping")?;
    let mut read = ReadOptions {
        max_bad_rows: args.max_bad_rows,
        kinds: std::sync::Arc::new(kinds),
        ..ReadOptions::default()
    };
    if let Some(e) = bundle.manifest.params.get("earliest_event_time") {
        let text = e.as_str().unwrap_or_default();
        read.earliest = parse_earliest(text)
            .with_context(|| format!("the bundle's earliest_event_time {text:?}"))?;
    }
    let bar = spinner("reading events");
    let dataset = read_dataset(&args.data, &read)
        .with_context(|| format!("reading {}", args.data.display()))?;
    bar.set_message("backtesting");
    let b = backtest(&bundle, &dataset.events, until)
        .with_context(|| format!("backtesting bundle {}", bundle.version()))?;
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&b).context("serialising the backtest")?;
    std::fs::write(&args.json, json + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Backtest</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}</style>\n</head>\n<body>\n{}</body>\n</html>\n",
        tiering::train::report::backtest_html(&b)
    );
    std::fs::write(&args.html, html).with_context(|| format!("writing {}", args.html.display()))?;
    print_summary(&b);
    println!("wrote {} and {}", args.json.display(), args.html.display());
    Ok(())
}

fn print_summary(b: &backtest::Backtest) {
    let coverage = if b.complete() {
        String::new()
    } else {
        format!(
            " (provisional: {:.1} of {} days seen)",
            b.days_covered, b.horizon_days
        )
    };
    println!(
        "bundle {} as of {}, next {} days{coverage}",
        b.version, b.as_of, b.horizon_days
    );
    println!(
        "users {}  churned {}  ROC-AUC {:.4}  Brier {:.4}",
        b.users, b.churned, b.roc_auc, b.brier
    );
    println!(
        "top decile by churn probability: {} of {} churned",
        b.top_decile_churned, b.top_decile_users
    );
    println!(
        "value lost {:.2}, retained {:.2} ({:.1}% of the spend before); top decile by value at risk holds {:.1}% of the value lost; realised spend {:.2}",
        b.value_lost,
        b.value_retained,
        100.0 * b.value_retained_share,
        100.0 * b.top_decile_value_at_risk_lost_share,
        b.realised_spend
    );
    println!("decile  users  mean predicted  observed churn");
    for d in &b.deciles {
        println!(
            "{:>6}  {:>5}  {:>14.3}  {:>14.3}",
            d.decile, d.users, d.mean_predicted, d.observed_rate
        );
    }
}
