//! Event vocabularies: how a platform's kind names become the contract's kinds.
//!
//! A [`KindMapping`] is written in the training configuration (`[events]`: `kinds`, `ignore`,
//! `unknown_kinds`), stored in the bundle manifest, and read back by the server, so that a file
//! and `RecordEvents` resolve a kind name the same way. Matching trims the name and ignores
//! ASCII case. The order of resolution: an entry of `kinds` (which may also rename a canonical
//! name), then the `ignore` list, then the canonical names themselves; anything else is
//! *unmapped*: an error by default (naming the kind, its row count and the key that would map or
//! ignore it), or a counted, reported skip with `unknown_kinds = "skip"`.

use super::channel::Channel;
use super::event::EventKind;
use super::interests::CategoryNames;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The configuration keys, for messages that tell the user what to write.
pub const KINDS_KEY: &str = "events.kinds";
pub const IGNORE_KEY: &str = "events.ignore";
pub const UNKNOWN_KEY: &str = "events.unknown_kinds";

/// What to do with a kind name that is neither mapped, ignored nor canonical.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownKinds {
    /// Stop (training) or refuse the event (server): a typo must not silently drop data.
    #[default]
    Error,
    /// Skip the row, counted and reported per kind name.
    Skip,
}

/// Source kind name → canonical kind, an ignore list, and the policy for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindMapping {
    /// `source name = "canonical kind"`, e.g. `pay_success = "order"`.
    pub kinds: BTreeMap<String, EventKind>,
    /// Source names whose rows are dropped on purpose (counted, reported, never an error).
    pub ignore: Vec<String>,
    pub unknown_kinds: UnknownKinds,
}

/// What one kind name became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// A canonical kind, with where it came from.
    Kind(EventKind, Via),
    /// On the ignore list (index into it).
    Ignored(usize),
    /// Unmapped.
    Unknown,
}

/// How a name reached its canonical kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// It is the canonical name.
    Canonical,
    /// An entry of `kinds` (index in the map's order).
    Mapped(usize),
}

/// A mapping prepared for resolving names row by row: lower-cased keys, nothing allocated per
/// row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindResolver {
    kinds: Vec<(String, EventKind)>,
    ignore: Vec<String>,
    pub unknown: UnknownKinds,
}

/// Why a mapping cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("{IGNORE_KEY}: {0:?} is also mapped in {KINDS_KEY}")]
    MappedAndIgnored(String),
    #[error("{KINDS_KEY}: a kind name must not be blank")]
    Blank,
    #[error("{KINDS_KEY}: {0:?} is written twice (names match ignoring case and spaces)")]
    Duplicate(String),
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

impl KindMapping {
    /// Checks the mapping (no blank or duplicate names, nothing both mapped and ignored) and
    /// prepares it for resolving.
    pub fn resolver(&self) -> Result<KindResolver, MappingError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut kinds = Vec::with_capacity(self.kinds.len());
        for (k, &v) in &self.kinds {
            let n = norm(k);
            if n.is_empty() {
                return Err(MappingError::Blank);
            }
            if !seen.insert(n.clone()) {
                return Err(MappingError::Duplicate(k.clone()));
            }
            kinds.push((n, v));
        }
        let mut ignore = Vec::with_capacity(self.ignore.len());
        for k in &self.ignore {
            let n = norm(k);
            if n.is_empty() {
                return Err(MappingError::Blank);
            }
            if !seen.insert(n.clone()) {
                return Err(MappingError::MappedAndIgnored(k.clone()));
            }
            ignore.push(n);
        }
        Ok(KindResolver {
            kinds,
            ignore,
            unknown: self.unknown_kinds,
        })
    }

    /// True for the default: canonical names only, unknown names an error.
    pub fn is_canonical_only(&self) -> bool {
        *self == KindMapping::default()
    }
}

impl KindResolver {
    /// No mapping: canonical names only, unknown names an error.
    pub const CANONICAL: KindResolver = KindResolver {
        kinds: Vec::new(),
        ignore: Vec::new(),
        unknown: UnknownKinds::Error,
    };

    /// Resolves a kind name given as bytes (the readers' fast path: ASCII compared in place).
    #[inline]
    pub fn resolve_bytes(&self, b: &[u8]) -> Resolved {
        let t = b.trim_ascii();
        if self.kinds.is_empty() && self.ignore.is_empty() {
            if let Some(k) = EventKind::ALL
                .into_iter()
                .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(t))
            {
                return Resolved::Kind(k, Via::Canonical);
            }
        }
        match std::str::from_utf8(b) {
            Ok(s) => self.resolve(s),
            Err(_) => Resolved::Unknown,
        }
    }

    /// Resolves a kind name (module docs for the order of the rules).
    pub fn resolve(&self, s: &str) -> Resolved {
        let t = s.trim();
        let eq = |n: &String| n.eq_ignore_ascii_case(t) || (!t.is_ascii() && *n == norm(t));
        if let Some(i) = self.kinds.iter().position(|(n, _)| eq(n)) {
            return Resolved::Kind(self.kinds[i].1, Via::Mapped(i));
        }
        if let Some(i) = self.ignore.iter().position(eq) {
            return Resolved::Ignored(i);
        }
        match EventKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(t))
        {
            Some(k) => Resolved::Kind(k, Via::Canonical),
            None => Resolved::Unknown,
        }
    }

    /// The number of mapped names (for tallies indexed by [`Via::Mapped`]).
    pub fn mapped_len(&self) -> usize {
        self.kinds.len()
    }

    pub fn ignored_len(&self) -> usize {
        self.ignore.len()
    }

    /// The normalised name of mapping entry `i`.
    pub fn mapped_name(&self, i: usize) -> (&str, EventKind) {
        (&self.kinds[i].0, self.kinds[i].1)
    }

    pub fn ignored_name(&self, i: usize) -> &str {
        &self.ignore[i]
    }
}

/// What a source kind became, in the report and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindFate {
    /// Read as this canonical kind.
    Kind(EventKind),
    /// Dropped: on the ignore list.
    Ignored,
    /// Dropped: unmapped, skipped under `unknown_kinds = "skip"`.
    Skipped,
}

/// One source kind seen in the data: its name (as first written), rows, and fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSeen {
    pub source: String,
    pub rows: u64,
    pub became: KindFate,
}

/// Rows per source kind name while reading, without allocating per row; also what the
/// readers learn of the other vocabularies: rows per channel, the unknown channel values, and
/// the category names (by hash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindTally {
    canonical: [u64; EventKind::ALL.len()],
    mapped: Vec<u64>,
    ignored: Vec<u64>,
    /// Unmapped names (first spelling) and their rows.
    unknown: Vec<(String, u64)>,
    /// Rows per channel code ([`Channel`]).
    channels: [u64; 7],
    /// Channel values read as `other` (trimmed; the first [`MAX_UNKNOWN_CHANNELS`]) and rows.
    unknown_channels: Vec<(String, u64)>,
    /// Category names by hash.
    categories: CategoryNames,
    /// Hashes whose name is known already (so the row path skips the map).
    category_cache: CategoryCache,
    /// Room ids by hash (the names of the rooms in the interests), and their cache.
    rooms: CategoryNames,
    room_cache: CategoryCache,
}

/// Unknown channel values listed by name at most (the rest are counted in `other`).
pub const MAX_UNKNOWN_CHANNELS: usize = 100;

/// The hashes noted so far (an exact open-addressing set, `0` an empty slot), so that a row
/// whose category or room is known already costs a probe, not a map lookup. At most
/// [`KNOWN_HASHES_MAX`] are kept; rows of further hashes take the map lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CategoryCache {
    slots: Vec<u32>,
    len: usize,
}

/// Hashes a [`CategoryCache`] holds at most (4 MiB of slots at most).
const KNOWN_HASHES_MAX: usize = 1 << 19;

impl CategoryCache {
    fn slot(hash: u32, mask: usize) -> usize {
        ((u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 40) as usize & mask
    }

    /// Whether `hash` (not 0) was seen before; remembers it if not (and there is room).
    #[inline]
    fn seen(&mut self, hash: u32) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![0; 256];
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::slot(hash, mask);
        loop {
            match self.slots[i] {
                h if h == hash => return true,
                0 => break,
                _ => i = (i + 1) & mask,
            }
        }
        if self.len >= KNOWN_HASHES_MAX {
            return false;
        }
        self.slots[i] = hash;
        self.len += 1;
        if self.len * 4 > self.slots.len() * 3 {
            self.grow();
        }
        false
    }

    #[cold]
    fn grow(&mut self) {
        let old = std::mem::replace(&mut self.slots, vec![0; 0]);
        self.slots = vec![0; old.len() * 2];
        let mask = self.slots.len() - 1;
        for h in old.into_iter().filter(|&h| h != 0) {
            let mut i = Self::slot(h, mask);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = h;
        }
    }
}

impl KindTally {
    /// Counts one row of kind name `raw` resolved as `r`.
    #[inline]
    pub fn count(&mut self, r: Resolved, raw: &[u8]) {
        match r {
            Resolved::Kind(k, Via::Canonical) => self.canonical[k as usize] += 1,
            Resolved::Kind(_, Via::Mapped(i)) => bump(&mut self.mapped, i),
            Resolved::Ignored(i) => bump(&mut self.ignored, i),
            Resolved::Unknown => self.count_unknown(raw),
        }
    }

    #[cold]
    fn count_unknown(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let t = text.trim();
        match self
            .unknown
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(t) || norm(n) == norm(t))
        {
            Some((_, c)) => *c += 1,
            None => self.unknown.push((t.to_string(), 1)),
        }
    }

    /// Counts one row of channel `c` (raw text `raw`; unknown values are listed).
    #[inline]
    pub fn count_channel(&mut self, c: Channel, raw: &[u8]) {
        self.channels[c as usize] += 1;
        if c == Channel::Other {
            self.count_unknown_channel(raw);
        }
    }

    #[cold]
    fn count_unknown_channel(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let t = text.trim().to_lowercase();
        let full = self.unknown_channels.len() >= MAX_UNKNOWN_CHANNELS;
        match self.unknown_channels.iter_mut().find(|(n, _)| *n == t) {
            Some((_, c)) => *c += 1,
            None if !full => self.unknown_channels.push((t, 1)),
            None => {}
        }
    }

    /// Records the name of category `hash` (the raw field as the readers hash it).
    #[inline]
    pub fn note_category(&mut self, hash: u32, raw: &[u8]) {
        if hash == 0 || self.category_cache.seen(hash) {
            return;
        }
        if self.categories.get(hash).is_none() {
            self.categories.note(hash, &String::from_utf8_lossy(raw));
        }
    }

    /// The category names the readers saw.
    pub fn categories(&self) -> &CategoryNames {
        &self.categories
    }

    /// Records the id of room `hash` (the raw field as the readers hash it).
    #[inline]
    pub fn note_room(&mut self, hash: u32, raw: &[u8]) {
        if hash == 0 || self.room_cache.seen(hash) {
            return;
        }
        if self.rooms.get(hash).is_none() {
            self.rooms.note(hash, &String::from_utf8_lossy(raw));
        }
    }

    /// The room ids the readers saw.
    pub fn rooms(&self) -> &CategoryNames {
        &self.rooms
    }

    /// Rows per channel, by name (live includes unspecified), channels with rows only.
    pub fn channel_rows(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for (code, &rows) in self.channels.iter().enumerate() {
            if rows == 0 {
                continue;
            }
            let name = Channel::from_code(code as u8).as_str();
            match out.iter_mut().find(|x| x.0 == name) {
                Some(x) => x.1 += rows,
                None => out.push((name, rows)),
            }
        }
        out
    }

    /// Channel values read as `other`, most rows first.
    pub fn unknown_channels(&self) -> Vec<(String, u64)> {
        let mut v = self.unknown_channels.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Adds another reader's counts (parallel parts of one file).
    pub fn merge(&mut self, other: &KindTally) {
        for (a, b) in self.channels.iter_mut().zip(other.channels) {
            *a += b;
        }
        for (n, c) in &other.unknown_channels {
            let full = self.unknown_channels.len() >= MAX_UNKNOWN_CHANNELS;
            match self.unknown_channels.iter_mut().find(|(m, _)| m == n) {
                Some((_, d)) => *d += c,
                None if !full => self.unknown_channels.push((n.clone(), *c)),
                None => {}
            }
        }
        self.categories.merge(&other.categories);
        self.rooms.merge(&other.rooms);
        for (a, b) in self.canonical.iter_mut().zip(other.canonical) {
            *a += b;
        }
        for (i, &c) in other.mapped.iter().enumerate() {
            add(&mut self.mapped, i, c);
        }
        for (i, &c) in other.ignored.iter().enumerate() {
            add(&mut self.ignored, i, c);
        }
        for (n, c) in &other.unknown {
            match self
                .unknown
                .iter_mut()
                .find(|(m, _)| m.eq_ignore_ascii_case(n))
            {
                Some((_, d)) => *d += c,
                None => self.unknown.push((n.clone(), *c)),
            }
        }
    }

    /// Unmapped names and their rows, most rows first.
    pub fn unknown(&self) -> Vec<(String, u64)> {
        let mut v = self.unknown.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Rows dropped on purpose: ignored names, and unmapped ones under `skip`.
    pub fn dropped(&self) -> u64 {
        self.ignored.iter().sum::<u64>() + self.unknown.iter().map(|u| u.1).sum::<u64>()
    }

    /// Every source kind seen, with rows and fate, by name.
    pub fn seen(&self, r: &KindResolver) -> Vec<KindSeen> {
        let mut out = Vec::new();
        for k in EventKind::ALL {
            let rows = self.canonical[k as usize];
            if rows > 0 {
                out.push(KindSeen {
                    source: k.as_str().to_string(),
                    rows,
                    became: KindFate::Kind(k),
                });
            }
        }
        for (i, &rows) in self.mapped.iter().enumerate() {
            if rows > 0 && i < r.mapped_len() {
                let (name, k) = r.mapped_name(i);
                out.push(KindSeen {
                    source: name.to_string(),
                    rows,
                    became: KindFate::Kind(k),
                });
            }
        }
        for (i, &rows) in self.ignored.iter().enumerate() {
            if rows > 0 && i < r.ignored_len() {
                out.push(KindSeen {
                    source: r.ignored_name(i).to_string(),
                    rows,
                    became: KindFate::Ignored,
                });
            }
        }
        for (n, rows) in &self.unknown {
            out.push(KindSeen {
                source: n.clone(),
                rows: *rows,
                became: KindFate::Skipped,
            });
        }
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }
}

fn bump(v: &mut Vec<u64>, i: usize) {
    add(v, i, 1);
}

fn add(v: &mut Vec<u64>, i: usize, c: u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += c;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> KindMapping {
        KindMapping {
            kinds: [
                ("pay_success".to_string(), EventKind::Order),
                ("Enter_Room".to_string(), EventKind::View),
                ("refund".to_string(), EventKind::Refund),
            ]
            .into(),
            ignore: vec!["add_to_cart".into()],
            unknown_kinds: UnknownKinds::Error,
        }
    }

    /// The set of hashes seen only saves map lookups: the names a tally keeps are those
    /// `CategoryNames::note` keeps row by row, also past the name cap and with repeats in any
    /// order, and with more distinct hashes than the set holds.
    #[test]
    fn noting_names_through_the_seen_set_keeps_exactly_what_noting_every_row_keeps() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(17);
        for distinct in [40u32, 5_000, 100_000, KNOWN_HASHES_MAX as u32 + 20_000] {
            let mut tally = KindTally::default();
            let (mut rooms, mut cats) = (CategoryNames::default(), CategoryNames::default());
            for row in 0..(2 * distinct as usize).max(20_000) {
                // Every hash at least once (the first pass), then repeats at random; 0 too.
                let h = if row < distinct as usize {
                    row as u32
                } else {
                    rng.gen_range(0..distinct)
                }
                .wrapping_mul(2_654_435_761);
                let name = format!("n{h}");
                tally.note_room(h, name.as_bytes());
                tally.note_category(h ^ 1, name.as_bytes());
                rooms.note(h, &name);
                cats.note(h ^ 1, &name);
            }
            assert_eq!(tally.rooms(), &rooms, "{distinct}");
            assert_eq!(tally.categories(), &cats, "{distinct}");
        }
    }

    #[test]
    fn names_resolve_by_mapping_then_ignore_then_canonical_ignoring_case_and_spaces() {
        let r = platform().resolver().unwrap();
        assert!(matches!(
            r.resolve(" PAY_success "),
            Resolved::Kind(EventKind::Order, Via::Mapped(_))
        ));
        assert!(matches!(
            r.resolve("enter_room"),
            Resolved::Kind(EventKind::View, _)
        ));
        assert_eq!(r.resolve("Add_To_Cart"), Resolved::Ignored(0));
        assert_eq!(
            r.resolve("like"),
            Resolved::Kind(EventKind::Like, Via::Canonical)
        );
        assert_eq!(r.resolve("thumbs_up"), Resolved::Unknown);
        assert_eq!(r.resolve_bytes(b"thumbs_up"), Resolved::Unknown);
    }

    #[test]
    fn a_name_both_mapped_and_ignored_is_refused() {
        let mut m = platform();
        m.ignore.push("PAY_SUCCESS".into());
        assert_eq!(
            m.resolver(),
            Err(MappingError::MappedAndIgnored("PAY_SUCCESS".into()))
        );
    }

    #[test]
    fn the_tally_reports_every_source_name_with_rows_and_fate() {
        let r = platform().resolver().unwrap();
        let mut t = KindTally::default();
        for name in [
            "pay_success",
            "order",
            "add_to_cart",
            "thumbs_up",
            "Thumbs_Up",
        ] {
            t.count(r.resolve(name), name.as_bytes());
        }
        let mut other = KindTally::default();
        other.count(r.resolve("pay_success"), b"pay_success");
        t.merge(&other);
        assert_eq!(t.unknown(), vec![("thumbs_up".to_string(), 2)]);
        assert_eq!(t.dropped(), 3);
        let seen = t.seen(&r);
        let rows = |s: &str| seen.iter().find(|k| k.source == s).map(|k| k.rows);
        assert_eq!(rows("pay_success"), Some(2));
        assert_eq!(rows("order"), Some(1));
        assert_eq!(rows("add_to_cart"), Some(1));
        assert_eq!(rows("thumbs_up"), Some(2));
    }
}
