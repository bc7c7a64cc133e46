//! The stored form of one user: key `u:{<user_id>}` (the braces are a Cluster hash tag, so the
//! key's slot is the id's), value a compact binary blob:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format version, [`FORMAT_VERSION`] |
//! | 1..9 | compare-and-set token, u64 little-endian (a fresh random value on each write) |
//! | 9 | 1 when an applied-offset watermark follows, else 0 |
//! | 10..14 | watermark partition, i32 little-endian (0 when none) |
//! | 14..22 | watermark offset, i64 little-endian (0 when none) |
//! | 22.. | the `UserAggregate`, postcard-encoded (format 1: the layout before refunds,
//! [`UserAggregateV1`]; format 2: before interests and channels, [`UserAggregateV2`]; format
//! 3: before rooms, [`UserAggregateV3`]; format 4: before the first order day,
//! [`UserAggregateV4`]) |
//!
//! The first [`CAS_PREFIX`] bytes (version and token) are what the compare-and-set script
//! compares; each write draws a new random token (not a counter: two replicas applying identical
//! events to the same value would otherwise write identical bytes, and neither could tell its
//! own landed write from the other's), so equal prefixes mean an unchanged value. A value of an
//! unknown version is refused, never guessed at; a change to `UserAggregate`'s serde layout is
//! a new version, and a new binary must keep reading the previous one.

use super::super::{LogPosition, StateError};
use crate::features::{
    UserAggregate, UserAggregateV1, UserAggregateV2, UserAggregateV3, UserAggregateV4,
};

/// The value format this binary writes: 2 since the aggregate holds refunds, 3 since it holds
/// interests and channels, 4 since it holds rooms (and three category slots), 5 since it holds
/// the first order day and its spend. It also reads formats 1 to 4 (written by earlier
/// binaries), so a rolling deploy keeps every user's state (a user read from format 1 or 2 has
/// no interests and no channel mix until new events build them; from format 3, its three
/// highest categories and no rooms; from any of them a buyer's first order day is unknown, see
/// `crate::features::aggregate`); such a value is rewritten as 5 on its next write. An earlier
/// binary refuses format 5.
pub const FORMAT_VERSION: u8 = 5;
/// Formats still read: before refunds, before interests and channels, before rooms, before the
/// first order day.
const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const FORMAT_V3: u8 = 3;
const FORMAT_V4: u8 = 4;
/// Bytes the compare-and-set compares: the version and the token.
pub const CAS_PREFIX: usize = 9;
const HEADER: usize = 22;

/// The Redis key of a user.
pub fn key(user_id: &str) -> String {
    format!("u:{{{user_id}}}")
}

/// The key of an erased user's tombstone, `e:{<user_id>}` (the same slot as [`key`]): its value
/// is the 13 watermark bytes of the erased value (bytes 9..22: flag, partition, offset; all
/// zero when the user was not held), so the position up to which the topic was applied to the
/// user stays known. While it exists every write to the user is dropped (see the
/// compare-and-set script), so neither a replay of old events nor new events bring the user
/// back. Its prefix is not `u:{`, so scans and user counts never see it.
pub fn tombstone_key(user_id: &str) -> String {
    format!("e:{{{user_id}}}")
}

/// The watermark a tombstone carries (`None`: the erased user had none, or was not held).
pub fn tombstone_watermark(bytes: &[u8]) -> Option<LogPosition> {
    if bytes.len() < 13 || bytes[0] != 1 {
        return None;
    }
    let mut part = [0u8; 4];
    part.copy_from_slice(&bytes[1..5]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&bytes[5..13]);
    Some(LogPosition {
        partition: i32::from_le_bytes(part),
        offset: i64::from_le_bytes(off),
    })
}

/// The user id of a key written by [`key`].
pub fn user_of(key: &str) -> Option<&str> {
    key.strip_prefix("u:{")?.strip_suffix('}')
}

/// One user's stored value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stored {
    pub cas: u64,
    pub watermark: Option<LogPosition>,
    pub agg: UserAggregate,
}

pub fn encode(s: &Stored) -> Result<Vec<u8>, StateError> {
    let mut out = Vec::with_capacity(HEADER + 128);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&s.cas.to_le_bytes());
    let (flag, p) = match s.watermark {
        Some(p) => (1u8, p),
        None => (
            0,
            LogPosition {
                partition: 0,
                offset: 0,
            },
        ),
    };
    out.push(flag);
    out.extend_from_slice(&p.partition.to_le_bytes());
    out.extend_from_slice(&p.offset.to_le_bytes());
    postcard::to_io(&s.agg, &mut out).map_err(StateError::EncodeValue)?;
    Ok(out)
}

/// An aggregate in the layout `A` of an earlier value format, converted to the current one.
fn decode_as<A>(body: &[u8]) -> Result<UserAggregate, postcard::Error>
where
    A: serde::de::DeserializeOwned + Into<UserAggregate>,
{
    postcard::from_bytes::<A>(body).map(Into::into)
}

pub fn decode(bytes: &[u8]) -> Result<Stored, StateError> {
    let Some(&version) = bytes.first() else {
        return Err(StateError::RedisValue {
            what: "empty value".into(),
        });
    };
    if ![FORMAT_VERSION, FORMAT_V4, FORMAT_V3, FORMAT_V2, FORMAT_V1].contains(&version) {
        return Err(StateError::RedisFormat {
            found: version,
            known: FORMAT_VERSION,
        });
    }
    let short = || StateError::RedisValue {
        what: format!(
            "{} bytes, shorter than the {HEADER}-byte header",
            bytes.len()
        ),
    };
    let header = bytes.get(..HEADER).ok_or_else(short)?;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        b
    };
    let mut part = [0u8; 4];
    part.copy_from_slice(&header[10..14]);
    let watermark = match header[9] {
        0 => None,
        1 => Some(LogPosition {
            partition: i32::from_le_bytes(part),
            offset: i64::from_le_bytes(u64_at(14)),
        }),
        other => {
            return Err(StateError::RedisValue {
                what: format!("watermark flag {other}"),
            })
        }
    };
    let undecodable = |e: postcard::Error| StateError::RedisValue {
        what: format!("undecodable aggregate: {e}"),
    };
    let body = &bytes[HEADER..];
    let agg = match version {
        FORMAT_V1 => decode_as::<UserAggregateV1>(body),
        FORMAT_V2 => decode_as::<UserAggregateV2>(body),
        FORMAT_V3 => decode_as::<UserAggregateV3>(body),
        FORMAT_V4 => decode_as::<UserAggregateV4>(body),
        _ => postcard::from_bytes(body),
    }
    .map_err(undecodable)?;
    Ok(Stored {
        cas: u64::from_le_bytes(u64_at(1)),
        watermark,
        agg,
    })
}

/// The compare-and-set prefix of a stored value (the whole value when shorter).
pub fn cas_prefix(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(CAS_PREFIX)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Event, EventKind};

    #[test]
    fn a_value_round_trips_and_an_unknown_version_is_refused() {
        let mut agg = UserAggregate::default();
        agg.apply(&Event {
            ts: 1_700_000_000,
            kind: EventKind::Order,
            amount: 12.5,
            watch_seconds: 0,
            room: 3,
            category: 4,
            order: 0,
            channel: 0,
        });
        for watermark in [
            None,
            Some(LogPosition {
                partition: 7,
                offset: -1 + (1 << 40),
            }),
        ] {
            let s = Stored {
                cas: 42,
                watermark,
                agg,
            };
            let bytes = encode(&s).unwrap();
            assert_eq!(decode(&bytes).unwrap(), s);
            assert_eq!(cas_prefix(&bytes), &bytes[..9]);
            let mut newer = bytes.clone();
            newer[0] = FORMAT_VERSION + 1;
            let e = decode(&newer).unwrap_err();
            assert!(
                matches!(e, StateError::RedisFormat { found: 6, known: 5 }),
                "{e}"
            );
            assert!(decode(&bytes[..10]).is_err());
        }
        assert!(decode(&[]).is_err());
        assert_eq!(key("a b"), "u:{a b}");
        assert_eq!(user_of(&key("x{y}")), Some("x{y}"));
    }

    /// A value as an earlier binary wrote it: `version`, the token `cas`, no watermark, the
    /// aggregate in that binary's layout.
    fn earlier_value(version: u8, cas: u64, layout: &impl serde::Serialize) -> Vec<u8> {
        let mut v = vec![version];
        v.extend_from_slice(&cas.to_le_bytes());
        v.extend_from_slice(&[0u8; 13]);
        v.extend(postcard::to_stdvec(layout).unwrap());
        v
    }

    /// A value an earlier binary wrote (format 1, the aggregate before refunds; 2, before
    /// interests; 3, before rooms; 4, before the first order day) still reads; a value with
    /// refunds, rooms and a first order day round-trips in format 5.
    #[test]
    fn a_format_1_value_of_an_earlier_binary_still_reads() {
        let mut agg = UserAggregate::default();
        let order = |kind, amount, order| Event {
            ts: 1_700_000_000,
            kind,
            amount,
            watch_seconds: 0,
            room: 3,
            category: 4,
            order,
            channel: 0,
        };
        agg.apply(&order(EventKind::Order, 12.5, 0));
        let old = earlier_value(1, 42, &UserAggregateV1::of(&agg));
        let back = decode(&old).unwrap();
        assert_eq!(
            (back.cas, back.agg),
            (42, UserAggregate::from(UserAggregateV1::of(&agg)))
        );
        // Format 2 (refunds, no interests) reads with its refund part.
        let v2 = earlier_value(2, 43, &UserAggregateV2::of(&agg));
        let back = decode(&v2).unwrap();
        assert_eq!(
            (back.cas, back.agg),
            (43, UserAggregate::from(UserAggregateV2::of(&agg)))
        );
        assert!(back.agg.interests.is_empty() && !agg.interests.is_empty());
        // Format 3 (interests and channels, no rooms) reads with them and no rooms.
        let v3 = earlier_value(3, 44, &UserAggregateV3::of(&agg));
        let back = decode(&v3).unwrap();
        assert_eq!(
            (back.cas, back.agg),
            (44, UserAggregate::from(UserAggregateV3::of(&agg)))
        );
        assert_eq!(back.agg.interests, agg.interests);
        assert!(back.agg.rooms.is_empty() && !agg.rooms.is_empty());
        // Format 4 (rooms, no first order day) reads with its rooms and an unknown first day.
        let v4 = earlier_value(4, 45, &UserAggregateV4::of(&agg));
        let back = decode(&v4).unwrap();
        assert_eq!(
            (back.cas, back.agg),
            (45, UserAggregate::from(UserAggregateV4::of(&agg)))
        );
        assert_eq!(
            (back.agg.rooms, back.agg.interests),
            (agg.rooms, agg.interests)
        );
        assert_eq!(back.agg.first_order_day, UserAggregate::UNKNOWN_DAY);
        assert_eq!(back.agg.first_and_repeat_spend(), None);
        assert_eq!(agg.first_and_repeat_spend(), Some((12.5, 0.0)));
        agg.apply(&order(EventKind::Order, 20.0, 77));
        agg.apply(&order(EventKind::Refund, 20.0, 77));
        let s = Stored {
            cas: 1,
            watermark: None,
            agg,
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], 5);
        assert_eq!(decode(&bytes).unwrap(), s);
        assert_eq!(decode(&bytes).unwrap().agg.orders_refunded, 1);
        assert_eq!(user_of(&key("x{y}")), Some("x{y}"));
    }
}
