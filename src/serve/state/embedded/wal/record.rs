//! The log record format, and reading a segment back.
//!
//! A record is `u32 LE length | u32 LE crc32(payload) | payload`, the payload being one
//! request's events (postcard). On replay, a record cut short at the very end of the last
//! segment (a crash mid-write) is reported as a torn tail; a damaged record anywhere else is an
//! error, because acknowledged events after it would be lost.

use crate::serve::state::{StateError, UserEvent};
use std::path::Path;

/// Bytes before each record's payload: length and checksum.
pub const HEADER: usize = 8;
/// Larger lengths are corruption (messages are far smaller).
const MAX_RECORD: usize = 1 << 30;

/// One record holding `events`.
pub(crate) fn encode_record(events: &[UserEvent]) -> Result<Vec<u8>, StateError> {
    let payload = postcard::to_stdvec(events).map_err(StateError::EncodeRecord)?;
    if payload.len() > MAX_RECORD {
        return Err(StateError::RecordTooLarge);
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The result of reading one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentReplay {
    pub records: u64,
    pub events: u64,
    /// Bytes of whole, valid records from the start.
    pub valid_len: u64,
    pub torn: bool,
}

/// Decodes a segment's records in order, calling `apply` on each event. `last`: this is the
/// newest segment, whose final record may be torn.
pub(crate) fn replay_segment(
    path: &Path,
    bytes: &[u8],
    last: bool,
    mut apply: impl FnMut(UserEvent),
) -> Result<SegmentReplay, StateError> {
    let damaged = |offset: usize, what: &'static str| StateError::DamagedRecord {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let mut out = SegmentReplay {
        records: 0,
        events: 0,
        valid_len: 0,
        torn: false,
    };
    let mut off = 0usize;
    while off < bytes.len() {
        let rest = &bytes[off..];
        let torn = |what: &'static str| -> Result<SegmentReplay, StateError> {
            if last {
                tracing::warn!(path = %path.display(), offset = off, "dropping a torn record at the end of the event log ({what}): a crash interrupted its write, so it was never acknowledged");
                Ok(SegmentReplay { torn: true, ..out })
            } else {
                Err(StateError::TornMidLog {
                    path: path.to_path_buf(),
                    offset: off,
                    what,
                })
            }
        };
        if rest.len() < HEADER {
            return torn("incomplete record header");
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            // Never written by us: a zero-filled tail left by a crash, or damage.
            if rest.iter().all(|&b| b == 0) {
                return torn("zero-filled tail");
            }
            return Err(damaged(off, "empty record"));
        }
        if len > MAX_RECORD || len > rest.len() - HEADER {
            return torn("record extends past the end of the file");
        }
        let payload = &rest[HEADER..HEADER + len];
        let end = off + HEADER + len;
        if crc32fast::hash(payload) != crc {
            if end == bytes.len() {
                return torn("checksum mismatch in the final record");
            }
            return Err(damaged(
                off,
                "checksum mismatch in the middle of the log (acknowledged events follow it)",
            ));
        }
        let events: Vec<UserEvent> =
            postcard::from_bytes(payload).map_err(|source| StateError::UndecodableRecord {
                path: path.to_path_buf(),
                offset: off,
                source,
            })?;
        out.records += 1;
        out.events += events.len() as u64;
        events.into_iter().for_each(&mut apply);
        off = end;
        out.valid_len = off as u64;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::features::EventKind;

    pub(crate) fn ev(user: &str, ts: i64) -> UserEvent {
        UserEvent {
            user_id: user.into(),
            ts,
            kind: EventKind::Order,
            amount: 3.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
        }
    }

    fn log_of(records: &[Vec<UserEvent>]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| encode_record(r).unwrap())
            .collect()
    }

    /// The log written by the binary before the state moved behind the trait (three events
    /// through RecordEvents): the record format must stay byte for byte the same, or state
    /// directories of earlier versions stop loading.
    #[test]
    fn a_record_is_byte_for_byte_what_earlier_versions_wrote() {
        use crate::features::hash_str;
        let event =
            |user: &str, ts, kind, amount, watch_seconds, room: &str, category: &str| UserEvent {
                user_id: user.into(),
                ts,
                kind,
                amount,
                watch_seconds,
                room: hash_str(room),
                category: hash_str(category),
            };
        let events = [
            event(
                "u0000001",
                1_793_000_000,
                EventKind::Order,
                12.5,
                0,
                "r1",
                "beauty",
            ),
            event(
                "compat-new",
                1_793_000_100,
                EventKind::View,
                0.0,
                300,
                "r2",
                "food",
            ),
            event(
                "compat-new",
                1_793_000_200,
                EventKind::Order,
                40.0,
                0,
                "r2",
                "food",
            ),
        ];
        let written = "69000000eac7ef5b030875303030303030318089f8ad0d00000000000000294000acfbcf62\
                       91a8e8d3020a636f6d7061742d6e6577c88af8ad0d010000000000000000ac02e584d07a\
                       c9e7c1ea030a636f6d7061742d6e6577908cf8ad0d00000000000000444000e584d07ac9\
                       e7c1ea03";
        assert_eq!(hex::encode(encode_record(&events).unwrap()), written);
        let mut back = Vec::new();
        let bytes = hex::decode(written).unwrap();
        replay_segment(Path::new("x"), &bytes, true, |e| back.push(e)).unwrap();
        assert_eq!(back, events);
    }

    #[test]
    fn records_round_trip() {
        let bytes = log_of(&[vec![ev("a", 1), ev("b", 2)], vec![ev("c", 3)]]);
        let mut seen = Vec::new();
        let r = replay_segment(Path::new("x"), &bytes, true, |e| seen.push(e.user_id)).unwrap();
        assert_eq!(seen, vec!["a", "b", "c"]);
        assert_eq!(
            (r.records, r.events, r.valid_len, r.torn),
            (2, 3, bytes.len() as u64, false)
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_but_only_in_the_last_segment() {
        let bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        let first_len = encode_record(&[ev("a", 1)]).unwrap().len();
        for cut in [first_len + 3, first_len + 9, bytes.len() - 1] {
            let mut seen = 0;
            let r = replay_segment(Path::new("x"), &bytes[..cut], true, |_| seen += 1).unwrap();
            assert!(r.torn);
            assert_eq!((seen, r.valid_len), (1, first_len as u64));
            assert!(replay_segment(Path::new("x"), &bytes[..cut], false, |_| ()).is_err());
        }
        // A zero-filled tail (the file grew but the data never landed) is torn too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0u8; 64]);
        assert!(
            replay_segment(Path::new("x"), &zeros, true, |_| ())
                .unwrap()
                .torn
        );
    }

    #[test]
    fn a_checksum_failure_in_the_middle_is_an_error() {
        let mut bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        bytes[HEADER + 1] ^= 0xff;
        let e = replay_segment(Path::new("x"), &bytes, true, |_| ()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // The same damage in the final record is a torn write.
        let mut bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        assert!(
            replay_segment(Path::new("x"), &bytes, true, |_| ())
                .unwrap()
                .torn
        );
    }
}
