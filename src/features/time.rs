//! Times as people write them, and as the project writes them.
//!
//! - [`parse_instant`]: a point in time given on a command line or in a config file: RFC 3339,
//!   or a bare `YYYY-MM-DD` meaning the *end* of that day (the next midnight, UTC), so that events
//!   on that date count as known. (The data contract's `ts` column reads a bare date as the
//!   *start* of the day; that parser lives with the readers, in `io::read`.)
//! - [`parse_earliest`]: a lower bound given in a config file (`earliest_event_time`): RFC 3339,
//!   or a bare `YYYY-MM-DD` meaning the *start* of that day, so that events on that date are
//!   accepted.
//! - [`format_rfc3339`]: the one form every timestamp the project writes takes,
//!   `2026-05-01T12:34:56Z` (`%Y-%m-%dT%H:%M:%SZ`, never `+00:00`).

use super::event::Timestamp;

/// The text was not a time [`parse_instant`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    #[error("{text:?} is neither RFC 3339 nor YYYY-MM-DD: {source}")]
    Unparseable {
        text: String,
        #[source]
        source: chrono::ParseError,
    },
    #[error("date {text} is out of range")]
    OutOfRange { text: String },
}

/// RFC 3339 (offsets applied, fractions of a second dropped), or `YYYY-MM-DD` meaning the end
/// of that day (the next midnight, UTC), to Unix seconds. Surrounding whitespace is ignored.
pub fn parse_instant(s: &str) -> Result<Timestamp, TimeParseError> {
    let s = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let next = d.succ_opt().ok_or_else(|| TimeParseError::OutOfRange {
            text: s.to_string(),
        })?;
        return Ok(next.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|source| TimeParseError::Unparseable {
            text: s.to_string(),
            source,
        })
}

/// RFC 3339 (as [`parse_instant`]), or `YYYY-MM-DD` meaning the *start* of that day (midnight
/// UTC): a lower bound, such as the earliest accepted event time, includes the day it names.
pub fn parse_earliest(s: &str) -> Result<Timestamp, TimeParseError> {
    let s = s.trim();
    match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => Ok(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp()),
        Err(_) => parse_instant(s),
    }
}

/// `ts` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds); a time outside chrono's range (about
/// ±262,000 years) as its decimal seconds.
pub fn format_rfc3339(ts: Timestamp) -> String {
    chrono::DateTime::from_timestamp(ts, 0).map_or_else(
        || ts.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::DAY;

    /// The end of the UTC day holding `ts` (the next midnight), as a date is read.
    fn end_of_day(ts: Timestamp) -> Timestamp {
        (ts.div_euclid(DAY) + 1) * DAY
    }

    #[test]
    fn a_bare_date_means_the_end_of_that_day() {
        assert_eq!(parse_instant("2026-04-30"), Ok(1_777_593_600));
        assert_eq!(parse_instant(" 2026-04-30 "), Ok(1_777_593_600));
        assert_eq!(
            parse_instant("2026-04-30"),
            Ok(end_of_day(1_777_593_600 - 1))
        );
        assert_eq!(parse_instant("2026-05-01T00:00:00Z"), Ok(1_777_593_600));
        assert_eq!(
            parse_instant("2026-05-01T08:00:00+08:00"),
            Ok(1_777_593_600)
        );
        assert_eq!(parse_instant("2026-05-01T00:00:00.9Z"), Ok(1_777_593_600));
    }

    #[test]
    fn a_bare_date_as_a_lower_bound_means_the_start_of_that_day() {
        assert_eq!(parse_earliest("2000-01-01"), Ok(946_684_800));
        assert_eq!(parse_earliest(" 2000-01-01 "), Ok(946_684_800));
        assert_eq!(parse_earliest("2000-01-01T00:00:00Z"), Ok(946_684_800));
        assert_eq!(parse_earliest("2000-01-01T08:00:00+08:00"), Ok(946_684_800));
        assert_eq!(parse_earliest("0001-01-01"), Ok(-62_135_596_800));
        assert_eq!(parse_earliest("1970-01-01"), Ok(0));
        assert!(matches!(
            parse_earliest("2000-13-01"),
            Err(TimeParseError::Unparseable { .. })
        ));
    }

    #[test]
    fn anything_else_is_refused_with_the_text() {
        for bad in [
            "yesterday",
            "",
            "2026-13-01",
            "1777593600",
            "2026-05-01 00:00",
        ] {
            match parse_instant(bad) {
                Err(e @ TimeParseError::Unparseable { .. }) => {
                    assert!(e.to_string().contains(&format!("{:?}", bad.trim())), "{e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_instant("+262142-12-31"),
            Err(TimeParseError::OutOfRange { .. })
        ));
    }

    #[test]
    fn format_writes_the_z_form() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_777_638_896), "2026-05-01T12:34:56Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn format_and_parse_round_trip() {
        for ts in [0, 59, 86_399, 951_782_400, 1_777_638_896, 253_402_300_799] {
            assert_eq!(parse_instant(&format_rfc3339(ts)), Ok(ts));
        }
    }
}
