//! The latent personas of the synthetic platform and the behaviour each one draws from.
//!
//! A persona fixes the *medians* of a user's behaviour; every user then gets their own log-normal
//! multipliers (activity, interaction, spend, propensity to buy, churn hazard) so personas overlap
//! the way real segments do, while staying distinct on average.

use std::fmt;
use std::str::FromStr;

/// Ground-truth persona of a generated user, written to the users table so training can report
/// how well the learned tiers recover it (adjusted Rand index). Never a model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Persona {
    /// Frequent high-spend orders, long watch sessions, lots of interaction, few loyal rooms.
    CoreFans,
    /// Regular mid spend, moderate engagement.
    ActiveRegulars,
    /// Registered in the last ~45 days of the history: few events, 0-2 orders.
    PotentialNew,
    /// Many small orders in bursts (sale days), little interaction.
    BargainHunters,
    /// Many views and long watch time, almost no comments or orders.
    SilentOnlookers,
    /// Used to be active; activity decays over the history and the churn hazard grows.
    DriftingAway,
    /// Active early in (or before) the history, little or nothing since.
    Dormant,
}

impl Persona {
    /// Every persona, in the order of [`Persona::index`].
    pub const ALL: [Persona; 7] = [
        Persona::CoreFans,
        Persona::ActiveRegulars,
        Persona::PotentialNew,
        Persona::BargainHunters,
        Persona::SilentOnlookers,
        Persona::DriftingAway,
        Persona::Dormant,
    ];

    /// The id written to the users table.
    pub fn as_str(self) -> &'static str {
        match self {
            Persona::CoreFans => "core_fans",
            Persona::ActiveRegulars => "active_regulars",
            Persona::PotentialNew => "potential_new",
            Persona::BargainHunters => "bargain_hunters",
            Persona::SilentOnlookers => "silent_onlookers",
            Persona::DriftingAway => "drifting_away",
            Persona::Dormant => "dormant",
        }
    }

    /// Dense index, `Persona::ALL[p.index()] == p`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Target share of the population.
    pub fn target_share(self) -> f64 {
        spec(self).share
    }
}

impl fmt::Display for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the persona ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown persona {0:?}")]
pub struct UnknownPersona(pub String);

impl FromStr for Persona {
    type Err = UnknownPersona;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Persona::ALL
            .into_iter()
            .find(|p| p.as_str() == t)
            .ok_or_else(|| UnknownPersona(s.to_string()))
    }
}

/// When a persona's users registered, relative to the history `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Registration {
    /// Long-standing: from a year before the start until a while before the end.
    LongStanding,
    /// Registered before or early in the history (drifting away, dormant).
    Early,
    /// In the last ~45 days.
    Recent,
}

/// The medians of one persona's behaviour. Rates are per day or per live-room session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub share: f64,
    pub registration: Registration,
    /// Live-room sessions per day for the median user.
    pub sessions_per_day: f64,
    /// Log-normal sigma of the per-user activity multiplier (overlap between personas).
    pub rate_sigma: f64,
    /// Median seconds watched per session.
    pub watch_median_s: f64,
    /// Interactions per session (Poisson means) for the median user.
    pub comments: f64,
    pub likes: f64,
    pub shares: f64,
    pub gifts: f64,
    /// Chance of following a room visited outside the loyal set.
    pub follow: f64,
    /// Orders per session (Poisson mean) for the median user.
    pub orders: f64,
    /// Median order value and its log-normal sigma (heavy tail).
    pub order_median: f64,
    pub order_sigma: f64,
    /// How many rooms a user is loyal to (inclusive range) and how often they stay in them.
    pub loyal_rooms: (u32, u32),
    pub loyalty: f64,
    /// Baseline daily hazard of stopping for good, before the per-user behaviour multipliers.
    pub hazard: f64,
    /// Multiplier on session rate during bursts (flash-sale hunting) and the daily chance to
    /// start one; 1.0 / 0.0 for no bursts.
    pub burst_mult: f64,
    pub burst_start: f64,
    /// How strongly platform sale days pull this persona in (session multiplier).
    pub sale_pull: f64,
}

const SPECS: [Spec; 7] = [
    // core_fans
    Spec {
        share: 0.06,
        registration: Registration::LongStanding,
        sessions_per_day: 0.33,
        rate_sigma: 0.35,
        watch_median_s: 1500.0,
        comments: 0.7,
        likes: 0.8,
        shares: 0.2,
        gifts: 0.08,
        follow: 0.05,
        orders: 0.45,
        order_median: 180.0,
        order_sigma: 0.7,
        loyal_rooms: (2, 4),
        loyalty: 0.88,
        hazard: 0.0004,
        burst_mult: 1.0,
        burst_start: 0.0,
        sale_pull: 1.3,
    },
    // active_regulars
    Spec {
        share: 0.14,
        registration: Registration::LongStanding,
        sessions_per_day: 0.21,
        rate_sigma: 0.45,
        watch_median_s: 700.0,
        comments: 0.25,
        likes: 0.35,
        shares: 0.07,
        gifts: 0.02,
        follow: 0.04,
        orders: 0.45,
        order_median: 80.0,
        order_sigma: 0.6,
        loyal_rooms: (3, 6),
        loyalty: 0.6,
        hazard: 0.0008,
        burst_mult: 1.0,
        burst_start: 0.0,
        sale_pull: 1.4,
    },
    // potential_new
    Spec {
        share: 0.16,
        registration: Registration::Recent,
        sessions_per_day: 0.18,
        rate_sigma: 0.5,
        watch_median_s: 400.0,
        comments: 0.15,
        likes: 0.35,
        shares: 0.04,
        gifts: 0.0,
        follow: 0.1,
        orders: 0.1,
        order_median: 60.0,
        order_sigma: 0.7,
        loyal_rooms: (1, 3),
        loyalty: 0.3,
        hazard: 0.006,
        burst_mult: 1.0,
        burst_start: 0.0,
        sale_pull: 1.3,
    },
    // bargain_hunters
    Spec {
        share: 0.12,
        registration: Registration::LongStanding,
        sessions_per_day: 0.07,
        rate_sigma: 0.5,
        watch_median_s: 180.0,
        comments: 0.04,
        likes: 0.08,
        shares: 0.02,
        gifts: 0.0,
        follow: 0.02,
        orders: 1.3,
        order_median: 25.0,
        order_sigma: 0.5,
        loyal_rooms: (1, 3),
        loyalty: 0.3,
        hazard: 0.0012,
        burst_mult: 5.0,
        burst_start: 0.04,
        sale_pull: 4.0,
    },
    // silent_onlookers
    Spec {
        share: 0.22,
        registration: Registration::LongStanding,
        sessions_per_day: 0.18,
        rate_sigma: 0.5,
        watch_median_s: 1200.0,
        comments: 0.01,
        likes: 0.05,
        shares: 0.005,
        gifts: 0.0,
        follow: 0.02,
        orders: 0.22,
        order_median: 60.0,
        order_sigma: 0.6,
        loyal_rooms: (2, 5),
        loyalty: 0.5,
        hazard: 0.0006,
        burst_mult: 1.0,
        burst_start: 0.0,
        sale_pull: 1.2,
    },
    // drifting_away
    Spec {
        share: 0.14,
        registration: Registration::Early,
        sessions_per_day: 0.22,
        rate_sigma: 0.45,
        watch_median_s: 600.0,
        comments: 0.2,
        likes: 0.35,
        shares: 0.06,
        gifts: 0.01,
        follow: 0.03,
        orders: 0.45,
        order_median: 70.0,
        order_sigma: 0.6,
        loyal_rooms: (2, 5),
        loyalty: 0.5,
        hazard: 0.001,
        burst_mult: 1.0,
        burst_start: 0.0,
        sale_pull: 1.3,
    },
    // dormant
    Spec {
        share: 0.16,
        registration: Registration::Early,
        sessions_per_day: 0.15,
        rate_sigma: 0.5,
        watch_median_s: 500.0,
        comments: 0.2,
        likes: 0.3,
        shares: 0.03,
        gifts: 0.0,
        follow: 0.03,
        orders: 0.25,
        order_median: 60.0,
        order_sigma: 0.6,
        loyal_rooms: (1, 4),
        loyalty: 0.4,
        hazard: 0.003,
        burst_mult: 1.0,
        burst_start: 0.0,
        sale_pull: 1.2,
    },
];

pub(crate) fn spec(p: Persona) -> &'static Spec {
    &SPECS[p.index()]
}

/// The persona whose cumulative share interval holds `u` (uniform in [0, 1)).
pub(crate) fn persona_for(u: f64) -> Persona {
    let mut acc = 0.0;
    for p in Persona::ALL {
        acc += spec(p).share;
        if u < acc {
            return p;
        }
    }
    Persona::Dormant
}

/// Probability that an order of a user of this persona is refunded (one refund, see
/// `generate::refunds`). Bargain hunters buy on impulse in sales and return the most; core fans
/// know what they buy.
pub fn refund_rate(p: Persona) -> f64 {
    match p {
        Persona::CoreFans => 0.04,
        Persona::ActiveRegulars => 0.08,
        Persona::PotentialNew => 0.12,
        Persona::BargainHunters => 0.30,
        Persona::SilentOnlookers => 0.10,
        Persona::DriftingAway => 0.12,
        Persona::Dormant => 0.10,
    }
}

/// The persona's channel mix (opt-in `channels`): the probability that one of its events
/// happened on live, short_video, social, offline_store, app (in [`crate::features::Channel`]'s
/// order). Core fans live in the live rooms; bargain hunters chase deals on short video and
/// social; onlookers watch clips; the lapsing personas drift to other channels.
pub fn channel_mix(p: Persona) -> [f64; 5] {
    match p {
        Persona::CoreFans => [0.85, 0.05, 0.02, 0.03, 0.05],
        Persona::ActiveRegulars => [0.65, 0.12, 0.05, 0.08, 0.10],
        Persona::PotentialNew => [0.55, 0.25, 0.12, 0.00, 0.08],
        Persona::BargainHunters => [0.45, 0.25, 0.15, 0.05, 0.10],
        Persona::SilentOnlookers => [0.50, 0.40, 0.05, 0.00, 0.05],
        Persona::DriftingAway => [0.50, 0.15, 0.10, 0.15, 0.10],
        Persona::Dormant => [0.60, 0.10, 0.10, 0.10, 0.10],
    }
}

/// The persona's category preferences (opt-in `channels`): weights over
/// [`super::CATEGORIES`] for drawing the user's favourite category, and the share of the
/// user's sessions moved to a room of that category.
pub fn category_preference(p: Persona) -> ([f64; 10], f64) {
    //        beauty fashion food home elec baby jewel sports pets books
    match p {
        Persona::CoreFans => (
            [0.40, 0.25, 0.05, 0.05, 0.05, 0.05, 0.10, 0.02, 0.02, 0.01],
            0.6,
        ),
        Persona::ActiveRegulars => (
            [0.20, 0.20, 0.15, 0.15, 0.10, 0.08, 0.04, 0.04, 0.02, 0.02],
            0.45,
        ),
        Persona::PotentialNew => (
            [0.15, 0.15, 0.15, 0.10, 0.10, 0.10, 0.05, 0.10, 0.05, 0.05],
            0.3,
        ),
        Persona::BargainHunters => (
            [0.10, 0.15, 0.30, 0.25, 0.10, 0.05, 0.01, 0.02, 0.01, 0.01],
            0.5,
        ),
        Persona::SilentOnlookers => (
            [0.15, 0.10, 0.05, 0.05, 0.30, 0.05, 0.05, 0.15, 0.05, 0.05],
            0.4,
        ),
        Persona::DriftingAway => (
            [0.25, 0.20, 0.10, 0.10, 0.10, 0.10, 0.05, 0.05, 0.03, 0.02],
            0.35,
        ),
        Persona::Dormant => (
            [0.20, 0.20, 0.10, 0.10, 0.10, 0.10, 0.05, 0.05, 0.05, 0.05],
            0.3,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persona_shares_sum_to_one_and_ids_round_trip() {
        let total: f64 = Persona::ALL.iter().map(|p| p.target_share()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        for p in Persona::ALL {
            assert_eq!(p.as_str().parse::<Persona>(), Ok(p));
            assert_eq!(Persona::ALL[p.index()], p);
        }
        assert!("vip".parse::<Persona>().is_err());
    }
}
