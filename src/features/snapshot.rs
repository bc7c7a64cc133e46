//! Point-in-time sweeps over the events table.
//!
//! A snapshot at `t` sees events with `ts < t` only: this is the single place that rule is
//! enforced, and the leakage test exercises it.

use super::aggregate::UserAggregate;
use super::event::{Event, EventKind, Timestamp};
use super::table::EventTable;
use rayon::prelude::*;

/// Per-user aggregates from events strictly before each time in `times`, in one pass.
/// `out[s][u]` is user `u` as of `times[s]`.
///
/// Users are split into contiguous ranges, one per core; each core sweeps the whole table and
/// applies only its own users' events, so the result does not depend on the number of cores.
/// Nor on the file's row order: with refunds present (they link to earlier orders) each
/// user's events are applied in time order (see [`apply_order`]); without, every aggregate
/// commutes.
///
/// Each snapshot's aggregate is the same sequence of [`UserAggregate::apply`] calls it would
/// get on its own (its events in sweep order), but an event that falls before every snapshot
/// still open for a user is applied once, not once per snapshot: see [`Sweep`].
pub fn build_aggregates(table: &EventTable, times: &[Timestamp]) -> Vec<Vec<UserAggregate>> {
    // Each snapshot built in place on all cores (at 1M users ~300 MB each, mostly the kernel
    // zeroing fresh pages: one core for it was ~0.5 s per snapshot), no shared copy cloned.
    let fresh = || -> Vec<UserAggregate> {
        table
            .registered_at
            .par_iter()
            .map(|r| UserAggregate::with_registration(*r))
            .collect()
    };
    let mut out: Vec<Vec<UserAggregate>> = times.iter().map(|_| fresh()).collect();
    if times.is_empty() {
        return out;
    }
    let n = table.n_users();
    let shards = rayon::current_num_threads().clamp(1, 64);
    let per = n.div_ceil(shards).max(1);
    // The snapshots in time order (ties keep their index order): `by_time[j]` is the index
    // into `times` of the j-th earliest.
    let mut by_time: Vec<usize> = (0..times.len()).collect();
    by_time.sort_by_key(|&s| times[s]);
    let sorted: Vec<Timestamp> = by_time.iter().map(|&s| times[s]).collect();
    // shard k owns users [k * per, (k + 1) * per) of every snapshot, in time order.
    let mut owned: Vec<Vec<Option<&mut [UserAggregate]>>> = (0..n.div_ceil(per))
        .map(|_| (0..times.len()).map(|_| None).collect())
        .collect();
    for (s, snap) in out.iter_mut().enumerate() {
        let j = by_time.iter().position(|&x| x == s).unwrap_or(0);
        for (k, part) in snap.chunks_mut(per).enumerate() {
            owned[k][j] = Some(part);
        }
    }
    let latest = sorted.last().copied().unwrap_or(Timestamp::MIN);
    // Refunds link to orders seen before them, so with refunds present each user's events are
    // applied in time order (orders before refunds at one instant), whatever the file order;
    // without refunds every aggregate commutes and file order is kept (no sort to pay for).
    let ordered = table.kind.contains(&EventKind::Refund);
    owned.into_par_iter().enumerate().for_each(|(k, parts)| {
        let lo = k * per;
        let hi = lo + per;
        let parts: Vec<&mut [UserAggregate]> = parts.into_iter().flatten().collect();
        let mut sweep = Sweep::new(parts, &sorted);
        let mine = (0..table.len()).filter(|&i| {
            let u = table.user[i] as usize;
            u >= lo && u < hi && table.ts[i] < latest
        });
        let mut apply = |i: usize| sweep.apply(table.user[i] as usize - lo, &table.event(i));
        if ordered {
            let mut idx: Vec<usize> = mine.collect();
            idx.sort_by_key(|&i| apply_order(table, i));
            idx.into_iter().for_each(&mut apply);
        } else {
            mine.for_each(&mut apply);
        }
        sweep.finish();
    });
    out
}

/// One shard's snapshots, in time order, applied to with shared work.
///
/// For each user, the snapshots from `open[u]` to the last have seen exactly the same events
/// so far (every event applied to one of them fell before all of their times), so they hold
/// the same state: only the last (the representative) is kept up to date, the others are
/// copied from it when an event splits them off (it falls at or after their time, so they
/// must not see it) and at the end. An event is then applied once per snapshot *outside*
/// the shared group plus once for the group: with events roughly in time order, about once
/// per event instead of once per snapshot. The state of every snapshot is the state its own
/// sequence of `apply` calls gives (the same calls, in the same order, from the same start),
/// so the result is bit for bit that of applying to each snapshot separately.
struct Sweep<'a> {
    /// `parts[j][u]`: user `lo + u` in the j-th earliest snapshot.
    parts: Vec<&'a mut [UserAggregate]>,
    /// The snapshot times, earliest first.
    times: &'a [Timestamp],
    /// Per user: the first snapshot (in time order) of the group sharing the last one's state.
    open: Vec<u32>,
}

impl<'a> Sweep<'a> {
    fn new(parts: Vec<&'a mut [UserAggregate]>, times: &'a [Timestamp]) -> Self {
        let users = parts.first().map_or(0, |p| p.len());
        Sweep {
            parts,
            times,
            open: vec![0; users],
        }
    }

    /// Applies `e` of user `u` to every snapshot whose time is after `e.ts`.
    #[inline]
    fn apply(&mut self, u: usize, e: &Event) {
        let last = self.parts.len() - 1;
        // The event counts in snapshots first..=last (the caller skips events after the last).
        let first = self.times.partition_point(|&t| t <= e.ts);
        if first > last {
            return;
        }
        let open = self.open[u] as usize;
        if first > open {
            // Snapshots open..first must not see it: they leave the group with its state.
            let shared = self.parts[last][u];
            for part in &mut self.parts[open..first] {
                part[u] = shared;
            }
            self.open[u] = first as u32;
        } else {
            for part in &mut self.parts[first..open] {
                part[u].apply(e);
            }
        }
        self.parts[last][u].apply(e);
    }

    /// Gives every snapshot still in a user's group the group's state.
    fn finish(self) {
        let Sweep {
            mut parts, open, ..
        } = self;
        let Some((shared, rest)) = parts.split_last_mut() else {
            return;
        };
        for (u, &o) in open.iter().enumerate() {
            for part in rest.iter_mut().skip(o as usize) {
                part[u] = shared[u];
            }
        }
    }
}

/// The order events are applied in when refunds are present: by user, time, orders before
/// refunds before the rest at one instant, then by order id hash and amount, so that only
/// identical events keep their file order (and those commute).
fn apply_order(table: &EventTable, i: usize) -> (u32, Timestamp, u8, u32, u32) {
    let rank = match table.kind[i] {
        EventKind::Order => 0,
        EventKind::Refund => 1,
        _ => 2,
    };
    (
        table.user[i],
        table.ts[i],
        rank,
        table.order[i],
        table.amount[i].to_bits(),
    )
}

/// Whether a user is known at `t`: registered before it, or active before it.
pub fn known_at(a: &UserAggregate, t: Timestamp) -> bool {
    a.has_activity() || (a.registered_at != UserAggregate::NONE && a.registered_at < t)
}

/// What counts as "still here" in the label window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChurnDefinition {
    /// Churned = no order in the window (default).
    NoOrder,
    /// Churned = no event of any kind in the window.
    NoActivity,
}

/// Per user: did anything that counts (per `def`) happen in `[start, end)`?
pub fn active_in_window(
    table: &EventTable,
    start: Timestamp,
    end: Timestamp,
    def: ChurnDefinition,
) -> Vec<bool> {
    let mut active = vec![false; table.n_users()];
    for i in 0..table.len() {
        let ts = table.ts[i];
        if ts >= start
            && ts < end
            && (def == ChurnDefinition::NoActivity || table.kind[i] == EventKind::Order)
        {
            active[table.user[i] as usize] = true;
        }
    }
    active
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::event::{Event, DAY};

    fn table() -> EventTable {
        let mut t = EventTable::default();
        let a = t.intern("a");
        let b = t.intern("b");
        let e = |ts, kind| Event {
            ts,
            kind,
            amount: 10.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        };
        t.push(a, e(10 * DAY, EventKind::Order));
        t.push(a, e(20 * DAY, EventKind::View));
        t.push(b, e(25 * DAY, EventKind::Order));
        t
    }

    #[test]
    fn snapshots_see_only_events_strictly_before_their_time() {
        let t = table();
        let snaps = build_aggregates(&t, &[20 * DAY, 21 * DAY]);
        assert_eq!(
            snaps[0][0].views, 0,
            "an event at exactly t is not known at t"
        );
        assert_eq!(snaps[1][0].views, 1);
        assert!(!known_at(&snaps[1][1], 21 * DAY));
    }

    /// The aggregates one snapshot at a time, each event applied separately to each snapshot
    /// (what the sweep did before it shared work between snapshots).
    fn one_by_one(table: &EventTable, times: &[Timestamp]) -> Vec<Vec<UserAggregate>> {
        let mut idx: Vec<usize> = (0..table.len()).collect();
        if table.kind.contains(&EventKind::Refund) {
            idx.sort_by_key(|&i| apply_order(table, i));
        }
        times
            .iter()
            .map(|&t| {
                let mut aggs: Vec<UserAggregate> = table
                    .registered_at
                    .iter()
                    .map(|r| UserAggregate::with_registration(*r))
                    .collect();
                for &i in idx.iter().filter(|&&i| table.ts[i] < t) {
                    aggs[table.user[i] as usize].apply(&table.event(i));
                }
                aggs
            })
            .collect()
    }

    /// `table`'s rows in the order `perm` (users unchanged).
    fn permuted(table: &EventTable, perm: &[usize]) -> EventTable {
        let mut out = EventTable {
            user_ids: table.user_ids.clone(),
            index: table.index.clone(),
            registered_at: table.registered_at.clone(),
            columns: table.columns,
            ..EventTable::default()
        };
        for &i in perm {
            out.push(table.user[i], table.event(i));
        }
        out
    }

    /// Bit for bit: the serialised form holds every float's bits.
    fn bits(snaps: &[Vec<UserAggregate>]) -> Vec<Vec<u8>> {
        snaps
            .iter()
            .map(|s| postcard::to_stdvec(s).unwrap())
            .collect()
    }

    /// The shared sweep gives every snapshot exactly the aggregates (every float bit, the
    /// interests' eviction order, refund links) of applying its own events separately: with
    /// and without refunds, rows in file order (by user and time, as the generator writes
    /// them) and shuffled, times unsorted and repeated.
    #[test]
    fn sharing_work_between_snapshots_changes_no_bit_of_any_snapshot() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let end = 1_780_000_000 - 1_780_000_000 % DAY;
        let params = crate::generate::GenerateParams::new(end)
            .users(400)
            .days(150)
            .seed(11)
            .refunds(true)
            .check()
            .unwrap();
        let (with_refunds, _) = crate::generate::generate_table(&params);
        assert!(with_refunds.kind.contains(&EventKind::Refund));
        let keep: Vec<usize> = (0..with_refunds.len())
            .filter(|&i| with_refunds.kind[i] != EventKind::Refund)
            .collect();
        let no_refunds = permuted(&with_refunds, &keep);
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let times_sets = [
            vec![end - 60 * DAY, end - 30 * DAY, end + 1],
            vec![end - 30 * DAY, end + 1, end - 60 * DAY],
            vec![end - 45 * DAY, end - 45 * DAY, end - 10 * DAY],
            vec![end - 20 * DAY],
        ];
        for table in [&with_refunds, &no_refunds] {
            let mut perm: Vec<usize> = (0..table.len()).collect();
            perm.shuffle(&mut rng);
            let shuffled = permuted(table, &perm);
            for t in [table, &shuffled] {
                for times in &times_sets {
                    let got = build_aggregates(t, times);
                    let want = one_by_one(t, times);
                    assert_eq!(bits(&got), bits(&want), "times {times:?}");
                    assert!(got[0].iter().any(|a| !a.interests.is_empty()));
                }
            }
        }
    }

    #[test]
    fn windows_respect_the_churn_definition() {
        let t = table();
        assert_eq!(
            active_in_window(&t, 15 * DAY, 30 * DAY, ChurnDefinition::NoOrder),
            vec![false, true]
        );
        assert_eq!(
            active_in_window(&t, 15 * DAY, 30 * DAY, ChurnDefinition::NoActivity),
            vec![true, true]
        );
    }
}
