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
pub fn encode_record(events: &[UserEvent]) -> Result<Vec<u8>, StateError> {
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
pub struct SegmentReplay {
    pub records: u64,
    pub events: u64,
    /// Bytes of whole, valid records from the start.
    pub valid_len: u64,
    pub torn: bool,
}

/// Decodes a segment's records in order, calling `apply` on each event. `last`: this is the
/// newest segment, whose final record may be torn.
pub fn replay_segment(
    path: &Path,
    bytes: &[u8],
    last: bool,
    mut apply: impl FnMut(UserEvent),
) -> Result<SegmentReplay, StateError> {
    let corrupt = |offset: usize, m: &str| StateError::Corrupt {
        path: path.to_path_buf(),
        message: format!("at byte {offset}: {m}"),
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
        let torn = |m: &str| -> Result<SegmentReplay, StateError> {
            if last {
                tracing::warn!(path = %path.display(), offset = off, "dropping a torn record at the end of the event log ({m}): a crash interrupted its write, so it was never acknowledged");
                Ok(SegmentReplay { torn: true, ..out })
            } else {
                Err(corrupt(
                    off,
                    &format!("{m} in a segment that is not the last"),
                ))
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
            return Err(corrupt(off, "empty record"));
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
            return Err(corrupt(
                off,
                "checksum mismatch in the middle of the log (acknowledged events follow it)",
            ));
        }
        let events: Vec<UserEvent> = postcard::from_bytes(payload)
            .map_err(|e| corrupt(off, &format!("undecodable record: {e}")))?;
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
