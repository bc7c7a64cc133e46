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
/// Users are split into contiguous ranges, one per core; each core sweeps the whole table in
/// order and applies only its own users' events, so every user still sees its events in file
/// order and the result does not depend on the number of cores.
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
    owned
        .into_par_iter()
        .enumerate()
        .for_each(|(k, mut parts)| {
            let lo = k * per;
            let hi = lo + per;
            for i in 0..table.len() {
                let u = table.user[i] as usize;
                let ts = table.ts[i];
                if u < lo || u >= hi || ts >= latest {
                    continue;
                }
                let e = table.event(i);
                for (part, &t) in parts.iter_mut().zip(times) {
                    if ts < t {
                        part[u - lo].apply(&e);
                    }
                }
            }
        });
    out
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
