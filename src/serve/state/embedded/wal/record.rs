//! The log record format, and reading a segment back.
//!
//! A record is `u32 LE length | u32 LE crc32(payload) | payload`, the payload being one
//! request's events (postcard), or a control record: a payload starting with `0x00` (an empty
//! event list, which is never written as such) followed by a kind byte and its body. The one
//! kind is [`KIND_ERASE`] (body: the erased user id, postcard), written by
//! [`UserState::erase`](crate::serve::state::UserState::erase) and replayed as
//! [`UserEvent::erasure`]: the user's aggregate goes at that point of the log, so events logged
//! before it are gone after a replay and any later snapshot lacks the user. A binary from
//! before erasure reads a control record as an empty event list (it ignores the erasure: do not
//! roll back past it while erasures are in the log). On replay, bad bytes at the end of the last segment with no
//! valid record after them (a crash mid-write) are reported as a torn tail; bad bytes followed by
//! any valid record, or in a segment that is not the last, are an error naming the segment and
//! the offset, because acknowledged events after them would be lost. A flipped bit in a length
//! field therefore stops the start instead of hiding every record after it.

use crate::serve::state::{StateError, UserEvent};
use std::path::Path;

/// Bytes before each record's payload: length and checksum.
pub const HEADER: usize = 8;
/// Larger lengths are corruption (messages are far smaller).
const MAX_RECORD: usize = 1 << 30;

/// The control record kind of an erasure.
pub const KIND_ERASE: u8 = 1;

/// One record holding `events` (an erasure alone, [`UserEvent::erasure`], is written as a
/// control record).
pub(crate) fn encode_record(events: &[UserEvent]) -> Result<Vec<u8>, StateError> {
    let payload = match events {
        [e] if e.is_erasure() => {
            let mut p = vec![0u8, KIND_ERASE];
            postcard::to_io(&e.user_id, &mut p).map_err(StateError::EncodeRecord)?;
            p
        }
        _ => postcard::to_stdvec(events).map_err(StateError::EncodeRecord)?,
    };
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
    /// Why the bytes after `valid_len` were dropped as a torn tail (`None`: the segment ends at
    /// a record boundary).
    pub torn: Option<&'static str>,
}

/// Where the record at `off` ends, if it is whole and its checksum matches (its payload is not
/// decoded).
fn whole_record_at(bytes: &[u8], off: usize) -> Option<usize> {
    let rest = bytes.get(off..)?;
    let header = rest.get(..HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = rest.get(HEADER..HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(off + HEADER + len)
}

/// The first offset after `from` where a whole, checksummed, decodable record starts: proof that
/// the bytes at `from` are damage rather than a torn tail (a crash leaves nothing valid after
/// its interrupted write).
pub(crate) fn next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from + 1..bytes.len()).find(|&o| {
        whole_record_at(bytes, o).is_some_and(|end| {
            postcard::from_bytes::<Vec<UserEvent>>(&bytes[o + HEADER..end]).is_ok()
        })
    })
}

/// The byte ranges of every whole, checksummed, decodable record, skipping bad bytes between
/// them (`tiering state repair --salvage`).
pub(crate) fn valid_records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let decodes = |o: usize, end: usize| {
        postcard::from_bytes::<Vec<UserEvent>>(&bytes[o + HEADER..end]).is_ok()
    };
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        match whole_record_at(bytes, off).filter(|&end| decodes(off, end)) {
            Some(end) => {
                out.push(off..end);
                off = end;
            }
            None => match next_valid_record(bytes, off) {
                Some(next) => off = next,
                None => break,
            },
        }
    }
    out
}

/// Decodes a segment's records in order, calling `apply` on each event. `last`: this is the
/// newest segment, whose end may hold a torn write.
///
/// Errors: [`StateError::DamagedRecord`] for a bad record with valid records after it (in any
/// segment), [`StateError::TornMidLog`] for a cut-short record in a segment that is not the
/// last, [`StateError::UndecodableRecord`] for a checksummed record whose payload does not
/// decode. Only a bad record with nothing valid after it, in the last segment, is a torn tail.
pub(crate) fn replay_segment(
    path: &Path,
    bytes: &[u8],
    last: bool,
    mut apply: impl FnMut(UserEvent),
) -> Result<SegmentReplay, StateError> {
    let mut out = SegmentReplay {
        records: 0,
        events: 0,
        valid_len: 0,
        torn: None,
    };
    let mut off = 0usize;
    while off < bytes.len() {
        let Some(end) = whole_record_at(bytes, off) else {
            return bad_tail(path, bytes, off, last).map(|what| SegmentReplay {
                torn: Some(what),
                ..out
            });
        };
        let payload = &bytes[off + HEADER..end];
        let undecodable = |source| StateError::UndecodableRecord {
            path: path.to_path_buf(),
            offset: off,
            source,
        };
        out.records += 1;
        if let Some(control) = control(payload) {
            apply(control.map_err(undecodable)?);
        } else {
            let events: Vec<UserEvent> = postcard::from_bytes(payload).map_err(undecodable)?;
            out.events += events.len() as u64;
            events.into_iter().for_each(&mut apply);
        }
        off = end;
        out.valid_len = off as u64;
    }
    Ok(out)
}

/// A control record's entry (`None`: the payload is an event list).
fn control(payload: &[u8]) -> Option<Result<UserEvent, postcard::Error>> {
    match payload {
        [0, KIND_ERASE, body @ ..] => {
            Some(postcard::from_bytes::<String>(body).map(|id| UserEvent::erasure(&id)))
        }
        [0, _, ..] => Some(Err(postcard::Error::DeserializeBadEncoding)),
        _ => None,
    }
}

/// Judges the bytes from `off` on, where no whole record starts: a torn tail (returns what it
/// looks like) only in the last segment and with no valid record after it.
fn bad_tail(path: &Path, bytes: &[u8], off: usize, last: bool) -> Result<&'static str, StateError> {
    let rest = &bytes[off..];
    let what = if rest.len() < HEADER {
        "incomplete record header"
    } else if rest.iter().all(|&b| b == 0) {
        "zero-filled tail"
    } else {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 {
            "empty record"
        } else if len > MAX_RECORD || len > rest.len() - HEADER {
            "record extends past the end of the file"
        } else {
            "checksum mismatch"
        }
    };
    super::super::tail::tail_verdict(path, off, what, next_valid_record(bytes, off), last)
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
            order: 0,
            channel: 0,
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
                order: 0,
                channel: 0,
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
    fn an_erasure_is_its_own_record_kind_and_replays_as_an_erasure_between_events() {
        let bytes: Vec<u8> = [
            encode_record(&[ev("a", 1), ev("b", 2)]).unwrap(),
            encode_record(&[UserEvent::erasure("a")]).unwrap(),
            encode_record(&[ev("a", 3)]).unwrap(),
        ]
        .concat();
        let erase = encode_record(&[UserEvent::erasure("a")]).unwrap();
        assert_eq!(&erase[HEADER..HEADER + 2], &[0, KIND_ERASE]);
        // A reader of the event list alone sees nothing in it (what older binaries do).
        let old: Vec<UserEvent> = postcard::from_bytes(&erase[HEADER..]).unwrap();
        assert!(old.is_empty());
        let mut seen = Vec::new();
        let r = replay_segment(Path::new("x"), &bytes, true, |e| {
            seen.push((e.user_id.clone(), e.is_erasure()))
        })
        .unwrap();
        assert_eq!((r.records, r.events), (3, 3));
        let want = [("a", false), ("b", false), ("a", true), ("a", false)];
        let want: Vec<(String, bool)> = want.iter().map(|(u, x)| (u.to_string(), *x)).collect();
        assert_eq!(seen, want);
        assert_eq!(valid_records(&bytes).len(), 3);
    }

    #[test]
    fn records_round_trip() {
        let bytes = log_of(&[vec![ev("a", 1), ev("b", 2)], vec![ev("c", 3)]]);
        let mut seen = Vec::new();
        let r = replay_segment(Path::new("x"), &bytes, true, |e| seen.push(e.user_id)).unwrap();
        assert_eq!(seen, vec!["a", "b", "c"]);
        assert_eq!(
            (r.records, r.events, r.valid_len, r.torn),
            (2, 3, bytes.len() as u64, None)
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_but_only_in_the_last_segment() {
        let bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2)]]);
        let first_len = encode_record(&[ev("a", 1)]).unwrap().len();
        for cut in [first_len + 3, first_len + 9, bytes.len() - 1] {
            let mut seen = 0;
            let r = replay_segment(Path::new("x"), &bytes[..cut], true, |_| seen += 1).unwrap();
            assert!(r.torn.is_some());
            assert_eq!((seen, r.valid_len), (1, first_len as u64));
            assert!(replay_segment(Path::new("x"), &bytes[..cut], false, |_| ()).is_err());
        }
        // A zero-filled tail (the file grew but the data never landed) is torn too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0u8; 64]);
        assert!(replay_segment(Path::new("x"), &zeros, true, |_| ())
            .unwrap()
            .torn
            .is_some());
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
        assert!(replay_segment(Path::new("x"), &bytes, true, |_| ())
            .unwrap()
            .torn
            .is_some());
    }

    #[test]
    fn a_flipped_length_byte_followed_by_valid_records_is_damage_not_a_torn_tail() {
        let records: Vec<Vec<UserEvent>> = (0..20).map(|i| vec![ev("u", i)]).collect();
        let bytes = log_of(&records);
        for at in [3usize, 2, 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x80;
            let e = replay_segment(Path::new("wal-x"), &damaged, true, |_| ()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("wal-x") && text.contains("byte 0"), "{text}");
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid logs with arbitrary damage: never a panic; every outcome
        /// is replayed records, a torn tail (last segment only), or one of the documented
        /// corruption errors naming the offset.
        #[test]
        fn the_record_reader_never_panics_and_reports_each_bad_input(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((0usize..4096, 1u8..=255), 0..4),
            cut in 0usize..4096,
            last in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = log_of(&[vec![ev("a", 1)], vec![ev("b", 2), ev("c", 3)], vec![ev("d", 4)]]);
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            bytes.truncate(cut.max(1));
            bytes.extend_from_slice(&noise);
            for input in [&bytes[..], &noise[..]] {
                match replay_segment(Path::new("x"), input, last, |_| ()) {
                    Ok(r) => {
                        proptest::prop_assert!(r.valid_len as usize <= input.len());
                        proptest::prop_assert!(r.torn.is_none() || last);
                        proptest::prop_assert_eq!(r.torn.is_none(), r.valid_len as usize == input.len());
                    }
                    Err(StateError::DamagedRecord { offset, next_valid, .. }) => {
                        proptest::prop_assert!(offset < next_valid && next_valid < input.len());
                    }
                    Err(StateError::TornMidLog { offset, .. }) => {
                        proptest::prop_assert!(!last && offset < input.len());
                    }
                    Err(StateError::UndecodableRecord { offset, .. }) => {
                        proptest::prop_assert!(offset < input.len());
                    }
                    Err(e) => proptest::prop_assert!(false, "undocumented error {e}"),
                }
                let _ = valid_records(input);
            }
        }
    }
}
