//! The at-risk query, and the full scan that answers it by scoring every user.
//!
//! The server answers ListAtRiskUsers from the incrementally maintained ranking
//! ([`super::ranking`]); [`scan`] is the reference it must equal (a full rescan at one `as_of`),
//! kept for tests and for checking a ranking against the state.
//!
//! The state is visited through [`UserState::scan`], part by part (the embedded backend's shards,
//! in parallel on the rayon pool); each part keeps only its best `limit + 1` candidates after
//! the cursor (`select_nth_unstable`, linear time), so a page over a million users costs one
//! scoring pass and no sort of everyone. The page token ([`super::page_token`]) pins the as-of time and the model, and
//! carries the last (probability, user) returned; the next page continues strictly after it, so
//! pagination returns every matching user once, in order, as long as the model and the users'
//! events stay the same (a user whose events arrive mid-pagination may move).

use super::error::RequestError;
use super::page_token::{Order, VersionId};
use super::state::UserState;
use crate::features::{LifecycleStage, Timestamp};
use crate::model::{Score, Scorer};
use std::cmp::Ordering;

/// A validated ListAtRiskUsers request.
#[derive(Debug, Clone, PartialEq)]
pub struct AtRiskQuery {
    pub min_probability: f64,
    /// Allowed tier indices; `None`: all.
    pub tiers: Option<Vec<bool>>,
    /// Allowed lifecycle stages (indexed like `LifecycleStage::ALL`); `None`: all.
    pub stages: Option<[bool; LifecycleStage::ALL.len()]>,
    /// Allowed interest categories (`hash_str` of their names): the user's interests must hold
    /// one of them; `None`: all.
    pub categories: Option<Vec<u32>>,
    pub limit: usize,
    pub as_of: Timestamp,
    /// Continue strictly after this (probability, user id).
    pub after: Option<(f64, String)>,
    /// Identifies the filters, so a token cannot be replayed against other ones.
    pub filter_hash: u64,
    /// The ordering walked (`after` holds this ordering's value).
    pub order: Order,
    /// Leave out users whose lifecycle stage is `churned`.
    pub exclude_churned: bool,
    /// The ranking version a later page continues in (from its page token); `None`: a first
    /// page.
    pub pinned: Option<VersionId>,
}

/// True if `s` passes the query's filters (the probability floor, tiers, lifecycle stages,
/// `exclude_churned`).
pub fn matches(q: &AtRiskQuery, s: &Score) -> bool {
    if s.churn_probability < q.min_probability {
        return false;
    }
    if q.exclude_churned && s.lifecycle_stage == LifecycleStage::Churned {
        return false;
    }
    if let Some(t) = &q.tiers {
        if !t.get(usize::from(s.tier)).copied().unwrap_or(false) {
            return false;
        }
    }
    if let Some(st) = &q.stages {
        if !st[s.lifecycle_stage as usize] {
            return false;
        }
    }
    if let Some(c) = &q.categories {
        if !c.iter().any(|&c| s.interests.holds(c)) {
            return false;
        }
    }
    true
}

/// One page: users with their scores, best first, and whether more match after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub users: Vec<(String, Score)>,
    pub more: bool,
}

/// Highest value (of the query's ordering) first, then user id ascending.
fn rank(a: (f64, &str), b: (f64, &str)) -> Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

/// Keeps the best `k` of `v` (unordered).
fn keep_best<T>(v: &mut Vec<T>, k: usize, key: impl Fn(&T) -> (f64, &str)) {
    if v.len() > k {
        if k == 0 {
            v.clear();
            return;
        }
        v.select_nth_unstable_by(k - 1, |a, b| rank(key(a), key(b)));
        v.truncate(k);
    }
}

/// Scores every user as of `q.as_of` and returns the page. Blocking. Gives up with
/// DEADLINE_EXCEEDED when `should_stop` says so (checked before each part of the state: the
/// deadline passed, or the caller left).
pub fn scan(
    state: &impl UserState,
    scorer: &Scorer,
    q: &AtRiskQuery,
    should_stop: &(dyn Fn() -> bool + Sync),
) -> Result<Page, RequestError> {
    let want = q.limit.saturating_add(1);
    let per_part = state.scan(|users| {
        if should_stop() {
            return Err(RequestError::DeadlineExceeded);
        }
        Ok(best_of_part(users, scorer, q, want))
    })?;
    let mut all = Vec::new();
    for r in per_part {
        all.extend(r?);
    }
    let o = q.order;
    keep_best(&mut all, want, |(id, s)| (o.value(s), id.as_str()));
    all.sort_unstable_by(|a, b| rank((o.value(&a.1), &a.0), (o.value(&b.1), &b.0)));
    let more = all.len() > q.limit;
    all.truncate(q.limit);
    Ok(Page { users: all, more })
}

/// One part's best `want` users that match the query, after the cursor.
fn best_of_part(
    users: &mut dyn Iterator<Item = (&str, &crate::features::UserAggregate)>,
    scorer: &Scorer,
    q: &AtRiskQuery,
    want: usize,
) -> Vec<(String, Score)> {
    let after = q.after.as_ref().map(|(p, u)| (*p, u.as_str()));
    let mut cands: Vec<(&str, Score)> = Vec::new();
    for (id, agg) in users {
        let s = scorer.score(agg, q.as_of);
        if !matches(q, &s) {
            continue;
        }
        if let Some(after) = after {
            if rank((q.order.value(&s), id), after) != Ordering::Greater {
                continue;
            }
        }
        cands.push((id, s));
    }
    keep_best(&mut cands, want, |(id, s)| (q.order.value(s), id));
    cands
        .into_iter()
        .map(|(id, s)| (id.to_string(), s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_best_selects_the_top_by_probability_then_id() {
        let mut v = vec![(0.5, "b"), (0.9, "z"), (0.5, "a"), (0.1, "c")];
        keep_best(&mut v, 3, |x| *x);
        v.sort_by(|a, b| rank(*a, *b));
        assert_eq!(v, vec![(0.9, "z"), (0.5, "a"), (0.5, "b")]);
    }
}
