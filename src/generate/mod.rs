//! A seeded synthetic live-commerce platform for demos, tests and benchmarks.
//!
//! # Layout
//!
//! - [`persona`] — the seven latent personas (ground truth) and the behaviour each draws from.
//! - `world`: the shared calendar (weekdays, platform sale days), live rooms and their categories.
//! - this module: [`GenerateParams`] → [`GenerateParams::check`] → [`ValidParams`], and
//!   [`generate`], which simulates users one at a time and hands each, with its events, to a sink.
//! - [`writer`] — the streaming CSV and Parquet writers of the events and users tables (the only
//!   file I/O here; it uses [`crate::io`]'s atomic file and write errors).
//!
//! The simulation is pure code. Memory is constant in the number of users: only the current
//! user's events are held.
//!
//! # The simulation
//!
//! Each user draws a persona, a registration time, and log-normal multipliers (activity,
//! interaction, propensity to buy, spend, watch time, churn hazard) so personas overlap but stay
//! distinct. Then, day by day through the history, the user may stop for good (a daily hazard that
//! is higher for low activity, low spend and declining users, and grows for `drifting_away`), and
//! otherwise opens a Poisson number of live-room sessions. A session is a `view` with a watch
//! time, then Poisson counts of comments, likes, shares, gifts and orders (log-normal values), and
//! perhaps a follow. Weekends and platform sale days (the 11th and 18th of each month, and the
//! 6.18, 11.11 and 12.12 festivals) pull users in; bargain hunters shop in bursts.
//!
//! Every RNG is seeded: the world from the seed, each user from `(seed, user index)`, so output is
//! identical run to run and any user can be regenerated on its own.

pub mod persona;
mod world;
pub mod writer;

pub use persona::{Persona, UnknownPersona};
pub use world::{civil_from_days, weekday};

use crate::features::{hash_str, ColumnsPresent, Event, EventKind, EventTable, Timestamp, DAY};
use persona::{persona_for, spec, Registration, Spec};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use world::World;

/// Product categories of the live rooms, indexed by [`GeneratedEvent::category`].
pub const CATEGORIES: [&str; 10] = [
    "beauty",
    "fashion",
    "food",
    "home",
    "electronics",
    "baby",
    "jewelry",
    "sports",
    "pets",
    "books",
];

/// Largest history accepted (ten years): the per-user day loop is linear in it.
pub(crate) const MAX_DAYS: u32 = 3650;

/// Largest population accepted; user ids stay readable and the run stays in hours, not days.
pub(crate) const MAX_USERS: u64 = 100_000_000;

/// How far before the history long-standing users may have registered.
const PRE_HISTORY: i64 = 365 * DAY;

/// Invalid generation parameters, one variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("users must be at least 1")]
    NoUsers,
    #[error("users must be at most {max}, got {got}")]
    TooManyUsers { got: u64, max: u64 },
    #[error("days must be at least 1")]
    NoDays,
    #[error("days must be at most {max}, got {got}")]
    TooManyDays { got: u32, max: u32 },
    #[error(
        "end {end} (seconds since 1970) is out of range: the history and the year of registrations \
         before it must lie between 1970-01-01 and 9999-12-31"
    )]
    EndOutOfRange { end: Timestamp },
}

/// What to generate. Check it with [`GenerateParams::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateParams {
    /// Number of users (rows of the users table).
    pub users: u64,
    /// Length of the history in days; events fall in `[end - days, end)`.
    pub days: u32,
    /// Seeds every RNG: same seed, same output.
    pub seed: u64,
    /// Exclusive end of the history.
    pub end: Timestamp,
    /// Emit refunds of orders at the persona's rate ([`persona::refund_rate`]). Off in
    /// [`GenerateParams::new`] so data sets pinned by tests stay as they were; `tiering generate`
    /// and the quickstart turn it on. Refunds draw from their own RNG stream: with or without
    /// them, every other event is the same.
    pub refunds: bool,
    /// Give events channels ([`persona::channel_mix`]) and users a favourite category
    /// ([`persona::category_preference`]), written as a `channel` column. Off in
    /// [`GenerateParams::new`] so pinned data sets stay; draws from its own RNG stream, after
    /// the events are made: with it off, the output is what it was.
    pub channels: bool,
}

impl GenerateParams {
    /// The defaults (10,000 users, 180 days, seed 42) for a history ending at `end`.
    pub fn new(end: Timestamp) -> Self {
        GenerateParams {
            users: 10_000,
            days: 180,
            seed: 42,
            end,
            refunds: false,
            channels: false,
        }
    }

    pub fn channels(mut self, channels: bool) -> Self {
        self.channels = channels;
        self
    }

    pub fn refunds(mut self, refunds: bool) -> Self {
        self.refunds = refunds;
        self
    }

    pub fn users(mut self, users: u64) -> Self {
        self.users = users;
        self
    }

    pub fn days(mut self, days: u32) -> Self {
        self.days = days;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn check(&self) -> Result<ValidParams, GenerateError> {
        if self.users == 0 {
            return Err(GenerateError::NoUsers);
        }
        if self.users > MAX_USERS {
            return Err(GenerateError::TooManyUsers {
                got: self.users,
                max: MAX_USERS,
            });
        }
        if self.days == 0 {
            return Err(GenerateError::NoDays);
        }
        if self.days > MAX_DAYS {
            return Err(GenerateError::TooManyDays {
                got: self.days,
                max: MAX_DAYS,
            });
        }
        // 9999-12-31T23:59:59Z, the last second RFC 3339 can write with four year digits.
        const LAST: Timestamp = 253_402_300_799;
        let start = self.end - i64::from(self.days) * DAY;
        if start - PRE_HISTORY < 0 || self.end > LAST {
            return Err(GenerateError::EndOutOfRange { end: self.end });
        }
        Ok(ValidParams {
            inner: *self,
            start,
        })
    }
}

/// Checked [`GenerateParams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidParams {
    inner: GenerateParams,
    start: Timestamp,
}

impl ValidParams {
    pub fn users(&self) -> u64 {
        self.inner.users
    }
    pub fn days(&self) -> u32 {
        self.inner.days
    }
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }
    /// Exclusive end of the history.
    pub fn end(&self) -> Timestamp {
        self.inner.end
    }
    /// Inclusive start of the history, `end - days`.
    pub fn start(&self) -> Timestamp {
        self.start
    }
    /// Whether refunds are generated.
    pub fn refunds(&self) -> bool {
        self.inner.refunds
    }
    /// Whether channels and favourite categories are generated.
    pub fn channels(&self) -> bool {
        self.inner.channels
    }
}

/// One generated user (a row of the users table, plus ground truth for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedUser {
    /// 0-based index; the id is [`user_id`]`(index)`.
    pub index: u64,
    pub persona: Persona,
    pub registered_at: Timestamp,
    /// When the user stopped for good, if they did within the history. Ground truth only: it is
    /// not written out (a model must infer it).
    pub churned_at: Option<Timestamp>,
}

impl GeneratedUser {
    pub fn user_id(&self) -> String {
        user_id(self.index)
    }
}

/// The id of the user with 0-based `index`: `u0000001` for index 0.
pub fn user_id(index: u64) -> String {
    format!("u{:07}", index + 1)
}

/// The id of order number `n` (1-based) of the user `user_id`: `u0000001-o0003`.
pub fn order_id(user_id: &str, n: u32) -> String {
    format!("{user_id}-o{n:04}")
}

/// The id of a room: `room_0042`.
pub fn room_id(room: u32) -> String {
    format!("room_{room:04}")
}

/// One generated event. Compact (32 bytes) because a user's events are buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedEvent {
    pub ts: Timestamp,
    pub kind: EventKind,
    /// Order value in cents (> 0) for orders, money returned (> 0) for refunds, 0 otherwise.
    pub amount_cents: u32,
    /// The user's order number (1, 2, ...) for orders, and for refunds linked to an order; 0 for
    /// other events and unlinked refunds. Written as `order_id` [`order_id`]`(user, n)`.
    pub order: u32,
    /// Seconds watched (> 0) for views, 0 otherwise.
    pub watch_seconds: u32,
    /// Room index, see [`room_id`].
    pub room: u32,
    /// Index into [`CATEGORIES`].
    pub category: u8,
    /// A [`crate::features::Channel`] code; 0 (none) unless channels are generated.
    pub channel: u8,
}

impl GeneratedEvent {
    /// Order value for orders, money returned for refunds.
    pub fn amount(&self) -> Option<f64> {
        matches!(self.kind, EventKind::Order | EventKind::Refund)
            .then(|| f64::from(self.amount_cents) / 100.0)
    }

    /// The `order_id` hash the readers compute for this event of `user_id`, 0 without one.
    pub fn order_hash(&self, user_id: &str) -> u32 {
        if self.order == 0 {
            0
        } else {
            hash_str(&order_id(user_id, self.order))
        }
    }

    /// Seconds watched, for views only.
    pub fn watch(&self) -> Option<u32> {
        (self.kind == EventKind::View).then_some(self.watch_seconds)
    }

    pub(crate) fn category_name(&self) -> &'static str {
        CATEGORIES[usize::from(self.category)]
    }

    /// The event as the feature code sees it (room and category hashed as the readers do).
    pub fn to_event(&self) -> Event {
        Event {
            ts: self.ts,
            kind: self.kind,
            amount: self.amount().unwrap_or(0.0),
            watch_seconds: self.watch().unwrap_or(0),
            room: hash_str(&room_id(self.room)),
            category: hash_str(self.category_name()),
            order: 0,
            channel: self.channel,
        }
    }

    /// [`GeneratedEvent::to_event`] with the `order_id` hash of `user_id`'s order.
    pub fn to_event_of(&self, user_id: &str) -> Event {
        Event {
            order: self.order_hash(user_id),
            ..self.to_event()
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    pub users: u64,
    pub events: u64,
    pub orders: u64,
    pub refunds: u64,
    /// Users per persona, indexed by [`Persona::index`].
    pub persona_users: [u64; 7],
    /// Users who stopped for good within the history.
    pub churned: u64,
}

impl GenerateSummary {
    /// How many personas occur at all.
    pub fn personas(&self) -> usize {
        self.persona_users.iter().filter(|n| **n > 0).count()
    }
}

/// Simulate every user in index order, handing each with its events (sorted by time) to `sink`.
/// Stops at the first error the sink returns.
pub fn generate<E>(
    params: &ValidParams,
    mut sink: impl FnMut(&GeneratedUser, &[GeneratedEvent]) -> Result<(), E>,
) -> Result<GenerateSummary, E> {
    let world = World::new(
        params,
        &mut Xoshiro256PlusPlus::seed_from_u64(mix(params.seed(), u64::MAX)),
    );
    let mut summary = GenerateSummary::default();
    let mut events = Vec::with_capacity(1024);
    for index in 0..params.users() {
        events.clear();
        let user = simulate(&world, params.seed(), index, &mut events);
        if params.refunds() {
            refunds(&world, params.seed(), index, user.persona, &mut events);
        }
        if params.channels() {
            channels(&world, params.seed(), index, user.persona, &mut events);
        }
        events.sort_by_key(|e| e.ts);
        summary.users += 1;
        summary.events += events.len() as u64;
        summary.orders += events.iter().filter(|e| e.kind == EventKind::Order).count() as u64;
        summary.refunds += events
            .iter()
            .filter(|e| e.kind == EventKind::Refund)
            .count() as u64;
        summary.persona_users[user.persona.index()] += 1;
        summary.churned += u64::from(user.churned_at.is_some());
        sink(&user, &events)?;
    }
    Ok(summary)
}

/// Generate into an in-memory [`EventTable`] (users in index order, registration filled in),
/// for tests and benchmarks. Holds everything in memory: keep `users` small.
pub fn generate_table(params: &ValidParams) -> (EventTable, Vec<GeneratedUser>) {
    let mut table = EventTable::default();
    let mut users = Vec::with_capacity(params.users() as usize);
    let mut room_hash: Vec<u32> = Vec::new();
    let category_hash: Vec<u32> = CATEGORIES.iter().map(|c| hash_str(c)).collect();
    let result: Result<GenerateSummary, std::convert::Infallible> =
        generate(params, |user, events| {
            let id = user.user_id();
            let u = table.intern(&id);
            table.registered_at[u as usize] = Some(user.registered_at);
            for e in events {
                let r = e.room as usize;
                if r >= room_hash.len() {
                    room_hash.extend((room_hash.len()..=r).map(|i| hash_str(&room_id(i as u32))));
                }
                table.push(
                    u,
                    Event {
                        ts: e.ts,
                        kind: e.kind,
                        amount: e.amount().unwrap_or(0.0),
                        watch_seconds: e.watch().unwrap_or(0),
                        room: room_hash[r],
                        category: category_hash[usize::from(e.category)],
                        order: e.order_hash(&id),
                        channel: e.channel,
                    },
                );
            }
            users.push(*user);
            Ok(())
        });
    let _ = result;
    table.columns = ColumnsPresent {
        watch_seconds: true,
        room_id: true,
        category: true,
        order_id: params.refunds(),
        users_table: true,
        channel: params.channels(),
    };
    (table, users)
}

/// SplitMix64 finaliser over two words: decorrelates the per-user seeds.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `exp(sigma * N(0, 1))`: a log-normal multiplier with median 1.
fn lognormal(rng: &mut Xoshiro256PlusPlus, sigma: f64) -> f64 {
    let z: f64 = rng.sample(StandardNormal);
    (sigma * z).exp()
}

/// A Poisson distribution sampled by inversion: one uniform per draw, and the `exp` paid once
/// when the mean is set (means here are small and mostly fixed per user). Large means use the
/// normal approximation.
#[derive(Debug, Clone, Copy)]
struct Pois {
    lambda: f64,
    /// `exp(-lambda)`, the probability of zero.
    p0: f64,
}

impl Pois {
    fn new(lambda: f64) -> Pois {
        let lambda = if lambda.is_finite() {
            lambda.max(0.0)
        } else {
            0.0
        };
        Pois {
            lambda,
            p0: (-lambda).exp(),
        }
    }

    /// The same distribution with mean `lambda`, reusing the `exp` when the mean is unchanged.
    fn with_mean(self, lambda: f64) -> Pois {
        if lambda == self.lambda {
            self
        } else {
            Pois::new(lambda)
        }
    }

    fn sample(&self, rng: &mut Xoshiro256PlusPlus) -> u32 {
        let lambda = self.lambda;
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            let z: f64 = rng.sample(StandardNormal);
            return (lambda + lambda.sqrt() * z).round().max(0.0) as u32;
        }
        let u: f64 = rng.gen();
        let mut p = self.p0;
        let mut cum = p;
        let mut k = 0u32;
        while u > cum && k < 200 {
            k += 1;
            p *= lambda / f64::from(k);
            cum += p;
        }
        k
    }
}

/// A uniform time in `[lo, hi)`, or `lo` when the range is empty.
fn uniform_time(rng: &mut Xoshiro256PlusPlus, lo: Timestamp, hi: Timestamp) -> Timestamp {
    if hi > lo {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// Per-user draws that stay fixed over the history.
struct Traits {
    rate: f64,
    engagement: f64,
    buy: f64,
    spend: f64,
    watch: f64,
    /// Daily hazard before the persona's time shape.
    hazard: f64,
    loyal: [u32; 8],
    n_loyal: usize,
    /// Per-session counts of comments, likes, shares and gifts.
    interactions: [(EventKind, Pois); 4],
}

impl Traits {
    /// The user's fixed draws, in this order: activity, engagement, propensity to buy, spend,
    /// watch time, hazard noise, then the loyal rooms.
    fn draw(world: &World, s: &Spec, rng: &mut Xoshiro256PlusPlus) -> Traits {
        let rate = lognormal(rng, s.rate_sigma);
        let engagement = lognormal(rng, 0.4);
        let buy = lognormal(rng, 0.4);
        let spend = lognormal(rng, 0.3);
        let watch = lognormal(rng, 0.35);
        let noise = lognormal(rng, 0.5);
        // Engaged, frequent, high-spend users stay; the rest leave sooner.
        let hazard = s.hazard
            * rate.powf(-0.8)
            * buy.powf(-0.4)
            * spend.powf(-0.3)
            * engagement.powf(-0.3)
            * noise;
        let n_loyal = rng.gen_range(s.loyal_rooms.0..=s.loyal_rooms.1).clamp(1, 8) as usize;
        let mut loyal = [0u32; 8];
        for r in loyal.iter_mut().take(n_loyal) {
            *r = world.sample_room(rng);
        }
        Traits {
            rate,
            engagement,
            buy,
            spend,
            watch,
            hazard,
            loyal,
            n_loyal,
            interactions: [
                (EventKind::Comment, Pois::new(s.comments * engagement)),
                (EventKind::Like, Pois::new(s.likes * engagement)),
                (EventKind::Share, Pois::new(s.shares * engagement)),
                (EventKind::Gift, Pois::new(s.gifts * engagement * spend)),
            ],
        }
    }
}

fn simulate(world: &World, seed: u64, index: u64, out: &mut Vec<GeneratedEvent>) -> GeneratedUser {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, index));
    let persona = persona_for(rng.gen());
    let s = spec(persona);
    let (start, end) = (world.start, world.end);
    let span = i64::from(world.days) * DAY;

    let (lo, hi) = match s.registration {
        Registration::LongStanding => (start - PRE_HISTORY, end - (60 * DAY).min(span / 3)),
        Registration::Early => (start - PRE_HISTORY, start + span / 4),
        Registration::Recent => (end - (40 * DAY).min(span), end - 3600.min(span / 2)),
    };
    let registered_at = uniform_time(&mut rng, lo, hi);

    let t = Traits::draw(world, s, &mut rng);

    // Persona-specific shape over time.
    let active_from = registered_at.max(start);
    let decline_start = start + (rng.gen::<f64>() * 0.3 * span as f64) as i64;
    let decline_tau = (span as f64 * rng.gen_range(0.3..0.8)).max(DAY as f64);
    let dormant_at = active_from + (rng.gen_range(0.05..0.45) * span as f64) as i64;

    let mut churned_at = None;
    let mut in_burst = false;
    let mut session_count = Pois::new(0.0);
    let mut order_count = Pois::new(0.0);
    let mut orders_left = if persona == Persona::PotentialNew {
        2u32
    } else {
        u32::MAX
    };
    let first = active_from.div_euclid(DAY);
    let last = (end - 1).div_euclid(DAY);
    for day in first..=last {
        let k = (day - world.first_day) as usize;
        let day_start = day * DAY;
        let mid = day_start + DAY / 2;
        let (shape, hazard) = match persona {
            Persona::DriftingAway => {
                let f = if mid <= decline_start {
                    1.0
                } else {
                    (-((mid - decline_start) as f64) / decline_tau).exp()
                };
                (f, t.hazard * (1.0 + 2.0 * (1.0 - f)))
            }
            Persona::Dormant => {
                if mid < dormant_at {
                    (1.0, t.hazard)
                } else {
                    (0.03, t.hazard + 0.01)
                }
            }
            Persona::PotentialNew => {
                let age = (mid - registered_at).max(0) as f64 / DAY as f64;
                (0.5 + 1.5 * (-age / 15.0).exp(), t.hazard)
            }
            _ => (1.0, t.hazard),
        };
        if rng.gen::<f64>() < hazard {
            churned_at = Some(day_start.max(active_from));
            break;
        }
        if s.burst_start > 0.0 {
            in_burst = if in_burst {
                rng.gen::<f64>() >= 0.35
            } else {
                rng.gen::<f64>() < s.burst_start
            };
        }
        let burst = if in_burst { s.burst_mult } else { 1.0 };
        let lambda = s.sessions_per_day * t.rate * shape * burst * world.session_mult(k, s);
        session_count = session_count.with_mean(lambda);
        let sessions = session_count.sample(&mut rng);
        if sessions == 0 {
            continue;
        }
        let order_boost = (1.0 + 0.6 * world.day_sale[k]) * if in_burst { 1.3 } else { 1.0 };
        order_count = order_count.with_mean(s.orders * t.buy * order_boost);
        for _ in 0..sessions {
            let ts0 = day_start + world.sample_time_of_day(&mut rng);
            if ts0 < active_from || ts0 >= end {
                continue;
            }
            session(
                world,
                s,
                &t,
                &mut rng,
                ts0,
                order_count,
                &mut orders_left,
                out,
            );
        }
    }
    GeneratedUser {
        index,
        persona,
        registered_at,
        churned_at,
    }
}

/// One visit to a live room starting at `ts0`: a view, then interactions and orders during it.
#[allow(clippy::too_many_arguments)]
fn session(
    world: &World,
    s: &persona::Spec,
    t: &Traits,
    rng: &mut Xoshiro256PlusPlus,
    ts0: Timestamp,
    order_count: Pois,
    orders_left: &mut u32,
    out: &mut Vec<GeneratedEvent>,
) {
    let end = world.end;
    let loyal_visit = rng.gen::<f64>() < s.loyalty;
    let room = if loyal_visit {
        t.loyal[rng.gen_range(0..t.n_loyal)]
    } else {
        world.sample_room(rng)
    };
    let category = world.room_category[room as usize];
    let watch = (s.watch_median_s * t.watch * lognormal(rng, 0.8)).clamp(5.0, 14_400.0) as u32;
    let base = GeneratedEvent {
        ts: ts0,
        kind: EventKind::View,
        amount_cents: 0,
        order: 0,
        watch_seconds: 0,
        room,
        category,
        channel: 0,
    };
    out.push(GeneratedEvent {
        watch_seconds: watch,
        ..base
    });

    let during = |rng: &mut Xoshiro256PlusPlus| ts0 + rng.gen_range(0..=i64::from(watch));
    let push = |rng: &mut Xoshiro256PlusPlus, kind: EventKind, out: &mut Vec<GeneratedEvent>| {
        let ts = during(rng);
        if ts < end {
            out.push(GeneratedEvent { ts, kind, ..base });
        }
    };
    for (kind, mean) in t.interactions {
        for _ in 0..mean.sample(rng) {
            push(rng, kind, out);
        }
    }
    if !loyal_visit && rng.gen::<f64>() < s.follow * t.engagement.sqrt() {
        push(rng, EventKind::Follow, out);
    }

    let orders = order_count.sample(rng).min(*orders_left);
    *orders_left -= orders;
    for _ in 0..orders {
        let ts = during(rng);
        let z: f64 = rng.sample(StandardNormal);
        let value = (s.order_median * t.spend * (s.order_sigma * z).exp()).clamp(1.0, 100_000.0);
        // Mostly the room's category; sometimes something else the host is selling.
        let category = if rng.gen::<f64>() < 0.85 {
            category
        } else {
            rng.gen_range(0..CATEGORIES.len() as u8)
        };
        if ts < end {
            out.push(GeneratedEvent {
                ts,
                kind: EventKind::Order,
                amount_cents: (value * 100.0).round() as u32,
                category,
                ..base
            });
        }
    }
}

/// Channels and a favourite category for one user's events (opt-in, see
/// [`GenerateParams::channels`]), from its own RNG stream: the user draws a favourite category
/// from the persona's preferences; each session (a view and what follows it in the same room)
/// moves, with the persona's share, to a room of that category; every event
/// draws a channel from the persona's mix, and a refund takes its order's channel, room and
/// category.
fn channels(world: &World, seed: u64, index: u64, persona: Persona, out: &mut [GeneratedEvent]) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed ^ 0xC4A7_7E15_0000_0002, index));
    let (weights, share) = persona::category_preference(persona);
    let total: f64 = weights.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    let mut favourite = 0u8;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            favourite = i as u8;
            break;
        }
        u -= w;
    }
    let fav_room = world.first_room_of(favourite);
    let channel_p = persona::channel_mix(persona);
    let mut moved = false;
    // An order's channel, room and category, for its refunds (appended after every order).
    let mut orders: std::collections::HashMap<u32, (u8, u32, u8)> =
        std::collections::HashMap::new();
    for e in out.iter_mut() {
        if e.kind == EventKind::Refund {
            if let Some(&(c, room, cat)) = orders.get(&e.order) {
                (e.channel, e.room, e.category) = (c, room, cat);
                continue;
            }
        }
        if e.kind == EventKind::View {
            moved = rng.gen::<f64>() < share;
        }
        if let (true, Some(room)) = (moved && e.kind != EventKind::Refund, fav_room) {
            e.room = room;
            e.category = favourite;
        }
        let mut v = rng.gen::<f64>();
        let mut code = 1u8;
        for (i, p) in channel_p.iter().enumerate() {
            if v < *p {
                code = i as u8 + 1;
                break;
            }
            v -= p;
        }
        e.channel = code;
        if e.kind == EventKind::Order && e.order != 0 {
            orders.insert(e.order, (code, e.room, e.category));
        }
    }
}

/// Share of refunds that carry no `order_id` (a platform that does not link them).
pub const REFUND_UNLINKED: f64 = 0.05;
/// Share of refunds that come late: 91 to 150 days after the order, past the 90-day link
/// window, so they reach training as orphans (their order id no longer links).
pub const REFUND_LATE: f64 = 0.04;
/// Share of refunds larger than their order (1.05 to 1.25 times: shipping, compensation).
pub const REFUND_OVER: f64 = 0.03;
/// Share of refunds that return part of the order (20% to 90% of it); the rest return it all.
pub const REFUND_PARTIAL: f64 = 0.2;

/// Give each order of the user, with the persona's probability ([`persona::refund_rate`]), one
/// refund: 1 to 30 days after the order (or late, see [`REFUND_LATE`]), of the same room and
/// category. Refunds falling after the history are not emitted. Numbers the orders
/// (`order` = 1, 2, ... in the order they were generated). Draws from its own RNG stream
/// (`(seed ^ salt, user index)`), so the other events do not depend on whether refunds are on.
fn refunds(world: &World, seed: u64, index: u64, persona: Persona, out: &mut Vec<GeneratedEvent>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed ^ 0x5EF0_4D5E_ED00_0001, index));
    let rate = persona::refund_rate(persona);
    let mut serial = 0u32;
    let n = out.len();
    for i in 0..n {
        if out[i].kind != EventKind::Order {
            continue;
        }
        serial += 1;
        out[i].order = serial;
        let order = out[i];
        if rng.gen::<f64>() >= rate {
            continue;
        }
        let late = rng.gen::<f64>() < REFUND_LATE;
        let delay = if late {
            rng.gen_range(91 * DAY..150 * DAY)
        } else {
            rng.gen_range(DAY..30 * DAY)
        };
        let u: f64 = rng.gen();
        let share = if u < REFUND_OVER {
            rng.gen_range(1.05..1.25)
        } else if u < REFUND_OVER + REFUND_PARTIAL {
            rng.gen_range(0.2..0.9)
        } else {
            1.0
        };
        let linked = rng.gen::<f64>() >= REFUND_UNLINKED;
        let ts = order.ts + delay;
        if ts >= world.end {
            continue;
        }
        out.push(GeneratedEvent {
            ts,
            kind: EventKind::Refund,
            amount_cents: ((f64::from(order.amount_cents) * share).round() as u32).max(1),
            watch_seconds: 0,
            order: if linked { serial } else { 0 },
            ..order
        });
    }
}

#[cfg(test)]
mod tests;
