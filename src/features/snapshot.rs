//! Point-in-time sweeps over the events table.
//!
//! A snapshot at `t` sees events with `ts < t` only: this is the single place that rule is
//! enforced, and the leakage test exercises it.

use super::aggregate::UserAggregate;
use super::event::{EventKind, Timestamp};
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
pub fn build_aggregates(table: &EventTable, times: &[Timestamp]) -> Vec<Vec<UserAggregate>> {
    let base: Vec<UserAggregate> = table
        .registered_at
        .iter()
        .map(|r| UserAggregate::with_registration(*r))
        .collect();
    let mut out: Vec<Vec<UserAggregate>> = times.iter().map(|_| base.clone()).collect();
    drop(base);
    let n = table.n_users();
    let shards = rayon::current_num_threads().clamp(1, 64);
    let per = n.div_ceil(shards).max(1);
    // shard k owns users [k * per, (k + 1) * per) of every snapshot.
    let mut owned: Vec<Vec<&mut [UserAggregate]>> = (0..n.div_ceil(per))
        .map(|_| Vec::with_capacity(times.len()))
        .collect();
    for snap in &mut out {
        for (k, part) in snap.chunks_mut(per).enumerate() {
            owned[k].push(part);
        }
    }
    let latest = times.iter().copied().max().unwrap_or(Timestamp::MIN);
    // Refunds link to orders seen before them, so with refunds present each user's events are
    // applied in time order (orders before refunds at one instant), whatever the file order;
    // without refunds every aggregate commutes and file order is kept (no sort to pay for).
    let ordered = table.kind.contains(&EventKind::Refund);
    owned
        .into_par_iter()
        .enumerate()
        .for_each(|(k, mut parts)| {
            let lo = k * per;
            let hi = lo + per;
            let mine = (0..table.len()).filter(|&i| {
                let u = table.user[i] as usize;
                u >= lo && u < hi && table.ts[i] < latest
            });
            let mut apply = |i: usize| {
                let (u, ts, e) = (table.user[i] as usize, table.ts[i], table.event(i));
                for (part, &t) in parts.iter_mut().zip(times) {
                    if ts < t {
                        part[u - lo].apply(&e);
                    }
                }
            };
            if ordered {
                let mut idx: Vec<usize> = mine.collect();
                idx.sort_by_key(|&i| apply_order(table, i));
                idx.into_iter().for_each(&mut apply);
            } else {
                mine.for_each(&mut apply);
            }
        });
    out
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
