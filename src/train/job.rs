//! The training run as a library entry point: [`run`] reads the data, finds the current bundle,
//! fits, writes the new bundle and makes it current, exports the evaluation sets if asked, and
//! reports timings. The CLI (`tiering train`, `tiering quickstart`) and the tests call it.

use super::config::ValidTrainParams;
use super::export::{export_eval, ExportError};
use super::pipeline::{self, TrainError, TrainInput, Trained};
use super::source::{scan_table, AggregatesSource, TableScan, TrainData, DEFAULT_FIT_USERS};
use super::{version_id, write_bundle, WriteBundleError};
use crate::bundle::manifest::DataInfo;
use crate::bundle::{Bundle, BundleSigner, BundleStore, Snapshot};
use crate::features::Timestamp;
use crate::io::aggregates::{AggregatesError, AggregatesTable};
use crate::io::read::{read_dataset, Dataset, ReadError, ReadOptions, ReadReport};
use crate::io::write::ScoreWriter;
use crate::model::Scorer;
use std::path::PathBuf;
use std::time::Instant;

/// What a run trains from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainSource {
    /// A directory with events.csv|events.parquet (and optional users.*), or one events file.
    Events(PathBuf),
    /// An aggregates table (`crate::io::aggregates`: a Parquet file or a directory of part
    /// files) holding the snapshots training needs and their label counts.
    Aggregates(PathBuf),
}

impl TrainSource {
    pub fn path(&self) -> &std::path::Path {
        match self {
            TrainSource::Events(p) | TrainSource::Aggregates(p) => p,
        }
    }
}

/// One training run.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The events or the aggregates table.
    pub source: TrainSource,
    /// The models directory: the bundle goes to `models/<version>/`, `models/CURRENT` names it.
    pub models: PathBuf,
    /// Score time; `None` = just after the last event.
    pub as_of: Option<Timestamp>,
    pub params: ValidTrainParams,
    pub read: ReadOptions,
    /// Also write the exact churn training and evaluation rows here (see [`export_eval`]).
    pub export_eval: Option<PathBuf>,
    /// Make the new bundle current even when the promotion gate would hold it back (more
    /// model-caused tier changes than `promotion.max_model_tier_changes`).
    pub accept_tier_changes: bool,
    /// Sign the bundle with this key (`manifest.sig`, see [`crate::bundle::signature`]);
    /// `None`: unsigned, as before.
    pub sign_key: Option<BundleSigner>,
    /// The suppression list of erased ids (`tiering train --suppress`): their events are
    /// dropped right after reading, before any feature is computed, so the bundle (model,
    /// scored snapshot, state seed) knows nothing of them.
    pub suppress: Option<crate::io::privacy::Suppression>,
    /// Replace user ids by their keyed hash as they are read (see
    /// [`crate::io::read::pseudonym`]); `None`: ids as in the data.
    pub pseudonymize: Option<crate::io::read::pseudonym::PseudonymKey>,
    /// With an aggregates table: fit on a keyed sample of at most this many users (every
    /// user of a smaller table) and score the others in a streaming pass (see
    /// [`super::source::scan_table`]).
    pub fit_users: usize,
}

impl TrainJob {
    /// A job with default reading options (the configuration's earliest event time) and no
    /// export.
    pub fn new(data: PathBuf, models: PathBuf, params: ValidTrainParams) -> TrainJob {
        let read = ReadOptions {
            earliest: params.earliest_event(),
            kinds: params.kinds().clone(),
            ..ReadOptions::default()
        };
        TrainJob {
            source: TrainSource::Events(data),
            models,
            as_of: None,
            params,
            read,
            export_eval: None,
            accept_tier_changes: false,
            sign_key: None,
            suppress: None,
            pseudonymize: None,
            fit_users: DEFAULT_FIT_USERS,
        }
    }
}

/// What a caller can show while a run goes on.
pub trait Progress {
    /// A stage (reading, a pipeline stage, writing, exporting) starts.
    fn stage(&mut self, name: &str);

    /// The data has been read (before training starts): e.g. to report skipped rows at once.
    fn data_read(&mut self, _report: &ReadReport) {}
}

impl<F: FnMut(&str)> Progress for F {
    fn stage(&mut self, name: &str) {
        self(name)
    }
}

/// Drops every event of a suppressed user, and the user; returns how many users were dropped.
fn suppress_users(
    dataset: &mut crate::io::read::Dataset,
    s: &crate::io::privacy::Suppression,
) -> usize {
    if s.is_empty() {
        return 0;
    }
    let t = &dataset.events;
    let keep: Vec<bool> = t.user_ids.iter().map(|id| !s.suppressed(id)).collect();
    let dropped = keep.iter().filter(|k| !**k).count();
    if dropped == 0 {
        return 0;
    }
    let mut out = crate::features::EventTable::with_capacity(t.len());
    out.columns = t.columns;
    out.kind_tally = t.kind_tally.clone();
    let mut map = vec![u32::MAX; t.user_ids.len()];
    for (old, id) in t.user_ids.iter().enumerate() {
        if keep[old] {
            let new = out.intern(id);
            out.registered_at[new as usize] = t.registered_at[old];
            map[old] = new;
        }
    }
    // Through `event`/`push`, which carry every event column (a new one cannot be missed).
    for i in 0..t.len() {
        let new = map[t.user[i] as usize];
        if new != u32::MAX {
            out.push(new, t.event(i));
        }
    }
    if let Some(p) = &mut dataset.report.personas {
        let kept: Vec<Option<String>> = p
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
            .map(|(_, v)| v.clone())
            .collect();
        *p = kept;
    }
    dataset.events = out;
    dropped
}

/// Wall-clock seconds of a run's parts.
#[derive(Debug, Clone, Default)]
pub struct RunTimings {
    pub read: f64,
    /// The pipeline's stages, in order.
    pub stages: Vec<(String, f64)>,
    pub write: f64,
    pub total: f64,
}

/// What a run produced. The data and the previous bundle are handed back so the caller decides
/// when to free them (at a million users, unmapping them takes a noticeable fraction of a
/// second that no caller needs to wait for).
pub struct TrainOutcome {
    pub trained: Trained,
    /// The new bundle's directory (current, unless `held_back`).
    pub bundle_dir: PathBuf,
    /// Set when the promotion gate held the bundle back: written, not made current. The
    /// message says how many users would move between which tiers.
    pub held_back: Option<String>,
    /// The key id the bundle is signed by (`None`: unsigned).
    pub signed_by: Option<String>,
    pub dataset: Dataset,
    pub previous: Option<(Bundle, Snapshot)>,
    pub timings: RunTimings,
}

/// Why a run failed: one variant per step; the cause is the error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: Box<ReadError>,
    },
    #[error("reading the aggregates table")]
    Aggregates(#[source] Box<AggregatesError>),
    #[error("{0} is not supported with an aggregates table (apply it in the warehouse job)")]
    Unsupported(&'static str),
    #[error("{}: not a directory (--models names the directory bundles are written under)", .0.display())]
    ModelsNotADirectory(PathBuf),
    #[error("training")]
    Train(#[from] TrainError),
    #[error("writing the bundle under {}", models.display())]
    Write {
        models: PathBuf,
        #[source]
        source: WriteBundleError,
    },
    #[error("exporting evaluation sets to {}", dir.display())]
    Export {
        dir: PathBuf,
        #[source]
        source: ExportError,
    },
}

/// The bundle that is current in `store`, with its state; `None` (with a warning in the log)
/// when there is none or it does not load.
pub(crate) fn previous_bundle(store: &BundleStore) -> Option<(Bundle, Snapshot)> {
    match store.current() {
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
    }
}

/// The promotion gate: `Some(message)` when the model alone would move more users than
/// `promotion.max_model_tier_changes` allows and the job does not accept tier changes.
///
/// The message: `tier changes held back: <share> of users (<n> of <compared>) would change tier
/// with unchanged behaviour (limit <limit>): <n> <from> -> <to>, ...; bundle <version> is
/// written but not current; rerun with --accept-tier-changes, or `tiering models promote
/// <version>`, to make it current`.
pub fn promotion_gate(trained: &Trained, limit: f64, accept: bool) -> Option<String> {
    let s = trained.manifest.metrics.stability.as_ref()?;
    if accept || s.model_changed_share <= limit {
        return None;
    }
    let v = &trained.manifest.version;
    Some(format!(
        "tier changes held back: {:.1}% of users ({} of {}) would change tier with unchanged behaviour (limit {:.1}%): {}; bundle {v} is written but not current; rerun with --accept-tier-changes, or `tiering models promote {v}`, to make it current",
        100.0 * s.model_changed_share,
        s.model_changed,
        s.compared,
        100.0 * limit,
        s.model.describe_moves(6),
    ))
}

/// What the manifest says about the data read.
fn data_info(dataset: &Dataset) -> DataInfo {
    let (table, rep) = (&dataset.events, &dataset.report);
    DataInfo {
        fingerprint: rep.fingerprint.clone(),
        files: rep.files.iter().map(|f| f.display().to_string()).collect(),
        events: table.len() as u64,
        users: table.n_users() as u64,
        first_event: table.min_ts(),
        last_event: table.max_ts(),
        bad_rows_skipped: rep.bad_rows,
        columns: table.columns,
        kinds_seen: rep.kinds_seen.clone(),
        kind_rows_dropped: rep.kind_rows_dropped,
        // Counted from the aggregates as of the bundle's time (the pipeline fills it in).
        orphan_refunds: 0,
        categories: table
            .kind_tally
            .categories()
            .sorted()
            .into_iter()
            .map(|(_, n)| n)
            .collect(),
        rooms: table
            .kind_tally
            .rooms()
            .sorted()
            .into_iter()
            .map(|(_, n)| n)
            .collect(),
        channel_rows: if table.columns.channel {
            table
                .kind_tally
                .channel_rows()
                .into_iter()
                .map(|(n, r)| (n.to_string(), r))
                .collect()
        } else {
            Vec::new()
        },
        unknown_channels: table.kind_tally.unknown_channels(),
    }
}

/// The events of an events source (`None` for an aggregates table), read and filtered.
fn read_events(job: &TrainJob) -> Result<Option<Dataset>, RunError> {
    let TrainSource::Events(path) = &job.source else {
        return Ok(None);
    };
    let mut dataset = read_dataset(path, &job.read).map_err(|source| RunError::Read {
        path: path.clone(),
        source: Box::new(source),
    })?;
    if let Some(key) = &job.pseudonymize {
        crate::io::read::pseudonym::pseudonymize_table(&mut dataset.events, key);
    }
    if let Some(s) = &job.suppress {
        let dropped = suppress_users(&mut dataset, s);
        tracing::info!(
            users = dropped,
            list = s.len(),
            "dropped the events of erased users (suppression list)"
        );
    }
    Ok(Some(dataset))
}

/// The aggregates table of an aggregates source (its fit sample's rows), with what the
/// manifest says about it and the first pass's findings.
fn read_aggregates(
    job: &TrainJob,
) -> Result<Option<(AggregatesSource, DataInfo, TableScan)>, RunError> {
    let TrainSource::Aggregates(path) = &job.source else {
        return Ok(None);
    };
    if job.pseudonymize.is_some() {
        return Err(RunError::Unsupported("--pseudonymize-key-file"));
    }
    if job.suppress.is_some() {
        return Err(RunError::Unsupported("--suppress"));
    }
    let fail = |e| RunError::Aggregates(Box::new(e));
    let files = crate::io::aggregates::table_files(path).map_err(fail)?;
    let scan = scan_table(path, job.fit_users).map_err(fail)?;
    let table = AggregatesTable::load_where(path, scan.snapshots.clone(), &|id| scan.keeps(id))
        .map_err(fail)?;
    let source = AggregatesSource::new(table);
    let mut info = aggregates_info(&files, &source);
    if scan.sample.is_some() {
        info.users = scan.users_now();
    }
    Ok(Some((source, info, scan)))
}

/// For a table larger than its fit sample: a warning for the manifest, and the streaming pass
/// that scores every user with a row at the score time into the bundle's scores table.
fn score_whole_table<'a>(
    job: &'a TrainJob,
    scan: &TableScan,
    trained: &mut Trained,
) -> Option<impl Fn(&mut ScoreWriter, &Scorer) -> Result<(), WriteBundleError> + Sync + 'a> {
    scan.sample.as_ref()?;
    let as_of = trained.snapshot.as_of;
    trained.manifest.warnings.push(format!(
        "fitted on a keyed sample of {} of the table's {} users (--fit-users); the evaluation, the tier figures and the state seed are of the sample; the scores table holds every user with a row at the score time",
        trained.snapshot.user_ids.len(),
        scan.rows.get(&as_of).copied().unwrap_or(0),
    ));
    let path = job.source.path();
    Some(move |w: &mut ScoreWriter, scorer: &Scorer| {
        crate::score::stream_aggregate_scores(scorer, path, as_of, None, |row| w.write(row))
            .map(|_| ())
            .map_err(|e| WriteBundleError::TableScores(Box::new(e)))
    })
}

/// The manifest's data section for an aggregates table; the fingerprint hashes the part files'
/// names and sizes (not their bytes: a warehouse table can be large).
fn aggregates_info(files: &[PathBuf], source: &AggregatesSource) -> DataInfo {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        h.update(format!("{}\0{len}\0", f.display()).as_bytes());
    }
    let span = source.span();
    DataInfo {
        fingerprint: hex::encode(h.finalize()),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        users: source.user_ids().len() as u64,
        first_event: span.map(|s| s.0),
        last_event: span.map(|s| s.1),
        columns: source.columns(),
        ..DataInfo::default()
    }
}

/// Runs a training job end to end; `progress` is told each stage as it starts.
pub fn run(job: TrainJob, progress: &mut dyn Progress) -> Result<TrainOutcome, RunError> {
    let started = Instant::now();
    // Checked before the data is read: the bundle is written minutes later at scale. A path
    // that does not exist yet is created then.
    if std::fs::metadata(&job.models).is_ok_and(|m| !m.is_dir()) {
        return Err(RunError::ModelsNotADirectory(job.models.clone()));
    }
    progress.stage("reading the data");
    let dataset = read_events(&job)?;
    let aggregates = read_aggregates(&job)?;
    let read = started.elapsed().as_secs_f64();
    let dataset = dataset.unwrap_or_default();
    let (table, info): (&dyn TrainData, DataInfo) = match &aggregates {
        Some((source, info, _)) => (source, info.clone()),
        None => (&dataset.events, data_info(&dataset)),
    };
    let rep = &dataset.report;
    progress.data_read(rep);
    tracing::info!(
        rows = rep.rows,
        users = table.user_ids().len(),
        bad_rows = rep.bad_rows,
        "read the data"
    );

    let store = BundleStore::new(&job.models);
    let previous = previous_bundle(&store);
    let created = chrono::Utc::now();
    let version = version_id(created, &info.fingerprint, job.params.config(), job.as_of);
    let input = TrainInput {
        table,
        personas: rep.personas.as_deref(),
        data: info,
        as_of: job.as_of,
        config: &job.params,
        previous: previous.as_ref().map(|(b, s)| (b, s)),
        keep_eval_sets: job.export_eval.is_some(),
        version,
        created_at: created.timestamp(),
    };
    progress.stage("training");
    let mut trained = pipeline::fit(input, &mut |stage| progress.stage(stage))?;
    let stream = match &aggregates {
        Some((_, _, scan)) => score_whole_table(&job, scan, &mut trained),
        None => None,
    };
    let held_back = promotion_gate(
        &trained,
        job.params.promotion.max_model_tier_changes,
        job.accept_tier_changes,
    );
    if let Some(why) = &held_back {
        tracing::warn!("{why}");
    }
    progress.stage("writing the bundle");
    let write_started = Instant::now();
    let promote = held_back.is_none();
    let stream = stream.as_ref().map(|f| f as &super::StreamScores<'_>);
    let bundle_dir = write_bundle(&store, &trained, promote, job.sign_key.as_ref(), stream)
        .map_err(|source| RunError::Write {
            models: job.models.clone(),
            source,
        })?;
    let write = write_started.elapsed().as_secs_f64();
    if let (Some(dir), Some(sets)) = (&job.export_eval, &trained.eval_sets) {
        progress.stage("exporting evaluation sets");
        export_eval(dir, sets, table.user_ids(), &trained.manifest).map_err(|source| {
            RunError::Export {
                dir: dir.clone(),
                source,
            }
        })?;
    }
    let timings = RunTimings {
        read,
        stages: trained.timings.clone(),
        write,
        total: started.elapsed().as_secs_f64(),
    };
    Ok(TrainOutcome {
        signed_by: job.sign_key.as_ref().map(|k| k.key_id().to_string()),
        trained,
        bundle_dir,
        held_back,
        dataset,
        previous,
        timings,
    })
}
