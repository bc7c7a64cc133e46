//! Timestamps of the data contract: RFC 3339 or `YYYY-MM-DD` (midnight UTC), to Unix seconds.
//!
//! Almost every timestamp in a real file has one of two shapes, `YYYY-MM-DDTHH:MM:SSZ` or
//! `YYYY-MM-DD`. Those are parsed by hand (fixed offsets, days-from-civil arithmetic, no
//! allocation); anything else (offsets, fractional seconds, lower-case separators, leap seconds,
//! malformed text) falls through to chrono, which has the last word. The fast path only ever
//! answers for strings chrono would parse to the same second (tested against chrono below).
//!
//! A bare date here is the *start* of the day, as the data contract says for event times; a
//! bare date given as a flag or config value means the end of it
//! ([`crate::features::parse_instant`]). Times are written with
//! [`crate::features::format_rfc3339`], whose output this fast path parses.

use crate::features::{Timestamp, DAY};

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d` (H. Hinnant's algorithm).
/// `m` in 1..=12 and `d` in 1..=31; the caller validates.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    era * 146_097 + doe - 719_468
}

fn is_leap(y: u32) -> bool {
    y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[inline]
fn digit(b: u8) -> Option<u32> {
    let d = b.wrapping_sub(b'0');
    (d < 10).then_some(u32::from(d))
}

#[inline]
fn two(b: &[u8]) -> Option<u32> {
    Some(digit(b[0])? * 10 + digit(b[1])?)
}

/// Days since the epoch of a validated `YYYY-MM-DD` at the start of `b` (10 bytes).
#[inline]
fn date(b: &[u8]) -> Option<i64> {
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = two(&b[0..2])? * 100 + two(&b[2..4])?;
    let m = two(&b[5..7])?;
    let d = two(&b[8..10])?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(i64::from(y), m, d))
}

/// The hand-written path: `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DD`, exactly. `None` means "not
/// one of these shapes, or not a valid time": ask chrono.
#[inline]
pub(crate) fn parse_fast(b: &[u8]) -> Option<Timestamp> {
    match b.len() {
        10 => Some(date(b)? * DAY),
        20 => {
            if b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
                return None;
            }
            let days = date(b)?;
            let h = two(&b[11..13])?;
            let mi = two(&b[14..16])?;
            let s = two(&b[17..19])?;
            if h > 23 || mi > 59 || s > 59 {
                return None;
            }
            Some(days * DAY + i64::from(h * 3600 + mi * 60 + s))
        }
        _ => None,
    }
}

/// The general path: any RFC 3339 date-time chrono accepts (offsets are applied, fractions of a
/// second are floored), or a date alone (midnight UTC).
pub(crate) fn parse_slow(s: &str) -> Option<Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

/// Why a timestamp field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeError {
    /// Not a timestamp in any accepted form.
    Unparseable,
    /// Not UTF-8 (so not a timestamp either, but the message should say so).
    InvalidUtf8,
}

/// A timestamp field (surrounding ASCII whitespace ignored).
#[inline]
pub(crate) fn parse_timestamp(b: &[u8]) -> Result<Timestamp, TimeError> {
    let b = b.trim_ascii();
    if let Some(t) = parse_fast(b) {
        return Ok(t);
    }
    let s = std::str::from_utf8(b).map_err(|_| TimeError::InvalidUtf8)?;
    parse_slow(s).ok_or(TimeError::Unparseable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::format_rfc3339;
    use proptest::prelude::*;

    fn chrono_rfc3339(s: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp())
    }

    fn chrono_date(s: &str) -> Option<i64> {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp())
    }

    #[test]
    fn common_shapes_parse_to_unix_seconds() {
        assert_eq!(parse_timestamp(b"1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_timestamp(b"1970-01-02"), Ok(DAY));
        assert_eq!(parse_timestamp(b"2026-05-01T12:34:56Z"), Ok(1_777_638_896));
        assert_eq!(parse_timestamp(b"1969-12-31T23:59:59Z"), Ok(-1));
        assert_eq!(parse_timestamp(b" 2024-02-29 "), Ok(19_782 * DAY));
    }

    #[test]
    fn other_rfc3339_forms_fall_back_to_chrono() {
        assert_eq!(
            parse_timestamp(b"2026-05-01T20:34:56+08:00"),
            Ok(1_777_638_896)
        );
        assert_eq!(
            parse_timestamp(b"2026-05-01T12:34:56.999Z"),
            Ok(1_777_638_896)
        );
        assert_eq!(parse_timestamp(b"2026-05-01t12:34:56z"), Ok(1_777_638_896));
        assert_eq!(parse_timestamp(b"1969-12-31T23:59:59.5Z"), Ok(-1));
    }

    #[test]
    fn invalid_times_are_refused() {
        for bad in [
            "2026-13-01",
            "2026-02-29",
            "2026-04-31T00:00:00Z",
            "2026-05-01T24:00:00Z",
            "2026-05-01T12:60:00Z",
            "",
            "yesterday",
            "2026/05/01",
            "1777638896",
        ] {
            assert_eq!(
                parse_timestamp(bad.as_bytes()),
                Err(TimeError::Unparseable),
                "{bad}"
            );
        }
        assert_eq!(
            parse_timestamp(b"2026-05-01\xff"),
            Err(TimeError::InvalidUtf8)
        );
    }

    #[test]
    fn days_from_civil_agrees_with_chrono_across_eras() {
        for y in [
            -1000i32, -1, 0, 1, 1600, 1900, 1969, 1970, 2000, 2024, 2100, 9999,
        ] {
            for m in 1..=12u32 {
                let d = chrono::NaiveDate::from_ymd_opt(y, m, 1)
                    .map(|d| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp()));
                assert_eq!(
                    Some(Some(days_from_civil(i64::from(y), m, 1) * DAY)),
                    d,
                    "{y}-{m}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Every well-formed (and ill-formed) value of the two shapes: the fast path answers
        /// exactly when chrono does, with the same second.
        #[test]
        fn fast_path_matches_chrono_on_fixed_shapes(y in 0u32..=9999, m in 0u32..=13, d in 0u32..=32,
                                                    h in 0u32..=24, mi in 0u32..=60, s in 0u32..=60) {
            let dt = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
            // chrono reads second 60 as a leap second; the fast path leaves those to it.
            let expected = if s == 60 { None } else { chrono_rfc3339(&dt) };
            prop_assert_eq!(parse_fast(dt.as_bytes()), expected, "{}", dt);
            prop_assert_eq!(parse_timestamp(dt.as_bytes()).ok(), chrono_rfc3339(&dt), "{}", dt);
            let date = format!("{y:04}-{m:02}-{d:02}");
            prop_assert_eq!(parse_fast(date.as_bytes()), chrono_date(&date), "{}", date);
        }

        /// Round trip from seconds: the project's own formatting, parsed back by the fast path.
        #[test]
        fn fast_path_inverts_the_written_form(t in -62_167_219_200i64..=253_402_300_799) {
            let dt = format_rfc3339(t);
            prop_assert_eq!(parse_fast(dt.as_bytes()), Some(t), "{}", dt);
            let day = t.div_euclid(DAY) * DAY;
            prop_assert_eq!(parse_fast(&dt.as_bytes()[..10]), Some(day), "{}", dt);
        }

        /// Arbitrary bytes in the two shapes' lengths never make the fast path disagree with
        /// chrono: when it answers, chrono gives the same second.
        #[test]
        fn fast_path_never_answers_what_chrono_would_not(b in proptest::collection::vec(
            prop_oneof![Just(b'0'), Just(b'1'), Just(b'2'), Just(b'9'), Just(b'-'), Just(b':'), Just(b'T'), Just(b'Z'), any::<u8>()], 20)) {
            if let Some(t) = parse_fast(&b) {
                let s = std::str::from_utf8(&b).unwrap_or_default();
                prop_assert_eq!(chrono_rfc3339(s), Some(t));
            }
            if let Some(t) = parse_fast(&b[..10]) {
                let s = std::str::from_utf8(&b[..10]).unwrap_or_default();
                prop_assert_eq!(chrono_date(s), Some(t));
            }
        }

        /// Offsets and fractions (the slow path) agree with chrono too.
        #[test]
        fn offsets_and_fractions_agree_with_chrono(t in 0i64..=4_102_444_800, off_min in -840i32..=840, frac in 0u32..1_000_000_000) {
            let tz = chrono::FixedOffset::east_opt(off_min * 60).unwrap();
            let Some(utc) = chrono::DateTime::from_timestamp(t, frac) else { return Ok(()) };
            let s = utc.with_timezone(&tz).to_rfc3339();
            prop_assert_eq!(parse_timestamp(s.as_bytes()), Ok(t), "{}", s);
        }
    }
}
