//! The shared, seeded world every user lives in: the calendar of the history (weekdays, platform
//! sale days), the live rooms with their categories and popularity, and the time-of-day profile.

use super::persona::Spec;
use super::{ValidParams, CATEGORIES};
use crate::features::{Timestamp, DAY};
use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// `(year, month, day)` of the civil (proleptic Gregorian) date `days` after 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`: a handful of integer operations, so writers can format
/// timestamps per row without a date library.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Day of the week of a day number, Monday = 0 (1970-01-01 was a Thursday).
pub fn weekday(days: i64) -> u32 {
    (days + 3).rem_euclid(7) as u32
}

/// Relative popularity of the categories when rooms are created (beauty and fashion dominate
/// live commerce).
const CATEGORY_WEIGHTS: [f64; CATEGORIES.len()] =
    [0.2, 0.2, 0.15, 0.1, 0.08, 0.08, 0.06, 0.05, 0.04, 0.04];

/// Sessions by hour of day: quiet nights, a lunch bump and the evening prime time of live selling.
const HOUR_WEIGHTS: [f64; 24] = [
    1.0, 0.6, 0.3, 0.2, 0.2, 0.3, 0.6, 1.0, 1.2, 1.3, 1.4, 1.5, 1.8, 1.6, 1.4, 1.4, 1.5, 1.7, 2.0,
    2.8, 3.5, 3.6, 3.0, 2.0,
];

pub(crate) struct World {
    pub start: Timestamp,
    pub end: Timestamp,
    pub days: u32,
    /// Day number (days since the epoch) of the first calendar day the history touches.
    pub first_day: i64,
    /// Per calendar day: session multiplier from the weekday.
    pub day_mult: Vec<f64>,
    /// Per calendar day: platform sale intensity, 0 (none), 0.6 (monthly sale), 1 (festival).
    pub day_sale: Vec<f64>,
    /// Category index of each room.
    pub room_category: Vec<u8>,
    /// Cumulative popularity of the rooms (Zipf over a seeded ranking), last entry 1.
    room_cum: Vec<f64>,
    hour_cum: [f64; 24],
}

impl World {
    pub fn new(params: &ValidParams, rng: &mut Xoshiro256PlusPlus) -> World {
        let start = params.start();
        let end = params.end();
        let first_day = start.div_euclid(DAY);
        let last_day = (end - 1).div_euclid(DAY);
        let mut day_mult = Vec::new();
        let mut day_sale = Vec::new();
        for day in first_day..=last_day {
            day_mult.push(match weekday(day) {
                4 => 1.05,
                5 | 6 => 1.15,
                _ => 1.0,
            });
            let (_, m, d) = civil_from_days(day);
            day_sale.push(match (m, d) {
                (6, 18) | (11, 11) | (12, 12) => 1.0,
                (_, 11) | (_, 18) => 0.6,
                _ => 0.0,
            });
        }

        let n_rooms = (params.users() / 50).clamp(50, 5000) as usize;
        let cat_total: f64 = CATEGORY_WEIGHTS.iter().sum();
        let room_category = (0..n_rooms)
            .map(|_| {
                let mut u = rng.gen::<f64>() * cat_total;
                for (i, w) in CATEGORY_WEIGHTS.iter().enumerate() {
                    if u < *w {
                        return i as u8;
                    }
                    u -= w;
                }
                0
            })
            .collect();
        // A seeded ranking, so the most popular room is not always room_0000.
        let mut rank: Vec<usize> = (0..n_rooms).collect();
        for i in (1..n_rooms).rev() {
            let j = rng.gen_range(0..=i);
            rank.swap(i, j);
        }
        let mut room_cum = Vec::with_capacity(n_rooms);
        let mut acc = 0.0;
        for r in &rank {
            acc += ((*r + 1) as f64).powf(-0.8);
            room_cum.push(acc);
        }
        for c in &mut room_cum {
            *c /= acc;
        }

        let mut hour_cum = [0.0; 24];
        let mut acc = 0.0;
        let hour_total: f64 = HOUR_WEIGHTS.iter().sum();
        for (h, w) in HOUR_WEIGHTS.iter().enumerate() {
            acc += w / hour_total;
            hour_cum[h] = acc;
        }
        World {
            start,
            end,
            days: params.days(),
            first_day,
            day_mult,
            day_sale,
            room_category,
            room_cum,
            hour_cum,
        }
    }

    pub(crate) fn n_rooms(&self) -> usize {
        self.room_category.len()
    }

    /// A room by popularity.
    /// The lowest-numbered room of `category`, if any.
    pub(crate) fn first_room_of(&self, category: u8) -> Option<u32> {
        self.room_category
            .iter()
            .position(|&c| c == category)
            .map(|i| i as u32)
    }

    pub(crate) fn sample_room(&self, rng: &mut Xoshiro256PlusPlus) -> u32 {
        let u = rng.gen::<f64>();
        let i = self.room_cum.partition_point(|c| *c <= u);
        i.min(self.n_rooms() - 1) as u32
    }

    /// Seconds after midnight for a session start, following the hourly profile.
    pub(crate) fn sample_time_of_day(&self, rng: &mut Xoshiro256PlusPlus) -> i64 {
        let u = rng.gen::<f64>();
        let h = self.hour_cum.iter().position(|c| u < *c).unwrap_or(23) as i64;
        h * 3600 + rng.gen_range(0..3600)
    }

    /// Session multiplier of a calendar day (index from `first_day`) for a persona.
    pub(crate) fn session_mult(&self, k: usize, spec: &Spec) -> f64 {
        self.day_mult[k] * (1.0 + (spec.sale_pull - 1.0) * self.day_sale[k])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_from_days_matches_chrono_over_centuries() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        for days in (-800_000..2_900_000).step_by(997) {
            let date = epoch + chrono::Duration::days(days);
            let (y, m, d) = civil_from_days(days);
            use chrono::Datelike;
            assert_eq!(
                (y, m, d),
                (i64::from(date.year()), date.month(), date.day()),
                "day {days}"
            );
            assert_eq!(weekday(days), date.weekday().num_days_from_monday());
        }
    }
}
