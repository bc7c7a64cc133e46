//! `tiering train`: events in, a versioned, explained model bundle out.

use super::{parse_time, spinner};
use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::BundleSigner;
use tiering::features::time::format_rfc3339;
use tiering::features::ChurnDefinition;
use tiering::io::privacy::Suppression;
use tiering::io::read::ReadReport;
use tiering::train::{self, TrainConfig, TrainJob, TrainOutcome, TrainSource};

/// `--churn-definition`: what counts as churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ChurnDefinitionArg {
    /// No order in the horizon.
    NoOrder,
    /// No activity at all in the horizon.
    NoActivity,
}

impl From<ChurnDefinitionArg> for ChurnDefinition {
    fn from(d: ChurnDefinitionArg) -> Self {
        match d {
            ChurnDefinitionArg::NoOrder => ChurnDefinition::NoOrder,
            ChurnDefinitionArg::NoActivity => ChurnDefinition::NoActivity,
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A directory with events.csv|events.parquet (and optional users.*), or one events file.
    #[arg(
        long,
        required_unless_present = "aggregates",
        conflicts_with = "aggregates"
    )]
    pub data: Option<PathBuf>,
    /// Train from an aggregates table instead of raw events: a Parquet file or a directory of
    /// part files (as `tiering features` or the warehouse SQL in sql/ write it), holding the
    /// snapshots as_of - 2H, as_of - H and as_of (as_of: --as-of, else its latest snapshot).
    #[arg(long, value_name = "PATH")]
    pub aggregates: Option<PathBuf>,
    /// With --aggregates: fit on a keyed sample of at most this many users (a hash of the id
    /// picks them); every user of the table is still scored, in a streaming pass. A table with
    /// fewer users trains on all of them.
    #[arg(long, value_name = "N", requires = "aggregates",
          default_value_t = tiering::train::source::DEFAULT_FIT_USERS as u64,
          value_parser = clap::value_parser!(u64).range(1000..))]
    pub fit_users: u64,
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
    /// Fixed number of tiers (overrides the config; default: the previous bundle's k, or the
    /// stable k with the best silhouette).
    #[arg(long)]
    pub k: Option<usize>,
    /// Make the new bundle current even if its tiers differ from the previous bundle's for more
    /// users than `promotion.max_model_tier_changes` (default 5%) with unchanged behaviour.
    #[arg(long)]
    pub accept_tier_changes: bool,
    /// What counts as churn: no order (default) or no activity at all in the horizon.
    #[arg(long, value_enum)]
    pub churn_definition: Option<ChurnDefinitionArg>,
    /// Tolerate up to N malformed rows (skipped and counted) instead of failing on the first.
    #[arg(long, default_value_t = 0)]
    pub max_bad_rows: usize,
    /// Also write the exact churn training and evaluation rows (train.csv, test.csv, meta.json)
    /// to this directory, so other tools can be compared on identical features and holdout.
    #[arg(long)]
    pub export_eval: Option<PathBuf>,
    /// Sign the bundle with the ed25519 private key in FILE (PKCS#8 PEM, as `tiering keys
    /// generate` writes; refused if group or others may read it). Servers started with
    /// `--verify-key` accept only signed bundles.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Replace user ids by HMAC-SHA256(key, id) as they are read (hex key in FILE, mode 0600):
    /// the bundle holds pseudonyms only; serve it with the same --pseudonymize-key-file.
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key_file: Option<PathBuf>,
    /// Drop the events of erased users: a server's state directory (its `privacy/erased`), or
    /// a suppression list file. The key: --privacy-key-file, else TIERING_PRIVACY_KEY, else the
    /// `key` file beside the list.
    #[arg(long, value_name = "DIR|FILE")]
    pub suppress: Option<PathBuf>,
    /// The privacy key of the suppression list (when not beside it or in the environment).
    #[arg(long, value_name = "FILE", requires = "suppress")]
    pub privacy_key_file: Option<PathBuf>,
}

/// The job the flags describe: the config file (or defaults), overridden by flags, checked.
fn job(args: &TrainArgs) -> Result<TrainJob> {
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
    if let Some(d) = args.churn_definition {
        cfg.churn_definition = d.into();
    }
    let params = cfg.check().context("checking the training configuration")?;
    let as_of = args
        .as_of
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("parsing --as-of")?;
    let sign_key = args
        .sign_key
        .as_deref()
        .map(BundleSigner::from_file)
        .transpose()
        .context("reading the signing key (--sign-key)")?;
    let pseudonymize = args
        .pseudonymize_key_file
        .as_deref()
        .map(tiering::io::read::pseudonym::PseudonymKey::from_file)
        .transpose()
        .context("reading --pseudonymize-key-file")?;
    let suppress = args
        .suppress
        .as_deref()
        .map(|p| Suppression::load(p, args.privacy_key_file.as_deref()))
        .transpose()
        .context("reading the suppression list (--suppress)")?;
    let mut job = TrainJob {
        suppress,
        sign_key,
        pseudonymize,
        as_of,
        export_eval: args.export_eval.clone(),
        accept_tier_changes: args.accept_tier_changes,
        ..TrainJob::new(PathBuf::new(), args.models.clone(), params)
    };
    job.source = match (&args.data, &args.aggregates) {
        (_, Some(table)) => TrainSource::Aggregates(table.clone()),
        (Some(data), None) => TrainSource::Events(data.clone()),
        (None, None) => anyhow::bail!("give --data or --aggregates"),
    };
    job.read.max_bad_rows = args.max_bad_rows;
    job.fit_users = usize::try_from(args.fit_users).unwrap_or(usize::MAX);
    Ok(job)
}

/// Shows the stages on a spinner and skipped rows as soon as the data is read.
struct Spinner {
    bar: indicatif::ProgressBar,
    max_bad_rows: usize,
}

impl train::Progress for Spinner {
    fn stage(&mut self, name: &str) {
        self.bar.set_message(name.to_string());
    }

    fn data_read(&mut self, rep: &ReadReport) {
        if rep.bad_rows > 0 {
            self.bar.suspend(|| {
                eprintln!(
                    "skipped {} malformed rows (--max-bad-rows {}); first: {}",
                    rep.bad_rows,
                    self.max_bad_rows,
                    rep.bad_row_samples.first().map_or("", |s| s.as_str())
                )
            });
        }
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let job = job(&args)?;
    let mut progress = Spinner {
        bar: spinner("reading events"),
        max_bad_rows: args.max_bad_rows,
    };
    let outcome = train::run(job, &mut progress)?;
    progress.bar.finish_and_clear();
    print_outcome(&outcome);
    let held_back = outcome.held_back.clone();
    // The tables (gigabytes at a million users) are freed off this thread: unmapping them page
    // by page takes ~0.5 s that no caller waits on (the process may exit before it ends).
    std::thread::spawn(move || drop(outcome));
    match held_back {
        // The bundle is written; the run still fails so that scripts do not take it as live.
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

/// The summary printed after a run: data, evaluation, models, tiers, warnings, timings.
pub fn print_outcome(outcome: &TrainOutcome) {
    let m = &outcome.trained.manifest;
    let dir = &outcome.bundle_dir;
    let made = if outcome.held_back.is_some() {
        "NOT made current (see below)"
    } else {
        "made current"
    };
    println!(
        "bundle {} written to {} and {made}",
        m.version,
        dir.display()
    );
    if let Some(key_id) = &outcome.signed_by {
        println!("signed by key {key_id} ({})", tiering::bundle::MANIFEST_SIG);
    }
    println!(
        "data: {} events, {} users, {} to {}; scored as of {}",
        m.data.events,
        m.data.users,
        m.data
            .first_event
            .map_or_else(|| "-".into(), format_rfc3339),
        m.data.last_event.map_or_else(|| "-".into(), format_rfc3339),
        m.as_of
    );
    println!("evaluation: {}", m.metrics.evaluation);
    print_models(m);
    print_tiers(m);
    for w in &m.warnings {
        println!("WARNING: {w}");
    }
    let t = &outcome.timings;
    let mut stages = vec![format!(
        "read {:.2} s ({:.2} M events/s)",
        t.read,
        outcome.dataset.events.len() as f64 / t.read.max(1e-9) / 1e6
    )];
    stages.extend(
        t.stages
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.2} s")),
    );
    stages.push(format!("bundle write {:.2} s", t.write));
    println!("stages: {}", stages.join(", "));
    println!("report: {}", dir.join(tiering::bundle::REPORT).display());
    println!("done in {:.1} s", t.total);
}

fn print_models(m: &tiering::bundle::Manifest) {
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
}

fn print_tiers(m: &tiering::bundle::Manifest) {
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
    print_stability(m);
    if !m.features_left_out.is_empty() {
        let names: Vec<String> = m
            .features_left_out
            .iter()
            .map(|l| format!("{} ({})", l.name, l.reason))
            .collect();
        println!("features left out: {}", names.join(", "));
    }
}

/// How k was chosen, and the tier changes against the previous bundle split by cause.
fn print_stability(m: &tiering::bundle::Manifest) {
    let mm = &m.metrics;
    if !mm.k_reason.is_empty() {
        println!("k: {}; {}", mm.k_reason, mm.tier_init);
    }
    if let Some(s) = &mm.stability {
        println!(
            "tier stability vs {}: model changed {} of {} users ({:.2}%), behaviour changed {} of {} ({:.2}%)",
            s.previous_version,
            s.model_changed,
            s.compared,
            100.0 * s.model_changed_share,
            s.behaviour_changed,
            s.behaviour_compared,
            100.0 * s.behaviour_changed_share
        );
        if s.model_changed > 0 {
            println!("  model moves: {}", s.model.describe_moves(6));
        }
        if s.behaviour_changed > 0 {
            println!("  behaviour moves: {}", s.behaviour.describe_moves(6));
        }
    }
    if let Some(d) = &mm.drift {
        let (what, psi) = d.largest();
        println!(
            "drift vs the previous bundle's training population: churn probability PSI {:.3}, tier shares PSI {:.3}, largest {what} {psi:.3}",
            d.churn_probability, d.tier_shares
        );
    }
}
