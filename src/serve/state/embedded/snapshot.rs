//! The `state.bin` format: `b"TIERST05" | u64 LE length | u32 LE crc32(payload) | payload`, the
//! payload (postcard) being the bundle version the state was seeded from, the first log segment
//! the snapshot does not cover, and every user's aggregate. `TIERST01`, written by binaries
//! before refunds, `TIERST02`, before interests and channels, `TIERST03`, before rooms, and
//! `TIERST04`, before the first order day, hold the aggregates in their earlier layouts
//! ([`UserAggregateV1`] to [`UserAggregateV4`]) and are still read (users then start with no
//! interests and no channel mix, or from `TIERST03` with their three highest categories and no
//! rooms: the rest builds from the events that follow; a buyer from any of them has an unknown
//! first order day, see `crate::features::aggregate`); the next snapshot is written as
//! `TIERST05`.

use super::store::{UserStore, UsersSeq};
use crate::features::{
    UserAggregate, UserAggregateV1, UserAggregateV2, UserAggregateV3, UserAggregateV4,
};
use crate::serve::state::StateError;
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &[u8; 8] = b"TIERST05";
/// The format before refunds, still read.
const MAGIC_V1: &[u8; 8] = b"TIERST01";
/// The format before interests and channels, still read.
const MAGIC_V2: &[u8; 8] = b"TIERST02";
/// The format before rooms, still read.
const MAGIC_V3: &[u8; 8] = b"TIERST03";
/// The format before the first order day, still read.
const MAGIC_V4: &[u8; 8] = b"TIERST04";
/// Magic, length and checksum.
const HEADER: usize = 20;

/// True when `bytes` start like a plaintext snapshot of any format this binary reads (the
/// encrypted-state check refuses those when a key is given).
pub(crate) fn is_plain(bytes: &[u8]) -> bool {
    [MAGIC, MAGIC_V1, MAGIC_V2, MAGIC_V3, MAGIC_V4]
        .iter()
        .any(|m| bytes.starts_with(*m))
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    seeded_from: &'a str,
    wal_gen: u64,
    users: UsersSeq<'a>,
}

/// A decoded `state.bin`.
#[derive(Deserialize)]
pub(crate) struct SnapshotIn {
    pub seeded_from: String,
    /// The first log segment this snapshot does not cover.
    pub wal_gen: u64,
    pub users: Vec<(String, UserAggregate)>,
}

/// Serialises the whole table as of now (read guards on every shard for the time of it).
pub(crate) fn encode_snapshot(
    seeded_from: &str,
    wal_gen: u64,
    store: &UserStore,
) -> Result<Vec<u8>, StateError> {
    let guards = store.all_shards();
    let payload = postcard::to_stdvec(&SnapshotOut {
        seeded_from,
        wal_gen,
        users: UsersSeq(&guards),
    })
    .map_err(StateError::EncodeSnapshot)?;
    drop(guards);
    Ok(frame(MAGIC, &payload))
}

/// `magic`, the payload's length and CRC-32, then the payload: the layout every snapshot format
/// shares (the formats differ in the magic and the payload's aggregate layout).
fn frame(magic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Errors: [`StateError::BadSnapshot`] (bad header, checksum), [`StateError::SnapshotLength`]
/// (payload length differs from the header), [`StateError::UndecodableSnapshot`].
pub(crate) fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<SnapshotIn, StateError> {
    let bad = |what| StateError::BadSnapshot {
        path: path.to_path_buf(),
        what,
    };
    if bytes.len() < HEADER || !is_plain(bytes) {
        return Err(bad("not a tiering state snapshot (bad header)"));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len8);
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(StateError::SnapshotLength {
            path: path.to_path_buf(),
            payload: payload.len(),
            header: len,
        });
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch"));
    }
    let undecodable = |source| StateError::UndecodableSnapshot {
        path: path.to_path_buf(),
        source,
    };
    match &bytes[..8] {
        m if m == MAGIC_V1 => decode_old::<UserAggregateV1>(payload).map_err(undecodable),
        m if m == MAGIC_V2 => decode_old::<UserAggregateV2>(payload).map_err(undecodable),
        m if m == MAGIC_V3 => decode_old::<UserAggregateV3>(payload).map_err(undecodable),
        m if m == MAGIC_V4 => decode_old::<UserAggregateV4>(payload).map_err(undecodable),
        _ => postcard::from_bytes(payload).map_err(undecodable),
    }
}

/// A payload of an earlier format, its aggregates in layout `A`.
fn decode_old<A>(payload: &[u8]) -> Result<SnapshotIn, postcard::Error>
where
    A: serde::de::DeserializeOwned + Into<UserAggregate>,
{
    #[derive(Deserialize)]
    #[serde(bound = "A: serde::de::DeserializeOwned")]
    struct Old<A> {
        seeded_from: String,
        wal_gen: u64,
        users: Vec<(String, A)>,
    }
    let old: Old<A> = postcard::from_bytes(payload)?;
    Ok(SnapshotIn {
        seeded_from: old.seeded_from,
        wal_gen: old.wal_gen,
        users: old
            .users
            .into_iter()
            .map(|(id, a)| (id, a.into()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bytes an earlier binary wrote: one user `u` in the aggregate layout `A`, framed
    /// under `magic`.
    fn old_snapshot<A: Serialize>(
        magic: &[u8],
        seeded_from: &str,
        wal_gen: u64,
        user: A,
    ) -> Vec<u8> {
        #[derive(Serialize)]
        struct Old<'a, A> {
            seeded_from: &'a str,
            wal_gen: u64,
            users: Vec<(String, A)>,
        }
        let payload = postcard::to_stdvec(&Old {
            seeded_from,
            wal_gen,
            users: vec![("u".to_string(), user)],
        })
        .unwrap();
        frame(magic, &payload)
    }

    /// A snapshot an earlier binary wrote (`TIERST01`, aggregates before refunds) still loads.
    #[test]
    fn a_tierst01_snapshot_of_an_earlier_binary_still_loads() {
        let mut agg = UserAggregate::with_registration(Some(1_700_000_000));
        agg.orders = 3;
        agg.spend = 42.0;
        let bytes = old_snapshot(MAGIC_V1, "v1", 5, UserAggregateV1::of(&agg));
        let back = decode_snapshot(Path::new("x"), &bytes).unwrap();
        assert_eq!((back.seeded_from.as_str(), back.wal_gen), ("v1", 5));
        agg.first_order_day = UserAggregate::UNKNOWN_DAY;
        assert_eq!(back.users, vec![("u".to_string(), agg)]);
    }

    /// A snapshot of the previous format (`TIERST02`, refunds but no interests) still loads,
    /// with its refund part, and no interests.
    #[test]
    fn a_tierst02_snapshot_of_the_previous_binary_still_loads() {
        let mut agg = UserAggregate::with_registration(Some(1_700_000_000));
        agg.orders = 3;
        agg.spend = 42.0;
        agg.refunds = 1;
        agg.refunded = 2.0;
        let bytes = old_snapshot(MAGIC_V2, "v2", 7, UserAggregateV2::of(&agg));
        let back = decode_snapshot(Path::new("x"), &bytes).unwrap();
        assert_eq!((back.seeded_from.as_str(), back.wal_gen), ("v2", 7));
        agg.first_order_day = UserAggregate::UNKNOWN_DAY;
        assert_eq!(back.users, vec![("u".to_string(), agg)]);
    }

    /// A buyer of one order (9.0) in room 5, category 6, channel 3: interests, rooms, channel
    /// mix and a first order day all filled.
    fn one_order_in_a_room_and_category() -> UserAggregate {
        use crate::features::{Event, EventKind};
        let mut agg = UserAggregate::default();
        agg.apply(&Event {
            ts: 1_700_000_000,
            kind: EventKind::Order,
            amount: 9.0,
            watch_seconds: 0,
            room: 5,
            category: 6,
            order: 0,
            channel: 3,
        });
        agg
    }

    /// A snapshot of the previous format (`TIERST03`, interests and channels but no rooms)
    /// still loads, with its interests and channel mix, and no rooms.
    #[test]
    fn a_tierst03_snapshot_of_the_previous_binary_still_loads() {
        let agg = one_order_in_a_room_and_category();
        let bytes = old_snapshot(MAGIC_V3, "v3", 9, UserAggregateV3::of(&agg));
        let back = decode_snapshot(Path::new("x"), &bytes).unwrap();
        assert_eq!((back.seeded_from.as_str(), back.wal_gen), ("v3", 9));
        let mut without_rooms = agg;
        without_rooms.rooms = Default::default();
        without_rooms.first_order_day = UserAggregate::UNKNOWN_DAY;
        without_rooms.first_day_cents = 0;
        assert_eq!(back.users, vec![("u".to_string(), without_rooms)]);
        assert!(!agg.rooms.is_empty());
    }

    /// A snapshot of the previous format (`TIERST04`, rooms but no first order day) still
    /// loads, with its rooms; a buyer's first order day is unknown. The next snapshot is
    /// `TIERST05` and keeps the first order day.
    #[test]
    fn a_tierst04_snapshot_of_the_previous_binary_still_loads_with_unknown_first_order_days() {
        let agg = one_order_in_a_room_and_category();
        let bytes = old_snapshot(MAGIC_V4, "v4", 11, UserAggregateV4::of(&agg));
        let back = decode_snapshot(Path::new("x"), &bytes).unwrap();
        assert_eq!((back.seeded_from.as_str(), back.wal_gen), ("v4", 11));
        let (_, got) = &back.users[0];
        assert_eq!(UserAggregateV4::of(got), UserAggregateV4::of(&agg));
        assert!(!got.rooms.is_empty());
        assert_eq!(got.first_order_day, UserAggregate::UNKNOWN_DAY);
        assert_eq!(agg.first_and_repeat_spend(), Some((9.0, 0.0)));
        let store = UserStore::new(2);
        store.insert("u", agg);
        let now = encode_snapshot("v5", 12, &store).unwrap();
        assert_eq!(&now[..8], b"TIERST05");
        let back = decode_snapshot(Path::new("x"), &now).unwrap();
        assert_eq!(back.users, vec![("u".to_string(), agg)]);
    }

    proptest! {
        /// Arbitrary bytes, with or without a valid header, and damaged valid snapshots: never
        /// a panic, always one of the documented errors (or a decoded snapshot).
        #[test]
        fn the_snapshot_reader_never_panics_and_reports_each_bad_input(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            flip in proptest::option::of((0usize..512, 1u8..=255)),
            cut in proptest::option::of(0usize..512),
        ) {
            let store = UserStore::new(2);
            store.insert("u", UserAggregate::default());
            let mut valid = encode_snapshot("v1", 3, &store).unwrap();
            if let Some((at, x)) = flip {
                let n = valid.len();
                valid[at % n] ^= x;
            }
            if let Some(c) = cut {
                valid.truncate(c);
            }
            let framed = frame(MAGIC, &payload);
            for input in [&valid[..], &payload[..], &framed[..]] {
                match decode_snapshot(Path::new("x"), input) {
                    Ok(_)
                    | Err(StateError::BadSnapshot { .. })
                    | Err(StateError::SnapshotLength { .. })
                    | Err(StateError::UndecodableSnapshot { .. }) => {}
                    Err(e) => prop_assert!(false, "undocumented error {e}"),
                }
            }
        }
    }
}
