//! What both formats share: the known columns, header resolution, and the field parsers.
//!
//! Field parsers take the raw bytes of one field and answer with a value or a [`Cause`] (a
//! one-byte code); the format readers attach file, line and column only when a row is bad, so
//! the good-row path allocates nothing.

use super::time::{self, TimeError};
use crate::features::vocabulary::{KindResolver, KindTally, Resolved, UnknownKinds};
use crate::features::{hash_str, Channel, Event, EventKind, Timestamp, DEFAULT_EARLIEST_EVENT};

/// The resolver of readers given no mapping: canonical names only, unknown names an error.
pub(crate) static CANONICAL: KindResolver = KindResolver::CANONICAL;

/// A column of the data contract (events and users tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Col {
    UserId,
    Ts,
    Kind,
    Amount,
    WatchSeconds,
    RoomId,
    Category,
    RegisteredAt,
    Persona,
    OrderId,
    Channel,
}

impl Col {
    const COUNT: usize = 11;

    /// The contract's name (headers match it case-insensitively).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Col::UserId => "user_id",
            Col::Ts => "ts",
            Col::Kind => "kind",
            Col::Amount => "amount",
            Col::WatchSeconds => "watch_seconds",
            Col::RoomId => "room_id",
            Col::Category => "category",
            Col::RegisteredAt => "registered_at",
            Col::Persona => "persona",
            Col::OrderId => "order_id",
            Col::Channel => "channel",
        }
    }
}

/// Which of the two tables a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableKind {
    Events,
    Users,
}

impl TableKind {
    pub(crate) fn required(self) -> &'static [Col] {
        match self {
            TableKind::Events => &[Col::UserId, Col::Ts, Col::Kind],
            TableKind::Users => &[Col::UserId, Col::RegisteredAt],
        }
    }

    pub(crate) fn optional(self) -> &'static [Col] {
        match self {
            TableKind::Events => &[
                Col::Amount,
                Col::WatchSeconds,
                Col::RoomId,
                Col::Category,
                Col::OrderId,
                Col::Channel,
            ],
            TableKind::Users => &[Col::Persona],
        }
    }
}

/// A header that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// A required column is not in the header.
    Missing(Col),
    /// A known column appears twice (0-based positions).
    Duplicate {
        col: Col,
        first: usize,
        second: usize,
    },
}

/// Where each known column sits in a file (0-based), if it is there, and the earliest event
/// time the file's events are held to (the readers' shared rules travel with the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    at: [Option<usize>; Col::COUNT],
    /// Number of columns in the header.
    pub(crate) width: usize,
    /// Events before this are bad rows ([`Cause::BeforeEarliest`]); set by the reader from
    /// `ReadOptions::earliest`, [`DEFAULT_EARLIEST_EVENT`] until then.
    pub(crate) earliest: Timestamp,
    /// The kind mapping events are read with; set by the reader from `ReadOptions::kinds`.
    pub(crate) kinds: std::sync::Arc<KindResolver>,
}

impl Layout {
    /// Matches header names to the table's columns: case-insensitive, surrounding whitespace
    /// ignored, unknown names ignored.
    pub(crate) fn resolve<S: AsRef<str>>(
        header: &[S],
        table: TableKind,
    ) -> Result<Layout, HeaderError> {
        let mut at = [None; Col::COUNT];
        for (i, name) in header.iter().enumerate() {
            let name = name.as_ref().trim();
            let known = table
                .required()
                .iter()
                .chain(table.optional())
                .find(|c| c.name().eq_ignore_ascii_case(name));
            if let Some(&col) = known {
                if let Some(first) = at[col as usize] {
                    return Err(HeaderError::Duplicate {
                        col,
                        first,
                        second: i,
                    });
                }
                at[col as usize] = Some(i);
            }
        }
        let layout = Layout {
            at,
            width: header.len(),
            earliest: DEFAULT_EARLIEST_EVENT,
            kinds: std::sync::Arc::new(KindResolver::CANONICAL),
        };
        for &col in table.required() {
            layout.required(col)?;
        }
        Ok(layout)
    }

    pub(crate) fn get(&self, col: Col) -> Option<usize> {
        self.at[col as usize]
    }

    pub(crate) fn required(&self, col: Col) -> Result<usize, HeaderError> {
        self.get(col).ok_or(HeaderError::Missing(col))
    }

    /// The columns that are present, in file order.
    pub(crate) fn present(&self) -> Vec<(usize, Col)> {
        let all = [
            Col::UserId,
            Col::Ts,
            Col::Kind,
            Col::Amount,
            Col::WatchSeconds,
            Col::RoomId,
            Col::Category,
            Col::RegisteredAt,
            Col::Persona,
            Col::OrderId,
            Col::Channel,
        ];
        let mut v: Vec<(usize, Col)> = all
            .iter()
            .filter_map(|&c| self.get(c).map(|i| (i, c)))
            .collect();
        v.sort_unstable_by_key(|&(i, _)| i);
        v
    }
}

/// Why one field of a row was refused (the reader adds where).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Timestamp,
    /// An event time before the earliest accepted one ([`EventFields::earliest`]).
    BeforeEarliest,
    NegativeAmount,
    MissingAmount,
    NonFiniteAmount,
    /// Finite, but beyond the table's f32.
    AmountTooLarge,
    BadAmount,
    BadWatchSeconds,
    UnknownKind,
    EmptyUserId,
    InvalidUtf8,
    DuplicateUser,
    /// A channel that is not UTF-8, longer than [`MAX_CHANNEL_BYTES`] or holds control
    /// characters.
    BadChannel,
}

/// Longest channel value accepted (a name, not a description).
pub(crate) const MAX_CHANNEL_BYTES: usize = 64;

/// A bad row: which field and why, or a row of the wrong width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Field { col: Col, cause: Cause },
    FieldCount { found: usize },
}

impl Fault {
    pub(crate) fn at(col: Col) -> impl Fn(Cause) -> Fault {
        move |cause| Fault::Field { col, cause }
    }
}

/// The fields of one events row after the user id, as a format reader finds them (CSV text,
/// Parquet columns of any accepted type): each checked, or the [`Cause`] it is refused for.
pub(crate) trait EventFields {
    /// The earliest accepted event time (the file's [`Layout::earliest`]).
    fn earliest(&self) -> Timestamp;
    fn ts(&self) -> Result<Timestamp, Cause>;
    /// The raw `kind` field, resolved with [`EventFields::kinds`].
    fn kind_field(&self) -> &[u8];
    /// The kind mapping the file is read with.
    fn kinds(&self) -> &KindResolver {
        &CANONICAL
    }
    /// The amount, checked against the row's kind ([`check_amount`]).
    fn amount(&self, kind: EventKind) -> Result<f64, Cause>;
    fn watch_seconds(&self) -> Result<u32, Cause>;
    fn room(&self) -> Result<u32, Cause>;
    fn category(&self) -> Result<u32, Cause>;
    /// `hash_str(order_id)`, 0 when blank or absent.
    fn order(&self) -> Result<u32, Cause> {
        Ok(0)
    }
    /// The raw `category` field (empty when absent), for the category names.
    fn category_raw(&self) -> &[u8] {
        &[]
    }
    /// The raw `channel` field (empty when absent).
    fn channel_raw(&self) -> &[u8] {
        &[]
    }
    /// The raw `room_id` field (empty when absent), for the room ids of the interests.
    fn room_raw(&self) -> &[u8] {
        &[]
    }
}

/// A channel field: blank is unspecified; any other well-formed text a known channel or
/// `Other` (module docs of [`crate::features::channel`]).
#[inline]
pub(crate) fn channel(b: &[u8]) -> Result<Channel, Cause> {
    if b.is_empty() {
        return Ok(Channel::Unspecified);
    }
    let s = std::str::from_utf8(b).map_err(|_| Cause::BadChannel)?;
    if s.len() > MAX_CHANNEL_BYTES || s.chars().any(char::is_control) {
        return Err(Cause::BadChannel);
    }
    Ok(Channel::parse(s))
}

/// An events row's event, or `None` for a row dropped on purpose (its kind is ignored, or
/// unmapped under `unknown_kinds = "skip"`); every row's kind is counted in `tally`. The fields
/// are checked in the contract's column order, so a bad row fails on the same field whichever
/// format (and parser) reads it; a dropped row's fields after `kind` are not checked. An
/// unmapped kind under `unknown_kinds = "error"` is [`Cause::UnknownKind`], which ends the read
/// whatever the bad-row budget (the reader then counts its rows for the message).
#[inline]
pub(crate) fn event(row: &impl EventFields, tally: &mut KindTally) -> Result<Option<Event>, Fault> {
    let ts = row.ts().map_err(Fault::at(Col::Ts))?;
    if ts < row.earliest() {
        return Err(Fault::Field {
            col: Col::Ts,
            cause: Cause::BeforeEarliest,
        });
    }
    let raw = row.kind_field();
    let resolver = row.kinds();
    let resolved = kind(raw, resolver).map_err(Fault::at(Col::Kind))?;
    let kind = match resolved {
        Resolved::Kind(k, _) => k,
        Resolved::Unknown if resolver.unknown == UnknownKinds::Error => {
            return Err(Fault::Field {
                col: Col::Kind,
                cause: Cause::UnknownKind,
            })
        }
        Resolved::Unknown | Resolved::Ignored(_) => {
            tally.count(resolved, raw);
            return Ok(None);
        }
    };
    let amount = row.amount(kind).map_err(Fault::at(Col::Amount))?;
    let watch_seconds = row.watch_seconds().map_err(Fault::at(Col::WatchSeconds))?;
    let room = row.room().map_err(Fault::at(Col::RoomId))?;
    let category = row.category().map_err(Fault::at(Col::Category))?;
    let order = row.order().map_err(Fault::at(Col::OrderId))?;
    let ch = channel(row.channel_raw()).map_err(Fault::at(Col::Channel))?;
    tally.count(resolved, raw);
    tally.count_channel(ch, row.channel_raw());
    if category != 0 {
        tally.note_category(category, row.category_raw());
    }
    if room != 0 {
        tally.note_room(room, row.room_raw());
    }
    Ok(Some(Event {
        ts,
        kind,
        amount,
        watch_seconds,
        room,
        category,
        order,
        channel: ch as u8,
    }))
}

#[inline]
pub(crate) fn utf8(b: &[u8]) -> Result<&str, Cause> {
    std::str::from_utf8(b).map_err(|_| Cause::InvalidUtf8)
}

/// A user id: any non-blank UTF-8 text, kept as written.
#[inline]
pub(crate) fn user_id(b: &[u8]) -> Result<&str, Cause> {
    let s = utf8(b)?;
    if s.trim().is_empty() {
        return Err(Cause::EmptyUserId);
    }
    Ok(s)
}

#[inline]
pub(crate) fn timestamp(b: &[u8]) -> Result<Timestamp, Cause> {
    time::parse_timestamp(b).map_err(|e| match e {
        TimeError::Unparseable => Cause::Timestamp,
        TimeError::InvalidUtf8 => Cause::InvalidUtf8,
    })
}

/// An optional timestamp (users' `registered_at`): blank is `None`.
#[inline]
pub(crate) fn optional_timestamp(b: &[u8]) -> Result<Option<Timestamp>, Cause> {
    if b.trim_ascii().is_empty() {
        return Ok(None);
    }
    timestamp(b).map(Some)
}

/// A kind field resolved with `r`: canonical names are compared as bytes (ASCII); anything
/// else takes the mapping's text path. A field that is not UTF-8 is [`Cause::InvalidUtf8`].
#[inline]
pub(crate) fn kind(b: &[u8], r: &KindResolver) -> Result<Resolved, Cause> {
    match r.resolve_bytes(b) {
        Resolved::Unknown => {
            utf8(b)?;
            Ok(Resolved::Unknown)
        }
        known => Ok(known),
    }
}

/// An amount field as text: blank is `None`; otherwise a decimal (range checked by
/// [`check_amount`]).
#[inline]
pub(crate) fn amount_text(b: &[u8]) -> Result<Option<f64>, Cause> {
    let b = b.trim_ascii();
    if b.is_empty() {
        return Ok(None);
    }
    utf8(b)?
        .parse::<f64>()
        .map(Some)
        .map_err(|_| Cause::BadAmount)
}

/// The contract's rules for an amount: orders and refunds need one; any amount given is finite
/// (also as the table's f32) and ≥ 0. Other kinds keep what they carry (a gift's value, say);
/// the feature code only sums order and refund amounts.
#[inline]
pub(crate) fn check_amount(kind: EventKind, v: Option<f64>) -> Result<f64, Cause> {
    match v {
        None if matches!(kind, EventKind::Order | EventKind::Refund) => Err(Cause::MissingAmount),
        None => Ok(0.0),
        Some(v) if !v.is_finite() => Err(Cause::NonFiniteAmount),
        Some(v) if !(v as f32).is_finite() => Err(Cause::AmountTooLarge),
        Some(v) if v < 0.0 => Err(Cause::NegativeAmount),
        // `+ 0.0` turns -0 into 0.
        Some(v) => Ok(v + 0.0),
    }
}

/// A watch time as text: blank is 0; otherwise decimal digits that fit in 32 bits.
#[inline]
pub(crate) fn watch_text(b: &[u8]) -> Result<u32, Cause> {
    let b = b.trim_ascii();
    let digits = b.strip_prefix(b"+").unwrap_or(b);
    if b.is_empty() {
        return Ok(0);
    }
    if digits.is_empty() || digits.len() > 10 {
        return Err(Cause::BadWatchSeconds);
    }
    let mut n: u64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(Cause::BadWatchSeconds);
        }
        n = n * 10 + u64::from(d);
    }
    u32::try_from(n).map_err(|_| Cause::BadWatchSeconds)
}

/// A watch time given as an integer.
#[inline]
pub(crate) fn check_watch(v: i128) -> Result<u32, Cause> {
    u32::try_from(v).map_err(|_| Cause::BadWatchSeconds)
}

/// A room or category: hashed, blank is 0.
#[inline]
pub(crate) fn hashed(b: &[u8]) -> Result<u32, Cause> {
    if b.is_empty() {
        return Ok(0);
    }
    Ok(hash_str(utf8(b)?))
}

/// A persona (users table): blank is `None`.
#[inline]
pub(crate) fn persona(b: &[u8]) -> Result<Option<&str>, Cause> {
    let s = utf8(b)?.trim();
    Ok((!s.is_empty()).then_some(s))
}

/// At most 64 characters of a field, for messages.
pub(crate) fn shown(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An events row with the given time and earliest accepted time (a view, no other fields).
    struct Row {
        ts: Result<Timestamp, Cause>,
        earliest: Timestamp,
    }

    impl EventFields for Row {
        fn earliest(&self) -> Timestamp {
            self.earliest
        }
        fn ts(&self) -> Result<Timestamp, Cause> {
            self.ts
        }
        fn kind_field(&self) -> &[u8] {
            b"view"
        }
        fn amount(&self, kind: EventKind) -> Result<f64, Cause> {
            check_amount(kind, None)
        }
        fn watch_seconds(&self) -> Result<u32, Cause> {
            Ok(0)
        }
        fn room(&self) -> Result<u32, Cause> {
            Ok(0)
        }
        fn category(&self) -> Result<u32, Cause> {
            Ok(0)
        }
    }

    proptest::proptest! {
        /// Any time against any earliest accepted time: an event at or after it, or the
        /// documented fault on `ts`; never a panic.
        #[test]
        fn any_time_gives_an_event_at_or_after_the_earliest_or_a_fault_on_ts(
            ts: i64,
            earliest in proptest::prop_oneof![proptest::prelude::any::<i64>(), proptest::prelude::Just(DEFAULT_EARLIEST_EVENT)],
        ) {
            match event(&Row { ts: Ok(ts), earliest }, &mut KindTally::default()) {
                Ok(None) => proptest::prop_assert!(false, "a view is never dropped"),
                Ok(Some(e)) => proptest::prop_assert!(e.ts >= earliest && e.ts == ts),
                Err(f) => {
                    proptest::prop_assert!(ts < earliest);
                    proptest::prop_assert_eq!(f, Fault::Field { col: Col::Ts, cause: Cause::BeforeEarliest });
                }
            }
        }

        /// Any text in the `ts` column: parsed and held to the default earliest time, or a fault
        /// on `ts`.
        #[test]
        fn any_time_text_gives_an_event_or_a_fault_on_ts(text in "[0-9TZ:+.-]{0,25}") {
            let row = Row { ts: timestamp(text.as_bytes()), earliest: DEFAULT_EARLIEST_EVENT };
            match event(&row, &mut KindTally::default()) {
                Ok(None) => proptest::prop_assert!(false, "a view is never dropped"),
                Ok(Some(e)) => proptest::prop_assert!(e.ts >= DEFAULT_EARLIEST_EVENT),
                Err(Fault::Field { col, .. }) => proptest::prop_assert_eq!(col, Col::Ts),
                Err(f) => proptest::prop_assert!(false, "{:?}", f),
            }
        }
    }

    #[test]
    fn kinds_read_from_bytes_as_from_text() {
        let cases: [&[u8]; 12] = [
            b"view",
            b"ORDER",
            b" Like ",
            b"\tshare",
            "\u{3000}gift".as_bytes(),
            b"follow\r",
            b"views",
            b"",
            b"  ",
            b"vi\xffew",
            b"comment\xff",
            "\u{a0}comment\u{a0}".as_bytes(),
        ];
        let kind = |b: &[u8]| match super::kind(b, &CANONICAL) {
            Ok(Resolved::Kind(k, _)) => Ok(k),
            Ok(_) => Err(Cause::UnknownKind),
            Err(c) => Err(c),
        };
        for b in cases {
            let full = utf8(b).and_then(|s| s.parse::<EventKind>().map_err(|_| Cause::UnknownKind));
            assert_eq!(kind(b), full, "{:?}", String::from_utf8_lossy(b));
        }
        assert_eq!(kind(b" Like "), Ok(EventKind::Like));
        assert_eq!(kind("\u{3000}gift".as_bytes()), Ok(EventKind::Gift));
        assert_eq!(kind(b"views"), Err(Cause::UnknownKind));
        assert_eq!(kind(b"vi\xffew"), Err(Cause::InvalidUtf8));
    }

    #[test]
    fn headers_resolve_case_insensitively_in_any_order() {
        let l = Layout::resolve(
            &["extra", " KIND", "Ts", "user_id", "Amount"],
            TableKind::Events,
        )
        .unwrap();
        assert_eq!(
            (l.get(Col::UserId), l.get(Col::Ts), l.get(Col::Kind)),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!(l.get(Col::Amount), Some(4));
        assert_eq!(l.get(Col::RoomId), None);
        assert_eq!(l.width, 5);
        assert_eq!(
            Layout::resolve(&["user_id", "kind"], TableKind::Events),
            Err(HeaderError::Missing(Col::Ts))
        );
        assert_eq!(
            Layout::resolve(&["user_id", "ts", "kind", "TS"], TableKind::Events),
            Err(HeaderError::Duplicate {
                col: Col::Ts,
                first: 1,
                second: 3
            })
        );
    }

    #[test]
    fn amounts_follow_the_contract() {
        use EventKind::*;
        assert_eq!(
            check_amount(Order, amount_text(b"12.50").unwrap()),
            Ok(12.5)
        );
        assert_eq!(
            check_amount(Order, amount_text(b"").unwrap()),
            Err(Cause::MissingAmount)
        );
        assert_eq!(check_amount(View, amount_text(b" ").unwrap()), Ok(0.0));
        assert_eq!(check_amount(Gift, amount_text(b"3").unwrap()), Ok(3.0));
        assert_eq!(
            check_amount(Order, amount_text(b"-1").unwrap()),
            Err(Cause::NegativeAmount)
        );
        assert_eq!(
            check_amount(Order, amount_text(b"-0").unwrap()).map(f64::to_bits),
            Ok(0)
        );
        for s in ["NaN", "inf", "-inf"] {
            assert_eq!(
                check_amount(Order, amount_text(s.as_bytes()).unwrap()),
                Err(Cause::NonFiniteAmount),
                "{s}"
            );
        }
        for s in ["1e300", "-1e300"] {
            assert_eq!(
                check_amount(Order, amount_text(s.as_bytes()).unwrap()),
                Err(Cause::AmountTooLarge),
                "{s}"
            );
        }
        assert_eq!(amount_text(b"12,5"), Err(Cause::BadAmount));
        assert_eq!(amount_text(b"\xff"), Err(Cause::InvalidUtf8));
    }

    #[test]
    fn watch_seconds_are_non_negative_32_bit_integers() {
        assert_eq!(watch_text(b""), Ok(0));
        assert_eq!(watch_text(b" 42 "), Ok(42));
        assert_eq!(watch_text(b"4294967295"), Ok(u32::MAX));
        for bad in ["-1", "4294967296", "1.5", "+", "x", "99999999999"] {
            assert_eq!(
                watch_text(bad.as_bytes()),
                Err(Cause::BadWatchSeconds),
                "{bad}"
            );
        }
        assert_eq!(check_watch(-1), Err(Cause::BadWatchSeconds));
        assert_eq!(check_watch(7), Ok(7));
    }

    #[test]
    fn user_ids_must_not_be_blank_and_long_values_are_truncated() {
        assert_eq!(user_id(b"u1"), Ok("u1"));
        assert_eq!(user_id(b"  "), Err(Cause::EmptyUserId));
        assert_eq!(user_id(b"\xc3"), Err(Cause::InvalidUtf8));
        let long = "é".repeat(100);
        let s = shown(long.as_bytes());
        assert_eq!(s.chars().count(), 65);
        assert!(s.ends_with('…'));
        assert_eq!(shown(b"short"), "short");
    }
}
