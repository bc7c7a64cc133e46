//! Per-user interest profiles: which categories — and which live rooms — a user watches,
//! interacts with and buys, by a time-decayed score, in bounded structures kept inside
//! [`super::UserAggregate`]: [`Interests`] (top categories) and [`Rooms`] (top rooms), both a
//! [`TopK`] (one structure, generic over the number of slots; the key is the 32-bit
//! `hash_str` of the category or of the room id).
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
//! A user keeps at most [`INTEREST_SLOTS`] (3) categories and [`ROOM_SLOTS`] (2) rooms, 8
//! bytes a slot (the key's `hash_str` and its `f32` level), inline: 40 bytes a user (the
//! memory budget of issue 14, see [`super::aggregate`]). Rules, for `N` slots:
//! - a key already held adds to its own slot; a new one takes an empty slot. So for a user
//!   with at most `N` distinct keys the structure is an exact map: the same events give the
//!   same slots in any order (up to float rounding of the sums, below);
//! - a new key arriving when every slot is taken replaces the slot with the lowest level
//!   (ties: the smallest hash) and *inherits* its score (weighted Space-Saving). Then, with `W`
//!   the user's total score over all keys and `m` the lowest level held:
//!   every held key's score is at least its true score and at most its true score plus
//!   `2^m`, and `2^m <= W / N`; every key whose true score exceeds `2^m` is held. Which keys
//!   are held can then depend on arrival order (within that bound): the training sweep
//!   applies a user's events in file order (time order with refunds present), the server in
//!   arrival order. The property test `the_readme_bound_holds_for_categories_and_rooms` checks
//!   exactly this statement (the README's, in user terms) for both structures.
//!
//! Ranking ([`Interests::ranked`]): by level, highest first, ties by the smaller hash. Levels are
//! sums of floats: the same events summed in another order can differ in the last bits (`f32`:
//! about 2^-15 of a level near 300, i.e. 2e-5 of a score), so two categories with the same
//! history are a tie only up to that rounding.
//!
//! Category names are interned: the aggregate holds the 32-bit `hash_str` the readers already
//! compute; [`CategoryNames`] maps hashes back to names (collected by the readers, kept in the
//! bundle, learned by the server from `RecordEvents`); room ids likewise, in a second
//! dictionary ([`room_display_name`]).

use super::event::{Event, EventKind, Timestamp, DAY, DEFAULT_EARLIEST_EVENT};
use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

/// Categories held per user.
pub const INTEREST_SLOTS: usize = 3;
/// Rooms held per user.
pub const ROOM_SLOTS: usize = 2;
/// Categories held per user by the previous layout (aggregate format 3, read and cut to
/// [`INTEREST_SLOTS`]).
pub const INTEREST_SLOTS_V3: usize = 4;
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
        EventKind::View => 1.0 + f64::from(e.watch_seconds.min(WATCH_CAP)) / 600.0,
        EventKind::Gift => 3.0,
        EventKind::Comment | EventKind::Share | EventKind::Follow => 2.0,
        EventKind::Like => 1.0,
        EventKind::Refund => 0.0,
    }
}

/// Watch seconds beyond which a view weighs no more ([`weight`]).
const WATCH_CAP: u32 = 7200;

/// `log2(weight(e))`, by table: the weight depends only on the kind and the capped watch
/// seconds, so each of its values' `log2` is computed once per process (by the same `log2`
/// call as `weight(e).log2()`, so the value is the same bit for bit). `None` for a weight of 0
/// (a refund).
fn weight_log2(e: &Event) -> Option<f64> {
    // Views by capped watch seconds, then the other kinds by `EventKind` index.
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let views = (0..=WATCH_CAP).map(|s| {
            let e = Event {
                watch_seconds: s,
                ..probe(EventKind::View)
            };
            std::hint::black_box(weight(&e)).log2()
        });
        let kinds = EventKind::ALL
            .into_iter()
            .map(|k| std::hint::black_box(weight(&probe(k))).log2());
        views.chain(kinds).collect()
    });
    let at = match e.kind {
        EventKind::View => e.watch_seconds.min(WATCH_CAP) as usize,
        EventKind::Refund => return None,
        k => WATCH_CAP as usize + 1 + k as usize,
    };
    table.get(at).copied()
}

/// An event of kind `k` for the weight table (only the kind and watch seconds matter).
fn probe(kind: EventKind) -> Event {
    Event {
        ts: T_REF,
        kind,
        amount: 0.0,
        watch_seconds: 0,
        room: 0,
        category: 0,
        order: 0,
        channel: 0,
    }
}

/// The level an event adds to its category's (and its room's) score, `log2(weight) +
/// time_level(ts)`; `None` when it adds nothing (weight 0). What [`TopK::record`] adds, for
/// callers that add one event to several structures.
#[inline]
pub fn event_level(e: &Event) -> Option<f64> {
    weight_log2(e).map(|w| w + time_level(e.ts))
}

/// `log2` of the decay factor of time `t`: `(t - T_REF) / half_life`.
pub fn time_level(t: Timestamp) -> f64 {
    (t - T_REF) as f64 / (HALF_LIFE_DAYS * DAY) as f64
}

/// `log2(2^a + 2^b)`, exact for equal inputs and for an empty side: the formula the stored
/// levels are defined by (`hi + log2(1 + 2^(lo - hi))`, rounded to `f32` when stored).
fn log2_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (1.0 + (lo - hi).exp2()).log2()
}

/// `log2_add(a, b) as f32`, bit for bit, mostly without `exp2`/`log2` (two libm calls per
/// structure and event were a quarter of the features stage at 1M users).
///
/// With `hi >= lo` and `d = lo - hi` (the same `f64` the formula computes),
/// `c(d) = log2(1 + 2^d)` comes from [`log1p2`] (a cubic Taylor step from the nearest 1/64
/// node, error below 1e-11 for `d` in `[-48, 0]`). The formula's own `c` is within about
/// 1e-15 of the true one (`exp2`, the sum and `log2` each round once), and both sides round
/// `hi + c` once, so the two `f64` results differ by less than `DELTA = 1e-10 + |y| 2^-48`
/// (which also covers the roundings of `y -/+ DELTA`). When `y - DELTA` and `y + DELTA` round
/// to the same `f32`, so does every value between them (rounding is monotonic), the formula's
/// result among them: that `f32` is returned. Otherwise (`y` within `DELTA` of a rounding
/// boundary, about 1 in 10^5 at today's levels), or outside the table, the formula runs. The
/// tests `the_table_gives_log2_of_one_plus_two_to_the_d_within_its_stated_error` and
/// `the_fast_level_sum_is_the_formulas_f32_bit_for_bit_even_next_to_rounding_boundaries`
/// check both halves of the argument.
#[inline]
fn log2_add_f32(a: f64, b: f64) -> f32 {
    log2_add_f32_fast(a, b).unwrap_or_else(|| log2_add(a, b) as f32)
}

/// The table half of [`log2_add_f32`]: `None` when the formula must run.
#[inline]
fn log2_add_f32_fast(a: f64, b: f64) -> Option<f32> {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return Some(hi as f32);
    }
    let y = hi + log1p2(lo - hi)?;
    // 2^-48 |y|: four times an ulp of `y` (each `f64` rounding is at most half of one).
    let delta = 1e-10 + y.abs() * (f64::EPSILON * 16.0);
    let (below, above) = ((y - delta) as f32, (y + delta) as f32);
    (below == above).then_some(below)
}

/// Table nodes per unit of `d` in [`log1p2`].
const LOG1P2_STEPS: f64 = 64.0;
/// The lowest `d` the table covers (below it the formula runs: 48 half-lives, 4 years).
const LOG1P2_MIN: f64 = -48.0;

/// The Taylor coefficients of `c(d) = log2(1 + 2^d)` at `d0 = -k / 64`, `k = 0..=48 * 64`:
/// `c(d0)`, `c'(d0) = s`, `c''(d0) / 2 = ln2 s (1 - s) / 2` and
/// `c'''(d0) / 6 = ln2^2 s (1 - s) (1 - 2 s) / 6`, with `s = 2^d0 / (1 + 2^d0)`.
fn log1p2_table() -> &'static [[f64; 4]] {
    static TABLE: OnceLock<Vec<[f64; 4]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let ln2 = std::f64::consts::LN_2;
        (0..=(-LOG1P2_MIN * LOG1P2_STEPS) as i32)
            .map(|k| {
                let d0 = -f64::from(k) / LOG1P2_STEPS;
                let p = d0.exp2();
                let s = p / (1.0 + p);
                let t = s * (1.0 - s);
                [
                    (1.0 + p).log2(),
                    s,
                    ln2 * t / 2.0,
                    ln2 * ln2 * t * (1.0 - 2.0 * s) / 6.0,
                ]
            })
            .collect()
    })
}

/// `log2(1 + 2^d)` within 1e-11 for `d` in `[-48, 0]` (for [`log2_add_f32`]);
/// `None` elsewhere (and for NaN). The remainder of the cubic step is at most
/// `max|c''''| x^4 / 24` with `|x| <= 1/128` and
/// `c'''' = ln2^3 s (1 - s) (1 - 6 s + 6 s^2)`, at most `ln2^3 / 8` in size: 6.5e-12; the
/// nodes and the evaluation add a few 1e-16.
#[inline]
fn log1p2(d: f64) -> Option<f64> {
    if !(LOG1P2_MIN..=0.0).contains(&d) {
        return None;
    }
    let k = (-d * LOG1P2_STEPS).round();
    // `d0 = -k / 64` is a multiple of 1/64 and `d` one of its own ulp (at most 1/64) within
    // 1/128 of it: `x` is exact.
    let x = d + k / LOG1P2_STEPS;
    let [c0, c1, c2, c3] = *log1p2_table().get(k as usize)?;
    Some(c0 + x * (c1 + x * (c2 + x * c3)))
}

/// The bounded top-`N` structure of one user over one kind of key (module docs): the key's
/// 32-bit hash and its level per slot, `ids[i] == 0` an empty slot. `8 * N` bytes, inline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK<const N: usize> {
    ids: [u32; N],
    levels: [f32; N],
}

/// A user's top categories.
pub type Interests = TopK<INTEREST_SLOTS>;
/// A user's top rooms (live-room events only).
pub type Rooms = TopK<ROOM_SLOTS>;

impl<const N: usize> Default for TopK<N> {
    fn default() -> Self {
        TopK {
            ids: [0; N],
            levels: [EMPTY; N],
        }
    }
}

impl<const N: usize> TopK<N> {
    /// Folds in one event under `key` (its category or its room; a zero key, i.e. none, and
    /// refunds change nothing).
    pub fn record(&mut self, key: u32, e: &Event) {
        if key == 0 {
            return;
        }
        if let Some(level) = event_level(e) {
            self.add(key, level);
        }
    }

    /// [`TopK::record`] with the event's level already computed ([`event_level`]).
    #[inline]
    pub fn record_level(&mut self, key: u32, level: f64) {
        if key != 0 {
            self.add(key, level);
        }
    }

    /// Adds `2^level` to `key`'s score.
    pub fn add(&mut self, key: u32, level: f64) {
        if N == 0 {
            return;
        }
        let at = self
            .ids
            .iter()
            .position(|&id| id == key)
            .or_else(|| self.ids.iter().position(|&id| id == 0))
            .unwrap_or_else(|| self.lowest());
        self.ids[at] = key;
        self.levels[at] = log2_add_f32(f64::from(self.levels[at]), level);
    }

    /// The slot to give up: lowest level, ties to the smallest hash.
    fn lowest(&self) -> usize {
        (0..N)
            .min_by(|&a, &b| {
                self.levels[a]
                    .total_cmp(&self.levels[b])
                    .then(self.ids[a].cmp(&self.ids[b]))
            })
            .unwrap_or(0)
    }

    /// Held keys as `(hash, level)`, highest level first, ties by the smaller hash.
    pub fn ranked(&self) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = self.used().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// The occupied slots, in slot order.
    fn used(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.ids
            .iter()
            .zip(self.levels)
            .filter(|(&id, _)| id != 0)
            .map(|(&id, l)| (id, l))
    }

    /// The top key's hash, if any.
    pub fn top(&self) -> Option<u32> {
        self.ranked().first().map(|&(id, _)| id)
    }

    /// Whether `key` is held.
    pub fn holds(&self, key: u32) -> bool {
        key != 0 && self.ids.contains(&key)
    }

    /// Number of keys held.
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

    /// The same keys in a structure of `M` slots: the `M` highest when `M < N` (what a
    /// format-3 aggregate's four categories become in three slots), in ranking order.
    pub fn resized<const M: usize>(&self) -> TopK<M> {
        let mut out = TopK::<M>::default();
        for (i, (id, level)) in self.ranked().into_iter().take(M).enumerate() {
            out.ids[i] = id;
            out.levels[i] = level;
        }
        out
    }
}

/// Serialised as the occupied slots only, `(hash, level)` in slot order: one byte for a user
/// without keys.
impl<const N: usize> serde::Serialize for TopK<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let used: Vec<(u32, f32)> = self.used().collect();
        serde::Serialize::serialize(&used, s)
    }
}

impl<'de, const N: usize> serde::Deserialize<'de> for TopK<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let used = <Vec<(u32, f32)> as serde::Deserialize>::deserialize(d)?;
        if used.len() > N {
            return Err(serde::de::Error::invalid_length(
                used.len(),
                &"at most as many keys as the structure's slots",
            ));
        }
        let mut out = TopK::<N>::default();
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

/// The process's dictionaries: what the served bundle named plus what `RecordEvents` brought.
fn global() -> &'static RwLock<CategoryNames> {
    static NAMES: OnceLock<RwLock<CategoryNames>> = OnceLock::new();
    NAMES.get_or_init(|| RwLock::new(CategoryNames::default()))
}

/// The room ids (the same type: a room id by its `hash_str`).
fn rooms_global() -> &'static RwLock<CategoryNames> {
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

/// Adds room ids to the process's room dictionary.
pub fn learn_room_names(names: &CategoryNames) {
    rooms_global()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .merge(names);
}

fn learn_list_in(dict: &RwLock<CategoryNames>, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let mut g = dict.write().unwrap_or_else(PoisonError::into_inner);
    for n in names {
        g.note(super::hash::hash_str(n), n);
    }
}

/// Adds names (as written in the events; hashed here) to the process's dictionary.
pub fn learn_list(names: &[String]) {
    learn_list_in(global(), names);
}

/// Adds room ids (as written in the events; hashed here) to the process's room dictionary.
pub fn learn_room_list(names: &[String]) {
    learn_list_in(rooms_global(), names);
}

fn learn_name_in(dict: &RwLock<CategoryNames>, hash: u32, name: &str) {
    if hash == 0 {
        return;
    }
    if dict
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(hash)
        .is_some()
    {
        return;
    }
    dict.write()
        .unwrap_or_else(PoisonError::into_inner)
        .note(hash, name);
}

/// Adds one name to the process's dictionary (a read lock when it is known already).
pub fn learn_name(hash: u32, name: &str) {
    learn_name_in(global(), hash, name);
}

/// Adds one room id to the process's room dictionary (a read lock when it is known already).
pub fn learn_room_name(hash: u32, name: &str) {
    learn_name_in(rooms_global(), hash, name);
}

fn display_in(dict: &RwLock<CategoryNames>, hash: u32) -> String {
    match dict
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(hash)
    {
        Some(n) => n.to_string(),
        None => format!("#{hash:08x}"),
    }
}

/// The name of a category hash in the process's dictionary, or `#` and its hash in hex.
pub fn display_name(hash: u32) -> String {
    display_in(global(), hash)
}

/// The id of a room hash in the process's room dictionary, or `#` and its hash in hex.
pub fn room_display_name(hash: u32) -> String {
    display_in(rooms_global(), hash)
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

    fn apply<const N: usize>(s: &mut TopK<N>, e: &Event) {
        s.record(e.category, e);
    }

    #[test]
    fn a_purchase_outweighs_a_view_and_an_older_event_weighs_less() {
        let t0 = 1_700_000_000;
        let mut i = Interests::default();
        apply(&mut i, &ev(t0, EventKind::View, 1));
        apply(&mut i, &ev(t0, EventKind::Order, 2));
        // One like two half-lives later: 1 vs 10 / 4 and 1 / 4 as of then.
        apply(
            &mut i,
            &ev(t0 + 2 * HALF_LIFE_DAYS * DAY, EventKind::Like, 3),
        );
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
        apply(&mut i, &ev(1_700_000_000, EventKind::Order, 77));
        let b = postcard::to_stdvec(&i).unwrap();
        assert!(b.len() <= 1 + 5 + 4, "{}", b.len());
        assert_eq!(postcard::from_bytes::<Interests>(&b).unwrap(), i);
        // More keys than slots is refused.
        let mut four = TopK::<INTEREST_SLOTS_V3>::default();
        (1..=4).for_each(|c| apply(&mut four, &ev(1_700_000_000, EventKind::Like, c)));
        let b = postcard::to_stdvec(&four).unwrap();
        assert!(postcard::from_bytes::<Interests>(&b).is_err());
    }

    /// What a format-3 aggregate's four categories become: the three highest, same levels.
    #[test]
    fn four_categories_of_the_previous_layout_keep_their_three_highest() {
        let t0 = 1_700_000_000;
        let mut four = TopK::<INTEREST_SLOTS_V3>::default();
        for (c, kind) in [
            (5, EventKind::Like),
            (6, EventKind::Order),
            (7, EventKind::Gift),
        ] {
            apply(&mut four, &ev(t0, kind, c));
        }
        apply(&mut four, &ev(t0, EventKind::Comment, 8));
        let three: Interests = four.resized();
        assert_eq!(three.ranked(), four.ranked()[..3].to_vec());
        assert_eq!(
            three.ranked().iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![6, 7, 8]
        );
    }

    /// Rooms: the same score over the event's room. As of `t`: room 10 with an order 60 days
    /// back (10 / 4 = 2.5), room 11 with a 10-minute view 30 days back (2 / 2 = 1), rooms 12
    /// and 13 one like each now (1 each). Two slots, in time order: 10, 11, then 12 replaces 11
    /// (the lower) inheriting 1 (2 in all), then 13 replaces 12 (2 < 2.5) inheriting 2 (3).
    /// Rooms 12 and 13 alone are an exact tie, broken by the smaller hash.
    #[test]
    fn rooms_rank_by_the_decayed_score_with_ties_to_the_smaller_hash() {
        let t = 1_700_000_000;
        let room = |ts: Timestamp, kind: EventKind, watch: u32, room: u32| Event {
            watch_seconds: watch,
            room,
            ..ev(ts, kind, 99)
        };
        let evs = [
            room(t - 60 * DAY, EventKind::Order, 0, 10),
            room(t - 30 * DAY, EventKind::View, 600, 11),
            room(t, EventKind::Like, 0, 12),
            room(t, EventKind::Like, 0, 13),
            // Without a room: nothing.
            room(t, EventKind::Order, 0, 0),
        ];
        let mut r = Rooms::default();
        evs.iter().for_each(|e| r.record(e.room, e));
        let got: Vec<(u32, f64)> = r
            .ranked()
            .into_iter()
            .map(|(id, l)| (id, Rooms::score_at(l, t)))
            .collect();
        assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), vec![13, 10]);
        assert!((got[0].1 - 3.0).abs() < 1e-4, "{got:?}");
        assert!((got[1].1 - 2.5).abs() < 1e-4, "{got:?}");
        // Two rooms only: exact and the same in any order, the tie by the smaller hash.
        let mut a = Rooms::default();
        let mut b = Rooms::default();
        evs[2..].iter().for_each(|e| a.record(e.room, e));
        evs[2..].iter().rev().for_each(|e| b.record(e.room, e));
        assert_eq!(a.ranked(), b.ranked());
        assert_eq!(
            a.ranked().iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![12, 13]
        );
        assert_eq!(a.ranked()[0].1, a.ranked()[1].1);
    }

    /// The weight table gives `weight(e).log2()` bit for bit, for every kind and every watch
    /// time up to past the cap (and the largest).
    #[test]
    fn the_level_table_is_the_log2_of_the_weight_bit_for_bit() {
        let seconds = (0..=WATCH_CAP + 100).chain([u32::MAX - 1, u32::MAX]);
        for s in seconds {
            for kind in EventKind::ALL {
                let e = Event {
                    watch_seconds: s,
                    ..ev(1_700_000_123, kind, 5)
                };
                let w = weight(&e);
                match event_level(&e) {
                    None => assert!(w <= 0.0, "{kind:?}"),
                    Some(l) => {
                        let want = w.log2() + time_level(e.ts);
                        assert_eq!(l.to_bits(), want.to_bits(), "{kind:?} {s}");
                    }
                }
            }
        }
    }

    /// The stated error bound of [`log1p2`].
    const LOG1P2_ERROR: f64 = 1e-11;

    /// The table's `log2(1 + 2^d)` against the formula's on a grid 16 times finer than the
    /// nodes (so every node and the points half-way between them) and at seeded random points
    /// of `[-48, 0]`: within the stated error. Outside the range there is no table value.
    #[test]
    fn the_table_gives_log2_of_one_plus_two_to_the_d_within_its_stated_error() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(14);
        let grid = (0..=48 * 64 * 16).map(|i| -f64::from(i) / (64.0 * 16.0));
        let random: Vec<f64> = (0..200_000)
            .map(|_| rng.gen_range(LOG1P2_MIN..=0.0))
            .collect();
        let mut worst = 0.0f64;
        for d in grid.chain(random) {
            let got = log1p2(d).unwrap();
            let want = (1.0 + d.exp2()).log2();
            worst = worst.max((got - want).abs());
        }
        assert!(worst <= LOG1P2_ERROR, "worst error {worst:e}");
        for d in [LOG1P2_MIN - 1e-9, 1e-300, 0.5, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(log1p2(d), None, "{d}");
        }
    }

    /// The fast level sum gives `log2_add(a, b) as f32` bit for bit: at seeded random levels
    /// and differences (both argument orders, stored `f32` levels and `f64` event levels,
    /// beyond the table's range, an empty side), and at sums placed within a few ulps of an
    /// `f32` rounding boundary, where the table alone cannot decide: there the formula runs
    /// (the test checks that such cases occur, and that they stay rare at random).
    #[test]
    fn the_fast_level_sum_is_the_formulas_f32_bit_for_bit_even_next_to_rounding_boundaries() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(16);
        let check = |a: f64, b: f64| {
            let want = log2_add(a, b) as f32;
            assert_eq!(log2_add_f32(a, b).to_bits(), want.to_bits(), "{a} {b}");
            let fast = log2_add_f32_fast(a, b);
            assert!(fast.is_none() || fast == Some(want), "{a} {b}");
            fast.is_none()
        };
        let mut formula = 0;
        let n = 300_000;
        for i in 0..n {
            let hi: f64 = rng.gen_range(-20.0..450.0);
            let hi = if i % 2 == 0 { f64::from(hi as f32) } else { hi };
            let d: f64 = rng.gen_range(-60.0..=0.0);
            let ran = check(hi, hi + d);
            check(hi + d, hi);
            formula += usize::from(ran && d >= LOG1P2_MIN);
        }
        // In the table's range the formula runs about once in 10^5.
        assert!(formula * 1000 < n, "the formula ran {formula} times in {n}");
        assert_eq!(
            check(f64::NEG_INFINITY, 7.25),
            check(7.25, f64::NEG_INFINITY)
        );
        check(300.0, 300.0);
        // Sums at an `f32` rounding boundary (the midpoint of two neighbouring `f32`), give or
        // take a few `f64` ulps, and up to 3e-10 off it (past the margin of 1e-10).
        let (mut fast, mut slow) = (0, 0);
        for _ in 0..10_000 {
            let v = rng.gen_range(1.0f32..450.0);
            let next = f32::from_bits(v.to_bits() + 1);
            let mid = (f64::from(v) + f64::from(next)) / 2.0;
            let d: f64 = rng.gen_range(-30.0..=0.0);
            let hi = mid - (1.0 + d.exp2()).log2();
            let ulps = (-3i64..=3).map(|k| f64::from_bits(hi.to_bits().wrapping_add_signed(k)));
            let off = (-6..=6).map(|j| hi + f64::from(j) * 5e-11);
            for hi in ulps.chain(off) {
                if check(hi, hi + d) {
                    slow += 1;
                } else {
                    fast += 1;
                }
            }
        }
        assert!(
            slow > 10_000 && fast > 10_000,
            "formula {slow}, table {fast}"
        );
    }

    /// Events over `n` keys: (key 1..=n, day offset, kind index).
    fn stream() -> impl Strategy<Value = Vec<(u32, i64, usize)>> {
        (1u32..=12).prop_flat_map(|n| prop::collection::vec((1..=n, 0i64..200, 0usize..7), 1..60))
    }

    /// The statement of the README ("Interests and channels"), for a structure of `N` slots,
    /// with scores as of `t0` (before every event: the bound holds as of any time, since every
    /// score decays by the same factor):
    /// 1. a user with at most `N` keys: the scores shown are the true scores, and any arrival
    ///    order (here: reversed, and rotated) shows the same keys;
    /// 2. more keys: `N` are shown; each shown score is at least the key's true score and at
    ///    most its true score plus the lowest score shown; the lowest score shown is at most
    ///    the user's total over all keys divided by `N`; every key whose true score is above
    ///    the lowest score shown is shown.
    fn check_bound<const N: usize>(evs: &[Event]) -> Result<(), TestCaseError> {
        let t0 = evs.iter().map(|e| e.ts).min().unwrap_or(0);
        let mut truth: HashMap<u32, f64> = HashMap::new();
        for e in evs {
            *truth.entry(e.category).or_default() +=
                weight(e) * (time_level(e.ts) - time_level(t0)).exp2();
        }
        let total: f64 = truth.values().sum();
        let mut s = TopK::<N>::default();
        evs.iter().for_each(|e| apply(&mut s, e));
        let held: HashMap<u32, f64> = s
            .ranked()
            .into_iter()
            .map(|(id, l)| (id, TopK::<N>::score_at(l, t0)))
            .collect();
        let min_held = held.values().copied().fold(f64::INFINITY, f64::min);
        // f32 levels near 290: half an ulp is 1e-5 of a score per rounding, 60 events at most.
        let tol = 1e-3;
        prop_assert_eq!(held.len(), truth.len().min(N));
        if truth.len() <= N {
            for (id, est) in &held {
                let t = truth[id];
                prop_assert!((*est - t).abs() <= t * tol, "not exact: {est} vs {t}");
            }
            let keys = |x: &TopK<N>| {
                let mut k: Vec<u32> = x.ranked().iter().map(|p| p.0).collect();
                k.sort_unstable();
                k
            };
            let mut r = TopK::<N>::default();
            evs.iter().rev().for_each(|e| apply(&mut r, e));
            let mut rot = TopK::<N>::default();
            let mid = evs.len() / 2;
            evs[mid..]
                .iter()
                .chain(&evs[..mid])
                .for_each(|e| apply(&mut rot, e));
            prop_assert_eq!(keys(&s), keys(&r));
            prop_assert_eq!(keys(&s), keys(&rot));
            return Ok(());
        }
        prop_assert!(min_held <= total / N as f64 * (1.0 + tol));
        for (id, est) in &held {
            let t = truth[id];
            prop_assert!(*est >= t * (1.0 - tol), "under: {est} < {t}");
            prop_assert!(
                *est <= (t + min_held) * (1.0 + tol),
                "over: {est} > {t} + {min_held}"
            );
        }
        for (id, t) in &truth {
            if *t > min_held * (1.0 + tol) {
                prop_assert!(held.contains_key(id), "{id} with {t} > {min_held} not held");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, rng_algorithm: prop::test_runner::RngAlgorithm::ChaCha, ..ProptestConfig::default() })]

        /// The README's statement of the bound, for categories (3 slots) and rooms (2 slots).
        #[test]
        fn the_readme_bound_holds_for_categories_and_rooms(events in stream()) {
            let t0 = 1_700_000_000;
            let evs: Vec<Event> = events
                .iter()
                .map(|&(c, d, k)| ev(t0 + d * DAY, EventKind::ALL[k], c))
                .collect();
            check_bound::<INTEREST_SLOTS>(&evs)?;
            check_bound::<ROOM_SLOTS>(&evs)?;
        }
    }
}
