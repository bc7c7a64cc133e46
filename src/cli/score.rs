//! `tiering score`: score every user of a data set with a bundle, offline.

use super::{parse_time, spinner};
use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::BundleStore;
use tiering::features::build_aggregates;
use tiering::io::privacy::Suppression;
use tiering::io::read::pseudonym::{pseudonymize_table, PseudonymKey};
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
    /// Leave out erased users and users who objected to profiling: a server's state directory
    /// (its `privacy/` lists) or a suppression list file (see `tiering train --suppress`).
    #[arg(long, value_name = "DIR|FILE")]
    pub suppress: Option<PathBuf>,
    /// The privacy key of the lists (when not beside them or in TIERING_PRIVACY_KEY).
    #[arg(long, value_name = "FILE", requires = "suppress")]
    pub privacy_key_file: Option<PathBuf>,
    /// Replace user ids by HMAC-SHA256(key, id) as they are read (hex key in FILE, mode 0600):
    /// the output carries pseudonyms.
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key_file: Option<PathBuf>,
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
    let suppress = args
        .suppress
        .as_deref()
        .map(|p| Suppression::load(p, args.privacy_key_file.as_deref()))
        .transpose()
        .context("reading the suppression list (--suppress)")?;
    let pseudonyms = args
        .pseudonymize_key_file
        .as_deref()
        .map(PseudonymKey::from_file)
        .transpose()
        .context("reading --pseudonymize-key-file")?;
    let kinds = bundle
        .manifest
        .kinds
        .resolver()
        .context("the bundle's kind mapping")?;
    let bar = spinner("reading events");
    let mut dataset = read_dataset(
        &args.data,
        &ReadOptions {
            max_bad_rows: args.max_bad_rows,
            // The bundle's vocabulary, as in training.
            kinds: std::sync::Arc::new(kinds),
            ..ReadOptions::default()
        },
    )
    .with_context(|| format!("reading {}", args.data.display()))?;
    if let Some(key) = &pseudonyms {
        pseudonymize_table(&mut dataset.events, key);
    }
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
    let (ids, scores): (Vec<String>, Vec<Score>) = table
        .user_ids
        .iter()
        .zip(scores)
        .filter(|(id, _)| !suppress.as_ref().is_some_and(|s| s.unscorable(id)))
        .map(|(id, s)| (id.clone(), s))
        .unzip();
    tiering::score::write_scores(&mut writer, scorer, &ids, &scores)
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
