//! Per-user interest profiles: which categories a user watches, interacts with and buys, by a
//! time-decayed score, in a bounded structure kept inside [`super::UserAggregate`].
//!
//! # The score
//!
//! Every event with a category adds its weight ([`weight`]) to that category; purchases weigh
//! most:
//!
//! | kind | weight |
//! | --- | --- |
//! | order | 10 |
//! | view | 1 + min(watch_seconds, 7200) / 600 (one point per 10 minutes watched, capped at 2 h) |
//! | gift | 3 |
//! | comment, share, follow | 2 |
//! | like | 1 |
//! | refund | 0 (money returned is not interest) |
//!
//! and weights decay with a half-life of [`HALF_LIFE_DAYS`] days: as of time `t`, a category's
//! score is `sum(w * 2^-((t - ts) / half_life))` over its events before `t`. To keep this
//! independent of arrival order (and of the time it is read), the structure stores *forward
//! decayed* scores relative to the fixed reference time [`T_REF`] (2000-01-01):
//! `S = sum(w * 2^((ts - T_REF) / half_life))`, in the log domain as `level = log2(S)` (an
//! `f32`: `S` reaches 2^320 in 2026, beyond `f32` but not its logarithm; valid until 2084). The
//! score as of `t` is `2^(level - (t - T_REF) / half_life)` ([`Interests::score_at`]). Ranking by
//! `level` is ranking by the score as of any time, so the ranking does not move while a user is
//! quiet.
//!
//! # The bound
//!
//! A user keeps at most [`INTEREST_SLOTS`] categories (8 bytes each: the category's
//! `hash_str` and its level). Rules:
//! - a category already held adds to its own slot; a new one takes an empty slot. So for a user
//!   with at most `INTEREST_SLOTS` distinct categories the structure is an exact map: the same
//!   events give the same slots in any order (up to float rounding of the sums, below);
//! - a new category arriving when every slot is taken replaces the slot with the lowest level
//!   (ties: the smallest hash) and *inherits* its score (weighted Space-Saving). Then, with `W`
//!   the user's total score over all categories and `m` the lowest level held:
//!   every held category's score is at least its true score and at most its true score plus
//!   `2^m`, and `2^m <= W / INTEREST_SLOTS`; every category whose true score exceeds `2^m` is
//!   held. Which categories are held can then depend on arrival order (within that bound): the
//!   training sweep applies a user's events in file order (time order with refunds present),
//!   the server in arrival order. The property test `space_saving_bound_holds` checks the bound.
//!
//! Ranking ([`Interests::ranked`]): by level, highest first, ties by the smaller hash. Levels are
//! sums of floats: the same events summed in another order can differ in the last bits (`f32`:
//! about 2^-15 of a level near 300, i.e. 2e-5 of a score), so two categories with the same
//! history are a tie only up to that rounding.
//!
//! Category names are interned: the aggregate holds the 32-bit `hash_str` the readers already
//! compute; [`CategoryNames`] maps hashes back to names (collected by the readers, kept in the
//! bundle, learned by the server from `RecordEvents`).

use super::event::{Event, EventKind, Timestamp, DAY, DEFAULT_EARLIEST_EVENT};
use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

/// Categories held per user.
pub const INTEREST_SLOTS: usize = 4;
/// Half-life of an event's weight in a category's score.
pub const HALF_LIFE_DAYS: i64 = 30;
/// The fixed reference time of the forward-decayed scores (2000-01-01T00:00:00Z).
pub const T_REF: Timestamp = DEFAULT_EARLIEST_EVENT;
/// An empty slot's level.
const EMPTY: f32 = f32::NEG_INFINITY;

/// An event's weight in its category's score (module docs).
pub fn weight(e: &Event) -> f64 {
    match e.kind {
        EventKind::Order => 10.0,
        EventKind::View => 1.0 + f64::from(e.watch_seconds.min(7200)) / 600.0,
        EventKind::Gift => 3.0,
        EventKind::Comment | EventKind::Share | EventKind::Follow => 2.0,
        EventKind::Like => 1.0,
        EventKind::Refund => 0.0,
    }
}

/// `log2` of the decay factor of time `t`: `(t - T_REF) / half_life`.
pub fn time_level(t: Timestamp) -> f64 {
    (t - T_REF) as f64 / (HALF_LIFE_DAYS * DAY) as f64
}

/// `log2(2^a + 2^b)`, exact for equal inputs and for an empty side.
fn log2_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (1.0 + (lo - hi).exp2()).log2()
}

/// The bounded interest structure of one user (module docs). `ids[i] == 0` is an empty slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interests {
    ids: [u32; INTEREST_SLOTS],
    levels: [f32; INTEREST_SLOTS],
}

impl Default for Interests {
    fn default() -> Self {
        Interests {
            ids: [0; INTEREST_SLOTS],
            levels: [EMPTY; INTEREST_SLOTS],
        }
    }
}

impl Interests {
    /// Folds one event in (events without a category, and refunds, change nothing).
    pub fn apply(&mut self, e: &Event) {
        let w = weight(e);
        if e.category == 0 || w <= 0.0 {
            return;
        }
        self.add(e.category, w.log2() + time_level(e.ts));
    }

    /// Adds `2^level` to `category`'s score.
    pub fn add(&mut self, category: u32, level: f64) {
        let at = self
            .ids
            .iter()
            .position(|&id| id == category)
            .or_else(|| self.ids.iter().position(|&id| id == 0))
            .unwrap_or_else(|| self.lowest());
        self.ids[at] = category;
        self.levels[at] = log2_add(f64::from(self.levels[at]), level) as f32;
    }

    /// The slot to give up: lowest level, ties to the smallest hash.
    fn lowest(&self) -> usize {
        (0..INTEREST_SLOTS)
            .min_by(|&a, &b| {
                self.levels[a]
                    .total_cmp(&self.levels[b])
                    .then(self.ids[a].cmp(&self.ids[b]))
            })
            .unwrap_or(0)
    }

    /// Held categories as `(hash, level)`, highest level first, ties by the smaller hash.
    pub fn ranked(&self) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = self
            .ids
            .iter()
            .zip(self.levels)
            .filter(|(&id, _)| id != 0)
            .map(|(&id, l)| (id, l))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// The top category's hash, if any.
    pub fn top(&self) -> Option<u32> {
        self.ranked().first().map(|&(id, _)| id)
    }

    /// Whether `category` is held.
    pub fn holds(&self, category: u32) -> bool {
        category != 0 && self.ids.contains(&category)
    }

    /// Number of categories held.
    pub fn len(&self) -> usize {
        self.ids.iter().filter(|&&id| id != 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A level's score as of `t` (module docs).
    pub fn score_at(level: f32, t: Timestamp) -> f64 {
        (f64::from(level) - time_level(t)).exp2()
    }
}

/// Serialised as the occupied slots only, `(hash, level)` in slot order: one byte for a user
/// without categories.
impl serde::Serialize for Interests {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let used: Vec<(u32, f32)> = self
            .ids
            .iter()
            .zip(self.levels)
            .filter(|(&id, _)| id != 0)
            .map(|(&id, l)| (id, l))
            .collect();
        serde::Serialize::serialize(&used, s)
    }
}

impl<'de> serde::Deserialize<'de> for Interests {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let used = <Vec<(u32, f32)> as serde::Deserialize>::deserialize(d)?;
        if used.len() > INTEREST_SLOTS {
            return Err(serde::de::Error::invalid_length(
                used.len(),
                &"at most INTEREST_SLOTS interests",
            ));
        }
        let mut out = Interests::default();
        for (i, (id, level)) in used.into_iter().enumerate() {
            if id == 0 || out.ids.contains(&id) {
                return Err(serde::de::Error::custom("an empty or repeated interest id"));
            }
            out.ids[i] = id;
            out.levels[i] = level;
        }
        Ok(out)
    }
}

/// Category names by `hash_str`, so that answers can name the hashes the aggregates hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CategoryNames {
    names: HashMap<u32, String>,
}

/// Names kept at most (a data set with more distinct categories names the first ones seen;
/// the rest show as `#` and their hash, see [`display_name`]).
pub const MAX_CATEGORY_NAMES: usize = 1 << 16;

impl CategoryNames {
    /// Records `name` (already trimmed as the readers hash it) under `hash`.
    pub fn note(&mut self, hash: u32, name: &str) {
        if hash != 0 && self.names.len() < MAX_CATEGORY_NAMES && !self.names.contains_key(&hash) {
            self.names.insert(hash, name.to_string());
        }
    }

    pub fn get(&self, hash: u32) -> Option<&str> {
        self.names.get(&hash).map(String::as_str)
    }

    pub fn merge(&mut self, other: &CategoryNames) {
        for (&h, n) in &other.names {
            self.note(h, n);
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `(hash, name)` sorted by name (the bundle's list).
    pub fn sorted(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self.names.iter().map(|(&h, n)| (h, n.clone())).collect();
        v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// The process's dictionary: what the served bundle named plus what `RecordEvents` brought.
fn global() -> &'static RwLock<CategoryNames> {
    static NAMES: OnceLock<RwLock<CategoryNames>> = OnceLock::new();
    NAMES.get_or_init(|| RwLock::new(CategoryNames::default()))
}

/// Adds names to the process's dictionary.
pub fn learn_names(names: &CategoryNames) {
    global()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .merge(names);
}

/// Adds names (as written in the events; hashed here) to the process's dictionary.
pub fn learn_list(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let mut g = global().write().unwrap_or_else(PoisonError::into_inner);
    for n in names {
        g.note(super::hash::hash_str(n), n);
    }
}

/// Adds one name to the process's dictionary (a read lock when it is known already).
pub fn learn_name(hash: u32, name: &str) {
    if hash == 0 {
        return;
    }
    if global()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(hash)
        .is_some()
    {
        return;
    }
    global()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .note(hash, name);
}

/// The name of a category hash in the process's dictionary, or `#` and its hash in hex.
pub fn display_name(hash: u32) -> String {
    match global()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(hash)
    {
        Some(n) => n.to_string(),
        None => format!("#{hash:08x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(ts: Timestamp, kind: EventKind, category: u32) -> Event {
        Event {
            ts,
            kind,
            amount: 0.0,
            watch_seconds: 0,
            room: 0,
            category,
            order: 0,
            channel: 0,
        }
    }

    #[test]
    fn a_purchase_outweighs_a_view_and_an_older_event_weighs_less() {
        let t0 = 1_700_000_000;
        let mut i = Interests::default();
        i.apply(&ev(t0, EventKind::View, 1));
        i.apply(&ev(t0, EventKind::Order, 2));
        // One like two half-lives later: 1 vs 10 / 4 and 1 / 4 as of then.
        i.apply(&ev(t0 + 2 * HALF_LIFE_DAYS * DAY, EventKind::Like, 3));
        let r = i.ranked();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 3, 1]);
        let t = t0 + 2 * HALF_LIFE_DAYS * DAY;
        assert!((Interests::score_at(r[0].1, t) - 2.5).abs() < 1e-4);
        assert!((Interests::score_at(r[2].1, t) - 0.25).abs() < 1e-4);
    }

    #[test]
    fn serialisation_keeps_only_the_occupied_slots() {
        let mut i = Interests::default();
        assert_eq!(postcard::to_stdvec(&i).unwrap().len(), 1);
        i.apply(&ev(1_700_000_000, EventKind::Order, 77));
        let b = postcard::to_stdvec(&i).unwrap();
        assert!(b.len() <= 1 + 5 + 4, "{}", b.len());
        assert_eq!(postcard::from_bytes::<Interests>(&b).unwrap(), i);
    }

    /// Events over `n_cat` categories: (category 1..=n_cat, day offset, kind index).
    fn stream() -> impl Strategy<Value = Vec<(u32, i64, usize)>> {
        (1u32..=12).prop_flat_map(|n| prop::collection::vec((1..=n, 0i64..200, 0usize..7), 1..60))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, rng_algorithm: prop::test_runner::RngAlgorithm::ChaCha, ..ProptestConfig::default() })]

        /// The documented bound: every held score is between the true score and the true score
        /// plus the lowest held score, which is at most W / INTEREST_SLOTS; every category above
        /// the lowest held score is held; with at most INTEREST_SLOTS categories the result is
        /// exact and the same in reverse order.
        #[test]
        fn space_saving_bound_holds(events in stream()) {
            let t0 = 1_700_000_000;
            let evs: Vec<Event> = events
                .iter()
                .map(|&(c, d, k)| ev(t0 + d * DAY, EventKind::ALL[k], c))
                .collect();
            let mut truth: HashMap<u32, f64> = HashMap::new();
            for e in &evs {
                *truth.entry(e.category).or_default() += weight(e) * (time_level(e.ts) - time_level(t0)).exp2();
            }
            let total: f64 = truth.values().sum();
            let mut s = Interests::default();
            evs.iter().for_each(|e| s.apply(e));
            let held: HashMap<u32, f64> = s
                .ranked()
                .into_iter()
                .map(|(id, l)| (id, Interests::score_at(l, t0)))
                .collect();
            let min_held = held.values().copied().fold(f64::INFINITY, f64::min);
            // f32 levels near 290: half an ulp is 1e-5 of a score per rounding, 60 events at most.
            let tol = 1e-3;
            prop_assert!(held.len() == truth.len().min(INTEREST_SLOTS));
            if held.len() == INTEREST_SLOTS {
                prop_assert!(min_held <= total / INTEREST_SLOTS as f64 * (1.0 + tol));
            }
            for (id, est) in &held {
                let t = truth[id];
                prop_assert!(*est >= t * (1.0 - tol), "under: {est} < {t}");
                if truth.len() > INTEREST_SLOTS {
                    prop_assert!(*est <= (t + min_held) * (1.0 + tol), "over: {est} > {t} + {min_held}");
                } else {
                    prop_assert!((*est - t).abs() <= t * tol, "not exact: {est} vs {t}");
                }
            }
            for (id, t) in &truth {
                if *t > min_held * (1.0 + tol) {
                    prop_assert!(held.contains_key(id), "{id} with {t} > {min_held} not held");
                }
            }
            if truth.len() <= INTEREST_SLOTS {
                let mut r = Interests::default();
                evs.iter().rev().for_each(|e| r.apply(e));
                let order = |x: &Interests| x.ranked().iter().map(|p| p.0).collect::<Vec<_>>();
                let mut a = order(&s);
                let mut b = order(&r);
                a.sort_unstable();
                b.sort_unstable();
                prop_assert_eq!(a, b);
            }
        }
    }
}
