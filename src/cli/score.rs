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
    #[arg(
        long,
        required_unless_present = "aggregates",
        conflicts_with = "aggregates"
    )]
    pub data: Option<PathBuf>,
    /// Score an aggregates table instead (a Parquet file or a directory of part files, as
    /// `tiering features` or the warehouse SQL write it), streaming in bounded memory: the rows
    /// of snapshot --as-of (default: the table's latest); --out is then a directory that gets
    /// Parquet part files.
    #[arg(long, value_name = "PATH", conflicts_with = "pseudonymize_key_file")]
    pub aggregates: Option<PathBuf>,
    /// With --aggregates: rows per output part file.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows_per_part: u64,
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
    if let Some(table) = &args.aggregates {
        return score_table(&args, table, &bundle, as_of, suppress.as_ref());
    }
    let Some(data) = &args.data else {
        anyhow::bail!("give --data or --aggregates");
    };
    // Where the scores go is checked before the events are read (minutes at a large data set);
    // the temporary file is removed if anything below fails.
    let mut writer = ScoreWriter::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = spinner("reading events");
    let mut dataset = read_dataset(
        data,
        &ReadOptions {
            max_bad_rows: args.max_bad_rows,
            // The bundle's vocabulary, as in training.
            kinds: std::sync::Arc::new(kinds),
            ..ReadOptions::default()
        },
    )
    .with_context(|| format!("reading {}", data.display()))?;
    if let Some(key) = &pseudonyms {
        pseudonymize_table(&mut dataset.events, key);
    }
    let table = &dataset.events;
    let t = match as_of.or_else(|| table.max_ts().map(|m| m + 1)) {
        Some(t) => t,
        None => anyhow::bail!("{} has no events and no --as-of was given", data.display()),
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

/// `score --aggregates`: the table streamed through the bundle's scorer into part files.
fn score_table(
    args: &ScoreArgs,
    table: &std::path::Path,
    bundle: &tiering::bundle::Bundle,
    as_of: Option<i64>,
    suppress: Option<&Suppression>,
) -> Result<()> {
    let bar = spinner("scoring the aggregates table");
    let started = std::time::Instant::now();
    let keep = |id: &str| !suppress.is_some_and(|s| s.unscorable(id));
    let done = tiering::score::score_aggregates(
        &bundle.scorer,
        table,
        as_of,
        &args.out,
        args.rows_per_part,
        suppress.is_some().then_some(&keep as _),
    )
    .with_context(|| format!("scoring {} into {}", table.display(), args.out.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scored {} users with bundle {} as of {} in {:.3} s ({:.2} M users/s) -> {} ({} part files)",
        done.rows,
        bundle.version(),
        tiering::features::time::format_rfc3339(done.snapshot),
        secs,
        done.rows as f64 / secs.max(1e-9) / 1e6,
        args.out.display(),
        done.parts.len()
    );
    Ok(())
}
