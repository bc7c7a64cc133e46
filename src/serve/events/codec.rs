//! The event record's value: one format byte, then the [`UserEvent`] in postcard. The record's
//! key is the user id; [`decode`] checks that the two agree (the per-user watermark relies on
//! one user's events sitting in one partition).

use crate::serve::state::UserEvent;

/// The first (and today only) format: `[1]` + postcard(UserEvent).
pub const FORMAT_V1: u8 = 1;
/// The header that carries the format byte as text ("1").
pub const FORMAT_HEADER: &str = "tiering-format";

/// Why a record is not an event this build can apply. Never names a user.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the record has no value")]
    NoValue,
    #[error("unknown record format {0} (this build reads format {FORMAT_V1})")]
    UnknownFormat(u8),
    #[error("undecodable event: {0}")]
    Postcard(#[source] postcard::Error),
    #[error("the record's key is not its event's user id")]
    KeyMismatch,
}

/// The record value for `event`.
pub fn encode(event: &UserEvent) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![FORMAT_V1];
    postcard::to_io(event, &mut out)?;
    Ok(out)
}

/// The event in a record's `value`, checked against its `key`.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<UserEvent, DecodeError> {
    let value = value.ok_or(DecodeError::NoValue)?;
    let (&format, body) = value.split_first().ok_or(DecodeError::NoValue)?;
    if format != FORMAT_V1 {
        return Err(DecodeError::UnknownFormat(format));
    }
    let event: UserEvent = postcard::from_bytes(body).map_err(DecodeError::Postcard)?;
    if key != Some(event.user_id.as_bytes()) {
        return Err(DecodeError::KeyMismatch);
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::EventKind;

    fn event() -> UserEvent {
        UserEvent {
            user_id: "u-1".into(),
            ts: 1_717_000_000,
            kind: EventKind::Order,
            amount: 12.5,
            watch_seconds: 0,
            room: 7,
            category: 9,
            order: 0,
            channel: 0,
        }
    }

    #[test]
    fn an_event_round_trips_and_starts_with_its_format_byte() {
        let bytes = encode(&event()).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode(Some(b"u-1"), Some(&bytes)).unwrap(), event());
    }

    /// Issue 14: an event with a channel round-trips (kind, order id and channel); one without
    /// keeps the one-byte kind earlier binaries wrote and read.
    #[test]
    fn a_channel_travels_in_the_record_and_its_absence_changes_nothing() {
        for (kind, order) in [(EventKind::Refund, 77), (EventKind::View, 0)] {
            let e = UserEvent {
                kind,
                order,
                channel: crate::features::Channel::Social as u8,
                ..event()
            };
            let bytes = encode(&e).unwrap();
            assert_eq!(decode(Some(b"u-1"), Some(&bytes)).unwrap(), e);
        }
        let plain = encode(&event()).unwrap();
        let with = encode(&UserEvent {
            channel: 2,
            ..event()
        })
        .unwrap();
        // Without a channel the kind is one byte (variant 0, an order); with one, the variant,
        // the kind, the order id (0: one byte) and the channel.
        assert_eq!(with.len(), plain.len() + 3);
    }

    #[test]
    fn a_foreign_record_is_refused_with_its_cause() {
        let bytes = encode(&event()).unwrap();
        assert!(matches!(
            decode(Some(b"u-2"), Some(&bytes)),
            Err(DecodeError::KeyMismatch)
        ));
        assert!(matches!(
            decode(Some(b"u-1"), None),
            Err(DecodeError::NoValue)
        ));
        assert!(matches!(
            decode(Some(b"u-1"), Some(&[])),
            Err(DecodeError::NoValue)
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            decode(Some(b"u-1"), Some(&v2)),
            Err(DecodeError::UnknownFormat(2))
        ));
        assert!(matches!(
            decode(Some(b"u-1"), Some(&bytes[..3])),
            Err(DecodeError::Postcard(_))
        ));
    }
}
