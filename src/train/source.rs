//! Where the pipeline's per-user aggregates come from: raw events swept here
//! ([`EventTable`]), or an aggregates table a warehouse engine computed
//! ([`AggregatesSource`], read from the Parquet table of [`crate::io::aggregates`]).
//!
//! Both implement [`TrainData`], the one thing the pipeline asks of its input: users, the time
//! span, the aggregates at given snapshot times and the label windows. Everything after the
//! aggregates (labels, fits, tiers, scoring, report) is the same code for both, which is what
//! makes `train --aggregates` and `train --data` give the same result on the same events.
//!
//! A table larger than [`DEFAULT_FIT_USERS`] users is not loaded whole: [`scan_table`] makes
//! one cheap pass over its `user_id` and `snapshot` columns and keeps a keyed sample of users
//! (the lowest [`fit_rank`]s: a hash of the id, so independent of the table's row order and
//! partitioning), and only their rows are decoded and handed to the pipeline. Below the bound
//! every user is in the sample, so the result is the one of training on the whole table (and
//! of `train --data` on the same events). Everyone is then scored in a streaming pass (see
//! `train::job`).
//!
//! [`export_aggregates`] writes the Rust side's own aggregates in the table's schema
//! (`tiering features`), so the warehouse SQL can be checked against it column by column.

use crate::features::{
    active_in_window, build_aggregates, CategoryNames, ChurnDefinition, ColumnsPresent, EventKind,
    EventTable, Timestamp, UserAggregate, DAY,
};
use crate::io::aggregates::{AggregateRow, AggregatesError, AggregatesTable, AggregatesWriter};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

/// The users `train --aggregates` fits on when not told otherwise: a keyed sample of at most
/// this many (every user of a smaller table). Holding them costs about 1.5 GiB; the churn
/// models already fit on samples of 100,000 and 250,000 rows of them.
pub const DEFAULT_FIT_USERS: usize = 1_000_000;

/// Salt of the fit sample's rank, so that it is independent of the pipeline's own samples.
const FIT_SAMPLE_SALT: u64 = 0x6669_745f_7573_6572;

/// The rank of user `id` in the fit sample: the users with the lowest ranks are kept.
pub fn fit_rank(id: &str) -> u64 {
    // fnv1a64 of the id is the pipeline's user key (`pipeline::user_key`).
    crate::model::tiers::mix64(crate::features::hash::fnv1a64(id.as_bytes()) ^ FIT_SAMPLE_SALT)
}

/// What the cheap first pass over an aggregates table found.
#[derive(Debug, Clone, Default)]
pub struct TableScan {
    /// The distinct snapshot times, sorted.
    pub snapshots: Vec<Timestamp>,
    /// Rows per snapshot time (the users with a row there).
    pub rows: BTreeMap<Timestamp, u64>,
    /// The ranks ([`fit_rank`]) of the users kept for fitting; `None` when every user is kept
    /// (the table has at most the sample's size of users).
    pub sample: Option<BTreeSet<u64>>,
}

impl TableScan {
    /// Is user `id` in the fit sample?
    pub fn keeps(&self, id: &str) -> bool {
        self.sample
            .as_ref()
            .is_none_or(|s| s.contains(&fit_rank(id)))
    }

    /// The users with a row at the latest snapshot.
    pub fn users_now(&self) -> u64 {
        self.rows.values().next_back().copied().unwrap_or(0)
    }
}

/// Reads the `user_id` and `snapshot` columns of the table at `path` once: its snapshots,
/// rows per snapshot, and the keyed sample of at most `max_users` users. The part files are
/// read in parallel (each keeps its own lowest ranks; the merge keeps the lowest overall,
/// which is the sample a single sequential pass keeps). Memory: at most twice the sample's
/// ranks (8 bytes a user) per part file being read, and the sample's per part file's result,
/// whatever the table's size.
pub fn scan_table(path: &Path, max_users: usize) -> Result<TableScan, AggregatesError> {
    use rayon::prelude::*;
    let max_users = max_users.max(1);
    let files = crate::io::aggregates::table_files(path)?;
    let scans: Vec<Result<FileScan, AggregatesError>> = files
        .par_iter()
        .map(|file| FileScan::of(file, max_users))
        .collect();
    let mut rows: BTreeMap<Timestamp, u64> = BTreeMap::new();
    let mut ranks = Vec::new();
    let mut left_out = false;
    // The first failing file in table order, as a sequential pass would report it.
    for scan in scans {
        let scan = scan?;
        for (t, n) in scan.rows {
            *rows.entry(t).or_default() += n;
        }
        ranks.extend(scan.ranks);
        left_out |= scan.left_out;
    }
    left_out |= lowest_distinct(&mut ranks, max_users);
    Ok(TableScan {
        snapshots: rows.keys().copied().collect(),
        rows,
        sample: left_out.then(|| ranks.into_iter().collect()),
    })
}

/// One part file's share of [`scan_table`].
struct FileScan {
    rows: BTreeMap<Timestamp, u64>,
    /// The file's lowest distinct ranks, at most the sample's size, sorted.
    ranks: Vec<u64>,
    /// The file has more distinct users than that.
    left_out: bool,
}

impl FileScan {
    fn of(file: &Path, max_users: usize) -> Result<FileScan, AggregatesError> {
        let mut rows: BTreeMap<Timestamp, u64> = BTreeMap::new();
        let mut ranks = Vec::new();
        let mut left_out = false;
        crate::io::aggregates::for_each_user_snapshot(file, |id, t| {
            *rows.entry(t).or_default() += 1;
            ranks.push(fit_rank(id));
            // Bounded: at most twice the sample's ranks are held (the ones cut are above
            // every one kept, so the end result is the same as one cut at the end).
            if ranks.len() >= 2 * max_users {
                left_out |= lowest_distinct(&mut ranks, max_users);
            }
        })?;
        left_out |= lowest_distinct(&mut ranks, max_users);
        Ok(FileScan {
            rows,
            ranks,
            left_out,
        })
    }
}

/// Sorts `ranks`, drops repeats and keeps the lowest `max`; whether any distinct rank was
/// dropped.
fn lowest_distinct(ranks: &mut Vec<u64>, max: usize) -> bool {
    ranks.sort_unstable();
    ranks.dedup();
    let over = ranks.len() > max;
    ranks.truncate(max);
    over
}

/// What the training pipeline reads from its input.
pub trait TrainData: Sync {
    /// Dense user index -> the user's id.
    fn user_ids(&self) -> &[String];
    /// The index of user `id`, if present.
    fn user_index(&self, id: &str) -> Option<usize>;
    /// Which optional columns the data had.
    fn columns(&self) -> ColumnsPresent;
    /// Which event kinds occur, indexed by `EventKind as usize`.
    fn kinds_present(&self) -> [bool; EventKind::ALL.len()];
    /// The first and the last event's time; `None` without events.
    fn span(&self) -> Option<(Timestamp, Timestamp)>;
    /// The score time when none is given.
    fn default_as_of(&self) -> Option<Timestamp>;
    /// Events at or after `t` (reported as ignored when `t` is the score time); 0 when unknown.
    fn events_from(&self, t: Timestamp) -> usize;
    /// Per-user aggregates of the events strictly before each time in `times`
    /// (`out[s][u]`). Called once per run.
    fn aggregates(&self, times: &[Timestamp]) -> Result<Vec<Vec<UserAggregate>>, AggregatesError>;
    /// Per user: did anything that counts (per `def`) happen in `[start, end)`?
    fn active_in_window(
        &self,
        start: Timestamp,
        end: Timestamp,
        def: ChurnDefinition,
    ) -> Result<Vec<bool>, AggregatesError>;
    /// The names of the categories the events held, by hash (`None`: the input holds hashes
    /// only, as an aggregates table does).
    fn category_names(&self) -> Option<&CategoryNames> {
        None
    }
}

impl TrainData for EventTable {
    fn user_ids(&self) -> &[String] {
        &self.user_ids
    }
    fn category_names(&self) -> Option<&CategoryNames> {
        Some(self.kind_tally.categories())
    }
    fn user_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).map(|&u| u as usize)
    }
    fn columns(&self) -> ColumnsPresent {
        self.columns
    }
    fn kinds_present(&self) -> [bool; EventKind::ALL.len()] {
        EventTable::kinds_present(self)
    }
    fn span(&self) -> Option<(Timestamp, Timestamp)> {
        Some((self.min_ts()?, self.max_ts()?))
    }
    fn default_as_of(&self) -> Option<Timestamp> {
        self.max_ts().map(|t| t + 1)
    }
    fn events_from(&self, t: Timestamp) -> usize {
        self.ts.iter().filter(|&&x| x >= t).count()
    }
    fn aggregates(&self, times: &[Timestamp]) -> Result<Vec<Vec<UserAggregate>>, AggregatesError> {
        Ok(build_aggregates(self, times))
    }
    fn active_in_window(
        &self,
        start: Timestamp,
        end: Timestamp,
        def: ChurnDefinition,
    ) -> Result<Vec<bool>, AggregatesError> {
        Ok(active_in_window(self, start, end, def))
    }
}

/// An aggregates table as the pipeline's input. Its snapshot aggregates are handed over (not
/// copied) to the pipeline, so a table costs its memory once.
pub struct AggregatesSource {
    table: AggregatesTable,
    taken: Mutex<Vec<Option<Vec<UserAggregate>>>>,
    latest: Option<usize>,
    columns: ColumnsPresent,
    kinds: [bool; EventKind::ALL.len()],
    span: Option<(Timestamp, Timestamp)>,
}

impl AggregatesSource {
    pub fn new(mut table: AggregatesTable) -> AggregatesSource {
        let latest = table.snapshots.len().checked_sub(1);
        let now: &[UserAggregate] = latest.map_or(&[], |s| &table.aggs[s]);
        let (columns, kinds, span) = describe(now);
        let taken = Mutex::new(
            std::mem::take(&mut table.aggs)
                .into_iter()
                .map(Some)
                .collect(),
        );
        AggregatesSource {
            table,
            taken,
            latest,
            columns,
            kinds,
            span,
        }
    }

    pub fn table(&self) -> &AggregatesTable {
        &self.table
    }

    fn used(&self, t: Timestamp) -> AggregatesError {
        AggregatesError::SnapshotMissing {
            path: self.table.path.clone(),
            wanted: crate::features::format_rfc3339(t),
            held: vec!["(its aggregates were handed over already)".into()],
        }
    }
}

/// What the latest snapshot says about the data: the columns and kinds that occur (a column is
/// taken as present when any user has a value from it) and the span of the events.
fn describe(
    now: &[UserAggregate],
) -> (
    ColumnsPresent,
    [bool; EventKind::ALL.len()],
    Option<(Timestamp, Timestamp)>,
) {
    let mut c = ColumnsPresent::default();
    let mut k = [false; EventKind::ALL.len()];
    let mut span: Option<(Timestamp, Timestamp)> = None;
    for a in now {
        c.watch_seconds |= a.watch_seconds > 0;
        c.room_id |= a.room_sketch != 0;
        c.category |= a.category_sketch != 0;
        c.order_id |= a.linked_refunds + a.orphan_refunds > 0;
        c.users_table |= a.registered_at != UserAggregate::NONE;
        for (kind, n) in [
            (EventKind::Order, a.orders),
            (EventKind::View, a.views),
            (EventKind::Comment, a.comments),
            (EventKind::Like, a.likes),
            (EventKind::Share, a.shares),
            (EventKind::Follow, a.follows),
            (EventKind::Gift, a.gifts),
            (EventKind::Refund, a.refunds),
        ] {
            k[kind as usize] |= n > 0;
        }
        if a.has_activity() {
            let (lo, hi) = span.unwrap_or((a.first_seen, a.last_activity));
            span = Some((lo.min(a.first_seen), hi.max(a.last_activity)));
        }
    }
    (c, k, span)
}

impl TrainData for AggregatesSource {
    fn user_ids(&self) -> &[String] {
        &self.table.user_ids
    }
    fn user_index(&self, id: &str) -> Option<usize> {
        self.table.index.get(id).map(|&u| u as usize)
    }
    fn columns(&self) -> ColumnsPresent {
        self.columns
    }
    fn kinds_present(&self) -> [bool; EventKind::ALL.len()] {
        self.kinds
    }
    fn span(&self) -> Option<(Timestamp, Timestamp)> {
        self.span
    }
    fn default_as_of(&self) -> Option<Timestamp> {
        self.latest.map(|s| self.table.snapshots[s])
    }
    fn events_from(&self, _t: Timestamp) -> usize {
        0
    }
    fn aggregates(&self, times: &[Timestamp]) -> Result<Vec<Vec<UserAggregate>>, AggregatesError> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        times
            .iter()
            .map(|&t| {
                let s = self.table.snapshot_index(t)?;
                taken[s].take().ok_or_else(|| self.used(t))
            })
            .collect()
    }
    fn active_in_window(
        &self,
        start: Timestamp,
        end: Timestamp,
        def: ChurnDefinition,
    ) -> Result<Vec<bool>, AggregatesError> {
        let s = self.table.snapshot_index(start)?;
        let days = self.table.horizon_days;
        if end - start != i64::from(days) * DAY {
            return Err(AggregatesError::Horizon {
                path: self.table.path.clone(),
                wanted: ((end - start) / DAY) as u32,
                found: days,
            });
        }
        let counts = match def {
            ChurnDefinition::NoOrder => &self.table.label_orders[s],
            ChurnDefinition::NoActivity => &self.table.label_events[s],
        };
        Ok(counts.iter().map(|&n| n > 0).collect())
    }
}

/// The snapshot times training uses for score time `as_of` and a horizon of `horizon_days`:
/// `as_of - 2H`, `as_of - H` and `as_of`.
pub fn training_snapshots(as_of: Timestamp, horizon_days: u32) -> Vec<Timestamp> {
    let h = i64::from(horizon_days) * DAY;
    vec![as_of - 2 * h, as_of - h, as_of]
}

/// Writes every user's aggregate at each time in `times`, with the counts of the label window
/// `[t, t + horizon_days)`, to `writer` (snapshot by snapshot, users in index order); the rows
/// written.
pub fn export_aggregates(
    table: &EventTable,
    times: &[Timestamp],
    horizon_days: u32,
    writer: &mut AggregatesWriter,
) -> Result<u64, AggregatesError> {
    let aggs = build_aggregates(table, times);
    let h = i64::from(horizon_days) * DAY;
    let mut rows = 0;
    for (snap, &t) in aggs.iter().zip(times) {
        let (mut orders, mut events) = (vec![0u32; table.n_users()], vec![0u32; table.n_users()]);
        for i in 0..table.len() {
            if table.ts[i] >= t && table.ts[i] < t + h {
                let u = table.user[i] as usize;
                events[u] = events[u].saturating_add(1);
                if table.kind[i] == EventKind::Order {
                    orders[u] = orders[u].saturating_add(1);
                }
            }
        }
        for (u, agg) in snap.iter().enumerate() {
            writer.write(&AggregateRow {
                user_id: table.user_ids[u].clone(),
                snapshot: t,
                horizon_days,
                agg: *agg,
                label_orders: orders[u],
                label_events: events[u],
            })?;
            rows += 1;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::aggregates::AggregatesWriter;

    fn write_table(path: &Path, ids: &[String], snapshots: &[Timestamp]) {
        let mut w = AggregatesWriter::create(path).unwrap();
        for &t in snapshots {
            for id in ids {
                w.write(&AggregateRow {
                    user_id: id.clone(),
                    snapshot: t,
                    horizon_days: 30,
                    agg: UserAggregate::with_registration(Some(t - 100 * DAY)),
                    label_orders: 0,
                    label_events: 1,
                })
                .unwrap();
            }
        }
        w.finish().unwrap();
    }

    #[test]
    fn the_fit_sample_is_the_lowest_ranked_users_whatever_the_row_order() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
        let reversed: Vec<String> = ids.iter().rev().cloned().collect();
        let times = [1_780_000_000, 1_782_592_000];
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        write_table(&a, &ids, &times);
        write_table(&b, &reversed, &times);

        let scan = scan_table(&a, 40).unwrap();
        let mut ranks: Vec<u64> = ids.iter().map(|id| fit_rank(id)).collect();
        ranks.sort_unstable();
        let want: BTreeSet<u64> = ranks[..40].iter().copied().collect();
        assert_eq!(scan.sample.as_ref(), Some(&want));
        assert_eq!(scan.snapshots, times.to_vec());
        assert_eq!(scan.users_now(), 500);
        assert_eq!(ids.iter().filter(|id| scan.keeps(id)).count(), 40);
        assert_eq!(scan_table(&b, 40).unwrap().sample, scan.sample);

        let table =
            AggregatesTable::load_where(&a, scan.snapshots.clone(), &|id| scan.keeps(id)).unwrap();
        assert_eq!(table.user_ids.len(), 40);
        assert!(table.user_ids.iter().all(|id| scan.keeps(id)));
        assert_eq!(
            table.aggs.iter().map(Vec::len).collect::<Vec<_>>(),
            [40, 40]
        );
    }

    /// A part file holding many times the sample's rows is cut down as it is read (memory
    /// stays at twice the sample): the sample is still the users of lowest rank.
    #[test]
    fn the_fit_sample_of_a_file_much_larger_than_the_sample_is_the_users_of_lowest_rank() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
        let path = dir.path().join("t.parquet");
        write_table(&path, &ids, &[1_780_000_000, 1_782_592_000, 1_785_184_000]);
        let mut all: Vec<u64> = ids.iter().map(|id| fit_rank(id)).collect();
        all.sort_unstable();
        for max in [1, 7, 100, 499] {
            let scan = scan_table(&path, max).unwrap();
            let want: BTreeSet<u64> = all[..max].iter().copied().collect();
            assert_eq!(scan.sample, Some(want), "max {max}");
            assert_eq!(scan.rows.values().sum::<u64>(), 1_500);
        }
        assert_eq!(scan_table(&path, 500).unwrap().sample, None);
    }

    /// The part files are scanned in parallel and their samples merged: the sample of a
    /// table in several part files (a user's rows in different files) is the sample of the
    /// same rows in one file.
    #[test]
    fn the_fit_sample_of_a_table_in_part_files_is_the_sample_of_the_same_rows_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
        let times = [1_780_000_000, 1_782_592_000];
        let one = dir.path().join("one.parquet");
        write_table(&one, &ids, &times);
        let parts = dir.path().join("parts");
        std::fs::create_dir(&parts).unwrap();
        for (k, chunk) in ids.chunks(70).enumerate() {
            // Each part holds one snapshot of its users; the other snapshot is in the next.
            let t = [times[k % 2]];
            write_table(&parts.join(format!("part-{:05}.parquet", 2 * k)), chunk, &t);
            let t = [times[(k + 1) % 2]];
            write_table(
                &parts.join(format!("part-{:05}.parquet", 2 * k + 1)),
                chunk,
                &t,
            );
        }
        for max in [1, 25, 69, 299, 300, 301] {
            let (a, b) = (
                scan_table(&one, max).unwrap(),
                scan_table(&parts, max).unwrap(),
            );
            assert_eq!(a.sample, b.sample, "max {max}");
            assert_eq!(a.rows, b.rows, "max {max}");
            assert_eq!(a.snapshots, b.snapshots);
            assert_eq!(
                b.sample.as_ref().map(BTreeSet::len),
                (max < 300).then_some(max)
            );
        }
    }

    #[test]
    fn a_table_no_larger_than_the_sample_keeps_every_user() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
        let path = dir.path().join("t.parquet");
        write_table(&path, &ids, &[1_780_000_000]);
        for max in [50, 51, 1_000_000] {
            let scan = scan_table(&path, max).unwrap();
            assert!(scan.sample.is_none(), "max {max}");
            assert!(ids.iter().all(|id| scan.keeps(id)));
        }
        assert!(scan_table(&path, 49).unwrap().sample.is_some());
    }
}
