//! Offline scoring rows and writers: a [`Scorer`]'s [`Score`]s as the output rows of
//! `tiering score` and of the bundle's `scores.parquet`. The file formats are
//! [`crate::io::write::ScoreWriter`]'s.

use crate::io::write::{ScoreRow, ScoreWriter, WriteError};
use crate::model::{Score, Scorer};

/// Rows whose reasons text is formatted (on all cores) ahead of the sequential writer.
const ROWS_PER_BLOCK: usize = 1 << 15;

/// Input batches the reader of [`stream_aggregate_scores`] decodes ahead of the scoring.
const BATCHES_AHEAD: usize = 2;

/// The text columns formatted ahead of the writer: reasons, interests, channels, rooms.
pub(crate) struct RowTexts {
    pub factors: String,
    pub interests: String,
    pub channels: String,
    pub rooms: String,
}

impl RowTexts {
    pub(crate) fn of(scorer: &Scorer, s: &Score) -> RowTexts {
        let interests = s
            .interests
            .ranked()
            .into_iter()
            .map(|(id, _)| crate::features::interests::display_name(id))
            .collect::<Vec<_>>()
            .join("; ");
        let channels = s
            .channels
            .list()
            .into_iter()
            .map(|(c, spend, activity)| format!("{}={spend:.3}/{activity:.3}", c.as_str()))
            .collect::<Vec<_>>()
            .join("; ");
        RowTexts {
            factors: scorer.format_factors(s),
            interests,
            channels,
            rooms: rooms_text(&s.rooms),
        }
    }
}

/// A user's top rooms as the score output writes them: room ids, highest score first (ties by
/// the smaller hash), joined by `; ` like the interests; empty without rooms.
pub(crate) fn rooms_text(r: &crate::features::Rooms) -> String {
    r.ranked()
        .into_iter()
        .map(|(id, _)| crate::features::interests::room_display_name(id))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The output row of one scored user (`tiering score`, the bundle's `scores.parquet`).
/// `texts` is [`RowTexts::of`] the score, passed in so callers can format on all cores.
pub(crate) fn score_row<'a>(
    scorer: &'a Scorer,
    user_id: &'a str,
    s: &Score,
    texts: &'a RowTexts,
) -> ScoreRow<'a> {
    let tier = &scorer.tiers.tiers[usize::from(s.tier)];
    ScoreRow {
        user_id,
        tier_id: &tier.id,
        tier_name: &tier.name_en,
        churn_probability: s.churn_probability,
        risk_level: s.risk_level.id(),
        risk_percentile: s.risk_percentile,
        rfm_segment: s.rfm_segment.id(),
        lifecycle_stage: s.lifecycle_stage.id(),
        top_factors: &texts.factors,
        interests: &texts.interests,
        channels: &texts.channels,
        rooms: &texts.rooms,
        clv: s.clv,
        expected_orders: s.expected_orders,
        p_alive: s.p_alive,
        value_at_risk: s.value_at_risk,
    }
}

/// Writes every user's score through `writer`, row `u` named `user_ids[u]`. The reasons text
/// is formatted on all cores, a block of rows at a time, ahead of the (sequential) writer.
pub fn write_scores(
    writer: &mut ScoreWriter,
    scorer: &Scorer,
    user_ids: &[String],
    scores: &[Score],
) -> Result<(), WriteError> {
    use rayon::prelude::*;
    for (block, (ids, ss)) in user_ids
        .chunks(ROWS_PER_BLOCK)
        .zip(scores.chunks(ROWS_PER_BLOCK))
        .enumerate()
    {
        let texts: Vec<RowTexts> = ss.par_iter().map(|s| RowTexts::of(scorer, s)).collect();
        for ((id, s), f) in ids.iter().zip(ss).zip(&texts) {
            writer.write(&score_row(scorer, id, s, f))?;
        }
        tracing::trace!(block, "scores written");
    }
    Ok(())
}

/// Why scoring an aggregates table failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreAggregatesError {
    #[error(transparent)]
    Read(#[from] crate::io::aggregates::AggregatesError),
    #[error("writing the scores")]
    Write(#[from] WriteError),
    #[error("cannot create the output directory {}", .path.display())]
    OutDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the aggregates table holds no rows", .path.display())]
    Empty { path: std::path::PathBuf },
    /// The reader of [`stream_aggregate_scores`] stopped because the scoring side failed
    /// (whose error is the one returned).
    #[error("the scoring stopped")]
    Stopped,
}

/// What [`score_aggregates`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredParts {
    pub snapshot: crate::features::Timestamp,
    pub rows: u64,
    pub parts: Vec<std::path::PathBuf>,
}

/// The part files of a partitioned output: `part-00000.parquet`, ... under a directory, a new
/// one every `rows_per_part` rows.
struct Parts {
    dir: std::path::PathBuf,
    rows_per_part: u64,
    current: Option<(ScoreWriter, u64)>,
    done: Vec<std::path::PathBuf>,
    rows: u64,
}

impl Parts {
    fn write(&mut self, row: &ScoreRow<'_>) -> Result<(), WriteError> {
        if matches!(&self.current, Some((_, n)) if *n >= self.rows_per_part) {
            self.close()?;
        }
        let (w, n) = match self.current.take() {
            Some(open) => self.current.insert(open),
            None => {
                let name = format!("part-{:05}.parquet", self.done.len());
                let w = ScoreWriter::create(&self.dir.join(name))?;
                self.current.insert((w, 0))
            }
        };
        w.write(row)?;
        *n += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<(), WriteError> {
        if let Some((w, _)) = self.current.take() {
            let path = w.path().to_path_buf();
            self.rows += w.finish()?;
            self.done.push(path);
        }
        Ok(())
    }
}

/// Scores the rows of snapshot `snapshot` (default: the table's latest) of the aggregates table
/// at `path` with `scorer`, streaming: one input batch at a time is held, and the output is
/// written as Parquet part files of at most `rows_per_part` rows under `out_dir`. Memory does
/// not grow with the table. Users for which `keep` is false are left out (`None`: none is).
pub fn score_aggregates(
    scorer: &Scorer,
    path: &std::path::Path,
    snapshot: Option<crate::features::Timestamp>,
    out_dir: &std::path::Path,
    rows_per_part: u64,
    keep: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<ScoredParts, ScoreAggregatesError> {
    use crate::io::aggregates::snapshots_in;
    let t = match snapshot {
        Some(t) => t,
        None => *snapshots_in(path)?
            .last()
            .ok_or_else(|| ScoreAggregatesError::Empty {
                path: path.to_path_buf(),
            })?,
    };
    std::fs::create_dir_all(out_dir).map_err(|source| ScoreAggregatesError::OutDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut parts = Parts {
        dir: out_dir.to_path_buf(),
        rows_per_part: rows_per_part.max(1),
        current: None,
        done: Vec::new(),
        rows: 0,
    };
    let scored = stream_aggregate_scores(scorer, path, t, keep, |row| parts.write(row))?;
    let seen = scored > 0;
    if !seen && snapshot.is_some() {
        // Names the snapshots the table does hold.
        let table = crate::io::aggregates::AggregatesTable {
            path: path.to_path_buf(),
            snapshots: snapshots_in(path)?,
            ..Default::default()
        };
        table.snapshot_index(t)?;
    }
    parts.close()?;
    Ok(ScoredParts {
        snapshot: t,
        rows: parts.rows,
        parts: parts.done,
    })
}

/// Scores the rows at snapshot `t` of the aggregates table at `path` whose user `keep`
/// accepts (`None`: every user's), one input batch at a time, handing each output row to `out` in table order; the
/// rows scored. Two stages overlap: a reader thread decodes the next batches (only the rows
/// at `t` are decoded) while this thread scores a batch and formats its text columns (on all
/// cores) and `out` writes it. Memory is a few batches, whatever the table's size.
pub fn stream_aggregate_scores(
    scorer: &Scorer,
    path: &std::path::Path,
    t: crate::features::Timestamp,
    keep: Option<&(dyn Fn(&str) -> bool + Sync)>,
    mut out: impl FnMut(&ScoreRow<'_>) -> Result<(), WriteError>,
) -> Result<u64, ScoreAggregatesError> {
    use crate::io::aggregates::{for_each_batch_at, for_each_batch_where, AggregateRow};
    use rayon::prelude::*;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<AggregateRow>>(BATCHES_AHEAD);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            // A failed send: the scoring side stopped on an error of its own (reported).
            let send = |rows| tx.send(rows).map_err(|_| ScoreAggregatesError::Stopped);
            match keep {
                Some(keep) => for_each_batch_where::<ScoreAggregatesError>(
                    path,
                    &|id: &str, s| s == t && keep(id),
                    send,
                ),
                // Every user: the rows are selected by their snapshot alone.
                None => for_each_batch_at::<ScoreAggregatesError>(path, t, send),
            }
        });
        let mut scored = 0u64;
        let mut scoring = |rows: Vec<AggregateRow>| -> Result<(), ScoreAggregatesError> {
            let aggs: Vec<_> = rows.iter().map(|r| r.agg).collect();
            let mut scores = vec![Score::default(); aggs.len()];
            scorer.score_batch(&aggs, t, &mut scores);
            let texts: Vec<RowTexts> = scores.par_iter().map(|s| RowTexts::of(scorer, s)).collect();
            for ((r, s), x) in rows.iter().zip(&scores).zip(&texts) {
                out(&score_row(scorer, &r.user_id, s, x))?;
            }
            scored += rows.len() as u64;
            Ok(())
        };
        let written = rx.iter().try_for_each(&mut scoring);
        drop(rx);
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written?;
        read?;
        Ok(scored)
    })
}
