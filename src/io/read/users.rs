//! Users: the index that finds a row's user without touching the table's hash map, and the sink
//! the users table fills.
//!
//! [`UserIndex`] sits in front of [`EventTable::intern`] (which stays the source of truth and
//! alone allocates): the previous row's user is recognised by one comparison, other short ids
//! by an inline-key hash table with a cheap hash. [`UsersSink`] interns the users table's ids
//! (users listed only there still exist, with no events) and keeps their columns.

use super::fields::{self, Cause, Col, EventFields, Fault};
use crate::features::{EventTable, Timestamp};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Fills the users table's columns into the events table: interns users (users listed only here
/// still exist, with no events), sets `registered_at`, collects personas.
pub(super) struct UsersSink<'t> {
    table: &'t mut EventTable,
    /// Per user index, when the users table has a persona column.
    personas: Option<Vec<Option<String>>>,
    /// Per user index: already listed in the users table.
    listed: Vec<bool>,
}

impl<'t> UsersSink<'t> {
    pub(super) fn new(table: &'t mut EventTable, has_persona: bool) -> Self {
        UsersSink {
            table,
            personas: has_persona.then(Vec::new),
            listed: Vec::new(),
        }
    }

    pub(super) fn add(
        &mut self,
        user: &str,
        registered_at: Option<Timestamp>,
        persona: Option<&str>,
    ) -> Result<(), Cause> {
        let i = self.table.intern(user) as usize;
        if self.listed.len() <= i {
            self.listed.resize(i + 1, false);
        }
        if self.listed[i] {
            return Err(Cause::DuplicateUser);
        }
        self.listed[i] = true;
        self.table.registered_at[i] = registered_at;
        if let Some(p) = &mut self.personas {
            if p.len() <= i {
                p.resize(i + 1, None);
            }
            p[i] = persona.map(str::to_string);
        }
        Ok(())
    }

    /// The personas, one per user of the table.
    pub(super) fn finish(self) -> Option<Vec<Option<String>>> {
        let n = self.table.n_users();
        self.personas.map(|mut p| {
            p.resize(n, None);
            p
        })
    }
}

/// A user id of at most [`ShortId::CAP`] bytes, stored inline (zero-padded, the length in the
/// last byte): a lookup in [`UserIndex`] touches one hash-table bucket and no string on the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShortId([u64; 4]);

impl ShortId {
    const CAP: usize = 31;

    #[inline]
    fn new(id: &[u8]) -> Option<ShortId> {
        if id.len() > ShortId::CAP {
            return None;
        }
        let mut b = [0u8; 32];
        b[..id.len()].copy_from_slice(id);
        b[31] = id.len() as u8;
        let mut words = [0u64; 4];
        for (w, chunk) in words.iter_mut().zip(b.chunks_exact(8)) {
            let mut x = [0u8; 8];
            x.copy_from_slice(chunk);
            *w = u64::from_le_bytes(x);
        }
        Some(ShortId(words))
    }
}

impl std::hash::Hash for ShortId {
    /// A multiply-rotate mix of the four words: cheap, and good enough for ids from the
    /// operator's own data (not a defence against crafted collisions).
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h: u64 = 0;
        for w in self.0 {
            h = (h ^ w).wrapping_mul(K).rotate_left(29);
        }
        state.write_u64(h ^ (h >> 32));
    }
}

/// Hands the key's own 64-bit hash to the table unchanged.
#[derive(Debug, Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Dense user indices by raw id bytes, in front of [`EventTable::intern`] (which stays the
/// source of truth and alone allocates): the previous row's user is recognised by one
/// comparison (runs of one user's rows are the common layout), other short ids by an inline-key
/// hash table with a cheap hash (time-ordered exports interleave users). Longer ids go to
/// `intern` directly.
#[derive(Debug, Default)]
pub(super) struct UserIndex {
    last: Vec<u8>,
    last_index: Option<u32>,
    short: HashMap<ShortId, u32, BuildHasherDefault<PassThrough>>,
}

impl UserIndex {
    /// One events row into the table: its user (known, or validated and interned) and its
    /// event. The user id is checked before the event's fields; nothing is added (not even the
    /// user) if the row is bad.
    #[inline]
    pub(super) fn push_event(
        &mut self,
        table: &mut EventTable,
        user: &[u8],
        event: &impl EventFields,
    ) -> Result<(), Fault> {
        let known = self.get(user);
        let id = match known {
            Some(_) => None,
            None => Some(fields::user_id(user).map_err(Fault::at(Col::UserId))?),
        };
        let Some(event) = fields::event(event, &mut table.kind_tally)? else {
            return Ok(());
        };
        let u = match (known, id) {
            (Some(u), _) => u,
            (None, Some(id)) => self.intern(id, table),
            // `id` is Some whenever `known` is None.
            (None, None) => {
                return Err(Fault::Field {
                    col: Col::UserId,
                    cause: Cause::EmptyUserId,
                })
            }
        };
        table.push(u, event);
        Ok(())
    }

    /// The index of an id seen before (the bytes were validated then), if it is short or the
    /// previous row's.
    #[inline]
    pub(super) fn get(&mut self, bytes: &[u8]) -> Option<u32> {
        if let Some(i) = self.last_index {
            if self.last == bytes {
                return Some(i);
            }
        }
        let i = *self.short.get(&ShortId::new(bytes)?)?;
        self.remember(bytes, i);
        Some(i)
    }

    /// Interns a validated user id and remembers it.
    #[inline]
    pub(super) fn intern(&mut self, id: &str, table: &mut EventTable) -> u32 {
        let i = table.intern(id);
        if let Some(k) = ShortId::new(id.as_bytes()) {
            self.short.insert(k, i);
        }
        self.remember(id.as_bytes(), i);
        i
    }

    #[inline]
    fn remember(&mut self, bytes: &[u8], i: u32) {
        self.last.clear();
        self.last.extend_from_slice(bytes);
        self.last_index = Some(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_index_agrees_with_intern_for_short_long_and_padded_ids() {
        let mut ids: Vec<String> = (0..40).map(|n| "x".repeat(n)).collect();
        ids.extend(["a", "a\0", "a\0\0", "é", "u0000001", "u0000002"].map(String::from));
        ids.extend((0..2000).map(|i| format!("user-{i}")));
        let mut table = EventTable::default();
        let mut index = UserIndex::default();
        for round in 0..2 {
            for id in &ids {
                let i = match index.get(id.as_bytes()) {
                    Some(i) => i,
                    None => index.intern(id, &mut table),
                };
                assert_eq!(table.user_ids[i as usize], *id, "round {round}");
            }
        }
        assert_eq!(table.n_users(), ids.len());
        assert!(index.get(b"never seen").is_none());
    }
}
